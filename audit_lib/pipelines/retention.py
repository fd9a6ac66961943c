"""Retention clean-up (GDPR Art. 5(1)(e)): each kind of record is kept for the period the
settings give (``AUDIT_RETENTION_*_DAYS``; 0 keeps it indefinitely), then removed, except
what an active legal hold covers (GDPR Art. 17(3)(e); :mod:`audit_lib.store.holds`).

- query-cache answers older than the period are deleted, but not those a held run's
  evidence records (they reproduce the held findings);
- evidence: a run that ended before the period, and is not held, is purged as a whole
  (recorded in ``purged_runs`` first; :func:`audit_lib.store.tombstones.purge_run`);
- reports older than the period, not held, are withdrawn (file deleted, tombstone kept);
- subjects' photos older than the period go (the bytes too when no one else uses them),
  except those of a subject whose case is held.

It runs as the owner role (``AUDIT_MIGRATION_DATABASE_URL``): only the owner may delete
evidence. One transaction: a failure removes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from audit_lib.store.holds import active_holds, held_records
from audit_lib.store.models import (AuditRun, EvidenceItem, ModelVersion, PurgedRun, QueryCacheEntry, Report,
                                    SubjectImage, utcnow)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionOutcome:
    """What one clean-up removed and what holds kept."""

    cache_deleted: int
    cache_kept_for_holds: int
    runs_purged: int
    runs_kept_for_holds: int
    reports_withdrawn: int
    reports_kept_for_holds: int
    subject_photos_removed: int
    subject_photos_kept_for_holds: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _cutoff(now: datetime, days: int) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


def _held_cache_keys(session: Session, held_runs: set[int]) -> set[tuple[str, str]]:
    """(model version, input sha256) of every query a held run recorded."""
    if not held_runs:
        return set()
    rows = session.execute(select(ModelVersion.version, EvidenceItem.input_sha256)
                           .join(ModelVersion, ModelVersion.id == EvidenceItem.model_version_id)
                           .where(EvidenceItem.run_id.in_(held_runs)))
    return {(v, h) for v, h in rows}


def _clean_cache(session: Session, cutoff: datetime, held_keys: set[tuple[str, str]]) -> tuple[int, int]:
    old = session.execute(select(QueryCacheEntry.model_version, QueryCacheEntry.input_sha256,
                                 QueryCacheEntry.kind).where(QueryCacheEntry.created_at < cutoff)).all()
    doomed = [(v, h, k) for v, h, k in old if (v, h) not in held_keys]
    for start in range(0, len(doomed), 500):
        chunk = doomed[start:start + 500]
        session.execute(delete(QueryCacheEntry).where(tuple_(
            QueryCacheEntry.model_version, QueryCacheEntry.input_sha256, QueryCacheEntry.kind).in_(chunk)))
    if doomed:
        from audit_lib.encoders.cache import clear_text_set_memo

        clear_text_set_memo()
    return len(doomed), len(old) - len(doomed)


def _purge_runs(session: Session, cutoff: datetime, held_runs: set[int]) -> tuple[int, int]:
    from audit_lib.store.tombstones import purge_run

    purged = set(session.scalars(select(PurgedRun.run_key)))
    ended = func.coalesce(AuditRun.finished_at, AuditRun.started_at)
    runs = [r for r in session.scalars(select(AuditRun).where(ended < cutoff, AuditRun.status != "running")
                                       .order_by(AuditRun.id)) if r.run_key not in purged]
    kept = 0
    for run in runs:
        if run.id in held_runs:
            kept += 1
            continue
        purge_run(session, run, f"retention: evidence older than {cutoff:%Y-%m-%d}")
    return len(runs) - kept, kept


def _withdraw_reports(session: Session, cutoff: datetime, held_reports: set[int]) -> tuple[int, int]:
    from audit_lib.store.tombstones import withdraw_report, withdrawn_report_ids

    gone = withdrawn_report_ids(session)
    old = [r for r in session.scalars(select(Report).where(Report.created_at < cutoff).order_by(Report.id))
           if r.id not in gone]
    kept = [r for r in old if r.id in held_reports]
    for r in old:
        if r.id not in held_reports:
            withdraw_report(session, r, f"retention: report older than {cutoff:%Y-%m-%d}")
    return len(old) - len(kept), len(kept)


def _remove_photos(session: Session, cutoff: datetime, held_subjects: set[int]) -> tuple[int, int]:
    from audit_lib.erasure import remove_image_links

    old = list(session.scalars(select(SubjectImage).where(SubjectImage.created_at < cutoff)))
    doomed = [im for im in old if im.subject_id not in held_subjects]
    if doomed:
        remove_image_links(session, doomed)
    return len(doomed), len(old) - len(doomed)


def enforce_retention(session: Session, *, now: datetime | None = None) -> RetentionOutcome:
    """Apply every retention period once, in the caller's transaction."""
    from audit_lib.config import get_settings

    settings = get_settings()
    now = now or utcnow()
    held = held_records(session)
    held_runs = set(held.runs)
    held_subjects = {int(h.case.split(":")[1]) for h in active_holds(session) if h.case.startswith("subject:")}
    counts = {"cache": (0, 0), "runs": (0, 0), "reports": (0, 0), "photos": (0, 0)}
    if (c := _cutoff(now, settings.retention_cache_days)) is not None:
        counts["cache"] = _clean_cache(session, c, _held_cache_keys(session, held_runs))
    if (c := _cutoff(now, settings.retention_reports_days)) is not None:
        counts["reports"] = _withdraw_reports(session, c, set(held.reports))
    if (c := _cutoff(now, settings.retention_evidence_days)) is not None:
        counts["runs"] = _purge_runs(session, c, held_runs)
    if (c := _cutoff(now, settings.retention_subject_images_days)) is not None:
        counts["photos"] = _remove_photos(session, c, held_subjects)
    session.flush()
    out = RetentionOutcome(*counts["cache"], *counts["runs"], *counts["reports"], *counts["photos"])
    log.info("retention: %s", out.as_dict())
    return out


def run_retention(*, now: datetime | None = None, db_url: str | None = None) -> dict[str, int]:
    """The scheduled task's body: one transaction as the owner role; returns the counts."""
    from audit_lib.config import get_settings
    from audit_lib.store import session_scope

    with session_scope(db_url or get_settings().resolved_migration_database_url) as session:
        return enforce_retention(session, now=now).as_dict()
