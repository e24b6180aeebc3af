"""Correlation statistics: tests, bootstrap intervals, partial and granulated Kendall, families.

The paper reports a single Pearson r over 38 heterogeneous runs; that number mixes optimisers and
architectures, so the table here also gives rank correlations, per-group correlations, a partial
correlation that removes optimiser/architecture effects and Jiang et al.'s granulated Kendall
coefficient, each with a bootstrap interval and a multiplicity-adjusted p-value.

Multiplicity: the paper's claim is tested by the 9 `headline` rows (mean sharpness against
test_all/seen/unseen, Pearson/Spearman/Kendall, all runs), Holm-adjusted among themselves
(`p_holm`); every other row is `exploratory` and gets a Benjamini-Hochberg q-value (`p_bh`) over
the exploratory rows of the same table. Adjusting the headline over thousands of exploratory rows
would hide it behind tests nobody set out to make.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ascsharp.core.io import require_columns

METHODS = ("pearson", "spearman", "kendall")
# The contract's columns (docs/design.md, `ascsharp paper-table`), then: the multiplicity
# family and its adjusted p-values, the groups a granulated Kendall row skipped, and why a
# statistic is NaN (empty when it is not).
CONTRACT_COLUMNS = [
    "group",
    "target",
    "measure",
    "method",
    "n",
    "statistic",
    "p_value",
    "ci_low",
    "ci_high",
]
TABLE_COLUMNS = [*CONTRACT_COLUMNS, "family", "p_holm", "p_bh", "n_skipped", "reason"]
# Accuracy on the whole test fold, on devices seen in training, on unseen devices.
PAPER_TARGETS = ("test_all", "seen", "unseen")
# The paper's claim: these rows (group `all`) are the confirmatory family.
HEADLINE_MEASURE = "mean_sharpness"
HEADLINE_TARGETS = PAPER_TARGETS
HEADLINE_METHODS = METHODS
# Fewer runs than this give no correlation (NaN statistic with a `reason`).
MIN_RUNS = 3
# Held fixed in every granulated Kendall group but never varied: seed noise is not a hyperparameter.
GRANULATED_FIXED = ("seed",)
GRANULATED_AXES = ("arch", "optimizer", "lr", "batch_size")

# Elements of the (resamples x n x n) sign tensors built at once for the Kendall bootstrap.
_KENDALL_CHUNK_ELEMENTS = 4_000_000


def _nan_result(n: int) -> dict[str, Any]:
    nan = float("nan")
    return {"n": n, "statistic": nan, "p_value": nan, "ci_low": nan, "ci_high": nan}


def _paired_finite(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} != {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown correlation method {method!r}; expected one of {METHODS}")


def _pearson_rows(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; NaN where a row is constant (the degenerate resamples)."""
    xc = xb - xb.mean(axis=1, keepdims=True)
    yc = yb - yb.mean(axis=1, keepdims=True)
    # Exact constancy test: centred sums of identical floats can be 1e-17 instead of 0.
    degenerate = (np.ptp(xb, axis=1) == 0) | (np.ptp(yb, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    r[degenerate] = np.nan
    return np.clip(r, -1.0, 1.0)


def _kendall_rows(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair from pairwise sign matrices, in memory-bounded chunks."""
    b, n = xb.shape
    out = np.empty(b)
    chunk = max(1, _KENDALL_CHUNK_ELEMENTS // max(n * n, 1))
    for start in range(0, b, chunk):
        xs, ys = xb[start : start + chunk], yb[start : start + chunk]
        sx = np.sign(xs[:, :, None] - xs[:, None, :]).astype(np.int8)
        sy = np.sign(ys[:, :, None] - ys[:, None, :]).astype(np.int8)
        # Each unordered pair appears twice in the full matrices; the factor cancels in tau-b.
        s = (sx.astype(np.int32) * sy).sum(axis=(1, 2))
        nx = np.count_nonzero(sx, axis=(1, 2)).astype(float)
        ny = np.count_nonzero(sy, axis=(1, 2)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + chunk] = np.where((nx > 0) & (ny > 0), s / np.sqrt(nx * ny), np.nan)
    return out


def _statistic_rows(xb: np.ndarray, yb: np.ndarray, method: str) -> np.ndarray:
    """The correlation of every resample (row) at once; scipy per row would dominate run time."""
    if method == "pearson":
        return _pearson_rows(xb, yb)
    if method == "spearman":
        rx = stats.rankdata(xb, axis=1)
        ry = stats.rankdata(yb, axis=1)
        r = _pearson_rows(rx, ry)
        r[(np.ptp(xb, axis=1) == 0) | (np.ptp(yb, axis=1) == 0)] = np.nan
        return r
    if method == "kendall":
        return _kendall_rows(xb, yb)
    _check_method(method)
    raise AssertionError("unreachable")


def _percentile_ci(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)


# scipy's Spearman p-value is a t approximation, far off for a handful of runs (n = 4 and ρ = 1
# give p = 0, where the exact value is 1/12). Up to this many runs the p-value counts all n!
# pairings instead (9! = 362,880 rows: well under a second).
EXACT_SPEARMAN_MAX_N = 9


@functools.lru_cache(maxsize=64)
def _spearman_null(ranks_x: tuple[float, ...], ranks_y: tuple[float, ...]) -> np.ndarray:
    """ρ over all n! pairings, sorted. It depends only on the two multisets of (mid)ranks, so
    the many tests of one table share a handful of these."""
    n = len(ranks_x)
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    rx, ry = np.asarray(ranks_x), np.asarray(ranks_y)
    return np.sort(_pearson_rows(rx[perms], np.broadcast_to(ry, perms.shape)))


def _exact_spearman_p(x: np.ndarray, y: np.ndarray, rho: float) -> float:
    """Two-sided exact permutation p-value of Spearman's ρ, defined as scipy's permutation_test
    does: twice the smaller tail, at most 1 (ties are midranks)."""
    null = _spearman_null(tuple(np.sort(stats.rankdata(x))), tuple(np.sort(stats.rankdata(y))))
    tol = 1e-12 * max(1.0, abs(rho))  # pairings that reach ρ up to rounding count as reaching
    greater = (null.size - np.searchsorted(null, rho - tol, side="left")) / null.size
    less = np.searchsorted(null, rho + tol, side="right") / null.size
    return float(min(1.0, 2 * min(greater, less)))


def _scipy_test(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    with warnings.catch_warnings():
        # Constant input: scipy warns and returns NaN, which is what the table should show.
        warnings.simplefilter("ignore")
        if method == "pearson":
            res = stats.pearsonr(x, y)
        elif method == "spearman":
            res = stats.spearmanr(x, y)
            if len(x) <= EXACT_SPEARMAN_MAX_N and math.isfinite(res.statistic):
                return float(res.statistic), _exact_spearman_p(x, y, res.statistic)
        else:
            res = stats.kendalltau(x, y, variant="b")
    return float(res.statistic), float(res.pvalue)


def correlate(x: Any, y: Any, method: str, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Correlation, two-sided p-value (scipy; exact for Spearman on up to 9 pairs) and a 95 %
    percentile bootstrap interval.

    Pairs are resampled together; resamples in which x or y is constant have no correlation and
    are skipped rather than counted as zero. Fewer than 3 finite pairs give NaNs, not an error,
    because small per-group subsets are expected in a sparse hyperparameter grid.
    """
    _check_method(method)
    x, y = _paired_finite(x, y)
    n = int(x.size)
    if n < 3:
        return _nan_result(n)
    statistic, p_value = _scipy_test(x, y, method)
    ci_low = ci_high = float("nan")
    if n_boot > 0 and math.isfinite(statistic):
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        ci_low, ci_high = _percentile_ci(_statistic_rows(x[idx], y[idx], method))
    return {
        "n": n,
        "statistic": statistic,
        "p_value": p_value,
        "ci_low": ci_low,
        "ci_high": ci_high,
    }


def _design(df: pd.DataFrame, covariates: Sequence[str]) -> np.ndarray:
    """Intercept plus drop-first one-hot columns; every covariate is treated as categorical."""
    cols = [np.ones(len(df))]
    for cov in covariates:
        levels = sorted(df[cov].astype(str).unique())
        values = df[cov].astype(str).to_numpy()
        cols.extend((values == level).astype(float) for level in levels[1:])
    return np.column_stack(cols)


def _residual_rows(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Residuals of v on z for a batch of designs (B, n, k); pinv copes with absent levels."""
    beta = np.linalg.pinv(z) @ v[..., None]
    return v - (z @ beta)[..., 0]


def _partial_rows(z: np.ndarray, xb: np.ndarray, yb: np.ndarray, rank: bool) -> np.ndarray:
    """Residual correlation per resample; ranks are taken inside each resample for Spearman."""
    if rank:
        xb, yb = stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)
    rx, ry = _residual_rows(z, xb), _residual_rows(z, yb)
    r = _pearson_rows(rx, ry)
    # Residuals that are zero up to rounding (the cells explain x or y fully) carry no signal.
    scale_x = np.maximum((xb**2).sum(axis=1), np.finfo(float).tiny)
    scale_y = np.maximum((yb**2).sum(axis=1), np.finfo(float).tiny)
    tiny = ((rx**2).sum(axis=1) <= 1e-20 * scale_x) | ((ry**2).sum(axis=1) <= 1e-20 * scale_y)
    r[tiny] = np.nan
    return r


def partial_correlation(
    df: pd.DataFrame,
    x: str,
    y: str,
    covariates: list[str],
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Correlation of x and y after removing the mean of each covariate cell (one-hot regression).

    This asks whether sharpness predicts accuracy *within* optimiser/architecture, since
    differences between optimisers alone can produce a pooled correlation. Spearman ranks x and
    y first. The p-value is the t test with n - 2 - k degrees of freedom (k covariate columns).
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"partial correlation supports pearson or spearman, not {method!r}")
    require_columns(df, [x, y, *covariates], "data frame")
    d = df[[x, y, *covariates]].copy()
    d[x] = pd.to_numeric(d[x], errors="coerce")
    d[y] = pd.to_numeric(d[y], errors="coerce")
    d = d.dropna()
    n = len(d)
    if n < 3:
        return _nan_result(n)
    xv, yv = d[x].to_numpy(float), d[y].to_numpy(float)
    rank = method == "spearman"
    z = _design(d, covariates)
    k = int(np.linalg.matrix_rank(z)) - 1
    dof = n - 2 - k
    r = float(_partial_rows(z[None], xv[None], yv[None], rank)[0])
    if dof < 1 or not math.isfinite(r):
        return {**_nan_result(n), "statistic": r}
    t = r * math.sqrt(dof / (1.0 - r * r)) if abs(r) < 1 else math.copysign(math.inf, r)
    p_value = float(2 * stats.t.sf(abs(t), dof))
    ci_low = ci_high = float("nan")
    if n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        # Resamples whose residuals vanish (fully explained by their cells) come out NaN: skipped.
        ci_low, ci_high = _percentile_ci(_partial_rows(z[idx], xv[idx], yv[idx], rank))
    return {"n": n, "statistic": r, "p_value": p_value, "ci_low": ci_low, "ci_high": ci_high}


def granulated_kendall(
    df: pd.DataFrame,
    measure: str,
    target: str,
    axes: list[str],
    fixed: Sequence[str] = GRANULATED_FIXED,
) -> dict[str, Any]:
    """Jiang et al. (2020) granulated Kendall coefficient Psi.

    For each axis, Kendall tau is computed within every group of runs that differ *only* in that
    axis: every other axis and every `fixed` column (the seed) is held constant, so a tau never
    mixes seed noise into the effect of the hyperparameter. Taus are averaged over groups; groups
    with fewer than 2 distinct values of the axis, or an undefined tau, are skipped and counted
    in `n_skipped`. Psi is the mean over axes that have at least one usable group.
    """
    if not axes:
        raise ValueError("granulated Kendall needs at least one axis")
    held = [c for c in fixed if c not in axes]
    require_columns(df, [measure, target, *axes, *held], "data frame")
    d = df[[measure, target, *axes, *held]].copy()
    d[measure] = pd.to_numeric(d[measure], errors="coerce")
    d[target] = pd.to_numeric(d[target], errors="coerce")
    d = d.dropna()
    per_axis: dict[str, float] = {}
    n_groups: dict[str, int] = {}
    n_skipped: dict[str, int] = {}
    for axis in axes:
        others = [a for a in axes if a != axis] + held
        groups = d.groupby(others, sort=True) if others else [((), d)]
        taus, skipped = [], 0
        for _, g in groups:
            tau = float("nan")
            if g[axis].nunique() >= 2:
                x, y = g[measure].to_numpy(float), g[target].to_numpy(float)
                tau, _p = _scipy_test(x, y, "kendall")
            if math.isfinite(tau):
                taus.append(tau)
            else:
                skipped += 1
        per_axis[axis] = float(np.mean(taus)) if taus else float("nan")
        n_groups[axis] = len(taus)
        n_skipped[axis] = skipped
    defined = [v for v in per_axis.values() if math.isfinite(v)]
    psi = float(np.mean(defined)) if defined else float("nan")
    return {
        "psi": psi,
        "per_axis": per_axis,
        "n_groups": n_groups,
        "n_skipped": n_skipped,
        "n": len(d),
    }


def _adjust_sorted(p_values: Any, adjust) -> np.ndarray:
    """Apply `adjust(sorted finite p, m)` to the finite p-values; NaNs stay NaN, not tests."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size:
        order = finite[np.argsort(p[finite], kind="stable")]
        out[order] = adjust(p[order], finite.size)
    return out


def holm(p_values: Any) -> np.ndarray:
    """Holm step-down adjusted p-values; NaNs stay NaN and do not count as tests."""
    return _adjust_sorted(
        p_values,
        lambda p, m: np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p)),
    )


def benjamini_hochberg(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values); NaNs stay NaN, not tests.

    Controls the false discovery rate rather than the family-wise error, which suits the
    thousands of exploratory rows (every variant, device, city, group) of a run's table.
    """
    return _adjust_sorted(
        p_values,
        lambda p, m: np.minimum(
            1.0, np.minimum.accumulate((p * m / np.arange(1, m + 1))[::-1])[::-1]
        ),
    )


def adjust_p_values(table: pd.DataFrame) -> pd.DataFrame:
    """Add `family`, `p_holm` (headline rows) and `p_bh` (exploratory rows) to one table.

    The headline family is fixed in advance (HEADLINE_*), not chosen from the results; rows
    without a p-value (granulated Kendall, too few runs) belong to a family but are no test.
    """
    headline = (
        (table["group"] == "all")
        & (table["measure"] == HEADLINE_MEASURE)
        & table["target"].isin(HEADLINE_TARGETS)
        & table["method"].isin(HEADLINE_METHODS)
    ).to_numpy()
    p = table["p_value"].to_numpy(float)
    out = table.copy()
    out["family"] = np.where(headline, "headline", "exploratory")
    out["p_holm"] = np.nan
    out.loc[headline, "p_holm"] = holm(p[headline])
    out["p_bh"] = np.nan
    out.loc[~headline, "p_bh"] = benjamini_hochberg(p[~headline])
    return out


def _reason(n: int, statistic: float, p_value: float, method: str) -> str:
    """Why a row's statistic (or p-value) is missing, so a NaN in the table is never a mystery."""
    if n < MIN_RUNS:
        return f"n={n} < {MIN_RUNS} runs"
    if not math.isfinite(statistic):
        return "undefined: constant measure or target"
    if method == "partial_pearson" and not math.isfinite(p_value):
        return "no residual degrees of freedom after the covariates"
    return ""


def _granulated_rows(
    df: pd.DataFrame, measure: str, target: str, axes: list[str], fixed: Sequence[str]
) -> list[dict[str, Any]]:
    """Psi (group `all`, n runs) and one `axis=<name>` row per axis (n = groups used).

    Below MIN_RUNS runs every row is NaN like the other methods', although a single pair of runs
    would give a tau of +-1: one pair is no evidence either way.
    """
    base = {"target": target, "measure": measure, "method": "granulated_kendall"}
    if len(df) < MIN_RUNS:
        reason = f"n={len(df)} < {MIN_RUNS} runs"
        rows = [{**_nan_result(len(df)), **base, "group": "all", "reason": reason}]
        for axis in axes:
            rows.append({**_nan_result(0), **base, "group": f"axis={axis}", "reason": reason})
        return rows
    g = granulated_kendall(df, measure, target, axes, fixed)
    no_axis = "" if math.isfinite(g["psi"]) else "no group varies a single axis"
    rows = [{**_nan_result(g["n"]), **base, "group": "all", "statistic": g["psi"],
             "reason": no_axis}]  # fmt: skip
    for axis in axes:
        tau = g["per_axis"][axis]
        reason = "" if math.isfinite(tau) else f"no group varies only {axis}"
        counts = {"n": g["n_groups"][axis], "n_skipped": g["n_skipped"][axis]}
        rows.append({**_nan_result(0), **base, **counts, "group": f"axis={axis}",
                     "statistic": tau, "reason": reason})  # fmt: skip
    return rows


def correlation_table(
    df: pd.DataFrame,
    measures: list[str],
    targets: list[str],
    *,
    group_columns: Sequence[str] = ("optimizer", "arch"),
    methods: Sequence[str] = METHODS,
    n_boot: int = 2000,
    seed: int = 0,
    partial: bool = True,
    granulated_axes: Sequence[str] | None = None,
    granulated_fixed: Sequence[str] = GRANULATED_FIXED,
) -> pd.DataFrame:
    """Every measure x target correlation, pooled (`all`) and within each optimiser/arch value.

    With `partial`, adds `partial_pearson` rows (group `all`, the group columns as categorical
    covariates); with `granulated_axes`, adds `granulated_kendall` rows: Psi in group `all` and
    each axis's mean tau in group `axis=<name>` (n = groups used, `n_skipped` = groups skipped;
    p and CI NaN). All rows use the same bootstrap seed, so rows with the same runs share
    resamples. p-values are adjusted per family by `adjust_p_values`.
    """
    for m in methods:
        _check_method(m)
    require_columns(df, [*measures, *targets, *group_columns], "data frame")
    groups: list[tuple[str, pd.DataFrame]] = [("all", df)]
    for col in group_columns:
        for value in sorted(df[col].dropna().astype(str).unique()):
            groups.append((f"{col}={value}", df[df[col].astype(str) == value]))
    rows = []
    for group, sub in groups:
        for target in targets:
            for measure in measures:
                for method in methods:
                    res = correlate(sub[measure], sub[target], method, n_boot=n_boot, seed=seed)
                    rows.append({"group": group, "target": target, "measure": measure,
                                 "method": method, **res})  # fmt: skip
    covariates = [c for c in group_columns if df[c].nunique() > 1]
    for target in targets:
        for measure in measures:
            if partial:
                res = partial_correlation(
                    df, measure, target, covariates, "pearson", n_boot=n_boot, seed=seed
                )
                rows.append({"group": "all", "target": target, "measure": measure,
                             "method": "partial_pearson", **res})  # fmt: skip
            if granulated_axes:
                axes = list(granulated_axes)
                rows.extend(_granulated_rows(df, measure, target, axes, granulated_fixed))
    table = pd.DataFrame(rows, columns=[*CONTRACT_COLUMNS, "n_skipped", "reason"])
    table["n"] = table["n"].astype(int)
    table["n_skipped"] = table["n_skipped"].astype("Int64")
    # Only granulated rows bring a reason of their own: without them the column is all-NaN
    # floats, and pandas refuses strings in it.
    table["reason"] = table["reason"].astype(object)
    missing = table["reason"].isna()
    table.loc[missing, "reason"] = [
        _reason(r.n, r.statistic, r.p_value, r.method) for r in table[missing].itertuples()
    ]
    return adjust_p_values(table)[TABLE_COLUMNS]
