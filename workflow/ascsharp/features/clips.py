"""Splits of the feature stores, loaded whole into memory (on the GPU when present).

A *store* is one fold's features on disk: the (clips, n_mels, frames) array and its clip index,
as `ascsharp features` writes them (`train.npy`/`.tsv` from fold1_train, `test.npy`/`.tsv` from
fold1_evaluate). A *split* is a set of clips that training, selection or evaluation works on:

    train       fold1_train minus the validation hold-out
    validation  the hold-out: whole recording locations of fold1_train (validation.tsv)
    train_all   all of fold1_train (what the paper's selection mode trains on)
    test        all of fold1_evaluate

The hold-out is an index into the train store, never a copy of features. Every file is named
by the caller (the rules pass their declared inputs); nothing here builds a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ascsharp.core.seeds import derive_seed
from ascsharp.core.surface import SURFACE_SPLITS
from ascsharp.data.meta import SCENES
from ascsharp.features.mel import load_features

SPLITS = ("train", "validation", "train_all", "test")
_SCENE_INDEX = {s: i for i, s in enumerate(SCENES)}


@dataclass(frozen=True)
class Store:
    """One feature store: the array and its clip index (same row order)."""

    npy: Path
    tsv: Path

    def load(self) -> tuple[np.ndarray, pd.DataFrame]:
        return load_features(self.npy, self.tsv)


@dataclass
class Clips:
    """Features (N, n_mels, frames) in their stored dtype, labels (N,), and the clip table."""

    x: torch.Tensor
    y: torch.Tensor
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> Clips:
        return Clips(self.x.to(device), self.y.to(device), self.table)


def holdout_rows(holdout: str | Path, store: Store, table: pd.DataFrame) -> np.ndarray:
    """Boolean mask over the rows of the train store (`table`): True for the hold-out."""
    path = Path(holdout)
    try:
        held = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (rule validation_split makes it)") from None
    if "filename" not in held.columns:
        raise ValueError(f"{path}: column 'filename' missing")
    unknown = set(held["filename"]) - set(table["filename"])
    if unknown:
        raise ValueError(f"{path}: {sorted(unknown)[0]} is not in {store.tsv}")
    return table["filename"].isin(set(held["filename"])).to_numpy()


def load_split(split: str, *, train: Store, test: Store, holdout: str | Path) -> Clips:
    """One split (see the module docstring) into memory, from the train or the test store."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    store = test if split == "test" else train
    features, table = store.load()
    mask = np.ones(len(table), dtype=bool)
    if split in ("train", "validation"):
        held = holdout_rows(holdout, store, table)
        mask = held if split == "validation" else ~held
    return _select(features, table, mask, None, 0, f"{store.npy}: split {split!r}")


def load_clips(store: Store, filenames: list[str] | None, clips: int | None, seed: int) -> Clips:
    """The named clips of one store (e.g. those a model was trained on, as its checkpoint lists
    them; None: all of them), so that a surface and its model can never disagree about the
    data. `clips` keeps a fixed selection of that many of them, drawn with `seed`."""
    features, table = store.load()
    if filenames is None:
        return _select(features, table, np.ones(len(table), dtype=bool), clips, seed,
                       f"{store.npy}: all clips")  # fmt: skip
    mask = table["filename"].isin(set(filenames)).to_numpy()
    if mask.sum() != len(set(filenames)):
        absent = sorted(set(filenames) - set(table["filename"]))
        raise ValueError(f"{store.tsv}: lacks clip {absent[0]} of the model")
    return _select(features, table, mask, clips, seed, f"{store.npy}: the model's clips")


def _select(
    features: np.ndarray,
    table: pd.DataFrame,
    mask: np.ndarray,
    clips: int | None,
    seed: int,
    what: str,
) -> Clips:
    rows = np.flatnonzero(mask)
    if clips is not None and clips < len(rows):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=clips, replace=False))
    if len(rows) == 0:
        raise ValueError(f"{what} is empty")
    x = torch.from_numpy(np.ascontiguousarray(features[rows]))
    y = torch.tensor([_SCENE_INDEX[s] for s in table["scene"].iloc[rows]], dtype=torch.long)
    return Clips(x, y, table.iloc[rows].reset_index(drop=True))


def surface_clips(store: Store, ckpt: dict, split: str, clips: int | None) -> Clips:
    """The clips a model's surfaces are computed on (and by default its measures): `split`
    "train" is exactly the clips the model was trained on (model.pt's list), "test" the test
    fold; `clips` keeps a fixed selection of that many of them, drawn from the run's "subset"
    stream, so that all surfaces of a run agree. (The stream's name is part of the numbers.)"""
    from ascsharp.features.clips import load_clips

    if split not in SURFACE_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SURFACE_SPLITS}")
    seed = derive_seed(ckpt["run"], "subset")
    return load_clips(store, ckpt["train_clips"] if split == "train" else None, clips, seed)
