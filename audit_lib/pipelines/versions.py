"""Model-version check at the start of an audit: which version is audited.

A checkpoint's version is its weights' sha256; an API's is the hash of its embeddings of
a fixed canary set, taken now. A version never seen before is a new ModelVersion row and
old findings stay attached to the old one. Done once per model and run, before any pair.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select

from audit_lib.pipelines.handles import open_model_handle, query_stats
from audit_lib.store import session_scope
from audit_lib.store.models import ModelVersion

log = logging.getLogger(__name__)


def check_model_version(model_id: int, run_key: str, *, db_url: str | None = None) -> dict[str, Any]:
    """Open the model's handle (which establishes its version) and report it.

    Returns ``{"model_id", "model_version_id", "version", "new_version", "text"}``. A model
    whose weights are missing or whose API does not answer fails here, naming the model,
    before any subject is queried.
    """
    with session_scope(db_url) as session:
        known_before = set(session.scalars(select(ModelVersion.id)
                                           .where(ModelVersion.model_id == int(model_id))))
    handle = open_model_handle(model_id, run_key, db_url=db_url)
    version_id = int(handle.model_version_id)
    with session_scope(db_url) as session:
        n_versions = session.scalar(select(func.count()).select_from(ModelVersion)
                                    .where(ModelVersion.model_id == int(model_id)))
    new = version_id not in known_before
    out = {"model_id": int(model_id), "model_version_id": version_id,
           "version": str(handle.model_version), "new_version": new,
           "text": "text" in handle.capabilities}
    if new and known_before:
        log.warning("model %s changed: version %s is new (%d versions known); earlier findings "
                    "stay attached to earlier versions", model_id, out["version"][:16], n_versions)
    log.info("model %s: version %s (id %d, %s), dim %d, capabilities %s; %s", model_id,
             out["version"][:16], version_id, "new" if new else "seen before",
             handle.embedding_dim, sorted(handle.capabilities), query_stats(handle))
    return out
