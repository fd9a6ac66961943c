"""Task bodies of owned-model enrolment: validate the model, then hand each step to the
ownership workflows, which commit their artefacts.

Steps and the workflow functions they call (adapters only):

- ``watermark``: :func:`audit_lib.ownership.watermark.enrol_watermark_model` (AWEncoder):
  trains the marked copy, registers it as the owned model ``NAME-watermarked`` and commits
  the ``watermark`` artefact to it (the copy the owner deploys).
- ``zoo``: :func:`audit_lib.ownership.fingerprint.build_zoo_for`: derivatives of the owned
  model (fine-tune, prune, quantise, distil, steal) and variants of independent encoders,
  split train / validation / test. Cached by config hash; nothing is committed.
- ``fingerprint``: :func:`audit_lib.ownership.fingerprint.enrol_owned_model` (MetaV):
  fingerprints and meta-verifier trained on that zoo, calibrated on its held-out negatives,
  committed as the ``fingerprint`` artefact of the owned model.
- ``calibration``: re-loads the committed artefacts (hash and commitment checks) and fails
  when a calibration cannot support a decision (no held-out negatives or null scores).
- ``theft_risk``: :func:`audit_lib.ownership.theft.run_theft_risk` (StolenEncoder through the
  reference server over HTTP): the ``theft`` finding and its curve.

Data and independent encoders: an owned model with registered image sets is enrolled with
them and the independence null of :mod:`audit_lib.ownership.null` (registered reference
models, topped up with independents trained on its public images); any other owned model
with the reference zoo's (``caches.zoo_cache_root``). Training results are cached where the
ownership tests cache them (``caches``), so an enrolment the tests already trained costs
only the hash checks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel

log = logging.getLogger(__name__)

STEPS = ("watermark", "zoo", "fingerprint", "calibration", "theft_risk")

DEFAULT_PARAMS: dict[str, Any] = {
    # The ci settings of the ownership tests (same caches): see tests/fixtures_ownership.py
    # and tests/fixtures_fingerprint.py. A GPU deployment raises them (e.g. suspect_zoo "full").
    "zoo_profile": "ci", "zoo_entry": "simclr-target", "watermark_controls": 39, "watermark_alpha": 0.01,
    "watermark_steps": None, "watermark_published": False, "downstream_per_class": 30, "suspect_zoo": "ci",
    "n_fingerprints": 16,
    "fingerprint_steps": 60, "fingerprint_alpha": 0.01, "theft_budgets": "1%,5%,10%", "theft_epochs": 12,
    "theft_lr": 0.05, "null_min": 3, "null_epochs": 3,
    # Registered data only (the zoo states both): the model's training-set size, which budgets
    # given as shares need, and its input size when its preprocessing does not state it.
    "theft_train_size": None, "theft_image_size": None,
}


def validate_owned(model_id: Any, *, db_url: str | None = None) -> int:
    """The model id, checked: registered, an owned local checkpoint of an architecture the
    enrolments can fine-tune (:func:`audit_lib.registry.require_owned_checkpoint`)."""
    from audit_lib import registry

    try:
        mid = int(model_id)
    except (TypeError, ValueError):
        raise ValueError(f"params.model_id: {model_id!r} is not a model id") from None
    with session_scope(db_url) as session:
        model = session.get(AuditedModel, mid)
        if model is None:
            raise ValueError(f"params.model_id: model {mid} is not registered")
        registry.require_owned_checkpoint(model)
        log.info("enrolling owned model %d (%s, %s)", mid, model.name, model.architecture)
    return mid


def _zoo_independents(p: dict[str, Any]) -> list[Any]:
    from audit_lib.pipelines.caches import load_zoo
    from audit_lib.zoo.suspects import IndependentModel

    manifest = load_zoo(str(p["zoo_profile"]), build=False)
    out = [IndependentModel(e.name, e.architecture, Path(e.weights_path)) for e in manifest.by_role("independent")]
    if not out:
        raise ValueError(f"zoo profile {p['zoo_profile']}: no independent encoders (the negatives)")
    return out


def _registered(model_id: int, db_url: str | None) -> bool:
    from audit_lib.ownership.watermark import has_registered_data

    with session_scope(db_url) as session:
        return has_registered_data(session, int(model_id))


def _null_config(p: dict[str, Any]) -> Any:
    from audit_lib.ownership.null import TrainedNullConfig

    return TrainedNullConfig(epochs=int(p["null_epochs"]))


def step_watermark(model_id: int, run_key: str, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    from audit_lib.methods.watermark import WatermarkRecipe
    from audit_lib.ownership.watermark import enrol_watermark_model
    from audit_lib.pipelines.caches import ownership_cache, zoo_cache_root

    recipe = WatermarkRecipe.chosen(published=bool(p["watermark_published"]),
                                    n_controls=int(p["watermark_controls"]), embed_steps=p.get("watermark_steps"))
    out = enrol_watermark_model(model_id, recipe=recipe, alpha=float(p["watermark_alpha"]),
                                profile=str(p["zoo_profile"]), zoo_entry=str(p["zoo_entry"]),
                                zoo_cache=zoo_cache_root(), cache_dir=ownership_cache(),
                                downstream_per_class=int(p["downstream_per_class"]), min_null=int(p["null_min"]),
                                null_config=_null_config(p), progress=False, database_url=db_url)
    return {"marked_model_id": out.marked_model_id, "marked_model_name": out.marked_model_name,
            "artefact_id": out.artefact_id, "commitment_sha256": out.commitment_sha256,
            "unmarked_accuracy": out.unmarked_accuracy, "marked_accuracy": out.marked_accuracy,
            "cached": out.cached, "null": (out.null or {}).get("description")}


def _fingerprint_kwargs(model_id: int, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    from audit_lib.pipelines.caches import fingerprint_cache
    from audit_lib.zoo.suspects import get_profile

    independents = None if _registered(model_id, db_url) else _zoo_independents(p)
    return {"independents": independents, "zoo_config": get_profile(str(p["suspect_zoo"])),
            "cache_dir": fingerprint_cache(), "min_null": int(p["null_min"]), "null_config": _null_config(p)}


def step_zoo(model_id: int, run_key: str, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    from audit_lib.ownership.fingerprint import build_zoo_for

    with session_scope(db_url) as session:
        zoo = build_zoo_for(session, str(int(model_id)), **_fingerprint_kwargs(model_id, p, db_url))[0]
    return {"suspect_zoo": zoo.root.name, "counts": zoo.counts()}


def step_fingerprint(model_id: int, run_key: str, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    from audit_lib.methods.fingerprint import FingerprintConfig
    from audit_lib.ownership.fingerprint import enrol_owned_model

    cfg = FingerprintConfig(n_fingerprints=int(p["n_fingerprints"]), steps=int(p["fingerprint_steps"]))
    kwargs = _fingerprint_kwargs(model_id, p, db_url)
    with session_scope(db_url) as session:
        enrolment, art_id = enrol_owned_model(session, str(int(model_id)), fp_config=cfg,
                                              alpha=float(p["fingerprint_alpha"]), **kwargs)
    cal = enrolment.calibration
    return {"artefact_id": art_id, "commitment_sha256": enrolment.commitment_sha256,
            "n_fingerprints": enrolment.n_fingerprints, "test_aruc": cal.test_aruc,
            "held_out_negatives": len(cal.negative_scores), "null_false_alarms": cal.false_alarms,
            "null": (enrolment.zoo_manifest.get("null") or {}).get("description")}


def step_calibration(model_id: int, run_key: str, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    """Check the committed calibrations: both artefacts load (hashes, commitment) and carry
    a null to compute p-values against."""
    from sqlalchemy import select

    from audit_lib.ownership.artefacts import latest_artefact
    from audit_lib.ownership.fingerprint import load_enrolment

    with session_scope(db_url) as session:
        name = session.get(AuditedModel, int(model_id)).name
    out: dict[str, Any] = {}
    with session_scope(db_url) as session:
        cal = load_enrolment(session, int(model_id)).calibration
        if not cal.negative_scores or not cal.negative_logits:
            raise ValueError(f"model {name}: the fingerprint calibration has no held-out negatives")
        out["fingerprint"] = {"test_aruc": cal.test_aruc, "held_out_negatives": len(cal.negative_scores),
                              "null_false_alarms": cal.false_alarms, "null_fpr_upper_95": cal.fpr_upper_95}
        marked = session.scalar(select(AuditedModel).where(AuditedModel.name == f"{name}-watermarked"))
        if marked is not None:
            art = latest_artefact(session, marked.id, "watermark")
            null = art.spec.get("independent_white_box", [])
            if not null or "controls" not in art.tensors:
                raise ValueError(f"model {marked.name}: the watermark artefact carries no null (controls, "
                                 "independent encoders)")
            out["watermark"] = {"marked_model_id": marked.id, "controls": int(len(art.tensors["controls"])),
                                "independents": len(null), "alpha": art.spec.get("alpha")}
    return out


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def step_theft_risk(model_id: int, run_key: str, p: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    from audit_lib.methods.theft import StealRecipe
    from audit_lib.ownership.theft import run_theft_risk
    from audit_lib.pipelines.caches import zoo_cache_root

    out = run_theft_risk(model_id, budgets=str(p["theft_budgets"]),
                         recipe=StealRecipe(epochs=int(p["theft_epochs"]), lr=float(p["theft_lr"])),
                         profile=str(p["zoo_profile"]), zoo_entry=str(p["zoo_entry"]), zoo_cache=zoo_cache_root(),
                         run_key=f"{run_key}/theft", downstream_per_class=int(p["downstream_per_class"]),
                         train_size=_optional_int(p.get("theft_train_size")),
                         image_size=_optional_int(p.get("theft_image_size")),
                         progress=False, database_url=db_url)
    return {"finding_id": out.finding_id, "decision": out.result.decision, "p_value": out.result.p_value,
            "curve_png": str(out.png)}


_STEP_FUNCTIONS = {"watermark": step_watermark, "zoo": step_zoo, "fingerprint": step_fingerprint,
                   "calibration": step_calibration, "theft_risk": step_theft_risk}


def run_step(step: str, model_id: int, run_key: str, params: dict[str, Any] | None = None,
             *, db_url: str | None = None) -> dict[str, Any]:
    """Run one enrolment step (see the module doc); returns ids and numbers for XCom."""
    if step not in _STEP_FUNCTIONS:
        raise ValueError(f"enrolment step {step!r}: expected one of {', '.join(STEPS)}")
    p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None and k != "model_id"}}
    out = _STEP_FUNCTIONS[step](int(model_id), run_key, p, db_url)
    log.info("enrolment step %s for model %d: %s", step, model_id, out)
    return out
