# Views of Li et al. (2018) beside the random-direction surfaces: the loss along the line between
# two trained models, and each run's training path on the plane of its first two principal
# components (training stores it: TRAJECTORY_OUTPUT, train.smk). Both evaluate on the
# landscape's clips with its forward settings.
import math

from ascsharp.core.runs import interpolation_pairs

VIEWS = config["views"]
INTERPOLATION = VIEWS["interpolation"]
TRAJECTORY = VIEWS["trajectory"]
VIEW_FEATURES = {
    "npy": f"results/features/{LAND['split']}.npy",
    "tsv": f"results/features/{LAND['split']}.tsv",
}


def configured_pairs():
    """views.interpolation.pairs, each run checked against the grid; null: the default pairs."""
    if INTERPOLATION["pairs"] is None:
        return interpolation_pairs(GRID_VALUES)
    for i, (a, b) in enumerate(INTERPOLATION["pairs"]):
        for run in (a, b):
            if run not in RUN_IDS:
                sys.exit(
                    f"error: views.interpolation.pairs[{i}]: {run!r} is not a grid run"
                )
        if a == b:
            sys.exit(f"error: views.interpolation.pairs[{i}]: a run paired with itself")
    return [tuple(pair) for pair in INTERPOLATION["pairs"]]


def views_targets():
    """The views' figures (and with them their JSON / h5) of every enabled view."""
    targets = []
    if INTERPOLATION["enabled"]:
        targets += [
            f"results/views/interpolation/{a}/vs/{b}.svg" for a, b in configured_pairs()
        ]
    if TRAJECTORY["enabled"]:
        targets += expand("results/views/trajectory/{run}.svg", run=RUN_IDS)
    return targets


def interpolation_runtime(wildcards, attempt):
    """Minutes: a forward pass per α, another to recompute BN statistics, one for loading."""
    passes = 2 if INTERPOLATION["bn_statistics"] == "recompute" else 1
    points = INTERPOLATION["alpha"]["num"] * passes + 1
    return attempt * math.ceil(points * forward_pass_minutes(wildcards, LAND["clips"]))


def trajectory_runtime(wildcards, attempt):
    """Minutes: the plane's grid points, plus reading the stored epochs and their PCA."""
    points = TRAJECTORY["num"] ** 2 + 1
    point = forward_pass_minutes(wildcards, LAND["clips"])
    return attempt * math.ceil(points * point + 10)


rule interpolate:
    input:
        **VIEW_FEATURES,
        a="results/models/{run}/model.pt",
        b="results/models/{other}/model.pt",
    output:
        json="results/views/interpolation/{run}/vs/{other}.json",
        png="results/views/interpolation/{run}/vs/{other}.png",
        svg=figure(
            "results/views/interpolation/{run}/vs/{other}.svg",
            "interpolation",
            REPORT["landscapes"],
            "{run}",
            figure="interpolation",
            to="{other}",
        ),
    log:
        "logs/interpolate/{run}/vs/{other}.log",
    benchmark:
        "benchmarks/interpolate/{run}/vs/{other}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=interpolation_runtime,
        mem_mb=memory_mb,
        # Speed only, as the landscape's (common.smk): reruns nothing.
        batch_size=LAND["batch_size"],
    params:
        alpha_min=INTERPOLATION["alpha"]["min"],
        alpha_max=INTERPOLATION["alpha"]["max"],
        alpha_num=INTERPOLATION["alpha"]["num"],
        bn_statistics=INTERPOLATION["bn_statistics"],
        split=LAND["split"],
        clips=LAND["clips"] or "all",
        precision=LAND["precision"],
    shell:
        "ascsharp interpolate --model-a {input.a} --model-b {input.b}"
        " --alpha {params.alpha_min} {params.alpha_max} {params.alpha_num}"
        " --bn-statistics {params.bn_statistics} --features-npy {input.npy}"
        " --features-tsv {input.tsv} --split {params.split} --clips {params.clips}"
        " --precision {params.precision} --batch-size {resources.batch_size}"
        " --threads {threads} --out {output.json} --figure {output.png} {output.svg}"
        " > {log} 2>&1"


rule trajectory_plane:
    input:
        **VIEW_FEATURES,
        model="results/models/{run}/model.pt",
        trajectory="results/models/{run}/trajectory.h5",
    output:
        h5="results/views/trajectory/{run}.h5",
        png="results/views/trajectory/{run}.png",
        svg=figure(
            "results/views/trajectory/{run}.svg",
            "trajectory",
            REPORT["landscapes"],
            "{run}",
            figure="training path, PCA plane",
        ),
    log:
        "logs/trajectory_plane/{run}.log",
    benchmark:
        "benchmarks/trajectory_plane/{run}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=trajectory_runtime,
        mem_mb=memory_mb,
        # Speed only, as the landscape's (common.smk): reruns nothing.
        batch_size=LAND["batch_size"],
    params:
        parameters=TRAJECTORY["parameters"],
        num=TRAJECTORY["num"],
        margin=TRAJECTORY["margin"],
        split=LAND["split"],
        clips=LAND["clips"] or "all",
        precision=LAND["precision"],
    shell:
        "ascsharp trajectory-plane --model {input.model} --trajectory {input.trajectory}"
        " --parameters {params.parameters} --num {params.num} --margin {params.margin}"
        " --features-npy {input.npy} --features-tsv {input.tsv} --split {params.split}"
        " --clips {params.clips} --precision {params.precision}"
        " --batch-size {resources.batch_size} --threads {threads} --out {output.h5}"
        " --figure {output.png} {output.svg} > {log} 2>&1"
