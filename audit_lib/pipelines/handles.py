"""Opening a registered model's handle inside a task (through the query cache and the
evidence chain of the task's audit run)."""

from __future__ import annotations

from audit_lib.encoders.base import EncoderHandle, QueryCounts, RecordingHandle
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel


def open_model_handle(model_id: int, run_key: str, *, db_url: str | None = None) -> RecordingHandle:
    """The evidence-recording handle for model ``model_id`` (``audit_lib.encoders.open_handle``).

    The model row is read in a short session and detached; the handle opens its own
    sessions for the cache and evidence.
    """
    from audit_lib.encoders import open_handle

    with session_scope(db_url) as session:
        model = session.get(AuditedModel, int(model_id))
        if model is None:
            raise ValueError(f"model {model_id}: not registered")
        session.expunge(model)
    return open_handle(model, run_key=run_key, db_url=db_url)


def query_stats(handle: EncoderHandle) -> str:
    """'N sent to the model, H cache hits' from the handle's counters, for the task log."""
    if not isinstance(handle, QueryCounts):
        return "query counters not available"
    return f"{handle.misses} queries sent to the model, {handle.hits} answered from the cache"
