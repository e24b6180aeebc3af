"""The Snakemake workflow itself: formatting, lint, DAGs, and a real run on the tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
from workflow_run import ROOT, TINY, copy_project, env, snakemake

from ascsharp.correlation import TABLE_COLUMNS

RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"
SURFACE = f"results/landscapes/{RUN}/direction_seed~42/surface.h5"


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_python_is_ruff_clean():
    subprocess.run([_tool("ruff"), "check", "workflow", "tests"], cwd=ROOT, check=True)
    subprocess.run([_tool("ruff"), "format", "--check", "workflow", "tests"], cwd=ROOT, check=True)


def test_snakefiles_are_snakefmt_clean():
    subprocess.run(
        [_tool("snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=ROOT, check=True
    )


def test_snakemake_lint_is_clean(tmp_path):
    proc = snakemake(copy_project(tmp_path), "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _job_counts(proc) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints (to stdout on a dry run, to stderr on a run)."""
    lines = (proc.stdout + proc.stderr).split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_default_dry_run_lists_the_dag(tmp_path):
    counts = _job_counts(snakemake(copy_project(tmp_path), "-n"))
    assert counts["train"] == 8
    assert counts["landscape_shard"] == 8 * 2 * 2  # runs x direction seeds x shards
    assert counts["gather"] == 16 and counts["sharpness"] == 8
    assert counts["synthesize"] == 1 and counts["features"] == 2


def test_paper_preset_dry_run_has_46_training_jobs(tmp_path):
    work = copy_project(tmp_path)
    data = work / "dcase"
    data.mkdir()  # the real data set would be here; a dry run only needs the folder
    out = snakemake(work, "-n", "--configfile", "workflow/presets/paper.yaml",
                    "--config", f"dataset={{'root': '{data}'}}")  # fmt: skip
    counts = _job_counts(out)
    assert counts["train"] == 46
    assert counts["landscape_shard"] == 46 * 3 * 4
    assert "synthesize" not in counts


def test_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    work = copy_project(tmp_path)
    proc = snakemake(work, "-n", "--config", "train={'epochs': 'ten'}", check=False)
    assert proc.returncode != 0
    assert "train.epochs: 'ten' is not of type 'integer'" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_workflow_produces_every_output(tiny_run):
    summary = pd.read_csv(tiny_run / "results/analysis/summary.tsv", sep="\t")
    assert len(summary) == 4 and summary["mean_sharpness"].notna().all()
    corr = pd.read_csv(tiny_run / "results/analysis/correlations.tsv", sep="\t")
    assert list(corr.columns[: len(TABLE_COLUMNS) - 1]) == TABLE_COLUMNS[:-1]
    assert {"test_all", "seen", "unseen"} <= set(corr["target"])
    for name in ("scatter", "devices", "correlations"):
        assert (tiny_run / f"results/analysis/figures/{name}.png").stat().st_size > 1000
    with h5py.File(tiny_run / SURFACE) as f:
        assert f["train_loss"].shape == (3, 3)
        assert list(f["xcoordinates"][:]) == [-0.25, 0.0, 0.25]
    sharp = json.loads((tiny_run / f"results/sharpness/{RUN}.json").read_text())
    assert sharp["aggregate"]["legacy-disk"]["grid-min"]["n"] == 1
    metrics = json.loads((tiny_run / f"results/models/{RUN}/metrics.json").read_text())
    assert set(metrics["test"]["by_device"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
    paper = pd.read_csv(tiny_run / "results/paper/correlations.tsv", sep="\t")
    row = paper.query("group == 'all' and target == 'test_all' and method == 'pearson'")
    assert round(float(row["statistic"].iloc[0]), 3) == 0.412
    # Progress is in the logs.
    log = (tiny_run / f"logs/train/{RUN}.log").read_text()
    assert "epoch 2/2" in log and "clips/s" in log
    shard_log = (tiny_run / f"logs/landscape_shard/{RUN}/direction_seed~42/shard~0.log").read_text()
    assert "points 5/5" in shard_log and "ETA" in shard_log


@pytest.mark.slow
def test_report_is_built(tiny_run):
    snakemake(tiny_run, "--configfile", str(TINY), "--report", "results/report.html")
    assert (tiny_run / "results/report.html").stat().st_size > 100_000


@pytest.mark.slow
def test_single_surface_target_rebuilds_only_what_it_lacks(tiny_run):
    (tiny_run / SURFACE).unlink()
    shard = tiny_run / f"results/landscapes/{RUN}/direction_seed~42/shard~1.npz"
    shard.unlink()
    # (Targets go before --configfile, which takes several values.)
    out = snakemake(tiny_run, SURFACE, "--cores", "2", "--configfile", str(TINY))
    counts = _job_counts(out)
    assert counts == {"landscape_shard": 1, "gather": 1, "total": 2}
    assert (tiny_run / SURFACE).exists()
    # Forcing one landscape reruns exactly its shards and gather, nothing upstream.
    forced = snakemake(tiny_run, SURFACE, "-n", "--configfile", str(TINY),
                       "--forcerun", "landscape_shard", "gather")  # fmt: skip
    assert _job_counts(forced) == {"gather": 1, "landscape_shard": 2, "total": 3}


def test_cli_is_on_path():
    proc = subprocess.run(["ascsharp", "--help"], env=env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "sharpness" in proc.stdout


@pytest.mark.slow
def test_keep_going_leaves_other_runs_intact(tiny_run, tmp_path):
    """A run that fails (batch larger than the training split) does not stop or spoil the others."""
    good = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~44"
    bad = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~100000/seed~44"
    block = {"arch": ["cnn10"], "optimizer": ["adam"], "lr": [0.001],
             "batch_size": [16, 100000], "seed": [42, 43, 44]}  # fmt: skip
    wider = tmp_path / "wider.yaml"
    wider.write_text(json.dumps({"grid": {"blocks": [block]}}))  # JSON is YAML
    before = (tiny_run / f"results/models/{RUN}/metrics.json").read_bytes()
    proc = snakemake(
        tiny_run,
        *(f"results/models/{run}/metrics.json" for run in (good, bad)),
        "--cores", "2", "--keep-going", "--configfile", str(TINY), str(wider),
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "batch_size 100000 exceeds" in (tiny_run / f"logs/train/{bad}.log").read_text()
    assert not (tiny_run / f"results/models/{bad}/model.pt").exists()
    assert json.loads((tiny_run / f"results/models/{good}/metrics.json").read_text())["run"] == good
    assert (tiny_run / f"results/models/{RUN}/metrics.json").read_bytes() == before
