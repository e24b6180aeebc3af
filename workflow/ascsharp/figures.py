"""Figures for the analysis: sharpness against accuracy, per device, and the correlation map.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than through pyplot,
so nothing depends on (or changes) a global backend and no figure outlives its function. Each
function returns the Figure so that callers and tests can inspect what was drawn. A `note`
(e.g. "only 2 runs") is printed under the panels, so a grid too small for statistics still gets
its figures and says why they carry none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ascsharp.correlation import correlate, require_columns
from ascsharp.io import atomic_path
from ascsharp.meta import DEVICES, SEEN_DEVICES
from ascsharp.surface import read_surface

TARGET_LABELS = {
    "test_all": "test accuracy (all devices)",
    "seen": "accuracy, seen devices (A, B, C, S1-S3)",
    "unseen": "accuracy, unseen devices (S4-S6)",
    "generalisation_gap": "train - test accuracy",
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _add_note(fig: Figure, note: str | None) -> None:
    """Print `note` under the panels (a figure-level label, so the layout leaves room for it)."""
    if note:
        fig.supxlabel(note, color="firebrick", fontsize=10).set_gid("note")


def _regression(ax: Axes, x: np.ndarray, y: np.ndarray) -> str:
    """Draw the least-squares line over all points; return 'r = .., p = ..' for the title.

    Without a defined correlation (fewer than 3 points, a constant axis) no line is drawn: a line
    through two points would look like evidence.
    """
    res = correlate(x, y, "pearson", n_boot=0)
    if not np.isfinite(res["statistic"]):
        return f"r undefined (n = {res['n']})"
    slope, intercept = np.polyfit(x, y, 1)
    xs = np.array([x.min(), x.max()])
    ax.plot(xs, intercept + slope * xs, color="black", lw=1.2, ls="--", label="_fit")
    return f"r = {res['statistic']:.3f}, p = {res['p_value']:.3f} (n = {res['n']})"


def scatter_sharpness(
    df: pd.DataFrame,
    measure: str,
    out_png: str | Path,
    targets: Sequence[str] = ("test_all", "seen", "unseen"),
    *,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """One panel per target: runs coloured by optimiser, shaped by architecture, pooled fit.

    The `unseen` panel plots the mean over the unseen devices S4-S6 (the original study's
    "OOD" plot used a different column).
    """
    require_columns(df, [measure, *targets, "optimizer", "arch"], "figure data")
    hue_order = sorted(df["optimizer"].dropna().astype(str).unique())
    style_order = sorted(df["arch"].dropna().astype(str).unique())
    fig = _new_figure(4.2 * len(targets), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(targets), sharex=True))
    for i, (ax, target) in enumerate(zip(axes, targets, strict=True)):
        d = df[[measure, target, "optimizer", "arch"]].dropna()
        d = d.astype({"optimizer": str, "arch": str})
        sns.scatterplot(
            data=d,
            x=measure,
            y=target,
            hue="optimizer",
            style="arch",
            hue_order=hue_order,
            style_order=style_order,
            ax=ax,
            s=45,
            legend=i == len(targets) - 1,
        )
        stats_text = _regression(ax, d[measure].to_numpy(float), d[target].to_numpy(float))
        ax.set_title(f"{target}\n{stats_text}", fontsize=10)
        ax.set_xlabel(measure)
        ax.set_ylabel(TARGET_LABELS.get(target, target))
        ax.set_gid(target)
    if len(targets) and axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if title:
        fig.suptitle(title)
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def device_facets(
    df: pd.DataFrame, measure: str, out_png: str | Path, *, note: str | None = None
) -> Figure:
    """Accuracy per recording device against sharpness; seen and unseen devices in two colours."""
    columns = [f"acc_{d}" for d in DEVICES]
    require_columns(df, [measure, *columns], "figure data")
    palette = sns.color_palette("colorblind", 2)
    fig = _new_figure(12.0, 10.0)
    axes = fig.subplots(3, 3, sharex=True, sharey=True).ravel()
    for ax, device, col in zip(axes, DEVICES, columns, strict=True):
        d = df[[measure, col]].dropna()
        seen = device in SEEN_DEVICES
        x, y = d[measure].to_numpy(float), d[col].to_numpy(float)
        ax.scatter(x, y, s=25, color=palette[0 if seen else 1], label="seen" if seen else "unseen")
        stats_text = _regression(ax, x, y)
        kind = "seen" if seen else "unseen"
        ax.set_title(f"{device.upper()} ({kind})\n{stats_text}", fontsize=9)
        ax.set_xlabel(measure)
        ax.set_ylabel("accuracy")
        ax.set_gid(col)
    fig.suptitle(f"Per-device accuracy against {measure}")
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def correlation_heatmap(
    corr_df: pd.DataFrame,
    out_png: str | Path,
    method: str = "spearman",
    group: str = "all",
    *,
    note: str | None = None,
) -> Figure:
    """Measures x targets map of one method's statistic within one group, values annotated.

    NaN statistics (too few runs) leave their cells blank; the map is still drawn.
    """
    require_columns(corr_df, ["group", "method", "measure", "target", "statistic"], "figure data")
    sel = corr_df[(corr_df["method"] == method) & (corr_df["group"] == group)]
    if sel.empty:
        raise ValueError(f"correlation table: no rows with method {method!r} and group {group!r}")
    measures = list(dict.fromkeys(sel["measure"]))
    targets = list(dict.fromkeys(sel["target"]))
    grid = sel.pivot_table(index="measure", columns="target", values="statistic", aggfunc="first")
    grid = grid.reindex(index=measures, columns=targets)
    fig = _new_figure(1.6 * len(targets) + 3.0, 0.6 * len(measures) + 2.0)
    ax = fig.subplots()
    sns.heatmap(
        grid,
        ax=ax,
        annot=True,
        fmt=".2f",
        cmap="vlag",
        center=0.0,
        vmin=-1.0,
        vmax=1.0,
        cbar_kws={"label": method},
    )
    ax.set_title(f"{method} correlation, group {group}")
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def measure_ranking(table: pd.DataFrame, out_png: str | Path, *, note: str | None = None) -> Figure:
    """One panel per target: every measure's Kendall tau (dot, 95 % bootstrap interval) and
    granulated Psi (diamond, interval from resampled runs), best-agreeing measure on top."""
    require_columns(table, ["measure", "target", "kendall_tau", "ci_low", "ci_high", "psi",
                            "psi_ci_low", "psi_ci_high", "rank"], "ranking table")  # fmt: skip
    targets = list(dict.fromkeys(table["target"])) or ["(none)"]
    measures = list(dict.fromkeys(table["measure"]))
    fig = _new_figure(3.4 * len(targets) + 1.5, 0.45 * len(measures) + 1.8)
    axes = np.atleast_1d(fig.subplots(1, len(targets), sharey=True))
    for ax, target in zip(axes, targets, strict=True):
        sel = table[table["target"] == target].set_index("measure").reindex(measures)
        rows = np.arange(len(measures))
        for col, low, high, marker, offset, label in (
            ("kendall_tau", "ci_low", "ci_high", "o", -0.12, "Kendall τ"),
            ("psi", "psi_ci_low", "psi_ci_high", "D", 0.12, "granulated Ψ"),
        ):
            y = rows + offset
            ax.hlines(y, sel[low], sel[high], color="grey", lw=1)
            ax.plot(sel[col], y, marker, label=label, ms=5)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set(xlim=(-1, 1), title=TARGET_LABELS.get(target, target), xlabel="rank correlation")
        ax.set_yticks(rows, measures)
        ax.invert_yaxis()
    axes[0].legend(loc="lower left", fontsize=8)
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def plot_surface(
    h5_path: str | Path, out_png_contour: str | Path, out_png_3d: str | Path, title: str
) -> None:
    """Contour and 3-D plots of a surface, written atomically (Agg, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    x, y, loss = read_surface(h5_path)
    z = np.where(np.isfinite(loss), loss, np.nan)
    xx, yy = np.meshgrid(x, y)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise ValueError(f"{h5_path}: no finite loss values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    # Log-spaced levels resolve the flat basin when the loss spans orders of magnitude.
    use_log = lo > 0 and hi / lo > 10
    if hi == lo:
        levels = None
    elif use_log:
        levels = np.geomspace(lo, hi, 30)
    else:
        levels = np.linspace(lo, hi, 30)

    fig = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if levels is not None:
        norm = LogNorm() if use_log else None
        cs = ax.contour(xx, yy, z, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "k+", markersize=8)
    ax.set(xlabel=r"$\alpha$ (dx)", ylabel=r"$\beta$ (dy)", title=title, aspect="equal")
    fig.tight_layout()
    with atomic_path(out_png_contour) as tmp:
        fig.savefig(tmp, format="png", dpi=150)

    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", zlabel="loss", title=title)
    with atomic_path(out_png_3d) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
