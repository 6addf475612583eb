"""Turn a data folder of quantitative maps from two scanners into one HDF5 training dataset.

Input: DATA/<scanner>/<subject>.nii.gz (.nii, .npy, .npz; <subject>_<MAP> for several map types)
or any tree of DICOM series (scanner from ManufacturerModelName, subject from PatientID).
Optional: DATA/_truth/<scanner>/<subject> (paired truth) and DATA/_tissue/<scanner>/<subject>_labels.

Output: one .h5 file with train/test splits (by subject, seeded; subjects scanned on only one
scanner go to train), per scanner: slices in physical units (negatives set to 0), subject, slice
index, spacing, foreground mask; the normalisation to the network range (fitted on the training
slices of both scanners); optionally registered copies (--register: half-way translation by
mutual information per pair of corresponding slices, thesis 2.2), optionally the 3-D registered
counterparts of the A slices (--register-volumes: each subject's B volume registered rigidly onto
its A volume and resampled on A's slices; the paired targets of Experiment 15), paired truth and
tissue labels.

Normalisation: 'shared' (default) divides both scanners by one scale, so the inter-scanner
intensity difference survives; 'per-scanner-max' is the thesis's X/max(X) per scanner (it erases
global scale differences) and is used automatically when the two domains are different map
types (--target-map, thesis Experiment 6).

Example:
  harmonize prepare data/ --out dataset.h5 --source SIGNA --target Optima_MR450w --register
  harmonize prepare data/ --out dataset.h5 --register --register-volumes --image-size 128   # for --exp 15
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np

from harmonize.errors import ConfigError, GeometryError, InputError
from harmonize.preprocess.rigid import DEFAULT_INTERPOLATOR, INTERPOLATORS

#: registration shifts beyond this many pixels are reported in the summary (worth a look)
LARGE_SHIFT_PX = 10.0


def add_arguments(parser):
    parser.add_argument("data_dir", metavar="DATA_DIR", help="data folder: <scanner>/<subject> maps or DICOM series")
    parser.add_argument("--out", required=True, metavar="DATASET.h5", help="output HDF5 file")
    parser.add_argument("--source", metavar="LABEL", help="scanner label of domain A (source); default: first in sorted order")
    parser.add_argument("--target", metavar="LABEL", help="scanner label of domain B (target); default: the other scanner")
    parser.add_argument("--map", default="T1", metavar="T1|T2|PD", help="map type (of A, and of B unless --target-map); default T1")
    parser.add_argument("--target-map", metavar="T1|T2|PD",
                        help="map type of domain B when it differs from --map (thesis Experiment 6: T1 of A vs T2 of B)")
    parser.add_argument("--test-subjects", type=int, default=2, metavar="N",
                        help="subjects held out for testing (chosen with --seed among those on both scanners); default 2")
    parser.add_argument("--image-size", metavar="N|RxC",
                        help="resample every slice in-plane to N x N (or R x C) pixels, anti-aliased; spacing is updated")
    parser.add_argument("--register", action="store_true",
                        help="also store registered copies (half-way MI translation of corresponding slices, thesis 2.2)")
    parser.add_argument("--register-volumes", action="store_true",
                        help="also store, for every A slice, B's session of the subject registered onto it in 3-D "
                             "(rigid, mutual information): the paired training targets of data.align: volume "
                             "(Experiments 15, 16)")
    parser.add_argument("--interpolator", choices=tuple(INTERPOLATORS), default=DEFAULT_INTERPOLATOR,
                        help="how --register-volumes resamples B on A's slices: cubic B-spline (default) or "
                             "Lanczos windowed sinc (Experiment 16 of the recipe study)")
    parser.add_argument("--normalization", choices=("shared", "per-scanner-max"), default=None,
                        help="network scaling: 'shared' (one scale for both scanners; default) or the thesis's "
                             "'per-scanner-max' (default when the map types differ)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split; default 0")
    parser.add_argument("--scanner-tag", default="ManufacturerModelName", metavar="KEYWORD",
                        help="DICOM keyword naming the scanner; default ManufacturerModelName")
    parser.add_argument("--series-filter", action="append", metavar="TEXT",
                        help="keep DICOM series whose SeriesDescription contains TEXT (repeatable)")
    parser.add_argument("--workers", type=int, default=None, help="parallel registrations (threads); default min(2, CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATASET.h5")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args):
    from harmonize._fs import check_overwrite

    check_overwrite(args.out, args.overwrite)
    summary = prepare_dataset(
        args.data_dir, args.out, source=args.source, target=args.target, map_type=args.map,
        target_map_type=args.target_map, test_subjects=args.test_subjects,
        image_size=parse_image_size(args.image_size), register=args.register, register_volumes=args.register_volumes,
        normalization=args.normalization,
        seed=args.seed, scanner_tag=args.scanner_tag, series_filter=args.series_filter,
        workers=args.workers, progress=not args.quiet, interpolator=args.interpolator,
    )
    print(format_summary(summary))
    return 0


def parse_image_size(text):
    """'256' -> (256, 256); '192x256' -> (192, 256); None -> None. Raises ConfigError."""
    if text is None or isinstance(text, (tuple, list)):
        return None if text is None else tuple(int(v) for v in text)
    if isinstance(text, int):
        return (text, text)
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
    if not match or int(match.group(1)) < 8 or (match.group(2) and int(match.group(2)) < 8):
        raise ConfigError(f"--image-size {text!r}: expected N or RxC with at least 8 pixels, e.g. 256 or 192x256")
    rows = int(match.group(1))
    return rows, int(match.group(2) or rows)


@dataclasses.dataclass
class _Volume:
    """One subject's map on one scanner, after reading (arrays (n, H, W))."""

    subject: str
    path: str
    images: np.ndarray
    spacing: tuple
    masks: np.ndarray = None
    truth: np.ndarray = None
    tissue: np.ndarray = None
    #: the map as read, with its geometry (for 3-D registration)
    volume: object = None
    #: A only: B's session registered (3-D rigid) onto this volume's slices, NaN where B has none
    counterpart: np.ndarray = None


def prepare_dataset(data_dir, out, source=None, target=None, map_type="T1", target_map_type=None,
                    test_subjects=2, image_size=None, register=False, register_volumes=False, normalization=None, seed=0,
                    scanner_tag="ManufacturerModelName", series_filter=None, workers=None, progress=True,
                    interpolator=DEFAULT_INTERPOLATOR):
    """Build the prepared HDF5 dataset from a data folder (the work of ``harmonize prepare``).

    Parameters
    ----------
    data_dir : str or Path
        Data folder (layout in docs/DESIGN.md).
    out : str or Path
        Output ``.h5`` (written atomically; never one of the inputs).
    source, target : str, optional
        Scanner labels of domains A and B (see :func:`harmonize.io.discover.pick_domains`).
    map_type, target_map_type : str
        Map type of A, and of B when different (Experiment 6).
    test_subjects : int
        Subjects (present on both scanners) held out for the test split.
    image_size : (rows, cols) or int, optional
        In-plane resampling of every slice (anti-aliased; masks and tissue nearest-neighbour).
        Without it all slices must share one in-plane size.
    register : bool
        Store half-way registered copies of corresponding slices.
    register_volumes : bool
        Store A's counterparts: each subject's B volume registered onto its A volume (3-D rigid)
        and resampled on A's slices (:mod:`harmonize.preprocess.rigid`).
    interpolator : {'bspline', 'lanczos'}
        How B is resampled on A's slices for ``register_volumes``: cubic B-spline (default) or
        Lanczos windowed sinc.
    normalization : {'shared', 'per-scanner-max'} or None
        None: 'shared' for one map type, 'per-scanner-max' when the map types differ.
    seed : int
        Seed of the subject split.
    scanner_tag, series_filter
        DICOM discovery options (:func:`harmonize.io.discover.find_maps`).
    workers : int, optional
        Parallel registrations (threads).
    progress : bool
        tqdm progress bars.

    Returns
    -------
    dict
        Summary: ``out``, ``source``, ``target``, ``map_type_a/_b``, ``subjects`` (split -> list),
        ``slices`` (split -> {'A': n, 'B': n}), ``pairs`` (split -> n), ``normalization``,
        ``notes`` (list of str), ``image_size``, ``registered``, ``shift_mm`` (split -> mean/max
        |t| in mm) when registered, ``rotation_deg`` (mean/max of the 3-D registrations) and
        ``counterparts`` (A slices with one / all A slices) with ``register_volumes``,
        ``has_truth``, ``has_tissue``.

    Raises
    ------
    InputError, UnitsError, GeometryError, ConfigError
        Missing data, one scanner only, unknown labels, bad values, mixed in-plane sizes without
        ``image_size``, impossible split.
    """
    from tqdm.auto import tqdm

    from harmonize import __version__
    from harmonize._fs import check_not_input
    from harmonize.io import discover
    from harmonize.io.dataset import SplitData, write_dataset
    from harmonize.io.volume import MAP_UNITS, normalize_map_type
    from harmonize.preprocess.intensity import Normalization

    data_dir = Path(data_dir)
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"{out}: the prepared dataset is an HDF5 file; name it *.h5")
    check_not_input(out, [data_dir])
    map_a = normalize_map_type(map_type)
    map_b = normalize_map_type(target_map_type or map_type)
    size = parse_image_size(image_size)
    if int(test_subjects) < 0:
        raise ConfigError(f"--test-subjects {test_subjects}: must be 0 or more")
    if interpolator not in INTERPOLATORS:
        raise ConfigError(f"--interpolator {interpolator!r}: expected one of {', '.join(INTERPOLATORS)}")
    notes = []
    norm_kind = normalization
    if map_a != map_b:
        if normalization == "shared":
            warnings.warn(f"domains of different map types ({map_a} vs {map_b}) cannot share one scale; "
                          "using per-scanner-max normalisation", stacklevel=2)
        if normalization != "per-scanner-max":
            notes.append(f"normalisation per-scanner-max because the map types differ ({map_a} vs {map_b})")
        norm_kind = "per-scanner-max"
    elif norm_kind is None:
        norm_kind = "shared"

    records = discover.find_maps(data_dir, map_types=tuple(dict.fromkeys((map_a, map_b))),
                                 scanner_tag=scanner_tag, series_filter=series_filter)
    label_a, label_b = discover.pick_domains(records, source, target)
    recs_a = {r.subject: r for r in records if r.scanner == label_a and r.map_type == map_a}
    recs_b = {r.subject: r for r in records if r.scanner == label_b and r.map_type == map_b}
    for label, mt, recs in ((label_a, map_a, recs_a), (label_b, map_b, recs_b)):
        if not recs:
            raise InputError(f"{data_dir}: no {mt} maps of scanner {label}; check --map/--target-map "
                             f"(for several map types name the files <subject>_{mt}.nii.gz)")

    split_of = _split_subjects(data_dir, sorted(recs_a), sorted(recs_b), int(test_subjects), seed, notes)

    # read every volume: validated physical units, negatives -> 0, masks, truth and tissue
    volumes = {"A": [], "B": []}
    todo = [("A", r) for _, r in sorted(recs_a.items())] + [("B", r) for _, r in sorted(recs_b.items())]
    for domain, rec in tqdm(todo, desc="reading maps", unit="volume", disable=not progress, leave=False):
        other_label, other_map = (label_b, map_b) if domain == "A" else (label_a, map_a)
        own_label = label_a if domain == "A" else label_b
        volumes[domain].append(_read_volume(discover, data_dir, rec, own_label, other_label, other_map))
    _check_sizes(volumes, size)

    for domain in ("A", "B"):
        for name in ("truth", "tissue"):
            have = [v for v in volumes[domain] if getattr(v, name) is not None]
            if have and len(have) < len(volumes[domain]):
                missing = [v.subject for v in volumes[domain] if getattr(v, name) is None]
                warnings.warn(f"{data_dir}: {name} found for only {len(have)} of {len(volumes[domain])} subjects of "
                              f"domain {domain} (missing: {', '.join(missing)}); not storing {name} for that domain",
                              stacklevel=2)
                for v in volumes[domain]:
                    setattr(v, name, None)

    rotations = _register_volumes(volumes, workers, progress, interpolator) if register_volumes else None

    if size is not None:
        for vols in volumes.values():
            for v in vols:
                _resize_volume(v, size)

    splits = {}
    shifts = {}
    for split_name in ("train", "test"):
        dom_a = _domain_data(v for v in volumes["A"] if split_of[v.subject] == split_name)
        dom_b = _domain_data(v for v in volumes["B"] if split_of[v.subject] == split_name)
        if dom_a is None or dom_b is None:
            if split_name == "train":
                raise ConfigError(f"{data_dir}: the training split has no slices of "
                                  f"{label_a if dom_a is None else label_b}; use fewer --test-subjects")
            continue
        from harmonize.io.dataset import find_pairs

        pairs = find_pairs(dom_a.subjects, dom_a.slices, dom_b.subjects, dom_b.slices)
        pair_shifts = None
        if register:
            pair_shifts = _register_split(dom_a, dom_b, pairs, split_name, workers, progress)
            shifts[split_name] = pair_shifts
        splits[split_name] = SplitData(dom_a, dom_b, pairs, pair_shifts=pair_shifts, name=split_name)

    train = splits["train"]
    norm = Normalization.fit(train.a.images, train.b.images, kind=norm_kind)
    spacing = np.concatenate([train.a.spacing, train.b.spacing])
    has_truth = all(s.a.truth is not None or s.b.truth is not None for s in splits.values())
    attrs = {
        "source": label_a, "target": label_b, "map_type_a": map_a, "map_type_b": map_b,
        "units_a": MAP_UNITS[map_a], "units_b": MAP_UNITS[map_b], "normalization": norm,
        "image_size": list(train.a.image_shape), "seed": int(seed), "registered": bool(register),
        "has_truth": bool(has_truth), "data_dir": str(data_dir.resolve()), "harmonize_version": __version__,
        "pixel_spacing_mm": [float(np.median(spacing[:, 1])), float(np.median(spacing[:, 0]))],
        "test_subjects": ",".join(sorted(s for s, v in split_of.items() if v == "test")),
    }
    if register_volumes:
        attrs["counterpart_interpolator"] = interpolator
    write_dataset(out, splits, attrs)

    summary = {
        "out": str(out), "source": label_a, "target": label_b, "map_type_a": map_a, "map_type_b": map_b,
        "subjects": {n: s.subjects for n, s in splits.items()},
        "slices": {n: {"A": len(s.a), "B": len(s.b)} for n, s in splits.items()},
        "pairs": {n: len(s.pairs) for n, s in splits.items()},
        "normalization": norm.to_dict(), "notes": notes, "image_size": list(train.a.image_shape),
        "pixel_spacing_mm": attrs["pixel_spacing_mm"], "registered": bool(register),
        "has_truth": bool(has_truth), "has_tissue": all(s.a.tissue is not None for s in splits.values()),
    }
    if rotations is not None:
        with_counterpart = sum(int(np.isfinite(s.a.counterpart[:, 0, 0]).sum()) for s in splits.values())
        summary["counterparts"] = {"with": with_counterpart, "of": sum(len(s.a) for s in splits.values()),
                                   "interpolator": interpolator}
        summary["rotation_deg"] = {"mean": float(np.mean(rotations)) if rotations else 0.0,
                                   "max": float(np.max(rotations)) if rotations else 0.0}
    if register:
        px = min(attrs["pixel_spacing_mm"])
        summary["shift_mm"] = {}
        for name, sh in shifts.items():
            norms = np.hypot(sh[:, 0], sh[:, 1]) if len(sh) else np.zeros(1)
            summary["shift_mm"][name] = {"mean": float(norms.mean()), "max": float(norms.max()),
                                         "mean_x": float(sh[:, 0].mean()) if len(sh) else 0.0,
                                         "mean_y": float(sh[:, 1].mean()) if len(sh) else 0.0}
            large = int((norms > LARGE_SHIFT_PX * px).sum())
            if large:
                notes.append(f"{large} {name} pairs moved more than {LARGE_SHIFT_PX:g} pixels by registration; "
                             "check those slices")
    return summary


def format_summary(summary):
    """Human-readable multi-line summary of :func:`prepare_dataset`'s result."""
    lines = [f"wrote {summary['out']}",
             f"  A (source) = {summary['source']} {summary['map_type_a']}, "
             f"B (target) = {summary['target']} {summary['map_type_b']}; "
             f"image size {summary['image_size'][0]}x{summary['image_size'][1]}, "
             f"pixel spacing {summary['pixel_spacing_mm'][0]:.3g} x {summary['pixel_spacing_mm'][1]:.3g} mm"]
    for name, subjects in summary["subjects"].items():
        n = summary["slices"][name]
        lines.append(f"  {name}: {len(subjects)} subject{'' if len(subjects) == 1 else 's'}, {n['A']} A slices, {n['B']} B slices, "
                     f"{summary['pairs'][name]} corresponding pairs")
    norm = summary["normalization"]
    if norm["kind"] == "shared":
        lines.append(f"  normalisation: shared, scale {norm['scale_a']:.6g} (x -> 2x/scale - 1)")
    else:
        lines.append(f"  normalisation: per-scanner-max, scale A {norm['scale_a']:.6g}, B {norm['scale_b']:.6g}")
    if summary.get("registered"):
        for name, s in summary["shift_mm"].items():
            lines.append(f"  registration ({name}): |shift| mean {s['mean']:.2f} mm, max {s['max']:.2f} mm; "
                         f"mean (x, y) = ({s['mean_x']:+.2f}, {s['mean_y']:+.2f}) mm of B relative to A")
    if "counterparts" in summary:
        c, r = summary["counterparts"], summary["rotation_deg"]
        lines.append(f"  3-D registration: B registered onto A, rotation mean {r['mean']:.2f} deg, max {r['max']:.2f} deg; "
                     f"{c['with']} of {c['of']} A slices have a counterpart (B covers the rest only partly; "
                     f"resampled with {c.get('interpolator', DEFAULT_INTERPOLATOR)})")
    extras = [name for name in ("has_truth", "has_tissue") if summary.get(name)]
    if extras:
        lines.append("  stored: " + ", ".join(e.replace("has_", "paired ") if e == "has_truth" else "tissue labels"
                                               for e in extras))
    for note in summary.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _split_subjects(data_dir, subjects_a, subjects_b, n_test, seed, notes):
    """Subject -> 'train' | 'test': ``n_test`` seeded picks among subjects on both scanners."""
    both = sorted(set(subjects_a) & set(subjects_b))
    only = sorted(set(subjects_a) ^ set(subjects_b))
    if only:
        msg = (f"{len(only)} subjects are on only one scanner ({', '.join(only)}); they go to the training split")
        warnings.warn(f"{data_dir}: {msg}", stacklevel=3)
        notes.append(msg)
    most = len(both) if only else max(len(both) - 1, 0)  # at least one subject left for training
    if n_test > len(both):
        raise ConfigError(f"{data_dir}: --test-subjects {n_test}, but only {len(both)} subjects are on both scanners "
                          f"(a test subject needs both); use --test-subjects {most} or fewer, and check that the "
                          "subjects are named alike on both scanners")
    if n_test > most:
        raise ConfigError(f"{data_dir}: --test-subjects {n_test} leaves no training subject "
                          f"({len(both)} subjects are on both scanners); use at most {most}")
    order = np.random.default_rng(int(seed)).permutation(len(both))
    test = {both[i] for i in order[:n_test]}
    return {s: ("test" if s in test else "train") for s in sorted(set(subjects_a) | set(subjects_b))}


def _read_volume(discover, data_dir, rec, own_label, other_label, other_map):
    from harmonize.io.nifti import read_map
    from harmonize.io.volume import check_map_values
    from harmonize.preprocess.masks import foreground_mask

    volume = discover.read_record(rec)
    images = np.maximum(volume.array, 0.0).astype(np.float32)
    vol = _Volume(rec.subject, str(rec.path), images, volume.spacing, masks=foreground_mask(images).astype(np.uint8),
                  volume=volume.with_array(images))
    truth_path = discover.find_truth(data_dir, other_label, rec.subject, other_map)
    if truth_path is not None:
        truth = read_map(truth_path, other_map)
        _check_same_grid(truth_path, truth.array.shape, rec.path, images.shape)
        check_map_values(truth.array, other_map, truth_path)
        vol.truth = np.maximum(truth.array, 0.0).astype(np.float32)
    tissue_path = discover.find_tissue(data_dir, own_label, rec.subject)
    if tissue_path is not None:
        labels = read_map(tissue_path, "T1").array
        _check_same_grid(tissue_path, labels.shape, rec.path, images.shape)
        rounded = np.rint(labels)
        if np.abs(labels - rounded).max() > 1e-3 or rounded.min() < 0 or rounded.max() > 255:
            raise InputError(f"{tissue_path}: tissue labels must be integers 0-255 (0 bg, 1 CSF, 2 GM, 3 WM, 4 other); "
                             "check the file")
        vol.tissue = rounded.astype(np.uint8)
    return vol


def _check_same_grid(path, shape, map_path, map_shape):
    if tuple(shape) != tuple(map_shape):
        raise GeometryError(f"{path}: shape {tuple(shape)} differs from its map {map_path} {tuple(map_shape)}; "
                            "truth and tissue files must be on the grid of the map they belong to")


def _check_sizes(volumes, size):
    if size is not None:
        return
    first = None
    for domain in ("A", "B"):
        for v in volumes[domain]:
            shape = v.images.shape[1:]
            if first is None:
                first = (shape, v.path)
            elif shape != first[0]:
                raise GeometryError(
                    f"{v.path}: slices are {shape[0]}x{shape[1]} pixels but {first[1]} has "
                    f"{first[0][0]}x{first[0][1]}; pass --image-size (e.g. --image-size {max(first[0])}) "
                    "to resample every slice in-plane to one size")


def _resize_volume(v, size):
    from harmonize.preprocess.resample import resize_slices, resized_spacing

    old = v.images.shape[1:]
    if tuple(old) == tuple(size):
        return
    v.images = np.maximum(resize_slices(v.images, size, order=1, anti_aliasing=True), 0.0)
    v.masks = resize_slices(v.masks, size, order=0)
    if v.truth is not None:
        v.truth = np.maximum(resize_slices(v.truth, size, order=1, anti_aliasing=True), 0.0)
    if v.tissue is not None:
        v.tissue = resize_slices(v.tissue, size, order=0)
    if v.counterpart is not None:
        # whole NaN slices (no counterpart) stay NaN; the others must not see them
        missing = ~np.isfinite(v.counterpart[:, 0, 0])
        v.counterpart = np.maximum(resize_slices(np.nan_to_num(v.counterpart), size, order=1, anti_aliasing=True), 0.0)
        v.counterpart[missing] = np.nan
    v.spacing = resized_spacing(v.spacing, old, size)


def _domain_data(volumes):
    from harmonize.io.dataset import DomainData

    volumes = list(volumes)
    if not volumes:
        return None
    n = [len(v.images) for v in volumes]

    def cat(name):
        arrays = [getattr(v, name) for v in volumes]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return DomainData(
        images=cat("images"), masks=cat("masks"),
        subjects=np.repeat([v.subject for v in volumes], n),
        slices=np.concatenate([np.arange(k, dtype=np.int32) for k in n]),
        spacing=np.concatenate([np.tile(np.asarray(v.spacing, np.float32), (k, 1)) for v, k in zip(volumes, n)]),
        truth=cat("truth"), tissue=cat("tissue"), counterpart=cat("counterpart"),
    )


def _register_volumes(volumes, workers, progress, interpolator):
    """Fill ``counterpart`` of every A volume whose subject B also has; return the rotations found (deg)."""
    from harmonize.preprocess.rigid import counterparts

    by_subject = {v.subject: v for v in volumes["B"]}
    todo = [v for v in volumes["A"] if v.subject in by_subject]
    results = counterparts([(v.volume, by_subject[v.subject].volume) for v in todo], workers=workers,
                           progress=progress, interpolator=interpolator)
    rotations = []
    for v in volumes["A"]:
        v.counterpart = np.full(v.images.shape, np.nan, np.float32)
    for v, (volume, rotation) in zip(todo, results):
        if volume is not None:
            v.counterpart = volume
            rotations.append(rotation)
    return rotations


def _register_split(dom_a, dom_b, pairs, split_name, workers, progress):
    """Fill ``dom_a.registered`` / ``dom_b.registered``; return the (M, 2) shifts in mm."""
    from harmonize.preprocess.registration import register_pairs

    # slices without a partner keep their original values as their 'registered' copy
    dom_a.registered = dom_a.images.copy()
    dom_b.registered = dom_b.images.copy()
    if not len(pairs):
        return np.zeros((0, 2), np.float32)
    spacing_a = dom_a.spacing[pairs[:, 0], :2]
    spacing_b = dom_b.spacing[pairs[:, 1], :2]
    differ = np.abs(spacing_a - spacing_b) > 0.01 * spacing_a
    if differ.any():
        k = int(np.flatnonzero(differ.any(axis=1))[0])
        warnings.warn(f"subject {dom_a.subjects[pairs[k, 0]]}: the pixel spacing differs between the scanners "
                      f"({tuple(spacing_a[k])} vs {tuple(spacing_b[k])} mm); registration assumes A's spacing. "
                      "Use --image-size to put both on one grid", stacklevel=3)
    a_reg, b_reg, shifts = register_pairs(dom_a.images[pairs[:, 0]], dom_b.images[pairs[:, 1]], spacing_a,
                                          workers=workers, progress=progress, desc=f"registering {split_name}")
    dom_a.registered[pairs[:, 0]] = a_reg
    dom_b.registered[pairs[:, 1]] = b_reg
    return shifts.astype(np.float32)


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("prepare"))
