"""The distributed path for real: a CeleryExecutor deployment on this machine runs
privacy_audit to success with tasks spread over two Celery workers, and the Airflow UI
shows the DAGs (a headless Chromium screenshot; saved to docs/airflow-ui.png only with
AUDIT_REPORT_DOCS=1, as the report samples are, so a test run leaves the checkout clean).

Processes: api-server, scheduler, dag-processor, a CPU worker (queue ``default``) and a
"GPU" worker (queue ``gpu``: on this CPU-only machine it runs the model work on the CPU).
Redis on 127.0.0.1:6379 (a dedicated db number, flushed), PostgreSQL metadata in its own
database, a separate PostgreSQL evidence database. Started with setsid, stopped by
process group, every wait bounded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from audit_lib.config import PROJECT_ROOT
from tests.conftest import _pg_create, _pg_drop
from tests.fixtures_airflow import register_small_registry

pytest.importorskip("airflow.providers.celery", reason="the Celery provider is not installed")
pytest.importorskip("audit_lib.methods.membership_inference", reason="EncoderMI is not in this build")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("celery-redis")]  # one Redis db: one worker
REDIS_DB = 13
DAG_IDS = ("privacy_audit", "ownership_audit", "model_enrolment", "evidence_reports")


def _redis_ok() -> bool:
    import redis

    try:
        return redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=2).ping()
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def celery_deployment(tmp_path_factory, tiny_clip_weights, small_cnn_weights):
    """A running CeleryExecutor deployment with a small registry in its evidence store."""
    if not _redis_ok():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    from audit_lib.config import get_settings
    from audit_lib.pipelines.deployment import LocalDeployment
    from audit_lib.store import upgrade

    tag = uuid.uuid4().hex[:8]
    meta_db, evidence_db = f"ea_airflow_celery_{tag}", f"ea_evidence_celery_{tag}"
    meta_url, evidence_url = _pg_create(meta_db), _pg_create(evidence_db)
    data_dir = tmp_path_factory.mktemp("celery-var")
    saved = {k: os.environ.get(k) for k in ("AUDIT_DATABASE_URL", "AUDIT_DATA_DIR")}
    os.environ.update(AUDIT_DATABASE_URL=evidence_url, AUDIT_DATA_DIR=str(data_dir))
    get_settings.cache_clear()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    # A short home: Celery/Airflow put sockets under it.
    home = Path(tempfile.mkdtemp(prefix="ea-af-"))
    dep = LocalDeployment(home=home, metadata_url=meta_url, executor="CeleryExecutor",
                          broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
                          extra_env={"AUDIT_DATABASE_URL": evidence_url, "AUDIT_DATA_DIR": str(data_dir),
                                     "AIRFLOW__CORE__PARALLELISM": "4",
                                     # no scheduled runs competing with the triggered one
                                     "AUDIT_PRIVACY_AUDIT_SCHEDULE": "none",
                                     "AUDIT_OWNERSHIP_AUDIT_SCHEDULE": "none",
                                     "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2"})
    try:
        upgrade(evidence_url)
        ids = register_small_registry(tiny_clip_weights, small_cnn_weights)
        dep.init(gpu_slots=1)
        dep.start_core()
        dep.start_celery_worker("worker-cpu", "default", concurrency=2)
        dep.start_celery_worker("worker-gpu", "gpu", concurrency=1)
        dep.wait_healthy(timeout=180)
        yield dep, ids
    finally:
        dep.stop()
        from audit_lib.store.db import get_engine

        get_engine(evidence_url).dispose()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        _pg_drop(meta_db)
        _pg_drop(evidence_db)
        shutil.rmtree(home, ignore_errors=True)


def _wait_for_dags(dep, client, timeout=180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dep.check_alive()
        r = client.get("/api/v2/dags", params={"limit": 50})
        if r.status_code == 200 and {d["dag_id"] for d in r.json()["dags"]} >= set(DAG_IDS):
            return
        time.sleep(3)
    raise TimeoutError(f"the dag-processor did not register the DAGs in {timeout:.0f} s")


def test_privacy_audit_runs_on_two_celery_workers(celery_deployment):
    import httpx
    from sqlalchemy import create_engine, text

    dep, ids = celery_deployment
    client = httpx.Client(base_url=dep.api_url, headers={"Authorization": f"Bearer {dep.token()}"}, timeout=30)
    _wait_for_dags(dep, client)
    r = client.post("/api/v2/dags/privacy_audit/dagRuns",
                    json={"logical_date": None, "conf": {
                        # One subject on the image-only model keeps the run to three model
                        # tasks (each a fresh process importing torch on 2 shared cores).
                        "subject_ids": ids["subjects"][:1], "model_ids": ids["models"][1:], "n_views": 4}})
    assert r.status_code == 200, r.text
    run_id = r.json()["dag_run_id"]
    deadline, state = time.monotonic() + 900, None  # the other test worker may be training meanwhile
    while time.monotonic() < deadline:
        dep.check_alive()
        state = client.get(f"/api/v2/dags/privacy_audit/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(3)
    engine = create_engine(dep.metadata_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_id, map_index, state, hostname, queue FROM task_instance "
                                 "WHERE dag_id = 'privacy_audit' AND run_id = :r"), {"r": run_id}).all()
    engine.dispose()
    assert state == "success", [tuple(r) for r in rows]
    ran = [r for r in rows if r.state == "success"]
    by_worker = {r.hostname for r in ran}
    assert by_worker == {"worker-cpu", "worker-gpu"}, [tuple(r) for r in rows]
    for r in ran:  # model work on the GPU worker, the rest on the CPU worker
        assert (r.queue, r.hostname) in (("gpu", "worker-gpu"), ("default", "worker-cpu")), tuple(r)
    assert sum(1 for r in ran if r.task_id == "membership_inference") == 1
    # mark_run_failed runs only when a task failed; request_reports only for new positives
    skipped = {r.task_id for r in rows if r.state == "skipped"}
    assert skipped in ({"identity_inference", "mark_run_failed", "request_reports"},
                       {"identity_inference", "mark_run_failed"}), skipped

    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import Finding

    with session_scope() as s:
        methods = [(f.method, f.subject_id) for f in s.scalars(select(Finding))]
    assert methods == [("encoder_mi", ids["subjects"][0])]


def test_airflow_ui_shows_the_dags(celery_deployment, tmp_path):
    """Sign in to the real api-server with headless Chromium, open the DAG list, check the
    DAG names are on the page and save the screenshot."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed")
    dep, _ = celery_deployment
    import httpx

    client = httpx.Client(base_url=dep.api_url, headers={"Authorization": f"Bearer {dep.token()}"}, timeout=30)
    _wait_for_dags(dep, client)
    docs = os.environ.get("AUDIT_REPORT_DOCS") == "1"
    out = (PROJECT_ROOT / "docs" if docs else tmp_path) / "airflow-ui.png"
    with tempfile.TemporaryDirectory() as profile, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True,
            viewport={"width": 1400, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(f"{dep.api_url}/", wait_until="networkidle", timeout=60_000)
        page.fill("input[name='username']", "admin")
        page.fill("input[name='password']", dep.admin_password)
        page.click("button[type='submit']")
        page.wait_for_load_state("networkidle", timeout=60_000)
        page.goto(f"{dep.api_url}/dags", wait_until="networkidle", timeout=60_000)
        page.wait_for_selector("text=privacy_audit", timeout=60_000)
        content = page.content()
        page.screenshot(path=str(out), full_page=False)
        browser.close()
    for dag_id in DAG_IDS:
        assert dag_id in content, dag_id
    assert out.stat().st_size > 20_000
