"""Plain-language wording for reports: methods, references, verdicts, glossary.

One place for what a lawyer reads, so every report says the same thing the same way. The
rule: "under H0 (...), a result at least this extreme has probability <= p",
with the assumptions listed, and never "proof".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodText:
    """How a report introduces one method."""

    title: str
    question: str
    how: str
    reference: str
    default_assumptions: tuple[str, ...]
    tests_the_case: bool = True  # False: a measurement about the owned model (counted out of the verdict)


METHODS: dict[str, MethodText] = {
    "idia": MethodText(
        title="Identity inference (IDIA)",
        question="Does the model associate this person's face with their name?",
        how=("The model is shown the person's photos and asked, with 21 different phrasings "
             "(\"a photo of ...\", \"actor ...\", ...), which of about 1,000 names fits best: the "
             "person's own name and synthetic decoy names. A phrasing counts as correct when most "
             "photos pick the person's name. The person's name and every decoy name are scored "
             "the same way (phrasings won); the p-value is the person's rank among the decoys."),
        reference=("D. Hintersdorf, L. Struppek, M. Brack, F. Friedrich, P. Schramowski, K. Kersting: "
                   "\"Does CLIP Know My Face?\", Journal of Artificial Intelligence Research 80, 2024; "
                   "arXiv:2209.07341."),
        default_assumptions=("the decoy names were, before looking at the model, as likely as the "
                             "person's name to be predicted for these photos",),
    ),
    "encoder_mi": MethodText(
        title="Membership inference (EncoderMI)",
        question="Were these particular images used to train the encoder?",
        how=("Each image is altered several times (crops, flips, colour changes) and the model's "
             "embeddings of the variants are compared. Encoders tend to give more consistent "
             "embeddings for images they were trained on. The scores of the claimed images are "
             "compared with images that cannot have been in the training data (reference "
             "non-members), per image and as a group (one-sided Mann-Whitney U test)."),
        reference=("H. Liu, J. Jia, W. Qu, N. Z. Gong: \"EncoderMI: Membership Inference against "
                   "Pre-trained Encoders in Contrastive Learning\", ACM CCS 2021; arXiv:2108.11023."),
        default_assumptions=("the reference non-members come from the same kind of images as the "
                             "claimed images",),
    ),
    "watermark": MethodText(
        title="Watermark check (AWEncoder)",
        question="Does the suspect model carry the owner's hidden watermark?",
        how=("The owner embedded a secret watermark before release: a small, invisible image "
             "perturbation that moves a marked model's embeddings towards a secret key image. The "
             "suspect is shown probe images with and without the perturbation, and the shift "
             "towards the key is measured. The same shift is measured for control perturbations "
             "and for independently trained models: that is the comparison population."),
        reference=("T. Zhang, H. Wu, X. Lu, G. Sun: \"AWEncoder: Adversarial Watermarking Pre-trained "
                   "Encoders in Contrastive Learning\", arXiv:2208.03948, 2022."),
        default_assumptions=("the key, perturbation and probes were fixed and committed before the "
                             "suspect was queried",),
    ),
    "fingerprint": MethodText(
        title="Fingerprint check (MetaV)",
        question="Does the suspect model respond to the owner's fingerprint inputs like a copy?",
        how=("The owner prepared a small set of fingerprint images and a verifier trained to tell "
             "copies of the owned model (fine-tuned, pruned, stolen ...) from independent models by "
             "their answers to those images. The suspect's answers are scored by the verifier, and "
             "the score is ranked among held-out independent models never used in training."),
        reference=("G. Pan, Y. Chen, K. Chen, R. Wang: \"MetaV: A Meta-Verifier Approach to "
                   "Task-Agnostic Model Fingerprinting\", ACM KDD 2022; arXiv:2201.07391."),
        default_assumptions=("the held-out negative models are representative of independent models "
                             "a suspect could be",),
    ),
    "theft": MethodText(
        title="Theft-risk estimate (StolenEncoder)",
        question="How cheaply could the owned model be copied through its API?",
        how=("A copy is trained only from the owned model's answers to a budget of queries, as a "
             "thief would, with and without output defences. The copy's accuracy on a downstream "
             "task is compared with the original's. This estimates how exposed the owned model "
             "is; it is not evidence about a suspect model. Where the copy's agreement with the "
             "original is ranked among independently trained encoders, the p-value says how "
             "unusual that agreement would be without theft."),
        reference=("Y. Liu, J. Jia, H. Liu, N. Z. Gong: \"StolenEncoder: Stealing Pre-trained Encoders "
                   "in Self-supervised Learning\", ACM CCS 2022; arXiv:2201.05889."),
        default_assumptions=("the surrogate images resemble what a thief could obtain",),
        tests_the_case=False,
    ),
}


def method_text(method: str) -> MethodText:
    """The wording for ``method``; an unknown method gets a neutral entry, not an error."""
    return METHODS.get(method, MethodText(title=method, question="", how="", reference="",
                                          default_assumptions=()))


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
