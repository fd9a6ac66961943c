"""The end of an audit run: what was decided, and which cases need a report."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sqlalchemy import select

from audit_lib.store import session_scope
from audit_lib.store.models import AuditRun, Finding, Report

log = logging.getLogger(__name__)


def case_for(finding: Finding) -> str | None:
    """The report case a finding belongs to: ``subject:ID``, or ``ownership:OWNED:SUSPECT``
    for an ownership finding (target ``suspect:SUSPECT`` with ``parameters["owned_model_id"]``,
    or the older ``ownership:OWNED:SUSPECT`` target)."""
    if finding.subject_id is not None:
        return f"subject:{finding.subject_id}"
    if finding.target_key.startswith("ownership:"):
        return finding.target_key
    owned = (finding.parameters or {}).get("owned_model_id")
    if finding.target_key.startswith("suspect:") and owned is not None:
        return f"ownership:{int(owned)}:{finding.target_key.split(':', 1)[1]}"
    return None


def _open_sub_runs(session: Any, run_key: str) -> list[AuditRun]:
    """The still-running sub-runs of a run (keys ``RUN/...``, e.g. ``RUN/theft/MODEL``)."""
    return list(session.scalars(select(AuditRun).where(
        AuditRun.run_key.startswith(f"{run_key}/", autoescape=True), AuditRun.status == "running")))


def summarise_run(run_key: str, *, db_url: str | None = None) -> dict[str, Any]:
    """Count the run's findings by method and decision, mark the run and its sub-runs
    (``RUN/...``) ``succeeded`` and return the counts (ids and numbers only)."""
    from audit_lib.evidence import chain_head, finish_run

    with session_scope(db_url) as session:
        run = session.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        if run is None:
            raise ValueError(f"audit run {run_key!r} does not exist: did the snapshot task run?")
        findings = list(session.scalars(select(Finding).where(Finding.run_id == run.id)))
        counts = Counter(f"{f.method}:{f.decision}" for f in findings)
        finish_run(session, run, "succeeded")
        for sub in _open_sub_runs(session, run_key):
            finish_run(session, sub, "succeeded")
        head = chain_head(session, run)
    log.info("run %s: %d findings (%s); evidence chain head %s", run_key, len(findings),
             ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none", head)
    return {"run_key": run_key, "n_findings": len(findings), "counts": dict(counts), "chain_head": head}


def close_runs(run_key: str, status: str = "succeeded", *, db_url: str | None = None) -> dict[str, Any]:
    """Close the run ``run_key`` and its sub-runs (``RUN/...``, e.g. the enrolment's
    ``RUN/theft``) that are still ``running`` as ``status`` (``succeeded``, or ``failed`` on a
    DAG's failure path). Runs that are already closed are left as they are; a run that was
    never opened (the snapshot failed) is no error. Returns the keys closed."""
    from audit_lib.evidence import finish_run

    closed = []
    with session_scope(db_url) as session:
        run = session.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        for r in ([run] if run is not None and run.status == "running" else []) + _open_sub_runs(session, run_key):
            finish_run(session, r, status)
            closed.append(r.run_key)
    if closed:
        (log.warning if status == "failed" else log.info)("run %s: marked %s: %s", run_key, status, ", ".join(closed))
    return {"run_key": run_key, "status": status, "closed": closed}


def fail_run(run_key: str, *, db_url: str | None = None) -> dict[str, Any]:
    """The failure path of a DAG: :func:`close_runs` with ``failed``."""
    return close_runs(run_key, "failed", db_url=db_url)


def new_positive_cases(run_key: str, *, db_url: str | None = None) -> list[str]:
    """Cases with a positive finding in this run that no stored report covers yet."""
    with session_scope(db_url) as session:
        run = session.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        if run is None:
            raise ValueError(f"audit run {run_key!r} does not exist")
        positives = list(session.scalars(select(Finding).where(
            Finding.run_id == run.id, Finding.decision == "positive").order_by(Finding.id)))
        reported: set[int] = set()
        for ids in session.scalars(select(Report.finding_ids)):
            reported.update(int(i) for i in ids or [])
        cases = sorted({c for f in positives if f.id not in reported and (c := case_for(f))})
    log.info("run %s: %d positive findings, %d new case(s) for reports: %s", run_key,
             len(positives), len(cases), ", ".join(cases) or "none")
    return cases


def pending_cases(*, db_url: str | None = None) -> list[str]:
    """Every case with a positive finding not covered by a stored report (any run)."""
    with session_scope(db_url) as session:
        reported: set[int] = set()
        for ids in session.scalars(select(Report.finding_ids)):
            reported.update(int(i) for i in ids or [])
        positives = session.scalars(select(Finding).where(Finding.decision == "positive"))
        return sorted({c for f in positives if f.id not in reported and (c := case_for(f))})
