"""Statistics and paper-table reproduction, checked against scipy, closed forms and the paper."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ascsharp.analysis import correlation, figures, published
from ascsharp.analysis import summary as run_summary
from ascsharp.data.meta import DEVICES

# The published table, shipped with the workflow (an unedited copy of the authors' release).
PAPER_CSV = Path(__file__).resolve().parents[2] / "workflow/reference/paper_results_icassp2024.csv"


def _raw_paper_columns(*names: str) -> dict[str, np.ndarray]:
    """Read columns straight from the CSV with the csv module, independently of published.py."""
    with PAPER_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[float]] = {n: [] for n in names}
    for row in rows:
        try:
            float(row["Mean Sharpness"])
        except ValueError:
            continue
        for n in names:
            out[n].append(float(row[n]))
    return {n: np.array(v) for n, v in out.items()}


# --- correlate ---------------------------------------------------------------------------------


@pytest.fixture
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    return x, 0.6 * x + rng.normal(size=30)


@pytest.mark.parametrize(
    "method, ref",
    [
        ("pearson", stats.pearsonr),
        ("spearman", stats.spearmanr),
        ("kendall", lambda a, b: stats.kendalltau(a, b, variant="b")),
    ],
)
def test_correlate_matches_scipy_and_ci_brackets_estimate(xy, method, ref):
    x, y = xy
    res = correlation.correlate(x, y, method, n_boot=500, seed=3)
    expected = ref(x, y)
    assert res["n"] == 30
    assert res["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert res["p_value"] == pytest.approx(expected.pvalue, rel=1e-10)
    assert -1 <= res["ci_low"] < res["statistic"] < res["ci_high"] <= 1
    again = correlation.correlate(x, y, method, n_boot=500, seed=3)
    assert (again["ci_low"], again["ci_high"]) == (res["ci_low"], res["ci_high"])
    other = correlation.correlate(x, y, method, n_boot=500, seed=4)
    assert (other["ci_low"], other["ci_high"]) != (res["ci_low"], res["ci_high"])


@pytest.mark.parametrize("method", [*correlation.METHODS, "partial_pearson"])
def test_bootstrap_resamples_pairs_not_coordinates(method):
    # r ~ 0.95: resampling x and y independently would centre the interval near 0.
    rng = np.random.default_rng(11)
    x = rng.normal(size=40)
    y = x + 0.33 * rng.normal(size=40)
    assert stats.pearsonr(x, y).statistic > 0.93
    if method == "partial_pearson":
        df = pd.DataFrame({"x": x, "y": y})
        res = correlation.partial_correlation(df, "x", "y", [], n_boot=1000, seed=0)
    else:
        res = correlation.correlate(x, y, method, n_boot=1000, seed=0)
    floor = 0.65 if method == "kendall" else 0.85
    assert floor < res["ci_low"] < res["statistic"] < res["ci_high"]
    assert res["ci_high"] - res["ci_low"] < 0.2


@pytest.mark.parametrize("method", correlation.METHODS)
def test_vectorised_bootstrap_statistics_equal_scipy_per_resample(method, monkeypatch):
    # Integer data make ties, and resampling makes duplicated pairs: tau-b must handle both.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, size=12).astype(float)
    y = (x + rng.integers(0, 3, size=12)).astype(float)
    idx = rng.integers(0, 12, size=(40, 12))
    # A tiny chunk forces the Kendall path through several memory-bounded chunks.
    monkeypatch.setattr(correlation, "_KENDALL_CHUNK_ELEMENTS", 3 * 144)
    got = correlation._statistic_rows(x[idx], y[idx], method)
    scipy_fn = {
        "pearson": stats.pearsonr,
        "spearman": stats.spearmanr,
        "kendall": lambda a, b: stats.kendalltau(a, b, variant="b"),
    }[method]
    expected = [scipy_fn(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize(("n", "ties"), [(4, False), (6, True), (8, False), (9, True)])
def test_spearman_p_value_of_few_runs_is_the_exact_permutation_p(n, ties):
    """scipy's t approximation is far off for a handful of runs (a perfect ρ on 4 runs gets
    p = 0): up to 9 runs the p-value must be scipy's exact permutation test."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    if ties:
        x, y = np.round(x), np.round(y)

    def rho(a, axis=-1):
        """Spearman's ρ of each row of `a` with y: Pearson's r of their (mid)ranks, vectorised
        (scipy's spearmanr, called once per pairing, took minutes for 9! pairings)."""
        return stats.pearsonr(stats.rankdata(a, axis=axis), stats.rankdata(y), axis=axis).statistic

    assert rho(x) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-15)
    exact = stats.permutation_test(
        (x,), rho, permutation_type="pairings", alternative="two-sided",
        n_resamples=math.factorial(n), vectorized=True,
    )  # fmt: skip
    got = correlation.correlate(x, y, "spearman", n_boot=0)
    assert got["p_value"] == pytest.approx(exact.pvalue, rel=1e-12)
    perfect = correlation.correlate(np.arange(4.0), np.arange(4.0) ** 2, "spearman", n_boot=0)
    assert perfect["statistic"] == 1 and perfect["p_value"] == pytest.approx(1 / 12)


@pytest.mark.parametrize("method", correlation.METHODS)
def test_degenerate_resamples_are_nan_and_skipped(method):
    rows = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    got = correlation._statistic_rows(rows, np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 3.0]]), method)
    assert np.isnan(got).all()
    # With x = [0, 0, 1] about a third of the resamples are constant; the CI still exists.
    res = correlation.correlate([0, 0, 1], [0.1, 0.3, 0.9], method, n_boot=300, seed=0)
    assert math.isfinite(res["ci_low"]) and math.isfinite(res["ci_high"])


def test_correlate_nan_handling():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.nan, 7.0, 5.0])
    res = correlation.correlate(x, y, "pearson", n_boot=100)
    assert res["n"] == 4
    assert res["statistic"] == pytest.approx(stats.pearsonr([1, 2, 5, 6], [2, 1, 7, 5]).statistic)
    small = correlation.correlate([1.0, np.nan, 2.0], [1.0, 2.0, 3.0], "kendall")
    assert small["n"] == 2
    assert all(math.isnan(small[k]) for k in ("statistic", "p_value", "ci_low", "ci_high"))
    const = correlation.correlate([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "spearman")
    assert const["n"] == 4 and math.isnan(const["statistic"]) and math.isnan(const["ci_low"])
    with pytest.raises(ValueError, match="'cosine'"):
        correlation.correlate(x, y, "cosine")


# --- partial correlation, granulated Kendall, Holm -------------------------------------------


def _grouped_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    opt = rng.choice(["adam", "sgd", "kfac"], size=n)
    arch = rng.choice(["cnn10", "cnn14"], size=n)
    shift = pd.Series(opt).map({"adam": 0.0, "sgd": 2.0, "kfac": -1.0}).to_numpy()
    shift = shift + np.where(arch == "cnn14", 1.5, 0.0)
    x = shift + rng.normal(size=n)
    y = 2.0 * shift + 0.4 * x + rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": y, "optimizer": opt, "arch": arch})


def test_partial_correlation_equals_precision_matrix_and_regression_t_test():
    df = _grouped_frame()
    res = correlation.partial_correlation(df, "x", "y", ["optimizer", "arch"], n_boot=300)
    dummies = pd.get_dummies(df[["optimizer", "arch"]], drop_first=True).to_numpy(float)
    # Partial correlation from the precision matrix of (x, y, covariates).
    prec = np.linalg.inv(np.cov(np.column_stack([df["x"], df["y"], dummies]), rowvar=False))
    expected = -prec[0, 1] / math.sqrt(prec[0, 0] * prec[1, 1])
    assert res["statistic"] == pytest.approx(expected, abs=1e-10)
    # Its p-value is the t test of x's coefficient in y ~ 1 + x + covariates (Frisch-Waugh-Lovell).
    design = np.column_stack([np.ones(len(df)), df["x"], dummies])
    beta, rss, *_ = np.linalg.lstsq(design, df["y"].to_numpy(), rcond=None)
    dof = len(df) - design.shape[1]
    se = math.sqrt(rss[0] / dof * np.linalg.inv(design.T @ design)[1, 1])
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(abs(beta[1] / se), dof), rel=1e-8)
    assert res["ci_low"] < res["statistic"] < res["ci_high"]
    # The pooled correlation is inflated by the group shifts; the partial one is not.
    assert stats.pearsonr(df["x"], df["y"]).statistic > res["statistic"] + 0.2


def test_partial_correlation_without_covariates_is_pearson_and_spearman_uses_ranks():
    df = _grouped_frame(seed=2)
    plain = correlation.partial_correlation(df, "x", "y", [], n_boot=0)
    ref = stats.pearsonr(df["x"], df["y"])
    assert plain["statistic"] == pytest.approx(ref.statistic)
    assert plain["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    ranked = correlation.partial_correlation(df, "x", "y", [], "spearman", n_boot=0)
    assert ranked["statistic"] == pytest.approx(stats.spearmanr(df["x"], df["y"]).statistic)


def test_granulated_kendall_on_hand_made_grid():
    rows = [
        # a, b, target; measure = a + 10 b
        (1, 1, 0.10),
        (2, 1, 0.20),
        (3, 1, 0.30),  # b = 1: target rises with a -> tau = 1
        (1, 2, 0.05),
        (2, 2, 0.25),
        (3, 2, 0.15),  # b = 2: 2 concordant, 1 discordant pair -> tau = 1/3
        (1, 3, 0.01),  # b = 3 has one value of a: skipped for axis a
    ]
    df = pd.DataFrame(rows, columns=["a", "b", "target"])
    df["measure"] = df["a"] + 10 * df["b"]
    df["seed"] = 0
    res = correlation.granulated_kendall(df, "measure", "target", ["a", "b"])
    # Axis b: a = 1 -> tau = -1 (three points), a = 2 -> +1, a = 3 -> -1.
    assert res["per_axis"]["a"] == pytest.approx(2 / 3)
    assert res["per_axis"]["b"] == pytest.approx(-1 / 3)
    assert res["psi"] == pytest.approx(1 / 6)
    assert res["n_groups"] == {"a": 2, "b": 3}
    assert res["n_skipped"] == {"a": 1, "b": 0}


def test_granulated_kendall_skips_undefined_groups():
    df = pd.DataFrame(
        {"a": [1, 2, 1, 2], "b": [1, 1, 2, 2], "m": [5.0, 5.0, 1.0, 2.0], "t": [1.0, 2.0, 3.0, 4.0]}
    )
    df["seed"] = 42
    res = correlation.granulated_kendall(df, "m", "t", ["a", "b"])
    # b = 1 has a constant measure (tau undefined): only b = 2 counts for axis a.
    assert res["per_axis"]["a"] == pytest.approx(1.0)
    assert (res["n_groups"]["a"], res["n_skipped"]["a"]) == (1, 1)
    assert res["per_axis"]["b"] == pytest.approx(-1.0)  # a = 1 and a = 2: both discordant
    with pytest.raises(ValueError, match="'seed'"):
        correlation.granulated_kendall(df.drop(columns="seed"), "m", "t", ["a", "b"])


def test_granulated_kendall_holds_the_seed_fixed():
    # Two lr x two batch sizes x two seeds. Within a seed, a higher lr gives a sharper and more
    # accurate model; seed 1 is sharper but less accurate overall. Groups that let the seed vary
    # see the seed offset (the old bug); groups of one seed see the hyperparameter only.
    rows = [
        # lr, batch_size, seed, measure, target
        (1, 16, 0, 1.0, 0.60),
        (2, 16, 0, 2.0, 0.65),
        (1, 32, 0, 1.5, 0.62),
        (2, 32, 0, 1.8, 0.66),
        (1, 16, 1, 5.0, 0.40),
        (2, 16, 1, 6.0, 0.45),
        (1, 32, 1, 5.5, 0.42),
        (2, 32, 1, 5.8, 0.46),
    ]
    df = pd.DataFrame(rows, columns=["lr", "batch_size", "seed", "m", "t"])
    res = correlation.granulated_kendall(df, "m", "t", ["lr", "batch_size"])

    def mean_tau(groups: list[list[int]]) -> float:
        d = df.to_numpy(float)
        return float(np.mean([stats.kendalltau(d[g, 3], d[g, 4]).statistic for g in groups]))

    # Groups by hand (row indices): lr varies in (batch_size, seed), batch_size in (lr, seed).
    lr_tau = mean_tau([[0, 1], [2, 3], [4, 5], [6, 7]])
    bs_tau = mean_tau([[0, 2], [1, 3], [4, 6], [5, 7]])
    assert (lr_tau, bs_tau) == pytest.approx((1.0, 0.0))
    assert res["per_axis"] == pytest.approx({"lr": lr_tau, "batch_size": bs_tau})
    assert res["n_groups"] == {"lr": 4, "batch_size": 4}
    assert res["psi"] == pytest.approx(0.5)
    # Letting the seed vary inside a group (grouping by the other axis only) answers otherwise.
    seed_noise = np.mean(
        [mean_tau([[0, 1, 4, 5], [2, 3, 6, 7]]), mean_tau([[0, 2, 4, 6], [1, 3, 5, 7]])]
    )
    assert seed_noise == pytest.approx(-0.5)  # lr: -1/3; batch_size: mean(-1/3, -1)
    without_seed = correlation.granulated_kendall(df, "m", "t", ["lr", "batch_size"], fixed=())
    assert without_seed["psi"] == pytest.approx(seed_noise)


def test_granulated_kendall_on_the_published_table():
    df = published.read_paper_table(PAPER_CSV)
    axes = ["arch", "optimizer", "lr", "batch_size"]
    psi = {
        t: correlation.granulated_kendall(df, "mean_sharpness", t, axes)
        for t in correlation.PAPER_TARGETS
    }
    # The seed-fixed groups: Psi is near zero, not the +0.158 that seed-pooled groups gave.
    assert psi["test_all"]["psi"] == pytest.approx(-0.03, abs=0.01)
    assert psi["unseen"]["psi"] == pytest.approx(0.09, abs=0.01)
    # 38 runs, each configuration at seeds 42 and 43; pairs differing in one axis per seed.
    assert psi["test_all"]["n_groups"] == {"arch": 12, "optimizer": 12, "lr": 14, "batch_size": 16}
    assert psi["test_all"]["n_skipped"] == {"arch": 14, "optimizer": 6, "lr": 8, "batch_size": 6}
    assert psi["test_all"]["per_axis"]["batch_size"] == pytest.approx(-0.75)


def test_holm_by_hand():
    got = correlation.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then made monotone.
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, np.nan, 0.5])


def test_benjamini_hochberg_by_hand_and_against_scipy():
    # Sorted 0.01, 0.02, 0.03, 0.5 times 4/1, 4/2, 4/3, 4/4, then made monotone from the top.
    got = correlation.benjamini_hochberg([0.03, 0.01, np.nan, 0.5, 0.02])
    np.testing.assert_allclose(got, [0.04, 0.04, np.nan, 0.5, 0.04])
    p = np.random.default_rng(5).uniform(size=50) ** 3
    np.testing.assert_allclose(correlation.benjamini_hochberg(p), stats.false_discovery_control(p))


def _table_row(group: str, target: str, measure: str, method: str, p: float) -> dict:
    return {"group": group, "target": target, "measure": measure, "method": method, "p_value": p}


def test_headline_family_is_holm_adjusted_alone_and_the_rest_by_bh():
    rows = [
        _table_row("all", "test_all", "mean_sharpness", "pearson", 0.010),
        _table_row("all", "seen", "mean_sharpness", "spearman", 0.040),
        _table_row("all", "unseen", "mean_sharpness", "kendall", 0.002),
        _table_row("all", "test_all", "mean_sharpness", "pearson", np.nan),
        # Exploratory: another group, measure, target, or method.
        _table_row("optimizer=sgd", "test_all", "mean_sharpness", "pearson", 0.001),
        _table_row("all", "test_all", "max_sharpness", "pearson", 0.020),
        _table_row("all", "acc_s4", "mean_sharpness", "pearson", 0.030),
        _table_row("all", "test_all", "mean_sharpness", "partial_pearson", 0.040),
        _table_row("all", "test_all", "mean_sharpness", "granulated_kendall", np.nan),
    ]
    out = correlation.adjust_p_values(pd.DataFrame(rows))
    assert list(out["family"]) == ["headline"] * 4 + ["exploratory"] * 5
    # Holm over the three finite headline p-values: 0.002 x 3, 0.010 x 2, 0.040 x 1.
    np.testing.assert_allclose(out["p_holm"], [0.020, 0.040, 0.006] + [np.nan] * 6)
    # BH over the four finite exploratory p-values 0.001, 0.02, 0.03, 0.04 (m = 4).
    np.testing.assert_allclose(out["p_bh"], [np.nan] * 4 + [0.004, 0.04, 0.04, 0.04, np.nan])


# --- correlation table ---------------------------------------------------------------------------


def test_correlation_table_columns_groups_and_extra_rows():
    df = _grouped_frame(n=30)
    df = df.rename(columns={"x": "sharp", "y": "test_all"})
    df["seen"] = df["test_all"] + 0.1
    df["lr"] = np.tile([1e-3, 1e-4], 15)
    df["seed"] = np.repeat([42, 43, 44], 10)
    table = correlation.correlation_table(
        df, ["sharp"], ["test_all", "seen"], n_boot=50, granulated_axes=["optimizer", "lr"]
    )
    assert list(table.columns) == [
        "group",
        "target",
        "measure",
        "method",
        "n",
        "statistic",
        "p_value",
        "ci_low",
        "ci_high",
        "family",
        "p_holm",
        "p_bh",
        "n_skipped",
        "reason",
    ]
    basic = table[table["method"].isin(correlation.METHODS)]
    assert list(dict.fromkeys(basic["group"])) == [
        "all",
        "optimizer=adam",
        "optimizer=kfac",
        "optimizer=sgd",
        "arch=cnn10",
        "arch=cnn14",
    ]
    assert len(basic) == 6 * 2 * 3
    for group, sub in basic.groupby("group"):
        expected_n = (
            len(df)
            if group == "all"
            else (df[group.split("=")[0]] == group[group.index("=") + 1 :]).sum()
        )
        assert (sub["n"] == expected_n).all()
    row = basic[
        (basic.group == "optimizer=sgd") & (basic.target == "seen") & (basic.method == "kendall")
    ]
    sgd = df[df.optimizer == "sgd"]
    assert row["statistic"].item() == pytest.approx(
        stats.kendalltau(sgd["sharp"], sgd["seen"]).statistic
    )
    partial = table[table.method == "partial_pearson"]
    assert set(partial.group) == {"all"} and len(partial) == 2
    ref = correlation.partial_correlation(df, "sharp", "test_all", ["optimizer", "arch"], n_boot=0)
    assert partial[partial.target == "test_all"]["statistic"].item() == pytest.approx(
        ref["statistic"]
    )
    gran = table[table.method == "granulated_kendall"]
    # Per target: Psi (group all, n runs) and one row per axis (n groups used, n_skipped).
    assert list(gran["group"]) == ["all", "axis=optimizer", "axis=lr"] * 2
    assert gran["p_value"].isna().all() and gran["ci_low"].isna().all()
    ref = correlation.granulated_kendall(df, "sharp", "seen", ["optimizer", "lr"])
    seen = gran[gran.target == "seen"].set_index("group")
    assert seen.loc["all", "statistic"] == pytest.approx(ref["psi"])
    assert seen.loc["all", "n"] == len(df) and pd.isna(seen.loc["all", "n_skipped"])
    assert seen.loc["axis=lr", "statistic"] == pytest.approx(ref["per_axis"]["lr"])
    assert seen.loc["axis=lr", "n"] == ref["n_groups"]["lr"] > 0
    assert seen.loc["axis=lr", "n_skipped"] == ref["n_skipped"]["lr"]
    # No mean_sharpness here: no headline row, everything is exploratory and BH-adjusted.
    assert set(table["family"]) == {"exploratory"} and table["p_holm"].isna().all()
    np.testing.assert_allclose(table["p_bh"], correlation.benjamini_hochberg(table["p_value"]))
    assert (table["reason"] == "").all()


def test_correlation_table_missing_column():
    with pytest.raises(ValueError, match="'nope'"):
        correlation.correlation_table(_grouped_frame(), ["x"], ["nope"], n_boot=0)


def _sharpness_json(mean: float) -> dict:
    """A results/sharpness JSON with the paper variant and one other, as all_variants writes."""
    agg = {"mean": mean, "std": 0.1, "max": mean + 1.0, "n": 1}
    return {
        "default": {"region": "legacy-disk", "reference": "grid-min"},
        "aggregate": {
            "legacy-disk": {"grid-min": agg},
            "disk": {"grid-min": {**agg, "mean": 2 * mean}},
        },
        "per_seed": {"42": {"legacy-disk": {"grid-min": {"sharpness": mean}}}},
    }


def _metrics_and_sharpness() -> tuple[dict, dict]:
    """One run's metrics.json and sharpness JSON, as training and run-sharpness write them."""
    by_device = {d: 0.5 for d in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")}
    metrics = {
        "run": "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42",
        "hyperparameters": {"arch": "cnn10", "optimizer": "adam", "lr": 0.001,
                            "batch_size": 16, "seed": 42},
        "convergence": {"finite_losses": True, "final_train_accuracy": 0.9},
        "selected_on": "validation", "epoch": 3,
        "test": {"accuracy": 0.5, "seen": 0.5, "unseen": 0.5, "uar": 0.5, "macro_f1": 0.5,
                 "loss": 1.0, "by_device": by_device, "by_city": {}},
        "train": {"accuracy": 0.9, "loss": 0.3},
        "generalisation_gap": 0.4,
        "validation": None,
    }  # fmt: skip
    return metrics, {**_sharpness_json(7.0), "run": metrics["run"]}


def test_run_row_names_the_paper_variant_once():
    metrics, sharp = _metrics_and_sharpness()
    row = run_summary.run_row(metrics, sharp, converged_min_train_accuracy=0.2)
    assert row["converged"] is True
    # The threshold is the summary's: the same metrics.json is unconverged under a higher one.
    assert not run_summary.run_row(metrics, sharp, converged_min_train_accuracy=0.95)["converged"]
    assert row["generalisation_gap"] == 0.4  # from metrics.json, not recomputed
    assert (row["mean_sharpness"], row["std_sharpness"], row["max_sharpness"]) == (7.0, 0.1, 8.0)
    assert row["sharpness_seed42"] == 7.0
    assert row["sharpness_disk_grid_min_mean"] == 14.0
    assert not [k for k in row if k.startswith("sharpness_legacy_disk_grid_min")]


def _small_summary(n: int) -> pd.DataFrame:
    """summary.tsv of `n` converged runs that differ in optimizer (and, from the third, lr)."""
    rng = np.random.default_rng(n)
    runs = pd.DataFrame({
        "run": [f"run{i}" for i in range(n)],
        "arch": "cnn10",
        "optimizer": ["adam", "sgd", "adam", "sgd", "adam", "sgd"][:n],
        "lr": [1e-3, 1e-3, 1e-4, 1e-4, 1e-2, 1e-2][:n],
        "batch_size": 16,
        "seed": 42,
        "converged": True,
        "excluded": False,
        "exclusion_reason": "",
        "mean_sharpness": rng.uniform(10, 100, size=n),
        "max_sharpness": rng.uniform(100, 200, size=n),
        "test_all": rng.uniform(0.3, 0.6, size=n),
    })  # fmt: skip
    runs["sharpness_disk_grid_min_mean"] = 2 * runs["mean_sharpness"]
    runs["seen"] = runs["test_all"] + 0.05
    runs["unseen"] = runs["test_all"] - 0.05
    for dev in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"):
        runs[f"acc_{dev}"] = rng.uniform(0.3, 0.7, size=n)
    return runs


def test_run_correlations_lists_no_measure_twice():
    summary = _small_summary(6)
    # A summary written before run_row dropped the duplicate column.
    summary["sharpness_legacy_disk_grid_min_mean"] = summary["mean_sharpness"]
    table = run_summary.run_correlations(summary, n_boot=0, seed=0)
    assert set(table["measure"]) == {
        "mean_sharpness", "max_sharpness", "sharpness_disk_grid_min_mean"
    }  # fmt: skip
    # Families per subset: each subset has its own 9 headline rows.
    assert (table[table.family == "headline"].groupby("subset").size() == 9).all()
    assert set(table["subset"]) == set(run_summary.SUBSETS)


def test_each_subset_keeps_exactly_its_runs_and_correlates_only_them():
    """headline: converged and not excluded; with_excluded: converged (the hand-excluded runs
    back in); all_runs: every run. Checked on a hand-built table and against scipy."""
    summary = _small_summary(6)
    summary.loc[[1, 4], "converged"] = False
    summary.loc[[2, 4], "excluded"] = True
    summary.loc[[2, 4], "exclusion_reason"] = "by hand"
    want = {"headline": [0, 3, 5], "with_excluded": [0, 2, 3, 5], "all_runs": list(range(6))}
    for subset, rows in want.items():
        assert list(run_summary.subset_runs(summary, subset)["run"]) == [f"run{i}" for i in rows]
    table = run_summary.run_correlations(summary, n_boot=0, seed=0)
    pooled = table.query(
        "group == 'all' and method == 'kendall' and measure == 'mean_sharpness' "
        "and target == 'test_all'"
    )
    for subset, rows in want.items():
        (row,) = pooled[pooled.subset == subset].itertuples()
        runs = summary.loc[rows]
        assert row.n == len(rows), subset
        tau = stats.kendalltau(runs["mean_sharpness"], runs["test_all"]).statistic
        assert row.statistic == pytest.approx(tau), subset


def test_run_correlations_with_two_runs_writes_nan_rows_with_a_reason():
    table = run_summary.run_correlations(_small_summary(2), n_boot=100, seed=0)
    assert list(table.columns) == [*correlation.TABLE_COLUMNS, "subset"]
    assert set(table["subset"]) == set(run_summary.SUBSETS)
    assert table["statistic"].isna().all() and table["p_value"].isna().all()
    assert table["p_holm"].isna().all() and table["p_bh"].isna().all()
    pooled = table[table.group == "all"]
    assert set(pooled["reason"]) == {"n=2 < 3 runs"}
    # Two runs differing in one axis would give a tau of +-1; with 2 runs it stays NaN too.
    gran = table[table.method == "granulated_kendall"]
    assert set(gran["group"]) == {"all", "axis=optimizer"}
    assert set(gran["reason"]) == {"n=2 < 3 runs"}


def test_figures_command_with_two_runs_draws_figures_with_a_note(tmp_path):
    from ascsharp.cli import main

    summary = _small_summary(2)
    summary["sharpness_seed42"] = summary["mean_sharpness"]  # one direction seed
    summary.to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    corr = run_summary.run_correlations(summary, n_boot=0, seed=0)
    corr.to_csv(tmp_path / "correlations.tsv", sep="\t", index=False)
    names = ("scatter", "devices", "heatmap", "by-optimizer", "by-arch", "forest", "seeds")
    outs = {name: tmp_path / f"{name}.png" for name in names}
    args = ["figures", "--summary", str(tmp_path / "summary.tsv")]
    args += ["--correlations", str(tmp_path / "correlations.tsv")]
    args += [a for name, path in outs.items() for a in (f"--{name}", str(path))]
    assert main(args) == 0
    assert all(_png_ok(path) for path in outs.values())
    # The same figures, drawn directly: the note is on each, the fit line and r are not.
    note = "only 2 runs: correlations need at least 3"
    pooled = corr[corr.subset == "all_runs"]
    figs = [
        figures.scatter_sharpness(
            summary, "mean_sharpness", tmp_path / "s.png", correlations=pooled, note=note
        ),
        figures.device_facets(
            summary, "mean_sharpness", tmp_path / "d.png", correlations=pooled, note=note
        ),
        figures.correlation_heatmap(corr[corr.subset == "all_runs"], tmp_path / "h.png", note=note),
    ]
    for fig in figs:
        assert [t.get_text() for t in fig.texts if t.get_gid() == "note"] == [note]
    panel = next(ax for ax in figs[0].axes if ax.get_gid() == "test_all")
    assert "r undefined (n = 2)" in panel.get_title() and not panel.get_lines()


# --- the paper's table ----------------------------------------------------------------------


def test_read_paper_table():
    df = published.read_paper_table(PAPER_CSV)
    assert len(df) == 38
    assert df["optimizer"].value_counts().to_dict() == {"adam": 16, "gdtuo": 8, "sgd": 8, "kfac": 6}
    assert set(df["arch"]) == {"cnn10", "cnn14"}
    assert set(df["seed"]) == {42, 43}
    first = df[df["id"] == 1].iloc[0]
    assert (first["arch"], first["batch_size"], first["lr"], first["optimizer"]) == (
        "cnn14",
        16,
        0.001,
        "sgd",
    )
    # Row ID 1 of the published sheet: A, B, C, S1, S2, S3 and S4, S5, S6.
    seen = (0.718182 + 0.607903 + 0.641337 + 0.606061 + 0.518182 + 0.590909) / 6
    unseen = (0.451515 + 0.448485 + 0.390909) / 3
    assert first["seen"] == pytest.approx(seen, abs=1e-12)
    assert first["unseen"] == pytest.approx(unseen, abs=1e-12)
    assert first["acc_s6"] == 0.390909 and first["acc_vienna"] == 0.562963
    assert first["test_all"] == 0.552561 and first["mean_sharpness"] == 14.52006095


def test_paper_pearson_reproduced_and_rank_methods_equal_scipy(tmp_path):
    table = published.paper_table(
        PAPER_CSV, tmp_path / "summary.tsv", tmp_path / "correlations.tsv", n_boot=200
    )
    written = pd.read_csv(tmp_path / "correlations.tsv", sep="\t")
    assert list(written.columns[:9]) == [
        "group", "target", "measure", "method", "n", "statistic", "p_value", "ci_low", "ci_high",
    ]  # fmt: skip
    # 7 groups x 3 targets x 3 methods, then per target Psi and its four axes.
    assert len(written) == 7 * 3 * 3 + 3 * 5
    assert set(written["method"]) == {*correlation.METHODS, "granulated_kendall"}
    assert set(written["target"]) == {"test_all", "seen", "unseen"}
    assert set(written["measure"]) == {"mean_sharpness"}
    assert set(written["group"]) == {
        "all", "optimizer=adam", "optimizer=gdtuo", "optimizer=kfac", "optimizer=sgd",
        "arch=cnn10", "arch=cnn14",
        "axis=arch", "axis=optimizer", "axis=lr", "axis=batch_size",
    }  # fmt: skip
    summary = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert len(summary) == 38

    def row(target, method):
        sel = table[(table.group == "all") & (table.target == target) & (table.method == method)]
        return sel.iloc[0]

    pearson = row("test_all", "pearson")
    assert pearson["n"] == 38
    assert round(pearson["statistic"], 3) == 0.412
    assert round(pearson["p_value"], 3) == 0.010
    raw = _raw_paper_columns("Mean Sharpness", "Test (all)")
    sharp, acc = raw["Mean Sharpness"], raw["Test (all)"]
    sp, kt = stats.spearmanr(sharp, acc), stats.kendalltau(sharp, acc)
    assert row("test_all", "spearman")["statistic"] == pytest.approx(sp.statistic, abs=1e-12)
    assert row("test_all", "spearman")["p_value"] == pytest.approx(sp.pvalue, rel=1e-10)
    assert row("test_all", "kendall")["statistic"] == pytest.approx(kt.statistic, abs=1e-12)
    assert row("test_all", "kendall")["p_value"] == pytest.approx(kt.pvalue, rel=1e-10)
    unseen = _raw_paper_columns("S4", "S5", "S6")
    unseen_mean = (unseen["S4"] + unseen["S5"] + unseen["S6"]) / 3
    expected = stats.pearsonr(sharp, unseen_mean).statistic
    assert row("unseen", "pearson")["statistic"] == pytest.approx(expected, abs=1e-12)
    psi = table[(table.method == "granulated_kendall") & (table.group == "all")]
    assert psi.set_index("target")["statistic"].to_dict() == pytest.approx(
        {"test_all": -0.0317, "seen": 0.0238, "unseen": 0.0888}, abs=1e-4
    )


def test_paper_table_families(tmp_path):
    table = published.paper_table(
        PAPER_CSV, tmp_path / "summary.tsv", tmp_path / "correlations.tsv", n_boot=0
    )
    headline = table[table["family"] == "headline"]
    assert len(headline) == 9 and set(headline["group"]) == {"all"}
    assert set(headline["measure"]) == {"mean_sharpness"}
    # Holm over 9 tests: pearson test_all (p = 0.0102) is the 6th smallest, so x 4, not x 63.
    by = headline.set_index(["target", "method"])
    assert by.loc[("test_all", "pearson"), "p_holm"] == pytest.approx(0.0408, abs=1e-4)
    assert by.loc[("unseen", "spearman"), "p_holm"] == pytest.approx(9 * 8.54e-5, rel=0.01)
    # The three seen rows share the monotone maximum 3 x 0.0646.
    assert by.loc["seen", "p_holm"].to_numpy() == pytest.approx([0.1938] * 3, abs=1e-4)
    assert headline["p_bh"].isna().all()
    rest = table[table["family"] == "exploratory"]
    assert rest["p_holm"].isna().all()
    tested = rest["p_value"].notna()
    assert tested.sum() == 54  # 6 groups x 3 targets x 3 methods; granulated rows carry no p
    np.testing.assert_allclose(
        rest.loc[tested, "p_bh"], stats.false_discovery_control(rest.loc[tested, "p_value"])
    )


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = PAPER_CSV.read_text()
    assert old in text
    path = tmp_path / "broken.csv"
    path.write_text(text.replace(old, new, 1))
    return path


def test_bad_paper_tables_name_file_and_column(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(ValueError, match="absent.csv"):
        published.read_paper_table(missing)
    renamed = _broken_copy(tmp_path, "Test (all),", "Test all,")
    with pytest.raises(ValueError, match=r"broken\.csv.*'Test \(all\)'"):
        published.read_paper_table(renamed)
    # Row 5's device A accuracy made non-numeric.
    garbled = _broken_copy(tmp_path, "0.567722,0.715152,", "0.567722,n/a,")
    with pytest.raises(ValueError, match=r"broken\.csv.*'A'.*'5'"):
        published.read_paper_table(garbled)
    odd = _broken_copy(tmp_path, ",SGD,43,", ",RMSprop,43,")
    with pytest.raises(ValueError, match="RMSprop"):
        published.read_paper_table(odd)


# --- figures ------------------------------------------------------------------------------------


def _offsets(ax) -> np.ndarray:
    pts = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])
    return pts[np.lexsort(pts.T[::-1])]


def _png_ok(path: Path) -> bool:
    return (
        path.is_file()
        and path.stat().st_size > 1000
        and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )


def test_scatter_plots_the_unseen_device_mean(tmp_path):
    df = published.read_paper_table(PAPER_CSV)
    out = tmp_path / "figs" / "scatter.png"
    corr = published.paper_table(PAPER_CSV, tmp_path / "s.tsv", tmp_path / "c.tsv", n_boot=0)
    fig = figures.scatter_sharpness(df, "mean_sharpness", out, correlations=corr, title="paper")
    assert _png_ok(out)
    panels = {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}
    assert set(panels) == {"test_all", "seen", "unseen"}
    for target, ax in panels.items():
        expected = df[["mean_sharpness", target]].to_numpy(float)
        np.testing.assert_allclose(_offsets(ax), expected[np.lexsort(expected.T[::-1])])
    assert "r = 0.412, p = 0.010" in panels["test_all"].get_title()
    unseen_r = stats.pearsonr(df["mean_sharpness"], df["unseen"]).statistic
    assert f"r = {unseen_r:.3f}" in panels["unseen"].get_title()


def test_device_facets_and_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"sharp": rng.uniform(0, 100, size=8)})
    for dev in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"):
        df[f"acc_{dev}"] = rng.uniform(0.3, 0.7, size=8)
    table = correlation.correlation_table(
        df.assign(optimizer="adam", arch="cnn10"), ["sharp"], [f"acc_{d}" for d in DEVICES],
        methods=["pearson"], n_boot=0, partial=False,
    )  # fmt: skip
    fig = figures.device_facets(df, "sharp", tmp_path / "devices.png", correlations=table)
    assert _png_ok(tmp_path / "devices.png")
    s5 = next(ax for ax in fig.axes if ax.get_gid() == "acc_s5")
    expected = df[["sharp", "acc_s5"]].to_numpy()
    np.testing.assert_allclose(_offsets(s5), expected[np.lexsort(expected.T[::-1])])
    assert "unseen" in s5.get_title()

    corr = pd.DataFrame(
        {
            "group": ["all"] * 4 + ["arch=cnn10"],
            "target": ["test_all", "unseen", "test_all", "unseen", "test_all"],
            "measure": ["m1", "m1", "m2", "m2", "m1"],
            "method": ["spearman"] * 5,
            "statistic": [0.25, -0.5, 0.75, 0.125, 0.9],
        }
    )
    fig = figures.correlation_heatmap(corr, tmp_path / "heat.png")
    assert _png_ok(tmp_path / "heat.png")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(["0.25", "-0.50", "0.75", "0.12"])
    with pytest.raises(ValueError, match="'kendall'"):
        figures.correlation_heatmap(corr, tmp_path / "none.png", method="kendall")
    assert not (tmp_path / "none.png").exists()


# --- measures in the summary, and their ranking ---------------------------------------------


def test_measure_files_become_summary_columns_matched_by_run(tmp_path):
    import json

    metrics, sharp = _metrics_and_sharpness()
    paths = {}
    for name, doc in (("metrics", metrics), ("sharp", sharp)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    measures = [
        {"run": metrics["run"], "measure": "hessian", "values": {"lambda_max": 3.5, "trace": 9.0}},
        {"run": metrics["run"], "measure": "adaptive_worst", "values": {"adaptive_worst": 0.2}},
        {"run": "arch~other", "measure": "adaptive_average", "values": {"adaptive_average": 1.0}},
    ]
    measure_paths = []
    for k, m in enumerate(measures):  # file names say nothing: the run inside counts
        measure_paths.append(tmp_path / f"m{k}.json")
        measure_paths[-1].write_text(json.dumps(m))
    df = run_summary.summary_from_files(
        [paths["metrics"]], [paths["sharp"]], [], measure_paths, converged_min_train_accuracy=0.2
    )
    row = df.iloc[0]
    assert (row["hessian_lambda_max"], row["hessian_trace"], row["adaptive_worst"]) == (3.5, 9, 0.2)
    assert "adaptive_average" not in df.columns  # another run's file
    assert {"hessian_lambda_max", "adaptive_worst"} <= set(run_summary.measure_columns(df))


def test_rank_measures_kendall_psi_and_order(tmp_path):
    summary = _small_summary(6)
    summary["seed"] = [42, 42, 43, 43, 42, 43]
    summary["generalisation_gap"] = 0.9 - summary["test_all"]
    summary["adaptive_worst"] = -summary["test_all"]  # a perfect predictor
    table = run_summary.rank_measures(summary, n_boot=50, seed=0)
    assert set(table["target"]) == {"test_all", "seen", "unseen", "generalisation_gap"}
    best = table[(table["target"] == "test_all") & (table["rank"] == 1)]
    assert best["measure"].tolist() == ["adaptive_worst"]
    assert best["kendall_tau"].item() == pytest.approx(-1.0)
    gap = table[(table["target"] == "generalisation_gap") & (table["measure"] == "mean_sharpness")]
    want = stats.kendalltau(summary["mean_sharpness"], summary["generalisation_gap"]).statistic
    assert gap["kendall_tau"].item() == pytest.approx(want)
    assert gap["agreement"].item() == pytest.approx(want)  # + for the gap, - for accuracy
    psi = correlation.granulated_kendall(
        summary, "mean_sharpness", "generalisation_gap", ["optimizer", "lr"]
    )["psi"]
    assert gap["psi"].item() == pytest.approx(psi, nan_ok=True)
    png = tmp_path / "ranking.png"
    figures.measure_ranking(table, png)
    assert png.stat().st_size > 10_000
