"""The watermark workflow (AWEncoder, :mod:`audit_lib.methods.watermark`): enrol an owned
checkpoint and verify a suspect, wired to the registry, the evidence store and the data.

Two sources of data and null, one code path:

- an owned model with registered image sets (``encoder-audit models data add``): the
  watermark is fine-tuned in on its ``owner`` images, the key, marked set and probes come
  from its ``public`` images, utility and the black-box check from its ``downstream`` set;
  the independence null is the registered reference models, topped up with independents
  trained on the public images (:mod:`audit_lib.ownership.null`);
- otherwise the reference zoo's data split and independent encoders (the reference
  measurement of the README's tables).

CLI commands and DAG tasks call these functions and only parse arguments. Sessions are
short: training happens outside any transaction and each result is written in one
transaction at the end (a refused input writes nothing).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.evidence import canonical_json, sha256_hex

log = logging.getLogger(__name__)

CODE_VERSION = "ownership-1"


def model_ref(ref: int | str) -> int | str:
    """A CLI or DAG model reference: an id (digits) or a name."""
    return int(ref) if str(ref).isdigit() else ref


def check_trainable(architecture: str, weights: Path) -> None:
    """Refuse, before any data is read or anything trained, an architecture that cannot be
    built here or a weights file that does not fit it (ValueError naming the problem)."""
    from audit_lib.encoders.architectures import ArchitectureError, build
    from audit_lib.encoders.loading import load_into, read_state_dict

    try:
        net = build(architecture)
    except ArchitectureError as exc:
        raise ValueError(f"{exc}; the watermark fine-tunes the weights, so the architecture must be buildable") from None
    load_into(net.module, read_state_dict(Path(weights)), str(weights))
    if not any(p.requires_grad for p in net.module.parameters()):
        raise ValueError(f"architecture {architecture}: has no trainable parameters to fine-tune")


def has_registered_data(session: Any, model_id: int) -> bool:
    """Whether the owner registered image sets for the model (then they, not the zoo, are used)."""
    from audit_lib.ownership.owner_data import current_image_sets

    return bool(current_image_sets(session, model_id))


def registered_data(session: Any, model: Any, *, downstream_per_class: int | None = None) -> Any:
    """The owner's registered image sets as OwnershipData at the model's input size."""
    from audit_lib.ownership.owner_data import model_image_size, owner_ownership_data

    return owner_ownership_data(session, model, image_size=model_image_size(model),
                                require=("owner", "public", "downstream"), downstream_per_class=downstream_per_class)


# --- enrolment ------------------------------------------------------------------------------

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
    null: dict[str, Any] | None = None  # where the independence null came from


def _training_key(weights_sha: str, recipe: Any, data: Any) -> str:
    fields = {k: v for k, v in recipe.as_dict().items() if k != "n_controls"}  # controls do not change training
    return sha256_hex(canonical_json({"code": CODE_VERSION, "weights": weights_sha, "recipe": fields,
                                      "clean": sha256_hex(data.owner_clean.tobytes()),
                                      "pool": sha256_hex(data.pool.tobytes())}))


def _calibration_key(training_key: str, recipe: Any, alpha: float, data: Any, independents: list[Any]) -> str:
    from audit_lib.methods.watermark import METHOD_VERSION

    return sha256_hex(canonical_json({"training": training_key, "n_controls": recipe.n_controls, "alpha": alpha,
                                      "method_version": METHOD_VERSION,
                                      "downstream": sha256_hex(data.downstream.train_images.tobytes()
                                                               + data.downstream.test_images.tobytes()),
                                      "independents": [h.model_version for h in independents]}))


def classifier_for(handle: Any, split: Any) -> Any:
    """A suspect's downstream classifier as a function PNG images -> class scores (n, classes)
    (black-box access simulated by training the classifier on the suspect's features; a
    downstream API that returns probabilities)."""
    from audit_lib.methods.theft import reference_for
    from audit_lib.methods.watermark import class_scores

    ref = reference_for(handle, split)
    return lambda pngs: class_scores(ref.classifier, np.asarray(handle.encode_images(pngs, kind="watermark")))


def conferrable_models(network: Any, architecture: str, owner_images: np.ndarray, recipe: Any
                       ) -> tuple[list[Any], list[Any]]:
    """The models the watermark's perturbation is shaped on (:func:`audit_lib.methods.watermark.generate_delta`):
    ``recipe.shadow_copies`` copies of the owned ``network`` stolen from the owner's images
    (StolenEncoder through its own answers, lambda 20, k 1; a thief would use other images)
    and ``recipe.shaping_independents`` encoders of the same architecture trained
    independently on the owner's images (SimCLR, new seeds). None of them is kept or enters
    the verification null."""
    from dataclasses import replace

    from audit_lib.zoo.suspects import SuspectZooConfig, steal, train_independent

    if len(owner_images) < 2 and (recipe.shadow_copies or recipe.shaping_independents):
        raise ValueError("watermark: the owner's image set is empty; the shadow copies and shaping encoders are "
                         "trained on it (register it with `encoder-audit models data add --owner DIR`)")
    cfg = replace(SuspectZooConfig(), extra_epochs=recipe.shaping_epochs, extra_images=len(owner_images))
    shadows, shapers = [], []
    for i in range(recipe.shadow_copies):
        log.info("watermark: stealing shadow copy %d/%d from %d owner images", i + 1, recipe.shadow_copies,
                 len(owner_images))
        shadows.append(steal(network, architecture, owner_images, budget=len(owner_images),
                             epochs=recipe.shadow_epochs, batch=cfg.batch_size, lam=cfg.steal_lambda, lr=cfg.steal_lr,
                             seed=recipe.seed + 100 + i))
    for i in range(recipe.shaping_independents):
        log.info("watermark: training shaping independent %d/%d", i + 1, recipe.shaping_independents)
        shapers.append(train_independent(architecture, owner_images, cfg, recipe.seed + 200 + i))
    return shadows, shapers


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
        shadows, shapers = conferrable_models(owned.network, architecture, data.owner_clean, recipe)
        trained = wm.train_watermark(owned.network, data.owner_clean, data.pool, data.pool_labels, recipe=recipe,
                                     shadows=shadows, shapers=shapers, progress=progress)
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


def _zoo_null(data: Any, limit: int | None) -> tuple[list[Any], dict[str, Any]]:
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.ownership.null import ZOO, IndependentNull, NullModel

    entries = data.independents[:limit] if limit else data.independents
    null = IndependentNull([NullModel(e.name, ZOO, "checkpoint", e.architecture, str(e.weights_path))
                            for e in entries])
    return [LocalEncoder.from_checkpoint(e.architecture, e.weights_path) for e in entries], null.as_dict()


def enrol_watermark_model(ref: int | str, *, recipe: Any = None, alpha: float = 0.01, profile: str = "ci",
                          zoo_entry: str = "simclr-target", zoo_cache: Path | None = None,
                          cache_dir: Path | None = None, downstream_per_class: int | None = None,
                          n_independents: int | None = None, data: Any = None, min_null: int | None = None,
                          null_config: Any = None, progress: bool = True,
                          database_url: str | None = None) -> EnrolOutcome:
    """Watermark an owned checkpoint (AWEncoder): generate, embed, calibrate on independent
    encoders; save the marked encoder as a new checkpoint, register it as the owned model
    ``NAME-watermarked`` and commit the artefact (hashed, timestamped) before any suspect is
    queried. Data and null: ``data`` when given (OwnershipData, with the registered null), else
    the owner's registered image sets when there are any, else the reference zoo's. The
    trained result is cached under ``cache_dir`` keyed by a hash of its inputs."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.encoders.loading import file_sha256
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.methods import watermark as wm
    from audit_lib.ownership.artefacts import commit_artefact
    from audit_lib.ownership.data import load_manifest, ownership_data
    from audit_lib.ownership.null import DEFAULT_MIN_MODELS, TrainedNullConfig, independent_null
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    recipe = recipe or wm.WatermarkRecipe()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha}: expected 0 < alpha < 1")
    cache = Path(cache_dir or get_settings().data_dir / "ownership")
    with session_scope(database_url) as s:
        model = registry.get_model(s, model_ref(ref))
        arch, weights = registry.require_owned_checkpoint(model)
        name = model.name
        check_trainable(arch, weights)  # before any image is read or anything trained
        use_registered = data is not None or has_registered_data(s, model.id)
        if data is None and use_registered:
            data = registered_data(s, model, downstream_per_class=downstream_per_class)
        null_obj = None
        if use_registered:
            null_obj = independent_null(s, model, data.surrogate,
                                        minimum=min_null or DEFAULT_MIN_MODELS,
                                        config=null_config or TrainedNullConfig())
    if use_registered:
        independents, null = null_obj.handles(db_url=database_url), null_obj.as_dict()
    else:
        data = ownership_data(load_manifest(profile, zoo_cache), zoo_entry, downstream_per_class=downstream_per_class)
        independents, null = _zoo_null(data, n_independents)
    owned = LocalEncoder.from_checkpoint(arch, weights)
    got = enrol_cached(owned, arch, data, independents, recipe=recipe, alpha=alpha, cache_dir=cache,
                       progress=progress)
    spec = {**got.spec, "source_model": name, "source_version": owned.model_version,
            "marked_version": file_sha256(got.weights_path), "unmarked_accuracy": got.meta["unmarked_accuracy"],
            "marked_accuracy": got.meta["marked_accuracy"], "null_models": null,
            "image_sets": dict(getattr(data, "image_sets", {}) or {})}
    marked_name = f"{name}-watermarked"
    with session_scope(database_url) as s:
        marked = s.scalar(select(AuditedModel).where(AuditedModel.name == marked_name))
        if marked is None:
            marked = registry.add_model(s, name=marked_name, kind="checkpoint", role="owned", capabilities="image",
                                        architecture=arch, weights_path=got.weights_path)
        art = commit_artefact(s, model_id=marked.id, kind=wm.ARTEFACT_KIND, tensors=got.tensors, spec=spec)
        outcome = EnrolOutcome(marked.id, marked_name, art.id, art.commitment_sha256, got.weights_path,
                               got.meta["unmarked_accuracy"], got.meta["marked_accuracy"], got.cached, null)
    log.info("watermark enrolled for %s: marked model %s, artefact %d, commitment %s; null: %s", name, marked_name,
             outcome.artefact_id, outcome.commitment_sha256, null["description"])
    return outcome


# --- verification ---------------------------------------------------------------------------

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


def with_null_provenance(result: Any, null: dict[str, Any] | None, n_null: int) -> Any:
    """State in the finding where its independence null came from and, when a rank p-value
    among that many models cannot reach alpha, that the decision rests on a t tail."""
    from audit_lib.ownership.null import rank_floor_note

    if null:
        result.details["null_models"] = null
        result.null_description = f"{result.null_description}; independence null: {null['description']}"
    note = rank_floor_note(n_null, float(result.alpha))
    if note:
        result.details["null_too_small_for_rank"] = note
        assumptions = result.details.setdefault("assumptions", [])
        if note not in assumptions:
            assumptions.append(note)
    return result


def check_watermark(handle: Any, owned_id: int, *, alpha: float | None = None, black_box: bool = False,
                    downstream: Any = None, database_url: str | None = None) -> tuple[Any, str]:
    """Verify the owned model's latest committed (hash-checked) watermark on an open suspect
    handle (local or API; the probes go as PNG files, which the suspect resizes to its own
    input size as any client's images). Returns (finding, commitment sha256)."""
    from audit_lib.methods import watermark as wm
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope(database_url) as s:
        artefact = find_watermark_artefact(s, s.get(AuditedModel, int(owned_id)))
    classify = classifier_for(handle, downstream) if black_box else None
    result = wm.verify_watermark(handle, artefact, alpha=alpha, classify=classify)
    mode_null = artefact.spec.get("independent_black_box" if black_box else "independent_white_box", [])
    return with_null_provenance(result, artefact.spec.get("null_models"), len(mode_null)), artefact.commitment_sha256


def verify_watermark_suspect(owned_ref: int | str, suspect_ref: int | str, *, black_box: bool = False,
                             alpha: float | None = None, run_key: str | None = None, profile: str = "ci",
                             zoo_entry: str = "simclr-target", zoo_cache: Path | None = None,
                             downstream_per_class: int | None = None,
                             database_url: str | None = None) -> VerifyOutcome:
    """Verify the owned model's committed watermark on a registered suspect, local or API
    (white-box through its handle, or black-box through a downstream classifier built on it:
    the owner's registered downstream set, else the zoo's) and store the ``watermark``
    finding with its evidence."""
    from audit_lib import registry
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.pipelines.handles import open_model_handle
    from audit_lib.store import session_scope

    run_key = run_key or f"watermark-{secrets.token_hex(6)}"
    downstream = None
    with session_scope(database_url) as s:
        owned = registry.get_model(s, model_ref(owned_ref))
        suspect = registry.get_model(s, model_ref(suspect_ref))
        artefact = find_watermark_artefact(s, owned)  # committed earlier; hash-checked here
        owned_id, suspect_id = owned.id, suspect.id
        if black_box:
            source = s.get(type(owned), artefact.model_id)
            source_name = artefact.spec.get("source_model")
            origin = registry.get_model(s, source_name) if source_name else source
            if has_registered_data(s, origin.id):
                downstream = registered_data(s, origin, downstream_per_class=downstream_per_class).downstream
        start_run(s, run_key, "ownership", {"owned": owned.name, "suspect": suspect.name, "method": "watermark",
                                            "artefact_id": artefact.id, "black_box": black_box})
    if black_box and downstream is None:
        from audit_lib.ownership.data import load_manifest, ownership_data

        downstream = ownership_data(load_manifest(profile, zoo_cache), zoo_entry,
                                    downstream_per_class=downstream_per_class).downstream
    handle = open_model_handle(suspect_id, run_key, db_url=database_url)
    result, _ = check_watermark(handle, owned_id, alpha=alpha, black_box=black_box, downstream=downstream,
                                database_url=database_url)
    with session_scope(database_url) as s:
        run = start_run(s, run_key, "ownership")
        row, _ = store_finding(s, run, result, target_key=f"suspect:{suspect_id}",
                               model_version_id=handle.model_version_id)
        return VerifyOutcome(row.id, result)
