"""The prepared HDF5 dataset: one file with the train/test slices of both scanners.

Written by ``harmonize prepare`` (:mod:`harmonize.prepare`), read by every later command.
Layout (docs/DESIGN.md, "Prepared HDF5 dataset")::

    /<split>/<domain>/images      (N, H, W) float32, physical units, negatives set to 0
    /<split>/<domain>/masks       (N, H, W) uint8 foreground mask
    /<split>/<domain>/subjects    (N,) str
    /<split>/<domain>/slices      (N,) int32   slice index in the subject's volume
    /<split>/<domain>/spacing     (N, 3) float32 (x, y, z) mm, SimpleITK order
    /<split>/<domain>/registered  (N, H, W) float32  optional, half-way translation copies
    /<split>/<domain>/truth       (N, H, W) float32  optional, paired truth on the other scanner
    /<split>/<domain>/tissue      (N, H, W) uint8    optional, 0 bg, 1 CSF, 2 GM, 3 WM, 4 other
    /<split>/A/counterpart        (N, H, W) float32  optional: the subject's B session registered onto
                                                     each A slice in 3-D (rigid), B's units; all NaN
                                                     where B's stack does not cover the slice
    /<split>/pairs                (M, 2) int32       rows (i, j): A slice i and B slice j correspond
    /<split>/pair_shifts          (M, 2) float32     optional: registration translation of B onto A
                                                     for each pair, (x, y) mm (A moved by +t/2,
                                                     B by -t/2)

``split`` is ``train`` or ``test`` (split by subject); ``domain`` is ``A`` (source scanner) or
``B`` (target). Root attributes: ``format_version``, ``harmonize_version``, ``source``, ``target``,
``map_type_a``, ``map_type_b``, ``units_a``, ``units_b``, ``normalization`` (JSON),
``image_size`` ([rows, cols]), ``seed``, ``registered``, ``has_truth``, ``data_dir``, ``created``.

Examples
--------
>>> ds = PreparedDataset("dataset.h5")                       # doctest: +SKIP
>>> train = ds.split("train")                                # doctest: +SKIP
>>> train.a.images.shape, ds.units_a, ds.normalization.kind  # doctest: +SKIP
((270, 256, 256), 'ms', 'shared')
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from harmonize import __version__
from harmonize._fs import atomic_path
from harmonize.errors import InputError

#: version of the file layout; bump when a reader of the old layout would misread the new one
FORMAT_VERSION = 1
SPLITS = ("train", "test")
DOMAINS = ("A", "B")
#: optional per-domain arrays and their dtypes
OPTIONAL_ARRAYS = {"registered": np.float32, "truth": np.float32, "tissue": np.uint8, "counterpart": np.float32}
REQUIRED_ATTRS = ("format_version", "source", "target", "map_type_a", "map_type_b", "normalization", "image_size")


@dataclasses.dataclass
class DomainData:
    """The slices of one scanner in one split (arrays in memory).

    Attributes
    ----------
    images : np.ndarray
        (N, H, W) float32, physical units (ms for T1/T2, % for PD), no negative values.
    masks : np.ndarray
        (N, H, W) uint8, 1 inside the head (foreground).
    subjects : np.ndarray
        (N,) str subject id of each slice.
    slices : np.ndarray
        (N,) int32 index of the slice in its subject's volume.
    spacing : np.ndarray
        (N, 3) float32 voxel spacing (x, y, z) in mm (SimpleITK order: x = column, y = row).
    registered, truth : np.ndarray or None
        (N, H, W) float32 registered copies / paired truth of the slice on the other scanner.
    tissue : np.ndarray or None
        (N, H, W) uint8 tissue labels (0 background, 1 CSF, 2 GM, 3 WM, 4 other).
    counterpart : np.ndarray or None
        (N, H, W) float32, domain A only: the subject's session on the other scanner registered onto
        each slice in 3-D (``harmonize prepare --register-volumes``); a slice without one is all NaN.
    """

    images: np.ndarray
    masks: np.ndarray
    subjects: np.ndarray
    slices: np.ndarray
    spacing: np.ndarray
    registered: np.ndarray | None = None
    truth: np.ndarray | None = None
    tissue: np.ndarray | None = None
    counterpart: np.ndarray | None = None

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {self.images.shape}")
        n = len(self.images)
        self.masks = np.asarray(self.masks).astype(np.uint8, copy=False)
        self.subjects = np.asarray(self.subjects, dtype=str).reshape(-1)
        self.slices = np.asarray(self.slices, dtype=np.int32).reshape(-1)
        self.spacing = np.asarray(self.spacing, dtype=np.float32).reshape(-1, 3) if n else np.zeros((0, 3), np.float32)
        if self.masks.shape != self.images.shape:
            raise ValueError(f"masks shape {self.masks.shape} differs from images shape {self.images.shape}")
        for name in ("subjects", "slices", "spacing"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows for {n} images")
        for name, dtype in OPTIONAL_ARRAYS.items():
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value).astype(dtype, copy=False)
                if value.shape != self.images.shape:
                    raise ValueError(f"{name} shape {value.shape} differs from images shape {self.images.shape}")
                setattr(self, name, value)

    def __len__(self):
        return len(self.images)

    @property
    def image_shape(self):
        """(H, W) of the slices."""
        return tuple(self.images.shape[1:])


@dataclasses.dataclass
class SplitData:
    """Both scanners of one split plus the list of corresponding slices.

    Attributes
    ----------
    a, b : DomainData
        Source (A) and target (B) scanner slices.
    pairs : np.ndarray
        (M, 2) int32 rows ``(i, j)``: ``a`` slice i and ``b`` slice j are the same subject and
        slice index.
    pair_shifts : np.ndarray or None
        (M, 2) float32 registration translation (x, y) in mm of B onto A per pair, or None.
    name : str
        'train' or 'test'.
    """

    a: DomainData
    b: DomainData
    pairs: np.ndarray
    pair_shifts: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, dtype=np.int32).reshape(-1, 2)
        if len(self.pairs) and (self.pairs[:, 0].max() >= len(self.a) or self.pairs[:, 1].max() >= len(self.b)
                                or self.pairs.min() < 0):
            raise ValueError(f"pairs index outside the {len(self.a)} A / {len(self.b)} B slices")
        if self.pair_shifts is not None:
            self.pair_shifts = np.asarray(self.pair_shifts, dtype=np.float32).reshape(-1, 2)
            if len(self.pair_shifts) != len(self.pairs):
                raise ValueError(f"pair_shifts has {len(self.pair_shifts)} rows for {len(self.pairs)} pairs")

    def domain(self, name):
        """Return :attr:`a` for 'A' and :attr:`b` for 'B'."""
        if name in ("A", "a"):
            return self.a
        if name in ("B", "b"):
            return self.b
        raise ValueError(f"domain must be 'A' or 'B', got {name!r}")

    @property
    def subjects(self):
        """Sorted subject ids present in this split (either scanner)."""
        return sorted(set(self.a.subjects.tolist()) | set(self.b.subjects.tolist()))


def find_pairs(subjects_a, slices_a, subjects_b, slices_b):
    """Rows ``(i, j)`` where A slice i and B slice j have the same subject and slice index.

    Returns
    -------
    np.ndarray
        (M, 2) int32, ordered by ``i``.
    """
    index_b = {(str(s), int(k)): j for j, (s, k) in enumerate(zip(subjects_b, slices_b))}
    rows = [(i, index_b[(str(s), int(k))]) for i, (s, k) in enumerate(zip(subjects_a, slices_a))
            if (str(s), int(k)) in index_b]
    return np.asarray(rows, dtype=np.int32).reshape(-1, 2)


def write_dataset(path, splits, attrs):
    """Write a prepared dataset atomically.

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` file; replaced only when the write succeeded.
    splits : dict of str -> SplitData
        Usually ``{"train": ..., "test": ...}``.
    attrs : dict
        Root attributes (see module docstring). ``normalization`` may be a
        :class:`~harmonize.preprocess.intensity.Normalization` or a dict; ``format_version``,
        ``harmonize_version`` and ``created`` are filled in when absent.

    Returns
    -------
    Path
        The written file.
    """
    import h5py

    path = Path(path)
    attrs = dict(attrs)
    norm = attrs.get("normalization")
    if hasattr(norm, "to_dict"):
        norm = norm.to_dict()
    if isinstance(norm, dict):
        attrs["normalization"] = json.dumps(norm)
    attrs.setdefault("format_version", FORMAT_VERSION)
    attrs.setdefault("harmonize_version", __version__)
    attrs.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    first = next(iter(splits.values()), None)
    if "image_size" not in attrs and first is not None:
        attrs["image_size"] = list(first.a.image_shape)
    attrs.setdefault("registered", any(s.a.registered is not None for s in splits.values()))
    attrs.setdefault("has_truth", any(s.a.truth is not None or s.b.truth is not None for s in splits.values()))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            for key, value in attrs.items():
                if value is None:
                    continue
                if isinstance(value, Path):
                    value = str(value)
                elif isinstance(value, (list, tuple)):
                    value = np.asarray(value)
                fh.attrs[key] = value
            for name, split in splits.items():
                group = fh.create_group(name)
                for dom_name, dom in (("A", split.a), ("B", split.b)):
                    _write_domain(group.create_group(dom_name), dom)
                group.create_dataset("pairs", data=split.pairs.astype(np.int32))
                if split.pair_shifts is not None:
                    group.create_dataset("pair_shifts", data=split.pair_shifts.astype(np.float32))
    return path


def _write_domain(group, dom):
    import h5py

    def images(name, array):
        # one chunk per slice: readers load whole slices; gzip+shuffle halves the size (background 0)
        if len(array):
            group.create_dataset(name, data=array, chunks=(1,) + array.shape[1:], compression="gzip",
                                 compression_opts=1, shuffle=True)
        else:
            group.create_dataset(name, data=array)

    images("images", dom.images)
    images("masks", dom.masks)
    group.create_dataset("subjects", data=np.asarray(dom.subjects, dtype=object), dtype=h5py.string_dtype())
    group.create_dataset("slices", data=dom.slices)
    group.create_dataset("spacing", data=dom.spacing)
    for name in OPTIONAL_ARRAYS:
        value = getattr(dom, name)
        if value is not None:
            images(name, value)


class PreparedDataset:
    """Read access to a prepared ``.h5`` dataset (attributes at once, arrays per split on demand).

    Parameters
    ----------
    path : str or Path
        A file written by ``harmonize prepare``.

    Raises
    ------
    InputError
        The file is missing, not HDF5, not a harmonize dataset, or of another format version.
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: prepared dataset not found; create it with 'harmonize prepare DATA_DIR --out {self.path}'")
        try:
            with h5py.File(self.path, "r") as fh:
                self.attrs = {k: _plain(v) for k, v in fh.attrs.items()}
                self.splits = tuple(k for k in SPLITS if k in fh) + tuple(
                    k for k in fh.keys() if k not in SPLITS and isinstance(fh[k], h5py.Group))
                self._optional = {name: any(f"{s}/{d}/{name}" in fh for s in self.splits for d in DOMAINS)
                                  for name in OPTIONAL_ARRAYS}
        except OSError as err:
            raise InputError(f"{self.path}: not a readable HDF5 file ({err}); re-create it with 'harmonize prepare'") from err
        missing = [k for k in REQUIRED_ATTRS if k not in self.attrs]
        if missing:
            raise InputError(f"{self.path}: not a harmonize prepared dataset (attributes {', '.join(missing)} missing); "
                             "create it with 'harmonize prepare'")
        version = int(self.attrs["format_version"])
        if version != FORMAT_VERSION:
            newer = "a newer" if version > FORMAT_VERSION else "an older"
            raise InputError(f"{self.path}: dataset format version {version} was written by {newer} harmonize "
                             f"(this one reads version {FORMAT_VERSION}); re-run 'harmonize prepare'")
        self._cache = {}

    def __repr__(self):
        return (f"PreparedDataset({str(self.path)!r}: {self.source} -> {self.target}, "
                f"{self.map_type_a}/{self.map_type_b}, splits {list(self.splits)})")

    source = property(lambda self: str(self.attrs["source"]), doc="label of scanner A (source)")
    target = property(lambda self: str(self.attrs["target"]), doc="label of scanner B (target)")
    map_type_a = property(lambda self: str(self.attrs["map_type_a"]), doc="map type of domain A ('T1', 'T2', 'PD')")
    map_type_b = property(lambda self: str(self.attrs["map_type_b"]), doc="map type of domain B")
    units_a = property(lambda self: str(self.attrs.get("units_a", "")), doc="physical units of domain A ('ms', '%')")
    units_b = property(lambda self: str(self.attrs.get("units_b", "")), doc="physical units of domain B")
    has_truth = property(lambda self: bool(self.attrs.get("has_truth", self._optional["truth"])),
                         doc="True when the slices carry paired truth")
    has_registered = property(lambda self: bool(self._optional["registered"]),
                              doc="True when registered copies are stored")
    has_tissue = property(lambda self: bool(self._optional["tissue"]), doc="True when tissue labels are stored")
    has_counterparts = property(lambda self: bool(self._optional["counterpart"]),
                                doc="True when 3-D registered counterparts of the A slices are stored")

    @property
    def normalization(self):
        """The :class:`~harmonize.preprocess.intensity.Normalization` fitted on the training slices."""
        from harmonize.preprocess.intensity import Normalization

        return Normalization.from_dict(self.attrs["normalization"])

    @property
    def image_size(self):
        """[rows, cols] of every slice."""
        return [int(v) for v in np.ravel(self.attrs["image_size"])]

    @property
    def pixel_spacing_mm(self):
        """[row, col] in-plane spacing (mm) of the slices: median over the first split, both domains."""
        if "pixel_spacing_mm" in self.attrs:
            return [float(v) for v in np.ravel(self.attrs["pixel_spacing_mm"])]
        split = self.split(self.splits[0])
        spacing = np.concatenate([split.a.spacing, split.b.spacing])
        if not len(spacing):
            return [1.0, 1.0]
        # spacing is (x, y, z): x runs along columns, y along rows
        return [float(np.median(spacing[:, 1])), float(np.median(spacing[:, 0]))]

    def split(self, name):
        """Load one split into memory (cached). Raises InputError when the split is absent."""
        if name not in self._cache:
            self._cache[name] = self._read_split(name)
        return self._cache[name]

    def _read_split(self, name):
        import h5py

        if name not in self.splits:
            raise InputError(f"{self.path}: no split {name!r} (has {', '.join(self.splits) or 'none'}); "
                             "re-run 'harmonize prepare' (use --test-subjects > 0 for a test split)")
        with h5py.File(self.path, "r") as fh:
            group = fh[name]
            doms = []
            for dom in DOMAINS:
                g = group[dom]
                fields = {
                    "images": g["images"][()],
                    "masks": g["masks"][()],
                    "subjects": g["subjects"].asstr()[()] if len(g["subjects"]) else np.zeros(0, str),
                    "slices": g["slices"][()],
                    "spacing": g["spacing"][()],
                }
                for opt in OPTIONAL_ARRAYS:
                    if opt in g:
                        fields[opt] = g[opt][()]
                doms.append(DomainData(**fields))
            shifts = group["pair_shifts"][()] if "pair_shifts" in group else None
            return SplitData(doms[0], doms[1], group["pairs"][()], pair_shifts=shifts, name=name)


def _plain(value):
    """HDF5 attribute -> plain Python value (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
