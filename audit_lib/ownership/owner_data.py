"""The image sets a model owner registers for their own model, and the loader that turns
them into :class:`~audit_lib.ownership.data.OwnershipData`.

Three roles per model:

- ``owner``: the owner's own images (the watermark is fine-tuned in on them; derivatives
  are built from them);
- ``public``: attacker-side public images, the surrogate set of theft simulation. They
  must not overlap the owner's images (checked by sha256), or the theft estimate would be
  optimistic;
- ``downstream``: a labelled evaluation set, one sub-folder per class (the ImageFolder
  convention), on which utility, agreement and the black-box check are measured.

Every file passes the same untrusted-image checks as a subject's photos
(:func:`audit_lib.images.check_image_bytes` with the settings' limits). The files are
COPIED under the data folder, ``{data_dir}/model-data/<model id>/<role>/<manifest sha256
prefix>/[<class>/]<sha256><ext>`` (the extension follows the decoded format, so no name
from the upload reaches the disk); the database row keeps the manifest (relative path,
sha256, label per file) and its sha256. Files are written to a staging folder and moved
into place only when the row commits; a refused or rolled-back registration leaves neither
rows nor files. The newest row of a (model, role) is the current set; older rows stay for
the findings that name them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.evidence import canonical_json, sha256_hex
from audit_lib.images import CheckedImage, ImageError, check_image_bytes, check_image_folder
from audit_lib.store.models import AuditedModel, ModelImageSet

log = logging.getLogger(__name__)

ROLES = ("owner", "public", "downstream")
DATA_SUBDIR = "model-data"
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/x-portable-anymap": ".ppm", "image/bmp": ".bmp",
              "image/webp": ".webp", "image/tiff": ".tiff", "image/gif": ".gif"}
MAX_LABEL = 100  # longest class folder name kept in a manifest


class OwnerDataError(ValueError):
    """A model-data registration or load that cannot be carried out; says why and the fix."""


@dataclass(frozen=True)
class PreparedSet:
    """An image folder read and checked, with its manifest, not yet stored."""

    role: str
    images: list[CheckedImage]
    labels: list[str | None]
    manifest: list[dict[str, Any]]
    manifest_sha256: str
    classes: list[str] | None


def _limits() -> dict[str, int]:
    from audit_lib.registry import ImageLimits

    return ImageLimits.from_settings().as_kwargs()


def _data_dir() -> Path:
    from audit_lib.config import get_settings

    return Path(get_settings().data_dir)


def _manifest(role: str, images: list[CheckedImage], labels: list[str | None]) -> PreparedSet:
    rows = []
    for img, label in zip(images, labels):
        name = img.sha256 + EXTENSIONS[img.media_type]
        rows.append({"path": f"{label}/{name}" if label is not None else name, "sha256": img.sha256,
                     "label": label})
    order = sorted(range(len(rows)), key=lambda i: rows[i]["path"])
    rows = [rows[i] for i in order]
    images = [images[i] for i in order]
    labels = [labels[i] for i in order]
    classes = sorted({lb for lb in labels if lb is not None}) if role == "downstream" else None
    return PreparedSet(role, images, labels, rows, sha256_hex(canonical_json({"role": role, "files": rows})), classes)


def read_plain_folder(role: str, folder: Path) -> PreparedSet:
    """An ``owner`` or ``public`` folder: every (non-hidden) file checked as an image."""
    try:
        images = check_image_folder(Path(folder), **_limits())
    except ImageError as exc:
        raise OwnerDataError(f"--{role}: {exc}") from None
    return _manifest(role, images, [None] * len(images))


def read_labelled_folder(folder: Path) -> PreparedSet:
    """A ``downstream`` folder: one sub-folder per class (at least two classes), each with
    at least one image; no loose files; the same image in two classes is refused."""
    folder = Path(folder)
    fix = "give a folder with one sub-folder of images per class (at least two classes)"
    if not folder.is_dir():
        raise OwnerDataError(f"--downstream: {folder}: not a folder; {fix}")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p.name for p in entries if not p.is_dir()]
    if loose:
        raise OwnerDataError(f"--downstream: {folder} has files outside class sub-folders ({', '.join(loose[:3])}); "
                             f"{fix}")
    classes = [p for p in entries if p.is_dir()]
    if len(classes) < 2:
        raise OwnerDataError(f"--downstream: {folder} has {len(classes)} class sub-folder(s); {fix}")
    images: list[CheckedImage] = []
    labels: list[str | None] = []
    seen: dict[str, str] = {}
    for sub in classes:
        if len(sub.name) > MAX_LABEL:
            raise OwnerDataError(f"--downstream: class folder name {sub.name[:20]}… is over {MAX_LABEL} characters")
        try:
            got = check_image_folder(sub, **_limits())
        except ImageError as exc:
            raise OwnerDataError(f"--downstream: {exc}") from None
        for img in got:
            if img.sha256 in seen:
                raise OwnerDataError(f"--downstream: {img.name} is the same image as {seen[img.sha256]} in another "
                                     "class; an image needs one label")
            seen[img.sha256] = img.name
        images += got
        labels += [sub.name] * len(got)
    return _manifest("downstream", images, labels)


def current_image_sets(session: Session, model_id: int) -> dict[str, ModelImageSet]:
    """The current (newest) image set of each role registered for a model."""
    rows = session.scalars(select(ModelImageSet).where(ModelImageSet.model_id == model_id)
                           .order_by(ModelImageSet.id))
    return {row.role: row for row in rows}


def _stage(prepared: PreparedSet, staging: Path) -> None:
    for img, row in zip(prepared.images, prepared.manifest):
        path = staging / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # images may be personal data
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(img.data)


def add_model_data(session: Session, model: AuditedModel, *, owner: Path | None = None, public: Path | None = None,
                   downstream: Path | None = None) -> list[ModelImageSet]:
    """Register image folders for ``model`` (any of the three roles) in the caller's
    transaction. Every folder is read and checked, and the public set compared with the
    owner's images (given now or registered before), before anything is written; the files
    are staged and moved into place when the transaction commits (removed on rollback)."""
    from sqlalchemy import event

    given = {"owner": owner, "public": public, "downstream": downstream}
    if not any(given.values()):
        raise OwnerDataError("give at least one of --owner DIR, --public DIR, --downstream DIR")
    prepared: dict[str, PreparedSet] = {}
    for role, folder in given.items():
        if folder is not None:
            prepared[role] = read_labelled_folder(folder) if role == "downstream" else read_plain_folder(role, folder)
    current = current_image_sets(session, model.id)

    def hashes(role: str) -> set[str]:
        if role in prepared:
            return {r["sha256"] for r in prepared[role].manifest}
        return {r["sha256"] for r in current[role].manifest} if role in current else set()

    shared = len(hashes("public") & hashes("owner"))
    if shared:
        raise OwnerDataError(f"--public: {shared} image(s) are also in the owner's images; the surrogate set must be "
                             "images an attacker has without the owner's data (else the theft estimate is optimistic): "
                             "remove them from the public folder")
    new: list[tuple[PreparedSet, str]] = []
    rows: list[ModelImageSet] = []
    for role, prep in prepared.items():
        folder = f"{DATA_SUBDIR}/{model.id}/{role}/{prep.manifest_sha256[:16]}"
        existing = session.scalar(select(ModelImageSet).where(ModelImageSet.model_id == model.id,
                                                              ModelImageSet.role == role,
                                                              ModelImageSet.manifest_sha256 == prep.manifest_sha256))
        if existing is not None:
            if role in current and current[role].id == existing.id:
                rows.append(existing)  # the same set again: nothing to do
                continue
            raise OwnerDataError(f"--{role}: this exact set was registered before (set {existing.id}) and has been "
                                 "replaced since; change the folder or register the newer set again")
        new.append((prep, folder))
    if not new:
        return rows
    root = _data_dir()
    staging = root / DATA_SUBDIR / str(model.id) / f".staging-{secrets.token_hex(6)}"
    try:
        for prep, folder in new:
            _stage(prep, staging / prep.role)
            row = ModelImageSet(model_id=model.id, role=prep.role, folder=folder,
                                manifest_sha256=prep.manifest_sha256, n_images=len(prep.manifest),
                                classes=prep.classes, manifest=prep.manifest)
            session.add(row)
            rows.append(row)
        session.flush()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    def publish(_session: Any) -> None:
        for prep, folder in new:
            final, staged = root / folder, staging / prep.role
            if final.is_dir() or not staged.is_dir():  # content-addressed: already in place
                continue
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            staged.replace(final)
        shutil.rmtree(staging, ignore_errors=True)

    def discard(_session: Any) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    event.listen(session, "after_commit", publish, once=True)
    event.listen(session, "after_rollback", discard, once=True)
    return rows


def image_sets_summary(session: Session, model_id: int) -> dict[str, dict[str, Any]]:
    """The current image set of each role, for ``models show`` and ``models data show``."""
    out = {}
    for role, row in current_image_sets(session, model_id).items():
        out[role] = {"set_id": row.id, "manifest_sha256": row.manifest_sha256, "n_images": row.n_images,
                     "classes": row.classes, "folder": row.folder,
                     "registered_at": row.created_at.isoformat() if row.created_at else None}
    return out


def load_image_set(row: ModelImageSet, image_size: int) -> tuple[np.ndarray, list[str | None]]:
    """The set's images as uint8 ``(n, image_size, image_size, 3)`` arrays, preprocessed as
    the encoder handle does (shorter side bicubic, centre crop), with their labels. Every
    file is read from the data folder and its sha256 checked against the manifest (a
    missing or changed file fails loudly rather than auditing other pixels)."""
    from audit_lib.encoders.local import preprocess_uint8

    base = _data_dir() / row.folder
    arrays, labels = [], []
    limits = _limits()
    for entry in row.manifest:
        path = base / entry["path"]
        if not path.is_file():
            raise OwnerDataError(f"image set {row.id} ({row.role}): {path} is missing; register the folder again "
                                 "with `encoder-audit models data add`")
        data = path.read_bytes()
        if sha256_hex(data) != entry["sha256"]:
            raise OwnerDataError(f"image set {row.id} ({row.role}): {path} does not match its manifest sha256; "
                                 "register the folder again")
        check_image_bytes(data, str(path), **limits)
        arrays.append(preprocess_uint8(data, image_size))
        labels.append(entry.get("label"))
    return np.stack(arrays), labels


def model_image_size(model: AuditedModel, stated: int | None = None) -> int:
    """The input size images are prepared at for ``model``: a stated size, else the
    checkpoint architecture's preprocessing size, else an API adapter's ``image_size``."""
    if stated is not None:
        if stated < 8:
            raise OwnerDataError(f"--image-size {stated}: expected the model's input size in pixels (>= 8)")
        return int(stated)
    if model.kind == "checkpoint" and model.architecture:
        from audit_lib.encoders.architectures import build

        return int(build(model.architecture).preprocess.image_size)
    size = (model.adapter or {}).get("image_size")
    if size:
        return int(size)
    raise OwnerDataError(f"model {model.name} is an API and its input size is not known: state it with "
                         "--image-size N (pixels)")


def split_downstream(images: np.ndarray, labels: list[str | None], *, seed: int = 0, test_share: float = 0.5,
                     per_class: int | None = None) -> tuple[Any, list[str]]:
    """A labelled set split per class into train and test halves (seeded), labels as class
    indices in sorted class-name order. ``per_class`` caps each half per class (quick runs)."""
    from audit_lib.methods.theft import LabelledSplit

    classes = sorted({str(lb) for lb in labels})
    y = np.array([classes.index(str(lb)) for lb in labels], dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2:
            raise OwnerDataError(f"downstream class {classes[c]!r} has {len(idx)} image; each class needs at least "
                                 "2 (one to train the classifier on, one to test it)")
        n_test = max(1, int(round(len(idx) * test_share)))
        te, tr = idx[:n_test], idx[n_test:]
        if per_class:
            te, tr = te[:per_class], tr[:per_class]
        train += list(tr)
        test += list(te)
    tr_i, te_i = np.sort(np.array(train)), np.sort(np.array(test))
    return LabelledSplit(images[tr_i], y[tr_i], images[te_i], y[te_i]), classes


def owner_ownership_data(session: Session, model: AuditedModel, *, image_size: int,
                         require: tuple[str, ...] = ("public", "downstream"), train_size: int | None = None,
                         independents: list[Any] | None = None, seed: int = 0,
                         downstream_per_class: int | None = None) -> Any:
    """:class:`~audit_lib.ownership.data.OwnershipData` from the image sets registered for
    ``model``, decoded at ``image_size``: ``surrogate`` = the public set (in a fixed
    shuffled order, so larger budgets extend smaller ones), ``downstream`` = the labelled
    set split per class into train and test halves, ``owner_clean`` = the owner's images,
    ``pool`` = the public set again (the watermark key, marked set and probes are drawn
    from images that are not the owner's; unlabelled). A role in ``require`` that is not
    registered is refused with the command that registers it; other missing roles give
    empty arrays. ``independents`` (the null) and ``train_size`` are passed through, since
    the image sets do not say them."""
    from audit_lib.methods.theft import LabelledSplit

    sets = current_image_sets(session, model.id)
    missing = [r for r in require if r not in sets]
    if missing:
        flags = " ".join(f"--{r} DIR" for r in missing)
        raise OwnerDataError(f"model {model.name} has no registered {', '.join(missing)} image set: run "
                             f"`encoder-audit models data add --model {model.name} {flags}`")
    empty = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    loaded = {role: load_image_set(row, image_size) for role, row in sets.items()}
    public = loaded["public"][0] if "public" in loaded else empty
    public = public[np.random.default_rng(seed).permutation(len(public))]
    if "downstream" in loaded:
        downstream, _classes = split_downstream(*loaded["downstream"], seed=seed, per_class=downstream_per_class)
    else:
        downstream = LabelledSplit(empty, np.zeros(0, np.int64), empty, np.zeros(0, np.int64))
    from audit_lib.ownership.data import OwnershipData

    return OwnershipData(target=model, independents=list(independents or []), train_size=train_size,
                         surrogate=public, downstream=downstream,
                         owner_clean=loaded["owner"][0] if "owner" in loaded else empty,
                         pool=public, pool_labels=None,
                         image_sets={role: row.manifest_sha256 for role, row in sets.items()})
