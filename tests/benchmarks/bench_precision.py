"""What reduced-precision forward passes do to loss surfaces and sharpness, on trained models.

For every results/models/*/.../model.pt under `--results`: one filter-normalised surface (direction
seed 42, the paper's 11 x 11 grid over [-0.25, 0.25]^2, `--clips` of the model's training clips) in
IEEE float32 and at each of `--precisions` (tf32, bfloat16, float16: landscape.PRECISIONS), then
the paper's sharpness of each. Prints the largest loss difference and the largest sharpness
difference against float32, absolute and as a share of the float32 sharpness, and the time of
each precision relative to float32 (small demo models: a ratio, not a throughput). On CPU only
bfloat16 autocast exists (and is slow); run with `--device cuda` for the precisions that matter
there. Run after `snakemake --cores N`:
`python tests/benchmarks/bench_precision.py --results results [--device cuda]`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ascsharp.core.seeds import derive_seed
from ascsharp.core.surface import Grid
from ascsharp.features.clips import Store, load_clips
from ascsharp.landscape.compute import evaluate_points
from ascsharp.landscape.directions import make_directions
from ascsharp.landscape.sharpness import PAPER, sharpness
from ascsharp.train.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", default=["bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet = logging.getLogger("bench_precision.quiet")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    grid = Grid(-0.25, 0.25, 11, -0.25, 0.25, 11)
    worst = {p: (0.0, 0.0, 0.0) for p in args.precisions}
    seconds = dict.fromkeys(["float32", *args.precisions], 0.0)
    models = sorted((args.results / "models").rglob("model.pt"))
    if not models:
        raise SystemExit(f"no model.pt under {args.results / 'models'}: run the workflow first")
    for path in models:
        model, ckpt = load_model(path, args.device)
        run = ckpt["run"]
        store = Store(args.results / "features/train.npy", args.results / "features/train.tsv")
        data = load_clips(store, ckpt["train_clips"], args.clips, derive_seed(run, "subset"))
        dx, dy = make_directions(model, run, 42)
        surfaces = {}
        for precision in ["float32", *args.precisions]:
            t0 = time.perf_counter()
            res = evaluate_points(model, dx, dy, data.x, data.y, grid, range(grid.n_points),
                                  batch_size=128, device=args.device, log=quiet,
                                  precision=precision)  # fmt: skip
            seconds[precision] += time.perf_counter() - t0  # evaluate_points ends in a host read
            loss = np.array([res[p][0] for p in range(grid.n_points)]).reshape(11, 11)
            s = sharpness(grid.xcoordinates, grid.ycoordinates, loss, **PAPER)["sharpness"]
            surfaces[precision] = (loss, s)
        ref_loss, ref_s = surfaces["float32"]
        line = [f"{run}: float32 sharpness {ref_s:.4f}"]
        for p in args.precisions:
            loss, s = surfaces[p]
            d_loss, d_s = float(np.max(np.abs(loss - ref_loss))), abs(s - ref_s)
            rel = d_s / abs(ref_s) if ref_s else float("nan")
            worst[p] = tuple(max(a, b) for a, b in zip(worst[p], (d_loss, d_s, rel), strict=True))
            line.append(f"{p}: |dloss| {d_loss:.2e}, |dsharpness| {d_s:.4f} ({rel:.2%})")
        print("; ".join(line))
    for p, (d_loss, d_s, rel) in worst.items():
        print(f"max over {len(models)} models, {p} vs float32: |dloss| {d_loss:.2e}, "
              f"|dsharpness| {d_s:.4f} ({rel:.2%} of the float32 value); time "
              f"{seconds[p] / seconds['float32']:.2f}x float32's")  # fmt: skip


if __name__ == "__main__":
    main()
