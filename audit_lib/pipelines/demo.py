"""The embedded end-to-end demo behind ``make demo`` (``encoder-audit run demo``): the real
DAGs run in-process with ``dag.test()``, SQLite for Airflow's metadata and for the evidence
store, on the reference zoo.

Steps: build or load the zoo (cached under ``var/zoo-cache``, keyed by config hash) ->
register ORL people of the tiny CLIP under their pseudonymous names (members named in its
training captions, non-members it never saw; held-out photos as reference photos) with
claimed images from the SimCLR target's member / non-member splits, the zoo's models, and
the owner's encoder -> ``model_enrolment`` for the owned encoder (watermark, suspect zoo,
fingerprint; cached by config hash) and a leaked copy of its watermarked version as a
suspect -> ``privacy_audit`` -> ``ownership_audit`` -> ``evidence_reports`` -> the findings
and the PDFs' paths.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(dags: dict, dag_id: str, conf: dict) -> float:
    _say(f"== {dag_id} {conf or ''}".rstrip())
    t0 = time.perf_counter()
    dr = dags[dag_id].test(run_conf=conf)
    took = time.perf_counter() - t0
    _say(f"   {dag_id}: {dr.state} in {took:.0f} s")
    if str(dr.state) != "success":
        failed = [ti.task_id for ti in dr.get_task_instances() if str(ti.state) == "failed"]
        raise SystemExit(f"{dag_id} did not succeed (failed tasks: {', '.join(failed) or 'none'}): see the log above")
    return took


def main(n_candidates: int = 1000, profile: str = "ci", enrol: bool = True,
         demo_dir: Path | None = None) -> dict[str, float]:
    """Run the whole demo in a fresh ``var/demo`` (the zoo and enrolment caches are kept).
    Returns seconds per stage."""
    demo_dir = Path(demo_dir or PROJECT_ROOT / "var" / "demo")
    from audit_lib.airflow_env import fresh_embedded

    fresh_embedded(demo_dir)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    from audit_lib.airflow_env import ensure_pools, load_dags, migrate_metadata
    from audit_lib.pipelines.caches import load_zoo, zoo_cache_root
    from audit_lib.pipelines.zoo_registry import register_copy, register_ownership, register_privacy
    from audit_lib.store import upgrade

    _say(f"== the reference zoo ({profile} profile; trained once, then cached under {zoo_cache_root()})")
    manifest = load_zoo(profile, build=True, progress=True)
    timings["zoo"] = time.perf_counter() - t0
    _say(f"   {len(manifest.entries)} encoders ready in {timings['zoo']:.0f} s")
    upgrade()
    _say("== registering subjects and models")
    reg = register_privacy(manifest)
    for sid, label in reg.labels.items():
        _say(f"  subject {sid}: {label}")
    own = register_ownership(manifest)
    _say(f"  models: {', '.join(f'{k} ({v})' for k, v in {**reg.models, **own}.items())}")
    _say("== Airflow (embedded, SQLite metadata): db migrate, gpu pool")
    migrate_metadata()
    ensure_pools()
    dags = load_dags()
    owned_id = own["acme-encoder"]
    ownership_models = [owned_id, *(v for k, v in own.items() if k != "acme-encoder")]
    if enrol:
        timings["model_enrolment"] = _run(dags, "model_enrolment", {"model_id": owned_id, "zoo_profile": profile})
        marked = _marked_model(owned_id)
        if marked is not None:
            leaked = register_copy("leaked-acme-encoder", marked)
            ownership_models += [marked, leaked]
            _say(f"  suspect {leaked}: leaked-acme-encoder (a published copy of the watermarked acme-encoder)")
    timings["privacy_audit"] = _run(dags, "privacy_audit", {"n_candidates": n_candidates})
    # the owner's models and their suspects (the zoo's other models are not the owner's business)
    timings["ownership_audit"] = _run(dags, "ownership_audit", {"model_ids": ownership_models})
    timings["evidence_reports"] = _run(dags, "evidence_reports", {})
    timings["total"] = time.perf_counter() - t0
    _summary()
    _say("\n== time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return timings


def _marked_model(owned_id: int) -> int | None:
    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope() as s:
        name = s.get(AuditedModel, owned_id).name
        return s.scalar(select(AuditedModel.id).where(AuditedModel.name == f"{name}-watermarked"))


def _summary() -> None:
    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel, AuditRun, DataSubject, Finding, ModelVersion, Report

    with session_scope() as s:
        names = {d.id: d.pseudonym for d in s.scalars(select(DataSubject))}
        models = {v.id: v.model.name for v in s.scalars(select(ModelVersion))}
        model_names = {m.id: m.name for m in s.scalars(select(AuditedModel))}
        _say("\n== findings")
        for f in s.scalars(select(Finding).order_by(Finding.id)):
            if f.subject_id is not None:
                who = names.get(f.subject_id, f.target_key)
            elif f.target_key.startswith("suspect:"):
                owned = model_names.get((f.parameters or {}).get("owned_model_id"), "?")
                who = f"{owned} vs {model_names.get(int(f.target_key.split(':')[1]), f.target_key)}"
            else:
                who = f.target_key
            p = "n/a" if f.p_value is None else f"{f.p_value:.3g}"
            d = f.details or {}
            queries = (f"; {d['queries_sent']} queries sent, {d['cache_hits']} from the cache"
                       if "queries_sent" in d else "")
            _say(f"  {f.method:<11} {who:<44} on {models.get(f.model_version_id, '?'):<24} {f.decision} "
                 f"(p={p}){queries}")
        _say("\n== audit runs")
        for run in s.scalars(select(AuditRun).order_by(AuditRun.id)):
            _say(f"  {run.run_key}: {run.kind}, {run.status}")
        reports = list(s.scalars(select(Report).order_by(Report.id)))
    _say("\n== PDF evidence reports")
    for r in reports:
        _say(f"  {r.case_id}: {r.path}")
    if not reports:
        _say("  none (no positive findings)")


if __name__ == "__main__":
    main()
