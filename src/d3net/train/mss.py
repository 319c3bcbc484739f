"""The music separation training recipe: one D3Net per target, as the official training.

Recipe (the paper, Sec. 6.1, and Sony's official ``train.py``), every value overridable
through :class:`MSSHyperParams`:

* data: the official sampler (:class:`d3net.data.musdb.ExcerptDataset`): random 6 s
  excerpts, 64 per training track per epoch, random gain 0.75-1.25 and random channel
  swap per source, every source from a random track;
* input: the magnitude STFT (4096-point Hann window, hop 1024) of the excerpt, of which
  the first ``patch_frames`` (256) of its 259 frames are used; target: the same for the
  target source;
* loss: mean squared error between the network's output and the target magnitude over
  the whole patch (all bins, as the official loss);
* optimiser: Adam, lr 1e-3 times 0.1 after epoch 40 (MultiStepLR stepped per epoch),
  50 epochs, batch 6, L2 weight decay 1e-4 (Adam's ``weight_decay``, which adds
  ``1e-4 * w`` to the gradient as NNabla's ``solver.weight_decay`` does);
* initialisation: Glorot-normal convolutions, Glorot-uniform transposed convolutions,
  zero biases, ``decode_scale = decode_bias = 1`` (the official ``init_method='xavier'``),
  ``in_offset``/``in_scale`` from the training mixtures' per-bin magnitude mean and
  standard deviation (:func:`d3net.data.musdb.compute_input_stats`), computed once and
  cached in the run folder.

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

Run folder (``../shared/INTERFACES.md``): ``<target>.safetensors`` (best by validation
loss, or the last epoch without validation), ``<target>.last.safetensors``,
``<target>.ckpt`` (resumable), ``input_stats.npz`` (shared by the targets),
``logs/<target>/`` (TensorBoard). Training the four targets into one folder makes a
separation model folder for :class:`d3net.separate.Separator`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models as model_io
from ..audio import spectral
from ..configs import MSSConfig, describe, from_dict, load_config, to_dict
from ..data import musdb
from ..errors import D3NetError
from ..utils import PathLike
from . import loop

REFERENCE_BATCH = 6
"""The batch size the official learning rate and weight decay are given for."""
STATS_FILE = "input_stats.npz"
RESUMABLE_CHANGES = ("epochs",)
"""Hyper-parameters that may differ when a run is resumed."""


@dataclass
class MSSHyperParams(loop.HyperParams):
    """Hyper-parameters of a music separation training run (defaults: the official recipe).

    Attributes:
        epochs: total epochs.
        batch_size: excerpts per optimisation step and process.
        lr: Adam learning rate (for ``REFERENCE_BATCH`` excerpts, see ``lr_scaling``).
        lr_milestones: epochs after which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the factor.
        weight_decay: L2 penalty (Adam ``weight_decay``).
        lr_scaling: multiply ``lr`` and ``weight_decay`` by ``processes * batch_size / 6``
            (official multi-GPU rule; 1 with the default batch on one process).
        excerpt_seconds: length of the training excerpts.
        patch_frames: STFT frames of each excerpt fed to the network (the first ones).
        samples_per_track: excerpts per training track per epoch.
        gain_range: random gain per source ``(low, high)``, or ``None``.
        channel_swap: random left/right swap per source.
        random_tracks: draw every source from a random track (remixing songs).
        validation: ``"none"`` (train on every track, official), ``"musdb"`` (hold out
            MUSDB18's validation songs) or a list of track names to hold out.
        stats_seconds: seconds from the middle of each track used for the input
            statistics (``None``: whole tracks, as the official code).
        official_init: re-initialise the weights as the official training does.
        amp: mixed precision (CUDA only; the official training is float32).
        seed: base seed of the run (model init, data, shuffling).
    """

    epochs: int = 50
    batch_size: int = 6
    lr: float = 1e-3
    lr_milestones: Tuple[int, ...] = (40,)
    lr_gamma: float = 0.1
    weight_decay: float = 1e-4
    lr_scaling: bool = True
    excerpt_seconds: float = 6.0
    patch_frames: int = 256
    samples_per_track: int = 64
    gain_range: Optional[Tuple[float, float]] = (0.75, 1.25)
    channel_swap: bool = True
    random_tracks: bool = True
    validation: Union[str, Tuple[str, ...]] = "none"
    stats_seconds: Optional[float] = None
    official_init: bool = True
    amp: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)
        if self.gain_range is not None:
            self.gain_range = tuple(float(g) for g in self.gain_range)  # type: ignore
        if not isinstance(self.validation, str):
            self.validation = tuple(str(v) for v in self.validation)
        checks = [(self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 1, "batch size must be >= 1"),
                  (self.lr > 0, "learning rate must be > 0"),
                  (self.weight_decay >= 0, "weight decay must be >= 0"),
                  (self.patch_frames >= 1, "patch_frames must be >= 1"),
                  (self.samples_per_track >= 1, "samples_per_track must be >= 1"),
                  (self.excerpt_seconds > 0, "excerpt_seconds must be > 0")]
        self._require(checks)


@dataclass
class TrainResult:
    """What :func:`train_mss` returns.

    Attributes:
        weights: ``RUNDIR/<target>.safetensors`` (best, or last without validation).
        last: ``RUNDIR/<target>.last.safetensors``.
        checkpoint: ``RUNDIR/<target>.ckpt``.
        epochs: completed epochs.
        train_loss: mean training loss of every epoch so far (resumed runs included).
        valid_loss: validation loss of every epoch (empty without validation).
        model: the trained network (plain module, on its training device).
    """

    weights: Path
    last: Path
    checkpoint: Path
    epochs: int
    train_loss: List[float] = field(default_factory=list)
    valid_loss: List[float] = field(default_factory=list)
    model: Optional[nn.Module] = field(default=None, repr=False)


def run_paths(out: PathLike, target: str) -> Dict[str, Path]:
    """The files a run writes for ``target`` in ``out``."""
    out = Path(out)
    return {"weights": out / f"{target}.safetensors",
            "last": out / f"{target}.last.safetensors",
            "checkpoint": out / f"{target}.ckpt",
            "stats": out / STATS_FILE,
            "logs": out / "logs" / target}


# ----------------------------------------------------------------------------------------
# model initialisation, spectrograms, loss
# ----------------------------------------------------------------------------------------

@torch.no_grad()
def official_init_(model: nn.Module) -> nn.Module:
    """Initialise as the official training (``init_method='xavier'``), in place.

    Convolutions: Glorot normal (NNabla's ``calc_normal_std_glorot``, the same as
    ``xavier_normal_``), biases zero. Transposed convolutions: NNabla's default Glorot
    uniform, bias zero. BatchNorm: weight 1, bias 0. ``decode_scale`` and
    ``decode_bias``: 1 (so the output ReLU starts open).
    """
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            continue
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)
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


def magnitude_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element (the official loss)."""
    return F.mse_loss(estimate.float(), target.float())


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------

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


def _input_stats(paths: Dict[str, Path], tracks: Sequence[musdb.MUSDBTrack],
                 hp: MSSHyperParams, config: MSSConfig, dist: loop.Distributed,
                 progress: bool) -> Tuple[Tensor, Tensor]:
    """Cached per-bin mean/scale of the training mixtures (computed on the first use).

    Every rank computes them when the cache is missing (same numbers; no rank idles at a
    barrier long enough to hit a collective timeout); rank 0 writes the cache.
    """
    path = paths["stats"]
    if path.is_file():
        mean, scale = musdb.load_stats(path)
        if mean.numel() == config.num_bins:
            return mean, scale
        loop.log(f"{path} has {mean.numel()} bins, the model {config.num_bins}: recomputing",
                 dist)
    mean, scale = musdb.compute_input_stats(
        tracks, max_seconds_per_track=hp.stats_seconds, progress=progress and dist.is_main,
        n_fft=config.fft_size, hop=config.hop_size)
    if dist.is_main:
        musdb.save_stats(path, mean, scale)
    return mean, scale


def _check_tracks(tracks: Sequence[musdb.MUSDBTrack], config: MSSConfig,
                  hp: MSSHyperParams) -> None:
    rate = tracks[0].sample_rate
    if rate != config.sample_rate:
        raise D3NetError(f"the tracks are at {rate} Hz, the model {describe(config)} at "
                         f"{config.sample_rate} Hz (resample the dataset)")
    samples = int(round(hp.excerpt_seconds * rate))
    frames = spectral.num_frames(samples, config.hop_size)
    if frames < hp.patch_frames:
        raise D3NetError(f"{hp.excerpt_seconds} s excerpts give {frames} STFT frames, fewer "
                         f"than patch_frames={hp.patch_frames}")


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------

def _resolve_config(config: Union[str, Path, MSSConfig, Dict[str, Any], None],
                    target: str) -> MSSConfig:
    resolved = load_config(config if config is not None else f"mss-{target}", task="mss",
                           target=target)
    if not isinstance(resolved, MSSConfig):
        raise D3NetError(f"{describe(resolved)} is not a music separation config")
    resolved = dataclasses.replace(resolved) if resolved is config else resolved
    resolved.target = target
    return resolved


def train_mss(root: PathLike, target: str, out: PathLike,
              config: Union[str, Path, MSSConfig, Dict[str, Any], None] = None, *,
              resume: bool = False, device: Union[str, torch.device, None] = None,
              sync_bn: str = "auto", workers: int = 0, progress: bool = True,
              quiet: bool = False, **hparams: Any) -> TrainResult:
    """Train the D3Net of one target on a MUSDB18(-HQ)-layout dataset.

    Works in one process or under ``torchrun`` (one process per GPU, or several CPU
    processes with gloo): data sharded per rank, per-rank seeds, only rank 0 writes.

    Args:
        root: dataset root with ``train/`` (MUSDB18-HQ folders or MUSDB18 stem files).
        target: ``vocals``, ``drums``, ``bass`` or ``other``.
        out: run folder (created).
        config: preset name, YAML file, dict or :class:`MSSConfig` (default
            ``mss-<target>``, the official network); ignored on resume, where the
            checkpoint's config is used (a different one is refused).
        resume: continue ``out/<target>.ckpt`` exactly (model, optimiser, scheduler, RNG
            states, epoch); a larger ``epochs`` extends the run. Without a checkpoint a new
            run starts. Without ``resume`` an existing checkpoint is an error.
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        sync_bn: ``auto``/``on``/``off`` (see :func:`loop.maybe_sync_batchnorm`).
        workers: DataLoader worker processes.
        progress: tqdm bars (rank 0).
        quiet: no informational lines.
        **hparams: fields of :class:`MSSHyperParams`; ``None`` values mean "default, or
            the resumed run's value" (so disable the gain augmentation with
            ``gain_range=(1, 1)``).

    Returns:
        A :class:`TrainResult` (paths, per-epoch losses, the trained model).
    """
    if target not in musdb.SOURCES:
        raise D3NetError(f"unknown target {target!r}; train one of {', '.join(musdb.SOURCES)}")
    unknown = sorted(set(hparams) - {f.name for f in dataclasses.fields(MSSHyperParams)})
    if unknown:
        raise D3NetError(f"unknown training option(s): {', '.join(unknown)}")
    paths = run_paths(out, target)
    dist = loop.init_distributed(device)
    try:
        return _train(root, target, paths, config, resume, dist, sync_bn, workers, progress,
                      quiet, hparams)
    finally:
        loop.shutdown_distributed(dist)


def _train(root: PathLike, target: str, paths: Dict[str, Path],
           config_source: Any, resume: bool, dist: loop.Distributed, sync_bn: str,
           workers: int, progress: bool, quiet: bool, overrides: Dict[str, Any]) -> TrainResult:
    say = (lambda message: loop.log(message, dist, quiet))
    checkpoint = paths["checkpoint"]
    state: Optional[Dict[str, Any]] = None
    if checkpoint.exists() and not resume:
        raise D3NetError(f"{checkpoint} exists: pass --resume to continue that run, or choose "
                         "another --out folder")
    if resume:
        if checkpoint.is_file():
            state = loop.load_checkpoint(checkpoint)
        else:
            say(f"no checkpoint at {checkpoint}: starting a new run")

    if state is not None:
        config = from_dict(state["config"])
        if config_source is not None:
            wanted = _resolve_config(config_source, target)
            if to_dict(wanted) != to_dict(config):
                raise D3NetError(f"--config {config_source} differs from the config of the run "
                                 f"being resumed ({describe(config)}); leave --config out to "
                                 "resume")
        hp = MSSHyperParams.merge_resumed(state["hparams"], overrides, RESUMABLE_CHANGES)
    else:
        config = _resolve_config(config_source, target)
        hp = MSSHyperParams(**{k: v for k, v in overrides.items() if v is not None})
    if not isinstance(config, MSSConfig) or config.target != target:
        raise D3NetError(f"{checkpoint} is not a {target} music separation run")

    loop.seed_everything(hp.seed, dist.rank)
    train_tracks, valid_tracks = split_tracks(root, hp.validation)
    _check_tracks(train_tracks, config, hp)
    if dist.is_main:
        paths["checkpoint"].parent.mkdir(parents=True, exist_ok=True)

    # the model: official init + input statistics (a resumed run loads all of it back)
    model = model_io.create(config)
    if state is None:
        if hp.official_init:
            official_init_(model)
        mean, scale = _input_stats(paths, train_tracks, hp, config, dist, progress)
        model.set_input_stats(mean, scale)
    model.to(dist.device)
    model = loop.maybe_sync_batchnorm(model, sync_bn, dist)

    scale_factor = dist.world_size * hp.batch_size / REFERENCE_BATCH if hp.lr_scaling else 1.0
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr * scale_factor,
                                 weight_decay=hp.weight_decay * scale_factor)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones),
                                                     gamma=hp.lr_gamma)
    amp = loop.MixedPrecision(hp.amp, dist.device)
    start_epoch, iteration, best = 0, 0, None
    history: Dict[str, List[float]] = {"train_loss": [], "valid_loss": []}
    if state is not None:
        loop.restore_checkpoint(state, model, optimizer, scheduler, amp, dist)
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        best = state.get("best_metric")
        history = {k: list(v) for k, v in state["extra"].get("history", history).items()}
        extended = hp.epochs != state["hparams"]["epochs"]
        say(f"resuming {checkpoint} after epoch {start_epoch}"
            + (f" (now {hp.epochs} epochs in all)" if extended else ""))
    ddp_model = loop.wrap_ddp(model, dist)

    dataset = musdb.ExcerptDataset(
        train_tracks, target, excerpt_seconds=hp.excerpt_seconds,
        samples_per_track=hp.samples_per_track, gain_range=hp.gain_range,
        channel_swap=hp.channel_swap, random_tracks=hp.random_tracks, seed=hp.seed)
    # DistributedSampler also in one process: a per-epoch shuffle from (seed, epoch) only
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=hp.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=workers,
        drop_last=True, pin_memory=dist.device.type == "cuda")
    if len(loader) == 0:
        raise D3NetError(f"{len(train_tracks)} track(s) x {hp.samples_per_track} excerpts "
                         f"make no full batch of {hp.batch_size} per process; lower "
                         "--batch-size or raise samples_per_track")

    logger = loop.Logger(paths["logs"], dist)
    say(f"training {describe(config)}: {model_io.count_parameters(model):,} parameters, "
        f"{len(train_tracks)} training / {len(valid_tracks)} validation tracks, "
        f"{len(loader)} steps of {hp.batch_size} x {dist.world_size} process(es) per epoch, "
        f"lr {hp.lr * scale_factor:g}, on {dist.device}")
    if start_epoch >= hp.epochs:
        say(f"the run already has {start_epoch} epochs (>= {hp.epochs}); nothing to do "
            "(pass a larger --epochs to continue)")

    for epoch in range(start_epoch, hp.epochs):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        started = time.time()
        train_loss, iteration = _train_epoch(ddp_model, loader, optimizer, amp, config, hp,
                                             dist, logger, epoch, iteration, checkpoint,
                                             progress)
        valid_loss = None
        if valid_tracks:
            valid_loss = validation_loss(model, valid_tracks, target, config, hp, dist, amp,
                                         progress)
        scheduler.step()
        history["train_loss"].append(train_loss)
        if valid_loss is not None:
            history["valid_loss"].append(valid_loss)
        improved = valid_loss is not None and (best is None or valid_loss < best)
        if improved:
            best = valid_loss
        logger.scalars({"loss/train_epoch": train_loss,
                        "lr": optimizer.param_groups[0]["lr"]}, epoch + 1)
        if valid_loss is not None:
            logger.scalar("loss/valid", valid_loss, epoch + 1)
        logger.flush()

        meta = {"epoch": str(epoch + 1), "train_loss": f"{train_loss:.6g}"}
        if valid_loss is not None:
            meta["valid_loss"] = f"{valid_loss:.6g}"
        if dist.is_main:
            model_io.save(model, paths["last"], extra=meta)
            if improved or not valid_tracks:
                model_io.save(model, paths["weights"], extra=meta)
        ckpt = loop.checkpoint_state(
            model, optimizer, scheduler, amp, dist, epoch=epoch + 1, iteration=iteration,
            best_metric=best, config=to_dict(config), hparams=hp.to_dict(),
            extra={"history": history, "target": target})
        loop.save_checkpoint(checkpoint, ckpt, dist)
        say(f"epoch {epoch + 1}/{hp.epochs}: train loss {train_loss:.5g}"
            + (f", valid loss {valid_loss:.5g}" + (" (best)" if improved else "")
               if valid_loss is not None else "")
            + f", {time.time() - started:.0f} s")
    logger.close()
    dist.barrier()
    return TrainResult(weights=paths["weights"], last=paths["last"], checkpoint=checkpoint,
                       epochs=max(start_epoch, hp.epochs),
                       train_loss=history["train_loss"], valid_loss=history["valid_loss"],
                       model=model)


def _train_epoch(model: nn.Module, loader: torch.utils.data.DataLoader,
                 optimizer: torch.optim.Optimizer, amp: loop.MixedPrecision,
                 config: MSSConfig, hp: MSSHyperParams, dist: loop.Distributed,
                 logger: loop.Logger, epoch: int, iteration: int, checkpoint: Path,
                 progress: bool) -> Tuple[float, int]:
    """One pass over the loader; returns the epoch's mean loss (over ranks) and the step."""
    model.train()
    total, count = 0.0, 0
    bar = loop.progress_bar(loader, enabled=progress, dist=dist,
                            desc=f"epoch {epoch + 1}/{hp.epochs}", unit="step", leave=False)
    for mixture, target in bar:
        mixture = mixture.to(dist.device, non_blocking=True)
        target = target.to(dist.device, non_blocking=True)
        with torch.no_grad():
            inputs = magnitude_patch(mixture, config, hp.patch_frames)
            wanted = magnitude_patch(target, config, hp.patch_frames)
        with amp.autocast():
            loss = magnitude_loss(model(inputs), wanted)
        value = dist.mean(loss.detach())
        loop.check_finite_loss(value, epoch=epoch, iteration=iteration + 1,
                               checkpoint=checkpoint)
        optimizer.zero_grad(set_to_none=True)
        amp.backward_and_step(loss, optimizer)
        iteration += 1
        total += value
        count += 1
        logger.scalar("loss/train", value, iteration)
        bar.set_postfix(loss=f"{value:.4g}")
    bar.close()
    return total / max(count, 1), iteration


@torch.no_grad()
def validation_loss(model: nn.Module, tracks: Sequence[musdb.MUSDBTrack], target: str,
                    config: MSSConfig, hp: MSSHyperParams, dist: loop.Distributed,
                    amp: Optional[loop.MixedPrecision] = None, progress: bool = False) -> float:
    """Mean squared magnitude error over whole validation tracks (the training loss, on
    consecutive ``patch_frames`` patches of every track), tracks sharded over the ranks."""
    model.eval()
    dataset = musdb.FullTrackDataset(list(tracks)[dist.rank::dist.world_size], target)
    squared = torch.zeros((), dtype=torch.float64)
    elements = 0
    autocast = amp.autocast() if amp is not None else contextlib.nullcontext()
    bar = loop.progress_bar(range(len(dataset)), enabled=progress, dist=dist,
                            desc="validation", unit="track", leave=False)
    with autocast:
        for index in bar:
            mixture, wanted = dataset[index]
            inputs = magnitude_patch(mixture.to(dist.device)[None], config)[0]
            reference = magnitude_patch(wanted.to(dist.device)[None], config)[0]
            patches = list(torch.split(inputs, hp.patch_frames, dim=-1))
            references = list(torch.split(reference, hp.patch_frames, dim=-1))
            # full patches in batches, the shorter last patch on its own
            groups = [list(range(i, min(i + hp.batch_size, len(patches))))
                      for i in range(0, len(patches), hp.batch_size)]
            if patches[-1].shape[-1] != patches[0].shape[-1]:
                groups = [[j for j in g if j != len(patches) - 1] for g in groups]
                groups = [g for g in groups if g] + [[len(patches) - 1]]
            for group in groups:
                estimate = model(torch.stack([patches[j] for j in group])).float()
                truth = torch.stack([references[j] for j in group]).float()
                squared += ((estimate - truth) ** 2).sum().double().cpu()
                elements += truth.numel()
    model.train()
    total = dist.sum(torch.stack([squared, torch.tensor(float(elements), dtype=torch.float64)]))
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


__all__ = ["MSSHyperParams", "TrainResult", "train_mss", "run_paths", "official_init_",
           "magnitude_patch", "magnitude_loss", "split_tracks", "validation_loss",
           "REFERENCE_BATCH", "STATS_FILE"]
