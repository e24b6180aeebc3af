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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.core.io import provenance, read_partial, write_json, write_partial
from ascsharp.core.progress import Progress, get_logger
from ascsharp.core.settings import enum
from ascsharp.core.tensors import tensor_digest
from ascsharp.features.clips import surface_clips
from ascsharp.train.evaluate import EvalForward, loss_and_accuracy, pick_device, predict

# BatchNorm running statistics along the interpolation. "recompute" (default): each θ(α)'s own
# statistics on the clips. The statistics of two networks, averaged, are not those of the
# averaged network, and that mismatch adds a barrier that is not in the weights; and beyond the
# two models (α < 0 or α > 1) interpolated variances can turn negative (two seeds' channels are
# unrelated). "interpolate": as Li et al.'s `--dir_type states`, so that α = 0 and α = 1 are the
# two models exactly as every other stage evaluates them; variances that extrapolate below zero
# are set to zero (logged).
BN_STATISTICS = enum("views.interpolation.bn_statistics")


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
    fast = EvalForward(model, precision=precision)
    x, y = x.to(device), y.to(device)

    partial = Path(partial_path) if partial_path is not None else None
    h = hashlib.sha256()
    for part in (tensor_digest(state_a.values()), tensor_digest(state_b.values()),
                 tensor_digest([x, y]),
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
            with fast.at_current_weights() as forward:
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
    from ascsharp.train.checkpoint import load_model

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


# ---------------------------------------------------------------------------------------------
# Trajectory: reading, PCA, plane


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib imported here only: training imports this module for the recorder)
