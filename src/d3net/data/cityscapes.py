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

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import D3NetError
from ..image import (CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGE_EXTENSIONS, NUM_CLASSES, ImageLike,
                     image_to_array, normalize_image, read_image, read_label)
from ..palette import IGNORE_INDEX
from ..utils import PathLike, parse_size


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

@dataclass(frozen=True)
class EvalTransform:
    """Normalise only: ``(image, label) -> (float (3, H, W), long (H, W))``.

    A missing label (``None``, e.g. the Cityscapes test split) becomes a map of
    ``ignore_index``.
    """

    mean: Sequence[float] = CITYSCAPES_MEAN
    std: Sequence[float] = CITYSCAPES_STD
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image: ImageLike,
                 label: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize_image(image, self.mean, self.std)
        return x, _label_tensor(label, tuple(x.shape[1:]), self.ignore_index)


class TrainTransform:
    """The official training augmentation: random scale, random crop, flip, normalise.

    Both sides are rescaled by one factor drawn uniformly from ``scale_range`` (image
    bilinear with half-pixel centres, as ``F.interpolate(..., align_corners=False)``; label
    nearest with the same centres), padded bottom and right up to ``crop`` = (height,
    width) (image with the mean, i.e. 0 after normalisation; label with ``ignore_index``),
    cropped at a random place, flipped horizontally with probability 0.5 and normalised
    with ``mean``/``std`` (0..255 units). Only the crop window of the rescaled image is
    computed (sampled from the original with ``grid_sample``), so a 2x scale of a
    1024x2048 frame costs no more than the 512x1024 crop itself.

    Randomness comes from ``generator`` (per call, else per transform), else from torch's
    global generator. Leave it unset for DataLoader workers: each worker gets its own
    global seed, while one generator object would be copied into every worker.

    Returns ``(image float32 (3, crop_h, crop_w), label int64 (crop_h, crop_w))``.
    """

    def __init__(self, crop: Optional[Union[int, Sequence[int]]] = (512, 1024),
                 scale_range: Optional[Sequence[float]] = (0.5, 2.0), flip: bool = True,
                 mean: Sequence[float] = CITYSCAPES_MEAN,
                 std: Sequence[float] = CITYSCAPES_STD, ignore_index: int = IGNORE_INDEX,
                 generator: Optional[torch.Generator] = None):
        if crop is not None:
            crop = parse_size(crop, "crop")
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
        """The ``window`` at ``(top, left)`` of the float (3, H, W) 0..255 image (normalised)
        and long (H, W) label rescaled to ``scaled``; positions beyond them are padding."""
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
    :data:`d3net.image.LABEL_ID_TO_TRAIN_ID` (one warning per dataset says so). The
    ``test`` split, whose labels Cityscapes does not publish, may have no label files:
    such images get an all-ignore label. In other splits, an image without a label is an
    error.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val``, ``test`` (or any folder under ``leftImg8bit/``).
        transform: called as ``transform(pil_image, train_ids_or_None)``;
            default :class:`EvalTransform`.
        annotations: label folder and file tag, ``gtFine`` or ``gtCoarse``.
    """

    IMAGE_SUFFIX = "_leftImg8bit.png"

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable] = None, annotations: str = "gtFine",
                 num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.root = root = Path(root)
        self.split = split
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
        images = sorted(image_dir.glob(f"*/*{self.IMAGE_SUFFIX}"))
        if not images:
            raise D3NetError(f"no images found: {image_dir} has no <city>/*{self.IMAGE_SUFFIX}")

        label_dir = root / annotations / split
        samples = []
        for image in images:
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
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
        converted = sum(sample.label_ids for sample in samples)
        if converted:
            warnings.warn(
                f"{converted} of {len(samples)} labels in {label_dir} exist only as "
                f"*_{annotations}_labelIds.png; converting the official label ids to train "
                "ids with the Cityscapes table (cityscapesscripts' createTrainIdLabelImgs "
                "writes the train-id files once for all)", UserWarning, stacklevel=2)
        super().__init__(samples, transform, num_classes, ignore_index)

    def __repr__(self) -> str:
        return (f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, "
                f"{len(self)} images)")


class ImageFolderDataset(SegmentationDataset):
    """Your own data: a folder of images and a folder of same-stem label PNGs.

    ``images_dir`` is searched recursively; the label of ``images_dir/a/b/x.jpg`` is
    ``labels_dir/a/b/x<label_suffix>`` (``labels_dir`` may sit inside ``images_dir``, or be
    the same folder when ``label_suffix`` tells labels apart). With ``image_suffix``, only
    files ending with it are images and it is stripped to get the stem (e.g.
    ``image_suffix="_leftImg8bit.png"``, ``label_suffix="_gtFine_labelTrainIds.png"``).
    Label PNGs hold train ids 0..C-1 and 255 for ignore, or official Cityscapes label ids
    with ``label_ids=True``. Without ``labels_dir`` the images are unlabelled.
    """

    def __init__(self, images_dir: PathLike,
                 labels_dir: Optional[PathLike] = None,
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
