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
