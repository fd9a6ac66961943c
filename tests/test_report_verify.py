"""Evidence integrity: append-only rows, and `report verify` catching any tampering."""

from __future__ import annotations

import pytest
from pypdf import PdfReader, PdfWriter
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from audit_lib import evidence
from audit_lib.cli import app
from audit_lib.reports import render_report, verify_report
from audit_lib.store import session_scope
from audit_lib.store.models import AuditRun, EvidenceItem, Finding
from tests.fixtures_reports import (
    add_model_version,
    force_update_evidence,
    make_case_findings,
    watermark_result,
)

RUN = "ownership_audit__verify"


@pytest.fixture
def one_report(db_url, tmp_path):
    """A one-finding run and its rendered report."""
    with session_scope(db_url) as s:
        mv = add_model_version(s, "suspect-v")
        make_case_findings(s, RUN, "ownership", [(watermark_result(), f"suspect:{mv.model_id}", mv.id, None)],
                           n_queries=5)
    with session_scope(db_url) as s:
        path = render_report(s, f"run:{RUN}", tmp_path)
    with session_scope(db_url) as s:
        result = verify_report(s, path)
    assert result.ok and len(result.checks) == 6, result.problems  # incl. the run's chain anchor
    return path


def _verify(db_url, path, **kw):
    with session_scope(db_url) as s:
        return verify_report(s, path, **kw)


def test_database_refuses_to_update_evidence(db_url):
    with session_scope(db_url) as s:
        mv = add_model_version(s, "m")
        make_case_findings(s, "r1", "privacy", [], n_queries=0)
        run = evidence.start_run(s, "r1", "privacy")
        for i in range(3):
            evidence.append_evidence(s, run, kind="image", input_sha256=f"{i:064x}", response_sha256="0" * 64,
                                     model_version_id=mv.id)
    with pytest.raises(DBAPIError, match="append-only"):
        with session_scope(db_url) as s:
            s.execute(update(EvidenceItem).where(EvidenceItem.seq == 2).values(response_sha256="f" * 64))
    if db_url.startswith("postgresql"):  # a cut in the chain is refused; a whole run may be purged
        with pytest.raises(DBAPIError, match="append-only"):
            with session_scope(db_url) as s:
                s.execute(delete(EvidenceItem).where(EvidenceItem.seq == 3))
        with session_scope(db_url) as s:  # a purge is recorded first (migration 0005)
            from audit_lib.store.tombstones import purge_run

            purge_run(s, s.scalar(select(AuditRun).where(AuditRun.run_key == "r1")), "retention")
    with session_scope(db_url) as s:
        run = evidence.start_run(s, "r1", "privacy")
        assert evidence.verify_chain(s, run).ok


def test_tampered_evidence_row_fails_verification(db_url, one_report):
    with session_scope(db_url) as s:
        item = s.scalar(select(EvidenceItem).where(EvidenceItem.seq == 3))
        force_update_evidence(s, item.id, response_sha256="e" * 64)
    result = _verify(db_url, one_report)
    assert not result.ok
    assert any("row 3 was altered" in p for p in result.problems), result.problems
    # the PDF itself is still intact: the offline check alone passes
    assert verify_report(None, one_report).ok
    # and no new report can vouch for the broken chain
    with session_scope(db_url) as s, pytest.raises(Exception, match="does not verify"):
        render_report(s, f"run:{RUN}", one_report.parent)


def test_tampered_finding_fails_verification(db_url, one_report):
    with session_scope(db_url) as s:
        from tests.fixtures_reports import bypass_append_only

        f = s.scalar(select(Finding))
        with bypass_append_only(s):  # a superuser past the triggers: the chain catches this
            f.p_value = 0.5
            s.flush()
    result = _verify(db_url, one_report)
    assert any("store's row differs" in p for p in result.problems), result.problems


def _rewrite_attachment(src, dst, mutate):
    reader = PdfReader(str(src))
    writer = PdfWriter(clone_from=reader)
    for f in writer.attachment_list:
        if f.name == "evidence.json":
            f.content = mutate(f.content)
    with open(dst, "wb") as fh:
        writer.write(fh)


def test_tampered_attachment_fails_verification(db_url, one_report, tmp_path):
    forged = tmp_path / "forged.pdf"
    _rewrite_attachment(one_report, forged, lambda b: b.replace(b'"decision":"positive"', b'"decision":"negative"'))
    assert PdfReader(str(forged)).attachments["evidence.json"][0] != PdfReader(str(one_report)).attachments["evidence.json"][0]
    offline = verify_report(None, forged)
    assert any("attachment was altered or replaced" in p for p in offline.problems), offline.problems
    online = _verify(db_url, forged)
    assert any("the file was altered" in p for p in online.problems), online.problems


def test_any_change_to_the_pdf_fails_verification(db_url, one_report, tmp_path):
    altered = tmp_path / one_report.name
    altered.write_bytes(one_report.read_bytes() + b"\n% a comment appended to the file\n")  # text and attachment intact
    assert verify_report(None, altered).ok  # so only the store's record of the file can tell
    result = _verify(db_url, altered)
    assert [p for p in result.problems if "the file was altered" in p], result.problems


def test_detached_signature(db_url, one_report, tmp_path, monkeypatch):
    from audit_lib.reports.signing import generate_keypair, sign_report

    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(priv, pub)
    assert priv.stat().st_mode & 0o077 == 0
    sig = sign_report(one_report, priv)
    assert _verify(db_url, one_report, signature=sig, public_key=pub).ok
    other_priv, other_pub = tmp_path / "o.pem", tmp_path / "o.pub"
    generate_keypair(other_priv, other_pub)
    bad = _verify(db_url, one_report, signature=sig, public_key=other_pub)
    assert any("signature does not match" in p for p in bad.problems)
    forged = tmp_path / "forged.pdf"
    forged.write_bytes(one_report.read_bytes() + b"\n")
    assert any("signature does not match" in p for p in verify_report(None, forged, signature=sig, public_key=pub).problems)


def test_cli_render_verify_sign(db_url, tmp_path):
    with session_scope(db_url) as s:
        mv = add_model_version(s, "suspect-cli")
        make_case_findings(s, "cli_run", "ownership", [(watermark_result(), f"suspect:{mv.model_id}", mv.id, None)],
                           n_queries=2)
    runner = CliRunner()
    out = runner.invoke(app, ["report", "render", "--case", "run:cli_run", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    pdf = next(tmp_path.glob("EA-run-cli_run-*.pdf"))
    keys = runner.invoke(app, ["report", "keygen", "--private-key", str(tmp_path / "k.pem"),
                               "--public-key", str(tmp_path / "k.pub")])
    assert keys.exit_code == 0, keys.output
    signed = runner.invoke(app, ["report", "sign", str(pdf), "--key", str(tmp_path / "k.pem")])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(app, ["report", "verify", str(pdf), "--signature", f"{pdf}.sig",
                             "--public-key", str(tmp_path / "k.pub")])
    assert ok.exit_code == 0 and "verified" in ok.output, ok.output
    with session_scope(db_url) as s:
        force_update_evidence(s, s.scalar(select(EvidenceItem.id).where(EvidenceItem.seq == 1)), latency_ms=1.0)
    bad = runner.invoke(app, ["report", "verify", str(pdf)])
    assert bad.exit_code == 1 and "row 1 was altered" in bad.output
    refused = runner.invoke(app, ["report", "render", "--case", "subject:nope"])
    assert refused.exit_code == 2 and "expected subject:ID" in refused.output
