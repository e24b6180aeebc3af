"""A surface computed fast, with the points that decide the sharpness re-evaluated in IEEE
float32 (landscape.refine_surface, sharpness.decisive_points): every sharpness variant equals
the IEEE float32 one exactly."""

from __future__ import annotations

import copy
import json
import logging
import math

import h5py
import numpy as np
import pytest
import torch

from ascsharp.core.surface import Grid, gather, write_shard
from ascsharp.landscape.compute import (
    REFINE_BOUND,
    RefineBound,
    evaluate_points,
    refine_surface,
)
from ascsharp.landscape.directions import make_directions
from ascsharp.landscape.sharpness import REFERENCES, REGIONS, decisive_points, sharpness

torch.set_num_threads(1)
LOG = logging.getLogger("test_refine")
PAPER_GRID = Grid(-0.25, 0.25, 11, -0.25, 0.25, 11)


def every_sharpness(grid: Grid, results: dict[int, tuple[float, float]]) -> dict:
    loss = np.array([results[p][0] for p in range(grid.n_points)])
    loss = loss.reshape(grid.ynum, grid.xnum)
    x, y = grid.xcoordinates, grid.ycoordinates
    return {(region, ref): sharpness(x, y, loss, radius=0.25, reference=ref, region=region)
            for region in REGIONS for ref in REFERENCES}  # fmt: skip


def bowl(grid: Grid, seed: int) -> dict[int, tuple[float, float]]:
    """An 'exact' surface: a tilted bowl with bumps, so that min and max are not obvious."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(grid.n_points):
        a, b = grid.coords(p)
        loss = 0.4 + 20 * (a - 0.03) ** 2 + 12 * b**2 + 0.05 * rng.standard_normal()
        out[p] = (float(loss), float(rng.random()))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("noise_over_bound", [0.9, 3.0])
def test_refined_sharpness_equals_the_exact_one(seed, noise_over_bound):
    """Fast values off by up to 0.9x the stated bound (holds) or 3x (too tight: the bound must
    widen); after refining, every variant is exactly the exact surface's, and only a share of
    the grid was re-evaluated."""
    exact = bowl(PAPER_GRID, seed)
    bound = RefineBound(rtol=0.05, atol=0.01, ctol=0.04)  # both parts decide: losses 0.3..2.4
    rng = np.random.default_rng(100 + seed)
    fast = {}
    for p, (loss, acc) in exact.items():
        err = noise_over_bound * float(bound(np.array(loss))) * rng.uniform(-1, 1)
        fast[p] = (loss + err, acc)
    asked = []

    def ieee(points, round_):
        asked.extend(points)
        return {p: exact[p] for p in points}

    merged, info = refine_surface(fast, ieee, PAPER_GRID, 0.25, bound, LOG)
    assert every_sharpness(PAPER_GRID, merged) == every_sharpness(PAPER_GRID, exact)
    assert every_sharpness(PAPER_GRID, fast) != every_sharpness(PAPER_GRID, exact)
    assert len(asked) == len(set(asked)) == len(info["refined_points"]) < PAPER_GRID.n_points
    assert sorted(asked) == info["refined_points"]
    assert info["refined_fast_loss"] == [fast[p][0] for p in info["refined_points"]]
    widened = info["refine_rtol"] / bound.rtol
    assert info["refine_atol"] == pytest.approx(widened * bound.atol)
    assert info["refine_ctol"] == pytest.approx(widened * bound.ctol)
    assert widened > 1 if noise_over_bound > 1 else widened == 1  # re-evaluated points show it
    assert info["refine_max_ratio"] <= widened
    errors = [abs(fast[p][0] - exact[p][0]) for p in info["refined_points"]]
    assert info["refine_max_error"] == max(errors)


def test_decisive_points_keep_the_origin_and_nonfinite_points():
    x = y = np.linspace(-0.25, 0.25, 5)
    loss = np.full((5, 5), 1.0) + np.arange(25).reshape(5, 5) * 0.1
    loss[0, 0] = np.nan
    # exact values (zero bound): the NaN, the origin, the grid minimum (0, 1), the square's
    # maximum (4, 4) and both disks' maximum (4, 2): on the disk k_x^2 + k_y^2 <= 4 the row
    # k_y = 2 holds only k_x = 0, and row 3 ends at 1 + 0.1 * 18 < 1 + 0.1 * 22
    mask = decisive_points(x, y, loss, np.zeros_like(loss), 0.25)
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 0), (0, 1), (2, 2), (4, 2), (4, 4)]
    # a bound of 0.12 adds the points within 0.24 of an extreme: (0, 2) and (0, 3) (1.2, 1.3)
    # for the minimum 1.1, (4, 3) (3.3) for the square's 3.4; the disk's next, (3, 3) at 2.8,
    # stays out of reach of its 3.2
    wide = decisive_points(x, y, loss, np.full_like(loss, 0.12), 0.25)
    assert sorted(zip(*np.nonzero(wide), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (0, 3), (2, 2), (4, 2), (4, 3), (4, 4)
    ]  # fmt: skip


# The tiny CNN10s that bench_refine.py measures with `--width 0.0625 --frames 24 --mels 32
# --classes 4 --clips 16 --lr 1e-2 --seed 5 --epochs 10 80` (part of REFINE_BOUND's evidence):
# learnable clips, Adam; an ordinary loss (10 epochs: surface ~0.5..0.9) and a low one (80: from
# ~6e-6 at the minimum, a surface where the old bound rtol * max(|L|, 1) refined nearly every
# point, as on the H200). bfloat16 and float16 are CPU autocast; tf32 is IEEE float32 on a CPU.
TRAINED_EPOCHS = {"ordinary": 10, "low": 80}
FAST = ("bfloat16", "float16")
OLD_RTOL = {"bfloat16": 3e-2, "float16": 5e-3}  # REFINE_RTOL before 2026-12-04


@pytest.fixture(scope="module")
def trained():
    """{loss level: (model, x, y, dx, dy, {precision: surface})}, surfaces on the paper grid."""
    from benchmarks.bench_refine import learnable_clips, train_epochs

    from ascsharp.train.models import build_model
    from ascsharp.train.optim import make_stepper

    torch.manual_seed(5)
    model = build_model("cnn10", width=1 / 16, n_mels=32, n_classes=4)
    x, y = learnable_clips(16, 24, "cpu", mels=32, classes=4)
    stepper = make_stepper("adam", model, 1e-2, seed=5)
    out, done = {}, 0
    for level, epochs in TRAINED_EPOCHS.items():
        train_epochs(stepper, model, x, y, epochs - done)
        done = epochs
        frozen = copy.deepcopy(model).eval()
        dx, dy = make_directions(frozen, "bench-refine", 42)
        surfaces = {
            precision: evaluate_points(frozen, dx, dy, x, y, PAPER_GRID, range(PAPER_GRID.n_points),
                                       batch_size=16, device="cpu", log=LOG, precision=precision)
            for precision in ("float32", *FAST)
        }  # fmt: skip
        out[level] = (frozen, x, y, dx, dy, surfaces)
    return out


def refine_trained(trained, level: str, precision: str, bound: RefineBound):
    """refine_surface on a trained model's fast surface, re-evaluating in IEEE float32."""
    model, x, y, dx, dy, surfaces = trained[level]

    def reevaluate(points, round_):
        return evaluate_points(model, dx, dy, x, y, PAPER_GRID, points, batch_size=16,
                               device="cpu", log=LOG, precision="float32")  # fmt: skip

    return refine_surface(surfaces[precision], reevaluate, PAPER_GRID, 0.25, bound, LOG)


@pytest.mark.parametrize("precision", FAST)
@pytest.mark.parametrize("level", TRAINED_EPOCHS)
def test_refined_trained_surface_is_ieee_exact(trained, level, precision):
    """On a trained model at an ordinary and at a low loss: the stated bound (REFINE_BOUND)
    holds at every grid point, and refined, every sharpness variant is bit-identical to the
    IEEE float32 surface's, without widening."""
    surfaces = trained[level][-1]
    ieee, fast = surfaces["float32"], surfaces[precision]
    bound = REFINE_BOUND[precision]
    for p in range(PAPER_GRID.n_points):
        assert abs(fast[p][0] - ieee[p][0]) <= bound(np.array(fast[p][0]))
    merged, info = refine_trained(trained, level, precision, bound)
    want = every_sharpness(PAPER_GRID, ieee)
    assert every_sharpness(PAPER_GRID, merged) == want
    assert all(merged[p] == ieee[p] for p in info["refined_points"])
    assert info["refine_max_ratio"] <= 1 and info["refine_rtol"] == bound.rtol
    if precision == "bfloat16":
        assert every_sharpness(PAPER_GRID, fast) != want  # refining changed something


@pytest.mark.parametrize("precision", FAST)
def test_low_loss_refines_few_points(trained, precision):
    """At a low loss the old bound, rtol * max(|L|, 1) (absolute below 1), refines every point,
    as it did on the H200; the relative bound with its measured floor refines a few."""
    surfaces = trained["low"][-1]
    loss = np.array([surfaces[precision][p][0] for p in range(PAPER_GRID.n_points)])
    loss = loss.reshape(PAPER_GRID.ynum, PAPER_GRID.xnum)
    old = OLD_RTOL[precision] * np.maximum(np.abs(loss), 1.0)
    x, y = PAPER_GRID.xcoordinates, PAPER_GRID.ycoordinates
    assert decisive_points(x, y, loss, old, 0.25).all()
    _, info = refine_trained(trained, "low", precision, REFINE_BOUND[precision])
    assert len(info["refined_points"]) <= PAPER_GRID.n_points // 4


def test_too_tight_bound_widens_on_a_trained_model(trained):
    """A stated bound 1000x too tight: the re-evaluated points show it, the bound widens and the
    refined sharpness is still the IEEE one."""
    bound = REFINE_BOUND["bfloat16"].scaled(1e-3)
    merged, info = refine_trained(trained, "low", "bfloat16", bound)
    surfaces = trained["low"][-1]
    assert every_sharpness(PAPER_GRID, merged) == every_sharpness(PAPER_GRID, surfaces["float32"])
    assert info["refine_max_ratio"] > 1
    widened = info["refine_rtol"] / bound.rtol
    assert widened >= info["refine_max_ratio"]
    assert info["refine_atol"] / bound.atol == pytest.approx(widened)


def test_refining_needs_the_whole_grid():
    part = {p: (1.0, 0.5) for p in range(0, PAPER_GRID.n_points, 2)}
    with pytest.raises(ValueError, match="whole grid in one job"):
        refine_surface(part, lambda p, r: {}, PAPER_GRID, 0.25, RefineBound(0.01, 1e-6, 0.01), LOG)


def test_refine_bound_by_hand():
    """min(rtol * |L| + atol, ctol * max(|L|, 1)); a non-finite loss gets the floor."""
    bound = RefineBound(rtol=0.1, atol=1e-3, ctol=0.02)
    loss = np.array([0.0, -1e-3, 0.1, 1.0, 5.0, np.nan, np.inf])
    want = [1e-3, 1.1e-3, 0.011, 0.02, 0.1, 1e-3, 1e-3]
    np.testing.assert_allclose(bound(loss), want, rtol=1e-12)
    np.testing.assert_allclose(bound.scaled(3)(loss), np.multiply(want, 3), rtol=1e-12)


@pytest.mark.parametrize(
    "parts", [(-0.01, 1e-6, 0.01), (0.01, 0.0, 0.01), (0.01, 1e-6, 0.0), (math.nan, 1e-6, 0.01)]
)
def test_refine_bound_must_be_positive(parts):
    with pytest.raises(ValueError, match="rtol >= 0, atol > 0 and ctol > 0"):
        RefineBound(*parts)


def test_surface_h5_records_the_refined_points(tmp_path):
    grid = Grid(-0.25, 0.25, 3, -0.25, 0.25, 3)
    exact = {p: (1.0 + p, 0.5) for p in range(9)}
    fast = {p: (v[0] * 1.001, v[1]) for p, v in exact.items()}
    merged, info = refine_surface(fast, lambda pts, r: {p: exact[p] for p in pts}, grid, 0.25,
                                  RefineBound(0.01, 1e-6, 0.01), LOG)  # fmt: skip
    meta = {"run": "r", "direction_seed": 42, "fingerprint": "f", "n_shards": 1, "shard": 0,
            "split": "train", "precision": "bfloat16", **info}  # fmt: skip
    write_shard(tmp_path / "shard~0.npz", grid, range(9), merged, meta)
    gather([tmp_path / "shard~0.npz"], tmp_path / "surface.h5")
    with h5py.File(tmp_path / "surface.h5") as f:
        assert json.loads(f.attrs["refined_points"]) == info["refined_points"]
        assert f.attrs["refined_precision"] == "float32"
        assert f.attrs["precision"] == "bfloat16"
        assert f.attrs["refine_ctol"] == info["refine_ctol"]
        for p in info["refined_points"]:
            assert f["train_loss"][divmod(p, 3)] == exact[p][0]
