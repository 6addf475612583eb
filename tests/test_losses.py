"""Loss functions: values against NumPy / scikit-image, float32 under reduced precision, weights."""
import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.losses import LossWeights, dssim, l1, lsgan_loss, ssim


def test_lsgan_and_l1_match_numpy(rng):
    p = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    assert float(lsgan_loss(p, 1.0)) == pytest.approx(np.mean((p - 1.0) ** 2), rel=1e-6)
    assert float(lsgan_loss(p, 0.0)) == pytest.approx(np.mean(p**2), rel=1e-6)
    q = rng.normal(size=p.shape).astype(np.float32)
    assert float(l1(p, q)) == pytest.approx(np.mean(np.abs(p - q)), rel=1e-6)


def test_dssim_agrees_with_skimage(make_slice, rng):
    from skimage.metrics import structural_similarity

    a = make_slice(48, noise=20.0) / 2500.0 - 1.0
    b = make_slice(48, t1_ms=(3900.0, 1100.0, 650.0), shift=(1.0, -1.0), noise=30.0) / 2500.0 - 1.0
    a, b = np.clip(a, -1, 1).astype(np.float32), np.clip(b, -1, 1).astype(np.float32)
    reference = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      data_range=2.0)
    assert float(ssim(a[None, ..., None], b[None, ..., None])[0]) == pytest.approx(reference, abs=1e-4)
    assert float(dssim(a[None, ..., None], b[None, ..., None])) == pytest.approx((1 - reference) / 2, abs=5e-5)
    assert float(dssim(a[None, ..., None], a[None, ..., None])) == pytest.approx(0.0, abs=1e-6)


def test_losses_are_float32_for_bfloat16_inputs(rng):
    import tensorflow as tf

    x = tf.cast(rng.uniform(-1, 1, (2, 16, 16, 1)), tf.bfloat16)
    y = tf.cast(rng.uniform(-1, 1, (2, 16, 16, 1)), tf.bfloat16)
    for value in (lsgan_loss(x, 1.0), l1(x, y), dssim(x, y)):
        assert value.dtype == tf.float32


def test_loss_weights_validate_and_repeat_the_bad_value():
    assert LossWeights(identity=5).active("identity")
    assert not LossWeights().active("ssim")
    with pytest.raises(ConfigError, match="loss.cycle.*-1"):
        LossWeights(cycle=-1)
    with pytest.raises(ConfigError, match="loss.ssim.*'x'"):
        LossWeights(ssim="x")
    with pytest.raises(ConfigError, match="loss.discriminator"):
        LossWeights(discriminator=0)


def test_regional_quantile_loss_ignores_order_within_a_region_and_sees_offsets(rng):
    from harmonize.losses import regional_quantile_loss

    x = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    # shuffle the pixels inside each 16x16 region: same regional distributions
    y = x.copy()
    for b in range(2):
        for r in (0, 16):
            for c in (0, 16):
                block = y[b, r:r + 16, c:c + 16, 0].ravel()
                y[b, r:r + 16, c:c + 16, 0] = rng.permutation(block).reshape(16, 16)
    assert float(regional_quantile_loss(x, y, 16)) == pytest.approx(0.0, abs=1e-7)
    # a constant offset costs exactly its size
    assert float(regional_quantile_loss(x, x + 0.05, 16)) == pytest.approx(0.05, rel=1e-5)
    # swapping two regions changes the regional distributions
    z = x.copy()
    z[:, :16, :16], z[:, 16:, 16:] = x[:, 16:, 16:], x[:, :16, :16]
    assert float(regional_quantile_loss(x, z, 16)) > 0.01
    # smoothing first: independent noise around the same image costs much less than unsmoothed
    noisy = x + rng.normal(0, 0.2, x.shape).astype(np.float32)
    assert float(regional_quantile_loss(x, noisy, 16, sigma=2.0)) < 0.5 * float(regional_quantile_loss(x, noisy, 16))
    with pytest.raises(Exception, match="quantile_patch"):
        regional_quantile_loss(x, x, 12)


def test_gaussian_blur_keeps_constants_and_mean(rng):
    from harmonize.losses import gaussian_blur

    c = np.full((1, 20, 20, 1), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(c, 1.5).numpy(), c, atol=1e-6)
    x = rng.normal(0, 1, (1, 40, 40, 1)).astype(np.float32)
    assert float(np.std(gaussian_blur(x, 2.0).numpy())) < 0.5 * float(np.std(x))
