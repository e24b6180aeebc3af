"""Run the workflow on a copy of the project in a temporary folder (for the workflow tests)."""

from __future__ import annotations

import atexit
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"
PROJECT_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "slurm")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


# The golden numbers (below) come from ten epochs of training, where the last bits of one
# convolution grow into other accuracies: torch's CPU kernels pick their vector width by the
# processor (AVX2, AVX-512, AMX), so a golden recorded on one x86 machine moved on another. The
# workflow tests therefore pin ATen, oneDNN and MKL to AVX2, which every x86-64 CI machine has.
PINNED_CPU_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def fake_dataset(root: Path) -> Path:
    """The files that define a DCASE2020 folder (a dry run reads no audio)."""
    (root / "evaluation_setup").mkdir(parents=True)
    for name in ("meta.csv", "evaluation_setup/fold1_train.csv",
                 "evaluation_setup/fold1_evaluate.csv"):  # fmt: skip
        (root / name).write_text("filename\tscene_label\n")
    return root


@functools.cache
def _failing_scontrol() -> Path:
    """A folder holding an `scontrol` that fails at once (env)."""
    folder = Path(tempfile.mkdtemp(prefix="no-scontrol-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "scontrol").write_text(
        "#!/bin/sh\necho 'scontrol: no Slurm controller outside the Slurm test' >&2\nexit 1\n"
    )
    (folder / "scontrol").chmod(0o755)
    return folder


def env(slurm: bool = False) -> dict[str, str]:
    """The environment of a user who activated the venv (`ascsharp` and `snakemake` on PATH),
    with torch's CPU kernels pinned to AVX2 on x86-64 (PINNED_CPU_ISA).

    Unless `slurm`, `scontrol` fails at once: the Slurm executor plugin runs `scontrol show
    config` each time Snakemake starts (for a help text), and where Slurm is installed but no
    controller runs (CI, outside the Slurm test) that call waits ~9 s for a connection, in every
    dry run. Nothing else of a local run or a dry run calls it."""
    e = dict(os.environ)
    path = [str(Path(sys.executable).parent), e.get("PATH", "")]
    if not slurm and shutil.which("scontrol"):
        path.insert(1, str(_failing_scontrol()))  # the venv's folder stays first
    e["PATH"] = os.pathsep.join(path)
    if platform.machine() in ("x86_64", "AMD64"):
        e.update(PINNED_CPU_ISA)
    return e


def snakemake(workdir: Path, *args: str, timeout: int = 1200, check: bool = True):
    cmd = [str(Path(sys.executable).parent / "snakemake"), *args]
    proc = subprocess.run(
        cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return proc


# Many `snakemake` command lines in one Python process: Snakemake's own command line, parsed and
# run as its `snakemake` script runs it (cli.main without the exit), each with stdout and stderr
# captured. Most of a dry run of the tiny workflow is starting Python and importing snakemake,
# torch and ascsharp; the rerun matrix's ~95 dry runs pay that once per worker.
_BATCH = r"""
import contextlib, io, json, sys
from snakemake.cli import args_to_api, parse_args
from snakemake.exceptions import print_exception
argvs, out = json.loads(sys.argv[1]), sys.argv[2]
results = []
for argv in argvs:
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            parser, args = parse_args(argv)
            ok = bool(args_to_api(args, parser))
        except Exception as e:
            print_exception(e)
            ok = False
    results.append({"ok": ok, "output": text.getvalue()})
with open(out, "w") as f:
    json.dump(results, f)
"""


def snakemake_batch(workdir: Path, argvs: list[list[str]], workers: int | None = None) -> list[str]:
    """What `snakemake *argv` prints (stdout and stderr together) in `workdir`, for each argv,
    run in `workers` Python processes at once (default: one per core). For read-only commands
    (dry runs): they share the folder. Fails like `snakemake` on the first command that fails."""
    import json

    workers = max(1, min(workers or os.cpu_count() or 1, len(argvs)))
    chunks = [argvs[i::workers] for i in range(workers)]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(workers)]
        logs = [Path(tmp) / f"{i}.log" for i in range(workers)]
        procs = []
        for chunk, out, log in zip(chunks, outs, logs, strict=True):
            cmd = [sys.executable, "-c", _BATCH, json.dumps(chunk), str(out)]
            with open(log, "w") as stderr:
                procs.append(subprocess.Popen(cmd, cwd=workdir, env=env(), stderr=stderr))
        for proc, log in zip(procs, logs, strict=True):
            if proc.wait() != 0:
                error = log.read_text()[-8000:]
                raise AssertionError(f"snakemake batch failed ({proc.returncode}):\n{error}")
        results = [json.loads(out.read_text()) for out in outs]
    ordered = [results[i % workers][i // workers] for i in range(len(argvs))]
    for argv, result in zip(argvs, ordered, strict=True):
        if not result["ok"]:
            raise AssertionError(f"snakemake {' '.join(argv)} failed:\n{result['output'][-8000:]}")
    return [result["output"] for result in ordered]


# --- Golden numbers: the tiny workflow's results, recorded before a refactor -----------------
GOLDEN = ROOT / "tests" / "fixtures" / "tiny_golden.json"
# Of each sharpness variant: the value and what it is made of (the rest is settings).
SHARPNESS_KEYS = ("sharpness", "reference_loss", "max_loss", "points")


def _flatten(prefix: str, value, out: dict) -> None:
    """Every number under `value` as `prefix/key/...` -> float (bools and strings are skipped)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(f"{prefix}/{i}", item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def result_numbers(workdir: Path) -> dict[str, float]:
    """The numbers a change of code must not move: per run, the metrics of the selected
    weights, every loss of every surface, every sharpness variant and every measure's values."""
    import json

    import h5py

    out: dict[str, float] = {}
    results = workdir / "results"
    for metrics_file in sorted(results.glob("models/**/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        run = metrics["run"]
        keep = ("epoch", "train", "validation", "test", "generalisation_gap")
        _flatten(f"{run}/metrics", {k: metrics[k] for k in keep if k in metrics}, out)
        sharpness = json.loads((results / f"sharpness/{run}.json").read_text())
        for seed, regions in sharpness["per_seed"].items():
            for region, references in regions.items():
                for reference, value in references.items():
                    kept = {k: value[k] for k in SHARPNESS_KEYS}
                    _flatten(f"{run}/sharpness/{seed}/{region}/{reference}", kept, out)
        for surface in sorted((results / f"landscapes/{run}").glob("*/surface.h5")):
            with h5py.File(surface) as f:
                for name in ("train_loss", "train_acc"):
                    _flatten(f"{run}/{surface.parent.name}/{name}", f[name][:].tolist(), out)
        for measure in sorted((results / f"measures/{run}").glob("*.json")):
            values = json.loads(measure.read_text())["values"]
            _flatten(f"{run}/measures/{measure.stem}", values, out)
    return out


if __name__ == "__main__":
    # python tests/workflow_run.py WORKDIR: run the tiny config in WORKDIR as the tests run it (a
    # copy of the project, CPU kernels pinned; nothing to do where it has finished), then record
    # its numbers as the golden ones.
    import json

    work = Path(sys.argv[1])
    if not (work / "Snakefile").exists():
        copy_project(work)
    snakemake(work, "--cores", "2", "--configfile", str(TINY), timeout=3600)
    numbers = result_numbers(work)
    GOLDEN.write_text(json.dumps(numbers, indent=0, sort_keys=True) + "\n")
    print(f"{len(numbers)} numbers -> {GOLDEN}")
