"""The thesis-style CycleGAN training loop, kept as the speed reference (benchmarks only).

The thesis code was built on Jason Brownlee's Keras tutorials ("How to Develop a CycleGAN for
Image-to-Image Translation with Keras", 2019, and the Pix2Pix one for the U-Net generator). Its
training loop is reproduced here faithfully, in Keras 3, so the speed benchmark can compare the
package's training model against what a user of the thesis code gets:

* two composite models, ``c_AtoB`` and ``c_BtoA``; ``c_AtoB`` maps inputs (real A, real B) to
  [D_B(G_AtoB(A)), G_AtoB(B), G_BtoA(G_AtoB(A)), G_AtoB(G_BtoA(B))] = [adversarial, identity,
  forward cycle, backward cycle], compiled with losses [mse, mae, mae, mae] and loss weights
  [1, 5, 10, 10] and Adam(2e-4, beta_1=0.5);
* discriminators compiled on their own with mse and loss weight 0.5;
* each step: ``predict`` the fakes, update the two 50-image pools in NumPy, then
  ``c_BtoA.train_on_batch``, ``d_A.train_on_batch`` on real A, on pooled fake A,
  ``c_AtoB.train_on_batch``, ``d_B.train_on_batch`` on real B, on pooled fake B.

Keras 2 froze weights when a model was compiled; Keras 3 reads the ``trainable`` flags when a
model's training function is first traced (its first ``train_on_batch``). So the flags the tutorial
sets in ``define_composite_model`` are set here right before each model's first call, which gives
every model the trainable weights it had in the thesis code. ``predict`` is called with
``verbose=0`` (the tutorial's default prints a progress bar; only the console output differs).

Networks: the package's builders (:mod:`harmonize.models.generators`,
:mod:`harmonize.models.discriminators`) when they exist and build the thesis architecture at the
requested size; otherwise the copies below: the Pix2Pix U-Net (C64-C128-C256-C512x4, a C512
bottleneck, 8 stride-2 steps at 256 px, batch norm, dropout 0.5 in the first 3 decoder blocks,
tanh) and the 70x70 PatchGAN (C64-C128-C256-C512 stride 2, C512 stride 1, a 1-channel 4x4 conv
output, batch norm as the thesis describes it, LSGAN).

This module must not import harmonize at module level: the benchmark runs it in a process with
TensorFlow's default settings.
"""
from __future__ import annotations

import math
import random
import time

import numpy as np

LR, BETA_1 = 2e-4, 0.5
POOL_SIZE = 50
LOSS_WEIGHTS = (1.0, 5.0, 10.0, 10.0)  # adversarial, identity, forward cycle, backward cycle


# --------------------------------------------------------------------------- networks


def unet_depth(image_size, max_depth=8):
    """Number of stride-2 steps of the U-Net: 8 at 256 px (down to 1 x 1), fewer for small images."""
    return max(2, min(max_depth, int(math.log2(image_size))))


def build_thesis_generator(image_size=256, channels=1, base_filters=64, depth=None, name="generator"):
    """Brownlee's Pix2Pix U-Net generator (the thesis's), for ``channels``-channel square images."""
    import keras
    from keras import layers

    depth = unet_depth(image_size) if depth is None else depth
    init = keras.initializers.RandomNormal(stddev=0.02)
    filters = [min(base_filters * 2 ** i, base_filters * 8) for i in range(depth)]
    inp = keras.Input((image_size, image_size, channels))
    x, skips = inp, []
    for i, f in enumerate(filters[:-1]):
        x = layers.Conv2D(f, 4, strides=2, padding="same", kernel_initializer=init, name=f"enc{i + 1}_conv")(x)
        if i > 0:
            x = layers.BatchNormalization(name=f"enc{i + 1}_bn")(x, training=True)
        x = layers.LeakyReLU(0.2, name=f"enc{i + 1}_act")(x)
        skips.append(x)
    x = layers.Conv2D(filters[-1], 4, strides=2, padding="same", kernel_initializer=init, name="bottleneck")(x)
    x = layers.Activation("relu", name="bottleneck_act")(x)
    for j, (f, skip) in enumerate(zip(reversed(filters[:-1]), reversed(skips))):
        x = layers.Conv2DTranspose(f, 4, strides=2, padding="same", kernel_initializer=init, name=f"dec{j + 1}_deconv")(x)
        x = layers.BatchNormalization(name=f"dec{j + 1}_bn")(x, training=True)
        if j < 3:
            x = layers.Dropout(0.5, name=f"dec{j + 1}_drop")(x, training=True)
        x = layers.Concatenate(name=f"dec{j + 1}_cat")([x, skip])
        x = layers.Activation("relu", name=f"dec{j + 1}_act")(x)
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", kernel_initializer=init, name="out_deconv")(x)
    out = layers.Activation("tanh", dtype="float32", name="out_tanh")(x)
    return keras.Model(inp, out, name=name)


def build_thesis_discriminator(image_size=256, channels=1, base_filters=64, name="discriminator"):
    """The 70x70 PatchGAN of the thesis (Brownlee's CycleGAN discriminator, batch norm)."""
    import keras
    from keras import layers

    init = keras.initializers.RandomNormal(stddev=0.02)
    inp = keras.Input((image_size, image_size, channels))
    x = inp
    for i, (f, stride) in enumerate(((1, 2), (2, 2), (4, 2), (8, 2), (8, 1))):
        x = layers.Conv2D(base_filters * f, 4, strides=stride, padding="same", kernel_initializer=init, name=f"c{i + 1}")(x)
        if i > 0:
            x = layers.BatchNormalization(name=f"c{i + 1}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"c{i + 1}_act")(x)
    out = layers.Conv2D(1, 4, padding="same", kernel_initializer=init, dtype="float32", name="patch_out")(x)
    return keras.Model(inp, out, name=name)


def conv_signature(model):
    """The (layer kind, filters, kernel, strides) of every conv layer in call order: the architecture."""
    sig = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "Conv2DTranspose"):
            sig.append((kind, layer.filters, tuple(layer.kernel_size), tuple(layer.strides)))
    return sig


def norm_kind(model):
    """'batch norm', 'instance norm' (GroupNormalization with one group per channel) or 'no norm'."""
    kinds = set()
    for layer in model.layers:
        name = type(layer).__name__
        if name == "BatchNormalization":
            kinds.add("batch norm")
        elif name == "GroupNormalization":
            kinds.add("instance norm" if layer.groups in (-1, layer.input.shape[-1]) else "group norm")
    return " + ".join(sorted(kinds)) or "no norm"


def _project_builders(base_filters=64):
    """The package's builders (imported lazily: this module must not import harmonize first)."""
    from harmonize.models.discriminators import build_patchgan_discriminator
    from harmonize.models.generators import build_unet_generator

    def gen(image_size, channels, name):
        return build_unet_generator(image_size=image_size, channels=channels, base_filters=base_filters,
                                    depth=unet_depth(image_size), dropout_blocks=3, name=name)

    def disc(image_size, channels, name):
        # n_layers=4: the thesis code's 64-128-256-512 stride-2 trunk, then 512 stride 1
        return build_patchgan_discriminator(image_size, channels=channels, base_filters=base_filters, n_layers=4,
                                            name=name)

    return gen, disc


def build_networks(image_size=256, channels=1, prefer_project=True, base_filters=64):
    """The four thesis networks: ``(g_AtoB, g_BtoA, d_A, d_B, source)``.

    ``source`` says which builders were used: the package's, when importable and identical in
    conv layout to the thesis copies above, else the copies (with the reason). ``base_filters``
    other than the thesis's 64 is for tests only.
    """
    reason = "asked for the thesis copies"
    if prefer_project:
        try:
            gen, disc = _project_builders(base_filters)
        except ImportError as err:
            reason = f"package builders not importable ({err})"
        else:
            try:
                same_g = conv_signature(gen(image_size, channels, "g_probe")) == conv_signature(
                    build_thesis_generator(image_size, channels, base_filters))
                same_d = conv_signature(disc(image_size, channels, "d_probe")) == conv_signature(
                    build_thesis_discriminator(image_size, channels, base_filters))
            except Exception as err:  # noqa: BLE001  (any failure: fall back to the copies, say why)
                reason = f"package builders failed at {image_size} px ({type(err).__name__}: {err})"
            else:
                if same_g and same_d:
                    nets = (gen(image_size, channels, "g_AtoB"), gen(image_size, channels, "g_BtoA"),
                            disc(image_size, channels, "d_A"), disc(image_size, channels, "d_B"))
                    source = (f"package builders (harmonize.models: U-Net depth {unet_depth(image_size)}, "
                              "PatchGAN n_layers=4; conv layout identical to the thesis copies; "
                              f"{norm_kind(nets[0])})")
                    return (*nets, source)
                reason = "package builders differ in conv layout from the thesis architecture"
    nets = (
        build_thesis_generator(image_size, channels, base_filters, name="g_AtoB"),
        build_thesis_generator(image_size, channels, base_filters, name="g_BtoA"),
        build_thesis_discriminator(image_size, channels, base_filters, name="d_A"),
        build_thesis_discriminator(image_size, channels, base_filters, name="d_B"),
    )
    return (*nets, f"thesis copies in benchmarks/thesis_reference.py, batch norm ({reason})")


# --------------------------------------------------------------------------- the tutorial's loop


def compile_discriminator(d_model):
    """As the tutorial: mse, loss weight 0.5, Adam(2e-4, beta_1=0.5)."""
    import keras

    d_model.compile(loss="mse", optimizer=keras.optimizers.Adam(LR, beta_1=BETA_1), loss_weights=[0.5])
    return d_model


def define_composite_model(g_model_1, d_model, g_model_2, image_shape, name):
    """The tutorial's composite: inputs (real source, real target), four outputs, weighted losses.

    The trainable flags (g_model_1 trained, d_model and g_model_2 frozen) are applied by
    :meth:`ThesisLoop.step` right before this model's first ``train_on_batch``.
    """
    import keras

    input_gen = keras.Input(image_shape)
    gen1_out = g_model_1(input_gen)
    output_d = d_model(gen1_out)
    input_id = keras.Input(image_shape)
    output_id = g_model_1(input_id)
    output_f = g_model_2(gen1_out)
    gen2_out = g_model_2(input_id)
    output_b = g_model_1(gen2_out)
    model = keras.Model([input_gen, input_id], [output_d, output_id, output_f, output_b], name=name)
    model.compile(loss=["mse", "mae", "mae", "mae"], loss_weights=list(LOSS_WEIGHTS),
                  optimizer=keras.optimizers.Adam(LR, beta_1=BETA_1))
    return model


class ImagePool:
    """The tutorial's ``update_image_pool`` (NumPy): up to 50 earlier fakes, 50 % swapped in."""

    def __init__(self, max_size=POOL_SIZE, seed=0):
        self.max_size = max_size
        self.images = []
        self._rng = random.Random(seed)

    def update(self, images):
        selected = []
        for image in images:
            if len(self.images) < self.max_size:
                self.images.append(image)
                selected.append(image)
            elif self._rng.random() < 0.5:
                selected.append(image)
            else:
                ix = self._rng.randint(0, len(self.images) - 1)
                selected.append(self.images[ix])
                self.images[ix] = image
        return np.asarray(selected)


class ThesisLoop:
    """The thesis-style training loop over in-memory images (NumPy arrays in [-1, 1]).

    Parameters
    ----------
    image_size : int
    batch_size : int
    train_a, train_b : np.ndarray, optional
        (n, image_size, image_size, 1) float32 training images per domain; random
        tissue-free noise images are made when omitted (speed does not depend on content).
    prefer_project : bool
        Use the package's network builders when they build the thesis architecture.
    base_filters : int
        64 is the thesis; smaller values only make tests fast.
    """

    #: names of the calls of one step, in order (used for the per-call timing breakdown)
    CALLS = ("predict", "pool", "c_BtoA", "d_A_real", "d_A_fake", "c_AtoB", "d_B_real", "d_B_fake")

    def __init__(self, image_size=256, batch_size=1, train_a=None, train_b=None, seed=0, prefer_project=True,
                 base_filters=64):
        import keras

        keras.utils.set_random_seed(seed)
        self.image_size, self.batch_size = image_size, batch_size
        rng = np.random.default_rng(seed)
        n = max(4 * batch_size, 8)
        shape = (n, image_size, image_size, 1)
        self.train_a = train_a if train_a is not None else rng.uniform(-1, 1, shape).astype("float32")
        self.train_b = train_b if train_b is not None else rng.uniform(-1, 1, shape).astype("float32")
        self._rng = rng
        self.g_AtoB, self.g_BtoA, self.d_A, self.d_B, self.source = build_networks(image_size, 1, prefer_project,
                                                                                    base_filters)
        compile_discriminator(self.d_A)
        compile_discriminator(self.d_B)
        image_shape = (image_size, image_size, 1)
        self.c_AtoB = define_composite_model(self.g_AtoB, self.d_B, self.g_BtoA, image_shape, "c_AtoB")
        self.c_BtoA = define_composite_model(self.g_BtoA, self.d_A, self.g_AtoB, image_shape, "c_BtoA")
        self.n_patch = int(self.d_A.output.shape[1])
        self.pool_a, self.pool_b = ImagePool(seed=seed), ImagePool(seed=seed + 1)
        self.steps_done = 0
        self.call_seconds = {name: [] for name in self.CALLS}

    def generate_real_samples(self, dataset):
        ix = self._rng.integers(0, dataset.shape[0], self.batch_size)
        y = np.ones((self.batch_size, self.n_patch, self.n_patch, 1), dtype="float32")
        return dataset[ix], y

    def generate_fake_samples(self, g_model, dataset):
        x = g_model.predict(dataset, verbose=0)
        y = np.zeros((len(x), self.n_patch, self.n_patch, 1), dtype="float32")
        return x, y

    def _freeze(self, trained, *frozen):
        trained.trainable = True
        for model in frozen:
            model.trainable = False

    def step(self):
        """One training step of the tutorial; returns its losses (dA1, dA2, g2, dB1, dB2, g1)."""
        first = self.steps_done == 0
        times = {}
        t = time.perf_counter()
        x_real_a, y_real_a = self.generate_real_samples(self.train_a)
        x_real_b, y_real_b = self.generate_real_samples(self.train_b)
        x_fake_a, y_fake_a = self.generate_fake_samples(self.g_BtoA, x_real_b)
        x_fake_b, y_fake_b = self.generate_fake_samples(self.g_AtoB, x_real_a)
        times["predict"], t = _lap(t)
        x_fake_a = self.pool_a.update(x_fake_a)
        x_fake_b = self.pool_b.update(x_fake_b)
        times["pool"], t = _lap(t)
        if first:
            self._freeze(self.g_BtoA, self.d_A, self.g_AtoB)
        g_loss2 = self.c_BtoA.train_on_batch([x_real_b, x_real_a], [y_real_a, x_real_a, x_real_b, x_real_a])
        times["c_BtoA"], t = _lap(t)
        if first:
            self.d_A.trainable = True
        d_a_loss1 = self.d_A.train_on_batch(x_real_a, y_real_a)
        times["d_A_real"], t = _lap(t)
        d_a_loss2 = self.d_A.train_on_batch(x_fake_a, y_fake_a)
        times["d_A_fake"], t = _lap(t)
        if first:
            self._freeze(self.g_AtoB, self.d_B, self.g_BtoA)
        g_loss1 = self.c_AtoB.train_on_batch([x_real_a, x_real_b], [y_real_b, x_real_b, x_real_a, x_real_b])
        times["c_AtoB"], t = _lap(t)
        if first:
            self.d_B.trainable = True
        d_b_loss1 = self.d_B.train_on_batch(x_real_b, y_real_b)
        times["d_B_real"], t = _lap(t)
        d_b_loss2 = self.d_B.train_on_batch(x_fake_b, y_fake_b)
        times["d_B_fake"], t = _lap(t)
        self.steps_done += 1
        for name, seconds in times.items():
            self.call_seconds[name].append(seconds)
        return tuple(float(np.ravel(v)[0]) for v in (d_a_loss1, d_a_loss2, g_loss2, d_b_loss1, d_b_loss2, g_loss1))


    def check_frozen(self):
        """True when a further ``c_AtoB`` step trains G_AtoB and leaves D_B and G_BtoA unchanged.

        Verifies that the composite traced with the thesis code's trainable weights (Keras 3 reads
        the flags at the first ``train_on_batch``). Call after at least one :meth:`step`; it
        trains one more composite step.
        """
        def kernels(model):
            return [w.copy() for w in model.get_weights() if w.ndim > 1]

        frozen_before = kernels(self.d_B) + kernels(self.g_BtoA)
        trained_before = kernels(self.g_AtoB)
        x_a, y = self.generate_real_samples(self.train_a)
        x_b, _ = self.generate_real_samples(self.train_b)
        self.c_AtoB.train_on_batch([x_a, x_b], [y, x_b, x_a, x_b])
        frozen_same = all(np.array_equal(a, b) for a, b in zip(frozen_before, kernels(self.d_B) + kernels(self.g_BtoA)))
        trained_moved = any(not np.array_equal(a, b) for a, b in zip(trained_before, kernels(self.g_AtoB)))
        return bool(frozen_same and trained_moved)


def _lap(t0):
    t1 = time.perf_counter()
    return t1 - t0, t1


# --------------------------------------------------------------------------- the cross-check


def make_independent_step(loop):
    """The same work as one :meth:`ThesisLoop.step`, written independently as one ``tf.function``.

    Same networks (shared weights), same sequence and losses: the fakes, the B->A composite loss
    (gradients to G_BtoA only), D_A on real A and on the fakes, the A->B composite, D_B; fresh Adam
    optimizers; the fakes stand in for the pool's output (the pool only chooses among fakes of
    the same shape). Batch norm runs in training mode in every network here (in the composites
    Keras runs frozen networks' batch norm in inference mode); the FLOPs are the same. Returns a
    callable ``step(real_a, real_b) -> loss tensor``.
    """
    import keras
    import tensorflow as tf

    for model in (loop.g_AtoB, loop.g_BtoA, loop.d_A, loop.d_B):
        model.trainable = True
    opts = {name: keras.optimizers.Adam(LR, beta_1=BETA_1) for name in ("g_AtoB", "g_BtoA", "d_A", "d_B")}
    w_adv, w_id, w_fwd, w_bwd = LOSS_WEIGHTS

    def mse(a, b):
        return tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)))

    def mae(a, b):
        return tf.reduce_mean(tf.abs(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)))

    def composite(g1, d, g2, opt, real_src, real_tgt):
        with tf.GradientTape() as tape:
            fake = g1(real_src, training=True)
            adv = d(fake, training=True)
            same = g1(real_tgt, training=True)
            fwd = g2(fake, training=True)
            back = g1(g2(real_tgt, training=True), training=True)
            loss = (w_adv * mse(adv, tf.ones_like(adv)) + w_id * mae(same, real_tgt)
                    + w_fwd * mae(fwd, real_src) + w_bwd * mae(back, real_tgt))
        grads = tape.gradient(loss, g1.trainable_variables)
        opt.apply_gradients(zip(grads, g1.trainable_variables))
        return loss

    def disc(d, opt, images, target):
        with tf.GradientTape() as tape:
            out = d(images, training=True)
            loss = 0.5 * mse(out, tf.fill(tf.shape(out), target))
        grads = tape.gradient(loss, d.trainable_variables)
        opt.apply_gradients(zip(grads, d.trainable_variables))
        return loss

    @tf.function
    def step(real_a, real_b):
        fake_a = tf.stop_gradient(loop.g_BtoA(real_b, training=True))
        fake_b = tf.stop_gradient(loop.g_AtoB(real_a, training=True))
        g2 = composite(loop.g_BtoA, loop.d_A, loop.g_AtoB, opts["g_BtoA"], real_b, real_a)
        da = disc(loop.d_A, opts["d_A"], real_a, 1.0) + disc(loop.d_A, opts["d_A"], fake_a, 0.0)
        g1 = composite(loop.g_AtoB, loop.d_B, loop.g_BtoA, opts["g_AtoB"], real_a, real_b)
        db = disc(loop.d_B, opts["d_B"], real_b, 1.0) + disc(loop.d_B, opts["d_B"], fake_b, 0.0)
        return g1 + g2 + da + db

    return step
