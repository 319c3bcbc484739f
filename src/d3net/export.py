"""Export music networks to ONNX or OpenVINO IR, for deployment outside PyTorch.

Each target's network is exported on its own (as Sony's OpenVINO variant of D3Net loads one
file per source), as :class:`d3net.backends.PatchNetwork`: input ``magnitude``
``(batch, channels, bins, frames)`` float32, output ``estimate`` of the same shape, batch
and frames dynamic, frames a multiple of ``frame_multiple`` (16 for the official
configurations; pad with zeros and crop). The separation around it is described in
:mod:`d3net.separate`. The file records the d3net config (JSON), the weights'
:func:`d3net.models.fingerprint`, the target and ``frame_multiple``: ONNX in its
``metadata_props``, OpenVINO IR in its ``rt_info`` under ``d3net``. Both match the PyTorch
float32 output to ~1e-7 relative (tests/test_backends.py asserts 1e-5).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from d3net.backends import convert_openvino, traceable
from d3net.configs import to_dict
from d3net.errors import D3NetError
from d3net.models import D3NetMSS, fingerprint, load_separation
from d3net.utils import PathLike, atomic_path, check_writable

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
ONNX_OPSET = 17

__all__ = ["FORMATS", "export_onnx", "export_openvino", "export_models"]


def _metadata(model: D3NetMSS) -> Dict[str, str]:
    config = model.config
    return {"d3net_config": json.dumps(to_dict(config)),
            "d3net_fingerprint": fingerprint(model),
            "target": str(config.target),
            "frame_multiple": str(config.frame_multiple),
            "layout": "magnitude (batch, channels, bins, frames) -> estimate, same shape"}


def export_onnx(model: D3NetMSS, path: PathLike, frames: Optional[int] = None,
                opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` as one ONNX file (atomically), dynamic batch and frame axes.

    Args:
        model: a music network (left untouched; a float32 CPU copy is exported).
        path: the ``.onnx`` file to write.
        frames: the traced example's frame count (default ``patch_frames``).
        opset: ONNX opset version.

    Raises:
        D3NetError: not a music network, or the ``onnx`` package is missing.
    """
    if not isinstance(model, D3NetMSS):
        raise D3NetError("only d3net music separation networks can be exported (got "
                         f"{type(model).__name__})")
    try:
        import onnx  # optional dependency (extra "onnx")
    except ImportError:
        raise D3NetError("exporting to ONNX needs onnx: pip install 'd3net[onnx]'") from None
    network, example = traceable(model, frames)
    dynamic = {0: "batch", 3: "frames"}
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter needs no extra package (the torch.export-based
        # one needs onnxscript); it warns that it is the legacy route
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["magnitude"], output_names=["estimate"],
                          dynamic_axes={"magnitude": dynamic, "estimate": dynamic})
        proto = onnx.load(str(tmp))
        for key, value in _metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "d3net"
        onnx.save(proto, str(tmp))
    return path


def export_openvino(model: D3NetMSS, path: PathLike,
                    frames: Optional[int] = None) -> Path:
    """Write ``model`` as OpenVINO IR: ``path`` (``.xml``) and the ``.bin`` beside it,
    float32 weights (no FP16 compression), dynamic batch and frame axes.

    Each file is renamed into place from a temporary folder (the ``.bin`` first), so an
    interrupted export never leaves a half-written file.

    Raises:
        D3NetError: not a music network, or OpenVINO is missing.
    """
    converted = convert_openvino(model, frames)
    import openvino as ov  # optional dependency, present once convert_openvino returned

    for key, value in _metadata(model).items():
        converted.set_rt_info(value, ["d3net", key])
    path = Path(path)
    if path.suffix != ".xml":
        raise D3NetError(f"{path}: an OpenVINO IR file name ends with .xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ov.save_model(converted, tmp / path.name, compress_to_fp16=False)
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_models(model: PathLike, format: str, out: PathLike,
                  frames: Optional[int] = None) -> List[Path]:
    """Export a model file or every network of a separation model folder.

    Args:
        model: a separation model spec: a d3net music model file, a separation model
            folder, an official ``.h5`` or a weight name (``official-mss``, ``demo``).
        format: ``"onnx"`` or ``"openvino"``.
        out: for a single model, the output file if it ends with ``.onnx`` / ``.xml``;
            otherwise (and always for a folder) a folder that gets ``<target>.onnx`` or
            ``<target>.xml`` + ``<target>.bin``.
        frames: the traced example's frame count (default ``patch_frames``).

    Returns:
        The written files (``.onnx`` or ``.xml``).

    Raises:
        D3NetError: unknown format, missing or non-music model, missing optional package.
    """
    if format not in FORMATS:
        raise D3NetError(f"unknown export format {format!r}; expected one of "
                         f"{', '.join(FORMATS)}")
    suffix = FORMATS[format]
    networks = load_separation(model)
    out = Path(out)
    if len(networks) == 1 and not Path(model).is_dir() and out.suffix == suffix:
        destinations = {target: out for target in networks}
    else:
        if out.suffix in FORMATS.values():
            raise D3NetError(f"{model} holds {len(networks)} networks: -o must be a folder, "
                             f"not {out}")
        destinations = {target: out / f"{target}{suffix}" for target in networks}
    check_writable(*{path.parent for path in destinations.values()})  # before any tracing
    writer = export_onnx if format == "onnx" else export_openvino
    return [writer(networks[target], path, frames) for target, path in destinations.items()]
