"""Render a case's PDF evidence report.

``render_report(session, case, out_dir)`` loads the case's findings (reports/case.py), builds
the evidence manifest (reports/manifest.py), draws the figures (reports/figures.py), fills
the Jinja2 template for the case kind (templates/report/{subject,ownership,run}.html) and
has WeasyPrint write an archival PDF/A-3b with ``evidence.json`` embedded as an associated
file. A ``reports`` row records the PDF's sha256 and the chain head, so ``encoder-audit
report verify`` can check it later. A case id is never reused and no file is overwritten.

Privacy by default: subject photos are embedded only with ``include_photos=True`` (a
recipient entitled to see them) and never for an erased subject; an erased subject appears
only by pseudonym, and so does every subject in a run summary or with ``pseudonymous=True``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib import __version__
from audit_lib.config import PROJECT_ROOT, get_settings
from audit_lib.evidence import sha256_hex
from audit_lib.method_registry import find as find_method
from audit_lib.method_registry import hook
from audit_lib.reports import figures
from audit_lib.reports.case import CaseData, FindingView, ReportError, load_case, parse_case, slug
from audit_lib.reports.manifest import ATTACHMENT_NAME, build_manifest, manifest_bytes
from audit_lib.reports.wording import (
    DECISION_WORDS,
    GLOSSARY,
    WHAT_IT_DOES_NOT_MEAN,
    fmt_num,
    fmt_p,
    method_text,
    p_meaning,
    verdict_sentence,
)
from audit_lib.store.models import Report, utcnow

log = logging.getLogger(__name__)

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "report"
MAX_MANIFEST_ROWS = 100  # printed per run (about 4 pages); the attachment always holds every row
COVER_FINDINGS = 8  # findings spelled out on the cover (positives first); all are in the results
DEPARTURE = ("The published method decides with a fixed threshold and gives no error rate. This "
             "audit keeps the published statistic and ranks it among a null population (an "
             "empirical p-value), so the false-alarm rate is bounded by alpha when the "
             "assumptions hold.")


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _git_commit() -> str | None:
    """The checkout's commit, when the code runs from a git checkout (read-only query)."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _figures(method: str, d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(caption, data URI, half width) for one finding, from its method's ``figures`` hook
    (:mod:`audit_lib.method_registry`); missing data means no figure."""
    spec = find_method(method)
    draw = hook(spec, "figures") if spec else None
    drawn = (draw(d, record) if draw else
             figures.default_figures(d, record, title=spec.title if spec else method))
    return [(caption, _uri(png), half) for caption, png, half in drawn if png]


def _tables(method: str, d: dict[str, Any]) -> dict[str, Any]:
    """The method-specific values the result section prints, from its ``tables`` hook."""
    spec = find_method(method)
    shape = hook(spec, "tables") if spec else None
    return shape(d) if shape else {}


def _finding_view(f: FindingView, show_target: bool) -> dict[str, Any]:
    rec = f.record
    d = rec.get("details") or {}
    text = method_text(f.row.method)
    assumptions = [str(a) for a in d.get("assumptions") or text.default_assumptions]
    null = d.get("null_scores") or []
    family = d.get("alpha_family")
    return {
        "id": f.row.id, "method": f.row.method, "method_version": f.row.method_version,
        "title": text.title, "model_name": f.model.name, "target_label": f.target_label,
        "show_target": show_target, "version": f.version.version, "version_how": f.version.how,
        "preprocess": json.dumps(f.version.preprocess, sort_keys=True) if f.version.preprocess else "not recorded",
        "parameters": json.dumps(rec.get("parameters") or {}, sort_keys=True),
        "run_config": json.dumps(f.run.config or {}, sort_keys=True),
        "hypothesis": rec["hypothesis"], "null_description": rec["null_description"],
        "statistic": fmt_num(rec.get("statistic"), 4), "effect_size": fmt_num(rec.get("effect_size"), 3)
        if rec.get("effect_size") is not None else None,
        "p": fmt_p(rec.get("p_value")), "p_family": fmt_p(family) if family is not None else "—",
        "alpha": fmt_p(rec.get("alpha")), "decision": rec["decision"],
        "decision_words": "estimate" if text.descriptive else DECISION_WORDS.get(rec["decision"], rec["decision"]),
        "verdict": (text.summary(d) if text.descriptive and text.summary else
                    verdict_sentence(rec["decision"], rec.get("p_value"), rec["alpha"])),
        "meaning": p_meaning(rec["hypothesis"], rec.get("p_value"), assumptions),
        "assumptions": assumptions, "n_queries": queries_text(d),
        "holm_warning": d.get("holm_warning"),
        "n_null": len(null), "p_min": fmt_p(1 / (len(null) + 1)) if null else None,
        "tables": _tables(f.row.method, d), "figures": _figures(f.row.method, d, rec),
    }


def queries_text(details: dict[str, Any]) -> str:
    """How many queries a finding took, saying how many reached the model and how many the
    query cache answered (a re-run of the same inputs sends none). Findings stored before
    the two were counted apart say so."""
    total = details.get("n_queries")
    if "queries_sent" in details:
        sent, hits = int(details["queries_sent"]), int(details.get("cache_hits") or 0)
        return f"{sent} sent to the model, {hits} answered from the query cache ({sent + hits} in all)"
    if total is None:
        return "not recorded"
    return f"{total} (sent and cached not counted apart for this finding)"


def _chain_counts(items: list[dict[str, Any]]) -> str:
    """The run's evidence records by origin: answered by the model, from the query cache,
    findings (a decoy-prompt set is one record)."""
    queries = [it for it in items if it.get("kind") != "finding"]
    cached = sum(1 for it in queries if it.get("cached"))
    return (f"{len(queries) - cached} answered by the model, {cached} from the query cache, "
            f"{len(items) - len(queries)} findings")


def _headline(data: CaseData, views: list[dict[str, Any]]) -> tuple[str, int]:
    """The verdict line: positives among the tests of the case's claim. Methods that measure
    the owned model rather than test the claim (``MethodText.tests_the_case``, e.g. the
    theft-risk estimate) are left out even when calibrated."""
    tests = [v for v in views if method_text(v["method"]).tests_the_case
             and v["decision"] in ("positive", "negative", "inconclusive")]
    pos = sum(v["decision"] == "positive" for v in tests)
    if not tests:
        return "No statistical test in this case (descriptive estimates only)", 0
    if pos:
        return f"Evidence found in {pos} of {len(tests)} test{'s' if len(tests) > 1 else ''}", pos
    return (f"No evidence found in {'any of the ' + str(len(tests)) + ' tests' if len(tests) > 1 else 'the test'} "
            "at the pre-set levels"), 0


def _photos(session: Session, data: CaseData, include: bool) -> list[str]:
    """Thumbnails of a live subject's reference photos, only when explicitly included."""
    subject = data.subject
    if not include or subject is None or subject.is_erased or data.redact_names:
        return []
    from PIL import Image

    from audit_lib.images import decode_rgb

    out = []
    for im in subject.images:
        if im.role != "reference" or im.blob is None or im.blob.data is None:
            continue
        img: Image.Image = decode_rgb(im.blob.data)
        img.thumbnail((240, 240))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(_uri(buf.getvalue()))
    return out[:6]


def _seeds(data: CaseData) -> list[tuple[str, Any]]:
    seen: dict[str, Any] = {}
    for f in data.findings:
        for source in (f.record.get("parameters") or {}, f.run.config or {}):
            for k, v in source.items():
                if "seed" in k.lower():
                    seen.setdefault(f"{f.row.method}.{k}" if k in seen else k, v)
    return sorted(seen.items())


def _rerun(data: CaseData, out_name: str) -> list[str]:
    spec = data.spec
    lines = ["# check this report against the evidence store (chain, manifest, attachment)",
             f"encoder-audit report verify {out_name}",
             "# render the same case again from the stored findings",
             f"encoder-audit report render --case {spec.text}"]
    if spec.kind == "subject" and not data.redact_names:
        for f in data.findings:
            lines.append(f"encoder-audit audit privacy --subject {spec.subject_id} --model {f.model.name}")
    elif spec.kind == "ownership":
        lines.append(f"encoder-audit verify --owned {spec.owned_id} --suspect {spec.suspect_id} --watermark")
        lines.append(f"encoder-audit verify --owned {spec.owned_id} --suspect {spec.suspect_id} --fingerprint")
    return lines


def _context(session: Session, data: CaseData, manifest: dict[str, Any], *, case_id: str,
             generated_at: datetime, digest: str, include_photos: bool, pdf_name: str) -> dict[str, Any]:
    show_target = data.spec.kind == "run"
    views = [_finding_view(f, show_target) for f in data.findings]
    headline, n_positive = _headline(data, views)
    ranked = sorted(views, key=lambda v: (v["decision"] != "positive", v["id"]))
    cover = [v for v in ranked if v["decision"] != "not_applicable" or method_text(v["method"]).descriptive]
    methods, seen = [], set()
    for f, v in zip(data.findings, views):
        if f.row.method in seen:
            continue
        seen.add(f.row.method)
        text = method_text(f.row.method)
        methods.append({"title": text.title, "question": text.question, "how": text.how,
                        "reference": text.reference or "not recorded", "hypothesis": v["hypothesis"],
                        "null_description": v["null_description"], "assumptions": v["assumptions"],
                        "departure": DEPARTURE if text.departs else None})
    runs = []
    for r in manifest["runs"]:
        shown = r["items"][:MAX_MANIFEST_ROWS]
        runs.append({**r, "shown_items": shown, "hidden": len(r["items"]) - len(shown),
                     "counts": _chain_counts(r["items"])})
    photos = _photos(session, data, include_photos)
    recipient = ("entitled to the subject's photos (photos included)" if photos else
                 "default: no subject photos" + ("; names withheld" if data.redact_names else ""))
    return {
        "css": (TEMPLATES_DIR / "report.css").read_text(), "title": data.title, "case_id": case_id,
        "case_text": data.spec.text, "parties": data.parties, "findings": views, "methods": methods,
        "versions": manifest["model_versions"], "runs": runs, "headline": headline,
        "n_positive": n_positive, "n_findings": len(views), "cover_findings": cover[:COVER_FINDINGS],
        "cover_more": max(0, len(cover) - COVER_FINDINGS), "not_mean": WHAT_IT_DOES_NOT_MEAN,
        "notes": data.notes, "photos": photos, "recipient": recipient,
        "names_withheld": data.redact_names,
        "generated_human": generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "report_chain_head": manifest["report_chain_head"], "attachment_digest": digest,
        "code_version": __version__, "git_commit": _git_commit(), "seeds": _seeds(data),
        "rerun": _rerun(data, pdf_name), "glossary": GLOSSARY,
    }


def make_case_id(spec_text: str, when: datetime) -> str:
    """``EA-<case>-<UTC timestamp>``: unique per rendering, safe in file names."""
    return f"EA-{slug(spec_text.replace(':', '-'), 80)}-{when:%Y%m%dT%H%M%SZ}"


def render_report(session: Session, case: str, out_dir: Path | None = None, *,
                  include_photos: bool = False, pseudonymous: bool = False,
                  case_id: str | None = None, now: datetime | None = None,
                  approval: dict[str, Any] | None = None) -> Path:
    """Render the PDF evidence report for ``case`` (``subject:ID`` |
    ``ownership:OWNED_ID:SUSPECT_ID`` | ``run:RUN_KEY``) into ``out_dir`` (default
    ``<data_dir>/reports``), record it in the ``reports`` table, and return its path.

    A case with no findings, or whose evidence chain no longer verifies, is refused with a
    ``ReportError`` and nothing is written. A case id is never reused: a ``case_id`` that
    another report holds is refused, and no existing file is ever overwritten.

    With ``approval`` (``decided_by``, ``decided_at``, ``comment``: the release decision)
    the released version is written instead: ``{case_id}-approved.pdf`` with the approval
    block on its last page, to be signed; the draft's ``reports`` row is left as it is (the
    decision and the signed file are recorded in ``report_decisions`` by the caller).
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    spec = parse_case(case)
    data = load_case(session, spec, pseudonymous=pseudonymous)
    generated_at = (now or utcnow()).astimezone(timezone.utc)
    case_id = _new_case_id(session, spec.text, generated_at) if case_id is None else case_id
    if slug(case_id, 120) != case_id:
        raise ReportError(f"case id {case_id!r}: use letters, digits, '.', '_' and '-' only (max 120)")
    if approval is None and session.scalar(select(Report.id).where(Report.case_id == case_id)) is not None:
        raise ReportError(f"case id {case_id!r} is already used by another report; a case id is never "
                          "reused: leave --case-id out or choose a new one")
    manifest = build_manifest(session, data, case_id=case_id, generated_at=generated_at,
                              photos_included=include_photos and data.subject is not None
                              and not data.redact_names and not data.subject.is_erased)
    payload = manifest_bytes(manifest)
    digest = sha256_hex(payload)
    out_dir = Path(out_dir or get_settings().data_dir / "reports")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # reports name people: owner-only
    target = out_dir / (f"{case_id}-approved.pdf" if approval else f"{case_id}.pdf")

    env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    context = _context(session, data, manifest, case_id=case_id, generated_at=generated_at,
                       digest=digest, include_photos=include_photos, pdf_name=target.name)
    context["approval"] = approval
    html = env.get_template(f"{spec.kind}.html").render(**context)
    pdf = _write_pdf(html, payload, case_id=case_id, title=data.title)
    write_new_file(target, pdf)  # never overwrites a file, never leaves a half-written one
    if approval:
        log.info("rendered released version %s of %s", target.name, case_id)
        return target
    row = Report(case_id=case_id, kind=spec.kind)
    session.add(row)
    row.path = str(target.resolve())
    row.sha256 = sha256_hex(pdf)
    row.chain_head = manifest["report_chain_head"]
    row.finding_ids = [f.row.id for f in data.findings]
    session.flush()
    log.info("rendered report %s for %s: %d findings, %d bytes, chain head %s",
             case_id, spec.text, len(data.findings), len(pdf), row.chain_head)
    return target


def _new_case_id(session: Session, spec_text: str, when: datetime) -> str:
    """A generated case id no report holds yet (two renderings in one second get ``-2``...)."""
    base = make_case_id(spec_text, when)
    taken = set(session.scalars(select(Report.case_id).where(Report.case_id.like(base + "%"))))
    n, case_id = 1, base
    while case_id in taken:
        n += 1
        case_id = f"{base}-{n}"
    return case_id


def _write_pdf(html: str, payload: bytes, *, case_id: str, title: str) -> bytes:
    """The report as PDF/A-3b (ISO 19005-3): fonts embedded, an sRGB output intent, XMP
    metadata naming the case id (``pdf:Keywords``, ``dc:description``), and ``evidence.json``
    embedded as an associated file with relationship ``Data`` so the evidence travels
    inside the archival document."""
    import weasyprint

    attachment = weasyprint.Attachment(
        string=payload, name=ATTACHMENT_NAME, relationship="Data",
        description="encoder-audit evidence manifest and findings (canonical JSON)")
    document = weasyprint.HTML(string=html, base_url=str(TEMPLATES_DIR)).render()
    meta = document.metadata
    meta.title = meta.title or title
    meta.keywords = [case_id, "encoder-audit evidence report"]
    meta.description = f"encoder-audit evidence report, case {case_id}"
    meta.generator = f"encoder-audit {__version__}"
    return document.write_pdf(pdf_variant="pdf/a-3b", attachments=[attachment])


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` (mode 0600): written to a side file first and
    then linked into place, so an existing file is never overwritten (``ReportError``) and
    no half-written file is ever left."""
    import os

    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.link(tmp, path)
    except FileExistsError:
        raise ReportError(f"{path}: already exists; a report file is never overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
