"""Encoder handles: one interface for every audited model.

- :mod:`.base`: the ``EncoderHandle`` protocol and ``NotApplicable``;
- :mod:`.architectures`: networks by name; :mod:`.loading`: safe weights loading;
- :mod:`.local`: a checkpoint on cpu/cuda; :mod:`.remote`: an HTTP embedding API;
- :mod:`.cache`: the store's query cache and evidence chain in front of any handle;
- :mod:`.version`: weights hash and API canary versions.

:func:`open_handle` builds the right handle for a registered model (refusing a retired
one); :func:`remote_encoder` the bare API client (``models probe`` uses it: no store). Nothing
heavy is imported here (DAG files import this package at parse time).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit_lib.encoders.cache import StoreBackedHandle
    from audit_lib.store.models import AuditedModel

_LOCAL: dict[tuple[Any, ...], Any] = {}
_LOCAL_LOCK = threading.Lock()


def local_encoder(architecture: str, weights_path: Path | str, *, device: str | None = None,
                  batch_size: int | None = None, role: str | None = None) -> Any:
    """A :class:`~audit_lib.encoders.local.LocalEncoder`, kept per process: DAG tasks and
    CLI commands that open the same checkpoint again reuse the built network. The key
    includes the file's size and mtime, so a replaced file is loaded (and hashed) again."""
    from audit_lib.encoders.local import LocalEncoder

    path = Path(weights_path)
    st = path.stat() if path.exists() else None
    key = (architecture, str(path.resolve()) if st else str(weights_path),
           st.st_size if st else None, st.st_mtime_ns if st else None, device, batch_size, role)
    with _LOCAL_LOCK:
        enc = _LOCAL.get(key)
        if enc is None:
            enc = LocalEncoder.from_checkpoint(architecture, weights_path, device=device, batch_size=batch_size,
                                               role=role)
            _LOCAL[key] = enc
        return enc


def remote_encoder(endpoint_url: str, adapter: dict[str, Any] | None, credential_name: str | None, *,
                   capabilities: Any = ("image",), budget: int | None = None,
                   **remote_options: Any) -> Any:
    """A :class:`~audit_lib.encoders.remote.RemoteEncoder` for an endpoint and a stored
    adapter (its ``embedding_dim`` and ``rate_limit_per_s`` taken from it), without the
    store: nothing is cached or recorded."""
    from audit_lib.encoders.adapter import parse_adapter
    from audit_lib.encoders.remote import RemoteEncoder

    return RemoteEncoder(endpoint_url, parse_adapter(adapter), credential_name,
                         capabilities=capabilities, budget=budget, **remote_options)


def _dimension_hint(model: AuditedModel, inner: Any) -> None:
    """Learn an API's dimension now when it is not registered, so that an API without an
    info route fails with the fix named (instead of a bare HTTP 404 from that route)."""
    from audit_lib.encoders.remote import BadAnswer, RemoteEncoderError

    if (model.adapter or {}).get("embedding_dim"):
        return
    try:
        inner.embedding_dim
    except RemoteEncoderError as exc:
        if type(exc) not in (RemoteEncoderError, BadAnswer):
            raise  # a refused credential or an unreachable API: the dimension is not the problem
        raise RemoteEncoderError(f"{exc}; if this API does not publish its embedding dimension, give it: "
                                 f"encoder-audit models update {model.name} --embedding-dim N") from None


def open_handle(model: AuditedModel, *, run_key: str | None = None, db_url: str | None = None,
                device: str | None = None, batch_size: int | None = None,
                **remote_options: Any) -> StoreBackedHandle:
    """The handle for a registered model (checkpoint or API), behind the query cache and
    recording evidence into the run ``run_key`` (when given). For an API this queries the
    canary set first and resolves the model version. ``remote_options`` go to
    :class:`~audit_lib.encoders.remote.RemoteEncoder` (timeouts, retries, rate limit)."""
    from audit_lib import registry
    from audit_lib.encoders.cache import StoreBackedHandle

    registry.require_model_auditable(model)
    answering_config = None
    if model.kind == "checkpoint":
        if not model.architecture or not model.weights_path:
            raise ValueError(f"model {model.name}: a checkpoint needs an architecture and a weights file")
        inner = local_encoder(model.architecture, model.weights_path, device=device, batch_size=batch_size,
                              role=model.role)
    elif model.kind == "api":
        from audit_lib.encoders.version import api_config_sha256

        inner = remote_encoder(model.endpoint_url, model.adapter, model.credential_name,
                               capabilities=model.capabilities, budget=model.query_budget, **remote_options)
        _dimension_hint(model, inner)
        answering_config = api_config_sha256(model.endpoint_url, model.adapter)
    else:
        raise ValueError(f"model {model.name}: unknown kind {model.kind!r}")
    return StoreBackedHandle(inner, db_url=db_url, model_id=model.id, run_key=run_key,
                             answering_config=answering_config)
