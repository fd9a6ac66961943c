"""Evidence statistics against hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest

from audit_lib import stats


def test_empirical_p_value_by_hand():
    assert stats.empirical_p_value(5.0, [1, 2, 3]) == pytest.approx(1 / 4)
    assert stats.empirical_p_value(2.0, [1, 2, 3]) == pytest.approx(3 / 4)  # ties count against
    with pytest.raises(ValueError, match="empty"):
        stats.empirical_p_value(1.0, [])


def test_clopper_pearson_matches_the_zero_event_formula():
    for n, bound in [(8, 0.312), (100, 0.0295), (1000, 0.0030)]:
        assert stats.clopper_pearson_upper(0, n) == pytest.approx(bound, abs=5e-4)
    assert stats.clopper_pearson_upper(0, 8) == pytest.approx(1 - 0.05 ** (1 / 8))


def test_holm_by_hand():
    adjusted, reject = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]


def test_roc_and_tpr_at_fpr():
    assert stats.roc_auc([3, 4], [1, 2]) == 1.0
    assert stats.roc_auc([1, 2], [1, 2]) == 0.5
    neg = np.arange(100) / 100
    assert stats.tpr_at_fpr([0.995, 0.5], neg, 0.01) == 0.5


def test_aruc_hand_worked_examples():
    # perfect scores: robustness 1 on [0, 1], uniqueness 1 on (0, 1] -> area 1
    assert stats.aruc([1.0, 1.0], [0.0, 0.0]) == pytest.approx(1.0, abs=2e-3)
    # positives at 0.8, negatives at 0.2: min is 1 only for tau in (0.2, 0.8] -> 0.6
    assert stats.aruc([0.8], [0.2]) == pytest.approx(0.6, abs=2e-3)
    # fully overlapping at 0.5: R = 1 on [0, .5], U = 1 on (.5, 1]; min is 0 everywhere
    assert stats.aruc([0.5], [0.5]) == pytest.approx(0.0, abs=2e-3)
    # half the positives at 0.9, half at 0.1; negatives at 0.0
    # tau in (0, 0.1]: min(1, 1) = 1; (0.1, 0.9]: min(0.5, 1) = 0.5 -> 0.1 + 0.4 = 0.5
    assert stats.aruc([0.9, 0.1], [0.0]) == pytest.approx(0.5, abs=2e-3)


def test_mann_whitney_direction():
    _, p_hi, effect = stats.mann_whitney_greater([5, 6, 7, 8], [1, 2, 3, 4])
    _, p_lo, _ = stats.mann_whitney_greater([1, 2, 3, 4], [5, 6, 7, 8])
    assert p_hi < 0.05 < p_lo and effect == 1.0
