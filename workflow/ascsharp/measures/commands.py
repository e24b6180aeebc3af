"""`ascsharp measure`: one measure beyond the landscape (Hessian, adaptive sharpness, Jiang et
al.'s) of one model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ascsharp.core.commands import clip_count, command, threads_option
from ascsharp.core.settings import add_options, flag, section
from ascsharp.features.commands import open_store, store_arguments
from ascsharp.measures import MEASURES

# --- measures beyond the landscape: Hessian, adaptive sharpness, Jiang et al.'s -------------
# Each measure's settings in the config (measures.<name>, minus `enabled`) are options of its
# job, required with that measure and refused with the others; the schema states them (type,
# bounds, choices, help) and holds their defaults. The variants below are not in the config;
# left out, the measure's options class decides (ascsharp.measures.adaptive).
_VARIANTS = {
    "adaptive_average": ("plain", "parameters", "antithetic"),
    "adaptive_worst": ("plain", "parameters", "step_size"),
}


def _settings() -> dict[str, tuple[str, ...]]:
    """measure -> the keys of its config block that its job reads (all but `enabled`)."""
    return {m: tuple(k for k in section(f"measures.{m}") if k != "enabled") for m in MEASURES}


def _measure_args(p):
    p.add_argument("--measure", choices=MEASURES, required=True)
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
    add_options(p, "landscape", ("split",))
    p.add_argument("--out", type=Path, required=True, help="results/measures/{run}/{measure}.json")
    add_options(p, "measures", ("seed", "compile"))
    p.add_argument("--device", help="cuda or cpu (default: cuda when visible)")
    threads_option(p)
    g = p.add_argument_group(
        "settings of the measures (config: measures.<measure>): each measure requires its own "
        "and refuses the others'"
    )
    settings = _settings()
    for key in dict.fromkeys(k for keys in settings.values() for k in keys):
        having = [f"measures.{m}" for m, keys in settings.items() if key in keys]
        # `--m all` (one batch) is parsed in _measure: None must stay "not given".
        add_options(g, having, (key,), required=False, types={"m": str})
    g = p.add_argument_group(
        "variants, not in the config (default: adaptive, all parameters; --parameters applies "
        "to adaptive sharpness too)"
    )
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

    settings = _settings()
    configured = settings[args.measure]
    allowed = {*configured, *_VARIANTS.get(args.measure, ())}
    every = {d for keys in (*settings.values(), *_VARIANTS.values()) for d in keys}
    given = {d: getattr(args, d) for d in sorted(every) if getattr(args, d) is not None}
    for dest in given.keys() - allowed:
        raise ValueError(f"{flag(dest)} does not apply to --measure {args.measure}")
    for dest in [d for d in configured if d not in given]:
        raise ValueError(f"{flag(dest)} is required with --measure {args.measure}")
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
        compile=args.compile,
    )
