"""The `ascsharp measure` job: one measure of one model, on (a fixed selection of) the clips
it was trained on, written to one JSON file.

The measures themselves are in ascsharp.curvature (Hessian) and ascsharp.adaptive (adaptive
sharpness), built on the helpers of ascsharp.measures; this module only picks the clips and the
function, and writes the result with its provenance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .adaptive import adaptive_average, adaptive_worst
from .checkpoint import load_model
from .curvature import hessian
from .data import Store, load_clips
from .evaluate import pick_device
from .io import provenance, write_json
from .landscape import forward_precision
from .measures import UnitHook
from .progress import get_logger
from .seeds import derive_seed
from .sharpness import json_safe

MEASURES = ("hessian", "adaptive_average", "adaptive_worst")
# One selection of clips per run, shared by all its measures (not per measure), so they see the
# same clips. (The stream's name is part of the numbers, so it keeps the word "subset".)
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
    device: str | torch.device | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """One measure of one model, written atomically to `out` (JSON); returns what it wrote.

    The clips are those the model was trained on (the list in model.pt, found in `store`, the
    train feature store), or a selection of `clips` of them drawn with derive_seed(run,
    "measure-subset"): the same clips for every measure of a run. Noise and Lanczos start
    vectors come from derive_seed(run, measure, seed). Finished units go to
    `<out>.partial.json`, removed once `out` is written.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}: expected one of {MEASURES}")
    device = torch.device(device or pick_device())
    log = get_logger()
    model, ckpt = load_model(model_path, device)
    run = ckpt["run"]
    subset_seed = derive_seed(run, SUBSET_PURPOSE)
    data = load_clips(store, ckpt["train_clips"], clips, subset_seed)
    stream_seed = derive_seed(run, measure, seed)
    out = Path(out)
    partial = out.with_name(out.name + ".partial.json")
    log.info("%s: %s on %d of the model's %d training clips, on %s",
             run, measure, len(data), len(ckpt["train_clips"]), device)  # fmt: skip
    fn = _measure_function(measure)
    # IEEE float32 on CUDA too, as the landscape's default: not PyTorch's TF32 convolutions.
    with forward_precision(device, "float32"):
        result = fn(model, data.x.to(device), data.y.to(device), options, stream_seed, log,
                    partial_path=partial, on_unit=on_unit)  # fmt: skip
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
    doc = json_safe(doc)  # strict JSON: NaN (se of one batch) and inf become null
    write_json(out, doc)
    partial.unlink(missing_ok=True)
    c = result["cost"]
    log.info("%s: %s done in %.1f s: %d forward, %d gradient, %d HVP clip passes, %.3g FLOPs",
             run, measure, c["wall_s"], c["forward_clips"], c["gradient_clips"], c["hvp_clips"],
             c["flops"])  # fmt: skip
    return doc


def _measure_function(measure: str) -> Callable[..., dict[str, Any]]:
    return {"hessian": hessian, "adaptive_average": adaptive_average,
            "adaptive_worst": adaptive_worst}[measure]  # fmt: skip
