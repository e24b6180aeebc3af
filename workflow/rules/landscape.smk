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
        features=multiext(
            "results/features/", "train.npy", "train.tsv", "test.npy", "test.tsv"
        ),
    output:
        "results/landscapes/{run}/direction_seed~{direction_seed}/shard~{shard}.npz",
    log:
        "logs/landscape_shard/{run}/direction_seed~{direction_seed}/shard~{shard}.log",
    benchmark:
        "benchmarks/landscape_shard/{run}/direction_seed~{direction_seed}/shard~{shard}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=landscape_shard_runtime,
        mem_mb=memory_mb,
    params:
        land=LAND,
        grid=grid_args(),
        subset=f"--subset {LAND['subset']}" if LAND["subset"] else "",
    shell:
        "ascsharp landscape-shard --model {input.model} --directions {input.directions}"
        " --features results/features --split {params.land[split]} {params.subset}"
        " --batch-size {params.land[batch_size]} --shards {params.land[shards]}"
        " --shard {wildcards.shard} {params.grid} --threads {threads} --out {output} 2> {log}"


rule gather:
    input:
        shards_of,
    output:
        surface="results/landscapes/{run}/direction_seed~{direction_seed}/surface.h5",
        contour=report(
            "results/landscapes/{run}/direction_seed~{direction_seed}/contour.png",
            caption="../report/contour.rst",
            category="Loss landscapes",
            subcategory="{run}",
        ),
        surface3d=report(
            "results/landscapes/{run}/direction_seed~{direction_seed}/surface3d.png",
            caption="../report/surface3d.rst",
            category="Loss landscapes",
            subcategory="{run}",
        ),
    log:
        "logs/gather/{run}/direction_seed~{direction_seed}.log",
    shell:
        "ascsharp gather {input} --out {output.surface} --contour {output.contour}"
        " --surface3d {output.surface3d} 2> {log}"
