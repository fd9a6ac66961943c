"""Findings in plain words for DPOs ("under H0 (…), a result at least this
extreme has probability <= p"; never "proof")."""

from __future__ import annotations

METHOD_NAMES = {
    "idia": "Identity inference (does the model know this person?)",
    "encoder_mi": "Membership inference (were this person's images used in training?)",
}

# What the null hypothesis says, per method, phrased as "if ...".
NULL_IN_WORDS = {
    "idia": "if the model had not been trained on this person",
    "encoder_mi": "if the model had not been trained on these images",
}

SHORT_NAMES = {"idia": "identity", "encoder_mi": "membership"}

DECISION_WORDS = {
    "positive": "Evidence found",
    "negative": "No evidence found",
    "inconclusive": "Inconclusive",
    "not_applicable": "Not applicable",
}


def method_order(method: str) -> int:
    """Identity inference first, then membership inference, then anything else."""
    return list(METHOD_NAMES).index(method) if method in METHOD_NAMES else len(METHOD_NAMES)


def method_label(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def short_method(method: str) -> str:
    return SHORT_NAMES.get(method, method)


def decision_label(decision: str) -> str:
    return DECISION_WORDS.get(decision, decision)


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
    null = NULL_IN_WORDS.get(method, "under the method's null hypothesis (no link between "
                                      "the model and this person)")
    return (f"p = {format_p(p)}: {null}, a result at least this strong would happen at most "
            f"{format_percent(p)} of the time")
