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


#: grid of :func:`head_session`: (x, y, z) spacing in mm and (slices, rows, columns)
HEAD_SPACING = (2.0, 2.0, 4.0)
HEAD_SHAPE = (14, 56, 56)


def head_phantom(points):
    """A smooth 'head' at physical points (..., 3) in mm: ellipsoid tissue with an off-centre inner structure
    and a lateral lesion, so no rotation or shift maps it onto itself."""
    from scipy.special import expit

    x, y, z = points[..., 0], points[..., 1], points[..., 2]

    def blob(cx, cy, cz, rx, ry, rz):
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
        return expit((1.0 - r) * 30.0)

    values = (600.0 * blob(0, 0, 0, 40, 34, 22) + 500.0 * blob(6, -8, 4, 16, 10, 9)
              + 900.0 * blob(-18, 10, -6, 7, 6, 8) + 300.0 * blob(10, 14, -10, 6, 9, 5))
    return np.where(values < 5.0, 0.0, values).astype(np.float32)  # background 0, as scanners write it


def head_session(origin, rotation_deg=(0.0, 0.0, 0.0), gain=1.0, shape=HEAD_SHAPE):
    """The phantom sampled on a grid at ``origin``, the head rotated (x, y, z Euler angles, degrees) about 0."""
    import SimpleITK as sitk

    from harmonize.io.volume import MapVolume

    n, rows, cols = shape
    k, i, j = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    points = np.stack([origin[0] + j * HEAD_SPACING[0], origin[1] + i * HEAD_SPACING[1],
                       origin[2] + k * HEAD_SPACING[2]], axis=-1)
    rot = sitk.Euler3DTransform((0.0, 0.0, 0.0), *np.radians(rotation_deg), (0.0, 0.0, 0.0))
    matrix = np.asarray(rot.GetMatrix()).reshape(3, 3)
    # the head is rotated by R: the phantom's own coordinates of a scanner point p are R^-1 p
    values = head_phantom(points @ matrix) * gain
    return MapVolume(values, spacing=HEAD_SPACING, origin=origin, map_type="T1")


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
