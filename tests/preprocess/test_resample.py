"""In-plane resampling: sizes, units, anti-aliasing, labels, geometry."""
import numpy as np
import pytest

from harmonize.io.volume import MapVolume
from harmonize.preprocess.resample import resize_slices, resize_volume, resized_origin, resized_spacing


def test_resize_keeps_units_and_shape(make_slice):
    stack = np.stack([make_slice(64), make_slice(64)])
    out = resize_slices(stack, (32, 48))
    assert out.shape == (2, 32, 48) and out.dtype == np.float32
    # constant regions keep their values in ms (preserve_range): CSF 4000 ms at the centre
    assert out[0, 16, 24] == pytest.approx(4000.0, abs=1.0)
    assert out.max() <= stack.max() + 1e-3 and out.min() >= 0.0
    assert resize_slices(stack[0], 32).shape == (32, 32)


def test_anti_aliasing_suppresses_a_checkerboard():
    # the highest spatial frequency aliases to a strong pattern without the pre-filter
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None] * 1000.0
    smooth = resize_slices(board, (21, 21), anti_aliasing=True)
    raw = resize_slices(board, (21, 21), anti_aliasing=False)
    assert smooth.std() < 0.5 * raw.std()
    assert smooth.mean() == pytest.approx(500.0, rel=0.05)


def test_labels_use_nearest_and_keep_dtype():
    labels = np.zeros((1, 32, 32), np.uint8)
    labels[0, 8:24, 8:24] = 3
    labels[0, 12:20, 12:20] = 1
    out = resize_slices(labels, (16, 16), order=0)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 3}


def test_spacing_and_origin_keep_the_field_of_view():
    assert resized_spacing((0.9, 0.8, 4.0), (256, 256), (128, 64)) == pytest.approx((3.6, 1.6, 4.0))
    # first pixel centre: old origin + half the spacing change, along the direction cosines
    origin = resized_origin((10.0, 20.0, 30.0), (1, 0, 0, 0, -1, 0, 0, 0, 1), (1.0, 1.0, 4.0), (8, 8), (4, 4))
    assert origin == pytest.approx((10.5, 19.5, 30.0))
    vol = MapVolume(np.ones((3, 8, 8), np.float32) * 800, spacing=(1.0, 1.0, 4.0))
    small = resize_volume(vol, 4)
    assert small.array.shape == (3, 4, 4) and small.spacing == pytest.approx((2.0, 2.0, 4.0))
    # the field of view (first edge to last edge) is the same
    assert small.origin[0] - small.spacing[0] / 2 == pytest.approx(vol.origin[0] - vol.spacing[0] / 2)
