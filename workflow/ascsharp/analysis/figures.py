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
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ascsharp.analysis.correlation import HEADLINE_MEASURE
from ascsharp.core.io import require_columns
from ascsharp.core.plotting import (
    GROUP_NAMES,
    SEED_COLUMN,
    SYMBOLS,
    TARGET_LABELS,
    TARGET_SHORT,
    Outputs,
    add_note,
    group_name,
    label,
    new_figure,
    no_data,
    run_label,
    save,
    short_target,
    value_name,
)
from ascsharp.data.meta import DEVICES, SEEN_DEVICES


def _correlation_row(
    correlations: pd.DataFrame, group: str, measure: str, target: str, method: str
) -> Mapping[str, Any]:
    """The row of a correlation table (correlations.tsv) that a panel's title reports: figures
    print what the analysis computed, never a statistic of their own."""
    rows = correlations[
        (correlations["group"] == group)
        & (correlations["measure"] == measure)
        & (correlations["target"] == target)
        & (correlations["method"] == method)
    ]
    if rows.empty:
        raise ValueError(
            f"correlation table: no {method} row for {measure} against {target} in group {group}"
        )
    return rows.iloc[0]


def _fit_line(ax: Axes, x: np.ndarray, y: np.ndarray, row: Mapping[str, Any], method: str) -> str:
    """Draw the least-squares line over the panel's points; return the table row's statistic as
    'r = .., p = .. (n = ..)' for the title (ρ or τ for the rank correlations).

    Without a defined correlation (fewer than 3 points, a constant axis) no line is drawn: a line
    through two points would look like evidence.
    """
    symbol, n = SYMBOLS[method], int(row["n"])
    statistic, p_value = float(row["statistic"]), float(row["p_value"])
    if not np.isfinite(statistic):
        return f"{symbol} undefined (n = {n})"
    slope, intercept = np.polyfit(x, y, 1)
    xs = np.array([x.min(), x.max()])
    ax.plot(xs, intercept + slope * xs, color="black", lw=1.2, ls="--", label="_fit")
    p = f"p = {p_value:.3f}" if p_value >= 0.001 else "p < 0.001"
    return f"{symbol} = {statistic:.3f}, {p} (n = {n})"


def scatter_sharpness(
    df: pd.DataFrame,
    measure: str,
    out_png: Outputs,
    targets: Sequence[str] = ("test_all", "seen", "unseen"),
    *,
    correlations: pd.DataFrame,
    title: str | None = None,
    note: str | None = None,
) -> Figure:
    """One panel per target: runs coloured by optimiser, shaped by architecture, pooled fit with
    the pooled Pearson r of `correlations` (the table of these runs) in the title.

    The `unseen` panel plots the mean over the unseen devices S4-S6 (the original study's
    "OOD" plot used a different column).
    """
    require_columns(df, [measure, *targets, "optimizer", "arch"], "figure data")
    hue_order = sorted(df["optimizer"].dropna().astype(str).unique())
    style_order = sorted(df["arch"].dropna().astype(str).unique())
    fig = new_figure(4.2 * len(targets), 4.0)
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
        row = _correlation_row(correlations, "all", measure, target, "pearson")
        x, y = d[measure].to_numpy(float), d[target].to_numpy(float)
        stats_text = _fit_line(ax, x, y, row, "pearson")
        ax.set_title(f"{TARGET_SHORT.get(target, target)}\n{stats_text}", fontsize=10)
        ax.set_xlabel(label(measure))
        ax.set_ylabel(label(target))
        ax.set_gid(target)
    if len(targets) and axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    if title:
        fig.suptitle(title)
    add_note(fig, note)
    save(fig, out_png)
    return fig


def device_facets(
    df: pd.DataFrame,
    measure: str,
    out_png: Outputs,
    *,
    correlations: pd.DataFrame,
    note: str | None = None,
) -> Figure:
    """Accuracy per recording device against sharpness; seen and unseen devices in two colours;
    each panel's pooled Pearson r from `correlations`."""
    columns = [f"acc_{d}" for d in DEVICES]
    require_columns(df, [measure, *columns], "figure data")
    palette = sns.color_palette("colorblind", 2)
    fig = new_figure(12.0, 10.0)
    axes = fig.subplots(3, 3, sharex=True, sharey=True).ravel()
    for ax, device, col in zip(axes, DEVICES, columns, strict=True):
        d = df[[measure, col]].dropna()
        seen = device in SEEN_DEVICES
        x, y = d[measure].to_numpy(float), d[col].to_numpy(float)
        ax.scatter(x, y, s=25, color=palette[0 if seen else 1], label="seen" if seen else "unseen")
        row = _correlation_row(correlations, "all", measure, col, "pearson")
        stats_text = _fit_line(ax, x, y, row, "pearson")
        kind = "seen" if seen else "unseen"
        ax.set_title(f"{device.upper()} ({kind})\n{stats_text}", fontsize=9)
        ax.set_xlabel(label(measure))
        ax.set_ylabel("test accuracy")
        ax.set_gid(col)
    fig.suptitle(f"Test accuracy per recording device against {label(measure)}")
    add_note(fig, note)
    save(fig, out_png)
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
    fig = new_figure(0.8 * len(targets) + 5.5, 0.6 * len(measures) + 2.0)
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
    ax.set_xticks(np.arange(len(targets)) + 0.5, [short_target(t) for t in targets])
    ax.set(xlabel="test accuracy on (or generalisation gap)", ylabel="")
    ax.set_title(f"{method.title()} correlation of each measure with accuracy, {group_name(group)}")
    add_note(fig, note)
    save(fig, out_png)
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
    fig = new_figure(2.3 * max(len(targets), 1) + 4.6, 0.62 * max(len(measures), 1) + 2.0)
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
    add_note(fig, note)
    save(fig, out_png)
    return fig


def _signed(value: float) -> str:
    """A correlation as printed in a heat map cell: `+0.41`, `−0.07`, `–` when undefined."""
    return "–" if not np.isfinite(value) else f"{value:+.2f}".replace("-", "−")


# --- within groups, forest, direction seeds -----------------------------------------------------


def group_facets(
    df: pd.DataFrame,
    measure: str,
    group: str,
    out: Outputs,
    targets: Sequence[str] = ("seen", "unseen"),
    *,
    correlations: pd.DataFrame,
    note: str | None = None,
) -> Figure:
    """One row per value of `group` (optimizer or arch), one column per target (seen and unseen
    devices side by side): each panel its runs, its own least-squares line and the group's
    Spearman ρ from `correlations` in the title. Points are coloured by the other grouping
    column."""
    hue = "arch" if group == "optimizer" else "optimizer"
    require_columns(df, [measure, group, hue, *targets], "figure data")
    d = df[[measure, group, hue, *targets]].astype({group: str, hue: str})
    values = sorted(d[group].unique())
    hue_order = sorted(d[hue].unique())
    palette = dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order)), strict=True))
    fig = new_figure(4.2 * len(targets) + 1.2, 3.2 * max(len(values), 1) + 0.8)
    axes = fig.subplots(max(len(values), 1), len(targets), squeeze=False, sharey=True)
    for row, value in zip(axes, values, strict=False):
        for ax, target in zip(row, targets, strict=True):
            sel = d[d[group] == value].dropna(subset=[measure, target])
            for h in hue_order:
                pts = sel[sel[hue] == h]
                ax.scatter(pts[measure], pts[target], s=30, color=palette[h], label=value_name(h))
            x, y = sel[measure].to_numpy(float), sel[target].to_numpy(float)
            row = _correlation_row(correlations, f"{group}={value}", measure, target, "spearman")
            stats_text = _fit_line(ax, x, y, row, "spearman")
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
    add_note(fig, note)
    save(fig, out)
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
    fig = new_figure(2.6 * len(targets) + 4.8, 0.3 * len(rows) + 2.0)
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
    add_note(fig, note)
    save(fig, out)
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
    seeds = sorted((int(m[1]), c) for c in df.columns if (m := SEED_COLUMN.fullmatch(str(c))))
    if not seeds:
        raise ValueError("figure data: no sharpness_seed<d> columns")
    require_columns(df, ["arch", "optimizer", "lr", "batch_size", "seed"], "figure data")
    values = df[[c for _, c in seeds]].to_numpy(float)
    values = np.where(np.isfinite(values), values, np.nan)
    means = np.nanmean(values, axis=1) if values.size else np.array([])
    order = np.argsort(means)
    names = [run_label(r) for r in df.to_dict("records")]
    fig = new_figure(12.0, 0.28 * len(df) + 2.2)
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
    add_note(fig, note)
    save(fig, out)
    return fig


# --- training -----------------------------------------------------------------------------------


# --- landscapes: montage and slices -------------------------------------------------------------


# --- ours against the published study -----------------------------------------------------------

PAPER_PANELS = ("test_all", "seen", "unseen", "mean_sharpness")


def paper_comparison(
    table: pd.DataFrame,
    out: Outputs,
    *,
    agreement: Mapping[str, Mapping[str, float]],
    note: str | None = None,
) -> Figure:
    """Our value (y) against the published table's (x) for every run that both have, one panel
    per quantity in PAPER_PANELS, with the identity line; the title gives Pearson's r and the mean
    difference of `agreement` (`published.agreement`). `table` is
    `published.compare_with_published`'s."""
    require_columns(table, ["optimizer", "arch"], "comparison table")
    if table.empty:
        return no_data(out, "Our runs against the published runs with the same hyperparameters",
                        note or "no run has a published twin")  # fmt: skip
    fig = new_figure(4.0 * len(PAPER_PANELS) + 1.2, 4.2)
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
        stats = agreement[q]
        text = f"n = {stats['n']}"
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="_identity")
            text = (f"r = {stats['r']:.2f}, mean difference {stats['mean_difference']:+.3g}"
                    f" (n = {stats['n']})")  # fmt: skip
        ax.set_title(f"{label(q)}\n{text}", fontsize=9)
        ax.set(xlabel="published (Milling et al. 2024)", ylabel="this workflow")
        ax.set_gid(q)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8)
    fig.suptitle("Our runs against the published runs with the same hyperparameters")
    add_note(fig, note)
    save(fig, out)
    return fig
