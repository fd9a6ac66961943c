"""Checkpoint families (timm, transformers CLIP folders, open_clip local-dir, owner
factories): each is preprocessed by its own evaluation transform pixel for pixel, loads
offline from files the test saves, and audits end to end through the evidence store."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FACES, SHARED_DATA

CIFAR = SHARED_DATA / "cifar10" / "cifar10-subset.npz"
TIMM_ARCH = "timm:test_resnet@64"
pytestmark = pytest.mark.skipif(not FACES.is_dir() or not CIFAR.is_file(), reason="../shared/data is not present")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Real photographs of several shapes: ORL faces (92 x 112 PGM), CIFAR-10 (32 x 32 PNG),
    and non-square crops of both (wide and tall), so resize rounding and crops show."""
    from PIL import Image

    faces = [(FACES / f"s{p}" / f"{i}.pgm").read_bytes() for p, i in ((1, 1), (2, 5), (7, 3))]
    cifar = np.load(CIFAR)["x_test"][:3]
    out = faces + [_png(Image.fromarray(a)) for a in cifar]
    face = Image.open(io.BytesIO(faces[0])).convert("RGB")
    out += [_png(face.crop((0, 10, 92, 71))), _png(face.crop((5, 0, 60, 112)))]  # 92x61, 55x112
    big = Image.fromarray(cifar[0]).resize((97, 41), Image.Resampling.BICUBIC)
    out.append(_png(big))
    return out


def _tokenizer_from_open_clip():
    """A CLIP BPE tokenizer built offline from the vocabulary file open_clip ships."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=dict(st.encoder), merges=merges)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny transformers CLIP saved with save_pretrained: config, safetensors weights,
    tokenizer, image processor (resize shortest edge 36, crop 32: a real resize and crop)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = _tokenizer_from_open_clip()
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=32, vocab_size=len(tok), **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-clip"
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory) -> Path:
    from tests.fixtures_encoders import make_checkpoint

    return make_checkpoint(TIMM_ARCH, tmp_path_factory.mktemp("timm") / "test-resnet.safetensors", 4)


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory) -> Path:
    """A folder in open_clip's local-dir format: config with a non-default preprocess_cfg
    (bilinear, own mean/std) and the weights as open_clip_model.safetensors."""
    from audit_lib.encoders.architectures import CONFIG_DIR, build
    from audit_lib.encoders.loading import save_weights

    folder = tmp_path_factory.mktemp("oc") / "tiny-clip-dir"
    folder.mkdir()
    model_cfg = json.loads((CONFIG_DIR / "tiny-clip-vit.json").read_text())
    pp = {"size": 64, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear",
          "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}))
    torch.manual_seed(5)
    save_weights(build(f"open_clip:local-dir:{folder}").module, folder / "open_clip_model.safetensors")
    return folder


def _pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    assert float((ours - theirs).abs().max()) <= 1e-6


# --- pixel for pixel ----------------------------------------------------------------------
def test_open_clip_named_config_matches_preprocess_val(photos, tiny_clip_weights):
    import open_clip

    from audit_lib.encoders.local import LocalEncoder, preprocess_uint8

    enc = LocalEncoder.from_checkpoint(*tiny_clip_weights, device="cpu")
    _, _, preprocess_val = open_clip.create_model_and_transforms("tiny-clip-vit", pretrained=None, load_weights=False)
    theirs = torch.stack([preprocess_val(_pil(p)) for p in photos])
    _assert_same(enc.preprocess(photos), theirs)
    # the project's uint8 transform rounds the long side where open_clip truncates it: on a
    # 92 x 112 face at 64 pixels (112 * 64 / 92 = 77.9) they differ, which is why the
    # handle no longer uses it for open_clip
    old = torch.from_numpy(preprocess_uint8(photos[0], 64).copy()).permute(2, 0, 1).float() / 255
    new = theirs[0] * torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) \
        + torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    assert float((old - new).abs().max()) > 0.05


def test_open_clip_at_input_size_equals_the_uint8_path(tiny_clip_weights):
    """The methods' uint8 arrays are at the input size already: there open_clip's transform
    and the project's uint8 path give the same tensor (the zoo is scored as before)."""
    from PIL import Image

    from audit_lib.encoders.local import LocalEncoder, preprocess_uint8

    enc = LocalEncoder.from_checkpoint(*tiny_clip_weights, device="cpu")
    faces = [Image.open(FACES / "s4" / f"{i}.pgm").convert("RGB") for i in (1, 2)]
    pngs = [_png(Image.fromarray(preprocess_uint8(_png(f), 64))) for f in faces]
    pp = enc.network.preprocess
    arr = np.stack([preprocess_uint8(p, 64) for p in pngs])
    expected = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
                - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(pp.std).view(1, 3, 1, 1)
    assert float((enc.preprocess(pngs) - expected).abs().max()) <= 1e-6


def test_open_clip_local_dir_matches_its_preprocess_cfg(photos, open_clip_dir):
    from open_clip import image_transform

    from audit_lib.encoders.local import LocalEncoder

    enc = LocalEncoder.from_checkpoint(f"open_clip:local-dir:{open_clip_dir}", open_clip_dir, device="cpu")
    theirs = image_transform(64, is_train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                             interpolation="bilinear", resize_mode="shortest")
    _assert_same(enc.preprocess(photos), torch.stack([theirs(_pil(p)) for p in photos]))
    assert enc.preprocess_info["transform"]["config"]["interpolation"] == "bilinear"
    assert enc.capabilities == frozenset({"image", "text"})
    assert enc.encode_texts(["a photo of Ada Example"]).shape == (1, 64)


def test_timm_matches_its_eval_transform(photos, timm_weights):
    import timm
    import timm.data

    from audit_lib.encoders.local import LocalEncoder

    enc = LocalEncoder.from_checkpoint(TIMM_ARCH, timm_weights, device="cpu")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    cfg = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    theirs = timm.data.create_transform(**cfg, is_training=False)
    _assert_same(enc.preprocess(photos), torch.stack([theirs(_pil(p)) for p in photos]))
    steps = enc.preprocess_info["transform"]["steps"]
    assert "CenterCrop(size=(64, 64))" in steps and f"Resize(size={int(64 / cfg['crop_pct'])}" in steps


def test_hf_clip_matches_its_image_processor(photos, hf_clip_dir):
    from transformers import CLIPImageProcessor

    from audit_lib.encoders.local import LocalEncoder

    enc = LocalEncoder.from_checkpoint(f"hf-clip:{hf_clip_dir}", hf_clip_dir, device="cpu")
    processor = CLIPImageProcessor.from_pretrained(hf_clip_dir, local_files_only=True)
    theirs = processor(images=[_pil(p) for p in photos], return_tensors="pt")["pixel_values"]
    _assert_same(enc.preprocess(photos), theirs)


def test_torchvision_matches_the_documented_weights_transform(photos, tmp_path):
    import torchvision.models as tvm

    from audit_lib.encoders.local import LocalEncoder
    from tests.fixtures_encoders import make_checkpoint

    path = make_checkpoint("torchvision:resnet18@64", tmp_path / "r18.safetensors", 6)
    enc = LocalEncoder.from_checkpoint("torchvision:resnet18@64", path, device="cpu")
    theirs = tvm.ResNet18_Weights.DEFAULT.transforms(crop_size=64, resize_size=73)  # 256/224 scaled
    _assert_same(enc.preprocess(photos), torch.stack([theirs(_pil(p)) for p in photos]))


def test_small_cnn_keeps_its_transform_on_arrays_at_input_size(small_cnn_weights):
    """A uint8 image already at the input size gives (x / 255 - mean) / std, as before."""
    from PIL import Image

    from audit_lib.encoders.local import LocalEncoder

    enc = LocalEncoder.from_checkpoint(*small_cnn_weights, device="cpu")
    arr = np.load(CIFAR)["x_test"][10:14]
    pp = enc.network.preprocess
    expected = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
                - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(pp.std).view(1, 3, 1, 1)
    ours = enc.preprocess([_png(Image.fromarray(a)) for a in arr])
    assert float((ours - expected).abs().max()) <= 1e-6
    assert enc.network.transform is None and enc.preprocess_info["resize"] == "shorter-side bicubic, centre crop"


# --- versions and offline loading ---------------------------------------------------------
def test_hf_clip_version_covers_weights_and_config(hf_clip_dir, tmp_path):
    import shutil

    from audit_lib.encoders.local import LocalEncoder

    arch = f"hf-clip:{hf_clip_dir}"
    by_folder = LocalEncoder.from_checkpoint(arch, hf_clip_dir, device="cpu")
    by_file = LocalEncoder.from_checkpoint(arch, hf_clip_dir / "model.safetensors", device="cpu")
    assert by_folder.model_version == by_file.model_version
    copy = tmp_path / "copy"
    shutil.copytree(hf_clip_dir, copy)
    assert LocalEncoder.from_checkpoint(f"hf-clip:{copy}", copy, device="cpu").model_version == by_folder.model_version
    cfg = json.loads((copy / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = "gelu"  # same tensors, another network
    (copy / "config.json").write_text(json.dumps(cfg))
    changed = LocalEncoder.from_checkpoint(f"hf-clip:{copy}", copy, device="cpu")
    assert changed.model_version != by_folder.model_version
    assert by_folder.preprocess_info["transform"]["source"] == "transformers CLIPImageProcessor"


def test_no_hub_download_is_attempted(hf_clip_dir, open_clip_dir, photos, monkeypatch):
    """Loading every folder family opens no connection off this machine."""
    import os

    from audit_lib.encoders.architectures import ArchitectureError
    from audit_lib.encoders.local import LocalEncoder

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        if not (isinstance(address, tuple) and str(address[0]) in ("127.0.0.1", "::1", "localhost")) \
                and self.family != socket.AF_UNIX:
            attempts.append(address)
            raise OSError(f"test: connection to {address} refused")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    enc = LocalEncoder.from_checkpoint(f"hf-clip:{hf_clip_dir}", hf_clip_dir, device="cpu")
    assert enc.encode_texts(["a photo of Ada Example"]).shape == (1, 24)
    assert enc.encode_images(photos[:2]).shape == (2, 24)
    LocalEncoder.from_checkpoint(f"open_clip:local-dir:{open_clip_dir}", open_clip_dir, device="cpu")
    # a hub repository id is not a folder: refused before transformers is asked
    with pytest.raises(ArchitectureError, match="is not a folder"):
        LocalEncoder.from_checkpoint("hf-clip:openai/clip-vit-base-patch32", hf_clip_dir / "model.safetensors")
    assert attempts == []


# --- owner factories ----------------------------------------------------------------------
FACTORY = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").touch()
import torch.nn as nn


def make():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 16))
    net.image_size, net.image_mean, net.image_std = 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return net
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    import uuid

    name = f"ownerpkg_{uuid.uuid4().hex[:8]}"  # a fresh package: the import really happens here
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"python:{name}.nets:make", pkg / "IMPORTED"


def _factory_weights(path: Path) -> Path:
    import torch.nn as nn
    from safetensors.torch import save_file

    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 16))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_python_factory_refused_unless_allowed_and_owned(factory_module, db_url, monkeypatch, tmp_path):
    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.encoders.architectures import ArchitectureError
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.store import session_scope

    arch, marker = factory_module
    weights = _factory_weights(tmp_path / "owner.safetensors")
    monkeypatch.delenv("AUDIT_ALLOW_PYTHON_FACTORIES", raising=False)
    get_settings.cache_clear()
    with session_scope(db_url) as s:
        with pytest.raises(registry.RegistryError, match="AUDIT_ALLOW_PYTHON_FACTORIES=true"):
            registry.add_model(s, name="owner-net", kind="checkpoint", role="owned", capabilities="image",
                               architecture=arch, weights_path=weights)
    with pytest.raises(ArchitectureError, match="switched off"):
        LocalEncoder.from_checkpoint(arch, weights, role="owned")
    assert not marker.exists(), "the factory's module was imported while factories are off"

    monkeypatch.setenv("AUDIT_ALLOW_PYTHON_FACTORIES", "true")
    get_settings.cache_clear()
    with session_scope(db_url) as s:
        with pytest.raises(registry.RegistryError, match="only for models of role owned"):
            registry.add_model(s, name="suspect-net", kind="checkpoint", role="suspect", capabilities="image",
                               architecture=arch, weights_path=weights)
    for role in ("suspect", None):
        with pytest.raises(ArchitectureError, match="only for models of role owned"):
            LocalEncoder.from_checkpoint(arch, weights, role=role)
    assert not marker.exists()

    with session_scope(db_url) as s:
        model = registry.add_model(s, name="owner-net", kind="checkpoint", role="owned", capabilities="image",
                                   architecture=arch, weights_path=weights)
        s.expunge(model)
    from PIL import Image

    from audit_lib.encoders import open_handle

    images = [_png(Image.fromarray(a)) for a in np.load(CIFAR)["x_test"][:4]]
    handle = open_handle(model, db_url=db_url)
    emb = handle.encode_images(images)
    assert emb.shape == (4, 16) and np.isfinite(emb).all() and marker.exists()
    assert handle.inner.preprocess_info["architecture"]["source_sha256"]
    get_settings.cache_clear()


def test_weights_folder_accepted_only_for_folder_families(db_url, hf_clip_dir, tmp_path):
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        m = registry.add_model(s, name="hf", kind="checkpoint", role="suspect", capabilities="image,text",
                               architecture=f"hf-clip:{hf_clip_dir}", weights_path=hf_clip_dir)
        assert m.weights_path == str(hf_clip_dir.resolve())
        with pytest.raises(registry.RegistryError, match="no such file"):
            registry.add_model(s, name="cnn", kind="checkpoint", role="suspect", capabilities="image",
                               architecture="small_cnn:small-cnn-32", weights_path=tmp_path)


# --- end to end: the privacy audit through each family -------------------------------------
def _checked(data: list[bytes], prefix: str):
    from audit_lib.images import check_image_bytes
    from audit_lib.registry import ImageLimits

    return [check_image_bytes(d, f"{prefix}{i}.png", **ImageLimits.from_settings().as_kwargs())
            for i, d in enumerate(data)]


@pytest.mark.parametrize("family", ["hf-clip", "timm"])
def test_privacy_audit_through_family(family, hf_clip_dir, timm_weights, db_url):
    from PIL import Image
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.commands.privacy import audit_pair
    from audit_lib.store import session_scope
    from audit_lib.store.models import Finding, ModelVersion

    if family == "hf-clip":
        arch, weights, caps = f"hf-clip:{hf_clip_dir}", hf_clip_dir, "image,text"
    else:
        arch, weights, caps = TIMM_ARCH, timm_weights, "image"
    faces = [(FACES / "s3" / f"{i}.pgm").read_bytes() for i in range(1, 8)]
    refs = [_png(Image.fromarray(a)) for a in np.load(CIFAR)["x_test"][100:112]]
    with session_scope(db_url) as s:
        model = registry.add_model(s, name=f"{family}-model", kind="checkpoint", role="suspect",
                                   capabilities=caps, architecture=arch, weights_path=weights)
        registry.add_reference_images(s, model, _checked(refs, "ref"))
        subject = registry.add_subject(s, name="Ada Example", legal_basis="test fixture", sex="f",
                                       photos=_checked(faces[:4], "photo"), claimed=_checked(faces[4:], "claim"))
        subject_id, model_id = subject.id, model.id
    out = audit_pair(subject_id, f"{family}-model", n_candidates=60, n_views=4, db_url=db_url)
    assert out["status"] == "succeeded"
    methods = {r["method"]: r for r in out["findings"]}
    assert set(methods) == {"idia", "encoder_mi"}
    if family == "hf-clip":  # the text tower answers IDIA's prompts
        assert methods["idia"]["decision"] != "not_applicable"
    else:
        assert methods["idia"]["decision"] == "not_applicable"
    assert methods["encoder_mi"]["decision"] != "not_applicable"
    with session_scope(db_url) as s:
        stored = s.scalars(select(Finding).where(Finding.subject_id == subject_id)).all()
        assert {f.method for f in stored} == {"idia", "encoder_mi"}
        version = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id))
        source = "transformers CLIPImageProcessor" if family == "hf-clip" else "timm eval transform"
        assert version.how == "weights" and version.preprocess["transform"]["source"] == source
        assert {f.model_version_id for f in stored} == {version.id}
