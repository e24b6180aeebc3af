# Log-mel features: one store per fold, each one contiguous array (store train = fold1_train,
# store test = fold1_evaluate), plus the location-disjoint validation hold-out, stored as an
# index into train.npy.


rule features:
    input:
        dataset_files(),
    output:
        npy="results/features/{store}.npy",
        tsv="results/features/{store}.tsv",
        about="results/features/{store}.json",
    log:
        "logs/features/{store}.log",
    benchmark:
        "benchmarks/features/{store}.tsv"
    threads: 8
    resources:
        runtime=features_runtime,
        mem_mb=features_memory_mb,
    params:
        root=dataset_root_of_input,
        fold=lambda w: FOLD_OF_STORE[w.store],
        audio_sample_rate=config["dataset"]["audio_sample_rate"],
        clip_seconds=config["dataset"]["clip_seconds"],
        dtype=config["features"]["dtype"],
        mel=mel_args(),
    shell:
        "ascsharp features --root {params.root:q} --fold {params.fold} --out-npy {output.npy}"
        " --out-tsv {output.tsv} --out-json {output.about}"
        " --audio-sample-rate {params.audio_sample_rate}"
        " --clip-seconds {params.clip_seconds} --dtype {params.dtype}"
        " --threads {threads} {params.mel} 2> {log}"


rule validation_split:
    input:
        "results/features/train.tsv",
    output:
        "results/features/validation.tsv",
    log:
        "logs/validation_split/validation_split.log",
    params:
        fraction=config["features"]["validation_fraction"],
        seed=config["features"]["validation_seed"],
    shell:
        "ascsharp holdout {input} --fraction {params.fraction}"
        " --seed {params.seed} --out {output} 2> {log}"
