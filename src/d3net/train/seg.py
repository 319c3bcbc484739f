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
  PyTorch's SyncBatchNorm does not run); mixed precision on GPUs;
* initialisation: NNabla's defaults that the official model uses (Glorot-uniform
  convolutions, zero biases: :func:`d3net.train.init.glorot_init_`), then the ImageNet
  backbone when one is given (``pretrained_backbone``, see
  :func:`d3net.models.load_backbone_weights`).

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

Run folder: ``model.safetensors`` (best validation mIoU; the latest weights without
validation or before the first one), ``last.safetensors``, ``train.ckpt`` (resumable,
written atomically every ``checkpoint_interval`` iterations), ``logs/`` (TensorBoard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models as model_io
from ..configs import SegConfig
from ..data.cityscapes import AugmentedDataset, CityscapesDataset, TrainTransform
from ..errors import D3NetError
from ..evaluate.seg import evaluate_seg
from ..palette import IGNORE_INDEX
from ..utils import PathLike, parse_size
from .hparams import AMP_HELP, HyperParams, option, parse_range
from .init import glorot_init_
from .solver import Metric, RunFiles, Trainer

HEADS = ("fcn", "ocr")


@dataclass
class SegHyperParams(HyperParams):
    """Hyper-parameters of a segmentation training run (defaults: the paper's recipe);
    each field's help is in its :func:`~d3net.train.hparams.option`."""

    iters: int = option(80_000, "total optimisation steps", resumable=True, metavar="N")
    batch_size: int = option(8, "images per optimisation step and process", metavar="N")
    crop: Tuple[int, int] = option((512, 1024), "training crop", metavar="HxW",
                                   parse=parse_size, shown="512x1024")
    scale_range: Optional[Tuple[float, float]] = option(
        (0.5, 2.0), "random rescaling before cropping, 'none' to disable",
        metavar="LOW,HIGH|none", parse=parse_range)
    flip: bool = option(True, "random horizontal flips")
    lr: float = option(0.01, "base learning rate of the poly schedule (for 8 images, see "
                             "lr_scaling)", metavar="X")
    min_lr: float = option(1e-4, "floor of the poly schedule", metavar="X")
    power: float = option(0.9, "exponent of the poly schedule", metavar="X")
    momentum: float = option(0.9, "SGD momentum", metavar="X")
    weight_decay: float = option(5e-4, "L2 penalty on every parameter (SGD weight_decay)",
                                 metavar="X")
    lr_scaling: bool = option(True, "scale lr and min_lr by processes x batch / 8 (the "
                                    "official multi-GPU rule)")
    aux_weight: float = option(0.4, "weight of the OCR head's auxiliary loss", metavar="X")
    amp: Optional[bool] = option(None, AMP_HELP, shown="on GPUs, off on CPUs")
    val_interval: int = option(4000, "validate every N iterations and at the end (0 = never)",
                               resumable=True, metavar="N")
    val_mode: str = option("whole", "validation inference", choices=("whole", "slide"))
    checkpoint_interval: int = option(1000, "write the checkpoint and last weights every N "
                                            "iterations (and at every validation and the end)",
                                      resumable=True, metavar="N")

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        if self.scale_range is not None:
            self.scale_range = tuple(float(s) for s in self.scale_range)  # type: ignore
        self._require([(self.iters >= 1, "iters must be >= 1"),
                       (self.batch_size >= 1, "batch size must be >= 1"),
                       (len(self.crop) == 2 and min(self.crop) >= 1,
                        f"crop must be (height, width) with positive sides, got {self.crop}"),
                       (self.lr > 0, "learning rate must be > 0"),
                       (0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]"),
                       (self.power > 0, "power must be > 0"),
                       (self.weight_decay >= 0, "weight decay must be >= 0"),
                       (self.val_interval >= 0, "val_interval must be >= 0"),
                       (self.checkpoint_interval >= 1, "checkpoint_interval must be >= 1"),
                       (self.val_mode in ("whole", "slide"),
                        "val_mode must be whole or slide")])


@dataclass
class SegTrainResult(RunFiles):
    """What :func:`train_seg` returns: the run's files, the training loss of every iteration
    so far (mean over the ranks), ``(iteration, mIoU)`` of every validation, the best mIoU
    (``None`` without validation) and the trained network (plain module, on its device)."""

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


class _TrainForward(nn.Module):
    """Routes DDP's ``forward`` to ``forward_train`` (logits and auxiliary logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor):
        return self.model.forward_train(x)


class SegTrainer(Trainer):
    """The segmentation recipe on the shared driver; the arguments are :func:`train_seg`'s."""

    hparams_type = SegHyperParams
    config_type = SegConfig
    task = "seg"
    kind = "segmentation"
    reference_batch = 8  # the batch the official learning rate is given for
    length = "iters"
    default_config = "d3net-s"
    metric = Metric(name="val_miou", best_name="best_miou", label="val mIoU", tag="val/mIoU",
                    higher_is_better=True, percent=True)

    def __init__(self, root: Union[PathLike, torch.utils.data.Dataset], out: PathLike,
                 config: Any = None, *, head: Optional[str] = None,
                 pretrained_backbone: Optional[PathLike] = None,
                 val_data: Optional[Union[PathLike, torch.utils.data.Dataset]] = None,
                 **kwargs: Any):
        super().__init__(run_paths(out), config, **kwargs)
        if head is not None and head not in HEADS:
            raise D3NetError(f"head must be 'fcn' or 'ocr', got {head!r}")
        self.root, self.head, self.val_data = root, head, val_data
        self.pretrained_backbone = pretrained_backbone
        self.config_options["--head"] = head

    def adjust_config(self, config: SegConfig) -> None:
        if self.head is not None:
            config.head = self.head

    def train_dataset(self) -> AugmentedDataset:
        root, val_data, config, hp = self.root, self.val_data, self.config, self.hp
        own_data = isinstance(root, torch.utils.data.Dataset)
        train = root if own_data else CityscapesDataset(root, "train",
                                                        num_classes=config.num_classes)
        if not hasattr(train, "load"):
            raise D3NetError("the training dataset needs a load(index) -> (image, labels) "
                             "method (use d3net.data.cityscapes.ImageFolderDataset for your "
                             "own data)")
        if not hp.val_interval:
            val_data = None
        elif val_data is None and not own_data and (Path(root) / "leftImg8bit" / "val").is_dir():
            val_data = root
        if val_data is not None and not isinstance(val_data, torch.utils.data.Dataset):
            val_data = CityscapesDataset(val_data, "val", num_classes=config.num_classes)
        self.val_set, self.train_size = val_data, len(train)
        self.validates = val_data is not None
        transform = TrainTransform(crop=hp.crop, scale_range=hp.scale_range, flip=hp.flip,
                                   mean=config.mean, std=config.std)
        return AugmentedDataset(train, transform, hp.seed)

    def initialise(self, model: nn.Module) -> None:
        glorot_init_(model, conv="uniform")
        if self.pretrained_backbone is not None:
            count = len(model_io.load_backbone_weights(
                model, self.pretrained_backbone,
                progress=self.progress and not self.quiet and self.dist.is_main))
            self.say(f"backbone initialised from {self.pretrained_backbone} ({count} tensors)")

    def optimizer(self, model: nn.Module, lr_scale: float):
        self.base_lr, self.floor_lr = self.hp.lr * lr_scale, self.hp.min_lr * lr_scale
        return torch.optim.SGD(model.parameters(), lr=self.base_lr, momentum=self.hp.momentum,
                               weight_decay=self.hp.weight_decay), None

    def step_lr(self, iteration: int) -> float:
        return poly_lr(iteration, self.hp.iters, self.base_lr, self.hp.power, self.floor_lr)

    def train_module(self, model: nn.Module) -> nn.Module:
        return _TrainForward(model)

    def loss(self, outputs: Tuple[Tensor, Optional[Tensor]], targets: Tensor) -> Tensor:
        logits, aux = outputs
        return seg_loss(logits, targets, aux, self.hp.aux_weight)

    def validate(self, model: nn.Module) -> float:
        matrix = evaluate_seg(self.val_set, model, mode=self.hp.val_mode,
                              distributed=self.dist.enabled,
                              progress=self.progress and self.dist.is_main)
        miou = matrix.miou()
        return 0.0 if math.isnan(miou) else miou

    def intervals(self, steps_per_epoch: int) -> Tuple[int, int]:
        return self.hp.val_interval, self.hp.checkpoint_interval

    def describe(self, lr_scale: float) -> str:
        validation = len(self.val_set) if self.val_set is not None else 0
        return (f"{self.train_size} training / {validation} validation images, crop "
                f"{self.hp.crop[0]}x{self.hp.crop[1]}, SGD lr {self.hp.lr * lr_scale:g} (poly "
                f"{self.hp.power:g}, floor {self.hp.min_lr * lr_scale:g})")

    def resume_note(self, saved: SegHyperParams, iteration: int) -> str:
        if saved.iters == self.hp.iters or iteration >= self.hp.iters:
            return ""
        old = poly_lr(iteration, saved.iters, self.base_lr, self.hp.power, self.floor_lr)
        new = self.step_lr(iteration)
        return (f"; poly schedule recomputed over {self.hp.iters} iterations (was "
                f"{saved.iters}): lr {new:.4g} instead of {old:.4g}")


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
        resume: continue ``out/train.ckpt`` exactly (see :class:`~d3net.train.solver.Trainer`);
            a larger ``iters`` extends it, with the poly schedule recomputed over the new
            total.
        pretrained_backbone: ImageNet backbone weights for a new run (see
            :func:`d3net.models.load_backbone_weights`).
        val_data: a validation dataset or Cityscapes folder (its ``val`` split); default:
            ``root``'s val split when it has one.
        device, sync_bn, workers, progress, quiet: how to run
            (:class:`d3net.train.solver.Trainer`).
        **hparams: fields of :class:`SegHyperParams`; ``None`` means "default, or the
            resumed run's value".

    Returns:
        A :class:`SegTrainResult`.

    Raises:
        D3NetError: an unknown option or head, unusable data, an existing run without
            ``resume``, a resumed run with other settings, a NaN/Inf loss.
    """
    trainer = SegTrainer(root, out, config, head=head, pretrained_backbone=pretrained_backbone,
                         val_data=val_data, resume=resume, device=device, sync_bn=sync_bn,
                         workers=workers, progress=progress, quiet=quiet, hparams=hparams)
    run = trainer.fit()
    return SegTrainResult(**trainer.files(), iterations=run.iteration,
                          train_loss=run.history["train_loss"],
                          val_miou=run.scores(SegTrainer.metric), best_miou=run.best,
                          model=run.model)


__all__ = ["SegHyperParams", "SegTrainer", "SegTrainResult", "train_seg", "run_paths",
           "poly_lr", "seg_loss", "HEADS"]
