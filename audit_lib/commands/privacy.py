"""``encoder-audit eval privacy`` and ``encoder-audit audit privacy``.

``eval privacy`` measures IDIA and EncoderMI on the reference zoo's labelled members and
non-members and prints the table (audit_lib/eval/privacy.py). ``audit privacy`` runs both
methods for one registered subject and one registered model, through the store's query
cache, and stores the findings with their evidence chain.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The sub-command group ``name``, shared with other areas' modules that add to it."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(group, name=name)
    return group


def zoo_references(model: Any, n: int = 100, profile: str | None = None) -> list[bytes]:
    """Known non-member images for a zoo membership target (its held-out split), or []
    when the model is not a zoo entry with one."""
    from audit_lib.config import get_settings
    from audit_lib.eval.privacy import png_bytes
    from audit_lib.zoo.manifest import ZooManifest

    roots = sorted((get_settings().data_dir / "zoo").glob(f"{profile or '*'}/manifest.json"))
    for path in roots:
        manifest = ZooManifest.load(path)
        for e in manifest.entries:
            if model.weights_path and Path(e.weights_path) == Path(model.weights_path) \
                    and e.splits.get("nonmembers"):
                from audit_lib.zoo.data import load_images

                images = load_images()
                idx = e.splits["nonmembers"][:n]
                return [png_bytes(images.x_train[i]) for i in idx]
    return []


def audit_pair(subject_id: int, model_ref: str, *, run_key: str | None = None, rule: str = "T",
               alpha: float = 0.05, n_views: int = 10, n_candidates: int = 1000,
               references: list[bytes] | None = None, db_url: str | None = None) -> list[dict[str, Any]]:
    """Run IDIA (model with text) and EncoderMI (subject with claimed images) for one
    subject and model; store the findings in one audit run; return their records."""
    from audit_lib import registry
    from audit_lib.encoders import open_handle
    from audit_lib.evidence import finding_record, start_run, store_finding
    from audit_lib.methods.identity_inference import run_idia
    from audit_lib.methods.membership_inference import run_encodermi
    from audit_lib.store import session_scope

    from audit_lib.methods import MethodInputError
    from audit_lib.methods.identity_inference import MIN_IMAGES

    run_key = run_key or f"cli-privacy-{uuid.uuid4().hex[:12]}"
    with session_scope(db_url) as s:
        subject = registry.get_subject(s, subject_id)
        registry.require_auditable(subject)
        model = registry.get_model(s, model_ref)
        photos = [b for _, b in registry.subject_image_bytes(s, subject, "reference")]
        claimed = [b for _, b in registry.subject_image_bytes(s, subject, "claimed")]
        name, aliases, sex = subject.name, list(subject.aliases or []), subject.sex
    # refuse bad input before anything is queried or written
    if "text" in model.capabilities and len(photos) < MIN_IMAGES:
        raise MethodInputError(f"subject {subject_id} has {len(photos)} reference photo(s); identity "
                               f"inference needs at least {MIN_IMAGES}")
    refs: list[bytes] = []
    if claimed:
        refs = references if references is not None else zoo_references(model)
        if not refs:
            raise registry.RegistryError(
                f"subject {subject_id} has {len(claimed)} claimed images, but no known non-member reference "
                f"images for model {model.name}: pass --references DIR")
    with session_scope(db_url) as s:
        start_run(s, run_key, "privacy", {"subject": subject_id, "model": model.name, "rule": rule,
                                           "alpha": alpha, "n_views": n_views, "n_candidates": n_candidates})
    handle = open_handle(model, run_key=run_key, db_url=db_url)
    results = [run_idia(handle, photos, name, aliases=aliases, sex=sex, n_candidates=n_candidates, alpha=alpha)]
    if claimed:
        results.append(run_encodermi(handle, claimed, refs, rule=rule, n_views=n_views, alpha=alpha))
    records = []
    with session_scope(db_url) as s:
        run = start_run(s, run_key, "privacy")
        for result in results:
            row, _ = store_finding(s, run, result, target_key=f"subject:{subject_id}",
                                   model_version_id=handle.model_version_id, subject_id=subject_id)
            records.append(finding_record(row))
    return records


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
        references: Annotated[Optional[Path], typer.Option(help="folder of known non-member images for EncoderMI")] = None,
        run_key: Annotated[Optional[str], typer.Option(help="audit run key (default: a new one)")] = None,
    ) -> None:
        """Run identity and membership inference for one subject and model; store the findings."""
        from audit_lib.cli import fail
        from audit_lib.methods import MethodInputError
        from audit_lib.registry import ImageLimits, RegistryError

        run_key = run_key or f"cli-privacy-{uuid.uuid4().hex[:12]}"
        refs = None
        if references is not None:
            from audit_lib.images import ImageError, check_image_folder

            try:
                refs = [im.data for im in check_image_folder(references, **ImageLimits.from_settings().as_kwargs())]
            except ImageError as exc:
                fail(str(exc))
        try:
            records = audit_pair(subject, model, run_key=run_key, rule=rule, alpha=alpha, n_views=views,
                                 n_candidates=n_candidates, references=refs)
        except (RegistryError, MethodInputError) as exc:
            fail(str(exc))
        for r in records:
            p = "n/a" if r["p_value"] is None else f"{r['p_value']:.4g}"
            extra = ""
            if r["method"] == "idia" and r["decision"] != "not_applicable":
                extra = (f"; published rule: {r['details']['published_decision']} "
                         f"({r['details']['n_correct']} of 21 templates)")
            typer.echo(f"{r['method']}: {r['decision']} (p = {p}, alpha = {r['alpha']}){extra}; "
                       f"finding {r['id']}")
        typer.echo(json.dumps({"run_key": run_key, "findings": [r["id"] for r in records]}))
