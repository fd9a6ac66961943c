"""The `ownership_audit` DAG (thin: task bodies live in audit_lib.pipelines)."""

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
    dag_id="ownership_audit",
    schedule=schedule_from_env("ownership_audit", "@daily"),
    max_active_runs=1,
    tags=["encoder-audit", "ownership", "awencoder", "metav"],
    **{**DAG_DEFAULTS, "default_args": {**DAG_DEFAULTS["default_args"],
                                         "on_failure_callback": notify_audit_failure}},
    params={
        "model_ids": Param(None, type=["null", "array"], description="only these owned/suspect models"),
        "alpha": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=0.5,
                       description="override the alpha committed at enrolment (reported in the finding)"),
        "theft_budgets": Param("128,256", type="string",
                               description="owned APIs: StolenEncoder query budgets (counts, or % with a known training-set size)"),
        "theft_epochs": Param(12, type="integer", minimum=1, description="owned APIs: epochs of each stolen copy"),
        "theft_image_size": Param(None, type=["null", "integer"], minimum=8, description=(
            "owned APIs: input size in pixels when the adapter does not state it")),
    },
)
def ownership_audit():
    """Ownership audit: is a suspect model a copy of one of our owned models?

    Runs daily (and on demand). For every owned model that has been enrolled (watermark and
    fingerprint artefacts committed by `model_enrolment`) and every suspect model:

    1. **registry_snapshot**: owned-and-enrolled and suspect model ids.
    2. **check_model_version** (per suspect, GPU queue): the suspect's version now (an API's
       canary hash is re-taken every run).
    3. **watermark_check** / **fingerprint_check** (mapped over owned x suspect pairs, GPU
       queue): AWEncoder verification against the committed key and perturbation, and the
       MetaV meta-verifier on the committed fingerprint inputs; empirical p-values against
       the committed nulls. Findings stored idempotently under `suspect:SUSPECT` with the owned
       model in their parameters; each check runs only for owned models enrolled for it.
    4. **theft_risk** (per owned API, GPU queue): StolenEncoder through the owner's own
       deployed API at the given budgets, with the model's registered image sets and
       reference models (`audit_lib.ownership.theft.run_theft_risk`), in the sub-run
       `RUN/theft/MODEL`.
    5. **summarise_run** and **request_reports** as in `privacy_audit`.

    A suspect may be a local checkpoint or an API (queries go through its adapter, counted
    against its budget and recorded as evidence).
    """

    @task(execution_timeout=timedelta(minutes=5), doc_md=(
        "Reads owned (enrolled) and suspect models from the evidence store and opens this "
        "run's audit record. **Failure**: store unreachable or an unknown id in `model_ids`."))
    def registry_snapshot() -> dict:
        from audit_lib.pipelines.context import current_run, params_fail_fast
        from audit_lib.pipelines.snapshot import snapshot_registry

        run_key, params = current_run()
        with params_fail_fast():
            return snapshot_registry(run_key, kind="ownership", config=params, model_ids=params.get("model_ids"))

    @task(execution_timeout=timedelta(minutes=2), doc_md="Suspect model ids (fan-out input); none when nothing is enrolled.")
    def suspect_ids(snapshot: dict) -> list[int]:
        if not snapshot["owned_enrolled"]:
            return []
        return [m["id"] for m in snapshot["models"] if m["role"] == "suspect"]

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=15), doc_md=(
        "Establishes the suspect's version (weights sha256 or API canary hash). **Failure** "
        "names the model: weights missing or altered, API unreachable or answering badly."))
    def check_model_version(model_id: int) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.versions import check_model_version as check

        run_key, _ = current_run()
        return check(model_id, run_key)

    @task(execution_timeout=timedelta(minutes=2), doc_md=(
        "Owned x suspect pairs for the watermark check: owned models with a committed "
        "watermark artefact, with the suspect's checked version."))
    def plan_watermark(snapshot: dict, versions: list[dict]) -> list[dict]:
        from audit_lib.pipelines.ownership import plan_ownership_pairs

        return plan_ownership_pairs(snapshot, materialise(versions), "watermark")

    @task(execution_timeout=timedelta(minutes=2), doc_md=(
        "Owned x suspect pairs for the fingerprint check: owned models with a committed "
        "fingerprint artefact, with the suspect's checked version."))
    def plan_fingerprint(snapshot: dict, versions: list[dict]) -> list[dict]:
        from audit_lib.pipelines.ownership import plan_ownership_pairs

        return plan_ownership_pairs(snapshot, materialise(versions), "fingerprint")

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=30), doc_md=(
        "AWEncoder watermark verification of one suspect against one owned model's committed "
        "key. Stores the finding (idempotent). **Failure**: no watermark artefact (enrol the "
        "model), suspect changed during the run, API error (retried)."))
    def watermark_check(pair: dict) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.ownership import check_pair

        run_key, params = current_run()
        return check_pair("watermark", pair, run_key, params)

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(minutes=30), doc_md=(
        "MetaV fingerprint verification: the suspect's outputs on the committed fingerprint "
        "inputs, scored by the meta-verifier, ranked against held-out negatives. Stores the "
        "finding (idempotent). **Failure**: no fingerprint artefact, suspect changed, API error."))
    def fingerprint_check(pair: dict) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.ownership import check_pair

        run_key, params = current_run()
        return check_pair("fingerprint", pair, run_key, params)

    @task(execution_timeout=timedelta(minutes=2), doc_md="Owned models served as APIs (fan-out input of theft_risk).")
    def owned_apis(snapshot: dict) -> list[int]:
        from audit_lib.pipelines.ownership import owned_api_ids

        return owned_api_ids(snapshot)

    @task(**MODEL_TASK, **REMOTE_RETRIES, execution_timeout=timedelta(hours=4), doc_md=(
        "StolenEncoder theft risk of one owned API through the API itself (its registered public "
        "and downstream images). Stores the `theft` finding in the sub-run `RUN/theft/MODEL`. "
        "**Failure**: no registered image sets (register them), budget exhausted, API error (retried)."))
    def theft_risk(model_id: int) -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.ownership import theft_risk_for

        run_key, params = current_run()
        return theft_risk_for(model_id, run_key, params)

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(minutes=5),
          doc_md="Counts the run's findings, marks the run finished, logs the chain head.")
    def summarise_run() -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.summary import summarise_run as summarise

        run_key, _ = current_run()
        return summarise(run_key)

    @task(outlets=[REPORT_REQUESTS], execution_timeout=timedelta(minutes=5), doc_md=(
        "Updates the `evidence_report_requests` asset when the run has new positive "
        "findings; skipped otherwise."))
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
    versions = check_model_version.expand(model_id=suspect_ids(snapshot))
    checks = [watermark_check.expand(pair=plan_watermark(snapshot, versions)),
              fingerprint_check.expand(pair=plan_fingerprint(snapshot, versions)),
              theft_risk.expand(model_id=owned_apis(snapshot))]
    summary = summarise_run()
    checks >> summary
    [snapshot, versions, *checks] >> mark_run_failed_task()()
    request_reports(summary)


ownership_audit()
