"""Plain-language wording for reports: methods, references, verdicts, glossary.

One place for what a lawyer reads, so every report says the same thing the same way (the
methods' own wording lives in their specs, :mod:`audit_lib.method_registry`; the decision
words here are the web app's too). The
rule: "under H0 (...), a result at least this extreme has probability <= p",
with the assumptions listed, and never "proof".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodText:
    """How a report introduces one method (built from the method's registered spec)."""

    title: str
    question: str
    how: str
    reference: str
    default_assumptions: tuple[str, ...]
    tests_the_case: bool = True  # False: a measurement about the owned model (counted out of the verdict)
    descriptive: bool = False  # True: an estimate; its summary sentence replaces the verdict
    departs: bool = True  # True: the report states the calibrated-p-value departure from the paper
    summary: Callable[[Mapping[str, Any]], str] | None = None  # a descriptive method's one sentence


def method_text(method: str) -> MethodText:
    """The wording of ``method`` (or an old name of it), from its registered spec
    (:mod:`audit_lib.method_registry`); an unknown method gets a neutral entry, not an error."""
    from audit_lib.method_registry import find, hook

    spec = find(method)
    if spec is None:
        return MethodText(title=method, question="", how="", reference="", default_assumptions=())
    return MethodText(title=spec.title, question=spec.question, how=spec.how, reference=spec.reference,
                      default_assumptions=tuple(spec.assumptions), tests_the_case=spec.tests_the_case,
                      descriptive=spec.descriptive, departs=spec.departs, summary=hook(spec, "summary"))


DECISION_WORDS = {
    "positive": "evidence found",
    "negative": "no evidence found",
    "inconclusive": "inconclusive",
    "not_applicable": "not applicable",
}


def fmt_p(p: float | None) -> str:
    """A p-value as reports print it (and as tests look for it)."""
    if p is None:
        return "n/a"
    if p == 0:
        return "0"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.3g}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A statistic to ``digits`` significant digits."""
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def p_meaning(hypothesis: str, p: float | None, assumptions: list[str]) -> str:
    """The one sentence every report uses for a p-value."""
    if p is None:
        return "This finding is descriptive and carries no p-value."
    text = (f"Under H0 ({hypothesis.rstrip('.')}), a result at least this extreme has "
            f"probability <= {fmt_p(p)}")
    if assumptions:
        text += ", assuming " + "; ".join(a.rstrip(".") for a in assumptions)
    return text + "."


def verdict_sentence(decision: str, p: float | None, alpha: float) -> str:
    """The decision in plain words at the configured level."""
    if decision == "positive":
        return (f"Evidence found: p = {fmt_p(p)} is at or below the pre-set level "
                f"alpha = {fmt_p(alpha)}.")
    if decision == "negative":
        return (f"No evidence found: p = {fmt_p(p)} is above the pre-set level "
                f"alpha = {fmt_p(alpha)}.")
    if decision == "inconclusive":
        return f"Inconclusive at alpha = {fmt_p(alpha)} (p = {fmt_p(p)})."
    return "Not applicable: the method could not be run on this model (see the result section)."


WHAT_IT_DOES_NOT_MEAN = [
    "A p-value is not the probability that the claim is true or false; it says how surprising "
    "the observed result would be if the null hypothesis H0 held.",
    "No finding here is proof. Each rests on the stated assumptions and on the model version "
    "identified in this report; another version may behave differently.",
    "\"No evidence found\" does not show that a person or image was not used, or that a model "
    "is not a copy: a method can miss.",
]

GLOSSARY: list[tuple[str, str]] = [
    ("H0 (null hypothesis)", "The innocent explanation a test tries to rule out, e.g. \"this "
     "person was not in the training data\"."),
    ("p-value", "If H0 were true, the probability of a result at least as extreme as the one "
     "observed. Small values speak against H0."),
    ("alpha", "The level fixed before the audit: a finding is called positive when p <= alpha. "
     "It bounds the false-alarm rate when the assumptions hold."),
    ("Holm correction", "An adjustment of p-values when many tests are run at once, so that the "
     "chance of any false alarm in the family stays below alpha."),
    ("null distribution", "The scores of cases known to satisfy H0 (decoy names, non-member "
     "images, independent models); the observed score is ranked among them."),
    ("encoder / embedding", "A model that turns an image (or text) into a list of numbers; "
     "similar inputs get similar lists."),
    ("model version", "The sha256 of the model's weights, or for an API the hash of its answers "
     "to a fixed set of canary images."),
    ("sha256", "A cryptographic fingerprint of data: any change to the data changes it."),
    ("hash chain", "Each evidence record includes the hash of the record before it, so changing, "
     "removing or reordering any record changes every hash after it. The last hash is the chain "
     "head."),
    ("ROC / AUC", "How well a score separates known members from non-members at every threshold; "
     "AUC 0.5 is chance, 1.0 perfect."),
    ("ARUC", "Area under min(robustness, uniqueness) over verifier thresholds in [0, 1]: 1.0 "
     "means some threshold catches every copy and no independent model."),
]
