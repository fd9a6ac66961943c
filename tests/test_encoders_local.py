"""Local checkpoint handles: shapes, batching, versions, strict and safe loading."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from audit_lib.encoders.base import EncoderHandle, NotApplicable
from audit_lib.encoders.loading import CheckpointError, HubDownloadRefused
from audit_lib.encoders.local import LocalEncoder


def test_output_shape_dtype_and_protocol(small_cnn_weights, png_images):
    arch, path = small_cnn_weights
    enc = LocalEncoder.from_checkpoint(arch, path)
    assert isinstance(enc, EncoderHandle)
    emb = enc.encode_images(png_images)
    assert emb.shape == (len(png_images), 128) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert enc.capabilities == frozenset({"image"}) and enc.embedding_dim == 128
    assert enc.device == "cpu" or torch.cuda.is_available()
    # not normalised: methods normalise
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # different images give different embeddings
    assert np.abs(emb[0] - emb[1]).max() > 1e-4
    with pytest.raises(NotApplicable):
        enc.encode_texts(["a photo"])
    assert enc.encode_images([]).shape == (0, 128)


def test_batch_size_invariance(small_cnn_weights, png_images):
    arch, path = small_cnn_weights
    a = LocalEncoder.from_checkpoint(arch, path, batch_size=64).encode_images(png_images)
    b = LocalEncoder.from_checkpoint(arch, path, batch_size=5).encode_images(png_images)
    one = LocalEncoder.from_checkpoint(arch, path, batch_size=1).encode_images(png_images[:3])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a[:3], one, rtol=1e-4, atol=1e-5)


def test_matches_direct_forward(small_cnn_weights, png_images):
    """The handle's preprocessing + forward equals the raw network on the same tensors."""
    arch, path = small_cnn_weights
    enc = LocalEncoder.from_checkpoint(arch, path)
    x = enc.preprocess(png_images[:4])
    assert tuple(x.shape) == (4, 3, 32, 32)
    with torch.inference_mode():
        direct = enc.network.module(x).numpy()
    np.testing.assert_allclose(enc.encode_images(png_images[:4]), direct, rtol=1e-5, atol=1e-6)


def test_version_is_sha256_of_weights_and_preprocess_recorded(small_cnn_weights, small_cnn_weights_b):
    arch, path = small_cnn_weights
    enc = LocalEncoder.from_checkpoint(arch, path)
    assert enc.model_version == hashlib.sha256(path.read_bytes()).hexdigest()
    other = LocalEncoder.from_checkpoint(*small_cnn_weights_b)
    assert other.model_version != enc.model_version
    info = enc.preprocess_info
    assert info["image_size"] == 32 and len(info["mean"]) == 3 and len(info["sha256"]) == 64


def test_text_tower(tiny_clip_weights, png_images):
    enc = LocalEncoder.from_checkpoint(*tiny_clip_weights)
    assert enc.capabilities == frozenset({"image", "text"})
    texts = enc.encode_texts(["a photo of Ada Example", "a photo of Bob Other", "x"])
    assert texts.shape == (3, 64) and texts.dtype == np.float32
    assert np.abs(texts[0] - texts[1]).max() > 1e-4
    assert enc.encode_images(png_images[:2]).shape == (2, 64)


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_strict_loading_errors(small_cnn_weights, tmp_path):
    from safetensors.torch import save_file

    arch, path = small_cnn_weights
    state = _state(path)
    missing = dict(state)
    dropped = sorted(missing)[0]
    del missing[dropped]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing \(" + dropped.replace(".", r"\.")):
        LocalEncoder.from_checkpoint(arch, tmp_path / "missing.safetensors")

    extra = dict(state, **{"head.extra": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 unexpected \(head\.extra\)"):
        LocalEncoder.from_checkpoint(arch, tmp_path / "extra.safetensors")

    # the right keys for another architecture: shapes do not fit
    with pytest.raises(CheckpointError, match="wrong shape"):
        LocalEncoder.from_checkpoint("small_cnn:small-cnn-32-wide", path)

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        LocalEncoder.from_checkpoint(arch, tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        LocalEncoder.from_checkpoint(arch, tmp_path / "absent.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown file type"):
        LocalEncoder.from_checkpoint(arch, tmp_path / "w.onnx")


def test_weights_only_torch_checkpoint_loads(small_cnn_weights, tmp_path, png_images):
    arch, path = small_cnn_weights
    state = _state(path)
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    a = LocalEncoder.from_checkpoint(arch, tmp_path / "w.pt").encode_images(png_images[:3])
    b = LocalEncoder.from_checkpoint(arch, path).encode_images(png_images[:3])
    np.testing.assert_allclose(a, b, rtol=1e-6)


class _Exploit:
    """Unpickling this would run a shell command that writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(small_cnn_weights, tmp_path):
    arch, path = small_cnn_weights
    marker = tmp_path / "PWNED"
    state = dict(_state(path))
    state["payload"] = _Exploit(str(marker))
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused.*could run code"):
        LocalEncoder.from_checkpoint(arch, evil)
    assert not marker.exists(), "loading the checkpoint ran code"
    # the exploit is real: the checkpoint's pickle calls os.system on the marker command
    # (read statically with pickletools; never unpickled)
    import pickletools
    import zipfile

    with zipfile.ZipFile(evil) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
    assert ("GLOBAL", f"{os.name} system") in ops and ("REDUCE", None) in ops
    assert ("BINUNICODE", f"touch {marker}") in ops


def test_pretrained_tag_refused_offline(monkeypatch):
    from audit_lib.config import get_settings

    monkeypatch.delenv("AUDIT_ALLOW_HUB_DOWNLOADS", raising=False)
    get_settings.cache_clear()
    for tag in ("openai", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        with pytest.raises(HubDownloadRefused, match="pass that file's path") as err:
            LocalEncoder.from_checkpoint("open_clip:ViT-B-32", tag)
        assert "AUDIT_ALLOW_HUB_DOWNLOADS" in str(err.value)
    get_settings.cache_clear()
