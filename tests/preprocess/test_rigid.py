"""3-D rigid registration of two sessions: B's counterpart of every A slice."""
import numpy as np
import pytest

from harmonize.io.volume import MapVolume
from harmonize.preprocess.rigid import counterpart, counterparts, rotation_degrees
from tests.conftest import HEAD_SHAPE as SHAPE
from tests.conftest import HEAD_SPACING as SPACING
from tests.conftest import head_session as _session


def test_counterpart_undoes_rotation_and_offset():
    a = _session((-55.0, -55.0, -26.0))
    # B: head rotated 3 deg (pitch) and 1.5 deg (yaw), the stack 2 mm lower and 3 mm along x, other table
    # origin (scanner coordinates), values 4 % longer
    b_true = _session((-55.0 + 3.0, -55.0, -28.0), rotation_deg=(3.0, 0.0, 1.5), gain=1.04)
    b = MapVolume(b_true.array, spacing=SPACING, origin=(-52.0 + 120.0, -55.0 - 35.0, -28.0 + 60.0), map_type="T1")
    truth = 1.04 * a.array  # what B would measure of A's slices

    volume, transform = counterpart(a, b)
    assert volume.shape == a.array.shape and volume.dtype == np.float32
    has = np.isfinite(volume[:, 0, 0])
    assert has.sum() >= len(has) - 4
    head = a.array > 100
    inner = head.copy()
    inner[~has] = False
    before = np.abs(b.array - truth)[inner].mean()  # slice k of B against the truth of A's slice k
    after = np.abs(volume - truth)[inner].mean()
    assert after < 0.35 * before, (before, after)
    # the tissue mean of the counterparts is B's level, not shifted by mixing in other tissue
    np.testing.assert_allclose(volume[inner].mean(), truth[inner].mean(), rtol=0.01)
    assert rotation_degrees(transform) == pytest.approx(np.hypot(3.0, 1.5), abs=0.8)
    assert np.nanmin(volume) >= 0


def test_slices_b_does_not_cover_have_no_counterpart():
    a = _session((-55.0, -55.0, -26.0))
    # B's stack covers only A's lower 8 slices (and a bit): the upper A slices have no counterpart
    b = _session((-55.0, -55.0, -26.0), shape=(8,) + SHAPE[1:])
    volume, _ = counterpart(a, b)
    has = np.isfinite(volume[:, 0, 0])
    head_slices = (a.array > 100).any(axis=(1, 2))
    assert has[:7].all() and not has[8:][head_slices[8:]].any()
    assert np.isnan(volume[~has]).all()
    np.testing.assert_allclose(volume[2:6], a.array[2:6], atol=0.05 * a.array.max())


def test_pool_matches_serial_and_failure_is_a_warning():
    a = _session((-55.0, -55.0, -26.0))
    b = _session((-45.0, -55.0, -27.0), rotation_deg=(2.0, 0.0, 0.0))
    serial = counterparts([(a, b), (b, a)], workers=1)
    pooled = counterparts([(a, b), (b, a)], workers=2)
    for (v1, r1), (v2, r2) in zip(serial, pooled):
        np.testing.assert_allclose(v1, v2, atol=1e-3)
        assert r1 == pytest.approx(r2, abs=1e-6)
    empty = MapVolume(np.zeros(SHAPE, np.float32), spacing=SPACING, map_type="T1", source="empty.nii.gz")
    with pytest.warns(UserWarning, match="empty.nii.gz: 3-D registration"):
        (volume, rotation), = counterparts([(a, empty)], workers=1)
    assert volume is None and rotation is None


def test_interpolator_is_a_choice_of_the_resampling_only():
    a = _session((-55.0, -55.0, -26.0))
    b = _session((-55.0, -55.0, -27.5), rotation_deg=(2.0, 0.0, 0.0), gain=1.04)
    bspline, t_bspline = counterpart(a, b)  # the default
    lanczos, t_lanczos = counterpart(a, b, "lanczos")
    np.testing.assert_allclose(t_lanczos.GetParameters(), t_bspline.GetParameters())
    has = np.isfinite(lanczos[:, 0, 0])
    np.testing.assert_array_equal(has, np.isfinite(bspline[:, 0, 0]))
    head = (a.array > 100) & has[:, None, None]
    # same map to within the interpolation, but not the same numbers
    assert np.abs(lanczos - bspline)[head].mean() < 0.02 * bspline[head].mean()
    assert np.abs(lanczos - bspline)[head].max() > 0
    assert np.nanmin(lanczos) >= 0
    with pytest.raises(ValueError, match="interpolator 'cubic'"):
        counterpart(a, b, "cubic")
