"""Discriminators: the PatchGAN of the thesis and the extra scanner discriminator of Experiment 3.

Both map (batch, rows, cols, channels) network-range images to a map of patch scores
(batch, rows / 2**n_layers, cols / 2**n_layers, 1), linear (no sigmoid) for the least-squares
GAN loss, computed in float32 under any mixed policy.

PatchGAN layout (pix2pix / CycleGAN): ``n_layers`` 4x4 stride-2 convolutions with
``min(base * 2**i, 8 * base)`` filters (instance norm on all but the first, LeakyReLU 0.2), one
4x4 stride-1 convolution, and a 4x4 stride-1 convolution to one channel. Its receptive field
(:func:`patchgan_receptive_field`) is 70x70 pixels for ``n_layers=3`` (the "70x70 PatchGAN").
The thesis code (Brownlee's CycleGAN tutorial) stacks one more stride-2 block,
64-128-256-512 then 512 (``n_layers=4``), whose receptive field is 142x142 pixels; the experiment
files use that layout to reproduce the thesis.
"""
from __future__ import annotations

from harmonize.errors import ConfigError
from harmonize.models.generators import _image_shape, _init, instance_norm

#: class labels of the scanner discriminator (thesis 2.3: scanner A is class 0, scanner B class 1)
SCANNER_LABEL_A = 0.0
SCANNER_LABEL_B = 1.0


def patchgan_receptive_field(n_layers=3):
    """Receptive field (pixels) of one output patch of :func:`build_patchgan_discriminator`."""
    field = 1
    # output conv and the stride-1 conv (4x4), then n_layers stride-2 4x4 convs, from the output back
    for stride in [1, 1] + [2] * int(n_layers):
        field = (field - 1) * stride + 4
    return field


def _patch_trunk(inputs, base, n_layers):
    from keras import layers

    x = inputs
    for i in range(n_layers):
        x = layers.Conv2D(min(base * 2**i, base * 8), 4, strides=2, padding="same", use_bias=i == 0,
                          kernel_initializer=_init(), name=f"conv{i + 1}")(x)
        if i > 0:
            x = instance_norm(f"norm{i + 1}")(x)
        x = layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
    k = n_layers + 1
    x = layers.Conv2D(min(base * 2**n_layers, base * 8), 4, padding="same", use_bias=False,
                      kernel_initializer=_init(), name=f"conv{k}")(x)
    x = instance_norm(f"norm{k}")(x)
    x = layers.LeakyReLU(0.2, name=f"lrelu{k}")(x)
    return layers.Conv2D(1, 4, padding="same", kernel_initializer=_init(), dtype="float32", name="patch_out")(x)


def _check(what, image_size, channels, base_filters, n_layers):
    rows, cols, channels = _image_shape(image_size, channels, what)
    n_layers = int(n_layers)
    if n_layers < 1:
        raise ConfigError(f"{what}: n_layers must be >= 1, got {n_layers}")
    if rows % 2**n_layers or cols % 2**n_layers:
        raise ConfigError(f"{what}: image size {rows}x{cols} is not divisible by 2**n_layers = {2**n_layers}; "
                          "use fewer discriminator layers or another image size")
    if int(base_filters) < 1:
        raise ConfigError(f"{what}: base_filters must be >= 1, got {base_filters!r}")
    return rows, cols, channels, n_layers


def build_patchgan_discriminator(image_size=256, channels=1, base_filters=64, n_layers=3, name="disc_a"):
    """PatchGAN discriminator D_A / D_B: is each patch a real image of the domain (1) or a fake (0)?

    Parameters
    ----------
    image_size : int or (int, int)
        Rows and columns of the input; divisible by ``2**n_layers``.
    channels : int
        Image channels.
    base_filters : int
        Filters of the first convolution (64 in the thesis).
    n_layers : int
        Stride-2 convolutions: 3 is the 70x70 PatchGAN, 4 the thesis code's layout (142x142).
    name : str
        Model name (``disc_a``, ``disc_b``).

    Returns
    -------
    keras.Model
        (batch, rows, cols, channels) -> (batch, rows / 2**n_layers, cols / 2**n_layers, 1)
        float32 linear patch scores.
    """
    import keras

    rows, cols, channels, n_layers = _check(f"PatchGAN discriminator {name}", image_size, channels,
                                            base_filters, n_layers)
    inputs = keras.Input((rows, cols, channels), name="input")
    return keras.Model(inputs, _patch_trunk(inputs, int(base_filters), n_layers), name=name)


def build_scanner_discriminator(image_size=256, channels=1, base_filters=64, n_layers=3, name="disc_scanner"):
    """The extra discriminator of Experiment 3 (thesis Eq. 7): which scanner does an image belong to?

    It learns the classes {A, fake A} (label :data:`SCANNER_LABEL_A` = 0) and {B, fake B}
    (label :data:`SCANNER_LABEL_B` = 1) with a least-squares loss on every patch; the generators
    are rewarded when it puts their fakes into the target scanner's class. Same layout as
    :func:`build_patchgan_discriminator` (the thesis code used its PatchGAN here too).

    Returns
    -------
    keras.Model
        (batch, rows, cols, channels) -> (batch, rows / 2**n_layers, cols / 2**n_layers, 1)
        float32 linear patch scores (0 = scanner A, 1 = scanner B).
    """
    import keras

    rows, cols, channels, n_layers = _check(f"scanner discriminator {name}", image_size, channels,
                                            base_filters, n_layers)
    inputs = keras.Input((rows, cols, channels), name="input")
    return keras.Model(inputs, _patch_trunk(inputs, int(base_filters), n_layers), name=name)
