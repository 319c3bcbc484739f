"""Synthetic multitrack songs: determinism, levels, musically distinct stems, dataset layout."""
import json

import numpy as np
import pytest
import soundfile as sf

from d3net.data import synth_music as sm
from d3net.configs import TARGETS
from d3net.errors import D3NetError

SR = 16000


@pytest.fixture(scope="module")
def songs():
    """Three 8 s songs with their descriptions."""
    return [sm._render_song(seed, 8.0, SR) for seed in range(3)]


def test_generate_song_is_deterministic_and_seeds_differ():
    a = sm.generate_song(7, seconds=2.0, sample_rate=SR)
    b = sm.generate_song(7, seconds=2.0, sample_rate=SR)
    c = sm.generate_song(8, seconds=2.0, sample_rate=SR)
    assert list(a) == list(TARGETS)
    for name in TARGETS:
        assert a[name].shape == (2, 2 * SR) and a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.allclose(a[name], c[name])


def test_levels_are_within_range_and_stems_non_silent(songs):
    for stems, info in songs:
        mixture = sm.mix(stems)
        np.testing.assert_array_equal(mixture, stems["vocals"] + stems["drums"] + stems["bass"] + stems["other"])
        peak = max(np.abs(mixture).max(), *(np.abs(s).max() for s in stems.values()))
        assert peak == pytest.approx(info["peak"], abs=1e-3) and peak <= 0.95
        for name, audio in stems.items():
            assert np.isfinite(audio).all()
            assert np.sqrt(np.mean(audio ** 2)) > 0.005, name
    # songs differ in tempo, key or scale
    descriptions = {(i["bpm"], i["key"], i["scale"]) for _, i in songs}
    assert len(descriptions) == 3


def _band_fraction(audio, low, high):
    spectrum = np.abs(np.fft.rfft(audio.mean(0))) ** 2
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / SR)
    return spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum()


def _crest_db(audio, frame_seconds=0.01):
    """Peak-to-median ratio of the 10 ms frame energies: high for percussive signals."""
    mono = audio.mean(0)
    size = int(frame_seconds * SR)
    energy = (mono[: len(mono) // size * size].reshape(-1, size) ** 2).mean(1)
    energy = energy[energy > 0]
    return 10 * np.log10(energy.max() / np.median(energy))


def _high_pass(audio, cutoff):
    spectrum = np.fft.rfft(audio, axis=1)
    spectrum[:, np.fft.rfftfreq(audio.shape[1], 1 / SR) < cutoff] = 0
    return np.fft.irfft(spectrum, n=audio.shape[1], axis=1)


def _average_spectrum(audio):
    frames = audio.mean(0)[: audio.shape[1] // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    spectrum = np.sqrt((np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0))
    return spectrum / np.linalg.norm(spectrum)


def test_stems_are_spectrally_distinct(songs):
    for stems, _ in songs:
        # bass lives below 300 Hz
        assert _band_fraction(stems["bass"], 0, 300) > 0.9
        # vocals: mostly in the voice band, hardly any sub-bass
        assert _band_fraction(stems["vocals"], 150, 4000) > 0.8
        assert _band_fraction(stems["vocals"], 0, 80) < 0.05
        # drums: broadband (hats, snare, crash) and percussive
        assert _band_fraction(stems["drums"], 4000, 8000) > 5 * _band_fraction(stems["other"], 4000, 8000)
        assert _band_fraction(stems["drums"], 4000, 8000) > 5 * _band_fraction(stems["bass"], 4000, 8000)
        # percussive: the 10 ms energy of the drums above 3 kHz (hats, snare, crash) peaks
        # far above its median, much more than the sustained bass
        highs = {name: _high_pass(audio, 3000) for name, audio in stems.items()}
        assert _crest_db(highs["drums"]) > 12
        assert _crest_db(stems["drums"]) > _crest_db(stems["bass"]) + 5
        spectra = {name: _average_spectrum(audio) for name, audio in stems.items()}
        for i, a in enumerate(TARGETS):
            for b in TARGETS[i + 1:]:
                assert spectra[a] @ spectra[b] < 0.97, (a, b)


def _f0_track(x, low_hz, high_hz, frame=1024, hop=80):
    """Autocorrelation pitch per frame, with parabolic interpolation of the peak."""
    values = []
    for start in range(0, len(x) - frame, hop):
        spectrum = np.fft.rfft(x[start:start + frame] * np.hanning(frame), 2 * frame)
        ac = np.fft.irfft(np.abs(spectrum) ** 2)[:frame]
        lo, hi = int(SR / high_hz), int(SR / low_hz)
        k = lo + int(np.argmax(ac[lo:hi]))
        a, b, c = ac[k - 1], ac[k], ac[k + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
        values.append(SR / (k + shift))
    return np.array(values)


def test_vocals_sing_the_notes_with_vibrato(songs):
    for stems, info in songs:
        notes = [n for n in info["vocal_notes"] if n["stop"] < info["seconds"] - 0.2]
        note = max(notes, key=lambda n: n["stop"] - n["start"])
        assert note["stop"] - note["start"] > 0.7  # phrases end on held notes
        target = sm.midi_to_hz(note["midi"])
        # skip the onset (scoop, glide, vibrato fade-in)
        segment = stems["vocals"].mean(0)[int((note["start"] + 0.35) * SR):int(note["stop"] * SR)]
        cents = 1200 * np.log2(_f0_track(segment, target / 1.5, target * 1.5) / target)
        assert abs(np.median(cents)) < 50  # sings the written note
        frames = np.arange(len(cents))
        wobble = cents - np.polyval(np.polyfit(frames, cents, 2), frames)  # minus slow drift
        assert 8 < wobble.std() < 80  # vibrato of tens of cents
        spectrum = np.abs(np.fft.rfft(wobble * np.hanning(len(wobble))))
        rate = np.fft.rfftfreq(len(wobble), 80 / SR)[1 + np.argmax(spectrum[1:])]
        assert 4.0 < rate < 8.0  # at a singer's vibrato rate
        assert len({n["vowel"] for n in info["vocal_notes"]}) >= 3  # vowels change


def test_dataset_layout_exact_mixture_and_determinism(tmp_path):
    folders = sm.generate_dataset(tmp_path / "a", tracks=5, seconds=1.5, seed=4,
                                  sample_rate=8000, progress=False)
    assert [f.relative_to(tmp_path / "a").as_posix() for f in folders] == [
        "train/synth-000", "train/synth-001", "train/synth-002", "train/synth-003", "test/synth-004"]
    for folder in folders:
        audio = {}
        for name in ("mixture",) + TARGETS:
            info = sf.info(str(folder / f"{name}.wav"))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (8000, 2, 12000, "PCM_16")
            audio[name] = sf.read(str(folder / f"{name}.wav"), dtype="int16")[0].astype(np.int32)
        total = sum(audio[s] for s in TARGETS)
        np.testing.assert_array_equal(total, audio["mixture"])  # exact, and nothing clipped
        assert np.abs(audio["mixture"]).max() < 32767
    description = json.loads((tmp_path / "a" / "synth_musdb.json").read_text())
    assert [s["name"] for s in description["songs"]] == [f.name for f in folders]
    assert description["songs"][4]["subset"] == "test" and description["dataset_seed"] == 4
    assert not list((tmp_path / "a").rglob(".*part"))

    again = sm.generate_dataset(tmp_path / "b", tracks=5, seconds=1.5, seed=4, sample_rate=8000,
                                progress=False)
    other_seed = sm.generate_dataset(tmp_path / "c", subsets={"train": 1, "test": 1}, seconds=1.5,
                                     seed=5, sample_rate=8000, progress=False)
    first = (folders[0] / "vocals.wav").read_bytes()
    assert (again[0] / "vocals.wav").read_bytes() == first
    assert (other_seed[0] / "vocals.wav").read_bytes() != first


def test_float_files_and_bad_arguments(tmp_path):
    folders = sm.generate_dataset(tmp_path, subsets={"train": 1, "test": 1}, seconds=1.0,
                                  sample_rate=8000, progress=False, subtype="FLOAT")
    audio = {n: sf.read(str(folders[1] / f"{n}.wav"), dtype="float32")[0] for n in ("mixture",) + TARGETS}
    assert sf.info(str(folders[1] / "mixture.wav")).subtype == "FLOAT"
    total = np.zeros_like(audio["mixture"])
    for name in TARGETS:
        total = total + audio[name]
    np.testing.assert_array_equal(total, audio["mixture"])
    with pytest.raises(D3NetError, match="at least 2 tracks"):
        sm.generate_dataset(tmp_path, tracks=1, progress=False)
    with pytest.raises(D3NetError, match="sample rate"):
        sm.generate_song(0, 1.0, sample_rate=100)
    with pytest.raises(D3NetError, match="positive"):
        sm.generate_song(0, 0.0)
    with pytest.raises(D3NetError, match="subtype"):
        sm.generate_dataset(tmp_path, tracks=2, seconds=0.5, sample_rate=8000, subtype="PCM_24",
                            progress=False)


def test_split_and_song_seeds():
    assert sm.split_counts(10) == {"train": 8, "test": 2}
    assert sm.split_counts(2) == {"train": 1, "test": 1}
    assert sm.split_counts(3) == {"train": 2, "test": 1}
    seeds = {sm.song_seed(0, i) for i in range(100)}
    assert len(seeds) == 100
    assert not seeds & set(range(10_000))  # small seeds (the demo's) are never training songs
