"""The no-download demo: a fresh synthetic song separated by the small bundled model.

The bundled model (``mss-small``, one network per target, under 1 MB each) was trained on
synthetic songs by ``scripts/train_demo.py``; the demo draws songs from small seeds
(:data:`FIRST_DEMO_SEED` and up) that training never used.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .audio import io, spectral
from .configs import TARGETS
from .errors import D3NetError
from .evaluate.sdr import score_track
from .models import hub
from .separate import Separator
from .utils import PathLike, atomic_path, check_writable

#: Demo and held-out evaluation songs use seeds from here; training songs use 64-bit hashed
#: seeds (``synth_music.song_seed``), which these small seeds never equal.
FIRST_DEMO_SEED = 10_000
DEMO_SECONDS = 12.0


def bundled_model_dir() -> Path:
    """Folder of the bundled demo separation model (``<target>.safetensors``): the
    registry's ``demo`` weights (:mod:`d3net.models.weights`)."""
    return hub.fetch("demo", progress=False)


def run_demo(out: PathLike, seed: int = FIRST_DEMO_SEED,
             seconds: float = DEMO_SECONDS, device: Optional[str] = None,
             progress: bool = True, scorer: str = "auto") -> Dict[str, object]:
    """Generate a song, separate it, write audio + a spectrogram figure, score it.

    Writes ``out/mixture.wav``, ``out/true/<target>.wav``, ``out/estimates/<target>.wav``
    and ``out/spectrograms.png``.

    ``scorer``: "auto" (museval when it can be imported, else d3net's own SDR), "museval"
    or "own".

    Returns:
        ``{"scorer": "museval" | "own", "sdr": {target: median SDR (dB)},
        "baseline_sdr": {target: SDR of the mixture as estimate}}``.
    """
    # scipy.signal (~1 s): imported here because 'd3net --help' reads this module's constants
    from .data.synth_music import generate_song

    if not 0 <= seed < 2 ** 32:
        raise D3NetError(f"--seed must be in [0, 2**32), got {seed}")
    out = Path(out)
    check_writable(out)
    sample_rate = 44100
    stems = generate_song(seed, seconds, sample_rate)
    truth = {t: np.asarray(stems[t], dtype=np.float32) for t in TARGETS}
    mixture = sum(truth.values())
    separator = Separator.from_pretrained("demo", device=device, progress=progress)
    estimates = separator.separate(torch.from_numpy(mixture), sample_rate)
    estimates = {t: estimates[t].cpu().numpy() for t in TARGETS}

    # written into a staging folder beside ``out`` and moved in at the end: every file, or
    # (on a full disk, say) none
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        io.save(staging / "mixture.wav", torch.from_numpy(mixture), sample_rate)
        for t in TARGETS:
            io.save(staging / "true" / f"{t}.wav", torch.from_numpy(truth[t]), sample_rate)
            io.save(staging / "estimates" / f"{t}.wav", torch.from_numpy(estimates[t]),
                    sample_rate)
        plot_spectrograms(staging / "spectrograms.png", mixture, truth, estimates, sample_rate)
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            (out / file.relative_to(staging)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, out / file.relative_to(staging))
    except D3NetError as error:  # name the file the user asked for, not its staging copy
        raise D3NetError(str(error).replace(str(staging), str(out))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    scores = score_track(truth, estimates, sample_rate=sample_rate, scorer=scorer)
    baseline = score_track(truth, {t: mixture for t in TARGETS}, sample_rate=sample_rate,
                           scorer=scores["scorer"])
    return {"scorer": scores["scorer"],
            "sdr": {t: scores["median"][t]["SDR"] for t in TARGETS},
            "baseline_sdr": {t: baseline["median"][t]["SDR"] for t in TARGETS}}


def plot_spectrograms(path: Path, mixture: np.ndarray, truth: Dict[str, np.ndarray],
                      estimates: Dict[str, np.ndarray], sample_rate: int) -> None:
    """Mixture on top, then one row per target: estimate (left) vs truth (right)."""
    import matplotlib  # start-up time, as generate_song above
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def db(x: np.ndarray) -> np.ndarray:
        mag = spectral.magnitude(spectral.stft(torch.from_numpy(x.mean(0))))
        return 20 * np.log10(mag.numpy() + 1e-5)

    extent = (0, mixture.shape[-1] / sample_rate, 0, sample_rate / 2000)
    fig, axes = plt.subplots(len(TARGETS) + 1, 2, figsize=(12, 12), sharex=True, sharey=True)
    top = db(mixture)
    vmax = top.max()
    kw = dict(origin="lower", aspect="auto", extent=extent, vmin=vmax - 80, vmax=vmax,
              cmap="magma")
    for ax in axes[0]:
        ax.imshow(top, **kw)
        ax.set_title("mixture")
    for row, t in enumerate(TARGETS, start=1):
        axes[row, 0].imshow(db(estimates[t]), **kw)
        axes[row, 0].set_title(f"{t}: estimate")
        axes[row, 1].imshow(db(truth[t]), **kw)
        axes[row, 1].set_title(f"{t}: truth")
    for ax in axes[:, 0]:
        ax.set_ylabel("kHz")
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
