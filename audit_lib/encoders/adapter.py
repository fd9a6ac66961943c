"""The shape of a remote embedding API: a typed, declarative *adapter* (version 2).

An adapter says, per call kind (``images``, ``texts``), where the request goes, how the
body is built and where the embeddings are in the answer; plus how images are encoded and
how the key is sent. The transport (retries, rate limit, budget, credentials) lives in
:mod:`audit_lib.encoders.remote`; this module only builds bodies and reads answers, so it
can be tested without a network. Example (Google Vertex AI multimodal embeddings)::

    {"images": {"path": ":predict", "input_path": "instances",
                "item": {"image": {"bytesBase64Encoded": "{b64}"}},
                "response": "predictions[*].imageEmbedding"},
     "texts":  {"path": ":predict", "input_path": "instances", "item": {"text": "{text}"},
                "response": "predictions[*].textEmbedding"},
     "batch_size": 1, "auth": {"scheme": "query", "param": "key"}, "embedding_dim": 1408}

Slots in ``item`` templates: ``{b64}`` (raw base64 of the image file), ``{data_url}``
(``data:<mime>;base64,...``), ``{mime}`` (the MIME type read from the bytes) and
``{text}``. Without an ``item`` each input is the bare string (``image_encoding`` picks
base64 or data URL). ``mode: "single"`` (with ``batch_size`` 1) puts the one item at
``input_path`` itself instead of in a list; an empty ``input_path`` merges it into the
body's top level (Amazon Titan's ``{"inputImage": ...}``).

Response paths are dotted keys with ``[*]`` to map over a list and ``[N]`` for a fixed
index, e.g. ``outputs[*].data.embeddings[0].vector``.

Ready-made shapes for known vendors are JSON files in ``presets/`` (:func:`list_presets`,
:func:`resolve_adapter`). The vendor presets add no path: their endpoint is the full URL
of one embed call as the vendor's documentation gives it. Adapters stored before version 2 (keys ``field``,
``extra_body``, ``max_batch``) still load through :func:`parse_adapter`.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 2
PRESET_PACKAGE = "audit_lib.encoders"  # the presets are package data in its presets/ folder
DEFAULT_PRESET = "encoder-audit"
SLOTS = ("b64", "data_url", "mime", "text")
IMAGE_SLOTS = ("b64", "data_url", "mime")
_SLOT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_PART_RE = re.compile(r"^([A-Za-z0-9_\-$@]*)((?:\[(?:\*|\d+)\])*)$")
_INDEX_RE = re.compile(r"\[(\*|\d+)\]")


class AdapterError(ValueError):
    """An adapter (or preset) that cannot be used; the message names the key, e.g.
    ``adapter.images.response: ...``."""


# --- JSON paths ----------------------------------------------------------------------------
def _parse_path(path: str) -> list[str | int | None]:
    """``a.b[*].c[0]`` -> ``["a", "b", None, "c", 0]`` (None maps over a list); ValueError
    if malformed."""
    steps: list[str | int | None] = []
    if not path:
        return steps
    for part in path.split("."):
        m = _PATH_PART_RE.match(part)
        if not part or m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"{path!r} is not a JSON path (dotted keys, [*] or [N] after a key)")
        if m.group(1):
            steps.append(m.group(1))
        steps.extend(None if i == "*" else int(i) for i in _INDEX_RE.findall(m.group(2)))
    return steps


def get_path(obj: Any, path: str) -> Any:
    """Follow a JSON path (dotted keys, ``[*]`` list mapping, ``[N]`` fixed index);
    KeyError names the missing part."""
    return _get(obj, _parse_path(path), "")


def _get(obj: Any, steps: list[str | int | None], seen: str) -> Any:
    for i, step in enumerate(steps):
        if isinstance(step, str):
            if not isinstance(obj, dict) or step not in obj:
                raise KeyError(f"no {step!r} at {seen or 'the top level'}")
            obj, seen = obj[step], f"{seen}.{step}" if seen else step
            continue
        if not isinstance(obj, list):
            raise KeyError(f"{seen or 'the answer'} is not a list")
        if step is None:
            return [_get(item, steps[i + 1:], f"{seen}[{k}]") for k, item in enumerate(obj)]
        if step >= len(obj):
            raise KeyError(f"{seen} has {len(obj)} entries, no [{step}]")
        obj, seen = obj[step], f"{seen}[{step}]"
    return obj


def set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Put ``value`` at a dotted path in ``body``, creating objects on the way."""
    parts = path.split(".")
    for part in parts[:-1]:
        body = body.setdefault(part, {})
    body[parts[-1]] = value


# --- templates -----------------------------------------------------------------------------
def _template_slots(template: Any) -> set[str]:
    if isinstance(template, str):
        return set(_SLOT_RE.findall(template))
    if isinstance(template, dict):
        return set().union(*(_template_slots(v) for v in template.values())) if template else set()
    if isinstance(template, list):
        return set().union(*(_template_slots(v) for v in template)) if template else set()
    return set()


def fill_template(template: Any, slots: dict[str, str]) -> Any:
    """A copy of ``template`` with every ``{slot}`` in its strings replaced."""
    if isinstance(template, str):
        return _SLOT_RE.sub(lambda m: slots[m.group(1)], template)
    if isinstance(template, dict):
        return {k: fill_template(v, slots) for k, v in template.items()}
    if isinstance(template, list):
        return [fill_template(v, slots) for v in template]
    return template


# --- images --------------------------------------------------------------------------------
def sniff_mime(data: bytes) -> str:
    """The MIME type of an image file, from its magic bytes (PNG, JPEG, GIF, WebP), else
    from PIL's format guess, else ``application/octet-stream``."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(bytes(data))) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except Exception:  # noqa: BLE001 - not an image PIL knows
        return "application/octet-stream"


def _reencode(data: bytes | None, image: Any, fmt: str, size: int | None, quality: int) -> bytes:
    from PIL import Image

    im = image if data is None else Image.open(io.BytesIO(data))
    im.load()
    if size is not None:
        w, h = im.size
        scale = size / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        (im if im.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else im.convert("RGB")).save(buf, "PNG")
    return buf.getvalue()


# --- the model -----------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_relative(path: str) -> str:
    """A path relative to the registered endpoint: never another host (the credential
    goes with every request)."""
    low = path.strip().lower()
    if "://" in low or low.startswith("//") or "\\" in low or "@" in low:
        raise ValueError(f"{path!r} is an absolute URL or names a host; give a path relative to "
                         "the endpoint (e.g. '/v1/embeddings' or ':predict'), the key only goes "
                         "to the registered endpoint")
    if path and path[0] not in "/:":
        raise ValueError(f"{path!r} must start with '/' or ':' (it is appended to the endpoint URL)")
    if any(seg == ".." for seg in path.split("/")):
        raise ValueError(f"{path!r} contains '..'")
    return path


class AuthSpec(_Strict):
    """How the key is sent: a header (``prefix`` + key) or a query parameter, or not at all."""

    scheme: Literal["header", "query", "none"] = "header"
    header: str = "Authorization"  # header scheme: the header's name
    prefix: str = "Bearer "  # header scheme: written before the key ("Bearer ", "Key ", "")
    param: str | None = None  # query scheme: the parameter's name (e.g. "key")
    # text in an HTTP 400 answer that means "key refused" (Google answers a bad API key
    # with 400 API_KEY_INVALID, not 401); 401 and 403 always mean it
    refused_400: list[str] = Field(default_factory=list)

    @field_validator("scheme", mode="before")
    @classmethod
    def _no_signing(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in ("sigv4", "aws", "aws-sigv4"):
            raise AdapterError("adapter.auth.scheme: AWS SigV4 request signing is not supported; use an "
                               "Amazon Bedrock API key (scheme 'header', Authorization: Bearer) or a "
                               "gateway in front of the API that takes a bearer key")
        return v

    @model_validator(mode="after")
    def _param_for_query(self) -> AuthSpec:
        if self.scheme == "query" and not self.param:
            raise AdapterError("adapter.auth.param: the query scheme needs the parameter's name "
                               "(e.g. 'key')")
        return self


class InfoSpec(_Strict):
    """A GET route publishing the embedding dimension (asked when none is registered)."""

    path: str
    dim: str = "embedding_dim"  # JSON path of the dimension in the answer

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _check_relative(v)


class CallSpec(_Strict):
    """One call kind (images or texts): route, request body and where the answer is."""

    path: str = ""  # appended to the endpoint URL
    method: Literal["POST"] = "POST"
    input_path: str = ""  # dotted path in the body where the inputs (or the one item) go
    item: Any = None  # per-input template with {b64} {data_url} {mime} {text}; None: the bare string
    mode: Literal["list", "single"] = "list"  # single: one item at input_path, not a list
    body: dict[str, Any] = Field(default_factory=dict)  # fixed fields for this call kind
    response: str  # JSON path of the embeddings ([*] map, [N] index); single mode: one vector
    batch_size: int | None = Field(default=None, ge=1)  # overrides the adapter's batch_size

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _check_relative(v)

    @field_validator("input_path")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if v and not all(re.fullmatch(r"[A-Za-z0-9_\-$@]+", p) for p in v.split(".")):
            raise ValueError(f"{v!r} is not a dotted key path (e.g. 'input' or 'input.images')")
        return v

    @field_validator("response")
    @classmethod
    def _response_path(cls, v: str) -> str:
        _parse_path(v)
        return v

    @field_validator("item")
    @classmethod
    def _known_slots(cls, v: Any) -> Any:
        unknown = _template_slots(v) - set(SLOTS)
        if unknown:
            raise ValueError(f"unknown slot {{{sorted(unknown)[0]}}} (known: "
                             + ", ".join("{" + s + "}" for s in SLOTS) + ")")
        return v

    @model_validator(mode="after")
    def _where_inputs_go(self) -> CallSpec:
        if not self.input_path and (self.mode == "list" or not isinstance(self.item, dict)):
            raise ValueError("input_path: the inputs need a place in the body; an empty path is only "
                             "for mode 'single' with an object item (merged into the body)")
        return self


class Adapter(_Strict):
    """A remote embedding API's shape (see the module docstring). Validated on creation;
    :meth:`to_json` is what is stored in ``models.adapter``."""

    schema_version: Literal[2] = SCHEMA_VERSION
    preset: str | None = None  # the preset it was built from, for the record
    images: CallSpec
    texts: CallSpec | None = None
    info: InfoSpec | None = None
    body: dict[str, Any] = Field(default_factory=dict)  # fixed fields in every request body
    image_encoding: Literal["base64", "data_url"] = "base64"  # bare-string inputs (no item)
    reencode: Literal["png", "jpeg"] | None = None  # re-encode every image before sending
    image_size: int | None = Field(default=None, ge=8, le=8192)  # longer side, px, when re-encoding
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    accept_mime: list[str] | None = None  # types the API takes; others are re-encoded to PNG
    auth: AuthSpec = Field(default_factory=AuthSpec)
    batch_size: int = Field(default=64, ge=1)  # inputs per request (1: one request per input)
    embedding_dim: int | None = Field(default=None, ge=1)  # None: asked at the info route
    rate_limit_per_s: float | None = Field(default=None, gt=0)  # client-side, per endpoint
    canary_tolerance: float = Field(default=2e-3, ge=0)  # max canary drift for "same version"

    @model_validator(mode="after")
    def _consistent(self) -> Adapter:
        for kind in ("images", "texts"):
            spec: CallSpec | None = getattr(self, kind)
            if spec is None:
                continue
            slots = _template_slots(spec.item)
            if kind == "images" and "text" in slots:
                raise AdapterError("adapter.images.item: {text} is a text slot; images use "
                                   "{b64}, {data_url} or {mime}")
            if kind == "images" and spec.item is not None and not slots & {"b64", "data_url"}:
                raise AdapterError("adapter.images.item: the template has no {b64} or {data_url} slot "
                                   "for the image")
            if kind == "texts" and slots & set(IMAGE_SLOTS):
                raise AdapterError("adapter.texts.item: image slots in a text template; use {text}")
            if kind == "texts" and spec.item is not None and "text" not in slots:
                raise AdapterError("adapter.texts.item: the template has no {text} slot")
            if spec.mode == "single" and self.batch_for(kind) != 1:
                raise AdapterError(f"adapter.{kind}.mode: 'single' sends one input per request; set "
                                   f"batch_size to 1 (it is {self.batch_for(kind)})")
        if self.image_size is not None and self.reencode is None:
            raise AdapterError("adapter.image_size: only used when re-encoding; set reencode to "
                               "'png' or 'jpeg'")
        return self

    # --- reading the adapter --------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """A top-level field by name (for callers written against the old dict adapter)."""
        return getattr(self, key, default)

    def call(self, kind: str) -> CallSpec:
        """The spec of ``images`` or ``texts``; AdapterError if the adapter has none."""
        spec = getattr(self, kind, None) if kind in ("images", "texts") else None
        if spec is None:
            raise AdapterError(f"adapter.{kind}: this adapter has no {kind!r} call")
        return spec

    def batch_for(self, kind: str) -> int:
        """Inputs per request for ``kind``."""
        spec = self.call(kind)
        return spec.batch_size or self.batch_size

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in ``models.adapter``; :func:`parse_adapter` reads it back."""
        return self.model_dump(mode="json", exclude_none=True)

    # --- building requests ---------------------------------------------------------------
    def image_slots(self, image: Any) -> dict[str, str]:
        """``{b64, mime, data_url}`` for one image (encoded bytes or a PIL image), after the
        re-encoding the adapter asks for."""
        data: bytes | None
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            pil = None
        else:
            from PIL import Image

            if not isinstance(image, Image.Image):
                raise TypeError(f"an image must be encoded bytes or a PIL image, not {type(image).__name__}")
            data, pil = None, image
        mime = sniff_mime(data) if data is not None else None
        target = self.reencode
        if target is None and (data is None or (self.accept_mime is not None and mime not in self.accept_mime)):
            target = "png"  # a PIL image, or a type the API does not take
        if target is not None:
            try:
                data = _reencode(data, pil, target, self.image_size if self.reencode else None,
                                 self.jpeg_quality)
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
                raise ValueError(f"an image ({mime}) cannot be decoded to re-encode it as {target} "
                                 f"for this API: {exc}") from None
            mime = f"image/{target}"
        b64 = base64.b64encode(data).decode("ascii")
        return {"b64": b64, "mime": mime, "data_url": f"data:{mime};base64,{b64}"}

    def request_body(self, kind: str, inputs: list[dict[str, str]]) -> dict[str, Any]:
        """The JSON body for one request of ``kind`` carrying ``inputs`` (slot dicts from
        :meth:`image_slots`, or ``{"text": ...}``)."""
        spec = self.call(kind)
        if not inputs or len(inputs) > self.batch_for(kind):
            raise ValueError(f"{len(inputs)} inputs for one {kind} request (1..{self.batch_for(kind)})")
        body = copy.deepcopy(self.body)
        _deep_update(body, copy.deepcopy(spec.body))
        default = "text" if kind == "texts" else ("data_url" if self.image_encoding == "data_url" else "b64")
        items = [fill_template(spec.item, s) if spec.item is not None else s[default] for s in inputs]
        if spec.mode == "single":
            if not spec.input_path:
                _deep_update(body, items[0])
            else:
                set_path(body, spec.input_path, items[0])
        else:
            set_path(body, spec.input_path, items)
        return body

    def read_embeddings(self, kind: str, answer: Any) -> Any:
        """The embeddings in a decoded JSON answer (a list of vectors; in single mode a list
        of one). KeyError names what is missing."""
        spec = self.call(kind)
        rows = get_path(answer, spec.response)
        if spec.mode == "single":
            return [rows]
        return rows


def _deep_update(base: dict[str, Any], over: dict[str, Any]) -> None:
    """Lay ``over`` on ``base`` in place, objects key by key (a ``null`` stays a value: a
    request body may need one)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def deep_merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``over`` laid on it: objects merge key by key, anything else replaces,
    and ``None`` removes the key (e.g. ``{"texts": null}``)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- validation with errors that name the key ----------------------------------------------
_MODELS: dict[str, type[BaseModel]] = {"": Adapter, "images": CallSpec, "texts": CallSpec,
                                      "info": InfoSpec, "auth": AuthSpec}


def _check_keys(raw: Any, where: str, model: type[BaseModel]) -> None:
    if not isinstance(raw, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    known = list(model.model_fields)
    for key in raw:
        if key not in model.model_fields:
            raise AdapterError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
    if model is Adapter:
        for key in ("images", "texts", "info", "auth"):
            if raw.get(key) is not None:
                _check_keys(raw[key], f"{where}.{key}", _MODELS[key])


def _validate(raw: dict[str, Any]) -> Adapter:
    _check_keys(raw, "adapter", Adapter)
    try:
        return Adapter.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(err.get("ctx", {}).get("error"), AdapterError):
            raise err["ctx"]["error"] from None
        if msg.startswith("adapter"):
            raise AdapterError(msg) from None
        named = re.match(r"^([a-z_]+): (.*)$", msg, re.S)
        if named:
            loc, msg = f"{loc}.{named.group(1)}" if loc else named.group(1), named.group(2)
        raise AdapterError(f"adapter{'.' + loc if loc else ''}: {msg}") from None


# --- version 1 (the dict adapter stored before) ---------------------------------------------
V1_DEFAULT: dict[str, Any] = {
    "images": {"path": "/v1/embed/images", "field": "images", "response": "embeddings"},
    "texts": {"path": "/v1/embed/texts", "field": "texts", "response": "embeddings"},
    "info": {"path": "/v1/info", "dim": "embedding_dim"},
    "image_encoding": "base64", "extra_body": {}, "auth": {"header": "Authorization", "prefix": "Bearer "},
    "max_batch": 64, "canary_tolerance": 2e-3,
}
V1_KEYS = (*V1_DEFAULT, "embedding_dim", "rate_limit_per_s")


def is_v1(raw: dict[str, Any]) -> bool:
    """Whether a stored adapter is the version-1 dict (``field``/``extra_body``/``max_batch``)."""
    if raw.get("schema_version") == SCHEMA_VERSION:
        return False
    if "extra_body" in raw or "max_batch" in raw:
        return True
    return any(isinstance(raw.get(k), dict) and "field" in raw[k] for k in ("images", "texts"))


def from_v1(raw: dict[str, Any]) -> Adapter:
    """A version-1 adapter (laid over the version-1 default, one level deep, as it was
    read before) as a version-2 :class:`Adapter`."""
    merged = copy.deepcopy(V1_DEFAULT)
    for key, value in raw.items():
        if key not in V1_KEYS:
            raise AdapterError(f"adapter: unknown key {key!r} (known: {', '.join(V1_KEYS)})")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "extra_body":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    out: dict[str, Any] = {"preset": None}
    for kind in ("images", "texts"):
        spec = merged.get(kind)
        if spec is None:
            continue
        unknown = set(spec) - {"path", "field", "response"}
        if unknown:
            raise AdapterError(f"adapter.{kind}: unknown key {sorted(unknown)[0]!r} "
                               "(known: path, field, response)")
        out[kind] = {"path": spec.get("path", ""), "input_path": spec.get("field", ""),
                     "response": spec.get("response", "")}
    auth = dict(merged.get("auth") or {})
    out["auth"] = {"scheme": "header", **auth} if "scheme" not in auth else auth
    for old, new in (("extra_body", "body"), ("max_batch", "batch_size")):
        out[new] = merged[old]
    for key in ("info", "image_encoding", "canary_tolerance", "embedding_dim", "rate_limit_per_s"):
        if merged.get(key) is not None:
            out[key] = merged[key]
    return _validate({k: v for k, v in out.items() if v is not None})


# --- presets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PresetInfo:
    """One row of the presets table."""

    name: str
    vendor: str
    docs: str  # the vendor documentation page the preset follows
    auth: str  # e.g. "header Authorization: Bearer <key>" or "query ?key=<key>"
    batch: str  # inputs per request, images / texts
    encoding: str  # how images travel
    response: str  # where the image embeddings are
    notes: str


def _presets_dir():  # noqa: ANN202 - an importlib.resources Traversable
    return resources.files(PRESET_PACKAGE).joinpath("presets")


def _preset_names() -> list[str]:
    root = _presets_dir()
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset file ``presets/NAME.json`` (``name``, ``vendor``, ``docs``, ``notes``,
    ``adapter``); AdapterError naming the known presets if there is none."""
    names = _preset_names()
    if name not in names:
        raise AdapterError(f"preset: unknown preset {name!r} (known: {', '.join(names)})")
    return json.loads(_presets_dir().joinpath(f"{name}.json").read_text("utf-8"))


def _auth_text(a: AuthSpec) -> str:
    if a.scheme == "query":
        return f"query ?{a.param}=<key>"
    if a.scheme == "none":
        return "none"
    return f"header {a.header}: {a.prefix}<key>"


def _encoding_text(ad: Adapter) -> str:
    spec = ad.images
    slots = _template_slots(spec.item)
    how = "data URL" if ("data_url" in slots or (spec.item is None and ad.image_encoding == "data_url")) \
        else "base64"
    if spec.item is not None:
        how += " in " + json.dumps(spec.item).replace('"', "")
    if ad.reencode:
        how += f", re-encoded to {ad.reencode}"
    return how


def list_presets() -> list[PresetInfo]:
    """Every preset with the facts for a presets table (docs page, auth, batch, encoding)."""
    out = []
    for name in _preset_names():
        meta = load_preset(name)
        ad = resolve_adapter(name, None)
        texts = f"{ad.batch_for('texts')}" if ad.texts is not None else "-"
        single = " (single object)" if ad.images.mode == "single" else ""
        out.append(PresetInfo(name=name, vendor=meta["vendor"], docs=meta["docs"], auth=_auth_text(ad.auth),
                              batch=f"{ad.batch_for('images')}{single} / {texts}",
                              encoding=_encoding_text(ad), response=ad.images.response,
                              notes=meta.get("notes", "")))
    return out


def resolve_adapter(preset: str | None, overrides: dict[str, Any] | None) -> Adapter:
    """The preset's adapter with ``overrides`` deep-merged over it (objects merge, other
    values replace, ``null`` removes), validated. Without a preset, ``overrides`` is read
    as a stored adapter (:func:`parse_adapter`)."""
    if preset is None:
        return parse_adapter(overrides)
    if overrides is not None and not isinstance(overrides, dict):
        raise AdapterError(f"adapter: expected a JSON object, got {type(overrides).__name__}")
    meta = load_preset(preset)
    merged = deep_merge(meta["adapter"], overrides)
    merged["preset"] = preset
    return _validate(merged)


def parse_adapter(raw: dict[str, Any] | None) -> Adapter:
    """A stored adapter (version 1 or 2) as an :class:`Adapter`. ``None`` is the project's
    own server (preset ``encoder-audit``); a partial version-2 dict without ``images`` is
    laid over that preset."""
    if isinstance(raw, Adapter):
        return raw
    if raw is None:
        return resolve_adapter(DEFAULT_PRESET, None)
    if not isinstance(raw, dict):
        raise AdapterError(f"adapter: expected a JSON object, got {type(raw).__name__}")
    if is_v1(raw):
        return from_v1(raw)
    if "images" not in raw:
        return resolve_adapter(raw.get("preset") or DEFAULT_PRESET, {k: v for k, v in raw.items()
                                                                     if k != "preset"})
    return _validate(dict(raw))
