"""Music source separation with one D3Net per target: waveform in, stems out.

The pipeline follows the official D3Net inference:

1. resample to the models' rate (soxr) when needed; mono is duplicated to stereo;
2. STFT (:mod:`d3net.audio.spectral`) and its magnitude;
3. per target, the network over overlapping patches of ``patch_frames`` frames shifted by
   ``out_shift`` (half a patch), each patch also run with the stereo channels swapped and
   the two results averaged ("channel flip"), overlap-added without a window;
4. the estimates get the mixture phase and go through the multichannel Wiener filter
   (:mod:`d3net.audio.wiener`), with a residual source when the models do not cover all
   of vocals, drums, bass and other;
5. iSTFT to the input's length, resampling back to the input's rate and channel count.

Sample rate, FFT size, hop and channel count come from each model's config
(``MSSConfig.sample_rate / fft_size / hop_size / audio_channels``; the official models:
44.1 kHz, 4096, 1024, stereo); models that disagree are refused. A mono model sees the
channels' mean magnitude, as in training, and its estimate filters every channel.

Streaming: a song passes through every stage in blocks, so memory is bounded by the
models, the patches in flight and one Wiener window, whatever the song's length (OpenVINO's
activation buffers are released whenever the next target's network takes over). The block
size does not change the result beyond float rounding, except that the Wiener statistics
cover one window of :data:`WIENER_WINDOW` frames plus a quarter window of context on each
side (``wiener_window=None``: the whole song, as the official filter; memory then grows
with the song).

Unlike the official code, patches run in batches (the flipped copies in the same batch),
and the overlap-add divides each frame by the number of patches that really cover it. The
official code divides every frame by ``patch_frames / out_shift``, which halves the last
frames of a song covered by one patch only; ``compat="official"`` reproduces that exactly,
with the official Wiener filter over the whole song and PyTorch's native float32 CPU
kernels (:func:`d3net.utils.exact_float32`).

The networks run through a backend (:mod:`d3net.backends`: PyTorch or OpenVINO, float32
or bfloat16). ``mode="fast"`` trades a little quality for about 4x fewer network runs: no
channel flip and patches that do not overlap (``overlap=0``; benchmarks/RESULTS.md).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from d3net import backends
from d3net.audio import io, spectral
from d3net.audio.wiener import COMPAT_MODES, wiener
from d3net.configs import TARGETS
from d3net.errors import D3NetError
from d3net.models import load_separation
from d3net.utils import PathLike

MODES = ("default", "fast")
# fast mode: patches side by side (measured in benchmarks/RESULTS.md, scripts/eval_fast_mode.py)
FAST_OVERLAP = 0.0
#: Frames per Wiener window (default mode): about 12 s at 44.1 kHz / hop 1024. Each
#: window's statistics also cover a quarter window on each side.
WIENER_WINDOW = 512
#: Samples per block that a song is read and separated in (about 12 s at 44.1 kHz). Each
#: network runs every patch a block completes before the next target's network takes
#: over its activation memory, so the switches stay rare (measured in
#: benchmarks/RESULTS.md: no measurable cost at this size, ~8% at 2**17).
BLOCK_SAMPLES = 2 ** 19


@dataclass
class SeparatedFile:
    """What :meth:`Separator.separate_file` wrote: stem -> file, the PCM output's
    :class:`d3net.audio.io.StemLevels`, and the input's (and every stem's) rate, channels
    and samples."""

    paths: Dict[str, Path]
    levels: io.StemLevels
    sample_rate: int
    channels: int
    samples: int


class Separator(nn.Module):
    """Separates songs with one magnitude network per target.

    Args:
        models: target name -> network mapping a magnitude ``(batch, channels, bins,
            frames)`` to the same shape; each has a ``.config`` with ``patch_frames``,
            ``out_shift`` and its signal processing (``sample_rate``, ``fft_size``,
            ``hop_size``, ``audio_channels``, on which all must agree; default: the
            official 44.1 kHz / 4096 / 1024 / stereo).
        wiener_iterations: 0 = magnitudes with the mixture phase, 1 = the official
            multichannel Wiener filter, more = EM iterations.
        channel_flip: also run every patch with the stereo channels swapped and average
            (default: on, off in fast mode; always off for mono models).
        compat: ``None`` (default) or ``"official"`` (see the module docstring).
        precision: ``"auto"``, ``"float32"`` or ``"bfloat16"``; see
            :func:`d3net.backends.resolve_precision`.
        backend: ``"auto"``, ``"torch"`` or ``"openvino"``; see :mod:`d3net.backends`.
        mode: ``"default"`` (the official inference: channel flip, half-patch overlap) or
            ``"fast"`` (no flip, ``overlap=0``: about 4x fewer network runs).
        overlap: fraction of a patch shared with the next one (default: the model's
            ``1 - out_shift / patch_frames``, 0.5 for the official models; 0 in fast
            mode); the resulting shift must divide the patch (0, 0.5, 0.75, ...).
        cache_dir: where OpenVINO conversions are cached (default ``$D3NET_HOME``).
        batch_size: network inputs per call (flipped copies included), bounding the
            network's memory. Default: 1 on CPU (oneDNN is fastest one patch at a time,
            benchmarks/RESULTS.md), 16 elsewhere.
        device: where everything runs (default: where the models are; the separator
            moves them there and, on CPU unless ``compat="official"``, to channels-last).
        progress: show a progress bar over the patches.
        wiener_window: frames filtered with shared statistics, or ``None`` for the whole
            song. Default ``"auto"``: :data:`WIENER_WINDOW`, or the whole song with
            ``compat="official"``.

    Raises:
        D3NetError: no models, unknown options, a model without a patch config, or models
            that disagree on sample rate, FFT size, hop or channel count.

    Example::

        separator = Separator.from_pretrained("official-mss", device="cuda")
        stems = separator.separate(waveform, 44100)   # {"vocals": (channels, samples), ...}
        separator.separate_file("song.mp3", "separated/song")     # long songs: in blocks
    """

    def __init__(self, models: Mapping[str, nn.Module], wiener_iterations: int = 1,
                 channel_flip: Optional[bool] = None, compat: Optional[str] = None,
                 batch_size: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, progress: bool = False,
                 precision: str = "auto", backend: str = "auto", mode: str = "default",
                 overlap: Optional[float] = None,
                 cache_dir: Optional[PathLike] = None,
                 wiener_window: Union[int, None, str] = "auto"):
        super().__init__()
        if not models:
            raise D3NetError("a Separator needs at least one target model")
        if compat not in COMPAT_MODES:
            raise D3NetError(f"unknown compat mode {compat!r}; expected 'official' or none")
        if wiener_iterations < 0:
            raise D3NetError(f"wiener_iterations must be >= 0, got {wiener_iterations}")
        if batch_size is not None and batch_size < 1:
            raise D3NetError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in MODES:
            raise D3NetError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if overlap is None and mode == "fast":
            overlap = FAST_OVERLAP
        if overlap is not None and not 0 <= overlap < 1:
            raise D3NetError(f"overlap must be in [0, 1), got {overlap}")
        if compat == "official" and (mode != "default" or overlap is not None):
            raise D3NetError("compat 'official' runs the official patching; it cannot be "
                             "combined with fast mode or another overlap")
        self.overlap = None if overlap is None else float(overlap)
        if wiener_window == "auto":
            wiener_window = None if compat == "official" else WIENER_WINDOW
        if wiener_window is not None and (isinstance(wiener_window, str)
                                          or int(wiener_window) < 1):
            raise D3NetError(f"wiener_window must be a number of frames >= 1 or None, got "
                             f"{wiener_window!r}")
        for target, model in models.items():
            patch, shift = self._patch_shift(target, model)
            if patch % shift:
                raise D3NetError(f"model {target}: patch_frames {patch} is not a multiple "
                                 f"of the patch shift {shift} (choose another overlap)")
        signals = {target: _signal(model) for target, model in models.items()}
        if len(set(signals.values())) > 1:
            raise D3NetError("the models disagree on their signal processing: " + "; ".join(
                f"{t} {s.describe()}" for t, s in signals.items()))
        self.signal = next(iter(signals.values()))
        self.models = nn.ModuleDict(dict(models))
        self.wiener_iterations = int(wiener_iterations)
        flip = (mode != "fast") if channel_flip is None else bool(channel_flip)
        self.channel_flip = flip and self.signal.channels == 2
        self.compat = compat
        self.wiener_window = None if wiener_window is None else int(wiener_window)
        self._batch_size = None if batch_size is None else int(batch_size)
        self.progress = bool(progress)
        if device is None:
            first = next(iter(self.models.parameters()), None)
            device = first.device if first is not None else "cpu"
        self._device = torch.device(device)
        self.to(self._device)
        self.eval()
        self.precision = backends.resolve_precision(precision, self._device, compat)
        self.backend = backends.resolve_backend(backend, self._device, compat,
                                                list(self.models.values()))
        self._runners = {model: backends.create_runner(
            model, self.backend, self.precision, compat=compat, cache_dir=cache_dir,
            progress=self.progress) for model in self.models.values()}

    @property
    def device(self) -> torch.device:
        """Where the networks run (follows ``.to(...)``)."""
        first = next(iter(self.models.parameters()), None)
        return first.device if first is not None else self._device

    @property
    def sample_rate(self) -> int:
        """The models' sample rate in Hz (songs are resampled to it and back)."""
        return self.signal.sample_rate

    @property
    def batch_size(self) -> int:
        """Network inputs per call (flipped copies included)."""
        if self._batch_size is not None:
            return self._batch_size
        return 1 if self.device.type == "cpu" else 16

    @property
    def targets(self) -> list[str]:
        """The targets this separator estimates, in order."""
        return list(self.models.keys())

    @property
    def needs_residual(self) -> bool:
        """Whether the Wiener filter gets a residual source (some of the four missing)."""
        return not set(TARGETS) <= set(self.targets)

    @classmethod
    def from_pretrained(cls, model: PathLike = "official-mss",
                        targets: Optional[Sequence[str]] = None,
                        device: Union[str, torch.device, None] = None, *,
                        download_progress: bool = True, **options) -> "Separator":
        """A separator for any separation model spec (:mod:`d3net.models.loading`).

        Args:
            model: a weight name (``"official-mss"``, the default: Sony's weights, fetched
                and cached on first use; ``"demo"``: the small bundled model), a separation
                model folder or training run folder, one model file, or official ``.h5``.
            targets: restrict to these targets (default: all the model provides).
            device: where to run.
            download_progress: show what is downloaded, with a progress bar (weight
                names fetched for the first time).
            **options: the other :class:`Separator` options.

        Raises:
            D3NetError: see :func:`d3net.models.load_separation`.
        """
        models = load_separation(model, targets=targets, device=device,
                                 progress=download_progress)
        return cls(models, device=device, **options)

    @classmethod
    def from_dir(cls, path: PathLike, device: Union[str, torch.device, None] = None,
                 targets: Optional[Sequence[str]] = None, **options) -> "Separator":
        """Alias of :meth:`from_pretrained` (kept for existing code): ``path`` may be any
        separation model spec."""
        return cls.from_pretrained(path, targets=targets, device=device, **options)

    def forward(self, waveform: Tensor, sample_rate: Optional[int] = None) -> Dict[str, Tensor]:
        """Same as :meth:`separate` (``sample_rate`` defaults to the models' rate)."""
        return self.separate(waveform, self.sample_rate if sample_rate is None else sample_rate)

    def separate(self, waveform: Tensor, sample_rate: int,
                 accompaniment: bool = False) -> Dict[str, Tensor]:
        """Separate a song held in memory.

        Args:
            waveform: ``(channels, samples)`` with 1 or 2 channels (or ``(samples,)``).
            sample_rate: the waveform's rate in Hz; any rate (resampled to the models'
                rate inside).
            accompaniment: also return ``"accompaniment"``: everything but the vocals,
                i.e. drums + bass + other when all four are estimated; with a vocals-only
                model, the residual.

        Returns:
            target -> float32 ``(channels, samples)`` at the input's rate, length, channel
            count and device. With the Wiener filter the stems add up to the input (as the
            models' rate carries it: at other rates, up to the resampling round trip).

        Raises:
            D3NetError: not a mono/stereo float waveform, no samples, NaN/inf samples,
                a bad sample rate, or ``accompaniment`` without a vocals model.
        """
        waveform = _check_waveform(waveform, sample_rate)
        channels, length = waveform.shape
        parts: Dict[str, List[Tensor]] = {}
        blocks = waveform.detach().float().cpu().split(BLOCK_SAMPLES, dim=-1)
        for outputs in self._stream(blocks, channels, length, int(sample_rate), accompaniment):
            for name, block in outputs.items():
                parts.setdefault(name, []).append(block)
        return {name: torch.cat(blocks, dim=-1).to(waveform.device)
                for name, blocks in parts.items()}

    def separate_file(self, path: PathLike, folder: PathLike,
                      accompaniment: bool = False, format: str = "wav", bits: int = 16,
                      clip_mode: str = "rescale",
                      block_samples: int = BLOCK_SAMPLES) -> SeparatedFile:
        """Separate an audio file into ``folder/<stem>.<format>``, in blocks.

        Reads, separates and writes ``block_samples`` samples at a time, so memory does not
        grow with the song. Each output appears atomically; on any error no output is
        changed. Stems above full scale in 16/24-bit output are rescaled or clipped
        (:class:`d3net.audio.io.StemWriter`) and an :class:`OutputLevelWarning` says which
        stem and by how much.

        Args:
            path: any file :class:`d3net.audio.io.AudioReader` reads (mp3/m4a via ffmpeg).
            folder: output folder (created).
            accompaniment: also write ``accompaniment`` (see :meth:`separate`).
            format: ``"wav"`` or ``"flac"``.
            bits: 16 or 24 (PCM) or 32 (float WAV, any level kept).
            clip_mode: ``"rescale"`` (default: one gain for every stem) or ``"clamp"``.
            block_samples: samples per block at the input's rate.

        Returns:
            A :class:`SeparatedFile`: the written paths and the output levels.

        Raises:
            D3NetError: an unreadable input (naming the file), a bad output format, or as
                :meth:`separate`.
        """
        io.check_output_format(format, bits, clip_mode)
        if block_samples < 1:
            raise D3NetError(f"block_samples must be >= 1, got {block_samples}")
        names = self._output_names(accompaniment)
        path = Path(path)
        with io.AudioReader(path) as reader:
            channels, length, rate = reader.channels, reader.frames, reader.sample_rate
            if channels not in (1, 2):
                raise D3NetError(f"{path}: expected mono or stereo audio, got {channels} "
                                 "channels (downmix it to stereo first)")
            with io.StemWriter(folder, names, rate, channels, format=format, bits=bits,
                               clip_mode=clip_mode) as writer:
                for outputs in self._stream(reader.blocks(block_samples), channels, length,
                                            rate, accompaniment):
                    writer.write(outputs)
                levels = writer.close()
        message = levels.message()
        if message:
            warnings.warn(f"{path}: {message}", OutputLevelWarning, stacklevel=2)
        return SeparatedFile({name: writer.path(name) for name in names}, levels, rate,
                             channels, length)

    def _output_names(self, accompaniment: bool) -> List[str]:
        if accompaniment and "vocals" not in self.targets:
            raise D3NetError("the accompaniment needs a vocals model (it is the mixture "
                             "minus the vocals)")
        return self.targets + (["accompaniment"] if accompaniment else [])

    def _stream(self, blocks: Iterable[Tensor], channels: int, length: int, sample_rate: int,
                accompaniment: bool) -> Iterator[Dict[str, Tensor]]:
        """``length`` samples of float32 ``(channels, n)`` blocks at ``sample_rate`` ->
        ``{name: (channels, n)}`` stem blocks at that rate, ``length`` samples in all."""
        rate = self.sample_rate
        # A song so short that it has no sample at the models' rate is padded with silence
        # (and cropped again): it then gets the one STFT frame every short song gets.
        padded = length
        while io.resampled_length(padded, sample_rate, rate) < 1:
            padded += 1
        song = _Song(self, io.resampled_length(padded, sample_rate, rate),
                     max(channels, self.signal.channels), accompaniment)
        to_model = io.ResampleStream(sample_rate, rate, channels)
        back = {name: io.ResampleStream(rate, sample_rate, song.channels)
                for name in song.names}
        remaining = {name: length for name in song.names}

        def emit(outputs: Dict[str, Tensor], last: bool) -> Dict[str, Tensor]:
            result = {}
            for name, stem in outputs.items():
                stem = back[name].push(stem.float().cpu())
                if last:
                    stem = torch.cat([stem, back[name].finish()], dim=-1)
                    short = remaining[name] - stem.shape[-1]
                    if short > 0:  # resampling may round one sample short
                        stem = torch.nn.functional.pad(stem, (0, short))
                stem = stem[:, :remaining[name]]
                remaining[name] -= stem.shape[-1]
                if channels == 1 and stem.shape[0] != 1:
                    stem = stem.mean(dim=0, keepdim=True)
                result[name] = stem.contiguous()
            return result

        def feed(audio: Tensor) -> Iterator[Dict[str, Tensor]]:
            outputs = song.push(audio.to(self.device))
            if outputs:
                yield emit(outputs, last=False)

        received = 0
        with self._progress_bar(song.total_batches) as song.bar:
            for block in blocks:
                received += block.shape[-1]
                yield from feed(to_model.push(block.float()))
            if received != length:
                raise D3NetError(f"expected {length} samples, got {received}")
            if padded > length:
                yield from feed(to_model.push(torch.zeros(channels, padded - length)))
            yield from feed(to_model.finish())
            yield emit(song.finish(), last=True)

    def _progress_bar(self, batches: int) -> tqdm:
        return tqdm(total=batches, desc="separating", unit="batch", disable=not self.progress,
                    leave=False)

    @torch.inference_mode()
    def separate_magnitudes(self, magnitude: Tensor) -> Dict[str, Tensor]:
        """Run every target's network over a song's magnitude spectrogram.

        This is the official ``model_separate``: zero padding, patches, channel flip,
        overlap-add, normalisation (see the module docstring for ``compat``).

        Args:
            magnitude: ``(channels, bins, frames)`` mixture magnitude, with the models'
                channel count (or stereo for a mono model).

        Returns:
            target -> ``(channels, bins, frames)`` float32 magnitude estimate.
        """
        if magnitude.dim() != 3 or magnitude.shape[0] not in (self.signal.channels, 2):
            raise D3NetError(f"expected a magnitude ({self.signal.channels}, bins, frames), "
                             f"got shape {tuple(magnitude.shape)}")
        magnitude = magnitude.to(self.device, torch.float32)
        frames = magnitude.shape[-1]
        streams = {t: _PatchStream(self, t, frames) for t in self.targets}
        with self._progress_bar(sum(s.groups for s in streams.values())) as bar:
            outputs = {}
            for target, stream in streams.items():
                stream.bar = bar
                outputs[target] = stream.push(magnitude)
            return outputs

    def _patch_shift(self, target: str, model: nn.Module) -> tuple[int, int]:
        """``(patch, shift)`` in frames: the model's, or the shift set by ``overlap``."""
        config = getattr(model, "config", None)
        try:
            patch, shift = int(config.patch_frames), int(config.out_shift)
        except (AttributeError, TypeError, ValueError):
            raise D3NetError(f"model {target}: needs a .config with patch_frames and "
                             "out_shift (is it a music separation model?)") from None
        if patch <= 0 or shift <= 0 or shift > patch:
            raise D3NetError(f"model {target}: invalid patch_frames {patch} / out_shift {shift}")
        if self.overlap is not None:
            shift = max(1, patch - round(self.overlap * patch))
        return patch, shift

    def _run(self, model: nn.Module, batch: Tensor) -> Tensor:
        """Network output ``(patches, 2, bins, patch)`` in float32, averaged with the
        flipped copies."""
        run = self._runners[model]
        inputs = torch.cat([batch, batch.flip(1)]) if self.channel_flip else batch
        out = torch.cat([run(part) for part in inputs.split(self.batch_size)])
        if not self.channel_flip:
            return out
        count = batch.shape[0]
        return (out[:count] + out[count:].flip(1)) * 0.5


class OutputLevelWarning(UserWarning):
    """Stems above full scale were rescaled or clipped to fit integer PCM output."""


@dataclass(frozen=True)
class _Signal:
    """A model's signal processing."""

    sample_rate: int
    n_fft: int
    hop: int
    channels: int

    def describe(self) -> str:
        return (f"{self.sample_rate} Hz, FFT {self.n_fft}, hop {self.hop}, "
                f"{self.channels} channel{'s' if self.channels != 1 else ''}")


def _signal(model: nn.Module) -> _Signal:
    config = getattr(model, "config", None)
    signal = _Signal(int(getattr(config, "sample_rate", spectral.SAMPLE_RATE)),
                     int(getattr(config, "fft_size", spectral.N_FFT)),
                     int(getattr(config, "hop_size", spectral.HOP)),
                     int(getattr(config, "audio_channels", 2)))
    if min(signal.sample_rate, signal.n_fft, signal.hop) < 1 or signal.hop > signal.n_fft \
            or signal.channels not in (1, 2):
        raise D3NetError(f"model {getattr(config, 'target', '?')}: unsupported signal "
                         f"processing ({signal.describe()})")
    return signal


class _Song:
    """One song through STFT, networks, Wiener filter and iSTFT, pushed in blocks.

    Works at the models' rate on ``channels`` channels; ``samples`` in total.
    :meth:`push` returns the stems' samples that are final (``{name: (channels, n)}``,
    possibly empty), :meth:`finish` the rest. Between pushes it holds the mixture STFT and
    the estimates from the current Wiener window's context start, and one STFT and iSTFT
    window of samples.
    """

    def __init__(self, separator: Separator, samples: int, channels: int,
                 accompaniment: bool):
        signal = separator.signal
        self.sep = separator
        self.channels = channels
        self.accompaniment = accompaniment
        self.frames = spectral.num_frames(samples, signal.hop)
        self.stft = spectral.StftStream(samples, signal.n_fft, signal.hop)
        self.istft = spectral.IstftStream(samples, signal.n_fft, signal.hop)
        self.patches = {t: _PatchStream(separator, t, self.frames) for t in separator.targets}
        self.total_batches = sum(stream.groups for stream in self.patches.values())
        self.bar: Optional[tqdm] = None
        self.mixture = _Frames()
        self.estimates = {t: _Frames() for t in separator.targets}
        self.window = separator.wiener_window or self.frames
        self.context = self.window // 4 if separator.wiener_window else 0
        self.next_window = 0
        self.names = separator._output_names(accompaniment)

    @torch.inference_mode()
    def push(self, audio: Tensor) -> Dict[str, Tensor]:
        if audio.shape[0] != self.channels:
            audio = audio.expand(self.channels, -1)
        return self._advance(self.stft.push(audio))

    @torch.inference_mode()
    def finish(self) -> Dict[str, Tensor]:
        outputs = self._advance(self.stft.finish())
        tail = self._stems(self.istft.finish())
        return {name: torch.cat([outputs[name], tail[name]], dim=-1) if name in outputs
                else tail[name] for name in tail}

    def _advance(self, spec: Tensor) -> Dict[str, Tensor]:
        self.mixture.append(spec)
        magnitude = spectral.magnitude(spec)
        for target, stream in self.patches.items():
            stream.bar = self.bar
            self.estimates[target].append(stream.push(magnitude))
        pieces = []
        while self.next_window * self.window < self.frames:
            core = self.next_window * self.window
            core_end = min(core + self.window, self.frames)
            start, end = max(0, core - self.context), min(self.frames, core_end + self.context)
            if min(e.end for e in self.estimates.values()) < end or self.mixture.end < end:
                break
            magnitudes = torch.stack([self.estimates[t].get(start, end) for t in self.sep.targets])
            filtered = wiener(magnitudes, self.mixture.get(start, end),
                              iterations=self.sep.wiener_iterations,
                              residual=self.sep.needs_residual, compat=self.sep.compat)
            pieces.append(self.istft.push(filtered[..., core - start:core_end - start]))
            self.next_window += 1
            keep = max(0, core_end - self.context)
            self.mixture.drop_before(keep)
            for frames in self.estimates.values():
                frames.drop_before(keep)
        if not pieces:
            return {}
        return self._stems(torch.cat(pieces, dim=-1))

    def _stems(self, stems: Tensor) -> Dict[str, Tensor]:
        """``(sources, channels, n)`` -> ``{name: (channels, n)}``."""
        targets = self.sep.targets
        outputs = {t: stems[i] for i, t in enumerate(targets)}
        if self.accompaniment:
            rest = [stems[i] for i, t in enumerate(targets) if t != "vocals"]
            if self.sep.needs_residual:
                rest.append(stems[len(targets)])
            outputs["accompaniment"] = torch.stack(rest).sum(0)
        return outputs


class _Frames:
    """STFT frames ``(..., frames)`` of a song from frame ``start`` to ``end``."""

    def __init__(self):
        self.start = self.end = 0
        self.data: Optional[Tensor] = None

    def append(self, frames: Optional[Tensor]) -> None:
        if frames is None or frames.shape[-1] == 0:
            return
        self.data = frames if self.data is None else torch.cat([self.data, frames], dim=-1)
        self.end += frames.shape[-1]

    def get(self, start: int, stop: int) -> Tensor:
        """Frames ``[start, stop)``; those before frame 0 or after the last frame appended
        (the song's padding) are zeros."""
        if max(start, 0) < self.start:
            raise AssertionError(f"frame {start} was dropped (held from {self.start})")
        lo, hi = max(start, self.start), min(stop, self.end)
        inner = self.data[..., lo - self.start:hi - self.start] if hi > lo else \
            self.data[..., :0]
        if lo == start and hi == stop:
            return inner
        return torch.nn.functional.pad(inner, (lo - start, stop - max(hi, lo)))

    def drop_before(self, frame: int) -> None:
        if self.data is not None and frame > self.start:
            cut = min(frame, self.end) - self.start
            self.data = self.data[..., cut:]
            self.start += cut


class _PatchStream:
    """One target's network over a song's magnitude frames, pushed in blocks.

    The frame bookkeeping is the official overlap-add helper's: the frames are padded with
    ``shift * (scale - 1)`` zeros in front and behind up to a whole number of patches plus
    one more; patches start every ``shift`` frames. Patches run in groups that fill one
    batch (the same groups whatever the block size, so the networks see the same batches);
    a frame's estimate is final once every patch covering it has run. Holds the magnitudes
    from the next pending patch's first frame and the overlap-add sums from the first frame
    not yet emitted.
    """

    def __init__(self, separator: Separator, target: str, frames: int):
        self.sep = separator
        self.model = separator.models[target]
        self.frames = frames
        self.patch, self.shift = separator._patch_shift(target, self.model)
        self.scale = self.patch // self.shift
        self.patches = (frames + self.patch - frames % self.patch) // self.shift
        self.front = self.shift * (self.scale - 1)
        batch = separator.batch_size
        self.group = max(1, batch // 2) if separator.channel_flip else batch
        self.groups = -(-self.patches // self.group)
        self.next_patch = 0
        self.magnitude = _Frames()
        self.output = _Frames()
        self.bar: Optional[tqdm] = None

    def first_frame(self, patch: int) -> int:
        """The song frame where patch ``patch`` starts (negative: in the front padding)."""
        return patch * self.shift - self.front

    def push(self, magnitude: Tensor) -> Optional[Tensor]:
        """Add the next mixture magnitude frames ``(channels, bins, n)``; return the
        estimate frames ``(channels, bins, m)`` that became final (``None``: none)."""
        self.magnitude.append(magnitude)
        ran = False
        while self.next_patch < self.patches:
            last = min(self.next_patch + self.group, self.patches) - 1
            if self.magnitude.end < min(self.frames, self.first_frame(last) + self.patch):
                break
            self._run_group(range(self.next_patch, last + 1))
            self.next_patch = last + 1
            ran = True
        if ran and len(self.sep.models) > 1:
            # the next target's network runs next: hand it this one's activation memory
            self.sep._runners[self.model].release_memory()
        return self._emit()

    def _run_group(self, patches: range) -> None:
        starts = [self.first_frame(p) for p in patches]
        batch = torch.stack([self.magnitude.get(s, s + self.patch) for s in starts])
        channels = batch.shape[1]
        if self.sep.signal.channels == 1:
            batch = batch.mean(dim=1, keepdim=True)
        estimates = self.sep._run(self.model, batch).expand(-1, channels, -1, -1)
        self._add(starts, estimates)
        if self.bar is not None:
            self.bar.update()
        self.magnitude.drop_before(self.first_frame(patches[-1] + 1))

    def _add(self, starts: List[int], estimates: Tensor) -> None:
        """Overlap-add patch outputs into the song's frames ``[0, frames)``."""
        output = self.output
        end = min(self.frames, starts[-1] + self.patch)
        if end > output.end:
            output.append(estimates.new_zeros(*estimates.shape[1:-1], end - output.end))
        for start, estimate in zip(starts, estimates):
            lo, hi = max(start, 0), min(start + self.patch, self.frames)
            if hi > lo:
                output.data[..., lo - output.start:hi - output.start] += \
                    estimate[..., lo - start:hi - start]

    def _emit(self) -> Optional[Tensor]:
        output = self.output
        done = self.frames if self.next_patch >= self.patches else \
            max(0, self.first_frame(self.next_patch))
        start = output.start
        if output.data is None or min(done, output.end) <= start:
            return None
        done = min(done, output.end)
        frames = output.get(start, done)
        output.drop_before(done)
        if self.sep.compat == "official":
            return frames / self.scale
        return frames / self._coverage(start, done, frames.device)

    def _coverage(self, start: int, stop: int, device: torch.device) -> Tensor:
        """How many patches cover each of the song's frames ``[start, stop)``."""
        padded = torch.arange(start, stop, device=device) + self.front
        first = torch.clamp(torch.div(padded - self.patch, self.shift, rounding_mode="floor")
                            + 1, min=0)
        last = torch.clamp(torch.div(padded, self.shift, rounding_mode="floor"),
                           max=self.patches - 1)
        return (last - first + 1).clamp(min=0).float()


def _check_waveform(waveform: Tensor, sample_rate: int) -> Tensor:
    if not isinstance(waveform, Tensor):
        waveform = torch.as_tensor(waveform)
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise D3NetError(f"expected a waveform (channels, samples), got shape "
                         f"{tuple(waveform.shape)}")
    channels, samples = waveform.shape
    if channels not in (1, 2) and samples in (1, 2):
        raise D3NetError(f"expected a waveform (channels, samples), got shape "
                         f"{tuple(waveform.shape)}: transpose it (waveform.T)")
    if channels not in (1, 2):
        raise D3NetError(f"expected mono or stereo audio, got {channels} channels "
                         "(downmix it to stereo first)")
    if samples == 0:
        raise D3NetError("the audio has no samples (zero length)")
    if not int(sample_rate) > 0:
        raise D3NetError(f"invalid sample rate {sample_rate}")
    if not waveform.is_floating_point():
        raise D3NetError(f"expected a floating-point waveform, got {waveform.dtype}")
    if not torch.isfinite(waveform).all():
        raise D3NetError("the audio contains NaN or infinite samples")
    return waveform
