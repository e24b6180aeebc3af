"""`ascsharp features` and `ascsharp holdout`: log-mel stores and the validation split."""

from __future__ import annotations

from pathlib import Path

from ascsharp.core.commands import command
from ascsharp.core.settings import add_options, from_args

# The log-mel settings (config: features), the fields of features.mel.MelConfig.
MEL_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax")


def _features_args(p):
    p.add_argument("--root", type=Path, required=True, help="data set folder")
    p.add_argument("--fold", choices=["train", "evaluate"], required=True)
    p.add_argument("--out-npy", type=Path, required=True, help="the store's features")
    p.add_argument("--out-tsv", type=Path, required=True, help="the store's clip index")
    p.add_argument("--out-json", type=Path, required=True, help="the store's settings")
    add_options(p, "dataset", ("audio_sample_rate", "clip_seconds"))
    add_options(p, "features", ("dtype",))
    p.add_argument("--threads", type=int, default=1)
    add_options(p.add_argument_group("log-mel settings (config: features)"), "features", MEL_KEYS)


@command(
    "features",
    "validate the data set, then extract one fold's log-mels into one array",
    _features_args,
)
def _features(args):
    from dataclasses import asdict

    from ascsharp.core.io import provenance
    from ascsharp.data.meta import validate_dataset
    from ascsharp.features.mel import MelConfig, extract_store

    folds = validate_dataset(
        args.root, audio_sample_rate=args.audio_sample_rate, clip_seconds=args.clip_seconds
    )
    mel = from_args(MelConfig, args)
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
