"""``d3net summary``: build a preset or YAML config and print its size and shapes."""
from __future__ import annotations

import argparse

from . import add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    p = subparsers.add_parser("summary", help="print a model's parameter count and output shape",
                              description="Build a model from a preset or YAML config and "
                                          "print its parameter count and a test forward's shapes.")
    p.add_argument("--config", default="d3net-s",
                   help="preset (d3net-s, d3net-l, mss-vocals, mss-drums, mss-bass, mss-other, "
                        "mss-small) or YAML file (default: d3net-s)")
    p.add_argument("--task", choices=["seg", "mss"], help="for official YAMLs that leave it open")
    p.add_argument("--dilation", choices=["multi", "standard", "none"],
                   help="override the config's dilation mode")
    p.add_argument("--size", default=None,
                   help="test input size: HxW for segmentation (default 256x512), frames for "
                        "music (default 64)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..configs import MSSConfig, describe, load_config
    from ..models import count_parameters, create
    from ..utils import parse_size

    config = load_config(args.config, task=args.task)
    if args.dilation:
        config.dilation = args.dilation
    model = create(config).eval()
    if isinstance(config, MSSConfig):
        x = torch.rand(1, config.audio_channels, config.num_bins, int(args.size or 64))
    else:
        x = torch.randn(1, 3, *parse_size(args.size or "256x512", "--size"))
    with torch.inference_mode():
        y = model(x)
    print(describe(config))
    print(f"  dilation:   {config.dilation}")
    print(f"  parameters: {count_parameters(model):,} trainable")
    print(f"  input  {tuple(x.shape)} -> output {tuple(y.shape)}")
    return 0
