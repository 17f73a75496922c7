"""cnnkit.data: the bundled and synthetic datasets, ArrayDataset, the stratified split and DataLoader.

* loaders: shapes, dtypes, ranges; digits match scikit-learn's arrays and labels exactly at 8x8,
  and stay faithful when resized; faces match scikit-image's subset (skipped without it);
* make_shapes: same seed same data, each mask's bounding box is its box, every class appears,
  shapes are distinct, the object is brighter than its background, images are not constant;
  distractors: of other classes, disjoint boxes (one background pixel apart) and masks, the
  labelled data unchanged outside them, distractors=0 bit-identical to the data stored before
  the option existed, impossible counts refused;
* ArrayDataset: NumPy indexing, extras, validation, the .npz round trip;
* train_test_split: per-class proportions, disjoint and complete, deterministic by seed;
* DataLoader: every sample exactly once per epoch, epochs differ, same seed same order, drop_last,
  batch_size 1 and full, fresh contiguous batches, the augment hook (labels passed through),
  a cnnkit.augment pipeline on uint8 digits;
* bad arguments raise TypeError/ValueError naming the argument.
"""
from __future__ import annotations

import hashlib
import sys

import cnnkit.augment as A
import numpy as np
import pytest
from cnnkit.data import SHAPES, ArrayDataset, DataLoader, load_digits, load_faces, make_shapes, train_test_split


def _ids(n=103, k=4, c=1):
    """A dataset whose image k holds the number k everywhere (so a batch names its samples), label k % k."""
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, c, 2, 2)).copy()
    return ArrayDataset(x, np.arange(n) % k)


def _batch_ids(x):
    return x[:, 0, 0, 0].astype(np.int64)


def _epoch(loader):
    return np.concatenate([_batch_ids(x) for x, _ in loader])


# ---- load_digits -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sk_digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return sklearn_datasets.load_digits()


def test_load_digits_smoke(sk_digits):
    ds = load_digits()
    assert isinstance(ds, ArrayDataset) and len(ds) == 1797
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.float32
    assert ds.images.flags.c_contiguous
    assert ds.labels.shape == (1797,) and ds.labels.dtype == np.int64
    assert ds.classes == tuple(str(d) for d in range(10)) and ds.num_classes == 10
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    # exactly scikit-learn's arrays: values 0..16 scaled by 1/16, the same labels in the same order
    np.testing.assert_array_equal(ds.images[:, 0] * 16, sk_digits.images)
    np.testing.assert_array_equal(ds.labels, sk_digits.target)
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.min() >= 170 and counts.max() <= 185


def test_load_digits_uint8(sk_digits):
    ds = load_digits(as_uint8=True)
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[..., 0], np.rint(sk_digits.images * 255 / 16).astype(np.uint8))
    assert ds.images.max() == 255


@pytest.mark.parametrize("size", [16, 28, 5])
def test_load_digits_resized(size):
    f = load_digits(size=size)
    u = load_digits(size=size, as_uint8=True)
    assert f.images.shape == (1797, 1, size, size) and f.images.dtype == np.float32
    assert u.images.shape == (1797, size, size, 1) and u.images.dtype == np.uint8
    assert f.images.flags.c_contiguous and u.images.flags.c_contiguous
    assert 0.0 <= f.images.min() and f.images.max() <= 1.0
    # the float images are the uint8 ones over 255, and the labels are unchanged
    np.testing.assert_array_equal(f.images, u.images.transpose(0, 3, 1, 2) / np.float32(255))
    np.testing.assert_array_equal(f.labels, load_digits().labels)


def _bilinear_ref(img, size):
    """Bilinear resize of one (H, W) image over the full image, align_corners=False, edges clamped
    (float64; valid for upscaling, where no antialiasing applies)."""
    def weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(n_out), hi), src - lo)
        return m
    return weights(img.shape[0], size) @ img.astype(np.float64) @ weights(img.shape[1], size).T


@pytest.mark.parametrize("size", [16, 21])
def test_load_digits_upscaled_is_bilinear(size):
    small = load_digits(as_uint8=True).images[:40, :, :, 0]
    big = load_digits(size=size, as_uint8=True).images[:40, :, :, 0]
    for s, b in zip(small, big):
        np.testing.assert_allclose(b, _bilinear_ref(s, size), atol=1.0)  # uint8 rounding
    # strokes stay smooth (bilinear, not a nearest repeat): the 2x2 blocks of a 16x16 image vary
    if size == 16:
        assert np.any(big[:, 0::2, :] != big[:, 1::2, :])


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(size=0), ValueError, "size"), (dict(size=8.0), TypeError, "size"),
    (dict(as_uint8=1), TypeError, "as_uint8")])
def test_load_digits_exception(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        load_digits(**kwargs)


# ---- load_faces --------------------------------------------------------------------------------------

def test_load_faces_smoke():
    skimage_data = pytest.importorskip("skimage.data")
    raw = skimage_data.lfw_subset()
    ds = load_faces()
    assert ds.images.shape == (200, 1, 25, 25) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64 and ds.classes == ("non-face", "face")
    np.testing.assert_array_equal(ds.labels, np.r_[np.ones(100), np.zeros(100)])
    np.testing.assert_array_equal(ds.images[:, 0], raw.astype(np.float32))
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.std() > 0.1
    u = load_faces(as_uint8=True, size=32)
    assert u.images.shape == (200, 32, 32, 1) and u.images.dtype == np.uint8
    assert load_faces(size=32).images.shape == (200, 1, 32, 32)


def test_load_faces_without_skimage(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.data", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-image"):
        load_faces()


# ---- make_shapes -------------------------------------------------------------------------------------

def _mask_boxes(masks):
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    first = lambda a: np.argmax(a, axis=1)
    last = lambda a: a.shape[1] - np.argmax(a[:, ::-1], axis=1)
    return np.stack([first(rows), first(cols), last(rows), last(cols)], axis=1)


@pytest.mark.parametrize("n, size, channels", [(200, 32, 1), (41, 8, 3), (60, 57, 2)])
def test_make_shapes_smoke(n, size, channels):
    ds = make_shapes(n, size, seed=3, channels=channels)
    assert ds.images.shape == (n, channels, size, size) and ds.images.dtype == np.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert ds.boxes.shape == (n, 4) and ds.boxes.dtype == np.int64
    assert ds.masks.shape == (n, size, size) and ds.masks.dtype == bool
    assert ds.classes == SHAPES
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    # every mask's bounding box is its box, and the box lies inside the image
    np.testing.assert_array_equal(_mask_boxes(ds.masks), ds.boxes)
    assert np.all(ds.boxes[:, :2] >= 0) and np.all(ds.boxes[:, 2:] <= size)
    assert np.all(ds.boxes[:, 2] - ds.boxes[:, 0] == ds.boxes[:, 3] - ds.boxes[:, 1])  # square boxes
    # every class appears, balanced to within one
    counts = np.bincount(ds.labels, minlength=len(SHAPES))
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1
    # images are not constant, and the object is brighter than the background in every channel
    assert np.all(ds.images.reshape(n, -1).std(axis=1) > 0.05)
    m = ds.masks[:, None]
    inside = (ds.images * m).sum(axis=(2, 3)) / m.sum(axis=(2, 3))
    outside = (ds.images * ~m).sum(axis=(2, 3)) / (~m).sum(axis=(2, 3))
    assert np.all(inside - outside > 0.2)


def test_make_shapes_seed():
    a, b, c = make_shapes(50, 24, seed=7), make_shapes(50, 24, seed=7), make_shapes(50, 24, seed=8)
    for name in ("images", "labels", "boxes", "masks"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.boxes, c.boxes)


def test_make_shapes_classes_are_distinct():
    ds = make_shapes(400, 32, seed=0, noise=0.0)
    y0, x0, y1, x1 = ds.boxes.T
    fill = ds.masks.sum(axis=(1, 2)) / ((y1 - y0) * (x1 - x0))
    by_class = {name: fill[ds.labels == k] for k, name in enumerate(ds.classes)}
    assert np.all(by_class["square"] == 1.0)
    np.testing.assert_allclose(by_class["circle"], np.pi / 4, atol=0.08)
    assert np.all((by_class["triangle"] > 0.45) & (by_class["triangle"] < 0.7))
    assert np.all((by_class["cross"] > 0.45) & (by_class["cross"] < 0.7))
    # triangles point up: the top row of the box is narrower than the bottom row
    for k in np.flatnonzero(ds.labels == ds.classes.index("triangle"))[:20]:
        box = ds.masks[k, y0[k]:y1[k], x0[k]:x1[k]]
        assert box[0].sum() < box[-1].sum() == box.shape[1]
    # noise=0: exactly two levels per image and channel, the shape's and the background's
    for k in range(10):
        assert len(np.unique(ds.images[k, 0])) == 2


def test_make_shapes_feature_classes_and_scale():
    ds = make_shapes(30, 40, seed=1, classes=("cross", "circle"), min_scale=0.5, max_scale=0.5)
    assert ds.classes == ("cross", "circle") and set(ds.labels.tolist()) == {0, 1}
    np.testing.assert_array_equal(ds.boxes[:, 2] - ds.boxes[:, 0], 20)
    circles = ds.masks[ds.labels == 1]
    assert np.all(circles.sum(axis=(1, 2)) < 400)  # not squares


@pytest.mark.parametrize("args, kwargs, exc, name", [
    ((0,), {}, ValueError, "n"), ((2.0,), {}, TypeError, "n"), ((5, 7), {}, ValueError, "size"),
    ((5,), dict(seed="a"), TypeError, "seed"), ((5,), dict(seed=-1), ValueError, "seed"),
    ((5,), dict(classes=("square", "hexagon")), ValueError, "classes"),
    ((5,), dict(classes=("square", "square")), ValueError, "classes"),
    ((5,), dict(classes="square"), TypeError, "classes"), ((5,), dict(classes=()), ValueError, "classes"),
    ((5,), dict(channels=0), ValueError, "channels"), ((5,), dict(noise=-0.1), ValueError, "noise"),
    ((5,), dict(min_scale=0.0), ValueError, "min_scale"), ((5,), dict(max_scale=1.5), ValueError, "max_scale"),
    ((5,), dict(min_scale=0.6, max_scale=0.4), ValueError, "max_scale")])
def test_make_shapes_exception(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        make_shapes(*args, **kwargs)


def _digest(ds):
    h = hashlib.sha256()
    for a in (ds.images, ds.labels, ds.boxes, ds.masks):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# sha256 of (images, labels, boxes, masks), computed with make_shapes before `distractors` existed
@pytest.mark.parametrize("kwargs, digest", [
    (dict(n=20, size=32, seed=0), "f4a2c75f4aad111d"),
    (dict(n=7, size=16, seed=3, channels=3, noise=0.0), "af3f89a4afa6a15f"),
    (dict(n=600, size=12, seed=5, classes=("circle", "cross")), "20c6ee0472c7d047")])
def test_make_shapes_no_distractors_unchanged(kwargs, digest):
    ds = make_shapes(**kwargs)
    assert _digest(ds) == digest
    assert _digest(make_shapes(**kwargs, distractors=0)) == digest
    assert set(ds.extras) == {"boxes", "masks"}


def _boxes_apart(a, b):
    """Half-open boxes (y0, x0, y1, x1) with at least one pixel between them."""
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


@pytest.mark.parametrize("n, size, k, channels", [(60, 32, 2, 1), (25, 40, 4, 3), (30, 16, 1, 2)])
def test_make_shapes_distractors(n, size, k, channels):
    ds = make_shapes(n, size, seed=4, channels=channels, distractors=k)
    assert ds.distractor_labels.shape == (n, k) and ds.distractor_labels.dtype == np.int64
    assert ds.distractor_boxes.shape == (n, k, 4) and ds.distractor_boxes.dtype == np.int64
    assert ds.distractor_masks.shape == (n, k, size, size) and ds.distractor_masks.dtype == bool
    assert ds.images.shape == (n, channels, size, size) and 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    # other classes only, and every other class turns up
    assert np.all(ds.distractor_labels != ds.labels[:, None])
    assert np.all((ds.distractor_labels >= 0) & (ds.distractor_labels < len(SHAPES)))
    # boxes inside the image, square, the bounding boxes of their masks; no two boxes touch
    db = ds.distractor_boxes
    assert np.all(db[..., :2] >= 0) and np.all(db[..., 2:] <= size)
    assert np.all(db[..., 2] - db[..., 0] == db[..., 3] - db[..., 1]) and np.all(db[..., 2] - db[..., 0] >= 4)
    np.testing.assert_array_equal(_mask_boxes(ds.distractor_masks.reshape(n * k, size, size)), db.reshape(n * k, 4))
    for i in range(n):
        boxes = [ds.boxes[i]] + list(db[i])
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                assert _boxes_apart(boxes[a], boxes[b]), (i, boxes[a], boxes[b])
    # masks disjoint from the labelled mask and from each other
    cover = ds.masks.astype(int) + ds.distractor_masks.sum(axis=1)
    assert cover.max() == 1
    # each distractor is brighter than the background, in every channel
    for i in range(min(n, 10)):
        bgpix = cover[i] == 0
        for j in range(k):
            m = ds.distractor_masks[i, j]
            assert np.all(ds.images[i][:, m].mean(axis=1) - ds.images[i][:, bgpix].mean(axis=1) > 0.2)


def test_make_shapes_distractors_keep_the_labelled_data():
    plain = make_shapes(40, 32, seed=9)
    ds = make_shapes(40, 32, seed=9, distractors=3)
    for name in ("labels", "boxes", "masks"):
        np.testing.assert_array_equal(getattr(ds, name), getattr(plain, name))
    outside = ~ds.distractor_masks.any(axis=1)[:, None]
    np.testing.assert_array_equal(ds.images[outside], plain.images[outside])
    assert not np.array_equal(ds.images, plain.images)


def test_make_shapes_distractors_seed_and_classes():
    a, b = make_shapes(30, 24, seed=2, distractors=2), make_shapes(30, 24, seed=2, distractors=2)
    for name in ("images", "labels", "boxes", "masks", "distractor_labels", "distractor_boxes", "distractor_masks"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_shapes(30, 24, seed=3, distractors=2)
    assert not np.array_equal(a.distractor_boxes, c.distractor_boxes)
    # uniform over the other classes: each label's distractors spread evenly over the other three
    ds = make_shapes(600, 24, seed=0, distractors=1)
    for c in range(len(SHAPES)):
        counts = np.bincount(ds.distractor_labels[ds.labels == c, 0], minlength=len(SHAPES))
        assert counts[c] == 0 and np.all(np.delete(counts, c) > 30), (c, counts)
    # two classes: the distractor is always the other one; subset keeps them
    ds = make_shapes(20, 24, seed=0, classes=("cross", "circle"), distractors=1)
    np.testing.assert_array_equal(ds.distractor_labels[:, 0], 1 - ds.labels)
    sub = ds.subset([1, 4])
    np.testing.assert_array_equal(sub.distractor_masks, ds.distractor_masks[[1, 4]])


def test_make_shapes_distractors_npz(tmp_path):
    ds = make_shapes(6, 20, seed=1, distractors=2)
    ds.save_npz(tmp_path / "d.npz")
    back = ArrayDataset.from_npz(tmp_path / "d.npz")
    assert set(back.extras) == set(ds.extras)
    for k, v in ds.extras.items():
        np.testing.assert_array_equal(back.extras[k], v)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(distractors=-1), ValueError), (dict(distractors=True), TypeError), (dict(distractors=1.0), TypeError),
    (dict(distractors="2"), TypeError), (dict(distractors=1, classes=("square",)), ValueError),
    (dict(distractors=1, size=8), ValueError), (dict(distractors=12, size=24), ValueError)])
def test_make_shapes_distractors_exception(kwargs, exc):
    with pytest.raises(exc, match="distractors"):
        make_shapes(20, **{"size": 32, **kwargs})


# ---- ArrayDataset ------------------------------------------------------------------------------------

def test_array_dataset_indexing():
    ds = _ids(10, k=3)
    assert len(ds) == 10 and ds.num_classes == 3 and ds.classes is None
    x, y = ds[4]
    assert x.shape == (1, 2, 2) and int(y) == 1
    x, y = ds[2:5]
    np.testing.assert_array_equal(_batch_ids(x), [2, 3, 4])
    np.testing.assert_array_equal(y, [2, 0, 1])
    x, y = ds[np.array([9, 0, 9])]
    np.testing.assert_array_equal(_batch_ids(x), [9, 0, 9])
    x, y = ds[ds.labels == 0]
    np.testing.assert_array_equal(_batch_ids(x), [0, 3, 6, 9])
    assert "ArrayDataset" in repr(ds)


def test_array_dataset_labels():
    x = np.zeros((4, 3), np.float32)
    ds = ArrayDataset(x, np.array([0, 1, 2, 1], dtype=np.uint8), classes=["a", "b", "c"])
    assert ds.labels.dtype == np.int64 and ds.classes == ("a", "b", "c") and ds.num_classes == 3
    soft = np.full((4, 5), 0.2, np.float32)
    ds = ArrayDataset(x, soft)
    assert ds.labels is soft and ds.num_classes == 5
    assert ds.images is x  # kept as given, not copied


def test_array_dataset_extras():
    ds = make_shapes(12, 16, seed=0)
    assert set(ds.extras) == {"boxes", "masks"}
    sub = ds.subset([3, 5, 7])
    np.testing.assert_array_equal(sub.boxes, ds.boxes[[3, 5, 7]])
    np.testing.assert_array_equal(sub.masks, ds.masks[[3, 5, 7]])
    assert sub.classes == ds.classes
    with pytest.raises(AttributeError, match="nothing"):
        _ = ds.nothing


def test_array_dataset_npz_round_trip(tmp_path):
    ds = make_shapes(20, 16, seed=2)
    for compressed in (False, True):
        path = tmp_path / f"shapes_{compressed}.npz"
        ds.save_npz(path, compressed=compressed)
        back = ArrayDataset.from_npz(path)
        for name in ("images", "labels", "boxes", "masks"):
            np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
            assert getattr(back, name).dtype == getattr(ds, name).dtype
        assert back.classes == ds.classes
    # a user's own file with other key names (and keys that are not used)
    path = tmp_path / "own.npz"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8), np.array([1, 0, 1, 1, 0, 0])
    np.savez(path, x_train=x, y_train=y, x_test=x[:2])
    back = ArrayDataset.from_npz(str(path), images_key="x_train", labels_key="y_train")
    np.testing.assert_array_equal(back.images, x)
    np.testing.assert_array_equal(back.labels, y)
    assert back.classes is None and back.extras == {}
    with pytest.raises(ValueError, match="images_key"):
        ArrayDataset.from_npz(path)
    with pytest.raises(ValueError, match="labels_key"):
        ArrayDataset.from_npz(path, images_key="x_train")
    with pytest.raises(TypeError, match="path"):
        ArrayDataset.from_npz(3)


@pytest.mark.parametrize("images, labels, kwargs, exc, name", [
    (np.zeros((4, 2)), np.arange(3), {}, ValueError, "labels"),
    (np.zeros((4, 2)), np.array([0, 1, -1, 0]), {}, ValueError, "labels"),
    (np.zeros((4, 2)), np.zeros(4, np.float32), {}, TypeError, "labels"),
    (np.zeros((4, 2)), np.zeros(4, bool), {}, TypeError, "labels"),
    (np.zeros((4, 2)), np.zeros((4, 2), np.int64), {}, ValueError, "labels"),
    (np.zeros((4, 2)), np.zeros((3, 2), np.float32), {}, ValueError, "labels"),
    (np.zeros(4), np.arange(4), {}, ValueError, "images"),
    (np.array([None] * 4).reshape(4, 1), np.arange(4), {}, TypeError, "images"),
    (np.zeros((4, 2)), np.arange(4), dict(classes=("a", "b")), ValueError, "classes"),
    (np.zeros((4, 2)), np.arange(4), dict(classes="abcd"), TypeError, "classes"),
    (np.zeros((4, 2)), np.arange(4), dict(classes=4), TypeError, "classes"),
    (np.zeros((4, 2)), np.arange(4), dict(classes=[0, 1, 2, 3]), TypeError, "classes"),
    (np.zeros((4, 2)), np.zeros((4, 3), np.float32), dict(classes=("a", "b")), ValueError, "classes"),
    (np.zeros((4, 2)), np.arange(4), dict(extras={"boxes": np.zeros((3, 4))}), ValueError, "extras"),
    (np.zeros((4, 2)), np.arange(4), dict(extras={"labels": np.zeros(4)}), ValueError, "extras")])
def test_array_dataset_exception(images, labels, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        ArrayDataset(images, labels, **kwargs)


# ---- train_test_split -------------------------------------------------------------------------------

def test_split_stratified_proportions():
    ds = load_digits()
    ids = ArrayDataset(np.arange(len(ds), dtype=np.float32)[:, None], ds.labels)
    for test_size in (0.25, 0.1, 0.5):
        train, test = train_test_split(ids, test_size, seed=0)
        tr, te = train.images[:, 0].astype(int), test.images[:, 0].astype(int)
        assert np.intersect1d(tr, te).size == 0
        np.testing.assert_array_equal(np.sort(np.r_[tr, te]), np.arange(len(ds)))
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)  # original order kept
        np.testing.assert_array_equal(train.labels, ds.labels[tr])
        np.testing.assert_array_equal(test.labels, ds.labels[te])
        n_c = np.bincount(ds.labels)
        np.testing.assert_array_equal(np.bincount(test.labels), np.floor(test_size * n_c + 0.5))
        assert abs(len(test) - test_size * len(ds)) <= 10


def test_split_small_classes():
    labels = np.array([0] * 8 + [1] * 2 + [2])  # a class of two gets one test sample; a class of one none
    ds = ArrayDataset(np.zeros((11, 1), np.float32), labels)
    train, test = train_test_split(ds, test_size=0.1)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=3), [1, 1, 0])
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=3), [7, 1, 1])


def test_split_seed_and_options():
    ids = _ids(60, k=3)
    a = train_test_split(ids, seed=1)[1].images
    np.testing.assert_array_equal(a, train_test_split(ids, seed=1)[1].images)
    assert not np.array_equal(a, train_test_split(ids, seed=2)[1].images)
    _, test = train_test_split(ids, 0.3, stratify=False, seed=0)
    assert len(test) == 18
    _, test = train_test_split(ids, 12, seed=0)  # a count: 4 per class
    np.testing.assert_array_equal(np.bincount(test.labels), [4, 4, 4])
    soft = ArrayDataset(ids.images, np.eye(3, dtype=np.float32)[ids.labels])  # stratified by argmax
    _, test = train_test_split(soft, 12, seed=0)
    np.testing.assert_array_equal(test.labels.sum(axis=0), [4, 4, 4])


def test_split_carries_extras():
    train, test = train_test_split(make_shapes(80, 16, seed=0), 0.25)
    for part in (train, test):
        np.testing.assert_array_equal(_mask_boxes(part.masks), part.boxes)
        assert part.classes == SHAPES


@pytest.mark.parametrize("args, kwargs, exc, name", [
    (((np.zeros((4, 1)), np.arange(4)),), {}, TypeError, "dataset"),
    ((ArrayDataset(np.zeros((1, 1)), [0]),), {}, ValueError, "dataset"),
    ((_ids(10),), dict(test_size=0.0), ValueError, "test_size"),
    ((_ids(10),), dict(test_size=1.0), ValueError, "test_size"),
    ((_ids(10),), dict(test_size=10), ValueError, "test_size"),
    ((_ids(10),), dict(test_size=0), ValueError, "test_size"),
    ((_ids(10),), dict(test_size=True), TypeError, "test_size"),
    ((_ids(10),), dict(test_size="0.2"), TypeError, "test_size"),
    ((_ids(10),), dict(stratify=None), TypeError, "stratify"),
    ((_ids(10),), dict(seed=1.5), TypeError, "seed")])
def test_split_exception(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        train_test_split(*args, **kwargs)


# ---- DataLoader -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_cardinality(shuffle):
    ds = _ids(103, k=4)
    loader = DataLoader(ds, 10, shuffle=shuffle, seed=0)
    assert len(loader) == 11
    batches = list(loader)
    assert len(batches) == 11
    assert [len(x) for x, _ in batches] == [10] * 10 + [3]
    for x, y in batches:
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(y, _batch_ids(x) % 4)  # labels stay with their images
    order = np.concatenate([_batch_ids(x) for x, _ in batches])
    np.testing.assert_array_equal(np.sort(order), np.arange(103))  # each sample exactly once
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(103))
        np.testing.assert_array_equal(_epoch(loader), order)
    else:
        assert not np.array_equal(order, np.arange(103))


def test_loader_epochs_and_seed():
    ds = _ids(50)
    a, b = DataLoader(ds, 8, seed=5), DataLoader(ds, 8, seed=5)
    ea = [_epoch(a) for _ in range(3)]
    eb = [_epoch(b) for _ in range(3)]
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(x, y)  # same seed, same sequence of epochs
    assert not np.array_equal(ea[0], ea[1]) and not np.array_equal(ea[1], ea[2])
    assert not np.array_equal(_epoch(DataLoader(ds, 8, seed=6)), ea[0])


def test_loader_drop_last():
    ds = _ids(103)
    loader = DataLoader(ds, 10, drop_last=True, seed=0)
    assert len(loader) == 10
    batches = list(loader)
    assert len(batches) == 10 and all(len(x) == 10 for x, _ in batches)
    order = np.concatenate([_batch_ids(x) for x, _ in batches])
    assert len(np.unique(order)) == 100
    assert len(DataLoader(_ids(100), 10, drop_last=True)) == 10  # nothing dropped when it divides
    big = DataLoader(ds, 200, drop_last=True)
    assert len(big) == 0 and list(big) == []


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_sgd_and_full_batch(shuffle):
    ds = _ids(17)
    sgd = DataLoader(ds, 1, shuffle=shuffle, seed=0)
    assert len(sgd) == 17
    batches = list(sgd)
    assert all(x.shape == (1, 1, 2, 2) and y.shape == (1,) for x, y in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate([_batch_ids(x) for x, _ in batches])), np.arange(17))
    for bs in (17, 100):
        full = DataLoader(ds, bs, shuffle=shuffle, seed=0)
        assert len(full) == 1
        (x, y), = list(full)
        assert x.shape == ds.images.shape
        np.testing.assert_array_equal(np.sort(_batch_ids(x)), np.arange(17))
        if not shuffle:
            np.testing.assert_array_equal(x, ds.images)
            np.testing.assert_array_equal(y, ds.labels)


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_batches_are_fresh(shuffle):
    ds = _ids(20)
    before = ds.images.copy()
    kept = []
    for x, y in DataLoader(ds, 6, shuffle=shuffle, seed=0):
        assert x.flags.c_contiguous and y.flags.c_contiguous
        assert not np.shares_memory(x, ds.images) and not np.shares_memory(y, ds.labels)
        kept.append(x)
        x[...] = -1  # the caller may write into a batch
    np.testing.assert_array_equal(ds.images, before)
    assert len({id(x) for x in kept}) == len(kept)


def test_loader_augment_hook_with_labels():
    ds = _ids(25, k=5)
    calls = []

    def aug(images, labels=None):
        calls.append((images.copy(), labels.copy()))
        return images * 2, labels + 100

    loader = DataLoader(ds, 10, augment=aug, seed=0)
    out = list(loader)
    assert len(calls) == len(loader) == 3
    for (x_in, y_in), (x, y) in zip(calls, out):
        np.testing.assert_array_equal(y_in, _batch_ids(x_in) % 5)  # the batch's labels, passed through
        np.testing.assert_array_equal(x, x_in * 2)
        np.testing.assert_array_equal(y, y_in + 100)


def test_loader_augment_hook_images_only():
    calls = []

    def aug(images):
        calls.append(len(images))
        return images + 1

    out = list(DataLoader(_ids(25), 10, shuffle=False, augment=aug))
    assert calls == [10, 10, 5]
    np.testing.assert_array_equal(out[0][0][:, 0, 0, 0], np.arange(10) + 1)


def test_loader_augment_pipeline_on_uint8_digits():
    ds = load_digits(as_uint8=True)
    sub = ds.subset(np.arange(100))
    pipe = A.Compose([A.RandomHorizontalFlip(p=0.5), A.Normalize(mean=(0.5,), std=(0.5,)),
                      A.MixUp(alpha=1.0, num_classes=10)], seed=0)
    loader = DataLoader(sub, 32, augment=pipe, seed=0)
    batches = list(loader)
    assert len(batches) == 4
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
        assert -1.0 <= x.min() and x.max() <= 1.0
        assert y.shape == (len(x), 10) and np.issubdtype(y.dtype, np.floating)  # MixUp's soft labels
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    # without label-changing steps the class indices come through unchanged
    plain = DataLoader(sub, 100, shuffle=False, augment=A.Normalize(mean=(0.0,), std=(1.0,)))
    (x, y), = list(plain)
    np.testing.assert_array_equal(y, sub.labels)
    np.testing.assert_allclose(x[:, 0], sub.images[..., 0] / 255.0, atol=1e-6)


def test_loader_generic_dataset():
    class Squares:
        def __len__(self):
            return 7

        def __getitem__(self, idx):
            idx = np.asarray(idx)
            return (idx ** 2).astype(np.float32)[:, None], idx % 2

    x, y = next(iter(DataLoader(Squares(), 7, shuffle=False)))
    np.testing.assert_array_equal(x[:, 0], np.arange(7) ** 2)
    np.testing.assert_array_equal(y, np.arange(7) % 2)


def test_loader_empty_dataset():
    ds = ArrayDataset(np.zeros((0, 1, 2, 2), np.float32), np.zeros(0, np.int64))
    loader = DataLoader(ds, 4)
    assert len(loader) == 0 and list(loader) == []


def test_loader_augment_bad_returns():
    ds = _ids(8)
    with pytest.raises(TypeError, match="augment"):
        list(DataLoader(ds, 4, augment=lambda images, labels=None: images))
    with pytest.raises(TypeError, match="augment"):
        list(DataLoader(ds, 4, augment=lambda images: (images, None)))
    with pytest.raises(ValueError, match="augment"):
        list(DataLoader(ds, 4, augment=lambda images: images[:2]))


@pytest.mark.parametrize("args, kwargs, exc, name", [
    ((5,), {}, TypeError, "dataset"),
    ((_ids(8), 0), {}, ValueError, "batch_size"), ((_ids(8), 2.5), {}, TypeError, "batch_size"),
    ((_ids(8), True), {}, TypeError, "batch_size"),
    ((_ids(8),), dict(shuffle="yes"), TypeError, "shuffle"), ((_ids(8),), dict(drop_last=1), TypeError, "drop_last"),
    ((_ids(8),), dict(augment=3), TypeError, "augment"), ((_ids(8),), dict(seed=-1), ValueError, "seed")])
def test_loader_exception(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        DataLoader(*args, **kwargs)
