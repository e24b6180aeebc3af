# Measures beyond the study's sharpness: one job per (run, measure) on the clips of the run's
# landscape (or a selection of its training clips, measures.clips); a killed job resumes from
# results/measures/{run}/{measure}.json.partial.json.


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
    params:
        options=measure_options,
        selection=MEASURE_SELECTION,
        split=MEASURE_SPLIT,
        clips=MEASURE_CLIPS or "all",
        seed=MEASURES["seed"],
    shell:
        "ascsharp measure --measure {wildcards.measure} --model {input.model}"
        " --features-npy {input.npy} --features-tsv {input.tsv} --selection {params.selection}"
        " --split {params.split} --clips {params.clips}"
        " --seed {params.seed} {params.options} {resources.batch_option}"
        " --threads {threads} --out {output.measure}"
        " 2> {log}"
