"""MetaV fingerprinting: the pure parts on tiny models, then the ci suspect zoo.

Semantic checks (Done when): a held-out stolen copy and a held-out fine-tuned copy of the
owned encoder are called pirated, a held-out independent encoder is not; ARUC itself is
tested against hand-worked examples in tests/test_stats.py (and once more here on the
definition's edge cases).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from audit_lib import stats
from audit_lib.embedding import embed_pngs
from audit_lib.imaging import png_batch
from audit_lib.methods import fingerprint as fp
from tests.fixtures_fingerprint import CI_FINGERPRINTS, FINGERPRINT_CACHE, tiny_network


# --------------------------------------------------------------------------- pure parts

def test_tanh_parametrisation_round_trips_and_stays_in_range():
    import torch

    x = torch.rand(4, 3, 8, 8) * 0.98 + 0.01
    assert torch.allclose(fp.from_param(fp.to_param(x)), x, atol=1e-5)
    w = torch.randn(4, 3, 8, 8) * 10
    y = fp.from_param(w)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_quantisation_is_straight_through_and_matches_png():
    import torch
    from PIL import Image

    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    q = fp.quantise_ste(x)
    assert torch.allclose(q * 255, torch.round(q * 255), atol=1e-4)  # on the uint8 grid
    q.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))  # identity gradient
    u8 = (q.detach() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pngs = png_batch(u8)
    back = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs])
    assert np.array_equal(back, u8)  # PNG is lossless: the suspect sees exactly these pixels


def test_transforms_keep_shape_and_differ_from_identity():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    for name in fp.TRANSFORMS:
        y = fp.random_transform(x, name, g, noise_std=0.03, max_shift=2)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert (name == "identity") == bool(torch.equal(x, y))
    with pytest.raises(ValueError, match="transform 'rotate'"):
        fp.random_transform(x, "rotate", g, noise_std=0.03, max_shift=2)


def test_config_refuses_more_than_100_queries():
    with pytest.raises(ValueError, match="n_fingerprints = 101"):
        fp.FingerprintConfig(n_fingerprints=101)


def test_rank_p_value_and_decision_by_hand():
    null = list(np.linspace(-5, -1, 99))  # 99 held-out negatives: p can reach 1/100
    d = fp.decide(3.0, null, alpha=0.01)
    assert d.how == "rank" and d.p_value == pytest.approx(1 / 100) and d.decision == "positive"
    d = fp.decide(-1.5, null, alpha=0.01)  # 13 of the 99 (-1.5 .. -1, step 4/98) are >= -1.5
    assert d.how == "rank" and d.p_value == pytest.approx(14 / 100) and d.decision == "negative"


def test_parametric_tail_only_when_rank_cannot_reach_alpha():
    from scipy.stats import t as student_t

    null = [-3.0, -2.0, -1.0, -2.5, -1.5]  # K = 5: rank p >= 1/6 > 0.01
    mean, sd = np.mean(null), np.std(null, ddof=1)
    expected = student_t.sf((6.0 - mean) / (sd * np.sqrt(1 + 1 / 5)), df=4)
    d = fp.decide(6.0, null, alpha=0.01)
    assert d.how == "t_tail" and d.p_rank == pytest.approx(1 / 6)
    assert d.p_value == pytest.approx(expected) and d.decision == "positive"
    # not above every negative: never positive, whatever the tail says
    d = fp.decide(-1.2, null, alpha=0.01)
    assert d.p_value >= d.p_rank == pytest.approx(2 / 6) and d.decision == "negative"
    # leave-one-out false alarms on a null with one far outlier
    assert fp.leave_one_out_false_alarms([-3.0, -2.0, -1.0, -2.5, 40.0], alpha=0.01) == 1
    assert fp.leave_one_out_false_alarms(null, alpha=0.01) == 0


def test_aruc_pinned_definition_edges():
    # one positive below one negative: robustness and uniqueness never both > 0
    assert stats.aruc([0.2], [0.8]) == pytest.approx(0.0, abs=2e-3)
    # 3 of 4 positives at 0.9, one at 0.3; negatives at 0.1 and 0.2
    # tau in (0.1, 0.2]: min(1, 0.5) -> 0.05; (0.2, 0.3]: min(1, 1) -> 0.1;
    # (0.3, 0.9]: min(0.75, 1) -> 0.45; total 0.6
    assert stats.aruc([0.9, 0.9, 0.9, 0.3], [0.1, 0.2]) == pytest.approx(0.6, abs=3e-3)


def _tiny_zoo():
    from audit_lib.zoo.suspects import prune_global, quantise_weights

    owned = tiny_network(0)
    entries = []
    for i, (kind, make) in enumerate([
        ("prune", lambda: prune_global(tiny_network(0), 0.3)),
        ("quantise", lambda: quantise_weights(tiny_network(0), "int8")),
        ("prune", lambda: prune_global(tiny_network(0), 0.5)),
        ("quantise", lambda: quantise_weights(tiny_network(0), "fp16")),
        ("prune", lambda: prune_global(tiny_network(0), 0.2)),
    ]):
        entries.append(fp.ZooEntry(f"pos{i}", make(), 1, ("train", "test", "val", "train", "train")[i], kind))
    for i in range(9):
        entries.append(fp.ZooEntry(f"neg{i}", tiny_network(100 + i), 0, ("train", "test", "val")[i % 3], "independent"))
    return owned, entries


def test_training_separates_derivatives_from_independents_on_tiny_models():
    owned, entries = _tiny_zoo()
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    cfg = fp.FingerprintConfig(n_fingerprints=6, steps=60, eval_every=20, hidden=16)
    trained = fp.train_fingerprint(owned, entries, init, cfg)
    assert trained.images.shape == (6, 16, 16, 3) and trained.images.dtype == np.uint8
    cal = fp.calibrate(trained, alpha=0.01)
    assert cal.test_aruc is not None and cal.test_aruc > 0.5
    assert min(cal.test_positive_scores) > max(cal.negative_scores)
    assert trained.scores["owned"]["score"] > max(cal.negative_scores)


def test_training_refuses_a_zoo_with_mixed_embedding_sizes():
    owned, entries = _tiny_zoo()
    entries.append(fp.ZooEntry("wide", tiny_network(7, dim=12), 0, "train"))
    with pytest.raises(ValueError, match="embedding size differs"):
        fp.train_fingerprint(owned, entries, np.zeros((20, 16, 16, 3), np.uint8),
                             fp.FingerprintConfig(n_fingerprints=4, steps=1))


def test_pruning_and_quantisation_do_what_they_say():
    import torch

    from audit_lib.zoo.suspects import prune_global, quantise_weights

    net = prune_global(tiny_network(1), 0.5)
    w = torch.cat([p.flatten() for n, p in net.module.named_parameters() if p.dim() > 1])
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    net = quantise_weights(tiny_network(1), "int8")
    conv = net.module[0].weight.detach()
    scale = conv.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 127
    assert torch.allclose(conv / scale, torch.round(conv / scale), atol=1e-3)
    with pytest.raises(ValueError, match="scheme 'int4'"):
        quantise_weights(tiny_network(1), "int4")


def test_platt_scaling_is_monotone_finite_on_separated_classes_and_needs_both():
    logits = [-6.0, -5.0, -4.5, -4.0, 2.0, 3.0]  # separated: plain logistic regression would diverge
    labels = [0, 0, 0, 0, 1, 1]
    a, b = fp.fit_platt(logits, labels)
    assert 0 < a < 10 and np.isfinite(b)
    scores = [fp.calibrated_score(x, (a, b)) for x in logits]
    assert scores == sorted(scores)  # monotone: no rank changes, so no decision changes
    assert max(scores[:4]) < 0.5 < min(scores[4:])  # the boundary falls between the classes
    # classes weigh equally: four negatives do not drag the boundary onto the positives
    boundary = -b / a
    assert -4.0 < boundary < 2.0
    assert fp.fit_platt(logits, labels, c=100.0)[0] > a  # less penalty, steeper
    with pytest.raises(ValueError, match="both classes"):
        fp.fit_platt([1.0, 2.0], [1, 1])


def test_fidelity_tells_a_copy_from_an_independent_and_the_config_keeps_a_probe_unseen():
    from audit_lib.embedding import embed_images as embed
    from audit_lib.zoo.suspects import SuspectZooConfig, fidelity, prune_global

    images = np.random.default_rng(0).integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    owned = embed(tiny_network(0), images)
    assert fidelity(owned, tiny_network(0), images) == pytest.approx(1.0, abs=1e-5)
    assert fidelity(owned, prune_global(tiny_network(0), 0.2), images) > fidelity(owned, tiny_network(5), images)
    with pytest.raises(ValueError, match="fidelity probe unseen"):
        SuspectZooConfig(distil_images=500).check_fits(1024)  # 500 of 512 infringer images leave no probe
    with pytest.raises(ValueError, match="steal budget 600 exceeds"):
        SuspectZooConfig(steal_budgets=(600,)).check_fits(1024)
    SuspectZooConfig().check_fits(1024)


# --------------------------------------------------------------------------- artefacts

def test_enrolment_artefact_round_trip_and_tamper_check(db_url, tmp_path, small_cnn_weights):
    from sqlalchemy import update

    from audit_lib import registry
    from audit_lib.ownership import ArtefactError, commit_artefact, latest_artefact
    from audit_lib.store import session_scope
    from audit_lib.store.models import EnrolmentArtefact

    owned, entries = _tiny_zoo()
    init = np.random.default_rng(1).integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    trained = fp.train_fingerprint(owned, entries, init, fp.FingerprintConfig(n_fingerprints=4, steps=5, hidden=8))
    enrolment = fp.enrolment_from_training(trained, {"key": "tiny", "scores": trained.scores}, alpha=0.05)
    arch, weights = small_cnn_weights  # registration loads the weights into the architecture
    with session_scope() as s:
        m = registry.add_model(s, name="owned-tiny", kind="checkpoint", role="owned", capabilities="image",
                               architecture=arch, weights_path=weights)
        tensors, spec = enrolment.to_artefact()
        art = commit_artefact(s, model_id=m.id, kind=fp.ARTEFACT_KIND, tensors=tensors, spec=spec)
        model_id = m.id
    with session_scope() as s:
        loaded = latest_artefact(s, model_id, fp.ARTEFACT_KIND)
        back = fp.FingerprintEnrolment.from_artefact(loaded.tensors, loaded.spec, loaded.commitment_sha256)
    assert back.commitment_sha256 == art.commitment_sha256
    assert np.array_equal(back.images, enrolment.images)
    assert back.calibration == enrolment.calibration
    emb = embed_pngs(owned, back.pngs())
    assert fp.verifier_logit(back.verifier(), emb) == pytest.approx(fp.verifier_logit(enrolment.verifier(), emb),
                                                                    abs=1e-5)
    from audit_lib.ownership.fingerprint import write_figures

    paths = write_figures(back, tmp_path / "figs")
    assert [p.name for p in paths] == ["fingerprint-scores.png", "fingerprint-aruc.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    with session_scope() as s:  # someone edits the stored calibration after enrolment
        row = s.get(EnrolmentArtefact, art.id)
        meta = dict(row.meta)
        meta["spec"] = {**meta["spec"], "calibration": {**meta["spec"]["calibration"], "alpha": 0.5}}
        s.execute(update(EnrolmentArtefact).where(EnrolmentArtefact.id == art.id).values(meta=meta))
    with session_scope() as s, pytest.raises(ArtefactError, match="altered"):
        latest_artefact(s, model_id, fp.ARTEFACT_KIND)


# --------------------------------------------------------------------------- the ci suspect zoo

def _suspect_handle(zoo, name):  # noqa: ANN001, ANN202
    from audit_lib.encoders.local import LocalEncoder

    rec = next(r for r in zoo.records if r.name == name)
    return LocalEncoder.from_checkpoint(rec.architecture, zoo.root / rec.weights, device="cpu")


def _held_out(zoo, kind):  # noqa: ANN001, ANN202
    return [r for r in zoo.records if r.split == "test" and r.kind == kind]


class CountingHandle:
    """A handle wrapper that counts the queries a verification sends."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.queries, self.kinds = inner, 0, set()
        self.capabilities, self.embedding_dim, self.model_version = (inner.capabilities, inner.embedding_dim,
                                                                     inner.model_version)

    def encode_images(self, images, *, kind="image"):  # noqa: ANN001, ANN201
        self.queries += len(images)
        self.kinds.add(kind)
        return self.inner.encode_images(images, kind=kind)


def test_ci_zoo_is_split_by_model_with_held_out_stolen_and_finetuned(ci_suspect_zoo):
    zoo, _ = ci_suspect_zoo
    counts = zoo.counts()
    assert counts["test"]["positives"] >= 2 and counts["test"]["negatives"] >= 1
    assert _held_out(zoo, "stolen") and _held_out(zoo, "finetune")
    # negatives split by family: no family in two splits
    fam_splits = {}
    for r in zoo.records:
        if r.label == 0:
            fam_splits.setdefault(r.family, set()).add(r.split)
    assert all(len(s) == 1 for s in fam_splits.values())
    held_out_families = {f for f, s in fam_splits.items() if s == {"test"}}
    assert len(held_out_families) >= 3  # the zoo's independents and the builder's own
    assert any(f.startswith("extra-") for f in held_out_families)
    # the copies copy: every stolen or distilled copy keeps more of the owned model than
    # any independent encoder has by chance
    copies = [r.fidelity for r in zoo.records if r.kind in ("stolen", "distil")]
    independents = [abs(r.fidelity) for r in zoo.records if r.label == 0]
    assert min(copies) > 0.4 > max(independents), (copies, max(independents))


def test_held_out_stolen_and_finetuned_copies_are_detected_an_independent_is_not(ci_suspect_zoo, ci_fingerprint):
    zoo, _ = ci_suspect_zoo
    enrolment = ci_fingerprint
    cal = enrolment.calibration
    verdicts = {}
    for kind in ("stolen", "finetune", "independent"):
        rec = _held_out(zoo, kind)[0]
        handle = CountingHandle(_suspect_handle(zoo, rec.name))
        result = fp.verify(handle, enrolment)
        assert handle.queries == CI_FINGERPRINTS and handle.kinds == {"fingerprint"}  # N queries, no more
        assert result.details["n_queries"] == CI_FINGERPRINTS
        verdicts[kind] = result
    assert verdicts["stolen"].decision == "positive", verdicts["stolen"].details
    assert verdicts["finetune"].decision == "positive", verdicts["finetune"].details
    assert verdicts["independent"].decision == "negative", verdicts["independent"].details
    assert verdicts["stolen"].p_value <= 0.01 < verdicts["independent"].p_value
    for key in ("observed", "null_scores", "n_queries", "assumptions", "score", "negative_scores",
                "positive_scores", "aruc", "n_fingerprints", "commitment_sha256"):
        assert key in verdicts["stolen"].details
    # the evaluation recorded at enrolment: the targets on every held-out suspect
    assert cal.test_aruc is not None and cal.test_aruc >= 0.95
    assert cal.test_positives_detected == len(cal.test_positive_scores)
    assert cal.false_alarms == 0 and cal.held_out_families >= 3


def test_suspect_with_another_embedding_size_is_not_applicable(ci_fingerprint):
    class Wide:
        capabilities, embedding_dim, model_version = frozenset({"image"}), 7, "x"

        def encode_images(self, images, *, kind="image"):  # noqa: ANN001, ANN201
            raise AssertionError("must not be queried")

    result = fp.verify(Wide(), ci_fingerprint)
    assert result.decision == "not_applicable" and result.details["n_queries"] == 0


# --------------------------------------------------------------------------- the commands

def test_cli_enrol_then_verify_records_n_queries_and_the_finding(db_url, fingerprint_reference, ci_suspect_zoo,
                                                                 ci_fingerprint):
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from audit_lib.cli import app
    from audit_lib.evidence import verify_chain
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding
    from tests.fixtures_fingerprint import CI_STEPS

    runner = CliRunner()
    arch, weights, independents = fingerprint_reference
    zoo, _ = ci_suspect_zoo

    def add(name, role, architecture, path):  # noqa: ANN001, ANN202
        r = runner.invoke(app, ["models", "add", "--name", name, "--role", role, "--architecture", architecture,
                                "--weights", str(path)])
        assert r.exit_code == 0, r.output

    add("owned-simclr", "owned", arch, weights)
    for m in independents:
        add(m.name, "suspect", m.architecture, m.weights_path)
    stolen = _held_out(zoo, "stolen")[0]
    add("suspect-stolen", "suspect", stolen.architecture, zoo.root / stolen.weights)
    indep = _held_out(zoo, "independent")[0]
    add("suspect-independent", "suspect", indep.architecture, zoo.root / indep.weights)

    r = runner.invoke(app, ["verify-fingerprint", "--owned", "owned-simclr", "--suspect", "suspect-stolen"])
    assert r.exit_code == 2 and "enrol it first" in r.output  # nothing committed yet
    args = ["enrol-fingerprint", "--model", "owned-simclr", "--suspect-zoo", "ci", "--n-fingerprints",
            str(CI_FINGERPRINTS), "--steps", str(CI_STEPS), "--cache-dir", str(FINGERPRINT_CACHE)]
    for m in independents:
        args += ["--independent", m.name]
    r = runner.invoke(app, args)  # same configuration as the fixture: served from the cache
    assert r.exit_code == 0, r.output
    assert ci_fingerprint.calibration.test_aruc is not None
    assert f"ARUC {ci_fingerprint.calibration.test_aruc:.3f}" in r.output

    r = runner.invoke(app, ["verify-fingerprint", "--owned", "owned-simclr", "--suspect", "suspect-stolen",
                            "--run-key", "fp-stolen"])
    assert r.exit_code == 0, r.output
    assert "positive" in r.output and f"{CI_FINGERPRINTS} queries" in r.output
    r = runner.invoke(app, ["verify-fingerprint", "--owned", "owned-simclr", "--suspect", "suspect-independent",
                            "--run-key", "fp-indep"])
    assert r.exit_code == 0 and "negative" in r.output, r.output
    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == "fp-stolen"))
        kinds = dict(s.execute(select(EvidenceItem.kind, func.count()).where(EvidenceItem.run_id == run.id)
                               .group_by(EvidenceItem.kind)).all())
        assert kinds == {"fingerprint": CI_FINGERPRINTS, "finding": 1}
        assert verify_chain(s, run).ok
        finding = s.scalar(select(Finding).where(Finding.run_id == run.id))
        assert finding.method == "fingerprint" and finding.decision == "positive"
        assert finding.details["commitment_sha256"] and finding.details["n_queries"] == CI_FINGERPRINTS
    r = runner.invoke(app, ["enrol-fingerprint", "--model", "suspect-stolen", "--independent", "independent-01",
                            "--suspect-zoo", "ci"])
    assert r.exit_code == 2 and "only an owned model" in r.output
    wide = "small_cnn:small-cnn-32-wide" if independents[0].architecture != "small_cnn:small-cnn-32-wide" \
        else "small_cnn:small-cnn-32"
    # mislabelled weights are refused at registration, before anything could use them
    r = runner.invoke(app, ["models", "add", "--name", "mislabelled", "--role", "suspect", "--architecture", wide,
                            "--weights", str(independents[0].weights_path)])
    assert r.exit_code == 2 and "do not fit the architecture" in r.output and "Traceback" not in r.output
