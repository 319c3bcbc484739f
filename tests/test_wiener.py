"""Multichannel Wiener filter: official single pass, norbert EM, invariants, and the
default filter's behaviour where the official one goes wrong (few frames, quiet input)."""
import warnings

import numpy as np
import pytest
import torch

from d3net.audio.wiener import wiener
from d3net.errors import D3NetError


def official_mwf_reference(estimates: np.ndarray, mixture: np.ndarray, eps=1e-10):
    """Loop-based transcription of the official filter, written for clarity.

    estimates: complex (sources, channels, bins, frames); mixture (channels, bins, frames).
    """
    sources, channels, bins, frames = estimates.shape
    eps64 = np.finfo(np.float64).eps
    psds, covs = [], []
    for j in range(sources):
        y = estimates[j]
        psd = np.mean(np.abs(y) ** 2, axis=0)  # (bins, frames)
        psd = psd + psd.max() * eps
        cov = np.zeros((bins, channels, channels), complex)
        for f in range(bins):
            for t in range(frames):
                cov[f] += np.outer(y[:, f, t], np.conj(y[:, f, t]))
            cov[f] /= psd[f].sum() + eps64
        psds.append(psd)
        covs.append(cov)
    out = np.zeros_like(estimates)
    for f in range(bins):
        for t in range(frames):
            cxx = sum(psds[j][f, t] * covs[j][f] for j in range(sources))
            det = cxx[0, 0] * cxx[1, 1] - cxx[1, 0] * cxx[0, 1]
            if abs(det) >= eps:
                inv = np.array([[cxx[1, 1], -cxx[0, 1]], [-cxx[1, 0], cxx[0, 0]]]) / det
            else:
                inv = cxx.conj().T / (np.sum(np.abs(cxx) ** 2) + eps64)
            for j in range(sources):
                out[j, :, f, t] = psds[j][f, t] * covs[j][f] @ inv @ mixture[:, f, t]
    return out


def random_problem(sources=3, channels=2, bins=7, frames=11, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mags = torch.rand(sources, channels, bins, frames, generator=gen, dtype=torch.float64)
    mags = scale * (mags + 0.1)
    mix = torch.complex(torch.randn(channels, bins, frames, generator=gen, dtype=torch.float64),
                        torch.randn(channels, bins, frames, generator=gen, dtype=torch.float64))
    return mags, mix * scale


def relative_error(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    return np.abs(ours - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("scale", [1.0, 1e11])
def test_single_iteration_matches_official(scale):
    mags, mix = random_problem(scale=scale)
    initial = mags * torch.exp(1j * torch.angle(mix))[None]
    ref = official_mwf_reference(initial.numpy(), mix.numpy())
    ours = wiener(mags, mix, iterations=1, compat="official")
    assert ours.dtype == torch.complex128 and ours.shape == mags.shape
    assert relative_error(ours, ref) < 1e-10
    # The default filter differs by its spatial prior: about 1 / (frames + 1) here.
    default = wiener(mags, mix, iterations=1)
    assert 1e-4 < relative_error(default, ref) < 0.5


def test_official_fallback_branch_is_used_for_singular_covariances():
    # A bin where every source is silent except a tiny floor: |det| < eps there.
    mags, mix = random_problem()
    mags[:, :, 3, :] = 0.0
    mags[0, :, 3, 5] = 1e-9
    initial = mags * torch.exp(1j * torch.angle(mix))[None]
    ref = official_mwf_reference(initial.numpy(), mix.numpy())
    ours = wiener(mags, mix, iterations=1, compat="official")
    assert relative_error(ours, ref) < 1e-10
    assert torch.isfinite(ours.real).all()


def test_frame_batches_do_not_change_the_result():
    mags, mix = random_problem(frames=23)
    for compat in (None, "official"):
        full = wiener(mags, mix, iterations=2, frame_batch=None, compat=compat)
        for batch in (1, 4, 7):
            assert torch.allclose(wiener(mags, mix, iterations=2, frame_batch=batch,
                                         compat=compat), full, rtol=1e-12, atol=1e-12)


def norbert_or_skip():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.filters
            import norbert
        norbert.wiener(np.ones((2, 3, 2, 2)), np.ones((2, 3, 2), complex), iterations=1,
                       use_softmask=False)
    except Exception as error:  # noqa: BLE001 - any failure means "cannot compare"
        pytest.skip(f"norbert unusable with this numpy: {type(error).__name__}: {error}")
    return norbert


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_em_matches_norbert(iterations):
    norbert = norbert_or_skip()
    mags, mix = random_problem(sources=3, bins=9, frames=13, seed=iterations)
    # norbert layout: v (frames, bins, channels, sources), x (frames, bins, channels).
    v = mags.permute(3, 2, 1, 0).numpy().copy()
    x = mix.permute(2, 1, 0).numpy().copy()
    ref = norbert.wiener(v, x, iterations=iterations, use_softmask=False)
    ref = np.transpose(ref, (3, 2, 1, 0))
    ours = wiener(mags, mix, iterations=iterations, compat="official").numpy()
    # The two differ only in regularisation: norbert adds sqrt(float64 eps) ~ 1.5e-8 to
    # the diagonal of every mixture covariance and floors PSD sums at float64 eps; the
    # official filter floors each PSD at 1e-10 of its maximum. With O(1) data that is a
    # ~1e-8 relative perturbation, amplified a little by ill-conditioned 2x2 matrices.
    assert relative_error(ours, ref) < 1e-6
    # And a genuine difference between iteration counts is visible at this tolerance.
    if iterations > 1:
        fewer = wiener(mags, mix, iterations=iterations - 1, compat="official")
        assert relative_error(fewer.numpy(), ref) > 1e-4


@pytest.mark.parametrize("compat", [None, "official"])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("iterations", [1, 3])
def test_sources_sum_to_mixture(channels, iterations, compat):
    mags, mix = random_problem(channels=channels)
    out = wiener(mags, mix, iterations=iterations, compat=compat)
    assert out.shape == mags.shape
    assert relative_error(out.sum(0), mix) < 1e-10


def test_general_channel_path_agrees_with_closed_form():
    from d3net.audio import wiener as module  # the module, not the function
    mats = torch.randn(50, 2, 2, dtype=torch.complex128)
    mats[:5] = 0
    closed = module._regularised_inverse(mats, 1e-10)
    det = torch.linalg.det(mats)
    general = torch.where((det.abs() >= 1e-10)[:, None, None], torch.linalg.inv_ex(mats)[0],
                          mats.mH / (mats.abs().square().sum((-2, -1)) + 2.2e-16)[:, None, None])
    assert torch.allclose(closed, general, rtol=1e-10, atol=1e-12)


def test_zero_iterations_is_mixture_phase():
    mags, mix = random_problem()
    out = wiener(mags, mix, iterations=0)
    assert torch.allclose(out.abs(), mags)
    assert torch.allclose(out / out.abs(), (mix / mix.abs())[None].expand_as(out))


def test_residual_source():
    mags, mix = random_problem()
    initial = wiener(mags, mix, iterations=0, residual=True)
    assert initial.shape[0] == mags.shape[0] + 1
    assert torch.allclose(initial.sum(0), mix)
    filtered = wiener(mags, mix, iterations=1, residual=True)
    assert filtered.shape[0] == mags.shape[0] + 1
    assert relative_error(filtered.sum(0), mix) < 1e-10
    # A single source with a residual no longer returns the whole mixture.
    one = wiener(mags[:1], mix, iterations=1)
    assert relative_error(one[0], mix) < 1e-10
    one_res = wiener(mags[:1], mix, iterations=1, residual=True)
    assert relative_error(one_res[0], mix) > 0.01


def test_silent_input_gives_zeros():
    mags = torch.zeros(4, 2, 5, 6)
    mix = torch.zeros(2, 5, 6, dtype=torch.complex64)
    for iterations in (0, 1, 3):
        out = wiener(mags, mix, iterations=iterations, residual=True)
        assert out.dtype == torch.complex64
        assert torch.equal(out, torch.zeros_like(out))


def test_float32_inputs_with_huge_magnitudes_stay_finite():
    mags, mix = random_problem(scale=1e11)
    out = wiener(mags.float(), mix.to(torch.complex64), iterations=2)
    assert out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()
    assert relative_error(out.sum(0), mix) < 1e-6


def test_bad_shapes():
    mags, mix = random_problem()
    with pytest.raises(D3NetError, match="do not match"):
        wiener(mags[:, :, :3], mix)
    with pytest.raises(D3NetError, match="complex"):
        wiener(mags, mix.real)
    with pytest.raises(D3NetError, match="compat"):
        wiener(mags, mix, compat="nnabla")


# ----------------------------------------------------------------------------- default filter

def one_frame_problem(sources=4, seed=0):
    """One frame: every source's magnitude estimate with the mixture's phase, as the
    separator gives it; the estimates' channel ratios are close to each other."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 2, 50, 1, generator=gen, dtype=torch.float64) + 0.5
    mags = base * (1 + 0.02 * torch.rand(sources, 2, 50, 1, generator=gen,
                                          dtype=torch.float64)) * torch.rand(
        sources, 1, 1, 1, generator=gen, dtype=torch.float64)
    mix = torch.complex(torch.randn(2, 50, 1, generator=gen, dtype=torch.float64),
                        torch.randn(2, 50, 1, generator=gen, dtype=torch.float64))
    return mags, mix


def test_one_frame_gives_bounded_sources_that_add_up():
    mags, mix = one_frame_problem()
    official = wiener(mags, mix, compat="official")
    default = wiener(mags, mix)
    louder = lambda out: float((out.abs().amax(0) / mix.abs()).max())  # noqa: E731
    # Rank-one spatial covariances from one frame, nearly parallel: the official filter
    # inverts a nearly singular mixture covariance and the sources cancel each other.
    assert louder(official) > 10
    assert louder(default) < 3
    assert relative_error(default.sum(0), mix) < 1e-10


@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1.0, 1e6])
def test_default_filter_is_scale_invariant(scale):
    mags, mix = random_problem(frames=30)
    reference = wiener(mags, mix)
    scaled = wiener(mags * scale, mix * scale)
    assert relative_error(scaled / scale, reference) < 1e-9
    assert relative_error(scaled.sum(0), mix * scale) < 1e-10


def test_quiet_input_adds_up_only_with_the_default_filter():
    mags, mix = random_problem(frames=30, scale=1e-4)
    assert relative_error(wiener(mags, mix).sum(0), mix) < 1e-10
    # the official absolute threshold |det| >= 1e-10 fails at this level
    assert relative_error(wiener(mags, mix, compat="official").sum(0), mix) > 0.1


def test_identical_channels_add_up():
    mags, mix = random_problem(frames=20)
    mags[:, 1] = mags[:, 0]
    mix[1] = mix[0]
    out = wiener(mags, mix, iterations=2)
    assert relative_error(out.sum(0), mix) < 1e-10
    assert torch.allclose(out[:, 0], out[:, 1])


def test_no_source_where_the_mixture_is_silent():
    mags, mix = random_problem()
    mix[:, 2, 3] = 0
    out = wiener(mags, mix, iterations=0, residual=True)
    assert torch.equal(out[:, :, 2, 3], torch.zeros_like(out[:, :, 2, 3]))
    assert wiener(mags, mix, iterations=0, compat="official")[:, :, 2, 3].abs().min() > 0
