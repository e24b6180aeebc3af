"""Statistics and paper-table reproduction, checked against scipy, closed forms and the paper."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ascsharp import analysis, figures

# The published table, shipped with the workflow (an unedited copy of the authors' release).
PAPER_CSV = Path(__file__).resolve().parents[1] / "workflow/reference/paper_results_icassp2024.csv"


def _raw_paper_columns(*names: str) -> dict[str, np.ndarray]:
    """Read columns straight from the CSV with the csv module, independently of analysis.py."""
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
    res = analysis.correlate(x, y, method, n_boot=500, seed=3)
    expected = ref(x, y)
    assert res["n"] == 30
    assert res["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert res["p_value"] == pytest.approx(expected.pvalue, rel=1e-10)
    assert -1 <= res["ci_low"] < res["statistic"] < res["ci_high"] <= 1
    again = analysis.correlate(x, y, method, n_boot=500, seed=3)
    assert (again["ci_low"], again["ci_high"]) == (res["ci_low"], res["ci_high"])
    other = analysis.correlate(x, y, method, n_boot=500, seed=4)
    assert (other["ci_low"], other["ci_high"]) != (res["ci_low"], res["ci_high"])


@pytest.mark.parametrize("method", analysis.METHODS)
def test_vectorised_bootstrap_statistics_equal_scipy_per_resample(method, monkeypatch):
    # Integer data make ties, and resampling makes duplicated pairs: tau-b must handle both.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, size=12).astype(float)
    y = (x + rng.integers(0, 3, size=12)).astype(float)
    idx = rng.integers(0, 12, size=(40, 12))
    # A tiny chunk forces the Kendall path through several memory-bounded chunks.
    monkeypatch.setattr(analysis, "_KENDALL_CHUNK_ELEMENTS", 3 * 144)
    got = analysis._statistic_rows(x[idx], y[idx], method)
    scipy_fn = {
        "pearson": stats.pearsonr,
        "spearman": stats.spearmanr,
        "kendall": lambda a, b: stats.kendalltau(a, b, variant="b"),
    }[method]
    expected = [scipy_fn(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("method", analysis.METHODS)
def test_degenerate_resamples_are_nan_and_skipped(method):
    rows = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    got = analysis._statistic_rows(rows, np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 3.0]]), method)
    assert np.isnan(got).all()
    # With x = [0, 0, 1] about a third of the resamples are constant; the CI still exists.
    res = analysis.correlate([0, 0, 1], [0.1, 0.3, 0.9], method, n_boot=300, seed=0)
    assert math.isfinite(res["ci_low"]) and math.isfinite(res["ci_high"])


def test_correlate_nan_handling():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    y = np.array([2.0, 1.0, 3.0, np.nan, 7.0, 5.0])
    res = analysis.correlate(x, y, "pearson", n_boot=100)
    assert res["n"] == 4
    assert res["statistic"] == pytest.approx(stats.pearsonr([1, 2, 5, 6], [2, 1, 7, 5]).statistic)
    small = analysis.correlate([1.0, np.nan, 2.0], [1.0, 2.0, 3.0], "kendall")
    assert small["n"] == 2
    assert all(math.isnan(small[k]) for k in ("statistic", "p_value", "ci_low", "ci_high"))
    const = analysis.correlate([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "spearman")
    assert const["n"] == 4 and math.isnan(const["statistic"]) and math.isnan(const["ci_low"])
    with pytest.raises(ValueError, match="'cosine'"):
        analysis.correlate(x, y, "cosine")


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
    res = analysis.partial_correlation(df, "x", "y", ["optimizer", "arch"], n_boot=300)
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
    plain = analysis.partial_correlation(df, "x", "y", [], n_boot=0)
    ref = stats.pearsonr(df["x"], df["y"])
    assert plain["statistic"] == pytest.approx(ref.statistic)
    assert plain["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)
    ranked = analysis.partial_correlation(df, "x", "y", [], "spearman", n_boot=0)
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
    res = analysis.granulated_kendall(df, "measure", "target", ["a", "b"])
    # Axis b: a = 1 -> tau = -1 (three points), a = 2 -> +1, a = 3 -> -1.
    assert res["per_axis"]["a"] == pytest.approx(2 / 3)
    assert res["per_axis"]["b"] == pytest.approx(-1 / 3)
    assert res["psi"] == pytest.approx(1 / 6)
    assert res["n_groups"] == {"a": 2, "b": 3}


def test_granulated_kendall_skips_undefined_groups():
    df = pd.DataFrame(
        {"a": [1, 2, 1, 2], "b": [1, 1, 2, 2], "m": [5.0, 5.0, 1.0, 2.0], "t": [1.0, 2.0, 3.0, 4.0]}
    )
    res = analysis.granulated_kendall(df, "m", "t", ["a", "b"])
    # b = 1 has a constant measure (tau undefined): only b = 2 counts for axis a.
    assert res["per_axis"]["a"] == pytest.approx(1.0)
    assert res["n_groups"]["a"] == 1
    assert res["per_axis"]["b"] == pytest.approx(-1.0)  # a = 1 and a = 2: both discordant


def test_holm_by_hand():
    got = analysis.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then made monotone.
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, np.nan, 0.5])


# --- correlation table ---------------------------------------------------------------------------


def test_correlation_table_columns_groups_and_extra_rows():
    df = _grouped_frame(n=30)
    df = df.rename(columns={"x": "sharp", "y": "test_all"})
    df["seen"] = df["test_all"] + 0.1
    df["lr"] = np.tile([1e-3, 1e-4], 15)
    table = analysis.correlation_table(
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
        "p_holm",
    ]
    basic = table[table["method"].isin(analysis.METHODS)]
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
    ref = analysis.partial_correlation(df, "sharp", "test_all", ["optimizer", "arch"], n_boot=0)
    assert partial[partial.target == "test_all"]["statistic"].item() == pytest.approx(
        ref["statistic"]
    )
    gran = table[table.method == "granulated_kendall"]
    assert len(gran) == 2 and gran["p_value"].isna().all() and gran["ci_low"].isna().all()
    ref_psi = analysis.granulated_kendall(df, "sharp", "seen", ["optimizer", "lr"])["psi"]
    assert gran[gran.target == "seen"]["statistic"].item() == pytest.approx(ref_psi)
    np.testing.assert_allclose(table["p_holm"], analysis.holm(table["p_value"]))


def test_correlation_table_missing_column():
    with pytest.raises(ValueError, match="'nope'"):
        analysis.correlation_table(_grouped_frame(), ["x"], ["nope"], n_boot=0)


def test_summarize_runs_adds_gap():
    df = analysis.summarize_runs(
        [
            {"run": "a", "train_accuracy": 0.9, "test_all": 0.6},
            {"run": "b", "train_accuracy": 0.8, "test_all": 0.7},
        ]
    )
    np.testing.assert_allclose(df["generalisation_gap"], [0.3, 0.1])
    assert "generalisation_gap" not in analysis.summarize_runs([{"run": "a"}]).columns


# --- the paper's table ----------------------------------------------------------------------


def test_read_paper_table():
    df = analysis.read_paper_table(PAPER_CSV)
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
    table = analysis.paper_table(PAPER_CSV, tmp_path, n_boot=200)
    written = pd.read_csv(tmp_path / "correlations.tsv", sep="\t")
    assert list(written.columns[:9]) == [
        "group", "target", "measure", "method", "n", "statistic", "p_value", "ci_low", "ci_high",
    ]  # fmt: skip
    assert len(written) == 7 * 3 * 3
    assert set(written["method"]) == set(analysis.METHODS)
    assert set(written["target"]) == {"test_all", "seen", "unseen"}
    assert set(written["measure"]) == {"mean_sharpness"}
    assert set(written["group"]) == {
        "all", "optimizer=adam", "optimizer=gdtuo", "optimizer=kfac", "optimizer=sgd",
        "arch=cnn10", "arch=cnn14",
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


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = PAPER_CSV.read_text()
    assert old in text
    path = tmp_path / "broken.csv"
    path.write_text(text.replace(old, new, 1))
    return path


def test_bad_paper_tables_name_file_and_column(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(ValueError, match="absent.csv"):
        analysis.read_paper_table(missing)
    renamed = _broken_copy(tmp_path, "Test (all),", "Test all,")
    with pytest.raises(ValueError, match=r"broken\.csv.*'Test \(all\)'"):
        analysis.read_paper_table(renamed)
    # Row 5's device A accuracy made non-numeric.
    garbled = _broken_copy(tmp_path, "0.567722,0.715152,", "0.567722,n/a,")
    with pytest.raises(ValueError, match=r"broken\.csv.*'A'.*'5'"):
        analysis.read_paper_table(garbled)
    odd = _broken_copy(tmp_path, ",SGD,43,", ",RMSprop,43,")
    with pytest.raises(ValueError, match="RMSprop"):
        analysis.read_paper_table(odd)


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
    df = analysis.read_paper_table(PAPER_CSV)
    out = tmp_path / "figs" / "scatter.png"
    fig = figures.scatter_sharpness(df, "mean_sharpness", out, title="paper")
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
    fig = figures.device_facets(df, "sharp", tmp_path / "devices.png")
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
