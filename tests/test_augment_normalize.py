"""Tests for cnnkit.augment.functional.to_float_normalize and denormalize.

Layers (STYLE.md, Tests):

* named edge cases: 1x1, 7x5, 33x17, 15/16/17 wide (around the 8/16-lane float32 vectors), one
  224x224, C = 1, 3, 4, single images and batches, all three modes, both output layouts, mean/std
  as lists, tuples, float32 and float64 arrays (or only one of them, or neither); a constant image
  (max == min, s == 0) and a near-constant one (s < 1/sqrt(n), the floor of per-image
  standardisation) mixed with random images;
* hypothesis properties over shapes, modes, layouts, image contents, mean/std forms and `out=`
  against the float64 references of tests/reference/augment.py; the denormalize round trip;
* invariants: per-image mean 0 / std 1 (mode="image"), min 0 / max 1 (mode="minmax"), the
  round trip denormalize(to_float_normalize(img, m, s), m, s) == img EXACTLY;
* the same bits at 1 and 2 threads, every ISA level against the reference;
* bad input: the documented exception naming the argument; `out=` reuse; inputs not modified.

Tolerance (float32 arithmetic on O(1..10) results): |y - ref| <= 2e-6 * max(1, |ref|), also for
ill-conditioned images (low contrast at a high level): the implementation subtracts the centre as
a float hi/lo pair before scaling, so nothing cancels. (An x*scale + shift evaluation would need
an extra 4 * 2**-24 * (|x*scale| + |shift|) there; see test_low_contrast_bright_images_exact.)
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit.augment.functional as F
from conftest import assert_bitwise, import_torchvision, num_threads
from reference import augment as R

SETTINGS = settings(max_examples=30, deadline=None)
MODES = ("channel", "image", "minmax")
LAYOUTS = ("NCHW", "NHWC")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
U = 2.0 ** -24  # float32 unit roundoff


# ---- helpers ------------------------------------------------------------------------------------

def assert_within(actual, images, mean=None, std=None, mode="channel", layout_out="NCHW",
                  what="to_float_normalize"):
    """`actual` is float32, C-contiguous, of the reference's shape and within the bound above."""
    ref = R.to_float_normalize(images, mean, std, mode, layout_out)
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype} != float32"
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    assert actual.flags.c_contiguous, f"{what}: output is not C-contiguous"
    check_bound(actual, ref, 2e-6 * np.maximum(1.0, np.abs(ref)), what)


def check_bound(actual, ref, bound, what):
    err = np.abs(np.asarray(actual, dtype=np.float64) - ref)
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf) - bound,
                                                  -np.inf)), ref.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.size} elements out of tolerance;"
                             f" worst at index {idx}: got {actual[idx]!r}, expected "
                             f"{ref[idx]!r} (bound {bound[idx]:.3g})")


def out_shape(shape, layout_out):
    """Output shape for an input of `shape` ((N, H, W, C) or (H, W, C))."""
    if layout_out == "NHWC":
        return tuple(shape)
    *lead, h, w, c = shape
    return (*lead, c, h, w)


def random_images(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def channel_params(rng, c):
    """ImageNet mean/std for C = 3, random plausible ones otherwise."""
    if c == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (tuple(rng.uniform(0.2, 0.6, c).tolist()), tuple(rng.uniform(0.15, 0.4, c).tolist()))


def params_for(mode, rng, c):
    return channel_params(rng, c) if mode == "channel" else (None, None)


def as_form(v, form):
    """`v` (a sequence of floats) as a list, tuple, float32 or float64 array."""
    if v is None:
        return None
    return {"list": list, "tuple": tuple,
            "f32": lambda a: np.asarray(a, dtype=np.float32),
            "f64": lambda a: np.asarray(a, dtype=np.float64)}[form](v)


def flat_images(y, layout_out, single):
    """Per-image flattened output (N, n)."""
    y = y[None] if single else y
    return y.reshape(y.shape[0], -1)


# ---- named edge cases ---------------------------------------------------------------------------

EDGE_SHAPES = [
    (1, 1, 1), (1, 1, 3), (7, 5, 1), (7, 5, 3), (7, 5, 4), (33, 17, 3), (33, 17, 4),
    (1, 1, 1, 3), (2, 1, 1, 4), (3, 7, 5, 1), (2, 33, 17, 3), (2, 15, 16, 4), (3, 17, 15, 3),
    (2, 16, 16, 1), (5, 3, 33, 3),
]


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_edge_to_float_normalize(shape, mode, layout_out, rng):
    images = random_images(rng, shape)
    mean, std = params_for(mode, rng, shape[-1])
    y = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out)
    assert y.shape == out_shape(shape, layout_out)
    assert_within(y, images, mean, std, mode, layout_out)


@pytest.mark.parametrize("mode", MODES)
def test_one_224x224_image(mode, rng):
    images = random_images(rng, (224, 224, 3))
    mean, std = params_for(mode, rng, 3)
    y = F.to_float_normalize(images, mean, std, mode=mode)
    assert y.shape == (3, 224, 224)
    assert_within(y, images, mean, std, mode, "NCHW")


def test_defaults_are_channel_mode_nchw_x_over_255(rng):
    images = random_images(rng, (2, 7, 5, 3))
    y = F.to_float_normalize(images)
    assert y.shape == (2, 3, 7, 5)
    assert_within(y, images)
    check_bound(y, images.transpose(0, 3, 1, 2) / 255.0,
                np.full(y.shape, 2e-6), "x/255")


@pytest.mark.parametrize("form", ["list", "tuple", "f32", "f64"])
@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("c", [1, 3, 4])
def test_mean_std_forms(c, layout_out, form, rng):
    images = random_images(rng, (2, 9, 11, c))
    mean, std = channel_params(rng, c)
    y = F.to_float_normalize(images, as_form(mean, form), as_form(std, form),
                             layout=layout_out)
    # float32 arrays hold slightly different numbers than the Python floats: use what was given
    assert_within(y, images, as_form(mean, form), as_form(std, form), "channel", layout_out)


@pytest.mark.parametrize("which", ["mean", "std"])
def test_only_mean_or_only_std(which, rng):
    images = random_images(rng, (2, 7, 5, 3))
    kw = {"mean": IMAGENET_MEAN} if which == "mean" else {"std": IMAGENET_STD}
    y = F.to_float_normalize(images, **kw)
    assert_within(y, images, kw.get("mean"), kw.get("std"), "channel", "NCHW")


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", ["image", "minmax"])
def test_constant_image_gives_zeros_beside_random_ones(mode, layout_out, rng):
    """max == min (minmax) and s == 0 (image) give all zeros; the other images are unaffected.
    The output buffer starts as NaN, so an unwritten element cannot pass as a zero."""
    images = random_images(rng, (3, 7, 5, 3))
    images[1] = 200
    out = np.full(out_shape(images.shape, layout_out), np.nan, dtype=np.float32)
    y = F.to_float_normalize(images, mode=mode, layout=layout_out, out=out)
    assert y is out
    assert_within(y, images, None, None, mode, layout_out)
    assert np.all(y[1] == 0.0), f"constant image: got {y[1].ravel()[:5]}"
    # a single constant image too
    one = np.full((7, 5, 3), 17, dtype=np.uint8)
    y1 = F.to_float_normalize(one, mode=mode, layout=layout_out)
    assert y1.shape == out_shape(one.shape, layout_out)
    assert np.all(y1 == 0.0)


def test_constant_image_in_channel_mode(rng):
    images = random_images(rng, (2, 5, 7, 3))
    images[0] = 255
    y = F.to_float_normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    assert_within(y, images, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("level", [3, 200])
def test_near_constant_image_uses_the_std_floor(level, layout_out, rng):
    """One value differs by 1: s = sqrt((1 - 1/n)/n) < 1/sqrt(n), so the divisor is 1/sqrt(n)."""
    images = random_images(rng, (2, 7, 5, 3))
    images[0] = level
    images[0, 3, 2, 1] = level + 1
    y = F.to_float_normalize(images, mode="image", layout=layout_out)
    assert_within(y, images, None, None, "image", layout_out)
    n = 7 * 5 * 3
    odd = y[0, 1, 3, 2] if layout_out == "NCHW" else y[0, 3, 2, 1]
    assert abs(odd - (1 - 1 / n) * np.sqrt(n)) <= 1e-4 * np.sqrt(n)


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("single", [False, True])
def test_image_mode_has_mean_zero_std_one(single, layout_out, rng):
    images = random_images(rng, (13, 11, 3) if single else (4, 13, 11, 3))
    y = F.to_float_normalize(images, mode="image", layout=layout_out)
    f = flat_images(y.astype(np.float64), layout_out, single)
    np.testing.assert_allclose(f.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(f.std(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("single", [False, True])
def test_minmax_mode_spans_zero_to_one(single, layout_out, rng):
    images = random_images(rng, (13, 11, 4) if single else (4, 13, 11, 4))
    images.reshape(-1)[:: 37] = np.uint8(17)  # make sure min/max are not always 0/255
    y = F.to_float_normalize(images, mode="minmax", layout=layout_out)
    f = flat_images(y.astype(np.float64), layout_out, single)
    np.testing.assert_allclose(f.min(axis=1), 0.0, atol=2e-6)
    np.testing.assert_allclose(f.max(axis=1), 1.0, atol=2e-6)


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_single_image_matches_batch_of_one(mode, layout_out, rng):
    img = random_images(rng, (9, 7, 3))
    mean, std = params_for(mode, rng, 3)
    y1 = F.to_float_normalize(img, mean, std, mode=mode, layout=layout_out)
    yb = F.to_float_normalize(img[None], mean, std, mode=mode, layout=layout_out)
    assert y1.shape == yb.shape[1:]
    np.testing.assert_allclose(y1, yb[0], rtol=4e-7, atol=4e-7)


def test_empty_batch(rng):
    images = np.zeros((0, 7, 5, 3), dtype=np.uint8)
    for mode in MODES:
        mean, std = params_for(mode, rng, 3)
        y = F.to_float_normalize(images, mean, std, mode=mode)
        assert y.shape == (0, 3, 7, 5) and y.dtype == np.float32


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_input(mode, rng):
    base = random_images(rng, (3, 14, 11, 4))
    images = base[::2, ::2, 1:, :3]  # strided view, (2, 7, 10, 3)
    mean, std = params_for(mode, rng, 3)
    y = F.to_float_normalize(images, mean, std, mode=mode)
    assert_within(y, np.ascontiguousarray(images), mean, std, mode, "NCHW")


@pytest.mark.parametrize("mode", MODES)
def test_inputs_not_modified(mode, rng):
    images = random_images(rng, (2, 7, 5, 3))
    keep = images.copy()
    mean = np.array(IMAGENET_MEAN) if mode == "channel" else None
    std = np.array(IMAGENET_STD) if mode == "channel" else None
    F.to_float_normalize(images, mean, std, mode=mode)
    assert_bitwise(images, keep, "images")
    if mean is not None:
        assert_bitwise(mean, np.array(IMAGENET_MEAN), "mean")
        assert_bitwise(std, np.array(IMAGENET_STD), "std")


# ---- out= -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 7, 5, 3), (7, 5, 1)], ids=["batch", "single"])
def test_out_is_filled_and_returned(shape, mode, layout_out, rng):
    images = random_images(rng, shape)
    mean, std = params_for(mode, rng, shape[-1])
    out = np.full(out_shape(shape, layout_out), np.nan, dtype=np.float32)
    y = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out, out=out)
    assert y is out
    assert_within(out, images, mean, std, mode, layout_out)
    # reuse: a second call overwrites everything
    images2 = random_images(rng, shape)
    y2 = F.to_float_normalize(images2, mean, std, mode=mode, layout=layout_out, out=out)
    assert y2 is out
    assert_within(out, images2, mean, std, mode, layout_out)


def _bad_outs():
    good = (2, 3, 7, 5)
    yield "wrong-shape", np.zeros((2, 7, 5, 3), np.float32), ValueError
    yield "missing-batch", np.zeros((3, 7, 5), np.float32), ValueError
    yield "float64", np.zeros(good, np.float64), (TypeError, ValueError)
    yield "uint8", np.zeros(good, np.uint8), (TypeError, ValueError)
    yield "non-contiguous", np.zeros((2, 3, 7, 10), np.float32)[..., ::2], ValueError
    ro = np.zeros(good, np.float32)
    ro.flags.writeable = False
    yield "read-only", ro, ValueError
    yield "list", np.zeros(good, np.float32).tolist(), TypeError


@pytest.mark.parametrize("name,out,exc", list(_bad_outs()), ids=[b[0] for b in _bad_outs()])
def test_bad_out(name, out, exc, rng):
    images = random_images(rng, (2, 7, 5, 3))
    with pytest.raises(exc, match="out"):
        F.to_float_normalize(images, out=out)


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int8, np.int32, np.bool_])
def test_non_uint8_images_raise_type_error(dtype):
    images = np.zeros((2, 7, 5, 3), dtype=dtype)
    with pytest.raises(TypeError):
        F.to_float_normalize(images)


@pytest.mark.parametrize("shape", [(7, 5), (2, 2, 7, 5, 3), (5,), ()])
def test_bad_ndim_raises_value_error(shape, rng):
    images = np.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
    with pytest.raises(ValueError):
        F.to_float_normalize(images)


@pytest.mark.parametrize("kw,word", [
    (dict(mean=(0.5, 0.5), std=IMAGENET_STD), "mean"),
    (dict(mean=(0.5,) * 4, std=IMAGENET_STD), "mean"),
    (dict(mean=IMAGENET_MEAN, std=(0.2, 0.2)), "std"),
    (dict(mean=IMAGENET_MEAN, std=np.full(4, 0.2)), "std"),
    (dict(mean=[], std=IMAGENET_STD), "mean"),
    (dict(std=(0.229, 0.0, 0.225)), "std"),
    (dict(mean=IMAGENET_MEAN, std=np.zeros(3)), "std"),
    (dict(mean=(0.4, float("nan"), 0.4)), "mean"),
    (dict(mean=(0.4, float("inf"), 0.4)), "mean"),
    (dict(std=(0.2, float("inf"), 0.2)), "std"),
    (dict(std=(0.2, float("nan"), 0.2)), "std"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_mean_std_raise_value_error_naming_them(kw, word, rng):
    images = random_images(rng, (2, 7, 5, 3))
    with pytest.raises(ValueError, match=word):
        F.to_float_normalize(images, **kw)


@pytest.mark.parametrize("mode", ["image", "minmax"])
@pytest.mark.parametrize("which", ["mean", "std"])
def test_mean_std_refused_outside_channel_mode(mode, which, rng):
    images = random_images(rng, (2, 7, 5, 3))
    kw = {which: IMAGENET_MEAN if which == "mean" else IMAGENET_STD}
    with pytest.raises(ValueError, match=which):
        F.to_float_normalize(images, mode=mode, **kw)


@pytest.mark.parametrize("arg,value", [("mode", "zscore"), ("mode", "Channel"),
                                       ("layout", "CHWN"), ("layout", "nchw")])
def test_unknown_mode_or_layout_raises_naming_it(arg, value, rng):
    images = random_images(rng, (2, 7, 5, 3))
    with pytest.raises(ValueError) as ei:
        F.to_float_normalize(images, **{arg: value})
    msg = str(ei.value)
    assert value in msg, f"message does not name the given value {value!r}: {msg!r}"
    assert arg.split("_")[0] in msg, f"message does not name {arg}: {msg!r}"


# ---- hypothesis -------------------------------------------------------------------------------

def make_images(rng, shape, kind):
    """uint8 images of `shape` ((N, H, W, C) or (H, W, C)) with contents of `kind`."""
    if kind == "low_contrast":  # each image within [base, base + 3]
        lead = shape[:-3]
        base = rng.integers(0, 253, size=lead + (1, 1, 1))
        return (base + rng.integers(0, 4, size=shape)).astype(np.uint8)
    images = random_images(rng, shape)
    if kind == "with_constant" and len(shape) == 4 and shape[0] >= 2:
        images[rng.integers(shape[0])] = rng.integers(0, 256)
    return images


@st.composite
def norm_cases(draw):
    single = draw(st.booleans())
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    shape = (h, w, c) if single else (n, h, w, c)
    mode = draw(st.sampled_from(MODES))
    layout_out = draw(st.sampled_from(LAYOUTS))
    kind = draw(st.sampled_from(["uniform", "low_contrast", "with_constant"]))
    form = draw(st.sampled_from(["none", "list", "tuple", "f32", "f64"]))
    use_out = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = make_images(rng, shape, kind)
    mean = std = None
    if mode == "channel" and form != "none":
        mean = as_form(rng.uniform(-0.6, 0.6, c).tolist(), form)
        std = as_form(rng.uniform(0.2, 1.5, c).tolist(), form)
    return images, mean, std, mode, layout_out, use_out


@SETTINGS
@given(case=norm_cases())
def test_hypothesis_to_float_normalize(case):
    images, mean, std, mode, layout_out, use_out = case
    out = (np.full(out_shape(images.shape, layout_out), np.nan, np.float32) if use_out else None)
    y = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out, out=out)
    if use_out:
        assert y is out
    assert_within(y, images, mean, std, mode, layout_out)


@SETTINGS
@given(single=st.booleans(), n=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       c=st.sampled_from([1, 3, 4]), layout=st.sampled_from(LAYOUTS),
       with_params=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_round_trip_is_exact(single, n, h, w, c, layout, with_params, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if single else (n, h, w, c)
    images = random_images(rng, shape)
    mean = rng.uniform(-1.0, 1.0, c).tolist() if with_params else None
    std = rng.uniform(0.05, 3.0, c).tolist() if with_params else None
    y = F.to_float_normalize(images, mean, std, layout=layout)
    back = F.denormalize(y, mean, std, layout=layout)
    assert_bitwise(back, images, "round trip")


# ---- denormalize ------------------------------------------------------------------------------

ROUND_TRIP_PARAMS = [
    (None, None),
    (IMAGENET_MEAN, IMAGENET_STD),
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((0.0, 0.0, 0.0), (1.0 / 255, 1.0 / 255, 1.0 / 255)),
    ((-2.0, 0.1, 3.0), (0.01, 1.0, 7.0)),
    (np.array([0.48145466, 0.4578275, 0.40821073], np.float32),  # CLIP's
     np.array([0.26862954, 0.26130258, 0.27577711], np.float32)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("p", range(len(ROUND_TRIP_PARAMS)))
def test_round_trip_is_exact(p, single, layout, rng):
    mean, std = ROUND_TRIP_PARAMS[p]
    images = random_images(rng, (33, 17, 3) if single else (3, 33, 17, 3))
    images.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)  # every value at least once
    y = F.to_float_normalize(images, mean, std, layout=layout)
    back = F.denormalize(y, mean, std, layout=layout)
    assert_bitwise(back, images, "round trip")


@pytest.mark.parametrize("c", [1, 4])
def test_round_trip_other_channel_counts(c, rng):
    images = random_images(rng, (2, 7, 5, c))
    mean, std = channel_params(rng, c)
    for layout in LAYOUTS:
        y = F.to_float_normalize(images, list(mean), np.asarray(std), layout=layout)
        assert_bitwise(F.denormalize(y, np.asarray(mean), list(std), layout=layout), images,
                       f"round trip {layout}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("single", [False, True])
def test_denormalize_float_output_in_input_layout(single, layout, dtype, rng):
    shape_nchw = (3, 7, 5) if single else (2, 3, 7, 5)
    x = rng.normal(0.0, 1.5, shape_nchw)
    if layout == "NHWC":
        x = np.moveaxis(x, -3, -1)
    x = np.ascontiguousarray(x, dtype=dtype)
    keep = x.copy()
    v = F.denormalize(x, IMAGENET_MEAN, IMAGENET_STD, layout=layout, to_uint8=False)
    ref = R.denormalize(x, IMAGENET_MEAN, IMAGENET_STD, layout, to_uint8=False)
    assert v.dtype == np.float32, f"dtype {v.dtype}"
    assert v.shape == x.shape == ref.shape
    std_c = np.array(IMAGENET_STD).reshape((-1, 1, 1) if layout == "NCHW" else (-1,))
    mean_c = np.array(IMAGENET_MEAN).reshape(std_c.shape)
    terms = 255.0 * (np.abs(x.astype(np.float64) * std_c) + np.abs(mean_c))
    check_bound(v, ref, 2e-6 * np.maximum(1.0, np.abs(ref)) + 4 * U * terms, "denormalize")
    assert_bitwise(x, keep, "x")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("single", [False, True])
def test_denormalize_rounds_and_clips_to_uint8_nhwc(single, layout, rng):
    """v well away from half-integers, and outside [0, 255]: rint then clip, NHWC out."""
    shape_nhwc = (7, 5, 3) if single else (2, 7, 5, 3)
    k = rng.integers(-40, 296, shape_nhwc)
    frac = rng.choice([0.2, 0.3, 0.7, 0.8], shape_nhwc)
    v = k + frac
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    x_nhwc = (v / 255.0 - mean) / std
    x = np.moveaxis(x_nhwc, -1, -3) if layout == "NCHW" else x_nhwc
    x = np.ascontiguousarray(x, dtype=np.float32)
    got = F.denormalize(x, IMAGENET_MEAN, IMAGENET_STD, layout=layout)
    ref = R.denormalize(x, IMAGENET_MEAN, IMAGENET_STD, layout)
    assert got.shape == shape_nhwc
    assert_bitwise(got, ref, "denormalize")
    assert (got == 0).any() and (got == 255).any()


def test_denormalize_defaults_are_x_times_255_nchw(rng):
    images = random_images(rng, (2, 7, 5, 3))
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2) / 255.0)  # float64 (N, C, H, W)
    assert_bitwise(F.denormalize(x), images, "denormalize")
    v = F.denormalize(x, to_uint8=False)
    assert v.dtype == np.float32 and v.shape == x.shape
    check_bound(v, x * 255.0, np.full(x.shape, 2e-6 * 255), "denormalize")


# ---- threads and ISA levels -------------------------------------------------------------------

def threads_batch():
    rng = np.random.default_rng(1234)
    images = random_images(rng, (8, 64, 64, 3))
    images[2] = 77                                    # constant
    images[5] = 120 + rng.integers(0, 2, (64, 64, 3))  # low contrast
    return images


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_same_bits_at_any_thread_count(mode, layout_out, threads):
    images = threads_batch()
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if mode == "channel" else (None, None)
    y = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out)
    with num_threads(1):
        y1 = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out)
    assert_bitwise(y, y1, f"{mode}/{layout_out} at {threads} threads vs 1")
    assert_within(y, images, mean, std, mode, layout_out)
    if mode == "channel":
        back = F.denormalize(y, mean, std, layout=layout_out)
        with num_threads(1):
            back1 = F.denormalize(y, mean, std, layout=layout_out)
        assert_bitwise(back, back1, "denormalize")
        assert_bitwise(back, images, "round trip")


ISA_SHAPES = [(2, 7, 5, 3), (3, 1, 17, 1), (2, 4, 16, 4), (1, 33, 17, 3), (9, 15, 3)]


@pytest.mark.parametrize("layout_out", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_every_isa_level_matches_reference(mode, layout_out, isa, rng):
    for shape in ISA_SHAPES:
        images = make_images(rng, shape, "with_constant")
        mean, std = params_for(mode, rng, shape[-1])
        y = F.to_float_normalize(images, mean, std, mode=mode, layout=layout_out)
        assert_within(y, images, mean, std, mode, layout_out, what=f"{isa} {shape}")
        if mode == "channel":
            assert_bitwise(F.denormalize(y, mean, std, layout=layout_out), images,
                           f"{isa} round trip {shape}")
        low = make_images(rng, shape, "low_contrast")
        y = F.to_float_normalize(low, mean, std, mode=mode, layout=layout_out)
        assert_within(y, low, mean, std, mode, layout_out, what=f"{isa} low contrast {shape}")


# ---- peer -------------------------------------------------------------------------------------

def test_matches_torchvision_normalize(rng):
    torch, torchvision = import_torchvision()
    tvf = torchvision.transforms.functional
    images = random_images(rng, (2, 33, 17, 3))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    ref = tvf.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)).numpy()
    y = F.to_float_normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("mode", ["image", "minmax", "channel"])
def test_low_contrast_bright_images_exact(mode):
    """Values 200..203 (image mode: terms ~500 for y ~1) stay within the strict float32 bound."""
    rng = np.random.default_rng(5)
    img = (200 + rng.integers(0, 4, (3, 31, 29, 3))).astype(np.uint8)
    kw = dict(mean=(0.79, 0.8, 0.81), std=(0.004, 0.005, 0.006)) if mode == "channel" else {}
    for layout in ("NCHW", "NHWC"):
        y = F.to_float_normalize(img, mode=mode, layout=layout, **kw)
        assert_within(y, img, kw.get("mean"), kw.get("std"), mode, layout)
