"""harmonize apply and harmonize.load_generator: units, geometry, tags, size handling, refusals."""
import numpy as np
import pytest

from harmonize.errors import ConfigError, InputError, ModelError, UnitsError
from harmonize.io.nifti import read_map, write_map
from harmonize.io.volume import MapVolume
from tests.apply_helpers import save_gain_generator
from tests.conftest import tissue_slice

pytest.importorskip("tensorflow")

import harmonize  # noqa: E402
from harmonize.cli import main  # noqa: E402

GAIN = 1.05
#: an oblique, non-trivial geometry, so that a geometry bug cannot pass unnoticed
DIRECTION = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)


@pytest.fixture(scope="module")
def gens(tmp_path_factory):
    """Saved 32x32 T1 generators (0.9 mm training pixels): identity and x1.05, plus a T2 one."""
    root = tmp_path_factory.mktemp("generators")
    return {
        "identity": save_gain_generator(root / "g_identity.h5", 32, 1.0),
        "gain": save_gain_generator(root / "g_gain.h5", 32, GAIN),
        "t2": save_gain_generator(root / "g_t2.h5", 32, 1.0, map_type="T2"),
    }


@pytest.fixture(scope="module")
def identity(gens):
    return harmonize.load_generator(gens["identity"])


@pytest.fixture(scope="module")
def gain(gens):
    return harmonize.load_generator(gens["gain"])


def _volume(rng, size=32, slices=4, subject=0, scale=1.0):
    """A small T1 stack (ms) with fit noise in the background, some of it negative."""
    vol = np.stack([tissue_slice(rng, size, shift=(k - 1, subject - 1), noise=10.0) for k in range(slices)])
    background = vol == 0
    vol[background] = rng.normal(0.0, 3.0, int(background.sum()))
    return (vol * scale).astype(np.float32)


def _write(path, array, **geometry):
    geometry = {"spacing": (0.9, 0.9, 4.0), "origin": (-12.5, 30.0, 7.25), "direction": DIRECTION, **geometry}
    return write_map(MapVolume(array, **geometry), path)


def _head(array):
    from harmonize.preprocess.masks import foreground_mask

    return foreground_mask(np.maximum(array, 0))


# --------------------------------------------------------------------------------------------
# Python API


def test_metadata_attributes(identity, gens):
    assert identity.input_map_type == identity.output_map_type == "T1"
    assert identity.units == "ms" and identity.direction == "AtoB"
    assert identity.image_size == (32, 32) and identity.pixel_spacing_mm == (0.9, 0.9)
    assert identity.normalization.scale_a == 5000.0
    assert identity.path == gens["identity"]


def test_identity_returns_input_and_zero_background(identity, rng):
    vol = _volume(rng)
    out = identity.harmonize(vol, batch_size=3)
    head = _head(vol)
    assert out.shape == vol.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[head], vol[head], rtol=1e-3, atol=1e-3)
    # background fit noise (positive and negative) becomes exactly 0, never negative
    assert (vol[~head] != 0).any() and np.all(out[~head] == 0)
    # a single (H, W) slice gives a (H, W) slice, the same as inside the stack
    np.testing.assert_allclose(identity.harmonize(vol[1], mask=head[1]), out[1], atol=1e-3)


def test_gain_generator_in_physical_units(gain, rng):
    vol = _volume(rng)
    out = gain.harmonize(vol)
    head = _head(vol)
    np.testing.assert_allclose(out[head], GAIN * np.maximum(vol[head], 0), rtol=1e-4, atol=1e-2)
    # results do not depend on how slices are batched
    np.testing.assert_allclose(gain.harmonize(vol, batch_size=1), out, rtol=1e-6, atol=1e-3)


def test_explicit_mask_and_no_mask(gain, rng):
    vol = np.maximum(_volume(rng), 0)
    mask = np.zeros(vol.shape, bool)
    mask[:, 8:24, 8:24] = True
    out = gain.harmonize(vol, mask=mask)
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(out[mask], GAIN * vol[mask], rtol=1e-4, atol=1e-2)
    unmasked = gain.harmonize(vol, mask=False)
    np.testing.assert_allclose(unmasked, GAIN * vol, rtol=1e-4, atol=1e-2)


def test_simpleitk_images_keep_geometry(gain, rng):
    import SimpleITK as sitk

    vol = _volume(rng)
    image = MapVolume(vol, spacing=(0.9, 0.9, 4.0), origin=(1.0, -2.0, 3.5), direction=DIRECTION).to_sitk()
    out = gain.harmonize(image)
    assert isinstance(out, sitk.Image)
    assert out.GetSize() == image.GetSize()
    assert out.GetSpacing() == image.GetSpacing() and out.GetOrigin() == image.GetOrigin()
    assert out.GetDirection() == image.GetDirection()
    head = _head(vol)
    np.testing.assert_allclose(sitk.GetArrayFromImage(out)[head], GAIN * np.maximum(vol[head], 0), rtol=1e-4, atol=1e-2)
    flat = sitk.GetImageFromArray(vol[2])
    flat.SetSpacing((0.9, 0.9))
    out2 = gain.harmonize(flat)
    assert out2.GetDimension() == 2 and out2.GetSpacing() == (0.9, 0.9)


def test_mapvolume_of_another_type_is_refused(identity, rng):
    vol = MapVolume(_volume(rng) / 10.0, map_type="T2")
    with pytest.raises(ModelError, match="T2 map.*T1 maps"):
        identity.harmonize(vol)


def test_seconds_are_refused(identity, rng):
    with pytest.raises(UnitsError, match="seconds"):
        identity.harmonize(_volume(rng, scale=1e-3))


@pytest.mark.parametrize("shape,spacing", [((40, 36), (0.75, 0.75)), ((24, 28), (1.2, 1.0)), ((40, 36), None)])
def test_other_sizes_keep_the_input_grid(identity, gain, rng, shape, spacing):
    """Resample + pad/crop to the 32x32 grid and back: the identity round trip is exact."""
    from skimage.transform import resize

    big = np.stack([resize(tissue_slice(rng, 48, shift=(k, 1), noise=10.0), shape, order=0, preserve_range=True,
                           anti_aliasing=False) for k in range(3)]).astype(np.float32)
    head = big > 0
    out = identity.harmonize(big, spacing_mm=spacing)
    assert out.shape == big.shape
    np.testing.assert_allclose(out[head], big[head], rtol=1e-4, atol=1e-2)
    # x1.05 survives the trip: only the correction is blurred, so the error is a few % at edges
    rel = np.abs(gain.harmonize(big, spacing_mm=spacing) - GAIN * big)[head] / (GAIN * big[head])
    assert rel.mean() < 0.01
    # resampling the network output back blurs the input itself: much worse (the measured reason
    # for the default); a test that would fail if the two modes were the same code path
    rel_resample = np.abs(identity.harmonize(big, spacing_mm=spacing, size_mode="resample") - big)[head] / big[head]
    assert rel_resample.mean() > 10 * max(rel.mean(), 1e-4)


def test_map_type_changing_generator_resamples_its_output(rng, tmp_path):
    """T1 -> T2 (Experiment 6): the output is the network's, never 'T1 input + change'."""
    path = save_gain_generator(tmp_path / "g_t1_t2.h5", 32, 1.0, out_map_type="T2", scale_b=500.0)
    gen = harmonize.load_generator(path)
    assert (gen.input_map_type, gen.output_map_type, gen.output_units) == ("T1", "T2", "ms")
    vol = _volume(rng, size=40)
    head = _head(vol)
    out = gen.harmonize(vol, spacing_mm=(0.6, 0.6))
    np.testing.assert_array_equal(out, gen.harmonize(vol, spacing_mm=(0.6, 0.6), size_mode="resample"))
    # per-scanner-max scales 5000 -> 500 ms: an identity network divides by 10
    assert abs(np.median(out[head] / np.maximum(vol[head], 1.0)) - 0.1) < 0.01
    mv = gen.harmonize(MapVolume(vol, spacing=(0.6, 0.6, 4.0), map_type="T1"))
    assert mv.map_type == "T2" and mv.units == "ms"
    np.testing.assert_array_equal(mv.array, out)


def test_head_larger_than_grid_is_shrunk_with_warning(identity, rng):
    from harmonize.apply import SizeWarning

    vol = np.stack([tissue_slice(rng, 64, noise=10.0)])  # a 64-pixel head at 0.9 mm: larger than 32
    with pytest.warns(SizeWarning, match="does not fit"):
        out = identity.harmonize(vol, spacing_mm=(0.9, 0.9))
    np.testing.assert_allclose(out[vol > 0], vol[vol > 0], rtol=1e-4, atol=1e-2)


def test_list_of_slices(identity, rng):
    slices = [tissue_slice(rng, 32), tissue_slice(rng, 40)]
    out = identity.harmonize(slices)
    assert [o.shape for o in out] == [(32, 32), (40, 40)]


@pytest.mark.parametrize("kind", ["unet", "resnet"])
def test_real_generators_load_and_run(kind, rng, tmp_path):
    """The project's own generators (ResNet has a custom layer) round-trip through .h5 and apply."""
    from harmonize.models.generators import build_generator
    from harmonize.models.saving import save_generator
    from tests.apply_helpers import metadata

    model = build_generator(kind, 32, base_filters=4)
    path = save_generator(model, tmp_path / f"g_{kind}.h5", metadata(32))
    gen = harmonize.load_generator(path)
    vol = _volume(rng, slices=3)
    out = gen.harmonize(vol, batch_size=2)
    head = _head(vol)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.all(out >= 0) and np.all(out[~head] == 0) and out[head].max() > 0
    # the loaded network gives what the in-memory one gives
    from harmonize.apply import Generator

    np.testing.assert_allclose(Generator(model, metadata(32)).harmonize(vol), out, rtol=1e-5, atol=1e-2)


def test_bad_batch_size(identity, rng):
    with pytest.raises(ConfigError, match="batch size"):
        identity.harmonize(_volume(rng), batch_size=0)


# --------------------------------------------------------------------------------------------
# command line: NIfTI


def test_cli_nifti_file_keeps_geometry(gens, rng, tmp_path, capsys):
    vol = _volume(rng)
    src = _write(tmp_path / "in" / "sub01_T1.nii.gz", vol)
    dst = tmp_path / "out" / "sub01_T1.nii.gz"
    assert main(["apply", "--generator", str(gens["gain"]), str(src), str(dst), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    got, ref = read_map(dst), read_map(src)
    assert got.spacing == ref.spacing and got.origin == ref.origin
    np.testing.assert_allclose(got.direction, ref.direction, atol=1e-6)
    head = _head(ref.array)
    np.testing.assert_allclose(got.array[head], GAIN * np.maximum(ref.array[head], 0), rtol=1e-4, atol=1e-2)
    assert np.all(got.array[~head] == 0)
    # an existing output is not replaced without --overwrite
    assert main(["apply", "--generator", str(gens["gain"]), str(src), str(dst)]) == InputError.exit_code
    assert "--overwrite" in capsys.readouterr().err
    assert main(["apply", "--generator", str(gens["identity"]), str(src), str(dst), "--overwrite"]) == 0
    np.testing.assert_allclose(read_map(dst).array[head], ref.array[head], rtol=1e-4, atol=1e-2)


def test_cli_folder_of_subjects(gens, rng, tmp_path, capsys):
    data = tmp_path / "data"
    for s in range(3):
        _write(data / "SCANNER_A" / f"sub{s:02d}.nii.gz", _volume(rng, subject=s))
    _write(data / "SCANNER_A" / "sub00_T2.nii.gz", _volume(rng) / 10.0)  # another map type: skipped
    _write(data / "_truth" / "SCANNER_B" / "sub00.nii.gz", _volume(rng))  # reserved folder: not searched
    out = tmp_path / "harmonised"
    assert main(["apply", "-g", str(gens["gain"]), str(data), str(out), "--batch-size", "3", "--no-progress"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"SCANNER_A/sub{s:02d}.nii.gz" for s in range(3)]
    text = capsys.readouterr().out
    assert "skipped" in text and "sub00_T2" in text
    for s in range(3):
        ref = read_map(data / "SCANNER_A" / f"sub{s:02d}.nii.gz")
        got = read_map(out / "SCANNER_A" / f"sub{s:02d}.nii.gz")
        head = _head(ref.array)
        np.testing.assert_allclose(got.array[head], GAIN * ref.array[head], rtol=1e-4, atol=1e-2)
        assert got.origin == ref.origin and got.spacing == ref.spacing
    # nothing left beside the output (temporary folders are renamed or removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "harmonised"]


def test_cli_failure_leaves_no_partial_output(gens, rng, tmp_path, capsys):
    data = tmp_path / "data"
    for s in range(2):
        _write(data / f"sub{s:02d}.nii.gz", _volume(rng, subject=s))
    _write(data / "sub02.nii.gz", _volume(rng, scale=1e-3))  # in seconds: fails after two were written
    out = tmp_path / "out"
    code = main(["apply", "-g", str(gens["identity"]), str(data), str(out), "--no-progress"])
    assert code == UnitsError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sub02.nii.gz" in err and "seconds" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cli_refuses_wrong_map_type(gens, rng, tmp_path, capsys):
    src = _write(tmp_path / "sub01_T2.nii.gz", _volume(rng) / 10.0)
    code = main(["apply", "-g", str(gens["identity"]), str(src), str(tmp_path / "o.nii.gz")])
    assert code == ModelError.exit_code
    err = capsys.readouterr().err
    assert "T2" in err and "T1" in err and "sub01_T2.nii.gz" in err
    assert main(["apply", "-g", str(gens["identity"]), "--map", "T2", str(src), str(tmp_path / "o.nii.gz")]) \
        == ModelError.exit_code
    # a T2 generator refuses a T1 map found in a folder
    t1 = _write(tmp_path / "t1" / "sub01_T1.nii.gz", _volume(rng))
    assert main(["apply", "-g", str(gens["t2"]), str(t1.parent), str(tmp_path / "o")]) == ModelError.exit_code
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.nii.gz").exists()


def test_cli_refuses_seconds(gens, rng, tmp_path, capsys):
    src = _write(tmp_path / "sub01.nii.gz", _volume(rng, scale=1e-3))
    dst = tmp_path / "o.nii.gz"
    assert main(["apply", "-g", str(gens["identity"]), str(src), str(dst)]) == UnitsError.exit_code
    assert "seconds" in capsys.readouterr().err
    assert not dst.exists()


def test_cli_refuses_output_equal_to_input(gens, rng, tmp_path, capsys):
    src = _write(tmp_path / "data" / "sub01.nii.gz", _volume(rng))
    before = src.read_bytes()
    assert main(["apply", "-g", str(gens["identity"]), str(src), str(src), "--overwrite"]) == InputError.exit_code
    assert "input" in capsys.readouterr().err
    gen = str(gens["identity"])
    assert main(["apply", "-g", gen, str(src.parent), str(src.parent / "out")]) == InputError.exit_code
    assert main(["apply", "-g", gen, str(src.parent), str(src.parent)]) == InputError.exit_code
    assert main(["apply", "-g", gen, str(src.parent), str(gens["identity"])]) == InputError.exit_code  # the model
    assert src.read_bytes() == before and sorted(p.name for p in src.parent.iterdir()) == ["sub01.nii.gz"]


def test_cli_argument_errors(gens, rng, tmp_path, capsys):
    src = _write(tmp_path / "sub01.nii.gz", _volume(rng))
    assert main(["apply", "--method", "linear", str(src), str(tmp_path / "o.nii.gz")]) == ConfigError.exit_code
    assert "--fit" in capsys.readouterr().err
    assert main(["apply", "-g", str(tmp_path / "missing.h5"), str(src), str(tmp_path / "o.nii.gz")]) \
        == InputError.exit_code
    assert main(["apply", "-g", str(gens["identity"]), str(src), str(tmp_path / "o.txt")]) == InputError.exit_code
    code = main(["apply", "-g", str(gens["identity"]), "--direction", "BtoA", str(src), str(tmp_path / "o.nii.gz")])
    assert code == ModelError.exit_code and "AtoB" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --generator nor --method: argparse usage error
        main(["apply", str(src), str(tmp_path / "o.nii.gz")])


def test_help_explains_size_handling(capsys):
    with pytest.raises(SystemExit):
        main(["apply", "--help"])
    text = capsys.readouterr().out
    assert "Size handling" in text and "--generator" in text and "DICOM" in text


# --------------------------------------------------------------------------------------------
# command line: DICOM


def _dicom_series(folder, array, description="T1 Mapping", patient="sub01", map_type="T1"):
    from harmonize.io.dicom import write_dicom_series

    vol = MapVolume(array, spacing=(0.9, 0.9, 4.0), origin=(-14.4, -14.4, 20.0), map_type=map_type,
                    meta={"series_description": description, "patient_id": patient,
                          "study_uid": "1.2.826.0.1.3680043.8.498.1", "model": "SCANNER A"})
    write_dicom_series(vol, folder)
    return folder


def test_cli_dicom_series_keeps_tags(gens, rng, tmp_path):
    import pydicom

    from harmonize.io.dicom import read_dicom_series

    vol = np.maximum(_volume(rng), 0)
    src = _dicom_series(tmp_path / "in" / "sub01" / "t1map", vol)
    out = tmp_path / "out"
    assert main(["apply", "-g", str(gens["gain"]), str(src), str(out), "--no-progress"]) == 0
    before = sorted(src.glob("*.dcm"))
    after = sorted(out.glob("*.dcm"))
    assert len(after) == len(before) == vol.shape[0]
    for a, b in zip(before, after):
        old, new = pydicom.dcmread(a), pydicom.dcmread(b)
        for keyword in ("PatientID", "StudyInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                        "PixelSpacing", "FrameOfReferenceUID", "ManufacturerModelName", "Rows", "Columns"):
            assert new.get(keyword) == old.get(keyword), keyword
        assert new.SeriesInstanceUID != old.SeriesInstanceUID
        assert new.SOPInstanceUID != old.SOPInstanceUID
        assert "harmonized" in new.SeriesDescription and "SCANNER_B" in new.SeriesDescription
        assert new.SeriesDescription.startswith("T1 Mapping")
    ref, got = read_dicom_series(src), read_dicom_series(out)
    assert got.origin == ref.origin and got.spacing == ref.spacing
    head = _head(ref.array)
    slope = float(pydicom.dcmread(after[0]).RescaleSlope)
    np.testing.assert_allclose(got.array[head], GAIN * ref.array[head], rtol=1e-4, atol=slope / 2 + 1e-2)


def test_cli_dicom_tree_and_map_types(gens, rng, tmp_path, capsys):
    root = tmp_path / "dicom"
    for s in range(2):
        _dicom_series(root / f"sub{s}" / "t1", np.maximum(_volume(rng, subject=s), 0), patient=f"sub{s}")
    _dicom_series(root / "sub0" / "t2", np.maximum(_volume(rng), 0) / 10.0, description="T2 Map", map_type="T2")
    out = tmp_path / "out"
    assert main(["apply", "-g", str(gens["identity"]), str(root), str(out), "--no-progress"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.iterdir()) == ["sub0", "sub1"]
    assert sorted(p.name for p in (out / "sub0").iterdir()) == ["t1"]
    assert "T2 Map" in capsys.readouterr().out  # reported as skipped
    # the T2 series alone, given to a T1 generator
    code = main(["apply", "-g", str(gens["identity"]), str(root / "sub0" / "t2"), str(tmp_path / "o2")])
    assert code == ModelError.exit_code
    err = capsys.readouterr().err
    assert "T2" in err and "T1" in err
    # --series-filter chooses series by description
    assert main(["apply", "-g", str(gens["identity"]), str(root), str(tmp_path / "o3"), "--series-filter", "nothing"]) \
        == InputError.exit_code


# --------------------------------------------------------------------------------------------
# consistency with the prepared dataset (what evaluate sees) and the baselines


@pytest.fixture
def prepared(nifti_tree, tmp_path):
    from harmonize.prepare import prepare_dataset

    path = tmp_path / "dataset.h5"
    prepare_dataset(nifti_tree, path, source="SCANNER_A", target="SCANNER_B", test_subjects=1, progress=False)
    return path


def test_apply_equals_generator_on_the_prepared_grid(gens, gain, nifti_tree, prepared, tmp_path):
    """apply on a test subject's source NIfTI == the generator on that subject's dataset slices
    and masks (what evaluate's fake B is computed from, when the sizes match)."""
    from harmonize.io.dataset import PreparedDataset

    test = PreparedDataset(prepared).split("test").a
    subject = str(test.subjects[0])
    rows = test.subjects == subject
    fake_b = gain.harmonize(test.images[rows], mask=test.masks[rows].astype(bool))
    out = tmp_path / "fake_b.nii.gz"
    src = nifti_tree / "SCANNER_A" / f"{subject}.nii.gz"
    assert main(["apply", "-g", str(gens["gain"]), str(src), str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(read_map(out).array, fake_b, rtol=1e-6, atol=1e-3)


def test_cli_baseline_method(nifti_tree, prepared, tmp_path, capsys):
    """--method fits the baseline on the dataset's training subjects and applies it voxel-wise."""
    pytest.importorskip("harmonize.baselines")
    src = nifti_tree / "SCANNER_A" / "sub00.nii.gz"
    ref = read_map(src).array
    head = _head(ref)
    for method in ("linear", "histmatch", "nyul"):
        dst = tmp_path / f"{method}.nii.gz"
        assert main(["apply", "--method", method, "--fit", str(prepared), str(src), str(dst), "--no-progress"]) == 0
        got = read_map(dst)
        assert got.shape == ref.shape and got.origin == read_map(src).origin
        # scanner B reads T1 4 % longer in the fixture
        ratio = got.array[head].mean() / np.maximum(ref[head], 0).mean()
        assert 1.02 < ratio < 1.06, (method, ratio)
        assert np.all(got.array[~head] == 0)
    assert "baseline" in capsys.readouterr().out
    back = tmp_path / "back.nii.gz"
    assert main(["apply", "--method", "linear", "--fit", str(prepared), "--direction", "BtoA", str(src), str(back),
                 "--no-progress"]) == 0
    assert read_map(back).array[head].mean() < np.maximum(ref[head], 0).mean()


def test_dicom_output_of_a_map_type_changing_generator_says_its_new_type(rng, tmp_path):
    """A T1 -> T2 generator (Experiment 6): the output series is named and typed as a T2 map."""
    import pydicom

    from harmonize.cli import main
    from harmonize.io.dicom import read_dicom_series

    from tests.apply_helpers import save_gain_generator

    gen = save_gain_generator(tmp_path / "t1_to_t2.h5", gain=1.0, out_map_type="T2", scale_b=500.0)  # T2 = T1 / 10
    src = _dicom_series(tmp_path / "in" / "sub01" / "t1map", np.maximum(_volume(rng), 0))
    out = tmp_path / "out"
    assert main(["apply", "--generator", str(gen), str(src), str(out), "--no-progress"]) == 0
    ds = pydicom.dcmread(sorted(out.glob("*.dcm"))[0])
    assert "T2" in ds.SeriesDescription and "T1" not in ds.SeriesDescription
    assert read_dicom_series(out, "T2").map_type == "T2"  # read back as a T2 map without overrides
