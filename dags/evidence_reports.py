"""The `evidence_reports` DAG (thin: task bodies live in audit_lib.pipelines)."""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, dag, task

from audit_lib.pipelines import DAG_DEFAULTS, REPORT_REQUESTS_ASSET


def release_approvers() -> list[dict[str, str]]:
    """The Airflow users who may answer the review (``AUDIT_RELEASE_APPROVERS``: comma-
    separated user ids; empty leaves it to whoever may answer HITL steps of this DAG)."""
    ids = [u.strip() for u in os.environ.get("AUDIT_RELEASE_APPROVERS", "").split(",") if u.strip()]
    return [{"id": u, "name": u} for u in ids]


class ReleaseReview(HITLOperator):
    """The review step: who may answer is read when it runs (``AUDIT_RELEASE_APPROVERS``),
    so a change of the release role needs no new DAG version."""

    def execute(self, context):  # noqa: ANN001, ANN201 - HITLOperator's signature
        self.assigned_users = release_approvers() or None
        return super().execute(context)


def review_body(drafts: object) -> str:
    """Jinja filter: the review form's text (imports the pipeline module at run time only)."""
    from audit_lib.pipelines.reports import review_body as body

    return body(drafts or [])  # type: ignore[arg-type]

REPORT_REQUESTS = Asset(**REPORT_REQUESTS_ASSET)


@dag(
    dag_id="evidence_reports",
    schedule=[REPORT_REQUESTS],
    tags=["encoder-audit", "reports"],
    **DAG_DEFAULTS,
    user_defined_filters={"review_body": review_body},
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

    Each PDF is a **draft** until a person approves it: the `review` step (Airflow's
    human-in-the-loop `HITLOperator`, options Approve / Reject and a comment) waits in the
    `awaiting_input` state, holding no worker slot, until someone answers it in the UI's
    Required Actions (or the REST API). Only the users in `AUDIT_RELEASE_APPROVERS` may
    answer when it is set. `decide` then releases (renders the approval block onto the
    last page, signs, records an `approved` row in `report_decisions`, e-mails the DPO and
    legal) or records the rejection (the draft is kept, never signed, never offered). No
    answer within 7 days fails `review`; the drafts stay unreleased.
    """

    @task(execution_timeout=timedelta(minutes=5), doc_md=(
        "The cases to render: the `cases` param, else every case with a positive finding not "
        "covered by a stored report. Logs which audit runs triggered this run. **Failure**: a "
        "malformed case id (named) or the evidence store unreachable."))
    def cases_to_render() -> list[str]:
        import logging
        import re

        from airflow.sdk import get_current_context

        from audit_lib.pipelines.context import run_params
        from audit_lib.pipelines.summary import pending_cases

        ctx = get_current_context()
        events = ctx.get("triggering_asset_events") or {}
        n_events = sum(len(v) for v in events.values()) if hasattr(events, "values") else 0
        requested = run_params(ctx).get("cases")
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
    def render(cases: list[str]) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        from audit_lib.pipelines.reports import drafts_for, render_cases

        if not cases:
            raise AirflowSkipException("no case to render: nothing to review")
        return drafts_for(render_cases(cases), cases)

    review = ReleaseReview(
        task_id="review",
        subject="Release evidence report(s) of run {{ run_id }}?",
        body="{{ task_instance.xcom_pull(task_ids='render') | review_body }}",
        options=["Approve", "Reject"],
        params={"comment": Param("", type="string", description="why (printed on the released report)")},
        response_timeout=timedelta(days=7),
        execution_timeout=timedelta(minutes=5),
        doc_md=("Waits (no worker slot) for a person with the release role to approve or reject "
                "the drafts in Required Actions. **Failure**: no answer within 7 days."),
    )

    @task(execution_timeout=timedelta(minutes=30), retries=2, doc_md=(
        "Approve: renders each released version with the approval block, signs it, records "
        "the decision and e-mails the DPO and legal. Reject: records the rejection; nothing "
        "is signed or offered. **Failure** names the draft; a retry skips decided drafts."))
    def decide(drafts: list[dict], response: dict) -> list[dict]:
        from airflow.sdk import get_current_context

        from audit_lib.pipelines.reports import decide_drafts

        ctx = get_current_context()
        return decide_drafts(drafts, response, dag_run=f"{ctx['dag'].dag_id}/{ctx['run_id']}")

    drafts = render(cases_to_render())
    drafts >> review
    decide(drafts, review.output)


evidence_reports()
