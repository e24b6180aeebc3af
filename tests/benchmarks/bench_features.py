"""Feature extraction throughput on full-size clips, and the estimate for the real data set.

Writes N clips as DCASE2020 stores them (10 s, 44.1 kHz, mono, 24-bit PCM), then runs
`extract_store` (read, resample to 16 kHz with the study's resampler, log-mel) with 1 and with
`--threads` worker threads. Prints clips/s, clips/s per thread, and the time the 16,930 clips of
the development set (fold1_train + fold1_evaluate) would take at that rate. The absolute rate
depends on the machine; the per-thread scaling is what to look at before choosing `threads`.
Run: `python tests/benchmarks/bench_features.py [--clips 24] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ascsharp.core.config import schema_defaults
from ascsharp.data.meta import clip_table
from ascsharp.features.mel import MelConfig, extract_store

REAL_CLIPS = 16_930


def write_clips(folder: Path, n: int, seconds: float = 10.0, sr: int = 44100) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"audio/park-lyon-{i // 10}-{i}-a.wav"
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        wave = 0.1 * rng.standard_normal(int(seconds * sr)).astype(np.float32)
        sf.write(folder / name, wave, sr, subtype="PCM_24")
        names.append(name)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("ascsharp").setLevel(logging.WARNING)
    settings = schema_defaults()["features"]  # the paper's front end
    mel = MelConfig(**{k: settings[k] for k in MelConfig.__dataclass_fields__})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = clip_table(write_clips(root / "data", args.clips))
        print(f"{args.clips} clips of 10 s, 44.1 kHz, 24-bit PCM")
        for threads in sorted({1, args.threads}):
            t0 = time.perf_counter()
            extract_store(root / "data", table, root / f"t{threads}.npy", root / f"t{threads}.tsv",
                          mel, dtype="float32", threads=threads, clip_seconds=10.0)  # fmt: skip
            rate = args.clips / (time.perf_counter() - t0)
            print(
                f"threads={threads}: {rate:6.1f} clips/s, {rate / threads:6.1f} clips/s per thread;"
                f" the real set ({REAL_CLIPS:,} clips) would take {REAL_CLIPS / rate / 60:5.1f} min"
            )


if __name__ == "__main__":
    main()
