"""Score the bundled demo model on held-out synthetic songs against the mixture baseline.

    python scripts/eval_demo.py [--songs 5] [--seconds 12] [--model DIR]

Songs use seeds FIRST_DEMO_SEED.. (training songs use 64-bit hashed seeds, see
``d3net.data.synth_music.song_seed``). Prints a markdown table of median SDRs (museval
BSSEval v4 when available, else d3net's own SDR, named in the output).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from d3net.data.synth_music import generate_song
    from d3net.demo import FIRST_DEMO_SEED, TARGETS, bundled_model_dir
    from d3net.evaluate.sdr import score_track
    from d3net.separate import Separator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    separator = Separator.from_dir(args.model or bundled_model_dir(), device="cpu")
    ours, base, scorer = {t: [] for t in TARGETS}, {t: [] for t in TARGETS}, None
    for i in range(args.songs):
        stems = generate_song(FIRST_DEMO_SEED + i, args.seconds, 44100)
        truth = {t: np.asarray(stems[t], np.float32) for t in TARGETS}
        mixture = sum(truth.values())
        est = separator.separate(torch.from_numpy(mixture), 44100)
        s = score_track(truth, {t: est[t].numpy() for t in TARGETS}, 44100, scorer="auto")
        b = score_track(truth, {t: mixture for t in TARGETS}, 44100, scorer=s["scorer"])
        scorer = s["scorer"]
        for t in TARGETS:
            ours[t].append(s["median"][t]["SDR"])
            base[t].append(b["median"][t]["SDR"])
        print(f"song {FIRST_DEMO_SEED + i}: " + ", ".join(f"{t} {s['median'][t]['SDR']:.2f}" for t in TARGETS),
              flush=True)
    print(f"\nscorer: {scorer}; median over 1 s frames, then median over {args.songs} songs\n")
    print("| | " + " | ".join(TARGETS) + " | average |")
    print("|---" * (len(TARGETS) + 2) + "|")
    for name, table in (("demo model", ours), ("mixture as estimate", base)):
        medians = [float(np.median(table[t])) for t in TARGETS]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians)
              + f" | {np.mean(medians):.2f} |")
    gain = np.mean([np.median(ours[t]) - np.median(base[t]) for t in TARGETS])
    print(f"\naverage improvement over the mixture baseline: {gain:.2f} dB")


if __name__ == "__main__":
    main()
