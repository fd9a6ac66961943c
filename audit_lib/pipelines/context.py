"""What a task body needs from Airflow's context, read once: the run key and the params."""

from __future__ import annotations

from typing import Any

from audit_lib.pipelines import run_key_for


def current_run() -> tuple[str, dict[str, Any]]:
    """(run key, params) of the running task's DAG run."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    return run_key_for(dag_run.dag_id, dag_run.run_id), dict(ctx.get("params") or {})
