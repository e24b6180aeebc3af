"""The training-step interface every optimiser implements (ascsharp.train.optim lists them).

`step(x, y)` does one update on a batch with mean cross-entropy and returns (loss, logits) from the
forward pass at the pre-update weights; `state_dict()` / `load_state_dict()` hold everything the
optimiser needs to continue bit-identically on CPU.

The training forward goes through `stepper.forward`: the model itself, or after `compile()` its
torch.compile'd forward (the same module and weights; speed only, used on CUDA by train.compile).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Stepper:
    """One optimisation step on a batch; subclasses differ only in how the update is made."""

    name: str = ""

    def __init__(self, model: nn.Module, options: dict[str, Any]):
        self.model = model
        self.options = options
        # What the training forward calls: the model, or the compiled forward of `compile()`.
        self.forward: nn.Module = model

    def compile(self, mode: str | None = None) -> None:
        """Send the training forward (and its backward) through torch.compile; `mode` as
        torch.compile's ("reduce-overhead": CUDA graphs). The weights, buffers and state dict
        stay the model's own: the compiled module wraps it, nothing is copied. Shapes are
        static (`dynamic=False`): a job sees few batch sizes (the batch, a last partial one,
        the evaluation batches), each compiled once."""
        self.forward = torch.compile(self.model, dynamic=False, mode=mode)

    @property
    def compiled(self) -> bool:
        return self.forward is not self.model

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


def batch_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)
