"""What a method returns: a calibrated finding and the queries behind it.

Methods are pure functions over handles and arrays; they return a ``FindingResult`` and
never touch the database. The caller (a CLI command or a DAG task) stores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DECISIONS = ("positive", "negative", "not_applicable", "inconclusive")


@dataclass
class FindingResult:
    """One method's answer for one target (a subject, an image set, a suspect model).

    ``hypothesis`` states H0 in words; ``null_description`` says how the null was built;
    ``decision`` is one of DECISIONS at level ``alpha``; ``details`` carries what a report
    shows (per-template tables, score lists), JSON-serialisable only.
    """

    method: str
    method_version: str
    hypothesis: str
    statistic: float | None
    null_description: str
    p_value: float | None
    alpha: float
    decision: str
    effect_size: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {DECISIONS}")
        if self.p_value is not None and not 0.0 <= self.p_value <= 1.0:
            raise ValueError(f"p-value {self.p_value} is outside [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
