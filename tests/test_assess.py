"""harmonize assess: tables, figures, the saved classifier and its index, on a tiny dataset."""
import json

import numpy as np
import pytest

from harmonize.errors import ConfigError, InputError

T1_A = {1: 4000.0, 2: 1050.0, 3: 620.0, 4: 300.0}   # CSF, GM, WM, other (ms) on scanner A
GAIN_B = 1.08                                      # scanner B reads T1 8 % longer


def tissue_labels(size, shift=(0.0, 0.0), scale=1.0):
    """A tiny 'head': other tissue ring, GM, a WM core and a CSF ventricle (labels 0-4)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + shift[0], size / 2 + shift[1]
    r = np.hypot((yy - cy) / (0.44 * size * scale), (xx - cx) / (0.38 * size * scale))
    lab = np.zeros((size, size), np.uint8)
    lab[r < 1.0] = 4
    lab[r < 0.9] = 2
    lab[r < 0.6] = 3
    lab[np.hypot((yy - cy) / (0.08 * size * scale), (xx - cx) / (0.15 * size * scale)) < 1.0] = 1
    return lab


def render(labels, gain, rng=None, noise=0.0):
    img = np.zeros(labels.shape, np.float32)
    for lab, t1 in T1_A.items():
        img[labels == lab] = t1 * gain
    if rng is not None and noise:
        img = np.where(labels > 0, img + rng.normal(0, noise, img.shape), 0.0)
    return np.maximum(img, 0).astype(np.float32)


def make_tiny_dataset(path, size=32, subjects=5, slices=6, test_subjects=1, registered=True, truth=True, seed=0,
                      gain_b=GAIN_B, noise_b=40.0, counterpart_gain=None):
    """Write a prepared dataset (DESIGN.md layout) with a known scanner difference.

    B = gain_b x A's tissue values plus noise (A is noise-free), anatomy shifted by one pixel between
    the sessions; truth of an A slice = its own anatomy rendered on B without noise. With
    ``counterpart_gain``, A's slices have 3-D registered counterparts = counterpart_gain x truth,
    except each subject's first slice (NaN: not covered).
    """
    from harmonize.io.dataset import SplitData, DomainData, find_pairs, write_dataset
    from harmonize.preprocess.intensity import Normalization

    rng = np.random.default_rng(seed)
    names = [f"sub{s:02d}" for s in range(subjects)]
    test_names = names[-test_subjects:] if test_subjects else []
    splits = {}
    for split, subj in (("train", [n for n in names if n not in test_names]), ("test", test_names)):
        if not subj:
            continue
        doms = {}
        for dom in ("A", "B"):
            imgs, masks, subs, sl, tru, tis = [], [], [], [], [], []
            for s_i, s in enumerate(subj):
                for k in range(slices):
                    scale = 0.7 + 0.3 * np.sin(np.pi * (k + 1) / (slices + 1))
                    shift = (0.0, 0.0) if dom == "A" else (1.0, -1.0)
                    lab = tissue_labels(size, shift=shift, scale=scale)
                    if dom == "A":
                        img = render(lab, 1.0)
                        tru.append(render(lab, gain_b))
                    else:
                        img = render(lab, gain_b, rng, noise_b)
                        tru.append(render(lab, 1.0))
                    imgs.append(img)
                    masks.append(lab > 0)
                    tis.append(lab)
                    subs.append(s)
                    sl.append(k)
            imgs = np.stack(imgs)
            counterpart = None
            if dom == "A" and counterpart_gain is not None:
                counterpart = np.float32(counterpart_gain) * np.stack(tru)
                counterpart[np.asarray(sl) == 0] = np.nan
            doms[dom] = DomainData(images=imgs, masks=np.stack(masks), subjects=subs, slices=sl,
                                   spacing=np.tile([1.0, 1.0, 4.0], (len(imgs), 1)),
                                   registered=imgs.copy() if registered else None,
                                   truth=np.stack(tru) if truth else None, tissue=np.stack(tis),
                                   counterpart=counterpart)
        pairs = find_pairs(doms["A"].subjects, doms["A"].slices, doms["B"].subjects, doms["B"].slices)
        if registered:
            # 'registration' moves A by half the session shift: the pairs then line up better
            doms["A"].registered = np.roll(doms["A"].images, (1, -1), axis=(1, 2))
        splits[split] = SplitData(doms["A"], doms["B"], pairs, name=split)
    train = splits["train"]
    norm = Normalization.fit(train.a.images, train.b.images)
    attrs = {"source": "SCAN_A", "target": "SCAN_B", "map_type_a": "T1", "map_type_b": "T1", "units_a": "ms",
             "units_b": "ms", "normalization": norm, "seed": seed, "data_dir": "synthetic"}
    return write_dataset(path, splits, attrs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("HARMONIZE_CACHE", str(folder))
    return folder


@pytest.fixture
def tiny_h5(tmp_path):
    return make_tiny_dataset(tmp_path / "tiny.h5")


# ----------------------------------------------------------------------------- pieces

def test_classifier_inputs_crop_resize_and_normalise():
    from harmonize.assess import classifier_geometry, classifier_inputs, classifier_scale
    from harmonize.preprocess.intensity import Normalization

    norm = Normalization("shared", 4000.0, 4000.0)
    lab = tissue_labels(64)
    img = render(lab, 1.0)[None]
    assert classifier_scale((64, 64), 0) == 1.0
    assert classifier_scale((64, 64), 32) == 0.5
    assert classifier_scale((64, 64), 128) == 1.0      # never upsampled
    with pytest.raises(ConfigError, match="image-size"):
        classifier_scale((64, 64), 8)
    box, size = classifier_geometry((64, 64), lab[None] > 0, cropped=False, scale=0.5)
    assert box is None and size == (32, 32)
    x = classifier_inputs(img, "A", norm, box, size)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() <= 1.0
    box, size = classifier_geometry((64, 64), lab[None] > 0, cropped=True, scale=0.5)
    r0, r1, c0, c1 = box
    assert (r1 - r0) % 32 == 0 and (c1 - c0) % 32 == 0     # multiples of 16 after halving
    assert size == ((r1 - r0) // 2, (c1 - c0) // 2)
    head = np.argwhere(lab > 0)
    assert r0 <= head[:, 0].min() and r1 > head[:, 0].max() and c0 <= head[:, 1].min() and c1 > head[:, 1].max()
    # the network range inverts exactly back to ms (full grid, no resampling)
    x = classifier_inputs(img, "A", norm)
    np.testing.assert_allclose(norm.from_network(x, "A"), img, atol=0.5)


def test_pooled_domains_and_table2_known_values(tmp_path):
    """Table 2 of identical scanners is SSIM 1 / NRMSE 0; a pure 8 % gain gives NRMSE 0.08."""
    from harmonize.assess import paired_table, pooled_domains
    from harmonize.io.dataset import PreparedDataset

    path = make_tiny_dataset(tmp_path / "same.h5", gain_b=1.0, noise_b=0.0, registered=True)
    pool = pooled_domains(PreparedDataset(path))
    assert len(pool["A"]) == 30 and len(pool["pairs"]) == 30
    # shifted anatomy before registration, the registered copies of A line up with B exactly
    table, data_range = paired_table(pool)
    t = table.set_index("measure")
    assert data_range == pytest.approx(4000.0)
    assert t.loc["SSIM", "after registration"] == pytest.approx(1.0, abs=1e-6)
    assert t.loc["NRMSE", "after registration"] == pytest.approx(0.0, abs=1e-6)
    assert t.loc["SSIM", "before registration"] < 0.99
    assert t.loc["slice pairs", "before registration"] == 30

    path = make_tiny_dataset(tmp_path / "gain.h5", gain_b=1.08, noise_b=0.0, registered=True)
    t = paired_table(pooled_domains(PreparedDataset(path)))[0].set_index("measure")
    assert t.loc["NRMSE", "after registration"] == pytest.approx(0.08, abs=1e-5)
    assert "after 3-D registration" not in t.columns


def test_table2_scores_the_counterparts_of_a_3d_registration(tmp_path):
    """With counterparts (--register-volumes) Table 2 adds A against its counterpart, slices without one left out."""
    from harmonize.assess import paired_table, pooled_domains
    from harmonize.io.dataset import PreparedDataset

    pool = pooled_domains(PreparedDataset(make_tiny_dataset(tmp_path / "same.h5", gain_b=1.0, noise_b=0.0)))
    pairs = pool["pairs"]
    # B's anatomy is A's moved by (1, -1) px: moved back it is A's counterpart exactly
    counterpart = np.zeros_like(pool["A"].images)
    counterpart[pairs[:, 0]] = np.roll(pool["B"].images[pairs[:, 1]], (-1, 1), axis=(1, 2))
    counterpart[0] = np.nan
    pool["A"].counterpart = counterpart
    t = paired_table(pool)[0].set_index("measure")
    assert t.loc["SSIM", "after 3-D registration"] == pytest.approx(1.0, abs=1e-6)
    assert t.loc["NRMSE", "after 3-D registration"] == pytest.approx(0.0, abs=1e-6)
    assert t.loc["slice pairs", "after 3-D registration"] == len(pool["A"]) - 1
    assert t.loc["SSIM", "before registration"] < 0.99


def test_crop_region_keeps_where_the_brain_usually_is(tmp_path, tiny_h5):
    from harmonize.assess import classifier_geometry, crop_region, pooled_domains
    from harmonize.io.dataset import PreparedDataset

    pool = pooled_domains(PreparedDataset(tiny_h5))
    region, kind = crop_region(pool)
    assert kind == "brain (tissue labels)" and region.shape == (32, 32)
    brain = np.concatenate([np.isin(pool[d].tissue, (1, 2, 3)) for d in ("A", "B")])
    np.testing.assert_array_equal(region, brain.mean(axis=0) >= 0.5)
    box, size = classifier_geometry((32, 32), region, cropped=True, scale=1.0)
    assert size == (box[1] - box[0], box[3] - box[2]) and size[0] % 16 == 0


def test_histogram_tables_overlap_and_tissue_means(tmp_path):
    from harmonize.assess import histogram_tables, pooled_domains, tissue_means_table
    from harmonize.io.dataset import PreparedDataset

    ds = PreparedDataset(make_tiny_dataset(tmp_path / "same.h5", gain_b=1.0, noise_b=0.0, registered=False))
    pool = pooled_domains(ds)
    curves, hist_df, summary, value_range = histogram_tables(pool, ds)
    assert list(curves) == ["before registration"]        # no registered copies: no 'after'
    assert len(hist_df) == 500 and value_range == (0.0, 4000.0)
    assert summary["histogram overlap A-B"].iloc[0] == pytest.approx(1.0, abs=0.05)
    assert hist_df["A before registration"].sum() == pytest.approx(1.0)
    ds = PreparedDataset(make_tiny_dataset(tmp_path / "gain.h5", gain_b=1.08, noise_b=0.0))
    tissue = tissue_means_table(pooled_domains(ds), ds).set_index("tissue")
    assert tissue.loc["WM", "B - A (%)"] == pytest.approx(8.0, abs=1e-3)
    assert tissue.loc["GM", "A (SCAN_A) mean"] == pytest.approx(1050.0)


def test_classifier_index_roundtrip(tmp_path, cache, tiny_h5):
    import h5py

    from harmonize.assess import classifier_index_path, find_classifier, register_classifier
    from harmonize.io.dataset import PreparedDataset
    from harmonize.models.classifier import BN_STATISTICS
    from harmonize.models.saving import METADATA_ATTR

    ds = PreparedDataset(tiny_h5)
    assert find_classifier(ds) is None
    clf = tmp_path / "clf.h5"
    with h5py.File(clf, "w") as fh:  # a classifier saved before the batch-norm recalibration
        fh.attrs[METADATA_ATTR] = json.dumps({"model": "scanner_classifier"})
    register_classifier(ds, clf)
    assert classifier_index_path().parent == cache
    assert find_classifier(ds) is None
    with h5py.File(clf, "w") as fh:
        fh.attrs[METADATA_ATTR] = json.dumps({"model": "scanner_classifier", "batch_norm_statistics": BN_STATISTICS})
    assert find_classifier(ds) == clf.resolve()
    # a re-created dataset (other 'created' stamp) does not reuse the old classifier
    index = json.loads(classifier_index_path().read_text())
    index[str(tiny_h5.resolve())]["dataset_created"] = "another time"
    classifier_index_path().write_text(json.dumps(index))
    assert find_classifier(ds) is None


def test_roc_auc_hand_computed():
    from harmonize.assess import roc_auc

    assert roc_auc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert roc_auc([0.8, 0.9], [0.1, 0.2]) == 0.0
    # B scores (0.3, 0.9) against A (0.1, 0.5): pairs won 1 + 2 = 3 of 4
    assert roc_auc([0.1, 0.5], [0.3, 0.9]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0.5]) == pytest.approx(0.5)       # ties count one half
    assert np.isnan(roc_auc([], [0.3]))


def test_missing_dataset_is_a_clear_error(tmp_path):
    from harmonize.assess import assess_dataset

    with pytest.raises(InputError, match="dataset not found"):
        assess_dataset(tmp_path / "nope.h5", tmp_path / "out", runs=1, epochs=1)
    with pytest.raises(ConfigError, match="runs"):
        assess_dataset(tmp_path / "nope.h5", tmp_path / "out", runs=0)


# ----------------------------------------------------------------------------- end to end

def test_assess_end_to_end(tmp_path, cache, tiny_h5):
    """One run, one epoch: every table, figure, the classifier and the index; CLI agrees."""
    from harmonize.assess import find_classifier, VARIANTS
    from harmonize.cli import main
    from harmonize.io.dataset import PreparedDataset
    from harmonize.models.classifier import load_classifier

    out = tmp_path / "assess"
    code = main(["assess", "--data", str(tiny_h5), "--out", str(out), "--runs", "1", "--epochs", "1",
                 "--batch-size", "8", "--image-size", "0", "--quiet"])
    assert code == 0
    for name in ("report.html", "table2_ssim_nrmse.csv", "table3_accuracy.csv", "table3_auc.csv", "table3_runs.csv",
                 "histograms.csv",
                 "histogram_summary.csv", "tissue_means.csv", "gradcam.csv", "classifier.h5",
                 "figures/fig7_histograms.png", "figures/table3_accuracy.png",
                 "figures/fig8_examples_full_before_registration.png",
                 "figures/fig9_gradcam_full_before_registration.png",
                 "figures/fig12_gradcam_cropped_after_registration.png"):
        assert (out / name).exists(), name
    import pandas as pd

    t3 = pd.read_csv(out / "table3_accuracy.csv")
    assert list(t3.columns) == ["run"] + list(VARIANTS)
    assert list(t3["run"].astype(str)) == ["1", "mean"]
    runs = pd.read_csv(out / "table3_runs.csv")
    assert (runs["split"] == "dataset train/test split").all()
    assert (runs["n_test_A"] == 6).all() and (runs["n_train_A"] == 24).all()   # 1 test subject of 5
    assert runs["accuracy"].between(0, 1).all() and runs["auc"].between(0, 1).all()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8
    assert "split the 646 images at random" in html and "Table 3" in html
    model, meta = load_classifier(out / "classifier.h5")
    assert meta["test_subjects"] == ["sub04"] and meta["crop_box"] is None
    assert meta["image_size"] == [32, 32] and meta["variant"] == "full, before registration"
    assert find_classifier(PreparedDataset(tiny_h5)) == (out / "classifier.h5").resolve()


def test_assess_without_registration_or_crop(tmp_path, cache):
    from harmonize.assess import assess_dataset

    path = make_tiny_dataset(tmp_path / "noreg.h5", registered=False, size=32)
    res = assess_dataset(path, tmp_path / "out", runs=1, epochs=1, batch_size=8, cropped=False, image_size=0)
    assert list(res["table3"].columns) == ["run", "full, before registration"]
    assert list(res["table2"].columns) == ["measure", "before registration"]
    assert any("no registered copies" in n for n in res["notes"])
    assert "no registered copies" in (tmp_path / "out" / "report.html").read_text()
