"""Semantic segmentation with a D3Net model: image in, class ids and probabilities out.

Inference modes (the ``mode`` of :class:`Segmenter`):

* ``"whole"``: the network sees the whole (rescaled) image at once, as the official
  inference script does; sides shorter than :data:`MIN_SIZE` are padded for the pass.
* ``"slide"``: overlapping ``crop`` windows every ``stride`` pixels (the last row and
  column of windows end at the border), their logits averaged. Bounds memory.

Test-time augmentation: each scale (half-pixel bilinear resize) and, with ``flip``, its
mirror image give logits resized back to the input size; their softmax probabilities are
averaged. The official model returns the softmax in test mode, so one scale without
flipping gives exactly the official output.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import D3NetError
from .image import (CITYSCAPES_MEAN, CITYSCAPES_STD, NUM_CLASSES, ImageLike,
                    SegmentationFiles, find_images, normalize_image, read_image, write_outputs)
from .models import load
from .utils import PathLike, Size, parse_scales, parse_size

MODES = ("whole", "slide")
#: The six test scales of the paper's Cityscapes test table (used with flipping).
TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: Smallest side the network is run on (its output stride is 32); smaller inputs are
#: padded for the pass and the padding is cut off the output.
MIN_SIZE = 32


class Segmenter(nn.Module):
    """Runs a segmentation network on images of any size, with optional test-time
    augmentation.

    Args:
        model: a network mapping normalised images ``(N, 3, H, W)`` to logits ``(N,
            classes, H, W)``, e.g. :class:`d3net.models.D3NetSegmentation`; put in eval mode.
        device: where to run (default: where the model is).
        mode: ``"whole"`` or ``"slide"`` (see the module docstring).
        scales: image scale factors to average over.
        flip: also average over horizontally mirrored images.
        tta: shorthand for the paper's test setting (:data:`TTA_SCALES` and ``flip``);
            overrides ``scales`` and ``flip``.
        crop: ``(height, width)`` of the sliding windows (``mode="slide"``).
        stride: step between sliding windows; default two thirds of ``crop``.
        batch_size: images (whole mode) or windows (slide mode) per network call.
        progress: show a progress bar over the network calls.

    Example::

        segmenter = Segmenter.from_pretrained("official-d3net-s", tta=True)
        labels, probabilities = segmenter.predict_image("frankfurt.png")
    """

    def __init__(self, model: nn.Module, device: Union[str, torch.device, None] = None,
                 mode: str = "whole", scales: Sequence[float] = (1.0,), flip: bool = False,
                 tta: bool = False, crop: Union[int, Sequence[int]] = (1024, 1024),
                 stride: Union[int, Sequence[int], None] = None, batch_size: int = 1,
                 progress: bool = False):
        super().__init__()
        if mode not in MODES:
            raise D3NetError(f"unknown inference mode {mode!r}; expected 'whole' or 'slide'")
        if int(batch_size) < 1:
            raise D3NetError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.mode = mode
        self.scales = TTA_SCALES if tta else parse_scales(scales)
        self.flip = True if tta else bool(flip)
        self.crop = parse_size(crop, "crop")
        self.stride = (parse_size(stride, "stride") if stride is not None
                       else tuple(max(1, (2 * c) // 3) for c in self.crop))
        if any(s > c for s, c in zip(self.stride, self.crop)):
            raise D3NetError(f"stride {self.stride} must not exceed the crop {self.crop} "
                             "(windows would leave gaps)")
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        config = getattr(model, "config", None)
        self.mean = tuple(getattr(config, "mean", CITYSCAPES_MEAN))
        self.std = tuple(getattr(config, "std", CITYSCAPES_STD))
        if device is not None:
            self.model.to(device)
        if self.device.type == "cpu":  # oneDNN's fastest layout here (1.5x, RESULTS.md)
            self.model.to(memory_format=torch.channels_last)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, model: PathLike = "official-d3net-s",
                        device: Union[str, torch.device, None] = None, *,
                        download_progress: bool = True, **options) -> "Segmenter":
        """A Segmenter for any segmentation model spec (:mod:`d3net.models.loading`).

        Args:
            model: a weight name (``"official-d3net-s"``, the default, or
                ``"official-d3net-l"``: fetched and cached on first use), a model file, a
                run folder (``FOLDER/model.safetensors``) or an official ``.h5``.
            device: where to run.
            download_progress: show downloads of weight names with a progress bar.
            **options: the other :class:`Segmenter` options.

        Raises:
            D3NetError: see :func:`d3net.models.load` (a music model gets the wrong-task
                sentence).
        """
        network = load(model, task="seg", device=device, progress=download_progress)
        return cls(network, device=device, **options)

    @property
    def device(self) -> torch.device:
        first = next(iter(self.model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return int(getattr(getattr(self.model, "config", None), "num_classes", 19))

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, scales={self.scales}, flip={self.flip}, "
                f"crop={self.crop}, stride={self.stride}, batch_size={self.batch_size}")

    # ------------------------------------------------------------------ tensors in

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`predict_proba`."""
        return self.predict_proba(images)

    @torch.inference_mode()
    def predict_proba(self, images: Tensor) -> Tensor:
        """Class probabilities, averaged over the scales and flips.

        Args:
            images: normalised images ``(N, 3, H, W)`` or one image ``(3, H, W)``.
        Returns:
            float32 probabilities ``(N, classes, H, W)`` (or ``(classes, H, W)``) on the
            input's device; they sum to 1 over the classes.
        """
        single = images.dim() == 3
        images = self._check_images(images)
        out_device = images.device
        views = [(scale, flipped) for scale in self.scales
                 for flipped in ((False, True) if self.flip else (False,))]
        height, width = images.shape[-2:]
        total = sum(self._calls(images.shape[0], self._scaled(height, width, s))
                    for s, _ in views)
        probabilities: Optional[Tensor] = None
        with tqdm(total=total, desc="segmenting", unit="batch", disable=not self.progress,
                  leave=False) as bar:
            step = self.batch_size if self.mode == "whole" else 1
            for scale, flipped in views:
                for start in range(0, images.shape[0], step):
                    chunk = images[start:start + step].to(self.device)
                    logits = self._view_logits(chunk, scale, flipped, bar)
                    view = torch.softmax(logits.float(), dim=1).to(out_device)
                    if probabilities is None:
                        probabilities = torch.zeros(images.shape[0], *view.shape[1:],
                                                    device=out_device)
                    probabilities[start:start + chunk.shape[0]] += view
        assert probabilities is not None
        probabilities /= len(views)
        return probabilities[0] if single else probabilities

    @torch.inference_mode()
    def predict_logits(self, images: Tensor) -> Tensor:
        """Log of :meth:`predict_proba`: with one view (one scale, no flip), the network's
        logits up to a per-pixel constant (``log_softmax``); with several, the log of the
        averaged probabilities. Same shapes as :meth:`predict_proba`."""
        return self.predict_proba(images).clamp_min(torch.finfo(torch.float32).tiny).log()

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Tensor:
        """Class ids ``(N, H, W)`` (or ``(H, W)`` for one image ``(3, H, W)``), int64."""
        return self.predict_proba(images).argmax(dim=-3)

    # -------------------------------------------------------------------- images in

    def normalize(self, image: ImageLike) -> Tensor:
        """A PIL image or uint8/uint16 array (any mode :func:`d3net.image.image_to_array`
        accepts) -> normalised ``(3, H, W)`` float32 with the model's mean/std."""
        return normalize_image(image, self.mean, self.std)

    def predict_image(self, image: Union[PathLike, ImageLike]
                      ) -> Tuple[np.ndarray, Tensor]:
        """Segment one image given as a path, a PIL image or a numpy array.

        Returns:
            ``(labels, probabilities)``: uint8 train ids ``(H, W)`` and float32 ``(classes,
            H, W)`` probabilities on the CPU.
        """
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        probabilities = self.predict_proba(self.normalize(image)).cpu()
        labels = probabilities.argmax(0).numpy()
        if labels.size and labels.max() > 255:
            raise D3NetError(f"class id {int(labels.max())} does not fit an 8-bit label PNG")
        return labels.astype(np.uint8), probabilities

    def segment_file(self, path: PathLike, out_dir: PathLike,
                     stem: Optional[str] = None, alpha: float = 0.5) -> SegmentationFiles:
        """Segment an image file (EXIF orientation applied, see
        :func:`d3net.image.read_image`) and write its files into ``out_dir`` with
        :func:`d3net.image.write_outputs`; Cityscapes label ids only for a model of the 19
        Cityscapes classes."""
        image = read_image(path)
        try:
            labels, _ = self.predict_image(image)
        except D3NetError as error:
            raise D3NetError(f"{path}: {error}") from None
        return write_outputs(image, labels, out_dir, stem or Path(path).stem, alpha=alpha,
                             label_ids=self.num_classes == NUM_CLASSES)

    def segment_files(self, inputs: Sequence[PathLike], out_dir: PathLike,
                      alpha: float = 0.5, progress: bool = True,
                      on_error: Optional[Callable[[Path, D3NetError], None]] = None
                      ) -> Iterator[Tuple[Path, SegmentationFiles]]:
        """Segment image files and folders into ``out_dir`` (folders keep their layout, see
        :func:`d3net.image.find_images`); yields ``(input, files written)`` as each image is
        done.

        Args:
            on_error: called with ``(image, error)`` for an image that cannot be read or
                written, which is then skipped (the CLI reports it and goes on, as
                ``d3net separate`` does with songs); ``None``: the error is raised.

        Raises:
            D3NetError: before any image is segmented, for a missing input, two inputs with
                one output name, or an output folder that cannot be written; for a bad
                image without ``on_error``.
        """
        pairs = find_images(inputs, out_dir)
        for path, stem in tqdm(pairs, desc="segment", unit="image", disable=not progress):
            try:
                files = self.segment_file(path, out_dir, stem=stem, alpha=alpha)
            except D3NetError as error:
                if on_error is None:
                    raise
                on_error(path, error)
                continue
            yield path, files

    # ------------------------------------------------------------------ internals

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise D3NetError(f"expected a tensor of images, got {type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise D3NetError(f"expected normalised images (N, 3, H, W) or (3, H, W), got shape "
                             f"{tuple(images.shape)}")
        if not images.is_floating_point():
            raise D3NetError(f"expected float images normalised with mean/std, got "
                             f"{images.dtype} (use Segmenter.normalize or predict_image)")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise D3NetError(f"empty image batch of shape {tuple(images.shape)}")
        return images

    @staticmethod
    def _scaled(height: int, width: int, scale: float) -> Size:
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def _calls(self, count: int, size: Size) -> int:
        if self.mode == "whole":
            return -(-count // self.batch_size)
        return count * -(-len(self._windows(size)) // self.batch_size)

    def _view_logits(self, images: Tensor, scale: float, flipped: bool, bar) -> Tensor:
        """Logits ``(n, classes, H, W)`` at the input size for one scale/flip view."""
        size = tuple(images.shape[-2:])
        x = images.float()
        if flipped:
            x = x.flip(-1)
        scaled = self._scaled(*size, scale)
        if scaled != size:
            x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
        if self.mode == "whole":
            logits = self._run(x)
            bar.update()
        else:
            logits = self._slide(x, bar)
        if scaled != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.flip(-1) if flipped else logits

    def _windows(self, size: Size) -> List[Tuple[int, int, int, int]]:
        """``(top, left, bottom, right)`` of every window covering an image of ``size``."""
        (height, width), (crop_h, crop_w), (step_h, step_w) = size, self.crop, self.stride

        def starts(length: int, crop: int, step: int) -> List[int]:
            if length <= crop:
                return [0]
            count = -(-(length - crop) // step) + 1
            return [min(i * step, length - crop) for i in range(count)]

        return [(top, left, min(top + crop_h, height), min(left + crop_w, width))
                for top in starts(height, crop_h, step_h)
                for left in starts(width, crop_w, step_w)]

    def _slide(self, image: Tensor, bar) -> Tensor:
        """Logits of one image ``(1, 3, H, W)`` averaged over overlapping windows."""
        windows = self._windows(tuple(image.shape[-2:]))
        logits: Optional[Tensor] = None
        counts = torch.zeros(1, 1, *image.shape[-2:], device=image.device)
        for i in range(0, len(windows), self.batch_size):
            group = windows[i:i + self.batch_size]
            shapes = {(b - t, r - l) for t, l, b, r in group}
            if len(shapes) == 1:  # windows of one size go through in one call
                batch = torch.cat([image[..., t:b, l:r] for t, l, b, r in group])
                outputs = list(self._run(batch).split(1))
            else:
                outputs = [self._run(image[..., t:b, l:r]) for t, l, b, r in group]
            for (t, l, b, r), out in zip(group, outputs):
                if logits is None:
                    logits = torch.zeros(1, out.shape[1], *image.shape[-2:], device=image.device)
                logits[..., t:b, l:r] += out.float()
                counts[..., t:b, l:r] += 1
            bar.update()
        assert logits is not None
        return logits / counts

    def _run(self, x: Tensor) -> Tensor:
        """The network on a batch, padding sides shorter than :data:`MIN_SIZE`."""
        height, width = x.shape[-2:]
        pad_h, pad_w = max(0, MIN_SIZE - height), max(0, MIN_SIZE - width)
        if pad_h or pad_w:  # zeros are the mean colour after normalisation
            x = F.pad(x, (0, pad_w, 0, pad_h))
        logits = self.model(x)
        if logits.dim() != 4 or logits.shape[-2:] != x.shape[-2:]:
            raise D3NetError(f"the model returned shape {tuple(logits.shape)} for input "
                             f"{tuple(x.shape)}; expected (N, classes, H, W) logits")
        return logits[..., :height, :width]

