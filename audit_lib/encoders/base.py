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
    """What a method may ask of a model."""

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


class NotApplicable(Exception):
    """The model cannot answer this kind of query (e.g. text on an image-only encoder)."""
