"""Task bodies of the evidence_reports DAG: render a draft for each requested case, then
act on the person's decision (release: sign and offer; reject: keep, never offer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from audit_lib.store import session_scope

log = logging.getLogger(__name__)


def reports_dir() -> Path:
    from audit_lib.config import get_settings

    return get_settings().data_dir / "reports"


def render_cases(cases: Sequence[str], *, out_dir: Path | None = None,
                 db_url: str | None = None) -> list[str]:
    """Render one PDF per case with ``audit_lib.reports.render_report``; returns the paths.

    Each case is its own transaction: one bad case fails the task after the others were
    rendered, naming it, and a retry renders only what is still missing (the report
    module stores one Report row per case).
    """
    from audit_lib.reports import render_report

    out_dir = Path(out_dir or reports_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, failed = [], []
    for case in cases:
        try:
            with session_scope(db_url) as session:
                path = render_report(session, case, out_dir)
            paths.append(str(path))
            log.info("case %s: report %s", case, path)
        except Exception as exc:  # noqa: BLE001 - the task fails below, naming every case
            log.exception("case %s: report failed", case)
            failed.append(f"{case} ({type(exc).__name__}: {exc})")
    if failed:
        raise RuntimeError(f"{len(failed)} report(s) failed: {'; '.join(failed)}")
    return paths


def drafts_for(paths: Sequence[str], cases: Sequence[str], *, db_url: str | None = None) -> list[dict[str, Any]]:
    """The drafts awaiting a decision, as XCom-safe dicts (case spec, report id and case id,
    file name): ``paths`` as :func:`render_cases` returned them for ``cases`` (same order)."""
    from sqlalchemy import select

    from audit_lib.store.models import Report

    if len(paths) != len(cases):
        raise ValueError(f"{len(paths)} drafts for {len(cases)} cases: render them again")
    out = []
    with session_scope(db_url) as session:
        for case, path in zip(cases, paths):
            row = session.scalar(select(Report).where(Report.path == str(Path(path).resolve())))
            if row is None:
                raise ValueError(f"draft {path}: not recorded in the reports table")
            out.append({"case": case, "report_id": row.id, "case_id": row.case_id, "file": Path(path).name})
    return out


def review_body(drafts: Sequence[dict[str, Any]]) -> str:
    """What the person sees in the Airflow UI's approval form (Markdown): case ids only."""
    lines = ["Approve to sign and release these draft evidence reports to the DPO web page; "
             "reject to keep them as drafts that are never signed or offered.", ""]
    lines += [f"- `{d['case_id']}` (case `{d['case']}`, report id {d['report_id']})" for d in drafts]
    return "\n".join(lines)


def _responder(response: dict[str, Any]) -> str:
    who = response.get("responded_by_user") or {}
    name = who.get("name") if isinstance(who, dict) else None
    ident = who.get("id") if isinstance(who, dict) else None
    if not (name or ident):
        raise ValueError("the approval response names nobody: refusing to release without a person")
    return str(name or ident) if name == ident or not ident else f"{name} (id {ident})"


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def decide_drafts(drafts: Sequence[dict[str, Any]], response: dict[str, Any], *,
                  dag_run: str | None = None, out_dir: Path | None = None,
                  db_url: str | None = None) -> list[dict[str, Any]]:
    """Act on the approval step's response (the HITL operator's return value:
    ``chosen_options``, ``params_input.comment``, ``responded_by_user``, ``responded_at``).

    ``Approve``: each draft is released (rendered with the approval block, signed, an
    ``approved`` decision inserted) and the DPO and legal are told. ``Reject``: a
    ``rejected`` decision is inserted per draft, nothing is signed or offered. Each draft is
    its own transaction; a retry skips drafts already decided the same way.
    """
    from audit_lib.notifications import case_label, case_recipients, release_message, send_quietly
    from audit_lib.reports.release import Decision, reject_report, release_report
    from audit_lib.store.models import Report

    chosen = list(response.get("chosen_options") or [])
    if chosen not in (["Approve"], ["Reject"]):
        raise ValueError(f"approval response {chosen}: expected ['Approve'] or ['Reject']")
    comment = ((response.get("params_input") or {}).get("comment") or "").strip() or None
    who = Decision(decided_by=_responder(response), decided_at=_when(response["responded_at"]),
                   comment=comment, dag_run=dag_run)
    out_dir = Path(out_dir or reports_dir())
    results = []
    for d in drafts:
        with session_scope(db_url) as session:
            report = session.get(Report, int(d["report_id"]))
            if report is None:
                raise ValueError(f"report {d['report_id']} ({d.get('case_id')}): not in the reports table")
            if chosen == ["Approve"]:
                row = release_report(session, report, d["case"], who, out_dir)
                label = case_label(session, d["case"])
            else:
                row = reject_report(session, report, who)
            results.append({"report_id": report.id, "case_id": report.case_id, "decision": row.decision})
        log.info("report %s: %s by %s", d["case_id"], row.decision, who.decided_by)
        if row.decision == "approved":
            send_quietly(release_message(d["case_id"], label, who.decided_by,
                                         who.as_block()["decided_at"] or ""), case_recipients())
    return results
