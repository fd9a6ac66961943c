"""The zoo's training kit: losses against a re-derivation, augmentations, data loaders,
seeded determinism, and the build machinery on the quick ``smoke`` profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from audit_lib.zoo import data as zdata  # noqa: E402
from audit_lib.zoo.augment import BatchAugment, view_transform  # noqa: E402
from audit_lib.zoo.losses import clip_loss, nt_xent  # noqa: E402
from audit_lib.zoo.recipes import AugmentConfig, SimCLRRecipe  # noqa: E402


def test_nt_xent_matches_the_papers_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        j = (i + 3) % 6
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(6) if k != i)
        total += -math.log(num / den)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / 6, rel=1e-5)
    # identical views score lower than unrelated ones
    assert float(nt_xent(z1, z1.clone(), t)) < float(nt_xent(z1, z2, t))
    with pytest.raises(ValueError, match="views must both be"):
        nt_xent(z1, z2[:2])


def test_clip_loss_matches_the_papers_pseudocode_and_groups_merge_positives():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    i_n, t_n = torch.nn.functional.normalize(img, dim=1), torch.nn.functional.normalize(txt, dim=1)
    logits = 10.0 * i_n @ t_n.T
    labels = torch.arange(4)
    expected = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert float(clip_loss(img, txt, 10.0)) == pytest.approx(float(expected), rel=1e-6)
    # all-distinct groups are plain CLIP; a shared group spreads the target over its pairs
    assert float(clip_loss(img, txt, 10.0, torch.arange(4))) == pytest.approx(float(expected), rel=1e-6)
    same_person = torch.tensor([1, 1, 2, 3])
    soft = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    exp2 = (torch.nn.functional.cross_entropy(logits, soft) + torch.nn.functional.cross_entropy(logits.T, soft)) / 2
    assert float(clip_loss(img, txt, 10.0, same_person)) == pytest.approx(float(exp2), rel=1e-6)


def test_batch_augment_is_seeded_bounded_and_each_operation_does_its_job():
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    aug = BatchAugment(AugmentConfig())
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(BatchAugment(AugmentConfig(**off))(x, g), x, atol=1e-5)
    flipped = BatchAugment(AugmentConfig(**{**off, "flip_p": 1.0}))(x, g)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    gray = BatchAugment(AugmentConfig(**{**off, "grayscale_p": 1.0}))(x, g)
    assert torch.allclose(gray[:, 0], gray[:, 2]) and not torch.allclose(gray, x)
    cropped = BatchAugment(AugmentConfig(**{**off, "crop_scale": (0.1, 0.1)}))(x, g)
    assert not torch.allclose(cropped, x, atol=0.05)
    with pytest.raises(ValueError, match="crop_scale"):
        BatchAugment(AugmentConfig(crop_scale=(0.5, 0.2)))


def test_view_transform_is_torchvisions_pipeline():
    tf = view_transform(32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale"]
    out = tf(torch.rand(3, 40, 40))
    assert out.shape == (3, 32, 32)


def test_cifar_and_faces_load_from_the_shared_data():
    cifar = zdata.load_cifar10()
    faces = zdata.load_faces()
    if cifar is None or faces is None:
        pytest.skip("../shared/data is not on this machine")
    assert cifar.x_train.shape == (10000, 32, 32, 3) and cifar.x_test.shape == (2000, 32, 32, 3)
    assert len(cifar.classes) == 10 and set(np.unique(cifar.y_test)) == set(range(10))
    assert len(faces) == 40 and all(len(p.photos) == 10 for p in faces)
    assert len({p.name for p in faces}) == 40
    assert [p.person_id for p in faces if p.sex == "f"] == ["s8", "s10", "s32", "s35"]
    px = zdata.face_pixels(faces[0].photos[:2], 64)
    assert px.shape == (2, 64, 64, 3) and px.dtype == np.uint8
    assert (px[..., 0] == px[..., 2]).all()  # greyscale photos as RGB


def test_digits_fallback_is_real_and_shaped_like_cifar():
    d = zdata.load_digits_rgb()
    assert d.name == "digits" and d.x_train.shape[1:] == (32, 32, 3) and d.x_train.dtype == np.uint8
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.std() > 20  # real strokes, not a blank image


def test_split_indices_are_disjoint_and_refuse_too_many():
    s = zdata.split_indices(100, {"a": 10, "b": 20}, seed=3)
    assert len(s["a"]) == 10 and len(s["b"]) == 20 and len(s["rest"]) == 70
    assert not set(s["a"]) & set(s["b"]) and set(s["a"]) | set(s["b"]) | set(s["rest"]) == set(range(100))
    with pytest.raises(zdata.DataError, match="need 120 images"):
        zdata.split_indices(100, {"a": 60, "b": 60}, seed=3)


def test_same_seed_same_weights_hash_on_cpu(tmp_path):
    from audit_lib.zoo.train import save_checkpoint, train_simclr

    images = zdata.load_digits_rgb().x_train[:48]
    recipe = SimCLRRecipe(epochs=1, batch_size=16, max_steps=3, warmup_steps=1)
    hashes = []
    for i, seed in enumerate((5, 5, 6)):
        net, stats = train_simclr("small_cnn:small-cnn-32", images, recipe, seed=seed, progress=False)
        assert stats.steps == 3 and math.isfinite(stats.final_loss)
        hashes.append(save_checkpoint(net.module, tmp_path / f"{i}.safetensors"))
    assert hashes[0] == hashes[1] != hashes[2]


def test_training_lowers_the_loss_and_checkpoint_loads_in_the_handle(tmp_path):
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.zoo.evaluate import embed
    from audit_lib.zoo.train import save_checkpoint, train_simclr

    images = zdata.load_digits_rgb().x_train[:32]
    recipe = SimCLRRecipe(epochs=15, batch_size=32, warmup_steps=2, augment=AugmentConfig(crop_scale=(0.6, 1.0)))
    net, stats = train_simclr("small_cnn:small-cnn-32", images, recipe, seed=0, progress=False)
    assert stats.final_loss < stats.first_loss - 0.2
    sha = save_checkpoint(net.module, tmp_path / "w.safetensors")
    handle = LocalEncoder.from_checkpoint("small_cnn:small-cnn-32", tmp_path / "w.safetensors", device="cpu")
    assert handle.model_version == sha
    import io

    from PIL import Image

    pngs = []
    for arr in images[:4]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        pngs.append(buf.getvalue())
    np.testing.assert_allclose(handle.encode_images(pngs), embed(net, images[:4]), rtol=1e-4, atol=1e-4)


def test_bad_training_input_is_refused():
    from audit_lib.zoo.train import resolve_device, train_clip, train_simclr

    with pytest.raises(ValueError, match=r"must be uint8 \(N, 32, 32, 3\)"):
        train_simclr("small_cnn:small-cnn-32", np.zeros((4, 16, 16, 3), np.uint8), SimCLRRecipe(), seed=0)
    with pytest.raises(ValueError, match="not an image-text"):
        train_clip("small_cnn:small-cnn-32", np.zeros((2, 32, 32, 3), np.uint8), [["a"], ["b"]], [0, 1],
                   __import__("audit_lib.zoo.recipes", fromlist=["ClipRecipe"]).ClipRecipe(), seed=0)
    with pytest.raises(ValueError, match="device 'tpu'"):
        resolve_device("tpu")


def test_smoke_profile_builds_caches_and_is_deterministic(tmp_path, monkeypatch):
    """Two fresh builds of the same profile give the same weights; a second build in the
    same cache reuses every entry; the manifest records splits and people."""
    from audit_lib.zoo.build import build_zoo
    from audit_lib.zoo.manifest import ZooManifest

    if zdata.load_faces() is None:
        pytest.skip("../shared/data is not on this machine")
    a = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path / "a", progress=False)
    b = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path / "b", progress=False,
                  only={"tiny-clip", "independent-01"})
    assert [e.sha256 for e in b.entries] == [a.entry("tiny-clip").sha256, a.entry("independent-01").sha256]
    assert not any(e.cached for e in a.entries)
    again = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path / "a", progress=False)
    assert all(e.cached for e in again.entries) and [e.sha256 for e in again.entries] == [e.sha256 for e in a.entries]
    loaded = ZooManifest.load(tmp_path / "a" / "smoke" / "manifest.json")
    assert [e.name for e in loaded.entries] == ["tiny-clip", "simclr-target", "simclr-shadow", "independent-01"]
    clip = loaded.entry("tiny-clip")
    people = clip.people
    assert sum(p.member for p in people) == 20 and all(len(p.heldout_photos) == 3 for p in people)
    assert all(not set(p.train_photos) & set(p.heldout_photos) for p in people)
    assert {p.caption_mode for p in people} == {"named", "generic", "absent"}
    target = loaded.entry("simclr-target")
    assert not set(target.splits["members"]) & set(target.splits["nonmembers"])
    shadow = loaded.entry("simclr-shadow")
    assert not set(shadow.splits["members"]) & set(target.splits["members"])
    with pytest.raises(KeyError, match="have: tiny-clip"):
        loaded.entry("nope")
    # a changed weights file is noticed and rebuilt, not trusted
    w = tmp_path / "a" / "smoke" / next(p.name for p in (tmp_path / "a" / "smoke").iterdir()
                                       if p.name.startswith("independent-01"))
    (w / "weights.safetensors").write_bytes(b"tampered")
    rebuilt = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path / "a", progress=False,
                        only={"independent-01"})
    assert [e.name for e in rebuilt.entries] == ["independent-01"] and not rebuilt.entries[0].cached
    assert rebuilt.entries[0].sha256 == a.entry("independent-01").sha256


def test_fallback_without_shared_data_skips_identity_and_uses_digits(tmp_path, monkeypatch):
    from audit_lib.config import get_settings
    from audit_lib.zoo.build import build_zoo

    monkeypatch.setenv("AUDIT_SHARED_DATA_DIR", str(tmp_path / "absent"))
    get_settings.cache_clear()
    try:
        m = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path, progress=False,
                      only={"tiny-clip", "simclr-target"})
    finally:
        get_settings.cache_clear()
    assert m.image_set["name"] == "digits"
    assert [s["name"] for s in m.skipped] == ["tiny-clip"] and "faces" in m.skipped[0]["reason"]
    assert [e.name for e in m.entries] == ["simclr-target"]
    assert json.loads((tmp_path / "smoke" / "manifest-partial.json").read_text())["image_set"]["name"] == "digits"


def test_an_entry_cached_under_another_profile_is_copied_not_retrained(tmp_path):
    """Same config hash under another profile's folder (the demo profile's entries are the ci
    profile's): the entry is copied, marked cached, with the same weights; none is trained."""
    from audit_lib.zoo.build import build_zoo
    from audit_lib.zoo.profiles import get_profile

    first = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path, progress=False,
                      only={"independent-01"})
    (tmp_path / "smoke").rename(tmp_path / "other")
    again = build_zoo("smoke", device="cpu", register=False, cache_root=tmp_path, progress=False,
                      only={"independent-01"})
    assert again.entries[0].cached and again.entries[0].sha256 == first.entries[0].sha256
    assert (tmp_path / "other" / Path(again.entries[0].weights_path).parent.name).is_dir()  # left in place
    ci, demo = get_profile("ci"), get_profile("demo")
    assert {e.name for e in demo.image_entries} == {"simclr-target", "independent-01", "independent-02",
                                                     "independent-03"}
    assert all(e in ci.image_entries for e in demo.image_entries) and demo.clip == ci.clip
    assert (demo.split_seed, demo.split_sizes) == (ci.split_seed, ci.split_sizes)
