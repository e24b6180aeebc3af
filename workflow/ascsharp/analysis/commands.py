"""Analysis commands: the study's table, the summary of our runs, correlations and the measure
ranking."""

from __future__ import annotations

import json
from pathlib import Path

from ascsharp.core.commands import command
from ascsharp.core.settings import add_options


# --- analysis ---------------------------------------------------------------------------------
def _paper_table_args(p):
    p.add_argument("csv", type=Path, help="the paper's published results table")
    p.add_argument("--summary", type=Path, required=True, help="summary.tsv: the parsed table")
    p.add_argument("--correlations", type=Path, required=True, help="correlations.tsv")
    p.add_argument(
        "--scatter", type=Path, nargs="+", help="also draw the scatter here (.png, .svg)"
    )


@command(
    "paper-table",
    "correlations of the paper's published table (reproduces r = 0.412)",
    _paper_table_args,
)
def _paper_table(args):
    from ascsharp.analysis.published import paper_table, read_paper_table

    table = paper_table(args.csv, args.summary, args.correlations)
    _paper_table_log_granulated(table)
    if args.scatter:
        from ascsharp.analysis.figures import scatter_sharpness

        scatter_sharpness(
            read_paper_table(args.csv),
            "mean_sharpness",
            out_png=args.scatter,
            correlations=table,
            title="Published table (Milling et al., 2024)",
        )


def _paper_table_log_granulated(table) -> None:
    """One log line per target: Psi, then each axis's mean tau with groups used / skipped."""
    from ascsharp.core.progress import get_logger

    gran = table[table["method"] == "granulated_kendall"]
    for (measure, target), rows in gran.groupby(["measure", "target"], sort=False):
        psi = rows[rows["group"] == "all"]["statistic"].iloc[0]
        axes = [
            f"{r.group.removeprefix('axis=')} {r.statistic:+.3f}"
            f" ({r.n} groups, {r.n_skipped} skipped)"
            for r in rows[rows["group"] != "all"].itertuples()
        ]
        get_logger().info(
            "granulated Kendall %s vs %s: Psi %+.3f; %s", measure, target, psi, "; ".join(axes)
        )


def _summarize_args(p):
    p.add_argument("--metrics", type=Path, nargs="+", required=True, help="every metrics.json")
    p.add_argument("--sharpness", type=Path, nargs="+", required=True, help="every sharpness JSON")
    p.add_argument(
        "--measures", type=Path, nargs="*", required=True, help="every results/measures JSON"
    )
    p.add_argument("--exclude", required=True, help="analysis.exclude as JSON")
    add_options(p, "train", ("converged_min_train_accuracy",))
    p.add_argument("--out", type=Path, required=True, help="summary.tsv")


@command(
    "summarize",
    "one row per run: hyperparameters, accuracies, every sharpness variant and measure",
    _summarize_args,
)
def _summarize(args):
    from ascsharp.analysis.summary import summary_from_files
    from ascsharp.core.io import write_table

    try:
        exclude = json.loads(args.exclude)
    except json.JSONDecodeError as e:
        raise ValueError(f"--exclude: not valid JSON ({e.msg})") from None
    summary = summary_from_files(
        args.metrics,
        args.sharpness,
        exclude,
        args.measures,
        converged_min_train_accuracy=args.converged_min_train_accuracy,
    )
    write_table(args.out, summary)


def _rank_args(p):
    p.add_argument("summary", type=Path, help="summary.tsv")
    add_options(p, "analysis", ("bootstrap", "seed"))
    p.add_argument("--out", type=Path, required=True, help="measure_ranking.tsv")
    p.add_argument(
        "--figure", type=Path, nargs="+", required=True, help="measure_ranking.png (and .svg)"
    )


@command(
    "rank-measures",
    "rank every sharpness variant and measure by Kendall tau and granulated Psi",
    _rank_args,
)
def _rank_measures(args):
    import pandas as pd

    from ascsharp.analysis.correlation import MIN_RUNS
    from ascsharp.analysis.figures import measure_ranking
    from ascsharp.analysis.summary import rank_measures, subset_runs
    from ascsharp.core.io import write_table
    from ascsharp.core.progress import get_logger

    summary = pd.read_csv(args.summary, sep="\t")
    table = rank_measures(summary, n_boot=args.bootstrap, seed=args.seed)
    write_table(args.out, table)
    n = len(subset_runs(summary, "headline"))
    note = None
    if n < MIN_RUNS:
        note = f"only {n} headline run(s): no correlation can be computed"
        get_logger().warning("rank-measures: %s", note)
    measure_ranking(table, args.figure, note=note)


def _correlate_args(p):
    p.add_argument("summary", type=Path, help="summary.tsv")
    add_options(p, "analysis", ("bootstrap", "seed"))
    p.add_argument("--out", type=Path, required=True, help="correlations.tsv")


@command(
    "correlate",
    "correlations of sharpness with accuracy, with and without excluded runs",
    _correlate_args,
)
def _correlate(args):
    import pandas as pd

    from ascsharp.analysis.correlation import MIN_RUNS
    from ascsharp.analysis.summary import SUBSETS, run_correlations, subset_runs
    from ascsharp.core.io import write_table
    from ascsharp.core.progress import get_logger

    summary = pd.read_csv(args.summary, sep="\t")
    small = {s: len(subset_runs(summary, s)) for s in SUBSETS}
    small = {s: n for s, n in small.items() if n < MIN_RUNS}
    if small:
        sizes = ", ".join(f"{s} n={n}" for s, n in small.items())
        get_logger().warning(
            "fewer than %d runs in %s: those correlations are NaN (see column reason)",
            MIN_RUNS,
            sizes,
        )
    write_table(args.out, run_correlations(summary, n_boot=args.bootstrap, seed=args.seed))
