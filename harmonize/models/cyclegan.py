"""The CycleGAN training model: two generators, two (or three) discriminators, weighted losses.

Names in code and in the paper (Zhu et al. 2017, thesis Eq. 2-7), with A the source scanner (X)
and B the target scanner (Y):

============  ======  ==========================================================
code          paper   role
============  ======  ==========================================================
gen_a2b       G       A -> B; ``fake_b = G(real_a)``, ``cycled_b = G(fake_a)``
gen_b2a       F       B -> A; ``fake_a = F(real_b)``, ``cycled_a = F(fake_b)``
disc_a        D_X     real A (1) vs fake A (0)
disc_b        D_Y     real B (1) vs fake B (0)
disc_scanner  D (Eq. 7)  {A, fake A} (0) vs {B, fake B} (1); Experiment 3 only
============  ======  ==========================================================

Loss terms, unweighted, logged per step with these keys (thesis Table 4 quantities):

``d_a_real, d_a_fake, d_b_real, d_b_fake``
    LSGAN losses of D_A and D_B on real images (target 1) and on fakes from the image pool
    (target 0).
``d_scanner_a, d_scanner_fake_a, d_scanner_b, d_scanner_fake_b``
    LSGAN losses of the scanner discriminator on real A, pooled fake A (target 0), real B and
    pooled fake B (target 1).
``g_a2b_adv`` = ``lsgan(D_B(fake_b), 1)``; ``g_a2b_identity`` = ``|G(real_b) - real_b|``;
``g_a2b_cycle`` = ``|F(G(real_a)) - real_a|``; ``g_a2b_ssim`` = ``DSSIM(real_a, F(G(real_a)))``;
``g_a2b_scanner`` = ``lsgan(D(fake_b), 1)`` (fake B in B's class); the same for ``b2a`` with
the roles swapped. Beyond the thesis: ``g_a2b_critic`` = ``BCE(C(fake_b), B)`` with ``C`` a frozen
scanner classifier trained on real images, ``g_a2b_paired`` = ``|fake_b - real_b|`` and
``g_a2b_quantile`` (regional value distributions of fake B against real B) for batches of
corresponding registered slices.

``g_a2b_total`` is the loss of the thesis's A->B composite model (Brownlee's CycleGAN, which the
thesis code follows): ``w_adv adv + w_id identity + w_cyc (cycle_a2b + cycle_b2a)
+ w_ssim (ssim_a2b + ssim_b2a) + w_scan scanner`` with the a2b terms; both cycles and both DSSIM
terms count in both totals, because each cycle passes through both generators. The generators
minimise the sum of all terms, each counted once; its gradient with respect to G equals the
gradient of ``g_a2b_total`` (the terms it leaves out do not depend on G), so both generators
are updated from one backward pass. Each discriminator minimises
``w_disc (real + fake)`` (``w_disc`` = 0.5 as in the thesis code; the scanner discriminator's
four terms are averaged in pairs to the same scale). All networks are updated simultaneously
from the same forward pass, with one Adam optimiser each.

A weight of 0 skips a term entirely (no forward pass for it, no log key). The training model is
meant to be extended: a subclass adds terms by extending :attr:`CycleGAN.GENERATOR_TERMS` and
:meth:`CycleGAN.generator_terms`.
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from harmonize import losses
from harmonize.errors import ConfigError
from harmonize.losses import LossWeights
from harmonize.models.discriminators import SCANNER_LABEL_A, SCANNER_LABEL_B

@keras.saving.register_keras_serializable(package="harmonize")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate up to ``decay_start`` steps, then linear decay to zero at ``total_steps``.

    The schedule of the CycleGAN paper (Zhu et al. 2017: constant for the first half of training,
    then linearly to zero). The step is the optimiser's own iteration count, which a checkpoint
    saves, so a resumed run continues on the same schedule.
    """

    def __init__(self, initial_learning_rate, decay_start, total_steps):
        if not 0 <= decay_start <= total_steps or total_steps < 1:
            raise ValueError(f"LinearDecay: need 0 <= decay_start <= total_steps and total_steps >= 1, "
                             f"got decay_start={decay_start}, total_steps={total_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_start = int(decay_start)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, "float32")
        span = float(max(self.total_steps - self.decay_start, 1))
        remaining = tf.clip_by_value((self.total_steps - step) / span, 0.0, 1.0)
        return self.initial_learning_rate * remaining

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_start": self.decay_start,
                "total_steps": self.total_steps}


def _per_image(net):
    """True when no layer of ``net`` (nested models included) mixes the images of a batch (batch norm)."""
    layers = list(getattr(net, "layers", []))
    while layers:
        layer = layers.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            return False
        layers.extend(getattr(layer, "layers", []))
    return True


def _call_joined(net, first, second, training):
    """``net(first), net(second)`` computed as one call on the two batches joined (fewer, larger calls).

    Exact for networks that treat each image on its own (instance norm, no batch statistics); any other
    network is called twice."""
    if not _per_image(net):
        return net(first, training=training), net(second, training=training)
    out = net(tf.concat([first, second], axis=0), training=training)
    n = tf.shape(first)[0]
    return out[:n], out[n:]


#: discriminator log keys in Table 4 order
DISC_KEYS = ("d_a_real", "d_a_fake", "d_b_real", "d_b_fake")
SCANNER_KEYS = ("d_scanner_a", "d_scanner_fake_a", "d_scanner_b", "d_scanner_fake_b")


class ImagePool(tf.Module):
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN).

    pytorch-CycleGAN semantics, image by image: while the pool holds fewer than ``size`` images,
    store the new fake and return it; afterwards, with probability 0.5 return the new fake
    unchanged, otherwise return a randomly chosen stored fake and store the new one in its place.
    The images and the fill count are ``tf.Variable``s (part of a checkpoint, so a resumed run
    continues with the same pool). Under a distribution strategy each replica keeps its own pool.

    Parameters
    ----------
    size : int
        Capacity (50 in CycleGAN); 0 returns every batch unchanged.
    image_shape : tuple of int
        (rows, cols, channels) of one image.
    name : str
    """

    def __init__(self, size, image_shape, name="image_pool"):
        super().__init__(name=name)
        self.size = int(size)
        self.image_shape = tuple(int(s) for s in image_shape)
        if self.size < 0:
            raise ConfigError(f"train.pool_size: must be >= 0, got {size!r}")
        if self.size:
            kw = {"trainable": False, "synchronization": tf.VariableSynchronization.ON_READ,
                  "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
            self.images = tf.Variable(tf.zeros((self.size,) + self.image_shape, tf.float32), name="images", **kw)
            self.count = tf.Variable(0, dtype=tf.int32, name="count", **kw)

    def _read(self, slot):
        if tf.distribute.has_strategy():
            # a per-replica (SyncOnRead) variable inside a replica supports only whole reads/assigns
            return tf.gather(self.images.read_value(), slot)
        return self.images.sparse_read(slot)  # one slot, without copying the pool

    def _write(self, slot, image):
        if tf.distribute.has_strategy():
            current = self.images.read_value()
            return self.images.assign(tf.tensor_scatter_nd_update(current, slot[None, None], image[None]))
        return self.images.scatter_update(tf.IndexedSlices(image[None], slot[None]))

    def query(self, images, rng):
        """Return a batch for the discriminator and update the pool.

        Parameters
        ----------
        images : tf.Tensor
            (batch, rows, cols, channels) new fakes (no gradient is kept).
        rng : tf.random.Generator
            Source of the coin flips and slot choices.

        Returns
        -------
        tf.Tensor
            (batch, rows, cols, channels) float32.
        """
        images = tf.stop_gradient(tf.cast(images, tf.float32))
        if not self.size:
            return images
        n = tf.shape(images)[0]
        coins = rng.uniform([n])
        slots = rng.uniform([n], minval=0, maxval=self.size, dtype=tf.int32)
        out = tf.TensorArray(tf.float32, size=n, element_shape=images.shape[1:])

        def body(i, out):
            # the control dependency on the loop counter orders this image's read after the
            # previous image's write (the same slot may be drawn twice in one batch)
            with tf.control_dependencies([i]):
                count = self.count.read_value()
            fill = count < self.size
            swap = tf.logical_and(tf.logical_not(fill), coins[i] > 0.5)
            slot = tf.where(fill, count, slots[i])
            new = images[i]
            old = self._read(slot)
            returned = tf.where(swap, old, new)
            stored = tf.where(tf.logical_or(fill, swap), new, old)
            with tf.control_dependencies([returned]):
                write = self._write(slot, stored)
                bump = self.count.assign(tf.minimum(count + 1, self.size))
            with tf.control_dependencies([write, bump]):
                return i + 1, out.write(i, returned)

        _, out = tf.while_loop(lambda i, _: i < n, body, [tf.constant(0), out])
        result = out.stack()
        result.set_shape(images.shape)
        return result


class CycleGAN(keras.Model):
    """The CycleGAN of one experiment, trained with ``fit`` on ``(real_a, real_b)`` batches.

    See the module docstring for the roles, the loss terms and their log keys.

    Parameters
    ----------
    gen_a2b, gen_b2a : keras.Model
        Generators G (A -> B) and F (B -> A), same input and output shape.
    disc_a, disc_b : keras.Model
        PatchGAN discriminators D_A (D_X) and D_B (D_Y).
    disc_scanner : keras.Model or None
        The extra scanner discriminator; required when ``loss_weights.scanner > 0``.
    loss_weights : LossWeights
        Weights of the terms; 0 skips a term.
    pool_size : int
        Image pool capacity per direction (50).
    seed : int
        Seed of the pool's random generator.

    Examples
    --------
    >>> model = CycleGAN(g, f, d_a, d_b, loss_weights=LossWeights(identity=5))   # doctest: +SKIP
    >>> model.compile()                                                           # doctest: +SKIP
    >>> history = model.fit(stream, epochs=50, steps_per_epoch=13)                # doctest: +SKIP
    """

    #: (log-key suffix, LossWeights field, counted in both directions' totals)
    GENERATOR_TERMS = (
        ("adv", "adversarial", False),
        ("identity", "identity", False),
        ("ssim", "ssim", True),
        ("cycle", "cycle", True),
        ("scanner", "scanner", False),
        ("critic", "critic", False),
        ("paired", "paired", False),
        ("quantile", "quantile", False),
    )

    def __init__(self, gen_a2b, gen_b2a, disc_a, disc_b, disc_scanner=None, loss_weights=None, pool_size=50,
                 seed=0, critic=None, name="cyclegan", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss_weights = loss_weights if loss_weights is not None else LossWeights()
        if self.loss_weights.critic > 0 and critic is None:
            raise ConfigError("loss.critic > 0 needs a frozen scanner classifier (critic=...); "
                              "train one with harmonize.models.classifier.train_scanner_classifier")
        if critic is not None:
            critic.trainable = False
        # a plain attribute list keeps the frozen critic out of the trainable networks and optimisers
        self._critic = [critic] if critic is not None else []
        if self.loss_weights.scanner > 0 and disc_scanner is None:
            raise ConfigError("loss.scanner > 0 needs the scanner discriminator; build one with "
                              "build_scanner_discriminator or set loss.scanner to 0")
        if disc_scanner is not None and self.loss_weights.scanner == 0:
            raise ConfigError("a scanner discriminator was given but loss.scanner is 0; "
                              "set a weight (Experiment 3: 1) or leave it out")
        shape_a, shape_b = tuple(gen_a2b.input_shape[1:]), tuple(gen_b2a.input_shape[1:])
        if shape_a != shape_b or tuple(gen_a2b.output_shape[1:]) != shape_b:
            raise ConfigError(f"generators must map images of one shape; got {shape_a} and {shape_b}")
        self.image_shape = shape_a
        self.gen_a2b = gen_a2b
        self.gen_b2a = gen_b2a
        self.disc_a = disc_a
        self.disc_b = disc_b
        self.disc_scanner = disc_scanner
        self.pool_size = int(pool_size)
        self.seed = int(seed)
        self.rng = tf.random.Generator.from_seed(self.seed)
        self.pool_a = ImagePool(self.pool_size, self.image_shape, name="pool_fake_a")
        self.pool_b = ImagePool(self.pool_size, self.image_shape, name="pool_fake_b")
        self.trackers = {key: keras.metrics.Mean(name=key) for key in self.log_keys}
        # the sub-models are built functional models; marking this one built keeps fit() from
        # tracing it symbolically on a data batch
        self.built = True

    # ----------------------------------------------------------------------------- structure
    @property
    def networks(self):
        """Trainable networks by name (the order in which optimisers are listed)."""
        nets = {"gen_a2b": self.gen_a2b, "gen_b2a": self.gen_b2a, "disc_a": self.disc_a, "disc_b": self.disc_b}
        if self.disc_scanner is not None:
            nets["disc_scanner"] = self.disc_scanner
        return nets

    @property
    def generator_log_keys(self):
        """Generator log keys of the active terms, Table 4 order (totals first)."""
        keys = ["g_a2b_total", "g_b2a_total"]
        for direction in ("a2b", "b2a"):
            keys += [f"g_{direction}_{suffix}" for suffix, field, _ in self.GENERATOR_TERMS
                     if self.loss_weights.active(field)]
        return keys

    @property
    def log_keys(self):
        """Every log key of this model (the columns of losses.csv)."""
        keys = list(DISC_KEYS)
        if self.loss_weights.scanner > 0:
            keys += SCANNER_KEYS
        return keys + self.generator_log_keys

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        """Translate a pair of batches: ``(real_a, real_b) -> (fake_b, fake_a)``."""
        real_a, real_b = inputs
        return self.gen_a2b(real_a, training=training), self.gen_b2a(real_b, training=training)

    # ----------------------------------------------------------------------------- compile
    def compile(self, gen_a2b_optimizer=None, gen_b2a_optimizer=None, disc_a_optimizer=None,
                disc_b_optimizer=None, disc_scanner_optimizer=None, learning_rate=2e-4, beta_1=0.5,
                beta_2=0.999, loss_scaling=False, generator_ema=None, **kwargs):
        """Set one optimiser per network (default Adam(2e-4, beta_1=0.5)) and build them.

        Parameters
        ----------
        gen_a2b_optimizer, gen_b2a_optimizer, disc_a_optimizer, disc_b_optimizer, disc_scanner_optimizer
            keras optimizers; None creates Adam with ``learning_rate``, ``beta_1``, ``beta_2``.
        learning_rate : float or keras.optimizers.schedules.LearningRateSchedule
            For the Adam optimisers created here (e.g. :class:`LinearDecay`).
        loss_scaling : bool
            Wrap the optimisers in ``keras.optimizers.LossScaleOptimizer`` (mixed_float16).
        generator_ema : float or None
            Momentum of an exponential moving average of each generator's weights, kept by its Adam
            optimiser (keras ``use_ema``; Polyak averaging); :meth:`generator_weights` returns the
            averaged weights. None: no average.
        **kwargs
            Passed to ``keras.Model.compile`` (``jit_compile`` defaults to False: XLA was slower
            on CPU).
        """
        kwargs.setdefault("jit_compile", False)
        super().compile(**kwargs)
        given = {"gen_a2b": gen_a2b_optimizer, "gen_b2a": gen_b2a_optimizer, "disc_a": disc_a_optimizer,
                 "disc_b": disc_b_optimizer, "disc_scanner": disc_scanner_optimizer}
        self.optimizers = {}
        for name, net in self.networks.items():
            opt = given[name]
            if opt is None:
                ema = {"use_ema": True, "ema_momentum": float(generator_ema)} \
                    if generator_ema and name.startswith("gen_") else {}
                opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                            name=f"adam_{name}", **ema)
            if loss_scaling and not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                opt = keras.optimizers.LossScaleOptimizer(opt, name=f"loss_scale_{name}")
            # build now, so the slots exist before a checkpoint is restored into them
            opt.build(net.trainable_variables)
            self.optimizers[name] = opt
        self._loss_scaling = any(isinstance(o, keras.optimizers.LossScaleOptimizer)
                                 for o in self.optimizers.values())

    # ----------------------------------------------------------------------------- losses
    def generator_terms(self, real_a, real_b, fake_a, fake_b, training=True, same_a=None, same_b=None):
        """Unweighted generator terms of the active weights, by log key (float32 scalars).

        ``same_b = gen_a2b(real_b)`` and ``same_a = gen_b2a(real_a)`` (the identity mappings) are
        computed here unless given. Subclasses adding a term extend :attr:`GENERATOR_TERMS` and this dict.
        """
        w = self.loss_weights
        terms = {}
        if w.active("adversarial"):
            terms["g_a2b_adv"] = losses.lsgan_loss(self.disc_b(fake_b, training=training), 1.0)
            terms["g_b2a_adv"] = losses.lsgan_loss(self.disc_a(fake_a, training=training), 1.0)
        if w.active("identity"):
            same_b = self.gen_a2b(real_b, training=training) if same_b is None else same_b
            same_a = self.gen_b2a(real_a, training=training) if same_a is None else same_a
            terms["g_a2b_identity"] = losses.l1(same_b, real_b)
            terms["g_b2a_identity"] = losses.l1(same_a, real_a)
        if w.active("cycle") or w.active("ssim"):
            cycled_a = self.gen_b2a(fake_b, training=training)
            cycled_b = self.gen_a2b(fake_a, training=training)
            if w.active("ssim"):
                terms["g_a2b_ssim"] = losses.dssim(real_a, cycled_a)
                terms["g_b2a_ssim"] = losses.dssim(real_b, cycled_b)
            if w.active("cycle"):
                terms["g_a2b_cycle"] = losses.l1(cycled_a, real_a)
                terms["g_b2a_cycle"] = losses.l1(cycled_b, real_b)
        if w.active("critic"):
            critic = self._critic[0]
            terms["g_a2b_critic"] = losses.critic_loss(critic(fake_b, training=False), SCANNER_LABEL_B)
            terms["g_b2a_critic"] = losses.critic_loss(critic(fake_a, training=False), SCANNER_LABEL_A)
        if w.active("paired"):
            terms["g_a2b_paired"] = losses.l1(fake_b, real_b)
            terms["g_b2a_paired"] = losses.l1(fake_a, real_a)
        if w.active("quantile"):
            terms["g_a2b_quantile"] = losses.regional_quantile_loss(fake_b, real_b, w.quantile_patch, w.quantile_sigma)
            terms["g_b2a_quantile"] = losses.regional_quantile_loss(fake_a, real_a, w.quantile_patch, w.quantile_sigma)
        if w.active("scanner"):
            terms["g_a2b_scanner"] = losses.lsgan_loss(self.disc_scanner(fake_b, training=training), SCANNER_LABEL_B)
            terms["g_b2a_scanner"] = losses.lsgan_loss(self.disc_scanner(fake_a, training=training), SCANNER_LABEL_A)
        return terms

    def generator_totals(self, terms):
        """Weighted totals: ``(g_a2b_total, g_b2a_total, objective)``; see the module docstring."""
        zero = tf.constant(0.0, tf.float32)
        totals = {"a2b": zero, "b2a": zero}
        objective = zero
        for suffix, field, shared in self.GENERATOR_TERMS:
            weight = getattr(self.loss_weights, field)
            if weight == 0:
                continue
            for direction, other in (("a2b", "b2a"), ("b2a", "a2b")):
                value = weight * terms[f"g_{direction}_{suffix}"]
                totals[direction] = totals[direction] + value
                if shared:
                    totals[other] = totals[other] + value
                objective = objective + value
        return totals["a2b"], totals["b2a"], objective

    def discriminator_terms(self, real_a, real_b, pooled_fake_a, pooled_fake_b, training=True):
        """Unweighted discriminator terms by log key, and each discriminator's loss by network name."""
        # real and pooled fake go through each discriminator as one batch: the same result per image
        # (instance norm and the PatchGAN's convolutions act on each image alone), one call instead of two
        real_a_out, fake_a_out = _call_joined(self.disc_a, real_a, pooled_fake_a, training)
        real_b_out, fake_b_out = _call_joined(self.disc_b, real_b, pooled_fake_b, training)
        terms = {
            "d_a_real": losses.lsgan_loss(real_a_out, 1.0),
            "d_a_fake": losses.lsgan_loss(fake_a_out, 0.0),
            "d_b_real": losses.lsgan_loss(real_b_out, 1.0),
            "d_b_fake": losses.lsgan_loss(fake_b_out, 0.0),
        }
        w = self.loss_weights.discriminator
        net_losses = {"disc_a": w * (terms["d_a_real"] + terms["d_a_fake"]),
                      "disc_b": w * (terms["d_b_real"] + terms["d_b_fake"])}
        if self.disc_scanner is not None:
            d = self.disc_scanner
            terms["d_scanner_a"] = losses.lsgan_loss(d(real_a, training=training), SCANNER_LABEL_A)
            terms["d_scanner_fake_a"] = losses.lsgan_loss(d(pooled_fake_a, training=training), SCANNER_LABEL_A)
            terms["d_scanner_b"] = losses.lsgan_loss(d(real_b, training=training), SCANNER_LABEL_B)
            terms["d_scanner_fake_b"] = losses.lsgan_loss(d(pooled_fake_b, training=training), SCANNER_LABEL_B)
            net_losses["disc_scanner"] = w * 0.5 * (terms["d_scanner_a"] + terms["d_scanner_fake_a"]
                                                    + terms["d_scanner_b"] + terms["d_scanner_fake_b"])
        return terms, net_losses

    # ----------------------------------------------------------------------------- training
    def train_step(self, data):
        """One simultaneous update of every network on a batch ``(real_a, real_b)``.

        Returns the epoch means of every log key so far (``keras.metrics.Mean`` trackers).
        """
        # (real_a, real_b) from a dataset; train_on_batch(real_a, real_b) adds a sample weight
        real_a, real_b, _ = keras.utils.unpack_x_y_sample_weight(data)
        real_a = tf.cast(real_a, tf.float32)
        real_b = tf.cast(real_b, tf.float32)
        # tf.distribute sums the replicas' gradients; dividing each loss by the replica count
        # makes that sum the gradient of the global-batch mean (as keras's own train_step does)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        per_replica = 1.0 / replicas
        gens = ("gen_a2b", "gen_b2a")
        with tf.GradientTape(persistent=True) as tape:
            if self.loss_weights.active("identity"):
                # translation and identity mapping in one call per generator (each image is its own instance)
                fake_b, same_b = _call_joined(self.gen_a2b, real_a, real_b, True)
                fake_a, same_a = _call_joined(self.gen_b2a, real_b, real_a, True)
            else:
                fake_b = self.gen_a2b(real_a, training=True)
                fake_a = self.gen_b2a(real_b, training=True)
                same_a = same_b = None
            g_terms = self.generator_terms(real_a, real_b, fake_a, fake_b, training=True, same_a=same_a,
                                           same_b=same_b)
            g_a2b_total, g_b2a_total, objective = self.generator_totals(g_terms)
            pooled_fake_a = self.pool_a.query(fake_a, self.rng)
            pooled_fake_b = self.pool_b.query(fake_b, self.rng)
            d_terms, d_losses = self.discriminator_terms(real_a, real_b, pooled_fake_a, pooled_fake_b)
            if self._loss_scaling:
                targets = {"gen_a2b": g_a2b_total * per_replica, "gen_b2a": g_b2a_total * per_replica}
            else:
                targets = {"generators": objective * per_replica}
            targets.update({name: loss * per_replica for name, loss in d_losses.items()})
            targets = {name: (self.optimizers[name].scale_loss(t) if name in self.optimizers else t)
                       for name, t in targets.items()}

        if "generators" in targets:
            # one backward pass for both generators (see the module docstring)
            variables = [self.networks[n].trainable_variables for n in gens]
            grads = tape.gradient(targets["generators"], variables[0] + variables[1])
            split = len(variables[0])
            self.optimizers["gen_a2b"].apply(grads[:split], variables[0])
            self.optimizers["gen_b2a"].apply(grads[split:], variables[1])
        for name, net in self.networks.items():
            if name in targets:
                grads = tape.gradient(targets[name], net.trainable_variables)
                self.optimizers[name].apply(grads, net.trainable_variables)
        del tape

        values = dict(d_terms)
        values.update(g_terms)
        values["g_a2b_total"] = g_a2b_total
        values["g_b2a_total"] = g_b2a_total
        for key, tracker in self.trackers.items():
            tracker.update_state(values[key])
        return {key: tracker.result() for key, tracker in self.trackers.items()}

    def generator_weights(self, name):
        """``get_weights()`` of generator ``name``, with its trainable weights replaced by their moving
        average when its optimiser keeps one (``compile(generator_ema=...)``): the weights to save."""
        net = self.networks[name]
        opt = self._averaging_optimizer(name)
        if opt is None:
            return net.get_weights()
        averages = {id(v): opt._model_variables_moving_average[opt._get_variable_index(v)]
                    for v in net.trainable_variables}
        return [averages.get(id(v), v).numpy() for v in net.weights]

    def _averaging_optimizer(self, name):
        """The optimiser of network ``name`` when it keeps a moving average of the weights, else None."""
        opt = self.optimizers[name]
        opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer keeps the average in the inner one
        return opt if opt.use_ema else None

    @contextlib.contextmanager
    def saved_generators(self):
        """Within the block the generators hold the weights :meth:`generator_weights` saves (their moving
        averages when an optimiser keeps one), so per-epoch validation and samples show the saved
        generators; the training weights are back afterwards."""
        training = {}
        for name in ("gen_a2b", "gen_b2a"):
            if self._averaging_optimizer(name) is not None:
                net = self.networks[name]
                training[name] = net.get_weights()
                net.set_weights(self.generator_weights(name))
        try:
            yield self
        finally:
            for name, weights in training.items():
                self.networks[name].set_weights(weights)

    def checkpoint_objects(self):
        """Everything a resumed run needs, for ``tf.train.Checkpoint(**model.checkpoint_objects())``."""
        objects = dict(self.networks)
        objects.update({f"optimizer_{name}": opt for name, opt in self.optimizers.items()})
        objects.update(pool_a=self.pool_a, pool_b=self.pool_b, rng=self.rng)
        return objects
