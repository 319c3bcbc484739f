"""The training driver both recipes share: :class:`Trainer`.

:meth:`Trainer.fit` owns run-folder refusal and exact resume, the config-vs-checkpoint check,
hyper-parameter merging, seeding, DDP and SyncBatchNorm, learning-rate scaling, mixed
precision, the step with its NaN guard, logging, and saving ``last`` / best weights and the
checkpoint. A recipe (:mod:`d3net.train.mss`, :mod:`d3net.train.seg`) subclasses it and
supplies its config, model initialisation, data, optimiser and schedule, loss and validation
score. A run counts optimisation steps over epochs of sharded, shuffled full batches
(:func:`d3net.train.distributed.epoch_batches`). Only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import models as model_io
from ..configs import describe, from_dict, load_config, to_dict
from ..errors import D3NetError
from ..utils import PathLike
from .checkpoint import checkpoint_state, load_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import (Distributed, epoch_batches, init_distributed, maybe_sync_batchnorm,
                          seed_everything, shutdown_distributed, wrap_ddp)
from .hparams import HyperParams
from .precision import MixedPrecision

LENGTH_UNITS = {"epochs": "epoch", "iters": "iteration"}  # a run's length field -> its unit


class NonFiniteLossError(D3NetError):
    """The training loss became NaN or infinite; the run stopped."""


def check_finite_loss(value: float, *, epoch: Optional[int] = None,
                      iteration: Optional[int] = None,
                      checkpoint: Optional[PathLike] = None) -> None:
    """Stop the run with one clear line when the loss is NaN or infinite.

    Pass the loss averaged over the ranks, so that every rank stops at the same step.

    Raises:
        NonFiniteLossError: ``value`` is NaN or infinite.
    """
    if math.isfinite(value):
        return
    where = ", ".join(part for part in (
        f"epoch {epoch + 1}" if epoch is not None else "",
        f"iteration {iteration}" if iteration is not None else "") if part)
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint is not None
            and Path(checkpoint).is_file() else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"training loss became {value} ({where}); stopped, {kept} (try a lower --lr, or "
        "check the data for silent/corrupt files)")


_warned_no_tensorboard = False


class Logger:
    """TensorBoard scalars on rank 0; silent elsewhere, and without TensorBoard (an optional
    dependency: ``pip install 'd3net[train]'``) after one warning."""

    def __init__(self, log_dir: Optional[PathLike], dist: Optional[Distributed] = None):
        self.writer = None
        if log_dir is None or (dist is not None and not dist.is_main):
            return
        try:  # optional dependency (the train extra)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            global _warned_no_tensorboard
            if not _warned_no_tensorboard:
                warnings.warn("tensorboard is not installed: no training curves are logged "
                              "(pip install 'd3net[train]')")
                _warned_no_tensorboard = True
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items() if self.writer is not None else ():
            self.writer.add_scalar(tag, float(value), int(step))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress_bar(iterable: Optional[Any] = None, *, enabled: bool = True,
                 dist: Optional[Distributed] = None, **kwargs: Any) -> tqdm:
    """A tqdm bar shown on rank 0 when ``enabled`` (hidden on the other ranks)."""
    show = enabled and (dist is None or dist.is_main)
    return tqdm(iterable, disable=not show, dynamic_ncols=True, **kwargs)


def log(message: str, dist: Optional[Distributed] = None, quiet: bool = False) -> None:
    """Print one line on rank 0 (through tqdm, so bars are not broken)."""
    if quiet or (dist is not None and not dist.is_main):
        return
    tqdm.write(message)


@dataclass(frozen=True)
class Metric:
    """A recipe's validation score: how it is stored, shown and compared."""

    name: str  # key of its history and of the latest score in a model file's metadata
    best_name: str  # key of the best score in a model file's metadata
    label: str  # in progress lines
    tag: str  # in TensorBoard
    higher_is_better: bool
    percent: bool = False  # shown times 100

    def improves(self, value: float, best: Optional[float]) -> bool:
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best

    def format(self, value: float) -> str:
        return f"{100 * value:.2f}" if self.percent else f"{value:.5g}"


@dataclass
class RunFiles:
    """The files every run writes (the base of the recipes' results)."""

    weights: Path  # the best weights by the validation score (the latest without validation)
    last: Path  # the latest weights
    checkpoint: Path  # the resumable checkpoint


@dataclass
class TrainingRun:
    """What :meth:`Trainer.fit` returns; ``history`` holds ``"train_loss"`` (every step, mean
    over the ranks) and the metric's ``(iteration, score)`` pairs, resumed runs included."""

    iteration: int  # completed optimisation steps
    steps_per_epoch: int
    history: Dict[str, list]
    best: Optional[float]  # the best validation score (None without validation)
    model: nn.Module  # the trained network (plain module, on its training device)

    @property
    def epochs(self) -> int:
        """Completed epochs."""
        return self.iteration // self.steps_per_epoch

    def epoch_losses(self) -> List[float]:
        """The mean training loss of every completed epoch."""
        losses, size = self.history["train_loss"], self.steps_per_epoch
        return [sum(losses[i:i + size]) / size for i in range(0, self.epochs * size, size)]

    def scores(self, metric: Optional[Metric]) -> List[Tuple[int, float]]:
        """The ``(iteration, score)`` pairs of every validation."""
        return [tuple(v) for v in self.history.get(metric.name, [])] if metric else []


class Trainer:
    """The training loop of one run; subclass it for a task (see the module docstring).

    Args:
        paths: the run's files: ``weights`` (best, or latest without validation),
            ``last``, ``checkpoint`` (resumable), ``logs`` (TensorBoard folder).
        config: preset, YAML file, dict or config object (``None``: the recipe's
            default); on resume, given options must match the run's config.
        resume: continue ``paths["checkpoint"]`` exactly; without a checkpoint a new run
            starts. Without ``resume`` an existing checkpoint is an error.
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        sync_bn: ``auto``/``on``/``off`` (:func:`d3net.train.distributed.maybe_sync_batchnorm`).
        workers, progress, quiet: DataLoader worker processes; tqdm bars (rank 0); no
            informational lines.
        hparams: fields of :attr:`hparams_type`; ``None`` means "the default, or the
            resumed run's value".

    Raises:
        D3NetError: unknown hyper-parameters, a negative worker count.
    """

    hparams_type: ClassVar[Type[HyperParams]]
    config_type: ClassVar[type]
    task: ClassVar[str]  # "mss" or "seg" (how an official YAML is read)
    kind: ClassVar[str]  # in messages: "music separation", "segmentation"
    reference_batch: ClassVar[int]  # the batch the official learning rate is given for
    length: ClassVar[str]  # the hyper-parameter that sets the run's length: epochs or iters
    metric: ClassVar[Optional[Metric]] = None
    default_config: str  # the preset used when no config is given
    validates = False  # whether the run has validation data (set by train_dataset)

    def __init__(self, paths: Dict[str, Path], config: Any = None, *, resume: bool = False,
                 device: Union[str, torch.device, None] = None, sync_bn: str = "auto",
                 workers: int = 0, progress: bool = True, quiet: bool = False,
                 hparams: Optional[Dict[str, Any]] = None):
        self.hparams_type.check_names(hparams or {})
        if workers < 0:
            raise D3NetError(f"workers must be >= 0, got {workers}")
        self.paths = paths
        self.config_source = config
        self.resume, self.device, self.sync_bn = resume, device, sync_bn
        self.workers, self.progress, self.quiet = workers, progress, quiet
        self.overrides = dict(hparams or {})
        self.run_name = self.kind  # what the run trains, in messages
        self.config_options = {"--config": config}  # the options that chose the config

    # the recipe's part

    def load_config(self, source: Any) -> Any:
        """A config from a preset name, YAML file, dict or config object."""
        return load_config(source, task=self.task)

    def owns(self, config: Any) -> bool:
        """Whether a resumed run's config is one this trainer continues."""
        return isinstance(config, self.config_type)

    def adjust_config(self, config: Any) -> None:
        """Apply the recipe's own config options to a fresh copy (e.g. the head)."""

    def train_dataset(self) -> torch.utils.data.Dataset:
        """The training items (with ``set_epoch(epoch)``); also sets up validation data."""
        raise NotImplementedError

    def initialise(self, model: nn.Module) -> None:
        """Initialise a new run's model in place (not called on resume)."""

    def optimizer(self, model: nn.Module, lr_scale: float
                  ) -> Tuple[torch.optim.Optimizer, Optional[Any]]:
        """The optimiser for lr x ``lr_scale`` and an optional scheduler stepped per epoch."""
        raise NotImplementedError

    def step_lr(self, iteration: int) -> Optional[float]:
        """The learning rate of step ``iteration`` (0-based); ``None``: the scheduler's."""
        return None

    def train_module(self, model: nn.Module) -> nn.Module:
        """The module whose forward the step calls (and DDP wraps)."""
        return model

    def prepare(self, batch: Tuple[Tensor, Tensor]) -> Tuple[Any, Any]:
        """``(inputs, targets)`` of a batch from the loader, on the training device."""
        return tuple(x.to(self.dist.device, non_blocking=True) for x in batch)

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """The scalar training loss (computed in float32)."""
        raise NotImplementedError

    def validate(self, model: nn.Module) -> float:
        """The validation score of the plain model (same value on every rank)."""
        raise NotImplementedError

    def intervals(self, steps_per_epoch: int) -> Tuple[int, int]:
        """``(validate, write the checkpoint)`` every so many steps (0 = never) and at the end."""
        return steps_per_epoch, steps_per_epoch

    def describe(self, lr_scale: float) -> str:
        """The data, optimiser and schedule in the opening line."""
        raise NotImplementedError

    def resume_note(self, saved: HyperParams, iteration: int) -> str:
        """Appended to the "resuming" line: what a longer run changes."""
        before, now = getattr(saved, self.length), getattr(self.hp, self.length)
        return f" (now {now} {LENGTH_UNITS[self.length]}s in all)" if before != now else ""

    # the driver's part

    def files(self) -> Dict[str, Path]:
        """The :class:`RunFiles` fields."""
        return {name: self.paths[name] for name in ("weights", "last", "checkpoint")}

    def say(self, message: str) -> None:
        log(message, self.dist, self.quiet)

    def fit(self) -> TrainingRun:
        """Train (or continue) the run; see the class and module docstrings.

        Raises:
            D3NetError: an existing run without ``resume``, a resumed run whose config or
                hyper-parameters differ, unusable data or devices, a NaN/Inf loss
                (:class:`NonFiniteLossError`).
        """
        self.dist = init_distributed(self.device)
        try:
            return self._fit()
        finally:
            shutdown_distributed(self.dist)

    def _resolve_config(self, source: Any) -> Any:
        """A fresh copy of ``source`` (or the default preset) with the recipe's options."""
        config = self.load_config(source if source is not None else self.default_config)
        if not isinstance(config, self.config_type):
            raise D3NetError(f"{describe(config)} is not a {self.kind} config")
        config = dataclasses.replace(config)  # never modify the caller's object
        self.adjust_config(config)
        return config

    def _start(self) -> Optional[Dict[str, Any]]:
        """The checkpoint to resume (``None``: a new run); sets ``config`` and ``hp``."""
        checkpoint = self.paths["checkpoint"]
        if checkpoint.exists() and not self.resume:
            raise D3NetError(f"{checkpoint} exists: pass --resume to continue that run, or "
                             "choose another --out folder")
        state = load_checkpoint(checkpoint) if self.resume and checkpoint.is_file() else None
        if self.resume and state is None:
            self.say(f"no checkpoint at {checkpoint}: starting a new run")
        if state is None:
            self.config = self._resolve_config(self.config_source)
            self.hp = self.hparams_type.from_overrides(self.overrides)
            return None
        config = from_dict(state["config"])
        if not self.owns(config):
            raise D3NetError(f"{checkpoint} is not a {self.run_name} run")
        given = {k: v for k, v in self.config_options.items() if v is not None}
        if given:
            source = self.config_source if self.config_source is not None else config
            if to_dict(self._resolve_config(source)) != to_dict(config):
                options = " ".join(f"{k} {v}" for k, v in given.items())
                raise D3NetError(f"{options} differs from the config of the run being resumed "
                                 f"({describe(config)}); leave it out to resume")
        self.config = config
        self.hp = self.hparams_type.merge_resumed(state["hparams"], self.overrides)
        return state

    def _fit(self) -> TrainingRun:
        dist = self.dist
        state = self._start()
        hp = self.hp
        seed_everything(hp.seed, 0)  # the same initial weights on every rank
        if dist.is_main:
            self.paths["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
        train_set = self.train_dataset()
        steps_per_epoch = len(epoch_batches(len(train_set), hp.batch_size, 0, hp.seed, dist))
        if steps_per_epoch == 0:
            raise D3NetError(f"{len(train_set)} training item(s) per epoch over "
                             f"{dist.world_size} process(es) make no full batch of "
                             f"{hp.batch_size}; lower --batch-size")
        model, optimizer, scheduler, lr_scale = self._build(state is None)
        run = TrainingRun(iteration=0, steps_per_epoch=steps_per_epoch,
                          history={"train_loss": []}, best=None, model=model)
        if self.metric is not None:
            run.history[self.metric.name] = []
        if state is not None:
            restore_checkpoint(state, model, optimizer, scheduler, self.amp, dist)
            run.iteration, run.best = int(state["iteration"]), state.get("best_metric")
            run.history = {k: list(v) for k, v in state["extra"]["history"].items()}
            saved = self.hparams_type.from_dict(state["hparams"])
            self.say(f"resuming {self.paths['checkpoint']} at iteration {run.iteration} "
                     f"(epoch {run.epochs})" + self.resume_note(saved, run.iteration))
        else:
            seed_everything(hp.seed, dist.rank)
        train_model = wrap_ddp(self.train_module(model), dist)

        length, unit = getattr(hp, self.length), LENGTH_UNITS[self.length]
        self.say(f"training {describe(self.config)}: {model_io.count_parameters(model):,} "
                 f"parameters, {self.describe(lr_scale)}, batch {hp.batch_size} x "
                 f"{dist.world_size} process(es), {steps_per_epoch} steps per epoch, "
                 f"{length} {unit}s, "
                 f"{self.amp.describe()}{', channels-last' if self.channels_last else ''}"
                 f"{'' if hp.recompute == 'none' else ', recompute ' + hp.recompute}, "
                 f"on {dist.device}")
        total = length * steps_per_epoch if self.length == "epochs" else length
        if run.iteration >= total:
            done = run.epochs if self.length == "epochs" else run.iteration
            self.say(f"the run already has {done} {unit}s (>= {length}); nothing to do "
                     f"(pass a larger --{self.length} to continue)")
        self._loop(run, train_model, train_set, optimizer, scheduler, total)
        dist.broadcast_buffers(model)
        dist.barrier()
        return run

    def _build(self, new_run: bool) -> Tuple[nn.Module, torch.optim.Optimizer, Any, float]:
        """The model (initialised when ``new_run``) on its device and in its layout, the
        optimiser, its scheduler and the lr scale; sets ``amp`` and ``channels_last``."""
        hp, dist = self.hp, self.dist
        self.amp = MixedPrecision(hp.amp, dist.device)
        self.channels_last = bool(hp.channels_last)
        if self.channels_last and self.amp.dtype == torch.bfloat16 and dist.device.type == "cpu":
            raise D3NetError("--channels-last with bfloat16 --amp on a CPU: oneDNN's "
                             "convolution backward crashes on it for some layer widths "
                             "(torch 2.13); use one of the two")
        model = model_io.create(self.config, recompute=hp.recompute)
        if new_run:
            self.initialise(model)
        model.to(dist.device, memory_format=self._layout())
        model = maybe_sync_batchnorm(model, self.sync_bn, dist)
        lr_scale = (dist.world_size * hp.batch_size / self.reference_batch if hp.lr_scaling
                    else 1.0)
        optimizer, scheduler = self.optimizer(model, lr_scale)
        return model, optimizer, scheduler, lr_scale

    def _layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _loop(self, run: TrainingRun, train_model: nn.Module, train_set: Any,
              optimizer: torch.optim.Optimizer, scheduler: Any, total: int) -> None:
        """Steps until ``total``, validating and saving at the recipe's intervals."""
        hp, dist, steps_per_epoch = self.hp, self.dist, run.steps_per_epoch
        logger = Logger(self.paths["logs"], dist)
        bar = progress_bar(total=total, initial=min(run.iteration, total),
                           enabled=self.progress, dist=dist, desc=f"train {self.task}",
                           unit="step")
        validate_every, checkpoint_every = self.intervals(steps_per_epoch)
        window: List[float] = []  # the losses since the last line
        started = time.time()
        train_model.train()
        while run.iteration < total:
            epoch, offset = divmod(run.iteration, steps_per_epoch)
            train_set.set_epoch(epoch)
            batches = epoch_batches(len(train_set), hp.batch_size, epoch, hp.seed, dist)
            loader = torch.utils.data.DataLoader(
                train_set, batch_sampler=batches[offset:offset + total - run.iteration],
                num_workers=self.workers, pin_memory=dist.device.type == "cuda")
            for batch in loader:
                lr = self.step_lr(run.iteration)
                for group in optimizer.param_groups if lr is not None else ():
                    group["lr"] = lr
                lr = optimizer.param_groups[0]["lr"]
                value = self._step(train_model, optimizer, batch, epoch, run.iteration)
                run.iteration += 1
                run.history["train_loss"].append(value)
                window.append(value)
                logger.scalars({"loss/train": value, "lr": lr}, run.iteration)
                bar.update()
                bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.3g}")
                if scheduler is not None and run.iteration % steps_per_epoch == 0:
                    scheduler.step()
                validate = self.validates and _due(run.iteration, validate_every, total)
                if not (validate or _due(run.iteration, checkpoint_every, total)):
                    continue
                line = (f"epoch {run.epochs}/{hp.epochs}" if self.length == "epochs"
                        else f"iteration {run.iteration}/{total}")
                line += f": train loss {sum(window) / len(window):.5g}, lr {lr:.3g}"
                improved = False
                if validate:
                    dist.broadcast_buffers(run.model)
                    score = self.validate(run.model)
                    # inference (Segmenter) may have changed the layout: put the run's back,
                    # so that a run resumed from this checkpoint continues the same numbers
                    run.model.to(memory_format=self._layout())
                    train_model.train()
                    run.history[self.metric.name].append((run.iteration, score))
                    improved = self.metric.improves(score, run.best)
                    run.best = score if improved else run.best
                    logger.scalars({self.metric.tag: score}, run.iteration)
                    line += (f", {self.metric.label} {self.metric.format(score)}"
                             + (" (best)" if improved else ""))
                self._save(run, optimizer, scheduler, window, improved)
                logger.flush()
                self.say(f"{line}, {time.time() - started:.0f} s")
                window, started = [], time.time()
        bar.close()
        logger.close()

    def _step(self, train_model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
              epoch: int, iteration: int) -> float:
        """One optimisation step; returns the loss averaged over the ranks."""
        inputs, targets = self.prepare(batch)
        if self.channels_last and isinstance(inputs, Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.amp.autocast():
            outputs = train_model(inputs)
        loss = self.loss(outputs, targets)
        value = self.dist.mean(loss.detach())
        check_finite_loss(value, epoch=epoch, iteration=iteration + 1,
                          checkpoint=self.paths["checkpoint"])
        optimizer.zero_grad(set_to_none=True)
        self.amp.backward_and_step(loss, optimizer)
        return value

    def _save(self, run: TrainingRun, optimizer: torch.optim.Optimizer, scheduler: Any,
              window: List[float], improved: bool) -> None:
        """Write ``last``, the best (or latest) weights and the checkpoint. Collective."""
        meta = {"iteration": str(run.iteration), "epoch": str(run.epochs),
                "train_loss": f"{sum(window) / len(window):.6g}"}
        scores = run.scores(self.metric)
        if scores:
            meta[self.metric.name] = f"{scores[-1][1]:.6g}"
        if run.best is not None:
            meta[self.metric.best_name] = f"{run.best:.6g}"
        if self.dist.is_main:
            model_io.save(run.model, self.paths["last"], extra=meta)
            if improved or not self.validates or run.best is None:  # the best, else latest
                model_io.save(run.model, self.paths["weights"], extra=meta)
        state = checkpoint_state(
            run.model, optimizer, scheduler, self.amp, self.dist, epoch=run.epochs,
            iteration=run.iteration, best_metric=run.best, config=to_dict(self.config),
            hparams=self.hp.to_dict(), extra={"history": run.history})
        save_checkpoint(self.paths["checkpoint"], state, self.dist)


def _due(iteration: int, every: int, total: int) -> bool:
    """Whether a task done ``every`` steps (0 = never) and at the end is due now."""
    return bool(every) and (iteration % every == 0 or iteration == total)


__all__ = ["Trainer", "TrainingRun", "RunFiles", "Metric", "NonFiniteLossError",
           "check_finite_loss", "Logger", "progress_bar", "log", "LENGTH_UNITS"]
