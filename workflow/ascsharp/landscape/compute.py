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
from dataclasses import dataclass
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
    EvalForward,
    autotuned,
    check_precision,
    loss_and_accuracy,
    pick_device,
    predict,
)

if TYPE_CHECKING:  # data imports torchaudio, which `ascsharp directions` does not need
    from ascsharp.features.clips import Store


@dataclass(frozen=True)
class RefineBound:
    """The stated error of a grid point's loss at a fast precision (landscape.refine):
    |L_fast - L_IEEE| <= min(rtol * |L_fast| + atol, ctol * max(|L_fast|, 1)).

    A clip's loss moves by at most about |logit error| * min(its loss, 1), so the errors shrink
    with the loss: the first part, relative with a floor, is what lets a low-loss surface
    refine few points. The logit error grows with a model's logits, that is as its loss falls,
    so the relative part must be wide enough for the lowest losses; the second part (absolute
    below 1) keeps it from being needlessly wide at ordinary losses.
    """

    rtol: float
    atol: float
    ctol: float

    def __post_init__(self) -> None:
        if not (self.rtol >= 0 and 0 < self.atol < math.inf and 0 < self.ctol < math.inf):
            raise ValueError(f"refine bound needs rtol >= 0, atol > 0 and ctol > 0, got {self}")

    def __call__(self, loss: np.ndarray) -> np.ndarray:
        size = np.abs(np.nan_to_num(np.asarray(loss, dtype=np.float64), nan=0.0, posinf=0.0,
                                    neginf=0.0))  # fmt: skip
        return np.minimum(self.rtol * size + self.atol, self.ctol * np.maximum(size, 1.0))

    def scaled(self, factor: float) -> RefineBound:
        return RefineBound(factor * self.rtol, factor * self.atol, factor * self.ctol)


# Each part is twice the largest error measured, rounded up to two digits: rtol from the
# largest |L_fast - L_IEEE| / |L_fast|, atol from the largest absolute error among the lowest
# tenth of the losses of the lowest-loss surface (a floor below the smallest loss measured),
# ctol from the largest error / max(|L_fast|, 1). Measured by tests/benchmarks/bench_refine.py
# on a CPU (2026-12-04, one thread, CPU autocast) over 18 CNN10s trained on learnable clips
# (surface losses 5.7e-6 to 5.2): width 1/8, 100 frames, 64 clips, lr 1e-3 (`--reduced --seed 0
# --epochs 3 20 60 300`, `--seed 1 --epochs 10 40 120 300`), width 1/16, 24 frames, lr 1e-2
# (`--seed {0,1} --epochs 2 5 20 80`) and the models of tests/landscape/test_refine.py
# (`--mels 32 --classes 4 --clips 16 --seed 5 --epochs 10 80`). Largest: bfloat16 0.122 of
# |L_fast|, 2.3e-7 at losses below 7.4e-6, 0.0444 of max(|L_fast|, 1); float16 0.0295, 3.2e-8,
# 0.0098 (each on the 4-class model at 80 epochs). tf32 cannot be emulated on a CPU (it is IEEE
# float32 there); it rounds the inputs of convolutions and matrix products to float16's 10-bit
# mantissa but keeps float32 activations, so it takes float16's bound (on an H200,
# bench_precision.py measured tf32's loss errors below float16's: 2.5e-3 against 4.3e-3).
# To be re-measured on a GPU (tests/benchmarks/run_gpu_paper.sh).
REFINE_BOUND = {
    "tf32": RefineBound(rtol=0.059, atol=6.4e-8, ctol=0.020),
    "float16": RefineBound(rtol=0.059, atol=6.4e-8, ctol=0.020),
    "bfloat16": RefineBound(rtol=0.25, atol=4.6e-7, ctol=0.089),
}


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
    check_precision(precision)
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
    fast = EvalForward(model, precision=precision, compile=compile, fold_bn=fold_bn)
    todo = [int(p) for p in indices if int(p) not in done]
    progress = Progress(len(indices), "points", logger=log, done=len(done))
    unsaved = 0
    started = time.perf_counter()
    try:
        with torch.no_grad(), autotuned(device):  # fixed shapes: cuDNN's kernel choice pays
            for p in todo:
                alpha, beta = grid.coords(p)
                for w, w_init, a, b in zip(params, w0, dxs, dys, strict=True):
                    w.copy_(w_init)
                    w.add_(a, alpha=alpha)
                    w.add_(b, alpha=beta)
                with fast.at_current_weights() as forward:
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
    bound: RefineBound,
    log: logging.Logger,
) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """The surface `fast` (every grid point, at a fast precision) with the points that decide
    its sharpness re-evaluated in IEEE float32, so that every sharpness variant at `radius` is
    the IEEE one (sharpness.decisive_points says which points and why).

    `evaluate_ieee(points, round)` returns {p: (loss, acc)} in IEEE float32. `bound` is the
    fast precision's stated error (REFINE_BOUND); where a re-evaluated point's error exceeds
    it, every part is widened by twice the largest excess factor and the selection repeated,
    until every re-evaluated point is within the bound in force. Returns the merged results and
    what to record: refined_points (flat indices), refined_precision, refined_fast_loss,
    refine_rtol, refine_atol and refine_ctol (the bound in force at the end), refine_max_error
    (the largest |L_fast - L_IEEE| seen) and refine_max_ratio (the largest error over the
    stated bound: above 1, the bound was widened).
    """
    from ascsharp.landscape.sharpness import decisive_points

    if sorted(fast) != list(range(grid.n_points)):
        raise ValueError("refining needs the whole grid in one job (landscape.shards: 1)")
    x, y = grid.xcoordinates, grid.ycoordinates
    loss = np.array([fast[p][0] for p in range(grid.n_points)]).reshape(grid.ynum, grid.xnum)
    stated = bound(loss)
    widen = 1.0  # the bound in force is widen * stated
    exact: dict[int, tuple[float, float]] = {}
    worst = ratio = 0.0
    for rounds in range(grid.n_points + 1):  # each round adds a point or ends
        todo = np.flatnonzero(decisive_points(x, y, loss, widen * stated, radius))
        todo = [int(p) for p in todo if int(p) not in exact]
        if not todo:
            break
        exact.update(evaluate_ieee(todo, rounds))
        seen = [p for p in exact if math.isfinite(exact[p][0]) and math.isfinite(fast[p][0])]
        errors = np.array([abs(exact[p][0] - fast[p][0]) for p in seen])
        worst = float(errors.max(initial=0.0))
        ratio = float((errors / stated.flat[seen]).max(initial=0.0))
        log.info("refine round %d: %d points re-evaluated in IEEE float32, largest error %.3g, "
                 "%.3g of the stated bound (in force: %.3g of it)",
                 rounds + 1, len(todo), worst, ratio, widen)  # fmt: skip
        if ratio > widen:
            log.warning("fast error %.3g of the stated bound (%s), above the %.3g in force: "
                        "widened to %.3g", ratio, bound, widen, 2 * ratio)  # fmt: skip
            widen = 2 * ratio
    points = sorted(exact)
    info = {
        "refined_points": points,
        "refined_precision": "float32",
        "refined_fast_loss": [fast[p][0] for p in points],
        "refine_rtol": widen * bound.rtol,
        "refine_atol": widen * bound.atol,
        "refine_ctol": widen * bound.ctol,
        "refine_max_error": worst,
        "refine_max_ratio": ratio,
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
            results, ieee, grid, refine_radius, REFINE_BOUND[precision], log
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
