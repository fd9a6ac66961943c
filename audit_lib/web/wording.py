"""Findings in plain words for DPOs ("under H0 (…), a result at least this
extreme has probability <= p"; never "proof"). Method names and their null in words come
from the methods' specs (:mod:`audit_lib.method_registry`), decision words from the reports'
wording, so the pages and the PDFs say the same."""

from __future__ import annotations

from audit_lib.method_registry import MethodSpec, find
from audit_lib.reports.wording import DECISION_WORDS


def _spec(method: str) -> MethodSpec | None:
    return find(method)


def method_order(method: str) -> int:
    """The registry's listing order (identity inference, membership inference, the
    ownership checks, then anything else)."""
    spec = _spec(method)
    return spec.order if spec else 1_000_000


def method_label(method: str) -> str:
    """The method's one-line name on the pages (its spec's ``web_label``, else its title)."""
    spec = _spec(method)
    return (spec.web_label or spec.title) if spec else method


def short_method(method: str) -> str:
    """The method's short tag on the pages."""
    spec = _spec(method)
    return (spec.short or spec.name) if spec else method


def decision_label(decision: str) -> str:
    """The report's decision words (``reports.wording.DECISION_WORDS``), capitalised."""
    words = DECISION_WORDS.get(decision)
    return words[0].upper() + words[1:] if words else decision


def format_p(p: float) -> str:
    """A p-value as people read it: three decimals, or scientific notation below 0.001."""
    if p == 0:
        return "0"
    if p < 0.001:
        return f"{p:.1e}"
    return f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"


def format_percent(p: float) -> str:
    """``p`` as a percentage with enough digits to be non-zero when p is."""
    pct = 100 * p
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 0.1:
        return f"{pct:.1f}".rstrip("0").rstrip(".") + "%"
    return f"{pct:.2g}%"


def p_value_in_words(p: float | None, method: str) -> str:
    """E.g. "p = 0.003: if the model had not been trained on this person, a result at
    least this strong would happen at most 0.3% of the time"."""
    if p is None:
        return "no p-value (the method could not be applied)"
    spec = _spec(method)
    null = (spec.null_in_words if spec and spec.null_in_words else
            "under the method's null hypothesis (no link between the model and this person)")
    return (f"p = {format_p(p)}: {null}, a result at least this strong would happen at most "
            f"{format_percent(p)} of the time")
