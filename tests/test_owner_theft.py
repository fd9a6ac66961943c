"""Theft simulation against an owner's own encoder (not a zoo entry), deployed as a remote
API with its own request/response shape, using the image sets the owner registered.

The fixture trains a small SimCLR encoder and two independent ones on shared CIFAR-10
images (cached under var/ownership-cache by a hash of their recipe and images), writes
the owner / public / downstream folders, registers them with `models data add`, serves the
owner's encoder through the reference server behind a reshaping proxy on 127.0.0.1 and
registers that as an API. Then `steal --target <the API>` runs end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit_lib.bench.theft import ReshapingProxy
from audit_lib.config import PROJECT_ROOT

torch = pytest.importorskip("torch")

CACHE = PROJECT_ROOT / "var" / "ownership-cache"
pytestmark = pytest.mark.xdist_group("owner-case")  # module caches: trained by one worker
ARCH = "small_cnn:small-cnn-32"
CLASSES = (0, 1, 6, 9)  # airplane, automobile, frog, truck
PER_CLASS = 24  # downstream images per class (12 train, 12 test)
N_OWNER, N_PUBLIC = 256, 160
BUDGETS, REF_BUDGET = "64,128", "128"
STEAL_EPOCHS = 8
QUERY_BUDGET = 300  # the API's budget per run: 8 canaries + 96 downstream + 128 surrogate fit
API_KEY_ENV = "AUDIT_CRED_ACME_EMBED"
API_KEY = "sk-acme-owner-test-5f1e"


# --- the owner's world: encoders, folders, an API with its own shape -------------------------

def _train(images: np.ndarray, seed: int, epochs: int) -> Path:
    """A SimCLR small CNN on ``images``, cached by a hash of everything that changes it."""
    from audit_lib.evidence import canonical_json, sha256_hex
    from audit_lib.zoo.recipes import SimCLRRecipe
    from audit_lib.zoo.train import save_checkpoint, train_simclr

    recipe = SimCLRRecipe(epochs=epochs, batch_size=64, lr=3e-3, warmup_steps=2)
    key = sha256_hex(canonical_json({"v": 1, "arch": ARCH, "recipe": recipe.as_dict(), "seed": seed,
                                     "images": sha256_hex(images.tobytes())}))
    path = CACHE / f"owner-theft-{key[:16]}.safetensors"
    if not path.is_file():
        net, _ = train_simclr(ARCH, images, recipe, seed=seed, progress=False)
        save_checkpoint(net.module, path)
    return path


def _write(folder: Path, images: np.ndarray, prefix: str = "img") -> None:
    from audit_lib.imaging import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        (folder / f"{prefix}-{i:04d}.png").write_bytes(png_bytes(im))


def _cli(*args: str):  # noqa: ANN202 - click Result
    from typer.testing import CliRunner

    from audit_lib.cli import app

    return CliRunner().invoke(app, list(args))


def _counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding, ModelImageSet, ModelVersion

    with session_scope() as s:
        return {t.__name__: int(s.scalar(select(func.count()).select_from(t)))
                for t in (AuditRun, EvidenceItem, Finding, ModelImageSet, ModelVersion)}


@pytest.fixture(scope="module")
def world(pg_database_url, tmp_path_factory):
    """Encoders trained, folders written and registered, the owner's API up (module scope:
    one store, one API, for the theft run and the refusals)."""
    from audit_lib.config import get_settings
    from audit_lib.encoders.adapter import resolve_adapter
    from audit_lib.server.testing import running_server
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.zoo.data import load_cifar10
    from tests.conftest import _clear

    cifar = load_cifar10()
    if cifar is None:
        pytest.skip("../shared/data/cifar10 is not present")
    _clear(pg_database_url)  # past the append-only triggers: other modules on this worker share the database
    root = tmp_path_factory.mktemp("owner-theft")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUDIT_DATABASE_URL", pg_database_url)
    mp.setenv("AUDIT_DATA_DIR", str(root / "var"))
    mp.setenv(API_KEY_ENV, API_KEY)
    get_settings.cache_clear()

    x = cifar.x_train
    owner_x = x[:N_OWNER]
    public_x = x[2000:2000 + N_PUBLIC]
    target_w = _train(owner_x, seed=1, epochs=3)
    ref_w = [_train(x[5000 + 400 * k:5256 + 400 * k], seed=7 + k, epochs=2) for k in range(2)]
    folders = {"owner": root / "owner", "public": root / "public", "downstream": root / "downstream"}
    _write(folders["owner"], owner_x)
    _write(folders["public"], public_x)
    for c in CLASSES:
        idx = np.flatnonzero(cifar.y_test == c)[:PER_CLASS]
        _write(folders["downstream"] / cifar.classes[c], cifar.x_test[idx], prefix=cifar.classes[c])
    adapter = resolve_adapter("encoder-audit", {
        "images": {"path": "/api/v2/vectors", "input_path": "payload.pictures", "item": {"png": "{b64}"},
                   "response": "result.items[*].vector"}, "embedding_dim": 128}).to_json()
    with running_server(ARCH, target_w, {API_KEY: {"name": "acme-owner"}}) as upstream, \
            ReshapingProxy(str(upstream)) as proxy:
        with session_scope() as s:
            registry.add_model(s, name="acme-encoder", kind="checkpoint", role="owned", capabilities="image",
                               architecture=ARCH, weights_path=target_w)
            for name, budget in (("acme-api", QUERY_BUDGET), ("acme-api-small", 100), ("acme-bare", None)):
                registry.add_model(s, name=name, kind="api", role="owned", capabilities="image",
                                   endpoint_url=proxy.url, adapter=adapter, credential_name=API_KEY_ENV,
                                   query_budget=budget)
            for k, w in enumerate(ref_w):
                registry.add_model(s, name=f"independent-{k}", kind="checkpoint", role="reference",
                                   capabilities="image", architecture=ARCH, weights_path=w)
        for name in ("acme-api", "acme-api-small"):
            res = _cli("models", "data", "add", "--model", name, "--owner", str(folders["owner"]),
                       "--public", str(folders["public"]), "--downstream", str(folders["downstream"]))
            assert res.exit_code == 0, res.output
        yield {"root": root, "folders": folders, "proxy": proxy, "data_dir": root / "var", "cifar": cifar}
    mp.undo()
    get_settings.cache_clear()


# --- models data add ------------------------------------------------------------------------

def test_models_data_add_copies_hashed_files_and_shows_them(world):
    from audit_lib import registry
    from audit_lib.evidence import sha256_hex
    from audit_lib.store import session_scope
    from audit_lib.ownership.owner_data import current_image_sets

    with session_scope() as s:
        model = registry.get_model(s, "acme-api")
        sets = current_image_sets(s, model.id)
        summary = registry.model_summary(s, model)
    assert set(sets) == {"owner", "public", "downstream"}
    assert sets["downstream"].classes == sorted(world["cifar"].classes[c] for c in CLASSES)
    assert (sets["owner"].n_images, sets["public"].n_images, sets["downstream"].n_images) == \
        (N_OWNER, N_PUBLIC, PER_CLASS * len(CLASSES))
    for role, row in sets.items():
        base = world["data_dir"] / row.folder
        assert row.folder == f"model-data/{model.id}/{role}/{row.manifest_sha256[:16]}"
        for entry in row.manifest:  # copied, named by content, hashes match
            data = (base / entry["path"]).read_bytes()
            assert sha256_hex(data) == entry["sha256"] and entry["path"].endswith(entry["sha256"] + ".png")
    assert not list((world["data_dir"] / "model-data").glob(f"{model.id}/.staging-*"))
    assert summary["image_sets"]["public"]["manifest_sha256"] == sets["public"].manifest_sha256
    shown = json.loads(_cli("models", "data", "show", "--model", "acme-api", "--json").output)
    assert shown["image_sets"]["downstream"]["n_images"] == PER_CLASS * len(CLASSES)
    again = _cli("models", "data", "add", "--model", "acme-api", "--public", str(world["folders"]["public"]))
    assert again.exit_code == 0 and sets["public"].manifest_sha256[:16] in again.output  # unchanged set


def test_models_data_add_refusals_write_nothing(world, tmp_path):
    folders = world["folders"]
    one_class = tmp_path / "one-class"
    _write(one_class / "airplane", world["cifar"].x_test[:3])
    broken = tmp_path / "broken"
    _write(broken / "a", world["cifar"].x_test[:2])
    _write(broken / "b", world["cifar"].x_test[2:4])
    (broken / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    (overlap / "x.png").write_bytes(next(folders["owner"].iterdir()).read_bytes())
    _write(overlap, world["cifar"].x_test[50:52], prefix="fresh")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--model", "acme-bare", "--downstream", str(one_class)], "1 class sub-folder"),
        (["--model", "acme-bare", "--downstream", str(broken)], "bad.png"),
        (["--model", "acme-bare", "--owner", str(folders["owner"]), "--public", str(overlap)],
         "also in the owner's images"),
        (["--model", "acme-api", "--public", str(overlap)], "also in the owner's images"),  # vs the registered owner set
        (["--model", "acme-bare", "--public", str(empty)], "no image files"),
        (["--model", "no-such-model", "--public", str(folders["public"])], "no such model"),
        (["--model", "acme-bare"], "--owner DIR"),
    ]
    before = _counts()
    files_before = sorted(p for p in (world["data_dir"] / "model-data").rglob("*"))
    for args, words in cases:
        res = _cli("models", "data", "add", *args)
        assert res.exit_code == 2, (args, res.output)
        assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert "Traceback" not in res.output
    assert _counts() == before
    assert sorted(p for p in (world["data_dir"] / "model-data").rglob("*")) == files_before


# --- steal against the owner's API ----------------------------------------------------------

@pytest.fixture(scope="module")
def api_theft(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("theft-out")
    sent_before = world["proxy"].inputs
    res = _cli("steal", "--target", "acme-api", "--budgets", BUDGETS, "--reference-budget", REF_BUDGET,
               "--epochs", str(STEAL_EPOCHS), "--lr", "0.05", "--image-size", "32", "--run-key", "owner-api-theft",
               "--out", str(out))
    return res, out, world["proxy"].inputs - sent_before


def test_theft_against_an_api_counts_records_and_names_its_sets(world, api_theft):
    from sqlalchemy import func, select

    from audit_lib import registry
    from audit_lib.evidence import verify_chain
    from audit_lib.ownership.owner_data import current_image_sets
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding, ModelVersion

    res, out, forwarded = api_theft
    assert res.exit_code == 0, res.output
    n_down = PER_CLASS * len(CLASSES)
    with session_scope() as s:
        api = registry.get_model(s, "acme-api")
        sets = current_image_sets(s, api.id)
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == "owner-api-theft"))
        assert run.status == "succeeded"
        finding = s.scalar(select(Finding).where(Finding.run_id == run.id))
        api_versions = [v.id for v in s.scalars(select(ModelVersion).where(ModelVersion.model_id == api.id))]

        def n(**where) -> int:
            q = select(func.count(EvidenceItem.id)).where(EvidenceItem.run_id == run.id)
            for k, v in where.items():
                q = q.where(getattr(EvidenceItem, k) == v)
            return int(s.scalar(q))

        by_api = select(func.count(EvidenceItem.id)).where(EvidenceItem.run_id == run.id,
                                                          EvidenceItem.model_version_id.in_(api_versions),
                                                          EvidenceItem.kind != "finding")
        api_items = int(s.scalar(by_api))
        assert verify_chain(s, run).ok
        theft_items, theft_cached, canaries = n(kind="theft"), n(kind="theft", cached=True), n(kind="canary")
        findings_recorded = n(kind="finding")
        details = finding.details
    # every query the API answered is counted against its budget and recorded as evidence:
    # 8 canaries + the downstream set + 128 surrogates (the 64-query copy's answers are reused)
    assert forwarded == 8 + n_down + 128 == details["queries_sent"]
    assert details["query_budget"] == QUERY_BUDGET and details["queries_sent"] <= QUERY_BUDGET
    assert (theft_items, theft_cached, canaries) == (64 + 128, 64, 8)
    assert api_items == 8 + n_down + 64 + 128 and findings_recorded == 1
    # the finding names its image sets by manifest hash and where its null came from
    assert details["image_sets"] == {role: row.manifest_sha256 for role, row in sets.items()}
    assert details["target_kind"] == "api" and details["data_source"] == "registered"
    assert details["null_source"]["models"] == ["independent-0", "independent-1"]
    assert details["null_source"]["source"] == "all registered reference models"
    assert details["null_too_small_for_alpha"] and any("only 2 independent" in a for a in details["assumptions"])
    assert finding.decision == "negative"  # two null models cannot reach alpha 0.05, and it says so
    # the stolen copy: the statistic is its agreement at the reference budget; it imitates the API
    point = [p for p in details["curve"] if p["budget"] == 128][0]
    assert finding.statistic == pytest.approx(point["agreement"])
    assert {p["budget"] for p in details["curve"]} == {64, 128}
    assert point["cosine"] > 0.5, point  # feature cosine of the copy with the API (after a linear map)
    saved = json.loads((out / "theft-curve.json").read_text())
    assert saved["image_sets"] == details["image_sets"] and (out / "theft-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "independent encoders: all registered reference models" in res.output


def test_bad_theft_input_is_refused_before_any_query(world, api_theft):
    sent = world["proxy"].inputs
    before = _counts()
    size = ["--image-size", "32"]
    cases = [
        (["--target", "acme-api", "--budgets", "10", "--reference-budget", "10"], "--image-size N"),
        (["--target", "acme-bare", "--budgets", "10", *size], "models data add --model acme-bare"),
        (["--target", "acme-api", "--budgets", "5%", *size], "--train-size"),
        (["--target", "acme-api", "--budgets", "10", "--defence", "noise:0.1", *size], "is an API"),
        (["--target", "acme-api-small", "--budgets", "100", "--reference-budget", "100", *size],
         "query budget of 100"),
        (["--target", "acme-api", "--budgets", "500", "--reference-budget", "500", *size], "exceeds the 160 public"),
        (["--target", "acme-api", "--budgets", "10", "--reference-budget", "10", "--independent", "acme-encoder",
          *size], "role owned"),
        (["--target", "acme-api", "--budgets", "10", "--reference-budget", "10", "--stolen-architecture",
          "resnet:18", *size], "--stolen-architecture"),
    ]
    for args, words in cases:
        res = _cli("steal", *args, "--epochs", "1")
        assert res.exit_code == 2, (args, res.output)
        assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert world["proxy"].inputs == sent  # nothing reached the API
    assert _counts() == before  # no run, no evidence, no finding, no model version


# --- the zoo fallback and the enrolment step's theft parameters (no training) ----------------

def _tiny_owned(root: Path, name: str, *, with_data: bool):  # noqa: ANN202 - the model id
    """A registered owned small_cnn checkpoint (random weights) and, optionally, tiny
    registered public and downstream sets (5 public images, 2 classes of 4)."""
    from audit_lib import registry
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import save_weights
    from audit_lib.ownership.owner_data import add_model_data
    from audit_lib.store import session_scope

    rng = np.random.default_rng(3)
    weights = root / f"{name}.safetensors"
    save_weights(build(ARCH).module, weights)
    with session_scope() as s:
        model = registry.add_model(s, name=name, kind="checkpoint", role="owned", capabilities="image",
                                   architecture=ARCH, weights_path=weights)
        if with_data:
            _write(root / "public", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
            for c in ("cat", "dog"):
                _write(root / "downstream" / c, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), prefix=c)
            add_model_data(s, model, public=root / "public", downstream=root / "downstream")
        return model.id, weights


def test_auto_data_falls_back_to_the_zoo_only_for_zoo_entries(sqlite_db_url, tmp_path):
    """`steal --data auto` on a checkpoint that is not a zoo entry and has no registered data
    is refused, naming `models data add`, before any query; the same weights listed in a zoo
    manifest count as a zoo entry (by path and by sha256)."""
    from dataclasses import replace

    from audit_lib.encoders.loading import file_sha256
    from audit_lib.ownership.theft import is_zoo_checkpoint
    from audit_lib.store.models import AuditedModel
    from audit_lib.zoo.manifest import ZooEntry, ZooManifest

    _, weights = _tiny_owned(tmp_path, "own-encoder", with_data=False)
    other = tmp_path / "zoo-entry.safetensors"
    other.write_bytes(b"not the owner's weights")
    entry = ZooEntry(name="simclr-target", role="target", architecture=ARCH, weights_path=str(other),
                     sha256=file_sha256(other), config_hash="x", capabilities=["image"], seed=0, recipe={},
                     splits={})
    (tmp_path / "zoo" / "ci").mkdir(parents=True)
    ZooManifest("ci", str(tmp_path / "zoo" / "ci"), "cpu", {}, {}, [entry]).save(tmp_path / "zoo" / "ci" /
                                                                                 "manifest.json")
    before = _counts()
    res = _cli("steal", "--target", "own-encoder", "--budgets", "2", "--reference-budget", "2",
               "--zoo-cache", str(tmp_path / "zoo"))
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "not a reference-zoo entry" in res.output and "models data add --model own-encoder" in res.output
    assert _counts() == before
    owned = AuditedModel(name="own", kind="checkpoint", role="owned", architecture=ARCH, weights_path=str(weights))
    manifest = ZooManifest("ci", "", "cpu", {}, {}, [entry])
    assert not is_zoo_checkpoint(owned, manifest)
    assert is_zoo_checkpoint(owned, ZooManifest("ci", "", "cpu", {}, {}, [replace(entry, weights_path=str(weights))]))
    assert is_zoo_checkpoint(owned, ZooManifest("ci", "", "cpu", {}, {}, [replace(entry, sha256=file_sha256(weights))]))
    api = AuditedModel(name="api", kind="api", role="owned", endpoint_url="http://127.0.0.1:9")
    assert not is_zoo_checkpoint(api, manifest)


def test_enrolment_theft_step_takes_the_training_set_size_from_the_conf(sqlite_db_url, tmp_path):
    """The model_enrolment DAG's theft step on a model with registered data: budgets given as
    shares need `theft_train_size`; given, it reaches the plan (10% of 100,000 is more than the
    5 public images: refused before any query)."""
    from audit_lib.pipelines.enrolment import run_step

    model_id, _ = _tiny_owned(tmp_path, "own-enc", with_data=True)
    before = _counts()
    with pytest.raises(ValueError, match="needs its size"):
        run_step("theft_risk", model_id, "enrol-test", {"theft_budgets": "10%"})
    with pytest.raises(ValueError, match="10000 queries exceeds the 5 public"):
        run_step("theft_risk", model_id, "enrol-test", {"theft_budgets": "10%", "theft_train_size": 100_000,
                                                          "theft_image_size": 32})
    assert _counts() == before
