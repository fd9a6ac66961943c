"""Retention clean-up and legal holds: expired query-cache answers, runs, reports and
subject photos go; what an active legal hold covers stays; the `retention` DAG runs it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from audit_lib import evidence
from audit_lib.cli import app
from audit_lib.findings import FindingResult
from audit_lib.store import session_scope
from audit_lib.store.models import (AuditedModel, AuditRun, DataSubject, EvidenceItem, ImageBlob, ModelVersion,
                                    PurgedRun, QueryCacheEntry, Report, ReportWithdrawal, SubjectImage, utcnow)

runner = CliRunner()
OLD = timedelta(days=400)  # past every period set below


@pytest.fixture
def periods(monkeypatch):
    from audit_lib.config import get_settings

    for kind in ("CACHE", "EVIDENCE", "REPORTS", "SUBJECT_IMAGES"):
        monkeypatch.setenv(f"AUDIT_RETENTION_{kind}_DAYS", "365")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _finding() -> FindingResult:
    return FindingResult(method="idia", method_version="1", hypothesis="H0", statistic=1.0,
                         null_description="decoys", p_value=0.01, alpha=0.05, decision="positive")


def _subject(s, label: str) -> DataSubject:
    subj = DataSubject(pseudonym=f"subject-{label}", name=f"Person {label}", aliases=[], legal_basis="test")
    s.add(subj)
    s.flush()
    blob = ImageBlob(sha256=label * 64, data=b"photo " + label.encode(), media_type="image/png", width=32,
                     height=32, size_bytes=7)
    s.add(blob)
    s.add(SubjectImage(subject_id=subj.id, sha256=blob.sha256, role="reference", created_at=utcnow() - OLD))
    s.flush()
    return subj


def _old_run(s, key: str, subj: DataSubject, mv: ModelVersion, query: str) -> AuditRun:
    run = evidence.start_run(s, key, "privacy")
    evidence.append_evidence(s, run, kind="image", input_sha256=query, response_sha256="0" * 64,
                             model_version_id=mv.id)
    evidence.store_finding(s, run, _finding(), target_key=f"subject:{subj.id}", model_version_id=mv.id,
                           subject_id=subj.id)
    evidence.finish_run(s, run)
    run.started_at = run.finished_at = utcnow() - OLD
    return run


@pytest.fixture
def store(db_url, tmp_path):
    """The records of :func:`_make_store` on each backend."""
    return _make_store(tmp_path)


def _make_store(tmp_path) -> dict:
    """Two subjects, each with an old run, an old report (file on disk) and old photos; old
    cache answers for both runs' queries and one fresh answer; subject 'a' under hold."""
    with session_scope() as s:
        m = AuditedModel(name="m", kind="api", role="suspect", capabilities=["image"],
                         endpoint_url="http://127.0.0.1:9/")
        s.add(m)
        s.flush()
        mv = ModelVersion(model_id=m.id, version="ab" * 32, how="canary")
        s.add(mv)
        s.flush()
        ids = {}
        for label in ("a", "b"):
            subj = _subject(s, label)
            run = _old_run(s, f"retention__{label}", subj, mv, label * 64)
            pdf = tmp_path / f"{label}.pdf"
            pdf.write_bytes(b"%PDF-1.7 report " + label.encode())
            finding = s.scalar(select(evidence.Finding.id).where(evidence.Finding.run_id == run.id))
            s.add(Report(case_id=f"case-{label}", kind="subject", path=str(pdf), sha256="1" * 64,
                         chain_head=evidence.chain_head(s, run), finding_ids=[finding], created_at=utcnow() - OLD))
            s.add(QueryCacheEntry(model_version=mv.version, input_sha256=label * 64, kind="image", dim=1,
                                  vector=b"\0" * 4, response_sha256="0" * 64, created_at=utcnow() - OLD))
            ids[label] = {"subject": subj.id, "run": run.id, "pdf": pdf}
        s.add(QueryCacheEntry(model_version=mv.version, input_sha256="c" * 64, kind="image", dim=1,
                              vector=b"\0" * 4, response_sha256="0" * 64, created_at=utcnow()))
    res = runner.invoke(app, ["hold", "set", f"subject:{ids['a']['subject']}", "--reason", "matter 17"])
    assert res.exit_code == 0, res.output
    return ids


def test_retention_removes_expired_records_and_keeps_what_a_hold_covers(store, periods):
    res = runner.invoke(app, ["retention", "run", "--json"])
    assert res.exit_code == 0, res.output
    assert '"cache_deleted": 1' in res.output and '"runs_purged": 1' in res.output
    with session_scope() as s:
        cached = set(s.scalars(select(QueryCacheEntry.input_sha256)))
        assert cached == {"a" * 64, "c" * 64}  # b's expired answer went; the held and the fresh stay
        assert set(s.scalars(select(PurgedRun.run_id))) == {store["b"]["run"]}
        assert s.scalar(select(func.count()).select_from(EvidenceItem)
                        .where(EvidenceItem.run_id == store["a"]["run"])) == 2
        assert evidence.verify_chain(s, s.get(AuditRun, store["a"]["run"])).ok
        withdrawn = set(s.scalars(select(ReportWithdrawal.report_id)))
        assert withdrawn == {s.scalar(select(Report.id).where(Report.case_id == "case-b"))}
        photos = set(s.scalars(select(SubjectImage.subject_id)))
        assert photos == {store["a"]["subject"]}
        assert s.get(ImageBlob, "b" * 64) is None and s.get(ImageBlob, "a" * 64) is not None
    assert store["a"]["pdf"].exists() and not store["b"]["pdf"].exists()

    # released, the hold keeps nothing: the next clean-up takes the rest
    assert runner.invoke(app, ["hold", "release", f"subject:{store['a']['subject']}"]).exit_code == 0
    res = runner.invoke(app, ["retention", "run", "--json"])
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        assert set(s.scalars(select(QueryCacheEntry.input_sha256))) == {"c" * 64}
        assert s.scalar(select(func.count()).select_from(EvidenceItem)) == 0
    assert not store["a"]["pdf"].exists()


def test_hold_refusals_are_one_line_and_exit_2(store):
    for args in (["hold", "set", "subject:999", "--reason", "x"], ["hold", "set", "nonsense", "--reason", "x"],
                 ["hold", "set", f"subject:{store['a']['subject']}", "--reason", "again"],
                 ["hold", "release", f"subject:{store['b']['subject']}"],
                 ["retention", "run", "--now", "yesterday"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_the_retention_dag_runs_the_clean_up(airflow_dags, sqlite_db_url, tmp_path, periods):
    _make_store(tmp_path)
    dr = airflow_dags["retention"].test()
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert states == {"enforce_retention": "success"}, states
    with session_scope() as s:
        assert set(s.scalars(select(QueryCacheEntry.input_sha256))) == {"a" * 64, "c" * 64}
