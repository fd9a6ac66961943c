"""The `privacy_audit` DAG (thin: task bodies live in audit_lib.pipelines)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, TriggerRule, dag, task

from audit_lib.pipelines import (
    DAG_DEFAULTS,
    MODEL_TASK,
    REMOTE_RETRIES,
    REPORT_REQUESTS_ASSET,
    materialise,
    schedule_from_env,
)
from audit_lib.notifications import notify_audit_failure
from audit_lib.pipelines.shared_tasks import mark_run_failed_task

REPORT_REQUESTS = Asset(**REPORT_REQUESTS_ASSET)


@dag(
    dag_id="privacy_audit",
    schedule=schedule_from_env("privacy_audit", "@weekly"),
    max_active_runs=1,
    tags=["encoder-audit", "privacy", "idia", "encodermi"],
    **{**DAG_DEFAULTS, "default_args": {**DAG_DEFAULTS["default_args"],
                                         "on_failure_callback": notify_audit_failure}},
    params={
        "subject_ids": Param(None, type=["null", "array"], description="audit only these subjects"),
        "model_ids": Param(None, type=["null", "array"], description="audit only these models"),
        "n_candidates": Param(1000, type="integer", minimum=10, description="IDIA: names incl. decoys"),
        "tau": Param(1, type="integer", minimum=1, description="IDIA: published decision threshold"),
        "alpha": Param(0.05, type="number", exclusiveMinimum=0, maximum=0.5),
        "membership_rule": Param("T", enum=["T", "V", "S"], description="EncoderMI inference rule"),
        "n_views": Param(10, type="integer", minimum=2, description="EncoderMI: views per image"),
        "pairs_per_task": Param(1, type="integer", minimum=1,
                                description="subject x model pairs per mapped task (raise for thousands of subjects)"),
    },
)
def privacy_audit():
    """Privacy audit: does a registered model know a registered person, or their images?

    Runs weekly (and on demand). For every live data subject and every registered model:

    1. **registry_snapshot**: which subjects and models are audited in this run (ids only).
    2. **check_model_version** (per model, GPU queue): the model's version now (weights sha256,
       or an API's canary hash); a changed API is a new version, old findings stay with the old.
    3. **calibrate_null** (per model version, GPU queue): the membership null (reference
       non-members' views) embedded once, so pair tasks hit the query cache.
    4. **identity_inference** / **membership_inference** (mapped over subject x model pairs,
       `pairs_per_task` pairs per task instance (default 1), GPU queue): IDIA (Hintersdorf et al., JAIR 2024) where the model has a text tower;
       EncoderMI (Liu et al., CCS 2021) where the subject registered claimed images.
       Each stores its finding idempotently (a re-run writes no duplicate).
    5. **summarise_run**: counts per method and decision, evidence chain head; the run
       ends `succeeded`. When a task failed instead, **mark_run_failed** closes it as `failed`.
    6. **request_reports**: updates the `evidence_report_requests` asset when there are new
       positive findings (skipped when there are none), which triggers `evidence_reports`.

    Evidence goes to the evidence store (`AUDIT_DATABASE_URL`), never to Airflow's metadata
    database. Params narrow the run (`subject_ids`, `model_ids`) or change the methods' settings.
    """

    @task(execution_timeout=timedelta(minutes=5), doc_md=(
        "Reads the registry from the evidence store and opens this run's audit record. "
        "Returns subject and model ids only. **Failure** means the evidence store is "
        "unreachable or a `subject_ids`/`model_ids` param names an unknown or erased id."))
    def registry_snapshot() -> dict:
        from audit_lib.pipelines.context import current_run, params_fail_fast
        from audit_lib.pipelines.snapshot import snapshot_registry

        run_key, params = current_run()
        with params_fail_fast():
            return snapshot_registry(run_key, kind="privacy", config=params,
                                     subject_ids=params.get("subject_ids"), model_ids=params.get("model_ids"))

    @task(execution_timeout=timedelta(minutes=2), doc_md="The model ids of the snapshot (fan-out input).")
    def model_ids(snapshot: dict) -> list[int]:
        return [m["id"] for m in snapshot["models"]]

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=15), doc_md=(
        "Opens the model (checkpoint weights, or the API with its Airflow Connection) and "
        "establishes its version: weights sha256 or the canary hash. **Failure** names the "
        "model: missing or altered weights file, API unreachable, bad credentials, or an "
        "invalid answer. Retried with exponential backoff."))
    def check_model_version(model_id: int) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.versions import check_model_version as check

        run_key, _ = current_run()
        return check(model_id, run_key)

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=60), doc_md=(
        "Null calibration once per model version: embeds the views of the model's reference "
        "non-members (the membership null) through the query cache. **Failure**: an unreadable "
        "reference image (named) or a model/API error."))
    def calibrate_null(version: dict) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.privacy import calibrate_version

        run_key, params = current_run()
        return calibrate_version(version, run_key, params)

    @task(execution_timeout=timedelta(minutes=2), doc_md="Subject x model pairs for identity inference (models with text).")
    def plan_identity(snapshot: dict, versions: list[dict]) -> list[list[dict]]:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.privacy import DEFAULT_PARAMS, chunk_pairs, plan_identity_pairs

        _, params = current_run()
        size = params.get("pairs_per_task") or DEFAULT_PARAMS["pairs_per_task"]
        return chunk_pairs(plan_identity_pairs(snapshot, materialise(versions)), size)

    @task(execution_timeout=timedelta(minutes=2), doc_md=(
        "Subject x model pairs for membership inference (subjects with claimed images, models "
        "with reference non-members; models without them are named in the log)."))
    def plan_membership(snapshot: dict, versions: list[dict]) -> list[list[dict]]:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.privacy import DEFAULT_PARAMS, chunk_pairs, plan_membership_pairs

        _, params = current_run()
        size = params.get("pairs_per_task") or DEFAULT_PARAMS["pairs_per_task"]
        return chunk_pairs(plan_membership_pairs(snapshot, materialise(versions)), size)

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=30), doc_md=(
        "IDIA for one subject on one model: the subject's reference photos against their name "
        "and decoy names under 21 prompt templates; calibrated p-value against the decoys. "
        "Stores the finding (idempotent). **Failure**: too few photos, erased subject, model "
        "changed during the run, or an API error (retried)."))
    def identity_inference(pairs: list[dict]) -> list[dict]:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.privacy import inputs_fail_fast, run_chunk

        run_key, params = current_run()
        with inputs_fail_fast():
            return run_chunk("idia", pairs, run_key, params)

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=30), doc_md=(
        "EncoderMI for one subject's claimed images on one model: augmented-view similarity "
        "ranked against reference non-members; Mann-Whitney U and Holm per image. Stores the "
        "finding (idempotent). **Failure**: a claimed image that is also a reference or another refused "
        "input (at once, before any query), unreadable image, model changed, API error (retried)."))
    def membership_inference(pairs: list[dict]) -> list[dict]:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.privacy import inputs_fail_fast, run_chunk

        run_key, params = current_run()
        with inputs_fail_fast():
            return run_chunk("encoder_mi", pairs, run_key, params)

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(minutes=5), doc_md=(
        "Counts the run's findings per method and decision, marks the audit run finished and "
        "logs the evidence chain head. Runs when no pair failed (skipped branches are fine)."))
    def summarise_run() -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.summary import summarise_run as summarise

        run_key, _ = current_run()
        return summarise(run_key)

    @task(outlets=[REPORT_REQUESTS], execution_timeout=timedelta(minutes=5), doc_md=(
        "Finds positive findings of this run not yet covered by a report and updates the "
        "`evidence_report_requests` asset (which triggers `evidence_reports`). Skipped when "
        "there is nothing new."))
    def request_reports(summary: dict) -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException

        from audit_lib.pipelines.summary import new_positive_cases

        from audit_lib.notifications import notify_new_findings

        cases = new_positive_cases(summary["run_key"])
        if not cases:
            raise AirflowSkipException("no new positive findings: no report requested")
        notify_new_findings(summary["run_key"], cases)  # DPO and legal; pseudonyms only
        return cases

    snapshot = registry_snapshot()
    versions = check_model_version.expand(model_id=model_ids(snapshot))
    calibrated = calibrate_null.expand(version=versions)
    idia = identity_inference.expand(pairs=plan_identity(snapshot, calibrated))
    mi = membership_inference.expand(pairs=plan_membership(snapshot, calibrated))
    summary = summarise_run()
    [idia, mi] >> summary
    [snapshot, versions, calibrated, idia, mi] >> mark_run_failed_task()()
    request_reports(summary)


privacy_audit()
