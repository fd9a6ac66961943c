"""What the pages show about findings and reports, read from the evidence store.

"Latest per model" means: for each (model, method), the newest finding for the subject,
whatever model version it was made on (the version is shown beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.store.models import AuditedModel, AuditRun, Finding, ModelVersion, Report, ReportDecision
from audit_lib.web.wording import (decision_label, format_p, method_label, method_order,
                                   p_value_in_words, short_method)


@dataclass(frozen=True)
class FindingView:
    """One finding as a page shows it."""

    id: int
    model_name: str
    model_version: str
    method: str
    method_label: str
    short_method: str
    decision: str
    decision_label: str
    p_value: float | None
    p_text: str | None
    p_in_words: str
    alpha: float
    effect_size: float | None
    hypothesis: str
    run_key: str
    created_at: datetime


def _views(session: Session, where) -> list[FindingView]:  # noqa: ANN001 - a SQL expression
    rows = session.execute(
        select(Finding, ModelVersion.version, AuditedModel.name, AuditRun.run_key)
        .join(ModelVersion, Finding.model_version_id == ModelVersion.id)
        .join(AuditedModel, ModelVersion.model_id == AuditedModel.id)
        .join(AuditRun, Finding.run_id == AuditRun.id)
        .where(where).order_by(Finding.created_at.desc(), Finding.id.desc())).all()
    return [FindingView(id=f.id, model_name=name, model_version=version, method=f.method,
                        method_label=method_label(f.method), short_method=short_method(f.method),
                        decision=f.decision,
                        decision_label=decision_label(f.decision), p_value=f.p_value,
                        p_text=None if f.p_value is None else format_p(f.p_value),
                        p_in_words=p_value_in_words(f.p_value, f.method), alpha=f.alpha,
                        effect_size=f.effect_size, hypothesis=f.hypothesis, run_key=run_key,
                        created_at=f.created_at)
            for f, version, name, run_key in rows]


def latest_per_model(views: list[FindingView]) -> list[FindingView]:
    """The newest finding per (model, method), in model then method order. ``views`` must
    be newest first (as :func:`subject_findings` returns them)."""
    latest: dict[tuple[str, str], FindingView] = {}
    for v in views:
        latest.setdefault((v.model_name, v.method), v)
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], method_order(k[1]), k[1]))]


def subject_findings(session: Session, subject_id: int) -> list[FindingView]:
    """Every finding about one subject, newest first."""
    return _views(session, Finding.subject_id == subject_id)


def latest_findings_by_subject(session: Session) -> dict[int, list[FindingView]]:
    """For the subject list: each subject's latest finding per (model, method)."""
    grouped: dict[int, list[FindingView]] = {}
    rows = session.execute(select(Finding.id, Finding.subject_id)
                           .where(Finding.subject_id.is_not(None))).all()
    subject_of = dict(rows)
    for v in _views(session, Finding.subject_id.is_not(None)):
        grouped.setdefault(subject_of[v.id], []).append(v)
    return {sid: latest_per_model(vs) for sid, vs in grouped.items()}


@dataclass(frozen=True)
class ReportView:
    id: int
    case_id: str
    kind: str
    created_at: datetime
    sha256: str


def subject_reports(session: Session, subject_id: int, finding_ids: set[int]) -> list[ReportView]:
    """Released reports about this subject: its case (``subject:ID``) or any of its
    findings. A draft awaiting approval or a rejected report is not offered."""
    released = set(session.scalars(select(ReportDecision.report_id).where(
        ReportDecision.decision == "approved", ReportDecision.released_path.is_not(None))))
    from audit_lib.store.tombstones import withdrawn_report_ids

    released -= withdrawn_report_ids(session)  # withdrawn (erasure, retention): never offered
    out = []
    for r in session.scalars(select(Report).order_by(Report.created_at.desc())):
        ids = {i for i in (r.finding_ids or []) if isinstance(i, int)}
        if r.id not in released:
            continue
        if r.case_id == f"subject:{subject_id}" or ids & finding_ids:
            out.append(ReportView(id=r.id, case_id=r.case_id, kind=r.kind,
                                  created_at=r.created_at, sha256=r.sha256))
    return out


def released_file(session: Session, report: Report, reports_dir: Path) -> Path | None:
    """The released (approved and signed) version of ``report``, checked as
    :func:`report_file` checks a path; None for a draft or a rejected report."""
    from audit_lib.reports.release import released_decision

    from audit_lib.store.tombstones import withdrawn_report_ids

    if report.id in withdrawn_report_ids(session):  # withdrawn: never served again
        return None
    decision = released_decision(session, report.id)
    return report_file(decision.released_path, reports_dir) if decision and decision.released_path else None


def report_file(report: Report | str, reports_dir: Path) -> Path | None:
    """The report's PDF (a ``reports`` row, or a path recorded in the store) if, resolved,
    it lies inside ``reports_dir`` and exists; else None. The path comes from the store,
    never from the request; a relative path is taken relative to ``reports_dir``;
    symbolic links out of the folder are refused."""
    root = reports_dir.resolve()
    raw = Path(report if isinstance(report, str) else report.path)
    candidate = (raw if raw.is_absolute() else root / raw).resolve()
    if not candidate.is_relative_to(root) or candidate == root or not candidate.is_file():
        return None
    if candidate.suffix.lower() != ".pdf":
        return None
    return candidate
