"""Task bodies of the Airflow pipelines.

The DAG files in ``dags/`` stay thin: each task imports one function from here inside its
body and passes ids only. Every function here opens its own short transaction on the
evidence store (``AUDIT_DATABASE_URL``), never on Airflow's metadata database, and is
idempotent: a retried or re-run task writes no duplicate finding.

This package's ``__init__`` is imported at DAG parse time, so it holds only constants.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

GPU_QUEUE = os.environ.get("AUDIT_GPU_QUEUE", "gpu")
"""Celery queue of the GPU workers (model work)."""
GPU_POOL = "gpu"
"""Airflow pool bounding concurrent model work: one slot per GPU."""
CPU_QUEUE = os.environ.get("AUDIT_CPU_QUEUE", "default")
"""Celery queue of the CPU workers (registry, planning, reports)."""

MODEL_TASK = {"queue": GPU_QUEUE, "pool": GPU_POOL}
"""Keyword arguments for a task that runs a model."""

# Remote APIs fail transiently (429, 5xx, timeouts): retry with exponential backoff.
REMOTE_RETRIES: dict[str, Any] = {
    "retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=15),
}
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "encoder-audit", "retries": 1, "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(minutes=30), "queue": CPU_QUEUE,
}


DAG_DEFAULTS: dict[str, Any] = {
    "start_date": datetime(2025, 1, 1, tzinfo=timezone.utc), "catchup": False, "default_args": DEFAULT_ARGS,
}
"""Keyword arguments every DAG of the project shares."""


def run_key_for(dag_id: str, run_id: str) -> str:
    """The audit run's key in the evidence store for one DAG run: ``dag_id/run_id``."""
    return f"{dag_id}/{run_id}"

REPORT_REQUESTS_ASSET = {"name": "evidence_report_requests",
                         "uri": "encoder-audit://evidence/report-requests"}
"""The Asset the audits update when they find new positive cases; evidence_reports runs on it."""


def materialise(values: Any) -> list[Any]:
    """A mapped task's collected XCom values as a list, read by index up to its length
    (``list()`` on Airflow's lazy sequence probes one past the end, which the task SDK
    logs as an error although nothing is wrong)."""
    return [values[i] for i in range(len(values))]


def schedule_from_env(dag_id: str, default: str) -> str | None:
    """A DAG's schedule: ``AUDIT_<DAG_ID>_SCHEDULE`` (a cron expression or preset, or
    ``none`` for trigger-only) when set, else ``default``. Lets an operator (or a test
    deployment) change the cadence without editing the DAG file."""
    value = os.environ.get(f"AUDIT_{dag_id.upper()}_SCHEDULE", default).strip()
    return None if value.lower() == "none" else value
