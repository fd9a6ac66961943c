"""The pipeline benchmark: its timers, and ``encoder-audit bench pipeline`` end to end on the
quick ``smoke`` zoo, on PostgreSQL (a throwaway database created and dropped by the run) and
on SQLite, with the figures the README's pipeline table reports (pairs per second, forward
share, memory, store size). The timings themselves are benchmarks, run by hand on the ci zoo
(their numbers are in the README); this checks the mechanics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from audit_lib.bench.pipeline import Timers
from audit_lib.config import PROJECT_ROOT
from tests.conftest import FACES, PG_ADMIN_URL

needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not present")


class _Work:
    def slow(self, t: float) -> float:
        time.sleep(t)
        return t

    def outer(self, t: float) -> float:
        return self.slow(t) + self.slow(t)


def test_timers_add_up_wall_time_count_nested_calls_once_and_restore():
    original = _Work.slow
    timers = Timers()
    timers.wrap(_Work, "slow", "slow")
    timers.wrap(_Work, "outer", "slow")  # same name: the inner calls are inside the outer one
    w = _Work()
    assert w.slow(0.05) == 0.05
    assert w.outer(0.05) == 0.1
    assert timers.calls["slow"] == 2
    assert 0.14 <= timers.total["slow"] < 0.6
    timers.restore()
    assert _Work.slow is original
    w.slow(0.01)
    assert timers.calls["slow"] == 2  # no longer counted


def test_timers_count_a_call_that_raises():
    timers = Timers()

    class Boom:
        def go(self) -> None:
            time.sleep(0.02)
            raise RuntimeError("x")

    timers.wrap(Boom, "go", "boom")
    try:
        Boom().go()
    except RuntimeError:
        pass
    assert timers.calls["boom"] == 1 and timers.total["boom"] >= 0.02
    timers.restore()



def test_instrumented_counts_the_handles_queries_and_restores(db_url, small_cnn_weights, png_images):
    from audit_lib import registry
    from audit_lib.bench.pipeline import instrumented
    from audit_lib.encoders import open_handle
    from audit_lib.encoders.cache import StoreBackedHandle
    from audit_lib.store import session_scope

    original = StoreBackedHandle.__init__
    arch, path = small_cnn_weights
    with session_scope(db_url) as s:
        model = registry.add_model(s, name="cnn", kind="checkpoint", role="suspect", capabilities="image",
                                   architecture=arch, weights_path=path)
        s.expunge(model)
    with instrumented() as timers:
        open_handle(model, run_key="bench-1", db_url=db_url).encode_images(png_images[:3])
        open_handle(model, run_key="bench-1", db_url=db_url).encode_images(png_images[:5])
    assert StoreBackedHandle.__init__ is original
    assert [(h.misses, h.hits) for h in timers.handles] == [(3, 0), (2, 3)]
    assert timers.calls["cache_layer"] == 2 and timers.calls["model"] == 2
    open_handle(model, run_key="bench-1", db_url=db_url)
    assert len(timers.handles) == 2  # no longer collected


def _bench(tmp_path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AIRFLOW") or k.startswith("AUDIT_D"))}
    env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run([sys.executable, "-m", "audit_lib.cli", "bench", "pipeline", "--profile", "smoke",
                          "--subjects", "3", "--n-candidates", "50", "--pairs-per-task", "5",
                          "--work-dir", str(tmp_path / "run"), "--out", str(out), *extra],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "pairs/s" in run.stdout and "per 1,000 pairs" in run.stdout
    return json.loads(out.read_text())


def _check(r: dict, database: str) -> None:
    assert r["state"] == "success" and r["database"] == database
    assert r["subjects"] == 3 and r["models"] == 3
    assert r["n_pairs"] == 3 * 4 == sum(r["findings"].values())  # IDIA on the CLIP, EncoderMI on all 3
    assert r["pairs_per_s"] > 0 and 0 < r["shares"]["forward"] < 1
    assert r["timers_s"]["forward"] == pytest.approx(r["timers_s"]["forward_image"] + r["timers_s"]["forward_text"],
                                                     abs=0.02)
    assert r["per_pair_ms"]["wall"] >= r["per_pair_ms"]["non_forward"] >= r["per_pair_ms"]["non_model"] > 0
    assert r["memory_mb"]["after_audit_peak"] >= r["memory_mb"]["after_registration_peak"] > 0
    assert r["db_mb"]["after_audit"] > r["db_mb"]["before_audit"] > 0
    assert r["db_mb"]["audit_per_1000_pairs"] > 0


@pytest.mark.slow
@needs_faces
def test_bench_pipeline_on_postgresql_uses_a_throwaway_database(tmp_path):
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__})")
    r = _bench(tmp_path, "--database-url", PG_ADMIN_URL)
    _check(r, "postgresql")
    name = r["store"].rsplit("/", 1)[1]
    assert name.startswith("encoder_audit_bench_") and r["config"]["database_url"]
    with admin.connect() as conn:
        left = conn.scalar(text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name})
    admin.dispose()
    assert left == 0  # dropped after the run
    assert not (tmp_path / "run" / "evidence.sqlite").exists()


@pytest.mark.slow
@needs_faces
def test_bench_pipeline_on_sqlite_and_the_synthetic_population(tmp_path):
    r = _bench(tmp_path, "--population", "synthetic")
    _check(r, "sqlite")
    assert r["store"].endswith("evidence.sqlite") and r["config"]["database_url"] == ""


def test_synthetic_claimed_images_stay_distinct_beyond_the_public_split():
    from audit_lib.bench.pipeline import symmetry

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    variants = [symmetry(image, t) for t in range(8)]
    assert np.array_equal(variants[0], image)
    assert len({v.tobytes() for v in variants}) == 8
    with pytest.raises(ValueError):
        symmetry(image, 8)


# --- the Celery run (``--executor celery --workers N``): its accounting and its option checks.
# The run itself starts a whole deployment (minutes on 2 cores); its numbers are in the README.

def _ti(task_id: str, map_index: int, hostname: str, queue: str = "gpu", try_number: int = 1,
        duration: float | None = 2.0):
    from audit_lib.bench.celery import TaskRow

    return TaskRow(task_id, map_index, "success" if hostname else "skipped", hostname, queue, try_number, duration)


def test_celery_accounting_counts_tasks_per_worker_and_finds_duplicates():
    from audit_lib.bench.celery import account

    tasks = [_ti("registry_snapshot", -1, "worker-cpu", "default", duration=1.0),
             _ti("membership_inference", 0, "worker-gpu-1"), _ti("membership_inference", 1, "worker-gpu-2"),
             _ti("membership_inference", 2, "worker-gpu-1", duration=3.5),
             _ti("mark_run_failed", -1, "", "default", try_number=0, duration=None)]  # never ran
    keys = [("encoder_mi", 1, 10), ("encoder_mi", 2, 10), ("idia", 1, 11)]
    acc = account(tasks, keys)
    assert acc["per_worker"] == {"worker-cpu": {"tasks": 1, "model_tasks": 0, "busy_s": 1.0},
                                 "worker-gpu-1": {"tasks": 2, "model_tasks": 2, "busy_s": 5.5},
                                 "worker-gpu-2": {"tasks": 1, "model_tasks": 1, "busy_s": 2.0}}
    assert acc["repeated_findings"] == [] and acc["reruns"] == []

    twice = account([*tasks[:3], _ti("membership_inference", 2, "worker-gpu-2", try_number=2)],
                    [*keys, ("encoder_mi", 2, 10)])
    assert twice["repeated_findings"] == [["encoder_mi", 2, 10, 2]]
    assert twice["reruns"] == [["membership_inference", 2, 2]]
    assert twice["per_worker"]["worker-gpu-2"]["tasks"] == 2


def test_celery_run_is_compared_with_the_one_worker_run_of_the_same_configuration(tmp_path):
    from audit_lib.bench.celery import compare_baseline

    config = {"subjects": 40, "pairs_per_task": 10}
    base = tmp_path / "w1.json"
    base.write_text(json.dumps({"workers": 1, "config": config, "queries": 100, "n_pairs": 160}))
    assert compare_baseline(config, 100, 160, base) == {
        "path": str(base), "queries": 100, "queries_equal": True, "n_pairs": 160, "pairs_equal": True}
    more = compare_baseline(config, 121, 160, base)
    assert more["queries_equal"] is False and more["pairs_equal"] is True
    assert compare_baseline({**config, "pairs_per_task": 1}, 100, 160, base) == {}  # another configuration
    assert compare_baseline(config, 100, 160, tmp_path / "missing.json") == {}


@pytest.mark.parametrize(("args", "message"), [
    (["--executor", "spark"], "--executor 'spark'"),
    (["--workers", "2"], "are for --executor celery"),
    (["--executor", "celery"], "needs --database-url"),
    (["--executor", "celery", "--database-url", "sqlite:///x.sqlite"], "needs a PostgreSQL server"),
    (["--executor", "celery", "--workers", "0", "--database-url", PG_ADMIN_URL], "--workers 0"),
    (["--executor", "celery", "--database-url", PG_ADMIN_URL, "--broker-url", "amqp://127.0.0.1"], "--broker-url"),
])
def test_bench_pipeline_refuses_bad_celery_options_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from audit_lib.cli import app

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "pipeline", *args, "--work-dir", str(tmp_path / "run"), "--out", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert not out.exists() and not (tmp_path / "run").exists()
