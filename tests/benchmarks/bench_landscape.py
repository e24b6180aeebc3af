"""Landscape throughput: fraction of the device's peak; speed-up over the original's data path.

`--peak` (the default): for CNN10 at the demo width (1/8) and full width, the forward FLOPs per
clip (torch.utils.flop_counter), the device's dense GEMM rate measured in the same run, grid points
per second of evaluate_points with and without BatchNorm folding, the achieved FLOP/s as a
fraction of the GEMM rate, and the time one paper grid point (13,962 clips x 1001 frames) would
take on this device at that rate (an extrapolation). `--naive`: the comparison below.


The original study's code (EIHW/ASC_Sharpness, on top of loss-landscape) iterated, for every grid
point, a DataLoader (num_workers=4, so the workers are forked again per point) over a Dataset that
looks each clip's .npy path up in a pandas table and np.load()s it, and perturbed the weights with
`p.data = w + step * d`. The naive baseline here does the same. Both paths run on the same model,
data, grid points and batch size, in the same process, so the ratio is meaningful; the absolute
rates are not. Run: `python tests/benchmarks/bench_landscape.py --naive [--model tiny|cnn10]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    PAPER_CLIPS,
    PAPER_FRAMES,
    PointStamps,
    forward_flops,
    gemm_rate,
    quiet_logger,
    time_call,
)

from ascsharp.core.surface import Grid
from ascsharp.landscape.compute import evaluate_points
from ascsharp.landscape.directions import make_directions
from ascsharp.train.evaluate import PRECISIONS


class TinyStandIn(nn.Module):
    """Conv + BN + linear on (batch, mels, frames): a model whose compute is cheap, so that the
    benchmark measures the data path, which is what differs between the two methods."""

    def __init__(self, n_mels: int, n_classes: int = 10):
        super().__init__()
        self.bn0 = nn.BatchNorm1d(n_mels)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(x).unsqueeze(1)
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class NpyClips(Dataset):
    """One .npy per clip, path and label looked up in pandas tables on every access."""

    def __init__(self, table: pd.DataFrame):
        self.table = table
        self.index = list(table.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        key = self.index[i]
        x = np.load(self.table.loc[key, "features"])
        return torch.from_numpy(x), int(self.table["label"].loc[key])


def write_clip_files(x: torch.Tensor, y: torch.Tensor, folder: Path) -> pd.DataFrame:
    """One .npy per clip, as the original kept its features, and the table that points to them."""
    rows = []
    for i in range(len(x)):
        path = folder / f"clip{i:06d}.npy"
        np.save(path, x[i].numpy())
        rows.append({"filename": f"clip{i:06d}.wav", "features": str(path), "label": int(y[i])})
    return pd.DataFrame(rows).set_index("filename")


def naive_points(model, dx, dy, table, grid, indices, batch_size, workers, device):
    """Per point: perturb via p.data, a fresh DataLoader pass, batch means times batch size."""
    params = list(model.parameters())
    w0 = [p.data.clone() for p in params]
    dx, dy = [d.to(device) for d in dx], [d.to(device) for d in dy]
    out = {}
    model.eval()
    for p in indices:
        alpha, beta = grid.coords(p)
        for w, w_init, a, b in zip(params, w0, dx, dy, strict=True):
            w.data = w_init + alpha * a + beta * b
        loader = DataLoader(
            NpyClips(table), batch_size=batch_size, shuffle=False, num_workers=workers
        )
        total_loss, correct, total = 0.0, 0, 0
        with torch.no_grad():
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                logits = model(xb)
                total_loss += F.cross_entropy(logits, yb).item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                total += len(yb)
        out[p] = (total_loss / total, correct / total)
    for w, w_init in zip(params, w0, strict=True):
        w.data = w_init
    return out


def build(name: str, n_mels: int) -> nn.Module:
    if name == "cnn10":
        from ascsharp.train.models import build_model

        return build_model("cnn10", n_classes=10, width=0.125, n_mels=n_mels)
    return TinyStandIn(n_mels)


def naive_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "cnn10"], default="tiny")
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--mels", type=int, default=64)
    ap.add_argument("--points", type=int, default=4, help="grid points per timed run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stabler timings)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each method")
    ap.add_argument(
        "--naive-workers", type=int, default=4, help="DataLoader workers of the baseline (orig.: 4)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The original ran 4 workers whatever the core count; do not nag about copying it.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    torch.manual_seed(0)

    device = torch.device(args.device)
    model = build(args.model, args.mels).eval().to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.clips, args.mels, args.frames, generator=g)
    y = torch.randint(0, 10, (args.clips,), generator=g)
    dx, dy = make_directions(model, "bench", 0)
    side = int(np.ceil(np.sqrt(args.points)))
    grid = Grid(-0.25, 0.25, side, -0.25, 0.25, side)
    indices = list(range(args.points))
    quiet = quiet_logger("bench_landscape.quiet")

    with tempfile.TemporaryDirectory() as tmp:
        table = write_clip_files(x, y, Path(tmp))

        def ours():
            return evaluate_points(
                model,
                dx,
                dy,
                x,
                y,
                grid,
                indices,
                batch_size=args.batch_size,
                device="cpu",
                log=quiet,
            )

        def naive():
            return naive_points(
                model, dx, dy, table, grid, indices, args.batch_size, args.naive_workers, device
            )

        a, b = ours(), naive()  # also warms up: allocator, page cache, oneDNN kernels
        # Interleaved and best-of, so that load from other processes hits both alike.
        times_ours, times_naive = [], []
        for _ in range(args.repeats):
            times_ours.append(time_call(ours))
            times_naive.append(time_call(naive))
    diff = max(abs(a[p][0] - b[p][0]) for p in indices)
    r_ours, r_naive = args.points / min(times_ours), args.points / min(times_naive)
    paired = sorted(n / o for o, n in zip(times_ours, times_naive, strict=True))
    print(
        f"model={args.model} clips={args.clips} frames={args.frames} mels={args.mels} "
        f"batch={args.batch_size} threads={args.threads} points={args.points} "
        f"naive_workers={args.naive_workers} device={device}"
    )
    print(f"evaluate_points (in memory):     {r_ours:8.2f} points/s")
    print(f"naive (DataLoader per point):    {r_naive:8.2f} points/s")
    print(
        f"speed-up: {r_ours / r_naive:.2f}x best-of-{args.repeats}, "
        f"{paired[len(paired) // 2]:.2f}x median of paired runs "
        f"(max |loss difference| {diff:.2e})"
    )


def peak_main(argv: list[str]) -> None:
    from ascsharp.train.models import build_model

    ap = argparse.ArgumentParser(description="fraction of peak of the landscape forward")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    ap.add_argument("--arch", default="cnn10")
    ap.add_argument("--frames", type=int, default=PAPER_FRAMES)
    ap.add_argument("--clips", type=int, default=None,
                    help="default: CPU 64 at width <= 1/4, else 4; CUDA 1024 / 256")  # fmt: skip
    ap.add_argument(
        "--batch-size", type=int, default=None, help="default: min(clips, 64 CPU / 256 CUDA)"
    )
    ap.add_argument("--points", type=int, default=4,
                    help="grid points timed, after a first one that pays the start-up")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=None,
                    help="default: float32 on CPU, all on CUDA")  # fmt: skip
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the torch.compile'd fast path (default: on CUDA)")  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = args.precisions or (sorted(PRECISIONS) if cuda else ["float32"])
    compile_too = cuda if args.compile is None else args.compile
    stamps = PointStamps()
    peaks = {p: gemm_rate(device, p) for p in precisions}
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device={device} ({name}) threads={args.threads} arch={args.arch} frames={args.frames}")
    for p, peak in peaks.items():
        print(f"GEMM at {p}: {peak / 1e9:,.1f} GFLOP/s, measured in this run")
    grid = Grid(-0.25, 0.25, 11, -0.25, 0.25, 11)  # the paper's grid
    indices = list(range(min(args.points + 1, grid.n_points)))
    for width in args.widths:
        small = width <= 0.25
        clips = args.clips or ((1024 if small else 256) if cuda else (64 if small else 4))
        batch_size = min(clips, args.batch_size or (256 if cuda else 64))
        torch.manual_seed(0)
        model = build_model(args.arch, n_classes=10, width=width, n_mels=64).eval().to(device)
        x = torch.randn(clips, 64, args.frames, device=device)
        y = torch.randint(0, 10, (clips,), device=device)
        flops_per_clip = forward_flops(model, x[:1])
        dx, dy = make_directions(model, "bench", 0)
        kw = {"batch_size": batch_size, "device": device, "log": stamps.logger}

        print(f"width {width:g}: {flops_per_clip / 1e9:.3f} GFLOP per clip forward, {clips} clips,"
              f" batch {batch_size}")  # fmt: skip
        # The unfolded eager forward once, as the baseline; then every precision on the fast
        # path, eager and (on CUDA) compiled. One call per variant, as in a landscape job: the
        # first point pays the call's start-up (copies, kernel choice, compilation), the others
        # are timed from the progress lines (each point ends in a host read of its loss).
        variants = [(False, False, precisions[0]), *((True, False, p) for p in precisions)]
        variants += [(True, True, p) for p in precisions] if compile_too else []
        for fold, compile, precision in variants:
            stamps.clear()
            evaluate_points(model, dx, dy, x, y, grid, indices, fold_bn=fold, compile=compile,
                            precision=precision, **kw)  # fmt: skip
            first, seconds = stamps.first_and_rest()
            per_second = (len(indices) - 1) / seconds
            rate = flops_per_clip * clips * per_second
            paper_point = flops_per_clip * PAPER_CLIPS * PAPER_FRAMES / args.frames / rate
            label = f"{'BN folded' if fold else 'plain eval'}{', compiled' if compile else ''}"
            label += f", {precision}"
            print(
                f"  {label:<32}: {per_second:8.3f} points/s, {rate / 1e9:9.1f} GFLOP/s"
                f" = {rate / peaks[precision]:6.1%} of GEMM at {precision}; one paper grid point"
                f" here: {paper_point:,.2f} s (extrapolated); first point {first:.1f} s"
            )


def dispatch(naive, peak) -> None:
    """`--naive` runs the data-path comparison, anything else (or `--peak`) the peak fraction."""
    argv = sys.argv[1:]
    if "--naive" in argv:
        naive([a for a in argv if a != "--naive"])
    else:
        peak([a for a in argv if a != "--peak"])


def main() -> None:
    dispatch(naive_main, peak_main)


if __name__ == "__main__":
    main()
