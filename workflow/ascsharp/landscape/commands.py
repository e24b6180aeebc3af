"""Landscape commands: directions, one shard of grid points, gathering a surface, its sharpness,
and the landscape figures drawn from the surfaces."""

from __future__ import annotations

import json
from pathlib import Path

from ascsharp.core.commands import command, figure_option, threads_option
from ascsharp.core.settings import add_options
from ascsharp.features.commands import open_store, store_arguments


def _grid_arguments(p):
    p.add_argument("--x", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)
    p.add_argument("--y", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)


def _grid(args):
    from ascsharp.core.surface import Grid

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
    from ascsharp.landscape.directions import make_directions, save_directions
    from ascsharp.train.checkpoint import load_model

    model, ckpt = load_model(args.model)
    dx, dy = make_directions(model, ckpt["run"], args.direction_seed)
    save_directions(args.out, dx, dy, {"run": ckpt["run"], "direction_seed": args.direction_seed})


def _shard_args(p):
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--directions", type=Path, required=True)
    store_arguments(p, "features", "the store of the split:")
    add_options(p, "landscape", ("split", "clips", "batch_size", "shards", "precision", "compile"))
    p.add_argument("--shard", type=int, required=True, help="which of the --shards (0, 1, ...)")
    p.add_argument("--out", type=Path, required=True, help="shard~K.npz")
    threads_option(p)
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
    from ascsharp.landscape.compute import evaluate_shard

    evaluate_shard(
        model_path=args.model,
        directions_path=args.directions,
        store=open_store(args, "features"),
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
    from ascsharp.core.io import provenance
    from ascsharp.core.surface import gather
    from ascsharp.landscape.figures import plot_surface

    gather(args.shards, args.out, attrs={"provenance": provenance()})
    if args.contour and args.surface3d:
        plot_surface(args.out, args.contour, args.surface3d, title=_surface_title(args.out))


def _surface_title(surface: Path) -> str:
    """`arch~cnn10/optimizer~adam/lr~0.001` over `batch_size~16/seed~42, direction seed 42`."""
    from ascsharp.core.surface import surface_identity

    run, seed = surface_identity(surface)
    parts = run.split("/")
    return "/".join(parts[:3]) + "\n" + "/".join(parts[3:]) + f", direction seed {seed}"


# --- sharpness --------------------------------------------------------------------------------
def _sharpness_args(p):
    from ascsharp.landscape.sharpness import PAPER, REFERENCES, REGIONS

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
    from ascsharp.core.io import json_safe
    from ascsharp.landscape.sharpness import sharpness_from_h5

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
    from ascsharp.core.io import provenance, write_json
    from ascsharp.landscape.sharpness import all_variants

    result = all_variants(args.surfaces, radius=args.radius)
    write_json(args.out, {**result, "provenance": provenance()})


def _montage_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="surface.h5 of every run to show")
    p.add_argument(
        "--sharpness",
        type=Path,
        nargs="+",
        required=True,
        help="results/sharpness/{run}.json of the same runs: the value printed and ε drawn",
    )
    figure_option(p, "out", "the montage")


@command(
    "landscape-montage",
    "every run's loss landscape as filled contours on one colour scale",
    _montage_args,
)
def _landscape_montage(args):
    from ascsharp.core.plotting import value_name
    from ascsharp.core.runs import parse_run_id
    from ascsharp.core.surface import read_surface, surface_identity
    from ascsharp.landscape.figures import landscape_montage
    from ascsharp.landscape.sharpness import read_run_sharpness, seed_sharpness

    results = {}
    for path in args.sharpness:
        result = read_run_sharpness(path)
        results[result["run"]] = result
    radii = {result["radius"] for result in results.values()}
    if len(radii) != 1:
        raise ValueError(f"{args.sharpness[0]}: the runs' sharpness has several radii {radii}")
    surfaces, seeds, values = [], set(), {}
    for path in args.surfaces:
        run, seed = surface_identity(path)
        if run not in results:
            raise ValueError(f"{path}: no sharpness file of run {run} among --sharpness")
        values[run] = seed_sharpness(results[run], seed)
        surfaces.append(({**parse_run_id(run), "run": run}, *read_surface(path)))
        seeds.add(seed)
    archs = ", ".join(sorted({value_name(hp["arch"]) for hp, *_ in surfaces}))
    seed_text = ", ".join(map(str, sorted(seeds)))
    title = f"{archs}: loss landscapes of {len(surfaces)} runs, direction seed {seed_text}"
    landscape_montage(surfaces, args.out, radius=radii.pop(), sharpness=values, title=title)


def _views_args(p):
    p.add_argument("surfaces", type=Path, nargs="+", help="every direction seed's surface.h5")
    p.add_argument("--radius", type=float, required=True, help="ε of the disk drawn")
    figure_option(p, "slices", "1-D slices through the trained weights")


@command(
    "landscape-views",
    "one run's landscapes: 1-D slices through the trained weights, every direction seed",
    _views_args,
)
def _landscape_views(args):
    from ascsharp.core.plotting import run_label
    from ascsharp.core.runs import parse_run_id
    from ascsharp.core.surface import read_surface, run_surfaces
    from ascsharp.landscape.figures import landscape_slices

    run, path_by_seed = run_surfaces(args.surfaces)
    surfaces = [(seed, *read_surface(path)) for seed, path in path_by_seed.items()]
    title = run_label(parse_run_id(run))
    landscape_slices(surfaces, args.slices, radius=args.radius,
                     title=f"{title}: slices through the trained weights")  # fmt: skip
