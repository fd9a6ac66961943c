"""The `evidence_reports` DAG (thin: task bodies live in audit_lib.pipelines)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

from audit_lib.pipelines import DAG_DEFAULTS, REPORT_REQUESTS_ASSET

REPORT_REQUESTS = Asset(**REPORT_REQUESTS_ASSET)


@dag(
    dag_id="evidence_reports",
    schedule=[REPORT_REQUESTS],
    tags=["encoder-audit", "reports"],
    **DAG_DEFAULTS,
    params={"cases": Param(None, type=["null", "array"],
                           description='cases to render, e.g. ["subject:12", "ownership:3:7"]')},
)
def evidence_reports():
    """Evidence reports: render the PDF evidence report for each case that needs one.

    Triggered by the `evidence_report_requests` asset (updated by `privacy_audit` and
    `ownership_audit` when they find new positive findings) and on demand: trigger it with
    params `{"cases": ["subject:12", "ownership:3:7", "run:privacy_audit/manual__…"]}` to
    render given cases. Without cases it renders every case with a positive finding that
    no stored report covers yet. PDFs go to `{AUDIT_DATA_DIR}/reports`; each is recorded in
    the evidence store's `reports` table with its sha256 and the evidence chain head.
    """

    @task(execution_timeout=timedelta(minutes=5), doc_md=(
        "The cases to render: the `cases` param, else every case with a positive finding not "
        "covered by a stored report. Logs which audit runs triggered this run. **Failure**: a "
        "malformed case id (named) or the evidence store unreachable."))
    def cases_to_render() -> list[str]:
        import logging
        import re

        from airflow.sdk import get_current_context

        from audit_lib.pipelines.summary import pending_cases

        ctx = get_current_context()
        events = ctx.get("triggering_asset_events") or {}
        n_events = sum(len(v) for v in events.values()) if hasattr(events, "values") else 0
        requested = (ctx.get("params") or {}).get("cases")
        if requested:
            bad = [c for c in requested if not re.fullmatch(r"subject:\d+|ownership:\d+:\d+|run:\S+", str(c))]
            if bad:
                raise ValueError(f"cases {bad}: expected subject:ID, ownership:OWNED:SUSPECT or run:RUN_KEY")
            cases = [str(c) for c in requested]
        else:
            cases = pending_cases()
        logging.getLogger(__name__).info("%d asset event(s) triggered this run; rendering %d case(s): %s",
                                         n_events, len(cases), ", ".join(cases) or "none")
        return cases

    @task(execution_timeout=timedelta(minutes=30), retries=2, doc_md=(
        "Renders each case's PDF (WeasyPrint) and records it with its sha256 and chain head. "
        "**Failure** names the case that could not be rendered; a retry renders the rest."))
    def render(cases: list[str]) -> list[str]:
        from audit_lib.pipelines.reports import render_cases

        return render_cases(cases)

    render(cases_to_render())


evidence_reports()
