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


def _clip_count(text: str) -> int | None:
    """A `--clips`-like value: a positive number of clips, or `all` (None)."""
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number or 'all'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be >= 1")
    return n


def _store_arguments(p, name: str, what: str) -> None:
    """--NAME-npy and --NAME-tsv: one feature store as `ascsharp features` wrote it."""
    p.add_argument(f"--{name}-npy", type=Path, required=True, help=f"{what} features (.npy)")
    p.add_argument(f"--{name}-tsv", type=Path, required=True, help=f"{what} clip index (.tsv)")


def _store(args, name: str):
    from .data import Store

    return Store(getattr(args, f"{name}_npy"), getattr(args, f"{name}_tsv"))


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
    p.add_argument("--audio-sample-rate", type=int, required=True, help="of the WAVs written")
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
        audio_sample_rate=args.audio_sample_rate,
        clip_seconds=args.clip_seconds,
        cities=args.cities,
        locations_per_city=args.locations_per_city,
        segments_per_location=args.segments_per_location,
    )
    print(json.dumps(summary, default=str))


def _download_args(p):
    p.add_argument(
        "--api",
        required=True,
        help="Zenodo record API URL (config dataset.download.api: the development set's record)",
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
    p.add_argument("--out-npy", type=Path, required=True, help="the store's features")
    p.add_argument("--out-tsv", type=Path, required=True, help="the store's clip index")
    p.add_argument("--out-json", type=Path, required=True, help="the store's settings")
    p.add_argument(
        "--audio-sample-rate",
        type=int,
        required=True,
        help="expected WAV sample rate (checked for every file)",
    )
    p.add_argument("--clip-seconds", type=float, required=True, help="expected clip length")
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

    from .features import extract_store
    from .io import provenance
    from .meta import validate_dataset

    folds = validate_dataset(
        args.root, audio_sample_rate=args.audio_sample_rate, clip_seconds=args.clip_seconds
    )
    mel = _mel_config(args)
    # Self-describing store: what was extracted from where, with which settings and code.
    settings = {
        "dataset_root": str(args.root),
        "fold": args.fold,
        "clips": len(folds[args.fold]),
        "dtype": args.dtype,
        "clip_seconds": args.clip_seconds,
        "mel": asdict(mel),
        "provenance": provenance(),
    }
    extract_store(
        args.root,
        folds[args.fold],
        args.out_npy,
        args.out_tsv,
        mel,
        dtype=args.dtype,
        threads=args.threads,
        clip_seconds=args.clip_seconds,
        out_json=args.out_json,
        settings=settings,
    )


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
    p.add_argument("--run", required=True, help="arch~../optimizer~../lr~../batch_size~../seed~..")
    _store_arguments(p, "train", "fold1_train's")
    _store_arguments(p, "test", "fold1_evaluate's")
    p.add_argument("--holdout", type=Path, required=True, help="validation.tsv")
    p.add_argument("--model", type=Path, required=True, help="model.pt to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    p.add_argument("--history", type=Path, required=True, help="history.tsv to write")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--selection", choices=["validation", "paper"], required=True)
    p.add_argument("--eval-batch-size", type=int, required=True)
    p.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, required=True, help="CUDA mixed precision"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument(
        "--features-settings",
        type=Path,
        required=True,
        help="train.json written by `ascsharp features`: recorded in model.pt with the weights",
    )
    p.add_argument(
        "--trajectory",
        type=Path,
        help="also store every epoch's weights (float16) here, for `ascsharp trajectory-plane`",
    )


@command(
    "train", "train one grid run; resumes from its last epoch checkpoint if killed", _train_args
)
def _train(args):
    from .train import TrainFiles, TrainSettings, train

    settings = TrainSettings(
        epochs=args.epochs,
        width=args.width,
        selection=args.selection,
        eval_batch_size=args.eval_batch_size,
        amp=args.amp,
    )
    try:
        features = json.loads(args.features_settings.read_text())["mel"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{args.features_settings}: not a feature store's settings ({e})"
        ) from None
    files = TrainFiles(
        train=_store(args, "train"),
        test=_store(args, "test"),
        holdout=args.holdout,
        model=args.model,
        metrics=args.metrics,
        history=args.history,
        trajectory=args.trajectory,
    )
    train(files, args.run, settings, features)


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
    _store_arguments(p, "features", "the store of the split:")
    p.add_argument(
        "--split",
        choices=["train", "test"],
        required=True,
        help="train: the clips the model was trained on (listed in model.pt); test: the test fold",
    )
    p.add_argument(
        "--clips",
        type=_clip_count,
        required=True,
        help="N: a fixed seeded selection of N of the split's clips (the same for every "
        "direction seed of a run); all: every one",
    )
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="shard~K.npz")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument(
        "--precision", required=True, help="forward precision: float32, tf32, bfloat16, float16"
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        required=True,
        help="torch.compile the forward (on CUDA only)",
    )
    p.add_argument(
        "--refine-radius",
        type=float,
        default=None,
        help="with a fast --precision, re-evaluate in IEEE float32 the points that decide the "
        "sharpness within this radius (sharpness.radius), so that it is IEEE-exact; the shard "
        "must hold the whole grid (--shards 1)",
    )
    _grid_arguments(p)


@command(
    "landscape-shard", "evaluate one shard of a surface's grid points (resumable)", _shard_args
)
def _landscape_shard(args):
    from .landscape import evaluate_shard

    evaluate_shard(
        model_path=args.model,
        directions_path=args.directions,
        store=_store(args, "features"),
        split=args.split,
        clips=args.clips,
        batch_size=args.batch_size,
        grid=_grid(args),
        n_shards=args.shards,
        shard=args.shard,
        out=args.out,
        precision=args.precision,
        compile=args.compile,
        refine_radius=args.refine_radius,
    )


def _gather_args(p):
    p.add_argument("shards", type=Path, nargs="+", help="every shard~K.npz of one surface")
    p.add_argument("--out", type=Path, required=True, help="surface.h5")
    p.add_argument(
        "--contour", type=Path, nargs="+", help="also plot a contour here (.png, .svg, .pdf)"
    )
    p.add_argument(
        "--surface3d", type=Path, nargs="+", help="also plot a 3-D surface here (.png, .svg)"
    )


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


# --- measures beyond the landscape: Hessian, adaptive sharpness, Jiang et al.'s -------------
# Each measure's settings in the config (measures.<name>, minus `enabled`) are required options
# of its job: the schema says which they are and holds their defaults. The variants below are
# not in the config; left out, the measure's options class decides (ascsharp.adaptive).
_VARIANTS = {
    "adaptive_average": ("plain", "parameters", "antithetic"),
    "adaptive_worst": ("plain", "parameters", "step_size"),
}


def _measure_variants() -> dict[str, tuple[str, ...]]:
    """Every measure (a block with `enabled` in the schema's `measures` section; the same names
    as ascsharp.measure_job.MEASURES, which imports torch: too slow for building the parser)."""
    from .config import load_schema

    section = load_schema()["properties"]["measures"]["properties"]
    names = [n for n, block in section.items() if "enabled" in block.get("properties", {})]
    return {m: _VARIANTS.get(m, ()) for m in names}


def _configured_options(measure: str) -> list[str]:
    from .config import load_schema

    section = load_schema()["properties"]["measures"]["properties"][measure]["properties"]
    return [name for name in section if name != "enabled"]


def _measure_args(p):
    p.add_argument("--measure", choices=list(_measure_variants()), required=True)
    p.add_argument("--model", type=Path, required=True, help="results/models/{run}/model.pt")
    _store_arguments(p, "features", "the train store's")
    p.add_argument(
        "--clips",
        type=_clip_count,
        required=True,
        help="N: a fixed seeded selection of N clips, the same for every measure of a run; "
        "all: every one (the landscape's --clips with --selection landscape)",
    )
    p.add_argument(
        "--selection",
        choices=["landscape", "measures"],
        required=True,
        help="landscape: the clips of the run's surfaces (its --split, --clips and seeded "
        "selection); measures: a selection of the model's training clips of the measures' own",
    )
    p.add_argument(
        "--split",
        choices=["train", "test"],
        default="train",
        help="with --selection landscape: the landscape's split (train: the model's own clips)",
    )
    p.add_argument("--out", type=Path, required=True, help="results/measures/{run}/{measure}.json")
    p.add_argument(
        "--seed", type=int, required=True, help="noise / start-vector seed (with the run)"
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when visible)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g = p.add_argument_group("settings of every measure (config: measures.<measure>)")
    g.add_argument("--batch-size", type=int, help="clips per chunk: memory only")
    g = p.add_argument_group("hessian (config: measures.hessian)")
    g.add_argument("--top-k", type=int, help="top eigenvalues by Lanczos")
    g.add_argument("--lanczos-tol", type=float, help="ARPACK relative accuracy")
    g.add_argument("--trace-samples", type=int, help="HVPs for the trace")
    g.add_argument("--trace-estimator", choices=["hutchinson", "hutch++"], help="trace estimator")
    g.add_argument(
        "--parameters",
        choices=["all", "weights"],
        help="all parameters, or only tensors with >= 2 dimensions (hessian: config; adaptive: "
        "a variant, not in the config)",
    )
    g = p.add_argument_group(
        "adaptive sharpness, Andriushchenko et al. 2023 (config: measures.adaptive_average, "
        "measures.adaptive_worst)"
    )
    g.add_argument("--rho", type=float, help="radius / noise scale in |w| units")
    g.add_argument("--samples", type=int, help="average case: noise draws")
    g.add_argument("--p", choices=["2", "inf"], help="worst case: norm of the ball")
    g.add_argument("--steps", type=int, help="worst case: ascent steps per restart")
    g.add_argument("--restarts", type=int, help="worst case: restarts per batch")
    # Parsed in _measure: None must stay "not given", and `all` is None to the measure.
    g.add_argument("--m", help="worst case: clips per batch; all: one batch")
    g.add_argument(
        "--search",
        choices=["reference", "strong"],
        help="worst case: the ascent (reference: theirs)",
    )
    g = p.add_argument_group("Jiang et al. 2020 (config: measures.pacbayes, .norms, .margin)")
    g.add_argument("--depth", type=int, help="pacbayes: bisection steps at most")
    g = p.add_argument_group("variants, not in the config (default: adaptive, all parameters)")
    g.add_argument("--plain", action="store_true", default=None, help="T_w = I instead of |w|")
    g.add_argument(
        "--antithetic", action="store_true", default=None, help="average case: +delta and -delta"
    )
    g.add_argument("--step-size", type=float, help="worst case: first step length (2 rho)")


@command(
    "measure",
    "Hessian eigenvalues/trace, adaptive sharpness or one of Jiang et al.'s measures of one "
    "model on its landscape's clips (resumable)",
    _measure_args,
)
def _measure(args):
    from .measure_job import run_measure

    variants = _measure_variants()
    configured = _configured_options(args.measure)
    allowed = {*configured, *variants[args.measure]}
    every = {d for m in variants for d in (*_configured_options(m), *variants[m])}
    given = {d: getattr(args, d) for d in sorted(every) if getattr(args, d) is not None}
    for dest in given.keys() - allowed:
        raise ValueError(f"--{dest.replace('_', '-')} does not apply to --measure {args.measure}")
    for dest in [d for d in configured if d not in given]:
        raise ValueError(f"--{dest.replace('_', '-')} is required with --measure {args.measure}")
    options = {}
    for dest, value in given.items():
        if dest == "plain":
            options["adaptive"] = False
        elif dest == "m":
            try:
                options["m"] = _clip_count(value)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"--m {e}") from None
        else:
            options[dest] = value
    run_measure(
        measure=args.measure,
        model_path=args.model,
        store=_store(args, "features"),
        clips=args.clips,
        out=args.out,
        options=options,
        seed=args.seed,
        selection=args.selection,
        split=args.split,
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
    from .published import paper_table, read_paper_table

    table = paper_table(args.csv, args.summary, args.correlations)
    _paper_table_log_granulated(table)
    if args.scatter:
        from .figures import scatter_sharpness

        scatter_sharpness(
            read_paper_table(args.csv),
            "mean_sharpness",
            out_png=args.scatter,
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
        "--measures", type=Path, nargs="*", required=True, help="every results/measures JSON"
    )
    p.add_argument("--exclude", required=True, help="analysis.exclude as JSON")
    p.add_argument(
        "--converged-min-train-accuracy",
        type=float,
        required=True,
        help="a run converged when its losses are finite and its final train accuracy reaches this",
    )
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
    p.add_argument("--bootstrap", type=int, required=True, help="bootstrap resamples for CIs")
    p.add_argument("--seed", type=int, required=True)
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


# --- figures and report tables ----------------------------------------------------------------
# Every figure option takes the same figure's paths in one or more formats (.png, .svg, .pdf).
def _figure_option(p, name: str, what: str) -> None:
    p.add_argument(f"--{name}", type=Path, nargs="+", required=True, help=f"{what} (.png, .svg)")


def _read_table(path: Path, columns=()):
    """A TSV written by the workflow, or a one-line error naming the file."""
    import pandas as pd

    from .correlation import require_columns

    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable TSV table ({e})") from None
    require_columns(table, columns, str(path))
    return table


def _figure_runs(summary, subsets):
    """The runs the figures show: the headline subset when it has enough runs for correlations,
    else the next larger one; with too few runs everywhere, the largest, with a note."""
    from .correlation import MIN_RUNS
    from .progress import get_logger
    from .summary import SUBSETS, subset_runs

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
        _figure_option(p, name, what)
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
    from . import figures as fig
    from .correlation import HEADLINE_MEASURE as measure
    from .correlation import PAPER_TARGETS, TABLE_COLUMNS
    from .meta import DEVICES
    from .runs import RUN_KEYS

    devices = [f"acc_{d}" for d in DEVICES]
    needed = ["converged", "excluded", measure, *RUN_KEYS, *PAPER_TARGETS, *devices]
    summary = _read_table(args.summary, needed)
    if not summary.columns.str.startswith("sharpness_seed").any():
        raise ValueError(f"{args.summary}: no sharpness_seed<d> column (one per direction seed)")
    corr = _read_table(args.correlations, ["subset", *TABLE_COLUMNS])
    subset, runs, note = _figure_runs(summary, set(corr["subset"]))
    table = corr[corr["subset"] == subset]
    title = f"{len(runs)} runs ({subset})"
    fig.scatter_sharpness(runs, measure, out_png=args.scatter, title=title, note=note)
    fig.device_facets(runs, measure, args.devices, note=note)
    fig.correlation_heatmap(table, args.heatmap, note=note)
    fig.group_facets(runs, measure, "optimizer", args.by_optimizer, note=note)
    fig.group_facets(runs, measure, "arch", args.by_arch, note=note)
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


def _training_args(p):
    p.add_argument("--history", type=Path, nargs="+", required=True, help="history.tsv per run")
    p.add_argument(
        "--metrics", type=Path, nargs="+", required=True, help="metrics.json per run, same order"
    )
    _figure_option(p, "out", "the figure")


@command(
    "training-curves",
    "loss and accuracy per epoch of some runs (one optimiser's), selected epoch marked",
    _training_args,
)
def _training_curves(args):
    import pandas as pd

    from .figures import run_label, training_curves, value_name

    if len(args.history) != len(args.metrics):
        raise ValueError(
            f"--history has {len(args.history)} files, --metrics {len(args.metrics)}: "
            "one of each per run, in the same order"
        )
    tables, optimizers = [], set()
    for hist, path in zip(args.history, args.metrics, strict=True):
        try:
            metrics = json.loads(path.read_text())
            run, epoch, split = metrics["hyperparameters"], metrics["epoch"], metrics["selected_on"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a metrics.json ({e})") from None
        table = _read_table(hist, ["epoch", "train_loss", "select_loss"])
        tables.append(table.assign(run=run_label(run), selected_epoch=epoch, selected_on=split))
        optimizers.add(value_name(run["optimizer"]))
    history = pd.concat(tables, ignore_index=True)
    names = ", ".join(sorted(optimizers))
    title = f"{names}: training curves of {len(tables)} runs (dotted: selected epoch)"
    training_curves(history, args.out, title=title)


def _montage_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="surface.h5 of every run to show")
    p.add_argument("--radius", type=float, required=True, help="ε of the disk drawn")
    _figure_option(p, "out", "the montage")


@command(
    "landscape-montage",
    "every run's loss landscape as filled contours on one colour scale",
    _montage_args,
)
def _landscape_montage(args):
    from .figures import landscape_montage, value_name
    from .runs import parse_run_id
    from .surface import read_surface, surface_identity

    surfaces, seeds = [], set()
    for path in args.surfaces:
        run, seed = surface_identity(path)
        surfaces.append(({**parse_run_id(run), "run": run}, *read_surface(path)))
        seeds.add(seed)
    archs = ", ".join(sorted({value_name(hp["arch"]) for hp, *_ in surfaces}))
    seed_text = ", ".join(map(str, sorted(seeds)))
    title = f"{archs}: loss landscapes of {len(surfaces)} runs, direction seed {seed_text}"
    landscape_montage(surfaces, args.out, radius=args.radius, title=title)


def _views_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="every direction seed's surface.h5")
    p.add_argument("--radius", type=float, required=True, help="ε of the disk drawn")
    _figure_option(p, "slices", "1-D slices through the trained weights")


@command(
    "landscape-views",
    "one run's landscapes: 1-D slices through the trained weights, every direction seed",
    _views_args,
)
def _landscape_views(args):
    from .figures import landscape_slices, run_label
    from .runs import parse_run_id
    from .surface import read_surface, run_surfaces

    run, path_by_seed = run_surfaces(args.surfaces)
    surfaces = [(seed, *read_surface(path)) for seed, path in path_by_seed.items()]
    title = run_label(parse_run_id(run))
    landscape_slices(surfaces, args.slices, radius=args.radius,
                     title=f"{title}: slices through the trained weights")  # fmt: skip


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

    from .figures import run_label
    from .report_html import surfaces_page
    from .runs import parse_run_id
    from .surface import read_surface, run_surfaces, surface_identity

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
    _figure_option(p, "figure", "ours against the published values")


@command(
    "compare-published",
    "our runs against the published runs with the same hyperparameters",
    _compare_args,
)
def _compare_published(args):
    from .figures import paper_comparison
    from .io import write_table
    from .published import COMPARED, compare_with_published, read_paper_table
    from .report_html import html_table
    from .runs import RUN_KEYS

    summary = _read_table(args.summary, ["run", *RUN_KEYS, *COMPARED])
    table = compare_with_published(summary, read_paper_table(args.published))
    write_table(args.table, table)
    note = None
    if table.empty:
        note = "no run of this grid has the hyperparameters of a published run (paper preset)"
    paper_comparison(table, args.figure, note=note)
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
    from .report_html import answer_page, headline_answer, headline_rows, html_table

    summary = _read_table(args.summary, ["run"])
    html_table(
        summary,
        args.summary_html,
        title=f"summary.tsv: {len(summary)} runs",
        caption="One row per run: hyperparameters, accuracies (fractions), every sharpness "
        "variant and measure.",
    )
    ours = _read_table(args.correlations, ["subset", "family"])
    published = _read_table(args.published_correlations, ["family"])
    ranking = _read_table(args.ranking, ["measure", "target", "subset"])
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
    from .cost import cost_table
    from .io import atomic_path

    table = cost_table(args.benchmarks)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, sep="\t", index=False)


# --- views of Li et al. 2018: interpolation between two models, trajectory PCA plane ---------
def _view_clip_arguments(p) -> None:
    """The landscape's clips and forward settings (config: landscape.split, clips, ...)."""
    _store_arguments(p, "features", "the store of the split:")
    p.add_argument("--split", choices=["train", "test"], required=True, help="as the landscape's")
    p.add_argument("--clips", type=_clip_count, required=True, help="as the landscape's")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--precision", required=True, help="float32, tf32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def _interpolate_args(p):
    p.add_argument("--model-a", type=Path, required=True, help="θ₁: model.pt at α = 0")
    p.add_argument("--model-b", type=Path, required=True, help="θ₂: model.pt at α = 1")
    p.add_argument("--alpha", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)
    p.add_argument(
        "--bn-statistics",
        choices=["interpolate", "recompute"],
        required=True,
        help="BN running statistics along the line: interpolated, or recomputed on the clips",
    )
    _view_clip_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the interpolation's JSON")
    _figure_option(p, "figure", "loss and accuracy along α")


@command(
    "interpolate",
    "loss and accuracy along the line between two trained models (Li et al. 2018)",
    _interpolate_args,
)
def _interpolate(args):
    from .views import alpha_grid, interpolation_job, plot_interpolation

    if int(args.alpha[2]) != args.alpha[2] or args.alpha[2] < 1:
        raise ValueError(f"--alpha NUM {args.alpha[2]:g}: expected a positive integer")
    doc = interpolation_job(
        model_a=args.model_a,
        model_b=args.model_b,
        store=_store(args, "features"),
        split=args.split,
        clips=args.clips,
        batch_size=args.batch_size,
        alphas=alpha_grid(args.alpha[0], args.alpha[1], int(args.alpha[2])),
        bn_statistics=args.bn_statistics,
        precision=args.precision,
        out=args.out,
    )
    plot_interpolation(doc, args.figure)


def _trajectory_args(p):
    p.add_argument("--model", type=Path, required=True, help="results/models/{run}/model.pt")
    p.add_argument("--trajectory", type=Path, required=True, help="its trajectory.h5")
    p.add_argument(
        "--parameters",
        choices=["weights", "all"],
        required=True,
        help="PCA over tensors with > 1 dimension (as the landscape perturbs) or all parameters",
    )
    p.add_argument("--num", type=int, required=True, help="grid points per axis of the plane")
    p.add_argument(
        "--margin", type=float, required=True, help="grid beyond the path, in path extents"
    )
    _view_clip_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the plane's surface (.h5)")
    _figure_option(p, "figure", "loss contour with the projected path")


@command(
    "trajectory-plane",
    "PCA plane of one run's training trajectory, with the loss on it (Li et al. 2018)",
    _trajectory_args,
)
def _trajectory_plane(args):
    from .figures import run_label
    from .runs import parse_run_id
    from .views import plot_trajectory, trajectory_plane_job

    if args.num < 2 or args.margin < 0:
        raise ValueError(f"--num {args.num} must be >= 2 and --margin {args.margin} >= 0")
    result = trajectory_plane_job(
        model=args.model,
        trajectory=args.trajectory,
        store=_store(args, "features"),
        split=args.split,
        clips=args.clips,
        batch_size=args.batch_size,
        parameters=args.parameters,
        num=args.num,
        margin=args.margin,
        precision=args.precision,
        out=args.out,
    )
    title = run_label(parse_run_id(result["attrs"]["run"])) + "\ntraining path on its PCA plane"
    plot_trajectory(args.out, args.figure, title=title)


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
    from .io import Terminated, handle_termination, one_line

    try:
        with handle_termination():  # SIGTERM/SIGINT unwind like an error: temporaries removed
            args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        # One line naming the file or key; the traceback adds nothing for bad input.
        args._parser.exit(2, f"ascsharp {args.command}: error: {one_line(e)}\n")
    except Terminated as e:
        message = f"ascsharp {args.command}: {e}; temporary files removed\n"
        args._parser.exit(128 + e.signum, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
