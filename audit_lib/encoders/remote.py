"""A remote embedding API as an encoder handle, over httpx: the *transport*.

What the requests and answers look like is the adapter's business
(:mod:`audit_lib.encoders.adapter`: per call kind the route, the body template and the
response path, how images are encoded and how the key is sent; vendor presets). This
module sends what the adapter builds and reads back what it points at.

Credentials are looked up by *name* (an environment variable, else an Airflow Connection's
password) when the first request is made; the secret lives only in memory and is scrubbed
from every error message (also URL-encoded, as httpx writes query parameters). A key is
only ever sent to the registered endpoint's host. Failures are handled as an operator
expects: timeouts; retries with exponential backoff and jitter on 5xx and connection
errors; 429 waits for ``Retry-After``; a per-endpoint rate limit shared by all handles in
the process; a per-run query budget (counted in inputs answered) that stops with
:class:`BudgetExhausted` before anything over budget is sent. Every answer is validated
(count, dimension, finite numbers); a bad answer raises :class:`BadAnswer` naming the
endpoint and the problem, and, since the cache only stores what this handle returns, it is
never cached. ``queries_used`` (inputs answered) and ``requests_sent`` (HTTP requests,
retries included) count what reached the API, independent of any cache in front.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import numpy as np

from audit_lib.encoders.adapter import Adapter, get_path, parse_adapter, set_path
from audit_lib.encoders.base import NotApplicable

__all__ = ["CREDENTIAL_PREFIX", "BadAnswer", "BudgetExhausted", "CredentialError", "RemoteEncoder",
           "RemoteEncoderError", "RemoteUnavailable", "check_credential_name", "endpoint_limiter", "get_path",
           "resolve_credential", "set_path"]

log = logging.getLogger(__name__)

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


# --- credentials ---------------------------------------------------------------------------
#: Only environment variables (or Airflow Connections) whose name starts with this prefix
#: may be named as an API's credential: any other name (the web app's secret key, the
#: database URL) would be read and sent to whatever endpoint was registered.
CREDENTIAL_PREFIX = "AUDIT_CRED_"
_CREDENTIAL_NAME_MAX = 200  # the width of models.credential_name


def check_credential_name(name: str) -> str:
    """``name`` if it is a declared credential name (:data:`CREDENTIAL_PREFIX` followed by
    letters, digits or underscores), else :class:`CredentialError` naming the rule."""
    rest = name[len(CREDENTIAL_PREFIX):] if name.startswith(CREDENTIAL_PREFIX) else None
    if not rest or len(name) > _CREDENTIAL_NAME_MAX or not all(c.isascii() and (c.isalnum() or c == "_")
                                                               for c in rest):
        raise CredentialError(f"credential {name!r}: only names that start with {CREDENTIAL_PREFIX} "
                              "followed by letters, digits or underscores may hold an API key (e.g. "
                              f"{CREDENTIAL_PREFIX}VENDOR); put the key in such an environment variable "
                              "or Airflow Connection")
    return name


class _Secret:
    """A credential in memory; never printed."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _secret_forms(value: str) -> list[str]:
    """The secret as is and as URL encoding writes it (query parameters), longest first."""
    return sorted({value, quote(value, safe=""), quote_plus(value), quote(value)}, key=len, reverse=True)


class _ScrubSecrets(logging.Filter):
    """Rewrites records of the HTTP client's loggers that contain a known secret: httpx
    logs every request's full URL at INFO, query-parameter keys included."""

    LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")

    def __init__(self) -> None:
        super().__init__()
        self._forms: list[str] = []
        self._lock = threading.Lock()
        self._installed = False

    def add(self, value: str) -> None:
        with self._lock:
            self._forms = sorted(set(self._forms) | set(_secret_forms(value)), key=len, reverse=True)
            if not self._installed:
                for name in self.LOGGERS:
                    logging.getLogger(name).addFilter(self)
                self._installed = True

    def filter(self, record: logging.LogRecord) -> bool:
        forms = self._forms
        if forms:
            msg = record.getMessage()
            clean = msg
            for form in forms:
                clean = clean.replace(form, "<secret>")
            if clean != msg:
                record.msg, record.args = clean, None
        return True


_SCRUB_LOGS = _ScrubSecrets()


def _airflow_configured() -> bool:
    return bool(os.environ.get("AIRFLOW_HOME")) or any(k.startswith("AIRFLOW_CONN_") for k in os.environ)


def resolve_credential(name: str) -> _Secret:
    """The secret called ``name``: the environment variable ``name``, else the password of
    the Airflow Connection ``name`` (only where Airflow is configured). Only declared
    names (:func:`check_credential_name`) are read, also for a row stored before the rule."""
    check_credential_name(name)
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

    ``adapter`` is an :class:`~audit_lib.encoders.adapter.Adapter` or a stored adapter dict
    (version 1 or 2; ``None``: the reference server's shape). ``embedding_dim`` and
    ``rate_limit_per_s`` given here win over the adapter's. ``budget`` counts inputs
    (images and texts) answered by this handle, i.e. per audit run when a run opens its own
    handle; ``None`` is unlimited."""

    version_method = "canary"

    def __init__(self, endpoint_url: str, adapter: Adapter | dict[str, Any] | None = None,
                 credential_name: str | None = None, *, embedding_dim: int | None = None,
                 capabilities: Sequence[str] = ("image",), rate_limit_per_s: float | None = None,
                 budget: int | None = None, timeout: float = 30.0, max_retries: int = 4,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_retry_after_s: float = 120.0, client: Any = None) -> None:
        import httpx

        self.endpoint = endpoint_url.rstrip("/")
        self._host = urlsplit(self.endpoint).netloc
        if urlsplit(self.endpoint).scheme not in ("http", "https") or not self._host:
            raise ValueError(f"endpoint: {endpoint_url!r} is not an http(s) URL")
        self.adapter = parse_adapter(adapter)
        self.credential_name = credential_name
        dim = embedding_dim or self.adapter.embedding_dim
        self._dim = int(dim) if dim else None
        self._caps = frozenset(capabilities)
        if "image" not in self._caps:
            raise ValueError("capabilities: an audited encoder must at least embed images")
        if "text" in self._caps and self.adapter.texts is None:
            raise ValueError("capabilities: 'text' is registered but the adapter has no 'texts' call")
        self.canary_tolerance = float(self.adapter.canary_tolerance)
        self.budget = budget
        self.queries_used = 0
        self.requests_sent = 0
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        rate = rate_limit_per_s or self.adapter.rate_limit_per_s
        self._limiter = endpoint_limiter(self.endpoint, rate) if rate else None
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
        return self._embed("images", [self.adapter.image_slots(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if "text" not in self._caps:
            raise NotApplicable(f"{self.endpoint}: this API is registered without text embeddings")
        return self._embed("texts", [{"text": str(t)} for t in texts])

    def close(self) -> None:
        self._client.close()

    # --- internals ----------------------------------------------------------------------
    def _url(self, path: str) -> str:
        url = self.endpoint + path
        if urlsplit(url).netloc != self._host:  # the adapter checks paths; this is the last guard
            raise RemoteEncoderError(f"{self.endpoint}: the adapter path {path!r} leaves the "
                                     "registered host; refusing to send the credential there")
        return url

    def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query parameters) carrying the credential, as the adapter says."""
        auth = self.adapter.auth
        if not self.credential_name or auth.scheme == "none":
            return {}, {}
        if self._secret is None:
            self._secret = resolve_credential(self.credential_name)
            _SCRUB_LOGS.add(self._secret.value)
        if auth.scheme == "query":
            return {}, {auth.param or "key": self._secret.value}
        return {auth.header: f"{auth.prefix}{self._secret.value}"}, {}

    def _scrub(self, text: str) -> str:
        """Remove the secret (as is and URL-encoded) from text that may reach a log or an
        exception."""
        if self._secret is not None and self._secret.value:
            for form in _secret_forms(self._secret.value):
                text = text.replace(form, "<secret>")
        return text

    def _fetch_dim(self) -> int:
        info = self.adapter.info
        if info is None:
            raise RemoteEncoderError(f"{self.endpoint}: the embedding dimension is unknown; register "
                                     "the model with its dimension or an adapter 'info' path")
        resp = self._request("GET", self._url(info.path), None)
        try:
            return int(get_path(resp.json(), info.dim))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAnswer(f"{self.endpoint}{info.path}: no embedding dimension in the answer "
                            f"({self._scrub(str(exc))})") from None

    def _embed(self, what: str, inputs: list[dict[str, str]]) -> np.ndarray:
        n = len(inputs)
        spec = self.adapter.call(what)
        dim = self.embedding_dim
        if n == 0:
            return np.zeros((0, dim), dtype=np.float32)
        if self.budget is not None and self.queries_used + n > self.budget:
            raise BudgetExhausted(
                f"{self.endpoint}: the query budget of {self.budget} queries for this run is spent "
                f"({self.queries_used} used, {n} more needed); nothing more was sent. Raise the "
                "model's query budget or audit fewer inputs.")
        out = np.empty((n, dim), dtype=np.float32)
        step = self.adapter.batch_for(what)
        url = self._url(spec.path)
        for start in range(0, n, step):
            chunk = inputs[start:start + step]
            body = self.adapter.request_body(what, chunk)
            resp = self._request(spec.method, url, body)
            out[start:start + len(chunk)] = self._validate(resp, url, what, len(chunk), dim)
            self.queries_used += len(chunk)
        return out

    def _validate(self, resp: Any, url: str, what: str, n: int, dim: int) -> np.ndarray:
        path = self.adapter.call(what).response
        try:
            obj = json.loads(resp.content)
        except (ValueError, UnicodeDecodeError):
            raise BadAnswer(f"{url}: the answer is not JSON ({len(resp.content)} bytes, "
                            f"content-type {resp.headers.get('content-type', '?')})") from None
        try:
            rows = self.adapter.read_embeddings(what, obj)
        except KeyError as exc:
            raise BadAnswer(f"{url}: the answer has no embeddings at {path!r} "
                            f"({self._scrub(str(exc.args[0]))})") from None
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
            headers, params = self._auth()
            wait = self._backoff(attempt)
            try:
                self.requests_sent += 1
                resp = self._client.request(method, url, json=body, headers=headers, params=params or None)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = self._scrub(f"connection failed ({type(exc).__name__}: {exc})")
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
                    if status == 400 and any(m in resp.text for m in self.adapter.auth.refused_400):
                        raise CredentialError(f"{url}: HTTP 400 ({detail}), the API refused the "
                                              f"credential {self.credential_name!r}")
                    raise RemoteEncoderError(f"{url}: HTTP {status}: {detail}")
            if attempt < self.max_retries:
                log.warning("%s: %s; retry %d of %d in %.2f s", url, last, attempt + 1,
                            self.max_retries, wait)
                time.sleep(wait)
        raise RemoteUnavailable(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}")
