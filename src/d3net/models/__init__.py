"""Model builders, the d3net model file format, named weights and the one model loader.

Builders (torchvision style): :func:`d3net_s`, :func:`d3net_l`, :func:`d3net_mss` (each
with ``weights=``; the segmentation ones also ``weights_backbone=``), :func:`create` for any
config. A *model file* is described in :mod:`.files`; :func:`load` and :func:`load_separation`
accept any model spec (:mod:`.loading`). ``recompute=`` (and :func:`set_recompute`)
switches memory-efficient training on, a runtime setting that is not saved.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..configs import (MSSConfig, SegConfig, TARGETS, describe, load_config, preset,
                       to_dict)
from ..errors import D3NetError
from .files import FORMAT_NAME, FORMAT_VERSION, build, load_file, read_metadata, save
from .loading import (Spec, load, load_backbone_weights, load_separation, resolve,
                      wrong_task)
from ..nn import RECOMPUTE_MODES, recompute_mode, set_recompute
from .segmentation import D3NetSegmentation
from .separation import D3NetMSS
from .weights import WEIGHTS, Weights, get_weights

__all__ = ["D3NetSegmentation", "D3NetMSS", "d3net_s", "d3net_l", "d3net_mss", "create",
           "load", "load_separation", "load_backbone_weights", "load_file", "resolve", "save",
           "read_metadata", "count_parameters", "fingerprint", "Weights", "WEIGHTS",
           "get_weights", "wrong_task", "FORMAT_NAME", "FORMAT_VERSION",
           "set_recompute", "recompute_mode", "RECOMPUTE_MODES"]


def d3net_s(num_classes: int = 19, head: str = "fcn", dilation: str = "multi", *,
            weights: Optional[Spec] = None, weights_backbone: Optional[Spec] = None,
            progress: bool = True,
            recompute: Union[bool, str, None] = False) -> D3NetSegmentation:
    """D3Net-S (9.7 M parameters with the FCN head and 19 classes).

    Args:
        weights: whole-model weights (``"official-d3net-s"``, a model file or folder, an
            official ``.h5``); their config must equal the one asked for.
        weights_backbone: backbone weights only (``"official-d3net-s-backbone"``, ...);
            the head keeps its fresh initialisation (see :func:`load_backbone_weights`).
        progress: show download progress for weight names.
        recompute: memory-efficient training (see :func:`set_recompute`).
    """
    config = replace(preset("d3net-s"), num_classes=num_classes, head=head, dilation=dilation)
    return _built(config, weights, weights_backbone, progress, recompute)


def d3net_l(num_classes: int = 19, head: str = "fcn", dilation: str = "multi", *,
            weights: Optional[Spec] = None, weights_backbone: Optional[Spec] = None,
            progress: bool = True,
            recompute: Union[bool, str, None] = False) -> D3NetSegmentation:
    """D3Net-L (38.7 M parameters with the FCN head and 19 classes); ``weights``
    (``"official-d3net-l"``), ``weights_backbone`` (``"official-d3net-l-backbone"``) and
    ``progress`` and ``recompute`` as in :func:`d3net_s`."""
    config = replace(preset("d3net-l"), num_classes=num_classes, head=head, dilation=dilation)
    return _built(config, weights, weights_backbone, progress, recompute)


def d3net_mss(target: str = "vocals", dilation: str = "multi", small: bool = False, *,
              weights: Optional[Spec] = None, progress: bool = True,
              recompute: Union[bool, str, None] = False) -> D3NetMSS:
    """The official music separation network of ``target`` (vocals, drums, bass, other);
    ``small=True`` gives the reduced ``mss-small`` configuration instead.

    Args:
        weights: ``"official-mss"`` (``"demo"`` with ``small=True``), a separation model
            folder or a model file; the ``target`` network is taken from it and its config
            must equal the one asked for.
        progress: show download progress for weight names.
        recompute: memory-efficient training (see :func:`set_recompute`).
    """
    if target not in TARGETS:
        raise D3NetError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    config = replace(preset("mss-small" if small else f"mss-{target}", target=target),
                     dilation=dilation)
    return _built(config, weights, None, progress, recompute)


def _built(config, weights: Optional[Spec], weights_backbone: Optional[Spec],
           progress: bool, recompute: Union[bool, str, None]) -> nn.Module:
    """A model for ``config``: fresh, from ``weights``, or with a pretrained backbone."""
    if weights is not None and weights_backbone is not None:
        raise D3NetError("give weights or weights_backbone, not both (whole-model weights "
                         "include the backbone)")
    if weights is None:
        model = build(config)
        if weights_backbone is not None:
            load_backbone_weights(model, weights_backbone, progress=progress)
        return set_recompute(model, recompute)
    model = load(weights, task=config.task, target=getattr(config, "target", None),
                 progress=progress)
    ours, theirs = to_dict(config), to_dict(model.config)
    differ = [k for k in ours if k != "name" and ours[k] != theirs.get(k)]
    if differ:
        detail = ", ".join(f"{k} {theirs.get(k)!r} vs {ours[k]!r}" for k in differ[:3])
        raise D3NetError(f"{weights}: weights of {describe(model.config)} do not fit "
                         f"{describe(config)} ({detail})")
    return set_recompute(model, recompute)


def create(config: Union[str, Path, SegConfig, MSSConfig, Dict[str, Any]],
           task: Optional[str] = None, target: Optional[str] = None,
           recompute: Union[bool, str, None] = False) -> nn.Module:
    """A freshly initialised model from a preset name, YAML file, dict or config object.
    ``recompute``: memory-efficient training, see :func:`set_recompute`."""
    return set_recompute(build(load_config(config, task=task, target=target)), recompute)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (BatchNorm statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's config and every tensor of its ``state_dict``: equal
    fingerprints mean the same function, wherever the weights came from.

    Raises:
        D3NetError: the model has no ``.config`` (not a d3net model).
    """
    config = getattr(model, "config", None)
    if config is None:
        raise D3NetError("only d3net models (with a .config) have a fingerprint")
    digest = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
