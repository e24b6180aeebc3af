"""A synthetic stand-in for DCASE2020 Task 1A, written in exactly the development-set layout.

The default workflow must run end to end without the 30 GB real set, and the science question
(do flat minima generalise to unseen devices?) only makes sense if the stand-in has the same
structure: ten scenes that overlap, locations that do not cross folds, and one base recording
seen through several device simulations, device A dominating training and S4-S6 appearing only
in the evaluate fold. The signal model is deliberately crude but has the features that matter
for a log-mel CNN: class-dependent spectral envelopes and event types, per-location colouration
and reverberation, and device frequency responses, band limits, noise and compression.

Every random draw comes from a numpy Generator seeded by `derive_seed(seed, <identity>)`, so a
clip's bytes depend only on the parameters and the clip's name, never on generation order.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ascsharp.core.io import previous_marker, publish_dir, staging_dir
from ascsharp.core.progress import Progress, get_logger
from ascsharp.core.seeds import derive_seed
from ascsharp.data.meta import (
    CITIES,
    DEVICES,
    FOLD_FILES,
    META_COLUMNS,
    META_FILE,
    SCENES,
    SEEN_DEVICES,
    SYNTHETIC_MARKER,
)
from ascsharp.data.synth_signal import Device, Segment, location_response, scene_spectrum

# Bump whenever the signal model changes, so an old set on disk is not mistaken for a new one.
GENERATOR_VERSION = 2
EVALUATE_SHARE = 0.3  # of each scene's locations, as in the location-disjoint real fold1
# Real fold1_train: 10,215 A clips and about 750 clips of each of B, C, S1-S3.
TRAIN_EXTRA_SHARE = 750 / 10215
# Evaluate locations keep this share of their segments. Each evaluate segment is recorded by all
# nine devices (as in the real fold1_evaluate), so with equal segment counts the evaluate fold
# would outgrow the train fold; the real set has 2,968 evaluate clips against 13,962 train clips.
EVALUATE_SEGMENT_SHARE = 0.25


# --------------------------------------------------------------------------------------------
# Scene and device descriptions. Values are hand-set so that neighbouring classes overlap
# (vehicles, busy outdoor places, large indoor halls) and per-clip jitter blurs the rest.
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def generate_dataset(
    root: Path,
    *,
    seed: int,
    audio_sample_rate: int,
    clip_seconds: float,
    locations_per_city: int,
    segments_per_location: int,
    cities: int,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Write the synthetic set under `root` and return clip counts per fold and device.

    The set is built in a hidden folder beside `root` and renamed into place at the end, so a
    killed run never leaves a valid-looking set. An existing complete set with the same
    parameters is kept as it is (no work); any other non-empty `root` is refused.
    """
    root = Path(root)
    log = log or get_logger()
    params = _check_params(
        seed=seed,
        audio_sample_rate=audio_sample_rate,
        clip_seconds=clip_seconds,
        locations_per_city=locations_per_city,
        segments_per_location=segments_per_location,
        cities=cities,
    )
    previous = _previous_output(root, params)
    if previous is not None:
        log.info("%s: synthetic set with these parameters already complete", root)
        return previous

    seed, sample_rate = params["seed"], params["sample_rate"]
    plan = _plan(
        seed, params["cities"], params["locations_per_city"], params["segments_per_location"]
    )
    summary = _summarise(plan)
    with staging_dir(root) as tmp:
        _write_audio(tmp, plan, seed, sample_rate, params["clip_seconds"], log)
        _write_tables(tmp, plan)
        marker = {"parameters": params, "summary": summary}
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        publish_dir(tmp, root)
    log.info(
        "%s: %d clips (train %d, evaluate %d)",
        root,
        summary["clips"],
        summary["folds"]["train"]["clips"],
        summary["folds"]["evaluate"]["clips"],
    )
    return summary


def _check_params(**params: Any) -> dict[str, Any]:
    """Validated parameters as plain JSON types: they are the identity of the set on disk."""

    def integer(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    checks = {
        "seed": integer,
        "audio_sample_rate": lambda v: integer(v) and v >= 8000,
        "clip_seconds": lambda v: isinstance(v, numbers.Real) and 0.25 <= v <= 60,
        "locations_per_city": lambda v: integer(v) and v >= 1,
        "segments_per_location": lambda v: integer(v) and v >= 1,
        "cities": lambda v: integer(v) and 1 <= v <= len(CITIES),
    }
    for key, ok in checks.items():
        if not ok(params[key]):
            raise ValueError(f"synthetic data: invalid {key}={params[key]!r}")
    if params["cities"] * params["locations_per_city"] < 2:
        raise ValueError(
            "synthetic data: cities * locations_per_city must be >= 2 so that every scene "
            "has a location in each fold"
        )
    clean = {k: int(params[k]) for k in checks}
    clean["clip_seconds"] = float(params["clip_seconds"])
    # "sample_rate" in the marker, as before the rename: the parameters are a set's identity.
    clean["sample_rate"] = clean.pop("audio_sample_rate")
    return {"generator": "ascsharp.data.synth", "version": GENERATOR_VERSION, **clean}


def _previous_output(root: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The stored summary if `root` holds a complete set made with `params`; None if empty."""
    stored = previous_marker(root, SYNTHETIC_MARKER, "synthetic set")
    if stored is not None and stored.get("parameters") != params:
        raise ValueError(
            f"{root}: holds a synthetic set with other parameters ({root / SYNTHETIC_MARKER}); "
            "delete it first"
        )
    return None if stored is None else stored["summary"]


# --------------------------------------------------------------------------------------------
# Layout: which clips exist and in which fold
# --------------------------------------------------------------------------------------------


def _plan(
    seed: int, cities: int, locations_per_city: int, segments_per_location: int
) -> list[Segment]:
    """All base segments with their fold and recording devices, in a fixed order."""
    city_names = CITIES[:cities]
    n_locations = cities * locations_per_city
    n_eval = min(n_locations - 1, max(1, round(EVALUATE_SHARE * n_locations)))
    evaluate: set[tuple[str, str, int]] = set()
    for scene in SCENES:
        # Spread each scene's evaluate locations over as many cities as possible, so that
        # per-city accuracies exist, while keeping whole locations in one fold.
        rng = np.random.default_rng(derive_seed(seed, "synth", "folds", scene))
        order = [city_names[i] for i in rng.permutation(cities)]
        slots = [rng.permutation(locations_per_city) for _ in city_names]
        for k in range(n_eval):
            evaluate.add((scene, order[k % cities], int(slots[k % cities][k // cities])))

    # Location and segment ids are numbered over the full city list, so a clip's name (and
    # with it its audio) does not change when fewer cities are generated.
    segments: list[Segment] = []
    for s, scene in enumerate(SCENES):
        for c, city in enumerate(city_names):
            for loc in range(locations_per_city):
                fold = "evaluate" if (scene, city, loc) in evaluate else "train"
                devices = DEVICES if fold == "evaluate" else ("a",)
                location_id = s * locations_per_city + loc
                first = ((s * len(CITIES) + c) * locations_per_city + loc) * segments_per_location
                kept = segments_per_location
                if fold == "evaluate":
                    kept = max(1, round(EVALUATE_SEGMENT_SHARE * segments_per_location))
                for k in range(first, first + kept):
                    segments.append(Segment(scene, city, str(location_id), str(k), fold, devices))

    # Training: every segment by A; each other seen device also records a random ~7 % of them.
    train = [i for i, seg in enumerate(segments) if seg.fold == "train"]
    per_device = max(1, round(TRAIN_EXTRA_SHARE * len(train)))
    extra: dict[int, list[str]] = {}
    for device in SEEN_DEVICES[1:]:
        rng = np.random.default_rng(derive_seed(seed, "synth", "train-devices", device))
        for i in rng.choice(train, size=min(per_device, len(train)), replace=False):
            extra.setdefault(int(i), []).append(device)
    for i, devices in extra.items():
        seg = segments[i]
        ordered = tuple(d for d in DEVICES if d == "a" or d in devices)
        segments[i] = Segment(seg.scene, seg.city, seg.location, seg.segment, seg.fold, ordered)
    return segments


def _summarise(plan: list[Segment]) -> dict[str, Any]:
    folds: dict[str, Any] = {}
    for fold in ("train", "evaluate"):
        segs = [s for s in plan if s.fold == fold]
        devices = {d: sum(d in s.devices for s in segs) for d in DEVICES}
        folds[fold] = {
            "clips": sum(devices.values()),
            "segments": len(segs),
            "locations": len({(s.scene, s.identifier) for s in segs}),
            "devices": devices,
        }
    return {
        "clips": folds["train"]["clips"] + folds["evaluate"]["clips"],
        "segments": len(plan),
        "folds": folds,
    }


def _write_tables(root: Path, plan: list[Segment]) -> None:
    rows = sorted(
        (seg.filename(d), seg.scene, seg.identifier, d, seg.fold)
        for seg in plan
        for d in seg.devices
    )
    (root / "evaluation_setup").mkdir()
    _write_tsv(root / META_FILE, META_COLUMNS, [r[:4] for r in rows])
    for fold in ("train", "evaluate"):
        rel, columns = FOLD_FILES[fold]
        _write_tsv(root / rel, columns, [r[:2] for r in rows if r[4] == fold])
    rel, columns = FOLD_FILES["test"]
    _write_tsv(root / rel, columns, [r[:1] for r in rows if r[4] == "evaluate"])


def _write_tsv(path: Path, columns: list[str], rows: list[tuple[str, ...]]) -> None:
    # Written by hand, not with pandas, so the bytes match the real files: tabs, no quoting.
    lines = ["\t".join(columns)] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


def _write_audio(
    root: Path,
    plan: list[Segment],
    seed: int,
    sr: int,
    clip_seconds: float,
    log: logging.Logger,
) -> None:
    n = int(round(clip_seconds * sr))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    devices = {d: Device(seed, d, freqs, sr) for d in DEVICES}
    (root / "audio").mkdir()
    total = sum(len(s.devices) for s in plan)
    progress = Progress(total, "clips", log)
    pending = 0
    location_cache: dict[tuple[str, str], np.ndarray] = {}
    for seg in plan:
        key = (seg.scene, seg.identifier)
        if key not in location_cache:
            location_cache.clear()  # the plan is location-major: one location at a time
            location_cache[key] = location_response(seed, seg, freqs, sr, n)
        spectrum = scene_spectrum(seed, seg, freqs, sr, n) * location_cache[key]
        for device in seg.devices:
            rng = np.random.default_rng(derive_seed(seed, "synth", "clip", seg.filename(device)))
            audio = devices[device].record(spectrum, n, rng)
            pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
            # libsndfile writes small blocks straight to disk; one write of the bytes is 10x faster.
            buffer = io.BytesIO()
            sf.write(buffer, pcm, sr, subtype="PCM_16", format="WAV")
            (root / seg.filename(device)).write_bytes(buffer.getvalue())
            pending += 1
        if pending >= max(1, total // 20):
            progress.update(pending)
            pending = 0
    if pending:
        progress.update(pending)
