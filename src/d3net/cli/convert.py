"""``d3net convert nnabla``: official NNabla ``.h5`` weights -> d3net ``.safetensors``."""
from __future__ import annotations

import argparse
import warnings

from . import add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert official weights to d3net model files")
    sub = p.add_subparsers(dest="source_format", metavar="FORMAT")
    sub.required = True
    n = sub.add_parser(
        "nnabla", help="Sony's official NNabla .h5 files",
        description="Convert an official .h5 file to one .safetensors model file, or the "
                    "official music archive (d3net-mss.zip) or a folder of its four models "
                    "(vocals.h5, drums.h5, bass.h5, other.h5) to a separation model folder. "
                    "An output folder is what --model FOLDER reads: <target>.safetensors for "
                    "music models, model.safetensors for a segmentation model.")
    n.add_argument("src", help=".h5 file, d3net-mss.zip, or folder of music .h5 files")
    n.add_argument("-o", "--output", required=True,
                   help="output folder, or a .safetensors file for a single .h5")
    n.add_argument("--config", help="preset or YAML config (default: inferred from the file)")
    n.add_argument("--task", choices=["seg", "mss"], help="for official YAMLs that leave it open")
    n.add_argument("--backbone-only", action="store_true", default=None,
                   help="load only the segmentation backbone (ImageNet backbone files; "
                        "detected automatically when the file has no decode_head)")
    add_quiet(n)
    n.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert_nnabla

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = convert_nnabla(args.src, args.output, config=args.config, task=args.task,
                                 backbone_only=args.backbone_only)
    for w in caught:
        print(f"warning: {w.message}")
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return 0
