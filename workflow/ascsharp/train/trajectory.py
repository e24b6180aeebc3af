"""The per-epoch weights a training run stores for the trajectory view (views.trajectory.enabled):
written by `TrajectoryRecorder` during training, read back by `read_trajectory`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from ascsharp.core.io import atomic_path, provenance

TRAJECTORY_FORMAT = "ascsharp-trajectory-v1"


TRAJECTORY_DTYPE = torch.float16  # half the bytes of float32; relative rounding 2^-11


def split_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
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
        params, buffers = split_state(model)
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
