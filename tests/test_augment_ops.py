"""Tests for the uint8 image ops of cnnkit.augment.functional: colour (brightness, contrast,
saturation, sharpness), flips, affine / rotate / shear / translate, resized_crop, pad_crop, CLAHE,
the policy interpreter apply_ops and the samplers.

The contract is torchvision's tensor path on uint8 CHW tensors (v1) and OpenCV's CLAHE, written
out in ``tests/reference/augment_ops.py`` (NumPy, never calls cnnkit). What is compared how:

* bit-exact with the reference: colour ops, flips, pad_crop, nearest geometry, CLAHE (and with
  cv2 when importable);
* bilinear geometry and resized_crop: |cnnkit - reference| <= 1 everywhere, and equal wherever
  the float64 value before rounding is more than 1e-3 away from a .5 (the kernels may round
  differently only where float32 arithmetic straddles the half);
* nearest geometry: pixels whose float64 source coordinate is within 1e-9 of a .5 (exact ties
  up to double rounding) may take either neighbour, except in the one test that pins the
  contract's evaluation order at exact ties;
* torchvision (when importable) as an oracle: colour ops bit-exact, nearest geometry equal except
  where the source coordinate is within 1e-3 of a .5, bilinear within 1.

Layers (STYLE.md, Tests): named edge cases (1x1, 2x2, 3x3, sizes 15/16/17, 31/32/33, CLAHE sizes
that divide the tile grid on one axis only), hypothesis over shapes / channels / batch sizes /
parameters / single images, invariants (neutral parameters give the input back, flips and 180
degree rotations, per-image arrays equal scalar calls, apply_ops equals the single ops in
sequence, same bits at 1 and 2 threads and at every ISA level, inputs untouched, out=), and bad
input raising TypeError / ValueError naming the argument.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit.augment.functional as F
from conftest import assert_bitwise, num_threads
from reference import augment_ops as R

SETTINGS = settings(max_examples=40, deadline=None)
DIMS = st.one_of(st.sampled_from([1, 2, 3, 15, 16, 17, 31, 32, 33, 40]), st.integers(1, 40))
SIZES = [(1, 1), (2, 2), (3, 3), (1, 17), (17, 2), (15, 16), (16, 17), (31, 33), (32, 32), (40, 40)]
COLOUR = ["adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_sharpness"]
GEOMETRY = ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"]
ALL_OPS = COLOUR + ["hflip", "vflip"] + GEOMETRY + ["affine", "resized_crop", "pad_crop", "clahe"]
TIE_EPS = 1e-9      # nearest: |frac(s) - 0.5| below this counts as an exact tie
HALF_EPS = 1e-3     # bilinear / resize: values this close to a .5 may round either way


def _torchvision():
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torchvision
        except Exception:  # noqa: BLE001 (the CPU torch + CUDA torchvision wheel pair)
            import torch.library as L
            orig = L.register_fake
            L.register_fake = lambda *a, **k: (lambda f: f)
            try:
                import torchvision  # noqa: F401
            except Exception:  # noqa: BLE001
                pytest.skip("torchvision not importable")
            finally:
                L.register_fake = orig
        from torchvision.transforms import functional as TF
    return torch, TF


# ---- data ---------------------------------------------------------------------------------------

def make_images(rng, n, h, w, c, kind="random"):
    """(n, h, w, c) uint8 images: "random" (full range), "narrow" (a 12-level band), "dark"
    (mostly low values with bright specks) or "mixed" (one family per image)."""
    kinds = (["random", "narrow", "dark"] * n)[:n] if kind == "mixed" else [kind] * n
    out = np.empty((n, h, w, c), np.uint8)
    for i, k in enumerate(kinds):
        if k == "random":
            out[i] = rng.integers(0, 256, (h, w, c))
        elif k == "narrow":
            lo = int(rng.integers(0, 244))
            out[i] = rng.integers(lo, lo + 12, (h, w, c))
        elif k == "dark":
            img = rng.integers(0, 40, (h, w, c))
            m = rng.random((h, w, c)) < 0.1
            img[m] = rng.integers(150, 256, int(m.sum()))
            out[i] = img
        else:
            raise AssertionError(k)
    return out


@st.composite
def image_batches(draw, channels=(1, 3)):
    """(images, n, single): a batch of 1..4 or a single image, H, W in 1..40, C from channels."""
    single = draw(st.booleans())
    n = 1 if single else draw(st.integers(1, 4))
    h, w = draw(DIMS), draw(DIMS)
    c = draw(st.sampled_from(channels))
    kind = draw(st.sampled_from(["random", "narrow", "dark", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = make_images(rng, n, h, w, c, kind)
    return (x[0] if single else x), n, single


def _factor_values(rng, n):
    v = rng.choice([0.0, 0.1, 0.5, 1.0, 1.3, 2.0, 10.0], size=n).astype(np.float64)
    m = rng.random(n) < 0.5
    v[m] = rng.uniform(0.0, 3.0, int(m.sum()))
    return v


def draw_param(op, rng, n, h, w):
    """Per-image parameter values (float64 (n,)) of the one-parameter ops."""
    if op in COLOUR:
        return _factor_values(rng, n)
    if op == "rotate":
        return rng.uniform(-180.0, 180.0, n)
    if op in ("shear_x", "shear_y"):
        return rng.uniform(-0.6, 0.6, n)
    if op == "translate_x":
        return rng.uniform(-0.7 * w, 0.7 * w, n)     # fractional: int() truncates toward zero
    if op == "translate_y":
        return rng.uniform(-0.7 * h, 0.7 * h, n)
    raise AssertionError(op)


def draw_fill(rng, c, kind):
    if kind == "none":
        return None
    if kind == "number":
        return int(rng.integers(0, 256))
    return [int(v) for v in rng.integers(0, 256, c)]


def _batch(x):
    return (x[None], True) if x.ndim == 3 else (x, False)


# ---- comparison helpers -------------------------------------------------------------------------

def _near_half(v, eps):
    f = v - np.floor(v)
    return np.abs(f - 0.5) < eps


def assert_nearest(got, images, kw, fill, what):
    """got == nearest affine(**kw) of the reference, except that at exact ties (source coordinate
    within TIE_EPS of a .5) either neighbour is accepted."""
    x, single = _batch(images)
    sx, sy = R.affine_source_coords(x, **kw)
    g = got[None] if single else got
    assert g.shape == x.shape and g.dtype == np.uint8, f"{what}: {g.dtype} {g.shape}"
    ok = np.zeros(x.shape, bool)
    cands = [(0.0, 0.0)] + [(dx, dy) for dx in (-1e-6, 1e-6) for dy in (-1e-6, 1e-6)]
    for i in range(x.shape[0]):
        tie = (_near_half(sx[i], TIE_EPS) | _near_half(sy[i], TIE_EPS))[..., None]
        for k, (dx, dy) in enumerate(cands):
            ref = R.sample_nearest(x[i], sx[i] + dx, sy[i] + dy, fill)
            ok[i] |= (g[i] == ref) & (tie if k else True)
    if not ok.all():
        idx = tuple(np.argwhere(~ok)[0])
        ref0 = np.stack([R.sample_nearest(x[i], sx[i], sy[i], fill) for i in range(len(x))])
        raise AssertionError(f"{what}: {int((~ok).sum())} of {ok.size} pixels differ from the "
                             f"nearest reference; first at {idx}: got {g[idx]}, expected "
                             f"{ref0[idx]} (source x {sx[idx[:3]]!r}, y {sy[idx[:3]]!r})")


def assert_rounded(got, v, what):
    """got == clip(rint(v)) where v is HALF_EPS away from a .5, and within 1 everywhere."""
    ref = np.clip(np.rint(v), 0, 255)
    g = np.asarray(got)
    assert g.dtype == np.uint8 and g.shape == v.shape, f"{what}: {g.dtype} {g.shape} vs {v.shape}"
    d = np.abs(g.astype(np.int64) - ref.astype(np.int64))
    bad = (d > 1) | ((d > 0) & ~_near_half(v, HALF_EPS))
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {g.size} values off; first at {idx}: "
                             f"got {g[idx]}, expected {ref[idx]:.0f} (value {v[idx]!r})")


def bilinear_values(images, kw, fill):
    x, single = _batch(images)
    sx, sy = R.affine_source_coords(x, **kw)
    v = np.stack([R.bilinear_values(x[i], sx[i], sy[i], fill) for i in range(x.shape[0])])
    return v[0] if single else v


def call_geometry(op, images, param, **kw):
    return getattr(F, op)(images, param, **kw)


def ref_kw(op, images, param):
    return R.geometry_kw(op, images, param)


def check_geometry(op, images, param, interpolation, fill, what):
    kw = ref_kw(op, images, param)
    keep = images.copy()
    got = call_geometry(op, images, param, interpolation=interpolation, fill=fill)
    assert_bitwise(images, keep, f"{what}: input modified")
    if interpolation == "nearest":
        assert_nearest(got, images, kw, fill, what)
    else:
        assert_rounded(got, bilinear_values(images, kw, fill), what)
    return got


# ---- colour -------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op", COLOUR)
def test_colour_matches_reference(op, c, rng):
    for h, w in SIZES:
        x = make_images(rng, 4, h, w, c, "mixed")
        for f in (0.0, 0.5, 1.0, 1.7, 10.0, 1 / 3):
            assert_bitwise(getattr(F, op)(x, f), getattr(R, op)(x, f), f"{op}({f}) {x.shape}")
        f = _factor_values(rng, 4)
        assert_bitwise(getattr(F, op)(x, f), getattr(R, op)(x, f), f"{op}(per image) {x.shape}")
        assert_bitwise(getattr(F, op)(x[1], 0.6), getattr(R, op)(x[1], 0.6), f"{op} single")


@SETTINGS
@given(case=image_batches(), op=st.sampled_from(COLOUR), seed=st.integers(0, 2**32 - 1),
       per_image=st.booleans())
def test_hypothesis_colour(case, op, seed, per_image):
    x, n, single = case
    rng = np.random.default_rng(seed)
    f = _factor_values(rng, n)
    param = f if per_image and not single else float(f[0])
    keep = x.copy()
    assert_bitwise(getattr(F, op)(x, param), getattr(R, op)(x, param), f"{op} {x.shape}")
    assert_bitwise(x, keep, "input modified")


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op", COLOUR)
def test_colour_factor_one_is_identity(op, c, rng):
    for h, w in SIZES:
        x = make_images(rng, 3, h, w, c, "mixed")
        assert_bitwise(getattr(F, op)(x, 1.0), x, f"{op}(1) {x.shape}")
        assert_bitwise(getattr(F, op)(x, np.ones(3)), x, f"{op}(ones) {x.shape}")


def test_colour_special_factors(rng):
    x = make_images(rng, 3, 9, 11, 3, "mixed")
    assert_bitwise(F.adjust_brightness(x, 0.0), np.zeros_like(x), "brightness(0) is black")
    g = R.gray(x)
    assert_bitwise(F.adjust_saturation(x, 0.0), np.ascontiguousarray(np.repeat(g, 3, -1)),
                   "saturation(0) is the gray image")
    means = [R.contrast_mean(img) for img in x]
    want = np.stack([np.full(x.shape[1:], np.uint8(m)) for m in means])
    assert_bitwise(F.adjust_contrast(x, 0.0), want, "contrast(0) is the truncated mean")
    x1 = make_images(rng, 3, 9, 11, 1, "random")
    assert_bitwise(F.adjust_saturation(x1, 0.3), x1, "saturation on C=1 is a copy")
    for h, w in [(1, 9), (2, 9), (9, 2), (2, 2), (1, 1)]:
        y = make_images(rng, 2, h, w, 3, "random")
        assert_bitwise(F.adjust_sharpness(y, 3.0), y, f"sharpness on {h}x{w} is the identity")


@pytest.mark.parametrize("op", COLOUR)
def test_colour_per_image_equals_scalar_calls(op, rng):
    x = make_images(rng, 5, 17, 16, 3, "mixed")
    f = _factor_values(rng, 5)
    got = getattr(F, op)(x, f)
    for i in range(5):
        assert_bitwise(got[i], getattr(F, op)(x[i:i + 1], float(f[i]))[0], f"{op} image {i}")
        assert_bitwise(got[i], getattr(F, op)(x[i], float(f[i])), f"{op} single image {i}")
    for form in (f.tolist(), tuple(f.tolist()), f.astype(np.float32).astype(np.float64)):
        assert_bitwise(getattr(F, op)(x, form), getattr(R, op)(x, form), f"{op} {type(form)}")


# ---- flips --------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 2, 3, 4])
@pytest.mark.parametrize("op", ["hflip", "vflip"])
def test_flips(op, c, rng):
    for h, w in SIZES:
        x = make_images(rng, 3, h, w, c, "random")
        y = getattr(F, op)(x)
        assert_bitwise(y, getattr(R, op)(x), f"{op} {x.shape}")
        assert_bitwise(getattr(F, op)(y), x, f"{op} twice")
        assert_bitwise(getattr(F, op)(x[2]), getattr(R, op)(x[2]), f"{op} single")
    x = make_images(rng, 2, 16, 17, c, "random")
    assert_bitwise(F.hflip(F.vflip(x)), x[:, ::-1, ::-1], "hflip(vflip)")


# ---- geometry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fill_kind", ["none", "number", "channels"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("op", GEOMETRY)
def test_geometry_matches_reference(op, interpolation, fill_kind, rng):
    for h, w in SIZES:
        for c in (1, 3):
            x = make_images(rng, 3, h, w, c, "random")
            fill = draw_fill(rng, c, fill_kind)
            p = draw_param(op, rng, 3, h, w)
            what = f"{op} {interpolation} fill={fill} {x.shape}"
            check_geometry(op, x, p, interpolation, fill, what + " per image")
            check_geometry(op, x, float(p[0]), interpolation, fill, what + " scalar")
            check_geometry(op, x[1], float(p[1]), interpolation, fill, what + " single")


def _affine_params(rng, n, h, w):
    return dict(angle=rng.uniform(-180, 180, n), translate=rng.integers(-w, w + 1, (n, 2)),
                scale=rng.uniform(0.5, 2.0, n), shear=rng.uniform(-40, 40, (n, 2)))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_affine_matches_reference(interpolation, rng):
    for h, w in SIZES:
        for c in (1, 3):
            x = make_images(rng, 4, h, w, c, "random")
            for fill_kind in ("none", "number", "channels"):
                fill = draw_fill(rng, c, fill_kind)
                prm = _affine_params(rng, 4, h, w)
                for center in (None, (0, 0), (int(rng.integers(0, w)), int(rng.integers(0, h)))):
                    kw = dict(prm, center=center)
                    got = F.affine(x, **kw, interpolation=interpolation, fill=fill)
                    what = f"affine {interpolation} fill={fill} center={center} {x.shape}"
                    if interpolation == "nearest":
                        assert_nearest(got, x, kw, fill, what)
                    else:
                        assert_rounded(got, bilinear_values(x, kw, fill), what)
                kw = dict(angle=float(prm["angle"][0]),
                          translate=tuple(int(t) for t in prm["translate"][0]),
                          scale=float(prm["scale"][0]), shear=tuple(float(s) for s in prm["shear"][0]))
                got = F.affine(x[0], **kw, interpolation=interpolation, fill=fill)
                if interpolation == "nearest":
                    assert_nearest(got, x[0], kw, fill, "affine single")
                else:
                    assert_rounded(got, bilinear_values(x[0], kw, fill), "affine single")


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_affine_fractional_fill_bilinear_and_defaults(interpolation, rng):
    x = make_images(rng, 3, 16, 17, 3, "random")
    kw = dict(angle=[10.0, -33.0, 141.0], translate=(2, -3), scale=1.25, shear=(5.0, -7.0))
    if interpolation == "bilinear":
        for fill in (127.5, [0.25, 100.5, 254.75]):
            assert_rounded(F.affine(x, **kw, interpolation="bilinear", fill=fill),
                           bilinear_values(x, kw, fill), f"bilinear fill={fill}")
    assert_bitwise(F.affine(x, **kw, interpolation=interpolation),
                   F.affine(x, **kw, interpolation=interpolation, fill=None), "fill default None")
    assert_bitwise(F.affine(x, **kw), F.affine(x, **kw, interpolation="nearest"),
                   "nearest is the default")


@SETTINGS
@given(case=image_batches(channels=(1, 3, 2)), op=st.sampled_from(GEOMETRY + ["affine"]),
       interpolation=st.sampled_from(["nearest", "bilinear"]),
       fill_kind=st.sampled_from(["none", "number", "channels"]), per_image=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_geometry(case, op, interpolation, fill_kind, per_image, seed):
    x, n, single = case
    rng = np.random.default_rng(seed)
    h, w, c = x.shape[-3:]
    fill = draw_fill(rng, c, fill_kind)
    what = f"{op} {interpolation} fill={fill} {x.shape}"
    if op == "affine":
        prm = _affine_params(rng, n, h, w)
        if single or not per_image:
            prm = dict(angle=float(prm["angle"][0]),
                       translate=tuple(int(t) for t in prm["translate"][0]),
                       scale=float(prm["scale"][0]), shear=tuple(float(s) for s in prm["shear"][0]))
        got = F.affine(x, **prm, interpolation=interpolation, fill=fill)
        if interpolation == "nearest":
            assert_nearest(got, x, prm, fill, what)
        else:
            assert_rounded(got, bilinear_values(x, prm, fill), what)
    else:
        p = draw_param(op, rng, n, h, w)
        check_geometry(op, x, p if per_image and not single else float(p[0]), interpolation,
                       fill, what)


@pytest.mark.parametrize("fill", [None, 7, [1, 2, 3]])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_geometry_neutral_parameters_are_identity(interpolation, fill, rng):
    for h, w in SIZES:
        x = make_images(rng, 3, h, w, 3, "random")
        geo = dict(interpolation=interpolation, fill=fill)
        for name, y in [("rotate(0)", F.rotate(x, 0.0, **geo)),
                        ("rotate(zeros)", F.rotate(x, np.zeros(3), **geo)),
                        ("shear_x(0)", F.shear_x(x, 0.0, **geo)),
                        ("shear_y(0)", F.shear_y(x, 0.0, **geo)),
                        ("translate_x(0)", F.translate_x(x, 0, **geo)),
                        ("translate_x(0.9)", F.translate_x(x, 0.9, **geo)),
                        ("translate_y(-0.9)", F.translate_y(x, -0.9, **geo)),
                        ("affine()", F.affine(x, **geo)),
                        ("affine(center)", F.affine(x, center=(w // 2, h // 2), **geo))]:
            assert_bitwise(y, x, f"{name} {interpolation} {x.shape}")


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_integer_translation_is_a_shift(interpolation, rng):
    """Closed form, independent of the matrix: dst[y, x] = src[y - ty, x - tx] or the fill."""
    x = make_images(rng, 2, 15, 17, 3, "random")
    for tx, ty, fill in [(3, 0, None), (-5, 0, 9), (0, 4, [1, 2, 3]), (0, -14, 255), (17, 0, 5)]:
        fv = np.zeros(3, np.uint8) if fill is None else np.broadcast_to(np.uint8(fill), (3,))
        want = np.empty_like(x)
        want[...] = fv
        ys, xs = slice(max(ty, 0), 15 + min(ty, 0)), slice(max(tx, 0), 17 + min(tx, 0))
        ysrc, xsrc = slice(max(-ty, 0), 15 - max(ty, 0)), slice(max(-tx, 0), 17 - max(tx, 0))
        want[:, ys, xs] = x[:, ysrc, xsrc]
        geo = dict(interpolation=interpolation, fill=fill)
        op = F.translate_x(x, tx, **geo) if ty == 0 else F.translate_y(x, ty, **geo)
        assert_bitwise(op, want, f"translate ({tx}, {ty}) fill={fill}")
        assert_bitwise(F.affine(x, translate=(tx, ty), **geo), want, f"affine translate ({tx}, {ty})")


def test_rotations_by_right_angles(rng):
    """180 degrees is both flips (any size); 90 / -90 on square images are np.rot90."""
    for h, w in [(1, 1), (4, 5), (16, 17), (32, 32)]:
        x = make_images(rng, 2, h, w, 3, "random")
        for interpolation in ("nearest", "bilinear"):
            assert_bitwise(F.rotate(x, 180.0, interpolation=interpolation), x[:, ::-1, ::-1],
                           f"rotate(180) {interpolation} {h}x{w}")
    x = make_images(rng, 2, 16, 16, 3, "random")
    assert_bitwise(F.rotate(x, 90.0), np.rot90(x, 1, axes=(1, 2)), "rotate(90) counter-clockwise")
    assert_bitwise(F.rotate(x, -90.0), np.rot90(x, -1, axes=(1, 2)), "rotate(-90)")
    assert_bitwise(F.affine(x, angle=90.0), np.rot90(x, -1, axes=(1, 2)), "affine(90) clockwise")


def test_nearest_ties_follow_the_spec_evaluation_order(rng):
    """Quarter turns with H and W of different parity put every source coordinate on an exact
    .5 in one axis. The contract fixes sx = ((m0*xc + m1*yc) + m2) + (W-1)/2 in double (likewise
    sy), then round half to even; other groupings of the same sum (e.g. A0*x + A1*y + A2 with
    the centre folded into A2) round 10-25% of these ties the other way."""
    for h, w in [(4, 5), (5, 4), (16, 17), (17, 16), (31, 32)]:
        x = make_images(rng, 2, h, w, 3, "random")
        for angle in (90.0, -90.0, 270.0):
            assert_bitwise(F.rotate(x, angle), R.rotate(x, angle), f"rotate({angle}) {h}x{w}")
            assert_bitwise(F.affine(x, angle=angle), R.affine(x, angle=angle),
                           f"affine({angle}) {h}x{w}")


def test_named_ops_are_affine(rng):
    x = make_images(rng, 3, 17, 16, 3, "random")
    a = np.array([12.5, -70.0, 179.0])
    for interpolation in ("nearest", "bilinear"):
        geo = dict(interpolation=interpolation, fill=[4, 5, 6])
        assert_bitwise(F.rotate(x, a, **geo), F.affine(x, angle=-a, **geo), "rotate = affine(-a)")
        assert_bitwise(F.rotate(x, a, center=(3, 11), **geo),
                       F.affine(x, angle=-a, center=(3, 11), **geo), "rotate with a centre")
        f = np.array([0.3, -0.25, 0.0])
        sh = np.stack([np.degrees(np.arctan(f)), np.zeros(3)], axis=1)
        assert_bitwise(F.shear_x(x, f, **geo), F.affine(x, shear=sh, center=(0, 0), **geo),
                       "shear_x = affine(shear=(atan deg, 0), center=(0, 0))")
        assert_bitwise(F.shear_y(x, f, **geo), F.affine(x, shear=sh[:, ::-1], center=(0, 0), **geo),
                       "shear_y")
        p = np.array([3.9, -3.9, -0.5])
        tr = np.stack([np.trunc(p), np.zeros(3)], axis=1)
        assert_bitwise(F.translate_x(x, p, **geo), F.affine(x, translate=tr, **geo),
                       "translate_x truncates toward zero")
        assert_bitwise(F.translate_y(x, p, **geo), F.affine(x, translate=tr[:, ::-1], **geo),
                       "translate_y truncates toward zero")


@pytest.mark.parametrize("op", GEOMETRY)
def test_geometry_per_image_equals_scalar_calls(op, rng):
    x = make_images(rng, 4, 16, 17, 3, "random")
    p = draw_param(op, rng, 4, 16, 17)
    for interpolation in ("nearest", "bilinear"):
        got = call_geometry(op, x, p, interpolation=interpolation, fill=3)
        for i in range(4):
            one = call_geometry(op, x[i:i + 1], float(p[i]), interpolation=interpolation, fill=3)
            assert_bitwise(got[i], one[0], f"{op} {interpolation} image {i}")


# ---- crops --------------------------------------------------------------------------------------

def draw_boxes(rng, n, h, w):
    bh = rng.integers(1, h + 1, n)
    bw = rng.integers(1, w + 1, n)
    top = np.array([rng.integers(0, h - a + 1) for a in bh])
    left = np.array([rng.integers(0, w - b + 1) for b in bw])
    return np.stack([top, left, bh, bw], axis=1).astype(np.int64)


def check_resized_crop(x, boxes, size, antialias, what):
    keep = x.copy()
    got = F.resized_crop(x, boxes, size, antialias=antialias)
    assert_bitwise(x, keep, f"{what}: input modified")
    assert_rounded(got, R.resized_crop_values(x, boxes, size, antialias=antialias), what)
    return got


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_matches_reference(antialias, rng):
    for h, w in SIZES:
        for c in (1, 3):
            x = make_images(rng, 4, h, w, c, "random")
            for size in [(1, 1), (2, 3), (16, 17), (33, 31), (40, 40), 7, (5, 1), (1, 5)]:
                what = f"resized_crop {x.shape} -> {size} antialias={antialias}"
                check_resized_crop(x, draw_boxes(rng, 4, h, w), size, antialias, what)
            box = draw_boxes(rng, 1, h, w)[0]
            check_resized_crop(x[0], box, (9, 8), antialias, "single image, one box")
            check_resized_crop(x[0], tuple(int(b) for b in box), (9, 8), antialias, "tuple box")


def test_resized_crop_int_size_is_square(rng):
    x = make_images(rng, 2, 20, 30, 3, "random")
    boxes = draw_boxes(rng, 2, 20, 30)
    y = F.resized_crop(x, boxes, 11)
    assert y.shape == (2, 11, 11, 3)
    assert_bitwise(y, F.resized_crop(x, boxes, (11, 11)), "size 11 == (11, 11)")


@SETTINGS
@given(case=image_batches(channels=(1, 3, 2)), oh=DIMS, ow=DIMS, antialias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_resized_crop(case, oh, ow, antialias, seed):
    x, n, single = case
    rng = np.random.default_rng(seed)
    h, w = x.shape[-3:-1]
    boxes = draw_boxes(rng, n, h, w)
    check_resized_crop(x, boxes[0] if single else boxes, (oh, ow), antialias,
                       f"resized_crop {x.shape} -> {(oh, ow)} aa={antialias}")


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_full_box_same_size_is_identity(antialias, rng):
    for h, w in SIZES:
        x = make_images(rng, 3, h, w, 3, "random")
        boxes = np.tile([0, 0, h, w], (3, 1))
        assert_bitwise(F.resized_crop(x, boxes, (h, w), antialias=antialias), x, f"{h}x{w}")


def test_resized_crop_box_of_same_size_is_a_crop(rng):
    x = make_images(rng, 3, 31, 33, 3, "random")
    boxes = np.array([[0, 0, 10, 12], [5, 7, 10, 12], [21, 21, 10, 12]])
    y = F.resized_crop(x, boxes, (10, 12))
    for i, (t, l, bh, bw) in enumerate(boxes):
        assert_bitwise(y[i], x[i, t:t + bh, l:l + bw], f"box {i}")


def pad_crop_case(rng, n, h, w, c, padding, mode, fill_kind):
    offsets = rng.integers(0, 2 * padding + 1, (n, 2))
    fill = 0 if fill_kind == "default" else draw_fill(rng, c, fill_kind)
    return offsets, fill


def _paddings(mode, h, w):
    """0, 1, 4, 8; for "reflect" only those below min(h, w) (beyond: the test of its own below)."""
    return [p for p in (0, 1, 4, 8) if mode != "reflect" or p < min(h, w)]


@pytest.mark.parametrize("mode,fill_kind", [("constant", "default"), ("constant", "number"),
                                            ("constant", "channels"), ("edge", "default"),
                                            ("reflect", "default")])
def test_pad_crop_matches_reference(mode, fill_kind, rng):
    for h, w in SIZES:
        for c in (1, 3, 4):
            x = make_images(rng, 4, h, w, c, "random")
            for padding in _paddings(mode, h, w):
                off, fill = pad_crop_case(rng, 4, h, w, c, padding, mode, fill_kind)
                kw = dict(padding_mode=mode) if fill_kind == "default" else \
                    dict(fill=fill, padding_mode=mode)
                keep = x.copy()
                got = F.pad_crop(x, off, padding, **kw)
                assert_bitwise(x, keep, "input modified")
                assert_bitwise(got, R.pad_crop(x, off, padding, fill=fill, padding_mode=mode),
                               f"pad_crop {mode} p={padding} fill={fill} {x.shape}")
                assert_bitwise(F.pad_crop(x[2], off[2], padding, **kw),
                               R.pad_crop(x[2], off[2], padding, fill=fill, padding_mode=mode),
                               "pad_crop single image")


def test_pad_crop_reflect_beyond_the_image_follows_numpy(rng):
    """The contract says numpy.pad's "reflect", which is defined for any padding (it reflects
    repeatedly; a 1-pixel side repeats its pixel). torch's reflect pad stops at padding < size."""
    for h, w, p in [(1, 1, 1), (3, 5, 3), (3, 5, 4), (16, 2, 4), (4, 4, 8)]:
        x = make_images(rng, 2, h, w, 3, "random")
        off = rng.integers(0, 2 * p + 1, (2, 2))
        assert_bitwise(F.pad_crop(x, off, p, padding_mode="reflect"),
                       R.pad_crop(x, off, p, padding_mode="reflect"), f"reflect p={p} {h}x{w}")


@SETTINGS
@given(case=image_batches(channels=(1, 3, 2)), padding=st.integers(0, 10),
       mode=st.sampled_from(["constant", "edge", "reflect"]),
       fill_kind=st.sampled_from(["default", "number", "channels"]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_pad_crop(case, padding, mode, fill_kind, seed):
    x, n, single = case
    if mode == "reflect":
        padding = min(padding, min(x.shape[-3:-1]) - 1)
    rng = np.random.default_rng(seed)
    off, fill = pad_crop_case(rng, n, *x.shape[-3:], padding, mode, fill_kind)
    off = off[0] if single else off
    kw = dict(fill=fill) if mode == "constant" else {}
    assert_bitwise(F.pad_crop(x, off, padding, padding_mode=mode, **kw),
                   R.pad_crop(x, off, padding, fill=fill, padding_mode=mode),
                   f"pad_crop {mode} p={padding} fill={fill} {x.shape}")


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_crop_centre_offset_is_identity(mode, rng):
    for h, w in SIZES:
        x = make_images(rng, 3, h, w, 3, "random")
        for p in _paddings(mode, h, w):
            assert_bitwise(F.pad_crop(x, np.full((3, 2), p), p, padding_mode=mode), x,
                           f"pad_crop offset ({p}, {p}) {mode} {x.shape}")


# ---- CLAHE --------------------------------------------------------------------------------------

CLAHE_SIZES = [(1, 1), (3, 5), (8, 8), (16, 16), (16, 17), (17, 16), (15, 33), (32, 32),
               (33, 31), (40, 40), (64, 48)]
CLAHE_GRIDS = [(8, 8), (1, 1), (2, 3), (3, 2), (4, 4), (5, 7)]
CLAHE_LIMITS = [4.0, 0.0, 0.5, 1.0, 2.5, 40.0]


def _clahe_cases(rng):
    for h, w in CLAHE_SIZES:
        for grid in CLAHE_GRIDS:
            yield h, w, grid, float(rng.choice(CLAHE_LIMITS))


@pytest.mark.parametrize("c", [1, 3])
def test_clahe_matches_reference(c, rng):
    for h, w, grid, clip in _clahe_cases(rng):
        x = make_images(rng, 2, h, w, c, "mixed")
        keep = x.copy()
        got = F.clahe(x, clip, grid)
        assert_bitwise(x, keep, "input modified")
        assert_bitwise(got, R.clahe(x, clip, grid), f"clahe({clip}, {grid}) {x.shape}")
    x = make_images(rng, 1, 33, 31, c, "dark")
    assert_bitwise(F.clahe(x[0]), R.clahe(x[0]), "clahe single image, defaults")
    assert_bitwise(F.clahe(x, clip_limit=2.0, tile_grid_size=(4, 2)), R.clahe(x, 2.0, (4, 2)),
                   "clahe keywords")


def _cv2_clahe(cv2, x, clip, grid):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for k in range(x.shape[-1]):
            cl = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid)
            out[i, ..., k] = cl.apply(np.ascontiguousarray(x[i, ..., k]))
    return out


@pytest.mark.parametrize("c", [1, 3])
def test_clahe_matches_opencv(c, rng):
    cv2 = pytest.importorskip("cv2")
    for h, w, grid, clip in _clahe_cases(rng):
        x = make_images(rng, 2, h, w, c, "mixed")
        assert_bitwise(F.clahe(x, clip, grid), _cv2_clahe(cv2, x, clip, grid),
                       f"clahe vs cv2 ({clip}, {grid}) {x.shape}")


def test_clahe_reference_matches_opencv(rng):
    """The written-out algorithm itself (no cnnkit) against cv2, including sizes that divide the
    grid on one axis only (OpenCV then extends both axes)."""
    cv2 = pytest.importorskip("cv2")
    for h, w, grid, clip in _clahe_cases(rng):
        x = make_images(rng, 1, h, w, 1, "mixed")
        assert_bitwise(R.clahe(x, clip, grid), _cv2_clahe(cv2, x, clip, grid),
                       f"reference clahe ({clip}, {grid}) {h}x{w}")


@SETTINGS
@given(case=image_batches(), tx=st.integers(1, 9), ty=st.integers(1, 9),
       clip=st.sampled_from(CLAHE_LIMITS + [0.01, 3.3, 100.0]))
def test_hypothesis_clahe(case, tx, ty, clip):
    x, _, _ = case
    assert_bitwise(F.clahe(x, clip, (tx, ty)), R.clahe(x, clip, (tx, ty)),
                   f"clahe({clip}, {(tx, ty)}) {x.shape}")


# ---- apply_ops ----------------------------------------------------------------------------------

OPS = R.OPS


def _draw_magnitude(rng, name, h, w):
    if name in ("ShearX", "ShearY"):
        return rng.uniform(-0.3, 0.3)
    if name == "TranslateX":
        return rng.uniform(-0.45 * w, 0.45 * w)
    if name == "TranslateY":
        return rng.uniform(-0.45 * h, 0.45 * h)
    if name == "Rotate":
        return rng.uniform(-30, 30)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return rng.uniform(-0.9, 0.9)
    if name == "Posterize":
        return float(rng.integers(1, 9))
    if name == "Solarize":
        return rng.choice([rng.uniform(0, 256), float(rng.integers(0, 257))])
    return rng.uniform(-5, 5)  # ignored


def draw_policy(rng, n, k, h, w):
    ops = rng.integers(0, len(OPS), (n, k))
    mags = np.array([[_draw_magnitude(rng, OPS[o], h, w) for o in row] for row in ops])
    return ops, mags


def apply_ops_by_single_calls(x, ops, mags, interpolation, fill):
    """cnnkit's single-op functions in sequence, image by image (batches of one)."""
    geo = dict(interpolation=interpolation, fill=fill)
    calls = {
        "Identity": lambda y, m: y.copy(),
        "ShearX": lambda y, m: F.shear_x(y, m, **geo),
        "ShearY": lambda y, m: F.shear_y(y, m, **geo),
        "TranslateX": lambda y, m: F.translate_x(y, m, **geo),
        "TranslateY": lambda y, m: F.translate_y(y, m, **geo),
        "Rotate": lambda y, m: F.rotate(y, m, **geo),
        "Brightness": lambda y, m: F.adjust_brightness(y, 1.0 + m),
        "Color": lambda y, m: F.adjust_saturation(y, 1.0 + m),
        "Contrast": lambda y, m: F.adjust_contrast(y, 1.0 + m),
        "Sharpness": lambda y, m: F.adjust_sharpness(y, 1.0 + m),
        "Posterize": lambda y, m: F.posterize(y, int(m)),
        # pixels >= m  <=>  pixels >= ceil(m) for integer pixels
        "Solarize": lambda y, m: F.solarize(y, int(min(max(math.ceil(m), 0), 256))),
        "AutoContrast": lambda y, m: F.autocontrast(y),
        "Equalize": lambda y, m: F.equalize(y, "pil"),
        "Invert": lambda y, m: F.invert(y),
        "HFlip": lambda y, m: F.hflip(y),
        "VFlip": lambda y, m: F.vflip(y),
    }
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        y = x[i:i + 1]
        for o, m in zip(ops[i], mags[i]):
            name = o if isinstance(o, str) else OPS[int(o)]
            y = calls[name](y, float(m))
        out[i] = y[0]
    return out


@pytest.mark.parametrize("fill", [None, 128, [10, 20, 30]])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_apply_ops_equals_single_ops_in_sequence(interpolation, fill, rng):
    for h, w, k in [(16, 17, 2), (32, 32, 3), (7, 5, 1), (33, 31, 4)]:
        x = make_images(rng, 6, h, w, 3, "mixed")
        ops, mags = draw_policy(rng, 6, k, h, w)
        keep = x.copy()
        got = F.apply_ops(x, ops, mags, interpolation=interpolation, fill=fill)
        assert_bitwise(x, keep, "input modified")
        what = f"apply_ops {interpolation} fill={fill} {x.shape} k={k}"
        assert_bitwise(got, apply_ops_by_single_calls(x, ops, mags, interpolation, fill), what)
        names = [[OPS[o] for o in row] for row in ops]
        assert_bitwise(F.apply_ops(x, names, mags, interpolation=interpolation, fill=fill), got,
                       what + " (names)")
        if interpolation == "nearest":
            assert_bitwise(got, R.apply_ops(x, ops, mags, fill=fill), what + " vs reference")


def test_apply_ops_every_op(rng):
    """Each op alone on every image, C = 1 and 3; against the single-op calls and the reference."""
    for c in (1, 3):
        x = make_images(rng, len(OPS), 16, 17, c, "mixed")
        ops = np.arange(len(OPS))[:, None]
        mags = np.array([[_draw_magnitude(rng, name, 16, 17)] for name in OPS])
        got = F.apply_ops(x, ops, mags)
        assert_bitwise(got, apply_ops_by_single_calls(x, ops, mags, "nearest", None), f"C={c}")
        assert_bitwise(got, R.apply_ops(x, ops, mags), f"every op vs reference, C={c}")


@SETTINGS
@given(case=image_batches(), k=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       interpolation=st.sampled_from(["nearest", "bilinear"]))
def test_hypothesis_apply_ops(case, k, seed, interpolation):
    x, n, single = case
    if single:
        x = x[None]
    rng = np.random.default_rng(seed)
    ops, mags = draw_policy(rng, n, k, *x.shape[1:3])
    assert_bitwise(F.apply_ops(x, ops, mags, interpolation=interpolation),
                   apply_ops_by_single_calls(x, ops, mags, interpolation, None),
                   f"apply_ops {x.shape} {ops.tolist()}")


# ---- samplers -----------------------------------------------------------------------------------

def test_sample_resized_crop_params():
    for (h, w) in [(32, 32), (17, 40), (224, 180), (1, 1), (3, 200)]:
        p = F.sample_resized_crop_params(np.random.default_rng(0), 500, (h, w))
        b = p["boxes"]
        assert b.shape == (500, 4) and b.dtype == np.int64
        top, left, bh, bw = b.T
        assert (bh >= 1).all() and (bw >= 1).all()
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + bh <= h).all() and (left + bw <= w).all()
        again = F.sample_resized_crop_params(np.random.default_rng(0), 500, (h, w))["boxes"]
        assert_bitwise(again, b, "same seed, same boxes")
    b = F.sample_resized_crop_params(np.random.default_rng(1), 2000, (224, 224))["boxes"]
    area = b[:, 2] * b[:, 3] / 224**2
    ratio = b[:, 3] / b[:, 2]
    assert area.min() >= 0.07 and area.max() <= 1.0 and 0.7 < ratio.min() and ratio.max() < 1.4
    assert len(np.unique(b, axis=0)) > 1000
    # every try fails on a 10 x 1000 image with scale >= 0.9: torchvision's centre-crop fallback
    b = F.sample_resized_crop_params(np.random.default_rng(2), 3, (10, 1000), scale=(0.9, 1.0))
    assert_bitwise(b["boxes"], np.tile(np.array([0, 493, 10, 13], np.int64), (3, 1)), "fallback")


def test_sample_pad_crop_and_flip_params():
    for p in (0, 1, 4):
        o = F.sample_pad_crop_params(np.random.default_rng(0), 3000, p)["offsets"]
        assert o.shape == (3000, 2) and o.dtype == np.int64
        assert set(np.unique(o).tolist()) == set(range(2 * p + 1)), "uniform over [0, 2p]"
    for p, lo, hi in [(0.0, 0, 0), (1.0, 1, 1), (0.5, 0.45, 0.55), (0.2, 0.16, 0.24)]:
        a = F.sample_flip_params(np.random.default_rng(3), 4000, p)["applied"]
        assert a.shape == (4000,) and a.dtype == np.bool_
        assert lo <= a.mean() <= hi
    x = F.sample_flip_params(np.random.default_rng(5), 100)["applied"]
    assert_bitwise(x, F.sample_flip_params(np.random.default_rng(5), 100, 0.5)["applied"],
                   "p defaults to 0.5; same seed, same draws")


# ---- invariants: threads, ISA, out= -------------------------------------------------------------

def run_op(op, x, rng, out=None):
    """One call of `op` with per-image parameters drawn from rng (same rng state -> same call)."""
    n, h, w, c = x.shape
    kw = {} if out is None else dict(out=out)
    if op in COLOUR:
        return getattr(F, op)(x, draw_param(op, rng, n, h, w), **kw)
    if op in ("hflip", "vflip"):
        return getattr(F, op)(x, **kw)
    if op in GEOMETRY:
        return getattr(F, op)(x, draw_param(op, rng, n, h, w), interpolation="bilinear",
                              fill=[5] * c, **kw)
    if op == "affine":
        return F.affine(x, **_affine_params(rng, n, h, w), interpolation="nearest", fill=9, **kw)
    if op == "resized_crop":
        return F.resized_crop(x, draw_boxes(rng, n, h, w), (h, w), **kw)
    if op == "pad_crop":
        mode = "reflect" if min(h, w) > 4 else "edge"
        return F.pad_crop(x, rng.integers(0, 9, (n, 2)), 4, padding_mode=mode, **kw)
    if op == "clahe":
        return F.clahe(x, 3.0, (4, 3), **kw)
    raise AssertionError(op)


def reference_op(op, x, rng):
    """The reference of run_op's call (bilinear / resize values for the ops with a bound)."""
    n, h, w, c = x.shape
    if op in COLOUR:
        return getattr(R, op)(x, draw_param(op, rng, n, h, w))
    if op in ("hflip", "vflip"):
        return getattr(R, op)(x)
    if op in GEOMETRY:
        p = draw_param(op, rng, n, h, w)
        return bilinear_values(x, ref_kw(op, x, p), [5] * c)
    if op == "affine":
        return R.affine(x, **_affine_params(rng, n, h, w), fill=9)
    if op == "resized_crop":
        return R.resized_crop_values(x, draw_boxes(rng, n, h, w), (h, w))
    if op == "pad_crop":
        mode = "reflect" if min(h, w) > 4 else "edge"
        return R.pad_crop(x, rng.integers(0, 9, (n, 2)), 4, padding_mode=mode)
    if op == "clahe":
        return R.clahe(x, 3.0, (4, 3))
    raise AssertionError(op)


def check_against_reference(op, got, x, seed, what):
    ref = reference_op(op, x, np.random.default_rng(seed))
    if ref.dtype == np.uint8:
        assert_bitwise(got, ref, what)
    else:
        assert_rounded(got, ref, what)


@pytest.mark.parametrize("op", ALL_OPS)
def test_threads_bitwise(op, threads, rng):
    x = make_images(rng, 16, 48, 40, 3, "mixed")
    y = run_op(op, x, np.random.default_rng(7))
    with num_threads(1):
        y1 = run_op(op, x, np.random.default_rng(7))
    assert_bitwise(y, y1, f"{op} at {threads} threads vs 1")
    check_against_reference(op, y, x, 7, f"{op} at {threads} threads")


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_isa_level_matches_reference(op, isa, rng):
    for h, w in [(1, 1), (3, 3), (15, 17), (16, 16), (31, 33)]:
        for c in (1, 3):
            x = make_images(rng, 3, h, w, c, "mixed")
            check_against_reference(op, run_op(op, x, np.random.default_rng(11)), x, 11,
                                    f"{op} {x.shape} at {isa}")


@pytest.mark.parametrize("op", ALL_OPS)
def test_out_is_filled_and_returned(op, rng):
    x = make_images(rng, 3, 16, 17, 3, "random")
    want = run_op(op, x, np.random.default_rng(3))
    assert want is not x and not np.shares_memory(want, x)
    for pattern in (0x00, 0xA5, 0xFF):
        out = np.full(want.shape, pattern, np.uint8)
        assert run_op(op, x, np.random.default_rng(3), out=out) is out
        assert_bitwise(out, want, f"{op} out= ({pattern:#x})")


def test_apply_ops_and_resized_crop_out(rng):
    x = make_images(rng, 3, 16, 17, 3, "random")
    ops, mags = draw_policy(rng, 3, 2, 16, 17)
    out = np.full(x.shape, 0x5A, np.uint8)
    assert F.apply_ops(x, ops, mags, out=out) is out
    assert_bitwise(out, F.apply_ops(x, ops, mags), "apply_ops out=")
    boxes = draw_boxes(rng, 3, 16, 17)
    out = np.full((3, 9, 5, 3), 0x5A, np.uint8)
    assert F.resized_crop(x, boxes, (9, 5), out=out) is out
    assert_bitwise(out, F.resized_crop(x, boxes, (9, 5)), "resized_crop out= of the output size")
    with pytest.raises((TypeError, ValueError), match="out"):
        F.resized_crop(x, boxes, (9, 5), out=np.zeros(x.shape, np.uint8))


def _bad_outs():
    shape = (3, 16, 17, 3)
    yield "wrong-shape", np.zeros((3, 17, 16, 3), np.uint8)
    yield "float32", np.zeros(shape, np.float32)
    yield "non-contiguous", np.zeros((3, 16, 34, 3), np.uint8)[:, :, ::2]
    yield "list", np.zeros(shape, np.uint8).tolist()


@pytest.mark.parametrize("name,out", list(_bad_outs()), ids=[b[0] for b in _bad_outs()])
@pytest.mark.parametrize("op", ALL_OPS)
def test_bad_out_raises_naming_out(op, name, out, rng):
    if op == "resized_crop" and name == "wrong-shape":
        out = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises((TypeError, ValueError), match="out"):
        run_op(op, make_images(rng, 3, 16, 17, 3, "random"), rng, out=out)


@pytest.mark.parametrize("shape", [(0, 7, 5, 3), (2, 0, 5, 3), (2, 7, 0, 1)],
                         ids=["no-images", "zero-height", "zero-width"])
@pytest.mark.parametrize("op", COLOUR + ["hflip", "vflip"] + GEOMETRY)
def test_empty_images(op, shape):
    """An empty batch is an empty result; a zero-sized image is that or a ValueError (the
    contract does not say)."""
    x = np.zeros(shape, np.uint8)
    call = (lambda: getattr(F, op)(x)) if op in ("hflip", "vflip") else \
        (lambda: getattr(F, op)(x, 1.0))
    if shape[0] > 0:
        try:
            y = call()
        except ValueError as e:
            assert "images" in str(e), str(e)
            return
    else:
        y = call()
    assert y.shape == shape and y.dtype == np.uint8


# ---- oracles: torchvision -----------------------------------------------------------------------

def _chw(torch, img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def _hwc(t):
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy())


def test_colour_reference_matches_torchvision(rng):
    """The float32 emulation itself (no cnnkit) against torchvision, bit for bit."""
    torch, TF = _torchvision()
    for k in range(60):
        h, w = SIZES[k % len(SIZES)]
        c = (1, 3)[k % 2]
        img = make_images(rng, 1, h, w, c, "mixed")[0]
        f = float(_factor_values(rng, 1)[0])
        t = _chw(torch, img)
        for op in COLOUR:
            assert_bitwise(getattr(R, op)(img, f), _hwc(getattr(TF, op)(t, f)),
                           f"reference {op}({f}) {img.shape} vs torchvision")


@pytest.mark.parametrize("op", COLOUR)
def test_colour_matches_torchvision(op, rng):
    torch, TF = _torchvision()
    for h, w in SIZES:
        for c in (1, 3):
            x = make_images(rng, 3, h, w, c, "mixed")
            f = _factor_values(rng, 3)
            got = getattr(F, op)(x, f)
            for i in range(3):
                want = _hwc(getattr(TF, op)(_chw(torch, x[i]), float(f[i])))
                assert_bitwise(got[i], want, f"{op}({f[i]}) {x.shape} vs torchvision")


def _tv_geometry(TF, op, t, p, interpolation, fill):
    from torchvision.transforms import InterpolationMode
    im = InterpolationMode.NEAREST if interpolation == "nearest" else InterpolationMode.BILINEAR
    fl = None if fill is None else ([float(fill)] if np.isscalar(fill) else [float(v) for v in fill])
    if op == "rotate":
        return TF.rotate(t, p, interpolation=im, fill=fl)
    if op in ("shear_x", "shear_y"):
        d = math.degrees(math.atan(p))
        return TF.affine(t, angle=0.0, translate=[0, 0], scale=1.0,
                         shear=[d, 0.0] if op == "shear_x" else [0.0, d], interpolation=im,
                         fill=fl, center=[0, 0])
    if op in ("translate_x", "translate_y"):
        tr = [int(p), 0] if op == "translate_x" else [0, int(p)]
        return TF.affine(t, angle=0.0, translate=tr, scale=1.0, shear=[0.0, 0.0],
                         interpolation=im, fill=fl)
    raise AssertionError(op)


def _check_vs_torchvision(got, want, sx, sy, interpolation, what):
    d = np.abs(got.astype(np.int64) - want.astype(np.int64))
    if interpolation == "nearest":
        near = (_near_half(sx, HALF_EPS) | _near_half(sy, HALF_EPS))[..., None]
        bad = (d > 0) & ~near
    else:
        bad = d > 1
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} pixels differ from torchvision; first at "
                             f"{idx}: got {got[idx]}, torchvision {want[idx]}")


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("op", GEOMETRY)
def test_geometry_matches_torchvision(op, interpolation, rng):
    torch, TF = _torchvision()
    for h, w in SIZES:
        for c in (1, 3):
            for fill_kind in ("none", "number", "channels"):
                x = make_images(rng, 2, h, w, c, "random")
                fill = draw_fill(rng, c, fill_kind)
                p = draw_param(op, rng, 2, h, w)
                got = call_geometry(op, x, p, interpolation=interpolation, fill=fill)
                sx, sy = R.affine_source_coords(x, **ref_kw(op, x, p))
                for i in range(2):
                    want = _hwc(_tv_geometry(TF, op, _chw(torch, x[i]), float(p[i]),
                                             interpolation, fill))
                    _check_vs_torchvision(got[i], want, sx[i], sy[i], interpolation,
                                          f"{op}({p[i]}) {interpolation} fill={fill} {x.shape}")


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_affine_matches_torchvision(interpolation, rng):
    torch, TF = _torchvision()
    from torchvision.transforms import InterpolationMode
    im = InterpolationMode.NEAREST if interpolation == "nearest" else InterpolationMode.BILINEAR
    for k in range(40):
        h, w = SIZES[k % len(SIZES)]
        c = (1, 3)[k % 2]
        x = make_images(rng, 1, h, w, c, "random")
        prm = _affine_params(rng, 1, h, w)
        kw = dict(angle=float(prm["angle"][0]), translate=[int(t) for t in prm["translate"][0]],
                  scale=float(prm["scale"][0]), shear=[float(s) for s in prm["shear"][0]],
                  center=None if k % 3 == 0 else [int(rng.integers(0, w)), int(rng.integers(0, h))])
        fill = draw_fill(rng, c, ("none", "number", "channels")[k % 3])
        fl = None if fill is None else ([float(fill)] if np.isscalar(fill) else [float(v) for v in fill])
        got = F.affine(x, **kw, interpolation=interpolation, fill=fill)[0]
        want = _hwc(TF.affine(_chw(torch, x[0]), **kw, interpolation=im, fill=fl))
        sx, sy = R.affine_source_coords(x, **kw)
        _check_vs_torchvision(got, want, sx[0], sy[0], interpolation, f"affine {kw} {x.shape}")


def test_resized_crop_matches_torchvision(rng):
    torch, TF = _torchvision()
    from torchvision.transforms import InterpolationMode
    for k in range(60):
        h, w = SIZES[k % len(SIZES)]
        x = make_images(rng, 1, h, w, 3, "random")
        oh, ow = (int(v) for v in rng.integers(1, 41, 2))
        if ow == 1 and oh > 1:
            ow = 2  # torch's antialiased CPU resize repeats the first row for an output width of 1
        box = draw_boxes(rng, 1, h, w)
        for antialias in (True, False):
            got = F.resized_crop(x, box, (oh, ow), antialias=antialias)[0]
            t, l, bh, bw = (int(v) for v in box[0])
            want = _hwc(TF.resized_crop(_chw(torch, x[0]), t, l, bh, bw, [oh, ow],
                                        interpolation=InterpolationMode.BILINEAR,
                                        antialias=antialias))
            d = np.abs(got.astype(np.int64) - want.astype(np.int64))
            assert d.max() <= 1, f"resized_crop {box[0]} -> {(oh, ow)} aa={antialias}: {d.max()}"


def test_resized_crop_matches_pillow_float(rng):
    """Pillow's float ("F") bilinear resize is the antialias definition; cnnkit within 1 of its
    rounding, and the reference's values within 1e-4 of it."""
    PIL = pytest.importorskip("PIL.Image")
    for k in range(60):
        h, w = SIZES[k % len(SIZES)]
        x = make_images(rng, 1, h, w, 1, "random")
        oh, ow = (int(v) for v in rng.integers(1, 41, 2))
        box = draw_boxes(rng, 1, h, w)
        t, l, bh, bw = (int(v) for v in box[0])
        crop = x[0, t:t + bh, l:l + bw, 0].astype(np.float32)
        pil = np.asarray(PIL.fromarray(crop, "F").resize((ow, oh), PIL.Resampling.BILINEAR),
                         np.float64)
        v = R.resized_crop_values(x, box, (oh, ow))[0, ..., 0]
        assert np.abs(v - pil).max() < 1e-4, "reference vs Pillow"
        got = F.resized_crop(x, box, (oh, ow))[0, ..., 0]
        assert np.abs(got.astype(np.float64) - np.rint(pil)).max() <= 1


# ---- bad input ----------------------------------------------------------------------------------

def _call(op, x, **over):
    """A valid call of `op` on x with keyword overrides (for the bad-input tests)."""
    n = x.shape[0] if x.ndim == 4 else 1
    h, w = (x.shape[-3], x.shape[-2]) if x.ndim >= 3 else (1, 1)
    if op in COLOUR:
        return getattr(F, op)(x, over.get("factor", 1.5))
    if op in ("hflip", "vflip"):
        return getattr(F, op)(x)
    if op in ("rotate",):
        return F.rotate(x, over.get("angle", 10.0), interpolation=over.get("interpolation", "nearest"),
                        fill=over.get("fill"))
    if op in ("shear_x", "shear_y"):
        return getattr(F, op)(x, over.get("factor", 0.2),
                              interpolation=over.get("interpolation", "nearest"), fill=over.get("fill"))
    if op in ("translate_x", "translate_y"):
        return getattr(F, op)(x, over.get("pixels", 3),
                              interpolation=over.get("interpolation", "nearest"), fill=over.get("fill"))
    if op == "affine":
        kw = dict(angle=10.0, translate=(1, 2), scale=1.0, shear=(0.0, 0.0), interpolation="nearest",
                  fill=None)
        kw.update(over)
        return F.affine(x, **kw)
    if op == "resized_crop":
        boxes = over.get("boxes", np.tile([0, 0, h, w], (n, 1)) if x.ndim == 4 else (0, 0, h, w))
        return F.resized_crop(x, boxes, over.get("size", (5, 6)))
    if op == "pad_crop":
        offs = over.get("offsets", np.zeros((n, 2), np.int64) if x.ndim == 4 else (0, 0))
        return F.pad_crop(x, offs, over.get("padding", 2), fill=over.get("fill", 0),
                          padding_mode=over.get("padding_mode", "constant"))
    if op == "clahe":
        return F.clahe(x, over.get("clip_limit", 4.0), over.get("tile_grid_size", (8, 8)))
    if op == "apply_ops":
        return F.apply_ops(x, over.get("ops", np.zeros((n, 1), np.int64)),
                           over.get("magnitudes", np.zeros((n, 1))),
                           interpolation=over.get("interpolation", "nearest"), fill=over.get("fill"))
    raise AssertionError(op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.bool_])
@pytest.mark.parametrize("op", ALL_OPS + ["apply_ops"])
def test_non_uint8_images_raise_type_error(op, dtype):
    with pytest.raises(TypeError, match="images"):
        _call(op, np.zeros((2, 7, 5, 3), dtype))


@pytest.mark.parametrize("shape", [(7, 5), (2, 2, 7, 5, 3)])
@pytest.mark.parametrize("op", ALL_OPS + ["apply_ops"])
def test_bad_ndim_raises_value_error(op, shape):
    with pytest.raises(ValueError, match="images"):
        _call(op, np.zeros(shape, np.uint8))


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("op", COLOUR)
def test_colour_ops_need_one_or_three_channels(op, c, rng):
    with pytest.raises(ValueError, match="images"):
        _call(op, make_images(rng, 2, 7, 5, c, "random"))


@pytest.mark.parametrize("bad", [-0.1, -1.0, [1.0, -0.5], float("nan"), float("inf"),
                                 [1.0, float("nan")]], ids=str)
@pytest.mark.parametrize("op", COLOUR)
def test_bad_factor_raises_naming_factor(op, bad, rng):
    with pytest.raises(ValueError, match="factor"):
        _call(op, make_images(rng, 2, 7, 5, 3, "random"), factor=bad)


@pytest.mark.parametrize("length", [0, 1, 3])
@pytest.mark.parametrize("op,name", [(o, "factor") for o in COLOUR] +
                         [("rotate", "angle"), ("shear_x", "factor"), ("shear_y", "factor"),
                          ("translate_x", "pixels"), ("translate_y", "pixels"),
                          ("affine", "angle"), ("affine", "scale")])
def test_wrong_length_parameter_raises_naming_it(op, name, length, rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    with pytest.raises(ValueError, match=name):
        _call(op, x, **{name: np.full(length, 1.0)})
    with pytest.raises((TypeError, ValueError), match=name):
        _call(op, x[0], **{name: np.full(2, 1.0)})          # per-image array on a single image


@pytest.mark.parametrize("name,bad", [("translate", np.zeros((3, 2))), ("translate", (1, 2, 3)),
                                      ("shear", np.zeros((1, 2))), ("shear", np.zeros((2, 3))),
                                      ("center", (1, 2, 3)), ("scale", 0.0), ("scale", -1.0),
                                      ("scale", [1.0, 0.0])], ids=str)
def test_bad_affine_parameter_raises_naming_it(name, bad, rng):
    with pytest.raises((TypeError, ValueError), match=name):
        _call("affine", make_images(rng, 2, 7, 5, 3, "random"), **{name: bad})


@pytest.mark.parametrize("op", GEOMETRY + ["affine", "apply_ops"])
def test_bad_interpolation_and_fill(op, rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    for bad in ("cubic", "bicubic", "", None):
        with pytest.raises((TypeError, ValueError), match="interpolation"):
            _call(op, x, interpolation=bad)
    for bad in ([1, 2], [1, 2, 3, 4]):
        with pytest.raises(ValueError, match="fill"):
            _call(op, x, fill=bad)


@pytest.mark.parametrize("boxes", [
    [[-1, 0, 3, 3], [0, 0, 3, 3]], [[0, -1, 3, 3], [0, 0, 3, 3]], [[5, 0, 3, 3], [0, 0, 3, 3]],
    [[0, 3, 3, 3], [0, 0, 3, 3]], [[0, 0, 0, 3], [0, 0, 3, 3]], [[0, 0, 3, 0], [0, 0, 3, 3]],
    [[0, 0, 8, 5], [0, 0, 3, 3]], [[0, 0, 3, 3]], [[0, 0, 3, 3]] * 3, [[0, 0, 3], [0, 0, 3]],
], ids=lambda b: str(b).replace(" ", ""))
def test_bad_boxes_raise_naming_boxes(boxes, rng):
    with pytest.raises(ValueError, match="boxes"):
        _call("resized_crop", make_images(rng, 2, 7, 5, 3, "random"), boxes=np.array(boxes))


@pytest.mark.parametrize("size", [0, -3, (0, 4), (4, -1), (1, 2, 3)], ids=str)
def test_bad_size_raises_naming_size(size, rng):
    with pytest.raises((TypeError, ValueError), match="size"):
        _call("resized_crop", make_images(rng, 2, 7, 5, 3, "random"), size=size)


@pytest.mark.parametrize("offsets", [[[0, 0], [0, 5]], [[-1, 0], [0, 0]], [[0, 0], [5, 0]],
                                     [[0, 0]], [[0, 0]] * 3, [[0], [0]]],
                         ids=lambda o: str(o).replace(" ", ""))
def test_bad_offsets_raise_naming_offsets(offsets, rng):
    with pytest.raises(ValueError, match="offsets"):
        _call("pad_crop", make_images(rng, 2, 7, 5, 3, "random"), offsets=np.array(offsets))


def test_bad_padding_and_padding_mode(rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    with pytest.raises(ValueError, match="padding"):
        _call("pad_crop", x, padding=-1)
    for bad in ("wrap", "mirror", "", "CONSTANT"):
        with pytest.raises(ValueError, match="padding_mode"):
            _call("pad_crop", x, padding_mode=bad)
    with pytest.raises(ValueError, match="fill"):
        _call("pad_crop", x, fill=[1, 2])


@pytest.mark.parametrize("clip_limit", [-0.5, -1, -1e-9], ids=str)
def test_bad_clip_limit(clip_limit, rng):
    with pytest.raises(ValueError, match="clip_limit"):
        _call("clahe", make_images(rng, 2, 7, 5, 3, "random"), clip_limit=clip_limit)


@pytest.mark.parametrize("grid", [(0, 8), (8, 0), (-1, 2), (8,), (2, 2, 2)], ids=str)
def test_bad_tile_grid_size(grid, rng):
    with pytest.raises((TypeError, ValueError), match="tile_grid_size"):
        _call("clahe", make_images(rng, 2, 7, 5, 3, "random"), tile_grid_size=grid)


@pytest.mark.parametrize("ops", [[["Foo"], ["Identity"]], [["Identity"], [""]], [[17], [0]],
                                 [[-1], [0]]], ids=lambda o: str(o).replace(" ", ""))
def test_bad_ops_raise_naming_ops(ops, rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    with pytest.raises(ValueError, match="ops"):
        _call("apply_ops", x, ops=ops, magnitudes=np.zeros((2, 1)))


@pytest.mark.parametrize("ops", [[[0], [0], [0]], [[0]], [0, 0]],
                         ids=lambda o: str(o).replace(" ", ""))
def test_ops_of_the_wrong_shape_raise(ops, rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    with pytest.raises(ValueError, match="ops|magnitudes"):
        _call("apply_ops", x, ops=ops, magnitudes=np.zeros((2, 1)))


def test_bad_magnitudes_raise_naming_magnitudes(rng):
    x = make_images(rng, 2, 7, 5, 3, "random")
    ops = np.zeros((2, 2), np.int64)
    for bad in (np.zeros((2, 1)), np.zeros((3, 2)), np.zeros(2)):
        with pytest.raises(ValueError, match="magnitudes"):
            _call("apply_ops", x, ops=ops, magnitudes=bad)


def test_clahe_rejects_a_tile_grid_too_large_to_tabulate():
    img = np.zeros((4, 5, 1), np.uint8)
    with pytest.raises(ValueError, match="tile_grid_size"):
        F.clahe(img, 2.0, (1024, 1024))
    assert F.clahe(img, 2.0, (16, 16)).shape == img.shape  # more tiles than pixels is still fine


def test_functional_namespace_is_its_public_names():
    """dir() lists the functions, not the modules functional imports (np, math, annotations)."""
    assert not {"np", "math", "annotations", "numbers"} & set(dir(F))
    assert dir(F) == sorted(F.__all__) and len(set(F.__all__)) == len(F.__all__)
    for name in F.__all__:
        assert hasattr(F, name), name


def test_colour_op_on_an_nchw_batch_says_uint8_images_are_nhwc(rng):
    x = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"NHWC \(N, H, W, C\).*\(2, 3, 8, 8\).*transpose\(0, 2, 3, 1\)"):
        F.adjust_brightness(x, 1.5)
    with pytest.raises(ValueError, match=r"NHWC \(N, H, W, C\).*\(2, 3, 8, 8\)"):
        F.apply_ops(x, [["Rotate", "Contrast"]] * 2, [[10.0, 0.5]] * 2)
