"""Adaptive sharpness (Kwon et al., ICML 2021; Andriushchenko et al., ICML 2023), average and
worst case, with the plain (non-adaptive) variants for comparison.

With the element-wise scaling T_w = diag(|w|) (adaptive) or T_w = I (plain), and L the mean
cross-entropy over the clips (model in eval mode, BN running statistics fixed):

    average case  S_avg(w) = E_{delta ~ N(0, rho^2 diag(|w|^2))} L(w + delta) - L(w)
    worst case    S_max(w) = E_S max_{||T_w^{-1} delta||_p <= rho} L_S(w + delta) - L_S(w)

as Andriushchenko et al. define them (their eq. for S^rho_avg and S^rho_max with c = |w|): the
noise has per-weight standard deviation rho*|w_i|, with no 1/d or norm normalisation, and the
worst case is the m-sharpness average over batches S of m clips. Writing delta = T_w u, both
are taken in u: u ~ N(0, rho^2 I), and max over ||u||_p <= rho, so a weight w_i scaled by c
and the next layer by 1/c (ReLU networks) gives the same perturbed function and the same value.

The worst case is searched for in one of two ways (`search`):

- "reference" (default): the search of Andriushchenko et al.'s code
  (tml-epfl/sharpness-vs-generalization, `eval_APGD_sharpness` with its defaults: one start
  from delta = 0, step size 2 rho), so that values compare with their tables. In w-space each
  step moves delta by step * |w| * g / ||g|| (p = 2; g the gradient of the batch loss in w) or
  step * |w| * sign(g) (p = inf), projects onto the ball (p = 2 adaptive: onto the ellipsoid
  ||delta / |w| ||_2 <= rho by bisection on the Lagrange multiplier, to |norm - rho| <= 1e-5;
  p = inf: clipping), then mixes in the previous iterate with momentum 0.75. At checkpoints
  (22 %, 41 %, 57 %, ... of the steps, as APGD) the step is halved, and the next gradient taken
  at the best point so far, when fewer than 75 % of the steps since the last checkpoint
  improved the loss or nothing changed. The best loss seen is kept.
- "strong": a greedy projected ascent that is a tighter lower bound on small networks (see
  WorstOptions) but not the reference's algorithm.

All parameters are perturbed, as in Andriushchenko et al.'s code: conv and linear weights,
biases and BN affine parameters (`parameters="weights"` keeps tensors with <= 1 dimension, i.e.
biases and BN affine, unperturbed instead). A weight that is exactly 0 is not perturbed in the
adaptive variants (its scale is 0; the reference's ellipsoid would divide by it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.core.progress import Progress
from ascsharp.core.seeds import generator
from ascsharp.measures.common import (
    Cost,
    LossFn,
    Partial,
    UnitHook,
    check_data,
    cross_entropy,
    frozen_eval,
    mean_and_se,
    mean_loss,
    measure_flops,
    partial_fingerprint,
)
from ascsharp.train.evaluate import EvalForward, check_precision

PARAMETERS = ("all", "weights")


@dataclass(frozen=True)
class AverageOptions:
    """`samples` noise draws of scale `rho`; `antithetic` evaluates each draw at +delta and
    -delta and averages the two (same expectation, the gradient term cancels exactly);
    `batch_size` clips per forward chunk (memory, not results); `precision` of the forward
    passes (a key of PRECISIONS; float32 is IEEE).

    rho, samples, precision and batch_size are the config's `measures.adaptive_average`
    (defaults in the schema); the variants below them are not configurable: their defaults are
    the measure."""

    rho: float
    samples: int
    batch_size: int
    precision: str = "float32"
    adaptive: bool = True
    parameters: str = "all"
    antithetic: bool = False

    def __post_init__(self) -> None:
        check_options(self.rho, self.parameters, self.batch_size)
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        check_precision(self.precision)


def check_options(rho: float, parameters: str, batch_size: int) -> None:
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if parameters not in PARAMETERS:
        raise ValueError(f"parameters {parameters!r}: expected one of {PARAMETERS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def scales(w0: Sequence[Tensor], adaptive: bool, parameters: str) -> list[Tensor]:
    """T_w as one tensor per parameter: |w| (adaptive) or 1 (plain); 0 where not perturbed."""
    out = []
    for w in w0:
        t = w.abs() if adaptive else torch.ones_like(w)
        if parameters == "weights" and w.dim() <= 1:
            t = torch.zeros_like(w)
        out.append(t)
    return out


def set_perturbed(
    params: Sequence[Tensor],
    w0: Sequence[Tensor],
    t: Sequence[Tensor],
    u: Sequence[Tensor],
    sign: float = 1.0,
) -> None:
    """Weights w0 + sign * T u, in place."""
    with torch.no_grad():
        for p, w, s, d in zip(params, w0, t, u, strict=True):
            torch.addcmul(w, s, d, value=sign, out=p)


def value_names(kind: str, adaptive: bool) -> tuple[str, str]:
    # The plain variants' keys drop the prefix, so a plain value is never read as adaptive.
    key = f"adaptive_{kind}" if adaptive else kind
    return key, f"{key}_se"


# ---------------------------------------------------------------------------------------------
# Average case


def adaptive_average(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: AverageOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
    loss_fn: LossFn = cross_entropy,
    compile: bool = False,
) -> dict[str, Any]:
    """Average-case (adaptive) sharpness, Monte Carlo over `samples` seeded Gaussian draws.

    Draw k is u_k ~ N(0, rho^2 I) from generator(seed, "adaptive-average", k) on the CPU, one
    tensor per parameter in model.parameters() order; delta_k = T_w u_k. The value is the mean
    of L(w + delta_k) - L(w) over k, its standard error the std (ddof 1) over sqrt(samples).
    Every loss is evaluated on the fast eval forward (EvalForward: BN folded, at
    `opts.precision`, through torch.compile with `compile` on CUDA), L(w) too, so that the
    difference is taken between losses of one precision.
    Returns {"values", "options", "cost"}; values: adaptive_average and adaptive_average_se
    (plain: average, average_se), loss, perturbed_loss, samples.
    """
    opts = options if isinstance(options, AverageOptions) else AverageOptions(**options)
    check_data(x, y, opts.batch_size)
    params = list(model.parameters())
    cost = Cost()
    key, key_se = value_names("average", opts.adaptive)
    with frozen_eval(model, params) as w0:
        cost.flops_per_clip = measure_flops(model, x, y, ["forward"], loss_fn)
        part = Partial(partial_path,
                       partial_fingerprint(key, model, x, y, opts, seed, loss_fn), log)  # fmt: skip
        t = scales(w0, opts.adaptive, opts.parameters)
        fast = EvalForward(model, precision=opts.precision, compile=compile and x.is_cuda)
        loss0 = mean_loss(model, x, y, opts.batch_size, cost, loss_fn, fast)
        log.info("%s: loss at the weights %.6g; %d samples, rho %g", key, loss0, opts.samples,
                 opts.rho)  # fmt: skip
        progress = Progress(opts.samples, "samples", logger=log)
        perturbed: list[float] = []
        for k in range(opts.samples):
            name = f"sample/{k}"
            if name in part:
                perturbed.append(float(part[name]))
                cost.resumed_units += 1
                progress.update(1, "(from the partial file)")
                continue
            gen = generator(seed, "adaptive-average", k)
            u = [torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device).mul_(opts.rho)
                 for w in w0]  # fmt: skip
            losses = []
            for sign in (1.0, -1.0) if opts.antithetic else (1.0,):
                set_perturbed(params, w0, t, u, sign)
                losses.append(mean_loss(model, x, y, opts.batch_size, cost, loss_fn, fast))
            perturbed.append(sum(losses) / len(losses))
            part.put(name, perturbed[-1])
            progress.update(1, f"perturbed loss {perturbed[-1]:.6g}")
            if on_unit is not None:
                on_unit(k + 1)
    value, se = mean_and_se([v - loss0 for v in perturbed])
    log.info("%s = %.6g +- %.2g (rho %g, %d samples)", key, value, se, opts.rho, len(perturbed))
    return {
        "values": {
            key: value,
            key_se: se,
            "loss": loss0,
            "perturbed_loss": float(np.mean(perturbed)),
            "samples": len(perturbed),
        },
        "options": {
            **asdict(opts),
            "noise": "delta = T_w u, u ~ N(0, rho^2 I)",
            "scaling": "|w|" if opts.adaptive else "identity",
        },  # fmt: skip
        "cost": cost.to_dict(params[0].device),
    }


# ---------------------------------------------------------------------------------------------
# Worst case
