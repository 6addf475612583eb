"""In-plane resampling of slice stacks, keeping physical units and the physical field of view.

The new grid covers the same field of view as the old one (pixel edges line up at the image
border, as in :func:`skimage.transform.resize`): spacing scales with ``old / new`` pixel counts
and the centre of the first pixel moves by half the change of spacing. Intensities stay in
physical units (``preserve_range``); downsampling is anti-aliased (Gaussian pre-filter) so
a 256 -> 64 reduction does not alias noise and edges into the maps. Label images (masks, tissue
classes) use nearest-neighbour and no filtering.
"""
from __future__ import annotations

import numpy as np


def resize_slices(array, size, order=1, anti_aliasing=True):
    """Resample every slice of a stack to ``size`` in-plane.

    Parameters
    ----------
    array : array_like
        (N, H, W) stack or (H, W) slice. Float maps in physical units, or integer/bool labels.
    size : int or (rows, cols)
        New in-plane size.
    order : int
        Spline order: 0 nearest-neighbour (labels, masks), 1 linear (default), 3 cubic.
    anti_aliasing : bool
        Gaussian pre-filter when shrinking (only for ``order > 0``; labels are never filtered).

    Returns
    -------
    np.ndarray
        (N, rows, cols) (or (rows, cols)); float32 for ``order > 0``, the input dtype for
        ``order == 0``. Cubic interpolation can undershoot below 0 next to the background;
        callers that need non-negative maps clip.
    """
    from skimage.transform import resize

    arr = np.asarray(array)
    rows, cols = _size(size)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack or (H, W) slice, got shape {np.asarray(array).shape}")
    if arr.shape[1:] == (rows, cols):
        out = arr.copy() if order == 0 else arr.astype(np.float32)
        return out[0] if squeeze else out
    if order == 0:
        # integer labels: resize would cast to float and back; nearest keeps the label values
        out = resize(arr, (arr.shape[0], rows, cols), order=0, mode="edge", anti_aliasing=False,
                     preserve_range=True).astype(arr.dtype)
    else:
        out = resize(arr.astype(np.float32), (arr.shape[0], rows, cols), order=order, mode="edge",
                     anti_aliasing=bool(anti_aliasing) and (rows < arr.shape[1] or cols < arr.shape[2]),
                     preserve_range=True).astype(np.float32)
    return out[0] if squeeze else out


def resized_spacing(spacing, old_shape, new_shape):
    """Voxel spacing after in-plane resampling.

    Parameters
    ----------
    spacing : sequence of 2 or 3 floats
        (x, y[, z]) mm, SimpleITK order (x along columns, y along rows).
    old_shape, new_shape : (rows, cols)

    Returns
    -------
    tuple of float
        (x, y[, z]) mm, same field of view.
    """
    spacing = [float(s) for s in spacing]
    (old_r, old_c), (new_r, new_c) = _size(old_shape), _size(new_shape)
    spacing[0] *= old_c / new_c
    spacing[1] *= old_r / new_r
    return tuple(spacing)


def resized_origin(origin, direction, spacing, old_shape, new_shape):
    """Physical position (mm) of the centre of the first voxel after in-plane resampling.

    The field of view is kept, so the first voxel centre moves by half the change of spacing
    along the row and column directions.

    Parameters
    ----------
    origin : sequence of 3 floats
        (x, y, z) mm of the old first voxel centre.
    direction : sequence of 9 floats
        Row-major direction cosines (SimpleITK order).
    spacing : sequence of 3 floats
        Old (x, y, z) spacing in mm.
    old_shape, new_shape : (rows, cols)
    """
    new = resized_spacing(spacing, old_shape, new_shape)
    d = np.asarray(direction, float).reshape(3, 3)
    step = np.array([(new[0] - spacing[0]) / 2.0, (new[1] - spacing[1]) / 2.0, 0.0])
    return tuple(float(v) for v in np.asarray(origin, float) + d @ step)


def resize_volume(volume, size, order=1, anti_aliasing=True):
    """A :class:`~harmonize.io.volume.MapVolume` resampled in-plane, geometry updated.

    The slice direction and positions are unchanged; values stay in physical units.
    """
    old = volume.array.shape[1:]
    new = _size(size)
    array = resize_slices(volume.array, new, order=order, anti_aliasing=anti_aliasing)
    return volume.with_array(array, spacing=resized_spacing(volume.spacing, old, new),
                             origin=resized_origin(volume.origin, volume.direction, volume.spacing, old, new))


def _size(size):
    if np.isscalar(size):
        size = (int(size), int(size))
    rows, cols = (int(v) for v in size)
    if rows < 1 or cols < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return rows, cols
