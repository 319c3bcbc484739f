"""Music source separation with one D3Net per target: waveform in, stems out.

The pipeline follows the official D3Net inference, top to bottom:

1. resample to 44.1 kHz (soxr) when needed; mono is duplicated to stereo;
2. STFT (:mod:`d3net.audio.spectral`) and its magnitude;
3. per target, the network over overlapping patches of ``test_patch_len`` frames shifted by
   ``out_shift`` (half a patch), each patch also run with the stereo channels swapped and
   the two results averaged ("channel flip"), overlap-added without a window;
4. the estimates get the mixture phase and go through the multichannel Wiener filter
   (:mod:`d3net.audio.wiener`), with a residual source when the models do not cover all
   of vocals, drums, bass and other;
5. iSTFT to the input's length, resampling back to the input's rate and channel count.

Unlike the official code, the patches of a song are run in batches (the flipped copies in
the same batch), and the overlap-add divides each frame by the number of patches that
really cover it. The official code divides every frame by ``test_patch_len / out_shift``,
which halves the last frames of a song covered by one patch only; ``compat="official"``
reproduces that exactly (used by the parity tests).

Speed and precision: the networks run through a backend (:mod:`d3net.backends`):
PyTorch (channels-last on CPU) or OpenVINO (CPU), in float32 or bfloat16 (several times
faster on CPUs with AMX or AVX-512 BF16 and on recent GPUs; magnitudes change by ~1e-3
relative); ``"auto"`` picks the fastest the machine has. ``compat="official"`` keeps
PyTorch's native float32 CPU kernels and layout (:func:`d3net.utils.exact_float32`), whose
accumulation order reproduces the official outputs best (see tests/test_separate_parity.py).
``mode="fast"`` trades a little quality for about 4x fewer network runs: no channel flip
and patches that do not overlap (``overlap=0``; measured in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from d3net import backends
from d3net.audio import io, spectral
from d3net.audio.wiener import wiener
from d3net.errors import D3NetError

TARGETS = ("vocals", "drums", "bass", "other")
COMPAT_MODES = (None, "official")
MODES = ("default", "fast")
# fast mode: no channel flip, patches side by side (see FAST_OVERLAP's measurement in
# benchmarks/RESULTS.md, scripts/eval_fast_mode.py)
FAST_OVERLAP = 0.0


class Separator(nn.Module):
    """Separates songs with one magnitude network per target.

    Args:
        models: target name -> network mapping a magnitude ``(batch, 2, 2049, frames)`` to
            the same shape; each has a ``.config`` with ``test_patch_len`` and
            ``out_shift``.
        wiener_iterations: 0 = magnitudes with the mixture phase, 1 = the official
            multichannel Wiener filter, more = EM iterations.
        channel_flip: also run every patch with the stereo channels swapped and average
            (default: on, off in fast mode).
        compat: ``None`` (default) or ``"official"`` to reproduce the official
            overlap-add normalisation exactly, quirk included, with PyTorch's native
            float32 CPU kernels.
        precision: ``"auto"`` (default: bfloat16 where the hardware computes it natively,
            float32 elsewhere), ``"float32"`` or ``"bfloat16"`` (~1e-3 relative change);
            see :func:`d3net.backends.resolve_precision`.
        backend: ``"auto"`` (default: OpenVINO on CPU when installed, PyTorch otherwise),
            ``"torch"`` or ``"openvino"``; see :mod:`d3net.backends`.
        mode: ``"default"`` (the official inference: channel flip, half-patch overlap) or
            ``"fast"`` (no flip, ``overlap=0``: about 4x fewer network runs).
        overlap: fraction of a patch shared with the next one (default: the model's
            ``1 - out_shift / test_patch_len``, 0.5 for the official models; 0 in fast
            mode); the resulting shift must divide the patch (0, 0.5, 0.75, ...).
        cache_dir: where OpenVINO conversions are cached (default ``$D3NET_HOME``).
        batch_size: network inputs per call (flipped copies included), bounding the
            network's memory whatever the song's length. Default: 1 on CPU (oneDNN runs
            these networks fastest one patch at a time: 2.3 s per patch at batch 1 against
            3.2 s at batch 8, benchmarks/RESULTS.md), 16 elsewhere.
        device: where the networks and the signal processing run (default: where the
            models are).
        progress: show a progress bar over the patches.

    The separator owns its models: it moves them to its device and (on CPU, unless
    ``compat="official"``) to the channels-last memory layout.

    Example::

        separator = Separator.from_pretrained("official-mss", device="cuda")
        stems = separator.separate(waveform, 44100)   # {"vocals": (channels, samples), ...}
    """

    def __init__(self, models: Mapping[str, nn.Module], wiener_iterations: int = 1,
                 channel_flip: Optional[bool] = None, compat: Optional[str] = None,
                 batch_size: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, progress: bool = False,
                 precision: str = "auto", backend: str = "auto", mode: str = "default",
                 overlap: Optional[float] = None,
                 cache_dir: Union[str, os.PathLike, None] = None):
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
        for target, model in models.items():
            patch, shift = self._patch_shift(target, model)
            if patch % shift:
                raise D3NetError(f"model {target}: test_patch_len {patch} is not a multiple "
                                 f"of the patch shift {shift} (choose another overlap)")
        self.models = nn.ModuleDict(dict(models))
        self.mode = mode
        self.wiener_iterations = int(wiener_iterations)
        self.channel_flip = (mode != "fast") if channel_flip is None else bool(channel_flip)
        self.compat = compat
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
    def batch_size(self) -> int:
        """Network inputs per call (flipped copies included)."""
        if self._batch_size is not None:
            return self._batch_size
        return 1 if self.device.type == "cpu" else 16

    @property
    def _patches_per_group(self) -> int:
        return max(1, self.batch_size // 2) if self.channel_flip else self.batch_size

    @property
    def targets(self) -> list[str]:
        """The targets this separator estimates, in order."""
        return list(self.models.keys())

    @property
    def needs_residual(self) -> bool:
        """Whether the Wiener filter gets a residual source (some of the four missing)."""
        return not set(TARGETS) <= set(self.targets)

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike] = "official-mss",
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
        from d3net.models import load_separation

        models = load_separation(model, targets=targets, device=device,
                                 progress=download_progress)
        return cls(models, device=device, **options)

    @classmethod
    def from_dir(cls, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
                 targets: Optional[Sequence[str]] = None, **options) -> "Separator":
        """Alias of :meth:`from_pretrained` (kept for existing code): ``path`` may be any
        separation model spec."""
        return cls.from_pretrained(path, targets=targets, device=device, **options)

    def forward(self, waveform: Tensor, sample_rate: int = spectral.SAMPLE_RATE) -> Dict[str, Tensor]:
        """Same as :meth:`separate`."""
        return self.separate(waveform, sample_rate)

    def separate(self, waveform: Tensor, sample_rate: int,
                 accompaniment: bool = False) -> Dict[str, Tensor]:
        """Separate a song.

        Args:
            waveform: ``(channels, samples)`` with 1 or 2 channels (or ``(samples,)``).
            sample_rate: the waveform's rate in Hz; any rate (resampled to 44.1 kHz inside).
            accompaniment: also return ``"accompaniment"``: everything but the vocals,
                i.e. drums + bass + other when all four are estimated; with a vocals-only
                model, the residual.

        Returns:
            target -> float32 ``(channels, samples)`` at the input's rate, length, channel
            count and device.
        """
        waveform = _check_waveform(waveform, sample_rate)
        if accompaniment and "vocals" not in self.targets:
            raise D3NetError("the accompaniment needs a vocals model (it is the mixture "
                             "minus the vocals)")
        channels, length = waveform.shape
        names = self.targets + (["accompaniment"] if accompaniment else [])
        if not waveform.any():  # silent in, silent out (the networks' biases are not)
            return {name: torch.zeros(channels, length, device=waveform.device)
                    for name in names}

        audio = io.resample(waveform.detach().float().cpu(), sample_rate, spectral.SAMPLE_RATE)
        audio = audio.to(self.device)
        if channels == 1:
            audio = audio.expand(2, -1)
        mixture = spectral.stft(audio)                                  # (2, bins, frames)
        magnitudes = self.separate_magnitudes(spectral.magnitude(mixture))
        estimates = wiener(torch.stack([magnitudes[t] for t in self.targets]), mixture,
                           iterations=self.wiener_iterations, residual=self.needs_residual)
        stems = spectral.istft(estimates, length=audio.shape[-1])       # (sources, 2, samples)

        outputs = {t: stems[i] for i, t in enumerate(self.targets)}
        if accompaniment:
            rest = [stems[i] for i, t in enumerate(self.targets) if t != "vocals"]
            if self.needs_residual:
                rest.append(stems[len(self.targets)])
            outputs["accompaniment"] = torch.stack(rest).sum(0)
        return {name: self._to_input_format(stem, channels, length, sample_rate, waveform.device)
                for name, stem in outputs.items()}

    @staticmethod
    def _to_input_format(stem: Tensor, channels: int, length: int, sample_rate: int,
                         device: torch.device) -> Tensor:
        """``(2, samples at 44.1 kHz)`` -> ``(channels, length)`` at ``sample_rate``."""
        stem = io.resample(stem.float().cpu(), spectral.SAMPLE_RATE, sample_rate)
        if stem.shape[-1] >= length:
            stem = stem[:, :length]
        else:  # resampling may round one sample short
            stem = torch.nn.functional.pad(stem, (0, length - stem.shape[-1]))
        if channels == 1:
            stem = stem.mean(dim=0, keepdim=True)
        return stem.contiguous().to(device)

    @torch.inference_mode()
    def separate_magnitudes(self, magnitude: Tensor) -> Dict[str, Tensor]:
        """Run every target's network over a song's magnitude spectrogram.

        This is the official ``model_separate``: zero padding, patches, channel flip,
        overlap-add, normalisation (see the module docstring for ``compat``).

        Args:
            magnitude: ``(2, bins, frames)`` mixture magnitude.

        Returns:
            target -> ``(2, bins, frames)`` float32 magnitude estimate.
        """
        if magnitude.dim() != 3 or magnitude.shape[0] != 2:
            raise D3NetError(f"expected a stereo magnitude (2, bins, frames), got shape "
                             f"{tuple(magnitude.shape)}")
        magnitude = magnitude.to(self.device, torch.float32)
        plans = {t: _PatchPlan(magnitude.shape[-1], *self._patch_shift(t, m))
                 for t, m in self.models.items()}
        total = sum(-(-plan.patches // self._patches_per_group) for plan in plans.values())
        with tqdm(total=total, desc="separating", unit="batch", disable=not self.progress,
                  leave=False) as bar:
            return {target: self._overlap_add(self.models[target], magnitude, plans[target], bar)
                    for target in self.targets}

    def _overlap_add(self, model: nn.Module, magnitude: Tensor, plan: "_PatchPlan",
                     bar: tqdm) -> Tensor:
        patch, shift = plan.patch, plan.shift
        padded = torch.nn.functional.pad(magnitude, (plan.front, plan.back))
        output = torch.zeros(*magnitude.shape[:2], plan.buffer, device=magnitude.device)
        for starts in _chunks(range(0, plan.patches * shift, shift), self._patches_per_group):
            batch = torch.stack([padded[..., s:s + patch] for s in starts])
            for start, estimate in zip(starts, self._run(model, batch)):
                output[..., start:start + patch] += estimate
            bar.update()
        output = output[..., plan.front:plan.front + plan.frames]
        if self.compat == "official":
            return output / plan.scale
        return output / plan.coverage(magnitude.device)

    def _patch_shift(self, target: str, model: nn.Module) -> tuple[int, int]:
        """``(patch, shift)`` in frames: the model's, or the shift set by ``overlap``."""
        patch, shift = _patching(target, model)
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


class _PatchPlan:
    """Frame bookkeeping of the official overlap-add helper for one target.

    The frames are padded with ``shift * (scale - 1)`` zeros in front and, behind, up to a
    whole number of patches plus one more (``scale * shift``) zeros; patches start every
    ``shift`` frames, ``(frames + zmod) / shift`` of them.
    """

    def __init__(self, frames: int, patch: int, shift: int):
        self.frames, self.patch, self.shift = frames, patch, shift
        self.scale = patch // shift
        zmod = patch - frames % patch
        self.patches = (frames + zmod) // shift
        self.front = shift * (self.scale - 1)
        self.back = zmod + shift * self.scale
        self.buffer = self.front + frames + self.back

    def coverage(self, device: torch.device) -> Tensor:
        """How many patches cover each of the song's frames, ``(frames,)``."""
        counts = torch.zeros(self.buffer, device=device)
        for start in range(0, self.patches * self.shift, self.shift):
            counts[start:start + self.patch] += 1
        return counts[self.front:self.front + self.frames]


def _patching(target: str, model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "config", None)
    try:
        patch, shift = int(config.test_patch_len), int(config.out_shift)
    except (AttributeError, TypeError, ValueError):
        raise D3NetError(f"model {target}: needs a .config with test_patch_len and "
                         "out_shift (is it a music separation model?)") from None
    if patch <= 0 or shift <= 0 or shift > patch:
        raise D3NetError(f"model {target}: invalid test_patch_len {patch} / out_shift {shift}")
    return patch, shift


def _check_waveform(waveform: Tensor, sample_rate: int) -> Tensor:
    if not isinstance(waveform, Tensor):
        waveform = torch.as_tensor(waveform)
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise D3NetError(f"expected a waveform (channels, samples), got shape "
                         f"{tuple(waveform.shape)}")
    channels, samples = waveform.shape
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


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]
