"""``d3net data``: synthetic datasets in the real on-disk layouts (no download needed)."""
from __future__ import annotations

import argparse

from ..utils import parse_size
from . import add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="generate synthetic datasets")
    sub = p.add_subparsers(dest="data_command", metavar="DATASET", required=True)

    m = sub.add_parser("synth-musdb", help="synthetic multitrack songs in the MUSDB18-HQ layout",
                       description="Write DIR/{train,test}/<track>/{mixture,drums,bass,other,"
                                   "vocals}.wav with synthesised stems.")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--tracks", type=int, default=10, help="number of songs (default 10)")
    m.add_argument("--seconds", type=float, default=20.0, help="length of each song (default 20)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--sample-rate", type=int, default=44100)
    add_quiet(m)
    m.set_defaults(func=run_musdb)

    c = sub.add_parser("synth-cityscapes", help="synthetic street scenes in the Cityscapes layout",
                       description="Write DIR/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
                                   "DIR/gtFine/<split>/<city>/*_gtFine_label{TrainIds,Ids}.png.")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--images", type=int, default=20, help="number of images (default 20)")
    c.add_argument("--size", default="256x512", help="HxW (default 256x512)")
    c.add_argument("--seed", type=int, default=0)
    add_quiet(c)
    c.set_defaults(func=run_cityscapes)


def run_musdb(args: argparse.Namespace) -> int:
    from ..data.synth_music import generate_dataset
    paths = generate_dataset(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed,
                             sample_rate=args.sample_rate, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {len(paths)} tracks to {args.out}")
    return 0


def run_cityscapes(args: argparse.Namespace) -> int:
    from ..data.synth_scenes import generate_dataset
    counts = generate_dataset(args.out, images=args.images, size=parse_size(args.size, "--size"),
                              seed=args.seed, progress=not args.quiet)
    if not args.quiet:
        print("wrote " + ", ".join(f"{n} {split}" for split, n in counts.items())
              + f" images to {args.out}")
    return 0
