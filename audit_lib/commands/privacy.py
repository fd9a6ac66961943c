"""``encoder-audit eval privacy`` and ``encoder-audit audit privacy``.

``eval privacy`` measures IDIA and EncoderMI on the reference zoo's labelled members and
non-members and prints the table (audit_lib/eval/privacy.py). ``audit privacy`` runs both
methods for one registered subject and one registered model, through the store's query
cache, against the model's registered reference non-members, and stores the findings with
their evidence chain in an audit run that always ends ``succeeded`` or ``failed``.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

log = logging.getLogger(__name__)


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The sub-command group ``name``, shared with other areas' modules that add to it."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(group, name=name)
    return group


def audit_pair(subject_id: int, model_ref: str, *, run_key: str | None = None, rule: str = "T",
               alpha: float = 0.05, n_views: int = 10, n_candidates: int = 1000,
               db_url: str | None = None) -> dict[str, Any]:
    """Run IDIA (model with text) and EncoderMI (subject with claimed images, against the
    model's registered reference non-members) for one subject and model, and store the
    findings in one audit run that ends ``succeeded`` or ``failed``.

    Every input check runs before the model is opened: a refusal (erased subject, retired
    model, too few photos or references, a claimed image that is also a reference, rule
    V or S without a trained classifier) raises RegistryError or MethodInputError and
    leaves no audit run and no evidence; so does an API model whose query budget is smaller
    than the run needs (:mod:`audit_lib.query_budget`). Returns the run key, its status, the findings'
    records and the queries sent to the model vs answered from the cache."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.encoders import open_handle
    from audit_lib.encoders.cache import query_counts
    from audit_lib.evidence import closing_run, finding_record, start_run, store_finding
    from audit_lib.methods.identity_inference import run_idia
    from audit_lib.methods.membership_inference import run_encodermi
    from audit_lib.pipelines.privacy import annotate, check_identity_inputs, check_membership_inputs
    from audit_lib.pipelines.references import load_reference_nonmembers
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun

    run_key = run_key or f"cli-privacy-{uuid.uuid4().hex[:12]}"
    with session_scope(db_url) as s:
        subject = registry.get_subject(s, subject_id)
        registry.require_auditable(subject)
        model = registry.get_model(s, model_ref)
        registry.require_model_auditable(model)
        photos = [b for _, b in registry.subject_image_bytes(s, subject, "reference")]
        claimed = [b for _, b in registry.subject_image_bytes(s, subject, "claimed")]
        name, aliases, sex = subject.name, list(subject.aliases or []), subject.sex
        s.expunge(model)
    # refuse bad input before anything is queried or written
    check_identity_inputs(photos, model.capabilities or [], alpha=alpha, sex=sex)
    refs: list[bytes] = []
    classifier = None
    if claimed:
        try:
            refs = load_reference_nonmembers(model.id, db_url=db_url)
        except ValueError as exc:
            raise registry.RegistryError(f"subject {subject_id} has {len(claimed)} claimed images, but {exc}") from None
        classifier = check_membership_inputs(claimed, refs, rule=rule, n_views=n_views, alpha=alpha)
    if model.kind == "api" and model.query_budget is not None:
        from audit_lib.query_budget import privacy_inputs, require_budget

        planned = privacy_inputs(capabilities=model.capabilities or [], photos=photos, claimed=claimed,
                                 references=refs, name=name, aliases=aliases, sex=sex,
                                 n_candidates=n_candidates, n_views=n_views)
        with session_scope(db_url) as s:
            require_budget(s, model, planned)  # before the first query is paid for
    config = {"subject": subject_id, "model": model.name, "rule": rule, "alpha": alpha, "n_views": n_views,
              "n_candidates": n_candidates, "n_references": len(refs)}
    records = []
    with closing_run(run_key, db_url):
        with session_scope(db_url) as s:
            start_run(s, run_key, "privacy", config)
        handle = open_handle(model, run_key=run_key, db_url=db_url)
        results = []
        since = query_counts(handle)
        results.append(annotate(run_idia(handle, photos, name, aliases=aliases, sex=sex,
                                         n_candidates=n_candidates, alpha=alpha), handle, since))
        if claimed:
            since = query_counts(handle)
            results.append(annotate(run_encodermi(handle, claimed, refs, rule=rule, n_views=n_views, alpha=alpha,
                                                  classifier=classifier), handle, since))
        with session_scope(db_url) as s:
            run = start_run(s, run_key, "privacy")
            for result in results:
                row, _ = store_finding(s, run, result, target_key=f"subject:{subject_id}",
                                       model_version_id=handle.model_version_id, subject_id=subject_id)
                records.append(finding_record(row))
    sent, hits = query_counts(handle)
    with session_scope(db_url) as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        status = run.status
    log.info("privacy audit %s: subject %s on model %s: %d queries sent to the model, %d answered from the "
             "cache, %d canary queries; run %s", run_key, subject_id, model.name, sent, hits,
             handle.canary_queries, status)
    return {"run_key": run_key, "status": status, "queries_sent": sent, "cache_hits": hits,
            "canary_queries": int(handle.canary_queries), "findings": records}


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def finding_lines(r: dict[str, Any]) -> list[str]:
    """The CLI's lines for one finding record: decision, p-value, queries, Holm warning."""
    d = r.get("details") or {}
    extra = ""
    if d.get("published_decision") is not None and "n_correct" in d:  # IDIA's published rule
        extra = f"; published rule: {d.get('published_decision')} ({d.get('n_correct')} of 21 templates)"
    lines = [f"{r['method']}: {r['decision']} (p = {_p(r['p_value'])}, alpha = {r['alpha']}){extra}; "
             f"finding {r['id']}"]
    if "queries_sent" in d:
        lines.append(f"  queries: {d['queries_sent']} sent to the model, {d['cache_hits']} answered from the cache")
    if d.get("holm_warning"):
        lines.append(f"  warning: {d['holm_warning']}")
    return lines


def image_table(r: dict[str, Any]) -> list[str]:
    """EncoderMI's per-image table: claimed image sha256 prefix, score, p-value, Holm-adjusted
    p-value and the decision at the finding's alpha."""
    images = (r.get("details") or {}).get("images") or []
    if not images:
        return []
    out = [f"  {'image sha256':<14} {'score':>9} {'p':>8} {'Holm p':>8}  decision"]
    for im in images:
        out.append(f"  {im['sha256'][:12]:<14} {im['score']:>9.4f} {im['p_value']:>8.4g} {im['p_holm']:>8.4g}  "
                   f"{'member' if im['member'] else 'not shown'}")
    return out


def register(app: typer.Typer) -> None:
    eval_app = _group(app, "eval", "Measure the methods on the reference zoo.")
    audit_app = _group(app, "audit", "Audit registered subjects and models; store the findings.")

    @eval_app.command("privacy")
    def eval_privacy(
        profile: Annotated[str, typer.Option(help="zoo profile to evaluate on (built or reused from the cache)")] = "ci",
        part: Annotated[Optional[list[str]], typer.Option(help="idia and/or encodermi (default both)")] = None,
        n_candidates: Annotated[int, typer.Option(help="IDIA: candidate names in all")] = 1000,
        tau: Annotated[int, typer.Option(help="IDIA: published rule, templates correct")] = 1,
        alpha: Annotated[float, typer.Option(help="calibrated decision level")] = 0.05,
        views: Annotated[int, typer.Option(help="EncoderMI: augmented views per image")] = 10,
        mi_images: Annotated[int, typer.Option(help="EncoderMI: members, test non-members and references each")] = 250,
        impostors: Annotated[int, typer.Option(help="IDIA: random-name nulls per person")] = 3,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="write the full result here")] = None,
        docs: Annotated[Optional[Path], typer.Option(help="also write the figures here (e.g. docs/)")] = None,
        zoo_cache: Annotated[Optional[Path], typer.Option(help="the zoo's cache folder (default: DATA_DIR/zoo)")] = None,
    ) -> None:
        """Evaluate IDIA and EncoderMI on the zoo's labelled members and non-members."""
        from audit_lib.config import get_settings
        from audit_lib.eval.privacy import run_evaluation, table_lines, write_json
        from audit_lib.zoo.build import build_zoo

        from audit_lib.cli_errors import check_output

        check_output(json_out, folder=False, option="--json")
        check_output(docs, folder=True, option="--docs")
        parts = part or ["idia", "encodermi"]
        bad = set(parts) - {"idia", "encodermi"}
        if bad:
            typer.secho(f"error: --part {sorted(bad)}: expected idia or encodermi", fg="red", err=True)
            raise typer.Exit(2)
        manifest = build_zoo(profile, register=False, cache_root=zoo_cache)
        out_dir = get_settings().data_dir / "privacy"
        dirs = [out_dir] + ([docs] if docs else [])
        result = run_evaluation(manifest, n_candidates=n_candidates, tau=tau, alpha=alpha, n_views=views,
                                mi_images=mi_images, impostors_per_person=impostors, figure_dirs=dirs,
                                parts=parts)
        path = write_json(result, json_out or out_dir / f"eval-{profile}.json")
        for line in table_lines(result):
            typer.echo(line)
        typer.echo(f"figures: {', '.join(result.get('figures', []))}")
        typer.echo(f"full result: {path}")

    @audit_app.command("privacy")
    def audit_privacy(
        subject: Annotated[int, typer.Option(help="the subject's id")],
        model: Annotated[str, typer.Option(help="the model's name or id")],
        rule: Annotated[str, typer.Option(help="EncoderMI rule: T, V or S")] = "T",
        alpha: Annotated[float, typer.Option(help="decision level")] = 0.05,
        views: Annotated[int, typer.Option(help="EncoderMI: augmented views per image")] = 10,
        n_candidates: Annotated[int, typer.Option(help="IDIA: candidate names in all")] = 1000,
        run_key: Annotated[Optional[str], typer.Option(help="audit run key (default: a new one)")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="print the run and its findings as JSON records")] = False,
        details: Annotated[bool, typer.Option("--details", help="also print EncoderMI's per-image table")] = False,
    ) -> None:
        """Run identity and membership inference for one subject and model; store the findings.

        EncoderMI ranks the claimed images against the model's reference non-members,
        registered with `encoder-audit models references add`."""
        from audit_lib.cli_errors import guarded
        from audit_lib.encoders.loading import CheckpointError
        from audit_lib.encoders.remote import RemoteEncoderError
        from audit_lib.methods import MethodInputError

        out = guarded(lambda: audit_pair(subject, model, run_key=run_key, rule=rule, alpha=alpha, n_views=views,
                                         n_candidates=n_candidates),
                      MethodInputError, CheckpointError, RemoteEncoderError)
        if json_out:
            typer.echo(json.dumps(out, indent=2, default=str))
            return
        for r in out["findings"]:
            for line in finding_lines(r):
                typer.echo(line)
            if details:
                for line in image_table(r):
                    typer.echo(line)
        typer.echo(f"run {out['run_key']}: {out['status']}; {out['queries_sent']} queries sent to the model, "
                   f"{out['cache_hits']} answered from the cache")
        typer.echo(json.dumps({"run_key": out["run_key"], "findings": [r["id"] for r in out["findings"]]}))
