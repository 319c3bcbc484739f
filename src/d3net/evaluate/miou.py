"""Confusion matrix, per-class IoU and mean IoU for semantic segmentation.

IoU of class c is ``TP / (TP + FP + FN)`` accumulated over the whole dataset (not averaged
per image). mIoU is the mean over the classes present in the ground truth *or* the
prediction (the others have no IoU), so a class predicted but absent from the ground truth
counts with IoU 0, as in the official Cityscapes script; on the full Cityscapes val set
every class occurs. Pixels whose ground truth is ``ignore_index`` are left out entirely.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..errors import D3NetError
from ..palette import CITYSCAPES_CLASSES, IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``(classes, classes)`` confusion matrix: rows are ground truth,
    columns are predictions.

    ``matrix`` is an int64 tensor (matrices of several parts add up); under DDP call
    :meth:`all_reduce` on every rank to sum the ranks' matrices before reading the scores.
    Without ``device``, the matrix moves to the device of the first batch counted, so
    GPU predictions are counted on the GPU.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX,
                 device: Optional[torch.device | str] = None):
        if num_classes < 1:
            raise D3NetError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._follow_input_device = device is None

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch.

        Args:
            prediction: predicted class ids, ``(batch, height, width)`` or ``(height,
                width)`` (take ``logits.argmax(1)`` first).
            target: ground-truth ids of the same shape; ``ignore_index`` pixels are
                skipped.
        """
        prediction = torch.as_tensor(prediction)
        target = torch.as_tensor(target)
        if prediction.shape != target.shape:
            raise D3NetError(f"prediction shape {tuple(prediction.shape)} does not match "
                             f"label shape {tuple(target.shape)}")
        if prediction.is_floating_point() or target.is_floating_point():
            raise D3NetError("prediction and label must hold integer class ids, not floats "
                             "(take logits.argmax(1) first)")
        if self._follow_input_device:
            self.matrix = self.matrix.to(prediction.device)
            self._follow_input_device = False
        device = self.matrix.device
        prediction = prediction.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)
        valid = target != self.ignore_index
        prediction, target = prediction[valid], target[valid]
        if target.numel() == 0:
            return
        c = self.num_classes
        if int(target.min()) < 0 or int(target.max()) >= c:
            bad = target[(target < 0) | (target >= c)][0]
            raise D3NetError(f"label holds class id {int(bad)}, outside 0..{c - 1} and not "
                             f"the ignore id {self.ignore_index}")
        if int(prediction.min()) < 0 or int(prediction.max()) >= c:
            bad = prediction[(prediction < 0) | (prediction >= c)][0]
            raise D3NetError(f"prediction holds class id {int(bad)}, outside 0..{c - 1}")
        counts = torch.bincount(target * c + prediction, minlength=c * c)
        self.matrix += counts.view(c, c)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrices of all DDP ranks in place; a no-op outside torch.distributed.

        With the NCCL backend the matrix travels through the current GPU and comes back.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        matrix = self.matrix
        if dist.get_backend() == "nccl" and matrix.device.type != "cuda":
            matrix = matrix.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
        if matrix is not self.matrix:
            self.matrix.copy_(matrix)
        return self

    def _counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        matrix = self.matrix.to(torch.float64)
        true_positive = matrix.diagonal()
        ground_truth = matrix.sum(dim=1)  # TP + FN
        predicted = matrix.sum(dim=0)     # TP + FP
        return true_positive, ground_truth, predicted

    def iou(self) -> torch.Tensor:
        """Per-class IoU ``(classes,)`` float64 in [0, 1]; NaN for a class absent from
        both the ground truth and the prediction."""
        tp, gt, pred = self._counts()
        union = gt + pred - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth or the prediction (see
        the module docstring); NaN when no pixel has been counted."""
        iou = self.iou()
        defined = ~iou.isnan()
        return float(iou[defined].mean()) if defined.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted (non-ignored) pixels; NaN when none was counted."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")

    def class_accuracy(self) -> torch.Tensor:
        """Per-class recall ``TP / (TP + FN)`` ``(classes,)``; NaN where the class is absent
        from the ground truth."""
        tp, gt, _ = self._counts()
        return torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))

    def format_table(self, class_names: Optional[Sequence[str]] = None) -> str:
        """A per-class IoU table in percent, then mIoU and pixel accuracy.

        ``class_names`` defaults to the Cityscapes names for 19 classes, else
        ``class 0``, ``class 1``, ...; classes without an IoU show ``-``.
        """
        if class_names is None:
            class_names = (CITYSCAPES_CLASSES if self.num_classes == len(CITYSCAPES_CLASSES)
                           else [f"class {c}" for c in range(self.num_classes)])
        if len(class_names) != self.num_classes:
            raise D3NetError(f"{len(class_names)} class names given for {self.num_classes} classes")
        iou, accuracy = self.iou(), self.class_accuracy()
        width = max(len("class"), len("pixel accuracy"), *(len(n) for n in class_names))

        def percent(value: float) -> str:
            return "-" if value != value else f"{100 * value:.2f}"  # NaN != NaN

        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}", "-" * (width + 16)]
        for name, class_iou, class_acc in zip(class_names, iou.tolist(), accuracy.tolist()):
            lines.append(f"{name:<{width}}  {percent(class_iou):>6}  {percent(class_acc):>6}")
        lines.append("-" * (width + 16))
        defined = int((~iou.isnan()).sum())
        lines.append(f"{'mIoU':<{width}}  {percent(self.miou()):>6}  "
                     f"({defined} of {self.num_classes} classes present)")
        lines.append(f"{'pixel accuracy':<{width}}  {percent(self.pixel_accuracy()):>6}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())}, "
                f"miou={self.miou():.4f})")
