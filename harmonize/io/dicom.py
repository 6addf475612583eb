"""DICOM series of quantitative maps: discovery, reading in physical units, writing back.

Reading
-------
A folder tree is walked once; every file that is DICOM (``.dcm``/``.dicom``/``.ima`` files, and
extension-less files with the ``DICM`` preamble) has its header read without pixel data
(``stop_before_pixels``, only the tags discovery needs). Files are grouped by SeriesInstanceUID into
:class:`DicomSeriesInfo`. The scanner label comes from ManufacturerModelName (or another tag),
sanitised with :func:`harmonize.io.discover.scanner_label`; the subject from PatientID.

:func:`read_dicom_series` reads the pixel data of one series, applies RescaleSlope/Intercept (so the
values are in the map's physical units: ms for T1/T2, % for PD), orders the slices by their position
along the slice normal (ImagePositionPatient projected on the cross product of the two
ImageOrientationPatient vectors; InstanceNumber and file names are not trusted), and returns a
:class:`~harmonize.io.volume.MapVolume` whose geometry matches what SimpleITK's series reader gives.

Writing
-------
:func:`write_dicom_series` writes a volume as a new series. When the volume carries the per-slice
headers of the series it came from, every original tag is kept; the Series and SOP Instance UIDs are
new, the SeriesDescription says the series was harmonised, ImageType becomes DERIVED and the pixel
data and rescale are those of the new values.

Precision of the stored values: a DICOM pixel is an integer ``q`` and the value is
``q * RescaleSlope + RescaleIntercept``. When the new values fit the stored integer range with the
original slope and intercept, these are kept, so the new series has exactly the precision of the
original one (maximum rounding error ``RescaleSlope / 2``, e.g. 0.5 ms for a T1 map stored in whole
ms). Otherwise (or without original headers) a new slope is chosen from the 1-2-5 series
(..., 0.01, 0.02, 0.05, 0.1, ...) as the smallest one for which the values fit 16-bit integers, with
intercept 0 so that background 0 stays exactly 0: the rounding error is then at most
``slope / 2 <= 2.5 * max|value| / 65535 / 2`` (about 0.1 ms for T1 values up to 5000 ms).
Values are stored unsigned when none is negative, signed otherwise.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pydicom.datadict
import pydicom.misc
import pydicom.multival
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import DS

from harmonize._fs import atomic_path, check_not_input
from harmonize.errors import ConfigError, GeometryError, InputError
from harmonize.io.discover import scanner_label
from harmonize.io.volume import MAP_UNITS, MapVolume, check_map_values, normalize_map_type

__all__ = [
    "DicomSeriesInfo",
    "find_dicom_series",
    "read_dicom_series",
    "is_quantitative_map",
    "write_dicom_series",
    "classify_series",
    "choose_rescale",
    "SliceSpacingWarning",
    "DuplicateSeriesWarning",
]

#: suffixes of files that are always tried as DICOM (others need the DICM preamble)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")
#: suffixes that are never DICOM: skipped without opening the file (fast discovery in mixed trees)
_NOT_DICOM_SUFFIXES = (
    ".nii", ".gz", ".npy", ".npz", ".h5", ".hdf5", ".json", ".yaml", ".yml", ".txt", ".csv", ".md",
    ".png", ".jpg", ".jpeg", ".pdf", ".py", ".html", ".xml", ".zip", ".tar", ".mat", ".bz2", ".xz",
)
#: the tags discovery reads (besides the scanner tag)
_DISCOVERY_TAGS = [
    "SOPClassUID", "Modality", "PatientID", "PatientName", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "ImageType", "Rows", "Columns", "NumberOfFrames",
]
#: the tags describing pixel values; removed with the pixel data from the headers kept per slice
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_MAP_TYPES = tuple(MAP_UNITS)
#: UCUM codes of the map units (RealWorldValueMapping of fresh headers)
_UCUM = {"ms": ("ms", "millisecond"), "%": ("%", "percent")}


class SliceSpacingWarning(UserWarning):
    """A DICOM series whose slice positions are not evenly spaced."""


class DuplicateSeriesWarning(UserWarning):
    """Several series (or files) match one subject, scanner and map type; one was taken."""


@dataclasses.dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found on disk (from headers only; no pixel data read).

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID.
    files : tuple of Path
        The series' files, sorted by path (not yet by slice position).
    folder : Path
        The deepest folder holding all files (named in error messages).
    scanner : str
        Sanitised scanner label (from ManufacturerModelName or the chosen tag).
    subject : str
        Sanitised subject label (from PatientID, else PatientName).
    description : str
        SeriesDescription ('' when absent).
    image_type : tuple of str
        ImageType values (those shared by all files when they differ).
    modality : str
        Modality ('MR' for maps written by scanners).
    rows, columns : int
        Rows and Columns of the first file (mixed sizes are reported by :func:`read_dicom_series`).
    series_number : int or None
        SeriesNumber, when present.
    """

    series_uid: str
    files: tuple[Path, ...]
    folder: Path
    scanner: str
    subject: str
    description: str
    image_type: tuple[str, ...]
    modality: str
    rows: int
    columns: int
    series_number: int | None = None

    @property
    def name(self):
        """Printable name for messages: folder, description and UID."""
        return f"{self.folder} (series '{self.description}', UID {self.series_uid})"


# --------------------------------------------------------------------------------------------
# what kind of series is this


_SEP = r"[\s_\-]*"


def classify_series(description, image_type, map_type) -> str:
    """Say whether a series is a ``map_type`` map from its SeriesDescription and ImageType.

    Parameters
    ----------
    description : str
        SeriesDescription.
    image_type : sequence of str
        ImageType values.
    map_type : str
        'T1', 'T2' or 'PD'.

    Returns
    -------
    str
        ``'map'``: named as a map of this type (e.g. 'T1 Map', 'T1Mapping', 'QT1', or a generic
        'Mapping'/'Map' that names no other map type); ``'other'``: a weighted or raw image
        (T1W, FLAIR, 'WEIGHTED'; ImageType M_FSE, MAGNITUDE, PHASE...) or a map of another type;
        ``'unknown'``: nothing in the header says either way.
    """
    map_type = normalize_map_type(map_type)
    desc = str(description or "").upper()
    types = [str(t).upper() for t in (image_type or ())]
    text = " ".join([desc] + types)

    def named_map(mt, where):
        return re.search(rf"(?<![A-Z0-9])Q?{mt}{_SEP}MAP", where) or re.search(
            rf"MAP[A-Z]*{_SEP}{mt}(?![A-Z0-9*])", where
        ) or re.search(rf"(?<![A-Z0-9])Q{mt}(?![A-Z0-9*])", where)

    weighted_desc = re.search(
        r"(?<![A-Z0-9])(T1|T2|PD)" + _SEP + r"WI?(?![A-Z0-9])|WEIGHTED|FLAIR|(?<![A-Z0-9])"
        r"(STIR|SWI|DWI|DTI|ADC|TRACE|DIFFUSION|LOCALI[SZ]ER|SCOUT|SURVEY|CALIBRATION)(?![A-Z0-9])",
        desc,
    )
    raw_type = any(
        t in ("M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY", "LOCALIZER")
        or re.match(r"^[MPRI]_", t)
        for t in types
    )
    others = [mt for mt in _MAP_TYPES if mt != map_type]
    # the description first: ImageType values are often copied from the source images
    for where in (desc, " ".join(types)):
        if named_map(map_type, where) and not weighted_desc:
            return "map"
        if any(named_map(mt, where) for mt in others):
            return "other"
    if weighted_desc or raw_type:
        return "other"
    mentioned = {mt for mt in _MAP_TYPES if re.search(rf"(?<![A-Z0-9]){mt}(?![A-Z0-9*])", text)}
    other_quantity = re.search(r"(?<![A-Z0-9])(T2\s*\*|T2STAR|T2S|R1|R2\s*\*?|R2STAR|B0|B1|MTR|MWF|QSM|CBF|CBV|"
                               r"MTT|TTP|FIELD|PHASE|T1RHO)(?![A-Z0-9])", text)
    if re.search(r"MAP|RELAXOMETRY|QUANTITATIVE", text):
        if map_type in mentioned or not (mentioned or other_quantity):
            return "map"
        return "other"
    return "unknown"


def is_quantitative_map(info_or_dataset, map_type) -> bool:
    """True when the SeriesDescription/ImageType name a ``map_type`` map (see :func:`classify_series`).

    Parameters
    ----------
    info_or_dataset : DicomSeriesInfo or pydicom.Dataset
        A discovered series or one header.
    map_type : str
        'T1', 'T2' or 'PD'.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.SeriesDescription = "T1W FSE"; ds.ImageType = ["ORIGINAL", "PRIMARY", "M_FSE"]
    >>> is_quantitative_map(ds, "T1")
    False
    >>> ds.SeriesDescription = "MAGiC T1 Mapping"; ds.ImageType = ["DERIVED", "PRIMARY"]
    >>> is_quantitative_map(ds, "T1")
    True
    """
    description, image_type = _description_and_type(info_or_dataset)
    return classify_series(description, image_type, map_type) == "map"


def _description_and_type(obj):
    if isinstance(obj, DicomSeriesInfo):
        return obj.description, obj.image_type
    return str(obj.get("SeriesDescription", "") or ""), _image_type(obj)


def _image_type(ds):
    value = ds.get("ImageType", None)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value)


# --------------------------------------------------------------------------------------------
# discovery


def _check_tag(scanner_tag):
    if pydicom.datadict.tag_for_keyword(scanner_tag) is None:
        raise ConfigError(f"{scanner_tag!r}: not a DICOM tag keyword; use a keyword such as "
                          "ManufacturerModelName, StationName or InstitutionName")


def _dicom_candidate(path):
    """True when ``path`` should be read as DICOM: a DICOM suffix or the 'DICM' preamble."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    if name.endswith(_NOT_DICOM_SUFFIXES) or name.startswith("."):
        return False
    try:
        return pydicom.misc.is_dicom(path)
    except OSError:
        return False


def _iter_files(root, skip_reserved):
    """All files under ``root`` (a file is itself), in sorted order; '.'/'_' folders skipped."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (d.startswith(".") or (skip_reserved and d.startswith("_"))))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _read_header(path, scanner_tag):
    tags = _DISCOVERY_TAGS + [scanner_tag]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags,
                             force=path.name.lower().endswith(DICOM_SUFFIXES))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not a readable DICOM file ({_first_line(err)}); "
                         "remove or replace the file (it may be truncated or corrupt)") from err
    return ds


def _sop_class(ds):
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID", None) or (meta.get("MediaStorageSOPClassUID", None) if meta is not None else None)
    return pydicom.uid.UID(str(uid)) if uid else None


def _is_image(ds, path):
    """True for an image object; False for other DICOM objects; InputError for a damaged image file."""
    sop_class = _sop_class(ds)
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        return False
    if ds.get("Rows") is not None and _text(ds, "SeriesInstanceUID"):
        return True
    if sop_class is not None and "Image Storage" in sop_class.name:
        # an image class without rows or series UID: the header was cut short
        raise InputError(f"{path}: DICOM {sop_class.name} file without "
                         f"{'Rows' if ds.get('Rows') is None else 'SeriesInstanceUID'}: the file is truncated "
                         "or damaged; remove or replace it")
    if sop_class is None and path.name.lower().endswith(DICOM_SUFFIXES):
        # read with force=True: a file named .dcm whose bytes are no DICOM parse to (almost) nothing
        raise InputError(f"{path}: named as DICOM but holds no DICOM header (no SOP Class UID); "
                         "remove or replace the file")
    return False


def _text(ds, keyword):
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip()


def _label(text, fallback):
    text = str(text or "").strip()
    return scanner_label(text) if text else fallback


def find_dicom_series(root, scanner_tag="ManufacturerModelName", skip_reserved=True) -> list[DicomSeriesInfo]:
    """Find every DICOM image series under ``root`` (headers only).

    Parameters
    ----------
    root : str or Path
        A folder (walked recursively) or a single file.
    scanner_tag : str
        DICOM keyword whose value labels the scanner (default ManufacturerModelName).
    skip_reserved : bool
        Skip sub-folders whose name starts with '_' (folders starting with '.' are always skipped).

    Returns
    -------
    list of DicomSeriesInfo
        Sorted by (scanner, subject, series number, description, UID). Non-image DICOM objects
        (DICOMDIR, reports, presentation states) are ignored.

    Raises
    ------
    InputError
        ``root`` does not exist, or a file that claims to be DICOM cannot be read (named).
    ConfigError
        ``scanner_tag`` is not a DICOM keyword.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder not found")
    _check_tag(scanner_tag)
    groups = defaultdict(list)
    for path in _iter_files(root, skip_reserved):
        if not _dicom_candidate(path):
            continue
        ds = _read_header(path, scanner_tag)
        if not _is_image(ds, path):
            continue  # DICOMDIR, structured report, presentation state...: no image
        groups[_text(ds, "SeriesInstanceUID")].append((path, ds))
    series = [_make_info(uid, items, scanner_tag) for uid, items in groups.items()]
    return sorted(series, key=lambda s: (s.scanner, s.subject, s.series_number or 0, s.description, s.series_uid))


def _make_info(uid, items, scanner_tag):
    items = sorted(items, key=lambda item: str(item[0]))
    files = tuple(p for p, _ in items)
    first = items[0][1]
    folder = Path(os.path.commonpath([str(p.parent) for p in files]))
    subject = _text(first, "PatientID") or _text(first, "PatientName")
    number = first.get("SeriesNumber", None)
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    image_type = _image_type(first)
    others = [_image_type(ds) for _, ds in items[1:]]
    if any(t != image_type for t in others):
        # a series holding several kinds of image (e.g. T1, T2 and PD maps): keep what all share
        image_type = tuple(v for v in image_type if all(v in t for t in others))
    return DicomSeriesInfo(
        series_uid=uid,
        files=files,
        folder=folder,
        scanner=_label(_text(first, scanner_tag), "unknown"),
        subject=_label(subject, "unknown"),
        description=_text(first, "SeriesDescription"),
        image_type=image_type,
        modality=_text(first, "Modality"),
        rows=int(first.get("Rows", 0) or 0),
        columns=int(first.get("Columns", 0) or 0),
        series_number=number,
    )


# --------------------------------------------------------------------------------------------
# reading


def _resolve_source(source, map_type, scanner_tag):
    """Return the DicomSeriesInfo of ``source`` (folder, file list or info)."""
    if isinstance(source, DicomSeriesInfo):
        missing = [p for p in source.files if not Path(p).exists()]
        if missing:
            raise InputError(f"{missing[0]}: file of series {source.series_uid} not found "
                             f"({len(missing)} of {len(source.files)} files missing); look for the series again")
        return source
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise InputError(f"{folder}: DICOM folder not found")
        found = find_dicom_series(folder, scanner_tag, skip_reserved=False)
        where = folder
    else:
        files = [Path(p) for p in source]
        if not files:
            raise InputError("<empty list>: no DICOM files given")
        for p in files:
            if not p.is_file():
                raise InputError(f"{p}: DICOM file not found")
        _check_tag(scanner_tag)
        groups = defaultdict(list)
        for p in files:
            ds = _read_header(p, scanner_tag)
            groups[_text(ds, "SeriesInstanceUID")].append((p, ds))
        found = [_make_info(uid, items, scanner_tag) for uid, items in groups.items()]
        where = Path(os.path.commonpath([str(p.parent) for p in files]))
    if not found:
        raise InputError(f"{where}: no DICOM image files found; point to a folder holding one DICOM series")
    if len(found) == 1:
        return found[0]
    maps = [s for s in found if is_quantitative_map(s, map_type)]
    listing = "; ".join(f"'{s.description}' ({len(s.files)} files, {s.folder})" for s in found)
    if len(maps) == 1:
        warnings.warn(f"{where}: holds {len(found)} series; reading the {map_type} map '{maps[0].description}'",
                      DuplicateSeriesWarning, stacklevel=3)
        return maps[0]
    raise InputError(f"{where}: holds {len(found)} DICOM series ({listing}) and "
                     f"{'none' if not maps else len(maps)} of them is named as a {map_type} map; "
                     "point to the folder of one series")


def read_dicom_series(source, map_type="T1", scanner_tag="ManufacturerModelName", *,
                      check_type=True, uneven_spacing="warn") -> MapVolume:
    """Read one DICOM series of a quantitative map into a MapVolume in physical units.

    Parameters
    ----------
    source : str, Path, sequence of paths, or DicomSeriesInfo
        A folder holding one series (or one map series among others), the files of a series,
        or a series found by :func:`find_dicom_series`.
    map_type : str
        'T1', 'T2' (ms) or 'PD' (%).
    scanner_tag : str
        DICOM keyword labelling the scanner.
    check_type : bool
        Reject series whose SeriesDescription/ImageType say they are a weighted image or a map of
        another type (:func:`classify_series` == 'other'). Series the header does not name either
        way are accepted when their values are plausible.
    uneven_spacing : {'warn', 'error'}
        What to do when the slice positions are not evenly spaced (missing slice, gaps): the maps
        are harmonised slice by slice, so the default warns; the spacing is then the median step
        and every slice keeps its own position in its header (``meta['slice_positions_mm']``).

    Returns
    -------
    MapVolume
        ``array`` (slices, rows, columns) float32 in physical units, slices ordered along the
        slice normal; ``spacing`` (column spacing, row spacing, slice step) in mm; ``origin`` the
        ImagePositionPatient of the first slice; ``direction`` the row and column direction
        cosines and the normal (SimpleITK convention, the same as its series reader);
        ``dicom`` the per-slice headers (pixel data removed); ``meta`` with 'series_uid',
        'series_description', 'image_type', 'modality', 'manufacturer', 'model', 'patient_id',
        'study_uid', 'series_number', 'magnetic_field_strength', 'slice_positions_mm',
        'rescale' (slope, intercept) per slice, 'files'.

    Raises
    ------
    InputError
        Missing or unreadable files, a series that is not a ``map_type`` map, NaN/inf values.
    UnitsError
        Values that cannot be in the map's units (e.g. T1 in seconds).
    GeometryError
        Mixed in-plane sizes or pixel spacings, mixed orientations, several images at one slice
        position, uneven slice spacing (with ``uneven_spacing='error'``), multi-frame files.
    """
    map_type = normalize_map_type(map_type)
    if uneven_spacing not in ("warn", "error"):
        raise ConfigError(f"uneven_spacing={uneven_spacing!r}: use 'warn' or 'error'")
    info = _resolve_source(source, map_type, scanner_tag)
    name = info.name
    if check_type and classify_series(info.description, info.image_type, map_type) == "other":
        others = [mt for mt in _MAP_TYPES
                  if mt != map_type and classify_series(info.description, info.image_type, mt) == "map"]
        what = f"a {others[0]} map" if others else "a weighted or raw image"
        raise InputError(
            f"{info.folder}: series '{info.description}' (ImageType {'/'.join(info.image_type) or 'none'}) "
            f"is {what}, not a {map_type} map; choose the series of the {map_type} map, whose "
            f"SeriesDescription usually contains '{map_type}Map' or 'Mapping'"
        )
    headers, values = [], []
    for path in info.files:
        ds, pixels = _read_slice(Path(path))
        headers.append(ds)
        values.append((path, pixels))
    _check_same(headers, info, "Rows", "Columns")
    headers, values = _select_images(headers, values, info, map_type)
    geometry = _slice_geometry(headers, info, uneven_spacing)
    order = geometry.pop("order")
    headers = [headers[i] for i in order]
    files = [values[i][0] for i in order]
    array = np.stack([values[i][1] for i in order]).astype(np.float32)
    check_map_values(array, map_type, name)
    first = headers[0]
    meta = {
        "series_uid": info.series_uid,
        "series_description": info.description,
        "image_type": list(info.image_type),
        "modality": info.modality,
        "manufacturer": _text(first, "Manufacturer"),
        "model": _text(first, "ManufacturerModelName"),
        "patient_id": _text(first, "PatientID"),
        "study_uid": _text(first, "StudyInstanceUID"),
        "series_number": info.series_number,
        "magnetic_field_strength": _float_or_none(first.get("MagneticFieldStrength", None)),
        "slice_positions_mm": geometry.pop("positions"),
        "rescale": [_rescale_of(ds) for ds in headers],
        "files": [str(p) for p in files],
        "units": MAP_UNITS[map_type],
    }
    return MapVolume(array=array, map_type=map_type, source=info.folder, scanner=info.scanner,
                     subject=info.subject, dicom=headers, meta=meta, **geometry)


def _read_slice(path):
    """Read one file; return (header without pixel data, values in physical units (rows, cols))."""
    try:
        ds = pydicom.dcmread(path, force=path.name.lower().endswith(DICOM_SUFFIXES))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not a readable DICOM file ({_first_line(err)}); "
                         "remove or replace the file (it may be truncated or corrupt)") from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise GeometryError(f"{path}: multi-frame (enhanced) DICOM with {frames} frames is not supported; "
                            "export the series as single-frame images or convert it to NIfTI")
    if not any(k in ds for k in _PIXEL_DATA_KEYWORDS):
        raise InputError(f"{path}: holds no pixel data; remove it from the series folder")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        stored = ds.pixel_array
    except Exception as err:  # noqa: BLE001  (pixel decoders raise many types)
        if syntax is None or not syntax.is_compressed:
            raise InputError(f"{path}: pixel data cannot be read ({_first_line(err)}); the file is truncated or "
                             "its header does not describe its pixels: remove or replace it") from err
        # no pydicom decoder for this compression (JPEG 2000, JPEG-LS... need plugins): try GDCM
        values = _sitk_fallback(path, ds, err)
    else:
        if stored.ndim != 2:
            raise InputError(f"{path}: pixel data of shape {stored.shape}; a single-channel 2-D image is expected")
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            values = stored.astype(np.float64)
        else:
            slope, intercept = _rescale_of(ds)
            values = stored.astype(np.float64) * slope + intercept
    for keyword in _PIXEL_DATA_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds, values


def _sitk_fallback(path, ds, err):
    """Decode compressed pixel data pydicom cannot decode with SimpleITK (GDCM); values rescaled."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
        values = sitk.GetArrayFromImage(image).astype(np.float64)
    except RuntimeError as err2:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(f"{path}: pixel data cannot be decoded (transfer syntax {syntax}: {_first_line(err)}; "
                         f"SimpleITK: {_first_line(err2)}); decompress the series (e.g. gdcmconv --raw) "
                         "or install pylibjpeg") from err
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise InputError(f"{path}: pixel data of shape {values.shape}; a single-channel 2-D image is expected")
    return values


def _rescale_of(ds):
    slope = _float_or_none(ds.get("RescaleSlope", None))
    intercept = _float_or_none(ds.get("RescaleIntercept", None))
    return (1.0 if slope is None or slope == 0 else slope), (0.0 if intercept is None else intercept)


def _float_or_none(value):
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_same(headers, info, *keywords):
    seen = defaultdict(list)
    for ds, path in zip(headers, info.files):
        seen[tuple(ds.get(k, None) for k in keywords)].append(path)
    if len(seen) > 1:
        parts = "; ".join(f"{'x'.join(str(v) for v in key)} in {len(paths)} files (e.g. {Path(paths[0]).name})"
                          for key, paths in seen.items())
        raise GeometryError(f"{info.folder}: series '{info.description}' mixes {'/'.join(keywords)}: {parts}; "
                            "a map series must have one in-plane size; remove the odd files")


def _select_images(headers, values, info, map_type):
    """Keep one image per slice position (series holding several map types or echoes)."""
    positions = [tuple(np.round(_vector(ds, "ImagePositionPatient", info, 3), 3)) for ds in headers]
    if len(set(positions)) == len(positions):
        return headers, values
    keep = [i for i, ds in enumerate(headers)
            if classify_series(_text(ds, "SeriesDescription"), _image_type(ds), map_type) == "map"]
    kept_positions = [positions[i] for i in keep]
    if keep and len(set(kept_positions)) == len(kept_positions) and len(keep) < len(headers):
        return [headers[i] for i in keep], [values[i] for i in keep]
    count = len(positions) - len(set(positions))
    pos = next(p for p in positions if positions.count(p) > 1)
    same = [Path(info.files[i]).name for i, p in enumerate(positions) if p == pos]
    raise GeometryError(f"{info.folder}: series '{info.description}' has {count} images at an already used "
                        f"slice position (e.g. {pos} mm in {', '.join(same)}); the series holds several images "
                        "per slice (echoes, map types or duplicates): keep one image per slice position")


def _vector(ds, keyword, info, n):
    value = ds.get(keyword, None)
    try:
        vec = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GeometryError(f"{info.folder}: series '{info.description}' has no valid {keyword}; "
                            "the slice geometry is needed to order the slices") from err
    if vec.shape != (n,) or not np.all(np.isfinite(vec)):
        raise GeometryError(f"{info.folder}: series '{info.description}' has an invalid {keyword} {list(value)}; "
                            f"{n} finite numbers are expected")
    return vec


def _slice_geometry(headers, info, uneven_spacing):
    """Order, spacing, origin and direction of the slices from ImagePositionPatient/ImageOrientationPatient."""
    orientation = _vector(headers[0], "ImageOrientationPatient", info, 6)
    for ds in headers[1:]:
        if not np.allclose(_vector(ds, "ImageOrientationPatient", info, 6), orientation, atol=1e-4):
            raise GeometryError(f"{info.folder}: series '{info.description}' mixes slice orientations "
                                "(ImageOrientationPatient differs between files); one stack of parallel slices "
                                "is expected")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not (abs(np.linalg.norm(row_dir) - 1) < 1e-3 and abs(np.linalg.norm(col_dir) - 1) < 1e-3
            and abs(np.linalg.norm(normal) - 1) < 1e-3):
        raise GeometryError(f"{info.folder}: series '{info.description}' has ImageOrientationPatient "
                            f"{orientation.tolist()} whose vectors are not orthonormal; the header is damaged")
    spacings = {tuple(np.round(_vector(ds, "PixelSpacing", info, 2), 6)) for ds in headers}
    if len(spacings) > 1:
        raise GeometryError(f"{info.folder}: series '{info.description}' mixes pixel spacings {sorted(spacings)}; "
                            "one in-plane grid is expected")
    row_spacing, col_spacing = _vector(headers[0], "PixelSpacing", info, 2)
    positions = np.array([_vector(ds, "ImagePositionPatient", info, 3) for ds in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    if steps.size:
        step = float(np.median(steps))
        if step <= 1e-6:
            raise GeometryError(f"{info.folder}: series '{info.description}' has several slices at one position; "
                                "keep one image per slice position")
        if np.max(np.abs(steps - step)) > max(0.01 * step, 1e-3):
            message = (f"{info.folder}: series '{info.description}' has uneven slice spacing: steps "
                       f"{np.round(steps, 3).tolist()} mm (median {step:.4g} mm)")
            if uneven_spacing == "error":
                raise GeometryError(message + "; a gap means a missing slice: complete the series")
            warnings.warn(message + f"; using {step:.4g} mm as the volume spacing (each slice keeps its own "
                          "position in its DICOM header)", SliceSpacingWarning, stacklevel=3)
    else:
        step = (_float_or_none(headers[0].get("SpacingBetweenSlices", None))
                or _float_or_none(headers[0].get("SliceThickness", None)) or 1.0)
    direction = np.column_stack([row_dir, col_dir, normal])
    return {
        "order": order.tolist(),
        "positions": along.tolist(),
        # rounded to 1e-6 mm: the positions are DICOM decimal strings, their differences carry float noise
        "spacing": (float(col_spacing), float(row_spacing), round(abs(step), 6)),
        "origin": tuple(positions[order[0]].tolist()),
        "direction": tuple(direction.ravel().tolist()),
    }


# --------------------------------------------------------------------------------------------
# writing


def _nice_slope(max_abs, levels):
    """Smallest 1-2-5 x 10^k slope with ``max_abs / slope <= levels``."""
    if max_abs <= 0:
        return 1.0
    raw = max_abs / levels
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 5, 10):
        slope = float(f"{mantissa}e{exponent}")
        if max_abs / slope <= levels:
            return slope
    return float(f"1e{exponent + 1}")


def _int_range(bits, signed):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def choose_rescale(values, original=None):
    """Choose how to store ``values`` as DICOM integers.

    Parameters
    ----------
    values : ndarray
        The values in physical units (any shape), finite.
    original : dict or None
        ``{'slope', 'intercept', 'bits_allocated', 'bits_stored', 'signed'}`` of the original
        series; kept when the values fit the integer range it allows (precision unchanged).

    Returns
    -------
    dict
        'slope', 'intercept' (floats exactly representable as DICOM DS strings), 'bits_allocated',
        'bits_stored', 'signed', 'kept' (True when the original rescale was kept).
    """
    values = np.asarray(values, dtype=np.float64)
    vmin = float(values.min()) if values.size else 0.0
    vmax = float(values.max()) if values.size else 0.0
    if original is not None and original.get("bits_allocated") in (8, 16, 32):
        slope, intercept = original["slope"], original["intercept"]
        qmin = math.floor((vmin - intercept) / slope + 0.5)
        qmax = math.floor((vmax - intercept) / slope + 0.5)
        candidates = [(original["bits_allocated"], original["bits_stored"], original["signed"]),
                      (max(16, original["bits_allocated"]), max(16, original["bits_allocated"]), original["signed"]),
                      (max(16, original["bits_allocated"]), max(16, original["bits_allocated"]), True)]
        for bits_allocated, bits_stored, signed in candidates:
            lo, hi = _int_range(bits_stored, signed)
            if lo <= qmin and qmax <= hi:
                return {"slope": slope, "intercept": intercept, "bits_allocated": bits_allocated,
                        "bits_stored": bits_stored, "signed": signed, "kept": True}
    signed = vmin < 0
    # intercept 0 keeps background 0 exact; the 1-2-5 slope keeps stored integers readable
    levels = 32767 if signed else 65535
    slope = _nice_slope(max(abs(vmin), abs(vmax)), levels)
    return {"slope": slope, "intercept": 0.0, "bits_allocated": 16, "bits_stored": 16, "signed": signed, "kept": False}


def _quantise(values, rescale):
    q = np.floor((np.asarray(values, np.float64) - rescale["intercept"]) / rescale["slope"] + 0.5)
    bits = rescale["bits_allocated"]
    dtype = np.dtype(f"{'i' if rescale['signed'] else 'u'}{bits // 8}").newbyteorder("<")
    return q.astype(dtype)


def _ds(value):
    """A DICOM decimal string of at most 16 characters holding ``value`` as exactly as possible."""
    return DS(float(value), auto_format=True)


def _original_storage(headers):
    ds = headers[0]
    bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
    if any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
        return None
    slope, intercept = _rescale_of(ds)
    if any(_rescale_of(h) != (slope, intercept) for h in headers[1:]):
        return None  # per-slice rescales: choose one for the whole new series
    return {"slope": slope, "intercept": intercept, "bits_allocated": bits_allocated,
            "bits_stored": int(ds.get("BitsStored", bits_allocated) or bits_allocated),
            "signed": int(ds.get("PixelRepresentation", 0) or 0) == 1}


def _set_pixels(ds, q, rescale):
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(q.shape[0]), int(q.shape[1])
    ds.BitsAllocated = rescale["bits_allocated"]
    ds.BitsStored = rescale["bits_stored"]
    ds.HighBit = rescale["bits_stored"] - 1
    ds.PixelRepresentation = 1 if rescale["signed"] else 0
    ds.RescaleSlope = _ds(rescale["slope"])
    ds.RescaleIntercept = _ds(rescale["intercept"])
    for keyword in ("PlanarConfiguration", "NumberOfFrames"):
        if keyword in ds:
            delattr(ds, keyword)
    vr = "SS" if rescale["signed"] else "US"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                    "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit"):
        if keyword in ds:
            delattr(ds, keyword)
    if q.size and q.itemsize == 2:
        ds.add_new(0x00280106, vr, int(q.min()))  # SmallestImagePixelValue
        ds.add_new(0x00280107, vr, int(q.max()))  # LargestImagePixelValue
    if "PixelData" in ds:
        del ds.PixelData
    # explicit VR: pydicom cannot resolve 'OB or OW' for headers read from another transfer syntax
    ds.add_new(0x7FE00010, "OB" if rescale["bits_allocated"] == 8 else "OW", q.tobytes())


def _update_real_world(ds, rescale, q):
    """Keep a RealWorldValueMappingSequence consistent with the new stored values.

    The mapped range always follows the new stored values; a new rescale replaces the mapping
    (a LUT-data mapping cannot describe the new values and becomes linear).
    """
    if "RealWorldValueMappingSequence" not in ds:
        return
    first, last = (int(q.min()), int(q.max())) if q.size else (0, 0)
    vr = "SS" if rescale["signed"] else "US"
    for item in ds.RealWorldValueMappingSequence:
        if not rescale["kept"] or "RealWorldValueLUTData" in item:
            if "RealWorldValueLUTData" in item:
                del item.RealWorldValueLUTData
            item.RealWorldValueSlope = float(rescale["slope"])
            item.RealWorldValueIntercept = float(rescale["intercept"])
        for tag, value in ((0x00409216, first), (0x00409211, last)):  # First / Last Value Mapped
            if tag in item:
                del item[tag]
            item.add_new(tag, vr, value)


def _file_meta(ds, sop_class, sop_instance):
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None)
    if old is not None:
        for elem in old:
            meta.add(copy.deepcopy(elem))
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "ImplementationVersionName" in meta:
        del meta.ImplementationVersionName
    return meta


def _harmonized_description(original):
    text = (original or "").strip()
    return f"{text} harmonized".strip() if text else "harmonized"


def write_dicom_series(volume, out_dir, *, series_description=None, new_uids=True, extra_tags=None,
                       keep_rescale=True) -> list[Path]:
    """Write ``volume`` as one DICOM series in ``out_dir`` (files IM_0001.dcm, ...), atomically.

    Parameters
    ----------
    volume : MapVolume
        Values in physical units; ``array[k]`` becomes file ``IM_{k+1:04d}.dcm``.
    out_dir : str or Path
        Folder to create (replaced as a whole if it exists; it must not be or hold an input).
    series_description : str, optional
        Default: the original description + ' harmonized' (with headers), or
        ``meta['series_description']`` / f'{map_type} Mapping' (fresh headers).
    new_uids : bool
        New SeriesInstanceUID and SOPInstanceUIDs (default). False keeps the original UIDs
        (only for headers read from a series; fresh headers always get new UIDs).
    extra_tags : dict, optional
        DICOM keyword -> value set on every slice last (e.g. ``{"SeriesNumber": 1001}``).
    keep_rescale : bool
        Keep the original RescaleSlope/Intercept when the new values fit (see the module
        docstring on precision). False always chooses a new 16-bit rescale.

    Returns
    -------
    list of Path
        The written files (in ``out_dir``), in slice order.

    Notes
    -----
    With per-slice headers (``len(volume.dicom) == slices``) every tag is kept except: the
    UIDs (new), SeriesDescription, ImageType (first value 'DERIVED', a harmonised image is not an
    original one), DerivationDescription (added), the pixel-data description (bits, sign,
    rescale, smallest/largest values; a RealWorldValueMappingSequence follows a new rescale) and
    the transfer syntax (Explicit VR Little Endian, uncompressed). Without headers a fresh MR
    Image Storage series is built from the geometry and the ``meta`` keys 'manufacturer',
    'model', 'patient_id' (default ``volume.subject``), 'patient_name', 'study_uid',
    'frame_of_reference_uid', 'series_description', 'series_number', 'magnetic_field_strength',
    'slice_thickness' (default the slice step), 'study_date' (YYYYMMDD).

    Raises
    ------
    InputError
        NaN/inf values, an output that is an input.
    GeometryError
        The headers do not fit the array (in-plane size).
    ConfigError
        An unknown keyword in ``extra_tags``.
    """
    out_dir = Path(out_dir)
    if volume.source is not None:
        check_not_input(out_dir, [volume.source])
    array = np.asarray(volume.array, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{out_dir}: the map to write has {int((~np.isfinite(array)).sum())} NaN or infinite "
                         "voxels; DICOM cannot store them: fill or mask them first")
    extra_tags = dict(extra_tags or {})
    for keyword in extra_tags:
        if pydicom.datadict.tag_for_keyword(keyword) is None:
            raise ConfigError(f"extra_tags: {keyword!r} is not a DICOM keyword")
    headers = volume.dicom if volume.dicom is not None and len(volume.dicom) == array.shape[0] else None
    if volume.dicom is not None and headers is None:
        warnings.warn(f"{volume.name}: {len(volume.dicom)} DICOM headers for {array.shape[0]} slices; "
                      "writing fresh headers (the original tags are not kept)", stacklevel=2)
    if headers is not None:
        datasets = _from_headers(volume, array, headers, series_description, new_uids, keep_rescale)
    else:
        datasets = _fresh_headers(volume, array, series_description)
    for ds in datasets:
        for keyword, value in extra_tags.items():
            setattr(ds, keyword, value)
    paths = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k, ds in enumerate(datasets):
            name = f"IM_{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            paths.append(out_dir / name)
    return paths


def _from_headers(volume, array, headers, series_description, new_uids, keep_rescale):
    rows_cols = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for h in headers}
    if rows_cols != {tuple(array.shape[1:])}:
        raise GeometryError(f"{volume.name}: the map is {array.shape[1]}x{array.shape[2]} pixels but its DICOM "
                            f"headers describe {sorted(rows_cols)}; resample the map back to the original grid "
                            "before writing it with the original headers")
    original = _original_storage(headers) if keep_rescale else None
    rescale = choose_rescale(array, original)
    series_uid = generate_uid() if new_uids else None
    description = series_description or _harmonized_description(_text(headers[0], "SeriesDescription"))
    datasets = []
    for k, header in enumerate(headers):
        ds = copy.deepcopy(header)
        q = _quantise(array[k], rescale)
        _set_pixels(ds, q, rescale)
        _update_real_world(ds, rescale, q)
        if new_uids:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
        ds.SeriesDescription = description[:64]
        image_type = list(_image_type(ds)) or ["DERIVED", "PRIMARY"]
        image_type[0] = "DERIVED"
        ds.ImageType = image_type
        ds.DerivationDescription = "harmonized to another scanner by harmonize (CycleGAN style transfer)"
        sop_class = str(ds.get("SOPClassUID", "") or MRImageStorage)
        ds.SOPClassUID = sop_class
        ds.file_meta = _file_meta(ds, sop_class, str(ds.SOPInstanceUID))
        datasets.append(ds)
    return datasets


def _fresh_headers(volume, array, series_description):
    meta = volume.meta or {}
    map_type = volume.map_type
    rescale = choose_rescale(array)
    direction = np.array(volume.direction, dtype=np.float64).reshape(3, 3)
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.array(volume.origin, dtype=np.float64)
    sx, sy, sz = volume.spacing
    study_uid = str(meta.get("study_uid") or generate_uid())
    series_uid = generate_uid()
    frame_uid = str(meta.get("frame_of_reference_uid") or generate_uid())
    patient_id = str(meta.get("patient_id") or volume.subject or "anonymous")
    description = series_description or meta.get("series_description") or f"{map_type} Mapping"
    units = MAP_UNITS[map_type]
    code, meaning = _UCUM[units]
    datasets = []
    for k in range(array.shape[0]):
        position = origin + k * sz * normal
        ds = Dataset()
        sop_uid = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "PRIMARY", f"{map_type} MAP"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        if meta.get("study_date"):
            ds.StudyDate = ds.SeriesDate = str(meta["study_date"])
        ds.Modality = "MR"
        ds.Manufacturer = str(meta.get("manufacturer") or "")
        ds.ManufacturerModelName = str(meta.get("model") or volume.scanner or "")
        ds.SeriesDescription = str(description)[:64]
        ds.PatientName = str(meta.get("patient_name") or patient_id)
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.ScanningSequence = "RM"  # research mode: the map is computed, not one acquisition
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        if meta.get("magnetic_field_strength") is not None:
            ds.MagneticFieldStrength = _ds(meta["magnetic_field_strength"])
        ds.SliceThickness = _ds(meta.get("slice_thickness") or sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = int(meta.get("series_number") or 1)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_dir, col_dir])]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        q = _quantise(array[k], rescale)
        _set_pixels(ds, q, rescale)
        item = Dataset()
        item.LUTExplanation = f"{map_type} in {units}"
        item.LUTLabel = map_type
        item.RealWorldValueSlope = float(rescale["slope"])
        item.RealWorldValueIntercept = float(rescale["intercept"])
        vr = "SS" if rescale["signed"] else "US"
        item.add_new(0x00409216, vr, int(q.min()))  # RealWorldValueFirstValueMapped
        item.add_new(0x00409211, vr, int(q.max()))  # RealWorldValueLastValueMapped
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = code, "UCUM", meaning
        item.MeasurementUnitsCodeSequence = [unit]
        ds.RealWorldValueMappingSequence = [item]
        ds.file_meta = _file_meta(ds, MRImageStorage, sop_uid)
        datasets.append(ds)
    return datasets


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
