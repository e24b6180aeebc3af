# The embedded synthetic data set (default config). With real DCASE2020 data, set
# dataset.synthetic.generate: false and dataset.root to the unpacked development set, or
# dataset.download.enabled: true to fetch it from Zenodo into dataset.root.
# Both rules publish the whole folder at once with its marker file inside; they declare the
# marker and the files the features read (see dataset_files in common.smk). They run on the
# submit host under --profile slurm: compute nodes often have no internet, and the set is
# written only once.


if GENERATE_DATA:

    localrules:
        synthesize,

    rule synthesize:
        output:
            published_dataset(SYNTHETIC_MARKER),
        log:
            "logs/synthesize/synthesize.log",
        params:
            root=dataset_root_of_output,
            seed=SYNTHETIC["seed"],
            audio_sample_rate=config["dataset"]["audio_sample_rate"],
            clip_seconds=config["dataset"]["clip_seconds"],
            cities=SYNTHETIC["cities"],
            locations_per_city=SYNTHETIC["locations_per_city"],
            segments_per_location=SYNTHETIC["segments_per_location"],
        shell:
            "ascsharp synth --root {params.root:q} --seed {params.seed}"
            " --audio-sample-rate {params.audio_sample_rate}"
            " --clip-seconds {params.clip_seconds} --cities {params.cities}"
            " --locations-per-city {params.locations_per_city}"
            " --segments-per-location {params.segments_per_location} 2> {log}"


if DOWNLOAD_DATA:

    localrules:
        download,

    rule download:
        output:
            published_dataset(DOWNLOAD_MARKER),
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
