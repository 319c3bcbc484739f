"""``d3net train mss|seg``: train a network with the paper's recipe (one process or torchrun).

Multi-GPU / multi-node: launch the same command under ``torchrun``, e.g.
``torchrun --nproc_per_node 4 -m d3net.cli train mss ...``; every process trains on its
shard of the data and rank 0 writes the run folder.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Tuple

from . import add_quiet


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a music separation or segmentation network",
        description="Train D3Net with the paper's recipe. Run under torchrun for "
                    "multi-GPU / multi-node training (DDP; SyncBatchNorm on GPUs).")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    _register_mss(tasks)
    _register_seg(tasks)


def _add_common(p: argparse.ArgumentParser) -> None:
    """Options every training command shares (runtime, not hyper-parameters)."""
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its checkpoint stopped; "
                        "a larger --epochs/--iters extends it")
    p.add_argument("--sync-bn", choices=["auto", "on", "off"], default="auto",
                   help="SyncBatchNorm across processes: auto = on GPUs under torchrun "
                        "(default); 'on' needs CUDA (PyTorch's SyncBatchNorm refuses CPU)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="data loading worker processes (default 0: load in the main process)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="run seed (default 42)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available; under torchrun "
                                    "each process uses cuda:LOCAL_RANK)")
    add_quiet(p)


# ----------------------------------------------------------------------------------------
# d3net train mss
# ----------------------------------------------------------------------------------------

def _register_mss(tasks) -> None:
    p = tasks.add_parser(
        "mss", help="music source separation: one network per target",
        description="Train the D3Net of one target on a MUSDB18-HQ folder (or MUSDB18 "
                    "stem files). Writes RUNDIR/<target>.safetensors (best by validation "
                    "loss, or last), RUNDIR/<target>.last.safetensors and the resumable "
                    "RUNDIR/<target>.ckpt; train the four targets into one RUNDIR to get a "
                    "folder for 'd3net separate --model RUNDIR'. Defaults: the official "
                    "recipe (Adam 1e-3, x0.1 after epoch 40, 50 epochs, batch 6, weight "
                    "decay 1e-4, 64 random 6 s excerpts per track per epoch, 256-frame "
                    "patches). On --resume, omitted options keep the run's values.")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="dataset root with train/ (MUSDB18-HQ layout, or 'd3net data "
                        "synth-musdb' output)")
    p.add_argument("--target", required=True, choices=["vocals", "drums", "bass", "other"])
    p.add_argument("--out", required=True, metavar="RUNDIR", help="run folder")
    p.add_argument("--config", metavar="PRESET|YAML",
                   help="architecture: mss-vocals, mss-drums, mss-bass, mss-other, mss-small "
                        "or a YAML file (ours or the official format); default "
                        "mss-<target>")
    hp = p.add_argument_group("recipe (defaults: the official values)")
    hp.add_argument("--epochs", type=int, metavar="N", help="total epochs (50)")
    hp.add_argument("--batch-size", type=int, metavar="N", help="excerpts per step and process (6)")
    hp.add_argument("--lr", type=float, metavar="X", help="Adam learning rate (1e-3)")
    hp.add_argument("--lr-milestones", metavar="LIST",
                    help="comma-separated epochs after which the lr is multiplied by "
                         "--lr-gamma (40)")
    hp.add_argument("--lr-gamma", type=float, metavar="X", help="lr decay factor (0.1)")
    hp.add_argument("--weight-decay", type=float, metavar="X", help="L2 weight decay (1e-4)")
    hp.add_argument("--no-lr-scaling", dest="lr_scaling", action="store_const", const=False,
                    help="do not scale lr and weight decay by processes x batch / 6 (the "
                         "official multi-GPU rule)")
    hp.add_argument("--excerpt-seconds", type=float, metavar="S", help="excerpt length (6)")
    hp.add_argument("--patch-frames", type=int, metavar="N",
                    help="STFT frames of each excerpt fed to the network (256)")
    hp.add_argument("--samples-per-track", type=int, metavar="N",
                    help="excerpts per training track per epoch (64)")
    hp.add_argument("--gain", metavar="LOW,HIGH|none",
                    help="random gain range per source (0.75,1.25), 'none' to disable")
    hp.add_argument("--no-channel-swap", dest="channel_swap", action="store_const", const=False,
                    help="disable the random left/right swap per source")
    hp.add_argument("--no-random-tracks", dest="random_tracks", action="store_const",
                    const=False, help="take all sources of an excerpt from the same track")
    hp.add_argument("--valid-tracks", metavar="none|musdb|NAMES",
                    help="validation: 'none' (train on every track, official), 'musdb' (hold "
                         "out MUSDB18's 14 validation songs) or comma-separated track names")
    hp.add_argument("--stats-seconds", type=float, metavar="S",
                    help="seconds per track for the input statistics (default: whole tracks)")
    hp.add_argument("--no-official-init", dest="official_init", action="store_const",
                    const=False, help="keep PyTorch's default initialisation")
    hp.add_argument("--amp", action="store_const", const=True,
                    help="mixed precision on CUDA (the official training is float32)")
    _add_common(p)
    p.set_defaults(func=run_mss)


def _float_list(text: Optional[str], option: str) -> Optional[Tuple[float, ...]]:
    from ..errors import D3NetError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise D3NetError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _mss_hparams(args: argparse.Namespace) -> dict:
    from ..errors import D3NetError

    gain = None
    if args.gain is not None:
        if args.gain.strip().lower() == "none":
            gain = (1.0, 1.0)  # a constant gain of 1: no gain augmentation
        else:
            gain = _float_list(args.gain, "--gain")
            if len(gain) != 2:
                raise D3NetError(f"--gain must be LOW,HIGH or none, got {args.gain!r}")
    milestones = _float_list(args.lr_milestones, "--lr-milestones")
    validation = None
    if args.valid_tracks is not None:
        text = args.valid_tracks.strip()
        validation = text if text in ("none", "musdb") else \
            tuple(name.strip() for name in text.split(",") if name.strip())
    hparams = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "lr_milestones": None if milestones is None else tuple(int(m) for m in milestones),
        "lr_gamma": args.lr_gamma, "weight_decay": args.weight_decay,
        "lr_scaling": args.lr_scaling, "excerpt_seconds": args.excerpt_seconds,
        "patch_frames": args.patch_frames, "samples_per_track": args.samples_per_track,
        "channel_swap": args.channel_swap, "random_tracks": args.random_tracks,
        "validation": validation, "stats_seconds": args.stats_seconds,
        "official_init": args.official_init, "amp": args.amp, "seed": args.seed,
        "gain_range": gain,
    }
    return hparams


def _check_run_folder(args: argparse.Namespace) -> None:
    """An unwritable run folder fails now, not after the first epoch (rank 0 writes)."""
    from ..utils import check_writable

    if os.environ.get("RANK", "0") == "0":
        check_writable(args.out)


def run_mss(args: argparse.Namespace) -> int:
    from ..train.mss import train_mss

    if args.workers < 0:
        from ..errors import D3NetError
        raise D3NetError(f"--workers must be >= 0, got {args.workers}")
    _check_run_folder(args)
    result = train_mss(args.root, args.target, args.out, args.config, resume=args.resume,
                       device=args.device, sync_bn=args.sync_bn, workers=args.workers,
                       progress=not args.quiet, quiet=args.quiet, **_mss_hparams(args))
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        print(f"weights: {result.weights}")
    return 0


# ----------------------------------------------------------------------------------------
# d3net train seg
# ----------------------------------------------------------------------------------------

def _register_seg(tasks) -> None:
    p = tasks.add_parser(
        "seg", help="semantic segmentation (Cityscapes)",
        description="Train a D3Net segmentation model on a Cityscapes folder (leftImg8bit/ "
                    "and gtFine/; 'd3net data synth-cityscapes' writes one). Writes "
                    "RUNDIR/model.safetensors (best validation mIoU, or last), "
                    "RUNDIR/last.safetensors, the resumable RUNDIR/train.ckpt and "
                    "RUNDIR/logs/ (TensorBoard). Defaults: the paper's recipe (SGD momentum "
                    "0.9, weight decay 5e-4, poly lr 0.01 power 0.9 floor 1e-4, 80k "
                    "iterations, batch 8, crop 512x1024, random scale 0.5-2 and flip, mixed "
                    "precision on GPU). On --resume, omitted options keep the run's values; "
                    "a larger --iters extends the run.")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="Cityscapes folder (train split for training, val for validation)")
    p.add_argument("--out", required=True, metavar="RUNDIR", help="run folder")
    p.add_argument("--config", metavar="PRESET|YAML",
                   help="architecture: d3net-s (default), d3net-l or a YAML file (ours or the "
                        "official format)")
    p.add_argument("--head", choices=["fcn", "ocr"],
                   help="decoder head (default: the config's, fcn); ocr = object-contextual "
                        "representations with an auxiliary loss")
    p.add_argument("--pretrained-backbone", metavar="M",
                   help="ImageNet backbone: a weight name (official-d3net-s-backbone, "
                        "official-d3net-l-backbone; fetched on first use), an official .h5 "
                        "or a d3net .safetensors")
    hp = p.add_argument_group("recipe (defaults: the paper's values)")
    hp.add_argument("--iters", type=int, metavar="N", help="total iterations (80000)")
    hp.add_argument("--batch-size", type=int, metavar="N", help="images per step and process (8)")
    hp.add_argument("--crop", metavar="HxW", help="training crop (512x1024)")
    hp.add_argument("--scale-range", metavar="LOW,HIGH|none",
                    help="random rescaling before cropping (0.5,2), 'none' to disable")
    hp.add_argument("--no-flip", dest="flip", action="store_const", const=False,
                    help="disable random horizontal flips")
    hp.add_argument("--lr", type=float, metavar="X", help="base learning rate (0.01)")
    hp.add_argument("--min-lr", type=float, metavar="X", help="floor of the poly schedule (1e-4)")
    hp.add_argument("--power", type=float, metavar="X", help="poly exponent (0.9)")
    hp.add_argument("--momentum", type=float, metavar="X", help="SGD momentum (0.9)")
    hp.add_argument("--weight-decay", type=float, metavar="X", help="weight decay (5e-4)")
    hp.add_argument("--no-lr-scaling", dest="lr_scaling", action="store_const", const=False,
                    help="do not scale the lr by processes x batch / 8 (the official "
                         "multi-GPU rule)")
    hp.add_argument("--aux-weight", type=float, metavar="X",
                    help="weight of the OCR head's auxiliary loss (0.4)")
    hp.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                    help="train in float32 on GPU too (default: mixed precision on GPU)")
    hp.add_argument("--val-interval", type=int, metavar="N",
                    help="validate every N iterations and at the end (4000; 0 = never)")
    hp.add_argument("--val-mode", choices=["whole", "slide"],
                    help="validation inference (whole)")
    hp.add_argument("--checkpoint-interval", type=int, metavar="N",
                    help="write train.ckpt every N iterations (1000)")
    _add_common(p)
    p.set_defaults(func=run_seg)


def _seg_hparams(args: argparse.Namespace) -> dict:
    from ..errors import D3NetError
    from ..segment import parse_size

    scale_range = None
    if args.scale_range is not None:
        if args.scale_range.strip().lower() == "none":
            scale_range = (1.0, 1.0)  # a constant scale of 1: no rescaling
        else:
            scale_range = _float_list(args.scale_range, "--scale-range")
            if len(scale_range) != 2:
                raise D3NetError(f"--scale-range must be LOW,HIGH or none, got "
                                 f"{args.scale_range!r}")
    return {
        "iters": args.iters, "batch_size": args.batch_size,
        "crop": parse_size(args.crop, "--crop") if args.crop else None,
        "scale_range": scale_range, "flip": args.flip, "lr": args.lr, "min_lr": args.min_lr,
        "power": args.power, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "lr_scaling": args.lr_scaling, "aux_weight": args.aux_weight, "amp": args.amp,
        "val_interval": args.val_interval, "val_mode": args.val_mode,
        "checkpoint_interval": args.checkpoint_interval, "seed": args.seed,
    }


def run_seg(args: argparse.Namespace) -> int:
    from ..errors import D3NetError
    from ..train.seg import train_seg

    if args.workers < 0:
        raise D3NetError(f"--workers must be >= 0, got {args.workers}")
    _check_run_folder(args)
    result = train_seg(args.root, args.out, args.config, head=args.head, resume=args.resume,
                       pretrained_backbone=args.pretrained_backbone, device=args.device,
                       sync_bn=args.sync_bn, workers=args.workers, progress=not args.quiet,
                       quiet=args.quiet, **_seg_hparams(args))
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        best = "" if result.best_miou is None else f" (best val mIoU {100 * result.best_miou:.2f})"
        print(f"weights: {result.weights}{best}")
    return 0
