"""Filter-normalised 2-D loss landscapes (Li et al. 2018), evaluated in independent shards.

The surface is L(w0 + alpha*dx + beta*dy) on a lattice of (alpha, beta). Grid points are numbered
row-major over [iy, ix] (p = iy * xnum + ix), so a shard is just a set of flat indices and the
gathered surface is a (ynum, xnum) array, as loss-landscape's plotting code reads it.

Compared with the original code, the data stay in memory on the evaluation device for all points
(no DataLoader rebuilt per point), weights are restored by copying the saved originals (no
drift from subtracting), and each shard is a separate file that `gather` checks before merging.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.evaluate import loss_and_accuracy, pick_device, predict
from ascsharp.io import atomic_path, write_json
from ascsharp.models import PannsCnn, fold_batchnorm, refold_
from ascsharp.progress import Progress, get_logger
from ascsharp.seeds import derive_seed, generator

PURPOSE = "landscape"
_SHARD_META_KEYS = ("run", "direction_seed", "fingerprint", "n_shards", "shard", "split")
# What a surface can be computed on: the model's own training clips, or the test fold.
SPLITS = ("train", "test")


# ---------------------------------------------------------------------------------------------
# Directions


def random_direction(model: nn.Module, gen: torch.Generator) -> list[Tensor]:
    """One filter-normalised Gaussian direction, one tensor per parameter (buffers excluded).

    A Gaussian is drawn for every parameter, including those then zeroed, so that a
    direction's values do not depend on which tensors are zeroed; the stream comes from our own
    generator (seeded from run and direction seed), so the numbers are not the original code's.
    Tensors with <= 1 dimension (biases, BN affine) are zeroed; each output slice of the others
    is rescaled to the norm of the weight slice so that the landscape is comparable across
    layers and scale-invariant networks.
    """
    out = []
    for p in model.parameters():
        w = p.detach().to("cpu")
        d = torch.randn(w.shape, generator=gen, dtype=w.dtype, device="cpu")
        if d.dim() <= 1:
            d.zero_()
        else:
            d2, w2 = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            d2.mul_((w2.norm(dim=1) / (d2.norm(dim=1) + 1e-10)).unsqueeze(1))
        out.append(d)
    return out


def make_directions(
    model: nn.Module, run_id: str, direction_seed: int
) -> tuple[list[Tensor], list[Tensor]]:
    """The (dx, dy) pair of a run and direction seed, reproducible on its own and on any device.

    The generator lives on the CPU so that CUDA and CPU jobs draw the same directions.
    """
    gen = generator(run_id, direction_seed, PURPOSE)
    dx = random_direction(model, gen)
    dy = random_direction(model, gen)
    return dx, dy


def cosine_similarity(dx: Sequence[Tensor], dy: Sequence[Tensor]) -> float:
    """Cosine of the angle between two directions over all entries (near 0 in high dimension)."""
    dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(dx, dy, strict=True))
    nx = math.sqrt(sum(float(a.double().pow(2).sum()) for a in dx))
    ny = math.sqrt(sum(float(b.double().pow(2).sum()) for b in dy))
    return dot / (nx * ny) if nx > 0 and ny > 0 else float("nan")


def save_directions(
    path: str | Path, dx: Sequence[Tensor], dy: Sequence[Tensor], meta: dict[str, Any]
) -> None:
    """Save plain tensors and a plain meta dict (loadable with weights_only=True), atomically."""
    meta = dict(meta)
    meta["cosine_similarity"] = cosine_similarity(dx, dy)
    meta["fingerprint"] = directions_fingerprint(dx, dy)
    obj = {
        "dx": [t.detach().cpu() for t in dx],
        "dy": [t.detach().cpu() for t in dy],
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_directions(path: str | Path) -> tuple[list[Tensor], list[Tensor], dict[str, Any]]:
    """Load directions saved by save_directions; refuses pickled objects (weights_only=True)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: directions file not found") from None
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for foreign files
        raise ValueError(f"{path}: not a directions file ({type(e).__name__})") from None
    if not isinstance(obj, dict) or not {"dx", "dy", "meta"} <= obj.keys():
        raise ValueError(f"{path}: not a directions file (expected keys dx, dy, meta)")
    return list(obj["dx"]), list(obj["dy"]), dict(obj["meta"])


# ---------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint(tensors: Iterable[Tensor]) -> str:
    """sha256 over dtype, shape and raw bytes of each tensor: equal iff bit-identical."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def directions_fingerprint(dx: Sequence[Tensor], dy: Sequence[Tensor]) -> str:
    return fingerprint([*dx, *dy])


def surface_fingerprint(model: nn.Module, dx: Sequence[Tensor], dy: Sequence[Tensor]) -> str:
    """Identifies what a surface was computed from: the directions and every weight and buffer."""
    h = hashlib.sha256()
    h.update(directions_fingerprint(dx, dy).encode())
    h.update(fingerprint(model.state_dict().values()).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Grid and shards


@dataclass(frozen=True)
class Grid:
    """A lattice of (alpha, beta); flat index p = iy * xnum + ix (row-major over [iy, ix])."""

    xmin: float
    xmax: float
    xnum: int
    ymin: float
    ymax: float
    ynum: int

    def __post_init__(self) -> None:
        for name in ("xnum", "ynum"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"grid {name} must be a positive integer, got {v!r}")
        if not self.xmin <= self.xmax or not self.ymin <= self.ymax:
            raise ValueError(f"grid bounds out of order: {self}")

    @property
    def xcoordinates(self) -> np.ndarray:
        return np.linspace(self.xmin, self.xmax, int(self.xnum))

    @property
    def ycoordinates(self) -> np.ndarray:
        return np.linspace(self.ymin, self.ymax, int(self.ynum))

    @property
    def n_points(self) -> int:
        return int(self.xnum) * int(self.ynum)

    def coords(self, p: int) -> tuple[float, float]:
        """(alpha, beta) of flat index p."""
        iy, ix = divmod(int(p), int(self.xnum))
        return float(self.xcoordinates[ix]), float(self.ycoordinates[iy])

    def to_dict(self) -> dict[str, float | int]:
        d = asdict(self)
        return {k: (int(v) if k.endswith("num") else float(v)) for k, v in d.items()}


def shard_indices(n_points: int, n_shards: int, shard: int) -> np.ndarray:
    """Interleaved flat indices of one shard (shard, shard + n_shards, ...), which balances
    cost when evaluation time varies smoothly over the grid."""
    if n_shards < 1 or n_shards > n_points:
        raise ValueError(f"n_shards={n_shards} must be in [1, n_points={n_points}]")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard={shard} out of range for n_shards={n_shards}")
    return np.arange(shard, n_points, n_shards, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _check_directions(params: list[nn.Parameter], d: Sequence[Tensor], name: str) -> None:
    if len(d) != len(params):
        raise ValueError(f"direction {name} has {len(d)} tensors, model has {len(params)} params")
    for i, (p, t) in enumerate(zip(params, d, strict=True)):
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(f"direction {name}[{i}] shape {tuple(t.shape)} != {tuple(p.shape)}")


def _partial_fingerprint(
    model: nn.Module, dx, dy, x: Tensor, y: Tensor, grid: Grid, indices: np.ndarray
) -> str:
    h = hashlib.sha256()
    h.update(surface_fingerprint(model, dx, dy).encode())
    h.update(fingerprint([x, y]).encode())
    h.update(json.dumps(grid.to_dict(), sort_keys=True).encode())
    h.update(np.asarray(indices, dtype=np.int64).tobytes())
    return h.hexdigest()


def _load_partial(path: Path, fp: str) -> dict[int, tuple[float, float]]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable partial landscape file ({e})") from None
    if not isinstance(obj, dict) or obj.get("fingerprint") != fp:
        raise ValueError(
            f"{path}: partial results belong to other grid/directions/weights/data/indices; "
            "delete it to start again"
        )
    return {int(k): (float(v[0]), float(v[1])) for k, v in obj["done"].items()}


def _save_partial(path: Path, fp: str, done: dict[int, tuple[float, float]]) -> None:
    write_json(path, {"fingerprint": fp, "done": {str(k): list(v) for k, v in done.items()}})


def evaluate_points(
    model: nn.Module,
    dx: Sequence[Tensor],
    dy: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    grid: Grid,
    indices: Iterable[int],
    *,
    batch_size: int,
    device: str | torch.device,
    partial_path: str | Path | None = None,
    log: logging.Logger | None = None,
    save_every: int = 4,
    fold_bn: bool = True,
) -> dict[int, tuple[float, float]]:
    """Loss and accuracy at the given flat grid indices: {p: (mean cross-entropy, accuracy)}.

    The loss is the sum of per-clip losses over all N clips divided by N (not a mean of batch
    means, which would weight a short last batch wrongly). Accuracy is a fraction in [0, 1].
    The model is moved to `device` and put in eval mode (BN uses its running statistics, which
    are never perturbed); its parameters are restored bit-exactly afterwards, also on error.
    With `partial_path`, finished points are saved there every `save_every` points and a rerun
    skips them; the file is tied to the model, directions, data, grid and indices.
    With `fold_bn` (CNN10/CNN14 only), each point is evaluated on a copy of the perturbed model
    whose BatchNorms are folded into their convolutions, in channels-last layout: the same loss
    up to float rounding, at a fraction of the time (see tests/benchmarks/bench_landscape.py).
    """
    log = log or get_logger()
    indices = np.asarray(list(indices), dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= grid.n_points):
        raise ValueError(f"grid indices out of range [0, {grid.n_points})")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("grid indices contain duplicates")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x has {len(x)} clips, y has {len(y)}; need equal and > 0")

    device = torch.device(device)
    params = list(model.parameters())
    _check_directions(params, dx, "dx")
    _check_directions(params, dy, "dy")

    done: dict[int, tuple[float, float]] = {}
    partial = Path(partial_path) if partial_path is not None else None
    fp = ""
    if partial is not None:
        fp = _partial_fingerprint(model, dx, dy, x, y, grid, indices)
        if partial.exists():
            wanted = set(indices.tolist())
            done = {p: v for p, v in _load_partial(partial, fp).items() if p in wanted}
            log.info("resuming from %s: %d/%d points done", partial, len(done), len(indices))

    was_training = model.training
    model.to(device).eval()
    x, y = x.to(device), y.to(device)
    dxs = [d.to(device=device, dtype=p.dtype) for d, p in zip(dx, params, strict=True)]
    dys = [d.to(device=device, dtype=p.dtype) for d, p in zip(dy, params, strict=True)]
    w0 = [p.detach().clone() for p in params]
    folded = None
    if fold_bn and isinstance(model, PannsCnn):
        folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    todo = [int(p) for p in indices if int(p) not in done]
    progress = Progress(len(indices), "points", logger=log, done=len(done))
    unsaved = 0
    try:
        with torch.no_grad():
            for p in todo:
                alpha, beta = grid.coords(p)
                for w, w_init, a, b in zip(params, w0, dxs, dys, strict=True):
                    w.copy_(w_init)
                    w.add_(a, alpha=alpha)
                    w.add_(b, alpha=beta)
                if folded is not None:
                    refold_(folded, model)
                with torch.inference_mode():
                    logits = predict(model if folded is None else folded, x, batch_size)
                    loss, acc = loss_and_accuracy(logits, y)
                for w, w_init in zip(params, w0, strict=True):
                    w.copy_(w_init)
                done[p] = (loss, acc)
                unsaved += 1
                if partial is not None and unsaved >= save_every:
                    _save_partial(partial, fp, done)
                    unsaved = 0
                progress.update(1, f"(alpha={alpha:+.4f}, beta={beta:+.4f}) loss={done[p][0]:.5g}")
    finally:
        with torch.no_grad():
            for w, w_init in zip(params, w0, strict=True):
                w.copy_(w_init)
        model.train(was_training)
        if partial is not None and unsaved:
            _save_partial(partial, fp, done)
    return {int(p): done[int(p)] for p in indices}


# ---------------------------------------------------------------------------------------------
# Shards and the gathered surface


def write_shard(
    path: str | Path,
    grid: Grid,
    indices: Iterable[int],
    results: dict[int, tuple[float, float]],
    meta: dict[str, Any],
) -> None:
    """Write one shard's results as .npz, atomically.

    `meta` must hold run, direction_seed, fingerprint (surface_fingerprint of model and
    directions), n_shards, shard and split; other keys (clips, subset) are kept as JSON and
    carried into surface.h5.
    """
    missing = [k for k in _SHARD_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"shard meta lacks key {missing[0]!r}")
    indices = np.asarray(list(indices), dtype=np.int64)
    absent = [int(p) for p in indices if int(p) not in results]
    if absent:
        raise ValueError(f"results lack grid point {absent[0]} of this shard")
    extra = {k: v for k, v in meta.items() if k not in _SHARD_META_KEYS}
    arrays = {
        "indices": indices,
        "loss": np.array([results[int(p)][0] for p in indices], dtype=np.float64),
        "acc": np.array([results[int(p)][1] for p in indices], dtype=np.float64),
        "grid": np.array(json.dumps(grid.to_dict(), sort_keys=True)),
        "run": np.array(str(meta["run"])),
        "direction_seed": np.array(int(meta["direction_seed"])),
        "fingerprint": np.array(str(meta["fingerprint"])),
        "n_shards": np.array(int(meta["n_shards"])),
        "shard": np.array(int(meta["shard"])),
        "split": np.array(str(meta["split"])),
        "meta_json": np.array(json.dumps(extra, sort_keys=True, default=str)),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read_shard(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            need = {"indices", "loss", "acc", "grid", "run", "direction_seed", "fingerprint",
                    "split", "meta_json"}  # fmt: skip
            if not need <= keys:
                raise ValueError(f"{path}: not a landscape shard (missing {sorted(need - keys)})")
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: shard file not found") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable shard ({e})") from None


def gather(
    shard_paths: Sequence[str | Path], out_h5: str | Path, attrs: dict[str, Any] | None = None
) -> None:
    """Merge shards into surface.h5 in loss-landscape's layout, after checking they fit.

    Refuses shard sets with a missing or duplicated grid point, or that mix grids, runs,
    direction seeds or fingerprints: a surface stitched from different models is silently wrong.
    Datasets: xcoordinates, ycoordinates, and `<split>_loss`, `<split>_acc` as [iy, ix], named
    after the split the surface was computed on (`train_loss` for the model's training clips)
    with accuracy in percent, as loss-landscape's plotting scripts read them.
    """
    if not shard_paths:
        raise ValueError("gather: no shard files given")
    paths = [Path(p) for p in shard_paths]
    shards = [_read_shard(p) for p in paths]
    first, ref = paths[0], shards[0]
    for p, s in zip(paths[1:], shards[1:], strict=True):
        for key in ("grid", "run", "direction_seed", "fingerprint", "split", "meta_json"):
            if s[key].item() != ref[key].item():
                raise ValueError(
                    f"{p}: {key} {s[key].item()!r} differs from {first}'s {ref[key].item()!r}"
                )
    grid = Grid(**json.loads(ref["grid"].item()))
    owner = np.full(grid.n_points, -1, dtype=np.int64)
    loss = np.full(grid.n_points, np.nan)
    acc = np.full(grid.n_points, np.nan)
    for k, (p, s) in enumerate(zip(paths, shards, strict=True)):
        idx = s["indices"].astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= grid.n_points):
            raise ValueError(f"{p}: grid index out of range [0, {grid.n_points})")
        for q in idx:
            if owner[q] >= 0:
                raise ValueError(f"grid point {q} is in both {paths[owner[q]]} and {p}")
            owner[q] = k
        loss[idx], acc[idx] = s["loss"], s["acc"]
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        names = ", ".join(str(p) for p in paths)
        raise ValueError(
            f"incomplete shard set: {missing.size} of {grid.n_points} grid points missing "
            f"(first {missing[:5].tolist()}) from {names}"
        )
    partition = [
        {"file": p.name, "shard": int(s.get("shard", -1)), "n_shards": int(s.get("n_shards", -1))}
        for p, s in zip(paths, shards, strict=True)
    ]
    split = str(ref["split"].item())
    own = {
        **json.loads(ref["meta_json"].item()),
        "run": str(ref["run"].item()),
        "direction_seed": int(ref["direction_seed"].item()),
        "split": split,
        "fingerprint": str(ref["fingerprint"].item()),
        "grid": json.dumps(grid.to_dict(), sort_keys=True),
        "shards": json.dumps(partition),
        "acc_unit": "percent",
        "index_order": "[iy, ix]",
    }
    clash = sorted(set(own) & set(attrs or {}))
    if clash:
        raise ValueError(f"gather: attribute {clash[0]!r} is set from the shards; pick another")
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("xcoordinates", data=grid.xcoordinates)
            f.create_dataset("ycoordinates", data=grid.ycoordinates)
            f.create_dataset(f"{split}_loss", data=loss.reshape(grid.ynum, grid.xnum))
            f.create_dataset(f"{split}_acc", data=100 * acc.reshape(grid.ynum, grid.xnum))
            for k, v in {**own, **(attrs or {})}.items():
                f.attrs[k] = _h5_attr(v)


def _h5_attr(v: Any) -> Any:
    if isinstance(v, str | bool | int | float | np.integer | np.floating):
        return v
    return json.dumps(v, default=str)


def read_surface(
    path: str | Path, key: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, loss[iy, ix]) from a surface.h5, with one-line errors naming the file and key.

    `key` defaults to the file's loss dataset: `train_loss`, else `test_loss`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: surface file not found")
    try:
        with h5py.File(path, "r") as f:
            if key is None:
                key = next((f"{s}_loss" for s in SPLITS if f"{s}_loss" in f), "train_loss")
            arrays = {}
            for name in ("xcoordinates", "ycoordinates", key):
                if name not in f:
                    raise ValueError(f"{path}: missing dataset {name!r}")
                arrays[name] = np.asarray(f[name][...], dtype=np.float64)
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 surface ({e})") from None
    x, y, loss = arrays["xcoordinates"], arrays["ycoordinates"], arrays[key]
    if x.ndim != 1 or y.ndim != 1 or loss.shape != (len(y), len(x)):
        raise ValueError(
            f"{path}: {key!r} has shape {loss.shape}, expected (len(ycoordinates), "
            f"len(xcoordinates)) = ({len(y)}, {len(x)})"
        )
    return x, y, loss


# ---------------------------------------------------------------------------------------------
# Plots


def plot_surface(
    h5_path: str | Path, out_png_contour: str | Path, out_png_3d: str | Path, title: str
) -> None:
    """Contour and 3-D plots of a surface, written atomically (Agg, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    x, y, loss = read_surface(h5_path)
    z = np.where(np.isfinite(loss), loss, np.nan)
    xx, yy = np.meshgrid(x, y)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise ValueError(f"{h5_path}: no finite loss values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    # Log-spaced levels resolve the flat basin when the loss spans orders of magnitude.
    use_log = lo > 0 and hi / lo > 10
    if hi == lo:
        levels = None
    elif use_log:
        levels = np.geomspace(lo, hi, 30)
    else:
        levels = np.linspace(lo, hi, 30)

    fig = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if levels is not None:
        norm = LogNorm() if use_log else None
        cs = ax.contour(xx, yy, z, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "k+", markersize=8)
    ax.set(xlabel=r"$\alpha$ (dx)", ylabel=r"$\beta$ (dy)", title=title, aspect="equal")
    fig.tight_layout()
    with atomic_path(out_png_contour) as tmp:
        fig.savefig(tmp, format="png", dpi=150)

    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", zlabel="loss", title=title)
    with atomic_path(out_png_3d) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


def _seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc; NaN elsewhere): the job's start-up
    cost, which decides how finely a surface may be sharded."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def evaluate_shard(
    *,
    model_path: str | Path,
    directions_path: str | Path,
    features_dir: str | Path,
    split: str,
    subset: int | None,
    batch_size: int,
    grid: Grid,
    n_shards: int,
    shard: int,
    out: str | Path,
    device: str | torch.device | None = None,
) -> None:
    """One landscape job: load model, directions and clips, evaluate this shard, write it.

    `split` "train" means exactly the clips the model was trained on, as listed in model.pt (all
    of fold1_train with the paper's selection, fold1_train minus the hold-out otherwise): the
    surface can never be computed on data the model did not fit. "test" is the test fold.
    Finished points go to `<out>.partial.json` as they are done, so a killed job rerun with the
    same inputs picks up where it stopped; the file is removed once the shard is written.
    """
    from .checkpoint import load_model
    from .data import load_clips, load_partition

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    device = device or pick_device()
    model, ckpt = load_model(model_path, device)
    dx, dy, meta = load_directions(directions_path)
    if meta.get("run") != ckpt["run"]:
        raise ValueError(f"{directions_path}: directions of run {meta.get('run')!r}, "
                         f"model {model_path} is run {ckpt['run']!r}")  # fmt: skip
    # The subset is fixed per run (not per direction seed), so all surfaces of a run agree.
    seed = derive_seed(ckpt["run"], "subset")
    if split == "train":
        data = load_clips(features_dir, "train", ckpt["train_clips"], subset, seed)
    else:
        data = load_partition(features_dir, "test", subset, seed)
    indices = shard_indices(grid.n_points, n_shards, shard)
    out = Path(out)
    partial = out.with_name(out.name + ".partial.json")
    log = get_logger()
    log.info("%s direction seed %s: shard %d/%d, %d of %d points, %d %s clips on %s; "
             "start-up %.1f s (process start to data in memory)",
             ckpt["run"], meta["direction_seed"], shard + 1, n_shards, len(indices),
             grid.n_points, len(data), split, device, _seconds_since_process_start())  # fmt: skip
    results = evaluate_points(
        model, dx, dy, data.x.to(device), data.y.to(device), grid, indices,
        batch_size=batch_size, device=device, partial_path=partial, log=log,
    )  # fmt: skip
    write_shard(out, grid, indices, results, {
        "run": ckpt["run"],
        "direction_seed": meta["direction_seed"],
        "fingerprint": surface_fingerprint(model, dx, dy),
        "n_shards": n_shards,
        "shard": shard,
        "split": split,
        "subset": subset,
        "clips": len(data),
    })  # fmt: skip
    partial.unlink(missing_ok=True)
