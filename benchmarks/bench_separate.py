"""End-to-end separation speed: a stereo clip, all four full-size targets, on CPU.

Random weights (the speed does not depend on them). Separates the same clip with each
requested variant in one run and prints wall time, real-time factor (processing seconds
per audio second) and the speed-up over ``float32`` (the first variant listed is the
reference), next to the official NNabla figure from
../shared/fixtures/official/timings.json (6 s clip, 570 s: RTF 95).

Variants (default mode = channel flip and half-patch overlap, as the official inference):

- ``float32``: PyTorch float32, channels-last (the default before the backends existed)
- ``torch-bf16``: PyTorch, bfloat16 autocast
- ``openvino-f32``, ``openvino-bf16``: OpenVINO (``INFERENCE_PRECISION_HINT`` f32 / bf16)
- ``openvino-bf16-batch2``: the same, each patch and its flipped copy in one call
- ``auto``: the default mode as shipped (``backend="auto", precision="auto"``)
- ``fast``: ``mode="fast"`` as shipped (no flip, no overlap, auto backend and precision)
- ``fast-f32``: fast mode on OpenVINO float32 (what a CPU without native bf16 gets)
- ``float32-contiguous``: PyTorch's default layout; ``baseline``: the first release's
  settings (default layout, 8 patches plus their flipped copies per call)

OpenVINO conversions are cached in ``$D3NET_HOME`` (same random weights every run, so
only the first run converts); set-up time (conversion or cache read, compilation) is
printed apart and not counted in the real-time factor.

    python benchmarks/bench_separate.py [--seconds 30] [--threads 2] [--no-flip]
        [--batch-size N] [--variants float32,torch-bf16,openvino-f32,openvino-bf16,fast]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from d3net import backends, models
from d3net.utils import native_bfloat16
from d3net.separate import Separator

OFFICIAL_TIMINGS = Path(__file__).resolve().parents[2] / "shared/fixtures/official/timings.json"
VARIANTS = {
    "float32": {"backend": "torch", "precision": "float32"},
    "torch-bf16": {"backend": "torch", "precision": "bfloat16"},
    "openvino-f32": {"backend": "openvino", "precision": "float32"},
    "openvino-bf16": {"backend": "openvino", "precision": "bfloat16"},
    "openvino-bf16-batch2": {"backend": "openvino", "precision": "bfloat16", "batch_size": 2},
    "auto": {},
    "fast": {"mode": "fast"},
    "fast-f32": {"mode": "fast", "backend": "openvino", "precision": "float32"},
    "float32-contiguous": {"backend": "torch", "precision": "float32"},
    "baseline": {"backend": "torch", "precision": "float32", "batch_size": 16},
}
DEFAULT_VARIANTS = "float32,torch-bf16,openvino-f32,openvino-bf16,fast"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def openvino_version() -> str:
    if not backends.openvino_available():
        return "absent"
    import openvino  # optional dependency
    return openvino.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="network inputs per call (default: the Separator's, 1 on CPU)")
    parser.add_argument("--no-flip", action="store_true", help="also skip the flip in the "
                        "default-mode variants")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}; torch {torch.__version__}, {args.threads} threads; native bf16: "
          f"{native_bfloat16('cpu')}; openvino {openvino_version()}")
    official_rtf = None
    if OFFICIAL_TIMINGS.exists():
        official = json.loads(OFFICIAL_TIMINGS.read_text())["e2e_rerun"]["runs"][0]["total"]
        official_rtf = official / 6.0
        print(f"official NNabla: {official:.0f} s for the 6 s fixture clip, RTF {official_rtf:.1f}")
    audio = 0.1 * torch.randn(2, int(args.seconds * 44100),
                              generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    states = {t: models.d3net_mss(t).state_dict() for t in ("vocals", "drums", "bass", "other")}
    rows = []
    for variant in chosen:
        if "openvino" in variant and not backends.openvino_available():
            print(f"{variant:>18}: skipped, OpenVINO is not installed")
            continue
        options = dict(VARIANTS[variant])
        options.setdefault("batch_size", args.batch_size)
        if args.no_flip and options.get("mode") != "fast":
            options["channel_flip"] = False
        nets = {}
        for target, state in states.items():
            nets[target] = models.d3net_mss(target).eval()
            nets[target].load_state_dict(state)
        start = time.perf_counter()
        separator = Separator(nets, **options)
        if variant in ("float32-contiguous", "baseline"):
            separator.to(memory_format=torch.contiguous_format)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        separator.separate(audio, 44100)
        wall = time.perf_counter() - start
        rtf = wall / args.seconds
        rows.append((variant, separator, wall, rtf))
        reference = rows[0][3]
        line = (f"{variant:>18}: {separator.backend} {separator.precision}, flip "
                f"{'on' if separator.channel_flip else 'off'}, overlap "
                f"{0.5 if separator.overlap is None else separator.overlap:g}: {wall:.1f} s "
                f"wall (set-up {setup:.1f} s), RTF {rtf:.2f}, {reference / rtf:.2f}x "
                f"{rows[0][0]}")
        if official_rtf:
            line += f", {official_rtf / rtf:.1f}x the official speed"
        print(line, flush=True)

    print(f"\n{args.seconds:g} s stereo, 4 full-size targets, {args.threads} threads\n")
    print(f"| variant | backend | precision | flip | overlap | wall (s) | RTF | vs {rows[0][0]} |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, separator, wall, rtf in rows:
        print(f"| {variant} | {separator.backend} | {separator.precision} | "
              f"{'on' if separator.channel_flip else 'off'} | "
              f"{0.5 if separator.overlap is None else separator.overlap:g} | {wall:.1f} | "
              f"{rtf:.2f} | {rows[0][3] / rtf:.2f}x |")


if __name__ == "__main__":
    main()
