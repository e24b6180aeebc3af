# One training job per grid run (a killed job resumes from results/models/{run}/checkpoint.pt),
# and the training curves of each optimiser's runs.
import math

TRAIN = config["train"]
# With views.trajectory.enabled, training also stores every epoch's weights (for the PCA plane
# of views.smk).
TRAJECTORY_OUTPUT = (
    {"trajectory": "results/models/{run}/trajectory.h5"}
    if config["views"]["trajectory"]["enabled"]
    else {}
)


def trajectory_option(wildcards, output):
    """`--trajectory PATH` where training stores its trajectory, else nothing."""
    return f"--trajectory {output.trajectory}" if TRAJECTORY_OUTPUT else ""


def train_runtime(wildcards, attempt):
    """Minutes: every epoch plus one epoch's worth for loading, selection and testing."""
    epoch = TRAIN_EPOCH_MINUTES[_arch(wildcards)] * CLIP_SCALE
    return attempt * math.ceil((TRAIN["epochs"] + 1) * epoch)


def train_targets():
    """What `all` asks of training: the curves of every optimiser (the models come with them)."""
    return expand(
        f"{FIGURES}/training/optimizer~{{optimizer}}.svg",
        optimizer=sorted(set(GRID_VALUES["optimizer"])),
    )


localrules:
    training_curves,


rule train:
    input:
        train_npy="results/features/train.npy",
        train_tsv="results/features/train.tsv",
        test_npy="results/features/test.npy",
        test_tsv="results/features/test.tsv",
        holdout="results/features/validation.tsv",
        settings="results/features/train.json",
    output:
        **TRAJECTORY_OUTPUT,
        model="results/models/{run}/model.pt",
        metrics="results/models/{run}/metrics.json",
        history="results/models/{run}/history.tsv",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
        mem_mb=memory_mb,
        # Speed only (evaluation in eval mode, one clip at a time): reruns nothing (common.smk).
        eval_batch_size=TRAIN["eval_batch_size"],
        # A switch: --compile or --no-compile. Speed only (CUDA): reruns nothing either.
        compile="--compile" if TRAIN["compile"] else "--no-compile",
    params:
        epochs=TRAIN["epochs"],
        selection=TRAIN["selection"],
        width=config["model"]["width"],
        # A switch: --amp or --no-amp.
        amp="--amp" if TRAIN["amp"] else "--no-amp",
        trajectory=trajectory_option,
    shell:
        "ascsharp train --run {wildcards.run} --train-npy {input.train_npy}"
        " --train-tsv {input.train_tsv} --test-npy {input.test_npy}"
        " --test-tsv {input.test_tsv} --holdout {input.holdout}"
        " --features-settings {input.settings} --epochs {params.epochs}"
        " --width {params.width} --selection {params.selection}"
        " --eval-batch-size {resources.eval_batch_size} {resources.compile} {params.amp}"
        " --threads {threads}"
        " --model {output.model} --metrics {output.metrics} --history {output.history}"
        " {params.trajectory} > {log} 2>&1"


rule training_curves:
    input:
        history=lambda w: expand(
            "results/models/{run}/history.tsv",
            run=runs_where("optimizer", w.optimizer),
        ),
        metrics=lambda w: expand(
            "results/models/{run}/metrics.json",
            run=runs_where("optimizer", w.optimizer),
        ),
    output:
        png=f"{FIGURES}/training/optimizer~{{optimizer}}.png",
        svg=figure(
            f"{FIGURES}/training/optimizer~{{optimizer}}.svg",
            "training",
            REPORT["training"],
            optimizer="{optimizer}",
        ),
    log:
        "logs/training_curves/optimizer~{optimizer}.log",
    benchmark:
        "benchmarks/training_curves/optimizer~{optimizer}.tsv"
    shell:
        "ascsharp training-curves --history {input.history} --metrics {input.metrics}"
        " --out {output.png} {output.svg} > {log} 2>&1"
