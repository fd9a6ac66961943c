"""Task bodies of the ownership audit (DESIGN §2.4, §2.5): for each owned (enrolled) x
suspect model pair, the watermark check (AWEncoder) and the fingerprint check (MetaV)
against the owner's committed enrolment artefacts.

The verification itself is the methods' own: ``audit_lib.methods.watermark.verify_watermark``
on the hash-checked artefact (``audit_lib.ownership.latest_artefact``) and
``audit_lib.methods.fingerprint.verify`` on the enrolment rebuilt from it
(``audit_lib.commands.fingerprint.load_enrolment``). This module only picks the pairs,
opens the suspect's evidence-recording handle and stores the finding.

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

from audit_lib.pipelines.handles import open_model_handle, query_stats
from audit_lib.store import session_scope
from audit_lib.store.models import EnrolmentArtefact

log = logging.getLogger(__name__)

METHODS = ("watermark", "fingerprint")
"""Ownership checks; each needs an enrolment artefact of the same kind on the owned model."""


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
    if method is not None and method not in METHODS:
        raise ValueError(f"ownership method {method!r}: expected one of {', '.join(METHODS)}")
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


def _verify(method: str, handle: Any, owned_id: int, alpha: float | None, db_url: str | None) -> tuple[Any, str]:
    """Run the method's verification on the owned model's latest committed artefact.
    Returns (FindingResult, commitment sha256)."""
    from audit_lib.ownership.artefacts import latest_artefact

    with session_scope(db_url) as session:
        if method == "watermark":
            from audit_lib.methods.watermark import ARTEFACT_KIND

            artefact = latest_artefact(session, int(owned_id), ARTEFACT_KIND)  # hash- and commitment-checked
        else:
            from audit_lib.commands.fingerprint import load_enrolment

            enrolment = load_enrolment(session, int(owned_id))
    if method == "watermark":
        from audit_lib.methods.watermark import verify_watermark

        return verify_watermark(handle, artefact, alpha=alpha), artefact.commitment_sha256
    from audit_lib.methods.fingerprint import verify

    return verify(handle, enrolment, alpha=alpha), str(enrolment.commitment_sha256)


def check_pair(method: str, pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
               *, db_url: str | None = None) -> dict[str, Any]:
    """Run one ownership check (``watermark`` or ``fingerprint``) for one pair and store it
    under target ``suspect:SUSPECT_ID`` with ``owned_model_id`` in its parameters
    (idempotent: a re-run for the same run returns the stored finding)."""
    from audit_lib.evidence import start_run, store_finding

    if method not in METHODS:
        raise ValueError(f"ownership method {method!r}: expected one of {', '.join(METHODS)}")
    alpha = (params or {}).get("alpha")
    alpha = None if alpha is None else float(alpha)  # None: the alpha committed at enrolment
    owned_id, suspect_id = int(pair["owned_id"]), int(pair["suspect_id"])
    handle = open_model_handle(suspect_id, run_key, db_url=db_url)
    if int(handle.model_version_id) != int(pair["model_version_id"]):
        raise RuntimeError(f"suspect {suspect_id} changed during the run (version id {handle.model_version_id}, "
                           f"checked {pair['model_version_id']}); re-run the audit")
    result, commitment = _verify(method, handle, owned_id, alpha, db_url)
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
