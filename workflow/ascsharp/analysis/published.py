"""The study's published results table: parsed into our column names, and its statistics.

`ascsharp paper-table` recomputes the paper's correlations from its own numbers, so every
statistic of the workflow can be checked against the published runs (r = 0.412, n = 38).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ascsharp.analysis.correlation import (
    GRANULATED_AXES,
    HEADLINE_MEASURE,
    METHODS,
    PAPER_TARGETS,
    correlate,
    correlation_table,
)
from ascsharp.core import io
from ascsharp.data.meta import CITIES, DEVICES, SEEN_DEVICES, UNSEEN_DEVICES

PAPER_OPTIMIZERS = {"sgd": "sgd", "adam": "adam", "kfac": "kfac", "k-fac": "kfac", "gdtuo": "gdtuo"}


def _paper_columns() -> dict[str, str]:
    """Published header -> our column name (the seed column is matched by prefix separately)."""
    cols = {
        "ID": "id",
        "Model": "arch",
        "Batch Size": "batch_size",
        "Learning Rate": "lr",
        "Optimizer": "optimizer",
        "Sharpn. (2D), rs 42": "sharpness_seed42",
        "Sharpn. (2D), rs 43": "sharpness_seed43",
        "Sharpn. (2D), rs 44": "sharpness_seed44",
        "Mean Sharpness": "mean_sharpness",
        "Std Sharpness": "std_sharpness",
        "Max Sharpness": "max_sharpness",
        "Test (all)": "test_all",
    }
    cols.update({dev.upper(): f"acc_{dev}" for dev in DEVICES})
    cols.update({city: f"acc_{city}" for city in CITIES})
    return cols


def _normalise_optimizer(value: str, path: Path) -> str:
    key = value.strip().lower()
    if "gdtuo" in key:
        return "gdtuo"
    if key in PAPER_OPTIMIZERS:
        return PAPER_OPTIMIZERS[key]
    raise ValueError(f"{path}: unknown optimizer {value!r} in column 'Optimizer'")


def read_paper_table(csv_path: str | Path) -> pd.DataFrame:
    """Parse the published results table into one tidy row per trained model.

    The sheet interleaves section headers and blank lines with the data; a data row is one
    whose `Mean Sharpness` is numeric. `seen`/`unseen` are unweighted means over device
    accuracies (device test sets are the same size to within one clip).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV table ({exc})") from exc
    mapping = _paper_columns()
    io.require_columns(raw, list(mapping), str(path))
    seed_cols = [c for c in raw.columns if str(c).startswith("Seed")]
    if not seed_cols:
        raise ValueError(f"{path}: missing column 'Seed'")
    mapping[seed_cols[0]] = "seed"

    mean = pd.to_numeric(raw["Mean Sharpness"].str.strip(), errors="coerce")
    data = raw.loc[mean.notna(), list(mapping)].rename(columns=mapping).reset_index(drop=True)
    if data.empty:
        raise ValueError(f"{path}: no rows with a numeric 'Mean Sharpness'")
    inverse = {v: k for k, v in mapping.items()}
    ids = data["id"].str.strip()  # as written, for error messages
    for col in data.columns:
        if col in ("arch", "optimizer"):
            continue
        values = pd.to_numeric(data[col].str.strip(), errors="coerce")
        bad = values.isna()
        if bad.any():
            row = ids[bad.idxmax()]
            raise ValueError(f"{path}: column {inverse[col]!r} is not numeric in row ID {row!r}")
        data[col] = values
    for col in ("id", "batch_size", "seed"):
        data[col] = data[col].astype(int)
    data["arch"] = data["arch"].str.strip().str.lower()
    data["optimizer"] = [_normalise_optimizer(v, path) for v in data["optimizer"]]
    data["seen"] = data[[f"acc_{d}" for d in SEEN_DEVICES]].mean(axis=1)
    data["unseen"] = data[[f"acc_{d}" for d in UNSEEN_DEVICES]].mean(axis=1)
    order = ["id", "arch", "batch_size", "lr", "optimizer", "seed"]
    order += [c for c in data.columns if c not in order]
    return data[order]


def paper_table(
    csv_path: str | Path,
    summary_out: str | Path,
    correlations_out: str | Path,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Recompute the paper's correlations from its published table (docs/design.md).

    Writes `summary_out` (the parsed table) and `correlations_out` (mean sharpness against
    test_all / seen / unseen; pearson, spearman, kendall; pooled and per optimiser and arch;
    granulated Kendall over arch, optimizer, lr and batch size with the seed held fixed) and
    returns the correlations.
    """
    df = read_paper_table(csv_path)
    table = correlation_table(
        df,
        [HEADLINE_MEASURE],
        list(PAPER_TARGETS),
        group_columns=("optimizer", "arch"),
        methods=METHODS,
        n_boot=n_boot,
        seed=seed,
        partial=False,
        granulated_axes=GRANULATED_AXES,
    )
    io.write_table(summary_out, df)
    io.write_table(correlations_out, table)
    return table


# Quantities compared run by run between our summary.tsv and the published table.
COMPARED = ("test_all", "seen", "unseen", "mean_sharpness", "std_sharpness")


def compare_with_published(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Our runs next to the published runs with the same hyperparameters (architecture,
    optimiser, learning rate, batch size, seed): for each quantity in COMPARED, `<q>_ours`,
    `<q>_paper` and `<q>_diff` (ours - published). Runs without a published twin are left out;
    an empty table (with every column) when none has one."""
    keys = ["arch", "optimizer", "batch_size", "seed"]
    io.require_columns(summary, ["run", "lr", *keys, *COMPARED], "summary")
    ours = summary[["run", "lr", *keys, *COMPARED]]
    paper = published[["id", "lr", *keys, *COMPARED]]
    both = ours.merge(paper, on=keys, suffixes=("_ours", "_paper"))
    both = both[np.isclose(both["lr_ours"], both["lr_paper"], rtol=1e-9, atol=0)]
    table = both[["run", "id", *keys]].rename(columns={"id": "paper_id"})
    table.insert(4, "lr", both["lr_ours"])
    for q in COMPARED:
        table[f"{q}_ours"] = both[f"{q}_ours"]
        table[f"{q}_paper"] = both[f"{q}_paper"]
        table[f"{q}_diff"] = both[f"{q}_ours"] - both[f"{q}_paper"]
    order = ["arch", "optimizer", "lr", "batch_size", "seed"]
    return table.sort_values(order).reset_index(drop=True)


def agreement(table: pd.DataFrame, quantities: Sequence[str]) -> dict[str, dict[str, float]]:
    """For each quantity of a `compare_with_published` table: over the runs where both values are
    finite, `n`, Pearson's `r` of ours against the published values, and the `mean_difference`
    (ours - published); r and the mean are NaN without such runs (r also with fewer than 3)."""
    out = {}
    for q in quantities:
        io.require_columns(table, [f"{q}_ours", f"{q}_paper"], "comparison table")
        both = table[[f"{q}_paper", f"{q}_ours"]].to_numpy(float)
        finite = both[np.isfinite(both).all(axis=1)]
        r = correlate(finite[:, 0], finite[:, 1], "pearson", n_boot=0)["statistic"]
        diff = float(np.mean(finite[:, 1] - finite[:, 0])) if len(finite) else float("nan")
        out[q] = {"n": len(finite), "r": float(r), "mean_difference": diff}
    return out
