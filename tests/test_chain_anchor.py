"""Chain anchors: a run's chain head written outside the database when the run closes,
signed with the operator's key and timestamped by the TSA, so that a chain deleted and
re-inserted inside the database (by its superuser, past grants and triggers) so that it
recomputes is still caught by ``report verify``."""

from __future__ import annotations

import json
import stat

import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from audit_lib import evidence
from audit_lib.cli import app
from audit_lib.config import get_settings
from audit_lib.reports import render_report, verify_report
from audit_lib.reports.anchors import anchor_path
from audit_lib.reports.signing import generate_keypair
from audit_lib.store import session_scope
from audit_lib.store.models import AuditRun, EvidenceItem
from tests.fixtures_reports import add_model_version, bypass_append_only, make_case_findings, watermark_result
from tests.tsa_server import TSAServer, make_pki

RUN = "ownership_audit__anchored"


@pytest.fixture
def anchored(db_url, tmp_path, monkeypatch):
    """A closed run on each backend, with the operator's Ed25519 key and a local TSA set."""
    pki = make_pki(tmp_path / "pki")
    priv, pub = tmp_path / "op.key", tmp_path / "op.pub"
    generate_keypair(priv, pub)
    with TSAServer(pki) as url:
        monkeypatch.setenv("AUDIT_REPORT_SIGNING_KEY", str(priv))
        monkeypatch.setenv("AUDIT_REPORT_VERIFY_KEY", str(pub))
        monkeypatch.setenv("AUDIT_TSA_URL", url)
        monkeypatch.setenv("AUDIT_TSA_CERT", str(pki.root))
        get_settings.cache_clear()
        with session_scope(db_url) as s:
            mv = add_model_version(s, "suspect-anchored")
            make_case_findings(s, RUN, "ownership", [(watermark_result(), f"suspect:{mv.model_id}", mv.id, None)],
                               n_queries=4)
        with session_scope(db_url) as s:
            run = s.scalar(select(AuditRun).where(AuditRun.run_key == RUN))
            yield run.id, evidence.verify_chain(s, run).head
    get_settings.cache_clear()


def _forge_chain(db_url: str) -> str:
    """As the database superuser, in one transaction: delete the run's whole chain and insert
    a forged one (one response changed) that recomputes; returns the forged head."""
    with session_scope(db_url) as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == RUN))
        items = evidence.run_evidence(s, run)
        rows = [evidence.EvidenceRow(kind=i.kind, input_sha256=i.input_sha256,
                                     response_sha256=("f" * 64 if i.seq == 2 else i.response_sha256),
                                     model_version_id=i.model_version_id, cached=i.cached,
                                     latency_ms=i.latency_ms, requested_at=i.requested_at) for i in items]
        with bypass_append_only(s):
            s.execute(delete(EvidenceItem).where(EvidenceItem.run_id == run.id))
            s.flush()
            evidence.append_evidence_many(s, run, rows)
        check = evidence.verify_chain(s, run)
        assert check.ok and check.length == len(rows)  # the forged chain verifies on its own
        return check.head


def test_anchor_is_written_signed_and_timestamped_when_the_run_closes(anchored):
    run_id, head = anchored
    path = anchor_path(run_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc["anchor"]["chain_head"] == head and doc["anchor"]["run_key"] == RUN
    assert doc["anchor"]["status"] == "succeeded"
    assert doc["ed25519"] and doc["rfc3161"]


def test_superuser_chain_forgery_is_detected_by_report_verify(db_url, anchored, tmp_path):
    run_id, head = anchored
    forged_head = _forge_chain(db_url)
    assert forged_head != head
    with session_scope(db_url) as s:  # a new report rendered from the forged store...
        report = render_report(s, f"run:{RUN}", tmp_path)
    with session_scope(db_url) as s:
        result = verify_report(s, report)
    # ...passes every check of the PDF and the store except the anchor
    assert len(result.problems) == 1 and "differs from the chain anchored when the run closed" in \
        result.problems[0], result.problems
    assert result.changed_side == "the store"
    out = CliRunner().invoke(app, ["report", "verify", str(report)])
    assert out.exit_code == 1, out.output
    assert "the evidence in the store was rewritten" in out.output and "changed: the store" in out.output

    # rewriting the anchor to the forged head breaks the anchor's own signature
    path = anchor_path(run_id)
    doc = json.loads(path.read_text())
    doc["anchor"]["chain_head"] = forged_head
    path.write_text(json.dumps(doc))
    out = CliRunner().invoke(app, ["report", "verify", str(report)])
    assert out.exit_code == 1, out.output
    assert "the anchor's signature is invalid" in out.output and "changed: the anchor" in out.output
