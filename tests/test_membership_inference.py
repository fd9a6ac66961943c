"""EncoderMI: seeded views, similarity features, the T/V/S rules, the calibrated decision,
bad input."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from audit_lib.methods import MethodInputError
from audit_lib.methods.membership_inference import run_encodermi, view_features
from audit_lib.methods.mi_classifiers import MIClassifier, pairwise_similarities, train_classifier
from audit_lib.methods.views import make_views
from audit_lib.stats import roc_auc


def png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth-ish real-looking content: upsampled noise
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class FakeEncoder:
    """An 'overfitted' fake encoder: it knows which source image each view came from (the
    views are deterministic), and answers base(source) + noise(view) with less noise for
    training members."""

    def __init__(self, members: list[bytes], nonmembers: list[bytes], n_views: int = 10,
                 member_noise: float = 0.5, nonmember_noise: float = 1.0, dim: int = 32) -> None:
        self.dim = dim
        self.source: dict[bytes, tuple[bytes, float]] = {}
        for imgs, noise in ((members, member_noise), (nonmembers, nonmember_noise)):
            for img in imgs:
                for v in make_views(img, n_views):
                    self.source[v] = (img, noise)
        self.n_queries = 0

    capabilities = frozenset({"image"})
    model_version = "f" * 64

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @staticmethod
    def _vec(key: bytes, dim: int) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
        return np.random.default_rng(seed).standard_normal(dim)

    def encode_images(self, images, *, kind="image"):
        self.n_queries += len(images)
        out = []
        for v in images:
            src, noise = self.source[v]
            out.append(self._vec(src, self.dim) + noise * self._vec(v, self.dim))
        return np.asarray(out, dtype=np.float32)


def test_views_are_deterministic_distinct_pngs():
    img = png(1)
    a, b = make_views(img, 10), make_views(img, 10)
    assert a == b
    assert len(set(a)) == 10
    assert all(v.startswith(b"\x89PNG") for v in a)
    assert make_views(png(2), 10) != a
    assert Image.open(io.BytesIO(a[0])).size == (32, 32)


def test_pairwise_similarities():
    emb = np.random.default_rng(0).standard_normal((10, 8))
    s = pairwise_similarities(emb)
    assert s.shape == (45,)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert s[0] == pytest.approx(x[0] @ x[1]) and s[-1] == pytest.approx(x[8] @ x[9])
    assert np.allclose(pairwise_similarities(np.ones((3, 4))), 1.0)
    with pytest.raises(ValueError):
        pairwise_similarities(np.zeros((3, 4)))


def _synthetic_features(n: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + shift + 0.15 * rng.standard_normal((n, 45)), -1, 1)


@pytest.mark.parametrize("rule", ["T", "V", "S"])
def test_rules_learn_on_shadow_and_round_trip_through_safetensors(rule, tmp_path):
    pos, neg = _synthetic_features(200, 0.1, 1), _synthetic_features(200, 0.0, 2)
    clf = train_classifier(rule, pos, neg, n_views=10, seed=0, epochs=100)
    tpos, tneg = _synthetic_features(100, 0.1, 3), _synthetic_features(100, 0.0, 4)
    auc = roc_auc(clf.score(tpos), clf.score(tneg))
    assert auc > 0.9
    acc = (clf.published_member(clf.score(tpos)).mean() + (~clf.published_member(clf.score(tneg))).mean()) / 2
    assert acc > 0.8
    path = clf.save(tmp_path / f"{rule}.safetensors")
    again = MIClassifier.load(path)
    assert again.rule == rule and again.threshold == pytest.approx(clf.threshold)
    assert np.allclose(again.score(tpos), clf.score(tpos), atol=1e-6)
    # the same seed trains the same classifier
    twin = train_classifier(rule, pos, neg, n_views=10, seed=0, epochs=100)
    assert np.allclose(twin.score(tpos), clf.score(tpos))


def test_set_classifier_is_permutation_invariant():
    pos, neg = _synthetic_features(50, 0.1, 1), _synthetic_features(50, 0.0, 2)
    clf = train_classifier("S", pos, neg, n_views=10, epochs=20)
    perm = np.random.default_rng(0).permutation(45)
    assert np.allclose(clf.score(pos), clf.score(pos[:, perm]), atol=1e-6)


def test_classifier_file_must_be_safetensors(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(Exception):
        MIClassifier.load(bad)


@pytest.fixture(scope="module")
def collection():
    members = [png(100 + i) for i in range(12)]
    nonmembers = [png(200 + i) for i in range(60)]
    return members, nonmembers, FakeEncoder(members, nonmembers)


def test_members_are_found_and_p_values_of_nonmembers_are_valid(collection):
    members, nonmembers, enc = collection
    start = enc.n_queries
    refs, held_out = nonmembers[:40], nonmembers[40:]
    f = run_encodermi(enc, members[:6], refs, rule="T")
    assert f.decision == "positive" and f.p_value < 1e-3
    # every member outscores all 40 references: the smallest rank p-value, 1/41; Holm over
    # 6 images cannot reach 0.05 with it (6/41), and says so
    assert [im["p_value"] for im in f.details["images"]] == [pytest.approx(1 / 41)] * 6
    assert f.details["n_members_holm"] == 0
    assert f.details["smallest_holm_p_reachable"] == pytest.approx(6 / 41)
    assert enc.n_queries - start == (6 + 40) * 10
    two = run_encodermi(enc, members[:2], refs, rule="T")
    assert two.details["n_members_holm"] == 2
    assert f.details["rule"] == "T" and len(f.details["images"]) == 6
    assert len(f.details["reference_scores"]) == 40
    assert f.details["n_queries"] == (6 + 40) * 10
    assert all(0 < im["p_value"] <= im["p_holm"] <= 1 for im in f.details["images"])
    g = run_encodermi(enc, held_out, refs, rule="T")
    assert g.decision == "negative"
    assert g.details["n_members_holm"] == 0
    ps = np.array([im["p_value"] for im in g.details["images"]])
    assert np.median(ps) > 0.2  # not concentrated near zero
    # a re-run asks for byte-identical views
    before = dict(enc.source)
    run_encodermi(enc, members[:6], refs, rule="T")
    assert enc.source == before


def test_v_and_s_rules_run_with_a_trained_classifier(collection):
    members, nonmembers, enc = collection
    pos = view_features(enc, members[6:], 10)
    neg = view_features(enc, nonmembers[40:], 10)
    for rule in ("V", "S"):
        clf = train_classifier(rule, pos, neg, n_views=10, epochs=200)
        f = run_encodermi(enc, members[:6], nonmembers[:40], rule=rule, classifier=clf)
        assert f.decision == "positive"
        assert f.details["images"][0]["published_member"] in (True, False)


def test_bad_input_is_refused(collection, tmp_path, monkeypatch):
    members, nonmembers, enc = collection
    with pytest.raises(MethodInputError, match="reference"):
        run_encodermi(enc, members[:2], nonmembers[:5])
    with pytest.raises(MethodInputError, match="is also one of the model.s reference non-members"):
        run_encodermi(enc, members[:2] + nonmembers[:1], nonmembers[:20])
    with pytest.raises(MethodInputError, match="no claimed"):
        run_encodermi(enc, [], nonmembers[:20])
    monkeypatch.setenv("AUDIT_DATA_DIR", str(tmp_path))
    from audit_lib.config import get_settings

    get_settings.cache_clear()
    try:
        with pytest.raises(MethodInputError, match="no classifier trained"):
            run_encodermi(enc, members[:2], nonmembers[:20], rule="V")
    finally:
        get_settings.cache_clear()
    with pytest.raises(MethodInputError, match="cannot be decoded"):
        run_encodermi(enc, [b"not an image"], nonmembers[:20])


# --- end to end on the ci zoo's overfitted SimCLR target ------------------------------------

@pytest.fixture(scope="module")
def zoo_mi(ci_zoo):
    """PNG images of the zoo's splits and the three rules trained on the shadow encoder
    (shadow data only; the target is never used for training or thresholds)."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.eval.privacy import mi_split, train_shadow_classifiers
    from audit_lib.zoo.data import load_images

    split = mi_split(ci_zoo, load_images(), n_each=60, n_references=60, seed=0)
    shadow_entry = ci_zoo.by_role("membership-shadow")[0]
    shadow = LocalEncoder.from_checkpoint(shadow_entry.architecture, shadow_entry.weights_path)
    clfs = train_shadow_classifiers(shadow, split.shadow_members, split.shadow_nonmembers, save=False)
    return split, clfs


def _register_target(db_url: str, entry) -> int:
    from pathlib import Path

    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        return registry.add_model(s, name=entry.name, kind="checkpoint", role="suspect", capabilities="image",
                                  architecture=entry.architecture, weights_path=Path(entry.weights_path)).id


def _open(db_url: str, model_id: int, run_key: str):
    from audit_lib import registry
    from audit_lib.encoders import open_handle
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        model = registry.get_model(s, model_id)
    return open_handle(model, run_key=run_key, db_url=db_url)


def test_encodermi_end_to_end_local(ci_zoo, zoo_mi, db_url):
    split, clfs = zoo_mi
    target = ci_zoo.by_role("membership-target")[0]
    h = _open(db_url, _register_target(db_url, target), "mi-e2e")
    claimed_members = split.members[:20]
    # three disjoint collections of 20 known non-members: a valid test at alpha = 0.05 flags
    # any one of them with probability 0.05, so one draw is not a fair check; under H0 two or
    # more of three at p <= 0.05 has probability < 0.01
    non_sets = [split.test_nonmembers[i:i + 20] for i in (0, 20, 40)]
    for rule in ("T", "V", "S"):
        pos = run_encodermi(h, claimed_members, split.references, rule=rule, classifier=clfs[rule])
        assert pos.decision == "positive", (rule, pos.p_value)
        assert pos.effect_size > 0.7
        negs = [run_encodermi(h, non, split.references, rule=rule, classifier=clfs[rule]) for non in non_sets]
        assert sum(n.p_value <= 0.05 for n in negs) <= 1, (rule, [n.p_value for n in negs])
        ps = np.array([im["p_value"] for n in negs for im in n.details["images"]])
        assert np.mean(ps <= 0.05) <= 0.2 and np.median(ps) > 0.2  # not concentrated near zero
    # views are seeded per image: re-runs were answered from the cache
    misses = h.misses
    run_encodermi(h, claimed_members, split.references, rule="T", classifier=clfs["T"])
    assert h.misses == misses
    assert misses == (20 + 60 + 60) * 10


def test_encodermi_end_to_end_through_the_reference_server(ci_zoo, zoo_mi, db_url, monkeypatch):
    from audit_lib.server.testing import running_server

    split, clfs = zoo_mi
    target = ci_zoo.by_role("membership-target")[0]
    monkeypatch.setenv("AUDIT_CRED_MI_TEST", "sk-mi-test")
    with running_server(target.architecture, target.weights_path, keys={"sk-mi-test": {}}) as url:
        from audit_lib import registry
        from audit_lib.store import session_scope

        with session_scope(db_url) as s:
            model_id = registry.add_model(s, name="simclr-api", kind="api", role="suspect",
                                          capabilities="image", endpoint_url=url, adapter={"max_batch": 256},
                                          credential_name="AUDIT_CRED_MI_TEST").id
        h = _open(db_url, model_id, "mi-remote")
        pos = run_encodermi(h, split.members[:20], split.references, rule="T", classifier=clfs["T"])
        negs = [run_encodermi(h, split.test_nonmembers[i:i + 20], split.references, rule="T",
                              classifier=clfs["T"]) for i in (0, 20, 40)]
        assert url.stats.embed_requests > 0
    assert pos.decision == "positive"
    assert sum(n.p_value <= 0.05 for n in negs) <= 1, [n.p_value for n in negs]  # see the local test
    assert pos.details["n_queries"] == (20 + 60) * 10
