"""Render a session's anatomy as the map a given scanner writes (T1/T2 in ms, PD in %).

The order follows the measurement: the scanner integrates the PD-weighted linear quantities
``P = sum f PD`` and ``Q = sum f PD R`` of the fine planes over its slice profile and in-plane
point spread function (k-space extent and window, so edges ring); the map value is the ratio
(``T1 = P / Q1``, ``T2 = P / Q2``, ``PD = P``), then the scanner's systematic bias
(``gain * v * (v / ref) ** exponent``), its smooth residual field, its noise (texture from the
same k-space window), its clipping of long values and its background mask (apparent PD below
``mask_pd`` is written as 0).

A noise-free rendering (``rng=None``) is the paired ground truth: the scanner's systematic
effects only.
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy.special import ndtr

from harmonize.simulate.scanners import FIELD_SCALE_MM, field_polynomial

#: physically possible range of a rendered relaxation time before the vendor's clipping, ms;
#: guards the P/Q ratio where ringing drives Q towards 0 at the edge of the head
_RATIO_LIMITS_MS = {"T1": (50.0, 10000.0), "T2": (5.0, 5000.0)}


def slice_weights(profile, grid):
    """Weights of the fine planes of one slice, shape (planes_per_slice + 2 * extra_planes,), sum 1.

    The slice profile is a rectangle of width ``profile.slice_fwhm_mm`` smoothed by a Gaussian of
    standard deviation ``profile.slice_edge_mm``, integrated over each fine plane's extent.
    """
    n, e, h = grid.planes_per_slice, grid.extra_planes, grid.plane_step_mm
    offsets = (np.arange(-e, n + e) - (n - 1) / 2.0) * h
    half = profile.slice_fwhm_mm / 2.0
    sigma = max(profile.slice_edge_mm, 1e-3)

    # midpoint quadrature on 9 points per fine plane: smooth enough for any profile here
    sub = (np.arange(9) - 4) / 9.0 * h
    z = offsets[:, None] + sub[None, :]
    values = ndtr((z + half) / sigma) - ndtr((z - half) / sigma)
    w = values.mean(axis=1)
    return w / w.sum()


def slice_average(fine, weights, grid):
    """Weighted sum of the fine planes of every slice: (n_planes, r, c) -> (slices, r, c) float32."""
    n, s = grid.planes_per_slice, grid.slices
    out = np.zeros((s,) + fine.shape[1:], dtype=np.float32)
    for j, w in enumerate(weights):
        if w > 1e-6:
            out += np.float32(w) * fine[j:j + s * n:n]
    return out


def kspace_window(profile, grid):
    """The scanner's in-plane k-space weighting on the grid, shape (size, size // 2 + 1) (rfft2 layout).

    Separable: per axis 0 beyond the acquired extent ``1 / (2 * resolution)`` and the apodisation
    window inside it. Rows are y (phase if ``phase_axis == 'y'``), columns x.
    """
    res_freq, res_phase = profile.acq_resolution_mm
    res_x, res_y = (res_phase, res_freq) if profile.phase_axis == "x" else (res_freq, res_phase)
    fy = sfft.fftfreq(grid.size, d=grid.pixel_mm)
    fx = sfft.rfftfreq(grid.size, d=grid.pixel_mm)
    return np.outer(_axis_window(fy, res_y, profile), _axis_window(fx, res_x, profile))


def _axis_window(freq, resolution, profile):
    kmax = 1.0 / (2.0 * resolution)
    r = np.abs(freq) / kmax
    inside = r <= 1.0 + 1e-9
    if profile.kspace_filter == "hamming":
        w = 0.54 + 0.46 * np.cos(np.pi * np.minimum(r, 1.0))
    elif profile.kspace_filter == "fermi":
        w = 1.0 / (1.0 + np.exp((r - profile.fermi_radius) / max(profile.fermi_width, 1e-6)))
    else:
        w = np.ones_like(r)
    return np.where(inside, w, 0.0)


def _noise_norm(profile, grid):
    """Standard deviation of white unit noise after the window (to rescale it back to 1)."""
    res_freq, res_phase = profile.acq_resolution_mm
    res_x, res_y = (res_phase, res_freq) if profile.phase_axis == "x" else (res_freq, res_phase)
    full = sfft.fftfreq(grid.size, d=grid.pixel_mm)
    wy, wx = _axis_window(full, res_y, profile), _axis_window(full, res_x, profile)
    return float(np.sqrt(np.mean(wy ** 2) * np.mean(wx ** 2)))


def apply_psf(stack, window):
    """Filter each slice of (slices, size, size) with the k-space window (real output, float32)."""
    spec = sfft.rfft2(stack, axes=(-2, -1), workers=-1)
    spec *= window
    return sfft.irfft2(spec, s=stack.shape[-2:], axes=(-2, -1), workers=-1).astype(np.float32)


def field_map(profile, map_type, grid):
    """Relative residual field of the scanner on the grid, ``1 + weight * f``, shape (slices, size, size)."""
    weight = profile.field_weight(map_type)
    x = grid.inplane_mm() / FIELD_SCALE_MM[0]
    z = grid.slice_mm() / FIELD_SCALE_MM[1]
    f = field_polynomial(profile.field_coefficients, x[None, None, :], x[None, :, None], z[:, None, None])
    f = np.broadcast_to(np.asarray(f, dtype=np.float32), (grid.slices, grid.size, grid.size))
    return (1.0 + weight * f).astype(np.float32)


def correlated_noise(rng, profile, grid):
    """Unit-variance Gaussian noise (slices, size, size) with the texture of the scanner's k-space window."""
    white = rng.standard_normal((grid.slices, grid.size, grid.size), dtype=np.float32)
    norm = _noise_norm(profile, grid)
    if norm <= 0:
        return white
    return apply_psf(white, kspace_window(profile, grid)) / np.float32(norm)


def render_map(anatomy, profile, map_type, rng=None):
    """Render one map of one session as ``profile``'s scanner writes it.

    Parameters
    ----------
    anatomy : harmonize.simulate.anatomy.SessionAnatomy
        Fine-plane quantities of the session ('P' and 'Q1' for T1, 'Q2' for T2).
    profile : harmonize.simulate.scanners.ScannerProfile
    map_type : {'T1', 'T2', 'PD'}
    rng : numpy.random.Generator or None
        Noise source; None renders the noise-free paired truth.

    Returns
    -------
    ndarray (slices, size, size) float32
        T1/T2 in ms or PD in %, background 0, on the session's grid.
    """
    grid = anatomy.grid
    r0, r1, c0, c1 = anatomy.crop
    weights = slice_weights(profile, grid)
    window = kspace_window(profile, grid)

    def blurred(key):
        full = np.zeros((grid.slices, grid.size, grid.size), dtype=np.float32)
        full[:, r0:r1, c0:c1] = slice_average(anatomy.quantities[key], weights, grid)
        return apply_psf(full, window)

    p = blurred("P")
    mask = p * np.float32(profile.pd_gain) > profile.mask_pd
    if map_type == "PD":
        value = np.where(mask, p, 0.0).astype(np.float32)
    else:
        q = blurred("Q1" if map_type == "T1" else "Q2")
        lo, hi = _RATIO_LIMITS_MS[map_type]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(mask & (q > 0), p / q, hi)
        value = np.clip(value, lo, hi).astype(np.float32)
    value *= profile.bias_factor(map_type, value).astype(np.float32)
    value *= field_map(profile, map_type, grid)
    if rng is not None:
        sigma = np.float32(profile.noise(map_type))
        n1 = correlated_noise(rng, profile, grid)
        if profile.noise_kind == "rician":
            n2 = correlated_noise(rng, profile, grid)
            value = value * np.sqrt((1 + sigma * n1) ** 2 + (sigma * n2) ** 2)
        else:
            value = value * (1 + sigma * n1)
    value = np.clip(value, 0.0, profile.clip_max(map_type))
    value[~mask] = 0.0
    return value.astype(np.float32)
