"""AWEncoder watermarking: the perturbation and its controls, the verification statistics
(white-box and black-box), the calibrated decision, the committed artefact, and the
semantic tests on the ci zoo (found in the marked encoder and its copies, not in an
independent encoder; null p-values not piled up near zero)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from audit_lib.methods import watermark as wm  # noqa: E402


class PixelHandle:
    """A transparent 'encoder': the embedding is the centred pixel vector, so the expected
    statistics can be computed by hand."""

    model_version = "pixels"
    capabilities = frozenset({"image"})
    embedding_dim = 12

    def __init__(self) -> None:
        self.queries = 0

    def encode_images(self, images, *, kind="image"):
        from PIL import Image

        self.queries += len(images)
        arr = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32).ravel()
                        for b in images])
        return arr - 127.5


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_controls_have_equal_norm_and_differ():
    rng = np.random.default_rng(0)
    delta = rng.integers(-8, 9, (4, 4, 3)).astype(np.int8)
    controls = wm.control_deltas(delta, 20, seed=1)
    assert controls.shape == (20, 4, 4, 3) and controls.dtype == np.int8
    for c in controls:
        assert np.abs(c).max() == np.abs(delta).max()
        assert np.sum(c.astype(int) ** 2) == np.sum(delta.astype(int) ** 2)
        assert sorted(np.abs(c).ravel()) == sorted(np.abs(delta).ravel())
    assert not any(np.array_equal(c, delta) for c in controls)


def test_apply_delta_stays_on_the_pixel_grid():
    img = np.array([[[0, 250, 100]]], dtype=np.uint8)
    out = wm.apply_delta(img, np.array([[[-8, 8, 3]]], dtype=np.int8))
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 255, 103]]]


def test_white_box_statistic_by_hand():
    rng = np.random.default_rng(3)
    key = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    probes = rng.integers(20, 236, (5, 2, 2, 3)).astype(np.uint8)
    delta = rng.integers(-8, 9, (2, 2, 3)).astype(np.int8)
    controls = wm.control_deltas(delta, 3, seed=2)
    h = PixelHandle()
    stats = wm.white_box_statistics(h, key, probes, delta, controls)
    assert stats.n_queries == h.queries == 1 + 5 + 4 * 5

    def emb(x):
        return _unit(x.reshape(len(x), -1).astype(np.float64) - 127.5)

    k = emb(key[None])[0]
    clean = emb(probes) @ k

    def shift(d):
        return emb(wm.apply_delta(probes, d)) @ k - clean

    assert stats.per_probe == pytest.approx(list(shift(delta)), abs=1e-5)
    assert stats.observed == pytest.approx(float(np.mean(shift(delta))), abs=1e-6)
    assert stats.controls == pytest.approx([float(np.mean(shift(c))) for c in controls], abs=1e-6)


def test_black_box_key_class_shift_by_hand():
    """Paired shift of the key's class score, clean probe vs marked probe, for label-only
    answers (one-hot) and for class scores."""
    key = np.zeros((2, 2, 3), np.uint8)
    probes = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 100, 200, 250)])
    delta = np.full((2, 2, 3), -8, np.int8)
    controls = -delta[None]

    def mean_pixel(pngs):
        from PIL import Image

        return np.array([np.asarray(Image.open(io.BytesIO(b)), dtype=float).mean() for b in pngs])

    def labels(pngs):  # class = mean pixel value > 100 -> 1, else 0 (the key is class 0)
        return (mean_pixel(pngs) > 100).astype(int)

    stats = wm.black_box_statistics(labels, key, probes, delta, controls)
    # clean 10, 100, 200, 250 -> 0, 0, 1, 1; marked 2, 92, 192, 242 -> 0, 0, 1, 1; control 18, 108, 208, 255
    # -> 0, 1, 1, 1: key-class log-score shifts 0, 0, 0, 0 (delta) and 0, log 1e-6, 0, 0 (control)
    assert stats.per_probe == [0.0, 0.0, 0.0, 0.0] and stats.observed == 0.0
    assert stats.controls == pytest.approx([np.log(1e-6) / 4])
    assert stats.n_queries == 1 + 4 + 2 * 4
    assert stats.summary["key_class"] == 0 and stats.summary["watermark_rate"] == 0.5
    assert stats.summary["clean_rate"] == 0.5 and stats.summary["flips_into_key_class"] == 0

    def scores(pngs):  # P(class 0) = 1 - mean / 255
        p0 = 1 - mean_pixel(pngs) / 255
        return np.stack([p0, 1 - p0], axis=1)

    soft = wm.black_box_statistics(scores, key, probes, delta, controls)

    def log_p0(v):
        return np.log(np.maximum(1 - np.asarray(v, dtype=float) / 255, 1e-6))  # floored as the method does

    clean = log_p0([10, 100, 200, 250])
    assert soft.per_probe == pytest.approx(list(log_p0([2, 92, 192, 242]) - clean))
    assert soft.observed == pytest.approx(float(np.mean(log_p0([2, 92, 192, 242]) - clean)))
    assert soft.controls == pytest.approx([float(np.mean(log_p0([18, 108, 208, 255]) - clean))])
    with pytest.raises(ValueError, match="classifier answered"):
        wm.black_box_statistics(lambda pngs: np.zeros((len(pngs) - 1, 2)), key, probes, delta, controls)


def test_decision_needs_both_nulls_rejected():
    """p = max(p vs the independent encoders, p vs the suspect's own controls), each a rank
    p-value when K + 1 >= 1 / alpha, else the Student-t predictive tail."""
    from scipy.stats import t as student_t

    independents = [0.05, 0.1, 0.02, 0.0]
    noisy = wm.Statistics(observed=0.30, controls=[0.0, 0.01, -0.02, 0.31], per_probe=[0.3], n_queries=9)
    res = wm.decide(noisy, independents, mode="white_box", alpha=0.3, key_sha256="k" * 64,
                    commitment_sha256="c" * 64)
    d = res.details
    assert d["p_independent"] == pytest.approx(1 / 5)  # above all 4 independents
    assert d["p_controls"] == pytest.approx(2 / 5)  # one control (0.31) responds as much
    assert res.p_value == pytest.approx(2 / 5) and res.decision == "negative"
    for key in ("observed", "null_scores", "n_queries", "assumptions", "mode", "shifts", "control_scores",
                "independent_scores", "key_sha256", "commitment_sha256", "p_independent_how", "p_controls_how"):
        assert key in d
    clean = wm.Statistics(observed=0.30, controls=[0.0, 0.01, -0.02, 0.03], per_probe=[0.3], n_queries=9)
    assert wm.decide(clean, independents, mode="white_box", alpha=0.3, key_sha256="k",
                     commitment_sha256="c").p_value == pytest.approx(1 / 5)
    # alpha 0.01 with 4 independents and 4 controls: both by the t tail, worked by hand
    strict = wm.decide(clean, independents, mode="white_box", alpha=0.01, key_sha256="k", commitment_sha256="c")
    x = np.array(independents)
    t_ind = (0.30 - x.mean()) / (x.std(ddof=1) * np.sqrt(1 + 1 / 4))
    c = np.array(clean.controls)
    t_ctl = (0.30 - c.mean()) / (c.std(ddof=1) * np.sqrt(1 + 1 / 4))
    assert strict.details["p_independent_how"] == strict.details["p_controls_how"] == "t_tail"
    assert strict.details["p_independent"] == pytest.approx(student_t.sf(t_ind, df=3))
    assert strict.p_value == pytest.approx(max(student_t.sf(t_ind, df=3), student_t.sf(t_ctl, df=3)))
    assert any("Student-t" in a for a in strict.details["assumptions"])
    with pytest.raises(ValueError, match="independent"):
        wm.decide(clean, [], mode="white_box", alpha=0.05, key_sha256="k", commitment_sha256="c")


def test_generated_delta_is_bounded_and_moves_marked_images_towards_the_key():
    from audit_lib.encoders.architectures import build

    torch.manual_seed(0)
    net = build("small_cnn:small-cnn-32")
    rng = np.random.default_rng(4)
    marked = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    key = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    recipe = wm.WatermarkRecipe(pgd_steps=8)
    delta = wm.generate_delta(net, marked, key, recipe)
    assert delta.dtype == np.int8 and delta.shape == (32, 32, 3)
    assert np.abs(delta).max() <= 8 and np.abs(delta).max() > 0

    from audit_lib.encoders.local import LocalEncoder

    h = LocalEncoder.from_network(net, "random", device="cpu")
    stats = wm.white_box_statistics(h, key, marked, delta, wm.control_deltas(delta, 5, 0))
    assert stats.observed > max(stats.controls)


def test_artefact_commit_load_and_tamper(db_url):
    from sqlalchemy import select, update

    from audit_lib.ownership import ArtefactError, commit_artefact, latest_artefact, load_artefact
    from audit_lib.store import session_scope
    from audit_lib.store.models import EnrolmentArtefact

    from audit_lib.store.models import AuditedModel

    with session_scope() as s:
        m = AuditedModel(name="owned-a", kind="checkpoint", role="owned", capabilities=["image"])
        s.add(m)
        s.flush()
        tensors = {"key": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "delta": np.ones((2, 2, 3), np.int8)}
        art = commit_artefact(s, model_id=m.id, kind="watermark", tensors=tensors, spec={"alpha": 0.01, "n": 3})
        model_id, art_id = m.id, art.id
    with session_scope() as s:
        back = latest_artefact(s, model_id, "watermark")
        assert back.commitment_sha256 == art.commitment_sha256
        assert back.spec == {"alpha": 0.01, "n": 3}
        assert np.array_equal(back.tensors["key"], tensors["key"])
        assert back.tensors["delta"].dtype == np.int8
    with session_scope() as s:  # a retried enrolment: the first commitment stands, no second row
        again = commit_artefact(s, model_id=model_id, kind="watermark", tensors=tensors,
                                spec={"alpha": 0.01, "n": 3})
        assert (again.id, again.commitment_sha256, again.committed_at) == (art_id, art.commitment_sha256,
                                                                           art.committed_at)
        assert len(s.scalars(select(EnrolmentArtefact)).all()) == 1
    with session_scope() as s:  # the spec is changed after the commitment: refused
        row = s.get(EnrolmentArtefact, art_id)
        s.execute(update(EnrolmentArtefact).where(EnrolmentArtefact.id == art_id)
                  .values(meta={**row.meta, "spec": {"alpha": 0.5, "n": 3}}))
    with session_scope() as s, pytest.raises(ArtefactError, match="commitment does not match"):
        load_artefact(s, art_id)
    with session_scope() as s, pytest.raises(ArtefactError, match="no 'fingerprint'"):
        latest_artefact(s, model_id, "fingerprint")


def test_payload_rejects_garbage():
    from audit_lib.ownership import ArtefactError, unpack_payload

    with pytest.raises(ArtefactError):
        unpack_payload(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ArtefactError, match="shorter"):
        unpack_payload(b"abc")


# --- on the ci zoo ---------------------------------------------------------------------------

def _verify(handle, enrolment, independent_scores=None):
    from audit_lib.ownership.artefacts import Artefact

    art = Artefact(None, None, "watermark", enrolment.tensors, enrolment.spec, "p" * 64, "c" * 64, "now")
    if independent_scores is None:
        return wm.verify_watermark(handle, art)
    t = enrolment.tensors
    stats = wm.white_box_statistics(handle, t["key"], t["probes"], t["delta"], t["controls"])
    return wm.decide(stats, independent_scores, mode="white_box", alpha=enrolment.spec["alpha"],
                     key_sha256=enrolment.spec["key_sha256"], commitment_sha256="c" * 64)


def test_watermark_found_in_marked_encoder_and_in_a_copy_stolen_over_http(
        watermark_enrolment, marked_handle, ownership_data, independent_handles):
    from tests.fixtures_ownership import CI_ALPHA, THEFT_BUDGET, ci_steal_recipe, steal_over_http

    e = watermark_enrolment
    assert np.abs(e.tensors["delta"]).max() <= 8  # ||delta||_inf <= 8/255
    assert e.spec["independent_white_box"] and len(e.spec["independent_white_box"]) == len(independent_handles)
    marked = _verify(marked_handle, e)
    assert marked.decision == "positive" and marked.p_value <= CI_ALPHA, marked.details["observed"]
    d = marked.details  # above every independent encoder and every control
    assert d["p_independent_rank"] == pytest.approx(1 / (len(independent_handles) + 1))
    assert d["p_controls_rank"] == pytest.approx(1 / (len(e.tensors["controls"]) + 1))
    assert marked.details["n_queries"] == 1 + (len(e.tensors["controls"]) + 2) * len(e.tensors["probes"])

    stolen, _ = steal_over_http(marked_handle, ownership_data.surrogate[:THEFT_BUDGET], ci_steal_recipe(),
                                tag="marked")
    copy = _verify(stolen, e)
    assert copy.decision == "positive" and copy.p_value <= CI_ALPHA, (copy.details["observed"],
                                                                       copy.details["null_scores"])


def test_watermark_not_found_in_independent_encoders(watermark_enrolment, independent_handles, target_handle,
                                                    marked_handle):
    """Every independent encoder as the suspect, its own score left out of the independent
    null: no false alarm, and the p-values are not piled up near zero."""
    from audit_lib.stats import clopper_pearson_upper
    from tests.fixtures_ownership import CI_ALPHA

    e = watermark_enrolment
    scores = e.spec["independent_white_box"]
    p_values = []
    for i, h in enumerate(independent_handles):
        res = _verify(h, e, independent_scores=scores[:i] + scores[i + 1:])
        assert res.details["observed"] == pytest.approx(scores[i], abs=1e-5)  # same statistic as at enrolment
        p_values.append(res.p_value)
    assert all(p > CI_ALPHA for p in p_values), p_values
    assert np.median(p_values) > 0.2, p_values
    assert clopper_pearson_upper(0, len(p_values)) < 0.5
    # The unmarked original is the owner's own model: delta was optimised on it (stage 1), so
    # it responds to delta (an ownership claim on it is true), but less than the marked
    # encoder, whose fine-tuning pulled marked images onto the key (stage 2).
    unmarked = _verify(target_handle, e)
    assert unmarked.details["observed"] < _verify(marked_handle, e).details["observed"]


def test_marked_encoder_keeps_downstream_accuracy(watermark_enrolment):
    m = watermark_enrolment.meta
    assert abs(m["marked_accuracy"] - m["unmarked_accuracy"]) <= 0.02, m


def test_black_box_watermark_through_a_downstream_classifier(watermark_enrolment, marked_handle, ownership_data,
                                                             independent_handles):
    """Through a downstream classifier trained on each suspect's features (class scores
    only): found in the marked encoder, a fine-tuned copy and a copy stolen over HTTP; not
    in any independent encoder (each left out of its own null)."""
    import copy

    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.ownership.artefacts import Artefact
    from audit_lib.ownership.watermark import classifier_for
    from audit_lib.zoo.suspects import finetune_simclr
    from tests.fixtures_ownership import CI_ALPHA, THEFT_BUDGET, ci_steal_recipe, steal_over_http

    e, split = watermark_enrolment, ownership_data.downstream
    art = Artefact(None, None, "watermark", e.tensors, e.spec, "p" * 64, "c" * 64, "now")
    scores = e.spec["independent_black_box"]
    assert len(scores) == len(independent_handles)

    def verify(handle, null=scores):
        t = e.tensors
        stats = wm.black_box_statistics(classifier_for(handle, split), t["key"], t["probes"], t["delta"],
                                        t["controls"])
        return wm.decide(stats, null, mode="black_box", alpha=CI_ALPHA, key_sha256=e.spec["key_sha256"],
                         commitment_sha256="c" * 64)

    marked = wm.verify_watermark(marked_handle, art, classify=classifier_for(marked_handle, split))
    assert marked.details["mode"] == "black_box" and marked.details["n_queries"] == 1 + (
        len(e.tensors["controls"]) + 2) * len(e.tensors["probes"])
    assert marked.decision == "positive" and marked.p_value <= CI_ALPHA, marked.details
    assert marked.details["observed"] > max(scores) and marked.details["observed"] > max(
        marked.details["control_scores"])
    tuned = finetune_simclr(copy.deepcopy(e.marked), ownership_data.surrogate[-512:], lr=1e-4, epochs=1, batch=64,
                            seed=3)
    tuned_res = verify(LocalEncoder.from_network(tuned, "fine-tuned"))
    assert tuned_res.decision == "positive", (tuned_res.p_value, tuned_res.details["observed"])
    stolen, _ = steal_over_http(marked_handle, ownership_data.surrogate[:THEFT_BUDGET], ci_steal_recipe(),
                                tag="marked")
    stolen_res = verify(stolen)
    assert stolen_res.decision == "positive", (stolen_res.p_value, stolen_res.details["observed"])
    for i, h in enumerate(independent_handles):
        res = verify(h, scores[:i] + scores[i + 1:])
        assert res.details["observed"] == pytest.approx(scores[i], abs=1e-6)  # as at enrolment
        assert res.decision == "negative" and res.p_value > CI_ALPHA, (i, res.p_value, res.details["observed"])


def test_cli_enrol_and_verify_commit_before_querying(db_url, ownership_zoo, watermark_enrolment, tmp_path):
    """`encoder-audit enrol --watermark` registers the marked copy and commits the artefact;
    `verify --watermark` stores a finding that cites the commitment, with its queries as
    evidence recorded after the commitment."""
    from datetime import datetime, timezone

    from sqlalchemy import select
    from typer.testing import CliRunner

    from audit_lib import registry
    from audit_lib.cli import app
    from audit_lib.store import session_scope
    from audit_lib.store.models import EnrolmentArtefact, EvidenceItem, Finding
    from tests.fixtures_ownership import CI_ALPHA, CI_CONTROLS, DOWNSTREAM_PER_CLASS, OWNERSHIP_CACHE

    entry = ownership_zoo.entry("simclr-target")
    indep = ownership_zoo.by_role("independent")[0]
    with session_scope() as s:
        registry.add_model(s, name="owned-simclr", kind="checkpoint", role="owned", capabilities="image",
                           architecture=entry.architecture, weights_path=Path(entry.weights_path))
        registry.add_model(s, name="other-encoder", kind="checkpoint", role="suspect", capabilities="image",
                           architecture=indep.architecture, weights_path=Path(indep.weights_path))
    zoo_cache = str(Path(ownership_zoo.root).parent)
    runner = CliRunner()
    res = runner.invoke(app, ["enrol", "--model", "owned-simclr", "--watermark", "--published",
                              "--alpha", str(CI_ALPHA),
                              "--controls", str(CI_CONTROLS), "--zoo-cache", zoo_cache,
                              "--cache-dir", str(OWNERSHIP_CACHE), "--downstream-per-class",
                              str(DOWNSTREAM_PER_CLASS)])
    assert res.exit_code == 0, res.output
    assert "(cached training)" in res.output and "owned-simclr-watermarked" in res.output
    res = runner.invoke(app, ["verify", "--owned", "owned-simclr", "--suspect", "owned-simclr-watermarked",
                              "--watermark", "--run-key", "wm-cli"])
    assert res.exit_code == 0, res.output
    assert "positive" in res.output
    res = runner.invoke(app, ["verify", "--owned", "owned-simclr", "--suspect", "other-encoder", "--watermark",
                              "--run-key", "wm-cli-2"])
    assert res.exit_code == 0 and "negative" in res.output, res.output
    with session_scope() as s:
        art = s.scalar(select(EnrolmentArtefact))
        findings = s.scalars(select(Finding).where(Finding.method == "watermark")).all()
        assert len(findings) == 2
        for f in findings:
            assert f.details["commitment_sha256"] == art.meta["commitment_sha256"]
            first_query = s.scalar(select(EvidenceItem.requested_at).where(EvidenceItem.run_id == f.run_id)
                                   .order_by(EvidenceItem.seq).limit(1))
            committed = datetime.fromisoformat(art.meta["committed_at"])
            if first_query.tzinfo is None:  # SQLite keeps UTC without the zone
                first_query = first_query.replace(tzinfo=timezone.utc)
            assert first_query >= committed
    bad = runner.invoke(app, ["verify", "--owned", "other-encoder", "--suspect", "owned-simclr", "--watermark"])
    assert bad.exit_code == 2 and "enrol it first" in bad.output
    none = runner.invoke(app, ["enrol", "--model", "owned-simclr"])
    assert none.exit_code == 2 and "--watermark" in none.output
