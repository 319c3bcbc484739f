"""GPU separation benchmark: four full-size targets on a 3-minute stereo song.

For float32 (TF32 off, as the parity tests run) and bfloat16 autocast, and batch sizes 1 to
32 (network inputs per call, flipped copies included), prints wall time, real-time factor
and peak GPU memory (allocated and reserved by PyTorch's caching allocator), plus how far
the bfloat16 stems are from the float32 ones. Random weights (the speed does not depend on
them). About 2-4 minutes on a recent data-centre GPU; exits with a message where CUDA is
absent.

    python benchmarks/gpu.py [--seconds 180] [--batch-sizes 1,2,4,8,16,32]
        [--precisions float32,bfloat16] [--device cuda] [--tf32]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from d3net import models
from d3net.configs import TARGETS
from d3net.separate import Separator



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in float32 convolutions and matmuls (PyTorch's "
                        "cuDNN default; off here so that float32 means float32)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False); "
              "nothing to measure", file=sys.stderr)
        return 0
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    print(f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 "
          f"{'on' if args.tf32 else 'off'}; bf16 supported: "
          f"{torch.cuda.is_bf16_supported(including_emulation=False)}")
    audio = 0.1 * torch.randn(2, int(args.seconds * 44100),
                              generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    nets = {t: models.d3net_mss(t).to(device).eval() for t in TARGETS}

    # warm-up: cuDNN picks its algorithms per shape (256 and 384 frames, each batch size)
    for precision in precisions:
        for batch_size in batch_sizes:
            Separator(nets, device=device, precision=precision, backend="torch",
                      batch_size=batch_size).separate(audio[:, :44100 * 8], 44100)
    torch.cuda.synchronize(device)

    print(f"\n{args.seconds:g} s stereo, 4 full-size targets, channel flip on, one Wiener "
          "iteration\n")
    print("| precision | batch | wall (s) | RTF | peak allocated (GiB) | peak reserved (GiB) |")
    print("|---|---|---|---|---|---|")
    stems = {}
    for precision in precisions:
        for batch_size in batch_sizes:
            separator = Separator(nets, device=device, precision=precision, backend="torch",
                                  batch_size=batch_size)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = separator.separate(audio, 44100)
            torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
            stems.setdefault(precision, out)
            print(f"| {precision} | {batch_size} | {wall:.2f} | {wall / args.seconds:.4f} | "
                  f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} | "
                  f"{torch.cuda.max_memory_reserved(device) / 2**30:.2f} |", flush=True)
    if "float32" in stems and "bfloat16" in stems:
        worst = max(((stems["bfloat16"][t] - stems["float32"][t]).abs().max()
                     / stems["float32"][t].abs().max()).item() for t in TARGETS)
        print(f"\nbfloat16 stems vs float32: max relative difference {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
