"""Owned-model enrolment artefacts.

Watermark keys, perturbations, probes, fingerprints and verifier weights are stored in the
``enrolment_artefacts`` table as a safetensors payload plus JSON, hashed and timestamped
(committed) before any suspect is queried, and loaded back only after their hashes check.
"""

from audit_lib.ownership.artefacts import (
    Artefact,
    ArtefactError,
    commit_artefact,
    latest_artefact,
    load_artefact,
    pack_payload,
    unpack_payload,
)

__all__ = ["Artefact", "ArtefactError", "commit_artefact", "latest_artefact", "load_artefact",
           "pack_payload", "unpack_payload"]
