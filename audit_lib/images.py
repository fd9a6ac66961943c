"""Untrusted image files: decode safely, check, and hash.

Every image that enters the service passes here first, so a bad file is refused with a
message that names the file and the problem, before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile

ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "PPM": "image/x-portable-anymap",
                    "BMP": "image/bmp", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}


class ImageError(ValueError):
    """An input that is not an acceptable image; the message names the input."""


@dataclass(frozen=True)
class CheckedImage:
    """An image that decoded fully and passed the checks, with its bytes' sha256."""

    name: str
    data: bytes
    sha256: str
    media_type: str
    width: int
    height: int



def load_whole(img: Image.Image) -> None:
    """Decode all of ``img``, refusing a truncated file even where a library imported
    elsewhere in the process has set Pillow's global ``LOAD_TRUNCATED_IMAGES``."""
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_image_bytes(data: bytes, name: str, *, min_side: int, max_pixels: int,
                      max_bytes: int) -> CheckedImage:
    """Decode ``data`` completely and check format, size and pixel count.

    Refuses: non-images, unsupported formats, truncated files, decompression bombs (more
    than ``max_pixels`` pixels, checked from the header before decoding), and images whose
    shorter side is under ``min_side``.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: {width}x{height} pixels is over the limit of "
                                 f"{max_pixels} pixels (decompression bomb?)")
            if fmt not in ACCEPTED_FORMATS:
                raise ImageError(f"{name}: image format {fmt} is not accepted "
                                 f"(accepted: {', '.join(sorted(ACCEPTED_FORMATS))})")
            load_whole(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: decompression bomb refused ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from None
    if min(width, height) < min_side:
        raise ImageError(f"{name}: {width}x{height} is too small "
                         f"(the shorter side must be at least {min_side} pixels)")
    return CheckedImage(name=name, data=data, sha256=sha256_bytes(data),
                        media_type=ACCEPTED_FORMATS[fmt], width=width, height=height)


def check_image_file(path: Path, **limits: int) -> CheckedImage:
    """Read and check one image file (see :func:`check_image_bytes`). The size is checked
    with ``stat`` before reading, and no more than the limit (plus one byte) is read, so an
    oversized file is refused without being loaded into memory."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    max_bytes = int(limits["max_bytes"])
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError(f"{path}: {size} bytes is over the limit of {max_bytes} bytes")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)  # the file may have grown since stat
    return check_image_bytes(data, str(path), **limits)


def check_image_folder(folder: Path, **limits: int) -> list[CheckedImage]:
    """Check every file in ``folder`` (not recursive; hidden files skipped), sorted by name.

    An empty folder or a folder with two identical images is an error: both are mistakes
    a DPO would want to hear about rather than have silently absorbed.
    """
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    root = folder.resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for p in files:
        if p.resolve().parent != root:
            raise ImageError(f"{p}: a link to a file outside the folder ({p.resolve()}); copy the image "
                             "into the folder instead")
    if not files:
        raise ImageError(f"{folder}: the folder has no image files")
    images = [check_image_file(p, **limits) for p in files]
    seen: dict[str, str] = {}
    for img in images:
        if img.sha256 in seen:
            raise ImageError(f"{img.name}: duplicate image, the same bytes as {seen[img.sha256]} "
                             f"(sha256 {img.sha256[:12]}…)")
        seen[img.sha256] = img.name
    return images


def decode_rgb(data: bytes) -> Image.Image:
    """Decode stored (already checked) bytes to an RGB image; greyscale is repeated."""
    return Image.open(io.BytesIO(data)).convert("RGB")
