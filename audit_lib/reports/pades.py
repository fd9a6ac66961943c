"""PAdES signatures inside report PDFs, and RFC 3161 timestamps, with pyHanko.

``sign_pdf(pdf_in, pdf_out)`` adds a visible PAdES baseline signature to a rendered report
as an incremental update (the rendered bytes stay unchanged at the start of the signed
file, so the ``reports`` row still identifies them): level B-B, or B-T when a
time-stamping authority is configured (its RFC 3161 token is embedded in the signature).

The signer is what the operator configures in ``audit_lib.config.Settings``: a PKCS#12 file
(``AUDIT_REPORT_SIGNER_PKCS12``) or a PEM key and certificate (``AUDIT_REPORT_SIGNER_KEY``,
``AUDIT_REPORT_SIGNER_CERT``). The key's password is read from the environment variable
named by ``AUDIT_REPORT_SIGNER_PASSWORD_ENV``, which must be an ``AUDIT_CRED_...`` name;
the password never reaches a setting, a log or an error message. In production the key
belongs in a hardware token or HSM reached through PKCS#11 (pyHanko's
``pyhanko.sign.pkcs11.PKCS11Signer`` takes the place of ``SimpleSigner`` here); files are
for tests and small deployments.

``check_pdf_signature`` is what ``report verify`` uses: the signature's integrity, the
signer's chain against ``AUDIT_REPORT_TRUST_ROOT``, the timestamp against the TSA's
certificate (``AUDIT_TSA_CERT``), and that the signed byte range covers the whole file.
Revocation is not fetched (the machine may be offline); a deployment with OCSP/CRL access
should validate with ``revocation_mode="hard-fail"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from audit_lib.config import Settings, get_settings
from audit_lib.reports.case import ReportError

CRED_PREFIX = "AUDIT_CRED_"
FIELD_NAME = "EncoderAuditSignature"
# Embedded (PDF/A needs every font embedded). A font with 1000 units per em: pyHanko lays
# out fonts with other units (DejaVu Sans has 2048) with gaps between the letters.
STAMP_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuMathTeXGyre.ttf")
STAMP_BOX = (335, 52, 565, 96)  # bottom right of page 1, above the footer (PDF points; A4 is 595 x 842)
STAMP_FONT_SIZE = 7


class SigningNotConfigured(ReportError):
    """No signer (or no TSA, where one is required) is configured."""


@dataclass(frozen=True)
class SignatureInfo:
    """What ``sign_pdf`` wrote: the signed file, its sha256, the PAdES level, the signer's
    subject, and the timestamp (None at level B-B)."""

    path: Path
    sha256: str
    level: str
    signer: str
    timestamp: datetime | None
    tsa_url: str | None


@dataclass
class SignatureCheck:
    """What ``check_pdf_signature`` confirmed and what failed; ``unsigned_prefix`` is the
    file as it was before the signature was added (None if it cannot be found)."""

    present: bool = False
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    intact: bool = False
    signed_before: bytes | None = None


def _password(settings: Settings) -> bytes | None:
    name = settings.report_signer_password_env
    if not name:
        return None
    if not name.startswith(CRED_PREFIX):
        raise ReportError(f"AUDIT_REPORT_SIGNER_PASSWORD_ENV={name!r}: the password must come from an "
                          f"{CRED_PREFIX}... variable; rename it")
    value = os.environ.get(name)
    if value is None:
        raise ReportError(f"{name} is not set: export the signing key's password in it")
    return value.encode()


def load_signer(settings: Settings | None = None):  # noqa: ANN201 - pyhanko SimpleSigner
    """The configured report signer; ``SigningNotConfigured`` when there is none."""
    from pyhanko.sign import signers

    s = settings or get_settings()
    password = _password(s)
    chain = [str(s.report_signer_chain)] if s.report_signer_chain else None
    if s.report_signer_pkcs12:
        if not s.report_signer_pkcs12.is_file():
            raise ReportError(f"AUDIT_REPORT_SIGNER_PKCS12={s.report_signer_pkcs12}: no such file")
        signer = signers.SimpleSigner.load_pkcs12(str(s.report_signer_pkcs12), ca_chain_files=chain,
                                                  passphrase=password)
        where = str(s.report_signer_pkcs12)
    elif s.report_signer_key and s.report_signer_cert:
        for p in (s.report_signer_key, s.report_signer_cert):
            if not p.is_file():
                raise ReportError(f"report signer file {p}: no such file")
        signer = signers.SimpleSigner.load(str(s.report_signer_key), str(s.report_signer_cert),
                                           ca_chain_files=chain, key_passphrase=password)
        where = str(s.report_signer_key)
    else:
        raise SigningNotConfigured("no report signer configured: set AUDIT_REPORT_SIGNER_PKCS12, or "
                                   "AUDIT_REPORT_SIGNER_KEY and AUDIT_REPORT_SIGNER_CERT")
    if signer is None:
        raise ReportError(f"report signer {where}: cannot be loaded (wrong password, or not a key and "
                          "certificate)")
    return signer


def load_timestamper(settings: Settings | None = None):  # noqa: ANN201 - pyhanko TimeStamper | None
    """The configured RFC 3161 TSA client, or None when no TSA URL is set."""
    s = settings or get_settings()
    if not s.tsa_url:
        return None
    if not s.tsa_url.startswith(("http://", "https://")):
        raise ReportError(f"AUDIT_TSA_URL={s.tsa_url!r}: not an http(s) URL")
    from pyhanko.sign.timestamps.requests_client import RequestsHTTPTimeStamper

    return RequestsHTTPTimeStamper(s.tsa_url, timeout=20)


def sign_pdf(pdf_in: Path, pdf_out: Path) -> SignatureInfo:
    """Sign ``pdf_in`` with the configured signer (PAdES B-T with the configured TSA, else
    B-B) into the new file ``pdf_out``; raises ``SigningNotConfigured`` without a signer, and
    ``ReportError`` when the TSA cannot be reached or ``pdf_out`` exists."""
    from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.text import TextBoxStyle
    from pyhanko.sign import fields, signers
    from pyhanko.sign.timestamps.common_utils import TimestampRequestError
    from pyhanko.stamp import TextStampStyle

    pdf_in, pdf_out = Path(pdf_in), Path(pdf_out)
    if not pdf_in.is_file():
        raise ReportError(f"{pdf_in}: no such report")
    if pdf_out.exists():
        raise ReportError(f"{pdf_out}: already exists; a report file is never overwritten")
    signer = load_signer()
    timestamper = load_timestamper()
    level = "B-T" if timestamper is not None else "B-B"
    subject = _who(signer.signing_cert)
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha256",
        reason="encoder-audit evidence report", location="encoder-audit", use_pades_lta=False)
    style = TextStampStyle(
        stamp_text="Signed by %(signer)s\n%(ts)s\nPAdES " + level + ": check with report verify",
        text_box_style=TextBoxStyle(font=GlyphAccumulatorFactory(str(STAMP_FONT), font_size=STAMP_FONT_SIZE),
                                    font_size=STAMP_FONT_SIZE),
        border_width=1)
    pdf_signer = signers.PdfSigner(
        meta, signer=signer, timestamper=timestamper, stamp_style=style,
        new_field_spec=fields.SigFieldSpec(sig_field_name=FIELD_NAME, on_page=0, box=STAMP_BOX))
    buf = io.BytesIO()
    try:
        with pdf_in.open("rb") as fh:
            pdf_signer.sign_pdf(IncrementalPdfFileWriter(fh, strict=False), output=buf)
    except TimestampRequestError as exc:
        raise ReportError(f"the TSA at {get_settings().tsa_url} did not give a timestamp ({exc}); "
                          "the report was not signed") from None
    signed = buf.getvalue()
    from audit_lib.reports.render import write_new_file

    write_new_file(pdf_out, signed)
    ts_time = _timestamp_time(signed) if timestamper is not None else None
    return SignatureInfo(pdf_out, hashlib.sha256(signed).hexdigest(), level, subject, ts_time,
                         get_settings().tsa_url or None)


def _who(cert: Any) -> str:
    """A certificate's common name (its full subject when it has none)."""
    return cert.subject.native.get("common_name") or cert.subject.human_friendly


def _timestamp_time(raw: bytes) -> datetime | None:
    from pyhanko.pdf_utils.reader import PdfFileReader

    from pyhanko.sign.validation.generic_cms import extract_tst_data_iter

    sig = PdfFileReader(io.BytesIO(raw)).embedded_signatures[0]
    for tst in extract_tst_data_iter(sig.signer_info, signed=False):
        return tst["encap_content_info"]["content"].parsed["gen_time"].native
    return None


def _load_certs(path: Path | None) -> list[Any]:
    """Every certificate in a PEM (or DER) file, as asn1crypto objects."""
    from asn1crypto import pem, x509

    if path is None:
        return []
    if not path.is_file():
        raise ReportError(f"certificate file {path}: no such file")
    data = path.read_bytes()
    if pem.detect(data):
        return [x509.Certificate.load(der) for _, _, der in pem.unarmor(data, multiple=True)]
    return [x509.Certificate.load(data)]


def _contexts(settings: Settings):  # noqa: ANN202 - (ValidationContext, ValidationContext)
    from pyhanko_certvalidator import ValidationContext

    roots = _load_certs(settings.report_trust_root)
    if not roots:
        raise ReportError("no trust root configured for signatures: set AUDIT_REPORT_TRUST_ROOT "
                          "(PEM of the CA that issued the report signer's certificate)")
    ts_roots = _load_certs(settings.tsa_cert) or roots
    vc = ValidationContext(trust_roots=roots, allow_fetching=False, revocation_mode="soft-fail")
    ts_vc = ValidationContext(trust_roots=ts_roots, allow_fetching=False, revocation_mode="soft-fail")
    return vc, ts_vc


def check_pdf_signature(raw: bytes, settings: Settings | None = None) -> SignatureCheck:
    """Validate the PDF's embedded signature (see the module docstring)."""
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    s = settings or get_settings()
    out = SignatureCheck()
    try:
        sigs = PdfFileReader(io.BytesIO(raw), strict=False).embedded_signatures
    except Exception as exc:  # noqa: BLE001 - any parse failure is a finding, not a crash
        out.problems.append(f"the PDF's signature structure cannot be read ({exc.__class__.__name__}): "
                            "the file was altered")
        return out
    if not sigs:
        return out
    out.present = True
    if len(sigs) != 1:
        out.problems.append(f"the PDF carries {len(sigs)} signatures; a report carries one")
    sig = sigs[0]
    vc, ts_vc = _contexts(s)
    try:
        status = validate_pdf_signature(
            sig, signer_validation_context=vc, ts_validation_context=ts_vc,
            key_usage_settings=KeyUsageConstraints(key_usage={"digital_signature", "non_repudiation"}))
    except Exception as exc:  # noqa: BLE001 - a malformed signature is a finding
        out.problems.append(f"the embedded signature cannot be validated ({exc.__class__.__name__}: {exc})")
        return out
    who = _who(status.signing_cert)
    if not status.intact or not status.valid:
        out.problems.append("the embedded signature does not match the document's bytes: the file was "
                            "altered after it was signed")
    else:
        out.intact = True
        out.checks.append(f"the embedded PAdES signature by {who} is intact")
    if status.intact and status.valid:
        if status.trusted:
            out.checks.append("the signer's certificate chains to the configured trust root")
        else:
            out.problems.append(f"the signer's certificate ({who}) does not chain to the configured trust "
                                "root: untrusted signer")
    if status.coverage == SignatureCoverageLevel.ENTIRE_FILE:
        out.checks.append("the signed byte range covers the whole document")
    else:
        extra = len(raw) - (int(sig.byte_range[2]) + int(sig.byte_range[3]))
        out.problems.append(f"the signed byte range does not cover the whole document ({status.coverage.name}"
                            f", {max(extra, 0)} bytes after it): the file was changed after signing")
    ts = status.timestamp_validity
    if ts is None:
        if s.tsa_url or s.tsa_cert:
            out.problems.append("the signature carries no RFC 3161 timestamp (PAdES B-T required: a TSA "
                                "is configured)")
        else:
            out.checks.append("the signature is PAdES B-B (no timestamp; no TSA configured)")
    elif not (ts.intact and ts.valid):
        out.problems.append("the signature's timestamp token does not match the signature")
    elif not ts.trusted:
        out.problems.append("the signature's timestamp is not from the configured TSA (untrusted "
                            "timestamp certificate)")
    else:
        out.checks.append(f"the RFC 3161 timestamp ({ts.timestamp:%Y-%m-%d %H:%M:%S %Z}) is valid and from "
                          "the configured TSA")
    out.signed_before = _before_signature(raw, int(sig.byte_range[1]))
    return out


def _before_signature(raw: bytes, contents_at: int) -> bytes | None:
    """The file as rendered: the longest revision ending (``%%EOF``) before the signature."""
    best = None
    start = 0
    while True:
        i = raw.find(b"%%EOF", start, contents_at)
        if i < 0:
            return best
        end = i + 5
        while end < len(raw) and raw[end:end + 1] in (b"\r", b"\n") and end - i < 7:
            end += 1
        best = raw[:end]
        start = i + 5


def timestamp_token(digest: bytes) -> bytes:
    """An RFC 3161 token (DER ContentInfo) for a sha256 ``digest`` from the configured TSA;
    ``SigningNotConfigured`` when there is none."""
    ts = load_timestamper()
    if ts is None:
        raise SigningNotConfigured("no TSA configured: set AUDIT_TSA_URL")
    token = asyncio.run(ts.async_timestamp(digest, "sha256"))
    return token.dump()


def check_timestamp_token(token_der: bytes, digest: bytes, settings: Settings | None = None) -> str | None:
    """None when ``token_der`` is a valid token over ``digest`` from the configured TSA, else
    what is wrong."""
    from asn1crypto import cms
    from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
    from pyhanko_certvalidator import ValidationContext

    s = settings or get_settings()
    roots = _load_certs(s.tsa_cert)
    if not roots:
        return "a TSA certificate is needed to check the timestamp: set AUDIT_TSA_CERT"
    try:
        signed = cms.ContentInfo.load(token_der)["content"]
        vc = ValidationContext(trust_roots=roots, allow_fetching=False, revocation_mode="soft-fail")
        status = asyncio.run(validate_tst_signed_data(signed, vc, lambda _algo: digest))
    except Exception as exc:  # noqa: BLE001 - a malformed token is a finding
        return f"the timestamp token cannot be read ({exc.__class__.__name__})"
    if not (status["intact"] and status["valid"]):
        return "the timestamp token does not match the anchor"
    if status.get("trust_problem_indic") is not None or status.get("validation_path") is None:
        return "the timestamp is not from the configured TSA"
    return None
