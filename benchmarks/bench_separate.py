"""End-to-end separation speed: a stereo clip, all four full-size targets, on CPU.

Random weights (the speed does not depend on them). Reports wall time and real-time
factor (processing seconds per audio second) next to the official NNabla figure from
../shared/fixtures/official/timings.json (6 s clip, 570 s: RTF 95).

    python benchmarks/bench_separate.py [--seconds 30] [--threads 2] [--no-flip] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from d3net import models
from d3net.separate import Separator

OFFICIAL_TIMINGS = Path(__file__).resolve().parents[2] / "shared/fixtures/official/timings.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-flip", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {t: models.d3net_mss(t).eval() for t in ("vocals", "drums", "bass", "other")}
    separator = Separator(nets, channel_flip=not args.no_flip, batch_size=args.batch_size)
    audio = 0.1 * torch.randn(2, int(args.seconds * 44100))
    start = time.perf_counter()
    separator.separate(audio, 44100)
    wall = time.perf_counter() - start
    rtf = wall / args.seconds
    line = f"{args.seconds:.0f} s stereo, 4 targets, flip={'off' if args.no_flip else 'on'}: " \
           f"{wall:.1f} s wall, RTF {rtf:.2f}"
    if OFFICIAL_TIMINGS.exists():
        official = json.loads(OFFICIAL_TIMINGS.read_text())["e2e_rerun"]["runs"][0]["total"]
        official_rtf = official / 6.0
        line += f"; official NNabla RTF {official_rtf:.1f} ({official:.0f} s for 6 s) -> " \
                f"{official_rtf / rtf:.1f}x faster"
    print(line)


if __name__ == "__main__":
    main()
