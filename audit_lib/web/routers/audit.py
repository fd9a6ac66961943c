"""The audit log page: who signed in, registered, viewed, erased what (DPOs only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from audit_lib.store import session_scope
from audit_lib.web import audit_log
from audit_lib.web.deps import DpoUser, client_of, render

router = APIRouter(tags=["audit"])

PAGE_SIZE = 200


@router.get("/audit-log")
def show_audit_log(request: Request, user: DpoUser) -> Response:
    """The newest events first (viewing the log is itself logged)."""
    with session_scope() as s:
        audit_log.record(s, "audit_log_viewed", username=user.username, client=client_of(request))
        events = [{"at": e.at, "username": e.username, "action": e.action,
                   "subject_id": e.subject_id, "target": e.target, "detail": e.detail,
                   "client": e.client} for e in audit_log.recent(s, PAGE_SIZE)]
    return render(request, "audit_log.html", {"events": events, "page_size": PAGE_SIZE})
