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
import warnings
from typing import Any

import torch
from gradient_descent_the_ultimate_optimizer import gdtuo
from torch import nn

from ascsharp.train.kfac import KFACStepper
from ascsharp.train.stepper import Stepper, batch_loss


class TorchStepper(Stepper):
    """A plain torch.optim optimiser (SGD with momentum, Adam)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, options: dict[str, Any]):
        super().__init__(model, options)
        self.optimizer = optimizer

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.forward(x)
        loss = batch_loss(logits, y)
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
        logits = self.forward(x)
        loss = batch_loss(logits, y)
        loss.backward()
        # Copies: under CUDA graphs (compile mode "reduce-overhead") the second forward may
        # reuse the memory of the first one's outputs.
        loss, logits = loss.detach().clone(), logits.detach().clone()
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
        batch_loss(self.forward(x), y).backward()
        with torch.no_grad():
            # Restore by copy, not by subtracting the perturbation, so w comes back exactly.
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
            for b, saved in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        self.optimizer.step()
        return loss, logits


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
        logits = self.forward(x)  # the wrapper's module, or its compiled forward
        loss = batch_loss(logits, y)
        w.zero_grad()
        with warnings.catch_warnings():
            # The package's documented usage; the reference cycle is broken in _clamp_grads.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            # Compiled, without the graph: AOTAutograd's backward refuses create_graph (its
            # donated buffers), and the updates are the same bits without it (tested).
            loss.backward(create_graph=self.create_graph and not self.compiled)
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
