"""Command-line options read from the config schema, so that each setting is stated once.

A stage's command names the schema keys it reads; each becomes the option `--key-name` with the
schema's type, bounds and `enum` (argparse `choices`), and the key's `description` as its help.
Rules pass every value, so these options are required and have no default: the schema alone
holds the defaults. A bad value is refused where it enters, with argparse's one-line
`ascsharp <cmd>: error: argument --key: ...`, before any work. `from_args` then builds the
stage's settings dataclass from the parsed options named as its fields, and `enum` gives code
the allowed names of a setting (measure names, precisions, splits) from the same schema.

Adding a setting: the key (description, type, default) in config.schema.yaml, its name in the
command's key list and a field of the stage's settings dataclass, and the code that uses it.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import jsonschema

T = TypeVar("T")
# What `--clips all` and other "all" values stand for: a setting that may be null.
ALL = "all"


@functools.cache
def _schema() -> dict[str, Any]:
    from ascsharp.core.config import load_schema

    return load_schema()


def _resolve(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with a local `$ref` merged in (the key's own description and default win)."""
    if "$ref" not in spec:
        return spec
    node: Any = _schema()
    for part in spec["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return {**node, **{k: v for k, v in spec.items() if k != "$ref"}}


def section(path: str) -> dict[str, dict[str, Any]]:
    """The keys of one schema section by dotted path ("features", "measures.hessian")."""
    node = _schema()
    for part in path.split("."):
        node = _resolve(node["properties"][part])
    return {key: _resolve(spec) for key, spec in node["properties"].items()}


def setting(path: str) -> dict[str, Any]:
    """The schema of one setting by dotted path ("landscape.precision")."""
    where, _, key = path.rpartition(".")
    return section(where)[key]


def enum(path: str) -> tuple[str, ...]:
    """The allowed values of one setting, in the schema's order ("landscape.precision")."""
    return tuple(setting(path)["enum"])


def switchable(path: str) -> tuple[str, ...]:
    """The blocks of a section that can be switched on and off (those with an `enabled` key):
    the measures of `measures`, for instance."""
    return tuple(name for name, spec in section(path).items()
                 if "enabled" in spec.get("properties", {}))  # fmt: skip


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _types(spec: dict[str, Any]) -> list[str]:
    kind = spec.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _value_type(key: str, spec: dict[str, Any]) -> Callable[[str], Any]:
    """Text -> value of the key's schema type, checked against its bounds; `all` -> None where
    the key may be null."""
    kinds = _types(spec)
    convert = int if "integer" in kinds else float if "number" in kinds else str
    validator = jsonschema.Draft202012Validator(spec)

    def parse(text: str) -> Any:
        if text == ALL and "null" in kinds:
            return None
        try:
            value = convert(text)
        except ValueError:
            expected = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {expected}" + (f" or {ALL!r}" if "null" in kinds else "")
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: not a finite number")
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            raise argparse.ArgumentTypeError(error.message)
        return value

    parse.__name__ = key  # argparse names it in "invalid <name> value" messages
    return parse


def _shape(spec: dict[str, Any]) -> dict[str, Any]:
    """What a value of the key may be: its schema without description and default."""
    return {k: v for k, v in spec.items() if k not in ("description", "default")}


def _help(key: str, specs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The schema's description and the config key; where several sections share the key, each
    description once with the keys it describes. `%` escaped for argparse."""
    if len(specs) == 1:
        text = f"{specs[0][1].get('description', '')} (config: {specs[0][0]}.{key})"
    else:
        where: dict[str, list[str]] = {}
        for name, spec in specs:
            where.setdefault(spec.get("description", ""), []).append(f"{name}.{key}")
        text = " ".join(f"{', '.join(names)}: {desc}" for desc, names in where.items())
    return text.replace("%", "%%")


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    sections: str | Sequence[str],
    keys: Iterable[str],
    *,
    required: bool = True,
    types: Mapping[str, Callable[[str], Any]] | None = None,
) -> None:
    """Add `--key` for each of `keys`, found in the first of `sections` that has it (the same
    key in several sections, as measure options shared by measures, becomes one option whose
    help lists each section's description; their types must agree).

    Type, bounds and choices are the schema's; booleans become `--key/--no-key`. `types`
    overrides the parser of a key whose command line accepts more than the config (`--m all`).
    `required=False` only where the command itself decides which options apply (`measure`).
    """
    sections = [sections] if isinstance(sections, str) else list(sections)
    for key in keys:
        specs = [(where, s[key]) for where in sections if key in (s := section(where))]
        if not specs:
            raise KeyError(f"{key!r}: not a key of config section {' or '.join(sections)}")
        spec = specs[0][1]
        for where, other in specs[1:]:
            if _shape(other) != _shape(spec):
                raise ValueError(f"{where}.{key} and {specs[0][0]}.{key}: one option, two types")
        kinds = _types(spec)
        options: dict[str, Any] = {"required": required, "help": _help(key, specs)}
        if "boolean" in kinds:
            options["action"] = argparse.BooleanOptionalAction
        elif "enum" in spec:
            options["choices"] = list(spec["enum"])
        else:
            options["type"] = (types or {}).get(key) or _value_type(key, spec)
            if "null" in kinds:
                options["metavar"] = f"N|{ALL}"
        parser.add_argument(flag(key), dest=key, **options)


def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """`cls` (a settings dataclass) from the parsed options named as its fields, and `values`
    for the fields no option holds."""
    return cls(**{f.name: values[f.name] if f.name in values else getattr(args, f.name)
                  for f in fields(cls) if f.init})  # type: ignore[call-arg]  # fmt: skip


def arguments(settings: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The options that pass `settings[key]` for each of `keys` to a command (the inverse of
    `add_options`): `--key value`, `--key/--no-key` for booleans, `all` for null."""
    argv: list[str] = []
    for key in keys:
        value = settings[key]
        if isinstance(value, bool):
            argv.append(flag(key) if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag(key), ALL if value is None else str(value)]
    return argv
