"""The model registry's commands: add (adapter validated), probe, update (new version only
when what answers changes), retire, show and list --json; against the real reference server
on 127.0.0.1 and a real evidence store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from audit_lib import registry
from audit_lib.cli import app
from audit_lib.store import session_scope
from audit_lib.store.models import (AuditedModel, AuditRun, EvidenceItem, Finding, ModelVersion,
                                    QueryCacheEntry)

runner = CliRunner()
KEY = "sk-models-cli-9Zq-secret"
CRED = "AUDIT_CRED_MODELS_CLI"


def _counts(url: str) -> dict[str, int]:
    with session_scope(url) as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (AuditedModel, ModelVersion, QueryCacheEntry, EvidenceItem, AuditRun, Finding)}


def _add_api(name: str, url: str, *extra: str):  # noqa: ANN202 - click Result
    return runner.invoke(app, ["models", "add", "--name", name, "--role", "suspect", "--endpoint", url,
                               "--credential", CRED, *extra])


def _versions(url: str, name: str) -> list[int]:
    with session_scope(url) as s:
        m = registry.get_model(s, name)
        return [v.id for v in m.versions]


def _audit_version(url: str, name: str) -> int:
    """Open the model's handle as an audit does; the version row it resolved."""
    from audit_lib.encoders import open_handle

    with session_scope(url) as s:
        m = registry.get_model(s, name)
        s.expunge(m)
    return open_handle(m, db_url=url, max_retries=0).model_version_id


def test_add_refuses_adapter_typo_and_unknown_dimension(db_url):
    r = _add_api("typo", "http://127.0.0.1:9", "--adapter", '{"imagez": {"path": "/x"}}')
    assert r.exit_code == 2 and "imagez" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = _add_api("typo", "http://127.0.0.1:9", "--preset", "encoder-audit",
                 "--adapter", '{"images": {"respons": "embeddings"}}')
    assert r.exit_code == 2 and "respons" in r.output
    r = _add_api("typo", "http://127.0.0.1:9", "--preset", "no-such-vendor")
    assert r.exit_code == 2 and "no-such-vendor" in r.output
    r = _add_api("typo", "http://127.0.0.1:9", "--adapter", "{not json")
    assert r.exit_code == 2 and "not valid JSON" in r.output
    # no info route and no dimension: refused at add, naming the fix
    r = _add_api("nodim", "http://127.0.0.1:9", "--adapter", '{"info": null}')
    assert r.exit_code == 2 and "--embedding-dim" in r.output
    assert _counts(db_url)["models"] == 0
    r = _add_api("withdim", "http://127.0.0.1:9", "--adapter", '{"info": null}', "--embedding-dim", "128")
    assert r.exit_code == 0, r.output
    with session_scope(db_url) as s:
        m = registry.get_model(s, "withdim")
        assert m.adapter["embedding_dim"] == 128 and "info" not in m.adapter
        assert m.adapter["preset"] == "encoder-audit"
    r = runner.invoke(app, ["models", "add", "--name", "ref", "--role", "independent", "--endpoint",
                            "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "reference" in r.output  # the known roles are named


def test_probe_success_writes_nothing(db_url, reference_server, monkeypatch):
    monkeypatch.setenv(CRED, KEY)
    with reference_server({KEY: {}}) as url:
        assert _add_api("vendor", url, "--preset", "encoder-audit").exit_code == 0
        before = _counts(db_url)
        r = runner.invoke(app, ["models", "probe", "vendor"])
        assert r.exit_code == 0, r.output
        assert "probe of vendor: OK" in r.output and "dimension        128" in r.output
        assert "deterministic    yes" in r.output
        r = runner.invoke(app, ["models", "probe", "--endpoint", url, "--preset", "encoder-audit",
                                "--credential", CRED, "--embedding-dim", "128", "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        # two canary calls of 8 images, one request each (batch 64); no info request (dim given)
        assert url.stats.as_dict()["requests"]["/v1/embed/images 200"] == 2 + 2
        assert "/v1/info 200" in url.stats.as_dict()["requests"]  # the registered one asked
    assert res["ok"] and res["dimension"] == 128 and res["images"] == 8 and res["deterministic"]
    assert res["max_difference"] == 0.0 and res["requests_per_call"] == 1
    assert 0 < res["norms"]["min"] <= res["norms"]["median"] <= res["norms"]["max"]
    assert res["latency_ms"]["per_request"] > 0
    assert _counts(db_url) == before  # no version, cache entry, evidence or run


def test_probe_checkpoint(db_url, small_cnn_weights):
    arch, path = small_cnn_weights
    r = runner.invoke(app, ["models", "probe", "--architecture", arch, "--weights", str(path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kind"] == "checkpoint" and res["dimension"] == 128 and res["deterministic"]
    r = runner.invoke(app, ["models", "probe", "--architecture", arch, "--weights", str(path) + ".gone"])
    assert r.exit_code == 2 and "no such file" in r.output
    assert runner.invoke(app, ["models", "add", "--name", "ours", "--role", "owned", "--architecture", arch,
                               "--weights", str(path)]).exit_code == 0
    r = runner.invoke(app, ["models", "probe", "ours"])
    assert r.exit_code == 0 and "probe of ours: OK" in r.output and "deterministic    yes" in r.output
    assert _counts(db_url)["model_versions"] == 0


@pytest.mark.parametrize("case", ["wrong_dim", "given_dim", "missing_path", "refused_key", "no_info_route"])
def test_probe_reports_the_problem_in_words(db_url, reference_server, monkeypatch, case):
    monkeypatch.setenv(CRED, KEY)
    keys = {KEY: {"faults": {"schedule": ["wrong_dim"]}}} if case == "wrong_dim" else {KEY: {}}
    args = {"wrong_dim": [],
            "given_dim": ["--embedding-dim", "64"],
            "missing_path": ["--adapter", '{"images": {"response": "data[*].embedding"}}'],
            "refused_key": [],
            "no_info_route": ["--adapter", '{"info": {"path": "/v1/about"}}']}[case]
    if case == "refused_key":
        monkeypatch.setenv(CRED, "sk-not-the-right-one")
    with reference_server(keys) as url:
        r = runner.invoke(app, ["models", "probe", "--endpoint", url, "--preset", "encoder-audit",
                                "--credential", CRED, "--json", *args])
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    assert not res["ok"]
    problem = res["problem"]
    expected = {"wrong_dim": ["embedding dimension 127", "expected 128"],
                "given_dim": ["embedding dimension 128", "expected 64"],
                "missing_path": ["no embeddings at 'data[*].embedding'", "'data'"],
                "refused_key": ["HTTP 401", f"the API refused the credential '{CRED}'"],
                "no_info_route": ["HTTP 404", "--embedding-dim"]}[case]
    for words in expected:
        assert words in problem, problem
    assert "sk-not-the-right-one" not in r.output and KEY not in r.output
    assert _counts(db_url)["model_versions"] == 0


def test_probe_bad_input_exits_2_before_any_query(db_url, reference_server, monkeypatch):
    monkeypatch.delenv(CRED, raising=False)
    with reference_server({KEY: {}}) as url:
        r = runner.invoke(app, ["models", "probe", "--endpoint", url, "--credential", CRED])
        assert r.exit_code == 2 and CRED in r.output
        r = runner.invoke(app, ["models", "probe", "--endpoint", url, "--adapter", '{"batchsize": 2}'])
        assert r.exit_code == 2 and "batchsize" in r.output
        r = runner.invoke(app, ["models", "probe", "no-such-model"])
        assert r.exit_code == 2 and "no such model" in r.output
        r = runner.invoke(app, ["models", "probe"])
        assert r.exit_code == 2 and "--endpoint" in r.output
        assert url.stats.as_dict()["requests"] == {}


def test_update_new_version_only_when_what_answers_changes(db_url, reference_server, monkeypatch):
    monkeypatch.setenv(CRED, KEY)
    monkeypatch.setenv("AUDIT_CRED_OTHER", KEY)
    with reference_server({KEY: {}}) as url_a, reference_server({KEY: {}}) as url_b:
        assert _add_api("vendor", url_a).exit_code == 0
        v1 = _audit_version(db_url, "vendor")
        assert _audit_version(db_url, "vendor") == v1
        r = runner.invoke(app, ["models", "update", "vendor", "--budget", "500", "--credential", "AUDIT_CRED_OTHER"])
        assert r.exit_code == 0, r.output
        assert "query_budget: None -> 500" in r.output and "new model version" not in r.output
        assert _audit_version(db_url, "vendor") == v1  # budget and credential: same version
        # the same weights behind another URL: identical canary answers, yet a new version
        r = runner.invoke(app, ["models", "update", "vendor", "--endpoint", url_b])
        assert r.exit_code == 0 and "a new model version at the next audit" in r.output
        v2 = _audit_version(db_url, "vendor")
        assert v2 != v1 and _audit_version(db_url, "vendor") == v2
        r = runner.invoke(app, ["models", "update", "vendor", "--adapter", '{"batch_size": 4}'])
        assert r.exit_code == 0 and "adapter.batch_size: 64 -> 4" in r.output
        v3 = _audit_version(db_url, "vendor")
        assert v3 not in (v1, v2)
        assert url_b.stats.as_dict()["requests"]["/v1/embed/images 200"] >= 2 + 2  # batches of 4
        # back to the first configuration: its version again (rolled back), not a fourth
        r = runner.invoke(app, ["models", "update", "vendor", "--endpoint", url_a, "--adapter", '{"batch_size": 64}'])
        assert r.exit_code == 0, r.output
        assert _audit_version(db_url, "vendor") == v1
        # a typo is refused with the key named, and nothing changes
        r = runner.invoke(app, ["models", "update", "vendor", "--adapter", '{"images": {"pth": "/x"}}'])
        assert r.exit_code == 2 and "pth" in r.output
        r = runner.invoke(app, ["models", "update", "vendor", "--budget", "500"])
        assert "nothing changed" in r.output
    assert _versions(db_url, "vendor") == sorted([v1, v2, v3])
    with session_scope(db_url) as s:
        assert registry.get_model(s, "vendor").endpoint_url == url_a
        assert registry.get_model(s, "vendor").credential_name == "AUDIT_CRED_OTHER"


def test_legacy_version_row_adopted_then_config_change_detected(db_url, reference_server, monkeypatch):
    """A version resolved before the configuration was part of the version keeps working."""
    from audit_lib.encoders import remote_encoder
    from audit_lib.encoders.cache import StoreBackedHandle

    monkeypatch.setenv(CRED, KEY)
    with reference_server({KEY: {}}) as url_a, reference_server({KEY: {}}) as url_b:
        assert _add_api("legacy", url_a).exit_code == 0
        with session_scope(db_url) as s:
            mid = registry.get_model(s, "legacy").id
        old = StoreBackedHandle(remote_encoder(url_a, None, CRED), db_url=db_url, model_id=mid)
        from audit_lib.encoders.version import canary_hash, canary_images

        assert old.model_version == canary_hash(old.inner.encode_images(list(canary_images())))
        assert _audit_version(db_url, "legacy") == old.model_version_id  # adopted, same row
        assert runner.invoke(app, ["models", "update", "legacy", "--endpoint", url_b]).exit_code == 0
        assert _audit_version(db_url, "legacy") != old.model_version_id


def test_update_checkpoint_weights_new_version(db_url, small_cnn_weights, small_cnn_weights_b, tmp_path):
    arch, path_a = small_cnn_weights
    _, path_b = small_cnn_weights_b
    r = runner.invoke(app, ["models", "add", "--name", "ours", "--role", "owned", "--architecture", arch,
                            "--weights", str(path_a)])
    assert r.exit_code == 0, r.output
    v1 = _audit_version(db_url, "ours")
    copy = tmp_path / "same-bytes.safetensors"
    shutil.copyfile(path_a, copy)
    assert "weights_path" in runner.invoke(app, ["models", "update", "ours", "--weights", str(copy)]).output
    assert _audit_version(db_url, "ours") == v1  # the same bytes answer the same
    r = runner.invoke(app, ["models", "update", "ours", "--weights", str(path_b)])
    assert r.exit_code == 0 and "new model version" in r.output
    assert _audit_version(db_url, "ours") != v1
    r = runner.invoke(app, ["models", "update", "ours", "--budget", "5"])
    assert r.exit_code == 2 and "only --weights" in r.output


def test_retire_blocks_new_audits_keeps_findings(db_url, small_cnn_weights):
    from audit_lib.evidence import start_run
    from audit_lib.pipelines.snapshot import snapshot_registry

    arch, path = small_cnn_weights
    for name, role in (("old", "suspect"), ("live", "suspect")):
        r = runner.invoke(app, ["models", "add", "--name", name, "--role", role, "--architecture", arch,
                                "--weights", str(path)])
        assert r.exit_code == 0, r.output
    vid = _audit_version(db_url, "old")
    with session_scope(db_url) as s:
        run = start_run(s, "run-before-retirement", "ownership")
        s.add(Finding(run_id=run.id, method="fingerprint", method_version="1", target_key="suspect:1",
                      model_version_id=vid, hypothesis="h0", null_description="independent models",
                      alpha=0.05, decision="no evidence"))
    r = runner.invoke(app, ["models", "retire", "old"])
    assert r.exit_code == 0 and "its findings stay" in r.output
    assert runner.invoke(app, ["models", "retire", "old"]).exit_code == 2  # already retired
    r = runner.invoke(app, ["encoders", "check", "old"])
    assert r.exit_code == 2 and "retired on" in r.output and "no new audits" in r.output
    assert len(r.output.strip().splitlines()) == 1
    with pytest.raises(registry.RegistryError, match="retired"):
        _audit_version(db_url, "old")
    snap = snapshot_registry("run-after", kind="ownership", db_url=db_url)
    assert [m["id"] for m in snap["models"]] == [registry_id(db_url, "live")]
    with pytest.raises(ValueError, match="retired"):
        snapshot_registry("run-asked", kind="ownership", model_ids=[registry_id(db_url, "old")], db_url=db_url)
    r = runner.invoke(app, ["models", "list"])
    assert "retired" in [ln for ln in r.output.splitlines() if " old " in ln][0]
    shown = json.loads(runner.invoke(app, ["models", "show", "old"]).stdout)
    assert shown["status"] == "retired" and shown["n_findings"] == 1 and shown["versions"][0]["id"] == vid
    assert _counts(db_url)["findings"] == 1


def registry_id(url: str, name: str) -> int:
    with session_scope(url) as s:
        return registry.get_model(s, name).id


def test_show_and_list_json_never_the_secret(db_url, face_dir, monkeypatch):
    monkeypatch.setenv(CRED, KEY)
    assert _add_api("vendor", "http://127.0.0.1:9", "--embedding-dim", "256", "--budget", "100").exit_code == 0
    r = runner.invoke(app, ["models", "show", "vendor"])
    assert r.exit_code == 0 and KEY not in r.output
    shown = json.loads(r.stdout)
    assert shown["credential_name"] == CRED and shown["adapter"]["embedding_dim"] == 256
    assert shown["query_budget"] == 100 and shown["status"] == "active" and shown["versions"] == []
    assert len(shown["answering_config_sha256"]) == 64
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert listed == [shown]
    assert runner.invoke(app, ["models", "show", "nope"]).exit_code == 2
    r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--legal-basis", "consent",
                            "--photos", str(face_dir)])
    assert r.exit_code == 0, r.output
    subjects = json.loads(runner.invoke(app, ["subjects", "list", "--json"]).stdout)
    assert [x["name"] for x in subjects] == ["Ada Example"] and len(subjects[0]["images"]) == 3


def test_unknown_dimension_at_first_use_names_the_fix(db_url, reference_server, monkeypatch):
    """An API registered with an info route it does not have: the first use says what to do."""
    monkeypatch.setenv(CRED, KEY)
    with reference_server({KEY: {}}) as url:
        r = runner.invoke(app, ["models", "add", "--name", "vendor", "--role", "reference", "--endpoint", url,
                                "--credential", CRED, "--adapter", '{"info": {"path": "/v1/about"}}'])
        assert r.exit_code == 0 and "reference" in r.output
        r = runner.invoke(app, ["encoders", "check", "vendor"])
        assert r.exit_code == 2 and "HTTP 404" in r.output
        assert "models update vendor --embedding-dim N" in r.output
        r = runner.invoke(app, ["models", "probe", "vendor"])
        assert r.exit_code == 1 and "models update vendor --embedding-dim N" in r.output
        assert runner.invoke(app, ["models", "update", "vendor", "--embedding-dim", "128"]).exit_code == 0
        r = runner.invoke(app, ["encoders", "check", "vendor"])
        assert r.exit_code == 0 and "dim 128" in r.output
