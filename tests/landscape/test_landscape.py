"""Filter-normalised directions, grid evaluation, shards, resume and the surface file."""

from __future__ import annotations

import copy
import logging
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ascsharp.core.surface import Grid, gather, read_surface, shard_indices, write_shard
from ascsharp.landscape.compute import evaluate_points, surface_fingerprint
from ascsharp.landscape.directions import (
    cosine_similarity,
    load_directions,
    make_directions,
    random_direction,
    save_directions,
)
from ascsharp.landscape.figures import plot_surface

torch.set_num_threads(1)
LOG = logging.getLogger("test_landscape")
N_CLASSES = 4


class Tiny(nn.Module):
    """Conv + BN + linear, enough to exercise conv/linear slices, 1-D params and BN buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, N_CLASSES)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def make_model(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    m.train()
    with torch.no_grad():  # non-trivial running stats, so eval mode matters
        for _ in range(3):
            m(torch.randn(16, 1, 6, 6) * 2 + 1)
    m.eval()
    return m


def make_data(n=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def reference_point(model, dx, dy, alpha, beta, x, y):
    """Loss/acc by an independent route: perturb a deep copy's state_dict, one full batch."""
    m = copy.deepcopy(model).eval()
    names = [n for n, _ in m.named_parameters()]
    sd = m.state_dict()
    for name, a, b in zip(names, dx, dy, strict=True):
        sd[name] = sd[name] + alpha * a + beta * b
    m.load_state_dict(sd)
    with torch.no_grad():
        logits = m(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, saved):
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


# --- directions ---------------------------------------------------------------------------


def test_direction_filter_norms_and_zeroed_vectors():
    model = make_model()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    d = random_direction(model, torch.Generator().manual_seed(5))
    params = list(model.named_parameters())
    assert len(d) == len(params)  # parameters only: buffers get no direction
    raw = torch.Generator().manual_seed(5)
    for (name, w), t in zip(params, d, strict=True):
        assert t.shape == w.shape, name
        g = torch.randn(w.shape, generator=raw)  # same stream, drawn for every tensor
        if w.dim() <= 1:
            assert torch.count_nonzero(t) == 0, name
            continue
        for i in range(w.shape[0]):
            assert t[i].norm().item() == pytest.approx(w[i].norm().item(), rel=1e-5), (name, i)
            # A positive rescaling of the Gaussian draw: cosine 1 with the raw slice.
            cos = F.cosine_similarity(t[i].reshape(1, -1), g[i].reshape(1, -1)).item()
            assert cos == pytest.approx(1.0, abs=1e-6), (name, i)
    assert {k for k, p in model.named_parameters() if p.dim() >= 2} == {"conv.weight", "fc.weight"}
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_make_directions_reproducible_and_distinct():
    model = make_model()
    dx, dy = make_directions(model, "arch~tiny/seed~42", 42)
    dx2, dy2 = make_directions(model, "arch~tiny/seed~42", 42)
    assert all(torch.equal(a, b) for a, b in zip(dx + dy, dx2 + dy2, strict=True))
    assert not torch.equal(dx[0], dy[0])
    for other in [
        make_directions(model, "arch~tiny/seed~42", 43),
        make_directions(model, "arch~tiny/seed~43", 42),
    ]:
        assert not torch.equal(dx[0], other[0][0])
        assert not torch.equal(dx[-2], other[0][-2])


def test_save_load_directions(tmp_path):
    model = make_model()
    dx, dy = make_directions(model, "r", 1)
    path = tmp_path / "dirs.pt"
    save_directions(path, dx, dy, {"run": "r", "direction_seed": 1})
    lx, ly, meta = load_directions(path)
    assert all(torch.equal(a, b) for a, b in zip(dx + dy, lx + ly, strict=True))
    flat_x = torch.cat([t.reshape(-1) for t in dx]).double().numpy()
    flat_y = torch.cat([t.reshape(-1) for t in dy]).double().numpy()
    want = flat_x @ flat_y / np.linalg.norm(flat_x) / np.linalg.norm(flat_y)
    assert meta["cosine_similarity"] == pytest.approx(want, rel=1e-9)
    assert cosine_similarity(dx, dy) == pytest.approx(want, rel=1e-9)
    assert meta["run"] == "r" and meta["direction_seed"] == 1


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_load_directions_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"dx": [], "dy": [], "meta": _Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_directions(path)
    bad = tmp_path / "junk.pt"
    bad.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="junk.pt"):
        load_directions(bad)


# --- grid and shards ----------------------------------------------------------------------


def test_grid_and_index_convention():
    g = Grid(-1.0, 1.0, 5, -0.5, 0.5, 3)
    np.testing.assert_array_equal(g.xcoordinates, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(g.ycoordinates, np.linspace(-0.5, 0.5, 3))
    assert g.n_points == 15
    assert g.coords(0) == (-1.0, -0.5)
    assert g.coords(4) == (1.0, -0.5)  # end of the first row (iy = 0)
    assert g.coords(5) == (-1.0, 0.0)  # p = iy * xnum + ix
    assert g.coords(13) == (0.5, 0.5)
    with pytest.raises(ValueError, match="xnum"):
        Grid(0, 1, 0, 0, 1, 2)


def test_shard_indices_partition():
    parts = [shard_indices(15, 4, k) for k in range(4)]
    np.testing.assert_array_equal(parts[1], [1, 5, 9, 13])
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(15))
    with pytest.raises(ValueError, match="n_shards"):
        shard_indices(3, 4, 0)
    with pytest.raises(ValueError, match="shard=4"):
        shard_indices(15, 4, 4)


# --- evaluation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    model = make_model()
    dx, dy = make_directions(model, "run~t", 42)
    x, y = make_data()
    return model, dx, dy, x, y


def test_evaluate_matches_independent_reference_and_restores(setup):
    model, dx, dy, x, y = setup
    saved = state_copy(model)
    model.train()  # evaluate must switch to eval, and switch back
    grid = Grid(-0.5, 0.5, 5, -0.5, 0.5, 3)
    res = evaluate_points(model, dx, dy, x, y, grid, range(15), batch_size=5, device="cpu", log=LOG)
    assert model.training
    model.eval()
    assert_state_equal(model, saved)
    centre = 1 * 5 + 2
    with torch.no_grad():
        logits = model(x)
    assert res[centre][0] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert res[centre][1] == (logits.argmax(1) == y).sum().item() / len(y)
    for p in (0, 3, 9, 14):
        alpha, beta = grid.coords(p)
        want_loss, want_acc = reference_point(model, dx, dy, alpha, beta, x, y)
        assert res[p][0] == pytest.approx(want_loss, rel=1e-5)
        assert res[p][1] == pytest.approx(want_acc)
    assert len({round(v[0], 6) for v in res.values()}) > 10  # surface is not flat


@pytest.mark.parametrize("arch", ["cnn10", "cnn14"])
def test_folded_batchnorm_gives_the_unfolded_surface(arch):
    """BN folded into the convs (the fast path) changes the loss only by float rounding, at
    perturbed points too (the fold must follow the perturbed conv weights)."""
    from ascsharp.train.models import build_model

    torch.manual_seed(3)
    model = build_model(arch, width=1 / 16, n_mels=32, n_classes=10).train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 32, 32) * 2 + 1)
    model.eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(12, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    dx, dy = make_directions(model, "run~fold", 42)
    grid = Grid(-0.5, 0.5, 3, -0.5, 0.5, 3)
    kw = {"batch_size": 5, "device": "cpu", "log": LOG}
    fast = evaluate_points(model, dx, dy, x, y, grid, range(9), **kw)
    plain = evaluate_points(model, dx, dy, x, y, grid, range(9), fold_bn=False, **kw)
    for p in range(9):
        assert fast[p][0] == pytest.approx(plain[p][0], rel=1e-5), p
        want, _ = reference_point(model, dx, dy, *grid.coords(p), x, y)
        assert plain[p][0] == pytest.approx(want, rel=1e-5), p
    assert len({round(v[0], 5) for v in fast.values()}) > 5  # the perturbations do something


def test_precisions_change_the_forward_only_as_named(setup):
    """On CPU, tf32 is float32 (no TF32 units); bfloat16 autocast really runs in 16 bits (the
    loss moves, but only by bf16 rounding); an unknown name is refused; the flags are restored."""
    model, dx, dy, x, y = setup
    grid = Grid(-0.3, 0.3, 3, -0.3, 0.3, 3)
    kw = {"batch_size": 8, "device": "cpu", "log": LOG}
    res = {
        p: evaluate_points(model, dx, dy, x, y, grid, range(9), precision=p, **kw)
        for p in ("float32", "tf32", "bfloat16")
    }
    assert res["tf32"] == res["float32"]
    diffs = [abs(res["bfloat16"][p][0] - res["float32"][p][0]) for p in range(9)]
    assert 0 < max(diffs) < 0.05 * max(v[0] for v in res["float32"].values())
    with pytest.raises(ValueError, match="precision 'fp8'"):
        evaluate_points(model, dx, dy, x, y, grid, [0], precision="fp8", **kw)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # PyTorch's default, restored


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_forward_follows_every_perturbation():
    """torch.compile must not freeze the weights it first saw: the compiled landscape (BN folded,
    refolded per point) equals the eager one at every perturbed point."""
    from ascsharp.train.models import build_model

    torch.manual_seed(5)
    model = build_model("cnn10", width=1 / 16, n_mels=32, n_classes=10).eval()
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(10, 32, 32, generator=g), torch.randint(0, 10, (10,), generator=g)
    dx, dy = make_directions(model, "run~compile", 42)
    grid = Grid(-0.5, 0.5, 3, -0.5, 0.5, 2)
    kw = {"batch_size": 4, "device": "cpu", "log": LOG}  # a short last batch: a second shape
    compiled = evaluate_points(model, dx, dy, x, y, grid, range(6), compile=True, **kw)
    eager = evaluate_points(model, dx, dy, x, y, grid, range(6), **kw)
    for p in range(6):
        assert compiled[p][0] == pytest.approx(eager[p][0], rel=1e-5), p
    assert len({round(v[0], 5) for v in compiled.values()}) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_float32_on_cuda_is_ieee_and_tf32_is_not():
    """PyTorch runs float32 convolutions on TF32 tensor cores by default: "float32" must switch
    that off (error against float64 at float32 rounding), "tf32" must leave it on."""
    from ascsharp.train.evaluate import forward_precision

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 32, 32, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    errors = {}
    for precision in ("float32", "tf32"):
        with forward_precision(torch.device("cuda"), precision):
            out = F.conv2d(x.cuda(), w.cuda(), padding=1).double().cpu()
        errors[precision] = float((out - ref).norm() / ref.norm())
    assert errors["float32"] < 1e-6 < 1e-4 < errors["tf32"], errors


@pytest.mark.parametrize("batch_size", [1, 4, 7, 22, 23, 100])
def test_loss_is_sum_over_all_clips_over_n(setup, batch_size):
    model, dx, dy, x, y = setup
    grid = Grid(-0.3, 0.3, 3, -0.3, 0.3, 3)
    res = evaluate_points(model, dx, dy, x, y, grid, [2], batch_size=batch_size, device="cpu")
    want, _ = reference_point(model, dx, dy, 0.3, -0.3, x, y)
    assert res[2][0] == pytest.approx(want, rel=1e-6)


def test_weights_restored_after_error(setup):
    model, dx, dy, x, y = setup
    saved = state_copy(model)
    calls = {"n": 0}

    def boom(*_):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")

    h = model.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            evaluate_points(
                model,
                dx,
                dy,
                x,
                y,
                Grid(0.1, 0.2, 2, 0.1, 0.2, 2),
                range(4),
                batch_size=10,
                device="cpu",
            )
    finally:
        h.remove()
    assert_state_equal(model, saved)


def _meta(model, dx, dy, n_shards, shard, run="run~t", seed=42):
    return {
        "run": run,
        "direction_seed": seed,
        "fingerprint": surface_fingerprint(model, dx, dy),
        "n_shards": n_shards,
        "shard": shard,
        "split": "train",
    }


def test_sharded_gather_equals_unsharded_bitwise(setup, tmp_path):
    model, dx, dy, x, y = setup
    grid = Grid(-0.4, 0.4, 5, -0.2, 0.2, 3)  # non-square: 5 x 3
    full = evaluate_points(
        model, dx, dy, x, y, grid, range(grid.n_points), batch_size=6, device="cpu"
    )
    paths = []
    for k in range(3):
        idx = shard_indices(grid.n_points, 3, k)
        res = evaluate_points(
            copy.deepcopy(model), dx, dy, x, y, grid, idx, batch_size=6, device="cpu"
        )
        paths.append(tmp_path / f"shard~{k}.npz")
        write_shard(paths[-1], grid, idx, res, _meta(model, dx, dy, 3, k))
    out = tmp_path / "surface.h5"
    gather(paths[::-1], out, {"note": "test", "config": {"a": 1}})
    xs, ys, loss = read_surface(out)
    np.testing.assert_array_equal(xs, grid.xcoordinates)
    np.testing.assert_array_equal(ys, grid.ycoordinates)
    assert loss.shape == (3, 5)
    want = np.array([full[p][0] for p in range(15)]).reshape(3, 5)
    np.testing.assert_array_equal(loss, want)
    with h5py.File(out) as f:
        acc = f["train_acc"][...]
        assert f.attrs["run"] == "run~t" and f.attrs["direction_seed"] == 42
        assert f.attrs["note"] == "test" and "shard~0.npz" in f.attrs["shards"]
        assert f.attrs["split"] == "train" and f.attrs["acc_unit"] == "percent"
    # Percent, as loss-landscape's plot scripts expect (the shards hold fractions).
    want_acc = 100 * np.array([full[p][1] for p in range(15)]).reshape(3, 5)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-12)
    # [iy, ix] orientation against the independent reference at a corner off the diagonal.
    ref, _ = reference_point(model, dx, dy, grid.xcoordinates[4], grid.ycoordinates[0], x, y)
    assert loss[0, 4] == pytest.approx(ref, rel=1e-5)


def test_resume_skips_finished_points(setup, tmp_path):
    model, dx, dy, x, y = setup
    grid = Grid(-0.3, 0.3, 4, -0.3, 0.3, 3)
    idx = shard_indices(grid.n_points, 1, 0)
    batch = 10  # 23 clips -> 3 forward calls per point
    full = evaluate_points(model, dx, dy, x, y, grid, idx, batch_size=batch, device="cpu")
    partial = tmp_path / "shard~0.partial.json"
    calls = {"n": 0}

    def interrupt(*_):
        calls["n"] += 1
        if calls["n"] > 5 * 3:  # dies during the 6th point
            raise KeyboardInterrupt

    h = model.register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        evaluate_points(
            model,
            dx,
            dy,
            x,
            y,
            grid,
            idx,
            batch_size=batch,
            device="cpu",
            partial_path=partial,
            save_every=2,
        )
    h.remove()
    assert partial.exists()

    calls["n"] = 0
    h = model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    res = evaluate_points(
        model,
        dx,
        dy,
        x,
        y,
        grid,
        idx,
        batch_size=batch,
        device="cpu",
        partial_path=partial,
        save_every=2,
    )
    h.remove()
    assert calls["n"] == (12 - 5) * 3  # the 5 finished points were saved and not recomputed
    assert res == full  # bit-exact, including the points read back from the partial file

    with pytest.raises(ValueError, match="shard~0.partial.json"):
        evaluate_points(
            model, dx, dy, x, y, grid, idx[:6], batch_size=batch, device="cpu", partial_path=partial
        )


# --- gather refusals and surface reading --------------------------------------------------


@pytest.fixture
def shard_set(setup, tmp_path):
    model, dx, dy, x, y = setup
    grid = Grid(-0.2, 0.2, 3, -0.2, 0.2, 2)
    paths = []
    for k in range(2):
        idx = shard_indices(grid.n_points, 2, k)
        res = {int(p): (float(p), 0.5) for p in idx}  # stand-in values: only layout matters
        paths.append(tmp_path / f"shard~{k}.npz")
        write_shard(paths[-1], grid, idx, res, _meta(model, dx, dy, 2, k))
    return grid, paths, _meta(model, dx, dy, 2, 1)


def test_gather_stand_in_values_land_at_flat_index(shard_set, tmp_path):
    _, paths, _ = shard_set
    gather(paths, tmp_path / "s.h5")
    _, _, loss = read_surface(tmp_path / "s.h5")
    np.testing.assert_array_equal(loss, np.arange(6.0).reshape(2, 3))


def test_gather_refuses_missing(shard_set, tmp_path):
    with pytest.raises(ValueError, match=r"missing.*shard~0\.npz"):
        gather(shard_set[1][:1], tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_gather_refuses_duplicates(shard_set, tmp_path):
    grid, paths, meta = shard_set
    dup = tmp_path / "copy.npz"
    dup.write_bytes(paths[1].read_bytes())
    with pytest.raises(ValueError, match=r"shard~1\.npz and .*copy\.npz"):
        gather([*paths, dup], tmp_path / "s.h5")


@pytest.mark.parametrize("what", ["grid", "fingerprint", "run", "direction_seed"])
def test_gather_refuses_mixed(shard_set, tmp_path, what):
    grid, paths, meta = shard_set
    idx = shard_indices(grid.n_points, 2, 1)
    res = {int(p): (1.0, 0.5) for p in idx}
    meta = dict(meta)
    if what == "grid":
        grid = Grid(-0.3, 0.3, 3, -0.2, 0.2, 2)
    elif what == "fingerprint":
        meta["fingerprint"] = "0" * 64
    elif what == "run":
        meta["run"] = "run~other"
    else:
        meta["direction_seed"] = 43
    odd = tmp_path / "odd.npz"
    write_shard(odd, grid, idx, res, meta)
    with pytest.raises(ValueError, match=rf"odd\.npz: {what} .*shard~0\.npz"):
        gather([paths[0], odd], tmp_path / "s.h5")


def test_gather_refuses_foreign_file(shard_set, tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz"):
        gather([shard_set[1][0], foreign], tmp_path / "s.h5")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(shard_set[1][1].read_bytes()[:100])
    with pytest.raises(ValueError, match="trunc.npz"):
        gather([shard_set[1][0], trunc], tmp_path / "s.h5")


def test_read_surface_refusals(shard_set, tmp_path):
    good = tmp_path / "good.h5"
    gather(shard_set[1], good)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="trunc.h5"):
        read_surface(trunc)
    no_loss = tmp_path / "noloss.h5"
    with h5py.File(no_loss, "w") as f:
        f["xcoordinates"] = np.zeros(3)
        f["ycoordinates"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"noloss\.h5.*'train_loss'"):
        read_surface(no_loss)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["xcoordinates"] = np.zeros(3)
        f["ycoordinates"] = np.zeros(2)
        f["train_loss"] = np.zeros((3, 2))  # [ix, iy]: transposed
    with pytest.raises(ValueError, match="wrong.h5"):
        read_surface(wrong)
    with pytest.raises(ValueError, match="absent.h5"):
        read_surface(tmp_path / "absent.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(ValueError, match="text.h5"):
        read_surface(text)


def test_write_shard_requires_meta_and_results(shard_set, tmp_path):
    grid, _, meta = shard_set
    meta = {k: v for k, v in meta.items() if k != "fingerprint"}
    with pytest.raises(ValueError, match="fingerprint"):
        write_shard(tmp_path / "x.npz", grid, [0], {0: (1.0, 1.0)}, meta)
    with pytest.raises(ValueError, match="grid point 1"):
        write_shard(tmp_path / "x.npz", grid, [0, 1], {0: (1.0, 1.0)}, shard_set[2])


def test_plot_surface_writes_pngs(tmp_path):
    x = np.linspace(-0.25, 0.25, 5)
    xx, yy = np.meshgrid(x, x[:4])
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = x[:4]
        f["train_loss"] = 0.1 + 30 * (xx**2 + yy**2)  # spans > 10x: log levels
    plot_surface(p, tmp_path / "c.png", tmp_path / "d.png", "bowl")
    for name in ("c.png", "d.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
