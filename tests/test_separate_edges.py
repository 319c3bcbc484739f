"""Output that must not be silently wrong: very short, quiet and degenerate inputs; stems
above full scale in integer output.

The input cases run a tiny four-target model (random weights, channel flip and Wiener filter
on, as by default): before the fix it gave stems 30-300x louder than any input shorter than
one hop (1024 samples, one STFT frame), the bundled demo model 4-12x.
"""
import numpy as np
import pytest
import soundfile
import torch

from conftest import TINY_MSS
from d3net import models
from d3net.cli import main
from d3net.demo import bundled_model_dir
from d3net.configs import TARGETS
from d3net.separate import Separator


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Separator({t: models.create(dict(TINY_MSS, target=t)) for t in TARGETS},
                     batch_size=8)


def noise(samples, seed=0, peak=0.26, channels=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(channels, samples, generator=gen).clamp(-3, 3)
    return (peak * x / x.abs().max().clamp_min(1e-12)).float()


def check_stems(stems, x, rtol=1e-5, max_peak_ratio=1.5):
    total = torch.stack([stems[t] for t in TARGETS]).sum(0)
    peak = x.abs().max()
    assert (total - x).abs().max() <= rtol * peak, "stems do not add up to the input"
    for target in TARGETS:
        assert stems[target].shape == x.shape
        # A stem may exceed the mixture where sources cancel, but not by much.
        assert stems[target].abs().max() <= max_peak_ratio * peak, target


@pytest.mark.parametrize("samples", [1, 2, 100, 1023, 1024, 1025, 2047, 2048, 4095, 4096,
                                     10000])
def test_any_length_gives_stems_that_add_up(tiny, samples):
    x = noise(samples, seed=samples)
    check_stems(tiny.separate(x, 44100), x)


def test_the_demo_model_on_a_clip_shorter_than_a_hop():
    demo = Separator.from_dir(bundled_model_dir(), batch_size=2)
    x = noise(300, seed=3)
    check_stems(demo.separate(x, 44100), x)


def test_a_quiet_song_adds_up(tiny):
    # -100 dBFS: the official filter's absolute determinant test (|det| >= 1e-10) failed
    # in most bins and the stems summed 15 dB away from the input.
    x = noise(20000, peak=1e-5)
    check_stems(tiny.separate(x, 44100), x)


def test_one_sample_at_96khz(tiny):
    # One sample at 96 kHz is no sample at 44.1 kHz: it used to end in a reshape error.
    for samples in (1, 2):
        x = noise(samples, seed=samples)
        stems = tiny.separate(x, 96000)
        for target in TARGETS:
            assert stems[target].shape == (2, samples)
            assert torch.isfinite(stems[target]).all()
            assert stems[target].abs().max() <= 1.5 * x.abs().max()


@pytest.mark.parametrize("case", ["identical channels", "silent right", "dc offset"])
def test_degenerate_channels_add_up(tiny, case):
    x = noise(30000, seed=5)
    if case == "identical channels":
        x = x[:1].expand(2, -1).clone()
    elif case == "silent right":
        x[1] = 0
    else:
        x = 0.5 * x + 0.3
    check_stems(tiny.separate(x, 44100), x)


# ----------------------------------------------------------------------------- full scale

@pytest.fixture(scope="module")
def loud_model(tmp_path_factory):
    """Tiny models whose vocals estimate a constant magnitude of 50 in every bin: with no
    Wiener filter the vocals stem then peaks far above full scale."""
    folder = tmp_path_factory.mktemp("loud")
    torch.manual_seed(0)
    for target in TARGETS:
        model = models.create(dict(TINY_MSS, target=target))
        if target == "vocals":
            with torch.no_grad():
                model.decode_scale.zero_()
                model.decode_bias.fill_(50.0)
        models.save(model, folder / f"{target}.safetensors")
    return folder


def run_cli(song, out, model, *extra):
    return main(["separate", str(song), "-o", str(out), "--model", str(model),
                 "--wiener-iterations", "0", "-q", *map(str, extra)])


@pytest.fixture(scope="module")
def song_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("song") / "song.wav"
    soundfile.write(str(path), noise(8000, peak=0.5).numpy().T, 44100, subtype="FLOAT")
    return path


def test_cli_rescales_and_says_so(loud_model, song_file, tmp_path, capsys):
    assert run_cli(song_file, tmp_path / "float", loud_model, "--bits", "32") == 0
    assert "warning" not in capsys.readouterr().err  # float output keeps any level
    float_vocals, _ = soundfile.read(str(tmp_path / "float" / "song" / "vocals.wav"))
    float_drums, _ = soundfile.read(str(tmp_path / "float" / "song" / "drums.wav"))
    peak = np.abs(float_vocals).max()
    assert peak > 1.5

    assert run_cli(song_file, tmp_path / "pcm", loud_model) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "song.wav" in err[0] and "vocals peaks at" in err[0]
    assert f"{20 * np.log10(peak):+.1f} dBFS" in err[0] and "scaled by" in err[0]
    vocals, _ = soundfile.read(str(tmp_path / "pcm" / "song" / "vocals.wav"))
    drums, _ = soundfile.read(str(tmp_path / "pcm" / "song" / "drums.wav"))
    assert np.abs(vocals).max() > 0.999
    assert np.allclose(vocals, float_vocals / peak, atol=2 / 2 ** 15)
    assert np.allclose(drums, float_drums / peak, atol=2 / 2 ** 15)  # same gain


def test_cli_clamp_counts_the_clipped_samples(loud_model, song_file, tmp_path, capsys):
    assert run_cli(song_file, tmp_path / "out", loud_model, "--clip-mode", "clamp",
                   "--bits", "24") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clipped at full scale: vocals" in err[0], err
    vocals, _ = soundfile.read(str(tmp_path / "out" / "song" / "vocals.wav"))
    assert np.abs(vocals).max() <= 1.0 and (np.abs(vocals) > 0.9999).sum() > 10
