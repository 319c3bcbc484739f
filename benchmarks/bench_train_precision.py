"""Training step time by precision and memory layout: float32 / bfloat16 autocast, with the
activations and weights contiguous or channels-last (bfloat16 channels-last on GPUs only:
on a CPU it crashes in oneDNN for some layer widths, and the trainer refuses it).

One process holds every case of a model and alternates them round by round (A, B, C, D,
A, B, ...), so a noisy machine slows all cases alike; the table gives the median step time
of each case and its ratio to float32 contiguous. A step is what the training driver does:
forward under autocast, the recipe's loss in float32, backward, optimiser step.

* D3Net-S (segmentation): ``forward_train`` + cross-entropy + SGD, batch ``--seg-batch``,
  crop ``--seg-crop``;
* MSS (one target): forward on a magnitude patch + MSE + Adam, batch ``--mss-batch``,
  ``--mss-frames`` frames (the official recipe: batch 6, 256 frames).

    python benchmarks/bench_train_precision.py [--device cpu] [--threads 2] [--rounds 5]
        [--clock wall|process]
        [--seg-config d3net-s] [--seg-batch 2] [--seg-crop 512x1024]
        [--mss-config mss-vocals] [--mss-batch 6] [--mss-frames 256] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from d3net import models
from d3net.train.precision import autocast_dtype

CASES = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seg_step(config: str, batch: int, crop, device: torch.device, dtype, channels_last: bool
              ) -> Callable[[], None]:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = models.create(config).to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, *crop, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 19, (batch, *crop), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, aux = model.forward_train(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
        if aux is not None:
            loss = loss + 0.4 * F.cross_entropy(aux.float(), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _mss_step(config: str, batch: int, frames: int, device: torch.device, dtype,
              channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = models.create(config).to(device, memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    bins = model.config.num_bins
    channels = model.config.audio_channels
    inputs = torch.rand(batch, channels, bins, frames, device=device).contiguous(
        memory_format=layout)
    target = torch.rand(batch, channels, bins, frames, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            estimate = model(inputs)
        loss = F.mse_loss(estimate.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(name: str, make: Callable, device: torch.device, rounds: int,
            clock: Callable[[], float] = time.perf_counter) -> List[Dict]:
    """Median step time of every case, the cases alternated round by round."""
    bf16 = autocast_dtype(device) == torch.bfloat16
    # bfloat16 channels-last on a CPU: oneDNN's convolution backward crashes (segmentation
    # fault) for some layer widths in torch 2.13, e.g. the vocals network; the trainer
    # refuses that combination
    cases = [(precision, layout) for precision, layout in CASES
             if precision == "float32" or (bf16 and not (layout and device.type == "cpu"))]
    steps = {}
    for precision, layout in cases:
        dtype = torch.bfloat16 if precision == "bfloat16" else None
        steps[(precision, layout)] = make(device=device, dtype=dtype, channels_last=layout)
        steps[(precision, layout)]()  # warm-up (allocates optimiser state)
    times: Dict = {case: [] for case in cases}
    for round_ in range(rounds):
        for case in cases:
            _sync(device)
            start = clock()
            steps[case]()
            _sync(device)
            times[case].append(clock() - start)
        print(f"{name} round {round_ + 1}/{rounds}: " + ", ".join(
            f"{p} {'CL' if c else 'NCHW'} {times[(p, c)][-1]:.2f} s" for p, c in cases),
            file=sys.stderr, flush=True)
    reference = statistics.median(times[("float32", False)])
    return [{"model": name, "precision": precision,
             "layout": "channels-last" if layout else "contiguous",
             "seconds": statistics.median(times[(precision, layout)]),
             "ratio": statistics.median(times[(precision, layout)]) / reference}
            for precision, layout in cases]


def _size(text: str):
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seg-config", default="d3net-s")
    parser.add_argument("--seg-batch", type=int, default=2)
    parser.add_argument("--seg-crop", default="512x1024")
    parser.add_argument("--mss-config", default="mss-vocals")
    parser.add_argument("--mss-batch", type=int, default=6)
    parser.add_argument("--mss-frames", type=int, default=256)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared "
                             "machine; use it with --threads 1 on CPU)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rows = measure(f"{args.seg_config} {args.seg_batch}x{args.seg_crop}",
                   lambda **kw: _seg_step(args.seg_config, args.seg_batch,
                                          _size(args.seg_crop), **kw), device, args.rounds,
                   clock)
    rows += measure(f"{args.mss_config} {args.mss_batch}x{args.mss_frames} frames",
                    lambda **kw: _mss_step(args.mss_config, args.mss_batch, args.mss_frames,
                                           **kw), device, args.rounds, clock)
    machine = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
               f"torch {torch.__version__}, device {args.device}, {args.clock} clock")
    print(f"\nTraining step by precision and layout, {date.today()}, {machine}\n")
    print("| model | precision | layout | step (s) | vs float32 contiguous |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['precision']} | {row['layout']} | "
              f"{row['seconds']:.3f} | {row['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": str(date.today()), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
