"""Generalisation measures of Jiang et al., "Fantastic generalization measures and where to find
them" (ICLR 2020, arXiv 1912.02178): PAC-Bayes flatness, the norm baselines and the inverse
margin. Their numbers in brackets are the measures' numbers in that paper.

- PAC-Bayes flatness [53] and its magnitude-aware form [61]: 1 / sigma'^2, where sigma' is the
  largest sigma whose Gaussian weight noise moves the expected *training accuracy* (0-1 error,
  as their search does, not the cross-entropy) by at most 0.1: u ~ N(0, sigma^2 I), and for the
  magnitude-aware form u_i ~ N(0, sigma^2 w_i^2 + eps^2) with eps = 1e-3. sigma' is found by
  bisection in [0, 2], stopping when the deviation is within 0.01 of 0.1 or after `depth`
  halvings, the expectation a Monte Carlo mean over `samples` draws: the search of their
  Algorithm 1 with the settings of the reimplementation by Dziugaite et al. (NeurIPS 2020,
  nitarshan/robust-generalization-measures, "adapted from" Jiang et al.'s code: depth 15,
  10 draws, tolerance 1e-2). All parameters are perturbed (BN running statistics stay, the
  model is in eval mode). Draw j is the same standard normal z_j at every sigma of the search
  (u = sigma z_j, resp. sqrt(sigma^2 w^2 + eps^2) z_j): common random numbers, which make the
  estimated deviation a smooth function of sigma without changing its expectation.
- Norm baselines, over the weight tensors with more than one dimension (conv and linear
  weights; biases and BN affine parameters are not "weights" there), conv kernels reshaped to
  (out channels, in channels x kernel) matrices as in Dziugaite et al.'s reimplementation:
  log of the product of squared Frobenius norms [37], log of the product of squared spectral
  norms (largest singular value of the reshaped kernel) [32], the l2 distance from the initial
  weights [dist. l2], the l2 norm of the weights [l2; the trivial baseline], and the path norm
  [44]: the sum of the outputs of the network with every parameter squared on an input of
  ones. BatchNorm in eval mode is the per-channel affine map a x + b (a = gamma/sqrt(var+eps),
  b = beta - a mu) and enters the path norm as a^2 x + b^2: what squaring gives after folding
  each BN into the bias-free conv before it, as Dziugaite et al. fold; PANNs' input BN (bn0)
  has no conv before it and counts as its own diagonal layer. The products are reported as
  logs (they overflow float64 for CNN14); ranks are unchanged. Jiang et al.'s division by the
  number of training clips is left out: every run of a grid has the same count.
- Inverse margin [22]: 1 / gamma^2, gamma the 10th percentile of the output margin
  (true-class logit minus the largest other logit) over the clips: the floor(n/10)-th smallest
  margin (at least the smallest), as Dziugaite et al. take it. A gamma <= 0 (more than a tenth
  of the clips misclassified) still gives 1/gamma^2; `margin` records gamma itself.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
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
    Partial,
    UnitHook,
    _batch,
    check_data,
    evaluations,
    frozen_eval,
    measure_flops,
    partial_fingerprint,
)
from ascsharp.train.evaluate import EvalForward, check_precision

PACBAYES_VARIANTS = ("isotropic", "magnitude")


@dataclass(frozen=True)
class PacBayesOptions:
    """`samples` Monte Carlo draws per bisection step, at most `depth` steps, the `precision`
    of the forward passes (the config's `measures.pacbayes`); the rest is Jiang et al.'s
    definition and stays fixed: accuracy deviation `threshold` within `tolerance`, search
    interval [0, `sigma_max`], magnitude floor `magnitude_eps`."""

    samples: int
    depth: int
    batch_size: int
    precision: str = "float32"
    threshold: float = 0.1
    tolerance: float = 0.01
    sigma_max: float = 2.0
    magnitude_eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.samples < 1 or self.depth < 1 or self.batch_size < 1:
            raise ValueError(f"samples, depth and batch_size must be >= 1: {self}")
        check_precision(self.precision)


@dataclass(frozen=True)
class MarginOptions:
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class NormOptions:
    """No settings: the norms are functions of the weights alone."""


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    cost: Cost,
    fast: EvalForward | None = None,
) -> float:
    """Fraction of clips whose largest logit is the true class; through `fast` when given."""
    like = next(model.parameters())
    correct = 0
    with evaluations(model, fast) as forward:
        for start in range(0, len(x), batch_size):
            xb, yb = _batch(x, y, start, batch_size, like)
            correct += int((forward(xb).argmax(dim=1) == yb).sum())
    cost.forward_clips += len(x)
    cost.loss_evaluations += 1
    return correct / len(x)


def pacbayes_sigma(
    deviation_at: Callable[[int, float], float], opts: PacBayesOptions
) -> dict[str, Any]:
    """Bisection for the largest sigma in [0, sigma_max] with deviation <= threshold.

    `deviation_at(k, sigma)` is the estimated deviation at step k (cached per step by the
    caller, so a resumed search replays the same steps). Returns sigma (the last midpoint, as
    their search), the steps taken and whether the deviation came within the tolerance.
    """
    low, high = 0.0, opts.sigma_max
    steps = []
    sigma, hit = high, False
    for k in range(opts.depth):
        sigma = (low + high) / 2
        d = deviation_at(k, sigma)
        steps.append({"sigma": sigma, "deviation": d})
        if abs(d - opts.threshold) < opts.tolerance:
            hit = True
            break
        if d > opts.threshold:
            high = sigma
        else:
            low = sigma
    return {"sigma": sigma, "within_tolerance": hit, "steps": steps}


def pacbayes(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: PacBayesOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """PAC-Bayes flatness 1/sigma'^2, isotropic and magnitude-aware (module docstring).

    Every accuracy is evaluated on the fast eval forward (EvalForward: BN folded, at
    `opts.precision`, through torch.compile with `compile` on CUDA), the one at the weights
    too. Each bisection step (one variant, one sigma, `samples` forward passes) is a unit of the
    partial file. Returns {"values", "options", "cost"}; values pacbayes_flatness,
    pacbayes_magnitude_flatness, their sigmas, the accuracy at the weights, the searches.
    """
    opts = options if isinstance(options, PacBayesOptions) else PacBayesOptions(**options)
    check_data(x, y, opts.batch_size)
    params = list(model.parameters())
    cost = Cost()
    with frozen_eval(model, params) as w0:
        cost.flops_per_clip = measure_flops(model, x, y, ["forward"])
        part = Partial(partial_path, partial_fingerprint("pacbayes", model, x, y, opts, seed,
                                                         accuracy), log)  # fmt: skip
        fast = EvalForward(model, precision=opts.precision, compile=compile and x.is_cuda)
        acc0 = accuracy(model, x, y, opts.batch_size, cost, fast)
        progress = Progress(2 * opts.depth, "bisection steps", logger=log)
        units = 0

        def draws(j: int) -> list[Tensor]:
            gen = generator(seed, "pacbayes", j)
            return [torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device) for w in w0]

        searches = {}
        for variant in PACBAYES_VARIANTS:

            def deviation_at(k: int, sigma: float, variant: str = variant) -> float:
                nonlocal units
                name = f"{variant}/{k}"
                units += 1
                if name in part:
                    cost.resumed_units += 1
                    progress.update(1, "(from the partial file)")
                    return float(part[name])
                accs = []
                for j in range(opts.samples):
                    with torch.no_grad():
                        for p, w, z in zip(params, w0, draws(j), strict=True):
                            if variant == "isotropic":
                                std = torch.full_like(w, sigma)
                            else:
                                std = (sigma**2 * w**2 + opts.magnitude_eps**2).sqrt()
                            torch.addcmul(w, std, z, out=p)
                    accs.append(accuracy(model, x, y, opts.batch_size, cost, fast))
                d = abs(float(np.mean(accs)) - acc0)
                part.put(name, d)
                progress.update(1, f"{variant} sigma {sigma:.5g}: accuracy deviation {d:.4f}")
                if on_unit is not None:
                    on_unit(units)
                return d

            searches[variant] = pacbayes_sigma(deviation_at, opts)
    iso, mag = searches["isotropic"]["sigma"], searches["magnitude"]["sigma"]
    log.info("pacbayes: sigma' %.5g (magnitude-aware %.5g), accuracy at the weights %.4f",
             iso, mag, acc0)  # fmt: skip
    return {
        "values": {
            "pacbayes_flatness": 1 / iso**2,
            "pacbayes_magnitude_flatness": 1 / mag**2,
            "sigma": iso,
            "magnitude_sigma": mag,
            "accuracy": acc0,
            "searches": searches,
        },
        "options": {
            **asdict(opts),
            "quantity": "training accuracy (0-1), mean over samples, |deviation| from the weights",
            "noise": "isotropic: u = sigma z; magnitude: u = sqrt(sigma^2 w^2 + eps^2) z; "
            "z ~ N(0, I) per draw, shared by all sigmas",
            "parameters": "all",
        },
        "cost": cost.to_dict(params[0].device),
    }


# ---------------------------------------------------------------------------------------------
# Norms


def weight_matrices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Every parameter with more than one dimension, as (out, rest) matrices."""
    return [(n, p.detach().reshape(p.shape[0], -1)) for n, p in model.named_parameters()
            if p.dim() > 1]  # fmt: skip


@torch.no_grad()
def path_norm(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Sum of the outputs of `model` with every parameter squared, on one input of ones.

    BatchNorm (eval) is taken as the affine map a x + b and squared as a^2 x + b^2 (module
    docstring). Computed in float64 on a copy; `model` is untouched.
    """
    net = copy.deepcopy(model).double().eval()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            a = module.weight / (module.running_var + module.eps).sqrt()
            b = module.bias - a * module.running_mean
            module.weight.copy_(a**2)
            module.bias.copy_(b**2)
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)  # so that var + eps is exactly 1
        else:
            for p in module.parameters(recurse=False):
                p.pow_(2)
    like = next(net.parameters())
    return float(net(torch.ones(1, *input_shape, dtype=torch.float64, device=like.device)).sum())


def norms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: NormOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    initial: nn.Module,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """The norm baselines (module docstring) of `model`, with `initial` its initial weights.

    The clips only give the input shape of the path norm. Returns {"values", "options",
    "cost"}; values log_prod_frobenius, log_prod_spectral, path_norm, distance_from_init,
    weight_norm, and the per-tensor norms.
    """
    del y, seed, partial_path, on_unit  # one quick unit: nothing to resume
    opts = options if isinstance(options, NormOptions) else NormOptions(**options)
    cost = Cost()
    weights = weight_matrices(model)
    init = dict(weight_matrices(initial))
    if [n for n, _ in weights] != list(init):
        raise ValueError("initial model: other weight tensors than the trained model")
    per_tensor = {}
    for name, w in weights:
        w64 = w.double()
        per_tensor[name] = {
            "frobenius": float(torch.linalg.matrix_norm(w64, "fro")),
            "spectral": float(torch.linalg.matrix_norm(w64, 2)),
            "distance_from_init": float((w64 - init[name].to(w64)).norm()),
        }
    values = {
        "log_prod_frobenius": sum(2 * math.log(t["frobenius"]) for t in per_tensor.values()),
        "log_prod_spectral": sum(2 * math.log(t["spectral"]) for t in per_tensor.values()),
        "path_norm": path_norm(model, x.shape[1:]),
        "distance_from_init": math.sqrt(
            sum(t["distance_from_init"] ** 2 for t in per_tensor.values())
        ),  # fmt: skip
        "weight_norm": math.sqrt(sum(t["frobenius"] ** 2 for t in per_tensor.values())),
        "weight_tensors": len(per_tensor),
        "per_tensor": per_tensor,
    }
    log.info("norms: log prod Frobenius^2 %.5g, log prod spectral^2 %.5g, path norm %.5g, "
             "distance from init %.5g", values["log_prod_frobenius"],
             values["log_prod_spectral"], values["path_norm"],
             values["distance_from_init"])  # fmt: skip
    return {
        "values": values,
        "options": {
            **asdict(opts),
            "weights": "parameters with > 1 dimension, reshaped to (out, rest)",
            "batchnorm": "not folded; path norm: a^2 x + b^2",
        },
        "cost": cost.to_dict(next(model.parameters()).device),
    }


# ---------------------------------------------------------------------------------------------
# Margin


@torch.no_grad()
def margins(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, cost: Cost) -> Tensor:
    """True-class logit minus the largest other logit, per clip (float64, on the CPU)."""
    like = next(model.parameters())
    out = []
    for start in range(0, len(x), batch_size):
        xb, yb = _batch(x, y, start, batch_size, like)
        logits = model(xb).double()
        true = logits.gather(1, yb[:, None]).squeeze(1)
        others = logits.scatter(1, yb[:, None], -math.inf).amax(dim=1)
        out.append((true - others).cpu())
    cost.forward_clips += len(x)
    cost.loss_evaluations += 1
    return torch.cat(out)


def inverse_margin(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: MarginOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """1 / gamma^2 with gamma the 10th percentile of the margins (module docstring)."""
    del seed, partial_path, on_unit  # one forward pass: nothing to resume
    opts = options if isinstance(options, MarginOptions) else MarginOptions(**options)
    check_data(x, y, opts.batch_size)
    params = list(model.parameters())
    cost = Cost()
    with frozen_eval(model, params):
        cost.flops_per_clip = measure_flops(model, x, y, ["forward"])
        m = margins(model, x, y, opts.batch_size, cost)
    k = max(1, len(m) // 10)
    gamma = float(torch.kthvalue(m, k).values)
    log.info("margin: 10th percentile %.5g (clip %d of %d by margin)", gamma, k, len(m))
    return {
        "values": {
            "inverse_margin": 1 / gamma**2 if gamma != 0 else math.inf,
            "margin": gamma,
            "rank": k,
            "median_margin": float(m.median()),
            "negative_margins": int((m < 0).sum()),
        },
        "options": {**asdict(opts), "percentile": "floor(n/10)-th smallest margin"},
        "cost": cost.to_dict(params[0].device),
    }
