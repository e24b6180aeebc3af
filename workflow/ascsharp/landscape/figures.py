"""Landscape figures: one surface as contour and 3-D plot, a montage of every run of an
architecture, and 1-D slices through the trained weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from ascsharp.core.plotting import (
    Outputs,
    finite_or_nan,
    loss_scale,
    new_figure,
    save,
    value_name,
)
from ascsharp.core.surface import read_surface


def plot_surface(h5_path: str | Path, out_contour: Outputs, out_3d: Outputs, title: str) -> None:
    """Contour and 3-D plots of one surface, each written to every path it is given."""
    x, y, loss = read_surface(h5_path)
    z = finite_or_nan(loss)
    xx, yy = np.meshgrid(x, y)
    try:
        levels, norm = loss_scale(z)
    except ValueError:
        raise ValueError(f"{h5_path}: no finite loss values to plot") from None

    fig = new_figure(5.5, 4.5)
    ax = fig.subplots()
    if levels is not None:
        cs = ax.contour(xx, yy, z, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "k+", markersize=8)
    ax.set(xlabel=r"$\alpha$ (dx)", ylabel=r"$\beta$ (dy)", title=title, aspect="equal")
    save(fig, out_contour, dpi=150)

    fig = new_figure(6, 5)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", zlabel="loss", title=title)
    save(fig, out_3d, dpi=150)


def landscape_montage(
    surfaces: Sequence[tuple[Mapping[str, Any], np.ndarray, np.ndarray, np.ndarray]],
    out: Outputs,
    *,
    radius: float,
    sharpness: Mapping[str, float],
    title: str,
) -> Figure:
    """Every surface's filled contour on one colour scale: one row per optimiser and learning
    rate, one column per batch size and seed, the ε-disk dashed and the run's sharpness (as the
    sharpness stage computed it for this surface, `sharpness[hp["run"]]`) in each title.
    `surfaces` holds (hyperparameters with "run", x, y, loss[iy, ix])."""
    if not surfaces:
        raise ValueError("landscape montage: no surfaces given")
    levels, norm = loss_scale(np.concatenate([np.ravel(s[3]) for s in surfaces]), 20)
    keys = [(str(hp["optimizer"]), float(hp["lr"])) for hp, *_ in surfaces]
    cols = [(int(hp["batch_size"]), int(hp["seed"])) for hp, *_ in surfaces]
    row_keys, col_keys = sorted(set(keys), key=lambda k: (k[0], -k[1])), sorted(set(cols))
    fig = new_figure(2.6 * len(col_keys) + 1.2, 2.6 * len(row_keys) + 0.8)
    axes = fig.subplots(len(row_keys), len(col_keys), squeeze=False, sharex=True, sharey=True)
    used = np.zeros(axes.shape, dtype=bool)
    cmap = "viridis"
    for (hp, x, y, loss), key, col in zip(surfaces, keys, cols, strict=True):
        i, j = row_keys.index(key), col_keys.index(col)
        ax, used[i, j] = axes[i, j], True
        z = finite_or_nan(loss)
        if levels is not None:
            ax.contourf(x, y, z, levels=levels, norm=norm, cmap=cmap, extend="both")
        ax.add_patch(Circle((0, 0), radius, fill=False, ls="--", lw=1, color="white"))
        ax.plot([0], [0], "w+", ms=6)
        value = sharpness[hp["run"]]
        ax.set_title(
            f"{value_name(hp['optimizer'])} lr {float(hp['lr']):g}, bs {int(hp['batch_size'])},"
            f" seed {int(hp['seed'])}\nsharpness {value:.4g}",
            fontsize=8,
        )
        ax.set_aspect("equal")
        ax.set_gid(str(hp.get("run", "")) or f"{key}|{col}")
    for ax in axes[~used]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("α (dx)")
    for ax in axes[:, 0]:
        ax.set_ylabel("β (dy)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="loss", shrink=0.8)
    fig.suptitle(title)
    save(fig, out)
    return fig


def landscape_slices(
    surfaces: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    out: Outputs,
    *,
    radius: float,
    title: str,
) -> Figure:
    """1-D slices of one run's surfaces through the trained weights (α = β = 0, the minimum that
    training found), along dx (β = 0) and along dy (α = 0), one line per direction seed; the
    ε-disk's extent is shaded. `surfaces` holds (direction seed, x, y, loss[iy, ix])."""
    if not surfaces:
        raise ValueError("landscape slices: no surfaces given")
    fig = new_figure(10.0, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    palette = sns.color_palette("colorblind", len(surfaces))
    for k, (seed, x, y, loss) in enumerate(surfaces):
        z = finite_or_nan(loss)
        iy0, ix0 = int(np.argmin(np.abs(y))), int(np.argmin(np.abs(x)))
        axes[0].plot(x, z[iy0, :], "o-", ms=3, color=palette[k], label=f"direction seed {seed}")
        axes[1].plot(y, z[:, ix0], "o-", ms=3, color=palette[k], label=f"direction seed {seed}")
    for ax, name, other in ((axes[0], "dx", "β"), (axes[1], "dy", "α")):
        ax.axvspan(-radius, radius, color="grey", alpha=0.12, lw=0, label=f"ε = {radius:g}")
        ax.axvline(0.0, color="black", lw=0.6)
        symbol = "α" if name == "dx" else "β"
        ax.set(xlabel=f"{symbol} (step along {name})", title=f"along {name} ({other} = 0)")
        ax.set_gid(name)
    axes[0].set_ylabel("loss")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    save(fig, out)
    return fig
