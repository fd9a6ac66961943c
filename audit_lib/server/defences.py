"""Output defences against encoder theft, applied by the server before it answers.

StolenEncoder (Liu, Jia, Liu, Gong: "StolenEncoder: Stealing Pre-trained Encoders in
Self-supervised Learning", ACM CCS 2022, arXiv:2201.05889) studies three perturbations a
provider can switch on: additive Gaussian noise, top-k sparsification and rounding. The
paper gives no code for them; we implement them as described:

- noise: ``e/||e|| + N(0, sigma^2 I)`` (on the L2-normalised embedding, so ``sigma`` means
  the same for every model);
- top-k: keep the ``k`` largest-magnitude coordinates, zero the rest;
- rounding: round every coordinate to ``d`` decimals.

Applied in that order when several are on. Each is per API key (:mod:`.keys`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Defences:
    """Which defences a key gets; ``None`` switches one off."""

    noise_sigma: float | None = None  # std of Gaussian noise on the L2-normalised embedding
    top_k: int | None = None  # keep this many largest-magnitude coordinates
    round_decimals: int | None = None  # round coordinates to this many decimals

    def __post_init__(self) -> None:
        if self.noise_sigma is not None and self.noise_sigma < 0:
            raise ValueError(f"noise_sigma {self.noise_sigma}: must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k {self.top_k}: must be >= 1")
        if self.round_decimals is not None and self.round_decimals < 0:
            raise ValueError(f"round_decimals {self.round_decimals}: must be >= 0")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.noise_sigma, self.top_k, self.round_decimals))


def add_noise(emb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """L2-normalise each row and add N(0, sigma^2) to every coordinate."""
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.maximum(norm, 1e-12)
    return (unit + rng.normal(0.0, sigma, size=emb.shape)).astype(np.float32)


def top_k(emb: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest-|value| coordinates of each row, zero the others."""
    if k >= emb.shape[1]:
        return emb.copy()
    keep = np.argpartition(-np.abs(emb), k - 1, axis=1)[:, :k]
    out = np.zeros_like(emb)
    np.put_along_axis(out, keep, np.take_along_axis(emb, keep, axis=1), axis=1)
    return out


def round_to(emb: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(emb, decimals).astype(np.float32)


def apply_defences(emb: np.ndarray, defences: Defences, rng: np.random.Generator) -> np.ndarray:
    """The answer a key with these defences receives."""
    out = np.asarray(emb, dtype=np.float32)
    if defences.noise_sigma is not None:
        out = add_noise(out, defences.noise_sigma, rng)
    if defences.top_k is not None:
        out = top_k(out, defences.top_k)
    if defences.round_decimals is not None:
        out = round_to(out, defences.round_decimals)
    return out
