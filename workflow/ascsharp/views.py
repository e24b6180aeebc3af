"""Two views of loss-landscape (Li et al., NeurIPS 2018) beside the random-direction surface.

1-D linear interpolation between two trained models, θ(α) = (1 − α)·θ₁ + α·θ₂, as their
`plot_surface.py --model_file2 ... --dir_type states` (α ∈ [−0.5, 1.5] there): does a barrier
separate two seeds of a configuration, or an Adam run from its SGD twin?

The PCA plane of a run's training trajectory, as their `plot_trajectory.py` + `projection.py`:
the rows θ_e − θ_final (every stored epoch e, the initial weights included) go through a PCA
(centred, as scikit-learn's PCA that they use), its first two components are the directions, the
path is projected onto them (θ_e − θ_final)·pc_k (their 'cos' projection; the components are
orthonormal), and the loss is evaluated on a grid of that plane around θ_final. The PCA
directions are used as they are: no filter normalisation (their PCA direction file is read by
plot_surface.py without the normalisation applied to random directions). BatchNorm's running
statistics stay at the final epoch's on the whole plane, as the landscape keeps a model's.

Both evaluate the landscape's own loss (landscape.evaluate_points / the same folding of BN into
the convolutions and summed cross-entropy) on the landscape's clips of the run
(landscape.surface_clips). Training stores what the PCA needs (TrajectoryRecorder) only when
asked to (config views.trajectory.enabled).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from .evaluate import loss_and_accuracy, pick_device, predict
from .io import atomic_path, provenance, read_partial, write_json, write_partial
from .landscape import evaluate_points, fingerprint, forward_precision, surface_clips
from .models import PannsCnn, fold_batchnorm, refold_
from .progress import Progress, get_logger
from .surface import Grid, write_surface

# BatchNorm running statistics along the interpolation. "recompute" (default): each θ(α)'s own
# statistics on the clips. The statistics of two networks, averaged, are not those of the
# averaged network, and that mismatch adds a barrier that is not in the weights; and beyond the
# two models (α < 0 or α > 1) interpolated variances can turn negative (two seeds' channels are
# unrelated). "interpolate": as Li et al.'s `--dir_type states`, so that α = 0 and α = 1 are the
# two models exactly as every other stage evaluates them; variances that extrapolate below zero
# are set to zero (logged).
BN_STATISTICS = ("interpolate", "recompute")
# Parameters the PCA sees. "weights": tensors of more than one dimension, those the landscape's
# random directions perturb (their plot_trajectory.py --ignore biasbn); "all": every parameter
# (their default).
PCA_PARAMETERS = ("weights", "all")
TRAJECTORY_FORMAT = "ascsharp-trajectory-v1"
TRAJECTORY_DTYPE = torch.float16  # half the bytes of float32; relative rounding 2^-11


# ---------------------------------------------------------------------------------------------
# 1-D linear interpolation


def alpha_grid(lo: float, hi: float, num: int) -> np.ndarray:
    """numpy.linspace(lo, hi, num), with values within 1e-12 of 0 and 1 set to exactly 0 and 1:
    there θ(α) must be the two models bit for bit."""
    alphas = np.linspace(lo, hi, int(num))
    for end in (0.0, 1.0):
        alphas[np.isclose(alphas, end, rtol=0, atol=1e-12)] = end
    return alphas


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """Replace every BN layer's running statistics by their mean over batches of `batch_size`
    clips of `x` (torch's cumulative average, momentum None), the rest of the model in eval
    mode (no dropout). The model is left in eval mode."""
    model.eval()
    layers = _batchnorms(model)
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(device, torch.float32))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def _same_shapes(a: dict[str, Tensor], b: dict[str, Tensor], what: str) -> None:
    if list(a) != list(b):
        raise ValueError(f"{what}: the two models have different tensors")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"{what}: {k} has shape {tuple(a[k].shape)} and {tuple(b[k].shape)}")


def interpolate_models(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Tensor,
    y: Tensor,
    alphas: Sequence[float],
    *,
    bn_statistics: str,
    batch_size: int,
    device: str | torch.device,
    precision: str = "float32",
    partial_path: str | Path | None = None,
    log: logging.Logger | None = None,
) -> list[tuple[float, float]]:
    """(mean cross-entropy, accuracy) of θ(α) = (1 − α)·θ_a + α·θ_b at each α, on (x, y).

    Every floating tensor of the state (parameters, and with `bn_statistics` "interpolate" also
    the running statistics, variances floored at 0) is torch.lerp(a, b, α), which is exactly a
    at α = 0 and b at α = 1; with "recompute" the statistics are recomputed on x at each α
    (recompute_bn_statistics), so the ends are each model with recomputed statistics.
    Evaluation is the landscape's: eval mode, BN folded into the convolutions (CNN10/CNN14), loss
    summed in float64 over all clips / N. Neither input model is changed. With `partial_path`
    finished α are kept there and a rerun with the same inputs skips them.
    """
    if bn_statistics not in BN_STATISTICS:
        raise ValueError(f"bn_statistics {bn_statistics!r}: expected one of {BN_STATISTICS}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x has {len(x)} clips, y has {len(y)}; need equal and > 0")
    log = log or get_logger()
    device = torch.device(device)
    state_a = {k: v.detach().to(device) for k, v in model_a.state_dict().items()}
    state_b = {k: v.detach().to(device) for k, v in model_b.state_dict().items()}
    _same_shapes(state_a, state_b, "interpolation")
    buffers = {name for name, _ in model_a.named_buffers()}
    mixed = {
        k for k, v in state_a.items()
        if v.is_floating_point() and (k not in buffers or bn_statistics == "interpolate")
    }  # fmt: skip
    model = copy.deepcopy(model_a).to(device).eval()
    folded = fold_batchnorm(model) if isinstance(model, PannsCnn) else None
    x, y = x.to(device), y.to(device)

    partial = Path(partial_path) if partial_path is not None else None
    h = hashlib.sha256()
    for part in (fingerprint(state_a.values()), fingerprint(state_b.values()), fingerprint([x, y]),
                 json.dumps([float(a) for a in alphas]), bn_statistics, precision,
                 str(batch_size) if bn_statistics == "recompute" else ""):  # fmt: skip
        h.update(part.encode())
    fp = h.hexdigest()
    done: dict[int, tuple[float, float]] = {}
    if partial is not None and partial.exists():
        saved = read_partial(partial, fp, "interpolation", "models/clips/alphas/settings")
        done = {int(k): (float(v[0]), float(v[1])) for k, v in saved.items()}
        log.info("resuming from %s: %d/%d points done", partial, len(done), len(alphas))
    progress = Progress(len(alphas), "points", logger=log, done=len(done))
    with torch.no_grad():
        for i, alpha in enumerate(alphas):
            if i in done:
                continue
            state = {k: torch.lerp(v, state_b[k], float(alpha)) if k in mixed else v
                     for k, v in state_a.items()}  # fmt: skip
            negative = 0
            for k in mixed & buffers:
                if k.endswith("running_var"):
                    negative += int((state[k] < 0).sum())
                    state[k] = state[k].clamp(min=0)
            if negative:
                log.warning("alpha=%+.4f: %d interpolated running variances below 0 set to 0",
                            float(alpha), negative)  # fmt: skip
            model.load_state_dict(state)
            if bn_statistics == "recompute":
                recompute_bn_statistics(model, x, batch_size)
            forward = model
            if folded is not None:
                refold_(folded, model)
                forward = folded
            with torch.inference_mode(), forward_precision(device, precision):
                done[i] = loss_and_accuracy(predict(forward, x, batch_size), y)
            if partial is not None:
                write_partial(partial, fp, {str(k): list(v) for k, v in done.items()})
            progress.update(1, f"(alpha={float(alpha):+.4f}) loss={done[i][0]:.5g}")
    return [done[i] for i in range(len(alphas))]


def loss_barrier(alphas: np.ndarray, loss: np.ndarray) -> float | None:
    """max over 0 ≤ α ≤ 1 of L(α) − [(1 − α)·L(0) + α·L(1)] (Frankle et al. 2020's barrier), on
    the grid's α; None when the grid lacks α = 0 or α = 1."""
    alphas, loss = np.asarray(alphas, dtype=float), np.asarray(loss, dtype=float)
    if not ((alphas == 0).any() and (alphas == 1).any()):
        return None
    l0, l1 = loss[alphas == 0][0], loss[alphas == 1][0]
    inside = (alphas >= 0) & (alphas <= 1)
    a = alphas[inside]
    return float(np.max(loss[inside] - ((1 - a) * l0 + a * l1)))


def interpolation_job(
    *,
    model_a: str | Path,
    model_b: str | Path,
    store,
    split: str,
    clips: int | None,
    batch_size: int,
    alphas: np.ndarray,
    bn_statistics: str,
    precision: str,
    out: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """One pair's interpolation on the landscape's clips of the first model, written to `out`.

    The first model's clips, so that α = 0 is the centre of its surfaces; on the split `train`
    both models must have been trained on the same clips (the second one's loss at α = 1 is then
    on a selection of its own training clips too).
    """
    from .checkpoint import load_model

    device = torch.device(device or pick_device())
    log = get_logger()
    net_a, ckpt_a = load_model(model_a, device)
    net_b, ckpt_b = load_model(model_b, device)
    for key in ("arch", "width", "n_mels", "n_classes"):
        if ckpt_a[key] != ckpt_b[key]:
            raise ValueError(f"{model_a} and {model_b}: {key} {ckpt_a[key]!r} != {ckpt_b[key]!r}")
    if split == "train" and sorted(ckpt_a["train_clips"]) != sorted(ckpt_b["train_clips"]):
        raise ValueError(f"{model_a} and {model_b} were trained on different clips")
    data = surface_clips(store, ckpt_a, split, clips)
    out = Path(out)
    partial = out.with_name(out.name + ".partial.json")
    log.info("%s -> %s: %d alphas on %d %s clips, BN statistics %s, on %s", ckpt_a["run"],
             ckpt_b["run"], len(alphas), len(data), split, bn_statistics, device)  # fmt: skip
    results = interpolate_models(
        net_a, net_b, data.x, data.y, alphas, bn_statistics=bn_statistics,
        batch_size=batch_size, device=device, precision=precision, partial_path=partial, log=log,
    )  # fmt: skip
    loss = [r[0] for r in results]
    doc = {
        "run_a": ckpt_a["run"],
        "run_b": ckpt_b["run"],
        "alpha": [float(a) for a in alphas],
        "loss": loss,
        "accuracy": [r[1] for r in results],
        "barrier": loss_barrier(alphas, np.array(loss)),
        "bn_statistics": bn_statistics,
        "split": split,
        "clips": {
            "n": len(data),
            "requested": "all" if clips is None else clips,
            "of_run": ckpt_a["run"],
        },  # fmt: skip
        "precision": precision,
        "models": [str(model_a), str(model_b)],
        "provenance": provenance(),
    }
    write_json(out, doc)
    partial.unlink(missing_ok=True)
    return doc


# ---------------------------------------------------------------------------------------------
# Trajectory: storage during training


def _split_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(parameters, buffers) of the model's state_dict (GDTUO's weights are no nn.Parameter,
    but state_dict lists them; whatever is not a buffer is a parameter)."""
    buffers = {name for name, _ in model.named_buffers()}
    state = model.state_dict()
    params = {k: v for k, v in state.items() if k not in buffers}
    return params, {k: v for k, v in state.items() if k in buffers}


class TrajectoryRecorder:
    """Stores a run's parameters (float16) and buffers after every epoch, and at initialisation.

    Each epoch goes to its own file in `<path>.partial/` (written atomically, before the resume
    checkpoint of that epoch), so a resumed training finds the epochs it has done; `finish`
    packs them into `path` (HDF5) and removes the folder.
    """

    def __init__(self, path: str | Path, run: str):
        self.path, self.run = Path(path), run
        self.folder = self.path.with_name(self.path.name + ".partial")

    def _file(self, epoch: int) -> Path:
        return self.folder / f"epoch~{epoch:04d}.pt"

    def start(self, model: nn.Module, epochs_done: int) -> None:
        """Before the first epoch of this job: the initial weights on a fresh start (older files
        removed), else a check that the epochs already done are all there."""
        if epochs_done == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.record(0, model)
            return
        missing = [e for e in range(epochs_done + 1) if not self._file(e).is_file()]
        if missing:
            raise ValueError(
                f"{self.folder}: lacks epoch {missing[0]} of the {epochs_done} epochs the resumed "
                "run has done (its trajectory was not recorded); delete the run's checkpoint.pt "
                "to train afresh"
            )

    def record(self, epoch: int, model: nn.Module) -> None:
        params, buffers = _split_state(model)
        obj = {
            "run": self.run,
            "epoch": epoch,
            "parameters": {k: v.detach().to("cpu", TRAJECTORY_DTYPE) for k, v in params.items()},
            "buffers": {k: v.detach().to("cpu").clone() for k, v in buffers.items()},
        }
        with atomic_path(self._file(epoch)) as tmp:
            torch.save(obj, tmp)

    def finish(self, epochs_trained: int) -> None:
        """Pack epochs 0..epochs_trained into one HDF5 file: `parameters` (epochs, P) float16,
        flattened in state_dict order, and `buffers/<name>` (epochs, ...) in their dtype."""
        files = [self._file(e) for e in range(epochs_trained + 1)]
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"{absent[0]}: missing; the trajectory is incomplete")
        first = torch.load(files[0], map_location="cpu", weights_only=True)
        names = list(first["parameters"])
        shapes = [list(first["parameters"][k].shape) for k in names]
        size = sum(int(np.prod(s)) for s in shapes)
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs.update({
                    "format": TRAJECTORY_FORMAT, "run": self.run,
                    "parameter_names": json.dumps(names), "parameter_shapes": json.dumps(shapes),
                    "provenance": json.dumps(provenance()),
                })  # fmt: skip
                f.create_dataset("epochs", data=np.arange(len(files)))
                rows = f.create_dataset("parameters", (len(files), size), dtype="float16",
                                        chunks=(1, min(size, 1 << 20)))  # fmt: skip
                group = f.create_group("buffers")
                for e, path in enumerate(files):
                    obj = first if e == 0 else torch.load(path, map_location="cpu",
                                                          weights_only=True)  # fmt: skip
                    if obj["run"] != self.run or obj["epoch"] != e:
                        raise ValueError(f"{path}: epoch {obj['epoch']} of {obj['run']!r}")
                    rows[e] = torch.cat([obj["parameters"][k].reshape(-1) for k in names]).numpy()
                    for k, v in obj["buffers"].items():
                        if k not in group:
                            group.create_dataset(k, (len(files), *v.shape), dtype=v.numpy().dtype)
                        group[k][e] = v.numpy()
        shutil.rmtree(self.folder)


# ---------------------------------------------------------------------------------------------
# Trajectory: reading, PCA, plane


@dataclass
class Trajectory:
    """A stored trajectory: `parameters[i]` are epoch `epochs[i]`'s, flattened as `names`."""

    run: str
    epochs: np.ndarray
    names: list[str]
    shapes: list[tuple[int, ...]]
    parameters: np.ndarray  # (epochs, P), float16
    buffers: dict[str, np.ndarray]  # name -> (epochs, ...)

    def unflatten(self, flat: np.ndarray) -> dict[str, Tensor]:
        """A flat float vector as float32 tensors by parameter name."""
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(np.prod(shape))
            out[name] = torch.from_numpy(np.asarray(flat[start : start + n], dtype=np.float32)
                                         .reshape(shape))  # fmt: skip
            start += n
        return out

    def state(self, i: int) -> dict[str, Tensor]:
        """Row i's state_dict: parameters as stored (float16, in float32) and buffers."""
        buffers = {k: torch.from_numpy(np.array(v[i])) for k, v in self.buffers.items()}
        return {**self.unflatten(self.parameters[i]), **buffers}

    def weight_mask(self) -> np.ndarray:
        """True for the entries of tensors with more than one dimension."""
        return np.concatenate([np.full(int(np.prod(s)), len(s) > 1) for s in self.shapes])


def read_trajectory(path: str | Path) -> Trajectory:
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != TRAJECTORY_FORMAT:
                raise ValueError(f"{path}: not a trajectory file ({TRAJECTORY_FORMAT!r} expected)")
            return Trajectory(
                run=str(f.attrs["run"]),
                epochs=f["epochs"][...],
                names=json.loads(f.attrs["parameter_names"]),
                shapes=[tuple(s) for s in json.loads(f.attrs["parameter_shapes"])],
                parameters=f["parameters"][...],
                buffers={k: v[...] for k, v in f["buffers"].items()},
            )
    except OSError as e:
        raise ValueError(f"{path}: not a readable trajectory ({e})") from None


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
    from .checkpoint import load_model

    if parameters not in PCA_PARAMETERS:
        raise ValueError(f"parameters {parameters!r}: expected one of {PCA_PARAMETERS}")
    device = torch.device(device or pick_device())
    log = get_logger()
    net, ckpt = load_model(model, device)
    traj = read_trajectory(trajectory)
    if traj.run != ckpt["run"]:
        raise ValueError(f"{trajectory}: run {traj.run!r}, but {model} is {ckpt['run']!r}")
    params, _ = _split_state(net)
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


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib imported here only: training imports this module for the recorder)


def plot_interpolation(doc: dict[str, Any], out) -> Any:
    """Loss (left axis) and accuracy (right axis) along α, as Li et al.'s 1-D plots; the two
    models at α = 0 and α = 1 marked."""
    from .figures import _new_figure, _save, run_label
    from .runs import parse_run_id

    alphas = np.asarray(doc["alpha"])
    fig = _new_figure(6.5, 4.2)
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
    _save(fig, out)
    return fig


def plot_trajectory(h5_path: str | Path, out, title: str) -> Any:
    """Loss contour on the PCA plane with the projected path: epochs as dots, the start, the
    selected epoch and the final epoch (the origin) marked."""
    from .figures import _finite_or_nan, _loss_scale, _new_figure, _save
    from .surface import read_surface

    x, y, loss = read_surface(h5_path)
    with h5py.File(h5_path, "r") as f:
        px, py, epochs = f["proj_xcoord"][...], f["proj_ycoord"][...], f["epochs"][...]
        ratio = f["explained_variance_ratio"][...]
        selected = int(f.attrs["selected_epoch"])
    z = _finite_or_nan(loss)
    fig = _new_figure(6.0, 5.0)
    ax = fig.subplots()
    levels, norm = _loss_scale(z)
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
    _save(fig, out, dpi=150)
    return fig
