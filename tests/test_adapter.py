"""Adapter v2: validation that names the key, version-1 adapters, request bodies, answers,
image encoding (MIME from bytes, re-encoding). No network: see test_presets.py for that."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from audit_lib.encoders.adapter import (Adapter, AdapterError, get_path, list_presets, parse_adapter,
                                        resolve_adapter, sniff_mime)

PRESETS = ("encoder-audit", "openai-compatible", "jina", "cohere-v2", "voyage-multimodal",
           "vertex-multimodal", "clarifai", "bedrock-titan")


def _image(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128).save(buf, fmt)
    return buf.getvalue()


def _slots(ad: Adapter, data: bytes) -> dict[str, str]:
    return ad.image_slots(data)


# --- validation ----------------------------------------------------------------------------
def test_unknown_key_is_named_with_the_complete_list_of_known_keys():
    with pytest.raises(AdapterError) as err:
        parse_adapter({"imagez": {"path": "/x"}})
    msg = str(err.value)
    assert msg.startswith("adapter: unknown key 'imagez' (known: ")
    known = msg.split("(known: ")[1].rstrip(")").split(", ")
    assert set(known) == set(Adapter.model_fields)
    with pytest.raises(AdapterError, match=r"^adapter\.images: unknown key 'pth' \(known: path, method, "
                                           r"input_path, item, mode, body, response, batch_size\)$"):
        resolve_adapter("jina", {"images": {"pth": "/v1/x"}})
    with pytest.raises(AdapterError, match=r"^adapter\.auth: unknown key 'heder'"):
        resolve_adapter("jina", {"auth": {"heder": "X-Key"}})


@pytest.mark.parametrize("raw, where", [
    ({"images": {"path": "https://evil.example/steal", "input_path": "a", "response": "b"}}, "adapter.images.path"),
    ({"images": {"path": "//evil.example/steal", "input_path": "a", "response": "b"}}, "adapter.images.path"),
    ({"images": {"path": "@evil.example/x", "input_path": "a", "response": "b"}}, "adapter.images.path"),
    ({"info": {"path": "http://other.host/v1/info"}}, "adapter.info.path"),
])
def test_absolute_url_paths_are_refused(raw, where):
    with pytest.raises(AdapterError, match=rf"^{where}: .*relative to the endpoint"):
        parse_adapter(raw)


@pytest.mark.parametrize("over, message", [
    ({"batch_size": 0}, r"^adapter\.batch_size: Input should be greater than or equal to 1"),
    ({"images": {"response": "data[x].embedding"}}, r"^adapter\.images\.response: 'data\[x\]\.embedding' "
                                                    r"is not a JSON path"),
    ({"images": {"item": {"image": "{png}"}}}, r"^adapter\.images\.item: unknown slot \{png\}"),
    ({"images": {"item": {"image": "{text}"}}}, r"^adapter\.images\.item: \{text\} is a text slot"),
    ({"texts": {"item": {"text": "{b64}"}}}, r"^adapter\.texts\.item: image slots in a text template"),
    ({"images": {"mode": "single"}}, r"^adapter\.images\.mode: 'single' sends one input per request; "
                                     r"set batch_size to 1 \(it is 32\)"),
    ({"auth": {"scheme": "query"}}, r"^adapter\.auth\.param: the query scheme needs"),
    ({"auth": {"scheme": "sigv4"}}, r"^adapter\.auth\.scheme: AWS SigV4 request signing is not supported; "
                                    r"use an Amazon Bedrock API key"),
    ({"auth": {"scheme": "basic"}}, r"^adapter\.auth\.scheme: Input should be 'header', 'query' or 'none'"),
    ({"image_encoding": "hex"}, r"^adapter\.image_encoding: Input should be 'base64' or 'data_url'"),
    ({"image_size": 64}, r"^adapter\.image_size: only used when re-encoding"),
    ({"embedding_dim": -3}, r"^adapter\.embedding_dim: Input should be greater than or equal to 1"),
])
def test_bad_values_name_the_key(over, message):
    with pytest.raises(AdapterError, match=message):
        resolve_adapter("jina", over)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(AdapterError, match=r"^preset: unknown preset 'cohere' \(known: bedrock-titan, "
                                           r"clarifai, cohere-v2, encoder-audit, jina"):
        resolve_adapter("cohere", None)


# --- version 1 and round trips -------------------------------------------------------------
def test_v1_dicts_still_load():
    default = parse_adapter(None)
    assert default.preset == "encoder-audit" and default.images.path == "/v1/embed/images"
    old = parse_adapter({"max_batch": 256})  # as stored by earlier registrations
    assert old.batch_size == 256 and old.images.input_path == "images" and old.info.path == "/v1/info"
    full = parse_adapter({"images": {"path": "/embed", "field": "input.images", "response": "data[*].embedding"},
                          "extra_body": {"model": "m"}, "image_encoding": "data_url",
                          "auth": {"header": "X-Api-Key", "prefix": ""}, "embedding_dim": 512,
                          "rate_limit_per_s": 5})
    assert (full.images.path, full.images.input_path, full.images.response) == \
        ("/embed", "input.images", "data[*].embedding")
    assert full.body == {"model": "m"} and full.image_encoding == "data_url"
    assert (full.auth.scheme, full.auth.header, full.auth.prefix) == ("header", "X-Api-Key", "")
    assert full.embedding_dim == 512 and full.rate_limit_per_s == 5
    body = full.request_body("images", [_slots(full, _image("PNG"))])
    assert body["model"] == "m" and body["input"]["images"][0].startswith("data:image/png;base64,")
    with pytest.raises(AdapterError, match=r"^adapter: unknown key 'max_bach'"):
        parse_adapter({"max_bach": 3, "extra_body": {}})


@pytest.mark.parametrize("preset", PRESETS)
def test_to_json_round_trips(preset):
    ad = resolve_adapter(preset, {"embedding_dim": 128})
    stored = ad.to_json()
    assert stored["schema_version"] == 2 and stored["preset"] == preset
    assert parse_adapter(stored) == ad
    assert parse_adapter(parse_adapter(stored).to_json()).to_json() == stored


def test_overrides_deep_merge_over_the_preset():
    ad = resolve_adapter("cohere-v2", {"body": {"model": "embed-english-v3.0"}, "texts": None,
                                       "images": {"body": {"truncate": "END"}}})
    assert ad.body == {"model": "embed-english-v3.0", "embedding_types": ["float"]}
    assert ad.texts is None
    assert ad.images.body == {"input_type": "image", "truncate": "END"} and ad.images.path == ""


def test_presets_table_names_docs_for_every_preset():
    rows = {p.name: p for p in list_presets()}
    assert set(rows) == set(PRESETS)
    for p in rows.values():
        assert p.docs and p.vendor and p.response
    assert rows["clarifai"].auth == "header Authorization: Key <key>"
    assert rows["bedrock-titan"].batch.startswith("1 (single object)")
    assert rows["cohere-v2"].batch == "1 / 96"
    assert "SigV4" in rows["bedrock-titan"].notes


# --- bodies and answers --------------------------------------------------------------------
def test_request_bodies_of_each_shape():
    png = _image("PNG")
    b64 = base64.b64encode(png).decode()
    vertex = resolve_adapter("vertex-multimodal", None)
    assert vertex.request_body("images", [_slots(vertex, png)]) == {
        "instances": [{"image": {"bytesBase64Encoded": b64, "mimeType": "image/png"}}]}
    assert vertex.request_body("texts", [{"text": "a photo"}]) == {"instances": [{"text": "a photo"}]}
    titan = resolve_adapter("bedrock-titan", None)
    assert titan.request_body("images", [_slots(titan, png)]) == {
        "inputImage": b64, "embeddingConfig": {"outputEmbeddingLength": 1024}}
    voyage = resolve_adapter("voyage-multimodal", None)
    assert voyage.request_body("images", [_slots(voyage, png)])["inputs"] == [
        {"content": [{"type": "image_base64", "image_base64": f"data:image/png;base64,{b64}"}]}]
    cohere = resolve_adapter("cohere-v2", None)
    assert cohere.request_body("images", [_slots(cohere, png)]) == {
        "model": "embed-v4.0", "embedding_types": ["float"], "input_type": "image",
        "images": [f"data:image/png;base64,{b64}"]}
    with pytest.raises(ValueError, match=r"2 inputs for one images request \(1\.\.1\)"):
        cohere.request_body("images", [_slots(cohere, png)] * 2)
    single_at_path = resolve_adapter("jina", {"batch_size": 1, "images": {"mode": "single"}})
    assert single_at_path.request_body("images", [_slots(single_at_path, png)])["input"] == {"image": b64}


def test_response_paths_map_and_index():
    answer = {"outputs": [{"data": {"embeddings": [{"vector": [1, 2]}, {"vector": [9, 9]}]}},
                          {"data": {"embeddings": [{"vector": [3, 4]}]}}]}
    assert get_path(answer, "outputs[*].data.embeddings[0].vector") == [[1, 2], [3, 4]]
    assert resolve_adapter("clarifai", None).read_embeddings("images", answer) == [[1, 2], [3, 4]]
    assert resolve_adapter("bedrock-titan", None).read_embeddings("images", {"embedding": [5, 6]}) == [[5, 6]]
    with pytest.raises(KeyError, match=r"outputs\[1\]\.data\.embeddings has 0 entries, no \[0\]"):
        get_path({"outputs": [{"data": {"embeddings": [{"vector": []}]}}, {"data": {"embeddings": []}}]},
                 "outputs[*].data.embeddings[0].vector")
    with pytest.raises(KeyError, match=r"no 'predictions' at the top level"):
        get_path({"error": {}}, "predictions[*].imageEmbedding")


# --- images --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                       ("WEBP", "image/webp"), ("BMP", "image/bmp")])
def test_data_url_mime_is_read_from_the_bytes(fmt, mime):
    data = _image(fmt)
    assert sniff_mime(data) == mime
    ad = resolve_adapter("openai-compatible", {"accept_mime": None})
    slots = ad.image_slots(data)
    assert slots["mime"] == mime
    assert slots["data_url"] == f"data:{mime};base64," + base64.b64encode(data).decode()
    assert sniff_mime(b"not an image at all") == "application/octet-stream"


def test_types_the_api_does_not_take_are_re_encoded_to_png():
    pgm = _image("PPM", mode="L")  # a face photo as stored (PGM): no vendor takes it
    ad = resolve_adapter("voyage-multimodal", None)
    slots = ad.image_slots(pgm)
    assert slots["mime"] == "image/png" and slots["data_url"].startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(slots["b64"])))
    assert back.format == "PNG" and back.size == (40, 30)
    jpeg = _image("JPEG")
    assert ad.image_slots(jpeg)["b64"] == base64.b64encode(jpeg).decode()  # taken as is
    with pytest.raises(ValueError, match=r"an image \(application/octet-stream\) cannot be decoded"):
        ad.image_slots(b"not an image")


def test_re_encode_to_a_stated_size():
    ad = resolve_adapter("jina", {"reencode": "jpeg", "image_size": 64, "jpeg_quality": 90})
    slots = ad.image_slots(_image("PNG", size=(200, 100)))
    back = Image.open(io.BytesIO(base64.b64decode(slots["b64"])))
    assert slots["mime"] == "image/jpeg" and back.format == "JPEG" and back.size == (64, 32)
    ad = resolve_adapter("jina", {"reencode": "png", "image_size": 48})
    back = Image.open(io.BytesIO(base64.b64decode(ad.image_slots(_image("JPEG", size=(24, 36)))["b64"])))
    assert back.format == "PNG" and back.size == (32, 48)  # the longer side is the stated size
