"""The pipeline benchmark (``encoder-audit bench pipeline``): how much of a privacy audit's
wall time is model work, and how much is Airflow and database overhead?

One run: a fresh evidence store and a fresh embedded Airflow (SQLite metadata) under
``var/bench/pipeline-<population>-<S>``; S subjects and M models of the reference zoo
registered; ``privacy_audit`` run once with ``dag.test()`` (tasks in this process, as the
demo does). The evidence store is a SQLite file there, or (``database_url``: a PostgreSQL
server) a throwaway database ``encoder_audit_bench_<pid>`` created on that server for the
run and dropped after it.

Subjects:

- ``zoo`` (S <= 40): the tiny CLIP's ORL people under their pseudonymous names, their
  held-out photos as reference photos, ``claimed`` CIFAR-10 images each from the SimCLR
  target's member / non-member splits;
- ``synthetic`` (any S, e.g. 10,000): subjects made of real images: a generated full name
  (``audit_lib.names``), 3 ORL photos (cycled over the 400) and ``claimed`` distinct CIFAR-10
  images from the image set's public split (beyond its size, the public images again under
  the 8 symmetries of the square, one per pass: every claimed image stays distinct).
  Subjects are made and registered 100 at a time, so memory does not grow with S.

Models: the tiny CLIP (identity and membership), the SimCLR target and the first
independent encoder (membership); 20 reference non-members shared by all (``default``).

Measured, by wrapping functions in this process (no sampling):

- ``model_s``: inside the local encoders' ``encode_images`` / ``encode_texts`` (decode,
  preprocess or tokenize, forward): the model work; ``forward_s`` the forward passes alone,
  of the image tower (``forward_image``) and of the text tower (``forward_text``);
- ``task_s``: inside our task bodies (``audit_lib.pipelines``): everything but Airflow;
- ``db_s``: the query cache and evidence chain around model calls (lookups, inserts,
  hash-chained evidence rows) plus storing findings;
- ``airflow_s`` = wall - task_s: scheduling loop, task-instance state, XCom;
- overhead = (airflow_s + db_s) / wall. Method compute (views, scoring) is the rest.

Also reported: pairs per second (one pair = one subject x model finding), non-model time
per pair ((wall - model_s) / pairs, and (wall - forward_s) / pairs), the process's resident
memory (current and peak, after registration and after the audit) and the evidence store's
size before and after the audit (per 1,000 pairs: what the audit added).

Queries and cache hits are the handles' own counters (every input asked for counts once,
including the members of IDIA's decoy text set, which the run records as one evidence
item); ``evidence_rows`` is the number of query evidence rows the run's chain holds.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)

MARKER = ".encoder-audit-bench"  # in a run's folder: the next run may empty it


@dataclass
class PipelineBenchConfig:
    """What to run."""

    subjects: int = 40
    population: str = "zoo"  # zoo | synthetic
    claimed: int = 3  # claimed images per subject
    n_candidates: int = 1000  # IDIA names incl. decoys
    n_views: int = 10  # EncoderMI views per image
    pairs_per_task: int = 1  # subject x model pairs per mapped task instance
    profile: str = "ci"  # reference zoo profile
    n_references: int = 20  # reference non-members (shared by all models)
    database_url: str = ""  # a PostgreSQL server (any database on it): a throwaway one there; "": SQLite


@dataclass
class PipelineBenchResult:
    config: dict[str, Any]
    subjects: int
    models: int
    pairs: dict[str, int]
    task_instances: int
    state: str
    wall_s: float
    timers_s: dict[str, float]
    queries: int
    cache_hits: int
    findings: dict[str, int]
    evidence_rows: int = 0
    shares: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    database: str = "sqlite"  # the evidence store's dialect
    store: str = ""  # its URL (password hidden): the SQLite file or the throwaway PostgreSQL database
    n_pairs: int = 0  # subject x model findings
    pairs_per_s: float = 0.0
    per_pair_ms: dict[str, float] = field(default_factory=dict)  # wall, non-model, non-forward
    memory_mb: dict[str, float] = field(default_factory=dict)  # RSS and peak RSS by phase
    db_mb: dict[str, float] = field(default_factory=dict)  # store size before / after the audit


class Timers:
    """Wall-clock totals of wrapped functions, by name. Re-entrant calls of the same name
    (a wrapped function calling itself through another wrapper) count once."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth: dict[tuple[int, str], int] = defaultdict(int)
        self._undo: list[tuple[Any, str, Any]] = []
        self.handles: list[Any] = []  # every StoreBackedHandle opened (for their query counters)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = (threading.get_ident(), name)
            timers._depth[key] += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers._depth[key] -= 1
                if timers._depth[key] == 0:
                    timers.total[name] += time.perf_counter() - t0
                    timers.calls[name] += 1

        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


@contextmanager
def instrumented() -> Iterator[Timers]:
    """Wrap the model calls, the cache/evidence layer and the task bodies (see module doc)."""
    from audit_lib.encoders.cache import StoreBackedHandle
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.pipelines import privacy, snapshot, summary, versions

    t = Timers()
    t.wrap(LocalEncoder, "encode_images", "model")
    t.wrap(LocalEncoder, "encode_texts", "model")
    t.wrap(LocalEncoder, "forward_tensors", "forward_image")
    t.wrap(LocalEncoder, "forward_tokens", "forward_text")
    t.wrap(StoreBackedHandle, "_through_cache", "cache_layer")
    t.wrap(StoreBackedHandle, "encode_text_set", "cache_layer")
    _collect_instances(t, StoreBackedHandle)
    t.wrap(privacy, "_store", "store_finding")
    for module, attr in ((privacy, "run_chunk"), (privacy, "calibrate_version"), (privacy, "plan_identity_pairs"),
                         (privacy, "plan_membership_pairs"), (snapshot, "snapshot_registry"),
                         (summary, "summarise_run"), (summary, "new_positive_cases"),
                         (versions, "check_model_version")):
        t.wrap(module, attr, "task")
    try:
        yield t
    finally:
        t.restore()


def _collect_instances(timers: Timers, cls: type) -> None:
    """Remember every instance of ``cls`` created while instrumented (in ``timers.handles``)."""
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        timers.handles.append(self)

    timers._undo.append((cls, "__init__", original))
    cls.__init__ = init


def _register(cfg: PipelineBenchConfig, manifest: Any) -> tuple[int, int]:
    """Register the models and subjects (see the module doc); returns (S, M)."""
    import numpy as np

    from audit_lib import registry
    from audit_lib.imaging import png_bytes
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.pipelines.zoo_registry import LEGAL_BASIS, _checked
    from audit_lib.store import session_scope
    from audit_lib.zoo.build import image_splits, registry_name
    from audit_lib.zoo.data import load_images
    from audit_lib.zoo.profiles import get_profile

    images = load_images()
    splits = image_splits(get_profile(manifest.profile), images)
    clip, target = manifest.entry("tiny-clip"), manifest.entry("simclr-target")
    entries = [clip, target, manifest.by_role("independent")[0]]
    rng = np.random.default_rng(0)
    public = rng.permutation(splits["public"])
    refs = [png_bytes(images.x_train[i]) for i in target.splits["nonmembers"][:cfg.n_references]]
    people = clip.people
    with session_scope() as s:
        for e in entries:
            registry.add_model(s, name=registry_name(manifest.profile, e.name), kind="checkpoint", role="suspect",
                               capabilities=e.capabilities, architecture=e.architecture,
                               weights_path=Path(e.weights_path))
    for e in entries:
        write_reference_nonmembers(registry_name(manifest.profile, e.name),
                                   [(f"reference-{i:03d}.png", b) for i, b in enumerate(refs)])
    if cfg.population == "zoo":
        if cfg.subjects > len(people):
            raise ValueError(f"population zoo has {len(people)} people; use --population synthetic for more")
        rows = _zoo_rows(cfg, people, target, images)
    else:
        if cfg.subjects * cfg.claimed > 8 * len(public):
            raise ValueError(f"{cfg.subjects} x {cfg.claimed} claimed images: only {8 * len(public)} distinct "
                             f"images ({len(public)} public, 8 symmetries each)")
        rows = _synthetic_rows(cfg, people, public, images)
    from tqdm import tqdm

    batch = 100
    n = 0
    for _ in tqdm(range(0, cfg.subjects, batch), desc="registering subjects", unit="x100",
                  disable=cfg.subjects < 200):
        with session_scope() as s:
            for name, sex, photo_items, claimed in itertools.islice(rows, batch):
                registry.add_subject(s, name=name, legal_basis=LEGAL_BASIS, sex=sex, photos=_checked(photo_items),
                                     claimed=_checked(claimed))
                n += 1
    return n, len(entries)


Row = tuple[str, Any, list[tuple[str, bytes]], list[tuple[str, bytes]]]  # name, sex, photos, claimed


def _zoo_rows(cfg: PipelineBenchConfig, people: Any, target: Any, images: Any) -> Iterator[Row]:
    """The zoo population's subjects, one at a time (see the module doc)."""
    from audit_lib.imaging import png_bytes

    members = list(target.splits["members"])
    nonmembers = list(target.splits["nonmembers"])[cfg.n_references:]
    for k, p in enumerate(people[:cfg.subjects]):
        pool = members if k % 2 == 0 else nonmembers
        idx = [pool[(k // 2 * cfg.claimed + j) % len(pool)] for j in range(cfg.claimed)]
        yield (p.name, p.sex, [(Path(f).name, Path(f).read_bytes()) for f in p.heldout_photos],
               [(f"claimed-{i}.png", png_bytes(images.x_train[i])) for i in idx])


def _synthetic_rows(cfg: PipelineBenchConfig, people: Any, public: Any, images: Any) -> Iterable[Row]:
    """The synthetic population's subjects, made one at a time (see the module doc): memory
    does not grow with the number of subjects."""
    from audit_lib.imaging import png_bytes
    from audit_lib.names import decoy_names

    names = decoy_names(cfg.subjects, exclude=[p.name for p in people], seed=7)
    photos = [Path(f) for p in people for f in (*p.heldout_photos, *p.train_photos)]
    for k, name in enumerate(names):
        refs_k = [photos[(3 * k + j) % len(photos)] for j in range(3)]
        claimed = []
        for j in range(cfg.claimed):
            turn, i = divmod(k * cfg.claimed + j, len(public))
            claimed.append((f"claimed-{int(public[i])}.png" if turn == 0 else f"claimed-{int(public[i])}-s{turn}.png",
                            png_bytes(symmetry(images.x_train[int(public[i])], turn))))
        yield name, None, [(f"{k}-{f.name}", f.read_bytes()) for f in refs_k], claimed


def symmetry(image: Any, turn: int) -> Any:
    """One of the 8 symmetries of the square applied to an (H, W, C) image: ``turn`` 0 is
    the image itself, 1-3 rotations by 90, 180, 270 degrees, 4-7 the same after a
    left-right flip."""
    import numpy as np

    if not 0 <= turn < 8:
        raise ValueError(f"symmetry {turn}: expected 0-7")
    out = np.fliplr(image) if turn >= 4 else image
    return np.ascontiguousarray(np.rot90(out, turn % 4))


def run_counts(run_key: str) -> tuple[int, dict[str, int]]:
    from sqlalchemy import func, select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding

    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        rows = s.scalar(select(func.count()).select_from(EvidenceItem).where(
            EvidenceItem.run_id == run.id, EvidenceItem.kind != "finding"))
        found = s.execute(select(Finding.method, Finding.decision, func.count()).where(Finding.run_id == run.id)
                          .group_by(Finding.method, Finding.decision)).all()
    return int(rows or 0), {f"{m}:{d}": int(n) for m, d, n in found}


def machine_info() -> dict[str, Any]:
    """CPUs, Python, platform and the load averages now."""
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _rss_mb() -> dict[str, float]:
    """This process's resident memory now and its peak so far, in MiB."""
    import resource

    now = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"rss": round(now, 1), "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _db_bytes(url: str) -> int:
    """The evidence store's size: the SQLite file after a WAL checkpoint, or the PostgreSQL
    database's ``pg_database_size``."""
    from sqlalchemy import text

    from audit_lib.store.db import checkpoint_sqlite, get_engine

    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        checkpoint_sqlite(url)
        path = Path(url.removeprefix("sqlite:///"))
        return sum(f.stat().st_size for f in (path, Path(f"{path}-wal")) if f.exists())
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_database_size(current_database())")))


@contextmanager
def bench_database(server_url: str, folder: Path, *, suffix: str = "") -> Iterator[str]:
    """The run's evidence store URL: a SQLite file in ``folder`` (``server_url`` empty), or a
    throwaway database ``encoder_audit_bench_<pid><suffix>`` on the PostgreSQL server of
    ``server_url`` (any database's URL there, e.g. ``.../postgres``), created empty and
    dropped when the block ends (``suffix`` tells a second one apart: the Celery run's
    Airflow metadata)."""
    if not server_url:
        yield f"sqlite:///{folder / 'evidence.sqlite'}"
        return
    from sqlalchemy.engine import make_url

    from audit_lib.store.db import create_database, drop_database, redacted_url

    if make_url(server_url).get_backend_name() != "postgresql":
        raise ValueError(f"--database-url {redacted_url(server_url)}: expected a "
                         "PostgreSQL server's URL (postgresql+psycopg2://user@host:port/postgres)")
    name = f"encoder_audit_bench_{os.getpid()}{suffix}"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, name)


def run_pipeline_bench(cfg: PipelineBenchConfig, out: Path | None = None,
                       progress: Callable[[str], None] = log.info, *,
                       work_dir: Path | None = None) -> PipelineBenchResult:
    """Run the benchmark in a fresh folder (``work_dir``, emptied first; default
    ``var/bench/pipeline-<population>-<S>[-pg]``); must run before anything imports airflow."""
    from audit_lib.airflow_env import fresh_embedded

    name = f"pipeline-{cfg.population}-{cfg.subjects}{'-pg' if cfg.database_url else ''}"
    folder = bench_folder(name, work_dir)
    fresh_embedded(folder)
    (folder / MARKER).write_text("encoder-audit bench pipeline: emptied by the next run\n")
    with bench_database(cfg.database_url, folder) as url:
        result = _run(cfg, url, progress)
    return write_result(result, out, name)


def bench_folder(name: str, work_dir: Path | None) -> Path:
    """The run's folder: ``work_dir``, or ``var/bench/<name>``; ValueError when ``work_dir``
    holds something other than a previous benchmark's files (the run empties it)."""
    folder = Path(work_dir or PROJECT_ROOT / "var" / "bench" / name)
    if work_dir is not None and folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise ValueError(f"--work-dir {folder}: not empty and not a previous benchmark's folder; "
                         "give an empty or new folder")
    return folder


def write_result(result: Any, out: Path | None, name: str) -> Any:
    """Write a result dataclass as JSON to ``out`` (default ``var/bench/<name>.json``)."""
    out = Path(out or PROJECT_ROOT / "var" / "bench" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=1))
    return result


def prepare_store(cfg: PipelineBenchConfig, url: str, progress: Callable[[str], None]
                  ) -> tuple[int, int, dict[str, dict[str, float]]]:
    """Point this process at the evidence store ``url``, build (or reuse) the zoo, migrate
    the store and register the population (see the module doc). Returns (S, M, resident
    memory after the zoo and after registration)."""
    from audit_lib.config import get_settings

    os.environ["AUDIT_DATABASE_URL"] = url
    get_settings.cache_clear()
    from audit_lib.pipelines.caches import load_zoo
    from audit_lib.store import upgrade

    manifest = load_zoo(cfg.profile, build=True, progress=False)
    upgrade()
    memory = {"after_zoo": _rss_mb()}
    progress(f"registering {cfg.subjects} {cfg.population} subjects")
    n_subjects, n_models = _register(cfg, manifest)
    memory["after_registration"] = _rss_mb()
    return n_subjects, n_models, memory


def audit_conf(cfg: PipelineBenchConfig) -> dict[str, int]:
    """The ``privacy_audit`` run's params."""
    return {"n_candidates": cfg.n_candidates, "n_views": cfg.n_views, "pairs_per_task": cfg.pairs_per_task}


def _run(cfg: PipelineBenchConfig, url: str, progress: Callable[[str], None]) -> PipelineBenchResult:
    from audit_lib.airflow_env import ensure_pools, load_dags, migrate_metadata

    n_subjects, n_models, memory = prepare_store(cfg, url, progress)
    migrate_metadata()
    ensure_pools()
    dag = load_dags()["privacy_audit"]
    conf = audit_conf(cfg)
    size_before = _db_bytes(url)
    progress(f"privacy_audit on {n_subjects} subjects x {n_models} models ({conf})")
    with instrumented() as timers:
        t0 = time.perf_counter()
        dr = dag.test(run_conf=conf)
        wall = time.perf_counter() - t0
    memory["after_audit"] = _rss_mb()
    size_after = _db_bytes(url)
    tis = list(dr.get_task_instances())
    pairs = {"identity": sum(1 for t in tis if t.task_id == "identity_inference"),
             "membership": sum(1 for t in tis if t.task_id == "membership_inference")}
    evidence_rows, findings = run_counts(f"privacy_audit/{dr.run_id}")
    n_pairs = sum(findings.values())
    queries = sum(int(h.misses) for h in timers.handles)
    hits = sum(int(h.hits) for h in timers.handles)
    tm = dict(timers.total)
    tm["forward"] = tm.get("forward_image", 0.0) + tm.get("forward_text", 0.0)
    db = tm.get("cache_layer", 0.0) - tm.get("model", 0.0) + tm.get("store_finding", 0.0)
    airflow = wall - tm.get("task", 0.0)
    shares = {"model": tm.get("model", 0.0) / wall, "forward": tm.get("forward", 0.0) / wall,
              "db": db / wall, "airflow": airflow / wall, "overhead": (airflow + db) / wall}
    shares["method_compute"] = max(0.0, 1 - shares["model"] - shares["overhead"])
    per = 1000 / max(n_pairs, 1)
    from sqlalchemy.engine import make_url

    from audit_lib.store.db import redacted_url

    return PipelineBenchResult(
        config={**asdict(cfg), "database_url": redacted_url(cfg.database_url) if cfg.database_url else ""},
        subjects=n_subjects, models=n_models,
        pairs={"identity_tasks": pairs["identity"], "membership_tasks": pairs["membership"]},
        task_instances=len(tis), state=str(dr.state), wall_s=round(wall, 2),
        timers_s={**{k: round(v, 2) for k, v in tm.items()}, "db": round(db, 2), "airflow": round(airflow, 2)},
        queries=queries, cache_hits=hits, findings=findings, evidence_rows=evidence_rows,
        shares={k: round(v, 4) for k, v in shares.items()},
        machine=machine_info(),
        database=make_url(url).get_backend_name(), store=redacted_url(url),
        n_pairs=n_pairs, pairs_per_s=round(n_pairs / wall, 2),
        per_pair_ms={"wall": round(wall * per, 1), "non_model": round((wall - tm.get("model", 0.0)) * per, 1),
                     "non_forward": round((wall - tm.get("forward", 0.0)) * per, 1)},
        memory_mb={f"{phase}_{k}": v for phase, m in memory.items() for k, v in m.items()},
        db_mb={"before_audit": round(size_before / 2**20, 2), "after_audit": round(size_after / 2**20, 2),
               "audit_per_1000_pairs": round((size_after - size_before) / 2**20 * per, 2)})


def format_result(r: PipelineBenchResult) -> list[str]:
    """Human-readable lines for the CLI."""
    sh, tm = r.shares, r.timers_s
    return [
        f"privacy_audit: {r.subjects} subjects x {r.models} models ({r.config['population']}), "
        f"{r.task_instances} task instances ({r.pairs['identity_tasks']} identity, "
        f"{r.pairs['membership_tasks']} membership; {r.config['pairs_per_task']} pair(s) per task): {r.state}",
        f"wall {r.wall_s:.1f} s; queries sent to models {r.queries}, answered from the cache {r.cache_hits}; "
        f"{r.evidence_rows} query evidence rows in the run's chain",
        f"model work (preprocess + forward) {tm.get('model', 0):.1f} s = {sh['model']:.1%} of wall "
        f"(forward passes alone {sh['forward']:.1%}: image tower {tm.get('forward_image', 0):.1f} s, "
        f"text tower {tm.get('forward_text', 0):.1f} s)",
        f"overhead {sh['overhead']:.1%} of wall: Airflow {tm['airflow']:.1f} s ({sh['airflow']:.1%}), "
        f"query cache / evidence / findings in the DB {tm['db']:.1f} s ({sh['db']:.1%}); "
        f"method compute (views, scoring) {sh['method_compute']:.1%}",
        f"findings: {', '.join(f'{k}={v}' for k, v in sorted(r.findings.items()))}",
        f"{r.n_pairs} pairs on {r.database}: {r.pairs_per_s:.2f} pairs/s; per pair {r.per_pair_ms['wall']:.0f} ms "
        f"wall, {r.per_pair_ms['non_model']:.0f} ms outside model work, {r.per_pair_ms['non_forward']:.0f} ms "
        "outside forward passes",
        f"memory: peak RSS {r.memory_mb['after_registration_peak']:.0f} MiB after registration, "
        f"{r.memory_mb['after_audit_peak']:.0f} MiB after the audit (RSS now {r.memory_mb['after_audit_rss']:.0f} MiB)",
        f"evidence store: {r.db_mb['before_audit']:.1f} MiB before the audit, {r.db_mb['after_audit']:.1f} MiB "
        f"after; the audit added {r.db_mb['audit_per_1000_pairs']:.1f} MiB per 1,000 pairs",
    ]
