"""What a task body needs from Airflow's context, read once: the run key and the params."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from audit_lib.pipelines import run_key_for


def run_params(ctx: Any) -> dict[str, Any]:
    """The DAG run's params: the DAG's declared defaults overlaid with this run's conf.

    Not the task's ``params``: when several runs of one DAG object run in one process
    (``dag.test()``, the embedded demo, ``encoder-audit run dag``), Airflow writes a run's
    conf into the params of the tasks it ran, so a later run that leaves a param out would
    get the earlier run's value instead of the default."""
    dag, dag_run = ctx["dag"], ctx["dag_run"]
    declared = dag.params
    defaults = {k: declared.get_param(k).value for k in declared.keys() if declared.get_param(k).has_value}
    return {**defaults, **dict(getattr(dag_run, "conf", None) or {})}


def current_run() -> tuple[str, dict[str, Any]]:
    """(run key, params) of the running task's DAG run."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    return run_key_for(dag_run.dag_id, dag_run.run_id), run_params(ctx)


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
