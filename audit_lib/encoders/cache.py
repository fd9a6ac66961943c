"""The query cache and evidence log in front of any handle (DESIGN §3, §4).

:class:`StoreBackedHandle` wraps a local or remote handle:

- it resolves the model version once, at construction (the weights' sha256, or the canary
  embeddings for an API, see :mod:`audit_lib.encoders.version`) and ensures the
  :class:`~audit_lib.store.models.ModelVersion` row (``.model_version_id``);
- every input is looked up in ``query_cache`` by (model version, input sha256, kind); only
  misses reach the inner handle, so a second audit of the same inputs on the same version
  sends no request, and a finding can be recomputed from stored answers;
- every query, cached or not, becomes an evidence item in the run's hash chain (input
  hash, response hash = sha256 of the float32 little-endian vector, time, latency, cached).

Sessions are short (one per lookup, one per write) so long model calls hold no transaction.
An answer is cached only after the inner handle returned it validated; a failing call
leaves neither cache rows nor evidence behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from audit_lib.encoders.base import EncoderHandle, NotApplicable
from audit_lib.store.models import AuditRun, ModelVersion, QueryCacheEntry, utcnow

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 500


def vector_bytes(vec: np.ndarray) -> bytes:
    """The canonical bytes of an answer: float32 little-endian."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def response_sha256(vec: np.ndarray) -> str:
    return hashlib.sha256(vector_bytes(vec)).hexdigest()


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from PIL import Image

    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()
    raise TypeError(f"an image must be encoded bytes or a PIL image, not {type(image).__name__}")


class StoreBackedHandle:
    """Any handle, with the store's query cache and evidence chain in front of it."""

    def __init__(self, inner: EncoderHandle, *, db_url: str | None = None, model_id: int,
                 run_key: str | None = None, run_kind: str = "audit") -> None:
        self.inner = inner
        self.db_url = db_url
        self.model_id = int(model_id)
        self.run_key = run_key
        self.run_kind = run_kind
        self.hits = 0
        self.misses = 0
        self.model_version_id: int
        self._version: str
        self._resolve_version()

    # --- the handle protocol ------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return self.inner.capabilities

    @property
    def embedding_dim(self) -> int:
        return self.inner.embedding_dim

    @property
    def model_version(self) -> str:
        return self._version

    def encode_images(self, images: Sequence[Any], *, kind: str = "image") -> np.ndarray:
        """Embed images through the cache; float32 ``(n, d)`` in input order."""
        data = [_image_bytes(im) for im in images]
        return self._through_cache(data, kind, lambda batch: self.inner.encode_images(batch, kind=kind))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if "text" not in self.capabilities:
            raise NotApplicable("this model has no text embeddings")
        data = [str(t).encode("utf-8") for t in texts]
        return self._through_cache(data, "text", lambda batch: self.inner.encode_texts(
            [b.decode("utf-8") for b in batch]))

    # --- version ------------------------------------------------------------------------
    def _resolve_version(self) -> None:
        from audit_lib.store.db import session_scope

        if getattr(self.inner, "version_method", "weights") == "canary":
            from audit_lib.encoders.version import (DEFAULT_TOLERANCE, canary_images,
                                                    resolve_canary_version)

            canaries = list(canary_images())
            t0, when = time.perf_counter(), utcnow()
            emb = np.asarray(self.inner.encode_images(canaries, kind="canary"), dtype=np.float32)
            latency = (time.perf_counter() - t0) * 1000 / len(canaries)
            self._check(emb, len(canaries))
            tolerance = float(getattr(self.inner, "adapter", {}).get("canary_tolerance", DEFAULT_TOLERANCE))
            for attempt in (0, 1):
                try:
                    with session_scope(self.db_url) as s:
                        row, created = resolve_canary_version(s, self.model_id, emb, tolerance=tolerance)
                        self.model_version_id, self._version = row.id, row.version
                        run = self._run(s)
                        if run is not None:
                            self._append(s, run, "canary", [hashlib.sha256(c).hexdigest() for c in canaries],
                                         [response_sha256(v) for v in emb], [False] * len(canaries),
                                         latency, when)
                    break
                except IntegrityError:  # a concurrent task created the same row first
                    if attempt:
                        raise
            log.info("model %d: API version %s (%s)", self.model_id, self._version[:12],
                     "new" if created else "unchanged")
            return
        version = self.inner.model_version
        preprocess = getattr(self.inner, "preprocess_info", None)
        for attempt in (0, 1):
            try:
                with session_scope(self.db_url) as s:
                    row = s.scalar(select(ModelVersion).where(ModelVersion.model_id == self.model_id,
                                                              ModelVersion.version == version))
                    if row is None:
                        row = ModelVersion(model_id=self.model_id, version=version, how="weights",
                                           embedding_dim=self.inner.embedding_dim, preprocess=preprocess)
                        s.add(row)
                    row.last_seen = utcnow()
                    s.flush()
                    self.model_version_id, self._version = row.id, row.version
                    self._run(s)
                break
            except IntegrityError:
                if attempt:
                    raise

    # --- cache and evidence -------------------------------------------------------------
    def _run(self, session: Any) -> AuditRun | None:
        if self.run_key is None:
            return None
        from audit_lib.evidence import start_run

        return start_run(session, self.run_key, self.run_kind)

    def _check(self, emb: np.ndarray, n: int) -> None:
        if emb.shape != (n, self.embedding_dim):
            raise ValueError(f"model {self.model_id}: got embeddings of shape {emb.shape}, "
                             f"expected ({n}, {self.embedding_dim})")
        if not np.isfinite(emb).all():
            raise ValueError(f"model {self.model_id}: non-finite numbers in embeddings")

    def _lookup(self, hashes: list[str], kind: str) -> dict[str, np.ndarray]:
        from audit_lib.store.db import session_scope

        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with session_scope(self.db_url) as s:
            for i in range(0, len(unique), LOOKUP_CHUNK):
                rows = s.execute(select(QueryCacheEntry.input_sha256, QueryCacheEntry.vector, QueryCacheEntry.dim)
                                 .where(QueryCacheEntry.model_version == self._version,
                                        QueryCacheEntry.kind == kind,
                                        QueryCacheEntry.input_sha256.in_(unique[i:i + LOOKUP_CHUNK])))
                for sha, raw, dim in rows:
                    if dim == self.embedding_dim:
                        found[sha] = np.frombuffer(raw, dtype="<f4")
        return found

    def _through_cache(self, data: list[bytes], kind: str, compute) -> np.ndarray:  # noqa: ANN001
        from audit_lib.store.db import session_scope

        n = len(data)
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        if n == 0:
            return out
        hashes = [hashlib.sha256(b).hexdigest() for b in data]
        t0, when = time.perf_counter(), utcnow()
        found = self._lookup(hashes, kind)
        lookup_ms = (time.perf_counter() - t0) * 1000 / n
        first_of: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in found:
                first_of.setdefault(h, i)
        fresh: dict[str, np.ndarray] = {}
        miss_ms = 0.0
        if first_of:
            order = list(first_of)
            t1 = time.perf_counter()
            emb = np.asarray(compute([data[first_of[h]] for h in order]), dtype=np.float32)
            miss_ms = (time.perf_counter() - t1) * 1000 / len(order)
            self._check(emb, len(order))
            fresh = dict(zip(order, emb))
        self.hits += n - len(fresh)
        self.misses += len(fresh)
        cached_flags: list[bool] = []
        seen_fresh: set[str] = set()
        for i, h in enumerate(hashes):
            vec = found.get(h)
            if vec is None:
                vec = fresh[h]
                cached_flags.append(h in seen_fresh)
                seen_fresh.add(h)
            else:
                cached_flags.append(True)
            out[i] = vec
        resp_hashes = [response_sha256(v) for v in out]
        if fresh or self.run_key is not None:
            with session_scope(self.db_url) as s:
                if fresh:
                    self._insert_cache(s, kind, fresh)
                run = self._run(s)
                if run is not None:
                    latencies = [lookup_ms if c else miss_ms for c in cached_flags]
                    self._append(s, run, kind, hashes, resp_hashes, cached_flags, latencies, when)
        return out

    def _insert_cache(self, session: Any, kind: str, fresh: dict[str, np.ndarray]) -> None:
        rows = [{"model_version": self._version, "input_sha256": h, "kind": kind,
                 "dim": int(v.shape[0]), "vector": vector_bytes(v), "response_sha256": response_sha256(v),
                 "created_at": utcnow()} for h, v in fresh.items()]
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - only the two supported backends
            raise RuntimeError(f"query cache: unsupported database {dialect}")
        stmt = insert(QueryCacheEntry).on_conflict_do_nothing(
            index_elements=["model_version", "input_sha256", "kind"])
        session.execute(stmt, rows)

    def _append(self, session: Any, run: AuditRun, kind: str, hashes: list[str], resp: list[str],
                cached: list[bool], latency_ms: float | list[float], when: datetime) -> None:
        """Append one evidence item per query to the run's chain, as one batch."""
        from audit_lib.evidence import EvidenceRow, append_evidence_many

        lat = latency_ms if isinstance(latency_ms, list) else [latency_ms] * len(hashes)
        append_evidence_many(session, run, [
            EvidenceRow(kind=kind, input_sha256=h, response_sha256=r, model_version_id=self.model_version_id,
                        cached=bool(c), latency_ms=float(ms), requested_at=when)
            for h, r, c, ms in zip(hashes, resp, cached, lat)])
