"""The audits end to end with dag.test() on the ci reference zoo: the privacy audit finds
the tiny CLIP's known members and the SimCLR target's member images, and not the
non-members; model enrolment through its DAG commits watermark and fingerprint artefacts
(from the ownership areas' caches); the ownership audit then finds a leaked copy of the
watermarked model and clears an independently trained encoder. SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("airflow", reason="apache-airflow is not installed")
pytest.importorskip("audit_lib.methods.identity_inference", reason="IDIA is not in this build")
pytest.importorskip("audit_lib.methods.membership_inference", reason="EncoderMI is not in this build")

# 200 names (p floor 1/200): fewer than the default 1,000 to keep the suite fast; same code.
PRIVACY = {"n_candidates": 200, "n_views": 10, "subject_ids": None, "model_ids": None}  # see test_pipelines


def _states(dr) -> dict:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}


def _findings(run_key: str) -> list:
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, Finding

    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        rows = list(s.scalars(select(Finding).where(Finding.run_id == run.id).order_by(Finding.id)))
        for r in rows:
            s.expunge(r)
        return rows


@pytest.fixture
def zoo_store(ci_zoo, db_url, monkeypatch):
    """The evidence store of ``db_url`` with the zoo cache where the ci zoo was built."""
    from tests.fixtures_zoo import ZOO_CACHE

    monkeypatch.setenv("AUDIT_ZOO_CACHE", str(ZOO_CACHE))
    return ci_zoo


def test_privacy_audit_on_the_ci_zoo_decides_members_and_nonmembers(airflow_dags, zoo_store, tmp_path,
                                                                    monkeypatch):
    from audit_lib.evidence import verify_chain
    from audit_lib.pipelines.zoo_registry import register_privacy
    from audit_lib.reports.release import released_decision
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, Report

    reg = register_privacy(zoo_store)
    dr = airflow_dags["privacy_audit"].test(run_conf=PRIVACY)
    states = _states(dr)
    assert str(dr.state) == "success", states
    assert states[("request_reports", -1)] == "success"  # positive findings: reports requested
    found = _findings(f"privacy_audit/{dr.run_id}")
    clip, target = reg.models["tiny-clip"], reg.models["simclr-target"]
    by = {(f.method, f.subject_id, f.model_version_id): f for f in found}
    with session_scope() as s:
        from audit_lib.store.models import ModelVersion

        version = {v.model_id: v.id for v in s.scalars(select(ModelVersion))}
    for sid in reg.identity_members:
        f = by[("idia", sid, version[clip])]
        assert f.decision == "positive" and f.p_value <= 0.05, (reg.labels[sid], f.p_value)
        f = by[("encoder_mi", sid, version[target])]
        assert f.decision == "positive" and f.p_value <= 0.05, (reg.labels[sid], f.p_value)
    for sid in reg.identity_nonmembers:
        f = by[("idia", sid, version[clip])]
        assert f.decision == "negative" and f.p_value > 0.05, (reg.labels[sid], f.p_value)
        f = by[("encoder_mi", sid, version[target])]
        assert f.decision == "negative" and f.p_value > 0.05, (reg.labels[sid], f.p_value)
    # membership only where reference non-members are configured (the SimCLR target)
    assert {f.model_version_id for f in found if f.method == "encoder_mi"} == {version[target]}
    assert len(found) == 2 * len(reg.labels)
    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == f"privacy_audit/{dr.run_id}"))
        assert run.status == "succeeded" and verify_chain(s, run).ok
    # the reports DAG renders one PDF per subject with a positive finding; its review step is
    # answered through Airflow's REST API by the demo's reviewer, as a person would
    from audit_lib.config import get_settings
    from audit_lib.pipelines.demo_review import DemoReviewer, reviewer_auth_env
    from audit_lib.reports.demo_signer import demo_signer_settings

    auth, password = reviewer_auth_env(tmp_path / "review")
    for k, v in {**demo_signer_settings(tmp_path / "signer"), **auth}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    reviewer = DemoReviewer(password, timeout_s=900)
    reviewer.start()
    try:
        dr2 = airflow_dags["evidence_reports"].test(run_conf={})
    finally:
        reviewer.stop.set()
        reviewer.join(timeout=10)
    assert reviewer.error is None and reviewer.answered == 1, reviewer.error
    assert str(dr2.state) == "success", _states(dr2)
    with session_scope() as s:
        reports = [(r.path, set(r.finding_ids)) for r in s.scalars(select(Report))]
        assert all(released_decision(s, r.id) is not None for r in s.scalars(select(Report)))
    positives = {f.id for f in found if f.decision == "positive"}
    assert len(reports) == len(reg.identity_members)  # one per subject with a positive finding
    assert set().union(*(ids for _, ids in reports)) >= positives
    assert all(Path(p).is_file() and Path(p).read_bytes()[:5] == b"%PDF-" for p, _ in reports)


def test_enrolment_then_ownership_audit_on_the_ci_zoo(airflow_dags, zoo_store, watermark_enrolment,
                                                      ci_fingerprint):
    """model_enrolment (theft-risk step skipped: it trains stolen copies) reuses the ownership
    tests' cached watermark and fingerprint training and commits both artefacts; the
    ownership audit then runs each check where its artefact exists."""
    from audit_lib.pipelines.zoo_registry import register_copy, register_ownership
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel, EnrolmentArtefact
    from tests.fixtures_ownership import CI_ALPHA, CI_CONTROLS, DOWNSTREAM_PER_CLASS
    from tests.fixtures_fingerprint import CI_FINGERPRINTS, CI_STEPS

    del watermark_enrolment, ci_fingerprint  # warm the caches the enrolment DAG reuses
    ids = register_ownership(zoo_store)
    owned = ids["acme-encoder"]
    conf = {"model_id": owned, "skip_steps": ["theft_risk"], "n_fingerprints": CI_FINGERPRINTS,
            "fingerprint_steps": CI_STEPS, "watermark_controls": CI_CONTROLS, "watermark_published": True}
    from audit_lib.pipelines.enrolment import DEFAULT_PARAMS

    assert (DEFAULT_PARAMS["watermark_alpha"], DEFAULT_PARAMS["downstream_per_class"]) == (CI_ALPHA,
                                                                                         DOWNSTREAM_PER_CLASS)
    dr = airflow_dags["model_enrolment"].test(run_conf=conf)
    states = _states(dr)
    assert str(dr.state) == "success", states
    assert states[("theft_risk", -1)] == "skipped" and states[("calibration", -1)] == "success"
    with session_scope() as s:
        marked = s.scalar(select(AuditedModel).where(AuditedModel.name == "acme-encoder-watermarked"))
        kinds = {(a.model_id, a.kind) for a in s.scalars(select(EnrolmentArtefact))}
        shadow = zoo_store.entry("simclr-shadow")
        from audit_lib import registry

        independent = registry.add_model(s, name="vendor-encoder", kind="checkpoint", role="suspect",
                                         capabilities="image", architecture=shadow.architecture,
                                         weights_path=Path(shadow.weights_path)).id
    assert kinds == {(marked.id, "watermark"), (owned, "fingerprint")}
    leaked = register_copy("leaked-encoder", marked.id)
    dr = airflow_dags["ownership_audit"].test(run_conf={"model_ids": [owned, marked.id, leaked, independent]})
    states = _states(dr)
    assert str(dr.state) == "success", states
    found = {(f.method, f.target_key, (f.parameters or {}).get("owned_model_id")): f
             for f in _findings(f"ownership_audit/{dr.run_id}")}
    assert set(found) == {("watermark", f"suspect:{s}", marked.id) for s in (leaked, independent)} | \
        {("fingerprint", f"suspect:{s}", owned) for s in (leaked, independent)}
    for method in ("watermark", "fingerprint"):
        hit = next(f for (m, t, _), f in found.items() if m == method and t == f"suspect:{leaked}")
        miss = next(f for (m, t, _), f in found.items() if m == method and t == f"suspect:{independent}")
        assert hit.decision == "positive", (method, hit.p_value)
        assert miss.decision == "negative", (method, miss.p_value)
    from audit_lib.pipelines.summary import case_for

    assert {case_for(f) for f in found.values() if f.decision == "positive"} == {
        f"ownership:{marked.id}:{leaked}", f"ownership:{owned}:{leaked}"}
