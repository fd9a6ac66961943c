"""Report figures as PNG bytes (matplotlib, Agg): one small function per figure kind.

Every function takes plain lists from a finding's ``details`` and returns PNG bytes, or
None when the data it needs is missing (reports render without that figure). Figures use
one restrained palette and print well in greyscale (line styles differ as well as colours).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

OBSERVED = "#b2182b"
NULL = "#8c96a8"
ACCENT = "#2166ac"
GREY = "#444444"


def _plt():  # noqa: ANN202 - the pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.titlesize": 9, "legend.frameon": False,
                         "legend.fontsize": 7})
    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=140, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _finite(values: Sequence[Any] | None) -> list[float]:
    out = []
    for v in values or []:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if f == f and abs(f) != float("inf"):
            out.append(f)
    return out


def null_figure(observed: float | None, null_scores: Sequence[float] | None, *, xlabel: str,
                title: str, null_label: str = "null population",
                extra_observed: Sequence[float] = ()) -> bytes | None:
    """The observed statistic (a vertical line) against the null population (a histogram)."""
    null = _finite(null_scores)
    if observed is None or not null:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 2.3))
    distinct = len(set(null))
    bins = min(40, max(5, distinct)) if distinct > 1 else 5
    ax.hist(null, bins=bins, color=NULL, alpha=0.85, label=f"{null_label} (n = {len(null)})")
    for i, x in enumerate(_finite(extra_observed)):
        ax.axvline(x, color=OBSERVED, lw=0.8, ls=":", label="individual images" if i == 0 else None)
    ax.axvline(float(observed), color=OBSERVED, lw=2, ls="-", label=f"observed = {observed:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, loc="left")
    ax.legend(loc="upper right")
    return _png(fig)


def roc_figure(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> bytes | None:
    """The ROC curve of a labelled evaluation."""
    fpr, tpr = _finite(fpr), _finite(tpr)
    if len(fpr) < 2 or len(fpr) != len(tpr):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.9, 2.6))
    ax.plot([0, 1], [0, 1], color=NULL, ls="--", lw=1, label="chance")
    ax.plot(fpr, tpr, color=ACCENT, lw=2, label=f"AUC = {auc:.3f}" if auc is not None else "ROC")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("ROC (labelled evaluation)", loc="left")
    ax.legend(loc="lower right")
    return _png(fig)


def watermark_figure(shifts: Sequence[float], control: Sequence[float],
                     independent: Sequence[float]) -> bytes | None:
    """Per-probe watermark shifts of the suspect against the null statistics."""
    shifts, control, independent = _finite(shifts), _finite(control), _finite(independent)
    if not shifts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 2.3))
    lo = min(shifts + control + independent)
    hi = max(shifts + control + independent)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    if control:
        ax.hist(control, bins=bins, color=NULL, alpha=0.8, label=f"control perturbations (n = {len(control)})")
    if independent:
        ax.hist(independent, bins=bins, color=GREY, alpha=0.55, hatch="//",
                label=f"independent encoders (n = {len(independent)})")
    ax.hist(shifts, bins=bins, color=OBSERVED, alpha=0.7, label=f"suspect, per probe (n = {len(shifts)})")
    mean = sum(shifts) / len(shifts)
    ax.axvline(mean, color=OBSERVED, lw=2, label=f"suspect mean shift = {mean:.3g}")
    ax.set_xlabel("shift towards the key image (cosine)")
    ax.set_ylabel("count")
    ax.set_title("Watermark shift: suspect against the null", loc="left")
    ax.legend(loc="upper right")
    return _png(fig)


def fingerprint_figure(score: float | None, negatives: Sequence[float],
                       positives: Sequence[float]) -> bytes | None:
    """The suspect's verifier score against held-out negatives (and validation positives)."""
    negatives, positives = _finite(negatives), _finite(positives)
    if score is None or not negatives:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 2.3))
    bins = [i / 40 for i in range(41)]
    ax.hist(negatives, bins=bins, color=NULL, alpha=0.85, label=f"held-out independent models (n = {len(negatives)})")
    if positives:
        ax.hist(positives, bins=bins, color=ACCENT, alpha=0.45, hatch="..",
                label=f"validation copies (n = {len(positives)})")
    ax.axvline(float(score), color=OBSERVED, lw=2, label=f"suspect score = {score:.3g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("verifier score P(copy)")
    ax.set_ylabel("count")
    ax.set_title("Fingerprint verifier: suspect against held-out models", loc="left")
    ax.legend(loc="upper center")
    return _png(fig)


def theft_figure(curve: Sequence[dict[str, Any]]) -> bytes | None:
    """Stolen-copy accuracy over the query budget, one line per output defence."""
    rows = [r for r in curve or [] if r.get("budget") is not None and r.get("stolen_accuracy") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 2.5))
    styles = ["-", "--", "-.", ":"]
    defences = sorted({str(r.get("defence", "none")) for r in rows}, key=lambda d: (d != "none", d))
    for i, d in enumerate(defences):
        pts = sorted((int(r["budget"]), float(r["stolen_accuracy"])) for r in rows if str(r.get("defence", "none")) == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, ls=styles[i % 4],
                color=OBSERVED if d == "none" else [ACCENT, GREY, NULL][i % 3],
                label=f"stolen copy, defence: {d}")
    targets = _finite([r.get("target_accuracy") for r in rows])
    if targets:
        ax.axhline(max(targets), color="black", lw=1, ls=(0, (1, 1)), label="original model")
    ax.set_xlabel("query budget (images)")
    ax.set_ylabel("downstream accuracy")
    ax.set_title("Theft risk: accuracy of a stolen copy", loc="left")
    ax.legend(loc="lower right")
    return _png(fig)


# --- each method's figures (the ``figures`` hook of its spec, ``audit_lib.method_registry``) ----
# Each takes the finding's ``details`` and its record, and returns (caption, PNG or None, half width).

def _observed(d: dict[str, Any], record: dict[str, Any]) -> Any:
    return d.get("observed", record.get("statistic"))


def idia_figures(d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, bytes | None, bool]]:
    """The subject's name against the decoy names."""
    return [("templates won by the subject's name (red line) against the same score of every decoy name.",
             null_figure(_observed(d, record), d.get("null_scores"), xlabel="phrasings won (of 21)",
                         title="Identity inference: subject's name vs decoy names", null_label="decoy names"),
             False)]


def encoder_mi_figures(d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, bytes | None, bool]]:
    """Claimed images against reference non-members, and the labelled evaluation's ROC."""
    per_image = [im.get("score") for im in d.get("images") or [] if isinstance(im, dict)]
    roc = d.get("roc") or {}
    return [("membership scores of the claimed images against reference non-members.",
             null_figure(_observed(d, record), d.get("reference_scores") or d.get("null_scores"),
                         xlabel="membership score (mean view similarity)",
                         title="Membership inference: claimed images vs non-members",
                         null_label="reference non-members", extra_observed=per_image), False),
            ("ROC of the method on a labelled evaluation (known members and non-members).",
             roc_figure(roc.get("fpr") or [], roc.get("tpr") or [], roc.get("auc")), True)]


def watermark_figures(d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, bytes | None, bool]]:
    """Per-probe shifts of the suspect against the two nulls."""
    return [("per-probe shift towards the watermark key for the suspect, against control perturbations "
             "and independent encoders.",
             watermark_figure(d.get("shifts") or [], d.get("control_scores") or [],
                              d.get("independent_scores") or []), False)]


def fingerprint_figures(d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, bytes | None, bool]]:
    """The suspect's verifier score against held-out independents and validation copies."""
    return [("verifier score of the suspect against held-out independent models (the null) and "
             "validation copies.",
             fingerprint_figure(d.get("score", _observed(d, record)),
                                d.get("negative_scores") or d.get("null_scores") or [],
                                d.get("positive_scores") or []), False)]


def theft_figures(d: dict[str, Any], record: dict[str, Any]) -> list[tuple[str, bytes | None, bool]]:
    """The theft curve."""
    return [("downstream accuracy of a copy stolen through the API, by query budget and output defence.",
             theft_figure(d.get("curve") or []), False)]


def default_figures(d: dict[str, Any], record: dict[str, Any], *, title: str) -> list[tuple[str, bytes | None, bool]]:
    """A method without its own figures: the observed statistic against its null population."""
    return [("observed statistic against the null population.",
             null_figure(_observed(d, record), d.get("null_scores"), xlabel="statistic", title=title), False)]
