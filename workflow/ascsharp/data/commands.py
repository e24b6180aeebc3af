"""`ascsharp synthesize` and `ascsharp download`: the data set in the DCASE2020 layout."""

from __future__ import annotations

import json
from pathlib import Path

from ascsharp.core.commands import command
from ascsharp.core.settings import add_options


def _synth_args(p):
    p.add_argument("--root", type=Path, required=True, help="output folder (DCASE2020 layout)")
    add_options(p, "dataset", ("audio_sample_rate", "clip_seconds"))
    add_options(
        p, "dataset.synthetic", ("seed", "cities", "locations_per_city", "segments_per_location")
    )


@command(
    "synth", "generate the embedded synthetic data set in the DCASE2020 Task 1A layout", _synth_args
)
def _synth(args):
    from ascsharp.data.synth import generate_dataset

    summary = generate_dataset(
        args.root,
        seed=args.seed,
        audio_sample_rate=args.audio_sample_rate,
        clip_seconds=args.clip_seconds,
        cities=args.cities,
        locations_per_city=args.locations_per_city,
        segments_per_location=args.segments_per_location,
    )
    print(json.dumps(summary, default=str))


def _download_args(p):
    add_options(p, "dataset.download", ("api",))
    p.add_argument(
        "--downloads", type=Path, required=True, help="folder for the zips (kept for reruns)"
    )
    p.add_argument("--root", type=Path, required=True, help="output folder (DCASE2020 layout)")


@command(
    "download",
    "download a Zenodo record (MD5-checked, resumable) and unpack it into the DCASE2020 layout",
    _download_args,
)
def _download(args):
    from ascsharp.data.download import download_dataset

    download_dataset(args.api, args.downloads, args.root)
