"""Subjects from real anatomy: the MNI ICBM152 2009a template in nilearn, deformed per subject.

The template (197 x 233 x 189, 1 mm, grey/white-matter probability maps and a brain-masked T1w
image) ships inside the nilearn wheel, so no network is needed. From it, once per process:

- ``gm``, ``wm``: tissue probabilities (0-1);
- ``sd``: signed distance to the brain surface in mm (negative inside). Inside the brain the
  voxel fraction not taken by GM/WM is CSF; outside it, layers at given distances from the brain
  surface make the rest of the head (the template has no skull or scalp): extra-axial CSF, bone
  (skull), muscle (galea / temporalis) and subcutaneous fat, then air;
- ``mod``: the part of the T1w template intensity that the GM/WM/CSF fractions do not explain
  (positive in deep grey matter and heavily myelinated white matter). It modulates the tissue
  relaxation rates, so deep grey nuclei get shorter T1 than cortex, as in real maps.

A subject is the template scaled (per axis), smoothly deformed (a sum of random low-frequency
cosine displacements, a few mm) and given its own tissue values. A session places the subject's
head in the scanner (small rotations, an in-plane shift, a through-plane slice offset) and
samples it on the fine planes of a slice grid with one ``SimpleITK.Warp`` per channel, the
whole chain (pose, scaling, deformation) being one dense displacement field. The fine planes
are then turned into the linear quantities a scanner integrates (``P = sum f PD``,
``Q1 = sum f PD R1``, ``Q2 = sum f PD R2``): partial-volume mixing of relaxation *rates*,
weighted by proton density (fast-exchange approximation), so a CSF/WM boundary voxel gets the
PD-weighted mean of 1/T1, not the mean of T1.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from harmonize.errors import InputError

#: tissue classes of the simulation (a subject's values are drawn per class)
TISSUES = ("CSF", "GM", "WM", "BONE", "MUSCLE", "FAT")

#: label codes written to ``_tissue/<scanner>/<subject>_labels.nii.gz``
LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "other head tissue"}

#: template files inside nilearn
TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

# Reference T1w intensities (0-255) of the template in pure tissue (medians where the probability
# exceeds 0.9; CSF: inside the brain mask where GM + WM < 0.1), measured on the nilearn file.
_T1W_REFERENCE = {"CSF": 69.0, "GM": 166.0, "WM": 222.0}
_CROP_MARGIN_MM = 34  # head layers reach ~24 mm (template mm) beyond the brain surface


@dataclasses.dataclass(frozen=True)
class TissueValues:
    """Population mean relaxation values of one tissue at 1.5 T and their between-subject spread.

    Attributes
    ----------
    t1_ms, t2_ms : float
        Mean T1 and T2 in ms.
    pd : float
        Mean proton density in % (SyMRI convention: CSF = 100 %).
    cv_t1, cv_t2, cv_pd : float
        Between-subject coefficient of variation (relative standard deviation).
    """

    t1_ms: float
    t2_ms: float
    pd: float
    cv_t1: float = 0.03
    cv_t2: float = 0.03
    cv_pd: float = 0.02


#: 1.5 T values (see docs/simulator.md for sources). Brain: within the ranges of SyMRI /
#: QRAPMASTER brain maps (Warntjes et al. 2008, MRM 60:320; Hagiwara et al. 2017) and DESPOT1/2
#: relaxometry (Deoni et al. 2008); muscle and fat: Gold et al. 2004 (AJR 183:343, 1.5 T);
#: bone: the low-PD appearance of the skull in synthetic MR maps.
TISSUE_VALUES = {
    "CSF": TissueValues(t1_ms=4200.0, t2_ms=1800.0, pd=100.0, cv_t1=0.03, cv_t2=0.05, cv_pd=0.0),
    "GM": TissueValues(t1_ms=1080.0, t2_ms=98.0, pd=80.0, cv_t1=0.03, cv_t2=0.03, cv_pd=0.02),
    "WM": TissueValues(t1_ms=630.0, t2_ms=78.0, pd=68.0, cv_t1=0.03, cv_t2=0.03, cv_pd=0.02),
    "BONE": TissueValues(t1_ms=450.0, t2_ms=50.0, pd=12.0, cv_t1=0.08, cv_t2=0.08, cv_pd=0.15),
    "MUSCLE": TissueValues(t1_ms=1010.0, t2_ms=45.0, pd=70.0, cv_t1=0.04, cv_t2=0.05, cv_pd=0.04),
    "FAT": TissueValues(t1_ms=340.0, t2_ms=60.0, pd=90.0, cv_t1=0.05, cv_t2=0.05, cv_pd=0.04),
}

#: how strongly the template's unexplained T1w intensity (``mod``, about -1..1) changes the
#: rates of GM and WM: R1 * (1 + b_r1 * mod), R2 * (1 + b_r2 * mod), PD * (1 - b_pd * mod).
#: Deep grey matter (mod ~ +0.5) then gets T1 ~ 850-900 ms against ~1080 ms in cortex.
MODULATION = {"GM": (0.40, 0.25, 0.08), "WM": (0.15, 0.10, 0.04)}


@dataclasses.dataclass(frozen=True)
class SubjectVariation:
    """Sizes of the between-subject variation of anatomy and tissue values.

    Attributes
    ----------
    scale_sd : float
        Relative standard deviation of the global head size (clipped to ``scale_limits``).
    axis_scale_sd : float
        Additional independent relative scaling per axis (head shape).
    scale_limits : tuple
        Smallest and largest global scale.
    deformation_rms_mm : float
        Root-mean-square smooth displacement per axis, mm.
    deformation_wavelength_mm : tuple
        Range of wavelengths of the cosine displacement components, mm.
    deformation_terms : int
        Number of random cosine components.
    modulation_sd : float
        Relative spread of the deep-grey / myelin modulation strength between subjects.
    texture_terms : int
        Number of random cosine components of the smooth texture fields.
    texture_wavelength_mm : tuple
        Range of their wavelengths, mm.
    head_texture : float
        Relative variation (at one rms of the texture) of the head-layer thickness and of the
        scalp fat and muscle relaxation times.
    brain_texture : float
        Relative regional variation of the GM/WM relaxation rates.
    layers_mm : dict
        Uniform ranges (mm) of the head layers outside the brain: extra-axial CSF, bone, muscle,
        fat.
    """

    scale_sd: float = 0.035
    axis_scale_sd: float = 0.02
    scale_limits: tuple = (0.9, 1.1)
    deformation_rms_mm: float = 2.0
    deformation_wavelength_mm: tuple = (60.0, 140.0)
    deformation_terms: int = 12
    modulation_sd: float = 0.15
    texture_terms: int = 16
    texture_wavelength_mm: tuple = (25.0, 90.0)
    head_texture: float = 0.2
    brain_texture: float = 0.02
    layers_mm: dict = dataclasses.field(default_factory=lambda: {
        "CSF": (1.5, 3.0), "BONE": (5.0, 8.0), "MUSCLE": (1.5, 4.0), "FAT": (3.0, 6.0)})


@dataclasses.dataclass(frozen=True)
class Template:
    """The prepared MNI template channels (cropped around the head), as SimpleITK images.

    ``images`` maps 'gm', 'wm', 'sd', 'mod' to float32 SimpleITK images in the template's physical
    space (LPS mm); ``center_mm`` is the subject-frame origin in template space (centre of the
    brain in x and y, z = 0 at MNI z = 0); ``vertex_mm`` the MNI z of the top of the brain;
    ``brain_box_mm`` the (lowest, highest) corner of the brain's bounding box (LPS mm);
    ``arrays`` the unsmoothed 'gm', 'wm', 'mod' arrays (z, y, x) and ``block`` the slices of the
    brain's block (+ margin) in them, outside which they are 0.
    """

    images: dict
    center_mm: tuple
    vertex_mm: float
    brain_box_mm: tuple
    smoothing_mm: tuple
    arrays: dict = dataclasses.field(default_factory=dict, repr=False)
    block: tuple = ()


@dataclasses.dataclass(frozen=True)
class Subject:
    """One simulated subject: anatomy deformation and tissue values (drawn by :func:`sample_subject`).

    Attributes
    ----------
    number : int
        1-based subject number; ``subject_id`` is 'sub01', 'sub02', ...
    scale : ndarray (3,)
        Size of the subject relative to the template per axis (x, y, z).
    wave_vectors : ndarray (K, 3)
        Angular wave vectors of the displacement components, rad/mm (subject frame).
    phases : ndarray (K,)
    amplitudes : ndarray (K, 3)
        Displacement amplitudes in mm.
    texture_vectors, texture_phases, texture_amplitudes : ndarray (M, 3), (M,), (M, 2)
        Two smooth unit-rms random fields in the subject frame: channel 0 varies the thickness and
        values of the head layers outside the brain, channel 1 the GM/WM relaxation rates.
    tissues : dict
        Tissue name -> (T1 ms, T2 ms, PD %) of this subject.
    modulation : float
        Strength factor of the deep-grey / myelin modulation.
    layers_mm : dict
        Thickness of the head layers outside the brain, mm.
    """

    number: int
    scale: np.ndarray
    wave_vectors: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray
    texture_vectors: np.ndarray
    texture_phases: np.ndarray
    texture_amplitudes: np.ndarray
    tissues: dict
    modulation: float
    layers_mm: dict

    @property
    def subject_id(self):
        return f"sub{self.number:02d}"

    def to_dict(self):
        return {"id": self.subject_id, "scale": [round(float(s), 4) for s in self.scale],
                "tissues": {k: {"T1_ms": round(v[0], 1), "T2_ms": round(v[1], 1), "PD_percent": round(v[2], 2)}
                            for k, v in self.tissues.items()},
                "layers_mm": {k: round(float(v), 2) for k, v in self.layers_mm.items()},
                "modulation": round(float(self.modulation), 3)}


@dataclasses.dataclass(frozen=True)
class SliceGrid:
    """The acquisition grid of one session: ``slices`` x ``size`` x ``size``.

    Fine planes sample each slice ``planes_per_slice`` times, plus ``extra_planes`` beyond the first
    and last slice, so slice profiles with tails can be modelled; plane ``e + s * n + j`` (j < n)
    lies inside slice ``s``.
    """

    size: int = 256
    slices: int = 27
    fov_mm: float = 240.0
    thickness_mm: float = 4.0
    planes_per_slice: int = 2
    extra_planes: int = 1

    @property
    def pixel_mm(self):
        return self.fov_mm / self.size

    @property
    def plane_step_mm(self):
        return self.thickness_mm / self.planes_per_slice

    @property
    def n_planes(self):
        return self.slices * self.planes_per_slice + 2 * self.extra_planes

    def inplane_mm(self):
        """Positions of the pixel centres relative to the field-of-view centre, mm, shape (size,)."""
        return (np.arange(self.size) - (self.size - 1) / 2.0) * self.pixel_mm

    def plane_mm(self):
        """Positions of the fine planes relative to the stack centre, mm, shape (n_planes,)."""
        return (np.arange(self.n_planes) - (self.n_planes - 1) / 2.0) * self.plane_step_mm

    def slice_mm(self):
        """Positions of the slice centres relative to the stack centre, mm, shape (slices,)."""
        return (np.arange(self.slices) - (self.slices - 1) / 2.0) * self.thickness_mm


@dataclasses.dataclass(frozen=True)
class SessionPose:
    """Where the slice stack of one session lies in the subject's head, and its header geometry.

    ``rotation`` (3x3) and ``center_mm`` (3,) map a point ``p`` of the grid (mm, relative to the
    stack centre, grid axes) to the subject frame: ``s = rotation @ p + center_mm``. ``origin``,
    ``spacing`` and ``direction`` are the geometry written to the files (SimpleITK order, mm).
    """

    rotation: np.ndarray
    center_mm: np.ndarray
    origin: tuple
    spacing: tuple
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    angles_deg: tuple = (0.0, 0.0, 0.0)

    def to_dict(self):
        return {"center_mm": [round(float(c), 3) for c in self.center_mm],
                "angles_deg": [round(float(a), 3) for a in self.angles_deg],
                "origin": [round(float(o), 3) for o in self.origin], "spacing": list(self.spacing)}


@dataclasses.dataclass
class SessionAnatomy:
    """One session's subject sampled on the fine planes of its grid (no scanner effects yet).

    Attributes
    ----------
    grid : SliceGrid
    pose : SessionPose
    subject : Subject
    crop : tuple (row0, row1, col0, col1)
        In-plane window holding the head; the quantities below cover only that window.
    quantities : dict
        'P' (sum f PD, %), 'Q1' (sum f PD R1, %/ms), 'Q2' (sum f PD R2, %/ms): float32 arrays
        (n_planes, row1 - row0, col1 - col0).
    labels : ndarray (slices, size, size) uint8
        Tissue label per voxel: argmax of the slice-averaged fractions (see :data:`LABELS`).
    """

    grid: SliceGrid
    pose: SessionPose
    subject: Subject
    crop: tuple
    quantities: dict
    labels: np.ndarray


def template_path(kind):
    """Path of one MNI ICBM152 2009a file inside nilearn ('gm', 'wm' or 't1')."""
    try:
        import nilearn
    except ImportError as err:
        raise InputError("nilearn is not installed; the simulator needs its MNI ICBM152 template: "
                         "pip install nilearn") from err
    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data", TEMPLATE_NAME.format(kind))
    if not os.path.exists(path):
        raise InputError(f"{path}: the MNI ICBM152 2009a template is missing from this nilearn installation; "
                         "reinstall nilearn (the file ships inside its wheel)")
    return path


@functools.lru_cache(maxsize=4)
def load_template(smoothing_mm=(0.0, 0.0, 0.0)):
    """Read and prepare the template channels once per process (a few seconds).

    Parameters
    ----------
    smoothing_mm : tuple of 3 floats
        Gaussian standard deviation (mm) along x, y, z applied to the tissue channels before
        sampling, where the grid samples more coarsely than the template's 1 mm (anti-aliasing);
        zeros for none. See :func:`default_smoothing`.

    Returns
    -------
    Template
    """
    import SimpleITK as sitk

    smoothing_mm = tuple(float(v) for v in smoothing_mm)
    if any(smoothing_mm):
        base = load_template((0.0, 0.0, 0.0))
        images = dict(base.images)
        for key in ("gm", "wm", "mod"):
            # the channels are 0 outside the brain block: smooth only the block (+ margin)
            arr = base.arrays[key].copy()
            block = sitk.GetImageFromArray(arr[base.block])
            for axis, sigma in enumerate(smoothing_mm):  # template axes = grid axes up to a few degrees
                if sigma > 0:
                    block = sitk.RecursiveGaussian(block, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder,
                                                   axis)
            arr[base.block] = sitk.GetArrayViewFromImage(block)
            images[key] = _like(arr, base.images["sd"])
        return dataclasses.replace(base, images=images, smoothing_mm=smoothing_mm)

    raw = {}
    for kind in ("gm", "wm", "t1"):
        path = template_path(kind)
        try:
            raw[kind] = sitk.ReadImage(path, sitk.sitkFloat32)
        except RuntimeError as err:
            raise InputError(f"{path}: cannot read the MNI template ({str(err).strip().splitlines()[-1]}); "
                             "reinstall nilearn") from err
    ref = raw["t1"]
    t1w = sitk.GetArrayViewFromImage(raw["t1"])
    gm = sitk.GetArrayViewFromImage(raw["gm"]) / np.float32(255)
    wm = sitk.GetArrayViewFromImage(raw["wm"]) / np.float32(255)
    # The T1w template is brain-masked; its mask is slightly tighter than the GM probability map,
    # so count likely GM/WM outside it as brain too.
    mask = (t1w > 0) | (gm + wm > 0.2)

    # crop to the brain plus room for the head layers (array order z, y, x); the template's
    # bottom cuts the brain stem, so the crop may reach beyond the array there (zeros)
    nz = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != d)))[0] for d in range(3)]
    lo = [int(a[0]) - _CROP_MARGIN_MM for a in nz]
    hi = [int(a[-1]) + 1 + _CROP_MARGIN_MM for a in nz]
    gm, wm, t1w, mask = (_crop(a, lo, hi) for a in (gm, wm, t1w, mask))
    # the brain's block inside the crop, plus a margin for smoothing
    block = tuple(slice(max(int(a[0]) - l - 4, 0), int(a[-1]) + 1 - l + 4) for a, l in zip(nz, lo))

    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm[~mask] = 0.0
    wm[~mask] = 0.0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    expected = _T1W_REFERENCE["GM"] * gm + _T1W_REFERENCE["WM"] * wm + _T1W_REFERENCE["CSF"] * csf
    # where the T1w mask is tighter than ours, t1w is 0: no information, no modulation
    mod = np.where(t1w > 0, (t1w - expected) / np.float32(_T1W_REFERENCE["WM"] - _T1W_REFERENCE["GM"]), 0.0)
    mod = (np.clip(mod, -1.0, 1.0) * mask).astype(np.float32)
    # a modulation of tissue values, not an edge: smooth it (1 mm) so it can be sampled coarsely
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(mod[block]), 1.0)
    mod[block] = sitk.GetArrayViewFromImage(smoothed)  # (the view needs `smoothed` alive)

    origin = ref.TransformIndexToPhysicalPoint([lo[2], lo[1], lo[0]])
    geometry = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    geometry.SetSpacing(ref.GetSpacing())
    geometry.SetOrigin(origin)
    geometry.SetDirection(ref.GetDirection())
    mask_img = _like(mask.astype(np.uint8), geometry)
    # Maurer distance: 0 on the outermost brain voxels, so the surface (half a voxel further) is at +0.5
    dist = sitk.SignedMaurerDistanceMap(mask_img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    sd = sitk.GetArrayViewFromImage(dist)
    sd = np.clip(np.where(mask, np.minimum(sd, 0.0) - 0.5, sd - 0.5), -20.0, 60.0).astype(np.float32)
    arrays = {"gm": gm, "wm": wm, "mod": mod}
    images = {"gm": _like(gm, geometry), "wm": _like(wm, geometry), "sd": _like(sd, geometry),
              "mod": _like(mod, geometry)}

    # subject-frame origin: brain centre in x, y (LPS); z = 0 at MNI z = 0
    idx_lo = [int(nz[2][0]), int(nz[1][0]), int(nz[0][0])]
    idx_hi = [int(nz[2][-1]), int(nz[1][-1]), int(nz[0][-1])]
    p_lo = np.array(ref.TransformIndexToPhysicalPoint(idx_lo))
    p_hi = np.array(ref.TransformIndexToPhysicalPoint(idx_hi))
    center = (float((p_lo[0] + p_hi[0]) / 2), float((p_lo[1] + p_hi[1]) / 2), 0.0)
    vertex = float(max(p_lo[2], p_hi[2]))
    box = (tuple(np.minimum(p_lo, p_hi)), tuple(np.maximum(p_lo, p_hi)))
    return Template(images=images, center_mm=center, vertex_mm=vertex, brain_box_mm=box,
                    smoothing_mm=(0.0, 0.0, 0.0), arrays=arrays, block=block)


def _crop(arr, lo, hi):
    """arr[lo:hi] per axis as a new array, zero where the window reaches beyond ``arr``."""
    out = np.zeros([h - l for l, h in zip(lo, hi)], dtype=arr.dtype)
    src = tuple(slice(max(l, 0), min(h, n)) for l, h, n in zip(lo, hi, arr.shape))
    dst = tuple(slice(s.start - l, s.stop - l) for s, l in zip(src, lo))
    out[dst] = arr[src]
    return out


def _like(arr, geometry):
    """SimpleITK image of ``arr`` with the spacing, origin and direction of ``geometry``."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(geometry.GetSpacing())
    img.SetOrigin(geometry.GetOrigin())
    img.SetDirection(geometry.GetDirection())
    return img


def sample_subject(number, rng, variation=None, tissue_values=None):
    """Draw one subject's anatomy deformation, size and tissue values.

    Parameters
    ----------
    number : int
        1-based subject number.
    rng : numpy.random.Generator
    variation : SubjectVariation, optional
    tissue_values : dict, optional
        Tissue name -> :class:`TissueValues` (default :data:`TISSUE_VALUES`).

    Returns
    -------
    Subject
    """
    var = variation or SubjectVariation()
    values = tissue_values or TISSUE_VALUES
    lo, hi = var.scale_limits
    scale = float(np.clip(rng.normal(1.0, var.scale_sd), lo, hi)) * (1.0 + rng.normal(0.0, var.axis_scale_sd, 3))

    wave_vectors, phases, amplitudes = _random_cosines(rng, var.deformation_terms, var.deformation_wavelength_mm,
                                                       3, var.deformation_rms_mm)

    tissues = {}
    for name in TISSUES:
        tv = values[name]
        tissues[name] = (float(tv.t1_ms * (1 + tv.cv_t1 * rng.standard_normal())),
                         float(tv.t2_ms * (1 + tv.cv_t2 * rng.standard_normal())),
                         float(tv.pd * (1 + tv.cv_pd * rng.standard_normal())))
    modulation = float(max(0.0, 1.0 + var.modulation_sd * rng.standard_normal()))
    layers = {name: float(rng.uniform(*rng_range)) for name, rng_range in var.layers_mm.items()}
    texture = _random_cosines(rng, var.texture_terms, var.texture_wavelength_mm, 2, 1.0)
    return Subject(number=number, scale=scale, wave_vectors=wave_vectors, phases=phases, amplitudes=amplitudes,
                   texture_vectors=texture[0], texture_phases=texture[1], texture_amplitudes=texture[2],
                   tissues=tissues, modulation=modulation, layers_mm=layers)


def _random_cosines(rng, terms, wavelength_mm, channels, rms):
    """Random smooth field ``sum_k a_k cos(w_k . s + phi_k)``: (wave vectors, phases, amplitudes)."""
    directions = rng.normal(size=(terms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(*wavelength_mm, size=terms)
    wave_vectors = 2 * np.pi * directions / wavelengths[:, None]
    phases = rng.uniform(0, 2 * np.pi, size=terms)
    amplitudes = rng.normal(size=(terms, channels))
    # the rms of sum_k a_k cos(.) over space is sqrt(sum_k a_k^2 / 2) per channel
    amplitudes *= rms / np.sqrt(np.mean(np.sum(amplitudes ** 2, axis=0) / 2))
    return wave_vectors, phases, amplitudes


def _rotation(pitch, roll, yaw):
    """Rotation matrix from angles in radians about x (pitch), y (roll) and z (yaw)."""
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_pose(subject, grid, rng, template, variation=None):
    """Draw where one session's slice stack lies in the subject's head, and its header geometry.

    The nominal stack (as for the thesis's 27 x 4 mm protocol) has its top 3 mm above the
    subject's vertex; a session adds small head rotations, an in-plane head shift and a
    through-plane slice offset (:class:`~harmonize.simulate.scanners.SessionVariation`).
    The header origin is in the session's scanner coordinates: the field-of-view centre
    (prescription offset) and a table position that differ between sessions, so header
    coordinates do not align two sessions.
    """
    from harmonize.simulate.scanners import SessionVariation

    var = variation or SessionVariation()
    angles = np.deg2rad(rng.normal(0.0, 1.0, 3) * np.asarray(var.rotation_sd_deg, dtype=float))
    rotation = _rotation(*angles)
    shift = rng.normal(0.0, var.inplane_shift_sd_mm, 2)
    offset = rng.uniform(-var.slice_offset_mm, var.slice_offset_mm)
    nominal_top = template.vertex_mm * subject.scale[2] + 3.0
    z_center = nominal_top - var.nominal_coverage_mm / 2.0 + offset
    center = np.array([shift[0], shift[1], z_center])

    fov_center = np.round(rng.normal(0.0, var.header_offset_sd_mm, 2), 1)
    table_z = float(np.round(rng.uniform(*var.header_table_range_mm), 1))
    px = grid.pixel_mm
    origin = (float(fov_center[0] - (grid.size - 1) / 2.0 * px),
              float(fov_center[1] - (grid.size - 1) / 2.0 * px),
              float(table_z - (grid.slices - 1) / 2.0 * grid.thickness_mm))
    return SessionPose(rotation=rotation, center_mm=center, origin=origin,
                       spacing=(px, px, float(grid.thickness_mm)), angles_deg=tuple(np.rad2deg(angles)))


def _window(subject, pose, grid, template, reach_mm):
    """In-plane pixel window (row0, row1, col0, col1) holding everything within ``reach_mm``
    (subject mm) of the brain's bounding box on every fine plane."""
    lo, hi = np.asarray(template.brain_box_mm[0]), np.asarray(template.brain_box_mm[1])
    # the deformation moves tissue by at most the sum of its amplitudes
    reach = reach_mm + float(np.abs(subject.amplitudes).sum(axis=0).max()) + 3.0
    center = np.asarray(template.center_mm)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    s = (corners - center) * subject.scale  # template -> subject frame (deformation ignored)
    p = (s - pose.center_mm) @ pose.rotation  # subject -> grid: R^T (s - c), row vectors
    x = grid.inplane_mm()
    cols = np.nonzero((x >= p[:, 0].min() - reach) & (x <= p[:, 0].max() + reach))[0]
    rows = np.nonzero((x >= p[:, 1].min() - reach) & (x <= p[:, 1].max() + reach))[0]
    if cols.size == 0 or rows.size == 0:
        return (0, 1, 0, 1)
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _cosine_sum(wave_vectors, phases, amplitudes, pose, x, y, z):
    """Evaluate ``sum_k a_k cos(w_k . s + phi_k)`` at the subject-frame points of a grid window.

    With ``s = R p + c`` the argument is ``(R^T w) . p + (w . c + phi)``, separable along the grid
    axes, so the sum over components is one matrix product per channel instead of a per-voxel
    loop. Returns float32 (channels, len(z), len(y), len(x)).
    """
    wv = wave_vectors @ pose.rotation  # (K, 3): coefficients of x, y, z
    const = wave_vectors @ pose.center_mm + phases  # (K,)
    ax = np.outer(x, wv[:, 0])  # (X, K)
    ayz = z[:, None, None] * wv[None, None, :, 2] + y[None, :, None] * wv[None, None, :, 1] + const  # (Z, Y, K)
    right = np.concatenate([np.cos(ax), np.sin(ax)], axis=1).T.astype(np.float32)  # (2K, X)
    cos_yz, sin_yz = np.cos(ayz).astype(np.float32), np.sin(ayz).astype(np.float32)
    out = np.empty((amplitudes.shape[1], len(z), len(y), len(x)), dtype=np.float32)
    for a in range(amplitudes.shape[1]):
        amp = amplitudes[:, a].astype(np.float32)
        # cos(u + v) = cos u cos v - sin u sin v, u from (z, y), v from x
        left = np.concatenate([cos_yz * amp, -sin_yz * amp], axis=2).reshape(len(z) * len(y), -1)
        out[a] = (left @ right).reshape(len(z), len(y), len(x))
    return out


def _displacement(subject, pose, grid, template, window):
    """Dense displacement field (n_planes, rows, cols, 3) float32, mm: template point minus grid point.

    The chain grid -> subject frame (pose) -> template (scale, smooth deformation) is evaluated
    exactly at every fine-plane voxel of the window (see :func:`_cosine_sum`).
    """
    r0, r1, c0, c1 = window
    x = grid.inplane_mm()[c0:c1]
    y = grid.inplane_mm()[r0:r1]
    z = grid.plane_mm()
    rot, center = pose.rotation, pose.center_mm
    deformation = _cosine_sum(subject.wave_vectors, subject.phases, subject.amplitudes, pose, x, y, z)
    field = np.empty((len(z), len(y), len(x), 3), dtype=np.float32)
    tcenter = np.asarray(template.center_mm)
    for a in range(3):
        # template - grid point = t_a + (R[a] . p + c_a + w_a) / scale_a - p_a; the affine part is separable
        inv = 1.0 / subject.scale[a]
        coef = rot[a] * inv - np.eye(3)[a]
        disp = deformation[a]
        disp *= inv
        disp += (coef[0] * x)[None, None, :].astype(np.float32)
        disp += (coef[1] * y)[None, :, None].astype(np.float32)
        disp += (coef[2] * z + tcenter[a] + center[a] * inv)[:, None, None].astype(np.float32)
        field[..., a] = disp
    return field


def build_session(subject, pose, grid, template=None, quantities=("P", "Q1"), variation=None):
    """Sample one session of a subject on its grid: fine-plane P/Q quantities and tissue labels.

    Parameters
    ----------
    subject : Subject
    pose : SessionPose
    grid : SliceGrid
    template : Template, optional
        Default: :func:`load_template` with anti-aliasing for the grid's pixel size.
    quantities : sequence of {'P', 'Q1', 'Q2'}
        Which linear quantities to keep ('Q1' for T1 maps, 'Q2' for T2; 'P' is always kept).
    variation : SubjectVariation, optional
        Sizes of the texture effects (the ones the subject was drawn with).

    Returns
    -------
    SessionAnatomy
    """
    import SimpleITK as sitk

    variation = variation or SubjectVariation()
    if template is None:
        template = load_template(default_smoothing(grid))
    # The head window bounds everything; GM, WM and the modulation exist only inside the brain,
    # so they are sampled on the (smaller) brain window: sampling is the expensive step.
    window = _window(subject, pose, grid, template, sum(subject.layers_mm.values()))
    r0, r1, c0, c1 = window
    b0, b1, d0, d1 = _window(subject, pose, grid, template, 0.0)
    b0, b1, d0, d1 = max(b0, r0), min(b1, r1), max(d0, c0), min(d1, c1)
    brain = (slice(None), slice(b0 - r0, b1 - r0), slice(d0 - c0, d1 - c0))
    field = _displacement(subject, pose, grid, template, window)
    x, z = grid.inplane_mm(), grid.plane_mm()
    spacing = (grid.pixel_mm, grid.pixel_mm, grid.plane_step_mm)
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def warp(keys, disp_array, row0, col0, pads, step=1):
        """Sample template channels on the window; ``step=2``: every other pixel, then upsampled."""
        shape = disp_array.shape[:3]
        if step > 1:
            disp_array = np.ascontiguousarray(disp_array[:, ::step, ::step])
        disp = sitk.GetImageFromArray(disp_array, isVector=True)
        origin = (float(x[col0]), float(x[row0]), float(z[0]))
        spacing_ = (spacing[0] * step, spacing[1] * step, spacing[2])
        disp.SetOrigin(origin)
        disp.SetSpacing(spacing_)
        size = [disp_array.shape[2], disp_array.shape[1], disp_array.shape[0]]
        out = [sitk.GetArrayFromImage(sitk.Warp(template.images[key], disp, sitk.sitkLinear, size, origin,
                                                spacing_, identity, pad)) for key, pad in zip(keys, pads)]
        return [_upsample2(o, shape) if step == 2 else o for o in out]

    # The signed distance and the modulation are smooth (the latter smoothed by 1 mm in the
    # template): sampling them on every other pixel and interpolating back costs a quarter.
    (sd,) = warp(("sd",), field, r0, c0, (100.0,), step=2)
    field_b = np.ascontiguousarray(field[brain])
    gm_b, wm_b = warp(("gm", "wm"), field_b, b0, d0, (0.0, 0.0))
    (mod_b,) = warp(("mod",), field_b, b0, d0, (0.0,), step=2)
    del field, field_b
    gm = np.zeros_like(sd)
    wm = np.zeros_like(sd)
    gm[brain] = gm_b
    wm[brain] = wm_b
    texture = _cosine_sum(subject.texture_vectors, subject.texture_phases, subject.texture_amplitudes, pose,
                          x[c0:c1], x[r0:r1], z)
    fractions = _fractions(subject, gm, wm, sd, texture[0], variation)
    props = _tissue_properties(subject, mod_b, texture[0], texture[1][brain], variation)
    del texture
    wanted = {"P"} | set(quantities)
    keys = [k for k in ("P", "Q1", "Q2") if k in wanted]
    out = {k: np.zeros_like(sd) for k in keys}
    for name, frac in fractions.items():
        if name in MODULATION:  # properties are arrays on the brain window
            add_tissue({k: v[brain] for k, v in out.items()}, frac[brain], *props[name])
        else:
            add_tissue(out, frac, *props[name])

    labels = np.zeros((grid.slices, grid.size, grid.size), dtype=np.uint8)
    labels[:, r0:r1, c0:c1] = _labels(fractions, grid)
    return SessionAnatomy(grid=grid, pose=pose, subject=subject, crop=window, quantities=out, labels=labels)


def _upsample2(coarse, shape):
    """Linear interpolation of (planes, ceil(rows/2), ceil(cols/2)) samples at every other pixel
    back to (planes, rows, cols); the last odd row/column repeats its neighbour."""
    def along(arr, axis, n):
        out_shape = list(arr.shape)
        out_shape[axis] = n
        out = np.empty(out_shape, dtype=arr.dtype)
        even = [slice(None)] * arr.ndim
        odd = [slice(None)] * arr.ndim
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        out[tuple(even)] = arr
        n_odd = n // 2
        lo = np.take(arr, range(arr.shape[axis] - 1), axis=axis)
        hi = np.take(arr, range(1, arr.shape[axis]), axis=axis)
        mid = 0.5 * (lo + hi)
        if mid.shape[axis] < n_odd:  # even n: the last odd sample lies beyond the last coarse one
            mid = np.concatenate([mid, np.take(arr, [arr.shape[axis] - 1], axis=axis)], axis=axis)
        out[tuple(odd)] = mid
        return out

    return along(along(coarse, 1, shape[1]), 2, shape[2])


def add_tissue(quantities, fraction, t1_ms, t2_ms, pd):
    """Add one tissue's share to the linear quantities a voxel integrates (in place).

    ``P += f PD``, ``Q1 += f PD / T1``, ``Q2 += f PD / T2``: relaxation *rates* mix, weighted by
    each tissue's volume fraction times proton density (fast exchange between compartments), so
    a voxel's ``T1 = P / Q1`` is the PD-weighted harmonic mean of the tissues' T1, not their mean.

    Parameters
    ----------
    quantities : dict
        'P' (%, required), 'Q1', 'Q2' (%/ms, optional) arrays, updated in place.
    fraction : float or ndarray
        Volume fraction of the tissue (0-1).
    t1_ms, t2_ms : float or ndarray
        Relaxation times of the tissue, ms.
    pd : float or ndarray
        Proton density of the tissue, %.
    """
    fpd = fraction * pd
    quantities["P"] += fpd
    if "Q1" in quantities:
        quantities["Q1"] += fpd / t1_ms
    if "Q2" in quantities:
        quantities["Q2"] += fpd / t2_ms


def default_smoothing(grid):
    """Anti-aliasing (mm, along x, y, z) of the 1 mm template for the grid's sampling steps.

    None for steps up to 1.25 mm; otherwise a Gaussian whose FWHM covers the part of the step the
    1 mm template does not already blur (the fine planes are 2 mm apart by default).
    """
    def sigma(step):
        return 0.0 if step <= 1.25 else round(float(np.sqrt(step ** 2 - 1.0) / 2.355), 2)

    return (sigma(grid.pixel_mm), sigma(grid.pixel_mm), sigma(grid.plane_step_mm))


def _fractions(subject, gm, wm, sd, texture, variation):
    """Volume fractions of every tissue on the fine planes (float32; with air they sum to 1)."""
    inside = np.clip(np.float32(0.5) - sd, 0.0, 1.0)
    np.minimum(gm, inside, out=gm)
    inside -= gm
    np.minimum(wm, inside, out=wm)
    inside -= wm  # what remains inside the brain is CSF
    layers = subject.layers_mm
    bounds = np.cumsum([0.0, layers["CSF"], layers["BONE"], layers["MUSCLE"], layers["FAT"]])
    # The layers are thicker or thinner from place to place: scale the distance to the brain
    # (same effect as scaling every boundary) by a smooth random factor.
    dist = sd / np.maximum(1.0 + np.float32(variation.head_texture) * texture, 0.3)
    # beyond[t] = fraction of the voxel farther than t mm from the brain surface; beyond[0] = 1 - brain
    beyond = [np.clip(dist - np.float32(t - 0.5), 0.0, 1.0) for t in bounds]
    beyond[0] = np.clip(sd + np.float32(0.5), 0.0, 1.0)  # exactly 1 - brain
    inside += beyond[0]
    inside -= beyond[1]
    np.maximum(inside, 0.0, out=inside)
    return {
        "CSF": inside,
        "GM": gm,
        "WM": wm,
        "BONE": np.maximum(beyond[1] - beyond[2], 0.0),
        "MUSCLE": beyond[2] - beyond[3],
        "FAT": beyond[3] - beyond[4],
    }


def _tissue_properties(subject, mod, head_texture, brain_texture, variation):
    """(T1 ms, T2 ms, PD %) per tissue: scalars, or arrays where the tissue varies in space.

    GM and WM (arrays on the brain window): deep-grey / myelin modulation ``mod`` and a smooth
    regional variation; fat and muscle (arrays on the head window): smooth variation.
    """
    props = {}
    for name, (t1, t2, pd) in subject.tissues.items():
        if name in MODULATION:
            b1, b2, bpd = (subject.modulation * b for b in MODULATION[name])
            regional = np.float32(variation.brain_texture) * brain_texture
            # rates scale with (1 + b * mod): T = T0 / (1 + b mod); keep the factor positive
            props[name] = (t1 / np.maximum(1.0 + b1 * mod + regional, 0.2),
                           t2 / np.maximum(1.0 + b2 * mod + regional, 0.2),
                           pd * np.maximum(1.0 - bpd * mod, 0.2))
        elif name in ("FAT", "MUSCLE"):
            factor = np.maximum(1.0 + np.float32(0.5 * variation.head_texture) * head_texture, 0.5)
            props[name] = (t1 * factor, t2 * factor, pd)
        else:
            props[name] = (t1, t2, pd)
    return props


def _labels(fractions, grid):
    """Argmax of the slice-averaged (box profile) fractions: 0 air, 1 CSF, 2 GM, 3 WM, 4 other."""
    n, e, s = grid.planes_per_slice, grid.extra_planes, grid.slices

    def slab(arr):
        return arr[e:e + s * n].reshape(s, n, *arr.shape[1:]).sum(axis=1)

    csf, gm, wm = slab(fractions["CSF"]), slab(fractions["GM"]), slab(fractions["WM"])
    other = slab(fractions["BONE"]) + slab(fractions["MUSCLE"]) + slab(fractions["FAT"])
    air = np.float32(n) - csf - gm - wm - other
    # running argmax; ties go to the lower code, as np.argmax would
    best, labels = air, np.zeros(air.shape, dtype=np.uint8)
    for code, frac in ((1, csf), (2, gm), (3, wm), (4, other)):
        better = frac > best
        labels[better] = code
        best = np.where(better, frac, best)
    return labels
