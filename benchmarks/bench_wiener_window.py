"""What the Wiener window costs: SDR of windowed filters against a whole-song filter.

The bundled demo model separates held-out synthetic songs (seeds from
``demo.FIRST_DEMO_SEED + 100``; the networks run once per song, no channel flip); then the
magnitudes go through the default Wiener filter over the whole song and over windows of W
frames with C frames of context on each side (the statistics cover the window plus its
context, only the window's own frames are kept), as :class:`d3net.separate.Separator`
does with ``wiener_window=W`` (C = W / 4). Prints the median of 1 s framewise SDRs per
target (the project's own SDR, equal to BSSEval v4's) and their mean.

    python benchmarks/bench_wiener_window.py [--songs 4] [--seconds 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from d3net.audio import spectral
from d3net.audio.wiener import wiener
from d3net.configs import TARGETS
from d3net.data.synth_music import generate_song
from d3net.demo import FIRST_DEMO_SEED, bundled_model_dir
from d3net.evaluate.sdr import own_sdr
from d3net.separate import Separator

WINDOWS = (None, (1024, 256), (512, 128), (512, 64), (512, 0), (256, 64), (256, 0), (128, 32),
           (128, 0))


def windowed(estimates: torch.Tensor, mixture: torch.Tensor, window, context) -> torch.Tensor:
    frames = mixture.shape[-1]
    cores = []
    for core in range(0, frames, window):
        start, end = max(0, core - context), min(frames, core + window + context)
        filtered = wiener(estimates[..., start:end], mixture[..., start:end])
        cores.append(filtered[..., core - start:min(core + window, frames) - start])
    return torch.cat(cores, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    separator = Separator.from_dir(bundled_model_dir(), channel_flip=False, batch_size=4)
    scores = {window: [] for window in WINDOWS}
    for k in range(args.songs):
        stems = generate_song(FIRST_DEMO_SEED + 100 + k, args.seconds, 44100)
        references = {t: np.asarray(stems[t], np.float32) for t in TARGETS}
        mixture_audio = torch.from_numpy(sum(references.values()))
        start = time.perf_counter()
        mixture = spectral.stft(mixture_audio)
        magnitudes = separator.separate_magnitudes(spectral.magnitude(mixture))
        estimates = torch.stack([magnitudes[t] for t in TARGETS])
        print(f"song {k}: networks {time.perf_counter() - start:.0f} s", flush=True)
        for window in WINDOWS:
            filtered = wiener(estimates, mixture) if window is None else \
                windowed(estimates, mixture, *window)
            audio = spectral.istft(filtered, length=mixture_audio.shape[1]).numpy()
            scores[window].append({t: float(np.nanmedian(own_sdr(references[t], audio[i],
                                                                 44100, 44100)))
                                   for i, t in enumerate(TARGETS)})
    print(f"\n{args.songs} songs of {args.seconds:g} s; median SDR (dB) per target, averaged "
          "over the songs")
    print("| filter statistics | " + " | ".join(TARGETS) + " | mean |")
    print("|---" * (len(TARGETS) + 2) + "|")
    for window, rows in scores.items():
        name = "whole song" if window is None else f"{window[0]} frames + {window[1]} each side"
        means = [np.mean([row[t] for row in rows]) for t in TARGETS]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) +
              f" | {np.mean(means):.3f} |")


if __name__ == "__main__":
    main()
