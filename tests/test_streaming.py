"""Separation in blocks: block boundaries invisible, windowed Wiener filter, bounded memory.

A tiny four-target model (random weights, 16-frame patches run 8 per call) over a 3 s song
with a 16-frame Wiener window (4 frames of context each side) and blocks of about three
STFT hops, so that many block, patch-batch and window boundaries are crossed.
"""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from conftest import TINY_MSS
from d3net import models
from d3net import separate as separate_module
from d3net.audio import spectral
from d3net.audio.wiener import wiener
from d3net.configs import TARGETS
from d3net.separate import Separator

RATE = 44100
WINDOW = 16
OPTIONS = dict(wiener_window=WINDOW, batch_size=8, channel_flip=False)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {t: models.create(dict(TINY_MSS, target=t)) for t in TARGETS}


def song(seconds=6.0, rate=RATE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(t)),
                         0.2 * torch.sin(2 * torch.pi * 330 * t + 1.0)])
    return (tones + 0.05 * torch.randn(2, t.shape[0], generator=gen)).float()


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def whole_song_run(tiny_models):
    separator = Separator(tiny_models, **OPTIONS)
    x = song(3.0)
    return separator, x, separator.separate(x, RATE)


def test_file_blocks_are_invisible(whole_song_run, tmp_path):
    separator, x, stems = whole_song_run
    soundfile.write(str(tmp_path / "song.wav"), x.numpy().T, RATE, subtype="FLOAT")
    result = separator.separate_file(tmp_path / "song.wav", tmp_path / "out", bits=32,
                                     block_samples=3001)
    assert list(result.paths) == list(TARGETS)
    for target in TARGETS:
        data, rate = soundfile.read(str(result.paths[target]), dtype="float32", always_2d=True)
        assert rate == RATE and data.shape == (x.shape[1], 2)
        # Same arithmetic whatever the block size, up to float32 rounding in the iSTFT's
        # overlap-add order.
        assert relative(torch.from_numpy(data.T), stems[target]) < 1e-6, target


def test_stream_equals_the_whole_pipeline_with_a_windowed_filter(whole_song_run):
    """Only the Wiener window differs from a whole-song pipeline: rebuild it by hand."""
    separator, x, stems = whole_song_run
    mixture = spectral.stft(x)
    magnitudes = separator.separate_magnitudes(spectral.magnitude(mixture))
    estimates = torch.stack([magnitudes[t] for t in TARGETS])
    frames, context = mixture.shape[-1], WINDOW // 4
    cores = []
    for core in range(0, frames, WINDOW):
        start, end = max(0, core - context), min(frames, core + WINDOW + context)
        filtered = wiener(estimates[..., start:end], mixture[..., start:end])
        cores.append(filtered[..., core - start:min(core + WINDOW, frames) - start])
    expected = spectral.istft(torch.cat(cores, dim=-1), length=x.shape[1])
    assert frames > 6 * WINDOW  # several windows
    for i, target in enumerate(TARGETS):
        assert relative(stems[target], expected[i]) < 1e-5, target
    # and the windows matter: a whole-song filter gives another result
    whole = spectral.istft(wiener(estimates, mixture), length=x.shape[1])
    assert relative(stems["vocals"], whole[0]) > 1e-3
    total = torch.stack([stems[t] for t in TARGETS]).sum(0)
    assert relative(total, x) < 1e-5


def test_a_window_longer_than_the_song_is_the_whole_song(tiny_models):
    x = song(1.0)
    options = dict(OPTIONS, wiener_window=10_000)
    windowed = Separator(tiny_models, **options).separate(x, RATE)
    whole = Separator(tiny_models, **dict(options, wiener_window=None)).separate(x, RATE)
    for target in TARGETS:
        assert relative(windowed[target], whole[target]) < 1e-6


def test_official_compat_filters_the_whole_song(tiny_models):
    assert Separator(tiny_models, compat="official").wiener_window is None
    assert Separator(tiny_models).wiener_window == separate_module.WIENER_WINDOW
    with pytest.raises(separate_module.D3NetError, match="wiener_window"):
        Separator(tiny_models, wiener_window=0)


class Gain(nn.Module):
    """A stand-in network: a fixed fraction of the input magnitude."""

    def __init__(self, target, gain, patch=16):
        super().__init__()
        self.gain = gain
        self.config = SimpleNamespace(patch_frames=patch, out_shift=patch // 2, task="mss",
                                      target=target)

    def forward(self, x):
        return x * self.gain


def held_frames(seconds, monkeypatch, block):
    """The most STFT frames any buffer of the pipeline held at once."""
    most = [0]
    append = separate_module._Frames.append

    def spy(self, frames):
        append(self, frames)
        if self.data is not None:
            most[0] = max(most[0], self.data.shape[-1])

    monkeypatch.setattr(separate_module._Frames, "append", spy)
    stand_ins = {t: Gain(t, g) for t, g in zip(TARGETS, (0.4, 0.3, 0.2, 0.1))}
    separator = Separator(stand_ins, wiener_window=WINDOW)
    x = song(seconds)
    parts = list(separator._stream(x.split(block, dim=1), 2, x.shape[1], RATE, False))
    assert sum(p["vocals"].shape[1] for p in parts) == x.shape[1]
    return most[0]


def test_memory_does_not_grow_with_the_song(monkeypatch):
    short = held_frames(10.0, monkeypatch, block=5000)
    long = held_frames(40.0, monkeypatch, block=5000)
    assert long == short
    # window + context on both sides + one block of frames + one patch
    assert short <= WINDOW + 2 * (WINDOW // 4) + 5000 // 1024 + 1 + 16


def test_progress_counts_every_batch(tiny_models, monkeypatch):
    counted = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            counted.append((self.total, self.n))

        def update(self, n=1):
            self.n += n

    monkeypatch.setattr(separate_module, "tqdm", Bar)
    Separator(tiny_models, progress=True, channel_flip=True,
              batch_size=4).separate(song(1.0), RATE)
    (total, done), = counted
    frames = spectral.num_frames(RATE)
    patches = (frames + 16 - frames % 16) // 8
    assert total == done == 4 * -(-patches // 2)  # two patches and their flipped copies


def test_separate_file_names_the_unreadable_input(tiny_models, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(separate_module.D3NetError, match="bad.wav: not a readable audio"):
        Separator(tiny_models).separate_file(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_separate_file_warns_about_rescaled_stems(tmp_path):
    loud = {t: Gain(t, g) for t, g in zip(TARGETS, (1.5, 0.1, 0.1, 0.1))}
    x = song(1.0) * 3  # peaks ~1.7 in the mixture
    soundfile.write(str(tmp_path / "loud.wav"), x.numpy().T, RATE, subtype="FLOAT")
    separator = Separator(loud, wiener_iterations=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = separator.separate_file(tmp_path / "loud.wav", tmp_path / "out")
    messages = [str(w.message) for w in caught
                if issubclass(w.category, separate_module.OutputLevelWarning)]
    assert len(messages) == 1 and "loud.wav" in messages[0] and "vocals peaks at" in messages[0]
    assert result.levels.gain < 1.0
    vocals, _ = soundfile.read(str(result.paths["vocals"]), always_2d=True)
    drums, _ = soundfile.read(str(result.paths["drums"]), always_2d=True)
    assert np.abs(vocals).max() <= 1.0
    # one gain for every stem: their ratio is the models' ratio (1.5 / 0.1)
    inner = slice(5000, 30000)
    assert np.allclose(vocals[inner], 15 * drums[inner], atol=15 * 2 / 2 ** 15)
