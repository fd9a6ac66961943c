"""Registration of data subjects and models, and subject erasure (DESIGN §1, §4, §5).

Every function takes an open session and either completes or raises before the caller's
transaction commits, so a refused input leaves nothing behind.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.config import get_settings
from audit_lib.images import CheckedImage, ImageError, check_image_folder
from audit_lib.store.models import AuditedModel, DataSubject, ImageBlob, SubjectImage, utcnow

CAPABILITIES = frozenset({"image", "text"})
MODEL_KINDS = frozenset({"checkpoint", "api"})
MODEL_ROLES = frozenset({"owned", "suspect"})
IMAGE_ROLES = ("reference", "claimed")
MAX_TEXT = 200  # the width of the name, alias and legal-basis columns


class RegistryError(ValueError):
    """A registration or erasure request that cannot be carried out; says why."""


@dataclass(frozen=True)
class ImageLimits:
    """The checks every uploaded image must pass, from the settings."""

    min_side: int
    max_pixels: int
    max_bytes: int

    @classmethod
    def from_settings(cls) -> ImageLimits:
        s = get_settings()
        return cls(s.min_image_side, s.max_image_pixels, s.max_image_bytes)

    def as_kwargs(self) -> dict[str, int]:
        return {"min_side": self.min_side, "max_pixels": self.max_pixels, "max_bytes": self.max_bytes}


def _new_pseudonym(session: Session) -> str:
    while True:
        candidate = "subject-" + secrets.token_hex(6)
        if session.scalar(select(DataSubject.id).where(DataSubject.pseudonym == candidate)) is None:
            return candidate


def _store_blob(session: Session, image: CheckedImage) -> None:
    blob = session.get(ImageBlob, image.sha256)
    if blob is None:
        session.add(ImageBlob(sha256=image.sha256, data=image.data, media_type=image.media_type,
                              width=image.width, height=image.height, size_bytes=len(image.data)))
    elif blob.data is None:  # emptied by an erasure, registered again by someone entitled to
        blob.data = image.data


def add_subject(session: Session, *, name: str, legal_basis: str, photos: list[CheckedImage],
                claimed: list[CheckedImage] = (), aliases: list[str] = (), sex: str | None = None,
                registered_by: str | None = None) -> DataSubject:
    """Register a person with reference photos (and optionally images that may have been
    scraped). Identical bytes are stored once; the same image twice for one person is refused."""
    name = name.strip()
    if not name:
        raise RegistryError("name: a subject needs a name")
    if not legal_basis.strip():
        raise RegistryError("legal basis: state the legal basis for processing this person's data")
    for label, value in [("name", name), ("legal basis", legal_basis), *(("alias", a) for a in aliases)]:
        if len(value.strip()) > MAX_TEXT:
            raise RegistryError(f"{label}: {len(value.strip())} characters is over the limit of {MAX_TEXT}")
    if sex is not None and sex not in ("f", "m"):
        raise RegistryError(f"sex: {sex!r} is not 'f' or 'm'")
    if not photos:
        raise RegistryError("photos: at least one reference photo is needed")
    seen: dict[str, str] = {}
    for img in [*photos, *claimed]:
        if img.sha256 in seen:
            raise RegistryError(f"{img.name}: duplicate image for this subject, the same bytes "
                                f"as {seen[img.sha256]}")
        seen[img.sha256] = img.name
    subject = DataSubject(pseudonym=_new_pseudonym(session), name=name,
                          aliases=[a.strip() for a in aliases if a.strip()],
                          legal_basis=legal_basis.strip(), sex=sex, registered_by=registered_by)
    session.add(subject)
    for role, images in (("reference", photos), ("claimed", claimed)):
        for img in images:
            _store_blob(session, img)
            subject.images.append(SubjectImage(sha256=img.sha256, role=role))
    session.flush()
    return subject


def add_subject_from_folders(session: Session, *, name: str, legal_basis: str, photos_dir: Path,
                             claimed_dir: Path | None = None, aliases: list[str] = (),
                             sex: str | None = None) -> DataSubject:
    """:func:`add_subject` with photos read and checked from folders (the CLI's path)."""
    limits = ImageLimits.from_settings().as_kwargs()
    try:
        photos = check_image_folder(photos_dir, **limits)
        claimed = check_image_folder(claimed_dir, **limits) if claimed_dir else []
    except ImageError as exc:
        raise RegistryError(str(exc)) from None
    return add_subject(session, name=name, legal_basis=legal_basis, photos=photos,
                       claimed=claimed, aliases=aliases, sex=sex)


def list_subjects(session: Session) -> list[DataSubject]:
    return list(session.scalars(select(DataSubject).order_by(DataSubject.id)))


def get_subject(session: Session, subject_id: int) -> DataSubject:
    subject = session.get(DataSubject, subject_id)
    if subject is None:
        raise RegistryError(f"subject {subject_id}: no such subject")
    return subject


def require_auditable(subject: DataSubject) -> None:
    """Refuse to audit a subject who was erased."""
    if subject.is_erased:
        raise RegistryError(f"subject {subject.pseudonym} was erased on "
                            f"{subject.erased_at:%Y-%m-%d} and can never be audited again")


def subject_image_bytes(session: Session, subject: DataSubject, role: str) -> list[tuple[str, bytes]]:
    """(sha256, bytes) of a live subject's images of one role, in registration order."""
    require_auditable(subject)
    if role not in IMAGE_ROLES:
        raise RegistryError(f"image role {role!r} is not one of {IMAGE_ROLES}")
    return [(im.sha256, im.blob.data) for im in subject.images if im.role == role]


def erase_subject(session: Session, subject_id: int) -> DataSubject:
    """Erase a person: name, aliases, legal basis and image bytes go; the pseudonym, image
    hashes and findings stay. Image bytes still needed by another live subject are kept."""
    subject = get_subject(session, subject_id)
    if subject.is_erased:
        raise RegistryError(f"subject {subject_id}: already erased")
    subject.name = None
    subject.aliases = None
    subject.legal_basis = None
    subject.sex = None
    subject.erased_at = utcnow()
    session.flush()
    for im in subject.images:
        still_needed = session.scalar(
            select(SubjectImage.id).join(DataSubject)
            .where(SubjectImage.sha256 == im.sha256, DataSubject.erased_at.is_(None)).limit(1))
        if still_needed is None:
            im.blob.data = None
    session.flush()
    return subject


def parse_capabilities(text: str | list[str]) -> list[str]:
    """``"image,text"`` -> ``["image", "text"]``; unknown names are refused."""
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    unknown = sorted(set(names) - CAPABILITIES)
    if unknown:
        raise RegistryError(f"capabilities: unknown {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(CAPABILITIES))})")
    if "image" not in names:
        raise RegistryError("capabilities: an audited encoder must at least embed images")
    return sorted(set(names))


def add_model(session: Session, *, name: str, kind: str, role: str, capabilities: str | list[str],
              architecture: str | None = None, weights_path: Path | None = None,
              endpoint_url: str | None = None, adapter: dict[str, Any] | None = None,
              credential_name: str | None = None, query_budget: int | None = None) -> AuditedModel:
    """Register a local checkpoint (architecture + weights file) or a remote API (endpoint
    URL, adapter, the *name* of its credential, never the secret itself)."""
    if not name.strip():
        raise RegistryError("name: a model needs a name")
    if kind not in MODEL_KINDS:
        raise RegistryError(f"kind: {kind!r} is not one of {sorted(MODEL_KINDS)}")
    if role not in MODEL_ROLES:
        raise RegistryError(f"role: {role!r} is not one of {sorted(MODEL_ROLES)}")
    caps = parse_capabilities(capabilities)
    if session.scalar(select(AuditedModel.id).where(AuditedModel.name == name)) is not None:
        raise RegistryError(f"name: a model named {name!r} is already registered")
    if kind == "checkpoint":
        if not architecture:
            raise RegistryError("architecture: a checkpoint needs its architecture name")
        if weights_path is None or not Path(weights_path).is_file():
            raise RegistryError(f"weights: {weights_path}: no such file")
        weights_path = Path(weights_path).resolve()
    else:
        parsed = urlparse(endpoint_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryError(f"endpoint: {endpoint_url!r} is not an http(s) URL")
        if query_budget is not None and query_budget <= 0:
            raise RegistryError(f"query budget: {query_budget} is not a positive number")
    model = AuditedModel(name=name.strip(), kind=kind, role=role, capabilities=caps,
                         architecture=architecture,
                         weights_path=str(weights_path) if weights_path else None,
                         endpoint_url=endpoint_url, adapter=adapter,
                         credential_name=credential_name, query_budget=query_budget)
    session.add(model)
    session.flush()
    return model


def list_models(session: Session) -> list[AuditedModel]:
    return list(session.scalars(select(AuditedModel).order_by(AuditedModel.id)))


def get_model(session: Session, ref: int | str) -> AuditedModel:
    """A model by id or by name."""
    if isinstance(ref, int) or str(ref).isdigit():
        model = session.get(AuditedModel, int(ref))
    else:
        model = session.scalar(select(AuditedModel).where(AuditedModel.name == ref))
    if model is None:
        raise RegistryError(f"model {ref}: no such model")
    return model
