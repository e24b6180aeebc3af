"""What the paper preset costs, stage by stage: measured unit times, extrapolated GPU-hours.

Each stage is timed as its job runs it, on this device, at the model size given (the paper's:
CNN10/CNN14 at width 1 on 10-s clips, 1001 frames x 64 mels; `--reduced`: width 1/8 and 100
frames, for a CPU in CI):

- train: one epoch of the workflow's own loop (train._train_epoch, the split in device memory)
  per (architecture, optimiser, batch size) of the preset, plus SAM if asked; the paper's
  selection also evaluates the test fold after every epoch (timed as `select`, through the
  job's `predict`). Each under every `--train-variants` (bench_train.py: `autotune`, `compile`,
  `cudagraphs` joined by `+`, or `eager`; default: the job as the preset runs it, autotuned and
  compiled where its train.compile says), the first variant's hours going into the totals;
- landscape: grid points of one evaluate_points call (after its first point, which pays the
  start-up), at every precision available here, eager and, on CUDA, compiled;
- hessian: one Hessian-vector product (curvlinops, IEEE float32 as the measure job runs it);
- adaptive_average and pacbayes: one forward over the clips; adaptive_worst: one ascent step
  (gradient over m clips). (norms and margin cost one forward pass at most: left out.)

Per stage it prints the measured seconds per unit, the FLOPs of the unit, the fraction of the
GEMM rate measured in the same run at the precision used, the units that the paper preset needs
(counted from workflow/presets/paper.yaml over the schema's defaults: `preset_units`) and their
hours. Unit times at the measured size are scaled to the paper's by FLOPs (the same on a GPU at
full size, where only the clip count differs); on CPU `--reduced` the hours are CPU-hours at
the reduced size's fraction of the GEMM rate, an extrapolation to read as a ratio only.

Run: `python tests/benchmarks/bench_paper.py --device cuda` (about 3 minutes on an H200, most of
it compilation), or `--device cpu --reduced`. `--only train --archs cnn10 --optimizers adam
--batch-sizes 32 --epochs 3` times one training configuration alone (for concurrent processes).
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    PAPER_CLIPS,
    PAPER_FRAMES,
    PAPER_TEST_CLIPS,
    PointStamps,
    gemm_rate,
    model_flops,
    quiet_logger,
    sync,
    time_call,
)
from bench_train import (  # noqa: E402
    epoch_job,
    timed_epochs,
    variant,
    variant_context,
    variant_stepper,
    workflow_variant,
)

from ascsharp.core.config import schema_defaults  # noqa: E402
from ascsharp.core.runs import expand_grid  # noqa: E402
from ascsharp.core.surface import Grid  # noqa: E402
from ascsharp.landscape.compute import evaluate_points
from ascsharp.train.evaluate import (
    PRECISIONS,
    EvalForward,
    autotuned,
    forward_precision,
    predict,
)
from ascsharp.train.loop import _train_epoch, batch_count  # noqa: E402
from ascsharp.train.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "workflow" / "presets" / "paper.yaml"
# The landscape last: its compilations take most of the time; a time limit (SIGINT) then cuts
# it short and the summary still prints what was measured.
STAGES = ("train", "hessian", "adaptive_average", "adaptive_worst", "pacbayes", "landscape")
# IEEE float32 points re-evaluated per surface (landscape.refine) by fast precision: the most
# bench_refine.py counted on trained CNN10s at ordinary losses (CPU, 2026-12-04: bfloat16
# 43-120, float16 12-23 of 121; tf32 shares float16's bound). Assumptions until measured on a GPU.
REFINED_POINTS = {"bfloat16": 120, "float16": 23, "tf32": 23}
MEASURE_STAGES = ("hessian", "adaptive_average", "adaptive_worst", "pacbayes")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_settings(*presets: Path) -> dict[str, Any]:
    """The presets' settings over the schema's defaults, merged in order as Snakemake merges
    --configfile files (the demo config.yaml is not read when a preset is given)."""
    config = schema_defaults()
    for preset in presets or (PRESET,):
        config = _merge(config, yaml.safe_load(preset.read_text()))
    return config


def preset_units(config: dict[str, Any], lanczos_hvps: int) -> dict:
    """How many of each stage's units the preset runs.

    train: {(arch, optimizer, batch_size): epochs summed over its runs}; select: {arch: epochs}
    (one test-fold evaluation per epoch with the paper's selection); landscape: grid points of
    all surfaces, refine: surfaces (times the IEEE points re-evaluated per surface, which
    depends on the fast precision: REFINED_POINTS); hessian: HVPs (Lanczos: `lanczos_hvps`, an
    assumption: ARPACK's count depends on the spectrum; plus one per Hutchinson vector);
    adaptive_average: forwards over the measure's clips; adaptive_worst: gradients over m clips;
    pacbayes: forwards over the clips (two variants x depth bisection steps x samples draws,
    plus the unperturbed accuracy: the most its search takes).
    """
    runs = expand_grid(config["grid"])
    epochs = config["train"]["epochs"]
    land, meas = config["landscape"], config["measures"]
    surfaces = len(runs) * len(land["direction_seeds"])
    points = land["x"]["num"] * land["y"]["num"]
    train = runs.groupby(["arch", "optimizer", "batch_size"]).size() * epochs
    select = runs.groupby("arch").size() * epochs if config["train"]["selection"] == "paper" else {}
    measure_clips = meas["clips"] or PAPER_CLIPS
    by_arch = runs.groupby("arch").size()
    avg, worst, hess = meas["adaptive_average"], meas["adaptive_worst"], meas["hessian"]
    pac = meas["pacbayes"]
    worst_batches = -(-measure_clips // worst["m"]) if worst["m"] else 1
    measures = ("hessian", "adaptive_average", "adaptive_worst", "pacbayes")
    on = {name: bool(meas[name]["enabled"]) for name in measures}
    return {
        "runs": len(runs),
        "surfaces": surfaces,
        "measure_clips": measure_clips,
        "worst_m": worst["m"] or measure_clips,
        "train": {tuple(k): int(v) for k, v in train.items()},
        "select": {k: int(v) for k, v in dict(select).items()},
        "landscape": {
            a: int(n) * len(land["direction_seeds"]) * points for a, n in by_arch.items()
        },  # fmt: skip
        "refine": {a: int(n) * len(land["direction_seeds"]) for a, n in by_arch.items()},
        "hessian": {
            a: int(n) * (lanczos_hvps + hess["trace_samples"]) * on["hessian"]
            for a, n in by_arch.items()
        },  # fmt: skip
        "adaptive_average": {
            a: int(n) * (avg["samples"] + 1) * on["adaptive_average"] for a, n in by_arch.items()
        },  # fmt: skip
        "adaptive_worst": {
            a: int(n) * worst_batches * worst["restarts"] * worst["steps"] * on["adaptive_worst"]
            for a, n in by_arch.items()
        },
        "pacbayes": {
            a: int(n) * (2 * pac["depth"] * pac["samples"] + 1) * on["pacbayes"]
            for a, n in by_arch.items()
        },
    }


@dataclass
class Row:
    stage: str
    what: str
    precision: str
    seconds: float  # per unit at the measured size
    flops: float  # per unit at the measured size
    peak: float  # GEMM FLOP/s at the precision
    units: int  # in the preset
    scale: float  # paper unit FLOPs / measured unit FLOPs
    preset: bool = True  # the preset's setting; False: an alternative, left out of the total

    @property
    def hours(self) -> float:
        return self.units * self.seconds * self.scale / 3600

    @property
    def floor_hours(self) -> float:
        """The same FLOPs at 100 % of the GEMM rate."""
        return self.units * self.flops * self.scale / self.peak / 3600

    def line(self) -> str:
        frac = self.flops / self.seconds / self.peak
        return (f"{self.stage:<16} {self.what:<28} {self.precision:<18} "
                f"{self.seconds * self.scale:10.4f} s/unit {frac:7.1%} of GEMM  "
                f"x {self.units:>9,} = {self.hours:8.2f} h"
                f"{'' if self.preset else '  (alternative)'}")  # fmt: skip


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.width = 0.125 if args.reduced else 1.0
        self.frames = 100 if args.reduced else PAPER_FRAMES
        self.config = preset_settings(*args.preset)
        self.units = preset_units(self.config, args.lanczos_hvps)
        self.refined = {**REFINED_POINTS, **dict(args.refined_points or [])}
        self.peaks: dict[str, float] = {}
        self.rows: list[Row] = []
        self.quiet = quiet_logger("bench_paper.quiet")

    def peak(self, precision: str) -> float:
        if precision not in self.peaks:
            self.peaks[precision] = gemm_rate(self.device, precision)
            print(f"GEMM at {precision}: {self.peaks[precision] / 1e12:,.3f} TFLOP/s "
                  "(measured in this run)", flush=True)  # fmt: skip
        return self.peaks[precision]

    def scale(self, arch: str, backward: bool) -> float:
        """Paper FLOPs per clip over measured FLOPs per clip (1 at the paper's size)."""
        if not self.args.reduced:
            return 1.0
        paper = model_flops(arch, 1.0, PAPER_FRAMES, backward)
        return paper / model_flops(arch, self.width, self.frames, backward)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(row.line(), flush=True)

    def model(self, arch: str) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(arch, n_classes=10, width=self.width, n_mels=64)
        return model.to(self.device)

    def clips(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 64, self.frames, generator=g)
        return x.to(self.device), torch.randint(0, 10, (n,), generator=g).to(self.device)

    # --- stages ------------------------------------------------------------------------------

    def train(self) -> None:
        a = self.args
        combos = sorted(self.units["train"])
        if a.sam:
            combos += [("cnn10", "sam", bs) for bs in sorted({c[2] for c in combos})]
        precision = "tf32" if self.cuda else "float32"  # PyTorch's default: TF32 convolutions
        variants = a.train_variants or [workflow_variant(self.config["train"]["compile"])]
        for name, (arch, optimizer, batch_size) in itertools.product(variants, combos):
            wanted = (a.archs, arch), (a.optimizers, optimizer), (a.batch_sizes, batch_size)
            if any(only and value not in only for only, value in wanted):
                continue
            stepper = variant_stepper(name, optimizer, self.model(arch))
            n = a.train_clips or (512 if self.cuda else 2 * batch_size)
            x, y = self.clips(n)
            job = epoch_job(x, y, batch_size, self.width, amp=False)
            with variant_context(name, self.device):
                if a.start_at:  # several processes: time the same window of wall time
                    _train_epoch(job, 0, stepper, self.device, self.quiet)  # warm-up
                    late = time.time() - a.start_at
                    time.sleep(max(0.0, -late))
                    window = time.time()
                    rows = [_train_epoch(job, e, stepper, self.device, self.quiet)
                            for e in range(1, a.epochs + 1)]  # fmt: skip
                    clips_per_s = max(r["clips_per_s"] for r in rows)
                    # no GEMM timing either: the others may still be in their window
                    print(f"  window {window:.3f} {time.time():.3f} clips {n * a.epochs} "
                          f"(late {max(0.0, late):.1f} s), best epoch {clips_per_s:,.1f} "
                          "clips/s", flush=True)  # fmt: skip
                    continue
                clips_per_s, startup = timed_epochs(job, stepper, self.device, a.epochs,
                                                    self.quiet)  # fmt: skip
            steps = batch_count(n, batch_size)
            # the unit is one epoch over the paper's clips: its steps at this step's time
            step_s = n / clips_per_s / steps
            paper_steps = batch_count(PAPER_CLIPS, batch_size)
            flops = model_flops(arch, self.width, self.frames, True) * batch_size
            units = self.units["train"].get((arch, optimizer, batch_size), 0)
            print(f"  {arch} {optimizer} batch {batch_size} {name}: {clips_per_s:,.1f} clips/s "
                  f"over {n} clips, start-up {startup:.1f} s", flush=True)  # fmt: skip
            self.add(Row("train epoch", f"{arch} {optimizer} b{batch_size}",
                         f"{precision} {name}", step_s * paper_steps, flops * paper_steps,
                         self.peak(precision), units, self.scale(arch, True)))  # fmt: skip
        if a.archs or a.optimizers or a.batch_sizes:
            return  # one configuration alone (concurrent processes): no selection
        eval_batch = self.config["train"]["eval_batch_size"]
        for name, (arch, units) in itertools.product(variants, self.units["select"].items()):
            # The job's evaluation forward: compiled with the training one, never CUDA graphs.
            stepper = variant_stepper(name.replace("cudagraphs", "compile"), "adam",
                                      self.model(arch))  # fmt: skip
            n = 1024 if self.cuda else 16
            x, _ = self.clips(n)

            run = functools.partial(predict, stepper.forward, x, eval_batch)
            with variant_context(name, self.device):
                run()
                sync(self.device)
                seconds = min(time_call(run, self.device) for _ in range(2))
            per = PAPER_TEST_CLIPS / n
            self.add(Row("select (epoch)", f"{arch} test fold", f"{precision} {name}",
                         seconds * per, model_flops(arch, self.width, self.frames, False) * n * per,
                         self.peak(precision), units, self.scale(arch, False)))  # fmt: skip

    def landscape(self) -> None:
        land = self.config["landscape"]
        grid = Grid(land["x"]["min"], land["x"]["max"], land["x"]["num"],
                    land["y"]["min"], land["y"]["max"], land["y"]["num"])  # fmt: skip
        n = self.args.landscape_clips or (512 if self.cuda else 16)
        batch = min(n, land["batch_size"])
        indices = list(range(self.args.points + 1))
        precisions = self.precisions("float32")
        compiled = self.args.compiled if self.cuda else []
        variants = [(p, False) for p in precisions] + [(p, True) for p in compiled]
        stamps = PointStamps()
        for arch, units in self.units["landscape"].items():
            if self.args.archs and arch not in self.args.archs:
                continue
            model = self.model(arch).eval()
            x, y = self.clips(n)
            from ascsharp.landscape.directions import make_directions

            dx, dy = make_directions(model, "bench", 0)
            flops = model_flops(arch, self.width, self.frames, False) * PAPER_CLIPS
            per = PAPER_CLIPS / n
            for precision, compiled in variants:
                stamps.clear()
                evaluate_points(model, dx, dy, x, y, grid, indices, batch_size=batch,
                                device=self.device, log=stamps.logger, precision=precision,
                                compile=compiled)  # fmt: skip
                first, rest = stamps.first_and_rest()
                seconds = rest / (len(indices) - 1) * per
                label = f"{precision}{' compiled' if compiled else ''}"
                print(f"  {arch} {label}: first point {first:.1f} s (start-up, compilation)",
                      flush=True)  # fmt: skip
                self.add(Row("landscape point", f"{arch} {n} clips -> {PAPER_CLIPS}", label,
                             seconds, flops, self.peak(precision), units,
                             self.scale(arch, False)))  # fmt: skip
                if precision == "float32":  # units: one point of every surface
                    self.add(Row("refine point", f"{arch} IEEE, 1 per surface", label, seconds,
                                 flops, self.peak(precision), self.units["refine"][arch],
                                 self.scale(arch, False)))  # fmt: skip

    def measures(self, stage: str) -> None:
        """One unit of a measure, timed as its job runs it now (cuDNN autotuned on CUDA; the
        evaluating measures on the fast eval forward at their precision, compiled with
        measures.compile on CUDA), and as it ran before (`--before`: the plain eval model in
        IEEE float32, no autotuning): the row that counts is the preset's setting."""
        from ascsharp.measures.common import Cost, loss_and_gradient, mean_loss
        from ascsharp.measures.curvature import hessian_operator

        meas = self.config["measures"]
        total = self.units["measure_clips"]
        settings = meas.get(stage, {})
        for arch, units in self.units[stage].items():
            if not units or (self.args.archs and arch not in self.args.archs):
                continue
            model = self.model(arch).eval()
            params = [p for p in model.parameters() if p.requires_grad]
            # (label, precision of the GEMM rate, callable, counts for the preset)
            variants: list[tuple[str, str, Callable[[], Any], bool]] = []
            if stage == "hessian":
                n = 256 if self.cuda else 4
                x, y = self.clips(n)
                op = hessian_operator(model, x, y, settings["batch_size"])
                v = torch.randn(op.shape[1], device=self.device)
                hvp = functools.partial(op.__matmul__, v)
                # the preset's products, then (CUDA) the other kind: measures.hessian.tf32
                for tf32 in (settings["tf32"], not settings["tf32"])[: 2 if self.cuda else 1]:
                    label = "tf32" if tf32 else "float32 (IEEE)"
                    variants.append((label, label.split()[0], hvp, tf32 == settings["tf32"]))
                backward, per, what = True, total / n, f"HVP over {total} clips"
                # forward-over-reverse: about two gradients' FLOPs (an estimate)
                flops_clip = 2 * model_flops(arch, self.width, self.frames, True)
            elif stage in ("adaptive_average", "pacbayes"):
                n = 512 if self.cuda else 8
                x, y = self.clips(n)
                batch = settings["batch_size"]
                compiled = self.cuda and meas["compile"]
                for precision in self.precisions(settings["precision"]):
                    fast = EvalForward(model, precision=precision, compile=compiled)
                    label = f"{precision}{' compiled' if compiled else ''} fast path"
                    variants.append((label, precision, functools.partial(
                        mean_loss, model, x, y, batch, Cost(), fast=fast),
                        precision == settings["precision"]))  # fmt: skip
                backward, per, what = False, total / n, f"forward over {total} clips"
                flops_clip = model_flops(arch, self.width, self.frames, False)
                plain = functools.partial(mean_loss, model, x, y, batch, Cost())
            else:
                m = self.units["worst_m"]
                n = m if self.cuda else 4
                x, y = self.clips(n)
                batch = settings["batch_size"]
                variants.append(("float32 (IEEE)", "float32", functools.partial(
                    loss_and_gradient, model, params, x, y, batch, Cost()), True))  # fmt: skip
                backward, per, what = True, m / n, f"gradient over {m} clips"
                flops_clip = model_flops(arch, self.width, self.frames, True)
            if self.args.before:  # as measure jobs ran before autotuning and the fast path
                before = plain if stage in ("adaptive_average", "pacbayes") else variants[0][2]
                variants.append(("float32 (IEEE) before", "float32", before, False))
            for label, precision, run, counts in variants:
                tuned = nullcontext() if label.endswith("before") else autotuned(self.device)
                # as the job: IEEE float32 outside the evaluations, TF32 products if asked
                products = precision if stage == "hessian" else "float32"
                with forward_precision(self.device, products), tuned:
                    first = time_call(run, self.device)  # kernel choice, compilation
                    seconds = min(time_call(run, self.device) for _ in range(2)) * per
                # what a job pays once, against its units (does compiling pay per job?)
                print(f"  {arch} {stage} {label}: first call {first:.1f} s, then "
                      f"{seconds / per:.2f} s ({n} clips)", flush=True)  # fmt: skip
                self.add(Row(stage, f"{arch} {what}", label, seconds, flops_clip * n * per,
                             self.peak(precision), units, self.scale(arch, backward),
                             counts))  # fmt: skip

    def precisions(self, setting: str) -> list[str]:
        """`setting` first, then the other precisions worth timing here (CPU: float16 and
        bfloat16 autocast; tf32 is float32 there)."""
        others = sorted(PRECISIONS) if self.cuda else ["float32", "bfloat16", "float16"]
        return [setting, *(p for p in others if p != setting)]

    # --- summary -----------------------------------------------------------------------------

    def summary(self) -> None:
        """Device-hours per stage and in total, each beside its floor: the same FLOPs at 100 %
        of the GEMM rate measured at the stage's precision (what no code change can beat). A
        landscape precision timed for only some architectures is flagged: its total is then a
        lower bound."""

        def hours(stage: str, precision: str | None = None) -> tuple[float, float]:
            rows = [r for r in self.rows if r.stage == stage and r.preset and
                    (precision is None or r.precision == precision)]  # fmt: skip
            if not rows:
                return float("nan"), float("nan")
            return sum(r.hours for r in rows), sum(r.floor_hours for r in rows)

        def line(what: str, h: tuple[float, float], note: str = "") -> None:
            print(f"{what:<52} {h[0]:9.2f} h  (floor {h[1]:8.2f} h){note}")

        def add(*hs: tuple[float, float]) -> tuple[float, float]:
            return sum(h[0] for h in hs), sum(h[1] for h in hs)

        # Training: one row per configuration and variant; the first variant's go into the total.
        variants = list(dict.fromkeys(r.precision for r in self.rows if r.stage == "train epoch"))

        def train_hours(label: str) -> tuple[float, float]:
            rows = [r for r in self.rows if r.precision == label and
                    r.stage in ("train epoch", "select (epoch)")]  # fmt: skip
            return sum(r.hours for r in rows), sum(r.floor_hours for r in rows)

        train = train_hours(variants[0]) if variants else (float("nan"), float("nan"))
        meas = {s: hours(s) for s in MEASURE_STAGES if s in {r.stage for r in self.rows}}
        land = self.config["landscape"]
        compiled = self.cuda and land["compile"]
        default = f"{land['precision']}{' compiled' if compiled else ''}"
        size = " at REDUCED size: hours as a ratio only" if self.args.reduced else ""
        presets = " + ".join(p.name for p in self.args.preset)
        print(f"\n=== {presets} ({self.units['runs']} runs, {self.units['surfaces']} surfaces; "
              f"Lanczos HVPs assumed {self.args.lanczos_hvps}){size}; device-hours, "
              "extrapolated; floor: the same FLOPs at the GEMM rate")  # fmt: skip
        for label in variants:
            mark = "  <- in the totals" if label == variants[0] and len(variants) > 1 else ""
            line(f"train {label} (+ per-epoch selection)", train_hours(label), mark)
        for stage, h in meas.items():
            line(f"measure {stage}", h)
        total_meas = add(*meas.values())
        line("measures together", total_meas)
        lands = sorted({r.precision for r in self.rows if r.stage == "landscape point"})
        refine_precision = "float32 compiled" if compiled else "float32"
        refine = hours("refine point", refine_precision)
        archs = set(self.units["landscape"])
        for p in lands:
            surface = hours("landscape point", p)
            n = self.refined.get(p.split()[0], 0) if land["refine"] else 0
            extra = (refine[0] * n, refine[1] * n)
            timed = {r.what.split()[0] for r in self.rows
                     if r.stage == "landscape point" and r.precision == p}  # fmt: skip
            missing = sorted(archs - timed)
            note = f"  ({', '.join(missing)} not timed: a lower bound)" if missing else ""
            note += "  <- the preset's setting" if p == default else ""
            total = add(train, total_meas, surface, extra)
            what = f" + {n} IEEE points" if n else ""
            line(f"landscape {p}{what}", add(surface, extra), note)
            line("  -> total with it", total)


def _precision_count(text: str) -> tuple[str, int]:
    precision, _, count = text.partition("=")
    if precision not in PRECISIONS or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PRECISION=N, e.g. float16=23")
    return precision, int(count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reduced", action="store_true", help="width 1/8, 100 frames (CPU, CI)")
    ap.add_argument(
        "--preset",
        type=Path,
        nargs="+",
        default=[PRESET],
        help="config files over the schema's defaults, in order (as --configfile)",
    )
    ap.add_argument(
        "--before",
        action="store_true",
        help="also time the measures as their jobs ran before autotuning and the fast path",
    )
    ap.add_argument("--only", choices=STAGES, nargs="+", default=None)
    ap.add_argument("--archs", nargs="+", default=None, help="only these architectures")
    ap.add_argument("--optimizers", nargs="+", default=None)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--sam", action="store_true", help="also time SAM (not in the preset)")
    ap.add_argument("--epochs", type=int, default=1, help="timed training epochs (best kept)")
    ap.add_argument(
        "--train-variants",
        type=variant,
        nargs="+",
        default=None,
        help="training variants (bench_train.py: autotune, compile, cudagraphs joined by +, or "
        "eager); the first goes into the totals. Default: the job as the preset runs it",
    )
    ap.add_argument(
        "--start-at",
        type=float,
        default=None,
        help="unix time at which to start the timed epochs (concurrent processes)",
    )
    ap.add_argument("--train-clips", type=int, default=None, help="CUDA 512, CPU 2 batches")
    ap.add_argument("--landscape-clips", type=int, default=None, help="CUDA 512, CPU 16")
    ap.add_argument(
        "--compiled",
        nargs="+",
        choices=sorted(PRECISIONS),
        default=["float32", "bfloat16"],
        help="precisions also timed compiled (CUDA; about 20 s of compilation each)",
    )
    ap.add_argument("--points", type=int, default=4, help="grid points timed after the first")
    ap.add_argument(
        "--lanczos-hvps",
        type=int,
        default=60,
        help="assumed HVPs of ARPACK for the top eigenvalues (ncv 20: 1-3 passes)",
    )
    ap.add_argument(
        "--refined-points",
        type=_precision_count,
        nargs="+",
        default=None,
        metavar="PRECISION=N",
        help=f"IEEE re-evaluated points per surface by fast precision (default {REFINED_POINTS})",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    name = torch.cuda.get_device_name(bench.device) if bench.cuda else "CPU"
    presets = " + ".join(p.name for p in args.preset)
    print(f"device={bench.device} ({name}) torch {torch.__version__} threads="
          f"{torch.get_num_threads()} width={bench.width:g} frames={bench.frames} preset="
          f"{presets}: {bench.units['runs']} runs", flush=True)  # fmt: skip
    steps: dict[str, Callable[[], None]] = {
        "train": bench.train,
        "landscape": bench.landscape,
        "hessian": lambda: bench.measures("hessian"),
        "adaptive_average": lambda: bench.measures("adaptive_average"),
        "adaptive_worst": lambda: bench.measures("adaptive_worst"),
        "pacbayes": lambda: bench.measures("pacbayes"),
    }
    failed = []
    for stage in args.only or STAGES:
        try:
            steps[stage]()
        except Exception:  # one stage failing must not hide the others' numbers
            traceback.print_exc()
            failed.append(stage)
        except KeyboardInterrupt:  # a time limit: summarise what was measured
            print(f"interrupted during {stage}", flush=True)
            failed.append(stage)
            break
        if bench.cuda:
            torch.cuda.empty_cache()
    if not args.only or len(args.only) > 1:
        bench.summary()
    if failed:
        print(f"failed stages: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
