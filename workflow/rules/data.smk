# The embedded synthetic data set (default config). With real DCASE2020 data, set
# dataset.synthetic.generate: false and dataset.root to the unpacked development set, or
# dataset.download.enabled: true to fetch it from Zenodo into dataset.root.


if config["dataset"]["synthetic"]["generate"]:

    rule synthesize:
        output:
            directory(DATA_ROOT),
        log:
            "logs/synthesize/synthesize.log",
        conda:
            "../../envs/ascsharp.yaml"
        params:
            synth=config["dataset"]["synthetic"],
            audio=config["dataset"],
        shell:
            "ascsharp synth --root {output} --seed {params.synth[seed]}"
            " --sample-rate {params.audio[sample_rate]} --clip-seconds {params.audio[clip_seconds]}"
            " --cities {params.synth[cities]}"
            " --locations-per-city {params.synth[locations_per_city]}"
            " --segments-per-location {params.synth[segments_per_location]} 2> {log}"


if (
    config["dataset"]["download"]["enabled"]
    and not config["dataset"]["synthetic"]["generate"]
):

    rule download:
        output:
            directory(DATA_ROOT),
        log:
            "logs/download/download.log",
        conda:
            "../../envs/ascsharp.yaml"
        params:
            api=config["dataset"]["download"]["api"],
        shell:
            "ascsharp download --api {params.api:q} --downloads data/downloads"
            " --root {output} 2> {log}"
