"""Shared fixtures: a seeded rng, tiny tissue-like maps, tiny NIfTI data folders.

Area-specific fixtures live in the conftest.py of each test folder.
"""
import os

os.environ.setdefault("HARMONIZE_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))

import harmonize  # noqa: E402,F401  (sets TensorFlow runtime settings before anything imports it)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tissue_slice(rng, size=32, t1_ms=(4000.0, 1050.0, 620.0), shift=(0.0, 0.0), noise=0.0):
    """A tiny 'brain': an ellipse of GM with a WM core and a CSF ventricle, background 0 (ms)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + shift[0], size / 2 + shift[1]
    r = np.hypot((yy - cy) / (0.42 * size), (xx - cx) / (0.36 * size))
    img = np.zeros((size, size), np.float32)
    img[r < 1.0] = t1_ms[1]
    img[r < 0.65] = t1_ms[2]
    img[np.hypot((yy - cy) / (0.08 * size), (xx - cx) / (0.15 * size)) < 1.0] = t1_ms[0]
    if noise:
        img = np.where(img > 0, img + rng.normal(0, noise, img.shape), 0).astype(np.float32)
    return img


@pytest.fixture
def make_slice(rng):
    def _make(size=32, **kw):
        return tissue_slice(rng, size=size, **kw)

    return _make


@pytest.fixture
def nifti_tree(tmp_path, rng):
    """A tiny two-scanner NIfTI data folder: DATA/<scanner>/<subject>.nii.gz, 4 subjects, 5 slices of 32x32.

    Scanner B reads T1 4 % longer than scanner A.
    """
    from harmonize.io.nifti import write_map
    from harmonize.io.volume import MapVolume

    root = tmp_path / "data"
    for scanner, gain in (("SCANNER_A", 1.0), ("SCANNER_B", 1.04)):
        for s in range(4):
            vol = np.stack([tissue_slice(rng, 32, shift=(k - 2, s - 1), noise=10.0) * gain for k in range(5)])
            write_map(MapVolume(vol, spacing=(0.9, 0.9, 4.0)), root / scanner / f"sub{s:02d}.nii.gz")
    return root
