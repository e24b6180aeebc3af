"""Timing helpers shared by the benchmarks: the paper's data size, the device's GEMM rate at each
precision, FLOP counts, a synchronised stopwatch and a logger that timestamps grid points."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from ascsharp.train.evaluate import PRECISIONS, forward_precision

# The real training split (fold1_train of TAU Urban Acoustic Scenes 2020 Mobile, development)
# and its clips' length in frames (10 s at 16 kHz, hop 160, centred STFT).
PAPER_CLIPS, PAPER_FRAMES = 13_962, 1001
# The test fold (fold1_evaluate): the paper's selection evaluates it after every epoch.
PAPER_TEST_CLIPS = 2_968


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of fn(), waiting for the device's queued work when it is a GPU."""
    t0 = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - t0


def gemm_rate(device: torch.device, precision: str = "float32") -> float:
    """Dense GEMM FLOP/s of this device and thread count at `precision` (a key of
    landscape.PRECISIONS): the practical peak that a forward at that precision is held to."""
    cuda = device.type == "cuda"
    n, repeats = (4096, 20) if cuda else (1024, 1)  # sizes at which each reaches its rate
    dtype = PRECISIONS[precision] or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run():
        with forward_precision(device, precision):
            for _ in range(repeats):
                a @ b

    run()
    sync(device)
    return 2 * n**3 * repeats / min(time_call(run, device) for _ in range(5))


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


def model_flops(arch: str, width: float, frames: int, backward: bool) -> int:
    """FLOPs of one clip's forward (and backward) through `arch`, counted on the meta device:
    no memory, no compute, so also for sizes that this machine could not run."""
    from torch.utils.flop_counter import FlopCounterMode

    from ascsharp.train.models import build_model

    with torch.device("meta"):
        model = build_model(arch, n_classes=10, width=width, n_mels=64).train(backward)
        x = torch.randn(1, 64, frames)
        y = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = nn.functional.cross_entropy(model(x), y)
        if backward:
            loss.backward()
    return counter.get_total_flops()


def quiet_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


class PointStamps(logging.Handler):
    """A logger for evaluate_points that notes when each grid point's progress line arrives."""

    def __init__(self):
        super().__init__()
        self.logger = logging.getLogger("bench.points")
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.clear()

    def clear(self) -> None:
        self.t0, self.times = time.perf_counter(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("points "):
            self.times.append(time.perf_counter())

    def first_and_rest(self) -> tuple[float, float]:
        """Seconds to the first point, and for all points after it."""
        return self.times[0] - self.t0, self.times[-1] - self.times[0]
