"""The Snakemake workflow itself: formatting, lint, DAGs, and a real run on the tiny config."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from pytest import approx
from workflow_run import (
    GOLDEN,
    ROOT,
    TINY,
    copy_project,
    env,
    fake_dataset,
    result_numbers,
    snakemake,
    snakemake_batch,
)

from ascsharp.analysis.correlation import TABLE_COLUMNS

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


# The lints we accept: the rules run in the one environment that runs Snakemake (the
# Snakefile imports ascsharp while it is parsed), so no rule declares a conda env (README); and
# one stage is one rules file, so a stage's helpers (its runtime, its targets) sit beside its
# rules rather than in common.smk, which holds only what the stages share.
ACCEPTED_LINTS = {
    "Specify a conda environment or container for each rule.",
    "Mixed rules and functions in same snakefile.",
}


def test_snakemake_lint_is_clean(tmp_path):
    proc = snakemake(copy_project(tmp_path), "--lint", check=False)
    found = set(re.findall(r"^\s*\* (.+?):?$", proc.stdout + proc.stderr, re.M))
    assert found <= ACCEPTED_LINTS, proc.stdout + proc.stderr


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


def _jobs(proc) -> list[dict]:
    """Every job a dry run lists: rule, wildcards and resources, as Snakemake prints them."""
    return _jobs_in(proc.stdout + proc.stderr)


def _jobs_in(text: str) -> list[dict]:
    """Every job listed in a dry run's output (_jobs)."""
    jobs = []
    for block in re.split(r"\n\[[^\]]+\]\n", text)[1:]:
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        resources = dict(
            item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item
        )
        jobs.append({"rule": head[1], "input": fields.get("input", ""),
                     "output": fields.get("output", ""), "wildcards": fields.get("wildcards", ""),
                     "resources": resources})  # fmt: skip
    return jobs


def _localrules(work: Path, *configfiles: str) -> set[str]:
    """The rules that run on the submit host under a cluster executor (a dry run does not say)."""
    script = (
        "import sys; from pathlib import Path; from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings()) as api:\n"
        "    wf = api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[Path(c) "
        "for c in sys.argv[1:]]), snakefile=Path('Snakefile'), workdir=Path('.'))\n"
        "    print(' '.join(sorted(wf._workflow._localrules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *configfiles], cwd=work, env=env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return set(proc.stdout.split())


def test_default_dry_run_lists_the_dag(tmp_path):
    from ascsharp.data.meta import SYNTHETIC_MARKER as MARKER

    out = snakemake(copy_project(tmp_path), "-n")
    counts = _job_counts(out)
    assert counts["train"] == 8
    assert counts["landscape_shard"] == 8 * 2 * 2  # runs x direction seeds x shards
    assert counts["gather"] == 16 and counts["run_sharpness"] == 8
    assert counts["measure"] == 8 * 6 and counts["rank_measures"] == 1
    assert counts["synthesize"] == 1 and counts["features"] == 2
    # The synthetic set is declared by the marker file `ascsharp synth` writes into it and the
    # files the features read (also when the set is not generated: docs/reruns.md).
    (synthesize,) = [j for j in _jobs(out) if j["rule"] == "synthesize"]
    assert synthesize["output"].split(", ") == [
        f"data/synthetic/{name}"
        for name in (MARKER, "meta.csv", "evaluation_setup/fold1_train.csv",
                     "evaluation_setup/fold1_evaluate.csv")
    ]  # fmt: skip


def test_paper_preset_dry_run_has_46_training_jobs(tmp_path):
    work = copy_project(tmp_path)
    data = fake_dataset(work / "dcase")
    out = snakemake(work, "-n", "--configfile", "workflow/presets/paper.yaml",
                    "--config", f"dataset={{'root': '{data}'}}")  # fmt: skip
    counts = _job_counts(out)
    shards = yaml.safe_load((work / "workflow/presets/paper.yaml").read_text())["landscape"]
    assert counts["train"] == 46
    assert counts["landscape_shard"] == 46 * 3 * shards["shards"]
    assert counts["measure"] == 46 * 6
    assert "synthesize" not in counts and "download" not in counts


@pytest.mark.parametrize("profile", [[], ["--profile", "slurm"]], ids=["local", "slurm"])
def test_paper_preset_without_data_stops_with_one_line(tmp_path, profile):
    """Before the data exist, a dry run says in one line how to point at them or download them."""
    work = copy_project(tmp_path)
    proc = snakemake(work, "-n", *profile, "--configfile", "workflow/presets/paper.yaml",
                     check=False)  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "rror" in line or "Exception" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: dataset.root: no data/TAU-urban")
    assert "dataset.download.enabled: true" in errors[0] and "Traceback" not in proc.stderr


def test_download_is_planned_on_the_submit_host(tmp_path):
    """With the download enabled, the dry run plans it before features; compute nodes often
    have no internet, so it is a local rule under --profile slurm."""
    from ascsharp.data.meta import DOWNLOAD_MARKER as MARKER

    work = copy_project(tmp_path)
    mine = tmp_path / "my-data.yaml"
    mine.write_text("dataset:\n  download:\n    enabled: true\n")
    proc = snakemake(work, "-n", "--profile", "slurm", "--configfile",
                     "workflow/presets/paper.yaml", str(mine))  # fmt: skip
    (download,) = [j for j in _jobs(proc) if j["rule"] == "download"]
    # The download is declared by the marker file `ascsharp download` writes into the set (and
    # the files the features read).
    root = "data/TAU-urban-acoustic-scenes-2020-mobile-development"
    assert download["output"].split(", ")[:2] == [f"{root}/{MARKER}", f"{root}/meta.csv"]
    assert _job_counts(proc)["features"] == 2
    assert "download" in _localrules(work, "workflow/presets/paper.yaml", str(mine))


def _readme_cluster_commands() -> list[list[str]]:
    """The `snakemake ... --profile slurm ...` command lines of the README's code blocks."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("snakemake ") and "--profile slurm" in line:
                commands.append(shlex.split(line))
    return commands


# What the rules ask for on the paper preset (features.smk, train.smk), in minutes: features 60;
# training (50 + 1 epochs) x 6 (CNN10) or x 10 (CNN14) minutes per epoch of 10-s clips.
PAPER_RUNTIME = {"features": {"60"}, "train": {"306", "510"}}


def test_readme_cluster_commands_keep_every_rules_resources(tmp_path):
    """Site options on the command line replace the profile's option of the same name; the
    resources that the science needs are on the rules, so every README command keeps them,
    and CPU jobs are sent to a GPU partition only when told."""
    commands = _readme_cluster_commands()
    assert len(commands) >= 3
    work = copy_project(tmp_path)
    data = fake_dataset(work / "dcase")
    (work / "my-data.yaml").write_text(f"dataset:\n  root: {data}\n")
    # Feature stores of the paper's size (sparse), older than the data: features reruns, and
    # the memory of the jobs that load them is computed in the dry run.
    stores = work / "results/features"
    stores.mkdir(parents=True)
    # 13,962 and 2,968 clips x 64 mel bands x 1001 frames x 4 bytes
    sizes = {"train.npy": 3_577_869_312, "test.npy": 760_554_496}
    for name, size in sizes.items():
        with open(stores / name, "wb") as f:
            f.truncate(size)
    for name in ("train.tsv", "test.tsv", "train.json", "test.json", "validation.tsv"):
        (stores / name).write_text("")
    for path in stores.iterdir():
        os.utime(path, (time.time() - 3600,) * 2)
    local = _localrules(work, "workflow/presets/paper.yaml", "my-data.yaml")
    keys = ("runtime", "mem_mb", "gpu")

    # The plain command and every README command, dry-run in a few Python processes.
    plain_cmd = ["snakemake", "--profile", "slurm", "--configfile",
                 "workflow/presets/paper.yaml", "my-data.yaml"]  # fmt: skip
    outputs = snakemake_batch(work, [[*cmd[1:], "-n"] for cmd in [plain_cmd, *commands]])

    def submitted(output: str) -> dict[tuple[str, str], dict[str, str]]:
        jobs = _jobs_in(output)
        return {(j["rule"], j["wildcards"]): j["resources"] for j in jobs if j["rule"] not in local}

    plain = submitted(outputs[0])
    by_rule: dict[str, set[tuple]] = {}
    for (rule, _), res in plain.items():
        by_rule.setdefault(rule, set()).add(tuple(res.get(k) for k in keys))
    assert set(by_rule) == {"features", "train", "landscape_shard", "measure", "interpolate"}
    assert {r[0] for r in by_rule["features"]} == PAPER_RUNTIME["features"]
    assert {r[0] for r in by_rule["train"]} == PAPER_RUNTIME["train"]
    # 2000 MB + 1.5 x the stores it loads (Snakemake's size_mb counts MiB).
    assert {r[1] for r in by_rule["train"]} == {str(int(2000 + 1.5 * sum(sizes.values()) / 2**20))}
    gpu_rules = ("train", "landscape_shard", "measure", "interpolate")
    assert {r[2] for rule in gpu_rules for r in by_rule[rule]} == {"1"}
    assert {r[2] for r in by_rule["features"]} == {None}
    assert all(int(r[0]) >= 60 for r in by_rule["landscape_shard"])
    for cmd, output in zip(commands, outputs[1:], strict=True):
        got = submitted(output)
        assert got and set(got) <= set(plain), shlex.join(cmd)
        for job, res in got.items():
            assert [res.get(k) for k in keys] == [plain[job].get(k) for k in keys], job
            told = any(arg.startswith("features:slurm_partition=") for arg in cmd)
            if job[0] == "features" and not told:
                assert "slurm_partition" not in res, shlex.join(cmd)


GPU_RULES = {"train", "landscape_shard", "measure"}


def test_a_retried_gpu_job_asks_for_attempt_times_the_time_and_memory(tmp_path):
    """A job killed for time or memory is resubmitted with `attempt` 2 and must ask for twice
    as much of both. Snakemake hands a job's attempt to the job's own Snakemake as `--attempt`;
    a dry run with it lists the resources a retry is given, for every GPU job of the tiny DAG."""
    work = copy_project(tmp_path)
    jobs = _jobs(snakemake(work, "-n", "--configfile", str(TINY)))
    gpu_jobs = [j for j in jobs if j["resources"].get("gpu") == "1"]
    assert {j["rule"] for j in gpu_jobs} >= GPU_RULES
    # Memory is sized from the inputs: give every input of a GPU job a size (sparse files).
    for path in {f for j in gpu_jobs for f in j["input"].split(", ")}:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        with open(work / path, "wb") as f:
            f.truncate(3 * 2**20)

    def gpu_resources(output: str) -> dict[tuple[str, str], dict[str, str]]:
        return {(j["rule"], j["wildcards"]): j["resources"] for j in _jobs_in(output)
                if j["resources"].get("gpu") == "1"}  # fmt: skip

    attempts = [["-n", "--attempt", str(a), "--configfile", str(TINY)] for a in (1, 2)]
    first, retry = map(gpu_resources, snakemake_batch(work, attempts))
    assert len(first) == len(gpu_jobs) and {rule for rule, _ in first} >= GPU_RULES
    assert set(retry) == set(first)
    for job, asked in first.items():
        for key in ("runtime", "mem_mb"):
            assert int(asked[key]) > 0, (job, key)
            assert int(retry[job][key]) == 2 * int(asked[key]), (job, key)


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
    # Every figure as PNG and SVG, the HTML pages, and the comparison with the published runs
    # (the tiny grid's CNN10 Adam/SGD runs at lr 0.001, batch 16, seeds 42/43 are in the table).
    for path in REPORT_FIGURES:
        for suffix in (".png", ".svg"):
            assert (tiny_run / path).with_suffix(suffix).stat().st_size > 1000, path
    for path in REPORT_PAGES:
        text = (tiny_run / path).read_text()
        assert "</table>" in text or "Plotly.react" in text, path
    twins = pd.read_csv(tiny_run / "results/analysis/paper_comparison.tsv", sep="\t")
    assert sorted(twins["run"]) == sorted(summary["run"]) and twins["paper_id"].notna().all()
    # Every measure of every run: a summary column and rows of the correlations and the ranking.
    measure_columns = ["hessian_lambda_max", "hessian_trace", "adaptive_average", "adaptive_worst",
                       "pacbayes_flatness", "pacbayes_magnitude_flatness", "log_prod_frobenius",
                       "log_prod_spectral", "path_norm", "distance_from_init", "weight_norm",
                       "inverse_margin"]  # fmt: skip
    assert summary[measure_columns].notna().all().all()
    assert set(measure_columns) <= set(corr["measure"])
    ranking = pd.read_csv(tiny_run / "results/analysis/measure_ranking.tsv", sep="\t")
    assert set(measure_columns) | {"mean_sharpness", "train_loss"} <= set(ranking["measure"])
    assert {"beats_train_loss", "psi_gain_vs_weight_norm_ci_low"} <= set(ranking.columns)
    hessian = json.loads((tiny_run / f"results/measures/{RUN}/hessian.json").read_text())
    # The landscape's clips (landscape.clips 32 of the model's training clips), by default.
    assert hessian["run"] == RUN and hessian["clips"]["n"] == 32 and hessian["cost"]["flops"] > 0
    assert hessian["clips"]["selection"] == "landscape"
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
def test_tiny_workflow_results_equal_the_golden_numbers(tiny_run):
    # Recorded from the tiny run before the code was reorganised (issue 13): a change that only
    # moves code around must leave every metric, surface loss, sharpness and measure as it was.
    # CPU runs are deterministic; the tolerance only forgives the last bits of a float64.
    # Regenerate deliberately, after a change of the science: python tests/workflow_run.py DIR
    golden = json.loads(GOLDEN.read_text())
    numbers = result_numbers(tiny_run)
    assert sorted(numbers) == sorted(golden)
    moved = {k: (numbers[k], v) for k, v in golden.items() if numbers[k] != approx(v, rel=1e-9)}
    assert not moved, f"{len(moved)} of {len(golden)} numbers moved, e.g. {list(moved.items())[:5]}"


# What the report lists for the tiny config: every figure (its SVG; the PNG beside it) and page.
_TINY_RUNS = [f"arch~cnn10/optimizer~{o}/lr~0.001/batch_size~16/seed~{s}"
              for o in ("adam", "sgd") for s in (42, 43)]  # fmt: skip
REPORT_FIGURES = [
    *(f"results/analysis/figures/{name}.svg" for name in (
        "scatter", "devices", "correlations", "by_optimizer", "by_arch", "forest",
        "forest_groups", "seeds",
        "measure_ranking", "paper_comparison", "training/optimizer~adam",
        "training/optimizer~sgd", "landscapes/arch~cnn10")),
    *(f"results/landscapes/{run}/{name}.svg" for run in _TINY_RUNS
      for name in ("slices", "direction_seed~42/contour", "direction_seed~42/surface3d")),
    "results/paper/figures/scatter.svg",
]  # fmt: skip
REPORT_PAGES = [
    *(f"results/analysis/tables/{name}.html" for name in
      ("summary", "headline", "paper_comparison")),
    "results/analysis/figures/surfaces3d.html",
]  # fmt: skip


@pytest.mark.slow
def test_report_is_built(tiny_run, tiny_report):
    html = tiny_report.read_text()
    listed = set(re.findall(r'"(results/[^"]+)": \{"name"', html))
    assert set(REPORT_FIGURES) | set(REPORT_PAGES) <= listed, sorted(listed)
    # The layout for large reports (the paper preset: hundreds of files): a zip with the files
    # beside report.html instead of inside it.
    snakemake(tiny_run, "--configfile", str(TINY), "--report", "results/report.zip")
    with zipfile.ZipFile(tiny_run / "results/report.zip") as z:
        names = z.namelist()
        assert "report/report.html" in names
        files = {name.rsplit("/", 1)[-1] for name in names if name.startswith("report/data/raw/")}
        assert {Path(p).name for p in REPORT_FIGURES + REPORT_PAGES} <= files


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


@pytest.mark.slow
def test_adding_a_file_to_the_data_folder_reruns_nothing(tiny_run):
    # Other tests rebuild parts of the tiny run (a surface: what reads it is due): the jobs a
    # dry run lists must be the same before and after the edit, none more.
    def due() -> tuple[dict[str, int], list[tuple[str, str, str]]]:
        """Jobs per rule (every rule), and each job of the rules that are not local."""
        proc = snakemake(tiny_run, "-n", "--configfile", str(TINY))
        if "Nothing to be done" in proc.stdout + proc.stderr:
            return {}, []
        jobs = sorted((j["rule"], j["wildcards"], j["output"]) for j in _jobs(proc))
        return _job_counts(proc), jobs

    before = due()
    assert not {"synthesize", "features"} & set(before[0]), before[0]
    data = tiny_run / "data/synthetic"
    note = data / "README.txt"
    note.write_text("notes about this copy of the data\n")
    try:
        os.utime(data)  # the folder's mtime moves, as any edit in it would move it
        after = due()
    finally:
        note.unlink()
    assert after == before


@pytest.mark.slow
def test_kill_9_of_a_landscape_shard_then_rerun_computes_only_the_missing_points(
    tiny_run, tmp_path
):
    """A real SIGKILL of `ascsharp landscape-shard` mid-grid; the rerun computes exactly the
    points missing from its partial file, and the shard equals an uninterrupted one bit for bit."""
    model = tiny_run / f"results/models/{RUN}/model.pt"
    directions = tiny_run / f"results/landscapes/{RUN}/direction_seed~42/directions.pt"
    store = tiny_run / "results/features/train"
    cmd = [_tool("ascsharp"), "landscape-shard", "--model", str(model), "--directions",
           str(directions), "--features-npy", f"{store}.npy", "--features-tsv", f"{store}.tsv",
           "--split", "train", "--clips", "all", "--batch-size", "64", "--shards", "1",
           "--shard", "0", "--x", "-0.5", "0.5", "7", "--y", "-0.5", "0.5", "7", "--threads",
           "1", "--precision", "float32", "--no-compile", "--out"]  # fmt: skip
    n_points = 7 * 7
    killed = tmp_path / "killed" / "shard~0.npz"
    partial = killed.with_name(killed.name + ".partial.json")
    killed.parent.mkdir()
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*cmd, str(killed)], stderr=log, env=env())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(partial.read_text())["done"]) >= 8:
                    break
            except (OSError, ValueError):
                pass  # not written yet (it is replaced atomically, never half-written)
            time.sleep(0.02)
        assert proc.poll() is None, "the shard finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = set(json.loads(partial.read_text())["done"])
    assert 8 <= len(done_before) < n_points and not killed.exists()

    rerun = subprocess.run([*cmd, str(killed)], capture_output=True, text=True, env=env())
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)}/{n_points} points done" in rerun.stderr
    computed = re.findall(r"points \d+/\d+ .*\(alpha=", rerun.stderr)
    assert len(computed) == n_points - len(done_before), rerun.stderr[-3000:]
    assert not partial.exists()

    clean = tmp_path / "clean" / "shard~0.npz"
    proc = subprocess.run([*cmd, str(clean)], capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    with np.load(killed) as a, np.load(clean) as b:
        assert a.files == b.files
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
        assert sorted(a["indices"]) == list(range(n_points))


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
        "--cores", "2", "--keep-going", "--show-failed-logs", "--configfile", str(TINY),
        str(wider), check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    error = "ascsharp train: error: batch_size 100000 exceeds"
    assert error in (tiny_run / f"logs/train/{bad}.log").read_text()
    # --show-failed-logs (the README's flag; `show-failed-logs: true` in the Slurm profile)
    # puts the failed job's one-line error in the console, not only in its log file.
    assert error in proc.stdout + proc.stderr
    assert not (tiny_run / f"results/models/{bad}/model.pt").exists()
    assert json.loads((tiny_run / f"results/models/{good}/metrics.json").read_text())["run"] == good
    assert (tiny_run / f"results/models/{RUN}/metrics.json").read_bytes() == before
