"""harmonize evaluate on a tiny run whose generators are known linear maps.

The tiny dataset (tests/test_assess.py) has scanner B reading T1 8 % longer than A, and the truth of
an A slice is its own anatomy rendered on B. G_AtoB multiplies T1 by 1.08 (a 1x1 convolution in the
network range), so its fake B equals the truth: every error of the CycleGAN row must be ~0, while
'no harmonisation' keeps the -7.4 % bias (A = truth / 1.08).
"""
import json

import numpy as np
import pytest

from harmonize.errors import InputError, ModelError
from tests.test_assess import GAIN_B, make_tiny_dataset


def linear_generator(gain, size=32):
    """A keras 'generator' computing gain x T1 in physical units (shared normalisation, 0 -> -1)."""
    import keras

    inp = keras.Input((size, size, 1))
    conv = keras.layers.Conv2D(1, 1, name="linear")
    out = conv(inp)
    # x_n = 2x/s - 1  ->  y_n = 2 g x/s - 1 = g x_n + (g - 1)
    conv.set_weights([np.full((1, 1, 1, 1), gain, np.float32), np.array([gain - 1.0], np.float32)])
    return keras.Model(inp, out)


def write_run(run_dir, data_path, steps=(10, 20), gain=GAIN_B, map_type="T1", selected=20):
    """A run folder as 'harmonize train' writes it (config.yaml, CSV logs, generators, selected.json)."""
    from harmonize.io.dataset import PreparedDataset
    from harmonize.models.saving import save_generator

    ds = PreparedDataset(data_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"name: '3'\ndata:\n  dataset: null\nrun:\n  dataset: {data_path}\n")
    base = {"source_label": ds.source, "target_label": ds.target, "image_size": [32, 32],
            "normalization": ds.normalization.to_dict(), "experiment": "3", "pixel_spacing_mm": [1.0, 1.0]}
    rows = []
    for k, step in enumerate(steps):
        names = []
        for direction, g, (i, o) in (("AtoB", gain, ("A", "B")), ("BtoA", 1.0 / gain, ("B", "A"))):
            meta = dict(base, direction=direction, input_domain=i, output_domain=o, input_map_type=map_type,
                        output_map_type=map_type, input_units="ms", output_units="ms", step=step, epoch=k + 1)
            path = save_generator(linear_generator(g), run_dir / f"g_{direction}_{step:06d}.h5", meta)
            names.append(path.name)
        rows.append(f"{step},{k + 1},every 1 epochs,{names[0]},{names[1]}")
    (run_dir / "checkpoints.csv").write_text("step,epoch,reason,g_AtoB,g_BtoA\n" + "\n".join(rows) + "\n")
    keys = ["d_a_real", "d_a_fake", "d_b_real", "d_b_fake", "g_a2b_total", "g_b2a_total", "g_a2b_adv", "g_b2a_adv",
            "g_a2b_cycle", "g_b2a_cycle"]
    lines = ["step,epoch," + ",".join(keys)]
    for step in range(1, steps[-1] + 1):
        epoch = 1 + (step - 1) // 10
        lines.append(f"{step},{epoch}," + ",".join(f"{0.001 * step + 0.1 * j:.4f}" for j in range(len(keys))))
    (run_dir / "losses.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "losses_epoch.csv").write_text(
        "epoch,step," + ",".join(keys) + "\n"
        + "\n".join(f"{e},{10 * e}," + ",".join(f"{0.5 + e + 0.1 * j:.4f}" for j in range(len(keys)))
                    for e in (1, 2)) + "\n")
    if selected is not None:
        (run_dir / "selected.json").write_text(json.dumps(
            {"step": selected, "epoch": steps.index(selected) + 1, "g_AtoB": f"g_AtoB_{selected:06d}.h5",
             "g_BtoA": f"g_BtoA_{selected:06d}.h5", "by": "loss-rules", "rule": "all", "reason": "test"}))
    return run_dir


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("HARMONIZE_CACHE", str(folder))
    return folder


@pytest.fixture
def tiny(tmp_path):
    data = make_tiny_dataset(tmp_path / "tiny.h5")
    run = write_run(tmp_path / "run", data)
    return data, run


# ----------------------------------------------------------------------------- pieces

def test_resolve_checkpoint(tiny, tmp_path):
    from harmonize.evaluate import resolve_checkpoint

    _, run = tiny
    ck = resolve_checkpoint(run)
    assert (ck["step"], ck["epoch"], ck["source"]) == (20, 2, "selected.json")
    assert ck["g_AtoB"] == run / "g_AtoB_000020.h5" and ck["rule"] == "all"
    ck = resolve_checkpoint(run, "10")
    assert (ck["step"], ck["epoch"], ck["g_BtoA"].name) == (10, 1, "g_BtoA_000010.h5")
    ck = resolve_checkpoint(run, run / "g_BtoA_000010.h5")          # a file: its partner is found
    assert ck["g_AtoB"].name == "g_AtoB_000010.h5" and ck["step"] == 10
    with pytest.raises(InputError, match="saved steps: 10, 20"):
        resolve_checkpoint(run, "15")
    (run / "selected.json").unlink()
    with pytest.warns(UserWarning, match="no selected.json"):
        ck = resolve_checkpoint(run)
    assert ck["step"] == 20 and "last checkpoint" in ck["source"]
    with pytest.raises(InputError, match="no saved generators"):
        resolve_checkpoint(tmp_path)


def test_losses_table_reads_step_and_epoch_mean(tiny):
    from harmonize.evaluate import losses_table

    _, run = tiny
    t = losses_table(run, 20, 2).set_index("log key")
    assert t.loc["d_a_real", "at checkpoint step"] == pytest.approx(0.020)
    assert t.loc["g_b2a_cycle", "at checkpoint step"] == pytest.approx(0.020 + 0.9)
    assert t.loc["d_a_real", "epoch mean"] == pytest.approx(2.5)
    assert "d_scanner_a" not in t.index          # not logged by this run: no row
    assert t.loc["d_b_fake", "quantity"] == "D_B fake (fake B)"


def test_classifier_table_hand_computed():
    from harmonize.evaluate import classifier_table

    p = {"real A": np.array([0.1, 0.2, 0.7, 0.3]),        # 3 of 4 called A
         "real B": np.array([0.9, 0.8, 0.6, 0.4, 0.95]),  # 4 of 5 called B
         "fake B": np.array([0.9, 0.1, 0.2, 0.7]),        # 2 of 4 called B
         "fake A": np.array([0.9, 0.2])}                  # 1 of 2 called A
    t = classifier_table(p).set_index("images")
    assert t.loc["real A (test)", "accuracy"] == pytest.approx(0.75)
    assert t.loc["real A + B (test)", "accuracy"] == pytest.approx(7 / 9)
    assert t.loc["fake B = G_AtoB(A)", "called B"] == pytest.approx(0.5)
    assert t.loc["fake B = G_AtoB(A)", "accuracy"] == pytest.approx(0.5)
    assert t.loc["fake B = G_AtoB(A)", "relative to real"] == pytest.approx(0.5 / 0.8)   # fooling rate
    assert t.loc["fake A = G_BtoA(B)", "relative to real"] == pytest.approx(0.5 / 0.75)
    # fake B (0.9, 0.1, 0.2, 0.7) above real A (0.1, 0.2, 0.7, 0.3): 4 + 0.5 + 1.5 + 3.5 = 9.5 of 16 pairs
    assert t.loc["fake B = G_AtoB(A)", "ROC AUC vs other real scanner"] == pytest.approx(9.5 / 16)


def test_intensity_tissue_labels_orders_csf_gm_wm():
    from harmonize.evaluate import intensity_tissue_labels
    from tests.test_assess import render, tissue_labels

    lab = tissue_labels(48)
    truth = render(lab, 1.0)
    brain = np.isin(lab, [1, 2, 3])
    seg = intensity_tissue_labels(truth, brain)
    np.testing.assert_array_equal(seg[brain], lab[brain])
    assert not seg[~brain].any()
    noisy = truth + np.random.default_rng(0).normal(0, 40.0, truth.shape)      # SNR ~ 15 in WM
    seg = intensity_tissue_labels(noisy, brain)
    assert np.mean(seg[brain] == lab[brain]) > 0.98


# ----------------------------------------------------------------------------- end to end

def test_evaluate_end_to_end(tiny, tmp_path, cache):
    from harmonize.apply import load_generator
    from harmonize.assess import find_classifier
    from harmonize.evaluate import evaluate_run
    from harmonize.io.dataset import PreparedDataset

    data, run = tiny
    res = evaluate_run(run, baselines=("none", "linear", "histmatch"))
    out = run / "evaluation"
    info = dict(zip(res["info"]["key"], res["info"]["value"]))
    assert info["dataset"] == str(data) and "config.yaml" in info["dataset_from"]
    assert info["step"] == "20" and info["checkpoint_source"] == "selected.json"

    # Table 5/6: fake B is an exact rescaling of A: correlation 1 and NRMSE 0.08 against A
    pw = res["pairwise"].set_index("pair")
    assert pw.loc["A vs fakeB", "correlation"] == pytest.approx(1.0, abs=1e-6)
    assert pw.loc["A vs fakeB", "nrmse"] == pytest.approx(0.08, abs=1e-4)
    assert pw.loc["A vs fakeA", "correlation"] < pw.loc["A vs fakeB", "correlation"]
    assert list(res["table5"]["pair"]) == ["A vs B", "A vs fakeA", "A vs fakeB", "B vs fakeA", "B vs fakeB",
                                           "fakeA vs fakeB"]
    assert (res["table5"]["mutual_information"] > 0).all()

    # the truth table: the CycleGAN (x1.08) is exact, no harmonisation is 7.4 % low, linear in between
    s = res["truth_summary"].set_index("method")
    cyc = [m for m in s.index if m.startswith("CycleGAN")][0]
    assert s.loc[cyc, "mae"] < 0.5 and abs(s.loc[cyc, "bias_pct"]) < 0.01
    assert s.loc["none (A unharmonised)", "bias_pct"] == pytest.approx(100 * (1 / GAIN_B - 1), abs=0.01)
    assert s.loc["none (A unharmonised)", "bias_pct_WM"] == pytest.approx(100 * (1 / GAIN_B - 1), abs=0.01)
    assert s.loc["none (A unharmonised)", "mae"] > 50
    assert s.loc["linear", "mae"] < s.loc["none (A unharmonised)", "mae"]
    assert set(res["truth"]["subject"]) == {"all", "sub04"}
    assert "truth_reference" not in res   # no 3-D registered counterparts in this dataset

    # fake B is exactly what `apply` gives for the same slices
    ds = PreparedDataset(data)
    test = ds.split("test")
    applied = load_generator(run / "g_AtoB_000020.h5").harmonize(test.a.images, mask=test.a.masks.astype(bool))
    np.testing.assert_allclose(applied, GAIN_B * test.a.images, rtol=1e-4, atol=0.5)

    # Table 7 with a classifier trained here (no assess ran), saved and recorded for the next time
    t7 = res["table7"].set_index("images")
    assert t7.loc["fake B = G_AtoB(A)", "n"] == 6 and 0 <= t7.loc["fake B = G_AtoB(A)", "called B"] <= 1
    assert "trained now" in info["classifier_from"]
    assert find_classifier(ds) == (out / "classifier.h5").resolve()
    for name in ("report.html", "table4_losses.csv", "table5_correlation.csv", "table6_ssim_nrmse.csv",
                 "table7_classifier.csv", "truth_errors.csv", "truth_summary.csv", "histograms.csv",
                 "figures/fig16_histograms.png", "figures/grid_AtoB.png", "figures/grid_BtoA.png",
                 "figures/truth_error_maps.png", "figures/truth_bias.png"):
        assert (out / name).exists(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "How to read this report" in html

    # a second evaluation (CLI, other checkpoint and folder) reuses that classifier
    from harmonize.cli import main

    code = main(["evaluate", "--run", str(run), "--checkpoint", "10", "--out", str(tmp_path / "ev10"),
                 "--baselines", "none", "--quiet"])
    assert code == 0
    import pandas as pd

    info10 = pd.read_csv(tmp_path / "ev10" / "evaluation_info.csv", dtype=str).set_index("key")["value"]
    assert info10["step"] == "10" and info10["classifier"] == str(out / "classifier.h5")
    assert not (tmp_path / "ev10" / "classifier.h5").exists()


def test_evaluate_reference_of_bs_own_registered_session(tmp_path, cache, capsys):
    """With counterparts, the truth errors of B's own 3-D registered session sit next to the CycleGAN's."""
    from harmonize.cli import main
    from harmonize.evaluate import COUNTERPART_LABEL, evaluate_run

    data = make_tiny_dataset(tmp_path / "cp.h5", counterpart_gain=1.01)
    run = write_run(tmp_path / "run", data)
    res = evaluate_run(run, baselines=("none",))
    ref = res["truth_reference"].set_index("method")
    cyc = [m for m in ref.index if m.startswith("CycleGAN")][0]
    assert list(ref.index) == ["none (A unharmonised)", cyc, COUNTERPART_LABEL]
    assert (ref["slices"] == "5 of 6").all()   # the test subject's first slice has no counterpart
    assert ref.loc[COUNTERPART_LABEL, "bias_pct"] == pytest.approx(1.0, abs=0.01)
    assert ref.loc[COUNTERPART_LABEL, "bias_pct_WM"] == pytest.approx(1.0, abs=0.01)
    assert abs(ref.loc[cyc, "bias_pct"]) < 0.01
    assert ref.loc["none (A unharmonised)", "bias_pct"] == pytest.approx(100 * (1 / GAIN_B - 1), abs=0.01)
    # the pooled table keeps every test slice
    assert res["truth_summary"].set_index("method").loc[cyc, "n_voxels"] > ref.loc[cyc, "n_voxels"]
    out = run / "evaluation"
    assert (out / "truth_reference.csv").exists()
    assert COUNTERPART_LABEL in (out / "report.html").read_text()
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "ev"), "--baselines", "none",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 of 6 test slices that B's own session covers" in printed
    assert f"{COUNTERPART_LABEL}" in printed and "WM  +1.00" in printed


def test_evaluate_errors(tiny, tmp_path, cache):
    from harmonize.evaluate import evaluate_run

    data, run = tiny
    with pytest.raises(InputError, match="run folder not found"):
        evaluate_run(tmp_path / "nothing")
    with pytest.raises(InputError, match="dataset not found"):
        evaluate_run(run, data=tmp_path / "missing.h5")
    other = write_run(tmp_path / "t2run", data, map_type="T2")
    with pytest.raises(ModelError, match="T2->T2"):
        evaluate_run(other, data=data)
    from harmonize.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown baseline"):
        evaluate_run(run, baselines=("zscore",))
