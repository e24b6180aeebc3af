"""Sharpness of a 2-D loss surface, as in Milling et al. (ICASSP 2024), with its variants.

    sharpness = 100 * (max{L(p) : p in region} - ref) / (1 + ref)

ref is the minimum over the whole grid ("grid-min", the paper) or the loss at the origin
("centre"). Regions around the origin with radius r:

- "legacy-disk": the original code's test `x**2 + y**2 <= r**2` evaluated in float64 on the
  np.linspace coordinates (on a meshgrid). On the paper grid (11 x 11 on [-0.25, 0.25]^2,
  r = 0.25) it keeps 77 points: (0.2, 0.15), (0.15, 0.2), (-0.2, 0.15) and (0.15, -0.2) drop out
  because linspace gives 0.15000000000000002 there, so x**2 + y**2 rounds just above r**2.
  (-0.15 is exact, hence the asymmetry.) Kept for parity with the published numbers.
- "disk": the exact lattice disk (81 points on the paper grid). On a uniform lattice through 0
  with equal steps the test is done on integer offsets; otherwise with a relative tolerance of
  1e-9, so float noise cannot decide membership.
- "square": |x| <= r and |y| <= r (same tolerance).

Diverged points: a non-finite loss (NaN or inf) inside the region counts as infinitely high,
so sharpness is inf and `finite` is False; the workflow keeps going and the flag travels to
the tables. The grid minimum is taken over finite values only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ascsharp.core.io import json_safe
from ascsharp.core.settings import setting
from ascsharp.core.surface import read_surface, run_surfaces

REGIONS = ("legacy-disk", "disk", "square")
REFERENCES = ("grid-min", "centre")
_RTOL = 1e-9
# The study's sharpness: radius 0.25 (sharpness.radius's default in the schema), the
# floating-point disk, referenced to the grid minimum. Defaults of the user-facing `ascsharp
# sharpness`; the workflow passes config values.
PAPER = {
    "radius": setting("sharpness.radius")["default"],
    "region": "legacy-disk",
    "reference": "grid-min",
}


def _lattice(c: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Integer offsets and step if `c` is a uniform lattice containing 0 (to float noise)."""
    if len(c) < 2:
        return None
    step = (c[-1] - c[0]) / (len(c) - 1)
    if step <= 0:
        return None
    k = np.rint(c / step)
    scale = max(float(np.abs(c).max()), step)
    if not np.all(np.abs(c - k * step) <= 1e-9 * scale) or not np.all(np.diff(k) == 1):
        return None
    return k.astype(np.int64), float(step)


def region_mask(x: np.ndarray, y: np.ndarray, radius: float, region: str) -> np.ndarray:
    """Boolean mask [iy, ix] of the lattice points in the region."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be positive and finite, got {radius!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xx, yy = np.meshgrid(x, y)
    if region == "legacy-disk":
        return xx**2 + yy**2 <= radius**2
    if region == "square":
        tol = radius * (1 + _RTOL)
        return (np.abs(xx) <= tol) & (np.abs(yy) <= tol)
    lx, ly = _lattice(x), _lattice(y)
    if lx is not None and ly is not None and math.isclose(lx[1], ly[1], rel_tol=_RTOL):
        kx, ky = np.meshgrid(lx[0], ly[0])
        rr = (radius / lx[1]) ** 2
        if abs(rr - round(rr)) <= _RTOL * max(rr, 1.0):
            rr = round(rr)
        return kx**2 + ky**2 <= rr
    return xx**2 + yy**2 <= radius**2 * (1 + _RTOL)


def _origin(x: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()), 1e-300)
    ix = np.flatnonzero(np.abs(x) <= 1e-12 * scale)
    iy = np.flatnonzero(np.abs(y) <= 1e-12 * scale)
    return (int(iy[0]), int(ix[0])) if ix.size and iy.size else None


def sharpness(
    x: np.ndarray,
    y: np.ndarray,
    loss: np.ndarray,
    *,
    radius: float,
    reference: str,
    region: str,
) -> dict[str, Any]:
    """Sharpness of loss[iy, ix] on coordinates (x, y), with what it was computed from.

    Keys: sharpness, reference_loss, max_loss, points (lattice points in the region),
    centre_loss (None if the grid has no origin), grid_min_loss, argmax (alpha, beta of the max),
    nonfinite_points (in the region), finite, and the arguments.
    """
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or loss.shape != (len(y), len(x)):
        raise ValueError(
            f"loss shape {loss.shape} does not match (len(y), len(x)) = ({len(y)}, {len(x)})"
        )
    mask = region_mask(x, y, radius, region)
    n_points = int(mask.sum())
    if n_points == 0:
        raise ValueError(f"no grid point within radius {radius} ({region})")

    finite = np.isfinite(loss)
    grid_min = float(loss[finite].min()) if finite.any() else math.nan
    origin = _origin(x, y)
    centre = float(loss[origin]) if origin is not None else None
    if reference == "centre":
        if origin is None:
            raise ValueError("reference 'centre' needs a grid point at alpha = beta = 0")
        ref = centre
    else:
        ref = grid_min

    # A diverged point is as high as it gets: treat NaN and inf as +inf.
    region_loss = np.where(mask & finite, loss, np.where(mask, np.inf, -np.inf))
    iy, ix = np.unravel_index(int(np.argmax(region_loss)), loss.shape)
    max_loss = float(region_loss[iy, ix])
    nonfinite = int((mask & ~finite).sum())
    if math.isfinite(ref) and ref <= -1.0:  # the formula divides by 1 + ref
        raise ValueError(f"reference loss {ref} <= -1: not a cross-entropy surface")
    if not math.isfinite(ref):
        value = math.nan
    else:
        value = 100.0 * (max_loss - ref) / (1.0 + ref)
    return {
        "sharpness": value,
        "reference_loss": ref,
        "max_loss": max_loss,
        "points": n_points,
        "centre_loss": centre,
        "grid_min_loss": grid_min,
        "argmax": [float(x[ix]), float(y[iy])],
        "nonfinite_points": nonfinite,
        "finite": bool(math.isfinite(value)),
        "radius": float(radius),
        "region": region,
        "reference": reference,
    }


def decisive_points(
    x: np.ndarray, y: np.ndarray, loss: np.ndarray, bound: np.ndarray, radius: float
) -> np.ndarray:
    """Mask [iy, ix] of the points whose exact loss may decide some sharpness at `radius`,
    when each exact loss is known only to lie within loss ± bound (a fast forward's values).

    Every variant (each region and reference) is decided by the grid minimum, the maximum in
    its region and the loss at the origin. The exact minimum lies at a point whose lower bound
    is at most the smallest upper bound; a region's exact maximum at a point whose upper bound
    is at least the region's largest lower bound. Replacing the loss at these points, the
    origin and every non-finite point by exact values therefore gives every sharpness variant
    exactly: any other point's fast value is strictly inside (min, max) of the exact ones.
    """
    loss = np.asarray(loss, dtype=np.float64)
    bound = np.asarray(bound, dtype=np.float64)
    finite = np.isfinite(loss)
    decisive = ~finite
    if finite.any():
        lo, hi = loss - bound, loss + bound
        decisive |= finite & (lo <= hi[finite].min())
        for region in REGIONS:
            inside = region_mask(x, y, radius, region) & finite
            if inside.any():
                decisive |= inside & (hi >= lo[inside].max())
    origin = _origin(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if origin is not None:
        decisive[origin] = True
    return decisive


def sharpness_from_h5(
    path: str | Path, *, radius: float, reference: str, region: str
) -> dict[str, Any]:
    """sharpness() of a surface.h5 (its `<split>_loss` [iy, ix])."""
    x, y, loss = read_surface(path)
    result = sharpness(x, y, loss, radius=radius, reference=reference, region=region)
    return {**result, "file": str(path)}


def aggregate(per_seed: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; NaN for one seed) and max over direction seeds, as the paper."""
    v = np.asarray(list(per_seed), dtype=np.float64)
    if v.size == 0:
        raise ValueError("aggregate: no sharpness values given")
    with np.errstate(invalid="ignore"):
        std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return {"mean": float(np.mean(v)), "std": std, "max": float(np.max(v)), "n": int(v.size)}


def all_variants(paths: Sequence[str | Path], radius: float) -> dict[str, Any]:
    """Every region x reference for each direction seed of one run, and aggregated over seeds.

    The run and the direction seeds are read from the surfaces (as gather wrote them), never
    from their paths; surfaces of different runs or a repeated seed are refused.
    Layout: {"run", "radius", "default": {region, reference}, "files": {seed: path},
    "per_seed": {seed: {region: {reference: result}}},
    "aggregate": {region: {reference: {mean, std, max, n, finite}}}}. A variant that cannot be
    computed (centre reference without an origin) holds {"error": message}.
    """
    run, path_by_seed = run_surfaces(paths)
    seeds = list(path_by_seed)
    surfaces = {s: read_surface(path_by_seed[s]) for s in seeds}
    per_seed: dict[str, Any] = {}
    agg: dict[str, Any] = {}
    for region in REGIONS:
        agg[region] = {}
        for reference in REFERENCES:
            values, ok = [], True
            for s in seeds:
                x, y, loss = surfaces[s]
                try:
                    res = sharpness(x, y, loss, radius=radius, reference=reference, region=region)
                except ValueError as e:
                    res, ok = {"error": f"{path_by_seed[s]}: {e}"}, False
                per_seed.setdefault(str(s), {}).setdefault(region, {})[reference] = res
                if ok:
                    values.append(res["sharpness"])
            if ok:
                a = aggregate(values)
                agg[region][reference] = {**a, "finite": bool(np.all(np.isfinite(values)))}
            else:
                agg[region][reference] = {"error": "not available for every seed"}
    return json_safe(
        {
            "run": run,
            "radius": float(radius),
            "default": {"region": PAPER["region"], "reference": PAPER["reference"]},
            "files": {str(s): str(path_by_seed[s]) for s in seeds},
            "per_seed": per_seed,
            "aggregate": agg,
        }
    )


def read_run_sharpness(path: str | Path) -> dict[str, Any]:
    """A run's sharpness file as `all_variants` wrote it (results/sharpness/{run}.json), or a
    one-line error naming the file."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable sharpness file ({e})") from None
    missing = [k for k in ("run", "radius", "default", "per_seed") if k not in result]
    if not isinstance(result, dict) or missing:
        raise ValueError(f"{path}: not a sharpness file (missing {missing})")
    return result


def seed_sharpness(result: Mapping[str, Any], seed: int) -> float:
    """The run's default sharpness variant (the study's) of one direction seed; NaN where it is
    undefined (written as null)."""
    default = result["default"]
    try:
        value = result["per_seed"][str(seed)][default["region"]][default["reference"]]
    except KeyError:
        raise ValueError(f"sharpness of {result['run']}: no direction seed {seed}") from None
    v = value.get("sharpness")
    return float("nan") if v is None else float(v)
