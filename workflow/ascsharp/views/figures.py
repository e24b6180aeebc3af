"""Views figures: loss along the interpolation between two models; the training path on its
PCA plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ascsharp.core.plotting import (
    finite_or_nan,
    loss_scale,
    new_figure,
    run_label,
    save,
)
from ascsharp.core.runs import parse_run_id
from ascsharp.core.surface import read_surface


def plot_interpolation(doc: dict[str, Any], out) -> Any:
    """Loss (left axis) and accuracy (right axis) along α, as Li et al.'s 1-D plots; the two
    models at α = 0 and α = 1 marked."""

    alphas = np.asarray(doc["alpha"])
    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    ax.plot(alphas, doc["loss"], "o-", ms=3, color="tab:blue", label="loss")
    ax.set(xlabel="α   (θ = (1 − α)·θ₁ + α·θ₂)", ylabel="loss (cross-entropy)")
    right = ax.twinx()
    acc = 100 * np.asarray(doc["accuracy"])
    right.plot(alphas, acc, "s--", ms=3, color="tab:red", label="accuracy")
    right.set_ylabel("accuracy (%)", color="tab:red")
    for end, name in ((0.0, "θ₁"), (1.0, "θ₂")):
        ax.axvline(end, color="grey", lw=0.8, ls=":")
        ax.text(end, 0.02, f" {name}", transform=ax.get_xaxis_transform(), ha="left")
    barrier = doc.get("barrier")
    first, second = (run_label(parse_run_id(doc[k])) for k in ("run_a", "run_b"))
    ax.set_title(f"θ₁: {first}\nθ₂: {second}\nBN statistics {doc['bn_statistics']}d"
                 + (f", barrier {barrier:.3g}" if barrier is not None else ""),
                 fontsize=9)  # fmt: skip
    lines = ax.get_lines()[:1] + right.get_lines()[:1]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper center")
    save(fig, out)
    return fig


def plot_trajectory(h5_path: str | Path, out, title: str) -> Any:
    """Loss contour on the PCA plane with the projected path: epochs as dots, the start, the
    selected epoch and the final epoch (the origin) marked."""

    x, y, loss = read_surface(h5_path)
    with h5py.File(h5_path, "r") as f:
        px, py, epochs = f["proj_xcoord"][...], f["proj_ycoord"][...], f["epochs"][...]
        ratio = f["explained_variance_ratio"][...]
        selected = int(f.attrs["selected_epoch"])
    z = finite_or_nan(loss)
    fig = new_figure(6.0, 5.0)
    ax = fig.subplots()
    levels, norm = loss_scale(z)
    if levels is not None:
        cs = ax.contour(x, y, z, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
    ax.plot(px, py, "-", color="firebrick", lw=1.2, zorder=3)
    ax.plot(px, py, "o", color="firebrick", ms=3, zorder=4)
    ax.plot(px[0], py[0], "s", color="black", ms=6, zorder=5, label=f"epoch {epochs[0]} (start)")
    if selected in epochs:
        i = int(np.flatnonzero(epochs == selected)[0])
        ax.plot(px[i], py[i], "*", color="gold", mec="black", ms=13, zorder=6,
                label=f"epoch {selected} (selected, model.pt)")  # fmt: skip
    ax.plot(px[-1], py[-1], "X", color="black", ms=7, zorder=7, label=f"epoch {epochs[-1]} (end)")
    ax.set(
        xlabel=f"1st principal component ({100 * ratio[0]:.1f} % of variance)",
        ylabel=f"2nd principal component ({100 * ratio[1]:.1f} % of variance)",
    )
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    save(fig, out, dpi=150)
    return fig
