"""The signal model of the synthetic data set: per-scene spectra and events, per-location
colouration, and device responses. Values are hand-set so that neighbouring classes overlap
(vehicles, busy outdoor places, large indoor halls) and per-clip jitter blurs the rest.

Every function draws from a numpy Generator seeded by `derive_seed(seed, <identity>)`, so a
clip depends only on the parameters and its name (ascsharp.data.synth writes the set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.fft import next_fast_len

from ascsharp.core.seeds import derive_seed

_EPS = 1e-12


# Nuisance variation, tuned so that a linear model on log-mel statistics is well above chance
# but far from perfect (see tests/data/test_synth.py).
CLIP_JITTER = 0.5  # scale of the per-clip spread of the class envelope


CITY_DB = 1.0  # spread of the per-city colouration


LOCATION_DB = 1.5  # spread of the per-location colouration


@dataclass(frozen=True)
class _Scene:
    tilt: float  # background slope, dB per octave around 1 kHz
    bumps: tuple[tuple[float, float, float], ...]  # (centre Hz, width octaves, gain dB)
    am: tuple[float, float]  # slow level modulation of the background: (depth, max rate Hz)
    rt60: float  # seconds; the location draws around it
    wet: float  # reverberant energy relative to the direct sound
    snr: tuple[float, float]  # foreground events vs background, dB
    events: dict[str, float] = field(default_factory=dict)  # type -> events per second
    hum: tuple[float, float, float, float] = (0.0, 40.0, 80.0, -10.0)  # (prob, f0 lo, hi, dB)
    beep: tuple[float, float] = (500.0, 1500.0)  # fundamental range of tonal events, Hz


SCENE_MODELS: dict[str, _Scene] = {
    "airport": _Scene(
        tilt=-2.5,
        bumps=((300, 1.0, 6), (1800, 0.8, 6)),
        am=(0.15, 0.3),
        rt60=1.0,
        wet=0.6,
        snr=(-4, 8),
        events={"speech": 0.8, "beep": 0.3, "click": 0.8, "whoosh": 0.1},
        beep=(450.0, 1100.0),
    ),
    "bus": _Scene(
        tilt=-6.0,
        bumps=((70, 0.8, 12), (400, 1.0, 4)),
        am=(0.2, 0.5),
        rt60=0.25,
        wet=0.2,
        snr=(-8, 4),
        events={"speech": 0.4, "click": 0.4, "beep": 0.1, "whoosh": 0.2},
        hum=(0.9, 35.0, 70.0, -4.0),
        beep=(700.0, 1400.0),
    ),
    "metro": _Scene(
        tilt=-4.0,
        bumps=((180, 0.8, 10), (1500, 0.7, 7)),
        am=(0.25, 0.6),
        rt60=0.3,
        wet=0.3,
        snr=(-6, 6),
        events={"whoosh": 0.4, "squeal": 0.3, "click": 1.4, "beep": 0.15, "speech": 0.2},
        hum=(0.4, 90.0, 250.0, -10.0),
        beep=(600.0, 1200.0),
    ),
    "metro_station": _Scene(
        tilt=-3.0,
        bumps=((120, 1.0, 5), (900, 0.8, 6), (5000, 0.8, -4)),
        am=(0.25, 0.4),
        rt60=1.2,
        wet=0.7,
        snr=(-4, 8),
        events={"beep": 0.35, "speech": 0.6, "whoosh": 0.3, "squeal": 0.15, "click": 0.8},
        hum=(0.2, 90.0, 250.0, -12.0),
        beep=(500.0, 1200.0),
    ),
    "park": _Scene(
        tilt=-1.5,
        bumps=((90, 1.0, 5), (5000, 0.9, 8)),
        am=(0.35, 0.4),
        rt60=0.15,
        wet=0.1,
        snr=(-3, 10),
        events={"chirp": 1.4, "speech": 0.2, "whoosh": 0.15, "click": 0.2},
        hum=(0.3, 30.0, 80.0, -14.0),
    ),
    "public_square": _Scene(
        tilt=-3.0,
        bumps=((250, 1.2, 4), (3000, 1.0, 4)),
        am=(0.25, 0.4),
        rt60=0.3,
        wet=0.2,
        snr=(-4, 8),
        events={"speech": 0.7, "click": 0.8, "chirp": 0.4, "whoosh": 0.2, "beep": 0.05},
        hum=(0.3, 30.0, 80.0, -12.0),
    ),
    "shopping_mall": _Scene(
        tilt=-3.0,
        bumps=((600, 0.8, 7), (2500, 0.7, -3)),
        am=(0.15, 0.3),
        rt60=0.8,
        wet=0.5,
        snr=(-3, 9),
        events={"beep": 0.5, "speech": 1.1, "click": 0.9},
        hum=(0.2, 90.0, 200.0, -14.0),
        beep=(250.0, 900.0),
    ),
    "street_pedestrian": _Scene(
        tilt=-2.5,
        bumps=((150, 1.0, 6), (1200, 0.8, 5)),
        am=(0.3, 0.5),
        rt60=0.2,
        wet=0.15,
        snr=(-4, 8),
        events={"speech": 0.8, "click": 1.4, "whoosh": 0.25, "chirp": 0.2, "beep": 0.05},
        hum=(0.4, 30.0, 90.0, -10.0),
    ),
    "street_traffic": _Scene(
        tilt=-4.5,
        bumps=((90, 1.0, 9), (2500, 1.0, 5)),
        am=(0.45, 0.5),
        rt60=0.15,
        wet=0.1,
        snr=(-6, 6),
        events={"whoosh": 0.8, "click": 0.2, "beep": 0.1, "speech": 0.1},
        hum=(0.8, 30.0, 90.0, -6.0),
        beep=(350.0, 700.0),
    ),
    "tram": _Scene(
        tilt=-4.0,
        bumps=((250, 0.8, 9), (700, 0.7, -5), (3000, 0.8, 4)),
        am=(0.2, 0.6),
        rt60=0.3,
        wet=0.3,
        snr=(-6, 6),
        events={"squeal": 0.35, "click": 1.0, "beep": 0.2, "speech": 0.3, "whoosh": 0.2},
        hum=(0.6, 150.0, 400.0, -8.0),
        beep=(800.0, 1600.0),
    ),
}


@dataclass(frozen=True)
class _DeviceSpec:
    eq_db: float  # scale of the smooth random EQ curve
    highpass: tuple[float, float]  # cut-off range, Hz
    lowpass: tuple[float, float]
    order: int  # Butterworth-like roll-off order of the band limits
    noise_dbfs: tuple[float, float]  # self-noise level range
    drive_db: float  # soft-clipping drive; 0 means linear
    gain_db: float  # spread of the device sensitivity


# A is the reference microphone (nearly flat); B, C and S1-S3 are phone-like; S4-S6, which the
# model never sees in training, have the narrowest bands, strongest EQ, most noise and clipping.
DEVICE_MODELS: dict[str, _DeviceSpec] = {
    "a": _DeviceSpec(0.5, (15, 25), (17000, 19000), 2, (-90, -85), 0.0, 0.0),
    "b": _DeviceSpec(2.0, (80, 150), (10000, 13000), 4, (-72, -66), 6.0, 2.0),
    "c": _DeviceSpec(2.0, (100, 200), (9000, 12000), 4, (-70, -64), 0.0, 2.0),
    "s1": _DeviceSpec(2.5, (60, 180), (8000, 12000), 4, (-70, -62), 0.0, 3.0),
    "s2": _DeviceSpec(2.5, (80, 200), (7000, 11000), 4, (-70, -62), 4.0, 3.0),
    "s3": _DeviceSpec(2.5, (60, 220), (7500, 12000), 4, (-68, -60), 0.0, 3.0),
    "s4": _DeviceSpec(5.0, (150, 250), (5000, 6500), 4, (-58, -52), 10.0, 4.0),
    "s5": _DeviceSpec(5.0, (120, 220), (5500, 7000), 4, (-60, -54), 0.0, 4.0),
    "s6": _DeviceSpec(5.5, (180, 300), (4500, 6000), 4, (-56, -50), 12.0, 4.0),
}


def _log_axis(freqs: np.ndarray) -> np.ndarray:
    """Frequency mapped to [0, 1] over 20 Hz - 20 kHz, independent of the sample rate."""
    return np.log2(np.clip(freqs, 20.0, 20000.0) / 20.0) / np.log2(1000.0)


def _smooth_curve_db(rng: np.random.Generator, freqs: np.ndarray, scale_db: float, terms: int):
    """A random smooth curve on a log-frequency axis, standard deviation about `scale_db`."""
    k = np.arange(1, terms + 1)
    amp = rng.normal(0.0, scale_db * np.sqrt(2.0 / terms), terms)
    phase = rng.uniform(0, 2 * np.pi, terms)
    # Smooth by construction, so 512 points on the log axis and interpolation lose nothing.
    grid = np.linspace(0.0, 1.0, 512)
    curve = (amp[:, None] * np.cos(np.pi * k[:, None] * grid[None, :] + phase[:, None])).sum(0)
    return np.interp(_log_axis(freqs), grid, curve)


def _band_limit(freqs: np.ndarray, highpass: float, lowpass: float, order: int) -> np.ndarray:
    f = np.maximum(freqs, 1e-3)
    return 1.0 / np.sqrt(
        (1.0 + (highpass / f) ** (2 * order)) * (1.0 + (f / lowpass) ** (2 * order))
    )


def location_response(seed: int, seg: Segment, freqs: np.ndarray, sr: int, n: int) -> np.ndarray:
    """City and location colouration times a noise-like room response (its own reverb tail)."""
    city_rng = np.random.default_rng(derive_seed(seed, "synth", "city", seg.city))
    rng = np.random.default_rng(derive_seed(seed, "synth", "location", seg.scene, seg.identifier))
    colour_db = _smooth_curve_db(city_rng, freqs, CITY_DB, 4) + _smooth_curve_db(
        rng, freqs, LOCATION_DB, 5
    )
    model = SCENE_MODELS[seg.scene]
    rt60 = model.rt60 * float(np.exp(rng.normal(0.0, 0.3)))
    wet = model.wet * float(np.exp(rng.normal(0.0, 0.3)))
    length = min(n, int(rt60 * sr))
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.91 * t / rt60)
    tail *= np.sqrt(wet / (np.sum(tail**2) + _EPS))
    tail[0] += 1.0  # direct sound
    # Circular convolution: the scene is stationary, so the tail that wraps to the start is
    # what the preceding seconds would have left there anyway.
    return np.fft.rfft(tail, n) * 10.0 ** (colour_db / 20.0)


def scene_spectrum(seed: int, seg: Segment, freqs: np.ndarray, sr: int, n: int) -> np.ndarray:
    """Spectrum of one base segment at the microphone position, before any device."""
    rng = np.random.default_rng(
        derive_seed(seed, "synth", "segment", seg.scene, seg.identifier, seg.segment)
    )
    model = SCENE_MODELS[seg.scene]
    t = np.arange(n) / sr
    # Background texture: Gaussian noise shaped by the class envelope, jittered per clip so
    # that neighbouring classes overlap.
    logf = np.log2(np.maximum(freqs, 20.0) / 1000.0)
    env_db = (model.tilt + rng.normal(0.0, 0.8 * CLIP_JITTER)) * logf
    for centre, width, gain in model.bumps:
        c = np.log2(centre / 1000.0) + rng.normal(0.0, 0.35 * CLIP_JITTER)
        env_db += (gain + rng.normal(0.0, 3.0 * CLIP_JITTER)) * np.exp(
            -0.5 * ((logf - c) / width) ** 2
        )
    env_db += _smooth_curve_db(rng, freqs, 2.0 * CLIP_JITTER, 6)
    env = 10.0 ** (env_db / 20.0) * (freqs >= 15.0)
    white = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    background = np.fft.irfft(white * env, n)
    depth, max_rate = model.am
    background *= _slow_modulation(rng, t, depth * rng.uniform(0.5, 1.5), max_rate)
    background /= _rms(background)

    # Location-fixed stationary tones (ventilation, transformers) are part of the place.
    loc_rng = np.random.default_rng(
        derive_seed(seed, "synth", "location-tone", seg.scene, seg.identifier)
    )
    if loc_rng.uniform() < 0.5:
        f0 = loc_rng.uniform(50.0, 1000.0)
        level = 10.0 ** (loc_rng.uniform(-24.0, -12.0) / 20.0)
        background += level * np.sqrt(2) * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))

    prob, lo, hi, hum_db = model.hum
    if rng.uniform() < prob:
        hum = _hum(rng, t, rng.uniform(lo, hi), sr)
        background += hum * 10.0 ** ((hum_db + rng.normal(0.0, 3.0)) / 20.0)

    foreground = np.zeros(n)
    rate_scale = float(np.exp(rng.normal(0.0, 0.4)))
    for kind, rate in model.events.items():
        count = rng.poisson(rate * rate_scale * n / sr)
        for _ in range(count):
            event = EVENTS[kind](rng, sr, model)
            event = event[:n] / _rms(event) * 10.0 ** (rng.uniform(-6.0, 6.0) / 20.0)
            start = int(rng.integers(0, n))
            stop = min(n, start + event.size)
            foreground[start:stop] += event[: stop - start]
            foreground[: event.size - (stop - start)] += event[stop - start :]  # wrap around
    mix = background
    if np.any(foreground):
        snr_db = rng.uniform(*model.snr)
        mix = background + foreground / _rms(foreground) * 10.0 ** (snr_db / 20.0)
    level_dbfs = rng.uniform(-38.0, -24.0)  # headroom: full-scale clipping stays rare
    mix *= 10.0 ** (level_dbfs / 20.0) / _rms(mix)
    return np.fft.rfft(mix)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + _EPS)


def _slow_modulation(rng: np.random.Generator, t: np.ndarray, depth: float, max_rate: float):
    rates = rng.uniform(0.05, max_rate, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    # A few Hz at most: evaluate on a coarse grid (every 10 ms) and interpolate.
    coarse = np.linspace(t[0], t[-1], max(2, int((t[-1] - t[0]) * 100) + 2))
    wobble = np.sin(2 * np.pi * rates[:, None] * coarse[None, :] + phases[:, None]).mean(0)
    return np.maximum(1.0 + depth * np.interp(t, coarse, wobble) * np.sqrt(3.0), 0.05)


def _envelope(length: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(length)
    attack, release = max(1, min(attack, length // 2)), max(1, min(release, length // 2))
    env[:attack] = np.linspace(0.0, 1.0, attack)
    env[length - release :] = np.linspace(1.0, 0.0, release)
    return env


def _harmonics(phase: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of a_k sin(k phase); powers of exp(i phase) cost far less than K sines."""
    z = np.exp(1j * phase)
    zk = z.copy()
    out = amps[0] * z.imag
    for a in amps[1:]:
        zk *= z
        if a > 1e-3:
            out += a * zk.imag
    return out


def _hum(rng: np.random.Generator, t: np.ndarray, f0: float, sr: int) -> np.ndarray:
    """Engine or motor: a harmonic series whose pitch and level drift slowly."""
    drift = 1.0 + rng.uniform(0.02, 0.12) * np.sin(
        2 * np.pi * rng.uniform(0.1, 1.0) * t + rng.uniform(0, 2 * np.pi)
    )
    phase = 2 * np.pi * np.cumsum(f0 * drift) / sr
    count = max(1, min(10, int(0.45 * sr / (f0 * 1.15))))
    amps = rng.uniform(0.3, 1.0, count) / np.arange(1, count + 1) ** rng.uniform(0.5, 1.5)
    hum = _harmonics(phase, amps) * _slow_modulation(rng, t, 0.4, 0.5)
    return hum / _rms(hum)


def _beep(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """Chimes, announcement tones, door signals: one to three notes with a few harmonics."""
    notes = []
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.uniform(0.08, 0.35) * sr)
        f0 = min(rng.uniform(*model.beep), 0.2 * sr)
        phase = 2 * np.pi * f0 * np.arange(length) / sr
        amps = np.array([1.0, rng.uniform(0, 0.5), rng.uniform(0, 0.3)])
        decay = np.exp(-np.arange(length) / (sr * rng.uniform(0.05, 0.4)))
        notes.append(_harmonics(phase, amps) * decay * _envelope(length, sr // 200, sr // 100))
    return np.concatenate(notes)


def _click(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """Footsteps, rail joints, cutlery: short decaying bursts, sometimes in pairs."""
    length = int(rng.uniform(0.005, 0.03) * sr)
    burst = rng.standard_normal(length) * np.exp(
        -np.arange(length) / (sr * rng.uniform(1, 6) / 1e3)
    )
    if rng.uniform() < 0.5:
        burst = np.diff(burst, prepend=0.0)  # bright (hard surfaces) rather than dull
    if rng.uniform() < 0.4:
        gap = np.zeros(int(rng.uniform(0.08, 0.25) * sr))
        burst = np.concatenate([burst, gap, burst * rng.uniform(0.5, 1.0)])
    return burst


def _speech(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """A few syllables: a glottal harmonic series shaped by moving formants."""
    f0 = rng.uniform(90.0, 240.0)
    parts = []
    for _ in range(int(rng.integers(2, 7))):
        length = int(rng.uniform(0.08, 0.25) * sr)
        contour = f0 * (1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, length))
        phase = 2 * np.pi * np.cumsum(contour) / sr
        count = max(1, int(min(4000.0, 0.45 * sr) / (f0 * 1.15)))
        k = np.arange(1, count + 1) * f0
        formants = (rng.uniform(300, 850), rng.uniform(850, 2400), rng.uniform(2300, 3300))
        widths = (90.0, 140.0, 200.0)
        amps = sum(
            g * np.exp(-0.5 * ((k - f) / w) ** 2)
            for f, w, g in zip(formants, widths, (1.0, 0.6, 0.3), strict=True)
        )
        syllable = _harmonics(phase, amps + 0.02) * np.hanning(length)
        if rng.uniform() < 0.25:  # a fricative: bright noise
            noise = np.diff(rng.standard_normal(length // 2), prepend=0.0)
            syllable[: noise.size] += 0.3 * noise * np.hanning(noise.size) * _rms(syllable)
        parts += [syllable, np.zeros(int(rng.uniform(0.02, 0.1) * sr))]
    return np.concatenate(parts)


def _chirp(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """Bird song: a trill of short frequency sweeps between 2 and 7 kHz."""
    top = min(7000.0, 0.45 * sr)
    parts = []
    for _ in range(int(rng.integers(2, 7))):
        length = int(rng.uniform(0.03, 0.12) * sr)
        sweep = np.linspace(rng.uniform(2000.0, top), rng.uniform(2000.0, top), length)
        parts.append(np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.hanning(length))
        parts.append(np.zeros(int(rng.uniform(0.02, 0.12) * sr)))
    return np.concatenate(parts)


def _whoosh(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """A passing vehicle or train, or a gust: band-limited noise that swells and fades."""
    length = next_fast_len(int(rng.uniform(0.4, 1.5) * sr), real=True)  # no slow prime FFTs
    freqs = np.fft.rfftfreq(length, 1.0 / sr)
    centre = np.log2(rng.uniform(100.0, 1500.0))
    shape = np.exp(
        -0.5 * ((np.log2(np.maximum(freqs, 20.0)) - centre) / rng.uniform(0.7, 1.5)) ** 2
    )
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(length)) * shape, length)
    return noise * np.hanning(length) ** rng.uniform(0.5, 2.0)


def _squeal(rng: np.random.Generator, sr: int, model: _Scene) -> np.ndarray:
    """Brake or wheel squeal: a high tone with vibrato."""
    length = int(rng.uniform(0.2, 0.9) * sr)
    t = np.arange(length) / sr
    f0 = min(rng.uniform(1500.0, 4500.0), 0.2 * sr)
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4.0, 10.0) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
    amps = np.array([1.0, rng.uniform(0.0, 0.4)])
    return _harmonics(phase, amps) * _envelope(length, sr // 20, sr // 10)


EVENTS: dict[str, Callable[[np.random.Generator, int, _Scene], np.ndarray]] = {
    "beep": _beep,
    "click": _click,
    "speech": _speech,
    "chirp": _chirp,
    "whoosh": _whoosh,
    "squeal": _squeal,
}


class Device:
    """One recording device: fixed frequency response, band limits, noise and non-linearity."""

    def __init__(self, seed: int, name: str, freqs: np.ndarray, sr: int):
        spec = DEVICE_MODELS[name]
        rng = np.random.default_rng(derive_seed(seed, "synth", "device", name))
        highpass = rng.uniform(*spec.highpass)
        lowpass = rng.uniform(*spec.lowpass)
        eq_db = _smooth_curve_db(rng, freqs, spec.eq_db, 6)
        if name != "a":  # a small-capsule resonance, as phones have
            centre = np.log2(rng.uniform(1500.0, 5000.0))
            peak = np.exp(-0.5 * ((np.log2(np.maximum(freqs, 20.0)) - centre) / 0.3) ** 2)
            eq_db += rng.uniform(0.3, 0.8) * spec.eq_db * peak
        self.response = 10.0 ** (eq_db / 20.0) * _band_limit(freqs, highpass, lowpass, spec.order)
        self.response *= 10.0 ** (rng.uniform(-1.0, 1.0) * spec.gain_db / 20.0)
        self.noise_std = 10.0 ** (rng.uniform(*spec.noise_dbfs) / 20.0)
        # Self-noise is pinkish and passes through the device's own electronics roll-off.
        tilt = 10.0 ** (rng.uniform(-3.0, 0.0) * np.log2(np.maximum(freqs, 20.0) / 1000.0) / 20.0)
        self.noise_shape = tilt * _band_limit(freqs, 20.0, lowpass, spec.order)
        self.noise_shape /= np.sqrt(np.mean(self.noise_shape**2)) + _EPS
        self.drive = 10.0 ** (spec.drive_db / 20.0) if spec.drive_db > 0 else 0.0

    def record(self, spectrum: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(spectrum.size) + 1j * rng.standard_normal(spectrum.size)
        noise *= self.noise_std * np.sqrt(n / 2.0) * self.noise_shape
        audio = np.fft.irfft(spectrum * self.response + noise, n)
        if self.drive:
            # Automatic gain control / cheap preamp: soft clipping above 1/drive of full scale.
            audio = np.tanh(audio * self.drive) / self.drive
        return audio


@dataclass(frozen=True)
class Segment:
    scene: str
    city: str
    location: str  # location id, unique within the city across scenes (as in the real set)
    segment: str
    fold: str
    devices: tuple[str, ...]

    def filename(self, device: str) -> str:
        return f"audio/{self.scene}-{self.city}-{self.location}-{self.segment}-{device}.wav"

    @property
    def identifier(self) -> str:
        return f"{self.city}-{self.location}"
