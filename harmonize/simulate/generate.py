"""Generate the two-scanner dataset: subjects, sessions, maps, paired truth, tissue labels.

For every subject: one session on scanner A and one on scanner B (different head positions).
Each session is rendered with its own scanner's effects and noise (the data) and, noise-free,
with the other scanner's systematic effects (the paired truth), on the session's own grid.

Layout written by :func:`simulate` (``<label>`` = scanner folder label, ``[_<MAP>]`` only when the
maps are not just T1)::

    OUT/<label>/<subject>[_<MAP>].nii.gz                  --format nifti
    OUT/dicom/<label>/<subject>/<MAP>/IM_0001.dcm ...     --format dicom
    OUT/_truth/<label>/<subject>[_<MAP>].nii.gz           the OTHER scanner's session with <label>'s
                                                          effects, noise-free, on that session's grid
    OUT/_tissue/<label>/<subject>_labels.nii.gz           0 bg, 1 CSF, 2 GM, 3 WM, 4 other head tissue
    OUT/simulation.json                                   parameters, profiles, effect sizes
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from harmonize.errors import ConfigError, InputError
from harmonize.io.volume import MAP_UNITS, normalize_map_type
from harmonize.simulate.anatomy import (
    LABELS,
    TISSUE_VALUES,
    SliceGrid,
    SubjectVariation,
    build_session,
    default_smoothing,
    load_template,
    sample_pose,
    sample_subject,
)
from harmonize.simulate.render import render_map
from harmonize.simulate.scanners import SessionVariation, resolve_scanners

#: brain labels used for the summary effect size (CSF, GM, WM)
BRAIN_LABELS = (1, 2, 3)
_MAP_CODES = {"T1": 1, "T2": 2, "PD": 3}
_QUANTITY = {"T1": "Q1", "T2": "Q2", "PD": "P"}
_SERIES_NUMBER = {"T1": 501, "T2": 502, "PD": 503}


@dataclasses.dataclass
class SubjectRender:
    """Everything simulated for one subject, in memory.

    Attributes
    ----------
    subject_id : str
        'sub01', ...
    labels_ab : tuple of str
        Folder labels of scanner A and B.
    maps : dict
        ``maps[label][map_type]``: the session on scanner ``label`` as that scanner writes it,
        (slices, size, size) float32 in ms (T1/T2) or % (PD).
    truth : dict
        ``truth[label][map_type]``: the OTHER scanner's session rendered noise-free with ``label``'s
        systematic effects, on the other session's grid (same shape).
    tissue : dict
        ``tissue[label]``: uint8 labels (0 bg, 1 CSF, 2 GM, 3 WM, 4 other) on ``label``'s session grid.
    geometry : dict
        ``geometry[label]``: dict with 'spacing', 'origin', 'direction' (SimpleITK order, mm) of
        ``label``'s session.
    info : dict
        Subject parameters and session poses (for simulation.json).
    """

    subject_id: str
    labels_ab: tuple
    maps: dict
    truth: dict
    tissue: dict
    geometry: dict
    info: dict

    def other(self, label):
        """The label of the other scanner."""
        a, b = self.labels_ab
        return b if label == a else a

    def mean_abs_rel_diff(self, map_type="T1", labels=BRAIN_LABELS):
        """Mean |A - truth on B| / truth on B over A's brain voxels (dimensionless, 0.05 = 5 %).

        A's session as A writes it (with noise) against the same session rendered noise-free
        with B's systematic effects: the inter-scanner difference that harmonisation must remove.
        """
        a, b = self.labels_ab
        data, ref = self.maps[a][map_type], self.truth[b][map_type]
        sel = np.isin(self.tissue[a], labels) & (data > 0) & (ref > 0)
        if not sel.any():
            return float("nan")
        return float(np.mean(np.abs(data[sel] - ref[sel]) / ref[sel]))


def parse_maps(maps):
    """Normalise a map list ('T1,T2,PD' or a sequence) to a tuple of unique canonical names."""
    items = maps.split(",") if isinstance(maps, str) else list(maps)
    out = []
    for item in items:
        if not str(item).strip():
            continue
        try:
            name = normalize_map_type(item)
        except InputError as err:
            raise ConfigError(f"--maps {maps!r}: unknown map type {str(item).strip()!r}; use T1, T2 and/or PD") from err
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"--maps {maps!r}: no map type given; use T1, T2 and/or PD")
    return tuple(out)


def make_grid(slices=27, size=256, fov_mm=240.0, thickness_mm=4.0):
    """The acquisition grid; raises ConfigError for sizes the simulator cannot make."""
    if int(size) != size or not 16 <= int(size) <= 1024:
        raise ConfigError(f"--size {size}: give an in-plane size in pixels between 16 and 1024")
    if int(slices) != slices or not 1 <= int(slices) <= 60:
        raise ConfigError(f"--slices {slices}: give 1-60 slices (4 mm each; the anatomy covers about 240 mm)")
    return SliceGrid(size=int(size), slices=int(slices), fov_mm=float(fov_mm), thickness_mm=float(thickness_mm))


def _rng(seed, subject, stream):
    return np.random.default_rng([int(seed), int(subject), int(stream)])


def render_subject(subject=1, slices=27, size=256, maps=("T1",), seed=0, scanners="default", grid=None,
                   subject_variation=None, session_variation=None):
    """Simulate one subject on both scanners in memory (no files).

    Parameters
    ----------
    subject : int
        1-based subject number ('sub01' is 1). A subject is the same whatever the number of
        subjects, slices or maps asked for: every random draw has its own seed
        ``(seed, subject, stream)``.
    slices, size : int
        Slices of 4 mm and in-plane pixels (field of view 240 mm). Ignored when ``grid`` is given.
    maps : sequence of {'T1', 'T2', 'PD'}
    seed : int
    scanners : str or pair of ScannerProfile
        'default', 'alternative' or (A, B) profiles.
    grid : SliceGrid, optional
    subject_variation : SubjectVariation, optional
    session_variation : SessionVariation, optional

    Returns
    -------
    SubjectRender
    """
    maps = parse_maps(maps)
    pair = resolve_scanners(scanners)
    grid = grid or make_grid(slices, size)
    template = load_template(default_smoothing(grid))
    subject_variation = subject_variation or SubjectVariation()
    subj = sample_subject(subject, _rng(seed, subject, 0), subject_variation)
    labels_ab = (pair[0].label, pair[1].label)
    out = SubjectRender(subject_id=subj.subject_id, labels_ab=labels_ab, maps={}, truth={}, tissue={},
                        geometry={}, info={"subject": subj.to_dict(), "sessions": {}})
    quantities = tuple(sorted({_QUANTITY[m] for m in maps} | {"P"}))
    for index, (profile, other) in enumerate((pair, pair[::-1])):
        pose = sample_pose(subj, grid, _rng(seed, subject, 1 + index), template, session_variation)
        anatomy = build_session(subj, pose, grid, template, quantities, subject_variation)
        label = profile.label
        out.maps[label] = {}
        out.truth.setdefault(other.label, {})
        for map_type in maps:
            noise = _rng(seed, subject, 100 + 10 * index + _MAP_CODES[map_type])
            out.maps[label][map_type] = render_map(anatomy, profile, map_type, noise)
            out.truth[other.label][map_type] = render_map(anatomy, other, map_type, None)
        out.tissue[label] = anatomy.labels
        out.geometry[label] = {"spacing": pose.spacing, "origin": pose.origin, "direction": pose.direction}
        out.info["sessions"][label] = pose.to_dict()
        del anatomy
    return out


def _job(args):
    """Worker entry: render one subject (module-level so a process pool can pickle it)."""
    return render_subject(**args)


def _init_worker():
    # Each of the worker processes runs ITK single-threaded: the processes already fill the cores,
    # and a fresh threader avoids inheriting the parent's thread pool across fork.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    # A worker allocates and frees the same ~10 MB arrays over and over; by default glibc returns
    # each to the kernel and page-faults it back in (measured: ~12 % of a worker's CPU time).
    # Keep them in the heap (only in these short-lived worker processes, never in the caller's).
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep the defaults
        pass


def _map_filename(subject_id, map_type, maps):
    return f"{subject_id}.nii.gz" if tuple(maps) == ("T1",) else f"{subject_id}_{map_type}.nii.gz"


def _check_out_dir(out_dir, overwrite):
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose a folder for the simulated dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError(f"{out_dir}: the folder is not empty; choose a new or empty folder, or pass "
                             "--overwrite to replace a previous simulation")
        if not (out_dir / "simulation.json").is_file():
            raise InputError(f"{out_dir}: the folder is not empty and holds no simulation.json, so it is not a "
                             "previous 'harmonize simulate' output; --overwrite only replaces such folders: "
                             "choose a new or empty folder")
    return out_dir


def _write_labels(labels, geometry, path):
    import SimpleITK as sitk

    from harmonize._fs import atomic_path

    img = sitk.GetImageFromArray(np.asarray(labels, dtype=np.uint8))
    img.SetSpacing(geometry["spacing"])
    img.SetOrigin(geometry["origin"])
    img.SetDirection(geometry["direction"])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)


def _uid(*parts):
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["harmonize-simulate", *map(str, parts)]))


def _write_subject(result, root, fmt, maps, profiles, seed):
    """Write one subject's maps, truth and labels below ``root``."""
    from harmonize.io.nifti import write_map
    from harmonize.io.volume import MapVolume

    by_label = {p.label: p for p in profiles}
    sid = result.subject_id
    for label in result.labels_ab:
        geom = result.geometry[label]
        other = result.other(label)
        profile = by_label[label]
        for map_type in maps:
            vol = MapVolume(result.maps[label][map_type], map_type=map_type, scanner=label, subject=sid, **geom)
            if fmt == "nifti":
                write_map(vol, root / label / _map_filename(sid, map_type, maps))
            else:
                from harmonize.io.dicom import write_dicom_series

                vol.meta = {
                    "manufacturer": profile.manufacturer,
                    "model": profile.model,
                    "patient_id": sid,
                    "patient_name": sid,
                    "study_uid": _uid(seed, sid, label, "study"),
                    "frame_of_reference_uid": _uid(seed, sid, label, "frame"),
                    "series_description": f"{map_type} Mapping",
                    "series_number": _SERIES_NUMBER[map_type],
                    "magnetic_field_strength": profile.field_strength_t,
                    "slice_thickness": geom["spacing"][2],
                }
                write_dicom_series(vol, root / "dicom" / label / sid / map_type)
            # the truth of scanner `other` lives on this session's grid
            truth = MapVolume(result.truth[other][map_type], map_type=map_type, scanner=other, subject=sid, **geom)
            write_map(truth, root / "_truth" / other / _map_filename(sid, map_type, maps))
        _write_labels(result.tissue[label], geom, root / "_tissue" / label / f"{sid}_labels.nii.gz")


def simulate(out_dir, subjects=12, slices=27, size=256, fmt="nifti", maps=("T1",), seed=0,
             scanners="default", progress=True, overwrite=False, workers=None):
    """Write the simulated two-scanner dataset to ``out_dir`` (atomically) and return its summary.

    Parameters
    ----------
    out_dir : str or Path
        New or empty folder (or, with ``overwrite``, a previous simulate output to replace).
    subjects : int
        Number of subjects ('sub01' ...); each is scanned once on each scanner.
    slices, size : int
        Axial slices of 4 mm, in-plane pixels on a 240 mm field of view (256 -> 0.9375 mm).
    fmt : {'nifti', 'dicom'}
        Format of the maps; truth and tissue labels are always NIfTI.
    maps : sequence or comma-separated str of {'T1', 'T2', 'PD'}
    seed : int
        Everything is a pure function of the seed (and of the other arguments).
    scanners : str or pair of ScannerProfile
        'default' (SIGNA -> Optima MR450w), 'alternative', or (A, B) profiles.
    progress : bool
        Show a progress bar over subjects (stderr).
    overwrite : bool
        Replace ``out_dir`` when it holds a previous simulation.
    workers : int, optional
        Processes rendering subjects in parallel (default: up to 2 on Linux, where they are
        forked; 1 elsewhere or when TensorFlow is already loaded). The output does not depend on it.

    Returns
    -------
    dict
        Summary written to ``OUT/simulation.json`` too: 'mean_abs_rel_t1_diff' (mean over subjects
        of the mean |A - truth on B| / truth on B in A's brain labels, dimensionless), per map
        'mean_abs_rel_diff', per subject values, parameters, scanner profiles, 'seconds'.

    Raises
    ------
    InputError
        ``out_dir`` is a file, or not empty (see ``overwrite``).
    ConfigError
        Invalid sizes, map types, format or scanner pair.
    """
    from harmonize._fs import atomic_path

    start = time.perf_counter()
    fmt = str(fmt).lower()
    if fmt not in ("nifti", "dicom"):
        raise ConfigError(f"--format {fmt!r}: use 'nifti' or 'dicom'")
    if int(subjects) != subjects or int(subjects) < 1:
        raise ConfigError(f"--subjects {subjects}: give at least 1 subject")
    subjects = int(subjects)
    maps = parse_maps(maps)
    profiles = resolve_scanners(scanners)
    grid = make_grid(slices, size)
    out_dir = _check_out_dir(out_dir, overwrite)
    if fmt == "dicom":
        try:
            import harmonize.io.dicom  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"--format dicom: the DICOM writer is not available ({err}); use --format nifti") from err
    if workers is None:
        # Workers are forked (they inherit the prepared template). Forking a process that already
        # runs TensorFlow's thread pools is unsafe, so then the default is to stay in-process.
        forkable = sys.platform.startswith("linux") and "tensorflow" not in sys.modules
        workers = min(2, os.cpu_count() or 1) if forkable else 1
    workers = max(1, min(int(workers), subjects))

    load_template(default_smoothing(grid))  # prepare once, before any worker is forked
    jobs = [{"subject": n, "maps": maps, "seed": seed, "scanners": profiles, "grid": grid} for n in range(1, subjects + 1)]
    per_subject = []
    diffs = {m: [] for m in maps}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        results = _results(jobs, workers)
        bar = _progress(subjects, progress)
        try:
            for result in results:
                _write_subject(result, tmp, fmt, maps, profiles, seed)
                entry = {"id": result.subject_id, **result.info}
                for m in maps:
                    d = result.mean_abs_rel_diff(m)
                    diffs[m].append(d)
                    entry[f"mean_abs_rel_diff_{m}"] = round(d, 5)
                per_subject.append(entry)
                bar.update(1)
        finally:
            bar.close()
            close = getattr(results, "close", None)
            if close is not None:
                close()
        summary = {
            "format_version": 1,
            "generator": "harmonize simulate",
            "mean_abs_rel_t1_diff": float(np.mean(diffs["T1"])) if "T1" in maps else None,
            "mean_abs_rel_diff": {m: float(np.mean(v)) for m, v in diffs.items()},
            "mean_abs_rel_diff_definition": "mean over subjects of mean(|A - truth_B| / truth_B) over A's CSF/GM/WM "
                                            "voxels, A = the subject's session on scanner A (with noise), truth_B = "
                                            "the same session rendered noise-free with scanner B's effects",
            "parameters": {"subjects": subjects, "slices": grid.slices, "size": grid.size, "format": fmt,
                           "maps": list(maps), "seed": int(seed),
                           "scanners": scanners if isinstance(scanners, str) else "custom",
                           "fov_mm": grid.fov_mm, "slice_thickness_mm": grid.thickness_mm,
                           "pixel_mm": grid.pixel_mm, "planes_per_slice": grid.planes_per_slice},
            "units": {m: MAP_UNITS[m] for m in maps},
            "source": profiles[0].label,
            "target": profiles[1].label,
            "scanners": {"A": profiles[0].to_dict(), "B": profiles[1].to_dict()},
            "session_variation": SessionVariation().to_dict(),
            "subject_variation": dataclasses.asdict(SubjectVariation()),
            "tissue_values_1p5t": {k: dataclasses.asdict(v) for k, v in TISSUE_VALUES.items()},
            "tissue_labels": {str(k): v for k, v in LABELS.items()},
            "anatomy": "MNI ICBM152 2009a symmetric (nilearn), deformed per subject",
            "subjects": per_subject,
        }
        summary["seconds"] = round(time.perf_counter() - start, 2)
        with open(tmp / "simulation.json", "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
    return summary


def _results(jobs, workers):
    """Rendered subjects in order: in this process, or from a pool of forked workers."""
    if workers <= 1:
        return (render_subject(**job) for job in jobs)
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
    return _PoolResults(pool, jobs)


class _PoolResults:
    """Iterate over a pool's ordered results and always shut the pool down."""

    def __init__(self, pool, jobs):
        self._pool = pool
        self._iter = pool.imap(_job, jobs)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iter)

    def close(self):
        self._pool.terminate()
        self._pool.join()


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc="simulate", unit="subject", disable=not enabled, file=sys.stderr)
