"""Fast precisions on trained models against IEEE float32, with and without IEEE refinement.

Trains CNN10 (width 1, 1001 frames on CUDA; `--reduced`: width 1/8, 100 frames; `--width`,
`--frames` for others) on `--clips` random clips whose class is the loudest of ten mel-band
groups (learnable, so the model sits in a real minimum), and after each of `--epochs` (an
ordinary and a low loss, say) computes the paper's 11 x 11 surface (direction seed 42) over
those clips: once in IEEE float32, and at each fast precision (compiled on CUDA, as a landscape
job runs it), refined as `landscape.refine` does (landscape.refine_surface). Prints per model
and precision: the largest error over all 121 points relative to |L_fast|, to max(|L_fast|, 1)
and absolute, and against the stated bound (landscape.REFINE_BOUND); the paper's sharpness fast
/ refined / IEEE; whether every sharpness variant of the refined surface equals the IEEE one
exactly; the points refined, and those the bound before 2026-12-04 would have taken; the
seconds of the fast surface, of the refinement and of the IEEE surface. Last, per precision
over all models: the largest errors that REFINE_BOUND's parts are set from.
Run: `python tests/benchmarks/bench_refine.py --device cuda` (about 2 minutes on an H200); the
CPU measurement of REFINE_BOUND: `--device cpu --reduced --threads 1 --seed 0 --epochs 3 20 60
300` (about 10 minutes), see landscape/compute.py for the others.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PAPER_FRAMES, quiet_logger, sync  # noqa: E402

from ascsharp.core.surface import Grid  # noqa: E402
from ascsharp.landscape.compute import REFINE_BOUND, evaluate_points, refine_surface
from ascsharp.landscape.directions import make_directions
from ascsharp.landscape.sharpness import (
    PAPER,
    REFERENCES,
    REGIONS,
    decisive_points,
    sharpness,
)
from ascsharp.train.models import build_model  # noqa: E402
from ascsharp.train.optim import make_stepper
from ascsharp.train.stepper import Stepper

GRID = Grid(-0.25, 0.25, 11, -0.25, 0.25, 11)
# The bound before 2026-12-04: |L_fast - L_IEEE| <= rtol * max(|L_fast|, 1), absolute below 1
OLD_RTOL = {"tf32": 3e-3, "float16": 5e-3, "bfloat16": 3e-2}


def learnable_clips(
    n: int, frames: int, device: torch.device | str, mels: int = 64, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random log-mel-like clips; the class is the mel-band group (of `classes`) with most
    energy, raised by one so that a CNN learns it in a few epochs."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, mels, frames, generator=g)
    band = mels // classes
    for i, label in enumerate(y.tolist()):
        x[i, label * band : (label + 1) * band] += 1.0
    return x.to(device), y.to(device)


def train_epochs(stepper: Stepper, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 epochs: int) -> None:  # fmt: skip
    """`epochs` passes over (x, y) in shuffled batches of 32 (the global torch generator)."""
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), device=x.device).split(32):
            if len(idx) > 1:
                stepper.step(x[idx], y[idx])


def surfaces(results: dict[int, tuple[float, float]]) -> np.ndarray:
    return np.array([results[p][0] for p in range(GRID.n_points)]).reshape(GRID.ynum, GRID.xnum)


def every_sharpness(loss: np.ndarray) -> dict:
    x, y = GRID.xcoordinates, GRID.ycoordinates
    return {(r, f): sharpness(x, y, loss, radius=PAPER["radius"], reference=f, region=r)
            for r in REGIONS for f in REFERENCES}  # fmt: skip


def errors(fast: np.ndarray, ieee: np.ndarray) -> dict[str, float]:
    """The largest |L_fast - L_IEEE| relative to |L_fast| and absolute, over the finite points,
    with the fast loss where each occurred; `floor`: the largest absolute error among the
    lowest-loss tenth of the points (below `floor_below`), the smallest losses measured."""
    ok = np.isfinite(fast) & np.isfinite(ieee)
    f, e = fast[ok], np.abs(fast[ok] - ieee[ok])
    rel = e / np.maximum(np.abs(f), np.finfo(np.float64).tiny)
    i, j = int(np.argmax(rel)), int(np.argmax(e))
    low = np.argsort(np.abs(f))[: max(1, len(f) // 10)]
    return {"rel": float(rel[i]), "rel_at": float(f[i]), "abs": float(e[j]), "abs_at": float(f[j]),
            "cap": float(np.max(e / np.maximum(np.abs(f), 1.0))), "min": float(np.abs(f).min()),
            "floor": float(e[low].max()), "floor_below": float(np.abs(f[low]).max())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reduced", action="store_true", help="width 1/8, 100 frames (CPU)")
    ap.add_argument("--width", type=float, default=None, help="overrides --reduced's")
    ap.add_argument("--frames", type=int, default=None, help="overrides --reduced's")
    ap.add_argument("--mels", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--clips", type=int, default=None, help="CUDA 256, CPU 64")
    ap.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="measure after each of these (cumulative) epoch counts: CUDA 30, CPU 20",
    )
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="CUDA: bfloat16 tf32 (float16 runs bfloat16's kernels); CPU: bfloat16 float16 "
        "(autocast; tf32 is IEEE float32 on a CPU)",
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    ap.add_argument("--seed", type=int, default=0, help="of the model's initialisation")
    ap.add_argument("--save", type=Path, default=None, help="write every surface to this .npz")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    width, frames = (0.125, 100) if args.reduced else (1.0, PAPER_FRAMES)
    width, frames = args.width or width, args.frames or frames
    n = args.clips or (256 if cuda else 64)
    checkpoints = sorted(args.epochs or [30 if cuda else 20])
    precisions = args.precisions or (["bfloat16", "tf32"] if cuda else ["bfloat16", "float16"])
    log = quiet_logger("bench_refine.quiet")

    torch.manual_seed(args.seed)
    model = build_model("cnn10", n_classes=args.classes, width=width, n_mels=args.mels)
    model = model.to(device)
    x, y = learnable_clips(n, frames, device, args.mels, args.classes)
    stepper = make_stepper("adam", model, args.lr, seed=args.seed)
    kw = {"batch_size": min(n, 256), "device": device, "log": log}
    every = range(GRID.n_points)
    paper = (PAPER["region"], PAPER["reference"])
    saved: dict[str, np.ndarray] = {}
    worst: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    epoch, t_train = 0, 0.0

    for target in checkpoints:
        t0 = time.perf_counter()
        train_epochs(stepper, model, x, y, target - epoch)
        epoch = target
        sync(device)
        t_train += time.perf_counter() - t0
        frozen = copy.deepcopy(model).eval()  # evaluated; the model trains on untouched
        dx, dy = make_directions(frozen, "bench-refine", 42)

        def timed(frozen=frozen, dx=dx, dy=dy, **options):
            t = time.perf_counter()
            out = evaluate_points(frozen, dx, dy, x, y, GRID, options.pop("points", every),
                                  **options, **kw)  # fmt: skip
            return out, time.perf_counter() - t

        ieee, t_ieee = timed(precision="float32", compile=False)  # eager: no compilation wait
        loss = surfaces(ieee)
        want = every_sharpness(loss)
        saved[f"epoch{epoch}_float32"] = loss
        print(f"device={device} width={width:g} frames={frames} mels={args.mels} classes="
              f"{args.classes} clips={n} lr={args.lr:g} seed={args.seed}, {epoch} epochs "
              f"(training {t_train:.1f} s so far): IEEE float32 (eager) {t_ieee:.1f} s for 121 "
              f"points; loss {loss.min():.4g} .. {loss.max():.4g} (origin "
              f"{loss[GRID.ynum // 2, GRID.xnum // 2]:.4g}); paper sharpness "
              f"{want[paper]['sharpness']:.6g}", flush=True)  # fmt: skip
        for precision in precisions:
            try:
                fast, t_fast = timed(precision=precision, compile=cuda)
                f = surfaces(fast)
                saved[f"epoch{epoch}_{precision}"] = f
                err = errors(f, loss)
                worst[precision].append(err)
                spent = []

                def ieee_points(points, round_, spent=spent, timed=timed):
                    # eager: a job compiles here too (cheap once the node's cache is warm); the
                    # benchmark saves the minutes (bench_paper times both per point)
                    out, seconds = timed(precision="float32", compile=False, points=points)
                    spent.append(seconds)
                    return out

                bound = REFINE_BOUND[precision]
                merged, info = refine_surface(fast, ieee_points, GRID, PAPER["radius"], bound,
                                              log)  # fmt: skip
                old = OLD_RTOL[precision] * np.maximum(np.abs(f), 1.0)
                n_old = int(decisive_points(GRID.xcoordinates, GRID.ycoordinates, f, old,
                                            PAPER["radius"]).sum())  # fmt: skip
                got, fast_s = every_sharpness(surfaces(merged)), every_sharpness(f)
                print(f"{precision:>9}: largest error {err['rel']:.3g} of |L_fast| (at "
                      f"L={err['rel_at']:.3g}), {err['cap']:.3g} of max(|L_fast|, 1), "
                      f"{err['abs']:.3g} absolute (at L={err['abs_at']:.3g}); largest error "
                      f"{np.nanmax(np.abs(f - loss) / bound(f)):.3g} of the stated bound "
                      f"({info['refine_max_ratio']:.3g} on the refined points); paper "
                      f"sharpness fast {fast_s[paper]['sharpness']:.6g} (rel. diff "
                      f"{fast_s[paper]['sharpness'] / want[paper]['sharpness'] - 1:+.2e}), "
                      f"refined {got[paper]['sharpness']:.6g}; every variant IEEE-exact: "
                      f"{got == want}; refined {len(info['refined_points'])}/121 points (old "
                      f"rule {OLD_RTOL[precision]:g} * max(|L|, 1): {n_old}, first round); "
                      f"seconds: fast {t_fast:.1f}, refine {sum(spent):.1f} ({len(spent)} "
                      f"rounds, eager), IEEE {t_ieee:.1f}", flush=True)  # fmt: skip
            except Exception as e:  # one precision failing must not hide the others
                print(f"{precision:>9}: failed: {type(e).__name__}: {e}", flush=True)
    for precision, errs in worst.items():
        if errs:  # the measurements that set landscape.REFINE_BOUND (safety factor there)
            rel = max(errs, key=lambda e: e["rel"])
            low = min(errs, key=lambda e: e["min"])
            print(f"{precision:>9} over {len(errs)} models: largest error {rel['rel']:.3g} of "
                  f"|L_fast| (at L={rel['rel_at']:.3g}), {max(e['cap'] for e in errs):.3g} of "
                  f"max(|L_fast|, 1), largest absolute {max(e['abs'] for e in errs):.3g}; at "
                  f"the lowest losses measured (below "
                  f"{low['floor_below']:.3g}) {low['floor']:.3g} absolute", flush=True)  # fmt: skip
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
