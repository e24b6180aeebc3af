# Path helpers, the run grid, wildcard constraints and what each cluster job asks for.
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from snakemake.utils import Paramspace

from ascsharp.core.config import ConfigError, validate_config
from ascsharp.data.meta import DOWNLOAD_MARKER, FOLD_FILES, META_FILE, SYNTHETIC_MARKER
from ascsharp.core.runs import RUN_PATTERN, expand_grid, parse_run_id

try:
    _validated = validate_config(config, source="config")
except ConfigError as e:
    sys.exit(f"error: {e}")
config.clear()
config.update(_validated)

RUNS = Paramspace(expand_grid(config["grid"]), single_wildcard="run")
RUN_IDS = list(RUNS.instance_patterns)
DATA_ROOT = config["dataset"]["root"]
# Files shipped with the workflow, found from this file (not from the Snakefile that includes the
# workflow, nor from the working directory), so that `--directory` and `module` both work.
PAPER_TABLE = str(
    Path(workflow.current_basedir).parent / "reference/paper_results_icassp2024.csv"
)
LAND = config["landscape"]
SHARDS = range(LAND["shards"])
FOLD_OF_STORE = {"train": "train", "test": "evaluate"}
# Passed to `ascsharp summarize` as JSON: runs left out of the headline statistics. Sorted keys:
# the order in which a config file spells a filter's keys must not rerun the summary.
ANALYSIS_EXCLUDE = json.dumps(config["analysis"]["exclude"], sort_keys=True)

# --- Rerun triggers (docs/reruns.md) ----------------------------------------------------------
# Snakemake reruns a job when a value among its `params` changes (and when its inputs or the
# text of its shell command do). So `params` hold exactly the values a command reads that can
# change its result, never a whole config section. Settings that only change how fast a job
# runs (evaluation batch sizes, landscape.compile) are declared as `resources` instead: a
# resource feeds the command as `{resources.name}` but is not part of what Snakemake records,
# so changing it reruns nothing (threads are not recorded either). `--set-resources` can also
# change them for a single rule.


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


wildcard_constraints:
    run=RUN_PATTERN,
    direction_seed=r"\d+",
    shard=r"\d+",
    store="train|test",


def landscape_dir(run, seed):
    return f"results/landscapes/{run}/direction_seed~{seed}"


def surfaces(wildcards):
    return [
        f"{landscape_dir(wildcards.run, d)}/surface.h5" for d in LAND["direction_seeds"]
    ]


def shards_of(wildcards):
    return expand(
        "{dir}/shard~{k}.npz",
        dir=landscape_dir(wildcards.run, wildcards.direction_seed),
        k=SHARDS,
    )


# --- The data set -----------------------------------------------------------------------------
# A features job depends on the files that define the data set, never on its folder: the folder's
# mtime changes whenever anything is added to it (a README, a notes file), and a folder input
# would then rerun every feature store, model and landscape. They are the same files whether the
# set is generated (rule synthesize), downloaded (rule download) or already there, so that
# switching dataset.synthetic.generate or dataset.download.enabled off once the data exist
# reruns nothing. The synthetic set and the download are published by renaming a finished
# folder into place, so their rules declare these files together with their marker file.
# meta.csv plus the two fold files the workflow reads (fold1_test.csv is not used).
DATASET_FILES = [META_FILE, *(FOLD_FILES[fold][0] for fold in ("train", "evaluate"))]
SYNTHETIC = config["dataset"]["synthetic"]
GENERATE_DATA = SYNTHETIC["generate"]
DOWNLOAD_DATA = config["dataset"]["download"]["enabled"] and not GENERATE_DATA


def published_dataset(marker):
    """The outputs of synthesize or download: their marker, then the files features read."""
    return [f"{DATA_ROOT}/{name}" for name in (marker, *DATASET_FILES)]


def dataset_files():
    """The inputs of a features job: meta.csv and the fold files of dataset.root."""
    files = [f"{DATA_ROOT}/{name}" for name in DATASET_FILES]
    if GENERATE_DATA or DOWNLOAD_DATA:
        return files
    missing = [f for f in files if not Path(f).is_file()]
    # Only the main process checks: inside a cluster job the data are not needed by every rule.
    if missing and workflow.is_main_process:
        sys.exit(
            f"error: dataset.root: no {missing[0]}: set dataset.root to the unpacked DCASE2020 "
            "development set, or dataset.download.enabled: true to download it, in a config "
            'file given after the preset (README, "Using the real DCASE2020 data")'
        )
    return files


def dataset_root_of_output(wildcards, output):
    """The folder that synthesize or download publishes (their marker is inside it)."""
    return str(Path(output[0]).parent)


def dataset_root_of_input(wildcards, input):
    """The data set folder of a features job: that of meta.csv."""
    return str(Path(input[0]).parent)


# --- Cluster resources ------------------------------------------------------------------------
# Each job's time limit and memory follow from the science settings; a retry (`attempt` 2, ...)
# asks for that many times as much, and training and shards resume where the killed attempt
# stopped. Site settings (partition, account, GPU model) come from the command line (README).
# Time budgets are for one V100-class GPU (~10 TFLOP/s reached in fp32) on the paper's data,
# fold1_train = 13,962 clips of 10 s, and scale with the clip length. One forward pass over a
# 10-s clip costs 26 GFLOP (CNN10) or 40 GFLOP (CNN14) (torch.utils.flop_counter), so an epoch
# (forward + backward, ~3 passes, plus the selection fold) takes 2-3 GPU minutes: budgeted x3
# for the slowest optimisers (SAM, GDTUO, K-FAC). A grid point is one forward pass over the
# clips (~40-60 s): budgeted x2. Synthetic sets have far fewer clips, so their budget is ample.
TRAIN_EPOCH_MINUTES = {"cnn10": 6, "cnn14": 10}
LANDSCAPE_POINT_MINUTES = {"cnn10": 1.2, "cnn14": 2}
# One feature store: ~5 CPU minutes per thread for the real set (README), plus reading 30 GB.
FEATURES_MINUTES = 60
PAPER_TRAIN_CLIPS = 13962
CLIP_SCALE = config["dataset"]["clip_seconds"] / 10


def _arch(wildcards):
    return parse_run_id(wildcards.run)["arch"]


def train_runtime(wildcards, attempt):
    """Minutes: every epoch plus one epoch's worth for loading, selection and testing."""
    epoch = TRAIN_EPOCH_MINUTES[_arch(wildcards)] * CLIP_SCALE
    return attempt * math.ceil((config["train"]["epochs"] + 1) * epoch)


def landscape_shard_runtime(wildcards, attempt):
    """Minutes: the shard's grid points plus one point's worth for loading, on its clips."""
    points = math.ceil(LAND["x"]["num"] * LAND["y"]["num"] / LAND["shards"])
    clips = min(1.0, LAND["clips"] / PAPER_TRAIN_CLIPS) if LAND["clips"] else 1.0
    point = LANDSCAPE_POINT_MINUTES[_arch(wildcards)] * CLIP_SCALE * clips
    return attempt * math.ceil((points + 1) * point)


def features_runtime(wildcards, attempt):
    return attempt * FEATURES_MINUTES


def memory_mb(wildcards, input, attempt):
    """Jobs hold their feature stores in memory: size them from the inputs, plus torch itself."""
    return attempt * int(2000 + 1.5 * input.size_mb)


def features_memory_mb(wildcards, attempt):
    """The store is written through a memory map; decoding and resampling need the rest."""
    return attempt * 4000


MEASURES = config["measures"]
# Every measure block of the config (each has `enabled`); the names are ascsharp's MEASURES.
MEASURE_NAMES = [
    name
    for name, block in MEASURES.items()
    if isinstance(block, dict) and block["enabled"]
]
# Which clips the measures use (measures.clips): the landscape's own (its split, count and
# seeded selection) or a selection of the model's training clips for the measures alone.
MEASURE_SELECTION = "landscape" if MEASURES["clips"] == "landscape" else "measures"
MEASURE_SPLIT = LAND["split"] if MEASURE_SELECTION == "landscape" else "train"
MEASURE_CLIPS = LAND["clips"] if MEASURE_SELECTION == "landscape" else MEASURES["clips"]
# Passes over a measure's clips per job (paper settings: ~150 Hessian-vector products of 9
# forward passes each, 101 forward passes, 63 gradient passes of 3 each, 2 x 15 x 10 forward
# passes, one forward pass), in forward passes.
MEASURE_FORWARD_PASSES = {
    "hessian": 1400,
    "adaptive_average": 110,
    "adaptive_worst": 200,
    "pacbayes": 310,
    "norms": 1,
    "margin": 1,
}


# Keys of a measure's section that are not `ascsharp measure` options defining its values:
# `enabled` decides whether it runs, `batch_size` (memory only) is a resource of the job.
MEASURE_NON_OPTIONS = ("enabled", "batch_size")


def measure_options(wildcards):
    """The settings that define the measure's values, as `ascsharp measure` options; sorted, so
    that the order in which a config file lists them reruns nothing."""
    settings = MEASURES[wildcards.measure]
    return " ".join(
        f"--{key.replace('_', '-')} {value}"
        for key, value in sorted(settings.items())
        if key not in MEASURE_NON_OPTIONS
    )


def measure_batch_option(wildcards):
    """`--batch-size N` (clips per chunk) of a measure that reads clips in chunks: memory and
    speed only, so a resource; empty for a measure without one (norms read no clips)."""
    size = MEASURES[wildcards.measure].get("batch_size")
    return f"--batch-size {size}" if size else ""


def measure_runtime(wildcards, attempt):
    """Minutes: the measure's forward-pass equivalents over its clips, at a landscape point's
    per-clip rate (a grid point is one forward pass over all training clips)."""
    clips = MEASURE_CLIPS or PAPER_TRAIN_CLIPS
    share = min(1.0, clips / PAPER_TRAIN_CLIPS)
    point = LANDSCAPE_POINT_MINUTES[_arch(wildcards)] * CLIP_SCALE * share
    return attempt * math.ceil(MEASURE_FORWARD_PASSES[wildcards.measure] * point + 5)


def grid_args():
    x, y = LAND["x"], LAND["y"]
    return f"--x {x['min']} {x['max']} {x['num']} --y {y['min']} {y['max']} {y['num']}"


def mel_args():
    f = config["features"]
    return (
        f"--sample-rate {f['sample_rate']} --n-fft {f['n_fft']} --hop-length {f['hop_length']} "
        f"--n-mels {f['n_mels']} --fmin {f['fmin']} --fmax {f['fmax']}"
    )


def all_targets():
    figures = [
        f"{landscape_dir(run, d)}/{name}.png"
        for run in RUN_IDS
        for d in LAND["direction_seeds"]
        for name in ("contour", "surface3d")
    ]
    return [
        "results/analysis/summary.tsv",
        "results/analysis/correlations.tsv",
        "results/analysis/figures/scatter.png",
        "results/analysis/measure_ranking.tsv",
        "results/paper/correlations.tsv",
        *expand("results/sharpness/{run}.json", run=RUN_IDS),
        *figures,
    ]
