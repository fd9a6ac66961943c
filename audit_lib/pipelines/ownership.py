"""Task bodies of the ownership audit: for each owned (enrolled) x suspect model pair (the
suspect a local checkpoint or an API), each registered ownership check
(:mod:`audit_lib.method_registry`: the watermark check, AWEncoder, and the fingerprint check,
MetaV) against the owner's committed enrolment artefacts.

The verification is the workflows' own (:func:`audit_lib.ownership.watermark.check_watermark`,
:func:`audit_lib.ownership.fingerprint.check_fingerprint`: hash-checked artefacts, the
null's provenance in the finding). This module only picks the pairs, opens the suspect's
evidence-recording handle and stores the finding.

Findings are stored under target ``suspect:SUSPECT_ID`` with ``parameters["owned_model_id"]``
naming the owned model (the report code reads both). The store's idempotency key is (run,
method, target, model version), which does not contain the owned model, so two owned models
checked with the same method against the same suspect in one run would share a key; that
case is refused with an error instead of silently returning the other pair's finding.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from audit_lib.encoders.base import RecordingHandle
from audit_lib.findings import FindingResult
from audit_lib.method_registry import OwnershipPair
from audit_lib.pipelines.handles import open_model_handle, query_stats
from audit_lib.store import session_scope
from audit_lib.store.models import EnrolmentArtefact

log = logging.getLogger(__name__)


def ownership_methods() -> tuple[str, ...]:
    """The registered ownership checks a pair task can run (:mod:`audit_lib.method_registry`);
    each needs an enrolment artefact of its own kind on the owned model."""
    from audit_lib.method_registry import names

    return names("ownership", with_task=True)


def _method(method: str) -> str:
    """The registered name of an ownership check (aliases accepted), or ValueError."""
    from audit_lib.method_registry import find

    spec = find(method)
    if spec is None or spec.area != "ownership" or spec.task is None:
        raise ValueError(f"ownership method {method!r}: expected one of {', '.join(ownership_methods())}")
    return spec.name


def artefact_kinds(owned_ids: list[int], *, db_url: str | None = None) -> dict[int, list[str]]:
    """owned model id -> the artefact kinds committed for it (sorted)."""
    with session_scope(db_url) as session:
        rows = session.execute(select(EnrolmentArtefact.model_id, EnrolmentArtefact.kind)
                               .where(EnrolmentArtefact.model_id.in_([int(i) for i in owned_ids]))
                               .distinct()).all()
    out: dict[int, list[str]] = {int(i): [] for i in owned_ids}
    for model_id, kind in rows:
        out[int(model_id)].append(str(kind))
    return {k: sorted(v) for k, v in out.items()}


def plan_ownership_pairs(snapshot: dict[str, Any], versions: list[dict[str, Any]], method: str | None = None,
                         *, db_url: str | None = None) -> list[dict[str, int]]:
    """Owned x suspect pairs, with the suspect's checked version; with ``method``, only
    owned models that have that method's artefact (others are named in the log)."""
    method = None if method is None else _method(method)
    suspects = {v["model_id"]: v for v in versions}
    roles = {m["id"]: m["role"] for m in snapshot["models"]}
    owned = list(snapshot["owned_enrolled"])
    if method is not None:
        kinds = artefact_kinds(owned, db_url=db_url)
        without = [o for o in owned if method not in kinds[o]]
        if without:
            log.info("%s: owned models %s have no %s artefact (not enrolled for it): not checked",
                     method, without, method)
        owned = [o for o in owned if method in kinds[o]]
    pairs = [{"owned_id": o, "suspect_id": s, "model_version_id": v["model_version_id"]}
             for o in owned for s, v in sorted(suspects.items()) if roles.get(s) == "suspect"]
    log.info("ownership%s: %d owned x %d suspects = %d pairs", f" ({method})" if method else "", len(owned),
             sum(1 for r in roles.values() if r == "suspect"), len(pairs))
    return pairs


def watermark_task(handle: RecordingHandle, pair: OwnershipPair) -> tuple[FindingResult, str]:
    """The watermark spec's pipeline task: the workflow's check (AWEncoder) of the owned
    model's latest committed artefact on the suspect. Returns (finding, commitment sha256)."""
    from audit_lib.ownership.watermark import check_watermark

    return check_watermark(handle, pair.owned_id, alpha=pair.alpha, database_url=pair.db_url)


def fingerprint_task(handle: RecordingHandle, pair: OwnershipPair) -> tuple[FindingResult, str]:
    """The fingerprint spec's pipeline task: the workflow's check (MetaV) of the owned
    model's committed fingerprint on the suspect. Returns (finding, commitment sha256)."""
    from audit_lib.ownership.fingerprint import check_fingerprint
    from audit_lib.store.models import AuditedModel

    with session_scope(pair.db_url) as session:
        suspect = session.get(AuditedModel, int(pair.suspect_id))
        session.expunge(suspect)
    return check_fingerprint(handle, pair.owned_id, suspect, alpha=pair.alpha, database_url=pair.db_url)


def _verify(method: str, handle: RecordingHandle, owned_id: int, suspect_id: int, alpha: float | None,
            db_url: str | None) -> tuple[FindingResult, str]:
    """Run the method's registered task on the owned model's latest committed artefact.
    Returns (FindingResult, commitment sha256)."""
    from audit_lib.method_registry import get, hook

    task = hook(get(method, "ownership"), "task")
    return task(handle, OwnershipPair(owned_id=owned_id, suspect_id=suspect_id, alpha=alpha, db_url=db_url))


def check_pair(method: str, pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
               *, db_url: str | None = None) -> dict[str, Any]:
    """Run one registered ownership check (``watermark``, ``fingerprint``, ...) for one pair and store it
    under target ``suspect:SUSPECT_ID`` with ``owned_model_id`` in its parameters
    (idempotent: a re-run for the same run returns the stored finding)."""
    from audit_lib.evidence import start_run, store_finding

    method = _method(method)
    alpha = (params or {}).get("alpha")
    alpha = None if alpha is None else float(alpha)  # None: the alpha committed at enrolment
    owned_id, suspect_id = int(pair["owned_id"]), int(pair["suspect_id"])
    handle = open_model_handle(suspect_id, run_key, db_url=db_url)
    if int(handle.model_version_id) != int(pair["model_version_id"]):
        raise RuntimeError(f"suspect {suspect_id} changed during the run (version id {handle.model_version_id}, "
                           f"checked {pair['model_version_id']}); re-run the audit")
    result, commitment = _verify(method, handle, owned_id, suspect_id, alpha, db_url)
    result.parameters = {**(result.parameters or {}), "owned_model_id": owned_id}
    target = f"suspect:{suspect_id}"
    with session_scope(db_url) as session:
        run = start_run(session, run_key, "ownership")
        row, created = store_finding(session, run, result, target_key=target,
                                     model_version_id=int(pair["model_version_id"]))
        stored_owner = (row.parameters or {}).get("owned_model_id")
        if stored_owner != owned_id:
            raise RuntimeError(
                f"run {run_key} already holds a {method} finding for {target} at this version, about owned "
                f"model {stored_owner}, not {owned_id}: the store keys findings by (run, method, target, "
                "version); audit these owned models in separate runs (params.model_ids)")
        out = {"finding_id": row.id, "created": created, "decision": row.decision, "method": row.method,
               "p_value": row.p_value, "owned_id": owned_id, "suspect_id": suspect_id}
    log.info("%s owned %d vs %s (commitment %s…): %s (p=%s, statistic=%s); %s; finding %d %s", method, owned_id,
             target, commitment[:12], result.decision, result.p_value, result.statistic, query_stats(handle),
             out["finding_id"], "stored" if created else "already stored (re-run)")
    return out


THEFT_DEFAULTS: dict[str, Any] = {"theft_budgets": "128,256", "theft_epochs": 12, "theft_lr": 0.05,
                                  "downstream_per_class": 30, "theft_image_size": None}


def owned_api_ids(snapshot: dict[str, Any]) -> list[int]:
    """The owned models served as APIs (the owner's deployed endpoints): their theft risk is
    measured through the API itself."""
    return [m["id"] for m in snapshot["models"] if m["role"] == "owned" and m["kind"] == "api"]


def theft_risk_for(model_id: int, run_key: str, params: dict[str, Any] | None = None,
                   *, db_url: str | None = None) -> dict[str, Any]:
    """StolenEncoder theft risk of one owned API (:func:`audit_lib.ownership.theft.run_theft_risk`,
    with the model's registered image sets and reference models), in the sub-run
    ``RUN_KEY/theft/MODEL_ID``; returns ids and numbers for XCom."""
    from audit_lib.methods.theft import StealRecipe
    from audit_lib.ownership.theft import run_theft_risk

    p = {**THEFT_DEFAULTS, **{k: v for k, v in (params or {}).items() if k in THEFT_DEFAULTS and v is not None}}
    out = run_theft_risk(int(model_id), budgets=str(p["theft_budgets"]), reference_budget=str(
        p["theft_budgets"]).split(",")[-1], recipe=StealRecipe(epochs=int(p["theft_epochs"]), lr=float(p["theft_lr"])),
        downstream_per_class=int(p["downstream_per_class"]), run_key=f"{run_key}/theft/{int(model_id)}",
        image_size=None if p["theft_image_size"] is None else int(p["theft_image_size"]),
        progress=False, database_url=db_url)
    log.info("theft risk of owned API %d: %s (p=%s); finding %d", model_id, out.result.decision, out.result.p_value,
             out.finding_id)
    return {"finding_id": out.finding_id, "decision": out.result.decision, "p_value": out.result.p_value,
            "model_id": int(model_id), "curve_png": str(out.png)}
