"""``encoder-audit web``: users of the DPO web app, and serving it.

Passwords never travel as command-line arguments (they would land in shell history and
``ps``): ``add-user`` prompts for one, or reads it from an environment variable whose
*name* is given with ``--password-env``.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import fail as _fail
from audit_lib.cli_errors import guarded

web_app = typer.Typer(no_args_is_help=True, help="The web app for data protection officers.")


@web_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="the user name to sign in with")],
    role: Annotated[str, typer.Option(help="dpo (register, view, erase) or viewer (view only)")] = "viewer",
    password_env: Annotated[Optional[str], typer.Option(
        help="name of an environment variable holding the password (else a prompt asks)")] = None,
) -> None:
    """Create a web user with a role; the password is hashed with scrypt."""
    from audit_lib.store import session_scope
    from audit_lib.web.users import UserError
    from audit_lib.web.users import add_user as create

    if password_env:
        password = os.environ.get(password_env)
        if password is None:
            _fail(f"--password-env: the environment variable {password_env} is not set")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)

    def run() -> None:
        with session_scope() as s:
            user = create(s, name, password, role)
            typer.echo(f"added web user {user.username} ({user.role})")

    guarded(run, UserError)


@web_app.command("list-users")
def list_users() -> None:
    """List web users and their roles."""
    from audit_lib.store import session_scope
    from audit_lib.web.users import list_users as rows

    with session_scope() as s:
        users = rows(s)
        if not users:
            typer.echo("no web users: add one with `encoder-audit web add-user NAME --role dpo`")
        for u in users:
            last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never"
            typer.echo(f"{u.username}  {u.role}  last sign-in: {last}")


@web_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
) -> None:
    """Serve the web app with uvicorn (behind TLS in production: set AUDIT_WEB_COOKIE_SECURE=1)."""
    import uvicorn
    from sqlalchemy import inspect

    from audit_lib.store.db import get_engine
    from audit_lib.web.app import create_app

    from audit_lib.store import session_scope
    from audit_lib.web.users import list_users as rows

    if "web_users" not in inspect(get_engine()).get_table_names():
        _fail("the evidence store has no web_users table yet: run `encoder-audit db upgrade`")
    with session_scope() as s:
        if not rows(s):
            typer.secho("warning: no web users yet, nobody can sign in: add one with "
                        "`encoder-audit web add-user NAME --role dpo`", fg=typer.colors.YELLOW,
                        err=True)
    try:
        app = create_app()
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"serving the DPO web app on http://{host}:{port}/ (Ctrl-C stops it)")
    # proxy_headers off: uvicorn would believe X-Forwarded-For from 127.0.0.1; the app
    # believes it only from AUDIT_WEB_TRUSTED_PROXIES (audit_lib.web.deps.client_of).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, server_header=False,
                log_level="info")


def register(app: typer.Typer) -> None:
    """Add ``encoder-audit web ...`` to the CLI."""
    app.add_typer(web_app, name="web")
