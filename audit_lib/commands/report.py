"""``encoder-audit report``: render, verify and sign PDF evidence reports.

Nothing heavy at module level: WeasyPrint, matplotlib and pypdf load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import fail as _fail

report_app = typer.Typer(no_args_is_help=True, help="PDF evidence reports for legal teams.")


@report_app.command("render")
def render(
    case: Annotated[str, typer.Option(help="subject:ID | ownership:OWNED_ID:SUSPECT_ID | run:RUN_KEY")],
    out: Annotated[Optional[Path], typer.Option(help="folder for the PDF (default: <data dir>/reports)")] = None,
    include_photos: Annotated[bool, typer.Option(
        "--include-photos", help="embed the subject's reference photos: only for a recipient entitled to them")] = False,
    pseudonymous: Annotated[bool, typer.Option(
        "--pseudonymous", help="name the subject by pseudonym only")] = False,
    case_id: Annotated[Optional[str], typer.Option(help="case id to use (default: generated)")] = None,
) -> None:
    """Render the PDF evidence report for a case and record it in the evidence store."""
    from audit_lib.cli_errors import check_output
    from audit_lib.reports import ReportError, render_report
    from audit_lib.store import session_scope

    if include_photos and pseudonymous:
        _fail("--include-photos and --pseudonymous contradict each other")
    check_output(out, folder=True, option="--out")
    try:
        with session_scope() as s:
            path = render_report(s, case, out, include_photos=include_photos,
                                 pseudonymous=pseudonymous, case_id=case_id)
    except ReportError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@report_app.command("verify")
def verify(
    report: Annotated[Path, typer.Argument(help="the PDF report to check")],
    signature: Annotated[Optional[Path], typer.Option(help="detached signature (REPORT.pdf.sig)")] = None,
    public_key: Annotated[Optional[Path], typer.Option(
        help="the operator's Ed25519 public key (PEM); default $AUDIT_REPORT_VERIFY_KEY")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="check only the PDF itself (no evidence store at hand)")] = False,
) -> None:
    """Check a report against itself and the evidence store; exit 1 if anything fails."""
    from audit_lib.reports import ReportError, verify_report
    from audit_lib.store import session_scope

    try:
        if offline:
            result = verify_report(None, report, signature=signature, public_key=public_key)
        else:
            with session_scope() as s:
                result = verify_report(s, report, signature=signature, public_key=public_key)
    except ReportError as exc:
        _fail(str(exc))
    for line in result.checks:
        typer.echo(f"ok    {line}")
    for line in result.problems:
        typer.secho(f"FAIL  {line}", fg=typer.colors.RED, err=True)
    for line in result.notes:
        typer.echo(f"note  {line}")
    if offline:
        typer.echo("note  offline: the evidence store was not consulted")
    if not result.ok:
        if result.changed_side:
            typer.secho(f"changed: {result.changed_side}", fg=typer.colors.RED, err=True)
        typer.secho(f"report {report} did NOT verify", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"report {report} verified (case {result.case_id})")


@report_app.command("sign")
def sign(
    report: Annotated[Path, typer.Argument(help="the PDF report to sign")],
    key: Annotated[Optional[Path], typer.Option(
        help="Ed25519 private key (PEM); default $AUDIT_REPORT_SIGNING_KEY")] = None,
    pades: Annotated[bool, typer.Option(
        "--pades", help="sign inside the PDF (PAdES, with the configured signer and TSA) into --out")] = False,
    out: Annotated[Optional[Path], typer.Option(help="with --pades: the signed PDF to write (new file)")] = None,
) -> None:
    """Sign a report: a detached Ed25519 signature next to it (REPORT.pdf.sig), or with
    ``--pades`` a PAdES signature inside a signed copy."""
    from audit_lib.reports import ReportError

    try:
        if pades:
            from audit_lib.reports.pades import sign_pdf

            if key is not None:
                _fail("--key is for the detached signature; --pades uses AUDIT_REPORT_SIGNER_*")
            target = out or report.with_name(report.stem + "-signed.pdf")
            info = sign_pdf(report, target)
            when = f", timestamp {info.timestamp:%Y-%m-%d %H:%M:%S %Z}" if info.timestamp else ""
            typer.echo(f"wrote {info.path} (PAdES {info.level}, signed by {info.signer}{when})")
            return
        from audit_lib.reports.signing import sign_report

        written = sign_report(report, key)
    except ReportError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {written}")


@report_app.command("keygen")
def keygen(
    private_key: Annotated[Path, typer.Option(help="where to write the private key (mode 0600)")],
    public_key: Annotated[Path, typer.Option(help="where to write the public key for recipients")],
) -> None:
    """Create an Ed25519 key pair for signing reports."""
    from audit_lib.reports import ReportError
    from audit_lib.reports.signing import generate_keypair

    try:
        generate_keypair(private_key, public_key)
    except ReportError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {private_key} (keep it secret) and {public_key} (give it to recipients)")


def register(app: typer.Typer) -> None:
    """Add the ``report`` command group to the ``encoder-audit`` app."""
    app.add_typer(report_app, name="report")
