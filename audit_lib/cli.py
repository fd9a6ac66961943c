"""The ``encoder-audit`` command.

Each command is one transaction over the evidence store; a refused input exits non-zero
with a message naming the problem, and nothing is written. Heavy libraries (torch,
open_clip, airflow) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import ErrorMappingGroup, fail
from audit_lib.cli_errors import guarded as _guarded

app = typer.Typer(cls=ErrorMappingGroup, no_args_is_help=True, add_completion=False,
                  help="Audit pre-trained image encoders and keep the evidence.")
db_app = typer.Typer(no_args_is_help=True, help="The evidence store.")
subjects_app = typer.Typer(no_args_is_help=True, help="Data subjects registered by DPOs.")
models_app = typer.Typer(no_args_is_help=True, help="Audited models: checkpoints and APIs.")
app.add_typer(db_app, name="db")
app.add_typer(subjects_app, name="subjects")
app.add_typer(models_app, name="models")


def _session():
    from audit_lib.store import session_scope

    return session_scope()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the evidence store's migrations up to the newest schema."""
    from audit_lib.config import get_settings
    from audit_lib.store import upgrade

    upgrade()
    url = get_settings().resolved_database_url
    from audit_lib.store.db import redacted_url

    typer.echo(f"evidence store at {redacted_url(url)} is up to date")


@subjects_app.command("add")
def subjects_add(
    name: Annotated[str, typer.Option(help="the person's full name")],
    legal_basis: Annotated[str, typer.Option(help="legal basis for processing, e.g. 'GDPR 6(1)(c)'")],
    photos: Annotated[Path, typer.Option(help="folder of reference photos of the person")],
    alias: Annotated[Optional[list[str]], typer.Option(help="another name (repeatable)")] = None,
    claimed_images: Annotated[Optional[Path], typer.Option(help="folder of images that may have been scraped")] = None,
    sex: Annotated[Optional[str], typer.Option(help="f or m: decoy names are matched to it")] = None,
) -> None:
    """Register a data subject with reference photos."""
    from audit_lib import registry

    def run() -> None:
        with _session() as s:
            subj = registry.add_subject_from_folders(
                s, name=name, legal_basis=legal_basis, photos_dir=photos,
                claimed_dir=claimed_images, aliases=alias or [], sex=sex)
            n_ref = sum(1 for i in subj.images if i.role == "reference")
            n_claim = len(subj.images) - n_ref
            typer.echo(f"registered subject {subj.id} ({subj.pseudonym}): {n_ref} reference "
                       f"photos, {n_claim} claimed images")

    _guarded(run)


@subjects_app.command("list")
def subjects_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False) -> None:
    """List registered subjects (erased ones by pseudonym only)."""
    from audit_lib import registry
    from audit_lib.safe_text import display

    def run() -> None:
        with _session() as s:
            rows = registry.list_subjects(s)
            if as_json:
                typer.echo(json.dumps([registry.subject_summary(x) for x in rows], indent=2))
                return
            if not rows:
                typer.echo("no subjects registered")
            for subj in rows:
                label = "[erased]" if subj.is_erased else display(subj.name)
                typer.echo(f"{subj.id:>4}  {subj.pseudonym}  {label}  images={len(subj.images)}")

    _guarded(run)


@subjects_app.command("show")
def subjects_show(subject_id: int) -> None:
    """Show one subject as JSON."""
    from audit_lib import registry

    def run() -> None:
        with _session() as s:
            typer.echo(json.dumps(registry.subject_summary(registry.get_subject(s, subject_id)), indent=2))

    _guarded(run)


@subjects_app.command("erase")
def subjects_erase(subject_id: int,
                   yes: Annotated[bool, typer.Option("--yes", help="confirm the erasure")] = False) -> None:
    """Erase a subject: images and personal fields go; findings and hashes stay, pseudonymised."""
    from audit_lib import registry

    if not yes:
        fail("erasure cannot be undone: repeat with --yes to confirm")

    def run() -> None:
        with _session() as s:
            subj = registry.erase_subject(s, subject_id)
            typer.echo(f"erased subject {subject_id}; it remains only as {subj.pseudonym}")

    _guarded(run)


from audit_lib.commands import register_all  # noqa: E402 - after the core commands

register_all(app)

if __name__ == "__main__":
    app()
