"""Images in and out: reading (EXIF orientation applied), the network's normalisation, label
PNGs, and the files ``d3net segment`` writes.

The one place that knows image files: inference (:class:`d3net.segment.Segmenter`),
training and evaluation data (:mod:`d3net.data.cityscapes`) read through it. Label maps
hold *train ids* (0..18 for the 19 evaluated Cityscapes classes, 255 = ignore); the
Cityscapes label ids (0..33) exist only on disk.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import D3NetError
from .palette import CITYSCAPES_CLASSES, IGNORE_INDEX, overlay
from .utils import PathLike, atomic_path, check_unique_outputs, check_writable

#: Mean and standard deviation of the official recipe (ImageNet's), per RGB channel, in
#: 0..255 units; the defaults of :class:`d3net.configs.SegConfig`.
CITYSCAPES_MEAN = (123.675, 116.28, 103.53)
CITYSCAPES_STD = (58.395, 57.12, 57.375)
NUM_CLASSES = len(CITYSCAPES_CLASSES)

#: Official Cityscapes label id -> train id for the 19 evaluated classes (from the
#: published label definitions); every other id (void, parking, rail track, guard rail,
#: bridge, tunnel, polegroup, caravan, trailer, ...) maps to 255.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
_LABEL_TO_TRAIN_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_LABEL_TO_TRAIN_LUT[list(LABEL_ID_TO_TRAIN_ID)] = list(LABEL_ID_TO_TRAIN_ID.values())
_TRAIN_TO_LABEL_LUT = np.zeros(256, dtype=np.uint8)  # ignore becomes 0 ("unlabeled")
_TRAIN_TO_LABEL_LUT[list(LABEL_ID_TO_TRAIN_ID.values())] = list(LABEL_ID_TO_TRAIN_ID)

#: EXIF tag holding how a camera's stored pixels must be turned for display (1 = as stored,
#: 2..8 = mirrored and/or turned by 90, 180 or 270 degrees).
EXIF_ORIENTATION = 0x0112

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

#: Cityscapes label ids (0..33), the files Cityscapes' evaluation scripts and test server read.
LABEL_IDS_SUFFIX = "_labelIds.png"
#: Train ids (0..18 for Cityscapes; the model's class index for any model).
TRAIN_IDS_SUFFIX = "_trainIds.png"
OVERLAY_SUFFIX = "_overlay.png"

ImageLike = Union[Image.Image, np.ndarray]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Official Cityscapes label ids (0..33, as in ``*_labelIds.png``; any shape, values in
    0..255) -> uint8 train ids of the same shape: 0..18, or 255 for classes not evaluated."""
    return _LABEL_TO_TRAIN_LUT[np.asarray(label_ids).astype(np.intp, copy=False)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`label_ids_to_train_ids`; 255 (and any id > 18) becomes 0."""
    return _TRAIN_TO_LABEL_LUT[np.asarray(train_ids).astype(np.intp, copy=False)]


# --------------------------------------------------------------------------- reading

def read_image(path: PathLike) -> Image.Image:
    """Open and decode an image file (label PNGs included) the way image viewers show it.

    An EXIF orientation (phone photos are often stored landscape with "turn 90 degrees" in
    their EXIF) is applied with Pillow's ``ImageOps.exif_transpose``, so that labels and
    overlays line up with the photo as every viewer displays it. An image without one is
    returned as decoded (no copy).

    Raises:
        D3NetError: naming the file, when it is missing, a folder or not a readable image.
    """
    path = Path(path)
    if path.is_dir():
        raise D3NetError(f"{path} is a folder, not an image")
    try:
        image = Image.open(path)
        image.load()  # decodes and, for single-frame files, closes the file
        if image.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
        return image
    except FileNotFoundError:
        raise D3NetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise D3NetError(f"cannot read image {path}: {error}") from None


def read_label(path: PathLike, label_ids: bool = False) -> np.ndarray:
    """Read a single-channel label PNG as a uint8 ``(height, width)`` train-id map.

    Args:
        path: label image (8-bit grayscale or palette; 16-bit accepted if values <= 255).
        label_ids: the file holds official Cityscapes label ids; map them to train ids.
    """
    image = read_image(path)
    if image.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
        raise D3NetError(f"label {path} has mode {image.mode}; expected a single-channel "
                         "PNG of class ids (8-bit grayscale or palette), not a colour image")
    values = np.array(image)  # writable, so torch.from_numpy takes it without a warning
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise D3NetError(f"label {path} holds ids outside 0..255 "
                             f"({values.min()}..{values.max()})")
        values = values.astype(np.uint8)
    return label_ids_to_train_ids(values) if label_ids else values


def find_images(inputs: Sequence[PathLike], out_dir: Optional[PathLike] = None
                ) -> List[Tuple[Path, str]]:
    """Expand files and folders into ``(image file, output stem)`` pairs.

    A file gives its own stem; a folder is searched recursively for image files and each
    keeps its path relative to the folder (``sub/dir/name``), so outputs mirror the
    folder's layout.

    Raises:
        D3NetError: for a missing input, an empty folder, two inputs mapping to the same
            output name, or (with ``out_dir``) an output folder that cannot be written.
    """
    pairs: List[Tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise D3NetError(f"{path}: no image files in this folder "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            pairs += [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.is_file():
            pairs.append((path, path.stem))
        else:
            raise D3NetError(f"input not found: {path}")
    check_unique_outputs(((file, f"{stem}{TRAIN_IDS_SUFFIX}") for file, stem in pairs),
                         hint="segment them into different output folders")
    if out_dir is not None:
        check_writable(*{Path(out_dir, stem).parent for _, stem in pairs})
    return list(dict.fromkeys(pairs))


# ----------------------------------------------------------------------- pixels

def image_to_array(image: ImageLike) -> np.ndarray:
    """An image as float32 RGB ``(height, width, 3)`` in 0..255 units.

    Accepted: PIL modes RGB, RGBA/RGBX (alpha dropped, not composited), L and LA
    (gray replicated to three channels), 1, P and PA (palette expanded), CMYK and YCbCr
    (converted by Pillow), I;16* and I (16-bit: divided by 257 so 65535 -> 255);
    numpy uint8 or uint16 arrays shaped ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
    ``(H, W, 4)``. Anything else raises :class:`D3NetError`.
    """
    if isinstance(image, Image.Image):
        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            image = np.asarray(image)
            if image.ndim != 2:
                raise D3NetError(f"unsupported {mode} image with shape {image.shape}")
            if image.size and (image.min() < 0 or image.max() > 65535):
                raise D3NetError(f"unsupported image mode {mode}: values outside the 16-bit "
                                 f"range 0..65535 ({image.min()}..{image.max()})")
            return np.repeat(image.astype(np.float32)[..., None] / 257.0, 3, axis=2)
        if mode in ("P", "PA"):
            # Through RGBA so that palette transparency is dropped without a warning.
            image = image.convert("RGBA")
        elif mode not in ("RGB", "RGBA", "RGBX", "L", "LA", "1", "CMYK", "YCbCr"):
            raise D3NetError(f"unsupported image mode {mode!r}; use RGB, RGBA, grayscale (L), "
                             "16-bit grayscale (I;16) or palette (P) images")
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if not isinstance(image, np.ndarray):
        raise D3NetError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise D3NetError(f"image arrays must be uint8 or uint16, got {image.dtype} "
                         "(float arrays are ambiguous: 0..1 or 0..255?)")
    scale = 1.0 if image.dtype == np.uint8 else 1.0 / 257.0
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise D3NetError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[..., :3].astype(np.float32) * scale


def normalize_image(image: ImageLike, mean: Sequence[float] = CITYSCAPES_MEAN,
                    std: Sequence[float] = CITYSCAPES_STD) -> torch.Tensor:
    """The network's input, float32 ``(3, height, width)`` ``(x - mean) / std``, from an image
    :func:`image_to_array` accepts; ``mean`` and ``std`` per RGB channel in 0..255 units."""
    array = image_to_array(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


# --------------------------------------------------------------------------- writing

class SegmentationFiles(NamedTuple):
    """The files written for one image (see :func:`write_outputs`)."""

    train_ids: Path
    label_ids: Optional[Path]  # None unless the model predicts the 19 Cityscapes classes
    overlay: Path


def write_outputs(image: ImageLike, labels: np.ndarray, out_dir: PathLike, stem: str,
                  alpha: float = 0.5, label_ids: bool = True) -> SegmentationFiles:
    """Write the label maps and the overlay of one image into ``out_dir``, atomically.

    Args:
        image: the image as segmented (for the overlay).
        labels: uint8 train ids ``(H, W)``.
        stem: file name stem (may contain ``/`` for sub-folders).
        label_ids: also write Cityscapes label ids (only meaningful for a model of the
            19 Cityscapes classes).

    Files: 8-bit grayscale ``<stem>_trainIds.png`` and ``<stem>_labelIds.png`` (Cityscapes
    label ids 0..33, which Cityscapes' scripts and test server read), and
    ``<stem>_overlay.png`` (palette colours blended over the image).
    """
    out_dir = Path(out_dir)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    files = SegmentationFiles(
        train_ids=out_dir / f"{stem}{TRAIN_IDS_SUFFIX}",
        label_ids=out_dir / f"{stem}{LABEL_IDS_SUFFIX}" if label_ids else None,
        overlay=out_dir / f"{stem}{OVERLAY_SUFFIX}")
    # the image as the network saw it (16-bit scaled down, gray replicated, alpha dropped)
    rgb = np.clip(np.rint(image_to_array(image)), 0, 255).astype(np.uint8)
    blended = overlay(rgb, labels, alpha=alpha)
    with contextlib.ExitStack() as renames:  # the image's files appear together, or none
        Image.fromarray(labels, mode="L").save(
            renames.enter_context(atomic_path(files.train_ids)), format="PNG")
        if files.label_ids is not None:
            Image.fromarray(train_ids_to_label_ids(labels), mode="L").save(
                renames.enter_context(atomic_path(files.label_ids)), format="PNG")
        Image.fromarray(blended, mode="RGB").save(
            renames.enter_context(atomic_path(files.overlay)), format="PNG")
    return files
