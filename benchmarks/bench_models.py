"""CPU forward / forward+backward timings of D3Net-S and one MSS target.

Compares with the official NNabla CPU forward times in
../shared/fixtures/official/timings.json (measured on a 2-core machine of the same kind).
Reports the median of ``--runs`` timed runs after one warm-up, all measured in one run, in
four modes: ``oneDNN`` (PyTorch's default), ``channels-last`` (oneDNN with the
channels-last memory layout, what the Separator uses on CPU), ``channels-last bf16``
(bfloat16 autocast on top, ``--precision bfloat16``) and ``native`` (oneDNN off: the
bit-careful path of the parity checks), and prints a markdown table.

    python benchmarks/bench_models.py [--runs 3] [--threads 2] [--skip-backward]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from d3net import models

OFFICIAL_TIMINGS = Path(__file__).resolve().parents[2] / "shared/fixtures/official/timings.json"


def timed(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


MODES = ("oneDNN", "channels-last", "channels-last bf16", "native")


def bench(model, x, runs: int, backward: bool, mode: str):
    import contextlib

    from d3net.utils import exact_float32
    results = {}
    layout = torch.channels_last if mode.startswith("channels-last") else torch.contiguous_format
    model.to(memory_format=layout)
    if mode == "native":
        context = exact_float32()
    elif mode.endswith("bf16"):
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        context = contextlib.nullcontext()
    with context:
        model.eval()

        def forward():
            with torch.inference_mode():
                model(x)
        results["forward"] = timed(forward, runs)
        if backward:
            model.train()

            def forward_backward():
                model.zero_grad(set_to_none=True)
                model(x).float().square().mean().backward()
            results["forward+backward"] = timed(forward_backward, max(1, runs - 1))
            model.eval()
    model.to(memory_format=torch.contiguous_format)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-backward", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official = json.loads(OFFICIAL_TIMINGS.read_text()) if OFFICIAL_TIMINGS.exists() else {}

    cases = [
        ("D3Net-S 1x3x512x1024", models.d3net_s(), torch.randn(1, 3, 512, 1024),
         official.get("seg_d3net_s_1x3x512x1024", {}).get("median_s")),
        ("MSS vocals 1x2x2049x256", models.d3net_mss("vocals"), torch.rand(1, 2, 2049, 256),
         official.get("mss_vocals_1x256x2x2049", {}).get("median_s")),
    ]
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print("| model | mode | forward (s) | forward+backward (s) | official NNabla forward (s) | speed-up (forward) |")
    print("|---|---|---|---|---|---|")
    for name, model, x, ref in cases:
        for mode in MODES:
            backward = not args.skip_backward and mode in ("oneDNN", "channels-last")
            r = bench(model, x, args.runs, backward, mode)
            fb = f"{r['forward+backward']:.2f}" if "forward+backward" in r else "-"
            ratio = f"{ref / r['forward']:.1f}x" if ref else "-"
            print(f"| {name} | {mode} | {r['forward']:.2f} | {fb} | "
                  f"{ref if ref else '-'} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
