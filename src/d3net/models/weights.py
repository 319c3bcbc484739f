"""Named weights: every pretrained model d3net knows, as data (:class:`Weights`).
Fetching and caching live in :mod:`d3net.models.hub`; loading by name in
:mod:`d3net.models.loading`. Names are stable (used in docs, scripts and ``--model``).

Sources: the official pretrained-model links of sony/ai-research-code (``d3net/``
READMEs), and Sony's published SHA-1 of the music archive (the segmentation files have
none: :mod:`d3net.models.hub` verifies them by strict conversion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from ..configs import TARGETS
from ..errors import D3NetError
from .files import SEG_MODEL_FILE

#: Where Sony publishes the weights; ``D3NET_WEIGHTS_MIRROR`` replaces this prefix.
OFFICIAL_PREFIX = "https://nnabla.org/pretrained-models/ai-research-code/d3net/"
OFFICIAL_SOURCE = "https://github.com/sony/ai-research-code/tree/master/d3net"
#: Task codes as the configs use them -> words for messages.
TASK_NAMES = {"mss": "music separation", "seg": "segmentation"}

_SONY_LICENCE = ("published by Sony for sony/ai-research-code (its code is Apache-2.0; no "
                 "separate licence is stated for the weight files: ask Sony before commercial "
                 "use)")


@dataclass(frozen=True)
class Member:
    """One model file of a weight set: its name in the cache folder (``output``), the preset
    it converts to, and its ``source`` file inside the downloaded archive (``None`` when
    the download itself is the ``.h5`` file)."""

    output: str
    config: str
    source: Optional[str] = None


@dataclass(frozen=True)
class Weights:
    """A named weight set (torchvision's ``Weights`` enums, as plain data).

    Attributes:
        members: the model files it provides once converted.
        path: location relative to :data:`OFFICIAL_PREFIX`; ``None`` for bundled weights.
        archive: ``"zip"`` (members are files inside it) or ``None`` (a single ``.h5``).
        sha1: Sony's published SHA-1 of the download, when there is one.
        backbone_only: an ImageNet backbone for fine-tuning (``weights_backbone=``,
            ``--pretrained-backbone``), not a model to run: its head is untrained.
        download_mb: approximate download size in MB (shown before fetching).
        released: the figure Sony reports for these weights (and the paper's, if other).
        bundled: folder inside the installed package (``assets/demo``) for bundled weights.
    """

    name: str
    task: str
    description: str
    members: Tuple[Member, ...]
    path: Optional[str] = None
    archive: Optional[str] = None
    sha1: Optional[str] = None
    backbone_only: bool = False
    download_mb: Optional[float] = None
    dataset: str = ""
    released: str = ""
    licence: str = _SONY_LICENCE
    source: str = OFFICIAL_SOURCE
    bundled: Optional[str] = None

    @property
    def url(self) -> Optional[str]:
        """The official download address (``None`` for bundled weights)."""
        return None if self.path is None else OFFICIAL_PREFIX + self.path

    @property
    def filename(self) -> Optional[str]:
        """The downloaded file's name (``d3net-mss.zip``)."""
        return None if self.path is None else self.path.rsplit("/", 1)[-1]

    @property
    def is_set(self) -> bool:
        """Several model files (a separation set), used as a folder."""
        return len(self.members) > 1

    @property
    def targets(self) -> List[str]:
        """Music targets of a separation set (empty for segmentation)."""
        return [m.output.rsplit(".", 1)[0] for m in self.members] if self.task == "mss" else []

    def manual_route(self) -> str:
        """How to do by hand what fetching does (for when the download fails)."""
        if self.path is None:
            return "reinstall d3net"
        option = "--pretrained-backbone" if self.backbone_only else "--model"
        return (f"to do it by hand: download that file, run 'd3net convert nnabla "
                f"{self.filename} -o DIR' and give DIR in place of {self.name} "
                f"({option} DIR)")


def _mss_members(source_in_zip: bool) -> Tuple[Member, ...]:
    return tuple(Member(f"{t}.safetensors", f"mss-{t}", f"{t}.h5" if source_in_zip else None)
                 for t in TARGETS)


_CITYSCAPES = "Cityscapes train (fine annotations)"
_IMAGENET = "ImageNet-1k (backbone only)"

#: Every known weight set, in the order ``d3net weights list`` shows them.
WEIGHTS: Dict[str, Weights] = {w.name: w for w in (
    Weights(
        name="official-mss", task="mss",
        description="D3Net music separation: vocals, drums, bass, other",
        members=_mss_members(True), path="mss/d3net-mss.zip", archive="zip",
        sha1="ada6858b467628f2f57489f0e862982aeb87942c", download_mb=45,
        dataset="MUSDB18 train",
        released="6.03 dB average SDR on MUSDB18 test as released (6.01 dB in the paper, "
                 "Table 4)",
        licence=_SONY_LICENCE + "; trained on MUSDB18, whose songs are licensed for "
                                "research use"),
    Weights(
        name="official-d3net-s", task="seg",
        description="D3Net-S + FCN head, 19 Cityscapes classes",
        members=(Member(SEG_MODEL_FILE, "d3net-s"),),
        path="semantic-segmentation/D3Net-S.h5", download_mb=41, dataset=_CITYSCAPES,
        released="79.9 mIoU on Cityscapes val as released (paper Table 2: 79.5 without "
                 "test-time augmentation)",
        licence=_SONY_LICENCE + "; Cityscapes' terms allow non-commercial use"),
    Weights(
        name="official-d3net-l", task="seg",
        description="D3Net-L + FCN head, 19 Cityscapes classes",
        members=(Member(SEG_MODEL_FILE, "d3net-l"),),
        path="semantic-segmentation/D3Net-L.h5", download_mb=157, dataset=_CITYSCAPES,
        released="81.0 mIoU on Cityscapes val as released (paper Table 2: 80.6 without "
                 "test-time augmentation)",
        licence=_SONY_LICENCE + "; Cityscapes' terms allow non-commercial use"),
    Weights(
        name="official-d3net-s-backbone", task="seg",
        description="ImageNet D3Net-S backbone, for fine-tuning (--pretrained-backbone)",
        members=(Member(SEG_MODEL_FILE, "d3net-s"),),
        path="semantic-segmentation/D3Net-S-pretrained-backbone.h5", backbone_only=True,
        download_mb=40, dataset=_IMAGENET, released="(backbone for fine-tuning)"),
    Weights(
        name="official-d3net-l-backbone", task="seg",
        description="ImageNet D3Net-L backbone, for fine-tuning (--pretrained-backbone)",
        members=(Member(SEG_MODEL_FILE, "d3net-l"),),
        path="semantic-segmentation/D3Net-L-pretrained-backbone.h5", backbone_only=True,
        download_mb=157, dataset=_IMAGENET, released="(backbone for fine-tuning)"),
    Weights(
        name="demo", task="mss",
        description="small bundled mss-small model (no download)",
        members=_mss_members(False), bundled="assets/demo",
        dataset="synthetic songs (scripts/train_demo.py)",
        released="7.6 dB average SDR on held-out synthetic songs (benchmarks/RESULTS.md)",
        licence="MIT, as d3net", source="bundled with d3net"),
)}


def get_weights(name: Union[str, Weights]) -> Weights:
    """The registry entry of ``name`` (a :class:`Weights` is returned as is).

    Raises:
        D3NetError: unknown name (the message lists the known ones).
    """
    if isinstance(name, Weights):
        return name
    try:
        return WEIGHTS[str(name)]
    except KeyError:
        raise D3NetError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}") from None
