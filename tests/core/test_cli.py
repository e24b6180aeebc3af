"""The `ascsharp` command line (docs/design.md): contracts, help, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ascsharp.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
PAPER_CSV = ROOT / "workflow/reference/paper_results_icassp2024.csv"


def ascsharp(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ascsharp"
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def write_bowl(path: Path, a: float = 2.0, c: float = 0.5, num: int = 11) -> Path:
    """A surface.h5 as loss-landscape writes it: L = a(x² + y²) + c on [-0.25, 0.25]²."""
    x = np.linspace(-0.25, 0.25, num)
    y = np.linspace(-0.25, 0.25, num)
    xx, yy = np.meshgrid(x, y)
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"] = a * (xx**2 + yy**2) + c
    return path


def test_sharpness_json_contract(tmp_path):
    surface = write_bowl(tmp_path / "surface.h5")
    proc = ascsharp("sharpness", str(surface), "--region", "disk", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # Max in the exact disk is a r² + c, minimum c: 100 · a r² / (1 + c).
    assert out["sharpness"] == pytest.approx(100 * 2.0 * 0.0625 / 1.5)
    assert out["reference_loss"] == pytest.approx(0.5)
    assert out["max_loss"] == pytest.approx(2.0 * 0.0625 + 0.5)
    assert out["points"] == 81
    legacy = json.loads(ascsharp("sharpness", str(surface), "--json").stdout)
    assert legacy["points"] == 77  # the original's floating-point disk on the paper grid


def test_sharpness_json_is_strict_for_a_diverged_surface(tmp_path):
    surface = write_bowl(tmp_path / "surface.h5")
    with h5py.File(surface, "r+") as f:
        loss = f["train_loss"][...]
        loss[5, 6] = np.inf  # a diverged point inside the disk
        f["train_loss"][...] = loss
    proc = ascsharp("sharpness", str(surface), "--json")
    assert proc.returncode == 0, proc.stderr

    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    out = json.loads(proc.stdout, parse_constant=refuse)
    assert out["sharpness"] is None and out["finite"] is False


def test_sharpness_refuses_a_foreign_file_in_one_line(tmp_path):
    bad = tmp_path / "surface.h5"
    bad.write_text("not hdf5")
    proc = ascsharp("sharpness", str(bad), "--json")
    assert proc.returncode != 0 and proc.stdout == ""
    assert str(bad) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["xcoordinates"] = np.zeros(3)
    proc = ascsharp("sharpness", str(tmp_path / "empty.h5"))
    assert "ycoordinates" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_paper_table_contract(tmp_path):
    proc = ascsharp("paper-table", str(PAPER_CSV), "--summary", str(tmp_path / "summary.tsv"),
                    "--correlations", str(tmp_path / "correlations.tsv"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "summary.tsv", sep="\t")) == 38
    table = pd.read_csv(tmp_path / "correlations.tsv", sep="\t")
    assert list(table.columns[:9]) == [
        "group", "target", "measure", "method", "n", "statistic", "p_value", "ci_low", "ci_high"
    ]  # fmt: skip
    assert set(table["measure"]) == {"mean_sharpness"}
    assert set(table["target"]) == {"test_all", "seen", "unseen"}
    assert set(table["method"]) == {"pearson", "spearman", "kendall", "granulated_kendall"}
    assert {"all", "optimizer=sgd", "arch=cnn14"} <= set(table["group"])
    row = table.query("group == 'all' and target == 'test_all' and method == 'pearson'").iloc[0]
    assert (round(row["statistic"], 3), round(row["p_value"], 3), row["n"]) == (0.412, 0.010, 38)


def test_paper_table_missing_file_names_it(tmp_path):
    proc = ascsharp("paper-table", str(tmp_path / "nope.csv"), "--summary",
                    str(tmp_path / "s.tsv"), "--correlations", str(tmp_path / "c.tsv"))  # fmt: skip
    assert proc.returncode != 0 and "nope.csv" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert "usage: ascsharp" in capsys.readouterr().out
