"""The registry snapshot at the start of an audit run: which subjects and models to audit.

It opens (or finds again, on a retry) the run's AuditRun row and returns ids and counts
only: names and images never travel through XCom.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from audit_lib.evidence import start_run
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel, DataSubject, EnrolmentArtefact

log = logging.getLogger(__name__)


def snapshot_registry(run_key: str, *, kind: str, config: dict[str, Any] | None = None,
                      subject_ids: Sequence[int] | None = None,
                      model_ids: Sequence[int] | None = None,
                      db_url: str | None = None) -> dict[str, Any]:
    """Live (not erased) subjects and active (not retired) models, optionally restricted
    to ids.

    Returns ``{"run_key", "run_id", "subjects": [{"id", "n_reference", "n_claimed"}],
    "models": [{"id", "role", "kind", "text"}], "owned_enrolled": [ids]}``. An unknown id in
    a restriction is an error naming it (a typo must not turn into an empty audit), and so
    is a retired model named in one (it takes no new audits).
    """
    with session_scope(db_url) as session:
        run = start_run(session, run_key, kind, config or {})
        subj_q = select(DataSubject).where(DataSubject.erased_at.is_(None)).order_by(DataSubject.id)
        model_q = select(AuditedModel).order_by(AuditedModel.id)
        if subject_ids:
            subj_q = subj_q.where(DataSubject.id.in_(list(subject_ids)))
        if model_ids:
            model_q = model_q.where(AuditedModel.id.in_(list(model_ids)))
        subjects = list(session.scalars(subj_q))
        models = list(session.scalars(model_q))
        _check_known("subject", subject_ids, [s.id for s in subjects])
        _check_known("model", model_ids, [m.id for m in models])
        retired = [m for m in models if m.retired_at is not None]
        if retired and model_ids:
            raise ValueError(f"model ids {[m.id for m in retired]}: retired "
                             f"({', '.join(m.name for m in retired)}), they take no new audits; "
                             "nothing was audited")
        if retired:
            log.info("registry snapshot for %s: skipping %d retired model(s)", run_key, len(retired))
        models = [m for m in models if m.retired_at is None]
        enrolled = set(session.scalars(select(EnrolmentArtefact.model_id).distinct()))
        snap = {
            "run_key": run_key, "run_id": run.id,
            "subjects": [{"id": s.id,
                          "n_reference": sum(1 for i in s.images if i.role == "reference"),
                          "n_claimed": sum(1 for i in s.images if i.role == "claimed")}
                         for s in subjects],
            "models": [{"id": m.id, "role": m.role, "kind": m.kind,
                        "text": "text" in (m.capabilities or [])} for m in models],
            "owned_enrolled": sorted(m.id for m in models if m.role == "owned" and m.id in enrolled),
        }
    log.info("registry snapshot for %s: %d live subjects, %d models (%d owned and enrolled)",
             run_key, len(snap["subjects"]), len(snap["models"]), len(snap["owned_enrolled"]))
    return snap


def _check_known(what: str, wanted: Sequence[int] | None, found: list[int]) -> None:
    if not wanted:
        return
    missing = sorted(set(int(i) for i in wanted) - set(found))
    if missing:
        raise ValueError(f"{what} ids {missing}: not registered (or erased); nothing was audited")
