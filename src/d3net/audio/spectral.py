"""STFT and inverse STFT: the only module that knows the spectrogram parameters.

The official D3Net inference computes its STFT with librosa's defaults (librosa 0.11):
a periodic Hann window of ``n_fft`` samples, centred frames and *zero* padding of
``n_fft // 2`` samples on both sides. ``torch.stft`` defaults to reflect padding, so
``pad_mode="constant"`` is set explicitly here to give the same frames.

Layout: complex spectrograms are ``(..., bins, frames)`` with ``bins = n_fft // 2 + 1``
(frames last, as ``torch.stft`` returns them; open-unmix convention).

:class:`StftStream` and :class:`IstftStream` compute the same transforms on a signal that
arrives in blocks, up to float rounding. The constants below are the official D3Net values
(44.1 kHz, 4096 / 1024); a separation model carries its own in its config
(``MSSConfig.sample_rate / fft_size / hop_size``).
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
        n_fft, hop: window and FFT size, hop size, in samples.

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


class StftStream:
    """:func:`stft` of a ``total``-sample signal pushed in blocks of any size.

    Frame ``t`` covers samples ``[t * hop - n_fft // 2, t * hop + n_fft // 2)`` of the
    zero-padded signal, so it is emitted as soon as its last sample has arrived; the last
    ``n_fft // 2`` samples' frames come out of :meth:`finish`. Holds at most one window
    plus one block of samples.

    Example::

        stream = StftStream(total=signal.shape[-1])
        frames = [stream.push(block) for block in signal.split(44100, dim=-1)]
        frames.append(stream.finish())                  # torch.cat(frames, -1) == stft(signal)
    """

    def __init__(self, total: int, n_fft: int = N_FFT, hop: int = HOP):
        self.n_fft, self.hop = n_fft, hop
        self.frames = num_frames(total, hop)
        self.total = total
        self._buffer: Tensor | None = None   # padded samples from frame `_next`'s start
        self._next = 0
        self._received = 0

    def push(self, block: Tensor) -> Tensor:
        """Add ``(..., samples)``; return the completed frames ``(..., bins, new_frames)``."""
        if not block.dtype.is_floating_point:
            block = block.float()
        if self._buffer is None:
            self._buffer = block.new_zeros(*block.shape[:-1], self.n_fft // 2)
        self._received += block.shape[-1]
        if self._received > self.total:
            raise ValueError(f"StftStream: {self._received} samples pushed, {self.total} announced")
        self._buffer = torch.cat([self._buffer, block], dim=-1)
        return self._emit()

    def finish(self) -> Tensor:
        """Pad the end with zeros and return the remaining frames."""
        if self._buffer is None:
            raise ValueError("StftStream: finish() before any push()")
        if self._received != self.total:
            raise ValueError(f"StftStream: {self._received} samples pushed, {self.total} announced")
        self._buffer = torch.nn.functional.pad(self._buffer, (0, self.n_fft // 2))
        return self._emit()

    def _emit(self) -> Tensor:
        buffer = self._buffer
        available = (buffer.shape[-1] - self.n_fft) // self.hop + 1 if \
            buffer.shape[-1] >= self.n_fft else 0
        count = max(0, min(available, self.frames - self._next))
        if count == 0:
            return buffer.new_zeros(*buffer.shape[:-1], self.n_fft // 2 + 1, 0,
                                    dtype=buffer.dtype.to_complex())
        used = (count - 1) * self.hop + self.n_fft
        windows = buffer[..., :used].unfold(-1, self.n_fft, self.hop)   # (..., frames, n_fft)
        spec = torch.fft.rfft(windows * _window(self.n_fft, buffer), dim=-1).transpose(-1, -2)
        self._buffer = buffer[..., count * self.hop:]
        self._next += count
        return spec.contiguous()


class IstftStream:
    """:func:`istft` (with ``length=total``) of frames pushed in blocks of any size.

    Each frame is inverse-transformed, windowed and overlap-added; samples are divided by
    the summed squared window and emitted once no later frame reaches them. The last
    samples come out of :meth:`finish`. Holds one window of samples between pushes.
    """

    def __init__(self, total: int, n_fft: int = N_FFT, hop: int = HOP):
        self.n_fft, self.hop, self.total = n_fft, hop, total
        self.frames = num_frames(total, hop)
        self._signal: Tensor | None = None     # overlap-add from padded sample `_start`
        self._envelope: Tensor | None = None
        self._start = 0          # padded index of the first sample held
        self._next = 0           # next frame index
        self._emitted = 0        # output samples emitted so far

    def push(self, spec: Tensor) -> Tensor:
        """Add complex ``(..., bins, new_frames)``; return finished samples ``(..., n)``."""
        count = spec.shape[-1]
        if self._next + count > self.frames:
            raise ValueError(f"IstftStream: more than the {self.frames} frames of "
                             f"{self.total} samples pushed")
        window = _window(self.n_fft, spec)
        if self._signal is None:
            self._signal = window.new_zeros(*spec.shape[:-2], self.n_fft)
            self._envelope = window.new_zeros(self.n_fft)
        if count:
            frames = torch.fft.irfft(spec, n=self.n_fft, dim=-2) * window[:, None]
            end = (self._next + count - 1) * self.hop + self.n_fft - self._start
            grow = end - self._signal.shape[-1]
            if grow > 0:
                self._signal = torch.nn.functional.pad(self._signal, (0, grow))
                self._envelope = torch.nn.functional.pad(self._envelope, (0, grow))
            offset = self._next * self.hop - self._start
            self._signal[..., offset:offset + (count - 1) * self.hop + self.n_fft] += \
                _overlap_add(frames, self.hop)
            squared = window.square()[:, None].expand(-1, count)
            self._envelope[offset:offset + (count - 1) * self.hop + self.n_fft] += \
                _overlap_add(squared, self.hop)
            self._next += count
        done = self._next * self.hop if self._next < self.frames else None
        return self._emit(done)

    def finish(self) -> Tensor:
        """Return the remaining samples (all frames must have been pushed)."""
        if self._next != self.frames:
            raise ValueError(f"IstftStream: {self._next} of {self.frames} frames pushed")
        return self._emit(None)

    def _emit(self, done: int | None) -> Tensor:
        """Emit output samples before padded index ``done`` (``None``: all)."""
        first = self.n_fft // 2 + self._emitted               # padded index of next output
        last = self.n_fft // 2 + self.total
        stop = last if done is None else min(done, last)
        if stop <= first:
            return self._signal[..., :0]
        a, b = first - self._start, stop - self._start
        envelope = self._envelope[a:b]
        out = self._signal[..., a:b] / torch.where(envelope > 1e-11, envelope,
                                                   torch.ones_like(envelope))
        self._emitted += b - a
        self._signal = self._signal[..., b:]
        self._envelope = self._envelope[b:]
        self._start = stop
        return out


def _overlap_add(frames: Tensor, hop: int) -> Tensor:
    """Sum ``(..., n_fft, count)`` frames placed every ``hop`` samples -> ``(..., length)``."""
    n_fft, count = frames.shape[-2], frames.shape[-1]
    length = (count - 1) * hop + n_fft
    leading = frames.shape[:-2]
    flat = frames.reshape(-1, n_fft, count)
    out = torch.nn.functional.fold(flat, output_size=(1, length), kernel_size=(1, n_fft),
                                   stride=(1, hop))
    return out.reshape(*leading, length)
