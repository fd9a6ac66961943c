"""A real RFC 3161 time-stamping authority on 127.0.0.1 for tests, and the test PKI.

``make_pki(folder)`` creates, with ``cryptography``, a test root CA, a report signer
certificate (PEM pair and PKCS#12), a TSA certificate (extended key usage timeStamping,
critical), and a second, untrusted CA with its own signer. ``TSAServer`` answers
``application/timestamp-query`` POSTs by running ``openssl ts -reply`` with the TSA key:
each token is made for the request it answers, never stored.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

P12_PASSWORD = "test-p12-password"


@dataclass(frozen=True)
class TestPKI:
    """Paths of the test certificates and keys (all PEM unless named p12)."""

    root: Path
    signer_key: Path
    signer_cert: Path
    signer_p12: Path
    tsa_key: Path
    tsa_cert: Path
    untrusted_root: Path
    untrusted_key: Path
    untrusted_cert: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "encoder-audit tests")])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool = False,  # noqa: ANN001
          tsa: bool = False) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_key is not key:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    if tsa:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def _pem_key(path: Path, key) -> None:  # noqa: ANN001
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _pem_cert(path: Path, *certs: x509.Certificate) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def make_pki(folder: Path) -> TestPKI:
    """Create the test PKI in ``folder`` (EC P-256 keys: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Test Audit Root CA", root_key, "Test Audit Root CA", root_key, ca=True)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = _cert("Test Report Signer", signer_key, "Test Audit Root CA", root_key)
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = _cert("Test TSA", tsa_key, "Test Audit Root CA", root_key, tsa=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = _cert("Untrusted Root CA", other_key, "Untrusted Root CA", other_key, ca=True)
    mallory_key = ec.generate_private_key(ec.SECP256R1())
    mallory = _cert("Test Report Signer", mallory_key, "Untrusted Root CA", other_key)

    pki = TestPKI(*(folder / n for n in ("root.pem", "signer.key", "signer.pem", "signer.p12", "tsa.key",
                                         "tsa.pem", "other-root.pem", "mallory.key", "mallory.pem")))
    _pem_cert(pki.root, root)
    _pem_key(pki.signer_key, signer_key)
    _pem_cert(pki.signer_cert, signer)
    pki.signer_p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"report-signer", signer_key, signer, [root],
        serialization.BestAvailableEncryption(P12_PASSWORD.encode())))
    _pem_key(pki.tsa_key, tsa_key)
    _pem_cert(pki.tsa_cert, tsa)
    _pem_cert(pki.untrusted_root, other_root)
    _pem_key(pki.untrusted_key, mallory_key)
    _pem_cert(pki.untrusted_cert, mallory)
    return pki


_TSA_CONF = """\
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
serial = {serial}
crypto_device = builtin
signer_cert = {cert}
certs = {chain}
signer_key = {key}
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


class TSAServer:
    """``with TSAServer(pki) as url:`` a TSA answering at ``url`` until the block ends;
    ``requests`` counts the tokens issued."""

    def __init__(self, pki: TestPKI) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="tsa-"))
        serial = self._dir / "serial"
        serial.write_text("01\n")
        self._conf = self._dir / "tsa.cnf"
        self._conf.write_text(_TSA_CONF.format(serial=serial, cert=pki.tsa_cert, chain=pki.root,
                                               key=pki.tsa_key))
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Content-Type") != "application/timestamp-query" or not 0 < length < 65536:
                    self.send_error(400, "expected an application/timestamp-query")
                    return
                body = self.rfile.read(length)
                reply = server._reply(body)
                if reply is None:
                    self.send_error(400, "bad timestamp query")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/tsa"

    def _reply(self, query: bytes) -> bytes | None:
        with self._lock:  # openssl's serial file is not safe for concurrent writers
            q, r = self._dir / "q.tsq", self._dir / "r.tsr"
            q.write_bytes(query)
            done = subprocess.run(["openssl", "ts", "-reply", "-config", str(self._conf), "-queryfile", str(q),
                                   "-out", str(r)], capture_output=True, timeout=30, check=False)
            if done.returncode != 0:
                return None
            self.requests += 1
            return r.read_bytes()

    def __enter__(self) -> str:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def signing_env(pki: TestPKI, tsa_url: str | None, *, pem: bool = False, untrusted: bool = False) -> dict[str, str]:
    """The ``AUDIT_*`` settings of an operator who signs reports with this PKI (PKCS#12 by
    default, a PEM pair with ``pem``, the untrusted CA's signer with ``untrusted``)."""
    env = {"AUDIT_REPORT_TRUST_ROOT": str(pki.root), "AUDIT_TSA_CERT": str(pki.root)}
    if tsa_url:
        env["AUDIT_TSA_URL"] = tsa_url
    if untrusted:
        env.update(AUDIT_REPORT_SIGNER_KEY=str(pki.untrusted_key), AUDIT_REPORT_SIGNER_CERT=str(pki.untrusted_cert))
    elif pem:
        env.update(AUDIT_REPORT_SIGNER_KEY=str(pki.signer_key), AUDIT_REPORT_SIGNER_CERT=str(pki.signer_cert))
    else:
        env.update(AUDIT_REPORT_SIGNER_PKCS12=str(pki.signer_p12), AUDIT_REPORT_SIGNER_PASSWORD_ENV="AUDIT_CRED_P12",
                   AUDIT_CRED_P12=P12_PASSWORD)
    return env


SIGNING_VARS = ("AUDIT_REPORT_TRUST_ROOT", "AUDIT_TSA_CERT", "AUDIT_TSA_URL", "AUDIT_REPORT_SIGNER_KEY",
                "AUDIT_REPORT_SIGNER_CERT", "AUDIT_REPORT_SIGNER_PKCS12", "AUDIT_REPORT_SIGNER_PASSWORD_ENV",
                "AUDIT_CRED_P12")
