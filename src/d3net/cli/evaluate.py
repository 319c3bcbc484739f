"""``d3net evaluate mss|seg``: score a model on a dataset and print the paper-style table."""
from __future__ import annotations

import argparse
import os

from ..errors import D3NetError
from ..evaluate.mss import evaluate_mss
from ..evaluate.seg import evaluate_seg
from ..utils import resolve_device
from . import add_device_option, add_model_option, add_quiet, model_spec
from .segment import add_segmenter_options, segmenter_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a model on a dataset (SDR for music, mIoU for segmentation)",
        description="Evaluate a trained or converted model and print a table like the "
                    "paper's.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    _register_mss(tasks)
    _register_seg(tasks)


def _register_mss(tasks) -> None:
    p = tasks.add_parser(
        "mss", help="music separation: BSSEval v4 (museval) per track, Table-4 summary",
        description="Separate every track of a MUSDB18-HQ-layout subset and score it with "
                    "museval (BSSEval v4: median over 1 s frames, then over tracks), or with "
                    "d3net's own SDR when museval cannot be imported (it needs an ffmpeg "
                    "binary); prints vocals, drums, bass, other, accompaniment and average. "
                    "With --out, per-track museval JSON files are written to OUT/<subset>/ "
                    "with a record of the models and options that produced them; tracks "
                    "already scored there by the same models and options are reused "
                    "(resumable), files from other models or options are refused (or "
                    "recomputed with --overwrite).")
    p.add_argument("--root", required=True, metavar="DIR", help="dataset root")
    add_model_option(p, "mss")
    p.add_argument("--subset", choices=["test", "train"], default="test",
                   help="which subset to score (default: test)")
    p.add_argument("--out", metavar="DIR", help="folder for the per-track JSON (resumable)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute and replace per-track files in --out that other models, "
                        "options or scorers produced (default: refuse them)")
    p.add_argument("--scorer", choices=["auto", "museval", "own"], default="auto",
                   help="auto (default): museval when it imports, else d3net's own SDR")
    p.add_argument("--tracks", metavar="NAMES", help="comma-separated track names only")
    p.add_argument("--wiener-iterations", type=int, default=1, metavar="N",
                   help="0 = no filter, 1 = the official filter (default)")
    add_device_option(p)
    add_quiet(p)
    p.set_defaults(func=run_mss)


def run_mss(args: argparse.Namespace) -> int:
    tracks = None
    if args.tracks:
        tracks = [name.strip() for name in args.tracks.split(",") if name.strip()]
    result = evaluate_mss(
        args.root, model_spec(args), subset=args.subset, out_dir=args.out, scorer=args.scorer,
        progress=not args.quiet, device=args.device, wiener_iterations=args.wiener_iterations,
        track_names=tracks, log=None if args.quiet else print, overwrite=args.overwrite)
    print(result.format())
    if args.out and not args.quiet:
        print(f"per-track scores: {os.path.join(args.out, args.subset)}")
    return 0


def _register_seg(tasks) -> None:
    p = tasks.add_parser(
        "seg", help="semantic segmentation: confusion-matrix mIoU over the 19 classes",
        description="Segment every image of a Cityscapes split at full resolution and print "
                    "the per-class IoU table and the mIoU (pixels labelled 255 ignored, "
                    "counts accumulated over the split as the official script does).")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="Cityscapes folder (leftImg8bit/<split>, gtFine/<split>)")
    add_model_option(p, "seg")
    p.add_argument("--split", default="val", help="split to score (default: val)")
    add_segmenter_options(p)
    p.add_argument("--limit", type=int, metavar="N", help="score the first N images only")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="image loading worker processes (default 0)")
    add_device_option(p)
    add_quiet(p)
    p.set_defaults(func=run_seg)


def run_seg(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise D3NetError(f"--workers must be >= 0, got {args.workers}")
    matrix = evaluate_seg(args.root, model_spec(args), split=args.split,
                          device=resolve_device(args.device), limit=args.limit,
                          workers=args.workers, progress=not args.quiet,
                          **segmenter_options(args))
    print(matrix.format_table())
    return 0
