"""Metrics against hand-computed values on small arrays."""
import numpy as np
import pytest

from harmonize import metrics
from harmonize.errors import GeometryError, InputError


def test_ssim_identical_is_one_and_noise_lowers_it(make_slice, rng):
    x = make_slice(32)
    assert metrics.ssim(x, x, data_range=4000.0) == pytest.approx(1.0)
    noisy = x + rng.normal(0, 200, x.shape)
    assert metrics.ssim(x, noisy, data_range=4000.0) < 0.95


def test_ssim_matches_tf_image_ssim(rng):
    # the DSSIM training loss uses tf.image.ssim: the evaluation metric must be the same number
    import tensorflow as tf

    x = rng.uniform(0, 1000, (3, 32, 32))
    y = x + rng.normal(0, 100, x.shape)
    ours = metrics.ssim(x, y, data_range=1000.0)
    theirs = float(tf.reduce_mean(tf.image.ssim(x[..., None].astype("float32"), y[..., None].astype("float32"), 1000.0)))
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_ssim_mask_averages_local_map_inside(rng):
    x = rng.uniform(0, 1000, (32, 32))
    y = x.copy()
    y[:, 16:] += rng.normal(0, 300, (32, 16))  # only the right half is disturbed
    mask_left = np.zeros_like(x, bool)
    mask_left[:, :8] = True  # 8 px away from the disturbance: further than the window radius (5)
    assert metrics.ssim(x, y, 1000.0, mask=mask_left) == pytest.approx(1.0)
    local = metrics.ssim_map(x, y, 1000.0)
    assert metrics.ssim(x, y, 1000.0, mask=~mask_left) == pytest.approx(local[~mask_left].mean())


def test_ssim_data_range_is_required_and_positive(make_slice):
    x = make_slice(32)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(x, x, data_range=0)


def test_shape_mismatch_and_nan_raise(make_slice):
    x = make_slice(32)
    with pytest.raises(GeometryError, match="shapes differ"):
        metrics.ssim(x, x[:, :30], data_range=1.0)
    bad = x.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.nrmse(x, bad)


def test_nrmse_of_known_perturbation(rng):
    x = rng.uniform(500, 1500, (16, 16))
    # y = x + d with ||d|| chosen: NRMSE (euclidean) = ||d|| / ||x||
    d = rng.normal(0, 1, x.shape)
    d *= 0.25 * np.linalg.norm(x) / np.linalg.norm(d)
    assert metrics.nrmse(x, x + d) == pytest.approx(0.25)
    assert metrics.nrmse(x, x + 10.0, normalization="mean") == pytest.approx(10.0 / x.mean())
    assert metrics.nrmse(x, x + 10.0, normalization="min-max") == pytest.approx(10.0 / np.ptp(x))
    mask = x > 1000
    assert metrics.nrmse(x, x * 1.2, mask=mask) == pytest.approx(0.2)


def test_cross_correlation_of_affine_and_unrelated(rng):
    x = rng.uniform(0, 1, (20, 20))
    assert metrics.cross_correlation(x, 2 * x + 3) == pytest.approx(1.0)
    assert metrics.cross_correlation(x, -x) == pytest.approx(-1.0)
    # hand-computed Pearson on 4 values
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert metrics.cross_correlation(a, b) == pytest.approx(0.8)
    assert np.isnan(metrics.cross_correlation(x, np.ones_like(x)))


def test_mutual_information_self_equals_entropy_and_independent_is_small(rng):
    # 4 equally likely values in separate bins: entropy = ln 4
    x = np.repeat([0.0, 1.0, 2.0, 3.0], 64)
    assert metrics.entropy(x, bins=4) == pytest.approx(np.log(4))
    assert metrics.mutual_information(x, x, bins=4) == pytest.approx(np.log(4))
    # y independent of x (each x value meets each y value equally often): MI = 0
    y = np.tile([0.0, 1.0, 2.0, 3.0], 64)
    assert metrics.mutual_information(x, y, bins=4) == pytest.approx(0.0, abs=1e-12)
    z = rng.uniform(0, 1000, (32, 32))
    assert metrics.mutual_information(z, z, bins=50) == pytest.approx(metrics.entropy(z, bins=50))


def test_average_histogram_normalises_per_image():
    a = np.zeros((8, 8)) + 100.0           # all voxels in one bin
    b = np.zeros((4, 4))
    b[:2] = 300.0                          # half at 300, half at 0
    edges, hist = metrics.average_histogram([a, b], bins=4, value_range=(0, 400))
    assert edges.tolist() == [0, 100, 200, 300, 400]
    # image a: 100 -> bin 1; image b: 0 -> bin 0 (0.5), 300 -> bin 3 (0.5); mean of the two
    assert hist.tolist() == pytest.approx([0.25, 0.5, 0.0, 0.25])
    edges, hist = metrics.average_histogram([a, b], bins=4, value_range=(0, 400), mask=[a > 0, b > 0])
    assert hist.tolist() == pytest.approx([0.0, 0.5, 0.0, 0.5])
    assert hist.sum() == pytest.approx(1.0)


def test_average_histogram_default_range_starts_at_zero(make_slice):
    stack = np.stack([make_slice(32), make_slice(32)])
    edges, hist = metrics.average_histogram(stack, bins=500)
    assert edges[0] == 0.0 and edges[-1] == pytest.approx(stack.max())
    assert len(hist) == 500 and hist.sum() == pytest.approx(1.0)


def test_paired_slice_metrics_skips_empty_reference(make_slice):
    a = np.stack([make_slice(32), make_slice(32), np.zeros((32, 32), np.float32)])
    b = a * 1.1
    out = metrics.paired_slice_metrics(a, b, data_range=4400.0)
    assert out["n_slices"] == 2
    assert out["nrmse"] == pytest.approx(0.1)
    assert 0.9 < out["ssim"] < 1.0


def test_pairwise_table_six_pairs(make_slice, rng):
    a = np.stack([make_slice(32, noise=20.0) for _ in range(3)])
    images = {"A": a, "B": a * 1.05, "fakeA": a + 0.0, "fakeB": a * 1.05 + rng.normal(0, 5, a.shape)}
    table = metrics.pairwise_table(images, data_range=4400.0)
    assert table["pair"].tolist() == ["A vs B", "A vs fakeA", "A vs fakeB", "B vs fakeA", "B vs fakeB", "fakeA vs fakeB"]
    row = table.set_index("pair")
    assert row.loc["A vs fakeA", "nrmse"] == pytest.approx(0.0)
    assert row.loc["A vs B", "nrmse"] == pytest.approx(0.05)
    assert row.loc["A vs B", "correlation"] == pytest.approx(1.0)
    assert row.loc["A vs fakeA", "ssim"] == pytest.approx(1.0)
    assert row.loc["B vs fakeB", "ssim"] < 1.0
    # only the available pairs by default; explicit pairs must exist
    small = metrics.pairwise_table({"A": a, "B": a * 1.05}, data_range=4400.0)
    assert small["pair"].tolist() == ["A vs B"]
    with pytest.raises(InputError, match="fakeB"):
        metrics.pairwise_table({"A": a, "B": a}, data_range=4400.0, pairs=[("A", "fakeB")])


def test_truth_errors_known_scale_and_tissue_bias():
    truth = np.zeros((2, 16, 16))
    tissue = np.zeros((2, 16, 16), np.uint8)
    tissue[:, 2:8, 2:14], truth[:, 2:8, 2:14] = 3, 600.0     # WM
    tissue[:, 8:14, 2:14], truth[:, 8:14, 2:14] = 2, 1000.0   # GM
    brain = tissue > 0
    pred = truth * 1.05
    pred[tissue == 2] = 950.0                                  # GM read 5 % short
    err = metrics.truth_errors(pred, truth, brain, tissue=tissue)
    assert err["n_voxels"] == brain.sum()
    assert err["bias_pct_WM"] == pytest.approx(5.0)
    assert err["bias_pct_GM"] == pytest.approx(-5.0)
    assert err["mae_WM"] == pytest.approx(30.0)
    assert err["mae_GM"] == pytest.approx(50.0)
    assert err["mae"] == pytest.approx(40.0)                     # equal voxel counts
    assert err["rel_error_pct"] == pytest.approx(5.0)
    assert err["bias_pct"] == pytest.approx(100 * (0.5 * 630 + 0.5 * 950 - 800) / 800)
    assert np.isnan(err["mae_CSF"]) and err["n_voxels_CSF"] == 0
    assert metrics.truth_errors(truth, truth, brain)["ssim"] == pytest.approx(1.0)


def test_truth_error_table_rows_per_method_and_subject():
    truth = np.full((4, 16, 16), 1000.0)
    brain = np.ones_like(truth, bool)
    subjects = np.array(["s1", "s1", "s2", "s2"])
    shifted = truth + np.array([10.0, 10.0, 30.0, 30.0])[:, None, None]
    table = metrics.truth_error_table({"none": shifted, "perfect": truth}, truth, brain, subjects=subjects)
    assert table[["method", "subject"]].values.tolist() == [
        ["none", "all"], ["none", "s1"], ["none", "s2"], ["perfect", "all"], ["perfect", "s1"], ["perfect", "s2"]]
    by = table.set_index(["method", "subject"])
    assert by.loc[("none", "s1"), "mae"] == pytest.approx(10.0)
    assert by.loc[("none", "s2"), "bias_pct"] == pytest.approx(3.0)
    assert by.loc[("none", "all"), "mae"] == pytest.approx(20.0)
    assert by.loc[("perfect", "all"), "mae"] == 0.0
