"""Audit runs, findings and the hash-chained evidence log.

Evidence items are append-only and chained per audit run: each row's hash covers its own
fields and the previous row's hash, so changing, removing or reordering any row breaks
every hash after it. The chain head (the last row's hash) goes into reports.

The database refuses changes too (migrations 0003 and 0005, PostgreSQL and SQLite): evidence
rows and findings are never updated, and are deleted only for a run first recorded in
``purged_runs`` (a retention purge of the whole run, :mod:`audit_lib.store.tombstones`); a
purged run key takes no new evidence, so a chain cannot be deleted and re-inserted forged.
On PostgreSQL the application's role may only INSERT them (grants); the owner role purges.
Each finding's canonical record is also hashed into its run's chain when stored
(``finding_hash``), so a change made past the database (a superuser disabling triggers) is
detected by ``encoder-audit report verify``.

Lock order (PostgreSQL), the same in every transaction that writes evidence, so concurrent
tasks of one run wait for one another instead of deadlocking: first any ``query_cache``
rows (sorted by key, :mod:`audit_lib.encoders.cache`), then the run's ``audit_runs`` row
(:func:`lock_run`, ``FOR UPDATE``), and only then rows that reference the run (findings,
evidence items). Inserting such a row takes a ``KEY SHARE`` lock on the run's row through
its foreign key; two transactions that each held one and then asked for ``FOR UPDATE``
would wait for each other, which is why :func:`store_finding` locks the run before it
inserts the finding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib import __version__
from audit_lib.findings import FindingResult
from audit_lib.store.models import AuditRun, EvidenceItem, Finding, utcnow


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc_text(dt: datetime) -> str:
    """A timestamp as the chain hashes it: UTC, microseconds (SQLite drops the zone)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds")


def genesis_hash(run_key: str) -> str:
    """The chain's starting point for a run: sha256 of its key."""
    return sha256_hex(b"encoder-audit evidence chain v1\0" + run_key.encode())


def evidence_row_hash(item: EvidenceItem, prev_hash: str) -> str:
    """The hash of one evidence row given the previous row's hash."""
    return record_row_hash(evidence_record(item), prev_hash)


def evidence_record(item: EvidenceItem) -> dict[str, Any]:
    """One evidence row as the chain hashes it and as report manifests carry it (without
    the hashes themselves): timestamps as UTC text, latency rounded to microseconds."""
    return {
        "seq": item.seq, "kind": item.kind, "model_version_id": item.model_version_id,
        "input_sha256": item.input_sha256, "response_sha256": item.response_sha256,
        "cached": bool(item.cached), "requested_at": _utc_text(item.requested_at),
        "latency_ms": round(float(item.latency_ms), 3),
    }


_HASHED_FIELDS = ("seq", "kind", "model_version_id", "input_sha256", "response_sha256", "cached",
                  "requested_at", "latency_ms")


def record_row_hash(record: dict[str, Any], prev_hash: str) -> str:
    """The row hash of an evidence record (from :func:`evidence_record`, or read back from
    a report's manifest), so a chain can be recomputed without the database."""
    fields = {k: record[k] for k in _HASHED_FIELDS}
    fields["prev_hash"] = prev_hash
    return sha256_hex(canonical_json(fields))


def recompute_chain(run_key: str, records: list[dict[str, Any]]) -> ChainCheck:
    """Recompute a run's chain from records alone (a report's manifest): each record's
    ``prev_hash`` and ``row_hash`` must follow from the ones before it."""
    prev = genesis_hash(run_key)
    for expected_seq, rec in enumerate(records, start=1):
        if rec.get("seq") != expected_seq:
            return ChainCheck(False, prev, len(records), rec.get("seq"), f"row {expected_seq} is missing")
        if rec.get("prev_hash") != prev or record_row_hash(rec, prev) != rec.get("row_hash"):
            return ChainCheck(False, prev, len(records), expected_seq, f"row {expected_seq} was altered")
        prev = rec["row_hash"]
    return ChainCheck(True, prev, len(records))


def run_evidence(session: Session, run: AuditRun) -> list[EvidenceItem]:
    """The run's evidence rows in chain order."""
    return list(session.scalars(select(EvidenceItem).where(EvidenceItem.run_id == run.id)
                                .order_by(EvidenceItem.seq)))


def start_run(session: Session, run_key: str, kind: str, config: dict[str, Any] | None = None) -> AuditRun:
    """The audit run with this key, created on first use (a retried task finds it again)."""
    run = session.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
    if run is None:
        run = AuditRun(run_key=run_key, kind=kind, code_version=__version__, config=config or {})
        session.add(run)
        session.flush()
    return run


RUN_STATUSES = ("running", "succeeded", "failed")


def finish_run(session: Session, run: AuditRun, status: str = "succeeded") -> None:
    """Close a run: ``succeeded`` or ``failed``, with its finish time."""
    if status not in RUN_STATUSES[1:]:
        raise ValueError(f"run status {status!r} is not one of {RUN_STATUSES[1:]}")
    run.status = status
    run.finished_at = utcnow()
    session.flush()
    from audit_lib.reports.anchors import write_anchor  # the chain head, anchored outside the store

    write_anchor(session, run)


@contextmanager
def closing_run(run_key: str, db_url: str | None = None) -> Iterator[None]:
    """Close the run ``run_key`` when the block ends: ``succeeded`` when it returns,
    ``failed`` when it raises (the exception goes on). A run that the block never started
    is left alone, so a refusal before the first query leaves no run at all."""
    from audit_lib.store import session_scope

    def close(status: str) -> None:
        with session_scope(db_url) as s:
            run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
            if run is not None and run.status == "running":
                finish_run(s, run, status)

    try:
        yield
    except BaseException:
        close("failed")
        raise
    close("succeeded")


def append_evidence(session: Session, run: AuditRun, *, kind: str, input_sha256: str,
                    response_sha256: str, model_version_id: int | None = None, cached: bool = False,
                    latency_ms: float = 0.0, requested_at: datetime | None = None) -> tuple[int, str]:
    """Append one query to the run's chain (see :func:`append_evidence_many`)."""
    return append_evidence_many(session, run, [EvidenceRow(
        kind=kind, input_sha256=input_sha256, response_sha256=response_sha256,
        model_version_id=model_version_id, cached=cached, latency_ms=latency_ms,
        requested_at=requested_at)])


@dataclass(frozen=True)
class EvidenceRow:
    """One query to append: what was asked (input hash), what came back (response hash)."""

    kind: str
    input_sha256: str
    response_sha256: str
    model_version_id: int | None = None
    cached: bool = False
    latency_ms: float = 0.0
    requested_at: datetime | None = None


def lock_run(session: Session, run: AuditRun) -> None:
    """Lock the run's row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite
    has one writer at a time): concurrent tasks of one run append to its chain in turn.
    Take it before inserting any row that references the run (see the module doc)."""
    session.execute(select(AuditRun.id).where(AuditRun.id == run.id).with_for_update())


def _chain_tip(session: Session, run: AuditRun) -> tuple[int, str]:
    """(last seq, last row hash) of the run's chain, with the run row locked (PostgreSQL)
    so that concurrent tasks of one run append in a single order."""
    lock_run(session, run)
    last = session.execute(select(EvidenceItem.seq, EvidenceItem.row_hash)
                           .where(EvidenceItem.run_id == run.id)
                           .order_by(EvidenceItem.seq.desc()).limit(1)).first()
    return (last[0], last[1]) if last is not None else (0, genesis_hash(run.run_key))


def append_evidence_many(session: Session, run: AuditRun, rows: list[EvidenceRow]) -> tuple[int, str]:
    """Append queries to the run's chain in order, as one bulk INSERT (a model version's
    first audit appends tens of thousands). The run row is locked (PostgreSQL) so that
    concurrent tasks of one run append in a single order; the chain continues from the run's
    last row. Returns the chain's new (last seq, head)."""
    from sqlalchemy import insert

    seq, prev = _chain_tip(session, run)
    now = utcnow()
    values = []
    for row in rows:
        seq += 1
        when = row.requested_at or now
        record = {"seq": seq, "kind": row.kind, "model_version_id": row.model_version_id,
                  "input_sha256": row.input_sha256, "response_sha256": row.response_sha256,
                  "cached": bool(row.cached), "requested_at": _utc_text(when),
                  "latency_ms": round(float(row.latency_ms), 3)}
        row_hash = record_row_hash(record, prev)
        values.append({**record, "run_id": run.id, "requested_at": when, "latency_ms": float(row.latency_ms),
                       "prev_hash": prev, "row_hash": row_hash})
        prev = row_hash
    if values:
        session.execute(insert(EvidenceItem), values)
    return seq, prev


@dataclass(frozen=True)
class ChainCheck:
    """The outcome of re-computing a run's chain from the database."""

    ok: bool
    head: str
    length: int
    first_bad_seq: int | None = None
    problem: str | None = None


VERIFY_BATCH = 10_000  # rows read at a time: a registry-scale run's chain is never all in memory


def verify_chain(session: Session, run: AuditRun) -> ChainCheck:
    """Recompute every row hash of the run's chain; report the first row that does not fit.
    The rows are streamed (their hashed columns, ``VERIFY_BATCH`` at a time), so memory does
    not grow with the chain (a 10,000-subject audit appends over a million rows)."""
    from sqlalchemy import func

    prev = genesis_hash(run.run_key)
    cols = [getattr(EvidenceItem, k) for k in (*_HASHED_FIELDS, "prev_hash", "row_hash")]
    rows = session.execute(select(*cols).where(EvidenceItem.run_id == run.id).order_by(EvidenceItem.seq)
                           .execution_options(yield_per=VERIFY_BATCH))

    def length() -> int:
        rows.close()
        return int(session.scalar(select(func.count()).select_from(EvidenceItem)
                                  .where(EvidenceItem.run_id == run.id)) or 0)

    n = 0
    for n, item in enumerate(rows, start=1):
        if item.seq != n:
            return ChainCheck(False, prev, length(), item.seq, f"row {n} is missing")
        if item.prev_hash != prev or evidence_row_hash(item, prev) != item.row_hash:
            return ChainCheck(False, prev, length(), item.seq, f"row {item.seq} was altered")
        prev = item.row_hash
    return ChainCheck(True, prev, n)


def chain_head(session: Session, run: AuditRun) -> str:
    """The hash of the run's last evidence row (the genesis hash for an empty run)."""
    last = session.scalar(select(EvidenceItem.row_hash).where(EvidenceItem.run_id == run.id)
                          .order_by(EvidenceItem.seq.desc()).limit(1))
    return last or genesis_hash(run.run_key)


def store_finding(session: Session, run: AuditRun, result: FindingResult, *, target_key: str,
                  model_version_id: int, subject_id: int | None = None) -> tuple[Finding, bool]:
    """Store a finding once per (run, method, target, model version): a retried task gets
    the existing row back (``created`` False) and writes nothing. A new finding is also
    appended to the evidence chain (kind ``finding``, its canonical JSON hashed). The run's
    row is locked first, before the finding's insert (the module doc's lock order)."""
    lock_run(session, run)
    existing = session.scalar(select(Finding).where(
        Finding.run_id == run.id, Finding.method == result.method,
        Finding.target_key == target_key, Finding.model_version_id == model_version_id))
    if existing is not None:
        return existing, False
    row = Finding(run_id=run.id, method=result.method, method_version=result.method_version,
                  target_key=target_key, subject_id=subject_id, model_version_id=model_version_id,
                  hypothesis=result.hypothesis, statistic=result.statistic,
                  null_description=result.null_description, p_value=result.p_value,
                  alpha=result.alpha, decision=result.decision, effect_size=result.effect_size,
                  parameters=result.parameters, details=result.details)
    session.add(row)
    session.flush()
    append_evidence(session, run, kind="finding", model_version_id=model_version_id,
                    input_sha256=finding_input_hash(result.method, target_key),
                    response_sha256=finding_hash(row))
    return row, True


def finding_record(row: Finding) -> dict[str, Any]:
    """The machine-readable form of a stored finding (hashed into the chain, attached to
    reports)."""
    return {
        "id": row.id, "run_id": row.run_id, "method": row.method,
        "method_version": row.method_version, "target_key": row.target_key,
        "model_version_id": row.model_version_id, "hypothesis": row.hypothesis,
        "statistic": _as_float(row.statistic), "null_description": row.null_description,
        "p_value": _as_float(row.p_value), "alpha": _as_float(row.alpha), "decision": row.decision,
        "effect_size": _as_float(row.effect_size), "parameters": row.parameters, "details": row.details,
    }


def _as_float(x: Any) -> float | None:
    """Float columns read back as float: normalise before hashing (an int 3 given at store
    time and the 3.0 read back later must hash alike)."""
    return None if x is None else float(x)


def finding_hash(row: Finding) -> str:
    """The sha256 of a finding's canonical record: the ``response_sha256`` of its chain row."""
    return sha256_hex(canonical_json(finding_record(row)))


def finding_input_hash(method: str, target_key: str) -> str:
    """The ``input_sha256`` of a finding's chain row."""
    return sha256_hex(f"{method}|{target_key}".encode())
