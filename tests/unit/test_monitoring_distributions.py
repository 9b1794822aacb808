"""monitoring.distributions gives scipy's answers (scipy is a dev dependency for this
comparison only; the serving processes never import it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from monitoring import distributions as dist
from monitoring.histogram import bin_counts


@pytest.mark.parametrize(
    ("n_new", "n_base"), [(1, 1), (3, 5), (8, 8), (8, 9), (5, 300), (2, 40), (7, 1000), (9, 9)]
)
@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0, -1.0])
def test_mann_whitney_without_ties_matches_scipy(n_new: int, n_base: int, shift: float) -> None:
    """Small samples take scipy's exact path; from 9 values on both sides, the normal one."""
    rng = np.random.default_rng(n_new * 1000 + n_base)
    new, base = rng.normal(shift, 1.0, n_new), rng.normal(0.0, 1.0, n_base)
    expected = stats.mannwhitneyu(new, base, alternative="greater").pvalue
    assert dist.mann_whitney_greater(new, base) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("n_new", "n_base"), [(5, 300), (300, 400), (2000, 3000), (4, 4)])
@pytest.mark.parametrize("scale", [0.8, 1.0, 1.3])
def test_mann_whitney_with_ties_matches_scipy(n_new: int, n_base: int, scale: float) -> None:
    rng = np.random.default_rng(n_new + n_base)
    new = np.round(rng.lognormal(0.0, 1.0, n_new) * 3.0 * scale)
    base = np.round(rng.lognormal(0.0, 1.0, n_base) * 3.0)
    expected = stats.mannwhitneyu(new, base, alternative="greater").pvalue
    assert dist.mann_whitney_greater(new, base) == pytest.approx(expected, rel=1e-9)


def test_binned_mann_whitney_is_scipy_on_the_bucket_midpoints() -> None:
    """Histogram counts are the samples with each value replaced by its bucket: ties."""
    from monitoring.histogram import BUCKET_MIDPOINTS

    rng = np.random.default_rng(4)
    base, new = (
        bin_counts(rng.lognormal(5.7, 0.4, 3000)),
        bin_counts(rng.lognormal(5.72, 0.4, 2000)),
    )
    expected = stats.mannwhitneyu(
        np.repeat(BUCKET_MIDPOINTS, new), np.repeat(BUCKET_MIDPOINTS, base), alternative="greater"
    ).pvalue
    assert dist.binned_mann_whitney_greater(new, base) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [1, 10, 200, 1000, 60_000, 600_000])
@pytest.mark.parametrize("p", [0.01, 0.25, 0.5, 0.99])
def test_binomial_tails_and_quantiles_match_scipy(n: int, p: float) -> None:
    spread = math.sqrt(n * p * (1 - p) + 1.0)
    for k in {
        -1,
        0,
        1,
        int(n * p) - 3,
        int(n * p),
        int(n * p + 3 * spread),
        int(n * p + 8 * spread),
        n - 1,
        n,
    }:
        assert dist.binom_sf(k, n, p) == pytest.approx(
            stats.binom.sf(k, n, p), rel=1e-7, abs=1e-300
        )
        assert dist.binom_cdf(k, n, p) == pytest.approx(
            stats.binom.cdf(k, n, p), rel=1e-7, abs=1e-300
        )
    for q in (0.0025, 0.5, 1 - 0.01 / 4, 1 - 1e-6):
        assert dist.binom_ppf(q, n, p) == stats.binom.ppf(q, n, p)


def test_normal_tail_matches_scipy() -> None:
    for z in (-8.0, -1.0, 0.0, 0.3, 2.5, 9.0, 37.0):
        assert dist.normal_sf(z) == pytest.approx(stats.norm.sf(z), rel=1e-12, abs=1e-300)


def test_exact_u_distribution_sums_to_one_and_is_symmetric() -> None:
    m, n = 4, 6
    counts = dist._u_counts(m, n, m * n)
    assert int(counts.sum()) == math.comb(m + n, m)
    assert list(counts) == list(counts[::-1])
