"""Saving and loading generators as ``.h5`` files that carry their own metadata.

A saved generator is a plain Keras ``.h5`` model file (loadable with ``keras.models.load_model``
in a fresh process, every custom object registered) with one extra HDF5 attribute,
``harmonize_metadata``: a JSON object that says how to use it::

    {
      "harmonize_version": "0.1.0",
      "direction": "AtoB",                  # or "BtoA"
      "input_domain": "A", "output_domain": "B",
      "source_label": "SIGNA", "target_label": "Optima_MR450w",   # scanner labels of A and B
      "input_map_type": "T1", "output_map_type": "T1",
      "input_units": "ms", "output_units": "ms",
      "image_size": [256, 256],             # network input (rows, columns)
      "pixel_spacing_mm": [0.94, 0.94],     # in-plane (row, column) spacing of the training slices
      "normalization": {"kind": "shared", "scale_a": 4300.0, "scale_b": 4300.0},
      "experiment": "3", "epoch": 12, "step": 3240, "run": "checkpoints/exp3"
    }

``normalization`` is :class:`harmonize.preprocess.intensity.Normalization` as a dict; the input is
normalised with the input domain's scale and the output returned with the output domain's scale.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from harmonize import __version__
from harmonize._fs import atomic_path
from harmonize.errors import InputError, ModelError

METADATA_ATTR = "harmonize_metadata"
REQUIRED_KEYS = ("direction", "input_domain", "output_domain", "input_map_type", "output_map_type",
                 "image_size", "normalization")


def save_generator(model, path, metadata):
    """Save ``model`` to ``path`` (.h5) atomically with ``metadata`` (see module docstring).

    Returns the written path.
    """
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelError(f"{Path(path)}: generator metadata lacks {', '.join(missing)}")
    return save_model_file(model, path, metadata, "generator")


def save_model_file(model, path, metadata, what="model"):
    """Save a Keras model as ``.h5`` atomically, with ``metadata`` as the JSON attribute.

    Shared by generators and scanner classifiers; ``what`` names the kind in error messages.
    """
    import h5py

    path = Path(path)
    if path.suffix != ".h5":
        raise ModelError(f"{path}: {what}s are saved as .h5 files; use a name ending in .h5")
    meta = {"harmonize_version": __version__, **metadata}
    with atomic_path(path) as tmp, _quiet_absl():
        model.save(str(tmp))
        with h5py.File(tmp, "a") as fh:
            fh.attrs[METADATA_ATTR] = json.dumps(meta, default=_json_default)
    return path


@contextlib.contextmanager
def _quiet_absl():
    # Keras logs that .h5 is a legacy format on every save; .h5 is this project's chosen format.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_model_metadata(path, what="model"):
    """The metadata dict stored in a saved ``.h5`` model (None when it has none), without loading it."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} file not found")
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get(METADATA_ATTR)
    except OSError as err:
        raise InputError(f"{path}: not a readable .h5 model file ({err})") from err
    if raw is None:
        return None
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def read_generator_metadata(path):
    """Return the metadata dict stored in a saved generator, without loading the network."""
    meta = read_model_metadata(path, "generator")
    if meta is None:
        raise ModelError(f"{path}: not a harmonize generator (no '{METADATA_ATTR}' attribute); "
                         "save generators with harmonize.models.saving.save_generator")
    return meta


def load_model_file(path, what="model"):
    """``keras.models.load_model`` of a harmonize ``.h5`` file, custom objects registered."""
    import keras

    from harmonize.models import register_custom_objects

    register_custom_objects()
    try:
        return keras.models.load_model(str(path), compile=False)
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(f"{path}: the network in this {what} file could not be loaded ({err})") from err


def load_generator_model(path):
    """Load a saved generator. Returns ``(keras_model, metadata)``."""
    metadata = read_generator_metadata(path)
    return load_model_file(path, "generator"), metadata


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in generator metadata")
