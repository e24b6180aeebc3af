"""K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) for Linear and
Conv2d layers, momentum SGD for the rest, as in the classic KFACOptimizer (ascsharp.train.optim
registers it as `kfac`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ascsharp.core.seeds import derive_seed
from ascsharp.train.stepper import Stepper, batch_loss


def kfac_generator(seed: int) -> torch.Generator:
    """The CPU generator K-FAC samples its Fisher labels from (CPU so runs match across devices)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, "kfac-fisher-labels"))
    return g


def input_factor(layer: nn.Module, a: torch.Tensor, max_elements: int = 2**26) -> torch.Tensor:
    """K-FAC's A: second moment of the layer inputs (a homogeneous 1 appended for a bias).

    For a convolution this is KFC's Omega: the patch second moment averaged over examples and
    output positions. Patches are unfolded a few examples at a time to bound memory.
    """
    a = _at_least_fp32(a)
    if isinstance(layer, nn.Linear):
        if a.ndim != 2:
            raise ValueError(
                f"K-FAC Linear input shape {tuple(a.shape)}: expected (batch, features)"
            )
        if layer.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        return a.T @ a / a.shape[0]
    batch = a.shape[0]
    acc, positions = None, 0
    dim = layer.in_channels * math.prod(layer.kernel_size) + (layer.bias is not None)
    chunk = max(1, max_elements // max(1, dim * a.shape[2] * a.shape[3]))
    for part in a.split(chunk):
        patches = F.unfold(part, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        positions = patches.shape[2]
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        if layer.bias is not None:
            patches = torch.cat([patches, patches.new_ones(patches.shape[0], 1)], dim=1)
        term = patches.T @ patches
        acc = term if acc is None else acc + term
    return acc / (batch * positions)


def output_factor(g: torch.Tensor) -> torch.Tensor:
    """K-FAC's G (KFC's Gamma) from gradients of the batch-mean loss w.r.t. the layer outputs.

    Per-example gradients are batch x these; G is their second moment, summed over positions.
    """
    g = _at_least_fp32(g)
    batch = g.shape[0]
    if g.ndim == 4:
        g = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
    return batch * (g.T @ g)


class KFACStepper(Stepper):
    """K-FAC with factored Tikhonov damping (pi trace ratio), KL clipping and momentum SGD.

    Every `stats_interval` steps: one extra backward pass of the loss on labels sampled from the
    model's softmax (true Fisher) gives fresh factors, folded into running averages with decay
    min(1 - 1/(k+1), stat_decay), k the number of earlier updates. Every `inverse_interval`
    steps: eigendecompositions of the factors. Each step, for each Linear/Conv2d layer, the
    gradient matrix Gw (bias as a last column) becomes
        V = (G + sqrt(damping)/pi I)^-1 Gw (A + pi sqrt(damping) I)^-1,
        pi = sqrt((tr A / dim A) / (tr G / dim G)),
    all V are scaled by nu = min(1, sqrt(kl_clip / (lr^2 sum V.Gw))), and momentum SGD applies
    them together with the plain gradients of every other parameter (BatchNorm).
    """

    name = "kfac"

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        seed: int,
        momentum: float = 0.9,
        damping: float = 1e-3,
        kl_clip: float = 1e-3,
        stats_interval: int = 10,
        inverse_interval: int = 100,
        stat_decay: float = 0.95,
    ):
        super().__init__(
            model,
            {
                "momentum": momentum,
                "damping": damping,
                "kl_clip": kl_clip,
                "stats_interval": stats_interval,
                "inverse_interval": inverse_interval,
                "stat_decay": stat_decay,
            },
        )
        if stats_interval < 1 or inverse_interval < 1:
            raise ValueError(
                f"K-FAC intervals must be >= 1, got {stats_interval}, {inverse_interval}"
            )
        self.layers: dict[str, nn.Module] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
                    raise ValueError(f"K-FAC supports plain Conv2d only; layer {name!r} is not")
            if isinstance(m, nn.Linear | nn.Conv2d) and m.weight.requires_grad:
                self.layers[name] = m
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self.generator = kfac_generator(seed)
        self.steps = 0
        self.stat_updates = 0
        self.factors: dict[str, dict[str, torch.Tensor]] = {}
        self.eigen: dict[str, dict[str, torch.Tensor]] = {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        self.model.train()
        collect = self.steps % o["stats_interval"] == 0
        captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = []
        if collect:
            for name, m in self.layers.items():
                handles.append(m.register_forward_hook(_capture_hook(captured, name)))
        try:
            # Statistics steps run eager: the compiled forward would not call hooks registered
            # after it was traced (torch.compile does not guard on them), so it would capture
            # nothing. The other steps (stats_interval - 1 of each stats_interval) use it.
            logits = (self.model if collect else self.forward)(x)
        finally:
            for h in handles:
                h.remove()
        loss = batch_loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if collect:
            self._update_factors(logits, captured)
        loss.backward()
        if self.steps % o["inverse_interval"] == 0:
            self._update_eigen()
        self._precondition()
        self.optimizer.step()
        self.steps += 1
        return loss.detach(), logits.detach()

    def _update_factors(self, logits: torch.Tensor, captured: dict) -> None:
        with torch.no_grad():
            probs = torch.softmax(_at_least_fp32(logits.detach()), dim=1).cpu()
            sampled = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        names = list(captured)
        outputs = [captured[n][1] for n in names]
        grads = torch.autograd.grad(
            batch_loss(logits, sampled.to(logits.device)), outputs, retain_graph=True
        )
        decay = min(1.0 - 1.0 / (self.stat_updates + 1), self.options["stat_decay"])
        with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
            for n, g in zip(names, grads, strict=True):
                new = {"A": input_factor(self.layers[n], captured[n][0]), "G": output_factor(g)}
                if n not in self.factors:
                    self.factors[n] = new
                else:
                    for k, f in self.factors[n].items():
                        f.mul_(decay).add_(new[k], alpha=1.0 - decay)
        self.stat_updates += 1

    def _update_eigen(self) -> None:
        root = math.sqrt(self.options["damping"])
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for n, f in self.factors.items():
                A, G = f["A"], f["G"]
                if not (torch.isfinite(A).all() and torch.isfinite(G).all()):
                    continue  # a diverged step; training stops at its next loss check
                dA, QA = torch.linalg.eigh(A)
                dG, QG = torch.linalg.eigh(G)
                pi = _pi(A, G)
                self.eigen[n] = {
                    "QA": QA,
                    "dA": dA.clamp(min=0) + pi * root,
                    "QG": QG,
                    "dG": dG.clamp(min=0) + root / pi,
                }

    def _precondition(self) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        # vg and nu stay on the device (float64, as Python floats were): no host sync per step.
        updates, vg = {}, torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for n, m in self.layers.items():
                if m.weight.grad is None or n not in self.eigen:
                    continue
                gw = m.weight.grad.reshape(m.weight.shape[0], -1)
                if m.bias is not None:
                    gw = torch.cat([gw, m.bias.grad.reshape(-1, 1)], dim=1)
                e = self.eigen[n]
                v = e["QG"].T @ gw @ e["QA"]
                v = e["QG"] @ (v / (e["dG"][:, None] * e["dA"][None, :])) @ e["QA"].T
                vg += (v * gw).sum().double() * lr**2
                updates[n] = v
            # min(1, sqrt(kl_clip / vg)), and 1 where vg is not positive (also NaN).
            nu = torch.where(vg > 0, (self.options["kl_clip"] / vg).sqrt().clamp(max=1.0), 1.0)
            for n, v in updates.items():
                m = self.layers[n]
                v = v * nu.to(v.dtype)  # as a Python float would be: rounded to v's precision
                if m.bias is not None:
                    m.bias.grad.copy_(v[:, -1])
                    v = v[:, :-1]
                m.weight.grad.copy_(v.reshape(m.weight.shape))

    def _state(self) -> dict[str, Any]:
        return {
            "torch_optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "stat_updates": self.stat_updates,
            "factors": {n: {k: t.clone() for k, t in f.items()} for n, f in self.factors.items()},
            "eigen": {n: {k: t.clone() for k, t in e.items()} for n, e in self.eigen.items()},
            "generator": self.generator.get_state(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        unknown = set(state["factors"]) - set(self.layers)
        if unknown:
            raise ValueError(f"K-FAC state has unknown layer {sorted(unknown)[0]!r}")
        dev = self.device
        self.optimizer.load_state_dict(state["torch_optimizer"])
        self.steps, self.stat_updates = state["steps"], state["stat_updates"]
        self.factors = {
            n: {k: t.to(dev) for k, t in f.items()} for n, f in state["factors"].items()
        }
        self.eigen = {n: {k: t.to(dev) for k, t in e.items()} for n, e in state["eigen"].items()}
        self.generator.set_state(state["generator"])


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Curvature in at least single precision, even when the forward pass ran in half."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _capture_hook(store: dict, name: str):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        store[name] = (inputs[0].detach(), output)

    return hook


def _pi(A: torch.Tensor, G: torch.Tensor) -> float:
    """The factored-Tikhonov trace ratio; 1 when either factor carries no curvature."""
    ratio = (A.trace() / A.shape[0]) / (G.trace() / G.shape[0])
    pi = math.sqrt(float(ratio)) if float(ratio) > 0 else float("nan")
    return pi if math.isfinite(pi) and pi > 0 else 1.0
