"""Statistics for the spot-the-fake survey: exact binomial test and Wilson score interval."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, norm


def binom_test(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial p-value: P(X with pmf(X) <= pmf(k)), X ~ Bin(n, p).

    The "minimum likelihood" two-sided test (scipy's `binomtest`): sum the probabilities of
    every outcome at most as likely as the observed one (relative tolerance 1e-7).
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"binom_test needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    pmf = binom.pmf(np.arange(n + 1), n, p)
    return float(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n.

    centre = (k + z²/2) / (n + z²),  half-width = z / (n + z²) · sqrt(k(n−k)/n + z²/4),
    with z the (1 + confidence)/2 normal quantile. (nan, nan) when n = 0.
    """
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    z = float(norm.ppf((1 + confidence) / 2))
    denom = n + z * z
    centre = (k + z * z / 2) / denom
    half = z / denom * math.sqrt(k * (n - k) / n + z * z / 4)
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion_summary(k: int, n: int, chance: float = 0.5) -> dict:
    """k of n correct: accuracy, two-sided exact p-value against chance, Wilson 95% interval."""
    lo, hi = wilson_interval(k, n)
    return {
        "n": int(n),
        "correct": int(k),
        "accuracy": (k / n) if n else math.nan,
        "p_value": binom_test(k, n, chance),
        "ci_low": lo,
        "ci_high": hi,
    }
