"""Drift statistics (churnkit.monitor.drift) against scipy and plain reference computations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from churnkit.monitor import drift as D


@pytest.mark.parametrize("n,m,decimals", [(7, 11, 1), (500, 800, 2), (3000, 2999, 8), (2000, 2000, 1), (1, 1, 3)])
def test_wasserstein_matches_scipy(n, m, decimals):
    rng = np.random.default_rng(n)
    u = np.round(rng.normal(0, 1, n), decimals)  # rounding makes ties inside and across samples
    v = np.round(rng.normal(0.3, 1.4, m), decimals)
    ours = D.wasserstein_sorted(np.sort(u), np.sort(v))
    assert ours == pytest.approx(stats.wasserstein_distance(u, v), abs=1e-9, rel=1e-9)


def test_ks_small_sample_matches_scipy():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, 400), rng.normal(0.25, 1, 300)
    res, _ = D.compare_numeric(ref, cur)
    want = stats.ks_2samp(ref, cur)
    assert res["method"] == "ks" and res["rule"] == "p_value < threshold"
    assert res["statistic"] == pytest.approx(want.statistic, abs=1e-9)
    assert res["p_value"] == pytest.approx(want.pvalue, abs=1e-9)
    assert res["drift"] is bool(want.pvalue < 0.05) is True


def test_large_sample_uses_normalized_wasserstein():
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(50, 10, 5000), rng.normal(52, 10, 4000)  # +0.2 std
    res, _ = D.compare_numeric(ref, cur)
    want = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert res["method"] == "wasserstein_norm" and res["drift"]
    # float32 sorting on large samples moves the statistic by ~1e-7 relative, far below the 0.1 threshold
    assert res["statistic"] == pytest.approx(want, rel=1e-6)
    assert res["psi"] < 0.1 and res["psi_level"] == "ok"  # PSI alone would miss this shift


def test_chi2_and_jensen_shannon_match_scipy():
    rc, cc = [40, 25, 0, 9, 3], [31, 30, 4, 0, 3]
    stat, p, dof = D.chi2_homogeneity(rc, cc)
    kept = np.array([rc, cc])[:, [0, 1, 2, 3, 4]]
    want = stats.chi2_contingency(kept, correction=False)
    assert (stat, p, dof) == (pytest.approx(want.statistic, abs=1e-9), pytest.approx(want.pvalue, abs=1e-9), want.dof)
    assert D.jensen_shannon(rc, cc) == pytest.approx(distance.jensenshannon(rc, cc), abs=1e-9)
    assert D.chi2_homogeneity([5, 0], [7, 0]) == (0.0, 1.0, 0)


def test_categorical_small_sample_is_chi2_over_value_counts():
    rng = np.random.default_rng(3)
    ref = pd.Series(rng.choice(["a", "b", "c"], 600, p=[0.5, 0.3, 0.2]))
    cur = pd.Series(rng.choice(["a", "b", "c"], 500, p=[0.4, 0.3, 0.3]))
    res, _ = D.compare_categorical(ref, cur)
    table = pd.crosstab(np.r_[np.zeros(600), np.ones(500)], np.r_[ref, cur])
    want = stats.chi2_contingency(table.to_numpy(), correction=False)
    assert res["method"] == "chi2" and res["statistic"] == pytest.approx(want.statistic, abs=1e-9)
    assert res["p_value"] == pytest.approx(want.pvalue, abs=1e-9)


def _psi_reference(ref, cur, bins=10, floor=1e-4):
    """PSI written out plainly: quantile edges, a loop over bins, a missing bin, floored shares."""
    r_ok, c_ok = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    edges = sorted(set(np.quantile(r_ok, [i / bins for i in range(1, bins)])))
    bounds = [-np.inf] + edges + [np.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        r = max(((r_ok > lo) & (r_ok <= hi)).sum() / len(ref), floor)
        c = max(((c_ok > lo) & (c_ok <= hi)).sum() / len(cur), floor)
        total += (c - r) * np.log(c / r)
    r, c = max(np.isnan(ref).mean(), floor), max(np.isnan(cur).mean(), floor)
    return total + (c - r) * np.log(c / r)


@pytest.mark.parametrize("n", [300, 4000])
def test_numeric_psi_matches_plain_computation(n):
    rng = np.random.default_rng(n)
    ref = np.floor(rng.exponential(20, n))  # many ties: duplicate quantile edges collapse
    cur = np.floor(rng.exponential(14, n + 37))
    ref[rng.random(n) < 0.05] = np.nan
    cur[:3] = np.nan
    res, _ = D.compare_numeric(ref, cur)
    assert res["psi"] == pytest.approx(_psi_reference(ref, cur), abs=1e-12)
    assert res["missing"]["reference"] == pytest.approx(np.isnan(ref).mean())


def test_categorical_psi_counts_new_and_vanished_categories():
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["gone"] * 20 + [None] * 0)
    cur = pd.Series(["a"] * 40 + [" b "] * 30 + ["new"] * 25 + [""] * 5)  # " b " is "b"; "" is missing
    res, hist = D.compare_categorical(ref, cur)
    shares = {"a": (0.5, 0.4), "b": (0.3, 0.3), "gone": (0.2, 0.0), "new": (0.0, 0.25), "(missing)": (0.0, 0.05)}
    want = sum((max(c, 1e-4) - max(r, 1e-4)) * np.log(max(c, 1e-4) / max(r, 1e-4)) for r, c in shares.values())
    assert res["psi"] == pytest.approx(want, abs=1e-12)
    assert res["new_categories"] == ["new"] and res["vanished_categories"] == ["gone"]
    assert res["missing"] == {"reference": 0.0, "current": 0.05}
    assert set(hist["categories"]) == set(shares)


def test_low_cardinality_numeric_is_compared_as_categories():
    ref = np.array([0.0, 1.0] * 300)
    cur = np.array([0.0, 1.0, 2.0] * 200)
    res, _ = D.compare_numeric(ref, cur)
    assert res["kind"] == "numeric" and res["method"] == "chi2" and res["drift"]
    assert res["new_categories"] == ["2"]


def test_quantile_edges_equal_numpy():
    x = np.sort(np.random.default_rng(5).gamma(2.0, 3.0, 1001))
    assert np.array_equal(D.quantile_edges(x, 10), np.unique(np.quantile(x, np.linspace(0, 1, 11)[1:-1])))
