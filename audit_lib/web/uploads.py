"""Uploaded image files: read, name safely, and check with the CLI's own checks.

The file name a browser sends is only a label for messages (reduced to its last
component, printable characters, 100 at most); it never reaches the filesystem. The
content type a browser sends is ignored: :func:`audit_lib.images.check_image_bytes`
decodes the bytes and decides what they are.
"""

from __future__ import annotations

import unicodedata

from starlette.datastructures import FormData, UploadFile

from audit_lib.images import CheckedImage, ImageError, check_image_bytes
from audit_lib.registry import ImageLimits

MAX_LABEL_CHARS = 100


def display_name(filename: str | None, index: int) -> str:
    """A label for an uploaded file, safe to show and never used as a path."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] not in ("C", "Z") or c == " ")
    base = base.strip().lstrip(".")[:MAX_LABEL_CHARS]
    return base or f"file {index}"


def uploaded_files(form: FormData, field: str) -> list[UploadFile]:
    """The files sent in ``field``; a file input left empty (no name, no bytes) is skipped;
    a plain text value where a file was expected is ignored."""
    return [f for f in form.getlist(field)
            if isinstance(f, UploadFile) and (f.filename or (f.size or 0) > 0)]


async def read_uploads(files: list[UploadFile]) -> list[tuple[str | None, bytes]]:
    """The sent files as (browser's file name, bytes); the request body is already under
    the app's size limit, so reading is bounded."""
    return [(upload.filename, await upload.read()) for upload in files]


def check_uploads(files: list[tuple[str | None, bytes]],
                  taken: set[str]) -> tuple[list[CheckedImage], list[str]]:
    """Check every file (a full decode: CPU work, so call it from the thread pool, never
    on the event loop); returns the images that passed and one message per file that did
    not. ``taken`` holds labels already used in this request (labels are made unique, so a
    message names one file only)."""
    limits = ImageLimits.from_settings().as_kwargs()
    images: list[CheckedImage] = []
    errors: list[str] = []
    for i, (filename, data) in enumerate(files, start=1):
        label = display_name(filename, i)
        if label in taken:
            n = 2
            while f"{label} ({n})" in taken:
                n += 1
            label = f"{label} ({n})"
        taken.add(label)
        try:
            images.append(check_image_bytes(data, label, **limits))
        except ImageError as exc:
            errors.append(str(exc))
    return images, errors
