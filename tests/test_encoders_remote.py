"""Remote handles against the real reference server on 127.0.0.1, with fault injection."""

from __future__ import annotations

import logging
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from audit_lib.encoders.cache import StoreBackedHandle
from audit_lib.encoders.remote import (BadAnswer, BudgetExhausted, CredentialError, RemoteEncoder,
                                       RemoteUnavailable, get_path, set_path)
from audit_lib.store.db import session_scope
from audit_lib.store.models import EvidenceItem, ModelVersion, QueryCacheEntry

KEY = "sk-test-7Qx2-secret-value"
FAST = {"backoff_base_s": 0.05, "max_retries": 3, "timeout": 5.0}


def remote(url: str, monkeypatch, key: str = KEY, **kw) -> RemoteEncoder:
    monkeypatch.setenv("AUDIT_CRED_ENC_TEST", key)
    return RemoteEncoder(url, None, "AUDIT_CRED_ENC_TEST", embedding_dim=128, **{**FAST, **kw})


def register_api(db_url: str, url: str) -> int:
    from audit_lib import registry

    with session_scope(db_url) as s:
        return registry.add_model(s, name="third-party-api", kind="api", role="suspect",
                                  capabilities="image", endpoint_url=url,
                                  credential_name="AUDIT_CRED_ENC_TEST").id


def test_success_matches_local_model(reference_server, small_cnn_weights, png_images, monkeypatch):
    from audit_lib.encoders.local import LocalEncoder

    with reference_server({KEY: {}}) as url:
        enc = remote(url, monkeypatch)
        emb = enc.encode_images(png_images)
        assert url.stats.embed_requests == 1 and url.stats.inputs_embedded == len(png_images)
        info = httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    local = LocalEncoder.from_checkpoint(*small_cnn_weights).encode_images(png_images)
    assert emb.shape == (24, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, local, rtol=1e-5, atol=1e-6)
    assert info["embedding_dim"] == 128 and info["capabilities"] == ["image"]
    assert enc.queries_used == 24


def test_learns_dimension_from_info_and_batches(reference_server, png_images, monkeypatch):
    with reference_server({KEY: {}}) as url:
        monkeypatch.setenv("AUDIT_CRED_ENC_TEST", KEY)
        enc = RemoteEncoder(url, {"max_batch": 10}, "AUDIT_CRED_ENC_TEST", **FAST)
        assert enc.embedding_dim == 128
        assert enc.encode_images(png_images).shape == (24, 128)
        assert url.stats.embed_requests == 3  # 10 + 10 + 4


def test_cache_hit_sends_no_request(db_url, reference_server, png_images, monkeypatch):
    with reference_server({KEY: {}}) as url:
        model_id = register_api(db_url, url)
        monkeypatch.setenv("AUDIT_CRED_ENC_TEST", KEY)
        h1 = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="run-1")
        first = h1.encode_images(png_images[:10])
        assert h1.misses == 10 and h1.hits == 0
        h2 = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="run-2")
        assert h2.model_version == h1.model_version and h2.model_version_id == h1.model_version_id
        url.stats.reset()  # the canary check of the second audit is done; now the audit itself
        second = h2.encode_images(png_images[:10])
        assert url.stats.embed_requests == 0, "a cache hit reached the API"
        assert h2.hits == 10 and h2.misses == 0
        np.testing.assert_array_equal(first, second)
        # a mixed call pays only for the new inputs, and each only once
        mixed = h2.encode_images(png_images[8:14] + png_images[12:14])
        assert url.stats.embed_requests == 1 and url.stats.inputs_embedded == 4
        np.testing.assert_array_equal(mixed[:2], first[8:10])
    from audit_lib.evidence import verify_chain, start_run

    with session_scope(db_url) as s:
        run2 = start_run(s, "run-2", "audit")
        items = s.scalars(select(EvidenceItem).where(EvidenceItem.run_id == run2.id)
                          .order_by(EvidenceItem.seq)).all()
        kinds = [i.kind for i in items]
        assert kinds.count("canary") == 8 and kinds.count("image") == 18
        image_items = [i for i in items if i.kind == "image"]
        assert all(i.cached for i in image_items[:10])
        assert [i.cached for i in image_items[10:]] == [True, True, False, False, False, False, True, True]
        assert verify_chain(s, run2).ok


def test_429_honours_retry_after(reference_server, png_images, monkeypatch):
    keys = {KEY: {"faults": {"schedule": ["429", "ok"], "retry_after": 1}}}
    with reference_server(keys) as url:
        enc = remote(url, monkeypatch)
        t0 = time.monotonic()
        emb = enc.encode_images(png_images[:4])
        assert time.monotonic() - t0 >= 1.0, "the client did not wait for Retry-After"
        assert emb.shape == (4, 128) and enc.requests_sent == 2
        assert url.stats.as_dict()["requests"] == {"/v1/embed/images 429": 1, "/v1/embed/images 200": 1}


def test_per_key_rate_limit_answers_429_with_retry_after(reference_server, png_images, monkeypatch):
    with reference_server({KEY: {"rate_limit_per_s": 0.5, "burst": 1}}) as url:
        headers = {"Authorization": f"Bearer {KEY}"}
        import base64

        body = {"images": [base64.b64encode(png_images[0]).decode()]}
        assert httpx.post(f"{url}/v1/embed/images", json=body, headers=headers).status_code == 200
        r = httpx.post(f"{url}/v1/embed/images", json=body, headers=headers)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # the handle waits as told and gets through
        enc = remote(url, monkeypatch, max_retries=2)
        assert enc.encode_images(png_images[:1]).shape == (1, 128)


def test_500_then_success(reference_server, png_images, monkeypatch):
    with reference_server({KEY: {"faults": {"schedule": ["500", "500", "ok"]}}}) as url:
        enc = remote(url, monkeypatch)
        assert enc.encode_images(png_images[:3]).shape == (3, 128)
        assert enc.requests_sent == 3
    with reference_server({KEY: {"faults": {"rates": {"500": 1.0}}}}) as url:
        enc = remote(url, monkeypatch, max_retries=2)
        with pytest.raises(RemoteUnavailable, match=r"gave up after 3 attempts; last: HTTP 500"):
            enc.encode_images(png_images[:3])


def test_timeout(reference_server, png_images, monkeypatch):
    with reference_server({KEY: {"faults": {"schedule": ["slow", "ok"], "slow_s": 1.5}}}) as url:
        enc = remote(url, monkeypatch, timeout=0.4)
        assert enc.encode_images(png_images[:2]).shape == (2, 128)  # retried after the timeout
        assert enc.requests_sent == 2
    with reference_server({KEY: {"faults": {"rates": {"slow": 1.0}, "slow_s": 1.5}}}) as url:
        enc = remote(url, monkeypatch, timeout=0.3, max_retries=1)
        with pytest.raises(RemoteUnavailable, match=r"timed out after 0.3 s") as err:
            enc.encode_images(png_images[:2])
        assert url in str(err.value)


@pytest.mark.parametrize("fault, message", [
    ("nan", r"non-finite numbers \(NaN or infinity\) in 1 of 5 embeddings"),
    ("wrong_dim", r"embedding dimension 127, expected 128"),
    ("wrong_count", r"4 embeddings for 5 inputs"),
    ("garbage", r"the answer is not JSON"),
])
def test_bad_answers_are_errors_and_never_cached(db_url, reference_server, png_images, monkeypatch,
                                                fault, message):
    with reference_server({KEY: {"faults": {"schedule": ["ok", fault]}}}) as url:  # ok: the canary
        model_id = register_api(db_url, url)
        handle = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="r")
        with pytest.raises(BadAnswer, match=message) as err:
            handle.encode_images(png_images[:5])
        assert url in str(err.value)
        with session_scope(db_url) as s:
            cached = s.scalar(select(func.count()).select_from(QueryCacheEntry)
                              .where(QueryCacheEntry.kind == "image"))
            evidence = s.scalar(select(func.count()).select_from(EvidenceItem)
                                .where(EvidenceItem.kind == "image"))
        assert cached == 0 and evidence == 0
        # the next (healthy) answer is used and cached
        assert handle.encode_images(png_images[:5]).shape == (5, 128)


def test_budget_exhaustion_stops_cleanly(reference_server, png_images, monkeypatch):
    with reference_server({KEY: {}}) as url:
        enc = remote(url, monkeypatch, budget=10)
        enc.encode_images(png_images[:8])
        before = url.stats.embed_requests
        with pytest.raises(BudgetExhausted, match=r"query budget of 10 queries for this run is spent "
                                                  r"\(8 used, 5 more needed\); nothing more was sent"):
            enc.encode_images(png_images[8:13])
        assert url.stats.embed_requests == before
        assert enc.encode_images(png_images[8:10]).shape == (2, 128)  # exactly up to the budget
        with pytest.raises(BudgetExhausted):
            enc.encode_images(png_images[:1])


def test_bad_api_key_never_leaks(reference_server, png_images, monkeypatch, caplog):
    wrong = "sk-WRONG-9f8e7d6c5b4a-do-not-log"
    caplog.set_level(logging.DEBUG)
    with reference_server({KEY: {}}) as url:
        enc = remote(url, monkeypatch, key=wrong)
        with pytest.raises(CredentialError, match="HTTP 401, the API refused the credential 'AUDIT_CRED_ENC_TEST'") as err:
            enc.encode_images(png_images[:2])
        assert url.stats.as_dict()["requests"] == {"auth 401": 1}
    import traceback

    text = f"{err.value!s} {err.value!r} " + "".join(traceback.format_exception(err.value))
    assert wrong not in text and wrong not in caplog.text and wrong not in repr(enc.__dict__)
    assert KEY not in caplog.text
    monkeypatch.delenv("AUDIT_CRED_ENC_TEST")
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    enc = RemoteEncoder("http://127.0.0.1:9", None, "AUDIT_CRED_ENC_TEST", embedding_dim=128, **FAST)
    with pytest.raises(CredentialError, match="credential 'AUDIT_CRED_ENC_TEST': no environment variable"):
        enc.encode_images(png_images[:1])


def test_canary_detects_swapped_model(db_url, reference_server, small_cnn_weights_b, png_images, monkeypatch):
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.evidence import store_finding, start_run
    from audit_lib.findings import FindingResult

    with reference_server({KEY: {}}) as url:
        port = url.port
        model_id = register_api(db_url, url)
        h_a = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="audit-1")
        h_a.encode_images(png_images[:3])
        h_a2 = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="audit-2")
        assert h_a2.model_version_id == h_a.model_version_id  # unchanged model, same version
    with session_scope(db_url) as s:
        finding, _ = store_finding(s, start_run(s, "audit-1", "audit"), FindingResult(
            method="test", method_version="1", hypothesis="h", statistic=0.0, null_description="n",
            p_value=1.0, alpha=0.05, decision="negative"), target_key=f"model:{model_id}",
            model_version_id=h_a.model_version_id)
        finding_id = finding.id
    other = LocalEncoder.from_checkpoint(*small_cnn_weights_b)
    with reference_server({KEY: {}}, port=port, encoder_override=other) as url:  # same URL, new weights
        h_b = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="audit-3")
        assert h_b.model_version != h_a.model_version
        assert h_b.model_version_id != h_a.model_version_id
        url.stats.reset()
        h_b.encode_images(png_images[:3])
        assert url.stats.inputs_embedded == 3  # old answers are not reused for the new version
    with reference_server({KEY: {}}, port=port) as url:  # rolled back to the first weights
        h_c = StoreBackedHandle(remote(url, monkeypatch), db_url=db_url, model_id=model_id, run_key="audit-4")
        assert h_c.model_version_id == h_a.model_version_id
    with session_scope(db_url) as s:
        versions = s.scalars(select(ModelVersion).where(ModelVersion.model_id == model_id)).all()
        assert len(versions) == 2 and {v.how for v in versions} == {"canary"}
        from audit_lib.store.models import Finding

        assert s.get(Finding, finding_id).model_version_id == h_a.model_version_id


def test_output_defences_per_key(reference_server, png_images, monkeypatch):
    keys = {KEY: {}, "sk-topk": {"defences": {"top_k": 10}}, "sk-round": {"defences": {"round_decimals": 1}},
            "sk-noise": {"defences": {"noise_sigma": 0.1}, "seed": 7}}
    with reference_server(keys) as url:
        clean = remote(url, monkeypatch).encode_images(png_images[:6])
        topk = remote(url, monkeypatch, key="sk-topk").encode_images(png_images[:6])
        rounded = remote(url, monkeypatch, key="sk-round").encode_images(png_images[:6])
        noisy = remote(url, monkeypatch, key="sk-noise").encode_images(png_images[:6])
    assert ((topk != 0).sum(axis=1) == 10).all()
    kept = topk != 0
    np.testing.assert_allclose(topk[kept], clean[kept], rtol=1e-6)
    assert np.abs(clean[kept]).min() >= np.abs(np.where(kept, 0, clean)).max(axis=1).min() - 1e-7
    np.testing.assert_allclose(rounded, np.round(clean, 1), atol=1e-6)
    unit = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    resid = noisy - unit
    assert 0.07 < resid.std() < 0.13 and abs(resid.mean()) < 0.02


def test_checkpoint_handle_through_store(db_url, small_cnn_weights, png_images):
    from audit_lib import registry
    from audit_lib.encoders import open_handle

    arch, path = small_cnn_weights
    with session_scope(db_url) as s:
        model = registry.add_model(s, name="owned-cnn", kind="checkpoint", role="owned",
                                   capabilities="image", architecture=arch, weights_path=path)
    h = open_handle(model, run_key="local-run", db_url=db_url)
    a = h.encode_images(png_images[:4])
    b = h.encode_images(png_images[:4])
    np.testing.assert_array_equal(a, b)
    assert h.hits == 4 and h.misses == 4
    with session_scope(db_url) as s:
        v = s.get(ModelVersion, h.model_version_id)
        assert v.how == "weights" and v.version == h.inner.model_version
        assert v.preprocess["image_size"] == 32 and v.embedding_dim == 128


def test_json_paths():
    obj = {"data": [{"embedding": [1, 2]}, {"embedding": [3, 4]}]}
    assert get_path(obj, "data[*].embedding") == [[1, 2], [3, 4]]
    with pytest.raises(KeyError, match="no 'vectors'"):
        get_path(obj, "vectors")
    body: dict = {"model": "m"}
    set_path(body, "input.images", ["a"])
    assert body == {"model": "m", "input": {"images": ["a"]}}


def test_credential_from_airflow_connection(monkeypatch, tmp_path):
    """A credential name that is no environment variable is read from an Airflow Connection."""
    from audit_lib.encoders.remote import resolve_credential

    monkeypatch.delenv("AUDIT_CRED_ENC_API", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_CRED_ENC_API", '{"conn_type": "http", "password": "pw-from-airflow"}')
    secret = resolve_credential("AUDIT_CRED_ENC_API")
    assert secret.value == "pw-from-airflow" and "pw-from-airflow" not in repr(secret)
