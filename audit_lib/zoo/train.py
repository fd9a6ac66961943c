"""The zoo's training loops: SimCLR (image only) and CLIP (image-caption), seeded.

Networks come only from :func:`audit_lib.encoders.architectures.build`, so a trained module
saved with :func:`save_checkpoint` (``module.state_dict()`` in safetensors) loads back with
``LocalEncoder.from_checkpoint(architecture, weights_path)``.

Determinism on CPU: :func:`seeded` seeds torch, switches on deterministic algorithms and
fixes the number of threads (float sums depend on how work is split); every random draw of
the loops (batch order, augmentations, caption templates) comes from one seeded
``torch.Generator``. The same recipe, data, seed and thread count give byte-identical
weights on the same machine type. On CUDA, determinism is asked for but only warned about.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from audit_lib.encoders.architectures import Network, build
from audit_lib.zoo.augment import BatchAugment
from audit_lib.zoo.data import normalize, to_float
from audit_lib.zoo.losses import clip_loss, nt_xent
from audit_lib.zoo.recipes import ClipRecipe, SimCLRRecipe

log = logging.getLogger(__name__)
CPU_THREADS = 2  # fixed thread count for CPU training (part of every config hash)


@dataclass
class TrainStats:
    """What a training run cost and where its loss ended."""

    steps: int = 0
    first_loss: float = float("nan")
    final_loss: float = float("nan")  # mean over the last epoch's steps
    wall_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time (all threads)
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "first_loss": round(self.first_loss, 5),
                "final_loss": round(self.final_loss, 5), "wall_s": round(self.wall_s, 2),
                "cpu_s": round(self.cpu_s, 2), "device": self.device, **self.extra}


def resolve_device(device: str | None) -> str:
    """``cuda`` when asked for or when available and nothing was asked for, else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r}: expected cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch on this machine")
    return device


@contextmanager
def seeded(seed: int, device: str = "cpu", num_threads: int = CPU_THREADS) -> Iterator[torch.Generator]:
    """Seed torch, make algorithms deterministic and fix CPU threads for the duration;
    yields the CPU generator all of the loop's random draws must use. Restores the
    previous global settings afterwards."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    on_gpu = device.startswith("cuda")
    if on_gpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=on_gpu)
    if not on_gpu:
        torch.set_num_threads(num_threads)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress(total: int, desc: str, enabled: bool):  # noqa: ANN202 - a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, mininterval=2.0, leave=False)


def _batches(n: int, batch_size: int, g: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches; a last batch of one image is dropped."""
    perm = torch.randperm(n, generator=g)
    return [b for b in perm.split(batch_size) if len(b) >= 2]


def _check_size(architecture: str, images: np.ndarray, size: int) -> None:
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{architecture}: training images must be uint8 (N, {size}, {size}, 3), "
                         f"got {images.shape}")


def _run(step: Callable[[torch.Tensor], torch.Tensor], n: int, recipe: SimCLRRecipe | ClipRecipe,
         opt: torch.optim.Optimizer, g: torch.Generator, stats: TrainStats, desc: str,
         progress: bool) -> None:
    """The shared loop: shuffled batches from ``g``, warm-up + cosine learning rate, one
    optimiser step per batch, ``recipe.epochs`` epochs or ``recipe.max_steps`` steps."""
    steps_per_epoch = len(_batches(n, recipe.batch_size, torch.Generator().manual_seed(0)))
    total = recipe.epochs * steps_per_epoch
    if recipe.max_steps:
        total = min(total, recipe.max_steps)
    last_epoch: list[float] = []
    with _progress(total, desc, progress) as bar:
        while stats.steps < total:
            epoch: list[float] = []
            for idx in _batches(n, recipe.batch_size, g):
                if stats.steps >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * _schedule(stats.steps, total, recipe.warmup_steps)
                loss = step(idx)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {float(loss.detach())} at step {stats.steps}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats.steps += 1
                epoch.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{epoch[-1]:.3f}", refresh=False)
            if epoch:
                last_epoch = epoch
                if math.isnan(stats.first_loss):
                    stats.first_loss = epoch[0]
    stats.final_loss = float(np.mean(last_epoch)) if last_epoch else float("nan")


def train_simclr(architecture: str, images: np.ndarray, recipe: SimCLRRecipe, *, seed: int,
                 device: str = "cpu", desc: str = "simclr", progress: bool = True) -> tuple[Network, TrainStats]:
    """Pre-train ``architecture`` on ``images`` (uint8 (N, S, S, 3) at the network's input
    size) with SimCLR's NT-Xent loss; returns the network (eval mode, on the CPU) and stats."""
    if len(images) < 2:
        raise ValueError(f"{architecture}: SimCLR needs at least 2 training images, got {len(images)}")
    stats = TrainStats(device=device)
    t0, c0 = time.perf_counter(), time.process_time()
    with seeded(seed, device) as g:
        net = build(architecture)  # random initialisation from the seeded global generator
        _check_size(architecture, images, net.preprocess.image_size)
        module = net.module.to(device).train()
        head: nn.Module = nn.Identity()
        if recipe.proj_dim:
            head = nn.Sequential(nn.Linear(net.embed_dim, net.embed_dim), nn.ReLU(inplace=True),
                                 nn.Linear(net.embed_dim, recipe.proj_dim))
        head = head.to(device).train()
        params = list(module.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        x_all = to_float(images).to(device)
        aug = BatchAugment(recipe.augment)
        mean, std = net.preprocess.mean, net.preprocess.std

        def step(idx: torch.Tensor) -> torch.Tensor:
            batch = x_all[idx.to(device)]
            views = torch.cat([aug(batch, g), aug(batch, g)])
            z = head(module(normalize(views, mean, std)))
            return nt_xent(z[: len(idx)], z[len(idx):], recipe.temperature)

        _run(step, len(images), recipe, opt, g, stats, desc, progress)
        module.eval().cpu()
    stats.wall_s, stats.cpu_s = time.perf_counter() - t0, time.process_time() - c0
    log.info("%s: %d steps, loss %.3f -> %.3f in %.1f s", desc, stats.steps, stats.first_loss,
             stats.final_loss, stats.wall_s)
    return net, stats


def train_clip(architecture: str, images: np.ndarray, captions: Sequence[Sequence[str]],
               groups: Sequence[int], recipe: ClipRecipe, *, seed: int, device: str = "cpu",
               desc: str = "clip", progress: bool = True) -> tuple[Network, TrainStats]:
    """Train an open_clip ``architecture`` on image-caption pairs with CLIP's loss.

    ``images[i]`` (uint8, network input size) is paired each epoch with one caption drawn
    from ``captions[i]`` (its variants, e.g. templates with the person's name);
    ``groups[i]`` names the pair's caption target for the group-aware loss.
    """
    if not len(images) == len(captions) == len(groups):
        raise ValueError(f"{len(images)} images, {len(captions)} caption lists and {len(groups)} groups: "
                         "expected one of each per pair")
    if any(len(c) == 0 for c in captions):
        raise ValueError("every image needs at least one caption")
    if not architecture.startswith("open_clip:"):
        raise ValueError(f"{architecture}: not an image-text (open_clip) architecture")
    flat = [c for variants in captions for c in variants]
    offsets = torch.tensor(np.cumsum([0] + [len(v) for v in captions[:-1]]))
    counts = torch.tensor([len(v) for v in captions])
    group_ids = torch.tensor(list(groups))
    stats = TrainStats(device=device)
    t0, c0 = time.perf_counter(), time.process_time()
    with seeded(seed, device) as g:
        net = build(architecture)  # random initialisation from the seeded global generator
        _check_size(architecture, images, net.preprocess.image_size)
        tokens_all = net.tokenizer(flat)
        model = net.module.to(device).train()
        decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n_]
        no_decay = [p for n_, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n_]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
        x_all = to_float(images).to(device)
        aug = BatchAugment(recipe.augment)
        mean, std = net.preprocess.mean, net.preprocess.std

        def step(idx: torch.Tensor) -> torch.Tensor:
            pick = offsets[idx] + (torch.rand(len(idx), generator=g) * counts[idx]).long()
            text = tokens_all[pick].to(device)
            img = normalize(aug(x_all[idx.to(device)], g), mean, std)
            scale = model.logit_scale.exp().clamp(max=100.0)
            return clip_loss(net.encode_image(img), net.encode_text(text), scale,
                             group_ids[idx].to(device) if recipe.group_targets else None)

        _run(step, len(images), recipe, opt, g, stats, desc, progress)
        model.eval().cpu()
    stats.wall_s, stats.cpu_s = time.perf_counter() - t0, time.process_time() - c0
    log.info("%s: %d steps, loss %.3f -> %.3f in %.1f s", desc, stats.steps, stats.first_loss,
             stats.final_loss, stats.wall_s)
    return net, stats


def save_checkpoint(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``module.state_dict()`` to ``path`` as safetensors (atomically: a temporary file
    renamed into place) and return the file's sha256. Give at most one ``metadata`` key if
    the bytes must be reproducible: safetensors writes the metadata map in hash order."""
    from safetensors.torch import save_file

    from audit_lib.encoders.loading import file_sha256

    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return file_sha256(path)
