"""Sub-commands of ``encoder-audit``, one module per area.

Each module defines ``register(app: typer.Typer) -> None`` and imports nothing heavy at
module level (the CLI must start fast); ``audit_lib.cli`` registers every module here.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    """Register the commands of every module in this package, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(app)
