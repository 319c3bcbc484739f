"""``d3net demo``: separate a fresh synthetic song with the bundled model (no download)."""
from __future__ import annotations

import argparse

from . import add_device_option, add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    from ..demo import DEMO_SECONDS, FIRST_DEMO_SEED
    p = subparsers.add_parser(
        "demo", help="separate a synthetic song with the small bundled model",
        description="Generate a synthetic song, separate it with the bundled demo model and "
                    "write DIR/mixture.wav, DIR/true/<target>.wav, DIR/estimates/<target>.wav "
                    "and DIR/spectrograms.png; print the SDR per target.")
    p.add_argument("-o", "--out", default="d3net-demo", help="output folder (default d3net-demo)")
    p.add_argument("--seed", type=int, default=FIRST_DEMO_SEED,
                   help=f"song seed in [0, 2**32) (default {FIRST_DEMO_SEED}; every such "
                        "seed is a song the demo model was not trained on)")
    p.add_argument("--seconds", type=float, default=DEMO_SECONDS,
                   help=f"song length in seconds (default {DEMO_SECONDS:g})")
    add_device_option(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..configs import TARGETS
    from ..demo import run_demo

    result = run_demo(args.out, seed=args.seed, seconds=args.seconds, device=args.device,
                      progress=not args.quiet)
    scorer = "museval (BSSEval v4)" if result["scorer"] == "museval" else \
        "d3net's own SDR (museval unavailable: it needs ffmpeg)"
    print(f"wrote {args.out}/mixture.wav, true/, estimates/, spectrograms.png")
    print(f"SDR in dB (median over 1 s frames), scored with {scorer}:")
    print(f"  {'target':<8} {'estimate':>9} {'mixture':>9}")
    for t in TARGETS:
        print(f"  {t:<8} {result['sdr'][t]:9.2f} {result['baseline_sdr'][t]:9.2f}")
    mean = sum(result["sdr"].values()) / 4
    base = sum(result["baseline_sdr"].values()) / 4
    print(f"  {'average':<8} {mean:9.2f} {base:9.2f}")
    return 0
