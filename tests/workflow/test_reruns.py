"""What a change reruns (docs/reruns.md), presets, the workstation GPU limit, and module use.

The rerun matrix changes every key of the schema, one at a time, on a finished tiny run and
compares the rules of the dry run with the table in docs/reruns.md.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_run import ROOT, TINY, copy_project, env, fake_dataset, snakemake, snakemake_batch

from ascsharp.core.config import load_schema, schema_defaults, validate_config
from ascsharp.data.meta import DOWNLOAD_MARKER
from ascsharp.measures.job import MEASURES

DOC = ROOT / "docs" / "reruns.md"
PAPER = "workflow/presets/paper.yaml"
VALIDATION = "workflow/presets/validation-selection.yaml"


# --- The schema's keys and the table ---------------------------------------------------------
def schema_keys() -> dict[str, dict]:
    """Every setting of the schema as `section.key[.sub]` -> its schema (objects walked into)."""
    schema = load_schema()
    defs = schema["$defs"]

    def walk(prefix: str, node: dict, out: dict) -> None:
        if "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[1]], **node}
        if node.get("type") == "object" and "properties" in node:
            for name, sub in node["properties"].items():
                walk(f"{prefix}.{name}" if prefix else name, sub, out)
        else:
            out[prefix] = node

    keys: dict[str, dict] = {}
    walk("", schema, keys)
    return keys


def rerun_table() -> dict[str, set[str]]:
    """docs/reruns.md's table: key -> the rules a change reruns (groups expanded)."""
    text = DOC.read_text()
    groups: dict[str, list[str]] = {}
    table: dict[str, list[str]] = {}
    for key, cell in re.findall(r"^\| `([\w.]+)` \| (.+?) \|$", text, flags=re.M):
        names = re.findall(r"`(\w+)`", cell.split("(")[0])
        (groups if key.isupper() else table)[key] = names

    def expand(names: list[str]) -> set[str]:
        return set().union(*(expand(groups[n]) if n in groups else {n} for n in names))

    return {key: expand(names) for key, names in table.items()}


def test_the_table_has_a_row_for_every_key_of_the_schema():
    assert sorted(rerun_table()) == sorted(schema_keys())


# --- Changing one key ------------------------------------------------------------------------
def tiny_config() -> dict[str, Any]:
    return validate_config(yaml.safe_load(TINY.read_text()), source=str(TINY))


def get(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def changed(config: dict, key: str, value: Any) -> dict:
    """A copy of `config` with `key` set to `value`."""
    new = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = new
    for part in parents:
        node = node[part]
    node[last] = value
    return new


# Values that a generic rule would get wrong: cross-field checks and list-valued settings.
SPECIAL_VALUES = {
    "features.fmax": 7000.0,  # x 1.5 would pass the Nyquist frequency of 16 kHz
    "grid.blocks": [
        {
            "arch": ["cnn10"],
            "optimizer": ["adam", "sgd"],
            "lr": [0.001],
            "batch_size": [16],
            "seed": [42, 43, 44],
        }
    ],  # fmt: skip
    "grid.exclude": [{"optimizer": "sgd", "seed": 43}],
    "analysis.exclude": [{"optimizer": "sgd", "seed": 43, "reason": "a test"}],
    "measures.clips": 16,  # landscape (the default), an integer or null
    "views.interpolation.pairs": [  # a pair the default pairs (seeds, Adam/SGD twins) lack
        [
            "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42",
            "arch~cnn10/optimizer~sgd/lr~0.001/batch_size~16/seed~43",
        ]
    ],
}


def new_value(key: str, schema: dict, current: Any) -> Any:
    """A value of the right type and range for `key`, other than `current`."""
    if key in SPECIAL_VALUES:
        return SPECIAL_VALUES[key]
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != current)
    if "boolean" in types:
        return not current
    if "integer" in types:
        if current is None:
            return 8
        top = schema.get("maximum")
        return current + 1 if top is None or current < top else current - 1
    if "number" in types:
        value = current * 1.5 if current else 0.5
        return min(value, schema["maximum"]) if "maximum" in schema else value
    if "string" in types:
        return f"{current}-changed"
    if "array" in types:  # landscape.direction_seeds
        return [*current, max(current) + 1]
    raise AssertionError(f"{key}: no rule to change a value of schema {schema}")


def dry_run_args(*configfiles: Path | str) -> list[str]:
    """`snakemake` options of a quiet dry run of the whole workflow (its job table only)."""
    options = ["-n", "--quiet", "rules"]
    return [*options, "--configfile", *map(str, configfiles)] if configfiles else options


def rules_to_run(workdir: Path, *configfiles: Path | str) -> set[str]:
    """The rules (not `all`) a dry run of the whole workflow schedules."""
    proc = snakemake(workdir, *dry_run_args(*configfiles))
    return rules_in(proc.stdout + proc.stderr)


def rules_in(text: str) -> set[str]:
    """The rules (not `all`) in the job table of a dry run's output."""
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return set()
    rules = set()
    for line in text.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        rules.add(parts[0])
    return rules - {"all", "total"}


@pytest.fixture(scope="module")
def finished(tiny_run: Path) -> Path:
    """The tiny run, up to date: tests of other modules rebuild parts of it (usually no work).
    The tests here only dry-run it (or restore what they touch)."""
    snakemake(tiny_run, "--cores", "2", "--configfile", str(TINY))
    assert rules_to_run(tiny_run, TINY) == set()
    return tiny_run


@pytest.mark.slow
def test_every_key_reruns_what_the_table_says(finished, tmp_path):
    base, table = tiny_config(), rerun_table()
    values, paths = {}, {}
    for key, schema in schema_keys().items():
        values[key] = new_value(key, schema, get(base, key))
        config = changed(base, key, values[key])
        validate_config(config, source=key)  # the change itself is a valid config
        paths[key] = tmp_path / f"{key}.yaml"
        paths[key].write_text(yaml.safe_dump(config))
    # One dry run per key, as `snakemake -n` runs it, several per Python process.
    outputs = snakemake_batch(finished, [dry_run_args(path) for path in paths.values()])
    wrong = {}
    for key, output in zip(paths, outputs, strict=True):
        got = rules_in(output)
        if got != table[key]:
            wrong[key] = {"value": values[key], "extra": sorted(got - table[key]),
                          "missing": sorted(table[key] - got)}  # fmt: skip
    assert not wrong, json.dumps(wrong, indent=1, default=str)


def _reversed_keys(value: Any) -> Any:
    """The same config with the keys of every mapping in the opposite order."""
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_reversed_keys_helper_reverses_nested_mappings():
    flipped = _reversed_keys({"a": 1, "b": {"c": 2, "d": [{"e": 3, "f": 4}]}})
    assert list(flipped) == ["b", "a"] and list(flipped["b"]) == ["d", "c"]
    assert list(flipped["b"]["d"][0]) == ["f", "e"]


@pytest.mark.slow
def test_reordered_or_repeated_config_files_rerun_nothing(finished, tmp_path):
    flipped = tmp_path / "reordered.yaml"
    flipped.write_text(yaml.safe_dump(_reversed_keys(yaml.safe_load(TINY.read_text())),
                                      sort_keys=False))  # fmt: skip
    outputs = snakemake_batch(finished, [dry_run_args(flipped), dry_run_args(TINY, TINY)])
    assert [rules_in(output) for output in outputs] == [set(), set()]


@pytest.mark.slow
def test_a_new_direction_seed_adds_only_its_jobs(finished, tmp_path):
    config = changed(tiny_config(), "landscape.direction_seeds", [42, 44])
    path = tmp_path / "seed44.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake(finished, "-n", "--configfile", str(path))
    text = out.stdout + out.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", text, flags=re.M)
    by_rule: dict[str, list[str]] = {}
    for rule, block in jobs:
        by_rule.setdefault(rule, []).append(block)
    runs = 4
    # The new seed's directions, its 2 shards and its surface per run; nothing of seed 42.
    assert len(by_rule["directions"]) == runs and len(by_rule["gather"]) == runs
    assert len(by_rule["landscape_shard"]) == 2 * runs
    for rule in ("directions", "landscape_shard", "gather"):
        assert all("direction_seed~44" in b for b in by_rule[rule]), rule
    # What reads every seed of a run, then the statistics.
    assert len(by_rule["run_sharpness"]) == runs and len(by_rule["landscape_views"]) == runs
    # The montages print the sharpness files' values (rewritten with the new seed): redrawn.
    assert len(by_rule["landscape_montage"]) == 1
    assert not {"train", "measure", "features"} & set(by_rule)


@pytest.mark.slow
def test_a_new_grid_seed_trains_only_the_new_runs(finished, tmp_path):
    path = tmp_path / "seed44.yaml"
    path.write_text(
        yaml.safe_dump(changed(tiny_config(), "grid.blocks", SPECIAL_VALUES["grid.blocks"]))
    )
    out = snakemake(finished, "-n", "--configfile", str(path))
    text = out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+) +(\d+)$", text.split("Job stats:")[1], flags=re.M))
    new_runs = 2  # adam and sgd with seed 44
    measures = len(MEASURES)  # every measure is on in the tiny config
    assert int(counts["train"]) == new_runs and int(counts["measure"]) == measures * new_runs
    assert int(counts["landscape_shard"]) == 2 * new_runs and int(counts["gather"]) == new_runs
    trained = re.findall(r"^rule train:\n(?:    .*\n)*?    wildcards: run=(\S+)", text, flags=re.M)
    assert trained and all(run.endswith("seed~44") for run in trained)


@pytest.mark.slow
def test_data_switches_rerun_nothing_once_the_data_exist(finished, tmp_path):
    """generate: false; then as if the set had been downloaded: download on, then off."""
    base = tiny_config()
    generated_off = changed(base, "dataset.synthetic.generate", False)
    downloading = changed(generated_off, "dataset.download.enabled", True)
    off, download = tmp_path / "off.yaml", tmp_path / "download.yaml"
    off.write_text(yaml.safe_dump(generated_off))
    download.write_text(yaml.safe_dump(downloading))
    assert rules_to_run(finished, off) == set()
    marker = finished / base["dataset"]["root"] / DOWNLOAD_MARKER
    marker.write_text("{}\n")  # the download's marker in place: a finished download
    try:
        outputs = snakemake_batch(finished, [dry_run_args(download), dry_run_args(off)])
        assert [rules_in(output) for output in outputs] == [set(), set()]
    finally:
        marker.unlink()


# --- Presets ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with a fake DCASE2020 folder (dcase/, named in my-data.yaml), for
    the tests that only read it (dry runs, the effective config)."""
    work = copy_project(tmp_path_factory.mktemp("project"))
    data = fake_dataset(work / "dcase")
    (work / "my-data.yaml").write_text(f"dataset:\n  root: {data}\n")
    return work


_INSPECT = """
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
for extra_env, args in json.loads(sys.argv[1]):
    os.environ.update(extra_env)  # read by the Snakefile as it is parsed (common.smk)
    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            ResourceSettings(cores=8, nodes=args.get("nodes"),
                             resources=args.get("resources", {})),
            ConfigSettings(configfiles=[Path(c) for c in args.get("configfiles", [])]),
            snakefile=Path("Snakefile"), workdir=Path("."),
        )._workflow
        print("RESULT " + json.dumps({"config": wf.config,
                                      "gpu": wf.global_resources.get("gpu").value
                                      if "gpu" in wf.global_resources else None}))
"""


def inspect_each(work: Path, cases: list[tuple[dict[str, str], dict]]) -> list[dict]:
    """For each (environment variables, settings) case, the effective config and the global
    `gpu` limit of the workflow as Snakemake builds it; all in one Python process, one
    workflow after another (each case names every variable it depends on)."""
    proc = subprocess.run([sys.executable, "-c", _INSPECT, json.dumps(cases)], cwd=work,
                          env=env(), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(lines) == len(cases), proc.stdout[-3000:]
    return [json.loads(line.removeprefix("RESULT ")) for line in lines]


def inspect(work: Path, extra_env: dict[str, str] | None = None, **args) -> dict:
    """The effective config and the global `gpu` limit of one workflow (inspect_each)."""
    return inspect_each(work, [(extra_env or {}, args)])[0]


def _merged(*files: Path) -> dict:
    """Schema defaults under the files, merged as Snakemake merges config files (by hand)."""

    def merge(into: dict, new: dict) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = copy.deepcopy(v)

    config: dict = {}
    for f in files:
        merge(config, yaml.safe_load(f.read_text()))
    return validate_config(config)


def _leaves(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("presets", [[PAPER], [PAPER, VALIDATION]], ids=["paper", "validation"])
def test_a_preset_is_the_schema_plus_its_own_keys_never_the_demo(project, presets):
    work = project
    files = [*presets, "my-data.yaml"]
    effective = inspect(work, configfiles=files)["config"]
    assert effective == _merged(*(work / f for f in files))
    # No value comes from config.yaml alone: every key the files leave out is the schema's.
    given = set().union(*(_leaves(yaml.safe_load((work / f).read_text())) for f in files))
    defaults, got = _leaves(schema_defaults()), _leaves(effective)
    demo = _leaves(yaml.safe_load((work / "config.yaml").read_text()))
    demo_only = [k for k in demo if not any(k == g or k.startswith(f"{g}.") for g in given)]
    assert demo_only and all(got[k] == defaults[k] for k in demo_only)
    # The settings the preset's comment and the README promise; the demo's differ.
    for key, value in {"measures.hessian.top_k": 5, "measures.hessian.lanczos_tol": 0.001,
                       "measures.hessian.trace_samples": 100,
                       "measures.adaptive_average.samples": 100,
                       "measures.adaptive_worst.steps": 20,
                       "measures.adaptive_worst.m": 128}.items():  # fmt: skip
        assert got[key] == value != demo[key], key


def test_the_demo_runs_without_a_configfile_and_equals_it_given_once_or_twice(project):
    work = project
    given = [[], ["config.yaml"], ["config.yaml", "config.yaml"]]
    plain, once, twice = (r["config"] for r in inspect_each(work, [({}, {"configfiles": c})
                                                                  for c in given]))  # fmt: skip
    assert plain == _merged(work / "config.yaml")
    assert once == plain and twice == plain


def test_paper_preset_measures_run_with_the_schemas_settings(project):
    out = snakemake(project, "-n", "-p", "--configfile", PAPER, "my-data.yaml")
    commands = re.findall(r"^Shell command: (ascsharp measure .*)$", out.stdout, flags=re.M)
    assert len(commands) == 46 * len(MEASURES)
    defaults = schema_defaults()["measures"]
    for measure, settings in defaults.items():
        if not isinstance(settings, dict):
            continue
        mine = [c for c in commands if f"--measure {measure} " in c]
        assert len(mine) == 46, measure
        for key, value in settings.items():
            if key != "enabled":
                flag = key.replace("_", "-")
                if isinstance(value, bool):  # a switch
                    option = f"--{flag} " if value else f"--no-{flag} "
                else:
                    option = f"--{flag} {value} "
                assert all(option in c for c in mine), (measure, option)
    hessian = next(c for c in commands if "--measure hessian " in c)
    for option in ("--top-k 5 ", "--lanczos-tol 0.001 ", "--trace-samples 100 ", "--clips 2048 "):
        assert option in hessian


# --- GPUs on a workstation -------------------------------------------------------------------
GPU_CASES = [
    ("0", {}, 1),  # one card: one GPU job at a time
    ("0,1", {}, 1),  # every job would use the first card
    ("", {}, None),  # CPU only: --cores 8 runs 8 grid jobs
    ("-1", {}, None),
    ("0", {"resources": {"gpu": 2}}, 2),  # the user's own limit wins
    ("0", {"nodes": 64}, None),  # a cluster run (--jobs, --profile slurm): Slurm decides
]


@pytest.fixture(scope="module")
def gpu_limits(project) -> list[int | None]:
    """The global `gpu` limit of each case of GPU_CASES (one Python process for all)."""
    cases = [({"CUDA_VISIBLE_DEVICES": visible}, args) for visible, args, _ in GPU_CASES]
    return [result["gpu"] for result in inspect_each(project, cases)]


@pytest.mark.parametrize("case", range(len(GPU_CASES)),
                         ids=[f"{v or 'none'}-{a}" for v, a, _ in GPU_CASES])  # fmt: skip
def test_local_runs_hold_one_gpu_job_per_visible_card(gpu_limits, case):
    assert gpu_limits[case] == GPU_CASES[case][2]


# --- As a module -----------------------------------------------------------------------------
def test_the_workflow_works_as_a_snakemake_module(project, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    shutil.copy(TINY, host / "tiny.yaml")
    (host / "Snakefile").write_text(
        'configfile: "tiny.yaml"\n\n\n'
        "module ascsharp:\n"
        f'    snakefile:\n        "{project / "Snakefile"}"\n'
        "    config:\n        config\n\n\n"
        "use rule * from ascsharp\n"
    )
    out = snakemake(host, "-n", "-p")
    (table,) = re.findall(r"ascsharp paper-table (\S+)", out.stdout)
    assert Path(table) == project / "workflow/reference/paper_results_icassp2024.csv"
    assert "rule train:" in out.stdout and "rule synthesize:" in out.stdout
    assert "results/analysis/summary.tsv" in out.stdout  # in the host's folder
