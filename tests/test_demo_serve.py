"""``encoder-audit run demo --serve``: the three users' views of a demo's data, checked in a
real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The demo runs once into a temporary folder with the ``smoke`` zoo profile and without the
enrolment step (its models are a few optimiser steps old, so its findings are mechanics, not
the README's story; the views are what is tested here): the same ``privacy_audit``,
``ownership_audit`` and ``evidence_reports`` DAG runs, recorded in the demo's own Airflow
metadata database and evidence store. The serving command then runs as a user starts it,
on free ports; the test signs in with the passwords it prints once, sees the demo's DAG runs
listed as succeeded in Airflow's UI and each demo subject's findings on the DPO's page,
then stops it with SIGTERM and checks that both servers are gone.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
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
from tests.test_web_e2e import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install "
                       "-y --no-install-recommends chromium fonts-liberation"),
    pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not present"),
]
LINE = re.compile(r"(http://127\.0\.0\.1:\d+/)\s+user (\S+), password (\S+)")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "audit_lib.cli", *args]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A finished demo (smoke zoo, no enrolment) in a temporary folder."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for key in [k for k in env if k.startswith("AIRFLOW") or k.startswith("AUDIT_D")]:
        env.pop(key)  # the demo sets up its own Airflow home and evidence store
    out = subprocess.run(_cli("run", "demo", "--profile", "smoke", "--no-enrol", "--n-candidates", "100",
                              "--demo-dir", str(folder)),
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "encoder-audit run demo --serve" in out.stdout  # it says how to open the views
    return folder


@dataclass
class Views:
    proc: subprocess.Popen
    airflow: tuple[str, str, str]  # url, user, password
    web: tuple[str, str, str]
    output: list[str]


@pytest.fixture(scope="module")
def views(demo_dir) -> Iterator[Views]:
    """The serving command, started as a user would, until its URLs and passwords are printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.Popen(_cli("run", "demo", "--serve", "--demo-dir", str(demo_dir), "--airflow-port",
                                 str(free_port()), "--web-port", str(free_port())),
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 180
    try:
        while not lines or "shown only here" not in lines[-1]:  # the last line of what it prints
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("the serving command stopped: " + "".join(lines[-40:]))
            lines.append(line)
            if (m := LINE.search(line)) is not None:
                found.append(m.groups())
            assert time.monotonic() < deadline, "the serving command printed no URLs: " + "".join(lines[-40:])
        assert len(found) == 2, "".join(lines)
        yield Views(proc, found[0], found[1], lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, accept_downloads=False)
        context.set_default_timeout(30_000)
        yield context
        context.close()


def _demo_runs(demo_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(demo_dir / "airflow" / "airflow.db") as conn:
        return conn.execute("SELECT dag_id, run_id, state FROM dag_run ORDER BY id").fetchall()


def _demo_findings(demo_dir: Path) -> dict[str, list[str]]:
    """Pseudonym -> decisions of the subject's findings, from the demo's evidence store."""
    with sqlite3.connect(demo_dir / "evidence.sqlite") as conn:
        rows = conn.execute("SELECT s.pseudonym, f.decision FROM findings f JOIN data_subjects s "
                            "ON s.id = f.subject_id").fetchall()
    out: dict[str, list[str]] = {}
    for pseudonym, decision in rows:
        out.setdefault(pseudonym, []).append(decision)
    return out


def test_serve_shows_airflow_runs_and_dpo_findings_then_stops(demo_dir, views, browser):
    runs = _demo_runs(demo_dir)
    assert {d for d, _, _ in runs} >= {"privacy_audit", "ownership_audit", "evidence_reports"}
    assert all(state == "success" for _, _, state in runs)
    assert str(demo_dir / "reports") in "".join(views.output)
    with sqlite3.connect(demo_dir / "evidence.sqlite") as conn:
        for (path,) in conn.execute("SELECT path FROM reports"):
            assert Path(path).is_file() and Path(path).is_relative_to(demo_dir / "reports"), path

    # the operator: Airflow's UI lists the demo's runs, each as succeeded
    url, user, password = views.airflow
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_function("!window.location.pathname.includes('login')")
    page.goto(f"{url}dag_runs")
    page.get_by_text(f"{len(runs)} Dag Runs").wait_for()
    for dag_id, run_id, _ in runs:
        row = page.locator("tbody tr", has_text=run_id)
        row.wait_for()
        text = row.inner_text()
        assert dag_id in text and "Success" in text, text

    # the DPO: the web app lists every demo subject with its findings
    url, user, password = views.web
    findings = _demo_findings(demo_dir)
    assert findings, "the demo stored no subject findings"
    page.goto(f"{url}login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{url}subjects")
    for pseudonym, decisions in findings.items():
        row = page.locator("#subjects tbody tr", has_text=pseudonym)
        assert row.count() == 1, pseudonym
        assert row.locator(".badge").count() >= 1, row.inner_text()
        assert "not audited yet" not in row.inner_text()
        if "positive" in decisions:
            assert "evidence found" in row.inner_text(), row.inner_text()

    # stopping: SIGTERM ends the command and both servers
    views.proc.send_signal(signal.SIGTERM)
    assert views.proc.wait(timeout=60) == 0
    rest = views.proc.stdout.read()
    assert "stopped" in rest
    for u in (views.airflow[0], views.web[0]):
        with pytest.raises(httpx.HTTPError):
            httpx.get(u, timeout=2)
