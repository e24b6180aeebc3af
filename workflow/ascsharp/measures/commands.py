"""`ascsharp measure`: one measure beyond the landscape (Hessian, adaptive sharpness, Jiang et
al.'s) of one model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ascsharp.core.commands import clip_count, command
from ascsharp.features.commands import open_store, store_arguments

# --- measures beyond the landscape: Hessian, adaptive sharpness, Jiang et al.'s -------------
# Each measure's settings in the config (measures.<name>, minus `enabled`) are required options
# of its job: the schema says which they are and holds their defaults. The variants below are
# not in the config; left out, the measure's options class decides (ascsharp.measures.adaptive).
_VARIANTS = {
    "adaptive_average": ("plain", "parameters", "antithetic"),
    "adaptive_worst": ("plain", "parameters", "step_size"),
}


def _measure_variants() -> dict[str, tuple[str, ...]]:
    """Every measure (a block with `enabled` in the schema's `measures` section; the same names
    as ascsharp.measures.job.MEASURES, which imports torch: too slow for building the parser)."""
    from ascsharp.core.config import load_schema

    section = load_schema()["properties"]["measures"]["properties"]
    names = [n for n, block in section.items() if "enabled" in block.get("properties", {})]
    return {m: _VARIANTS.get(m, ()) for m in names}


def _configured_options(measure: str) -> list[str]:
    from ascsharp.core.config import load_schema

    section = load_schema()["properties"]["measures"]["properties"][measure]["properties"]
    return [name for name in section if name != "enabled"]


def _measure_args(p):
    p.add_argument("--measure", choices=list(_measure_variants()), required=True)
    p.add_argument("--model", type=Path, required=True, help="results/models/{run}/model.pt")
    store_arguments(p, "features", "the train store's")
    p.add_argument(
        "--clips",
        type=clip_count,
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
    from ascsharp.measures.job import run_measure

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
                options["m"] = clip_count(value)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"--m {e}") from None
        else:
            options[dest] = value
    run_measure(
        measure=args.measure,
        model_path=args.model,
        store=open_store(args, "features"),
        clips=args.clips,
        out=args.out,
        options=options,
        seed=args.seed,
        selection=args.selection,
        split=args.split,
        device=args.device,
    )
