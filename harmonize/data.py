"""tf.data pipelines that feed the CycleGAN: unpaired and paired batches, with augmentation.

Every dataset yields ``(real_a, real_b)``: float32 tensors of shape (batch, H, W, 1) in the
network range [-1, 1] (:meth:`Normalization.to_network` with domain 'A' / 'B'; background 0 ->
-1), batches of exactly ``batch_size`` (the remainder of an epoch is dropped).

Reproducibility: the order of epoch ``e`` and its augmentation are a pure function of
``(seed, e)``. The slice order comes from ``numpy.random.default_rng([seed, e, stream])`` and
the augmentation from stateless TensorFlow random ops keyed on a per-batch seed drawn the same
way, so a run resumed at epoch ``e`` sees exactly the batches it would have seen had it never
stopped, whatever happened before.

unpaired
    A and B are shuffled independently (thesis Experiments 1-4). An epoch has
    ``min(N_A, N_B) // batch_size`` steps; the slices of the larger domain left out of one epoch
    come back in the next (each epoch is a new permutation).
paired
    Batches of corresponding slices (same subject, same slice index: ``split.pairs``), by default
    the registered copies when the dataset has them (Experiment 5). Both images of a pair get
    the same augmentation, so they stay aligned.

Augmentation (thesis: flips and small geometric jitter): random horizontal flip, scale
0.9-1.1 (a zoom-in is a crop), translation up to +-5 % of the size and rotation up to +-5
degrees, as one bilinear affine resampling per image; pixels from outside the image are
filled with -1 (0 in physical units, i.e. background). Values stay within [-1, 1].

Examples
--------
>>> ds = PreparedDataset("dataset.h5")                                        # doctest: +SKIP
>>> train = ds.split("train")                                                 # doctest: +SKIP
>>> stream = training_stream(train, ds.normalization, 5, seed=0, start_epoch=0,
...                          epochs=20, augment=True)                         # doctest: +SKIP
>>> model.fit(stream, epochs=20, steps_per_epoch=steps_per_epoch(train, 5))   # doctest: +SKIP
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from harmonize.errors import ConfigError

#: augmentation ranges (thesis-sized jitter: the maps are already well centred)
FLIP_PROBABILITY = 0.5
SCALE_RANGE = (0.9, 1.1)
TRANSLATE_FRACTION = 0.05
ROTATE_DEGREES = 5.0

# independent random streams of one epoch
_STREAM_A, _STREAM_B, _STREAM_PAIRS, _STREAM_AUG_A, _STREAM_AUG_B = range(5)


def steps_per_epoch(split, batch_size, paired=False):
    """Number of full batches in one epoch.

    Parameters
    ----------
    split : SplitData
        A split of a :class:`~harmonize.io.dataset.PreparedDataset`.
    batch_size : int
    paired : bool
        Count pairs of corresponding slices instead of ``min(N_A, N_B)``.

    Raises
    ------
    ConfigError
        The split has fewer slices (or pairs) than one batch.
    """
    batch_size = _check_batch(batch_size)
    n = len(split.pairs) if paired else min(len(split.a), len(split.b))
    steps = n // batch_size
    if steps == 0:
        what = "corresponding slice pairs" if paired else "slices in its smaller domain"
        raise ConfigError(f"{_split_name(split)}: {n} {what} is less than one batch of {batch_size}; "
                          "use a smaller --batch-size or more training subjects")
    return steps


def unpaired_dataset(split, norm, batch_size, seed, epoch=0, augment=False, registered=False):
    """One epoch of unpaired batches (A and B shuffled independently).

    Parameters
    ----------
    split : SplitData
    norm : Normalization
        Maps physical units to [-1, 1] per domain.
    batch_size : int
    seed : int
    epoch : int
        Epoch number; with ``seed`` it fixes the order and the augmentation.
    augment : bool
        Random flip / scale / translate / rotate (see module docstring), independent for A and B.
    registered : bool
        Use the registered copies (requires a dataset prepared with ``--register``).

    Returns
    -------
    tf.data.Dataset
        Yields ``(real_a, real_b)``, float32 (batch, H, W, 1) in [-1, 1].
    """
    return training_stream(split, norm, batch_size, seed, epoch, epoch + 1, paired=False, augment=augment,
                           registered=registered)


def paired_dataset(split, norm, batch_size, seed, epoch=0, augment=False, registered=None):
    """One epoch of batches of corresponding slices (row k of ``real_a`` and ``real_b`` are a pair).

    Parameters
    ----------
    split, norm, batch_size, seed, epoch
        As in :func:`unpaired_dataset`; the pairs are shuffled together.
    augment : bool
        The same random transform for both images of a pair.
    registered : bool or None
        None (default): the registered copies when the dataset has them, otherwise the original
        slices with a warning. True: require registered copies. False: original slices (e.g.
        Experiment 6, unregistered T1 vs T2).

    Returns
    -------
    tf.data.Dataset
        Yields ``(real_a, real_b)``, float32 (batch, H, W, 1) in [-1, 1].
    """
    return training_stream(split, norm, batch_size, seed, epoch, epoch + 1, paired=True, augment=augment,
                           registered=registered)


def training_stream(split, norm, batch_size, seed, start_epoch, epochs, paired=False, augment=False,
                    registered=None):
    """Epochs ``start_epoch .. epochs-1`` back to back as one dataset (for ``fit(initial_epoch=...)``).

    Epoch ``e`` of the stream is batch for batch the dataset :func:`unpaired_dataset` /
    :func:`paired_dataset` returns for ``epoch=e``. Use with
    ``model.fit(stream, initial_epoch=start_epoch, epochs=epochs, steps_per_epoch=steps_per_epoch(...))``.

    Parameters
    ----------
    split, norm, batch_size, seed, augment
        As in :func:`unpaired_dataset`.
    start_epoch, epochs : int
        First epoch and the epoch count to stop before.
    paired : bool
        Batches of corresponding slices (:func:`paired_dataset`) instead of unpaired.
    registered : bool or None
        Use the registered copies. None: registered copies for paired batches when present,
        original slices for unpaired ones.

    Returns
    -------
    tf.data.Dataset
        Yields ``(real_a, real_b)``, float32 (batch, H, W, 1) in [-1, 1];
        ``(epochs - start_epoch) * steps_per_epoch(split, batch_size, paired)`` batches.
    """
    import tensorflow as tf

    batch_size = _check_batch(batch_size)
    start_epoch, epochs = int(start_epoch), int(epochs)
    if start_epoch < 0 or epochs < start_epoch:
        raise ConfigError(f"epochs {start_epoch}..{epochs}: need 0 <= start_epoch <= epochs")
    steps = steps_per_epoch(split, batch_size, paired=paired)
    images_a, images_b = _network_images(split, norm, paired, registered)

    idx_a, idx_b, seeds_a, seeds_b = [], [], [], []
    for epoch in range(start_epoch, epochs):
        ia, ib, sa, sb = _epoch_plan(split, batch_size, seed, epoch, steps, paired)
        idx_a.append(ia), idx_b.append(ib), seeds_a.append(sa), seeds_b.append(sb)
    shape = (0, batch_size)
    idx_a = np.concatenate(idx_a) if idx_a else np.zeros(shape, np.int32)
    idx_b = np.concatenate(idx_b) if idx_b else np.zeros(shape, np.int32)
    seeds_a = np.concatenate(seeds_a) if seeds_a else np.zeros((0, 2), np.int32)
    seeds_b = np.concatenate(seeds_b) if seeds_b else np.zeros((0, 2), np.int32)

    # The arrays live once in memory as eager tensors; each element of the stream is one batch of
    # indices (+ augmentation seeds), gathered in the map. (Indices rather than image slices keep
    # a 50-epoch stream as small as one epoch.)
    table_a = tf.convert_to_tensor(images_a[..., None])
    table_b = tf.convert_to_tensor(images_b[..., None])

    def load(ia, ib, sa, sb):
        real_a = tf.gather(table_a, ia)
        real_b = tf.gather(table_b, ib)
        if augment:
            real_a = augment_batch(real_a, sa)
            real_b = augment_batch(real_b, sb)
        return real_a, real_b

    ds = tf.data.Dataset.from_tensor_slices((idx_a, idx_b, seeds_a, seeds_b))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_batch(images, seed):
    """Randomly flip, scale, translate and rotate a batch, as the thesis's augmentation.

    Parameters
    ----------
    images : tf.Tensor
        (batch, H, W, C) float32 in the network range; background is -1.
    seed : tf.Tensor
        (2,) int32 seed of TensorFlow's stateless random ops: the same seed gives the same
        transform for every image position in the batch (used for the two images of a pair).

    Returns
    -------
    tf.Tensor
        Same shape and dtype; pixels from outside the image are -1.
    """
    import keras
    import tensorflow as tf

    transforms = _random_transforms(tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2], seed)
    out = keras.ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="constant",
                                           fill_value=-1.0, data_format="channels_last")
    return tf.clip_by_value(tf.cast(out, images.dtype), -1.0, 1.0)


def _random_transforms(batch, height, width, seed):
    """(batch, 8) projective transforms (output -> input pixel) of random flip/scale/shift/rotation."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([batch, 5], seed=seed, dtype=tf.float32)
    flip = tf.where(u[:, 0] < FLIP_PROBABILITY, -1.0, 1.0)
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 1]
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    tx = (2.0 * u[:, 2] - 1.0) * TRANSLATE_FRACTION * w
    ty = (2.0 * u[:, 3] - 1.0) * TRANSLATE_FRACTION * h
    theta = (2.0 * u[:, 4] - 1.0) * ROTATE_DEGREES * (math.pi / 180.0)
    cx = (w - 1.0) / 2.0
    cy = (h - 1.0) / 2.0
    # forward: p_out = c + s R(theta) F (p_in - c) + t; inverse (what the op wants):
    # p_in = c + F R(-theta) / s (p_out - c - t) = M p_out + (c - M (c + t))
    cos = tf.cos(theta) / scale
    sin = tf.sin(theta) / scale
    m00, m01 = flip * cos, flip * sin
    m10, m11 = -sin, cos
    ox, oy = cx + tx, cy + ty
    a2 = cx - (m00 * ox + m01 * oy)
    b2 = cy - (m10 * ox + m11 * oy)
    zeros = tf.zeros_like(cos)
    return tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)


def _epoch_plan(split, batch_size, seed, epoch, steps, paired):
    """Slice indices (steps, batch) of A and B and augmentation seeds (steps, 2) of one epoch."""
    n = steps * batch_size

    def rng(stream):
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), stream])

    if paired:
        order = rng(_STREAM_PAIRS).permutation(len(split.pairs))[:n]
        idx_a = split.pairs[order, 0]
        idx_b = split.pairs[order, 1]
        seeds_a = rng(_STREAM_AUG_A).integers(0, 2**31 - 1, size=(steps, 2), dtype=np.int64)
        seeds_b = seeds_a  # the same transform for both images of a pair
    else:
        idx_a = rng(_STREAM_A).permutation(len(split.a))[:n]
        idx_b = rng(_STREAM_B).permutation(len(split.b))[:n]
        seeds_a = rng(_STREAM_AUG_A).integers(0, 2**31 - 1, size=(steps, 2), dtype=np.int64)
        seeds_b = rng(_STREAM_AUG_B).integers(0, 2**31 - 1, size=(steps, 2), dtype=np.int64)
    return (idx_a.reshape(steps, batch_size).astype(np.int32), idx_b.reshape(steps, batch_size).astype(np.int32),
            seeds_a.astype(np.int32), seeds_b.astype(np.int32))


def _network_images(split, norm, paired, registered):
    """The (N, H, W) float32 network-range arrays of A and B that the pipeline draws from."""
    use_registered = registered
    has_registered = split.a.registered is not None and split.b.registered is not None
    if registered is None:
        use_registered = paired and has_registered
        if paired and not has_registered:
            warnings.warn("paired batches from unregistered slices: the dataset has no registered copies "
                          "(prepare it with --register for thesis Experiment 5)", stacklevel=3)
    if use_registered and not has_registered:
        raise ConfigError(f"{_split_name(split)}: the dataset has no registered copies; "
                          "prepare it with 'harmonize prepare --register' or train without registered data")
    if use_registered:
        a, b = split.a.registered, split.b.registered
    else:
        a, b = split.a.images, split.b.images
    # Test slices may exceed the training maximum the scale came from; the networks' range is
    # [-1, 1] (tanh), so clip there.
    a = np.clip(norm.to_network(np.asarray(a, np.float32), "A"), -1.0, 1.0).astype(np.float32)
    b = np.clip(norm.to_network(np.asarray(b, np.float32), "B"), -1.0, 1.0).astype(np.float32)
    return a, b


def _split_name(split):
    return f"{split.name} split" if getattr(split, "name", "") else "dataset split"


def _check_batch(batch_size):
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def align_to_source(split, progress=False):
    """A copy of ``split`` whose paired "registered" slices keep A untouched and move B onto A.

    The thesis moves both slices of a pair half way (neither scanner favoured). For training an
    A -> B generator on paired slices that puts interpolated (smoothed) A slices at its input,
    while it is later applied to raw A maps. Here A's registered copy is the raw slice and B's is
    translated by the full registration shift (cubic B-spline), so the input domain is exactly the
    one the generator will see. Slices without a partner keep their own values.

    Parameters
    ----------
    split : harmonize.io.dataset.SplitData
        With ``pair_shifts`` (datasets prepared with ``--register``).

    Returns
    -------
    SplitData
    """
    import dataclasses

    from harmonize.errors import ConfigError
    from harmonize.preprocess.registration import translate

    if split.pair_shifts is None:
        raise ConfigError(f"data.align: 'source' needs registration shifts; prepare the dataset with --register "
                          f"(the {split.name or 'given'} split has none)")
    reg_a = split.a.images.copy()
    reg_b = split.b.images.copy()
    for (i, j), shift in zip(split.pairs, split.pair_shifts):
        spacing = tuple(float(v) for v in split.b.spacing[j][:2])
        reg_b[j] = translate(split.b.images[j], (-float(shift[0]), -float(shift[1])), spacing)
    a = dataclasses.replace(split.a, registered=reg_a)
    b = dataclasses.replace(split.b, registered=reg_b)
    return dataclasses.replace(split, a=a, b=b)


def align_to_counterpart(split):
    """A copy of ``split`` whose paired "registered" slices are raw A and B's 3-D registered counterpart.

    ``harmonize prepare --register-volumes`` registers each subject's B volume onto its A volume
    (rigid, 3-D) and stores, per A slice, B resampled onto it (:mod:`harmonize.preprocess.rigid`).
    Unlike the in-plane slice registration this also undoes the head's rotation and the offset
    between the two slice stacks, so the paired targets show the same anatomy as the A slice. Pairs
    whose A slice has no counterpart (B's stack does not cover it) are dropped.

    Parameters
    ----------
    split : harmonize.io.dataset.SplitData
        With ``a.counterpart``.

    Returns
    -------
    SplitData
        ``a.registered`` = the raw A slices, ``b.registered[j]`` = the counterpart of the A slice
        paired with B slice ``j`` (B's own slice where it has no pair), the pairs that have one.
    """
    import dataclasses

    counterpart = split.a.counterpart
    if counterpart is None:
        raise ConfigError(f"data.align: 'volume' needs the 3-D registered counterparts of the A slices; prepare the "
                          f"dataset with 'harmonize prepare --register-volumes' (the {split.name or 'given'} split "
                          "has none)")
    has = np.isfinite(counterpart[:, 0, 0])
    keep = has[split.pairs[:, 0]] if len(split.pairs) else np.zeros(0, bool)
    if len(split.pairs) and not keep.any():
        raise ConfigError(f"data.align: 'volume': no A slice of the {split.name or 'given'} split has a counterpart "
                          "(the 3-D registrations failed or B's slices cover none of A's); see the warnings of "
                          "'harmonize prepare --register-volumes'")
    pairs = split.pairs[keep]
    reg_b = split.b.images.copy()
    reg_b[pairs[:, 1]] = counterpart[pairs[:, 0]]
    a = dataclasses.replace(split.a, registered=split.a.images.copy())
    b = dataclasses.replace(split.b, registered=reg_b)
    shifts = None if split.pair_shifts is None else split.pair_shifts[keep]
    return dataclasses.replace(split, a=a, b=b, pairs=pairs, pair_shifts=shifts)
