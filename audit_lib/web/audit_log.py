"""The web app's audit log (table ``web_audit_log``): who signed in, registered, viewed,
erased what and downloaded which report. Subjects appear by id and pseudonym only, so an
erasure leaves no name behind; passwords and tokens never appear."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.store.models import WebAuditEvent

ACTIONS = frozenset({"sign_in", "sign_in_failed", "sign_in_throttled", "sign_out", "subject_registered",
                     "subject_register_refused", "subject_viewed", "subject_erased",
                     "report_downloaded", "audit_log_viewed"})


def record(session: Session, action: str, *, username: str | None, subject_id: int | None = None,
           target: str | None = None, detail: dict[str, Any] | None = None,
           client: str | None = None) -> WebAuditEvent:
    """Append one event in the caller's transaction (it commits with what it records)."""
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not one of {sorted(ACTIONS)}")
    event = WebAuditEvent(action=action, username=username, subject_id=subject_id,
                          target=target, detail=detail or {}, client=(client or "")[:64] or None)
    session.add(event)
    session.flush()
    return event


def recent(session: Session, limit: int = 200) -> list[WebAuditEvent]:
    """The newest events first."""
    return list(session.scalars(select(WebAuditEvent).order_by(WebAuditEvent.id.desc()).limit(limit)))
