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

from ascsharp.correlation import (
    GRANULATED_AXES,
    HEADLINE_MEASURE,
    MIN_RUNS,
    PAPER_TARGETS,
    correlate,
    correlation_table,
    granulated_kendall,
)
from ascsharp.meta import CITIES, DEVICES

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
}
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

    from ascsharp.runs import matches

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
    """Every measure against every RANK_TARGETS target: Kendall tau with its bootstrap interval,
    and granulated Psi (seed held fixed) with an interval from resampling runs.

    `agreement` is tau signed so that larger is better (a sharper minimum should mean lower
    accuracy and a larger gap); `rank` orders the measures by it within each target.
    """
    df = subset_runs(summary, subset).replace([np.inf, -np.inf], np.nan)
    axes = [a for a in GRANULATED_AXES if a in df.columns and df[a].nunique() > 1]
    rows = []
    for target, sign in RANK_TARGETS.items():
        if target not in df.columns:
            continue
        for measure in measure_columns(df):
            tau = correlate(df[measure], df[target], "kendall", n_boot=n_boot, seed=seed)
            psi, psi_low, psi_high = _psi_with_interval(df, measure, target, axes, n_boot, seed)
            rows.append({
                "measure": measure, "target": target, "subset": subset, "n": tau["n"],
                "kendall_tau": tau["statistic"], "ci_low": tau["ci_low"],
                "ci_high": tau["ci_high"], "p_value": tau["p_value"], "psi": psi,
                "psi_ci_low": psi_low, "psi_ci_high": psi_high,
                "agreement": sign * tau["statistic"],
            })  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["rank"] = table.groupby("target")["agreement"].rank(ascending=False, method="min")
    return table.sort_values(["target", "rank"], kind="stable").reset_index(drop=True)


def _psi_with_interval(
    df: pd.DataFrame, measure: str, target: str, axes: list[str], n_boot: int, seed: int
) -> tuple[float, float, float]:
    if len(df) < MIN_RUNS or not axes:
        return float("nan"), float("nan"), float("nan")
    psi = granulated_kendall(df, measure, target, axes)["psi"]
    rng = np.random.default_rng(seed)
    # Psi recomputes every group per resample: a few hundred resamples suffice for an interval.
    boots = []
    for _ in range(min(n_boot, 200)):
        sample = df.iloc[rng.integers(0, len(df), len(df))]
        boots.append(granulated_kendall(sample, measure, target, axes)["psi"])
    boots = np.asarray(boots, dtype=float)
    boots = boots[np.isfinite(boots)]
    if boots.size < 10:
        return psi, float("nan"), float("nan")
    low, high = np.percentile(boots, [2.5, 97.5])
    return psi, float(low), float(high)
