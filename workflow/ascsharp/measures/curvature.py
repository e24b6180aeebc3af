"""Curvature of the training loss at a trained model: top Hessian eigenvalues and the trace.

The loss is the landscape's: mean cross-entropy over the clips (sum over clips / N), model in
eval mode, BN running statistics fixed (buffers). `parameters` "all" (default: the Hessian
of the literature, e.g. PyHessian) takes every parameter (conv and linear weights and biases,
BN affine); "weights" only the tensors with more than one dimension, the ones the
landscape's filter-normalised directions move (they leave biases and BN affine at zero).
Hessian-vector products come from curvlinops' HessianLinearOperator (Dangel et al.;
forward-over-reverse autodiff over the clips in chunks), the top-k eigenvalues from ARPACK's
implicitly restarted Lanczos (scipy.sparse.linalg.eigsh, which="LA": the largest algebraic,
so lambda_max is the usual sharpness), the trace from Hutchinson's estimator
E[v^T H v] = tr(H) with Rademacher v (Hutchinson 1989) or, with trace_estimator "hutch++",
from Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the same number of HVPs, a third spent on
a sketch whose range carries the large eigenvalues exactly, so that only the rest of the
spectrum is sampled (far lower variance where a few eigenvalues dominate, as in trained
networks; up to 3x the variance for a flat spectrum).

Each Hutchinson sample is drawn from its own seeded generator on the CPU and saved when done,
so a killed job resumes and a GPU job draws the same vectors as a CPU one. curvlinops' own
`hutchinson_trace` draws from the global RNG and returns only the mean, which gives neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.core.seeds import generator
from ascsharp.core.settings import enum
from ascsharp.measures.common import (
    Cost,
    Partial,
    UnitHook,
    _batch,
    check_data,
    cross_entropy,
    frozen_eval,
    mean_and_se,
    mean_loss,
    measure_flops,
    partial_fingerprint,
)
from ascsharp.train.evaluate import forward_precision

TRACE_ESTIMATORS = enum("measures.hessian.trace_estimator")
PARAMETERS = enum("measures.hessian.parameters")


@dataclass(frozen=True)
class HessianOptions:
    """top_k eigenvalues to ARPACK relative accuracy `lanczos_tol` (ncv Lanczos vectors and
    maxiter restarts: scipy's defaults when None); `trace_samples` HVPs for the trace, by
    `trace_estimator` ("hutchinson" or "hutch++"); `batch_size` clips per chunk of a
    Hessian-vector product (memory, not results); `parameters` "all" or "weights" (module
    docstring); `tf32`: the products on TF32 tensor cores (CUDA only; IEEE float32 otherwise).

    top_k, lanczos_tol, trace_samples, trace_estimator, parameters and tf32 are the config's
    `measures.hessian` (defaults in the schema; the dataclass defaults of the last two are the
    schema's, for callers that predate them); the Lanczos knobs are not configurable: scipy's
    choice."""

    top_k: int
    lanczos_tol: float
    trace_samples: int
    batch_size: int
    trace_estimator: str = "hutchinson"
    parameters: str = "all"
    tf32: bool = False
    lanczos_ncv: int | None = None
    lanczos_maxiter: int | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.trace_samples < 1 or self.batch_size < 1:
            raise ValueError(f"top_k, trace_samples and batch_size must be >= 1: {self}")
        if self.parameters not in PARAMETERS:
            raise ValueError(f"parameters {self.parameters!r}: expected one of {PARAMETERS}")
        if not self.lanczos_tol >= 0:
            raise ValueError(f"lanczos_tol must be >= 0, got {self.lanczos_tol}")
        if self.trace_estimator not in TRACE_ESTIMATORS:
            raise ValueError(f"trace_estimator {self.trace_estimator!r}: expected one of "
                             f"{', '.join(TRACE_ESTIMATORS)}")  # fmt: skip
        if self.trace_estimator == "hutch++" and self.trace_samples < 3:
            raise ValueError(f"hutch++ needs trace_samples >= 3, got {self.trace_samples}")


class _Batches:
    """Re-iterable (X, y) chunks in the parameters' dtype and device, as curvlinops reads data."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, like: Tensor):
        self.x, self.y, self.batch_size, self.like = x, y, batch_size, like

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.x), self.batch_size):
            yield _batch(self.x, self.y, start, self.batch_size, self.like)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)


def hessian_parameters(model: nn.Module, parameters: str = "all") -> list[Tensor]:
    """The parameters the Hessian is taken in: all, or those with more than one dimension."""
    return [p for p in model.parameters() if p.requires_grad
            and (parameters == "all" or p.dim() > 1)]  # fmt: skip


def hessian_operator(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int, parameters: str = "all"
):
    """curvlinops' Hessian of the mean cross-entropy over all clips w.r.t. the `parameters`.

    check_deterministic is off: in eval mode the loss is a fixed function of the weights, and
    the check would cost two extra gradient passes and two HVPs over all clips.
    """
    from curvlinops import HessianLinearOperator

    params = hessian_parameters(model, parameters)
    data = _Batches(x, y, batch_size, params[0])
    return HessianLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction="mean"),  # x (batch / N): sum over all clips / N
        params,
        data,
        check_deterministic=False,
        num_data=len(x),
    )


def _hvp_flops(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """FLOPs of one Hessian-vector product on one clip, as measures.measure_flops counts."""
    from torch.utils.flop_counter import FlopCounterMode

    like = next(model.parameters())
    xb, yb = _batch(x, y, 0, 1, like)
    with FlopCounterMode(display=False) as counter:
        op = hessian_operator(model, xb, yb, batch_size=1)
        op @ torch.zeros(op.shape[1], dtype=like.dtype, device=like.device)
    return float(counter.get_total_flops())


def rademacher(n: int, gen: torch.Generator, like: Tensor) -> Tensor:
    """n independent +-1 entries from a CPU generator, in `like`'s dtype and device."""
    v = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(like.dtype) * 2 - 1
    return v.to(like.device)


def hutchpp(
    hvp: Callable[[Tensor], Tensor],
    n: int,
    matvecs: int,
    seed: int,
    like: Tensor,
    part: Partial,
    log: logging.Logger,
    unit_done: Callable[[], None],
    unit_resumed: Callable[[], None],
) -> tuple[float, list[float]]:
    """Hutch++ with `matvecs` HVPs: tr(H) = tr(Q^T H Q) + tr((I - QQ^T) H (I - QQ^T)).

    k = matvecs // 3 Rademacher sketch vectors s_j (generator(seed, "hutchpp-sketch", j)) give
    Q, an orthonormal basis of H S (k HVPs); the first term takes k more (H q_j); the second is
    Hutchinson's estimate over the remaining matvecs - 2k Rademacher g_i (generator(seed,
    "hutchinson", i)) projected off Q. Returns (tr(Q^T H Q), residual samples g_i'^T H g_i').
    Units saved in `part`: the low-rank term and each residual sample; a rerun with residual
    samples left recomputes Q (k HVPs), which is deterministic.
    """
    k = matvecs // 3
    keys = [f"hutchpp/residual/{i}" for i in range(matvecs - 2 * k)]
    low_key = "hutchpp/low_rank"
    q = None
    if low_key not in part or any(key not in part for key in keys):
        sketch = torch.stack([hvp(rademacher(n, generator(seed, "hutchpp-sketch", j), like))
                              .double() for j in range(k)], dim=1)  # fmt: skip
        q = torch.linalg.qr(sketch).Q
        del sketch
    if low_key in part:
        low = float(part[low_key])
        unit_resumed()
    else:
        low = sum(float(q[:, j] @ hvp(q[:, j].to(like.dtype)).double()) for j in range(k))
        part.put(low_key, low)
        log.info("Hutch++: tr(Q'HQ) %.5g over a sketch of %d vectors (%d HVPs)", low, k, 2 * k)
        unit_done()
    samples: list[float] = []
    for i, key in enumerate(keys):
        if key in part:
            samples.append(float(part[key]))
            unit_resumed()
            continue
        g = rademacher(n, generator(seed, "hutchinson", i), like).double()
        g -= q @ (q.T @ g)
        samples.append(float(g @ hvp(g.to(like.dtype)).double()))
        part.put(key, samples[-1])
        mean, se = mean_and_se(samples)
        log.info("Hutch++ residual sample %d/%d: %.5g, trace %.5g +- %.2g",
                 i + 1, len(keys), samples[-1], low + mean, se)  # fmt: skip
        unit_done()
    return low, samples


def hessian(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    options: HessianOptions | dict[str, Any],
    seed: int,
    log: logging.Logger,
    *,
    partial_path: str | Path | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """Top-k eigenvalues and Hutchinson trace of the Hessian of the mean cross-entropy.

    Returns {"values", "options", "cost"}: values lambda_max, top_eigenvalues (descending),
    lanczos_converged, trace, trace_se (standard error over samples), trace_samples, loss
    (at the weights), n_params. Lanczos is one unit, each trace sample another.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    opts = options if isinstance(options, HessianOptions) else HessianOptions(**options)
    check_data(x, y, opts.batch_size)
    params = hessian_parameters(model, opts.parameters)
    n_params = sum(p.numel() for p in params)
    if opts.top_k >= n_params:
        raise ValueError(f"top_k={opts.top_k} must be < the {n_params} parameters (ARPACK)")
    cost = Cost()
    with frozen_eval(model, params):
        cost.flops_per_clip = {
            **measure_flops(model, x, y, ["forward"]),
            "hvp": _hvp_flops(model, x, y),
        }
        fp = partial_fingerprint("hessian", model, x, y, opts, seed, cross_entropy)
        part = Partial(partial_path, fp, log)
        op = hessian_operator(model, x, y, opts.batch_size, opts.parameters)
        like = params[0]
        loss = mean_loss(model, x, y, opts.batch_size, cost)
        units = 0

        def hvp(v: Tensor) -> Tensor:
            cost.hvps += 1
            cost.hvp_clips += len(x)
            with forward_precision(like.device, "tf32" if opts.tf32 else "float32"):
                return op @ v

        def unit_done() -> None:
            nonlocal units
            units += 1
            if on_unit is not None:
                on_unit(units)

        def unit_resumed() -> None:
            nonlocal units
            cost.resumed_units += 1
            units += 1

        if "lanczos" in part:
            lanczos = part["lanczos"]
            cost.resumed_units += 1
            units += 1
        else:
            t0 = time.perf_counter()
            count = 0

            def matvec(v: np.ndarray) -> np.ndarray:
                nonlocal count
                hv = hvp(torch.as_tensor(np.ravel(v), dtype=like.dtype, device=like.device))
                count += 1
                log.info("Lanczos HVP %d (%.2f s/HVP)", count, (time.perf_counter() - t0) / count)
                return hv.detach().to("cpu", torch.float64).numpy()

            A = LinearOperator((n_params, n_params), matvec=matvec, dtype=np.float64)
            v0 = torch.randn(n_params, generator=generator(seed, "lanczos"), dtype=torch.float64)
            try:
                vals = eigsh(A, k=opts.top_k, which="LA", tol=opts.lanczos_tol, v0=v0.numpy(),
                             ncv=opts.lanczos_ncv, maxiter=opts.lanczos_maxiter,
                             return_eigenvectors=False)  # fmt: skip
                converged = True
            except ArpackNoConvergence as e:
                vals, converged = e.eigenvalues, False
                log.warning("Lanczos: %d of %d eigenvalues converged", len(vals), opts.top_k)
            lanczos = {"eigenvalues": sorted((float(v) for v in vals), reverse=True),
                       "converged": converged, "hvps": count}  # fmt: skip
            log.info("Lanczos: top eigenvalues %s after %d HVPs",
                     ", ".join(f"{v:.5g}" for v in lanczos["eigenvalues"]), count)  # fmt: skip
            part.put("lanczos", lanczos)
            unit_done()

        low_rank = 0.0
        if opts.trace_estimator == "hutch++":
            low_rank, samples = hutchpp(hvp, n_params, opts.trace_samples, seed, like, part, log,
                                        unit_done, unit_resumed)  # fmt: skip
        else:
            samples = []
            for i in range(opts.trace_samples):
                key = f"trace/{i}"
                if key in part:
                    samples.append(float(part[key]))
                    cost.resumed_units += 1
                    units += 1
                    continue
                v = rademacher(n_params, generator(seed, "hutchinson", i), like)
                samples.append(float(torch.dot(v.double(), hvp(v).double())))
                part.put(key, samples[-1])
                mean, se = mean_and_se(samples)
                log.info("Hutchinson sample %d/%d: v'Hv %.5g, trace %.5g +- %.2g",
                         i + 1, opts.trace_samples, samples[-1], mean, se)  # fmt: skip
                unit_done()
    residual, trace_se = mean_and_se(samples)
    trace = low_rank + residual
    eigenvalues = lanczos["eigenvalues"]
    return {
        "values": {
            "lambda_max": eigenvalues[0] if eigenvalues else float("nan"),
            "top_eigenvalues": eigenvalues,
            "lanczos_converged": lanczos["converged"],
            "lanczos_hvps": lanczos["hvps"],
            "trace": trace,
            "trace_se": trace_se,
            "trace_samples": len(samples),
            "trace_low_rank": low_rank,
            "loss": loss,
            "n_params": n_params,
        },
        "options": {
            **asdict(opts),
            "which": "largest algebraic",
            "trace_vectors": "rademacher",
            "trace_se": "standard error of the sampled part (Hutch++: given the sketch)",
            "loss": "mean cross-entropy, eval mode",
        },  # fmt: skip
        "cost": cost.to_dict(like.device),
    }
