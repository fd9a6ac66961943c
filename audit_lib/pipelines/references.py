"""Reference non-members for membership inference: images that cannot be in a model's
training set (DESIGN §2.2), against which claimed images are ranked.

They are operator configuration, per model, in the data folder:
``{AUDIT_DATA_DIR}/reference-nonmembers/<model name>/`` (or ``default/`` for every model
without its own folder). Every file passes the same untrusted-image checks as uploads.
"""

from __future__ import annotations

from pathlib import Path

from audit_lib.config import get_settings


def reference_root() -> Path:
    return get_settings().data_dir / "reference-nonmembers"


def reference_dir(model_name: str) -> Path | None:
    """The folder of reference non-members for ``model_name``, or None when none is set."""
    root = reference_root()
    for candidate in (root / model_name, root / "default"):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return None


def load_reference_nonmembers(model_name: str) -> list[bytes]:
    """The checked image bytes of the model's reference non-members, in file-name order.

    Raises ValueError naming the folder to fill when there are none.
    """
    from audit_lib.images import check_image_folder
    from audit_lib.registry import ImageLimits

    folder = reference_dir(model_name)
    if folder is None:
        raise ValueError(f"model {model_name!r}: no reference non-members; put images that "
                         f"cannot be in its training set in {reference_root() / model_name}")
    images = check_image_folder(folder, **ImageLimits.from_settings().as_kwargs())
    return [im.data for im in sorted(images, key=lambda im: im.name)]


def write_reference_nonmembers(model_name: str, images: list[tuple[str, bytes]]) -> Path:
    """Write (file name, bytes) pairs as the model's reference set (used by the demo and
    the zoo wiring); file names must be plain names."""
    folder = reference_root() / model_name
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images:
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"reference image name {name!r} is not a plain file name")
        (folder / name).write_bytes(data)
    return folder
