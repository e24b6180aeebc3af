"""The paper's optimisers behind one training-step interface, so the training loop is the same.

`make_stepper(name, model, lr, seed=...)` returns a `Stepper` whose `step(x, y)` does one update
on a batch with mean cross-entropy and returns (loss, logits) from the forward pass at the
pre-update weights. `state_dict()` / `load_state_dict()` hold everything the optimiser needs to
continue bit-identically on CPU (momenta, curvature factors, its own random generator); the
model's weights are saved separately by the caller via `stepper.model.state_dict()`, and the
global RNG (dropout) is the caller's to save. Everything in a state dict is tensors, numbers,
strings, lists and dicts, so it loads with `torch.load(..., weights_only=True)`.

- sgd: momentum 0.9, no weight decay.
- adam: torch defaults (betas 0.9/0.999, eps 1e-8).
- sam: Foret et al. 2021, rho 0.05, on SGD with momentum 0.9. BatchNorm running statistics
  come from the first pass only: all buffers are restored after the perturbed pass.
- gdtuo: Chandra et al. 2022 via the `gradient-descent-the-ultimate-optimizer` package: Adam(lr)
  whose lr and betas are learnt by an outer Adam(1e-5); gradients clamped to [-1, 1] at every
  level (the package itself does not clamp).
- kfac: K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) for Linear
  and Conv2d layers, momentum SGD for the rest, as in the classic KFACOptimizer.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from gradient_descent_the_ultimate_optimizer import gdtuo
from torch import nn

from ascsharp.core.seeds import derive_seed


class Stepper:
    """One optimisation step on a batch; subclasses differ only in how the update is made."""

    name: str = ""

    def __init__(self, model: nn.Module, options: dict[str, Any]):
        self.model = model
        self.options = options

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.name, "options": dict(self.options), **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("optimizer") != self.name:
            raise ValueError(
                f"optimizer state is for {state.get('optimizer')!r}, not {self.name!r}"
            )
        if state.get("options") != self.options:
            raise ValueError(f"optimizer options {state.get('options')} differ from {self.options}")
        self._load(state)

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, float]:
        """Values the optimiser changes while training (logged per epoch); none by default."""
        return {}

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters())).device


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


class TorchStepper(Stepper):
    """A plain torch.optim optimiser (SGD with momentum, Adam)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, options: dict[str, Any]):
        super().__init__(model, options)
        self.optimizer = optimizer

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = _loss(logits, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def _state(self) -> dict[str, Any]:
        return {"torch_optimizer": self.optimizer.state_dict()}

    def _load(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["torch_optimizer"])


class SGDStepper(TorchStepper):
    name = "sgd"

    def __init__(self, model: nn.Module, lr: float, *, seed: int, momentum: float = 0.9):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        super().__init__(model, opt, {"momentum": momentum})


class AdamStepper(TorchStepper):
    name = "adam"

    def __init__(self, model: nn.Module, lr: float, *, seed: int):
        super().__init__(model, torch.optim.Adam(model.parameters(), lr=lr), {})


class SAMStepper(TorchStepper):
    """Sharpness-aware minimisation: descend with the gradient taken at w + rho g/||g||."""

    name = "sam"

    def __init__(
        self, model: nn.Module, lr: float, *, seed: int, rho: float = 0.05, momentum: float = 0.9
    ):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        super().__init__(model, opt, {"rho": rho, "momentum": momentum})
        self.rho = rho

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = _loss(logits, y)
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + 1e-12)
        weights = [p.detach().clone() for p in params]
        # Snapshot after the first pass so BN running statistics keep that pass's update only.
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad * scale)
        self.optimizer.zero_grad(set_to_none=True)
        _loss(self.model(x), y).backward()
        with torch.no_grad():
            # Restore by copy, not by subtracting the perturbation, so w comes back exactly.
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
            for b, saved in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        self.optimizer.step()
        return loss.detach(), logits.detach()


class GDTUOStepper(Stepper):
    """Adam whose lr and betas are learnt online by an outer Adam (hypergradient descent).

    The package replaces the module's parameters after every step by non-leaf tensors that keep
    the graph back to the hyperparameters; `model.state_dict()` still gives plain tensors, but
    the module must not be moved (`.to`) or deep-copied while training: rebuild a model from its
    state dict for that.
    """

    name = "gdtuo"

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        seed: int,
        hyper_lr: float = 1e-5,
        grad_clamp: float | None = 1.0,
        create_graph: bool = True,
    ):
        super().__init__(
            model, {"hyper_lr": hyper_lr, "grad_clamp": grad_clamp, "create_graph": create_graph}
        )
        if grad_clamp is not None and not grad_clamp > 0:
            raise ValueError(f"grad_clamp {grad_clamp!r} must be > 0 or None")
        optimizer = gdtuo.Adam(alpha=lr, optimizer=gdtuo.Adam(alpha=hyper_lr))
        self.wrapper = gdtuo.ModuleWrapper(model, optimizer=optimizer)
        self.wrapper.initialize()
        self.grad_clamp, self.create_graph = grad_clamp, create_graph
        self.steps = 0
        # References (not copies) to what the last wrapper.step() consumed; see _load.
        self._pre_step: list[dict[str, Any]] | None = None

    def _levels(self) -> list[gdtuo.Optimizable]:
        """The wrapper (weights), the inner Adam (lr, betas), the outer Adam, top to bottom."""
        levels, level = [], self.wrapper
        while not isinstance(level, gdtuo.NoOpOptimizer):
            levels.append(level)
            level = level.optimizer
        return levels

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.wrapper
        w.train()
        w.begin()
        logits = w.forward(x)
        loss = _loss(logits, y)
        w.zero_grad()
        with warnings.catch_warnings():
            # The package's documented usage; the reference cycle is broken in _clamp_grads.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            loss.backward(create_graph=self.create_graph)
        self._clamp_grads()
        self._pre_step = self._capture()
        w.step()
        self.steps += 1
        return loss.detach(), logits.detach()

    def _clamp_grads(self) -> None:
        # Each level's update reads only `grad.detach()`, so replacing the gradient by a clamped,
        # detached copy changes nothing else and frees the create_graph graph early.
        for level in self._levels():
            for p in level.parameters.values():
                if p.grad is not None:
                    g = p.grad.detach()
                    c = self.grad_clamp
                    p.grad = g if c is None else g.clamp(-c, c)

    def _capture(self) -> list[dict[str, Any]]:
        """Shallow copies: the package rebinds dict entries but never writes tensors in place."""
        snap = []
        for level in self._levels():
            entry: dict[str, Any] = {
                "parameters": dict(level.parameters),
                "grads": {k: p.grad for k, p in level.parameters.items() if p.grad is not None},
            }
            if hasattr(level, "cache"):
                entry["cache"] = {k: dict(v) for k, v in level.cache.items()}
                entry["num_stepments"] = level.num_stepments
            snap.append(entry)
        return snap

    def hyperparameters(self) -> dict[str, float]:
        """The learnt lr and betas of the inner Adam, for the training log."""
        inner = self.wrapper.optimizer
        p = inner.parameters
        return {
            "learnt_lr": float(p["alpha"].detach()),
            "learnt_beta1": float(type(inner).clamp(p["beta1"].detach())),
            "learnt_beta2": float(type(inner).clamp(p["beta2"].detach())),
        }

    def _state(self) -> dict[str, Any]:
        def plain(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: t.detach().clone() for k, t in d.items()}

        levels = None
        if self._pre_step is not None:
            levels = []
            for entry in self._pre_step:
                saved = {"parameters": plain(entry["parameters"]), "grads": plain(entry["grads"])}
                if "cache" in entry:
                    saved["cache"] = {k: plain(v) for k, v in entry["cache"].items()}
                    saved["num_stepments"] = entry["num_stepments"]
                levels.append(saved)
        return {"steps": self.steps, "pre_step": levels}

    def _load(self, state: dict[str, Any]) -> None:
        """Replay the last step from its saved inputs.

        The hypergradient of the next step flows through the graph that links the current
        weights to the current lr/betas. Loaded weights are leaves without that graph, so the
        last update is recomputed from the weights, gradients and moments it started from:
        same inputs, same operations, the same bits on CPU, and the graph is back.
        """
        self.steps = state["steps"]
        saved_levels = state["pre_step"]
        if saved_levels is None:
            return
        levels = self._levels()
        if len(saved_levels) != len(levels):
            raise ValueError(f"gdtuo state has {len(saved_levels)} levels, expected {len(levels)}")
        below: dict[str, torch.Tensor] = {}
        for level, saved in zip(levels, saved_levels, strict=True):
            current = dict(level.parameters)
            params = {}
            for k, t in saved["parameters"].items():
                if k not in current:
                    raise ValueError(f"gdtuo state has unknown parameter {k!r}")
                p = t.detach().clone().to(current[k].device).requires_grad_(True)
                if k in saved["grads"]:
                    p.grad = saved["grads"][k].detach().clone().to(p.device)
                params[k] = p
            level.parameters = params
            if "cache" in saved:
                level.cache = {
                    k: {n: t.detach().clone().to(below[k].device) for n, t in v.items()}
                    for k, v in saved["cache"].items()
                }
                level.num_stepments = saved["num_stepments"]
            below = params
        self._pre_step = self._capture()
        self.wrapper.step()


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
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        loss = _loss(logits, y)
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
            _loss(logits, sampled.to(logits.device)), outputs, retain_graph=True
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


STEPPERS: dict[str, type[Stepper]] = {
    cls.name: cls for cls in (SGDStepper, AdamStepper, SAMStepper, GDTUOStepper, KFACStepper)
}


def make_stepper(name: str, model: nn.Module, lr: float, *, seed: int, **options: Any) -> Stepper:
    """The stepper for a config's optimizer name; `options` override the paper's settings."""
    if name not in STEPPERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(STEPPERS)}")
    cls = STEPPERS[name]
    valid = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for optimizer {name!r}; valid: {listed}")
    if not lr > 0:
        raise ValueError(f"lr {lr!r} must be > 0")
    return cls(model, lr, seed=seed, **options)
