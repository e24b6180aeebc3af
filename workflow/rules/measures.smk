# Measures beyond the study's sharpness: one job per (run, measure) on a fixed selection of the
# model's training clips; a killed job resumes from results/measures/{run}/{measure}.json.partial.json.


rule measure:
    input:
        model="results/models/{run}/model.pt",
        npy="results/features/train.npy",
        tsv="results/features/train.tsv",
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
        batch_size=measure_batch_size,
    params:
        options=measure_options,
        clips=MEASURES["clips"] or "all",
        seed=MEASURES["seed"],
    shell:
        "ascsharp measure --measure {wildcards.measure} --model {input.model}"
        " --features-npy {input.npy} --features-tsv {input.tsv} --clips {params.clips}"
        " --seed {params.seed} {params.options} --batch-size {resources.batch_size}"
        " --threads {threads} --out {output.measure}"
        " 2> {log}"
