"""tf.data pipelines: shapes, range, determinism per (seed, epoch), pairing, augmentation."""
import numpy as np
import pytest

from harmonize.errors import ConfigError
from harmonize.io.dataset import DomainData, SplitData, find_pairs
from harmonize.preprocess.intensity import Normalization
from tests.conftest import tissue_slice

tf = pytest.importorskip("tensorflow")

from harmonize import data  # noqa: E402


def _domain(rng, subjects, slices, gain=1.0, shift=0.0, registered=True):
    images, subj, idx = [], [], []
    for s in range(subjects):
        for k in range(slices):
            images.append(tissue_slice(rng, 32, shift=(k - 2 + shift, s - 1), noise=10.0) * gain)
            subj.append(f"sub{s:02d}")
            idx.append(k)
    images = np.stack(images)
    return DomainData(images, images > 0, subj, idx, np.tile([0.9, 0.9, 4.0], (len(images), 1)),
                      registered=images.copy() if registered else None)


@pytest.fixture
def split(rng):
    a = _domain(rng, 3, 5)
    # B lacks one slice of one subject, so pairs are not simply the diagonal
    b_full = _domain(rng, 3, 5, gain=1.04, shift=0.5)
    keep = np.arange(len(b_full)) != 7
    b = DomainData(b_full.images[keep], b_full.masks[keep], b_full.subjects[keep], b_full.slices[keep],
                   b_full.spacing[keep], registered=b_full.registered[keep])
    return SplitData(a, b, find_pairs(a.subjects, a.slices, b.subjects, b.slices), name="train")


@pytest.fixture
def norm(split):
    return Normalization.fit(split.a.images, split.b.images)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _keys(batches, which, dom, net):
    """(subject, slice) of every image of ``batches[k][which]``, found by matching (no augmentation)."""
    net = net.reshape(len(net), -1)
    keys = []
    for batch in batches:
        for img in batch[which][..., 0]:
            i = int(np.argmin(np.abs(net - img.ravel()).max(axis=1)))
            keys.append((dom.subjects[i], int(dom.slices[i])))
    return keys


def test_steps_per_epoch(split):
    assert data.steps_per_epoch(split, 4) == 14 // 4  # min(15, 14)
    assert data.steps_per_epoch(split, 4, paired=True) == len(split.pairs) // 4 == 3
    with pytest.raises(ConfigError, match="batch"):
        data.steps_per_epoch(split, 100)
    with pytest.raises(ConfigError, match="positive integer"):
        data.steps_per_epoch(split, 0)


@pytest.mark.parametrize("augment", [False, True])
def test_unpaired_shapes_range_and_content(split, norm, augment):
    batches = _batches(data.unpaired_dataset(split, norm, 4, seed=3, epoch=0, augment=augment))
    assert len(batches) == data.steps_per_epoch(split, 4)
    for real_a, real_b in batches:
        assert real_a.shape == real_b.shape == (4, 32, 32, 1)
        assert real_a.dtype == real_b.dtype == np.float32
        assert real_a.min() >= -1.0 and real_a.max() <= 1.0
        assert real_b.min() >= -1.0 and real_b.max() <= 1.0
        assert real_a.min() == -1.0  # background 0 ms -> -1
    if not augment:
        # every A image is a normalised slice of split.a, each used at most once per epoch
        net_a = norm.to_network(split.a.images, "A")
        used = []
        for real_a, _ in batches:
            for img in real_a[..., 0]:
                hits = np.flatnonzero(np.abs(net_a - img).reshape(len(net_a), -1).max(axis=1) < 1e-6)
                assert len(hits) == 1
                used.append(int(hits[0]))
        assert len(set(used)) == len(used)
        # physical units come back exactly (to float32 precision)
        back = norm.from_network(batches[0][0][..., 0], "A")
        assert np.allclose(back, split.a.images[used[:4]], rtol=1e-6, atol=1e-3)


def test_order_is_a_function_of_seed_and_epoch(split, norm):
    e1 = _batches(data.unpaired_dataset(split, norm, 2, seed=5, epoch=1, augment=True))
    plain = _batches(data.unpaired_dataset(split, norm, 2, seed=5, epoch=1))
    again = _batches(data.unpaired_dataset(split, norm, 2, seed=5, epoch=1, augment=True))
    other_epoch = _batches(data.unpaired_dataset(split, norm, 2, seed=5, epoch=2, augment=True))
    other_seed = _batches(data.unpaired_dataset(split, norm, 2, seed=6, epoch=1, augment=True))
    for (a1, b1), (a2, b2) in zip(e1, again):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(e1[0][0], other_epoch[0][0])
    assert not np.array_equal(e1[0][0], other_seed[0][0])
    # A and B are shuffled independently: the (subject, slice) sequences differ
    seq_a = _keys(plain, 0, split.a, norm.to_network(split.a.images, "A"))
    seq_b = _keys(plain, 1, split.b, norm.to_network(split.b.images, "B"))
    assert seq_a != seq_b


def test_training_stream_resumes_exactly(split, norm):
    steps = data.steps_per_epoch(split, 3)
    stream = _batches(data.training_stream(split, norm, 3, seed=1, start_epoch=0, epochs=3, augment=True))
    assert len(stream) == 3 * steps
    resumed = _batches(data.training_stream(split, norm, 3, seed=1, start_epoch=2, epochs=3, augment=True))
    single = _batches(data.unpaired_dataset(split, norm, 3, seed=1, epoch=2, augment=True))
    assert len(resumed) == len(single) == steps
    for (a1, b1), (a2, b2), (a3, b3) in zip(stream[2 * steps:], resumed, single):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(a1, a3)
        np.testing.assert_array_equal(b1, b2)


def test_paired_batches_are_corresponding_slices(split, norm):
    batches = _batches(data.paired_dataset(split, norm, 2, seed=0, epoch=0, registered=False))
    assert len(batches) == len(split.pairs) // 2
    net_a = norm.to_network(split.a.images, "A").reshape(len(split.a), -1)
    net_b = norm.to_network(split.b.images, "B").reshape(len(split.b), -1)
    for real_a, real_b in batches:
        for img_a, img_b in zip(real_a[..., 0], real_b[..., 0]):
            i = int(np.argmin(np.abs(net_a - img_a.ravel()).max(axis=1)))
            j = int(np.argmin(np.abs(net_b - img_b.ravel()).max(axis=1)))
            assert split.a.subjects[i] == split.b.subjects[j]
            assert split.a.slices[i] == split.b.slices[j]


def test_paired_augmentation_is_identical_for_both_images(rng):
    a = _domain(rng, 2, 5)
    # B = A with its own scale: after per-domain normalisation both are the same image
    b = DomainData(a.images * 1.1, a.masks, a.subjects, a.slices, a.spacing, registered=a.registered * 1.1)
    split = SplitData(a, b, find_pairs(a.subjects, a.slices, b.subjects, b.slices))
    norm = Normalization.fit(a.images, b.images, kind="per-scanner-max")
    plain = _batches(data.paired_dataset(split, norm, 5, seed=2, epoch=0))
    aug = _batches(data.paired_dataset(split, norm, 5, seed=2, epoch=0, augment=True))
    for (pa, pb), (xa, xb) in zip(plain, aug):
        np.testing.assert_allclose(xa, xb, atol=1e-5)
        assert not np.allclose(xa, pa)  # augmentation did change the images


def test_paired_uses_registered_copies(split, norm):
    reg = SplitData(
        DomainData(split.a.images, split.a.masks, split.a.subjects, split.a.slices, split.a.spacing,
                   registered=np.zeros_like(split.a.images)),
        split.b, split.pairs)
    real_a, _ = next(iter(data.paired_dataset(reg, norm, 2, seed=0)))
    assert np.all(real_a.numpy() == -1.0)  # registered copies (all 0 ms) were used
    no_reg = SplitData(
        DomainData(split.a.images, split.a.masks, split.a.subjects, split.a.slices, split.a.spacing),
        split.b, split.pairs)
    with pytest.warns(UserWarning, match="unregistered"):
        data.paired_dataset(no_reg, norm, 2, seed=0)
    with pytest.raises(ConfigError, match="--register"):
        data.unpaired_dataset(no_reg, norm, 2, seed=0, registered=True)


def test_augmentation_geometry():
    # a bright dot at the centre stays near the centre (<= 5 % shift + 10 % scale + 5 deg rotation);
    # a flip of a left-right ramp shows up as a sign change of the column gradient
    img = -np.ones((64, 64), np.float32)
    img[30:34, 30:34] = 1.0
    batch = tf.constant(np.repeat(img[None, ..., None], 16, axis=0))
    out = data.augment_batch(batch, tf.constant([1, 2], tf.int32)).numpy()[..., 0]
    assert out.min() >= -1 and out.max() <= 1
    for o in out:
        cy, cx = np.unravel_index(np.argmax(o), o.shape)
        assert abs(cy - 31.5) <= 6 and abs(cx - 31.5) <= 6
    ramp = np.tile(np.linspace(-0.5, 0.5, 64, dtype=np.float32), (64, 1))
    out = data.augment_batch(tf.constant(np.repeat(ramp[None, ..., None], 32, axis=0)),
                             tf.constant([3, 4], tf.int32)).numpy()[..., 0]
    slopes = np.array([np.sign(o[24:40, 36].mean() - o[24:40, 28].mean()) for o in out])
    assert (slopes < 0).any() and (slopes > 0).any()  # some flipped, some not
    # constant fill of the outside: the corners of a zoomed-out / shifted image are background (-1)
    assert (out == -1.0).any()


def test_align_to_source_keeps_a_raw_and_moves_b_onto_a(rng):
    """A's registered copy is the raw slice; B's is moved by the full registration shift."""
    from harmonize.data import align_to_source
    from harmonize.io.dataset import DomainData, SplitData
    from harmonize.preprocess.registration import estimate_shift

    from tests.conftest import tissue_slice

    a = np.stack([tissue_slice(rng, 64, shift=(0.0, 0.0)) for _ in range(2)])
    b = np.stack([tissue_slice(rng, 64, shift=(2.0, -3.0)) for _ in range(2)])  # rows, cols in px
    spacing = np.tile(np.float32([1.0, 1.0, 4.0]), (2, 1))

    def dom(images):
        return DomainData(images=images, masks=(images > 0).astype(np.uint8), subjects=np.array(["s1", "s1"]),
                          slices=np.arange(2), spacing=spacing, registered=images.copy())

    pairs = np.array([[0, 0], [1, 1]])
    shifts = np.array([estimate_shift(a[k], b[k], (1.0, 1.0)) for k in range(2)], np.float32)
    split = SplitData(dom(a), dom(b), pairs, pair_shifts=shifts, name="train")
    out = align_to_source(split)
    np.testing.assert_array_equal(out.a.registered, a)
    before = np.abs(b - a).mean()
    after = np.abs(out.b.registered - a).mean()
    assert after < 0.25 * before
    np.testing.assert_array_equal(split.b.registered, b)  # the input split is not modified
