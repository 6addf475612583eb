"""Image-comparison metrics: one definition of each, used by ``assess``, ``evaluate`` and benchmarks.

NumPy arrays in (physical units: ms for T1/T2, % for PD, or the network range), Python floats,
dicts or pandas DataFrames out. Slices are ``(H, W)``; stacks of slices are ``(N, H, W)`` and every
structural metric works slice by slice (2-D windows), never across slices.

SSIM settings are those of the training DSSIM loss (:func:`tf.image.ssim`): an 11-tap Gaussian
window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariances and an explicit
``data_range``. Float maps have no natural range, so ``data_range`` is always given by the caller
(use one value for every method compared, e.g. the maximum of the reference maps), otherwise SSIM
values are not comparable.

Thesis tables these functions reproduce (TU Delft MSc 2021, ch. 3):

=============================  ==========================================================
Fig. 7 / 16                    :func:`average_histogram` (500 bins, physical units)
Table 2                        :func:`paired_slice_metrics` (mean SSIM, NRMSE of corresponding slices)
Tables 5, 6                    :func:`pairwise_table` (correlation, mean SSIM, mean NRMSE, six pairs)
Figs. 16... (MI)               :func:`mutual_information`
beyond the thesis              :func:`truth_errors`, :func:`truth_error_table` (errors vs paired truth)
=============================  ==========================================================
"""
from __future__ import annotations

import numpy as np

from harmonize.errors import GeometryError, InputError

#: SSIM settings shared with the DSSIM training loss (harmonize.losses uses tf.image.ssim)
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 11

#: the six image pairs of thesis Tables 5 and 6 (first = reference of the asymmetric NRMSE)
DEFAULT_PAIRS = (("A", "B"), ("A", "fakeA"), ("A", "fakeB"), ("B", "fakeA"), ("B", "fakeB"), ("fakeA", "fakeB"))

#: tissue labels of the prepared dataset / simulator (0 background, 4 other head tissue)
TISSUE_LABELS = {1: "CSF", 2: "GM", 3: "WM"}

NRMSE_NORMALIZATIONS = ("euclidean", "min-max", "mean")


# --------------------------------------------------------------------------- input checks

def _array(x, name, ndim=(2, 3)):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise GeometryError(f"{name}: expected a {want} array, got shape {arr.shape}; pass (H, W) slices or (N, H, W) stacks")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN or infinite values; set them to 0 (background) before comparing")
    return arr


def _pair(x, y, names=("x", "y"), ndim=(2, 3)):
    x = _array(x, names[0], ndim)
    y = _array(y, names[1], ndim)
    if x.shape != y.shape:
        raise GeometryError(f"{names[0]} {x.shape} and {names[1]} {y.shape}: shapes differ; "
                            "compare images on the same voxel grid (resample or pair corresponding slices)")
    return x, y


def _mask(mask, shape, name="mask"):
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != shape:
        raise GeometryError(f"{name}: shape {m.shape} differs from the image shape {shape}; pass a mask on the same grid")
    return m.astype(bool)


def _data_range(data_range):
    try:
        value = float(data_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}") from err
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"data_range must be a positive number (e.g. the maximum of the reference maps), got {data_range!r}")
    return value


# --------------------------------------------------------------------------- SSIM

def ssim_map(x, y, data_range):
    """Local SSIM of two slices (or two stacks, slice by slice).

    Parameters
    ----------
    x, y : np.ndarray
        (H, W) or (N, H, W), same shape and units; H and W at least 11.
    data_range : float
        Dynamic range of the values (max - min possible), in the images' units.

    Returns
    -------
    np.ndarray
        float64 SSIM values, same shape as ``x`` (borders computed with reflected padding).
    """
    from skimage.metrics import structural_similarity

    x, y = _pair(x, y)
    data_range = _data_range(data_range)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise GeometryError(f"images of {x.shape[-2]}x{x.shape[-1]} pixels: SSIM needs at least "
                            f"{SSIM_WINDOW}x{SSIM_WINDOW}; compare larger images")
    xs, ys = (x, y) if x.ndim == 3 else (x[None], y[None])
    maps = np.empty_like(xs)
    for i in range(len(xs)):
        _, maps[i] = structural_similarity(xs[i], ys[i], data_range=data_range, gaussian_weights=True,
                                           sigma=SSIM_SIGMA, use_sample_covariance=False,
                                           K1=SSIM_K1, K2=SSIM_K2, full=True)
    return maps if x.ndim == 3 else maps[0]


def ssim(x, y, data_range, mask=None):
    """Structural similarity with the settings of the training DSSIM loss.

    Parameters
    ----------
    x, y : np.ndarray
        (H, W) slices or (N, H, W) stacks of corresponding slices, same units.
    data_range : float
        Dynamic range of the values in their units (e.g. 4000 ms for T1 maps in [0, 4000]);
        use the same value for every method you compare.
    mask : np.ndarray of bool, optional
        Same shape as ``x``. Without a mask: the mean SSIM of each slice over the region the 11x11
        window fits in (as :func:`tf.image.ssim`, which uses VALID filtering), averaged over slices.
        With a mask: the mean of the local SSIM map over the voxels inside the mask (pooled over
        all slices).

    Returns
    -------
    float
        SSIM in [-1, 1]; 1 for identical images. NaN when the mask is empty.

    Examples
    --------
    >>> x = np.linspace(0, 1000, 32 * 32).reshape(32, 32)
    >>> round(ssim(x, x, data_range=1000), 6)
    1.0
    """
    maps = ssim_map(x, y, data_range)
    x = np.asarray(x)
    mask = _mask(mask, x.shape)
    if mask is not None:
        return float(maps[mask].mean()) if mask.any() else float("nan")
    pad = (SSIM_WINDOW - 1) // 2
    maps = maps if maps.ndim == 3 else maps[None]
    return float(maps[:, pad:-pad, pad:-pad].mean(axis=(1, 2)).mean())


# --------------------------------------------------------------------------- NRMSE, correlation, MI

def nrmse(x, y, normalization="euclidean", mask=None):
    """Normalised root-mean-square error of ``y`` against the reference ``x``.

    Wraps :func:`skimage.metrics.normalized_root_mse` (``image_true=x``, ``image_test=y``). It is
    not symmetric: the first argument is the reference.

    Parameters
    ----------
    x, y : np.ndarray
        Reference and test images, any equal shape, same units.
    normalization : {'euclidean', 'min-max', 'mean'}
        ``'euclidean'``: ``||x - y|| / ||x||`` (the thesis Tables 2 and 6, values ~0.2-0.6 for
        unregistered slices of two scanners); ``'min-max'``: RMSE / (max(x) - min(x));
        ``'mean'``: RMSE / mean(x).
    mask : np.ndarray of bool, optional
        Compare only the voxels inside the mask.

    Returns
    -------
    float
        Dimensionless; 0 for identical images, ``inf`` when the reference is all zero.

    Examples
    --------
    >>> x = np.full((4, 4), 1000.0)
    >>> round(nrmse(x, 1.1 * x), 6)          # a 10 % error everywhere
    0.1
    """
    from skimage.metrics import normalized_root_mse

    if normalization not in NRMSE_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NRMSE_NORMALIZATIONS)}, got {normalization!r}")
    x, y = _pair(x, y, ndim=(1, 2, 3))
    mask = _mask(mask, x.shape)
    if mask is not None:
        x, y = x[mask], y[mask]
    if x.size == 0:
        return float("nan")
    denom_zero = {"euclidean": not np.any(x), "min-max": np.ptp(x) == 0, "mean": np.mean(x) == 0}[normalization]
    if denom_zero:
        return float("inf") if np.any(x != y) else 0.0
    return float(normalized_root_mse(x, y, normalization=normalization))


def cross_correlation(x, y, mask=None):
    """Pearson correlation coefficient of the voxel values of two images (thesis Table 5).

    Parameters
    ----------
    x, y : np.ndarray
        Any equal shape (a slice or a stack of corresponding slices: all voxels are pooled).
    mask : np.ndarray of bool, optional
        Use only the voxels inside the mask.

    Returns
    -------
    float
        In [-1, 1]; NaN when either image is constant (correlation undefined).

    Examples
    --------
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> cross_correlation(x, 2 * x + 3)
    1.0
    """
    x, y = _pair(x, y, ndim=(1, 2, 3))
    mask = _mask(mask, x.shape)
    if mask is not None:
        x, y = x[mask], y[mask]
    x = x.ravel() - x.mean() if x.size else x.ravel()
    y = y.ravel() - y.mean() if y.size else y.ravel()
    denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if x.size == 0 or denom == 0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / denom, -1.0, 1.0))


def _value_range(arrays, value_range):
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
        return lo, hi
    vals = [a for a in arrays if a.size]
    if not vals:
        return 0.0, 1.0
    lo = min(float(a.min()) for a in vals)
    hi = max(float(a.max()) for a in vals)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def entropy(x, bins=100, value_range=None, mask=None):
    """Shannon entropy (nats) of the histogram of the voxel values.

    Uses ``bins`` equal-width bins over ``value_range`` (default: min to max of ``x``).
    """
    x = _array(x, "x", ndim=(1, 2, 3))
    mask = _mask(mask, x.shape)
    if mask is not None:
        x = x[mask]
    counts, _ = np.histogram(x, bins=bins, range=_value_range([x], value_range))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(x, y, bins=100, value_range=None, mask=None):
    """Mutual information (nats) of the voxel values of two images from their joint histogram.

    ``MI = sum_ij p_ij ln(p_ij / (p_i p_j))`` with ``p_ij`` the joint histogram of the
    corresponding voxels normalised to 1, on ``bins`` x ``bins`` equal-width bins. Both axes use
    the same edges, so ``mutual_information(x, x) == entropy(x)`` with the same bins and range.
    The value depends on the binning; compare MI values only when computed with the same
    ``bins`` and ``value_range``.

    Parameters
    ----------
    x, y : np.ndarray
        Any equal shape; corresponding voxels are paired.
    bins : int
        Bins per axis.
    value_range : (float, float), optional
        (low, high) in the images' units for both axes; values outside are ignored. Default:
        the joint min and max of ``x`` and ``y``.
    mask : np.ndarray of bool, optional
        Use only the voxels inside the mask.

    Returns
    -------
    float
        MI in nats (>= 0). Divide by ln 2 for bits.
    """
    x, y = _pair(x, y, ndim=(1, 2, 3))
    mask = _mask(mask, x.shape)
    if mask is not None:
        x, y = x[mask], y[mask]
    lo, hi = _value_range([x, y], value_range)
    joint, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=bins, range=[[lo, hi], [lo, hi]])
    total = joint.sum()
    if total == 0:
        return float("nan")
    pxy = joint / total
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float(max((pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])).sum(), 0.0))


# --------------------------------------------------------------------------- histograms

def average_histogram(images, bins=500, value_range=None, mask=None):
    """Mean of the normalised histograms of several images (thesis Fig. 7: 500 bins, physical units).

    Each image's histogram is divided by the number of voxels it considers (all voxels, or those
    in its mask), so every image weighs the same whatever its foreground size; then the histograms
    are averaged. Images with no voxel in their mask are left out.

    Parameters
    ----------
    images : np.ndarray or sequence of np.ndarray
        (N, H, W) stack, or a list of arrays of any shapes.
    bins : int
        Number of equal-width bins.
    value_range : (float, float), optional
        (low, high) in the images' units. Default: (min(0, lowest value), highest value) over all
        images, so a T1 histogram starts at 0 ms. Values outside the range are not counted (the
        histogram then sums to less than 1).
    mask : array or sequence of arrays, optional
        Boolean masks matching ``images`` (e.g. the foreground, to leave the background peak out).

    Returns
    -------
    bin_edges : np.ndarray
        (bins + 1,) in the images' units.
    histogram : np.ndarray
        (bins,) mean fraction of voxels per bin (sums to 1 when nothing is out of range).

    Examples
    --------
    >>> edges, hist = average_histogram(np.zeros((3, 8, 8)) + 1000.0, bins=4, value_range=(0, 2000))
    >>> hist.tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images] if images.ndim == 2 else list(images)
    arrays = [_array(img, f"image {i}", ndim=(1, 2, 3)) for i, img in enumerate(images)]
    if mask is not None:
        masks = [mask] if isinstance(mask, np.ndarray) and mask.ndim == 2 else list(mask)
        if len(masks) != len(arrays):
            raise GeometryError(f"mask: {len(masks)} masks for {len(arrays)} images; pass one mask per image")
        arrays = [a[_mask(m, a.shape, f"mask {i}")] for i, (a, m) in enumerate(zip(arrays, masks))]
    if value_range is None:
        lo, hi = _value_range(arrays, None)
        value_range = (min(lo, 0.0), hi)
    lo, hi = _value_range(arrays, value_range)
    edges = np.linspace(lo, hi, int(bins) + 1)
    hists = [np.histogram(a, bins=edges)[0] / a.size for a in arrays if a.size]
    mean = np.mean(hists, axis=0) if hists else np.zeros(int(bins))
    return edges, mean


# --------------------------------------------------------------------------- paired slices and the six pairs

def paired_slice_metrics(a, b, data_range, masks=None):
    """Mean SSIM and NRMSE over corresponding slices ``a[i]``, ``b[i]`` (thesis Table 2).

    Parameters
    ----------
    a, b : np.ndarray
        (N, H, W) corresponding slices (same subject and slice index, or a map and its
        harmonised version); ``a`` is the NRMSE reference.
    data_range : float
        SSIM dynamic range in the images' units.
    masks : np.ndarray of bool, optional
        (N, H, W); SSIM is then averaged inside the mask and NRMSE computed on the mask voxels.

    Returns
    -------
    dict
        ``ssim``, ``nrmse`` (means over slices), ``ssim_std``, ``nrmse_std`` and ``n_slices``
        (slices used: slices whose reference is all zero, or whose mask is empty, are skipped
        because NRMSE is undefined for them).
    """
    a, b = _pair(a, b, ("a", "b"), ndim=(3,))
    masks = _mask(masks, a.shape, "masks")
    ssims, errs = [], []
    for i in range(len(a)):
        m = None if masks is None else masks[i]
        ref = a[i] if m is None else a[i][m]
        if not np.any(ref):
            continue
        ssims.append(ssim(a[i], b[i], data_range, mask=m))
        errs.append(nrmse(a[i], b[i], mask=m))
    ssims, errs = np.asarray(ssims), np.asarray(errs)
    nan = float("nan")
    return {
        "ssim": float(ssims.mean()) if len(ssims) else nan,
        "nrmse": float(errs.mean()) if len(errs) else nan,
        "ssim_std": float(ssims.std()) if len(ssims) else nan,
        "nrmse_std": float(errs.std()) if len(errs) else nan,
        "n_slices": len(ssims),
    }


def pairwise_table(images, data_range, pairs=None, masks=None):
    """Correlation, mean SSIM and mean NRMSE for pairs of image stacks (thesis Tables 5 and 6).

    Parameters
    ----------
    images : dict of str -> np.ndarray
        Name -> (N, H, W) stack; row ``i`` of every stack must correspond, e.g. ``A[i]`` and
        ``B[i]`` the same subject and slice, ``fakeB[i] = G_AtoB(A[i])``, ``fakeA[i] = G_BtoA(B[i])``.
    data_range : float
        SSIM dynamic range in the images' units (one value for all pairs).
    pairs : sequence of (str, str), optional
        Pairs to compare, first name = NRMSE reference. Default: those of :data:`DEFAULT_PAIRS`
        (A-B, A-fakeA, A-fakeB, B-fakeA, B-fakeB, fakeA-fakeB) whose two names are in ``images``.
    masks : np.ndarray or dict of str -> np.ndarray, optional
        One (N, H, W) mask for all images, or one per name (a pair then uses the union of its two
        masks).

    Returns
    -------
    pandas.DataFrame
        One row per pair, columns ``pair`` ('A vs fakeB'), ``x``, ``y``, ``correlation`` (Pearson
        over all voxels of the stacks, pooled; in the masks when given), ``ssim``, ``nrmse``
        (means over slices, :func:`paired_slice_metrics`), ``n_slices``.
    """
    import pandas as pd

    if pairs is None:
        pairs = [p for p in DEFAULT_PAIRS if p[0] in images and p[1] in images]
        if not pairs:
            raise InputError(f"images {sorted(images)}: none of the pairs {DEFAULT_PAIRS} is available; "
                             "name the stacks 'A', 'B', 'fakeA', 'fakeB' or pass pairs=")
    rows = []
    for x_name, y_name in pairs:
        for name in (x_name, y_name):
            if name not in images:
                raise InputError(f"pair ({x_name}, {y_name}): no images named {name!r} (have {sorted(images)})")
        x, y = _pair(images[x_name], images[y_name], (x_name, y_name), ndim=(3,))
        if isinstance(masks, dict):
            m = None
            for name in (x_name, y_name):
                if name in masks:
                    mn = _mask(masks[name], x.shape, f"mask of {name}")
                    m = mn if m is None else (m | mn)
        else:
            m = _mask(masks, x.shape, "masks")
        stats = paired_slice_metrics(x, y, data_range, masks=m)
        rows.append({"pair": f"{x_name} vs {y_name}", "x": x_name, "y": y_name,
                     "correlation": cross_correlation(x, y, mask=m),
                     "ssim": stats["ssim"], "nrmse": stats["nrmse"], "n_slices": stats["n_slices"]})
    return pd.DataFrame(rows, columns=["pair", "x", "y", "correlation", "ssim", "nrmse", "n_slices"])


# --------------------------------------------------------------------------- errors against paired truth

def truth_errors(pred, truth, brain_mask, tissue=None, labels=None, data_range=None):
    """Errors of a harmonised map against the paired truth, in physical units.

    Parameters
    ----------
    pred : np.ndarray
        (H, W) or (N, H, W) harmonised map (e.g. fake B) in physical units (ms or %).
    truth : np.ndarray
        Same shape: the same subject and slices rendered on the target scanner (same units).
    brain_mask : np.ndarray of bool
        Same shape: the voxels evaluated.
    tissue : np.ndarray of int, optional
        Same shape: tissue labels (0 background, 1 CSF, 2 GM, 3 WM, 4 other).
    labels : dict of int -> str, optional
        Labels reported per tissue; default ``{1: "CSF", 2: "GM", 3: "WM"}``. A tissue's voxels are
        ``(tissue == label) & brain_mask``.
    data_range : float, optional
        SSIM dynamic range; default the maximum of ``truth`` in the brain mask (depends only on
        the truth, so every method compared on one truth gets the same value).

    Returns
    -------
    dict of str -> float
        - ``n_voxels``: voxels in the brain mask;
        - ``mae``: mean |pred - truth| in the brain mask (map units: ms, or % for PD);
        - ``rel_error_pct``: mean of 100 |pred - truth| / truth over brain voxels with truth > 0;
        - ``bias_pct``: 100 (mean(pred) - mean(truth)) / mean(truth) in the brain mask;
        - ``ssim``: mean local SSIM to the truth inside the brain mask (:func:`ssim`);
        - per tissue name T: ``mae_T``, ``bias_pct_T`` (same formulas in the tissue),
          ``mean_pred_T``, ``mean_truth_T`` (map units), ``n_voxels_T``.
        NaN where a region has no voxels.

    Examples
    --------
    A map read 5 % long everywhere has a +5 % bias and an MAE of 5 % of the mean truth:

    >>> truth = np.full((16, 16), 1000.0)
    >>> err = truth_errors(1.05 * truth, truth, truth > 0)
    >>> round(err["bias_pct"], 6), round(err["mae"], 6)
    (5.0, 50.0)
    """
    pred, truth = _pair(pred, truth, ("pred", "truth"))
    mask = _mask(brain_mask, pred.shape, "brain_mask")
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != pred.shape:
            raise GeometryError(f"tissue: shape {tissue.shape} differs from the image shape {pred.shape}; "
                                "pass labels on the same grid")
    labels = TISSUE_LABELS if labels is None else labels
    nan = float("nan")

    def region(m):
        n = int(m.sum())
        if n == 0:
            return n, nan, nan, nan, nan
        p, t = pred[m], truth[m]
        mean_t = float(t.mean())
        bias = 100.0 * (float(p.mean()) - mean_t) / mean_t if mean_t != 0 else nan
        return n, float(np.abs(p - t).mean()), bias, float(p.mean()), mean_t

    n, mae, bias, _, _ = region(mask)
    pos = mask & (truth > 0)
    rel = float(100.0 * np.mean(np.abs(pred[pos] - truth[pos]) / truth[pos])) if pos.any() else nan
    if data_range is None:
        data_range = float(truth[mask].max()) if n and truth[mask].max() > 0 else 1.0
    out = {"n_voxels": n, "mae": mae, "rel_error_pct": rel, "bias_pct": bias,
           "ssim": ssim(pred, truth, data_range, mask=mask) if n else nan}
    if tissue is not None:
        for label, name in labels.items():
            nt, mae_t, bias_t, mp, mt = region(mask & (tissue == label))
            out.update({f"mae_{name}": mae_t, f"bias_pct_{name}": bias_t, f"mean_pred_{name}": mp,
                        f"mean_truth_{name}": mt, f"n_voxels_{name}": nt})
    return out


def truth_error_table(methods, truth, brain_mask, subjects=None, tissue=None, labels=None, data_range=None):
    """The before/after table: :func:`truth_errors` for several methods, per subject and overall.

    Parameters
    ----------
    methods : dict of str -> np.ndarray
        Method name -> (N, H, W) output in physical units, rows aligned with ``truth``, e.g.
        ``{"none": A, "linear": ..., "histmatch": ..., "nyul": ..., "exp3": fake_B}`` ("none"
        = the source map itself, the error before harmonisation).
    truth, brain_mask : np.ndarray
        (N, H, W) paired truth (target scanner) and evaluation mask.
    subjects : array of str, optional
        (N,) subject of each slice; one row per subject and method is added.
    tissue, labels, data_range
        As in :func:`truth_errors`. ``data_range`` defaults to the truth's maximum in the mask
        over all slices, shared by every row.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``subject`` (``"all"`` for the row pooling every voxel of every
        subject) and the keys of :func:`truth_errors`. Rows: per method, the "all" row first,
        then one per subject in sorted order.
    """
    import pandas as pd

    truth = _array(truth, "truth", ndim=(3,))
    mask = _mask(brain_mask, truth.shape, "brain_mask")
    if subjects is not None:
        subjects = np.asarray(subjects).astype(str).reshape(-1)
        if len(subjects) != len(truth):
            raise GeometryError(f"subjects: {len(subjects)} entries for {len(truth)} slices; pass one subject id per slice")
    if data_range is None:
        data_range = float(truth[mask].max()) if mask.any() and truth[mask].max() > 0 else 1.0
    rows = []
    for name, pred in methods.items():
        groups = [("all", slice(None))]
        if subjects is not None:
            groups += [(s, subjects == s) for s in sorted(set(subjects.tolist()))]
        for subject, sel in groups:
            t_sel = None if tissue is None else np.asarray(tissue)[sel]
            errs = truth_errors(np.asarray(pred)[sel], truth[sel], mask[sel], tissue=t_sel, labels=labels,
                                data_range=data_range)
            rows.append({"method": name, "subject": subject, **errs})
    return pd.DataFrame(rows)
