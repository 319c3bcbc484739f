"""Reading, writing and resampling audio, whole or in blocks.

Waveforms are float32 tensors ``(channels, samples)``. WAV, FLAC, OGG and AIFF go through
soundfile; compressed and container formats (mp3, m4a, mp4, MUSDB's ``.stem.mp4``) are
decoded by an ``ffmpeg`` subprocess when ``ffmpeg`` is on the PATH. Every problem a user
can fix is raised as a one-line :class:`~d3net.errors.D3NetError` naming the file.

Long files are read (:class:`AudioReader`), resampled (:class:`ResampleStream`) and
written (:class:`StemWriter`) in blocks so that memory does not grow with the song.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from d3net.errors import D3NetError
from d3net.utils import WRITE_ERRORS, PathLike, atomic_path, write_error

#: Suffixes decoded by ffmpeg first (soundfile is only a fallback for these).
FFMPEG_SUFFIXES = {".mp3", ".m4a", ".mp4", ".aac", ".opus", ".wma", ".webm", ".mkv", ".mov"}
#: Output formats and the bit depths each accepts (soundfile subtypes).
SAVE_SUBTYPES = {
    "wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"},
    "flac": {16: "PCM_16", 24: "PCM_24"},
}
#: What :class:`StemWriter` does with stems above full scale in 16/24-bit output:
#: ``rescale`` every stem of the song by one gain so the loudest peak fits (the stems keep
#: their balance and still add up to the song, scaled), ``clamp`` clip the samples.
CLIP_MODES = ("rescale", "clamp")
#: Samples per block when reading and writing in blocks (about 3 s at 44.1 kHz).
BLOCK_SAMPLES = 2 ** 17


def ffmpeg_available() -> bool:
    """Whether an ``ffmpeg`` binary is on the PATH."""
    return shutil.which("ffmpeg") is not None


def load(path: PathLike) -> tuple[Tensor, int]:
    """Read a whole audio file.

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
    with AudioReader(path) as reader:
        return torch.cat(list(reader.blocks()), dim=-1), reader.sample_rate


def probe(path: PathLike) -> None:
    """Check that ``path`` opens as audio with samples, cheaply (ffmpeg formats decode
    their first second only), so that a bad input is refused before any long work.

    Raises:
        D3NetError: as :func:`load` on opening.
    """
    with AudioReader(path, decode_seconds=1.0):
        pass


class AudioReader:
    """An audio file read in blocks: ``with AudioReader(path) as r: for b in r.blocks(): ...``.

    Attributes (after opening): ``sample_rate`` (Hz), ``channels``, ``frames`` (samples per
    channel). :data:`FFMPEG_SUFFIXES` are decoded by ffmpeg into a temporary float WAV
    first (10.6 MB per stereo minute; their decoders cannot seek and the length is only
    known after decoding), removed on closing.

    Raises:
        D3NetError: on opening, as :func:`load`; while reading, NaN or infinite samples or
            a file shorter than its header says.
    """

    def __init__(self, path: PathLike, decode_seconds: Optional[float] = None):
        self.path = Path(path)
        self._decode_seconds = decode_seconds  # ffmpeg formats: only the first seconds
        self._file: Optional[soundfile.SoundFile] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self.sample_rate = self.channels = self.frames = 0

    def __enter__(self) -> "AudioReader":
        path = self.path
        if not path.exists():
            raise D3NetError(f"{path}: no such file")
        if path.is_dir():
            raise D3NetError(f"{path}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise D3NetError(f"{path}: empty file")
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        file = self._file
        self.sample_rate, self.channels, self.frames = file.samplerate, file.channels, file.frames
        if self.frames == 0 or self.channels == 0:
            self.close()
            raise D3NetError(f"{path}: contains no audio samples (zero length)")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def blocks(self, size: int = BLOCK_SAMPLES) -> Iterator[Tensor]:
        """Float32 ``(channels, <= size)`` blocks from the start, ``frames`` in total."""
        self._file.seek(0)
        read = 0
        while read < self.frames:
            data = self._file.read(min(size, self.frames - read), dtype="float32",
                                   always_2d=True)
            if data.shape[0] == 0:
                raise D3NetError(f"{self.path}: ends after {read} of the {self.frames} "
                                 "samples its header announces (truncated file?)")
            if not np.isfinite(data).all():
                raise D3NetError(f"{self.path}: contains NaN or infinite samples")
            read += data.shape[0]
            yield torch.from_numpy(np.ascontiguousarray(data.T))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _open(self) -> None:
        """Open with the suitable decoders in turn; one-line error naming the file."""
        path = self.path
        prefers_ffmpeg = path.suffix.lower() in FFMPEG_SUFFIXES
        openers = [self._open_soundfile]
        if ffmpeg_available():
            openers = [self._open_ffmpeg, self._open_soundfile] if prefers_ffmpeg else [
                self._open_soundfile, self._open_ffmpeg]
        reasons = []
        for opener in openers:
            try:
                opener(path)
                return
            except _DecodeFailed as failure:
                reasons.append(str(failure))
        if prefers_ffmpeg and not ffmpeg_available():
            raise D3NetError(
                f"{path}: reading {path.suffix} files needs ffmpeg, which is not installed "
                "(install it, e.g. `apt-get install ffmpeg`, or convert the file to WAV/FLAC)")
        detail = reasons[0] if reasons else "unknown format"
        raise D3NetError(f"{path}: not a readable audio file ({detail})")

    def _open_soundfile(self, path: Path) -> None:
        try:
            self._file = soundfile.SoundFile(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
            raise _DecodeFailed(_one_line(str(error)) or type(error).__name__) from None

    def _open_ffmpeg(self, path: Path) -> None:
        """Decode the first audio stream with ffmpeg into a temporary float WAV."""
        self._tmp = tempfile.TemporaryDirectory(prefix="d3net-ffmpeg-")
        wav = Path(self._tmp.name) / "decoded.wav"
        # rf64 lifts the 4 GB WAV limit (songs over ~3.3 hours in stereo float)
        command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                   "-vn", "-c:a", "pcm_f32le", "-rf64", "auto", "-f", "wav", str(wav)]
        if self._decode_seconds is not None:
            command[-3:-3] = ["-t", f"{self._decode_seconds:g}"]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise _DecodeFailed(f"ffmpeg could not be run: {error}") from None
        if result.returncode != 0 or not wav.exists():
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise _DecodeFailed("ffmpeg: " + (_one_line(lines[-1]) if lines else "failed"))
        self._open_soundfile(wav)


class _DecodeFailed(Exception):
    pass


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


def resampled_length(samples: int, from_rate: int, to_rate: int) -> int:
    """Samples :func:`resample` and :class:`ResampleStream` give for ``samples`` samples."""
    if from_rate == to_rate:
        return samples
    return int(samples * to_rate / from_rate + 0.5)


class ResampleStream:
    """:func:`resample` of a signal pushed in blocks (soxr's streaming resampler, HQ).

    The concatenated outputs of :meth:`push` and :meth:`finish` equal :func:`resample` of
    the whole signal exactly, :func:`resampled_length` samples in total. The identity when
    the rates are equal.
    """

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        if from_rate <= 0 or to_rate <= 0:
            raise D3NetError(f"invalid sample rate: {from_rate} -> {to_rate} Hz")
        self.channels = channels
        self._soxr = None if from_rate == to_rate else soxr.ResampleStream(
            from_rate, to_rate, channels, dtype="float32", quality="HQ")

    def push(self, block: Tensor) -> Tensor:
        """Resample float32 ``(channels, samples)``; returns what is ready."""
        return self._process(block, last=False)

    def finish(self) -> Tensor:
        """Flush the resampler: the last samples ``(channels, samples)``."""
        return self._process(torch.zeros(self.channels, 0), last=True)

    def _process(self, block: Tensor, last: bool) -> Tensor:
        if self._soxr is None:
            return block
        data = np.ascontiguousarray(block.detach().to("cpu", torch.float32).numpy().T)
        out = self._soxr.resample_chunk(data, last=last)
        return torch.from_numpy(np.ascontiguousarray(out.reshape(-1, self.channels).T))


@dataclass
class StemLevels:
    """What :class:`StemWriter` did about samples above full scale (1.0).

    ``peaks``: stem -> largest absolute sample (before any gain); ``clipped``: stem ->
    samples clipped (``clamp``); ``gain``: the gain applied to every stem (``rescale``; 1.0
    when nothing was above full scale); ``samples``: samples per stem, channels included.
    """

    peaks: Dict[str, float] = field(default_factory=dict)
    clipped: Dict[str, int] = field(default_factory=dict)
    gain: float = 1.0
    samples: int = 0
    bits: int = 16

    @property
    def over(self) -> List[str]:
        """Stems with samples above full scale."""
        return [name for name, peak in self.peaks.items() if peak > 1.0]

    def message(self) -> Optional[str]:
        """One line describing the change, or ``None`` when nothing changed (nothing above
        full scale, or float output, which keeps any level)."""
        over = self.over
        if not over or self.bits == 32:
            return None
        peaks = ", ".join(f"{name} peaks at {20 * np.log10(self.peaks[name]):+.1f} dBFS"
                          for name in over)
        if self.gain != 1.0:
            return (f"{peaks}: every stem scaled by {20 * np.log10(self.gain):.1f} dB to fit "
                    f"{self.bits}-bit PCM (--clip-mode clamp clips instead, --bits 32 keeps "
                    "the level)")
        clipped = ", ".join(
            f"{name} {self.clipped.get(name, 0):,} samples "
            f"({100 * self.clipped.get(name, 0) / max(self.samples, 1):.2g}%)" for name in over)
        return (f"{peaks}; clipped at full scale: {clipped} (--clip-mode rescale keeps the "
                "waveform, --bits 32 the level)")


class StemWriter:
    """The stems of one song streamed to ``folder/<name>.<format>``, atomically.

    Use as a context manager: :meth:`write` blocks as they come, :meth:`close` (or leaving
    the ``with`` block normally) finishes the files; an exception leaves every existing
    output untouched and removes the temporary files.

    Float output (``bits=32``) goes straight to each file's temporary twin. PCM output
    needs the song's peak before the first sample is written (``rescale``), so the stems
    are first streamed to temporary float WAVs beside the outputs (10.6 MB per stereo
    minute and stem), then converted in blocks.

    Args:
        folder: output folder (created; removed again on failure if it was new).
        names, sample_rate, channels: the stems, in order; their rate (Hz) and channels.
        format: ``"wav"`` or ``"flac"``; bits: 16, 24 or 32 (float WAV).
        clip_mode: one of :data:`CLIP_MODES` (PCM only; float output keeps any level).

    Raises:
        D3NetError: an unknown format, clip mode or a bit depth the format lacks.
    """

    def __init__(self, folder: PathLike, names: Sequence[str], sample_rate: int,
                 channels: int, format: str = "wav", bits: int = 16,
                 clip_mode: str = "rescale"):
        check_output_format(format, bits, clip_mode)
        self.folder = Path(folder)
        self.names = list(names)
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self.format, self.bits, self.clip_mode = format, bits, clip_mode
        self.levels = StemLevels(peaks={name: 0.0 for name in self.names}, bits=bits)
        self._stack: Optional[contextlib.ExitStack] = None
        self._files: Dict[str, soundfile.SoundFile] = {}
        self._floats: Dict[str, Path] = {}

    def path(self, name: str) -> Path:
        """Where stem ``name`` ends up."""
        return self.folder / f"{name}.{self.format}"

    def __enter__(self) -> "StemWriter":
        self._stack = contextlib.ExitStack()
        try:
            created = [self.folder, *self.folder.parents]
            created = created[:next(i for i, f in enumerate(created) if f.is_dir())]
            self.folder.mkdir(parents=True, exist_ok=True)
            for folder in reversed(created):  # leave no empty folder behind on failure
                self._stack.callback(_remove_if_empty, folder)
            for name in self.names:
                if self.bits == 32:
                    tmp, container = self._stack.enter_context(atomic_path(self.path(name))), "WAV"
                else:
                    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".float.wav.part",
                                               dir=self.folder)
                    os.close(fd)
                    tmp = self._floats[name] = Path(tmp)
                    self._stack.callback(tmp.unlink, missing_ok=True)
                    container = "RF64"
                self._files[name] = soundfile.SoundFile(
                    str(tmp), "w", self.sample_rate, self.channels, subtype="FLOAT",
                    format=container)
                self._stack.callback(self._files[name].close)
        except BaseException:
            self._stack.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, blocks: Dict[str, Tensor]) -> None:
        """Append ``(channels, samples)`` to each stem (all stems the same length)."""
        for name, block in blocks.items():
            data = np.ascontiguousarray(block.detach().to("cpu", torch.float32).numpy().T)
            if data.size:
                self.levels.peaks[name] = max(self.levels.peaks[name], float(np.abs(data).max()))
            try:
                self._files[name].write(data)
            except WRITE_ERRORS as error:
                raise write_error(self.path(name), error) from None
        if blocks:
            self.levels.samples += next(iter(blocks.values())).numel()

    def close(self) -> StemLevels:
        """Finish every file (PCM: convert with the gain or clipping) and rename it."""
        stack, self._stack = self._stack, None
        with stack:
            for name, file in self._files.items():
                try:
                    file.close()
                except WRITE_ERRORS as error:
                    raise write_error(self.path(name), error) from None
            if self.bits != 32:
                self._convert()
        return self.levels

    def __exit__(self, kind, error, trace) -> None:
        if self._stack is None:
            return
        if kind is None:
            self.close()
        else:
            stack, self._stack = self._stack, None
            stack.__exit__(kind, error, trace)

    def _convert(self) -> None:
        peak = max(self.levels.peaks.values(), default=0.0)
        if self.clip_mode == "rescale" and peak > 1.0:
            self.levels.gain = 1.0 / peak
        subtype = SAVE_SUBTYPES[self.format][self.bits]
        with contextlib.ExitStack() as renames:  # every file renamed once all are written
            for name in self.names:
                tmp = renames.enter_context(atomic_path(self.path(name)))
                clipped = 0
                with soundfile.SoundFile(str(self._floats[name])) as source, \
                        soundfile.SoundFile(str(tmp), "w", self.sample_rate, self.channels,
                                            subtype=subtype,
                                            format=self.format.upper()) as target:
                    for data in source.blocks(BLOCK_SAMPLES, dtype="float32", always_2d=True):
                        if self.levels.gain != 1.0:
                            data = data * np.float32(self.levels.gain)
                        over = np.abs(data) > 1.0
                        if over.any():
                            clipped += int(over.sum())
                            data = np.clip(data, -1.0, 1.0)
                        target.write(data)
                self._floats[name].unlink(missing_ok=True)
                self.levels.clipped[name] = clipped


def check_output_format(format: str, bits: int, clip_mode: str = "rescale") -> None:
    """Raise a one-line :class:`D3NetError` for an output the writers cannot make."""
    if format not in SAVE_SUBTYPES:
        raise D3NetError(f"cannot write '{format}' files; use one of "
                         + ", ".join(SAVE_SUBTYPES))
    if bits not in SAVE_SUBTYPES[format]:
        allowed = " or ".join(str(b) for b in SAVE_SUBTYPES[format])
        raise D3NetError(f"{format.upper()} supports {allowed} bits, not {bits}"
                         + (" (use wav for 32-bit float)" if bits == 32 else ""))
    if clip_mode not in CLIP_MODES:
        raise D3NetError(f"unknown clip mode {clip_mode!r}; expected one of "
                         + ", ".join(CLIP_MODES))


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


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
