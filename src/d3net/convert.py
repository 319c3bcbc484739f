"""Load Sony's official NNabla D3Net weights (``.h5``) into our models.

An NNabla parameter file is an HDF5 tree whose dataset paths are the parameter names
(``backbone/conv1/conv/W``, ``vocals/dense_band/0/...``); each dataset has the attributes
``need_grad`` and ``index`` (creation order). Convolution weights are ``(out, in, kh, kw)``
and transposed-convolution weights ``(in, out, kh, kw)``, as in PyTorch; BatchNorm
``beta/gamma/mean/var`` are stored as ``(1, C, 1, 1)``.

The mapping is strict: every official parameter is used exactly once and every model
parameter and BatchNorm statistic is filled (``num_batches_tracked`` has no official
counterpart). Anything else is an error naming the first offending names.

Functions here that build models import :mod:`d3net.models` when called: it imports this
module (its loader reads official files), a cycle otherwise.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .configs import MSSConfig, TARGETS, describe, load_config, preset
from .errors import D3NetError
from .utils import PathLike, check_writable

Mapping = Dict[str, str]  # official name -> our state_dict key


# ----------------------------------------------------------------------------- reading

def read_nnabla_h5(path: PathLike) -> "OrderedDict[str, np.ndarray]":
    """All parameters of an NNabla ``.h5`` file, in creation order, as float32 arrays."""
    import h5py  # start-up time: only official files need it

    path = Path(path)
    if not path.is_file():
        raise D3NetError(f"weights file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            items: List[Tuple[int, str, np.ndarray]] = []

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    items.append((int(obj.attrs.get("index", len(items))), name,
                                  np.asarray(obj[()], dtype=np.float32)))

            f.visititems(visit)
    except (OSError, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise D3NetError(f"{path}: not a readable NNabla .h5 parameter file ({reason})") from None
    if not items:
        raise D3NetError(f"{path}: contains no parameters")
    items.sort(key=lambda t: t[0])
    return OrderedDict((name, value) for _, name, value in items)


# ----------------------------------------------------------------------------- name maps

def _conv(m: Mapping, official: str, ours: str, module: nn.Module) -> None:
    m[f"{official}/W"] = f"{ours}.weight"
    if getattr(module, "bias", None) is not None:
        m[f"{official}/b"] = f"{ours}.bias"


def _bn(m: Mapping, official: str, ours: str) -> None:
    for a, b in (("beta", "bias"), ("gamma", "weight"), ("mean", "running_mean"),
                 ("var", "running_var")):
        m[f"{official}/{a}"] = f"{ours}.{b}"


def _unit(m: Mapping, official: str, ours: str, unit: nn.Module, scope: str) -> None:
    """A BN-ReLU-conv unit: official ``<scope>/{norm1/bn, conv1/conv}``."""
    if not isinstance(unit.conv, nn.Conv2d):
        raise D3NetError("official weights exist only for dilation 'multi' or 'none' models")
    _bn(m, f"{official}/{scope}/norm1/bn", f"{ours}.norm")
    _conv(m, f"{official}/{scope}/conv1/conv", f"{ours}.conv", unit.conv)


def _mss_d2(m: Mapping, official: str, ours: str, block) -> None:
    _unit(m, f"{official}/initial_layer", f"{ours}.initial", block.initial, "bottleneck")
    for i, stage in enumerate(block.stages):
        _unit(m, f"{official}/layers/layer{i + 1}", f"{ours}.stages.{i}", stage, "bottleneck")


def _mss_d3(m: Mapping, official: str, ours: str, block) -> None:
    _mss_d2(m, f"{official}/initial_block", f"{ours}.initial", block.initial)
    for i, d2 in enumerate(block.blocks):
        _mss_d2(m, f"{official}/layers/layer{i + 1}", f"{ours}.blocks.{i}", d2)


def _mss_branch(m: Mapping, official: str, ours: str, branch) -> None:
    levels = len(branch.down)
    for j, block in enumerate(branch.down):
        _mss_d3(m, f"{official}/ds_layers/dense_block{j}", f"{ours}.down.{j}", block)
    _mss_d3(m, f"{official}/bottleneck_block", f"{ours}.bottleneck", branch.bottleneck)
    for j, (up, block) in enumerate(zip(branch.up, branch.up_blocks)):
        _bn(m, f"{official}/us_layers/upsample{j}/upsample/norm/bn", f"{ours}.up.{j}.norm")
        _conv(m, f"{official}/us_layers/upsample{j}/upsample/transconv/deconv",
              f"{ours}.up.{j}.conv", up.conv)
        _mss_d3(m, f"{official}/us_layers/dense_block{levels + 1 + j}", f"{ours}.up_blocks.{j}",
                block)


def mss_name_map(model) -> Mapping:
    """Official parameter names (without the target scope) -> our keys, for a D3NetMSS."""
    m: Mapping = {}
    for name in ("in_offset", "in_scale", "decode_scale", "decode_bias"):
        m[name] = name
    for i, branch in enumerate(model.bands):
        _conv(m, f"features_init/{i}/conv", f"bands.{i}.stem", branch.stem)
        _mss_branch(m, f"dense_band/{i}", f"bands.{i}", branch)
    for key, match in model.match.items():
        _bn(m, f"match_fm_conv/{key}/norm/bn", f"match.{key}.norm")
        _conv(m, f"match_fm_conv/{key}/conv/conv", f"match.{key}.conv", match.conv)
    _conv(m, "features_init_full/conv", "full.stem", model.full.stem)
    _mss_branch(m, "dense_full", "full", model.full)
    _mss_d2(m, "final_dense", "final", model.final)
    _bn(m, "out_gate/bn/bn", "output.norm")
    _conv(m, "out_gate/conv_gate/conv/conv", "output.gate", model.output.gate)
    _conv(m, "out_gate/conv_filt/conv/conv", "output.filt", model.output.filt)
    return m


def seg_backbone_name_map(backbone, ours: str = "backbone") -> Mapping:
    m: Mapping = {}
    o = "backbone"
    _conv(m, f"{o}/conv1/conv", f"{ours}.stem.conv1", backbone.stem.conv1)
    _bn(m, f"{o}/bn1/bn", f"{ours}.stem.bn1")
    _conv(m, f"{o}/conv2/conv", f"{ours}.stem.conv2", backbone.stem.conv2)
    for s, d3 in enumerate(backbone.blocks):
        for b, d2 in enumerate(d3.blocks):
            p, q = f"{o}/dense{s + 1}/d2_block/block{b}", f"{ours}.blocks.{s}.blocks.{b}"
            if d2.bottleneck is not None:
                _unit(m, f"{p}/d2block/initial_layer/bc_layer", f"{q}.bottleneck", d2.bottleneck,
                      "bottle_neck")
            _unit(m, f"{p}/d2block/initial_layer/init_layer", f"{q}.initial", d2.initial,
                  "bottle_neck")
            for i, stage in enumerate(d2.stages):
                _unit(m, f"{p}/d2block/layers/layer{i + 1}", f"{q}.stages.{i}", stage,
                      "bottle_neck")
            if d2.compression is not None:
                _unit(m, f"{p}/block_dim_reduction", f"{q}.compression", d2.compression, "")
        feature = f"{o}/intermediate_out{s + 1}" if s < 3 else f"{o}/final_out4"
        _conv(m, f"{feature}/0/conv", f"{ours}.features.{s}.conv", backbone.features[s].conv)
        _bn(m, f"{feature}/1/bn", f"{ours}.features.{s}.norm")
        if s < 3:
            _bn(m, f"{o}/transition{s + 1}/bn/bn", f"{ours}.transitions.{s}.norm")
            _conv(m, f"{o}/transition{s + 1}/conv/conv", f"{ours}.transitions.{s}.conv",
                  backbone.transitions[s].conv)
    # block_dim_reduction has no "bottle_neck" scope level: drop the empty component
    return {k.replace("//", "/"): v for k, v in m.items()}


def seg_name_map(model, backbone_only: bool = False) -> Mapping:
    """Official names -> our keys for a D3NetSegmentation (FCN head unless backbone_only)."""
    m = seg_backbone_name_map(model.backbone)
    if not backbone_only:
        from .models.segmentation import FCNHead
        if not isinstance(model.head, FCNHead):
            raise D3NetError("official weights have an FCN head; build the model with head='fcn' "
                             "or load a backbone-only file")
        _conv(m, "decode_head/convs/0/conv/conv", "head.fuse.conv", model.head.fuse.conv)
        _bn(m, "decode_head/convs/0/bn/bn", "head.fuse.norm")
        _conv(m, "decode_head/conv_seg/conv", "head.classifier", model.head.classifier)
    return m


# ----------------------------------------------------------------------------- loading

def _add_backbone_scope(params: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
    """ImageNet backbone files may be saved without the ``backbone/`` scope (the official
    training loads them inside ``parameter_scope('backbone')``): add it back."""
    if "conv1/conv/W" in params and not any(n.startswith(("backbone/", "decode_head/"))
                                           for n in params):
        return OrderedDict((f"backbone/{n}", v) for n, v in params.items())
    return params


def infer_config(params: Dict[str, np.ndarray], path: Optional[PathLike] = None):
    """Guess the preset of an official file: d3net-s/-l from widths, mss-<target> from scope."""
    scopes = {name.split("/", 1)[0] for name in params}
    stem = Path(path).stem.lower() if path is not None else ""
    if "backbone" in scopes:
        key = ("backbone/dense1/d2_block/block0/d2block/initial_layer/init_layer/bottle_neck/"
               "conv1/conv/W")
        if key in params:
            width = params[key].shape[0] // 4  # growth_rate * num_layers (4) in both presets
            for name in ("d3net-s", "d3net-l"):
                if preset(name).growth_rate[0] == width:
                    return preset(name)
        raise D3NetError(f"{path}: a segmentation file of unknown size; pass --config YAML")
    targets = scopes & set(TARGETS)
    if len(targets) == 1:
        return preset(f"mss-{targets.pop()}")
    if stem in TARGETS:
        return preset(f"mss-{stem}")
    raise D3NetError(f"{path}: cannot tell which model this file holds (top-level scopes: "
                     f"{', '.join(sorted(scopes)[:5])}); pass --config")


def _mismatch(path, config, missing, unexpected, shapes=(), params=None) -> D3NetError:
    hint = ""
    if params is not None:
        try:
            hint = f" The file looks like {infer_config(params, path).name}."
        except D3NetError:
            pass
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (e.g. {', '.join(shapes[:2])})")
    hint = hint or " Is this the right file for this --config?"
    return D3NetError(f"{path}: parameters do not match {describe(config)}: "
                      + "; ".join(parts) + "." + hint)


def load_nnabla(path: PathLike, config=None, task: Optional[str] = None,
                backbone_only: Optional[bool] = None) -> nn.Module:
    """Build our model for ``config`` and fill it from an official NNabla ``.h5`` file.

    Args:
        path: the ``.h5`` file (e.g. ``D3Net-S.h5``, ``vocals.h5``).
        config: preset name (``"d3net-s"``, ``"d3net-l"``, ``"mss-vocals"``, ...), a YAML
            path (ours or the official format), a config object, or None to infer it.
        task: ``"seg"`` or ``"mss"`` when an official YAML leaves it open.
        backbone_only: load only the segmentation backbone (ImageNet backbone files),
            leaving the head initialised; detected automatically from the ``backbone/``
            scope when None. Parameters outside the backbone are ignored with a warning.

    Returns:
        The model, in eval mode.
    """
    return nnabla_model(path, config, task=task, backbone_only=backbone_only)[0]


def nnabla_model(path: PathLike, config=None, task: Optional[str] = None,
                 backbone_only: Optional[bool] = None) -> Tuple[nn.Module, bool]:
    """:func:`load_nnabla`, also saying whether only the backbone was filled (an ImageNet
    backbone file: the head keeps its fresh initialisation)."""
    from .models import create

    params = _add_backbone_scope(read_nnabla_h5(path))
    original = params
    if config is None:
        cfg = infer_config(params, path)
    else:
        scope = next(iter(params)).split("/", 1)[0]
        target = scope if scope in TARGETS else (
            Path(path).stem.lower() if Path(path).stem.lower() in TARGETS else None)
        cfg = load_config(config, task=task, target=target)
    model = create(cfg)

    if isinstance(cfg, MSSConfig):
        scopes = {n.split("/", 1)[0] for n in params}
        scope = scopes.pop()
        if scopes or scope not in TARGETS:
            raise _mismatch(path, cfg, [], list(params)[:3], params=original)
        if scope != cfg.target and cfg.name != f"mss-{scope}" and cfg.name.startswith("mss-") \
                and cfg.name[4:] in TARGETS:
            raise D3NetError(f"{path}: holds the {scope} model, but the config is {cfg.name}")
        cfg.target = scope
        params = OrderedDict((n.split("/", 1)[1], v) for n, v in params.items())
        mapping = mss_name_map(model)
    else:
        if backbone_only is None:
            backbone_only = (not any(n.startswith("decode_head/") for n in params)
                             and any(n.startswith("backbone/") for n in params))
        mapping = seg_name_map(model, backbone_only=backbone_only)
        if backbone_only:
            ignored = [n for n in params if not n.startswith("backbone/")]
            if ignored:
                warnings.warn(f"{path}: ignoring {len(ignored)} parameters outside the backbone "
                              f"(e.g. {', '.join(ignored[:3])})", stacklevel=2)
                params = OrderedDict((n, v) for n, v in params.items() if n.startswith("backbone/"))

    state = model.state_dict()
    missing = [n for n in mapping if n not in params]
    unexpected = [n for n in params if n not in mapping]
    shapes = [f"{name} {params[name].shape} vs {tuple(state[key].shape)}"
              for name, key in mapping.items()
              if name in params and params[name].size != state[key].numel()]
    if missing or unexpected or shapes:
        raise _mismatch(path, cfg, missing, unexpected, shapes, params=original)
    filled = set(mapping.values())
    unfilled = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")
                and not (backbone_only and not k.startswith("backbone."))]
    if unfilled:  # a bug in the name map, not a user error
        raise RuntimeError(f"name map leaves model entries unfilled: {unfilled[:5]}")

    new_state = {key: torch.from_numpy(params[name].reshape(state[key].shape).copy())
                 for name, key in mapping.items()}
    model.load_state_dict(new_state, strict=False)
    return model.eval(), bool(backbone_only) and not isinstance(cfg, MSSConfig)


def unpack_official_zip(path: PathLike, folder: PathLike,
                        names: Optional[List[str]] = None) -> Dict[str, Path]:
    """Extract the ``.h5`` files ``names`` (default: all) of an official archive
    (``d3net-mss.zip``) into ``folder`` (created); returns file name -> extracted path.

    Members are found by file name wherever they sit inside the archive and written under
    that name only (never outside ``folder``). Every member's CRC is checked.

    Raises:
        D3NetError: not a complete zip archive, a corrupt member, or a needed file missing.
    """
    path, folder = Path(path), Path(folder)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                name = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                if not info.is_dir() and name.lower().endswith(".h5"):
                    members.setdefault(name, info)
            wanted = list(members) if names is None else list(names)
            missing = [n for n in wanted if n not in members]
            if missing:
                raise D3NetError(f"{path}: the archive lacks {', '.join(missing)} (it holds "
                                 f"{', '.join(sorted(members)) or 'no .h5 file'})")
            folder.mkdir(parents=True, exist_ok=True)
            extracted = {}
            for name in wanted:
                with archive.open(members[name]) as source, open(folder / name, "wb") as target:
                    shutil.copyfileobj(source, target)  # reading to the end checks the CRC
                extracted[name] = folder / name
    except (zipfile.BadZipFile, EOFError) as exc:
        raise D3NetError(f"{path}: not a complete zip archive ({exc})") from None
    return extracted


def convert_nnabla(src: PathLike, dst: PathLike, config=None, task: Optional[str] = None,
                   backbone_only: Optional[bool] = None) -> List[Path]:
    """Convert official weights to d3net ``.safetensors`` model files.

    ``src`` is one ``.h5`` file, a folder of official music models (``vocals.h5``, ...) or
    the official archive of them (``d3net-mss.zip``). ``dst`` is a ``.safetensors`` file
    (one ``.h5`` only) or a folder, which then receives what ``--model FOLDER`` reads:
    ``<target>.safetensors`` for music models, ``model.safetensors`` for a segmentation
    model. An ImageNet backbone file is marked ``backbone_only`` in the file's metadata.

    Everything is converted in memory first; files are written only if all succeed, each
    atomically.
    """
    from .models import save

    src, dst = Path(src), Path(dst)
    if src.suffix.lower() == ".zip" and src.is_file():
        with tempfile.TemporaryDirectory(prefix="d3net-unzip-") as tmp:
            unpack_official_zip(src, tmp)
            return convert_nnabla(tmp, dst, config=config, task=task, backbone_only=backbone_only)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".h5")
        if not files:
            raise D3NetError(f"{src}: no .h5 files in this folder")
        if dst.suffix.lower() == ".safetensors":
            raise D3NetError(f"{dst}: converting a folder needs an output folder, not a file")
        check_writable(dst)
        models = {}
        for file in files:
            model = load_nnabla(file, config, task=task)
            if not isinstance(model.config, MSSConfig):
                raise D3NetError(f"{file}: folder conversion is for the four music models; "
                                 "convert segmentation files one by one")
            target = model.config.target
            if target in models:
                raise D3NetError(f"{src}: two files hold the {target} model")
            models[target] = model
        return [save(model, dst / f"{target}.safetensors") for target, model in models.items()]
    single_file = dst.suffix.lower() == ".safetensors"
    check_writable(dst.parent if single_file else dst)
    model, backbone = nnabla_model(src, config, task=task, backbone_only=backbone_only)
    if not single_file:
        from .models.files import SEG_MODEL_FILE
        dst = dst / (f"{model.config.target}.safetensors" if isinstance(model.config, MSSConfig)
                     else SEG_MODEL_FILE)
    return [save(model, dst, extra={"backbone_only": "true"} if backbone else None)]
