"""Store and load enrolment artefacts: safetensors payload + JSON spec, sha256, commitment.

Why a commitment: an ownership claim is only convincing if the key, the perturbation, the
probes, the test statistic and alpha were fixed *before* the suspect was queried;
otherwise an accuser could tune probes after the fact. So an
artefact is written once, with

- ``payload``: a safetensors file (arrays only, no pickle; the JSON spec rides along in the
  safetensors ``__metadata__`` header so the payload alone is self-describing),
- ``sha256``: sha256 of the payload bytes,
- ``meta``: ``{"spec": ..., "payload_sha256": ..., "committed_at": ..., "commitment_sha256": ...}``
  where the commitment is sha256 of the canonical JSON of (kind, model id, payload hash,
  spec, timestamp).

Findings carry ``commitment_sha256``; :func:`load_artefact` recomputes both hashes and
refuses an artefact that no longer matches them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.evidence import canonical_json, sha256_hex
from audit_lib.store.models import EnrolmentArtefact

SPEC_KEY = "encoder_audit_spec"


class ArtefactError(ValueError):
    """An artefact that is missing, malformed, or whose hashes do not match."""


@dataclass(frozen=True)
class Artefact:
    """A loaded, hash-checked enrolment artefact."""

    id: int | None
    model_id: int | None
    kind: str
    tensors: dict[str, np.ndarray]
    spec: dict[str, Any]
    payload_sha256: str
    commitment_sha256: str
    committed_at: str


def pack_payload(tensors: dict[str, np.ndarray], spec: dict[str, Any]) -> bytes:
    """Serialise arrays and the JSON spec as one safetensors file (bytes)."""
    from safetensors.numpy import save

    if not tensors:
        raise ArtefactError("artefact payload: no arrays to store")
    clean: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise ArtefactError(f"artefact payload: array {name!r} has dtype {a.dtype}, expected numbers")
        clean[name] = a
    return save(clean, metadata={SPEC_KEY: canonical_json(spec).decode()})


def unpack_payload(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read arrays and the spec back from :func:`pack_payload`'s bytes (no code runs)."""
    from safetensors.numpy import load

    if len(payload) < 8:
        raise ArtefactError("artefact payload: shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > len(payload) - 8:
        raise ArtefactError("artefact payload: header length exceeds the payload")
    try:
        header = json.loads(payload[8:8 + header_len])
        spec = json.loads(header.get("__metadata__", {}).get(SPEC_KEY, "{}"))
        tensors = load(payload)
    except Exception as exc:  # safetensors raises its own error type
        raise ArtefactError(f"artefact payload: not a readable safetensors file ({exc})") from None
    return tensors, spec


def commitment_hash(kind: str, model_id: int | None, payload_sha256: str, spec: dict[str, Any],
                    committed_at: str) -> str:
    """sha256 binding what will be tested (payload, spec) to who owns it and when."""
    return sha256_hex(canonical_json({"kind": kind, "model_id": model_id, "payload_sha256": payload_sha256,
                                      "spec": spec, "committed_at": committed_at}))


def commit_artefact(session: Session, *, model_id: int, kind: str, tensors: dict[str, np.ndarray],
                    spec: dict[str, Any]) -> Artefact:
    """Write an artefact row (payload, sha256, commitment, timestamp) and flush it, so it is
    fixed before any suspect is queried. Returns the artefact as :func:`load_artefact` would.
    Committing the same payload again for the same model and kind (a retried enrolment)
    returns the first commitment unchanged: its timestamp is the one that predates queries."""
    from sqlalchemy import select

    payload = pack_payload(tensors, spec)
    payload_sha = hashlib.sha256(payload).hexdigest()
    existing = session.scalar(select(EnrolmentArtefact).where(
        EnrolmentArtefact.model_id == model_id, EnrolmentArtefact.kind == kind,
        EnrolmentArtefact.sha256 == payload_sha))
    if existing is not None:
        return _from_row(existing)
    committed_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    # The spec is stored as it reads back from JSON, so the commitment recomputes exactly.
    spec = json.loads(canonical_json(spec))
    commit = commitment_hash(kind, model_id, payload_sha, spec, committed_at)
    row = EnrolmentArtefact(model_id=model_id, kind=kind, sha256=payload_sha, payload=payload,
                            meta={"spec": spec, "payload_sha256": payload_sha, "committed_at": committed_at,
                                  "commitment_sha256": commit})
    session.add(row)
    session.flush()
    tensors_back, _ = unpack_payload(payload)
    return Artefact(row.id, model_id, kind, tensors_back, spec, payload_sha, commit, committed_at)


def _from_row(row: EnrolmentArtefact) -> Artefact:
    payload = bytes(row.payload)
    actual = hashlib.sha256(payload).hexdigest()
    if actual != row.sha256:
        raise ArtefactError(f"artefact {row.id} ({row.kind}): payload sha256 {actual[:12]}… does not "
                            f"match the stored {row.sha256[:12]}…; it was altered after enrolment")
    meta = row.meta or {}
    tensors, spec = unpack_payload(payload)
    committed_at = meta.get("committed_at")
    if committed_at is None or "commitment_sha256" not in meta:
        raise ArtefactError(f"artefact {row.id} ({row.kind}): no commitment recorded")
    commit = commitment_hash(row.kind, row.model_id, actual, meta.get("spec", {}), committed_at)
    if commit != meta["commitment_sha256"] or canonical_json(spec) != canonical_json(meta.get("spec", {})):
        raise ArtefactError(f"artefact {row.id} ({row.kind}): commitment does not match its "
                            "payload and spec; it was altered after enrolment")
    return Artefact(row.id, row.model_id, row.kind, tensors, spec, actual, commit, committed_at)


def load_artefact(session: Session, artefact_id: int) -> Artefact:
    """Load one artefact by id, checking its payload hash and commitment."""
    row = session.get(EnrolmentArtefact, artefact_id)
    if row is None:
        raise ArtefactError(f"artefact {artefact_id}: no such enrolment artefact")
    return _from_row(row)


def latest_artefact(session: Session, model_id: int, kind: str) -> Artefact:
    """The most recent artefact of ``kind`` for a model (hash-checked)."""
    row = session.scalar(select(EnrolmentArtefact).where(EnrolmentArtefact.model_id == model_id,
                                                        EnrolmentArtefact.kind == kind)
                         .order_by(EnrolmentArtefact.id.desc()).limit(1))
    if row is None:
        raise ArtefactError(f"model {model_id} has no {kind!r} enrolment artefact: enrol it first")
    return _from_row(row)
