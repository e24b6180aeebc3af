"""Shared fixtures: a tiny, learnable feature store written in the workflow's own format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ascsharp.data.meta import SCENES, clip_table

N_MELS, FRAMES = 16, 24


def write_feature_store(root: Path, n_train: int = 120, n_test: int = 60, seed: int = 0) -> Path:
    """results/features-like folder: train/test .npy + .tsv and a validation.tsv hold-out.

    Each scene has its own mean spectrum plus noise, so a small CNN learns it in a few epochs.
    """
    rng = np.random.default_rng(seed)
    profiles = rng.normal(0, 1.0, size=(len(SCENES), N_MELS, 1))
    root.mkdir(parents=True, exist_ok=True)
    devices = {"train": ["a", "b", "s1"], "test": ["a", "c", "s4", "s5"]}
    for store, n in (("train", n_train), ("test", n_test)):
        names = []
        labels = []
        for i in range(n):
            scene = SCENES[i % len(SCENES)]
            city = ["lyon", "paris", "vienna"][i % 3]
            device = devices[store][i % len(devices[store])]
            loc = (i // 30) + (10 if store == "test" else 0)
            names.append(f"audio/{scene}-{city}-{loc}-{i}-{device}.wav")
            labels.append(i % len(SCENES))
        x = profiles[labels] + rng.normal(0, 1.0, size=(n, N_MELS, FRAMES))
        np.save(root / f"{store}.npy", x.astype(np.float32))
        table = clip_table(names)
        table.insert(0, "row", np.arange(n))
        table.to_csv(root / f"{store}.tsv", sep="\t", index=False)
        # The settings file `ascsharp features` writes beside the store (train records it).
        mel = {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": N_MELS,
               "fmin": 50.0, "fmax": 8000.0}  # fmt: skip
        (root / f"{store}.json").write_text(json.dumps({"mel": mel, "fold": store}))
    train = pd.read_csv(root / "train.tsv", sep="\t")
    train[train["location"].str.endswith("-0")][["filename", "scene", "location", "device"]].to_csv(
        root / "validation.tsv", sep="\t", index=False
    )
    return root


@pytest.fixture
def feature_store(tmp_path: Path) -> Path:
    return write_feature_store(tmp_path / "features")


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has 2 cores; parallel BLAS in tiny tests only adds noise.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole DAG on the tiny config, run once locally (also the Slurm test's reference)."""
    from workflow_run import TINY, copy_project, snakemake

    work = copy_project(tmp_path_factory.mktemp("tiny"))
    snakemake(work, "--cores", "2", "--configfile", str(TINY))
    return work


@pytest.fixture(scope="session")
def tiny_report(tiny_run) -> Path:
    """The tiny run's single-file Snakemake report, built once (the report test reads its
    listing, the browser tests open it)."""
    from workflow_run import TINY, snakemake

    snakemake(tiny_run, "--configfile", str(TINY), "--report", "results/report.html")
    return tiny_run / "results/report.html"
