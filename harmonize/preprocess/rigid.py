"""3-D rigid registration of a subject's two sessions: the other scanner's map on this scanner's slices.

The slice registration of thesis section 2.2 (:mod:`harmonize.preprocess.registration`) moves
corresponding slices in-plane. It cannot undo what separates two sessions of one subject most: a
head rotation of a degree or two and a through-plane offset of up to a slice. Slice k of the two
sessions then shows partly different anatomy, and a voxel-wise comparison mixes tissues: on the
built-in dataset the slice-registered B maps differ from the truth (A's anatomy as B measures it)
by +2 to +5 % in the white-matter mean, the 3-D registered ones by +0.1 to +0.3 % (docs/recipe.md).

Here the whole B volume is registered onto the A volume by a rigid (Euler) transform that
maximises Mattes mutual information (the scanners' values differ), from a start that aligns the
volumes' centres of mass (the sessions' scanner coordinates differ by table position and
prescription). B is then resampled on A's voxel grid (negatives set to 0) with a cubic B-spline
(default, the interpolation that keeps thick slices sharpest) or a Lanczos windowed sinc. The
interpolator sets the tissue means of the counterparts at tissue borders, where B's thick slices
are interpolated across them: against the truth, the built-in pair's test counterparts are
+0.01 % off in WM with the B-spline and -0.31 % with Lanczos, the second simulated scanner pair's
+0.31 and -0.01 % (docs/recipe.md, where Experiment 16 trains on Lanczos counterparts). A slice
of the result is B's **counterpart** of that A slice. Where B's slice stack does not cover the head on an A slice (the top and bottom slices,
when the sessions' stacks are offset), the counterpart is all NaN: it has none.

Registration is deterministic (every voxel sampled, ITK on one thread per registration) and
cheap: a multi-resolution pyramid whose finest level is shrunk to about 128 pixels in-plane takes
about 1.5 s of CPU for a 256 x 256 x 27 volume, with the same accuracy as the full resolution
(tissue means of the counterparts within 0.05 points of the full-resolution ones in WM and 0.15 in GM,
three subjects of the built-in data).
"""
from __future__ import annotations

import warnings

import numpy as np

from harmonize.preprocess.registration import HISTOGRAM_BINS, pyramid, run_threads

#: interpolators of the counterparts (SimpleITK names)
INTERPOLATORS = {"bspline": "sitkBSpline", "lanczos": "sitkLanczosWindowedSinc"}
DEFAULT_INTERPOLATOR = "bspline"


def interpolator_suffix(interpolator):
    """'' for the default interpolator, else '-<name>': how cached datasets and run folders name it."""
    return "" if interpolator in (None, DEFAULT_INTERPOLATOR) else f"-{interpolator}"

#: iterations per pyramid level of the optimiser
MAX_ITERATIONS = 200
#: a counterpart slice must cover at least this fraction of the A slice's foreground
MIN_COVERAGE = 0.999
#: fewer slices than this cannot be registered in 3-D (the pyramid's smoothing needs them)
MIN_SLICES = 4


def rigid_transform(fixed, moving):
    """The rigid transform mapping points of ``fixed`` to points of ``moving`` (3-D, Mattes MI).

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        3-D float images with their geometry (origin, spacing, direction), physical units.

    Returns
    -------
    SimpleITK.Transform
        Maps a physical point of ``fixed`` to the corresponding point of ``moving`` (the transform
        :func:`SimpleITK.Resample` wants to put ``moving`` on ``fixed``'s grid).

    Raises
    ------
    RuntimeError
        The optimiser failed (ITK's message).
    """
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=MAX_ITERATIONS,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    size = fixed.GetSize()
    factors = pyramid((size[1], size[0]))
    reg.SetShrinkFactorsPerLevel(factors)
    # smoothing in mm: half a shrunk pixel of the in-plane grid
    pixel = min(fixed.GetSpacing()[:2])
    reg.SetSmoothingSigmasPerLevel([f * pixel / 2.0 for f in factors])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


def counterpart(a, b, interpolator=DEFAULT_INTERPOLATOR):
    """B's map resampled on A's grid after 3-D rigid registration, and the transform.

    Parameters
    ----------
    a, b : harmonize.io.volume.MapVolume
        The two sessions of one subject (any map types), with their geometry.
    interpolator : {'bspline', 'lanczos'}
        How B is resampled (see the module docstring).

    Returns
    -------
    volume : np.ndarray
        (n_slices_a, H_a, W_a) float32 in B's units; slices that B's stack does not cover over
        A's foreground are NaN.
    transform : SimpleITK.Transform
        A's physical points -> B's.
    """
    import SimpleITK as sitk

    from harmonize.preprocess.masks import foreground_mask

    if interpolator not in INTERPOLATORS:
        raise ValueError(f"interpolator {interpolator!r}: expected one of {', '.join(INTERPOLATORS)}")
    for volume in (a, b):
        if volume.array.shape[0] < MIN_SLICES:
            raise RuntimeError(f"{volume.name} has {volume.array.shape[0]} slice(s); 3-D registration needs at least "
                               f"{MIN_SLICES}")
    fixed = a.to_sitk()
    moving = b.to_sitk()
    transform = rigid_transform(fixed, moving)
    out = sitk.Resample(moving, fixed, transform, getattr(sitk, INTERPOLATORS[interpolator]), 0.0, sitk.sitkFloat32)
    volume = np.maximum(sitk.GetArrayFromImage(out), 0.0).astype(np.float32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    covered = sitk.GetArrayFromImage(sitk.Resample(ones, fixed, transform, sitk.sitkLinear, 0.0)) > 1.0 - 1e-6
    head = foreground_mask(np.asarray(a.array, np.float32)).astype(bool)
    for k in range(len(volume)):
        inside = head[k].sum()
        if inside and (covered[k] & head[k]).sum() < MIN_COVERAGE * inside:
            volume[k] = np.nan
    return volume, transform


def rotation_degrees(transform):
    """The rotation angle (degrees) of a rigid transform from :func:`rigid_transform`: the head motion found."""
    import SimpleITK as sitk

    if transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform).GetNthTransform(0)
    matrix = np.asarray(transform.GetMatrix(), float).reshape(3, 3)
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))


def counterparts(volume_pairs, workers=None, progress=False, desc="registering volumes",
                 interpolator=DEFAULT_INTERPOLATOR):
    """:func:`counterpart` of many subjects, ``workers`` at a time (threads; ITK releases the GIL).

    Parameters
    ----------
    volume_pairs : list of (MapVolume, MapVolume)
        (A, B) sessions per subject.
    interpolator : {'bspline', 'lanczos'}
        As in :func:`counterpart`.

    Returns
    -------
    list of (np.ndarray or None, float or None)
        Per subject: the counterpart volume and the rotation found (degrees); ``(None, None)``
        with a warning naming the subject when the registration failed.
    """
    def one(k):
        a, b = volume_pairs[k]
        try:
            volume, transform = counterpart(a, b, interpolator)
        except RuntimeError as err:
            warnings.warn(f"{b.name}: 3-D registration onto {a.name} failed "
                          f"({str(err).strip().splitlines()[-1]}); this subject has no counterparts", stacklevel=3)
            return None, None
        return volume, rotation_degrees(transform)

    return run_threads(one, len(volume_pairs), workers, progress, desc, unit="subject")
