"""Tasks that several DAGs share, built here once (imported at DAG parse time: nothing
heavy at module level)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def mark_run_failed_task() -> Any:
    """The failure path of a DAG: a task that runs only when a task of the run failed and
    marks the audit run and its sub-runs ``failed`` with their finish time (the findings
    stored so far stay); skipped when every task succeeded."""
    from airflow.sdk import TriggerRule, task

    @task(task_id="mark_run_failed", trigger_rule=TriggerRule.ONE_FAILED,
          execution_timeout=timedelta(minutes=5), doc_md=(
              "Runs only when a task of the run failed: marks the audit run and its sub-runs "
              "`failed` with their finish time (the findings stored so far stay). Skipped when "
              "every task succeeded."))
    def mark_run_failed() -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.summary import fail_run

        run_key, _ = current_run()
        return fail_run(run_key)

    return mark_run_failed
