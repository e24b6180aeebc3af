"""Training figures: loss and accuracy per epoch of several runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ascsharp.core.io import require_columns
from ascsharp.core.plotting import (
    Outputs,
    new_figure,
    save,
)


def training_curves(
    history: pd.DataFrame, out: Outputs, *, title: str | None = None, ncols: int = 4
) -> Figure:
    """Loss (upper panel) and accuracy (lower panel) per epoch for every run of `history`: on the
    training clips (running mean over the epoch, train mode) and on the split the epoch was
    selected on, with the selected epoch marked.

    `history` is history.tsv of several runs stacked, with columns `run` (a label),
    `selected_epoch` and `selected_on` (validation or test) added.
    """
    need = ["run", "epoch", "train_loss", "train_accuracy", "select_loss", "select_accuracy",
            "selected_epoch", "selected_on"]  # fmt: skip
    require_columns(history, need, "training history")
    runs = list(dict.fromkeys(history["run"]))
    ncols = max(1, min(ncols, len(runs)))
    nrows = max(1, math.ceil(len(runs) / ncols))
    fig = new_figure(3.6 * ncols + 0.5, 3.6 * nrows + 1.0)
    axes = fig.subplots(2 * nrows, ncols, squeeze=False, sharex=True)
    for k in range(nrows * ncols):
        loss_ax, acc_ax = axes[2 * (k // ncols), k % ncols], axes[2 * (k // ncols) + 1, k % ncols]
        if k >= len(runs):
            loss_ax.set_axis_off()
            acc_ax.set_axis_off()
            continue
        run = runs[k]
        h = history[history["run"] == run].sort_values("epoch").replace([np.inf, -np.inf], np.nan)
        selected, split = int(h["selected_epoch"].iloc[0]), str(h["selected_on"].iloc[0])
        for ax, what in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.plot(h["epoch"], h[f"train_{what}"], "-", color="tab:blue", label="training")
            ax.plot(
                h["epoch"],
                h[f"select_{what}"],
                "--",
                color="tab:orange",
                label=f"{split} (selection)",
            )
            ax.axvline(selected, color="black", ls=":", lw=1, label=f"selected (epoch {selected})")
            ax.set_ylabel(what)
            ax.set_gid(f"{run}|{what}")
        loss_ax.set_title(run, fontsize=9)
        acc_ax.set_xlabel("epoch")
        acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles[:2], names[:2], loc="outside lower center", ncols=3, fontsize=9)
    fig.suptitle(title or f"Training curves of {len(runs)} runs (dotted: selected epoch)")
    save(fig, out)
    return fig
