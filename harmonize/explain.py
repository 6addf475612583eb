"""Grad-CAM attention maps of the scanner classifier (thesis Figs. 9-12).

Grad-CAM (Selvaraju et al., IJCV 128, 2020) weighs the feature maps ``A^k`` of a convolution
layer by the spatial mean of the gradient of the class score ``y^c`` with respect to them,
``alpha_k = mean_ij d y^c / d A^k_ij``, and keeps the positive part of the weighted sum,
``L = ReLU(sum_k alpha_k A^k)``: the regions whose features raise the class score. As in the
keras-io ``vision/grad_cam.py`` example, a second functional model maps the classifier's input
to ``[last_conv output, score]`` and one gradient tape gives the gradients.

The scanner classifier has one sigmoid output, P(B). The class score is its logit (the output of
layer ``"scanner_logit"`` when present, which does not saturate like the probability): ``+logit``
for class B (1) and ``-logit`` = logit of P(A) for class A (0). For a model without that layer
the probability is used, ``p`` for B and ``1 - p`` for A; for a softmax output, the class column.
"""
from __future__ import annotations

import numpy as np

from harmonize.errors import ModelError
from harmonize.models.classifier import LAST_CONV, LOGIT_LAYER, _network_images


def _grad_model(model, layer_name):
    import keras

    try:
        conv = model.get_layer(layer_name)
    except ValueError as err:
        names = [layer.name for layer in model.layers if "conv" in layer.name]
        raise ModelError(f"model {model.name!r}: no layer named {layer_name!r} (convolution layers: "
                         f"{', '.join(names) or 'none'}); pass layer_name=") from err
    try:
        score = model.get_layer(LOGIT_LAYER).output
        is_logit = True
    except ValueError:
        score = model.outputs[0]
        is_logit = False
    return keras.Model(model.inputs, [conv.output, score]), is_logit


def grad_cam(model, images, layer_name=LAST_CONV, class_index=None, batch_size=32, return_scores=False):
    """Grad-CAM heatmaps of a classifier for a stack of slices.

    Parameters
    ----------
    model : keras.Model
        A functional classifier, e.g. from :func:`harmonize.models.classifier.build_scanner_classifier`.
    images : np.ndarray
        (N, H, W), (N, H, W, 1) or (H, W) in the network range [-1, 1].
    layer_name : str
        The convolution layer explained (default ``"last_conv"``).
    class_index : int or array of int, optional
        Class explained per slice: 1 = scanner B, 0 = scanner A. Default: the predicted class
        of each slice (P(B) > 0.5 -> 1).
    batch_size : int
        Slices per gradient computation.
    return_scores : bool
        Also return the model's P(B) (or class scores) for each slice.

    Returns
    -------
    heatmaps : np.ndarray
        (N, H, W) float32 in [0, 1]: the ReLU'd class activation map upsampled (bilinear) to the
        image size and divided by its maximum; all zero where no region raises the class score.
    probabilities : np.ndarray
        (N,) P(B) for a single sigmoid output, or (N, classes); only with ``return_scores``.

    Examples
    --------
    >>> heat = grad_cam(classifier, to_network(slices), class_index=1)    # doctest: +SKIP
    >>> heat.shape == slices.shape, float(heat.max())                     # doctest: +SKIP
    (True, 1.0)
    """
    import tensorflow as tf

    size = tuple(model.inputs[0].shape[1:3])
    x = _network_images(images, "images", size)
    grad_model, is_logit = _grad_model(model, layer_name)
    n = len(x)
    if class_index is None:
        classes = None
    else:
        classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64).reshape(-1), (n,)).copy()
    heatmaps = np.zeros(x.shape[:3], np.float32)
    scores = []
    for start in range(0, n, int(batch_size)):
        xb = tf.convert_to_tensor(x[start:start + int(batch_size)])
        with tf.GradientTape() as tape:
            conv, out = grad_model(xb, training=False)
            out = tf.cast(out, tf.float32)
            if out.shape[-1] == 1:
                s = out[:, 0]
                prob = tf.sigmoid(s) if is_logit else s
                cls = (prob > 0.5) if classes is None else tf.constant(classes[start:start + len(xb)] == 1)
                if is_logit:
                    score = tf.where(cls, s, -s)
                else:
                    score = tf.where(cls, s, 1.0 - s)
                scores.append(prob.numpy())
            else:
                cls = tf.argmax(out, axis=-1) if classes is None else tf.constant(classes[start:start + len(xb)])
                score = tf.gather(out, cls, axis=1, batch_dims=1)
                scores.append(out.numpy())
            # per-slice scores are independent (no batch statistics at inference): one sum, one tape
            total = tf.reduce_sum(score)
        grads = tf.cast(tape.gradient(total, conv), tf.float32)
        conv = tf.cast(conv, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2))                       # alpha_k: (b, channels)
        cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", conv, weights))
        cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.where(peak > 0, peak, 1.0), 0.0)
        heatmaps[start:start + len(xb)] = np.clip(cam.numpy(), 0.0, 1.0)
    if return_scores:
        return heatmaps, np.concatenate(scores) if scores else np.zeros(0)
    return heatmaps


def heatmap_mass(heatmaps, region):
    """Share of each heatmap's total inside a region (a summary of where the classifier looks).

    Parameters
    ----------
    heatmaps : np.ndarray
        (N, H, W) non-negative maps from :func:`grad_cam`.
    region : np.ndarray of bool
        (H, W) or (N, H, W), e.g. the brain mask or a tissue.

    Returns
    -------
    np.ndarray
        (N,) in [0, 1]; NaN for an all-zero heatmap.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    r = np.broadcast_to(np.asarray(region, bool), h.shape)
    total = h.sum(axis=(1, 2))
    inside = np.where(r, h, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)
