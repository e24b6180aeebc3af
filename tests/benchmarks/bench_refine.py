"""Fast precisions on a trained model of the paper's size, with and without IEEE refinement.

Trains CNN10 (width 1, 1001 frames on CUDA; `--reduced`: width 1/8, 100 frames) on `--clips`
random clips whose class is the loudest of ten mel-band groups (learnable, so the model sits in
a real minimum), then computes the paper's 11 x 11 surface (direction seed 42) over those clips:
once in IEEE float32, and at each fast precision (compiled on CUDA, as a landscape job runs
it), refined as `landscape.refine` does (landscape.refine_surface). Prints per precision: the
largest error over all 121 points relative to max(|loss|, 1) against the stated bound
(landscape.REFINE_RTOL), the paper's sharpness fast / refined / IEEE, whether every sharpness
variant of the refined surface equals the IEEE one exactly, the points refined, and the
seconds of the fast surface, of the refinement and of the IEEE surface.
Run: `python tests/benchmarks/bench_refine.py --device cuda` (about 2 minutes on an H200).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PAPER_FRAMES, quiet_logger, sync  # noqa: E402

from ascsharp.core.surface import Grid  # noqa: E402
from ascsharp.landscape.compute import REFINE_RTOL, evaluate_points, refine_surface
from ascsharp.landscape.directions import make_directions
from ascsharp.landscape.sharpness import PAPER, REFERENCES, REGIONS, sharpness
from ascsharp.train.models import build_model  # noqa: E402
from ascsharp.train.optim import make_stepper  # noqa: E402

GRID = Grid(-0.25, 0.25, 11, -0.25, 0.25, 11)


def learnable_clips(n: int, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random log-mel-like clips; the class is the mel-band group (of ten) with most energy,
    raised by one so that a CNN learns it in a few epochs."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 64, frames, generator=g)
    for i in range(n):
        band = int(y[i])
        x[i, band * 6 : band * 6 + 6] += 1.0
    return x.to(device), y.to(device)


def surfaces(results: dict[int, tuple[float, float]]) -> np.ndarray:
    return np.array([results[p][0] for p in range(GRID.n_points)]).reshape(GRID.ynum, GRID.xnum)


def every_sharpness(loss: np.ndarray) -> dict:
    x, y = GRID.xcoordinates, GRID.ycoordinates
    return {(r, f): sharpness(x, y, loss, radius=PAPER["radius"], reference=f, region=r)
            for r in REGIONS for f in REFERENCES}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reduced", action="store_true", help="width 1/8, 100 frames (CPU)")
    ap.add_argument("--clips", type=int, default=None, help="CUDA 256, CPU 64")
    ap.add_argument("--epochs", type=int, default=None, help="CUDA 30, CPU 20")
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="CUDA: bfloat16 tf32 (float16 runs bfloat16's kernels); CPU: bfloat16",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    width, frames = (0.125, 100) if args.reduced else (1.0, PAPER_FRAMES)
    n = args.clips or (256 if cuda else 64)
    epochs = args.epochs or (30 if cuda else 20)
    precisions = args.precisions or (["bfloat16", "tf32"] if cuda else ["bfloat16"])
    log = quiet_logger("bench_refine.quiet")

    torch.manual_seed(0)
    model = build_model("cnn10", n_classes=10, width=width, n_mels=64).to(device)
    x, y = learnable_clips(n, frames, device)
    stepper = make_stepper("adam", model, 1e-3, seed=0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n, device=device).split(32):
            if len(idx) > 1:
                train_loss, _ = stepper.step(x[idx], y[idx])
    sync(device)
    print(
        f"device={device} width={width:g} frames={frames} clips={n}: trained {epochs} epochs "
        f"in {time.perf_counter() - t0:.1f} s, last batch loss {float(train_loss):.4f}",
        flush=True,
    )
    model.eval()
    dx, dy = make_directions(model, "bench-refine", 42)
    kw = {"batch_size": min(n, 256), "device": device, "log": log}
    every = range(GRID.n_points)

    def timed(**options) -> tuple[dict[int, tuple[float, float]], float]:
        t = time.perf_counter()
        out = evaluate_points(model, dx, dy, x, y, GRID, options.pop("points", every), **options,
                              **kw)  # fmt: skip
        return out, time.perf_counter() - t

    ieee, t_ieee = timed(precision="float32", compile=False)  # eager: no compilation to wait for
    want = every_sharpness(surfaces(ieee))
    paper = (PAPER["region"], PAPER["reference"])
    loss = surfaces(ieee)
    print(f"IEEE float32 (eager): {t_ieee:.1f} s for 121 points (incl. "
          f"start-up); loss {loss.min():.4g} .. {loss.max():.4g}; paper sharpness "
          f"{want[paper]['sharpness']:.6g}", flush=True)  # fmt: skip
    for precision in precisions:
        try:
            fast, t_fast = timed(precision=precision, compile=cuda)
            f = surfaces(fast)
            rel = np.abs(f - loss) / np.maximum(np.abs(f), 1.0)
            spent = []

            def ieee_points(points, round_, spent=spent):
                # eager: a job compiles here too (cheap once the node's cache is warm); the
                # benchmark saves the minutes (bench_paper times both per point)
                out, seconds = timed(precision="float32", compile=False, points=points)
                spent.append(seconds)
                return out

            merged, info = refine_surface(fast, ieee_points, GRID, PAPER["radius"],
                                          REFINE_RTOL[precision], log)  # fmt: skip
            got, fast_s = every_sharpness(surfaces(merged)), every_sharpness(f)
            same = got == want
            print(f"{precision:>9}: largest error {np.nanmax(rel):.3g} of max(|L|, 1) (stated "
                  f"bound {REFINE_RTOL[precision]:g}, used {info['refine_rtol']:.3g}); paper "
                  f"sharpness fast {fast_s[paper]['sharpness']:.6g} (rel. diff "
                  f"{fast_s[paper]['sharpness'] / want[paper]['sharpness'] - 1:+.2e}), refined "
                  f"{got[paper]['sharpness']:.6g}; every variant IEEE-exact: {same}; refined "
                  f"{len(info['refined_points'])}/121 points; seconds: fast {t_fast:.1f}, "
                  f"refine {sum(spent):.1f} ({len(spent)} rounds, eager), IEEE {t_ieee:.1f}",
                  flush=True)  # fmt: skip
        except Exception as e:  # one precision failing must not hide the others
            print(f"{precision:>9}: failed: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
