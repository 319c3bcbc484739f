"""``d3net segment``: images in, a label-id PNG and a colour overlay per image out."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_model_option, add_quiet, model_spec

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
    p.add_argument("--mode", choices=["whole", "slide"], default="whole",
                   help="whole-image or sliding-window inference (default: whole)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation of the paper: scales 0.5,0.75,1.0,1.25,1.5,1.75 "
                        "and flipping")
    p.add_argument("--scales", metavar="LIST",
                   help="comma-separated image scales, e.g. 0.75,1,1.25")
    p.add_argument("--flip", action="store_true", help="also average over mirrored images")
    p.add_argument("--crop", metavar="HxW", default="1024x1024",
                   help="sliding-window size (default 1024x1024)")
    p.add_argument("--stride", metavar="HxW",
                   help="sliding-window step (default: two thirds of --crop)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images (whole) or windows (slide) per network call (default 1)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="opacity of the class colours in the overlay (default 0.5)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    add_quiet(p)
    p.set_defaults(func=run)


def inference_options(args: argparse.Namespace) -> dict:
    """The :class:`d3net.segment.Segmenter` options given on the command line."""
    from ..errors import D3NetError
    from ..segment import TTA_SCALES, parse_scales, parse_size

    if args.tta and args.scales:
        raise D3NetError("--tta already sets the scales; give either --tta or --scales")
    options = {"mode": args.mode, "flip": bool(args.flip or args.tta),
               "scales": TTA_SCALES if args.tta else
               (parse_scales(args.scales) if args.scales else (1.0,))}
    if getattr(args, "crop", None):
        options["crop"] = parse_size(args.crop, "--crop")
    if getattr(args, "stride", None):
        options["stride"] = parse_size(args.stride, "--stride")
    if getattr(args, "batch_size", None) is not None:
        options["batch_size"] = args.batch_size
    return options


def run(args: argparse.Namespace) -> int:
    from ..errors import D3NetError
    from ..segment import Segmenter, find_images, segment_files
    from ..utils import check_writable, resolve_device

    if not 0.0 <= args.alpha <= 1.0:
        raise D3NetError(f"--alpha must be in [0, 1], got {args.alpha}")
    options = inference_options(args)
    # a missing input, colliding names or an unwritable -o fail before loading the model
    pairs = find_images(args.inputs)
    check_writable(*{Path(args.output, stem).parent for _, stem in pairs})
    model = model_spec(args)
    device = resolve_device(args.device)
    segmenter = Segmenter.from_pretrained(model, device=device,
                                          download_progress=not args.quiet, **options)
    count = 0
    for _ in segment_files(segmenter, args.inputs, args.output, progress=not args.quiet,
                           alpha=args.alpha):
        count += 1
    if not args.quiet:
        print(f"segmented {count} image(s) into {args.output}")
    return 0
