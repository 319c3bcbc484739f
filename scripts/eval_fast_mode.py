"""What the fast mode and the other speed options cost in quality.

    python scripts/eval_fast_mode.py [--songs 8] [--seconds 8] [--jobs 1] [--skip-official]
        [--variants default-auto,no-flip,overlap-0,fast-float32,fast]

Two measurements, each against the reference inference (the official one: channel flip,
half-patch overlap, float32 PyTorch):

1. SDR (d3net's own SDR, equal to BSSEval v4's; median over 1 s frames, then over songs)
   of the bundled demo model on held-out synthetic songs (seeds FIRST_DEMO_SEED + 100 ..;
   training used 64-bit hashed seeds, see ``d3net.data.synth_music.song_seed``), and the
   per-song SDR change against the reference (mean and worst over songs).
2. The relative change of the magnitude estimates of the four official-structure networks
   with the calibrated fixture weights (``../shared/fixtures/official/mss/*.h5``) on the
   fixture's end-to-end mixture: ``max|a - ref| / max|ref|`` and the energy ratio
   ``||a - ref|| / ||ref||`` over the whole spectrogram.

Variants: ``default-auto`` (default mode with the automatic backend and precision: on a
CPU with native bfloat16 that is OpenVINO bf16), ``no-flip``, ``overlap-0`` (flip kept,
patches side by side), ``overlap-0.75``, ``fast-float32`` (no flip and overlap 0, float32
PyTorch: the patching cost alone) and ``fast`` (the fast mode as shipped: auto backend and
precision). The figures do not depend on the machine's load, only on its arithmetic (the
bfloat16 variants on the hardware's bf16 kernels).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "default-auto": {},
    "no-flip": {"channel_flip": False, "backend": "torch", "precision": "float32"},
    "overlap-0": {"overlap": 0.0, "backend": "torch", "precision": "float32"},
    "overlap-0.75": {"overlap": 0.75, "backend": "torch", "precision": "float32"},
    "fast-float32": {"mode": "fast", "backend": "torch", "precision": "float32"},
    "fast": {"mode": "fast"},
}
REFERENCE = {"backend": "torch", "precision": "float32"}
FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/official/mss"


_separators: dict = {}


def _build_separators(names: list[str], threads: int) -> dict:
    from d3net.separate import Separator

    torch.set_num_threads(threads)
    options = {"reference": REFERENCE, **VARIANTS}
    _separators.clear()
    _separators.update({n: Separator.from_pretrained("demo", device="cpu", **options[n])
                        for n in names})
    return _separators


def _score_song(job: tuple[int, float]) -> tuple[int, dict]:
    """Separate one held-out song with every separator; target SDRs per separator."""
    from d3net.data.synth_music import generate_song
    from d3net.configs import TARGETS
    from d3net.evaluate.sdr import score_track

    seed, seconds = job
    stems = generate_song(seed, seconds, 44100)
    truth = {t: np.asarray(stems[t], np.float32) for t in TARGETS}
    mixture = torch.from_numpy(sum(truth.values()))
    scores = {}
    for name, separator in _separators.items():
        estimates = separator.separate(mixture, 44100)
        medians = score_track(truth, {t: estimates[t].numpy() for t in TARGETS}, 44100,
                              scorer="own", accompaniment=False)["median"]
        scores[name] = {t: medians[t]["SDR"] for t in TARGETS}
    return seed, scores


def demo_sdr(variants: list[str], songs: int, seconds: float, jobs: int = 1) -> None:
    import multiprocessing

    from d3net.configs import TARGETS
    from d3net.demo import FIRST_DEMO_SEED

    names = ["reference"] + variants
    separators = _build_separators(names, torch.get_num_threads())  # converts once, here
    print("demo model, held-out songs; settings: " + "; ".join(
        f"{n} = {separators[n].backend} {separators[n].precision}, flip "
        f"{'on' if separators[n].channel_flip else 'off'}, overlap "
        f"{0.5 if separators[n].overlap is None else separators[n].overlap}" for n in names),
        flush=True)
    sdr = {n: {t: [] for t in TARGETS} for n in names}
    work = [(FIRST_DEMO_SEED + 100 + i, seconds) for i in range(songs)]
    if jobs > 1:  # songs in parallel processes, one thread each; same figures
        pool = multiprocessing.get_context("spawn").Pool(
            jobs, initializer=_build_separators, initargs=(names, 1))
        results = pool.imap(_score_song, work)
    else:
        pool, results = None, map(_score_song, work)
    for seed, scores in results:
        for n in names:
            for t in TARGETS:
                sdr[n][t].append(scores[n][t])
        print(f"song {seed}: " + ", ".join(
            f"{n} {np.mean([scores[n][t] for t in TARGETS]):.2f}" for n in names), flush=True)
    if pool is not None:
        pool.close()

    print(f"\nd3net own SDR (= BSSEval v4), dB: median over 1 s frames, then over {songs} "
          f"songs of {seconds:g} s; change = per-song average-SDR difference to the reference "
          "(mean / worst)\n")
    print("| inference | " + " | ".join(TARGETS) + " | average | change mean | change worst |")
    print("|---" * (len(TARGETS) + 4) + "|")
    reference = np.mean([sdr["reference"][t] for t in TARGETS], axis=0)  # per song
    for n in names:
        medians = [float(np.median(sdr[n][t])) for t in TARGETS]
        change = np.mean([sdr[n][t] for t in TARGETS], axis=0) - reference
        print(f"| {n} | " + " | ".join(f"{m:.2f}" for m in medians)
              + f" | {np.mean(medians):.2f} | {change.mean():+.3f} | {change.min():+.3f} |")


def official_magnitudes(variants: list[str], weights: Path = FIXTURES) -> None:
    from d3net.audio import spectral
    from d3net.convert import load_nnabla
    from d3net.configs import TARGETS
    from d3net.separate import Separator

    mixture = torch.from_numpy(np.load(FIXTURES / "e2e_mixture.npy"))
    if mixture.shape[0] != 2:
        mixture = mixture.T
    magnitude = spectral.magnitude(spectral.stft(mixture.float()))
    print(f"\nofficial-structure networks, weights {weights}, fixture mixture "
          f"({magnitude.shape[-1]} frames); relative change of the magnitude estimates "
          "against the reference: max|a - ref| / max|ref| and ||a - ref|| / ||ref||\n")
    print("| inference | " + " | ".join(TARGETS) + " |")
    print("|---" * (len(TARGETS) + 1) + "|")
    results = {}
    for n in ["reference"] + variants:
        options = REFERENCE if n == "reference" else VARIANTS[n]
        fresh = {t: load_nnabla(weights / f"{t}.h5") for t in TARGETS}
        start = time.perf_counter()
        results[n] = Separator(fresh, device="cpu", **options).separate_magnitudes(magnitude)
        if n == "reference":
            continue
        cells = []
        for t in TARGETS:
            ref, out = results["reference"][t], results[n][t]
            cells.append(f"{((out - ref).abs().max() / ref.abs().max()).item():.1e} / "
                         f"{((out - ref).norm() / ref.norm()).item():.1e}")
        print(f"| {n} | " + " | ".join(cells) + f" |  ({time.perf_counter() - start:.0f} s)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--jobs", type=int, default=1,
                        help="songs separated in parallel processes (same figures)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--official-weights", type=Path, default=FIXTURES, metavar="DIR",
                        help="folder with vocals.h5 ... other.h5 (default: the calibrated "
                        "fixture weights; Sony's unzipped d3net-mss/ works too)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.skip_demo:
        demo_sdr(variants, args.songs, args.seconds, args.jobs)
    if not args.skip_official:
        if not (FIXTURES / "e2e_mixture.npy").is_file():
            print(f"\nofficial fixtures not found at {FIXTURES}; skipped the magnitude check")
        else:
            official_magnitudes(variants, args.official_weights)


if __name__ == "__main__":
    main()
