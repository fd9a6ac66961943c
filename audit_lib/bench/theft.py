"""The realistic-scale theft benchmark: StolenEncoder (Liu et al., CCS 2022) against a target
pre-trained on thousands of real images, and the AWEncoder watermark in the stolen copies.

StolenEncoder's headline is that queries on about 5% of the target's pre-training set give
a copy with similar downstream accuracy. The ci target trains on 64 images (5% = 3 queries),
so the claim is measured here instead, on the product's own code paths:

1. a SimCLR target (default ``small_cnn:small-cnn-32`` on 5,000 CIFAR-10 training images),
   and independent encoders (same architecture, other images) registered as ``reference``
   models: the theft finding's null and the watermark's independence null;
2. the owner's image sets registered with :func:`audit_lib.ownership.owner_data.add_model_data`:
   ``public`` (surrogate images, disjoint from the target's training set), ``downstream``
   (CIFAR-10 test images, ten class folders) and ``owner`` (part of the training set);
3. the theft curve over 1%, 5%, 10% of the training-set size through the reference server,
   without and with each output defence (:func:`audit_lib.ownership.theft.run_theft_risk`);
4. the same target deployed as an API with its own request/response shape (the reference
   server behind :class:`ReshapingProxy`), registered with a non-default adapter and
   stolen through its evidence-recording handle;
5. the watermark: the target enrolled with AWEncoder, the marked encoder stolen at 5% (no
   defence and each defence), every copy verified white-box and black-box; an independent
   reference encoder verified the same way as the negative control.

Everything runs in its own evidence store and data folder (``var/bench/theft-work``); the
trained target and independents are cached under ``var/bench/theft-cache`` by a hash of
their recipe and images. The result is written as JSON (default ``var/bench/theft.json``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_OUT = PROJECT_ROOT / "var" / "bench" / "theft.json"
API_PATH = "/api/v2/vectors"  # the deployed API's own route (not the reference server's /v1/embed/images)


@dataclass(frozen=True)
class TheftBenchConfig:
    """What to train and measure (defaults: the README's reference measurement)."""

    architecture: str = "small_cnn:small-cnn-32"
    train_images: int = 5000  # the target's pre-training set (CIFAR-10 training images)
    pretrain_epochs: int = 30  # SimCLR epochs of the target
    n_independents: int = 3  # reference encoders trained on other images (the nulls)
    independent_images: int = 1500
    independent_epochs: int = 10
    public_images: int = 600  # surrogate images (>= the largest budget), disjoint from the training set
    owner_images: int = 1000  # the owner's images the watermark is fine-tuned in on (part of the training set)
    downstream_per_class: int = 100  # CIFAR-10 test images per class (half train, half test of the classifier)
    budgets: str = "1%,5%,10%"
    reference_budget: str = "5%"
    defences: tuple[str, ...] = ("noise:0.1", "topk:32", "round:2")
    steal_epochs: int = 100  # published number of epochs
    steal_lr: float = 0.05  # SGD (the paper's 1e-3 needs far more steps on a small CNN)
    watermark_steps: int | None = None  # None: the recipe's default
    watermark_controls: int = 99
    alpha: float = 0.01
    seed: int = 0
    threads: int = 1  # torch CPU threads (1: shared cores)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["defences"] = list(self.defences)
        return d


@dataclass
class TheftBenchResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    wall_s: dict[str, float] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    checkpoint_curve: list[dict[str, Any]] = field(default_factory=list)
    api_curve: list[dict[str, Any]] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    share_at_reference: dict[str, float] = field(default_factory=dict)  # stolen acc / target acc, per access/defence
    watermark: list[dict[str, Any]] = field(default_factory=list)


# --- the owner's API with its own shape ------------------------------------------------------

class ReshapingProxy:
    """An API with its own shape in front of the reference server: POST ``/api/v2/vectors``
    ``{"payload": {"pictures": [{"png": B64}]}}`` -> ``{"result": {"items": [{"vector": [...]}]}}``
    (the credential header is passed through). Counts the inputs it forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.inputs = 0
        self.url = ""
        self._lock = threading.Lock()

    def __enter__(self) -> ReshapingProxy:
        import httpx

        proxy = self
        client = httpx.Client(timeout=300)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path != API_PATH:
                    return self._send(404, b'{"error": "no such route"}')
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pictures = [p["png"] for p in body["payload"]["pictures"]]
                r = client.post(f"{proxy.upstream}/v1/embed/images", json={"images": pictures},
                                headers={"Authorization": self.headers.get("Authorization", "")})
                if r.status_code != 200:
                    return self._send(r.status_code, r.content)
                with proxy._lock:
                    proxy.inputs += len(pictures)
                items = [{"vector": v} for v in r.json()["embeddings"]]
                return self._send(200, json.dumps({"result": {"items": items}}).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._client = client
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def proxy_adapter(embedding_dim: int) -> dict[str, Any]:
    """The adapter of :class:`ReshapingProxy`'s shape (laid over the ``encoder-audit`` preset)."""
    from audit_lib.encoders.adapter import resolve_adapter

    return resolve_adapter("encoder-audit", {
        "images": {"path": API_PATH, "input_path": "payload.pictures", "item": {"png": "{b64}"},
                   "response": "result.items[*].vector"}, "embedding_dim": int(embedding_dim)}).to_json()


# --- training (cached) -----------------------------------------------------------------------

def _cached_simclr(cache: Path, name: str, architecture: str, images: np.ndarray, recipe: Any, seed: int) -> Path:
    """A SimCLR encoder of ``architecture`` on ``images``, cached by a hash of its inputs."""
    from audit_lib.encoders.loading import save_weights
    from audit_lib.evidence import canonical_json, sha256_hex
    from audit_lib.zoo.train import train_simclr

    key = sha256_hex(canonical_json({"v": 1, "arch": architecture, "recipe": recipe.as_dict(), "seed": seed,
                                     "images": sha256_hex(np.ascontiguousarray(images).tobytes())}))
    path = cache / f"{name}-{key[:16]}.safetensors"
    if not path.is_file():
        log.info("bench theft: training %s (%d images, %d epochs)", name, len(images), recipe.epochs)
        net, _ = train_simclr(architecture, images, recipe, seed=seed, desc=name, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        save_weights(net.module, tmp)
        tmp.replace(path)
    return path


def _write_folder(folder: Path, images: np.ndarray, prefix: str) -> None:
    from audit_lib.imaging import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        (folder / f"{prefix}-{i:05d}.png").write_bytes(png_bytes(im))


@contextmanager
def _isolated_store(work: Path) -> Iterator[str]:
    """A fresh SQLite evidence store and data folder for the benchmark (environment restored)."""
    from audit_lib.config import get_settings
    from audit_lib.store import upgrade

    work.mkdir(parents=True, exist_ok=True)
    db = work / "evidence.sqlite"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    saved = {k: os.environ.get(k) for k in ("AUDIT_DATABASE_URL", "AUDIT_DATA_DIR")}
    os.environ["AUDIT_DATABASE_URL"], os.environ["AUDIT_DATA_DIR"] = url, str(work / "var")
    get_settings.cache_clear()
    try:
        upgrade(url)
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads()}


def _input_size(architecture: str) -> int:
    """The architecture's input size (what the deployed API's owner states for it)."""
    from audit_lib.encoders.architectures import build

    return int(build(architecture).preprocess.image_size)


def _share(curve: list[dict[str, Any]], budget: int) -> dict[str, float]:
    return {p["defence"]: round(p["stolen_accuracy"] / p["target_accuracy"], 4)
            for p in curve if p["budget"] == budget and p["target_accuracy"] > 0}


# --- the benchmark ---------------------------------------------------------------------------

def run_theft_bench(config: TheftBenchConfig | None = None, out_path: Path | None = None, *,
                    work_dir: Path | None = None, cache_dir: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> TheftBenchResult:
    """Run the benchmark (module doc) and write its JSON to ``out_path``."""
    import torch

    from audit_lib import registry
    from audit_lib.methods.theft import StealRecipe, parse_budgets
    from audit_lib.ownership.owner_data import add_model_data
    from audit_lib.ownership.theft import run_theft_risk
    from audit_lib.server.testing import running_server
    from audit_lib.store import session_scope
    from audit_lib.zoo.data import load_cifar10
    from audit_lib.zoo.recipes import SimCLRRecipe

    cfg = config or TheftBenchConfig()
    say = progress or (lambda line: log.info("%s", line))
    out_path = Path(out_path or DEFAULT_OUT)
    work = Path(work_dir or PROJECT_ROOT / "var" / "bench" / "theft-work")
    cache = Path(cache_dir or PROJECT_ROOT / "var" / "bench" / "theft-cache")
    cifar = load_cifar10()
    if cifar is None:
        raise ValueError("bench theft: the shared CIFAR-10 subset is missing (sample data: ../shared/data/cifar10)")
    need = cfg.train_images + cfg.public_images + cfg.independent_images
    if need > len(cifar.x_train):
        raise ValueError(f"bench theft: {need} training images needed (target + public + independents), "
                         f"the CIFAR-10 subset has {len(cifar.x_train)}: lower --train-images")
    max_budget = max(parse_budgets(cfg.budgets, cfg.train_images))
    if max_budget > cfg.public_images:
        raise ValueError(f"bench theft: budget {max_budget} exceeds the {cfg.public_images} public images")
    torch.set_num_threads(cfg.threads)
    result = TheftBenchResult(cfg.as_dict(), _machine())
    t_all = time.perf_counter()

    order = np.random.default_rng(cfg.seed).permutation(len(cifar.x_train))
    train_idx = order[:cfg.train_images]
    public_idx = order[cfg.train_images:cfg.train_images + cfg.public_images]
    rest = order[cfg.train_images + cfg.public_images:]
    t0 = time.perf_counter()
    recipe = SimCLRRecipe(epochs=cfg.pretrain_epochs, batch_size=256, lr=3e-3, warmup_steps=20, temperature=0.2)
    target_w = _cached_simclr(cache, "target", cfg.architecture, cifar.x_train[train_idx], recipe, cfg.seed + 1)
    result.wall_s["target_pretraining"] = round(time.perf_counter() - t0, 1)
    say(f"target: {cfg.train_images} images, {cfg.pretrain_epochs} epochs ({result.wall_s['target_pretraining']} s)")
    t0 = time.perf_counter()
    ind_recipe = SimCLRRecipe(epochs=cfg.independent_epochs, batch_size=256, lr=3e-3, warmup_steps=10,
                              temperature=0.2)
    rng = np.random.default_rng(cfg.seed + 2)
    ref_w = [_cached_simclr(cache, f"independent-{k}", cfg.architecture,
                            cifar.x_train[np.sort(rng.choice(rest, size=min(cfg.independent_images, len(rest)),
                                                             replace=False))], ind_recipe, 100 + k)
             for k in range(cfg.n_independents)]
    result.wall_s["independents"] = round(time.perf_counter() - t0, 1)
    say(f"independents: {cfg.n_independents} ({result.wall_s['independents']} s)")

    with _isolated_store(work) as db_url:
        folders = {"owner": work / "owner", "public": work / "public", "downstream": work / "downstream"}
        if not (work / ".folders-done").is_file():
            _write_folder(folders["owner"], cifar.x_train[train_idx[:cfg.owner_images]], "own")
            _write_folder(folders["public"], cifar.x_train[public_idx], "pub")
            for c, name in enumerate(cifar.classes):
                idx = np.flatnonzero(cifar.y_test == c)[:cfg.downstream_per_class]
                _write_folder(folders["downstream"] / str(name), cifar.x_test[idx], str(name))
            (work / ".folders-done").write_text("ok")
        with session_scope() as s:
            target = registry.add_model(s, name="bench-target", kind="checkpoint", role="owned",
                                        capabilities="image", architecture=cfg.architecture, weights_path=target_w)
            add_model_data(s, target, owner=folders["owner"], public=folders["public"],
                           downstream=folders["downstream"])
            for k, w in enumerate(ref_w):
                registry.add_model(s, name=f"bench-independent-{k}", kind="checkpoint", role="reference",
                                   capabilities="image", architecture=cfg.architecture, weights_path=w)
            target_id = target.id
        steal_recipe = StealRecipe(architecture=cfg.architecture, epochs=cfg.steal_epochs, lr=cfg.steal_lr)
        ref_q = parse_budgets(cfg.reference_budget, cfg.train_images)[0]

        t0 = time.perf_counter()
        got = run_theft_risk(target_id, budgets=cfg.budgets, defences=cfg.defences, recipe=steal_recipe,
                             reference_budget=cfg.reference_budget, train_size=cfg.train_images,
                             out_dir=work / "theft-checkpoint", alpha=0.05, progress=False, database_url=db_url)
        result.wall_s["curve_reference_server"] = round(time.perf_counter() - t0, 1)
        result.checkpoint_curve = got.result.details["curve"]
        result.target = {"downstream_accuracy": result.checkpoint_curve[0]["target_accuracy"],
                         "train_images": cfg.train_images, "pretrain_epochs": cfg.pretrain_epochs}
        result.findings["checkpoint"] = {"decision": got.result.decision, "p_value": got.result.p_value,
                                         "statistic": got.result.statistic}
        say(f"curve through the reference server ({result.wall_s['curve_reference_server']} s)")

        t0 = time.perf_counter()
        api_key, env = "sk-bench-" + secrets.token_urlsafe(12), f"AUDIT_CRED_BENCH_THEFT_{secrets.token_hex(3).upper()}"
        os.environ[env] = api_key
        try:
            with running_server(cfg.architecture, target_w, {api_key: {"name": "owner-api"}}) as upstream, \
                    ReshapingProxy(str(upstream)) as proxy:
                with session_scope() as s:
                    api = registry.add_model(s, name="bench-target-api", kind="api", role="owned",
                                             capabilities="image", endpoint_url=proxy.url,
                                             adapter=proxy_adapter(128), credential_name=env)
                    add_model_data(s, api, public=folders["public"], downstream=folders["downstream"])
                    api_id = api.id
                got = run_theft_risk(api_id, budgets=cfg.budgets, recipe=steal_recipe,
                                     reference_budget=cfg.reference_budget, train_size=cfg.train_images,
                                     image_size=_input_size(cfg.architecture),
                                     out_dir=work / "theft-api", alpha=0.05, progress=False, database_url=db_url)
                forwarded = proxy.inputs
        finally:
            os.environ.pop(env, None)
        result.wall_s["curve_api"] = round(time.perf_counter() - t0, 1)
        result.api_curve = got.result.details["curve"]
        result.findings["api"] = {"decision": got.result.decision, "p_value": got.result.p_value,
                                  "statistic": got.result.statistic, "inputs_forwarded": forwarded,
                                  "queries_sent": got.result.details.get("queries_sent")}
        result.share_at_reference = {**{f"server/{k}": v for k, v in _share(result.checkpoint_curve, ref_q).items()},
                                     **{f"api/{k}": v for k, v in _share(result.api_curve, ref_q).items()}}
        say(f"curve through the API ({result.wall_s['curve_api']} s)")

        t0 = time.perf_counter()
        result.watermark = _watermark_in_stolen_copies(cfg, target_id, ref_q, steal_recipe, db_url, work)
        result.wall_s["watermark"] = round(time.perf_counter() - t0, 1)
        say(f"watermark in copies stolen at {ref_q} queries ({result.wall_s['watermark']} s)")
    result.wall_s["total"] = round(time.perf_counter() - t_all, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(asdict(result), indent=1, default=str))
    return result


def _watermark_in_stolen_copies(cfg: TheftBenchConfig, target_id: int, budget: int, steal_recipe: Any,
                                db_url: str, work: Path) -> list[dict[str, Any]]:
    """Enrol the watermark on the target, steal the marked encoder at ``budget`` queries
    through the reference server (no defence and each defence), and verify every copy and
    one independent encoder, white-box and black-box."""
    from audit_lib import registry
    from audit_lib.encoders.loading import save_weights
    from audit_lib.encoders.remote import RemoteEncoder
    from audit_lib.methods.theft import parse_defence, steal_encoder
    from audit_lib.methods.watermark import WatermarkRecipe
    from audit_lib.ownership.watermark import enrol_watermark_model, verify_watermark_suspect, registered_data
    from audit_lib.server.testing import running_server
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    kw = {"n_controls": cfg.watermark_controls}
    if cfg.watermark_steps:
        kw["embed_steps"] = cfg.watermark_steps
    enrol = enrol_watermark_model(target_id, recipe=WatermarkRecipe(**kw), alpha=cfg.alpha,
                                  cache_dir=work / "ownership", min_null=cfg.n_independents, progress=False,
                                  database_url=db_url)
    with session_scope(db_url) as s:
        surrogate = registered_data(s, s.get(AuditedModel, target_id)).surrogate[:budget]
    labels = ["none", *cfg.defences]
    keys = {lb: "sk-bench-wm-" + secrets.token_urlsafe(12) for lb in labels}
    suspects: dict[str, int] = {}
    with running_server(cfg.architecture, enrol.weights_path,
                        {keys[lb]: {"name": f"wm-{lb}", "defences": parse_defence(lb) if lb != "none" else {}}
                         for lb in labels}) as url:
        for lb in labels:
            env = f"AUDIT_CRED_BENCH_WM_{secrets.token_hex(3).upper()}"
            os.environ[env] = keys[lb]
            try:
                copy = steal_encoder(RemoteEncoder(str(url), None, env, budget=budget), surrogate, steal_recipe,
                                     progress=False)
            finally:
                os.environ.pop(env, None)
            path = work / "stolen" / f"stolen-marked-{lb.replace(':', '-')}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(copy.network.module, path)
            with session_scope(db_url) as s:
                suspects[f"stolen at {budget} ({lb})"] = registry.add_model(
                    s, name=f"bench-stolen-marked-{lb}", kind="checkpoint", role="suspect", capabilities="image",
                    architecture=cfg.architecture, weights_path=path).id
    with session_scope(db_url) as s:
        suspects["independent (control)"] = registry.get_model(s, "bench-independent-0").id
    rows = []
    for name, sid in suspects.items():
        row = {"suspect": name}
        for mode, black in (("white_box", False), ("black_box", True)):
            r = verify_watermark_suspect(enrol.marked_model_id, sid, black_box=black, run_key=f"bench-wm-{sid}-{mode}",
                                         database_url=db_url).result
            row[mode] = {"decision": r.decision, "p_value": r.p_value, "statistic": r.statistic}
        rows.append(row)
    return rows


def format_table(result: TheftBenchResult) -> list[str]:
    """The README's table lines: the curve per access path and defence, the share at the
    reference budget and the watermark in the stolen copies."""
    c = result.config
    lines = [f"target: {c['architecture']} SimCLR on {c['train_images']} CIFAR-10 images, {c['pretrain_epochs']} "
             f"epochs; downstream accuracy {result.target.get('downstream_accuracy', float('nan')):.3f}; "
             f"steal {c['steal_epochs']} epochs SGD lr {c['steal_lr']}; machine {result.machine['cpu_count']} CPU "
             f"cores ({result.machine['device']}), {result.machine['torch_threads']} torch thread(s); "
             f"wall {result.wall_s.get('total', 0):.0f} s",
             "| access | defence | queries | share of train set | stolen acc | target acc | acc share | agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for access, curve in (("reference server", result.checkpoint_curve), ("API (own adapter)", result.api_curve)):
        for p in curve:
            share = p["stolen_accuracy"] / p["target_accuracy"] if p["target_accuracy"] else float("nan")
            frac = p.get("budget_fraction")
            lines.append(f"| {access} | {p['defence']} | {p['budget']} | {frac:.0%} | {p['stolen_accuracy']:.3f} | "
                         f"{p['target_accuracy']:.3f} | {share:.2f} | {p['agreement']:.3f} |" if frac is not None else
                         f"| {access} | {p['defence']} | {p['budget']} | - | {p['stolen_accuracy']:.3f} | "
                         f"{p['target_accuracy']:.3f} | {share:.2f} | {p['agreement']:.3f} |")
    lines += ["", "| suspect | white-box p | decision | black-box p | decision |", "|---|---|---|---|---|"]
    for row in result.watermark:
        w, b = row["white_box"], row["black_box"]
        lines.append(f"| {row['suspect']} | {w['p_value']:.3g} | {w['decision']} | {b['p_value']:.3g} | "
                     f"{b['decision']} |")
    return lines
