"""``d3net train mss|seg``: train a network with the paper's recipe (one process or torchrun,
e.g. ``torchrun --nproc_per_node 4 -m d3net.cli train mss ...``).

The recipe options are generated from the hyper-parameter dataclasses' fields; an option
left out is ``None``: the recipe's default, or on ``--resume`` the run's own value.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, Dict, Sequence, Type

from ..configs import TARGETS
from ..train.distributed import SYNC_BN_MODES
from ..train import mss as mss_recipe
from ..train import seg as seg_recipe
from ..train.hparams import HyperParams, shown_default
from ..utils import check_writable
from . import add_device_option, add_quiet

PLAIN_TYPES = {int: "N", float: "X", str: "TEXT"}  # types read as they are -> default metavar


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a music separation or segmentation network",
        description="Train D3Net with the paper's recipe. Run under torchrun for "
                    "multi-GPU / multi-node training (DDP; SyncBatchNorm on GPUs).")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    mss = tasks.add_parser(
        "mss", help="music source separation: one network per target",
        description="Train the D3Net of one target on a MUSDB18-HQ folder (or MUSDB18 "
                    "stem files). Writes RUNDIR/<target>.safetensors (best by validation "
                    "loss, or last), RUNDIR/<target>.last.safetensors and the resumable "
                    "RUNDIR/<target>.ckpt; train the four targets into one RUNDIR to get a "
                    "folder for 'd3net separate --model RUNDIR'. On --resume, omitted "
                    "options keep the run's values.")
    _add_run_options(mss, "dataset root with train/ (MUSDB18-HQ layout, or 'd3net data "
                          "synth-musdb' output)",
                     "mss-vocals, mss-drums, mss-bass, mss-other, mss-small or a YAML file (ours "
                     "or the official format); default mss-<target>", targets=TARGETS)
    add_hparam_options(mss, mss_recipe.MSSHyperParams, "recipe (defaults: the official values)")
    _add_runtime(mss)
    mss.set_defaults(func=run_mss)

    seg = tasks.add_parser(
        "seg", help="semantic segmentation (Cityscapes)",
        description="Train a D3Net segmentation model on a Cityscapes folder (leftImg8bit/ "
                    "and gtFine/; 'd3net data synth-cityscapes' writes one). Writes "
                    "RUNDIR/model.safetensors (best validation mIoU, or last), "
                    "RUNDIR/last.safetensors, the resumable RUNDIR/train.ckpt and "
                    "RUNDIR/logs/ (TensorBoard). On --resume, omitted options keep the "
                    "run's values; a larger --iters extends the run.")
    _add_run_options(seg, "Cityscapes folder (train split for training, val for validation)",
                     "d3net-s (default), d3net-l or a YAML file (ours or the official format)")
    seg.add_argument("--head", choices=seg_recipe.HEADS,
                     help="decoder head (default: the config's, fcn); ocr = object-contextual "
                          "representations with an auxiliary loss")
    seg.add_argument("--pretrained-backbone", metavar="M",
                     help="ImageNet backbone: a weight name (official-d3net-s-backbone, "
                          "official-d3net-l-backbone; fetched on first use), an official .h5 "
                          "or a d3net .safetensors")
    add_hparam_options(seg, seg_recipe.SegHyperParams, "recipe (defaults: the paper's values)")
    _add_runtime(seg)
    seg.set_defaults(func=run_seg)


def _add_run_options(p: argparse.ArgumentParser, root_help: str, config_help: str,
                     targets: Sequence[str] = ()) -> None:
    p.add_argument("--root", required=True, metavar="DIR", help=root_help)
    if targets:
        p.add_argument("--target", required=True, choices=targets)
    p.add_argument("--out", required=True, metavar="RUNDIR", help="run folder")
    p.add_argument("--config", metavar="PRESET|YAML", help="architecture: " + config_help)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    """Options every training command shares (how to run, not what to train)."""
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its checkpoint stopped; "
                        "a larger --epochs/--iters extends it")
    p.add_argument("--sync-bn", choices=SYNC_BN_MODES, default="auto",
                   help="SyncBatchNorm across processes: auto = on GPUs under torchrun "
                        "(default); 'on' needs CUDA (PyTorch's SyncBatchNorm refuses CPU)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="data loading worker processes (default 0: load in the main process)")
    add_device_option(p, "; under torchrun each process uses cuda:LOCAL_RANK")
    add_quiet(p)


def _fields(hparams: Type[HyperParams]):
    """The fields in command-line order: the recipe's own, then the shared ones."""
    shared = {f.name for f in dataclasses.fields(HyperParams)}
    return sorted(dataclasses.fields(hparams), key=lambda f: f.name in shared)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _without_none(kind: Any) -> Any:
    """``X`` for ``Optional[X]``, else ``kind``."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind


def add_hparam_options(parser: argparse.ArgumentParser, hparams: Type[HyperParams],
                       title: str) -> None:
    """One option per field of ``hparams`` (default ``None``: not given)."""
    group = parser.add_argument_group(title)
    types = typing.get_type_hints(hparams)
    for field in _fields(hparams):
        meta = field.metadata
        help_text = f"{meta['help']} (default: {shown_default(field)})".replace("%", "%%")
        kwargs: Dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        kind = _without_none(types[field.name])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("parse") is not None:  # text, read by hparams_from_args
            kwargs["metavar"] = meta.get("metavar")
        elif meta.get("choices"):
            kwargs.update(type=kind, choices=meta["choices"])
            if meta.get("const") is not None:
                kwargs.update(nargs="?", const=meta["const"])
        elif kind in PLAIN_TYPES:
            kwargs.update(type=kind, metavar=meta.get("metavar") or PLAIN_TYPES[kind])
        else:
            raise TypeError(f"{hparams.__name__}.{field.name}: give its option a parse= "
                            f"for the type {kind}")
        group.add_argument(_flag(field), **kwargs)


def hparams_from_args(args: argparse.Namespace, hparams: Type[HyperParams]) -> Dict[str, Any]:
    """The hyper-parameter overrides of parsed arguments (``None`` = not given).

    Raises:
        D3NetError: a value whose text does not read (naming the option).
    """
    values = {}
    for field in dataclasses.fields(hparams):
        value, parse = getattr(args, field.name), field.metadata.get("parse")
        values[field.name] = parse(value, _flag(field)) if value is not None and parse else value
    return values


def _runtime(args: argparse.Namespace) -> Dict[str, Any]:
    """The run options; an unwritable run folder fails now, not after the first epoch
    (rank 0 writes)."""
    if os.environ.get("RANK", "0") == "0":
        check_writable(args.out)
    return dict(resume=args.resume, device=args.device, sync_bn=args.sync_bn,
                workers=args.workers, progress=not args.quiet, quiet=args.quiet)


def _report(args: argparse.Namespace, message: str) -> None:
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        print(message)


def run_mss(args: argparse.Namespace) -> int:
    result = mss_recipe.train_mss(args.root, args.target, args.out, args.config,
                                  **_runtime(args),
                                  **hparams_from_args(args, mss_recipe.MSSHyperParams))
    _report(args, f"weights: {result.weights}")
    return 0


def run_seg(args: argparse.Namespace) -> int:
    result = seg_recipe.train_seg(args.root, args.out, args.config, head=args.head,
                                  pretrained_backbone=args.pretrained_backbone,
                                  **_runtime(args),
                                  **hparams_from_args(args, seg_recipe.SegHyperParams))
    best = "" if result.best_miou is None else f" (best val mIoU {100 * result.best_miou:.2f})"
    _report(args, f"weights: {result.weights}{best}")
    return 0
