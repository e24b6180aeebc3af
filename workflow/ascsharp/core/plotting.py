"""What every figure shares: words for columns and runs, and one way to make and save a figure.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than through pyplot,
so nothing depends on (or changes) a global backend and no figure outlives its function. Each
figure function returns the Figure so that callers and tests can inspect what was drawn, and
writes it to every path it is given, in the format the suffix names (PNG for a quick look, SVG
or PDF as vector graphics). A `note` (e.g. "only 2 runs") is printed under the panels. Axis
labels are words (`label`), not column names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from ascsharp.core.dcase import CITIES, DEVICES
from ascsharp.core.io import atomic_path

# One path, or several (the same figure in several formats).
Outputs = str | Path | Sequence[str | Path]


FORMATS = ("png", "svg", "pdf")


TARGET_LABELS = {
    "test_all": "test accuracy, all devices",
    "seen": "test accuracy, seen devices (A, B, C, S1–S3)",
    "unseen": "test accuracy, unseen devices (S4–S6)",
    "generalisation_gap": "generalisation gap (train − test accuracy)",
}


TARGET_SHORT = {"test_all": "all devices", "seen": "seen devices", "unseen": "unseen devices"}


MEASURE_LABELS = {
    "mean_sharpness": "sharpness (ε-disk), mean over direction seeds",
    "max_sharpness": "sharpness (ε-disk), max over direction seeds",
    "std_sharpness": "sharpness (ε-disk), SD over direction seeds",
    "hessian_lambda_max": "Hessian, largest eigenvalue",
    "hessian_trace": "Hessian trace",
    "adaptive_average": "adaptive sharpness, average case",
    "adaptive_worst": "adaptive sharpness, worst case",
    "plain_average": "sharpness, average case (not adaptive)",
    "plain_worst": "sharpness, worst case (not adaptive)",
    "pacbayes_flatness": "PAC-Bayes flatness 1/σ′²",
    "pacbayes_magnitude_flatness": "PAC-Bayes flatness 1/σ′², magnitude-aware",
    "log_prod_frobenius": "log product of squared Frobenius norms",
    "log_prod_spectral": "log product of squared spectral norms",
    "path_norm": "path norm",
    "distance_from_init": "distance from initialisation",
    "weight_norm": "l2 norm of the weights (baseline)",
    "inverse_margin": "inverse margin 1/γ²",
    "train_loss": "training loss (baseline)",
}


VALUE_NAMES = {
    "adam": "Adam",
    "sgd": "SGD",
    "sam": "SAM",
    "gdtuo": "GDTUO",
    "kfac": "K-FAC",
    "cnn10": "CNN10",
    "cnn14": "CNN14",
}


GROUP_NAMES = {"optimizer": "optimiser", "arch": "architecture"}


SYMBOLS = {"pearson": "r", "spearman": "ρ", "kendall": "τ"}


SHARPNESS_VARIANT = re.compile(
    r"sharpness_(legacy_disk|disk|square)_(grid_min|centre)_(mean|std|max)"
)


SEED_COLUMN = re.compile(r"sharpness_seed(\d+)")


def label(column: str) -> str:
    """A column of summary.tsv in words, for axis labels, legends and row names."""
    if column in TARGET_LABELS:
        return TARGET_LABELS[column]
    if column in MEASURE_LABELS:
        return MEASURE_LABELS[column]
    if column.startswith("acc_"):
        name = column.removeprefix("acc_")
        if name in DEVICES:
            return f"test accuracy, device {name.upper()}"
        if name in CITIES:
            return f"test accuracy, {name.title()}"
    if m := SHARPNESS_VARIANT.fullmatch(column):
        region = m[1].replace("_", "-")
        reference = "grid minimum" if m[2] == "grid_min" else "centre"
        stat = {"mean": "mean", "std": "SD", "max": "max"}[m[3]]
        return f"sharpness ({region}, {reference} reference), {stat} over direction seeds"
    if m := SEED_COLUMN.fullmatch(column):
        return f"sharpness (ε-disk), direction seed {m[1]}"
    return column


def value_name(value: Any) -> str:
    """An optimiser or architecture as the literature writes it (`kfac` -> `K-FAC`)."""
    return VALUE_NAMES.get(str(value), str(value))


def group_name(group: str) -> str:
    """A correlation group (`all`, `optimizer=adam`, `arch=cnn10`) in words."""
    if group == "all":
        return "all runs"
    key, _, value = group.partition("=")
    return value_name(value) if key in GROUP_NAMES else group


def run_label(row: Mapping[str, Any]) -> str:
    """One run's hyperparameters, short: `CNN10 Adam lr 0.001 bs 16 seed 42`."""
    return (
        f"{value_name(row['arch'])} {value_name(row['optimizer'])} lr {float(row['lr']):g}"
        f" bs {int(row['batch_size'])} seed {int(row['seed'])}"
    )


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_paths(out: Outputs) -> list[Path]:
    paths = [Path(out)] if isinstance(out, str | Path) else [Path(p) for p in out]
    for path in paths:
        if path.suffix.lstrip(".").lower() not in FORMATS:
            raise ValueError(f"{path}: a figure is written as {', '.join(FORMATS)}")
    return paths


def save(fig: Figure, out: Outputs, dpi: int = 120) -> None:
    """Write `fig` to every path of `out`, each atomically, in the format its suffix names. SVG
    keeps its text as text (not glyph outlines): a third of the size, and searchable."""
    for path in figure_paths(out):
        with atomic_path(path) as tmp, rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=dpi)


def add_note(fig: Figure, note: str | None) -> None:
    """Print `note` under the panels (a figure-level label, so the layout leaves room for it)."""
    if note:
        fig.supxlabel(note, color="firebrick", fontsize=10).set_gid("note")


def no_data(out: Outputs, title: str, why: str) -> Figure:
    """A figure with nothing to draw: no empty axes, only its title and one line saying why."""
    fig = new_figure(8.0, 0.9)
    fig.suptitle(title)
    fig.text(0.5, 0.3, why, ha="center", va="center", color="firebrick", fontsize=10, gid="note")
    save(fig, out)
    return fig


def short_target(target: str) -> str:
    """A target as a column heading: `all devices`, `A`, `Lyon`, `gap`."""
    name = target.removeprefix("acc_")
    if target in TARGET_SHORT:
        return TARGET_SHORT[target]
    if target == "generalisation_gap":
        return "gap"
    return name.upper() if name in DEVICES else name.title()


def loss_scale(values: np.ndarray, n_levels: int = 30) -> tuple[np.ndarray | None, Normalize]:
    """Contour levels and colour norm for loss values: log-spaced when the finite losses span
    more than a factor 10 (they resolve the flat basin), else linear; no levels when flat."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite loss values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > 10:
        return np.geomspace(lo, hi, n_levels), LogNorm(lo, hi)
    return (None if hi == lo else np.linspace(lo, hi, n_levels)), Normalize(lo, hi)


def finite_or_nan(loss: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(loss), loss, np.nan)
