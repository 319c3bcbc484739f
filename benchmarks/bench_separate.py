"""End-to-end separation speed: a stereo clip, all four full-size targets, on CPU.

Random weights (the speed does not depend on them). Reports wall time and real-time
factor (processing seconds per audio second) for each requested variant, measured in one
run, next to the official NNabla figure from ../shared/fixtures/official/timings.json
(6 s clip, 570 s: RTF 95). Variants: ``float32`` (the default: channels-last on CPU, one
network input per call), ``float32-contiguous`` (PyTorch's default layout), ``bfloat16``
(autocast, ``--precision bfloat16``), ``baseline`` (the first release's settings: default
layout, 8 patches and their flipped copies per call).

    python benchmarks/bench_separate.py [--seconds 30] [--threads 2] [--no-flip]
        [--batch-size N] [--variants float32,bfloat16]
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
VARIANTS = ("float32", "float32-contiguous", "bfloat16", "baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="network inputs per call (default: the Separator's, 1 on CPU)")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--variants", default="float32,bfloat16",
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official_rtf = None
    if OFFICIAL_TIMINGS.exists():
        official = json.loads(OFFICIAL_TIMINGS.read_text())["e2e_rerun"]["runs"][0]["total"]
        official_rtf = official / 6.0
        print(f"official NNabla: {official:.0f} s for the 6 s fixture clip, RTF {official_rtf:.1f}")
    audio = 0.1 * torch.randn(2, int(args.seconds * 44100),
                              generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    states = {t: models.d3net_mss(t).state_dict() for t in ("vocals", "drums", "bass", "other")}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        nets = {}
        for target, state in states.items():
            nets[target] = models.d3net_mss(target).eval()
            nets[target].load_state_dict(state)
        precision = "bfloat16" if variant == "bfloat16" else "float32"
        batch_size = 16 if variant == "baseline" else args.batch_size
        separator = Separator(nets, channel_flip=not args.no_flip, batch_size=batch_size,
                              precision=precision)
        if variant in ("float32-contiguous", "baseline"):
            separator.to(memory_format=torch.contiguous_format)
        start = time.perf_counter()
        separator.separate(audio, 44100)
        wall = time.perf_counter() - start
        rtf = wall / args.seconds
        line = (f"{variant:>18}: {args.seconds:.0f} s stereo, 4 targets, flip="
                f"{'off' if args.no_flip else 'on'}, {args.threads} threads: {wall:.1f} s wall, "
                f"RTF {rtf:.2f}")
        if official_rtf:
            line += f" -> {official_rtf / rtf:.1f}x the official speed"
        print(line, flush=True)


if __name__ == "__main__":
    main()
