"""Verify a PDF evidence report against itself and against the evidence store.

Checks, each named in the result so a reader sees what was and was not confirmed:

1. the PDF opens and carries ``evidence.json``; its sha256 equals the digest printed in
   the report (an altered or swapped attachment fails here);
2. the manifest's chains recompute from the attachment alone (genesis = sha256 of the run
   key) and give the heads printed in the report;
3. the PDF's sha256 equals the one recorded in the ``reports`` table when it was rendered
   (any change to the file fails here);
4. each run's chain recomputes from the database, and the database still holds every
   manifest row unchanged at the same position (a tampered, removed or re-ordered row fails);
5. each finding in the attachment equals the database row (after the same redaction), and
   the finding's hash is the one its chain row recorded (a tampered finding fails);
6. the PAdES signature inside the PDF (reports/pades.py): intact, by a certificate that
   chains to the configured trust root (``AUDIT_REPORT_TRUST_ROOT``), with a valid RFC 3161
   timestamp where a TSA is configured, over a byte range that covers the whole file; once
   a trust root is configured an unsigned report fails;
7. each run's chain head in the store equals its anchor, written outside the database when
   the run closed (reports/anchors.py): a chain deleted and re-inserted inside the database
   so that it recomputes still fails here;
8. optionally, a detached Ed25519 signature of the PDF.

Each failure names the side that changed: the file (the PDF differs from what was signed or
recorded) or the store (the database no longer holds what the report and the anchors
recorded).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.config import get_settings
from audit_lib.evidence import (
    evidence_record,
    finding_hash,
    finding_input_hash,
    finding_record,
    recompute_chain,
    run_evidence,
    sha256_hex,
    verify_chain,
)
from audit_lib.reports.anchors import check_anchor
from audit_lib.reports.case import redact
from audit_lib.reports.manifest import ATTACHMENT_NAME, MANIFEST_FORMAT, combined_head
from audit_lib.reports.pades import SignatureCheck, check_pdf_signature
from audit_lib.store.models import AuditRun, Finding, Report, ReportDecision


@dataclass
class VerifyResult:
    """What verification confirmed (``checks``) and what failed (``problems``)."""

    path: Path
    case_id: str | None = None
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # "file", "store", "anchor"

    def fail(self, side: str, message: str) -> None:
        """Record a failure and the side (file, store, anchor) that it shows changed."""
        self.problems.append(message)
        self.changed.add(side)

    @property
    def changed_side(self) -> str | None:
        """In words: which side changed, or None when nothing failed."""
        if not self.changed:
            return None
        words = {"file": "the file", "store": "the store", "anchor": "the anchor"}
        return " and ".join(words[k] for k in ("file", "store", "anchor") if k in self.changed)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checks)


def _read_pdf(path: Path, result: VerifyResult) -> tuple[bytes, str, bytes] | None:
    """(pdf bytes, text without whitespace, evidence.json bytes), or None after a problem."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not path.is_file():
        result.fail("file", f"{path}: no such file")
        return None
    raw = path.read_bytes()
    try:
        reader = PdfReader(io.BytesIO(raw))
        text = "".join(page.extract_text() or "" for page in reader.pages)
        attachments = reader.attachments
        blobs = attachments.get(ATTACHMENT_NAME) if ATTACHMENT_NAME in attachments else None
    except (PdfReadError, ValueError, KeyError) as exc:
        result.fail("file", f"{path}: not a readable PDF ({exc.__class__.__name__})")
        return None
    if not blobs:
        result.fail("file", f"the PDF carries no {ATTACHMENT_NAME} attachment: not an encoder-audit "
                               "report, or the attachment was removed")
        return None
    if len(blobs) != 1:
        result.fail("file", f"the PDF carries {len(blobs)} attachments named {ATTACHMENT_NAME}")
        return None
    return raw, re.sub(r"\s+", "", text), blobs[0]


def _check_self(text: str, payload: bytes, result: VerifyResult) -> dict[str, Any] | None:
    digest = sha256_hex(payload)
    if digest not in text:
        result.fail("file", f"the embedded {ATTACHMENT_NAME} (sha256 {digest}) does not match the "
                               "digest printed in the report: the attachment was altered or replaced")
    else:
        result.checks.append(f"{ATTACHMENT_NAME} matches the digest printed in the report")
    try:
        manifest = json.loads(payload)
    except ValueError:
        result.fail("file", f"{ATTACHMENT_NAME} is not valid JSON")
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        result.fail("file", f"{ATTACHMENT_NAME} is not an '{MANIFEST_FORMAT}'")
        return None
    result.case_id = manifest.get("case_id")
    for run in manifest.get("runs", []):
        chk = recompute_chain(run["run_key"], run.get("items", []))
        if not chk.ok or chk.head != run.get("chain_head"):
            result.fail("file", f"run {run['run_key']}: the manifest's own chain does not recompute "
                                   f"({chk.problem or 'head differs'})")
        elif run["chain_head"] not in text:
            result.fail("file", f"run {run['run_key']}: the chain head in {ATTACHMENT_NAME} is not the "
                                   "one printed in the report")
    if manifest.get("runs") and combined_head(manifest["runs"]) != manifest.get("report_chain_head"):
        result.fail("file", "the report chain head does not follow from the runs' heads")
    elif manifest.get("report_chain_head") and manifest["report_chain_head"] not in text:
        result.fail("file", "the report chain head in the attachment is not the one printed in the report")
    else:
        result.checks.append("the manifest's hash chains recompute and match the printed chain heads")
    return manifest


def _check_store(session: Session, raw: bytes, manifest: dict[str, Any], result: VerifyResult,
                 sig: SignatureCheck | None = None, public_key: Path | None = None) -> None:
    case_id = manifest.get("case_id")
    row = session.scalar(select(Report).where(Report.case_id == case_id))
    digest = sha256_hex(raw)
    signed_ok = sig is not None and sig.intact and not sig.problems
    released = None if row is None else session.scalar(
        select(ReportDecision).where(ReportDecision.report_id == row.id))
    if row is None:
        result.fail("store", f"no report with case id {case_id} in the evidence store")
    elif row.sha256 == digest:
        result.checks.append(f"the PDF is byte-identical to report {case_id} as recorded in the store")
    elif released is not None and released.released_sha256 == digest:
        result.checks.append(f"the PDF is byte-identical to report {case_id} as released by "
                             f"{released.decided_by} (recorded in the store)")
    elif sig is not None and sig.signed_before is not None and sha256_hex(sig.signed_before) == row.sha256:
        result.checks.append(f"the signed PDF holds report {case_id} byte-identical to its rendering as "
                             "recorded in the store")
    elif signed_ok:
        result.fail("store", f"the store's record of report {case_id} (sha256 {row.sha256}) differs from this "
                             "validly signed PDF: the store was changed")
    else:
        result.fail("file", f"the PDF differs from report {case_id} as rendered on "
                            f"{row.created_at:%Y-%m-%d %H:%M} (sha256 {row.sha256}): the file was altered")

    runs_ok = True
    for mrun in manifest.get("runs", []):
        run = session.scalar(select(AuditRun).where(AuditRun.run_key == mrun["run_key"]))
        if run is None:
            result.fail("store", f"run {mrun['run_key']}: not in the evidence store (purged?)")
            runs_ok = False
            continue
        anchor = check_anchor(session, run, public_key)
        if not anchor.ok:
            result.fail(anchor.side or "store", anchor.message)
            runs_ok = False
        else:
            result.checks.append(anchor.message)
        chk = verify_chain(session, run)
        if not chk.ok:
            result.fail("store", f"run {run.run_key}: the evidence chain in the store does not verify: "
                                   f"{chk.problem}")
            runs_ok = False
            continue
        db_items = run_evidence(session, run)
        for rec in mrun.get("items", []):
            seq = rec.get("seq", 0)
            if seq < 1 or seq > len(db_items):
                result.fail("store", f"run {run.run_key}: row {seq} of the report is missing from the store")
                runs_ok = False
                break
            item = db_items[seq - 1]
            stored = {**evidence_record(item), "prev_hash": item.prev_hash, "row_hash": item.row_hash}
            if stored != rec:
                result.fail("store", f"run {run.run_key}: row {seq} in the store differs from the report")
                runs_ok = False
                break
    if runs_ok:
        result.checks.append("every run's chain recomputes from the store and contains the report's rows")

    findings_ok = True
    names_withheld = bool(manifest.get("names_withheld"))
    for rec in manifest.get("findings", []):
        f = session.get(Finding, rec.get("id"))
        if f is None:
            result.fail("store", f"finding {rec.get('id')}: not in the evidence store")
            findings_ok = False
            continue
        expected = redact(finding_record(f), names_withheld)
        shown = {k: v for k, v in rec.items() if k not in ("run_key", "chain_sha256")}
        if _canonical(expected) != _canonical(shown):
            result.fail("store", f"finding {f.id}: the store's row differs from the report")
            findings_ok = False
            continue
        h = finding_hash(f)
        run = session.get(AuditRun, f.run_id)
        chained = [i for i in run_evidence(session, run) if i.kind == "finding"
                   and i.input_sha256 == finding_input_hash(f.method, f.target_key)]
        if not any(i.response_sha256 == h for i in chained):
            result.fail("store", f"finding {f.id}: its hash is not the one recorded in the evidence chain "
                                   "(the finding row was altered after it was stored)")
            findings_ok = False
        elif rec.get("chain_sha256") != h:
            result.fail("store", f"finding {f.id}: the report's finding hash differs from the chain's")
            findings_ok = False
    if findings_ok:
        result.checks.append(f"{len(manifest.get('findings', []))} findings match the store and their "
                             "hashes in the evidence chain")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def verify_report(session: Session | None, pdf_path: Path, *, signature: Path | None = None,
                  public_key: Path | None = None) -> VerifyResult:
    """Verify ``pdf_path``; with ``session`` None only the PDF's self-consistency and its
    signatures are checked: say so to the reader."""
    pdf_path = Path(pdf_path)
    result = VerifyResult(pdf_path)
    read = _read_pdf(pdf_path, result)
    if read is None:
        return result
    raw, text, payload = read
    manifest = _check_self(text, payload, result)
    sig = _check_embedded_signature(raw, result)
    if manifest is not None and session is not None:
        _check_store(session, raw, manifest, result, sig, public_key)
    if signature is not None:
        from audit_lib.reports.signing import check_signature

        problem = check_signature(pdf_path, signature, public_key)
        if problem:
            result.fail("file", problem)
        else:
            result.checks.append("the detached Ed25519 signature is valid for this PDF")
    return result


def _check_embedded_signature(raw: bytes, result: VerifyResult) -> SignatureCheck | None:
    """The PAdES signature inside the PDF: required once a trust root is configured."""
    settings = get_settings()
    has_root = settings.report_trust_root is not None
    if not has_root:
        from pyhanko.pdf_utils.reader import PdfFileReader

        try:
            signed = bool(PdfFileReader(io.BytesIO(raw), strict=False).embedded_signatures)
        except Exception:  # noqa: BLE001 - unreadable structure: reported by the full check
            signed = True
        if signed:
            result.notes.append("the PDF carries an embedded signature that was not checked: set "
                                "AUDIT_REPORT_TRUST_ROOT to the signer's CA certificate")
        return None
    sig = check_pdf_signature(raw, settings)
    if not sig.present:
        result.fail("file", "the PDF carries no embedded signature (reports are signed: a trust root is "
                            "configured): the signature was removed, or this is an unsigned draft")
        return sig
    result.checks.extend(sig.checks)
    for problem in sig.problems:
        result.fail("file", problem)
    return sig
