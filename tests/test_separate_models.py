"""A model carries its signal processing: Separator uses each model's rate, FFT, hop,
channels; refuses a set that disagrees; reads the old names of the patch size."""
import json

import pytest
import torch
from torch import nn

from conftest import TINY_MSS
from d3net import configs, models
from d3net.audio import io, spectral
from d3net.demo import bundled_model_dir
from d3net.errors import D3NetError
from d3net.configs import TARGETS
from d3net.separate import Separator

# 16 kHz, 2048-point FFT (1025 bins), hop 256: nothing like the official 44.1 kHz / 4096 / 1024.
OTHER_SIGNAL = dict(TINY_MSS, sample_rate=16000, fft_size=2048, hop_size=256, valid_bins=1024)


class Recorder(nn.Module):
    """Wraps a network and keeps every input batch it sees."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config, self.inputs = net, net.config, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def tone(samples, rate):
    t = torch.arange(samples) / rate
    return torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t),
                        0.2 * torch.sin(2 * torch.pi * 660 * t + 1)]).float()


def test_a_model_is_run_at_its_own_rate_fft_and_hop():
    torch.manual_seed(0)
    vocals = Recorder(models.create(dict(OTHER_SIGNAL, target="vocals")).eval())
    separator = Separator({"vocals": vocals}, channel_flip=False, wiener_window=None)
    assert separator.sample_rate == 16000
    x = tone(22050, 44100)                                   # 0.5 s at 44.1 kHz
    stems = separator.separate(x, 44100)
    assert stems["vocals"].shape == x.shape
    at_16k = io.resample(x, 44100, 16000)
    expected = spectral.magnitude(spectral.stft(at_16k, n_fft=2048, hop=256))
    assert expected.shape[-2:] == (1025, 8000 // 256 + 1)
    first = vocals.inputs[0][0]                               # (2, 1025, 16): 8 zero frames
    assert first.shape == (2, 1025, 16)
    assert torch.equal(first[..., :8], torch.zeros(2, 1025, 8))
    assert torch.allclose(first[..., 8:], expected[..., :8], rtol=1e-5, atol=1e-5)
    frames_seen = sum(batch.shape[0] for batch in vocals.inputs)
    assert frames_seen == (expected.shape[-1] + 16 - expected.shape[-1] % 16) // 8


def test_a_set_of_models_that_disagree_is_refused():
    torch.manual_seed(0)
    official = models.create(dict(TINY_MSS, target="vocals"))
    other = models.create(dict(OTHER_SIGNAL, target="drums"))
    with pytest.raises(D3NetError) as error:
        Separator({"vocals": official, "drums": other})
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "disagree" in message
    assert "vocals 44100 Hz, FFT 4096, hop 1024" in message
    assert "drums 16000 Hz, FFT 2048, hop 256" in message


def test_a_mono_model_filters_both_channels():
    torch.manual_seed(0)
    mono = {t: models.create(dict(TINY_MSS, target=t, audio_channels=1)) for t in TARGETS}
    separator = Separator(mono, batch_size=8)
    assert not separator.channel_flip  # nothing to swap
    x = tone(20000, 44100)
    stems = separator.separate(x, 44100)
    assert stems["vocals"].shape == x.shape
    total = torch.stack(list(stems.values())).sum(0)
    assert (total - x).abs().max() < 1e-5 * x.abs().max()
    assert separator.separate(x[:1], 44100)["bass"].shape == (1, 20000)


def test_patch_size_has_one_name_and_old_names_still_load(tmp_path):
    old = {k: v for k, v in TINY_MSS.items() if k != "patch_frames"}
    config = configs.from_dict(dict(old, test_patch_len=32, patch_length=48))
    assert config.patch_frames == 32 and not hasattr(config, "test_patch_len")
    assert not hasattr(config, "patch_length")
    assert configs.preset("mss-bass").patch_frames == 384
    # The bundled demo files were written with the old names in their metadata.
    metadata = models.read_metadata(bundled_model_dir() / "bass.safetensors")
    assert "test_patch_len" in json.loads(metadata["config"])
    assert models.load(bundled_model_dir() / "bass.safetensors").config.patch_frames == 256
    # A model saved today uses the new name only.
    models.save(models.create(dict(TINY_MSS)), tmp_path / "vocals.safetensors")
    saved = json.loads(models.read_metadata(tmp_path / "vocals.safetensors")["config"])
    assert saved["patch_frames"] == 16 and "test_patch_len" not in saved


def test_official_yaml_patch_names(official):
    bass = configs.load_config(official / "mss" / "configs" / "bass.yaml")
    assert (bass.patch_frames, bass.out_shift) == (384, 192)
