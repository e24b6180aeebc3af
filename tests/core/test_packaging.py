"""Packaging: the conda environment mirrors pyproject.toml, the wheel ships the config schema and
the licence, CITATION.cff and LICENSE are well-formed, and the docs match the code they describe.

Everything here is offline: the wheel is built from a copy of the sources with the build
backend already installed in this environment (no build isolation, no index).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV_FILE = ROOT / "envs" / "ascsharp.yaml"
# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {
    "soundfile": "pysoundfile",
    "matplotlib": "matplotlib-base",
    "seaborn": "seaborn-base",
}
# Conda entries that pyproject.toml cannot list: the interpreter and pip itself.
CONDA_ONLY = {"python", "pip"}
STUDY_AUTHORS = [
    ("Manuel", "Milling"),
    ("Andreas", "Triantafyllopoulos"),
    ("Iosif", "Tsangko"),
    ("Simon David Noel", "Rampp"),
    ("Björn W.", "Schuller"),
]
STUDY_TITLE = (
    "Bringing the Discussion of Minima Sharpness to the Audio Domain: a Filter-Normalised "
    "Evaluation for Acoustic Scene Classification"
)


def _pyproject_requirements() -> dict[str, SpecifierSet]:
    out = {}
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert not req.extras and req.marker is None and req.url is None, (
            f"pyproject dependency {dep!r}: extras, markers and URLs have no conda equivalent; "
            "teach tests/core/test_packaging.py how to mirror it"
        )
        name = canonicalize_name(req.name)
        assert name not in out, f"pyproject lists {name} twice"
        out[name] = req.specifier
    return out


def _conda_spec(entry: str) -> tuple[str, str]:
    """`name>=1,<2` -> (name, '>=1,<2'); conda's own forms with spaces are refused."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)((?:[<>=!~].*)?)", entry.strip())
    assert m, f"{ENV_FILE.name}: cannot read the conda spec {entry!r}"
    return m.group(1), m.group(2)


def _env_file() -> tuple[dict, dict[str, str], list[str]]:
    env = yaml.safe_load(ENV_FILE.read_text())
    conda: dict[str, str] = {}
    pip: list[str] = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"{ENV_FILE.name}: unexpected section {entry}"
            pip.extend(entry["pip"])
            continue
        name, spec = _conda_spec(entry)
        assert name not in conda, f"{ENV_FILE.name}: {name} listed twice"
        conda[name] = spec
    return env, conda, pip


def test_env_file_mirrors_pyproject_dependencies():
    """Same packages, same bounds, conda-forge names; nothing else but python and pip."""
    env, conda, pip = _env_file()
    wanted = _pyproject_requirements()
    to_pypi = {v: k for k, v in CONDA_NAMES.items()}
    found: dict[str, tuple[str, SpecifierSet]] = {}
    for name, spec in conda.items():
        if name in CONDA_ONLY:
            continue
        pypi = canonicalize_name(to_pypi.get(name, name))
        assert pypi not in found, f"{ENV_FILE.name}: {pypi} listed twice"
        found[pypi] = (f"conda {name}", SpecifierSet(spec))
    for line in pip:
        assert not line.strip().startswith("-") and "/" not in line, (
            f"{ENV_FILE.name}: pip entry {line!r}: no options or paths (a relative path resolves "
            "against whichever copy of the file the tool reads; install the project separately)"
        )
        req = Requirement(line)
        pypi = canonicalize_name(req.name)
        assert pypi not in found, f"{ENV_FILE.name}: {pypi} listed twice"
        found[pypi] = ("pip", req.specifier)

    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    assert not missing, f"{ENV_FILE.name} lacks pyproject dependencies {missing}"
    assert not extra, f"{ENV_FILE.name} has packages pyproject.toml does not list: {extra}"
    for name, spec in wanted.items():
        where, got = found[name]
        assert got == spec, f"{name}: pyproject {spec or 'any'}, {ENV_FILE.name} ({where}) {got}"

    assert env.get("name") == "ascsharp", "`conda env create -f` needs a name"
    assert env["channels"][0] == "conda-forge", "conda names above are conda-forge's"
    assert "pip" in conda, "the pip section needs pip in the environment"
    python = conda.get("python", "")
    assert re.fullmatch(r"=\d+\.\d+", python), f"python pin {python!r}: expected python=X.Y"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(python[1:]) in requires, f"python{python} outside requires-python {requires}"


def test_pyproject_licence_is_an_spdx_expression():
    """PEP 639 form (setuptools >= 77), and the backend in this environment can build it."""
    from importlib.metadata import version

    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert not any("License ::" in c for c in project.get("classifiers", [])), (
        "a licence classifier next to an SPDX expression is an error under PEP 639"
    )
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in build if r.name == "setuptools")
    assert setuptools.specifier.contains("77")
    assert not setuptools.specifier.contains("76.9"), "setuptools < 77 cannot read license-files"
    assert setuptools.specifier.contains(version("setuptools")), "installed backend too old"


def test_licence_file_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the ascsharp authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_citation_cff_describes_workflow_and_study():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors"):  # required by CFF 1.2.0
        assert cff.get(key), f"CITATION.cff: {key} missing"
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == (
        "ascsharp: minima sharpness for acoustic scene classification, a Snakemake workflow"
    )
    assert cff["version"] == PYPROJECT["project"]["version"]
    assert cff["license"] == PYPROJECT["project"]["license"]
    assert all(a.get("name") or a.get("family-names") for a in cff["authors"])

    (study,) = [r for r in cff["references"] if "Minima Sharpness" in r["title"]]
    assert " ".join(study["title"].split()) == STUDY_TITLE
    assert study["type"] == "conference-paper"
    assert [(a["given-names"], a["family-names"]) for a in study["authors"]] == STUDY_AUTHORS
    assert study["year"] == 2024
    assert "ICASSP 2024" in study["conference"]["name"]
    identifiers = {i["value"] for i in study["identifiers"]}
    assert "arXiv:2309.16369" in identifiers


def test_versions_agree():
    import ascsharp

    assert ascsharp.__version__ == PYPROJECT["project"]["version"]


def test_schema_lives_in_the_package():
    """One schema, inside the package: no copy elsewhere in the repository to drift from it."""
    from ascsharp.core import config

    schema = config.schema_file()
    assert Path(str(schema)).resolve() == ROOT / "workflow/ascsharp/core/config.schema.yaml"
    assert config.load_schema()["properties"]["grid"]
    copies = [
        p.relative_to(ROOT)
        for p in ROOT.glob("workflow/**/config.schema.y*ml")
        if p.parent != ROOT / "workflow/ascsharp/core"
    ]
    assert not copies, f"schema copies outside the package: {copies}"


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the shared checkout gets no build/ or egg-info."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "workflow/ascsharp",
        src / "workflow/ascsharp",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = tmp_path / "dist"
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--no-cache-dir", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    licence_warnings = [
        line for line in log.splitlines() if "Warning" in line and "license" in line.lower()
    ]
    assert not licence_warnings, licence_warnings
    (wheel,) = out.glob("ascsharp-*.whl")
    return wheel


def test_wheel_ships_schema_and_licence_and_validates_from_them(tmp_path):
    wheel = _build_wheel(tmp_path)
    version = PYPROJECT["project"]["version"]
    dist_info = f"ascsharp-{version}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"{dist_info}/METADATA").decode()
        z.extractall(tmp_path / "site")
    assert "ascsharp/core/config.schema.yaml" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not any("schemas/" in n for n in names), "the old schema path came back"
    assert re.search(r"^License-Expression: MIT$", metadata, re.M), metadata[:800]
    assert re.search(r"^License-File: LICENSE$", metadata, re.M)
    entry_points = (tmp_path / "site" / dist_info / "entry_points.txt").read_text()
    assert "ascsharp = ascsharp.cli:main" in entry_points

    # Import from the unpacked wheel (PYTHONPATH comes before the editable checkout on sys.path)
    # and validate the shipped default config against the schema it finds as package data.
    site = tmp_path / "site"
    probe = (
        "import json, sys, ascsharp, ascsharp.core.config as c; "
        "cfg = c.load_config(sys.argv[1]); "
        "print(json.dumps({'package': ascsharp.__file__, 'schema': str(c.schema_file()), "
        "'runs': len(c.expand_grid(cfg['grid']))}))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site), found
    assert Path(found["schema"]) == site / "ascsharp" / "core" / "config.schema.yaml", found
    assert found["runs"] >= 1


# --- the docs describe the code ----------------------------------------------------------------
DESIGN = ROOT / "docs" / "design.md"


def test_design_doc_lists_every_command():
    from ascsharp.cli import COMMANDS

    text = DESIGN.read_text()
    m = re.search(r"The commands:\n(.*?)\. Two of them", text, re.S)
    assert m, "docs/design.md: the list of commands moved; update this test"
    listed = re.findall(r"`([a-z-]+)`", m.group(1))
    assert sorted(listed) == sorted(COMMANDS)  # each once; the doc keeps pipeline order


def test_design_doc_states_the_correlation_columns():
    from ascsharp.analysis.correlation import CONTRACT_COLUMNS, TABLE_COLUMNS

    text = DESIGN.read_text()
    assert "    " + "  ".join(CONTRACT_COLUMNS) + "\n" in text
    rest = TABLE_COLUMNS[len(CONTRACT_COLUMNS) :]
    assert "(followed by " + ", ".join(f"`{c}`" for c in rest) + ")" in text


def test_design_doc_states_the_sharpness_contract(tmp_path, capsys):
    """The keys and the 77-point default the doc promises are what `sharpness --json` prints."""
    import h5py
    import numpy as np

    from ascsharp.cli import main

    x = np.linspace(-0.25, 0.25, 11)
    xx, yy = np.meshgrid(x, x)
    surface = tmp_path / "surface.h5"
    with h5py.File(surface, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, x
        f["train_loss"] = 2 * (xx**2 + yy**2) + 0.5
    assert main(["sharpness", str(surface), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    text = DESIGN.read_text()
    keys = re.findall(r"^\| `([a-z_]+)` \|", text, re.M)
    assert keys == ["sharpness", "reference_loss", "max_loss", "points"]
    assert set(keys) <= set(printed)
    others = re.search(r"and also (.*?) and `file`", text, re.S)
    assert others, "docs/design.md: the list of further keys moved; update this test"
    assert set(re.findall(r"`([a-z_]+)`", others.group(1))) | {"file", *keys} == set(printed)
    assert printed["points"] == 77 and "(77 for the paper grid and defaults)" in text


# Names of files that are gone, with where their content went. Spelt in two parts so that this
# file does not name them itself.
STALE = {
    "DESIGN" + ".md": "docs/design.md",
    "workflow/schemas/" + "config.schema.yaml": "workflow/ascsharp/core/config.schema.yaml",
}


@pytest.mark.parametrize("stale", sorted(STALE))
def test_no_reference_to_a_file_that_is_gone(stale):
    """No tracked text file points to a document or schema that moved (see STALE)."""
    assert not (ROOT / stale).exists()
    suffixes = {".py", ".smk", ".md", ".yaml", ".yml", ".rst", ".toml", ".cff", ".sh", ".cfg"}
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for rel in tracked.stdout.splitlines():
        path = ROOT / rel
        if path.suffix in suffixes or path.name in {"Snakefile", ".gitignore"}:
            if path.is_file() and stale in path.read_text(errors="replace"):
                offenders.append(rel)
    assert not offenders, f"{offenders} name {stale}, which is gone: point to {STALE[stale]}"


def test_rules_declare_no_conda_environment():
    """The rules run in the environment that parses the Snakefile (it imports `ascsharp`), so a
    per-rule `conda:` env could only duplicate it, and `-e ..` in it cannot reach the project."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in files
        for i, line in enumerate(path.read_text().splitlines(), start=1)
        if re.match(r"\s*conda\s*:", line)
    ]
    assert not found, f"per-rule conda environments at {found}; see envs/ascsharp.yaml"


# --- the code's shape -------------------------------------------------------------------------
PACKAGE = ROOT / "workflow" / "ascsharp"


# The stages in workflow order; a module imports from `core`, its own stage and earlier stages only.
SLICES = ("core", "data", "features", "train", "landscape", "measures", "views", "analysis")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"
    )


def _package_imports() -> dict[str, set[str]]:
    """Module (dotted) -> the package modules it imports, at the top or inside a function."""
    import ast

    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ascsharp"):
                assert node.level == 0, f"{path}: relative import"
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        graph[_module_name(path)] = found - {_module_name(path)}
    return graph


def test_import_graph_is_acyclic():
    """Modules import each other in one direction only, function-level imports included."""
    from graphlib import CycleError, TopologicalSorter

    try:
        tuple(TopologicalSorter(_package_imports()).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_stages_import_only_core_and_earlier_stages():
    """A stage's code builds on `core` and the stages before it, never on a later one, so a
    stage can be read (and tested) with what comes before it only."""
    wrong = []
    for module, imported in _package_imports().items():
        parts = module.split(".")
        if len(parts) < 3:  # ascsharp, ascsharp.cli: the registry sees every stage
            continue
        rank = SLICES.index(parts[1])
        for other in imported:
            other_slice = other.split(".")[1] if other.count(".") else "ascsharp"
            if other_slice not in SLICES or SLICES.index(other_slice) > rank:
                wrong.append(f"{module} -> {other}")
    assert not wrong, wrong


def test_every_stage_has_commands_and_no_module_grows_past_600_lines():
    for stage in SLICES[1:]:
        assert (PACKAGE / stage / "commands.py").is_file(), f"{stage}: no commands.py"
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"split these modules along their topics: {long}"


def test_readme_layout_names_every_module():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\n## Code layout\n(.*?)\n## ", text, re.S)
    assert m, "README.md: the code layout section moved; update this test"
    named = set(re.findall(r"`([a-z_]+/[a-z_]+\.py|[a-z_]+\.py)`", m.group(1)))
    modules = {  # each stage's commands.py is named once, as `*/commands.py`
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and not (p.name == "commands.py" and p.parent.name != "core")
    }
    named -= {"commands.py"}  # the text's mention of every stage's commands.py
    assert named == modules, (sorted(modules - named), sorted(named - modules))


def test_rules_pass_only_declared_files():
    """A rule's command names no path itself: every file comes from {input}, {output}, {log}
    (or a param, for what is neither, such as the download cache)."""
    offenders = []
    for path in sorted((ROOT / "workflow/rules").glob("*.smk")):
        text = path.read_text()
        for block in re.findall(r"^\s+shell:\n((?:\s+\".*\"\n?)+)", text, re.M):
            literal = re.sub(r"\{[^}]*\}", "", block)
            if re.search(r"(results|logs|data|benchmarks)/", literal):
                offenders.append(f"{path.name}: {block.strip()}")
    assert not offenders, offenders


# --- the rules' shape -------------------------------------------------------------------------
def _rules() -> dict[str, dict[str, str]]:
    """Rule name -> {"file": its rules file, directive: the directive's text} for every rule."""
    rules = {}
    for path in sorted((ROOT / "workflow/rules").glob("*.smk")):
        parts = re.split(r"^( *)rule (\w+):\n", path.read_text(), flags=re.M)
        for indent, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
            inner = " " * (len(indent) + 4)
            # The rule's body: its lines indented deeper than `rule`, up to the next code line.
            body = re.match(rf"((?:{inner}.*\n|\s*\n)*)", body).group(1)
            chunks = re.split(rf"^{inner}(\w+):", body, flags=re.M)
            rules[name] = {"file": path.name, **dict(zip(chunks[1::2], chunks[2::2], strict=True))}
    return rules


def test_one_rules_file_per_stage():
    """The rules files are the package's stages (and common.smk, what they share)."""
    files = {p.stem for p in (ROOT / "workflow/rules").glob("*.smk")}
    assert files == {"common", *SLICES[1:]}
    assert not re.search(r"^\s*rule \w+:", (ROOT / "workflow/rules/common.smk").read_text(), re.M)


def test_every_rule_logs_stdout_and_stderr_and_is_benchmarked():
    """Each command's output (stdout and stderr) goes to logs/<rule>/..., its time and memory
    to benchmarks/<rule>/... (`ascsharp cost` reads them per rule)."""
    wrong = []
    for name, rule in _rules().items():
        if "shell" not in rule:
            continue
        if not re.search(rf'"logs/{name}/', rule.get("log", "")):
            wrong.append(f"{name}: log not under logs/{name}/")
        if not re.search(rf'"benchmarks/{name}/[^"]+\.tsv"', rule.get("benchmark", "")):
            wrong.append(f"{name}: no benchmark under benchmarks/{name}/")
        if not re.search(r' > \{log\} 2>&1"\s*$', rule["shell"]):
            wrong.append(f"{name}: shell does not end with > {{log}} 2>&1")
    assert len(_rules()) > 20
    assert not wrong, wrong


def test_every_param_is_read_by_the_command():
    """A rule's params are what its shell line passes (`{params.x}`), no more (a param the
    command does not read would rerun the rule for nothing) and no less."""
    wrong = {}
    for name, rule in _rules().items():
        if "shell" not in rule:
            continue
        block = rule.get("params", "")
        indent = re.search(r"^( +)\w+=", block, re.M)
        declared = set(re.findall(rf"^{indent.group(1)}(\w+)=", block, re.M)) if indent else set()
        used = set(re.findall(r"\{params\.(\w+)", rule["shell"]))
        if declared != used:
            wrong[name] = {"unused": sorted(declared - used), "undeclared": sorted(used - declared)}
    assert not wrong, wrong
