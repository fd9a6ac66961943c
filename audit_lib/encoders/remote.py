"""A remote embedding API as an encoder handle (DESIGN §3), over httpx.

The request and response shapes are described by an *adapter* (a dict stored with the
registered model); the default is the reference server's shape (:mod:`audit_lib.server`)::

    {"images": {"path": "/v1/embed/images", "field": "images", "response": "embeddings"},
     "texts":  {"path": "/v1/embed/texts",  "field": "texts",  "response": "embeddings"},
     "image_encoding": "base64",           # or "data_url" (data:image/png;base64,...)
     "extra_body": {},                     # merged into every request body
     "auth": {"header": "Authorization", "prefix": "Bearer "},
     "max_batch": 64, "canary_tolerance": 0.002}

``field`` and ``response`` are JSON paths: dotted keys with ``[*]`` to map over a list, e.g.
``"input.images"`` or ``"data[*].embedding"`` (OpenAI style).

Credentials are looked up by *name* (an environment variable, else an Airflow Connection's
password) when the first request is made; the secret lives only in memory and is scrubbed
from every error message. Failures are handled as an operator expects: timeouts; retries
with exponential backoff and jitter on 5xx and connection errors; 429 waits for
``Retry-After``; a per-endpoint rate limit shared by all handles in the process; a per-run
query budget (counted in inputs answered) that stops with :class:`BudgetExhausted` before
anything over budget is sent. Every answer is validated (count, dimension, finite numbers);
a bad answer raises :class:`BadAnswer` naming the endpoint and the problem, and, since the
cache only stores what this handle returns, it is never cached.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np

from audit_lib.encoders.base import NotApplicable

log = logging.getLogger(__name__)

DEFAULT_ADAPTER: dict[str, Any] = {
    "images": {"path": "/v1/embed/images", "field": "images", "response": "embeddings"},
    "texts": {"path": "/v1/embed/texts", "field": "texts", "response": "embeddings"},
    "info": {"path": "/v1/info", "dim": "embedding_dim"},
    "image_encoding": "base64",
    "extra_body": {},
    "auth": {"header": "Authorization", "prefix": "Bearer "},
    "max_batch": 64,
    "canary_tolerance": 2e-3,
}


class RemoteEncoderError(RuntimeError):
    """A remote API could not give a usable answer; the message names the endpoint."""


class BadAnswer(RemoteEncoderError):
    """The API answered, but the answer is unusable (shape, dimension, NaN, not JSON)."""


class BudgetExhausted(RemoteEncoderError):
    """The run's query budget for this endpoint is spent; nothing over budget was sent."""


class CredentialError(RemoteEncoderError):
    """The named credential is missing or was refused (the secret is never shown)."""


class RemoteUnavailable(RemoteEncoderError):
    """The API kept failing (5xx, timeouts, connection errors) after every retry."""


# --- adapter -------------------------------------------------------------------------------
def merge_adapter(adapter: dict[str, Any] | None) -> dict[str, Any]:
    """The default adapter with ``adapter``'s entries laid over it (one level deep)."""
    merged = copy.deepcopy(DEFAULT_ADAPTER)
    for key, value in (adapter or {}).items():
        if key not in DEFAULT_ADAPTER:
            raise ValueError(f"adapter: unknown entry {key!r} (known: {', '.join(DEFAULT_ADAPTER)})")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "extra_body":
            merged[key].update(value)
        else:
            merged[key] = value
    if merged["image_encoding"] not in ("base64", "data_url"):
        raise ValueError(f"adapter: image_encoding {merged['image_encoding']!r} is not base64 or data_url")
    if int(merged["max_batch"]) < 1:
        raise ValueError(f"adapter: max_batch {merged['max_batch']} must be >= 1")
    return merged


def get_path(obj: Any, path: str) -> Any:
    """Follow a dotted JSON path with ``[*]`` list mapping; KeyError names the missing part."""
    parts = [p for p in path.split(".") if p] if path else []
    for i, part in enumerate(parts):
        mapped = part.endswith("[*]")
        name = part[:-3] if mapped else part
        if name:
            if not isinstance(obj, dict) or name not in obj:
                raise KeyError(f"no {name!r} at {'.'.join(parts[:i]) or 'the top level'}")
            obj = obj[name]
        if mapped:
            if not isinstance(obj, list):
                raise KeyError(f"{'.'.join(parts[:i + 1])} is not a list")
            rest = ".".join(parts[i + 1:])
            return [get_path(item, rest) for item in obj]
    return obj


def set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Put ``value`` at a dotted path in ``body``, creating objects on the way."""
    parts = path.split(".")
    for part in parts[:-1]:
        body = body.setdefault(part, {})
    body[parts[-1]] = value


# --- credentials ---------------------------------------------------------------------------
class _Secret:
    """A credential in memory; never printed."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _airflow_configured() -> bool:
    return bool(os.environ.get("AIRFLOW_HOME")) or any(k.startswith("AIRFLOW_CONN_") for k in os.environ)


def resolve_credential(name: str) -> _Secret:
    """The secret called ``name``: the environment variable ``name``, else the password of
    the Airflow Connection ``name`` (only where Airflow is configured)."""
    value = os.environ.get(name)
    if value:
        return _Secret(value)
    if _airflow_configured():
        try:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(name)
            if conn.password:
                return _Secret(conn.password)
        except Exception as exc:  # noqa: BLE001 - any lookup failure means "not found"
            log.debug("Airflow connection %r not available: %s", name, type(exc).__name__)
    raise CredentialError(f"credential {name!r}: no environment variable and no Airflow Connection "
                          "of that name holds it")


# --- client-side rate limit, one per endpoint ---------------------------------------------
class _EndpointLimiter:
    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


_LIMITERS: dict[tuple[str, float], _EndpointLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def endpoint_limiter(endpoint: str, rate_per_s: float) -> _EndpointLimiter:
    """The process-wide limiter of an endpoint (shared by every handle on it)."""
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault((endpoint, float(rate_per_s)), _EndpointLimiter(rate_per_s))


def _retry_after_s(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class RemoteEncoder:
    """An embedding API behind the :class:`~audit_lib.encoders.base.EncoderHandle` protocol.

    ``budget`` counts inputs (images and texts) answered by this handle, i.e. per audit run
    when a run opens its own handle; ``None`` is unlimited."""

    version_method = "canary"

    def __init__(self, endpoint_url: str, adapter: dict[str, Any] | None = None,
                 credential_name: str | None = None, *, embedding_dim: int | None = None,
                 capabilities: Sequence[str] = ("image",), rate_limit_per_s: float | None = None,
                 budget: int | None = None, timeout: float = 30.0, max_retries: int = 4,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_retry_after_s: float = 120.0, client: Any = None) -> None:
        import httpx

        self.endpoint = endpoint_url.rstrip("/")
        self.adapter = merge_adapter(adapter)
        self.credential_name = credential_name
        self._dim = int(embedding_dim) if embedding_dim else None
        self._caps = frozenset(capabilities)
        if "image" not in self._caps:
            raise ValueError("capabilities: an audited encoder must at least embed images")
        self.budget = budget
        self.queries_used = 0
        self.requests_sent = 0
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self._limiter = endpoint_limiter(self.endpoint, rate_limit_per_s) if rate_limit_per_s else None
        self._secret: _Secret | None = None
        self._client = client or httpx.Client(timeout=httpx.Timeout(self.timeout))
        self._version: str | None = None
        self._rand = random.Random()

    # --- the handle protocol ------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return self._caps

    @property
    def embedding_dim(self) -> int:
        if self._dim is None:
            self._dim = self._fetch_dim()
        return self._dim

    @property
    def model_version(self) -> str:
        """The canary hash (queried once per handle; see :mod:`audit_lib.encoders.version`)."""
        if self._version is None:
            from audit_lib.encoders.version import canary_hash, canary_images

            self._version = canary_hash(self.encode_images(list(canary_images()), kind="canary"))
        return self._version

    def encode_images(self, images: Sequence[Any], *, kind: str = "image") -> np.ndarray:
        """Embed images (encoded bytes or PIL images) through the API."""
        payload = [self._encode_image(im) for im in images]
        return self._embed("images", payload)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if "text" not in self._caps:
            raise NotApplicable(f"{self.endpoint}: this API is registered without text embeddings")
        return self._embed("texts", [str(t) for t in texts])

    def close(self) -> None:
        self._client.close()

    # --- internals ----------------------------------------------------------------------
    def _encode_image(self, image: Any) -> str:
        if not isinstance(image, (bytes, bytearray, memoryview)):
            from PIL import Image

            if not isinstance(image, Image.Image):
                raise TypeError(f"an image must be encoded bytes or a PIL image, not {type(image).__name__}")
            buf = io.BytesIO()
            image.save(buf, "PNG")
            image = buf.getvalue()
        text = base64.b64encode(bytes(image)).decode("ascii")
        if self.adapter["image_encoding"] == "data_url":
            text = "data:application/octet-stream;base64," + text
        return text

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.endpoint + path if path else self.endpoint

    def _headers(self) -> dict[str, str]:
        if not self.credential_name:
            return {}
        if self._secret is None:
            self._secret = resolve_credential(self.credential_name)
        auth = self.adapter["auth"]
        return {auth["header"]: f"{auth.get('prefix', '')}{self._secret.value}"}

    def _scrub(self, text: str) -> str:
        """Remove the secret from any text that may reach a log or an exception."""
        if self._secret is not None and self._secret.value:
            text = text.replace(self._secret.value, "<secret>")
        return text

    def _fetch_dim(self) -> int:
        info = self.adapter.get("info") or {}
        if not info.get("path"):
            raise RemoteEncoderError(f"{self.endpoint}: the embedding dimension is unknown; register "
                                     "the model with its dimension or an adapter 'info' path")
        resp = self._request("GET", self._url(info["path"]), None)
        try:
            return int(get_path(resp.json(), info.get("dim", "embedding_dim")))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAnswer(f"{self.endpoint}{info['path']}: no embedding dimension in the answer "
                            f"({self._scrub(str(exc))})") from None

    def _embed(self, what: str, inputs: list[str]) -> np.ndarray:
        n = len(inputs)
        dim = self.embedding_dim
        if n == 0:
            return np.zeros((0, dim), dtype=np.float32)
        if self.budget is not None and self.queries_used + n > self.budget:
            raise BudgetExhausted(
                f"{self.endpoint}: the query budget of {self.budget} queries for this run is spent "
                f"({self.queries_used} used, {n} more needed); nothing more was sent. Raise the "
                "model's query budget or audit fewer inputs.")
        spec = self.adapter[what]
        out = np.empty((n, dim), dtype=np.float32)
        step = int(self.adapter["max_batch"])
        for start in range(0, n, step):
            chunk = inputs[start:start + step]
            body = copy.deepcopy(self.adapter["extra_body"])
            set_path(body, spec["field"], chunk)
            url = self._url(spec["path"])
            resp = self._request("POST", url, body)
            out[start:start + len(chunk)] = self._validate(resp, url, spec["response"], len(chunk), dim)
            self.queries_used += len(chunk)
        return out

    def _validate(self, resp: Any, url: str, path: str, n: int, dim: int) -> np.ndarray:
        try:
            obj = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError):
            raise BadAnswer(f"{url}: the answer is not JSON ({len(resp.content)} bytes, "
                            f"content-type {resp.headers.get('content-type', '?')})") from None
        try:
            rows = get_path(obj, path)
        except KeyError as exc:
            raise BadAnswer(f"{url}: the answer has no embeddings at {path!r} ({exc.args[0]})") from None
        if not isinstance(rows, list):
            raise BadAnswer(f"{url}: embeddings at {path!r} are not a list")
        if len(rows) != n:
            raise BadAnswer(f"{url}: {len(rows)} embeddings for {n} inputs")
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except (ValueError, TypeError):
            raise BadAnswer(f"{url}: embeddings are not lists of numbers of equal length") from None
        if arr.ndim != 2 or arr.shape[1] != dim:
            got = arr.shape[1] if arr.ndim == 2 else "irregular"
            raise BadAnswer(f"{url}: embedding dimension {got}, expected {dim}")
        bad = ~np.isfinite(arr)
        if bad.any():
            raise BadAnswer(f"{url}: {int(bad.sum())} non-finite numbers (NaN or infinity) in "
                            f"{int(bad.any(axis=1).sum())} of {n} embeddings")
        if np.abs(arr).max(initial=0.0) > np.finfo(np.float32).max:
            raise BadAnswer(f"{url}: numbers too large for float32")
        return arr.astype(np.float32)

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt))
        return base / 2 + self._rand.uniform(0, base / 2)  # "equal jitter"

    def _request(self, method: str, url: str, body: dict[str, Any] | None):  # noqa: ANN202
        import httpx

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if self._limiter is not None:
                self._limiter.wait()
            headers = self._headers()
            wait = self._backoff(attempt)
            try:
                self.requests_sent += 1
                resp = self._client.request(method, url, json=body, headers=headers)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__})"
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    return resp
                if status in (401, 403):
                    raise CredentialError(f"{url}: HTTP {status}, the API refused the credential "
                                          f"{self.credential_name!r}")
                if status == 429:
                    after = _retry_after_s(resp.headers.get("retry-after"))
                    if after is not None and after > self.max_retry_after_s:
                        raise RemoteUnavailable(f"{url}: rate limited, Retry-After {after:g} s is over "
                                                f"the {self.max_retry_after_s:g} s this handle waits")
                    wait = after if after is not None else wait
                    last = f"rate limited (HTTP 429, Retry-After {resp.headers.get('retry-after', '-')})"
                elif status >= 500:
                    last = f"HTTP {status}"
                else:
                    detail = self._scrub(resp.text[:300])
                    raise RemoteEncoderError(f"{url}: HTTP {status}: {detail}")
            if attempt < self.max_retries:
                log.warning("%s: %s; retry %d of %d in %.2f s", url, last, attempt + 1,
                            self.max_retries, wait)
                time.sleep(wait)
        raise RemoteUnavailable(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}")
