"""The embedded synthetic set: DCASE2020 layout, device structure, determinism, learnability."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ascsharp.data import meta, synth
from ascsharp.data.meta import SYNTHETIC_MARKER as MARKER
from ascsharp.data.synth import generate_dataset

# Tiny but complete: every scene in both folds, all nine devices present.
TINY = {
    "audio_sample_rate": 8000,
    "clip_seconds": 0.5,
    "cities": 2,
    "locations_per_city": 2,
    "segments_per_location": 2,
}


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    return root, generate_dataset(root, seed=3, **TINY)


# ---------------------------------------------------------------------------- layout


def test_layout_matches_dcase(tiny):
    root, _ = tiny
    assert (root / "meta.csv").read_text().splitlines()[0] == "\t".join(meta.META_COLUMNS)
    for rel, columns in meta.FOLD_FILES.values():
        assert (root / rel).read_text().splitlines()[0] == "\t".join(columns)
    table = read_tsv(root / "meta.csv")
    for row in table.itertuples():
        assert row.filename.startswith("audio/") and row.filename.endswith(".wav")
        info = meta.parse_filename(row.filename)
        assert (row.scene_label, row.identifier, row.source_label) == (
            info.scene,
            info.location,
            info.device,
        )
    train = read_tsv(root / "evaluation_setup/fold1_train.csv")
    evaluate = read_tsv(root / "evaluation_setup/fold1_evaluate.csv")
    test = read_tsv(root / "evaluation_setup/fold1_test.csv")
    assert test["filename"].tolist() == evaluate["filename"].tolist()
    assert sorted(table["filename"]) == sorted([*train["filename"], *evaluate["filename"]])
    on_disk = sorted(f"audio/{p.name}" for p in (root / "audio").iterdir())
    assert on_disk == sorted(table["filename"])
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [MARKER, "audio", "evaluation_setup", "meta.csv"]
    )
    assert set(table["identifier"].str.split("-").str[0]) == set(meta.CITIES[:2])


def test_validate_dataset_passes(tiny):
    root, summary = tiny
    folds = meta.validate_dataset(
        root, audio_sample_rate=8000, clip_seconds=0.5, tolerance_seconds=0
    )
    assert len(folds["train"]) == summary["folds"]["train"]["clips"]
    assert len(folds["evaluate"]) == summary["folds"]["evaluate"]["clips"]
    info = sf.info(str(root / folds["train"]["filename"].iloc[0]))
    assert (info.channels, info.samplerate, info.frames, info.subtype) == (1, 8000, 4000, "PCM_16")


def test_device_and_fold_structure(tiny):
    root, summary = tiny
    folds = meta.validate_dataset(root, audio_sample_rate=None, clip_seconds=None)
    train, evaluate = folds["train"], folds["evaluate"]
    assert set(train["device"]) == set(meta.SEEN_DEVICES)
    assert set(evaluate["device"]) == set(meta.DEVICES)
    assert train["seen"].all()
    # Device A dominates training as in the real set (about 73 %); every segment has an A clip.
    share_a = (train["device"] == "a").mean()
    assert 0.6 < share_a < 0.85
    segments = train.groupby(["location", "segment"])["device"].apply(set)
    assert all("a" in devices for devices in segments)
    # Evaluate: every segment recorded by all nine devices, so devices are balanced.
    assert evaluate.groupby(["location", "segment"])["device"].nunique().eq(9).all()
    # Whole locations in one fold, every scene in both.
    assert not set(train["location"] + train["scene"]) & set(
        evaluate["location"] + evaluate["scene"]
    )
    assert set(train["scene"]) == set(evaluate["scene"]) == set(meta.SCENES)
    n_train_loc = train.groupby("scene")["location"].nunique()
    n_eval_loc = evaluate.groupby("scene")["location"].nunique()
    assert (n_eval_loc / (n_train_loc + n_eval_loc)).between(0.2, 0.4).all()
    # The returned summary counts what is on disk.
    for fold, table in folds.items():
        counts = table["device"].value_counts()
        assert summary["folds"][fold]["devices"] == {d: int(counts.get(d, 0)) for d in meta.DEVICES}
        assert summary["folds"][fold]["clips"] == len(table)


def test_devices_record_the_same_scene(tiny):
    """One base recording per segment, seen through each device (as DCASE made S1-S6)."""
    root, _ = tiny
    evaluate = meta.read_fold(root, "evaluate")
    (_, first), (_, second) = list(evaluate.groupby(["location", "segment"]))[:2]
    clips = first.set_index("device")["filename"]
    unrelated = second.set_index("device").loc["a", "filename"]

    def band(name: str) -> np.ndarray:
        # 1-2 kHz is inside every device's pass band; compare waveforms there.
        x, sr = sf.read(root / name)
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(x.size, 1 / sr)
        return np.fft.irfft(spec * ((f > 1000) & (f < 2000)), x.size)

    def corr(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v)))

    ref = band(clips["a"])
    same = [corr(ref, band(clips[d])) for d in meta.DEVICES if d != "a"]
    assert min(same) > 0.5, same
    assert abs(corr(ref, band(unrelated))) < 0.3


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, tiny):
    root, _ = tiny
    again = tmp_path / "again"
    generate_dataset(again, seed=3, **TINY)
    assert all_bytes(again) == all_bytes(root)
    other = tmp_path / "other"
    generate_dataset(other, seed=4, **TINY)
    a, b = all_bytes(root), all_bytes(other)
    common = [k for k in a if k.startswith("audio/") and k in b]
    assert common and all(a[k] != b[k] for k in common)


def test_clip_independent_of_what_else_is_generated(tmp_path: Path, tiny):
    """A clip's bytes depend on its name and the parameters, not on the other clips."""
    root, _ = tiny
    bigger = tmp_path / "bigger"
    generate_dataset(bigger, seed=3, **{**TINY, "cities": 3})
    a, b = all_bytes(root), all_bytes(bigger)
    common = [k for k in a if k.startswith("audio/") and k in b]
    assert len(common) > 100
    assert all(a[k] == b[k] for k in common)


# ---------------------------------------------------------------------------- reruns and refusals


def test_rerun_same_parameters_is_a_no_op(tiny):
    root, summary = tiny
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_dataset(root, seed=3, **TINY) == summary
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    marker = json.loads((root / MARKER).read_text())
    assert marker["parameters"]["seed"] == 3 and marker["summary"] == summary


def test_refuses_other_parameters(tiny):
    root, _ = tiny
    with pytest.raises(ValueError, match=str(root)):
        generate_dataset(root, seed=4, **TINY)
    with pytest.raises(ValueError, match=str(root)):
        generate_dataset(root, seed=3, **{**TINY, "clip_seconds": 0.6})


def test_refuses_foreign_folder_and_accepts_empty_one(tmp_path: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(foreign)):
        generate_dataset(foreign, seed=1, **TINY)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=str(a_file)):
        generate_dataset(a_file, seed=1, **TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, seed=1, **{**TINY, "cities": 1})
    meta.validate_dataset(empty, audio_sample_rate=8000, clip_seconds=0.5)


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(synth, "_write_tables", fail)
    with pytest.raises(RuntimeError, match="killed"):
        generate_dataset(tmp_path / "set", seed=1, **{**TINY, "cities": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("audio_sample_rate", 4000), ("clip_seconds", 0.0), ("cities", 11), ("locations_per_city", 0)],
)
def test_invalid_parameters_name_the_key(tmp_path: Path, key: str, value):
    with pytest.raises(ValueError, match=key):
        generate_dataset(tmp_path / "x", seed=1, **{**TINY, key: value})
    assert not (tmp_path / "x").exists()


def test_one_location_per_scene_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="locations_per_city"):
        generate_dataset(tmp_path / "x", seed=1, **{**TINY, "cities": 1, "locations_per_city": 1})


# ---------------------------------------------------------------------------- learnability


def band_statistics(root: Path, table: pd.DataFrame) -> np.ndarray:
    """Per-band mean and std of log-mel spectrograms, computed with librosa only."""
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000)
    out = []
    names = table["filename"].tolist()
    for start in range(0, len(names), 128):  # clips have equal length: process in batches
        batch = np.stack(
            [sf.read(root / n, dtype="float32")[0] for n in names[start : start + 128]]
        )
        sr = sf.info(str(root / names[start])).samplerate
        if sr != 16000:
            batch = librosa.resample(batch, orig_sr=sr, target_sr=16000, axis=-1)
        power = np.abs(librosa.stft(batch, n_fft=512, hop_length=160, center=True)) ** 2
        db = librosa.power_to_db(mel @ power, ref=1.0, amin=1e-10, top_db=None)
        out.append(np.concatenate([db.mean(axis=-1), db.std(axis=-1)], axis=1))
    return np.concatenate(out)


def linear_probe(root: Path) -> dict[str, float]:
    """Train multinomial logistic regression on fold1_train; accuracies on fold1_evaluate."""
    torch.set_num_threads(1)
    train, evaluate = meta.read_fold(root, "train"), meta.read_fold(root, "evaluate")
    x_train, x_eval = band_statistics(root, train), band_statistics(root, evaluate)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mean) / std)
    xe = torch.tensor((x_eval - mean) / std)
    yt = torch.tensor([meta.SCENES.index(s) for s in train["scene"]])
    ye = np.array([meta.SCENES.index(s) for s in evaluate["scene"]])
    weight = torch.zeros(xt.shape[1], len(meta.SCENES), dtype=xt.dtype, requires_grad=True)
    bias = torch.zeros(len(meta.SCENES), dtype=xt.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt)
        loss = loss + 0.03 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        correct = (xe @ weight + bias).argmax(1).numpy() == ye
    unseen = evaluate["device"].isin(meta.UNSEEN_DEVICES).to_numpy()
    result = {"seen": correct[~unseen].mean(), "unseen": correct[unseen].mean()}
    result.update({d: correct[(evaluate["device"] == d).to_numpy()].mean() for d in meta.DEVICES})
    return result


def check_learnable(acc: dict[str, float]) -> None:
    chance = 1 / len(meta.SCENES)
    assert acc["seen"] > 0.35, acc  # clearly above chance ...
    assert acc["seen"] < 0.9, acc  # ... but not trivially separable
    assert acc["a"] > 0.35, acc
    assert acc["unseen"] > chance, acc
    assert acc["unseen"] < acc["seen"] - 0.1, acc  # unseen devices are clearly harder
    assert max(acc[d] for d in meta.UNSEEN_DEVICES) < min(acc[d] for d in ("a", "b", "c")), acc


@pytest.mark.slow
def test_learnable_at_16khz(tmp_path: Path):
    """10 cities, 2 locations x 2 segments at 16 kHz and 1 s: the signal model, cheaply."""
    root = tmp_path / "set"
    generate_dataset(root, seed=42, audio_sample_rate=16000, clip_seconds=1.0, cities=10,
                     locations_per_city=2, segments_per_location=2)  # fmt: skip
    check_learnable(linear_probe(root))


@pytest.mark.slow
def test_learnable_with_default_parameters(tmp_path: Path):
    """The check on the exact set of config.yaml (the README's first command)."""
    from ascsharp.core.config import load_config

    dataset = load_config(Path(__file__).resolve().parents[2] / "config.yaml")["dataset"]
    synth = {k: v for k, v in dataset["synthetic"].items() if k != "generate"}
    root = tmp_path / "set"
    generate_dataset(root, audio_sample_rate=dataset["audio_sample_rate"],
                     clip_seconds=dataset["clip_seconds"], **synth)  # fmt: skip
    check_learnable(linear_probe(root))
