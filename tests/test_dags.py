"""The DAGs: they import, parse fast, stay thin, route model work to the GPU queue and
pool, and are operable (docs, timeouts, retries). Plus dag.test() on an empty registry,
on SQLite and PostgreSQL evidence stores."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from audit_lib.airflow_env import DAGS_FOLDER

pytest.importorskip("airflow", reason="apache-airflow is not installed")

DAG_IDS = {"privacy_audit", "ownership_audit", "model_enrolment", "evidence_reports", "retention"}
MODEL_TASKS = {
    "privacy_audit": {"check_model_version", "calibrate_null", "identity_inference", "membership_inference"},
    "ownership_audit": {"check_model_version", "watermark_check", "fingerprint_check", "theft_risk"},
    "model_enrolment": {"watermark", "zoo", "fingerprint", "calibration", "theft_risk"},
    "evidence_reports": set(),
    "retention": set(),
}
# Airflow itself imports SQLAlchemy; our DAG files must not reach the store, models or PDFs.
HEAVY = ("torch", "open_clip", "torchvision", "weasyprint", "matplotlib", "audit_lib.store",
         "audit_lib.evidence", "audit_lib.registry", "audit_lib.encoders")


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS


def test_each_dag_file_parses_fast_and_imports_nothing_heavy(airflow_home):
    """Parse every file in a fresh interpreter (as the dag-processor does, with airflow
    already imported): under 1 s each, and no torch/open_clip/evidence store at module level."""
    code = f"""
import json, sys, time
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
out = {{}}
for f in sorted(Path({str(DAGS_FOLDER)!r}).glob("*.py")):
    t = time.perf_counter()
    bag = DagBag(dag_folder=str(f))
    out[f.name] = {{"s": time.perf_counter() - t, "errors": len(bag.import_errors), "dags": list(bag.dags)}}
out["heavy"] = [m for m in {HEAVY!r} if m in sys.modules]
print("RESULT" + json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result.pop("heavy") == []
    assert {f for f in result} == {f"{d}.py" for d in DAG_IDS}
    for name, r in result.items():
        assert r["errors"] == 0 and r["dags"] == [name.removesuffix(".py")], (name, r)
        assert r["s"] < 1.0, f"{name} took {r['s']:.2f} s to parse"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_is_operable(airflow_dags, dag_id):
    from datetime import timezone

    dag = airflow_dags[dag_id]
    assert dag.catchup is False
    assert dag.start_date.utcoffset() == timedelta(0) and dag.start_date.tzinfo is not None
    assert "encoder-audit" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200, "the DAG docstring is its documentation"
    for t in dag.tasks:
        assert t.doc_md and len(t.doc_md) > 20, f"{dag_id}.{t.task_id} has no doc_md"
        assert t.execution_timeout is not None and t.execution_timeout <= timedelta(hours=8)
        if t.task_id in MODEL_TASKS[dag_id]:
            assert (t.queue, t.pool) == ("gpu", "gpu"), f"{t.task_id} is model work"
        else:
            assert t.queue == "default" and t.pool != "gpu", f"{t.task_id} is CPU work"
    del timezone


def test_schedules_and_asset_wiring(airflow_dags):
    from airflow.sdk import Asset

    assert airflow_dags["privacy_audit"].schedule == "@weekly"
    assert airflow_dags["ownership_audit"].schedule == "@daily"
    assert airflow_dags["model_enrolment"].schedule is None
    outlets = {dag_id: [o for t in airflow_dags[dag_id].tasks for o in t.outlets]
               for dag_id in ("privacy_audit", "ownership_audit")}
    for dag_id, assets in outlets.items():
        assert [a.name for a in assets if isinstance(a, Asset)] == ["evidence_report_requests"], dag_id
    assert "evidence_report_requests" in str(airflow_dags["evidence_reports"].timetable.asset_condition)


def test_pair_tasks_are_mapped_and_remote_work_retries_with_backoff(airflow_dags):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    privacy = airflow_dags["privacy_audit"]
    for tid in ("check_model_version", "calibrate_null", "identity_inference", "membership_inference"):
        t = privacy.get_task(tid)
        assert isinstance(t, MappedOperator), f"{tid} should fan out with .expand()"
        assert t.retries >= 3 and t.retry_exponential_backoff, tid
    own = airflow_dags["ownership_audit"]
    assert isinstance(own.get_task("watermark_check"), MappedOperator)
    assert privacy.get_task("summarise_run").trigger_rule == "none_failed"


def test_gpu_pool_exists(airflow_home):
    from airflow.models.pool import Pool

    from audit_lib.airflow_env import gpu_pool_slots

    pool = Pool.get_pool("gpu")
    assert pool is not None and pool.slots == gpu_pool_slots() >= 1


def _run_dag(airflow_dags, dag_id, conf=None):
    dr = airflow_dags[dag_id].test(run_conf=conf)
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}
    return dr, states


def _tries(dr, task_id):  # noqa: ANN001, ANN202
    return next(ti.try_number for ti in dr.get_task_instances() if ti.task_id == task_id)


def test_privacy_audit_on_an_empty_registry_succeeds(airflow_dags, db_url):
    """End to end with no subjects or models: every fan-out is empty and skipped, the run
    is recorded and finished in the evidence store (SQLite and PostgreSQL)."""
    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun

    dr, states = _run_dag(airflow_dags, "privacy_audit")
    assert str(dr.state) == "success", states
    assert states[("summarise_run", -1)] == "success"
    assert states[("identity_inference", -1)] == "skipped"
    assert states[("request_reports", -1)] == "skipped"
    with session_scope() as s:
        runs = list(s.scalars(select(AuditRun)))
    assert [(r.run_key, r.kind, r.status) for r in runs] == [
        (f"privacy_audit/{dr.run_id}", "privacy", "succeeded")]


def test_unknown_subject_id_fails_the_snapshot_naming_it(airflow_dags, sqlite_db_url):
    dr, states = _run_dag(airflow_dags, "privacy_audit", {"subject_ids": [424242]})
    assert str(dr.state) == "failed"
    assert states[("registry_snapshot", -1)] == "failed"
    assert _tries(dr, "registry_snapshot") == 1  # an operator's mistake is not retried


def test_enrolment_refuses_a_model_that_is_not_registered(airflow_dags, sqlite_db_url):
    dr, states = _run_dag(airflow_dags, "model_enrolment", {"model_id": 999})
    assert str(dr.state) == "failed"
    assert states[("validate_model", -1)] == "failed"
    assert _tries(dr, "validate_model") == 1
    assert states[("watermark", -1)] == "upstream_failed"


def test_schedule_can_be_changed_by_the_operator(monkeypatch):
    from audit_lib.pipelines import schedule_from_env

    assert schedule_from_env("privacy_audit", "@weekly") == "@weekly"
    monkeypatch.setenv("AUDIT_PRIVACY_AUDIT_SCHEDULE", "0 3 * * 1")
    assert schedule_from_env("privacy_audit", "@weekly") == "0 3 * * 1"
    monkeypatch.setenv("AUDIT_PRIVACY_AUDIT_SCHEDULE", "none")
    assert schedule_from_env("privacy_audit", "@weekly") is None



def test_a_param_left_out_of_a_run_gets_its_default_not_the_previous_runs_value(airflow_dags, sqlite_db_url):
    """Airflow's dag.test() writes a run's conf into the params of the tasks it ran; a later
    run of the same DAG object in the same process (the tests, the embedded demo, `run dag`)
    must still see the declared default for what its conf leaves out: here the second
    evidence_reports run, given no cases, must not render the first run's (unknown) case."""
    dag = airflow_dags["evidence_reports"]
    first = dag.test(run_conf={"cases": ["subject:999999"]})
    assert str(first.state) == "failed"
    second = dag.test()
    assert str(second.state) == "success", {ti.task_id: str(ti.state) for ti in second.get_task_instances()}
