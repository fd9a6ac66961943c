"""Detached Ed25519 signatures of report PDFs, with a key the operator configures.

The signature signs the PDF's exact bytes; it travels beside the PDF as ``REPORT.pdf.sig``
(base64 of the 64-byte signature). The private key is a PEM file (PKCS#8, unencrypted,
readable by its owner only) named by ``--key`` or ``AUDIT_REPORT_SIGNING_KEY``; the public
key (PEM, SubjectPublicKeyInfo) is what recipients use to check. Key material never
reaches logs, the database or error messages (only the file's path does).

The same key signs each run's chain anchor (reports/anchors.py). The signature inside the
PDF, with a certificate and a trusted timestamp, is reports/pades.py; this detached
signature remains an option beside it.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from audit_lib.reports.case import ReportError

KEY_ENV = "AUDIT_REPORT_SIGNING_KEY"
PUBLIC_KEY_ENV = "AUDIT_REPORT_VERIFY_KEY"


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair; the private file is created with mode 0600 and an
    existing file is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for p in (private_path, public_path):
        if p.exists():
            raise ReportError(f"{p}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _key_path(path: Path | None, env: str, what: str) -> Path:
    chosen = path or (Path(os.environ[env]) if os.environ.get(env) else None)
    if chosen is None:
        raise ReportError(f"no {what} configured: pass --key or set {env}")
    if not chosen.is_file():
        raise ReportError(f"{what} {chosen}: no such file")
    return chosen


def load_private_key(path: Path | None = None):  # noqa: ANN201 - Ed25519PrivateKey
    """The operator's signing key; refuses a key file others can read, or a non-Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = _key_path(path, KEY_ENV, "signing key")
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ReportError(f"signing key {p}: readable by group or others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ReportError(f"signing key {p}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReportError(f"signing key {p}: not an Ed25519 key")
    return key


def load_public_key(path: Path | None = None):  # noqa: ANN201 - Ed25519PublicKey
    """A recipient's copy of the operator's public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = _key_path(path, PUBLIC_KEY_ENV, "public key")
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except ValueError:
        raise ReportError(f"public key {p}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReportError(f"public key {p}: not an Ed25519 key")
    return key


def sign_report(pdf_path: Path, key_path: Path | None = None, out: Path | None = None) -> Path:
    """Write the detached signature of ``pdf_path`` (default ``<pdf>.sig``) and return its path."""
    if not pdf_path.is_file():
        raise ReportError(f"{pdf_path}: no such report")
    signature = load_private_key(key_path).sign(pdf_path.read_bytes())
    out = out or pdf_path.with_name(pdf_path.name + ".sig")
    out.write_text(base64.b64encode(signature).decode() + "\n")
    return out


def check_signature(pdf_path: Path, signature_path: Path, public_key_path: Path | None = None) -> str | None:
    """None when the signature is valid for the PDF's bytes, else what is wrong."""
    from cryptography.exceptions import InvalidSignature

    if not signature_path.is_file():
        return f"signature {signature_path}: no such file"
    try:
        sig = base64.b64decode(signature_path.read_text().strip(), validate=True)
    except ValueError:
        return f"signature {signature_path}: not base64"
    try:
        load_public_key(public_key_path).verify(sig, pdf_path.read_bytes())
    except InvalidSignature:
        return "the signature does not match this PDF (altered file, or another key)"
    return None
