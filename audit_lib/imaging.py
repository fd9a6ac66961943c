"""Arrays to the image files a query sends: one PNG encoder for methods, zoo, eval and benches.

Every image a method sends to a model as a file (watermark probes, fingerprints, theft
surrogates, evaluation members) is encoded here, so the bytes, and with them the query
cache keys and the evidence hashes, are the same whoever sends them. The encoding is fixed:
PIL's PNG writer at zlib level 6, no optimisation pass, no metadata. Changing it changes
every evidence hash of an image query (``tests/test_imaging.py`` pins it).

Untrusted image files coming *in* (uploads, registered photos) are read by
:mod:`audit_lib.images`, not here.
"""

from __future__ import annotations

import io

import numpy as np

PNG_COMPRESS_LEVEL = 6


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image, (H, W, 3) RGB or (H, W) grey, as PNG bytes (lossless, deterministic)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"png_bytes: expected a uint8 (H, W, 3) or (H, W) image, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.ndim == 3 else "L").save(
        buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def png_batch(images_u8: np.ndarray) -> list[bytes]:
    """A uint8 (N, H, W, 3) batch as N PNG files (:func:`png_bytes` of each)."""
    arr = np.asarray(images_u8)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"png_batch: expected uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    return [png_bytes(img) for img in arr]
