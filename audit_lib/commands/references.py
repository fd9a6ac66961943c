"""``encoder-audit models references add|show``: a model's reference non-members.

Membership inference ranks a subject's claimed images against images that cannot be in
the model's training set. They are registered once per model, in the evidence store
(``model_reference_images``, bytes in ``image_blobs``), and both ``audit privacy`` and the
``privacy_audit`` DAG read them from there (audit_lib/pipelines/references.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from audit_lib.commands.encoders import _group

TYPICAL_CLAIMED = 20  # claimed images per subject the Holm check assumes when no subject has any


def _largest_claim(session: Any) -> int:
    """The most claimed images any live subject registered (the Holm check's n), or
    TYPICAL_CLAIMED when none did."""
    from sqlalchemy import func, select

    from audit_lib.store.models import DataSubject, SubjectImage

    counts = session.scalars(select(func.count(SubjectImage.id)).join(DataSubject)
                             .where(SubjectImage.role == "claimed", DataSubject.erased_at.is_(None))
                             .group_by(SubjectImage.subject_id))
    return max(counts, default=0) or TYPICAL_CLAIMED


def _summary(model_ref: str) -> dict[str, Any]:
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope() as s:
        model = registry.get_model(s, model_ref)
        refs = registry.reference_images(s, model)
        return {"model": model.name, "model_id": model.id, "n_references": len(refs),
                "largest_claim": _largest_claim(s),
                "images": [{"sha256": sha, "name": name} for sha, name, _ in refs]}


def references_add(
    model: Annotated[str, typer.Option(help="the model's name or id")],
    images: Annotated[Path, typer.Option(help="folder of images that cannot be in the model's training set")],
    alpha: Annotated[float, typer.Option(help="decision level the Holm check is made for")] = 0.05,
    claimed: Annotated[Optional[int], typer.Option(
        help="claimed images per subject the Holm check is made for (default: the most any subject has)")] = None,
) -> None:
    """Register known non-member images for a model (checked like uploads, stored once)."""
    from audit_lib.cli_errors import fail, guarded
    from audit_lib.pipelines.references import holm_warning
    from audit_lib.store import session_scope

    if not 0 < alpha < 1:
        fail(f"--alpha {alpha}: give a level between 0 and 1, e.g. 0.05")
    if claimed is not None and claimed < 1:
        fail(f"--claimed {claimed}: give the number of claimed images per subject, at least 1")

    def run() -> tuple[str, int, int, int, int]:
        from audit_lib import registry

        with session_scope() as s:
            m, added, skipped = registry.add_reference_folder(s, model, images)
            return m.name, added, skipped, len(registry.reference_images(s, m)), _largest_claim(s)

    name, added, skipped, total, largest = guarded(run)
    claimed = claimed or largest
    typer.echo(f"model {name}: {added} reference non-member(s) added"
               f"{f', {skipped} already registered' if skipped else ''}; {total} in all")
    warning = holm_warning(claimed, total, alpha)
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)


def references_show(
    model: Annotated[str, typer.Option(help="the model's name or id")],
    json_out: Annotated[bool, typer.Option("--json", help="print the set as JSON")] = False,
    alpha: Annotated[float, typer.Option(help="decision level the Holm check is made for")] = 0.05,
    claimed: Annotated[Optional[int], typer.Option(
        help="claimed images per subject the Holm check is made for (default: the most any subject has)")] = None,
) -> None:
    """Show a model's registered reference non-members (sha256 and file name)."""
    from audit_lib.cli_errors import guarded
    from audit_lib.pipelines.references import holm_references_needed, holm_warning

    info = guarded(lambda: _summary(model))
    largest = info.pop("largest_claim")
    claimed = claimed or largest
    info["holm"] = {"alpha": alpha, "n_claimed": claimed,
                    "references_needed": holm_references_needed(claimed, alpha),
                    "warning": holm_warning(claimed, info["n_references"], alpha)}
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"model {info['model']} ({info['model_id']}): {info['n_references']} reference non-member(s)")
    for im in info["images"]:
        typer.echo(f"  {im['sha256'][:16]}  {im['name']}")
    if info["holm"]["warning"]:
        typer.secho(f"warning: {info['holm']['warning']}", fg=typer.colors.YELLOW)


def register(app: typer.Typer) -> None:
    models = _group(app, "models", "Audited models: checkpoints and APIs.")
    refs = _group(models, "references", "Known non-member images of a model (membership inference).")
    refs.command("add")(references_add)
    refs.command("show")(references_show)
