"""Settings flow once: the commands' options come from the schema (core/settings.py), and each
enumeration (measure names, forward precisions, landscape splits) is spelt out in the schema
alone, plus the tables keyed by it that are checked here to have exactly its names."""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest
from defaults import DEFAULTS, mel_config, train_settings

from ascsharp.cli import build_parser, main
from ascsharp.core.settings import (
    add_options,
    arguments,
    enum,
    from_args,
    section,
    setting,
    switchable,
)
from ascsharp.features.mel import MelConfig
from ascsharp.measures import MEASURES
from ascsharp.train.loop import TrainSettings

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = enum("landscape.precision")
SPLITS = enum("landscape.split")
ENUMERATIONS = {"measure names": MEASURES, "precisions": PRECISIONS, "splits": SPLITS}
# The places besides the schema that spell out every name of an enumeration, each with why,
# and how many such literals the file may hold. Each table keyed by the names is checked
# against the schema in test_tables_keyed_by_an_enumeration_have_its_names.
ALLOWED = {
    "measure names": {
        # measure -> the function computing it (torch; checked: exactly MEASURES).
        "workflow/ascsharp/measures/job.py": 1,
        # measure -> the summary.tsv columns its values become (checked: exactly MEASURES).
        "workflow/ascsharp/analysis/summary.py": 1,
        # measure -> forward passes per job, the cluster time budget (checked: exactly MEASURES).
        "workflow/rules/measures.smk": 1,
    },
    "precisions": {
        # precision -> autocast dtype of the forward (checked: exactly the schema's names).
        "workflow/ascsharp/train/evaluate.py": 1,
    },
    "splits": {
        # The words train and test also name other things, which the splits are named after:
        # DCASE's fold files (train, evaluate, test), the stores' clip sets (train, validation,
        # train_all, test: checked to include every split), metrics.json's sections per clip
        # set, and the two feature stores of the rules (FOLD_OF_STORE: checked to be exactly
        # the splits, whose clips the landscape reads from the store of the same name; and the
        # `store` wildcard's constraint).
        "workflow/ascsharp/data/meta.py": 1,
        "workflow/ascsharp/features/clips.py": 1,
        "workflow/ascsharp/train/loop.py": 1,
        "workflow/rules/features.smk": 1,  # FOLD_OF_STORE
        "workflow/rules/common.smk": 1,  # the `store` wildcard's constraint
    },
}


def _runs(text: str, names: tuple[str, ...]):
    """Names in a row, separated by nothing but spaces, commas, quotes, `|`, `/`, or and and:
    how a list is written in a string ("train|test", "float32, tf32, bfloat16, float16")."""
    name = "|".join(map(re.escape, names))
    sep = r"""(?:[\s,|/'"`]|\bor\b|\band\b)+"""
    for m in re.finditer(rf"\b(?:{name})\b(?:{sep}\b(?:{name})\b)+", text):
        yield m.start(), set(re.findall(rf"\b(?:{name})\b", m.group()))


def spelt_out(path: Path, names: tuple[str, ...]) -> list[int]:
    """Lines where every one of `names` is written in one literal: a list, tuple, set, dict
    (its keys) or a string listing them; comments left out."""
    text, want, lines = path.read_text(), set(names), set()
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.List | ast.Tuple | ast.Set):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(want <= got for _, got in _runs(node.value, names)):
                    lines.add(node.lineno)
                continue
            else:
                continue
            if want <= {e.value for e in items if isinstance(e, ast.Constant)}:
                lines.add(node.lineno)
        return sorted(lines)
    # A rules file is not Python: its literals found as text, comments blanked first.
    text = "\n".join("" if line.lstrip().startswith("#") else line for line in text.split("\n"))
    for start, got in _runs(text, names):
        if want <= got:
            lines.add(text.count("\n", 0, start) + 1)
    for m in re.finditer(r"\{[^{}]*\}", text):
        if want <= set(re.findall(r"""["']([\w+]+)["']\s*:""", m.group())):
            lines.add(text.count("\n", 0, m.start()) + 1)
    return sorted(lines)


def sources() -> list[Path]:
    return sorted([*(ROOT / "workflow/ascsharp").rglob("*.py"),
                   *(ROOT / "workflow/rules").glob("*.smk")])  # fmt: skip


@pytest.mark.parametrize("what", sorted(ENUMERATIONS))
def test_each_enumeration_is_spelt_out_in_the_schema_only(what):
    names = ENUMERATIONS[what]
    assert len(names) >= 2
    found = {}
    for path in sources():
        if lines := spelt_out(path, names):
            found[str(path.relative_to(ROOT))] = lines
    extra = {p: lines for p, lines in found.items() if len(lines) > ALLOWED[what].get(p, 0)}
    assert not extra, (
        f"{what} {names} spelt out again at {extra}: read them from the schema "
        "(ascsharp.core.settings.enum, ascsharp.measures.MEASURES) or, for a table keyed by "
        "them, list it in ALLOWED and check its keys in this file"
    )


def test_the_scan_finds_a_list_wherever_it_is_written(tmp_path):
    """spelt_out itself: each way of writing a list is found, a partial list is not."""
    py = tmp_path / "m.py"
    py.write_text(
        'A = ["train", "test"]\n'
        'B = {"test": 1, "train": 2}\n'
        'C = "train|test"\n'
        'D = ("train", "validation")\n'
        "def f(p):\n"
        '    """Either "train" or "test"."""\n'
        '# ["train", "test"]\n'
    )
    assert spelt_out(py, SPLITS) == [1, 2, 3, 6]
    smk = tmp_path / "r.smk"
    smk.write_text(
        'X = {\n    "test": 1,\n    "train": 2,\n}\n'
        '# "train", "test"\n'
        'rule a:\n    shell: "x --split {params.s}"\n'
        'store="train|test"\n'
    )
    assert spelt_out(smk, SPLITS) == [1, 8]


def _rules_dict(name: str) -> dict:
    """A flat dict literal `NAME = {...}` of the rules files."""
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        if m := re.search(rf"^{name} = (\{{[^{{}}]*\}})", path.read_text(), re.M):
            return ast.literal_eval(m.group(1))
    raise AssertionError(f"workflow/rules: no {name} (moved? update this test)")


def test_tables_keyed_by_an_enumeration_have_its_names():
    from ascsharp.analysis.summary import MEASURE_COLUMNS
    from ascsharp.core.surface import SURFACE_SPLITS
    from ascsharp.features.clips import SPLITS as CLIP_SETS
    from ascsharp.landscape.compute import REFINE_BOUND
    from ascsharp.measures.job import _FUNCTIONS
    from ascsharp.train.evaluate import PRECISIONS as DTYPES

    measures = set(MEASURES)
    assert measures == {"hessian", "adaptive_average", "adaptive_worst", "pacbayes", "norms",
                        "margin"}  # the schema's blocks with `enabled`, nothing else  # fmt: skip
    assert set(_FUNCTIONS) == measures
    assert set(MEASURE_COLUMNS) == measures
    assert set(_rules_dict("MEASURE_FORWARD_PASSES")) == measures
    assert set(DTYPES) == set(PRECISIONS)
    assert set(REFINE_BOUND) == set(PRECISIONS) - {"float32"}  # every fast precision
    assert SURFACE_SPLITS == SPLITS
    assert set(SPLITS) <= set(CLIP_SETS)
    assert set(_rules_dict("FOLD_OF_STORE")) == set(SPLITS)


# --- the helper ------------------------------------------------------------------------------
def test_enum_and_switchable_read_the_schema():
    assert PRECISIONS == ("float32", "tf32", "bfloat16", "float16")
    assert SPLITS == ("train", "test")
    assert switchable("measures") == MEASURES
    assert enum("views.trajectory.parameters") == ("weights", "all")
    assert setting("landscape.x")["required"] == ["min", "max", "num"]  # $ref resolved


def parser_for(sections, keys) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmd", exit_on_error=False)
    add_options(p, sections, keys)
    return p


def test_a_dataclass_from_the_options_equals_the_one_from_the_schema_defaults():
    from ascsharp.features.commands import MEL_KEYS
    from ascsharp.train.commands import SETTINGS_KEYS

    assert MEL_KEYS == tuple(f.name for f in fields(MelConfig))
    assert SETTINGS_KEYS == tuple(f.name for f in fields(TrainSettings))
    mel = DEFAULTS["features"]
    args = parser_for("features", MEL_KEYS).parse_args(arguments(mel, MEL_KEYS))
    assert from_args(MelConfig, args) == mel_config()
    assert isinstance(args.sample_rate, int) and isinstance(args.fmin, float)
    run = {**DEFAULTS["train"], **DEFAULTS["model"]}
    args = parser_for(("train", "model"), SETTINGS_KEYS).parse_args(arguments(run, SETTINGS_KEYS))
    assert from_args(TrainSettings, args) == train_settings()
    for amp in (True, False):  # --amp / --no-amp
        argv = arguments({**run, "amp": amp}, SETTINGS_KEYS)
        assert parser_for(("train", "model"), SETTINGS_KEYS).parse_args(argv).amp is amp


def test_options_round_trip_every_value_kind():
    keys = ("split", "clips", "batch_size", "shards", "precision", "compile", "refine")
    land = {**DEFAULTS["landscape"], "clips": None, "precision": "bfloat16", "compile": False}
    argv = arguments(land, keys)
    assert argv[argv.index("--clips") + 1] == "all" and "--no-compile" in argv
    assert vars(parser_for("landscape", keys).parse_args(argv)) == {k: land[k] for k in keys}
    args = parser_for("landscape", keys).parse_args(arguments({**land, "clips": 7}, keys))
    assert args.clips == 7


def test_every_option_read_from_the_schema_has_its_description_as_help():
    """Every `ascsharp` option that names a config key in its help shows that key's schema
    description, and offers exactly the schema's enum as its choices."""
    checked = 0
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            m = re.search(r"\(config: ([\w.]+)\)$", action.help or "")
            if not m:
                continue
            spec = setting(m.group(1))
            assert action.help == f"{spec['description']} (config: {m.group(1)})".replace(
                "%", "%%"
            ), (command, action.dest)
            assert action.choices == spec.get("enum"), (command, action.dest)
            # The rules pass every value; `measure` requires each measure's own options.
            assert action.required or command == "measure", (command, action.dest)
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("argv", "option", "message"),
    [
        (["landscape-shard", "--precision", "fp8"], "--precision", "invalid choice: 'fp8'"),
        (["interpolate", "--split", "validation"], "--split", "invalid choice: 'validation'"),
        (["train", "--selection", "best"], "--selection", "invalid choice: 'best'"),
        (["trajectory-plane", "--num", "1"], "--num", "1 is less than the minimum of 2"),
        (["landscape-shard", "--clips", "0"], "--clips", "0 is less than the minimum of 1"),
        (["landscape-shard", "--clips", "some"], "--clips", "'some': expected an integer or 'all'"),
        (["features", "--fmin", "nan"], "--fmin", "'nan': not a finite number"),
        (["measure", "--rho", "0"], "--rho", "0.0 is less than or equal to the minimum of 0"),
    ],
)
def test_a_bad_value_is_refused_at_the_command_line_in_one_line(argv, option, message, capsys):
    """Refused by argparse before any work (the rest of the command line is not needed)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"ascsharp {argv[0]}: error: argument {option}: {message}")


def test_measure_options_are_each_measures_schema_keys():
    from ascsharp.measures.commands import _settings

    for measure, keys in _settings().items():
        assert set(keys) == set(section(f"measures.{measure}")) - {"enabled"}
    assert _settings()["norms"] == ()


def test_an_unknown_key_is_named():
    with pytest.raises(KeyError, match="'colour': not a key of config section landscape"):
        add_options(argparse.ArgumentParser(), "landscape", ("colour",))
