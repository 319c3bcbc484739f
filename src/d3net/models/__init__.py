"""Model builders and the d3net model file format.

Builders (torchvision style): :func:`d3net_s`, :func:`d3net_l`, :func:`d3net_mss`,
:func:`create` for any config; their ``recompute=`` (and :func:`set_recompute` on an
existing model) switches memory-efficient training on, a runtime setting that is not
saved. A *model file* is one ``.safetensors`` holding the weights (parameters and
BatchNorm statistics) with the full config as JSON in its metadata, so :func:`load`
rebuilds the model from the file alone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..configs import (MSSConfig, SegConfig, TARGETS, describe, from_dict, load_config,
                       preset, to_dict)
from ..errors import D3NetError
from ..nn import RECOMPUTE_MODES, recompute_mode, set_recompute
from .segmentation import D3NetSegmentation
from .separation import D3NetMSS

__all__ = ["D3NetSegmentation", "D3NetMSS", "d3net_s", "d3net_l", "d3net_mss", "create",
           "load", "save", "count_parameters", "fingerprint", "set_recompute",
           "recompute_mode", "RECOMPUTE_MODES", "FORMAT_NAME"]

FORMAT_NAME = "d3net"
FORMAT_VERSION = "1"


def d3net_s(num_classes: int = 19, head: str = "fcn", dilation: str = "multi",
            recompute: Union[bool, str, None] = False) -> D3NetSegmentation:
    """D3Net-S (9.7 M parameters with the FCN head and 19 classes). ``recompute``: see
    :func:`set_recompute`."""
    config = preset("d3net-s")
    config.num_classes, config.head, config.dilation = num_classes, head, dilation
    return D3NetSegmentation(SegConfig(**_init_fields(config)), recompute=recompute)


def d3net_l(num_classes: int = 19, head: str = "fcn", dilation: str = "multi",
            recompute: Union[bool, str, None] = False) -> D3NetSegmentation:
    """D3Net-L (38.7 M parameters with the FCN head and 19 classes). ``recompute``: see
    :func:`set_recompute`."""
    config = preset("d3net-l")
    config.num_classes, config.head, config.dilation = num_classes, head, dilation
    return D3NetSegmentation(SegConfig(**_init_fields(config)), recompute=recompute)


def d3net_mss(target: str = "vocals", dilation: str = "multi", small: bool = False,
              recompute: Union[bool, str, None] = False) -> D3NetMSS:
    """The official music separation network of ``target`` (vocals, drums, bass, other);
    ``small=True`` gives the reduced ``mss-small`` configuration instead. ``recompute``:
    see :func:`set_recompute`."""
    if target not in TARGETS:
        raise D3NetError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    config = preset("mss-small" if small else f"mss-{target}", target=target)
    config.dilation = dilation
    return D3NetMSS(MSSConfig(**_init_fields(config)), recompute=recompute)


def _init_fields(config) -> Dict[str, Any]:
    import dataclasses
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


def create(config: Union[str, Path, SegConfig, MSSConfig, Dict[str, Any]],
           task: Optional[str] = None, target: Optional[str] = None,
           recompute: Union[bool, str, None] = False) -> nn.Module:
    """A freshly initialised model from a preset name, YAML file, dict or config object.
    ``recompute``: memory-efficient training, see :func:`set_recompute`."""
    config = load_config(config, task=task, target=target)
    if isinstance(config, MSSConfig):
        return D3NetMSS(config, recompute=recompute)
    return D3NetSegmentation(config, recompute=recompute)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (BatchNorm statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's config and every tensor of its ``state_dict``.

    Two models with the same fingerprint compute the same function, wherever their weights
    came from (a model file, an official ``.h5``, memory). Used to key caches and to record
    which model produced a result.

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


def save(model: nn.Module, path: Union[str, Path], extra: Optional[Dict[str, str]] = None) -> Path:
    """Write ``model`` (weights + config) to one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    from ..utils import atomic_path

    config = getattr(model, "config", None)
    if config is None:
        raise D3NetError("only d3net models (with a .config) can be saved")
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "config": json.dumps(to_dict(config))}
    metadata.update(extra or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata of a d3net model file, with a clear error for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise D3NetError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise D3NetError(f"{path}: not a safetensors model file ({exc})") from None
    if metadata.get("format") != FORMAT_NAME or "config" not in metadata:
        raise D3NetError(f"{path}: a safetensors file without a d3net config; convert official "
                         "weights with 'd3net convert nnabla'")
    return metadata


def load(path: Union[str, Path], device: Union[str, torch.device, None] = None) -> nn.Module:
    """Rebuild a model from a d3net ``.safetensors`` file, in eval mode."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    config = from_dict(json.loads(metadata["config"]))
    model = create(config)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise D3NetError(f"{path}: weights do not match {describe(config)}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()
    if device is not None:
        model.to(device)
    return model
