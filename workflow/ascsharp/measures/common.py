"""What the sharpness measures beyond the landscape share (one JSON file per run and measure).

Three measures of a trained model, on the clips it was trained on, model in eval mode (BN uses
its running statistics, which are never changed):

- `hessian` (ascsharp.measures.curvature): top-k Hessian eigenvalues (Lanczos) and the Hessian trace
  (Hutchinson, with its standard error);
- `adaptive_average`, `adaptive_worst` (ascsharp.measures.adaptive): average- and worst-case
  adaptive sharpness of Andriushchenko et al. (ICML 2023), with the plain (non-adaptive) variants.

This module holds what they share: the loss over a set of clips (summed per clip, divided by
the clip count, as the landscape), gradients, the cost ledger (passes and FLOPs) and the partial
files that make a killed job resumable. The `ascsharp measure` job is `ascsharp.measures.job`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ascsharp.core.io import read_partial, write_partial
from ascsharp.core.tensors import tensor_digest
from ascsharp.train.evaluate import EvalForward

# Per-clip loss: (outputs, labels) -> (n,) losses. Mean cross-entropy over clips by default.
LossFn = Callable[[Tensor, Tensor], Tensor]
# Called after each finished unit (sample, restart) with the number done; tests raise from it.
UnitHook = Callable[[int], None]


def cross_entropy(outputs: Tensor, y: Tensor) -> Tensor:
    """Per-clip cross-entropy; the measures divide its sum by the clip count."""
    return F.cross_entropy(outputs, y, reduction="none")


# ---------------------------------------------------------------------------------------------
# Cost ledger


@dataclass
class Cost:
    """Work done by one measure in this process: passes over clips, HVPs, wall time, FLOPs.

    A pass over a clip is counted per kind: `forward` (loss only), `gradient` (forward and
    backward) and `hvp` (one Hessian-vector product). FLOPs are the per-clip counts of
    torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions only, as usual) measured
    on one clip of the same data, times the clip counts.
    """

    forward_clips: int = 0
    gradient_clips: int = 0
    hvp_clips: int = 0
    loss_evaluations: int = 0
    gradient_evaluations: int = 0
    hvps: int = 0
    resumed_units: int = 0
    flops_per_clip: dict[str, float] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def to_dict(self, device: torch.device) -> dict[str, Any]:
        counts = {"forward": self.forward_clips, "gradient": self.gradient_clips,
                  "hvp": self.hvp_clips}  # fmt: skip
        flops = sum(n * self.flops_per_clip.get(k, math.nan) for k, n in counts.items() if n)
        return {
            "wall_s": time.perf_counter() - self._t0,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "forward_clips": self.forward_clips,
            "gradient_clips": self.gradient_clips,
            "hvp_clips": self.hvp_clips,
            "loss_evaluations": self.loss_evaluations,
            "gradient_evaluations": self.gradient_evaluations,
            "hvps": self.hvps,
            "resumed_units": self.resumed_units,
            "flops_per_clip": dict(self.flops_per_clip),
            "flops": flops,
            "flop_counter": "torch.utils.flop_counter.FlopCounterMode on 1 clip, times clips",
        }


def measure_flops(
    model: nn.Module, x: Tensor, y: Tensor, kinds: Sequence[str], loss_fn: LossFn = cross_entropy
) -> dict[str, float]:
    """FLOPs per clip of a forward pass and/or a forward+backward pass, on one clip (an HVP's:
    ascsharp.measures.curvature).

    Matmul and convolution FLOPs grow linearly with the clips in a batch, so one clip times
    the clip count is the cost of the whole set. Parameters are left untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = list(model.parameters())
    xb, yb = _batch(x, y, 0, 1, params[0])
    out: dict[str, float] = {}
    for kind in kinds:
        with FlopCounterMode(display=False) as counter:
            if kind == "forward":
                with torch.no_grad():
                    model(xb)
            elif kind == "gradient":
                torch.autograd.grad(loss_fn(model(xb), yb).sum(), params)
            else:
                raise ValueError(f"unknown FLOP kind {kind!r}")
        out[kind] = float(counter.get_total_flops())
    return out


# ---------------------------------------------------------------------------------------------
# Loss and gradient over a set of clips


def _batch(x: Tensor, y: Tensor, start: int, size: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of clips on the parameters' device and in their dtype (features may be fp16)."""
    xb = x[start : start + size].to(like.device, like.dtype, non_blocking=True)
    return xb, y[start : start + size].to(like.device, non_blocking=True)


def evaluations(model: nn.Module, fast: EvalForward | None):
    """The forward of one loss or accuracy evaluation at the model's current weights, without
    autograd: `fast`'s (BN folded, at its precision; see EvalForward) or the model's own."""
    if fast is not None:
        return fast.at_current_weights()
    return contextlib.nullcontext(model)


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    cost: Cost,
    loss_fn: LossFn = cross_entropy,
    fast: EvalForward | None = None,
) -> float:
    """Sum of per-clip losses over all clips (in float64) divided by their number; through
    `fast` when given (evaluations)."""
    like = next(model.parameters())
    total = 0.0
    with evaluations(model, fast) as forward:
        for start in range(0, len(x), batch_size):
            xb, yb = _batch(x, y, start, batch_size, like)
            total += float(loss_fn(forward(xb), yb).double().sum())
    cost.forward_clips += len(x)
    cost.loss_evaluations += 1
    return total / len(x)


def loss_and_gradient(
    model: nn.Module,
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    cost: Cost,
    loss_fn: LossFn = cross_entropy,
) -> tuple[float, list[Tensor]]:
    """Mean loss over all clips and its gradient, accumulated chunk by chunk."""
    like = params[0]
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = _batch(x, y, start, batch_size, like)
        loss = loss_fn(model(xb), yb).sum() / len(x)
        for g, gb in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g.add_(gb)
        total += float(loss.detach().double()) * len(x)
    cost.gradient_clips += len(x)
    cost.gradient_evaluations += 1
    return total / len(x), grads


@contextlib.contextmanager
def frozen_eval(model: nn.Module, params: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """Eval mode (BN running statistics, no dropout) and the weights restored bit-exactly on exit.

    Yields copies of the original parameter values.
    """
    was_training = model.training
    model.eval()
    w0 = [p.detach().clone() for p in params]
    try:
        yield w0
    finally:
        with torch.no_grad():
            for p, w in zip(params, w0, strict=True):
                p.copy_(w)
        model.train(was_training)


def check_data(x: Tensor, y: Tensor, batch_size: int) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x has {len(x)} clips, y has {len(y)}; need equal and > 0")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# ---------------------------------------------------------------------------------------------
# Resumable partial results


def partial_fingerprint(
    measure: str, model: nn.Module, x: Tensor, y: Tensor, options: Any, seed: int, loss_fn: LossFn
) -> str:
    """Ties saved samples to the measure, options, seed, weights (and BN buffers) and data."""
    h = hashlib.sha256()
    opts = asdict(options) if is_dataclass(options) else dict(options)
    h.update(json.dumps({"measure": measure, "options": opts, "seed": int(seed),
                         "loss": getattr(loss_fn, "__qualname__", repr(loss_fn))},
                        sort_keys=True, default=str).encode())  # fmt: skip
    h.update(tensor_digest(list(model.state_dict().values())).encode())
    h.update(tensor_digest([x, y]).encode())
    return h.hexdigest()


class Partial:
    """Finished units of one measure (Hutchinson samples, noise draws, PGA restarts), saved to
    `<out>.partial.json` after each one, so that a killed job rerun with the same inputs skips
    them. A file of other inputs (weights, data, options, seed) is refused, not mixed in."""

    def __init__(self, path: str | Path | None, fp: str, log: logging.Logger):
        self.path = Path(path) if path is not None else None
        self.fp = fp
        self.done: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self.done = read_partial(self.path, fp, "measure", "weights/data/options/seed")
            log.info("resuming from %s: %d units done", self.path, len(self.done))

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def __getitem__(self, key: str) -> Any:
        return self.done[key]

    def put(self, key: str, value: Any) -> None:
        self.done[key] = value
        if self.path is not None:
            write_partial(self.path, self.fp, self.done)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error (std with ddof=1 over sqrt(n)); se is NaN for n = 1."""
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se
