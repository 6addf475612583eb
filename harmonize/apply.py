"""Harmonise new quantitative maps with a saved generator (or a classical baseline).

    harmonize apply --generator G_AtoB.h5 INPUT OUTPUT
    harmonize apply --method histmatch --fit DATASET.h5 [--direction AtoB] INPUT OUTPUT

INPUT and OUTPUT
  a map file (.nii.gz, .nii, .npy, .npz)  -> OUTPUT is a map file (any of these suffixes) or an
                                             existing folder (the file keeps its name there)
  a folder of map files / DICOM series    -> OUTPUT is a folder mirroring INPUT's tree: every
                                             harmonised map keeps its relative path and name, every
                                             DICOM series its relative folder (several series of
                                             one folder go to sub-folders named after them)
  one DICOM series folder                 -> OUTPUT is the new series' folder
  Values are read and written in physical units (T1/T2 in ms, PD in %), on the input's own voxel
  grid (origin, spacing, direction unchanged). A DICOM series is written back with every original
  tag, new Series/SOP Instance UIDs, a SeriesDescription ending in 'harmonized to <scanner>' and a
  RescaleSlope/Intercept that stores the new values to the precision of the original series (see
  harmonize.io.dicom). Files that are not maps of the generator's map type (other map types,
  weighted images, sidecars) are listed as skipped and not copied. Folders whose name starts
  with '_' or '.' are not searched.

Checks (nothing is written when one fails; a folder is written to a temporary folder beside
OUTPUT and renamed at the end)
  - the map type of every input must be the generator's input map type (a file named *_T2.nii.gz
    or a DICOM series named 'T2 Map' given to a T1 generator is refused; --map says the type of
    files whose name does not);
  - values must be a map in physical units (T1 in seconds, PD as a fraction: refused);
  - OUTPUT must not be INPUT, lie inside it or contain it; an existing OUTPUT needs --overwrite.

Inference
  Slice by slice (2-D, as trained), in batches of --batch-size, on the GPU when TensorFlow sees
  one. The input is normalised with the normalisation stored in the generator (negative fit noise
  set to 0 first, as in training) and the output converted back to physical units; the output is
  never negative and the background (outside the head mask of harmonize.preprocess.masks) stays 0.
  Volumes stream through one at a time, so a folder of many subjects needs the memory of one.

Size handling (in-plane size other than the generator's image size)
  A slice whose size equals the generator's image size goes through the network as it is (so
  `apply` gives exactly `evaluate`'s fake B on the dataset grid). Any other slice is brought to
  the network grid: resampled (anti-aliased, linear) so that its pixel size equals the training
  pixel spacing stored with the generator (without one, so that the slice fits the grid), then
  zero-padded or cropped (around the head) to the image size. If the head is larger than the
  grid at that pixel size, the slice is shrunk further (with a warning). The network's change
  (fake - input, on the network grid) is resampled back and added to the input on its own grid:
  the input keeps its own detail instead of being blurred by two resamplings (a generator that
  changes the map type, T1 -> T2, has its output resampled back instead). Measured on five
  40x36 T1 slices (0.75 mm) with 32x32 generators trained at 0.9 mm: an identity generator
  returns the input to 0.0002 ms (resampling the output back instead: mean error 112 ms, up to
  1900 ms at tissue edges, 10.8 % mean relative error); a generator that multiplies T1 by 1.05
  is reproduced with 0.5 % mean relative error (resampling the output back: 10.8 %).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from harmonize import _runtime
from harmonize._fs import atomic_path, check_not_input, check_overwrite
from harmonize.errors import ConfigError, InputError, ModelError
from harmonize.io.volume import MAP_UNITS, MapVolume, check_map_values, normalize_map_type

__all__ = ["Generator", "BaselineHarmonizer", "load_generator", "add_arguments", "run"]

METHODS = ("linear", "histmatch", "nyul")
SIZE_MODES = ("correction", "resample")


class SizeWarning(UserWarning):
    """A slice had to be shrunk beyond the training pixel size to fit the generator's grid."""


# --------------------------------------------------------------------------------------------
# the Python API


def load_generator(path):
    """Load a saved generator (``.h5`` with harmonize metadata) for harmonising new maps.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`harmonize.models.saving.save_generator` (``g_AtoB_<step>.h5``).

    Returns
    -------
    Generator

    Raises
    ------
    InputError
        The file is missing or not HDF5.
    ModelError
        The file is not a harmonize generator or its network cannot be loaded.

    Examples
    --------
    >>> gen = harmonize.load_generator("checkpoints/exp3/g_AtoB_003240.h5")   # doctest: +SKIP
    >>> t1_on_b_ms = gen.harmonize(t1_on_a_ms)          # (N, H, W) ms in, ms out   # doctest: +SKIP
    """
    from harmonize.models.saving import load_generator_model

    model, metadata = load_generator_model(path)
    return Generator(model, metadata, path=path)


class Generator:
    """A trained generator with everything needed to use it in physical units.

    Build it with :func:`load_generator` (or ``Generator(model, metadata)`` for a model in memory,
    e.g. inside ``evaluate``). The network sees ``Normalization.to_network(x, input_domain)``
    clipped to [-1, 1]; its output is returned through ``from_network(y, output_domain)``.

    Attributes
    ----------
    model : keras.Model
        (batch, rows, cols, 1) -> (batch, rows, cols, 1), network range.
    metadata : dict
        The metadata stored with the generator (see :mod:`harmonize.models.saving`).
    direction : str
        'AtoB' or 'BtoA'.
    input_domain, output_domain : str
        'A' or 'B'.
    input_map_type, output_map_type : str
        'T1', 'T2' or 'PD'.
    units, output_units : str
        Physical units of the input and of the output ('ms' or '%').
    image_size : tuple of int
        (rows, cols) of the network grid.
    pixel_spacing_mm : tuple of float or None
        (row, col) in-plane spacing of the training slices in mm, when stored.
    normalization : Normalization
    target_label : str or None
        Scanner label of the output domain (for DICOM descriptions).
    path : Path or None
        The file the generator was loaded from.
    """

    def __init__(self, model, metadata, path=None):
        from harmonize.preprocess.intensity import Normalization

        self.model = model
        self.metadata = dict(metadata)
        self.path = Path(path) if path is not None else None
        name = str(self.path or "<generator>")
        try:
            self.direction = str(metadata["direction"])
            self.input_domain = str(metadata["input_domain"]).upper()
            self.output_domain = str(metadata["output_domain"]).upper()
            self.input_map_type = normalize_map_type(metadata["input_map_type"])
            self.output_map_type = normalize_map_type(metadata["output_map_type"])
            self.image_size = tuple(int(v) for v in np.ravel(metadata["image_size"]))
            self.normalization = Normalization.from_dict(metadata["normalization"])
        except (KeyError, TypeError, ValueError, InputError, ConfigError) as err:
            raise ModelError(f"{name}: the generator metadata is incomplete or invalid ({err}); "
                             "re-save it with harmonize.models.saving.save_generator") from err
        if self.input_domain not in ("A", "B") or self.output_domain not in ("A", "B") or len(self.image_size) != 2:
            raise ModelError(f"{name}: invalid metadata (domains {self.input_domain}->{self.output_domain}, "
                             f"image size {self.image_size}); re-save the generator")
        self.units = str(metadata.get("input_units") or MAP_UNITS[self.input_map_type])
        self.output_units = str(metadata.get("output_units") or MAP_UNITS[self.output_map_type])
        if self.units != MAP_UNITS[self.input_map_type] or self.output_units != MAP_UNITS[self.output_map_type]:
            raise ModelError(f"{name}: metadata says {self.input_map_type} in {self.units} -> "
                             f"{self.output_map_type} in {self.output_units}; harmonize works in "
                             f"{', '.join(f'{k} in {v}' for k, v in MAP_UNITS.items())}")
        spacing = metadata.get("pixel_spacing_mm")
        self.pixel_spacing_mm = None
        if spacing is not None and len(np.ravel(spacing)) == 2 and np.all(np.asarray(spacing, float) > 0):
            self.pixel_spacing_mm = tuple(float(v) for v in np.ravel(spacing))
        labels = {"A": metadata.get("source_label"), "B": metadata.get("target_label")}
        self.target_label = labels[self.output_domain]
        self.source_label = labels[self.input_domain]
        shape = tuple(getattr(model, "input_shape", ()) or ())
        if len(shape) == 4 and None not in shape[1:3] and tuple(shape[1:3]) != self.image_size:
            raise ModelError(f"{name}: the network takes {shape[1]}x{shape[2]} slices but the metadata says "
                             f"{self.image_size[0]}x{self.image_size[1]}; re-save the generator")
        self._infer = None

    def __repr__(self):
        return (f"Generator({self.direction}: {self.input_map_type} ({self.units}) -> {self.output_map_type} "
                f"({self.output_units}), {self.image_size[0]}x{self.image_size[1]}, {self.path or 'in memory'})")

    @property
    def name(self):
        return str(self.path) if self.path is not None else "<generator>"

    @property
    def description(self):
        """One line for DICOM DerivationDescription and logs."""
        where = f" to {self.target_label}" if self.target_label else ""
        origin = f" from {self.source_label}" if self.source_label else ""
        file = f" {self.path.name}" if self.path is not None else ""
        return f"harmonized{origin}{where} by harmonize CycleGAN generator{file} ({self.direction})"

    # -- network grid ------------------------------------------------------------------------

    def _inference_fn(self):
        # A tf.function with a fixed signature is traced once; model.predict would rebuild a
        # tf.data pipeline per call and is slower for the small batches of one volume.
        if self._infer is None:
            import tensorflow as tf

            rows, cols = self.image_size
            model = self.model

            @tf.function(input_signature=[tf.TensorSpec((None, rows, cols, 1), tf.float32)])
            def infer(x):
                return tf.cast(model(x, training=False), tf.float32)

            self._infer = infer
        return self._infer

    def translate(self, images, batch_size=8, progress=False):
        """Run the generator on slices that are already on the network grid.

        Parameters
        ----------
        images : array_like
            (N, rows, cols) in the input's physical units, ``(rows, cols) == image_size``.
        batch_size : int
            Slices per network call.
        progress : bool
            Show a tqdm bar over slices.

        Returns
        -------
        np.ndarray
            (N, rows, cols) float32, output physical units; neither clipped nor masked.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != self.image_size:
            raise ValueError(f"expected (N, {self.image_size[0]}, {self.image_size[1]}) slices, got {images.shape}")
        batch_size = _check_batch(batch_size)
        norm = self.normalization
        # as in training (harmonize.data): negatives -> 0, then the network range, clipped
        x = np.clip(norm.to_network(np.maximum(images, 0.0), self.input_domain), -1.0, 1.0).astype(np.float32)
        infer = self._inference_fn()
        out = np.empty_like(x)
        with _progress(len(x), progress, "slices") as bar:
            for start in range(0, len(x), batch_size):
                y = infer(x[start:start + batch_size, ..., None]).numpy()
                out[start:start + batch_size] = y[..., 0]
                bar.update(len(y))
        return norm.from_network(out, self.output_domain).astype(np.float32)

    # -- physical units, any grid ------------------------------------------------------------

    def harmonize(self, x, batch_size=8, mask=None, progress=False, *, spacing_mm=None, size_mode="correction"):
        """Harmonise maps in physical units; returns the same kind of object on the same grid.

        Parameters
        ----------
        x : np.ndarray, SimpleITK.Image, MapVolume or list of 2-D arrays
            (H, W) slice or (N, H, W) stack in the input units (ms for T1/T2, % for PD); a 2-D or
            3-D SimpleITK image; a MapVolume; or a list of slices (each harmonised on its own).
        batch_size : int
            Slices per network call.
        mask : array_like of bool, False or None
            Foreground (head) mask of the same shape as ``x``; outside it the output is 0.
            None computes it with :func:`harmonize.preprocess.masks.foreground_mask` (per volume);
            False keeps every voxel.
        progress : bool
            Show a tqdm bar over slices.
        spacing_mm : (row, col) floats, optional
            In-plane pixel spacing of a NumPy input (images carry their own). Only used when the
            in-plane size differs from :attr:`image_size`.
        size_mode : {'correction', 'resample'}
            For sizes other than :attr:`image_size`: add the network's change, resampled back, to
            the input ('correction', default), or resample the network output back ('resample',
            blurs the input's detail twice; kept for comparison, and always used when the
            generator changes the map type, e.g. T1 -> T2). See the module docstring.

        Returns
        -------
        Same type as ``x``
            float32 in the output units, same shape and geometry; never negative.

        Raises
        ------
        ModelError
            A MapVolume of another map type than :attr:`input_map_type`.
        InputError, UnitsError
            NaN/inf values, values that cannot be in :attr:`units`, wrong dimensions.
        """
        return _harmonize_any(self, x, batch_size=batch_size, mask=mask, progress=progress,
                              spacing_mm=spacing_mm, size_mode=size_mode)

    def _harmonize_stack(self, images, mask, batch_size, progress, spacing_mm, size_mode, name):
        """(N, H, W) phys. units, bool mask (or None) -> (N, H, W) phys. units, unmasked, unclipped."""
        if size_mode not in SIZE_MODES:
            raise ConfigError(f"size_mode={size_mode!r}: use one of {', '.join(SIZE_MODES)}")
        images = np.maximum(images, 0.0)
        if images.shape[1:] == self.image_size:
            return self.translate(images, batch_size, progress)
        if self.input_map_type != self.output_map_type:
            # input + change only makes sense when input and output are the same quantity
            size_mode = "resample"
        grid = _network_grid(images.shape[1:], self.image_size, spacing_mm, self.pixel_spacing_mm, mask, name)
        net_in = grid.to_network(images)
        fake = self.translate(net_in, batch_size, progress)
        if size_mode == "resample":
            return grid.from_network(fake, images.shape[1:])
        return images + grid.from_network(fake - net_in, images.shape[1:])


class BaselineHarmonizer:
    """A classical baseline (``harmonize.baselines``) with the interface of :class:`Generator`.

    Baselines map intensities voxel by voxel, so they are applied on the input's own grid (no
    resampling).

    Parameters
    ----------
    baseline : harmonize.baselines.Baseline
        Fitted; ``apply(images (N, H, W) physical units, masks=None, groups=None) -> images``.
    method : str
        'linear', 'histmatch' or 'nyul'.
    dataset : PreparedDataset
        The dataset the baseline was fitted on (map types, units, scanner labels).
    direction : str
        'AtoB' or 'BtoA'.
    """

    def __init__(self, baseline, method, dataset, direction="AtoB"):
        self.baseline = baseline
        self.method = method
        self.direction = direction
        a_to_b = direction == "AtoB"
        self.input_domain, self.output_domain = ("A", "B") if a_to_b else ("B", "A")
        self.input_map_type = normalize_map_type(dataset.map_type_a if a_to_b else dataset.map_type_b)
        self.output_map_type = normalize_map_type(dataset.map_type_b if a_to_b else dataset.map_type_a)
        self.units = MAP_UNITS[self.input_map_type]
        self.output_units = MAP_UNITS[self.output_map_type]
        self.source_label = dataset.source if a_to_b else dataset.target
        self.target_label = dataset.target if a_to_b else dataset.source
        self.path = Path(dataset.path)
        self.metadata = {"method": method, "fit": str(dataset.path), "direction": direction}

    def __repr__(self):
        return f"BaselineHarmonizer({self.method}, {self.direction}, fitted on {self.path})"

    @property
    def name(self):
        return f"{self.method} baseline fitted on {self.path}"

    @property
    def description(self):
        return (f"harmonized from {self.source_label} to {self.target_label} by harmonize {self.method} "
                f"baseline fitted on {self.path.name} ({self.direction})")

    def harmonize(self, x, batch_size=8, mask=None, progress=False, *, spacing_mm=None, size_mode="correction"):
        """Same contract as :meth:`Generator.harmonize` (``batch_size``, ``spacing_mm`` and
        ``size_mode`` are accepted and unused)."""
        return _harmonize_any(self, x, batch_size=batch_size, mask=mask, progress=progress,
                              spacing_mm=spacing_mm, size_mode=size_mode)

    def _harmonize_stack(self, images, mask, batch_size, progress, spacing_mm, size_mode, name):
        images = np.maximum(images, 0.0)
        # one group: per-image baselines (Nyul) take their landmarks from the whole volume, as
        # they were fitted per training subject
        groups = np.zeros(len(images), np.int32)
        with _progress(len(images), progress, "slices") as bar:
            out = self.baseline.apply(images, masks=mask, groups=groups)
            bar.update(len(images))
        return np.asarray(out, dtype=np.float32)


def _check_batch(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _progress(total, enabled, unit):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled or None, leave=False, dynamic_ncols=True)


def _harmonize_any(harmonizer, x, batch_size, mask, progress, spacing_mm, size_mode):
    """Dispatch on the kind of ``x``; see :meth:`Generator.harmonize`."""
    _check_batch(batch_size)
    if isinstance(x, MapVolume):
        if x.map_type != harmonizer.input_map_type:
            raise ModelError(f"{x.name}: is a {x.map_type} map but {harmonizer.name} harmonises "
                             f"{harmonizer.input_map_type} maps; use a generator trained on {x.map_type} maps")
        spacing = (x.spacing[1], x.spacing[0])
        out = _harmonize_array(harmonizer, x.array, mask, batch_size, progress, spacing, size_mode, x.name)
        return x.with_array(out, map_type=harmonizer.output_map_type)
    if isinstance(x, (list, tuple)):
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(x)
        return [harmonizer.harmonize(s, batch_size, m, progress, spacing_mm=spacing_mm, size_mode=size_mode)
                for s, m in zip(x, masks)]
    if type(x).__name__ == "Image" and type(x).__module__.startswith("SimpleITK"):
        import SimpleITK as sitk

        name = "<SimpleITK image>"
        vol = MapVolume.from_sitk(x, map_type=harmonizer.input_map_type)
        if isinstance(mask, sitk.Image):
            mask = sitk.GetArrayFromImage(mask)
        mask = _as_stack_mask(mask, x.GetDimension() == 2)
        spacing = (vol.spacing[1], vol.spacing[0])
        out = _harmonize_array(harmonizer, vol.array, mask, batch_size, progress, spacing, size_mode, name)
        image = sitk.GetImageFromArray(out[0] if x.GetDimension() == 2 else out)
        image.CopyInformation(x)
        return image
    array = np.asarray(x)
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"<array>: expected an (H, W) slice or (N, H, W) stack of numbers in "
                         f"{harmonizer.units}, got shape {array.shape} of {array.dtype}")
    squeeze = array.ndim == 2
    out = _harmonize_array(harmonizer, array[None] if squeeze else array, _as_stack_mask(mask, squeeze),
                           batch_size, progress, spacing_mm, size_mode, "<array>")
    return out[0] if squeeze else out


def _as_stack_mask(mask, squeeze):
    if mask is None or mask is False:
        return mask
    mask = np.asarray(mask).astype(bool)
    return mask[None] if squeeze and mask.ndim == 2 else mask


def _harmonize_array(harmonizer, images, mask, batch_size, progress, spacing_mm, size_mode, name):
    """(N, H, W) physical units -> (N, H, W) output units, >= 0, background 0."""
    images = np.asarray(images, dtype=np.float32)
    check_map_values(images, harmonizer.input_map_type, name)
    if mask is None:
        from harmonize.preprocess.masks import foreground_mask

        mask = foreground_mask(np.maximum(images, 0.0))
    elif mask is False:
        mask = None
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != images.shape:
            raise InputError(f"{name}: mask shape {mask.shape} differs from the map's {images.shape}; "
                             "give a mask on the map's grid")
    out = harmonizer._harmonize_stack(images, mask, batch_size, progress, spacing_mm, size_mode, name)
    out = np.maximum(out, 0.0)
    if mask is not None:
        out = np.where(mask, out, np.float32(0.0))
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# size handling: input grid <-> network grid


@dataclasses.dataclass(frozen=True)
class _Grid:
    """How slices of one volume map onto the network grid.

    The input (H, W) is resampled to ``resampled`` (rows, cols), keeping the field of view, and
    the network window of ``size`` starts at ``offset`` (row, col) in it (negative: zero padding).
    """

    resampled: tuple
    size: tuple
    offset: tuple

    def to_network(self, images):
        from harmonize.preprocess.resample import resize_slices

        stack = resize_slices(images, self.resampled, order=1, anti_aliasing=True)
        return _window(stack, self.offset, self.size)

    def from_network(self, net, shape):
        """Network-grid values -> input grid; zero outside the window."""
        from harmonize.preprocess.resample import resize_slices

        canvas = _place(net, self.offset, self.resampled)
        return resize_slices(canvas, shape, order=1, anti_aliasing=True)


def _window(stack, offset, size):
    """The ``size`` window of (N, h, w) ``stack`` starting at ``offset``; zeros outside the stack."""
    n, h, w = stack.shape
    (top, left), (rows, cols) = offset, size
    out = np.zeros((n, rows, cols), np.float32)
    r0, r1 = max(top, 0), min(top + rows, h)
    c0, c1 = max(left, 0), min(left + cols, w)
    out[:, r0 - top:r1 - top, c0 - left:c1 - left] = stack[:, r0:r1, c0:c1]
    return out


def _place(window, offset, shape):
    """Inverse of :func:`_window`: a (N, *shape) canvas of zeros with ``window`` at ``offset``."""
    n, rows, cols = window.shape
    (top, left), (h, w) = offset, shape
    out = np.zeros((n, h, w), np.float32)
    r0, r1 = max(top, 0), min(top + rows, h)
    c0, c1 = max(left, 0), min(left + cols, w)
    out[:, r0:r1, c0:c1] = window[:, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def _network_grid(shape, size, spacing_mm, train_spacing_mm, mask, name):
    """Choose the resampled size and the window of one volume; see the module docstring.

    Parameters
    ----------
    shape : (H, W)
        Input in-plane size.
    size : (rows, cols)
        Network grid.
    spacing_mm : (row, col) or None
        Input pixel spacing.
    train_spacing_mm : (row, col) or None
        Pixel spacing of the training slices.
    mask : (N, H, W) bool or None
        Foreground; the window covers its bounding box.
    """
    (h, w), (rows, cols) = shape, size
    if spacing_mm is not None and train_spacing_mm is not None:
        zoom = (spacing_mm[0] / train_spacing_mm[0], spacing_mm[1] / train_spacing_mm[1])
    else:
        # unknown pixel size: keep the aspect ratio and fit the field of view into the grid
        sy, sx = spacing_mm if spacing_mm is not None else (1.0, 1.0)
        pixel = max(h * sy / rows, w * sx / cols)
        zoom = (sy / pixel, sx / pixel)
    if mask is not None and mask.any():
        any_row, any_col = mask.any(axis=(0, 2)), mask.any(axis=(0, 1))
        box = (int(np.argmax(any_row)), h - int(np.argmax(any_row[::-1])),
               int(np.argmax(any_col)), w - int(np.argmax(any_col[::-1])))
    else:
        box = (0, h, 0, w)
    for _ in range(3):
        resampled = (max(1, int(round(h * zoom[0]))), max(1, int(round(w * zoom[1]))))
        r0, r1 = math.floor(box[0] * resampled[0] / h), math.ceil(box[1] * resampled[0] / h)
        c0, c1 = math.floor(box[2] * resampled[1] / w), math.ceil(box[3] * resampled[1] / w)
        shrink = min(rows / (r1 - r0), cols / (c1 - c0))
        if shrink >= 1.0:
            break
        zoom = (zoom[0] * shrink * 0.99, zoom[1] * shrink * 0.99)
        warnings.warn(f"{name}: the head ({(r1 - r0)}x{(c1 - c0)} pixels at the training pixel size) does not fit "
                      f"the generator's {rows}x{cols} grid; shrinking it by {shrink * 0.99:.3f}, so the network "
                      "sees a smaller head than in training", SizeWarning, stacklevel=6)
    offset = (_offset(resampled[0], rows, r0, r1), _offset(resampled[1], cols, c0, c1))
    return _Grid(resampled=resampled, size=(rows, cols), offset=offset)


def _offset(extent, window, lo, hi):
    """Start of a ``window`` along an axis of length ``extent`` that covers [lo, hi)."""
    centred = (extent - window) // 2
    if extent <= window or (lo >= centred and hi <= centred + window):
        return centred
    return int(np.clip((lo + hi) // 2 - window // 2, 0, extent - window))


# --------------------------------------------------------------------------------------------
# the command: planning what to read and write


@dataclasses.dataclass
class _Job:
    kind: str          # 'file' or 'dicom'
    source: object     # Path, or DicomSeriesInfo
    dest: Path         # output file, or output series folder
    name: str


_TYPE_SUFFIX = re.compile(r"^(.*?)[_\-](T1|T2|PD)$", flags=re.IGNORECASE)


def _named_type(path):
    """Map type named by a file name ('sub01_T2.nii.gz' -> 'T2'), or None."""
    from harmonize.io.nifti import strip_suffix

    match = _TYPE_SUFFIX.match(strip_suffix(path))
    return match.group(2).upper() if match and match.group(1) else None


def _output_name(path, map_type, out_type):
    """Keep the file name; a '_T1' suffix becomes '_T2' when the generator changes the map type."""
    from harmonize.io.nifti import map_suffix, strip_suffix

    name = Path(path).name
    if map_type == out_type:
        return name
    stem = strip_suffix(name)
    match = _TYPE_SUFFIX.match(stem)
    if not match or match.group(2).upper() != map_type:
        return name
    return f"{stem[: len(stem) - len(match.group(2))]}{out_type}{map_suffix(name) or Path(name).suffix}"


def _plan(input_path, output_path, map_type, harmonizer, series_filter):
    """List the volumes to harmonise and where each goes. Returns (jobs, skipped messages)."""
    from harmonize.io.nifti import MAP_SUFFIXES, map_suffix

    gen_type, out_type = harmonizer.input_map_type, harmonizer.output_map_type
    if input_path.is_file():
        if not map_suffix(input_path):
            raise InputError(f"{input_path}: not a map file ({', '.join(MAP_SUFFIXES)}); for DICOM give the "
                             "folder of the series")
        named = _named_type(input_path)
        if named is not None and named != map_type:
            raise ModelError(f"{input_path}: named as a {named} map, but {harmonizer.name} harmonises "
                             f"{gen_type} maps; use a generator trained on {named} maps")
        if output_path.is_dir():
            dest = output_path / _output_name(input_path, map_type, out_type)
        elif map_suffix(output_path):
            dest = output_path
        else:
            raise InputError(f"{output_path}: the input is a map file, so the output must be a file ending in "
                             f"{', '.join(MAP_SUFFIXES)} (or an existing folder)")
        return [_Job("file", input_path, dest, str(input_path))], []
    if not input_path.is_dir():
        raise InputError(f"{input_path}: input not found")
    jobs, skipped, other_types = [], [], []
    for path in _map_files(input_path):
        rel = path.relative_to(input_path)
        named = _named_type(path)
        if named is not None and named != map_type:
            skipped.append(f"{rel} (a {named} map)")
            other_types.append((str(path), named))
            continue
        dest = output_path / rel.parent / _output_name(path, map_type, out_type)
        jobs.append(_Job("file", path, dest, str(path)))
    series_jobs, series_skipped, series_other = _plan_dicom(input_path, output_path, map_type, series_filter)
    jobs += series_jobs
    skipped += series_skipped
    other_types += series_other
    if not jobs:
        if other_types:
            where, named = other_types[0]
            raise ModelError(f"{where}: is a {named} map, but {harmonizer.name} harmonises {gen_type} maps "
                             f"(no {gen_type} map found in {input_path}); use a generator trained on {named} maps")
        found = f" (found: {'; '.join(skipped)})" if skipped else ""
        raise InputError(f"{input_path}: no {gen_type} map files or DICOM series found{found}; expected "
                         f"{', '.join(MAP_SUFFIXES)} files or DICOM series named as {gen_type} maps"
                         + ("" if series_filter else " (choose series with --series-filter)"))
    dests = [j.dest for j in jobs]
    if len(set(dests)) != len(dests):
        dup = next(d for d in dests if dests.count(d) > 1)
        raise InputError(f"{input_path}: several inputs would be written to {dup}; rename one of them")
    return jobs, skipped


def _map_files(root):
    from harmonize.io.nifti import map_suffix

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for name in sorted(filenames):
            if not name.startswith(".") and map_suffix(name):
                yield Path(dirpath) / name


def _plan_dicom(root, output_path, map_type, series_filter):
    from harmonize.io.dicom import classify_series, find_dicom_series

    series = find_dicom_series(root)
    if not series:
        return [], [], []
    skipped, other_types = [], []
    if series_filter:
        wanted = series_filter.lower()
        chosen = [s for s in series if wanted in s.description.lower()]
        skipped += [f"series '{s.description}' in {s.folder} (not matching --series-filter)" for s in series
                    if s not in chosen]
        series = chosen
    kinds = {s.series_uid: classify_series(s.description, s.image_type, map_type) for s in series}
    selected = [s for s in series if kinds[s.series_uid] == "map"]
    if not selected:
        # nothing named as a map of this type: take the series whose header says nothing either way
        selected = [s for s in series if kinds[s.series_uid] == "unknown"]
    for s in series:
        if s in selected:
            continue
        others = [mt for mt in MAP_UNITS
                  if mt != map_type and classify_series(s.description, s.image_type, mt) == "map"]
        what = f"a {others[0]} map" if others else ("not named as a map" if kinds[s.series_uid] == "unknown"
                                                    else "not a map")
        skipped.append(f"series '{s.description}' in {s.folder} ({what})")
        if others and kinds[s.series_uid] == "other":
            other_types.append((s.name, others[0]))
    by_folder = {}
    for s in selected:
        by_folder.setdefault(s.folder, []).append(s)
    jobs = []
    for folder, group in by_folder.items():
        rel = folder.relative_to(root)
        for s in group:
            dest = output_path / rel
            if len(group) > 1:
                # several series in one folder: one sub-folder per series (files are IM_0001.dcm...)
                label = re.sub(r"[^A-Za-z0-9.\-]+", "_", f"{s.series_number or 0:03d}_{s.description}").strip("_.")
                dest = dest / (label or s.series_uid)
            jobs.append(_Job("dicom", s, dest, s.name))
    return jobs, skipped, other_types


# --------------------------------------------------------------------------------------------
# the command: running


def add_arguments(parser):
    """Arguments of ``harmonize apply`` (see the module docstring for what they mean)."""
    parser.add_argument("input", metavar="INPUT", type=Path,
                        help="map file (.nii.gz/.nii/.npy/.npz), DICOM series folder, or folder tree of them")
    parser.add_argument("output", metavar="OUTPUT", type=Path,
                        help="output map file (for a file input) or folder mirroring INPUT")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--generator", "-g", metavar="G.h5", type=Path,
                     help="saved generator (e.g. checkpoints/exp3/g_AtoB_003240.h5)")
    how.add_argument("--method", choices=METHODS,
                     help="classical baseline instead of a generator (needs --fit)")
    parser.add_argument("--fit", metavar="DATASET.h5", type=Path,
                        help="prepared dataset the --method baseline is fitted on (its training subjects)")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"),
                        help="baseline direction: AtoB (default) maps source-scanner maps to the target; "
                             "with --generator only checked against the generator's direction")
    parser.add_argument("--batch-size", "-b", type=int, default=8, help="slices per network call (default 8)")
    parser.add_argument("--map", dest="map_type", metavar="TYPE",
                        help="map type of the inputs (T1, T2, PD); default and only allowed value: the "
                             "generator's input map type")
    parser.add_argument("--series-filter", metavar="TEXT",
                        help="only DICOM series whose SeriesDescription contains TEXT (case-insensitive)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _make_harmonizer(args):
    """Build the Generator or BaselineHarmonizer the arguments ask for (checks first, loads last)."""
    if args.generator is not None:
        if args.fit is not None:
            raise ConfigError("--fit is for --method baselines; a generator carries its own normalisation")
        _runtime.import_tensorflow_quietly()
        return load_generator(args.generator)
    if args.fit is None:
        raise ConfigError(f"--method {args.method} needs --fit DATASET.h5 (the prepared dataset whose training "
                          "subjects the baseline is fitted on)")
    try:
        from harmonize.baselines import fit_baseline_from_dataset
    except ImportError as err:
        raise ConfigError(f"--method {args.method}: the baselines module is not available ({err})") from err
    from harmonize.io.dataset import PreparedDataset

    dataset = PreparedDataset(args.fit)
    baseline = fit_baseline_from_dataset(args.method, args.fit, direction=_direction(args))
    return BaselineHarmonizer(baseline, args.method, dataset, _direction(args))


def _map_types(args):
    """(input, output) map types and a name of the requested generator/baseline, without loading
    the network (so bad inputs are refused before TensorFlow is imported)."""
    if args.generator is not None:
        from harmonize.models.saving import read_generator_metadata

        meta = read_generator_metadata(args.generator)
        try:
            types = normalize_map_type(meta["input_map_type"]), normalize_map_type(meta["output_map_type"])
        except (KeyError, InputError) as err:
            raise ModelError(f"{args.generator}: the generator metadata has no valid map types ({err}); "
                             "re-save it with harmonize.models.saving.save_generator") from err
        if args.direction is not None and args.direction != meta.get("direction"):
            raise ModelError(f"{args.generator}: is the {meta.get('direction')} generator of its run, but --direction "
                             f"{args.direction} was given; use the g_{args.direction}_*.h5 generator of the run")
        return types, str(args.generator)
    if args.fit is None:
        raise ConfigError(f"--method {args.method} needs --fit DATASET.h5 (the prepared dataset whose training "
                          "subjects the baseline is fitted on)")
    from harmonize.io.dataset import PreparedDataset

    dataset = PreparedDataset(args.fit)
    a, b = normalize_map_type(dataset.map_type_a), normalize_map_type(dataset.map_type_b)
    return ((a, b) if _direction(args) == "AtoB" else (b, a)), f"the {args.method} baseline fitted on {args.fit}"


def _direction(args):
    return args.direction or "AtoB"


@dataclasses.dataclass
class _Planned:
    """Map types and name only: what planning needs before the network is loaded."""

    input_map_type: str
    output_map_type: str
    name: str


def run(args):
    """Run ``harmonize apply``; returns the exit status (errors are raised as HarmonizeError)."""
    from tqdm.auto import tqdm

    _check_batch(args.batch_size)
    input_path, output_path = Path(args.input), Path(args.output)
    if not input_path.exists():
        raise InputError(f"{input_path}: input not found")
    model_file = args.generator if args.generator is not None else args.fit
    check_not_input(output_path, [input_path] + ([model_file] if model_file is not None else []))
    (gen_type, out_type), what = _map_types(args)
    map_type = normalize_map_type(args.map_type) if args.map_type else gen_type
    if map_type != gen_type:
        raise ModelError(f"{what}: harmonises {gen_type} maps, but --map {map_type} was given; use a "
                         f"generator trained on {map_type} maps")
    jobs, skipped = _plan(input_path, output_path, map_type, _Planned(gen_type, out_type, what), args.series_filter)
    single = input_path.is_file()
    if not single and output_path.is_file():
        raise InputError(f"{output_path}: is a file, but the input {input_path} is a folder; give an output folder")
    existing = jobs[0].dest if single else output_path
    check_overwrite(existing, args.overwrite)
    if single:
        check_not_input(jobs[0].dest, [input_path])
    harmonizer = _make_harmonizer(args)
    for message in skipped:
        print(f"skipped {message}")
    progress = not args.no_progress
    if single:
        n = _run_job(jobs[0], harmonizer, map_type, args.batch_size, progress, jobs[0].dest, None)
        print(f"wrote {jobs[0].dest} ({n} slices, {harmonizer.description})")
        return 0
    with atomic_path(output_path) as tmp:
        tmp.mkdir()
        bar = tqdm(jobs, unit="volume", disable=(not progress or len(jobs) < 2) or None, dynamic_ncols=True)
        for k, job in enumerate(bar):
            target = tmp / job.dest.relative_to(output_path)
            n = _run_job(job, harmonizer, map_type, args.batch_size, progress, target, tmp / f".staging-{k}")
            tqdm.write(f"{job.source} -> {job.dest} ({n} slices)")  # all are written at the end
    print(f"harmonised {len(jobs)} map{'s' if len(jobs) != 1 else ''} into {output_path} ({harmonizer.description})")
    return 0


def _run_job(job, harmonizer, map_type, batch_size, progress, target, staging):
    """Read one volume, harmonise it, write it to ``target``. Returns the number of slices."""
    if job.kind == "file":
        from harmonize.io.nifti import read_map, write_map

        volume = read_map(job.source, map_type)
        out = harmonizer.harmonize(volume, batch_size=batch_size, progress=progress)
        write_map(out, target)
        return out.shape[0]
    from harmonize.io.dicom import read_dicom_series, write_dicom_series

    volume = read_dicom_series(job.source, map_type)
    out = harmonizer.harmonize(volume, batch_size=batch_size, progress=progress)
    original = volume.meta.get("series_description", "")
    extra = {"DerivationDescription": harmonizer.description[:1024]}
    out_type = getattr(harmonizer, "output_map_type", None) or volume.map_type
    if out_type != volume.map_type:
        # a generator that changes the map type (Experiment 6, T1 -> T2): the headers must say so,
        # or the output would be read back as a map of the input's type
        original = _swap_map_type(original, volume.map_type, out_type)
        image_type = list(getattr(volume.dicom[0], "ImageType", []) or []) if volume.dicom else []
        if image_type:
            extra["ImageType"] = [_swap_map_type(str(v), volume.map_type, out_type) for v in image_type]
    description = _series_description(original, harmonizer.target_label)
    # the writer replaces its output folder as a whole: stage each series in its own folder (inside
    # the temporary output) so several outputs can share one folder of the mirrored tree
    try:
        paths = write_dicom_series(out, staging, series_description=description, extra_tags=extra)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out.shape[0]


def _swap_map_type(text, old, new):
    """Replace the map-type token ``old`` by ``new`` in a description ('T1 Mapping' -> 'T2 Mapping')."""
    import re

    return re.sub(rf"(?<![A-Za-z0-9]){old}(?![0-9])", new, text, flags=re.IGNORECASE)


def _series_description(original, target_label):
    """'<original> harmonized to <scanner>' within the 64 characters of a DICOM LO."""
    suffix = f" harmonized to {target_label}" if target_label else " harmonized"
    if len(suffix) > 64:
        suffix = " harmonized"
    head = (original or "").strip()[: 64 - len(suffix)].rstrip()
    return f"{head}{suffix}".strip()


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("apply"))
