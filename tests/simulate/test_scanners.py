"""Scanner profiles: labels, validation, and that the built-in effect sizes are literature-sized."""
import dataclasses

import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.simulate.anatomy import TISSUE_VALUES
from harmonize.simulate.scanners import (
    ALTERNATIVE_SCANNERS,
    DEFAULT_SCANNERS,
    FIELD_TERMS,
    ScannerProfile,
    resolve_scanners,
    scanner_label,
)


def test_default_pair_is_the_thesis_pair():
    a, b = DEFAULT_SCANNERS
    assert (a.model, b.model) == ("SIGNA", "Optima MR450w")
    assert (a.label, b.label) == ("SIGNA", "Optima_MR450w")
    assert a.manufacturer == b.manufacturer == "GE MEDICAL SYSTEMS"
    assert a.field_strength_t == b.field_strength_t == 1.5


def test_scanner_label_rule():
    assert scanner_label("Optima MR450w") == "Optima_MR450w"
    assert scanner_label("MAGNETOM  Aera / 1.5T") == "MAGNETOM_Aera_1.5T"


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SCANNERS[0].t1_gain = 2.0


def _ratio(pair, tissue):
    a, b = pair
    t1 = TISSUE_VALUES[tissue].t1_ms
    return float(b.bias_factor("T1", t1) / a.bias_factor("T1", t1))


def test_default_tissue_t1_difference_is_literature_sized():
    """Systematic B/A T1 ratio in GM and WM of 3-7 %, the inter-scanner range of the literature."""
    for tissue in ("GM", "WM"):
        assert 1.03 <= _ratio(DEFAULT_SCANNERS, tissue) <= 1.07


def test_alternative_bias_is_strongly_value_dependent():
    """Alternative pair: WM nearly equal, CSF far apart (a non-linear mapping to learn)."""
    assert abs(_ratio(ALTERNATIVE_SCANNERS, "WM") - 1) < 0.03
    assert 1.01 < _ratio(ALTERNATIVE_SCANNERS, "GM") < 1.07
    assert _ratio(ALTERNATIVE_SCANNERS, "CSF") > 1.10


def test_pairs_differ_in_shape_not_only_size():
    """The alternative pair is not a rescaled default pair: other bias sign, field, noise, filter."""
    (a1, b1), (a2, b2) = DEFAULT_SCANNERS, ALTERNATIVE_SCANNERS
    assert abs(b2.t1_exponent - a2.t1_exponent) > 2 * abs(b1.t1_exponent - a1.t1_exponent)
    assert {a2.kspace_filter, b2.kspace_filter} != {a1.kspace_filter, b1.kspace_filter}
    assert a2.noise_kind == "rician" and a1.noise_kind == b1.noise_kind == "gaussian"
    assert a2.phase_axis != a1.phase_axis
    assert not np.allclose(np.abs(a2.field_coefficients), np.abs(a1.field_coefficients))


def test_resolve_scanners():
    assert resolve_scanners("default") == DEFAULT_SCANNERS
    assert resolve_scanners("Alternative") == ALTERNATIVE_SCANNERS
    assert resolve_scanners(list(ALTERNATIVE_SCANNERS)) == ALTERNATIVE_SCANNERS
    with pytest.raises(ConfigError, match="unknown scanner pair"):
        resolve_scanners("siemens")
    with pytest.raises(ConfigError, match="both profiles have the label"):
        resolve_scanners((DEFAULT_SCANNERS[0], DEFAULT_SCANNERS[0]))


@pytest.mark.parametrize("change, match", [
    ({"kspace_filter": "gauss"}, "kspace_filter"),
    ({"noise_kind": "poisson"}, "noise_kind"),
    ({"field_coefficients": (0.0, 0.1)}, "field_coefficients"),
    ({"acq_resolution_mm": (1.0, 0.0)}, "acq_resolution_mm"),
    ({"t1_gain": 0.0}, "t1_gain"),
    ({"noise_t1": -0.01}, "noise_t1"),
    ({"phase_axis": "z"}, "phase_axis"),
])
def test_profile_validation(change, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(DEFAULT_SCANNERS[0], **change)


def test_to_dict_names_field_terms():
    d = DEFAULT_SCANNERS[1].to_dict()
    assert d["label"] == "Optima_MR450w"
    assert list(d["field_coefficients"]) == list(FIELD_TERMS)
    assert isinstance(ScannerProfile(model="X", manufacturer="Y").to_dict()["acq_resolution_mm"], tuple)
