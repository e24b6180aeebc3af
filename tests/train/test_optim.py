"""Optimisers behind the Stepper interface, checked against closed forms on tiny problems."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ascsharp.train.kfac import input_factor, kfac_generator, output_factor
from ascsharp.train.models import build_model
from ascsharp.train.optim import STEPPERS, make_stepper

torch.set_num_threads(1)

NAMES = ["sgd", "adam", "sam", "gdtuo", "kfac"]


class TinyNet(nn.Module):
    """conv + BN + linear: every kind of layer the CNNs have, in a few hundred parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def tiny_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes, each a fixed 6x6 pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    protos = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(123))
    return protos[y] + 0.5 * torch.randn(n, 1, 6, 6, generator=g), y


def batches(k: int, n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tiny_data(n, seed=100 + i) for i in range(k)]


LR = {"sgd": 0.05, "adam": 0.01, "sam": 0.05, "gdtuo": 0.01, "kfac": 0.05}


@pytest.mark.parametrize("name", NAMES)
def test_each_optimiser_reduces_the_loss(name: str) -> None:
    x, y = tiny_data()
    stepper = make_stepper(name, tiny_net(), LR[name], seed=1)
    losses = [float(stepper.step(x, y)[0]) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("name", NAMES)
def test_step_returns_loss_and_logits_at_pre_update_weights(name: str) -> None:
    x, y = tiny_data(16)
    model = tiny_net()
    reference = copy.deepcopy(model).train()
    model.eval()  # the stepper itself must switch to training mode
    stepper = make_stepper(name, model, LR[name], seed=1)
    loss, logits = stepper.step(x, y)
    expected = reference(x)
    assert not loss.requires_grad and not logits.requires_grad
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(expected, y), atol=1e-6)
    assert not torch.equal(stepper.model.fc.weight.detach(), reference.fc.weight.detach())


def flat_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


RESUME_OPTIONS = {
    "sgd": {},
    "adam": {},
    "sam": {},
    "gdtuo": {},
    "kfac": {},
    # Small intervals, so that the resumed steps cross both a statistics and an inverse update.
    "kfac-small": {"stats_interval": 2, "inverse_interval": 2},
}


@pytest.mark.parametrize("key", list(RESUME_OPTIONS))
def test_resume_is_bit_identical(key: str) -> None:
    name = key.split("-")[0]
    data = batches(6)

    straight = make_stepper(name, tiny_net(), LR[name], seed=5, **RESUME_OPTIONS[key])
    straight_losses = [straight.step(x, y)[0] for x, y in data]

    first = make_stepper(name, tiny_net(), LR[name], seed=5, **RESUME_OPTIONS[key])
    for x, y in data[:3]:
        first.step(x, y)
    buf = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "stepper": first.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as the training loop loads it

    model = tiny_net(seed=99)  # different initial weights: everything must come from the file
    resumed = make_stepper(name, model, LR[name], seed=5, **RESUME_OPTIONS[key])
    model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["stepper"])
    resumed_losses = [resumed.step(x, y)[0] for x, y in data[3:]]

    for a, b in zip(straight_losses[3:], resumed_losses, strict=True):
        assert torch.equal(a, b)
    s, r = flat_state(straight.model), flat_state(resumed.model)
    assert s.keys() == r.keys()
    for k in s:
        assert torch.equal(s[k], r[k]), k
    # And the continued run really moved away from the saved point.
    assert not torch.equal(r["fc.weight"], saved["model"]["fc.weight"])


def test_state_of_another_optimiser_or_setting_is_refused() -> None:
    state = make_stepper("sgd", tiny_net(), 0.1, seed=0).state_dict()
    with pytest.raises(ValueError, match="'sgd'"):
        make_stepper("adam", tiny_net(), 0.1, seed=0).load_state_dict(state)
    state = make_stepper("kfac", tiny_net(), 0.1, seed=0).state_dict()
    with pytest.raises(ValueError, match="options"):
        make_stepper("kfac", tiny_net(), 0.1, seed=0, damping=0.1).load_state_dict(state)


def test_unknown_optimiser_and_option_are_named() -> None:
    with pytest.raises(ValueError, match="'adamw'.*sgd, adam, sam, gdtuo, kfac"):
        make_stepper("adamw", tiny_net(), 0.1, seed=0)
    with pytest.raises(ValueError, match="'rho'.*'adam'"):
        make_stepper("adam", tiny_net(), 0.1, seed=0, rho=0.1)
    with pytest.raises(ValueError, match="lr"):
        make_stepper("sgd", tiny_net(), 0.0, seed=0)
    assert list(STEPPERS) == NAMES


# --- SGD / Adam ------------------------------------------------------------------------------


def test_sgd_is_momentum_sgd_without_weight_decay() -> None:
    model = tiny_net(dtype=torch.float64)
    stepper = make_stepper("sgd", model, 0.1, seed=0)
    reference = copy.deepcopy(model)
    buf = {k: torch.zeros_like(p) for k, p in reference.named_parameters()}
    for x, y in batches(3):
        stepper.step(x.double(), y)
        reference.zero_grad()
        F.cross_entropy(reference(x.double()), y).backward()
        with torch.no_grad():
            for k, p in reference.named_parameters():
                buf[k] = 0.9 * buf[k] + p.grad
                p -= 0.1 * buf[k]
    for k, p in reference.named_parameters():
        assert torch.allclose(p, dict(model.named_parameters())[k], rtol=1e-12, atol=1e-14), k


# --- SAM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.05, 0.2])  # the default and another: rho must be used
def test_sam_two_passes_perturbation_of_norm_rho(rho: float) -> None:
    x, y = tiny_data(16)
    model = tiny_net()
    stepper = make_stepper("sam", model, 0.05, seed=0, rho=rho)
    seen = []
    model.register_forward_pre_hook(
        lambda m, i: seen.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    )
    stepper.step(x, y)
    assert len(seen) == 2
    assert math.isclose(float(torch.linalg.vector_norm(seen[1] - seen[0])), rho, rel_tol=1e-4)


def test_sam_update_matches_closed_form_and_bn_stats_from_first_pass() -> None:
    x, y = tiny_data(16)
    model = tiny_net(dtype=torch.float64)
    x = x.double()
    reference = copy.deepcopy(model).train()
    rho, lr = 0.13, 0.1  # not the default rho, so a SAM that ignores it fails
    stepper = make_stepper("sam", model, lr, seed=0, rho=rho)
    stepper.step(x, y)

    params = list(reference.parameters())
    g1 = torch.autograd.grad(F.cross_entropy(reference(x), y), params)
    bn_after_first = (reference.bn.running_mean.clone(), reference.bn.running_var.clone())
    norm = torch.sqrt(sum((g**2).sum() for g in g1))
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        for p, g in zip(perturbed.parameters(), g1, strict=True):
            p += rho * g / norm
    g2 = torch.autograd.grad(F.cross_entropy(perturbed(x), y), list(perturbed.parameters()))
    for (k, p), w, g in zip(model.named_parameters(), params, g2, strict=True):
        # First momentum step: buffer = gradient, so w <- w - lr * g(w + eps).
        assert torch.allclose(p, w - lr * g, rtol=1e-12, atol=1e-14), k
    assert torch.equal(model.bn.running_mean, bn_after_first[0])
    assert torch.equal(model.bn.running_var, bn_after_first[1])
    assert int(model.bn.num_batches_tracked) == 1
    # A second pass would have moved the statistics (so the check above can fail).
    assert not torch.equal(perturbed.bn.running_mean, bn_after_first[0])


# --- GDTUO -----------------------------------------------------------------------------------


def test_gdtuo_learns_its_lr_and_exposes_plain_weights() -> None:
    x, y = tiny_data()
    stepper = make_stepper("gdtuo", tiny_net(), 0.01, seed=0)
    start = stepper.hyperparameters()
    assert start == pytest.approx({"learnt_lr": 0.01, "learnt_beta1": 0.9, "learnt_beta2": 0.999})
    for _ in range(10):
        stepper.step(x, y)
    learnt = stepper.hyperparameters()
    assert learnt["learnt_lr"] != pytest.approx(0.01, rel=1e-6, abs=0)
    assert all(math.isfinite(v) for v in learnt.values())
    # The weights leave as an ordinary state dict that a fresh model accepts.
    state = copy.deepcopy(stepper.model.state_dict())  # as the training loop keeps the best
    assert all(not t.requires_grad for t in state.values())
    fresh = tiny_net(seed=3)
    fresh.load_state_dict(state)
    stepper.model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(stepper.model(x), fresh(x))
        # ... and loading weights back into the trained module (best epoch) works too.
        stepper.model.load_state_dict(tiny_net(seed=4).state_dict())
        assert torch.equal(stepper.model(x), tiny_net(seed=4).eval()(x))


def adam_direction(g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """gdtuo.Adam's first-step direction from a zero m and an eps-initialised v."""
    m_hat = (1 - 0.9) * g / (1 - 0.9)
    v_hat = (eps + (1 - 0.999) * g * g) / (1 - 0.999)
    return m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("clamp", [1.0, None])
def test_gdtuo_clamps_gradients_at_both_levels(clamp: float | None) -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    gen = torch.Generator().manual_seed(1)
    (x1, x2) = (100 * torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    y1, y2 = torch.randint(0, 3, (8,), generator=gen), torch.randint(0, 3, (8,), generator=gen)
    reference = copy.deepcopy(model)
    stepper = make_stepper("gdtuo", model, 0.01, seed=0, grad_clamp=clamp)
    inner = stepper.wrapper.optimizer
    outer = inner.optimizer

    def cl(t: torch.Tensor) -> torch.Tensor:
        return t if clamp is None else t.clamp(-clamp, clamp)

    # Weight level: the inner Adam's first moment holds (1 - beta1) * clamp(gradient).
    g1 = torch.autograd.grad(F.cross_entropy(reference(x1), y1), list(reference.parameters()))
    assert max(float(g.abs().max()) for g in g1) > 10
    stepper.step(x1, y1)
    for (k, _), g in zip(reference.named_parameters(), g1, strict=True):
        assert torch.allclose(inner.cache[k]["m"].detach(), 0.1 * cl(g), rtol=1e-5), k

    # Hyper level: d loss_2 / d lr = -<grad loss_2 at w_2, Adam direction of step 1>.
    w2 = copy.deepcopy(reference)
    w2.load_state_dict(model.state_dict())
    g2 = torch.autograd.grad(F.cross_entropy(w2(x2), y2), list(w2.parameters()))
    hyper = -sum((a * adam_direction(cl(b))).sum() for a, b in zip(g2, g1, strict=True))
    assert abs(float(hyper)) > 1
    stepper.step(x2, y2)
    m_alpha = outer.cache["alpha"]["m"].detach()
    assert torch.allclose(m_alpha.double(), 0.1 * cl(hyper), rtol=1e-4)


def test_gdtuo_without_create_graph_gives_the_same_updates() -> None:
    runs = []
    for create_graph in (True, False):
        stepper = make_stepper("gdtuo", tiny_net(), 0.01, seed=0, create_graph=create_graph)
        for x, y in batches(4):
            stepper.step(x, y)
        runs.append((flat_state(stepper.model), stepper.hyperparameters()))
    # The one-step hypergradient needs no second-order graph: same bits on CPU either way.
    assert runs[0][1] == runs[1][1]
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k]), k


# --- K-FAC -----------------------------------------------------------------------------------


def brute_force_input_factor(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """KFC's Omega by explicit loops over examples and output positions."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = F.pad(a, (pw, pw, ph, ph))
    rows = []
    for n in range(a.shape[0]):
        for i in range(0, padded.shape[2] - kh + 1, sh):
            for j in range(0, padded.shape[3] - kw + 1, sw):
                patch = padded[n, :, i : i + kh, j : j + kw].flatten()
                if conv.bias is not None:
                    patch = torch.cat([patch, torch.ones(1, dtype=a.dtype)])
                rows.append(patch)
    rows = torch.stack(rows)
    return rows.T @ rows / len(rows)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.Conv2d(2, 3, (2, 3), stride=2, padding=(0, 1), bias=True),
    ],
)
def test_conv_factors_match_brute_force(conv: nn.Conv2d) -> None:
    a = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    expected = brute_force_input_factor(conv.double(), a)
    assert torch.allclose(input_factor(conv, a), expected, rtol=1e-12)
    assert torch.allclose(input_factor(conv, a, max_elements=1), expected, rtol=1e-12)
    # Gamma: per-example output gradients (batch x the mean-loss gradient), summed over positions.
    g = torch.randn(3, 3, 4, 2, dtype=torch.float64)
    per_example = [3 * g[n, :, i, j] for n in range(3) for i in range(4) for j in range(2)]
    gamma = sum(torch.outer(v, v) for v in per_example) / 3
    assert torch.allclose(output_factor(g), gamma, rtol=1e-12)


def linear_case(batch: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    layer = nn.Linear(5, 3).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=gen)
    return layer, x, y


@pytest.mark.parametrize("kl_clip", [1e-3, 1e3])
def test_kfac_update_on_a_linear_layer_matches_closed_form(kl_clip: float) -> None:
    layer, x, y = linear_case()
    lr, damping, seed = 0.1, 1e-3, 7
    W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    stepper = make_stepper("kfac", layer, lr, seed=seed, kl_clip=kl_clip, damping=damping)
    stepper.step(x, y)

    B = x.shape[0]
    abar = torch.cat([x, torch.ones(B, 1, dtype=x.dtype)], dim=1)
    p = torch.softmax(x @ W.T + b, dim=1)
    sampled = torch.multinomial(p, 1, generator=kfac_generator(seed)).squeeze(1)
    A = abar.T @ abar / B
    gs = p - F.one_hot(sampled, 3).double()  # per-example d(-log p(sampled)) / d logits
    G = gs.T @ gs / B
    grad = (p - F.one_hot(y, 3).double()).T @ abar / B  # [dW | db] of the mean loss
    pi = math.sqrt((A.trace() / 6) / (G.trace() / 3))
    r = math.sqrt(damping)
    V = torch.linalg.solve(G + r / pi * torch.eye(3, dtype=x.dtype), grad)
    V = torch.linalg.solve(A + pi * r * torch.eye(6, dtype=x.dtype), V.T).T
    nu = min(1.0, math.sqrt(kl_clip / float(lr**2 * (V * grad).sum())))
    assert (nu < 1) == (kl_clip < 1)  # both branches of the clip are exercised
    assert torch.allclose(stepper.factors[""]["A"], A, rtol=1e-12)
    assert torch.allclose(stepper.factors[""]["G"], G, rtol=1e-12)
    assert torch.allclose(layer.weight, W - lr * nu * V[:, :5], rtol=1e-9, atol=1e-12)
    assert torch.allclose(layer.bias, b - lr * nu * V[:, 5], rtol=1e-9, atol=1e-12)


def test_kfac_running_average_decay() -> None:
    layer, _, _ = linear_case()
    stepper = make_stepper("kfac", layer, 1e-3, seed=0, stats_interval=1)
    data = [linear_case(seed=10 + i)[1:] for i in range(25)]
    news = []
    for k, (x, y) in enumerate(data):
        stepper.step(x, y)
        abar = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        news.append(abar.T @ abar / len(x))
        if k == 19:  # decay 1 - 1/(k+1) up to here: an exact running mean
            assert torch.allclose(stepper.factors[""]["A"], torch.stack(news).mean(0), rtol=1e-10)
    expected = torch.stack(news[:20]).mean(0)
    for new in news[20:]:  # then capped at 0.95
        expected = 0.95 * expected + 0.05 * new
    assert torch.allclose(stepper.factors[""]["A"], expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("options", "steps", "stat_steps", "inverse_steps"),
    [
        ({}, 21, [0, 10, 20], [0]),
        ({"stats_interval": 3, "inverse_interval": 5}, 11, [0, 3, 6, 9], [0, 5, 10]),
    ],
)
def test_kfac_update_schedule(options, steps, stat_steps, inverse_steps) -> None:
    stepper = make_stepper("kfac", tiny_net(), 0.01, seed=0, **options)
    assert set(stepper.layers) == {"conv", "fc"}
    changed_stats, changed_inverse = [], []
    before_a = before_e = None
    for k, (x, y) in enumerate(batches(steps, n=8)):
        stepper.step(x, y)
        a = stepper.factors["conv"]["A"].clone()
        e = stepper.eigen["conv"]["dA"].clone()
        if before_a is None or not torch.equal(a, before_a):
            changed_stats.append(k)
        if before_e is None or not torch.equal(e, before_e):
            changed_inverse.append(k)
        before_a, before_e = a, e
    assert changed_stats == stat_steps
    assert changed_inverse == inverse_steps
    assert stepper.stat_updates == len(stat_steps)


def test_kfac_factors_are_symmetric_psd() -> None:
    stepper = make_stepper("kfac", tiny_net(), 0.01, seed=0, stats_interval=1)
    for x, y in batches(5, n=8):
        stepper.step(x, y)
    for name, f in stepper.factors.items():
        for key, m in f.items():
            assert torch.allclose(m, m.T, atol=1e-6), (name, key)
            ev = torch.linalg.eigvalsh(m.double())
            assert ev.min() >= -1e-6 * ev.max(), (name, key)
            assert ev.max() > 0, (name, key)


def test_kfac_true_fisher_uses_sampled_labels() -> None:
    """The Fisher depends on the sampling seed, not on the true labels."""
    layer, x, y = linear_case()
    factors = []
    for seed, labels in ((1, y), (1, (y + 1) % 3), (2, y)):
        s = make_stepper("kfac", copy.deepcopy(layer), 0.1, seed=seed)
        s.step(x, labels)
        factors.append(s.factors[""]["G"])
    assert torch.equal(factors[0], factors[1])
    assert not torch.equal(factors[0], factors[2])


# --- the real model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_steppers_run_on_a_small_cnn10(name: str) -> None:
    torch.manual_seed(0)
    model = build_model("cnn10", width=1 / 16, n_classes=10, n_mels=64)
    x, y = torch.randn(4, 64, 32), torch.tensor([0, 1, 2, 3])
    before = flat_state(model)
    stepper = make_stepper(name, model, 1e-3, seed=0)
    if name == "kfac":
        assert len(stepper.layers) == 10  # 8 convolutions, fc1 and the head
    for _ in range(2):
        loss, logits = stepper.step(x, y)
    assert math.isfinite(float(loss)) and logits.shape == (4, 10)
    after = flat_state(stepper.model)
    assert not torch.equal(before["conv_block1.conv1.weight"], after["conv_block1.conv1.weight"])
    assert not torch.equal(before["out.bias"], after["out.bias"])
