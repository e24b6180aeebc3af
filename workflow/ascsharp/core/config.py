"""Configuration: schema validation with defaults, renamed keys, and cross-field checks.

The schema (config.schema.yaml) is the one source of every default. Snakemake validates the
merged config files with `validate_config` (workflow/rules/common.smk) and passes each rule's
settings to its `ascsharp` command as required options, so a bad value is refused here, with a
one-line message naming the key, before any job starts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ascsharp.core.progress import get_logger
from ascsharp.core.runs import analysed_runs, expand_grid

# The schema ships inside the package (package data), so an installed wheel validates exactly
# as a checkout does; Snakemake reaches it through validate_config (workflow/rules/common.smk).
SCHEMA_RESOURCE = "config.schema.yaml"
# Keys renamed so that each word means one thing (docs/design.md, "Vocabulary"): old config
# files keep working, with a deprecation note in the log. (section, old name) -> new name.
RENAMED_KEYS = {
    ("dataset", "sample_rate"): "audio_sample_rate",  # features.sample_rate is another rate
    ("landscape", "subset"): "clips",  # a clip count, as measures.clips; "subset" = of runs
}


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


def schema_defaults() -> dict[str, Any]:
    """Every section's defaults as the schema states them (the grid, which has none, left out).

    For code outside the workflow (tests, benchmarks) that needs the workflow's settings.
    """
    config: dict[str, Any] = {}
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    for _ in validator.iter_errors(config):
        pass  # only `grid` is missing: filling the defaults is the point
    return config


def _rename_deprecated(config: dict[str, Any], source: str) -> None:
    """Move renamed keys to their new names in place, with a note in the log.

    The old key wins over the new one: the demo (config.yaml) and the presets use only new
    names, so an old name can only come from a file of the user's, given after them.
    """
    for (section, old), new in RENAMED_KEYS.items():
        settings = config.get(section)
        if not isinstance(settings, dict) or old not in settings:
            continue
        value = settings.pop(old)
        note = f"{source}: {section}.{old} is deprecated, renamed {section}.{new}"
        if new in settings and settings[new] != value:
            note += f" (its value {value!r} replaces {section}.{new}: {settings[new]!r})"
        settings[new] = value
        get_logger().warning("%s", note)


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated copy of `config` with defaults filled in, or raise ConfigError."""
    config = _copy(dict(config))
    _rename_deprecated(config, source)
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
    _check_finite(config, source)
    _check_consistency(config, source)
    return config


def _check_finite(value: Any, source: str, key: str = "") -> None:
    """Refuse NaN and infinities (YAML `.nan`, `-.inf`) anywhere: the schema's `number` type
    and its bounds let them through (every comparison with NaN is false)."""
    if isinstance(value, dict):
        for name, sub in value.items():
            _check_finite(sub, source, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_finite(sub, source, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key}: {value} is not a finite number")


def _check_consistency(config: dict[str, Any], source: str) -> None:
    feats = config["features"]
    if feats["fmax"] > feats["sample_rate"] / 2:
        raise ConfigError(
            f"{source}: features.fmax: {feats['fmax']} Hz is above the Nyquist frequency "
            f"of features.sample_rate {feats['sample_rate']} Hz"
        )
    if feats["fmin"] >= feats["fmax"]:
        raise ConfigError(f"{source}: features.fmin: {feats['fmin']} must be below fmax")
    try:
        runs = expand_grid(config["grid"])
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    land = config["landscape"]
    points = land["x"]["num"] * land["y"]["num"]
    if land["shards"] > points:
        raise ConfigError(
            f"{source}: landscape.shards: {land['shards']} shards for a grid of {points} points"
        )
    if land["refine"] and land["precision"] != "float32" and land["shards"] > 1:
        raise ConfigError(
            f"{source}: landscape.refine: re-evaluating the points that decide the sharpness "
            f"needs the whole grid in one job (landscape.shards: 1, not {land['shards']}); "
            "or set landscape.refine: false"
        )
    for axis in ("x", "y"):
        if land[axis]["min"] > land[axis]["max"]:
            raise ConfigError(f"{source}: landscape.{axis}: min is above max")
    if analysed_runs(runs, config["analysis"]["exclude"]).empty:
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
