"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright): the real server started with `encoder-audit web serve` on a free port and a
temporary SQLite store. Sign in, register a subject with real photos, see it listed, see
a bad upload refused with a message, erase it; a viewer is refused the register page.

Set UPDATE_DOCS_SCREENSHOTS=1 to refresh docs/web-subject-page.png and web-subject-list.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from audit_lib.config import PROJECT_ROOT
from audit_lib.server.testing import free_port
from tests.conftest import FACES
from tests.fixtures_web import DPO, VIEWER, add_web_users, seed_finding

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_SCREENSHOT = PROJECT_ROOT / "docs" / "web-subject-page.png"
DOCS_LIST_SCREENSHOT = PROJECT_ROOT / "docs" / "web-subject-list.png"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install "
                       "-y --no-install-recommends chromium fonts-liberation"),
    pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not present"),
]


@dataclass
class Server:
    base: str
    db_url: str
    data_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """`encoder-audit web serve` in a subprocess over a fresh SQLite store with a dpo and
    a viewer; stopped (its process only) afterwards."""
    from audit_lib.store import upgrade

    root = tmp_path_factory.mktemp("web-e2e")
    data_dir = root / "var"
    db_url = f"sqlite:///{root / 'evidence.sqlite'}"
    upgrade(db_url)
    add_web_users(db_url)
    port = free_port()
    env = {**os.environ, "AUDIT_DATABASE_URL": db_url, "AUDIT_DATA_DIR": str(data_dir),
           "HF_HUB_OFFLINE": "1"}
    env.pop("AUDIT_WEB_SECRET_KEY", None)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "audit_lib.cli", "web", "serve",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start: {(root / 'server.log').read_text()}")
            time.sleep(0.3)
        yield Server(base, db_url, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A fresh Chromium profile (its own user-data-dir), headless."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900}, accept_downloads=False)
        context.set_default_timeout(15_000)
        yield context
        context.close()


def _sign_in(page, base: str, who: tuple[str, str]) -> None:
    page.goto(f"{base}/subjects")
    assert "/login" in page.url  # every page is behind sign-in
    page.fill("#username", who[0])
    page.fill("#password", who[1])
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{base}/subjects")


def test_dpo_registers_sees_refusal_and_erases_viewer_refused(server, browser_context, tmp_path):
    base = server.base
    page = browser_context.new_page()
    console_errors: list[str] = []  # e.g. a Content-Security-Policy violation
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    _sign_in(page, base, DPO)
    assert page.locator("h1").inner_text() == "Registered subjects"

    # register a subject with three real photos
    page.click("a.button:has-text('Register a subject')")
    page.fill("#name", "Ada Example")
    page.fill("#aliases", "A. Example")
    page.fill("#legal_basis", "GDPR Art. 6(1)(c): legal obligation")
    page.select_option("#sex", "f")
    page.set_input_files("#photos", [str(FACES / "s1" / f"{i}.pgm") for i in (1, 2, 3)])
    page.set_input_files("#claimed", [str(FACES / "s1" / "4.pgm")])
    page.click("button:has-text('Register')")
    page.wait_for_url(f"{base}/subjects/*?registered=1")
    assert page.locator("#subject-name").inner_text() == "Ada Example"
    assert page.locator("[role=status]").inner_text().startswith("Registered.")
    subject_id = int(page.url.split("/subjects/")[1].split("?")[0])
    assert page.locator(".thumbs img").count() == 4
    assert all(page.locator(".thumbs img").nth(i).evaluate("img => img.naturalWidth") > 0
               for i in range(4))

    # findings and a report arrive from the audit pipeline; the page shows them
    seed_finding(server.db_url, subject_id, "tiny-clip-vit", "idia", 0.003, "positive",
                 "privacy_audit__2026-11-23", effect_size=2.8)
    seed_finding(server.db_url, subject_id, "tiny-clip-vit", "encoder_mi", 0.41, "negative",
                 "privacy_audit__2026-11-23", effect_size=0.1)
    seed_finding(server.db_url, subject_id, "simclr-faces", "encoder_mi", 0.012, "positive",
                 "privacy_audit__2026-11-23", effect_size=1.9)
    _register_report(server, subject_id)
    page.goto(f"{base}/subjects/{subject_id}")
    words = page.locator(".p-words").all_inner_texts()
    assert any(w.startswith("p = 0.003: if the model had not been trained on this person, a "
                            "result at least this strong would happen at most 0.3% of the time")
               for w in words)
    href = page.locator(".reports a").first.get_attribute("href")
    pdf = page.request.get(base + href)
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    shot = tmp_path / "web-subject-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # it is listed
    page.click("nav a:has-text('Subjects')")
    row = page.locator("#subjects tbody tr", has_text="Ada Example")
    assert row.count() == 1 and "tiny-clip-vit · identity: evidence found (p = 0.003)" in row.inner_text()
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        page.screenshot(path=str(DOCS_LIST_SCREENSHOT), full_page=True)

    # a bad upload is refused with a message beside the photos field
    fake = tmp_path / "notes.jpg"
    fake.write_text("meeting notes, not a photo\n" * 20)
    page.goto(f"{base}/subjects/new")
    page.fill("#name", "Bob Example")
    page.fill("#legal_basis", "GDPR Art. 6(1)(e)")
    page.set_input_files("#photos", [str(fake)])
    page.click("button:has-text('Register')")
    message = page.locator(".field:has(#photos) .field-error")
    assert message.first.inner_text() == "notes.jpg: not an image (no known image format)"
    assert page.locator("#name").input_value() == "Bob Example"  # what was typed is kept
    page.goto(f"{base}/subjects")
    assert page.locator("#subjects tbody tr").count() == 1

    # erase, with the confirmation step
    page.goto(f"{base}/subjects/{subject_id}")
    page.click("a:has-text('Erase this subject')")
    page.click("button:has-text('Erase permanently')")
    assert "Tick the box" in page.locator(".field-error").inner_text()
    page.check("#confirm")
    page.click("button:has-text('Erase permanently')")
    page.wait_for_url(f"{base}/subjects?erased={subject_id}")
    assert "was erased" in page.locator("[role=status]").inner_text()
    assert "Ada Example" not in page.content()
    page.goto(f"{base}/audit-log")
    actions = page.locator("#audit-log .action").all_inner_texts()
    assert {"subject registered", "subject viewed", "subject erased"} <= set(actions)
    # the only console errors are the two refused requests (400 bad upload, 400 unticked box)
    assert all("400" in m for m in console_errors), console_errors
    page.close()

    # a viewer is refused the register page and does not see the link
    browser_context.clear_cookies()
    page = browser_context.new_page()
    _sign_in(page, base, VIEWER)
    assert page.locator("a:has-text('Register a subject')").count() == 0
    response = page.goto(f"{base}/subjects/new")
    assert response.status == 403
    assert "may view subjects but not register" in page.locator("[role=alert]").inner_text()
    page.close()


def _register_report(server: Server, subject_id: int) -> None:
    """A real PDF in the reports folder, registered in the reports table."""
    import hashlib
    import io

    from pypdf import PdfWriter

    from audit_lib.reports.release import Decision, record_release
    from audit_lib.store import session_scope
    from audit_lib.store.models import Report

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buf = io.BytesIO()
    writer.write(buf)
    folder = server.data_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"subject-{subject_id}.pdf"
    path.write_bytes(buf.getvalue())
    with session_scope(server.db_url) as s:
        row = Report(case_id=f"subject:{subject_id}", kind="subject", path=str(path),
                     sha256=hashlib.sha256(buf.getvalue()).hexdigest(), finding_ids=[])
        s.add(row)
        s.flush()
        record_release(s, row, Decision("dora", row.created_at), str(path), row.sha256, "test")
