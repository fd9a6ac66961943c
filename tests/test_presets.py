"""Every vendor preset against a stub of that vendor's documented API on 127.0.0.1 (see
tests/vendor_stubs.py), and the privacy audit run end to end through four of them."""

from __future__ import annotations

import logging
import traceback

import numpy as np
import pytest
from sqlalchemy import select

from audit_lib.encoders.adapter import resolve_adapter
from audit_lib.encoders.remote import CredentialError, RemoteEncoder, RemoteEncoderError
from tests.vendor_stubs import VENDORS, vendor_stub

KEY = "vk-Test/Key+with=odd&chars-0042"  # characters that URL-encoding changes
FAST = {"backoff_base_s": 0.05, "max_retries": 1, "timeout": 10.0}
DIM = 128  # small_cnn:small-cnn-32


@pytest.fixture(scope="session")
def cnn(small_cnn_weights):
    from audit_lib.encoders.local import LocalEncoder

    return LocalEncoder.from_checkpoint(*small_cnn_weights, batch_size=32)


def _client(url, preset: str, monkeypatch, *, key: str = KEY, over: dict | None = None,
            caps=("image",), dim: int = DIM, **kw) -> RemoteEncoder:
    monkeypatch.setenv("AUDIT_CRED_VENDOR_TEST", key)
    adapter = resolve_adapter(preset, {"embedding_dim": dim, **(over or {})})
    return RemoteEncoder(url.endpoint, adapter.to_json(), "AUDIT_CRED_VENDOR_TEST", capabilities=caps,
                         **{**FAST, **kw})


def _as_answered(vendor: str, rows: np.ndarray) -> np.ndarray:
    """What the vendor answers for the local model's embeddings (the Jina preset asks for
    unit-length embeddings with ``normalized: true``)."""
    return rows / np.linalg.norm(rows, axis=1, keepdims=True) if vendor == "jina" else rows


def _query_key(preset: str) -> dict:
    return {"auth": {"scheme": "query", "param": "key"}} if preset == "vertex-multimodal" else {}


@pytest.mark.parametrize("vendor", VENDORS)
def test_preset_matches_the_local_model_and_batches_as_documented(vendor, cnn, png_images, monkeypatch):
    images = png_images[:5]
    with vendor_stub(vendor, cnn, KEY) as url:
        enc = _client(url, vendor, monkeypatch)
        emb = enc.encode_images(images)
        sizes = list(url.stats.batch_sizes)
    np.testing.assert_allclose(emb, _as_answered(vendor, cnn.encode_images(images)), rtol=1e-5, atol=1e-6)
    step = resolve_adapter(vendor, None).batch_for("images")
    expected = [min(step, 5 - i) for i in range(0, 5, step)]
    assert sizes == expected, f"{vendor}: requests of {sizes}, expected {expected}"
    assert enc.queries_used == 5 and enc.requests_sent == len(expected)


@pytest.mark.parametrize("vendor", VENDORS)
def test_wrong_key_is_a_credential_error_and_never_shown(vendor, cnn, png_images, monkeypatch, caplog):
    wrong = "vk-WRONG/secret+value=do-not-log"
    caplog.set_level(logging.DEBUG)
    with vendor_stub(vendor, cnn, KEY) as url:
        enc = _client(url, vendor, monkeypatch, key=wrong)
        with pytest.raises(CredentialError, match="the API refused the credential 'AUDIT_CRED_VENDOR_TEST'") as err:
            enc.encode_images(png_images[:1])
        assert url.stats.requests == 1 and 200 not in url.stats.statuses
    text = f"{err.value!s} {err.value!r} " + "".join(traceback.format_exception(err.value))
    assert wrong not in text and wrong not in caplog.text


def test_batch_size_one_sends_one_request_per_input(cnn, png_images, monkeypatch):
    with vendor_stub("jina", cnn, KEY) as url:
        enc = _client(url, "jina", monkeypatch, over={"batch_size": 1})
        enc.encode_images(png_images[:4])
        assert url.stats.batch_sizes == [1, 1, 1, 1] and enc.requests_sent == 4
    with vendor_stub("bedrock-titan", cnn, KEY) as url:  # one object per request, not a list
        enc = _client(url, "bedrock-titan", monkeypatch)
        enc.encode_images(png_images[:3])
        assert url.stats.batch_sizes == [1, 1, 1]
        assert set(url.stats.last_body) == {"inputImage", "embeddingConfig"}


def test_query_parameter_key_works_and_is_scrubbed(cnn, png_images, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with vendor_stub("vertex-multimodal", cnn, KEY, key_in="query") as url:
        enc = _client(url, "vertex-multimodal", monkeypatch, over=_query_key("vertex-multimodal"))
        np.testing.assert_allclose(enc.encode_images(png_images[:2]), cnn.encode_images(png_images[:2]),
                                   rtol=1e-5, atol=1e-6)
        assert url.stats.last_query == {"key": KEY}  # sent as ?key=, URL-encoded on the way
        # a wrong Google API key is answered with 400 API_KEY_INVALID: still a refused credential
        bad = _client(url, "vertex-multimodal", monkeypatch, key="AIza-wrong/key+1",
                      over=_query_key("vertex-multimodal"))
        with pytest.raises(CredentialError, match="HTTP 400") as err:
            bad.encode_images(png_images[:1])
        assert "AIza-wrong/key+1" not in str(err.value)
    # the server is gone: httpx's error names the URL with ?key=...; none of it may show
    enc._client.close()
    import httpx

    enc._client = httpx.Client(timeout=1.0)
    with pytest.raises(RemoteEncoderError, match=r"gave up after 2 attempts; last: connection failed") as err:
        enc.encode_images(png_images[:1])
    from urllib.parse import quote, quote_plus

    text = str(err.value) + caplog.text
    for form in (KEY, quote(KEY, safe=""), quote_plus(KEY)):
        assert form not in text


def test_texts_through_every_preset(tiny_clip_weights, png_images, monkeypatch):
    from audit_lib.encoders.local import LocalEncoder

    clip = LocalEncoder.from_checkpoint(*tiny_clip_weights)
    texts = ["a photo of Ada Lovelace", "a photo of Alan Turing", "a photo of a cat"]
    want = clip.encode_texts(texts)
    for vendor in VENDORS:
        with vendor_stub(vendor, clip, KEY) as url:
            enc = _client(url, vendor, monkeypatch, caps=("image", "text"), dim=clip.embedding_dim)
            got = enc.encode_texts(texts)
        np.testing.assert_allclose(got, _as_answered(vendor, want), rtol=1e-4, atol=1e-5, err_msg=vendor)


def test_malformed_requests_get_400(cnn, png_images, monkeypatch):
    with vendor_stub("cohere-v2", cnn, KEY) as url:  # two images in one call: refused by Cohere
        enc = _client(url, "cohere-v2", monkeypatch, over={"images": {"batch_size": 2}})
        with pytest.raises(RemoteEncoderError, match=r"HTTP 400: .*invalid request"):
            enc.encode_images(png_images[:2])
    with vendor_stub("voyage-multimodal", cnn, KEY) as url:  # bare base64 where a data URL belongs
        enc = _client(url, "voyage-multimodal", monkeypatch,
                      over={"images": {"item": {"content": [{"type": "image_base64", "image_base64": "{b64}"}]}}})
        with pytest.raises(RemoteEncoderError, match=r"HTTP 400: .*Request body is invalid"):
            enc.encode_images(png_images[:1])


# --- the privacy audit through vendor stubs ------------------------------------------------
AUDITED = [
    ("bedrock-titan", "header"),  # one input per request, a single object
    ("vertex-multimodal", "query"),  # the key as ?key=
    ("clarifai", "header"),  # per-item objects, Authorization: Key
    ("voyage-multimodal", "header"),  # data URLs inside per-item objects
]


@pytest.mark.parametrize("vendor, key_in", AUDITED)
def test_privacy_audit_through_a_vendor_stub(vendor, key_in, db_url, cnn, png_images, monkeypatch):
    from audit_lib import registry
    from audit_lib.commands.privacy import audit_pair
    from audit_lib.evidence import start_run, verify_chain
    from audit_lib.images import check_image_bytes
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.store import session_scope
    from audit_lib.store.models import EvidenceItem, Finding

    limits = registry.ImageLimits.from_settings().as_kwargs()
    claimed = [check_image_bytes(b, f"claimed-{i}.png", **limits) for i, b in enumerate(png_images[:3])]
    photo = check_image_bytes(png_images[23], "photo.png", **limits)
    references = png_images[3:13]
    monkeypatch.setenv("AUDIT_CRED_VENDOR_TEST", KEY)
    with vendor_stub(vendor, cnn, KEY, key_in=key_in) as url:
        adapter = resolve_adapter(vendor, {"embedding_dim": DIM, **(_query_key(vendor) if key_in == "query" else {})})
        with session_scope(db_url) as s:
            subject_id = registry.add_subject(s, name="Ada Example", legal_basis="consent (test)",
                                              photos=[photo], claimed=claimed).id
            registry.add_model(s, name=f"{vendor}-api", kind="api", role="suspect", capabilities="image",
                               endpoint_url=url.endpoint, adapter=adapter.to_json(),
                               credential_name="AUDIT_CRED_VENDOR_TEST")
        write_reference_nonmembers(f"{vendor}-api", [(f"ref-{i}.png", b) for i, b in enumerate(references)],
                                   db_url=db_url)
        result = audit_pair(subject_id, f"{vendor}-api", run_key=f"privacy-{vendor}", n_views=2, db_url=db_url)
        n_inputs = sum(url.stats.batch_sizes)
    assert n_inputs == 8 + (3 + 10) * 2  # the canary set, then every view once
    assert result["status"] == "succeeded" and result["queries_sent"] == (3 + 10) * 2
    records = result["findings"]
    assert len(records) == 2, records
    idia = [r for r in records if r["decision"] == "not_applicable"]  # no text tower
    mi = [r for r in records if r["decision"] != "not_applicable"]
    assert len(idia) == 1 and len(mi) == 1
    assert mi[0]["details"]["n_queries"] == (3 + 10) * 2 and 0 < mi[0]["p_value"] <= 1
    with session_scope(db_url) as s:
        run = start_run(s, f"privacy-{vendor}", "privacy")
        stored = s.scalars(select(Finding).where(Finding.run_id == run.id)).all()
        assert sorted(f.id for f in stored) == sorted(r["id"] for r in records)
        assert all(f.subject_id == subject_id for f in stored)
        kinds = [i.kind for i in s.scalars(select(EvidenceItem).where(EvidenceItem.run_id == run.id))]
        assert kinds.count("canary") == 8 and kinds.count("view") == (3 + 10) * 2
        assert verify_chain(s, run).ok
