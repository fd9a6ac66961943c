"""Signing a released report with the PAdES signature of ``audit_lib.reports.pades``
(B-T with the configured TSA, else B-B). Only a released report is signed; a draft or a
rejected report never is."""

from __future__ import annotations

from pathlib import Path


def sign_released(approved: Path, released: Path) -> str:
    """Sign the rendered ``approved`` version into the new file ``released``; returns how it
    was signed (level, signer, timestamp), for the decision record."""
    from audit_lib.reports.pades import sign_pdf

    info = sign_pdf(approved, released)
    when = info.timestamp.isoformat() if info.timestamp else "no timestamp"
    return f"PAdES {info.level}; signer {info.signer}; {when}"
