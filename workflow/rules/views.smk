# Views of Li et al. (2018) beside the random-direction surfaces: the loss along the line between
# two trained models, and each run's training path on the plane of its first two principal
# components. Both evaluate on the landscape's clips with its forward settings; helpers in
# views_common.smk.


wildcard_constraints:
    other=RUN_PATTERN,


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
        alpha=" ".join(str(INTERPOLATION["alpha"][k]) for k in ("min", "max", "num")),
        bn_statistics=INTERPOLATION["bn_statistics"],
        split=LAND["split"],
        clips=LAND["clips"] or "all",
        precision=LAND["precision"],
    shell:
        "ascsharp interpolate --model-a {input.a} --model-b {input.b} --alpha {params.alpha}"
        " --bn-statistics {params.bn_statistics} --features-npy {input.npy}"
        " --features-tsv {input.tsv} --split {params.split} --clips {params.clips}"
        " --batch-size {resources.batch_size} --precision {params.precision}"
        " --threads {threads} --out {output.json} --figure {output.png} {output.svg} 2> {log}"


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
        " --clips {params.clips} --batch-size {resources.batch_size}"
        " --precision {params.precision} --threads {threads} --out {output.h5}"
        " --figure {output.png} {output.svg} 2> {log}"
