"""The embedded end-to-end demo behind ``make demo`` (``encoder-audit run demo``): the real
DAGs run in-process with ``dag.test()``, SQLite for Airflow's metadata and for the evidence
store, on the reference zoo's ``demo`` profile (the ``ci`` profile's entries that the demo
uses; whichever of the two is built first serves the other).

Steps: build or load the zoo (cached under ``var/zoo-cache``, keyed by config hash) ->
register ORL people of the tiny CLIP under their pseudonymous names (members named in its
training captions, non-members it never saw; held-out photos as reference photos) with
claimed images from the SimCLR target's member / non-member splits, the zoo's models, and
the owner's encoder -> ``model_enrolment`` for the owned encoder (watermark, suspect zoo,
fingerprint; cached by config hash) and a leaked copy of its watermarked version as a
suspect -> ``privacy_audit`` -> ``ownership_audit`` -> ``evidence_reports`` -> the findings
and the PDFs' paths, then how to open what each user sees (``encoder-audit run demo --serve``,
:mod:`audit_lib.pipelines.demo_serve`).

The enrolment's theft-risk step (StolenEncoder) is left out of the demo, and the demo says
so: a copy-accuracy-versus-budget curve that a user can act on needs thousands of queries and
tens of epochs per budget, which is not a first run's few minutes; a run at a few queries
would only print a meaningless p-value.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)


#: Enrolment steps the demo leaves out (see the module docstring), named in its output.
SKIPPED_STEPS = ("theft_risk",)
#: The enrolment's suspect zoo for the fingerprint: the ``small`` one (every kind of derivative
#: once or twice), which decides the demo's leaked copy and independent encoder as the
#: ``ci`` one does in a fraction of its training time.
DEMO_SUSPECT_ZOO = "small"
#: The zoo's 64-image target is watermarked with the paper's stages, as in the zoo's tests and
#: tables (the conferrable default costs that small target more accuracy than the tests allow).
DEMO_WATERMARK_PUBLISHED = True
THEFT_LEFT_OUT = ("theft risk (StolenEncoder): left out of the demo: a curve worth reading needs thousands of "
                  "queries per budget; run it on its own with `encoder-audit run dag model-enrolment --conf "
                  "'{\"model_id\": %d, \"skip_steps\": [\"watermark\", \"zoo\", \"fingerprint\", "
                  "\"calibration\"]}'`")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class TaskLogFiles(logging.Handler):
    """Collects each task's log lines while ``dag.test()`` runs the tasks one after another
    in this process (it writes no task log files itself), then writes them where Airflow's UI
    reads task logs (``{AIRFLOW_HOME}/logs``, Airflow's default file name template), so the
    demo's runs show their logs in the UI."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.current: tuple[str, int] | None = None
        self.lines: dict[tuple[str, int], list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("[DAG TEST] starting task_id="):
            task_id, _, index = msg.removeprefix("[DAG TEST] starting task_id=").partition(" map_index=")
            self.current = (task_id, int(index or -1))
        elif self.current is not None:
            self.lines.setdefault(self.current, []).append(self.format(record))
            if msg.startswith("[DAG TEST] end task"):
                self.current = None

    def write(self, dag_run: Any) -> int:
        """Write the collected lines per task instance of ``dag_run``; returns files written."""
        from airflow.configuration import conf

        root = Path(conf.get("logging", "base_log_folder"))
        written = 0
        for ti in dag_run.get_task_instances():
            lines = self.lines.get((ti.task_id, ti.map_index))
            if not lines:
                continue
            folder = root / f"dag_id={ti.dag_id}" / f"run_id={ti.run_id}" / f"task_id={ti.task_id}"
            if ti.map_index >= 0:
                folder /= f"map_index={ti.map_index}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"attempt={max(1, ti.try_number)}.log").write_text("\n".join(lines) + "\n")
            written += 1
        return written


def _run(dags: dict, dag_id: str, conf: dict) -> float:
    _say(f"== {dag_id} {conf or ''}".rstrip())
    t0 = time.perf_counter()
    logs = TaskLogFiles()
    logging.getLogger().addHandler(logs)
    try:
        dr = dags[dag_id].test(run_conf=conf)
    finally:
        logging.getLogger().removeHandler(logs)
    logs.write(dr)
    took = time.perf_counter() - t0
    _say(f"   {dag_id}: {dr.state} in {took:.0f} s")
    if str(dr.state) != "success":
        failed = [ti.task_id for ti in dr.get_task_instances() if str(ti.state) == "failed"]
        raise SystemExit(f"{dag_id} did not succeed (failed tasks: {', '.join(failed) or 'none'}): see the log above")
    return took


def main(n_candidates: int = 1000, profile: str = "demo", enrol: bool = True,
         demo_dir: Path | None = None) -> dict[str, float]:
    """Run the whole demo in a fresh ``var/demo`` (the zoo and enrolment caches are kept).
    Returns seconds per stage."""
    demo_dir = Path(demo_dir or PROJECT_ROOT / "var" / "demo")
    from audit_lib.airflow_env import fresh_embedded

    fresh_embedded(demo_dir)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("weasyprint", "fontTools", "httpx", "http.access"):  # per-page and per-poll lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    from audit_lib.airflow_env import ensure_pools, load_dags, migrate_metadata
    from audit_lib.pipelines.caches import load_zoo, zoo_cache_root
    from audit_lib.pipelines.zoo_registry import register_copy, register_ownership, register_privacy
    from audit_lib.store import upgrade

    _say(f"== the reference zoo ({profile} profile; trained once, then cached under {zoo_cache_root()})")
    helper = _zoo_helper(profile, demo_dir)
    try:
        manifest = load_zoo(profile, build=True, progress=True)
    except BaseException:
        if helper is not None:
            helper.terminate()
        raise
    finally:
        if helper is not None:
            helper.wait()
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
        timings["model_enrolment"] = _run(dags, "model_enrolment", {"model_id": owned_id, "zoo_profile": profile,
                                                                   "suspect_zoo": DEMO_SUSPECT_ZOO,
                                                                   "watermark_published": DEMO_WATERMARK_PUBLISHED,
                                                                   "skip_steps": list(SKIPPED_STEPS)})
        _say("  " + THEFT_LEFT_OUT % owned_id)
        marked = _marked_model(owned_id)
        if marked is not None:
            leaked = register_copy("leaked-acme-encoder", marked)
            ownership_models += [marked, leaked]
            _say(f"  suspect {leaked}: leaked-acme-encoder (a published copy of the watermarked acme-encoder)")
    timings["privacy_audit"] = _run(dags, "privacy_audit", {"n_candidates": n_candidates})
    # the owner's models and their suspects (the zoo's other models are not the owner's business)
    timings["ownership_audit"] = _run(dags, "ownership_audit", {"model_ids": ownership_models})
    timings["evidence_reports"] = _release_reports(dags, demo_dir)
    timings["total"] = time.perf_counter() - t0
    _summary()
    _say("\n== time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    _say("\n== what each user sees: `encoder-audit run demo --serve` (or `make up`) opens, on this demo's data,\n"
         "   the operator's Airflow UI (these DAG runs and their logs), the DPO web app (a demo DPO account,\n"
         f"   its password printed once) and the folder of PDF reports ({demo_dir / 'reports'}); Ctrl-C stops it.")
    return timings


def _release_reports(dags: dict, demo_dir: Path) -> float:
    """``evidence_reports`` with the demo's own signer (a demo CA that ``report verify``
    trusts here, never a filing identity) and its reviewer ``demo-legal`` approving the drafts
    through Airflow's REST API, as a person would in Required Actions."""
    import os

    from audit_lib.config import get_settings
    from audit_lib.pipelines.demo_review import COMMENT, REVIEWER, DemoReviewer, reviewer_auth_env
    from audit_lib.reports.demo_signer import demo_signer_settings

    auth, password = reviewer_auth_env(demo_dir / "review")
    os.environ.update({**demo_signer_settings(demo_dir / "signer"), **auth})
    get_settings.cache_clear()
    _say(f"  the drafts wait for a release decision; the demo's reviewer `{REVIEWER}` approves them "
         f"(\"{COMMENT}\") and the released PDFs are signed by the demo CA in {demo_dir / 'signer'}")
    reviewer = DemoReviewer(password)
    reviewer.start()
    try:
        took = _run(dags, "evidence_reports", {})
    finally:
        reviewer.stop.set()
        reviewer.join(timeout=10)
    if reviewer.error:
        raise SystemExit(f"the demo's reviewer could not answer the release review: {reviewer.error}")
    _say(f"  {reviewer.answered} review(s) approved")
    return took


def _zoo_helper(profile: str, demo_dir: Path) -> Any:
    """On a first run (no manifest in the cache yet), a second process building the same zoo:
    the cache's per-entry locks give each process the entries the other is not training, so
    two train at a time (the weights are the same either way: each entry trains on its own
    fixed thread count and seed). None when the zoo was built before."""
    import subprocess

    from audit_lib.pipelines.caches import zoo_cache_root
    from audit_lib.zoo.build import zoo_root

    if (zoo_root(profile, zoo_cache_root()) / "manifest.json").is_file():
        return None
    code = (f"from audit_lib.pipelines.caches import load_zoo; load_zoo({profile!r}, build=True)")
    with open(demo_dir / "zoo-helper.log", "w") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _marked_model(owned_id: int) -> int | None:
    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope() as s:
        name = s.get(AuditedModel, owned_id).name
        return s.scalar(select(AuditedModel.id).where(AuditedModel.name == f"{name}-watermarked"))


def _summary() -> None:
    from sqlalchemy import select

    from audit_lib.reports.release import released_decision
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
        reports = []
        for r in s.scalars(select(Report).order_by(Report.id)):
            released = released_decision(s, r.id)
            reports.append((r.case_id, r.path, released.released_path if released else None,
                            released.decided_by if released else None))
    _say("\n== PDF evidence reports (draft -> released, signed)")
    for case_id, draft, released, by in reports:
        _say(f"  {case_id}: {released} (approved by {by})" if released else f"  {case_id}: {draft} (draft, not released)")
    if not reports:
        _say("  none (no positive findings)")
    elif any(released for _, _, released, _ in reports):
        import os

        _say("  check one (signature, chain, anchors):\n    AUDIT_DATA_DIR=%s AUDIT_DATABASE_URL=%s AUDIT_REPORT_TRUST_ROOT=%s \\\n"
             "    encoder-audit report verify %s" % (os.environ.get("AUDIT_DATA_DIR", ""),
                                                  os.environ.get("AUDIT_DATABASE_URL", ""),
                                                  os.environ.get("AUDIT_REPORT_TRUST_ROOT", ""),
                                                  next(r for _, _, r, _ in reports if r)))


if __name__ == "__main__":
    main()
