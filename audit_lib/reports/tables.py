"""Each method's values in a report's result section (the ``tables`` and ``summary``
hooks of its spec, :mod:`audit_lib.method_registry`), rounded for reading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit_lib.reports.wording import fmt_num, fmt_p


def rounded(x: Any, digits: int = 4) -> Any:
    """A number to ``digits`` significant digits as text; anything else unchanged."""
    return fmt_num(float(x), digits) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def idia_table(d: Mapping[str, Any]) -> dict[str, Any]:
    """Templates, counts and the published decision."""
    return {k: d.get(k) for k in ("templates", "n_images", "n_candidates", "tau", "published_decision",
                                  "decoy_rank")}


def encoder_mi_table(d: Mapping[str, Any]) -> dict[str, Any]:
    """Per-image scores and p-values (raw and Holm), the rule and the U statistic."""
    images = [{"sha256": im.get("sha256"), "score": rounded(im.get("score")), "p_value": fmt_p(im.get("p_value")),
               "p_holm": fmt_p(im.get("p_holm")), "member": im.get("member")}
              for im in d.get("images") or [] if isinstance(im, dict)]
    return {"images": images, "rule": d.get("rule", "?"), "mann_whitney_u": rounded(d.get("mann_whitney_u"))}


def watermark_table(d: Mapping[str, Any]) -> dict[str, Any]:
    """The mode and the committed key and artefact."""
    return {k: d.get(k, "n/a") for k in ("mode", "key_sha256", "commitment_sha256")}


def fingerprint_table(d: Mapping[str, Any]) -> dict[str, Any]:
    """Fingerprint count, the suspect's score, ARUC and the commitment."""
    return {"n_fingerprints": d.get("n_fingerprints", "n/a"), "score": rounded(d.get("score")),
            "aruc": rounded(d.get("aruc")), "commitment_sha256": d.get("commitment_sha256", "n/a")}


def theft_table(d: Mapping[str, Any]) -> dict[str, Any]:
    """The theft curve's rows."""
    return {"curve": [{k: rounded(v) for k, v in row.items()} for row in d.get("curve") or []
                      if isinstance(row, dict)]}


def theft_summary(d: Mapping[str, Any]) -> str:
    """The theft curve in one sentence: the undefended copy at the largest budget."""
    rows = [r for r in d.get("curve") or [] if isinstance(r, dict) and r.get("defence", "none") == "none"
            and r.get("stolen_accuracy") is not None and r.get("target_accuracy")]
    if not rows:
        return "Theft-risk estimate (descriptive; no p-value)."
    top = max(rows, key=lambda r: r.get("budget") or 0)
    share = float(top["stolen_accuracy"]) / float(top["target_accuracy"])
    return (f"With {top.get('budget')} queries and no output defence, a stolen copy reaches "
            f"{share:.0%} of the original's downstream accuracy (an estimate, not a test).")
