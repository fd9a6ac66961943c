"""Ownership on the owner's own encoder (not a zoo entry): the watermark and the fingerprint
enrolled from the owner's REGISTERED image sets, the independence null from a registered
reference model topped up with independents the enrolment trains itself, and verification
of a stolen copy and a fine-tuned copy (positive, the fine-tuned one behind the reference
server's HTTP API) and of an independently trained encoder (negative); then the same through
the ``model_enrolment`` and ``ownership_audit`` DAGs.

Everything is trained here on real CIFAR-10 images (../shared/data), small on purpose (2
shared CPU cores) and cached by config hash under var/ownership-cache and var/fingerprint,
so only the first run on a machine trains.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

pytest.importorskip("torch")

from audit_lib.config import PROJECT_ROOT  # noqa: E402

CASE_CACHE = PROJECT_ROOT / "var" / "ownership-cache" / "owner-case"
pytestmark = pytest.mark.xdist_group("owner-case")  # module caches: trained by one worker
ARCH = "small_cnn:small-cnn-32"
ALPHA = 0.05  # a small null: rank p floors at 1/(K + 1); the findings say when the t tail decides
API_KEY_ENV = "AUDIT_CRED_TEST_OWNER"
OWNED_API_KEY_ENV = "AUDIT_CRED_TEST_OWNED"
N_OWNED_TRAIN, N_OWNER, N_PUBLIC, N_INDEPENDENT, PER_CLASS = 512, 256, 400, 800, 20
# The model_enrolment DAG's defaults for these (the DAG test reuses the trained caches).
WM_STEPS, WM_CONTROLS, N_FP, FP_STEPS, NULL_MIN, DOWNSTREAM_PER_CLASS = 150, 39, 16, 60, 3, 30


def _cached_network(name: str, spec: dict, make):  # noqa: ANN001, ANN202 - Network
    """A network trained by ``make()``, cached under CASE_CACHE by a hash of ``spec``."""
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import load_into, read_state_dict, save_weights

    key = hashlib.sha256(json.dumps({"v": 1, **spec}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = CASE_CACHE / f"{name}-{key}.safetensors"
    if not path.is_file():
        save_weights(make().module, path)
    net = build(ARCH)
    load_into(net.module, read_state_dict(path), str(path))
    net.module.eval()
    return net, path


@dataclass(frozen=True)
class Case:
    owned_weights: Path
    reference_weights: Path
    folders: dict[str, Path]
    independent_images: np.ndarray


@pytest.fixture(scope="session")
def owner_case(tmp_path_factory) -> Case:
    """The owner's encoder (SimCLR on 512 CIFAR-10 training images), the owner's, public and
    downstream image folders, and a reference encoder trained independently."""
    from PIL import Image

    from audit_lib.zoo.data import load_images
    from audit_lib.zoo.recipes import SimCLRRecipe
    from audit_lib.zoo.suspects import SuspectZooConfig, train_independent
    from audit_lib.zoo.train import train_simclr

    images = load_images()
    if images.name != "cifar10":
        pytest.skip("../shared/data/cifar10 is not present")
    order = np.random.default_rng(11).permutation(len(images.x_train))
    owned_idx = order[:N_OWNED_TRAIN]
    public_idx = order[N_OWNED_TRAIN:N_OWNED_TRAIN + N_PUBLIC]
    indep_idx = order[N_OWNED_TRAIN + N_PUBLIC:N_OWNED_TRAIN + N_PUBLIC + N_INDEPENDENT]
    recipe = SimCLRRecipe(epochs=20, batch_size=128, lr=3e-3, warmup_steps=5, temperature=0.2)
    _, owned = _cached_network("owned", {"idx": owned_idx.tolist(), "recipe": recipe.as_dict()},
                               lambda: train_simclr(ARCH, images.x_train[owned_idx], recipe, seed=1,
                                                    progress=False)[0])
    cfg = SuspectZooConfig(extra_epochs=3, extra_images=N_INDEPENDENT)
    _, reference = _cached_network("reference", {"idx": indep_idx.tolist(), "seed": 950, "cfg": cfg.as_dict()},
                                   lambda: train_independent(ARCH, images.x_train[indep_idx], cfg, 950))
    root = tmp_path_factory.mktemp("owner-data")

    def write(folder: Path, arrays: np.ndarray, names: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for arr, n in zip(arrays, names):
            Image.fromarray(arr, "RGB").save(folder / f"{n}.png")

    write(root / "owner", images.x_train[owned_idx[:N_OWNER]], [f"o{i}" for i in owned_idx[:N_OWNER]])
    write(root / "public", images.x_train[public_idx], [f"p{i}" for i in public_idx])
    for c, cls in enumerate(images.classes):
        idx = np.flatnonzero(images.y_test == c)[:PER_CLASS]
        write(root / "downstream" / cls, images.x_test[idx], [f"d{i}" for i in idx])
    return Case(owned, reference, {r: root / r for r in ("owner", "public", "downstream")},
                images.x_train[indep_idx])


def _register_owner(case: Case) -> dict[str, int]:
    """The owned encoder with its image sets (part of the registry, as `models data add`
    does) and the reference model; returns name -> id."""
    from audit_lib import registry
    from audit_lib.ownership.owner_data import add_model_data
    from audit_lib.store import session_scope

    with session_scope() as s:
        owned = registry.add_model(s, name="acme-own", kind="checkpoint", role="owned", capabilities="image",
                                   architecture=ARCH, weights_path=case.owned_weights)
        add_model_data(s, owned, owner=case.folders["owner"], public=case.folders["public"],
                       downstream=case.folders["downstream"])
        ref = registry.add_model(s, name="vendor-reference", kind="checkpoint", role="reference",
                                 capabilities="image", architecture=ARCH, weights_path=case.reference_weights)
        return {"owned": owned.id, "reference": ref.id}


def _suspects(case: Case, marked_weights: Path, public: np.ndarray) -> dict[str, Path]:
    """Weights of: a copy of the watermarked encoder stolen through its answers
    (StolenEncoder, 256 public images, 40 epochs), a copy fine-tuned on public images (SimCLR,
    1 epoch), and an encoder trained independently on other images; cached."""
    from audit_lib.encoders.loading import file_sha256
    from audit_lib.zoo.suspects import SuspectZooConfig, _load, finetune_simclr, steal, train_independent

    src = file_sha256(marked_weights)
    marked = _load(ARCH, marked_weights)
    stolen = _cached_network("stolen", {"src": src, "budget": 256, "epochs": 40},
                             lambda: steal(marked, ARCH, public, budget=256, epochs=40, batch=64, lam=20.0,
                                           lr=0.05, seed=77))[1]
    tuned = _cached_network("finetuned", {"src": src, "lr": 1e-3},
                            lambda: finetune_simclr(_load(ARCH, marked_weights), public[-256:], lr=1e-3, epochs=1,
                                                    batch=64, seed=78))[1]
    cfg = SuspectZooConfig(extra_epochs=3, extra_images=N_INDEPENDENT)
    indep = _cached_network("independent", {"seed": 900, "cfg": cfg.as_dict(), "n": len(case.independent_images)},
                            lambda: train_independent(ARCH, case.independent_images, cfg, 900))[1]
    return {"stolen": stolen, "finetuned": tuned, "independent": indep}


def _register_suspects(paths: dict[str, Path], api_url: str) -> dict[str, int]:
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope() as s:
        out = {n: registry.add_model(s, name=f"suspect-{n}", kind="checkpoint", role="suspect", capabilities="image",
                                     architecture=ARCH, weights_path=paths[n]).id for n in ("stolen", "independent")}
        out["finetuned"] = registry.add_model(s, name="suspect-finetuned-api", kind="api", role="suspect",
                                              capabilities="image", endpoint_url=api_url,
                                              credential_name=API_KEY_ENV).id
    return out


def _public(owned_id: int) -> np.ndarray:
    from audit_lib.ownership.watermark import registered_data
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope() as s:
        return registered_data(s, s.get(AuditedModel, owned_id)).surrogate


def _serve(weights: Path, monkeypatch, env: str = API_KEY_ENV):  # noqa: ANN001, ANN202 - a context manager
    from audit_lib.server.testing import running_server

    key = "sk-owner-" + os.urandom(6).hex()
    monkeypatch.setenv(env, key)
    return running_server(ARCH, weights, {key: {"name": "auditor"}})


def _register_owned_api(case: Case, url: str) -> int:
    """The owner's deployed endpoint (the watermarked encoder behind the reference server) as
    an owned API, with its public and downstream image sets (theft risk needs no owner set)."""
    from audit_lib import registry
    from audit_lib.ownership.owner_data import add_model_data
    from audit_lib.store import session_scope

    with session_scope() as s:
        api = registry.add_model(s, name="acme-api", kind="api", role="owned", capabilities="image",
                                 endpoint_url=url, credential_name=OWNED_API_KEY_ENV)
        add_model_data(s, api, public=case.folders["public"], downstream=case.folders["downstream"])
        return api.id


def test_owned_checkpoint_check_refuses_what_cannot_be_enrolled():
    from audit_lib.registry import RegistryError, require_owned_checkpoint
    from audit_lib.store.models import AuditedModel

    ok = Path(__file__)
    cases = [(AuditedModel(name="a", kind="api", role="owned", endpoint_url="http://x"), "not an API"),
             (AuditedModel(name="b", kind="checkpoint", role="suspect", architecture=ARCH, weights_path=str(ok)),
              "only an owned model"),
             (AuditedModel(name="c", kind="checkpoint", role="owned", architecture="onnx:net", weights_path=str(ok)),
              "cannot be fine-tuned"),
             (AuditedModel(name="d", kind="checkpoint", role="owned", architecture=ARCH, weights_path="/nope"),
              "missing")]
    for model, says in cases:
        with pytest.raises(RegistryError, match=says):
            require_owned_checkpoint(model)


def test_null_notes_when_a_rank_p_value_cannot_reach_alpha():
    from audit_lib.ownership.null import rank_floor_note

    assert rank_floor_note(99, 0.01) is None and rank_floor_note(19, 0.05) is None
    assert "1/4 = 0.250" in rank_floor_note(3, 0.05) and "Student-t" in rank_floor_note(3, 0.05)


COPIES_FOUND = (("stolen", "positive"), ("finetuned", "positive"), ("independent", "negative"))
EXPECTED = {"fingerprint": COPIES_FOUND, "watermark": COPIES_FOUND}
NULL_COUNTS = {"registered reference model": 1, "trained by the enrolment on the public images": 2}


def _wrong(found: dict, expected: dict) -> list:  # noqa: ANN001
    """(method, suspect, decision, p, statistic) of every finding that is not as expected."""
    return [(m, n, found[(m, n)].decision, found[(m, n)].p_value, found[(m, n)].statistic)
            for m, cases in expected.items() for n, want in cases if found[(m, n)].decision != want]


def _assert_findings(found: dict) -> None:  # noqa: ANN001
    """Every finding names its null (1 registered reference model + 2 trained here) and,
    with 3 null models, that a rank p-value cannot reach alpha; the decisions are right."""
    for f in found.values():
        assert f.details["null_models"]["counts"] == NULL_COUNTS, f.details["null_models"]
        assert "independence null: 3 independent encoders" in f.null_description
        assert "Student-t" in f.details["null_too_small_for_rank"]
    assert not _wrong(found, EXPECTED)


@pytest.fixture(scope="module")
def workflow_findings(owner_case, tmp_path_factory) -> dict:
    """The workflow path in its own SQLite store: register, enrol the watermark and the
    fingerprint from the registered data, verify the three suspects (the fine-tuned copy
    through the reference server's API). Returns (method, suspect) -> FindingResult."""
    from audit_lib.config import get_settings
    from audit_lib.methods.fingerprint import FingerprintConfig
    from audit_lib.methods.watermark import WatermarkRecipe
    from audit_lib.ownership.fingerprint import enrol_owned_model, verify_suspect
    from audit_lib.ownership.null import TrainedNullConfig
    from audit_lib.ownership.watermark import enrol_watermark_model, verify_watermark_suspect
    from audit_lib.pipelines.caches import fingerprint_cache, ownership_cache
    from audit_lib.store import session_scope, upgrade
    from audit_lib.store.models import Finding
    from audit_lib.zoo.suspects import get_profile

    root = tmp_path_factory.mktemp("owner-workflow")
    url = f"sqlite:///{root / 'evidence.sqlite'}"
    upgrade(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIT_DATABASE_URL", url)
        mp.setenv("AUDIT_DATA_DIR", str(root / "var"))
        get_settings.cache_clear()
        ids = _register_owner(owner_case)
        wm = enrol_watermark_model(ids["owned"], recipe=WatermarkRecipe(n_controls=WM_CONTROLS, embed_steps=WM_STEPS),
                                   alpha=ALPHA, cache_dir=ownership_cache(), downstream_per_class=DOWNSTREAM_PER_CLASS,
                                   min_null=NULL_MIN, null_config=TrainedNullConfig(), progress=False)
        assert wm.null["n_models"] == 3 and wm.null["models"][0]["name"] == "vendor-reference"
        assert abs(wm.marked_accuracy - wm.unmarked_accuracy) <= 0.05, (wm.marked_accuracy, wm.unmarked_accuracy)
        with session_scope() as s:
            fp, _ = enrol_owned_model(s, str(ids["owned"]), zoo_config=get_profile("small"),
                                      fp_config=FingerprintConfig(n_fingerprints=N_FP, steps=FP_STEPS), alpha=ALPHA,
                                      cache_dir=fingerprint_cache(), min_null=NULL_MIN)
        assert fp.zoo_manifest["null"]["image_sets"].keys() == {"owner", "public", "downstream"}
        assert len(fp.zoo_manifest["null"]["held_out_families"]) == 1
        paths = _suspects(owner_case, wm.weights_path, _public(ids["owned"]))
        found = {}
        with _serve(paths["finetuned"], mp) as api:
            suspects = _register_suspects(paths, str(api))
            for name, sid in suspects.items():
                found[("watermark", name)] = verify_watermark_suspect(wm.marked_model_id, sid,
                                                                      run_key=f"wm-{name}").result
                found[("fingerprint", name)] = verify_suspect(str(ids["owned"]), str(sid), run_key=f"fp-{name}")[0]
            assert api.stats.inputs_embedded > 0  # the API suspect was really queried over HTTP
        with session_scope() as s:
            assert len(s.scalars(select(Finding)).all()) == 6
    get_settings.cache_clear()
    return found


def test_owned_encoder_enrolled_from_its_registered_data_and_verified(workflow_findings):
    """Watermark and fingerprint: the stolen and the fine-tuned (API) copies positive, the
    independent encoder negative; every finding states its null and that 3 null models cannot
    give a rank p-value below alpha."""
    _assert_findings(workflow_findings)


def test_owned_encoder_through_the_enrolment_and_audit_dags(owner_case, airflow_dags, sqlite_db_url, monkeypatch):
    """model_enrolment with {"model_id": N} enrols from the registered data (theft-risk step
    skipped); ownership_audit checks owned x suspect pairs, one suspect an API; the same
    decisions and null provenance as the workflow path."""
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel, AuditRun, EnrolmentArtefact, Finding

    ids = _register_owner(owner_case)
    conf = {"model_id": ids["owned"], "skip_steps": ["theft_risk"], "suspect_zoo": "small",
            "n_fingerprints": N_FP, "fingerprint_steps": FP_STEPS, "watermark_controls": WM_CONTROLS,
            "watermark_steps": WM_STEPS, "null_min": NULL_MIN, "watermark_alpha": ALPHA, "fingerprint_alpha": ALPHA}
    dr = airflow_dags["model_enrolment"].test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert str(dr.state) == "success", states
    with session_scope() as s:
        marked = s.scalar(select(AuditedModel).where(AuditedModel.name == "acme-own-watermarked"))
        kinds = {(a.model_id, a.kind) for a in s.scalars(select(EnrolmentArtefact))}
        marked_id, marked_weights = marked.id, Path(marked.weights_path)
    assert kinds == {(marked_id, "watermark"), (ids["owned"], "fingerprint")}
    paths = _suspects(owner_case, marked_weights, _public(ids["owned"]))
    with _serve(paths["finetuned"], monkeypatch) as url, _serve(marked_weights, monkeypatch, OWNED_API_KEY_ENV) as own:
        suspects = _register_suspects(paths, str(url))
        owned_api = _register_owned_api(owner_case, str(own))
        dr = airflow_dags["ownership_audit"].test(run_conf={
            "model_ids": [ids["owned"], marked_id, owned_api, *suspects.values()], "alpha": ALPHA,
            "theft_budgets": "64,128", "theft_epochs": 3, "theft_image_size": 32})
        served = own.stats.inputs_embedded
    assert str(dr.state) == "success", {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    with session_scope() as s:  # the owned API's theft risk, measured through the API itself
        theft_run = s.scalar(select(AuditRun).where(
            AuditRun.run_key == f"ownership_audit/{dr.run_id}/theft/{owned_api}"))
        theft = s.scalar(select(Finding).where(Finding.run_id == theft_run.id))
        assert theft.method == "theft" and theft.decision in ("positive", "negative") and theft.p_value is not None
    assert served >= 128 + 10 * 2 * 2  # the surrogate queries and the downstream images, over HTTP
    names = {sid: n for n, sid in suspects.items()}
    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == f"ownership_audit/{dr.run_id}"))
        rows = list(s.scalars(select(Finding).where(Finding.run_id == run.id)))
        found = {(f.method, names[int(f.target_key.split(":")[1])]): f for f in rows}
    assert len(rows) == 6
    _assert_findings(found)


def test_cli_refuses_to_enrol_an_owned_api_before_anything_runs(sqlite_db_url):
    """An owned API cannot be watermarked or fingerprinted (no weights to fine-tune): exit 2,
    one line naming the problem, nothing written."""
    from typer.testing import CliRunner

    from audit_lib import registry
    from audit_lib.cli import app
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel, EnrolmentArtefact

    with session_scope() as s:
        registry.add_model(s, name="acme-api", kind="api", role="owned", capabilities="image",
                           endpoint_url="http://127.0.0.1:9/", embedding_dim=128)
    runner = CliRunner()
    for args in (["enrol", "--model", "acme-api", "--watermark"],
                 ["enrol-fingerprint", "--model", "acme-api", "--suspect-zoo", "small"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "not an API" in r.output and "Traceback" not in r.output, r.output
    with session_scope() as s:
        assert s.scalar(select(EnrolmentArtefact)) is None
        assert [m.name for m in s.scalars(select(AuditedModel))] == ["acme-api"]
