"""The pipeline benchmark on a Celery deployment (``encoder-audit bench pipeline --executor
celery --workers N``): does the privacy audit's model work spread over N workers, and is
nothing done twice?

One run: the same population and models as the ``dag.test()`` benchmark
(:func:`audit_lib.bench.pipeline.prepare_store`), in a throwaway PostgreSQL evidence
database; a :class:`~audit_lib.pipelines.deployment.LocalDeployment` with its own
throwaway PostgreSQL metadata database, a Redis broker database of its own (emptied before
and after), the api-server, scheduler and dag-processor, one Celery worker on queue
``default`` (``worker-cpu``: snapshot, planning, summary) and N on queue ``gpu``
(``worker-gpu-1`` .. ``worker-gpu-N``, one task at a time each; the ``gpu`` pool has N
slots). Every component is its own process group, stopped on the way out, error or not.
Only ``privacy_audit`` is unpaused; it is triggered through the REST API and polled until
it ends.

Reported: wall time from the trigger to the run's end, pairs per second, task instances
per worker (``task_instance.hostname``, the worker's name) and the checks that nothing was
duplicated: one finding per subject x model x method, no task instance run twice, and the
queries sent to the models (uncached query evidence rows) equal to those of the
one-worker run of the same configuration when its JSON is there.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit_lib.bench.pipeline import (
    MARKER,
    PipelineBenchConfig,
    audit_conf,
    bench_database,
    bench_folder,
    machine_info,
    prepare_store,
    write_result,
)
from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_BROKER = "redis://127.0.0.1:6379/14"
RUN_TIMEOUT_S = 3600.0  # the privacy audit's run, from the trigger
CPU_WORKER = "worker-cpu"
GPU_QUEUE = "gpu"


@dataclass(frozen=True)
class TaskRow:
    """One task instance of the run, from the metadata database."""

    task_id: str
    map_index: int
    state: str | None
    hostname: str  # the worker's name; "" when it never ran
    queue: str
    try_number: int
    duration_s: float | None


@dataclass
class CeleryBenchResult:
    config: dict[str, Any]
    workers: int  # Celery workers on queue gpu (= gpu pool slots)
    subjects: int
    models: int
    state: str
    wall_s: float  # from the REST trigger to the run's end as the REST API reports it
    run_s: float  # the DAG run's own start to end (metadata database)
    n_pairs: int
    pairs_per_s: float
    task_instances: int
    per_worker: dict[str, dict[str, float]]  # worker -> tasks, model_tasks, busy_s
    duplicates: dict[str, list[Any]]  # repeated findings, task instances run more than once
    queries: int  # sent to the models: the run's uncached query evidence rows
    cache_entries: int  # query_cache rows after the run
    evidence_rows: int
    findings: dict[str, int]
    baseline: dict[str, Any] = field(default_factory=dict)  # the one-worker run's queries, when known
    machine: dict[str, Any] = field(default_factory=dict)
    store: str = ""


def check_options(workers: int, database_url: str, broker_url: str) -> None:
    """ValueError naming the bad option (before anything starts)."""
    from sqlalchemy.engine import make_url

    if workers < 1:
        raise ValueError(f"--workers {workers}: expected 1 or more gpu-queue workers")
    if not database_url:
        raise ValueError("--executor celery needs --database-url: a PostgreSQL server's URL "
                         "(postgresql+psycopg2://user@host:port/postgres), for the evidence store and Airflow's metadata")
    if make_url(database_url).get_backend_name() != "postgresql":
        raise ValueError("--database-url: the Celery deployment needs a PostgreSQL server "
                         "(postgresql+psycopg2://user@host:port/postgres)")
    if not broker_url.startswith("redis://"):
        raise ValueError(f"--broker-url {broker_url!r}: expected a Redis database, redis://host:port/db")


def account(tasks: Sequence[TaskRow], finding_keys: Sequence[tuple[str, int | None, int]]) -> dict[str, Any]:
    """Per-worker task counts and the duplicate checks of one run.

    ``finding_keys`` holds (method, subject id, model version id) per finding. Returns
    ``per_worker`` (worker -> tasks run, of them on queue gpu, busy seconds), ``repeated_findings``
    (keys found more than once, with their count) and ``reruns`` (task instances tried more
    than once: a worker lost, a broker redelivery, a retry)."""
    per_worker: dict[str, dict[str, float]] = {}
    for t in tasks:
        if not t.hostname:  # never ran (e.g. skipped by its trigger rule)
            continue
        w = per_worker.setdefault(t.hostname, {"tasks": 0, "model_tasks": 0, "busy_s": 0.0})
        w["tasks"] += 1
        w["model_tasks"] += t.queue == GPU_QUEUE
        w["busy_s"] = round(w["busy_s"] + (t.duration_s or 0.0), 2)
    repeated = [[*k, n] for k, n in sorted(Counter(finding_keys).items(), key=str) if n > 1]
    reruns = sorted([t.task_id, t.map_index, t.try_number] for t in tasks if t.try_number > 1)
    return {"per_worker": dict(sorted(per_worker.items())), "repeated_findings": repeated, "reruns": reruns}


def compare_baseline(config: dict[str, Any], queries: int, n_pairs: int, path: Path) -> dict[str, Any]:
    """This run against the one-worker run's JSON at ``path``: same configuration, then
    whether the queries sent and the findings are the same; {} when there is none to compare."""
    import json

    try:
        base = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if base.get("workers") != 1 or base.get("config") != config:
        return {}
    return {"path": str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path),
            "queries": base["queries"], "queries_equal": base["queries"] == queries,
            "n_pairs": base["n_pairs"], "pairs_equal": base["n_pairs"] == n_pairs}


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit in this process, so the deployment and the databases are
    cleaned up as on Ctrl-C."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def _broker(url: str) -> Iterator[str]:
    """The Redis broker database, emptied before and after (a crashed run leaves no messages)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise ValueError(f"--broker-url {url}: Redis did not answer ({exc})") from None
    try:
        yield url
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


def run_celery_bench(cfg: PipelineBenchConfig, workers: int, out: Path | None = None,
                     progress: Callable[[str], None] = log.info, *, work_dir: Path | None = None,
                     broker_url: str = DEFAULT_BROKER) -> CeleryBenchResult:
    """Run the benchmark (see the module doc) in a fresh folder (``work_dir``, emptied first;
    default ``var/bench/pipeline-celery-<population>-<S>-w<N>``); JSON to ``out`` (default
    the folder's name + ``.json`` under ``var/bench``)."""
    check_options(workers, cfg.database_url, broker_url)
    name = celery_name(cfg, workers)
    folder = bench_folder(name, work_dir)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("encoder-audit bench pipeline --executor celery: emptied by the next run\n")
    from audit_lib.config import get_settings

    os.environ["AUDIT_DATA_DIR"] = str(folder)
    get_settings.cache_clear()
    with _stop_on_sigterm(), bench_database(cfg.database_url, folder) as url, \
            bench_database(cfg.database_url, folder, suffix="_airflow") as metadata_url, _broker(broker_url):
        result = _run(cfg, workers, url, metadata_url, broker_url, folder, progress)
    baseline = PROJECT_ROOT / "var" / "bench" / f"{celery_name(cfg, 1)}.json"
    if workers > 1:
        result.baseline = compare_baseline(result.config, result.queries, result.n_pairs, baseline)
    return write_result(result, out, name)


def celery_name(cfg: PipelineBenchConfig, workers: int) -> str:
    return f"pipeline-celery-{cfg.population}-{cfg.subjects}-w{workers}"


def _run(cfg: PipelineBenchConfig, workers: int, url: str, metadata_url: str, broker_url: str, folder: Path,
         progress: Callable[[str], None]) -> CeleryBenchResult:
    from audit_lib.pipelines import run_key_for
    from audit_lib.pipelines.deployment import LocalDeployment
    from audit_lib.store.db import redacted_url

    n_subjects, n_models, _ = prepare_store(cfg, url, progress)
    dep = LocalDeployment(
        home=folder / "airflow", metadata_url=metadata_url, executor="CeleryExecutor", broker_url=broker_url,
        extra_env={"AUDIT_DATABASE_URL": url, "AUDIT_DATA_DIR": str(folder),
                   "AUDIT_PRIVACY_AUDIT_SCHEDULE": "none", "AUDIT_OWNERSHIP_AUDIT_SCHEDULE": "none",
                   "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # only the triggered DAG runs
                   "AIRFLOW__CORE__PARALLELISM": str(max(4, workers + 2)),
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # one compute thread per task
    machine: dict[str, Any] = {"load_before": _load()}
    try:
        progress(f"starting Airflow with {workers} gpu-queue Celery worker(s) (logs in {dep.home})")
        dep.init(gpu_slots=workers)
        dep.start_core()
        dep.start_celery_worker(CPU_WORKER, "default")
        for i in range(1, workers + 1):
            dep.start_celery_worker(f"worker-gpu-{i}", GPU_QUEUE)
        dep.wait_healthy(timeout=300)
        client = dep.client()
        dep.wait_for_dags(client, ["privacy_audit"], timeout=300)
        conf = audit_conf(cfg)
        progress(f"privacy_audit on {n_subjects} subjects x {n_models} models ({conf})")
        machine["load_at_start"] = _load()
        t0 = time.perf_counter()
        run_id = dep.trigger(client, "privacy_audit", conf)
        state = dep.wait_for_run(client, "privacy_audit", run_id, RUN_TIMEOUT_S)
        wall = time.perf_counter() - t0
        machine["load_at_end"] = _load()
        client.close()
        tasks, run_s = _task_rows(metadata_url, "privacy_audit", run_id)
    finally:
        dep.stop()
    queries, cache_entries, evidence_rows, findings, keys = _store_counts(run_key_for("privacy_audit", run_id))
    acc = account(tasks, keys)
    n_pairs = len(keys)
    return CeleryBenchResult(
        config={**asdict(cfg), "database_url": redacted_url(cfg.database_url)}, workers=workers,
        subjects=n_subjects, models=n_models, state=state, wall_s=round(wall, 2), run_s=round(run_s, 2),
        n_pairs=n_pairs, pairs_per_s=round(n_pairs / wall, 2), task_instances=len(tasks),
        per_worker=acc["per_worker"],
        duplicates={"repeated_findings": acc["repeated_findings"], "reruns": acc["reruns"]},
        queries=queries, cache_entries=cache_entries, evidence_rows=evidence_rows, findings=findings,
        machine={**machine_info(), **machine}, store=redacted_url(url))


def _load() -> dict[str, Any]:
    """The load averages and ``uptime``'s line."""
    import subprocess

    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except OSError:
        line = ""
    return {"load_avg": [round(x, 2) for x in os.getloadavg()], "uptime": line}


def _task_rows(metadata_url: str, dag_id: str, run_id: str) -> tuple[list[TaskRow], float]:
    """The run's task instances and its own duration, from the metadata database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT task_id, map_index, state, hostname, queue, try_number, duration FROM task_instance "
                "WHERE dag_id = :d AND run_id = :r ORDER BY task_id, map_index"), {"d": dag_id, "r": run_id}).all()
            run_s = conn.scalar(text("SELECT EXTRACT(EPOCH FROM end_date - start_date) FROM dag_run "
                                     "WHERE dag_id = :d AND run_id = :r"), {"d": dag_id, "r": run_id})
    finally:
        engine.dispose()
    return [TaskRow(r.task_id, int(r.map_index), r.state, r.hostname or "", r.queue or "", int(r.try_number or 0),
                    None if r.duration is None else float(r.duration)) for r in rows], float(run_s or 0.0)


def _store_counts(run_key: str) -> tuple[int, int, int, dict[str, int], list[tuple[str, int | None, int]]]:
    """(queries sent, query_cache rows, query evidence rows, findings by method and
    decision, one (method, subject, model version) key per finding) of the run."""
    from sqlalchemy import func, select

    from audit_lib.bench.pipeline import run_counts
    from audit_lib.encoders.cache import SET_KIND
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding, QueryCacheEntry

    evidence_rows, findings = run_counts(run_key)
    with session_scope() as s:
        run_id = s.scalar(select(AuditRun.id).where(AuditRun.run_key == run_key))
        queries = s.scalar(select(func.count()).select_from(EvidenceItem).where(
            EvidenceItem.run_id == run_id, EvidenceItem.cached.is_(False),
            EvidenceItem.kind.not_in(("finding", SET_KIND))))
        cache_entries = s.scalar(select(func.count()).select_from(QueryCacheEntry))
        keys = [(m, sid, vid) for m, sid, vid in s.execute(select(
            Finding.method, Finding.subject_id, Finding.model_version_id).where(Finding.run_id == run_id))]
    return int(queries or 0), int(cache_entries or 0), evidence_rows, findings, keys


def format_result(r: CeleryBenchResult) -> list[str]:
    """Human-readable lines for the CLI."""
    d = r.duplicates
    lines = [
        f"privacy_audit on Celery, {r.workers} gpu-queue worker(s): {r.subjects} subjects x {r.models} models, "
        f"{r.task_instances} task instances ({r.config['pairs_per_task']} pair(s) per task): {r.state}",
        f"wall {r.wall_s:.1f} s from the trigger (the DAG run itself {r.run_s:.1f} s); {r.n_pairs} pairs: "
        f"{r.pairs_per_s:.2f} pairs/s",
        "task instances per worker: " + "; ".join(
            f"{w} {int(v['tasks'])} ({int(v['model_tasks'])} on gpu, busy {v['busy_s']:.1f} s)"
            for w, v in r.per_worker.items()),
        f"queries sent to models {r.queries}; query cache rows {r.cache_entries}; {r.evidence_rows} query evidence rows",
        f"duplicates: {len(d['repeated_findings'])} repeated findings (subject x model x method), "
        f"{len(d['reruns'])} task instances run more than once",
        f"findings: {', '.join(f'{k}={v}' for k, v in sorted(r.findings.items()))}",
        f"load average {r.machine['load_at_start']['load_avg']} at the trigger, "
        f"{r.machine['load_at_end']['load_avg']} at the end",
    ]
    if r.baseline:
        b = r.baseline
        lines.append(f"against the one-worker run ({b['path']}): queries {b['queries']} "
                     f"({'equal' if b['queries_equal'] else 'DIFFERENT'}), pairs {b['n_pairs']} "
                     f"({'equal' if b['pairs_equal'] else 'DIFFERENT'})")
    return lines


def succeeded(r: CeleryBenchResult) -> bool:
    """The run succeeded, nothing was duplicated, and the queries match the one-worker run's
    where it is known."""
    return (r.state == "success" and not r.duplicates["repeated_findings"] and not r.duplicates["reruns"]
            and r.baseline.get("queries_equal", True) and r.baseline.get("pairs_equal", True))
