"""Per-patch CPU forward time of one MSS network against the batch size, float32 and bf16.

Why the Separator runs one network input per call on CPU: larger batches are slower per
patch here (the activations of one 256-frame patch already overflow the caches).

    python benchmarks/bench_batch.py [--threads 2] [--batch-sizes 1,2,4] [--target vocals]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from d3net import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,2,4")
    parser.add_argument("--target", default="vocals")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = models.d3net_mss(args.target).eval().to(memory_format=torch.channels_last)
    frames = net.config.patch_frames
    print("| precision | batch | seconds per patch |\n|---|---|---|")
    for precision in ("float32", "bfloat16"):
        context = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16"
                   else contextlib.nullcontext())
        with torch.inference_mode(), context:
            net(torch.rand(1, 2, net.config.num_bins, frames))  # warm-up
            for batch in map(int, args.batch_sizes.split(",")):
                x = torch.rand(batch, 2, net.config.num_bins, frames)
                start = time.perf_counter()
                net(x)
                print(f"| {precision} | {batch} | {(time.perf_counter() - start) / batch:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
