"""Score the bundled demo model on held-out synthetic songs against the mixture baseline.

    python scripts/eval_demo.py [--songs 5] [--seconds 12] [--model DIR]

Songs use seeds FIRST_DEMO_SEED.. (training songs use 64-bit hashed seeds, see
``d3net.data.synth_music.song_seed``). Prints a markdown table of median SDRs (museval
BSSEval v4 when available, else d3net's own SDR, named in the output) for the model, the
issue's trivial baseline (the mixture as every estimate) and a stricter one: a quarter of
the mixture as every estimate, about what the Wiener filter makes of a model that learned
nothing (equal estimates share the mixture out equally).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from d3net.data.synth_music import generate_song
    from d3net.configs import TARGETS
    from d3net.demo import FIRST_DEMO_SEED
    from d3net.evaluate.sdr import score_track
    from d3net.separate import Separator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--model", default="demo",
                        help="any separation model spec (default: the bundled demo model)")
    args = parser.parse_args()

    separator = Separator.from_pretrained(args.model, device="cpu")
    rows = ("demo model", "mixture as estimate", "mixture / 4 as estimate")
    tables = {row: {t: [] for t in TARGETS} for row in rows}
    scorer = None
    for i in range(args.songs):
        stems = generate_song(FIRST_DEMO_SEED + i, args.seconds, 44100)
        truth = {t: np.asarray(stems[t], np.float32) for t in TARGETS}
        mixture = sum(truth.values())
        est = separator.separate(torch.from_numpy(mixture), 44100)
        estimates = {t: est[t].numpy() for t in TARGETS}
        s = score_track(truth, estimates, 44100, scorer="auto")
        scorer = s["scorer"]
        scores = {rows[0]: s,
                  rows[1]: score_track(truth, {t: mixture for t in TARGETS}, 44100, scorer=scorer),
                  rows[2]: score_track(truth, {t: mixture / 4 for t in TARGETS}, 44100,
                                       scorer=scorer)}
        for row, result in scores.items():
            for t in TARGETS:
                tables[row][t].append(result["median"][t]["SDR"])
        print(f"song {FIRST_DEMO_SEED + i}: " + ", ".join(f"{t} {s['median'][t]['SDR']:.2f}" for t in TARGETS),
              flush=True)
    print(f"\nscorer: {scorer}; median over 1 s frames, then median over {args.songs} songs\n")
    print("| | " + " | ".join(TARGETS) + " | average |")
    print("|---" * (len(TARGETS) + 2) + "|")
    for name, table in tables.items():
        medians = [float(np.median(table[t])) for t in TARGETS]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians)
              + f" | {np.mean(medians):.2f} |")
    ours, base = tables[rows[0]], tables[rows[1]]
    gain = np.mean([np.median(ours[t]) - np.median(base[t]) for t in TARGETS])
    print(f"\naverage improvement over the mixture baseline: {gain:.2f} dB")


if __name__ == "__main__":
    main()
