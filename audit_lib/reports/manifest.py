"""The evidence manifest a report carries, and the digests that tie it to the PDF.

The manifest lists, for every audit run behind the report's findings, every evidence row
(input hash, response hash, time, model version, latency, cached) with its chain hashes,
so the chain can be recomputed from the report alone and compared with the database. It is
attached to the PDF as ``evidence.json`` (canonical JSON: sorted keys, no spaces), together
with the report's findings as machine-readable records. The sha256 of that attachment is
printed in the report, so an altered attachment no longer matches the printed digest.

The report's chain head: for one run, that run's head; for several runs, the sha256 of the
canonical JSON list of ``[run_key, head]`` pairs sorted by run key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from audit_lib import __version__
from audit_lib.evidence import (
    canonical_json,
    evidence_record,
    finding_hash,
    run_evidence,
    sha256_hex,
    verify_chain,
)
from audit_lib.reports.case import CaseData, ReportError
from audit_lib.store.models import AuditRun

MANIFEST_FORMAT = "encoder-audit evidence manifest v1"
ATTACHMENT_NAME = "evidence.json"


def run_manifest(session: Session, run: AuditRun) -> dict[str, Any]:
    """One run's chain as a report carries it; refuses a run whose chain is already broken
    (a report must never vouch for tampered evidence)."""
    check = verify_chain(session, run)
    if not check.ok:
        raise ReportError(f"run {run.run_key!r}: the evidence chain does not verify "
                          f"({check.problem}); no report can be rendered from it")
    items = []
    for item in run_evidence(session, run):
        rec = evidence_record(item)
        rec["prev_hash"] = item.prev_hash
        rec["row_hash"] = item.row_hash
        items.append(rec)
    return {"run_key": run.run_key, "kind": run.kind, "code_version": run.code_version,
            "config": run.config, "started_at": run.started_at.isoformat() if run.started_at else None,
            "status": run.status, "chain_length": check.length, "chain_head": check.head,
            "items": items}


def combined_head(runs: list[dict[str, Any]]) -> str:
    """The report's chain head (see the module docstring)."""
    if len(runs) == 1:
        return runs[0]["chain_head"]
    pairs = sorted([r["run_key"], r["chain_head"]] for r in runs)
    return sha256_hex(canonical_json(pairs))


def build_manifest(session: Session, data: CaseData, *, case_id: str, generated_at: datetime,
                   photos_included: bool) -> dict[str, Any]:
    """The machine-readable evidence of a report: runs with their chains, model versions,
    and the findings (redacted as the report is) with the hash the chain recorded."""
    runs = [run_manifest(session, run) for run in data.runs]
    versions = {}
    for f in data.findings:
        v = f.version
        versions[v.id] = {"id": v.id, "model": f.model.name, "model_id": f.model.id,
                          "kind": f.model.kind, "version": v.version, "how": v.how,
                          "embedding_dim": v.embedding_dim, "preprocess": v.preprocess}
    findings = []
    for f in data.findings:
        rec = dict(f.record)
        rec["run_key"] = f.run.run_key
        rec["chain_sha256"] = finding_hash(f.row)
        findings.append(rec)
    return {
        "format": MANIFEST_FORMAT, "case_id": case_id, "case": data.spec.text,
        "generated_at": generated_at.isoformat(), "code_version": __version__,
        "names_withheld": data.redact_names, "photos_included": photos_included,
        "report_chain_head": combined_head(runs), "runs": runs,
        "model_versions": [versions[k] for k in sorted(versions)], "findings": findings,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The attachment's exact bytes (canonical JSON)."""
    return canonical_json(manifest)
