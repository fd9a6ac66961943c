"""Stand-ins for vendors' embedding APIs: real HTTP servers on 127.0.0.1 speaking each
vendor's documented request and answer shape, auth included, embedding with a real local
encoder (so an embedding is a deterministic function of the image bytes).

    with vendor_stub("cohere-v2", encoder, key="co-test") as url:
        url.endpoint        # what to register as the model's endpoint URL
        url.stats.requests  # embedding requests received (any outcome)

Every stub refuses a missing or wrong key with that vendor's error status and body, and a
malformed request (unknown fields, wrong types, too many inputs, a data URL whose MIME type
is not the image's) with 400 and that vendor's error body. Each app's docstring names the
documentation page it follows. What a stub cannot do with a small local encoder (e.g.
Voyage's interleaved text+image inputs, Titan's output lengths) it refuses or states.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

VENDORS = ("openai-compatible", "jina", "cohere-v2", "voyage-multimodal", "vertex-multimodal",
           "clarifai", "bedrock-titan")
_PIL_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp",
             "BMP": "image/bmp"}


class StubError(Exception):
    """Answer the request with ``status`` and the vendor's error ``body``."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class StubStats:
    """What a stub received: embedding requests, inputs per accepted request, statuses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.batch_sizes: list[int] = []
        self.last_body: Any = None
        self.last_query: dict[str, str] = {}

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def record(self, status: int, n: int = 0) -> None:
        with self._lock:
            self.statuses[status] += 1
            if status == 200:
                self.batch_sizes.append(n)


class StubURL(str):
    """The server's base URL, with the endpoint to register and the counters."""

    endpoint: str
    stats: StubStats


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- shared helpers --------------------------------------------------------------------------
def _b64(text: str, bad: StubError) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None


def _image_mime(data: bytes, bad: StubError) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _PIL_MIME.get(im.format or "", f"image/x-{(im.format or 'unknown').lower()}")
    except Exception:  # noqa: BLE001 - not an image
        raise bad from None


def _data_url(text: str, allowed: tuple[str, ...], bad: StubError) -> bytes:
    m = re.fullmatch(r"data:([a-z]+/[a-z0-9.+-]+);base64,(.+)", text, re.S)
    if m is None or m.group(1) not in allowed:
        raise bad
    data = _b64(m.group(2), bad)
    if _image_mime(data, bad) != m.group(1):  # the declared type must be the real one
        raise bad
    return data


def _embed_images(encoder: Any, images: list[bytes]) -> list[list[float]]:
    return np.asarray(encoder.encode_images(images), dtype=np.float64).tolist()


def _embed_texts(encoder: Any, texts: list[str], bad: StubError) -> list[list[float]]:
    if "text" not in encoder.capabilities:
        raise bad
    return np.asarray(encoder.encode_texts(texts), dtype=np.float64).tolist()


def _bearer(request: Request, key: str, refused: StubError, header: str = "authorization",
            prefix: str = "Bearer ") -> None:
    if request.headers.get(header) != f"{prefix}{key}":
        raise refused


async def _json(request: Request, bad: StubError) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise bad from None


def _route(app: FastAPI, path: str, stats: StubStats, handler: Any) -> None:
    """POST ``path``: run ``handler(request, **path_params) -> (answer, n_inputs)``;
    a :class:`StubError` becomes the vendor's error answer."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            answer, n = await handler(request, **request.path_params)
        except StubError as exc:
            stats.record(exc.status)
            return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
        stats.record(200, n)
        return JSONResponse(answer)

    app.add_api_route(path, endpoint, methods=["POST"])


# --- OpenAI-compatible (Infinity-style image inputs) ----------------------------------------
class _OpenAIRequest(_Strict):
    model: str
    input: list[str] | str
    modality: Literal["text", "image"] = "text"
    encoding_format: Literal["float"] = "float"
    user: str | None = None
    dimensions: int | None = None


def openai_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /v1/embeddings`` as in https://platform.openai.com/docs/api-reference/embeddings/create
    (answer ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], ...}``,
    errors ``{"error": {"message", "type", "param", "code"}}``), with images as in Infinity's
    OpenAI-compatible server (https://michaelfeil.eu/infinity/): ``"modality": "image"`` and
    data URIs in ``input``."""
    app = FastAPI()

    def err(status: int, message: str, code: str | None) -> StubError:
        return StubError(status, {"error": {"message": message, "type": "invalid_request_error",
                                            "param": None, "code": code}})

    async def embeddings(request: Request) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(401, "Incorrect API key provided.", "invalid_api_key"))
        bad = err(400, "Invalid request body.", None)
        try:
            req = _OpenAIRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs or len(inputs) > 2048:
            raise bad
        if req.modality == "image":
            rows = _embed_images(encoder, [_data_url(s, tuple(_PIL_MIME.values()), bad) for s in inputs])
        else:
            rows = _embed_texts(encoder, inputs, bad)
        stats.last_body = req.model_dump()
        return ({"object": "list", "model": req.model,
                 "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
                 "usage": {"prompt_tokens": 0, "total_tokens": 0}}, len(inputs))

    _route(app, "/v1/embeddings", stats, embeddings)
    return app


# --- Jina AI -------------------------------------------------------------------------------
class _JinaImage(_Strict):
    image: str


class _JinaText(_Strict):
    text: str


class _JinaRequest(_Strict):
    model: str
    input: list[_JinaImage | _JinaText | str]
    normalized: bool = False
    embedding_type: Literal["float"] = "float"
    task: str | None = None
    dimensions: int | None = None
    late_chunking: bool | None = None
    truncate: bool | None = None


def jina_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /v1/embeddings`` as in https://jina.ai/embeddings/ (OpenAPI
    https://api.jina.ai/openapi.json): ``input`` items are ``{"image": <URL or base64>}`` or
    ``{"text": ...}`` (or bare strings, texts); ``normalized`` scales to unit length; answer
    ``data[*].embedding``; ``Authorization: Bearer <key>`` (401 ``AUTH_INVALID_API_KEY``).
    Image URLs are refused here: the stub has no network."""
    app = FastAPI()

    def err(status: int, code: str, message: str) -> StubError:
        return StubError(status, {"detail": f"{code}: {message}"})

    async def embeddings(request: Request) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(401, "AUTH_INVALID_API_KEY", "Invalid API key"))
        bad = err(400, "INPUT_INVALID", "Invalid input")
        try:
            req = _JinaRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        if not req.input or len(req.input) > 2048:
            raise bad
        kinds = {type(x) for x in req.input}
        if len(kinds) != 1:
            raise err(400, "INPUT_INVALID", "this stub embeds one modality per request")
        if kinds == {_JinaImage}:
            images = [_b64(x.image, bad) for x in req.input]
            for data in images:
                _image_mime(data, bad)
            rows = np.asarray(_embed_images(encoder, images))
        else:
            rows = np.asarray(_embed_texts(encoder, [x if isinstance(x, str) else x.text for x in req.input], bad))
        if req.normalized:
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        stats.last_body = req.model_dump()
        return ({"model": req.model, "object": "list", "usage": {"total_tokens": 0, "prompt_tokens": 0},
                 "data": [{"object": "embedding", "index": i, "embedding": r}
                          for i, r in enumerate(rows.tolist())]}, len(req.input))

    _route(app, "/v1/embeddings", stats, embeddings)
    return app


# --- Cohere Embed v2 -----------------------------------------------------------------------
class _CohereRequest(_Strict):
    model: str
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"]
    texts: list[str] | None = Field(default=None, max_length=96)
    images: list[str] | None = Field(default=None, max_length=1)
    inputs: list[dict[str, Any]] | None = None
    embedding_types: list[Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]] | None = None
    output_dimension: int | None = None
    max_tokens: int | None = None
    truncate: Literal["NONE", "START", "END"] | None = None


def cohere_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /v2/embed`` as in https://docs.cohere.com/reference/embed: ``model`` and
    ``input_type`` required; one of ``texts`` (<= 96) or ``images`` (data URIs of
    image/jpeg, png, webp or gif, at most one per call); ``embedding_types`` ``["float"]``
    -> ``embeddings.float``; ``Authorization: Bearer <key>``, errors ``{"id", "message"}``.
    Only float embeddings and ``texts``/``images`` are implemented (``inputs`` is refused)."""
    app = FastAPI()

    def err(status: int, message: str) -> StubError:
        return StubError(status, {"id": str(uuid.uuid4()), "message": message})

    async def embed(request: Request) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(401, "invalid api token"))
        bad = err(400, "invalid request")
        try:
            req = _CohereRequest.model_validate(await _json(request, bad))
        except ValidationError as exc:
            raise err(400, f"invalid request: {exc.errors()[0]['loc']}") from None
        given = [f for f in ("texts", "images", "inputs") if getattr(req, f) is not None]
        if given not in (["texts"], ["images"]) or req.embedding_types not in (None, ["float"]):
            raise bad
        if req.images is not None:
            if req.input_type != "image" or len(req.images) != 1:
                raise bad
            allowed = ("image/jpeg", "image/png", "image/webp", "image/gif")
            rows = _embed_images(encoder, [_data_url(s, allowed, bad) for s in req.images])
        else:
            rows = _embed_texts(encoder, req.texts or [], bad)
        stats.last_body = req.model_dump(exclude_none=True)
        return ({"id": str(uuid.uuid4()), "embeddings": {"float": rows}, "texts": req.texts or [],
                 "response_type": "embeddings_by_type",
                 "meta": {"api_version": {"version": "2"},
                          "billed_units": {"images": len(req.images or [])}}}, len(rows))

    _route(app, "/v2/embed", stats, embed)
    return app


# --- Voyage multimodal ---------------------------------------------------------------------
class _VoyagePiece(_Strict):
    type: Literal["text", "image_base64", "image_url"]
    text: str | None = None
    image_base64: str | None = None
    image_url: str | None = None


class _VoyageInput(_Strict):
    content: list[_VoyagePiece] = Field(min_length=1)


class _VoyageRequest(_Strict):
    inputs: list[_VoyageInput] = Field(min_length=1, max_length=1000)
    model: str
    input_type: Literal["query", "document"] | None = None
    truncation: bool = True
    output_encoding: Literal["base64"] | None = None


def voyage_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /v1/multimodalembeddings`` as in
    https://docs.voyageai.com/reference/multimodal-embeddings-api: ``inputs[*].content`` is a
    list of pieces ``{"type": "text", "text"}`` / ``{"type": "image_base64", "image_base64":
    "data:image/png;base64,..."}`` (png, jpeg, webp, gif); answer ``data[*].embedding``;
    ``Authorization: Bearer <key>`` (401 ``{"detail": ...}``). Each input here must be a
    single piece (the stand-in encoder has no joint text+image embedding) and image URLs
    are refused (no network)."""
    app = FastAPI()

    def err(status: int, detail: str) -> StubError:
        return StubError(status, {"detail": detail})

    async def embed(request: Request) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(401, "Provided API key is invalid."))
        bad = err(400, "Request body is invalid.")
        try:
            req = _VoyageRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        pieces = []
        for inp in req.inputs:
            if len(inp.content) != 1:
                raise err(400, "stub: interleaved content is not implemented")
            pieces.append(inp.content[0])
        kinds = {p.type for p in pieces}
        allowed = ("image/png", "image/jpeg", "image/webp", "image/gif")
        if kinds == {"image_base64"}:
            if any(p.text is not None or p.image_url is not None or p.image_base64 is None for p in pieces):
                raise bad
            rows = _embed_images(encoder, [_data_url(p.image_base64 or "", allowed, bad) for p in pieces])
        elif kinds == {"text"}:
            if any(p.text is None or p.image_base64 is not None for p in pieces):
                raise bad
            rows = _embed_texts(encoder, [p.text or "" for p in pieces], bad)
        else:
            raise bad
        stats.last_body = req.model_dump(exclude_none=True)
        return ({"object": "list", "model": req.model,
                 "data": [{"object": "embedding", "embedding": r, "index": i} for i, r in enumerate(rows)],
                 "usage": {"text_tokens": 0, "image_pixels": 0, "total_tokens": 0}}, len(rows))

    _route(app, "/v1/multimodalembeddings", stats, embed)
    return app


# --- Google Vertex AI multimodal embeddings ------------------------------------------------
class _VertexImage(_Strict):
    bytesBase64Encoded: str | None = None  # noqa: N815 - the API's field name
    gcsUri: str | None = None  # noqa: N815
    mimeType: str | None = None  # noqa: N815


class _VertexInstance(_Strict):
    image: _VertexImage | None = None
    text: str | None = None
    video: dict[str, Any] | None = None


class _VertexRequest(_Strict):
    instances: list[_VertexInstance] = Field(min_length=1, max_length=1)
    parameters: dict[str, Any] | None = None


def vertex_app(encoder: Any, key: str, stats: StubStats, *, key_in: str = "header") -> FastAPI:
    """``POST .../publishers/google/models/multimodalembedding@001:predict`` as in
    https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/multimodal-embeddings:
    one instance ``{"image": {"bytesBase64Encoded", "mimeType"}}`` or ``{"text"}`` ->
    ``{"predictions": [{"imageEmbedding"}|{"textEmbedding"}], "deployedModelId"}``. The key
    is an OAuth token (``Authorization: Bearer``, 401 UNAUTHENTICATED) or, with
    ``key_in="query"``, an API key in ``?key=`` (a wrong one: 400 INVALID_ARGUMENT with reason
    API_KEY_INVALID, a missing one: 403 PERMISSION_DENIED, as Google answers). Errors are
    ``{"error": {"code", "message", "status"}}``. Both the project-scoped and the global
    (``/v1/publishers/google/models/...``) routes are served."""
    app = FastAPI()

    def err(code: int, status: str, message: str, reason: str | None = None) -> StubError:
        body: dict[str, Any] = {"error": {"code": code, "message": message, "status": status}}
        if reason:
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                         "reason": reason, "domain": "googleapis.com"}]
        return StubError(code, body)

    def check_key(request: Request) -> None:
        stats.last_query = dict(request.query_params)
        if key_in == "query":
            given = request.query_params.get("key")
            if given is None:
                raise err(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
            if given != key:
                raise err(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                          "API_KEY_INVALID")
        else:
            _bearer(request, key, err(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                      "credentials. Expected OAuth 2 access token."))

    async def predict(request: Request, model_action: str, **_: str) -> tuple[dict[str, Any], int]:
        if not model_action.endswith(":predict"):
            raise err(404, "NOT_FOUND", "Method not found.")
        check_key(request)
        bad = err(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        try:
            req = _VertexRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        inst = req.instances[0]
        if inst.image is not None and inst.text is None and inst.video is None:
            if inst.image.bytesBase64Encoded is None or inst.image.gcsUri is not None:
                raise bad
            data = _b64(inst.image.bytesBase64Encoded, bad)
            mime = _image_mime(data, bad)
            if mime not in ("image/png", "image/jpeg", "image/gif", "image/bmp") or \
                    (inst.image.mimeType is not None and inst.image.mimeType != mime):
                raise bad
            pred = {"imageEmbedding": _embed_images(encoder, [data])[0]}
        elif inst.text is not None and inst.image is None and inst.video is None:
            pred = {"textEmbedding": _embed_texts(encoder, [inst.text], bad)[0]}
        else:
            raise bad
        stats.last_body = req.model_dump(exclude_none=True)
        return {"predictions": [pred], "deployedModelId": "stub-deployment"}, 1

    _route(app, "/v1/projects/{project}/locations/{location}/publishers/google/models/{model_action}",
            stats, predict)
    _route(app, "/v1/publishers/google/models/{model_action}", stats, predict)
    return app


# --- Clarifai ------------------------------------------------------------------------------
class _ClarifaiData(_Strict):
    image: dict[str, str] | None = None
    text: dict[str, str] | None = None


class _ClarifaiInput(_Strict):
    id: str | None = None
    data: _ClarifaiData


class _ClarifaiRequest(_Strict):
    inputs: list[_ClarifaiInput] = Field(min_length=1, max_length=128)
    model: dict[str, Any] | None = None
    user_app_id: dict[str, str] | None = None


def clarifai_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /v2/users/{user}/apps/{app}/models/{model}/outputs`` (and ``/v2/models/{model}/outputs``)
    as in https://docs.clarifai.com/additional-resources/api-overview/api-outputs:
    ``inputs[*].data.image.base64`` or ``inputs[*].data.text.raw`` (<= 128) ->
    ``outputs[*].data.embeddings[0].vector``, every answer with ``status: {code, description}``
    (codes from https://docs.clarifai.com/resources/api-overview/status-codes/: 10000 Ok,
    11009 API key not found, 11102 invalid request); ``Authorization: Key <PAT>``."""
    app = FastAPI()

    def err(status: int, code: int, description: str) -> StubError:
        return StubError(status, {"status": {"code": code, "description": description,
                                             "req_id": uuid.uuid4().hex}, "outputs": []})

    async def outputs(request: Request, model: str, **_: str) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(401, 11009, "API key not found"), prefix="Key ")
        bad = err(400, 11102, "Invalid request")
        try:
            req = _ClarifaiRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        datas = [i.data for i in req.inputs]
        if all(d.image is not None and d.text is None for d in datas):
            if any(set(d.image or {}) != {"base64"} for d in datas):
                raise bad
            images = [_b64((d.image or {})["base64"], bad) for d in datas]
            for data in images:
                _image_mime(data, bad)
            rows = _embed_images(encoder, images)
        elif all(d.text is not None and d.image is None and set(d.text) == {"raw"} for d in datas):
            rows = _embed_texts(encoder, [(d.text or {})["raw"] for d in datas], bad)
        else:
            raise bad
        stats.last_body = req.model_dump(exclude_none=True)
        ok = {"code": 10000, "description": "Ok"}
        return ({"status": {**ok, "req_id": uuid.uuid4().hex},
                 "outputs": [{"id": uuid.uuid4().hex, "status": ok, "model": {"id": model},
                              "input": {"id": inp.id or uuid.uuid4().hex},
                              "data": {"embeddings": [{"vector": r, "num_dimensions": len(r)}]}}
                             for inp, r in zip(req.inputs, rows)]}, len(rows))

    _route(app, "/v2/users/{user}/apps/{app_id}/models/{model}/outputs", stats, outputs)
    _route(app, "/v2/models/{model}/outputs", stats, outputs)
    return app


# --- Amazon Bedrock, Titan Multimodal Embeddings G1 ----------------------------------------
class _TitanConfig(_Strict):
    outputEmbeddingLength: Literal[256, 384, 1024] = 1024  # noqa: N815 - the API's field name


class _TitanRequest(_Strict):
    inputText: str | None = None  # noqa: N815
    inputImage: str | None = None  # noqa: N815
    embeddingConfig: _TitanConfig | None = None  # noqa: N815


def bedrock_app(encoder: Any, key: str, stats: StubStats) -> FastAPI:
    """``POST /model/{modelId}/invoke`` as in
    https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-mm.html:
    one input per request, ``{"inputImage": <base64>}`` or ``{"inputText": ...}`` (both: the
    average, not implemented here), optional ``embeddingConfig.outputEmbeddingLength``
    (256/384/1024; validated, but the stand-in encoder answers its own dimension) ->
    ``{"embedding", "inputTextTokenCount"}``. The key is an Amazon Bedrock API key as
    ``Authorization: Bearer`` (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html);
    errors are ``{"message"}`` with ``x-amzn-ErrorType`` (403 UnrecognizedClientException,
    400 ValidationException)."""
    app = FastAPI()

    def err(status: int, kind: str, message: str) -> StubError:
        return StubError(status, {"message": message}, {"x-amzn-ErrorType": kind})

    async def invoke(request: Request, model_id: str) -> tuple[dict[str, Any], int]:
        _bearer(request, key, err(403, "UnrecognizedClientException",
                                  "The security token included in the request is invalid."))
        bad = err(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
        try:
            req = _TitanRequest.model_validate(await _json(request, bad))
        except ValidationError:
            raise bad from None
        if model_id != "amazon.titan-embed-image-v1":
            raise err(400, "ValidationException", "The provided model identifier is invalid.")
        if req.inputImage is not None and req.inputText is None:
            data = _b64(req.inputImage, bad)
            if _image_mime(data, bad) not in ("image/png", "image/jpeg"):
                raise bad
            vec, tokens = _embed_images(encoder, [data])[0], 0
        elif req.inputText is not None and req.inputImage is None:
            vec, tokens = _embed_texts(encoder, [req.inputText], bad)[0], len(req.inputText.split())
        else:
            raise bad
        stats.last_body = req.model_dump(exclude_none=True)
        return {"embedding": vec, "inputTextTokenCount": tokens}, 1

    _route(app, "/model/{model_id}/invoke", stats, invoke)
    return app


# --- serving -------------------------------------------------------------------------------
def serve_app(app: FastAPI, host: str = "127.0.0.1") -> Any:
    """Serve ``app`` on a free port of ``host`` in a thread; yields the base URL."""
    from audit_lib.server.testing import serve_app as serve

    return serve(app, host=host, name="the vendor stub")


#: The full URL path of one embed call, as each vendor's documentation gives it: the
#: endpoint a user registers (the presets add no path of their own).
_ENDPOINT_PATHS = {
    "openai-compatible": "/v1/embeddings",
    "jina": "/v1/embeddings",
    "cohere-v2": "/v2/embed",
    "voyage-multimodal": "/v1/multimodalembeddings",
    "vertex-multimodal": "/v1/projects/audit-test/locations/us-central1/publishers/google/models/"
                         "multimodalembedding@001:predict",
    "clarifai": "/v2/users/audit/apps/audit/models/image-embedder/outputs",
    "bedrock-titan": "/model/amazon.titan-embed-image-v1/invoke",
}


@contextmanager
def vendor_stub(vendor: str, encoder: Any, key: str, *, key_in: str = "header") -> Iterator[StubURL]:
    """The stub of ``vendor`` (a preset name) embedding with ``encoder``, accepting ``key``
    (``key_in="query"``: Vertex with a Google API key in ``?key=``)."""
    stats = StubStats()
    builders = {"openai-compatible": openai_app, "jina": jina_app, "cohere-v2": cohere_app,
                "voyage-multimodal": voyage_app, "clarifai": clarifai_app, "bedrock-titan": bedrock_app}
    if vendor == "vertex-multimodal":
        app = vertex_app(encoder, key, stats, key_in=key_in)
    elif vendor in builders:
        if key_in != "header":
            raise ValueError(f"{vendor}: only the Vertex stub takes a query-parameter key")
        app = builders[vendor](encoder, key, stats)
    else:
        raise ValueError(f"no stub for {vendor!r} (known: {', '.join(VENDORS)})")
    with serve_app(app) as base:
        url = StubURL(base)
        url.endpoint = base + _ENDPOINT_PATHS.get(vendor, "")
        url.stats = stats
        yield url
