"""The fault half of the load and fault suite: a remote API that fails in the middle of a
``privacy_audit`` DAG run (HTTP 500, a timeout, a garbage answer; absorbed by the
transport's retries, by the task's Airflow retry, or outlasting both), and the evidence
store's PostgreSQL restarted in the middle of a privacy audit.

After each fault: exactly one finding per subject x model x method (none duplicated, none
lost), the run's evidence chain verifies, the run is marked as it ended, and a re-run
answers from the query cache. Loopback only: the real reference server (its fault
injection, :mod:`audit_lib.server.faults`) on 127.0.0.1 and a private PostgreSQL instance
on a free port. Small models (the random-weight small CNN), two subjects, four views.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from audit_lib.encoders.version import canary_images
from tests.fixtures_airflow import FACES

pytest.importorskip("airflow", reason="apache-airflow is not installed")
pytest.importorskip("audit_lib.methods.membership_inference", reason="EncoderMI is not in this build")

pytestmark = pytest.mark.xdist_group("fault_suite")

KEY = "sk-fault-suite-4Kp9-secret"
CRED = "AUDIT_CRED_FAULT_SUITE"
# subject_ids / model_ids explicit: a conf of an earlier dag.test() in the process is seen again otherwise
FAST = {"n_candidates": 50, "n_views": 4, "subject_ids": None, "model_ids": None}
# Every task that opens the API checks its canary set first (one request). In order: the
# version check's canary, the calibration's canary and views, the first pair's canary; the
# fault lands on the first pair's own request, after four answered requests.
HEALTHY_FIRST = ["ok"] * 4
SLOW_S = 2.0  # the "slow" fault's answer time (the client gives up after 1 s)
HANDLES_PER_RUN = 4  # check_model_version, calibrate_null, two membership pairs


def _register(api_url: str | None = None, checkpoint: tuple[str, Path] | None = None) -> dict:
    """Two ORL people (3 photos, 3 claimed images each), one image-only model (the reference
    server at ``api_url`` registered as a remote API, or a ``checkpoint``), and 12 photos of
    other people as the model's reference non-members."""
    from audit_lib import registry
    from audit_lib.images import check_image_bytes
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.registry import ImageLimits
    from audit_lib.store import session_scope

    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    limits = ImageLimits.from_settings().as_kwargs()

    def photos(person: int, numbers) -> list:  # noqa: ANN001
        return [check_image_bytes((FACES / f"s{person}" / f"{i}.pgm").read_bytes(), name=f"s{person}-{i}.pgm",
                                  **limits) for i in numbers]

    with session_scope() as s:
        subjects = [registry.add_subject(s, name=name, legal_basis="GDPR Art. 6(1)(f), test",
                                         photos=photos(p, (1, 2, 3)), claimed=photos(p, (4, 5, 6)), sex=sex).id
                    for p, name, sex in ((1, "Ana Ferreira", "f"), (2, "Jonas Berg", "m"))]
        where = ({"kind": "api", "endpoint_url": api_url, "credential_name": CRED} if api_url else
                 {"kind": "checkpoint", "architecture": checkpoint[0], "weights_path": checkpoint[1]})
        model = registry.add_model(s, name="audited-model", role="suspect", capabilities="image", **where).id
    refs = [(f"s{p}-{i}.pgm", (FACES / f"s{p}" / f"{i}.pgm").read_bytes()) for p in (35, 36, 37, 38)
            for i in (1, 2, 3)]
    write_reference_nonmembers("audited-model", refs)
    return {"subjects": subjects, "model": model}


def _run_state(dr) -> dict:  # noqa: ANN001 - DagRun
    """(task_id, map_index) -> (state, try_number) of a finished DAG run."""
    return {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in dr.get_task_instances()}


def _check_run(run_key: str, ids: dict, *, status: str, complete: bool = True) -> list[tuple]:
    """The audit run is marked ``status`` and finished, its chain verifies, and it holds at
    most (``complete``: exactly) one EncoderMI finding per subject on the API. Returns the
    findings as (method, target, decision, p-value), sorted."""
    from audit_lib.evidence import verify_chain
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, Finding

    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        assert run is not None, f"no audit run {run_key}"
        assert (run.status, run.finished_at is not None) == (status, True), (run.status, run.finished_at)
        check = verify_chain(s, run)
        assert check.ok, check
        rows = s.scalars(select(Finding).where(Finding.run_id == run.id)).all()
        per_pair = Counter((f.subject_id, f.model_version_id, f.method) for f in rows)
        found = sorted((f.method, f.target_key, f.decision, f.p_value) for f in rows)
    assert all(n == 1 for n in per_pair.values()), f"duplicate findings: {per_pair}"
    subjects = sorted(sid for sid, _, _ in per_pair)
    if complete:
        assert subjects == sorted(ids["subjects"]), f"lost findings: {per_pair}"
    else:
        assert set(subjects) < set(ids["subjects"]), per_pair
    return found


def _only_canaries_sent(url, handles: int) -> None:  # noqa: ANN001 - RunningServer
    """The API received only the canary checks (one per handle opened), nothing else."""
    assert (url.stats.embed_requests, url.stats.inputs_embedded) == (
        handles, handles * len(canary_images())), url.stats.as_dict()


@pytest.fixture
def quick_retries(airflow_dags, monkeypatch):
    """The privacy DAG's model tasks retried after 1 s instead of 30 s with backoff, and the
    API transport's 30 s timeout and 0.5 s backoff shortened, so that a fault costs seconds.
    The retry counts are the product's (3 task retries, 4 transport retries)."""
    from audit_lib.encoders.remote import RemoteEncoder

    dag = airflow_dags["privacy_audit"]
    for tid in ("check_model_version", "calibrate_null", "membership_inference"):
        kwargs = dag.get_task(tid).partial_kwargs
        monkeypatch.setitem(kwargs, "retry_delay", timedelta(seconds=1))
        monkeypatch.setitem(kwargs, "retry_exponential_backoff", 0)
    defaults = dict(RemoteEncoder.__init__.__kwdefaults__)
    monkeypatch.setattr(RemoteEncoder.__init__, "__kwdefaults__",
                        {**defaults, "timeout": 1.0, "backoff_base_s": 0.05})
    monkeypatch.setenv(CRED, KEY)
    return dag


@pytest.mark.parametrize("fault, absorbed_by, client_log", [
    # two 500s: the transport's backoff retries absorb them
    ("500", "transport", ["HTTP 500; retry 1 of 4", "HTTP 500; retry 2 of 4"]),
    # an answer later than the client's timeout: abandoned and retried
    ("slow", "transport", ["timed out after 1 s; retry 1 of 4"]),
    # a 200 that is not JSON: never retried by the transport nor cached; the task retry re-runs the pair
    ("garbage", "task", []),
])
def test_remote_api_fails_mid_dag_run(quick_retries, sqlite_db_url, reference_server, caplog,
                                      fault, absorbed_by, client_log):
    schedule = HEALTHY_FIRST + ([fault, fault] if fault == "500" else [fault])
    with reference_server({KEY: {"faults": {"schedule": schedule, "slow_s": SLOW_S}}}) as url:
        ids = _register(url)
        dr = quick_retries.test(run_conf=FAST)
        states = _run_state(dr)
        assert str(dr.state) == "success", states
        tries = sorted(t for (tid, _), (_, t) in states.items() if tid == "membership_inference")
        assert tries == ([1, 2] if absorbed_by == "task" else [1, 1]), states
        retried = [r.getMessage() for r in caplog.records if r.name == "audit_lib.encoders.remote"]
        assert [m for m in client_log if not any(m in r for r in retried)] == [], retried
        if fault != "slow":  # (an abandoned slow answer is counted when the server finishes it)
            # the faulty answers, the retry, the second pair's canary and request; a task retry re-opens the API
            expected = len(schedule) + 1 + 2 + (1 if absorbed_by == "task" else 0)
            assert url.stats.embed_requests == expected, url.stats.as_dict()
        first = _check_run(f"privacy_audit/{dr.run_id}", ids, status="succeeded")

        if fault == "slow":  # let the server finish the answer the client abandoned, so it counts before the reset
            time.sleep(SLOW_S + 0.5)
        url.stats.reset()
        again = quick_retries.test(run_conf=FAST)
        assert str(again.state) == "success", _run_state(again)
        _only_canaries_sent(url, HANDLES_PER_RUN)  # the audit's own queries came from the cache
        assert _check_run(f"privacy_audit/{again.run_id}", ids, status="succeeded") == first


def test_remote_api_outage_outlasting_the_retries_fails_the_run_and_a_rerun_completes(
        quick_retries, sqlite_db_url, reference_server, monkeypatch):
    monkeypatch.setitem(quick_retries.get_task("membership_inference").partial_kwargs, "retries", 1)
    faults = {"schedule": HEALTHY_FIRST + ["ok"], "rates": {"500": 1.0}}  # the first pair gets through
    with reference_server({KEY: {"faults": faults}}) as url:
        ids = _register(url)
        dr = quick_retries.test(run_conf=FAST)
        states = _run_state(dr)
        assert str(dr.state) == "failed", states
        mi = sorted(v for (tid, _), v in states.items() if tid == "membership_inference")
        assert mi == [("failed", 2), ("success", 1)], states  # one try and one Airflow retry
        assert states[("mark_run_failed", -1)][0] == "success"
        assert states[("summarise_run", -1)][0] == "upstream_failed"
        _check_run(f"privacy_audit/{dr.run_id}", ids, status="failed", complete=False)

        url.app.state.keys.lookup(KEY).faults.rates.clear()  # the API recovers
        url.stats.reset()
        again = quick_retries.test(run_conf=FAST)
        assert str(again.state) == "success", _run_state(again)
        # the canary checks, and the one pair that never got an answer; the rest from the cache
        claimed_views = 3 * FAST["n_views"]
        assert (url.stats.embed_requests, url.stats.inputs_embedded) == (
            HANDLES_PER_RUN + 1, HANDLES_PER_RUN * len(canary_images()) + claimed_views), url.stats.as_dict()
        _check_run(f"privacy_audit/{again.run_id}", ids, status="succeeded")


# --- PostgreSQL restarted in the middle of a privacy audit ---------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*args: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL server program as the ``postgres`` OS user (initdb refuses root)."""
    cmd = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def private_postgres(monkeypatch):
    """A PostgreSQL instance of this test alone (initdb in a temporary folder, a free port on
    127.0.0.1, trust auth), migrated and selected as the evidence store; stopped and removed
    afterwards. Yields (url, restart) where ``restart()`` is ``pg_ctl restart -m fast``. The
    machine's shared PostgreSQL is never touched."""
    import pwd

    from audit_lib.config import get_settings
    from audit_lib.server.testing import free_port
    from audit_lib.store import upgrade
    from audit_lib.store.db import get_engine

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server programs in {PG_BIN}")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run initdb as")
    folder = Path(tempfile.mkdtemp(prefix="fault-suite-pg-"))
    if os.geteuid() == 0:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", opts, "-w", "-t", "30"]
    _as_postgres(*ctl, "start")
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    try:
        upgrade(url)
        monkeypatch.setenv("AUDIT_DATABASE_URL", url)
        monkeypatch.setenv("AUDIT_DATA_DIR", str(folder / "var"))
        get_settings.cache_clear()
        yield url, lambda: _as_postgres(*ctl, "-m", "fast", "restart")
    finally:
        get_settings.cache_clear()
        get_engine(url).dispose()
        subprocess.run(["runuser", "-u", "postgres", "--", *ctl, "-m", "immediate", "stop"]
                       if os.geteuid() == 0 else [*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _postmaster_pid(url: str) -> int:
    from audit_lib.store.db import get_engine

    with get_engine(url).connect() as conn:
        return int(conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
                   .scalar_one())


@pytest.mark.parametrize("where, pair_tries", [
    # between two transactions: the pool's dead connections are replaced at checkout (pre-ping)
    ("audit_lib.pipelines.privacy._store", [1, 1]),
    # inside the finding's transaction (the run row already read on the cut connection): the
    # write fails and rolls back, the task's Airflow retry re-runs the pair from the query cache
    ("audit_lib.evidence.store_finding", [1, 2]),
])
def test_postgres_restarted_mid_privacy_audit(quick_retries, private_postgres, small_cnn_weights, monkeypatch,
                                              where, pair_tries):
    """The evidence store's PostgreSQL is restarted (``pg_ctl restart -m fast``: every
    connection is cut) after the audit's version check, calibration and first pair queried
    and recorded evidence, as the first finding is stored. The run completes with one
    finding per pair, the chain verifies, and a re-run answers from the query cache."""
    import importlib

    url, restart = private_postgres
    ids = _register(checkpoint=small_cnn_weights)
    before = _postmaster_pid(url)
    module_name, name = where.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original, restarts = getattr(module, name), []

    def restart_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not restarts:
            restart()
            restarts.append(time.monotonic())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, restart_first)
    dr = quick_retries.test(run_conf=FAST)
    states = _run_state(dr)
    assert len(restarts) == 1 and _postmaster_pid(url) != before, "PostgreSQL was not restarted"
    assert str(dr.state) == "success", states
    tries = sorted(t for (tid, _), (_, t) in states.items() if tid == "membership_inference")
    assert tries == pair_tries, states
    first = _check_run(f"privacy_audit/{dr.run_id}", ids, status="succeeded")

    from sqlalchemy import func

    from audit_lib.store import session_scope
    from audit_lib.store.models import QueryCacheEntry

    with session_scope() as s:
        cached = s.scalar(select(func.count()).select_from(QueryCacheEntry))
    again = quick_retries.test(run_conf=FAST)
    assert str(again.state) == "success", _run_state(again)
    assert _check_run(f"privacy_audit/{again.run_id}", ids, status="succeeded") == first
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(QueryCacheEntry)) == cached  # nothing queried anew
