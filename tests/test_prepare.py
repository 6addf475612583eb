"""`harmonize prepare` and the prepared HDF5 dataset (io/dataset.py)."""
import shutil

import h5py
import numpy as np
import pytest

from harmonize.cli import main
from harmonize.errors import ConfigError, GeometryError, InputError
from harmonize.io.dataset import FORMAT_VERSION, PreparedDataset
from harmonize.io.nifti import read_map, write_map
from harmonize.io.volume import MapVolume
from harmonize.prepare import prepare_dataset
from harmonize.preprocess.intensity import Normalization


def _prepare(tree, out, *extra):
    return main(["prepare", str(tree), "--out", str(out), "--quiet", *extra])


def test_prepare_writes_the_documented_layout(nifti_tree, tmp_path, capsys):
    out = tmp_path / "ds.h5"
    assert _prepare(nifti_tree, out, "--test-subjects", "1", "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert "train: 3 subjects" in printed and "test: 1 subject" in printed and "normalisation: shared" in printed

    with h5py.File(out, "r") as fh:
        assert fh.attrs["format_version"] == FORMAT_VERSION
        for key in ("harmonize_version", "source", "target", "map_type_a", "map_type_b", "units_a", "units_b",
                    "normalization", "image_size", "seed", "registered", "has_truth", "data_dir", "created"):
            assert key in fh.attrs, key
        for split in ("train", "test"):
            for dom in ("A", "B"):
                g = fh[f"{split}/{dom}"]
                n = len(g["images"])
                assert g["images"].dtype == np.float32 and g["images"].shape == (n, 32, 32)
                assert g["masks"].dtype == np.uint8 and g["masks"].shape == (n, 32, 32)
                assert g["subjects"].shape == g["slices"].shape == (n,)
                assert g["slices"].dtype == np.int32 and g["spacing"].shape == (n, 3)
                assert "registered" not in g and "truth" not in g
            assert fh[f"{split}/pairs"].dtype == np.int32

    ds = PreparedDataset(out)
    assert (ds.source, ds.target) == ("SCANNER_A", "SCANNER_B")
    assert (ds.map_type_a, ds.units_a, ds.units_b) == ("T1", "ms", "ms")
    assert ds.image_size == [32, 32] and ds.pixel_spacing_mm == pytest.approx([0.9, 0.9])
    assert not ds.has_registered and not ds.has_truth
    train, test = ds.split("train"), ds.split("test")
    assert len(train.a) == 15 and len(test.b) == 5
    assert not set(train.subjects) & set(test.subjects)
    assert sorted(train.subjects + test.subjects) == ["sub00", "sub01", "sub02", "sub03"]

    # slices are the input volumes in ms, negatives set to 0, in slice order
    subject = test.a.subjects[0]
    src = read_map(nifti_tree / "SCANNER_A" / f"{subject}.nii.gz").array
    np.testing.assert_array_equal(test.a.images, np.maximum(src, 0))
    np.testing.assert_array_equal(test.a.slices, np.arange(5))
    np.testing.assert_allclose(test.a.spacing, np.tile([0.9, 0.9, 4.0], (5, 1)), rtol=1e-6)
    assert test.a.masks[2].sum() > 0.2 * 32 * 32 and test.a.masks[2, 0, 0] == 0
    # pairs: same subject and slice index
    for i, j in train.pairs:
        assert train.a.subjects[i] == train.b.subjects[j] and train.a.slices[i] == train.b.slices[j]
    assert len(train.pairs) == 15

    # the normalisation is fitted on the training slices of both scanners, and inverts exactly
    norm = ds.normalization
    assert norm == Normalization.fit(train.a.images, train.b.images, kind="shared")
    x = test.b.images
    back = norm.from_network(norm.to_network(x, "B"), "B")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=2e-6, atol=norm.scale_b * 2e-7)


def test_split_is_by_subject_and_seeded(nifti_tree, tmp_path):
    tests = []
    for seed in (0, 0, 1, 2, 3):
        summary = prepare_dataset(nifti_tree, tmp_path / f"s{seed}.h5", test_subjects=2, seed=seed, progress=False)
        assert not set(summary["subjects"]["train"]) & set(summary["subjects"]["test"])
        tests.append(tuple(summary["subjects"]["test"]))
    assert tests[0] == tests[1]
    assert len(set(tests)) > 1


def test_image_size_resamples_and_updates_spacing(nifti_tree, tmp_path):
    out = tmp_path / "small.h5"
    assert _prepare(nifti_tree, out, "--image-size", "16x24", "--register") == 0
    ds = PreparedDataset(out)
    train = ds.split("train")
    assert ds.image_size == [16, 24] and train.a.images.shape[1:] == (16, 24)
    assert train.a.registered.shape == train.a.images.shape
    assert set(np.unique(train.a.masks)) <= {0, 1}
    np.testing.assert_allclose(train.a.spacing[0], [0.9 * 32 / 24, 0.9 * 32 / 16, 4.0], rtol=1e-6)
    assert ds.pixel_spacing_mm == pytest.approx([1.8, 1.2])
    # anti-aliased linear resampling keeps values in range (ms) and non-negative
    assert 0 <= train.a.images.min() and train.a.images.max() <= 4000 * 1.1


def test_register_stores_half_way_copies(nifti_tree, tmp_path, capsys):
    # move scanner B's content of one subject by 2 pixels along x (columns)
    path = nifti_tree / "SCANNER_B" / "sub01.nii.gz"
    vol = read_map(path)
    write_map(vol.with_array(np.roll(vol.array, 2, axis=2)), path)
    out = tmp_path / "reg.h5"
    assert _prepare(nifti_tree, out, "--register", "--test-subjects", "0") == 0
    assert "registration (train)" in capsys.readouterr().out
    ds = PreparedDataset(out)
    train = ds.split("train")
    assert ds.has_registered and ds.attrs["registered"]
    rows = train.a.subjects[train.pairs[:, 0]] == "sub01"
    shift_px = train.pair_shifts[rows] / 0.9
    # the fixture itself moves sub01 by 0 px in x between scanners; the roll adds +2
    assert np.allclose(shift_px[:, 0], 2.0, atol=0.35), shift_px
    i, j = train.pairs[rows][2]
    before = np.abs(train.a.images[i] - train.b.images[j] / 1.04).mean()
    after = np.abs(train.a.registered[i] - train.b.registered[j] / 1.04).mean()
    assert after < 0.6 * before
    assert train.a.registered.min() >= 0


def test_truth_and_tissue_are_stored_when_present(nifti_tree, tmp_path):
    for scanner, other in (("SCANNER_A", "SCANNER_B"), ("SCANNER_B", "SCANNER_A")):
        for path in sorted((nifti_tree / scanner).glob("*.nii.gz")):
            subject = path.name[:-7]
            vol = read_map(path)
            # truth of A's subject lives under B's label, on A's grid
            write_map(vol.with_array(vol.array * 1.5 - 5), nifti_tree / "_truth" / other / f"{subject}.nii.gz")
            write_map(vol.with_array((vol.array > 0).astype(np.float32) * 3), nifti_tree / "_tissue" / scanner /
                      f"{subject}_labels.nii.gz")
    out = tmp_path / "truth.h5"
    assert _prepare(nifti_tree, out) == 0
    ds = PreparedDataset(out)
    assert ds.has_truth and ds.has_tissue and ds.attrs["has_truth"]
    test = ds.split("test")
    np.testing.assert_allclose(test.a.truth, np.maximum(test.a.images * 1.5 - 5, 0), rtol=1e-5, atol=1e-2)
    assert test.a.truth.min() >= 0
    assert test.b.tissue.dtype == np.uint8 and set(np.unique(test.b.tissue)) == {0, 3}


def test_different_map_types_use_per_scanner_max(tmp_path, rng, capsys):
    from tests.conftest import tissue_slice

    root = tmp_path / "data"
    for scanner in ("A1", "B2"):
        for s in range(3):
            t1 = np.stack([tissue_slice(rng, 32, shift=(k, s), noise=5.0) for k in range(3)])
            write_map(MapVolume(t1, spacing=(1, 1, 4)), root / scanner / f"sub{s}_T1.nii.gz")
            write_map(MapVolume(t1 / 10, spacing=(1, 1, 4), map_type="T2"), root / scanner / f"sub{s}_T2.nii.gz")
    out = tmp_path / "exp6.h5"
    assert _prepare(root, out, "--map", "T1", "--target-map", "T2", "--test-subjects", "1") == 0
    assert "per-scanner-max because the map types differ" in capsys.readouterr().out
    ds = PreparedDataset(out)
    assert (ds.map_type_a, ds.map_type_b) == ("T1", "T2")
    norm = ds.normalization
    assert norm.kind == "per-scanner-max"
    assert norm.scale_a == pytest.approx(10 * norm.scale_b, rel=0.05)
    assert ds.split("train").b.images.max() < 500  # B holds the T2 maps


def test_subjects_on_one_scanner_go_to_train(nifti_tree, tmp_path):
    shutil.copy(nifti_tree / "SCANNER_A" / "sub00.nii.gz", nifti_tree / "SCANNER_A" / "extra.nii.gz")
    with pytest.warns(UserWarning, match="only one scanner"):
        summary = prepare_dataset(nifti_tree, tmp_path / "x.h5", test_subjects=2, progress=False)
    assert "extra" in summary["subjects"]["train"]
    assert summary["slices"]["train"]["A"] == summary["slices"]["train"]["B"] + 5


def test_one_scanner_only_is_an_input_error(nifti_tree, tmp_path, capsys):
    shutil.rmtree(nifti_tree / "SCANNER_B")
    assert _prepare(nifti_tree, tmp_path / "x.h5") == InputError.exit_code
    err = capsys.readouterr().err
    assert "only one scanner" in err and "SCANNER_A" in err
    assert not (tmp_path / "x.h5").exists()


def test_unknown_source_label(nifti_tree, tmp_path, capsys):
    assert _prepare(nifti_tree, tmp_path / "x.h5", "--source", "NOPE") == InputError.exit_code
    err = capsys.readouterr().err
    assert "NOPE" in err and "SCANNER_A" in err and "SCANNER_B" in err


def test_mixed_sizes_need_image_size(nifti_tree, tmp_path):
    odd = nifti_tree / "SCANNER_B" / "sub03.nii.gz"
    vol = read_map(odd)
    write_map(vol.with_array(np.pad(vol.array, ((0, 0), (0, 4), (0, 4)))), odd)
    with pytest.raises(GeometryError, match="--image-size") as info:
        prepare_dataset(nifti_tree, tmp_path / "x.h5", progress=False)
    assert str(odd) in str(info.value)
    summary = prepare_dataset(nifti_tree, tmp_path / "x.h5", image_size=32, progress=False)
    assert summary["image_size"] == [32, 32]


def test_bad_settings(nifti_tree, tmp_path):
    with pytest.raises(ConfigError, match="test-subjects"):
        prepare_dataset(nifti_tree, tmp_path / "x.h5", test_subjects=4, progress=False)
    with pytest.raises(ConfigError, match="image-size"):
        prepare_dataset(nifti_tree, tmp_path / "x.h5", image_size="big", progress=False)
    with pytest.raises(InputError, match="input"):
        prepare_dataset(nifti_tree, nifti_tree / "inside.h5", progress=False)


def test_existing_output_needs_overwrite(nifti_tree, tmp_path, capsys):
    out = tmp_path / "other.h5"
    out.write_bytes(b"a file the user keeps")
    assert _prepare(nifti_tree, out) == InputError.exit_code
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"a file the user keeps"
    assert _prepare(nifti_tree, out, "--overwrite") == 0
    assert PreparedDataset(out).source == "SCANNER_A"


def test_no_subject_on_both_scanners_is_named(nifti_tree, tmp_path):
    for path in (nifti_tree / "SCANNER_B").iterdir():
        path.rename(path.with_name("other_" + path.name))
    with pytest.raises(ConfigError, match="but only 0 subjects are on both scanners"), \
            pytest.warns(UserWarning, match="only one scanner"):
        prepare_dataset(nifti_tree, tmp_path / "x.h5", test_subjects=2, progress=False)


def test_reader_rejects_foreign_and_newer_files(tmp_path, nifti_tree):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(InputError, match="not a harmonize prepared dataset"):
        PreparedDataset(foreign)
    with pytest.raises(InputError, match="not found"):
        PreparedDataset(tmp_path / "missing.h5")
    out = tmp_path / "ds.h5"
    prepare_dataset(nifti_tree, out, progress=False)
    with h5py.File(out, "a") as fh:
        fh.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(InputError, match="newer harmonize"):
        PreparedDataset(out)


def test_nifti_and_dicom_trees_give_the_same_dataset(nifti_tree, tmp_path):
    """The same maps as NIfTI files and as DICOM series prepare to the same arrays (to the
    DICOM storage precision: half the RescaleSlope)."""
    import pydicom

    from harmonize.io.dicom import write_dicom_series

    dicom_root = tmp_path / "dicom"
    for scanner in ("SCANNER_A", "SCANNER_B"):
        for path in sorted((nifti_tree / scanner).glob("*.nii.gz")):
            vol = read_map(path)
            vol.scanner, vol.subject, vol.source = scanner, path.name[:-7], None
            write_dicom_series(vol, dicom_root / f"{scanner}_{vol.subject}")
    slope = float(pydicom.dcmread(next(dicom_root.rglob("*.dcm"))).RescaleSlope)
    prepare_dataset(nifti_tree, tmp_path / "nifti.h5", test_subjects=1, register=True, progress=False)
    prepare_dataset(dicom_root, tmp_path / "dicom.h5", test_subjects=1, register=True, progress=False)
    nii, dcm = PreparedDataset(tmp_path / "nifti.h5"), PreparedDataset(tmp_path / "dicom.h5")
    assert (dcm.source, dcm.target) == (nii.source, nii.target)
    assert dcm.normalization.scale_a == pytest.approx(nii.normalization.scale_a, abs=slope)
    for split in ("train", "test"):
        s_nii, s_dcm = nii.split(split), dcm.split(split)
        assert s_nii.subjects == s_dcm.subjects
        np.testing.assert_array_equal(s_nii.pairs, s_dcm.pairs)
        for dom in ("A", "B"):
            a, b = s_nii.domain(dom), s_dcm.domain(dom)
            np.testing.assert_array_equal(a.subjects, b.subjects)
            np.testing.assert_array_equal(a.slices, b.slices)
            np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
            np.testing.assert_allclose(a.images, b.images, atol=slope / 2 + 1e-3)
            assert (a.masks != b.masks).mean() < 1e-3
            # registration sees the same images to 0.05 ms, so it moves them the same way (to
            # ~0.01 pixel: a few ms at 1000-ms edges, far less on average)
            assert np.abs(a.registered - b.registered).mean() < 0.5
        np.testing.assert_allclose(s_nii.pair_shifts, s_dcm.pair_shifts, atol=0.02)


@pytest.mark.slow
def test_simulated_nifti_and_dicom_prepare_alike(tmp_path):
    """Acceptance: the NIfTI and DICOM trees of one simulation prepare to the same arrays
    (to the DICOM storage precision), with truth and tissue labels for both domains."""
    import pydicom

    from harmonize.simulate import simulate

    for fmt in ("nifti", "dicom"):
        simulate(tmp_path / fmt, subjects=3, slices=4, size=48, fmt=fmt, maps=("T1",), progress=False)
        prepare_dataset(tmp_path / fmt, tmp_path / f"{fmt}.h5", source="SIGNA", target="Optima_MR450w",
                        test_subjects=1, register=True, register_volumes=True, progress=False)
    slope = max(float(pydicom.dcmread(p).RescaleSlope) for p in sorted((tmp_path / "dicom").rglob("*.dcm"))[:4])
    nii, dcm = PreparedDataset(tmp_path / "nifti.h5"), PreparedDataset(tmp_path / "dicom.h5")
    assert nii.has_truth and nii.has_tissue and dcm.has_truth
    assert nii.normalization.scale_a == pytest.approx(dcm.normalization.scale_a, abs=slope)
    for split in ("train", "test"):
        s_nii, s_dcm = nii.split(split), dcm.split(split)
        assert s_nii.subjects == s_dcm.subjects
        for dom in ("A", "B"):
            a, b = s_nii.domain(dom), s_dcm.domain(dom)
            np.testing.assert_array_equal(a.subjects, b.subjects)
            np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
            np.testing.assert_allclose(a.images, b.images, atol=slope / 2 + 1e-3)
            np.testing.assert_allclose(a.truth, b.truth, atol=1e-3)
            np.testing.assert_array_equal(a.tissue, b.tissue)
            assert np.abs(a.registered - b.registered).mean() < 1.0
        np.testing.assert_allclose(s_nii.pair_shifts, s_dcm.pair_shifts, atol=0.05)
        # the 3-D registration reads each format's geometry (scanner coordinates) and finds the same counterparts
        cp_nii, cp_dcm = s_nii.a.counterpart, s_dcm.a.counterpart
        np.testing.assert_array_equal(np.isfinite(cp_nii[:, 0, 0]), np.isfinite(cp_dcm[:, 0, 0]))
        assert np.isfinite(cp_nii[:, 0, 0]).any()
        # DICOM's value rounding moves the registration by ~0.01 mm (5 mm pixels); a geometry error would be mm
        assert np.nanmean(np.abs(cp_nii - cp_dcm)) < 0.01 * np.nanmean(cp_nii)


def test_register_volumes_stores_b_on_a_slices(tmp_path, capsys):
    """--register-volumes: every A slice gets B's session registered onto it in 3-D (its counterpart)."""
    from tests.conftest import head_session

    root = tmp_path / "data"
    truths = {}
    for s, (rotation, dz) in enumerate([((0.0, 0.0, 0.0), 0.0), ((2.5, 0.0, 1.0), 2.0), ((-2.0, 1.0, 0.0), -1.5)]):
        a = head_session((-55.0, -55.0, -26.0))
        # B: the head rotated, the stack offset by dz, other scanner coordinates, values 4 % longer
        b = head_session((-55.0, -55.0, -26.0 + dz), rotation_deg=rotation, gain=1.04)
        write_map(a, root / "SCANNER_A" / f"sub{s:02d}.nii.gz")
        write_map(b.with_array(b.array, origin=(30.0, -80.0, 40.0 + dz)), root / "SCANNER_B" / f"sub{s:02d}.nii.gz")
        truths[f"sub{s:02d}"] = 1.04 * a.array
    out = tmp_path / "vol.h5"
    assert _prepare(root, out, "--register-volumes", "--test-subjects", "0") == 0
    assert "resampled with bspline" in capsys.readouterr().out
    ds = PreparedDataset(out)
    assert ds.has_counterparts and not ds.has_registered
    assert ds.attrs["counterpart_interpolator"] == "bspline"
    train = ds.split("train")
    assert train.b.counterpart is None and train.a.counterpart.shape == train.a.images.shape
    has = np.isfinite(train.a.counterpart[:, 0, 0])
    assert has.mean() > 0.75
    assert np.isnan(train.a.counterpart[~has]).all() and np.nanmin(train.a.counterpart) >= 0
    for subject in ("sub01", "sub02"):
        rows = np.flatnonzero((train.a.subjects == subject) & has)
        head = train.a.images[rows] > 100
        truth = truths[subject][train.a.slices[rows]]
        same_index = train.b.images[np.flatnonzero(train.b.subjects == subject)][train.a.slices[rows]]
        # the counterparts show A's anatomy as B measures it; B's slices of the same index do not
        after = np.abs(train.a.counterpart[rows] - truth)[head].mean()
        before = np.abs(same_index - truth)[head].mean()
        assert after < 0.5 * before, (subject, before, after)
    assert _prepare(root, out, "--register-volumes", "--test-subjects", "0", "--interpolator", "lanczos",
                    "--overwrite") == 0
    assert PreparedDataset(out).attrs["counterpart_interpolator"] == "lanczos"


def test_align_volume_trains_on_counterparts_and_refuses_without(tmp_path):
    """data.align: volume pairs raw A with its counterpart, drops slices without one; a dataset without
    counterparts is refused with the command that makes them."""
    from harmonize.data import align_to_counterpart
    from harmonize.io.dataset import DomainData, SplitData

    rng = np.random.default_rng(0)
    a = rng.uniform(500, 1500, (4, 8, 8)).astype(np.float32)
    b = rng.uniform(500, 1500, (4, 8, 8)).astype(np.float32)
    cp = a * 1.04
    cp[3] = np.nan
    spacing = np.tile([1.0, 1.0, 4.0], (4, 1))
    dom_a = DomainData(a, a > 0, ["s"] * 4, np.arange(4), spacing, counterpart=cp)
    dom_b = DomainData(b, b > 0, ["s"] * 4, np.arange(4), spacing)
    # B's slices in reverse order: the pairs, not the positions, say which B slice goes with which A slice
    split = SplitData(dom_a, dom_b, [[0, 3], [1, 2], [2, 1], [3, 0]], name="train")
    out = align_to_counterpart(split)
    np.testing.assert_array_equal(out.pairs, [[0, 3], [1, 2], [2, 1]])
    np.testing.assert_array_equal(out.a.registered, a)
    np.testing.assert_array_equal(out.b.registered[[3, 2, 1]], cp[:3])
    np.testing.assert_array_equal(out.b.registered[0], b[0])  # B slice without a usable pair keeps its values
    assert split.b.registered is None and len(split.pairs) == 4  # the input is not modified
    plain = SplitData(DomainData(a, a > 0, ["s"] * 4, np.arange(4), spacing), dom_b, split.pairs, name="train")
    with pytest.raises(ConfigError, match="--register-volumes"):
        align_to_counterpart(plain)
