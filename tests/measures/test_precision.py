"""The measures that only evaluate (adaptive_average, pacbayes) run on the landscape's fast eval
forward (BatchNorm folded, at their `precision`): each evaluation sees the weights of that
moment, the values equal a plain eval-mode computation, and the fast precisions stay within the
tolerance the docs state, on trained CNN10s. The Hessian's TF32 products (measures.hessian.tf32)
change nothing on a CPU and stay within the same tolerance on CUDA."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from measures.test_measures import set_bn_stats

from ascsharp.core.seeds import generator
from ascsharp.measures.adaptive import adaptive_average
from ascsharp.measures.common import Cost, mean_loss
from ascsharp.measures.curvature import hessian
from ascsharp.measures.generalization import accuracy, pacbayes
from ascsharp.train.evaluate import EvalForward, forward_precision
from ascsharp.train.models import build_model

LOG = logging.getLogger("test_precision")
LOG.setLevel(logging.WARNING)
# Largest relative difference from IEEE float32 that docs/performance.md states for a measure
# evaluated at float16 (CPU autocast here; measured 0.01-0.7 % for adaptive_average, pacbayes
# unchanged). bfloat16 is not within it (measured up to 3 % for adaptive_average).
FLOAT16_TOLERANCE = 0.01
# The same for the Hessian's values with its products in TF32 (measures.hessian.tf32): the
# tolerance the docs hold it to, tested where TF32 exists (CUDA).
TF32_TOLERANCE = 0.01
HESSIAN = {"top_k": 3, "lanczos_tol": 1e-4, "trace_samples": 20, "batch_size": 64}


def cnn10(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return set_bn_stats(build_model("cnn10", width=1 / 16, n_mels=16, n_classes=4), seed)


def clips(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, 20, generator=g), torch.randint(0, 4, (n,), generator=g)


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.abs() * torch.randn(p.shape, generator=g))


def test_each_evaluation_sees_the_weights_of_that_moment():
    """One EvalForward, weights changed in place between evaluations (as every draw does): each
    loss and accuracy is the plain eval forward's at those weights (a BN folded once and never
    refolded would give the first weights' values every time)."""
    model, (x, y) = cnn10(), clips()
    fast = EvalForward(model)
    assert fast.folded is not None  # the fast path proper, not the plain model
    seen = set()
    for k in range(3):
        perturb_(model, seed=10 + k)
        with torch.no_grad():
            logits = model.eval()(x)
        plain_loss = float(F.cross_entropy(logits.double(), y))
        plain_acc = float((logits.argmax(1) == y).double().mean())
        loss = mean_loss(model, x, y, 7, Cost(), fast=fast)
        assert loss == pytest.approx(plain_loss, rel=1e-5)
        assert accuracy(model, x, y, 7, Cost(), fast=fast) == plain_acc
        seen.add(round(loss, 6))
    assert len(seen) == 3


def test_adaptive_average_on_a_cnn10_equals_a_plain_computation():
    """The measure's value on a CNN10 (fast path) against the definition computed with the plain
    eval-mode model: mean over the seeded draws of L(w + |w| u) - L(w)."""
    model, (x, y) = cnn10(seed=2), clips(seed=3)
    opts = {"rho": 0.1, "samples": 4, "batch_size": 10}
    value = adaptive_average(copy.deepcopy(model), x, y, opts, seed=9, log=LOG)["values"]

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(x).double(), y))

    w0 = [p.detach().clone() for p in model.parameters()]
    loss0, diffs = loss(), []
    for k in range(4):
        gen = generator(9, "adaptive-average", k)
        with torch.no_grad():
            for p, w in zip(model.parameters(), w0, strict=True):
                u = torch.randn(w.shape, generator=gen, dtype=w.dtype) * 0.1
                p.copy_(w + w.abs() * u)
        diffs.append(loss() - loss0)
    assert value["loss"] == pytest.approx(loss0, rel=1e-5)
    assert value["adaptive_average"] == pytest.approx(np.mean(diffs), rel=1e-4)


@pytest.fixture(scope="module")
def trained():
    """CNN10s trained on learnable clips to an ordinary and to a low loss: {name: (model, x, y)}."""
    from benchmarks.bench_refine import learnable_clips, train_epochs

    from ascsharp.train.optim import make_stepper

    out = {}
    for seed in (5, 6):
        torch.manual_seed(seed)
        model = build_model("cnn10", width=1 / 16, n_mels=32, n_classes=4)
        x, y = learnable_clips(128, 24, "cpu", mels=32, classes=4)
        stepper = make_stepper("adam", model, 1e-2, seed=seed)
        done = 0
        for level, epochs in {"ordinary": 3, "low": 40}.items():
            train_epochs(stepper, model, x, y, epochs - done)
            done = epochs
            out[f"seed {seed}, {level} loss"] = (copy.deepcopy(model).eval(), x, y)
    return out


def test_float16_measures_are_within_the_stated_tolerance_of_ieee(trained):
    """adaptive_average and pacbayes at float16 (CPU autocast) against IEEE float32 on four
    trained CNN10s (losses 2e-6 to 0.24): within FLOAT16_TOLERANCE relative."""
    avg = {"rho": 0.1, "samples": 10, "batch_size": 64}
    pac = {"samples": 5, "depth": 10, "batch_size": 64}
    for name, (model, x, y) in trained.items():
        values = {}
        for precision in ("float32", "float16"):
            a = adaptive_average(model, x, y, {**avg, "precision": precision}, 0, LOG)
            p = pacbayes(model, x, y, {**pac, "precision": precision}, 0, LOG)
            values[precision] = {
                "adaptive_average": a["values"]["adaptive_average"],
                "pacbayes_flatness": p["values"]["pacbayes_flatness"],
                "pacbayes_magnitude_flatness": p["values"]["pacbayes_magnitude_flatness"],
            }
            assert a["options"]["precision"] == p["options"]["precision"] == precision
        ieee, fast = values["float32"], values["float16"]
        assert fast["adaptive_average"] != ieee["adaptive_average"], name  # float16 did run
        for key, value in fast.items():
            assert value == pytest.approx(ieee[key], rel=FLOAT16_TOLERANCE), (name, key)


def test_tf32_hessian_products_change_nothing_on_a_cpu(trained):
    """CPUs have no TF32: the option leaves every value bit for bit (as the schema says)."""
    model, x, y = trained["seed 5, ordinary loss"]
    ieee, tf32 = (hessian(model, x[:32], y[:32], {**HESSIAN, "tf32": tf32}, seed=0,
                          log=LOG)["values"] for tf32 in (False, True))  # fmt: skip
    assert tf32 == ieee


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 exists on CUDA only")
def test_tf32_hessian_is_within_the_stated_tolerance_of_ieee_on_cuda():
    """A CNN10 at a quarter of the paper's width trained on learnable clips on the GPU: top
    eigenvalues and the trace (the same Rademacher vectors) with TF32 products within
    TF32_TOLERANCE of IEEE float32, as the measure job runs them (IEEE outside the products)."""
    from benchmarks.bench_refine import learnable_clips, train_epochs

    from ascsharp.train.optim import make_stepper

    device = torch.device("cuda")
    torch.manual_seed(5)
    model = build_model("cnn10", width=1 / 4, n_mels=64, n_classes=10).to(device)
    x, y = learnable_clips(256, 100, device, mels=64, classes=10)
    train_epochs(make_stepper("adam", model, 1e-3, seed=5), model, x, y, 10)
    model.eval()
    with forward_precision(device, "float32"):
        ieee, tf32 = (hessian(model, x, y, {**HESSIAN, "tf32": tf32}, seed=0,
                              log=LOG)["values"] for tf32 in (False, True))  # fmt: skip
    assert tf32["trace"] != ieee["trace"]  # TF32 did run
    for got, want in zip(tf32["top_eigenvalues"], ieee["top_eigenvalues"], strict=True):
        assert got == pytest.approx(want, rel=TF32_TOLERANCE)
    assert tf32["trace"] == pytest.approx(ieee["trace"], rel=TF32_TOLERANCE)
