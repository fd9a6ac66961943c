"""What a task body needs from Airflow's context, read once: the run key and the params."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from audit_lib.pipelines import run_key_for


def current_run() -> tuple[str, dict[str, Any]]:
    """(run key, params) of the running task's DAG run."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    return run_key_for(dag_run.dag_id, dag_run.run_id), dict(ctx.get("params") or {})


@contextlib.contextmanager
def params_fail_fast() -> Iterator[None]:
    """A ``ValueError`` about the run's params (an unknown id, a model of the wrong role) is
    the operator's mistake, not a transient fault: fail the task at once with the same
    message instead of retrying it after the retry delay."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from exc
