"""What a report is about: a case, parsed from text, and the findings that belong to it.

Cases: ``subject:ID`` (a data subject across models: identity and membership
inference), ``ownership:OWNED_ID:SUSPECT_ID`` (an owned model against a suspect:
watermark and fingerprint checks, plus the owned model's theft-risk curve), and
``run:RUN_KEY`` (everything one audit run found).

Which findings belong to an ownership case: watermark and fingerprint findings whose
``target_key`` names the pair (``ownership:OWNED_ID:SUSPECT_ID``, or
``METHOD:OWNED_NAME->SUSPECT_NAME``), or is ``suspect:SUSPECT_ID`` with no other owned model
named in the finding's parameters (``owned_model_id``) or its run's configuration
(``owned``); and theft findings on the owned model (``target_key`` ``model:OWNED_ID`` or a
version of the owned model). For a subject or ownership case only the newest finding per (method,
model version) is reported; a run report shows all of that run's findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.evidence import finding_record
from audit_lib.store.models import AuditedModel, AuditRun, DataSubject, Finding, ModelVersion

CASE_KINDS = ("subject", "ownership", "run")
WITHHELD = "[withheld]"
NAME_KEYS = frozenset({"name", "subject_name", "true_name", "aliases", "full_name"})


class ReportError(ValueError):
    """A report that cannot be rendered or a case that does not exist; says why."""


@dataclass(frozen=True)
class CaseSpec:
    """A parsed case reference."""

    kind: str
    subject_id: int | None = None
    owned_id: int | None = None
    suspect_id: int | None = None
    run_key: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "subject":
            return f"subject:{self.subject_id}"
        if self.kind == "ownership":
            return f"ownership:{self.owned_id}:{self.suspect_id}"
        return f"run:{self.run_key}"


def parse_case(text: str) -> CaseSpec:
    """``subject:ID`` | ``ownership:OWNED_ID:SUSPECT_ID`` | ``run:RUN_KEY``."""
    kind, _, rest = text.strip().partition(":")
    try:
        if kind == "subject":
            return CaseSpec("subject", subject_id=int(rest))
        if kind == "ownership":
            owned, suspect = rest.split(":")
            return CaseSpec("ownership", owned_id=int(owned), suspect_id=int(suspect))
        if kind == "run" and rest:
            return CaseSpec("run", run_key=rest)
    except ValueError:
        pass
    raise ReportError(f"case {text!r}: expected subject:ID, ownership:OWNED_ID:SUSPECT_ID or run:RUN_KEY")


@dataclass
class FindingView:
    """One finding as a report shows it, with its model, version and run."""

    row: Finding
    model: AuditedModel
    version: ModelVersion
    run: AuditRun
    record: dict[str, Any]  # finding_record(row), redacted where names must not appear
    target_label: str


@dataclass
class CaseData:
    """Everything a report about one case needs from the store."""

    spec: CaseSpec
    title: str
    parties: list[tuple[str, str]]
    findings: list[FindingView]
    subject: DataSubject | None = None
    redact_names: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[AuditRun]:
        seen: dict[int, AuditRun] = {}
        for f in self.findings:
            seen.setdefault(f.run.id, f.run)
        return sorted(seen.values(), key=lambda r: r.id)


def redact(record: dict[str, Any], names_withheld: bool) -> dict[str, Any]:
    """A finding record with the subject's name withheld: IDIA plurality names that are the
    subject's own (``correct``), and any parameter or detail under a name-like key."""
    if not names_withheld:
        return record

    def scrub(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {k: (WITHHELD if k in NAME_KEYS and v else scrub(v)) for k, v in obj.items()}
            if out.get("correct") is True and out.get("plurality_name"):
                out["plurality_name"] = WITHHELD
            return out
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        return obj

    out = dict(record)
    out["parameters"] = scrub(record.get("parameters") or {})
    out["details"] = scrub(record.get("details") or {})
    return out


def subject_label(subject: DataSubject | None, names_withheld: bool) -> str:
    """How a report names a subject: the pseudonym only when erased or withheld."""
    if subject is None:
        return "unknown subject"
    if subject.is_erased:
        return f"{subject.pseudonym} (erased; pseudonym only)"
    if names_withheld or not subject.name:
        return subject.pseudonym
    return f"{subject.name} ({subject.pseudonym})"


def _names_pair(session: Session, r: Finding, owned: AuditedModel, suspect: AuditedModel) -> bool:
    """Whether a watermark/fingerprint finding is about (owned, suspect). Accepts the target
    keys in use: ``ownership:OWNED:SUSPECT`` (the pipelines), ``METHOD:OWNED_NAME->SUSPECT_NAME``
    (the fingerprint CLI), and ``suspect:SUSPECT`` when neither the finding's parameters
    (``owned_model_id``) nor its run's configuration (``owned``) name another owned model."""
    if r.target_key in (f"ownership:{owned.id}:{suspect.id}", f"{r.method}:{owned.name}->{suspect.name}"):
        return True
    if r.target_key != f"suspect:{suspect.id}":
        return False
    if (r.parameters or {}).get("owned_model_id") not in (None, owned.id):
        return False
    run = session.get(AuditRun, r.run_id)
    return (run.config or {}).get("owned") in (None, owned.name, owned.id)


def _newest_per_method_and_version(rows: list[Finding]) -> list[Finding]:
    best: dict[tuple[str, int], Finding] = {}
    for r in rows:
        key = (r.method, r.model_version_id)
        if key not in best or r.id > best[key].id:
            best[key] = r
    return sorted(best.values(), key=lambda r: r.id)


def _model(session: Session, model_id: int) -> AuditedModel:
    m = session.get(AuditedModel, model_id)
    if m is None:
        raise ReportError(f"model {model_id}: no such model")
    return m


def _views(session: Session, rows: list[Finding], names_withheld: bool) -> list[FindingView]:
    views = []
    for r in rows:
        version = session.get(ModelVersion, r.model_version_id)
        run = session.get(AuditRun, r.run_id)
        label = r.target_key
        if r.subject_id is not None:
            label = subject_label(session.get(DataSubject, r.subject_id), True)
        elif r.target_key.startswith(("suspect:", "model:")):
            mid = r.target_key.split(":", 1)[1]
            if mid.isdigit() and (m := session.get(AuditedModel, int(mid))) is not None:
                label = f"{m.name} (model {m.id})"
        views.append(FindingView(row=r, model=version.model, version=version, run=run,
                                 record=redact(finding_record(r), names_withheld), target_label=label))
    return views


def load_case(session: Session, spec: CaseSpec, *, pseudonymous: bool = False) -> CaseData:
    """The findings of a case and who it concerns; refuses a case with nothing to report."""
    if spec.kind == "subject":
        subject = session.get(DataSubject, spec.subject_id)
        if subject is None:
            raise ReportError(f"subject {spec.subject_id}: no such subject")
        withheld = pseudonymous or subject.is_erased
        rows = list(session.scalars(select(Finding).where(
            (Finding.subject_id == subject.id) | (Finding.target_key == f"subject:{subject.id}"))))
        data = CaseData(spec, "Data subject audit", [("Data subject", subject_label(subject, withheld))],
                        _views(session, _newest_per_method_and_version(rows), withheld),
                        subject=subject, redact_names=withheld)
        if subject.is_erased:
            data.notes.append(f"The subject was erased on {subject.erased_at:%Y-%m-%d}; the report "
                              "names them by pseudonym only and shows no photos.")
    elif spec.kind == "ownership":
        owned, suspect = _model(session, spec.owned_id), _model(session, spec.suspect_id)
        owned_versions = {v.id for v in owned.versions}
        rows = []
        from audit_lib.method_registry import get, names

        for r in session.scalars(select(Finding).where(Finding.method.in_(names("ownership")))):
            if not get(r.method).tests_the_case:  # a measurement of the owned model itself (theft risk)
                if r.target_key == f"model:{owned.id}" or r.model_version_id in owned_versions:
                    rows.append(r)
            elif _names_pair(session, r, owned, suspect):
                rows.append(r)
        data = CaseData(spec, "Model ownership audit",
                        [("Owned model", f"{owned.name} (model {owned.id})"),
                         ("Suspect model", f"{suspect.name} (model {suspect.id}, "
                          f"{'API ' + (suspect.endpoint_url or '') if suspect.kind == 'api' else 'checkpoint'})")],
                        _views(session, _newest_per_method_and_version(rows), False))
    elif spec.kind == "run":
        run = session.scalar(select(AuditRun).where(AuditRun.run_key == spec.run_key))
        if run is None:
            raise ReportError(f"run {spec.run_key!r}: no such audit run")
        rows = list(session.scalars(select(Finding).where(Finding.run_id == run.id).order_by(Finding.id)))
        data = CaseData(spec, "Audit run summary",
                        [("Kind", run.kind), ("Status", run.status)],
                        _views(session, rows, True), redact_names=True)
        data.notes.append("Run summaries name data subjects by pseudonym only.")
    else:  # parse_case never builds one
        raise ReportError(f"case kind {spec.kind!r} is not one of {CASE_KINDS}")
    if not data.findings:
        raise ReportError(f"case {spec.text}: no findings to report yet")
    return data


def slug(text: str, limit: int = 60) -> str:
    """A file- and id-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:limit] or "x"
