"""`ascsharp`: one subcommand per workflow stage, so every rule is a single readable command.

Each subcommand can be run by hand (copy it from the rule's log), prints `--help`, and exits
non-zero with a one-line `ascsharp <cmd>: error: ...` naming the file or key on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], None]
Arguments = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, Arguments, Handler]] = {}


def command(name: str, help: str, arguments: Arguments):
    """Register `fn(args)` as subcommand `name`, with `arguments(parser)` declaring its options."""

    def wrap(fn: Handler) -> Handler:
        COMMANDS[name] = (help, arguments, fn)
        return fn

    return wrap


def _mel_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("log-mel settings (config.yaml: features)")
    g.add_argument("--sample-rate", type=int, required=True, help="Hz after resampling")
    g.add_argument("--n-fft", type=int, required=True)
    g.add_argument("--hop-length", type=int, required=True)
    g.add_argument("--n-mels", type=int, required=True)
    g.add_argument("--fmin", type=float, required=True)
    g.add_argument("--fmax", type=float, required=True)


def _mel_config(args):
    from .features import MelConfig

    return MelConfig(
        sample_rate=args.sample_rate,
        n_fft=args.n_fft,
        hop_length=args.hop_length,
        n_mels=args.n_mels,
        fmin=args.fmin,
        fmax=args.fmax,
    )


# --- data -------------------------------------------------------------------------------------
def _synth_args(p):
    p.add_argument("--root", type=Path, required=True, help="output folder (DCASE2020 layout)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--sample-rate", type=int, required=True)
    p.add_argument("--clip-seconds", type=float, required=True)
    p.add_argument("--cities", type=int, required=True, help="how many of the 10 cities")
    p.add_argument("--locations-per-city", type=int, required=True)
    p.add_argument("--segments-per-location", type=int, required=True)


@command(
    "synth", "generate the embedded synthetic data set in the DCASE2020 Task 1A layout", _synth_args
)
def _synth(args):
    from .synth import generate_dataset

    summary = generate_dataset(
        args.root,
        seed=args.seed,
        sample_rate=args.sample_rate,
        clip_seconds=args.clip_seconds,
        cities=args.cities,
        locations_per_city=args.locations_per_city,
        segments_per_location=args.segments_per_location,
    )
    print(json.dumps(summary, default=str))


def _download_args(p):
    p.add_argument(
        "--api",
        default="https://zenodo.org/api/records/3819968",
        help="Zenodo record API URL (default: TAU Urban Acoustic Scenes 2020 Mobile, development)",
    )
    p.add_argument(
        "--downloads", type=Path, required=True, help="folder for the zips (kept for reruns)"
    )
    p.add_argument("--root", type=Path, required=True, help="output folder (DCASE2020 layout)")


@command(
    "download",
    "download a Zenodo record (MD5-checked, resumable) and unpack it into the DCASE2020 layout",
    _download_args,
)
def _download(args):
    from .download import download_dataset

    download_dataset(args.api, args.downloads, args.root)


def _features_args(p):
    p.add_argument("--root", type=Path, required=True, help="data set folder")
    p.add_argument("--fold", choices=["train", "evaluate"], required=True)
    p.add_argument("--out-npy", type=Path, required=True)
    p.add_argument("--out-tsv", type=Path, required=True)
    p.add_argument(
        "--audio-sample-rate",
        type=int,
        default=None,
        help="expected WAV sample rate (checked for every file)",
    )
    p.add_argument("--clip-seconds", type=float, default=None, help="expected clip length")
    p.add_argument("--dtype", choices=["float32", "float16"], required=True)
    p.add_argument("--threads", type=int, default=1)
    _mel_arguments(p)


@command(
    "features",
    "validate the data set, then extract one fold's log-mels into one array",
    _features_args,
)
def _features(args):
    from dataclasses import asdict

    from .features import extract_split
    from .io import provenance, write_json
    from .meta import validate_dataset

    folds = validate_dataset(args.root, args.audio_sample_rate, args.clip_seconds)
    mel = _mel_config(args)
    extract_split(
        args.root,
        folds[args.fold],
        args.out_npy,
        args.out_tsv,
        mel,
        dtype=args.dtype,
        threads=args.threads,
        clip_seconds=args.clip_seconds,
    )
    # Self-describing store: what was extracted from where, with which settings and code.
    write_json(args.out_npy.with_suffix(".json"), {
        "dataset_root": str(args.root),
        "fold": args.fold,
        "clips": len(folds[args.fold]),
        "dtype": args.dtype,
        "clip_seconds": args.clip_seconds,
        "mel": asdict(mel),
        "provenance": provenance(),
    })  # fmt: skip


def _holdout_args(p):
    p.add_argument("index", type=Path, help="train.tsv written by `ascsharp features`")
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="validation.tsv")


@command(
    "holdout", "choose the location-disjoint validation hold-out of fold1_train", _holdout_args
)
def _holdout(args):
    import pandas as pd

    from .features import assign_validation
    from .io import write_table

    table = pd.read_csv(args.index, sep="\t")
    held = assign_validation(table, args.fraction, args.seed)
    write_table(args.out, table.loc[held.to_numpy(), ["filename", "scene", "location", "device"]])


# --- training ---------------------------------------------------------------------------------
def _train_args(p):
    p.add_argument("--features", type=Path, required=True, help="results/features folder")
    p.add_argument("--run", required=True, help="arch~../optimizer~../lr~../batch_size~../seed~..")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--selection", choices=["validation", "paper"], required=True)
    p.add_argument("--eval-batch-size", type=int, required=True)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--converged-min-train-accuracy", type=float, required=True)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument(
        "--features-settings",
        type=Path,
        required=True,
        help="train.json written by `ascsharp features`: recorded in model.pt with the weights",
    )


@command(
    "train", "train one grid run; resumes from its last epoch checkpoint if killed", _train_args
)
def _train(args):
    from .train import TrainSettings, train

    settings = TrainSettings(
        epochs=args.epochs,
        width=args.width,
        selection=args.selection,
        eval_batch_size=args.eval_batch_size,
        amp=args.amp,
        converged_min_train_accuracy=args.converged_min_train_accuracy,
    )
    try:
        features = json.loads(args.features_settings.read_text())["mel"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{args.features_settings}: not a feature store's settings ({e})"
        ) from None
    train(args.features, args.run, args.out_dir, settings, features)


# --- landscapes -------------------------------------------------------------------------------
def _grid_arguments(p):
    p.add_argument("--x", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)
    p.add_argument("--y", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)


def _grid(args):
    from .surface import Grid

    return Grid(args.x[0], args.x[1], int(args.x[2]), args.y[0], args.y[1], int(args.y[2]))


def _directions_args(p):
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--direction-seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)


@command(
    "directions",
    "draw two filter-normalised random directions for one model and seed",
    _directions_args,
)
def _directions(args):
    from .checkpoint import load_model
    from .landscape import make_directions, save_directions

    model, ckpt = load_model(args.model)
    dx, dy = make_directions(model, ckpt["run"], args.direction_seed)
    save_directions(args.out, dx, dy, {"run": ckpt["run"], "direction_seed": args.direction_seed})


def _shard_args(p):
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--directions", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="results/features folder")
    p.add_argument(
        "--split",
        choices=["train", "test"],
        required=True,
        help="train: the clips the model was trained on (listed in model.pt); test: the test fold",
    )
    p.add_argument("--subset", type=int, default=None, help="evaluate on this many clips")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="shard~K.npz")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    _grid_arguments(p)


@command(
    "landscape-shard", "evaluate one shard of a surface's grid points (resumable)", _shard_args
)
def _landscape_shard(args):
    from .landscape import evaluate_shard

    evaluate_shard(
        model_path=args.model,
        directions_path=args.directions,
        features_dir=args.features,
        split=args.split,
        subset=args.subset,
        batch_size=args.batch_size,
        grid=_grid(args),
        n_shards=args.shards,
        shard=args.shard,
        out=args.out,
    )


def _gather_args(p):
    p.add_argument("shards", type=Path, nargs="+", help="every shard~K.npz of one surface")
    p.add_argument("--out", type=Path, required=True, help="surface.h5")
    p.add_argument("--contour", type=Path, help="also plot a contour PNG here")
    p.add_argument("--surface3d", type=Path, help="also plot a 3-D surface PNG here")


@command(
    "gather",
    "check a complete set of shards and write surface.h5 (loss-landscape format)",
    _gather_args,
)
def _gather(args):
    from .figures import plot_surface
    from .io import provenance
    from .surface import gather

    gather(args.shards, args.out, attrs={"provenance": provenance()})
    if args.contour and args.surface3d:
        plot_surface(args.out, args.contour, args.surface3d, title=_surface_title(args.out))


def _surface_title(surface: Path) -> str:
    """`arch~cnn10/optimizer~adam/lr~0.001` over `batch_size~16/seed~42, direction seed 42`."""
    from .surface import surface_identity

    run, seed = surface_identity(surface)
    parts = run.split("/")
    return "/".join(parts[:3]) + "\n" + "/".join(parts[3:]) + f", direction seed {seed}"


# --- measures beyond the landscape: Hessian, adaptive sharpness ------------------------------
# Which options each measure takes (argparse dest -> option name); None on the command line
# leaves the measure's own default (ascsharp.curvature.HessianOptions, ascsharp.adaptive.*).
_MEASURE_OPTIONS = {
    "hessian": ("top_k", "lanczos_tol", "trace_samples", "batch_size"),
    "adaptive_average": ("rho", "samples", "plain", "parameters", "antithetic", "batch_size"),
    "adaptive_worst": (
        "rho",
        "p",
        "steps",
        "restarts",
        "m",
        "step_size",
        "plain",
        "parameters",
        "batch_size",
    ),
}


def _measure_args(p):
    p.add_argument("--measure", choices=list(_MEASURE_OPTIONS), required=True)
    p.add_argument("--model", type=Path, required=True, help="results/models/{run}/model.pt")
    p.add_argument(
        "--features-train",
        type=Path,
        required=True,
        help="the feature store the model was trained from (train.npy, its .tsv beside it)",
    )
    p.add_argument(
        "--clips",
        default="all",
        help="N: a seeded subset of N of the model's training clips, the same for every "
        "measure of a run; all: every one (default)",
    )
    p.add_argument("--out", type=Path, required=True, help="results/measures/{run}/{measure}.json")
    p.add_argument("--seed", type=int, default=0, help="noise / start-vector seed (with the run)")
    p.add_argument("--batch-size", type=int, help="clips per chunk: memory only (32 / 64)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when visible)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g = p.add_argument_group("hessian")
    g.add_argument("--top-k", type=int, help="top eigenvalues by Lanczos (5)")
    g.add_argument("--lanczos-tol", type=float, help="ARPACK relative accuracy (1e-3)")
    g.add_argument("--trace-samples", type=int, help="Hutchinson vectors (100)")
    g = p.add_argument_group("adaptive sharpness (Andriushchenko et al. 2023)")
    g.add_argument("--rho", type=float, help="radius / noise scale in |w| units (0.1)")
    g.add_argument("--plain", action="store_true", default=None, help="T_w = I instead of |w|")
    g.add_argument(
        "--parameters",
        choices=["all", "weights"],
        help="perturb all parameters (default) or only tensors with >= 2 dimensions",
    )
    g.add_argument("--samples", type=int, help="average case: noise draws (100)")
    g.add_argument(
        "--antithetic", action="store_true", default=None, help="average case: +delta and -delta"
    )
    g.add_argument("--p", choices=["2", "inf"], help="worst case: norm of the ball (2)")
    g.add_argument("--steps", type=int, help="worst case: ascent steps per restart (20)")
    g.add_argument("--restarts", type=int, help="worst case: restarts per batch (3)")
    g.add_argument("--m", help="worst case: clips per batch (m-sharpness, 128); all: one batch")
    g.add_argument("--step-size", type=float, help="worst case: first step length (2 rho)")


@command(
    "measure",
    "Hessian eigenvalues/trace or adaptive sharpness of one model on its training clips "
    "(resumable)",
    _measure_args,
)
def _measure(args):
    from .measures import parse_clips, run_measure

    allowed = _MEASURE_OPTIONS[args.measure]
    options = {}
    for dest in {d for names in _MEASURE_OPTIONS.values() for d in names}:
        value = getattr(args, dest)
        if value is None:
            continue
        if dest not in allowed:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --measure {args.measure}")
        if dest == "plain":
            options["adaptive"] = False
        elif dest == "m":
            options["m"] = None if value == "all" else parse_clips(value)
        else:
            options[dest] = value
    run_measure(
        measure=args.measure,
        model_path=args.model,
        features_train=args.features_train,
        clips=parse_clips(args.clips),
        out=args.out,
        options=options,
        seed=args.seed,
        device=args.device,
    )


# --- sharpness --------------------------------------------------------------------------------
def _sharpness_args(p):
    from .sharpness import PAPER, REFERENCES, REGIONS

    p.add_argument(
        "surface", type=Path, help="surface.h5 with xcoordinates, ycoordinates, train_loss"
    )
    p.add_argument("--radius", type=float, default=PAPER["radius"])
    p.add_argument("--reference", choices=REFERENCES, default=PAPER["reference"])
    p.add_argument("--region", choices=REGIONS, default=PAPER["region"])
    p.add_argument("--json", action="store_true", help="print one JSON object (else a sentence)")


@command(
    "sharpness",
    "sharpness of one surface (paper: legacy-disk, grid-min, radius 0.25)",
    _sharpness_args,
)
def _sharpness(args):
    from .sharpness import json_safe, sharpness_from_h5

    result = sharpness_from_h5(
        args.surface, radius=args.radius, reference=args.reference, region=args.region
    )
    if args.json:
        print(json.dumps(json_safe(result), allow_nan=False))  # strict JSON: inf -> null
    else:
        print(
            f"{args.surface}: sharpness {result['sharpness']:.4f} "
            f"({args.region}, {args.reference}, radius {args.radius}, {result['points']} points)"
        )


def _run_sharpness_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="direction_seed~D/surface.h5 of one run")
    p.add_argument("--radius", type=float, required=True)
    p.add_argument("--out", type=Path, required=True, help="results/sharpness/{run}.json")


@command(
    "run-sharpness",
    "every sharpness variant of one run, per direction seed and aggregated",
    _run_sharpness_args,
)
def _run_sharpness(args):
    from .io import provenance, write_json
    from .sharpness import all_variants

    result = all_variants(args.surfaces, radius=args.radius)
    write_json(args.out, {**result, "provenance": provenance()})


# --- analysis ---------------------------------------------------------------------------------
def _paper_table_args(p):
    p.add_argument("csv", type=Path, help="the paper's published results table")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--figures", action="store_true", help="also draw the figures into OUT/figures")


@command(
    "paper-table",
    "correlations of the paper's published table (reproduces r = 0.412)",
    _paper_table_args,
)
def _paper_table(args):
    from .published import paper_table, read_paper_table

    table = paper_table(args.csv, args.out)
    _paper_table_log_granulated(table)
    if args.figures:
        from .figures import scatter_sharpness

        scatter_sharpness(
            read_paper_table(args.csv),
            "mean_sharpness",
            out_png=args.out / "figures" / "scatter.png",
            title="Published table (Milling et al., 2024)",
        )


def _paper_table_log_granulated(table) -> None:
    """One log line per target: Psi, then each axis's mean tau with groups used / skipped."""
    from .progress import get_logger

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
        "--measures", type=Path, nargs="*", default=[], help="every results/measures JSON"
    )
    p.add_argument("--exclude", default="[]", help="analysis.exclude as JSON")
    p.add_argument("--out", type=Path, required=True, help="summary.tsv")


@command(
    "summarize",
    "one row per run: hyperparameters, accuracies, every sharpness variant and measure",
    _summarize_args,
)
def _summarize(args):
    from .io import write_table
    from .summary import summary_from_files

    try:
        exclude = json.loads(args.exclude)
    except json.JSONDecodeError as e:
        raise ValueError(f"--exclude: not valid JSON ({e.msg})") from None
    summary = summary_from_files(args.metrics, args.sharpness, exclude, args.measures)
    write_table(args.out, summary)


def _rank_args(p):
    p.add_argument("summary", type=Path, help="summary.tsv")
    p.add_argument("--bootstrap", type=int, required=True, help="bootstrap resamples for CIs")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="measure_ranking.tsv")
    p.add_argument("--figure", type=Path, required=True, help="measure_ranking.png")


@command(
    "rank-measures",
    "rank every sharpness variant and measure by Kendall tau and granulated Psi",
    _rank_args,
)
def _rank_measures(args):
    import pandas as pd

    from .correlation import MIN_RUNS
    from .figures import measure_ranking
    from .io import write_table
    from .progress import get_logger
    from .summary import rank_measures, subset_runs

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
    p.add_argument("--bootstrap", type=int, required=True, help="bootstrap resamples for CIs")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="correlations.tsv")


@command(
    "correlate",
    "correlations of sharpness with accuracy, with and without excluded runs",
    _correlate_args,
)
def _correlate(args):
    import pandas as pd

    from .correlation import MIN_RUNS
    from .io import write_table
    from .progress import get_logger
    from .summary import SUBSETS, run_correlations, subset_runs

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


def _figures_args(p):
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--correlations", type=Path, required=True)
    p.add_argument("--scatter", type=Path, required=True)
    p.add_argument("--devices", type=Path, required=True)
    p.add_argument("--heatmap", type=Path, required=True)


@command(
    "figures", "sharpness-accuracy scatter, per-device facets, correlation heat map", _figures_args
)
def _figures(args):
    import pandas as pd

    from .correlation import MIN_RUNS
    from .figures import correlation_heatmap, device_facets, scatter_sharpness
    from .progress import get_logger
    from .summary import SUBSETS, subset_runs

    summary = pd.read_csv(args.summary, sep="\t")
    corr = pd.read_csv(args.correlations, sep="\t")
    # The headline subset when it has enough runs for correlations, else the next larger one;
    # with too few runs everywhere, the largest, drawn with a note instead of failing.
    sizes = {s: len(subset_runs(summary, s)) for s in SUBSETS if s in set(corr["subset"])}
    subset = next((s for s, n in sizes.items() if n >= MIN_RUNS), SUBSETS[-1])
    runs = subset_runs(summary, subset)
    note = None
    if len(runs) < MIN_RUNS:
        note = f"only {len(runs)} runs: correlations need at least {MIN_RUNS}"
        get_logger().warning("figures: %s; drawing the points without statistics", note)
    title = f"{len(runs)} runs ({subset})"
    scatter_sharpness(runs, "mean_sharpness", out_png=args.scatter, title=title, note=note)
    device_facets(runs, "mean_sharpness", args.devices, note=note)
    correlation_heatmap(corr[corr["subset"] == subset], args.heatmap, note=note)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascsharp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(func=fn, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads:
        import os

        import torch

        # Never more threads than CPUs this process may use: `--cores 8` on a 2-core laptop
        # would otherwise oversubscribe every job and slow the whole run down.
        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))
    from .io import one_line

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        # One line naming the file or key; the traceback adds nothing for bad input.
        args._parser.exit(2, f"ascsharp {args.command}: error: {one_line(e)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
