"""DCASE2020 Task 1A metadata: labels, file-name parsing, fold files and layout validation.

Every stage takes its class list and device groups from here, so a label can never be spelt
two ways. The same code reads the real TAU Urban Acoustic Scenes 2020 Mobile folder and the
embedded synthetic one, which is written in exactly the same layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from ascsharp.core.dcase import CITIES, DEVICES, SCENES, SEEN_DEVICES, UNSEEN_DEVICES  # noqa: F401

# Fold files and their exact headers in the development set.
FOLD_FILES = {
    "train": ("evaluation_setup/fold1_train.csv", ["filename", "scene_label"]),
    "evaluate": ("evaluation_setup/fold1_evaluate.csv", ["filename", "scene_label"]),
    "test": ("evaluation_setup/fold1_test.csv", ["filename"]),
}
META_FILE = "meta.csv"
# Written by `ascsharp synth` / `ascsharp download` into the folder they publish, last: the one
# file that stands for a generated or downloaded set (data.smk makes it the features' input).
SYNTHETIC_MARKER = ".ascsharp-synthetic.json"
DOWNLOAD_MARKER = ".ascsharp-download.json"
META_COLUMNS = ["filename", "scene_label", "identifier", "source_label"]
# Columns of every clip table the workflow passes around (features index, metrics).
CLIP_COLUMNS = ["filename", "scene", "city", "location", "segment", "device", "seen"]


class DatasetError(ValueError):
    """A data set that does not match the DCASE2020 Task 1A layout; the message names the file."""


@dataclass(frozen=True)
class ClipInfo:
    filename: str  # relative to the data set root, e.g. "audio/park-lyon-1-42-s2.wav"
    scene: str
    city: str
    location: str  # "<city>-<location id>", the `identifier` column of meta.csv
    segment: str
    device: str

    @property
    def seen(self) -> bool:
        return self.device in SEEN_DEVICES


def parse_filename(filename: str) -> ClipInfo:
    """Split `audio/<scene>-<city>-<location>-<segment>-<device>.wav` into its parts.

    Scene labels contain underscores but never hyphens, so a plain split on "-" is unambiguous.
    """
    name = Path(filename).name
    if not name.endswith(".wav"):
        raise DatasetError(f"{filename}: not a .wav file name")
    parts = name[: -len(".wav")].split("-")
    if len(parts) != 5:
        raise DatasetError(f"{filename}: expected <scene>-<city>-<location>-<segment>-<device>.wav")
    scene, city, location_id, segment, device = parts
    if scene not in SCENES:
        raise DatasetError(f"{filename}: unknown scene {scene!r}")
    if city not in CITIES:
        raise DatasetError(f"{filename}: unknown city {city!r}")
    if device not in DEVICES:
        raise DatasetError(f"{filename}: unknown device {device!r}")
    return ClipInfo(filename, scene, city, f"{city}-{location_id}", segment, device)


def _check_audio_path(path: Path, filename: str) -> None:
    """A listed clip must be `audio/<name>.wav` inside the data set: no `..`, no absolute
    path, no other folder, so that a listing can never make a job read files elsewhere."""
    parts = PurePosixPath(filename).parts
    if len(parts) != 2 or parts[0] != "audio" or parts[1] in (".", "..") or "\\" in filename:
        raise DatasetError(
            f"{path}: {filename!r} is not audio/<file>.wav inside the data set folder; "
            "fix the listing"
        )


def _read_tsv(path: Path, columns: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames != columns:
            raise DatasetError(f"{path}: columns {reader.fieldnames}, expected {columns}")
        rows = list(reader)
    for r in rows:
        _check_audio_path(path, r["filename"])
    return rows


def clip_table(filenames: list[str]) -> pd.DataFrame:
    """The clip table (CLIP_COLUMNS) for a list of file names, in the given order."""
    infos = [parse_filename(f) for f in filenames]
    return pd.DataFrame(
        {
            "filename": [i.filename for i in infos],
            "scene": [i.scene for i in infos],
            "city": [i.city for i in infos],
            "location": [i.location for i in infos],
            "segment": [i.segment for i in infos],
            "device": [i.device for i in infos],
            "seen": [i.seen for i in infos],
        },
        columns=CLIP_COLUMNS,
    )


def read_fold(root: str | Path, fold: str) -> pd.DataFrame:
    """Clips of one fold ("train" or "evaluate") as a clip table, checked against meta.csv."""
    root = Path(root)
    if fold not in ("train", "evaluate"):
        raise DatasetError(f"unknown fold {fold!r}: expected 'train' or 'evaluate'")
    rel, columns = FOLD_FILES[fold]
    path = root / rel
    rows = _read_tsv(path, columns)
    if not rows:
        raise DatasetError(f"{path}: no clips listed")
    meta = {r["filename"]: r for r in _read_tsv(root / META_FILE, META_COLUMNS)}
    for r in rows:
        info = parse_filename(r["filename"])
        if r["scene_label"] != info.scene:
            raise DatasetError(f"{path}: {r['filename']} labelled {r['scene_label']!r}")
        m = meta.get(r["filename"])
        if m is None:
            raise DatasetError(f"{root / META_FILE}: {r['filename']} (listed in {rel}) missing")
        if (m["scene_label"], m["identifier"], m["source_label"]) != (
            info.scene,
            info.location,
            info.device,
        ):
            raise DatasetError(f"{root / META_FILE}: {r['filename']} disagrees with its file name")
    table = clip_table([r["filename"] for r in rows])
    duplicated = table["filename"][table["filename"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: {duplicated.iloc[0]} listed twice")
    return table


def validate_dataset(
    root: str | Path,
    *,
    audio_sample_rate: int | None,
    clip_seconds: float | None,
    tolerance_seconds: float = 0.1,
) -> dict[str, pd.DataFrame]:
    """Check the whole layout before any work is done; return the train and evaluate folds.

    Every WAV must have `audio_sample_rate` and last `clip_seconds` (± `tolerance_seconds`);
    None skips that check.

    Reads only WAV headers, so it is cheap even for the real 16,930-clip set. A file that the
    decoder cannot open later is still reported by name by the feature extraction.
    """
    import soundfile as sf

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data set folder missing")
    if not (root / "audio").is_dir():
        raise DatasetError(f"{root / 'audio'}: audio folder missing")
    folds = {fold: read_fold(root, fold) for fold in ("train", "evaluate")}
    overlap = set(folds["train"]["filename"]) & set(folds["evaluate"]["filename"])
    if overlap:
        raise DatasetError(
            f"{root}: {sorted(overlap)[0]} is in both fold1_train and fold1_evaluate"
        )
    unseen_in_train = folds["train"][~folds["train"]["seen"]]
    if len(unseen_in_train):
        raise DatasetError(
            f"{root / FOLD_FILES['train'][0]}: {unseen_in_train['filename'].iloc[0]} "
            "is from an unseen device (S4-S6 belong to the evaluate fold only)"
        )
    for table in folds.values():
        for filename in table["filename"]:
            path = root / filename
            if not path.is_file():
                raise DatasetError(f"{path}: listed but absent")
            try:
                info = sf.info(str(path))
            except Exception as e:  # soundfile raises several types for corrupt headers
                raise DatasetError(f"{path}: unreadable audio ({e})") from None
            if info.channels != 1:
                raise DatasetError(f"{path}: {info.channels} channels, expected mono")
            if audio_sample_rate is not None and info.samplerate != audio_sample_rate:
                raise DatasetError(f"{path}: {info.samplerate} Hz, expected {audio_sample_rate} Hz")
            if clip_seconds is not None and abs(info.duration - clip_seconds) > tolerance_seconds:
                raise DatasetError(
                    f"{path}: {info.duration:.3f} s long, expected {clip_seconds} s "
                    f"(tolerance {tolerance_seconds} s)"
                )
    return folds
