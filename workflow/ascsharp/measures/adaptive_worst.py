"""Worst-case adaptive sharpness (Andriushchenko et al., ICML 2023): the m-sharpness maximum of
the loss over the ball ||T_w^{-1} delta||_p <= rho, searched as their code does ("reference") or
by a greedy ascent ("strong"). Definitions and the shared pieces: ascsharp.measures.adaptive."""

from __future__ import annotations

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
from ascsharp.core.settings import enum
from ascsharp.measures.adaptive import check_options, scales, set_perturbed, value_names
from ascsharp.measures.common import (
    Cost,
    LossFn,
    Partial,
    UnitHook,
    check_data,
    cross_entropy,
    frozen_eval,
    loss_and_gradient,
    mean_and_se,
    mean_loss,
    measure_flops,
    partial_fingerprint,
)

SEARCHES = enum("measures.adaptive_worst.search")


# The reference's momentum and step-size checkpoints (APGD, Croce & Hein 2020).
MOMENTUM = 0.75


MIN_UPDATE_RATIO = 0.75


@dataclass(frozen=True)
class WorstOptions:
    """Projected gradient ascent in the ball ||u||_p <= rho (p "2" or "inf"), `restarts` starts
    of `steps` steps each on every batch of `m` clips (None: all clips in one batch).

    Restart 0 starts at u = 0, the others at random points of the sphere (p=2) or of the box
    (p=inf). The first step has length `step_size` (default 2*rho, as APGD). `search`
    "reference" steps as the module docstring says. `search` "strong" steps along the
    normalised gradient in u (p=2) or its sign (p=inf); a step that does not raise the loss is
    undone and the step size halved; the best point is kept. Either way each step costs one
    forward+backward pass over the batch.

    rho to batch_size and search are the config's `measures.adaptive_worst` (defaults in the
    schema); the fields after them are not configurable: their defaults are the measure.
    """

    rho: float
    p: str
    steps: int
    restarts: int
    m: int | None
    batch_size: int
    search: str = "reference"
    step_size: float | None = None
    adaptive: bool = True
    parameters: str = "all"

    def __post_init__(self) -> None:
        check_options(self.rho, self.parameters, self.batch_size)
        p = str(self.p).lower()
        p = {"2": "2", "2.0": "2", "l2": "2", "inf": "inf", "linf": "inf"}.get(p)
        if p is None:
            raise ValueError(f"p must be 2 or inf, got {self.p!r}")
        object.__setattr__(self, "p", p)
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"steps must be >= 0 and restarts >= 1: {self}")
        if self.m is not None and self.m < 1:
            raise ValueError(f"m must be >= 1 or None (all clips), got {self.m}")
        if self.search not in SEARCHES:
            raise ValueError(f"search {self.search!r}: expected one of {SEARCHES}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


def worst_batches(n: int, m: int | None, seed: int) -> list[np.ndarray]:
    """ceil(n / m) batches of nearly equal size (differing by at most 1) over a seeded
    permutation of the clips; one batch of all clips when m is None or >= n."""
    if m is None or m >= n:
        return [np.arange(n)]
    perm = torch.randperm(n, generator=generator(seed, "adaptive-worst-batches")).numpy()
    return [np.sort(b) for b in np.array_split(perm, math.ceil(n / m))]


def _project(u: list[Tensor], rho: float, p: str) -> list[Tensor]:
    if p == "inf":
        return [d.clamp_(-rho, rho) for d in u]
    norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in u))
    if norm > rho:
        for d in u:
            d.mul_(rho / norm)
    return u


def _direction(g: Sequence[Tensor], p: str) -> list[Tensor]:
    if p == "inf":
        return [d.sign() for d in g]
    norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in g))
    return [d / norm if norm > 0 else torch.zeros_like(d) for d in g]


def _start(t: Sequence[Tensor], opts: WorstOptions, restart: int, gen: torch.Generator
           ) -> list[Tensor]:  # fmt: skip
    """u = 0 for restart 0; else uniform on the sphere (p=2) or in the box (p=inf)."""
    if restart == 0:
        return [torch.zeros_like(s) for s in t]
    u = []
    for s in t:
        if opts.p == "2":
            d = torch.randn(s.shape, generator=gen, dtype=s.dtype)
        else:
            d = torch.rand(s.shape, generator=gen, dtype=s.dtype).mul_(2).sub_(1)
        u.append(d.to(s.device).mul_(s != 0))
    if opts.p == "2":
        norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in u))
        u = [d.mul_(opts.rho / norm) for d in u] if norm > 0 else u
    else:
        u = [d.mul_(opts.rho) for d in u]
    return u


# The batch loss and its gradient in w at the perturbation u (weights w0 + T u): what both
# searches evaluate, built once per batch by adaptive_worst.
LossGrad = Callable[[Sequence[Tensor]], tuple[float, list[Tensor]]]


def _ascent(
    batch_loss_grad: LossGrad, t: Sequence[Tensor], opts: WorstOptions, u: list[Tensor]
) -> dict[str, Any]:
    """Projected gradient ascent from u; the best loss found and how the search went."""

    def loss_grad(u: Sequence[Tensor]) -> tuple[float, list[Tensor]]:
        loss, g = batch_loss_grad(u)
        return loss, [gi.mul_(s) for gi, s in zip(g, t, strict=True)]  # gradient in u: T grad

    best_loss, best_g = loss_grad(u)
    best_u = u
    step = opts.step_size if opts.step_size is not None else 2 * opts.rho
    accepted = 0
    for _ in range(opts.steps):
        cand = [b + step * d for b, d in zip(best_u, _direction(best_g, opts.p), strict=True)]
        cand = _project(cand, opts.rho, opts.p)
        loss, g = loss_grad(cand)
        if loss > best_loss:
            best_loss, best_u, best_g = loss, cand, g
            accepted += 1
        else:
            step /= 2
    return {"worst_loss": best_loss, "accepted_steps": accepted, "final_step": step,
            "radius": _radius(best_u, opts.p)}  # fmt: skip


def checkpoints(steps: int) -> list[int]:
    """The step indices (0-based) at which the reference search may halve its step size: after
    22 % of the steps, then at gaps that shrink by 3 points of the total down to 6 points (APGD's
    schedule, as Andriushchenko et al.'s code computes it, ceilings of float products)."""
    fractions, marks = [0.0, 0.22], [0, math.ceil(steps * 0.22)]
    while marks[-1] < steps and marks[-1] != marks[-2]:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
        marks.append(math.ceil(fractions[-1] * steps))
    return marks[1:]


def _norm(u: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(d.double().pow(2).sum()) for d in u))


# The bisection below stops at |norm - rho| <= ELLIPSOID_TOL, as the reference; the cap only
# guards against a tolerance that float32 cannot reach (never hit at the configured radii).
ELLIPSOID_TOL = 1e-5


_ELLIPSOID_MAX_ITER = 1000


def _project_ellipsoid(u: list[Tensor], t: Sequence[Tensor], rho: float) -> list[Tensor]:
    """The reference's projection of delta = T u onto ||delta / |w| ||_2 <= rho, in u.

    delta_i / (1 + 2 lambda / w_i^2) is the Euclidean projection of delta onto the ellipsoid
    for the right lambda >= 0; lambda is found by bisection (start 0.1 in [0, 10], the upper
    end doubled whenever the search comes within 0.01 of it). In u the same map divides u_i by
    (1 + 2 lambda / w_i^2), so u is shrunk most where |w_i| is small.
    """
    if _norm(u) <= rho:
        return u
    inv_w2 = [torch.where(s != 0, s.pow(-2), torch.zeros_like(s)) for s in t]
    lmbd, low, high, limit = 0.1, 0.0, 10.0, 10.0
    norm, out = math.inf, u
    for _ in range(_ELLIPSOID_MAX_ITER):
        if abs(norm - rho) <= ELLIPSOID_TOL:
            break
        out = [d / (1 + 2 * lmbd * c) for d, c in zip(u, inv_w2, strict=True)]
        norm = _norm(out)
        if norm > rho:
            lmbd, low = (lmbd + high) / 2, lmbd
        else:
            lmbd, high = (low + lmbd) / 2, lmbd
        if limit - high < 1e-2:
            limit, high = 2 * limit, 2 * high
    return out


def _reference_ascent(
    loss_grad: LossGrad, t: Sequence[Tensor], opts: WorstOptions, u: list[Tensor]
) -> dict[str, Any]:
    """The search of Andriushchenko et al.'s `eval_APGD_sharpness` (module docstring), in u.

    Their step moves delta = T u by step * T g / ||g|| (g the gradient in w), i.e. u by
    step * g / ||g||; the loss is evaluated after every step. When a checkpoint halves the step,
    the next gradient is taken at the best point while the iterate itself carries on, as in
    their code (it reloads the best weights into the model but not into its perturbation).
    """
    mask = [s != 0 for s in t]
    best_loss, g = loss_grad(u)
    best_u, best_g = u, g
    prev = [d.clone() for d in u]
    step = opts.step_size if opts.step_size is not None else 2 * opts.rho
    marks = set(checkpoints(opts.steps))
    last_mark, last_step, last_best, updates, accepted, halvings = 0, step, best_loss, 0, 0, 0
    for i in range(opts.steps):
        if opts.p == "2":
            scale = step / (_norm([gi * k for gi, k in zip(g, mask, strict=True)]) + 1e-12)
            cand = [d + scale * gi * k for d, gi, k in zip(u, g, mask, strict=True)]
            cand = _project_ellipsoid(cand, t, opts.rho) if opts.adaptive else \
                _project(cand, opts.rho, "2")  # fmt: skip
        else:
            cand = [(d + step * gi.sign() * k).clamp_(-opts.rho, opts.rho)
                    for d, gi, k in zip(u, g, mask, strict=True)]  # fmt: skip
        u, prev = [MOMENTUM * c + (1 - MOMENTUM) * q for c, q in zip(cand, prev, strict=True)], u
        loss, g = loss_grad(u)
        if loss > best_loss:
            best_loss, best_u, best_g = loss, u, g
            updates += 1
            accepted += 1
        if i in marks:
            stalled = updates < MIN_UPDATE_RATIO * (i - last_mark)
            unchanged = last_step == step and last_best == best_loss
            last_step, last_best, last_mark, updates = step, best_loss, i, 0
            if stalled or unchanged:
                step /= 2
                halvings += 1
                g = best_g  # the next step starts from the gradient at the best point
    return {"worst_loss": best_loss, "accepted_steps": accepted, "final_step": step,
            "halvings": halvings, "radius": _radius(best_u, opts.p)}  # fmt: skip


def _radius(u: Sequence[Tensor], p: str) -> float:
    return _norm(u) if p == "2" else max(float(d.abs().max()) for d in u)


_STEP_RULES = {
    "reference": "Andriushchenko et al.'s eval_APGD_sharpness: steps T g/||g|| (p=2) or "
    "T sign(g) (p=inf) of size step_size (2 rho), ellipsoid projection by bisection, momentum "
    "0.75, step halved at APGD checkpoints with the next gradient at the best point",
    "strong": "first step step_size (2 rho), halved after every step that does not raise the "
    "loss; best point kept",
}


def adaptive_worst(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: WorstOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, Any]:
    """Worst-case (adaptive) m-sharpness by projected gradient ascent in the |w|-scaled ball.

    Per batch S of m clips (seeded, fixed): max over restarts of the best loss found, minus
    L_S(w); the value is the mean over batches, its standard error the std over batches /
    sqrt(batches) (NaN for one batch). PGA finds a lower bound of the true maximum.
    Returns {"values", "options", "cost"}; values: adaptive_worst and adaptive_worst_se
    (plain: worst, worst_se), loss, worst_loss, batches, per_batch.
    """
    opts = options if isinstance(options, WorstOptions) else WorstOptions(**options)
    check_data(x, y, opts.batch_size)
    params = list(model.parameters())
    cost = Cost()
    key, key_se = value_names("worst", opts.adaptive)
    batches = worst_batches(len(x), opts.m, seed)
    with frozen_eval(model, params) as w0:
        cost.flops_per_clip = measure_flops(model, x, y, ["forward", "gradient"], loss_fn)
        part = Partial(partial_path,
                       partial_fingerprint(key, model, x, y, opts, seed, loss_fn), log)  # fmt: skip
        t = scales(w0, opts.adaptive, opts.parameters)
        log.info("%s: %d batches of ~%d clips, %d restarts x %d steps, p=%s, rho %g", key,
                 len(batches), len(batches[0]), opts.restarts, opts.steps, opts.p,
                 opts.rho)  # fmt: skip
        progress = Progress(len(batches) * opts.restarts, "restarts", logger=log)
        per_batch = []
        units = 0
        for b, idx in enumerate(batches):
            sel = torch.as_tensor(idx, device=x.device)
            xb, yb = x[sel], y[sel]
            set_perturbed(params, w0, t, [torch.zeros_like(s) for s in t])
            loss0 = mean_loss(model, xb, yb, opts.batch_size, cost, loss_fn)

            def loss_grad(u: Sequence[Tensor], xb=xb, yb=yb) -> tuple[float, list[Tensor]]:
                set_perturbed(params, w0, t, u)
                return loss_and_gradient(model, params, xb, yb, opts.batch_size, cost, loss_fn)

            restarts = []
            for r in range(opts.restarts):
                name = f"batch/{b}/restart/{r}"
                units += 1
                if name in part:
                    restarts.append(dict(part[name]))
                    cost.resumed_units += 1
                    progress.update(1, "(from the partial file)")
                    continue
                u = _start(t, opts, r, generator(seed, "adaptive-worst", b, r))
                ascent = _reference_ascent if opts.search == "reference" else _ascent
                res = ascent(loss_grad, t, opts, u)
                restarts.append(res)
                part.put(name, res)
                rise = res["worst_loss"] - loss0
                progress.update(1, f"batch {b + 1}/{len(batches)} restart {r + 1}: {rise:.6g}")
                if on_unit is not None:
                    on_unit(units)
            worst = max(r["worst_loss"] for r in restarts)
            per_batch.append({"clips": len(idx), "loss": loss0, "worst_loss": worst,
                              "sharpness": worst - loss0,
                              "restarts": [r["worst_loss"] for r in restarts]})  # fmt: skip
    value, se = mean_and_se([pb["sharpness"] for pb in per_batch])
    log.info("%s = %.6g +- %.2g (rho %g, p=%s, %d batches)", key, value, se, opts.rho, opts.p,
             len(per_batch))  # fmt: skip
    return {
        "values": {
            key: value,
            key_se: se,
            "loss": float(np.mean([pb["loss"] for pb in per_batch])),
            "worst_loss": float(np.mean([pb["worst_loss"] for pb in per_batch])),
            "batches": len(per_batch),
            "per_batch": per_batch,
        },
        "options": {
            **asdict(opts),
            "ball": f"||T_w^-1 delta||_{opts.p} <= rho",
            "scaling": "|w|" if opts.adaptive else "identity",
            "step_rule": _STEP_RULES[opts.search],
        },  # fmt: skip
        "cost": cost.to_dict(params[0].device),
    }
