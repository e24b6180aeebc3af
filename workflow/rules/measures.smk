# Measures beyond the study's sharpness: one job per (run, measure) on a fixed subset of the
# model's training clips; a killed job resumes from results/measures/{run}/{measure}.json.partial.json.


rule measure:
    input:
        model="results/models/{run}/model.pt",
        features=multiext("results/features/train", ".npy", ".tsv"),
    output:
        "results/measures/{run}/{measure}.json",
    log:
        "logs/measure/{run}/{measure}.log",
    benchmark:
        "benchmarks/measure/{run}/{measure}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=measure_runtime,
        mem_mb=memory_mb,
    params:
        options=measure_options,
        clips=MEASURES["clips"] or "all",
        seed=MEASURES["seed"],
    shell:
        "ascsharp measure --measure {wildcards.measure} --model {input.model}"
        " --features-train {input.features[0]} --clips {params.clips} --seed {params.seed}"
        " {params.options} --threads {threads} --out {output} 2> {log}"
