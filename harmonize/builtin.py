"""The built-in two-scanner dataset, simulated once and cached.

Commands run without ``--data`` use :func:`builtin_dataset`: the simulated data folder
(:func:`harmonize.simulate.simulate`, 12 subjects x 27 slices of 256 x 256, scanners "SIGNA" = A
and "Optima_MR450w" = B, T1/T2/PD maps with paired truth and tissue labels) is created on first
use, and a prepared HDF5 file is made once per option set.

Cache location
--------------
``$HARMONIZE_CACHE`` if set, otherwise ``~/.cache/harmonize``::

    <cache>/builtin-data-<version>/                 the simulated data folder (DATA layout)
    <cache>/builtin-<version>-f<format>-<options>.h5  prepared datasets, e.g.
                                                      builtin-0.1.0-s2-f1-T1-native-regvol-seed0.h5

The names carry the harmonize version and the dataset format version, so an upgrade makes new
files (delete the old ones to free space; each prepared file is a few hundred MB, the data folder
about 100 MB). Creation is safe with several processes: a lock file serialises it and every
output appears by an atomic rename, so nobody ever reads a half-written file.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

from harmonize import __version__

#: scanner labels of the simulated dataset: A (source) and B (target), as in the thesis
SOURCE_LABEL = "SIGNA"
TARGET_LABEL = "Optima_MR450w"
DEFAULT_MAPS = ("T1", "T2", "PD")
_DONE_MARKER = ".complete"


def cache_dir():
    """The cache folder: ``$HARMONIZE_CACHE`` or ``~/.cache/harmonize`` (created)."""
    path = Path(os.environ.get("HARMONIZE_CACHE") or Path.home() / ".cache" / "harmonize").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def builtin_data_dir(maps=DEFAULT_MAPS, progress=True):
    """The simulated data folder (created on first use).

    Parameters
    ----------
    maps : sequence of str
        Map types the folder must hold. The default folder holds T1, T2 and PD, which serves
        every request; another set makes its own folder.
    progress : bool
        Progress bars while simulating.

    Returns
    -------
    Path
        ``<cache>/builtin-data-<version>[-<maps>]``.
    """
    from harmonize.io.volume import normalize_map_type

    maps = tuple(dict.fromkeys(normalize_map_type(m) for m in maps))
    if set(maps) <= set(DEFAULT_MAPS):
        maps = DEFAULT_MAPS  # one folder with every map type serves all requests
    from harmonize.simulate.scanners import SIMULATOR_VERSION

    name = f"builtin-data-{__version__}-s{SIMULATOR_VERSION}" + ("" if maps == DEFAULT_MAPS else "-" + "-".join(maps))
    folder = cache_dir() / name
    if (folder / _DONE_MARKER).exists():
        return folder
    from harmonize._fs import atomic_path

    with _lock(folder.with_name(f".{name}.lock")):
        if (folder / _DONE_MARKER).exists():  # another process made it while we waited
            return folder
        if folder.exists():
            warnings.warn(f"{folder}: incomplete simulated data folder (an interrupted run?); creating it again",
                          stacklevel=2)
        with atomic_path(folder, suffix="") as tmp:
            _run_simulator(tmp, maps, progress)
            (tmp / _DONE_MARKER).write_text(f"harmonize {__version__}\n")
    return folder


def _run_simulator(out_dir, maps, progress):
    """Simulate the built-in dataset into ``out_dir`` (separate function so tests can replace it)."""
    from harmonize.simulate import simulate

    simulate(out_dir, maps=maps, seed=0, progress=progress)


def builtin_dataset(map_type="T1", target_map_type=None, image_size=None, register=True, seed=0, progress=True,
                    interpolator=None):
    """Path of the prepared built-in dataset for these options (prepared on first use).

    Parameters
    ----------
    map_type, target_map_type : str
        Map type of A, and of B when different (Experiment 6: 'T1' vs 'T2').
    image_size : int or (rows, cols), optional
        In-plane resampling (e.g. 64 or 128 for quick experiments); None keeps 256 x 256.
    register : bool
        Store registered copies (thesis 2.2) and the 3-D registered counterparts of the A slices
        (``data.align: volume``).
    interpolator : {'bspline', 'lanczos'} or None
        How the counterparts are resampled (:mod:`harmonize.preprocess.rigid`; None: its default);
        a non-default choice is named in the file name.
    seed : int
        Seed of the train/test split (10 / 2 subjects).
    progress : bool
        Progress bars and the summary while preparing.

    Returns
    -------
    Path
        The cached ``.h5`` file (see the module docstring for its name).
    """
    from harmonize.io.dataset import FORMAT_VERSION
    from harmonize.preprocess.rigid import DEFAULT_INTERPOLATOR, interpolator_suffix
    from harmonize.io.volume import normalize_map_type
    from harmonize.simulate.scanners import SIMULATOR_VERSION
    from harmonize.prepare import format_summary, parse_image_size, prepare_dataset

    map_a = normalize_map_type(map_type)
    map_b = normalize_map_type(target_map_type or map_type)
    size = parse_image_size(image_size)
    size_tag = "native" if size is None else f"{size[0]}x{size[1]}"
    types = map_a if map_a == map_b else f"{map_a}-{map_b}"
    interpolator = interpolator or DEFAULT_INTERPOLATOR
    reg_tag = f"regvol{interpolator_suffix(interpolator)}" if register else "noreg"
    name = f"builtin-{__version__}-s{SIMULATOR_VERSION}-f{FORMAT_VERSION}-{types}-{size_tag}-{reg_tag}-seed{int(seed)}.h5"
    path = cache_dir() / name
    if _usable(path):
        return path
    data_dir = builtin_data_dir(progress=progress)
    with _lock(path.with_name(f".{name}.lock")):
        if _usable(path):
            return path
        summary = prepare_dataset(data_dir, path, source=SOURCE_LABEL, target=TARGET_LABEL, map_type=map_a,
                                  target_map_type=map_b if map_b != map_a else None, test_subjects=2,
                                  image_size=size, register=register, register_volumes=register, seed=seed,
                                  progress=progress, interpolator=interpolator)
        if progress:
            print(format_summary(summary))
    return path


def _usable(path):
    """True when ``path`` is a readable prepared dataset of this format and harmonize version."""
    if not path.exists():
        return False
    from harmonize.errors import InputError
    from harmonize.io.dataset import PreparedDataset

    try:
        ds = PreparedDataset(path)
    except InputError:
        return False
    return str(ds.attrs.get("harmonize_version")) == __version__


@contextlib.contextmanager
def _lock(path, timeout_s=3600.0):
    """An exclusive lock file (POSIX flock; elsewhere no lock, the atomic rename still protects)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        start = time.monotonic()
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    print(f"waiting for another process to finish {path.name[1:-5]} ...", flush=True)
                    waited = True
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"{path}: still locked after {timeout_s:.0f} s; remove the lock file "
                                       "if no other harmonize process is running") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
