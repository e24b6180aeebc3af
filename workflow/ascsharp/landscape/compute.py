"""Filter-normalised 2-D loss landscapes (Li et al. 2018), evaluated in independent shards.

The surface is L(w0 + alpha*dx + beta*dy) on a lattice of (alpha, beta); the grid, the shard
files and surface.h5 are defined in `ascsharp.core.surface`, which needs no torch.

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
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.core.io import read_partial, write_partial
from ascsharp.core.progress import Progress, get_logger
from ascsharp.core.surface import SURFACE_SPLITS, Grid, shard_indices, write_shard
from ascsharp.core.tensors import tensor_digest
from ascsharp.features.clips import surface_clips
from ascsharp.landscape.directions import directions_fingerprint, load_directions
from ascsharp.train.evaluate import (
    PRECISIONS,
    forward_precision,
    loss_and_accuracy,
    pick_device,
    predict,
)
from ascsharp.train.models import PannsCnn, fold_batchnorm, refold_

if TYPE_CHECKING:  # data imports torchaudio, which `ascsharp directions` does not need
    from ascsharp.features.clips import Store

# The stated error of a grid point's loss at a fast precision, relative to max(|loss|, 1):
# |L_fast - L_IEEE| <= REFINE_RTOL[precision] * max(|L_fast|, 1): about twice the largest errors
# that bench_precision.py measured on the demo models (2.5e-3, 4.3e-3 and 3.4e-2 at losses near
# 2 for tf32, float16 and bfloat16). refine_surface widens it wherever a re-evaluated point
# shows that it was too tight.
REFINE_RTOL = {"tf32": 3e-3, "float16": 5e-3, "bfloat16": 3e-2}


# ---------------------------------------------------------------------------------------------
# Directions


# ---------------------------------------------------------------------------------------------
# Fingerprints


def surface_fingerprint(model: nn.Module, dx: Sequence[Tensor], dy: Sequence[Tensor]) -> str:
    """Identifies what a surface was computed from: the directions and every weight and buffer."""
    h = hashlib.sha256()
    h.update(directions_fingerprint(dx, dy).encode())
    h.update(tensor_digest(model.state_dict().values()).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Evaluation


def _check_directions(params: list[nn.Parameter], d: Sequence[Tensor], name: str) -> None:
    if len(d) != len(params):
        raise ValueError(f"direction {name} has {len(d)} tensors, model has {len(params)} params")
    for i, (p, t) in enumerate(zip(params, d, strict=True)):
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(f"direction {name}[{i}] shape {tuple(t.shape)} != {tuple(p.shape)}")


def _partial_fingerprint(
    model: nn.Module, dx, dy, x: Tensor, y: Tensor, grid: Grid, indices: np.ndarray, precision: str
) -> str:
    h = hashlib.sha256()
    h.update(surface_fingerprint(model, dx, dy).encode())
    h.update(tensor_digest([x, y]).encode())
    h.update(json.dumps(grid.to_dict(), sort_keys=True).encode())
    h.update(np.asarray(indices, dtype=np.int64).tobytes())
    h.update(precision.encode())
    return h.hexdigest()


def _load_partial(path: Path, fp: str) -> dict[int, tuple[float, float]]:
    done = read_partial(path, fp, "landscape", "grid/directions/weights/data/indices/precision")
    return {int(k): (float(v[0]), float(v[1])) for k, v in done.items()}


def _save_partial(path: Path, fp: str, done: dict[int, tuple[float, float]]) -> None:
    write_partial(path, fp, {str(k): list(v) for k, v in done.items()})


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
    precision: str = "float32",
    compile: bool = False,
) -> dict[int, tuple[float, float]]:
    """Loss and accuracy at the given flat grid indices: {p: (mean cross-entropy, accuracy)}.

    The loss is the sum of per-clip losses over all N clips divided by N (not a mean of batch
    means, which would weight a short last batch wrongly). Accuracy is a fraction in [0, 1].
    The model is moved to `device` and put in eval mode (BN uses its running statistics, which
    are never perturbed); its parameters are restored bit-exactly afterwards, also on error.
    With `partial_path`, finished points are saved there every `save_every` points and a rerun
    skips them; the file is tied to the model, directions, data, grid and indices.
    With `fold_bn` (CNN10/CNN14 only), each point is evaluated on a copy of the perturbed model
    whose BatchNorms are folded into their convolutions: the same loss up to float rounding, at
    a fraction of the time (see tests/benchmarks/bench_landscape.py). `compile` runs that
    forward through torch.compile (fused BN/ReLU/layout kernels: 2x on an H200, measured).
    On CUDA, cuDNN times its kernels once per shape (cudnn.benchmark): 5x for float32 there.
    `precision` is a key of PRECISIONS (see there); what each does to a surface is measured by
    tests/benchmarks/bench_precision.py.
    """
    log = log or get_logger()
    indices = np.asarray(list(indices), dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= grid.n_points):
        raise ValueError(f"grid indices out of range [0, {grid.n_points})")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("grid indices contain duplicates")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISIONS)}")
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
        fp = _partial_fingerprint(model, dx, dy, x, y, grid, indices, precision)
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
    folded = fold_batchnorm(model) if fold_bn and isinstance(model, PannsCnn) else None
    forward = model if folded is None else folded
    if compile:
        # NCHW: the layout measured compiled; eager, channels-last pays (oneDNN, cuDNN).
        forward = torch.compile(forward, dynamic=False)
    elif folded is not None:
        forward = folded.to(memory_format=torch.channels_last)
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = autotune or device.type == "cuda"  # fixed shapes: pays
    todo = [int(p) for p in indices if int(p) not in done]
    progress = Progress(len(indices), "points", logger=log, done=len(done))
    unsaved = 0
    started = time.perf_counter()
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
                with torch.inference_mode(), forward_precision(device, precision):
                    logits = predict(forward, x, batch_size)
                    loss, acc = loss_and_accuracy(logits, y)
                for w, w_init in zip(params, w0, strict=True):
                    w.copy_(w_init)
                done[p] = (loss, acc)
                if p == todo[0]:  # start-up that the grid pays once: worth seeing in the log
                    first = time.perf_counter() - started
                    why = "kernel choice" + (", compilation" if compile else "")
                    log.info("first point took %.1f s (%s)", first, why)
                unsaved += 1
                if partial is not None and unsaved >= save_every:
                    _save_partial(partial, fp, done)
                    unsaved = 0
                progress.update(1, f"(alpha={alpha:+.4f}, beta={beta:+.4f}) loss={done[p][0]:.5g}")
    finally:
        torch.backends.cudnn.benchmark = autotune
        with torch.no_grad():
            for w, w_init in zip(params, w0, strict=True):
                w.copy_(w_init)
        model.train(was_training)
        if partial is not None and unsaved:
            _save_partial(partial, fp, done)
    return {int(p): done[int(p)] for p in indices}


def refine_surface(
    fast: dict[int, tuple[float, float]],
    evaluate_ieee: Callable[[list[int], int], dict[int, tuple[float, float]]],
    grid: Grid,
    radius: float,
    rtol: float,
    log: logging.Logger,
) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """The surface `fast` (every grid point, at a fast precision) with the points that decide
    its sharpness re-evaluated in IEEE float32, so that every sharpness variant at `radius` is
    the IEEE one (sharpness.decisive_points says which points and why).

    `evaluate_ieee(points, round)` returns {p: (loss, acc)} in IEEE float32. The fast error
    bound is rtol * max(|loss|, 1); where a re-evaluated point's error exceeds it, the bound is
    widened to twice that error and the selection repeated, until every re-evaluated point is
    within the bound in force. Returns the merged results and what to record: refined_points
    (flat indices), refined_precision, refined_fast_loss, refine_rtol (the bound used) and
    refine_max_error (the largest relative error seen).
    """
    from ascsharp.landscape.sharpness import decisive_points

    if sorted(fast) != list(range(grid.n_points)):
        raise ValueError("refining needs the whole grid in one job (landscape.shards: 1)")
    x, y = grid.xcoordinates, grid.ycoordinates
    loss = np.array([fast[p][0] for p in range(grid.n_points)]).reshape(grid.ynum, grid.xnum)
    scale = np.maximum(np.abs(np.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)), 1.0)
    exact: dict[int, tuple[float, float]] = {}
    worst = 0.0
    for rounds in range(grid.n_points + 1):  # each round adds a point or ends
        todo = np.flatnonzero(decisive_points(x, y, loss, rtol * scale, radius))
        todo = [int(p) for p in todo if int(p) not in exact]
        if not todo:
            break
        exact.update(evaluate_ieee(todo, rounds))
        errors = [abs(exact[p][0] - fast[p][0]) / scale.flat[p] for p in exact
                  if math.isfinite(exact[p][0]) and math.isfinite(fast[p][0])]  # fmt: skip
        worst = max(errors, default=0.0)
        log.info("refine round %d: %d points re-evaluated in IEEE float32, largest relative "
                 "error %.3g (bound %.3g)", rounds + 1, len(todo), worst, rtol)  # fmt: skip
        if worst > rtol:
            log.warning("fast error %.3g above the stated bound %.3g: widened to %.3g",
                        worst, rtol, 2 * worst)  # fmt: skip
            rtol = 2 * worst
    points = sorted(exact)
    info = {
        "refined_points": points,
        "refined_precision": "float32",
        "refined_fast_loss": [fast[p][0] for p in points],
        "refine_rtol": rtol,
        "refine_max_error": worst,
    }
    return {**fast, **exact}, info


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
    store: Store,
    split: str,
    clips: int | None,
    batch_size: int,
    grid: Grid,
    n_shards: int,
    shard: int,
    out: str | Path,
    precision: str,
    compile: bool,
    refine_radius: float | None = None,
    device: str | torch.device | None = None,
) -> None:
    """One landscape job: load model, directions and clips, evaluate this shard, write it.

    `split` "train" means exactly the clips the model was trained on, as listed in model.pt (all
    of fold1_train with the paper's selection, fold1_train minus the hold-out otherwise): the
    surface can never be computed on data the model did not fit. "test" is the test fold.
    `store` is the feature store that holds the split (train.npy/.tsv or test.npy/.tsv);
    `clips` keeps a fixed selection of that many of the split's clips (None: all).
    Finished points go to `<out>.partial.json` as they are done, so a killed job rerun with the
    same inputs picks up where it stopped; the file is removed once the shard is written.
    `compile` applies on CUDA only: on a CPU its compilation (25 s for a small CNN10) was not
    measured to pay back. With `refine_radius` and a fast `precision` (not float32), the points
    that decide the sharpness at that radius are then re-evaluated in IEEE float32
    (refine_surface; the shard must hold the whole grid), and the shard records which.
    """
    from ascsharp.train.checkpoint import load_model

    if split not in SURFACE_SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SURFACE_SPLITS}")
    device = torch.device(device or pick_device())
    model, ckpt = load_model(model_path, device)
    dx, dy, meta = load_directions(directions_path)
    if meta.get("run") != ckpt["run"]:
        raise ValueError(f"{directions_path}: directions of run {meta.get('run')!r}, "
                         f"model {model_path} is run {ckpt['run']!r}")  # fmt: skip
    data = surface_clips(store, ckpt, split, clips)
    indices = shard_indices(grid.n_points, n_shards, shard)
    out = Path(out)
    partial = out.with_name(out.name + ".partial.json")
    log = get_logger()
    log.info("%s direction seed %s: shard %d/%d, %d of %d points, %d %s clips on %s; "
             "start-up %.1f s (process start to data in memory)",
             ckpt["run"], meta["direction_seed"], shard + 1, n_shards, len(indices),
             grid.n_points, len(data), split, device, _seconds_since_process_start())  # fmt: skip
    x, y = data.x.to(device), data.y.to(device)
    compile = compile and device.type == "cuda"
    results = evaluate_points(
        model, dx, dy, x, y, grid, indices, batch_size=batch_size, device=device,
        partial_path=partial, log=log, precision=precision, compile=compile,
    )  # fmt: skip
    refinement: dict[str, Any] = {}
    if refine_radius is not None and precision != "float32":
        if n_shards != 1:
            raise ValueError(f"refining needs the whole grid in one job, not {n_shards} shards")

        def ieee(points: list[int], round_: int) -> dict[int, tuple[float, float]]:
            return evaluate_points(
                model, dx, dy, x, y, grid, points, batch_size=batch_size, device=device,
                partial_path=out.with_name(f"{out.name}.refine{round_}.partial.json"), log=log,
                precision="float32", compile=compile,
            )  # fmt: skip

        results, refinement = refine_surface(
            results, ieee, grid, refine_radius, REFINE_RTOL[precision], log
        )
    write_shard(out, grid, indices, results, {
        "run": ckpt["run"],
        "direction_seed": meta["direction_seed"],
        "fingerprint": surface_fingerprint(model, dx, dy),
        "n_shards": n_shards,
        "shard": shard,
        "split": split,
        "clips_requested": clips,
        "clips": len(data),
        "precision": precision,
        **refinement,
    })  # fmt: skip
    partial.unlink(missing_ok=True)
    for done in out.parent.glob(f"{out.name}.refine*.partial.json"):
        done.unlink()
