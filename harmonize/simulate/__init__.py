"""The built-in two-scanner quantitative-map dataset, simulated from real anatomy.

Subjects are deformed copies of the MNI ICBM152 2009a template that ships with nilearn; each is
scanned on two simulated 1.5 T scanners (by default the thesis pair SIGNA -> Optima MR450w) that
differ by literature-sized effects (see :mod:`harmonize.simulate.scanners` and
docs/simulator.md). Because the simulator knows the anatomy, it also writes the paired ground
truth: each session rendered, noise-free, with the other scanner's systematic effects.

>>> from harmonize.simulate import simulate, render_subject          # doctest: +SKIP
>>> summary = simulate("data/sim", subjects=12)                        # doctest: +SKIP
>>> one = render_subject(1, slices=6, size=64)                         # doctest: +SKIP
>>> one.maps["SIGNA"]["T1"].shape, one.truth["Optima_MR450w"]["T1"].shape   # doctest: +SKIP
((6, 64, 64), (6, 64, 64))
"""
from harmonize.simulate.scanners import (
    ALTERNATIVE_SCANNERS,
    DEFAULT_SCANNERS,
    SCANNER_SETS,
    ScannerProfile,
    SessionVariation,
)

__all__ = [
    "ALTERNATIVE_SCANNERS",
    "DEFAULT_SCANNERS",
    "SCANNER_SETS",
    "ScannerProfile",
    "SessionVariation",
    "render_subject",
    "simulate",
]


def simulate(out_dir, subjects=12, slices=27, size=256, fmt="nifti", maps=("T1",), seed=0, scanners="default",
             progress=True, overwrite=False, workers=None):
    """Write the simulated dataset; see :func:`harmonize.simulate.generate.simulate`."""
    from harmonize.simulate.generate import simulate as _simulate

    return _simulate(out_dir, subjects=subjects, slices=slices, size=size, fmt=fmt, maps=maps, seed=seed,
                     scanners=scanners, progress=progress, overwrite=overwrite, workers=workers)


def render_subject(subject=1, slices=27, size=256, maps=("T1",), seed=0, scanners="default", **kwargs):
    """Simulate one subject in memory; see :func:`harmonize.simulate.generate.render_subject`."""
    from harmonize.simulate.generate import render_subject as _render

    return _render(subject=subject, slices=slices, size=size, maps=maps, seed=seed, scanners=scanners, **kwargs)
