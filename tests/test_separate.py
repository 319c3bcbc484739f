"""Separator with small stand-in networks: patching, overlap-add, flip, formats, errors."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from d3net.audio import io, spectral
from d3net.errors import D3NetError
from d3net.separate import Separator

BINS = spectral.N_FFT // 2 + 1


class StandIn(nn.Module):
    """A 'network' with the separation interface: ``fn`` of a (batch, 2, bins, frames) patch."""

    def __init__(self, fn, patch=256, target="vocals"):
        super().__init__()
        self.fn = fn
        self.config = SimpleNamespace(patch_frames=patch, out_shift=patch // 2, task="mss",
                                      target=target)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.fn(x)


def ones(x):
    return torch.ones_like(x)


def with_context(x):
    """Depends on the whole patch and on the channel order, so patching errors show."""
    weights = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    return x * weights + x.mean(dim=(1, 3), keepdim=True) + 0.01 * torch.arange(
        x.shape[-1], dtype=x.dtype)


def official_overlap_add(mag, fn, patch, shift, flip):
    """Loop transcription of the official helper; mag (channels, bins, frames) numpy."""
    inp = np.transpose(mag, (2, 0, 1))  # (frames, channels, bins) as the official code
    scale = patch // shift
    frames = inp.shape[0]
    zmod = patch - frames % patch
    patches = (frames + zmod) // shift
    padded = np.concatenate([np.zeros((shift * (scale - 1),) + inp.shape[1:], np.float32), inp,
                             np.zeros((zmod + shift * scale,) + inp.shape[1:], np.float32)])
    output = np.zeros((patches * shift + 2 * shift * (scale - 1),) + inp.shape[1:], np.float32)
    for p in range(patches):
        chunk = padded[p * shift:p * shift + patch][None]
        if flip:
            chunk = np.concatenate([chunk, chunk[:, :, ::-1]])
        net_in = torch.from_numpy(np.ascontiguousarray(np.transpose(chunk, (0, 2, 3, 1))))
        out = np.transpose(fn(net_in).numpy(), (0, 3, 1, 2))
        out = (out[0] + out[1, :, ::-1]) * 0.5 if flip else out[0]
        output[p * shift:(p + scale) * shift] += out[:shift * scale]
    output = output[shift * (scale - 1):shift * (scale - 1) + frames] / scale
    return np.transpose(output, (1, 2, 0))


def random_magnitude(frames, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, BINS, frames, generator=gen)


@pytest.mark.parametrize("patch,frames", [(256, 259), (384, 259), (256, 1), (256, 512),
                                          (384, 600)])
@pytest.mark.parametrize("flip", [True, False])
def test_official_mode_matches_the_official_helper(patch, frames, flip):
    mag = random_magnitude(frames)
    sep = Separator({"bass": StandIn(with_context, patch)}, channel_flip=flip,
                    compat="official", batch_size=3)
    ours = sep.separate_magnitudes(mag)["bass"]
    ref = official_overlap_add(mag.numpy(), with_context, patch, patch // 2, flip)
    assert ours.shape == mag.shape
    assert np.abs(ours.numpy() - ref).max() / np.abs(ref).max() < 1e-6


def test_ones_model_default_vs_official():
    # bass patching of the 259-frame fixture: frames 192..258 are covered by one patch.
    mag = random_magnitude(259)
    default = Separator({"bass": StandIn(ones, 384)}).separate_magnitudes(mag)["bass"]
    official = Separator({"bass": StandIn(ones, 384)},
                         compat="official").separate_magnitudes(mag)["bass"]
    assert torch.equal(default, torch.ones_like(default))
    assert torch.equal(official[..., :192], torch.ones_like(official[..., :192]))
    assert torch.equal(official[..., 192:], torch.full_like(official[..., 192:], 0.5))


@pytest.mark.parametrize("patch,frames,single", [(384, 259, range(192, 259)),
                                                 (256, 259, range(0)),
                                                 (256, 400, range(384, 400))])
def test_default_differs_from_official_only_on_single_coverage(patch, frames, single):
    mag = random_magnitude(frames)
    kw = dict(channel_flip=True, batch_size=4)
    default = Separator({"t": StandIn(with_context, patch)}, **kw).separate_magnitudes(mag)["t"]
    official = Separator({"t": StandIn(with_context, patch)}, compat="official",
                         **kw).separate_magnitudes(mag)["t"]
    mask = torch.zeros(frames, dtype=torch.bool)
    mask[list(single)] = True
    assert torch.equal(default[..., ~mask], official[..., ~mask])
    if mask.any():
        assert torch.allclose(official[..., mask] * 2, default[..., mask], rtol=1e-6)


def test_channel_flip_averages_the_swapped_run():
    def per_channel_gain(x):
        return x * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)

    mag = random_magnitude(300)
    flipped = Separator({"t": StandIn(per_channel_gain)}).separate_magnitudes(mag)["t"]
    plain = Separator({"t": StandIn(per_channel_gain)},
                      channel_flip=False).separate_magnitudes(mag)["t"]
    assert torch.allclose(flipped, 2 * mag, rtol=1e-6)
    assert torch.allclose(plain[0], mag[0], rtol=1e-6)
    assert torch.allclose(plain[1], 3 * mag[1], rtol=1e-6)


def test_batching_invariance_and_bounded_batches():
    mag = random_magnitude(1100)  # 10 patches of 256 frames
    one_model, eight_model = StandIn(with_context), StandIn(with_context)
    one = Separator({"t": one_model}, batch_size=1).separate_magnitudes(mag)["t"]
    eight = Separator({"t": eight_model}, batch_size=8).separate_magnitudes(mag)["t"]
    assert torch.allclose(one, eight, rtol=1e-6, atol=1e-6)
    assert one_model.calls == [1] * 20  # each patch and its flipped copy on their own
    assert eight_model.calls == [8, 8, 4]  # four patches and their flipped copies per call
    assert Separator({"t": StandIn(ones)}).batch_size == 1  # CPU default


@pytest.fixture(scope="module")
def small_net_magnitudes():
    """mss-small (random weights) over 100 frames in every arithmetic the separator has."""
    from d3net import models

    torch.manual_seed(0)
    state = models.d3net_mss("vocals", small=True).state_dict()
    mag = random_magnitude(100, seed=3) * 5
    results, separators = {}, {}
    for name, kw in {"float32": {"precision": "float32", "backend": "torch"},
                     "bfloat16": {"precision": "bfloat16", "backend": "torch"},
                     "official": {"compat": "official"}}.items():
        net = models.d3net_mss("vocals", small=True)
        net.load_state_dict(state)
        separators[name] = Separator({"vocals": net}, **kw)
        results[name] = separators[name].separate_magnitudes(mag)["vocals"]
    return results, separators


def test_precisions_on_a_real_network(small_net_magnitudes):
    results, separators = small_net_magnitudes
    reference = results["official"]  # native kernels, default memory layout
    scale = reference.abs().max()
    for name, out in results.items():
        assert out.dtype == torch.float32 and out.shape == reference.shape, name
    assert (results["float32"] - reference).abs().max() / scale < 1e-5
    bf16_error = (results["bfloat16"] - reference).abs().max() / scale
    assert 0 < bf16_error < 3e-2  # autocast really ran, and stayed close
    conv = separators["float32"].models["vocals"].full.stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert separators["official"].models["vocals"].full.stem.weight.is_contiguous()


def four_targets(gain=0.5, patch=256):
    return {t: StandIn(lambda x, g=g: x * g, patch=384 if t == "bass" else patch, target=t)
            for t, g in zip(("vocals", "drums", "bass", "other"), (gain, 0.2, 0.3, 0.1))}


def stereo_clip(samples, rate=44100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate
    clip = torch.stack([0.3 * torch.sin(2 * torch.pi * 220 * t),
                        0.2 * torch.sin(2 * torch.pi * 330 * t)])
    return clip + 0.01 * torch.randn(2, samples, generator=gen)


def test_stems_sum_to_the_mixture():
    x = stereo_clip(30000)
    stems = Separator(four_targets()).separate(x, 44100)
    assert list(stems) == ["vocals", "drums", "bass", "other"]
    for stem in stems.values():
        assert stem.shape == x.shape and stem.dtype == torch.float32
    total = torch.stack(list(stems.values())).sum(0)
    assert (total - x).abs().max() < 1e-5
    # The filter redistributes energy by the models' gains: vocals is the loudest.
    energy = {t: s.square().sum().item() for t, s in stems.items()}
    assert max(energy, key=energy.get) == "vocals"


def test_no_wiener_keeps_the_model_magnitudes():
    x = stereo_clip(20000)
    stems = Separator(four_targets(), wiener_iterations=0).separate(x, 44100)
    assert torch.allclose(stems["vocals"], 0.5 * x, atol=1e-5)


def test_accompaniment_with_four_targets():
    x = stereo_clip(20000)
    stems = Separator(four_targets()).separate(x, 44100, accompaniment=True)
    expected = stems["drums"] + stems["bass"] + stems["other"]
    assert torch.allclose(stems["accompaniment"], expected, atol=1e-6)


def test_vocals_only_model_uses_a_residual():
    x = stereo_clip(20000)
    sep = Separator({"vocals": StandIn(lambda m: 0.25 * m)})
    assert sep.needs_residual
    stems = sep.separate(x, 44100, accompaniment=True)
    assert set(stems) == {"vocals", "accompaniment"}
    # Without the residual, a lone source would get the whole mixture back.
    assert (stems["vocals"] - x).abs().max() > 0.05
    assert (stems["vocals"] + stems["accompaniment"] - x).abs().max() < 1e-5


def test_accompaniment_without_vocals_is_an_error():
    with pytest.raises(D3NetError, match="vocals"):
        Separator({"drums": StandIn(ones)}).separate(stereo_clip(5000), 44100,
                                                     accompaniment=True)


def test_mono_8khz_in_mono_out():
    x = stereo_clip(8000, rate=8000)[:1]
    stems = Separator(four_targets()).separate(x, 8000)
    for stem in stems.values():
        assert stem.shape == (1, 8000)
        assert torch.isfinite(stem).all()
    # The stems add up to the mixture as it comes back from the 44.1 kHz round trip
    # (which drops the noise above the resampler's passband).
    round_trip = io.resample(io.resample(x, 8000, 44100), 44100, 8000)[:, :8000]
    total = torch.stack(list(stems.values())).sum(0)
    assert (total - round_trip).abs().max() < 1e-5
    assert Separator(four_targets()).separate(x[0], 8000)["vocals"].shape == (1, 8000)


def test_96khz_stereo_keeps_length():
    x = stereo_clip(96001, rate=96000)
    stems = Separator(four_targets(), batch_size=2).separate(x, 96000)
    for stem in stems.values():
        assert stem.shape == (2, 96001)


def test_shorter_than_one_frame():
    x = stereo_clip(300)
    stems = Separator(four_targets(), progress=True).separate(x, 44100)
    assert stems["vocals"].shape == (2, 300)
    assert torch.isfinite(stems["vocals"]).all()


def test_silent_input_gives_silent_stems():
    sep = Separator({"vocals": StandIn(lambda m: m + 1.0)}, wiener_iterations=0)
    stems = sep.separate(torch.zeros(2, 10000), 44100, accompaniment=True)
    for stem in stems.values():
        assert torch.equal(stem, torch.zeros(2, 10000))
    # and through the filter (the silent-input shortcut aside), no NaN either
    mags = Separator({"vocals": StandIn(lambda m: m + 1.0)}).separate_magnitudes(
        torch.zeros(2, BINS, 10))
    assert torch.isfinite(mags["vocals"]).all()


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(6, 1000), "6 channels"),
    (torch.full((2, 1000), float("nan")), "NaN"),
    (torch.tensor([[0.0, float("inf")], [0.0, 0.0]]), "NaN or infinite"),
    (torch.zeros(2, 0), "zero length"),
    (torch.zeros(1, 2, 100), "shape"),
    (torch.zeros(1000, 2), r"\(1000, 2\): transpose it"),  # (samples, channels), as files
])
def test_bad_waveforms(bad, match):
    with pytest.raises(D3NetError, match=match):
        Separator(four_targets()).separate(bad, 44100)


def test_bad_options():
    with pytest.raises(D3NetError, match="compat"):
        Separator(four_targets(), compat="nnabla")
    with pytest.raises(D3NetError, match="precision 'float16'"):
        Separator(four_targets(), precision="float16")
    with pytest.raises(D3NetError, match="cannot run in bfloat16"):
        Separator(four_targets(), compat="official", precision="bfloat16")
    with pytest.raises(D3NetError, match="at least one"):
        Separator({})
    with pytest.raises(D3NetError, match="patch_frames"):
        Separator({"vocals": nn.Identity()})
    with pytest.raises(D3NetError, match="sample rate"):
        Separator(four_targets()).separate(stereo_clip(1000), 0)


def test_from_dir_errors(tmp_path):
    with pytest.raises(D3NetError, match="not found"):
        Separator.from_dir(tmp_path / "missing")
    with pytest.raises(D3NetError, match="no separation model"):
        Separator.from_dir(tmp_path)


def test_from_dir_loads_model_files(tmp_path):
    from d3net import models

    for target in ("drums", "vocals"):
        models.save(models.d3net_mss(target, small=True), tmp_path / f"{target}.safetensors")
    sep = Separator.from_dir(tmp_path, wiener_iterations=2, compat="official")
    assert sep.targets == ["vocals", "drums"]
    assert sep.wiener_iterations == 2 and sep.compat == "official" and sep.needs_residual
    assert not any(m.training for m in sep.models.values())
    assert Separator.from_dir(tmp_path, targets=["drums"]).targets == ["drums"]
    assert Separator.from_dir(tmp_path / "vocals.safetensors").targets == ["vocals"]
    with pytest.raises(D3NetError, match="no model for target.*bass"):
        Separator.from_dir(tmp_path, targets=["bass"])


def test_from_dir_rejects_wrong_files(tmp_path, official):
    from d3net import models

    (tmp_path / "vocals.safetensors").write_text("not a model")
    with pytest.raises(D3NetError, match="vocals.safetensors"):
        Separator.from_dir(tmp_path)
    models.save(models.create(str(official / "seg" / "tiny.yaml"), task="seg"),
                tmp_path / "seg.safetensors")
    with pytest.raises(D3NetError, match="not a music separation model"):
        Separator.from_dir(tmp_path / "seg.safetensors")
