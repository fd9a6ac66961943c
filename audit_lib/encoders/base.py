"""The encoder handle: the one interface every method uses to query a model.

A handle hides where the model runs (a local checkpoint on cpu/cuda, or a remote API over
HTTP), batching, mixed precision, caching and evidence recording. Methods only see arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

# An image input: encoded file bytes (PNG/JPEG/PGM …) or a decoded PIL image.
ImageInput = "bytes | PIL.Image.Image"


@runtime_checkable
class EncoderHandle(Protocol):
    """What a method may ask of a model (every method's handle parameter has this type)."""

    @property
    def capabilities(self) -> frozenset[str]:
        """``{"image"}`` or ``{"image", "text"}``."""

    @property
    def embedding_dim(self) -> int:
        """Length of every returned embedding."""

    @property
    def model_version(self) -> str:
        """sha256 of the weights (checkpoint) or of the canary embeddings (API)."""

    def encode_images(self, images: Sequence[bytes], *, kind: str = "image") -> np.ndarray:
        """Embed images (encoded bytes); float32 array of shape (len(images), embedding_dim).
        ``kind`` labels the query in the cache and evidence (e.g. ``image``, ``view``)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; float32 (len(texts), embedding_dim). Raises ``NotApplicable`` when
        the model has no text tower."""


@runtime_checkable
class TextSetHandle(Protocol):
    """A handle that can embed a text set shared by many audits of one model version as one
    evidence item (the store-backed handle, ``encoders/cache.py``). A method checks
    ``isinstance(handle, TextSetHandle)`` and otherwise sends the texts as ordinary queries.
    Only this member is checked at run time, so the check never triggers a version query."""

    def encode_text_set(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as one set; float32 (len(texts), embedding_dim)."""


@runtime_checkable
class QueryCounts(Protocol):
    """The counters a store-backed handle keeps (``encoders/cache.py``): what reached the
    model, what the query cache answered, the version check's canaries."""

    hits: int  # answers read from the query cache
    misses: int  # queries sent to the model (the canaries apart)
    canary_queries: int  # canary images sent to check an API's version


class RecordingHandle(EncoderHandle, TextSetHandle, QueryCounts, Protocol):
    """What workflows and pipeline tasks may use on the handle ``encoders.open_handle``
    returns: the method protocol, the text-set path, the counters, the store id of the
    checked model version, and whether to skip cached repeats already in the run's chain."""

    model_version_id: int  # the store's id of the checked version (findings attach to it)
    skip_recorded_repeats: bool  # True: cached repeats already recorded in this run add no row
    versioned_by_canaries: bool  # True: an API, whose version is read from its canary answers


class WrappingHandle:
    """A handle in front of another one (a cache, a counter): the model's capabilities,
    embedding size and version are the inner handle's unless a subclass says otherwise."""

    def __init__(self, inner: EncoderHandle) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> frozenset[str]:
        return self.inner.capabilities

    @property
    def embedding_dim(self) -> int:
        return self.inner.embedding_dim

    @property
    def model_version(self) -> str:
        return self.inner.model_version


class NotApplicable(Exception):
    """The model cannot answer this kind of query (e.g. text on an image-only encoder)."""
