"""The ci zoo: members and non-members are separable the way each
method needs, re-measured here from the saved weights through the encoder handle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from audit_lib.stats import roc_auc  # noqa: E402


def _need_shared(ci_zoo):
    if ci_zoo.image_set["name"] != "cifar10" or ci_zoo.skipped:
        pytest.skip("../shared/data is not on this machine: the ci zoo was built on the fallback")


def test_ci_zoo_has_every_entry_with_weights_that_match_the_manifest(ci_zoo):
    from audit_lib.encoders.loading import file_sha256

    names = [e.name for e in ci_zoo.entries]
    assert names[:3] == ["tiny-clip", "simclr-target", "simclr-shadow"] or ci_zoo.skipped
    assert len(ci_zoo.by_role("independent")) >= 6
    assert len({e.sha256 for e in ci_zoo.entries}) == len(ci_zoo.entries)
    for e in ci_zoo.entries:
        assert Path(e.weights_path).is_file() and file_sha256(Path(e.weights_path)) == e.sha256
    archs = {e.architecture for e in ci_zoo.by_role("independent")}
    assert len(archs) >= 2  # several architectures in the null population
    seeds = {e.seed for e in ci_zoo.by_role("independent")}
    assert len(seeds) == len(ci_zoo.by_role("independent"))
    d = ci_zoo.downstream
    assert d["array"] == "test" and not set(d["train"]) & set(d["test"])


def test_tiny_clip_names_members_far_above_chance_and_non_members_near_it(ci_zoo):
    """Zero-shot over IDIA's 21 templates on held-out photos, through the encoder handle."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.names import decoy_names
    from audit_lib.zoo.evaluate import IDIA_TEMPLATES

    _need_shared(ci_zoo)
    clip = ci_zoo.entry("tiny-clip")
    people = clip.people
    assert sum(p.member for p in people) == 20 and len(people) == 40
    handle = LocalEncoder.from_checkpoint(clip.architecture, clip.weights_path, device="cpu")
    assert handle.capabilities == frozenset({"image", "text"})
    names = [p.name for p in people]
    candidates = names + decoy_names(60, exclude=names)
    photos = [Path(f).read_bytes() for p in people for f in p.heldout_photos]
    truth = np.array([k for k, p in enumerate(people) for _ in p.heldout_photos])
    member = np.array([p.member for p in people for _ in p.heldout_photos])
    img = handle.encode_images(photos)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    hits = []
    for t in IDIA_TEMPLATES:
        txt = handle.encode_texts([t.format(c) for c in candidates])
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        hits.append((img @ txt.T).argmax(axis=1) == truth)
    hits = np.array(hits)
    chance = 1 / len(candidates)
    member_acc, nonmember_acc = hits[:, member].mean(), hits[:, ~member].mean()
    assert member_acc >= 15 * chance, member_acc
    assert nonmember_acc <= 3 * chance, nonmember_acc
    # the build summary measured the same thing
    assert clip.metrics["member_name_accuracy"] == pytest.approx(member_acc, abs=0.02)


def test_simclr_target_members_have_more_similar_views(ci_zoo):
    """EncoderMI's signal: mean augmented-view cosine, members vs non-members, AUC >= 0.8."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.zoo.data import load_images
    from audit_lib.zoo.evaluate import view_similarity

    _need_shared(ci_zoo)
    images = load_images()
    for name in ("simclr-target", "simclr-shadow"):
        e = ci_zoo.entry(name)
        members, nonmembers = e.splits["members"], e.splits["nonmembers"]
        assert not set(members) & set(nonmembers)
        net = LocalEncoder.from_checkpoint(e.architecture, e.weights_path, device="cpu").network
        sm = view_similarity(net, images.x_train[members], n_views=10, seed=11)
        sn = view_similarity(net, images.x_train[nonmembers[:200]], n_views=10, seed=12)
        auc = roc_auc(sm, sn)
        assert auc >= 0.8, (name, auc)
        assert e.metrics["membership_auc"] >= 0.8
    target, shadow = ci_zoo.entry("simclr-target"), ci_zoo.entry("simclr-shadow")
    assert not set(target.splits["members"]) & set(shadow.splits["members"])
    assert not set(target.splits["members"]) & set(shadow.splits["nonmembers"])


def test_independent_encoders_learned_something_useful(ci_zoo):
    """The null population is made of real (trained) encoders, not random ones."""
    for e in ci_zoo.by_role("independent"):
        n_classes = len(ci_zoo.image_set["classes"])
        assert e.metrics["downstream_linear_accuracy"] > 2 / n_classes, (e.name, e.metrics)
        assert e.train["final_loss"] < e.train["first_loss"]


def test_registration_is_idempotent(db_url, ci_zoo):
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.zoo.build import register_manifest, registry_name

    added = register_manifest(ci_zoo, db_url)
    assert len(added) == len(ci_zoo.entries)
    assert register_manifest(ci_zoo, db_url) == []
    with session_scope(db_url) as s:
        clip = registry.get_model(s, registry_name("ci", ci_zoo.entries[0].name))
        assert clip.kind == "checkpoint" and clip.weights_path == ci_zoo.entries[0].weights_path
        assert len(registry.list_models(s)) == len(ci_zoo.entries)


def test_build_summary_and_cli_show(ci_zoo):
    from typer.testing import CliRunner

    from audit_lib.cli import app
    from audit_lib.zoo.build import summary_lines
    from tests.fixtures_zoo import ZOO_CACHE

    text = "\n".join(summary_lines(ci_zoo))
    if not ci_zoo.skipped:
        assert "zero-shot name accuracy" in text
    assert "view-similarity ROC AUC" in text and "linear-probe accuracy" in text
    result = CliRunner().invoke(app, ["zoo", "show", "--profile", "ci", "--cache-dir", str(ZOO_CACHE)])
    assert result.exit_code == 0, result.output
    assert "simclr-target" in result.output
    bad = CliRunner().invoke(app, ["zoo", "build", "--profile", "huge", "--no-register"])
    assert bad.exit_code != 0 and "zoo profile 'huge'" in bad.output
