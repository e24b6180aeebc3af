"""Run identity: the one place that knows the `{run}` id's format and expands the grid.

A run is one hyperparameter combination, written as a Snakemake Paramspace path
`arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42`. Every artefact stores its run id
(model.pt, metrics.json, surface.h5, the sharpness JSON), so code reads it from there and never
parses it back out of a file path.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pandas as pd

# Order of the `{run}` path segments.
RUN_KEYS: tuple[str, ...] = ("arch", "optimizer", "lr", "batch_size", "seed")
_RUN_TYPES = {"arch": str, "optimizer": str, "lr": float, "batch_size": int, "seed": int}
# The `{run}` wildcard: one `key~value` segment per RUN_KEYS entry, in order.
RUN_PATTERN = "/".join(rf"{k}~[^/]+" for k in RUN_KEYS)


def matches(run: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    """True when `run` has every value of the filter `rule` (its `reason` is ignored)."""
    return all(run[k] == v for k, v in rule.items() if k != "reason")


def expand_grid(grid: Mapping[str, Any]) -> pd.DataFrame:
    """All runs to train: union of the blocks' products (first occurrence order), minus exclude."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for block in grid["blocks"]:
        for values in itertools.product(*(block[k] for k in RUN_KEYS)):
            run = {k: _RUN_TYPES[k](v) for k, v in zip(RUN_KEYS, values, strict=True)}
            key = tuple(run.values())
            if key not in seen:
                seen.add(key)
                rows.append(run)
    if not rows:
        raise ValueError("grid.blocks: the grid is empty")
    kept = [r for r in rows if not any(matches(r, rule) for rule in grid.get("exclude", []))]
    if not kept:
        raise ValueError("grid.exclude: removes every run of the grid")
    return pd.DataFrame(kept, columns=list(RUN_KEYS))


def analysed_runs(runs: pd.DataFrame, exclude: list[Mapping[str, Any]]) -> pd.DataFrame:
    """The runs kept for the headline statistics (all runs are still reported separately)."""
    keep = [not any(matches(r, rule) for rule in exclude) for r in runs.to_dict("records")]
    return runs[keep]


def run_id(run: Mapping[str, Any]) -> str:
    """The `{run}` path of one hyperparameter combination, as snakemake's Paramspace writes it."""
    return "/".join(f"{k}~{run[k]}" for k in RUN_KEYS)


def parse_run_id(run: str) -> dict[str, Any]:
    """Inverse of run_id: `arch~cnn10/optimizer~adam/...` -> typed hyperparameters."""
    parts = run.strip("/").split("/")
    try:
        pairs = dict(p.split("~", 1) for p in parts)
        if list(pairs) != list(RUN_KEYS):
            raise ValueError
        return {k: _RUN_TYPES[k](pairs[k]) for k in RUN_KEYS}
    except ValueError:
        raise ValueError(
            f"run {run!r}: expected {'/'.join(k + '~<value>' for k in RUN_KEYS)}"
        ) from None


def interpolation_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The pairs of runs that Li et al.'s 1-D interpolation joins by default: the first seed of
    each configuration with each of its other seeds (same minimum, or another basin?), then
    each Adam run with its SGD twin (everything else equal, the seed included)."""
    rows = runs.to_dict("records")
    ids = {tuple(r[k] for k in RUN_KEYS): run_id(r) for r in rows}
    seed, optimizer = RUN_KEYS.index("seed"), RUN_KEYS.index("optimizer")
    seeds_of: dict[tuple, list[int]] = {}
    for key in ids:
        seeds_of.setdefault(key[:seed] + key[seed + 1 :], []).append(key[seed])
    pairs = []
    for rest, seeds in seeds_of.items():
        first, *others = sorted(seeds)
        pairs += [(ids[(*rest[:seed], first, *rest[seed:])],
                   ids[(*rest[:seed], s, *rest[seed:])]) for s in others]  # fmt: skip
    for key in ids:
        twin = (*key[:optimizer], "sgd", *key[optimizer + 1 :])
        if key[optimizer] == "adam" and twin in ids:
            pairs.append((ids[key], ids[twin]))
    return pairs
