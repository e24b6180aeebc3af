"""summary.tsv and correlations.tsv of the workflow's own runs.

One row per run flattens its metrics.json and sharpness JSON; the correlations cover every
sharpness variant against every accuracy target, for three subsets of runs (see SUBSETS).
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
    PAPER_TARGETS,
    correlation_table,
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


def _variant_name(region: str, reference: str) -> str:
    return f"sharpness_{region}_{reference}".replace("-", "_")


def run_row(metrics: dict[str, Any], sharp: dict[str, Any]) -> dict[str, Any]:
    """Flatten one run's metrics.json and sharpness JSON into a summary row.

    `mean_sharpness`/`std_sharpness`/`max_sharpness` are the paper's variant (legacy disk,
    grid-minimum reference), named as in its table and only there, so that no measure enters the
    correlations twice; every other variant has its own `sharpness_<region>_<reference>_*`.
    """
    test = metrics["test"]
    row: dict[str, Any] = {"run": metrics["run"], **metrics["hyperparameters"]}
    row.update(
        converged=metrics["converged"],
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
    return row


def summary_from_files(
    metrics_paths: Sequence[Path], sharpness_paths: Sequence[Path], exclude: list[dict[str, Any]]
) -> pd.DataFrame:
    """summary.tsv: one row per run, with `excluded` and its reason from analysis.exclude."""
    import json

    from ascsharp.runs import matches

    sharp_by_run = {}
    for path in sharpness_paths:
        sharp = json.loads(Path(path).read_text())
        if "run" not in sharp:
            raise ValueError(f"{path}: key 'run' missing (written by an older version?)")
        sharp_by_run[sharp["run"]] = sharp
    rows = []
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        run = metrics.get("run")
        if run not in sharp_by_run:
            raise ValueError(f"{path}: no sharpness file for run {run!r}")
        row = run_row(metrics, sharp_by_run[run])
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
    measures = [c for c in summary.columns if c.startswith("sharpness_") and c.endswith("_mean")]
    # Summaries written before run_row dropped the duplicate hold the paper variant twice.
    measures = [m for m in measures if m != f"{_variant_name(*PAPER_VARIANT)}_mean"]
    measures = [HEADLINE_MEASURE, "max_sharpness", *measures]
    measures = [m for m in measures if m in summary.columns and summary[m].notna().any()]
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
