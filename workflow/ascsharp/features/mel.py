"""Log-mel features (PANNs front end at 16 kHz) and the feature store of each fold.

The spectrogram is the one the paper's PANNs models were trained on: STFT n_fft 512 (Hann),
hop 160, centred with reflect padding, power 2, 64 Slaney mel bands over 50-8000 Hz, then
``10*log10(max(S, 1e-10))`` with no top_db clipping. It is computed with torchaudio so that it
also runs on a GPU, and tests hold it to librosa's numbers.

Resampling (44.1 -> 16 kHz) is torchaudio's windowed-sinc resampler at its defaults (Hann
window, 6 zero crossings, roll-off 0.99), which is what the study used. It is not the most
accurate choice (soxr, librosa's default, is closer to an ideal band-limited resampler: 7e-5 vs
3.4e-3 max error on band-limited noise), but on white noise the two differ by up to 2.2 dB in
the mean of the top mel bands, so changing it would change the study's inputs.

A fold's store is ONE contiguous ``.npy`` array (N, n_mels, frames), read back as a memory
map, plus an index TSV (the clip table with a ``row`` column) in the same row order.
"""

from __future__ import annotations

import functools
import math
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchaudio

from ascsharp.core.io import atomic_path, one_line, write_json
from ascsharp.core.progress import Progress, get_logger
from ascsharp.core.seeds import derive_seed
from ascsharp.core.settings import enum
from ascsharp.data.meta import CLIP_COLUMNS, DatasetError

AMIN = 1e-10  # power floor before the log: -100 dB, as PANNs/librosa power_to_db(top_db=None)
STORE_DTYPES = enum("features.dtype")  # the storage types the config allows
# Index TSV columns read back as text: segment ids look numeric but are names ("042" != 42).
_TEXT_COLUMNS = ("filename", "scene", "city", "location", "segment", "device")


@dataclass(frozen=True)
class MelConfig:
    """Front-end parameters: the config's `features` section (defaults, the paper's, in the
    schema). `sample_rate` is the rate the features are computed at (the WAVs are resampled)."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MelConfig.{name}: expected a positive integer, got {value!r}")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig.fmin/fmax: need 0 <= fmin < fmax <= sample_rate/2, "
                f"got {self.fmin}, {self.fmax} at {self.sample_rate} Hz"
            )

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred STFT: one per hop, plus one (10 s at 16 kHz -> 1001)."""
        return 1 + n_samples // self.hop_length


class LogMel(torch.nn.Module):
    """Waveform (..., time) at cfg.sample_rate -> log-mel power (..., n_mels, frames) in dB.

    Computes in `dtype` (float32 by default; float64 for reference checks). The input is cast
    to that dtype but moved nowhere: put the module on the waveform's device.
    """

    def __init__(self, cfg: MelConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        # torchaudio builds the window and filterbank in the default dtype; in float32 the
        # filterbank's small edge weights lose up to 0.3 % to cancellation, which moves quiet
        # bands by up to ~0.2 dB against librosa. Built in float64, then cast to float32 below,
        # every weight is the correctly rounded value, as in librosa. (So prefer dtype=float64
        # to .double() for reference checks: the latter widens the float32-rounded weights.)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            mel = self._build()
        finally:
            torch.set_default_dtype(default_dtype)
        self.mel = mel.to(dtype)

    def _build(self) -> torch.nn.Module:
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=self.cfg.sample_rate,
            n_fft=self.cfg.n_fft,
            win_length=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            f_min=self.cfg.fmin,
            f_max=self.cfg.fmax,
            n_mels=self.cfg.n_mels,
            window_fn=torch.hann_window,  # periodic Hann, as scipy get_window("hann") in librosa
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        dtype = self.mel.mel_scale.fb.dtype
        power = self.mel(waveform.to(dtype))
        return 10.0 * torch.log10(torch.clamp(power, min=AMIN))


def load_audio(path: str | Path, target_sr: int) -> torch.Tensor:
    """Read a mono file as float32 in [-1, 1] and resample it to target_sr (the study's
    resampler: torchaudio's at its defaults).

    Errors name the file: a feature run over 17k clips must say which one is broken.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: audio file missing")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt files with several exception types
        raise DatasetError(f"{path}: unreadable audio ({one_line(e)})") from None
    if data.shape[1] != 1:
        raise DatasetError(f"{path}: {data.shape[1]} channels, expected mono")
    if data.shape[0] == 0:
        raise DatasetError(f"{path}: no samples")
    if not np.isfinite(data).all():  # float WAVs can hold NaN/inf: they would poison the mels
        bad = int(np.flatnonzero(~np.isfinite(data[:, 0]))[0])
        raise DatasetError(f"{path}: non-finite sample (NaN or inf) at sample {bad}; fix the file")
    x = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if sr != target_sr:
        x = _resampler(sr, target_sr)(x)
    return x


@functools.cache
def _resampler(orig_sr: int, target_sr: int) -> torchaudio.transforms.Resample:
    # The module, as the study used it (its kernel differs from the functional form's by ~4e-6).
    return torchaudio.transforms.Resample(orig_sr, target_sr)


def _fit_length(x: torch.Tensor, n: int, tolerance: int, path: Path, sr: int) -> torch.Tensor:
    """Zero-pad or trim to n samples, refusing clips whose length is wrong by more than rounding."""
    if abs(x.shape[-1] - n) > tolerance:
        raise DatasetError(
            f"{path}: {x.shape[-1] / sr:.3f} s long, expected {n / sr:.3f} s "
            f"(tolerance {tolerance / sr:.3f} s)"
        )
    if x.shape[-1] >= n:
        return x[..., :n]
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def extract_store(
    root: str | Path,
    table: pd.DataFrame,
    out_npy: str | Path,
    out_tsv: str | Path,
    cfg: MelConfig,
    *,
    dtype: str,
    clip_seconds: float | None,
    threads: int = 1,
    tolerance_seconds: float = 0.1,
    out_json: str | Path | None = None,
    settings: dict | None = None,
) -> None:
    """Write the log-mels of every clip of `table` (one fold) to one (N, n_mels, frames) array
    and its index TSV: the fold's feature store; with `out_json`, also its `settings` file.

    Every clip is padded/trimmed to the sample count of `clip_seconds` (or of the first clip),
    so the store is one rectangular array; a clip off by more than `tolerance_seconds` is an
    error naming the file. The outputs appear only if every clip succeeded. An earlier store
    at these paths is deleted first, and the new files are renamed into place index, array,
    settings: a job killed at any point leaves some of the new files and none of the old, so
    an array never meets an index of other clips (load_features refuses a missing file).
    Work runs on `threads` threads with one torch thread each: decoding, resampling and torch
    ops all release the GIL, and one intra-op thread per clip avoids oversubscribing the cores
    Snakemake granted.
    """
    root = Path(root)
    if dtype not in STORE_DTYPES:
        raise ValueError(f"feature dtype {dtype!r}: expected one of {STORE_DTYPES}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    missing = [c for c in CLIP_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"clip table lacks column {missing[0]!r}")
    if "row" in table.columns:
        raise ValueError("clip table already has a 'row' column")
    if len(table) == 0:
        raise ValueError(f"{out_npy}: no clips to extract")
    outputs = [Path(p) for p in (out_json, out_npy, out_tsv) if p is not None]
    for p in outputs:
        p.unlink(missing_ok=True)
    index = table.reset_index(drop=True)
    index.insert(0, "row", np.arange(len(index), dtype=np.int64))
    paths = [root / f for f in index["filename"]]
    sr = cfg.sample_rate
    log = get_logger()

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logmel = LogMel(cfg).eval()
        first = load_audio(paths[0], sr)
        n_samples = round(clip_seconds * sr) if clip_seconds is not None else first.shape[-1]
        tolerance = round(tolerance_seconds * sr)
        shape = (len(index), cfg.n_mels, cfg.n_frames(n_samples))
        log.info("features: %d clips -> %s %s (%s)", len(index), out_npy, shape, dtype)

        def clip_features(i: int, wave: torch.Tensor | None = None) -> np.ndarray:
            if wave is None:
                wave = load_audio(paths[i], sr)
            with torch.inference_mode():
                return logmel(_fit_length(wave, n_samples, tolerance, paths[i], sr)).numpy()

        # Nested so that the index is renamed first and the array (the costly part) last.
        with atomic_path(out_npy) as tmp_npy, atomic_path(out_tsv) as tmp_tsv:
            out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=dtype, shape=shape)
            ticker = _Ticker(Progress(len(index), "clips", logger=log))

            def job(out: np.ndarray, i: int, wave: torch.Tensor | None = None) -> None:
                out[i] = clip_features(i, wave)  # rows are disjoint: no lock needed
                ticker.tick()

            job(out, 0, first)
            if threads == 1:
                for i in range(1, len(index)):
                    job(out, i)
            else:
                pool = ThreadPoolExecutor(max_workers=threads)
                try:
                    futures = [pool.submit(job, out, i) for i in range(1, len(index))]
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:
                    # After a failed clip or a signal, drop the queued clips and do not wait
                    # for the running ones: the temporary array goes at once. No-op if all ran.
                    pool.shutdown(wait=False, cancel_futures=True)
                for f in futures:
                    if not f.cancelled() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
            out.flush()
            del out  # unmap before the rename
            index.to_csv(tmp_tsv, sep="\t", index=False)
        if out_json is not None:
            write_json(out_json, settings or {})
    finally:
        torch.set_num_threads(old_threads)


class _Ticker:
    """Thread-safe counter that logs through Progress about every 5 % of the total."""

    def __init__(self, progress: Progress, every: float = 0.05):
        self.progress = progress
        self.step = max(1, math.ceil(progress.total * every))
        self.pending = 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.pending += 1
            done = self.progress.done + self.pending
            if done % self.step == 0 or done == self.progress.total:
                self.progress.update(self.pending)
                self.pending = 0


def load_features(
    npy: str | Path, tsv: str | Path, mmap: bool = True
) -> tuple[np.ndarray, pd.DataFrame]:
    """A store's feature array (a read-only memory map by default) and its index table.

    One map for the whole store: the OS pages in what a batch touches, so a 3.6 GB training
    store costs no RAM up front and many processes share the page cache.
    """
    npy, tsv = Path(npy), Path(tsv)
    for p in (npy, tsv):
        if not p.is_file():
            raise ValueError(f"{p}: feature file missing")
    try:
        features = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{npy}: unreadable feature array ({one_line(e)})") from None
    if features.ndim != 3:
        raise ValueError(f"{npy}: expected (clips, mels, frames), got shape {features.shape}")
    table = pd.read_csv(tsv, sep="\t", dtype={c: str for c in _TEXT_COLUMNS})
    missing = [c for c in ["row", *CLIP_COLUMNS] if c not in table.columns]
    if missing:
        raise ValueError(f"{tsv}: index lacks column {missing[0]!r}")
    if len(table) != features.shape[0]:
        raise ValueError(f"{tsv}: {len(table)} rows but {npy} holds {features.shape[0]} clips")
    if not np.array_equal(table["row"].to_numpy(), np.arange(len(table))):
        raise ValueError(f"{tsv}: 'row' column is not 0..{len(table) - 1} in order")
    table["seen"] = table["seen"].astype(bool)
    return features, table


def assign_validation(table: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """Mark whole recording locations as validation, stratified by scene.

    Location-disjoint so that validation measures generalisation to new places, as the
    evaluate fold does. Per scene, locations are taken in a seeded random order while that
    brings the scene's validation share closer to `fraction`, always leaving at least one
    location for training (a scene recorded at one location keeps it). The result depends only
    on (clips per location, seed), not on the table's row order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    for col in ("location", "scene"):
        if col not in table.columns:
            raise ValueError(f"clip table lacks column {col!r}")
    result = pd.Series(False, index=table.index, name="validation")
    if fraction == 0.0 or len(table) == 0:
        return result
    counts = table.groupby(["location", "scene"]).size().reset_index(name="n")
    # A location counts for the scene it mostly holds, should one ever hold several.
    counts = counts.sort_values(["location", "n", "scene"], ascending=[True, False, True])
    per_location = counts.groupby("location", sort=True).agg(scene=("scene", "first"))
    per_location["n"] = table.groupby("location").size()
    rng = np.random.default_rng(derive_seed("assign_validation", seed))
    chosen: list[str] = []
    for scene in sorted(per_location["scene"].unique()):
        group = per_location[per_location["scene"] == scene].sort_index()
        if len(group) < 2:
            continue
        target = fraction * group["n"].sum()
        taken, kept = 0, len(group)
        for location in group.index[rng.permutation(len(group))]:
            n = int(group.at[location, "n"])
            if kept > 1 and abs(taken + n - target) < abs(taken - target):
                chosen.append(location)
                taken += n
                kept -= 1
    result[table["location"].isin(chosen)] = True
    return result
