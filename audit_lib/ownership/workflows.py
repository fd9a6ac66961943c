"""Ownership workflows that wire the methods to the registry, the evidence store, the
reference server and the zoo's data: theft-risk curves, watermark enrolment and
verification. CLI commands and DAG tasks call these; the methods themselves stay pure.

Sessions are short: long training runs happen outside any transaction, and each result is
written in one transaction at the end (a refused input writes nothing).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.evidence import canonical_json, sha256_hex

log = logging.getLogger(__name__)

CODE_VERSION = "ownership-1"


def _model(session: Any, ref: int | str) -> Any:
    from audit_lib import registry

    return registry.get_model(session, int(ref) if str(ref).isdigit() else ref)


def _checkpoint(model: Any) -> tuple[str, Path]:
    if model.kind != "checkpoint" or not model.architecture or not model.weights_path:
        raise ValueError(f"model {model.name}: a local checkpoint (architecture and weights) is needed here")
    return model.architecture, Path(model.weights_path)


def _independent_handles(data: Any, limit: int | None = None) -> list[Any]:
    from audit_lib.encoders.local import LocalEncoder

    entries = data.independents[:limit] if limit else data.independents
    return [LocalEncoder.from_checkpoint(e.architecture, e.weights_path) for e in entries]


# --- theft ----------------------------------------------------------------------------------

@dataclass
class TheftOutcome:
    finding_id: int
    result: Any  # FindingResult
    png: Path
    json: Path


def run_theft_risk(target_ref: int | str, *, budgets: str = "1%,5%,10%", defences: tuple[str, ...] = (),
                   recipe: Any = None, reference_budget: str = "5%", profile: str = "ci",
                   zoo_entry: str = "simclr-target", zoo_cache: Path | None = None, out_dir: Path | None = None,
                   run_key: str | None = None,
                   alpha: float = 0.05, n_independents: int | None = None, downstream_per_class: int | None = None,
                   progress: bool = True, database_url: str | None = None) -> TheftOutcome:
    """Steal a registered checkpoint through the reference server over real HTTP, once per
    budget and per defence (each defence on its own API key), evaluate the copies, store the
    ``theft`` finding and write the curve as PNG and JSON."""
    from audit_lib.config import get_settings
    from audit_lib.encoders import open_handle
    from audit_lib.encoders.remote import RemoteEncoder
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.methods import theft
    from audit_lib.ownership.data import load_manifest, ownership_data
    from audit_lib.server.testing import running_server
    from audit_lib.store import session_scope

    recipe = recipe or theft.StealRecipe()
    defence_cfgs = {theft.defence_label(theft.parse_defence(d)): theft.parse_defence(d) for d in defences}
    data = ownership_data(load_manifest(profile, zoo_cache), zoo_entry, downstream_per_class=downstream_per_class)
    qs = theft.parse_budgets(budgets, data.train_size)
    ref_q = theft.parse_budgets(reference_budget, data.train_size)[0]
    if ref_q not in qs:
        qs = sorted({*qs, ref_q})
    run_key = run_key or f"theft-{secrets.token_hex(6)}"
    with session_scope(database_url) as s:
        model = _model(s, target_ref)
        arch, weights = _checkpoint(model)
        model_id, model_name = model.id, model.name
        start_run(s, run_key, "theft", {"target": model_name, "budgets": qs, "defences": sorted(defence_cfgs),
                                        "recipe": recipe.as_dict()})
    labels = ["none", *defence_cfgs]
    keys = {label: "sk-theft-" + secrets.token_urlsafe(18) for label in labels}
    env_names = {label: f"AUDIT_THEFT_KEY_{i}_{secrets.token_hex(4).upper()}" for i, label in enumerate(labels)}
    per_key_budget = sum(qs) + len(data.downstream.train_images) + len(data.downstream.test_images)
    server_keys = {keys[lb]: {"name": f"theft-{lb}", "defences": defence_cfgs.get(lb, {}), "seed": i}
                   for i, lb in enumerate(labels)}
    with ExitStack() as stack:
        url = stack.enter_context(running_server(arch, weights, server_keys))
        for label in labels:
            os.environ[env_names[label]] = keys[label]
        stack.callback(lambda: [os.environ.pop(n, None) for n in env_names.values()])
        attack = {lb: RemoteEncoder(str(url), None, env_names[lb], budget=per_key_budget) for lb in labels}
        clean = open_handle(model_from_id(model_id, database_url), run_key=run_key, db_url=database_url)
        points, target_ref_, costs = theft.theft_curve(attack, clean, data.surrogate, qs, data.downstream,
                                                       recipe=recipe, train_size=data.train_size, progress=progress)
        independents = [theft.reference_for(h, data.downstream) for h in _independent_handles(data, n_independents)]
        result = theft.theft_finding(points, target_ref_, independents, reference_budget=ref_q, alpha=alpha,
                                     recipe=recipe)
        result.details["server_inputs_embedded"] = int(url.stats.inputs_embedded)
        result.details["queries_by_key"] = {lb: int(h.queries_used) for lb, h in attack.items()}
        version_id = clean.model_version_id
    out_dir = Path(out_dir or get_settings().data_dir / "theft" / model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / "theft-curve.png", out_dir / "theft-curve.json"
    theft.plot_curve(points, png, title=f"StolenEncoder theft curve: {model_name}")
    js.write_text(json.dumps({"target": model_name, "train_size": data.train_size, "reference_budget": ref_q,
                              "utility_cost": costs, "curve": [p.as_dict() for p in points],
                              "p_value": result.p_value, "null_scores": result.details["null_scores"],
                              "recipe": recipe.as_dict()}, indent=1))
    with session_scope(database_url) as s:
        run = start_run(s, run_key, "theft")
        row, _ = store_finding(s, run, result, target_key=f"model:{model_id}", model_version_id=version_id)
        finding_id = row.id
    return TheftOutcome(finding_id, result, png, js)


def model_from_id(model_id: int, database_url: str | None = None) -> Any:
    """A detached copy of a registered model row (for handles opened outside a session)."""
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope(database_url) as s:
        m = s.get(AuditedModel, model_id)
        s.expunge(m)
        return m


# --- watermark enrolment --------------------------------------------------------------------

@dataclass
class EnrolOutcome:
    marked_model_id: int
    marked_model_name: str
    artefact_id: int
    commitment_sha256: str
    weights_path: Path
    unmarked_accuracy: float
    marked_accuracy: float
    cached: bool


def _training_key(weights_sha: str, recipe: Any, data: Any) -> str:
    fields = {k: v for k, v in recipe.as_dict().items() if k != "n_controls"}  # controls do not change training
    return sha256_hex(canonical_json({"code": CODE_VERSION, "weights": weights_sha, "recipe": fields,
                                      "clean": sha256_hex(data.owner_clean.tobytes()),
                                      "pool": sha256_hex(data.pool.tobytes())}))


def _calibration_key(training_key: str, recipe: Any, alpha: float, data: Any, independents: list[Any]) -> str:
    return sha256_hex(canonical_json({"training": training_key, "n_controls": recipe.n_controls, "alpha": alpha,
                                      "downstream": sha256_hex(data.downstream.train_images.tobytes()
                                                               + data.downstream.test_images.tobytes()),
                                      "independents": [h.model_version for h in independents]}))


def classifier_for(handle: Any, split: Any) -> Any:
    """A suspect's downstream classifier as a function PNG images -> labels (black-box
    access simulated by training the classifier on the suspect's features)."""
    from audit_lib.methods.theft import reference_for

    ref = reference_for(handle, split)
    return lambda pngs: ref.classifier.predict(np.asarray(handle.encode_images(pngs, kind="watermark")))


@dataclass
class CachedEnrolment:
    """A watermark enrolment as trained (or found in the cache), before it is committed."""

    marked: Any  # Network
    tensors: dict[str, np.ndarray]
    spec: dict[str, Any]
    meta: dict[str, Any]  # accuracies and losses
    weights_path: Path
    cached: bool


def enrol_cached(owned: Any, architecture: str, data: Any, independents: list[Any], *, recipe: Any, alpha: float,
                 cache_dir: Path, progress: bool = True) -> CachedEnrolment:
    """Run AWEncoder enrolment on the owned handle ``owned`` (a LocalEncoder of
    ``architecture``), reusing what is cached under ``cache_dir``: the training (marked
    weights, key, perturbation, probes) keyed by the weights, recipe and images; the
    calibration (controls, independent scores, accuracies) keyed by that plus alpha, the
    number of controls, the downstream data and the independent encoders."""
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import file_sha256, load_into, read_state_dict
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.methods import watermark as wm
    from audit_lib.methods.theft import reference_for
    from audit_lib.ownership.artefacts import pack_payload, unpack_payload
    from audit_lib.zoo.train import save_checkpoint

    tkey = _training_key(owned.model_version, recipe, data)
    tdir = Path(cache_dir) / f"watermark-train-{tkey[:16]}"
    wpath, tpath = tdir / "weights.safetensors", tdir / "trained.safetensors"
    if wpath.is_file() and tpath.is_file():
        arrays, info = unpack_payload(tpath.read_bytes())
        net = build(architecture)
        load_into(net.module, read_state_dict(wpath), str(wpath))
        net.module.eval()
        trained = wm.TrainedWatermark(net, arrays["key"], info.get("key_label"), arrays["marked"], arrays["probes"],
                                      arrays["delta"], info.get("losses", []))
        trained_cached = True
    else:
        trained = wm.train_watermark(owned.network, data.owner_clean, data.pool, data.pool_labels, recipe=recipe,
                                     progress=progress)
        tdir.mkdir(parents=True, exist_ok=True)
        tpath.write_bytes(pack_payload({"key": trained.key, "marked": trained.marked_images,
                                        "probes": trained.probes, "delta": trained.delta},
                                       {"key_label": trained.key_label, "losses": trained.losses}))
        tmp = tdir / "weights.part.safetensors"
        save_checkpoint(trained.marked.module, tmp)
        tmp.replace(wpath)  # last: its presence marks a complete entry
        trained_cached = False
    ckey = _calibration_key(tkey, recipe, alpha, data, independents)
    cdir = Path(cache_dir) / f"watermark-calibration-{ckey[:16]}"
    apath, mpath = cdir / "artefact.safetensors", cdir / "meta.json"
    if apath.is_file() and mpath.is_file():
        tensors, spec = unpack_payload(apath.read_bytes())
        return CachedEnrolment(trained.marked, tensors, spec, json.loads(mpath.read_text()), wpath,
                               trained_cached)
    classifiers = [classifier_for(h, data.downstream) for h in independents]
    enrol = wm.calibrate_watermark(trained, recipe=recipe, alpha=alpha, independents=independents,
                                   independent_classifiers=classifiers)
    marked_handle = LocalEncoder.from_network(trained.marked, file_sha256(wpath))
    meta = {"unmarked_accuracy": reference_for(owned, data.downstream).accuracy,
            "marked_accuracy": reference_for(marked_handle, data.downstream).accuracy, "losses": trained.losses}
    cdir.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(meta))
    apath.write_bytes(pack_payload(enrol.tensors, enrol.spec))
    return CachedEnrolment(trained.marked, enrol.tensors, enrol.spec, meta, wpath, trained_cached)


def enrol_watermark_model(model_ref: int | str, *, recipe: Any = None, alpha: float = 0.01, profile: str = "ci",
                          zoo_entry: str = "simclr-target", zoo_cache: Path | None = None,
                          cache_dir: Path | None = None, downstream_per_class: int | None = None,
                          n_independents: int | None = None, progress: bool = True,
                          database_url: str | None = None) -> EnrolOutcome:
    """Watermark an owned checkpoint (AWEncoder): generate, embed, calibrate on the zoo's
    independent encoders; save the marked encoder as a new checkpoint, register it as an
    owned model, and commit the artefact (hashed, timestamped) before any suspect is queried.
    The trained result is cached under ``cache_dir`` keyed by a hash of its inputs."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.encoders.loading import file_sha256
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.methods import watermark as wm
    from audit_lib.ownership.artefacts import commit_artefact
    from audit_lib.ownership.data import load_manifest, ownership_data
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    recipe = recipe or wm.WatermarkRecipe()
    with session_scope(database_url) as s:
        model = _model(s, model_ref)
        arch, weights = _checkpoint(model)
        name = model.name
    data = ownership_data(load_manifest(profile, zoo_cache), zoo_entry, downstream_per_class=downstream_per_class)
    owned = LocalEncoder.from_checkpoint(arch, weights)
    independents = _independent_handles(data, n_independents)
    got = enrol_cached(owned, arch, data, independents, recipe=recipe, alpha=alpha,
                       cache_dir=Path(cache_dir or get_settings().data_dir / "ownership"), progress=progress)
    spec = {**got.spec, "source_model": name, "source_version": owned.model_version,
            "marked_version": file_sha256(got.weights_path), "unmarked_accuracy": got.meta["unmarked_accuracy"],
            "marked_accuracy": got.meta["marked_accuracy"]}
    marked_name = f"{name}-watermarked"
    with session_scope(database_url) as s:
        marked = s.scalar(select(AuditedModel).where(AuditedModel.name == marked_name))
        if marked is None:
            marked = registry.add_model(s, name=marked_name, kind="checkpoint", role="owned", capabilities="image",
                                        architecture=arch, weights_path=got.weights_path)
        art = commit_artefact(s, model_id=marked.id, kind=wm.ARTEFACT_KIND, tensors=got.tensors, spec=spec)
        outcome = EnrolOutcome(marked.id, marked_name, art.id, art.commitment_sha256, got.weights_path,
                               got.meta["unmarked_accuracy"], got.meta["marked_accuracy"], got.cached)
    log.info("watermark enrolled for %s: marked model %s, artefact %d, commitment %s", name, marked_name,
             outcome.artefact_id, outcome.commitment_sha256)
    return outcome


# --- watermark verification -----------------------------------------------------------------

@dataclass
class VerifyOutcome:
    finding_id: int
    result: Any  # FindingResult


def find_watermark_artefact(session: Any, owned: Any) -> Any:
    """The latest watermark artefact of ``owned``, or of the watermarked copy enrolled from it."""
    from sqlalchemy import select

    from audit_lib.ownership.artefacts import ArtefactError, latest_artefact
    from audit_lib.store.models import AuditedModel

    try:
        return latest_artefact(session, owned.id, "watermark")
    except ArtefactError:
        marked = session.scalar(select(AuditedModel).where(AuditedModel.name == f"{owned.name}-watermarked"))
        if marked is None:
            raise
        return latest_artefact(session, marked.id, "watermark")


def verify_watermark_suspect(owned_ref: int | str, suspect_ref: int | str, *, black_box: bool = False,
                             alpha: float | None = None, run_key: str | None = None, profile: str = "ci",
                             zoo_entry: str = "simclr-target", zoo_cache: Path | None = None,
                             downstream_per_class: int | None = None,
                             database_url: str | None = None) -> VerifyOutcome:
    """Verify the owned model's committed watermark on a registered suspect (white-box
    through its handle, or black-box through a downstream classifier built on it) and store
    the ``watermark`` finding with its evidence."""
    from audit_lib.encoders import open_handle
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.methods import watermark as wm
    from audit_lib.store import session_scope

    run_key = run_key or f"watermark-{secrets.token_hex(6)}"
    with session_scope(database_url) as s:
        owned = _model(s, owned_ref)
        suspect = _model(s, suspect_ref)
        artefact = find_watermark_artefact(s, owned)  # committed earlier; hash-checked here
        suspect_id = suspect.id
        start_run(s, run_key, "ownership", {"owned": owned.name, "suspect": suspect.name, "method": "watermark",
                                            "artefact_id": artefact.id, "black_box": black_box})
    handle = open_handle(model_from_id(suspect_id, database_url), run_key=run_key, db_url=database_url)
    classify = None
    if black_box:
        from audit_lib.ownership.data import load_manifest, ownership_data

        data = ownership_data(load_manifest(profile, zoo_cache), zoo_entry, downstream_per_class=downstream_per_class)
        classify = classifier_for(handle, data.downstream)
    result = wm.verify_watermark(handle, artefact, alpha=alpha, classify=classify)
    with session_scope(database_url) as s:
        run = start_run(s, run_key, "ownership")
        row, _ = store_finding(s, run, result, target_key=f"suspect:{suspect_id}",
                               model_version_id=handle.model_version_id)
        return VerifyOutcome(row.id, result)
