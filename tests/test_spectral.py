"""STFT / iSTFT against an explicit numpy framing, reconstruction, fixture frame count."""

import numpy as np
import pytest
import torch

from d3net.audio import spectral


def numpy_stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Reference: zero-pad n_fft//2 each side, frame, periodic Hann, rfft. (bins, frames)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="constant")
    frames = 1 + (len(padded) - n_fft) // hop
    columns = [np.fft.rfft(window * padded[i * hop:i * hop + n_fft]) for i in range(frames)]
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("samples", [5000, 8192, 44100])
def test_stft_matches_numpy_framing(samples):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, samples))
    ours = spectral.stft(torch.from_numpy(x), n_fft=1024, hop=256).numpy()
    for ch in range(2):
        ref = numpy_stft(x[ch], 1024, 256)
        assert ours[ch].shape == ref.shape
        assert np.abs(ours[ch] - ref).max() / np.abs(ref).max() < 1e-12


def test_default_parameters_and_shape():
    x = torch.randn(3, 2, 20000)
    spec = spectral.stft(x)
    assert spec.is_complex()
    assert spec.shape == (3, 2, spectral.N_FFT // 2 + 1, spectral.num_frames(20000))
    assert spectral.magnitude(spec).shape == spec.shape
    assert not spectral.magnitude(spec).is_complex()


def test_zero_padding_not_reflect():
    # A signal that is non-zero only at its very start: with zero padding the first frame
    # sees only the window's second half; reflect padding would mirror the signal.
    x = torch.zeros(8192, dtype=torch.float64)
    x[:10] = 1.0
    ours = spectral.stft(x, n_fft=1024, hop=256).numpy()
    ref = numpy_stft(x.numpy(), 1024, 256)
    assert np.allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("samples", [4096, 10001, 30000])
def test_perfect_reconstruction_with_length(samples):
    x = torch.randn(2, samples, dtype=torch.float64)
    y = spectral.istft(spectral.stft(x), length=samples)
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-10


def test_istft_without_length_is_librosa_length():
    x = torch.randn(2, 10001)
    spec = spectral.stft(x)
    assert spectral.istft(spec).shape[-1] == (spec.shape[-1] - 1) * spectral.HOP


def test_with_phase():
    ref = spectral.stft(torch.randn(2, 8000, dtype=torch.float64))
    mags = torch.rand(3, *ref.shape, dtype=torch.float64)
    est = spectral.with_phase(mags, ref)
    assert est.shape == (3, *ref.shape)
    assert torch.allclose(est.abs(), mags)
    assert torch.allclose(est[0] / est[0].abs(), ref / ref.abs())


def test_fixture_mixture_has_259_frames(official):
    mixture = torch.from_numpy(np.load(official / "mss" / "e2e_mixture.npy").T.copy())
    spec = spectral.stft(mixture)
    assert spec.shape == (2, 2049, 259)


@pytest.mark.parametrize("samples,block", [
    (samples, block) for samples in (1, 5, 1023, 1024, 1025, 4096, 10001)
    for block in (1, 700, 5000, 100000) if block > 1 or samples < 5000])
def test_streams_equal_the_whole_transforms(samples, block):
    x = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
    whole = spectral.stft(x)
    stream = spectral.StftStream(samples)
    frames = [stream.push(part) for part in x.split(block, dim=-1)] + [stream.finish()]
    assert torch.equal(torch.cat(frames, dim=-1), whole)

    inverse = spectral.IstftStream(samples)
    step = max(1, block // 1000)
    parts = [inverse.push(part) for part in whole.split(step, dim=-1)] + [inverse.finish()]
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape == x.shape
    assert (streamed - spectral.istft(whole, length=samples)).abs().max() < 1e-6


def test_streams_with_other_fft_sizes():
    x = torch.randn(3, 9000, dtype=torch.float64)
    stream = spectral.StftStream(9000, n_fft=512, hop=128)
    spec = torch.cat([stream.push(x[:, :4000]), stream.push(x[:, 4000:]), stream.finish()], -1)
    assert torch.allclose(spec, spectral.stft(x, n_fft=512, hop=128), rtol=0, atol=1e-10)
    inverse = spectral.IstftStream(9000, n_fft=512, hop=128)
    y = torch.cat([inverse.push(spec[..., :30]), inverse.push(spec[..., 30:]),
                   inverse.finish()], -1)
    assert (y - x).abs().max() < 1e-10


def test_streams_refuse_too_much():
    stream = spectral.StftStream(10)
    with pytest.raises(ValueError, match="announced"):
        stream.push(torch.zeros(11))
    inverse = spectral.IstftStream(10)
    with pytest.raises(ValueError, match="frames"):
        inverse.finish()
