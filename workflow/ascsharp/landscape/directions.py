"""Filter-normalised random directions (Li et al., NeurIPS 2018): drawn per model and direction
seed, saved with their fingerprint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ascsharp.core.io import atomic_path
from ascsharp.core.seeds import generator
from ascsharp.core.tensors import tensor_digest

# The seed stream of the directions (ascsharp.core.seeds): part of the numbers, never renamed.
PURPOSE = "landscape"


def random_direction(model: nn.Module, gen: torch.Generator) -> list[Tensor]:
    """One filter-normalised Gaussian direction, one tensor per parameter (buffers excluded).

    A Gaussian is drawn for every parameter, including those then zeroed, so that a
    direction's values do not depend on which tensors are zeroed; the stream comes from our own
    generator (seeded from run and direction seed), so the numbers are not the original code's.
    Tensors with <= 1 dimension (biases, BN affine) are zeroed; each output slice of the others
    is rescaled to the norm of the weight slice so that the landscape is comparable across
    layers and scale-invariant networks.
    """
    out = []
    for p in model.parameters():
        w = p.detach().to("cpu")
        d = torch.randn(w.shape, generator=gen, dtype=w.dtype, device="cpu")
        if d.dim() <= 1:
            d.zero_()
        else:
            d2, w2 = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            d2.mul_((w2.norm(dim=1) / (d2.norm(dim=1) + 1e-10)).unsqueeze(1))
        out.append(d)
    return out


def make_directions(
    model: nn.Module, run_id: str, direction_seed: int
) -> tuple[list[Tensor], list[Tensor]]:
    """The (dx, dy) pair of a run and direction seed, reproducible on its own and on any device.

    The generator lives on the CPU so that CUDA and CPU jobs draw the same directions.
    """
    gen = generator(run_id, direction_seed, PURPOSE)
    dx = random_direction(model, gen)
    dy = random_direction(model, gen)
    return dx, dy


def cosine_similarity(dx: Sequence[Tensor], dy: Sequence[Tensor]) -> float:
    """Cosine of the angle between two directions over all entries (near 0 in high dimension)."""
    dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(dx, dy, strict=True))
    nx = math.sqrt(sum(float(a.double().pow(2).sum()) for a in dx))
    ny = math.sqrt(sum(float(b.double().pow(2).sum()) for b in dy))
    return dot / (nx * ny) if nx > 0 and ny > 0 else float("nan")


def save_directions(
    path: str | Path, dx: Sequence[Tensor], dy: Sequence[Tensor], meta: dict[str, Any]
) -> None:
    """Save plain tensors and a plain meta dict (loadable with weights_only=True), atomically."""
    meta = dict(meta)
    meta["cosine_similarity"] = cosine_similarity(dx, dy)
    meta["fingerprint"] = directions_fingerprint(dx, dy)
    obj = {
        "dx": [t.detach().cpu() for t in dx],
        "dy": [t.detach().cpu() for t in dy],
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_directions(path: str | Path) -> tuple[list[Tensor], list[Tensor], dict[str, Any]]:
    """Load directions saved by save_directions; refuses pickled objects (weights_only=True)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: directions file not found") from None
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for foreign files
        raise ValueError(f"{path}: not a directions file ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not {"dx", "dy", "meta"} <= obj.keys():
        raise ValueError(f"{path}: not a directions file (expected keys dx, dy, meta)")
    return list(obj["dx"]), list(obj["dy"]), dict(obj["meta"])


def directions_fingerprint(dx: Sequence[Tensor], dy: Sequence[Tensor]) -> str:
    return tensor_digest([*dx, *dy])
