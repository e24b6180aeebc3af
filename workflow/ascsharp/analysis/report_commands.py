"""Report commands: the analysis figures, the comparison with the published table, the report's
HTML tables and 3-D page, and the cost of a finished run."""

from __future__ import annotations

from pathlib import Path

from ascsharp.core.commands import command, figure_option
from ascsharp.core.io import read_table


# --- figures and report tables ----------------------------------------------------------------
def _figure_runs(summary, subsets):
    """The runs the figures show: the headline subset when it has enough runs for correlations,
    else the next larger one; with too few runs everywhere, the largest, with a note."""
    from ascsharp.analysis.correlation import MIN_RUNS
    from ascsharp.analysis.summary import SUBSETS, subset_runs
    from ascsharp.core.progress import get_logger

    sizes = {s: len(subset_runs(summary, s)) for s in SUBSETS if s in subsets}
    subset = next((s for s, n in sizes.items() if n >= MIN_RUNS), SUBSETS[-1])
    runs = subset_runs(summary, subset)
    note = None
    if len(runs) < MIN_RUNS:
        note = f"only {len(runs)} runs: correlations need at least {MIN_RUNS}"
        get_logger().warning("figures: %s; drawing the points without statistics", note)
    return subset, runs, note


def _figures_args(p):
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--correlations", type=Path, required=True)
    for name, what in (
        ("scatter", "sharpness against accuracy, pooled"),
        ("devices", "one panel per recording device"),
        ("heatmap", "correlation heat map"),
        ("by-optimizer", "seen/unseen facets per optimiser"),
        ("by-arch", "seen/unseen facets per architecture"),
        ("forest", "forest plot of the correlations"),
        ("seeds", "sharpness per direction seed"),
    ):
        figure_option(p, name, what)
    p.add_argument(
        "--forest-groups",
        type=Path,
        nargs="+",
        help="forest plot within each optimiser and architecture (.png, .svg); when given, "
        "--forest shows the pooled rows alone",
    )


@command(
    "figures",
    "sharpness against accuracy (pooled, per device, per group), heat map, forest plot, seeds",
    _figures_args,
)
def _figures(args):
    from ascsharp.analysis import figures as fig
    from ascsharp.analysis.correlation import HEADLINE_MEASURE as measure
    from ascsharp.analysis.correlation import PAPER_TARGETS, TABLE_COLUMNS
    from ascsharp.core.runs import RUN_KEYS
    from ascsharp.data.meta import DEVICES

    devices = [f"acc_{d}" for d in DEVICES]
    needed = ["converged", "excluded", measure, *RUN_KEYS, *PAPER_TARGETS, *devices]
    summary = read_table(args.summary, needed)
    if not summary.columns.str.startswith("sharpness_seed").any():
        raise ValueError(f"{args.summary}: no sharpness_seed<d> column (one per direction seed)")
    corr = read_table(args.correlations, ["subset", *TABLE_COLUMNS])
    subset, runs, note = _figure_runs(summary, set(corr["subset"]))
    table = corr[corr["subset"] == subset]
    title = f"{len(runs)} runs ({subset})"
    fig.scatter_sharpness(
        runs, measure, out_png=args.scatter, correlations=table, title=title, note=note
    )
    fig.device_facets(runs, measure, args.devices, correlations=table, note=note)
    fig.correlation_heatmap(table, args.heatmap, note=note)
    for group, out in (("optimizer", args.by_optimizer), ("arch", args.by_arch)):
        fig.group_facets(runs, measure, group, out, correlations=table, note=note)
    if args.forest_groups:
        pooled = "Correlation of every measure with accuracy, all runs pooled"
        fig.forest_plot(table, args.forest, groups=["all"], title=pooled, note=note)
        within = sorted(set(table["group"]) - {"all"}, key=lambda g: (not g.startswith("opt"), g))
        fig.forest_plot(table, args.forest_groups, groups=within, note=note,
                        title="Correlation of every measure with accuracy within each optimiser "
                        "and architecture")  # fmt: skip
    else:
        fig.forest_plot(table, args.forest, note=note)
    fig.seed_spread(runs, args.seeds, note=note)


def _surfaces_page_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="surface.h5 of every run and seed")
    p.add_argument("--radius", type=float, required=True, help="ε of the disk drawn")
    p.add_argument("--out", type=Path, required=True, help="the HTML page")


@command(
    "surfaces-page",
    "every run's loss landscapes as interactive 3-D surfaces on one page (plotly.js once)",
    _surfaces_page_args,
)
def _surfaces_page(args):
    from collections import defaultdict

    from ascsharp.analysis.report_html import surfaces_page
    from ascsharp.core.plotting import run_label
    from ascsharp.core.runs import parse_run_id
    from ascsharp.core.surface import read_surface, run_surfaces, surface_identity

    by_run = defaultdict(list)
    for path in args.surfaces:
        by_run[surface_identity(path)[0]].append(path)
    runs = {}
    for run in sorted(by_run):
        _, path_by_seed = run_surfaces(by_run[run])
        surfaces = [(seed, *read_surface(path)) for seed, path in path_by_seed.items()]
        runs[run] = (run_label(parse_run_id(run)), surfaces)
    surfaces_page(
        runs,
        args.out,
        radius=args.radius,
        title=f"Loss landscapes of {len(runs)} runs in 3-D",
        caption="Choose a run. One colour scale and z range for all direction seeds of the run; "
        f"red: rim of the ε-disk (ε = {args.radius:g}) on the surface; white dot: the trained "
        "weights. Drag to turn, scroll to zoom, hover for values.",
    )


def _compare_args(p):
    p.add_argument("--summary", type=Path, required=True, help="our summary.tsv")
    p.add_argument("--published", type=Path, required=True, help="the published results CSV")
    p.add_argument("--table", type=Path, required=True, help="comparison TSV")
    p.add_argument("--html", type=Path, required=True, help="the same table as an HTML page")
    figure_option(p, "figure", "ours against the published values")


@command(
    "compare-published",
    "our runs against the published runs with the same hyperparameters",
    _compare_args,
)
def _compare_published(args):
    from ascsharp.analysis.figures import PAPER_PANELS, paper_comparison
    from ascsharp.analysis.published import (
        COMPARED,
        agreement,
        compare_with_published,
        read_paper_table,
    )
    from ascsharp.analysis.report_html import html_table
    from ascsharp.core.io import write_table
    from ascsharp.core.runs import RUN_KEYS

    summary = read_table(args.summary, ["run", *RUN_KEYS, *COMPARED])
    table = compare_with_published(summary, read_paper_table(args.published))
    write_table(args.table, table)
    note = None
    if table.empty:
        note = "no run of this grid has the hyperparameters of a published run (paper preset)"
    paper_comparison(table, args.figure, agreement=agreement(table, PAPER_PANELS), note=note)
    html_table(
        table,
        args.html,
        title="Ours against the published table, run by run",
        caption=note or "Differences are ours minus published; accuracies as fractions.",
    )


def _tables_args(p):
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--correlations", type=Path, required=True)
    p.add_argument("--ranking", type=Path, required=True, help="measure_ranking.tsv (Ψ intervals)")
    p.add_argument(
        "--published-correlations", type=Path, required=True, help="results/paper/correlations.tsv"
    )
    p.add_argument("--scatter", type=Path, required=True, help="the pooled scatter's SVG")
    p.add_argument("--summary-html", type=Path, required=True)
    p.add_argument("--headline-html", type=Path, required=True)


@command(
    "report-tables",
    "summary.tsv and the headline answer (numbers and scatter) as HTML pages for the report",
    _tables_args,
)
def _report_tables(args):
    from ascsharp.analysis.report_html import (
        answer_page,
        headline_answer,
        headline_rows,
        html_table,
    )

    summary = read_table(args.summary, ["run"])
    html_table(
        summary,
        args.summary_html,
        title=f"summary.tsv: {len(summary)} runs",
        caption="One row per run: hyperparameters, accuracies (fractions), every sharpness "
        "variant and measure.",
    )
    ours = read_table(args.correlations, ["subset", "family"])
    published = read_table(args.published_correlations, ["family"])
    ranking = read_table(args.ranking, ["measure", "target", "subset"])
    answer = headline_answer(ours, published, ranking)
    n = answer[("this workflow", "n")].iloc[0]
    answer_page(
        answer,
        headline_rows(ours, published),
        args.scatter,
        args.headline_html,
        title="Does a sharper minimum mean lower accuracy? The headline numbers",
        caption=f"Mean sharpness against test accuracy over the {n} runs of the headline subset "
        "(converged, not in analysis.exclude), beside the same statistics on the published "
        "table (Milling et al. 2024, 38 runs). A negative value: sharper minima, lower accuracy. "
        "Intervals: 95 % percentile bootstrap over runs (Ψ: runs resampled, none for the "
        "published table). Holm p: adjusted within the paper's 9 tests (r, ρ, τ × 3 targets); "
        "Ψ is exploratory and has none.",
    )


def _cost_args(p):
    p.add_argument("benchmarks", type=Path, help="a finished run's benchmarks/ folder")
    p.add_argument("--out", type=Path, help="also write the table here (.tsv)")


@command(
    "cost",
    "CPU and GPU hours of a finished run, per rule, from its Snakemake benchmark files",
    _cost_args,
)
def _cost(args):
    from ascsharp.analysis.cost import cost_table
    from ascsharp.core.io import atomic_path

    table = cost_table(args.benchmarks)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
