"""Confidence intervals, checked against hand-worked numbers."""

import math

import pytest

from earl.stats import mean_ci, t_quantile, wilson_ci


def test_t_quantiles_match_tables():
    # Standard two-sided 95% table values.
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3) = 0.5774; t(0.975, 2) = 4.3027 -> half-width 2.4841.
    lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (lo, hi) == (pytest.approx(2 - 2.4841, abs=1e-3), pytest.approx(2 + 2.4841, abs=1e-3))
    assert mean_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert mean_ci([0.0, 10.0, 10.0], bounds=(0.0, 10.0))[1] == 10.0
    assert all(math.isnan(v) for v in mean_ci([1.0]))


def test_wilson_by_hand():
    # k=8, n=10, z=1.96: centre (0.8 + 0.1921)/1.3842 = 0.7167, half 1.96*sqrt(0.016 + 0.0096)/1.3842 = 0.2265.
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    with pytest.raises(ValueError):
        wilson_ci(11, 10)
