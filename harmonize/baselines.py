"""Classical harmonisation baselines in physical units, fitted on the training subjects only.

Every baseline maps source-scanner maps (A) to the target scanner (B) voxel by voxel inside the
foreground; voxels outside the foreground mask are returned unchanged (background 0 stays 0) and
the output is clipped at 0 (relaxation times and PD cannot be negative).

======================  ======================================================================
``"none"``              identity: the error "before harmonisation".
``"linear"``            ``y = a x + b`` with ``a = sd_B / sd_A``, ``b = mean_B - a mean_A``:
                        the mean and standard deviation of all foreground voxels of the source
                        training slices (pooled) become those of the target training slices.
``"histmatch"``         quantile mapping: the pooled foreground quantiles of the source training
                        slices are mapped onto the pooled foreground quantiles of the target
                        training slices (1001 quantile levels, piecewise-linear in between,
                        values beyond the training range take the end values).
``"nyul"``              Nyul & Udupa piecewise-linear landmark standardisation: landmarks at the
                        1, 10, 20, ..., 90, 99th foreground percentiles of *each image* (or each
                        group of slices, e.g. a subject) are mapped onto the standard landmarks,
                        the mean of the target training images' landmarks (in target units);
                        linear extrapolation below the first and above the last landmark.
======================  ======================================================================

Why quantile mapping for ``histmatch`` and not :func:`skimage.exposure.match_histograms` per
image: the fitted mapping is one fixed monotone function, stored as JSON and applied identically
to any new slice without the training data; matching every slice to the pooled target histogram
would instead force each slice (a vertex slice without ventricles, a slice through them) to the
whole-brain distribution and erase real anatomical differences between slices. Nyul is the
per-image alternative, with few landmarks instead of the full histogram.

Why our own Nyul: the ``intensity-normalization`` package (v4.0) needs Python >= 3.12 (this
project supports 3.11) and v3 pulls in scikit-fuzzy; both map onto an arbitrary [1, 100] scale
and transform the background too. Here the standard scale is in the target's physical units and
the background is untouched. The algorithm follows Nyul, Udupa & Zhang, IEEE TMI 19(2), 2000,
with the landmark set of Shah et al. 2011 (as in intensity-normalization).

Examples
--------
>>> base = get_baseline("linear").fit(src_train, src_masks, tgt_train, tgt_masks)   # doctest: +SKIP
>>> harmonised = base.apply(src_test)                                               # doctest: +SKIP
>>> base.save("linear_AtoB.json"); Baseline.load("linear_AtoB.json")                # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harmonize._fs import atomic_path
from harmonize.errors import ConfigError, GeometryError, InputError

#: names accepted by :func:`get_baseline`, in report order
BASELINES = ("none", "linear", "histmatch", "nyul")

#: default Nyul landmark percentiles (Nyul & Udupa 2000; Shah et al. 2011)
NYUL_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)

FORMAT = "harmonize-baseline"


def _stack(images, name):
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise GeometryError(f"{name}: expected (N, H, W) slices, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN or infinite values; set them to 0 (background) first")
    return arr


def _masks(masks, images, name):
    if masks is None:
        return images > 0
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.shape != images.shape:
        raise GeometryError(f"{name}: mask shape {m.shape} differs from the image shape {images.shape}; "
                            "pass one mask per slice on the same grid")
    # a voxel counts as foreground only where the map has a value: background 0 stays 0
    return m.astype(bool) & (images > 0)


def _foreground(images, masks, name):
    values = images[masks]
    if values.size == 0:
        raise InputError(f"{name}: no foreground voxels (all masks empty or all values 0); "
                         "check the masks and that the maps are in physical units")
    return values


def _groups(groups, n, name):
    if groups is None:
        return [np.array([i]) for i in range(n)]
    g = np.asarray(groups).reshape(-1)
    if len(g) != n:
        raise GeometryError(f"{name}: {len(g)} group labels for {n} slices; pass one label (subject id) per slice")
    return [np.flatnonzero(g == k) for k in dict.fromkeys(g.tolist())]


def _monotone(xp, fp):
    """Strictly increasing ``xp`` for np.interp: equal xp values (flat histogram parts) share the mean fp."""
    xp = np.asarray(xp, np.float64)
    fp = np.asarray(fp, np.float64)
    uniq, inverse = np.unique(xp, return_inverse=True)
    if len(uniq) == len(xp):
        return xp, fp
    sums = np.bincount(inverse, weights=fp)
    return uniq, sums / np.bincount(inverse)


def _interp_extrapolate(x, xp, fp):
    """Piecewise-linear through (xp, fp), extended linearly with the end segments' slopes."""
    xp, fp = _monotone(xp, fp)
    if len(xp) == 1:
        return x - xp[0] + fp[0]
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y


class Baseline:
    """A classical harmonisation method from the source scanner (A) to the target (B).

    Subclasses set :attr:`name` and implement ``_fit`` / ``_transform``; everything else
    (input checks, masks, background, JSON) is shared.

    Attributes
    ----------
    name : str
        One of :data:`BASELINES`.
    params : dict
        The fitted parameters (JSON-serialisable); empty before :meth:`fit`.
    info : dict
        Free provenance (source/target labels, map type, units, dataset, slices used).
    """

    name = "base"

    def __init__(self, params=None, info=None):
        self.params = dict(params or {})
        self.info = dict(info or {})

    def __repr__(self):
        state = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}({state})"

    @property
    def fitted(self):
        """True once :meth:`fit` has run (or the parameters were loaded)."""
        return bool(self.params)

    # ---- public API
    def fit(self, source_images, source_masks, target_images, target_masks, *, source_groups=None,
            target_groups=None):
        """Fit on training slices of both scanners (physical units).

        Parameters
        ----------
        source_images, target_images : np.ndarray
            (N, H, W) and (M, H', W') training slices of scanner A and B, physical units.
        source_masks, target_masks : np.ndarray of bool or None
            Foreground masks of the same shapes; None = values > 0.
        source_groups, target_groups : array of str, optional
            (N,) / (M,) subject of each slice. Only ``nyul`` uses them: landmarks are then
            computed per subject (volume) instead of per slice.

        Returns
        -------
        Baseline
            ``self``, fitted.
        """
        src = _stack(source_images, "source images")
        tgt = _stack(target_images, "target images")
        src_m = _masks(source_masks, src, "source images")
        tgt_m = _masks(target_masks, tgt, "target images")
        _foreground(src, src_m, "source images")
        _foreground(tgt, tgt_m, "target images")
        self.params = self._fit(src, src_m, tgt, tgt_m, source_groups, target_groups)
        self.info.setdefault("n_source_slices", len(src))
        self.info.setdefault("n_target_slices", len(tgt))
        return self

    def apply(self, images, masks=None, groups=None):
        """Harmonise source-scanner slices to the target scanner.

        Parameters
        ----------
        images : np.ndarray
            (N, H, W) or (H, W) source maps in physical units.
        masks : np.ndarray of bool, optional
            Foreground; default values > 0. Only voxels inside the mask with a value > 0 are
            transformed; all others are returned unchanged (background 0 stays 0).
        groups : array, optional
            (N,) subject of each slice (``nyul`` only: one set of landmarks per group; default:
            one per slice).

        Returns
        -------
        np.ndarray
            float32, same shape as ``images``, physical units of the target scanner.
        """
        if not self.fitted:
            raise ConfigError(f"baseline {self.name!r}: not fitted; call fit(...) or load a saved baseline first")
        arr = np.asarray(images)
        squeeze = arr.ndim == 2
        x = _stack(arr, "images")
        m = _masks(masks, x, "images")
        out = x.copy()
        out[m] = np.maximum(self._transform(x, m, groups), 0.0)
        out = out.astype(np.float32)
        return out[0] if squeeze else out

    __call__ = apply

    def to_dict(self):
        """JSON-ready dict: ``{"format", "name", "params", "info"}``."""
        return {"format": FORMAT, "name": self.name, "params": _plain(self.params), "info": _plain(self.info)}

    @staticmethod
    def from_dict(data):
        """Rebuild a fitted baseline of the right class from :meth:`to_dict` output."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"not a saved harmonize baseline (format {data.get('format') if isinstance(data, dict) else None!r}); "
                              "save baselines with Baseline.save")
        cls = _CLASSES.get(data.get("name"))
        if cls is None:
            raise ConfigError(f"saved baseline name {data.get('name')!r} is not one of {', '.join(BASELINES)}")
        return cls(params=data.get("params"), info=data.get("info"))

    def save(self, path):
        """Write :meth:`to_dict` as JSON to ``path`` atomically. Returns the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def load(path):
        """Read a baseline written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise InputError(f"{path}: baseline file not found") from err
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable JSON baseline ({err}); re-create it with Baseline.save") from err
        try:
            return Baseline.from_dict(data)
        except ConfigError as err:
            raise InputError(f"{path}: {err}") from err

    # ---- subclass hooks
    def _fit(self, src, src_m, tgt, tgt_m, source_groups, target_groups):
        raise NotImplementedError

    def _transform(self, x, m, groups):
        """Return the new values of the foreground voxels ``x[m]`` (1-D, same order)."""
        raise NotImplementedError


class IdentityBaseline(Baseline):
    """``"none"``: returns the source maps unchanged (the error before harmonisation)."""

    name = "none"

    def __init__(self, params=None, info=None):
        # nothing to learn: usable without fit()
        super().__init__(params or {"identity": True}, info)

    def _fit(self, src, src_m, tgt, tgt_m, source_groups, target_groups):
        return {"identity": True}

    def _transform(self, x, m, groups):
        return x[m]


class LinearBaseline(Baseline):
    """``"linear"``: ``y = scale x + offset`` matching the pooled foreground mean and SD.

    ``scale = sd_B / sd_A`` and ``offset = mean_B - scale mean_A`` with mean and (population)
    standard deviation of all foreground voxels of the training slices of each scanner.
    """

    name = "linear"

    def _fit(self, src, src_m, tgt, tgt_m, source_groups, target_groups):
        a, b = src[src_m], tgt[tgt_m]
        sd_a = float(a.std())
        if sd_a == 0:
            raise InputError("source images: the foreground has a single value; a linear fit needs contrast")
        scale = float(b.std()) / sd_a
        offset = float(b.mean()) - scale * float(a.mean())
        return {"scale": scale, "offset": offset, "source_mean": float(a.mean()), "source_sd": sd_a,
                "target_mean": float(b.mean()), "target_sd": float(b.std())}

    def _transform(self, x, m, groups):
        return self.params["scale"] * x[m] + self.params["offset"]


class HistogramMatchingBaseline(Baseline):
    """``"histmatch"``: quantile mapping of the pooled training foreground histograms.

    Parameters
    ----------
    n_quantiles : int
        Quantile levels ``linspace(0, 1, n_quantiles)`` stored for each scanner (default 1001).
    """

    name = "histmatch"

    def __init__(self, params=None, info=None, n_quantiles=1001):
        super().__init__(params, info)
        self.n_quantiles = int(n_quantiles)

    def _fit(self, src, src_m, tgt, tgt_m, source_groups, target_groups):
        levels = np.linspace(0.0, 1.0, self.n_quantiles)
        return {"levels": levels.tolist(),
                "source_quantiles": np.quantile(src[src_m], levels).tolist(),
                "target_quantiles": np.quantile(tgt[tgt_m], levels).tolist()}

    def _transform(self, x, m, groups):
        xp, fp = _monotone(self.params["source_quantiles"], self.params["target_quantiles"])
        # values outside the source training range take the end values of the target range
        return np.interp(x[m], xp, fp)


class NyulBaseline(Baseline):
    """``"nyul"``: Nyul-Udupa piecewise-linear landmark standardisation (see module docstring).

    Fit: the landmarks (foreground percentiles :data:`NYUL_PERCENTILES`) of every target
    training image are averaged into the standard landmarks (target units). The source training
    images' mean landmarks are kept too: they map images (or groups) with fewer than
    ``min_voxels`` foreground voxels, whose own percentiles would be noise.

    Apply: for each image (slice, or group of slices when ``groups`` is given) its own landmarks
    are mapped piecewise-linearly onto the standard landmarks.

    Parameters
    ----------
    percentiles : sequence of float
        Strictly increasing, within (0, 100).
    min_voxels : int
        Smallest foreground for an image's own landmarks.
    """

    name = "nyul"

    def __init__(self, params=None, info=None, percentiles=NYUL_PERCENTILES, min_voxels=100):
        super().__init__(params, info)
        pct = np.asarray(self.params.get("percentiles", percentiles), np.float64)
        if pct.ndim != 1 or len(pct) < 3 or np.any(np.diff(pct) <= 0) or pct[0] <= 0 or pct[-1] >= 100:
            raise ConfigError(f"nyul percentiles must be >= 3 increasing values within (0, 100), got {list(pct)}")
        self.percentiles = pct
        self.min_voxels = int(self.params.get("min_voxels", min_voxels))

    def landmarks(self, values):
        """Landmark values (the percentiles) of 1-D foreground values."""
        return np.percentile(values, self.percentiles)

    def _mean_landmarks(self, images, masks, groups):
        rows = []
        for idx in _groups(groups, len(images), "groups"):
            values = images[idx][masks[idx]]
            if values.size >= self.min_voxels:
                rows.append(self.landmarks(values))
        if not rows:
            raise InputError(f"no training image has {self.min_voxels} foreground voxels; "
                             "check the masks, or lower min_voxels")
        return np.mean(rows, axis=0)

    def _fit(self, src, src_m, tgt, tgt_m, source_groups, target_groups):
        return {"percentiles": self.percentiles.tolist(), "min_voxels": self.min_voxels,
                "standard_landmarks": self._mean_landmarks(tgt, tgt_m, target_groups).tolist(),
                "source_landmarks": self._mean_landmarks(src, src_m, source_groups).tolist()}

    def _transform(self, x, m, groups):
        standard = np.asarray(self.params["standard_landmarks"])
        fallback = np.asarray(self.params["source_landmarks"])
        out = np.empty(x.shape)
        for idx in _groups(groups, len(x), "groups"):
            values = x[idx][m[idx]]
            if values.size == 0:
                continue
            own = self.landmarks(values) if values.size >= self.min_voxels else fallback
            out[idx] = _interp_extrapolate(x[idx], own, standard)
        return out[m]


_CLASSES = {"none": IdentityBaseline, "linear": LinearBaseline, "histmatch": HistogramMatchingBaseline,
            "nyul": NyulBaseline}


def get_baseline(name, **kwargs):
    """A new, unfitted baseline by name (one of :data:`BASELINES`); ``kwargs`` go to its class."""
    cls = _CLASSES.get(str(name).strip().lower())
    if cls is None:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return cls(**kwargs)


def fit_baseline_from_dataset(name, dataset_path, direction="AtoB", **kwargs):
    """Fit a baseline on the TRAIN split of a prepared dataset (never on test subjects).

    Parameters
    ----------
    name : str
        One of :data:`BASELINES`.
    dataset_path : str or Path
        A ``.h5`` file written by ``harmonize prepare``.
    direction : {'AtoB', 'BtoA'}
        'AtoB': source = scanner A, target = B; 'BtoA' the reverse.
    **kwargs
        Passed to the baseline's class (e.g. ``n_quantiles``, ``percentiles``).

    Returns
    -------
    Baseline
        Fitted; ``info`` records the dataset, direction, scanner labels, map types and units.
        Nyul landmarks are computed per training subject (volume).
    """
    from harmonize.io.dataset import PreparedDataset

    if direction not in ("AtoB", "BtoA"):
        raise ConfigError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
    ds = PreparedDataset(dataset_path)
    train = ds.split("train")
    src, tgt = (train.a, train.b) if direction == "AtoB" else (train.b, train.a)
    if len(src) == 0 or len(tgt) == 0:
        raise InputError(f"{dataset_path}: the train split has no slices of one scanner; re-run 'harmonize prepare'")
    labels = {"A": (ds.source, ds.map_type_a, ds.units_a), "B": (ds.target, ds.map_type_b, ds.units_b)}
    s_dom, t_dom = direction[0], direction[-1]
    info = {"dataset": str(dataset_path), "direction": direction, "split": "train",
            "source_label": labels[s_dom][0], "target_label": labels[t_dom][0],
            "source_map_type": labels[s_dom][1], "target_map_type": labels[t_dom][1],
            "source_units": labels[s_dom][2], "target_units": labels[t_dom][2],
            "train_subjects": sorted(set(src.subjects.tolist()) | set(tgt.subjects.tolist()))}
    base = get_baseline(name, **kwargs)
    base.info.update(info)
    return base.fit(src.images, src.masks, tgt.images, tgt.masks, source_groups=src.subjects,
                    target_groups=tgt.subjects)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
