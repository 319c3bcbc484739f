"""Cityscapes and plain image folders for semantic segmentation, with their transforms.

Datasets yield ``(image, label)``: ``image`` a normalised float tensor ``(3, height,
width)`` and ``label`` a long tensor ``(height, width)`` of train ids (0..18, 255 =
ignore). Transforms use torch and Pillow only.

The Cityscapes layout read here is the official one::

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   (preferred)
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png        (converted on the fly)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import D3NetError
from ..palette import IGNORE_INDEX

#: Mean and standard deviation of the official recipe, per RGB channel, in 0..255 units.
CITYSCAPES_MEAN = (123.675, 116.28, 103.53)
CITYSCAPES_STD = (58.395, 57.12, 57.375)
NUM_CLASSES = 19

#: Official Cityscapes label id -> train id for the 19 evaluated classes (from the
#: published label definitions); every other id (void, parking, rail track, guard rail,
#: bridge, tunnel, polegroup, caravan, trailer, ...) maps to 255.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
#: Inverse table; ignore (255) becomes label id 0 ("unlabeled").
TRAIN_ID_TO_LABEL_ID: dict[int, int] = {t: i for i, t in LABEL_ID_TO_TRAIN_ID.items()}

_LABEL_TO_TRAIN_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _LABEL_TO_TRAIN_LUT[_label_id] = _train_id
_TRAIN_TO_LABEL_LUT = np.zeros(256, dtype=np.uint8)
for _train_id, _label_id in TRAIN_ID_TO_LABEL_ID.items():
    _TRAIN_TO_LABEL_LUT[_train_id] = _label_id

#: EXIF tag holding how a camera's stored pixels must be turned for display (1 = as stored,
#: 2..8 = mirrored and/or turned by 90, 180 or 270 degrees).
EXIF_ORIENTATION = 0x0112

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = Union[Image.Image, np.ndarray]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map official Cityscapes label ids (0..33, as in ``*_labelIds.png``) to train ids.

    Args:
        label_ids: integer array of any shape with values in 0..255.
    Returns:
        uint8 array of the same shape: 0..18, or 255 for classes not evaluated.
    """
    return _LABEL_TO_TRAIN_LUT[np.asarray(label_ids).astype(np.intp, copy=False)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`label_ids_to_train_ids`; 255 (and any id > 18) becomes 0."""
    return _TRAIN_TO_LABEL_LUT[np.asarray(train_ids).astype(np.intp, copy=False)]


# --------------------------------------------------------------------------- images

def image_to_array(image: ImageLike) -> np.ndarray:
    """An image as float32 RGB ``(height, width, 3)`` in 0..255 units.

    Accepted: PIL modes RGB, RGBA/RGBX (alpha dropped, not composited), L and LA
    (gray replicated to three channels), 1, P and PA (palette expanded), CMYK and YCbCr
    (converted by Pillow), I;16* and I (16-bit: divided by 257 so 65535 -> 255);
    numpy uint8 or uint16 arrays shaped ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
    ``(H, W, 4)``. Anything else raises :class:`D3NetError`.
    """
    if isinstance(image, Image.Image):
        return _pil_to_array(image)
    if isinstance(image, np.ndarray):
        return _numpy_to_array(image)
    raise D3NetError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        array = np.asarray(image)[..., :3]
    elif mode in ("L", "LA", "1"):
        gray = np.asarray(image.convert("L"))
        array = np.repeat(gray[..., None], 3, axis=2)
    elif mode in ("P", "PA"):
        # Through RGBA so that palette transparency is dropped without a warning.
        array = np.asarray(image.convert("RGBA"))[..., :3]
    elif mode in ("CMYK", "YCbCr"):
        array = np.asarray(image.convert("RGB"))
    elif mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if values.ndim != 2:
            raise D3NetError(f"unsupported {mode} image with shape {values.shape}")
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise D3NetError(f"unsupported image mode {mode}: values outside the 16-bit "
                             f"range 0..65535 ({values.min()}..{values.max()})")
        gray = values.astype(np.float32) / 257.0
        return np.repeat(gray[..., None], 3, axis=2)
    else:
        raise D3NetError(f"unsupported image mode {mode!r}; use RGB, RGBA, grayscale (L), "
                         "16-bit grayscale (I;16) or palette (P) images")
    return array.astype(np.float32)


def _numpy_to_array(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        scale = 1.0
    elif array.dtype == np.uint16:
        scale = 1.0 / 257.0
    else:
        raise D3NetError(f"image arrays must be uint8 or uint16, got {array.dtype} "
                         "(float arrays are ambiguous: 0..1 or 0..255?)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise D3NetError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[..., :3].astype(np.float32) * scale


def normalize_image(image: ImageLike, mean: Sequence[float] = CITYSCAPES_MEAN,
                    std: Sequence[float] = CITYSCAPES_STD) -> torch.Tensor:
    """Turn an image into the network's input: ``(x - mean) / std`` in 0..255 units.

    Args:
        image: PIL image or numpy array, any mode :func:`image_to_array` accepts.
        mean, std: per-channel statistics (RGB order), in 0..255 units.
    Returns:
        float32 tensor ``(3, height, width)``.
    """
    array = image_to_array(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def _label_tensor(label: Optional[np.ndarray], size: tuple[int, int],
                  ignore_index: int) -> torch.Tensor:
    """A long tensor (H, W); an absent label becomes all ``ignore_index``."""
    if label is None:
        return torch.full(size, ignore_index, dtype=torch.long)
    label = np.asarray(label)
    if label.shape != size:
        raise D3NetError(f"label size {label.shape} differs from image size {size}")
    return torch.from_numpy(label.astype(np.int64))


# ----------------------------------------------------------------------- transforms

class EvalTransform:
    """Normalise only: ``(image, label) -> (float (3, H, W), long (H, W))``.

    A missing label (``None``, e.g. the Cityscapes test split) becomes a map of
    ``ignore_index``.
    """

    def __init__(self, mean: Sequence[float] = CITYSCAPES_MEAN,
                 std: Sequence[float] = CITYSCAPES_STD, ignore_index: int = IGNORE_INDEX):
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index

    def __call__(self, image: ImageLike,
                 label: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize_image(image, self.mean, self.std)
        return x, _label_tensor(label, tuple(x.shape[1:]), self.ignore_index)

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std})"


class TrainTransform:
    """The official training augmentation: random scale, random crop, flip, normalise.

    What it computes: rescale both sides by one factor drawn uniformly from
    ``scale_range`` (image bilinear with half-pixel centres, as
    ``F.interpolate(..., align_corners=False)``; label nearest with the same centres);
    pad bottom and right up to the crop size (image with the mean, i.e. 0 after
    normalisation; label with ``ignore_index``); take a random ``crop`` = (height,
    width) window; flip horizontally with probability 0.5; normalise with
    ``mean``/``std`` (0..255 units).

    How: only the crop window of the rescaled image is ever computed (sampled straight
    from the original with ``grid_sample``), so a 2x scale of a 1024x2048 frame costs
    no more than the 512x1024 crop itself.

    Randomness comes from ``generator`` when given, else from torch's global generator.
    Leave ``generator`` unset for DataLoader workers: each worker gets its own global
    seed, while one generator object would be copied into every worker and give all of
    them the same augmentations. Pass one (or ``generator=`` per call) for reproducible
    tests.

    Returns ``(image float32 (3, crop_h, crop_w), label int64 (crop_h, crop_w))``.
    """

    def __init__(self, crop: Optional[Union[int, Sequence[int]]] = (512, 1024),
                 scale_range: Optional[Sequence[float]] = (0.5, 2.0), flip: bool = True,
                 mean: Sequence[float] = CITYSCAPES_MEAN,
                 std: Sequence[float] = CITYSCAPES_STD, ignore_index: int = IGNORE_INDEX,
                 generator: Optional[torch.Generator] = None):
        if isinstance(crop, int):
            crop = (crop, crop)
        if crop is not None:
            crop = tuple(int(c) for c in crop)
            if len(crop) != 2 or min(crop) <= 0:
                raise D3NetError(f"crop must be (height, width) with positive sides, got {crop}")
        if scale_range is not None:
            scale_range = tuple(float(s) for s in scale_range)
            if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
                raise D3NetError(f"scale range must be (low, high) with 0 < low <= high, "
                                 f"got {scale_range}")
        self.crop = crop
        self.scale_range = scale_range
        self.flip = flip
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index
        self.generator = generator

    def __call__(self, image: ImageLike, label: Optional[np.ndarray],
                 generator: Optional[torch.Generator] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = generator if generator is not None else self.generator
        pixels = torch.from_numpy(np.ascontiguousarray(image_to_array(image).transpose(2, 0, 1)))
        height, width = pixels.shape[1:]
        y = _label_tensor(label, (height, width), self.ignore_index)

        scale = 1.0
        if self.scale_range is not None:
            low, high = self.scale_range
            scale = low + (high - low) * torch.rand((), generator=gen).item()
        scaled = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        if self.crop is None:
            top, left, window = 0, 0, scaled
        else:
            window = self.crop
            # Padding to the crop size, then a uniformly placed window.
            top = int(torch.randint(0, max(scaled[0], window[0]) - window[0] + 1, (),
                                    generator=gen))
            left = int(torch.randint(0, max(scaled[1], window[1]) - window[1] + 1, (),
                                     generator=gen))
        x, y = self._resampled_window(pixels, y, scaled, top, left, window)
        if self.flip and torch.rand((), generator=gen).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()

    def _resampled_window(self, pixels: torch.Tensor, label: torch.Tensor,
                          scaled: tuple[int, int], top: int, left: int,
                          window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``top..top+h`` and columns ``left..left+w`` of the image and label rescaled
        to ``scaled``, normalised; positions beyond the rescaled image are padding.

        Args:
            pixels: float (3, H, W) in 0..255; label: long (H, W).
        Returns:
            image float (3, h, w), label long (h, w).
        """
        height, width = pixels.shape[1:]
        rows = torch.arange(top, top + window[0], dtype=torch.float64)
        cols = torch.arange(left, left + window[1], dtype=torch.float64)
        row_pad, col_pad = rows >= scaled[0], cols >= scaled[1]
        if scaled == (height, width):
            r = rows.long().clamp(max=height - 1)
            c = cols.long().clamp(max=width - 1)
            x = pixels[:, r][:, :, c]
            y = label[r][:, c]
        else:
            # Output pixel j of a length-n resize of a length-m axis samples the source at
            # (j + 0.5) m / n - 0.5; grid_sample wants it as 2 (j + 0.5) / n - 1.
            grid_y = (2 * (rows + 0.5) / scaled[0] - 1).float()
            grid_x = (2 * (cols + 0.5) / scaled[1] - 1).float()
            grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)
            x = F.grid_sample(pixels[None], grid[None], mode="bilinear",
                              padding_mode="border", align_corners=False)[0]
            r = torch.floor((rows + 0.5) * height / scaled[0]).long().clamp(max=height - 1)
            c = torch.floor((cols + 0.5) * width / scaled[1]).long().clamp(max=width - 1)
            y = label[r][:, c]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        x = (x - mean) / std
        pad = row_pad[:, None] | col_pad[None, :]
        if pad.any():
            x = x.masked_fill(pad, 0.0)
            y = y.masked_fill(pad, self.ignore_index)
        return x, y

    def __repr__(self) -> str:
        return (f"TrainTransform(crop={self.crop}, scale_range={self.scale_range}, "
                f"flip={self.flip}, mean={self.mean}, std={self.std})")


# ------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Sample:
    """One image and where its label is.

    ``label`` is None for unlabelled images; ``label_ids`` says the label PNG holds the
    34 official Cityscapes ids (converted to train ids on load) instead of train ids.
    """

    image: Path
    label: Optional[Path]
    label_ids: bool = False


def read_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open and decode an image file the way image viewers show it.

    The one function through which d3net reads images: for inference
    (:class:`d3net.segment.Segmenter`), training data and evaluation (the datasets here),
    label PNGs included. An EXIF orientation (phone photos are often stored landscape with
    "turn 90 degrees" in their EXIF) is applied with Pillow's ``ImageOps.exif_transpose``,
    so that labels and overlays line up with the photo as every viewer displays it. An
    image without one is returned as decoded (no copy): the check reads a tag Pillow has
    already parsed.

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


def read_label(path: Union[str, os.PathLike], label_ids: bool = False) -> np.ndarray:
    """Read a single-channel label PNG as a uint8 ``(height, width)`` train-id map.

    Args:
        path: label image (8-bit grayscale or palette; 16-bit accepted if values <= 255).
        label_ids: the file holds official Cityscapes label ids; map them to train ids.
    """
    image = read_image(path)
    if image.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
        raise D3NetError(f"label {path} has mode {image.mode}; expected a single-channel "
                         "PNG of class ids (8-bit grayscale or palette), not a colour image")
    values = np.asarray(image)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise D3NetError(f"label {path} holds ids outside 0..255 "
                             f"({values.min()}..{values.max()})")
        values = values.astype(np.uint8)
    return label_ids_to_train_ids(values) if label_ids else values


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with optional train-id label maps; the base of the datasets below.

    ``dataset[i]`` is ``transform(image, label)`` where ``image`` is a PIL image and
    ``label`` a uint8 ``(H, W)`` train-id array (or None when unlabelled); the default
    transform is :class:`EvalTransform`, so items are ``(float (3, H, W), long (H, W))``.
    """

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable] = None,
                 num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.samples = list(samples)
        self.transform = transform if transform is not None else EvalTransform(
            ignore_index=ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_labels(self) -> bool:
        """True when every image has a label file."""
        return all(sample.label is not None for sample in self.samples)

    def load(self, index: int) -> tuple[Image.Image, Optional[np.ndarray]]:
        """The raw image (PIL, as stored) and its uint8 train-id map (or None)."""
        sample = self.samples[index]
        image = read_image(sample.image)
        if sample.label is None:
            return image, None
        label = read_label(sample.label, sample.label_ids)
        if label.shape != (image.height, image.width):
            turned = label.shape == (image.width, image.height)
            raise D3NetError(
                f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image "
                f"{sample.image} is {image.width}x{image.height}" + (
                    " as displayed (d3net applies the image's EXIF orientation, as viewers "
                    "do): annotate the image as displayed, or remove its orientation tag"
                    if turned else ""))
        invalid = (label >= self.num_classes) & (label != self.ignore_index)
        if invalid.any():
            raise D3NetError(f"label {sample.label} holds id {int(label[invalid][0])}, outside "
                             f"0..{self.num_classes - 1} and not the ignore id "
                             f"{self.ignore_index}")
        return image, label

    def __getitem__(self, index: int):
        image, label = self.load(index)
        return self.transform(image, label)


class CityscapesDataset(SegmentationDataset):
    """The official Cityscapes layout (see the module docstring).

    Labels come from ``*_gtFine_labelTrainIds.png``; where only
    ``*_gtFine_labelIds.png`` exists, the official ids are converted to train ids with
    :data:`LABEL_ID_TO_TRAIN_ID` (one warning per dataset says so). The ``test`` split,
    whose labels Cityscapes does not publish, may have no label files: such images get
    an all-ignore label. In other splits, an image without a label is an error.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val``, ``test`` (or any folder under ``leftImg8bit/``).
        transform: called as ``transform(pil_image, train_ids_or_None)``;
            default :class:`EvalTransform`.
        annotations: label folder and file tag, ``gtFine`` or ``gtCoarse``.
    """

    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: Union[str, os.PathLike], split: str = "train",
                 transform: Optional[Callable] = None, annotations: str = "gtFine",
                 num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.root = Path(root)
        self.split = split
        samples = self._find_samples(self.root, split, annotations)
        converted = sum(sample.label_ids for sample in samples)
        if converted:
            warnings.warn(
                f"{converted} of {len(samples)} labels in {self.root / annotations / split} "
                f"exist only as *_{annotations}_labelIds.png; converting the official label "
                "ids to train ids with the Cityscapes table (cityscapesscripts' "
                "createTrainIdLabelImgs writes the train-id files once for all)",
                UserWarning, stacklevel=2)
        super().__init__(samples, transform, num_classes, ignore_index)

    @classmethod
    def _find_samples(cls, root: Path, split: str, annotations: str) -> list[Sample]:
        if not root.is_dir():
            raise D3NetError(f"Cityscapes root {root} does not exist or is not a folder")
        image_root = root / "leftImg8bit"
        if not image_root.is_dir():
            raise D3NetError(f"{root} is not a Cityscapes folder: {image_root} is missing")
        image_dir = image_root / split
        if not image_dir.is_dir():
            found = sorted(p.name for p in image_root.iterdir() if p.is_dir())
            raise D3NetError(f"no split {split!r} in {image_root} (found: "
                             f"{', '.join(found) or 'nothing'})")
        images = sorted(image_dir.glob(f"*/*{cls.IMAGE_SUFFIX}"))
        if not images:
            raise D3NetError(f"no images found: {image_dir} has no <city>/*{cls.IMAGE_SUFFIX}")

        label_dir = root / annotations / split
        samples = []
        for image in images:
            stem = image.name[: -len(cls.IMAGE_SUFFIX)]
            folder = label_dir / image.parent.name
            train_ids = folder / f"{stem}_{annotations}_labelTrainIds.png"
            label_ids = folder / f"{stem}_{annotations}_labelIds.png"
            if train_ids.is_file():
                samples.append(Sample(image, train_ids))
            elif label_ids.is_file():
                samples.append(Sample(image, label_ids, label_ids=True))
            elif split == "test":
                samples.append(Sample(image, None))
            else:
                raise D3NetError(f"image {image} has no label: expected {train_ids} "
                                 f"(or {label_ids.name})")
        return samples

    def __repr__(self) -> str:
        return (f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, "
                f"{len(self)} images)")


class ImageFolderDataset(SegmentationDataset):
    """Your own data: a folder of images and a folder of same-stem label PNGs.

    ``images_dir`` is searched recursively; the label of ``images_dir/a/b/x.jpg`` is
    ``labels_dir/a/b/x<label_suffix>`` (``labels_dir`` may sit inside ``images_dir``, or be
    the same folder when ``label_suffix`` tells labels apart). With ``image_suffix``, only files ending with it
    are images and it is stripped to get the stem (e.g. ``image_suffix="_leftImg8bit.png"``,
    ``label_suffix="_gtFine_labelTrainIds.png"``). Label PNGs hold train ids 0..C-1 and
    255 for ignore, or official Cityscapes label ids with ``label_ids=True``. Without
    ``labels_dir`` the images are unlabelled (all-ignore labels).
    """

    def __init__(self, images_dir: Union[str, os.PathLike],
                 labels_dir: Optional[Union[str, os.PathLike]] = None,
                 label_suffix: str = ".png", image_suffix: Optional[str] = None,
                 transform: Optional[Callable] = None, label_ids: bool = False,
                 num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.images_dir = Path(images_dir)
        self.labels_dir = None if labels_dir is None else Path(labels_dir)
        if not self.images_dir.is_dir():
            raise D3NetError(f"image folder {self.images_dir} does not exist")
        if self.labels_dir is not None and not self.labels_dir.is_dir():
            raise D3NetError(f"label folder {self.labels_dir} does not exist")

        def is_image(path: Path) -> bool:
            if image_suffix is not None:
                return path.name.endswith(image_suffix)
            return path.suffix.lower() in IMAGE_EXTENSIONS

        images = sorted(p for p in self.images_dir.rglob("*")
                        if p.is_file() and not p.name.startswith(".") and is_image(p))
        if self.labels_dir is not None:
            # Label files living among the images are not images to segment.
            labels_root = self.labels_dir.resolve()
            if labels_root == self.images_dir.resolve():
                images = [p for p in images if not p.name.endswith(label_suffix)]
            else:
                images = [p for p in images if labels_root not in p.resolve().parents]
        if not images:
            what = f"*{image_suffix}" if image_suffix else "image files"
            raise D3NetError(f"no images found: {self.images_dir} holds no {what}")

        samples = []
        for image in images:
            if self.labels_dir is None:
                samples.append(Sample(image, None))
                continue
            stem = image.name[: -len(image_suffix)] if image_suffix else image.stem
            relative = image.parent.relative_to(self.images_dir)
            label = self.labels_dir / relative / f"{stem}{label_suffix}"
            if not label.is_file():
                raise D3NetError(f"image {image} has no label: expected {label}")
            samples.append(Sample(image, label, label_ids=label_ids))
        super().__init__(samples, transform, num_classes, ignore_index)

    def __repr__(self) -> str:
        return f"ImageFolderDataset(images_dir={str(self.images_dir)!r}, {len(self)} images)"


class AugmentedDataset(torch.utils.data.Dataset):
    """Training items ``(image (3, h, w), labels (h, w))`` with reproducible augmentation.

    The random scale, crop and flip of item ``index`` in epoch ``epoch`` come from a
    generator seeded with ``(seed, epoch, index)``, so they do not depend on DataLoader
    workers or on where a run was interrupted: a resumed run sees the same crops.

    Args:
        dataset: a raw dataset with ``load(index) -> (PIL image, uint8 train ids)``
            (:class:`SegmentationDataset`).
        transform: a :class:`TrainTransform`.
        seed: the run's seed.
    """

    def __init__(self, dataset: SegmentationDataset, transform: TrainTransform, seed: int = 0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset.load(index)
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
        return self.transform(image, label, generator=generator)
