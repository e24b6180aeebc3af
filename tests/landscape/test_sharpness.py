"""Sharpness on closed-form surfaces, the paper grid's legacy mask, and the paper's aggregates."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from ascsharp.landscape import sharpness as sharpness_module
from ascsharp.landscape.sharpness import PAPER, aggregate, all_variants, region_mask


def sharpness(x, y, loss, **kw):
    """The library function with the paper's settings for whatever a test leaves out."""
    return sharpness_module.sharpness(x, y, loss, **{**PAPER, **kw})


def sharpness_from_h5(path, **kw):
    return sharpness_module.sharpness_from_h5(path, **{**PAPER, **kw})


R = 0.25
X = np.linspace(-0.25, 0.25, 11)  # the paper grid
Y = np.linspace(-0.25, 0.25, 11)
XX, YY = np.meshgrid(X, Y)  # [iy, ix]


def bowl(a=2.0, b=None, c=0.5, x0=0.0, y0=0.0):
    b = a if b is None else b
    return a * (XX - x0) ** 2 + b * (YY - y0) ** 2 + c


def test_isotropic_bowl_exact_disk():
    a, c = 2.0, 0.5
    res = sharpness(X, Y, bowl(a, c=c), radius=R, region="disk", reference="grid-min")
    assert res["points"] == 81
    assert res["max_loss"] == pytest.approx(a * R**2 + c, rel=1e-12)
    assert res["grid_min_loss"] == c
    assert res["reference_loss"] == c
    assert res["centre_loss"] == c
    assert res["sharpness"] == pytest.approx(100 * a * R**2 / (1 + c), rel=1e-12)
    assert res["finite"] is True


def test_anisotropic_bowl_disk_and_square():
    a, b, c = 3.0, 1.0, 0.2
    loss = bowl(a, b, c)
    disk = sharpness(X, Y, loss, radius=R, region="disk")
    # Max of a x^2 + b y^2 on the disk with a > b is at (+-r, 0).
    assert disk["max_loss"] == pytest.approx(a * R**2 + c, rel=1e-12)
    assert abs(disk["argmax"][0]) == pytest.approx(R) and disk["argmax"][1] == 0
    sq = sharpness(X, Y, loss, radius=R, region="square")
    assert sq["points"] == 121
    assert sq["max_loss"] == pytest.approx((a + b) * R**2 + c, rel=1e-12)
    assert sq["sharpness"] == pytest.approx(100 * (a + b) * R**2 / (1 + c), rel=1e-12)


def test_square_isotropic_max_at_corner():
    a, c = 2.0, 0.5
    res = sharpness(X, Y, bowl(a, c=c), radius=R, region="square")
    assert res["max_loss"] == pytest.approx(2 * a * R**2 + c, rel=1e-12)


def test_square_smaller_radius_counts_inner_lattice():
    # |x|, |y| <= 0.1 keeps offsets -2..2 on each axis: 25 points (0.1 must not drop by noise).
    res = sharpness(X, Y, bowl(), radius=0.1, region="square")
    assert res["points"] == 25


def test_centre_reference_on_offset_bowl_by_hand():
    # Bowl centred on the lattice point (0.1, 0.05): grid min 0.5 there, L(0) = 2*0.0125 + 0.5.
    # The farthest exact-disk point from (0.1, 0.05) is (-0.2, -0.15): distance^2 0.13.
    loss = bowl(2.0, c=0.5, x0=0.1, y0=0.05)
    gm = sharpness(X, Y, loss, region="disk", reference="grid-min")
    ce = sharpness(X, Y, loss, region="disk", reference="centre")
    assert gm["grid_min_loss"] == pytest.approx(0.5, abs=1e-15)
    assert ce["centre_loss"] == pytest.approx(0.525, rel=1e-12)
    assert gm["max_loss"] == pytest.approx(0.76, rel=1e-12)
    assert gm["argmax"] == pytest.approx([-0.2, -0.15])
    assert gm["sharpness"] == pytest.approx(100 * 0.26 / 1.5, rel=1e-12)
    assert ce["sharpness"] == pytest.approx(100 * 0.235 / 1.525, rel=1e-12)
    assert ce["reference_loss"] == ce["centre_loss"]


def test_legacy_disk_keeps_77_of_81_on_paper_grid():
    legacy = region_mask(X, Y, R, "legacy-disk")
    exact = region_mask(X, Y, R, "disk")
    assert legacy.sum() == 77
    assert exact.sum() == 81
    # Exact membership by brute force on integer lattice offsets (step 0.05, r = 5 steps).
    k = np.arange(-5, 6)
    kx, ky = np.meshgrid(k, k)
    np.testing.assert_array_equal(exact, kx**2 + ky**2 <= 25)
    assert not (legacy & ~exact).any()
    iy, ix = np.nonzero(exact & ~legacy)
    dropped = sorted(zip(kx[iy, ix].tolist(), ky[iy, ix].tolist(), strict=True))
    assert dropped == [(-4, 3), (3, -4), (3, 4), (4, 3)]


def test_legacy_max_is_lower_when_peak_sits_on_dropped_point():
    # Peak exactly 1 at (0.2, 0.15), one of the four points the legacy mask drops.
    loss = 1.0 - ((XX - X[9]) ** 2 + (YY - Y[8]) ** 2)
    exact = sharpness(X, Y, loss, region="disk")
    legacy = sharpness(X, Y, loss, region="legacy-disk")
    assert exact["max_loss"] == 1.0 and exact["argmax"] == pytest.approx([0.2, 0.15])
    # Nearest kept neighbours are one step (0.05) away: 1 - 0.0025.
    assert legacy["max_loss"] == pytest.approx(0.9975, rel=1e-12)
    assert legacy["points"] == 77
    assert legacy["sharpness"] < exact["sharpness"]


def test_disk_with_unequal_steps_uses_tolerance():
    x = np.linspace(-0.3, 0.2, 6)  # through 0, step 0.1
    y = np.linspace(-0.2, 0.2, 9)  # through 0, step 0.05: anisotropic steps -> tolerance path
    xx, yy = np.meshgrid(x, y)
    mask = region_mask(x, y, 0.2, "disk")
    kx, ky = np.meshgrid(np.rint(x / 0.1), np.rint(y / 0.05))
    np.testing.assert_array_equal(mask, (kx * 2) ** 2 + ky**2 <= 16)  # in units of 0.05
    loss = xx + yy
    res = sharpness(x, y, loss, radius=0.2, region="disk")
    assert res["max_loss"] == pytest.approx((xx + yy)[mask].max())


def test_centre_needs_origin():
    x = np.linspace(-0.25, 0.25, 10)  # even count: no point at 0
    loss = np.zeros((10, 10))
    with pytest.raises(ValueError, match="centre"):
        sharpness(x, x, loss, reference="centre")
    assert sharpness(x, x, loss)["centre_loss"] is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"region": "circle"}, "circle"),
        ({"reference": "median"}, "median"),
        ({"radius": 0.0}, "radius"),
        ({"radius": -1.0}, "radius"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sharpness(X, Y, bowl(), **kw)


def test_empty_region():
    x = np.linspace(-0.25, 0.25, 10)  # no point at 0; nearest at +-0.0278
    with pytest.raises(ValueError, match="no grid point"):
        sharpness(x, x, np.zeros((10, 10)), radius=0.01, region="disk")


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        sharpness(X[:5], Y, bowl())


def test_diverged_point_gives_inf_and_flag():
    loss = bowl()
    loss[5, 7] = np.nan  # inside the region
    loss[0, 0] = np.inf  # outside the disk: ignored by the grid min, not in the region
    res = sharpness(X, Y, loss, region="disk")
    assert res["sharpness"] == math.inf
    assert res["finite"] is False and res["nonfinite_points"] == 1
    assert res["grid_min_loss"] == 0.5
    # Outside the region only: sharpness stays finite.
    loss = bowl()
    loss[0, 0] = np.nan
    assert sharpness(X, Y, loss, region="disk")["finite"] is True


def test_aggregate_paper_row_1():
    agg = aggregate([13.51809093, 13.19714092, 16.84495099])
    assert agg["n"] == 3
    assert agg["mean"] == pytest.approx(14.52006095, abs=1e-8)
    assert agg["std"] == pytest.approx(2.019798879, abs=1e-8)
    assert agg["max"] == 16.84495099


def test_aggregate_edge_cases():
    one = aggregate([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["std"]) and one["n"] == 1
    with pytest.raises(ValueError):
        aggregate([])


def _write_h5(path, x, y, loss, run="arch~cnn10/seed~1", direction_seed=None):
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = loss
        if direction_seed is not None:  # what gather writes
            f.attrs["run"], f.attrs["direction_seed"] = run, direction_seed


def test_sharpness_from_h5(tmp_path):
    p = tmp_path / "surface.h5"
    _write_h5(p, X, Y, bowl(2.0, c=0.5))
    res = sharpness_from_h5(p, region="disk")
    assert res["sharpness"] == pytest.approx(100 * 2.0 * R**2 / 1.5, rel=1e-12)
    assert res["file"] == str(p)
    with pytest.raises(ValueError, match="missing.h5"):
        sharpness_from_h5(tmp_path / "missing.h5")


def test_all_variants(tmp_path):
    paths = {}
    for seed, a in [(42, 1.0), (43, 2.0)]:
        paths[seed] = tmp_path / f"s{seed}.h5"
        _write_h5(paths[seed], X, Y, bowl(a, c=0.5, x0=0.1, y0=0.05), direction_seed=seed)
    paths[44] = tmp_path / "s44.h5"
    loss = bowl(4.0, c=0.5)
    loss[5, 6] = np.nan  # seed 44 diverged next to the origin
    _write_h5(paths[44], X, Y, loss, direction_seed=44)
    out = all_variants(list(paths.values()), radius=R)
    assert out["run"] == "arch~cnn10/seed~1"
    json.dumps(out, allow_nan=False)  # strict JSON
    for region in ("legacy-disk", "disk", "square"):
        for ref in ("grid-min", "centre"):
            want = [
                sharpness(*_read(paths[s]), radius=R, region=region, reference=ref)["sharpness"]
                for s in (42, 43)
            ]
            got = out["per_seed"]["42"][region][ref]["sharpness"]
            assert got == pytest.approx(want[0], rel=1e-12)
            assert out["per_seed"]["43"][region][ref]["sharpness"] == pytest.approx(want[1])
            assert out["per_seed"]["44"][region][ref]["sharpness"] is None
            assert out["per_seed"]["44"][region][ref]["finite"] is False
            agg = out["aggregate"][region][ref]
            assert agg["n"] == 3 and agg["finite"] is False and agg["mean"] is None
    assert out["per_seed"]["42"]["legacy-disk"]["grid-min"]["points"] == 77
    assert out["files"]["43"] == str(paths[43])


def test_all_variants_finite_aggregate(tmp_path):
    paths = {}
    for seed, a in [(1, 1.0), (2, 3.0)]:
        paths[seed] = tmp_path / f"s{seed}.h5"
        _write_h5(paths[seed], X, Y, bowl(a, c=0.0), direction_seed=seed)
    out = all_variants(list(paths.values()), radius=R)
    agg = out["aggregate"]["disk"]["grid-min"]
    vals = [100 * 1.0 * R**2, 100 * 3.0 * R**2]
    assert agg["mean"] == pytest.approx(np.mean(vals))
    assert agg["std"] == pytest.approx(np.std(vals, ddof=1))
    assert agg["finite"] is True


def test_all_variants_reads_identity_from_the_files_not_their_paths(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    _write_h5(a, X, Y, bowl(1.0), direction_seed=42)
    _write_h5(b, X, Y, bowl(1.0), direction_seed=42)
    _write_h5(c, X, Y, bowl(1.0), run="arch~cnn14/seed~1", direction_seed=43)
    with pytest.raises(ValueError, match="direction seed 42 also in"):
        all_variants([a, b], radius=R)
    with pytest.raises(ValueError, match="several runs"):
        all_variants([a, c], radius=R)
    _write_h5(b, X, Y, bowl(1.0))  # a hand-made surface without gather's attributes
    with pytest.raises(ValueError, match=r"b\.h5: attributes 'run' and 'direction_seed'"):
        all_variants([b], radius=R)


def _read(p):
    with h5py.File(p, "r") as f:
        return f["xcoordinates"][...], f["ycoordinates"][...], f["train_loss"][...]


def test_surface_format_and_sharpness_need_no_torch():
    """Reading surfaces and computing sharpness works where torch is absent (an analysis box)."""
    import subprocess
    import sys

    code = (
        "import sys, ascsharp.landscape.sharpness, ascsharp.core.surface;"
        " print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
