"""The evidence chain and idempotent findings."""

from __future__ import annotations

from sqlalchemy import func, select

from audit_lib import evidence
from audit_lib.findings import FindingResult
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel, EvidenceItem, Finding, ModelVersion


def _model_version(s) -> int:
    m = AuditedModel(name="m", kind="api", role="suspect", capabilities=["image"],
                     endpoint_url="http://127.0.0.1:9/")
    s.add(m)
    s.flush()
    mv = ModelVersion(model_id=m.id, version="ab" * 32, how="canary")
    s.add(mv)
    s.flush()
    return mv.id


def _result(p: float = 0.01) -> FindingResult:
    return FindingResult(method="idia", method_version="1", hypothesis="H0: not in training data",
                         statistic=3.0, null_description="999 decoy names", p_value=p, alpha=0.05,
                         decision="positive")


def test_chain_verifies_and_detects_tampering(db_url):
    with session_scope(db_url) as s:
        mv = _model_version(s)
        run = evidence.start_run(s, "manual__1", "privacy")
        for i in range(5):
            evidence.append_evidence(s, run, kind="image", input_sha256=f"{i:064x}",
                                     response_sha256=f"{i + 100:064x}", model_version_id=mv, latency_ms=1.5)
        run_id = run.id
    with session_scope(db_url) as s:
        run = evidence.start_run(s, "manual__1", "privacy")
        assert run.id == run_id  # found again, not created twice
        check = evidence.verify_chain(s, run)
        assert check.ok and check.length == 5 and check.head == evidence.chain_head(s, run)
        row = s.scalar(select(EvidenceItem).where(EvidenceItem.seq == 3))
        # evidence rows are append-only in the database (migration 0003): tamper past it
        from tests.fixtures_reports import force_update_evidence

        force_update_evidence(s, row.id, response_sha256="f" * 64)
    with session_scope(db_url) as s:
        check = evidence.verify_chain(s, evidence.start_run(s, "manual__1", "privacy"))
        assert not check.ok and check.first_bad_seq == 3


def test_finding_stored_once_per_run_method_target_version(db_url):
    with session_scope(db_url) as s:
        mv = _model_version(s)
        run = evidence.start_run(s, "manual__2", "privacy")
        _, created = evidence.store_finding(s, run, _result(), target_key="subject:1", model_version_id=mv)
        assert created
    with session_scope(db_url) as s:  # a retried task
        run = evidence.start_run(s, "manual__2", "privacy")
        _, created = evidence.store_finding(s, run, _result(0.5), target_key="subject:1", model_version_id=mv)
        assert not created
        assert s.scalar(select(func.count()).select_from(Finding)) == 1
        assert s.scalar(select(func.count()).select_from(EvidenceItem)) == 1  # the finding's row
        assert evidence.verify_chain(s, run).ok
