"""The PCA plane of a run's training trajectory (Li et al., NeurIPS 2018, as their
`plot_trajectory.py` + `projection.py`): see ascsharp.views.interpolation for the shared notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ascsharp.core.io import provenance
from ascsharp.core.progress import get_logger
from ascsharp.core.settings import enum
from ascsharp.core.surface import Grid, write_surface
from ascsharp.features.clips import surface_clips
from ascsharp.landscape.compute import evaluate_points
from ascsharp.train.evaluate import pick_device
from ascsharp.train.trajectory import read_trajectory, split_state

# Parameters the PCA sees. "weights": tensors of more than one dimension, those the landscape's
# random directions perturb (their plot_trajectory.py --ignore biasbn); "all": every parameter
# (their default).
PCA_PARAMETERS = enum("views.trajectory.parameters")


def trajectory_pca(
    rows: np.ndarray, centre: np.ndarray, mask: np.ndarray | None = None, block: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the differences d_e = rows[e] − centre (entries outside `mask` set to 0), centred
    over e as scikit-learn's PCA: (components (2, P) orthonormal, explained-variance ratio (2,),
    path (E, 2) = d_e · component_k). Computed from the E×E Gram matrix, a block of columns at
    a time in float64, so memory stays at E × block beyond the rows; each component's sign makes
    the largest entry of its left singular vector positive, as scikit-learn's svd_flip."""
    n, size = rows.shape
    if n < 3:
        raise ValueError(f"a trajectory of {n} stored epochs has no plane: need >= 3")

    def blocks():
        for a in range(0, size, block):
            d = rows[:, a : a + block].astype(np.float64) - centre[a : a + block]
            if mask is not None:
                d[:, ~mask[a : a + block]] = 0.0
            yield a, d, d - d.mean(axis=0)

    gram = np.zeros((n, n))
    for _, _, dc in blocks():
        gram += dc @ dc.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    if not values[1] > 1e-12 * max(values[0], 1e-300):
        raise ValueError("the trajectory spans fewer than two dimensions: no plane")
    u = vectors[:, :2] * np.sign(vectors[np.argmax(np.abs(vectors[:, :2]), axis=0), [0, 1]])
    components = np.zeros((2, size))
    path = np.zeros((n, 2))
    for a, d, dc in blocks():
        components[:, a : a + d.shape[1]] = (u.T @ dc) / np.sqrt(values[:2])[:, None]
        path += d @ components[:, a : a + d.shape[1]].T
    ratio = values[:2] / values.clip(min=0).sum()
    return components, ratio, path


def plane_grid(path: np.ndarray, num: int, margin: float) -> Grid:
    """A num × num grid over the path's extent along each component, widened by `margin` times
    that extent on each side (the final epoch, the origin, is on the path, so inside)."""
    lo, hi = path.min(axis=0), path.max(axis=0)
    pad = margin * (hi - lo)
    return Grid(float(lo[0] - pad[0]), float(hi[0] + pad[0]), int(num),
                float(lo[1] - pad[1]), float(hi[1] + pad[1]), int(num))  # fmt: skip


def trajectory_plane_job(
    *,
    model: str | Path,
    trajectory: str | Path,
    store,
    split: str,
    clips: int | None,
    batch_size: int,
    parameters: str,
    num: int,
    margin: float,
    precision: str,
    out: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The PCA plane of one run's trajectory with the loss on it, written to `out` (surface.h5
    layout, plus the projected path `proj_xcoord`, `proj_ycoord` as loss-landscape names it).

    The plane's origin is the last stored epoch with finite weights (the final epoch unless the
    run diverged), at its stored float16 weights and its BN statistics; model.pt (the selected
    epoch) supplies the architecture and the clips, and its epoch is marked on the figure.
    """
    from ascsharp.train.checkpoint import load_model

    if parameters not in PCA_PARAMETERS:
        raise ValueError(f"parameters {parameters!r}: expected one of {PCA_PARAMETERS}")
    device = torch.device(device or pick_device())
    log = get_logger()
    net, ckpt = load_model(model, device)
    traj = read_trajectory(trajectory)
    if traj.run != ckpt["run"]:
        raise ValueError(f"{trajectory}: run {traj.run!r}, but {model} is {ckpt['run']!r}")
    params, _ = split_state(net)
    if list(params) != traj.names:
        raise ValueError(f"{trajectory}: its parameters are not those of {model}")
    finite = np.array([np.isfinite(row).all() for row in traj.parameters])
    kept = np.flatnonzero(finite)
    if len(kept) < len(finite):
        log.warning("%s: epochs %s have non-finite weights; the plane uses the %d others",
                    traj.run, traj.epochs[~finite].tolist(), len(kept))  # fmt: skip
    centre = kept[-1]
    mask = traj.weight_mask() if parameters == "weights" else None
    components, ratio, path = trajectory_pca(
        traj.parameters[kept], traj.parameters[centre].astype(np.float64), mask
    )
    log.info("%s: PCA of %d epochs, explained variance %.3f + %.3f", traj.run, len(kept),
             ratio[0], ratio[1])  # fmt: skip
    net.load_state_dict(traj.state(centre))
    names = [name for name, _ in net.named_parameters()]
    dx, dy = (traj.unflatten(c) for c in components)
    data = surface_clips(store, ckpt, split, clips)
    grid = plane_grid(path, num, margin)
    out = Path(out)
    results = evaluate_points(
        net, [dx[k] for k in names], [dy[k] for k in names], data.x.to(device), data.y.to(device),
        grid, range(grid.n_points), batch_size=batch_size, device=device,
        partial_path=out.with_name(out.name + ".partial.json"), log=log, precision=precision,
    )  # fmt: skip
    loss = np.array([results[p][0] for p in range(grid.n_points)])
    acc = np.array([results[p][1] for p in range(grid.n_points)])
    attrs = {
        "run": traj.run,
        "view": "trajectory PCA plane (Li et al. 2018)",
        "centre_epoch": int(traj.epochs[centre]),
        "selected_epoch": int(ckpt["epoch"]),
        "parameters": parameters,
        "explained_variance_ratio": json.dumps(ratio.tolist()),
        "grid": json.dumps(grid.to_dict(), sort_keys=True),
        "margin": margin,
        "split": split,
        "clips": len(data),
        "clips_requested": "all" if clips is None else clips,
        "precision": precision,
        "acc_unit": "percent",
        "index_order": "[iy, ix]",
        "provenance": provenance(),
    }
    extra = {"proj_xcoord": path[:, 0], "proj_ycoord": path[:, 1], "epochs": traj.epochs[kept],
             "explained_variance_ratio": ratio}  # fmt: skip
    write_surface(out, grid, split, loss, acc, attrs, extra)
    out.with_name(out.name + ".partial.json").unlink(missing_ok=True)
    return {"grid": grid, "loss": loss, "path": path, "ratio": ratio, "attrs": attrs}
