"""Training of one grid run: whole split in memory, per-epoch checkpoint, model selection, metrics.

Randomness is re-derived from (run id, purpose, epoch) at every epoch, so a run resumed from
its last checkpoint continues exactly as if it had never stopped (on CPU; bit-identical).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ascsharp.core.io import atomic_path, provenance, write_json, write_table
from ascsharp.core.progress import Progress, get_logger
from ascsharp.core.runs import parse_run_id
from ascsharp.core.seeds import derive_seed, generator
from ascsharp.core.settings import enum
from ascsharp.core.tensors import weights_digest
from ascsharp.data.meta import SCENES
from ascsharp.features.clips import Clips, Store, load_split
from ascsharp.train import checkpoint
from ascsharp.train.evaluate import (
    autocast,
    autotuned,
    breakdown,
    loss_and_accuracy,
    pick_device,
    predict,
)
from ascsharp.train.models import initial_model
from ascsharp.train.optim import make_stepper
from ascsharp.train.trajectory import TrajectoryRecorder

# train.selection: "validation", or "paper" (fit on all of fold1_train, select on the test fold).
SELECTIONS = enum("train.selection")
RESUME_FILE = "checkpoint.pt"  # last finished epoch; removed once model.pt is written


@dataclass(frozen=True)
class TrainSettings:
    """The config's `train` section and `model.width`; their defaults are in the schema."""

    epochs: int
    width: float
    selection: str  # one of SELECTIONS
    eval_batch_size: int
    amp: bool
    compile: bool  # speed only, on CUDA: see `compiles`

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r}: expected one of {SELECTIONS}")


@dataclass(frozen=True)
class TrainFiles:
    """Every file a training job reads or writes, as its rule declares them."""

    train: Store  # fold1_train's features
    test: Store  # fold1_evaluate's features
    holdout: Path  # validation.tsv: the validation split, as rows of the train store
    model: Path
    metrics: Path
    history: Path
    # Per-epoch weights for the PCA view (ascsharp.views.interpolation), only when asked for.
    trajectory: Path | None = None

    @property
    def resume(self) -> Path:
        # Beside model.pt and gone once it is written, so not an output the rule declares.
        return self.model.with_name(RESUME_FILE)


@dataclass
class Job:
    """What one training job works on: fixed for the whole run."""

    run: str
    hyperparameters: dict[str, Any]
    settings: TrainSettings
    files: TrainFiles
    fit: Clips  # the clips the model learns from (listed in model.pt)
    select: Clips  # the clips the epoch is selected on
    test: Clips
    feature_settings: dict[str, Any]

    @property
    def paper(self) -> bool:
        return self.settings.selection == "paper"


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch; saved after each epoch for a resume."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    diverged: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() would deep-copy every saved weight tensor.
        return {f.name: getattr(self, f.name) for f in fields(self)}


def train(
    files: TrainFiles,
    run: str,
    settings: TrainSettings,
    feature_settings: dict[str, Any],
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train run `run`; `feature_settings` (the store's settings file) go into model.pt."""
    log = get_logger()
    device = device or pick_device()
    paper = settings.selection == "paper"

    def split(name: str) -> Clips:
        return load_split(name, train=files.train, test=files.test, holdout=files.holdout)

    fit = split("train_all" if paper else "train")
    select = split("test" if paper else "validation")
    resume_key = resume_fingerprint(run, settings, feature_settings, fit, select)
    fit, select = fit.to(device), select.to(device)
    test = select if paper else split("test").to(device)
    job = Job(run, parse_run_id(run), settings, files, fit, select, test, feature_settings)
    log.info(
        "run %s on %s: %d training clips, selection on %s (%d clips), %d test clips",
        run,
        device,
        len(fit),
        "test" if paper else "validation",
        len(select),
        len(test),
    )

    hp = job.hyperparameters
    model = initial_model(
        hp["arch"], run=run, n_classes=len(SCENES), width=settings.width, n_mels=fit.x.shape[1]
    )
    init_sha256 = weights_digest(model)  # the measure distance_from_init checks it
    model = model.to(device)
    stepper = make_stepper(hp["optimizer"], model, hp["lr"], seed=derive_seed(run, "optimizer"))
    if compiles(settings, device):
        stepper.compile()
        log.info("training and evaluation forwards compiled (train.compile)")
        if hp["optimizer"] == "kfac":
            log.info("kfac: its curvature-statistics steps run eager (module hooks)")

    resume_file = job.files.resume
    state = _resume(resume_file, resume_key, job, model, stepper, log)
    recorder = TrajectoryRecorder(files.trajectory, run) if files.trajectory else None
    if recorder:
        recorder.start(model, state.epoch)
    # Every shape of the job recurs for the whole run: cuDNN's timed kernel choice pays back.
    with autotuned(device):
        _train_epochs(job, stepper, state, recorder, device, resume_key, log)
        metrics = _finish(job, stepper, state, log, init_sha256)
    if recorder:
        recorder.finish(state.epoch)
    return metrics


def compiles(settings: TrainSettings, device: torch.device) -> bool:
    """train.compile acts on CUDA only: CPU jobs stay eager, and so bit-identical."""
    return settings.compile and device.type == "cuda"


def _train_epochs(
    job: Job, stepper, state: TrainState, recorder, device: torch.device, key: str, log
) -> None:
    """The epochs after `state.epoch`, each evaluated on the selection split and checkpointed."""
    settings, select, paper, model = job.settings, job.select, job.paper, stepper.model
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        if state.diverged:
            break
        row = _train_epoch(job, epoch, stepper, device, log)
        row["select_loss"], row["select_accuracy"] = loss_and_accuracy(
            predict(stepper.forward, select.x, settings.eval_batch_size, settings.amp), select.y
        )
        row.update(stepper.hyperparameters())
        state.history.append(row)
        state.diverged = not math.isfinite(row["train_loss"])
        # Ties keep the earlier epoch; a diverged epoch is never selected.
        if not state.diverged and row["select_accuracy"] > state.best_accuracy:
            state.best_accuracy = row["select_accuracy"]
            state.best_epoch = epoch
            state.best_state = _detached(model.state_dict())
        state.epoch = epoch
        log.info(
            "epoch %d/%d: train loss %.4f acc %.4f | %s loss %.4f acc %.4f | %.1f clips/s",
            epoch,
            settings.epochs,
            row["train_loss"],
            row["train_accuracy"],
            "test" if paper else "val",
            row["select_loss"],
            row["select_accuracy"],
            row["clips_per_s"],
        )
        if recorder:  # before the resume checkpoint: a resumed run has every epoch it did
            recorder.record(epoch, model)
        _save_resume(job.files.resume, key, job, model, stepper, state)


def _train_epoch(job: Job, epoch: int, stepper, device: torch.device, log) -> dict[str, Any]:
    """One pass over the shuffled training clips; returns running loss/accuracy and speed."""
    run, fit, batch_size = job.run, job.fit, job.hyperparameters["batch_size"]
    torch.manual_seed(derive_seed(run, "dropout", epoch))
    order = torch.randperm(len(fit), generator=generator(run, "shuffle", epoch)).to(device)
    n_batches = batch_count(len(fit), batch_size)
    progress = Progress(n_batches, "batches", log)
    report_every = max(1, n_batches // 5)
    # The host reads the running sums only where it must: on a GPU every read waits for the
    # queued steps, so a divergence is caught at the next progress report (5 per epoch), not
    # at its batch. On the CPU a read costs nothing, and every batch is checked.
    check_every = 1 if device.type == "cpu" else report_every
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    t0 = time.perf_counter()
    stepper.model.train()
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        xb, yb = fit.x[idx].float(), fit.y[idx]  # features may be stored in float16
        with autocast(device, job.settings.amp):
            loss, logits = stepper.step(xb, yb)
        loss_sum += loss.double() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        last = b + 1 == n_batches
        if (b + 1) % check_every and not last:
            continue
        running = float(loss_sum) / seen
        if not math.isfinite(running):
            log.warning("epoch %d: non-finite training loss by batch %d; stopping run", epoch, b)
            break
        if (b + 1) % report_every == 0:
            progress.update(report_every, f"(epoch {epoch}, loss {running:.4f})")
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": float(loss_sum) / seen,
        "train_accuracy": int(correct) / seen,
        "clips_per_s": seen / seconds,
        "seconds": seconds,
    }


def batch_count(n_clips: int, batch_size: int) -> int:
    """Batches per epoch: every clip counts, except that a last batch of a single clip is
    dropped (BatchNorm cannot normalise one clip; the reshuffle still shows it next epoch)."""
    if batch_size > n_clips:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_clips} training clips")
    full, rest = divmod(n_clips, batch_size)
    return full + (rest > 1)


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Not deepcopy: GDTUO's weights are non-leaf tensors tied to its hyperparameter graph.
    return {k: v.detach().clone() for k, v in state.items()}


# Settings that do not change a checkpoint of epoch k: the epoch count is read only once training
# has ended (no schedule depends on it); the evaluation batch size and compile are speed only
# (rerun economy).
_NOT_FINGERPRINTED = ("epochs", "eval_batch_size", "compile")


def resume_fingerprint(
    run: str,
    settings: TrainSettings,
    feature_settings: dict[str, Any],
    fit: Clips,
    select: Clips,
) -> str:
    """What a resume checkpoint's epochs depend on: the run id (seeds, hyperparameters), the
    training and feature settings, and the data itself: features, labels and clip names of the
    clips trained on and selected on (so also the hold-out and the stores' contents). The test
    clips are not in it: they are read only after the last epoch."""
    from ascsharp.core.tensors import tensor_digest

    trained = {k: v for k, v in asdict(settings).items() if k not in _NOT_FINGERPRINTED}
    h = hashlib.sha256()
    h.update(json.dumps([run, trained, feature_settings], sort_keys=True, default=str).encode())
    for clips in (fit, select):
        h.update(tensor_digest([clips.x, clips.y]).encode())
        h.update("\n".join(clips.table["filename"]).encode())
    return h.hexdigest()


def _resume(path: Path, key: str, job: Job, model, stepper, log) -> TrainState:
    """The state saved after the last finished epoch, if `path` was written for exactly these
    inputs (`key`); a checkpoint of other data, settings or run is deleted with a log line."""
    if not path.exists():
        return TrainState()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: unreadable resume checkpoint ({type(e).__name__}); "
            "delete it to start the run afresh"
        ) from None
    saved = saved if isinstance(saved, dict) else {}
    epoch = saved.get("state", {}).get("epoch")
    if saved.get("fingerprint") != key or not isinstance(epoch, int) or epoch > job.settings.epochs:
        log.warning(
            "%s: written for other data, settings or run; discarded, training from epoch 1", path
        )
        path.unlink()
        return TrainState()
    model.load_state_dict(saved["model"])
    stepper.load_state_dict(saved["stepper"])
    log.info("resuming %s after epoch %d", job.run, epoch)
    return TrainState(**saved["state"])


def _save_resume(path: Path, key: str, job: Job, model, stepper, state: TrainState) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "fingerprint": key,
                "run": job.run,
                "settings": asdict(job.settings),
                "model": model.state_dict(),
                "stepper": stepper.state_dict(),
                "state": state.to_dict(),
            },
            tmp,
        )


def _finish(job: Job, stepper, state: TrainState, log, init_sha256: str) -> dict[str, Any]:
    """Evaluate the selected epoch's weights and write model.pt, history.tsv and metrics.json."""
    settings, fit, select, test, paper = job.settings, job.fit, job.select, job.test, job.paper
    model, forward = stepper.model, stepper.forward
    run, hp, history = job.run, job.hyperparameters, state.history
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    final_train_acc = history[-1]["train_accuracy"] if history else float("nan")
    finite = all(
        math.isfinite(r["train_loss"]) and math.isfinite(r["select_loss"]) for r in history
    )

    eval_bs, amp = settings.eval_batch_size, settings.amp
    train_loss, train_acc = loss_and_accuracy(predict(forward, fit.x, eval_bs, amp), fit.y)
    test_metrics = breakdown(test.table, predict(forward, test.x, eval_bs, amp), test.y)
    validation = None
    if not paper:
        val_loss, val_acc = loss_and_accuracy(predict(forward, select.x, eval_bs, amp), select.y)
        validation = {"loss": val_loss, "accuracy": val_acc, "n": len(select)}
    metrics = {
        "run": run,
        "hyperparameters": hp,
        "selection": settings.selection,
        "selected_on": "test" if paper else "validation",
        # The study's protocol picks the epoch on the test fold: its test accuracies are then
        # optimistic. Flagged in every file so that no table mixes the two unknowingly.
        "test_leak": paper,
        "epoch": state.best_epoch,
        "epochs_trained": state.epoch,
        # What convergence is judged on; the judgement (train.converged_min_train_accuracy) is
        # the summary's, so that a new threshold reruns the statistics, not the training.
        "convergence": {"finite_losses": finite, "final_train_accuracy": final_train_acc},
        "train": {"loss": train_loss, "accuracy": train_acc, "n": len(fit)},
        "validation": validation,
        "test": test_metrics,
        "generalisation_gap": train_acc - test_metrics["accuracy"],
        "settings": asdict(settings),
        "provenance": provenance(),
    }
    checkpoint.save(
        job.files.model,
        {
            "state_dict": model.state_dict(),
            "arch": hp["arch"],
            "width": settings.width,
            "n_classes": len(SCENES),
            "n_mels": int(fit.x.shape[1]),
            "classes": list(SCENES),
            "run": run,
            "hyperparameters": hp,
            "epoch": state.best_epoch,
            "selection": settings.selection,
            "train_settings": asdict(settings),
            # The landscape is the mean loss over exactly these clips (fold1_train or its part).
            "train_clips": fit.table["filename"].tolist(),
            "init_sha256": init_sha256,
            "features": job.feature_settings,
            "provenance": metrics["provenance"],
        },
    )
    write_table(job.files.history, pd.DataFrame(history))
    write_json(job.files.metrics, metrics)
    job.files.resume.unlink(missing_ok=True)
    log.info(
        "run %s: epoch %d selected, test accuracy %.4f (seen %.4f, unseen %.4f), "
        "final train accuracy %.4f, finite losses %s",
        run,
        state.best_epoch,
        test_metrics["accuracy"],
        test_metrics["seen"],
        test_metrics["unseen"],
        final_train_acc,
        finite,
    )
    return metrics
