"""The reference server's limits against a real uvicorn server on 127.0.0.1: the body
limit acts before parsing, images and pixels count in the rate limit, every decoding
failure is a 4xx that leaves the next request unharmed, and the API docs are closed."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from audit_lib.server.testing import running_server

KEY = "sk-limits-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


class MeanColourEncoder:
    """A real (tiny) encoder: decodes each image fully with Pillow and embeds it as its
    mean RGB colour. Counts the images it decoded, so a test can see that a refused
    request never reached it."""

    capabilities = frozenset({"image"})
    embedding_dim = 3
    model_version = "mean-colour-1"

    def __init__(self) -> None:
        self.decoded = 0

    def encode_images(self, images, *, kind: str = "image") -> np.ndarray:  # noqa: ANN001
        rows = []
        for data in images:
            with Image.open(io.BytesIO(data)) as img:
                rows.append(np.asarray(img.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)))
            self.decoded += 1
        return np.stack(rows)

    def encode_texts(self, texts):  # noqa: ANN001, ANN201
        raise NotImplementedError


def png(width: int = 48, height: int = 48, colour: tuple = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 70-byte PNG whose header declares ``width`` x ``height`` pixels (900 M: over
    Pillow's decompression-bomb error limit), with a valid IHDR checksum."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", len(idat)) + b"IDAT" + idat
            + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def encoder() -> MeanColourEncoder:
    return MeanColourEncoder()


def test_declared_oversized_body_is_refused_before_it_is_read(encoder):
    with running_server(encoder=encoder, keys={KEY: {}}, max_request_bytes=64 * 1024) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        body = b'{"images": ["' + b"A" * (2 * 1024 * 1024) + b'"]}'
        t0 = time.perf_counter()
        r = client.post("/v1/embed/images", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "at most 64 kB" in r.json()["detail"]
        assert time.perf_counter() - t0 < 2.0
        assert encoder.decoded == 0 and url.stats.embed_requests == 0


def test_streamed_body_without_length_is_cut_off(encoder):
    def chunks():  # chunked transfer: no Content-Length to check up front
        yield b'{"images": ["'
        for _ in range(64):
            yield b"A" * 16384
        yield b'"]}'

    with running_server(encoder=encoder, keys={KEY: {}}, max_request_bytes=64 * 1024) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        r = client.post("/v1/embed/images", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert encoder.decoded == 0


def test_bomb_image_is_a_4xx_and_the_next_request_is_fine(encoder):
    with running_server(encoder=encoder, keys={KEY: {}}) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        r = client.post("/v1/embed/images", json={"images": [b64(png()), b64(bomb_png())]})
        assert r.status_code == 413 and "images[1]: decompression bomb" in r.json()["detail"]
        # just under Pillow's error limit: its warning is an error here, not a decode
        r = client.post("/v1/embed/images", json={"images": [b64(bomb_png(10_000, 10_000))]})
        assert r.status_code == 413
        assert encoder.decoded == 0
        r = client.post("/v1/embed/images", json={"images": [b64(png())]})  # same connection
        assert r.status_code == 200 and r.json()["embeddings"][0][0] == pytest.approx(200)


@pytest.mark.parametrize("data", [png()[:60], b"GIF89a" + b"\x00" * 40, b"not an image at all"],
                         ids=["truncated-png", "broken-gif", "text"])
def test_undecodable_images_are_400_naming_the_problem(encoder, data):
    with running_server(encoder=encoder, keys={KEY: {}}) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        r = client.post("/v1/embed/images", json={"images": [b64(data)]})
        assert r.status_code == 400, r.text
        r = client.post("/v1/embed/images", json={"images": [b64(png())]})
        assert r.status_code == 200


def test_pixels_count_in_the_rate_limit(encoder):
    # 2 requests/s would let both requests through; 10k pixels/s does not.
    keys = {KEY: {"rate_limit_per_s": 2, "burst": 2, "megapixels_per_s": 0.01}}
    with running_server(encoder=encoder, keys=keys) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        first = client.post("/v1/embed/images", json={"images": [b64(png(80, 80))]})
        assert first.status_code == 200  # 6,400 pixels: within the burst
        second = client.post("/v1/embed/images", json={"images": [b64(png(80, 80))] * 2})
        assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
        assert encoder.decoded == 1


def test_images_count_in_the_rate_limit(encoder):
    keys = {KEY: {"images_per_s": 4}}
    with running_server(encoder=encoder, keys=keys) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        assert client.post("/v1/embed/images", json={"images": [b64(png())] * 4}).status_code == 200
        r = client.post("/v1/embed/images", json={"images": [b64(png())] * 4})
        assert r.status_code == 429 and "Retry-After" in r.headers


def test_pixels_per_request_are_capped(encoder):
    with running_server(encoder=encoder, keys={KEY: {}}, max_request_pixels=10_000) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
        r = client.post("/v1/embed/images", json={"images": [b64(png(80, 80))] * 2})
        assert r.status_code == 413 and "12800 pixels" in r.json()["detail"]
        assert encoder.decoded == 0


def test_api_docs_closed_unless_enabled(encoder):
    with running_server(encoder=encoder, keys={KEY: {}}) as url:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(url + path).status_code == 404, path
    with running_server(encoder=encoder, keys={KEY: {}}, docs=True) as url:
        assert httpx.get(url + "/openapi.json").status_code == 200
