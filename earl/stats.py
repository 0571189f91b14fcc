"""Confidence intervals for evaluation summaries, dependency-free (no scipy).

Benchmarks report a success rate and mean scores over a few hundred samples; without an interval
a 2-point difference between two checkpoints means nothing. `wilson_ci` is for fractions (it stays
inside [0, 1] and behaves at 0/n and n/n, unlike the normal approximation); `proportion` is a
success rate with that interval, the one reading every evaluation reports; `mean_ci` is a
Student-t interval for means of bounded scores such as the 0-10 SC/PQ/overall.

>>> wilson_ci(8, 10)  # doctest: +ELLIPSIS
(0.49..., 0.94...)
>>> proportion([True, True, False, True]).rate
0.75
>>> mean_ci([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
(-0.48..., 4.48...)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import NamedTuple


def _t_pdf(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom, for p in (0.5, 1).

    Bisection on the CDF, computed as 0.5 + the integral of the density from 0 (Simpson's rule,
    400 panels): accurate to ~1e-6, plenty for an interval, and no scipy.
    """
    if not 0.5 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0.5, 1), got {p}")

    def cdf(x: float) -> float:
        n, h = 400, x / 400
        s = _t_pdf(0.0, df) + _t_pdf(x, df)
        s += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Two-sided Student-t confidence interval for the mean; (nan, nan) with fewer than 2 values.

    `bounds` clips the interval to the range the values can take (e.g. (0, 10) for scores), which
    the t-interval itself ignores near a bound.
    """
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0:
        return (mean, mean)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return (max(lo, bounds[0]), min(hi, bounds[1])) if bounds else (lo, hi)


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n; (nan, nan) when n is 0."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: need 0 <= k <= n, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1); computing it leaves rounding noise like 3e-17.
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


class Proportion(NamedTuple):
    """k successes in n trials: the rate k/n (nan when n is 0) and its Wilson interval."""

    k: int
    n: int
    rate: float
    ci: tuple[float, float]


def proportion(hits: Iterable, level: float = 0.95) -> Proportion:
    """The success rate of `hits` (each true or 1 for a success, false or 0 otherwise) with its Wilson interval."""
    flags = [bool(h) for h in hits]
    k, n = sum(flags), len(flags)
    return Proportion(k, n, k / n if n else math.nan, wilson_ci(k, n, level))


def json_interval(ci: tuple[float, float]) -> list[float | None]:
    """An interval as JSON can hold it: an undefined bound (nan, e.g. from fewer than 2 values) becomes null."""
    return [v if math.isfinite(v) else None for v in ci]
