"""Model versions: the weights' sha256 for checkpoints; for APIs, a canary hash.

An API can change behind the same URL. At the start of every audit the handle embeds a
fixed canary set of real images (scikit-image's sample photographs, shipped inside its
wheel, plus two synthetic patterns), all cropped and resized to 96 x 96 and PNG-encoded.
The API's version is the sha256 of those embeddings, L2-normalised and rounded to 3
decimals (so harmless float noise does not create a new version).

Resolution against the store (:func:`resolve_canary_version`): if the embeddings are within
``tolerance`` (max absolute difference of the normalised coordinates) of the model's latest
canary version, it is the same version; otherwise it is a new :class:`ModelVersion` row
(or an older one with exactly this hash, when an API was rolled back). Findings keep
pointing at the version row they were made on. The canary embeddings themselves are kept
in ``query_cache`` (kind ``canary``) so the next audit can compare against them.

What answers an API is also part of its version: :func:`api_config_sha256` hashes the
registered endpoint URL and adapter (without the client-side pacing and the canary
tolerance, which change no answer). A version row made with it records the hash (in
``model_versions.preprocess`` as ``answering_config_sha256``) and its version string is
:func:`api_version` of the canary hash and the configuration hash, so a changed endpoint
or adapter makes a new version even when the canary answers come out identical (and the
query cache of the old configuration is never served for the new one). Rows made before
(no recorded configuration) keep working: the first audit that matches one by its canary
adopts the current configuration into it.
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.store.models import ModelVersion, QueryCacheEntry, utcnow

CANARY_SIZE = 96
CANARY_KIND = "canary"
CANARY_DECIMALS = 3
DEFAULT_TOLERANCE = 2e-3
_SKIMAGE_SAMPLES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins")
CONFIG_KEY = "answering_config_sha256"  # in model_versions.preprocess of an API's version
_NOT_ANSWERING = ("rate_limit_per_s", "canary_tolerance")  # adapter keys that change no answer


def api_config_sha256(endpoint_url: str, adapter: dict[str, Any] | None) -> str:
    """sha256 of what answers an API's queries: the endpoint URL (without a trailing slash)
    and the stored adapter, as canonical JSON, without the keys that change no answer."""
    cfg = {k: v for k, v in (adapter or {}).items() if k not in _NOT_ANSWERING}
    blob = json.dumps({"endpoint": endpoint_url.rstrip("/"), "adapter": cfg}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(b"encoder-audit api config v1\0" + blob.encode("utf-8")).hexdigest()


def api_version(canary: str, config_sha256: str | None) -> str:
    """The version string of an API: the canary hash alone (rows made without a recorded
    configuration), else sha256 over the canary hash and the configuration hash."""
    if config_sha256 is None:
        return canary
    return hashlib.sha256(f"encoder-audit api version v1\0{canary}\0{config_sha256}".encode("ascii")).hexdigest()


def _square(arr: np.ndarray, size: int) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


@lru_cache(maxsize=1)
def canary_images() -> tuple[bytes, ...]:
    """The fixed canary set: 6 real photographs from scikit-image and 2 patterns, PNG bytes."""
    from skimage import data

    images = [_square(getattr(data, name)(), CANARY_SIZE) for name in _SKIMAGE_SAMPLES]
    yy, xx = np.mgrid[0:CANARY_SIZE, 0:CANARY_SIZE]
    checker = (((yy // 12) + (xx // 12)) % 2 * 255).astype(np.uint8)
    gradient = np.stack([xx * 255 // CANARY_SIZE, yy * 255 // CANARY_SIZE,
                         (xx + yy) * 255 // (2 * CANARY_SIZE)], axis=-1).astype(np.uint8)
    images += [_square(checker, CANARY_SIZE), _square(gradient, CANARY_SIZE)]
    return tuple(images)


def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def canary_hash(embeddings: np.ndarray) -> str:
    """sha256 over the shape and the normalised, rounded canary embeddings."""
    unit = np.round(_unit(embeddings), CANARY_DECIMALS).astype("<f4")
    unit[unit == 0] = 0.0  # -0.0 and 0.0 hash alike
    h = hashlib.sha256(b"encoder-audit canary v1\0")
    h.update(np.asarray(unit.shape, dtype="<i8").tobytes())
    h.update(unit.tobytes())
    return h.hexdigest()


def _stored_canary(session: Session, version: str) -> np.ndarray | None:
    hashes = [hashlib.sha256(b).hexdigest() for b in canary_images()]
    rows = {r.input_sha256: r for r in session.scalars(select(QueryCacheEntry).where(
        QueryCacheEntry.model_version == version, QueryCacheEntry.kind == CANARY_KIND))}
    if not all(h in rows for h in hashes):
        return None
    return np.stack([np.frombuffer(rows[h].vector, dtype="<f4") for h in hashes])


def resolve_canary_version(session: Session, model_id: int, embeddings: np.ndarray, *,
                           tolerance: float = DEFAULT_TOLERANCE,
                           config_sha256: str | None = None) -> tuple[ModelVersion, bool]:
    """The version row these canary embeddings belong to, and whether it is new.
    ``config_sha256`` (:func:`api_config_sha256`) ties the version to what answers: the
    latest version matches only if it was seen with the same configuration (or with none
    recorded, which it then adopts)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    latest = session.scalar(select(ModelVersion).where(
        ModelVersion.model_id == model_id, ModelVersion.how == "canary")
        .order_by(ModelVersion.last_seen.desc(), ModelVersion.id.desc()).limit(1))
    seen_with = (latest.preprocess or {}).get(CONFIG_KEY) if latest is not None else None
    if latest is not None and (config_sha256 is None or seen_with in (None, config_sha256)):
        old = _stored_canary(session, latest.version)
        if old is not None and old.shape == embeddings.shape and \
                float(np.max(np.abs(_unit(old) - _unit(embeddings)))) <= tolerance:
            if config_sha256 is not None and seen_with is None:
                latest.preprocess = {**(latest.preprocess or {}), CONFIG_KEY: config_sha256}
            latest.last_seen = utcnow()
            session.flush()
            return latest, False
    version = api_version(canary_hash(embeddings), config_sha256)
    row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id,
                                                    ModelVersion.version == version))
    created = row is None
    if row is None:
        row = ModelVersion(model_id=model_id, version=version, how="canary",
                           embedding_dim=int(embeddings.shape[1]),
                           preprocess={CONFIG_KEY: config_sha256} if config_sha256 else None)
        session.add(row)
    row.last_seen = utcnow()
    session.flush()
    if _stored_canary(session, version) is None:
        for data, vec in zip(canary_images(), embeddings):
            sha = hashlib.sha256(data).hexdigest()
            if session.get(QueryCacheEntry, (version, sha, CANARY_KIND)) is None:
                raw = np.ascontiguousarray(vec, dtype="<f4").tobytes()
                session.add(QueryCacheEntry(model_version=version, input_sha256=sha, kind=CANARY_KIND,
                                            dim=int(vec.shape[0]), vector=raw,
                                            response_sha256=hashlib.sha256(raw).hexdigest()))
        session.flush()
    return row, created
