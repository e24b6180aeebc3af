"""The `ascsharp measure` job: one measure of one model, on the clips its landscape uses (or a
seeded selection of its training clips), written to one JSON file.

The measures themselves are in curvature (Hessian), adaptive (adaptive sharpness) and
generalization (Jiang et al.'s PAC-Bayes flatness, norms and margin), built on the helpers of
common; this module only picks the clips and the function,
and writes the result with its provenance. MEASURES (ascsharp.measures) is the one list of
measure names: the blocks of the config's `measures` section that can be switched on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ascsharp.core.io import json_safe, provenance, write_json
from ascsharp.core.progress import get_logger
from ascsharp.core.seeds import derive_seed
from ascsharp.core.tensors import weights_digest
from ascsharp.features.clips import Clips, Store, load_clips, surface_clips
from ascsharp.measures import MEASURES
from ascsharp.measures.adaptive import adaptive_average
from ascsharp.measures.adaptive_worst import adaptive_worst
from ascsharp.measures.common import UnitHook
from ascsharp.measures.curvature import hessian
from ascsharp.measures.generalization import inverse_margin, norms, pacbayes
from ascsharp.train.checkpoint import load_model
from ascsharp.train.evaluate import autotuned, forward_precision, pick_device
from ascsharp.train.models import initial_model

# measure name -> function(model, x, y, options, seed, log, partial_path=, on_unit=); keyed by
# exactly MEASURES (tests/core/test_settings.py).
_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "hessian": hessian,
    "adaptive_average": adaptive_average,
    "adaptive_worst": adaptive_worst,
    "pacbayes": pacbayes,
    "norms": norms,
    "margin": inverse_margin,
}
# Where the clips come from: "landscape" the landscape's own selection (its split and count,
# its "subset" stream), "measures" a selection of the model's training clips of its own.
SELECTIONS = ("landscape", "measures")
# The own selection's stream: one per run, shared by all its measures. (The stream's name is
# part of the numbers, so it keeps the word "subset".)
SUBSET_PURPOSE = "measure-subset"


def clips_digest(filenames: Sequence[str]) -> str:
    """sha256 of the clip names in order: equal digests mean the same clips."""
    return hashlib.sha256("\n".join(filenames).encode()).hexdigest()


def run_measure(
    *,
    measure: str,
    model_path: str | Path,
    store: Store,
    clips: int | None,
    out: str | Path,
    options: dict[str, Any],
    seed: int,
    selection: str,
    split: str,
    device: str | torch.device | None = None,
    compile: bool = False,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """One measure of one model, written atomically to `out` (JSON); returns what it wrote.

    selection "landscape": the clips of the model's surfaces (landscape.surface_clips with the
    landscape's `split` and `clips`; `store` holds that split), so that the measures describe
    the plotted loss. selection "measures": `clips` of the model's training clips (model.pt's
    list, in the train `store`) drawn with derive_seed(run, "measure-subset"), None: all.
    Either way every measure of a run sees the same clips. `compile` (CUDA only, speed only)
    compiles the forward of the measures that only evaluate. Noise and start vectors come from
    derive_seed(run, measure, seed). Finished units go to `<out>.partial.json`, removed once
    `out` is written.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}: expected one of {MEASURES}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}: expected one of {SELECTIONS}")
    device = torch.device(device or pick_device())
    log = get_logger()
    model, ckpt = load_model(model_path, device)
    run = ckpt["run"]
    data, subset_seed = _clips(store, ckpt, selection, split, clips)
    stream_seed = derive_seed(run, measure, seed)
    out = Path(out)
    partial = out.with_name(out.name + ".partial.json")
    log.info("%s: %s on %d %s clips (%s selection) of the model's %d training clips, on %s",
             run, measure, len(data), split if selection == "landscape" else "train",
             selection, len(ckpt["train_clips"]), device)  # fmt: skip
    extra: dict[str, Any] = {}
    initial = None
    if measure == "norms":
        initial, initial_check = _initial_weights(ckpt, model_path, log)
        extra["initial"] = initial.to(device)
    if "precision" in options:  # the measures that only evaluate: their forward can compile
        extra["compile"] = compile
    # Gradients and Hessian products in IEEE float32 on CUDA too (not PyTorch's TF32
    # convolutions); evaluations at the measure's own precision (its option, float32 default).
    # cuDNN times its kernels once per shape: the chunks of a measure repeat a few shapes.
    with forward_precision(device, "float32"), autotuned(device):
        result = _FUNCTIONS[measure](model, data.x.to(device), data.y.to(device), options,
                                     stream_seed, log, partial_path=partial, on_unit=on_unit,
                                     **extra)  # fmt: skip
    names = data.table["filename"].tolist()
    doc = {
        "run": run,
        "measure": measure,
        "values": result["values"],
        "options": result["options"],
        "seed": seed,
        "stream_seed": stream_seed,
        "clips": {
            "n": len(data),
            "selection": selection,
            "split": split if selection == "landscape" else "train",
            "requested": "all" if clips is None else clips,
            "trained_on": len(ckpt["train_clips"]),
            "subset_seed": subset_seed,
            "store": str(store.npy),
            "filenames_sha256": clips_digest(names),
        },
        "model": str(model_path),
        "cost": result["cost"],
        "provenance": provenance(),
    }
    if initial is not None:
        doc["initial_weights"] = initial_check
    doc = json_safe(doc)  # strict JSON: NaN (se of one batch) and inf become null
    write_json(out, doc)
    partial.unlink(missing_ok=True)
    c = result["cost"]
    log.info("%s: %s done in %.1f s: %d forward, %d gradient, %d HVP clip passes, %.3g FLOPs",
             run, measure, c["wall_s"], c["forward_clips"], c["gradient_clips"], c["hvp_clips"],
             c["flops"])  # fmt: skip
    return doc


def _clips(
    store: Store, ckpt: dict[str, Any], selection: str, split: str, clips: int | None
) -> tuple[Clips, int]:
    if selection == "landscape":
        return surface_clips(store, ckpt, split, clips), derive_seed(ckpt["run"], "subset")
    subset_seed = derive_seed(ckpt["run"], SUBSET_PURPOSE)
    return load_clips(store, ckpt["train_clips"], clips, subset_seed), subset_seed


def _initial_weights(ckpt: dict[str, Any], model_path: str | Path, log) -> tuple[Any, dict]:
    """The weights training started from, regenerated from the run's "init" seed (global RNG
    left as it was) and checked against model.pt's `init_sha256` when it has one."""
    with torch.random.fork_rng(devices=[]):
        model = initial_model(ckpt["arch"], run=ckpt["run"], n_classes=ckpt["n_classes"],
                              width=ckpt["width"], n_mels=ckpt["n_mels"])  # fmt: skip
    digest = weights_digest(model)
    recorded = ckpt.get("init_sha256")
    if recorded is not None and recorded != digest:
        raise ValueError(f"{model_path}: init_sha256 differs from the regenerated initial "
                         "weights (trained by another version of build_model?)")  # fmt: skip
    if recorded is None:
        log.warning("%s: no init_sha256 (older model file): initial weights unverified",
                    model_path)  # fmt: skip
    return model.eval(), {"sha256": digest, "verified": recorded is not None}
