"""Regenerates the sample report pages under docs/ (what legal receives).

Off by default; run ``AUDIT_REPORT_DOCS=1 pytest tests/test_report_docs.py`` after changing
the templates, then look at docs/report-*.png before committing them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from audit_lib.config import PROJECT_ROOT
from audit_lib.reports import render_report
from audit_lib.store import session_scope

DOCS = PROJECT_ROOT / "docs"
PAGES = {"subject": (1, 2, 3), "ownership": (1, 4), "run": (1,)}


@pytest.mark.skipif(os.environ.get("AUDIT_REPORT_DOCS") != "1", reason="set AUDIT_REPORT_DOCS=1 to redraw docs/")
def test_redraw_sample_pages(report_world, db_url, tmp_path):
    if not db_url.startswith("sqlite"):
        pytest.skip("the samples are drawn once, from SQLite")
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    w = report_world
    when = datetime(2026, 11, 23, 9, 30, tzinfo=timezone.utc)
    cases = {"subject": f"subject:{w['subject_id']}",
             "ownership": f"ownership:{w['owned_id']}:{w['suspect_id']}",
             "run": f"run:{w['privacy'].run_key}"}
    for kind, case in cases.items():
        with session_scope(db_url) as s:
            pdf = render_report(s, case, tmp_path, now=when)
        for page in PAGES[kind]:
            out = DOCS / f"report-{kind}-p{page}"
            subprocess.run(["pdftoppm", "-png", "-r", "100", "-f", str(page), "-l", str(page),
                            "-singlefile", str(pdf), str(out)], check=True, timeout=60)
            assert out.with_suffix(".png").stat().st_size > 10_000
