"""Simulated subjects in memory: determinism, geometry, paired truth, effect sizes, tissue labels."""
import dataclasses

import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.io.volume import check_map_values
from harmonize.simulate import render_subject
from harmonize.simulate.scanners import DEFAULT_SCANNERS, FIELD_TERMS

from .conftest import SIZE, SLICES

A, B = (p.label for p in DEFAULT_SCANNERS)


def test_shapes_units_and_labels(tiny_subject):
    r = tiny_subject
    assert r.subject_id == "sub01" and r.labels_ab == (A, B)
    for label in (A, B):
        assert r.tissue[label].dtype == np.uint8
        assert set(np.unique(r.tissue[label])) == {0, 1, 2, 3, 4}
        for m in ("T1", "T2", "PD"):
            for arr in (r.maps[label][m], r.truth[label][m]):
                assert arr.shape == (SLICES, SIZE, SIZE) and arr.dtype == np.float32
                check_map_values(arr, m, f"{label} {m}")  # plausible values in ms / %
                assert arr.min() == 0.0  # background
    # tissue order of 1.5 T relaxometry: WM < GM < CSF in T1 and T2, PD likewise
    lab, maps = r.tissue[A], r.maps[A]
    for m in ("T1", "T2", "PD"):
        wm, gm, csf = (np.median(maps[m][lab == code]) for code in (3, 2, 1))
        assert wm < gm < csf, m
    wm_t1 = np.median(maps["T1"][lab == 3])
    assert 550 < wm_t1 < 800


def test_sessions_differ_in_position(tiny_subject):
    r = tiny_subject
    ga, gb = r.geometry[A], r.geometry[B]
    assert ga["spacing"] == gb["spacing"] == (240 / SIZE, 240 / SIZE, 4.0)
    assert ga["direction"] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert ga["origin"] != gb["origin"]
    # the head sits elsewhere in the two sessions: labels of the two grids disagree somewhere
    assert (r.tissue[A] != r.tissue[B]).mean() > 0.02


def test_truth_has_the_grid_of_the_other_session_and_the_effects_of_its_scanner(tiny_subject):
    r = tiny_subject
    a, truth_b = r.maps[A]["T1"], r.truth[B]["T1"]
    head = (r.tissue[A] > 0) & (a > 0) & (truth_b > 0)
    # same anatomy and pose: the noise-free B rendering correlates with A's session far better than
    # B's own session does
    corr_truth = np.corrcoef(a[head], truth_b[head])[0, 1]
    corr_session = np.corrcoef(a[head], r.maps[B]["T1"][head])[0, 1]
    assert corr_truth > 0.97 and corr_truth > corr_session + 0.05
    # B's systematic effects: B reads WM T1 longer by its bias ratio (fields average out within ~1.5 %)
    wm = (r.tissue[A] == 3) & head
    t1_wm = float(np.median(a[wm]))
    expected = float(DEFAULT_SCANNERS[1].bias_factor("T1", t1_wm) / DEFAULT_SCANNERS[0].bias_factor("T1", t1_wm))
    assert np.median(truth_b[wm] / a[wm]) == pytest.approx(expected, abs=0.015)


def test_truth_ratio_is_the_bias_ratio_without_fields():
    no_field = tuple(dataclasses.replace(p, field_coefficients=(0.0,) * len(FIELD_TERMS)) for p in DEFAULT_SCANNERS)
    r = render_subject(2, slices=4, size=SIZE, scanners=no_field, seed=1)
    wm = (r.tissue[A] == 3) & (r.maps[A]["T1"] > 0)
    a, tb = r.maps[A]["T1"][wm], r.truth[B]["T1"][wm]
    t1 = float(np.median(a))
    expected = float(no_field[1].bias_factor("T1", t1) / no_field[0].bias_factor("T1", t1))
    assert np.median(tb / a) == pytest.approx(expected, abs=0.005)


def test_effect_size_within_literature_range(tiny_subject):
    """Mean |A - truth on B| / truth on B in the brain: 3-7 % (inter-scanner T1 differences)."""
    assert 0.03 <= tiny_subject.mean_abs_rel_diff("T1") <= 0.07


def test_alternative_pair_renders():
    r = render_subject(1, slices=3, size=SIZE, scanners="alternative")
    assert r.labels_ab == ("Ingenia", "MAGNETOM_Aera")
    assert 0.02 <= r.mean_abs_rel_diff("T1") <= 0.10


def test_deterministic_for_a_seed_and_independent_of_other_maps(tiny_subject):
    again = render_subject(1, slices=SLICES, size=SIZE, maps=("T1",), seed=0)
    for label in (A, B):
        np.testing.assert_array_equal(again.maps[label]["T1"], tiny_subject.maps[label]["T1"])
        np.testing.assert_array_equal(again.truth[label]["T1"], tiny_subject.truth[label]["T1"])
        np.testing.assert_array_equal(again.tissue[label], tiny_subject.tissue[label])
    other = render_subject(1, slices=SLICES, size=SIZE, maps=("T1",), seed=1)
    assert not np.array_equal(other.maps[A]["T1"], tiny_subject.maps[A]["T1"])


def test_subjects_differ(tiny_subject):
    r2 = render_subject(2, slices=SLICES, size=SIZE, seed=0)
    assert r2.subject_id == "sub02"
    assert r2.info["subject"]["tissues"]["WM"] != tiny_subject.info["subject"]["tissues"]["WM"]
    assert (r2.tissue[A] != tiny_subject.tissue[A]).mean() > 0.02


@pytest.mark.parametrize("kwargs, match", [
    ({"maps": "T1,T3"}, "unknown map type"),
    ({"size": 8}, "--size"),
    ({"slices": 0}, "--slices"),
    ({"scanners": "nope"}, "unknown scanner pair"),
])
def test_bad_arguments(kwargs, match):
    args = {"slices": 2, "size": 32} | kwargs
    with pytest.raises(ConfigError, match=match):
        render_subject(1, **args)
