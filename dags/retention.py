"""The `retention` DAG (thin: the task body lives in audit_lib.pipelines.retention)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from audit_lib.pipelines import DAG_DEFAULTS


@dag(dag_id="retention", schedule="@daily", tags=["encoder-audit", "retention"], **DAG_DEFAULTS)
def retention():
    """Retention clean-up (GDPR Art. 5(1)(e)): once a day, remove what has outlived its
    retention period, as the settings give it per kind of record
    (`AUDIT_RETENTION_CACHE_DAYS`, `AUDIT_RETENTION_EVIDENCE_DAYS`,
    `AUDIT_RETENTION_REPORTS_DAYS`, `AUDIT_RETENTION_SUBJECT_IMAGES_DAYS`; 0 keeps that
    kind indefinitely): old query-cache answers are deleted, old audit runs are purged as a
    whole (recorded in `purged_runs` first), old reports are withdrawn (file deleted,
    tombstone kept) and old subject photos are removed. Whatever an active legal hold
    covers (`encoder-audit hold set CASE`) stays. Runs as the owner database role
    (`AUDIT_MIGRATION_DATABASE_URL`), in one transaction; the same clean-up runs by hand
    with `encoder-audit retention run`.
    """

    @task(execution_timeout=timedelta(hours=1), doc_md=(
        "Apply every retention period once and log the counts (removed, and kept for legal "
        "holds). **Failure**: the evidence store unreachable, or the role lacks the right to "
        "delete evidence (set `AUDIT_MIGRATION_DATABASE_URL` to the owner role); nothing is "
        "removed then."))
    def enforce_retention() -> dict[str, int]:
        from audit_lib.pipelines.retention import run_retention

        return run_retention()

    enforce_retention()


retention()
