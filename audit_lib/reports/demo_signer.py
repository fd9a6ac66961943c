"""A self-made signing identity for the demo and for trying the product out: a private
"encoder-audit demo CA" and a report-signer certificate issued by it, so that a released
report carries a real PAdES signature that ``report verify`` checks against that root.

It is not a trust anchor anyone else shares: a legal team's reports are signed with the
operator's own certificate (PKCS#12 or PEM pair, PKCS#11 in production; see
:mod:`audit_lib.reports.pades`). The files are written once and reused (0600 keys).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

DEMO_CA_NAME = "encoder-audit demo CA (not for filing)"
DEMO_SIGNER_NAME = "encoder-audit demo report signer"


def _build(subject: str, public_key, issuer: str, issuer_key, *, ca: bool):  # noqa: ANN001, ANN202
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    usage = dict(digital_signature=True, content_commitment=not ca, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                 encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**usage), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))


def demo_signer_settings(folder: Path) -> dict[str, str]:
    """Create (once) the demo CA and signer in ``folder``; returns the ``AUDIT_REPORT_*``
    settings that make :func:`audit_lib.reports.pades.sign_pdf` sign with it and
    ``report verify`` trust it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_pem, key_pem, cert_pem = folder / "demo-ca.pem", folder / "signer.key", folder / "signer.pem"
    if not (root_pem.exists() and key_pem.exists() and cert_pem.exists()):
        ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _build(DEMO_CA_NAME, ca_key.public_key(), DEMO_CA_NAME, ca_key, ca=True)
        signer = _build(DEMO_SIGNER_NAME, signer_key.public_key(), DEMO_CA_NAME, ca_key, ca=False)
        key_pem.touch(mode=0o600)
        key_pem.write_bytes(signer_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        cert_pem.write_bytes(signer.public_bytes(serialization.Encoding.PEM))
        root_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return {"AUDIT_REPORT_SIGNER_KEY": str(key_pem), "AUDIT_REPORT_SIGNER_CERT": str(cert_pem),
            "AUDIT_REPORT_TRUST_ROOT": str(root_pem)}
