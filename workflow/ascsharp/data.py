"""Partitions of the feature stores, loaded whole into memory (on the GPU when present).

Partitions: `train` (fold1_train minus the validation hold-out), `validation` (the hold-out),
`train_all` (all of fold1_train, used by the paper's selection mode) and `test` (fold1_evaluate).
The hold-out is an index (results/features/validation.tsv), never a copy of features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .features import load_features
from .meta import SCENES

PARTITIONS = ("train", "validation", "train_all", "test")
_SCENE_INDEX = {s: i for i, s in enumerate(SCENES)}


@dataclass
class Partition:
    """Features (N, n_mels, frames) in their stored dtype, labels (N,), and the clip table."""

    x: torch.Tensor
    y: torch.Tensor
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> Partition:
        return Partition(self.x.to(device), self.y.to(device), self.table)


def holdout_rows(features_dir: Path, table: pd.DataFrame) -> np.ndarray:
    """Boolean mask over the rows of train.tsv (`table`): True for the validation hold-out."""
    path = Path(features_dir) / "validation.tsv"
    try:
        holdout = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (rule validation_split makes it)") from None
    if "filename" not in holdout.columns:
        raise ValueError(f"{path}: column 'filename' missing")
    unknown = set(holdout["filename"]) - set(table["filename"])
    if unknown:
        raise ValueError(f"{path}: {sorted(unknown)[0]} is not in train.tsv")
    return table["filename"].isin(set(holdout["filename"])).to_numpy()


def load_partition(
    features_dir: str | Path, partition: str, subset: int | None = None, seed: int = 0
) -> Partition:
    """Load one partition into memory; `subset` keeps a fixed random subset of that many clips."""
    features_dir = Path(features_dir)
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}: expected one of {PARTITIONS}")
    store = "test" if partition == "test" else "train"
    features, table = load_features(features_dir / f"{store}.npy", features_dir / f"{store}.tsv")
    mask = np.ones(len(table), dtype=bool)
    if partition in ("train", "validation"):
        held = holdout_rows(features_dir, table)
        mask = held if partition == "validation" else ~held
    return _partition(
        features, table, mask, subset, seed, f"{features_dir}: partition {partition!r}"
    )


def load_clips(
    features_dir: str | Path,
    store: str,
    filenames: list[str],
    subset: int | None = None,
    seed: int = 0,
) -> Partition:
    """Exactly the named clips of one store (e.g. the clips a model was trained on, as its
    checkpoint lists them), so that a surface and its model can never disagree about the data."""
    features_dir = Path(features_dir)
    features, table = load_features(features_dir / f"{store}.npy", features_dir / f"{store}.tsv")
    mask = table["filename"].isin(set(filenames)).to_numpy()
    if mask.sum() != len(set(filenames)):
        absent = sorted(set(filenames) - set(table["filename"]))
        raise ValueError(f"{features_dir / f'{store}.tsv'}: lacks clip {absent[0]} of the model")
    return _partition(features, table, mask, subset, seed, f"{features_dir}: {store} clips")


def _partition(
    features: np.ndarray,
    table: pd.DataFrame,
    mask: np.ndarray,
    subset: int | None,
    seed: int,
    what: str,
) -> Partition:
    rows = np.flatnonzero(mask)
    if subset is not None and subset < len(rows):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=subset, replace=False))
    if len(rows) == 0:
        raise ValueError(f"{what} is empty")
    x = torch.from_numpy(np.ascontiguousarray(features[rows]))
    y = torch.tensor([_SCENE_INDEX[s] for s in table["scene"].iloc[rows]], dtype=torch.long)
    return Partition(x, y, table.iloc[rows].reset_index(drop=True))
