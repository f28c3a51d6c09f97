"""The two one-sided tests of the online guard, in plain Python (no scipy: it is not a dependency).

* :func:`welch_t_test`: did the mean of ``after`` drop below the mean of ``before``? Welch's t
  statistic ``t = (mean_after - mean_before) / sqrt(var_a/n_a + var_b/n_b)`` with sample
  variances (``n - 1``) and the Welch–Satterthwaite degrees of freedom; the p-value is
  ``P(T_df <= t)``, the lower tail of Student's t. Welch, not Student: the two stacks need not
  give scores of the same spread, and the samples need not be the same size.
* :func:`proportion_z_test`: did the success rate drop? The pooled two-proportion z test,
  ``z = (p_a - p_b) / sqrt(p (1 - p) (1/n_a + 1/n_b))`` with ``p`` the pooled rate; the p-value
  is ``Phi(z)``, the lower tail of the standard normal.

Student's t distribution function comes from the regularised incomplete beta function
(``P(T <= t) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + t^2)`` for ``t < 0``), evaluated with
Lentz's continued fraction (Numerical Recipes' ``betacf``), which converges to ~1e-14 within a
few dozen terms for the degrees of freedom the guard sees. ``tests/guard/test_stats.py`` checks
both tests against table values and, where scipy happens to be installed, against scipy.

Degenerate samples are answered, not raised: with no spread on either side the t test is
decided by the means alone (p 0 for a drop, 1 otherwise) and reports no statistic; a success
rate of 0 or 1 on both sides means no difference (p 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TestResult", "normal_cdf", "proportion_z_test", "student_t_cdf", "welch_t_test"]


@dataclass(frozen=True)
class TestResult:
    """One one-sided test: the statistic (None when it is undefined), its p-value and the degrees of freedom."""

    statistic: float | None
    p_value: float
    df: float | None = None


def normal_cdf(z: float) -> float:
    """``Phi(z)``: the standard normal distribution function."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``; ``y = 1 - x``, passed in
    because the caller can compute it without cancellation (``x`` is close to 1 for large df)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, y) / b


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom (not necessarily whole)."""
    if df <= 0 or math.isnan(t) or math.isnan(df):
        raise ValueError(f"student_t_cdf needs df > 0 and a number t, got t={t!r}, df={df!r}")
    if math.isinf(t):
        return 0.0 if t < 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))  # P(T <= -|t|)
    return tail if t < 0 else 1.0 - tail


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, var


def welch_t_test(before: Sequence[float], after: Sequence[float]) -> TestResult:
    """One-sided Welch t test of ``mean(after) < mean(before)``; each side needs at least 2 values."""
    if len(before) < 2 or len(after) < 2:
        raise ValueError(f"the t test needs at least 2 values a side, got {len(before)} and {len(after)}")
    mb, vb = _mean_var(before)
    ma, va = _mean_var(after)
    sb, sa = vb / len(before), va / len(after)
    se2 = sa + sb
    if se2 <= 0.0:  # no spread on either side: the means decide
        return TestResult(statistic=None, p_value=0.0 if ma < mb else 1.0, df=None)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 * se2 / ((sa * sa / (len(after) - 1) if sa else 0.0) + (sb * sb / (len(before) - 1) if sb else 0.0))
    return TestResult(statistic=t, p_value=student_t_cdf(t, df), df=df)


def proportion_z_test(successes_before: int, n_before: int, successes_after: int, n_after: int) -> TestResult:
    """One-sided pooled two-proportion z test of ``rate(after) < rate(before)``."""
    if n_before < 1 or n_after < 1:
        raise ValueError(f"the z test needs at least 1 value a side, got {n_before} and {n_after}")
    pb, pa = successes_before / n_before, successes_after / n_after
    pooled = (successes_before + successes_after) / (n_before + n_after)
    se2 = pooled * (1.0 - pooled) * (1.0 / n_before + 1.0 / n_after)
    if se2 <= 0.0:  # every episode succeeded, or none did, on both sides: no difference
        return TestResult(statistic=0.0, p_value=1.0)
    z = (pa - pb) / math.sqrt(se2)
    return TestResult(statistic=z, p_value=normal_cdf(z))
