"""Statistics over seeds: hand-computed intervals and t statistics, and the power estimate checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdlib.errors import KdlibError
from kdlib.stats import detectable_difference, mean_ci, paired_difference

T_975_DF2 = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)


def test_mean_ci_of_three_values_by_hand():
    est = mean_ci([1.0, 2.0, 3.0])
    assert est.mean == 2.0 and est.sd == pytest.approx(1.0) and est.n == 3
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert (est.low, est.high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-12)
    assert not est.excludes_zero() and mean_ci([5.0, 6.0, 7.0]).excludes_zero()


def test_one_value_has_no_interval():
    est = mean_ci([4.0])
    assert est.mean == 4.0 and math.isnan(est.low) and math.isnan(est.high) and not est.excludes_zero()


def test_paired_difference_by_hand():
    a, b = [10.0, 12.0, 11.0], [9.0, 9.0, 10.0]  # differences 1, 3, 1
    d = np.array([1.0, 3.0, 1.0])
    res = paired_difference(a, b)
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert res.difference.mean == pytest.approx(5 / 3) and res.t == pytest.approx(t_hand)
    assert 0 < res.p < 1
    assert paired_difference(b, a).t == pytest.approx(-t_hand)


def test_paired_difference_of_identical_samples():
    res = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert res.difference.mean == 0 and res.t == 0 and res.p == 1


@pytest.mark.parametrize("n", [3, 5])
def test_detectable_difference_has_the_stated_power(n):
    """Simulate paired differences with the returned mean: a two-sided t-test at 5% rejects ~80% of the time."""
    from scipy import stats as sps

    delta = detectable_difference(sd=2.0, n=n)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, 2.0, size=(40_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = (np.abs(t) > sps.t.ppf(0.975, n - 1)).mean()
    assert power == pytest.approx(0.8, abs=0.01)


def test_detectable_difference_shrinks_with_seeds_and_approaches_the_normal_formula():
    values = [detectable_difference(1.0, n) for n in (3, 5, 10, 100)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx((1.959964 + 0.841621) / 10, rel=0.02)


@pytest.mark.parametrize("call, needle", [
    (lambda: mean_ci([]), "values = [] is not valid"),
    (lambda: mean_ci([1.0, float("nan")]), "is not valid; valid: one or more finite numbers"),
    (lambda: mean_ci([1.0], level=1.5), "level = 1.5 is not valid"),
    (lambda: paired_difference([1.0, 2.0], [1.0]), "paired samples of sizes 2 and 1"),
    (lambda: detectable_difference(1.0, 1), "n = 1 is not valid"),
])
def test_bad_input_is_one_line(call, needle):
    with pytest.raises(KdlibError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        call()
