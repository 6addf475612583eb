"""Rendering physics on synthetic anatomy (no template): mixing, bias, field, PSF, noise, clipping."""
import dataclasses

import numpy as np
import pytest

from harmonize.simulate.anatomy import SessionAnatomy, SliceGrid, add_tissue
from harmonize.simulate.render import (
    correlated_noise,
    field_map,
    kspace_window,
    render_map,
    slice_average,
    slice_weights,
)
from harmonize.simulate.scanners import DEFAULT_SCANNERS, FIELD_TERMS

A, B = DEFAULT_SCANNERS
NO_FIELD = (0.0,) * len(FIELD_TERMS)


def _anatomy(grid, tissues, quantities=("P", "Q1", "Q2")):
    """SessionAnatomy whose fine planes are filled with `tissues`: list of (fraction array, t1, t2, pd)."""
    shape = (grid.n_planes, grid.size, grid.size)
    q = {k: np.zeros(shape, np.float32) for k in quantities}
    for frac, t1, t2, pd in tissues:
        add_tissue(q, np.broadcast_to(np.float32(frac), shape), t1, t2, pd)
    return SessionAnatomy(grid=grid, pose=None, subject=None, crop=(0, grid.size, 0, grid.size), quantities=q,
                          labels=np.zeros((grid.slices, grid.size, grid.size), np.uint8))


def test_partial_volume_mixes_rates_not_times():
    """A 50/50 CSF/WM voxel: T1 is the PD-weighted harmonic mean (~1280 ms), far from the mean (2415 ms)."""
    q = {"P": np.zeros(1), "Q1": np.zeros(1), "Q2": np.zeros(1)}
    add_tissue(q, 0.5, 4200.0, 1800.0, 100.0)
    add_tissue(q, 0.5, 630.0, 78.0, 68.0)
    t1 = q["P"] / q["Q1"]
    expected = (0.5 * 100 + 0.5 * 68) / (0.5 * 100 / 4200 + 0.5 * 68 / 630)
    np.testing.assert_allclose(t1, expected, rtol=1e-12)
    assert 1200 < t1[0] < 1400
    np.testing.assert_allclose(q["P"], 84.0)


def test_uniform_tissue_renders_bias_exactly():
    """Noise-free, field-free rendering of pure WM is the WM T1 times the scanner's bias factor."""
    grid = SliceGrid(size=32, slices=3)
    anat = _anatomy(grid, [(1.0, 630.0, 78.0, 68.0)])
    for prof in DEFAULT_SCANNERS:
        prof = dataclasses.replace(prof, field_coefficients=NO_FIELD)
        t1 = render_map(anat, prof, "T1", None)
        np.testing.assert_allclose(t1, 630.0 * prof.bias_factor("T1", 630.0), rtol=1e-4)
        pd = render_map(anat, prof, "PD", None)
        np.testing.assert_allclose(pd, 68.0 * prof.pd_gain, rtol=1e-4)
    t2 = render_map(anat, dataclasses.replace(B, field_coefficients=NO_FIELD), "T2", None)
    np.testing.assert_allclose(t2, 78.0 * B.bias_factor("T2", 78.0), rtol=1e-4)


def test_field_multiplies_and_clipping_caps():
    grid = SliceGrid(size=32, slices=3)
    csf = _anatomy(grid, [(1.0, 4200.0, 1800.0, 100.0)])
    t1_b = render_map(csf, B, "T1", None)
    assert t1_b.max() == pytest.approx(B.t1_max_ms) and (t1_b == B.t1_max_ms).mean() > 0.9
    wm = _anatomy(grid, [(1.0, 630.0, 78.0, 68.0)])
    with_field = render_map(wm, A, "T1", None)
    without = render_map(wm, dataclasses.replace(A, field_coefficients=NO_FIELD), "T1", None)
    np.testing.assert_allclose(with_field / without, field_map(A, "T1", grid), rtol=1e-4)
    # SIGNA's residual field is centre-bright: corners read lower than the centre
    assert with_field[1, 0, 0] < with_field[1, 16, 16]


def test_background_is_zero():
    grid = SliceGrid(size=32, slices=2)
    anat = _anatomy(grid, [(0.0, 630.0, 78.0, 68.0)])
    assert not render_map(anat, A, "T1", np.random.default_rng(0)).any()


def test_slice_weights():
    grid = SliceGrid()
    for prof in DEFAULT_SCANNERS:
        w = slice_weights(prof, grid)
        assert w.shape == (grid.planes_per_slice + 2 * grid.extra_planes,)
        assert w.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(w, w[::-1])
    # Optima's softer, wider profile takes more signal from the neighbouring slices
    assert slice_weights(B, grid)[0] > slice_weights(A, grid)[0]
    fine = np.arange(grid.n_planes, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    avg = slice_average(fine, slice_weights(A, grid), grid)
    centres = grid.extra_planes + np.arange(grid.slices) * grid.planes_per_slice + (grid.planes_per_slice - 1) / 2
    np.testing.assert_allclose(avg[:, 0, 0], centres, rtol=1e-5)


def test_kspace_window_truncates_beyond_acquired_resolution():
    grid = SliceGrid(size=256)
    w = kspace_window(A, grid)
    fx = np.fft.rfftfreq(grid.size, d=grid.pixel_mm)
    kmax_phase = 1 / (2 * A.acq_resolution_mm[1])
    assert w.shape == (256, 129)
    assert w[0, 0] == pytest.approx(1.0)
    assert np.all(w[0, fx > kmax_phase * 1.001] == 0)  # phase along x (columns) for SIGNA
    assert np.all(w[0, fx < kmax_phase * 0.999] == 1)  # plain truncation, no apodisation
    wb = kspace_window(B, grid)
    assert wb.sum() < w.sum()  # Optima: lower phase resolution and a Fermi filter


def test_noise_is_unit_variance_with_scanner_texture():
    grid = SliceGrid(size=256, slices=2)  # 0.94 mm pixels: finer than both acquisitions

    def lag1(n, axis):
        return float(np.mean(n * np.roll(n, 1, axis=axis)) / np.mean(n * n))

    na = correlated_noise(np.random.default_rng(0), A, grid)
    nb = correlated_noise(np.random.default_rng(0), B, grid)
    for n in (na, nb):
        assert n.std() == pytest.approx(1.0, abs=0.03)
    # correlation along the phase-encoding axis (columns) grows as the acquired resolution drops
    assert lag1(nb, 2) > lag1(na, 2) + 0.1


def test_noise_size_matches_profile():
    grid = SliceGrid(size=64, slices=3)
    anat = _anatomy(grid, [(1.0, 630.0, 78.0, 68.0)])
    for prof in DEFAULT_SCANNERS:
        prof = dataclasses.replace(prof, field_coefficients=NO_FIELD)
        clean = render_map(anat, prof, "T1", None)
        noisy = render_map(anat, prof, "T1", np.random.default_rng(5))
        rel = (noisy / clean - 1).std()
        assert rel == pytest.approx(prof.noise_t1, rel=0.1)
