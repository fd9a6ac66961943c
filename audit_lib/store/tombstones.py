"""The only ways protected rows leave the store: a run purged as a whole (recorded first in
``purged_runs``) and a report withdrawn (its file deleted, a tombstone row kept). The
database refuses every other change to them (migration 0005)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from audit_lib.store.models import AuditRun, EvidenceItem, Finding, PurgedRun, Report, ReportWithdrawal


def purge_run(session: Session, run: AuditRun, reason: str) -> PurgedRun:
    """Record the run's chain head and length, then delete its findings and evidence. The
    run row stays (its key can never take evidence again). Needs a role that may delete
    evidence (the owner role on PostgreSQL: ``AUDIT_MIGRATION_DATABASE_URL``)."""
    from audit_lib.evidence import chain_head

    length = len(list(session.scalars(select(EvidenceItem.id).where(EvidenceItem.run_id == run.id))))
    mark = PurgedRun(run_id=run.id, run_key=run.run_key, chain_head=chain_head(session, run),
                     length=length, reason=reason)
    session.add(mark)
    session.flush()
    session.execute(delete(Finding).where(Finding.run_id == run.id))
    session.execute(delete(EvidenceItem).where(EvidenceItem.run_id == run.id))
    session.flush()
    return mark


def withdrawn_report_ids(session: Session) -> set[int]:
    """Ids of reports withdrawn (never to be served again)."""
    return set(session.scalars(select(ReportWithdrawal.report_id)))


def report_files(report: Report) -> list[Path]:
    """The report's PDF, its released (signed) version and the files rendered beside them
    (same name, other suffixes: a detached signature, an evidence file)."""
    pdf = Path(report.path)
    if not pdf.parent.is_dir():
        return []
    names = [pdf.stem + ".*", pdf.stem + "-released.*"]  # a released (signed) version too
    return sorted({p for pattern in names for p in pdf.parent.glob(pattern) if p.is_file()})


def withdraw_report(session: Session, report: Report, reason: str) -> ReportWithdrawal:
    """Delete the report's files and record the withdrawal (report id, when, why). A report
    already withdrawn keeps its first tombstone; its files are deleted again if present."""
    from audit_lib.store.models import ReportDecision

    released = [Path(p) for p in session.scalars(select(ReportDecision.released_path).where(
        ReportDecision.report_id == report.id, ReportDecision.released_path.is_not(None)))]
    for path in report_files(report) + released:
        path.unlink(missing_ok=True)
    existing = session.scalar(select(ReportWithdrawal).where(ReportWithdrawal.report_id == report.id))
    if existing is not None:
        return existing
    row = ReportWithdrawal(report_id=report.id, reason=reason)
    session.add(row)
    session.flush()
    return row
