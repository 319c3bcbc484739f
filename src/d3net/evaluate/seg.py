"""Cityscapes-style evaluation of a segmentation model: every image of a split segmented at
full resolution by :class:`d3net.segment.Segmenter`, counted into one
:class:`d3net.evaluate.miou.ConfusionMatrix` (255 ignored), as the official script does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..data.cityscapes import CityscapesDataset, EvalTransform
from ..errors import D3NetError
from ..models import load
from ..segment import Segmenter
from ..utils import PathLike, resolve_device, unwrap
from .miou import ConfusionMatrix


def evaluate_seg(root: Union[PathLike, torch.utils.data.Dataset],
                 model: Union[nn.Module, Segmenter, PathLike], split: str = "val",
                 device: Union[str, torch.device, None] = None, limit: Optional[int] = None,
                 workers: int = 0, distributed: bool = False, progress: bool = True,
                 **options) -> ConfusionMatrix:
    """Segment every image of a split and score it against its labels.

    Args:
        root: a Cityscapes folder (``leftImg8bit/<split>``, ``gtFine/<split>``), or any
            dataset whose items are ``(raw PIL image, uint8 train ids (H, W))`` when read
            with its ``load(index)`` method (as :class:`d3net.data.cityscapes.
            SegmentationDataset`), or ``(normalised image (3, H, W), labels (H, W))`` items.
        model: a segmentation network, a :class:`Segmenter` (used with its own inference
            options; ``options`` are then ignored), or a model spec (a weight name such as
            ``official-d3net-s``, a model file, a run folder or an official ``.h5``; see
            :mod:`d3net.models.loading`).
        split: the Cityscapes split (``val``; ``train`` works too).
        device: where to run (default: where the model is; CUDA when loading a path and
            CUDA is available).
        limit: score only the first ``limit`` images (quick checks).
        workers: DataLoader worker processes for reading images.
        distributed: under an initialised ``torch.distributed`` group, each rank scores
            every ``world_size``-th image and the confusion matrices are summed over the
            ranks (a collective call: every rank must make it).
        progress: show a progress bar.
        **options: inference options of :class:`Segmenter` (``mode``, ``scales``, ``flip``,
            ``tta``, ``crop``, ``stride``, ``batch_size``).

    Returns:
        The :class:`ConfusionMatrix` (``.miou()``, ``.iou()``, ``.format_table()``). The
        model is left in the training/eval mode it came in.
    """
    segmenter, network, was_training = _segmenter(model, device, progress, **options)
    dataset = _dataset(root, split, segmenter)
    indices = list(range(len(dataset)))
    if limit is not None:
        indices = indices[:max(0, int(limit))]
    rank, world = 0, 1
    if distributed and dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    indices = indices[rank::world]

    matrix = ConfusionMatrix(segmenter.num_classes)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=None, shuffle=False,
        num_workers=workers)
    network.eval()
    try:
        for image, label in tqdm(loader, desc=f"evaluate {split}", unit="image", leave=False,
                                 disable=not (progress and rank == 0)):
            labels = segmenter.predict(image)
            matrix.update(labels.cpu(), label)
    finally:
        network.train(was_training)
    if distributed:
        matrix.all_reduce()
    return matrix


def _segmenter(model, device, progress: bool, **options) -> tuple:
    """(Segmenter, the network inside it, whether that network was in training mode) for
    a network, a Segmenter or a model spec."""
    if isinstance(model, Segmenter):
        if device is not None:
            model.to(device)
        return model, model.model, model.model.training
    if isinstance(model, (str, os.PathLike)):
        model = load(model, task="seg", device=resolve_device(device), progress=progress)
    if not isinstance(model, nn.Module):
        raise D3NetError(f"expected a segmentation model, a Segmenter or a model spec, got "
                         f"{type(model).__name__}")
    model = unwrap(model)  # DistributedDataParallel: evaluate the plain network
    was_training = model.training
    return Segmenter(model, device=device, **options), model, was_training


class _Normalised(torch.utils.data.Dataset):
    """Items of a raw-image dataset normalised with the model's mean and std."""

    def __init__(self, dataset, segmenter: Segmenter):
        self.dataset, self.mean, self.std = dataset, segmenter.mean, segmenter.std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset.load(index)
        if label is None:
            raise D3NetError(f"image {index} of the evaluation set has no label")
        return EvalTransform(self.mean, self.std)(image, label)


def _dataset(root, split: str, segmenter: Segmenter):
    if isinstance(root, torch.utils.data.Dataset):
        return _Normalised(root, segmenter) if hasattr(root, "load") else root
    dataset = CityscapesDataset(Path(root), split)
    if not dataset.has_labels:
        raise D3NetError(f"{Path(root) / 'gtFine' / split}: the {split} split has no labels to "
                         "score against (Cityscapes publishes none for test)")
    return _Normalised(dataset, segmenter)
