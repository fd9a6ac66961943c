"""``encoder-audit retention run`` and ``encoder-audit hold set|release|list``.

Retention removes what has outlived its period (audit_lib/pipelines/retention.py; the
`retention` DAG runs the same daily). A legal hold on a case keeps its evidence and
reports from erasure and from retention until it is released.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer


def _parse_now(text: str | None) -> datetime | None:
    from audit_lib.cli_errors import fail

    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--now {text!r}: give an ISO date or time, e.g. 2027-01-31 or 2027-01-31T12:00:00+00:00")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def register(app: typer.Typer) -> None:
    retention_app = typer.Typer(no_args_is_help=True, help="Retention periods: remove what has outlived them.")
    hold_app = typer.Typer(no_args_is_help=True, help="Legal holds on cases (kept from erasure and retention).")
    app.add_typer(retention_app, name="retention")
    app.add_typer(hold_app, name="hold")

    @retention_app.command("run")
    def retention_run(
        now: Annotated[Optional[str], typer.Option(help="apply the periods as of this time (default: now)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
    ) -> None:
        """Apply every retention period once (as the owner role: AUDIT_MIGRATION_DATABASE_URL)."""
        from audit_lib.cli_errors import guarded
        from audit_lib.pipelines.retention import run_retention

        when = _parse_now(now)
        counts = guarded(lambda: run_retention(now=when))
        if as_json:
            typer.echo(json.dumps(counts))
            return
        typer.echo(f"retention: {counts['cache_deleted']} cache answers deleted, {counts['runs_purged']} runs "
                   f"purged, {counts['reports_withdrawn']} reports withdrawn, "
                   f"{counts['subject_photos_removed']} subject photos removed")
        kept = {k: v for k, v in counts.items() if k.endswith("_for_holds") and v}
        if kept:
            typer.echo("kept for legal holds: " + ", ".join(f"{k.removesuffix('_kept_for_holds')} {v}"
                                                             for k, v in kept.items()))

    @hold_app.command("set")
    def hold_set(
        case: Annotated[str, typer.Argument(help="subject:ID, ownership:OWNED_ID:SUSPECT_ID or run:RUN_KEY")],
        reason: Annotated[str, typer.Option(help="why (e.g. the matter or court reference)")],
        by: Annotated[Optional[str], typer.Option(help="who sets it")] = None,
    ) -> None:
        """Put a case under legal hold."""
        from audit_lib.cli_errors import guarded
        from audit_lib.store import session_scope
        from audit_lib.store.holds import HoldError, set_hold

        def run() -> None:
            with session_scope() as s:
                hold = set_hold(s, case, reason=reason, set_by=by)
                typer.echo(f"legal hold {hold.id} set on case {hold.case}")

        guarded(run, HoldError)

    @hold_app.command("release")
    def hold_release(case: Annotated[str, typer.Argument(help="the case under hold")]) -> None:
        """Release the legal hold on a case."""
        from audit_lib.cli_errors import guarded
        from audit_lib.store import session_scope
        from audit_lib.store.holds import HoldError, release_hold

        def run() -> None:
            with session_scope() as s:
                hold = release_hold(s, case)
                typer.echo(f"legal hold {hold.id} on case {hold.case} released")

        guarded(run, HoldError)

    @hold_app.command("list")
    def hold_list() -> None:
        """The legal holds in force."""
        from audit_lib.cli_errors import guarded
        from audit_lib.store import session_scope
        from audit_lib.store.holds import active_holds

        def run() -> None:
            with session_scope() as s:
                for h in active_holds(s):
                    typer.echo(f"{h.case}\tset {h.set_at:%Y-%m-%d} by {h.set_by or '-'}\t{h.reason}")

        guarded(run)
