"""The README's main command: d3net demo with the bundled model."""
import subprocess
import sys

import numpy as np
import soundfile
import torch

from d3net.configs import TARGETS
from d3net.errors import D3NetError
from d3net.demo import FIRST_DEMO_SEED, bundled_model_dir, run_demo


def test_bundled_model_is_complete_and_small():
    folder = bundled_model_dir()
    sizes = [(folder / f"{t}.safetensors").stat().st_size for t in TARGETS]
    assert max(sizes) < 2_000_000


def test_run_demo_writes_everything(tmp_path):
    result = run_demo(tmp_path, seconds=3.0, progress=False, scorer="own")
    assert result["scorer"] == "own"
    mixture, rate = soundfile.read(tmp_path / "mixture.wav")
    assert rate == 44100 and mixture.shape == (3 * 44100, 2)
    for t in TARGETS:
        for part in ("true", "estimates"):
            audio, _ = soundfile.read(tmp_path / part / f"{t}.wav")
            assert audio.shape == mixture.shape and np.isfinite(audio).all()
        assert np.isfinite(result["sdr"][t])
    assert (tmp_path / "spectrograms.png").read_bytes()[:4] == b"\x89PNG"
    # the estimates share out the mixture (Wiener filter): they sum back to it
    total = sum(soundfile.read(tmp_path / "estimates" / f"{t}.wav")[0] for t in TARGETS)
    assert np.abs(total - mixture).max() < 2e-3


def test_a_failing_demo_leaves_no_partial_folder(tmp_path, monkeypatch, capsys):
    import errno

    from d3net import demo
    from d3net.cli import main

    def disk_full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(demo, "plot_spectrograms", disk_full)  # the last file written
    assert main(["demo", "-o", str(tmp_path / "demo"), "--seconds", "1", "-q"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    def disk_full_in_a_writer(path, *args, **kwargs):  # as atomic_path reports it
        raise D3NetError(f"cannot write {path}: no space left on the device")

    monkeypatch.setattr(demo.io, "save", disk_full_in_a_writer)
    assert main(["demo", "-o", str(tmp_path / "demo"), "--seconds", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"cannot write {tmp_path / 'demo' / 'mixture.wav'}: no space left on "
                        "the device"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_demo_cli_bad_seed(tmp_path):
    result = subprocess.run([sys.executable, "-m", "d3net.cli", "demo", "-o", str(tmp_path),
                             "--seed", "-1"], capture_output=True, text=True)
    assert result.returncode == 2 and "seed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bundled_model_has_learned_to_separate():
    """On a held-out song the bundled model beats the mixture by far, and also a quarter of
    the mixture as every estimate (about what the Wiener filter makes of a model that
    learned nothing), by several dB on average. scripts/eval_demo.py measured +12.4 dB and
    +6.3 dB on five other held-out songs."""
    from d3net.data.synth_music import generate_song
    from d3net.evaluate.sdr import score_track
    from d3net.separate import Separator

    stems = generate_song(FIRST_DEMO_SEED + 7, 6.0, 44100)
    truth = {t: np.asarray(stems[t], np.float32) for t in TARGETS}
    mixture = sum(truth.values())
    estimates = Separator.from_dir(bundled_model_dir()).separate(torch.from_numpy(mixture), 44100)

    def average_sdr(candidates):
        medians = score_track(truth, candidates, 44100, scorer="own")["median"]
        return np.mean([medians[t]["SDR"] for t in TARGETS])

    model = average_sdr({t: estimates[t].numpy() for t in TARGETS})
    assert model > average_sdr({t: mixture for t in TARGETS}) + 6
    assert model > average_sdr({t: mixture / 4 for t in TARGETS}) + 5
