# One training job per grid run. A killed job resumes from results/models/{run}/checkpoint.pt.


rule train:
    input:
        train_npy="results/features/train.npy",
        train_tsv="results/features/train.tsv",
        test_npy="results/features/test.npy",
        test_tsv="results/features/test.tsv",
        holdout="results/features/validation.tsv",
        settings="results/features/train.json",
    output:
        **TRAJECTORY_OUTPUT,
        model="results/models/{run}/model.pt",
        metrics="results/models/{run}/metrics.json",
        history="results/models/{run}/history.tsv",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
        mem_mb=memory_mb,
        # Speed only (evaluation in eval mode, one clip at a time): reruns nothing (common.smk).
        eval_batch_size=config["train"]["eval_batch_size"],
    params:
        epochs=config["train"]["epochs"],
        selection=config["train"]["selection"],
        width=config["model"]["width"],
        amp="--amp" if config["train"]["amp"] else "--no-amp",
        trajectory=trajectory_option,
    shell:
        "ascsharp train --run {wildcards.run} --train-npy {input.train_npy}"
        " --train-tsv {input.train_tsv} --test-npy {input.test_npy}"
        " --test-tsv {input.test_tsv} --holdout {input.holdout}"
        " --model {output.model} --metrics {output.metrics} --history {output.history}"
        " --epochs {params.epochs} --width {params.width} --selection {params.selection}"
        " --eval-batch-size {resources.eval_batch_size} {params.amp}"
        " --features-settings {input.settings} {params.trajectory} --threads {threads} 2> {log}"
