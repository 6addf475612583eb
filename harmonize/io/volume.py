"""The in-memory form of one quantitative map: voxels in physical units plus geometry.

Axis order follows SimpleITK's ``GetArrayFromImage``: ``array[slice, row, column]``;
``spacing``, ``origin`` and ``direction`` are in SimpleITK's (x, y, z) order, in mm.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.errors import InputError, UnitsError

#: physical units of each map type
MAP_UNITS = {"T1": "ms", "T2": "ms", "PD": "%"}

#: values a map of this type can take in its units (a little beyond the physiological range).
#: A map whose brain values fall far outside is not in these units (seconds instead of ms, a
#: weighted image with arbitrary scaling, a fraction instead of percent).
PLAUSIBLE_RANGE = {"T1": (0.0, 10000.0), "T2": (0.0, 5000.0), "PD": (0.0, 150.0)}
#: typical tissue median inside the head; a foreground median below the lower bound means the
#: values are in other units (T1 in s, PD as a fraction).
PLAUSIBLE_MEDIAN = {"T1": (100.0, 5000.0), "T2": (20.0, 2000.0), "PD": (5.0, 120.0)}


def normalize_map_type(map_type):
    """Return the canonical map type ('T1', 'T2', 'PD') or raise InputError."""
    key = str(map_type).strip().upper()
    if key not in MAP_UNITS:
        raise InputError(f"unknown map type {map_type!r}; expected one of {', '.join(MAP_UNITS)}")
    return key


@dataclasses.dataclass
class MapVolume:
    """One quantitative map volume.

    Attributes
    ----------
    array : np.ndarray
        (slices, rows, columns) float32 in physical units (ms for T1/T2, % for PD).
    spacing, origin : tuple of 3 floats
        SimpleITK order (x, y, z), mm.
    direction : tuple of 9 floats
        Row-major direction cosine matrix, SimpleITK order.
    map_type : str
        'T1', 'T2' or 'PD'.
    source : Path or None
        File or folder the map was read from (named in error messages).
    scanner, subject : str or None
        Labels from the folder layout or the DICOM header.
    dicom : list or None
        For DICOM input, one pydicom Dataset per slice (in ``array`` order, pixel data removed),
        so writers can keep every original tag.
    meta : dict
        Anything else a reader wants to keep (e.g. the DICOM series UID).
    """

    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    map_type: str = "T1"
    source: Path | None = None
    scanner: str | None = None
    subject: str | None = None
    dicom: list | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(f"{self.name}: expected a 3-D map (slices, rows, columns), got shape {arr.shape}")
        self.array = arr.astype(np.float32, copy=False)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(s) for s in self.origin)
        self.direction = tuple(float(s) for s in self.direction)
        self.map_type = normalize_map_type(self.map_type)

    @property
    def name(self):
        return str(self.source) if self.source is not None else "<array>"

    @property
    def units(self):
        return MAP_UNITS[self.map_type]

    @property
    def shape(self):
        return self.array.shape

    def with_array(self, array, **changes):
        """A copy with new voxel values (same geometry and headers unless ``changes`` say otherwise)."""
        return dataclasses.replace(self, array=np.asarray(array, dtype=np.float32), **changes)

    def to_sitk(self):
        """Return a SimpleITK image with this volume's values and geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, image, **fields):
        """Build a MapVolume from a SimpleITK image (2-D images become one slice)."""
        import SimpleITK as sitk

        if image.GetDimension() == 2:
            image = sitk.JoinSeries(image)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{fields.get('source', '<image>')}: expected a scalar map, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
        return cls(
            array=sitk.GetArrayFromImage(image).astype(np.float32),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            **fields,
        )


def check_map_values(array, map_type, source, allow_negative_background=True):
    """Raise an error naming ``source`` when ``array`` cannot be a ``map_type`` map in physical units.

    Checks: no NaN/inf; foreground median and maximum inside the plausible range of the map type.
    Small negative values (fit noise in the background) are allowed; they are set to 0 later.

    Raises
    ------
    InputError
        NaN or infinite voxels.
    UnitsError
        Values that cannot be in the units of ``map_type`` (e.g. T1 in seconds).
    """
    map_type = normalize_map_type(map_type)
    arr = np.asarray(array)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise InputError(f"{source}: {int(bad.sum())} voxels are NaN or infinite (first at index {where}); "
                         "fill or mask them before harmonisation")
    units = MAP_UNITS[map_type]
    lo, hi = PLAUSIBLE_RANGE[map_type]
    fg = arr[arr > 0]
    if fg.size == 0:
        raise UnitsError(f"{source}: the map has no positive values; a {map_type} map in {units} is expected")
    med = float(np.median(fg))
    mlo, mhi = PLAUSIBLE_MEDIAN[map_type]
    vmax = float(fg.max())
    if med < mlo or med > mhi or vmax > hi * 1.5:
        hint = ""
        if map_type in ("T1", "T2") and med < mlo:
            hint = " (values look like seconds; convert to ms)"
        elif map_type == "PD" and med < mlo:
            hint = " (values look like a fraction; convert to percent)"
        raise UnitsError(
            f"{source}: values cannot be a {map_type} map in {units}: median of positive voxels {med:.4g}, "
            f"maximum {vmax:.4g}; expected median within {mlo:g}-{mhi:g} and maximum below {hi * 1.5:g}{hint}"
        )
    if not allow_negative_background and (arr < 0).any():
        raise UnitsError(f"{source}: {int((arr < 0).sum())} voxels are negative; a {map_type} map cannot be negative")
