"""Figures for the report: sharpness against accuracy (pooled, per device, per group), the
correlations as a heat map and a forest plot, the spread over direction seeds, training curves,
the loss landscapes (per surface, a montage per architecture, 1-D slices), and our runs against
the published table.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than through pyplot,
so nothing depends on (or changes) a global backend and no figure outlives its function. Each
function returns the Figure so that callers and tests can inspect what was drawn, and writes it
to every path it is given, in the format the suffix names (PNG for a quick look, SVG or PDF as
vector graphics). A `note` (e.g. "only 2 runs") is printed under the panels, so a grid too
small for statistics still gets its figures and says why they carry none. Axis labels are words
(`label`), not column names.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

from ascsharp.correlation import HEADLINE_MEASURE, correlate, require_columns
from ascsharp.io import atomic_path
from ascsharp.meta import CITIES, DEVICES, SEEN_DEVICES
from ascsharp.sharpness import PAPER, sharpness
from ascsharp.surface import read_surface

# One path, or several (the same figure in several formats).
Outputs = str | Path | Sequence[str | Path]
FORMATS = ("png", "svg", "pdf")

TARGET_LABELS = {
    "test_all": "test accuracy, all devices",
    "seen": "test accuracy, seen devices (A, B, C, S1–S3)",
    "unseen": "test accuracy, unseen devices (S4–S6)",
    "generalisation_gap": "generalisation gap (train − test accuracy)",
}
TARGET_SHORT = {"test_all": "all devices", "seen": "seen devices", "unseen": "unseen devices"}
MEASURE_LABELS = {
    "mean_sharpness": "sharpness (ε-disk), mean over direction seeds",
    "max_sharpness": "sharpness (ε-disk), max over direction seeds",
    "std_sharpness": "sharpness (ε-disk), SD over direction seeds",
    "hessian_lambda_max": "Hessian, largest eigenvalue",
    "hessian_trace": "Hessian trace",
    "adaptive_average": "adaptive sharpness, average case",
    "adaptive_worst": "adaptive sharpness, worst case",
    "plain_average": "sharpness, average case (not adaptive)",
    "plain_worst": "sharpness, worst case (not adaptive)",
    "pacbayes_flatness": "PAC-Bayes flatness 1/σ′²",
    "pacbayes_magnitude_flatness": "PAC-Bayes flatness 1/σ′², magnitude-aware",
    "log_prod_frobenius": "log product of squared Frobenius norms",
    "log_prod_spectral": "log product of squared spectral norms",
    "path_norm": "path norm",
    "distance_from_init": "distance from initialisation",
    "weight_norm": "l2 norm of the weights (baseline)",
    "inverse_margin": "inverse margin 1/γ²",
    "train_loss": "training loss (baseline)",
}
VALUE_NAMES = {
    "adam": "Adam",
    "sgd": "SGD",
    "sam": "SAM",
    "gdtuo": "GDTUO",
    "kfac": "K-FAC",
    "cnn10": "CNN10",
    "cnn14": "CNN14",
}
GROUP_NAMES = {"optimizer": "optimiser", "arch": "architecture"}
SYMBOLS = {"pearson": "r", "spearman": "ρ", "kendall": "τ"}
_VARIANT = re.compile(r"sharpness_(legacy_disk|disk|square)_(grid_min|centre)_(mean|std|max)")
_SEED_COLUMN = re.compile(r"sharpness_seed(\d+)")


def label(column: str) -> str:
    """A column of summary.tsv in words, for axis labels, legends and row names."""
    if column in TARGET_LABELS:
        return TARGET_LABELS[column]
    if column in MEASURE_LABELS:
        return MEASURE_LABELS[column]
    if column.startswith("acc_"):
        name = column.removeprefix("acc_")
        if name in DEVICES:
            return f"test accuracy, device {name.upper()}"
        if name in CITIES:
            return f"test accuracy, {name.title()}"
    if m := _VARIANT.fullmatch(column):
        region = m[1].replace("_", "-")
        reference = "grid minimum" if m[2] == "grid_min" else "centre"
        stat = {"mean": "mean", "std": "SD", "max": "max"}[m[3]]
        return f"sharpness ({region}, {reference} reference), {stat} over direction seeds"
    if m := _SEED_COLUMN.fullmatch(column):
        return f"sharpness (ε-disk), direction seed {m[1]}"
    return column


def value_name(value: Any) -> str:
    """An optimiser or architecture as the literature writes it (`kfac` -> `K-FAC`)."""
    return VALUE_NAMES.get(str(value), str(value))


def group_name(group: str) -> str:
    """A correlation group (`all`, `optimizer=adam`, `arch=cnn10`) in words."""
    if group == "all":
        return "all runs"
    key, _, value = group.partition("=")
    return value_name(value) if key in GROUP_NAMES else group


def run_label(row: Mapping[str, Any]) -> str:
    """One run's hyperparameters, short: `CNN10 Adam lr 0.001 bs 16 seed 42`."""
    return (
        f"{value_name(row['arch'])} {value_name(row['optimizer'])} lr {float(row['lr']):g}"
        f" bs {int(row['batch_size'])} seed {int(row['seed'])}"
    )


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _paths(out: Outputs) -> list[Path]:
    paths = [Path(out)] if isinstance(out, str | Path) else [Path(p) for p in out]
    for path in paths:
        if path.suffix.lstrip(".").lower() not in FORMATS:
            raise ValueError(f"{path}: a figure is written as {', '.join(FORMATS)}")
    return paths


def _save(fig: Figure, out: Outputs, dpi: int = 120) -> None:
    """Write `fig` to every path of `out`, each atomically, in the format its suffix names. SVG
    keeps its text as text (not glyph outlines): a third of the size, and searchable."""
    for path in _paths(out):
        with atomic_path(path) as tmp, rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=dpi)


def _add_note(fig: Figure, note: str | None) -> None:
    """Print `note` under the panels (a figure-level label, so the layout leaves room for it)."""
    if note:
        fig.supxlabel(note, color="firebrick", fontsize=10).set_gid("note")


def _no_data(out: Outputs, title: str, why: str) -> Figure:
    """A figure with nothing to draw: no empty axes, only its title and one line saying why."""
    fig = _new_figure(8.0, 0.9)
    fig.suptitle(title)
    fig.text(0.5, 0.3, why, ha="center", va="center", color="firebrick", fontsize=10, gid="note")
    _save(fig, out)
    return fig


def _short_target(target: str) -> str:
    """A target as a column heading: `all devices`, `A`, `Lyon`, `gap`."""
    name = target.removeprefix("acc_")
    if target in TARGET_SHORT:
        return TARGET_SHORT[target]
    if target == "generalisation_gap":
        return "gap"
    return name.upper() if name in DEVICES else name.title()


def _regression(ax: Axes, x: np.ndarray, y: np.ndarray, method: str = "pearson") -> str:
    """Draw the least-squares line over all points; return 'r = .., p = ..' for the title
    (ρ or τ for the rank correlations).

    Without a defined correlation (fewer than 3 points, a constant axis) no line is drawn: a line
    through two points would look like evidence.
    """
    symbol = SYMBOLS[method]
    res = correlate(x, y, method, n_boot=0)
    if not np.isfinite(res["statistic"]):
        return f"{symbol} undefined (n = {res['n']})"
    slope, intercept = np.polyfit(x, y, 1)
    xs = np.array([x.min(), x.max()])
    ax.plot(xs, intercept + slope * xs, color="black", lw=1.2, ls="--", label="_fit")
    p = f"p = {res['p_value']:.3f}" if res["p_value"] >= 0.001 else "p < 0.001"
    return f"{symbol} = {res['statistic']:.3f}, {p} (n = {res['n']})"


def scatter_sharpness(
    df: pd.DataFrame,
    measure: str,
    out_png: Outputs,
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
        ax.set_title(f"{TARGET_SHORT.get(target, target)}\n{stats_text}", fontsize=10)
        ax.set_xlabel(label(measure))
        ax.set_ylabel(label(target))
        ax.set_gid(target)
    if len(targets) and axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if title:
        fig.suptitle(title)
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def device_facets(
    df: pd.DataFrame, measure: str, out_png: Outputs, *, note: str | None = None
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
        ax.set_xlabel(label(measure))
        ax.set_ylabel("test accuracy")
        ax.set_gid(col)
    fig.suptitle(f"Test accuracy per recording device against {label(measure)}")
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def correlation_heatmap(
    corr_df: pd.DataFrame,
    out_png: Outputs,
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
    fig = _new_figure(0.8 * len(targets) + 5.5, 0.6 * len(measures) + 2.0)
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
    ax.set_yticks(np.arange(len(measures)) + 0.5, [label(m) for m in measures], rotation=0)
    ax.set_xticks(np.arange(len(targets)) + 0.5, [_short_target(t) for t in targets])
    ax.set(xlabel="test accuracy on (or generalisation gap)", ylabel="")
    ax.set_title(f"{method.title()} correlation of each measure with accuracy, {group_name(group)}")
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def measure_ranking(table: pd.DataFrame, out_png: Outputs, *, note: str | None = None) -> Figure:
    """Every measure of the ranking table (rows, best on average on top) against every target
    (columns) as one heat map: the colour is `agreement` (Kendall τ signed so that + means the
    measure agrees with generalisation: sharper, less accurate or a larger gap), each cell
    gives τ with its 95 % bootstrap interval and granulated Ψ with its interval."""
    require_columns(table, ["measure", "target", "kendall_tau", "ci_low", "ci_high", "psi",
                            "psi_ci_low", "psi_ci_high", "agreement"], "ranking table")  # fmt: skip
    present = list(dict.fromkeys(table["target"]))
    targets = [t for t in FOREST_TARGETS if t in present] + [
        t for t in present if t not in FOREST_TARGETS
    ]
    order = table.groupby("measure", sort=False)["agreement"].mean().sort_values(ascending=False)
    measures = list(order.index)
    grid = table.pivot_table(index="measure", columns="target", values="agreement", dropna=False)
    grid = grid.reindex(index=measures, columns=targets)
    fig = _new_figure(2.3 * max(len(targets), 1) + 4.6, 0.62 * max(len(measures), 1) + 2.0)
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    cells = table.set_index(["measure", "target"])
    for i, m in enumerate(measures):
        for j, t in enumerate(targets):
            if (m, t) not in cells.index:
                continue
            c = cells.loc[(m, t)]
            text = "\n".join(
                f"{name} {_signed(c[v])} [{_signed(c[lo])}, {_signed(c[hi])}]"
                for name, v, lo, hi in (("τ", "kendall_tau", "ci_low", "ci_high"),
                                        ("Ψ", "psi", "psi_ci_low", "psi_ci_high"))
            )  # fmt: skip
            strong = np.isfinite(c["agreement"]) and abs(c["agreement"]) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if strong else "black")  # fmt: skip
    ax.set_xticks(
        range(len(targets)), [textwrap.fill(TARGET_LABELS.get(t, t), 22) for t in targets]
    )
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(measures)), [textwrap.fill(label(m), 40) for m in measures])
    ax.tick_params(length=0)
    fig.colorbar(
        image, ax=ax, shrink=0.8, label="agreement: Kendall τ, signed (+ = sharper ⇒ worse)"
    )
    n = int(table["n"].max()) if "n" in table.columns and len(table) else 0
    fig.suptitle(f"Which measure predicts generalisation? Every measure against every target "
                 f"({n} runs; best on average on top)")  # fmt: skip
    _add_note(fig, note)
    _save(fig, out_png)
    return fig


def _signed(value: float) -> str:
    """A correlation as printed in a heat map cell: `+0.41`, `−0.07`, `–` when undefined."""
    return "–" if not np.isfinite(value) else f"{value:+.2f}".replace("-", "−")


def _loss_scale(values: np.ndarray, n_levels: int = 30) -> tuple[np.ndarray | None, Normalize]:
    """Contour levels and colour norm for loss values: log-spaced when the finite losses span
    more than a factor 10 (they resolve the flat basin), else linear; no levels when flat."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite loss values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > 10:
        return np.geomspace(lo, hi, n_levels), LogNorm(lo, hi)
    return (None if hi == lo else np.linspace(lo, hi, n_levels)), Normalize(lo, hi)


def _finite_or_nan(loss: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(loss), loss, np.nan)


def plot_surface(h5_path: str | Path, out_contour: Outputs, out_3d: Outputs, title: str) -> None:
    """Contour and 3-D plots of one surface, each written to every path it is given."""
    x, y, loss = read_surface(h5_path)
    z = _finite_or_nan(loss)
    xx, yy = np.meshgrid(x, y)
    try:
        levels, norm = _loss_scale(z)
    except ValueError:
        raise ValueError(f"{h5_path}: no finite loss values to plot") from None

    fig = _new_figure(5.5, 4.5)
    ax = fig.subplots()
    if levels is not None:
        cs = ax.contour(xx, yy, z, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "k+", markersize=8)
    ax.set(xlabel=r"$\alpha$ (dx)", ylabel=r"$\beta$ (dy)", title=title, aspect="equal")
    _save(fig, out_contour, dpi=150)

    fig = _new_figure(6, 5)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", zlabel="loss", title=title)
    _save(fig, out_3d, dpi=150)


# --- within groups, forest, direction seeds -----------------------------------------------------


def group_facets(
    df: pd.DataFrame,
    measure: str,
    group: str,
    out: Outputs,
    targets: Sequence[str] = ("seen", "unseen"),
    *,
    note: str | None = None,
) -> Figure:
    """One row per value of `group` (optimizer or arch), one column per target (seen and unseen
    devices side by side): each panel its runs, its own least-squares line and Spearman ρ in the
    title. Points are coloured by the other grouping column."""
    hue = "arch" if group == "optimizer" else "optimizer"
    require_columns(df, [measure, group, hue, *targets], "figure data")
    d = df[[measure, group, hue, *targets]].astype({group: str, hue: str})
    values = sorted(d[group].unique())
    hue_order = sorted(d[hue].unique())
    palette = dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order)), strict=True))
    fig = _new_figure(4.2 * len(targets) + 1.2, 3.2 * max(len(values), 1) + 0.8)
    axes = fig.subplots(max(len(values), 1), len(targets), squeeze=False, sharey=True)
    for row, value in zip(axes, values, strict=False):
        for ax, target in zip(row, targets, strict=True):
            sel = d[d[group] == value].dropna(subset=[measure, target])
            for h in hue_order:
                pts = sel[sel[hue] == h]
                ax.scatter(pts[measure], pts[target], s=30, color=palette[h], label=value_name(h))
            x, y = sel[measure].to_numpy(float), sel[target].to_numpy(float)
            stats_text = _regression(ax, x, y, "spearman")
            ax.set_title(
                f"{value_name(value)}, {TARGET_SHORT.get(target, target)}\n{stats_text}",
                fontsize=10,
            )
            ax.set(xlabel=label(measure), ylabel=label(target))
            ax.set_gid(f"{group}={value}|{target}")
    if values:
        handles, names = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles, names, title=GROUP_NAMES.get(hue, hue), loc="outside right upper")
    fig.suptitle(f"Sharpness against accuracy within each {GROUP_NAMES.get(group, group)}")
    _add_note(fig, note)
    _save(fig, out)
    return fig


FOREST_TARGETS = ("test_all", "seen", "unseen", "generalisation_gap")


def forest_plot(
    corr: pd.DataFrame,
    out: Outputs,
    *,
    method: str = "spearman",
    targets: Sequence[str] = FOREST_TARGETS,
    groups: Sequence[str] | None = None,
    title: str = "Correlation of every measure with accuracy, pooled and within groups",
    note: str | None = None,
) -> Figure:
    """Every measure x group (rows; `groups` only, when given) against each target (columns):
    the correlation with its 95 % bootstrap interval. Headline rows (the paper's claim) are red
    diamonds with bold names; the adjusted p-value of every row is printed at its right: Holm
    within the headline family, Benjamini-Hochberg q among the exploratory rows."""
    need = ["group", "target", "measure", "method", "statistic", "ci_low", "ci_high", "family",
            "p_holm", "p_bh"]  # fmt: skip
    require_columns(corr, need, "correlation table")
    sel = corr[(corr["method"] == method) & corr["target"].isin(targets)]
    sel = sel[~sel["group"].astype(str).str.startswith("axis=")]
    if groups is not None:
        sel = sel[sel["group"].isin(groups)]
    if sel.empty:
        raise ValueError(f"correlation table: no {method} rows for targets {list(targets)}")
    targets = [t for t in targets if t in set(sel["target"])]
    groups = list(dict.fromkeys(sel["group"]))
    measures = list(dict.fromkeys(sel["measure"]))
    rows = [(g, m) for g in groups for m in measures]
    position = {key: i for i, key in enumerate(rows)}
    fig = _new_figure(2.6 * len(targets) + 4.8, 0.3 * len(rows) + 2.0)
    axes = np.atleast_1d(fig.subplots(1, len(targets), sharey=True))
    for ax, target in zip(axes, targets, strict=True):
        t = sel[sel["target"] == target].drop_duplicates(["group", "measure"])
        y = np.array([position[(g, m)] for g, m in zip(t["group"], t["measure"], strict=True)])
        headline = (t["family"] == "headline").to_numpy()
        ax.hlines(y, t["ci_low"], t["ci_high"], color="grey", lw=1)
        for mask, style, name in (
            (~headline, dict(marker="o", color="tab:blue", ms=4), "exploratory (BH q)"),
            (headline, dict(marker="D", color="firebrick", ms=6), "headline (Holm p)"),
        ):
            if mask.any():
                ax.plot(t["statistic"][mask], y[mask], ls="none", label=name, **style)
        adjusted = np.where(headline, t["p_holm"], t["p_bh"])
        for yi, p, h in zip(y, adjusted, headline, strict=True):
            ax.text(1.12, yi, _adjusted(p, "p" if h else "q"), va="center", fontsize=8,
                    color="firebrick" if h else "dimgrey")  # fmt: skip
        for k in range(1, len(groups)):
            ax.axhline(k * len(measures) - 0.5, color="lightgrey", lw=0.8)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set(xlim=(-1.05, 1.9), title=textwrap.fill(label(target), 24))
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        ax.set_xlabel(f"{method.title()} {SYMBOLS[method]}, 95 % interval")
        ax.set_gid(target)
    names = [label(m) if len(groups) == 1 else f"{group_name(g)}: {label(m)}" for g, m in rows]
    axes[0].set_yticks(range(len(rows)), names, fontsize=9)
    for tick, (g, m) in zip(axes[0].get_yticklabels(), rows, strict=True):
        if g == "all" and m == HEADLINE_MEASURE:
            tick.set_fontweight("bold")
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(title)
    _add_note(fig, note)
    _save(fig, out)
    return fig


def _adjusted(p: float, name: str) -> str:
    """An adjusted p-value as printed beside a forest row: `q = 0.031`, `p < 0.001`, `–`."""
    if not np.isfinite(p):
        return "–"
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.2g}"


def seed_spread(df: pd.DataFrame, out: Outputs, *, note: str | None = None) -> Figure:
    """The paper's sharpness per direction seed for every run (left; runs ordered by their
    mean), and the seed-to-seed spread next to the run-to-run spread (right): the SD over
    direction seeds within each run (one dot per run, the bar their root mean square) against
    the SD of the run means."""
    seeds = sorted((int(m[1]), c) for c in df.columns if (m := _SEED_COLUMN.fullmatch(str(c))))
    if not seeds:
        raise ValueError("figure data: no sharpness_seed<d> columns")
    require_columns(df, ["arch", "optimizer", "lr", "batch_size", "seed"], "figure data")
    values = df[[c for _, c in seeds]].to_numpy(float)
    values = np.where(np.isfinite(values), values, np.nan)
    means = np.nanmean(values, axis=1) if values.size else np.array([])
    order = np.argsort(means)
    names = [run_label(r) for r in df.to_dict("records")]
    fig = _new_figure(12.0, 0.28 * len(df) + 2.2)
    left, right = fig.subplots(1, 2, width_ratios=[2.2, 1.2])
    palette = sns.color_palette("colorblind", len(seeds))
    rows = np.arange(len(df))
    left.hlines(rows, np.nanmin(values[order], axis=1), np.nanmax(values[order], axis=1),
                color="lightgrey", lw=2)  # fmt: skip
    for k, (seed, _) in enumerate(seeds):
        left.plot(values[order, k], rows, "o", color=palette[k], ms=5,
                  label=f"direction seed {seed}")  # fmt: skip
    left.plot(means[order], rows, "|", color="black", ms=12, mew=2, label="mean")
    left.set_yticks(rows, [names[i] for i in order])
    left.set(xlabel=label(HEADLINE_MEASURE).replace(", mean over direction seeds", ""),
             title="sharpness per direction seed", ylim=(len(df) - 0.5, -0.5))  # fmt: skip
    left.legend(loc="upper right", fontsize=8)
    left.set_gid("per_seed")

    within = np.nanstd(values, axis=1, ddof=1) if len(seeds) > 1 else np.full(len(df), np.nan)
    pooled = math.sqrt(np.nanmean(within**2)) if np.isfinite(within).any() else math.nan
    between = float(np.nanstd(means, ddof=1)) if np.isfinite(means).sum() > 1 else math.nan
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(within))
    right.bar([0, 1], [pooled, between], color=["tab:orange", "tab:blue"], alpha=0.4, width=0.6)
    right.plot(jitter, within, "o", color="tab:orange", ms=4, label="one run (SD over seeds)")
    right.set_xticks([0, 1], ["seed to seed\n(within a run)", "run to run\n(SD of run means)"])
    ratio = between / pooled if pooled > 0 else math.nan
    title = "spread of the sharpness (SD)"
    if np.isfinite(ratio):
        title += f"\nrun to run = {ratio:.1f} × seed to seed"
    right.set(ylabel="standard deviation", title=title)
    right.legend(loc="upper left", fontsize=8)
    right.set_gid("spread")
    if len(seeds) < 2:
        note = "; ".join(filter(None, [note, "one direction seed: no seed-to-seed spread"]))
    fig.suptitle(f"How stable is the sharpness over direction seeds? ({len(df)} runs)")
    _add_note(fig, note)
    _save(fig, out)
    return fig


# --- training -----------------------------------------------------------------------------------


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
    fig = _new_figure(3.6 * ncols + 0.5, 3.6 * nrows + 1.0)
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
    _save(fig, out)
    return fig


# --- landscapes: montage and slices -------------------------------------------------------------


def landscape_montage(
    surfaces: Sequence[tuple[Mapping[str, Any], np.ndarray, np.ndarray, np.ndarray]],
    out: Outputs,
    *,
    radius: float,
    title: str,
) -> Figure:
    """Every surface's filled contour on one colour scale: one row per optimiser and learning
    rate, one column per batch size and seed, the ε-disk dashed and the paper's sharpness (at
    this ε) in each title. `surfaces` holds (hyperparameters, x, y, loss[iy, ix])."""
    if not surfaces:
        raise ValueError("landscape montage: no surfaces given")
    levels, norm = _loss_scale(np.concatenate([np.ravel(s[3]) for s in surfaces]), 20)
    keys = [(str(hp["optimizer"]), float(hp["lr"])) for hp, *_ in surfaces]
    cols = [(int(hp["batch_size"]), int(hp["seed"])) for hp, *_ in surfaces]
    row_keys, col_keys = sorted(set(keys), key=lambda k: (k[0], -k[1])), sorted(set(cols))
    fig = _new_figure(2.6 * len(col_keys) + 1.2, 2.6 * len(row_keys) + 0.8)
    axes = fig.subplots(len(row_keys), len(col_keys), squeeze=False, sharex=True, sharey=True)
    used = np.zeros(axes.shape, dtype=bool)
    cmap = "viridis"
    for (hp, x, y, loss), key, col in zip(surfaces, keys, cols, strict=True):
        i, j = row_keys.index(key), col_keys.index(col)
        ax, used[i, j] = axes[i, j], True
        z = _finite_or_nan(loss)
        if levels is not None:
            ax.contourf(x, y, z, levels=levels, norm=norm, cmap=cmap, extend="both")
        ax.add_patch(Circle((0, 0), radius, fill=False, ls="--", lw=1, color="white"))
        ax.plot([0], [0], "w+", ms=6)
        value = sharpness(x, y, loss, radius=radius, reference=PAPER["reference"],
                          region=PAPER["region"])["sharpness"]  # fmt: skip
        ax.set_title(
            f"{value_name(hp['optimizer'])} lr {float(hp['lr']):g}, bs {int(hp['batch_size'])},"
            f" seed {int(hp['seed'])}\nsharpness {value:.4g}",
            fontsize=8,
        )
        ax.set_aspect("equal")
        ax.set_gid(str(hp.get("run", "")) or f"{key}|{col}")
    for ax in axes[~used]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("α (dx)")
    for ax in axes[:, 0]:
        ax.set_ylabel("β (dy)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="loss", shrink=0.8)
    fig.suptitle(title)
    _save(fig, out)
    return fig


def landscape_slices(
    surfaces: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    out: Outputs,
    *,
    radius: float,
    title: str,
) -> Figure:
    """1-D slices of one run's surfaces through the trained weights (α = β = 0, the minimum that
    training found), along dx (β = 0) and along dy (α = 0), one line per direction seed; the
    ε-disk's extent is shaded. `surfaces` holds (direction seed, x, y, loss[iy, ix])."""
    if not surfaces:
        raise ValueError("landscape slices: no surfaces given")
    fig = _new_figure(10.0, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    palette = sns.color_palette("colorblind", len(surfaces))
    for k, (seed, x, y, loss) in enumerate(surfaces):
        z = _finite_or_nan(loss)
        iy0, ix0 = int(np.argmin(np.abs(y))), int(np.argmin(np.abs(x)))
        axes[0].plot(x, z[iy0, :], "o-", ms=3, color=palette[k], label=f"direction seed {seed}")
        axes[1].plot(y, z[:, ix0], "o-", ms=3, color=palette[k], label=f"direction seed {seed}")
    for ax, name, other in ((axes[0], "dx", "β"), (axes[1], "dy", "α")):
        ax.axvspan(-radius, radius, color="grey", alpha=0.12, lw=0, label=f"ε = {radius:g}")
        ax.axvline(0.0, color="black", lw=0.6)
        symbol = "α" if name == "dx" else "β"
        ax.set(xlabel=f"{symbol} (step along {name})", title=f"along {name} ({other} = 0)")
        ax.set_gid(name)
    axes[0].set_ylabel("loss")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, out)
    return fig


# --- ours against the published study -----------------------------------------------------------

PAPER_PANELS = ("test_all", "seen", "unseen", "mean_sharpness")


def paper_comparison(table: pd.DataFrame, out: Outputs, *, note: str | None = None) -> Figure:
    """Our value (y) against the published table's (x) for every run that both have, one panel
    per quantity in PAPER_PANELS, with the identity line; the title gives Pearson's r and the mean
    difference. `table` is `published.compare_with_published`'s."""
    require_columns(table, ["optimizer", "arch"], "comparison table")
    if table.empty:
        return _no_data(out, "Our runs against the published runs with the same hyperparameters",
                        note or "no run has a published twin")  # fmt: skip
    fig = _new_figure(4.0 * len(PAPER_PANELS) + 1.2, 4.2)
    axes = fig.subplots(1, len(PAPER_PANELS))
    opts = sorted(table["optimizer"].astype(str).unique())
    palette = dict(zip(opts, sns.color_palette("colorblind", len(opts)), strict=True))
    markers = dict(zip(sorted(table["arch"].astype(str).unique()), "os^Dv", strict=False))
    for ax, q in zip(axes, PAPER_PANELS, strict=True):
        require_columns(table, [f"{q}_ours", f"{q}_paper"], "comparison table")
        for (opt, arch), g in table.groupby(["optimizer", "arch"]):
            ax.scatter(g[f"{q}_paper"], g[f"{q}_ours"], color=palette[str(opt)],
                       marker=markers[str(arch)], s=30,
                       label=f"{value_name(opt)}, {value_name(arch)}")  # fmt: skip
        both = table[[f"{q}_paper", f"{q}_ours"]].to_numpy(float)
        finite = both[np.isfinite(both).all(axis=1)]
        text = f"n = {len(finite)}"
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="_identity")
            diff = float(np.mean(finite[:, 1] - finite[:, 0]))
            r = correlate(finite[:, 0], finite[:, 1], "pearson", n_boot=0)["statistic"]
            text = f"r = {r:.2f}, mean difference {diff:+.3g} (n = {len(finite)})"
        ax.set_title(f"{label(q)}\n{text}", fontsize=9)
        ax.set(xlabel="published (Milling et al. 2024)", ylabel="this workflow")
        ax.set_gid(q)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8)
    fig.suptitle("Our runs against the published runs with the same hyperparameters")
    _add_note(fig, note)
    _save(fig, out)
    return fig
