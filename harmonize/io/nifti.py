"""NIfTI (.nii, .nii.gz) and NumPy (.npy, .npz) maps.

NIfTI is read and written with SimpleITK, so origin, spacing and direction survive a round trip.
NumPy files hold ``array[slice, row, column]`` in physical units; a ``.npz`` may also hold
``spacing``, ``origin`` and ``direction`` (SimpleITK order) which are then used as geometry.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from harmonize._fs import atomic_path
from harmonize.errors import InputError
from harmonize.io.volume import MapVolume

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NUMPY_SUFFIXES = (".npy", ".npz")
MAP_SUFFIXES = NIFTI_SUFFIXES + NUMPY_SUFFIXES


def map_suffix(path):
    """Return the map suffix of ``path`` ('.nii.gz', '.nii', '.npy', '.npz') or '' if none."""
    name = Path(path).name.lower()
    for suffix in MAP_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def strip_suffix(path):
    """File name without its map suffix: 'sub01_T1.nii.gz' -> 'sub01_T1'."""
    name = Path(path).name
    suffix = map_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def read_map(path, map_type="T1", **fields):
    """Read a NIfTI or NumPy map into a :class:`MapVolume` (values untouched, float32).

    Raises
    ------
    InputError
        The file is missing, has an unknown suffix, or cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    suffix = map_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputError(f"{path}: not a readable NIfTI file ({_first_line(err)})") from err
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            _check_nifti_finite(path)
        return MapVolume.from_sitk(image, map_type=map_type, source=path, **fields)
    if suffix in NUMPY_SUFFIXES:
        return _read_numpy(path, map_type, fields)
    raise InputError(f"{path}: unknown file type; expected one of {', '.join(MAP_SUFFIXES)}")


def _read_numpy(path, map_type, fields):
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable NumPy file ({_first_line(err)})") from err
    geometry = {}
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            key = next((k for k in ("array", "data", "map", "arr_0") if k in keys), None)
            if key is None:
                raise InputError(f"{path}: the .npz holds {keys}; store the map under 'array' (or 'data')")
            array = loaded[key]
            for name in ("spacing", "origin", "direction"):
                if name in keys:
                    geometry[name] = tuple(np.asarray(loaded[name], dtype=float).ravel())
    else:
        array = loaded
    if not np.issubdtype(np.asarray(array).dtype, np.number):
        raise InputError(f"{path}: holds {array.dtype} values, not numbers")
    if "spacing" not in geometry:
        warnings.warn(f"{path}: no spacing stored; assuming 1 mm voxels", stacklevel=3)
    return MapVolume(array=array, map_type=map_type, source=path, **geometry, **fields)


def write_map(volume, path):
    """Write ``volume`` to ``path`` (NIfTI or NumPy by suffix), atomically, keeping geometry.

    Returns the written path.
    """
    path = Path(path)
    suffix = map_suffix(path)
    if suffix not in MAP_SUFFIXES:
        raise InputError(f"{path}: unknown output type; use one of {', '.join(MAP_SUFFIXES)}")
    with atomic_path(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            import SimpleITK as sitk

            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=suffix == ".nii.gz")
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, array=volume.array, spacing=np.array(volume.spacing),
                                    origin=np.array(volume.origin), direction=np.array(volume.direction))
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, volume.array)
    return path


def _check_nifti_finite(path):
    """Raise InputError when a NIfTI file stores NaN/inf voxels.

    ITK < 6 (so SimpleITK 2.x) replaces every non-finite voxel with 0 when it reads a NIfTI file
    (ITK pull request #6683), which would let NaN masks pass as background. The stored bytes are
    read again with nibabel (a nilearn dependency) to see them. Integer files cannot hold NaN.
    """
    import nibabel

    try:
        image = nibabel.load(str(path))
        if not np.issubdtype(image.get_data_dtype(), np.floating):
            return
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001  (nibabel raises several types for damaged files)
        raise InputError(f"{path}: not a readable NIfTI file ({err}); replace the file") from err
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} voxels are NaN or infinite; fill or mask them (e.g. set them "
                         "to 0 for background) before harmonisation")


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
