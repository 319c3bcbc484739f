"""Multichannel Wiener filter (local Gaussian model), vectorised in torch.

Every source ``j`` is modelled per time-frequency bin as a zero-mean complex Gaussian with
covariance ``psd_j(t, f) * R_j(f)``: a power spectral density shared by the channels and
a spatial covariance matrix shared by the frames. The filter gives each source the
posterior mean ``psd_j R_j Cxx^-1 x`` with ``Cxx = sum_j psd_j R_j``.

One iteration reproduces the official D3Net filter (``apply_mwf`` in Sony's release):

* ``psd_j = mean over channels of |y_j|^2``, plus ``eps`` times its maximum over the song;
* ``R_j = sum_t y_j y_j^H / (sum_t psd_j + float64 eps)``;
* stereo mixture covariances are inverted in closed form where ``|det| >= eps``;
  elsewhere ``Cxx^H / (||Cxx||_F^2 + float64 eps)`` stands in for the inverse.

More iterations re-estimate ``psd_j`` and ``R_j`` from the current estimates and filter
again (the simplified EM of norbert / Open-Unmix). The official closed form is for stereo;
other channel counts use ``torch.linalg`` with the same determinant test and fallback.

Everything is computed in float64 / complex128: with untrained networks the magnitudes
reach 1e11, whose squares and 2x2 determinants overflow float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from d3net.errors import D3NetError

_EPS64 = torch.finfo(torch.float64).eps


def wiener(magnitudes: Tensor, mixture: Tensor, iterations: int = 1, residual: bool = False,
           eps: float = 1e-10, frame_batch: int | None = 256) -> Tensor:
    """Separate ``mixture`` with the multichannel Wiener filter.

    Args:
        magnitudes: real ``(sources, channels, bins, frames)`` magnitude estimates.
        mixture: complex ``(channels, bins, frames)`` mixture STFT.
        iterations: 0 returns the magnitudes with the mixture phase; 1 is the official
            single-pass filter; more are EM iterations.
        residual: append one more source, the mixture minus the sum of the initial complex
            estimates (magnitudes with mixture phase), before filtering.
        eps: relative PSD floor (times each source's maximum PSD) and the determinant
            threshold of the official filter.
        frame_batch: frames filtered at once, bounding memory on long songs
            (``None``: all frames at once). The statistics always cover all frames.

    Returns:
        Complex ``(sources[+1], channels, bins, frames)`` estimates, in the mixture's
        complex dtype and on its device.
    """
    if not mixture.is_complex():
        raise D3NetError(f"wiener: the mixture must be a complex STFT, got {mixture.dtype}")
    if magnitudes.dim() != 4 or magnitudes.shape[1:] != mixture.shape:
        raise D3NetError(
            f"wiener: magnitudes {tuple(magnitudes.shape)} do not match the mixture "
            f"{tuple(mixture.shape)}; expected (sources, channels, bins, frames)")
    if iterations < 0:
        raise D3NetError(f"wiener: iterations must be >= 0, got {iterations}")

    out_dtype = mixture.dtype
    angle = torch.angle(mixture)
    estimates = torch.polar(magnitudes.to(angle.dtype), angle).to(out_dtype)
    if residual:
        rest = (mixture - estimates.sum(0, dtype=torch.complex128)).to(out_dtype)
        estimates = torch.cat([estimates, rest[None]])
    if iterations == 0 or estimates.shape[-1] == 0:
        return estimates

    frames = mixture.shape[-1]
    step = frames if frame_batch is None else max(1, int(frame_batch))
    batches = [slice(start, min(start + step, frames)) for start in range(0, frames, step)]
    for _ in range(iterations):
        psd_floor, spatial = _source_statistics(estimates, batches, eps)
        for frames_slice in batches:
            # Filtering a batch only reads that batch's current estimates, so it can be
            # overwritten in place.
            estimates[..., frames_slice] = _filter_frames(
                estimates[..., frames_slice], mixture[..., frames_slice], psd_floor,
                spatial, eps).to(out_dtype)
    return estimates


def _psd(estimates: Tensor, psd_floor: Tensor) -> Tensor:
    """``(sources, bins, frames)`` float64 PSD of ``(sources, channels, bins, frames)``."""
    power = estimates.to(torch.complex128).abs().square().mean(dim=1)
    return power + psd_floor[:, None, None]


def _source_statistics(estimates: Tensor, batches: list[slice],
                       eps: float) -> tuple[Tensor, Tensor]:
    """PSD floors ``(sources,)`` and spatial covariances ``(sources, bins, C, C)``."""
    sources, channels, bins, frames = estimates.shape
    device = estimates.device
    psd_max = torch.zeros(sources, dtype=torch.float64, device=device)
    psd_sum = torch.zeros(sources, bins, dtype=torch.float64, device=device)
    covariance = torch.zeros(sources, bins, channels, channels, dtype=torch.complex128,
                             device=device)
    zero_floor = torch.zeros_like(psd_max)
    for frames_slice in batches:
        y = estimates[..., frames_slice].to(torch.complex128)
        power = _psd(y, zero_floor)
        psd_max = torch.maximum(psd_max, power.amax(dim=(1, 2)))
        psd_sum += power.sum(dim=2)
        covariance += torch.einsum("saft,sbft->sfab", y, y.conj())
    psd_floor = psd_max * eps
    weight = psd_sum + psd_floor[:, None] * frames + _EPS64
    return psd_floor, covariance / weight[..., None, None]


def _filter_frames(estimates: Tensor, mixture: Tensor, psd_floor: Tensor, spatial: Tensor,
                   eps: float) -> Tensor:
    """Posterior means ``(sources, C, bins, frames)`` for one batch of frames."""
    psd = _psd(estimates, psd_floor)                                      # (S, F, T)
    mix_cov = torch.einsum("sft,sfab->ftab", psd.to(torch.complex128), spatial)
    inverse = _regularised_inverse(mix_cov, eps)                          # (F, T, C, C)
    whitened = torch.einsum("ftbc,cft->bft", inverse, mixture.to(torch.complex128))
    filtered = torch.einsum("sfab,bft->saft", spatial, whitened)
    return filtered * psd[:, None]


def _regularised_inverse(matrices: Tensor, eps: float) -> Tensor:
    """Inverse of ``(..., C, C)`` where ``|det| >= eps``, else ``M^H / (||M||_F^2 + eps64)``."""
    channels = matrices.shape[-1]
    if channels == 2:
        a, b = matrices[..., 0, 0], matrices[..., 0, 1]
        c, d = matrices[..., 1, 0], matrices[..., 1, 1]
        det = a * d - b * c
        invertible = det.abs() >= eps
        safe_det = torch.where(invertible, det, torch.ones_like(det))
        inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
        inverse = inverse / safe_det[..., None, None]
    else:
        det = torch.linalg.det(matrices)
        invertible = det.abs() >= eps
        inverse, _ = torch.linalg.inv_ex(matrices)
    norm = matrices.abs().square().sum(dim=(-2, -1)) + _EPS64
    fallback = matrices.mH / norm[..., None, None]
    return torch.where(invertible[..., None, None], inverse, fallback)
