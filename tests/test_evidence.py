"""The evidence chain and idempotent findings."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from audit_lib import evidence
from audit_lib.findings import FindingResult
from audit_lib.store import session_scope
from audit_lib.store.models import (AuditedModel, AuditRun, EvidenceItem, Finding, ModelVersion, PurgedRun,
                                    Report)
from audit_lib.store.tombstones import purge_run
from tests.conftest import _clear


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


# --- the store refuses rewrites (migration 0005) ----------------------------------------


def _run_with_chain(db_url: str, key: str, n: int = 4) -> tuple[int, int, str]:
    """A run with ``n`` evidence rows and one finding: (run id, model version id, head)."""
    with session_scope(db_url) as s:
        mv = _model_version(s)
        run = evidence.start_run(s, key, "privacy")
        for i in range(n):
            evidence.append_evidence(s, run, kind="image", input_sha256=f"{i:064x}",
                                     response_sha256=f"{i + 7:064x}", model_version_id=mv)
        evidence.store_finding(s, run, _result(), target_key="subject:1", model_version_id=mv)
        return run.id, mv, evidence.chain_head(s, run)


def _forged_rows(run_key: str, run_id: int, mv: int) -> list[dict]:
    """A forged chain for the run that verifies on its own (hashes recomputed)."""
    prev, rows = evidence.genesis_hash(run_key), []
    for seq in (1, 2):
        rec = {"seq": seq, "kind": "image", "model_version_id": mv, "input_sha256": f"{seq:064x}",
               "response_sha256": "c" * 64, "cached": False,
               "requested_at": "2026-01-01T00:00:00.000000", "latency_ms": 0.0}
        h = evidence.record_row_hash(rec, prev)
        rows.append({**rec, "run_id": run_id, "requested_at": datetime(2026, 1, 1), "prev_hash": prev,
                     "row_hash": h})
        prev = h
    return rows


def test_deleting_a_whole_chain_and_inserting_a_forged_one_is_refused(db_url):
    run_id, mv, head = _run_with_chain(db_url, "forge__1")
    with pytest.raises(DBAPIError, match="append-only"):
        with session_scope(db_url) as s:  # one transaction: delete the chain, insert a forgery
            s.execute(delete(EvidenceItem).where(EvidenceItem.run_id == run_id))
            s.execute(insert(EvidenceItem), _forged_rows("forge__1", run_id, mv))
    with session_scope(db_url) as s:
        run = s.get(AuditRun, run_id)
        check = evidence.verify_chain(s, run)
        assert check.ok and check.head == head and check.length == 5  # untouched


def test_findings_and_reports_rows_cannot_be_changed(db_url):
    run_id, _mv, head = _run_with_chain(db_url, "forge__2")
    with session_scope(db_url) as s:
        s.add(Report(case_id="subject:1", kind="subject", path="/nowhere/r.pdf", sha256="a" * 64,
                     chain_head=head, finding_ids=[1]))
    for stmt in (update(Finding).values(decision="negative"),
                 delete(Finding).where(Finding.run_id == run_id),
                 update(Report).values(sha256="b" * 64),
                 update(Report).values(path="/elsewhere/forged.pdf"),
                 delete(Report)):
        with pytest.raises(DBAPIError, match="append-only"):
            with session_scope(db_url) as s:
                s.execute(stmt)
    with session_scope(db_url) as s:
        assert s.scalar(select(Report.sha256)) == "a" * 64
        assert s.scalar(select(Finding.decision)) == "positive"


def test_a_recorded_purge_removes_a_run_and_its_key_takes_no_new_evidence(db_url):
    run_id, mv, head = _run_with_chain(db_url, "forge__3")
    with session_scope(db_url) as s:
        mark = purge_run(s, s.get(AuditRun, run_id), "retention: evidence older than 1 day")
        assert mark.chain_head == head and mark.length == 5
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(EvidenceItem)) == 0
        assert s.scalar(select(func.count()).select_from(Finding)) == 0
    with pytest.raises(DBAPIError, match="append-only"):  # the forgery after a purge
        with session_scope(db_url) as s:
            s.execute(insert(EvidenceItem), _forged_rows("forge__3", run_id, mv))
    with pytest.raises(DBAPIError, match="append-only"):  # the purge record is permanent
        with session_scope(db_url) as s:
            s.execute(delete(PurgedRun))


def test_the_application_role_may_insert_but_never_rewrite_evidence(pg_database_url):
    """PostgreSQL grants (migration 0005): the application role inserts evidence, findings
    and reports but cannot UPDATE or DELETE them, even past the triggers; it still closes
    runs. The test connects as the migrating superuser and takes the application role."""
    import os

    db_url = pg_database_url
    _clear(db_url)

    role = os.environ.get("AUDIT_APP_DB_ROLE", "encoder_audit_app")
    run_id, mv, _head = _run_with_chain(db_url, "forge__4")
    refused = [f"UPDATE evidence_items SET response_sha256 = '{'f' * 64}'",
               f"DELETE FROM evidence_items WHERE run_id = {run_id}",
               "UPDATE findings SET decision = 'negative'", "DELETE FROM findings",
               "DELETE FROM reports", "UPDATE reports SET sha256 = 'x'",
               "TRUNCATE evidence_items CASCADE", "DELETE FROM purged_runs"]
    for sql in refused:
        with pytest.raises(DBAPIError, match="permission denied"):
            with session_scope(db_url) as s:
                s.execute(text(f'SET LOCAL ROLE "{role}"'))
                s.execute(text(sql))
    with session_scope(db_url) as s:  # what the application legitimately does
        s.execute(text(f'SET LOCAL ROLE "{role}"'))
        run = s.get(AuditRun, run_id)
        evidence.append_evidence(s, run, kind="image", input_sha256="9" * 64, response_sha256="8" * 64,
                                 model_version_id=mv)
        evidence.finish_run(s, run, "succeeded")
    with session_scope(db_url) as s:
        run = s.get(AuditRun, run_id)
        assert run.status == "succeeded" and evidence.verify_chain(s, run).ok


class _TinyModel:
    """A model without weights for the store's sake: a 4-number answer per image's bytes."""

    capabilities = frozenset({"image"})
    embedding_dim = 4
    model_version = "cd" * 32

    def encode_images(self, images, *, kind: str = "image"):
        import numpy as np

        return np.array([[len(b), b[-1] + 1, 1.0, 2.0] for b in images], dtype=np.float32)


def test_two_writers_of_one_run_take_turns_without_deadlock(pg_database_url, monkeypatch):
    """Two tasks of one run on PostgreSQL, each alternating a cached query (cache rows, then
    evidence) and a finding. Each transaction stops just before it asks for the run's row
    lock until the other writer's transaction gets there too, so both hold whatever they
    took before asking: with the finding inserted before the lock (its foreign key's KEY
    SHARE on the run's row) both then wait for each other and PostgreSQL kills one as a
    deadlock. In the lock order of ``audit_lib.evidence`` they take turns."""
    import threading

    from audit_lib.encoders.cache import StoreBackedHandle

    db_url = pg_database_url
    _clear(db_url)
    with session_scope(db_url) as s:
        model_id = s.get(ModelVersion, _model_version(s)).model_id
    # both handles (and the run) exist before the writers start
    handles = [StoreBackedHandle(_TinyModel(), db_url=db_url, model_id=model_id, run_key="together__1")
               for _ in range(2)]
    meet = threading.Barrier(2, timeout=10)
    lock_run = evidence.lock_run

    def meet_then_lock(session, run) -> None:
        if not session.info.get("met"):  # the transaction's first request for the lock
            session.info["met"] = True
            meet.wait()
        lock_run(session, run)

    monkeypatch.setattr(evidence, "lock_run", meet_then_lock)
    rounds, errors = 3, []

    def writer(w: int) -> None:
        try:
            for r in range(rounds):
                handles[w].encode_images([f"writer {w} round {r} image {i}".encode() for i in range(3)])
                with session_scope(db_url) as s:
                    evidence.store_finding(s, evidence.start_run(s, "together__1", "privacy"), _result(),
                                           target_key=f"writer:{w}:{r}", model_version_id=handles[w].model_version_id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            meet.abort()

    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with session_scope(db_url) as s:
        run = evidence.start_run(s, "together__1", "privacy")
        check = evidence.verify_chain(s, run)
        assert check.ok and check.length == 2 * rounds * (3 + 1)
        assert s.scalar(select(func.count()).select_from(Finding).where(Finding.run_id == run.id)) == 2 * rounds
