"""The CycleGAN training model: loss weights, image pool, scanner labels, precision, distribution."""
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.losses import LossWeights

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


def tiny_networks(scanner=False, dropout_blocks=1):
    from harmonize.models.discriminators import build_patchgan_discriminator, build_scanner_discriminator
    from harmonize.models.generators import build_unet_generator

    nets = {"gen_a2b": build_unet_generator(SIZE, base_filters=4, depth=3, dropout_blocks=dropout_blocks,
                                            name="gen_a2b"),
            "gen_b2a": build_unet_generator(SIZE, base_filters=4, depth=3, dropout_blocks=dropout_blocks,
                                            name="gen_b2a"),
            "disc_a": build_patchgan_discriminator(SIZE, base_filters=4, n_layers=2, name="disc_a"),
            "disc_b": build_patchgan_discriminator(SIZE, base_filters=4, n_layers=2, name="disc_b"),
            "disc_scanner": None}
    if scanner:
        nets["disc_scanner"] = build_scanner_discriminator(SIZE, base_filters=4, n_layers=2)
    return nets


def tiny_model(weights, pool_size=4, **kw):
    from harmonize.models.classifier import build_scanner_classifier
    from harmonize.models.cyclegan import CycleGAN

    nets = tiny_networks(scanner=weights.scanner > 0, **kw)
    critic = build_scanner_classifier(SIZE, filters=(4, 8)) if weights.critic > 0 else None
    return CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"], nets["disc_scanner"],
                    loss_weights=weights, pool_size=pool_size, seed=1, critic=critic)


def batches(rng, n=2):
    a = rng.uniform(-1, 1, (n, SIZE, SIZE, 1)).astype(np.float32)
    b = np.clip(a * 0.9 + 0.05, -1, 1).astype(np.float32)
    return a, b


ALL = LossWeights(adversarial=1, cycle=10, identity=5, ssim=1, scanner=1, critic=2, paired=3, quantile=4)


def test_one_fit_epoch_logs_every_active_key(rng):
    import tensorflow as tf

    model = tiny_model(ALL)
    model.compile()
    a, b = batches(rng, 4)
    ds = tf.data.Dataset.from_tensor_slices((a, b)).batch(2, drop_remainder=True)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert sorted(history.history) == sorted(model.log_keys)
    assert model.log_keys[:4] == ["d_a_real", "d_a_fake", "d_b_real", "d_b_fake"]
    assert all(np.isfinite(v[0]) for v in history.history.values())
    assert int(model.pool_a.count.numpy()) == 4  # both steps put their 2 fakes into the pool


def test_each_weight_scales_its_terms_and_zero_removes_them(rng):
    """total(w with one weight doubled) - total(w) == weight x its terms (cycle/SSIM count in both totals)."""
    a, b = batches(rng)
    model = tiny_model(ALL)
    fake_b, fake_a = model((a, b), training=False)
    terms = {k: float(v) for k, v in model.generator_terms(a, b, fake_a, fake_b, training=False).items()}
    base = [float(t) for t in model.generator_totals(terms)]
    for suffix, field, shared in model.GENERATOR_TERMS:
        w = getattr(ALL, field)
        model.loss_weights = dataclasses.replace(ALL, **{field: 2 * w})
        doubled = [float(t) for t in model.generator_totals(terms)]
        own_a2b, own_b2a = terms[f"g_a2b_{suffix}"], terms[f"g_b2a_{suffix}"]
        expect_a2b = w * (own_a2b + (own_b2a if shared else 0.0))
        expect_b2a = w * (own_b2a + (own_a2b if shared else 0.0))
        tol = 1e-6 * max(base)  # float32 sums of totals around 10-20
        assert doubled[0] - base[0] == pytest.approx(expect_a2b, rel=1e-5, abs=tol), field
        assert doubled[1] - base[1] == pytest.approx(expect_b2a, rel=1e-5, abs=tol), field
        assert doubled[2] - base[2] == pytest.approx(w * (own_a2b + own_b2a), rel=1e-5, abs=tol), field
    model.loss_weights = ALL
    for field in ("identity", "ssim"):
        off = tiny_model(dataclasses.replace(ALL, **{field: 0}))
        suffix = {"identity": "identity", "ssim": "ssim"}[field]
        fake_b, fake_a = off((a, b), training=False)
        got = off.generator_terms(a, b, fake_a, fake_b, training=False)
        assert f"g_a2b_{suffix}" not in got and f"g_b2a_{suffix}" not in got
        assert f"g_a2b_{suffix}" not in off.log_keys
    no_scanner = tiny_model(dataclasses.replace(ALL, scanner=0))
    assert no_scanner.disc_scanner is None and not any("scanner" in k for k in no_scanner.log_keys)
    no_critic = tiny_model(dataclasses.replace(ALL, critic=0, paired=0))
    assert not any(k.endswith(("_critic", "_paired")) for k in no_critic.log_keys)


def test_critic_is_frozen_and_rewards_the_target_class(rng):
    """The frozen critic's weights never change in training; its term is BCE towards the target scanner."""
    import tensorflow as tf

    model = tiny_model(LossWeights(adversarial=1, cycle=10, critic=1), pool_size=0)
    critic = model._critic[0]
    before = [w.copy() for w in critic.get_weights()]
    assert not any(v is w for v in critic.trainable_variables for w in model.gen_a2b.trainable_variables)
    model.compile()
    a, b = batches(rng, 4)
    model.fit(tf.data.Dataset.from_tensor_slices((a, b)).batch(2), epochs=1, verbose=0)
    for old, new in zip(before, critic.get_weights()):
        np.testing.assert_array_equal(old, new)
    fake_b, fake_a = model((a, b), training=False)
    terms = model.generator_terms(a, b, fake_a, fake_b, training=False)
    p_b = np.clip(critic(fake_b).numpy(), 1e-6, 1 - 1e-6)
    p_a = np.clip(critic(fake_a).numpy(), 1e-6, 1 - 1e-6)
    assert float(terms["g_a2b_critic"]) == pytest.approx(float(np.mean(-np.log(p_b))), rel=1e-4)
    assert float(terms["g_b2a_critic"]) == pytest.approx(float(np.mean(-np.log(1 - p_a))), rel=1e-4)


def test_residual_generator_starts_at_the_identity(rng):
    from harmonize.models.generators import build_unet_generator

    g = build_unet_generator(SIZE, base_filters=4, depth=3, residual=True)
    x = rng.uniform(-1, 1, (2, SIZE, SIZE, 1)).astype(np.float32)
    np.testing.assert_array_equal(g(x, training=False).numpy(), x)
    assert g.output.dtype == "float32"


def test_scanner_discriminator_labels(rng):
    """D_scanner learns {A, fake A} = 0 and {B, fake B} = 1; the generators want their fakes in the target class."""
    import keras

    from harmonize.models.cyclegan import CycleGAN

    c = 0.3
    inputs = keras.Input((SIZE, SIZE, 1))
    constant = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(c),
                                   name="const")(inputs)
    scanner = keras.Model(inputs, constant, name="disc_scanner")
    nets = tiny_networks()
    model = CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"], scanner,
                     loss_weights=LossWeights(scanner=1), pool_size=0)
    a, b = batches(rng)
    d_terms, _ = model.discriminator_terms(a, b, a, b)
    assert float(d_terms["d_scanner_a"]) == pytest.approx(c**2)
    assert float(d_terms["d_scanner_fake_a"]) == pytest.approx(c**2)
    assert float(d_terms["d_scanner_b"]) == pytest.approx((1 - c) ** 2)
    assert float(d_terms["d_scanner_fake_b"]) == pytest.approx((1 - c) ** 2)
    fake_b, fake_a = model((a, b))
    g = model.generator_terms(a, b, fake_a, fake_b)
    assert float(g["g_a2b_scanner"]) == pytest.approx((1 - c) ** 2)  # fake B pushed to B's class (1)
    assert float(g["g_b2a_scanner"]) == pytest.approx(c**2)  # fake A pushed to A's class (0)
    with pytest.raises(ConfigError, match="scanner"):
        CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"], None,
                 loss_weights=LossWeights(scanner=1))


def _reference_pool(size, batches_, draws):
    """pytorch-CycleGAN ImagePool.query with given coin flips and slot choices."""
    pool, out = [], []
    for images, (coins, slots) in zip(batches_, draws):
        returned = []
        for image, coin, slot in zip(images, coins, slots):
            if len(pool) < size:
                pool.append(image)
                returned.append(image)
            elif coin > 0.5:
                returned.append(pool[slot])
                pool[slot] = image
            else:
                returned.append(image)
        out.append(np.stack(returned))
    return out, pool


@pytest.mark.parametrize("graph", [False, True])
def test_image_pool_matches_pytorch_semantics(graph):
    import tensorflow as tf

    from harmonize.models.cyclegan import ImagePool

    size, shape = 3, (4, 4, 1)
    pool = ImagePool(size, shape)
    rng = tf.random.Generator.from_seed(7)
    twin = tf.random.Generator.from_state(rng.state.numpy(), rng.algorithm)  # a copy, not the same variable
    # images tagged by value so each can be traced
    feeds = [np.stack([np.full(shape, 10.0 * k + i, np.float32) for i in range(2)]) for k in range(6)]
    draws = []
    for _ in feeds:
        coins = twin.uniform([2]).numpy()
        slots = twin.uniform([2], minval=0, maxval=size, dtype=tf.int32).numpy()
        draws.append((coins, slots))
    query = tf.function(pool.query) if graph else pool.query
    got = [query(tf.constant(f), rng).numpy() for f in feeds]
    expected, expected_pool = _reference_pool(size, feeds, draws)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(pool.images.numpy(), np.stack(expected_pool))
    assert int(pool.count.numpy()) == size
    assert any(not np.array_equal(g, f) for g, f in zip(got, feeds))  # some stored fakes came back
    empty = ImagePool(0, shape)
    np.testing.assert_array_equal(empty.query(tf.constant(feeds[0]), rng).numpy(), feeds[0])


def test_mixed_bfloat16_trains_on_cpu_with_float32_losses_and_outputs(rng):
    import tensorflow as tf

    from harmonize.models.cyclegan import CycleGAN
    from harmonize.models.generators import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        nets = tiny_networks()
        model = CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"],
                         loss_weights=LossWeights(ssim=1), pool_size=2)
        model.compile()
    assert model.gen_a2b.get_layer("enc2_conv").compute_dtype == "bfloat16"
    a, b = batches(rng)
    logs = model.train_on_batch(a, b, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert all(t.result().dtype == tf.float32 for t in model.metrics)
    assert model.gen_a2b(a).dtype == tf.float32
    terms = model.generator_terms(a, b, *model((a, b))[::-1])
    assert all(v.dtype == tf.float32 for v in terms.values())


def test_mixed_float16_uses_loss_scaling(rng):
    import keras

    from harmonize.models.generators import dtype_policy

    with dtype_policy("mixed_float16"):
        model = tiny_model(LossWeights(), pool_size=2)
        model.compile(loss_scaling=True)
    assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in model.optimizers.values())
    a, b = batches(rng)
    logs = model.train_on_batch(a, b, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device():
    """Two replicas of batch 1 take the same SGD steps as one device with batch 2 (loss scaling across replicas),
    and keep the same moving average of the generators' weights."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import harmonize
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from models.test_cyclegan import tiny_model, batches
        from harmonize.losses import LossWeights
        weights = LossWeights(identity=1, ssim=1)
        a, b = batches(np.random.default_rng(0), 2)
        def run(strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = tiny_model(weights, pool_size=0, dropout_blocks=0)
                model.compile(**{{k: keras.optimizers.SGD(0.1, use_ema=k.startswith("gen"), ema_momentum=0.5)
                                 for k in ("gen_a2b_optimizer", "gen_b2a_optimizer", "disc_a_optimizer",
                                           "disc_b_optimizer")}})
            # two steps, so the average differs from the last weights
            ds = tf.data.Dataset.from_tensor_slices((np.concatenate([a, b]), np.concatenate([b, a]))).batch(2)
            hist = model.fit(ds, epochs=1, verbose=0, shuffle=False)
            return model, hist.history
        one, h1 = run(tf.distribute.get_strategy())
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        two, h2 = run(mirrored)
        assert mirrored.num_replicas_in_sync == 2
        for name in ("gen_a2b", "gen_b2a", "disc_a", "disc_b"):
            for w1, w2 in zip(getattr(one, name).get_weights(), getattr(two, name).get_weights()):
                np.testing.assert_allclose(w1, w2, rtol=2e-4, atol=2e-6)
        for name in ("gen_a2b", "gen_b2a"):  # the weights' moving average, kept per replica, agrees too
            averaged = [one.generator_weights(name), two.generator_weights(name)]
            assert any(not np.allclose(w, v) for w, v in zip(averaged[0], getattr(one, name).get_weights()))
            for w1, w2 in zip(*averaged):
                np.testing.assert_allclose(w1, w2, rtol=2e-4, atol=2e-6)
        for key in h1:
            np.testing.assert_allclose(h1[key], h2[key], rtol=2e-4, atol=1e-6)
        print("OK", sorted(h2))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False, timeout=600,
                          cwd=str(REPO))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_joined_calls_equal_separate_calls(rng):
    """train_step runs translation + identity (and real + pooled fake) as one batch: exact per image."""
    from harmonize.models.cyclegan import _call_joined

    nets = tiny_networks(dropout_blocks=0)
    a, b = batches(rng, 3)
    b = b[:2]  # unequal halves: the split must follow the first batch's size
    for name in ("gen_a2b", "disc_a"):
        net = nets[name]
        first, second = _call_joined(net, a, b, True)
        np.testing.assert_allclose(first.numpy(), net(a, training=True).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(second.numpy(), net(b, training=True).numpy(), rtol=1e-5, atol=1e-5)
    # a network with batch statistics is not joined (its result would depend on the other batch)
    import keras

    inp = keras.Input((SIZE, SIZE, 1))
    bn = keras.Model(inp, keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(inp)))
    first, second = _call_joined(bn, a, b, True)
    np.testing.assert_allclose(first.numpy(), bn(a, training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second.numpy(), bn(b, training=True).numpy(), rtol=1e-5, atol=1e-5)


def test_generator_weights_are_the_moving_average_of_the_training_weights(rng):
    """compile(generator_ema=m): average_1 = w_1, average_k = m * average_(k-1) + (1 - m) * w_k over the
    steps; generator_weights returns it (the discriminators and the weights without average untouched)."""
    import keras
    import tensorflow as tf

    m = 0.6
    model = tiny_model(LossWeights(adversarial=1, cycle=10))
    model.compile(learning_rate=1e-2, generator_ema=m)
    assert model.generator_weights("gen_a2b")[0].shape == model.gen_a2b.get_weights()[0].shape
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(model.gen_a2b.get_weights())

    a, b = batches(rng, 6)
    ds = tf.data.Dataset.from_tensor_slices((a, b)).batch(2, drop_remainder=True)
    model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[Record()])
    assert len(seen) == 3
    trainable = {id(v) for v in model.gen_a2b.trainable_variables}
    expected = seen[0]
    for step in seen[1:]:
        expected = [m * e + (1 - m) * w for e, w in zip(expected, step)]
    got = model.generator_weights("gen_a2b")
    moved = 0
    for var, e, g, last in zip(model.gen_a2b.weights, expected, got, seen[-1]):
        if id(var) in trainable:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
            moved += not np.allclose(g, last)
        else:
            np.testing.assert_array_equal(g, last)
    assert moved > 0  # the average is not the last weights
    plain = tiny_model(LossWeights(adversarial=1, cycle=10))
    plain.compile()
    for g, w in zip(plain.generator_weights("gen_b2a"), plain.gen_b2a.get_weights()):
        np.testing.assert_array_equal(g, w)
