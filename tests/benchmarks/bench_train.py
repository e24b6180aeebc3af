"""Training throughput: fraction of the device's peak, and the in-memory split vs per-clip files.

`--peak` (the default): CNN10 at the demo width (1/8) and full width, trained by the workflow's own
epoch loop (train._train_epoch: the split in device memory, indexed per batch, no per-step host
reads on a GPU). Prints clips/s, the training FLOPs per clip (forward + backward + optimiser,
torch.utils.flop_counter), achieved FLOP/s as a fraction of the same run's GEMM rate at the
training precision, and the extrapolated time of one paper epoch (13,962 clips x 1001 frames).
On CUDA, float32 training runs its convolutions in TF32 (PyTorch's default, as in the study), so
it is held to the TF32 GEMM rate; `--amp` trains under bfloat16 autocast. `--storage float16`
keeps the split in half precision (1.8 GB instead of 3.6 GB for the real one).

`--variants`: how each width is trained, `+`-joined levers of a training job on CUDA
(`eager`: none): `autotune` (cuDNN times its kernels per shape: evaluate.autotuned, which every
training job now runs under), `compile` (torch.compile of the training forward and backward:
train.compile), `cudagraphs` (compile with mode="reduce-overhead": CUDA graphs; not a workflow
setting, timed to see whether it would pay). The default, `autotune`, is the workflow's job
with train.compile off. Each variant prints its clips/s, the ratio to the first variant, and its
start-up (the first epoch beyond a timed one: kernel timing, compilation). On a CPU autotune
and cudagraphs do nothing, and compile is inductor's C++ backend: ratios there say nothing of a
GPU.

`--naive`: the workflow's in-memory split against a per-clip-file DataLoader (as the original
study's code did, with `--naive-workers` workers), on the same model, optimiser, batch size and
clips, in the same process, interleaved; the ratio is meaningful, the absolute rates are not.
Run: `python tests/benchmarks/bench_train.py [--naive] [--device cuda] ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PAPER_CLIPS, PAPER_FRAMES, gemm_rate, quiet_logger, time_call  # noqa: E402
from bench_landscape import NpyClips, build, dispatch, write_clip_files  # noqa: E402

from ascsharp.features.clips import Clips, Store  # noqa: E402
from ascsharp.train.evaluate import autotuned  # noqa: E402
from ascsharp.train.loop import Job, TrainFiles, TrainSettings, _train_epoch  # noqa: E402
from ascsharp.train.optim import make_stepper  # noqa: E402
from ascsharp.train.stepper import Stepper  # noqa: E402

# The levers of a training job on CUDA that a variant joins with `+` ("eager": none of them).
LEVERS = ("autotune", "compile", "cudagraphs")


def variant(text: str) -> str:
    """A variant name checked (argparse type): `eager` or levers joined by `+`."""
    unknown = set(levers(text)) - set(LEVERS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown lever {sorted(unknown)[0]!r}; levers: {', '.join(LEVERS)}, "
            "joined by + (or eager)"
        )
    return text


def levers(name: str) -> list[str]:
    return [] if name == "eager" else name.split("+")


def workflow_variant(compile: bool) -> str:
    """The variant a training job on CUDA runs as (train.compile `compile`)."""
    return "autotune+compile" if compile else "autotune"


@contextlib.contextmanager
def variant_context(name: str, device: torch.device):
    """cuDNN autotuning on (as a training job) or off (cuDNN's heuristic choice) for `name`."""
    if "autotune" in levers(name):
        with autotuned(device):
            yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def variant_stepper(name: str, optimizer: str, model: torch.nn.Module) -> Stepper:
    """The optimiser's stepper on `model`, its training forward compiled as `name` says."""
    stepper = make_stepper(optimizer, model, 1e-4, seed=0)
    if "cudagraphs" in levers(name):
        stepper.compile(mode="reduce-overhead")
    elif "compile" in levers(name):
        stepper.compile()
    return stepper


def timed_epochs(job: Job, stepper: Stepper, device: torch.device, repeats: int, log):
    """A warm-up epoch then `repeats` timed ones, as a job runs them: (best clips/s, the
    warm-up's seconds beyond a timed epoch's: start-up such as kernel timing, compilation)."""
    warm = _train_epoch(job, 0, stepper, device, log)
    rows = [_train_epoch(job, e, stepper, device, log) for e in range(1, repeats + 1)]
    best = max(rows, key=lambda r: r["clips_per_s"])
    return best["clips_per_s"], max(0.0, warm["seconds"] - best["seconds"])


def peak_main(argv: list[str]) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from ascsharp.train.models import build_model

    ap = argparse.ArgumentParser(description="fraction of peak of the training loop")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    ap.add_argument("--arch", default="cnn10")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--frames", type=int, default=PAPER_FRAMES)
    ap.add_argument("--clips", type=int, default=None, help="default: CPU 64 / 8; CUDA 2048 / 512")
    ap.add_argument("--batch-size", type=int, default=32, help="the paper's: 16 and 32")
    ap.add_argument("--storage", choices=["float32", "float16"], default="float32")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    ap.add_argument("--repeats", type=int, default=2, help="timed epochs; the best is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--variants",
        type=variant,
        nargs="+",
        default=[workflow_variant(False)],
        help="training variants, levers joined by + (autotune, compile, cudagraphs) or eager; "
        "default: autotune, the workflow's job with train.compile off",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = ("bfloat16" if args.amp else "tf32") if cuda else "float32"
    peak = gemm_rate(device, precision)
    quiet = quiet_logger("bench_train.quiet")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device={device} ({name}) threads={args.threads} arch={args.arch} "
          f"optimizer={args.optimizer} batch={args.batch_size} frames={args.frames} "
          f"storage={args.storage} precision={precision}")  # fmt: skip
    print(f"GEMM at {precision}: {peak / 1e9:,.1f} GFLOP/s, measured in this run")
    for width in args.widths:
        small = width <= 0.25
        clips = args.clips or ((2048 if small else 512) if cuda else (64 if small else 8))
        torch.manual_seed(0)
        x = torch.randn(clips, 64, args.frames, device=device).to(getattr(torch, args.storage))
        y = torch.randint(0, 10, (clips,), device=device)
        job = epoch_job(x, y, args.batch_size, width, args.amp)
        # Counted on an eager step of a model of its own (optimiser included).
        model = build_model(args.arch, n_classes=10, width=width, n_mels=64).to(device)
        with FlopCounterMode(display=False) as counter:
            make_stepper(args.optimizer, model, 1e-4, seed=0).step(
                x[: args.batch_size].float(), y[: args.batch_size]
            )
        flops_per_clip = counter.get_total_flops() / args.batch_size
        first = None
        for name in args.variants:
            torch.manual_seed(0)
            model = build_model(args.arch, n_classes=10, width=width, n_mels=64).to(device)
            stepper = variant_stepper(name, args.optimizer, model)
            with variant_context(name, device):
                clips_per_s, startup = timed_epochs(job, stepper, device, args.repeats, quiet)
            first = first or clips_per_s
            rate = flops_per_clip * clips_per_s
            paper_epoch = PAPER_CLIPS * PAPER_FRAMES / args.frames / clips_per_s
            print(f"width {width:g} {name}: {flops_per_clip / 1e9:.3f} GFLOP per clip per "
                  f"training step, {clips} clips: {clips_per_s:,.1f} clips/s "
                  f"(x{clips_per_s / first:.2f} of {args.variants[0]}), {rate / 1e9:,.1f} "
                  f"GFLOP/s = {rate / peak:.1%} of GEMM at {precision}; start-up "
                  f"{startup:.1f} s; one paper epoch here: {paper_epoch / 60:,.1f} min "
                  "(extrapolated)", flush=True)  # fmt: skip


def epoch_job(x: torch.Tensor, y: torch.Tensor, batch_size: int, width: float, amp: bool) -> Job:
    """A training job over the clips (x, y) in memory, for train._train_epoch."""
    table = pd.DataFrame({"filename": [f"{i}.wav" for i in range(len(x))]})
    settings = TrainSettings(epochs=1, width=width, selection="validation", eval_batch_size=256,
                             amp=amp, compile=False)  # fmt: skip
    fit = Clips(x, y, table)
    unused = Store(Path("unused.npy"), Path("unused.tsv"))  # the data are in memory
    files = TrainFiles(train=unused, test=unused, holdout=Path("unused.tsv"),
                       model=Path("model.pt"), metrics=Path("metrics.json"),
                       history=Path("history.tsv"))  # fmt: skip
    return Job(run="bench", hyperparameters={"batch_size": batch_size}, settings=settings,
               files=files, fit=fit, select=fit, test=fit, feature_settings={})  # fmt: skip


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


def naive_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description="in-memory split vs per-clip-file DataLoader")
    ap.add_argument("--model", choices=["tiny", "cnn10"], default="tiny")
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--mels", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-workers", type=int, default=4)
    args = ap.parse_args(argv)
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
            t_ours.append(time_call(ours, device))
            t_naive.append(time_call(naive, device))
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


def main() -> None:
    dispatch(naive_main, peak_main)


if __name__ == "__main__":
    main()
