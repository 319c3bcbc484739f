"""One way to load a model, whatever names it.

A *model spec* (what ``--model``, :func:`load`, :func:`load_separation` and the builders'
``weights=`` accept) is one of:

=======================  ===============================================================
weight name              ``official-mss``, ``official-d3net-s``, ``official-d3net-l``,
                         ``demo`` (:mod:`d3net.models.weights`); official weights are
                         fetched, verified, converted and cached on first use
model file               ``X.safetensors`` in the d3net format (config inside)
official file            ``X.h5`` from Sony's release, converted in memory
separation model folder  ``<target>.safetensors`` (or official ``<target>.h5``) for some
                         of vocals, drums, bass, other; a ``d3net train mss`` run folder
segmentation folder      ``FOLDER/model.safetensors``; a ``d3net train seg`` run folder
=======================  ===============================================================

Names win over paths: write ``./demo`` for a local folder called ``demo``. A spec of the
wrong task is refused with the same sentence everywhere (:func:`wrong_task`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file as read_tensors
from torch import nn

from ..configs import TARGETS, SegConfig, describe
from ..convert import load_nnabla, nnabla_model
from ..errors import D3NetError
from . import hub
from .files import SEG_MODEL_FILE, file_task, load_file, read_metadata
from .weights import TASK_NAMES, WEIGHTS, Weights, get_weights

Spec = Union[str, "os.PathLike[str]", Weights]
Device = Union[str, torch.device, None]


@dataclass(frozen=True)
class Source:
    """What a model spec names, found without loading weights or downloading.

    ``kind`` is ``"weights"`` (then ``weights`` is the registry entry), ``"file"`` (d3net
    ``.safetensors``), ``"h5"`` (official) or ``"folder"`` (then ``path`` is set); ``task``
    is ``None`` where unknown before loading (``.h5``).
    """

    spec: str
    kind: str
    path: Optional[Path] = None
    weights: Optional[Weights] = None
    task: Optional[str] = None
    backbone_only: bool = False


def wrong_task(spec: str, found: str, wanted: str) -> D3NetError:
    """The one sentence for a model of the wrong task (same in every command)."""
    return D3NetError(f"{spec}: not a {TASK_NAMES[wanted]} model (it is a "
                      f"{TASK_NAMES[found]} model)")


def backbone_refused(spec: str) -> D3NetError:
    """The one sentence for an ImageNet backbone used where a whole model is needed."""
    return D3NetError(f"{spec}: an ImageNet backbone for fine-tuning, whose head is untrained; "
                      "pass it as --pretrained-backbone (weights_backbone= in Python), or use a "
                      "whole model such as official-d3net-s")


def resolve(spec: Spec, task: Optional[str] = None) -> Source:
    """Find what ``spec`` names (cheap: reads at most file headers; never downloads).

    Args:
        spec: a model spec (see the module docstring).
        task: ``"mss"`` or ``"seg"`` to refuse the other task now, where it is known.

    Raises:
        D3NetError: nothing found, not a model, or the wrong task.
    """
    if task not in (None, "mss", "seg"):
        raise D3NetError(f"task must be 'mss' or 'seg', got {task!r}")
    if isinstance(spec, Weights) or (isinstance(spec, str) and spec in WEIGHTS):
        weights = get_weights(spec)
        source = Source(weights.name, "weights", weights=weights, task=weights.task,
                        backbone_only=weights.backbone_only)
        return _checked(source, task)
    if not isinstance(spec, (str, os.PathLike)):
        raise D3NetError(f"a model is named by a path or a weight name, got "
                         f"{type(spec).__name__}")
    text, path = os.fspath(spec), Path(spec)
    if not path.exists():
        raise D3NetError(f"model not found: {text} (not a file, a folder or a weight name; "
                         f"names: {', '.join(WEIGHTS)})")
    if path.is_dir():
        return _checked(_folder(text, path, task), task)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        metadata = read_metadata(path)
        return _checked(Source(text, "file", path, task=file_task(metadata),
                               backbone_only=metadata.get("backbone_only") == "true"), task)
    if suffix == ".h5":
        return Source(text, "h5", path)
    raise D3NetError(f"{text}: not a model (expected a .safetensors model file, an official "
                     ".h5 file, a model folder or a weight name)")


def _folder(text: str, path: Path, task: Optional[str]) -> Source:
    seg_file = path / SEG_MODEL_FILE
    music = [t for t in TARGETS
             if (path / f"{t}.safetensors").is_file() or (path / f"{t}.h5").is_file()]
    if seg_file.is_file() and (task == "seg" or not music):
        metadata = read_metadata(seg_file)
        return Source(text, "folder", path, task=file_task(metadata),
                      backbone_only=metadata.get("backbone_only") == "true")
    if music:
        return Source(text, "folder", path, task="mss")
    music_files = f"<target>.safetensors for some of {', '.join(TARGETS)}"
    expected = {"seg": f"no segmentation model found (expected {SEG_MODEL_FILE})",
                "mss": f"no separation model found (expected {music_files})",
                None: f"no model found (expected {SEG_MODEL_FILE} for segmentation, or "
                      f"{music_files} for separation)"}
    raise D3NetError(f"{text}: {expected[task]}")


def _checked(source: Source, task: Optional[str]) -> Source:
    if task is not None and source.task is not None and source.task != task:
        raise wrong_task(source.spec, source.task, task)
    return source


def _files(source: Source, progress: bool) -> Dict[Optional[str], Path]:
    """target (music) or ``None`` (a single model) -> file (.safetensors or .h5)."""
    if source.kind == "weights":
        where = hub.fetch(source.weights, progress=progress)
        if not source.weights.is_set:
            return {None: where}
        return {t: where / f"{t}.safetensors" for t in source.weights.targets}
    if source.kind in ("file", "h5"):
        return {None: source.path}
    if source.task != "mss":
        return {None: source.path / SEG_MODEL_FILE}
    files = {}
    for target in TARGETS:
        for suffix in (".h5", ".safetensors"):  # .safetensors wins over .h5
            if (source.path / f"{target}{suffix}").is_file():
                files[target] = source.path / f"{target}{suffix}"
    if not files:  # a folder whose model.safetensors holds a music model
        raise D3NetError(f"{source.spec}: no separation model found (expected "
                         f"<target>.safetensors for some of {', '.join(TARGETS)})")
    return files


def _load_one(path: Path, device: Device) -> Tuple[nn.Module, bool]:
    """(model, whether it is an ImageNet backbone only) from a model file or official .h5."""
    if path.suffix.lower() == ".h5":
        model, backbone_only = nnabla_model(path)
    else:
        model, backbone_only = load_file(path), read_metadata(path).get("backbone_only") == "true"
    return model.to(device) if device is not None else model, backbone_only


def _task_of(model: nn.Module) -> Optional[str]:
    return getattr(getattr(model, "config", None), "task", None)


def load(spec: Spec, task: Optional[str] = None, device: Device = None, *,
         target: Optional[str] = None, progress: bool = True) -> nn.Module:
    """One network from a model spec, in eval mode.

    Args:
        spec: a model spec (module docstring).
        task: ``"seg"`` or ``"mss"``: refuse the other task (:func:`wrong_task`).
        device: where to put the model.
        target: for a separation set (``official-mss``, a separation model folder), which
            network; for a single music model file, checked against it.
        progress: show download progress for weight names.

    Returns:
        A :class:`~d3net.models.D3NetSegmentation` or :class:`~d3net.models.D3NetMSS`.

    Raises:
        D3NetError: see :func:`resolve`; a set with several networks and no ``target``; an
            ImageNet backbone (use :func:`load_backbone_weights`); download problems
            (:func:`d3net.models.hub.fetch`).
    """
    source = resolve(spec, task)
    if source.backbone_only:
        raise backbone_refused(source.spec)
    files = _files(source, progress)
    if None not in files:
        if target is None and len(files) != 1:
            raise D3NetError(f"{source.spec}: holds {len(files)} separation models "
                             f"({', '.join(files)}); pass target=... or use load_separation()")
        target = target or next(iter(files))
        if target not in files:
            raise _no_target(source.spec, [target], files)
    model, backbone_only = _load_one(files.get(None) or files[target], device)
    found = _task_of(model)
    if task is not None and found != task:
        raise wrong_task(source.spec, found, task)
    if backbone_only:
        raise backbone_refused(source.spec)
    if target is not None and found == "mss" and model.config.target != target:
        raise D3NetError(f"{source.spec}: holds the {model.config.target} model, not {target}")
    return model


def load_separation(spec: Spec, targets: Optional[Sequence[str]] = None, device: Device = None,
                    *, progress: bool = True) -> Dict[str, nn.Module]:
    """A separation set: ``{target: network}`` in the order vocals, drums, bass, other.

    Args:
        spec: a weight name (``official-mss``, ``demo``), a separation model folder (or
            training run folder, or a folder of official ``<target>.h5``), or one music
            model file (``.safetensors`` or official ``.h5``: a one-target set).
        targets: only these targets (default: every one the spec provides).
        device: where to put the networks.
        progress: show download progress for weight names.

    Raises:
        D3NetError: see :func:`resolve` (a segmentation model gets :func:`wrong_task`); a
            requested target the spec does not provide; download problems.
    """
    source = resolve(spec, "mss")
    files = _files(source, progress)
    single = None in files  # one model file: a one-target set
    if not single:
        wanted = list(files) if targets is None else list(targets)
        if [t for t in wanted if t not in files]:
            raise _no_target(source.spec, wanted, files)
        files = {t: files[t] for t in TARGETS if t in wanted}
    models = {}
    for target, path in files.items():
        model, _ = _load_one(path, device)
        found = _task_of(model)
        if found != "mss":
            raise wrong_task(source.spec if single else str(path), found, "mss")
        if not single and model.config.target != target:
            raise D3NetError(f"{path}: holds the {model.config.target} model, not {target}")
        models[model.config.target] = model
    if single and targets is not None and [t for t in targets if t not in models]:
        raise _no_target(source.spec, targets, models)
    return models


def _no_target(spec: str, wanted: Sequence[str], available) -> D3NetError:
    missing = [t for t in wanted if t not in available]
    return D3NetError(f"{spec}: no model for target(s) {', '.join(missing)}; available: "
                      f"{', '.join(available)}")


def load_backbone_weights(model: nn.Module, weights: Spec, progress: bool = True) -> List[str]:
    """Fill ``model.backbone`` from a pretrained backbone, in place (``weights_backbone=``,
    ``d3net train seg --pretrained-backbone``); the head is left alone.

    Args:
        model: a :class:`~d3net.models.D3NetSegmentation` (any head).
        weights: a weight name (``official-d3net-s-backbone``; a whole segmentation model
            such as ``official-d3net-s`` also works), an official ``.h5`` (a backbone file,
            or a whole model whose backbone is taken), a ``.safetensors`` file (one of our
            model files, or a bare backbone state dict with or without the ``backbone.``
            prefix), or a segmentation model folder.
        progress: show download progress for weight names.

    Returns:
        The state-dict keys that were loaded.

    Raises:
        D3NetError: not a segmentation model; weights of another task; a backbone of
            another size (names the mismatch).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, SegConfig):
        raise D3NetError("a pretrained backbone goes into a segmentation model")
    path = None if isinstance(weights, Weights) else Path(weights)
    if path is not None and path.is_file() and path.suffix.lower() == ".safetensors":
        text, file = os.fspath(weights), path  # may be a bare state dict: no resolve()
    else:
        source = resolve(weights, "seg")
        text = source.spec
        if source.kind == "h5":
            with warnings.catch_warnings():  # "ignoring the head parameters" is the point
                warnings.simplefilter("ignore")
                state = load_nnabla(source.path, config, task="seg",
                                    backbone_only=True).state_dict()
            return _fill_backbone(model, state, text)
        file = _files(source, progress)[None]
    try:
        state = read_tensors(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise D3NetError(f"{file}: not a readable safetensors file ({exc})") from None
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    return _fill_backbone(model, state, text)


def _fill_backbone(model: nn.Module, state: Dict[str, torch.Tensor], spec: str) -> List[str]:
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    given = {k: v for k, v in state.items() if k.startswith("backbone.")}
    missing = [k for k in wanted if k not in given and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
              if k in given and given[k].shape != v.shape]
    if missing or shapes:
        detail = (f"{len(missing)} missing (e.g. {', '.join(missing[:2])})" if missing
                  else f"{len(shapes)} with other shapes (e.g. {shapes[0]})")
        raise D3NetError(f"{spec}: backbone does not fit {describe(model.config)}: {detail}")
    loaded = {k: given[k] for k in wanted if k in given}
    model.load_state_dict(loaded, strict=False)
    return list(loaded)
