"""Find the quantitative maps of a data folder, per scanner and subject.

Layouts (docs/DESIGN.md, "Data folder layout")::

    DATA/<scanner>/<subject>.nii.gz             one map type (the first requested), also .nii .npy .npz
    DATA/<scanner>/<subject>_<MAP>.nii.gz       several map types, MAP in T1, T2, PD
    DATA/<any tree of DICOM series>             scanner from ManufacturerModelName (or another tag),
                                                subject from PatientID, map type from SeriesDescription
    DATA/_truth/<scanner>/<subject>[_<MAP>].nii.gz    paired truth (see find_truth)
    DATA/_tissue/<scanner>/<subject>_labels.nii.gz    tissue labels (see find_tissue)

Folders whose name starts with '_' or '.' are never scanner folders and are not searched for DICOM.
Scanner labels are sanitised with :func:`scanner_label` for folder names and DICOM tags alike.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING


from harmonize.errors import InputError
from harmonize.io.volume import MAP_UNITS, normalize_map_type

if TYPE_CHECKING:  # dicom.py imports this module; import it lazily at run time
    from harmonize.io.dicom import DicomSeriesInfo
    from harmonize.io.volume import MapVolume

__all__ = ["scanner_label", "MapRecord", "find_maps", "read_record", "pick_domains", "find_truth", "find_tissue"]

#: map-file suffixes of the NIfTI/NumPy layout (same as harmonize.io.nifti.MAP_SUFFIXES)
_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz")
_KIND = {".nii.gz": "nifti", ".nii": "nifti", ".npy": "numpy", ".npz": "numpy"}


def scanner_label(text) -> str:
    """Sanitise a scanner (or subject) name into a label usable as a folder name.

    Runs of characters other than letters, digits, '.' and '-' become one '_'; leading and
    trailing '_' and '.' are stripped; an empty result is 'unknown'.

    Examples
    --------
    >>> scanner_label("Optima MR450w")
    'Optima_MR450w'
    >>> scanner_label("  SIGNA / HDxt ")
    'SIGNA_HDxt'
    """
    label = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_.")
    return label or "unknown"


@dataclasses.dataclass(frozen=True)
class MapRecord:
    """One map of one subject on one scanner, found on disk (nothing read yet).

    Attributes
    ----------
    scanner, subject : str
        Sanitised labels.
    map_type : str
        'T1', 'T2' or 'PD'.
    kind : str
        'nifti', 'numpy' or 'dicom'.
    path : Path
        The file, or the DICOM series folder.
    dicom : DicomSeriesInfo or None
        The series, for kind 'dicom'.
    """

    scanner: str
    subject: str
    map_type: str
    kind: str
    path: Path
    dicom: DicomSeriesInfo | None = None


def _map_suffix(name):
    lower = name.lower()
    return next((s for s in _SUFFIXES if lower.endswith(s)), "")


def _split_name(stem, default_type):
    """'sub01_T2' -> ('sub01', 'T2'); 'sub01' -> ('sub01', default_type)."""
    match = re.match(r"^(.*?)[_\-](T1|T2|PD)$", stem, flags=re.IGNORECASE)
    if match and match.group(1):
        return match.group(1), match.group(2).upper()
    return stem, default_type


def _normalize_types(map_types):
    if isinstance(map_types, str):
        map_types = [t for t in re.split(r"[,\s]+", map_types) if t]
    types = tuple(dict.fromkeys(normalize_map_type(t) for t in map_types))
    if not types:
        raise InputError(f"map_types={map_types!r}: name at least one map type ({', '.join(MAP_UNITS)})")
    return types


def _file_records(data_dir, map_types, found):
    records = []
    for entry in sorted(data_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith(("_", ".")):
            continue
        for path in sorted(entry.iterdir()):
            suffix = _map_suffix(path.name)
            if not suffix or not path.is_file() or path.name.startswith("."):
                continue
            subject, map_type = _split_name(path.name[: -len(suffix)], map_types[0])
            found[f"{_KIND[suffix]} {map_type}"] += 1
            if map_type in map_types:
                records.append(MapRecord(scanner_label(entry.name), subject, map_type, _KIND[suffix], path))
    return records


def _dicom_records(data_dir, map_types, scanner_tag, series_filter, found):
    from harmonize.io.dicom import classify_series, find_dicom_series

    if isinstance(series_filter, str):
        series_filter = [series_filter]
    filters = [f.lower() for f in series_filter] if series_filter else None
    records = []
    for info in find_dicom_series(data_dir, scanner_tag):
        found[f"DICOM series '{info.description}'"] += 1
        kinds = {mt: classify_series(info.description, info.image_type, mt) for mt in map_types}
        if filters is not None:
            if not any(f in info.description.lower() for f in filters):
                continue
            # the filter chooses the series; the header chooses the map type when it can
            named = [mt for mt in map_types if kinds[mt] == "map"]
            possible = [mt for mt in map_types if kinds[mt] != "other"]
            chosen = named[:1] or (possible[:1] if len(possible) == 1 else []) or (
                list(map_types) if len(map_types) == 1 else [])
        else:
            named = [mt for mt in map_types if kinds[mt] == "map"]
            # a generic 'Mapping' name fits every type; only take it when one type is requested
            explicit = [mt for mt in named if _names_type(info, mt)]
            chosen = explicit[:1] or (named[:1] if len(named) == 1 else [])
        if chosen:
            records.append(MapRecord(info.scanner, info.subject, chosen[0], "dicom", info.folder, info))
    return records


def _names_type(info, map_type):
    text = " ".join([info.description, *info.image_type]).upper()
    return re.search(rf"(?<![A-Z0-9]){map_type}(?![A-Z0-9*])|{map_type}[\s_\-]*MAP", text) is not None


def _rank(record):
    """Sort key choosing among duplicates: files before DICOM, series that name the map type, most
    slices, then path (deterministic)."""
    if record.dicom is None:
        return (0, 0, 0, str(record.path))
    info = record.dicom
    return (1, 0 if _names_type(info, record.map_type) else 1, -len(info.files), str(record.path))


def find_maps(data_dir, map_types=("T1",), scanner_tag="ManufacturerModelName",
              series_filter=None) -> list[MapRecord]:
    """Find the maps of ``map_types`` in ``data_dir`` (NIfTI/NumPy layout and any DICOM series).

    Parameters
    ----------
    data_dir : str or Path
        The data folder.
    map_types : sequence of str or str
        Map types to keep ('T1', 'T2', 'PD'); a file without a ``_<MAP>`` suffix is of the first.
    scanner_tag : str
        DICOM keyword labelling the scanner of a DICOM series.
    series_filter : str or sequence of str, optional
        Keep the DICOM series whose SeriesDescription contains one of these substrings
        (case-insensitive). Default: series named as a map of a requested type by
        :func:`harmonize.io.dicom.is_quantitative_map` ('T1Map', 'T1 Mapping', 'Mapping'...).

    Returns
    -------
    list of MapRecord
        Sorted by (scanner, subject, map type). When several files or series match one
        (scanner, subject, map type), a warning names them and one is kept: a NIfTI/NumPy file
        before a DICOM series, then a series whose description names the map type, then the
        series with the most slices, then the first path.

    Raises
    ------
    InputError
        ``data_dir`` is missing or holds no map of the requested types (the message says what
        was found instead).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data folder not found" if not data_dir.exists()
                         else f"{data_dir}: not a folder; give the data folder holding <scanner>/<subject> maps")
    map_types = _normalize_types(map_types)
    found = Counter()
    records = _file_records(data_dir, map_types, found)
    records += _dicom_records(data_dir, map_types, scanner_tag, series_filter, found)
    if not records:
        wanted = "/".join(map_types)
        items = [f"{n} x {what}" for what, n in sorted(found.items())]
        if len(items) > 12:
            items = items[:12] + [f"{len(items) - 12} more kinds"]
        seen = ", ".join(items) or "no map files or DICOM series"
        has_dicom = any(k.startswith("DICOM") for k in found)
        hint = "; choose the DICOM series with a SeriesDescription filter" if has_dicom else ""
        raise InputError(f"{data_dir}: no {wanted} maps found (found: {seen}); expected "
                         f"<scanner>/<subject>.nii.gz, <scanner>/<subject>_{map_types[0]}.nii.gz or DICOM series "
                         f"named as {wanted} maps{hint}")
    groups = defaultdict(list)
    for record in records:
        groups[(record.scanner, record.subject, record.map_type)].append(record)
    chosen = []
    for key, group in sorted(groups.items()):
        group.sort(key=_rank)
        if len(group) > 1:
            names = "; ".join(_describe(r) for r in group)
            warnings.warn(f"{data_dir}: {len(group)} {key[2]} maps for subject {key[1]} on scanner {key[0]} "
                          f"({names}); using {_describe(group[0])}. Remove the others or choose with a "
                          "SeriesDescription filter", stacklevel=2)
        chosen.append(group[0])
    return chosen


def _describe(record):
    if record.dicom is not None:
        return f"series '{record.dicom.description}' in {record.path} ({len(record.dicom.files)} files)"
    return str(record.path)


def read_record(record, **kwargs) -> MapVolume:
    """Read one found map into a validated MapVolume (physical units, scanner and subject set).

    Parameters
    ----------
    record : MapRecord
        From :func:`find_maps`.
    **kwargs
        Passed to :func:`harmonize.io.dicom.read_dicom_series` for DICOM records
        (``uneven_spacing``, ``check_type``).

    Raises
    ------
    InputError, UnitsError, GeometryError
        Missing or unreadable file, NaN/inf, values not in the map's units, bad geometry.
    """
    from harmonize.io.volume import check_map_values

    if record.kind == "dicom":
        from harmonize.io.dicom import read_dicom_series

        source = record.dicom if record.dicom is not None else record.path
        volume = read_dicom_series(source, record.map_type, **kwargs)
    else:
        from harmonize.io.nifti import read_map

        volume = read_map(record.path, record.map_type)
        check_map_values(volume.array, record.map_type, record.path)
    volume.scanner = record.scanner
    volume.subject = record.subject
    return volume


def pick_domains(records, source=None, target=None) -> tuple[str, str]:
    """Choose the source (A) and target (B) scanner labels among the found maps.

    Parameters
    ----------
    records : sequence of MapRecord
    source, target : str, optional
        Requested labels, compared after :func:`scanner_label` sanitising.

    Returns
    -------
    (str, str)
        Labels of A and B. Without choices and exactly two scanners: sorted order (A first);
        with one choice and two scanners: the other one is the other domain.

    Raises
    ------
    InputError
        No maps, only one scanner, a requested label not found, source == target, or more than
        two scanners without both choices.
    """
    records = list(records)
    if not records:
        raise InputError("<data folder>: no maps found, so no scanners to choose from; check the data folder")
    labels = sorted({r.scanner for r in records})
    folder = _common_folder(records)
    listing = ", ".join(labels)
    chosen = []
    for role, value in (("source", source), ("target", target)):
        if value is None:
            chosen.append(None)
            continue
        label = scanner_label(value)
        if label not in labels:
            raise InputError(f"{folder}: {role} scanner {value!r} not found; the scanners found are {listing}")
        chosen.append(label)
    src, tgt = chosen
    if len(labels) == 1:
        hint = (" (the scanner tag is missing from the DICOM headers: choose another tag)"
                if labels[0] == "unknown" else "")
        raise InputError(f"{folder}: only one scanner found ({labels[0]}){hint}; harmonisation needs maps "
                         "from two scanners: DATA/<scanner>/<subject> for each")
    if src is not None and src == tgt:
        raise InputError(f"{folder}: source and target are both {src}; choose two different scanners of {listing}")
    if len(labels) == 2:
        if src is None and tgt is None:
            return labels[0], labels[1]
        if src is None:
            return next(lab for lab in labels if lab != tgt), tgt
        if tgt is None:
            return src, next(lab for lab in labels if lab != src)
        return src, tgt
    if src is None or tgt is None:
        raise InputError(f"{folder}: {len(labels)} scanners found ({listing}); choose the source and the "
                         "target scanner")
    return src, tgt


def _common_folder(records):
    paths = [str(Path(r.path).parent if r.kind != "dicom" else Path(r.path)) for r in records]
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:
        return Path(paths[0])


def _scanner_folder(base, scanner):
    """The folder of ``scanner`` under ``base`` (exact name, else a name with the same label)."""
    if not base.is_dir():
        return None
    exact = base / str(scanner)
    if exact.is_dir():
        return exact
    label = scanner_label(scanner)
    for entry in sorted(base.iterdir()):
        if entry.is_dir() and scanner_label(entry.name) == label:
            return entry
    return None


def _first_existing(folder, stems):
    for stem in stems:
        for suffix in _SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def find_truth(data_dir, scanner, subject, map_type="T1") -> Path | None:
    """Path of the paired truth ``DATA/_truth/<scanner>/<subject>[_<MAP>].<ext>``, or None.

    The truth of subject s under scanner B is s's session on the other scanner rendered with B's
    systematic effects, on the grid of that session's map (docs/DESIGN.md). A ``_<MAP>`` file is
    preferred to an unsuffixed one.
    """
    map_type = normalize_map_type(map_type)
    folder = _scanner_folder(Path(data_dir) / "_truth", scanner)
    if folder is None:
        return None
    return _first_existing(folder, [f"{subject}_{map_type}", f"{subject}"])


def find_tissue(data_dir, scanner, subject) -> Path | None:
    """Path of the tissue labels ``DATA/_tissue/<scanner>/<subject>_labels.<ext>``, or None.

    Labels: 0 background, 1 CSF, 2 GM, 3 WM, 4 other head tissue, on the grid of
    ``DATA/<scanner>/<subject>``.
    """
    folder = _scanner_folder(Path(data_dir) / "_tissue", scanner)
    if folder is None:
        return None
    return _first_existing(folder, [f"{subject}_labels"])
