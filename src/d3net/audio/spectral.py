"""STFT and inverse STFT: the only module that knows the spectrogram parameters.

The official D3Net inference computes its STFT with librosa's defaults (librosa 0.11):
a periodic Hann window of ``n_fft`` samples, centred frames and *zero* padding of
``n_fft // 2`` samples on both sides. ``torch.stft`` defaults to reflect padding, so
``pad_mode="constant"`` is set explicitly here to give the same frames.

Layout: complex spectrograms are ``(..., bins, frames)`` with ``bins = n_fft // 2 + 1``
(frames last, as ``torch.stft`` returns them; open-unmix convention).
"""
from __future__ import annotations

import torch
from torch import Tensor

N_FFT = 4096
HOP = 1024
SAMPLE_RATE = 44100


def _window(n_fft: int, like: Tensor) -> Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    return torch.hann_window(n_fft, periodic=True, dtype=dtype, device=like.device)


def stft(waveform: Tensor, n_fft: int = N_FFT, hop: int = HOP) -> Tensor:
    """Centred, zero-padded STFT with a periodic Hann window.

    Args:
        waveform: ``(..., samples)`` real tensor.
        n_fft: window and FFT size.
        hop: hop size in samples.

    Returns:
        Complex tensor ``(..., bins, frames)``, ``bins = n_fft // 2 + 1`` and
        ``frames = samples // hop + 1``.
    """
    if not waveform.dtype.is_floating_point:
        waveform = waveform.float()
    leading = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1])
    spec = torch.stft(
        flat, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=_window(n_fft, flat),
        center=True, pad_mode="constant", normalized=False, onesided=True,
        return_complex=True)
    return spec.reshape(*leading, *spec.shape[-2:])


def istft(spec: Tensor, length: int | None = None, n_fft: int = N_FFT,
          hop: int = HOP) -> Tensor:
    """Inverse of :func:`stft` (weighted overlap-add with the same window).

    Args:
        spec: complex ``(..., bins, frames)``.
        length: number of output samples. With the input's length the result equals the
            input up to rounding; without it the output has ``(frames - 1) * hop``
            samples, as librosa's ``istft`` (and so the official inference) gives.

    Returns:
        Real tensor ``(..., samples)``.
    """
    leading = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    wave = torch.istft(
        flat, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=_window(n_fft, flat),
        center=True, normalized=False, onesided=True, length=length)
    return wave.reshape(*leading, wave.shape[-1])


def magnitude(spec: Tensor) -> Tensor:
    """Magnitude ``|spec|`` of a complex spectrogram, same shape, real dtype."""
    return spec.abs()


def phase(spec: Tensor) -> Tensor:
    """Phase angle of a complex spectrogram in radians, same shape."""
    return torch.angle(spec)


def with_phase(magnitudes: Tensor, reference: Tensor) -> Tensor:
    """Complex spectrogram with ``magnitudes`` and the phase of ``reference``.

    ``magnitudes`` broadcasts against ``reference`` (e.g. ``(sources, channels, bins,
    frames)`` against ``(channels, bins, frames)``). Where ``reference`` is exactly zero
    the phase is taken as 0, as ``numpy.angle`` does.
    """
    return torch.polar(magnitudes.to(reference.real.dtype), torch.angle(reference))


def num_frames(samples: int, hop: int = HOP) -> int:
    """Number of STFT frames :func:`stft` gives for ``samples`` samples."""
    return samples // hop + 1
