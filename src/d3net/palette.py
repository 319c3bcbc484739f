"""Cityscapes class names, the 19-class colour palette, and colour overlays.

Label maps here hold *train ids*: 0..18 for the 19 evaluated Cityscapes classes and 255
for "ignore" (void pixels). The palette is the one in the official D3Net-S config
(``palette`` in ``D3Net_S.yaml``), which is the standard Cityscapes colour table.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

from .errors import D3NetError

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

#: RGB colour of each train id, shape (19, 3), uint8.
CITYSCAPES_PALETTE: np.ndarray = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
CITYSCAPES_PALETTE.setflags(write=False)

#: Colour given to ignore (255) and to any id without a palette entry.
IGNORE_COLOR = (0, 0, 0)

LabelMap = Union[np.ndarray, torch.Tensor]


def _as_label_array(label: LabelMap) -> np.ndarray:
    """A (H, W) integer label map as a numpy array (any integer dtype)."""
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise D3NetError(f"label map must be 2-D (height, width), got shape {tuple(label.shape)}")
    if not np.issubdtype(label.dtype, np.integer):
        raise D3NetError(f"label map must hold integer class ids, got dtype {label.dtype}")
    return label


def colorize(label: LabelMap, palette: np.ndarray = CITYSCAPES_PALETTE) -> np.ndarray:
    """Paint train ids ``(height, width)`` with ``palette`` (``(classes, 3)`` uint8, at most
    256 rows): RGB uint8 ``(height, width, 3)``; 255 (ignore) and ids without a colour are
    black."""
    label = _as_label_array(label)
    table = np.full((256, 3), IGNORE_COLOR, dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    # Out-of-range ids (negative or >255) fall onto the ignore colour too.
    ids = np.where((label >= 0) & (label < 256), label, IGNORE_INDEX).astype(np.intp)
    return table[ids]


def overlay(image: np.ndarray | Image.Image, label: LabelMap, alpha: float = 0.5,
            palette: np.ndarray = CITYSCAPES_PALETTE) -> np.ndarray:
    """Blend the colourised label map over an image.

    ``out = (1 - alpha) * image + alpha * colour``, except at ignore pixels (255), which
    keep the image unchanged.

    Args:
        image: RGB image (height, width, 3) uint8, or a PIL image (converted to RGB).
        label: train ids (height, width), same size as the image.
        alpha: weight of the label colours, in [0, 1].
    Returns:
        RGB image (height, width, 3), uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise D3NetError(f"overlay alpha must be in [0, 1], got {alpha}")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    label = _as_label_array(label)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise D3NetError(f"overlay needs an RGB uint8 image (height, width, 3), got shape "
                         f"{tuple(image.shape)} dtype {image.dtype}")
    if image.shape[:2] != label.shape:
        raise D3NetError(f"image size {image.shape[:2]} and label size {label.shape} differ")
    colours = colorize(label, palette).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    blended = np.where((label == IGNORE_INDEX)[..., None], image, np.rint(blended))
    return np.clip(blended, 0, 255).astype(np.uint8)

