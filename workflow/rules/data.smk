# The data set: the embedded synthetic one (default config), or the DCASE2020 development set,
# downloaded from Zenodo into dataset.root (dataset.download.enabled: true) or already there
# (dataset.synthetic.generate: false and dataset.root set to the unpacked set).
import sys
from pathlib import Path

from ascsharp.data.meta import DOWNLOAD_MARKER, FOLD_FILES, META_FILE, SYNTHETIC_MARKER

DATA_ROOT = config["dataset"]["root"]
SYNTHETIC = config["dataset"]["synthetic"]
GENERATE_DATA = SYNTHETIC["generate"]
DOWNLOAD_DATA = config["dataset"]["download"]["enabled"] and not GENERATE_DATA

# A features job depends on the files that define the data set, never on its folder: the folder's
# mtime changes whenever anything is added to it (a README, a notes file), and a folder input
# would then rerun every feature store, model and landscape. They are the same files whether the
# set is generated (rule synthesize), downloaded (rule download) or already there, so that
# switching dataset.synthetic.generate or dataset.download.enabled off once the data exist
# reruns nothing. The synthetic set and the download are published by renaming a finished
# folder into place, so their rules declare these files together with their marker file.
# meta.csv plus the two fold files the workflow reads (fold1_test.csv is not used).
DATASET_FILES = [META_FILE, *(FOLD_FILES[fold][0] for fold in ("train", "evaluate"))]


def published_dataset(marker):
    """The outputs of synthesize or download: their marker, then the files features read."""
    return [f"{DATA_ROOT}/{name}" for name in (marker, *DATASET_FILES)]


def dataset_files():
    """The inputs of a features job: meta.csv and the fold files of dataset.root."""
    files = [f"{DATA_ROOT}/{name}" for name in DATASET_FILES]
    if GENERATE_DATA or DOWNLOAD_DATA:
        return files
    missing = [f for f in files if not Path(f).is_file()]
    # Only the main process checks: inside a cluster job the data are not needed by every rule.
    if missing and workflow.is_main_process:
        sys.exit(
            f"error: dataset.root: no {missing[0]}: set dataset.root to the unpacked DCASE2020 "
            "development set, or dataset.download.enabled: true to download it, in a config "
            'file given after the preset (README, "Using the real DCASE2020 data")'
        )
    return files


def dataset_root_of_output(wildcards, output):
    """The folder that synthesize or download publishes (their marker is inside it)."""
    return str(Path(output[0]).parent)


def dataset_root_of_input(wildcards, input):
    """The data set folder of a features job: that of meta.csv."""
    return str(Path(input[0]).parent)


# Both rules publish the whole folder at once with its marker file inside. They run on the
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
        benchmark:
            "benchmarks/synthesize/synthesize.tsv"
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
            " --segments-per-location {params.segments_per_location} > {log} 2>&1"


if DOWNLOAD_DATA:

    localrules:
        download,

    rule download:
        output:
            published_dataset(DOWNLOAD_MARKER),
        log:
            "logs/download/download.log",
        benchmark:
            "benchmarks/download/download.tsv"
        params:
            root=dataset_root_of_output,
            api=config["dataset"]["download"]["api"],
            # The zips: a cache kept across reruns (resumed, never deleted), so not an output.
            downloads="data/downloads",
        shell:
            "ascsharp download --api {params.api:q} --downloads {params.downloads:q}"
            " --root {params.root:q} > {log} 2>&1"
