"""Cutout / random erasing: samplers, the batched fill (compiled kernel) and the transform classes."""
import numpy as np
import pytest

import cnnkit
from cnnkit.augment import Cutout, RandomErasing
from cnnkit.augment import functional as F
from conftest import assert_bitwise, num_threads


def _reference(x, boxes, fill, nhwc):
    """Plain NumPy: copy, then fill each box (mean of the original image per channel)."""
    out = x.copy()
    for n in range(x.shape[0]):
        img = x[n].astype(np.float64)
        C = x.shape[3] if nhwc else x.shape[1]
        if isinstance(fill, str):
            vals = img.mean(axis=(0, 1)) if nhwc else img.mean(axis=(1, 2))
        else:
            vals = np.broadcast_to(np.asarray(fill, np.float64).reshape(-1), (C,))
        if x.dtype == np.uint8:
            vals = np.clip(np.rint(vals), 0, 255)
        vals = vals.astype(x.dtype)
        for y0, x0, y1, x1 in boxes[n]:
            if nhwc:
                out[n, y0:y1, x0:x1, :] = vals
            else:
                out[n, :, y0:y1, x0:x1] = vals[:, None, None]
    return out


CASES = [(np.uint8, "NHWC"), (np.float32, "NCHW"), (np.float32, "NHWC"), (np.float64, "NCHW")]


@pytest.mark.parametrize("fill", [0, 200, (10, 20, 30), "mean"], ids=str)
@pytest.mark.parametrize("dtype,layout", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_cutout_fill_matches_numpy(dtype, layout, fill, rng):
    shape = (5, 11, 13, 3) if layout == "NHWC" else (5, 3, 11, 13)
    x = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.standard_normal(shape)).astype(dtype)
    snap = x.copy()
    prm = F.sample_cutout_params(rng, 5, (11, 13), 5, num_holes=3)
    out = F.cutout(x, prm["boxes"], fill, layout=layout)
    assert_bitwise(x, snap, "input unchanged")
    ref = _reference(x, prm["boxes"], fill, layout == "NHWC")
    if fill == "mean" and dtype != np.uint8:
        # the kernel sums in order, NumPy pairwise: the means agree to rounding
        np.testing.assert_allclose(out, ref, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)
    else:
        assert_bitwise(out, ref, f"cutout fill={fill}")


def test_random_fill_copies_the_noise_inside_the_boxes(rng):
    x = rng.integers(0, 256, (3, 9, 10, 3), dtype=np.uint8)
    prm = F.sample_erasing_params(rng, 3, (9, 10), p=1.0)
    noise = F.random_fill_noise(rng, x)
    out = F.cutout(x, prm["boxes"], "random", noise=noise)
    for n in range(3):
        y0, x0, y1, x1 = prm["boxes"][n, 0]
        inside = np.zeros((9, 10), bool)
        inside[y0:y1, x0:x1] = True
        assert_bitwise(out[n][inside], noise[n][inside], "noise inside")
        assert_bitwise(out[n][~inside], x[n][~inside], "image outside")


def test_single_image_and_neutral_parameters(rng):
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = F.cutout(img, np.array([[2, 2, 4, 5]]), 9)
    assert out.shape == img.shape and np.all(out[2:4, 2:5] == 9) and out[0, 0, 0] == img[0, 0, 0]
    assert_bitwise(F.cutout(img, np.zeros((1, 4), np.int64), 9), img, "empty box is the identity")
    p0 = F.sample_cutout_params(rng, 4, (8, 8), 3, p=0.0)
    assert not p0["applied"].any() and not p0["boxes"].any()
    assert not F.sample_erasing_params(rng, 4, (8, 8), p=0.0)["applied"].any()
    # a 1x1 image only ever gets 0-sized boxes (torchvision accepts them): nothing is erased
    e = F.sample_erasing_params(rng, 8, (1, 1), p=1.0)
    assert not e["applied"].any()
    one = rng.integers(0, 256, (8, 1, 1, 3), dtype=np.uint8)
    assert_bitwise(F.cutout(one, e["boxes"], 7), one, "1x1 images unchanged")


def test_samplers_respect_their_ranges(rng):
    prm = F.sample_cutout_params(rng, 200, (20, 30), 8, num_holes=2)
    b = prm["boxes"].reshape(-1, 4)
    assert np.all((0 <= b[:, 0]) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= 20))
    assert np.all((0 <= b[:, 1]) & (b[:, 1] <= b[:, 3]) & (b[:, 3] <= 30))
    assert np.all(b[:, 2] - b[:, 0] <= 8) and np.all(b[:, 3] - b[:, 1] <= 8)
    assert np.any(b[:, 2] - b[:, 0] < 8), "holes near the border are clipped"
    e = F.sample_erasing_params(rng, 300, (40, 50), scale=(0.1, 0.2), ratio=(0.5, 2.0), p=1.0)
    h = e["boxes"][:, 0, 2] - e["boxes"][:, 0, 0]
    w = e["boxes"][:, 0, 3] - e["boxes"][:, 0, 1]
    frac = h * w / 2000.0
    assert e["applied"].all()
    assert np.all((frac > 0.1 * 0.8) & (frac < 0.2 * 1.25)), "area within scale (up to rounding)"
    assert np.all((h / w > 0.5 * 0.7) & (h / w < 2.0 / 0.7)), "aspect within ratio (up to rounding)"


def test_same_on_batch(rng):
    c = F.sample_cutout_params(rng, 5, (16, 16), 4, num_holes=2, same_on_batch=True)
    assert np.all(c["boxes"] == c["boxes"][0]) and np.all(c["applied"] == c["applied"][0])
    e = F.sample_erasing_params(rng, 5, (16, 16), p=1.0, same_on_batch=True)
    assert np.all(e["boxes"] == e["boxes"][0])
    d = F.sample_cutout_params(rng, 64, (16, 16), 4)
    assert len({tuple(b) for b in d["boxes"][:, 0]}) > 1, "per-image by default"
    x = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    t = Cutout(5, same_on_batch=True, seed=1)
    t(x)
    assert np.all(t.last_params["boxes"] == t.last_params["boxes"][0])


def test_transforms_seed_replay_and_labels(rng):
    x = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    for make in (lambda: Cutout(5, num_holes=2, fill="random", seed=3),
                 lambda: RandomErasing(p=0.7, value=(1, 2, 3), seed=3)):
        a, b = make(), make()
        ya = a(x)
        assert_bitwise(b(x), ya, "same seed")
        assert_bitwise(a(x, params=a.last_params), ya, "replay")
        out, lab = a(x, labels=np.arange(6))
        assert np.array_equal(lab, np.arange(6))


def test_same_bits_at_one_and_two_threads(rng):
    x = rng.standard_normal((9, 3, 30, 31)).astype(np.float32)
    prm = F.sample_cutout_params(rng, 9, (30, 31), 9, num_holes=2)
    outs = []
    for t in (1, 2):
        with num_threads(t):
            outs.append((F.cutout(x, prm["boxes"], "mean"), F.cutout(x, prm["boxes"], (0.5, 1.5, 2.5))))
    assert_bitwise(outs[1][0], outs[0][0], "mean fill at 2 threads vs 1")
    assert_bitwise(outs[1][1], outs[0][1], "constant fill at 2 threads vs 1")


def test_bad_input(rng):
    x = rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    box = np.array([[[0, 0, 2, 2]]] * 2)
    cases = [
        (lambda: F.cutout(x.astype(np.float16), box), TypeError, "images"),
        (lambda: F.cutout(x, box, (1, 2)), ValueError, "fill"),
        (lambda: F.cutout(x, box, 300), ValueError, "fill"),
        (lambda: F.cutout(x, box, "median"), ValueError, "fill"),
        (lambda: F.cutout(x, box, "random"), ValueError, "noise"),
        (lambda: F.cutout(x, np.array([[[0, 0, 7, 2]]] * 2)), ValueError, "boxes"),
        (lambda: F.cutout(x, np.array([[[3, 0, 2, 2]]] * 2)), ValueError, "boxes"),
        (lambda: F.cutout(x, box[:1]), ValueError, "boxes"),
        (lambda: F.cutout(x, box, layout="CHW"), ValueError, "layout"),
        (lambda: F.sample_cutout_params(rng, 2, (6, 6), 0), ValueError, "size"),
        (lambda: F.sample_cutout_params(rng, 2, (6, 6), 2, p=2.0), ValueError, "p"),
        (lambda: F.sample_erasing_params(rng, 2, (6, 6), scale=(0.5, 0.1)), ValueError, "scale"),
        (lambda: F.sample_erasing_params(rng, 2, (6, 6), ratio=(0.0, 1.0)), ValueError, "ratio"),
        (lambda: F.sample_erasing_params(rng, 2, (0, 6)), ValueError, "image_size"),
        (lambda: Cutout(3, fill="median"), ValueError, "fill"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()


def test_public_names():
    for name in ("cutout", "sample_cutout_params", "sample_erasing_params", "random_fill_noise"):
        assert getattr(cnnkit.augment.functional, name) is getattr(cnnkit.augment, name)
