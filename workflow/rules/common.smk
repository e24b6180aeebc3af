# What every stage's rules share: the validated config, the run grid, wildcard constraints, the
# report's categories and the cost model that the cluster resources are computed from. Each
# stage's own settings, helpers and rules are in its file (data.smk, features.smk, ...).
import os
import subprocess
import sys
from pathlib import Path

from snakemake.utils import Paramspace

from ascsharp.core.config import ConfigError, validate_config
from ascsharp.core.runs import RUN_PATTERN, expand_grid, parse_run_id

try:
    _validated = validate_config(config, source="config")
except ConfigError as e:
    sys.exit(f"error: {e}")
config.clear()
config.update(_validated)

RUNS = Paramspace(expand_grid(config["grid"]), single_wildcard="run")
RUN_IDS = list(RUNS.instance_patterns)
GRID_VALUES = RUNS.dataframe


def runs_where(key, value):
    """The run ids of the grid whose `key` is `value` (a wildcard's string)."""
    rows = GRID_VALUES.to_dict("records")
    return [run for run, row in zip(RUN_IDS, rows) if str(row[key]) == value]


# --- Rerun triggers (docs/reruns.md) ----------------------------------------------------------
# Snakemake reruns a job when a value among its `params` changes (and when its inputs or the
# text of its shell command do). So `params` hold exactly the values a command reads that can
# change its result, never a whole config section, and the shell line spells each of them as
# `--option {params.name}`. Settings that only change how fast a job runs (evaluation batch
# sizes, landscape.compile) are declared as `resources` instead: a resource feeds the command as
# `{resources.name}` but is not part of what Snakemake records, so changing it reruns nothing
# (threads are not recorded either). `--set-resources` can also change them for a single rule.
# Every rule that runs a command writes its stdout and stderr to its log (logs/<rule>/...) and
# its time and memory to benchmarks/<rule>/... (`ascsharp cost benchmarks/` adds them up).


# --- GPUs on a workstation --------------------------------------------------------------------
# Every GPU job (resources gpu=1) uses the first visible card (`cuda`), so a local run must hold
# at most one at a time: unless the user gave `--resources gpu=N`, a local run with a visible
# GPU is limited to gpu=1. CPU-only machines get no limit (`--cores 8` runs 8 grid jobs), and
# cluster runs get none either (Slurm gives each job its own card). A cluster run is told apart
# as Snakemake itself does: it has a number of nodes (`--jobs`, set by the Slurm profile); the
# executor is not known yet while the Snakefile is read.
def gpu_visible() -> bool:
    """Whether a job would see a CUDA card: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`
    (shipped with the NVIDIA driver); read without importing torch (seconds per parse).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        return first != "" and not first.startswith("-")  # "" and "-1" hide every card
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False  # no driver: no card
    return any(line.startswith("GPU ") for line in listed.splitlines())


if (
    workflow.is_main_process
    and workflow.nodes is None
    and "gpu" not in workflow.global_resources
    and gpu_visible()
):
    workflow.register_resource("gpu", 1)


# `other`: the second model of an interpolation (views.smk); `optimizer`, `arch`: the figures
# of one optimiser's runs (train.smk) or one architecture's (landscape.smk).
wildcard_constraints:
    run=RUN_PATTERN,
    other=RUN_PATTERN,
    direction_seed=r"\d+",
    shard=r"\d+",
    store="train|test",
    optimizer=r"[^/~]+",
    arch=r"[^/~]+",


# --- The report -------------------------------------------------------------------------------
# Every figure is written twice: PNG (README, a quick look) and SVG (vector graphics, the copy
# the report lists), each in the category of the question it answers, numbered in reading order.
REPORT = {
    "answer": "1. The answer: does a sharper minimum mean lower accuracy?",
    "predict": "2. Every measure, target and group",
    "unseen": "3. On unseen recording devices?",
    "group": "4. Within an optimiser or architecture?",
    "stable": "5. Is the sharpness stable over direction seeds?",
    "landscapes": "6. Loss landscapes",
    "training": "7. Training",
    "study": "8. Ours against the published study",
}
FIGURES = "results/analysis/figures"


def figure(path, caption, category, subcategory=None, **labels):
    """An SVG output listed in the report under `category`, with its caption."""
    return report(
        path,
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels=labels or None,
    )


# --- Cluster resources ------------------------------------------------------------------------
# Each job's time limit and memory follow from the science settings (each rule's runtime
# function sits beside it, built from the rates below); a retry (`attempt` 2, ...) asks for
# that many times as much, and training and shards resume where the killed attempt stopped.
# Site settings (partition, account, GPU model) come from the command line (README).
# Time budgets are for one V100-class GPU (~10 TFLOP/s reached in fp32) on the paper's data,
# fold1_train = 13,962 clips of 10 s, and scale with the clip length. One forward pass over a
# 10-s clip costs 26 GFLOP (CNN10) or 40 GFLOP (CNN14) (torch.utils.flop_counter), so an epoch
# (forward + backward, ~3 passes, plus the selection fold) takes 2-3 GPU minutes: budgeted x3
# for the slowest optimisers (SAM, GDTUO, K-FAC). A grid point is one forward pass over the
# clips (~40-60 s): budgeted x2. Synthetic sets have far fewer clips, so their budget is ample.
TRAIN_EPOCH_MINUTES = {"cnn10": 6, "cnn14": 10}
LANDSCAPE_POINT_MINUTES = {"cnn10": 1.2, "cnn14": 2}
PAPER_TRAIN_CLIPS = 13962
CLIP_SCALE = config["dataset"]["clip_seconds"] / 10


def _arch(wildcards):
    return parse_run_id(wildcards.run)["arch"]


def forward_pass_minutes(wildcards, clips):
    """Minutes of one forward pass of the run's model over `clips` clips (None: all of the
    training fold), at a landscape grid point's rate."""
    share = min(1.0, clips / PAPER_TRAIN_CLIPS) if clips else 1.0
    return LANDSCAPE_POINT_MINUTES[_arch(wildcards)] * CLIP_SCALE * share


def memory_mb(wildcards, input, attempt):
    """Jobs hold their feature stores in memory: size them from the inputs, plus torch itself."""
    return attempt * int(2000 + 1.5 * input.size_mb)
