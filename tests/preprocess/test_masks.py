"""Foreground masks of quantitative maps."""
import numpy as np

from harmonize.preprocess.masks import foreground_mask


def test_mask_of_fixture_slice_covers_the_head(make_slice, rng):
    img = make_slice(32, noise=10.0)
    head = img > 0
    # background fit noise: small values, some negative, a few isolated bright outliers
    noisy = img + np.where(head, 0, rng.normal(0, 5, img.shape)).astype(np.float32)
    noisy[1, 1] = 900.0
    mask = foreground_mask(noisy)
    assert mask.dtype == bool and mask.shape == img.shape
    np.testing.assert_array_equal(mask, head)  # holes filled, the outlier (own component) dropped


def test_ventricle_hole_is_filled():
    img = np.zeros((32, 32), np.float32)
    img[6:26, 6:26] = 800.0
    img[12:20, 12:20] = 0.0  # a dark hole inside the head
    mask = foreground_mask(img)
    assert mask[6:26, 6:26].all() and mask.sum() == 400


def test_volume_keeps_largest_3d_component(make_slice):
    vol = np.stack([make_slice(32) for _ in range(4)])
    vol[2, :3, :3] = 700.0  # a blob not connected to the head
    mask = foreground_mask(vol)
    assert mask.shape == vol.shape
    assert not mask[2, :3, :3].any()
    np.testing.assert_array_equal(mask[0], vol[0] > 0)


def test_empty_slice_gives_empty_mask():
    assert not foreground_mask(np.zeros((16, 16), np.float32)).any()
    assert not foreground_mask(-np.ones((2, 16, 16), np.float32)).any()


def test_absolute_threshold():
    img = np.zeros((16, 16), np.float32)
    img[4:12, 4:12] = 50.0
    assert foreground_mask(img, threshold=60.0).sum() == 0
    assert foreground_mask(img, threshold=10.0).sum() == 64
