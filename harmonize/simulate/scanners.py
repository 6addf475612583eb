"""Scanner profiles: every systematic and random difference between two simulated scanners.

All effect sizes of the simulator's scanners live in this module, so they can be tuned in one
place (see docs/simulator.md for the literature behind each number). A profile describes how a
scanner turns the true tissue properties of a subject into the map it writes:

1. through-plane slice profile (``slice_fwhm_mm``, ``slice_edge_mm``),
2. in-plane point spread function: k-space extent of the acquisition (``acq_resolution_mm``)
   and its apodisation window (``kspace_filter``), truncation gives Gibbs ringing at edges,
3. systematic value bias, global and value-dependent:
   ``measured = gain * true * (true / reference) ** exponent``,
4. a smooth residual B1 / receive field, multiplicative, low-order polynomial in scanner
   coordinates (``field_coefficients``),
5. map noise (relative, its texture shaped by the same k-space window),
6. vendor clipping of long values (``t1_max_ms`` ...) and the background mask (``mask_pd``).

The renderer (:mod:`harmonize.simulate.render`) accepts any pair of profiles; ``SCANNER_SETS``
names the built-in pairs.
"""
from __future__ import annotations

import dataclasses
import re

from harmonize.errors import ConfigError

#: version of the simulated data: bump it whenever a change alters the maps, so cached built-in
#: datasets (harmonize.builtin) are made anew
SIMULATOR_VERSION = 2

#: names of the 9 field polynomial terms, in the order of ``field_coefficients``; x, y are the
#: in-plane scanner coordinates (mm from the field-of-view centre) divided by FIELD_SCALE_MM[0]
#: (x to the patient's left, y posterior), z the slice position (mm from the stack centre)
#: divided by FIELD_SCALE_MM[1] (z superior).
FIELD_TERMS = ("x", "y", "z", "x2", "y2", "z2", "xy", "xz", "yz")

#: reference values of the value-dependent bias: ``(true / reference) ** exponent``.
BIAS_REFERENCE = {"T1": 1000.0, "T2": 100.0, "PD": 100.0}

#: normalisation lengths of the field coordinates, mm: (in-plane, through-plane)
FIELD_SCALE_MM = (120.0, 60.0)

_KSPACE_FILTERS = ("none", "hamming", "fermi")
_NOISE_KINDS = ("gaussian", "rician")


@dataclasses.dataclass(frozen=True)
class ScannerProfile:
    """How one scanner measures quantitative maps (effect sizes of the simulation).

    Values are chosen to give inter-scanner T1 differences of 3-7 % in tissue, the range
    reported between scanners for quantitative relaxometry (Deoni et al. 2008, NeuroImage 40:662,
    6.5 % T1 / 8 % T2 between two 1.5 T vendors; Hagiwara et al. 2019, up to 3.2 % T1 and 5.6 % T2
    for SyMRI/QRAPMASTER across scanners; Bauer et al. 2010, up to 20 % T2 across 3 vendors),
    with residual B1 errors of a few percent after correction (Warntjes et al. 2008, MRM 60:320,
    QRAPMASTER measures and corrects B1) and noise of 1-3 % of the value. docs/simulator.md
    lists the sources and the reasoning for every number.

    Attributes
    ----------
    model : str
        ManufacturerModelName; the scanner folder label is :func:`scanner_label` of it.
    manufacturer : str
        DICOM Manufacturer.
    field_strength_t : float
        Main field in tesla (informative; tissue values are 1.5 T values).
    t1_gain, t1_exponent : float
        T1 bias: ``T1_meas = t1_gain * T1 * (T1 / 1000 ms) ** t1_exponent`` (dimensionless).
    t2_gain, t2_exponent : float
        T2 bias, reference 100 ms.
    pd_gain : float
        PD calibration gain (SyMRI scales PD to CSF = 100 %; a residual gain remains).
    field_coefficients : tuple of 9 floats
        Relative field ``f = sum(c_i * term_i)`` over :data:`FIELD_TERMS`; the map is multiplied by
        ``1 + weight * f`` (dimensionless, 0.02 = 2 %).
    field_weight_t1, field_weight_t2, field_weight_pd : float
        How strongly the residual field acts on each map type.
    noise_t1, noise_t2, noise_pd : float
        Noise standard deviation relative to the value (0.015 = 1.5 %).
    noise_kind : {'gaussian', 'rician'}
        Gaussian, or the magnitude of complex Gaussian noise (positive bias at low values).
    acq_resolution_mm : tuple (frequency, phase)
        Acquired voxel size in mm (field of view / acquisition matrix); k-space beyond
        ``1 / (2 * resolution)`` is not measured, so edges ring (Gibbs).
    phase_axis : {'x', 'y'}
        In-plane axis of phase encoding (x = image columns, right-left; y = rows, anterior-posterior).
    kspace_filter : {'none', 'hamming', 'fermi'}
        Apodisation of the acquired k-space (none = plain truncation, most ringing).
    fermi_radius, fermi_width : float
        Fermi filter ``1 / (1 + exp((|k| / k_max - radius) / width))`` per axis.
    slice_fwhm_mm, slice_edge_mm : float
        Slice profile: a rectangle of this full width at half maximum smoothed by a Gaussian of
        standard deviation ``slice_edge_mm`` (a soft profile mixes in neighbouring tissue).
    t1_max_ms, t2_max_ms, pd_max : float
        Vendor clipping of the written values (ms, ms, %).
    mask_pd : float
        The vendor sets voxels with apparent PD below this (%) to 0 (background, bone).
    """

    model: str
    manufacturer: str
    field_strength_t: float = 1.5
    t1_gain: float = 1.0
    t1_exponent: float = 0.0
    t2_gain: float = 1.0
    t2_exponent: float = 0.0
    pd_gain: float = 1.0
    field_coefficients: tuple = (0.0,) * 9
    field_weight_t1: float = 1.0
    field_weight_t2: float = 0.5
    field_weight_pd: float = 1.0
    noise_t1: float = 0.015
    noise_t2: float = 0.02
    noise_pd: float = 0.01
    noise_kind: str = "gaussian"
    acq_resolution_mm: tuple = (0.9375, 0.9375)
    phase_axis: str = "x"
    kspace_filter: str = "none"
    fermi_radius: float = 0.9
    fermi_width: float = 0.05
    slice_fwhm_mm: float = 4.0
    slice_edge_mm: float = 0.4
    t1_max_ms: float = 4300.0
    t2_max_ms: float = 2000.0
    pd_max: float = 100.0
    mask_pd: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "field_coefficients", tuple(float(c) for c in self.field_coefficients))
        object.__setattr__(self, "acq_resolution_mm", tuple(float(c) for c in self.acq_resolution_mm))
        if len(self.field_coefficients) != len(FIELD_TERMS):
            raise ConfigError(f"scanner {self.model!r}: field_coefficients has {len(self.field_coefficients)} "
                              f"values; give {len(FIELD_TERMS)} ({', '.join(FIELD_TERMS)})")
        if len(self.acq_resolution_mm) != 2 or min(self.acq_resolution_mm) <= 0:
            raise ConfigError(f"scanner {self.model!r}: acq_resolution_mm={self.acq_resolution_mm}; "
                              "give (frequency, phase) voxel sizes in mm, both > 0")
        if self.kspace_filter not in _KSPACE_FILTERS:
            raise ConfigError(f"scanner {self.model!r}: kspace_filter={self.kspace_filter!r}; "
                              f"use one of {', '.join(_KSPACE_FILTERS)}")
        if self.noise_kind not in _NOISE_KINDS:
            raise ConfigError(f"scanner {self.model!r}: noise_kind={self.noise_kind!r}; use one of {', '.join(_NOISE_KINDS)}")
        if self.phase_axis not in ("x", "y"):
            raise ConfigError(f"scanner {self.model!r}: phase_axis={self.phase_axis!r}; use 'x' or 'y'")
        for name in ("t1_gain", "t2_gain", "pd_gain", "slice_fwhm_mm", "t1_max_ms", "t2_max_ms", "pd_max"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"scanner {self.model!r}: {name}={getattr(self, name)}; it must be > 0")
        for name in ("noise_t1", "noise_t2", "noise_pd", "slice_edge_mm", "mask_pd", "fermi_width"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scanner {self.model!r}: {name}={getattr(self, name)}; it must be >= 0")

    @property
    def label(self):
        """Folder label of this scanner ('Optima MR450w' -> 'Optima_MR450w')."""
        return scanner_label(self.model)

    def gain(self, map_type):
        return {"T1": self.t1_gain, "T2": self.t2_gain, "PD": self.pd_gain}[map_type]

    def exponent(self, map_type):
        return {"T1": self.t1_exponent, "T2": self.t2_exponent, "PD": 0.0}[map_type]

    def field_weight(self, map_type):
        return {"T1": self.field_weight_t1, "T2": self.field_weight_t2, "PD": self.field_weight_pd}[map_type]

    def noise(self, map_type):
        return {"T1": self.noise_t1, "T2": self.noise_t2, "PD": self.noise_pd}[map_type]

    def clip_max(self, map_type):
        return {"T1": self.t1_max_ms, "T2": self.t2_max_ms, "PD": self.pd_max}[map_type]

    def bias_factor(self, map_type, value):
        """Systematic factor ``measured / true`` at a true value (before field, noise, clipping)."""
        import numpy as np

        value = np.asarray(value, dtype=np.float64)
        ratio = np.maximum(value, 1e-6) / BIAS_REFERENCE[map_type]
        return self.gain(map_type) * ratio ** self.exponent(map_type)

    def to_dict(self):
        """JSON-ready dict of every field (for simulation.json)."""
        out = dataclasses.asdict(self)
        out["label"] = self.label
        out["field_coefficients"] = dict(zip(FIELD_TERMS, self.field_coefficients))
        return out


def scanner_label(text):
    """Folder label of a scanner name: runs of characters other than [A-Za-z0-9.-] become '_'.

    Uses :func:`harmonize.io.discover.scanner_label` when that module is present, so folder
    names and DICOM tags are sanitised by one rule.
    """
    try:
        from harmonize.io.discover import scanner_label as _shared
    except ImportError:  # io.discover is optional for the simulator
        label = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(text)).strip("_.")
        return label or "unknown"
    return _shared(text)


def field_polynomial(coefficients, x, y, z):
    """Evaluate the relative field ``sum(c_i * term_i)`` on normalised coordinates (broadcasting)."""
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    out = 0.0
    for c, term in zip(coefficients, terms):
        if c:
            out = out + c * term
    return out


# --------------------------------------------------------------------------------------------
# The thesis pair: two 1.5 T GE scanners (SIGNA = A, source; Optima MR450w = B, target).
# Effect sizes (see docs/simulator.md): B reads T1 ~4 % longer than A in white matter and ~5 % in
# grey matter (T1-dependent bias), CSF is clipped at 4000 ms on B and 4300 ms on A, the residual
# fields differ in shape (A: centre-bright, B: left-right/anterior-posterior tilt), B (a 70 cm
# wide-bore system) is a little noisier (2.2 % vs 1.8 %) and blurrier in the phase direction
# (Fermi-filtered, 1.25 mm) while A rings more (plain truncation at 1.07 mm), and B's slice
# profile is softer. The noise levels are balanced so that no single statistic (such as the
# high-frequency energy in white matter) separates the scanners alone: a classifier has to
# learn the texture (correlation), ringing, field and bias together.
# --------------------------------------------------------------------------------------------
SIGNA = ScannerProfile(
    model="SIGNA",
    manufacturer="GE MEDICAL SYSTEMS",
    field_strength_t=1.5,
    t1_gain=1.0,
    t1_exponent=0.0,
    t2_gain=1.0,
    t2_exponent=0.0,
    pd_gain=1.0,
    #            x      y      z     x2      y2      z2     xy    xz    yz
    field_coefficients=(0.0, 0.0, 0.0, -0.045, -0.045, -0.010, 0.0, 0.0, 0.0),
    field_weight_t1=1.0,
    field_weight_t2=0.4,
    field_weight_pd=0.8,
    noise_t1=0.018,
    noise_t2=0.022,
    noise_pd=0.012,
    noise_kind="gaussian",
    acq_resolution_mm=(0.9375, 1.07),  # 256 x 224 on a 240 mm field of view
    phase_axis="x",
    kspace_filter="none",
    slice_fwhm_mm=4.0,
    slice_edge_mm=0.35,
    t1_max_ms=4300.0,
    t2_max_ms=2000.0,
    pd_max=100.0,
    mask_pd=10.0,
)

OPTIMA_MR450W = ScannerProfile(
    model="Optima MR450w",
    manufacturer="GE MEDICAL SYSTEMS",
    field_strength_t=1.5,
    t1_gain=1.04,
    t1_exponent=0.015,
    t2_gain=0.97,
    t2_exponent=0.02,
    pd_gain=1.02,
    #            x      y       z     x2     y2    z2     xy    xz    yz
    field_coefficients=(0.035, -0.02, 0.008, 0.01, 0.01, 0.0, 0.015, 0.0, 0.0),
    field_weight_t1=1.0,
    field_weight_t2=0.4,
    field_weight_pd=0.8,
    noise_t1=0.022,
    noise_t2=0.027,
    noise_pd=0.014,
    noise_kind="gaussian",
    acq_resolution_mm=(0.9375, 1.25),  # 256 x 192 on a 240 mm field of view
    phase_axis="x",
    kspace_filter="fermi",
    fermi_radius=0.85,
    fermi_width=0.06,
    slice_fwhm_mm=4.4,
    slice_edge_mm=0.8,
    t1_max_ms=4000.0,
    t2_max_ms=2000.0,
    pd_max=100.0,
    mask_pd=12.0,
)

#: the thesis pair: (A = source, B = target)
DEFAULT_SCANNERS = (SIGNA, OPTIMA_MR450W)

# --------------------------------------------------------------------------------------------
# A second pair with other difference shapes, to test that a method learns the difference from
# data rather than being tuned to the default pair: opposite-sign and stronger value-dependent
# bias (compressed vs stretched long T1), saddle-shaped and strong centre-bright fields,
# magnitude (Rician-like) noise on A, Hamming-smoothed isotropic A vs sharp ringing B with phase
# encoding along another axis, other clipping levels and slice profiles.
# --------------------------------------------------------------------------------------------
INGENIA = ScannerProfile(
    model="Ingenia",
    manufacturer="Philips Medical Systems",
    field_strength_t=1.5,
    t1_gain=0.975,
    t1_exponent=-0.03,
    t2_gain=1.05,
    t2_exponent=-0.02,
    pd_gain=0.98,
    #            x     y     z      x2   y2   z2    xy     xz   yz
    field_coefficients=(0.0, 0.0, 0.015, 0.0, 0.0, 0.0, 0.045, 0.0, 0.0),
    field_weight_t1=1.0,
    field_weight_t2=0.6,
    field_weight_pd=1.0,
    noise_t1=0.02,
    noise_t2=0.025,
    noise_pd=0.012,
    noise_kind="rician",
    acq_resolution_mm=(1.0, 1.0),
    phase_axis="y",
    kspace_filter="hamming",
    slice_fwhm_mm=4.2,
    slice_edge_mm=0.6,
    t1_max_ms=5000.0,
    t2_max_ms=2500.0,
    pd_max=120.0,
    mask_pd=8.0,
)

MAGNETOM_AERA = ScannerProfile(
    model="MAGNETOM Aera",
    manufacturer="SIEMENS",
    field_strength_t=1.5,
    t1_gain=1.02,
    t1_exponent=0.04,
    t2_gain=0.95,
    t2_exponent=0.03,
    pd_gain=1.03,
    #            x       y    z     x2      y2      z2    xy   xz   yz
    field_coefficients=(-0.01, 0.0, 0.0, -0.035, -0.035, -0.02, 0.0, 0.0, 0.0),
    field_weight_t1=1.0,
    field_weight_t2=0.3,
    field_weight_pd=1.2,
    noise_t1=0.012,
    noise_t2=0.015,
    noise_pd=0.008,
    noise_kind="gaussian",
    acq_resolution_mm=(0.9375, 1.15),
    phase_axis="x",
    kspace_filter="none",
    slice_fwhm_mm=3.8,
    slice_edge_mm=0.3,
    t1_max_ms=4500.0,
    t2_max_ms=2000.0,
    pd_max=110.0,
    mask_pd=10.0,
)

#: another pair with different effect shapes: (A = source, B = target)
ALTERNATIVE_SCANNERS = (INGENIA, MAGNETOM_AERA)

#: named scanner pairs accepted by ``simulate(scanners=...)`` and ``--scanners``
SCANNER_SETS = {"default": DEFAULT_SCANNERS, "alternative": ALTERNATIVE_SCANNERS}


def resolve_scanners(scanners):
    """Return the (A, B) profiles for a set name or a pair of :class:`ScannerProfile`.

    Raises
    ------
    ConfigError
        Unknown set name, not a pair, or both scanners with the same label.
    """
    if isinstance(scanners, str):
        key = scanners.strip().lower()
        if key not in SCANNER_SETS:
            raise ConfigError(f"--scanners {scanners!r}: unknown scanner pair; use one of {', '.join(SCANNER_SETS)}")
        pair = SCANNER_SETS[key]
    else:
        pair = tuple(scanners)
    if len(pair) != 2 or not all(isinstance(p, ScannerProfile) for p in pair):
        raise ConfigError(f"scanners={scanners!r}: give a set name ({', '.join(SCANNER_SETS)}) or two ScannerProfile objects")
    if pair[0].label == pair[1].label:
        raise ConfigError(f"scanners: both profiles have the label {pair[0].label!r}; give them different model names")
    return pair


@dataclasses.dataclass(frozen=True)
class SessionVariation:
    """Geometric variation between the two sessions of a subject (different head position).

    Sized so that corresponding slices of the two sessions match about as well as in the thesis
    (Table 2: mean SSIM 0.80, NRMSE 0.56, hardly changed by in-plane registration, so the
    differences are mostly through-plane): with these defaults, SSIM 0.79 and NRMSE 0.49 (T1,
    6 subjects, data_range = the larger maximum of the pair).

    Attributes
    ----------
    rotation_sd_deg : tuple (pitch, roll, yaw)
        Standard deviation of the head rotation relative to the slice stack, degrees. Slices are
        prescribed along the AC-PC line, so the residual tilt is small.
    inplane_shift_sd_mm : float
        Standard deviation of the head's in-plane position in the field of view, per axis, mm.
    slice_offset_mm : float
        The slice stack is offset through-plane by a uniform amount in +-this (mm): slice k of
        the two sessions of a subject cuts the brain up to twice this apart.
    nominal_coverage_mm : float
        The protocol's stack height (27 x 4 mm); its top is placed 3 mm above the vertex.
    header_offset_sd_mm : float
        Standard deviation of the field-of-view centre in the header (prescription offset), mm.
    header_table_range_mm : tuple
        Range of the stack centre's header z (table position / landmark), mm.
    """

    rotation_sd_deg: tuple = (1.5, 1.0, 1.0)
    inplane_shift_sd_mm: float = 1.5
    slice_offset_mm: float = 1.5
    nominal_coverage_mm: float = 108.0
    header_offset_sd_mm: float = 3.0
    header_table_range_mm: tuple = (-30.0, 30.0)

    def to_dict(self):
        return dataclasses.asdict(self)
