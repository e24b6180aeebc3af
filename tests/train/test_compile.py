"""train.compile and cuDNN autotuning: levers of speed that must not change what is learnt.

Compiled training is checked on the CPU, where torch.compile's inductor backend also runs
(`compile` is forced: jobs compile on CUDA only). Inductor draws dropout masks from its own
generator; `fallback_random` makes it draw eager's, so that compiled and eager steps can be
compared number for number. The remaining difference is float rounding (fused kernels).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from dataclasses import replace

import pytest
import torch
from defaults import CPU, train_files, train_settings
from torch import nn

import ascsharp.train.loop as loop
from ascsharp.train import checkpoint
from ascsharp.train.evaluate import forward_precision
from ascsharp.train.models import build_model
from ascsharp.train.optim import make_stepper

NAMES = ["sgd", "adam", "sam", "gdtuo", "kfac"]
# K-FAC with statistics every second step: its eager and compiled steps alternate.
OPTIONS = {"kfac": {"stats_interval": 2, "inverse_interval": 2}}
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"
)


def small_cnn10() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn10", width=1 / 16, n_classes=10, n_mels=64)


def steps(stepper, n: int = 4, device=CPU) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` training steps on fixed batches, dropout reseeded per step as the loop does."""
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(8, 64, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        torch.manual_seed(100 + k)
        loss, logits = stepper.step(x.to(device), y.to(device))
        # Copies: a CUDA-graph replay may reuse the memory of an earlier step's outputs.
        out.append((loss.clone(), logits.clone()))
    return out


class CountingForward(nn.Module):
    """Stands in for a compiled forward: the same module, calls counted."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize(("name", "calls"), [("sgd", 4), ("adam", 4), ("sam", 8), ("gdtuo", 4)])
def test_every_training_forward_goes_through_the_compiled_one(name, calls):
    stepper = make_stepper(name, small_cnn10(), 1e-3, seed=0)
    stepper.forward = counting = CountingForward(stepper.model)
    steps(stepper)
    assert counting.calls == calls  # SAM: both passes of each step


def test_kfac_statistics_steps_run_eager_and_still_capture_their_layers():
    """torch.compile would not call the hooks K-FAC adds for its statistics steps: those
    steps must take the eager model, every other step the compiled forward."""
    stepper = make_stepper("kfac", small_cnn10(), 1e-3, seed=0, **OPTIONS["kfac"])
    stepper.forward = counting = CountingForward(stepper.model)
    steps(stepper)
    assert counting.calls == 2  # steps 2 and 4; 1 and 3 collect statistics
    assert stepper.stat_updates == 2 and set(stepper.factors) == set(stepper.layers)


# Where torch.compile runs: the CPU here; on a machine with a GPU also CUDA, in IEEE float32,
# with and without CUDA graphs (compile mode "reduce-overhead", timed by the benchmarks).
COMPILED = [("cpu", None)] + (
    [("cuda", None), ("cuda", "reduce-overhead")] if torch.cuda.is_available() else []
)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize(("device", "mode"), COMPILED)
@pytest.mark.parametrize("name", NAMES)
def test_compiled_training_steps_equal_the_eager_ones(name, device, mode):
    device = torch.device(device)
    eager_model = small_cnn10().to(device)
    compiled_model = copy.deepcopy(eager_model)
    eager = make_stepper(name, eager_model, 1e-3, seed=0, **OPTIONS.get(name, {}))
    compiled = make_stepper(name, compiled_model, 1e-3, seed=0, **OPTIONS.get(name, {}))
    compiled.compile(mode=mode)
    with (
        torch._inductor.config.patch(fallback_random=True),
        forward_precision(device, "float32"),
    ):
        got = steps(compiled, device=device)
        expected = steps(eager, device=device)
    for (loss, logits), (loss_c, logits_c) in zip(expected, got, strict=True):
        assert loss_c.item() == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(logits_c, logits, rtol=1e-4, atol=1e-5)
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    for key in a:  # weights, BN statistics, counters
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert compiled.hyperparameters() == pytest.approx(eager.hyperparameters(), rel=1e-5)
    # The state dict is the model's own: no `_orig_mod.` prefix from the compiled wrapper.
    assert compiled.model.state_dict().keys() == a.keys()


# --- the training loop ------------------------------------------------------------------------
RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"
SETTINGS = train_settings(epochs=1, width=0.125, selection="paper", eval_batch_size=64)


def test_compile_acts_on_cuda_only():
    on = replace(SETTINGS, compile=True)
    assert loop.compiles(on, torch.device("cuda")) is True
    assert loop.compiles(on, CPU) is False
    assert loop.compiles(replace(SETTINGS, compile=False), torch.device("cuda")) is False


def test_compile_is_speed_only_and_ignored_on_the_cpu(feature_store, tmp_path, monkeypatch):
    """A CPU job asked to compile gives the bits of one that is not, and resumes its
    checkpoint: compile is not part of the resume fingerprint (it reruns nothing)."""
    settings = replace(SETTINGS, epochs=2)
    straight = loop.train(train_files(feature_store, tmp_path / "a"), RUN, settings, {}, CPU)
    # Killed after epoch 1 (no outputs yet), eager; resumed with compile asked for.
    out = tmp_path / "b"
    monkeypatch.setattr(loop, "_finish", lambda *a, **k: None)
    loop.train(train_files(feature_store, out), RUN, replace(settings, epochs=1), {}, CPU)
    monkeypatch.undo()
    epochs_run, real_epoch = [], loop._train_epoch

    def counted(job, epoch, *args):
        epochs_run.append(epoch)
        return real_epoch(job, epoch, *args)

    monkeypatch.setattr(loop, "_train_epoch", counted)
    resumed = loop.train(
        train_files(feature_store, out), RUN, replace(settings, compile=True), {}, CPU
    )
    assert epochs_run == [2]  # resumed after epoch 1, not started afresh
    assert resumed["train"] == straight["train"] and resumed["test"] == straight["test"]
    a = checkpoint.load(tmp_path / "a" / "model.pt")["state_dict"]
    b = checkpoint.load(out / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_epoch_and_evaluation_runs_autotuned(feature_store, tmp_path, monkeypatch):
    """cudnn.benchmark (evaluate.autotuned) must cover the training steps and every
    evaluation pass of the job, for the job's device."""
    inside: list[torch.device] = []
    seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def recording(device):
        inside.append(device)
        try:
            yield
        finally:
            inside.pop()

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen.append((name, bool(inside)))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loop, "autotuned", recording)
    monkeypatch.setattr(loop, "_train_epoch", spy("epoch", loop._train_epoch))
    monkeypatch.setattr(loop, "predict", spy("predict", loop.predict))
    settings = replace(SETTINGS, epochs=2, selection="validation")
    loop.train(train_files(feature_store, tmp_path / "m"), RUN, settings, {}, CPU)
    # 2 epochs, 2 selection passes, then train, test and validation at the end.
    assert [name for name, _ in seen] == ["epoch", "predict"] * 2 + ["predict"] * 3
    assert all(active for _, active in seen)


@pytest.mark.slow
@needs_compiler
def test_a_compiled_training_job_equals_the_eager_one(feature_store, tmp_path, monkeypatch):
    """The whole loop with compile forced on (CPU): training steps, per-epoch selection and
    the final evaluations through the compiled forward; the same numbers up to rounding."""
    settings = replace(SETTINGS, epochs=2, compile=True)
    eager = loop.train(train_files(feature_store, tmp_path / "eager"), RUN, settings, {}, CPU)
    monkeypatch.setattr(loop, "compiles", lambda settings, device: True)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = loop.train(
            train_files(feature_store, tmp_path / "compiled"), RUN, settings, {}, CPU
        )
    assert compiled["epoch"] == eager["epoch"]
    for split in ("train", "test"):
        assert compiled[split]["accuracy"] == eager[split]["accuracy"]
        assert compiled[split]["loss"] == pytest.approx(eager[split]["loss"], rel=1e-4)
