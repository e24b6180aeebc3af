"""summary.tsv, correlations.tsv and the measure ranking of the workflow's own runs.

One row per run flattens its metrics.json, sharpness JSON and measure JSONs; the correlations
cover every sharpness variant and measure against every accuracy target, for three subsets of
runs (see SUBSETS); the ranking compares the measures with one another (Jiang et al. 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ascsharp.analysis.correlation import (
    GRANULATED_AXES,
    HEADLINE_MEASURE,
    MIN_RUNS,
    PAPER_TARGETS,
    correlate,
    correlation_table,
    granulated_kendall,
)
from ascsharp.data.meta import CITIES, DEVICES

# Targets correlated with sharpness: the paper's three, then every device, every city, the gap.
RUN_TARGETS = [
    *PAPER_TARGETS,
    *(f"acc_{d}" for d in DEVICES),
    *(f"acc_{c}" for c in CITIES),
    "generalisation_gap",
]
# Which runs enter a correlation table: `headline` drops analysis.exclude and unconverged runs,
# `with_excluded` puts the hand-excluded runs back, `all_runs` uses every trained run.
SUBSETS = ("headline", "with_excluded", "all_runs")
# The variant the paper used; summary.tsv names it mean_/std_/max_sharpness.
PAPER_VARIANT = ("legacy-disk", "grid-min")
# results/measures/{run}/{measure}.json value -> summary.tsv column. The plain (non-adaptive)
# variants write other value names, so they can never be read as the adaptive ones.
MEASURE_COLUMNS = {
    "hessian": {"lambda_max": "hessian_lambda_max", "trace": "hessian_trace"},
    "adaptive_average": {"adaptive_average": "adaptive_average", "average": "plain_average"},
    "adaptive_worst": {"adaptive_worst": "adaptive_worst", "worst": "plain_worst"},
    "pacbayes": {"pacbayes_flatness": "pacbayes_flatness",
                 "pacbayes_magnitude_flatness": "pacbayes_magnitude_flatness"},
    "norms": {"log_prod_frobenius": "log_prod_frobenius", "log_prod_spectral": "log_prod_spectral",
              "path_norm": "path_norm", "distance_from_init": "distance_from_init",
              "weight_norm": "weight_norm"},
    "margin": {"inverse_margin": "inverse_margin"},
}  # fmt: skip
# Trivial baselines every measure of the ranking is compared with (Jiang et al. 2020 rank
# measures against such baselines too): the training loss, and the l2 norm of the weights.
BASELINES = ("train_loss", "weight_norm")
# What the ranking compares measures on; a good measure falls with accuracy, rises with the gap.
RANK_TARGETS = {"test_all": -1, "seen": -1, "unseen": -1, "generalisation_gap": +1}


def _variant_name(region: str, reference: str) -> str:
    return f"sharpness_{region}_{reference}".replace("-", "_")


def is_converged(metrics: dict[str, Any], min_train_accuracy: float) -> bool:
    """Whether a run converged: every epoch's losses finite and the last epoch's training
    accuracy at least `min_train_accuracy` (train.converged_min_train_accuracy).

    Judged here from what training recorded, not by training, so that a new threshold reruns
    only the statistics.
    """
    record = metrics["convergence"]
    return bool(record["finite_losses"] and record["final_train_accuracy"] >= min_train_accuracy)


def run_row(
    metrics: dict[str, Any],
    sharp: dict[str, Any],
    measures: Sequence[dict[str, Any]] = (),
    *,
    converged_min_train_accuracy: float,
) -> dict[str, Any]:
    """Flatten one run's metrics.json, sharpness JSON and measure JSONs into a summary row.

    `mean_sharpness`/`std_sharpness`/`max_sharpness` are the paper's variant (legacy disk,
    grid-minimum reference), named as in its table and only there, so that no measure enters the
    correlations twice; every other variant has its own `sharpness_<region>_<reference>_*`.
    """
    test = metrics["test"]
    row: dict[str, Any] = {"run": metrics["run"], **metrics["hyperparameters"]}
    row.update(
        converged=is_converged(metrics, converged_min_train_accuracy),
        selected_on=metrics["selected_on"],
        epoch=metrics["epoch"],
        test_all=test["accuracy"],
        seen=test["seen"],
        unseen=test["unseen"],
        uar=test["uar"],
        macro_f1=test["macro_f1"],
        test_loss=test["loss"],
        train_accuracy=metrics["train"]["accuracy"],
        train_loss=metrics["train"]["loss"],
        generalisation_gap=metrics["generalisation_gap"],
        validation_accuracy=(metrics["validation"] or {}).get("accuracy", float("nan")),
    )
    row.update({f"acc_{d}": test["by_device"].get(d, float("nan")) for d in DEVICES})
    row.update({f"acc_{c}": test["by_city"].get(c, float("nan")) for c in CITIES})
    default = sharp["default"]
    for region, by_reference in sharp["aggregate"].items():
        for reference, agg in by_reference.items():
            if (region, reference) == (default["region"], default["reference"]):
                for stat in ("mean", "std", "max"):
                    row[f"{stat}_sharpness"] = agg.get(stat, float("nan"))
                for seed, per_seed in sharp["per_seed"].items():
                    row[f"sharpness_seed{seed}"] = per_seed[region][reference].get("sharpness")
                continue
            name = _variant_name(region, reference)
            for stat in ("mean", "std", "max"):
                row[f"{name}_{stat}"] = agg.get(stat, float("nan"))
    for m in measures:
        for key, column in MEASURE_COLUMNS.get(m["measure"], {}).items():
            if key in m["values"]:
                value = m["values"][key]
                row[column] = float("nan") if value is None else value
    return row


def measure_columns(summary: pd.DataFrame) -> list[str]:
    """Every sharpness variant and measure column of summary.tsv that holds a value, once each."""
    columns = [c for c in summary.columns if c.startswith("sharpness_") and c.endswith("_mean")]
    # Summaries written before run_row dropped the duplicate hold the paper variant twice.
    columns = [m for m in columns if m != f"{_variant_name(*PAPER_VARIANT)}_mean"]
    columns = [HEADLINE_MEASURE, "max_sharpness", *columns]
    columns += [c for cols in MEASURE_COLUMNS.values() for c in cols.values()]
    return [m for m in columns if m in summary.columns and summary[m].notna().any()]


def summary_from_files(
    metrics_paths: Sequence[Path],
    sharpness_paths: Sequence[Path],
    exclude: list[dict[str, Any]],
    measure_paths: Sequence[Path] = (),
    *,
    converged_min_train_accuracy: float,
) -> pd.DataFrame:
    """summary.tsv: one row per run, with `excluded` and its reason from analysis.exclude.

    Runs are matched by the `run` each file carries, never by its path."""
    import json

    from ascsharp.core.runs import matches

    sharp_by_run = {}
    for path in sharpness_paths:
        sharp = json.loads(Path(path).read_text())
        if "run" not in sharp:
            raise ValueError(f"{path}: key 'run' missing (written by an older version?)")
        sharp_by_run[sharp["run"]] = sharp
    measures_by_run: dict[str, list[dict[str, Any]]] = {}
    for path in measure_paths:
        m = json.loads(Path(path).read_text())
        if not {"run", "measure", "values"} <= m.keys():
            raise ValueError(f"{path}: not a measure file (keys run, measure, values expected)")
        measures_by_run.setdefault(m["run"], []).append(m)
    rows = []
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        run = metrics.get("run")
        if run not in sharp_by_run:
            raise ValueError(f"{path}: no sharpness file for run {run!r}")
        row = run_row(
            metrics,
            sharp_by_run[run],
            measures_by_run.get(run, []),
            converged_min_train_accuracy=converged_min_train_accuracy,
        )
        reasons = [r.get("reason", "excluded in config") for r in exclude if matches(row, r)]
        row["excluded"] = bool(reasons)
        row["exclusion_reason"] = "; ".join(reasons)
        rows.append(row)
    return pd.DataFrame(rows)


def subset_runs(summary: pd.DataFrame, subset: str) -> pd.DataFrame:
    """The rows of summary.tsv that enter the correlations of `subset` (see SUBSETS)."""
    converged = summary["converged"].astype(bool)
    excluded = summary["excluded"].astype(bool)
    keep = {"headline": converged & ~excluded, "with_excluded": converged}.get(subset)
    if subset == "all_runs":
        return summary
    if keep is None:
        raise ValueError(f"unknown subset {subset!r}: expected one of {SUBSETS}")
    return summary[keep]


def run_correlations(summary: pd.DataFrame, *, n_boot: int, seed: int) -> pd.DataFrame:
    """correlations.tsv for the workflow's runs: every sharpness variant x target x subset.

    Every subset gets its rows, also with fewer than MIN_RUNS runs (NaN statistics and a
    `reason`), so that a grid of two models still finishes with a table and figures. p-value
    families are per subset.
    """
    measures = measure_columns(summary)
    targets = [t for t in RUN_TARGETS if t in summary.columns and summary[t].notna().any()]
    tables = []
    for name in SUBSETS:
        # Infinite sharpness (diverged landscape) cannot enter a correlation: drop, keep count in n.
        df = subset_runs(summary, name).replace([np.inf, -np.inf], np.nan)
        table = correlation_table(
            df, measures, targets, n_boot=n_boot, seed=seed,
            granulated_axes=[a for a in GRANULATED_AXES if df[a].nunique() > 1],
        )  # fmt: skip
        table["subset"] = name
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def rank_measures(
    summary: pd.DataFrame, *, n_boot: int, seed: int, subset: str = "headline"
) -> pd.DataFrame:
    """Every measure (and every BASELINES column) against every RANK_TARGETS target: Kendall
    tau with its bootstrap interval, and granulated Psi (seed held fixed) with an interval from
    resampling runs.

    `agreement` is tau and `psi_agreement` Psi, signed so that larger is better (a sharper
    minimum should mean lower accuracy and a larger gap); `rank` orders the measures by
    `agreement` within each target. For each baseline b, `psi_gain_vs_<b>` is the measure's
    signed Psi minus the baseline's, with a 95 % interval from the same resampled runs for both
    (paired bootstrap), and `beats_<b>` says whether that interval lies above 0: the measure
    predicts the target's ordering within groups better than the trivial baseline does.
    """
    df = subset_runs(summary, subset).replace([np.inf, -np.inf], np.nan)
    axes = [a for a in GRANULATED_AXES if a in df.columns and df[a].nunique() > 1]
    measures = measure_columns(df)
    measures += [b for b in BASELINES if b not in measures and b in df.columns
                 and df[b].notna().any()]  # fmt: skip
    baselines = [b for b in BASELINES if b in measures]
    rng = np.random.default_rng(seed)
    # Psi recomputes every group per resample: a few hundred resamples suffice for an interval.
    resamples = [rng.integers(0, len(df), len(df)) for _ in range(min(n_boot, 200))]
    rows = []
    for target, sign in RANK_TARGETS.items():
        if target not in df.columns:
            continue
        psi = {m: _psi_and_boots(df, m, target, axes, resamples) for m in measures}
        for measure in measures:
            tau = correlate(df[measure], df[target], "kendall", n_boot=n_boot, seed=seed)
            value, boots = psi[measure]
            row = {
                "measure": measure, "target": target, "subset": subset, "n": tau["n"],
                "kendall_tau": tau["statistic"], "ci_low": tau["ci_low"],
                "ci_high": tau["ci_high"], "p_value": tau["p_value"], "psi": value,
                "psi_ci_low": _percentile(boots, 2.5), "psi_ci_high": _percentile(boots, 97.5),
                "agreement": sign * tau["statistic"], "psi_agreement": sign * value + 0.0,
                "baseline": measure in BASELINES,
            }  # fmt: skip
            for b in baselines:
                gain = sign * (boots - psi[b][1])
                row[f"psi_gain_vs_{b}"] = sign * (value - psi[b][0]) + 0.0  # never -0.0
                row[f"psi_gain_vs_{b}_ci_low"] = low = _percentile(gain, 2.5)
                row[f"psi_gain_vs_{b}_ci_high"] = _percentile(gain, 97.5)
                row[f"beats_{b}"] = bool(low > 0)  # NaN (no interval) compares False
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["rank"] = table.groupby("target")["agreement"].rank(ascending=False, method="min")
    return table.sort_values(["target", "rank"], kind="stable").reset_index(drop=True)


def _psi_and_boots(
    df: pd.DataFrame, measure: str, target: str, axes: list[str], resamples: list[np.ndarray]
) -> tuple[float, np.ndarray]:
    """Psi on the runs, and on each resample of them (NaN where undefined)."""
    if len(df) < MIN_RUNS or not axes:
        return float("nan"), np.full(len(resamples), np.nan)
    psi = granulated_kendall(df, measure, target, axes)["psi"]
    boots = [granulated_kendall(df.iloc[idx], measure, target, axes)["psi"] for idx in resamples]
    return psi, np.asarray(boots, dtype=float)


def _percentile(values: np.ndarray, q: float) -> float:
    """A percentile of the finite resampled values; NaN with fewer than 10 of them."""
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size >= 10 else float("nan")
