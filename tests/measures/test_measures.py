"""Curvature (Hessian eigenvalues, trace) and adaptive sharpness against closed forms and exact
Hessians; reparametrisation invariance; resume after a kill; the `ascsharp measure` job."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ascsharp.cli import main
from ascsharp.core.seeds import generator
from ascsharp.core.tensors import weights_digest
from ascsharp.measures.adaptive import adaptive_average, scales
from ascsharp.measures.adaptive_worst import adaptive_worst, checkpoints, worst_batches
from ascsharp.measures.common import Cost, loss_and_gradient
from ascsharp.measures.curvature import hessian, hessian_operator, rademacher
from ascsharp.train import checkpoint
from ascsharp.train.models import build_model, initial_model

LOG = logging.getLogger("test_measures")
LOG.setLevel(logging.WARNING)  # progress lines per sample would only slow the tests down


class Killed(Exception):
    """Stands in for a kill between two finished units."""


def kill_after(k: int):
    def hook(done: int) -> None:
        if done >= k:
            raise Killed

    return hook


def set_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


class TinyConv(nn.Module):
    """Conv + BN (eval) + tanh + linear on (clips, 4 channels, 6 frames): 61 parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).mean(dim=2))


def tiny_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return set_bn_stats(TinyConv().double(), seed)


def tiny_data(n: int = 10, shape=(4, 6), classes: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy w.r.t. all parameters (flattened in order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = w.split([math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


# --- Hessian ----------------------------------------------------------------------------------


def test_hessian_top_eigenvalues_and_trace_match_exact_hessian():
    model = tiny_conv()
    x, y = tiny_data()
    H = exact_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(H).flip(0)
    opts = {"top_k": 3, "lanczos_tol": 1e-10, "trace_samples": 100, "batch_size": 3}
    before = copy.deepcopy(model.state_dict())
    out = hessian(model, x, y, opts, seed=7, log=LOG)
    v = out["values"]
    assert v["n_params"] == H.shape[0] == 61
    np.testing.assert_allclose(v["top_eigenvalues"], exact[:3].numpy(), rtol=1e-7, atol=1e-10)
    assert v["lambda_max"] == v["top_eigenvalues"][0]
    # Within a few standard errors of the exact trace (Rademacher: unbiased) ...
    trace = float(torch.trace(H))
    assert abs(v["trace"] - trace) < 4 * v["trace_se"], (v["trace"], v["trace_se"], trace)
    # ... and exactly the mean of v'Hv over the seeded vectors (deterministic check).
    like = next(model.parameters())
    vectors = [rademacher(H.shape[0], generator(7, "hutchinson", i), like) for i in range(100)]
    quad = [float(r @ H @ r) for r in vectors]
    assert v["trace"] == pytest.approx(np.mean(quad), rel=1e-10)
    with torch.no_grad():
        assert v["loss"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k  # weights and BN buffers untouched
    cost = out["cost"]
    assert cost["hvps"] == v["lanczos_hvps"] + 100 and cost["hvp_clips"] == 10 * cost["hvps"]
    assert cost["flops"] > 0 and cost["flops_per_clip"]["hvp"] > cost["flops_per_clip"]["forward"]


class DiagonalCurvature(nn.Module):
    """Two-class logits (x c + 1/2 w'Aw, 0) of 40 weights w: a Hessian dominated by its diagonal."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = 40
        coupling = 0.02 * torch.randn(n, n, generator=g, dtype=torch.float64)
        diagonal = torch.diag(torch.linspace(0.5, 4.0, n, dtype=torch.float64))
        self.register_buffer("A", diagonal + (coupling + coupling.T) / 2)
        self.register_buffer("c", torch.randn(3, generator=g, dtype=torch.float64))
        self.w = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=torch.float64))

    def forward(self, x):
        z = x @ self.c + 0.5 * self.w @ self.A @ self.w
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_hutchinson_trace_is_within_its_known_spread_of_an_exact_diagonal_dominated_trace():
    """With Rademacher probes v'Hv = tr(H) + sum_{i!=j} v_i v_j H_ij, of variance
    2 sum_{i!=j} H_ij^2: on a Hessian whose diagonal dominates, the estimate is within a few
    of those standard deviations of the exact trace. (Probes with zeros keep only about two
    thirds of the diagonal and land far outside.)"""
    model = DiagonalCurvature().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=g)
    H = exact_hessian(model, x, y)
    off_diagonal = H - torch.diag(torch.diagonal(H))
    samples = 16
    sd = math.sqrt(2 * float((off_diagonal**2).sum()) / samples)
    trace = float(torch.trace(H))
    assert sd < 0.02 * abs(trace)  # the premise: the diagonal dominates
    opts = {"top_k": 1, "lanczos_tol": 1e-6, "trace_samples": samples, "batch_size": 12}
    v = hessian(model, x, y, opts, seed=3, log=LOG)["values"]
    assert abs(v["trace"] - trace) < 5 * sd, (v["trace"], trace, sd)


def test_hessian_of_the_weights_only_is_the_weight_block_of_the_exact_hessian():
    """parameters="weights": the landscape's parameters (conv and linear weights), not the
    biases and BN affine parameters it leaves at zero."""
    model = tiny_conv()
    x, y = tiny_data()
    H = exact_hessian(model, x, y)
    keep = torch.cat([torch.full((p.numel(),), p.dim() > 1) for p in model.parameters()])
    block = H[keep][:, keep]
    opts = {"top_k": 2, "lanczos_tol": 1e-10, "trace_samples": 3, "batch_size": 4,
            "parameters": "weights"}  # fmt: skip
    out = hessian(model, x, y, opts, seed=7, log=LOG)
    assert out["values"]["n_params"] == block.shape[0] == 4 * 3 * 3 + 3 * 4
    exact = torch.linalg.eigvalsh(block).flip(0)[:2].numpy()
    np.testing.assert_allclose(out["values"]["top_eigenvalues"], exact, rtol=1e-7)
    assert out["options"]["parameters"] == "weights"
    assert out["values"]["lambda_max"] < float(torch.linalg.eigvalsh(H)[-1])


class HandBN(nn.Module):
    """Eval-mode BatchNorm2d written out in elementary ops: an independent derivative route."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, h):
        bn, view = self.bn, (1, -1, 1)  # bn0 sees (batch, mel, time)
        scale = bn.weight.view(view) / torch.sqrt(bn.running_var.view(view) + bn.eps)
        return (h - bn.running_mean.view(view)) * scale + bn.bias.view(view)


def test_panns_bn0_gradient_and_hvp_match_hand_written_bn():
    """Gradient and HVP through bn0 (whose PANNs layout, a transposed (batch, mel, time, 1)
    view, torch 2.14's CPU batch_norm backward got wrong) match a hand-written bn0."""
    torch.manual_seed(0)
    model = set_bn_stats(build_model("cnn10", width=0.125, n_mels=16, n_classes=10).double())
    hand = copy.deepcopy(model)
    hand.bn0 = HandBN(hand.bn0)
    hand.eval()
    x, y = tiny_data(n=4, shape=(16, 24), classes=10)
    params, hand_params = list(model.parameters()), list(hand.parameters())
    loss = F.cross_entropy(hand(x), y)
    g_ref = torch.autograd.grad(loss, hand_params, create_graph=True)
    _, g = loss_and_gradient(model, params, x, y, 3, Cost())
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-12)
    v = [torch.randn_like(p) for p in params]
    gv = sum((a * b).sum() for a, b in zip(g_ref, v, strict=True))
    hv_ref = torch.autograd.grad(gv, hand_params)
    op = hessian_operator(model, x, y, batch_size=3)
    hv = op @ [t.clone() for t in v]
    for a, b in zip(hv, hv_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# --- adaptive sharpness: closed forms on a quadratic --------------------------------------------


class Quadratic(nn.Module):
    """L(w) = 1/2 (w - w*)' A (w - w*) + c for every clip, whatever the clip."""

    def __init__(self, A: torch.Tensor, w_star: torch.Tensor, w: torch.Tensor, c: float = 0.3):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("A", A)
        self.register_buffer("w_star", w_star)
        self.c = c

    def forward(self, x):
        d = self.w - self.w_star
        return (0.5 * d @ self.A @ d + self.c).expand(len(x))


def per_clip(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out  # the module's output is the loss itself


def quadratic(diagonal: bool = False, at_minimum: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = 6
    if diagonal:
        A = torch.diag(torch.tensor([3.0, 0.5, 2.0, 1.0, 4.0, 0.2], dtype=torch.float64))
    else:
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        A = Q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)) @ Q.T
    w_star = torch.tensor([1.5, -0.4, 0.8, -2.0, 0.3, 1.1], dtype=torch.float64)
    w = w_star if at_minimum else w_star + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.zeros(4, 1, dtype=torch.float64)
    return Quadratic(A, w_star, w), x, torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("at_minimum, antithetic", [(True, False), (False, False), (False, True)])
def test_average_case_on_a_quadratic_is_half_rho2_sum_aii_wi2(at_minimum, antithetic):
    model, x, y = quadratic(at_minimum=at_minimum)
    rho, w = 0.2, model.w.detach()
    exact = 0.5 * rho**2 * float((torch.diagonal(model.A) * w**2).sum())
    opts = {"rho": rho, "samples": 3000, "batch_size": 64, "antithetic": antithetic}
    v = adaptive_average(model, x, y, opts, seed=3, log=LOG, loss_fn=per_clip)["values"]
    assert abs(v["adaptive_average"] - exact) < 4 * v["adaptive_average_se"]
    assert v["adaptive_average"] == pytest.approx(exact, rel=0.05)
    plain = adaptive_average(model, x, y, {**opts, "adaptive": False}, seed=3, log=LOG,
                             loss_fn=per_clip)["values"]  # fmt: skip
    exact_plain = 0.5 * rho**2 * float(torch.trace(model.A))
    assert "adaptive_average" not in plain
    assert plain["average"] == pytest.approx(exact_plain, rel=0.05)


def _loss_at(model: nn.Module, params: dict[str, torch.Tensor], x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(functional_call(model, params, (x,)), y))


def test_antithetic_sample_is_the_mean_of_two_explicit_evaluations_at_plus_and_minus_delta():
    """Draw k (as documented: u_k from generator(seed, "adaptive-average", k), one N(0, rho^2)
    tensor per parameter in order) is evaluated at w + |w| u_k and at w - |w| u_k."""
    model, _, x, y = mlp_pair()
    rho, seed, samples = 0.1, 11, 3
    opts = {"rho": rho, "samples": samples, "batch_size": 64, "antithetic": True}
    v = adaptive_average(model, x, y, opts, seed=seed, log=LOG)["values"]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    pairs = []
    for k in range(samples):
        gen = generator(seed, "adaptive-average", k)
        u = {n: rho * torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in w.items()}
        plus = _loss_at(model, {n: t + t.abs() * u[n] for n, t in w.items()}, x, y)
        minus = _loss_at(model, {n: t - t.abs() * u[n] for n, t in w.items()}, x, y)
        assert abs(plus - minus) > 1e-3  # the two sides differ: the pair is not one point twice
        pairs.append((plus + minus) / 2)
    loss0 = _loss_at(model, w, x, y)
    assert v["loss"] == pytest.approx(loss0, rel=1e-12)
    assert v["perturbed_loss"] == pytest.approx(np.mean(pairs), rel=1e-12)
    assert v["adaptive_average"] == pytest.approx(np.mean(pairs) - loss0, rel=1e-9)


def test_worst_case_per_batch_value_is_its_max_loss_minus_its_own_loss():
    """m-sharpness: each batch's value is the largest loss found on that batch minus that
    batch's own unperturbed loss (recomputed here by hand), never the loss over all clips."""
    model, _, x, y = mlp_pair()
    m, seed = 5, 11
    opts = {"rho": 0.1, "p": "2", "steps": 3, "restarts": 2, "m": m, "batch_size": 64}
    v = adaptive_worst(model, x, y, opts, seed=seed, log=LOG)["values"]
    batches = worst_batches(len(x), m, seed)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(x)))
    assert v["batches"] == len(v["per_batch"]) == len(batches) == 4
    with torch.no_grad():
        whole = float(F.cross_entropy(model(x), y))
        own = [float(F.cross_entropy(model(x[idx]), y[idx])) for idx in batches]
    assert max(abs(o - whole) for o in own) > 0.05  # batches' own losses differ from the whole
    for pb, idx, loss in zip(v["per_batch"], batches, own, strict=True):
        assert pb["clips"] == len(idx)
        assert pb["loss"] == pytest.approx(loss, rel=1e-12)
        assert pb["worst_loss"] == max(pb["restarts"])
        assert pb["sharpness"] == pytest.approx(pb["worst_loss"] - loss, rel=1e-9, abs=1e-12)
        assert pb["sharpness"] >= 0  # the ball holds the unperturbed weights
    values = [pb["sharpness"] for pb in v["per_batch"]]
    assert v["adaptive_worst"] == pytest.approx(np.mean(values), rel=1e-12)
    se = np.std(values, ddof=1) / math.sqrt(len(values))
    assert v["adaptive_worst_se"] == pytest.approx(se, rel=1e-9)


@pytest.mark.parametrize("adaptive", [True, False])
def test_worst_case_l2_at_the_minimum_is_half_rho2_lambda_max_TAT(adaptive):
    model, x, y = quadratic()
    rho = 0.3
    T = torch.diag(model.w.detach().abs()) if adaptive else torch.eye(6, dtype=torch.float64)
    exact = 0.5 * rho**2 * float(torch.linalg.eigvalsh(T @ model.A @ T)[-1])
    # At the minimum the gradient is 0: only the strong search's random restarts leave it.
    opts = {"rho": rho, "p": "2", "steps": 20, "restarts": 3, "m": None, "batch_size": 64,
            "adaptive": adaptive, "search": "strong"}  # fmt: skip
    v = adaptive_worst(model, x, y, opts, seed=5, log=LOG, loss_fn=per_clip)["values"]
    got = v["adaptive_worst" if adaptive else "worst"]
    assert got <= exact * (1 + 1e-9)  # a lower bound: PGA only evaluates points of the ball
    assert got == pytest.approx(exact, rel=0.02)


def test_worst_case_linf_diagonal_quadratic_reaches_the_corner():
    model, x, y = quadratic(diagonal=True)
    rho, w = 0.1, model.w.detach()
    exact = 0.5 * rho**2 * float((torch.diagonal(model.A) * w**2).sum())
    opts = {"rho": rho, "p": "inf", "steps": 10, "restarts": 2, "m": None, "batch_size": 64,
            "search": "strong"}  # fmt: skip
    v = adaptive_worst(model, x, y, opts, seed=5, log=LOG, loss_fn=per_clip)["values"]
    assert v["adaptive_worst"] == pytest.approx(exact, rel=0.02)


def test_weights_only_option_leaves_biases_and_bn_affine_alone():
    w0 = [p.detach() for p in tiny_conv().parameters()]
    for t, w in zip(scales(w0, True, "weights"), w0, strict=True):
        assert torch.equal(t, torch.zeros_like(w) if w.dim() <= 1 else w.abs())
    assert all(torch.equal(t, torch.ones_like(w)) for t, w in
               zip(scales(w0, False, "all"), w0, strict=True))  # fmt: skip


# --- reparametrisation invariance ---------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(24, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def mlp_pair(c: float = 3.7):
    """An MLP and its rescaled twin: fc1 (weight and bias) times c, fc2's weight over c."""
    torch.manual_seed(0)
    a = MLP().double().eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.fc1.weight.mul_(c)
        b.fc1.bias.mul_(c)
        b.fc2.weight.div_(c)  # fc2's bias is not scaled
    x, y = tiny_data(n=16, shape=(4, 6), classes=5)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)  # the same function
    return a, b, x, y


def test_adaptive_sharpness_is_invariant_to_relu_rescaling_plain_is_not():
    a, b, x, y = mlp_pair()
    avg = {"rho": 0.1, "samples": 20, "batch_size": 64}
    va = adaptive_average(a, x, y, avg, seed=11, log=LOG)["values"]["adaptive_average"]
    vb = adaptive_average(b, x, y, avg, seed=11, log=LOG)["values"]["adaptive_average"]
    assert va == pytest.approx(vb, rel=1e-9, abs=1e-12)  # same draws: the same perturbed nets
    plain = {**avg, "adaptive": False}
    pa = adaptive_average(a, x, y, plain, seed=11, log=LOG)["values"]["average"]
    pb = adaptive_average(b, x, y, plain, seed=11, log=LOG)["values"]["average"]
    assert abs(pa - pb) > 0.2 * max(abs(pa), abs(pb))

    # The definition is invariant; only the strong search is: the reference's steps follow the
    # gradient in w, which a rescaling changes.
    worst = {"rho": 0.1, "p": "2", "steps": 8, "restarts": 2, "m": 8, "batch_size": 64,
             "search": "strong"}  # fmt: skip
    wa = adaptive_worst(a, x, y, worst, seed=11, log=LOG)["values"]["adaptive_worst"]
    wb = adaptive_worst(b, x, y, worst, seed=11, log=LOG)["values"]["adaptive_worst"]
    assert wa > 0 and wa == pytest.approx(wb, rel=1e-6)
    plain = {**worst, "adaptive": False}
    pa = adaptive_worst(a, x, y, plain, seed=11, log=LOG)["values"]["worst"]
    pb = adaptive_worst(b, x, y, plain, seed=11, log=LOG)["values"]["worst"]
    assert abs(pa - pb) > 0.2 * max(pa, pb)


# --- worst case: the reference's search ---------------------------------------------------------


def reference_worst_case(model, batches, rho, n_iters, norm, adaptive):
    """An independent plain-loop transcription of the search of Andriushchenko et al.'s
    `eval_APGD_sharpness` (one start from delta = 0, step 2 rho, momentum 0.75, APGD
    checkpoints), in w-space with one perturbation per parameter, on float64 weights."""
    params = list(model.parameters())
    orig = [p.detach().clone() for p in params]
    p_frac, marks = [0, 0.22], [0, math.ceil(n_iters * 0.22)]
    while marks[-1] < n_iters and marks[-1] != marks[-2]:
        p_frac.append(p_frac[-1] + max(p_frac[-1] - p_frac[-2] - 0.03, 0.06))
        marks.append(math.ceil(p_frac[-1] * n_iters))
    marks = marks[1:]

    def set_weights(delta):
        with torch.no_grad():
            for p, w, d in zip(params, orig, delta, strict=True):
                p.copy_(w + d)

    def batch_loss(x, y):
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    def weighted_norm(delta):
        total = 0.0
        for d, w in zip(delta, orig, strict=True):
            total += float(((d / (w.abs() if adaptive else 1)) ** 2).sum())
        return total**0.5

    sharpness = []
    for x, y in batches:
        set_weights([torch.zeros_like(w) for w in orig])
        init_loss = batch_loss(x, y)
        delta = [torch.zeros_like(w) for w in orig]
        prev_delta = [d.clone() for d in delta]
        current = [d.clone() for d in delta]  # what the model holds, w - w0
        worst_loss, worst = init_loss, [d.clone() for d in delta]
        step = 2 * rho
        prev_step, prev_worst, prev_cp, n_updates = step, worst_loss, 0, 0
        for i in range(n_iters):
            set_weights(current)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = [p.grad.detach().clone() for p in params]
            backup = [d.clone() for d in delta]
            for k in range(len(delta)):
                scale = orig[k].abs() if adaptive else 1
                if norm == "l2":
                    gnorm = sum(float((g**2).sum()) for g in grads) ** 0.5
                    delta[k] = delta[k] + step / (gnorm + 1e-12) * grads[k] * scale
                else:
                    delta[k] = delta[k] + step * grads[k].sign() * scale
            if norm == "l2" and not adaptive:
                n = weighted_norm(delta)
                if n > rho:
                    delta = [d * (rho / n) for d in delta]
            elif norm == "l2":
                lam, lo, hi, hi_limit = 0.1, 0.0, 10.0, 10.0
                new = weighted_norm(delta)
                tmp = delta
                if new > rho:
                    while abs(new - rho) > 1e-5:
                        tmp = [d / (1 + 2 * lam / w**2) for d, w in zip(delta, orig, strict=True)]
                        new = weighted_norm(tmp)
                        if new > rho:
                            lam, lo = (lam + hi) / 2, lam
                        else:
                            lam, hi = (lo + lam) / 2, lam
                        if hi_limit - hi < 1e-2:
                            hi_limit, hi = hi_limit * 2, hi * 2
                delta = tmp
            else:
                for k in range(len(delta)):
                    bound = rho * (orig[k].abs() if adaptive else torch.ones_like(orig[k]))
                    delta[k] = torch.maximum(torch.minimum(delta[k], bound), -bound)
            delta = [0.75 * d + 0.25 * q for d, q in zip(delta, prev_delta, strict=True)]
            prev_delta = backup
            current = [d.clone() for d in delta]
            set_weights(current)
            loss = batch_loss(x, y)
            if loss > worst_loss:
                worst_loss, worst = loss, [d.clone() for d in current]
                n_updates += 1
            if i in marks:
                cond1 = n_updates < 0.75 * (i - prev_cp)
                cond2 = prev_step == step and prev_worst == worst_loss
                prev_step, prev_worst, prev_cp, n_updates = step, worst_loss, i, 0
                if cond1 or cond2:
                    step *= 0.5
                    current = [d.clone() for d in worst]  # the model reloads the best point
        sharpness.append(worst_loss - init_loss)
    set_weights([torch.zeros_like(w) for w in orig])
    return sum(sharpness) / len(sharpness)


@pytest.mark.parametrize("p, adaptive", [("2", True), ("2", False), ("inf", True)])
def test_reference_search_equals_an_independent_transcription_of_theirs(p, adaptive):
    a, _, x, y = mlp_pair()
    opts = {"rho": 0.1, "p": p, "steps": 20, "restarts": 1, "m": 8, "batch_size": 64,
            "adaptive": adaptive}  # fmt: skip
    out = adaptive_worst(a, x, y, opts, seed=4, log=LOG)
    batches = [(x[i], y[i]) for i in worst_batches(len(x), 8, 4)]
    want = reference_worst_case(copy.deepcopy(a), batches, 0.1, 20, "l2" if p == "2" else "linf",
                                adaptive)  # fmt: skip
    got = out["values"]["adaptive_worst" if adaptive else "worst"]
    assert got > 0.01 and got == pytest.approx(want, abs=1e-6)
    assert out["options"]["search"] == "reference"


def test_checkpoints_are_apgds():
    # Fractions 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05 of the steps, ceilings of
    # float products as in their code: 0.70 is 0.7000000000000001 there, so 20 steps give 15.
    assert checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99, 105]


def test_strong_search_finds_more_than_the_reference_on_a_small_network():
    a, _, x, y = mlp_pair()
    opts = {"rho": 0.1, "p": "2", "steps": 20, "restarts": 1, "m": None, "batch_size": 64}
    ref = adaptive_worst(a, x, y, opts, seed=4, log=LOG)["values"]["adaptive_worst"]
    strong = adaptive_worst(a, x, y, {**opts, "restarts": 3, "search": "strong"}, seed=4,
                            log=LOG)["values"]["adaptive_worst"]  # fmt: skip
    assert 0 < ref <= strong * (1 + 1e-9)


# --- resume -------------------------------------------------------------------------------------


def _resume_case(fn, model, x, y, opts, tmp_path, k):
    partial = tmp_path / "m.json.partial.json"
    full = fn(model, x, y, opts, 5, LOG)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(Killed):
        fn(model, x, y, opts, 5, LOG, partial_path=partial, on_unit=kill_after(k))
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name  # restored also when killed
    assert len(json.loads(partial.read_text())["done"]) == k
    resumed = fn(model, x, y, opts, 5, LOG, partial_path=partial)
    assert resumed["values"] == full["values"]  # bit-identical, partial units included
    assert resumed["cost"]["resumed_units"] == k
    with pytest.raises(ValueError, match="m.json.partial.json"):
        fn(model, x, y, {**opts, "batch_size": 1}, 6, LOG, partial_path=partial)  # other seed
    return resumed


def test_average_case_resumes_after_a_kill(tmp_path):
    a, _, x, y = mlp_pair()
    opts = {"rho": 0.1, "samples": 6, "batch_size": 64}
    out = _resume_case(adaptive_average, a, x, y, opts, tmp_path, 3)
    assert out["cost"]["loss_evaluations"] == 1 + 3  # the unperturbed loss, 3 new samples


def test_worst_case_resumes_per_restart(tmp_path):
    a, _, x, y = mlp_pair()
    opts = {"rho": 0.1, "p": "2", "steps": 3, "restarts": 2, "m": 8, "batch_size": 64}
    out = _resume_case(adaptive_worst, a, x, y, opts, tmp_path, 3)
    assert out["cost"]["gradient_evaluations"] == 1 * (3 + 1)  # one restart of 4 left
    assert out["values"]["batches"] == 2


def test_hessian_resumes_without_redoing_lanczos(tmp_path):
    model = tiny_conv()
    x, y = tiny_data()
    opts = {"top_k": 2, "lanczos_tol": 1e-8, "trace_samples": 4, "batch_size": 32}
    out = _resume_case(hessian, model, x, y, opts, tmp_path, 2)  # Lanczos + 1 sample saved
    assert out["cost"]["hvps"] == 3


# --- the `ascsharp measure` job -----------------------------------------------------------------

RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~1"


@pytest.fixture
def model_file(tmp_path, feature_store) -> Path:
    """A CNN10 model.pt trained on (the first 60 of) the tiny store's training clips."""
    import pandas as pd

    model = initial_model("cnn10", run=RUN, width=0.125, n_mels=16, n_classes=10)
    init_sha256 = weights_digest(model)
    set_bn_stats(model)
    with torch.no_grad():  # "training" moved the weights away from the initial ones
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    names = pd.read_csv(feature_store / "train.tsv", sep="\t")["filename"].tolist()
    path = tmp_path / "models" / RUN / "model.pt"
    checkpoint.save(path, {"state_dict": model.state_dict(), "arch": "cnn10", "width": 0.125,
                           "n_classes": 10, "n_mels": 16, "run": RUN,
                           "train_clips": names[:60], "init_sha256": init_sha256})  # fmt: skip
    return path


def measure_cli(model_file: Path, store: Path, out: Path, *extra: str) -> list[str]:
    return ["measure", "--model", str(model_file), "--features-npy", str(store / "train.npy"),
            "--features-tsv", str(store / "train.tsv"), "--split", "train", "--seed", "0",
            "--no-compile", "--out", str(out), *extra]  # fmt: skip


def strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_measure_cli_writes_every_measure_on_the_same_clips(tmp_path, feature_store, model_file):
    outs = tmp_path / "measures" / RUN
    args = {
        "hessian": "--top-k 1 --lanczos-tol 0.1 --trace-samples 2 --trace-estimator hutchinson "
        "--batch-size 32 --parameters all --no-tf32",
        "adaptive_average": "--samples 3 --rho 0.05 --precision float32 --batch-size 64",
        "adaptive_worst": "--steps 2 --restarts 1 --m all --p inf --rho 0.1 --batch-size 64 "
        "--search reference",
        "pacbayes": "--samples 2 --depth 2 --precision bfloat16 --batch-size 64",
        "norms": "",
        "margin": "--batch-size 64",
    }
    from ascsharp.measures.job import MEASURES

    assert set(args) == set(MEASURES)  # every measure, and the CLI knows each one
    docs = {}
    for measure, extra in args.items():
        out = outs / f"{measure}.json"
        main(measure_cli(model_file, feature_store, out, "--measure", measure, "--clips", "12",
                         "--selection", "measures", "--device", "cpu",
                         *extra.split()))  # fmt: skip
        docs[measure] = strict_json(out)
        assert not out.with_name(out.name + ".partial.json").exists()
    for measure, doc in docs.items():
        assert doc["run"] == RUN and doc["measure"] == measure
        assert doc["clips"]["n"] == 12 and doc["clips"]["trained_on"] == 60
        assert {"wall_s", "flops", "forward_clips", "gradient_clips", "hvp_clips"} <= set(
            doc["cost"]
        )
        assert doc["cost"]["flops"] > 0 or measure == "norms"  # no pass over the clips
        assert doc["provenance"]["versions"]["torch"]
    digests = {doc["clips"]["filenames_sha256"] for doc in docs.values()}
    assert len(digests) == 1  # one seeded subset per run, shared by its measures
    h = docs["hessian"]["values"]
    assert h["lambda_max"] == h["top_eigenvalues"][0] and h["trace_samples"] == 2
    assert docs["hessian"]["options"]["top_k"] == 1
    avg = docs["adaptive_average"]
    assert avg["options"]["rho"] == 0.05 and avg["options"]["samples"] == 3
    assert {"adaptive_average", "adaptive_average_se"} <= set(avg["values"])
    worst = docs["adaptive_worst"]
    assert worst["options"]["m"] is None and worst["options"]["p"] == "inf"
    assert worst["values"]["adaptive_worst_se"] is None  # one batch: no standard error (null)
    assert worst["options"]["search"] == "reference"
    assert docs["norms"]["initial_weights"]["verified"] is True
    assert docs["norms"]["values"]["distance_from_init"] > 0
    assert docs["pacbayes"]["values"]["pacbayes_flatness"] > 0
    assert docs["pacbayes"]["options"]["precision"] == "bfloat16"
    assert avg["options"]["precision"] == "float32"
    assert docs["margin"]["values"]["inverse_margin"] > 0


def test_measures_use_the_landscape_clips_by_default(tmp_path, feature_store, model_file):
    """--selection landscape: the very clips landscape.surface_clips gives the surfaces (same
    split, count and seeded stream); --selection measures: a selection of their own."""
    from ascsharp.features.clips import Store, surface_clips
    from ascsharp.measures.job import clips_digest

    ckpt = checkpoint.load(model_file)
    store = Store(feature_store / "train.npy", feature_store / "train.tsv")
    surface = surface_clips(store, ckpt, "train", 12).table["filename"].tolist()
    digests = {}
    for selection in ("landscape", "measures"):
        out = tmp_path / f"{selection}.json"
        extra = ["--selection", selection, "--batch-size", "64", "--device", "cpu"]
        main(measure_cli(model_file, feature_store, out, "--measure", "margin", "--clips", "12",
                         *extra))  # fmt: skip
        doc = strict_json(out)
        digests[selection] = doc["clips"]["filenames_sha256"]
        assert doc["clips"]["selection"] == selection and doc["clips"]["n"] == 12
    assert set(surface) <= set(ckpt["train_clips"])
    assert digests["landscape"] == clips_digest(surface)
    assert digests["measures"] != digests["landscape"]


def test_measure_cli_refuses_options_of_another_measure(
    tmp_path, feature_store, model_file, capsys
):
    hessian = (
        "--measure hessian --clips all --selection landscape --top-k 1 --trace-samples 2 "
        "--trace-estimator hutchinson --batch-size 32 --parameters all --no-tf32"
    )
    cases = {
        "--lanczos-tol 0.1 --samples 3": "--samples does not apply to --measure hessian",
        "": "--lanczos-tol is required with --measure hessian",  # the config's settings
    }
    for extra, error in cases.items():
        argv = measure_cli(model_file, feature_store, tmp_path / "h.json", *hessian.split(),
                           *extra.split())  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert error in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(measure_cli(model_file, feature_store, tmp_path / "a.json", "--measure",
                         "adaptive_average", "--clips", "0", "--selection",
                         "landscape"))  # fmt: skip


@pytest.mark.slow
def test_measure_killed_with_sigkill_resumes_to_the_same_result(
    tmp_path, feature_store, model_file
):
    """A real `kill -9` of the job mid-way; the rerun reads the partial file and finishes."""
    common = ("--measure adaptive_average --samples 150 --rho 0.1 --precision float32 "
              "--batch-size 64 --clips all "
              "--selection landscape --device cpu --threads 1").split()  # fmt: skip
    ref = tmp_path / "ref.json"
    main(measure_cli(model_file, feature_store, ref, *common))
    out = tmp_path / "killed.json"
    partial = out.with_name(out.name + ".partial.json")
    argv = [sys.executable, "-m", "ascsharp.cli", *measure_cli(model_file, feature_store, out,
                                                              *common)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(partial.read_text())["done"]) >= 5:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert partial.exists() and not out.exists()
    done = len(json.loads(partial.read_text())["done"])
    assert 5 <= done < 150
    main(measure_cli(model_file, feature_store, out, *common))
    got, want = strict_json(out), strict_json(ref)
    assert got["values"] == want["values"]
    assert got["cost"]["resumed_units"] >= done and not partial.exists()
