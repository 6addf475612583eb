"""Data-folder discovery (harmonize.io.discover)."""
import warnings

import numpy as np
import pytest

from harmonize.errors import InputError
from harmonize.io.dicom import write_dicom_series
from harmonize.io.discover import (
    MapRecord,
    find_maps,
    find_tissue,
    find_truth,
    pick_domains,
    read_record,
    scanner_label,
)
from harmonize.io.nifti import write_map
from harmonize.io.volume import MapVolume

from tests.io.conftest import t1_volume


@pytest.mark.parametrize("text,label", [
    ("Optima MR450w", "Optima_MR450w"),
    ("SIGNA", "SIGNA"),
    ("  SIGNA / HDxt ", "SIGNA_HDxt"),
    ("Ingenia 3.0T-X", "Ingenia_3.0T-X"),
    ("..", "unknown"),
])
def test_scanner_label(text, label):
    assert scanner_label(text) == label


def test_find_maps_nifti_layout(nifti_tree):
    (nifti_tree / "_truth" / "SCANNER_B").mkdir(parents=True)
    write_map(MapVolume(np.ones((2, 8, 8)) * 900), nifti_tree / "_truth" / "SCANNER_B" / "sub00.nii.gz")
    (nifti_tree / ".cache").mkdir()
    write_map(MapVolume(np.ones((2, 8, 8)) * 900), nifti_tree / ".cache" / "sub00.nii.gz")
    records = find_maps(nifti_tree)
    assert [(r.scanner, r.subject, r.map_type, r.kind) for r in records] == [
        (s, f"sub{i:02d}", "T1", "nifti") for s in ("SCANNER_A", "SCANNER_B") for i in range(4)]
    assert pick_domains(records) == ("SCANNER_A", "SCANNER_B")
    vol = read_record(records[5])
    assert (vol.scanner, vol.subject, vol.shape) == ("SCANNER_B", "sub01", (5, 32, 32))
    assert vol.spacing == pytest.approx((0.9, 0.9, 4.0))


def test_find_maps_several_map_types_and_numpy(tmp_path, rng):
    root = tmp_path / "data"
    for scanner in ("Optima MR450w", "SIGNA"):
        for subject in ("s1", "s2"):
            t1 = t1_volume(rng, 2, 16)
            write_map(MapVolume(t1), root / scanner / f"{subject}_T1.nii.gz")
            write_map(MapVolume(t1 / 10), root / scanner / f"{subject}_T2.npz")
            np.save(root / scanner / f"{subject}_PD.npy", t1 / 50)
    t2 = find_maps(root, map_types=("T2",))
    assert [(r.scanner, r.subject, r.map_type, r.kind) for r in t2] == [
        ("Optima_MR450w", "s1", "T2", "numpy"), ("Optima_MR450w", "s2", "T2", "numpy"),
        ("SIGNA", "s1", "T2", "numpy"), ("SIGNA", "s2", "T2", "numpy")]
    both = find_maps(root, map_types="T1,PD")
    assert sorted({r.map_type for r in both}) == ["PD", "T1"] and len(both) == 8
    assert pick_domains(both, source="Optima MR450w") == ("Optima_MR450w", "SIGNA")
    assert pick_domains(both, target="Optima_MR450w") == ("SIGNA", "Optima_MR450w")


def test_find_maps_dicom_tree_keeps_only_the_maps(dicom_tree):
    records = find_maps(dicom_tree)
    assert [(r.scanner, r.subject, r.kind) for r in records] == [
        ("Optima_MR450w", "sub00", "dicom"), ("Optima_MR450w", "sub01", "dicom"),
        ("SIGNA_HDxt", "sub00", "dicom"), ("SIGNA_HDxt", "sub01", "dicom")]
    assert all(r.dicom.description == "MAGiC T1 Mapping" and r.path.name == "s7" for r in records)
    vol = read_record(records[2])
    assert (vol.scanner, vol.subject, vol.shape, vol.units) == ("SIGNA_HDxt", "sub00", (3, 16, 16), "ms")
    # a SeriesDescription filter chooses other series (here the weighted one, which reading rejects)
    weighted = find_maps(dicom_tree, series_filter="t1w")
    assert len(weighted) == 4 and all(r.dicom.description == "T1W FSE" for r in weighted)
    with pytest.raises(InputError, match=r"s3.*T1W FSE.*not a T1 map"):
        read_record(weighted[0])


def test_find_maps_reads_dicom_written_by_the_simulator_layout(tmp_path, rng):
    out = tmp_path / "sim"
    for model in ("Optima MR450w", "SIGNA"):
        for subject in ("sub01", "sub02"):
            t1 = t1_volume(rng, 3, 16)
            for map_type, values in (("T1", t1), ("T2", t1 / 10)):
                vol = MapVolume(values, spacing=(0.9, 0.9, 4.0), map_type=map_type, subject=subject,
                                meta={"model": model, "manufacturer": "GE MEDICAL SYSTEMS"})
                write_dicom_series(vol, out / "dicom" / scanner_label(model) / subject / map_type)
    t2 = find_maps(out, map_types=("T2",))
    assert [(r.scanner, r.subject, r.map_type, r.path.name) for r in t2] == [
        (s, f"sub0{i}", "T2", "T2") for s in ("Optima_MR450w", "SIGNA") for i in (1, 2)]
    assert len(find_maps(out, map_types=("T1", "T2"))) == 8
    with pytest.raises(InputError, match=r"no PD maps found.*DICOM series 'T1 Mapping'"):
        find_maps(out, map_types=("PD",))


def test_duplicate_series_warn_and_choose_deterministically(dicom_tree, write_series, rng):
    extra = dicom_tree / "patient_0_0" / "study" / "s9"
    write_series(extra, t1_volume(rng, 5, 16), model="Optima MR450w", patient="sub00", description="T1 Map")
    message = r"2 T1 maps for subject sub00 on scanner Optima_MR450w.*using series 'T1 Map'"
    with pytest.warns(UserWarning, match=message):
        records = find_maps(dicom_tree)
    chosen = [r for r in records if (r.scanner, r.subject) == ("Optima_MR450w", "sub00")]
    assert len(records) == 4 and chosen[0].path == extra  # names the map type, and more slices


def test_find_maps_missing_or_empty_folder(tmp_path, rng):
    with pytest.raises(InputError, match=r"nothing_here.*not found"):
        find_maps(tmp_path / "nothing_here")
    for scanner in ("A", "B"):
        write_map(MapVolume(t1_volume(rng, 2, 16)), tmp_path / "data" / scanner / "s1_T1.nii.gz")
    with pytest.raises(InputError, match=r"data: no T2 maps found \(found: 2 x nifti T1\)"):
        find_maps(tmp_path / "data", map_types=("T2",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no T1 maps found \(found: no map files or DICOM series\)"):
        find_maps(tmp_path / "empty")


def test_nan_in_nifti_names_the_file(tmp_path, rng):
    values = t1_volume(rng, 2, 16)
    values[1, 5, 5] = np.nan
    write_map(MapVolume(values), tmp_path / "A" / "bad_subject.nii.gz")
    record = MapRecord("A", "bad_subject", "T1", "nifti", tmp_path / "A" / "bad_subject.nii.gz")
    with pytest.raises(InputError, match=r"bad_subject\.nii\.gz.*NaN"):
        read_record(record)


def test_nifti_in_seconds_is_a_units_error(tmp_path, rng):
    from harmonize.errors import UnitsError

    write_map(MapVolume(t1_volume(rng, 2, 16) / 1000), tmp_path / "A" / "sub.nii.gz")
    with pytest.raises(UnitsError, match=r"sub\.nii\.gz.*seconds"):
        read_record(find_maps(tmp_path)[0])


def test_pick_domains_errors(nifti_tree, tmp_path):
    records = find_maps(nifti_tree)
    one = [r for r in records if r.scanner == "SCANNER_A"]
    with pytest.raises(InputError, match=rf"{nifti_tree.name}.*only one scanner found \(SCANNER_A\)"):
        pick_domains(one)
    with pytest.raises(InputError, match=r"source scanner 'PRISMA' not found.*SCANNER_A, SCANNER_B"):
        pick_domains(records, source="PRISMA")
    with pytest.raises(InputError, match="both SCANNER_A"):
        pick_domains(records, source="SCANNER_A", target="SCANNER A")
    three = records + [MapRecord("Third", "s", "T1", "nifti", nifti_tree / "Third" / "s.nii.gz")]
    with pytest.raises(InputError, match=r"3 scanners found \(SCANNER_A, SCANNER_B, Third\)"):
        pick_domains(three)
    assert pick_domains(three, source="Third", target="SCANNER_A") == ("Third", "SCANNER_A")
    unknown = [MapRecord("unknown", "s", "T1", "dicom", tmp_path / "x")]
    with pytest.raises(InputError, match="scanner tag"):
        pick_domains(unknown)


def test_find_truth_and_tissue(tmp_path):
    root = tmp_path / "data"
    vol = MapVolume(np.ones((1, 4, 4)) * 1000)
    write_map(vol, root / "_truth" / "Optima_MR450w" / "sub01_T1.nii.gz")
    write_map(vol, root / "_truth" / "Optima_MR450w" / "sub01.nii.gz")
    write_map(vol, root / "_truth" / "Optima_MR450w" / "sub02.npy")
    write_map(vol, root / "_tissue" / "SIGNA" / "sub01_labels.nii.gz")
    assert find_truth(root, "Optima MR450w", "sub01", "T1").name == "sub01_T1.nii.gz"
    assert find_truth(root, "Optima_MR450w", "sub01", "T2").name == "sub01.nii.gz"
    assert find_truth(root, "Optima_MR450w", "sub02").name == "sub02.npy"
    assert find_truth(root, "Optima_MR450w", "sub03") is None
    assert find_truth(root, "SIGNA", "sub01") is None
    assert find_tissue(root, "SIGNA", "sub01").name == "sub01_labels.nii.gz"
    assert find_tissue(root, "Optima_MR450w", "sub01") is None
    assert find_tissue(tmp_path / "elsewhere", "SIGNA", "sub01") is None


def test_inputs_are_not_modified_by_discovery_and_reading(dicom_tree):
    before = {p: p.stat().st_mtime_ns for p in dicom_tree.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for record in find_maps(dicom_tree):
            read_record(record)
    after = {p: p.stat().st_mtime_ns for p in dicom_tree.rglob("*") if p.is_file()}
    assert before == after
