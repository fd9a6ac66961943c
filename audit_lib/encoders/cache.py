"""The query cache and evidence log in front of any handle.

:class:`StoreBackedHandle` wraps a local or remote handle:

- it resolves the model version once, at construction (the weights' sha256, or the canary
  embeddings for an API, see :mod:`audit_lib.encoders.version`) and ensures the
  :class:`~audit_lib.store.models.ModelVersion` row (``.model_version_id``);
- every input is looked up in ``query_cache`` by (model version, input sha256, kind); only
  misses reach the inner handle, so a second audit of the same inputs on the same version
  sends no request, and a finding can be recomputed from stored answers;
- every query, cached or not, becomes an evidence item in the run's hash chain (input
  hash, response hash = sha256 of the float32 little-endian vector, time, latency, cached);
- a *text set* (:meth:`StoreBackedHandle.encode_text_set`: IDIA's ~21,000 decoy prompts,
  the same for every subject) is a per-model-version artefact: its members are cached and
  queried like any text, a manifest row in ``query_cache`` (kind ``text-set``) lists the
  ordered member input and response hashes, each process keeps the embeddings in a small
  memo (:mod:`audit_lib.encoders.text_set_memo`), and a run records the whole set as ONE evidence item (kind ``text-set``: input =
  :func:`member_set_sha256` of the ordered prompt hashes, response = the same digest of the
  ordered response hashes). :func:`read_text_set` expands it again from the store. A set
  is read and embedded under a store lock of its own (:func:`text_set_lock_name`), so two
  tasks that reach the same set at once send its misses once;
- with ``skip_recorded_repeats`` a cached answer that this process already recorded in the
  run's chain (same kind, input and response) is not appended again (EncoderMI's reference
  views are asked for by every pair of a privacy audit).

Sessions are short (one per lookup, one per write) so long model calls hold no transaction.
An answer is cached only after the inner handle returned it validated; a failing call
leaves neither cache rows nor evidence behind. A write inserts its cache rows (sorted by
key) before it takes the run's row lock to append evidence: the lock order of
:mod:`audit_lib.evidence`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from audit_lib.encoders.base import EncoderHandle, NotApplicable, QueryCounts, WrappingHandle
from audit_lib.encoders.text_set_memo import MemoSet, clear_text_set_memo, memo_get, memo_put, text_hashes
from audit_lib.store.models import AuditRun, ModelVersion, QueryCacheEntry, utcnow

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 500
SET_KIND = "text-set"  # the manifest row in query_cache and the evidence item of a text set
RECORDED_RUNS = 8  # runs whose recorded (kind, input, response) keys a process remembers
RECORDED_KEYS_PER_RUN = 2_000_000  # beyond this a run's repeats are recorded again


def vector_bytes(vec: np.ndarray) -> bytes:
    """The canonical bytes of an answer: float32 little-endian."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def response_sha256(vec: np.ndarray) -> str:
    return hashlib.sha256(vector_bytes(vec)).hexdigest()


def member_set_sha256(hashes: Sequence[str]) -> str:
    """The digest that commits to an ordered list of sha256 hex digests: sha256 of the
    digests joined by newlines (no trailing newline). A text set's evidence item has the
    digest of its prompt hashes as input and that of its response hashes as response."""
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def _set_manifest_bytes(inputs: Sequence[str], responses: Sequence[str]) -> bytes:
    """The manifest row's payload: the raw 32-byte input digests in order, then the
    response digests in the same order."""
    return b"".join(bytes.fromhex(h) for h in inputs) + b"".join(bytes.fromhex(r) for r in responses)


def text_set_lock_name(model_version: str, set_sha256: str) -> str:
    """The name of the store lock (:func:`audit_lib.store.locks.store_lock`) under which a
    text set of a model version is read and embedded."""
    return f"text-set:{model_version}:{set_sha256}"


def read_text_set(session: Any, model_version: str, set_sha256: str) -> list[tuple[str, str]]:
    """Expand a ``text-set`` evidence item from the store: the ordered (prompt sha256,
    response sha256) pairs it commits to. Checks that the manifest row's input hashes give
    ``set_sha256`` and its response hashes give the recorded response digest, and that
    every member is a ``text`` row of the query cache with that response hash, so an expert
    can re-derive each member from the store (and re-embed the prompts to reproduce it).
    Raises ``ValueError`` naming what does not fit."""
    row = session.get(QueryCacheEntry, {"model_version": model_version, "input_sha256": set_sha256,
                                        "kind": SET_KIND})
    if row is None:
        raise ValueError(f"text set {set_sha256[:12]}: no manifest row for model version {model_version[:12]}")
    n, raw = int(row.dim), bytes(row.vector)
    if len(raw) != 64 * n:
        raise ValueError(f"text set {set_sha256[:12]}: manifest of {len(raw)} bytes for {n} members")
    inputs = [raw[32 * i:32 * (i + 1)].hex() for i in range(n)]
    responses = [raw[32 * (n + i):32 * (n + i + 1)].hex() for i in range(n)]
    if member_set_sha256(inputs) != set_sha256:
        raise ValueError(f"text set {set_sha256[:12]}: the manifest's prompt hashes do not give its digest")
    if member_set_sha256(responses) != row.response_sha256:
        raise ValueError(f"text set {set_sha256[:12]}: the manifest's response hashes do not give its digest")
    stored: dict[str, str] = {}
    unique = list(dict.fromkeys(inputs))
    for i in range(0, len(unique), LOOKUP_CHUNK):
        stored.update(session.execute(
            select(QueryCacheEntry.input_sha256, QueryCacheEntry.response_sha256)
            .where(QueryCacheEntry.model_version == model_version, QueryCacheEntry.kind == "text",
                   QueryCacheEntry.input_sha256.in_(unique[i:i + LOOKUP_CHUNK]))).all())
    bad = sum(1 for h, r in zip(inputs, responses) if stored.get(h) != r)
    if bad:
        raise ValueError(f"text set {set_sha256[:12]}: {bad} member(s) missing from the query cache "
                         "or answered differently there")
    return list(zip(inputs, responses))


@dataclass
class _RunRecord:
    """What one process appended to one run's chain: the (kind, input, response) keys
    (:func:`recorded_key`) and the last row it wrote (checked against the store before the
    keys are trusted, so a purged or re-created database is never taken for the remembered
    one)."""

    anchor: tuple[int, str] | None = None
    keys: set[bytes] = field(default_factory=set)


def recorded_key(kind: str, input_sha256: str, response_sha256: str) -> bytes:
    """The compact key a run record remembers for one appended row: 16 bytes of BLAKE2b
    over (kind, input hash, response hash), several times smaller than the three strings, so
    a registry-scale run's record stays small (the odds of any collision among the two
    million keys a run may remember are below 2^-86)."""
    return hashlib.blake2b(f"{kind}\0{input_sha256}\0{response_sha256}".encode("utf-8"), digest_size=16).digest()


_RECORDED: OrderedDict[tuple[str, str], _RunRecord] = OrderedDict()
_RECORDED_LOCK = threading.Lock()


def _run_record(session: Any, run: AuditRun) -> _RunRecord:
    """This process's record of ``run`` in this database, validated against the store."""
    from audit_lib.store.models import EvidenceItem

    key = (str(session.get_bind().url), run.run_key)
    with _RECORDED_LOCK:
        rec = _RECORDED.get(key)
        if rec is None:
            rec = _RECORDED[key] = _RunRecord()
            while len(_RECORDED) > RECORDED_RUNS:
                _RECORDED.popitem(last=False)
        _RECORDED.move_to_end(key)
    if rec.anchor is not None:
        seq, row_hash = rec.anchor
        stored = session.scalar(select(EvidenceItem.row_hash).where(EvidenceItem.run_id == run.id,
                                                                    EvidenceItem.seq == seq))
        if stored != row_hash:
            rec.anchor, rec.keys = None, set()
    return rec


def _image_bytes(image: Any) -> bytes:
    """The encoded bytes of one input; a ``bytes`` object as it is (a view keeps the pixels
    it carries for the inner handle, see :class:`audit_lib.methods.views.View`)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    from PIL import Image

    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()
    raise TypeError(f"an image must be encoded bytes or a PIL image, not {type(image).__name__}")


class StoreBackedHandle(WrappingHandle):
    """Any handle, with the store's query cache and evidence chain in front of it."""

    def __init__(self, inner: EncoderHandle, *, db_url: str | None = None, model_id: int,
                 run_key: str | None = None, run_kind: str = "audit",
                 answering_config: str | None = None) -> None:
        super().__init__(inner)
        # an API's api_config_sha256 (endpoint + adapter): part of its version
        self.answering_config = answering_config
        self.db_url = db_url
        self.model_id = int(model_id)
        self.run_key = run_key
        self.run_kind = run_kind
        self.hits = 0  # answers read from the query cache
        self.misses = 0  # queries sent to the model (the version check's canaries apart)
        self.canary_queries = 0  # canary images sent to check an API's version
        self.skip_recorded_repeats = False  # see the module doc; the privacy pipeline sets it
        self.model_version_id: int
        self._version: str
        self._resolve_version()

    # --- the handle protocol (capabilities and embedding size: the inner handle's) --------
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

    def encode_text_set(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a text set shared by many audits of this model version (IDIA's decoy
        prompts), recorded in the run as ONE ``text-set`` evidence item.

        The first call in a process reads the members from the query cache (only misses
        reach the model, each recorded as an ordinary ``text`` query), writes the set's
        manifest row and keeps the embeddings in memory; later calls for the same model
        version and prompt list read nothing but the manifest row's key. Every member
        counts as a hit or a miss, as through :meth:`encode_texts`.

        Reading and embedding happen under the store lock of the set
        (:func:`text_set_lock_name`), so tasks that start on the same set side by side (two
        chunks of one model on two workers) take turns: the first sends the misses, the
        next finds them in the query cache."""
        if "text" not in self.capabilities:
            raise NotApplicable("this model has no text embeddings")
        hashes = list(text_hashes(texts))
        texts = list(texts)
        n = len(texts)
        if n == 0:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        set_sha = member_set_sha256(hashes)
        key = (self._version, set_sha)
        when = utcnow()
        memo = memo_get(key)
        if memo is not None and self._record_memo_set(set_sha, memo, when):
            self.hits += n
            return memo.embeddings
        from audit_lib.store.locks import store_lock

        with store_lock(text_set_lock_name(self._version, set_sha), self.db_url):
            t0 = time.perf_counter()
            out, _found, fresh, _lookup_ms, miss_ms = self._answers(
                hashes, "text", lambda idx: self.inner.encode_texts([str(texts[i]) for i in idx]))
            resp = [response_sha256(v) for v in out]
            resp_sha = member_set_sha256(resp)
            self._store_set(set_sha, hashes, resp, resp_sha, fresh, miss_ms,
                            (time.perf_counter() - t0) * 1000, when)
        out.setflags(write=False)
        memo_put(key, MemoSet(out, resp_sha))
        return out

    def _record_memo_set(self, set_sha: str, memo: MemoSet, when: datetime) -> bool:
        """Record a set answered from the process memo; False when the store lacks its
        manifest row (another database, or a purged cache): then it is read again."""
        from audit_lib.store.db import session_scope

        with session_scope(self.db_url) as s:
            stored = s.scalar(select(QueryCacheEntry.response_sha256).where(
                QueryCacheEntry.model_version == self._version, QueryCacheEntry.input_sha256 == set_sha,
                QueryCacheEntry.kind == SET_KIND))
            if stored != memo.response_sha256:
                return False
            run = self._run(s)
            if run is not None:
                self._append(s, run, SET_KIND, [set_sha], [memo.response_sha256], [True], 0.0, when)
        return True

    def _store_set(self, set_sha: str, hashes: list[str], resp: list[str], resp_sha: str,
                   fresh: dict[str, np.ndarray], miss_ms: float, total_ms: float, when: datetime) -> None:
        """One transaction: the fresh members' cache rows, the set's manifest row, the
        fresh queries' evidence and the set's evidence item."""
        from audit_lib.store.db import session_scope

        with session_scope(self.db_url) as s:
            if fresh:
                self._insert_cache(s, "text", fresh)
            self._insert_rows(s, [{"model_version": self._version, "input_sha256": set_sha, "kind": SET_KIND,
                                   "dim": len(hashes), "vector": _set_manifest_bytes(hashes, resp),
                                   "response_sha256": resp_sha, "created_at": utcnow()}])
            stored = s.scalar(select(QueryCacheEntry.response_sha256).where(
                QueryCacheEntry.model_version == self._version, QueryCacheEntry.input_sha256 == set_sha,
                QueryCacheEntry.kind == SET_KIND))
            if stored != resp_sha:
                raise RuntimeError(f"model {self.model_id}: the text set {set_sha[:12]} is stored with other "
                                   "answers (a concurrent task embedded it differently); re-run the task")
            run = self._run(s)
            if run is not None:
                order = list(fresh)
                self._append(s, run, "text", order, [response_sha256(fresh[h]) for h in order],
                             [False] * len(order), miss_ms, when)
                self._append(s, run, SET_KIND, [set_sha], [resp_sha], [not fresh], total_ms, when)

    # --- version ------------------------------------------------------------------------
    @property
    def versioned_by_canaries(self) -> bool:
        """True when the model's version is read from its answers to the canary images (an
        API: it may change between two calls); False when it is the hash of the weights this
        handle holds (fixed for the handle's life)."""
        return getattr(self.inner, "version_method", "weights") == "canary"

    def _resolve_version(self) -> None:
        from audit_lib.store.db import session_scope

        if self.versioned_by_canaries:
            from audit_lib.encoders.version import (DEFAULT_TOLERANCE, canary_images,
                                                    resolve_canary_version)

            canaries = list(canary_images())
            t0, when = time.perf_counter(), utcnow()
            emb = np.asarray(self.inner.encode_images(canaries, kind="canary"), dtype=np.float32)
            latency = (time.perf_counter() - t0) * 1000 / len(canaries)
            self.canary_queries = len(canaries)
            self._check(emb, len(canaries))
            tolerance = float(getattr(self.inner, "adapter", {}).get("canary_tolerance", DEFAULT_TOLERANCE))
            for attempt in (0, 1):
                try:
                    with session_scope(self.db_url) as s:
                        row, created = resolve_canary_version(s, self.model_id, emb, tolerance=tolerance,
                                                              config_sha256=self.answering_config)
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

        if not data:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        hashes = [hashlib.sha256(b).hexdigest() for b in data]
        when = utcnow()
        out, found, fresh, lookup_ms, miss_ms = self._answers(hashes, kind,
                                                              lambda idx: compute([data[i] for i in idx]))
        cached_flags: list[bool] = []
        seen_fresh: set[str] = set()
        for h in hashes:  # a repeat of a fresh input within the batch counts as cached
            cached_flags.append(h in found or h in seen_fresh)
            if h not in found:
                seen_fresh.add(h)
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

    def _answers(self, hashes: list[str], kind: str, compute: Any
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], float, float]:
        """Answers for ``hashes`` in order: from the query cache where present, else from
        ``compute(indices)`` called once with the first index of each distinct miss (the
        answers are validated). Counts hits and misses. Returns (answers, cached by hash,
        fresh by hash, lookup ms per input, model ms per miss)."""
        n = len(hashes)
        t0 = time.perf_counter()
        found = self._lookup(hashes, kind)
        lookup_ms = (time.perf_counter() - t0) * 1000 / max(n, 1)
        first_of: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h not in found:
                first_of.setdefault(h, i)
        fresh: dict[str, np.ndarray] = {}
        miss_ms = 0.0
        if first_of:
            order = list(first_of)
            t1 = time.perf_counter()
            emb = np.asarray(compute([first_of[h] for h in order]), dtype=np.float32)
            miss_ms = (time.perf_counter() - t1) * 1000 / len(order)
            self._check(emb, len(order))
            fresh = dict(zip(order, emb))
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = found[h] if h in found else fresh[h]
        self.hits += n - len(fresh)
        self.misses += len(fresh)
        return out, found, fresh, lookup_ms, miss_ms

    def _insert_cache(self, session: Any, kind: str, fresh: dict[str, np.ndarray]) -> None:
        self._insert_rows(session, [{"model_version": self._version, "input_sha256": h, "kind": kind,
                                     "dim": int(v.shape[0]), "vector": vector_bytes(v),
                                     "response_sha256": response_sha256(v), "created_at": utcnow()}
                                    for h, v in fresh.items()])

    @staticmethod
    def _insert_rows(session: Any, rows: list[dict[str, Any]]) -> None:
        """Insert query_cache rows; a row already there (same key) is kept as it is. The
        rows go in sorted by key, so two transactions inserting some of the same keys wait
        for one another in one order instead of deadlocking."""
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - only the two supported backends
            raise RuntimeError(f"query cache: unsupported database {dialect}")
        stmt = insert(QueryCacheEntry).on_conflict_do_nothing(
            index_elements=["model_version", "input_sha256", "kind"])
        session.execute(stmt, sorted(rows, key=lambda r: (r["model_version"], r["input_sha256"], r["kind"])))

    def _append(self, session: Any, run: AuditRun, kind: str, hashes: list[str], resp: list[str],
                cached: list[bool], latency_ms: float | list[float], when: datetime) -> None:
        """Append one evidence item per query to the run's chain, as one batch (without the
        cached repeats this process already recorded in the run, with ``skip_recorded_repeats``).
        The remembered keys are added when the caller's transaction commits."""
        from sqlalchemy import event

        from audit_lib.evidence import EvidenceRow, append_evidence_many

        lat = latency_ms if isinstance(latency_ms, list) else [latency_ms] * len(hashes)
        rows = [EvidenceRow(kind=kind, input_sha256=h, response_sha256=r, model_version_id=self.model_version_id,
                            cached=bool(c), latency_ms=float(ms), requested_at=when)
                for h, r, c, ms in zip(hashes, resp, cached, lat)]
        if not self.skip_recorded_repeats:
            if rows:
                append_evidence_many(session, run, rows)
            return
        record = _run_record(session, run)
        kept, keys = [], set()
        for row in rows:
            k = recorded_key(row.kind, row.input_sha256, row.response_sha256)
            if row.cached and (k in record.keys or k in keys):
                continue
            kept.append(row)
            keys.add(k)
        if not kept:
            return
        anchor = append_evidence_many(session, run, kept)

        def remember(_session: Any) -> None:
            with _RECORDED_LOCK:
                if len(record.keys) + len(keys) <= RECORDED_KEYS_PER_RUN:
                    record.keys |= keys
                    record.anchor = anchor

        event.listen(session, "after_commit", remember, once=True)


def query_counts(handle: EncoderHandle) -> tuple[int, int]:
    """(queries sent to the model, answers read from the query cache) that ``handle`` has
    counted so far; (0, 0) for a handle without counters (:class:`QueryCounts`). The
    version check's canary queries are not among them (see ``canary_queries``)."""
    if not isinstance(handle, QueryCounts):
        return 0, 0
    return int(handle.misses or 0), int(handle.hits or 0)


def with_query_counts(details: dict[str, Any], handle: EncoderHandle, since: tuple[int, int]) -> dict[str, Any]:
    """``details`` plus ``queries_sent`` and ``cache_hits``: what the handle counted since
    ``since`` (a :func:`query_counts` taken before the method ran), so a finding says how
    many of its queries reached the model and how many the cache answered."""
    sent, hits = query_counts(handle)
    return {**details, "queries_sent": sent - since[0], "cache_hits": hits - since[1]}


def delete_cached_inputs(session: Any, input_hashes: Sequence[str], kinds: Sequence[str]) -> int:
    """Delete every cached answer (any model version) for these input hashes and kinds: an
    erased subject's photos and name prompts leave the query cache. Returns rows deleted.
    The process memos of text sets and views are cleared too (they may hold the same answers
    or views of the same images)."""
    from sqlalchemy import delete

    hashes = sorted(set(input_hashes))
    deleted = 0
    for start in range(0, len(hashes), 500):
        chunk = hashes[start:start + 500]
        deleted += session.execute(delete(QueryCacheEntry).where(
            QueryCacheEntry.input_sha256.in_(chunk), QueryCacheEntry.kind.in_(list(kinds)))).rowcount or 0
    clear_text_set_memo()
    from audit_lib.methods.views import clear_view_memo

    clear_view_memo()
    return deleted
