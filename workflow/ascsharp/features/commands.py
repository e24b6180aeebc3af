"""`ascsharp features` and `ascsharp holdout`: log-mel stores and the validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ascsharp.core.commands import command


def _mel_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("log-mel settings (config.yaml: features)")
    g.add_argument("--sample-rate", type=int, required=True, help="Hz after resampling")
    g.add_argument("--n-fft", type=int, required=True)
    g.add_argument("--hop-length", type=int, required=True)
    g.add_argument("--n-mels", type=int, required=True)
    g.add_argument("--fmin", type=float, required=True)
    g.add_argument("--fmax", type=float, required=True)


def _mel_config(args):
    from ascsharp.features.mel import MelConfig

    return MelConfig(
        sample_rate=args.sample_rate,
        n_fft=args.n_fft,
        hop_length=args.hop_length,
        n_mels=args.n_mels,
        fmin=args.fmin,
        fmax=args.fmax,
    )


def _features_args(p):
    p.add_argument("--root", type=Path, required=True, help="data set folder")
    p.add_argument("--fold", choices=["train", "evaluate"], required=True)
    p.add_argument("--out-npy", type=Path, required=True, help="the store's features")
    p.add_argument("--out-tsv", type=Path, required=True, help="the store's clip index")
    p.add_argument("--out-json", type=Path, required=True, help="the store's settings")
    p.add_argument(
        "--audio-sample-rate",
        type=int,
        required=True,
        help="expected WAV sample rate (checked for every file)",
    )
    p.add_argument("--clip-seconds", type=float, required=True, help="expected clip length")
    p.add_argument("--dtype", choices=["float32", "float16"], required=True)
    p.add_argument("--threads", type=int, default=1)
    _mel_arguments(p)


@command(
    "features",
    "validate the data set, then extract one fold's log-mels into one array",
    _features_args,
)
def _features(args):
    from dataclasses import asdict

    from ascsharp.core.io import provenance
    from ascsharp.data.meta import validate_dataset
    from ascsharp.features.mel import extract_store

    folds = validate_dataset(
        args.root, audio_sample_rate=args.audio_sample_rate, clip_seconds=args.clip_seconds
    )
    mel = _mel_config(args)
    # Self-describing store: what was extracted from where, with which settings and code.
    settings = {
        "dataset_root": str(args.root),
        "fold": args.fold,
        "clips": len(folds[args.fold]),
        "dtype": args.dtype,
        "clip_seconds": args.clip_seconds,
        "mel": asdict(mel),
        "provenance": provenance(),
    }
    extract_store(
        args.root,
        folds[args.fold],
        args.out_npy,
        args.out_tsv,
        mel,
        dtype=args.dtype,
        threads=args.threads,
        clip_seconds=args.clip_seconds,
        out_json=args.out_json,
        settings=settings,
    )


def _holdout_args(p):
    p.add_argument("index", type=Path, help="train.tsv written by `ascsharp features`")
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="validation.tsv")


@command(
    "holdout", "choose the location-disjoint validation hold-out of fold1_train", _holdout_args
)
def _holdout(args):
    import pandas as pd

    from ascsharp.core.io import write_table
    from ascsharp.features.mel import assign_validation

    table = pd.read_csv(args.index, sep="\t")
    held = assign_validation(table, args.fraction, args.seed)
    write_table(args.out, table.loc[held.to_numpy(), ["filename", "scene", "location", "device"]])


def store_arguments(p, name: str, what: str) -> None:
    """--NAME-npy and --NAME-tsv: one feature store as `ascsharp features` wrote it."""
    p.add_argument(f"--{name}-npy", type=Path, required=True, help=f"{what} features (.npy)")
    p.add_argument(f"--{name}-tsv", type=Path, required=True, help=f"{what} clip index (.tsv)")


def open_store(args, name: str):
    from ascsharp.features.clips import Store

    return Store(getattr(args, f"{name}_npy"), getattr(args, f"{name}_tsv"))
