"""`snakemake --profile slurm` on a real single-node Slurm started by the test (CI covers it).

The cluster comes from ../shared/slurm/start_slurm.sh (munge + slurmctld + slurmd on loopback,
fake GPU GRES so `gpu: 1` jobs schedule). Without root or that script the tests are skipped with
a message; everything else about them must pass.

One cluster run of the tiny config serves every test here, and two real faults happen during it:
a running landscape shard job is cancelled with `scancel`, and another shard job outlives the
1-minute time limit that the rule gives a tiny shard's first attempt, so Slurm kills it (TIMEOUT).
The profile's `retries: 1` resubmits both, the second with twice the time limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from workflow_run import ROOT, TINY, copy_project, env

from ascsharp.measures.job import MEASURES

SLURM_SCRIPTS = ROOT.parent / "shared" / "slurm"
RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"
SLOW_SHARD = f"results/landscapes/{RUN}/direction_seed~42/shard~1.npz"
# Every heavy job goes through sbatch; two shard jobs run twice (cancelled, timed out).
# Per rule: jobs of the tiny config (4 runs, every measure, 4 interpolation pairs, trajectories).
SUBMITTED_RULES = {
    "features": 2,
    "train": 4,
    "landscape_shard": 8 + 2,
    "measure": 4 * len(MEASURES),
    "interpolate": 4,
    "trajectory_plane": 4,
}
# Seconds after its job's start at which the slow shard's first attempt would start its real work:
# past its limit (1 minute, enforced within Slurm's 30-s check period, so by 90 s). The retry
# (2 minutes) starts at once.
SLOW_START_S = 95

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


@dataclass
class ClusterRun:
    work: Path
    returncode: int
    output: str
    # Slurm job id -> (comment naming rule and wildcards, time limit, every state seen)
    jobs: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)
    cancelled: str | None = None
    slow_jobs: list[str] = field(default_factory=list)

    def slurm_logs(self, rule: str) -> list[Path]:
        return sorted((self.work / ".snakemake/slurm_logs" / f"rule_{rule}").rglob("*.log"))


def _slow_ascsharp(folder: Path, jobs_file: Path) -> Path:
    """An `ascsharp` that makes the first attempt of the one shard SLOW_SHARD outlast its time
    limit, then runs the real command: the job itself is real, only its duration is stretched.
    The retry (a job id is already in `jobs_file`) runs at once."""
    real = Path(env()["PATH"].split(os.pathsep)[0]) / "ascsharp"
    folder.mkdir()
    shim = folder / "ascsharp"
    shim.write_text(f"""#!/usr/bin/env bash
case " $* " in
  *" {SLOW_SHARD} "*)
    retry=$([ -s {jobs_file} ] && echo 1 || echo 0)
    echo "$SLURM_JOB_ID" >> {jobs_file}
    if [ "$retry" = 0 ]; then
      start=$(scontrol show job "$SLURM_JOB_ID" | grep -o 'StartTime=[^ ]*' | cut -d= -f2)
      wait=$(( $(date -d "$start" +%s) + {SLOW_START_S} - $(date +%s) ))
      if [ "$wait" -gt 0 ]; then sleep "$wait"; fi
    fi ;;
esac
exec {real} "$@"
""")
    shim.chmod(0o755)
    return folder


def _squeue() -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%l|%k"],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return [line.split("|", 3) for line in out.splitlines() if line.count("|") == 3]


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tiny_run, tmp_path_factory) -> ClusterRun:
    tmp = tmp_path_factory.mktemp("cluster")
    work = copy_project(tmp / "work")
    slow_jobs = tmp / "slow_jobs.txt"
    run_env = env(slurm=True)
    run_env["PATH"] = f"{_slow_ascsharp(tmp / 'bin', slow_jobs)}{os.pathsep}{run_env['PATH']}"
    snakemake = str(Path(env()["PATH"].split(os.pathsep)[0]) / "snakemake")
    # The test node has 2 CPUs, and bit-equal results need the local run's thread counts.
    cmd = ["timeout", "-k", "30", "1500", snakemake, "--profile", "slurm", "--configfile",
           str(TINY), "--slurm-no-account", "--slurm-keep-successful-logs",
           "--set-threads", "features=2", "train=1", "landscape_shard=1"]  # fmt: skip
    run = ClusterRun(work, -1, "")
    with open(tmp / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=run_env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for job, state, limit, comment in _squeue():
                run.jobs.setdefault(job, (comment, limit, []))[2].append(state)
                # Fault 1: cancel the first shard job of another run seen running.
                if (
                    run.cancelled is None
                    and state == "RUNNING"
                    and comment.startswith("rule_landscape_shard_")
                    and RUN.replace("/", "_") not in comment
                ):
                    subprocess.run(["scancel", job], check=True, timeout=30)
                    run.cancelled = job
            time.sleep(1)
    run.returncode = proc.returncode
    run.output = (tmp / "snakemake.out").read_text()
    run.slow_jobs = slow_jobs.read_text().split() if slow_jobs.exists() else []
    return run


def test_profile_submits_jobs_through_sbatch_and_matches_local_run(cluster_run, tiny_run):
    run = cluster_run
    assert run.returncode == 0, run.output[-6000:]

    # Every heavy job went through sbatch: one Slurm log per job, named by its Slurm job id.
    for rule, count in SUBMITTED_RULES.items():
        found = run.slurm_logs(rule)
        assert len(found) == count, f"{rule}: {len(found)} Slurm logs, expected {count}"
        assert all(p.stem.isdigit() for p in found)
    # localrules stay on the submit host: the data set (compute nodes may have no internet),
    # the cheap steps.
    assert not run.slurm_logs("synthesize") and not run.slurm_logs("gather")
    assert "localrule synthesize:" in run.output

    # Results equal the local `--cores` run: identical sharpness, identical metrics (of the
    # tiny config's runs; other tests may have trained more models in the local run's folder).
    sharpness = sorted((run.work / "results/sharpness").rglob("*.json"))
    metrics = sorted((run.work / "results/models").rglob("metrics.json"))
    assert len(sharpness) == len(metrics) == 4
    for path, key in [(p, "per_seed") for p in sharpness] + [(p, "test") for p in metrics]:
        rel = path.relative_to(run.work)
        local = json.loads((tiny_run / rel).read_text())
        assert json.loads(path.read_text())[key] == local[key], rel


def test_scancel_of_a_running_shard_job_is_retried(cluster_run):
    run = cluster_run
    assert run.cancelled, "no landscape shard job was seen running"
    comment, _, states = run.jobs[run.cancelled]
    assert states[-1] == "CANCELLED", states
    retries = [j for j, (c, _, _) in run.jobs.items() if c == comment and j != run.cancelled]
    assert len(retries) == 1 and "COMPLETED" in run.jobs[retries[0]][2], run.jobs
    assert f"SLURM-job '{run.cancelled}' failed, SLURM status is: 'CANCELLED'" in run.output
    assert run.returncode == 0


def test_job_over_its_time_limit_is_retried_with_twice_the_time(cluster_run, tiny_run):
    run = cluster_run
    assert len(run.slow_jobs) == 2, run.slow_jobs
    first, second = run.slow_jobs
    # The rule gives a tiny shard 1 minute (attempt 1), then 2 minutes (attempt 2).
    assert run.jobs[first][1] == "1:00" and "TIMEOUT" in run.jobs[first][2], run.jobs[first]
    assert run.jobs[second][1] == "2:00" and "COMPLETED" in run.jobs[second][2], run.jobs[second]
    (first_log,) = [p for p in run.slurm_logs("landscape_shard") if p.stem == first]
    assert "DUE TO TIME LIMIT" in first_log.read_text()
    assert f"SLURM-job '{first}' failed, SLURM status is: 'TIMEOUT'" in run.output
    with np.load(run.work / SLOW_SHARD) as a, np.load(tiny_run / SLOW_SHARD) as b:
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
