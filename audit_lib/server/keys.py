"""API keys of the reference server, their per-key settings, and per-key rate limits.

A keys file is JSON mapping each key to its settings::

    {"keys": {"sk-alice-...": {"name": "alice", "rate_limit_per_s": 20,
                                "defences": {"noise_sigma": 0.05}},
              "sha256:9f86d0...": {"name": "bob", "faults": {"schedule": ["429", "ok"]}},
              "sk-carol-...": {"name": "carol", "images_per_s": 50, "megapixels_per_s": 20}}}

``rate_limit_per_s`` counts requests; ``images_per_s`` and ``megapixels_per_s`` count what
a request asks the server to decode and embed, so one request of 256 large images costs
what it weighs, not one request.

A key may be given as ``sha256:<hex>`` so that the file need not hold the key itself. In
memory only the sha256 of each key is kept; a key never reaches a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_lib.server.defences import Defences
from audit_lib.server.faults import FaultPlan


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RateLimiter:
    """A token bucket: ``rate`` units per second (requests, images or pixels), bursts up to
    ``burst``. A charge larger than the burst is granted only from a full bucket and
    leaves it in debt, so a big request waits as long as its size says, never forever."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit {rate}: must be > 0 requests per second")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def try_acquire(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 if granted, else the seconds until they will be."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            needed = min(float(cost), self.burst)
            if self._tokens >= needed:
                self._tokens -= float(cost)
                return 0.0
            return (needed - self._tokens) / self.rate


@dataclass
class KeySettings:
    """What one API key is allowed and gets."""

    name: str
    rate_limit_per_s: float | None = None
    burst: float | None = None
    defences: Defences = field(default_factory=Defences)
    faults: FaultPlan | None = None
    seed: int = 0  # the defence noise generator's seed
    images_per_s: float | None = None  # images embedded per second (bursts: one second's worth)
    megapixels_per_s: float | None = None  # decoded pixels per second, in millions

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.rate_limit_per_s, self.burst) if self.rate_limit_per_s else None
        self.image_limiter = RateLimiter(self.images_per_s) if self.images_per_s else None
        self.pixel_limiter = (RateLimiter(self.megapixels_per_s * 1e6, self.megapixels_per_s * 1e6)
                              if self.megapixels_per_s else None)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], default_name: str) -> KeySettings:
        unknown = sorted(set(cfg) - {"name", "rate_limit_per_s", "burst", "defences", "faults", "seed",
                                     "images_per_s", "megapixels_per_s"})
        if unknown:
            raise ValueError(f"key {default_name}: unknown settings {', '.join(unknown)}")
        return cls(name=str(cfg.get("name", default_name)),
                   rate_limit_per_s=cfg.get("rate_limit_per_s"), burst=cfg.get("burst"),
                   defences=Defences(**cfg.get("defences", {})),
                   faults=FaultPlan.from_dict(cfg.get("faults")), seed=int(cfg.get("seed", 0)),
                   images_per_s=cfg.get("images_per_s"), megapixels_per_s=cfg.get("megapixels_per_s"))

    def retry_after(self) -> int | None:
        """None when the request may go ahead, else whole seconds to wait (for Retry-After)."""
        if self.limiter is None:
            return None
        wait = self.limiter.try_acquire()
        return None if wait == 0.0 else max(1, math.ceil(wait))

    def charge_inputs(self, images: int, pixels: int) -> int | None:
        """Charge a request's images and pixels to the key's image and pixel budgets: None
        when it may go ahead, else whole seconds to wait (Retry-After)."""
        if self.pixel_limiter is not None:
            wait = self.pixel_limiter.try_acquire(pixels)
            if wait:
                return max(1, math.ceil(wait))
        if self.image_limiter is not None:
            wait = self.image_limiter.try_acquire(images)
            if wait:
                return max(1, math.ceil(wait))
        return None


class KeyRing:
    """The server's keys, held as sha256 digests only."""

    def __init__(self, keys: dict[str, dict[str, Any]]) -> None:
        self._by_digest: dict[str, KeySettings] = {}
        for i, (key, cfg) in enumerate(keys.items(), start=1):
            if not key:
                raise ValueError(f"key number {i}: empty key")
            digest = key.removeprefix("sha256:") if key.startswith("sha256:") else key_digest(key)
            if len(digest) != 64:
                raise ValueError(f"key number {i}: a sha256: key needs 64 hex digits")
            self._by_digest[digest.lower()] = KeySettings.from_dict(cfg or {}, default_name=f"key{i}")

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"keys file {path}: cannot be read as JSON ({exc})") from None
        keys = data.get("keys", data) if isinstance(data, dict) else None
        if not isinstance(keys, dict):
            raise ValueError(f"keys file {path}: expected an object mapping keys to settings")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, presented: str | None) -> KeySettings | None:
        """The settings of a presented key, or None (compared by digest, constant time)."""
        if not presented:
            return None
        digest = key_digest(presented)
        found = None
        for known, settings in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = settings
        return found

    def names(self) -> list[str]:
        return [s.name for s in self._by_digest.values()]
