"""``d3net segment``: images in, a label-id PNG and a colour overlay per image out."""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ..errors import D3NetError
from ..image import find_images
from ..segment import Segmenter
from ..utils import parse_scales, parse_size, resolve_device
from . import add_device_option, add_model_option, add_quiet, model_spec

#: What ``d3net segment`` uses without ``--model`` or ``$D3NET_MODEL``.
DEFAULT_MODEL = "official-d3net-s"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="semantic segmentation of images (Cityscapes classes)",
        description="Segment images with a D3Net model. For every input image, writes "
                    "OUTDIR/<stem>_labelIds.png (Cityscapes label ids 0..33, as Cityscapes' "
                    "evaluation scripts and test server read them; for models of the 19 "
                    "Cityscapes classes), OUTDIR/<stem>_trainIds.png (train ids 0..18) and "
                    "OUTDIR/<stem>_overlay.png (Cityscapes colours over the image); images "
                    "found in a folder keep their relative path. Images are read as viewers "
                    "show them (EXIF orientation applied).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    add_model_option(p, "seg", default=DEFAULT_MODEL)
    add_segmenter_options(p)
    p.add_argument("--alpha", type=float, default=0.5,
                   help="opacity of the class colours in the overlay (default 0.5)")
    add_device_option(p)
    add_quiet(p)
    p.set_defaults(func=run)


def add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    """The :class:`d3net.segment.Segmenter` options (``d3net segment``, ``d3net evaluate
    seg``); read them with :func:`segmenter_options`."""
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole",
                        help="whole-image or sliding-window inference (default: whole)")
    parser.add_argument("--tta", action="store_true",
                        help="the paper's test-time augmentation: scales "
                             "0.5,0.75,1.0,1.25,1.5,1.75 and flipping")
    parser.add_argument("--scales", metavar="LIST",
                        help="comma-separated image scales, e.g. 0.75,1,1.25")
    parser.add_argument("--flip", action="store_true", help="also average over mirrored images")
    parser.add_argument("--crop", metavar="HxW", default="1024x1024",
                        help="sliding-window size (default 1024x1024)")
    parser.add_argument("--stride", metavar="HxW",
                        help="sliding-window step (default: two thirds of --crop)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images (whole) or windows (slide) per network call (default 1)")


def segmenter_options(args: argparse.Namespace) -> dict:
    """The :class:`d3net.segment.Segmenter` keyword arguments given on the command line
    (checked by the Segmenter; the texts are parsed here)."""
    if args.tta and args.scales:
        raise D3NetError("--tta already sets the scales; give either --tta or --scales")
    return {"mode": args.mode, "tta": args.tta, "flip": args.flip,
            "scales": parse_scales(args.scales, "--scales") if args.scales else (1.0,),
            "crop": parse_size(args.crop, "--crop"), "batch_size": args.batch_size,
            "stride": parse_size(args.stride, "--stride") if args.stride else None}


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise D3NetError(f"--alpha must be in [0, 1], got {args.alpha}")
    options = segmenter_options(args)
    images = find_images(args.inputs, args.output)  # bad inputs or -o fail before loading
    segmenter = Segmenter.from_pretrained(model_spec(args), device=resolve_device(args.device),
                                          download_progress=not args.quiet, **options)
    failures = []

    def skip(path, error):
        failures.append(path)
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        tqdm.write(f"d3net segment: skipped {message}", file=sys.stderr)

    count = sum(1 for _ in segmenter.segment_files(args.inputs, args.output, alpha=args.alpha,
                                                   progress=not args.quiet,
                                                   on_error=skip if len(images) > 1 else None))
    if not args.quiet:
        print(f"segmented {count} image(s) into {args.output}")
    if failures:
        raise D3NetError(f"{len(failures)} of {count + len(failures)} images failed (see above)")
    return 0
