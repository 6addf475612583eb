"""The scanner classifier: architecture, training on a tiny two-scanner set, saving, splits, crops."""
import h5py
import numpy as np
import pytest

from harmonize.errors import GeometryError, InputError, ModelError
from harmonize.models import classifier as clf
from tests.conftest import tissue_slice

TINY = (4, 8, 8, 8, 8)
SMALL = (8, 16, 16, 16, 16)
SCALE_MS = 4400.0


def two_scanners(rng, n, size=32):
    """Scanner B reads T1 20 % longer than A; random positions and noise; network range."""
    a, b = [], []
    for _ in range(n):
        for out, gain in ((a, 1.0), (b, 1.2)):
            shift = tuple(rng.uniform(-3, 3, 2))
            img = tissue_slice(rng, size, shift=shift, noise=20.0) * gain
            out.append(2 * img / SCALE_MS - 1)
    return np.stack(a).astype(np.float32), np.stack(b).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(7)
    a, b = two_scanners(rng, 40)
    va, vb = two_scanners(rng, 12)
    model, history = clf.train_scanner_classifier(a, b, epochs=10, batch_size=10, seed=3, filters=SMALL, dropout=0.0,
                                                  learning_rate=3e-3, validation=(va, vb))
    return model, history, (va, vb)


def test_architecture_follows_the_thesis():
    model = clf.build_scanner_classifier(256)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 32, 128, 256, 512]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert convs[-1].name.startswith("last_conv")  # the conv; "last_conv" itself is its activation
    assert len([layer for layer in model.layers if "BatchNormalization" in layer.__class__.__name__]) == 5
    plain = clf.build_scanner_classifier(64, batch_norm=False)
    assert plain.get_layer("last_conv").__class__.__name__ == "Conv2D"
    pools = [layer for layer in model.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert len(pools) == 4 and all(p.pool_size == (2, 2) for p in pools)
    assert tuple(model.get_layer("last_conv").output.shape[1:]) == (16, 16, 512)
    assert tuple(model.output.shape) == (None, 1)
    with pytest.raises(GeometryError, match="at least 16x16"):
        clf.build_scanner_classifier(8)


def test_training_separates_the_scanners(trained):
    model, history, (va, vb) = trained
    assert len(history["loss"]) == 10 and "val_accuracy" in history
    assert history["loss"][-1] < history["loss"][0]
    acc = clf.classifier_accuracy(model, va, vb)
    assert acc["accuracy"] >= 0.85
    assert acc["mean_p_b_b"] > acc["mean_p_b_a"]
    assert acc["n_a"] == len(va) and acc["n_b"] == len(vb)


def test_predict_matches_model_call_and_checks_range(trained):
    model, _, (va, _) = trained
    p = clf.predict_scanner(model, va, batch_size=5)          # 12 slices: a smaller last batch
    direct = np.asarray(model(va[..., None], training=False)).reshape(-1)
    np.testing.assert_allclose(p, direct, rtol=1e-5, atol=1e-6)
    assert p.shape == (len(va),) and np.all((p >= 0) & (p <= 1))
    assert clf.predict_scanner(model, va[0]).shape == (1,)
    with pytest.raises(InputError, match="network range"):
        clf.predict_scanner(model, (va + 1) * SCALE_MS / 2)   # maps in ms, not normalised
    with pytest.raises(GeometryError, match="64x64"):
        clf.predict_scanner(model, np.zeros((2, 64, 64), np.float32))


def test_training_is_repeatable_with_a_seed():
    rng = np.random.default_rng(1)
    a, b = two_scanners(rng, 6)
    runs = [clf.train_scanner_classifier(a, b, epochs=2, batch_size=4, seed=s, filters=TINY)[0] for s in (5, 5, 6)]
    p = [clf.predict_scanner(m, a) for m in runs]
    np.testing.assert_allclose(p[0], p[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(p[0], p[2])


def test_save_load_round_trip(tmp_path, trained):
    from harmonize.preprocess.intensity import Normalization

    model, _, (va, _) = trained
    meta = {"image_size": [32, 32], "normalization": Normalization("shared", SCALE_MS, SCALE_MS),
            "crop_box": (0, 32, 0, 32), "labels": {"A": "SCANNER_A", "B": "SCANNER_B"}, "map_type": "T1"}
    path = clf.save_classifier(model, tmp_path / "clf.h5", meta)
    loaded, meta2 = clf.load_classifier(path)
    np.testing.assert_allclose(clf.predict_scanner(loaded, va), clf.predict_scanner(model, va), rtol=1e-6)
    assert meta2["model"] == "scanner_classifier"
    assert meta2["normalization"] == {"kind": "shared", "scale_a": SCALE_MS, "scale_b": SCALE_MS}
    assert meta2["labels"]["B"] == "SCANNER_B" and meta2["crop_box"] == [0, 32, 0, 32]
    assert not list(tmp_path.glob("*.partial*"))
    with pytest.raises(ModelError, match="lacks normalization"):
        clf.save_classifier(model, tmp_path / "bad.h5", {"image_size": [32, 32]})
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as fh:
        fh.attrs["harmonize_metadata"] = '{"direction": "AtoB"}'
    with pytest.raises(ModelError, match="not a harmonize scanner classifier"):
        clf.load_classifier(other)
    with pytest.raises(InputError, match="not found"):
        clf.load_classifier(tmp_path / "missing.h5")


def test_subject_split_is_disjoint_and_seeded():
    subjects = [f"sub{i:02d}" for i in range(12) for _ in range(3)]   # 3 slices per subject
    train, test = clf.subject_split(subjects, 0.2, seed=0)
    assert len(test) == 2 and len(train) == 10
    assert not set(train) & set(test) and set(train) | set(test) == set(subjects)
    assert clf.subject_split(subjects[::-1], 0.2, seed=0) == (train, test)       # order does not matter
    draws = {tuple(clf.subject_split(subjects, 0.2, seed=s)[1]) for s in range(8)}
    assert len(draws) > 1
    assert clf.subject_split(["a", "b"], 0.01, seed=0)[1] != []                  # at least one test subject
    with pytest.raises(InputError, match="at least 2 subjects"):
        clf.subject_split(["a", "a"], 0.2)


def test_center_crop_box_covers_the_head():
    masks = np.zeros((3, 64, 80), bool)
    masks[0, 20:40, 30:50] = True
    masks[1, 25:45, 28:47] = True
    r0, r1, c0, c1 = clf.center_crop_box(masks, margin=2, multiple=16)
    assert (r1 - r0) % 16 == 0 and (c1 - c0) % 16 == 0
    assert r0 <= 18 and r1 >= 47 and c0 <= 26 and c1 >= 52
    assert 0 <= r0 and r1 <= 64 and 0 <= c0 and c1 <= 80
    cropped = clf.apply_crop_box(masks, (r0, r1, c0, c1))
    assert cropped.sum() == masks.sum()
    # a head at the image edge: the box is shifted inside the image
    edge = np.zeros((32, 32), bool)
    edge[0:10, 0:10] = True
    assert clf.center_crop_box(edge, margin=2, multiple=16) == (0, 16, 0, 16)
    with pytest.raises(InputError, match="empty"):
        clf.center_crop_box(np.zeros((2, 8, 8)))


def test_batch_norm_statistics_are_the_population_statistics():
    """After training, each BN layer's moving statistics are the mean/variance of its input over the
    training slices in inference mode (recomputed here independently from the layer inputs)."""
    import keras

    rng = np.random.default_rng(11)
    a, b = two_scanners(rng, 6)
    model, _ = clf.train_scanner_classifier(a, b, epochs=2, batch_size=4, seed=0, filters=TINY, dropout=0.0)
    x = np.concatenate([a, b])[..., None]
    for layer in [m for m in model.layers if isinstance(m, keras.layers.BatchNormalization)]:
        act = np.asarray(keras.Model(model.inputs[0], layer.input)(x, training=False), np.float64)
        act = act.reshape(-1, act.shape[-1])
        np.testing.assert_allclose(layer.moving_mean.numpy(), act.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), act.var(axis=0), rtol=1e-3, atol=1e-6)
    assert clf.recalibrate_batch_norm(clf.build_scanner_classifier(32, filters=TINY, batch_norm=False), x) == 0



def test_inference_mode_calls_the_training_slices_right(trained):
    """A classifier is used in inference mode (predict, Grad-CAM, Table 7): there it must call the
    slices it was trained on right. (On these easy toy scanners this holds even without the batch-norm
    recalibration; the test above is the one that checks the recalibration itself.)"""
    model = trained[0]
    rng = np.random.default_rng(7)
    a, b = two_scanners(rng, 40)  # the training slices of the fixture (same seed, first draw)
    acc = clf.classifier_accuracy(model, a, b)
    assert acc["accuracy"] >= 0.95
