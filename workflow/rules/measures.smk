# Measures beyond the study's sharpness: one job per (run, measure) on the clips of the run's
# landscape (or a selection of its training clips, measures.clips); a killed job resumes from
# results/measures/{run}/{measure}.json.partial.json.
import math

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
    that the order in which a config file lists them reruns nothing. A switch is `--key` or
    `--no-key`."""
    settings = MEASURES[wildcards.measure]
    return " ".join(
        measure_option(key, value)
        for key, value in sorted(settings.items())
        if key not in MEASURE_NON_OPTIONS
    )


def measure_option(key, value):
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def measure_batch_option(wildcards):
    """`--batch-size N` (clips per chunk) of a measure that reads clips in chunks: memory and
    speed only, so a resource; empty for a measure without one (norms read no clips)."""
    size = MEASURES[wildcards.measure].get("batch_size")
    return f"--batch-size {size}" if size else ""


def measure_runtime(wildcards, attempt):
    """Minutes: the measure's forward-pass equivalents over its clips, at a landscape point's
    per-clip rate (a grid point is one forward pass over all training clips)."""
    point = forward_pass_minutes(wildcards, MEASURE_CLIPS)
    return attempt * math.ceil(MEASURE_FORWARD_PASSES[wildcards.measure] * point + 5)


rule measure:
    input:
        model="results/models/{run}/model.pt",
        # The store that holds the measures' clips (the landscape's split, or train).
        npy=f"results/features/{MEASURE_SPLIT}.npy",
        tsv=f"results/features/{MEASURE_SPLIT}.tsv",
    output:
        measure="results/measures/{run}/{measure}.json",
    log:
        "logs/measure/{run}/{measure}.log",
    benchmark:
        "benchmarks/measure/{run}/{measure}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=measure_runtime,
        mem_mb=memory_mb,
        # Memory and speed only: reruns nothing (common.smk).
        batch_option=measure_batch_option,
        # A switch: --compile or --no-compile (the forward of adaptive_average and pacbayes).
        compile="--compile" if MEASURES["compile"] else "--no-compile",
    params:
        selection=MEASURE_SELECTION,
        split=MEASURE_SPLIT,
        clips=MEASURE_CLIPS or "all",
        seed=MEASURES["seed"],
        # The one rule whose options are not spelt out: each measure takes its own (its
        # section measures.<measure> less `enabled` and `batch_size`; `ascsharp measure -h`),
        # e.g. `--lanczos-tol 0.001 --parameters all --top-k 5 ...` for hessian and none for
        # norms, so one shell line cannot name them. `options` holds exactly this measure's
        # values, so a setting of one measure reruns that measure's jobs only.
        options=measure_options,
    shell:
        "ascsharp measure --measure {wildcards.measure} --model {input.model}"
        " --features-npy {input.npy} --features-tsv {input.tsv}"
        " --selection {params.selection} --split {params.split} --clips {params.clips}"
        " --seed {params.seed} {params.options} {resources.batch_option} {resources.compile}"
        " --threads {threads} --out {output.measure} > {log} 2>&1"
