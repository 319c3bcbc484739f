"""Reading, writing and resampling audio.

Waveforms are float32 tensors ``(channels, samples)``. WAV, FLAC, OGG and AIFF go through
soundfile; compressed and container formats (mp3, m4a, mp4, MUSDB's ``.stem.mp4``) are
decoded by an ``ffmpeg`` subprocess when ``ffmpeg`` is on the PATH. Every problem a user
can fix is raised as a one-line :class:`~d3net.errors.D3NetError` naming the file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from d3net.errors import D3NetError
from d3net.utils import atomic_path

PathLike = Union[str, os.PathLike]

#: Suffixes decoded by ffmpeg first (soundfile is only a fallback for these).
FFMPEG_SUFFIXES = {".mp3", ".m4a", ".mp4", ".aac", ".opus", ".wma", ".webm", ".mkv", ".mov"}
#: Output formats and the bit depths each accepts (soundfile subtypes).
SAVE_SUBTYPES = {
    "wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"},
    "flac": {16: "PCM_16", 24: "PCM_24"},
}


def ffmpeg_available() -> bool:
    """Whether an ``ffmpeg`` binary is on the PATH."""
    return shutil.which("ffmpeg") is not None


def load(path: PathLike) -> tuple[Tensor, int]:
    """Read an audio file.

    Args:
        path: any format soundfile reads (wav, flac, ogg, aiff, ...), or with ffmpeg
            installed mp3, m4a, mp4 and MUSDB ``.stem.mp4`` (the first audio stream, i.e.
            the mixture).

    Returns:
        ``(waveform, sample_rate)`` with waveform float32 ``(channels, samples)``.

    Raises:
        D3NetError: missing, empty, unreadable or non-audio file; audio with no samples;
            NaN or infinite samples; a format that needs ffmpeg when it is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise D3NetError(f"{path}: no such file")
    if path.is_dir():
        raise D3NetError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise D3NetError(f"{path}: empty file")

    data, sample_rate = _decode(path)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise D3NetError(f"{path}: contains no audio samples (zero length)")
    if not np.isfinite(data).all():
        raise D3NetError(f"{path}: contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32)), int(sample_rate)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """``(samples, channels)`` float32 array and rate, trying the suitable decoders."""
    prefers_ffmpeg = path.suffix.lower() in FFMPEG_SUFFIXES
    decoders = [_read_soundfile]
    if ffmpeg_available():
        decoders = [_read_ffmpeg, _read_soundfile] if prefers_ffmpeg else [
            _read_soundfile, _read_ffmpeg]
    reasons = []
    for decoder in decoders:
        try:
            return decoder(path)
        except _DecodeFailed as failure:
            reasons.append(str(failure))
    if prefers_ffmpeg and not ffmpeg_available():
        raise D3NetError(
            f"{path}: reading {path.suffix} files needs ffmpeg, which is not installed "
            "(install it, e.g. `apt-get install ffmpeg`, or convert the file to WAV/FLAC)")
    detail = reasons[0] if reasons else "unknown format"
    raise D3NetError(f"{path}: not a readable audio file ({detail})")


class _DecodeFailed(Exception):
    pass


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise _DecodeFailed(_one_line(str(error)) or type(error).__name__) from None
    return data, rate


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg into a temporary float WAV."""
    with tempfile.TemporaryDirectory(prefix="d3net-ffmpeg-") as tmp:
        wav = Path(tmp) / "decoded.wav"
        command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                   "-vn", "-c:a", "pcm_f32le", "-f", "wav", str(wav)]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise _DecodeFailed(f"ffmpeg could not be run: {error}") from None
        if result.returncode != 0 or not wav.exists():
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise _DecodeFailed("ffmpeg: " + (_one_line(lines[-1]) if lines else "failed"))
        return _read_soundfile(wav)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def resample(waveform: Tensor, from_rate: int, to_rate: int) -> Tensor:
    """Resample ``(channels, samples)`` with soxr (high quality); identity when equal.

    The output has ``round(samples * to_rate / from_rate)`` samples (soxr's length), on
    the input's device and dtype (float32 unless the input is float64).
    """
    if from_rate <= 0 or to_rate <= 0:
        raise D3NetError(f"invalid sample rate: {from_rate} -> {to_rate} Hz")
    if from_rate == to_rate:
        return waveform
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    data = waveform.detach().to("cpu", dtype).numpy().T
    out = soxr.resample(np.ascontiguousarray(data), from_rate, to_rate, quality="HQ")
    out = np.ascontiguousarray(np.asarray(out).reshape(-1, waveform.shape[0]).T)
    return torch.from_numpy(out).to(waveform.device)


def save(path: PathLike, waveform: Tensor, sample_rate: int, bits: int = 16) -> None:
    """Write ``(channels, samples)`` (or ``(samples,)`` mono) atomically.

    Args:
        path: ``.wav`` or ``.flac``; the suffix picks the format.
        bits: 16 or 24 (integer PCM, samples clipped to [-1, 1]) or 32 (32-bit float WAV,
            not clipped). FLAC accepts 16 and 24 only.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in SAVE_SUBTYPES:
        raise D3NetError(
            f"{path}: cannot write '{path.suffix}' files; use one of "
            + ", ".join("." + name for name in SAVE_SUBTYPES))
    if bits not in SAVE_SUBTYPES[fmt]:
        allowed = " or ".join(str(b) for b in SAVE_SUBTYPES[fmt])
        raise D3NetError(f"{path}: {fmt.upper()} supports {allowed} bits, not {bits}")
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise D3NetError(
            f"{path}: expected a waveform (channels, samples), got shape {tuple(waveform.shape)}")
    data = waveform.detach().to("cpu", torch.float32).numpy().T
    if bits != 32:
        data = np.clip(data, -1.0, 1.0)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), np.ascontiguousarray(data), int(sample_rate),
                        subtype=SAVE_SUBTYPES[fmt][bits], format=fmt.upper())
