"""Run the workflow on a copy of the project in a temporary folder (for the workflow tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
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


def env() -> dict[str, str]:
    """The environment of a user who activated the venv: `ascsharp` and `snakemake` on PATH."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
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
