# Filter-normalised 2-D loss landscapes: directions per (run, direction seed), the grid split
# into `landscape.shards` independent jobs, then gathered into surface.h5.


rule directions:
    input:
        "results/models/{run}/model.pt",
    output:
        "results/landscapes/{run}/direction_seed~{direction_seed}/directions.pt",
    log:
        "logs/directions/{run}/direction_seed~{direction_seed}.log",
    shell:
        "ascsharp directions --model {input} --direction-seed {wildcards.direction_seed}"
        " --out {output} 2> {log}"


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
        compile="--compile" if LAND["compile"] else "--no-compile",
    params:
        split=LAND["split"],
        clips=LAND["clips"] or "all",
        # How the grid is split decides which points this shard holds.
        shards=LAND["shards"],
        grid=grid_args(),
        precision=LAND["precision"],
        # Only where it acts, so that sharpness.radius reruns no float32 surface.
        refine=(
            f"--refine-radius {config['sharpness']['radius']}"
            if LAND["refine"] and LAND["precision"] != "float32"
            else ""
        ),
    shell:
        "ascsharp landscape-shard --model {input.model} --directions {input.directions}"
        " --features-npy {input.npy} --features-tsv {input.tsv}"
        " --split {params.split} --clips {params.clips}"
        " --batch-size {resources.batch_size} --shards {params.shards}"
        " --shard {wildcards.shard} {params.grid} --precision {params.precision}"
        " {resources.compile} {params.refine} --threads {threads} --out {output.shard} 2> {log}"


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
    shell:
        "ascsharp gather {input} --out {output.surface}"
        " --contour {output.contour} {output.contour_svg}"
        " --surface3d {output.surface3d} {output.surface3d_svg} 2> {log}"
