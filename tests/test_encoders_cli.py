"""The encoder area's commands: the benchmark runs end to end; serve-encoder refuses bad setups."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from audit_lib.cli import app

runner = CliRunner()


def test_bench_encoders_small(tmp_path):
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", "encoders", "--architecture", "small_cnn:small-cnn-32",
                            "--images", "96", "--repeats", "1", "--batch-size", "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "handle, from PNG files on disk" in r.output and "cache hits + evidence chain" in r.output
    data = json.loads(out.read_text())
    assert data["batch_size"] == 32 and data["config"]["n_images"] == 96
    for key in ("raw", "handle", "server", "cache_hit", "cache_hit_with_evidence"):
        assert data["images_per_s"][key] > 0
    assert 0 < data["ratios"]["handle/raw"] < 10


def test_serve_encoder_refuses_bad_setups(small_cnn_weights, tmp_path):
    arch, path = small_cnn_weights
    r = runner.invoke(app, ["serve-encoder", "--architecture", arch, "--weights", str(path)])
    assert r.exit_code == 2 and "--keys-file" in r.output
    (tmp_path / "keys.json").write_text("{not json")
    r = runner.invoke(app, ["serve-encoder", "--architecture", arch, "--weights", str(path),
                            "--keys-file", str(tmp_path / "keys.json")])
    assert r.exit_code == 2 and "cannot be read as JSON" in r.output
    (tmp_path / "keys.json").write_text(json.dumps({"keys": {"k": {"defences": {"top_k": 0}}}}))
    r = runner.invoke(app, ["serve-encoder", "--architecture", arch, "--weights", str(path),
                            "--keys-file", str(tmp_path / "keys.json")])
    assert r.exit_code == 2 and "top_k 0: must be >= 1" in r.output
    r = runner.invoke(app, ["serve-encoder", "--architecture", arch, "--weights", str(tmp_path / "no.safetensors"),
                            "--allow-anonymous"])
    assert r.exit_code == 2 and "no such file" in r.output
