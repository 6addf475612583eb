"""The scanner classifier of thesis 2.3: a small CNN that tells scanner A's maps from scanner B's.

It measures how different two scanners are (thesis Table 3: test accuracy 0.7-0.9 on real maps
whose histograms look alike), shows where the difference lies (Grad-CAM on ``"last_conv"``, see
:mod:`harmonize.explain`), and validates harmonisation: a classifier trained on real maps should
call fake B "B" (thesis Table 7).

Network (Keras 3 functional, input ``(H, W, 1)`` in the network range [-1, 1])::

    conv1 3x3 16 ReLU -> pool1 2x2 -> conv2 3x3 32 ReLU -> pool2 -> conv3 128 -> pool3
    -> conv4 256 -> pool4 -> last_conv 3x3 512 ReLU -> global average pool -> dropout
    -> scanner_logit (Dense 1) -> p_scanner_b (sigmoid, float32) = P(scanner B)

Pooling sits *between* the five convolutions as in the thesis, so ``last_conv`` keeps 1/16 of the
input resolution (16x16 for 256x256 input) for Grad-CAM. Labels: A = 0, B = 1.

Inputs are maps normalised with :meth:`harmonize.preprocess.intensity.Normalization.to_network`
(each domain with its own scale; with the default ``shared`` normalisation both scales are equal).

Saved classifiers are ``.h5`` files with a ``harmonize_metadata`` JSON attribute, like generators
(:mod:`harmonize.models.saving`)::

    {"model": "scanner_classifier", "harmonize_version": "0.1.0",
     "image_size": [256, 256],                      # network input (rows, cols), after cropping
     "crop_box": [40, 216, 24, 232] or null,        # (row0, row1, col0, col1) cut before resizing
     "normalization": {"kind": "shared", "scale_a": 4300.0, "scale_b": 4300.0},
     "labels": {"A": "SIGNA", "B": "Optima_MR450w"}, "map_type": "T1", ...}
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from harmonize.errors import GeometryError, InputError, ModelError

CLASSIFIER_FILTERS = (16, 32, 128, 256, 512)
LAST_CONV = "last_conv"
LOGIT_LAYER = "scanner_logit"
MODEL_KIND = "scanner_classifier"
REQUIRED_KEYS = ("image_size", "normalization")
#: metadata value of "batch_norm_statistics" for classifiers whose statistics were recalibrated after
#: training (:func:`recalibrate_batch_norm`); cached classifiers without it are trained anew
BN_STATISTICS = "population"
#: images beyond this magnitude are not in the network range (physical units passed by mistake)
NETWORK_RANGE_LIMIT = 1.5


def _size(image_size):
    size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise GeometryError(f"image_size must be an int or (rows, cols), got {image_size!r}")
    return size


def build_scanner_classifier(image_size, filters=CLASSIFIER_FILTERS, dropout=0.3, batch_norm=True,
                             name="scanner_classifier"):
    """Build the thesis 2.3 scanner classifier (uncompiled).

    Parameters
    ----------
    image_size : int or (int, int)
        Input rows, columns; at least ``2 ** (len(filters) - 1)``.
    filters : sequence of int
        Filters of the 3x3 convolutions; 2x2 max pooling between consecutive ones. The last
        convolution is named ``"last_conv"`` (the Grad-CAM target).
    dropout : float
        Dropout rate before the output layer (0 disables it).
    batch_norm : bool
        Batch normalisation (momentum 0.9) after each convolution, before the ReLU. Not in the
        thesis text: without it the plain network collapsed to a constant output on maps whose
        scanners differ by a few percent (training loss flat at log 2), on every image size tried.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Input ``(batch, H, W, 1)`` float32 in [-1, 1]; output ``(batch, 1)`` float32
        P(scanner B). The pre-sigmoid logit is the output of layer ``"scanner_logit"``.

    Examples
    --------
    >>> model = build_scanner_classifier(64, filters=(4, 8, 8, 8, 8))   # doctest: +SKIP
    >>> model.get_layer("last_conv").output.shape                      # doctest: +SKIP
    (None, 4, 4, 8)
    """
    import keras
    from keras import layers

    rows, cols = _size(image_size)
    filters = tuple(int(f) for f in filters)
    if not filters:
        raise ValueError("filters must name at least one convolution")
    min_size = 2 ** (len(filters) - 1)
    if min(rows, cols) < min_size:
        raise GeometryError(f"image size {rows}x{cols}: the classifier with {len(filters)} convolutions "
                            f"pools {len(filters) - 1} times and needs at least {min_size}x{min_size} pixels")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    inputs = keras.Input((rows, cols, 1), name="image")
    x = inputs
    for i, n in enumerate(filters):
        last = i == len(filters) - 1
        conv_name = LAST_CONV if last else f"conv{i + 1}"
        if batch_norm:
            x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"{conv_name}_linear")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"{conv_name}_bn")(x)
            # the ReLU output is the layer Grad-CAM reads, so it carries the conv's name
            x = layers.ReLU(name=conv_name)(x)
        else:
            x = layers.Conv2D(n, 3, padding="same", activation="relu", name=conv_name)(x)
        if not last:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    logit = layers.Dense(1, name=LOGIT_LAYER)(x)
    # float32 output whatever the mixed-precision policy: probabilities near 0/1 need it
    prob = layers.Activation("sigmoid", dtype="float32", name="p_scanner_b")(logit)
    return keras.Model(inputs, prob, name=name)


def _network_images(images, name="images", image_size=None):
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise GeometryError(f"{name}: expected (N, H, W) or (N, H, W, 1) slices, got shape {np.shape(images)}")
    if image_size is not None and tuple(x.shape[1:3]) != tuple(image_size):
        raise GeometryError(f"{name}: slices of {x.shape[1]}x{x.shape[2]} pixels, the classifier takes "
                            f"{image_size[0]}x{image_size[1]}; crop/resize them as for training")
    if x.size and not np.all(np.isfinite(x)):
        raise InputError(f"{name}: contains NaN or infinite values")
    if x.size and np.abs(x).max() > NETWORK_RANGE_LIMIT:
        raise InputError(f"{name}: values up to {np.abs(x).max():.4g} are not in the network range [-1, 1]; "
                         "normalise the maps with Normalization.to_network first")
    return x


def train_scanner_classifier(images_a, images_b, *, epochs=10, batch_size=20, seed=0, augment_flip=True,
                             validation=None, verbose=0, filters=CLASSIFIER_FILTERS, dropout=0.3,
                             learning_rate=1e-3, model=None, batch_norm=True):
    """Train a scanner classifier on real maps of scanner A (label 0) and B (label 1).

    Thesis 2.3 settings by default: 10 epochs, batch 20, horizontal-flip augmentation, Adam,
    binary cross-entropy.

    Parameters
    ----------
    images_a, images_b : np.ndarray
        (N, H, W) or (N, H, W, 1) float32 slices in the network range [-1, 1].
    epochs, batch_size : int
        Training length and batch size.
    seed : int
        Seeds the weights, the per-epoch shuffling and the flips (``keras.utils.set_random_seed``);
        a run is repeatable where TensorFlow's CPU kernels are deterministic.
    augment_flip : bool
        Flip a random half of the slices left-right in each epoch (a new draw per epoch).
    validation : (np.ndarray, np.ndarray), optional
        (images_a, images_b) evaluated after each epoch (``val_loss``, ``val_accuracy``).
    verbose : int
        Keras verbosity.
    filters, dropout : see :func:`build_scanner_classifier`.
    learning_rate : float
        Adam learning rate.
    model : keras.Model, optional
        Continue training this (compiled or not) classifier instead of building a new one.

    Returns
    -------
    model : keras.Model
        The trained classifier.
    history : dict of str -> list of float
        Per-epoch ``loss``, ``accuracy`` (and ``val_loss``, ``val_accuracy``).
    """
    import keras

    xa = _network_images(images_a, "images_a")
    xb = _network_images(images_b, "images_b", xa.shape[1:3])
    if not len(xa) or not len(xb):
        raise InputError(f"the classifier needs slices of both scanners; got {len(xa)} of A and {len(xb)} of B")
    x = np.concatenate([xa, xb])
    y = np.concatenate([np.zeros(len(xa), np.float32), np.ones(len(xb), np.float32)])
    val = None
    if validation is not None:
        va = _network_images(validation[0], "validation images_a", x.shape[1:3])
        vb = _network_images(validation[1], "validation images_b", x.shape[1:3])
        val = (np.concatenate([va, vb]), np.concatenate([np.zeros(len(va), np.float32), np.ones(len(vb), np.float32)]))
    keras.utils.set_random_seed(int(seed))
    if model is None:
        model = build_scanner_classifier(x.shape[1:3], filters=filters, dropout=dropout, batch_norm=batch_norm)
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                      metrics=["accuracy"])
    history = {}
    for epoch in range(int(epochs)):
        # the order and the flips of epoch e are a pure function of (seed, e)
        rng = np.random.default_rng([int(seed), epoch])
        order = rng.permutation(len(x))
        xe = x[order]
        if augment_flip:
            flip = rng.random(len(xe)) < 0.5
            xe[flip] = xe[flip][:, :, ::-1]
        hist = model.fit(xe, y[order], batch_size=int(batch_size), epochs=epoch + 1, initial_epoch=epoch,
                         shuffle=False, validation_data=val, verbose=verbose)
        for key, values in hist.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    recalibrate_batch_norm(model, x)
    return model, history


def recalibrate_batch_norm(model, images, batch_size=64):
    """Set each BatchNormalization layer's moving statistics to the population statistics of its input.

    The moving averages that training keeps are averages of per-batch statistics taken while the
    weights were still changing, each computed with the layers before it in training mode. At
    inference every layer uses the moving statistics of the layers before it, so small offsets
    compound: on the built-in maps, whose scanners differ by a few percent, a classifier with 92 %
    training accuracy called every slice, training slices included, "A" in inference mode. This
    pass (as in SWA's ``bn_update``) runs ``images`` through the trained network in inference mode
    and sets the layers' statistics one after another, each from inputs produced with the layers
    before it already recalibrated. A model without batch normalisation is left unchanged.

    Parameters
    ----------
    model : keras.Model
        A functional model (the classifier).
    images : np.ndarray
        (N, H, W, 1) network-range inputs, normally the training slices.
    batch_size : int
        Slices per forward pass.

    Returns
    -------
    int
        The number of layers recalibrated.
    """
    import keras

    layers_bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    x = _network_images(images, "recalibration images")
    for layer in layers_bn:
        probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.input)
        total = total_sq = 0.0
        count = 0
        for start in range(0, len(x), int(batch_size)):
            act = np.asarray(probe(x[start:start + int(batch_size)], training=False), np.float64)
            act = act.reshape(-1, act.shape[-1])
            total = total + act.sum(axis=0)
            total_sq = total_sq + (act * act).sum(axis=0)
            count += len(act)
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, 0.0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
    return len(layers_bn)


_PREDICT_FNS = weakref.WeakKeyDictionary()


def _predict_fn(model):
    import tensorflow as tf

    fn = _PREDICT_FNS.get(model)
    if fn is None:
        shape = tuple(model.inputs[0].shape[1:])
        # a weak reference, so the cache entry does not keep its own key (the model) alive
        ref = weakref.ref(model)
        # one trace for every batch size: no retracing on the last, smaller batch
        fn = tf.function(lambda x: ref()(x, training=False),
                         input_signature=[tf.TensorSpec((None,) + shape, tf.float32)])
        _PREDICT_FNS[model] = fn
    return fn


def predict_scanner(model, images, batch_size=64):
    """P(scanner B) of each slice.

    Parameters
    ----------
    model : keras.Model
        A scanner classifier (sigmoid output).
    images : np.ndarray
        (N, H, W), (N, H, W, 1) or one (H, W) slice in the network range [-1, 1].
    batch_size : int
        Slices per forward pass.

    Returns
    -------
    np.ndarray
        (N,) float64 probabilities that each slice comes from scanner B (> 0.5: called B).
    """
    x = _network_images(images, "images", tuple(model.inputs[0].shape[1:3]))
    if not len(x):
        return np.zeros(0)
    fn = _predict_fn(model)
    out = [np.asarray(fn(x[i:i + int(batch_size)])).reshape(-1) for i in range(0, len(x), int(batch_size))]
    return np.concatenate(out).astype(np.float64)


def classifier_accuracy(model, images_a=None, images_b=None, batch_size=64, threshold=0.5):
    """Accuracy of the classifier on slices of known scanner (thesis Tables 3 and 7).

    Parameters
    ----------
    images_a, images_b : np.ndarray, optional
        Slices that should be called A (label 0) / B (label 1), network range. For Table 7 pass
        fake B as ``images_b``: the accuracy is then the share of fake B called B.

    Returns
    -------
    dict
        ``accuracy`` (all slices), ``accuracy_a``, ``accuracy_b``, ``n_a``, ``n_b``,
        ``mean_p_b_a`` / ``mean_p_b_b`` (mean P(B) of each group); NaN for an absent group.
    """
    out, correct = {}, []
    for dom, imgs, label in (("a", images_a, 0), ("b", images_b, 1)):
        p = predict_scanner(model, imgs, batch_size) if imgs is not None else np.zeros(0)
        hit = (p > threshold) == bool(label)
        correct.append(hit)
        out[f"accuracy_{dom}"] = float(hit.mean()) if len(p) else float("nan")
        out[f"n_{dom}"] = len(p)
        out[f"mean_p_b_{dom}"] = float(p.mean()) if len(p) else float("nan")
    allhits = np.concatenate(correct)
    out["accuracy"] = float(allhits.mean()) if len(allhits) else float("nan")
    return out


def save_classifier(model, path, metadata):
    """Save a classifier to ``path`` (.h5) atomically with ``metadata`` (see module docstring).

    ``metadata`` needs ``image_size`` and ``normalization`` (a dict or a Normalization); ``labels``,
    ``crop_box``, ``map_type`` are recommended. Returns the written path.
    """
    from harmonize.models.saving import save_model_file

    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelError(f"{Path(path)}: classifier metadata lacks {', '.join(missing)}")
    meta = {**metadata, "model": MODEL_KIND}
    if hasattr(meta["normalization"], "to_dict"):
        meta["normalization"] = meta["normalization"].to_dict()
    meta.setdefault("crop_box", None)
    meta.setdefault("labels", {"A": "A", "B": "B"})
    return save_model_file(model, path, meta, "classifier")


def load_classifier(path):
    """Load a classifier written by :func:`save_classifier`. Returns ``(keras_model, metadata)``."""
    from harmonize.models.saving import load_model_file, read_model_metadata

    meta = read_model_metadata(path, "classifier") or {}
    if meta.get("model") != MODEL_KIND:
        raise ModelError(f"{path}: not a harmonize scanner classifier; save classifiers with "
                         "harmonize.models.classifier.save_classifier")
    return load_model_file(path, "classifier"), meta


def subject_split(subjects, test_fraction=0.2, seed=0):
    """Split subject ids into train and test sets (never one subject in both).

    Parameters
    ----------
    subjects : sequence of str
        Subject ids; repeats allowed (e.g. one entry per slice of both scanners).
    test_fraction : float
        Share of subjects for testing; at least one subject goes to each side.
    seed : int
        The draw is a function of the seed and the *set* of subjects (not their order).

    Returns
    -------
    train_subjects, test_subjects : list of str
        Sorted, disjoint.

    Examples
    --------
    >>> train, test = subject_split(["s1", "s1", "s2", "s3", "s4", "s5"], 0.2, seed=0)
    >>> len(train), len(test), set(train) & set(test)
    (4, 1, set())
    >>> # select the slices: np.isin(split.a.subjects, train)
    """
    unique = sorted(set(np.asarray(subjects).astype(str).reshape(-1).tolist()))
    if len(unique) < 2:
        raise InputError(f"subjects {unique}: a split by subject needs at least 2 subjects")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n_test = min(max(1, int(round(test_fraction * len(unique)))), len(unique) - 1)
    order = np.random.default_rng(int(seed)).permutation(len(unique))
    test = sorted(unique[i] for i in order[:n_test])
    train = sorted(s for s in unique if s not in set(test))
    return train, test


def center_crop_box(masks, margin=8, multiple=16):
    """A crop box around the head, shared by all slices (the thesis's "cropped image" variant).

    The box covers the union of all masks plus ``margin`` pixels, is rounded up to a multiple of
    ``multiple`` pixels (so the classifier's pooling divides it evenly), centred on the union's
    bounding box and kept inside the image.

    Parameters
    ----------
    masks : np.ndarray of bool
        (N, H, W) or (H, W) foreground masks.
    margin : int
        Pixels added on each side of the bounding box.
    multiple : int
        Box sides are rounded up to a multiple of this (unless that exceeds the image).

    Returns
    -------
    tuple of int
        ``(row0, row1, col0, col1)``, half-open: ``images[..., row0:row1, col0:col1]``.
    """
    m = np.asarray(masks).astype(bool)
    if m.ndim == 3:
        m = m.any(axis=0)
    if m.ndim != 2:
        raise GeometryError(f"masks: expected (N, H, W) or (H, W), got shape {np.shape(masks)}")
    if not m.any():
        raise InputError("masks: all empty, no head to crop around; check the foreground masks")
    box = []
    for axis, size in ((1, m.shape[0]), (0, m.shape[1])):
        idx = np.flatnonzero(m.any(axis=axis))
        lo, hi = idx[0] - int(margin), idx[-1] + 1 + int(margin)
        length = min(int(np.ceil((hi - lo) / multiple) * multiple), size)
        start = int(round((lo + hi - length) / 2))
        start = min(max(start, 0), size - length)
        box += [start, start + length]
    return tuple(int(v) for v in box)


def apply_crop_box(images, box):
    """Cut ``images[..., row0:row1, col0:col1]`` (any leading axes; a None box returns ``images``)."""
    if box is None:
        return images
    r0, r1, c0, c1 = (int(v) for v in box)
    arr = np.asarray(images)
    if r1 > arr.shape[-2] or c1 > arr.shape[-1] or r0 < 0 or c0 < 0:
        raise GeometryError(f"crop box {tuple(box)} lies outside slices of {arr.shape[-2]}x{arr.shape[-1]} pixels")
    return arr[..., r0:r1, c0:c1]
