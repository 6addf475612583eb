"""Grad-CAM on a toy classifier whose decision depends on one region only."""
import numpy as np
import pytest

from harmonize.errors import ModelError
from harmonize.explain import grad_cam, heatmap_mass
from harmonize.models import classifier as clf

SIZE = 64
TOP_LEFT = np.zeros((SIZE, SIZE), bool)
TOP_LEFT[: SIZE // 2, : SIZE // 2] = True


def blobs(rng, n, with_blob):
    """Noise slices in the network range; class B has a bright 6x6 blob somewhere in the top-left quadrant."""
    x = rng.normal(-0.5, 0.1, (n, SIZE, SIZE)).astype(np.float32)
    centres = []
    if with_blob:
        for i in range(n):
            r, c = rng.integers(4, SIZE // 2 - 10, 2)
            x[i, r:r + 6, c:c + 6] += 0.8
            centres.append((r + 3, c + 3))
    return x, centres


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    a, _ = blobs(rng, 48, False)
    b, _ = blobs(rng, 48, True)
    model, _ = clf.train_scanner_classifier(a, b, epochs=6, batch_size=16, seed=0, filters=(4, 8, 8, 8, 8),
                                            dropout=0.0, learning_rate=3e-3, batch_norm=False)
    test_b, centres = blobs(rng, 12, True)
    return model, test_b, centres


def test_heatmap_shape_range_and_scores(toy):
    model, test_b, _ = toy
    heat, p = grad_cam(model, test_b, return_scores=True)
    assert heat.shape == test_b.shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_allclose(heat.max(axis=(1, 2))[heat.max(axis=(1, 2)) > 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, clf.predict_scanner(model, test_b), rtol=1e-4, atol=1e-5)
    assert np.all(p > 0.5)                        # the toy classifier calls every blob image B
    assert grad_cam(model, test_b[0]).shape == (1, SIZE, SIZE)


def test_class_b_heatmap_concentrates_on_the_deciding_region(toy):
    model, test_b, centres = toy
    heat = grad_cam(model, test_b, class_index=1)
    mass = heatmap_mass(heat, TOP_LEFT)
    assert np.nanmean(mass) > 0.45               # a quarter of the image holds most of the evidence (chance 0.25)
    peaks = [np.unravel_index(np.argmax(h), h.shape) for h in heat]
    assert np.mean([TOP_LEFT[r, c] for r, c in peaks]) >= 0.9
    # the peak lies near the blob that made the decision (last_conv cells are 16 px wide here)
    dist = [np.hypot(r - cr, c - cc) for (r, c), (cr, cc) in zip(peaks, centres)]
    assert np.median(dist) < 16


def test_class_a_is_the_complement(toy):
    model, test_b, _ = toy
    heat_b = grad_cam(model, test_b, class_index=1)
    heat_a = grad_cam(model, test_b, class_index=0)
    # evidence for A (against B) is not where the blob is
    assert np.nanmean(heatmap_mass(heat_a, TOP_LEFT)) < np.nanmean(heatmap_mass(heat_b, TOP_LEFT))
    # default = predicted class (B for every slice here)
    np.testing.assert_allclose(grad_cam(model, test_b), heat_b)


def test_untrained_model_does_not_show_the_region(toy):
    import keras

    _, test_b, _ = toy
    keras.utils.set_random_seed(1)
    untrained = clf.build_scanner_classifier(SIZE, filters=(4, 8, 8, 8, 8), dropout=0.0)
    mass = heatmap_mass(grad_cam(untrained, test_b, class_index=1), TOP_LEFT)
    assert np.nanmean(mass) < 0.45


def test_unknown_layer_is_a_model_error(toy):
    model, test_b, _ = toy
    with pytest.raises(ModelError, match="no layer named 'conv9'"):
        grad_cam(model, test_b, layer_name="conv9")
