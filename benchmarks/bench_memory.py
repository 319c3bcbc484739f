"""Peak memory of separating a song from file to files, against the song's length.

Each length runs in a fresh process under ``/usr/bin/time -v`` (its "Maximum resident set
size"), separating a stereo 44.1 kHz WAV of that many minutes (tones and noise, written in
blocks beforehand) with ``Separator.separate_file`` into 16-bit WAVs, as
``d3net separate`` does. The networks are the four full-size official structures with
random weights (peak memory does not depend on the weights); ``--config mss-small`` runs
the small demo structure instead, to check how memory varies with the length quickly.

    python benchmarks/bench_memory.py [--minutes 1 5 10 30] [--no-flip | --fast]
        [--precision bfloat16] [--config mss-small] [--threads 2] [--wiener-window N]

The network dominates the run time (a full-size four-target separation takes several
times the song's length on two cores); ``--no-flip`` halves it and ``--precision
bfloat16`` divides it again on CPUs with native bfloat16, and ``--fast`` (the fast mode:
no flip, patches side by side) halves it once more, without changing what the pipeline
holds in memory much (the networks run one patch at a time on the CPU either way).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

RATE = 44100
TARGETS = ("vocals", "drums", "bass", "other")


def write_song(path: Path, minutes: float) -> None:
    """A stereo float WAV of ``minutes``, written one block at a time."""
    block = RATE * 10
    total = int(minutes * 60 * RATE)
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(str(path), "w", RATE, 2, subtype="FLOAT") as song:
        for start in range(0, total, block):
            t = (start + np.arange(min(block, total - start))) / RATE
            tones = np.stack([0.2 * np.sin(2 * np.pi * 220 * t),
                              0.15 * np.sin(2 * np.pi * 330 * t)])
            song.write((tones + 0.05 * rng.standard_normal(tones.shape)).T.astype(np.float32))


def child(args: argparse.Namespace) -> None:
    """Separate ``args.song`` once and print a JSON line with the wall time."""
    import torch

    from d3net import models
    from d3net.separate import Separator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {t: (models.d3net_mss(t, small=args.config == "mss-small")).eval() for t in TARGETS}
    options = {} if args.wiener_window is None else {"wiener_window": args.wiener_window or None}
    if args.fast:
        options["mode"] = "fast"
    else:
        options["channel_flip"] = not args.no_flip
    separator = Separator(nets, precision=args.precision, **options)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d3net-bench-") as out:
        separator.separate_file(args.song, out)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def measure(args: argparse.Namespace, minutes: float, workdir: Path) -> dict:
    song = workdir / f"song-{minutes:g}min.wav"
    write_song(song, minutes)
    command = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", "--song", str(song),
               "--threads", str(args.threads), "--precision", args.precision,
               "--config", args.config]
    if args.no_flip:
        command.append("--no-flip")
    if args.fast:
        command.append("--fast")
    if args.wiener_window is not None:
        command += ["--wiener-window", str(args.wiener_window)]
    result = subprocess.run(command, capture_output=True, text=True)
    song.unlink()
    if result.returncode != 0:
        raise SystemExit(f"{minutes:g} min: failed:\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
    seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    return {"minutes": minutes, "peak_gb": peak_kb / 1024 ** 2, "seconds": seconds,
            "rtf": seconds / (minutes * 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10, 30])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flip", action="store_true", help="skip the channel flip")
    parser.add_argument("--fast", action="store_true",
                        help="the fast mode (no flip, no overlap between patches)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--config", choices=["official", "mss-small"], default="official",
                        help="network structure: the four official ones (default) or mss-small")
    parser.add_argument("--wiener-window", type=int, default=None,
                        help="Wiener window in frames (0 = whole song; default: the Separator's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    mode = "fast mode" if args.fast else f"flip {'off' if args.no_flip else 'on'}"
    print(f"config {args.config}, {mode}, {args.precision}, "
          f"{args.threads} threads, Wiener window "
          f"{'default' if args.wiener_window is None else args.wiener_window or 'whole song'}")
    print("| song (min) | peak RSS (GB) | wall (s) | real-time factor |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="d3net-bench-song-") as workdir:
        for minutes in args.minutes:
            row = measure(args, minutes, Path(workdir))
            print(f"| {row['minutes']:g} | {row['peak_gb']:.2f} | {row['seconds']:.0f} | "
                  f"{row['rtf']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
