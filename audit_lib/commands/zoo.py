"""``encoder-audit zoo …``: build and inspect the reference model zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``zoo`` command group to the CLI."""
    zoo_app = typer.Typer(no_args_is_help=True, help="The reference model zoo: small encoders trained here.")
    app.add_typer(zoo_app, name="zoo")

    @zoo_app.command("build")
    def zoo_build(
        profile: Annotated[str, typer.Option(help="ci (minutes on a CPU), full (meant for a GPU) or smoke")] = "ci",
        device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present)")] = None,
        register_models: Annotated[bool, typer.Option("--register/--no-register",
                                                      help="register the entries in the evidence store")] = True,
        cache_dir: Annotated[Optional[Path], typer.Option(help="cache folder (default: AUDIT_DATA_DIR/zoo)")] = None,
    ) -> None:
        """Train (or reuse from the cache) the zoo's encoders, write the manifest, print the
        build summary and register the entries as checkpoint models."""
        import logging

        from audit_lib.cli_errors import fail
        from audit_lib.registry import RegistryError
        from audit_lib.zoo.build import build_zoo, summary_lines, zoo_root

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            manifest = build_zoo(profile, device=device, register=False, cache_root=cache_dir)
        except ValueError as exc:
            fail(str(exc))
        for line in summary_lines(manifest):
            typer.echo(line)
        typer.echo(f"manifest: {zoo_root(profile, cache_dir) / 'manifest.json'}")
        if register_models:
            from sqlalchemy.exc import OperationalError, ProgrammingError

            from audit_lib.zoo.build import register_manifest

            try:
                added = register_manifest(manifest)
            except RegistryError as exc:
                fail(str(exc))
            except (OperationalError, ProgrammingError) as exc:
                if "no such table" in str(exc) or "does not exist" in str(exc):
                    fail("the evidence store has no schema yet: run `encoder-audit db upgrade`")
                raise
            typer.echo(f"registered {len(added)} new models"
                       + (f": {', '.join(added)}" if added else " (all already registered)"))

    @zoo_app.command("show")
    def zoo_show(
        profile: Annotated[str, typer.Option(help="the profile whose manifest to print")] = "ci",
        cache_dir: Annotated[Optional[Path], typer.Option(help="cache folder (default: AUDIT_DATA_DIR/zoo)")] = None,
    ) -> None:
        """Print the summary of a profile's last build (from its manifest)."""
        from audit_lib.cli_errors import fail
        from audit_lib.zoo.build import summary_lines, zoo_root
        from audit_lib.zoo.manifest import ZooManifest

        path = zoo_root(profile, cache_dir) / "manifest.json"
        if not path.is_file():
            fail(f"no manifest at {path}: run `encoder-audit zoo build --profile {profile}` first")
        for line in summary_lines(ZooManifest.load(path)):
            typer.echo(line)
