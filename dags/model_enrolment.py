"""The `model_enrolment` DAG (thin: task bodies live in audit_lib.pipelines)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, TriggerRule, dag, task

from audit_lib.pipelines import DAG_DEFAULTS, MODEL_TASK
from audit_lib.pipelines.shared_tasks import mark_run_failed_task

_STEP_DOC = ("Runs the `{step}` enrolment step for the owned model and commits its artefact. "
             "**Failure** names the step and why (for example: not part of this build, "
             "training diverged, out of GPU memory); downstream steps do not run.")


@dag(
    dag_id="model_enrolment",
    schedule=None,
    tags=["encoder-audit", "ownership", "enrolment"],
    **DAG_DEFAULTS,
    params={
        "model_id": Param(type="integer", minimum=1, description="the owned model to enrol"),
        "zoo_profile": Param("ci", enum=["ci", "demo", "full", "smoke"],
                             description="reference zoo: independent encoders and images"),
        "suspect_zoo": Param("ci", enum=["ci", "small", "full"], description="fingerprint suspect zoo size"),
        "n_fingerprints": Param(16, type="integer", minimum=1, maximum=100,
                                description="MetaV: fingerprint inputs = queries per verification"),
        "fingerprint_steps": Param(60, type="integer", minimum=1, description="MetaV: training steps"),
        "watermark_controls": Param(39, type="integer", minimum=1,
                                    description="AWEncoder: control perturbations in the null"),
        "watermark_alpha": Param(0.01, type="number", exclusiveMinimum=0, maximum=0.5,
                                 description="AWEncoder: significance level committed with the test"),
        "fingerprint_alpha": Param(0.01, type="number", exclusiveMinimum=0, maximum=0.5,
                                   description="MetaV: significance level committed with the test"),
        "watermark_steps": Param(None, type=["null", "integer"], minimum=1,
                                 description="AWEncoder: fine-tuning steps (default: the recipe's)"),
        "watermark_published": Param(False, type="boolean", description=(
            "AWEncoder: the paper's perturbation, optimised on the owned encoder alone (default: also on shadow "
            "copies stolen from the owner's images, sparing independent encoders, so stolen copies carry it)")),
        "null_min": Param(3, type="integer", minimum=1, description=(
            "registered data only: independent encoders in the null; registered reference models "
            "first, the rest trained by the enrolment on the owner's public images")),
        "null_epochs": Param(3, type="integer", minimum=1,
                             description="SimCLR epochs of the independents the enrolment trains"),
        "theft_train_size": Param(None, type=["null", "integer"], minimum=1, description=(
            "registered data: the model's training-set size (theft budgets given as % need it)")),
        "theft_image_size": Param(None, type=["null", "integer"], minimum=8, description=(
            "registered data: the model's input size in pixels when its preprocessing does not state it")),
        "skip_steps": Param([], type="array", description='steps not to run this time, e.g. ["theft_risk"]'),
    },
)
def model_enrolment():
    """Model enrolment: prepare an owned model for ownership audits.

    Triggered with params `{"model_id": ID}` (an owned, registered checkpoint of an
    architecture we can fine-tune). A model with registered image sets (`encoder-audit models
    data add`) is enrolled with them, and its independence null is the registered reference
    models topped up to `null_min` with independents trained on its public images; any other
    owned model with the reference zoo's data and independent encoders. Steps, each a
    library function that commits its artefact (hashed and timestamped) to the evidence store
    before any suspect is queried:

    1. **validate_model**: the model exists, is an owned checkpoint, and can be fine-tuned.
    2. **watermark** (GPU): AWEncoder (Zhang et al., arXiv 2208.03948): key, perturbation,
       fine-tuned watermarked weights, registered as the owned model `NAME-watermarked`
       (the copy to deploy), which carries the `watermark` artefact.
    3. **zoo** (GPU): the suspect zoo: derivatives of the owned model (fine-tune, prune,
       quantise, distil, StolenEncoder theft) and independent encoders' variants, split
       train/validation/test (cached by config hash).
    4. **fingerprint** (GPU): MetaV (Pan et al., KDD 2022) fingerprint inputs and
       meta-verifier, calibrated on held-out negatives, committed as the `fingerprint` artefact.
    5. **calibration** (GPU queue, fast): re-loads both committed artefacts (hash and
       commitment checks) and fails when a null is missing.
    6. **theft_risk** (GPU): StolenEncoder (Liu et al., CCS 2022) theft-risk curve over query
       budgets through the reference server, stored as a `theft` finding.

    Training results are cached by config hash (the ownership tests share the caches), so a
    re-enrolment of the same weights with the same settings only re-commits.
    """

    @task(execution_timeout=timedelta(minutes=5), doc_md=(
        "Checks `params.model_id`: registered, role owned, a checkpoint we can fine-tune. "
        "**Failure** says which."))
    def validate_model() -> int:
        from audit_lib.pipelines.context import current_run, params_fail_fast
        from audit_lib.pipelines.enrolment import validate_owned

        _, params = current_run()
        with params_fail_fast():
            return validate_owned(params.get("model_id"))

    def step_task(step: str, hours: int):
        @task(task_id=step, **MODEL_TASK, retries=0, execution_timeout=timedelta(hours=hours),
              doc_md=_STEP_DOC.format(step=step))
        def run(model_id: int) -> dict:
            from audit_lib.pipelines.context import current_run
            from audit_lib.pipelines.enrolment import run_step

            run_key, params = current_run()
            if step in (params.get("skip_steps") or []):
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"step {step} skipped: params.skip_steps")
            return run_step(step, model_id, run_key, params)

        return run

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(minutes=5), doc_md=(
        "Closes the enrolment's audit runs (e.g. the theft-risk run `RUN/theft`) as `succeeded`."))
    def close_run() -> dict:
        from audit_lib.pipelines.context import current_run
        from audit_lib.pipelines.summary import close_runs

        run_key, _ = current_run()
        return close_runs(run_key)

    model_id = validate_model()
    watermark = step_task("watermark", 4)(model_id)
    zoo = step_task("zoo", 8)(model_id)
    fingerprint = step_task("fingerprint", 4)(model_id)
    calibration = step_task("calibration", 2)(model_id)
    theft = step_task("theft_risk", 8)(model_id)
    zoo >> fingerprint
    [watermark, fingerprint] >> calibration
    watermark >> theft
    steps = [model_id, watermark, zoo, fingerprint, calibration, theft]
    steps >> close_run()
    steps >> mark_run_failed_task()()


model_enrolment()
