"""Generators: the thesis's U-Net (pix2pix style) and the original CycleGAN ResNet.

Both are Keras functional models from (batch, rows, cols, channels) network-range images
([-1, 1], background -1) to the same shape, ending in tanh. The last convolution and the tanh run
in float32 under any mixed-precision policy (``dtype="float32"``), so the output, and every loss
computed from it, keeps float32 precision: quantitative maps are numbers, not just pictures.

Instance normalisation is ``keras.layers.GroupNormalization(groups=-1)`` (one group per channel).
Weights start from N(0, 0.02) as in pix2pix / CycleGAN. Layers have stable names (``enc3_conv``,
``dec1_norm``, ``output_tanh``...) so they can be found by name (e.g. for Grad-CAM).
"""
from __future__ import annotations

import contextlib
import math

import keras

from harmonize.errors import ConfigError

#: standard deviation of the N(0, sigma) weight initialisation of pix2pix / CycleGAN
INIT_STDDEV = 0.02


def _image_shape(image_size, channels, what):
    if isinstance(image_size, (list, tuple)):
        if len(image_size) != 2:
            raise ConfigError(f"{what}: image_size must be an int or (rows, cols), got {image_size!r}")
        rows, cols = image_size
    else:
        rows = cols = image_size
    try:
        rows, cols, channels = int(rows), int(cols), int(channels)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what}: image_size and channels must be integers, got {image_size!r}, {channels!r}") from err
    if rows < 1 or cols < 1 or channels < 1:
        raise ConfigError(f"{what}: image_size and channels must be positive, got {image_size!r}, {channels!r}")
    return rows, cols, channels


def _init():
    return keras.initializers.RandomNormal(stddev=INIT_STDDEV)


def instance_norm(name):
    """Instance normalisation layer (GroupNormalization with one group per channel)."""
    return keras.layers.GroupNormalization(groups=-1, name=name)


def default_unet_depth(image_size):
    """Stride-2 stages of the default U-Net: as many as halve the image evenly, at most 8 (pix2pix).

    log2 of the size for powers of two (256 -> 8, a 1x1 bottleneck); 96 -> 5 (a 3x3 bottleneck).
    """
    rows, cols, _ = _image_shape(image_size, 1, "U-Net")
    depth = 0
    while depth < 8 and rows % 2 ** (depth + 1) == 0 and cols % 2 ** (depth + 1) == 0:
        depth += 1
    return max(depth, 1)


def build_unet_generator(image_size=256, channels=1, base_filters=64, depth=None, dropout_blocks=3,
                         dropout_rate=0.5, residual=False, prior=None, name="gen_a2b"):
    """U-Net generator of the thesis (pix2pix encoder-decoder with skip connections).

    Encoder ``C64(no norm)-C128-C256-C512-C512...``: 4x4 convolutions with stride 2, instance
    norm, LeakyReLU 0.2; filters ``min(base_filters * 2**i, 8 * base_filters)``. A bottleneck
    convolution (stride 2, ReLU, no norm: it is 1x1 at full depth). Decoder: 4x4 transposed
    convolutions with stride 2, instance norm, dropout in the first ``dropout_blocks`` blocks,
    concatenation with the encoder's skip, ReLU. Output: transposed convolution to
    ``channels`` and tanh, in float32.

    Parameters
    ----------
    image_size : int or (int, int)
        Rows and columns of the input (pixels); both divisible by ``2**depth``.
    channels : int
        Input and output channels (1 for one quantitative map).
    base_filters : int
        Filters of the first encoder block (64 in the thesis); smaller values make quick runs.
    depth : int or None
        Number of stride-2 stages including the bottleneck; None: :func:`default_unet_depth`
        (``log2(image_size)`` capped at 8 for powers of two: 256 px -> a 1x1 bottleneck as in
        pix2pix).
    dropout_blocks : int
        Decoder blocks with dropout (the first ones, nearest the bottleneck; 3 in pix2pix).
        Dropout is active in training only, so a saved generator is deterministic.
    dropout_rate : float
        Dropout fraction (0.5 in pix2pix).
    residual : bool
        Residual generator initialised at the identity (not in the thesis): the output is
        ``input + correction`` where the correction's last layer starts at zero, so training
        starts from "no change" and the network only has to learn the scanner difference, not
        re-synthesise the whole map (whose reconstruction error would swamp a few-percent
        difference). No tanh: the output range is the input's plus the correction.
    prior : (sequence of float, sequence of float) or None
        Knots ``(xp, fp)`` of a fixed monotone value mapping in network units (not in the
        thesis; residual generators only), e.g. the histogram-matching baseline fitted on the
        training data: the generator becomes ``prior(x) + correction(prior(x))``, so it starts
        at the classical baseline and learns only what a global value mapping cannot (spatial
        fields, local contrast). See :class:`ValueMap`.
    name : str
        Model name (``gen_a2b``, ``gen_b2a``).

    Returns
    -------
    keras.Model
        (batch, rows, cols, channels) float32 -> (batch, rows, cols, channels) float32 in [-1, 1]
        (residual: unbounded, near the input).

    Raises
    ------
    ConfigError
        A setting does not fit the image size.

    Examples
    --------
    >>> g = build_unet_generator(32, base_filters=8, depth=3)   # doctest: +SKIP
    >>> g.output_shape                                          # doctest: +SKIP
    (None, 32, 32, 1)
    """
    from keras import layers

    what = f"U-Net generator {name}"
    rows, cols, channels = _image_shape(image_size, channels, what)
    max_depth = int(math.log2(min(rows, cols)))
    if depth is None:
        depth = default_unet_depth((rows, cols))
    depth = int(depth)
    if depth < 1 or depth > max_depth:
        raise ConfigError(f"{what}: depth must be 1..{max_depth} for {rows}x{cols} images, got {depth}")
    if rows % 2**depth or cols % 2**depth:
        raise ConfigError(f"{what}: image size {rows}x{cols} is not divisible by 2**depth = {2**depth}; "
                          "choose an image size that is a multiple of it or a smaller depth")
    if int(base_filters) < 1:
        raise ConfigError(f"{what}: base_filters must be >= 1, got {base_filters!r}")
    if int(dropout_blocks) < 0 or not 0.0 <= float(dropout_rate) < 1.0:
        raise ConfigError(f"{what}: need dropout_blocks >= 0 and 0 <= dropout_rate < 1, "
                          f"got {dropout_blocks!r}, {dropout_rate!r}")
    base = int(base_filters)

    def filters(i):
        return min(base * 2**i, base * 8)

    if prior is not None and not residual:
        raise ConfigError(f"{what}: a value-mapping prior needs the residual form (residual=True)")
    inputs = keras.Input((rows, cols, channels), name="input")
    start = inputs if prior is None else ValueMap(*prior, name="prior")(inputs)
    x = start
    skips = []
    for i in range(depth - 1):
        k = i + 1
        x = layers.Conv2D(filters(i), 4, strides=2, padding="same", use_bias=i == 0,
                          kernel_initializer=_init(), name=f"enc{k}_conv")(x)
        if i > 0:
            x = instance_norm(f"enc{k}_norm")(x)
        x = layers.LeakyReLU(0.2, name=f"enc{k}_lrelu")(x)
        skips.append(x)
    x = layers.Conv2D(filters(depth - 1), 4, strides=2, padding="same", kernel_initializer=_init(),
                      name="bottleneck_conv")(x)
    x = layers.ReLU(name="bottleneck_relu")(x)
    for k, skip in enumerate(reversed(skips), start=1):
        x = layers.Conv2DTranspose(skip.shape[-1], 4, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=_init(), name=f"dec{k}_convT")(x)
        x = instance_norm(f"dec{k}_norm")(x)
        if k <= int(dropout_blocks) and float(dropout_rate) > 0:
            x = layers.Dropout(float(dropout_rate), name=f"dec{k}_dropout")(x)
        x = layers.Concatenate(name=f"dec{k}_skip")([x, skip])
        x = layers.ReLU(name=f"dec{k}_relu")(x)
    if residual:
        x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", kernel_initializer="zeros",
                                   dtype="float32", name="output_correction")(x)
        outputs = layers.Add(dtype="float32", name="output_residual")([start, x])
        return keras.Model(inputs, outputs, name=name)
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", kernel_initializer=_init(),
                               dtype="float32", name="output_convT")(x)
    outputs = layers.Activation("tanh", dtype="float32", name="output_tanh")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="harmonize", name="ValueMap")
class ValueMap(keras.layers.Layer):
    """A fixed monotone piecewise-linear value mapping of the foreground, in float32.

    ``y = interp(x, xp, fp)`` through the knots ``(xp, fp)`` (network units), extended beyond the
    first and last knot by a constant shift (``y = x - xp[0] + fp[0]`` below, likewise above) so
    the mapping stays invertible and has a gradient everywhere. Background voxels (``x <= floor``,
    physical 0) are returned unchanged. No trainable weights: the knots live in the layer's
    config, so a saved generator carries its mapping. Registered as ``harmonize>ValueMap``.

    Parameters
    ----------
    xp, fp : sequence of float
        Knots, ``xp`` non-decreasing (repeated ``xp`` values share the mean of their ``fp``).
    floor : float
        Background level in network units (-1 = physical 0).
    """

    def __init__(self, xp, fp, floor=-1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        import numpy as np

        from harmonize.baselines import _monotone

        xp = np.asarray(xp, np.float64).reshape(-1)
        fp = np.asarray(fp, np.float64).reshape(-1)
        if len(xp) != len(fp) or len(xp) < 2 or not (np.all(np.isfinite(xp)) and np.all(np.isfinite(fp))):
            raise ConfigError(f"ValueMap: need two finite knot arrays of equal length >= 2, got {len(xp)} and {len(fp)}")
        if np.any(np.diff(xp) < 0):
            raise ConfigError("ValueMap: the knots xp must be non-decreasing")
        uniq, fp = _monotone(xp, fp)  # the histmatch baseline's own merge of repeated knots
        if len(uniq) < 2:
            raise ConfigError("ValueMap: the knots xp span a single value; the mapping is undefined")
        self.xp = [float(v) for v in uniq]
        self.fp = [float(v) for v in fp]
        self.floor = float(floor)

    def call(self, inputs):
        from keras import ops

        x = ops.cast(inputs, "float32")
        xp = ops.convert_to_tensor(self.xp, "float32")
        fp = ops.convert_to_tensor(self.fp, "float32")
        flat = ops.reshape(x, (-1,))
        last = len(self.xp) - 2
        i = ops.clip(ops.searchsorted(xp, flat, side="right") - 1, 0, last)
        x0, x1 = ops.take(xp, i), ops.take(xp, i + 1)
        y0, y1 = ops.take(fp, i), ops.take(fp, i + 1)
        inside = y0 + (flat - x0) * (y1 - y0) / (x1 - x0)
        below = flat - self.xp[0] + self.fp[0]
        above = flat - self.xp[-1] + self.fp[-1]
        y = ops.where(flat < self.xp[0], below, ops.where(flat > self.xp[-1], above, inside))
        y = ops.reshape(y, ops.shape(x))
        return ops.where(x > self.floor, y, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "xp": self.xp, "fp": self.fp, "floor": self.floor}


@keras.saving.register_keras_serializable(package="harmonize", name="ReflectionPadding2D")
class ReflectionPadding2D(keras.layers.Layer):
    """Reflect-pad the rows and columns of (batch, rows, cols, channels) by ``padding`` pixels.

    The CycleGAN ResNet generator pads this way so that its 7x7 and 3x3 convolutions do not see a
    frame of zeros at the image border. Registered as ``harmonize>ReflectionPadding2D``: import
    :mod:`harmonize.models` (or call :func:`harmonize.models.register_custom_objects`) before
    ``keras.models.load_model``.
    """

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(padding, int):
            padding = (padding, padding)
        self.padding = tuple(int(p) for p in padding)
        if len(self.padding) != 2 or min(self.padding) < 0:
            raise ValueError(f"padding must be an int or (rows, cols) of ints >= 0, got {padding!r}")

    def call(self, inputs):
        pr, pc = self.padding
        return keras.ops.pad(inputs, [[0, 0], [pr, pr], [pc, pc], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, r, c, ch = input_shape
        pr, pc = self.padding
        return (b, None if r is None else r + 2 * pr, None if c is None else c + 2 * pc, ch)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


def reflection_padding_2d(padding, name=None):
    """A :class:`ReflectionPadding2D` layer."""
    return ReflectionPadding2D(padding, name=name)


def build_resnet_generator(image_size=256, channels=1, base_filters=64, n_res_blocks=None, n_down=2,
                           name="gen_a2b"):
    """The original CycleGAN generator (Johnson et al. / Zhu et al. 2017) with instance norm.

    ``c7s1-64, d128, d256, R256 x n_res_blocks, u128, u64, c7s1-channels`` with reflection
    padding; tanh output in float32.

    Parameters
    ----------
    image_size : int or (int, int)
        Rows and columns; divisible by ``2**n_down``.
    channels : int
        Input and output channels.
    base_filters : int
        Filters of the first convolution (64 in CycleGAN).
    n_res_blocks : int or None
        Residual blocks; None: 9 for images of 256 px or more, else 6 (CycleGAN's choice).
    n_down : int
        Stride-2 downsampling (and upsampling) stages.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        (batch, rows, cols, channels) -> (batch, rows, cols, channels), float32 in [-1, 1].
    """
    from keras import layers

    what = f"ResNet generator {name}"
    rows, cols, channels = _image_shape(image_size, channels, what)
    n_down = int(n_down)
    if n_down < 0 or rows % 2**n_down or cols % 2**n_down:
        raise ConfigError(f"{what}: image size {rows}x{cols} must be divisible by 2**n_down = {2**n_down}")
    if n_res_blocks is None:
        n_res_blocks = 9 if min(rows, cols) >= 256 else 6
    n_res_blocks = int(n_res_blocks)
    if n_res_blocks < 0 or int(base_filters) < 1:
        raise ConfigError(f"{what}: need n_res_blocks >= 0 and base_filters >= 1, got {n_res_blocks}, {base_filters!r}")
    if min(rows, cols) // 2**n_down < 2:
        raise ConfigError(f"{what}: {rows}x{cols} images are too small for {n_down} downsampling stages")
    base = int(base_filters)

    inputs = keras.Input((rows, cols, channels), name="input")
    x = reflection_padding_2d(3, name="in_pad")(inputs)
    x = layers.Conv2D(base, 7, use_bias=False, kernel_initializer=_init(), name="in_conv")(x)
    x = instance_norm("in_norm")(x)
    x = layers.ReLU(name="in_relu")(x)
    for i in range(n_down):
        x = layers.Conv2D(base * 2 ** (i + 1), 3, strides=2, padding="same", use_bias=False,
                          kernel_initializer=_init(), name=f"down{i + 1}_conv")(x)
        x = instance_norm(f"down{i + 1}_norm")(x)
        x = layers.ReLU(name=f"down{i + 1}_relu")(x)
    width = base * 2**n_down
    for r in range(n_res_blocks):
        y = reflection_padding_2d(1, name=f"res{r + 1}_pad1")(x)
        y = layers.Conv2D(width, 3, use_bias=False, kernel_initializer=_init(), name=f"res{r + 1}_conv1")(y)
        y = instance_norm(f"res{r + 1}_norm1")(y)
        y = layers.ReLU(name=f"res{r + 1}_relu")(y)
        y = reflection_padding_2d(1, name=f"res{r + 1}_pad2")(y)
        y = layers.Conv2D(width, 3, use_bias=False, kernel_initializer=_init(), name=f"res{r + 1}_conv2")(y)
        y = instance_norm(f"res{r + 1}_norm2")(y)
        x = layers.Add(name=f"res{r + 1}_add")([x, y])
    for i in reversed(range(n_down)):
        x = layers.Conv2DTranspose(base * 2**i, 3, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=_init(), name=f"up{n_down - i}_convT")(x)
        x = instance_norm(f"up{n_down - i}_norm")(x)
        x = layers.ReLU(name=f"up{n_down - i}_relu")(x)
    x = reflection_padding_2d(3, name="out_pad")(x)
    x = layers.Conv2D(channels, 7, kernel_initializer=_init(), dtype="float32", name="output_conv")(x)
    outputs = layers.Activation("tanh", dtype="float32", name="output_tanh")(x)
    return keras.Model(inputs, outputs, name=name)


GENERATORS = {"unet": build_unet_generator, "resnet": build_resnet_generator}


def build_generator(kind, image_size, channels=1, name="gen_a2b", **kwargs):
    """Build a generator by kind ('unet' or 'resnet'); ``kwargs`` go to its builder."""
    if kind not in GENERATORS:
        raise ConfigError(f"model.generator: {kind!r} is not one of {', '.join(GENERATORS)}")
    return GENERATORS[kind](image_size=image_size, channels=channels, name=name, **kwargs)


@contextlib.contextmanager
def dtype_policy(name):
    """Temporarily set Keras's global dtype policy ('float32', 'mixed_float16', 'mixed_bfloat16')."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
