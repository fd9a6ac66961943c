"""The independent-encoder null of an ownership test, for any owned model.

Both ownership checks ask "does the suspect respond to our committed test more than an
encoder trained independently of ours would?", so both need independently trained encoders
to compute that null on. For an owned model outside the reference zoo they come from, in
this order:

1. the registered reference models (role ``reference``: an encoder known to be trained
   independently of the owner's; a local checkpoint or an API), and
2. where those are fewer than ``minimum``, independents the enrolment trains itself: the
   owned model's architecture (hence its input size and embedding size), SimCLR from a fresh
   seeded initialisation on the owner's public images
   (:func:`audit_lib.zoo.suspects.train_independent`, the suspect-zoo builder's own
   independents), cached by a hash of everything that changes them.

The null's provenance (where each model came from, how many) is committed with the
enrolment and stated in every finding. With K null models a rank p-value cannot go below
1 / (K + 1); :func:`rank_floor_note` says so when that is above alpha, and the tests then use
``audit_lib.stats.rank_or_tail_test``'s Student-t tail, named as an assumption.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NULL_VERSION = "independent-null-1"
DEFAULT_MIN_MODELS = 3  # the suspect zoo needs 3 negative families: train, validation, held-out test
REFERENCE = "registered reference model"
TRAINED = "trained by the enrolment on the public images"
ZOO = "reference zoo"
NAMED = "named on the command line"


@dataclass(frozen=True)
class NullModel:
    """One independently trained encoder of the null and where it came from."""

    name: str
    source: str  # REFERENCE | TRAINED | ZOO | NAMED
    kind: str  # checkpoint | api
    architecture: str | None = None
    weights_path: str | None = None
    model_id: int | None = None  # the registry id (registered models)
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IndependentNull:
    """The null population of one enrolment."""

    models: list[NullModel]
    minimum: int = DEFAULT_MIN_MODELS

    @property
    def local(self) -> list[NullModel]:
        """The models with weights (what the fingerprint's suspect zoo can derive variants of)."""
        return [m for m in self.models if m.kind == "checkpoint"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.models:
            out[m.source] = out.get(m.source, 0) + 1
        return out

    def describe(self, models: list[NullModel] | None = None) -> str:
        """'3 independent encoders: 1 registered reference model, 2 trained by …'."""
        models = self.models if models is None else models
        counts: dict[str, int] = {}
        for m in models:
            counts[m.source] = counts.get(m.source, 0) + 1
        parts = ", ".join(f"{n} {src}" for src, n in counts.items())
        return f"{len(models)} independent encoder{'s' if len(models) != 1 else ''}: {parts}"

    def handles(self, *, db_url: str | None = None) -> list[Any]:
        """Handles of every null model: registered ones through the store's query cache,
        trained and zoo ones straight from their weights."""
        from audit_lib.encoders.local import LocalEncoder
        from audit_lib.pipelines.handles import open_model_handle

        out = []
        for m in self.models:
            if m.model_id is not None:
                out.append(open_model_handle(m.model_id, None, db_url=db_url))
            else:
                out.append(LocalEncoder.from_checkpoint(m.architecture, Path(m.weights_path)))
        return out

    def independent_models(self) -> list[Any]:
        """The local null models as the suspect-zoo builder's negative families."""
        from audit_lib.zoo.suspects import IndependentModel

        return [IndependentModel(m.name, m.architecture, Path(m.weights_path)) for m in self.local]

    def as_dict(self, models: list[NullModel] | None = None) -> dict[str, Any]:
        """The provenance committed with an enrolment (JSON)."""
        models = self.models if models is None else models
        counts: dict[str, int] = {}
        for m in models:
            counts[m.source] = counts.get(m.source, 0) + 1
        return {"version": NULL_VERSION, "n_models": len(models), "counts": counts,
                "description": self.describe(models), "minimum": self.minimum,
                "models": [{"name": m.name, "source": m.source, "kind": m.kind, "architecture": m.architecture,
                            "model_id": m.model_id, **({"params": m.params} if m.params else {})}
                           for m in models]}


def rank_floor_note(n_models: int, alpha: float) -> str | None:
    """A sentence for the finding when a rank p-value among ``n_models`` null models cannot
    reach ``alpha`` (None when it can)."""
    if n_models <= 0:
        return "no independent encoders: the independence null is empty"
    floor = 1 / (n_models + 1)
    if floor <= alpha:
        return None
    return (f"the null has {n_models} independent encoders, so a rank p-value cannot go below "
            f"1/{n_models + 1} = {floor:.3f} > alpha {alpha:g}; the decision rests on a Student-t tail "
            "fitted to their scores (an assumption)")


def reference_models(session: Any, *, exclude: frozenset[int] = frozenset()) -> list[NullModel]:
    """The registered reference models (role ``reference``, not retired), oldest first."""
    from sqlalchemy import select

    from audit_lib.store.models import AuditedModel

    rows = session.scalars(select(AuditedModel).where(AuditedModel.role == "reference")
                           .order_by(AuditedModel.id)).all()
    out = []
    for m in rows:
        if m.id in exclude or getattr(m, "retired_at", None) is not None:
            continue
        out.append(NullModel(m.name, REFERENCE, m.kind, m.architecture, m.weights_path, m.id))
    return out


@dataclass(frozen=True)
class TrainedNullConfig:
    """How the enrolment trains its own independents when too few are registered."""

    epochs: int = 3  # SimCLR epochs (the ci zoo's independents' recipe)
    images: int = 768  # a seeded random subset of the public images per encoder
    seed: int = 500  # first seed; encoder i uses seed + i

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trained_independents(architecture: str, public: np.ndarray, n: int, cache_dir: Path,
                         config: TrainedNullConfig = TrainedNullConfig()) -> list[NullModel]:
    """``n`` encoders of ``architecture`` trained independently of the owner's on the
    public images (uint8 at the architecture's input size), cached under ``cache_dir``."""
    from dataclasses import replace

    from audit_lib.encoders.loading import save_weights
    from audit_lib.embedding import torch_threads
    from audit_lib.zoo.suspects import SuspectZooConfig, train_independent

    if n <= 0:
        return []
    if public.dtype != np.uint8 or public.ndim != 4 or len(public) < 2:
        raise ValueError(f"public images: expected uint8 (M, H, W, 3) with M >= 2, got {public.dtype} {public.shape}")
    data_sha = hashlib.sha256(np.ascontiguousarray(public).tobytes()).hexdigest()
    zoo_cfg = replace(SuspectZooConfig(), extra_epochs=config.epochs, extra_images=config.images)
    out = []
    for i in range(n):
        seed = config.seed + i
        key = hashlib.sha256(json.dumps({"v": NULL_VERSION, "architecture": architecture, "data": data_sha,
                                         "config": config.as_dict(), "seed": seed},
                                        sort_keys=True).encode()).hexdigest()[:16]
        name = f"independent-{architecture.replace(':', '-')}-s{seed}"
        path = Path(cache_dir) / f"{name}-{key}.safetensors"
        if not path.is_file():
            log.info("null: training independent encoder %d/%d (%s, seed %d)", i + 1, n, architecture, seed)
            with torch_threads(2):
                net = train_independent(architecture, public, zoo_cfg, seed)
            save_weights(net.module, path)
        out.append(NullModel(name, TRAINED, "checkpoint", architecture, str(path), None,
                             {"seed": seed, "epochs": config.epochs, "images": min(config.images, len(public)),
                              "public_sha256": data_sha}))
    return out


def default_cache_dir() -> Path:
    """Where trained null encoders are cached, shared by the watermark and the fingerprint
    enrolments (the same independents serve both): ``null/`` in the ownership cache."""
    from audit_lib.pipelines.caches import ownership_cache

    return ownership_cache() / "null"


def independent_null(session: Any, owned: Any, public: np.ndarray, *, cache_dir: Path | None = None,
                     minimum: int = DEFAULT_MIN_MODELS, local_only: bool = False,
                     config: TrainedNullConfig = TrainedNullConfig()) -> IndependentNull:
    """The null for the owned model row ``owned``: its registered reference models, topped
    up to ``minimum`` with independents trained on ``public`` (cached in ``cache_dir``,
    default :func:`default_cache_dir`). With ``local_only`` (the fingerprint's suspect zoo
    needs weights) API references do not count towards the minimum."""
    refs = reference_models(session, exclude={owned.id})
    usable = [m for m in refs if m.kind == "checkpoint"] if local_only else refs
    missing = max(0, minimum - len(usable))
    trained = trained_independents(owned.architecture, public, missing, Path(cache_dir or default_cache_dir()),
                                   config)
    log.info("null for %s: %d registered reference models (%d usable), %d trained here", owned.name, len(refs),
             len(usable), len(trained))
    return IndependentNull([*usable, *trained], minimum)
