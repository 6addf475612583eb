"""Loss terms of the CycleGAN experiments, all computed in float32.

Every function takes network-range tensors (the maps normalised to [-1, 1], background -1) of
shape (batch, height, width, channels) and returns a float32 scalar: the mean over the batch.
Inputs in a reduced precision (float16 / bfloat16 under a mixed policy) are cast to float32
first, because quantitative maps need the precision and the losses are what the thesis reports.

Terms (thesis section 1.2 and 2.4):

``lsgan_loss``
    Least-squares GAN (Mao et al. 2017), ``mean((D(x) - target)^2)``: the thesis's "MSE"
    adversarial loss (Table 4: D_A, D_B, D and the G adversarial column).
``l1``
    Mean absolute error: the cycle (Eq. 4) and identity (Eq. 5) terms.
``dssim``
    Structural dissimilarity (Eq. 6), ``mean((1 - SSIM(x, y)) / 2)`` with the SSIM of
    :func:`ssim` (Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 2 for the
    [-1, 1] network range), the settings of :func:`skimage.metrics.structural_similarity` with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.

:class:`LossWeights` holds the weights of an experiment (thesis Table 1). A weight of 0 switches a
term off: the training model does not compute it at all.
"""
from __future__ import annotations

import dataclasses
import math

from harmonize.errors import ConfigError

#: SSIM settings shared by the DSSIM loss and the evaluation metric (Wang et al. 2004)
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: data range of the network's [-1, 1] images
NETWORK_DATA_RANGE = 2.0


def _f32(x):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def lsgan_loss(predictions, target):
    """Least-squares adversarial loss ``mean((predictions - target)^2)`` in float32.

    Parameters
    ----------
    predictions : tf.Tensor
        Discriminator output (batch, patches_y, patches_x, 1), linear (no sigmoid).
    target : float
        1.0 for "real" (or the B class of the scanner discriminator), 0.0 for "fake".

    Returns
    -------
    tf.Tensor
        float32 scalar.
    """
    import tensorflow as tf

    p = _f32(predictions)
    return tf.reduce_mean(tf.square(p - tf.constant(float(target), tf.float32)))


def l1(x, y):
    """Mean absolute difference of two image batches, float32 scalar (network units)."""
    import tensorflow as tf

    return tf.reduce_mean(tf.abs(_f32(x) - _f32(y)))


def ssim(x, y, max_val=NETWORK_DATA_RANGE):
    """SSIM of each image pair of two batches.

    Parameters
    ----------
    x, y : tf.Tensor
        (batch, height, width, channels); height and width at least 11.
    max_val : float
        Data range of the images (2.0 for the [-1, 1] network range).

    Returns
    -------
    tf.Tensor
        (batch,) float32, mean SSIM over the valid (unpadded) window positions and channels.
    """
    import tensorflow as tf

    return tf.image.ssim(_f32(x), _f32(y), max_val=float(max_val), filter_size=SSIM_FILTER_SIZE,
                         filter_sigma=SSIM_FILTER_SIGMA, k1=SSIM_K1, k2=SSIM_K2)


def dssim(x, y, max_val=NETWORK_DATA_RANGE):
    """Structural dissimilarity (thesis Eq. 6): ``mean((1 - SSIM(x, y)) / 2)``, float32 scalar in [0, 1]."""
    import tensorflow as tf

    return tf.reduce_mean((1.0 - ssim(x, y, max_val=max_val)) / 2.0)


def critic_loss(probabilities, target):
    """Binary cross-entropy of a frozen classifier's P(B) against ``target`` (1 = B, 0 = A), float32."""
    import tensorflow as tf

    p = tf.clip_by_value(_f32(probabilities), 1e-6, 1.0 - 1e-6)
    t = tf.constant(float(target), tf.float32)
    return tf.reduce_mean(-(t * tf.math.log(p) + (1.0 - t) * tf.math.log(1.0 - p)))


def gaussian_blur(x, sigma):
    """Blur (batch, H, W, 1) images with a separable Gaussian of ``sigma`` pixels (reflect padding)."""
    import numpy as np
    import tensorflow as tf

    radius = max(1, int(round(3 * float(sigma))))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / float(sigma)) ** 2)
    k = tf.constant(k / k.sum(), tf.float32)
    x = tf.pad(_f32(x), [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, tf.reshape(k, (-1, 1, 1, 1)), strides=1, padding="VALID")
    return tf.nn.conv2d(x, tf.reshape(k, (1, -1, 1, 1)), strides=1, padding="VALID")


def regional_quantile_loss(x, y, patch, sigma=0.0):
    """Mean 1-D Wasserstein-1 distance between the value distributions of corresponding regions.

    Each image of the batches ``x`` and ``y`` (batch, H, W, 1) is cut into ``patch`` x ``patch``
    regions; the values of a region are sorted and compared rank by rank (L1). Equal to 0 when
    every region of ``x`` holds the same values as the same region of ``y`` in any order, so a
    small shift of the anatomy or independent noise costs little, while a value bias or a smooth
    multiplicative field costs its full size. With ``sigma`` > 0 both are first smoothed by
    :func:`gaussian_blur`. float32 scalar (network units).
    """
    import tensorflow as tf

    x, y = _f32(x), _f32(y)
    if sigma and float(sigma) > 0:
        x, y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    shape = tf.shape(x)
    rows, cols = x.shape[1], x.shape[2]
    p = int(patch)
    if rows % p or cols % p:
        raise ConfigError(f"loss.quantile_patch: {p} px does not divide the image size {rows}x{cols}; "
                          "choose a divisor such as 8 or 16")

    def regions(t):
        t = tf.reshape(t, (shape[0], rows // p, p, cols // p, p))
        t = tf.transpose(t, (0, 1, 3, 2, 4))
        return tf.sort(tf.reshape(t, (shape[0], rows // p, cols // p, p * p)), axis=-1)

    return tf.reduce_mean(tf.abs(regions(x) - regions(y)))


def register_losses():
    """Register the loss functions as Keras serialisable objects (package 'harmonize').

    Called by :mod:`harmonize.models`; kept out of import time so importing this module does not
    import Keras.
    """
    import keras

    for func in (lsgan_loss, l1, dssim):
        name = f"harmonize>{func.__name__}"
        if keras.saving.get_registered_object(name) is None:
            keras.saving.register_keras_serializable(package="harmonize")(func)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms of one experiment (thesis Table 1; 0 switches a term off).

    Attributes
    ----------
    adversarial : float
        LSGAN generator term, D_B(G(a)) -> 1 and D_A(F(b)) -> 1.
    cycle : float
        L1 cycle consistency, |F(G(a)) - a| and |G(F(b)) - b| (Eq. 4).
    identity : float
        L1 identity, |G(b) - b| and |F(a) - a| (Eq. 5).
    ssim : float
        DSSIM of the cycled images, DSSIM(a, F(G(a))) and DSSIM(b, G(F(b))) (Eq. 6).
    scanner : float
        Extra scanner discriminator (Experiment 3, Eq. 7): the generator is rewarded when the
        scanner discriminator puts its fake into the target scanner's class.
    discriminator : float
        Weight of each discriminator's loss (real + fake terms); 0.5 as in the thesis code, so a
        discriminator learns at half the rate of the generators.
    critic : float
        Not in the thesis (its own recommendation, ch. 4): a scanner classifier trained on the real
        training images of both scanners and then frozen judges the fakes; the generators are
        rewarded (binary cross-entropy) when it calls fake B "B" and fake A "A". Unlike the
        Experiment 3 discriminator it never learns from the fakes, so it keeps pointing at what
        separates the real scanners.
    paired : float
        Not in the thesis: L1 between fake B and the corresponding registered real B slice (and
        fake A and real A), for paired batches of registered slices (``data.paired``).
    quantile : float
        Not in the thesis: :func:`regional_quantile_loss` between fake B and the corresponding real
        B slice (and fake A, real A), for paired batches (``data.paired``). It compares the sorted
        values of each ``quantile_patch`` x ``quantile_patch`` region, i.e. the 1-D Wasserstein
        distance of the regional intensity distributions, so it learns the value mapping and its
        smooth spatial variation (bias, residual field) from corresponding slices without being
        misled by small misregistration or by noise, which a voxel-wise L1 turns into blur.
    quantile_patch : float
        Side of the regions of the quantile term in pixels (a divisor of the image size).
    quantile_sigma : float
        Gaussian smoothing (pixels) of both images before the quantile term compares them; it
        takes the noise out of the comparison, so the generator is not rewarded for copying the
        target scanner's noise into its output (0: no smoothing).
    """

    adversarial: float = 1.0
    cycle: float = 10.0
    identity: float = 0.0
    ssim: float = 0.0
    scanner: float = 0.0
    discriminator: float = 0.5
    critic: float = 0.0
    paired: float = 0.0
    quantile: float = 0.0
    quantile_patch: float = 16.0
    quantile_sigma: float = 0.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"loss.{field.name}: must be a number >= 0, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"loss.{field.name}: must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, field.name, float(value))
        if self.quantile_patch < 2 or self.quantile_patch != int(self.quantile_patch):
            raise ConfigError(f"loss.quantile_patch: must be an integer >= 2 (pixels), got {self.quantile_patch!r}")
        if self.discriminator == 0:
            raise ConfigError("loss.discriminator: 0 would freeze the discriminators; use a positive weight "
                              "(the thesis used 0.5)")

    def active(self, term):
        """True when ``term`` (a field name) has a non-zero weight."""
        return getattr(self, term) > 0

    def to_dict(self):
        return dataclasses.asdict(self)
