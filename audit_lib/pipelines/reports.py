"""Task body of the evidence_reports DAG: render the PDF for each requested case."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from audit_lib.store import session_scope

log = logging.getLogger(__name__)


def reports_dir() -> Path:
    from audit_lib.config import get_settings

    return get_settings().data_dir / "reports"


def render_cases(cases: Sequence[str], *, out_dir: Path | None = None,
                 db_url: str | None = None) -> list[str]:
    """Render one PDF per case with ``audit_lib.reports.render_report``; returns the paths.

    Each case is its own transaction: one bad case fails the task after the others were
    rendered, naming it, and a retry renders only what is still missing (the report
    module stores one Report row per case).
    """
    from audit_lib.reports import render_report

    out_dir = Path(out_dir or reports_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, failed = [], []
    for case in cases:
        try:
            with session_scope(db_url) as session:
                path = render_report(session, case, out_dir)
            paths.append(str(path))
            log.info("case %s: report %s", case, path)
        except Exception as exc:  # noqa: BLE001 - the task fails below, naming every case
            log.exception("case %s: report failed", case)
            failed.append(f"{case} ({type(exc).__name__}: {exc})")
    if failed:
        raise RuntimeError(f"{len(failed)} report(s) failed: {'; '.join(failed)}")
    return paths
