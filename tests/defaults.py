"""The workflow's settings as the schema states them, for tests that call the library directly.

Library functions and option classes take explicit values (the schema is the one place that
holds defaults); tests build them from here and change only what they are about.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ascsharp.core.config import schema_defaults
from ascsharp.features.clips import Store
from ascsharp.features.mel import MelConfig
from ascsharp.train.loop import TrainFiles, TrainSettings

DEFAULTS = schema_defaults()


def _build(cls, settings: dict[str, Any], changes: dict[str, Any]):
    unknown = set(changes) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    return cls(**{f.name: changes.get(f.name, settings.get(f.name)) for f in fields(cls)})


def mel_config(**changes: Any) -> MelConfig:
    """The config's log-mel settings (`features`: the paper's), with `changes`."""
    return _build(MelConfig, DEFAULTS["features"], changes)


def train_settings(**changes: Any) -> TrainSettings:
    """The config's `train` settings and `model.width`, with `changes`."""
    return _build(TrainSettings, {**DEFAULTS["train"], **DEFAULTS["model"]}, changes)


def train_files(features: Path, out: Path) -> TrainFiles:
    """A feature folder as conftest writes it, and the outputs of the train rule in `out`."""
    return TrainFiles(
        train=Store(features / "train.npy", features / "train.tsv"),
        test=Store(features / "test.npy", features / "test.tsv"),
        holdout=features / "validation.tsv",
        model=out / "model.pt",
        metrics=out / "metrics.json",
        history=out / "history.tsv",
    )


# Runs are bit-identical only on the CPU (cuDNN may pick non-deterministic kernels): the tests
# that compare two runs bit for bit train there, also on a machine with a GPU.
CPU = torch.device("cpu")
