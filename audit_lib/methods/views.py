"""Seeded augmented views of an image, for EncoderMI.

EncoderMI (Liu, Jia, Qu, Gong, "EncoderMI: Membership Inference against Pre-trained
Encoders in Contrastive Learning", ACM CCS 2021, arXiv 2108.11023, §4.2) embeds n views
of an input made with the augmentations of contrastive pre-training (SimCLR's: random
resized crop, horizontal flip, colour jitter, grayscale) and compares them.

Departure, for evidence: the paper draws views at random; here each image's views come
from a generator seeded by the image's sha256, so a re-run produces byte-identical views
(PNG-encoded, deterministic) that hit the query cache and can be re-derived by a
reviewer from the image alone. The augmentation is written with PIL and numpy (not
torchvision's global RNG) so that it does not depend on process-wide random state.

Speed, without changing a byte: each view is a :class:`View`, its canonical PNG bytes (what
is hashed, cached and recorded) carrying the pixels they were encoded from, so an
in-process handle embeds the pixels instead of decoding the PNG again (PNG is lossless: the
decoded image is the same). The views of images asked for again and again (a model's
reference non-members, by every membership pair of an audit) can be kept in a small
per-process memo (``make_views(..., memo=True)``, bounded by :data:`MEMO_BYTES`); the
subjects' own images are never kept.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

VIEWS_VERSION = "views-v1"
MEMO_BYTES = 64 * 2**20  # the view memo's budget: PNG bytes plus pixels of the views it keeps


class View(bytes):
    """One view's canonical PNG bytes (compared, hashed and stored as those bytes) with the
    RGB pixels they encode in ``pixels`` (a PIL image), so that a local handle need not
    decode them again. Only :func:`make_views` makes them: the pixels are the image the
    bytes were encoded from."""

    pixels: Any

    def __new__(cls, data: bytes, pixels: Any) -> View:
        self = super().__new__(cls, data)
        self.pixels = pixels
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: plain bytes
        return bytes, (bytes(self),)


@dataclass(frozen=True)
class ViewRecipe:
    """SimCLR's augmentation parameters (Chen et al., ICML 2020, appendix A), with the
    crop scale range of small-image SimCLR training. ``size`` 0 keeps the image's size."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    size: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_RECIPE = ViewRecipe()


def image_seed(image: bytes, salt: str = VIEWS_VERSION) -> int:
    """The per-image seed: the first 8 bytes of sha256(salt || image)."""
    return int.from_bytes(hashlib.sha256(salt.encode() + b"\0" + image).digest()[:8], "big")


def _crop_box(rng: np.random.Generator, w: int, h: int, recipe: ViewRecipe) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling (10 tries, then a centre crop)."""
    area = w * h
    log_ratio = np.log(recipe.crop_ratio)
    for _ in range(10):
        target = area * rng.uniform(*recipe.crop_scale)
        ratio = float(np.exp(rng.uniform(*log_ratio)))
        cw = int(round(np.sqrt(target * ratio)))
        ch = int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    return x, y, x + side, y + side


def _jitter(img, rng: np.random.Generator, recipe: ViewRecipe):
    """Colour jitter: brightness, contrast, saturation, hue in a random order."""
    from PIL import Image, ImageEnhance

    ops = rng.permutation(4)
    for op in ops:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - recipe.brightness, 1 + recipe.brightness))
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - recipe.contrast, 1 + recipe.contrast))
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(rng.uniform(1 - recipe.saturation, 1 + recipe.saturation))
        else:
            shift = int(round(rng.uniform(-recipe.hue, recipe.hue) * 255))
            h, s, v = img.convert("HSV").split()
            h = h.point(lambda x: (x + shift) % 256)
            img = Image.merge("HSV", (h, s, v)).convert("RGB")
    return img


_MEMO: OrderedDict[tuple[str, int, ViewRecipe], tuple[list[View], int]] = OrderedDict()
_MEMO_LOCK = threading.Lock()
_memo_bytes = 0


def make_views(image: bytes, n: int, recipe: ViewRecipe = DEFAULT_RECIPE, *, memo: bool = False) -> list[View]:
    """``n`` augmented views of one encoded image, each PNG-encoded (a :class:`View`); the
    same bytes in give the same views out, on any run. ``memo``: keep them in the process's
    view memo and answer from it next time (for images many tasks ask for: a model's
    reference non-members; never a subject's own images)."""
    if n < 2:
        raise ValueError(f"views: n = {n}; at least 2 views are needed for a pairwise similarity")
    if not memo:
        return _make_views(image, n, recipe)
    key = (hashlib.sha256(image).hexdigest(), n, recipe)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return list(hit[0])
    views = _make_views(image, n, recipe)
    _memo_put(key, views)
    return list(views)


def _memo_put(key: tuple[str, int, ViewRecipe], views: list[View]) -> None:
    global _memo_bytes
    size = sum(len(v) + v.pixels.width * v.pixels.height * len(v.pixels.getbands()) for v in views)
    if size > MEMO_BYTES // 4:
        return  # a big image's views would push out everything else
    with _MEMO_LOCK:
        if key in _MEMO:
            return
        _MEMO[key] = (views, size)
        _memo_bytes += size
        while _memo_bytes > MEMO_BYTES:
            _, (_, freed) = _MEMO.popitem(last=False)
            _memo_bytes -= freed


def clear_view_memo() -> None:
    """Forget every memoised view (an erasure clears the process memos)."""
    global _memo_bytes
    with _MEMO_LOCK:
        _MEMO.clear()
        _memo_bytes = 0


def _make_views(image: bytes, n: int, recipe: ViewRecipe) -> list[View]:
    from audit_lib.images import decode_rgb

    base = decode_rgb(image)
    w, h = base.size
    out_size = (recipe.size, recipe.size) if recipe.size else (w, h)
    rng = np.random.default_rng(image_seed(image))
    views = []
    from PIL import Image

    for _ in range(n):
        box = _crop_box(rng, w, h, recipe)
        view = base.crop(box).resize(out_size, Image.Resampling.BILINEAR)
        if rng.random() < recipe.flip_p:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < recipe.jitter_p:
            view = _jitter(view, rng, recipe)
        if rng.random() < recipe.grayscale_p:
            view = view.convert("L").convert("RGB")
        buf = io.BytesIO()
        view.save(buf, "PNG", optimize=False, compress_level=6)
        views.append(View(buf.getvalue(), view))
    return views
