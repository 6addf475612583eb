"""Tiny saved generators with known behaviour in physical units, for the apply tests."""
from harmonize.preprocess.intensity import Normalization

#: shared scale of the tiny generators (ms): T1 values of the test maps stay below it
SCALE_MS = 5000.0


def metadata(size=32, map_type="T1", out_map_type=None, spacing=(0.9, 0.9), scale=SCALE_MS, scale_b=None,
             **extra):
    """Generator metadata as train.py writes it (A -> B; shared normalisation unless ``scale_b``)."""
    out_map_type = out_map_type or map_type
    units = {"T1": "ms", "T2": "ms", "PD": "%"}
    meta = {
        "direction": "AtoB", "input_domain": "A", "output_domain": "B",
        "source_label": "SCANNER_A", "target_label": "SCANNER_B",
        "input_map_type": map_type, "output_map_type": out_map_type,
        "input_units": units[map_type], "output_units": units[out_map_type],
        "image_size": [size, size],
        "normalization": (Normalization("shared", scale, scale) if scale_b is None
                          else Normalization("per-scanner-max", scale, scale_b)).to_dict(),
        "experiment": "test", "epoch": 0, "step": 0,
    }
    if spacing is not None:
        meta["pixel_spacing_mm"] = list(spacing)
    meta.update(extra)
    return meta


def gain_model(size=32, gain=1.0):
    """A Keras functional model: ``out = (in + 1) * gain - 1`` in the network range.

    With a shared normalisation this multiplies the map by ``gain`` in physical units
    (``gain=1`` is the identity). A 1x1 convolution carries the gain, so inference runs a real
    layer with weights that survive the .h5 round trip.
    """
    import keras
    import numpy as np

    inp = keras.Input((size, size, 1))
    conv = keras.layers.Conv2D(1, 1, use_bias=True, name="gain")
    out = conv(inp)
    model = keras.Model(inp, out)
    conv.set_weights([np.full((1, 1, 1, 1), gain, np.float32), np.full((1,), gain - 1.0, np.float32)])
    return model


def save_gain_generator(path, size=32, gain=1.0, **meta):
    """Save a :func:`gain_model` with metadata to ``path`` (.h5); returns the path."""
    from harmonize.models.saving import save_generator

    return save_generator(gain_model(size, gain), path, metadata(size=size, **meta))
