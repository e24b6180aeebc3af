"""The surface file format: the grid, shards of it, and the gathered surface.h5. No torch.

Grid points are numbered row-major over [iy, ix] (p = iy * xnum + ix), so a shard is just a set
of flat indices and the gathered surface is a (ynum, xnum) array, as loss-landscape's plotting
code reads it. Each shard is a separate .npz that `gather` checks before merging.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ascsharp.core.io import atomic_path
from ascsharp.core.settings import enum

_SHARD_META_KEYS = ("run", "direction_seed", "fingerprint", "n_shards", "shard", "split")
# The splits a surface can be computed on (landscape.split): the model's own training clips (its
# split train or train_all, as model.pt lists them), or test (ascsharp.features.clips names the
# splits).
SURFACE_SPLITS = enum("landscape.split")


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
    directions), n_shards, shard and split; other keys (clips, clips_requested, precision) are
    kept as JSON and carried into surface.h5.
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
            shard = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: shard file not found") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable shard ({e})") from None
    n = shard["indices"].shape
    for key in ("indices", "loss", "acc"):
        if shard[key].dtype.kind not in ("iu" if key == "indices" else "iuf"):
            raise ValueError(f"{path}: {key} is not numeric ({shard[key].dtype}); rerun its job")
        if shard[key].ndim != 1 or shard[key].shape != n:
            raise ValueError(
                f"{path}: {key} has shape {shard[key].shape}, indices {n}; rerun its job"
            )
    return shard


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
    shard_files = [
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
        "shards": json.dumps(shard_files),
        "acc_unit": "percent",
        "index_order": "[iy, ix]",
    }
    clash = sorted(set(own) & set(attrs or {}))
    if clash:
        raise ValueError(f"gather: attribute {clash[0]!r} is set from the shards; pick another")
    write_surface(out_h5, grid, split, loss, acc, {**own, **(attrs or {})})


def write_surface(
    path: str | Path,
    grid: Grid,
    split: str,
    loss: np.ndarray,
    acc: np.ndarray,
    attrs: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a surface.h5 atomically: loss and accuracy (a fraction, stored in percent) by flat
    grid index, as loss-landscape's layout [iy, ix]; `extra` datasets (e.g. a projected
    training path) are stored beside them under their own names."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("xcoordinates", data=grid.xcoordinates)
            f.create_dataset("ycoordinates", data=grid.ycoordinates)
            f.create_dataset(f"{split}_loss", data=np.reshape(loss, (grid.ynum, grid.xnum)))
            f.create_dataset(f"{split}_acc", data=100 * np.reshape(acc, (grid.ynum, grid.xnum)))
            for name, data in (extra or {}).items():
                f.create_dataset(name, data=data)
            for k, v in attrs.items():
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
                key = next((f"{s}_loss" for s in SURFACE_SPLITS if f"{s}_loss" in f), "train_loss")
            arrays = {}
            for name in ("xcoordinates", "ycoordinates", key):
                if name not in f:
                    raise ValueError(f"{path}: missing dataset {name!r}")
                try:
                    arrays[name] = np.asarray(f[name][...], dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{path}: dataset {name!r} is not numeric ({f[name].dtype})"
                    ) from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 surface ({e})") from None
    x, y, loss = arrays["xcoordinates"], arrays["ycoordinates"], arrays[key]
    if x.ndim != 1 or y.ndim != 1 or loss.shape != (len(y), len(x)):
        raise ValueError(
            f"{path}: {key!r} has shape {loss.shape}, expected (len(ycoordinates), "
            f"len(xcoordinates)) = ({len(y)}, {len(x)})"
        )
    if (loss < 0).any():  # NaN/inf are diverged points (sharpness handles them); < 0 is no loss
        raise ValueError(
            f"{path}: {key!r} holds {float(loss[loss < 0].min())} < 0, which no cross-entropy "
            "takes; recompute the surface"
        )
    return x, y, loss


def surface_identity(path: str | Path) -> tuple[str, int]:
    """(run, direction_seed) that `gather` wrote into a surface.h5, naming the file if absent."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            run, seed = f.attrs.get("run"), f.attrs.get("direction_seed")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 surface ({e})") from None
    if run is None or seed is None:
        raise ValueError(f"{path}: attributes 'run' and 'direction_seed' missing (not gathered?)")
    return str(run), int(seed)


def run_surfaces(paths: Sequence[str | Path]) -> tuple[str, dict[int, Path]]:
    """One run's surface files by direction seed (ascending), as gather wrote their identity;
    surfaces of several runs or a direction seed given twice are refused."""
    if not paths:
        raise ValueError("no surfaces given")
    path_by_seed: dict[int, Path] = {}
    runs = set()
    for path in map(Path, paths):
        run, seed = surface_identity(path)
        if seed in path_by_seed:
            raise ValueError(f"{path}: direction seed {seed} also in {path_by_seed[seed]}")
        path_by_seed[seed] = path
        runs.add(run)
    if len(runs) > 1:
        raise ValueError(f"surfaces of several runs given: {sorted(runs)}")
    return runs.pop(), dict(sorted(path_by_seed.items()))
