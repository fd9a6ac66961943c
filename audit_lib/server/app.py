"""The reference encoder server's HTTP API (FastAPI).

Routes (all but ``/healthz`` need ``Authorization: Bearer <key>`` unless the server was
started without keys on purpose):

- ``POST /v1/embed/images`` ``{"images": [base64, ...]}`` ->
  ``{"embeddings": [[...], ...], "model_version": "...", "dim": d}``
- ``POST /v1/embed/texts`` ``{"texts": [...]}`` -> the same shape (404 if image-only)
- ``GET /v1/info`` -> ``{"embedding_dim", "capabilities", "model_version", "max_batch"}``
- ``GET /healthz``

Per key (see :mod:`.keys`): rate limits on requests, images and pixels (429 with
``Retry-After``), the StolenEncoder output defences (:mod:`.defences`) and fault injection
(:mod:`.faults`). The server counts what it answered in ``app.state.stats`` so tests can
check that a cache hit sent nothing.

Limits that hold before any work is done: the request body (``AUDIT_SERVER_MAX_REQUEST_BYTES``,
413 from the declared length or while the body streams, before JSON parsing), the images
per request (``max_batch``) and the pixels per request (``AUDIT_SERVER_MAX_REQUEST_PIXELS``,
read from the image headers before decoding). Every image that cannot be decoded (not an
image, truncated, a decompression bomb) is a 400 or 413 naming it. ``/docs``, ``/redoc``
and ``/openapi.json`` exist only with ``AUDIT_SERVER_DOCS=1``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import struct
import threading
import time
import warnings
from collections import Counter
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from audit_lib.encoders.base import EncoderHandle, NotApplicable
from audit_lib.server.defences import apply_defences
from audit_lib.server.keys import KeyRing, KeySettings
from audit_lib.web.middleware import BodyLimitMiddleware, human_bytes

log = logging.getLogger(__name__)

ANONYMOUS = KeySettings(name="anonymous")


class ImagesRequest(BaseModel):
    images: list[str] = Field(description="base64-encoded image files (PNG, JPEG, ...)")


class TextsRequest(BaseModel):
    texts: list[str]


class ServerStats:
    """Thread-safe counters of what the server was asked and answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by "route status"
        self.inputs_embedded = 0
        self.by_key: Counter[str] = Counter()

    def record(self, route: str, status: int, key_name: str, n_embedded: int = 0) -> None:
        with self._lock:
            self.requests[f"{route} {status}"] += 1
            self.by_key[key_name] += 1
            self.inputs_embedded += n_embedded

    @property
    def embed_requests(self) -> int:
        """Embedding requests received (any outcome)."""
        with self._lock:
            return sum(v for k, v in self.requests.items() if k.startswith("/v1/embed"))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.by_key.clear()
            self.inputs_embedded = 0

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "inputs_embedded": self.inputs_embedded,
                    "by_key": dict(self.by_key)}


def authorise(request: Request, authorization: Annotated[str | None, Header()] = None) -> KeySettings:
    """The settings of the request's Bearer key; 401 without naming or echoing the key."""
    keys: KeyRing | None = request.app.state.keys
    if not keys:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    settings = keys.lookup(token.strip()) if scheme.lower() == "bearer" else None
    if settings is None:
        request.app.state.stats.record("auth", 401, "unknown")
        raise HTTPException(401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return settings


Key = Annotated[KeySettings, Depends(authorise)]


def _json_bytes(obj: Any) -> bytes:
    # allow_nan: a "nan" fault must be able to send NaN literally, as a broken API would.
    return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode()


def create_app(encoder: EncoderHandle, keys: KeyRing | None, *, max_batch: int = 256,
               allow_anonymous: bool = False, max_request_bytes: int | None = None,
               max_request_pixels: int | None = None, docs: bool | None = None) -> FastAPI:
    """The API in front of ``encoder``. ``keys`` None or empty requires ``allow_anonymous``
    (an open embedding API is a theft risk, so it must be asked for). The limits default
    to the settings (:mod:`audit_lib.config`)."""
    from audit_lib.config import get_settings

    if not keys and not allow_anonymous:
        raise ValueError("no API keys given: pass a keys file, or allow anonymous access explicitly")
    settings = get_settings()
    max_request_bytes = max_request_bytes or settings.server_max_request_bytes
    max_request_pixels = max_request_pixels or settings.server_max_request_pixels
    docs = settings.server_docs if docs is None else docs
    app = FastAPI(title="encoder-audit reference encoder server", version="1",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes,
                       render=lambda message: json.dumps({"detail": message}).encode(),
                       media_type=b"application/json")
    stats = ServerStats()
    app.state.stats = stats
    app.state.encoder = encoder
    app.state.keys = keys
    rngs: dict[str, np.random.Generator] = {}
    rng_lock = threading.RLock()

    def rng_for(key: KeySettings) -> np.random.Generator:
        with rng_lock:
            if key.name not in rngs:
                rngs[key.name] = np.random.default_rng(key.seed)
            return rngs[key.name]

    def answer(route: str, key: KeySettings, n: int, compute, pixels_of=None) -> Response:  # noqa: ANN001
        """Rate limit, faults, embedding, defences: the common path of both embed routes.
        ``pixels_of`` (images only) checks the inputs' headers and returns their pixel
        count, which is charged to the key before anything is decoded."""
        wait = key.retry_after()
        if wait is not None:
            stats.record(route, 429, key.name)
            return JSONResponse({"detail": "rate limit exceeded"}, 429, headers={"Retry-After": str(wait)})
        fault = key.faults.draw() if key.faults else "ok"
        if fault == "429":
            stats.record(route, 429, key.name)
            return JSONResponse({"detail": "rate limit exceeded (injected)"}, 429,
                                headers={"Retry-After": f"{key.faults.retry_after:g}"})
        if fault == "500":
            stats.record(route, 500, key.name)
            return JSONResponse({"detail": "internal error (injected)"}, 500)
        if fault == "garbage":
            stats.record(route, 200, key.name)
            return Response(b"<html>upstream proxy error</html>{{{", 200, media_type="application/json")
        if fault == "slow":
            time.sleep(key.faults.slow_s)
        if n == 0:
            raise HTTPException(422, "the request holds no inputs")
        if n > max_batch:
            raise HTTPException(413, f"{n} inputs in one request; at most {max_batch}")
        if pixels_of is not None:
            pixels = pixels_of()
            if pixels > max_request_pixels:
                raise HTTPException(413, f"{pixels} pixels in one request; at most {max_request_pixels}")
            wait = key.charge_inputs(n, pixels)
            if wait is not None:
                stats.record(route, 429, key.name)
                return JSONResponse({"detail": "image or pixel rate limit exceeded"}, 429,
                                    headers={"Retry-After": str(wait)})
        emb = np.asarray(compute(), dtype=np.float32)
        if key.defences.active:
            with rng_lock:
                emb = apply_defences(emb, key.defences, rng_for(key))
        rows = emb.tolist()
        if fault == "nan":
            rows[0][0] = float("nan")
        elif fault == "wrong_dim":
            rows = [r[:-1] for r in rows]
        elif fault == "wrong_count":
            rows = rows[:-1]
        stats.record(route, 200, key.name, n_embedded=n)
        body = {"embeddings": rows, "model_version": encoder.model_version, "dim": len(rows[0]) if rows else 0}
        return Response(_json_bytes(body), 200, media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info")
    def info(key: Key) -> dict[str, Any]:
        stats.record("/v1/info", 200, key.name)
        return {"embedding_dim": encoder.embedding_dim, "capabilities": sorted(encoder.capabilities),
                "model_version": encoder.model_version, "max_batch": max_batch,
                "max_request_bytes": max_request_bytes, "max_request_pixels": max_request_pixels}

    @app.post("/v1/embed/images")
    def embed_images(req: ImagesRequest, key: Key) -> Response:
        images: list[bytes] = []

        def pixels_of() -> int:
            total = 0
            for i, text in enumerate(req.images):
                data, pixels = _decode_image(i, text)
                images.append(data)
                total += pixels
            return total

        def compute() -> np.ndarray:
            try:
                return encoder.encode_images(images)
            except DECODE_ERRORS as exc:
                raise HTTPException(400, f"an image could not be decoded ({type(exc).__name__}: "
                                         f"{str(exc)[:200]})") from None

        return answer("/v1/embed/images", key, len(req.images), compute, pixels_of)

    @app.post("/v1/embed/texts")
    def embed_texts(req: TextsRequest, key: Key) -> Response:
        if "text" not in encoder.capabilities:
            raise HTTPException(404, "this model has no text tower")

        def compute() -> np.ndarray:
            try:
                return encoder.encode_texts(req.texts)
            except NotApplicable as exc:
                raise HTTPException(404, str(exc)) from None

        return answer("/v1/embed/texts", key, len(req.texts), compute)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code != 401:
            stats.record(request.url.path, exc.status_code, "-")
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    return app


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # What Pillow raises for files that are not, or not wholly, images (struct.error and
    # EOFError come from some truncated headers; the bomb error is not an OSError).
    return (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError,
            Image.DecompressionBombError, Image.DecompressionBombWarning)


DECODE_ERRORS = _decode_errors()


def _decode_image(index: int, text: str) -> tuple[bytes, int]:
    """base64 -> (bytes, pixel count), from a header check (format, pixel count) before
    the full decode. Pillow's decompression-bomb warning is an error here."""
    from PIL import Image, UnidentifiedImageError

    from audit_lib.config import get_settings

    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"images[{index}]: not valid base64") from None
    settings = get_settings()
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"images[{index}]: {len(data)} bytes is over the limit of "
                                 f"{human_bytes(settings.max_image_bytes)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"images[{index}]: decompression bomb refused") from None
    except UnidentifiedImageError:
        raise HTTPException(400, f"images[{index}]: not an image") from None
    except DECODE_ERRORS:
        raise HTTPException(400, f"images[{index}]: a corrupt image header") from None
    if w * h > settings.max_image_pixels:
        raise HTTPException(413, f"images[{index}]: {w}x{h} pixels is over the limit of "
                                 f"{settings.max_image_pixels}")
    from audit_lib.images import load_whole

    try:
        with Image.open(io.BytesIO(data)) as img:
            load_whole(img)
    except DECODE_ERRORS:
        raise HTTPException(400, f"images[{index}]: a truncated or corrupt image") from None
    return data, w * h
