# Log-mel features: one store per fold, each one contiguous array (store train = fold1_train,
# store test = fold1_evaluate), plus the location-disjoint validation hold-out, stored as an
# index into train.npy.

FEATURES = config["features"]
FOLD_OF_STORE = {"train": "train", "test": "evaluate"}
# One feature store: ~5 CPU minutes per thread for the real set (README), plus reading 30 GB.
FEATURES_MINUTES = 60


def features_runtime(wildcards, attempt):
    return attempt * FEATURES_MINUTES


def features_memory_mb(wildcards, attempt):
    """The store is written through a memory map; decoding and resampling need the rest."""
    return attempt * 4000


localrules:
    validation_split,


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
        sample_rate=FEATURES["sample_rate"],
        n_fft=FEATURES["n_fft"],
        hop_length=FEATURES["hop_length"],
        n_mels=FEATURES["n_mels"],
        fmin=FEATURES["fmin"],
        fmax=FEATURES["fmax"],
        dtype=FEATURES["dtype"],
    shell:
        "ascsharp features --root {params.root:q} --fold {params.fold}"
        " --audio-sample-rate {params.audio_sample_rate} --clip-seconds {params.clip_seconds}"
        " --sample-rate {params.sample_rate} --n-fft {params.n_fft}"
        " --hop-length {params.hop_length} --n-mels {params.n_mels}"
        " --fmin {params.fmin} --fmax {params.fmax} --dtype {params.dtype}"
        " --threads {threads} --out-npy {output.npy} --out-tsv {output.tsv}"
        " --out-json {output.about} > {log} 2>&1"


rule validation_split:
    input:
        "results/features/train.tsv",
    output:
        "results/features/validation.tsv",
    log:
        "logs/validation_split/validation_split.log",
    benchmark:
        "benchmarks/validation_split/validation_split.tsv"
    params:
        fraction=FEATURES["validation_fraction"],
        seed=FEATURES["validation_seed"],
    shell:
        "ascsharp holdout {input} --fraction {params.fraction}"
        " --seed {params.seed} --out {output} > {log} 2>&1"
