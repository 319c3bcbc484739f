"""The semantic segmentation training recipe (Cityscapes), as the paper and the official code.

Recipe (paper Sec. 5.1 and Sony's official ``train.py``), every value overridable through
:class:`SegHyperParams`:

* data: the train split, augmented by :class:`d3net.data.cityscapes.TrainTransform`:
  random scale 0.5-2, random 512x1024 crop (padding labelled 255), horizontal flip,
  normalisation with the config's mean/std;
* loss: softmax cross-entropy ignoring label 255; with the OCR head (``head="ocr"``)
  plus 0.4 x the cross-entropy of its auxiliary soft-region classifier, as in OCRNet;
* optimiser: SGD, momentum 0.9, weight decay 5e-4 on every parameter (as NNabla's
  ``solver.weight_decay``), batch 8, 80k iterations;
* schedule: the official "poly" rule with a floor,
  ``lr(i) = (base - floor) * (1 - i / iters) ** 0.9 + floor``, base 0.01, floor 1e-4,
  recomputed from the iteration count every step (so a resumed run with a larger
  ``iters`` continues on the schedule of the new total);
* synchronized BatchNorm across GPUs (``sync_bn="auto"``; plain BatchNorm on CPU, where
  PyTorch's SyncBatchNorm does not run); mixed precision on CUDA;
* initialisation: NNabla's defaults that the official model uses (Glorot-uniform
  convolutions, zero biases), then the ImageNet backbone when one is given
  (``pretrained_backbone``: a weight name such as ``official-d3net-s-backbone``, an official
  backbone ``.h5`` or one of our model files; :func:`d3net.models.load_backbone_weights`).

Where the official code differs or needs a choice:

* its multi-GPU rule scales the learning rate (and the floor) by
  ``processes * batch / 8``; so does ``lr_scaling=True`` here (``batch_size`` is per
  process). It also divides ``max_iter`` by that factor; here ``iters`` is what you ask
  for. Its weight decay is multiplied by the process count because NNabla sums the
  ranks' gradients; DDP averages them, so the decay stays 5e-4;
* its data pipeline also applies mmsegmentation's photometric distortion and re-draws
  crops holding more than 75 % of one class; ours does neither;
* its loss averages over all pixels, ignored ones counting as zero; ours averages over
  the labelled pixels (the usual PyTorch ``ignore_index`` mean);
* it validates nowhere; here the val split is scored (mIoU) every ``val_interval``
  iterations and the best weights are kept.

Run folder (``../shared/INTERFACES.md``): ``model.safetensors`` (best validation mIoU; the
latest weights without validation or before the first one), ``last.safetensors``,
``train.ckpt`` (resumable, written atomically every ``checkpoint_interval`` iterations),
``logs/`` (TensorBoard).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models as model_io
from ..configs import SegConfig, describe, from_dict, load_config, to_dict
from ..errors import D3NetError
from ..palette import IGNORE_INDEX
from ..utils import PathLike
from . import loop

REFERENCE_BATCH = 8
"""The batch size the official learning rate is given for."""
RESUMABLE_CHANGES = ("iters", "val_interval", "checkpoint_interval")
"""Hyper-parameters that may differ when a run is resumed."""


@dataclass
class SegHyperParams(loop.HyperParams):
    """Hyper-parameters of a segmentation training run (defaults: the paper's recipe).

    Attributes:
        iters: total optimisation steps.
        batch_size: images per step and process.
        crop: training crop ``(height, width)``.
        scale_range: random rescaling ``(low, high)`` before cropping, or ``None``.
        flip: random horizontal flips.
        lr: base learning rate of the poly schedule (for ``REFERENCE_BATCH`` images).
        min_lr: the schedule's floor.
        power: the schedule's exponent.
        momentum: SGD momentum.
        weight_decay: L2 penalty on every parameter (SGD ``weight_decay``).
        lr_scaling: multiply ``lr`` and ``min_lr`` by ``processes * batch_size / 8``.
        aux_weight: weight of the OCR head's auxiliary loss (ignored for the FCN head).
        amp: mixed precision on CUDA (ignored on CPU).
        val_interval: score the validation split every this many iterations (and at the
            end); 0 = never.
        val_mode: ``whole`` or ``slide`` inference for validation.
        checkpoint_interval: write ``train.ckpt`` and ``last.safetensors`` every this many
            iterations (and at every validation and at the end).
        seed: base seed of the run (init, sampling order, augmentations).
    """

    iters: int = 80_000
    batch_size: int = 8
    crop: Tuple[int, int] = (512, 1024)
    scale_range: Optional[Tuple[float, float]] = (0.5, 2.0)
    flip: bool = True
    lr: float = 0.01
    min_lr: float = 1e-4
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_scaling: bool = True
    aux_weight: float = 0.4
    amp: bool = True
    val_interval: int = 4000
    val_mode: str = "whole"
    checkpoint_interval: int = 1000
    seed: int = 42

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        if self.scale_range is not None:
            self.scale_range = tuple(float(s) for s in self.scale_range)  # type: ignore
        checks = [(self.iters >= 1, "iters must be >= 1"),
                  (self.batch_size >= 1, "batch size must be >= 1"),
                  (len(self.crop) == 2 and min(self.crop) >= 1,
                   f"crop must be (height, width) with positive sides, got {self.crop}"),
                  (self.lr > 0, "learning rate must be > 0"),
                  (0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]"),
                  (self.power > 0, "power must be > 0"),
                  (self.weight_decay >= 0, "weight decay must be >= 0"),
                  (self.val_interval >= 0, "val_interval must be >= 0"),
                  (self.checkpoint_interval >= 1, "checkpoint_interval must be >= 1"),
                  (self.val_mode in ("whole", "slide"), "val_mode must be whole or slide")]
        self._require(checks)


@dataclass
class SegTrainResult:
    """What :func:`train_seg` returns.

    Attributes:
        weights: ``RUNDIR/model.safetensors`` (best mIoU, or the latest without validation).
        last: ``RUNDIR/last.safetensors``.
        checkpoint: ``RUNDIR/train.ckpt``.
        iterations: completed iterations.
        train_loss: training loss of every iteration so far (mean over the ranks).
        val_miou: ``(iteration, mIoU)`` of every validation so far.
        best_miou: the best validation mIoU (None without validation).
        model: the trained network (plain module, on its training device).
    """

    weights: Path
    last: Path
    checkpoint: Path
    iterations: int
    train_loss: List[float] = field(default_factory=list)
    val_miou: List[Tuple[int, float]] = field(default_factory=list)
    best_miou: Optional[float] = None
    model: Optional[nn.Module] = field(default=None, repr=False)


def run_paths(out: PathLike) -> Dict[str, Path]:
    """The files a segmentation run writes in ``out``."""
    out = Path(out)
    return {"weights": out / "model.safetensors", "last": out / "last.safetensors",
            "checkpoint": out / "train.ckpt", "logs": out / "logs"}


# ----------------------------------------------------------------------------------------
# schedule, loss, initialisation, pretrained backbone
# ----------------------------------------------------------------------------------------

def poly_lr(iteration: int, total: int, base: float = 0.01, power: float = 0.9,
            floor: float = 1e-4) -> float:
    """The official poly schedule: ``(base - floor) * (1 - iteration / total) ** power +
    floor`` for ``iteration`` = 0 .. total - 1 (steps already taken)."""
    progress = min(max(iteration / float(total), 0.0), 1.0)
    return (base - floor) * (1.0 - progress) ** power + floor


def seg_loss(logits: Tensor, labels: Tensor, aux_logits: Optional[Tensor] = None,
             aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over the labelled pixels (+ ``aux_weight`` x the auxiliary one).

    Args:
        logits: ``(batch, classes, height, width)``.
        labels: ``(batch, height, width)`` train ids, ``ignore_index`` where unlabelled.
        aux_logits: the OCR head's auxiliary logits (same shape as ``logits``), or None.

    A batch without any labelled pixel gives a loss of 0 (not NaN).
    """
    def cross_entropy(x: Tensor) -> Tensor:
        total = F.cross_entropy(x.float(), labels, ignore_index=ignore_index, reduction="sum")
        return total / (labels != ignore_index).sum().clamp(min=1)

    loss = cross_entropy(logits)
    if aux_logits is not None and aux_weight:
        loss = loss + aux_weight * cross_entropy(aux_logits)
    return loss


@torch.no_grad()
def official_init_(model: nn.Module) -> nn.Module:
    """NNabla's default initialisation, which the official model uses, in place:
    Glorot-uniform convolution weights (``xavier_uniform_``), zero biases, BatchNorm
    weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
    return model


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------

class AugmentedDataset(torch.utils.data.Dataset):
    """Training items ``(image (3, h, w), labels (h, w))`` with reproducible augmentation.

    The random scale, crop and flip of item ``index`` in epoch ``epoch`` come from a
    generator seeded with ``(seed, epoch, index)``, so they do not depend on DataLoader
    workers or on where a run was interrupted: a resumed run sees the same crops.

    Args:
        dataset: a raw dataset with ``load(index) -> (PIL image, uint8 train ids)``
            (:class:`d3net.data.cityscapes.SegmentationDataset`).
        transform: a :class:`d3net.data.cityscapes.TrainTransform`.
        seed: the run's seed.
    """

    def __init__(self, dataset, transform, seed: int = 0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, label = self.dataset.load(index)
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
        return self.transform(image, label, generator=generator)


def _datasets(root: Union[PathLike, Any], val_data: Any, config: SegConfig,
              hp: SegHyperParams):
    from ..data.cityscapes import CityscapesDataset, TrainTransform

    if isinstance(root, torch.utils.data.Dataset):
        train = root
    else:
        train = CityscapesDataset(root, "train", num_classes=config.num_classes)
    if not hasattr(train, "load"):
        raise D3NetError("the training dataset needs a load(index) -> (image, labels) method "
                         "(use d3net.data.cityscapes.ImageFolderDataset for your own data)")
    if not hp.val_interval:
        val_data = None
    elif val_data is None and not isinstance(root, torch.utils.data.Dataset):
        if (Path(root) / "leftImg8bit" / "val").is_dir():
            val_data = CityscapesDataset(root, "val", num_classes=config.num_classes)
    elif val_data is not None and not isinstance(val_data, torch.utils.data.Dataset):
        val_data = CityscapesDataset(val_data, "val", num_classes=config.num_classes)
    transform = TrainTransform(crop=hp.crop, scale_range=hp.scale_range, flip=hp.flip,
                               mean=config.mean, std=config.std)
    return AugmentedDataset(train, transform, hp.seed), val_data


def _epoch_batches(dataset_size: int, epoch: int, hp: SegHyperParams,
                   dist: loop.Distributed) -> List[List[int]]:
    """This rank's batches of one epoch: a (seed, epoch) shuffle sharded over the ranks."""
    sampler = torch.utils.data.DistributedSampler(
        range(dataset_size), num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
        seed=hp.seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    full = len(indices) - len(indices) % hp.batch_size
    return [indices[i:i + hp.batch_size] for i in range(0, full, hp.batch_size)]


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------

class _TrainForward(nn.Module):
    """Routes DDP's ``forward`` to ``forward_train`` (logits and auxiliary logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor):
        return self.model.forward_train(x)


def _resolve_config(config: Union[str, Path, SegConfig, Dict[str, Any], None],
                    head: Optional[str]) -> SegConfig:
    resolved = load_config(config if config is not None else "d3net-s", task="seg")
    if not isinstance(resolved, SegConfig):
        raise D3NetError(f"{describe(resolved)} is not a segmentation config")
    resolved = dataclasses.replace(resolved)  # never modify the caller's object
    if head is not None:
        if head not in ("fcn", "ocr"):
            raise D3NetError(f"head must be 'fcn' or 'ocr', got {head!r}")
        resolved.head = head
    return resolved


def train_seg(root: Union[PathLike, torch.utils.data.Dataset], out: PathLike,
              config: Union[str, Path, SegConfig, Dict[str, Any], None] = None, *,
              head: Optional[str] = None, resume: bool = False,
              pretrained_backbone: Optional[PathLike] = None,
              val_data: Optional[Union[PathLike, torch.utils.data.Dataset]] = None,
              device: Union[str, torch.device, None] = None, sync_bn: str = "auto",
              workers: int = 0, progress: bool = True, quiet: bool = False,
              **hparams: Any) -> SegTrainResult:
    """Train a D3Net segmentation model on Cityscapes (or your own images).

    Works in one process or under ``torchrun`` (one process per GPU, or several CPU
    processes with gloo): batches sharded over the ranks, only rank 0 writes.

    Args:
        root: a Cityscapes folder (its ``train`` split is trained on, its ``val`` split, if
            present, validated on), or a training dataset with ``load(index)`` (e.g.
            :class:`d3net.data.cityscapes.ImageFolderDataset`).
        out: run folder (created).
        config: preset (``d3net-s``, ``d3net-l``), YAML file (ours or the official
            format), dict or :class:`SegConfig`; default ``d3net-s``. On resume the
            checkpoint's config is used (a different one is refused).
        head: ``fcn`` or ``ocr`` (overrides the config's head).
        resume: continue ``out/train.ckpt`` exactly (weights, optimiser, iteration, RNG);
            a larger ``iters`` extends the run, with the poly schedule recomputed over the
            new total. Without a checkpoint a new run starts. Without ``resume`` an
            existing checkpoint is an error.
        pretrained_backbone: ImageNet backbone weights for a new run (see
            :func:`d3net.models.load_backbone_weights`).
        val_data: a validation dataset or Cityscapes folder (its ``val`` split); default:
            ``root``'s val split when it has one.
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        sync_bn: ``auto``/``on``/``off`` (see :func:`loop.maybe_sync_batchnorm`).
        workers: DataLoader worker processes.
        progress: tqdm bars (rank 0).
        quiet: no informational lines.
        **hparams: fields of :class:`SegHyperParams`; ``None`` means "default, or the
            resumed run's value".

    Returns:
        A :class:`SegTrainResult`.
    """
    unknown = sorted(set(hparams) - {f.name for f in dataclasses.fields(SegHyperParams)})
    if unknown:
        raise D3NetError(f"unknown training option(s): {', '.join(unknown)}")
    if workers < 0:
        raise D3NetError(f"workers must be >= 0, got {workers}")
    paths = run_paths(out)
    dist = loop.init_distributed(device)
    try:
        return _train(root, val_data, paths, config, head, resume, pretrained_backbone, dist,
                      sync_bn, workers, progress, quiet, hparams)
    finally:
        loop.shutdown_distributed(dist)


def _train(root, val_data, paths: Dict[str, Path], config_source: Any, head: Optional[str],
           resume: bool, pretrained: Optional[PathLike], dist: loop.Distributed, sync_bn: str,
           workers: int, progress: bool, quiet: bool,
           overrides: Dict[str, Any]) -> SegTrainResult:
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
        if not isinstance(config, SegConfig):
            raise D3NetError(f"{checkpoint} is not a segmentation run")
        if config_source is not None or head is not None:
            wanted = _resolve_config(config_source if config_source is not None else config,
                                     head)
            if to_dict(wanted) != to_dict(config):
                raise D3NetError(f"the --config/--head given differ from the run being resumed "
                                 f"({describe(config)}); leave them out to resume")
        hp = SegHyperParams.merge_resumed(state["hparams"], overrides, RESUMABLE_CHANGES)
    else:
        config = _resolve_config(config_source, head)
        hp = SegHyperParams(**{k: v for k, v in overrides.items() if v is not None})

    loop.seed_everything(hp.seed, 0)  # same initial weights on every rank
    train_set, val_set = _datasets(root, val_data, config, hp)
    steps_per_epoch = len(_epoch_batches(len(train_set), 0, hp, dist))
    if steps_per_epoch == 0:
        raise D3NetError(f"{len(train_set)} training image(s) over {dist.world_size} "
                         f"process(es) make no full batch of {hp.batch_size}; lower --batch-size")

    model = model_io.create(config)
    if state is None:
        official_init_(model)
        if pretrained is not None:
            count = len(model_io.load_backbone_weights(
                model, pretrained, progress=not quiet and dist.is_main))
            say(f"backbone initialised from {pretrained} ({count} tensors)")
    model.to(dist.device)
    model = loop.maybe_sync_batchnorm(model, sync_bn, dist)

    scale = dist.world_size * hp.batch_size / REFERENCE_BATCH if hp.lr_scaling else 1.0
    base_lr, floor_lr = hp.lr * scale, hp.min_lr * scale
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=hp.momentum,
                                weight_decay=hp.weight_decay)
    amp = loop.MixedPrecision(hp.amp, dist.device)
    iteration, best = 0, None
    history: Dict[str, list] = {"train_loss": [], "val_miou": []}
    if state is not None:
        loop.restore_checkpoint(state, model, optimizer, None, amp, dist)
        iteration, best = int(state["iteration"]), state.get("best_metric")
        history = {k: list(v) for k, v in state["extra"].get("history", history).items()}
        before = int(state["hparams"]["iters"])
        message = f"resuming {checkpoint} at iteration {iteration}"
        if hp.iters != before and iteration < hp.iters:
            old = poly_lr(iteration, before, base_lr, hp.power, floor_lr)
            new = poly_lr(iteration, hp.iters, base_lr, hp.power, floor_lr)
            message += (f"; poly schedule recomputed over {hp.iters} iterations (was "
                        f"{before}): lr {new:.4g} instead of {old:.4g}")
        say(message)
    else:
        loop.seed_everything(hp.seed, dist.rank)
    train_model = loop.wrap_ddp(_TrainForward(model), dist)
    if dist.is_main:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)

    logger = loop.Logger(paths["logs"], dist)
    say(f"training {describe(config)}: {model_io.count_parameters(model):,} parameters, "
        f"{len(train_set)} training / {len(val_set) if val_set is not None else 0} validation "
        f"images, batch {hp.batch_size} x {dist.world_size} process(es), crop "
        f"{hp.crop[0]}x{hp.crop[1]}, {hp.iters} iterations, lr {base_lr:g} (poly, floor "
        f"{floor_lr:g}), on {dist.device}")
    if iteration >= hp.iters:
        say(f"the run already has {iteration} iterations (>= {hp.iters}); nothing to do "
            "(pass a larger --iters to continue)")

    def save_state(validated_best: bool) -> None:
        meta = {"iteration": str(iteration)}
        if history["train_loss"]:
            meta["train_loss"] = f"{history['train_loss'][-1]:.6g}"
        if best is not None:
            meta["best_miou"] = f"{best:.6g}"
        if dist.is_main:
            model_io.save(model, paths["last"], extra=meta)
            if validated_best or val_set is None or best is None:  # best, else latest
                model_io.save(model, paths["weights"], extra=meta)
        ckpt = loop.checkpoint_state(
            model, optimizer, None, amp, dist, epoch=iteration // steps_per_epoch,
            iteration=iteration, best_metric=best, config=to_dict(config),
            hparams=hp.to_dict(), extra={"history": history})
        loop.save_checkpoint(checkpoint, ckpt, dist)

    bar = loop.progress_bar(total=hp.iters, initial=min(iteration, hp.iters), enabled=progress,
                            dist=dist, desc="train seg", unit="it")
    started = time.time()
    train_model.train()
    while iteration < hp.iters:
        epoch, offset = divmod(iteration, steps_per_epoch)
        train_set.set_epoch(epoch)
        batches = _epoch_batches(len(train_set), epoch, hp, dist)[offset:]
        batches = batches[:hp.iters - iteration]
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=batches, num_workers=workers,
            pin_memory=dist.device.type == "cuda")
        for images, labels in loader:
            lr = poly_lr(iteration, hp.iters, base_lr, hp.power, floor_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(dist.device, non_blocking=True)
            labels = labels.to(dist.device, non_blocking=True)
            with amp.autocast():
                logits, aux = train_model(images)
            loss = seg_loss(logits, labels, aux, hp.aux_weight)
            value = dist.mean(loss.detach())
            loop.check_finite_loss(value, iteration=iteration + 1, checkpoint=checkpoint)
            optimizer.zero_grad(set_to_none=True)
            amp.backward_and_step(loss, optimizer)
            iteration += 1
            history["train_loss"].append(value)
            logger.scalars({"loss/train": value, "lr": lr}, iteration)
            bar.update()
            bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.3g}")

            validate = val_set is not None and (iteration % hp.val_interval == 0
                                                or iteration == hp.iters)
            improved = False
            if validate:
                miou = _validate(model, val_set, hp, dist, progress)
                train_model.train()
                history["val_miou"].append((iteration, miou))
                improved = best is None or miou > best
                best = miou if improved else best
                logger.scalar("val/mIoU", miou, iteration)
                say(f"iteration {iteration}/{hp.iters}: loss {value:.4g}, lr {lr:.3g}, "
                    f"val mIoU {100 * miou:.2f}" + (" (best)" if improved else "")
                    + f", {time.time() - started:.0f} s")
            if validate or iteration % hp.checkpoint_interval == 0 or iteration == hp.iters:
                save_state(improved)
                logger.flush()
                if not validate:
                    say(f"iteration {iteration}/{hp.iters}: loss {value:.4g}, lr {lr:.3g}, "
                        f"checkpoint written, {time.time() - started:.0f} s")
    bar.close()
    logger.close()
    _sync_buffers(model, dist)
    dist.barrier()
    return SegTrainResult(weights=paths["weights"], last=paths["last"], checkpoint=checkpoint,
                          iterations=iteration, train_loss=history["train_loss"],
                          val_miou=[tuple(v) for v in history["val_miou"]], best_miou=best,
                          model=model)


def _sync_buffers(model: nn.Module, dist: loop.Distributed) -> None:
    """Copy rank 0's BatchNorm statistics to every rank.

    DDP broadcasts them at each training forward, but the last step's update stays
    per-rank; validation and the returned model should be the same on every rank.
    """
    if not dist.enabled:
        return
    import torch.distributed as torch_dist
    for buffer in model.buffers():
        torch_dist.broadcast(buffer.data, src=0)


def _validate(model: nn.Module, val_set, hp: SegHyperParams, dist: loop.Distributed,
              progress: bool) -> float:
    """Validation mIoU, images sharded over the ranks (same value on every rank)."""
    from ..evaluate.seg import evaluate_seg
    _sync_buffers(model, dist)
    matrix = evaluate_seg(val_set, model, mode=hp.val_mode, distributed=dist.enabled,
                          progress=progress and dist.is_main)
    miou = matrix.miou()
    return 0.0 if math.isnan(miou) else miou


__all__ = ["SegHyperParams", "SegTrainResult", "train_seg", "run_paths", "poly_lr",
           "seg_loss", "official_init_", "AugmentedDataset",
           "REFERENCE_BATCH"]
