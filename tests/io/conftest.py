"""Fixtures of the io tests: tiny DICOM series written with pydicom directly (not with harmonize's
writer, so the reader is tested against independent files), in the style of a scanner's export."""
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import tissue_slice


def write_scanner_series(folder, values, *, slope=1.0, intercept=0.0, description="T1 Map",
                         image_type=("DERIVED", "PRIMARY", "T1MAP"), model="Optima MR450w", patient="sub01",
                         pixel_spacing=(0.9, 0.8), positions=None, step=4.0, origin=(-12.0, -15.0, 20.0),
                         orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), extensionless=False, series_uid=None,
                         study_uid=None, rng=None, sizes=None, bits_stored=16, transfer_syntax=ExplicitVRLittleEndian,
                         prefix=None):
    """Write ``values`` (slices, rows, cols), physical units, as one series of single-frame files.

    Files get shuffled names and reversed InstanceNumbers, so that only the geometry gives the
    slice order. Returns the list of written paths in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    orientation = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    if positions is None:
        positions = [np.asarray(origin) + k * step * normal for k in range(n)]
    rng = rng or np.random.default_rng(7)
    series_uid = series_uid or generate_uid()
    tag = prefix or series_uid[-6:]  # several series may share a folder
    names = [f"{tag}{i:04d}" if extensionless else f"img{tag}_{i:04d}.dcm" for i in rng.permutation(n)]
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    signed = bool((np.round((values - intercept) / slope) < 0).any())
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "MR"
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.InstitutionName = "Test Hospital"
        ds.ManufacturerModelName = model
        ds.SeriesDescription = description
        ds.PatientName = f"Anon^{patient}"
        ds.PatientID = patient
        ds.EchoTime = "11.5"
        ds.RepetitionTime = "4000"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = str(step)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 7
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [f"{v:.6g}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8g}" for v in orientation]
        ds.FrameOfReferenceUID = frame_uid
        ds.PixelSpacing = [str(v) for v in pixel_spacing]
        # a private block, as scanners write them: must survive a harmonised write
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x01, "SS", 42)
        img = values[k] if sizes is None else values[k][: sizes[k][0], : sizes[k][1]]
        stored = np.round((img - intercept) / slope)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = str(slope)
            ds.RescaleIntercept = str(intercept)
        ds.add_new(0x7FE00010, "OW", stored.astype("<i2" if signed else "<u2").tobytes())
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def t1_volume(rng, n=4, size=24, gain=1.0, noise=5.0):
    """(n, size, size) T1 map in ms: tissue-like slices that differ from slice to slice."""
    return np.stack([tissue_slice(rng, size, shift=(k - n / 2, 0.5 * k), noise=noise) * gain + 10.0 * k
                     for k in range(n)]).astype(np.float32)


@pytest.fixture
def write_series():
    return write_scanner_series


@pytest.fixture
def t1_values(rng):
    return t1_volume(rng)


@pytest.fixture
def dicom_tree(tmp_path, rng):
    """A DICOM data folder like a PACS export: 2 scanners x 2 subjects, each with a T1 map series
    and a weighted series (to be ignored), in nested study folders with extension-less files for
    one scanner. Returns the root."""
    root = tmp_path / "dicom_data"
    for s_idx, (model, ext_less) in enumerate((("Optima MR450w", False), ("SIGNA HDxt", True))):
        for subj in range(2):
            patient = f"sub{subj:02d}"
            study = generate_uid()
            base = root / f"patient_{s_idx}_{subj}" / "study"
            write_scanner_series(base / "s7", t1_volume(rng, 3, 16, gain=1.0 + 0.04 * s_idx), model=model,
                                 patient=patient, description="MAGiC T1 Mapping", study_uid=study,
                                 extensionless=ext_less, rng=rng)
            weighted = t1_volume(rng, 3, 16) / 4.0
            write_scanner_series(base / "s3", weighted, model=model, patient=patient, description="T1W FSE",
                                 image_type=("ORIGINAL", "PRIMARY", "M_FSE"), study_uid=study,
                                 extensionless=ext_less, rng=rng)
    return root
