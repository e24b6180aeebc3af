"""Self-describing model files: weights plus everything needed to rebuild and trace them.

Loaded with `weights_only=True` (no pickle of arbitrary objects), and checked for the keys we
wrote, so a truncated or foreign file is refused by name instead of giving a wrong number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ascsharp.core.io import atomic_path
from ascsharp.train.models import build_model

FORMAT = "ascsharp-model-v1"
_REQUIRED = ("format", "state_dict", "arch", "width", "n_classes", "n_mels", "run", "train_clips")


def save(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except Exception as e:  # truncated zip, wrong magic, disallowed globals...
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ascsharp model file (format {FORMAT!r} expected)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"{path}: key {missing[0]!r} missing")
    return payload


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode, on `device`) and its checkpoint metadata."""
    payload = load(path, map_location="cpu")
    model = build_model(
        payload["arch"],
        n_classes=payload["n_classes"],
        width=payload["width"],
        n_mels=payload["n_mels"],
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not fit {payload['arch']} ({str(e).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), payload
