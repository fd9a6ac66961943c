"""PDF reports: served only when released (approved, signed, recorded in
``report_decisions``; a draft or a rejected report is never served), and only from the
reports folder. The request names a report by its numeric id; the file path comes from
the table and must resolve inside the folder (no ``..``, no absolute path elsewhere, no
symbolic link out)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException

from audit_lib.store import session_scope
from audit_lib.store.models import Report
from audit_lib.web import audit_log
from audit_lib.web.deps import CurrentUser, RowId, client_of, web_settings
from audit_lib.web.findings_view import released_file

router = APIRouter(tags=["reports"])


@router.get("/reports/{report_id}")
def download_report(request: Request, report_id: RowId, user: CurrentUser) -> Response:
    """The released report's PDF (logged as downloaded)."""
    with session_scope() as s:
        report = s.get(Report, report_id)
        path = released_file(s, report, web_settings(request).resolved_reports_dir) if report else None
        if path is None:
            raise HTTPException(status_code=404, detail=f"report {report_id}: not found")
        audit_log.record(s, "report_downloaded", username=user.username, target=report.case_id,
                         detail={"report_id": report.id, "sha256": report.sha256},
                         client=client_of(request))
        filename = f"report-{report.id}.pdf"
    return FileResponse(path, media_type="application/pdf", filename=filename,
                        content_disposition_type="inline")
