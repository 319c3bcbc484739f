"""Segmentation speed and memory: inference images/s and one training step.

* inference: :class:`d3net.segment.Segmenter` (whole image, one scale, no flip) on random
  normalised images of 1024x2048 (full Cityscapes frames) and 512x1024, images/s as the
  median of ``--runs`` timed runs after a warm-up, and the peak memory of the passes;
* training: one step of the recipe (``forward_train``, cross-entropy ignoring 255, SGD
  momentum + weight decay) at batch 2, crop 512x1024, median step time and the peak
  memory of the step (CPU: peak resident memory of a fresh process minus its resident
  memory before the first step, from ``resource.getrusage``; CUDA:
  ``torch.cuda.max_memory_allocated``).

Every case runs in a fresh process, so peak memory figures do not leak between cases.
Prints a markdown table (and ``--json FILE`` keeps the numbers).

    python benchmarks/bench_segment.py [--models d3net-s] [--device cpu] [--threads 2]
        [--runs 3] [--sizes 1024x2048,512x1024] [--train-crop 512x1024] [--skip-train]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from typing import Dict, List


def _peak_rss_mib() -> float:
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _peak_rss_mib()


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_case(preset: str, size, device: str, threads: int, runs: int) -> Dict:
    import torch

    from d3net import models
    from d3net.segment import Segmenter

    torch.set_num_threads(threads)
    device = torch.device(device)
    segmenter = Segmenter(models.create(preset), device=device)
    image = torch.randn(1, 3, *size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        before = _current_rss_mib()
    segmenter.predict(image)  # warm-up
    _sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.predict(image)
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 - before
    else:
        peak = _peak_rss_mib() - before
    return {"case": "inference", "model": preset, "size": f"{size[0]}x{size[1]}",
            "seconds": median, "images_per_s": 1.0 / median, "peak_mib": peak}


def train_case(preset: str, crop, batch: int, device: str, threads: int, runs: int) -> Dict:
    import torch

    from d3net import models
    from d3net.train.seg import seg_loss

    torch.set_num_threads(threads)
    device = torch.device(device)
    model = models.create(preset).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, *crop, device=device)
    labels = torch.randint(0, 19, (batch, *crop), device=device)
    labels[:, :8] = 255

    def step():
        logits, aux = model.forward_train(images)
        loss = seg_loss(logits, labels, aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        before = _current_rss_mib()
    times = []
    for _ in range(runs + 1):  # the first step (allocating momentum buffers) is a warm-up
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 - before
    else:
        peak = _peak_rss_mib() - before
    median = statistics.median(times[1:]) if runs else times[0]
    return {"case": "train step", "model": preset, "size": f"{batch}x{crop[0]}x{crop[1]}",
            "seconds": median, "peak_mib": peak}


def _in_fresh_process(kind: str, **kwargs) -> Dict:
    """Run one case in a new Python process and return its result."""
    import subprocess
    import sys
    spec = json.dumps({"kind": kind, "kwargs": kwargs})
    completed = subprocess.run([sys.executable, __file__, "--case", spec], capture_output=True,
                               text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{kind} case {kwargs} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _run_case(spec: str) -> None:
    case = json.loads(spec)
    kwargs = case["kwargs"]
    for key in ("size", "crop"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    run = inference_case if case["kind"] == "inference" else train_case
    print(json.dumps(run(**kwargs)))


def _size(text: str):
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="d3net-s", help="comma-separated presets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1024x2048,512x1024")
    parser.add_argument("--train-crop", default="512x1024")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON spec
    args = parser.parse_args()
    if args.case:
        return _run_case(args.case)

    rows: List[Dict] = []
    for preset in args.models.split(","):
        for size in args.sizes.split(","):
            rows.append(_in_fresh_process("inference", preset=preset, size=_size(size),
                                          device=args.device, threads=args.threads,
                                          runs=args.runs))
            print(rows[-1], flush=True)
        if not args.skip_train:
            rows.append(_in_fresh_process("train", preset=preset, crop=_size(args.train_crop),
                                          batch=args.train_batch, device=args.device,
                                          threads=args.threads, runs=max(1, args.runs - 1)))
            print(rows[-1], flush=True)

    import torch
    machine = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
               f"torch {torch.__version__}, device {args.device}")
    print(f"\nSegmentation benchmark, {date.today()}, {machine}\n")
    print("| model | case | size | time (s) | images/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        speed = f"{row['images_per_s']:.3f}" if "images_per_s" in row else "-"
        memory = f"{row['peak_mib']:.0f}" if "peak_mib" in row else "-"
        print(f"| {row['model']} | {row['case']} | {row['size']} | {row['seconds']:.2f} | "
              f"{speed} | {memory} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": str(date.today()), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
