"""How every ``encoder-audit`` command reports a bad input: one red line naming the
problem and exit code 2, never a traceback.

Two places apply it: :func:`guarded` around a command's body, and :class:`ErrorMappingGroup`
(the root command group), which maps the product's own input errors raised by any command
(:func:`product_errors`) to the same one line. Any other exception is a bug and keeps its
traceback. Each command is one transaction, so nothing is written when it fails; an audit
run opened before the failure is closed as ``failed`` by the code that opened it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

T = TypeVar("T")


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit non-zero."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.secho(f"error: {first}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def product_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean "this input or this model cannot be used", each with a
    message naming the problem: registry refusals, unusable checkpoints and architectures,
    remote API failures (credential, budget, unreachable, bad answer), bad adapters,
    refused images and method inputs."""
    from audit_lib.encoders.adapter import AdapterError
    from audit_lib.encoders.architectures import ArchitectureError
    from audit_lib.encoders.endpoints import EndpointError
    from audit_lib.encoders.loading import CheckpointError
    from audit_lib.encoders.remote import RemoteEncoderError
    from audit_lib.images import ImageError
    from audit_lib.methods import MethodInputError
    from audit_lib.registry import RegistryError

    return (RegistryError, CheckpointError, ArchitectureError, RemoteEncoderError, AdapterError,
            EndpointError, ImageError, MethodInputError)


def guarded(fn: Callable[[], T], *input_errors: type[Exception]) -> T:
    """Run ``fn``, turning the product's (and the given) input errors into :func:`fail`,
    and a store without its schema into the hint to run the migrations."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        return fn()
    except (*product_errors(), *input_errors) as exc:
        fail(str(exc))
    except (OperationalError, ProgrammingError) as exc:
        _fail_if_no_schema(exc)
        raise
    raise AssertionError("unreachable")  # fail() always raises


def _fail_if_no_schema(exc: Exception) -> None:
    """A store without its schema (a table missing) is a setup step not yet taken."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    text = str(exc)
    if isinstance(exc, (OperationalError, ProgrammingError)) and (
            "no such table" in text or ("relation" in text and "does not exist" in text)):
        fail("the evidence store has no schema yet: run `encoder-audit db upgrade`")


class ErrorMappingGroup(TyperGroup):
    """The root command group: a product input error escaping any command becomes one
    line and exit 2 (see :func:`product_errors`); anything else propagates."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, product_errors()):
                fail(str(exc))
            _fail_if_no_schema(exc)
            raise


def check_output(path: Any, *, folder: bool, option: str) -> None:
    """Refuse (one line, exit 2) an output ``path`` that cannot be written, before any
    work starts: ``folder`` says whether it names a folder (created if missing) or a file.
    The nearest existing ancestor must be a writable folder."""
    import os
    from pathlib import Path

    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            fail(f"{option} {p}: exists and is not a folder")
        if not folder and p.is_dir():
            fail(f"{option} {p}: is a folder; give a file name")
        target = p if folder else p.parent
        if not os.access(target, os.W_OK | os.X_OK) or (not folder and not os.access(p, os.W_OK)):
            fail(f"{option} {p}: not writable by this user; choose another path")
        return
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        fail(f"{option} {p}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        fail(f"{option} {p}: {ancestor} is not writable by this user; choose another path")
