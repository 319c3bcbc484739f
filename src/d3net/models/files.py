"""The d3net model file: one ``.safetensors`` holding one network's weights (parameters and
BatchNorm statistics) with its full config as JSON in the metadata, so that
:func:`load_file` rebuilds the model from the file alone.

Metadata keys: ``format`` (``"d3net"``), ``format_version``, ``config``; optional
provenance written by :mod:`d3net.models.hub` (``weights``, ``source_url``) and
``backbone_only`` (``"true"``: an ImageNet backbone whose head is untrained).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file as read_tensors, save_file
from torch import nn

from ..configs import MSSConfig, describe, from_dict, to_dict
from ..errors import D3NetError
from ..utils import PathLike, atomic_path
from .segmentation import D3NetSegmentation
from .separation import D3NetMSS

FORMAT_NAME = "d3net"
FORMAT_VERSION = "1"
#: The model file inside a segmentation model folder (a ``d3net train seg`` run folder).
SEG_MODEL_FILE = "model.safetensors"


def build(config) -> nn.Module:
    """A freshly initialised model for a config object."""
    if isinstance(config, MSSConfig):
        return D3NetMSS(config)
    return D3NetSegmentation(config)


def save(model: nn.Module, path: PathLike, extra: Optional[Dict[str, str]] = None) -> Path:
    """Write ``model`` (weights + config) to one ``.safetensors`` file, atomically."""
    config = getattr(model, "config", None)
    if config is None:
        raise D3NetError("only d3net models (with a .config) can be saved")
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "config": json.dumps(to_dict(config)), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata of a d3net model file, with a clear error for anything else."""
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


def file_task(metadata: Dict[str, str]) -> Optional[str]:
    """``"seg"`` or ``"mss"`` from a model file's metadata (without loading the weights)."""
    try:
        return json.loads(metadata["config"]).get("task")
    except (ValueError, AttributeError):
        return None


def load_file(path: PathLike, device: Union[str, torch.device, None] = None) -> nn.Module:
    """Rebuild a model from one d3net ``.safetensors`` file, in eval mode.

    Raises:
        D3NetError: missing file, not a d3net model file, or weights that do not fit the
            config stored with them.
    """
    metadata = read_metadata(path)
    config = from_dict(json.loads(metadata["config"]))
    model = build(config)
    state = read_tensors(str(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        reason = str(exc).strip().splitlines()[-1].strip()
        raise D3NetError(f"{path}: weights do not match {describe(config)}: {reason}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise D3NetError(f"{path}: weights do not match {describe(config)}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()
    if device is not None:
        model.to(device)
    return model
