"""ascsharp.data.meta against real DCASE2020 Task 1A names and hand-made layouts, broken one
way each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ascsharp.data import meta
from ascsharp.data.meta import DatasetError

SR = 16000
SECONDS = 1.0

# A tiny hand-made development set: (file name, fold). Identifiers follow the real meta.csv.
CLIPS = [
    ("audio/airport-barcelona-0-0-a.wav", "train"),
    ("audio/airport-barcelona-0-0-b.wav", "train"),
    ("audio/bus-lyon-12-7-a.wav", "train"),
    ("audio/street_pedestrian-lyon-1162-44650-s2.wav", "train"),
    ("audio/park-helsinki-3-9-a.wav", "evaluate"),
    ("audio/park-helsinki-3-9-s4.wav", "evaluate"),
    ("audio/tram-vienna-5-11-s6.wav", "evaluate"),
]


def write_layout(root: Path, clips=CLIPS, *, sr: int = SR, seconds: float = SECONDS) -> Path:
    """Write meta.csv, the three fold files and a short mono WAV per clip, as DCASE ships them."""
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    meta_rows = ["filename\tscene_label\tidentifier\tsource_label"]
    folds: dict[str, list[str]] = {"train": [], "evaluate": []}
    t = np.arange(int(sr * seconds)) / sr
    for name, fold in clips:
        scene, city, location, _, device = Path(name).stem.split("-")
        meta_rows.append(f"{name}\t{scene}\t{city}-{location}\t{device}")
        folds[fold].append(name)
        sf.write(root / name, 0.1 * np.sin(2 * np.pi * 440 * t), sr, subtype="PCM_16")
    (root / "meta.csv").write_text("\n".join(meta_rows) + "\n")
    for fold in ("train", "evaluate"):
        rows = [f"{n}\t{Path(n).stem.split('-')[0]}" for n in folds[fold]]
        (root / f"evaluation_setup/fold1_{fold}.csv").write_text(
            "\n".join(["filename\tscene_label", *rows]) + "\n"
        )
    (root / "evaluation_setup/fold1_test.csv").write_text(
        "\n".join(["filename", *folds["evaluate"]]) + "\n"
    )
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "dev")


def replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# ---------------------------------------------------------------------------- labels and names


def test_label_sets_are_consistent():
    assert len(meta.SCENES) == 10 and len(meta.CITIES) == 10 and len(meta.DEVICES) == 9
    assert list(meta.SCENES) == sorted(meta.SCENES)  # output index i means SCENES[i]
    assert set(meta.SEEN_DEVICES) | set(meta.UNSEEN_DEVICES) == set(meta.DEVICES)
    assert not set(meta.SEEN_DEVICES) & set(meta.UNSEEN_DEVICES)
    assert meta.UNSEEN_DEVICES == ("s4", "s5", "s6")
    # parse_filename splits on "-": no label may contain one.
    assert not any("-" in label for label in meta.SCENES + meta.CITIES + meta.DEVICES)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (
            "audio/street_pedestrian-lyon-1162-44650-s2.wav",
            ("street_pedestrian", "lyon", "lyon-1162", "44650", "s2", True),
        ),
        (
            "audio/airport-barcelona-0-0-a.wav",
            ("airport", "barcelona", "barcelona-0", "0", "a", True),
        ),
        (
            "audio/metro_station-stockholm-101-2937-s6.wav",
            ("metro_station", "stockholm", "stockholm-101", "2937", "s6", False),
        ),
        (
            "/data/TAU/audio/tram-vienna-281-8459-c.wav",
            ("tram", "vienna", "vienna-281", "8459", "c", True),
        ),
    ],
)
def test_parse_filename_real_names(filename, expected):
    info = meta.parse_filename(filename)
    assert info.filename == filename
    assert (info.scene, info.city, info.location, info.segment, info.device, info.seen) == expected


@pytest.mark.parametrize(
    ("filename", "needle"),
    [
        ("audio/beach-lyon-1162-44650-a.wav", "'beach'"),
        ("audio/park-berlin-1162-44650-a.wav", "'berlin'"),
        ("audio/park-lyon-1162-44650-d.wav", "'d'"),
        ("audio/park-lyon-1162-44650-A.wav", "'A'"),  # the real set uses lower case only
        ("audio/park-lyon-1162-a.wav", "expected <scene>"),
        ("audio/park-lyon-1162-44650-a-x.wav", "expected <scene>"),
        ("audio/street-pedestrian-lyon-1162-44650-a.wav", "expected <scene>"),
        ("audio/park-lyon-1162-44650-a.flac", "not a .wav"),
    ],
)
def test_parse_filename_errors_name_the_file(filename, needle):
    with pytest.raises(DatasetError) as err:
        meta.parse_filename(filename)
    assert filename in str(err.value) and needle in str(err.value)


def test_clip_table_columns_and_order():
    names = [c for c, _ in CLIPS]
    table = meta.clip_table(names)
    assert list(table.columns) == meta.CLIP_COLUMNS
    assert table["filename"].tolist() == names
    assert table["seen"].tolist() == [True, True, True, True, True, False, False]
    assert table.loc[3, "location"] == "lyon-1162"


# ---------------------------------------------------------------------------- read_fold


def test_read_fold(layout: Path):
    train = meta.read_fold(layout, "train")
    evaluate = meta.read_fold(layout, "evaluate")
    assert list(train.columns) == meta.CLIP_COLUMNS
    assert train["filename"].tolist() == [c for c, f in CLIPS if f == "train"]
    assert evaluate["filename"].tolist() == [c for c, f in CLIPS if f == "evaluate"]
    assert evaluate["device"].tolist() == ["a", "s4", "s6"]
    assert evaluate["seen"].tolist() == [True, False, False]
    assert train["scene"].tolist() == ["airport", "airport", "bus", "street_pedestrian"]


def test_read_fold_unknown_fold(layout: Path):
    with pytest.raises(DatasetError, match="'test'"):
        meta.read_fold(layout, "test")


def test_read_fold_duplicate(layout: Path):
    path = layout / "evaluation_setup/fold1_train.csv"
    path.write_text(path.read_text() + "audio/bus-lyon-12-7-a.wav\tbus\n")
    with pytest.raises(DatasetError) as err:
        meta.read_fold(layout, "train")
    assert str(path) in str(err.value) and "bus-lyon-12-7-a.wav" in str(err.value)


def test_read_fold_empty(layout: Path):
    path = layout / "evaluation_setup/fold1_evaluate.csv"
    path.write_text("filename\tscene_label\n")
    with pytest.raises(DatasetError) as err:
        meta.read_fold(layout, "evaluate")
    assert str(path) in str(err.value)


def test_read_fold_missing_fold_file(layout: Path):
    path = layout / "evaluation_setup/fold1_train.csv"
    path.unlink()
    with pytest.raises(DatasetError) as err:
        meta.read_fold(layout, "train")
    assert str(path) in str(err.value)


def test_read_fold_clip_missing_from_meta(layout: Path):
    replace_line(layout / "meta.csv", "audio/bus-lyon-12-7-a.wav\tbus\tlyon-12\ta\n", "")
    with pytest.raises(DatasetError) as err:
        meta.read_fold(layout, "train")
    assert "meta.csv" in str(err.value) and "bus-lyon-12-7-a.wav" in str(err.value)


def test_read_fold_meta_disagrees_with_name(layout: Path):
    replace_line(layout / "meta.csv", "\tlyon-12\ta\n", "\tlyon-13\ta\n")
    with pytest.raises(DatasetError) as err:
        meta.read_fold(layout, "train")
    assert "meta.csv" in str(err.value) and "bus-lyon-12-7-a.wav" in str(err.value)


# ---------------------------------------------------------------------------- validate_dataset


def test_validate_dataset_accepts_good_layout(layout: Path):
    folds = meta.validate_dataset(layout, audio_sample_rate=SR, clip_seconds=SECONDS)
    assert set(folds) == {"train", "evaluate"}
    assert len(folds["train"]) == 4 and len(folds["evaluate"]) == 3
    # Within tolerance is fine; without expectations only the structure is checked.
    meta.validate_dataset(layout, audio_sample_rate=SR, clip_seconds=SECONDS + 0.05)
    meta.validate_dataset(layout, audio_sample_rate=None, clip_seconds=None)


def _expect(root: Path, needle: str | Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        meta.validate_dataset(root, **{"audio_sample_rate": None, "clip_seconds": None, **kwargs})
    message = str(err.value)
    assert str(needle) in message, message
    assert "\n" not in message
    return message


def test_missing_root(tmp_path: Path):
    _expect(tmp_path / "nowhere", tmp_path / "nowhere")


def test_missing_audio_folder(layout: Path):
    for f in (layout / "audio").iterdir():
        f.unlink()
    (layout / "audio").rmdir()
    _expect(layout, layout / "audio")


def test_missing_meta(layout: Path):
    (layout / "meta.csv").unlink()
    _expect(layout, layout / "meta.csv")


@pytest.mark.parametrize(
    "header",
    [
        "filename\tscene_label\tidentifier",  # missing column
        "filename\tscene_label\tidentifier\tsource_label\tfold",  # extra column
        "filename,scene_label,identifier,source_label",  # comma-separated
    ],
)
def test_wrong_meta_columns(layout: Path, header: str):
    replace_line(layout / "meta.csv", "filename\tscene_label\tidentifier\tsource_label", header)
    message = _expect(layout, layout / "meta.csv")
    assert "expected" in message


def test_listed_but_absent(layout: Path):
    path = layout / "audio/bus-lyon-12-7-a.wav"
    path.unlink()
    message = _expect(layout, path)
    assert "absent" in message


def test_unknown_device_in_fold(layout: Path):
    name = "audio/bus-lyon-12-7-x.wav"
    path = layout / "evaluation_setup/fold1_train.csv"
    path.write_text(path.read_text() + f"{name}\tbus\n")
    message = _expect(layout, name)
    assert "'x'" in message


def test_corrupt_wav(layout: Path):
    path = layout / "audio/park-helsinki-3-9-a.wav"
    path.write_bytes(b"RIFF\x00\x00garbage" * 50)
    message = _expect(layout, path)
    assert "unreadable" in message


def test_stereo_wav(layout: Path):
    path = layout / "audio/airport-barcelona-0-0-b.wav"
    sf.write(path, np.zeros((SR, 2)), SR, subtype="PCM_16")
    message = _expect(layout, path, audio_sample_rate=SR, clip_seconds=SECONDS)
    assert "2 channels" in message


def test_wrong_sample_rate(layout: Path):
    path = layout / "audio/tram-vienna-5-11-s6.wav"
    sf.write(path, np.zeros(22050), 22050, subtype="PCM_16")
    message = _expect(layout, path, audio_sample_rate=SR, clip_seconds=SECONDS)
    assert "22050" in message
    # Without a sample-rate expectation the same file is acceptable (length is 1 s).
    meta.validate_dataset(layout, audio_sample_rate=None, clip_seconds=SECONDS)


def test_too_short(layout: Path):
    path = layout / "audio/street_pedestrian-lyon-1162-44650-s2.wav"
    sf.write(path, np.zeros(SR // 2), SR, subtype="PCM_16")
    message = _expect(layout, path, audio_sample_rate=SR, clip_seconds=SECONDS)
    assert "0.500 s" in message


def test_unseen_device_in_train(layout: Path):
    name = "audio/park-helsinki-3-9-s4.wav"
    for rel in ("evaluation_setup/fold1_train.csv", "evaluation_setup/fold1_evaluate.csv"):
        path = layout / rel
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(name)]
        if "train" in rel:
            lines.append(f"{name}\tpark")
        path.write_text("\n".join(lines) + "\n")
    message = _expect(layout, name)
    assert str(layout / "evaluation_setup/fold1_train.csv") in message


def test_clip_in_both_folds(layout: Path):
    name = "audio/park-helsinki-3-9-a.wav"
    path = layout / "evaluation_setup/fold1_train.csv"
    path.write_text(path.read_text() + f"{name}\tpark\n")
    _expect(layout, name)


def test_label_disagrees_with_file_name(layout: Path):
    path = layout / "evaluation_setup/fold1_evaluate.csv"
    replace_line(path, "audio/tram-vienna-5-11-s6.wav\ttram", "audio/tram-vienna-5-11-s6.wav\tbus")
    message = _expect(layout, path)
    assert "tram-vienna-5-11-s6.wav" in message and "'bus'" in message
