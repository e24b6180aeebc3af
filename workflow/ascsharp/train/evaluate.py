"""Batched evaluation and the accuracy breakdowns reported for every model.

Losses are sums over clips divided by the clip count, never means of batch means, so the
number does not depend on the batch size.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ascsharp.data.meta import CITIES, DEVICES, SCENES, SEEN_DEVICES, UNSEEN_DEVICES
from ascsharp.train.models import PannsCnn, fold_batchnorm, refold_


def pick_device() -> torch.device:
    """CUDA when this process can see a GPU, else CPU (also inside a job granted a GPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked for; a no-op elsewhere (CPU results stay exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int, amp: bool = False
) -> torch.Tensor:
    """Logits for every clip of `x` (model in eval mode), in float32 on x's device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device, torch.float32, non_blocking=True)
        with autocast(device, amp):
            out.append(model(batch).float())
    return torch.cat(out)


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (summed in float64 over all clips, then / N) and accuracy."""
    y = y.to(logits.device)
    loss = F.cross_entropy(logits.double(), y, reduction="sum").item() / len(y)
    acc = int((logits.argmax(1) == y).sum()) / len(y)
    return loss, acc


def breakdown(table: pd.DataFrame, logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Accuracy overall, by device / city / scene, seen and unseen devices, UAR and macro-F1.

    `seen` and `unseen` are means of the per-device accuracies (A-S3 and S4-S6), so a device
    with more clips does not weigh more. The published table reports only per-device columns;
    its seen/unseen are derived the same way (`read_paper_table`). With ~330 test clips per
    device in fold1_evaluate this is nearly the pooled accuracy of those clips.
    """
    loss, acc = loss_and_accuracy(logits, y)
    pred = logits.argmax(1).cpu().numpy()
    true = y.cpu().numpy()
    correct = pred == true

    def acc_by(column: str, values) -> dict[str, float]:
        col = table[column].to_numpy()
        return {v: float(correct[col == v].mean()) for v in values if (col == v).any()}

    by_device = acc_by("device", DEVICES)
    recall, f1 = [], []
    for k in range(len(SCENES)):
        tp = np.sum((pred == k) & (true == k))
        n_true, n_pred = np.sum(true == k), np.sum(pred == k)
        if n_true:
            recall.append(tp / n_true)
            f1.append(2 * tp / (n_true + n_pred))
    seen = [by_device[d] for d in SEEN_DEVICES if d in by_device]
    unseen = [by_device[d] for d in UNSEEN_DEVICES if d in by_device]
    return {
        "loss": loss,
        "accuracy": acc,
        "seen": float(np.mean(seen)) if seen else float("nan"),
        "unseen": float(np.mean(unseen)) if unseen else float("nan"),
        "uar": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "n": int(len(true)),
        "by_device": by_device,
        "by_city": acc_by("city", CITIES),
        "by_scene": {
            SCENES[k]: float(correct[true == k].mean())
            for k in range(len(SCENES))
            if (true == k).any()
        },
    }


# Forward precision of a grid point. "float32" is IEEE single precision everywhere: on CUDA,
# PyTorch would otherwise run float32 convolutions on TF32 tensor cores (10-bit mantissa).
# "tf32" allows that; "bfloat16"/"float16" autocast the forward. The loss is always summed in
# float64. CPUs have no TF32, so there "tf32" is float32. bench_precision.py measures each.
# Keyed by the names of landscape.precision in the schema (tests/core/test_settings.py).
PRECISIONS = {"float32": None, "tf32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(precision: str) -> None:
    """Refuse a forward precision that is not a key of PRECISIONS, naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISIONS)}")


@contextlib.contextmanager
def forward_precision(device: torch.device, precision: str):
    """Run the enclosed forward passes at `precision` (a key of PRECISIONS), then restore."""
    dtype = PRECISIONS[precision]  # callers check the name (evaluate_points, the CLI)
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        if dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=dtype):
                yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@contextlib.contextmanager
def autotuned(device: torch.device):
    """On CUDA, let cuDNN time its kernels once per input shape (cudnn.benchmark), then
    restore. Jobs of fixed shapes pay it back many times: IEEE float32 convolutions ran 5x
    faster on an H200 with it (52 s -> 10 s per paper grid point, README Performance)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = saved or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class EvalForward:
    """The eval-mode forward of `model` at its current weights, at a forward precision, fast:
    every BatchNorm folded into its convolution (CNN10/CNN14), then channels-last (eager) or
    torch.compile'd (`compile`). The same function as `model.eval()` up to float rounding.
    Puts `model` in eval mode; callers restore its mode when they are done.

    Callers that change `model`'s weights between evaluations (grid points, noise draws) take
    each evaluation's forward from `at_current_weights()`, which refolds first:

        fast = EvalForward(model, precision="float16")
        with fast.at_current_weights() as forward:
            logits = predict(forward, x, batch_size)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        precision: str = "float32",
        compile: bool = False,
        fold_bn: bool = True,
    ):
        check_precision(precision)
        self.model = model.eval()
        self.precision = precision
        self.device = next(model.parameters()).device
        self.folded = fold_batchnorm(model) if fold_bn and isinstance(model, PannsCnn) else None
        forward = model if self.folded is None else self.folded
        if compile:
            # NCHW: the layout measured compiled; eager, channels-last pays (oneDNN, cuDNN).
            forward = torch.compile(forward, dynamic=False)
        elif self.folded is not None:
            forward = self.folded.to(memory_format=torch.channels_last)
        self.forward = forward

    @contextlib.contextmanager
    def at_current_weights(self):
        """The forward at `model`'s weights now, in inference mode at the precision."""
        if self.folded is not None:
            refold_(self.folded, self.model)
        with torch.inference_mode(), forward_precision(self.device, self.precision):
            yield self.forward
