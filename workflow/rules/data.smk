# The embedded synthetic data set (default config). With real DCASE2020 data, set
# dataset.synthetic.generate: false and dataset.root to the unpacked development set, or
# dataset.download.enabled: true to fetch it from Zenodo into dataset.root.
# Both rules publish the whole folder at once with its marker file inside; the marker is their
# declared output (see dataset_files in common.smk). They run on the submit host under
# --profile slurm: compute nodes often have no internet, and the set is written only once.


if config["dataset"]["synthetic"]["generate"]:

    localrules:
        synthesize,

    rule synthesize:
        output:
            f"{DATA_ROOT}/{SYNTHETIC_MARKER}",
        log:
            "logs/synthesize/synthesize.log",
        params:
            root=dataset_root_of_output,
            synth=config["dataset"]["synthetic"],
            audio=config["dataset"],
        shell:
            "ascsharp synth --root {params.root:q} --seed {params.synth[seed]}"
            " --audio-sample-rate {params.audio[audio_sample_rate]}"
            " --clip-seconds {params.audio[clip_seconds]}"
            " --cities {params.synth[cities]}"
            " --locations-per-city {params.synth[locations_per_city]}"
            " --segments-per-location {params.synth[segments_per_location]} 2> {log}"


if (
    config["dataset"]["download"]["enabled"]
    and not config["dataset"]["synthetic"]["generate"]
):

    localrules:
        download,

    rule download:
        output:
            f"{DATA_ROOT}/{DOWNLOAD_MARKER}",
        log:
            "logs/download/download.log",
        params:
            root=dataset_root_of_output,
            api=config["dataset"]["download"]["api"],
            # The zips: a cache kept across reruns (resumed, never deleted), so not an output.
            downloads="data/downloads",
        shell:
            "ascsharp download --api {params.api:q} --downloads {params.downloads:q}"
            " --root {params.root:q} 2> {log}"
