"""Training memory and step time with recompute (memory-efficient blocks) and mixed precision.

One training step = forward + loss + backward + optimizer step, of

* ``seg``: a segmentation model (default D3Net-S) on random images, cross-entropy over 19
  classes, SGD with momentum 0.9 and weight decay 5e-4 (the recipe's optimizer); CPU
  default batch 2 at crop 512x1024, CUDA default D3Net-S and D3Net-L at batch 8;
* ``mss``: one music target network (default the official vocals network) on random
  magnitudes of 256 frames, MSE, Adam (the recipe's optimizer); default batch 6,

for every combination of ``--recompute`` modes (``none``, ``unit``, ``d2``, ``d3``; see
``d3net.nn.set_recompute``) and ``--amp`` (``off``, ``on``: bfloat16 autocast on CPU and on
GPUs with bf16, float16 with a gradient scaler on other GPUs). Every case runs in a fresh
process, so peak memory does not leak between cases:

* CPU: ``step peak`` is the peak resident memory of the process (``getrusage``) minus its
  resident memory just before the first step (model, optimizer and batch already built),
  the same measure as ``bench_segment.py``; ``process peak`` is the whole process's;
* CUDA: ``torch.cuda.max_memory_allocated`` over the steps (weights, gradients and
  optimizer state included), and the same minus what was allocated before the first step.

The step time is the median of ``--runs`` steps after a warm-up step (which also allocates
the optimizer state; ``--runs 0`` times that one step only, enough for memory); the CPU
time of the process over the step is kept too (in the JSON): with ``--threads 1`` it is a
rough measure of the work that a busy machine disturbs less than wall time. With
``--rounds N`` the cases are run N times in turn and the median over rounds is kept
(ratios measured alternately are more robust on a busy machine).
Prints a markdown table with memory and time relative to ``recompute none, amp off`` of
the same model (``--json FILE`` keeps the numbers).

    python benchmarks/bench_train.py                      # CPU, the sizes above
    python benchmarks/bench_train.py --recompute none,unit,d2,d3 --amp off --models seg
    python benchmarks/bench_train.py --crop 128x256 --frames 64 --mss-config mss-small \\
        --runs 1                                          # quick sanity check
    python benchmarks/bench_train.py --device cuda        # GPU: D3Net-S and D3Net-L, batch 8
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Dict, List

BASELINE = ("none", "off")


def _peak_rss_mib() -> float:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def _current_rss_mib() -> float:
    import os
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _cpu_seconds() -> float:
    """CPU time of this process so far (user + system, all threads)."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(model: str, config: str, batch: int, size: List[int], recompute: str, amp: str,
             device: str, threads: int, runs: int, channels_last: bool) -> Dict:
    """One case, in this process: build, step ``runs + 1`` times, measure."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from d3net import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device)
    net = models.create(config, recompute=recompute).to(device).train()
    if model == "seg":
        inputs = torch.randn(batch, 3, *size, device=device)
        labels = torch.randint(0, net.config.num_classes, (batch, *size), device=device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9,
                                    weight_decay=5e-4)

        def loss_of() -> torch.Tensor:
            logits, aux = net.forward_train(inputs)
            loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
            if aux is not None:
                loss = loss + 0.4 * F.cross_entropy(aux.float(), labels, ignore_index=255)
            return loss
    else:
        bins = net.config.num_bins
        inputs = torch.rand(batch, net.config.audio_channels, bins, size[0], device=device)
        target = torch.rand_like(inputs)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def loss_of() -> torch.Tensor:
            return F.mse_loss(net(inputs).float(), target)

    if channels_last:
        net.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    scaler = None
    if amp == "off":
        autocast = contextlib.nullcontext
        amp_dtype = "float32"
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported():
        autocast = lambda: torch.autocast("cuda", dtype=torch.float16)  # noqa: E731
        scaler = torch.amp.GradScaler("cuda")
        amp_dtype = "float16"
    else:
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        amp_dtype = "bfloat16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        before = _current_rss_mib()
    times, cpu_times = [], []
    for _ in range(runs + 1):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(_cpu_seconds() - cpu_start)
    if device.type == "cuda":
        total_peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        total_peak = _peak_rss_mib()
    shape = f"{batch}x{size[0]}x{size[1]}" if model == "seg" else f"{batch}x{size[0]} frames"
    return {"model": model, "config": config, "size": shape, "recompute": recompute,
            "amp": amp, "amp_dtype": amp_dtype, "channels_last": channels_last,
            "seconds": statistics.median(times[1:]) if runs else times[0],
            "cpu_seconds": statistics.median(cpu_times[1:]) if runs else cpu_times[0],
            "step_peak_mib": total_peak - before, "total_peak_mib": total_peak}


def _in_fresh_process(**kwargs) -> Dict:
    completed = subprocess.run([sys.executable, __file__, "--case", json.dumps(kwargs)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"case {kwargs} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _size(text: str) -> List[int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bench_train: expected HEIGHTxWIDTH, got {text!r}") from None
    return [height, width]


def _machine(args) -> str:
    import torch
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if args.device == "cuda":
        model = f"{torch.cuda.get_device_name()} (host {model})"
    threads = f", {args.threads} thread(s)" if args.device == "cpu" else ""
    return f"{model}{threads}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="seg,mss",
                        help="comma-separated: seg, mss (default both)")
    parser.add_argument("--seg-configs", default=None,
                        help="segmentation presets (default d3net-s on CPU, "
                             "d3net-s,d3net-l on CUDA)")
    parser.add_argument("--mss-config", default="mss-vocals", help="music preset or YAML")
    parser.add_argument("--recompute", default="none,unit",
                        help="comma-separated modes: none, unit, d2, d3")
    parser.add_argument("--amp", default="off,on", help="comma-separated: off, on")
    parser.add_argument("--crop", default="512x1024", help="segmentation crop HxW")
    parser.add_argument("--seg-batch", type=int, default=None,
                        help="segmentation batch (default 2 on CPU, 8 on CUDA)")
    parser.add_argument("--mss-batch", type=int, default=6)
    parser.add_argument("--frames", type=int, default=256, help="music excerpt frames")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every case this many times in turn (median kept)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return

    import torch

    from d3net.nn import RECOMPUTE_MODES
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train: --device cuda asked for, but no CUDA device is "
                         "available here; nothing measured")
    modes = args.recompute.split(",")
    amps = args.amp.split(",")
    if not set(modes) <= set(RECOMPUTE_MODES) or not set(amps) <= {"off", "on"}:
        raise SystemExit(f"bench_train: --recompute takes {','.join(RECOMPUTE_MODES)} and "
                         "--amp takes off,on")
    cuda = args.device == "cuda"
    seg_configs = (args.seg_configs or ("d3net-s,d3net-l" if cuda else "d3net-s")).split(",")
    seg_batch = args.seg_batch or (8 if cuda else 2)
    groups = []
    for model in args.models.split(","):
        if model == "seg":
            groups += [("seg", c, seg_batch, _size(args.crop)) for c in seg_configs]
        elif model == "mss":
            groups.append(("mss", args.mss_config, args.mss_batch, [args.frames, 0]))
        else:
            raise SystemExit(f"bench_train: unknown model {model!r} (seg, mss)")

    cases = [dict(model=m, config=c, batch=b, size=s, recompute=r, amp=a, device=args.device,
                  threads=args.threads, runs=args.runs, channels_last=args.channels_last)
             for m, c, b, s in groups for r in modes for a in amps]
    measured: List[List[Dict]] = [[] for _ in cases]
    for _ in range(args.rounds):
        for i, case in enumerate(cases):
            measured[i].append(_in_fresh_process(**case))
            row = measured[i][-1]
            print(f"{row['config']} {row['size']} recompute={row['recompute']} "
                  f"amp={row['amp']}: {row['seconds']:.2f} s ({row['cpu_seconds']:.2f} s CPU), "
                  f"step peak "
                  f"{row['step_peak_mib']:.0f} MiB", flush=True)
    rows = []
    for results in measured:
        row = dict(results[0])
        row["seconds"] = statistics.median(r["seconds"] for r in results)
        row["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in results)
        row["step_peak_mib"] = statistics.median(r["step_peak_mib"] for r in results)
        row["total_peak_mib"] = statistics.median(r["total_peak_mib"] for r in results)
        rows.append(row)

    memory = "max_memory_allocated" if cuda else "step peak RSS"
    total = "max_memory_allocated" if cuda else "process peak RSS"
    machine = _machine(args)
    print(f"\nTraining step benchmark, {date.today()}, {machine}, device {args.device}\n")
    print(f"| model | size | recompute | amp | step (s) | {memory} minus before (MiB) | "
          f"{total} (MiB) | memory vs. baseline | time vs. baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next((r for r in rows if r["config"] == row["config"]
                     and (r["recompute"], r["amp"]) == BASELINE), None)
        key = "total_peak_mib" if cuda else "step_peak_mib"
        mem_ratio = f"{row[key] / base[key]:.2f}" if base else "-"
        time_ratio = f"{row['seconds'] / base['seconds']:.2f}" if base else "-"
        amp = row["amp_dtype"] if row["amp"] == "on" else "off"
        print(f"| {row['config']} | {row['size']} | {row['recompute']} | {amp} | "
              f"{row['seconds']:.2f} | {row['step_peak_mib']:.0f} | "
              f"{row['total_peak_mib']:.0f} | {mem_ratio} | {time_ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": str(date.today()), "device": args.device,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
