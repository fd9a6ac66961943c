"""The queries an audit run will pay for, counted before the first one is sent.

An API model's ``query_budget`` counts inputs answered per run (the transport stops with
``BudgetExhausted`` before it sends anything over it). A run that would hit the limit
half-way has already paid for its first queries and ends failed; so a run's inputs are
counted first, the distinct ones already in the query cache for the model's latest
version are subtracted, the canary set (sent by every run to check the API's version) is
added, and a run that does not fit is refused with both numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from audit_lib.registry import RegistryError

LOOKUP_CHUNK = 500


class BudgetTooSmall(RegistryError):
    """The run needs more queries than the model's budget allows; nothing was sent."""


def cached_count(session: Any, model_id: int, inputs: Mapping[str, Iterable[bytes]]) -> tuple[int, int]:
    """(distinct inputs, of which already cached for the model's most recently seen
    version), over ``inputs`` given per cache kind (``image``, ``text``, ``view``)."""
    from audit_lib.store.models import ModelVersion, QueryCacheEntry

    version = session.scalar(select(ModelVersion.version).where(ModelVersion.model_id == model_id)
                             .order_by(ModelVersion.last_seen.desc(), ModelVersion.id.desc()).limit(1))
    total = cached = 0
    for kind, items in inputs.items():
        hashes = sorted({hashlib.sha256(b).hexdigest() for b in items})
        total += len(hashes)
        if version is None:
            continue
        for i in range(0, len(hashes), LOOKUP_CHUNK):
            cached += len(session.scalars(select(QueryCacheEntry.input_sha256).where(
                QueryCacheEntry.model_version == version, QueryCacheEntry.kind == kind,
                QueryCacheEntry.input_sha256.in_(hashes[i:i + LOOKUP_CHUNK]))).all())
    return total, cached


def privacy_inputs(*, capabilities: Sequence[str], photos: Sequence[bytes], claimed: Sequence[bytes],
                   references: Sequence[bytes], name: str, aliases: Sequence[str], sex: str | None,
                   n_candidates: int, n_views: int) -> dict[str, list[bytes]]:
    """The inputs a privacy audit sends per cache kind, built as the methods build them:
    IDIA's prompts for the subject's names and the decoys (text models only) and the photos;
    EncoderMI's seeded views of the claimed images and the references."""
    from audit_lib.methods.identity_inference import (MIN_IMAGES, _default_decoys, build_candidates,
                                                      prompt_texts)
    from audit_lib.methods.views import DEFAULT_RECIPE, make_views

    out: dict[str, list[bytes]] = {"image": [], "text": [], "view": []}
    if "text" in capabilities and len(photos) >= MIN_IMAGES:
        own = [name, *aliases]
        cands = build_candidates(name, aliases, decoys=_default_decoys(n_candidates, sex, 42, own),
                                 n_candidates=n_candidates)
        out["text"] = [t.encode("utf-8") for t in prompt_texts(cands.names)]
        out["image"] = list(photos)
    if claimed:
        out["view"] = [v for img in [*claimed, *references] for v in make_views(img, n_views, DEFAULT_RECIPE)]
    return out


def require_budget(session: Any, model: Any, inputs: Mapping[str, Iterable[bytes]]) -> int | None:
    """Refuse (:class:`BudgetTooSmall`) a run on an API model whose budget is smaller than
    the queries it needs; returns that number (None for a model without a budget)."""
    if model.kind != "api" or model.query_budget is None:
        return None
    from audit_lib.encoders.version import canary_images

    total, cached = cached_count(session, model.id, inputs)
    needed = total - cached + len(canary_images())
    if needed > model.query_budget:
        raise BudgetTooSmall(f"model {model.name}: this run needs {needed} queries ({total} inputs, {cached} "
                             f"already cached, {len(canary_images())} canaries) but its query budget is "
                             f"{model.query_budget}; nothing was sent. Raise it with `encoder-audit models "
                             f"update {model.name} --budget N` or audit fewer inputs")
    return needed
