"""Drift statistics for one column seen in two samples (pure numpy over typed arrays; no I/O).

Which statistic decides drift depends on the column and the sample size (the defaults below are the
ones the README documents):

===================  ====================================  ===========================================
column               at most ``small_sample`` rows a side  more rows
===================  ====================================  ===========================================
numeric              two-sample KS, drift if p < 0.05      normalized Wasserstein (W1 / reference std) >= 0.1
categorical          chi-squared homogeneity, p < 0.05     Jensen-Shannon distance (natural log) >= 0.1
numeric, <= 5 values compared as categories (a 0/1 flag is a category, not a distribution)
===================  ====================================  ===========================================

Tests of significance turn every tiny difference into "drift" once samples are large, so above
``small_sample`` rows an effect size decides. The population stability index (PSI, 10 bins from the
reference quantiles, empty bins floored at 1e-4) is reported for every column with levels warn 0.1 / act
0.25; it is not the drift verdict because with 10 quantile bins a +0.2 std mean shift stays near 0.04
while the normalized Wasserstein distance reads 0.2.

Each statistic is computed once per column from two sorted arrays: quantile edges, bin counts,
histograms and the Wasserstein distance all come from ``np.searchsorted`` on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MISSING = "(missing)"


@dataclass(frozen=True)
class DriftThresholds:
    """Decision thresholds of the drift statistics (the documented defaults)."""

    small_sample: int = 1000  # tests of significance while both sides have at most this many rows
    p_value: float = 0.05  # KS / chi-squared: drift when p < this
    wasserstein: float = 0.1  # normalized Wasserstein: drift when >= this
    jensenshannon: float = 0.1  # Jensen-Shannon distance: drift when >= this
    psi_warn: float = 0.1
    psi_act: float = 0.25
    psi_bins: int = 10
    psi_floor: float = 1e-4  # share given to an empty bin so the logarithm stays finite
    low_cardinality: int = 5  # numeric columns with at most this many distinct values are compared as categories

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Statistics (each also usable on its own; tests compare them with scipy)
# --------------------------------------------------------------------------------------------------

def population_stability_index(ref_counts, cur_counts, floor: float = 1e-4) -> float:
    """PSI = sum((c - r) * ln(c / r)) over bins of shares, each share floored at ``floor``."""
    r = np.asarray(ref_counts, dtype=np.float64)
    c = np.asarray(cur_counts, dtype=np.float64)
    r = np.maximum(r / max(r.sum(), 1.0), floor)
    c = np.maximum(c / max(c.sum(), 1.0), floor)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(sorted_ref: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's 1/bins .. (bins-1)/bins quantiles, duplicates removed.

    Read straight off the sorted array with numpy's default ("linear") interpolation, so the edges
    equal ``np.quantile(sorted_ref, q)`` without another selection pass over the data.
    """
    n = len(sorted_ref)
    if n == 0:
        return np.empty(0)
    pos = np.linspace(0.0, 1.0, bins + 1)[1:-1] * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    t = pos - lo
    a = sorted_ref[lo].astype(np.float64)
    b = sorted_ref[np.minimum(lo + 1, n - 1)].astype(np.float64)
    d = b - a
    return np.unique(np.where(t >= 0.5, b - d * (1 - t), a + d * t))  # numpy's _lerp, exact at both ends


def counts_in_bins(sorted_x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the bins (-inf, e0], (e0, e1], ..., (e_last, inf) of an already sorted array."""
    cum = np.searchsorted(sorted_x, edges, side="right")
    return np.diff(np.concatenate(([0], cum, [len(sorted_x)])))


def wasserstein_sorted(us: np.ndarray, vs: np.ndarray) -> float:
    """First Wasserstein distance between two sorted samples (scipy.stats.wasserstein_distance).

    The integral of |F_u - F_v| over the merged values. The merge needs one ``searchsorted`` and the
    empirical CDFs are running counts of which side each merged value came from (ties add zero width,
    so counting them in merge order is exact); the CDF difference is kept in integers. Equal sizes
    take the equivalent quantile form, the mean of |us[i] - vs[i]|.
    """
    n, m = len(us), len(vs)
    if n == 0 or m == 0:
        return float("nan")
    if n == m:  # equal sizes: the quantile functions pair up element by element
        return float(np.mean(np.abs(np.subtract(us, vs, dtype=np.float64))))
    pos = np.searchsorted(us, vs, side="right")
    pos += np.arange(m)
    from_v = np.zeros(n + m, dtype=bool)
    from_v[pos] = True
    merged = np.empty(n + m, dtype=np.result_type(us.dtype, vs.dtype))
    merged[pos] = vs
    merged[~from_v] = us
    # |F_u - F_v| * n * m after merged value k is |(k + 1) * m - cv * (n + m)|: exact in int64 below 9e18
    gap = np.arange(1, n + m, dtype=np.int64)
    gap *= m
    gap -= np.cumsum(from_v[:-1], dtype=np.int64) * (n + m)
    np.abs(gap, out=gap)
    widths = np.diff(merged).astype(np.float64, copy=False)
    return float(np.dot(gap.astype(np.float64), widths) / (float(n) * float(m)))


def ks_2sample(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy's exact/asymptotic choice)."""
    from scipy import stats

    res = stats.ks_2samp(ref, cur)
    return float(res.statistic), float(res.pvalue)


def chi2_homogeneity(ref_counts, cur_counts) -> tuple[float, float, int]:
    """Chi-squared test that two samples share category shares (2 x k table, no continuity correction).

    Categories empty on both sides are dropped. Returns ``(statistic, p_value, dof)``; with fewer than
    two categories there is nothing to test: ``(0.0, 1.0, 0)``.
    """
    from scipy import stats

    table = np.vstack([np.asarray(ref_counts, np.float64), np.asarray(cur_counts, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0, 0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return stat, float(stats.chi2.sf(stat, dof)), dof


def jensen_shannon(ref_counts, cur_counts) -> float:
    """Jensen-Shannon distance (natural log) between two count vectors over the same categories."""
    p = np.asarray(ref_counts, np.float64)
    q = np.asarray(cur_counts, np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(np.sqrt(max((kl_p + kl_q) / 2, 0.0)))


def psi_level(value: float, th: DriftThresholds) -> str:
    if not np.isfinite(value):
        return "n/a"
    return "act" if value >= th.psi_act else "warn" if value >= th.psi_warn else "ok"


# --------------------------------------------------------------------------------------------------
# One column, two samples
# --------------------------------------------------------------------------------------------------

def _compact(x: np.ndarray, std: float, large: bool) -> np.ndarray:
    """float32 for large samples when its rounding (2**-24 relative) stays below 1e-5 of the spread.

    Halves the sorting and merging work; the Wasserstein distance then moves by about 1e-7 relative,
    far below the 0.1 threshold it is compared with. Small samples keep float64 (p-values are exact).
    """
    if not large or x.dtype == np.float32 or len(x) == 0:
        return x
    scale = max(abs(float(x.min())), abs(float(x.max())))
    return x.astype(np.float32) if scale * 6e-8 <= 1e-5 * max(std, 1e-12) else x


def compare_numeric(ref: np.ndarray, cur: np.ndarray, th: DriftThresholds = DriftThresholds()) -> tuple[dict, dict]:
    """Drift result and plot histogram of a numeric column (NaN/inf = missing, kept out of the tests)."""
    r_nan, c_nan = ~np.isfinite(ref), ~np.isfinite(cur)
    rv = ref[~r_nan] if r_nan.any() else ref
    cv = cur[~c_nan] if c_nan.any() else cur
    if len(rv) == 0 or len(cv) == 0:
        return _empty_result("numeric", r_nan, c_nan), {}
    std = float(np.std(rv))
    small = min(len(rv), len(cv)) <= th.small_sample
    rs, cs = np.sort(_compact(rv, std, not small)), np.sort(_compact(cv, std, not small))
    distinct = _distinct_sorted(rs, th.low_cardinality)
    if distinct is not None:
        cur_distinct = _distinct_sorted(cs, th.low_cardinality)
        if cur_distinct is not None and len(np.union1d(distinct, cur_distinct)) <= th.low_cardinality:
            values = np.union1d(distinct, cur_distinct)
            rc = np.append(counts_in_bins(rs, values[:-1]), r_nan.sum())
            cc = np.append(counts_in_bins(cs, values[:-1]), c_nan.sum())
            labels = [f"{v:g}" for v in values] + [MISSING]
            return _compare_counts("numeric", labels, rc, cc, len(ref), len(cur), th)
    if small:
        stat, p = ks_2sample(rs, cs)
        res = {"kind": "numeric", "method": "ks", "statistic": stat, "p_value": p, "threshold": th.p_value, "rule": "p_value < threshold",
               "drift": bool(p < th.p_value)}
    else:
        dist = wasserstein_sorted(rs, cs) / max(std, 1e-3)  # the same floor on the std as Evidently
        res = {"kind": "numeric", "method": "wasserstein_norm", "statistic": dist, "p_value": None, "threshold": th.wasserstein,
               "rule": "statistic >= threshold", "drift": bool(dist >= th.wasserstein)}
    edges = quantile_edges(rs, th.psi_bins)
    rc = np.append(counts_in_bins(rs, edges), r_nan.sum())
    cc = np.append(counts_in_bins(cs, edges), c_nan.sum())
    psi = population_stability_index(rc, cc, th.psi_floor)
    lo = min(rs[int(0.001 * (len(rs) - 1))], cs[int(0.001 * (len(cs) - 1))])
    hi = max(rs[int(0.999 * (len(rs) - 1))], cs[int(0.999 * (len(cs) - 1))])
    hist_edges = np.linspace(float(lo), float(hi), 31) if hi > lo else np.array([lo - 0.5, hi + 0.5])
    inner = hist_edges[1:-1]
    hist = {"edges": hist_edges.tolist(),
            "reference": (counts_in_bins(rs, inner) / len(rs)).tolist(),
            "current": (counts_in_bins(cs, inner) / len(cs)).tolist()}
    res |= {
        "psi": psi, "psi_level": psi_level(psi, th), "new_categories": [], "vanished_categories": [],
        "missing": {"reference": float(r_nan.mean()), "current": float(c_nan.mean())},
        "mean": {"reference": float(np.mean(rs, dtype=np.float64)), "current": float(np.mean(cs, dtype=np.float64))},
        "out_of_range": float((np.searchsorted(cs, rs[0], "left") + len(cs) - np.searchsorted(cs, rs[-1], "right"))
                              / len(cs)),
    }
    return res, hist


def _distinct_sorted(s: np.ndarray, limit: int) -> np.ndarray | None:
    """Distinct values of a sorted array, or None as soon as there are more than ``limit``."""
    change = np.flatnonzero(s[1:] != s[:-1])
    if len(change) + 1 > limit:
        return None
    return s[np.concatenate(([0], change + 1))]


def category_counts(ref: pd.Series, cur: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts per category on both sides, over the union of categories (reference's first).

    Each side is factorized once; the distinct values alone are then normalised the way
    :func:`churnkit.data.to_categorical` types a column (text, stripped, blank = missing), so a
    million-row column costs one hash pass per side.
    """
    from churnkit.data import to_categorical

    sides = []
    for col in (ref, cur):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        counts = np.bincount(codes + 1, minlength=len(uniques) + 1)
        labels = to_categorical(pd.Series(np.asarray(uniques, dtype=object), dtype=object)).fillna(MISSING)
        per_label = pd.Series(counts[1:], index=labels.to_numpy(), dtype=np.int64).groupby(level=0, sort=False).sum()
        sides.append(per_label.add(pd.Series({MISSING: counts[0]}), fill_value=0).astype(np.int64))
    r, c = sides
    order = r.sort_values(ascending=False, kind="stable").index.tolist()
    order += [k for k in c.sort_values(ascending=False, kind="stable").index if k not in r.index]
    rc = r.reindex(order, fill_value=0).to_numpy()
    cc = c.reindex(order, fill_value=0).to_numpy()
    keep = (rc + cc) > 0
    return [str(k) for k, ok in zip(order, keep) if ok], rc[keep], cc[keep]


def compare_categorical(ref: pd.Series, cur: pd.Series, th: DriftThresholds = DriftThresholds()) -> tuple[dict, dict]:
    """Drift result and category shares of a categorical column; missing values are a category."""
    labels, rc, cc = category_counts(ref, cur)
    return _compare_counts("categorical", labels, rc, cc, len(ref), len(cur), th)


def _compare_counts(kind, labels, rc, cc, n_ref, n_cur, th) -> tuple[dict, dict]:
    rc, cc = np.asarray(rc), np.asarray(cc)
    keep = (rc + cc) > 0
    labels = [k for k, ok in zip(labels, keep) if ok]
    rc, cc = rc[keep], cc[keep]
    if rc.sum() == 0 or cc.sum() == 0:
        return _empty_result(kind, np.ones(n_ref, bool), np.ones(n_cur, bool)), {}
    if min(n_ref, n_cur) <= th.small_sample:
        stat, p, _ = chi2_homogeneity(rc, cc)
        res = {"kind": kind, "method": "chi2", "statistic": stat, "p_value": p, "threshold": th.p_value, "rule": "p_value < threshold",
               "drift": bool(p < th.p_value)}
    else:
        dist = jensen_shannon(rc, cc)
        res = {"kind": kind, "method": "jensenshannon", "statistic": dist, "p_value": None, "threshold": th.jensenshannon,
               "rule": "statistic >= threshold", "drift": bool(dist >= th.jensenshannon)}
    psi = population_stability_index(rc, cc, th.psi_floor)
    miss = labels.index(MISSING) if MISSING in labels else None
    res |= {
        "psi": psi, "psi_level": psi_level(psi, th),
        "new_categories": [k for k, a, b in zip(labels, rc, cc) if a == 0 and b > 0 and k != MISSING],
        "vanished_categories": [k for k, a, b in zip(labels, rc, cc) if a > 0 and b == 0 and k != MISSING],
        "missing": {"reference": 0.0 if miss is None else float(rc[miss] / rc.sum()),
                    "current": 0.0 if miss is None else float(cc[miss] / cc.sum())},
    }
    top = np.argsort(-(rc / rc.sum() + cc / cc.sum()), kind="stable")[:20]
    hist = {"categories": [labels[i] for i in top], "reference": (rc[top] / rc.sum()).tolist(),
            "current": (cc[top] / cc.sum()).tolist()}
    return res, hist


def _empty_result(kind: str, r_missing: np.ndarray, c_missing: np.ndarray) -> dict:
    """A column with no values on one side cannot be compared: reported, never counted as drift."""
    present = f"{int((~r_missing).sum())} reference and {int((~c_missing).sum())} current values present"
    return {"kind": kind, "method": "none", "statistic": float("nan"), "p_value": None, "threshold": float("nan"),
            "rule": f"not compared: {present}", "drift": False,
            "psi": float("nan"), "psi_level": "n/a", "new_categories": [], "vanished_categories": [],
            "missing": {"reference": float(r_missing.mean()) if len(r_missing) else 1.0,
                        "current": float(c_missing.mean()) if len(c_missing) else 1.0}}
