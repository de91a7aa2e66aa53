"""Interval estimates for the scorecard: Wilson, NPS, CSAT and CES. Plain Python, no I/O.

Each function returns ``None`` for a figure that has no answer (no answers at all, or one CES
answer for an interval), never NaN, so JSON and CSV show an empty cell rather than a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Estimate", "ces", "csat", "nps", "percentile", "t_quantile", "wilson"]

Z95 = NormalDist().inv_cdf(0.975)


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float | None
    n: int
    ci_low: float | None
    ci_high: float | None


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the interval touches 0 or 1 exactly; rounding must not move it.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def nps(promoters: int, detractors: int, n: int) -> Estimate:
    """100·(p - d) with SE = 100·√((p + d - (p - d)²)/n); a normal 95 % interval."""
    if n <= 0:
        return Estimate(None, 0, None, None)
    p, d = promoters / n, detractors / n
    score = 100 * (p - d)
    se = 100 * math.sqrt(max(0.0, p + d - (p - d) ** 2) / n)
    return Estimate(score, n, score - Z95 * se, score + Z95 * se)


def csat(satisfied: int, n: int) -> Estimate:
    """100·share of answers 4 or 5 on 1-5, with a Wilson interval (in percent)."""
    interval = wilson(satisfied, n)
    if interval is None:
        return Estimate(None, 0, None, None)
    return Estimate(100 * satisfied / n, n, 100 * interval[0], 100 * interval[1])


def ces(total: float, total_of_squares: float, n: int) -> Estimate:
    """Mean effort on 1-7 with a Student t 95 % interval (none for a single answer)."""
    if n <= 0:
        return Estimate(None, 0, None, None)
    mean = total / n
    if n == 1:
        return Estimate(mean, 1, None, None)
    variance = max(0.0, (total_of_squares - n * mean * mean) / (n - 1))
    half = t_quantile(0.975, n - 1) * math.sqrt(variance / n)
    return Estimate(mean, n, mean - half, mean + half)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df``, by the closed form of Abramowitz and
    Stegun 26.7.3 (finite sums of powers of cos θ, θ = atan(t/√df)): exact up to rounding."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # (1·3···(k-1))/(2·4···k) cos^k θ
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = math.cos(theta)
    total = term
    for k in range(3, df - 1, 2):  # (2·4···(k-1))/(1·3···k) cos^k θ
        term *= c2 * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + s * total)


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (above 0.5) of Student's t with integer ``df``.

    Bisection on the exact distribution function above; past 1 000 degrees of freedom the
    Cornish-Fisher expansion in 1/df (three terms) agrees with it to better than 1e-9."""
    if not 0.5 < probability < 1 or df < 1:
        raise ValueError("t_quantile needs 0.5 < probability < 1 and df >= 1")
    if df > 1_000:
        z = NormalDist().inv_cdf(probability)
        return (
            z
            + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        )
    mass = 2 * probability - 1
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < mass:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        if _t_two_sided_mass(middle, df) < mass:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    h = (len(sorted_values) - 1) * q
    below = math.floor(h)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (h - below) * (sorted_values[above] - sorted_values[below])
