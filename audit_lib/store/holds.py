"""Legal holds on cases (GDPR Art. 17(3)(e)): which findings, runs and reports a hold keeps.

A case is written as ``report render`` takes it: ``subject:ID``, ``ownership:OWNED:SUSPECT``
or ``run:RUN_KEY``. While a hold is active (``released_at`` empty), erasure and retention
clean-up leave the case's evidence, findings and reports alone and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.store.models import AuditRun, CaseHold, DataSubject, Finding, Report, utcnow


class HoldError(ValueError):
    """A hold request that cannot be carried out; says why."""


def _check_case(case: str) -> str:
    from audit_lib.reports.case import ReportError, parse_case

    try:
        parse_case(case)
    except ReportError as exc:
        raise HoldError(str(exc)) from None
    return case.strip()


def active_holds(session: Session) -> list[CaseHold]:
    """Holds in force, oldest first."""
    return list(session.scalars(select(CaseHold).where(CaseHold.released_at.is_(None)).order_by(CaseHold.id)))


def set_hold(session: Session, case: str, *, reason: str, set_by: str | None = None) -> CaseHold:
    """Put a case under legal hold (one active hold per case; setting it again is refused)."""
    case = _check_case(case)
    kind, _, rest = case.partition(":")
    if kind == "subject" and session.get(DataSubject, int(rest)) is None:
        raise HoldError(f"case {case}: no such subject (see `encoder-audit subjects list`)")
    if kind == "run" and session.scalar(select(AuditRun.id).where(AuditRun.run_key == rest)) is None:
        raise HoldError(f"case {case}: no such audit run")
    if not reason.strip():
        raise HoldError("a legal hold needs a reason: pass --reason TEXT (e.g. the matter number)")
    if any(h.case == case for h in active_holds(session)):
        raise HoldError(f"case {case}: already under legal hold")
    hold = CaseHold(case=case, reason=reason.strip(), set_by=set_by)
    session.add(hold)
    session.flush()
    return hold


def release_hold(session: Session, case: str) -> CaseHold:
    """Release the active hold on a case."""
    case = _check_case(case)
    hold = next((h for h in active_holds(session) if h.case == case), None)
    if hold is None:
        raise HoldError(f"case {case}: no legal hold is in force")
    hold.released_at = utcnow()
    session.flush()
    return hold


@dataclass(frozen=True)
class HeldRecords:
    """What the active holds keep: finding ids, run ids and report ids, each with the case
    that holds it."""

    findings: dict[int, str]
    runs: dict[int, str]
    reports: dict[int, str]


def _case_finding_ids(session: Session, case: str) -> set[int]:
    from audit_lib.reports.case import load_case, parse_case, ReportError

    kind, _, rest = case.partition(":")
    if kind == "subject":
        sid = int(rest)
        return set(session.scalars(select(Finding.id).where(
            (Finding.subject_id == sid) | (Finding.target_key == f"subject:{sid}"))))
    if kind == "run":
        return set(session.scalars(select(Finding.id).join(AuditRun, AuditRun.id == Finding.run_id)
                                   .where(AuditRun.run_key == rest)))
    try:
        return {f.row.id for f in load_case(session, parse_case(case)).findings}
    except ReportError:
        return set()


def held_records(session: Session) -> HeldRecords:
    """Everything the active holds keep."""
    findings: dict[int, str] = {}
    runs: dict[int, str] = {}
    reports: dict[int, str] = {}
    for hold in active_holds(session):
        ids = _case_finding_ids(session, hold.case)
        for fid in ids:
            findings.setdefault(fid, hold.case)
        if ids:
            for rid in session.scalars(select(Finding.run_id).where(Finding.id.in_(ids)).distinct()):
                runs.setdefault(rid, hold.case)
        if hold.case.startswith("run:"):
            rid = session.scalar(select(AuditRun.id).where(AuditRun.run_key == hold.case[4:]))
            if rid is not None:
                runs.setdefault(rid, hold.case)
        for r in session.scalars(select(Report)):
            if r.case_id == hold.case or set(r.finding_ids or []) & ids:
                reports.setdefault(r.id, hold.case)
    return HeldRecords(findings, runs, reports)
