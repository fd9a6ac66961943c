"""Release of a draft report after a person's decision, recorded in ``report_decisions``.

A draft (rendered by ``render_report``, one ``reports`` row) is offered to nobody. When a
person with the release role approves it, :func:`release_report` renders the released
version (the same case, with the approval block on its last page), signs it and inserts
an ``approved`` decision naming the released file; :func:`reject_report` inserts a
``rejected`` decision and signs nothing. Decisions are insert-only (the database refuses
UPDATE) and hash-chained over the table: each row's hash covers the previous row's hash
and its own fields, so a changed or removed decision breaks :func:`verify_decisions`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.evidence import sha256_hex
from audit_lib.reports.case import ReportError
from audit_lib.store.models import Report, ReportDecision

log = logging.getLogger(__name__)

GENESIS = "0" * 64
DECISIONS = ("approved", "rejected")


@dataclass(frozen=True)
class Decision:
    """Who decided, when, with which comment, in which approval step (a DAG run)."""

    decided_by: str
    decided_at: datetime
    comment: str | None = None
    dag_run: str | None = None

    def __post_init__(self) -> None:
        if not self.decided_by.strip():
            raise ReportError("a decision needs the person who made it")

    def as_block(self) -> dict[str, str | None]:
        """What the approval block of the released report prints."""
        return {"decided_by": self.decided_by, "comment": self.comment, "dag_run": self.dag_run,
                "decided_at": _utc(self.decided_at).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _utc(when: datetime) -> datetime:
    """SQLite returns naive datetimes; the store writes UTC only."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def decision_hash(prev_hash: str, row: ReportDecision) -> str:
    """sha256 of the previous row's hash and this row's fields (canonical JSON)."""
    fields = {"report_id": row.report_id, "decision": row.decision, "decided_by": row.decided_by,
              "decided_at": _utc(row.decided_at).isoformat(),
              "comment": row.comment, "released_sha256": row.released_sha256,
              "signature": row.signature, "dag_run": row.dag_run}
    return sha256_hex((prev_hash + json.dumps(fields, sort_keys=True)).encode())


def decision_for(session: Session, report_id: int) -> ReportDecision | None:
    """The decision on a report, if one was made."""
    return session.scalar(select(ReportDecision).where(ReportDecision.report_id == report_id))


def released_decision(session: Session, report_id: int) -> ReportDecision | None:
    """The ``approved`` decision with its released file, or None for a draft or a rejection."""
    row = decision_for(session, report_id)
    return row if row is not None and row.decision == "approved" and row.released_path else None


def _insert(session: Session, report: Report, decision: str, who: Decision, **released: str | None) -> ReportDecision:
    if decision not in DECISIONS:
        raise ReportError(f"decision {decision!r}: expected one of {DECISIONS}")
    last = session.scalar(select(ReportDecision).order_by(ReportDecision.id.desc()).limit(1))
    prev = last.row_hash if last is not None else GENESIS
    row = ReportDecision(report_id=report.id, decision=decision, decided_by=who.decided_by,
                         decided_at=who.decided_at, comment=who.comment, dag_run=who.dag_run,
                         prev_hash=prev, row_hash="", **released)
    row.row_hash = decision_hash(prev, row)
    session.add(row)
    session.flush()
    return row


def _existing(session: Session, report: Report, decision: str) -> ReportDecision | None:
    """A retried task finds its own decision and does nothing; the opposite decision on
    the same report is refused (a decision is final)."""
    row = decision_for(session, report.id)
    if row is not None and row.decision != decision:
        raise ReportError(f"report {report.case_id} was already {row.decision} by {row.decided_by}; "
                          "a decision is final: render a new draft")
    return row


def reject_report(session: Session, report: Report, who: Decision) -> ReportDecision:
    """Record a rejection: the draft stays on disk and in ``reports``, is never signed and
    never offered."""
    return _existing(session, report, "rejected") or _insert(session, report, "rejected", who)


def record_release(session: Session, report: Report, who: Decision, released_path: str,
                   released_sha256: str, signature: str) -> ReportDecision:
    """Record the signed file at ``released_path`` (made by :func:`release_report`) as the
    released version of ``report``: the ``approved`` decision. The web app serves the
    path only if it resolves inside its reports folder."""
    return _insert(session, report, "approved", who, released_path=released_path,
                   released_sha256=released_sha256, signature=signature)


def release_report(session: Session, report: Report, case: str, who: Decision,
                   out_dir: Path) -> ReportDecision:
    """Render the released version of ``report`` (case spec ``case``) with ``who``'s
    approval on its last page, sign it, and record the ``approved`` decision.

    The rendered version (``{case_id}-approved.pdf``) is signed into
    ``{case_id}-released.pdf``; nothing is recorded when rendering or signing fails, and a
    retry removes what such a try left (it was never recorded, so never offered).
    """
    from audit_lib.reports.render import render_report
    from audit_lib.reports.sign_release import sign_released

    existing = _existing(session, report, "approved")
    if existing is not None:
        return existing
    approved = out_dir / f"{report.case_id}-approved.pdf"  # rendered, not yet signed
    released = out_dir / f"{report.case_id}-released.pdf"
    for leftover in (approved, released):  # from a try that failed before recording
        leftover.unlink(missing_ok=True)
    render_report(session, case, out_dir, case_id=report.case_id, now=_utc(report.created_at),
                  approval=who.as_block())
    rendered_sha256 = sha256_hex(approved.read_bytes())
    signature = f"{sign_released(approved, released)}; rendered sha256 {rendered_sha256}"
    approved.unlink()  # the signed file is the one of record
    row = record_release(session, report, who, str(released.resolve()),
                         sha256_hex(released.read_bytes()), signature)
    log.info("report %s released: approved by %s, %s", report.case_id, who.decided_by, signature)
    return row


def verify_decisions(session: Session) -> list[str]:
    """Problems with the decisions' hash chain (empty when every row recomputes)."""
    prev, problems = GENESIS, []
    for row in session.scalars(select(ReportDecision).order_by(ReportDecision.id)):
        if row.prev_hash != prev:
            problems.append(f"decision {row.id}: the previous decision is missing or changed")
        if decision_hash(row.prev_hash, row) != row.row_hash:
            problems.append(f"decision {row.id} on report {row.report_id}: its fields were changed")
        prev = row.row_hash
    return problems
