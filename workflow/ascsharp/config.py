"""Configuration: schema validation with defaults, cross-field checks, and the run grid.

Snakemake and the command line both go through `validate_config`, so a bad value is refused
with the same one-line message (naming the key) wherever it comes from.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

# The schema ships inside the package (package data), so an installed wheel validates exactly
# as a checkout does; Snakemake reaches it through validate_config (workflow/rules/common.smk).
SCHEMA_RESOURCE = "config.schema.yaml"
# Order of the `{run}` path segments: arch~../optimizer~../lr~../batch_size~../seed~..
RUN_KEYS: tuple[str, ...] = ("arch", "optimizer", "lr", "batch_size", "seed")
_RUN_TYPES = {"arch": str, "optimizer": str, "lr": float, "batch_size": int, "seed": int}


class ConfigError(ValueError):
    """A configuration that the workflow refuses; the message names the key."""


def schema_file() -> Traversable:
    """The configuration schema as shipped in the installed package (every key, type, default)."""
    return resources.files(__package__ or "ascsharp").joinpath(SCHEMA_RESOURCE)


def load_schema() -> dict:
    return yaml.safe_load(schema_file().read_text(encoding="utf-8"))


def _with_defaults(validator_class):
    """A jsonschema validator that also fills `default`s into the instance, depth first."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy of `config` with defaults filled in, or raise ConfigError."""
    config = _copy(dict(config))
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        if e.validator == "additionalProperties":
            unknown = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            where = _key_path(e)
            key = f"{where}.{unknown[0]}" if where != "(top level)" else unknown[0]
            raise ConfigError(f"{source}: unknown key {key!r}")
        raise ConfigError(f"{source}: {_key_path(e)}: {e.message}")
    _check_consistency(config, source)
    return config


def _check_consistency(config: dict[str, Any], source: str) -> None:
    feats = config["features"]
    if feats["fmax"] > feats["sample_rate"] / 2:
        raise ConfigError(
            f"{source}: features.fmax: {feats['fmax']} Hz is above the Nyquist frequency "
            f"of features.sample_rate {feats['sample_rate']} Hz"
        )
    if feats["fmin"] >= feats["fmax"]:
        raise ConfigError(f"{source}: features.fmin: {feats['fmin']} must be below fmax")
    runs = expand_grid(config["grid"], source)
    land = config["landscape"]
    points = land["x"]["num"] * land["y"]["num"]
    if land["shards"] > points:
        raise ConfigError(
            f"{source}: landscape.shards: {land['shards']} shards for a grid of {points} points"
        )
    for axis in ("x", "y"):
        if land[axis]["min"] > land[axis]["max"]:
            raise ConfigError(f"{source}: landscape.{axis}: min is above max")
    kept = analysed_runs(runs, config["analysis"]["exclude"])
    if kept.empty:
        raise ConfigError(f"{source}: analysis.exclude: removes every trained run")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return validate_config(raw, source=str(path))


def matches(run: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    """True when `run` has every value of the filter `rule` (its `reason` is ignored)."""
    return all(run[k] == v for k, v in rule.items() if k != "reason")


def expand_grid(grid: Mapping[str, Any], source: str = "config") -> pd.DataFrame:
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
        raise ConfigError(f"{source}: grid.blocks: the grid is empty")
    kept = [r for r in rows if not any(matches(r, rule) for rule in grid.get("exclude", []))]
    if not kept:
        raise ConfigError(f"{source}: grid.exclude: removes every run of the grid")
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
        raise ConfigError(
            f"run {run!r}: expected {'/'.join(k + '~<value>' for k in RUN_KEYS)}"
        ) from None
