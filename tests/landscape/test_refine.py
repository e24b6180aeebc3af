"""A surface computed fast, with the points that decide the sharpness re-evaluated in IEEE
float32 (landscape.refine_surface, sharpness.decisive_points): every sharpness variant equals
the IEEE float32 one exactly."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import torch

from ascsharp.core.surface import Grid, gather, write_shard
from ascsharp.landscape.compute import REFINE_RTOL, evaluate_points, refine_surface
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
    rtol = 0.02
    rng = np.random.default_rng(100 + seed)
    fast = {}
    for p, (loss, acc) in exact.items():
        err = noise_over_bound * rtol * max(abs(loss), 1.0) * rng.uniform(-1, 1)
        fast[p] = (loss + err, acc)
    asked = []

    def ieee(points, round_):
        asked.extend(points)
        return {p: exact[p] for p in points}

    merged, info = refine_surface(fast, ieee, PAPER_GRID, 0.25, rtol, LOG)
    assert every_sharpness(PAPER_GRID, merged) == every_sharpness(PAPER_GRID, exact)
    assert every_sharpness(PAPER_GRID, fast) != every_sharpness(PAPER_GRID, exact)
    assert len(asked) == len(set(asked)) == len(info["refined_points"]) < PAPER_GRID.n_points
    assert sorted(asked) == info["refined_points"]
    assert info["refined_fast_loss"] == [fast[p][0] for p in info["refined_points"]]
    if noise_over_bound > 1:
        assert info["refine_rtol"] > rtol  # widened, since re-evaluated points showed it
    assert info["refine_max_error"] <= info["refine_rtol"]


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


def test_bfloat16_on_cpu_refined_to_the_float32_sharpness():
    """A small CNN10 on the paper's grid: the bfloat16 surface's sharpness differs from the IEEE
    float32 one; refined, every variant equals it exactly (bit for bit)."""
    from ascsharp.train.models import build_model

    torch.manual_seed(5)
    model = build_model("cnn10", width=1 / 16, n_mels=32, n_classes=10).train()
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(12, 32, 24, generator=g), torch.randint(0, 10, (12,), generator=g)
    adam = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):  # a minimum to sit in: the surface rises from ~1.7 to ~18
        adam.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        adam.step()
    model.eval()
    dx, dy = make_directions(model, "run~refine", 42)
    kw = {"batch_size": 12, "device": "cpu", "log": LOG}
    every = range(PAPER_GRID.n_points)
    ieee = evaluate_points(model, dx, dy, x, y, PAPER_GRID, every, precision="float32", **kw)
    fast = evaluate_points(model, dx, dy, x, y, PAPER_GRID, every, precision="bfloat16", **kw)

    def reevaluate(points, round_):
        return evaluate_points(model, dx, dy, x, y, PAPER_GRID, points, precision="float32", **kw)

    merged, info = refine_surface(fast, reevaluate, PAPER_GRID, 0.25, REFINE_RTOL["bfloat16"], LOG)
    want = every_sharpness(PAPER_GRID, ieee)
    assert every_sharpness(PAPER_GRID, fast) != want
    assert every_sharpness(PAPER_GRID, merged) == want
    assert all(merged[p] == ieee[p] for p in info["refined_points"])
    assert len(info["refined_points"]) < PAPER_GRID.n_points / 4  # 11 of 121 when written


def test_refining_needs_the_whole_grid():
    part = {p: (1.0, 0.5) for p in range(0, PAPER_GRID.n_points, 2)}
    with pytest.raises(ValueError, match="whole grid in one job"):
        refine_surface(part, lambda p, r: {}, PAPER_GRID, 0.25, 0.01, LOG)


def test_surface_h5_records_the_refined_points(tmp_path):
    grid = Grid(-0.25, 0.25, 3, -0.25, 0.25, 3)
    exact = {p: (1.0 + p, 0.5) for p in range(9)}
    fast = {p: (v[0] * 1.001, v[1]) for p, v in exact.items()}
    merged, info = refine_surface(fast, lambda pts, r: {p: exact[p] for p in pts}, grid, 0.25,
                                  0.01, LOG)  # fmt: skip
    meta = {"run": "r", "direction_seed": 42, "fingerprint": "f", "n_shards": 1, "shard": 0,
            "split": "train", "precision": "bfloat16", **info}  # fmt: skip
    write_shard(tmp_path / "shard~0.npz", grid, range(9), merged, meta)
    gather([tmp_path / "shard~0.npz"], tmp_path / "surface.h5")
    with h5py.File(tmp_path / "surface.h5") as f:
        assert json.loads(f.attrs["refined_points"]) == info["refined_points"]
        assert f.attrs["refined_precision"] == "float32"
        assert f.attrs["precision"] == "bfloat16"
        for p in info["refined_points"]:
            assert f["train_loss"][divmod(p, 3)] == exact[p][0]
