"""The pipeline benchmark (``encoder-audit bench pipeline``): how much of a privacy audit's
wall time is model work, and how much is Airflow and database overhead?

One run: a fresh SQLite evidence store and a fresh embedded Airflow (SQLite metadata) under
``var/bench/pipeline-<S>x<M>``; S subjects and M models of the reference zoo registered;
``privacy_audit`` run once with ``dag.test()`` (tasks in this process, as the demo does).

Subjects:

- ``zoo`` (S <= 40): the tiny CLIP's ORL people under their pseudonymous names, their
  held-out photos as reference photos, ``claimed`` CIFAR-10 images each from the SimCLR
  target's member / non-member splits;
- ``synthetic`` (any S, e.g. 1,000): subjects made of real images: a generated full name
  (``audit_lib.names``), 3 ORL photos (cycled over the 400) and ``claimed`` distinct CIFAR-10
  images from the image set's public split.

Models: the tiny CLIP (identity and membership), the SimCLR target and the first
independent encoder (membership); 20 reference non-members shared by all (``default``).

Measured, by wrapping functions in this process (no sampling):

- ``model_s``: inside the local encoders' ``encode_images`` / ``encode_texts`` (decode,
  preprocess, forward): the model work; ``forward_s`` the forward passes alone;
- ``task_s``: inside our task bodies (``audit_lib.pipelines``): everything but Airflow;
- ``db_s``: the query cache and evidence chain around model calls (lookups, inserts,
  hash-chained evidence rows) plus storing findings;
- ``airflow_s`` = wall - task_s: scheduling loop, task-instance state, XCom;
- overhead = (airflow_s + db_s) / wall. Method compute (views, scoring) is the rest.

Queries and cache hits are the handles' own counters (every input asked for counts once,
including the members of IDIA's decoy text set, which the run records as one evidence
item); ``evidence_rows`` is the number of query evidence rows the run's chain holds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)


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
    t.wrap(LocalEncoder, "forward_tensors", "forward")
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
        members = list(target.splits["members"])
        nonmembers = list(target.splits["nonmembers"])[cfg.n_references:]
        rows = []
        for k, p in enumerate(people[:cfg.subjects]):
            pool = members if k % 2 == 0 else nonmembers
            idx = [pool[(k // 2 * cfg.claimed + j) % len(pool)] for j in range(cfg.claimed)]
            rows.append((p.name, p.sex, [(Path(f).name, Path(f).read_bytes()) for f in p.heldout_photos], idx))
    else:
        from audit_lib.names import decoy_names

        names = decoy_names(cfg.subjects, exclude=[p.name for p in people], seed=7)
        photos = [Path(f) for p in people for f in (*p.heldout_photos, *p.train_photos)]
        if cfg.subjects * cfg.claimed > len(public):
            raise ValueError(f"{cfg.subjects} x {cfg.claimed} claimed images: only {len(public)} public images")
        rows = []
        for k, name in enumerate(names):
            refs_k = [photos[(3 * k + j) % len(photos)] for j in range(3)]
            idx = [int(i) for i in public[k * cfg.claimed:(k + 1) * cfg.claimed]]
            rows.append((name, None, [(f"{k}-{f.name}", f.read_bytes()) for f in refs_k], idx))
    from tqdm import tqdm

    batch = 100
    for start in tqdm(range(0, len(rows), batch), desc="registering subjects", unit="x100", disable=len(rows) < 200):
        with session_scope() as s:
            for name, sex, photo_items, idx in rows[start:start + batch]:
                claimed = [(f"claimed-{i}.png", png_bytes(images.x_train[i])) for i in idx]
                registry.add_subject(s, name=name, legal_basis=LEGAL_BASIS, sex=sex, photos=_checked(photo_items),
                                     claimed=_checked(claimed))
    return len(rows), len(entries)


def _counts(run_key: str) -> tuple[int, dict[str, int]]:
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


def run_pipeline_bench(cfg: PipelineBenchConfig, out: Path | None = None,
                       progress: Callable[[str], None] = log.info) -> PipelineBenchResult:
    """Run the benchmark in a fresh folder; must run before anything imports airflow."""
    from audit_lib.airflow_env import ensure_pools, fresh_embedded, load_dags, migrate_metadata

    fresh_embedded(PROJECT_ROOT / "var" / "bench" / f"pipeline-{cfg.population}-{cfg.subjects}")
    from audit_lib.pipelines.caches import load_zoo
    from audit_lib.store import upgrade

    manifest = load_zoo(cfg.profile, build=True, progress=False)
    upgrade()
    progress(f"registering {cfg.subjects} {cfg.population} subjects")
    n_subjects, n_models = _register(cfg, manifest)
    migrate_metadata()
    ensure_pools()
    dag = load_dags()["privacy_audit"]
    conf = {"n_candidates": cfg.n_candidates, "n_views": cfg.n_views, "pairs_per_task": cfg.pairs_per_task}
    progress(f"privacy_audit on {n_subjects} subjects x {n_models} models ({conf})")
    with instrumented() as timers:
        t0 = time.perf_counter()
        dr = dag.test(run_conf=conf)
        wall = time.perf_counter() - t0
    tis = list(dr.get_task_instances())
    pairs = {"identity": sum(1 for t in tis if t.task_id == "identity_inference"),
             "membership": sum(1 for t in tis if t.task_id == "membership_inference")}
    evidence_rows, findings = _counts(f"privacy_audit/{dr.run_id}")
    queries = sum(int(h.misses) for h in timers.handles)
    hits = sum(int(h.hits) for h in timers.handles)
    tm = dict(timers.total)
    db = tm.get("cache_layer", 0.0) - tm.get("model", 0.0) + tm.get("store_finding", 0.0)
    airflow = wall - tm.get("task", 0.0)
    shares = {"model": tm.get("model", 0.0) / wall, "forward": tm.get("forward", 0.0) / wall,
              "db": db / wall, "airflow": airflow / wall, "overhead": (airflow + db) / wall}
    shares["method_compute"] = max(0.0, 1 - shares["model"] - shares["overhead"])
    import platform

    result = PipelineBenchResult(
        config=asdict(cfg), subjects=n_subjects, models=n_models,
        pairs={"identity_tasks": pairs["identity"], "membership_tasks": pairs["membership"]},
        task_instances=len(tis), state=str(dr.state), wall_s=round(wall, 2),
        timers_s={**{k: round(v, 2) for k, v in tm.items()}, "db": round(db, 2), "airflow": round(airflow, 2)},
        queries=queries, cache_hits=hits, findings=findings, evidence_rows=evidence_rows,
        shares={k: round(v, 4) for k, v in shares.items()},
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()})
    out = Path(out or PROJECT_ROOT / "var" / "bench" / f"pipeline-{cfg.population}-{cfg.subjects}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=1))
    return result


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
        f"(forward passes alone {sh['forward']:.1%})",
        f"overhead {sh['overhead']:.1%} of wall: Airflow {tm['airflow']:.1f} s ({sh['airflow']:.1%}), "
        f"query cache / evidence / findings in the DB {tm['db']:.1f} s ({sh['db']:.1%}); "
        f"method compute (views, scoring) {sh['method_compute']:.1%}",
        f"findings: {', '.join(f'{k}={v}' for k, v in sorted(r.findings.items()))}",
    ]
