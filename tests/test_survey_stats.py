"""The survey's statistics against scipy: exact binomial test and Wilson score interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from echosynth.evaluate.survey.stats import binom_test, proportion_summary, wilson_interval


@pytest.mark.parametrize("n", [1, 2, 7, 15, 50, 750])
@pytest.mark.parametrize("p", [0.5, 0.3, 0.77])
def test_binom_test_matches_scipy(n, p):
    for k in sorted({0, 1, n // 3, n // 2, (n + 1) // 2, n - 1, n} & set(range(n + 1))):
        assert binom_test(k, n, p) == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_wilson_matches_scipy(confidence):
    for n in (1, 5, 15, 50, 750):
        for k in range(0, n + 1, max(1, n // 9)):
            ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
            lo, hi = wilson_interval(k, n, confidence)
            assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_thesis_score_is_not_significant():
    # Thesis §5.1.5: a typical participant scored 21/50; that is not distinguishable from chance.
    s = proportion_summary(21, 50)
    assert s["accuracy"] == 0.42
    assert s["p_value"] == pytest.approx(binomtest(21, 50).pvalue)
    assert s["p_value"] > 0.05 and s["ci_low"] < 0.5 < s["ci_high"]
    # ... while 35/50 is.
    assert proportion_summary(35, 50)["p_value"] < 0.01


def test_edge_cases():
    assert binom_test(0, 0) == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        binom_test(5, 3)
    assert np.isnan(proportion_summary(0, 0)["accuracy"])
