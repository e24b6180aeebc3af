# Path helpers, the run grid and wildcard constraints; no logic beyond that.
import json
import sys
from pathlib import Path

from snakemake.utils import Paramspace

from ascsharp.config import ConfigError, analysed_runs, expand_grid, validate_config

try:
    _validated = validate_config(config, source="config")
except ConfigError as e:
    sys.exit(f"error: {e}")
config.clear()
config.update(_validated)

RUNS = Paramspace(expand_grid(config["grid"]), single_wildcard="run")
RUN_IDS = list(RUNS.instance_patterns)
DATA_ROOT = config["dataset"]["root"]
# Files shipped with the workflow, found from the Snakefile so that `--directory` works.
PAPER_TABLE = str(
    Path(workflow.basedir) / "workflow/reference/paper_results_icassp2024.csv"
)
LAND = config["landscape"]
SHARDS = range(LAND["shards"])
FOLD_OF_STORE = {"train": "train", "test": "evaluate"}
# Passed to `ascsharp summarize` as JSON: runs left out of the headline statistics.
ANALYSIS_EXCLUDE = json.dumps(config["analysis"]["exclude"])


wildcard_constraints:
    run=r"arch~[^/]+/optimizer~[^/]+/lr~[^/]+/batch_size~[^/]+/seed~[^/]+",
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


def memory_mb(wildcards, input):
    """Jobs hold their feature stores in memory: size them from the inputs, plus torch itself."""
    return int(2000 + 1.5 * input.size_mb)


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
        "results/paper/correlations.tsv",
        *expand("results/sharpness/{run}.json", run=RUN_IDS),
        *figures,
    ]
