"""`ascsharp train` (one grid run) and `ascsharp training-curves` (its figure)."""

from __future__ import annotations

import json
from pathlib import Path

from ascsharp.core.commands import command, figure_option, threads_option
from ascsharp.core.io import read_table
from ascsharp.core.settings import add_options, from_args
from ascsharp.features.commands import open_store, store_arguments

# The settings of a run (config: train, model.width), the fields of train.loop.TrainSettings.
SETTINGS_KEYS = ("epochs", "width", "selection", "eval_batch_size", "amp", "compile")


def _train_args(p):
    p.add_argument("--run", required=True, help="arch~../optimizer~../lr~../batch_size~../seed~..")
    store_arguments(p, "train", "fold1_train's")
    store_arguments(p, "test", "fold1_evaluate's")
    p.add_argument("--holdout", type=Path, required=True, help="validation.tsv")
    p.add_argument("--model", type=Path, required=True, help="model.pt to write")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    p.add_argument("--history", type=Path, required=True, help="history.tsv to write")
    add_options(p, ("train", "model"), SETTINGS_KEYS)
    threads_option(p)
    p.add_argument(
        "--features-settings",
        type=Path,
        required=True,
        help="train.json written by `ascsharp features`: recorded in model.pt with the weights",
    )
    p.add_argument(
        "--trajectory",
        type=Path,
        help="also store every epoch's weights (float16) here, for `ascsharp trajectory-plane`",
    )


@command(
    "train", "train one grid run; resumes from its last epoch checkpoint if killed", _train_args
)
def _train(args):
    from ascsharp.train.loop import TrainFiles, TrainSettings, train

    settings = from_args(TrainSettings, args)
    try:
        features = json.loads(args.features_settings.read_text())["mel"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{args.features_settings}: not a feature store's settings ({e})"
        ) from None
    files = TrainFiles(
        train=open_store(args, "train"),
        test=open_store(args, "test"),
        holdout=args.holdout,
        model=args.model,
        metrics=args.metrics,
        history=args.history,
        trajectory=args.trajectory,
    )
    train(files, args.run, settings, features)


def _training_args(p):
    p.add_argument("--history", type=Path, nargs="+", required=True, help="history.tsv per run")
    p.add_argument(
        "--metrics", type=Path, nargs="+", required=True, help="metrics.json per run, same order"
    )
    figure_option(p, "out", "the figure")


@command(
    "training-curves",
    "loss and accuracy per epoch of some runs (one optimiser's), selected epoch marked",
    _training_args,
)
def _training_curves(args):
    import pandas as pd

    from ascsharp.core.plotting import run_label, value_name
    from ascsharp.train.figures import training_curves

    if len(args.history) != len(args.metrics):
        raise ValueError(
            f"--history has {len(args.history)} files, --metrics {len(args.metrics)}: "
            "one of each per run, in the same order"
        )
    tables, optimizers = [], set()
    for hist, path in zip(args.history, args.metrics, strict=True):
        try:
            metrics = json.loads(path.read_text())
            run, epoch, split = metrics["hyperparameters"], metrics["epoch"], metrics["selected_on"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a metrics.json ({e})") from None
        table = read_table(hist, ["epoch", "train_loss", "select_loss"])
        tables.append(table.assign(run=run_label(run), selected_epoch=epoch, selected_on=split))
        optimizers.add(value_name(run["optimizer"]))
    history = pd.concat(tables, ignore_index=True)
    names = ", ".join(sorted(optimizers))
    title = f"{names}: training curves of {len(tables)} runs (dotted: selected epoch)"
    training_curves(history, args.out, title=title)
