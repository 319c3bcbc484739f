"""The music separation training recipe: one D3Net per target, as the official training.

Recipe (the paper, Sec. 6.1, and Sony's official ``train.py``), every value overridable
through :class:`MSSHyperParams`:

* data: the official sampler (:class:`d3net.data.musdb.ExcerptDataset`): random 6 s
  excerpts, 64 per training track per epoch, random gain 0.75-1.25 and random channel
  swap per source, every source from a random track;
* input and target: the magnitude STFT (4096-point Hann window, hop 1024) of the mixture
  and of the target source, the first ``patch_frames`` (256) of the excerpt's 259 frames;
* loss: mean squared error over the whole patch (all bins, as the official loss);
* optimiser: Adam, lr 1e-3 times 0.1 after epoch 40 (MultiStepLR stepped per epoch),
  50 epochs, batch 6, L2 weight decay 1e-4 (Adam's ``weight_decay``, which adds
  ``1e-4 * w`` to the gradient as NNabla's ``solver.weight_decay`` does);
* initialisation: the official ``init_method='xavier'`` (:func:`xavier_init_`), and
  ``in_offset``/``in_scale`` from the training mixtures' per-bin magnitude mean and
  standard deviation (:func:`d3net.data.musdb.compute_input_stats`), cached in the run folder.

Where the official code differs from the paper or needs a choice, the official code wins:

* it trains on all 100 MUSDB18 training songs with no validation; so does the default
  here (``validation="none"``); ``validation="musdb"`` holds out MUSDB18's 14 validation
  songs and keeps the weights of the best validation epoch;
* it scales the learning rate and the weight decay by ``processes * batch / 6`` for
  multi-GPU runs; so does the default here (``lr_scaling=True``), counting the batch
  per process as its ``--batch-size`` does;
* it uses 256-frame patches for every target, even bass whose config names
  ``patch_length: 352`` (which 6 s excerpts could not hold); so does ``patch_frames``;
* its training STFT pads reflectively, ours with zeros (the inference padding): only
  the first two frames of a patch differ.

Run folder: ``<target>.safetensors`` (best by validation loss, or the last epoch without
validation), ``<target>.last.safetensors``, ``<target>.ckpt`` (resumable), ``input_stats.npz``
(shared by the targets), ``logs/<target>/`` (TensorBoard). Training the four targets into
one folder makes a separation model folder for :class:`d3net.separate.Separator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audio import spectral
from ..configs import TARGETS, MSSConfig, describe, load_config
from ..data import musdb
from ..errors import D3NetError
from ..utils import PathLike
from .hparams import AMP_HELP, HyperParams, option, parse_int_list, parse_range
from .init import glorot_init_
from .solver import Metric, RunFiles, Trainer, progress_bar


def parse_validation(text: str, flag: str) -> Union[str, Tuple[str, ...]]:
    """``none``, ``musdb`` or comma-separated track names."""
    text = text.strip()
    if text in ("none", "musdb"):
        return text
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass
class MSSHyperParams(HyperParams):
    """Hyper-parameters of a music separation training run (defaults: the official recipe);
    each field's help is in its :func:`~d3net.train.hparams.option`."""

    epochs: int = option(50, "total epochs", resumable=True, metavar="N")
    batch_size: int = option(6, "excerpts per optimisation step and process", metavar="N")
    lr: float = option(1e-3, "Adam learning rate (for 6 excerpts, see lr_scaling)",
                       metavar="X")
    lr_milestones: Tuple[int, ...] = option(
        (40,), "epochs after which the learning rate is multiplied by lr_gamma",
        metavar="LIST", parse=parse_int_list)
    lr_gamma: float = option(0.1, "learning-rate decay factor", metavar="X")
    weight_decay: float = option(1e-4, "L2 weight decay (Adam weight_decay)", metavar="X")
    lr_scaling: bool = option(True, "scale lr and weight decay by processes x batch / 6 (the "
                                    "official multi-GPU rule)")
    excerpt_seconds: float = option(6.0, "length of the training excerpts", metavar="S")
    patch_frames: int = option(256, "STFT frames of each excerpt fed to the network (the "
                                    "first ones)", metavar="N")
    samples_per_track: int = option(64, "excerpts per training track per epoch", metavar="N")
    gain_range: Optional[Tuple[float, float]] = option(
        (0.75, 1.25), "random gain per source, 'none' to disable", flag="--gain",
        metavar="LOW,HIGH|none", parse=parse_range)
    channel_swap: bool = option(True, "random left/right swap per source")
    random_tracks: bool = option(True, "draw every source of an excerpt from a random track "
                                       "(remixing songs)")
    validation: Union[str, Tuple[str, ...]] = option(
        "none", "'none' (train on every track, official), 'musdb' (hold out MUSDB18's 14 "
                "validation songs) or comma-separated track names", flag="--valid-tracks",
        metavar="none|musdb|NAMES", parse=parse_validation)
    stats_seconds: Optional[float] = option(
        None, "seconds from the middle of each track used for the input statistics",
        metavar="S", shown="whole tracks, as the official code")
    official_init: bool = option(True, "initialise the weights as the official training "
                                       "(off: PyTorch's defaults)")
    amp: Optional[bool] = option(False, AMP_HELP, shown="off: float32, as the official code")

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)
        if self.gain_range is not None:
            self.gain_range = tuple(float(g) for g in self.gain_range)  # type: ignore
        if not isinstance(self.validation, str):
            self.validation = tuple(str(v) for v in self.validation)
        self._require([(self.epochs >= 1, "epochs must be >= 1"),
                       (self.batch_size >= 1, "batch size must be >= 1"),
                       (self.lr > 0, "learning rate must be > 0"),
                       (self.weight_decay >= 0, "weight decay must be >= 0"),
                       (self.patch_frames >= 1, "patch_frames must be >= 1"),
                       (self.samples_per_track >= 1, "samples_per_track must be >= 1"),
                       (self.excerpt_seconds > 0, "excerpt_seconds must be > 0")])


@dataclass
class TrainResult(RunFiles):
    """What :func:`train_mss` returns: the run's files and, for every epoch so far (resumed
    runs included), the mean training loss and the validation loss (none without validation);
    ``model`` is the trained network (plain module, on its training device)."""

    epochs: int
    train_loss: List[float] = field(default_factory=list)
    valid_loss: List[float] = field(default_factory=list)
    model: Optional[nn.Module] = field(default=None, repr=False)


def run_paths(out: PathLike, target: str) -> Dict[str, Path]:
    """The files a run writes for ``target`` in ``out``."""
    out = Path(out)
    return {"weights": out / f"{target}.safetensors", "last": out / f"{target}.last.safetensors",
            "checkpoint": out / f"{target}.ckpt", "stats": out / "input_stats.npz",
            "logs": out / "logs" / target}


@torch.no_grad()
def xavier_init_(model: nn.Module) -> nn.Module:
    """Initialise as the official music training (``init_method='xavier'``), in place:
    :func:`d3net.train.init.glorot_init_` with Glorot-normal convolutions, and
    ``decode_scale = decode_bias = 1``, so the output ReLU starts open."""
    glorot_init_(model, conv="normal")
    for name in ("decode_scale", "decode_bias"):
        parameter = getattr(model, name, None)
        if isinstance(parameter, Tensor):
            parameter.fill_(1.0)
    return model


def magnitude_patch(audio: Tensor, config: MSSConfig, frames: Optional[int] = None) -> Tensor:
    """Magnitude STFT of a batch of waveforms as the model takes it.

    Args:
        audio: ``(batch, channels, samples)``; mono is duplicated for a stereo model, stereo
            averaged (in magnitude, as the official ``mono`` option) for a mono model.
        config: the model config (FFT size, hop, audio channels).
        frames: keep the first ``frames`` frames (``None``: all).

    Returns:
        ``(batch, config.audio_channels, bins, frames)``.
    """
    magnitude = spectral.magnitude(spectral.stft(audio.float(), n_fft=config.fft_size,
                                                 hop=config.hop_size))
    if frames is not None:
        magnitude = magnitude[..., :frames]
    channels = magnitude.shape[1]
    if channels != config.audio_channels:
        if config.audio_channels == 1:
            magnitude = magnitude.mean(dim=1, keepdim=True)
        elif channels == 1:
            magnitude = magnitude.expand(-1, config.audio_channels, -1, -1)
        else:
            raise D3NetError(f"the model takes {config.audio_channels} audio channels, the data "
                             f"has {channels}")
    return magnitude


def split_tracks(root: PathLike, validation: Union[str, Sequence[str]]
                 ) -> Tuple[List[musdb.MUSDBTrack], List[musdb.MUSDBTrack]]:
    """Training and validation tracks of ``root``'s train subset."""
    tracks = musdb.list_tracks(root, "train")
    if isinstance(validation, str):
        if validation == "none":
            return tracks, []
        if validation != "musdb":
            raise D3NetError(f"validation must be 'none', 'musdb' or a list of track names, "
                             f"got {validation!r}")
        names = set(musdb.VALIDATION_TRACKS)
    else:
        names = set(validation)
        missing = sorted(names - {t.name for t in tracks})
        if missing:
            raise D3NetError(f"validation track(s) not in {Path(root) / 'train'}: "
                             f"{', '.join(missing)}")
    train = [t for t in tracks if t.name not in names]
    valid = [t for t in tracks if t.name in names]
    if not train:
        raise D3NetError(f"no training tracks left in {Path(root) / 'train'} after holding out "
                         f"{len(valid)} validation track(s)")
    return train, valid


class MSSTrainer(Trainer):
    """The music recipe on the shared driver: one target's network on MUSDB18(-HQ) tracks;
    the arguments are :func:`train_mss`'s."""

    hparams_type = MSSHyperParams
    config_type = MSSConfig
    task = "mss"
    kind = "music separation"
    reference_batch = 6  # the batch the official learning rate and weight decay are for
    length = "epochs"
    metric = Metric(name="valid_loss", best_name="best_valid_loss", label="valid loss",
                    tag="loss/valid", higher_is_better=False)

    def __init__(self, root: PathLike, target: str, out: PathLike, config: Any = None,
                 **kwargs: Any):
        if target not in TARGETS:
            raise D3NetError(f"unknown target {target!r}; train one of "
                             f"{', '.join(TARGETS)}")
        super().__init__(run_paths(out, target), config, **kwargs)
        self.root, self.target = root, target
        self.run_name, self.default_config = f"{target} {self.kind}", f"mss-{target}"

    def load_config(self, source: Any) -> Any:
        return load_config(source, task=self.task, target=self.target)

    def owns(self, config: Any) -> bool:
        return isinstance(config, MSSConfig) and config.target == self.target

    def adjust_config(self, config: MSSConfig) -> None:
        config.target = self.target

    def train_dataset(self) -> musdb.ExcerptDataset:
        hp, config = self.hp, self.config
        self.train_tracks, self.valid_tracks = split_tracks(self.root, hp.validation)
        self.validates = bool(self.valid_tracks)
        rate = self.train_tracks[0].sample_rate
        if rate != config.sample_rate:
            raise D3NetError(f"the tracks are at {rate} Hz, the model {describe(config)} at "
                             f"{config.sample_rate} Hz (resample the dataset)")
        frames = spectral.num_frames(int(round(hp.excerpt_seconds * rate)), config.hop_size)
        if frames < hp.patch_frames:
            raise D3NetError(f"{hp.excerpt_seconds} s excerpts give {frames} STFT frames, "
                             f"fewer than patch_frames={hp.patch_frames}")
        return musdb.ExcerptDataset(
            self.train_tracks, self.target, excerpt_seconds=hp.excerpt_seconds,
            samples_per_track=hp.samples_per_track, gain_range=hp.gain_range,
            channel_swap=hp.channel_swap, random_tracks=hp.random_tracks, seed=hp.seed)

    def initialise(self, model: nn.Module) -> None:
        if self.hp.official_init:
            xavier_init_(model)
        model.set_input_stats(*self._input_stats())

    def _input_stats(self) -> Tuple[Tensor, Tensor]:
        """Cached per-bin mean/scale of the training mixtures (computed on the first use).

        Every rank computes them when the cache is missing (same numbers; no rank idles at a
        barrier long enough to hit a collective timeout); rank 0 writes the cache.
        """
        path, config, dist = self.paths["stats"], self.config, self.dist
        if path.is_file():
            mean, scale = musdb.load_stats(path)
            if mean.numel() == config.num_bins:
                return mean, scale
            self.say(f"{path} has {mean.numel()} bins, the model {config.num_bins}: recomputing")
        mean, scale = musdb.compute_input_stats(
            self.train_tracks, max_seconds_per_track=self.hp.stats_seconds,
            progress=self.progress and dist.is_main, n_fft=config.fft_size,
            hop=config.hop_size)
        if dist.is_main:
            musdb.save_stats(path, mean, scale)
        return mean, scale

    def optimizer(self, model: nn.Module, lr_scale: float):
        hp = self.hp
        optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr * lr_scale,
                                     weight_decay=hp.weight_decay * lr_scale)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones),
                                                         gamma=hp.lr_gamma)
        return optimizer, scheduler

    @torch.no_grad()
    def prepare(self, batch: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        mixture, target = super().prepare(batch)
        return (magnitude_patch(mixture, self.config, self.hp.patch_frames),
                magnitude_patch(target, self.config, self.hp.patch_frames))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean squared error over every element (the official loss)."""
        return F.mse_loss(outputs.float(), targets.float())

    @torch.no_grad()
    def validate(self, model: nn.Module) -> float:
        """Mean squared magnitude error over whole validation tracks (the training loss, on
        consecutive ``patch_frames`` patches of every track), tracks sharded over the ranks."""
        hp, dist, config = self.hp, self.dist, self.config
        model.eval()
        dataset = musdb.FullTrackDataset(self.valid_tracks[dist.rank::dist.world_size],
                                         self.target)
        squared = torch.zeros((), dtype=torch.float64)
        elements = 0
        bar = progress_bar(range(len(dataset)), enabled=self.progress, dist=dist,
                           desc="validation", unit="track", leave=False)
        with self.amp.autocast():
            for index in bar:
                mixture, wanted = dataset[index]
                inputs = magnitude_patch(mixture.to(dist.device)[None], config)[0]
                reference = magnitude_patch(wanted.to(dist.device)[None], config)[0]
                patches = torch.split(inputs, hp.patch_frames, dim=-1)
                references = torch.split(reference, hp.patch_frames, dim=-1)
                # full patches in batches, the shorter last patch on its own
                full = len(patches) - (patches[-1].shape[-1] != patches[0].shape[-1])
                bounds = [(i, min(i + hp.batch_size, full))
                          for i in range(0, full, hp.batch_size)]
                if full < len(patches):
                    bounds.append((full, len(patches)))
                for start, stop in bounds:
                    estimate = model(torch.stack(patches[start:stop])).float()
                    truth = torch.stack(references[start:stop]).float()
                    squared += ((estimate - truth) ** 2).sum().double().cpu()
                    elements += truth.numel()
        model.train()
        total = dist.sum(torch.stack([squared,
                                      torch.tensor(float(elements), dtype=torch.float64)]))
        return float(total[0] / total[1]) if total[1] > 0 else math.nan

    def describe(self, lr_scale: float) -> str:
        milestones = ",".join(str(m) for m in self.hp.lr_milestones) or "never"
        return (f"{len(self.train_tracks)} training / {len(self.valid_tracks)} validation "
                f"tracks, Adam lr {self.hp.lr * lr_scale:g} (x{self.hp.lr_gamma:g} after "
                f"epochs {milestones})")


def train_mss(root: PathLike, target: str, out: PathLike,
              config: Union[str, Path, MSSConfig, Dict[str, Any], None] = None, *,
              resume: bool = False, device: Union[str, torch.device, None] = None,
              sync_bn: str = "auto", workers: int = 0, progress: bool = True,
              quiet: bool = False, **hparams: Any) -> TrainResult:
    """Train the D3Net of one target on a MUSDB18(-HQ)-layout dataset.

    Works in one process or under ``torchrun`` (one process per GPU, or several CPU
    processes with gloo): data sharded per rank, only rank 0 writes.

    Args:
        root: dataset root with ``train/`` (MUSDB18-HQ folders or MUSDB18 stem files).
        target: ``vocals``, ``drums``, ``bass`` or ``other``.
        out: run folder (created).
        config: preset name, YAML file, dict or :class:`MSSConfig` (default
            ``mss-<target>``, the official network); ignored on resume, where the
            checkpoint's config is used (a different one is refused).
        resume: continue ``out/<target>.ckpt`` exactly (see
            :class:`~d3net.train.solver.Trainer`); a larger ``epochs`` extends the run.
        device, sync_bn, workers, progress, quiet: how to run
            (:class:`d3net.train.solver.Trainer`).
        **hparams: fields of :class:`MSSHyperParams`; ``None`` values mean "default, or
            the resumed run's value" (so disable the gain augmentation with
            ``gain_range=(1, 1)``).

    Returns:
        A :class:`TrainResult` (paths, per-epoch losses, the trained model).

    Raises:
        D3NetError: an unknown target or option, unusable data, an existing run without
            ``resume``, a resumed run with other settings, a NaN/Inf loss.
    """
    trainer = MSSTrainer(root, target, out, config, resume=resume, device=device,
                         sync_bn=sync_bn, workers=workers, progress=progress, quiet=quiet,
                         hparams=hparams)
    run = trainer.fit()
    return TrainResult(**trainer.files(), epochs=run.epochs, train_loss=run.epoch_losses(),
                       valid_loss=[score for _, score in run.scores(MSSTrainer.metric)],
                       model=run.model)


__all__ = ["MSSHyperParams", "MSSTrainer", "TrainResult", "train_mss", "run_paths",
           "xavier_init_", "magnitude_patch", "split_tracks",
           "parse_validation"]
