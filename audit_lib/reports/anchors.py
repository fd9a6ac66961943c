"""Chain anchors: each run's evidence-chain head, written outside the database when the
run closes, so a chain rewritten inside the database (even by its superuser, past every
grant and trigger) no longer matches what was anchored.

An anchor is ``<data_dir>/anchors/run-<id>.json`` (mode 0600, folder 0700): the run's id,
key, status, chain length and head, and the time it closed, as canonical JSON; an Ed25519
signature of those bytes with the operator's report key (``AUDIT_REPORT_SIGNING_KEY``,
see reports/signing.py) when one is configured; and an RFC 3161 token over their sha256
from the configured TSA (``AUDIT_TSA_URL``), which dates the anchor independently of
this machine's clock. For the anchor to outlive a compromised host, the anchors folder
belongs on separate, append-only storage (a WORM bucket, or a copy sent off the host).

Writing an anchor never makes a run's close fail: a missing key or an unreachable TSA is
logged and the anchor is written without that part (``report verify`` says so).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from audit_lib.config import get_settings
from audit_lib.evidence import canonical_json, sha256_hex, verify_chain
from audit_lib.reports.case import ReportError
from audit_lib.store.models import AuditRun, utcnow

log = logging.getLogger(__name__)

ANCHOR_FORMAT = "encoder-audit chain anchor v1"


@dataclass(frozen=True)
class AnchorCheck:
    """The outcome of comparing a run's chain in the store with its anchor."""

    ok: bool
    message: str
    side: str | None = None  # "store" or "anchor" when something changed


def anchor_path(run_id: int) -> Path:
    """Where the anchor of run ``run_id`` lives."""
    return get_settings().data_dir / "anchors" / f"run-{int(run_id)}.json"


def write_anchor(session: Session, run: AuditRun) -> Path:
    """Anchor ``run``'s current chain head outside the database (see the module docstring)."""
    check = verify_chain(session, run)
    record = {"format": ANCHOR_FORMAT, "run_id": run.id, "run_key": run.run_key, "status": run.status,
              "chain_length": check.length, "chain_head": check.head,
              "anchored_at": utcnow().isoformat()}
    body = canonical_json(record)
    doc: dict[str, Any] = {"anchor": record, "ed25519": None, "rfc3161": None}
    if os.environ.get("AUDIT_REPORT_SIGNING_KEY"):
        from audit_lib.reports.signing import load_private_key

        try:
            doc["ed25519"] = base64.b64encode(load_private_key().sign(body)).decode()
        except ReportError as exc:
            log.warning("anchor of run %s written unsigned: %s", run.run_key, exc)
    if get_settings().tsa_url:
        from audit_lib.reports.pades import timestamp_token

        try:
            doc["rfc3161"] = base64.b64encode(timestamp_token(bytes.fromhex(sha256_hex(body)))).decode()
        except Exception as exc:  # noqa: BLE001 - an unreachable TSA must not fail the run's close
            log.warning("anchor of run %s written without a timestamp: %s", run.run_key, exc.__class__.__name__)
    path = anchor_path(run.id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, sort_keys=True, indent=1)
    tmp.replace(path)
    log.info("anchored run %s: %d rows, head %s", run.run_key, check.length, check.head)
    return path


def check_anchor(session: Session, run: AuditRun, public_key: Path | None = None) -> AnchorCheck:
    """Compare ``run``'s chain in the store with its anchor, after checking the anchor's
    own signature and timestamp where it carries them."""
    path = anchor_path(run.id)
    if run.status == "running":
        return AnchorCheck(True, f"run {run.run_key} is still running: no anchor yet")
    if not path.is_file():
        return AnchorCheck(False, f"run {run.run_key}: no chain anchor at {path} (removed, or the run was "
                                  "closed outside encoder-audit)", "anchor")
    try:
        doc = json.loads(path.read_text())
        record = doc["anchor"]
        body = canonical_json(record)
    except (ValueError, KeyError, TypeError):
        return AnchorCheck(False, f"run {run.run_key}: the chain anchor {path} is not readable", "anchor")
    if record.get("format") != ANCHOR_FORMAT or record.get("run_key") != run.run_key:
        return AnchorCheck(False, f"run {run.run_key}: the anchor {path} is for another run", "anchor")
    notes = []
    if doc.get("ed25519"):
        problem = _check_ed25519(body, doc["ed25519"], public_key)
        if problem is not None and problem.startswith("no public key"):
            notes.append("signature not checked: no public key")
        elif problem is not None:
            return AnchorCheck(False, f"run {run.run_key}: the anchor's signature is invalid ({problem}): the "
                                      "anchor file was altered", "anchor")
        else:
            notes.append("signed by the operator's key")
    else:
        notes.append("unsigned")
    if doc.get("rfc3161"):
        from audit_lib.reports.pades import check_timestamp_token

        problem = check_timestamp_token(base64.b64decode(doc["rfc3161"]), bytes.fromhex(sha256_hex(body)))
        if problem is not None and "AUDIT_TSA_CERT" in problem:
            notes.append("timestamp not checked: no TSA certificate")
        elif problem is not None:
            return AnchorCheck(False, f"run {run.run_key}: {problem}", "anchor")
        else:
            notes.append("timestamped by the TSA")
    check = verify_chain(session, run)
    if check.head != record.get("chain_head") or check.length != record.get("chain_length"):
        return AnchorCheck(False, f"run {run.run_key}: the store's chain ({check.length} rows, head "
                                  f"{check.head}) differs from the chain anchored when the run closed "
                                  f"({record.get('chain_length')} rows, head {record.get('chain_head')}): "
                                  "the evidence in the store was rewritten", "store")
    return AnchorCheck(True, f"run {run.run_key}: the store's chain head matches its anchor ("
                             + ", ".join(notes) + ")")


def _check_ed25519(body: bytes, signature_b64: str, public_key: Path | None) -> str | None:
    from cryptography.exceptions import InvalidSignature

    from audit_lib.reports.signing import PUBLIC_KEY_ENV, load_public_key

    if public_key is None and not os.environ.get(PUBLIC_KEY_ENV):
        return "no public key"
    try:
        load_public_key(public_key).verify(base64.b64decode(signature_b64), body)
    except (InvalidSignature, ValueError):
        return "does not match the anchored chain head, or another key"
    return None
