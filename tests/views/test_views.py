"""Li et al.'s views: 1-D interpolation between two models, and the trajectory's PCA plane."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from conftest import FRAMES, N_MELS
from defaults import CPU, train_files, train_settings
from sklearn.decomposition import PCA
from torch import nn

from ascsharp.core.runs import expand_grid, interpolation_pairs
from ascsharp.core.surface import read_surface
from ascsharp.features.clips import Store
from ascsharp.train.evaluate import loss_and_accuracy, predict
from ascsharp.train.loop import RESUME_FILE, train
from ascsharp.train.models import build_model
from ascsharp.train.trajectory import TrajectoryRecorder, read_trajectory
from ascsharp.views.figures import plot_interpolation, plot_trajectory
from ascsharp.views.interpolation import (
    alpha_grid,
    interpolate_models,
    interpolation_job,
    loss_barrier,
    recompute_bn_statistics,
)
from ascsharp.views.trajectory import trajectory_pca, trajectory_plane_job

RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"


def trained_like(seed: int) -> nn.Module:
    """A small CNN10 with random weights and BN statistics (as if trained), in eval mode."""
    torch.manual_seed(seed)
    model = build_model("cnn10", n_classes=10, width=0.125, n_mels=N_MELS)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def clips(n: int = 20, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_MELS, FRAMES, generator=g), torch.randint(0, 10, (n,), generator=g)


def own_loss(model: nn.Module, x, y) -> tuple[float, float]:
    """A model's loss as every stage evaluates it, unfolded: the independent reference."""
    return loss_and_accuracy(predict(model, x, 7), y)


# --- interpolation ------------------------------------------------------------------------------


def test_interpolating_a_model_with_itself_is_flat():
    model, (x, y) = trained_like(0), clips()
    alphas = alpha_grid(-0.5, 1.5, 9)
    for bn in ("interpolate", "recompute"):
        out = interpolate_models(
            model, copy.deepcopy(model), x, y, alphas, bn_statistics=bn, batch_size=8, device="cpu"
        )
        losses = [loss for loss, _ in out]
        assert max(losses) - min(losses) == 0.0, bn


def test_ends_are_the_two_models_and_the_middle_their_mean():
    a, b, (x, y) = trained_like(0), trained_like(1), clips()
    alphas = alpha_grid(-0.5, 1.5, 9)
    assert alphas[2] == 0.0 and alphas[6] == 1.0
    out = interpolate_models(
        a, b, x, y, alphas, bn_statistics="interpolate", batch_size=8, device="cpu"
    )
    assert out[2] == pytest.approx(own_loss(a, x, y), rel=1e-5)
    assert out[6] == pytest.approx(own_loss(b, x, y), rel=1e-5)
    assert out[2] != pytest.approx(out[6], rel=1e-3)  # the two models differ
    # α = 0.5 and α = 1.5: every tensor of the state (statistics too) on the line, by hand.
    sa, sb = a.state_dict(), b.state_dict()
    for i, alpha in ((4, 0.5), (8, 1.5)):
        mid = copy.deepcopy(a)
        state = {
            k: (1 - alpha) * v + alpha * sb[k] if v.is_floating_point() else v
            for k, v in sa.items()
        }
        # Extrapolated variances below 0 are floored there (there are some at α = 1.5).
        negative = sum(int((v < 0).sum()) for k, v in state.items() if "running_var" in k)
        assert negative > 0 if alpha > 1 else negative == 0
        mid.load_state_dict(
            {k: v.clamp(min=0) if "running_var" in k else v for k, v in state.items()}
        )
        assert out[i] == pytest.approx(own_loss(mid, x, y), rel=1e-5)
    # The inputs are left as they were.
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in sa.items())


def test_recomputed_statistics_are_the_clips_batch_statistics():
    """A one-layer net whose BN statistics are known in closed form: the mean and unbiased
    variance of the layer's outputs over the clips (one batch holds them all)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    net[1].running_mean.fill_(5.0)
    net[1].running_var.fill_(9.0)
    x = torch.randn(50, 4)
    recompute_bn_statistics(net, x, batch_size=64)
    with torch.no_grad():
        h = net[0](x)
    assert torch.allclose(net[1].running_mean, h.mean(0), atol=1e-6)
    assert torch.allclose(net[1].running_var, h.var(0, unbiased=True), atol=1e-5)
    assert not net.training and net[1].momentum == 0.1


def test_recompute_at_the_ends_gives_each_model_with_its_recomputed_statistics():
    a, b, (x, y) = trained_like(0), trained_like(1), clips()
    out = interpolate_models(
        a, b, x, y, [0.0, 1.0], bn_statistics="recompute", batch_size=8, device="cpu"
    )
    for model, got in ((a, out[0]), (b, out[1])):
        fresh = copy.deepcopy(model)
        recompute_bn_statistics(fresh, x, 8)
        assert got == pytest.approx(own_loss(fresh, x, y), rel=1e-5)
        assert got != pytest.approx(own_loss(model, x, y), rel=1e-3)


def test_loss_barrier_closed_form():
    alphas = alpha_grid(-0.5, 1.5, 21)
    loss = 1.0 + 2.0 * alphas + 3.0 * alphas * (1 - alphas)  # line plus a bump 3α(1−α)
    assert loss_barrier(alphas, loss) == pytest.approx(0.75)  # its maximum, at α = 1/2
    assert loss_barrier(np.array([0.2, 0.5]), np.array([1.0, 2.0])) is None


def test_default_pairs_are_seed_pairs_and_adam_sgd_twins():
    runs = expand_grid(
        {
            "blocks": [
                {
                    "arch": ["cnn10", "cnn14"],
                    "optimizer": ["adam", "sgd"],
                    "lr": [0.003],
                    "batch_size": [16],
                    "seed": [42, 43],
                }
            ]
        }
    )
    pairs = interpolation_pairs(runs)
    assert len(pairs) == 8 and len(set(pairs)) == 8

    def differ(a, b):
        pa, pb = dict(s.split("~") for s in a.split("/")), dict(s.split("~") for s in b.split("/"))
        return {k: (pa[k], pb[k]) for k in pa if pa[k] != pb[k]}

    kinds = [differ(a, b) for a, b in pairs]
    assert kinds.count({"seed": ("42", "43")}) == 4
    assert kinds.count({"optimizer": ("adam", "sgd")}) == 4


def test_interpolation_job_writes_json_and_figure(feature_store, tmp_path):
    out = {}
    for seed in (42, 43):
        run = RUN.replace("seed~42", f"seed~{seed}")
        train(
            train_files(feature_store, tmp_path / str(seed)),
            run,
            train_settings(epochs=2, width=0.125, eval_batch_size=32),
            {},
            CPU,
        )
        out[seed] = tmp_path / str(seed) / "model.pt"
    doc = interpolation_job(
        model_a=out[42],
        model_b=out[43],
        store=Store(feature_store / "train.npy", feature_store / "train.tsv"),
        split="train",
        clips=40,
        batch_size=16,
        alphas=alpha_grid(-0.5, 1.5, 5),
        bn_statistics="interpolate",
        precision="float32",
        out=tmp_path / "pair.json",
        device="cpu",
    )
    saved = json.loads((tmp_path / "pair.json").read_text())
    assert saved["run_b"].endswith("seed~43") and saved["clips"]["n"] == 40
    assert saved["loss"] == doc["loss"] and len(saved["accuracy"]) == 5
    assert not (tmp_path / "pair.json.partial.json").exists()
    fig = plot_interpolation(saved, [tmp_path / "pair.png"])
    assert (tmp_path / "pair.png").stat().st_size > 0
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), saved["loss"])


# --- trajectory: PCA ----------------------------------------------------------------------------


def test_pca_recovers_the_plane_of_a_planar_trajectory():
    rng = np.random.default_rng(0)
    size, n = 300, 12
    basis, _ = np.linalg.qr(rng.normal(size=(size, 2)))  # orthonormal u, v
    coef = np.c_[np.linspace(-3, 0, n) ** 2, np.sin(np.linspace(0, 4, n))]
    final = rng.normal(size=size)
    rows = final + (coef - coef[-1]) @ basis.T  # every epoch in final + span(u, v)
    components, ratio, path = trajectory_pca(rows, final, block=37)
    # The components span the plane: their projections onto span(u, v) have unit length.
    np.testing.assert_allclose(np.linalg.norm(components @ basis, axis=1), 1.0, atol=1e-10)
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-10)
    assert ratio.sum() == pytest.approx(1.0)
    # The path reproduces every difference to the final weights, which sits at the origin.
    np.testing.assert_allclose(path @ components, rows - final, atol=1e-9)
    np.testing.assert_allclose(path[-1], 0.0, atol=1e-12)
    # scikit-learn's PCA (the reference code's) of the same rows: same components and ratios.
    pca = PCA(n_components=2).fit(rows - final)
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(components @ pca.components_.T), np.eye(2), atol=1e-8)


def test_pca_ignores_masked_entries_and_refuses_too_short_paths():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(6, 40))
    mask = np.arange(40) >= 10
    components, _, _ = trajectory_pca(rows, rows[-1], mask)
    assert np.all(components[:, :10] == 0)
    full, _, _ = trajectory_pca(rows[:, 10:], rows[-1, 10:])
    np.testing.assert_allclose(np.abs(components[:, 10:] @ full.T), np.eye(2), atol=1e-10)
    with pytest.raises(ValueError, match="need >= 3"):
        trajectory_pca(rows[:2], rows[-1])


# --- trajectory: storage during training ---------------------------------------------------------


def test_recorder_round_trip(tmp_path):
    path = tmp_path / "trajectory.h5"
    recorder = TrajectoryRecorder(path, RUN)
    model = trained_like(0)
    states = []
    recorder.start(model, 0)
    states.append(copy.deepcopy(model.state_dict()))
    for epoch in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * epoch)
            model.bn0.running_mean.add_(1.0)
        recorder.record(epoch, model)
        states.append(copy.deepcopy(model.state_dict()))
    recorder.finish(2)
    assert not recorder.folder.exists()
    traj = read_trajectory(path)
    assert traj.run == RUN and traj.epochs.tolist() == [0, 1, 2]
    assert traj.parameters.dtype == np.float16
    for e, state in enumerate(states):
        got = traj.state(e)
        for k, v in state.items():
            want = v.half().float() if k in dict(model.named_parameters()) else v
            assert torch.equal(got[k], want), (e, k)


def test_recorder_refuses_a_resume_it_did_not_record(tmp_path):
    recorder = TrajectoryRecorder(tmp_path / "trajectory.h5", RUN)
    model = trained_like(0)
    recorder.start(model, 0)
    recorder.record(1, model)
    recorder.start(model, 1)  # epochs 0 and 1 are there
    with pytest.raises(ValueError, match="lacks epoch 2"):
        recorder.start(model, 2)


SETTINGS = train_settings(epochs=4, width=0.125, eval_batch_size=32)


def test_training_stores_the_trajectory_only_when_asked(feature_store, tmp_path):
    plain = train_files(feature_store, tmp_path / "plain")
    train(plain, RUN, SETTINGS, {}, CPU)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [
        "history.tsv",
        "metrics.json",
        "model.pt",
    ]

    files = replace(train_files(feature_store, tmp_path / "traj"), trajectory=tmp_path / "t.h5")
    train(files, RUN, SETTINGS, {}, CPU)
    traj = read_trajectory(tmp_path / "t.h5")
    assert traj.epochs.tolist() == [0, 1, 2, 3, 4]
    # The stored weights are the training's: model.pt's selected epoch, in float16.
    from ascsharp.train import checkpoint

    ckpt = checkpoint.load(tmp_path / "traj" / "model.pt")
    selected = traj.state(ckpt["epoch"])
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(
            selected[k], v.half().float() if v.is_floating_point() and "running" not in k else v
        ), k
    # Recording changes nothing in the training itself.
    assert torch.equal(
        checkpoint.load(tmp_path / "plain" / "model.pt")["state_dict"]["out.weight"],
        ckpt["state_dict"]["out.weight"],
    )


def test_resumed_training_has_the_whole_trajectory(feature_store, tmp_path, monkeypatch):
    """Killed after epoch 2, resumed: the packed trajectory equals an uninterrupted run's."""
    import ascsharp.train.loop as train_module

    def files(name):
        return replace(
            train_files(feature_store, tmp_path / name), trajectory=tmp_path / name / "t.h5"
        )

    train(files("full"), RUN, SETTINGS, {}, CPU)
    # A kill during epoch 3: nothing of the end of training runs.
    monkeypatch.setattr(train_module, "_finish", lambda *a, **k: None)
    monkeypatch.setattr(TrajectoryRecorder, "finish", lambda *a, **k: None)
    train(files("resumed"), RUN, replace(SETTINGS, epochs=2), {}, CPU)
    monkeypatch.undo()
    resume = tmp_path / "resumed" / RESUME_FILE
    saved = torch.load(resume, weights_only=True)
    saved["settings"]["epochs"] = SETTINGS.epochs
    torch.save(saved, resume)
    # What the kill left: epochs 0-2 recorded, no packed file yet.
    assert not (tmp_path / "resumed" / "t.h5").exists()
    train(files("resumed"), RUN, SETTINGS, {}, CPU)
    full, resumed = (
        read_trajectory(tmp_path / "full" / "t.h5"),
        read_trajectory(tmp_path / "resumed" / "t.h5"),
    )
    assert resumed.epochs.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(full.parameters, resumed.parameters)


def test_trajectory_plane_job(feature_store, tmp_path):
    files = replace(train_files(feature_store, tmp_path / "run"), trajectory=tmp_path / "t.h5")
    train(files, RUN, SETTINGS, {}, CPU)
    out = tmp_path / "plane.h5"
    store = Store(feature_store / "train.npy", feature_store / "train.tsv")
    result = trajectory_plane_job(
        model=files.model,
        trajectory=tmp_path / "t.h5",
        store=store,
        split="train",
        clips=30,
        batch_size=16,
        parameters="weights",
        num=3,
        margin=0.25,
        precision="float32",
        out=out,
        device="cpu",
    )
    x, y, loss = read_surface(out)
    assert loss.shape == (3, 3) and np.isfinite(loss).all()
    with h5py.File(out, "r") as f:
        px, py = f["proj_xcoord"][...], f["proj_ycoord"][...]
        assert f["epochs"][...].tolist() == [0, 1, 2, 3, 4]
        assert f.attrs["centre_epoch"] == 4
    assert (px[-1], py[-1]) == pytest.approx((0.0, 0.0), abs=1e-9)
    # The grid covers the path with the margin: a quarter of its extent on each side.
    span = px.max() - px.min()
    assert x[0] == pytest.approx(px.min() - 0.25 * span) and x[-1] == pytest.approx(
        px.max() + 0.25 * span
    )
    # The centre grid point is the final epoch's float16 weights moved by (x, y) on the plane:
    # check one point against an independent evaluation of those weights.
    traj = read_trajectory(tmp_path / "t.h5")
    from ascsharp.features.clips import surface_clips
    from ascsharp.train.checkpoint import load_model
    from ascsharp.train.trajectory import split_state

    net, ckpt = load_model(files.model)
    comps, _, _ = trajectory_pca(
        traj.parameters, traj.parameters[-1].astype(np.float64), traj.weight_mask()
    )
    point = traj.parameters[-1].astype(np.float64) + x[2] * comps[0] + y[0] * comps[1]
    state = {**traj.state(4), **traj.unflatten(point)}
    net.load_state_dict(state)
    data = surface_clips(store, ckpt, "train", 30)
    assert loss[0, 2] == pytest.approx(own_loss(net, data.x, data.y)[0], rel=1e-4)
    assert set(split_state(net)[0]) == set(traj.names)
    fig = plot_trajectory(out, [tmp_path / "plane.png"], title="t")
    path_line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(path_line.get_xdata(), px)
    assert result["ratio"].sum() <= 1.0


def test_cli_refuses_a_foreign_trajectory_by_name(tmp_path, capsys):
    from ascsharp.cli import main

    bogus = tmp_path / "t.h5"
    with h5py.File(bogus, "w") as f:
        f.attrs["format"] = "something else"
    (tmp_path / "f.npy").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "trajectory-plane",
                "--model",
                str(tmp_path / "none.pt"),
                "--trajectory",
                str(bogus),
                "--parameters",
                "weights",
                "--num",
                "3",
                "--margin",
                "0.2",
                "--features-npy",
                str(tmp_path / "f.npy"),
                "--features-tsv",
                str(tmp_path / "f.tsv"),
                "--split",
                "train",
                "--clips",
                "all",
                "--batch-size",
                "4",
                "--precision",
                "float32",
                "--out",
                str(tmp_path / "o.h5"),
                "--figure",
                str(tmp_path / "o.png"),
            ]
        )
    assert e.value.code == 2
    assert "none.pt" in capsys.readouterr().err
