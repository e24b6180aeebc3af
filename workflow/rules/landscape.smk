# Filter-normalised 2-D loss landscapes: directions per (run, direction seed), the grid split
# into `landscape.shards` independent jobs, gathered into surface.h5 with its contour and 3-D
# figures; then each run's sharpness (every region/reference variant, per direction seed and
# aggregated) and the figures over runs and seeds.
import math

LAND = config["landscape"]
SHARDS = range(LAND["shards"])
RADIUS = config["sharpness"]["radius"]
# The montage shows every run's landscape for the first direction seed; slices and the 3-D
# pages show every direction seed of one run.
MONTAGE_SEED = LAND["direction_seeds"][0]


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


def landscape_shard_runtime(wildcards, attempt):
    """Minutes: the shard's grid points plus one point's worth for loading, on its clips."""
    points = math.ceil(LAND["x"]["num"] * LAND["y"]["num"] / LAND["shards"])
    point = forward_pass_minutes(wildcards, LAND["clips"])
    return attempt * math.ceil((points + 1) * point)


def landscape_targets():
    """What `all` asks of this stage: every run's sharpness, every surface's figures, each run's
    slices, each architecture's montage and the interactive 3-D page."""
    return [
        *expand("results/sharpness/{run}.json", run=RUN_IDS),
        *expand(
            "results/landscapes/{run}/direction_seed~{d}/{name}",
            run=RUN_IDS,
            d=LAND["direction_seeds"],
            name=["contour.png", "contour.svg", "surface3d.png", "surface3d.svg"],
        ),
        *expand("results/landscapes/{run}/slices.svg", run=RUN_IDS),
        *expand(
            f"{FIGURES}/landscapes/arch~{{arch}}.svg",
            arch=sorted(set(GRID_VALUES["arch"])),
        ),
        f"{FIGURES}/surfaces3d.html",
    ]


# Cheap steps run on the submit host under --profile slurm instead of queueing as jobs.
localrules:
    directions,
    gather,
    run_sharpness,
    landscape_montage,
    landscape_views,
    surfaces_page,


rule directions:
    input:
        "results/models/{run}/model.pt",
    output:
        "results/landscapes/{run}/direction_seed~{direction_seed}/directions.pt",
    log:
        "logs/directions/{run}/direction_seed~{direction_seed}.log",
    benchmark:
        "benchmarks/directions/{run}/direction_seed~{direction_seed}.tsv"
    shell:
        "ascsharp directions --model {input} --direction-seed {wildcards.direction_seed}"
        " --out {output} > {log} 2>&1"


rule landscape_shard:
    input:
        model="results/models/{run}/model.pt",
        directions="results/landscapes/{run}/direction_seed~{direction_seed}/directions.pt",
        # The store that holds landscape.split's clips (the splits train and test are named
        # after their stores).
        npy=f"results/features/{LAND['split']}.npy",
        tsv=f"results/features/{LAND['split']}.tsv",
    output:
        shard="results/landscapes/{run}/direction_seed~{direction_seed}/shard~{shard}.npz",
    log:
        "logs/landscape_shard/{run}/direction_seed~{direction_seed}/shard~{shard}.log",
    benchmark:
        "benchmarks/landscape_shard/{run}/direction_seed~{direction_seed}/shard~{shard}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=landscape_shard_runtime,
        mem_mb=memory_mb,
        # Speed only (the loss is summed in float64 per clip): rerun nothing (common.smk).
        batch_size=LAND["batch_size"],
        # A switch: --compile or --no-compile.
        compile="--compile" if LAND["compile"] else "--no-compile",
    params:
        split=LAND["split"],
        clips=LAND["clips"] or "all",
        x_min=LAND["x"]["min"],
        x_max=LAND["x"]["max"],
        x_num=LAND["x"]["num"],
        y_min=LAND["y"]["min"],
        y_max=LAND["y"]["max"],
        y_num=LAND["y"]["num"],
        # How the grid is split decides which points this shard holds.
        shards=LAND["shards"],
        precision=LAND["precision"],
        # `--refine-radius R` only where it acts, else nothing, so that sharpness.radius reruns
        # no float32 surface.
        refine=(
            f"--refine-radius {RADIUS}"
            if LAND["refine"] and LAND["precision"] != "float32"
            else ""
        ),
    shell:
        "ascsharp landscape-shard --model {input.model} --directions {input.directions}"
        " --features-npy {input.npy} --features-tsv {input.tsv}"
        " --split {params.split} --clips {params.clips}"
        " --x {params.x_min} {params.x_max} {params.x_num}"
        " --y {params.y_min} {params.y_max} {params.y_num}"
        " --shards {params.shards} --shard {wildcards.shard}"
        " --precision {params.precision} {params.refine} {resources.compile}"
        " --batch-size {resources.batch_size} --threads {threads} --out {output.shard}"
        " > {log} 2>&1"


rule gather:
    input:
        shards_of,
    output:
        surface="results/landscapes/{run}/direction_seed~{direction_seed}/surface.h5",
        contour="results/landscapes/{run}/direction_seed~{direction_seed}/contour.png",
        contour_svg=report(
            "results/landscapes/{run}/direction_seed~{direction_seed}/contour.svg",
            caption="../report/contour.rst",
            category=REPORT["landscapes"],
            subcategory="{run}",
            labels={"figure": "contour", "direction seed": "{direction_seed}"},
        ),
        surface3d="results/landscapes/{run}/direction_seed~{direction_seed}/surface3d.png",
        surface3d_svg=report(
            "results/landscapes/{run}/direction_seed~{direction_seed}/surface3d.svg",
            caption="../report/surface3d.rst",
            category=REPORT["landscapes"],
            subcategory="{run}",
            labels={"figure": "3-D", "direction seed": "{direction_seed}"},
        ),
    log:
        "logs/gather/{run}/direction_seed~{direction_seed}.log",
    benchmark:
        "benchmarks/gather/{run}/direction_seed~{direction_seed}.tsv"
    shell:
        "ascsharp gather {input} --out {output.surface}"
        " --contour {output.contour} {output.contour_svg}"
        " --surface3d {output.surface3d} {output.surface3d_svg} > {log} 2>&1"


rule run_sharpness:
    input:
        surfaces,
    output:
        "results/sharpness/{run}.json",
    log:
        "logs/run_sharpness/{run}.log",
    benchmark:
        "benchmarks/run_sharpness/{run}.tsv"
    params:
        radius=RADIUS,
    shell:
        "ascsharp run-sharpness {input} --radius {params.radius} --out {output} > {log} 2>&1"


rule landscape_montage:
    input:
        surfaces=lambda w: [
            f"{landscape_dir(run, MONTAGE_SEED)}/surface.h5"
            for run in runs_where("arch", w.arch)
        ],
        # The sharpness printed in each panel (and the ε-disk drawn) is the sharpness stage's.
        sharpness=lambda w: [
            f"results/sharpness/{run}.json" for run in runs_where("arch", w.arch)
        ],
    output:
        png=f"{FIGURES}/landscapes/arch~{{arch}}.png",
        svg=figure(
            f"{FIGURES}/landscapes/arch~{{arch}}.svg",
            "montage",
            REPORT["landscapes"],
            "all runs",
            figure="montage",
            architecture="{arch}",
        ),
    log:
        "logs/landscape_montage/arch~{arch}.log",
    benchmark:
        "benchmarks/landscape_montage/arch~{arch}.tsv"
    shell:
        "ascsharp landscape-montage {input.surfaces} --sharpness {input.sharpness}"
        " --out {output.png} {output.svg} > {log} 2>&1"


rule landscape_views:
    input:
        surfaces,
    output:
        png="results/landscapes/{run}/slices.png",
        svg=report(
            "results/landscapes/{run}/slices.svg",
            caption="../report/slices.rst",
            category=REPORT["landscapes"],
            subcategory="{run}",
            labels={"figure": "1-D slices", "direction seed": "all"},
        ),
    log:
        "logs/landscape_views/{run}.log",
    benchmark:
        "benchmarks/landscape_views/{run}.tsv"
    params:
        radius=RADIUS,
    shell:
        "ascsharp landscape-views {input} --radius {params.radius}"
        " --slices {output.png} {output.svg} > {log} 2>&1"


rule surfaces_page:
    input:
        [
            f"{landscape_dir(run, d)}/surface.h5"
            for run in RUN_IDS
            for d in LAND["direction_seeds"]
        ],
    output:
        report(
            f"{FIGURES}/surfaces3d.html",
            caption="../report/surface3d_html.rst",
            category=REPORT["landscapes"],
            subcategory="all runs",
            labels={"figure": "3-D, interactive", "architecture": "all"},
        ),
    log:
        "logs/surfaces_page/surfaces_page.log",
    benchmark:
        "benchmarks/surfaces_page/surfaces_page.tsv"
    params:
        radius=RADIUS,
    shell:
        "ascsharp surfaces-page {input} --radius {params.radius} --out {output} > {log} 2>&1"
