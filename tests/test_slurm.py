"""`snakemake --profile slurm` on a real single-node Slurm started by the test (CI covers it).

The cluster comes from ../shared/slurm/start_slurm.sh (munge + slurmctld + slurmd on loopback,
fake GPU GRES so `gpu: 1` jobs schedule). Without root or that script the test is skipped with
a message; everything else about it must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from workflow_run import ROOT, TINY, copy_project, env

SLURM_SCRIPTS = ROOT.parent / "shared" / "slurm"
SUBMITTED_RULES = {"synthesize": 1, "features": 2, "train": 4, "landscape_shard": 8}

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_cluster():
    start = SLURM_SCRIPTS / "start_slurm.sh"
    if not start.exists():
        pytest.skip(f"no Slurm start script at {start}")
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm needs root")
    cluster_env = {**os.environ, "SLURM_FAKE_GPUS": "4"}
    proc = subprocess.run(["timeout", "-k", "10", "900", "bash", str(start)], env=cluster_env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"local Slurm did not start: {(proc.stdout + proc.stderr)[-2000:]}")
    yield
    subprocess.run(["timeout", "-k", "10", "120", "bash", str(SLURM_SCRIPTS / "stop_slurm.sh")],
                   capture_output=True)  # fmt: skip


def test_profile_submits_jobs_through_sbatch_and_matches_local_run(
    slurm_cluster, tiny_run, tmp_path
):
    work = copy_project(tmp_path / "cluster")
    snakemake = str(Path(env()["PATH"].split(os.pathsep)[0]) / "snakemake")
    # The test node has 2 CPUs, and bit-equal results need the local run's thread counts.
    cmd = ["timeout", "-k", "30", "1500", snakemake, "--profile", "slurm", "--configfile",
           str(TINY), "--slurm-no-account", "--slurm-keep-successful-logs",
           "--set-threads", "features=2", "train=1", "landscape_shard=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=work, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    # Every heavy job went through sbatch: one Slurm log per job, named by its Slurm job id.
    logs = work / ".snakemake" / "slurm_logs"
    for rule, count in SUBMITTED_RULES.items():
        found = sorted((logs / f"rule_{rule}").rglob("*.log"))
        assert len(found) == count, f"{rule}: {len(found)} Slurm logs, expected {count}"
        assert all(p.stem.isdigit() for p in found)
    assert not (logs / "rule_gather").exists()  # localrules stay on the submit host

    # Results equal the local `--cores` run: identical sharpness, identical metrics.
    for sharp_local in (tiny_run / "results/sharpness").rglob("*.json"):
        rel = sharp_local.relative_to(tiny_run)
        local, cluster = json.loads(sharp_local.read_text()), json.loads((work / rel).read_text())
        assert cluster["per_seed"] == local["per_seed"], rel
    for metrics_local in (tiny_run / "results/models").rglob("metrics.json"):
        rel = metrics_local.relative_to(tiny_run)
        local, cluster = json.loads(metrics_local.read_text()), json.loads((work / rel).read_text())
        assert cluster["test"] == local["test"], rel
