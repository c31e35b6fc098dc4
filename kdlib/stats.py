"""Statistics over seeds: means with confidence intervals, paired method differences, the power estimate.

The study trains every student at several seeds; a seed fixes the student's initial weights and its
data order, and is shared by every method (the paired design). So a method's effect is estimated from
the per-seed differences ``method(seed) - scratch(seed)``:

* :func:`mean_ci`: mean and two-sided Student-t confidence interval of one sample (``n - 1`` degrees of
  freedom); with one value the interval is undefined (NaN), never a made-up zero width;
* :func:`paired_difference`: mean of the per-seed differences, its t interval, the paired t statistic
  and two-sided p value (``scipy.stats.ttest_rel``'s definition);
* :func:`detectable_difference`: the smallest true mean difference that a two-sided paired t-test at
  level ``alpha`` detects with probability ``power``, given the standard deviation of the per-seed
  differences and the number of seeds (the noncentral t power, integrated and solved numerically): the power estimate the
  study states before comparing methods.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

from kdlib.errors import KdlibError


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise KdlibError(f"{what} = {list(values)!r} is not valid; valid: one or more finite numbers")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise KdlibError(f"level = {level!r} is not valid; valid: 0 < level < 1 (e.g. 0.95)")


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval over ``n`` values (``low``/``high`` NaN when ``n`` is 1)."""

    mean: float
    low: float
    high: float
    sd: float
    n: int
    level: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean, Student-t ``level`` interval, sample standard deviation (ddof 1) and count of ``values``."""
    _check_level(level)
    arr = _values(values, "values")
    n = arr.size
    mean = float(arr.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, math.nan, 1, level)
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, sd, n, level)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired values: the mean difference with its interval, t statistic and p value."""

    difference: Estimate
    t: float
    p: float

    def as_dict(self) -> dict[str, float]:
        return {**self.difference.as_dict("diff_"), "t": self.t, "p": self.p}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Paired comparison of ``a`` and ``b`` (same length, paired by position, e.g. by seed)."""
    x, y = _values(a, "a"), _values(b, "b")
    if x.size != y.size:
        raise KdlibError(f"paired samples of sizes {x.size} and {y.size}; valid: one value of each per seed")
    diff = mean_ci(x - y, level)
    if x.size < 2:
        return PairedDifference(diff, math.nan, math.nan)
    if diff.sd == 0:
        same = diff.mean == 0
        return PairedDifference(diff, 0.0 if same else math.copysign(math.inf, diff.mean), 1.0 if same else 0.0)
    result = sps.ttest_rel(x, y)
    return PairedDifference(diff, float(result.statistic), float(result.pvalue))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true mean paired difference detected with probability ``power`` by a two-sided paired t-test
    at level ``alpha`` with ``n`` pairs whose differences have standard deviation ``sd``."""
    if not (isinstance(n, int) and n >= 2):
        raise KdlibError(f"n = {n!r} is not valid; valid: at least 2 seeds")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise KdlibError(f"alpha = {alpha!r}, power = {power!r}; valid: both strictly between 0 and 1")
    if not (math.isfinite(sd) and sd >= 0):
        raise KdlibError(f"sd = {sd!r} is not valid; valid: a finite number >= 0")
    if sd == 0:
        return 0.0
    df = n - 1
    crit = sps.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:  # power at a standardised effect, minus the target
        return _paired_t_power(effect * math.sqrt(n), df, crit) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2.0
    effect = optimize.brentq(shortfall, 1e-9, high)
    return float(effect * sd)


def _paired_t_power(nc: float, df: int, crit: float) -> float:
    """P(|T| > crit) for T = (Z + nc) / sqrt(V / df), Z standard normal, V chi-square(df): the power of a
    two-sided t-test, integrated over V (scipy's noncentral t is not finite for large nc at df 1)."""
    from scipy import integrate

    def given_v(v: float) -> float:
        s = crit * math.sqrt(v / df)
        return (sps.norm.sf(s - nc) + sps.norm.cdf(-s - nc)) * sps.chi2.pdf(v, df)

    value, _ = integrate.quad(given_v, 0, math.inf, limit=200)
    return float(value)
