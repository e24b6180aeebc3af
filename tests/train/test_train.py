"""Training loop: learning, exact resume, model selection modes, divergence, outputs."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from defaults import CPU, train_files, train_settings

from ascsharp.data.meta import SCENES
from ascsharp.features.clips import Store
from ascsharp.train import checkpoint
from ascsharp.train.loop import RESUME_FILE, batch_count, train

RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"
SETTINGS = train_settings(epochs=6, width=0.25, eval_batch_size=32)


def train_into(features: Path, run: str, out: Path, settings, feature_settings=None, device=None):
    return train(train_files(features, out), run, settings, feature_settings or {}, device)


def test_training_learns_and_writes_self_describing_outputs(feature_store, tmp_path):
    out = tmp_path / "model"
    metrics = train_into(feature_store, RUN, out, SETTINGS, {"n_mels": 16})
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert metrics["test"]["accuracy"] > 0.3  # chance is 0.1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["selected_on"] == "validation" and saved["test_leak"] is False
    assert saved["epoch"] == int(history["select_accuracy"].idxmax()) + 1
    assert saved["hyperparameters"] == {
        "arch": "cnn10",
        "optimizer": "adam",
        "lr": 0.001,
        "batch_size": 16,
        "seed": 42,
    }
    assert set(saved["test"]["by_device"]) == {"a", "c", "s4", "s5"}
    # seen/unseen are means of per-device accuracies (each device weighs the same)
    by = saved["test"]["by_device"]
    assert saved["test"]["seen"] == pytest.approx((by["a"] + by["c"]) / 2)
    assert saved["test"]["unseen"] == pytest.approx((by["s4"] + by["s5"]) / 2)
    assert saved["convergence"]["finite_losses"] is True
    assert saved["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert not (out / RESUME_FILE).exists()

    model, ckpt = checkpoint.load_model(out / "model.pt")
    assert ckpt["run"] == RUN and ckpt["epoch"] == saved["epoch"]
    assert ckpt["features"] == {"n_mels": 16}


def test_generalisation_gap_is_train_minus_test_accuracy(feature_store, tmp_path):
    """On a test fold noisier than the training fold (a device shift) the model does better on
    its training clips: the gap is train minus test accuracy, here positive (accuracies
    recomputed by hand from model.pt)."""
    features = feature_store
    shifted = np.load(features / "test.npy")
    noise = np.random.default_rng(5).normal(0, 4.0, size=shifted.shape).astype(np.float32)
    np.save(features / "test.npy", shifted + noise)
    run = "arch~cnn10/optimizer~adam/lr~0.01/batch_size~16/seed~42"
    settings = train_settings(epochs=3, width=0.125, eval_batch_size=64)
    metrics = train_into(features, run, tmp_path / "m", settings)
    model, ckpt = checkpoint.load_model(tmp_path / "m" / "model.pt")
    train_acc = hand_accuracy(model, features, "train", ckpt["train_clips"])
    test_acc = hand_accuracy(model, features, "test")
    assert metrics["train"]["accuracy"] == pytest.approx(train_acc, abs=1.5 / metrics["train"]["n"])
    assert metrics["test"]["accuracy"] == pytest.approx(test_acc, abs=1.5 / metrics["test"]["n"])
    assert train_acc - test_acc > 0.1
    gap = metrics["train"]["accuracy"] - metrics["test"]["accuracy"]
    assert metrics["generalisation_gap"] == pytest.approx(gap)


def hand_accuracy(model, features: Path, store: str, clips: list[str] | None = None) -> float:
    """Accuracy of `model` on a store's clips (those named in `clips`), without ascsharp."""
    table = pd.read_csv(features / f"{store}.tsv", sep="\t")
    rows = table["filename"].isin(clips).to_numpy() if clips else np.ones(len(table), bool)
    x = torch.from_numpy(np.load(features / f"{store}.npy")[rows])
    y = torch.tensor([SCENES.index(s) for s in table["scene"][rows]])
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_resume_after_kill_equals_uninterrupted_run(feature_store, tmp_path, monkeypatch):
    full = train_into(feature_store, RUN, tmp_path / "full", SETTINGS, device=CPU)

    # A run killed during epoch 3 has left its epoch-2 checkpoint and no outputs: make one by
    # training 2 epochs with the output stage switched off, then label it as the 6-epoch run.
    import ascsharp.train.loop as train_module

    monkeypatch.setattr(train_module, "_finish", lambda *a, **k: None)
    train_into(feature_store, RUN, tmp_path / "resumed", replace(SETTINGS, epochs=2), device=CPU)
    monkeypatch.undo()
    resume_file = tmp_path / "resumed" / RESUME_FILE
    saved = torch.load(resume_file, weights_only=True)
    assert saved["state"]["epoch"] == 2
    saved["settings"] = asdict(SETTINGS)
    torch.save(saved, resume_file)

    resumed = train_into(feature_store, RUN, tmp_path / "resumed", SETTINGS, device=CPU)
    a = checkpoint.load(tmp_path / "full" / "model.pt")["state_dict"]
    b = checkpoint.load(tmp_path / "resumed" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test"] == full["test"]
    h_full = pd.read_csv(tmp_path / "full" / "history.tsv", sep="\t")
    h_res = pd.read_csv(tmp_path / "resumed" / "history.tsv", sep="\t")
    cols = ["train_loss", "train_accuracy", "select_loss", "select_accuracy"]
    pd.testing.assert_frame_equal(h_full[cols], h_res[cols])


def test_paper_selection_trains_on_all_of_fold1_train_and_selects_on_test(feature_store, tmp_path):
    settings = train_settings(epochs=2, width=0.125, selection="paper", eval_batch_size=32)
    metrics = train_into(feature_store, RUN, tmp_path / "m", settings)
    assert metrics["selection"] == "paper" and metrics["selected_on"] == "test"
    assert metrics["test_leak"] is True
    assert metrics["train"]["n"] == 120  # train + validation hold-out
    assert metrics["validation"] is None
    history = pd.read_csv(tmp_path / "m" / "history.tsv", sep="\t")
    best = history["select_accuracy"].max()
    assert metrics["test"]["accuracy"] == pytest.approx(best)
    # What is selected on and reported is the test fold, known by its size and its devices
    # (the validation hold-out has 30 clips of devices a, b and s1).
    test_fold = pd.read_csv(feature_store / "test.tsv", sep="\t")
    assert metrics["test"]["n"] == len(test_fold) == 60
    assert set(metrics["test"]["by_device"]) == set(test_fold["device"]) == {"a", "c", "s4", "s5"}


def test_divergence_is_recorded_not_raised(feature_store, tmp_path):
    run = "arch~cnn10/optimizer~sgd/lr~1e+30/batch_size~16/seed~42"
    metrics = train_into(feature_store, run, tmp_path / "m", train_settings(epochs=3, width=0.125))
    assert metrics["convergence"]["finite_losses"] is False
    history = pd.read_csv(tmp_path / "m" / "history.tsv", sep="\t")
    assert len(history) < 3 or not math.isfinite(history["train_loss"].iloc[-1])
    assert (tmp_path / "m" / "model.pt").exists()


def test_resume_checkpoint_of_another_run_is_discarded(feature_store, tmp_path, caplog):
    out = tmp_path / "m"
    out.mkdir()
    torch.save({"run": "other", "settings": {}}, out / RESUME_FILE)
    train_into(feature_store, RUN, out, replace(SETTINGS, epochs=1))
    assert (out / "model.pt").exists() and not (out / RESUME_FILE).exists()


def test_truncated_or_foreign_model_file_is_refused_by_name(feature_store, tmp_path):
    train_into(feature_store, RUN, tmp_path / "m", replace(SETTINGS, epochs=1))
    good = (tmp_path / "m" / "model.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt: not a readable checkpoint"):
        checkpoint.load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: not an ascsharp model file"):
        checkpoint.load_model(foreign)


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_equals_uninterrupted(feature_store, tmp_path):
    """A real SIGKILL of `ascsharp train`; the rerun resumes and ends where a clean run ends."""
    import signal
    import subprocess
    import sys
    import time

    settings = replace(SETTINGS, epochs=6)
    exe = str(Path(sys.executable).parent / "ascsharp")
    files = train_files(feature_store, tmp_path)
    base = [exe, "train", "--run", RUN, "--train-npy", str(files.train.npy), "--train-tsv",
            str(files.train.tsv), "--test-npy", str(files.test.npy), "--test-tsv",
            str(files.test.tsv), "--holdout", str(files.holdout), "--epochs", "6",
            "--width", str(settings.width), "--eval-batch-size", "32", "--threads", "1",
            "--selection", settings.selection, "--no-amp", "--no-compile", "--features-settings",
            str(feature_store / "train.json")]  # fmt: skip

    def cmd(out: Path) -> list[str]:
        return [*base, "--model", str(out / "model.pt"), "--metrics", str(out / "metrics.json"),
                "--history", str(out / "history.tsv")]  # fmt: skip

    killed_dir = tmp_path / "killed"
    cpu_only = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # bit-identical on the CPU only
    proc = subprocess.Popen(cmd(killed_dir), stderr=subprocess.PIPE, text=True, env=cpu_only)
    resume_file = killed_dir / RESUME_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            resume_file.exists()
            and torch.load(resume_file, weights_only=True)["state"]["epoch"] >= 2
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "model.pt").exists() and resume_file.exists()

    rerun = subprocess.run(cmd(killed_dir), capture_output=True, text=True, env=cpu_only)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    clean = subprocess.run(cmd(tmp_path / "clean"), capture_output=True, text=True, env=cpu_only)
    assert clean.returncode == 0, clean.stderr
    a = checkpoint.load(killed_dir / "model.pt")["state_dict"]
    b = checkpoint.load(tmp_path / "clean" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    killed_metrics = json.loads((killed_dir / "metrics.json").read_text())
    clean_metrics = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert killed_metrics["test"] == clean_metrics["test"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sam", "gdtuo", "kfac"])
def test_every_optimizer_runs_through_the_training_loop(optimizer, feature_store, tmp_path):
    """Each stepper inside the real loop: resume checkpoint, selection, outputs, reload."""
    run = f"arch~cnn10/optimizer~{optimizer}/lr~0.001/batch_size~16/seed~42"
    out = tmp_path / optimizer
    metrics = train_into(feature_store, run, out, replace(SETTINGS, epochs=2))
    assert metrics["epochs_trained"] == 2 and math.isfinite(metrics["train"]["loss"])
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert len(history) == 2
    if optimizer == "gdtuo":  # the learnt hyperparameters are logged per epoch
        assert {"learnt_lr", "learnt_beta1", "learnt_beta2"} <= set(history.columns)
    model, _ = checkpoint.load_model(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


def _scripted_selection(monkeypatch, accuracies: list[float]) -> None:
    """Make the per-epoch selection accuracy follow `accuracies`; later calls are real."""
    import ascsharp.train.loop as train_module

    real = train_module.loss_and_accuracy
    script = iter(accuracies)

    def scripted(logits, y):
        loss, acc = real(logits, y)
        return loss, next(script, acc)

    monkeypatch.setattr(train_module, "loss_and_accuracy", scripted)


def test_selection_keeps_the_best_epoch_not_the_last(feature_store, tmp_path, monkeypatch):
    """Accuracy that rises, then falls: model.pt must hold epoch 2's weights."""
    settings = replace(SETTINGS, epochs=4)
    _scripted_selection(monkeypatch, [0.3, 0.7, 0.5, 0.4])
    metrics = train_into(feature_store, RUN, tmp_path / "falling", settings, device=CPU)
    assert metrics["epoch"] == 2 and metrics["epochs_trained"] == 4
    _scripted_selection(monkeypatch, [0.3, 0.7])
    train_into(feature_store, RUN, tmp_path / "two", replace(settings, epochs=2), device=CPU)
    _scripted_selection(monkeypatch, [0.3, 0.5, 0.6, 0.7])
    train_into(feature_store, RUN, tmp_path / "rising", settings, device=CPU)
    best = checkpoint.load(tmp_path / "falling" / "model.pt")["state_dict"]
    epoch2 = checkpoint.load(tmp_path / "two" / "model.pt")["state_dict"]
    epoch4 = checkpoint.load(tmp_path / "rising" / "model.pt")["state_dict"]
    assert all(torch.equal(best[k], epoch2[k]) for k in best)
    assert not all(torch.equal(best[k], epoch4[k]) for k in best)


@pytest.mark.parametrize(
    ("clips", "batch_size", "batches"),
    [(13_962, 16, 873), (13_962, 32, 437), (33, 16, 2), (34, 16, 3), (32, 16, 2), (16, 16, 1)],
)
def test_every_clip_counts_except_a_lone_last_one(clips, batch_size, batches):
    # 13,962 = 872 * 16 + 10: the paper split's last 10 clips form a batch of their own.
    assert batch_count(clips, batch_size) == batches


def test_a_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match="batch_size 17 exceeds the 16 training clips"):
        batch_count(16, 17)


def test_training_sees_every_clip_each_epoch(feature_store, tmp_path, monkeypatch):
    import ascsharp.train.models as models_module

    sizes: list[int] = []
    real_build = models_module.build_model

    def counting_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, inp: sizes.append(len(inp[0])) if m.training else None
        )
        return model

    monkeypatch.setattr(models_module, "build_model", counting_build)  # via initial_model
    # 120 clips with the paper's selection; batch size 16: 7 full batches and one of 8.
    settings = train_settings(epochs=1, width=0.125, selection="paper", eval_batch_size=64)
    train_into(feature_store, RUN, tmp_path / "m", settings)
    assert sum(sizes) == 120 and sizes[-1] == 8


@pytest.mark.parametrize(("selection", "n_clips"), [("paper", 120), ("validation", 90)])
def test_landscape_is_computed_on_exactly_the_training_clips(
    feature_store, tmp_path, selection, n_clips
):
    """The surface's centre is the model's own training loss: same clips, whatever the mode."""
    import h5py

    from ascsharp.core.surface import Grid, gather
    from ascsharp.landscape.compute import evaluate_shard
    from ascsharp.landscape.directions import make_directions, save_directions

    settings = train_settings(epochs=1, width=0.125, selection=selection, eval_batch_size=64)
    metrics = train_into(feature_store, RUN, tmp_path / "m", settings)
    ckpt = checkpoint.load(tmp_path / "m" / "model.pt")
    train_tsv = pd.read_csv(feature_store / "train.tsv", sep="\t")
    held = set(pd.read_csv(feature_store / "validation.tsv", sep="\t")["filename"])
    expected = [f for f in train_tsv["filename"] if selection == "paper" or f not in held]
    assert ckpt["train_clips"] == expected and len(expected) == n_clips
    model, _ = checkpoint.load_model(tmp_path / "m" / "model.pt")
    save_directions(tmp_path / "d.pt", *make_directions(model, RUN, 42),
                    {"run": RUN, "direction_seed": 42})  # fmt: skip
    evaluate_shard(
        model_path=tmp_path / "m" / "model.pt", directions_path=tmp_path / "d.pt",
        store=Store(feature_store / "train.npy", feature_store / "train.tsv"), split="train",
        clips=None, batch_size=50,
        grid=Grid(-0.1, 0.1, 3, -0.1, 0.1, 3), n_shards=1, shard=0, out=tmp_path / "s.npz",
        precision="float32", compile=True,  # ignored on CPU
    )  # fmt: skip
    gather([tmp_path / "s.npz"], tmp_path / "surface.h5")
    with h5py.File(tmp_path / "surface.h5") as f:
        assert f.attrs["clips"] == n_clips and f.attrs["split"] == "train"
        centre = float(f["train_loss"][1, 1])
    assert centre == pytest.approx(metrics["train"]["loss"], rel=1e-5)
    assert metrics["train"]["n"] == n_clips
