"""Views of Li et al. (2018): `ascsharp interpolate` and `ascsharp trajectory-plane`."""

from __future__ import annotations

from pathlib import Path

from ascsharp.core.commands import clip_count, command, figure_option
from ascsharp.features.commands import open_store, store_arguments


# --- views of Li et al. 2018: interpolation between two models, trajectory PCA plane ---------
def _view_clip_arguments(p) -> None:
    """The landscape's clips and forward settings (config: landscape.split, clips, ...)."""
    store_arguments(p, "features", "the store of the split:")
    p.add_argument("--split", choices=["train", "test"], required=True, help="as the landscape's")
    p.add_argument("--clips", type=clip_count, required=True, help="as the landscape's")
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

    if args.num < 2 or args.margin < 0:
        raise ValueError(f"--num {args.num} must be >= 2 and --margin {args.margin} >= 0")
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
