"""``d3net export onnx|openvino``: music networks as ONNX or OpenVINO IR files."""
from __future__ import annotations

import argparse

from . import add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export music networks to ONNX or OpenVINO IR",
        description="Export each target's network to run outside PyTorch (onnxruntime, "
                    "OpenVINO, other languages). Input 'magnitude' (batch, channels, bins, "
                    "frames), output 'estimate' of the same shape; batch and frames are "
                    "dynamic, frames a multiple of the file's frame_multiple metadata (16 for "
                    "the official networks).")
    p.add_argument("format", choices=["onnx", "openvino"],
                   help="onnx (needs pip install 'd3net[onnx]') or openvino (OpenVINO IR "
                        ".xml + .bin, needs pip install 'd3net[openvino]')")
    p.add_argument("model", metavar="MODEL",
                   help="a separation model: a weight name (official-mss, demo), a separation "
                        "model folder, a music model file (.safetensors) or official .h5")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (.onnx or .xml) for one model file, else a folder that "
                        "gets <target>.onnx or <target>.xml/.bin")
    p.add_argument("--frames", type=int, default=None,
                   help="frames of the traced example (default: the model's patch_frames)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_models

    written = export_models(args.model, args.format, args.output, frames=args.frames)
    if not args.quiet:
        for path in written:
            print(path)
    return 0
