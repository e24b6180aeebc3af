"""Log-mel front end against librosa, resampling against exact references, the feature store."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import scipy.signal
import soundfile as sf
import torch
import torchaudio
from defaults import mel_config

from ascsharp.data.meta import CLIP_COLUMNS, SCENES, DatasetError, clip_table
from ascsharp.features.mel import (
    LogMel,
    assign_validation,
    extract_store,
    load_audio,
    load_features,
)

torch.set_num_threads(1)
SR = 16000


def librosa_logmel(y: np.ndarray) -> np.ndarray:
    """The paper's front end, written with librosa 0.11 as the reference."""
    s = librosa.feature.melspectrogram(
        y=y,
        sr=16000,
        n_fft=512,
        hop_length=160,
        n_mels=64,
        fmin=50,
        fmax=8000,
        power=2,
        center=True,
        pad_mode="reflect",
    )
    return 10 * np.log10(np.maximum(s, 1e-10))


def speech_like(seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Voiced syllables: a glottal pulse train with gliding pitch through three formant
    resonators, syllable-rate envelope, pauses, and a faint background noise."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    pulses = np.diff(np.floor(np.cumsum(f0) / sr), prepend=0.0)
    voiced = pulses.copy()
    for formant, bandwidth in ((700, 90), (1200, 110), (2600, 160)):
        r = np.exp(-np.pi * bandwidth / sr)
        a = [1, -2 * r * np.cos(2 * np.pi * formant / sr), r * r]
        voiced = voiced + scipy.signal.lfilter([1 - r], a, pulses)
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    y = voiced * envelope
    y = 0.3 * y / np.abs(y).max() + 1e-3 * rng.standard_normal(n)
    return y


def signals(seconds: float = 3.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    return {
        "log_chirp": 0.5 * scipy.signal.chirp(t, 30, t[-1], 7900, method="logarithmic"),
        "white_noise": 0.1 * rng.standard_normal(t.size),
        "tones": sum(0.2 * np.sin(2 * np.pi * f * t) for f in (110.0, 440.0, 1234.5, 5000.0)),
        "speech_like": speech_like(seconds, rng),
        "silence_then_noise": np.concatenate(
            [np.zeros(t.size // 2), 0.3 * rng.standard_normal(t.size - t.size // 2)]
        ),
    }


# ----------------------------------------------------------------------------- LogMel


@pytest.mark.parametrize("name", list(signals()))
def test_logmel_matches_librosa_float64(name):
    # Measured: <= 4e-7 dB on every signal (the float32 rounding of librosa's filterbank).
    y = signals()[name]
    ours = LogMel(mel_config(), dtype=torch.float64)(torch.from_numpy(y)).numpy()
    ref = librosa_logmel(y.astype(np.float64))
    assert ours.shape == ref.shape == (64, 1 + y.size // 160)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("name", list(signals()))
def test_logmel_float32_tolerance(name):
    """In float32 both FFTs have a rounding floor ~110 dB below a frame's peak. Bands within
    60 dB of the frame peak agree to 1e-3 dB (measured <= 6e-4); signals with any noise floor
    agree everywhere to 1e-4 dB (measured <= 1e-5); quiet bands of pure synthetic tones
    (> 100 dB down) differ by up to 0.14 dB, as librosa's own float32 vs float64 does."""
    y = signals()[name].astype(np.float32)
    ours = LogMel(mel_config())(torch.from_numpy(y)).numpy()
    ref = librosa_logmel(y.astype(np.float64))
    assert ours.dtype == np.float32
    err = np.abs(ours - ref)
    within_60db = ref > ref.max(axis=0, keepdims=True) - 60
    assert err[within_60db].max() <= 1e-3
    if name in ("white_noise", "speech_like", "silence_then_noise"):
        assert err.max() <= 1e-4
    else:
        assert err.max() <= 0.5


def test_logmel_ten_seconds_has_1001_frames_and_floor():
    y = np.zeros(10 * SR, dtype=np.float32)
    y[SR : 2 * SR] = 0.1
    out = LogMel(mel_config())(torch.from_numpy(y))
    assert out.shape == (64, 1001)
    # Digital silence sits exactly on the -100 dB floor (no top_db, no reference scaling).
    assert out[:, 500].max().item() == pytest.approx(-100.0)


def test_logmel_batches_leading_dims_and_config():
    rng = np.random.default_rng(3)
    y = torch.from_numpy(rng.standard_normal((2, 3, 4000)).astype(np.float32))
    m = LogMel(mel_config())
    out = m(y)
    assert out.shape == (2, 3, 64, 26)
    torch.testing.assert_close(out[1, 2], m(y[1, 2]))
    cfg = mel_config(n_mels=32, fmax=4000.0)
    small = LogMel(cfg)(y[0, 0])
    ref = librosa.feature.melspectrogram(
        y=y[0, 0].double().numpy(),
        sr=SR,
        n_fft=512,
        hop_length=160,
        n_mels=32,
        fmin=50,
        fmax=4000,
        pad_mode="reflect",
    )
    assert np.abs(small.numpy() - 10 * np.log10(np.maximum(ref, 1e-10))).max() <= 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_logmel_on_cuda_matches_cpu():
    y = torch.from_numpy(signals()["speech_like"].astype(np.float32))
    cpu = LogMel(mel_config())(y)
    gpu = LogMel(mel_config()).cuda()(y.cuda()).cpu()
    assert (gpu - cpu).abs().max().item() <= 1e-3


def test_mel_config_refuses_bad_values():
    assert mel_config().n_frames(160000) == 1001  # 10 s at 16 kHz, hop 160, centred
    with pytest.raises(ValueError, match="fmax"):
        mel_config(fmax=9000.0)
    with pytest.raises(ValueError, match="hop_length"):
        mel_config(hop_length=0)


# ----------------------------------------------------------------------------- audio I/O


def test_load_audio_resamples_with_the_studys_resampler(tmp_path):
    """torchaudio's resampler at its defaults, as the study; not soxr (librosa's default),
    whose output differs from it by far more than float rounding."""
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(44100)).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y = load_audio(path, 16000)
    study = torchaudio.transforms.Resample(44100, 16000)(torch.from_numpy(x))
    assert y.dtype == torch.float32 and y.shape == (16000,)
    assert torch.allclose(y, study, rtol=0, atol=1e-6)
    soxr_hq = librosa.resample(x, orig_sr=44100, target_sr=16000, res_type="soxr_hq")
    assert np.abs(y.numpy() - soxr_hq).max() > 1e-2


def test_load_audio_resampling_error_against_exact_bandlimited_reference(tmp_path):
    # A periodic, strictly band-limited signal has one exact resampling: the FFT method
    # (scipy.signal.resample). The study's resampler has a short filter: measured 3.4e-3.
    rng = np.random.default_rng(1)
    n = 2 * 44100
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / 44100) > 6000] = 0
    x = np.fft.irfft(spectrum, n)
    x = (0.3 * x / x.std()).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y = load_audio(path, 16000)
    exact = scipy.signal.resample(x.astype(np.float64), 32000)
    # Away from the edges (the exact reference is periodic, the resampler is not).
    assert np.abs(y.numpy()[500:-500] - exact[500:-500]).max() <= 5e-3


TOL_SINE = 3e-4  # measured 2.0e-4 (the short filter's pass-band ripple)
TOL_ALIAS = 3e-3  # measured 1.9e-3 from a 0.5-amplitude 10 kHz sine, i.e. -45 dB; folded: 0.35


def test_load_audio_sine_keeps_frequency_amplitude_and_removes_aliases(tmp_path):
    t = np.arange(44100) / 44100
    sf.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 44100, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", 0.5 * np.sin(2 * np.pi * 10000 * t), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", 16000).numpy()
    tt = np.arange(y.size) / 16000
    assert y.size == 16000
    np.testing.assert_allclose(
        y[300:-300], 0.5 * np.sin(2 * np.pi * 1000 * tt[300:-300]), atol=TOL_SINE
    )
    # 10 kHz is above the new Nyquist (8 kHz): it must be filtered out, not folded to 6 kHz.
    assert load_audio(tmp_path / "b.wav", 16000).numpy()[300:-300].std() <= TOL_ALIAS


def test_load_audio_scale_and_no_resampling_at_target_rate(tmp_path):
    pcm = np.array([0, 16384, -32768, 32767, -1], dtype=np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 16000, subtype="PCM_16")
    y = load_audio(tmp_path / "pcm.wav", 16000)
    np.testing.assert_array_equal(y.numpy(), pcm / np.float32(32768))


def test_load_audio_errors_name_the_file(tmp_path):
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((100, 2)), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wave file")
    cases = ((stereo, "2 channels"), (corrupt, "unreadable"), (tmp_path / "x.wav", "missing"))
    for path, what in cases:
        with pytest.raises(DatasetError, match=what) as info:
            load_audio(path, 16000)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


# ----------------------------------------------------------------------------- feature store

CLIPS = [  # deliberately not sorted: the store must keep the table's order
    ("street_traffic", "lyon", "1", "140", "s2", 1.0),
    ("airport", "barcelona", "0", "2", "a", 1.0),
    ("park", "helsinki", "3", "040", "b", 0.95),  # short by less than the tolerance: padded
    ("tram", "vienna", "7", "11", "c", 1.02),  # long by less than the tolerance: trimmed
]


def write_clips(root: Path, clips=CLIPS, sr: int = 44100) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    names = []
    for k, (scene, city, loc, seg, dev, seconds) in enumerate(clips):
        name = f"audio/{scene}-{city}-{loc}-{seg}-{dev}.wav"
        t = np.arange(int(seconds * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (300 + 400 * k) * t) + 0.05 * rng.standard_normal(t.size)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / name, y, sr, subtype="PCM_16")
        names.append(name)
    return clip_table(names)


def reference_features(root: Path, filename: str, n_samples: int) -> np.ndarray:
    """soundfile, the study's resampler (torchaudio's Resample at its defaults), pad/trim, then
    librosa's mel spectrogram on the 16 kHz signal."""
    x, sr = sf.read(root / filename, dtype="float32")
    y = torchaudio.transforms.Resample(sr, 16000)(torch.from_numpy(x)).numpy()
    y = np.pad(y, (0, max(0, n_samples - y.size)))[:n_samples]
    return librosa_logmel(y.astype(np.float64))


def test_extract_store_matches_librosa_pipeline_and_keeps_order(tmp_path):
    table = write_clips(tmp_path / "data")
    npy, tsv = tmp_path / "out" / "train.npy", tmp_path / "out" / "train.tsv"
    extract_store(
        tmp_path / "data", table, npy, tsv, mel_config(), dtype="float32", clip_seconds=1.0
    )
    features, index = load_features(npy, tsv)
    assert isinstance(features, np.memmap) and features.dtype == np.float32
    assert features.shape == (4, 64, 101)
    assert list(index.columns) == ["row", *CLIP_COLUMNS]
    assert index["row"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(index[CLIP_COLUMNS], table)  # order and dtypes survive TSV
    for i, filename in enumerate(table["filename"]):
        assert (
            np.abs(features[i] - reference_features(tmp_path / "data", filename, 16000)).max()
            <= 1e-3
        )
    assert sorted(p.name for p in npy.parent.iterdir()) == ["train.npy", "train.tsv"]


def test_extract_store_threads_float16_and_first_clip_length(tmp_path):
    table = write_clips(tmp_path / "data")
    out = tmp_path / "out"
    extract_store(tmp_path / "data", table, out / "a.npy", out / "a.tsv", mel_config(),
                  dtype="float32", clip_seconds=1.0)  # fmt: skip
    extract_store(
        tmp_path / "data", table, out / "b.npy", out / "b.tsv", mel_config(), threads=3,
        clip_seconds=1.0, dtype="float16",
    )  # fmt: skip
    a, _ = load_features(out / "a.npy", out / "a.tsv", mmap=False)
    b, _ = load_features(out / "b.npy", out / "b.tsv")
    assert not isinstance(a, np.memmap) and b.dtype == np.float16
    np.testing.assert_array_equal(b, a.astype(np.float16))
    # Without clip_seconds the first clip (exactly 1 s) sets the length.
    extract_store(tmp_path / "data", table, out / "c.npy", out / "c.tsv", mel_config(),
                  dtype="float32", clip_seconds=None, threads=2)  # fmt: skip
    c, _ = load_features(out / "c.npy", out / "c.tsv")
    np.testing.assert_array_equal(c, a)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fault", ["corrupt", "too_short"])
def test_extract_store_bad_clip_names_file_and_writes_nothing(tmp_path, fault, threads):
    clips = CLIPS + [("bus", "paris", "2", "5", "s1", 0.5 if fault == "too_short" else 1.0)]
    table = write_clips(tmp_path / "data", clips)
    bad = tmp_path / "data" / table["filename"].iloc[-1]
    if fault == "corrupt":
        bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="unreadable" if fault == "corrupt" else "long") as info:
        extract_store(
            tmp_path / "data", table, out / "x.npy", out / "x.tsv", mel_config(), threads=threads,
            dtype="float32", clip_seconds=1.0,
        )  # fmt: skip
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert list(out.iterdir()) == []


def test_extract_store_rejects_bad_arguments(tmp_path):
    table = write_clips(tmp_path / "data", CLIPS[:1])
    args = (tmp_path / "data", table, tmp_path / "x.npy", tmp_path / "x.tsv", mel_config())
    kw = {"dtype": "float32", "clip_seconds": 1.0}
    with pytest.raises(ValueError, match="float64"):
        extract_store(*args, **{**kw, "dtype": "float64"})
    with pytest.raises(ValueError, match="'device'"):
        extract_store(tmp_path / "data", table.drop(columns="device"), *args[2:], **kw)
    with pytest.raises(ValueError, match="no clips"):
        extract_store(tmp_path / "data", table.iloc[:0], *args[2:], **kw)


def test_load_features_checks_agreement(tmp_path):
    table = write_clips(tmp_path / "data", CLIPS[:2])
    npy, tsv = tmp_path / "f.npy", tmp_path / "f.tsv"
    extract_store(
        tmp_path / "data", table, npy, tsv, mel_config(), dtype="float32", clip_seconds=1.0
    )
    pd.read_csv(tsv, sep="\t").iloc[:1].to_csv(tsv, sep="\t", index=False)
    with pytest.raises(ValueError, match="f.tsv: 1 rows"):
        load_features(npy, tsv)
    with pytest.raises(ValueError, match="missing"):
        load_features(tmp_path / "nope.npy", tsv)


def location_table(seed: int = 0) -> pd.DataFrame:
    """10 scenes; scene 0 has one location, the others 3-8 locations of 5-40 clips each."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, scene in enumerate(SCENES):
        for k in range(1 if s == 0 else int(rng.integers(3, 9))):
            location = f"lyon-{s * 10 + k}"
            for j in range(int(rng.integers(5, 41))):
                rows.append(
                    {"filename": f"{scene}-{location}-{j}", "scene": scene, "location": location}
                )
    return pd.DataFrame(rows)


def test_assign_validation_is_location_disjoint_stratified_and_near_fraction():
    table = location_table()
    for seed in range(5):
        val = assign_validation(table, 0.3, seed)
        assert val.dtype == bool and val.index.equals(table.index)
        assert (table.assign(v=val).groupby("location")["v"].nunique() == 1).all()
        train_locations = table[~val].groupby("scene")["location"].nunique()
        assert set(train_locations.index) == set(SCENES)  # every scene keeps a training location
        assert not val[table["scene"] == SCENES[0]].any()  # its only location stays in training
        assert abs(val.mean() - 0.3) <= 0.08
        assert val.groupby(table["scene"]).mean().iloc[1:].between(0.05, 0.6).all()


def test_assign_validation_high_fraction_still_leaves_training_locations():
    table = location_table()
    val = assign_validation(table, 0.95, 3)
    assert set(table[~val]["scene"]) == set(SCENES)
    assert val.mean() > 0.5


def test_assign_validation_deterministic_seeded_and_order_free():
    table = location_table()
    base = assign_validation(table, 0.3, 42)
    pd.testing.assert_series_equal(base, assign_validation(table, 0.3, 42))
    for other in (0, 1, 43):
        assert not base.equals(assign_validation(table, 0.3, other))
    shuffled = table.sample(frac=1.0, random_state=0)
    again = assign_validation(shuffled, 0.3, 42)
    pd.testing.assert_series_equal(again.sort_index(), base)


def test_assign_validation_zero_and_bad_fraction():
    table = location_table()
    assert not assign_validation(table, 0.0, 42).any()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            assign_validation(table, bad, 42)
    with pytest.raises(ValueError, match="'location'"):
        assign_validation(table.drop(columns="location"), 0.2, 42)
