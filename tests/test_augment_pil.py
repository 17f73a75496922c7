"""Tests for the Pillow-exact pixel ops of cnnkit.augment.functional.

equalize, autocontrast, invert, posterize and solarize must be bit-identical to
``PIL.ImageOps`` applied image by image (mode "L" for C = 1, "RGB" for C = 3, and "L" per channel
for any other C). Pillow is the reference; the whole module skips when Pillow is absent.

Layers (STYLE.md, Tests):

* named edge cases: 1x1, 2x3, 7x5, 33x17, 64x64 images; rows 15..129 wide (around the SIMD
  widths); C = 1, 3 (and 2, 4); single images and batches; random, low-entropy (1, 2 or 3 values
  per channel, two adjacent values), constant, full-range (every value 0..255) and skewed
  (mostly one value, at the bottom or the top) images, and batches mixing them (per-image
  histograms must not leak across the batch); equalize's ``len(histo) <= 1`` and ``step == 0``
  branches and the step boundaries (254/255/256, 509/510/511 pixels below the top value);
  histogram counts above 65535; autocontrast for EVERY (lo, hi) pair (and its ``hi <= lo``
  branch); posterize for every bits 1..8, solarize for thresholds 0, 1, 127, 128, 255, 256, and
  per-image parameter arrays (list, tuple, int64 and uint8 arrays); empty batches and images;
* hypothesis properties over shapes, channels, contents, parameters and ``out=``, and over drawn
  histograms for equalize / autocontrast;
* invariants: the same bits at 1 and 2 threads, every ISA level equals Pillow, inputs not
  modified, a new array is returned, ``out=`` is filled and returned;
* bad input: the documented exception naming the argument.
"""
from __future__ import annotations

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
pytest.importorskip("PIL.ImageOps")
from PIL import Image, ImageOps  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cnnkit.augment.functional as F  # noqa: E402
from conftest import assert_bitwise, num_threads  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None)
SIZES = [(1, 1), (2, 3), (7, 5), (33, 17), (64, 64)]
KINDS = ["random", "low1", "low2", "low3", "adjacent2", "constant", "full", "skewed_bottom",
         "skewed_top"]
THRESHOLDS = [0, 1, 127, 128, 255, 256]


# ---- the Pillow reference -----------------------------------------------------------------------

def _pil_one(pil_fn, img, *args):
    """`pil_fn` on one (H, W, C) uint8 image: "RGB" for C = 3, else "L" channel by channel."""
    if img.shape[-1] == 3:
        return np.asarray(pil_fn(Image.fromarray(np.ascontiguousarray(img), "RGB"), *args))
    planes = [np.asarray(pil_fn(Image.fromarray(np.ascontiguousarray(img[..., c]), "L"), *args))
              for c in range(img.shape[-1])]
    return np.stack(planes, axis=-1)


def pil_apply(pil_fn, images, param=None):
    """Pillow image by image; `param` None, one value, or one value per image (a sequence)."""
    single = images.ndim == 3
    batch = images[None] if single else images
    per_image = param is not None and not np.isscalar(param)
    out = np.empty(batch.shape, np.uint8)
    for i, img in enumerate(batch):
        args = () if param is None else (int(param[i]) if per_image else int(param),)
        out[i] = _pil_one(pil_fn, img, *args)
    return out[0] if single else out


# op name -> (cnnkit call, Pillow call, default parameter or None)
OPS = {
    "equalize": (lambda x, p, **kw: F.equalize(x, **kw), ImageOps.equalize, None),
    "autocontrast": (lambda x, p, **kw: F.autocontrast(x, **kw), ImageOps.autocontrast, None),
    "invert": (lambda x, p, **kw: F.invert(x, **kw), ImageOps.invert, None),
    "posterize": (lambda x, p, **kw: F.posterize(x, p, **kw), ImageOps.posterize, 3),
    "solarize": (lambda x, p, **kw: F.solarize(x, p, **kw), ImageOps.solarize, 128),
}
OP_NAMES = list(OPS)


def run_op(name, images, param=None, **kw):
    fn, _, default = OPS[name]
    return fn(images, default if param is None else param, **kw)


def check_op(name, images, param=None, what=None, **kw):
    """cnnkit's op on `images` is a new uint8 C-contiguous array with Pillow's bits."""
    _, pil_fn, default = OPS[name]
    param = default if param is None else param
    keep = images.copy()
    y = run_op(name, images, param, **kw)
    what = what or f"{name}{'' if param is None else f'({param!r})'} on {images.shape}"
    assert isinstance(y, np.ndarray), f"{what}: got {type(y).__name__}"
    assert y.flags.c_contiguous, f"{what}: output is not C-contiguous"
    assert_bitwise(y, pil_apply(pil_fn, images, param), what)
    assert_bitwise(images, keep, f"{what}: input modified")
    return y


# ---- image families -----------------------------------------------------------------------------

def make_image(rng, h, w, c, kind):
    """One (h, w, c) uint8 image of the named family."""
    n = h * w
    planes = []
    for _ in range(c):
        if kind == "random":
            p = rng.integers(0, 256, n)
        elif kind.startswith("low"):  # exactly k distinct values (fewer when n < k)
            k = int(kind[3:])
            vals = rng.choice(256, size=k, replace=False)
            p = np.resize(vals, n) if n >= k else vals[:n]
            p = rng.permutation(p)
        elif kind == "adjacent2":
            v = int(rng.integers(0, 255))
            p = rng.permutation(np.resize([v, v + 1], n))
        elif kind == "constant":
            p = np.full(n, rng.choice([0, 255, int(rng.integers(1, 255))]))
        elif kind == "full":  # every value 0..255 when n >= 256; 0 and 255 always (n >= 2)
            p = np.resize(np.arange(256), n)
            if n >= 2:
                p[0], p[1] = 0, 255
            p = rng.permutation(p)
        elif kind in ("skewed_bottom", "skewed_top"):  # ~90% one value, the rest above/below it
            v = int(rng.integers(0, 40)) if kind == "skewed_bottom" else int(rng.integers(215, 256))
            p = np.full(n, v)
            m = rng.random(n) < 0.1
            lo, hi = (v, 256) if kind == "skewed_bottom" else (0, v + 1)
            p[m] = rng.integers(lo, hi, int(m.sum()))
        else:
            raise AssertionError(kind)
        planes.append(np.asarray(p, dtype=np.uint8).reshape(h, w))
    return np.stack(planes, axis=-1)


def make_batch(rng, n, h, w, c, kind):
    """(n, h, w, c) images; kind "mixed" cycles through every family image by image."""
    kinds = [KINDS[(i + int(rng.integers(len(KINDS)))) % len(KINDS)] for i in range(n)] \
        if kind == "mixed" else [kind] * n
    return np.stack([make_image(rng, h, w, c, k) for k in kinds])


# ---- named edge cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("kind", KINDS + ["mixed"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_matches_pillow(op, kind, c, rng):
    for h, w in SIZES:
        images = make_batch(rng, 4, h, w, c, kind)
        check_op(op, images)                                  # batch
        check_op(op, images[2])                               # single image
        check_op(op, images[1:2])                             # batch of one


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("op", OP_NAMES)
def test_other_channel_counts_are_per_channel(op, c, rng):
    for kind in ("random", "low2", "skewed_top", "mixed"):
        check_op(op, make_batch(rng, 3, 9, 11, c, kind))


@pytest.mark.parametrize("op", OP_NAMES)
def test_rows_around_simd_widths(op, rng):
    for w in (15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129):
        for c in (1, 3):
            check_op(op, make_batch(rng, 2, 1, w, c, "mixed"))
            check_op(op, make_batch(rng, 2, 3, w, c, "random"))


@pytest.mark.parametrize("op", OP_NAMES)
def test_single_image_matches_batch_of_one(op, rng):
    images = make_batch(rng, 1, 13, 21, 3, "random")
    assert_bitwise(run_op(op, images[0]), run_op(op, images)[0], op)


@pytest.mark.parametrize("op", OP_NAMES)
def test_non_contiguous_input(op, rng):
    base = make_batch(rng, 5, 14, 22, 4, "mixed")
    for images in (base[::2, ::2, 1::2, :3], base[:, :, :, ::-1][..., 1:], base[1, ::-1, 3:]):
        assert not images.flags.c_contiguous
        check_op(op, images)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("below", [0, 1, 2, 254, 255, 256, 509, 510, 511, 765])
def test_equalize_step_boundaries(below, c, rng):
    """`below` pixels under the top value: step = below // 255 (0 -> identity LUT)."""
    n = 32 * 32
    images = []
    for top in (255, 200, 3):
        planes = []
        for _ in range(c):
            p = np.full(n, top)
            lower = rng.integers(0, top, below) if rng.random() < 0.5 else np.full(below, top - 1)
            p[:below] = lower
            planes.append(rng.permutation(p).reshape(32, 32))
        images.append(np.stack(planes, axis=-1).astype(np.uint8))
    check_op("equalize", np.stack(images))


@pytest.mark.parametrize("c", [1, 3])
def test_equalize_two_values_step_zero_and_positive(c, rng):
    """Two values: identity when fewer than 255 pixels sit below the top one, remapped otherwise."""
    for h, w in [(7, 5), (15, 17), (16, 16), (64, 64)]:
        check_op("equalize", make_batch(rng, 3, h, w, c, "low2"))
        check_op("equalize", make_batch(rng, 3, h, w, c, "low3"))


@pytest.mark.parametrize("op", ["equalize", "autocontrast"])
def test_histogram_counts_above_65535(op, rng):
    """300 * 300 = 90000 pixels, ~99% of them one value: 16-bit counts would wrap."""
    images = np.full((2, 300, 300, 3), 17, np.uint8)
    m = rng.random(images.shape) < 0.01
    images[m] = rng.integers(0, 256, int(m.sum()))
    images[1, ..., 1] = 250
    images[1, :2, :, 1] = rng.integers(0, 250, (2, 300))
    check_op(op, images)


@pytest.fixture(scope="module")
def every_lo_hi_pair():
    """Images holding lo..hi (nothing else) for every 0 <= lo <= hi <= 255, and Pillow's result."""
    pairs = [(lo, hi) for lo in range(256) for hi in range(lo, 256)]
    pairs += [(0, 0)] * (-len(pairs) % 3)
    images = np.empty((len(pairs) // 3, 1, 256, 3), np.uint8)
    for k, (lo, hi) in enumerate(pairs):
        row = np.full(256, lo, np.uint8)
        row[:hi - lo + 1] = np.arange(lo, hi + 1)
        images[k // 3, 0, :, k % 3] = row
    return images, pil_apply(ImageOps.autocontrast, images)


def test_autocontrast_every_lo_hi_pair(every_lo_hi_pair, isa):
    images, expected = every_lo_hi_pair
    assert_bitwise(F.autocontrast(images), expected, f"autocontrast every (lo, hi) at {isa}")


@pytest.mark.parametrize("single", [False, True], ids=["batch", "single"])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_every_bits(bits, c, single, rng):
    for kind in ("full", "random", "low2"):
        images = make_batch(rng, 3, 16, 16, c, kind)
        check_op("posterize", images[0] if single else images, bits)
    check_op("posterize", make_batch(rng, 2, 16, 16, c, "full"), np.int64(bits))


@pytest.mark.parametrize("single", [False, True], ids=["batch", "single"])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_solarize_thresholds(threshold, c, single, rng):
    for kind in ("full", "random", "low2"):
        images = make_batch(rng, 3, 16, 16, c, kind)
        check_op("solarize", images[0] if single else images, threshold)
    check_op("solarize", make_batch(rng, 2, 16, 16, c, "full"), np.int64(threshold))


def test_solarize_default_threshold_is_128(rng):
    images = make_batch(rng, 3, 16, 16, 3, "full")
    assert_bitwise(F.solarize(images), pil_apply(ImageOps.solarize, images, 128))


@pytest.mark.parametrize("form", ["list", "tuple", "int64", "uint8"])
def test_posterize_per_image_bits(form, rng):
    bits = np.concatenate([np.arange(1, 9), rng.integers(1, 9, 8)])
    images = make_batch(rng, len(bits), 16, 16, 3, "full")
    param = {"list": bits.tolist(), "tuple": tuple(bits.tolist()), "int64": bits.astype(np.int64),
             "uint8": bits.astype(np.uint8)}[form]
    check_op("posterize", images, param)
    check_op("posterize", make_batch(rng, 1, 5, 7, 1, "random"), param[:1])


@pytest.mark.parametrize("form", ["list", "tuple", "int64", "int32"])
def test_solarize_per_image_thresholds(form, rng):
    t = np.concatenate([THRESHOLDS, rng.integers(0, 257, 10)])
    images = make_batch(rng, len(t), 16, 16, 3, "full")
    param = {"list": t.tolist(), "tuple": tuple(t.tolist()), "int64": t.astype(np.int64),
             "int32": t.astype(np.int32)}[form]
    check_op("solarize", images, param)


def test_posterize_8_and_solarize_256_are_identity(rng):
    images = make_batch(rng, 3, 16, 16, 3, "full")
    assert_bitwise(F.posterize(images, 8), images, "posterize(8)")
    assert_bitwise(F.solarize(images, 256), images, "solarize(256)")
    assert_bitwise(F.solarize(images, 0), F.invert(images), "solarize(0) vs invert")


def test_invert_twice_is_identity(rng):
    images = make_batch(rng, 3, 16, 16, 3, "full")
    assert_bitwise(F.invert(F.invert(images)), images, "invert(invert)")


@pytest.mark.parametrize("shape", [(0, 7, 5, 3), (2, 0, 5, 3), (2, 7, 0, 1), (0, 5, 1)],
                         ids=["no-images", "zero-height", "zero-width", "single-zero-height"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_empty_images(op, shape):
    y = run_op(op, np.zeros(shape, np.uint8))
    assert y.shape == shape and y.dtype == np.uint8


# ---- invariants: input, out=, threads, ISA ------------------------------------------------------

@pytest.mark.parametrize("op", OP_NAMES)
def test_inputs_not_modified_and_new_array(op, rng):
    images = make_batch(rng, 3, 7, 5, 3, "mixed")
    keep = images.copy()
    y = run_op(op, images)
    assert y is not images and not np.shares_memory(y, images)
    assert_bitwise(images, keep, "images")
    out = np.zeros_like(images)
    run_op(op, images, out=out)
    assert_bitwise(images, keep, "images (with out=)")
    if op in ("posterize", "solarize"):
        param = np.array([1, 5, 8]) if op == "posterize" else np.array([0, 100, 256])
        keep_p = param.copy()
        run_op(op, images, param)
        assert_bitwise(images, keep, "images (per-image parameter)")
        assert_bitwise(param, keep_p, "parameter array")


@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("shape", [(3, 7, 5, 3), (7, 5, 1), (2, 33, 17, 1)],
                         ids=["batch", "single", "batch-c1"])
def test_out_is_filled_and_returned(op, shape, rng):
    _, pil_fn, default = OPS[op]
    for kind in ("random", "constant", "low2"):
        images = (make_batch(rng, shape[0], *shape[1:], kind) if len(shape) == 4
                  else make_image(rng, *shape, kind))
        for pattern in (0xA5, 0x00, 0xFF):
            out = np.full(shape, pattern, np.uint8)
            y = run_op(op, images, out=out)
            assert y is out
            assert_bitwise(out, pil_apply(pil_fn, images, default), f"{op} out= ({pattern:#x})")


@pytest.mark.parametrize("op", ["posterize", "solarize"])
def test_out_with_per_image_parameters(op, rng):
    _, pil_fn, _ = OPS[op]
    images = make_batch(rng, 5, 9, 8, 3, "full")
    param = [1, 2, 4, 7, 8] if op == "posterize" else [0, 1, 128, 255, 256]
    out = rng.integers(0, 256, images.shape, dtype=np.uint8)
    assert run_op(op, images, param, out=out) is out
    assert_bitwise(out, pil_apply(pil_fn, images, param), f"{op} out= per image")


def _bad_outs():
    shape = (2, 7, 5, 3)
    yield "wrong-shape", np.zeros((2, 5, 7, 3), np.uint8)
    yield "missing-batch", np.zeros(shape[1:], np.uint8)
    yield "float32", np.zeros(shape, np.float32)
    yield "int8", np.zeros(shape, np.int8)
    yield "non-contiguous", np.zeros((2, 7, 10, 3), np.uint8)[:, :, ::2]
    ro = np.zeros(shape, np.uint8)
    ro.flags.writeable = False
    yield "read-only", ro
    yield "list", np.zeros(shape, np.uint8).tolist()


@pytest.mark.parametrize("name,out", list(_bad_outs()), ids=[b[0] for b in _bad_outs()])
@pytest.mark.parametrize("op", OP_NAMES)
def test_bad_out_raises_naming_out(op, name, out, rng):
    images = make_batch(rng, 2, 7, 5, 3, "random")
    with pytest.raises((TypeError, ValueError), match="out"):
        run_op(op, images, out=out)


@pytest.mark.parametrize("op", OP_NAMES)
def test_threads_bitwise(op, threads, rng):
    images = make_batch(rng, 16, 48, 40, 3, "mixed")
    param = None
    if op == "posterize":
        param = rng.integers(1, 9, 16)
    elif op == "solarize":
        param = rng.integers(0, 257, 16)
    y = run_op(op, images, param)
    with num_threads(1):
        y1 = run_op(op, images, param)
    assert_bitwise(y, y1, f"{op} at {threads} threads vs 1")
    check_op(op, images, param)


@pytest.mark.parametrize("op", OP_NAMES)
def test_every_isa_level_matches_pillow(op, isa, rng):
    for h, w in SIZES + [(1, 15), (1, 16), (1, 17), (2, 33), (1, 65), (3, 129)]:
        for c in (1, 3):
            check_op(op, make_batch(rng, 3, h, w, c, "mixed"), what=f"{op} {h}x{w}x{c} at {isa}")
    if op == "posterize":
        images = make_batch(rng, 8, 16, 16, 3, "full")
        for bits in range(1, 9):
            check_op(op, images, bits, what=f"posterize({bits}) at {isa}")
        check_op(op, images, np.arange(1, 9), what=f"posterize(per image) at {isa}")
    if op == "solarize":
        images = make_batch(rng, 6, 16, 16, 3, "full")
        for t in THRESHOLDS:
            check_op(op, images, t, what=f"solarize({t}) at {isa}")
        check_op(op, images, THRESHOLDS, what=f"solarize(per image) at {isa}")


# ---- hypothesis ---------------------------------------------------------------------------------

@st.composite
def pil_cases(draw):
    op = draw(st.sampled_from(OP_NAMES))
    single = draw(st.booleans())
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    c = draw(st.sampled_from([1, 3, 1, 3, 2, 4]))
    kind = draw(st.sampled_from(KINDS + ["mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = make_batch(rng, 1 if single else n, h, w, c, kind)
    images = images[0] if single else images
    param = None
    if op in ("posterize", "solarize"):
        lo, hi = (1, 8) if op == "posterize" else (0, 256)
        if single or draw(st.booleans()):
            param = draw(st.integers(lo, hi))
        else:
            param = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    use_out = draw(st.booleans())
    return op, images, param, use_out


@SETTINGS
@given(case=pil_cases())
def test_hypothesis_matches_pillow(case):
    op, images, param, use_out = case
    if use_out:
        out = np.full(images.shape, 0x5A, np.uint8)
        y = run_op(op, images, param, out=out)
        assert y is out
        _, pil_fn, default = OPS[op]
        assert_bitwise(out, pil_apply(pil_fn, images, default if param is None else param), op)
    else:
        check_op(op, images, param)


@st.composite
def histogram_images(draw):
    """An image built from a drawn histogram: a few values with arbitrary (lopsided) counts."""
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    planes = []
    for _ in range(c):
        values = draw(st.lists(st.integers(0, 255), min_size=1, max_size=6, unique=True))
        weights = draw(st.lists(st.integers(1, 1000), min_size=len(values), max_size=len(values)))
        counts = np.floor(np.array(weights) / sum(weights) * h * w).astype(int)
        counts[0] += h * w - counts.sum()
        planes.append(rng.permutation(np.repeat(values, counts)).reshape(h, w))
    return np.stack(planes, axis=-1).astype(np.uint8)


@SETTINGS
@given(image=histogram_images(), op=st.sampled_from(["equalize", "autocontrast"]))
def test_hypothesis_drawn_histograms(image, op):
    check_op(op, image)
    check_op(op, np.stack([image, image[::-1, ::-1], np.full_like(image, image.flat[0])]))


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint16, np.int32, np.bool_])
@pytest.mark.parametrize("op", OP_NAMES)
def test_non_uint8_images_raise_type_error(op, dtype):
    with pytest.raises(TypeError, match="images"):
        run_op(op, np.zeros((2, 7, 5, 3), dtype))


@pytest.mark.parametrize("shape", [(7, 5), (2, 2, 7, 5, 3), (5,), ()])
@pytest.mark.parametrize("op", OP_NAMES)
def test_bad_ndim_raises_value_error(op, shape):
    with pytest.raises(ValueError, match="images"):
        run_op(op, np.zeros(shape, np.uint8))


@pytest.mark.parametrize("mode", ["opencv", "CV", "PIL", "", None])
def test_equalize_unknown_mode_raises_naming_mode(mode, rng):
    images = make_batch(rng, 2, 7, 5, 3, "random")
    exc = TypeError if mode is None else ValueError  # not a name at all: a wrong type
    with pytest.raises(exc, match="^mode: "):
        F.equalize(images, mode)
    with pytest.raises(exc, match="^mode: "):
        F.equalize(images, mode=mode)


def test_equalize_mode_pil_is_the_default(rng):
    images = make_batch(rng, 3, 7, 5, 3, "random")
    assert_bitwise(F.equalize(images, "pil"), F.equalize(images), "equalize(mode='pil')")
    assert_bitwise(F.equalize(images, mode="pil"), F.equalize(images), "equalize(mode='pil')")


@pytest.mark.parametrize("op,bad", [
    ("posterize", 0), ("posterize", 9), ("posterize", -1), ("posterize", 256),
    ("posterize", [1, 0, 3]), ("posterize", [1, 9, 3]), ("posterize", np.array([8, 8, -1])),
    ("solarize", -1), ("solarize", 257), ("solarize", 1000),
    ("solarize", [0, 257, 3]), ("solarize", [-1, 128, 128]), ("solarize", np.array([256, 0, 300])),
], ids=lambda v: f"array{v.tolist()}" if isinstance(v, np.ndarray) else str(v))
def test_out_of_range_parameter_raises_naming_it(op, bad, rng):
    word = "bits" if op == "posterize" else "threshold"
    images = make_batch(rng, 3, 7, 5, 3, "random")
    with pytest.raises(ValueError, match=word):
        run_op(op, images, bad)
    if np.isscalar(bad):
        with pytest.raises(ValueError, match=word):
            run_op(op, images[0], bad)


@pytest.mark.parametrize("length", [0, 1, 2, 4])
@pytest.mark.parametrize("op", ["posterize", "solarize"])
def test_wrong_length_parameter_raises_value_error(op, length, rng):
    word = "bits" if op == "posterize" else "threshold"
    images = make_batch(rng, 3, 7, 5, 3, "random")
    with pytest.raises(ValueError, match=word):
        run_op(op, images, [4] * length)
    with pytest.raises(ValueError, match=word):
        run_op(op, images, np.full(length, 4))


@pytest.mark.parametrize("op", ["posterize", "solarize"])
def test_per_image_parameter_on_single_image_raises(op, rng):
    word = "bits" if op == "posterize" else "threshold"
    with pytest.raises((TypeError, ValueError), match=word):
        run_op(op, make_batch(rng, 1, 7, 5, 3, "random")[0], [4, 4])


def test_bad_input_leaves_out_untouched(rng):
    images = make_batch(rng, 3, 7, 5, 3, "random")
    out = np.full(images.shape, 0x3C, np.uint8)
    for call in (lambda: F.posterize(images, 9, out=out), lambda: F.solarize(images, 300, out=out),
                 lambda: F.posterize(images, [1, 2], out=out),
                 lambda: F.equalize(images, "opencv", out=out)):
        with pytest.raises(ValueError):
            call()
        assert_bitwise(out, np.full(images.shape, 0x3C, np.uint8), "out after bad input")


@pytest.mark.parametrize("bad", [2.5, "3", [2.5, 3]])
@pytest.mark.parametrize("op", ["posterize", "solarize"])
def test_non_integer_parameter_raises_naming_it(op, bad, rng):
    word = "bits" if op == "posterize" else "threshold"
    with pytest.raises((TypeError, ValueError), match=word):
        run_op(op, make_batch(rng, 2, 7, 5, 3, "random"), bad)


@pytest.mark.parametrize("C", [1, 3])
def test_equalize_large_image_counter_flush(C):
    """More than 2**20 pixels: the kernel's int32 sub-histograms are flushed mid-image."""
    rng = np.random.default_rng(11)
    img = rng.integers(0, 256, (1100, 1000, C), dtype=np.uint8)
    img[:300] = 7  # a heavy bin, so counts are far from uniform
    pil = Image.fromarray(img[..., 0], "L") if C == 1 else Image.fromarray(img, "RGB")
    want = np.asarray(ImageOps.equalize(pil))
    want = want[..., None] if C == 1 else want
    assert np.array_equal(F.equalize(img), want)


# ---- equalize(mode="cv"): OpenCV's equalizeHist per channel ----------------------------------------

def _equalize_cv_reference(channel):
    """OpenCV's equalizeHist on one uint8 plane, written out: float32 scale and products, round
    half to even."""
    h = np.bincount(channel.ravel(), minlength=256)
    i0 = int(np.argmax(h > 0))
    total = channel.size
    if h[i0] == total:
        return channel.copy()
    scale = np.float32(255.0) / np.float32(total - h[i0])
    lut = np.zeros(256, np.int64)
    acc = 0
    for i in range(i0 + 1, 256):
        acc += int(h[i])
        lut[i] = min(255, max(0, int(np.rint(np.float32(acc) * scale))))
    return lut[channel].astype(np.uint8)


@pytest.mark.parametrize("kind", ["random", "narrow", "constant", "binary", "gauss"])
def test_equalize_cv_matches_the_written_out_algorithm(kind, rng):
    H, W = 13, 17
    if kind == "random":
        img = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    elif kind == "narrow":
        img = rng.integers(100, 104, (4, H, W, 3), dtype=np.uint8)
    elif kind == "constant":
        img = np.full((4, H, W, 3), 77, np.uint8)
    elif kind == "binary":
        img = (rng.integers(0, 2, (4, H, W, 3)) * 255).astype(np.uint8)
    else:
        img = rng.normal(128, 30, (4, H, W, 3)).clip(0, 255).astype(np.uint8)
    got = F.equalize(img, mode="cv")
    ref = np.stack([np.stack([_equalize_cv_reference(img[n, ..., c]) for c in range(3)], -1) for n in range(4)])
    assert_bitwise(got, ref, f"equalize cv ({kind})")
    assert_bitwise(F.equalize(img[0], mode="cv"), ref[0], "single image")


def test_equalize_cv_is_bit_identical_to_opencv(rng):
    cv2 = pytest.importorskip("cv2")
    for shape in [(1, 1), (3, 40), (31, 29), (256, 300)]:
        for lo, hi in [(0, 256), (50, 60), (0, 2)]:
            img = rng.integers(lo, hi, (2, *shape, 3), dtype=np.uint8)
            got = F.equalize(img, mode="cv")
            ref = np.stack([np.stack([cv2.equalizeHist(np.ascontiguousarray(img[n, ..., c])) for c in range(3)], -1)
                            for n in range(2)])
            assert_bitwise(got, ref, f"equalize cv vs cv2.equalizeHist {shape} [{lo}, {hi})")
