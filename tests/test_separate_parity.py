"""End-to-end parity with the official NNabla inference (fixtures with calibrated weights).

The four official ``.h5`` files are converted, the fixture mixture separated with
``compat="official"``, and every target compared with the official pipeline's output:
magnitudes after the patch overlap-add and audio after the Wiener filter and iSTFT (over
the official output's length, which is 408 samples shorter than the input: the official
iSTFT is not given the length), both to a relative error of 1e-4 or better, every element
(relative error is ``max|ours - ref| / max|ref|``). Both through the Python API and through
the CLI (``d3net convert nnabla`` then ``d3net separate --compat official`` on a float WAV
written from the fixture mixture).

The network dominates the run time (four full-size models over 6 s of audio, minutes on
two CPU cores), so these tests are marked slow and every network call goes through a cache
keyed by target and the exact input patch bytes: the magnitudes are recomputed from the
cache after the API run, and every CLI network call must hit it (so the CLI fed the
networks exactly the same patches). The audio half of the pipeline (Wiener filter and
iSTFT from the official magnitudes) is checked on its own, quickly and more tightly.
"""
import hashlib

import numpy as np
import pytest
import torch

from d3net.audio import spectral
from d3net.audio.wiener import wiener
from d3net.configs import TARGETS
from d3net.separate import Separator

TOLERANCE = 1e-4


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def mss(official):
    return official / "mss"


def official_mixture(mss) -> torch.Tensor:
    """``e2e_mixture.npy`` as ``(channels, samples)``."""
    return torch.from_numpy(np.load(mss / "e2e_mixture.npy").T.copy())


def official_magnitude(mss, target: str) -> np.ndarray:
    """``e2e_<target>_mag.npy`` as ``(channels, bins, frames)``."""
    return np.load(mss / f"e2e_{target}_mag.npy").transpose(1, 2, 0)


def official_audio(mss, target: str) -> np.ndarray:
    """``e2e_<target>_audio.npy`` as ``(channels, samples)``."""
    return np.load(mss / f"e2e_{target}_audio.npy").T


def test_wiener_and_istft_from_official_magnitudes(mss):
    mixture = official_mixture(mss)
    spec = spectral.stft(mixture)
    magnitudes = torch.stack([torch.from_numpy(official_magnitude(mss, t).copy())
                              for t in TARGETS])
    stems = spectral.istft(wiener(magnitudes, spec, iterations=1, compat="official"),
                           length=mixture.shape[-1])
    for target, stem in zip(TARGETS, stems.numpy()):
        ref = official_audio(mss, target)
        assert relative_error(stem[:, :ref.shape[1]], ref) < 1e-5, target


class NetworkCache:
    """Memoises ``Separator._run`` by (target, exact input bytes); counts hits and misses."""

    def __init__(self):
        self.outputs, self.hits, self.misses = {}, 0, 0
        self.run = Separator._run

    def __call__(self, separator, model, batch):
        key = (model.config.target, hashlib.sha256(batch.cpu().numpy().tobytes()).hexdigest())
        if key in self.outputs:
            self.hits += 1
        else:
            self.misses += 1
            self.outputs[key] = self.run(separator, model, batch)
        return self.outputs[key].clone()


@pytest.fixture(scope="module")
def network_cache():
    cache = NetworkCache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Separator, "_run", lambda self, model, batch: cache(self, model, batch))
        yield cache


@pytest.fixture(scope="module")
def official_run(network_cache, mss):
    convert = pytest.importorskip("d3net.convert")
    mixture = official_mixture(mss)
    models = {t: convert.load_nnabla(mss / f"{t}.h5", f"mss-{t}") for t in TARGETS}
    separator = Separator(models, compat="official", device="cpu")
    stems = separator.separate(mixture, 44100)
    misses = network_cache.misses
    magnitudes = separator.separate_magnitudes(spectral.magnitude(spectral.stft(mixture)))
    assert network_cache.misses == misses  # the same patches as the separation's
    return mixture, magnitudes, stems


@pytest.fixture(scope="module")
def cli_run(official_run, network_cache, mss, tmp_path_factory):
    """``d3net convert nnabla`` + ``d3net separate --compat official``: stems as read back."""
    import soundfile

    from d3net.cli import main

    mixture = official_run[0]
    work = tmp_path_factory.mktemp("cli")
    soundfile.write(str(work / "mixture.wav"), mixture.numpy().T, 44100, subtype="FLOAT")
    assert main(["convert", "nnabla", str(mss), "-o", str(work / "model"), "-q"]) == 0
    hits, misses = network_cache.hits, network_cache.misses
    assert main(["separate", str(work / "mixture.wav"), "-o", str(work / "out"), "--model",
                 str(work / "model"), "--compat", "official", "--bits", "32", "-q"]) == 0
    calls = (network_cache.hits - hits, network_cache.misses - misses)
    stems = {t: soundfile.read(str(work / "out" / "mixture" / f"{t}.wav"), dtype="float32",
                               always_2d=True)[0].T for t in TARGETS}
    return stems, calls


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_magnitudes_match_official(official_run, mss, target):
    _, magnitudes, _ = official_run
    ref = official_magnitude(mss, target)
    ours = magnitudes[target].numpy()
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("route", ["api", "cli"])
@pytest.mark.parametrize("target", TARGETS)
def test_audio_matches_official(request, official_run, mss, route, target):
    mixture, _, stems = official_run
    if route == "cli":
        stems, _ = request.getfixturevalue("cli_run")
    ref = official_audio(mss, target)
    ours = np.asarray(stems[target])
    assert ours.shape == mixture.shape
    assert relative_error(ours[:, :ref.shape[1]], ref) <= TOLERANCE


@pytest.mark.slow
def test_stems_add_up_to_the_mixture(official_run):
    mixture, _, stems = official_run
    total = torch.stack([stems[t] for t in TARGETS]).sum(0)
    assert (total - mixture).abs().max() < 1e-5


@pytest.mark.slow
def test_cli_feeds_the_networks_the_same_patches(cli_run):
    _, (hits, misses) = cli_run
    assert hits > 0 and misses == 0
