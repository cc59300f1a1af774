"""Synthetic animal vocalisations for the offline audio demo (numpy only, seeded).

``write_calls(root, callers=4, clips=(12, 6), ...)`` writes ``root/train/<caller>/*.wav`` and
``root/test/<caller>/*.wav``: the class is the CALLER (the bioacoustics papers' task: who is
calling). Each caller has its own voice, drawn once from the seed: a fundamental frequency, the
depth of its frequency contour, a vibrato rate, and the amplitudes of its harmonics. Every clip is
one call of one of ``call_types`` shared call types (up-sweep, down-sweep, arch, trill, ...: the
shape of the f0 contour over the call), at a random onset and duration, with a small per-clip
pitch jitter, an attack/decay envelope and white noise at a random signal-to-noise ratio, so the
call type and the noise vary within a caller and only the voice identifies it.
``vocalisation(voice, call_type, rate, seconds, rng)`` makes one clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

CALL_TYPES = ("upsweep", "downsweep", "arch", "trill", "flat")


@dataclass(frozen=True)
class Voice:
    f0: float  # Hz, the caller's mean fundamental frequency
    depth: float  # relative excursion of its f0 contour
    vibrato_hz: float
    harmonics: tuple  # amplitude of harmonic 1, 2, ...


def voices(n: int, seed: int = 0) -> list[Voice]:
    """``n`` callers' voices, spread over f0 with distinct harmonic profiles (seeded)."""
    rng = np.random.default_rng([seed, 1])
    f0s = np.geomspace(300.0, 800.0, n) * rng.uniform(0.97, 1.03, n)  # neighbours ~1/n octave apart
    out = []
    for f0 in f0s:
        k = int(rng.integers(3, 7))
        amps = rng.uniform(0.2, 1.0, k) * np.power(rng.uniform(0.4, 0.9), np.arange(k))
        out.append(Voice(float(f0), float(rng.uniform(0.1, 0.35)), float(rng.uniform(4, 14)), tuple(amps / amps.max())))
    return out


def _contour(call_type: str, u: np.ndarray) -> np.ndarray:
    """The relative f0 contour in [-1, 1] of a call type over the call's time ``u`` in [0, 1]."""
    return {
        "upsweep": 2 * u - 1,
        "downsweep": 1 - 2 * u,
        "arch": 1 - 2 * (2 * u - 1) ** 2,
        "trill": np.sin(2 * np.pi * 6 * u),
        "flat": 0 * u,
    }[call_type]


def vocalisation(voice: Voice, call_type: str, rate: int, seconds: float, rng) -> np.ndarray:
    """One clip (float32, peak <= 1): a call of ``voice`` and ``call_type`` in noise."""
    n = int(round(seconds * rate))
    dur = rng.uniform(0.4, 0.8) * seconds
    start = rng.uniform(0, seconds - dur)
    t = np.arange(n) / rate
    u = np.clip((t - start) / dur, 0, 1)
    inside = (t >= start) & (t <= start + dur)
    f0 = voice.f0 * rng.uniform(0.92, 1.08) * (1 + voice.depth * _contour(call_type, u))
    f0 = f0 * (1 + 0.02 * np.sin(2 * np.pi * voice.vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(a * np.sin((h + 1) * phase) for h, a in enumerate(voice.harmonics) if (h + 1) * f0.max() < rate / 2)
    env = np.minimum(1.0, np.minimum(u, 1 - u) * 10) * inside
    x = x * env
    rms = np.sqrt(np.mean(x[inside] ** 2)) if inside.any() else 1.0
    snr_db = rng.uniform(0, 15)
    x = x + rng.standard_normal(n) * rms * 10 ** (-snr_db / 20)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def write_calls(
    root,
    callers: int = 4,
    clips: tuple[int, int] = (12, 6),
    call_types: int = 3,
    rate: int = 16000,
    seconds: float = 1.0,
    seed: int = 0,
) -> str:
    """Write the train/test folders (``clips``: per caller and split) of wav files; returns ``root``."""
    import soundfile as sf

    if not 1 <= call_types <= len(CALL_TYPES):
        raise ValueError(f"call_types must be 1..{len(CALL_TYPES)}, got {call_types}")
    rng = np.random.default_rng([seed, 2])
    for split, count in zip(("train", "test"), clips):
        for c, voice in enumerate(voices(callers, seed)):
            folder = os.path.join(root, split, f"caller{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                kind = CALL_TYPES[i % call_types]
                sf.write(
                    os.path.join(folder, f"{kind}-{i:03d}.wav"), vocalisation(voice, kind, rate, seconds, rng), rate
                )
    return str(root)
