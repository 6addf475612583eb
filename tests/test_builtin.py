"""The cached built-in dataset (simulator replaced by a tiny stand-in; the real one is slow)."""
import threading
import time

import numpy as np
import pytest

from harmonize import builtin
from harmonize.io.dataset import PreparedDataset
from harmonize.io.nifti import write_map
from harmonize.io.volume import MapVolume
from tests.conftest import tissue_slice


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """HARMONIZE_CACHE in tmp_path and a fast stand-in simulator that counts its calls."""
    monkeypatch.setenv("HARMONIZE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_simulator(out_dir, maps, progress):
        calls.append(tuple(maps))
        time.sleep(0.3)  # long enough for a concurrent caller to find the lock taken
        rng = np.random.default_rng(0)
        for scanner, gain in ((builtin.SOURCE_LABEL, 1.0), (builtin.TARGET_LABEL, 1.05)):
            for s in range(3):
                t1 = np.stack([tissue_slice(rng, 32, shift=(k - 1, s), noise=5.0) * gain for k in range(3)])
                write_map(MapVolume(t1, spacing=(0.9, 0.9, 4.0)), out_dir / scanner / f"sub{s}_T1.nii.gz")
                write_map(MapVolume(t1 / 10, spacing=(0.9, 0.9, 4.0), map_type="T2"),
                          out_dir / scanner / f"sub{s}_T2.nii.gz")

    monkeypatch.setattr(builtin, "_run_simulator", fake_simulator)
    return calls


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIZE_CACHE", str(tmp_path / "here"))
    assert builtin.cache_dir() == tmp_path / "here" and (tmp_path / "here").is_dir()
    monkeypatch.delenv("HARMONIZE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert builtin.cache_dir() == tmp_path / "home" / ".cache" / "harmonize"


def test_data_folder_is_simulated_once(fake_cache):
    first = builtin.builtin_data_dir(progress=False)
    again = builtin.builtin_data_dir(maps=("T1",), progress=False)
    assert first == again and (first / builtin.SOURCE_LABEL).is_dir()
    assert fake_cache == [("T1", "T2", "PD")]
    assert not [p for p in first.parent.iterdir() if ".partial" in p.name]


def test_dataset_is_prepared_once_per_option_set(fake_cache):
    path = builtin.builtin_dataset(image_size=16, register=False, progress=False)
    assert path.parent == builtin.cache_dir() and "16x16" in path.name and "noreg" in path.name
    mtime = path.stat().st_mtime_ns
    assert builtin.builtin_dataset(image_size=16, register=False, progress=False) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    ds = PreparedDataset(path)
    assert (ds.source, ds.target) == (builtin.SOURCE_LABEL, builtin.TARGET_LABEL)
    assert ds.image_size == [16, 16] and not ds.has_registered
    assert len(ds.split("test").subjects) == 2

    exp6 = builtin.builtin_dataset(target_map_type="T2", register=False, progress=False)
    assert exp6 != path and "T1-T2" in exp6.name
    assert PreparedDataset(exp6).map_type_b == "T2"
    assert len(fake_cache) == 1


def test_stale_or_broken_files_are_recreated(fake_cache, monkeypatch):
    import h5py

    path = builtin.builtin_dataset(image_size=16, register=False, progress=False)
    path.write_bytes(b"not hdf5")
    again = builtin.builtin_dataset(image_size=16, register=False, progress=False)
    assert again == path and PreparedDataset(path).image_size == [16, 16]
    # a file of another harmonize build under this name is replaced
    with h5py.File(path, "a") as fh:
        fh.attrs["harmonize_version"] = "0.0.0"
    builtin.builtin_dataset(image_size=16, register=False, progress=False)
    assert PreparedDataset(path).attrs["harmonize_version"] == builtin.__version__
    # another harmonize version uses (and makes) its own data folder and files
    monkeypatch.setattr(builtin, "__version__", "99.0")
    newer = builtin.builtin_dataset(image_size=16, register=False, progress=False)
    assert newer != path and "99.0" in newer.name and newer.exists()
    assert len(fake_cache) == 2


def test_concurrent_callers_share_one_creation(fake_cache):
    results, errors = [], []

    def call():
        try:
            results.append(builtin.builtin_dataset(image_size=16, register=False, progress=False))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert len(fake_cache) == 1
