"""Fault injection for the reference server: how the tests play a misbehaving API.

Per API key, either a deterministic ``schedule`` (one fault name per embed request, in
order; ``"ok"`` for a normal answer; after the schedule ends every answer is normal) or
``rates`` (probability per fault name, drawn with a seeded generator). Fault names:

- ``429``: Too Many Requests with ``Retry-After: retry_after`` seconds;
- ``500``: Internal Server Error;
- ``slow``: answer correctly after sleeping ``slow_s`` seconds (client timeouts);
- ``nan``: a correct-looking answer with one NaN coordinate;
- ``wrong_dim``: embeddings one coordinate short;
- ``wrong_count``: one embedding fewer than images;
- ``garbage``: a 200 response whose body is not JSON.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FAULTS = ("ok", "429", "500", "slow", "nan", "wrong_dim", "wrong_count", "garbage")


@dataclass
class FaultPlan:
    """What goes wrong for one key; thread-safe (requests arrive on several threads)."""

    schedule: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    retry_after: float = 1.0
    slow_s: float = 2.0

    def __post_init__(self) -> None:
        unknown = sorted({*self.schedule, *self.rates} - set(FAULTS))
        if unknown:
            raise ValueError(f"faults: unknown {', '.join(unknown)} (known: {', '.join(FAULTS)})")
        if sum(self.rates.values()) > 1.0 + 1e-9 or any(r < 0 for r in self.rates.values()):
            raise ValueError(f"faults: rates {self.rates} must be >= 0 and sum to at most 1")
        self._lock = threading.Lock()
        self._next = 0
        self._rng = np.random.default_rng(self.seed)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> FaultPlan | None:
        if not cfg:
            return None
        return cls(schedule=[str(x) for x in cfg.get("schedule", [])],
                   rates={str(k): float(v) for k, v in cfg.get("rates", {}).items()},
                   seed=int(cfg.get("seed", 0)), retry_after=float(cfg.get("retry_after", 1.0)),
                   slow_s=float(cfg.get("slow_s", 2.0)))

    def draw(self) -> str:
        """The fault for the next request (``"ok"`` for none)."""
        with self._lock:
            if self._next < len(self.schedule):
                self._next += 1
                return self.schedule[self._next - 1]
            if self.rates:
                u = float(self._rng.random())
                acc = 0.0
                for name, rate in self.rates.items():
                    acc += rate
                    if u < acc:
                        return name
            return "ok"
