"""Model configurations as dataclasses (:class:`SegConfig`, :class:`MSSConfig`), presets,
and YAML: ours is ``dataclasses.asdict`` of a config plus a ``task`` key; the official
format (Sony's ``configs/*.yaml``) is recognised by its keys and translated.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from .errors import D3NetError
from .image import CITYSCAPES_MEAN, CITYSCAPES_STD
from .nn import check_dilation
from .utils import PathLike

TARGETS = ("vocals", "drums", "bass", "other")
"""The four sources of music separation (MUSDB18's, in its order), one network each."""
ACCOMPANIMENT = TARGETS[1:]
"""The sources the accompaniment sums: everything but the vocals."""


@dataclass
class SegConfig:
    """D3Net segmentation model. Lists have one entry per scale (output strides 4..32).

    ``num_layers`` = layers per D2 block and ``num_blocks`` = D2 blocks per D3 block (the
    official ``num_layers`` / ``n_blocks``; the paper's "(M, L)" tuple for Cityscapes lists
    them in this order although its Sec. 5 defines M as blocks and L as layers).
    """

    name: str = "d3net-s"
    num_init_features: int = 64
    num_layers: Tuple[int, ...] = (4, 4, 4, 4)
    num_blocks: Tuple[int, ...] = (8, 8, 8, 8)
    growth_rate: Tuple[int, ...] = (36, 36, 36, 36)
    compression: Tuple[float, ...] = (0.2, 0.2, 0.2, 0.2)
    out_layers: Tuple[int, ...] = (4, 4, 4, 4)
    feature_channels: Tuple[int, ...] = (32, 40, 64, 128)
    transition_factor: int = 2
    dilation: str = "multi"
    head: str = "fcn"
    head_channels: int = 264
    num_classes: int = 19
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    mean: Tuple[float, ...] = CITYSCAPES_MEAN
    std: Tuple[float, ...] = CITYSCAPES_STD
    task: str = field(default="seg", init=False)

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_blocks", "growth_rate", "compression", "out_layers",
                     "feature_channels"):
            value = tuple(getattr(self, name))
            if len(value) != 4:
                raise D3NetError(f"config {self.name}: {name} needs 4 entries (one per scale), "
                                 f"got {len(value)}")
            setattr(self, name, value)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        check_dilation(self.dilation, f"config {self.name}: ")
        if self.head not in ("fcn", "ocr"):
            raise D3NetError(f"config {self.name}: head must be 'fcn' or 'ocr', got {self.head!r}")


@dataclass
class BranchConfig:
    """One encoder-decoder branch of the music model (a frequency band or the full band).

    Lists run over the branch's D3 blocks: ``levels`` down blocks, the bottleneck block,
    then ``levels`` up blocks (``levels = (len - 1) // 2``), as the official ``md3_block_ds``.
    ``comp_rates`` is kept in the official layout; upsampling layer ``j`` uses entry
    ``levels + j`` (its transposed convolution outputs ``ceil(rate * channels)``).
    """

    init_features: int
    num_layers: Tuple[int, ...]
    growth_rate: Tuple[int, ...]
    num_blocks: Tuple[int, ...]
    comp_rates: Tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("num_layers", "growth_rate", "num_blocks"):
            setattr(self, name, tuple(getattr(self, name)))
        n = len(self.num_layers)
        if not (len(self.growth_rate) == len(self.num_blocks) == n) or n % 2 == 0:
            raise D3NetError("branch config: num_layers, growth_rate and num_blocks need the "
                             "same odd length")
        self.comp_rates = tuple(float(c) for c in self.comp_rates or (1.0,) * n)
        if len(self.comp_rates) < n - 1:
            raise D3NetError(f"branch config: comp_rates needs at least {n - 1} entries")
        if min(self.num_layers) < 1 or min(self.num_blocks) < 1:
            raise D3NetError("branch config: every D3 block needs >= 1 layer and >= 1 block")

    @property
    def levels(self) -> int:
        return (len(self.num_layers) - 1) // 2

    def up_rate(self, j: int) -> float:
        return self.comp_rates[self.levels + j]


@dataclass
class MSSConfig:
    """Music source separation network of one target (official ``D3NetMSS`` hparams).

    The official configs win over the paper's Table 5 where they differ (e.g. the low band
    has 3 down-sampling levels, not 4, and the output gate is a 1x1 convolution, not 3x3).

    The signal processing belongs to the model: ``sample_rate`` (Hz), ``fft_size`` and
    ``hop_size`` (samples) define the STFT it was trained on, ``audio_channels`` the
    channels it takes; :class:`d3net.separate.Separator` uses them. ``patch_frames`` is
    the inference patch in STFT frames (the official ``test_patch_len``, read under that
    name from older files), ``out_shift`` the hop between patches. The official training
    patch ``patch_length`` is dropped on reading (training takes its patch from
    ``MSSHyperParams.patch_frames``), except as a stand-in for a missing
    ``test_patch_len`` in an official YAML.
    """

    target: str = "vocals"
    name: str = "mss-vocals"
    band_split: Tuple[int, ...] = (256,)
    valid_bins: int = 1600
    bands: Tuple[BranchConfig, ...] = ()
    full: Optional[BranchConfig] = None
    final_growth_rate: int = 12
    final_num_layers: int = 3
    audio_channels: int = 2
    fft_size: int = 4096
    hop_size: int = 1024
    sample_rate: int = 44100
    patch_frames: int = 256
    out_shift: int = 128
    dilation: str = "multi"
    task: str = field(default="mss", init=False)

    def __post_init__(self) -> None:
        self.band_split = tuple(self.band_split)
        self.bands = tuple(b if isinstance(b, BranchConfig) else BranchConfig(**b)
                           for b in self.bands)
        if isinstance(self.full, dict):
            self.full = BranchConfig(**self.full)
        check_dilation(self.dilation, f"config {self.name}: ")
        if self.full is None or not self.bands:
            raise D3NetError(f"config {self.name}: needs band branches and a full-band branch")
        if len(self.bands) != len(self.band_split) + 1:
            raise D3NetError(f"config {self.name}: {len(self.band_split)} split points need "
                             f"{len(self.band_split) + 1} bands, got {len(self.bands)}")
        edges = self.band_edges
        if any(b <= a for a, b in zip(edges, edges[1:])) or self.valid_bins > self.num_bins:
            raise D3NetError(f"config {self.name}: band edges {edges} must increase up to "
                             f"at most {self.num_bins} bins")
        for (lo, hi), branch in zip(zip(edges, edges[1:]), self.bands):
            if (hi - lo) % (2 ** branch.levels):
                raise D3NetError(f"config {self.name}: band [{lo}, {hi}) width must be divisible "
                                 f"by 2**{branch.levels}")
        if self.valid_bins % (2 ** self.full.levels):
            raise D3NetError(f"config {self.name}: valid_bins must be divisible by "
                             f"2**{self.full.levels}")

    @property
    def num_bins(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def band_edges(self) -> Tuple[int, ...]:
        return (0,) + self.band_split + (self.valid_bins,)

    @property
    def frame_multiple(self) -> int:
        """Frames must be a multiple of this for the pooling levels (padded internally)."""
        return 2 ** max(b.levels for b in self.bands + (self.full,))


Config = Union[SegConfig, MSSConfig]


# ----------------------------------------------------------------------------- presets

def _mss_official(target: str) -> MSSConfig:
    if target in ("vocals", "other"):
        low = BranchConfig(32, (5, 5, 5, 5, 4, 4, 4), (16, 18, 20, 22, 20, 18, 16), (2,) * 7,
                           (1.0,) * 6)
        high = BranchConfig(8, (1,) * 5, (2,) * 5, (1,) * 5, (1.0,) * 6)
        full = BranchConfig(32, (4, 5, 6, 7, 8, 6, 5, 4, 4), (13, 14, 15, 16, 17, 16, 14, 12, 11),
                            (2,) * 9, (1.0,) * 10)
        split, patch = 256, 256
    elif target == "drums":
        low = BranchConfig(32, (5, 5, 5, 4, 4, 4, 4), (16, 18, 20, 22, 20, 18, 16), (2,) * 7,
                           (1.0,) * 6)
        high = BranchConfig(8, (1,) * 5, (2,) * 5, (1,) * 5, (1.0,) * 5)
        full = BranchConfig(32, (4, 5, 6, 7, 8, 6, 6, 4, 4), (13, 14, 15, 16, 16, 16, 14, 12, 11),
                            (2,) * 9, (1.0,) * 10)
        split, patch = 128, 256
    else:  # bass
        low = BranchConfig(32, (5, 5, 5, 5, 4, 4, 4), (16, 18, 18, 20, 18, 16, 16), (2,) * 7,
                           (1.0,) * 6)
        high = BranchConfig(8, (1,) * 7, (2,) * 7, (1,) * 7, (1.0,) * 6)
        full = BranchConfig(32, (4, 5, 6, 7, 8, 6, 6, 4, 4), (10, 10, 12, 14, 16, 14, 12, 8, 8),
                            (2,) * 9, (1.0,) * 10)
        split, patch = 192, 384
    return MSSConfig(target=target, name=f"mss-{target}", band_split=(split,), bands=(low, high),
                     full=full, patch_frames=patch, out_shift=patch // 2)


def mss_small(target: str = "vocals") -> MSSConfig:
    """A reduced music model (~0.1 M parameters) for the bundled demo and quick CPU training.

    Same structure as the official networks (two bands + full band, nested D3 blocks),
    with two pooling levels, narrow layers and a 2-layer final block.
    """
    low = BranchConfig(8, (2, 2, 2, 2, 2), (6, 8, 10, 8, 6), (2,) * 5)
    high = BranchConfig(4, (1, 1, 1), (2, 2, 2), (1, 1, 1))
    full = BranchConfig(8, (2, 3, 3, 3, 2), (6, 8, 10, 8, 6), (2,) * 5)
    return MSSConfig(target=target, name="mss-small", band_split=(256,), bands=(low, high),
                     full=full, final_growth_rate=6, final_num_layers=2)


def _seg_l() -> SegConfig:
    return SegConfig(name="d3net-l", num_blocks=(10,) * 4, growth_rate=(64,) * 4,
                     feature_channels=(32, 48, 96, 192), head_channels=368)


SEG_PRESETS = {"d3net-s": SegConfig, "d3net-l": _seg_l}
PRESETS = (*SEG_PRESETS, *(f"mss-{t}" for t in TARGETS), "mss-small")


def preset(name: str, target: Optional[str] = None) -> Config:
    """A preset by name: d3net-s, d3net-l, mss-vocals/drums/bass/other, mss-small.

    ``target`` names the separated source for ``mss-small`` (default vocals).
    """
    key = name.lower().replace("_", "-")
    if key in SEG_PRESETS:
        return SEG_PRESETS[key]()
    if key == "mss-small":
        return mss_small(target or "vocals")
    if key.startswith("mss-") and key[4:] in TARGETS:
        return _mss_official(key[4:])
    raise D3NetError(f"unknown config preset {name!r}; choose one of {', '.join(PRESETS)} "
                     "or give a YAML file")


# ----------------------------------------------------------------------------- dict / YAML

def to_dict(config: Config) -> Dict[str, Any]:
    data = dataclasses.asdict(config)
    return json.loads(json.dumps(data))  # tuples -> lists, plain types only


def from_dict(data: Dict[str, Any]) -> Config:
    data = dict(data)
    task = data.pop("task", None)
    if task == "seg":
        cls: Any = SegConfig
    elif task == "mss":
        cls = MSSConfig
    else:
        raise D3NetError(f"config has task {task!r}; expected 'seg' or 'mss'")
    if cls is MSSConfig:  # older files and YAMLs: test_patch_len renamed, patch_length dropped
        if "test_patch_len" in data:
            data.setdefault("patch_frames", data.pop("test_patch_len"))
        data.pop("patch_length", None)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise D3NetError(f"unknown {task} config keys: {', '.join(unknown)}")
    return cls(**data)


def load_config(source: Union[PathLike, Config, Dict[str, Any]], task: Optional[str] = None,
                target: Optional[str] = None) -> Config:
    """A config from a preset name, a YAML file (ours or the official format), or a dict.

    ``task`` ("seg"/"mss") is only needed when an official YAML could be either; ``target``
    names the source of an official music YAML (otherwise taken from the file name).
    """
    if isinstance(source, (SegConfig, MSSConfig)):
        return source
    data, origin = source, "<dict>"
    if not isinstance(source, dict):
        path = Path(str(source))
        if path.suffix.lower() not in (".yaml", ".yml") and not path.exists():
            return preset(str(source), target)
        if not path.is_file():
            raise D3NetError(f"config file not found: {path}")
        try:
            data, origin = yaml.safe_load(path.read_text()), str(path)
        except yaml.YAMLError as exc:
            raise D3NetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise D3NetError(f"{path}: expected a mapping of config keys")
        if target is None and path.stem.lower() in TARGETS:
            target = path.stem.lower()
    if "task" in data:
        return from_dict(data)
    return from_official(data, task=task, target=target, origin=origin)


def from_official(data: Dict[str, Any], task: Optional[str] = None,
                  target: Optional[str] = None, origin: str = "<official config>") -> Config:
    """Translate an official NNabla D3Net config (dict of its YAML) to ours."""
    looks_mss = "band_split_idxs" in data
    looks_seg = "n_blocks" in data and "dens_k" in data
    if task is None:
        if looks_mss == looks_seg:
            raise D3NetError(f"{origin}: cannot tell whether this is a segmentation or a music "
                             "config; pass task='seg' or 'mss' (--task)")
        task = "mss" if looks_mss else "seg"
    try:
        if task == "seg":
            return _seg_from_official(data)
        if task == "mss":
            return _mss_from_official(data, target or "vocals")
    except KeyError as exc:
        raise D3NetError(f"{origin}: missing key {exc.args[0]!r} for a {task} config") from None
    raise D3NetError(f"task must be 'seg' or 'mss', got {task!r}")


def _seg_from_official(d: Dict[str, Any]) -> SegConfig:
    flags = d.get("dilation", [True] * 4)
    flags = flags if isinstance(flags, (list, tuple)) else [flags] * 4
    if len(set(bool(f) for f in flags)) > 1:
        raise D3NetError("official configs with dilation on for some scales only are not "
                         "supported")
    return SegConfig(
        name="custom", num_init_features=d["num_init_features"], num_layers=d["num_layers"],
        num_blocks=d["n_blocks"], growth_rate=d["dens_k"], compression=d["block_comp"],
        out_layers=d["dense_n_out_layer_block"], feature_channels=d["intermediate_out_ch"],
        transition_factor=d["trans_comp_factor"],
        dilation="multi" if bool(flags[0]) else "none", head_channels=d["channels"],
        num_classes=d.get("num_classes", 19), mean=tuple(d.get("mean", CITYSCAPES_MEAN)),
        std=tuple(d.get("std", CITYSCAPES_STD)))


def _mss_from_official(d: Dict[str, Any], target: str) -> MSSConfig:
    bands = tuple(
        BranchConfig(init, layers, ks, blocks, comps)
        for init, layers, ks, blocks, comps in zip(
            d["num_init_features"], d["num_layer_blocks"], d["dens_k"], d["b_n_blocks"],
            d["comp_rates"]))
    full = BranchConfig(d["f_num_init_features"], d["f_num_layer_block"], d["f_dens_k"],
                        d["f_n_blocks"], d["f_comp_rates"])
    kernel = d.get("kernel_size", 3)
    if kernel != 3:
        raise D3NetError("only 3x3 kernels are supported")
    patch = d.get("test_patch_len", d.get("patch_length", 256))
    return MSSConfig(
        target=target, name=f"mss-{target}", band_split=tuple(d["band_split_idxs"]),
        valid_bins=d["valid_signal_idx"], bands=bands, full=full,
        final_growth_rate=d["ttl_dens_k"], final_num_layers=d["ttl_num_layer_block"],
        audio_channels=d.get("n_channels", 2), fft_size=d.get("fft_size", 4096),
        hop_size=d.get("hop_size", 1024), sample_rate=d.get("fs", 44100),
        patch_frames=patch, out_shift=d.get("out_shift", patch // 2),
        dilation="multi" if d.get("dilation", True) else "none")


def describe(config: Config) -> str:
    """One line naming the config (for logs and errors)."""
    if isinstance(config, MSSConfig):
        return f"{config.name} (music separation, target {config.target})"
    return f"{config.name} (segmentation, {config.num_classes} classes, {config.head} head)"

