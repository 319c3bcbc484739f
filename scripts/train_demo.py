"""Train the small bundled demo model (``mss-small``) on synthetic songs, on a CPU.

Reproduces ``src/d3net/assets/demo/<target>.safetensors``:

    python scripts/train_demo.py --work /tmp/d3net-demo-train [--steps 160] [--resume] [--install]

1. ``d3net data synth-musdb``-style dataset: ``--tracks`` songs of ``--seconds`` s (seed 0);
2. ``d3net.train.mss.train_mss`` for each target with the ``mss-small`` config, short
   excerpts (64-frame patches) and a few hundred steps (the paper's recipe otherwise:
   Adam, MSE on magnitudes, random gain / channel swap / track remixing);
3. with ``--install``, copies the weights into the package.

Held-out scoring is in ``scripts/eval_demo.py``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

TARGETS = ("vocals", "drums", "bass", "other")
ASSETS = Path(__file__).resolve().parents[1] / "src" / "d3net" / "assets" / "demo"


def train_one(job):
    import torch
    torch.set_num_threads(1)
    from d3net.train.mss import train_mss
    root, out, target, args = job
    start = time.time()
    steps_per_epoch = args.tracks_train * args.samples_per_track // args.batch_size
    epochs = max(1, args.steps // steps_per_epoch)
    result = train_mss(root, target, out, config="mss-small", epochs=epochs,
                       batch_size=args.batch_size, lr=args.lr, lr_milestones=(int(epochs * 0.8),),
                       excerpt_seconds=args.excerpt_seconds, patch_frames=args.patch_frames,
                       samples_per_track=args.samples_per_track, validation="none",
                       stats_seconds=None, seed=args.seed, device="cpu", progress=False,
                       quiet=True, resume=args.resume)
    return target, result.train_loss, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/d3net-demo-train")
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=160, help="optimisation steps per target")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patch-frames", type=int, default=64)
    parser.add_argument("--excerpt-seconds", type=float, default=1.6)
    parser.add_argument("--samples-per-track", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs in WORK/run (e.g. after an interruption)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--install", action="store_true", help="copy the weights into the package")
    args = parser.parse_args()

    from d3net.data.synth_music import generate_dataset
    work = Path(args.work)
    root, out = work / "data", work / "run"
    if not (root / "train").is_dir():
        generate_dataset(root, subsets={"train": args.tracks, "test": 0}, seconds=args.seconds,
                         seed=args.seed)
    args.tracks_train = len(list((root / "train").iterdir()))
    with Pool(args.processes) as pool:
        for target, losses, seconds in pool.imap_unordered(
                train_one, [(root, out, t, args) for t in args.targets.split(",")]):
            print(f"{target}: {len(losses)} epochs in {seconds:.0f} s, loss "
                  f"{losses[0]:.4g} -> {losses[-1]:.4g}", flush=True)
    if args.install:
        ASSETS.mkdir(parents=True, exist_ok=True)
        for target in TARGETS:
            shutil.copyfile(out / f"{target}.safetensors", ASSETS / f"{target}.safetensors")
        print(f"installed into {ASSETS}")


if __name__ == "__main__":
    main()
