"""The in-process memo of text sets (IDIA's decoy prompts): their hashes and answers.

A privacy audit asks every subject's identity inference for the same ~21,000 decoy
prompts. The store-backed handle (:mod:`audit_lib.encoders.cache`) keeps the last few sets'
answers here, keyed by (model version, set sha256), and the prompts' hash lists keyed by
the texts, so a process hashes and reads a set once. The memo holds only what the query
cache holds; erasing cached answers clears it (:func:`clear_text_set_memo`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SET_MEMO_ENTRIES = 4  # text sets kept in memory per process (IDIA: ~21 MB each at d = 256)

_SET_LOCK = threading.Lock()  # guards the memos below
_DIGESTS: OrderedDict[str, tuple[str, ...]] = OrderedDict()
# The same tuple object seen again (IDIA's ``decoy_prompts`` hands out one per name list):
# id -> (the tuple, its digests). The memo holds the tuple, so its id is not reused meanwhile.
_BY_IDENTITY: OrderedDict[int, tuple[tuple[str, ...], tuple[str, ...]]] = OrderedDict()


def text_hashes(texts: Sequence[str]) -> tuple[str, ...]:
    """The sha256 hex digests of texts (UTF-8), in order. The lists of the last few text
    sets are remembered (keyed by one sha256 over the length-prefixed texts), so a
    process that audits many subjects with the same decoy prompts hashes them once; a tuple
    seen before is known by identity, without reading its texts at all."""
    if isinstance(texts, tuple):
        with _SET_LOCK:
            known = _BY_IDENTITY.get(id(texts))
            if known is not None and known[0] is texts:
                _BY_IDENTITY.move_to_end(id(texts))
                return known[1]
    out = _content_hashes(texts)
    if isinstance(texts, tuple):
        with _SET_LOCK:
            _BY_IDENTITY[id(texts)] = (texts, out)
            while len(_BY_IDENTITY) > SET_MEMO_ENTRIES:
                _BY_IDENTITY.popitem(last=False)
    return out


def _content_hashes(texts: Sequence[str]) -> tuple[str, ...]:
    whole = hashlib.sha256()
    for t in texts:
        b = str(t).encode("utf-8")
        whole.update(len(b).to_bytes(8, "little"))
        whole.update(b)
    key = whole.hexdigest()
    with _SET_LOCK:
        hit = _DIGESTS.get(key)
        if hit is not None:
            _DIGESTS.move_to_end(key)
            return hit
    out = tuple(hashlib.sha256(str(t).encode("utf-8")).hexdigest() for t in texts)
    with _SET_LOCK:
        _DIGESTS[key] = out
        while len(_DIGESTS) > SET_MEMO_ENTRIES:
            _DIGESTS.popitem(last=False)
    return out


@dataclass(frozen=True)
class MemoSet:
    """A text set's answers as one process keeps them (read-only embeddings)."""

    embeddings: np.ndarray
    response_sha256: str


_SET_MEMO: OrderedDict[tuple[str, str], MemoSet] = OrderedDict()


def memo_get(key: tuple[str, str]) -> MemoSet | None:
    """The text set kept for (model version, set sha256), or None (marks it recently used)."""
    with _SET_LOCK:
        hit = _SET_MEMO.get(key)
        if hit is not None:
            _SET_MEMO.move_to_end(key)
        return hit


def memo_put(key: tuple[str, str], value: MemoSet) -> None:
    """Keep a text set's answers; the least recently used beyond ``SET_MEMO_ENTRIES`` go."""
    with _SET_LOCK:
        _SET_MEMO[key] = value
        _SET_MEMO.move_to_end(key)
        while len(_SET_MEMO) > SET_MEMO_ENTRIES:
            _SET_MEMO.popitem(last=False)


def clear_text_set_memo() -> None:
    """Forget the in-process text sets (tests; a process that must re-read the store)."""
    with _SET_LOCK:
        _SET_MEMO.clear()
        _DIGESTS.clear()
        _BY_IDENTITY.clear()
