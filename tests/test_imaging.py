"""The one PNG encoder: its bytes must not drift (query cache keys and evidence hashes of
every image query depend on them), and it refuses arrays that are not images."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from audit_lib.imaging import png_batch, png_bytes

# sha256 of png_bytes of the fixed pattern below, as every earlier encoder in the code wrote it
GOLDEN_RGB = "ede378c9e8f81004425b41e05ff1c980ed2d77a3856a335b345033c7f9f9e409"


def _pattern() -> np.ndarray:
    return (np.arange(16 * 12 * 3) % 251).astype(np.uint8).reshape(16, 12, 3)


def _pil_default(arr: np.ndarray) -> bytes:
    """PIL's plain PNG writer (the way images were encoded before this module existed)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_png_bytes_are_pinned_and_match_pils_default_writer():
    assert hashlib.sha256(png_bytes(_pattern())).hexdigest() == GOLDEN_RGB
    rng = np.random.default_rng(7)
    for shape in ((9, 13, 3), (32, 32, 3), (5, 7)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert png_bytes(img) == _pil_default(img)
    batch = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    assert png_batch(batch) == [_pil_default(im) for im in batch]


def test_png_round_trip_is_lossless_and_bad_arrays_are_refused():
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(img)))), img)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(img.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        png_batch(img)
