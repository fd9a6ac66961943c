"""Evidence statistics shared by every method.

Empirical (rank) p-values against a null population (with a Student-t predictive tail
where the null is too small for the rank to reach alpha), Clopper-Pearson bounds, Holm's
step-down correction, ROC summaries, and ARUC (MetaV's robustness/uniqueness area).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def empirical_p_value(observed: float, null: Sequence[float]) -> float:
    """p = (1 + #{null >= observed}) / (K + 1): the rank of ``observed`` among K null
    statistics, larger meaning more extreme. Valid (conservative) whenever the observed
    statistic and the nulls are exchangeable under H0."""
    null = np.asarray(null, dtype=float)
    if null.size == 0:
        raise ValueError("empirical_p_value: the null population is empty")
    return float((1 + np.sum(null >= observed)) / (null.size + 1))


def t_tail_p_value(observed: float, null: Sequence[float]) -> float:
    """P(T >= t) for a new draw from a normal fitted to the null statistics: t = (x - mean)
    / (sd * sqrt(1 + 1/K)) with K - 1 degrees of freedom (the predictive distribution of one
    more observation). Needs K >= 3 and a positive spread."""
    import math

    from scipy.stats import t as student_t

    values = np.asarray(null, dtype=float)
    if values.size < 3:
        raise ValueError(f"parametric tail: needs at least 3 null statistics, got {values.size}")
    sd = float(values.std(ddof=1))
    if sd <= 0:
        raise ValueError("parametric tail: the null statistics have no spread")
    t = (observed - float(values.mean())) / (sd * math.sqrt(1 + 1 / values.size))
    return float(student_t.sf(t, df=values.size - 1))


@dataclass(frozen=True)
class NullTest:
    """One observed statistic against one null population."""

    p_value: float
    p_rank: float
    p_parametric: float | None
    how: str  # rank | t_tail
    effect_size: float  # (observed - mean of the null) / its sd


def rank_or_tail_test(observed: float, null: Sequence[float], alpha: float) -> NullTest:
    """The rank p-value among K null statistics. When
    1 / (K + 1) > alpha the rank p-value can never reach alpha; then p is the Student-t
    predictive tail (:func:`t_tail_p_value`), used only when the observed statistic also
    outranks every null one (else the larger of the two p-values), and the finding must say
    that a normal tail was assumed."""
    values = np.asarray(null, dtype=float)
    if values.size == 0:
        raise ValueError("the null population is empty")
    k = int(values.size)
    p_rank = empirical_p_value(observed, values)
    sd = float(values.std(ddof=1)) if k > 1 else 0.0
    p_param = t_tail_p_value(observed, values) if k >= 3 and sd > 0 else None
    if 1 / (k + 1) <= alpha or p_param is None:
        how, p = "rank", p_rank
    else:
        how = "t_tail"
        p = p_param if p_rank <= 1 / (k + 1) else max(p_param, p_rank)
    effect = (observed - float(values.mean())) / sd if sd > 0 else 0.0
    return NullTest(float(p), p_rank, p_param, how, float(effect))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper confidence bound on a rate after k events in n trials.
    With k = 0 this is 1 - (1 - confidence) ** (1 / n): 0 of 100 gives about 0.0295."""
    if n <= 0:
        raise ValueError(f"clopper_pearson_upper: n = {n} trials")
    if not 0 <= k <= n:
        raise ValueError(f"clopper_pearson_upper: k = {k} not in [0, {n}]")
    if k == n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


def holm(p_values: Sequence[float], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Holm-Bonferroni step-down: (adjusted p-values, rejections at family-wise ``alpha``)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p, np.zeros(0, dtype=bool)
    order = np.argsort(p)
    adjusted_sorted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted, adjusted <= alpha


def roc_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count half): P(member score > non-member score)."""
    pos = np.asarray(member_scores, dtype=float)
    neg = np.asarray(nonmember_scores, dtype=float)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("roc_auc: need at least one score of each class")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def tpr_at_fpr(member_scores: Sequence[float], nonmember_scores: Sequence[float], fpr: float) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate is <= ``fpr``
    (predict member when score > threshold)."""
    pos = np.asarray(member_scores, dtype=float)
    neg = np.sort(np.asarray(nonmember_scores, dtype=float))[::-1]
    allowed = int(np.floor(fpr * neg.size))
    threshold = neg[allowed] if allowed < neg.size else -np.inf
    return float(np.mean(pos > threshold))


def aruc(positive_scores: Sequence[float], negative_scores: Sequence[float], steps: int = 1001) -> float:
    """ARUC as pinned for this project (MetaV, KDD'22): with scores in [0, 1],
    robustness(tau) = share of positives with score >= tau, uniqueness(tau) = share of
    negatives with score < tau, and ARUC = the integral over tau in [0, 1] of
    min(robustness(tau), uniqueness(tau)), by the trapezoid rule on ``steps`` evenly spaced
    thresholds. 1.0 needs every positive at 1 and every negative at 0; perfect separation
    at a margin m scores about m."""
    pos = np.asarray(positive_scores, dtype=float)
    neg = np.asarray(negative_scores, dtype=float)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("aruc: need at least one positive and one negative score")
    taus = np.linspace(0.0, 1.0, steps)
    robustness = (pos[None, :] >= taus[:, None]).mean(axis=1)
    uniqueness = (neg[None, :] < taus[:, None]).mean(axis=1)
    return float(np.trapezoid(np.minimum(robustness, uniqueness), taus))


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """One-sided Mann-Whitney U test that ``x`` tends to exceed ``y``:
    (U statistic, p-value, common-language effect size U / (n_x n_y))."""
    from scipy.stats import mannwhitneyu

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    res = mannwhitneyu(x, y, alternative="greater")
    return float(res.statistic), float(res.pvalue), float(res.statistic / (x.size * y.size))
