"""``encoder-audit models data add | show``: the image sets an owner registers for their
own model (:mod:`audit_lib.ownership.owner_data`).

- ``models data add --model M [--owner DIR] [--public DIR] [--downstream DIR]``: check
  every image, refuse a one-class or unreadable downstream set and a public set that
  overlaps the owner's images, copy the files under the data folder and store the hashed
  manifests (one transaction; a refusal writes nothing);
- ``models data show --model M [--json]``: the current set of each role.

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import guarded


def data_add(
    model: Annotated[str, typer.Option(help="the registered model (name or id) the images belong to")],
    owner: Annotated[Optional[Path], typer.Option(help="folder of the owner's own images")] = None,
    public: Annotated[Optional[Path], typer.Option(
        help="folder of attacker-side public images (theft surrogates; never the owner's data)")] = None,
    downstream: Annotated[Optional[Path], typer.Option(
        help="labelled evaluation set: one sub-folder of images per class (at least two)")] = None,
) -> None:
    """Register a model's image sets: owner images, public surrogate images, a labelled downstream set."""
    from audit_lib import registry
    from audit_lib.ownership.owner_data import OwnerDataError, add_model_data
    from audit_lib.store import session_scope

    def run() -> None:
        with session_scope() as s:
            m = registry.get_model(s, model)
            rows = add_model_data(s, m, owner=owner, public=public, downstream=downstream)
            lines = [f"{r.role:<11}{r.n_images:>6} images  manifest {r.manifest_sha256[:16]}  (set {r.id})"
                     + (f"  classes: {', '.join(r.classes)}" if r.classes else "") for r in rows]
            name = m.name
        typer.echo(f"model {name}: image sets registered")
        for line in lines:
            typer.echo("  " + line)

    guarded(run, OwnerDataError)


def data_show(
    model: Annotated[str, typer.Option(help="the registered model (name or id)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the image sets registered for a model (the current one per role)."""
    from audit_lib import registry
    from audit_lib.ownership.owner_data import image_sets_summary
    from audit_lib.store import session_scope

    def run() -> None:
        with session_scope() as s:
            m = registry.get_model(s, model)
            sets = image_sets_summary(s, m.id)
            name = m.name
        if as_json:
            typer.echo(json.dumps({"model": name, "image_sets": sets}, indent=2))
            return
        if not sets:
            typer.echo(f"model {name}: no image sets registered (encoder-audit models data add --model {name} ...)")
        for role, info in sets.items():
            classes = f"  classes: {', '.join(info['classes'])}" if info["classes"] else ""
            typer.echo(f"{role:<11}{info['n_images']:>6} images  manifest {info['manifest_sha256']}{classes}")

    guarded(run)


def register(app: typer.Typer) -> None:
    """Add ``models data add`` and ``models data show``."""
    from audit_lib.commands.encoders import _group

    models = _group(app, "models", "Audited models: checkpoints and APIs.")
    data = _group(models, "data", "Image sets registered for a model (owner, public, downstream).")
    data.command("add")(data_add)
    data.command("show")(data_show)
