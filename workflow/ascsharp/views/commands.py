"""Views of Li et al. (2018): `ascsharp interpolate` and `ascsharp trajectory-plane`."""

from __future__ import annotations

from pathlib import Path

from ascsharp.core.commands import command, figure_option, threads_option
from ascsharp.core.settings import add_options
from ascsharp.features.commands import open_store, store_arguments


# --- views of Li et al. 2018: interpolation between two models, trajectory PCA plane ---------
def _view_clip_arguments(p) -> None:
    """The landscape's clips and forward settings (config: landscape.split, clips, ...)."""
    store_arguments(p, "features", "the store of the split:")
    add_options(p, "landscape", ("split", "clips", "batch_size", "precision"))
    threads_option(p)


def _interpolate_args(p):
    p.add_argument("--model-a", type=Path, required=True, help="θ₁: model.pt at α = 0")
    p.add_argument("--model-b", type=Path, required=True, help="θ₂: model.pt at α = 1")
    p.add_argument("--alpha", type=float, nargs=3, metavar=("MIN", "MAX", "NUM"), required=True)
    add_options(p, "views.interpolation", ("bn_statistics",))
    _view_clip_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the interpolation's JSON")
    figure_option(p, "figure", "loss and accuracy along α")


@command(
    "interpolate",
    "loss and accuracy along the line between two trained models (Li et al. 2018)",
    _interpolate_args,
)
def _interpolate(args):
    from ascsharp.views.figures import plot_interpolation
    from ascsharp.views.interpolation import alpha_grid, interpolation_job

    if int(args.alpha[2]) != args.alpha[2] or args.alpha[2] < 1:
        raise ValueError(f"--alpha NUM {args.alpha[2]:g}: expected a positive integer")
    doc = interpolation_job(
        model_a=args.model_a,
        model_b=args.model_b,
        store=open_store(args, "features"),
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
    add_options(p, "views.trajectory", ("parameters", "num", "margin"))
    _view_clip_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the plane's surface (.h5)")
    figure_option(p, "figure", "loss contour with the projected path")


@command(
    "trajectory-plane",
    "PCA plane of one run's training trajectory, with the loss on it (Li et al. 2018)",
    _trajectory_args,
)
def _trajectory_plane(args):
    from ascsharp.core.plotting import run_label
    from ascsharp.core.runs import parse_run_id
    from ascsharp.views.figures import plot_trajectory
    from ascsharp.views.trajectory import trajectory_plane_job

    result = trajectory_plane_job(
        model=args.model,
        trajectory=args.trajectory,
        store=open_store(args, "features"),
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
