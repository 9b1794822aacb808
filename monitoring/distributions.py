"""The few distribution functions the regression detector needs, in numpy and ``math``.

They replace scipy in the serving process (scipy cost the front ~69 MB of proportional set
size for one rank test). Each matches scipy's answer (``tests/unit/test_monitoring_distributions``
compares them on many inputs):

* ``normal_sf``: ``scipy.stats.norm.sf``;
* ``binom_sf`` / ``binom_cdf`` / ``binom_ppf``: ``scipy.stats.binom``, through the regularized
  incomplete beta function (a continued fraction, Numerical Recipes' ``betacf``);
* ``mann_whitney_greater``: ``scipy.stats.mannwhitneyu(x, y, alternative="greater").pvalue``
  with its default ``method="auto"``: the exact distribution of U when one sample has at most
  8 values and there are no ties, else the normal approximation with tie and continuity
  corrections;
* ``binned_mann_whitney_greater``: the same normal approximation from counts per ordered bin
  (a histogram, or the counts per distinct value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_TINY = 1e-300
_EPS = 1e-15
#: scipy's rule (``_mwu_choose_method``): exact when a sample is this small and nothing ties
_EXACT_MAX_SIZE = 8


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the continued fraction of I_x(a, b); converges fast for
    x < (a + 1) / (a + b + 2), in O(sqrt(max(a, b))) steps at worst."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100 + 10 * int(math.sqrt(max(a, b)))):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def binom_sf(k: float, n: int, p: float) -> float:
    """P(X > k) for X ~ Binomial(n, p), as ``scipy.stats.binom.sf(k, n, p)``."""
    k = math.floor(k)
    if k < 0:
        return 1.0
    if k >= n:
        return 0.0
    return regularized_beta(k + 1.0, float(n - k), p)


def binom_cdf(k: float, n: int, p: float) -> float:
    """P(X <= k), computed directly (not as 1 - sf) so that small values keep their digits."""
    k = math.floor(k)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return regularized_beta(float(n - k), k + 1.0, 1.0 - p)


def binom_ppf(q: float, n: int, p: float) -> int:
    """The smallest k with P(X <= k) >= q, as ``scipy.stats.binom.ppf(q, n, p)`` (0 < q < 1)."""
    low, high = 0, n
    while low < high:  # binom_cdf(high) >= q holds throughout
        middle = (low + high) // 2
        if binom_cdf(middle, n, p) >= q:
            high = middle
        else:
            low = middle + 1
    return low


def binned_mann_whitney_greater(new: np.ndarray, base: np.ndarray) -> float:
    """One-sided p-value that ``new`` is stochastically greater than ``base``, from their
    counts in the same ordered bins (observations in one bin tie): the normal approximation
    with tie correction and continuity correction."""
    new = np.asarray(new, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    n1, n2 = float(new.sum()), float(base.sum())
    below = np.cumsum(base) - base
    u = float(np.sum(new * (below + 0.5 * base)))
    ties = new + base
    total = n1 + n2
    tie_term = float(np.sum(ties**3 - ties)) / (total * (total - 1.0))
    variance = n1 * n2 / 12.0 * ((total + 1.0) - tie_term)
    if variance <= 0.0:
        return 1.0
    return normal_sf((u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance))


def _u_counts(m: int, n: int, up_to: int) -> np.ndarray:
    """How many orderings of m and n distinct values give U = 0 .. up_to: the first
    coefficients of the Gaussian binomial [m + n choose m]_q, as exact Python integers."""
    counts = np.zeros(up_to + 1, dtype=object)
    counts[:] = 0
    counts[0] = 1
    for i in range(1, m + 1):  # times (1 - q^(n+i)) / (1 - q^i) gives [n+i choose i]_q
        shift = n + i
        if shift <= up_to:
            counts[shift:] = counts[shift:] - counts[: up_to + 1 - shift]
        for start in range(i):  # dividing by (1 - q^i): running sums with stride i
            counts[start::i] = np.cumsum(counts[start::i])
    return counts


def _exact_u_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) under the null hypothesis, without ties, computed exactly in integers."""
    m, n = sorted((n1, n2))
    top = m * n
    if u <= 0:
        return 1.0
    if u > top:
        return 0.0
    orderings = math.comb(m + n, m)
    if 2 * u > top:  # the distribution is symmetric: P(U >= u) = P(U <= mn - u)
        return int(_u_counts(m, n, top - u).sum()) / orderings
    return (orderings - int(_u_counts(m, n, u - 1).sum())) / orderings


def mann_whitney_greater(
    new: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray
) -> float:
    """One-sided p-value that ``new`` is stochastically greater than ``base`` (raw samples)."""
    new = np.asarray(new, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    values, where = np.unique(np.concatenate((new, base)), return_inverse=True)
    new_counts = np.bincount(where[: new.size], minlength=values.size)
    base_counts = np.bincount(where[new.size :], minlength=values.size)
    ties = values.size < new.size + base.size
    if min(new.size, base.size) <= _EXACT_MAX_SIZE and not ties:
        below = np.cumsum(base_counts) - base_counts
        u = int(np.sum(new_counts * below))
        return _exact_u_sf(u, new.size, base.size)
    return binned_mann_whitney_greater(new_counts, base_counts)
