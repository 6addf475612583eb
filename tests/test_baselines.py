"""Classical baselines: exact recoveries on constructed data, JSON round trips, train-only fitting."""
import json

import numpy as np
import pytest

from harmonize import baselines
from harmonize.baselines import BASELINES, Baseline, get_baseline
from harmonize.errors import ConfigError, InputError


@pytest.fixture
def target_stack(make_slice, rng):
    """Target-scanner slices: tissue-like T1 maps (ms) with noise, varied tissue values."""
    return np.stack([make_slice(32, t1_ms=(4000.0 + 50 * k, 1050.0 + 10 * k, 620.0 + 5 * k), noise=30.0,
                                shift=(k % 3 - 1, 0)) for k in range(6)])


def test_names_and_unknown_name():
    assert BASELINES == ("none", "linear", "histmatch", "nyul")
    for name in BASELINES:
        assert get_baseline(name).name == name
    with pytest.raises(ConfigError, match="unknown baseline"):
        get_baseline("combat")


def test_none_is_identity(target_stack):
    out = get_baseline("none").apply(target_stack)
    np.testing.assert_array_equal(out, target_stack)


def test_linear_recovers_scale_and_offset(target_stack):
    src = np.where(target_stack > 0, 1.05 * target_stack + 20.0, 0.0)
    train, test = slice(0, 4), slice(4, 6)
    base = get_baseline("linear").fit(src[train], None, target_stack[train], None)
    assert base.params["scale"] == pytest.approx(1 / 1.05)
    assert base.params["offset"] == pytest.approx(-20 / 1.05)
    # held-out slices are mapped back onto the target values; background stays 0
    out = base.apply(src[test])
    np.testing.assert_allclose(out, target_stack[test], rtol=1e-5, atol=1e-2)
    assert np.all(out[target_stack[test] == 0] == 0)


def test_outside_mask_untouched_and_no_negatives(target_stack):
    src = target_stack * 1.1
    base = get_baseline("linear").fit(src, None, target_stack - 0.0, None)
    mask = np.zeros(src.shape, bool)
    mask[:, :16] = True
    out = base.apply(src, masks=mask)
    np.testing.assert_array_equal(out[~mask], src[~mask].astype(np.float32))
    assert not np.allclose(out[mask & (src > 0)], src[mask & (src > 0)])
    # a large negative offset would give negative T1: clipped at 0
    base.params.update(scale=1.0, offset=-5000.0)
    assert base.apply(src).min() == 0.0


def test_histmatch_equalises_foreground_quantiles(target_stack):
    # a non-linear scanner difference: the linear baseline cannot undo it, quantile mapping can
    src = np.where(target_stack > 0, 30.0 * np.sqrt(target_stack) + 100.0, 0.0)
    base = get_baseline("histmatch").fit(src, None, target_stack, None)
    out = base.apply(src)
    q = np.linspace(0.02, 0.98, 25)
    fg = target_stack > 0
    np.testing.assert_allclose(np.quantile(out[fg], q), np.quantile(target_stack[fg], q), rtol=5e-3)
    lin = get_baseline("linear").fit(src, None, target_stack, None).apply(src)
    assert np.abs(out[fg] - target_stack[fg]).mean() < 0.5 * np.abs(lin[fg] - target_stack[fg]).mean()
    assert np.all(out[~fg] == 0)


def test_nyul_standard_scale_and_landmark_mapping(target_stack, rng):
    base = get_baseline("nyul")
    src = np.where(target_stack > 0, 0.9 * target_stack + 50.0, 0.0)
    base.fit(src, None, target_stack, None)
    pct = baselines.NYUL_PERCENTILES
    expected = np.mean([np.percentile(t[t > 0], pct) for t in target_stack], axis=0)
    np.testing.assert_allclose(base.params["standard_landmarks"], expected)
    # a new source image: its own landmarks land on the standard landmarks
    new = np.where(target_stack[:1] > 0, 1.2 * target_stack[:1] - 30.0 + rng.normal(0, 20, (1, 32, 32)), 0.0)
    new = np.maximum(new, 0)
    out = base.apply(new)
    own = np.percentile(new[new > 0], pct)
    mapped = np.percentile(out[new > 0], pct)
    np.testing.assert_allclose(mapped, expected, rtol=2e-3)
    # piecewise linear between landmarks, linear extrapolation beyond the 99th percentile
    beyond = own[-1] + 100.0
    probe = new.copy()
    probe[0, 16, 16] = beyond
    got = base.apply(probe)[0, 16, 16]
    own_probe = np.percentile(probe[probe > 0], pct)  # the probe changes the image's landmarks slightly
    slope = (expected[-1] - expected[-2]) / (own_probe[-1] - own_probe[-2])
    assert got == pytest.approx(expected[-1] + (beyond - own_probe[-1]) * slope, rel=1e-5)


def test_nyul_groups_use_one_set_of_landmarks_per_subject(target_stack):
    src = target_stack * 1.1
    base = get_baseline("nyul").fit(src, None, target_stack, None, source_groups=["s"] * 6, target_groups=["t"] * 6)
    # with one group the standard scale is the landmarks of the pooled target voxels
    fg = target_stack > 0
    np.testing.assert_allclose(base.params["standard_landmarks"], np.percentile(target_stack[fg], baselines.NYUL_PERCENTILES))
    per_subject = base.apply(src, groups=["s"] * 6)
    np.testing.assert_allclose(per_subject[fg], target_stack[fg], rtol=1e-4)


def test_save_load_round_trip(tmp_path, target_stack):
    src = target_stack * 1.03 + np.where(target_stack > 0, 15.0, 0.0)
    for name in BASELINES:
        base = get_baseline(name).fit(src, None, target_stack, None)
        base.info["source_label"] = "SCANNER_A"
        path = base.save(tmp_path / f"{name}.json")
        data = json.loads(path.read_text())
        assert data["name"] == name
        loaded = Baseline.load(path)
        assert type(loaded) is type(base) and loaded.info["source_label"] == "SCANNER_A"
        np.testing.assert_array_equal(loaded.apply(src), base.apply(src))
        np.testing.assert_array_equal(Baseline.from_dict(base.to_dict()).apply(src), base.apply(src))


def test_errors_for_bad_use(tmp_path, target_stack):
    with pytest.raises(ConfigError, match="not fitted"):
        get_baseline("linear").apply(target_stack)
    with pytest.raises(InputError, match="no foreground"):
        get_baseline("linear").fit(np.zeros((2, 16, 16)), None, target_stack, None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        Baseline.load(bad)
    with pytest.raises(InputError, match="not found"):
        Baseline.load(tmp_path / "missing.json")


def test_fit_from_dataset_uses_train_split_only(tmp_path, target_stack):
    from harmonize.io.dataset import DomainData, SplitData, find_pairs, write_dataset
    from harmonize.preprocess.intensity import Normalization

    def domain(images, subjects):
        n = len(images)
        return DomainData(images=images, masks=images > 0, subjects=subjects, slices=np.arange(n) % 3,
                          spacing=np.tile([0.9, 0.9, 4.0], (n, 1)))

    b_imgs = target_stack
    a_imgs = np.where(b_imgs > 0, 1.05 * b_imgs + 20.0, 0.0)
    subj = np.array(["s0", "s0", "s0", "s1", "s1", "s1"])
    train = SplitData(domain(a_imgs, subj), domain(b_imgs, subj), find_pairs(subj, np.arange(6) % 3, subj, np.arange(6) % 3))
    # the test subject's scanners differ in another way: any leak into the fit would change it
    t_subj = np.array(["s9"] * 3)
    test = SplitData(domain(a_imgs[:3] * 3.0, t_subj), domain(b_imgs[:3] * 0.5, t_subj), np.zeros((0, 2)))
    path = write_dataset(tmp_path / "ds.h5", {"train": train, "test": test},
                         {"source": "SCANNER_A", "target": "SCANNER_B", "map_type_a": "T1", "map_type_b": "T1",
                          "units_a": "ms", "units_b": "ms", "image_size": [32, 32],
                          "normalization": Normalization.fit(a_imgs, b_imgs)})
    base = baselines.fit_baseline_from_dataset("linear", path)
    assert base.params["scale"] == pytest.approx(1 / 1.05)
    assert base.params["offset"] == pytest.approx(-20 / 1.05)
    assert base.info["train_subjects"] == ["s0", "s1"]
    assert base.info["source_label"] == "SCANNER_A" and base.info["target_units"] == "ms"
    back = baselines.fit_baseline_from_dataset("linear", path, direction="BtoA")
    assert back.params["scale"] == pytest.approx(1.05)
    assert back.info["source_label"] == "SCANNER_B"
    with pytest.raises(ConfigError, match="direction"):
        baselines.fit_baseline_from_dataset("linear", path, direction="A2B")
