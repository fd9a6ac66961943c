"""The encoder benchmark: is the handle as fast as the model it wraps?

Measured in one run, on one model, device and batch size, over real images (CIFAR-10
test images written as PNG files, or scikit-image crops when the shared data is absent):

- ``raw``: the network's forward pass on already preprocessed tensors (images/s);
- ``handle``: :class:`LocalEncoder` from image files on disk (read, decode, preprocess,
  forward), and its ratio to ``raw`` (goal >= 0.9);
- ``server``: the same through the reference server over loopback HTTP (RemoteEncoder);
- ``cache``: cache hits through :class:`StoreBackedHandle` on SQLite, without and with an
  evidence item per query.

Each figure is the median of ``repeats`` passes, interleaved so that load from other
processes hits all of them alike. Random weights are fine: speed does not depend on them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What to measure."""

    architecture: str = "open_clip:tiny-clip-vit-l4"  # a model of realistic per-image cost
    n_images: int = 1024  # images per pass
    batch_size: int | None = None  # None: the handle's per-device default
    device: str | None = None  # None: cuda when present, else cpu
    repeats: int = 3  # passes per figure; the median is reported


@dataclass
class BenchResult:
    config: dict[str, Any]
    device: str
    batch_size: int
    machine: dict[str, Any]
    images_per_s: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    passes: dict[str, list[float]] = field(default_factory=dict)


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` real images as PNG files in ``folder``."""
    from PIL import Image

    from audit_lib.sample_data import cifar10_path

    folder.mkdir(parents=True, exist_ok=True)
    path = cifar10_path()
    if path is not None:
        with np.load(path) as npz:
            arrays = np.concatenate([npz["x_test"], npz["x_train"]])[:n]
    else:  # pragma: no cover - without the shared data
        from skimage import data

        big = data.astronaut()
        arrays = [big[(i * 7) % 448:(i * 7) % 448 + 64, (i * 13) % 448:(i * 13) % 448 + 64] for i in range(n)]
    out = []
    for i, arr in enumerate(arrays):
        p = folder / f"{i:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        p.write_bytes(buf.getvalue())
        out.append(p)
    return out


def _rate(n: int, fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def run_benchmark(config: BenchConfig | None = None, out_path: Path | None = None) -> BenchResult:
    """Measure every figure; write JSON to ``out_path`` (default var/bench/encoders.json)."""
    import torch
    from tqdm import tqdm

    from audit_lib.config import get_settings
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.cache import StoreBackedHandle
    from audit_lib.encoders.loading import save_weights
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.encoders.remote import RemoteEncoder
    from audit_lib.server.testing import running_server

    cfg = config or BenchConfig()
    with tempfile.TemporaryDirectory(prefix="encoder-bench-") as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        weights = tmp / "weights.safetensors"
        save_weights(build(cfg.architecture).module, weights)
        enc = LocalEncoder.from_checkpoint(cfg.architecture, weights, device=cfg.device,
                                           batch_size=cfg.batch_size)
        paths = write_images(tmp / "images", cfg.n_images)
        n = len(paths)
        bs = enc.batch_size
        tensors = [enc.preprocess([p.read_bytes() for p in paths[i:i + bs]]) for i in range(0, n, bs)]

        def raw() -> None:
            for t in tensors:
                enc.forward_tensors(t)
            if enc.device.startswith("cuda"):
                torch.cuda.synchronize()

        def handle() -> None:
            enc.encode_images([p.read_bytes() for p in paths])

        result = BenchResult(config=asdict(cfg), device=enc.device, batch_size=bs, machine={
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
        passes: dict[str, list[float]] = {k: [] for k in ("raw", "handle", "server", "cache_hit",
                                                           "cache_hit_with_evidence")}
        os.environ["AUDIT_CRED_BENCH"] = "bench-" + os.urandom(8).hex()
        db_url = f"sqlite:///{tmp / 'bench.sqlite'}"
        from audit_lib import registry
        from audit_lib.store.db import session_scope, upgrade

        upgrade(db_url)
        with session_scope(db_url) as s:
            model_id = registry.add_model(s, name="bench", kind="checkpoint", role="owned",
                                          capabilities=sorted(enc.capabilities),
                                          architecture=cfg.architecture, weights_path=weights).id
        with running_server(encoder=enc, keys={os.environ["AUDIT_CRED_BENCH"]: {}}, max_batch=max(bs, 256)) as url:
            remote = RemoteEncoder(url, {"max_batch": bs}, "AUDIT_CRED_BENCH",
                                   embedding_dim=enc.embedding_dim, timeout=300)

            def server() -> None:
                remote.encode_images([p.read_bytes() for p in paths])

            raw(), handle(), server()  # warm-up: threads, allocator, connections
            for _ in tqdm(range(cfg.repeats), desc="bench passes", unit="pass"):
                passes["raw"].append(_rate(n, raw))
                passes["handle"].append(_rate(n, handle))
                passes["server"].append(_rate(n, server))
            remote.close()
        cached = StoreBackedHandle(enc, db_url=db_url, model_id=model_id)
        cached.encode_images([p.read_bytes() for p in paths])  # fill the cache
        for i in range(cfg.repeats):
            passes["cache_hit"].append(_rate(n, lambda: cached.encode_images([p.read_bytes() for p in paths])))
            logged = StoreBackedHandle(enc, db_url=db_url, model_id=model_id, run_key=f"bench-{i}")
            passes["cache_hit_with_evidence"].append(
                _rate(n, lambda: logged.encode_images([p.read_bytes() for p in paths])))
        enc.close()
    result.passes = {k: [round(v, 1) for v in vals] for k, vals in passes.items()}
    result.images_per_s = {k: round(statistics.median(v), 1) for k, v in passes.items()}
    raw_rate = result.images_per_s["raw"]
    result.ratios = {"handle/raw": round(result.images_per_s["handle"] / raw_rate, 3),
                     "server/raw": round(result.images_per_s["server"] / raw_rate, 3)}
    out = out_path or get_settings().data_dir / "bench" / "encoders.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=2))
    log.info("benchmark written to %s", out)
    return result


def format_table(result: BenchResult) -> str:
    """The benchmark as a small text table."""
    rows = [("raw forward (preprocessed tensors)", "raw", None),
            ("handle, from PNG files on disk", "handle", "handle/raw"),
            ("reference server, loopback HTTP", "server", "server/raw"),
            ("cache hits (SQLite)", "cache_hit", None),
            ("cache hits + evidence chain", "cache_hit_with_evidence", None)]
    c = result.config
    lines = [f"encoder benchmark: {c['architecture']}, {c['n_images']} images, device {result.device}, "
             f"batch {result.batch_size}, {result.machine['cpu_count']} CPU cores, median of {c['repeats']}",
             f"{'path':<38}{'images/s':>12}{'ratio':>10}"]
    for label, key, ratio in rows:
        r = f"{result.ratios[ratio]:.3f}" if ratio else ""
        lines.append(f"{label:<38}{result.images_per_s[key]:>12.1f}{r:>10}")
    return "\n".join(lines)
