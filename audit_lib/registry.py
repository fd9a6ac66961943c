"""Registration of data subjects and models, model updates and retirement, and subject
erasure.

Every function takes an open session and either completes or raises before the caller's
transaction commits, so a refused input leaves nothing behind.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit_lib.config import get_settings
from audit_lib.images import CheckedImage, ImageError, check_image_folder
from audit_lib.store.models import (AuditedModel, DataSubject, Finding, ImageBlob, ModelVersion,
                                    SubjectImage, utcnow)

CAPABILITIES = frozenset({"image", "text"})
MODEL_KINDS = frozenset({"checkpoint", "api"})
# reference: an encoder known to be trained independently of an owner's (the ownership null)
MODEL_ROLES = frozenset({"owned", "suspect", "reference"})
IMAGE_ROLES = ("reference", "claimed")
MAX_TEXT = 200  # the width of the name, alias and legal-basis columns
MAX_QUERY_BUDGET = 10**12  # far above any real budget, far below the BIGINT column's limit
IMAGE_SIZE_RANGE = (8, 4096)  # sane @SIZE input sizes of a checkpoint architecture, pixels


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
        _check_shown_text(label, value)
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


def _check_shown_text(label: str, value: str) -> None:
    """Refuse text that would rewrite what a terminal, PDF or page shows around it."""
    from audit_lib.safe_text import unsafe_character

    bad = unsafe_character(value)
    if bad:
        raise RegistryError(f"{label}: {bad} is not allowed (control characters, line breaks and "
                            "bidirectional overrides would change how the text is shown)")


def check_model_name(name: str) -> str:
    """A model name as given, refused if it is empty, has leading or trailing whitespace
    or unsafe characters, is over the column width, or is all digits (``models show 12``
    means the model with id 12)."""
    if not name or not name.strip():
        raise RegistryError("name: a model needs a name")
    if name != name.strip():
        raise RegistryError(f"name: {name!r} has leading or trailing whitespace; give the name without it")
    _check_shown_text("name", name)
    if len(name) > MAX_TEXT:
        raise RegistryError(f"name: {len(name)} characters is over the limit of {MAX_TEXT}")
    if name.isdigit():
        raise RegistryError(f"name: {name!r} is all digits and would be read as a model id; add a letter")
    return name


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
    """Erase a person (see :mod:`audit_lib.erasure`): name, aliases, legal basis, photos,
    their cached answers and the reports about them go; the pseudonym, hashes and findings
    stay, and an erasure record says what was kept and why."""
    from audit_lib.erasure import erase_subject as erase

    erase(session, subject_id)
    return get_subject(session, subject_id)


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


def resolve_model_adapter(preset: str | None = None, adapter: dict[str, Any] | None = None,
                          embedding_dim: int | None = None, *,
                          current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated adapter of an API, as stored in ``models.adapter``: the preset's fields
    with ``adapter`` laid over them (without a preset: ``adapter`` laid over the ``current``
    stored adapter, or ``adapter`` alone, v1 or v2) and ``embedding_dim`` set. A typo or bad value is refused naming the key; an adapter that
    cannot learn its dimension (no ``embedding_dim``, no ``info`` path) is refused naming
    ``--embedding-dim``, since its first audit would fail."""
    from audit_lib.encoders.adapter import AdapterError, deep_merge, parse_adapter, resolve_adapter

    if embedding_dim is not None and int(embedding_dim) < 1:
        raise RegistryError(f"embedding dimension: {embedding_dim} is not a positive number")
    try:
        if not preset and current is not None:
            adapter = deep_merge(parse_adapter(current).to_json(), adapter)
        resolved = resolve_adapter(preset, adapter) if preset else parse_adapter(adapter)
        if embedding_dim is not None:
            resolved = parse_adapter({**resolved.to_json(), "embedding_dim": int(embedding_dim)})
        stored = resolved.to_json()
    except AdapterError as exc:
        raise RegistryError(str(exc)) from None
    if not stored.get("embedding_dim") and not (stored.get("info") or {}).get("path"):
        raise RegistryError("embedding dimension: unknown for this API (its adapter has no 'info' "
                            "path to ask it); give --embedding-dim N")
    return stored


def check_endpoint_url(endpoint_url: str | None) -> str:
    """An API's endpoint, refused unless a credential may be sent there (see
    :mod:`audit_lib.encoders.endpoints`: http(s), no secret in the URL, no link-local or
    metadata address, no private address unless ``AUDIT_ALLOW_PRIVATE_ENDPOINTS``)."""
    from audit_lib.encoders.endpoints import EndpointError, check_endpoint

    try:
        return check_endpoint(endpoint_url, allow_private=get_settings().allow_private_endpoints)
    except EndpointError as exc:
        raise RegistryError(str(exc)) from None


def check_adapter_paths(endpoint_url: str, adapter: dict[str, Any]) -> None:
    """Refuse an adapter whose call paths would send requests to another host than the endpoint."""
    from audit_lib.encoders.endpoints import EndpointError, check_adapter_hosts

    try:
        check_adapter_hosts(endpoint_url, adapter)
    except EndpointError as exc:
        raise RegistryError(str(exc)) from None


def check_credential(credential_name: str | None) -> str | None:
    """A declared credential name (prefix ``AUDIT_CRED_``) or None; any other name is refused."""
    from audit_lib.encoders.remote import CredentialError, check_credential_name

    if credential_name is None or not credential_name.strip():
        return None
    try:
        return check_credential_name(credential_name.strip())
    except CredentialError as exc:
        raise RegistryError(str(exc)) from None


def _check_budget(query_budget: int | None) -> None:
    if query_budget is not None and not 0 < query_budget <= MAX_QUERY_BUDGET:
        raise RegistryError(f"query budget: {query_budget} is not a number of queries from 1 to "
                            f"{MAX_QUERY_BUDGET:,}")


def check_checkpoint(architecture: str, weights_path: Path, role: str) -> None:
    """Load a checkpoint as an audit will (safe loading only, strict fit to the
    architecture), so an unknown architecture, an input size out of range, a code-running
    pickle or weights of another network are refused at registration, not at first use."""
    from audit_lib.encoders import local_encoder
    from audit_lib.encoders.architectures import ArchitectureError
    from audit_lib.encoders.loading import CheckpointError, split_architecture

    _, arch_name = split_architecture(architecture)
    if "@" in arch_name:
        size = arch_name.rpartition("@")[2]
        low, high = IMAGE_SIZE_RANGE
        if not size.isdigit() or not low <= int(size) <= high:
            raise RegistryError(f"architecture {architecture!r}: @{size} is not an input size from {low} to "
                                f"{high} pixels")
    try:
        local_encoder(architecture, weights_path, role=role)
    except (ArchitectureError, CheckpointError) as exc:
        raise RegistryError(str(exc)) from None


def add_model(session: Session, *, name: str, kind: str, role: str, capabilities: str | list[str],
              architecture: str | None = None, weights_path: Path | None = None,
              endpoint_url: str | None = None, adapter: dict[str, Any] | None = None,
              credential_name: str | None = None, query_budget: int | None = None,
              preset: str | None = None, embedding_dim: int | None = None) -> AuditedModel:
    """Register a local checkpoint (architecture + weights file) or a remote API (endpoint
    URL, adapter from ``preset`` and ``adapter`` overrides with ``embedding_dim``, the
    *name* of its credential, never the secret itself). The adapter is validated here, so a
    typo is refused at registration rather than at the first audit."""
    check_model_name(name)
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
        from audit_lib.encoders.architectures import ArchitectureError, check_python_factory
        from audit_lib.encoders.loading import folder_kind

        try:
            check_python_factory(architecture, role)
        except ArchitectureError as exc:
            raise RegistryError(str(exc)) from None
        folder_ok = folder_kind(architecture) is not None and weights_path is not None \
            and Path(weights_path).is_dir()
        if weights_path is None or not (Path(weights_path).is_file() or folder_ok):
            raise RegistryError(f"weights: {weights_path}: no such file")
        weights_path = Path(weights_path).resolve()
        if adapter or preset or embedding_dim is not None:
            raise RegistryError("adapter: only an API has an adapter, preset or embedding dimension "
                                "(a checkpoint's dimension comes from its network)")
        check_checkpoint(architecture, weights_path, role)
    else:
        check_endpoint_url(endpoint_url)
        _check_budget(query_budget)
        credential_name = check_credential(credential_name)
        adapter = resolve_model_adapter(preset, adapter, embedding_dim)
        check_adapter_paths(str(endpoint_url), adapter)
    model = AuditedModel(name=name, kind=kind, role=role, capabilities=caps,
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
    """A model by id or by name (names are never all digits: :func:`check_model_name`)."""
    if isinstance(ref, int) or str(ref).isdigit():
        model = session.get(AuditedModel, int(ref))
    else:
        model = session.scalar(select(AuditedModel).where(AuditedModel.name == ref))
    if model is None:
        raise RegistryError(f"model {ref}: no such model")
    return model


# --- reference non-members of a model ------------------------------------------------------


def add_reference_images(session: Session, model: AuditedModel, images: list[CheckedImage]
                         ) -> tuple[int, int]:
    """Register known non-members of ``model``'s training set (membership inference ranks
    claimed images against them). The bytes go to ``image_blobs`` once; an image already
    registered for this model is skipped. Returns (added, already registered)."""
    from audit_lib.store.models import ModelReferenceImage

    if not images:
        raise RegistryError("references: no images to register")
    have = set(session.scalars(select(ModelReferenceImage.sha256)
                               .where(ModelReferenceImage.model_id == model.id)))
    added = 0
    for img in images:
        if img.sha256 in have:
            continue
        _store_blob(session, img)
        session.add(ModelReferenceImage(model_id=model.id, sha256=img.sha256, name=Path(img.name).name[:255]))
        have.add(img.sha256)
        added += 1
    session.flush()
    return added, len(images) - added


def add_reference_folder(session: Session, model_ref: int | str, folder: Path
                         ) -> tuple[AuditedModel, int, int]:
    """:func:`add_reference_images` with the images read and checked from a folder (the
    same untrusted-image checks as subjects' uploads). Returns (model, added, skipped)."""
    model = get_model(session, model_ref)
    try:
        images = check_image_folder(folder, **ImageLimits.from_settings().as_kwargs())
    except ImageError as exc:
        raise RegistryError(str(exc)) from None
    added, skipped = add_reference_images(session, model, images)
    return model, added, skipped


def reference_images(session: Session, model: AuditedModel) -> list[tuple[str, str, bytes]]:
    """(sha256, file name, bytes) of the model's registered reference non-members, in
    registration order."""
    from audit_lib.store.models import ModelReferenceImage

    rows = session.scalars(select(ModelReferenceImage).where(ModelReferenceImage.model_id == model.id)
                           .order_by(ModelReferenceImage.id))
    return [(r.sha256, r.name, r.blob.data) for r in rows]


def require_model_auditable(model: AuditedModel) -> None:
    """Refuse to audit a retired model (its findings stay; it takes no new audits)."""
    if model.retired_at is not None:
        raise RegistryError(f"model {model.name} was retired on {model.retired_at:%Y-%m-%d}: it takes "
                            "no new audits (its findings stay)")


def retire_model(session: Session, ref: int | str) -> AuditedModel:
    """Retire a model: no new audits, the registry snapshots of audit runs skip it, and
    its versions, findings and evidence stay as they are."""
    model = get_model(session, ref)
    if model.retired_at is not None:
        raise RegistryError(f"model {model.name}: already retired on {model.retired_at:%Y-%m-%d}")
    model.retired_at = utcnow()
    session.flush()
    return model


@dataclass(frozen=True)
class ModelChange:
    """One registered field changed by :func:`update_model`; ``new_version`` says whether
    it changes what answers (so the next audit resolves a new model version)."""

    field: str
    old: Any
    new: Any
    new_version: bool


# fields whose change alters what answers a query: the next audit makes a new version
_ANSWERING = frozenset({"endpoint_url", "adapter", "weights_path"})


def update_model(session: Session, ref: int | str, *, endpoint_url: str | None = None,
                 adapter: dict[str, Any] | None = None, preset: str | None = None,
                 query_budget: int | None = None, credential_name: str | None = None,
                 embedding_dim: int | None = None, weights_path: Path | None = None) -> list[ModelChange]:
    """Change a registered model, validated as at registration; returns what changed.

    For an API, ``preset`` rebuilds the adapter from that preset with ``adapter`` laid over
    it; ``adapter`` alone is laid over the current adapter; ``embedding_dim`` sets the
    dimension. A change of the endpoint, adapter or (for a checkpoint) weights file makes
    a new model version at the next audit (see :func:`audit_lib.encoders.version.api_config_sha256`);
    the budget and the credential name do not."""
    model = get_model(session, ref)
    changes: dict[str, Any] = {}
    if model.kind == "checkpoint":
        if endpoint_url or adapter or preset or embedding_dim is not None or credential_name or \
                query_budget is not None:
            raise RegistryError(f"model {model.name} is a checkpoint: only --weights can be updated")
        if weights_path is not None:
            if not Path(weights_path).is_file():
                raise RegistryError(f"weights: {weights_path}: no such file")
            check_checkpoint(model.architecture, Path(weights_path), model.role)
            changes["weights_path"] = str(Path(weights_path).resolve())
    else:
        if weights_path is not None:
            raise RegistryError(f"model {model.name} is an API: it has no weights file")
        if endpoint_url is not None:
            changes["endpoint_url"] = check_endpoint_url(endpoint_url)
        if query_budget is not None:
            _check_budget(query_budget)
            changes["query_budget"] = query_budget
        if credential_name is not None:
            changes["credential_name"] = check_credential(credential_name)
        if adapter is not None or preset or embedding_dim is not None:
            changes["adapter"] = resolve_model_adapter(preset, adapter, embedding_dim,
                                                       current=model.adapter or {})
        check_adapter_paths(changes.get("endpoint_url", model.endpoint_url or ""),
                            changes.get("adapter", model.adapter or {}))
    out = []
    for name, value in changes.items():
        old = getattr(model, name)
        if old != value:
            out.append(ModelChange(name, old, value, name in _ANSWERING))
            setattr(model, name, value)
    session.flush()
    return out


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def model_summary(session: Session, model: AuditedModel) -> dict[str, Any]:
    """Everything registered about a model, as JSON-ready data (``models show``, ``models
    list --json``): never a secret, only the credential's name. One place builds it, so
    other registrations of a model (image sets, references) add their key here."""
    from audit_lib.encoders.endpoints import redact_endpoint
    from audit_lib.encoders.version import api_config_sha256
    from audit_lib.ownership.owner_data import image_sets_summary

    n_findings = session.scalar(select(func.count(Finding.id)).join(
        ModelVersion, Finding.model_version_id == ModelVersion.id).where(ModelVersion.model_id == model.id))
    return {
        "id": model.id, "name": model.name, "kind": model.kind, "role": model.role,
        "capabilities": list(model.capabilities or []),
        "architecture": model.architecture, "weights_path": model.weights_path,
        "endpoint_url": redact_endpoint(model.endpoint_url), "adapter": model.adapter,
        "credential_name": model.credential_name, "query_budget": model.query_budget,
        "answering_config_sha256": (api_config_sha256(model.endpoint_url, model.adapter)
                                    if model.kind == "api" and model.endpoint_url else None),
        "created_at": _iso(model.created_at), "retired_at": _iso(model.retired_at),
        "status": "retired" if model.retired_at is not None else "active",
        "versions": [{"id": v.id, "version": v.version, "how": v.how, "embedding_dim": v.embedding_dim,
                      "first_seen": _iso(v.first_seen), "last_seen": _iso(v.last_seen)}
                     for v in model.versions],
        "n_findings": int(n_findings or 0),
        "image_sets": image_sets_summary(session, model.id),
    }


def subject_summary(subject: DataSubject) -> dict[str, Any]:
    """A subject as JSON-ready data (``subjects show``, ``subjects list --json``); an erased
    subject keeps only its pseudonym, image hashes and dates."""
    return {
        "id": subject.id, "pseudonym": subject.pseudonym, "name": subject.name,
        "aliases": subject.aliases, "legal_basis": subject.legal_basis,
        "erased_at": _iso(subject.erased_at),
        "images": [{"sha256": i.sha256, "role": i.role} for i in subject.images],
    }


FINETUNABLE_FAMILIES = ("open_clip", "small_cnn", "torchvision")  # what the ownership enrolments train


def require_owned_checkpoint(model: AuditedModel) -> tuple[str, Path]:
    """(architecture, weights path) of an owned local checkpoint that the ownership
    enrolments can fine-tune; RegistryError naming what is wrong otherwise (an API, another
    role, a retired model, a missing weights file, an architecture family we cannot train)."""
    if model.role != "owned":
        raise RegistryError(f"model {model.name}: only an owned model can be enrolled (its role is {model.role})")
    if getattr(model, "retired_at", None) is not None:
        raise RegistryError(f"model {model.name}: retired on {model.retired_at:%Y-%m-%d}; it cannot be enrolled")
    if model.kind != "checkpoint" or not model.architecture or not model.weights_path:
        raise RegistryError(f"model {model.name}: enrolment needs the weights (a local checkpoint with its "
                            "architecture), not an API")
    family = model.architecture.partition(":")[0]
    if family not in FINETUNABLE_FAMILIES:
        raise RegistryError(f"model {model.name}: architecture {model.architecture!r} cannot be fine-tuned here "
                            f"(supported families: {', '.join(FINETUNABLE_FAMILIES)})")
    path = Path(model.weights_path)
    if not path.is_file():
        raise RegistryError(f"model {model.name}: weights file {path} is missing; register it again")
    return model.architecture, path
