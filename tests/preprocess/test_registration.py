"""Half-way translation registration of corresponding slices."""
import numpy as np
import pytest
from scipy import ndimage

from harmonize.preprocess.registration import register_pair, register_pairs, translate
from tests.conftest import tissue_slice


def _pair(rng, shift_px, size=64, gain=1.04):
    """A smooth tissue slice and a copy whose content is moved by shift_px = (x, y) pixels."""
    base = ndimage.gaussian_filter(tissue_slice(rng, size), 0.8)
    moved = ndimage.shift(base, (shift_px[1], shift_px[0]), order=3)
    noise = lambda img: np.clip(img + rng.normal(0, 10, img.shape) * (img > 50), 0, None).astype(np.float32)
    return noise(base), noise(moved * gain)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.9, 1.2)])
def test_recovers_known_subpixel_shift(rng, spacing):
    a, b = _pair(rng, (1.3, -0.7))
    a_reg, b_reg, shift = register_pair(a, b, spacing)
    shift_px = shift / np.asarray(spacing)
    assert np.allclose(shift_px, (1.3, -0.7), atol=0.3), shift_px
    # both moved half way: a_reg and b_reg agree much better than a and b did
    gain = 1.04
    before = np.abs(a - b / gain).mean()
    after = np.abs(a_reg - b_reg / gain).mean()
    assert after < 0.5 * before
    # A moved by +t/2 (toward B), B by -t/2: each is about half the shift away from its input
    assert np.allclose(_shift_between(a, a_reg), 0.5 * shift_px, atol=0.2)
    assert np.allclose(_shift_between(b, b_reg), -0.5 * shift_px, atol=0.2)
    assert a_reg.dtype == np.float32 and a_reg.min() >= 0 and b_reg.min() >= 0


def _shift_between(x, y):
    """Centre-of-mass displacement (x, y) in pixels from image x to image y."""
    cx, cy = ndimage.center_of_mass(x), ndimage.center_of_mass(y)
    return np.array([cy[1] - cx[1], cy[0] - cx[0]])


def test_deterministic_and_pool_matches_serial(rng):
    pairs = [_pair(rng, (0.8 * k - 1.0, 0.5)) for k in range(4)]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    serial = register_pairs(a, b, [(1.0, 1.0)] * 4, workers=1)
    pooled = register_pairs(a, b, [(1.0, 1.0)] * 4, workers=2)
    np.testing.assert_allclose(serial[2], pooled[2], atol=1e-9)
    np.testing.assert_allclose(serial[0], pooled[0], atol=1e-4)
    assert np.allclose(serial[2][:, 0], [-1.0, -0.2, 0.6, 1.4], atol=0.3)


def test_empty_slices_keep_zero_shift():
    a = np.zeros((32, 32), np.float32)
    b = np.zeros((32, 32), np.float32)
    b[10:12, 10:12] = 500.0
    a_reg, b_reg, shift = register_pair(a, b, (1.0, 1.0))
    assert np.all(shift == 0)
    np.testing.assert_array_equal(b_reg, b)


def test_translate_moves_content_and_sets_negatives_to_zero():
    img = np.zeros((32, 32), np.float32)
    img[10:20, 10:20] = 1000.0
    out = translate(img, (2.0, 0.0), (1.0, 1.0))  # 2 mm = 2 px to the right (x = columns)
    np.testing.assert_allclose(out[12:18, 14:20], 1000.0, rtol=1e-3)
    assert out[12:18, 10].max() < 50.0
    assert out.min() >= 0.0  # cubic B-spline ringing below 0 is removed
