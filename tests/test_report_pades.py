"""PAdES signatures inside the report (pyHanko) with RFC 3161 timestamps from a real TSA on
127.0.0.1 (tests/tsa_server.py: ``openssl ts -reply``), and ``report verify`` on them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from audit_lib.cli import app
from audit_lib.config import get_settings
from audit_lib.reports import ReportError
from audit_lib.reports.pades import SigningNotConfigured, sign_pdf
from tests.test_report_pdfa import assert_pdfa3b, render_one
from tests.tsa_server import SIGNING_VARS, TSAServer, make_pki, signing_env


@pytest.fixture(scope="module")
def world(tmp_path_factory, sqlite_database_url):
    """One rendered report signed at PAdES B-T, the test PKI and the running TSA."""
    from tests.conftest import _clear

    tmp = tmp_path_factory.mktemp("pades")
    mp = pytest.MonkeyPatch()
    _clear(sqlite_database_url)
    mp.setenv("AUDIT_DATABASE_URL", sqlite_database_url)
    mp.setenv("AUDIT_DATA_DIR", str(tmp / "var"))
    pki = make_pki(tmp / "pki")
    tsa = TSAServer(pki)
    with tsa as url:
        for k, v in signing_env(pki, url).items():
            mp.setenv(k, v)
        get_settings.cache_clear()
        draft = render_one(sqlite_database_url, tmp)
        info = sign_pdf(draft, tmp / "signed.pdf")
        yield SimpleNamespace(pki=pki, tsa=tsa, url=url, draft=draft, signed=info.path, info=info, tmp=tmp)
    mp.undo()
    get_settings.cache_clear()


@pytest.fixture
def env(monkeypatch):
    """Change signing settings for one test: ``env(VAR=value, OTHER=None)``."""
    def set_(**values: str | None) -> None:
        for k, v in values.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        get_settings.cache_clear()

    yield set_
    monkeypatch.undo()
    get_settings.cache_clear()


def verify_cli(path: Path):  # noqa: ANN201 - click Result
    return CliRunner().invoke(app, ["report", "verify", str(path)])


def test_signed_report_verifies_pades_bt_from_the_local_tsa(world):
    info = world.info
    assert info.level == "B-T" and info.signer == "Test Report Signer"
    assert abs(info.timestamp - datetime.now(timezone.utc)) < timedelta(minutes=30)
    assert world.tsa.requests >= 2  # the run's chain anchor and the signature: tokens made on demand
    out = verify_cli(world.signed)
    assert out.exit_code == 0, out.output
    for line in ("the embedded PAdES signature by Test Report Signer is intact",
                 "the signer's certificate chains to the configured trust root",
                 "the signed byte range covers the whole document",
                 f"the RFC 3161 timestamp ({info.timestamp:%Y-%m-%d %H:%M:%S}",
                 "byte-identical to its rendering as recorded in the store",
                 "the store's chain head matches its anchor (unsigned, timestamped by the TSA)"):
        assert line in out.output, out.output
    assert_pdfa3b(world.signed, world.draft.stem)  # still PDF/A-3b, the stamp's font embedded
    assert world.signed.read_bytes().startswith(world.draft.read_bytes())  # an incremental update


def test_a_flipped_byte_fails(world, tmp_path):
    raw = bytearray(world.signed.read_bytes())
    i = raw.index(b"\n") + 2  # inside the binary comment after %PDF-1.x: the file still parses
    raw[i] ^= 0x01
    flipped = tmp_path / "flipped.pdf"
    flipped.write_bytes(bytes(raw))
    out = verify_cli(flipped)
    assert out.exit_code == 1, out.output
    assert "does not match the document's bytes: the file was altered after it was signed" in out.output
    assert "changed: the file" in out.output


def test_a_removed_signature_fails(world, tmp_path):
    stripped = tmp_path / "stripped.pdf"
    stripped.write_bytes(world.signed.read_bytes()[:len(world.draft.read_bytes())])  # the signing update cut off
    for path in (stripped, world.draft):
        out = verify_cli(path)
        assert out.exit_code == 1, out.output
        assert "the PDF carries no embedded signature" in out.output and "changed: the file" in out.output


def test_an_untrusted_certificate_fails(world, env, tmp_path):
    pki = world.pki
    env(AUDIT_REPORT_SIGNER_PKCS12=None, AUDIT_REPORT_SIGNER_PASSWORD_ENV=None, AUDIT_REPORT_SIGNER_KEY=str(pki.untrusted_key),
        AUDIT_REPORT_SIGNER_CERT=str(pki.untrusted_cert))
    forged = sign_pdf(world.draft, tmp_path / "forged.pdf")
    assert forged.signer == "Test Report Signer"  # the same name, from another CA
    env(**signing_env(pki, world.url))
    out = verify_cli(forged.path)
    assert out.exit_code == 1, out.output
    assert "does not chain to the configured trust root: untrusted signer" in out.output


def test_a_change_after_signing_is_outside_the_signed_range(world, tmp_path):
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    changed = tmp_path / "changed.pdf"
    with world.signed.open("rb") as fh, changed.open("wb") as out:
        w = IncrementalPdfFileWriter(fh, strict=False)
        w.root["/Lang"] = generic.TextStringObject("de")  # a new revision appended after the signature
        w.update_root()
        w.write(out)
    out = verify_cli(changed)
    assert out.exit_code == 1, out.output
    assert "the signed byte range does not cover the whole document" in out.output


def test_b_b_without_a_tsa_and_b_t_required_with_one(world, env, tmp_path):
    env(AUDIT_TSA_URL=None, AUDIT_TSA_CERT=None)
    bb = sign_pdf(world.draft, tmp_path / "bb.pdf")
    assert bb.level == "B-B" and bb.timestamp is None
    ok = verify_cli(bb.path)
    assert ok.exit_code == 0 and "PAdES B-B (no timestamp; no TSA configured)" in ok.output, ok.output
    env(AUDIT_TSA_URL=world.url, AUDIT_TSA_CERT=str(world.pki.root))
    bad = verify_cli(bb.path)
    assert bad.exit_code == 1 and "carries no RFC 3161 timestamp" in bad.output, bad.output


def _one_line_exit_2(args: list[str], needle: str) -> None:
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert needle in out.output and "Traceback" not in out.output, out.output
    assert len([ln for ln in out.output.splitlines() if ln.strip()]) == 1, out.output


def test_signing_refusals_name_the_problem(world, env, tmp_path):
    target = tmp_path / "out.pdf"
    sign = ["report", "sign", str(world.draft), "--pades", "--out", str(target)]
    env(**{k: None for k in SIGNING_VARS})
    with pytest.raises(SigningNotConfigured):
        sign_pdf(world.draft, target)
    _one_line_exit_2(sign, "no report signer configured")
    env(**signing_env(world.pki, world.url))
    env(AUDIT_REPORT_SIGNER_PASSWORD_ENV="AUDIT_DATABASE_URL")
    _one_line_exit_2(sign, "must come from an AUDIT_CRED_... variable")
    env(AUDIT_REPORT_SIGNER_PASSWORD_ENV="AUDIT_CRED_P12", AUDIT_CRED_P12="wrong")
    _one_line_exit_2(sign, "cannot be loaded (wrong password")
    env(**signing_env(world.pki, "http://127.0.0.1:9/tsa"))  # nothing listens there
    _one_line_exit_2(sign, "did not give a timestamp")
    assert not target.exists()
    env(**signing_env(world.pki, world.url))
    target.write_bytes(b"someone else's file")
    with pytest.raises(ReportError, match="never overwritten"):
        sign_pdf(world.draft, target)
    assert target.read_bytes() == b"someone else's file"
    assert not [p for p in tmp_path.iterdir() if re.search(r"\.part$", p.name)]
