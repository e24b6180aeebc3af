"""Training throughput (clips/s): the whole split in memory vs a per-clip-file DataLoader.

The workflow trains from one in-memory tensor (on the GPU when present), shuffled by index. The
naive baseline reads one .npy per clip through a torch DataLoader (as the original study's code
did, with `--naive-workers` workers), on the same model, optimiser, batch size and clips, in
the same process, interleaved; the ratio is meaningful, the absolute rates are not.
Run: `python tests/benchmarks/bench_train.py [--model tiny|cnn10] [--clips N] [--device cuda]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_landscape import NpyClips, build, write_clip_files  # noqa: E402

from ascsharp.optim import make_stepper  # noqa: E402


def ours_epoch(stepper, x, y, batch_size, device):
    """What train._train_epoch does per batch: index the in-memory split, step."""
    order = torch.randperm(len(x), device=device)
    for b in range(len(x) // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        stepper.step(x[idx].float(), y[idx])


def naive_epoch(stepper, table, batch_size, workers, device):
    loader = DataLoader(
        NpyClips(table), batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    for xb, yb in loader:
        stepper.step(xb.to(device), yb.to(device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "cnn10"], default="tiny")
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--mels", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-workers", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    torch.manual_seed(0)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.clips, args.mels, args.frames, generator=g)
    y = torch.randint(0, 10, (args.clips,), generator=g)
    stepper = make_stepper("adam", build(args.model, args.mels).to(device), 1e-3, seed=0)
    x_dev, y_dev = x.to(device), y.to(device)

    with tempfile.TemporaryDirectory() as tmp:
        table = write_clip_files(x, y, Path(tmp))

        def ours():
            ours_epoch(stepper, x_dev, y_dev, args.batch_size, device)

        def naive():
            naive_epoch(stepper, table, args.batch_size, args.naive_workers, device)

        ours(), naive()  # warm-up
        t_ours, t_naive = [], []
        for _ in range(args.repeats):
            t_ours.append(_time(ours, device))
            t_naive.append(_time(naive, device))
    clips = (args.clips // args.batch_size) * args.batch_size
    r_ours, r_naive = clips / min(t_ours), clips / min(t_naive)
    print(
        f"model={args.model} clips={args.clips} frames={args.frames} mels={args.mels} "
        f"batch={args.batch_size} threads={args.threads} naive_workers={args.naive_workers} "
        f"device={device}"
    )
    print(f"in-memory split:           {r_ours:9.1f} clips/s")
    print(f"per-clip files DataLoader: {r_naive:9.1f} clips/s")
    print(f"speed-up: {r_ours / r_naive:.2f}x (best of {args.repeats} epochs each)")


def _time(fn, device) -> float:
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
