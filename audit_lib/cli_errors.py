"""How every ``encoder-audit`` command reports a bad input: one red line naming the
problem and exit code 2, never a traceback (DESIGN: bad input gets a clear error)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

T = TypeVar("T")


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], T], *input_errors: type[Exception]) -> T:
    """Run ``fn``, turning the registry's (and the given) input errors into :func:`fail`,
    and a store without its schema into the hint to run the migrations."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from audit_lib.registry import RegistryError

    try:
        return fn()
    except (RegistryError, *input_errors) as exc:
        fail(str(exc))
    except (OperationalError, ProgrammingError) as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            fail("the evidence store has no schema yet: run `encoder-audit db upgrade`")
        raise
    raise AssertionError("unreachable")  # fail() always raises
