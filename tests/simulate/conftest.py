"""Fixtures of the simulator tests: one tiny simulated dataset and one tiny in-memory subject.

Tiny means 64 x 64 pixels on the 240 mm field of view (3.75 mm pixels) and 6 slices of 4 mm;
the template is prepared once per test process (a few seconds) and cached.
"""
import pytest

SIZE, SLICES = 64, 6


@pytest.fixture(scope="session")
def tiny_subject():
    """Subject 1, seed 0, on both default scanners with T1, T2 and PD maps (in memory)."""
    from harmonize.simulate import render_subject

    return render_subject(1, slices=SLICES, size=SIZE, maps=("T1", "T2", "PD"), seed=0)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A written dataset: 2 subjects, T1 only, NIfTI, seed 3; returns (folder, summary)."""
    from harmonize.simulate import simulate

    out = tmp_path_factory.mktemp("sim") / "data"
    summary = simulate(out, subjects=2, slices=SLICES, size=SIZE, seed=3, progress=False, workers=1)
    return out, summary
