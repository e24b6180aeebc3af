"""Digests of tensors: equal iff bit-identical (dtype, shape and bytes).

The resumable jobs key their partial files and checkpoints by them, and model.pt records the
initial weights by one (the measure distance_from_init checks it)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def tensor_digest(tensors: Iterable[Tensor]) -> str:
    """sha256 over dtype, shape and raw bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: stores are large
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """tensor_digest of a model's state dict (parameters and buffers, in order)."""
    return tensor_digest(model.state_dict().values())
