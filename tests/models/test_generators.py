"""Generators and discriminators: shapes, dtypes, layouts, errors, and the .h5 round trip."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.models.discriminators import (
    build_patchgan_discriminator,
    build_scanner_discriminator,
    patchgan_receptive_field,
)
from harmonize.models.generators import build_resnet_generator, build_unet_generator, default_unet_depth, dtype_policy

REPO = Path(__file__).resolve().parents[2]


def test_unet_shapes_filters_and_dropout():
    g = build_unet_generator(32, base_filters=8, depth=3, dropout_blocks=1, name="gen_a2b")
    assert g.input_shape == (None, 32, 32, 1) and g.output_shape == (None, 32, 32, 1)
    names = [layer.name for layer in g.layers]
    assert [n for n in names if n.endswith("_dropout")] == ["dec1_dropout"]
    assert g.get_layer("enc1_conv").filters == 8 and g.get_layer("enc2_conv").filters == 16
    assert g.get_layer("bottleneck_conv").output.shape[1:3] == (4, 4)
    assert "enc1_norm" not in names and "enc2_norm" in names  # no norm on the first block (pix2pix)
    y = np.asarray(g(np.zeros((2, 32, 32, 1), np.float32)))
    assert y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)


def test_unet_default_depth_reaches_one_pixel_and_caps_filters():
    assert default_unet_depth(256) == 8 and default_unet_depth(64) == 6 and default_unet_depth(512) == 8
    assert default_unet_depth(96) == 5 and default_unet_depth((64, 48)) == 4
    g = build_unet_generator(64, base_filters=4)
    assert g.get_layer("bottleneck_conv").output.shape[1:3] == (1, 1)
    assert max(layer.filters for layer in g.layers if hasattr(layer, "filters")) == 32  # min(base*2^i, base*8)


def test_unet_dropout_only_in_training():
    g = build_unet_generator(32, base_filters=4, depth=3, dropout_blocks=2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 1)).astype(np.float32)
    assert np.array_equal(np.asarray(g(x, training=False)), np.asarray(g(x, training=False)))


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 48, "depth": 5}, "divisible"),
    ({"image_size": 32, "depth": 6}, "depth must be 1..5"),
    ({"image_size": 32, "base_filters": 0}, "base_filters"),
    ({"image_size": (32, 32, 3)}, "image_size"),
])
def test_unet_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_unet_generator(**kwargs)


def test_resnet_generator_shapes():
    g = build_resnet_generator(32, base_filters=4, n_res_blocks=2)
    assert g.output_shape == (None, 32, 32, 1)
    assert g.get_layer("in_pad").output.shape[1:3] == (38, 38)
    with pytest.raises(ConfigError, match="divisible"):
        build_resnet_generator(30, n_down=2)


def test_patchgan_layout_and_receptive_field():
    assert patchgan_receptive_field(3) == 70 and patchgan_receptive_field(4) == 142
    d = build_patchgan_discriminator(64, base_filters=8, n_layers=3)
    assert d.output_shape == (None, 8, 8, 1)
    filters = [layer.filters for layer in d.layers if hasattr(layer, "filters")]
    assert filters == [8, 16, 32, 64, 1]
    thesis = build_patchgan_discriminator(64, base_filters=8, n_layers=4)  # 64-128-256-512-512 at base 64
    assert [layer.filters for layer in thesis.layers if hasattr(layer, "filters")] == [8, 16, 32, 64, 64, 1]
    s = build_scanner_discriminator(32, base_filters=4, n_layers=2)
    assert s.output_shape == (None, 8, 8, 1) and s.name == "disc_scanner"
    with pytest.raises(ConfigError, match="n_layers"):
        build_patchgan_discriminator(36, n_layers=3)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_policy_keeps_output_layers_float32(policy):
    import keras

    with dtype_policy(policy):
        g = build_unet_generator(32, base_filters=4, depth=3)
        d = build_patchgan_discriminator(32, base_filters=4, n_layers=2)
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert g.get_layer("enc2_conv").compute_dtype == policy.split("_")[1]
    assert g.get_layer("output_tanh").compute_dtype == "float32"
    x = np.zeros((1, 32, 32, 1), np.float32)
    assert g(x).dtype.name == "float32" and d(x).dtype.name == "float32"


def test_saved_generators_load_in_a_fresh_process(tmp_path):
    """save_generator -> keras.models.load_model in a new process gives identical outputs."""
    from harmonize.models.saving import save_generator

    meta = {"direction": "AtoB", "input_domain": "A", "output_domain": "B", "input_map_type": "T1",
            "output_map_type": "T1", "image_size": [32, 32],
            "normalization": {"kind": "shared", "scale_a": 4000.0, "scale_b": 4000.0}}
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    prior = (np.linspace(-0.9, 0.9, 7), np.linspace(-0.9, 0.9, 7) ** 3)
    for kind, model in (("unet", build_unet_generator(32, base_filters=4, depth=3)),
                        ("resnet", build_resnet_generator(32, base_filters=4, n_res_blocks=1)),
                        ("prior", build_unet_generator(32, base_filters=4, depth=3, residual=True, prior=prior))):
        save_generator(model, tmp_path / f"{kind}.h5", meta)
        expected[kind] = np.asarray(model(x, training=False))
    # the U-Net needs nothing from harmonize; the ResNet's padding layer and the prior's ValueMap are
    # registered by harmonize.models
    script = (
        "import sys, numpy as np, keras\n"
        "d = sys.argv[1]\n"
        "x = np.load(d + '/x.npy')\n"
        "np.save(d + '/unet_out.npy', np.asarray(keras.models.load_model(d + '/unet.h5', compile=False)(x)))\n"
        "import harmonize.models\n"
        "harmonize.models.register_custom_objects()\n"
        "np.save(d + '/resnet_out.npy', np.asarray(keras.models.load_model(d + '/resnet.h5', compile=False)(x)))\n"
        "np.save(d + '/prior_out.npy', np.asarray(keras.models.load_model(d + '/prior.h5', compile=False)(x)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, output in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{kind}_out.npy"), output)
    from harmonize.models.saving import read_generator_metadata

    assert read_generator_metadata(tmp_path / "unet.h5")["normalization"] == meta["normalization"]
    json.dumps(read_generator_metadata(tmp_path / "resnet.h5"))


def test_value_map_is_the_histmatch_baseline_with_background_and_gradient_kept():
    """ValueMap through a fitted histogram-matching baseline's quantiles = the baseline inside the training
    range; background stays; shifted (invertible, non-zero slope) beyond the end knots."""
    import tensorflow as tf

    from harmonize.baselines import get_baseline
    from harmonize.models.generators import ValueMap

    rng = np.random.default_rng(0)
    src = rng.gamma(4.0, 300.0, (3, 16, 16))
    tgt = 1.1 * rng.gamma(4.0, 300.0, (3, 16, 16)) ** 1.02
    base = get_baseline("histmatch", n_quantiles=101).fit(src, None, tgt, None)
    scale = 2.0 / max(src.max(), tgt.max())   # shared normalisation: net = phys * scale - 1
    layer = ValueMap(np.asarray(base.params["source_quantiles"]) * scale - 1,
                     np.asarray(base.params["target_quantiles"]) * scale - 1)
    x = rng.gamma(4.0, 300.0, (2, 16, 16))
    x[:, :3] = 0.0                            # background rows
    lo, hi = base.params["source_quantiles"][0], base.params["source_quantiles"][-1]
    x[:, -1, :4] = hi * np.array([1.01, 1.05, 1.1, 1.2])   # beyond the training range
    net = tf.constant((x * scale - 1)[..., None], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(net)
        out = layer(net)
    slope = tape.gradient(out, net).numpy()[..., 0]
    y = (out.numpy()[..., 0] + 1) / scale
    inside = (x >= lo) & (x <= hi)
    np.testing.assert_allclose(y[inside], base.apply(x)[inside], rtol=1e-4)
    np.testing.assert_array_equal(y[x == 0], 0.0)
    above = x > hi
    assert above.any()
    np.testing.assert_allclose(y[above] - x[above], base.params["target_quantiles"][-1] - hi, rtol=1e-3)
    assert np.all(slope[x > 0] > 0)
    with pytest.raises(ConfigError, match="non-decreasing"):
        ValueMap([0.0, -0.5], [0.0, 0.1])


def test_prior_generator_starts_at_its_value_map(rng):
    """residual + prior: G(x) = prior(x) + correction, correction 0 at initialisation; no prior without residual."""
    from harmonize.models.generators import ValueMap

    knots = (np.linspace(-0.95, 0.95, 9), 1.05 * np.linspace(-0.95, 0.95, 9) + 0.01)
    g = build_unet_generator(32, base_filters=4, depth=3, residual=True, prior=knots)
    x = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    x[:, :4] = -1.0
    np.testing.assert_allclose(np.asarray(g(x, training=False)), np.asarray(ValueMap(*knots)(x)), atol=1e-6)
    assert isinstance(g.get_layer("prior"), ValueMap)
    with dtype_policy("mixed_bfloat16"):
        g16 = build_unet_generator(32, base_filters=4, depth=3, residual=True, prior=knots)
    assert g16.get_layer("prior").compute_dtype == "float32" and g16.output.dtype == "float32"
    with pytest.raises(ConfigError, match="residual"):
        build_unet_generator(32, base_filters=4, depth=3, prior=knots)
