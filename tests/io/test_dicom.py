"""DICOM reading, writing and validation (harmonize.io.dicom)."""
import hashlib
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from harmonize.errors import ConfigError, GeometryError, InputError, UnitsError
from harmonize.io.dicom import (
    SliceSpacingWarning,
    choose_rescale,
    classify_series,
    find_dicom_series,
    is_quantitative_map,
    read_dicom_series,
    write_dicom_series,
)
from harmonize.io.nifti import read_map, write_map
from harmonize.io.volume import MapVolume

from tests.io.conftest import t1_volume


def _sitk_series(paths):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(paths[0].parent)))
    return reader.Execute()


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------- discovery


def test_find_groups_by_series_uid_and_finds_extensionless_files(tmp_path, write_series, t1_values):
    folder = tmp_path / "mixed"
    write_series(folder, t1_values, description="T1 Map", extensionless=True)
    write_series(folder, t1_values[:3] / 4, description="T1W FSE", image_type=("ORIGINAL", "PRIMARY", "M_FSE"))
    (folder / "notes.txt").write_text("not dicom")
    (folder / "README").write_text("no preamble, no suffix")
    directory = pydicom.Dataset()  # a DICOMDIR: DICOM, but no image
    directory.file_meta = pydicom.dataset.FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    directory.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    directory.FileSetID = "TEST"
    directory.save_as(folder / "DICOMDIR", enforce_file_format=True)
    series = find_dicom_series(tmp_path)
    assert sorted((s.description, len(s.files)) for s in series) == [("T1 Map", 4), ("T1W FSE", 3)]
    t1 = next(s for s in series if s.description == "T1 Map")
    assert t1.scanner == "Optima_MR450w" and t1.subject == "sub01"
    assert all(p.suffix == "" for p in t1.files)
    assert (t1.rows, t1.columns, t1.modality, t1.image_type) == (24, 24, "MR", ("DERIVED", "PRIMARY", "T1MAP"))


def test_scanner_tag_can_be_overridden(tmp_path, write_series, t1_values):
    write_series(tmp_path / "s", t1_values)
    (info,) = find_dicom_series(tmp_path, scanner_tag="InstitutionName")
    assert info.scanner == "Test_Hospital"
    with pytest.raises(ConfigError, match="NotATag"):
        find_dicom_series(tmp_path, scanner_tag="NotATag")


def test_discovery_reads_headers_once_without_pixels(tmp_path, write_series, t1_values, monkeypatch):
    write_series(tmp_path / "a", t1_values)
    write_series(tmp_path / "b", t1_values, description="T2 Map")
    calls = []
    real = pydicom.dcmread

    def counting(fp, *args, **kwargs):
        calls.append((str(fp), kwargs.get("stop_before_pixels")))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    find_dicom_series(tmp_path)
    assert len(calls) == 8 and len({c[0] for c in calls}) == 8
    assert all(stop for _, stop in calls)


# ---------------------------------------------------------------------------------- reading


def test_read_applies_rescale_and_orders_by_geometry(tmp_path, write_series, t1_values):
    # values stored as (T1 + 100) / 0.5 -> slope 0.5, intercept -100: T1 to 0.5 ms precision
    paths = write_series(tmp_path / "s", t1_values, slope=0.5, intercept=-100.0, extensionless=True)
    vol = read_dicom_series(tmp_path / "s", "T1")
    expected = np.round((t1_values.astype(np.float64) + 100.0) / 0.5) * 0.5 - 100.0
    np.testing.assert_allclose(vol.array, expected, atol=1e-3)
    assert vol.array.dtype == np.float32
    ref = _sitk_series(paths)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref), atol=1e-3)
    assert vol.scanner == "Optima_MR450w" and vol.subject == "sub01"
    assert len(vol.dicom) == 4 and all("PixelData" not in ds for ds in vol.dicom)
    assert [ds.InstanceNumber for ds in vol.dicom] == [4, 3, 2, 1]
    assert vol.meta["series_description"] == "T1 Map" and vol.meta["series_uid"] == vol.dicom[0].SeriesInstanceUID


@pytest.mark.parametrize("orientation", [(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
                                         (0.9848078, 0.1736482, 0.0, 0.0, 0.0, -1.0)])  # oblique coronal
def test_read_geometry_matches_simpleitk_for_non_axial_slices(tmp_path, write_series, t1_values, orientation):
    paths = write_series(tmp_path / "s", t1_values, orientation=orientation, step=3.3)
    vol = read_dicom_series(tmp_path / "s")
    ref = _sitk_series(paths)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref), atol=1e-3)


def test_weighted_series_is_rejected_naming_the_folder(tmp_path, write_series, t1_values):
    folder = tmp_path / "series_3"
    write_series(folder, t1_values, description="T1W FSE", image_type=("ORIGINAL", "PRIMARY", "M_FSE"))
    with pytest.raises(InputError, match=r"series_3.*'T1W FSE'.*M_FSE.*weighted or raw image, not a T1 map"):
        read_dicom_series(folder, "T1")
    write_series(tmp_path / "t2", t1_values / 10, description="T2 Map")
    with pytest.raises(InputError, match=r"t2.*'T2 Map'.*is a T2 map, not a T1 map"):
        read_dicom_series(tmp_path / "t2", "T1")


def test_t1_in_seconds_is_a_units_error(tmp_path, write_series, t1_values):
    folder = tmp_path / "t1_seconds"
    write_series(folder, t1_values / 1000.0, slope=0.001)
    with pytest.raises(UnitsError, match=r"t1_seconds.*seconds"):
        read_dicom_series(folder, "T1")


def test_mixed_in_plane_sizes_are_a_geometry_error(tmp_path, write_series, t1_values):
    folder = tmp_path / "mixed_sizes"
    write_series(folder, t1_values, sizes=[(24, 24), (24, 24), (20, 24), (24, 24)])
    with pytest.raises(GeometryError, match=r"mixed_sizes.*Rows/Columns.*20x24"):
        read_dicom_series(folder, "T1")


def test_float_pixel_nan_is_an_input_error(tmp_path, write_series, t1_values):
    paths = write_series(tmp_path / "nan_series", t1_values)
    ds = pydicom.dcmread(paths[1])
    arr = t1_values[1].copy()
    arr[3, 4] = np.nan
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = arr.astype("<f4").tobytes()
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(InputError, match=r"nan_series.*NaN"):
        read_dicom_series(tmp_path / "nan_series", "T1")


def test_truncated_file_names_the_file(tmp_path, write_series, t1_values):
    paths = write_series(tmp_path / "s", t1_values)
    paths[2].write_bytes(paths[2].read_bytes()[:600])  # cut inside the header
    with pytest.raises(InputError, match=rf"{paths[2].name}.*truncated"):
        find_dicom_series(tmp_path)
    paths = write_series(tmp_path / "p", t1_values)
    info = find_dicom_series(tmp_path / "p")[0]
    paths[1].write_bytes(paths[1].read_bytes()[:-100])  # cut inside the pixel data
    with pytest.raises(InputError, match=rf"{paths[1].name}.*truncated"):
        read_dicom_series(info, "T1")


def test_non_dicom_bytes_in_a_dcm_file_are_named(tmp_path, write_series, t1_values):
    write_series(tmp_path / "s", t1_values)
    (tmp_path / "s" / "broken.dcm").write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(InputError, match=r"broken\.dcm.*no DICOM header"):
        find_dicom_series(tmp_path)
    (tmp_path / "s" / "broken.dcm").write_bytes(b"")
    with pytest.raises(InputError, match=r"broken\.dcm"):
        find_dicom_series(tmp_path)


def test_missing_file_and_folder_are_named(tmp_path, write_series, t1_values):
    write_series(tmp_path / "s", t1_values)
    info = find_dicom_series(tmp_path)[0]
    info.files[1].unlink()
    with pytest.raises(InputError, match=rf"{info.files[1].name}.*not found"):
        read_dicom_series(info, "T1")
    with pytest.raises(InputError, match=r"nowhere.*not found"):
        read_dicom_series(tmp_path / "nowhere", "T1")


def test_uneven_slice_spacing_warns_or_raises(tmp_path, write_series, t1_values):
    positions = [(0, 0, z) for z in (0.0, 4.0, 8.0, 16.0)]  # slice at 12 mm missing
    write_series(tmp_path / "gap", t1_values, positions=positions)
    with pytest.warns(SliceSpacingWarning, match=r"gap.*uneven slice spacing.*8\.0"):
        vol = read_dicom_series(tmp_path / "gap", "T1")
    assert vol.spacing[2] == pytest.approx(4.0)
    assert vol.meta["slice_positions_mm"] == pytest.approx([0, 4, 8, 16])
    with pytest.raises(GeometryError, match=r"gap.*uneven"):
        read_dicom_series(tmp_path / "gap", "T1", uneven_spacing="error")


def test_two_images_at_one_position_are_a_geometry_error(tmp_path, write_series, t1_values):
    positions = [(0, 0, z) for z in (0.0, 4.0, 4.0, 8.0)]
    write_series(tmp_path / "dup", t1_values, positions=positions)
    with pytest.raises(GeometryError, match=r"dup.*slice position"):
        read_dicom_series(tmp_path / "dup", "T1")


def test_series_holding_several_map_types_reads_the_requested_one(tmp_path, write_series, t1_values):
    uid = pydicom.uid.generate_uid()
    write_series(tmp_path / "qmap", t1_values, description="SyMRI QMAP", series_uid=uid,
                 image_type=("DERIVED", "PRIMARY", "T1MAP"))
    write_series(tmp_path / "qmap", t1_values / 10, description="SyMRI QMAP", series_uid=uid,
                 image_type=("DERIVED", "PRIMARY", "T2MAP"), prefix="t2")
    (info,) = find_dicom_series(tmp_path)
    assert len(info.files) == 8 and info.image_type == ("DERIVED", "PRIMARY")
    t1 = read_dicom_series(info, "T1")
    t2 = read_dicom_series(info, "T2")
    np.testing.assert_allclose(t1.array, np.round(t1_values), atol=1e-3)
    np.testing.assert_allclose(t2.array, np.round(t1_values / 10), atol=1e-3)
    with pytest.raises(GeometryError, match=r"qmap.*several images per slice"):
        read_dicom_series(info, "PD")


def test_implicit_vr_input_round_trip(tmp_path, write_series, t1_values):
    write_series(tmp_path / "in", t1_values, transfer_syntax=pydicom.uid.ImplicitVRLittleEndian)
    vol = read_dicom_series(tmp_path / "in", "T1")
    paths = write_dicom_series(vol.with_array(vol.array + 0.4), tmp_path / "out")
    back = read_dicom_series(tmp_path / "out", "T1")
    np.testing.assert_allclose(back.array, np.round(vol.array + 0.4), atol=1e-3)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert back.dicom[0].private_block(0x0043, "GEMS_PARM_01")[0x01].value == 42


def test_undecodable_pixel_data_falls_back_to_simpleitk(tmp_path, write_series, t1_values, monkeypatch):
    paths = write_series(tmp_path / "s", t1_values, slope=0.25, intercept=-10.0)
    expected = read_dicom_series(tmp_path / "s", "T1").array
    for path in paths:  # RLE Lossless: pydicom encodes it without plugins
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(read_dicom_series(tmp_path / "s", "T1").array, expected, atol=1e-4)

    def no_decoder(self):
        raise NotImplementedError("no pixel data handler for JPEG 2000")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoder))
    np.testing.assert_allclose(read_dicom_series(tmp_path / "s", "T1").array, expected, atol=1e-4)


def test_folder_with_several_series_reads_the_map_or_explains(tmp_path, write_series, t1_values):
    write_series(tmp_path / "study", t1_values, description="T1 Map")
    write_series(tmp_path / "study", t1_values / 4, description="T1W FSE", image_type=("ORIGINAL", "PRIMARY", "M_FSE"))
    with pytest.warns(UserWarning, match="2 series"):
        vol = read_dicom_series(tmp_path / "study", "T1")
    assert vol.meta["series_description"] == "T1 Map"
    with pytest.raises(InputError, match=r"study.*2 DICOM series.*'T1 Map'.*'T1W FSE'"):
        read_dicom_series(tmp_path / "study", "T2")


@pytest.mark.parametrize("description,image_type,map_type,expected", [
    ("T1Map", (), "T1", "map"),
    ("MAGiC T1 Mapping", ("DERIVED", "PRIMARY"), "T1", "map"),
    ("Mapping", ("DERIVED", "PRIMARY"), "T1", "map"),
    ("qT1", (), "T1", "map"),
    ("PD map", (), "PD", "map"),
    ("T2 Map", (), "T1", "other"),
    ("T2* map", (), "T2", "other"),
    ("T1W FSE", ("ORIGINAL", "PRIMARY", "M_FSE"), "T1", "other"),
    ("SyMRI T1W", (), "T1", "other"),
    ("Ax FLAIR", (), "T1", "other"),
    ("Ax 2D", ("ORIGINAL", "PRIMARY", "OTHER"), "T1", "unknown"),
    ("anything", ("DERIVED", "PRIMARY", "T1 MAP"), "T1", "map"),
])
def test_series_classification(description, image_type, map_type, expected):
    assert classify_series(description, image_type, map_type) == expected
    ds = pydicom.Dataset()
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    assert is_quantitative_map(ds, map_type) == (expected == "map")


# ---------------------------------------------------------------------------------- writing


def test_dicom_round_trip_keeps_values_geometry_and_tags(tmp_path, write_series, t1_values):
    src = tmp_path / "in"
    oblique = (0.9848078, 0.1736482, 0.0, -0.1736482, 0.9848078, 0.0)
    write_series(src, t1_values, slope=0.5, intercept=0.0, orientation=oblique)
    before = _digest(src)
    vol = read_dicom_series(src, "T1")
    harmonised = vol.with_array(vol.array * 1.03)
    paths = write_dicom_series(harmonised, tmp_path / "out")
    assert [p.name for p in paths] == ["IM_0001.dcm", "IM_0002.dcm", "IM_0003.dcm", "IM_0004.dcm"]
    assert _digest(src) == before  # the input is never modified
    back = read_dicom_series(tmp_path / "out", "T1")
    # the original rescale (slope 0.5) still fits: values kept to its precision, 0.25 ms
    assert [r for r in back.meta["rescale"]] == [(0.5, 0.0)] * 4
    assert np.abs(back.array - harmonised.array).max() <= 0.25 + 1e-4
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-7)
    for old, new in zip(vol.dicom, back.dicom):
        assert new.SeriesInstanceUID != old.SeriesInstanceUID
        assert new.SOPInstanceUID != old.SOPInstanceUID
        assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
        assert new.SeriesDescription == "T1 Map harmonized"
        assert new.ImageType[0] == "DERIVED" and list(new.ImageType[1:]) == list(old.ImageType[1:])
        for keyword in ("StudyInstanceUID", "PatientID", "InstitutionName", "EchoTime", "RepetitionTime",
                        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InstanceNumber",
                        "FrameOfReferenceUID", "ManufacturerModelName"):
            assert new[keyword].value == old[keyword].value, keyword
        assert new.private_block(0x0043, "GEMS_PARM_01")[0x01].value == 42
    assert len({ds.SeriesInstanceUID for ds in back.dicom}) == 1


def test_write_chooses_new_rescale_when_values_do_not_fit(tmp_path, write_series, t1_values):
    write_series(tmp_path / "in", t1_values, slope=0.1)  # unsigned 16 bit: 0..6553.5 ms in 0.1 ms steps
    vol = read_dicom_series(tmp_path / "in", "T1")
    new = vol.array * 2.2 - 20.0  # up to ~8900 ms with a negative background: slope 0.1 cannot hold it
    write_dicom_series(vol.with_array(new), tmp_path / "out", series_description="T1 Map harmonised to SIGNA")
    back = read_dicom_series(tmp_path / "out", "T1")
    slope, intercept = back.meta["rescale"][0]
    assert slope > 0.1 and intercept == 0.0 and back.dicom[0].PixelRepresentation == 1
    assert np.abs(back.array - new).max() <= slope / 2 + 1e-3
    assert back.meta["series_description"] == "T1 Map harmonised to SIGNA"


def test_choose_rescale_keeps_or_picks_1_2_5_slope(rng):
    original = {"slope": 1.0, "intercept": 0.0, "bits_allocated": 16, "bits_stored": 12, "signed": False}
    assert choose_rescale(np.array([0.0, 4000.0]), original)["kept"]
    kept16 = choose_rescale(np.array([0.0, 6000.0]), original)  # beyond 12 bits, fits 16 with slope 1
    assert kept16["kept"] and kept16["bits_stored"] == 16
    values = rng.uniform(0, 5000, 1000)
    fresh = choose_rescale(values)
    assert fresh["slope"] == 0.1 and not fresh["signed"]
    assert choose_rescale(np.array([-3.0, 100.0]))["signed"]


def test_nifti_to_fresh_dicom_round_trip(tmp_path, rng):
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # a sagittal grid
    vol = MapVolume(t1_volume(rng, 5, 20), spacing=(0.9375, 0.9, 4.0), origin=(-30.0, 12.5, 7.25),
                    direction=direction, map_type="T1")
    write_map(vol, tmp_path / "sub01.nii.gz")
    nifti = read_map(tmp_path / "sub01.nii.gz", "T1")
    nifti.subject = "sub01"
    nifti.meta.update(model="Optima MR450w", manufacturer="GE MEDICAL SYSTEMS", magnetic_field_strength=1.5,
                      series_number=301)
    paths = write_dicom_series(nifti, tmp_path / "dicom")
    back = read_dicom_series(tmp_path / "dicom", "T1")
    slope = back.meta["rescale"][0][0]
    assert slope == 0.1
    assert np.abs(back.array - nifti.array).max() <= slope / 2 + 1e-3
    np.testing.assert_allclose(back.spacing, nifti.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, nifti.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, nifti.direction, atol=1e-7)
    assert (back.scanner, back.subject, back.meta["series_description"]) == ("Optima_MR450w", "sub01", "T1 Mapping")
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.SeriesNumber == 301
    assert float(ds.MagneticFieldStrength) == 1.5
    assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    ref = _sitk_series(paths)  # SimpleITK (GDCM) sees the same geometry
    np.testing.assert_allclose(ref.GetOrigin(), nifti.origin, atol=1e-4)
    np.testing.assert_allclose(ref.GetDirection(), nifti.direction, atol=1e-6)
    np.testing.assert_allclose(ref.GetSpacing(), nifti.spacing, atol=1e-5)


def test_write_is_atomic_and_never_over_the_input(tmp_path, write_series, t1_values, monkeypatch):
    write_series(tmp_path / "in", t1_values)
    vol = read_dicom_series(tmp_path / "in", "T1")
    with pytest.raises(InputError, match="input"):
        write_dicom_series(vol, tmp_path / "in")
    with pytest.raises(InputError, match="input"):
        write_dicom_series(vol, tmp_path / "in" / "sub")
    real = pydicom.Dataset.save_as
    count = []

    def failing(self, *args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing)
    with pytest.raises(OSError):
        write_dicom_series(vol, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no partial series left behind


def test_write_rejects_nan_and_wrong_grid(tmp_path, write_series, t1_values):
    write_series(tmp_path / "in", t1_values)
    vol = read_dicom_series(tmp_path / "in", "T1")
    bad = vol.array.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"out.*NaN"):
        write_dicom_series(vol.with_array(bad), tmp_path / "out")
    with pytest.raises(GeometryError, match=r"12x24.*resample"):
        write_dicom_series(vol.with_array(vol.array[:, :12]), tmp_path / "out")
    with pytest.raises(ConfigError, match="NoSuchKeyword"):
        write_dicom_series(vol, tmp_path / "out", extra_tags={"NoSuchKeyword": 1})
    paths = write_dicom_series(vol, tmp_path / "out", extra_tags={"SeriesNumber": 1007})
    assert pydicom.dcmread(paths[0]).SeriesNumber == 1007
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom_series(tmp_path / "out", "T1")
