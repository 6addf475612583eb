"""`harmonize simulate`: layout, geometry of truth and labels, json summary, overwrite rules, DICOM."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from harmonize.cli import command_main
from harmonize.io.nifti import read_map
from harmonize.simulate import render_subject, simulate

from .conftest import SIZE, SLICES

A, B = "SIGNA", "Optima_MR450w"


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout(tiny_dataset):
    root, _ = tiny_dataset
    expected = ["simulation.json"]
    for s in ("sub01", "sub02"):
        for label in (A, B):
            expected += [f"{label}/{s}.nii.gz", f"_truth/{label}/{s}.nii.gz", f"_tissue/{label}/{s}_labels.nii.gz"]
    assert _files(root) == sorted(expected)
    assert not list(root.parent.glob(".*partial*"))  # the atomic temporary folder is gone


def test_truth_and_labels_on_the_grid_of_the_session(tiny_dataset):
    root, _ = tiny_dataset
    for label, other in ((A, B), (B, A)):
        data = read_map(root / label / "sub01.nii.gz")
        truth = read_map(root / "_truth" / other / "sub01.nii.gz")  # other's effects on label's grid
        tissue = sitk.ReadImage(str(root / "_tissue" / label / "sub01_labels.nii.gz"))
        assert data.shape == truth.shape == (SLICES, SIZE, SIZE)
        assert data.spacing == pytest.approx((240 / SIZE, 240 / SIZE, 4.0))
        np.testing.assert_allclose(truth.origin, data.origin, atol=1e-4)
        np.testing.assert_allclose(tissue.GetOrigin(), data.origin, atol=1e-4)
        assert tissue.GetPixelID() == sitk.sitkUInt8
        assert data.array.dtype == np.float32
    a, b = read_map(root / A / "sub01.nii.gz"), read_map(root / B / "sub01.nii.gz")
    assert not np.allclose(a.origin, b.origin)  # two sessions, two head positions


def test_files_equal_in_memory_render(tiny_dataset):
    root, summary = tiny_dataset
    r = render_subject(2, slices=SLICES, size=SIZE, seed=3)
    np.testing.assert_array_equal(read_map(root / B / "sub02.nii.gz").array, r.maps[B]["T1"])
    np.testing.assert_array_equal(read_map(root / "_truth" / A / "sub02.nii.gz").array, r.truth[A]["T1"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "_tissue" / A / "sub02_labels.nii.gz")))
    np.testing.assert_array_equal(labels, r.tissue[A])
    assert summary["subjects"][1]["mean_abs_rel_diff_T1"] == pytest.approx(r.mean_abs_rel_diff("T1"), abs=1e-5)


def test_summary_json(tiny_dataset):
    root, summary = tiny_dataset
    saved = json.loads((root / "simulation.json").read_text())
    assert saved["mean_abs_rel_t1_diff"] == pytest.approx(summary["mean_abs_rel_t1_diff"])
    assert 0.03 <= saved["mean_abs_rel_t1_diff"] <= 0.07
    assert saved["source"] == A and saved["target"] == B
    assert saved["scanners"]["B"]["model"] == "Optima MR450w"
    assert saved["scanners"]["B"]["t1_max_ms"] == 4000.0
    assert (saved["parameters"]["subjects"], saved["parameters"]["seed"]) == (2, 3)
    assert [s["id"] for s in saved["subjects"]] == ["sub01", "sub02"]


def test_refuses_non_empty_folder_and_overwrites_only_a_simulation(tmp_path, capsys):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [str(out), "--subjects", "1", "--slices", "2", "--size", str(SIZE), "--quiet", "--workers", "1"]
    assert command_main("simulate", args) == 2
    assert "not empty" in capsys.readouterr().err
    assert command_main("simulate", args + ["--overwrite"]) == 2
    assert "simulation.json" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"

    fresh = tmp_path / "fresh"
    assert command_main("simulate", [str(fresh)] + args[1:]) == 0
    printed = capsys.readouterr().out
    assert "T1: mean absolute relative difference SIGNA vs truth on Optima_MR450w" in printed
    assert command_main("simulate", [str(fresh)] + args[1:]) == 2
    assert command_main("simulate", [str(fresh)] + args[1:] + ["--maps", "T1,PD", "--overwrite"]) == 0
    assert "PD" in capsys.readouterr().out
    assert sorted(p.name for p in (fresh / A).iterdir()) == ["sub01_PD.nii.gz", "sub01_T1.nii.gz"]
    assert sorted(p.name for p in (fresh / "_truth" / B).iterdir()) == ["sub01_PD.nii.gz", "sub01_T1.nii.gz"]


def test_bad_options_exit_with_config_error(tmp_path, capsys):
    assert command_main("simulate", [str(tmp_path / "x"), "--maps", "T1,FLAIR", "--quiet"]) == 3
    assert "FLAIR" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_workers_do_not_change_the_output(tmp_path):
    kw = {"subjects": 2, "slices": 2, "size": SIZE, "seed": 5, "progress": False}
    s1 = simulate(tmp_path / "one", workers=1, **kw)
    s2 = simulate(tmp_path / "two", workers=2, **kw)
    assert s1["mean_abs_rel_t1_diff"] == s2["mean_abs_rel_t1_diff"]
    for rel in _files(tmp_path / "one"):
        if rel.endswith(".nii.gz"):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one" / rel)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / rel)))
            np.testing.assert_array_equal(a, b)


def test_dicom_output_equals_nifti_output(tmp_path):
    dicom = pytest.importorskip("harmonize.io.dicom")
    kw = {"subjects": 1, "slices": 3, "size": SIZE, "seed": 2, "maps": ("T1", "PD"), "progress": False, "workers": 1}
    simulate(tmp_path / "nii", fmt="nifti", **kw)
    simulate(tmp_path / "dcm", fmt="dicom", **kw)
    assert not (tmp_path / "dcm" / A).exists()
    # truth and labels are NIfTI in both
    for rel in ("_truth/SIGNA/sub01_T1.nii.gz", "_tissue/SIGNA/sub01_labels.nii.gz"):
        assert (tmp_path / "dcm" / rel).is_file()
    for label, model in ((A, "SIGNA"), (B, "Optima MR450w")):
        for m in ("T1", "PD"):
            vol = dicom.read_dicom_series(tmp_path / "dcm" / "dicom" / label / "sub01" / m, m)
            ref = read_map(tmp_path / "nii" / label / f"sub01_{m}.nii.gz", m)
            slope = max(abs(s) for s, _ in vol.meta["rescale"])
            np.testing.assert_allclose(vol.array, ref.array, atol=slope / 2 + 1e-4)
            np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-3)
            np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-5)
            assert vol.meta["model"] == model and vol.meta["manufacturer"] == "GE MEDICAL SYSTEMS"
            assert vol.meta["patient_id"] == "sub01" and vol.meta["magnetic_field_strength"] == 1.5
            assert vol.meta["series_description"] == f"{m} Mapping"
    t1 = dicom.read_dicom_series(tmp_path / "dcm" / "dicom" / A / "sub01" / "T1", "T1")
    pd = dicom.read_dicom_series(tmp_path / "dcm" / "dicom" / A / "sub01" / "PD", "PD")
    other = dicom.read_dicom_series(tmp_path / "dcm" / "dicom" / B / "sub01" / "T1", "T1")
    assert t1.meta["study_uid"] == pd.meta["study_uid"] != other.meta["study_uid"]


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "harmonize.simulate", "--help"], capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0
    assert "--scanners" in out.stdout and "OUT_DIR" in out.stdout
