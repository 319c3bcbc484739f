"""Synthetic multitrack songs in the MUSDB18-HQ layout: the whole pipeline without a download.

Every song is composed and rendered from one integer seed with numpy and scipy only: a
tempo (sometimes swung), key, scale and chord progression shared by four stems. **drums**:
a synthesised kit on a groove with ghost notes and fills; **bass**: a low-passed,
band-limited line on the chord roots; **other**: one to three of a detuned pad, an arpeggio
and piano-like stabs; **vocals**: a sung melody in phrases, a glottal-like source with
portamento and vibrato through time-varying formant resonators (one vowel per syllable),
plus breath and consonants. A small Schroeder room on vocals and other, random stem levels
and a random overall level make songs differ in space, balance and loudness.

Song ``i`` of a dataset made with seed ``s`` is rendered from :func:`song_seed(s, i)
<song_seed>`, a hash of ``(s, i)``, so small integer seeds passed to :func:`generate_song`
directly (as the demo does) are not training songs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from tqdm.auto import tqdm

from d3net.configs import TARGETS
from d3net.errors import D3NetError
from d3net.utils import PathLike, atomic_path, check_writable


SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic minor": (0, 2, 3, 5, 7, 8, 11),
}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# Chord progressions as 0-based scale degrees, one entry per chord.
PROGRESSIONS = (
    (0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 5),
    (0, 6, 5, 4), (0, 3, 0, 4), (0, 2, 3, 4), (0, 5, 1, 4), (0, 3, 5, 4),
)

# 16-step (one bar of sixteenth notes) drum and bass patterns.
KICK_PATTERNS = ((0, 8), (0, 6, 8), (0, 4, 8, 12), (0, 7, 8, 10), (0, 3, 8, 11), (0, 10),
                 (0, 6, 10), (0, 8, 9, 14))
SNARE_PATTERNS = ((4, 12), (4, 12), (4, 12), (8,))
HAT_PATTERNS = (tuple(range(0, 16, 2)), tuple(range(16)), (2, 6, 10, 14), tuple(range(0, 16, 4)))
BASS_PATTERNS = ((0, 4, 8, 12), tuple(range(0, 16, 2)), (0, 3, 6, 8, 11, 14), (0, 7, 8, 10),
                 (0, 6, 8, 14), (0, 2, 8, 10), (0, 8))

# Formant centre frequencies and bandwidths (Hz) of five vowels for an adult voice
# (F1-F3 near the classic Peterson-Barney averages, F4-F5 typical values).
VOWELS = {
    "a": ((730, 1090, 2440, 3400, 4500), (90, 110, 140, 180, 220)),
    "e": ((530, 1840, 2480, 3400, 4500), (70, 100, 140, 180, 220)),
    "i": ((300, 2250, 3000, 3500, 4600), (60, 100, 140, 180, 220)),
    "o": ((570, 840, 2410, 3400, 4500), (80, 90, 140, 180, 220)),
    "u": ((320, 870, 2240, 3400, 4500), (60, 90, 140, 180, 220)),
}
_VOWEL_NAMES = tuple(VOWELS)
_VOWEL_WEIGHTS = np.array([0.3, 0.2, 0.15, 0.25, 0.1])

# melodic motion in scale steps: mostly steps and repeats, a few leaps
_MELODY_STEPS = (-4, -3, -2, -1, 0, 1, 2, 3, 4)
_MELODY_STEP_WEIGHTS = (0.02, 0.02, 0.12, 0.3, 0.1, 0.3, 0.1, 0.02, 0.02)

_TABLE_SIZE = 4096


# ---------------------------------------------------------------------- small DSP helpers

# Harmonic amplitudes of classic waveforms, for harmonic numbers ``k`` (1, 2, ...).
_HARMONICS = {
    "saw": lambda k: 1.0 / k,
    "square": lambda k: np.where(k % 2 == 1, 1.0 / k, 0.0),
    "triangle": lambda k: np.where(k % 2 == 1, np.where(k % 4 == 1, 1.0, -1.0) / k ** 2, 0.0),
    "warm": lambda k: 1.0 / k ** 2.2,  # a rounder tone: strong fundamental, steep roll-off
}


def midi_to_hz(midi) -> np.ndarray:
    """Frequency in Hz of a (possibly fractional) MIDI note number."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _pan(mono: np.ndarray, pan: float, out: np.ndarray | None = None) -> np.ndarray:
    """Constant-power stereo ``(2, samples)`` image of ``mono`` for ``pan`` in [-1 (left),
    1 (right)]; added into ``out`` when given."""
    angle = (pan + 1.0) * math.pi / 4.0
    if out is None:
        out = np.zeros((2, mono.shape[-1]))
    out[0] += mono * math.cos(angle)
    out[1] += mono * math.sin(angle)
    return out


def _wavetable(amplitudes: np.ndarray) -> np.ndarray:
    """One period (``_TABLE_SIZE`` samples) of ``sum_k a_k sin(2 pi k x)``, float32."""
    x = np.arange(_TABLE_SIZE) / _TABLE_SIZE
    k = np.arange(1, len(amplitudes) + 1)[:, None]
    table = (np.asarray(amplitudes)[:, None] * np.sin(2 * np.pi * k * x)).sum(0)
    return table.astype(np.float32)


def _band_limited_table(kind: str, max_hz: float, sample_rate: int,
                        max_harmonics: int = 40) -> np.ndarray:
    """Wavetable of a ``_HARMONICS`` waveform with as many harmonics as stay below 0.45 x
    the sample rate at ``max_hz``."""
    count = int(min(max_harmonics, max(1, 0.45 * sample_rate // max(max_hz, 1.0))))
    return _wavetable(_HARMONICS[kind](np.arange(1, count + 1, dtype=np.float64)))


def _oscillator(table: np.ndarray, freq, samples: int, sample_rate: int,
                phase0: float = 0.0) -> np.ndarray:
    """Wavetable oscillator; ``freq`` is a scalar or a per-sample array in Hz."""
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), (samples,))
    phase = phase0 + np.cumsum(freq) / sample_rate  # in cycles
    index = (phase * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)
    return table[index]


def _filter(x: np.ndarray, kind: str, cutoff, sample_rate: int, order: int = 2) -> np.ndarray:
    """Butterworth filter along the last axis; cutoffs are kept below Nyquist."""
    cutoff = np.clip(np.asarray(cutoff, dtype=np.float64), 20.0, 0.45 * sample_rate)
    if kind == "bandpass" and cutoff[0] >= cutoff[1] * 0.9:
        cutoff = np.array([cutoff[1] * 0.5, cutoff[1]])
    sos = signal.butter(order, cutoff / (sample_rate / 2.0), btype=kind, output="sos")
    return signal.sosfilt(sos, x, axis=-1)


def _adsr(gate: int, sample_rate: int, attack: float, decay: float, sustain: float,
          release: float) -> np.ndarray:
    """Envelope of ``gate + release`` samples: linear attack, exponential decay to
    ``sustain``, then a linear release to zero from the level reached at the gate end."""
    gate = max(int(gate), 1)
    n_release = max(int(release * sample_rate), 1)
    t = np.arange(gate) / sample_rate
    attack = max(attack, 1.0 / sample_rate)
    held = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / max(decay, 1e-4))
    env = np.where(t < attack, t / attack, held)
    tail = env[-1] * np.linspace(1.0, 0.0, n_release, endpoint=False)
    return np.concatenate([env, tail])


def _add(out: np.ndarray, start: int, chunk: np.ndarray) -> None:
    """``out[..., start:start+len] += chunk``, clipped to the bounds of ``out``."""
    lo, hi = max(start, 0), min(start + chunk.shape[-1], out.shape[-1])
    if lo < hi:
        out[..., lo:hi] += chunk[..., lo - start:hi - start]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _normalise(x: np.ndarray) -> np.ndarray:
    """Scale to unit RMS (silent input stays silent)."""
    level = _rms(x)
    return x / level if level > 0 else x


def _blocks(x: np.ndarray, delay: int) -> np.ndarray:
    """``x`` zero-padded to whole blocks of ``delay`` samples, as ``(blocks, delay)``."""
    blocks = -(-len(x) // delay)
    padded = np.zeros(blocks * delay)
    padded[:len(x)] = x
    return padded.reshape(blocks, delay)


def _comb(x: np.ndarray, delay: int, gain: float) -> np.ndarray:
    """Feedback comb ``y[n] = x[n - d] + g y[n - d]``. A recursion with lag ``d`` is a
    recursion between consecutive blocks of ``d`` samples, so it runs block-wise."""
    y = _blocks(x, delay)
    for k in range(1, len(y)):
        y[k] += gain * y[k - 1]
    return np.concatenate([np.zeros(delay), y.ravel()])[:len(x)]


def _allpass(x: np.ndarray, delay: int, gain: float) -> np.ndarray:
    """Schroeder all-pass ``y[n] = -g x[n] + x[n - d] + g y[n - d]``, block-wise."""
    blocks = _blocks(x, delay)
    y = -gain * blocks
    y[1:] += blocks[:-1]
    for k in range(1, len(y)):
        y[k] += gain * y[k - 1]
    return y.ravel()[:len(x)]


def _room(rng: np.random.Generator, sample_rate: int):
    """A random small Schroeder reverberator (parallel combs then all-passes, per channel).
    Returns ``tail(dry)``: the reverberation of a ``(2, samples)`` signal at the dry RMS."""
    size = rng.uniform(0.8, 1.3)
    spread = rng.uniform(0.3, 0.8)  # ms between left and right delays: stereo width
    rt60 = rng.uniform(0.4, 1.6)
    predelay = int(rng.uniform(0.005, 0.03) * sample_rate)
    brightness = rng.uniform(2500, 7000)  # low-pass cutoff of the tail, Hz
    comb_ms = np.array([25.3, 26.9, 28.9, 30.7]) * size
    allpass_ms = np.array([12.6, 7.7])

    def delays(ms: np.ndarray) -> list[int]:
        return [int(v * sample_rate / 1000) for v in ms]

    channels = [(delays(comb_ms), delays(allpass_ms)),
                (delays(comb_ms + spread), delays(allpass_ms + spread / 2))]

    def tail(dry: np.ndarray) -> np.ndarray:
        mono = dry.mean(0)
        out = []
        for combs, allpasses in channels:
            acc = sum(_comb(mono, d, 10 ** (-3 * d / (rt60 * sample_rate))) for d in combs)
            for d in allpasses:
                acc = _allpass(acc, d, 0.5)
            out.append(acc)
        wet = _filter(np.stack(out), "lowpass", brightness, sample_rate, order=1)
        wet = np.concatenate([np.zeros((2, predelay)), wet], axis=1)[:, :dry.shape[1]]
        level = _rms(wet)
        return wet * (_rms(dry) / level) if level > 0 else wet

    return tail


# ------------------------------------------------- the musical plan shared by all stems

@dataclass
class _Plan:
    sample_rate: int
    samples: int
    bpm: float
    swing: float
    key: int                      # pitch class of the tonic, 0 = C
    scale_name: str
    progression: tuple[int, ...]
    bars_per_chord: int
    sevenths: bool
    bars: int
    step: float                   # sixteenth note, in samples

    def onset(self, bar: int, step: int) -> int:
        """Sample index of sixteenth ``step`` (may exceed 15) of ``bar``, with swing."""
        k = bar * 16 + step
        shift = self.swing * self.step if k % 2 == 1 else 0.0
        return int(round(k * self.step + shift))

    def degree_semitones(self, degree: int) -> int:
        """Semitones above the tonic of a (possibly > 6 or negative) scale degree."""
        octave, index = divmod(degree, 7)
        return SCALES[self.scale_name][index] + 12 * octave

    def chord(self, bar: int, size: int = 3) -> list[int]:
        """Semitones above the tonic of the chord tones of ``bar`` (stacked thirds)."""
        degree = self.progression[(bar // self.bars_per_chord) % len(self.progression)]
        return [self.degree_semitones(degree + 2 * j) for j in range(size)]

    def in_range(self, semitones: int, low: int) -> int:
        """The MIDI note of ``key + semitones`` in the octave starting at ``low``."""
        return low + (self.key + semitones - low) % 12


def _make_plan(rng: np.random.Generator, seconds: float, sample_rate: int) -> _Plan:
    samples = int(round(seconds * sample_rate))
    bpm = float(rng.integers(80, 141))
    swing = float(rng.uniform(0.08, 0.2)) if rng.random() < 0.25 else 0.0
    step = 60.0 / bpm / 4.0 * sample_rate
    bars = int(math.ceil(samples / (16 * step))) + 1
    return _Plan(
        sample_rate=sample_rate, samples=samples, bpm=bpm, swing=swing,
        key=int(rng.integers(12)), scale_name=str(rng.choice(list(SCALES))),
        progression=PROGRESSIONS[rng.integers(len(PROGRESSIONS))],
        bars_per_chord=int(rng.choice([1, 2], p=[0.65, 0.35])),
        sevenths=bool(rng.random() < 0.4), bars=bars, step=step)


# -------------------------------------------------------------------------------- drums

def _decay(decay: float, sr: int, length: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Times and an exponential decay envelope lasting ``length`` time constants; a
    linear fade makes it end exactly at zero (no click when the sample is cut)."""
    t = np.arange(max(int(decay * length * sr), 2)) / sr
    return t, np.exp(-t / decay) * np.linspace(1.0, 0.0, len(t))


def _kick(rng, sr) -> np.ndarray:
    f_start, f_end = rng.uniform(110, 180), rng.uniform(42, 62)
    pitch_decay = rng.uniform(0.025, 0.07)
    t, env = _decay(rng.uniform(0.07, 0.2), sr)
    freq = f_end + (f_start - f_end) * np.exp(-t / pitch_decay)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * env
    click = rng.standard_normal(len(t)) * np.exp(-t / 0.0025) * rng.uniform(0.2, 0.6)
    drive = rng.uniform(1.0, 3.0)
    return np.tanh(drive * (body + click)) / np.tanh(drive)


def _snare(rng, sr) -> np.ndarray:
    t, env = _decay(rng.uniform(0.08, 0.2), sr)
    tone_hz = rng.uniform(160, 240)
    tone = (np.sin(2 * np.pi * tone_hz * t) + 0.5 * np.sin(2 * np.pi * 1.6 * tone_hz * t))
    tone *= np.exp(-t / rng.uniform(0.03, 0.08))
    noise = _filter(rng.standard_normal(len(t)), "bandpass", (rng.uniform(900, 2000), 9000), sr)
    noise *= env
    mix = rng.uniform(0.3, 0.7)
    return mix * tone / np.abs(tone).max() + (1 - mix) * noise / np.abs(noise).max()


def _metal(rng, t) -> np.ndarray:
    """Six inharmonic square partials (the classic analogue hi-hat source)."""
    ratios = np.array([2.0, 3.0, 4.16, 5.43, 6.79, 8.21])
    cycles = rng.uniform(300, 420) * ratios[:, None] * t
    return (np.where(cycles % 1.0 < 0.5, 1.0, -1.0)).sum(0) / 6.0


def _hat(rng, sr, decay: float) -> np.ndarray:
    t, env = _decay(decay, sr)
    source = 0.6 * _metal(rng, t) + 0.4 * rng.standard_normal(len(t))
    hat = _filter(source, "highpass", rng.uniform(6000, 8500), sr, order=4) * env
    return hat / np.abs(hat).max()


def _crash(rng, sr) -> np.ndarray:
    t, env = _decay(rng.uniform(0.6, 1.3), sr, length=3.0)
    source = 0.5 * _metal(rng, t) + rng.standard_normal(len(t))
    crash = _filter(source, "highpass", rng.uniform(3000, 5000), sr, order=2)
    crash *= env * np.minimum(t / 0.002, 1.0)
    return crash / np.abs(crash).max()


def _tom(rng, sr, hz: float) -> np.ndarray:
    t, env = _decay(rng.uniform(0.15, 0.3), sr)
    freq = hz * (1.0 + 0.4 * np.exp(-t / 0.04))
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * env
    hit = _filter(rng.standard_normal(len(t)), "bandpass", (hz * 2, hz * 8), sr) * np.exp(-t / 0.01)
    out = body + 0.3 * hit / max(np.abs(hit).max(), 1e-9)
    return out / np.abs(out).max()


def _render_drums(plan: _Plan, rng: np.random.Generator) -> np.ndarray:
    sr, n = plan.sample_rate, plan.samples
    kit = {
        "kick": [_kick(rng, sr)],
        "snare": [_snare(rng, sr) for _ in range(3)],
        "hat": [_hat(rng, sr, rng.uniform(0.025, 0.05)) for _ in range(3)],
        "open": [_hat(rng, sr, rng.uniform(0.18, 0.35))],
        "crash": [_crash(rng, sr)],
    }
    tom_base = rng.uniform(80, 110)
    kit["tom"] = [_tom(rng, sr, tom_base * r) for r in (2.0, 1.5, 1.0)]  # high, mid, floor
    pans = {"kick": 0.0, "snare": rng.uniform(-0.1, 0.1), "hat": rng.uniform(-0.5, 0.5),
            "open": rng.uniform(-0.5, 0.5), "crash": rng.uniform(-0.6, 0.6)}
    levels = {"kick": 1.0, "snare": rng.uniform(0.6, 0.9), "hat": rng.uniform(0.3, 0.6),
              "open": rng.uniform(0.25, 0.45), "crash": rng.uniform(0.25, 0.4), "tom": 0.8}

    kick_pattern = KICK_PATTERNS[rng.integers(len(KICK_PATTERNS))]
    snare_pattern = SNARE_PATTERNS[rng.integers(len(SNARE_PATTERNS))]
    hat_pattern = HAT_PATTERNS[rng.integers(len(HAT_PATTERNS))]
    open_hat = rng.random() < 0.4
    ghost_rate = rng.uniform(0.0, 0.25)
    phrase = int(rng.choice([4, 8]))
    jitter = rng.uniform(0.0, 0.006) * sr

    hits: list[tuple[str, int, int, float]] = []  # (instrument, variant, sample, velocity)

    def hit(name: str, bar: int, step: int, velocity: float) -> None:
        at = plan.onset(bar, step) + int(rng.normal(0.0, jitter + 1e-9))
        hits.append((name, int(rng.integers(len(kit[name]))), at, velocity))

    for bar in range(plan.bars):
        fill = bar % 4 == 3 and rng.random() < 0.5
        last_step = 12 if fill else 16
        for s in kick_pattern:
            if s < last_step:
                hit("kick", bar, s, rng.uniform(0.85, 1.0))
        if rng.random() < 0.25:
            hit("kick", bar, int(rng.choice([2, 3, 6, 7, 10, 11, 14, 15])) % last_step,
                rng.uniform(0.5, 0.8))
        for s in snare_pattern:
            if s < last_step:
                hit("snare", bar, s, rng.uniform(0.85, 1.0))
        for s in range(1, last_step, 2):
            if rng.random() < ghost_rate:
                hit("snare", bar, s, rng.uniform(0.12, 0.3))
        for s in hat_pattern:
            if s >= last_step:
                continue
            if open_hat and s == 14:
                hit("open", bar, s, rng.uniform(0.7, 1.0))
            else:
                accent = 1.0 if s % 4 == 0 else 0.7
                hit("hat", bar, s, accent * rng.uniform(0.6, 1.0))
        if bar % phrase == 0 and (bar > 0 or rng.random() < 0.5):
            hit("crash", bar, 0, rng.uniform(0.8, 1.0))
        if fill:
            if rng.random() < 0.5:
                for s, tom in zip(range(12, 16), (0, 0, 1, 2)):
                    hits.append(("tom", tom, plan.onset(bar, s), rng.uniform(0.7, 1.0)))
            else:
                for s in range(12, 16):
                    hit("snare", bar, s, 0.5 + 0.12 * (s - 12))

    buses: dict[tuple[str, int], np.ndarray] = {}
    for name, variant, at, velocity in hits:
        key = (name, variant if name == "tom" else 0)  # each tom has its own place
        if key not in buses:
            buses[key] = np.zeros(n)
        _add(buses[key], at, kit[name][variant] * (velocity * levels[name]))
    out = np.zeros((2, n))
    for (name, variant), bus in buses.items():
        _pan(bus, (-0.4, 0.0, 0.4)[variant] if name == "tom" else pans[name], out=out)
    return out


# --------------------------------------------------------------------------------- bass

def _render_bass(plan: _Plan, rng: np.random.Generator) -> np.ndarray:
    sr, n = plan.sample_rate, plan.samples
    pattern = BASS_PATTERNS[rng.integers(len(BASS_PATTERNS))]
    gate_ratio = rng.uniform(0.5, 0.95)
    low = int(rng.integers(28, 36))  # lowest note of the bass octave (E1..B1)
    kind = str(rng.choice(["saw", "square", "warm"]))
    table = _band_limited_table(kind, midi_to_hz(low + 19), sr)
    attack, decay = rng.uniform(0.002, 0.01), rng.uniform(0.05, 0.4)
    sustain, release = rng.uniform(0.3, 0.9), rng.uniform(0.02, 0.06)
    cutoff = rng.uniform(220, 550)
    out = np.zeros(n)
    for bar in range(plan.bars):
        root = plan.in_range(plan.chord(bar)[0], low)
        fifth = plan.in_range(plan.chord(bar)[2], low)
        next_root = plan.in_range(plan.chord(min(bar + 1, plan.bars - 1))[0], low)
        steps = list(pattern) + [16]
        for i, s in enumerate(steps[:-1]):
            choice = rng.random()
            if i == len(steps) - 2 and s >= 12 and next_root != root and choice < 0.35:
                note = next_root + (1 if next_root < root else -1)  # chromatic approach
            elif choice < 0.12 and i > 0:
                note = fifth
            elif choice < 0.2 and i > 0:
                note = root + 12
            else:
                note = root
            start = plan.onset(bar, s)
            length = plan.onset(bar, steps[i + 1]) - start
            env = _adsr(length * gate_ratio, sr, attack, decay, sustain, release)
            tone = _oscillator(table, midi_to_hz(note), len(env), sr, rng.random())
            _add(out, start, tone * env * rng.uniform(0.8, 1.0))
    out = np.tanh(rng.uniform(1.0, 2.0) * out)
    out = _filter(out, "lowpass", cutoff, sr, order=4)
    return _pan(out, rng.uniform(-0.05, 0.05))


# ----------------------------------------------- other: pad, arpeggio, piano-like stabs

def _voicing(plan: _Plan, bar: int, low: int) -> list[int]:
    size = 4 if plan.sevenths else 3
    return sorted(plan.in_range(s, low) for s in plan.chord(bar, size))


def _pad(plan: _Plan, rng) -> np.ndarray:
    sr, n = plan.sample_rate, plan.samples
    low = int(rng.integers(52, 60))
    table = _band_limited_table(str(rng.choice(["saw", "triangle"])), midi_to_hz(low + 14), sr)
    detune = rng.uniform(0.04, 0.12)  # semitones
    attack, release = rng.uniform(0.08, 0.4), rng.uniform(0.2, 0.5)
    sides = np.zeros((2, n))  # the two detuned copies of every voice, panned apart
    bar = 0
    while bar < plan.bars:
        span = plan.bars_per_chord
        start, stop = plan.onset(bar, 0), plan.onset(bar + span, 0)
        env = _adsr(stop - start, sr, attack, 1.0, 1.0, release)
        for note in _voicing(plan, bar, low):
            for side, cents in enumerate((-detune, detune)):
                tone = _oscillator(table, midi_to_hz(note + cents), len(env), sr, rng.random())
                _add(sides[side], start, tone * env)
        bar += span
    width = rng.uniform(0.3, 0.8)
    out = _pan(sides[1], width, out=_pan(sides[0], -width))
    return _filter(out, "lowpass", rng.uniform(1200, 4000), sr, order=2)


def _arpeggio(plan: _Plan, rng) -> np.ndarray:
    sr, n = plan.sample_rate, plan.samples
    low = int(rng.integers(60, 70))
    table = _band_limited_table(str(rng.choice(["square", "triangle", "saw"])),
                                midi_to_hz(low + 26), sr)
    rate = int(rng.choice([2, 4], p=[0.6, 0.4]))  # steps per note: 8ths or 16ths
    shape = str(rng.choice(["up", "down", "updown"]))
    decay, release = rng.uniform(0.08, 0.3), 0.03
    pan = rng.uniform(-0.7, 0.7)
    out = np.zeros(n)
    for bar in range(plan.bars):
        notes = _voicing(plan, bar, low) + [_voicing(plan, bar, low)[0] + 12]
        order = {"up": notes, "down": notes[::-1], "updown": notes + notes[-2:0:-1]}[shape]
        for i, s in enumerate(range(0, 16, rate)):
            start = plan.onset(bar, s)
            env = _adsr(plan.step * rate * 0.9, sr, 0.003, decay, 0.0, release)
            tone = _oscillator(table, midi_to_hz(order[i % len(order)]), len(env), sr, rng.random())
            _add(out, start, tone * env * rng.uniform(0.7, 1.0))
    out = _filter(out, "lowpass", rng.uniform(2000, 6000), sr, order=2)
    return _pan(out, pan)


def _keys(plan: _Plan, rng) -> np.ndarray:
    """Piano-like chord stabs: a bright, fast-decaying layer over a slow, round one."""
    sr, n = plan.sample_rate, plan.samples
    low = int(rng.integers(55, 64))
    bright = _band_limited_table("saw", midi_to_hz(low + 20), sr, max_harmonics=12)
    round_ = _band_limited_table("warm", midi_to_hz(low + 20), sr, max_harmonics=6)
    rhythm = ((0, 4, 8, 12), (2, 6, 10, 14), (0, 6, 12), (0, 3, 6, 10, 12))[rng.integers(4)]
    decay = rng.uniform(0.3, 0.9)
    pan = rng.uniform(-0.6, 0.6)
    out = np.zeros(n)
    for bar in range(plan.bars):
        steps = list(rhythm) + [16]
        for i, s in enumerate(steps[:-1]):
            start = plan.onset(bar, s)
            length = plan.onset(bar, steps[i + 1]) - start
            env_slow = _adsr(length, sr, 0.004, decay, 0.0, 0.05)
            env_fast = _adsr(length, sr, 0.002, decay * 0.2, 0.0, 0.05)
            velocity = rng.uniform(0.6, 1.0)
            for note in _voicing(plan, bar, low):
                f = midi_to_hz(note)
                phase = rng.random()
                chunk = (_oscillator(round_, f, len(env_slow), sr, phase) * env_slow
                         + 0.5 * _oscillator(bright, f, len(env_fast), sr, phase) * env_fast)
                _add(out, start, chunk * velocity)
    return _pan(out, pan)


def _render_other(plan: _Plan, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    parts = {"pad": _pad, "arpeggio": _arpeggio, "keys": _keys}
    count = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
    chosen = sorted(rng.choice(list(parts), size=count, replace=False).tolist())
    out = np.zeros((2, plan.samples))
    for name in chosen:
        out += _normalise(parts[name](plan, rng)) * rng.uniform(0.6, 1.0)
    return out, chosen


# ------------------------------------------------------------------------------- vocals

@dataclass
class _Note:
    start: int      # sample of the onset
    stop: int       # sample where the gate closes
    midi: int
    vowel: str
    legato: bool    # slurred from the previous note: same syllable, no new attack


def _compose_melody(plan: _Plan, rng: np.random.Generator, low: int, high: int) -> list[_Note]:
    """Phrases of one or two bars of eighth-note based rhythms, separated by rests; strong
    beats land on chord tones, motion is mostly stepwise within the scale."""
    notes: list[_Note] = []
    # the melody walks on scale degrees; degree -> MIDI through the scale
    def midi_of(degree: int) -> int:
        return 12 * (low // 12) + plan.key + plan.degree_semitones(degree)

    degrees_in_range = [d for d in range(-14, 35) if low <= midi_of(d) <= high]
    degree = degrees_in_range[len(degrees_in_range) // 2]
    eighth = 2  # steps
    position = 0 if rng.random() < 0.5 else int(rng.choice([2, 4, 8]))  # pickup in steps
    total_steps = plan.bars * 16
    while position < total_steps:
        phrase_steps = 16 * int(rng.choice([1, 2], p=[0.35, 0.65]))
        end = min(position + phrase_steps - eighth * int(rng.choice([1, 2, 4])), total_steps)
        previous_vowel = None
        while position < end:
            length = eighth * int(rng.choice([1, 2, 3, 4], p=[0.4, 0.4, 0.1, 0.1]))
            final = end - position - length < eighth
            if final:  # phrases end on a held note (at least a half note)
                length = max(end - position, eighth * 4)
            bar, step = divmod(position, 16)
            degree += int(rng.choice(_MELODY_STEPS, p=_MELODY_STEP_WEIGHTS))
            degree = min(max(degree, degrees_in_range[0]), degrees_in_range[-1])
            if step % 8 == 0:  # strong beats snap to the nearest chord tone in range
                chord_pcs = {(plan.key + s) % 12 for s in plan.chord(bar)}
                degree = next((d for d in (degree, degree + 1, degree - 1, degree + 2, degree - 2)
                               if d in degrees_in_range and midi_of(d) % 12 in chord_pcs), degree)
            legato = previous_vowel is not None and rng.random() < 0.25
            vowel = previous_vowel if legato else str(rng.choice(_VOWEL_NAMES, p=_VOWEL_WEIGHTS))
            start = plan.onset(bar, step)
            gap = rng.uniform(0.0, 0.1 if final else 0.25)  # detached notes end early
            stop = plan.onset(0, position + length) - int(gap * plan.step * length)
            notes.append(_Note(start, max(stop, start + 1), midi_of(degree), vowel, legato))
            previous_vowel = vowel
            position += length
            if rng.random() < 0.07:  # a short breath inside the phrase
                position += eighth
                previous_vowel = None
        position = max(position, end) + eighth * int(rng.choice([1, 2, 4]))
    return [note for note in notes if note.start < plan.samples]


def _f0_contour(plan: _Plan, rng, notes: list[_Note]) -> np.ndarray:
    """Per-sample fundamental frequency (Hz): portamento, scoops, delayed vibrato, drift."""
    sr, n = plan.sample_rate, plan.samples
    pitch = np.full(n, float(notes[0].midi))
    for note, end in zip(notes, [nt.start for nt in notes[1:]] + [n]):
        pitch[note.start:end] = note.midi
    glide = math.exp(-1.0 / (rng.uniform(0.015, 0.05) * sr))
    pitch, _ = signal.lfilter([1 - glide], [1, -glide], pitch, zi=[pitch[0] * glide])

    t = np.arange(n) / sr
    rate = rng.uniform(5.0, 6.5)
    depth = rng.uniform(0.25, 0.6)  # semitones, peak
    delay, ramp = rng.uniform(0.1, 0.3), rng.uniform(0.15, 0.4)
    vibrato_phase = 2 * np.pi * np.cumsum(rate + 0.3 * np.sin(2 * np.pi * 0.3 * t)) / sr
    fade = np.zeros(n)
    scoop = np.zeros(n)
    for note in notes:
        seg = slice(note.start, min(note.stop + int(0.1 * sr), n))
        local = (np.arange(seg.stop - seg.start)) / sr
        fade[seg] = np.clip((local - delay) / ramp, 0.0, 1.0)
        if not note.legato and rng.random() < 0.5:  # slurred notes glide instead
            scoop[seg] = -rng.uniform(0.3, 1.0) * np.exp(-local / rng.uniform(0.03, 0.08))
    drift = _filter(rng.standard_normal(n), "lowpass", 3.0, sr, order=1)
    drift *= 0.08 / max(np.std(drift), 1e-9)
    semitones = pitch + scoop + depth * fade * np.sin(vibrato_phase) + drift
    return midi_to_hz(semitones)


def _formant_sos(freqs: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators with unity gain at DC: ``(..., formants, 6)`` sos."""
    r = np.exp(-np.pi * bandwidths / sr)
    theta = 2 * np.pi * freqs / sr
    a1, a2 = -2 * r * np.cos(theta), r ** 2
    sos = np.zeros(freqs.shape + (6,))
    sos[..., 0] = 1 + a1 + a2
    sos[..., 3], sos[..., 4], sos[..., 5] = 1.0, a1, a2
    return sos


def _render_vocals(plan: _Plan, rng: np.random.Generator) -> tuple[np.ndarray, list[_Note]]:
    """Returns the stereo vocals and the notes they sing."""
    sr, n = plan.sample_rate, plan.samples
    high_voice = rng.random() < 0.5
    low = int(rng.integers(55, 60)) if high_voice else int(rng.integers(45, 50))
    high = low + int(rng.integers(14, 19))
    tract = rng.uniform(1.1, 1.2) if high_voice else rng.uniform(0.95, 1.05)
    notes = _compose_melody(plan, rng, low, high)
    if not notes:
        return np.zeros((2, n)), notes
    f0 = _f0_contour(plan, rng, notes)

    # glottal-like source: band-limited sawtooth-ish spectrum with a random tilt
    tilt = rng.uniform(0.9, 1.4)
    count = int(max(1, 0.45 * sr // (f0.max() * 1.02)))
    source = _oscillator(_wavetable(1.0 / np.arange(1, min(count, 60) + 1) ** tilt), f0, n, sr)
    source += rng.uniform(0.02, 0.08) * rng.standard_normal(n)

    # syllable envelopes: a legato note continues its syllable
    envelope = np.zeros(n)
    attack, release = rng.uniform(0.015, 0.04), rng.uniform(0.04, 0.1)
    syllables: list[list[_Note]] = []
    for note in notes:
        if note.legato and syllables:
            syllables[-1].append(note)
        else:
            syllables.append([note])
    for syllable in syllables:
        start, stop = syllable[0].start, syllable[-1].stop
        decay, sustain = rng.uniform(0.3, 1.0), rng.uniform(0.7, 0.95)
        env = _adsr(stop - start, sr, attack, decay, sustain, release)
        env *= rng.uniform(0.6, 1.0)
        seg = envelope[start:start + len(env)]
        np.maximum(seg, env[:len(seg)], out=seg)
    source *= envelope

    # formants: constant within a syllable, gliding from the previous vowel over its first
    # 40 ms in a few steps; the resonator state carries across segments (no clicks)
    table_f = np.array([VOWELS[v][0] for v in _VOWEL_NAMES]) * tract
    table_b = np.array([VOWELS[v][1] for v in _VOWEL_NAMES], dtype=np.float64)
    keep = table_f.max(0) < 0.45 * sr  # formants above Nyquist are dropped (low rates)
    segments: list[tuple[int, np.ndarray, np.ndarray]] = []  # (start, freqs, bandwidths)
    glide_steps, glide = 4, int(0.04 * sr)
    previous = _VOWEL_NAMES.index(syllables[0][0].vowel)
    for syllable, limit in zip(syllables, [syl[0].start for syl in syllables[1:]] + [n]):
        current = _VOWEL_NAMES.index(syllable[0].vowel)
        start = syllable[0].start
        for i in range(glide_steps if current != previous else 0):
            at = start + i * glide // glide_steps
            if at >= limit:
                break
            w = (i + 0.5) / glide_steps
            freqs = table_f[previous] ** (1 - w) * table_f[current] ** w
            segments.append((at, freqs, table_b[current]))
        at = start + (glide if current != previous else 0)
        if at < limit:
            segments.append((at, table_f[current], table_b[current]))
        previous = current
    voice = np.zeros(n)
    state = np.zeros((int(keep.sum()), 2))
    for (start, freqs, bandwidths), stop in zip(segments, [seg[0] for seg in segments[1:]] + [n]):
        sos = _formant_sos(freqs[keep], bandwidths[keep], sr)
        voice[start:stop], state = signal.sosfilt(sos, source[start:stop], zi=state)
    voice = _normalise(voice)

    # consonants: fricatives and plosives before some syllable onsets
    hiss = _filter(rng.standard_normal(n), "bandpass", (3500, 9000), sr, order=2)
    hiss /= max(np.std(hiss), 1e-9)
    for syllable in syllables:
        onset = syllable[0].start
        kind = rng.random()
        if kind < 0.2:  # "s"
            length = int(rng.uniform(0.05, 0.1) * sr)
            begin = onset - length
            if begin >= 0:
                env = np.sin(np.linspace(0.0, np.pi, length)) ** 2 * rng.uniform(0.15, 0.35)
                _add(voice, begin, hiss[begin:onset] * env)
        elif kind < 0.35:  # "t" / "k"
            length = int(rng.uniform(0.006, 0.015) * sr)
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.003 * sr))
            _add(voice, onset - length // 2, burst * rng.uniform(0.3, 0.6))
    return _pan(voice, rng.uniform(-0.05, 0.05)), notes


# ------------------------------------------------------------------- songs and datasets

def _check_args(seconds: float, sample_rate: int) -> None:
    if not seconds > 0:
        raise D3NetError(f"song length must be positive, got {seconds} s")
    if int(sample_rate) != sample_rate or not 8000 <= sample_rate <= 192000:
        raise D3NetError(f"sample rate must be an integer in [8000, 192000] Hz, got {sample_rate}")


def _render_song(seed: int, seconds: float, sample_rate: int) -> tuple[dict[str, np.ndarray], dict]:
    """Compose and render one song; returns the stems and a description of the song."""
    _check_args(seconds, sample_rate)
    sample_rate = int(sample_rate)
    children = np.random.SeedSequence(int(seed)).spawn(6)
    rng_plan, rng_drums, rng_bass, rng_other, rng_vocals, rng_mix = (
        np.random.default_rng(c) for c in children)
    plan = _make_plan(rng_plan, seconds, sample_rate)
    room = _room(rng_mix, sample_rate)

    drums = _render_drums(plan, rng_drums)
    bass = _render_bass(plan, rng_bass)
    other, other_parts = _render_other(plan, rng_other)
    vocals, notes = _render_vocals(plan, rng_vocals)

    # the room (vocals and other parts; the kit and the bass stay dry), then the balance
    # of the stems in dB around unit RMS
    stems = {"vocals": vocals, "drums": drums, "bass": bass, "other": other}
    wet = {"vocals": rng_mix.uniform(0.15, 0.5), "other": rng_mix.uniform(0.15, 0.6)}
    for name, amount in wet.items():
        stems[name] = stems[name] + amount * room(stems[name])
    balance_db = {"vocals": rng_mix.uniform(-1, 4), "drums": rng_mix.uniform(-2, 2),
                  "bass": rng_mix.uniform(-3, 2), "other": rng_mix.uniform(-4, 1)}
    for name in TARGETS:
        stems[name] = _normalise(stems[name]) * 10 ** (balance_db[name] / 20)

    # overall level: the loudest of the mixture and the stems peaks at `peak`
    mixture = sum(stems[name] for name in TARGETS)
    peak = rng_mix.uniform(0.4, 0.95)
    loudest = max(np.abs(mixture).max(), *(np.abs(stems[s]).max() for s in TARGETS))
    stems = {name: (stems[name] * (peak / loudest)).astype(np.float32) for name in TARGETS}

    info = {
        "seed": int(seed), "seconds": float(seconds), "sample_rate": sample_rate,
        "bpm": plan.bpm, "swing": round(plan.swing, 3),
        "key": NOTE_NAMES[plan.key], "scale": plan.scale_name,
        "progression": list(plan.progression), "bars_per_chord": plan.bars_per_chord,
        "other_parts": other_parts, "peak": round(float(peak), 3),
        "balance_db": {k: round(float(v), 2) for k, v in balance_db.items()},
        "vocal_notes": [{"start": round(nt.start / sample_rate, 4),
                         "stop": round(nt.stop / sample_rate, 4),
                         "midi": nt.midi, "vowel": nt.vowel} for nt in notes],
    }
    return stems, info


def generate_song(seed: int, seconds: float = 20.0,
                  sample_rate: int = 44100) -> dict[str, np.ndarray]:
    """Compose and render one synthetic song.

    Args:
        seed: any integer; the same seed always gives the same song.
        seconds: length of the song.
        sample_rate: in Hz (at least 8000).

    Returns:
        ``{"vocals", "drums", "bass", "other"}`` -> float32 ``(2, samples)`` arrays with
        ``samples = round(seconds * sample_rate)``, all within [-1, 1]. The mixture is
        :func:`mix` of them (float32 sum in :data:`~d3net.configs.TARGETS` order), also
        within [-1, 1].
    """
    return _render_song(seed, seconds, sample_rate)[0]


def mix(stems: dict[str, np.ndarray]) -> np.ndarray:
    """The mixture of a song: the float32 sum of the stems in
    :data:`~d3net.configs.TARGETS` order."""
    return sum((stems[name].astype(np.float32) for name in TARGETS),
               np.zeros_like(stems[TARGETS[0]], dtype=np.float32))


def song_seed(dataset_seed: int, index: int) -> int:
    """The seed of song ``index`` in a dataset generated with ``dataset_seed``."""
    state = np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def split_counts(tracks: int) -> dict[str, int]:
    """Default split: 20 % of the songs (at least one) for test, the rest for train."""
    if tracks < 2:
        raise D3NetError(f"need at least 2 tracks (one train, one test), got {tracks}")
    test = min(max(1, round(0.2 * tracks)), tracks - 1)
    return {"train": tracks - test, "test": test}


def _to_file_samples(stems: dict[str, np.ndarray], subtype: str) -> dict[str, np.ndarray]:
    """Stems and their mixture as the exact sample values to write. For PCM_16 the
    mixture is the integer sum of the quantised stems (it cannot clip: peaks are <= 0.95)."""
    if subtype == "PCM_16":
        ints = {k: np.clip(np.round(v.astype(np.float64) * 32768), -32768, 32767).astype(np.int32)
                for k, v in stems.items()}
        ints["mixture"] = sum(ints[s] for s in TARGETS)
        return {k: v.astype(np.int16) for k, v in ints.items()}
    if subtype == "FLOAT":
        out = {k: v.astype(np.float32) for k, v in stems.items()}
        out["mixture"] = mix(out)
        return out
    raise D3NetError(f"unsupported WAV subtype {subtype!r}: use 'PCM_16' or 'FLOAT'")


def generate_dataset(out: PathLike, tracks: int = 10, seconds: float = 20.0, seed: int = 0,
                     sample_rate: int = 44100, subsets: dict[str, int] | None = None,
                     progress: bool = True, subtype: str = "PCM_16") -> list[Path]:
    """Write a synthetic dataset in the MUSDB18-HQ layout.

    Writes ``out/{train,test}/synth-NNN/{mixture,vocals,drums,bass,other}.wav`` (stereo,
    16-bit PCM as MUSDB18-HQ, or 32-bit float with ``subtype="FLOAT"``; ``mixture.wav`` is
    exactly the sum of the four stem files) and ``out/synth_musdb.json`` describing each
    song (seed, tempo, key, scale, ...). Files are written atomically.

    Args:
        out: dataset root folder (created; existing files of the same names are replaced).
        tracks: number of songs, split by :func:`split_counts` (the last 20 % are test).
        seconds: length of every song.
        seed: dataset seed; song ``i`` uses :func:`song_seed(seed, i) <song_seed>`.
        sample_rate: in Hz.
        subsets: explicit counts, e.g. ``{"train": 8, "test": 2}``; overrides ``tracks``.
        progress: show a tqdm bar.
        subtype: ``"PCM_16"`` or ``"FLOAT"``.

    Returns:
        The track folders, train first, in name order.

    Raises:
        D3NetError: bad counts, length, sample rate or subtype, or an unwritable ``out``.
    """
    out = Path(out)
    counts = dict(subsets) if subsets is not None else split_counts(int(tracks))
    unknown = set(counts) - {"train", "test"}
    if unknown or any(int(v) < 0 for v in counts.values()) or sum(counts.values()) < 1:
        raise D3NetError(f"subsets must give non-negative 'train'/'test' counts, got {subsets}")
    _check_args(seconds, sample_rate)
    check_writable(out)
    jobs = [subset for subset in ("train", "test") for _ in range(int(counts.get(subset, 0)))]
    folders: list[Path] = []
    songs = []
    for index, subset in enumerate(tqdm(jobs, desc="synthesising songs", unit="song",
                                        disable=not progress)):
        name = f"synth-{index:03d}"
        stems, info = _render_song(song_seed(seed, index), seconds, sample_rate)
        folder = out / subset / name
        for key, audio in _to_file_samples(stems, subtype).items():
            with atomic_path(folder / f"{key}.wav") as tmp:
                sf.write(str(tmp), audio.T, int(sample_rate), subtype=subtype, format="WAV")
        folders.append(folder)
        info.pop("vocal_notes")
        songs.append({"name": name, "subset": subset, **info})
    description = {"generator": "d3net.data.synth_music", "dataset_seed": int(seed),
                   "tracks": len(jobs), "seconds": float(seconds), "sample_rate": int(sample_rate),
                   "subtype": subtype, "songs": songs}
    with atomic_path(out / "synth_musdb.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2))
    return folders
