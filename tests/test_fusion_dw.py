"""The fused depthwise NHWC kernels (cpp/src/conv/dw_nhwc.h, dw_fused_forward_nhwc and the
prologue paths of the weight gradient): ``_core.conv2d_fused`` and
``_core.conv2d_fused_backward_weight`` on the problems the registry runs on conv2d_dw_f32_nhwc.

* hypothesis shapes around the SIMD width (C 1..40, planes 1..12, stride 1 and 2, padding 0 and 1,
  kernels 3 and 5, multiplier 1 and 2; every prologue and epilogue combination), at every ISA
  level: against the float64 reference of test_fusion.py, bitwise equal at 1 and 2 threads, and
  bitwise the plain depthwise pass on the materialised prologue output ``a`` (the kernels apply the
  prologue as they read x and then run the plain arithmetic);
* ``cnnkit.ops.fused.last_kernel`` names the dw entry (not "reference") and the backward's weight
  gradient runs compiled;
* planted ties: ``fma(s, x, t)`` where ``s*x + t`` rounded twice is exactly 0, so a kernel that
  multiplies and adds separately fails.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit import _core
from cnnkit.ops import conv2d, conv2d_backward
from cnnkit.ops import fused as F
from conftest import ISA_LEVELS, assert_bitwise, assert_close, isa_level, num_threads
from reference.conv import to_nchw, to_nhwc
from test_fusion import fused_backward_ref, fused_ref


def _exact_prologue(x, s, t, relu):
    """float32 ``max(fma(s, x, t), 0)`` in NHWC: the float32 product is exact in float64 and the
    one rounding of the sum to float32 is the fma's (up to double rounding, which these random
    values do not hit)."""
    a = x.astype(np.float64)
    if s is not None:
        a = a * s.astype(np.float64) + t.astype(np.float64)
    a = a.astype(np.float32)
    return np.maximum(a, np.float32(0)) if relu else a


def _case(rng, N, C, m, H, W, k, stride, pad):
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((C * m, 1, k, k)).astype(np.float32)
    s = (rng.uniform(0.5, 2.0, C) * rng.choice((-1, 1), C)).astype(np.float32)
    t = rng.standard_normal(C).astype(np.float32)
    g = F._Geom(x.shape, w.shape, stride, pad, 1, C, "NHWC", np.float32)
    return x, w, s, t, g


def _check(N, C, m, H, W, k, stride, pad, bias, scale, relu, epi, seed):
    rng = np.random.default_rng(seed)
    H, W = max(H, k - 2 * pad), max(W, k - 2 * pad)
    x, w, s, t, g = _case(rng, N, C, m, H, W, k, stride, pad)
    b = rng.standard_normal(C * m).astype(np.float32) if bias else None
    sc, sh = (s, t) if scale else (None, None)
    plain = _core.conv_algorithm(g.core(), 0)
    assert plain.startswith("conv2d_dw_f32_nhwc__"), plain
    yshape = (N, g.Ho, g.Wo, C * m)
    res = rng.standard_normal(yshape).astype(np.float32) if epi in ("res", "res_relu") else None
    post, stats = epi in ("relu", "res_relu"), epi == "stats"
    kw = dict(stride=stride, padding=pad, groups=C, layout="NHWC")
    outs = {}
    for threads in (1, 2):
        with num_threads(threads):
            out = F.conv2d_fused(x, w, b, pre_scale=sc, pre_shift=sh, pre_relu=relu, residual=res,
                                 post_relu=post, stats=stats, **kw)
            assert F.last_kernel == plain, F.last_kernel
            outs[threads] = out if stats else (out,)
    for u, v in zip(outs[1], outs[2]):
        assert_bitwise(v, u, "fused forward at 2 threads vs 1")
    y = outs[1][0]
    # the plain pass on the materialised a: the same bits
    a = _exact_prologue(x, sc, sh, relu)
    y_plain = conv2d(a, w, b, **kw)
    if res is not None:
        y_plain = y_plain + res
    if post:
        y_plain = np.maximum(y_plain, np.float32(0))
    assert_bitwise(y, y_plain, "fused forward vs plain on a")
    y_ref, _, m_ref, v_ref = fused_ref(to_nchw(x), w, b, stride, pad, 1, C, sc, sh, relu,
                                       None if res is None else to_nchw(res), post)
    L = k * k
    assert_close(to_nchw(y), y_ref, np.float32, length=L, what="y")
    if stats:
        scl = np.abs(y_ref).max() + 1
        assert_close(outs[1][1] / scl, m_ref / scl, np.float32, length=L, what="mean")
        assert_close(outs[1][2] / scl**2, v_ref / scl**2, np.float32, length=L, what="var")
    # the weight gradient of conv(prologue(x))
    gy = rng.standard_normal(yshape).astype(np.float32)
    got = {}
    for threads in (1, 2):
        dw, db = np.full(w.shape, np.nan, np.float32), np.full(C * m, np.nan, np.float32)
        with num_threads(threads):
            name = _core.conv2d_fused_backward_weight(gy, x, dw, db, g.core(), sc, sh, relu)
        assert name == _core.conv_algorithm(g.core(), 2), name
        got[threads] = (dw, db)
    for u, v in zip(got[1], got[2]):
        assert_bitwise(v, u, "fused weight gradient at 2 threads vs 1")
    _, dw_plain, db_plain = conv2d_backward(gy, a, w, **kw, needs=("weight", "bias"))
    assert_bitwise(got[1][0], dw_plain, "fused weight gradient vs plain on a")
    assert_bitwise(got[1][1], db_plain, "bias gradient")
    ref = fused_backward_ref(to_nchw(gy), to_nchw(x), w, stride, pad, 1, C, sc, sh, relu, None, False)
    Lw = N * g.Ho * g.Wo
    assert_close(got[1][0], ref[1], np.float32, length=Lw, what="grad_w")
    assert_close(got[1][1], ref[2], np.float32, length=Lw, what="grad_b")


# Named shapes: the three kernels of the entry (register rows: 3x3 stride 1, C % 16 == 0, planes
# <= 64 pixels; padded row bands: other multiplier-1 problems; per-row: multiplier 2), batches on
# both sides of 16 (the units: whole images, or row bands of an image).
NAMED = [(3, 16, 1, 7, 7, 3, 1, 1), (2, 32, 1, 8, 8, 3, 1, 0), (2, 17, 1, 9, 6, 3, 1, 1), (17, 16, 1, 5, 5, 3, 1, 1),
         (2, 33, 1, 12, 11, 3, 2, 1), (1, 16, 1, 10, 10, 5, 1, 1), (2, 5, 2, 6, 7, 3, 1, 1), (18, 3, 2, 4, 5, 3, 2, 0)]


@pytest.mark.parametrize("case", NAMED, ids=["x".join(map(str, c)) for c in NAMED])
def test_fused_dw_named(case, isa):
    _check(*case, bias=True, scale=True, relu=True, epi="stats", seed=sum(case))


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 40), m=st.sampled_from((1, 1, 1, 2)), H=st.integers(1, 12),
       W=st.integers(1, 12), k=st.sampled_from((3, 3, 3, 5)), stride=st.integers(1, 2), pad=st.integers(0, 1),
       bias=st.booleans(), scale=st.booleans(), relu=st.booleans(),
       epi=st.sampled_from(("none", "stats", "stats", "res", "relu", "res_relu")),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31 - 1))
def test_fused_dw_hypothesis(N, C, m, H, W, k, stride, pad, bias, scale, relu, epi, level, seed):
    with isa_level(level):
        _check(N, C, m, H, W, k, stride, pad, bias, scale, relu, epi, seed)


def test_fused_dw_backward_runs_compiled(monkeypatch):
    """conv2d_fused_backward on a dw NHWC problem takes the compiled weight gradient: the
    prologue's output is never materialised for it."""
    rng = np.random.default_rng(1)
    x, w, s, t, g = _case(rng, 2, 24, 1, 6, 6, 3, 1, 1)
    gy = rng.standard_normal((2, 6, 6, 24)).astype(np.float32)
    monkeypatch.setattr(F, "_prologue", lambda *a, **k: pytest.fail("the prologue was materialised"))
    gr = F.conv2d_fused_backward(gy, x, w, padding=1, groups=24, layout="NHWC", pre_scale=s, pre_shift=t,
                                 pre_relu=True, needs=("weight", "bias"))
    ref = fused_backward_ref(to_nchw(gy), to_nchw(x), w, 1, 1, 1, 24, s, t, True, None, False)
    assert_close(gr.weight, ref[1], np.float32, length=72, what="grad_w")
    assert_close(gr.bias, ref[2], np.float32, length=72, what="grad_b")


@pytest.mark.parametrize("C,H,k", [(16, 7, 3), (20, 9, 3), (32, 3, 1)])
def test_fused_dw_planted_ties(C, H, k, isa):
    """Every pixel of the first half of the channels is x0 with t = -(s*x0) rounded to float32:
    s*x + t is exactly 0 with two roundings, the float32 rounding error of s*x0 with one. The
    forward (weight: the centre tap 1, the rest 0) returns prologue(x) itself, and the weight
    gradient with grad_output 1 sums it: a multiply-then-add kernel gives 0 for those channels."""
    rng = np.random.default_rng(C + H + k)
    N = 2
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    s = (rng.uniform(0.5, 2.0, C) * rng.choice((-1, 1), C)).astype(np.float32)
    t = rng.standard_normal(C).astype(np.float32)
    half = C // 2
    x[..., :half] = x[0, 0, 0, :half]
    t[:half] = -(s * x[0, 0, 0, :])[:half]
    err = (s.astype(np.float64) * x[0, 0, 0].astype(np.float64) + t)[:half]  # exact: the product's rounding error
    assert np.count_nonzero(err) >= half // 2, "the planted ties do not separate fma from mul+add"
    w = np.zeros((C, 1, k, k), np.float32)
    w[:, 0, k // 2, k // 2] = 1
    for relu in (False, True):
        y = F.conv2d_fused(x, w, padding=k // 2, groups=C, layout="NHWC", pre_scale=s, pre_shift=t, pre_relu=relu)
        assert F.last_kernel.startswith("conv2d_dw_f32_nhwc__")
        a = _exact_prologue(x, s, t, relu)
        assert_bitwise(y, a, f"forward = prologue(x), relu={relu}")
        want = np.maximum(err, 0) if relu else err
        assert_bitwise(y[0, 0, 0, :half], want.astype(np.float32), "ties")
        g = F._Geom(x.shape, w.shape, 1, k // 2, 1, C, "NHWC", np.float32)
        dw = np.empty(w.shape, np.float32)
        _core.conv2d_fused_backward_weight(np.ones_like(y), x, dw, None, g.core(), s, t, relu)
        count = N * H * H
        got = dw[:half, 0, k // 2, k // 2]
        assert_close(got, count * want, np.float32, length=count, what="weight gradient of the ties")
        assert np.all((got != 0) == (want != 0))


def test_fused_dw_nchw_still_declines():
    """NCHW depthwise problems keep the reference path (ValueError from the compiled entry)."""
    x = np.ones((2, 16, 6, 6), np.float32)
    w = np.ones((16, 1, 3, 3), np.float32)
    g = F._Geom(x.shape, w.shape, 1, 1, 1, 16, "NCHW", np.float32)
    with pytest.raises(ValueError, match="no fused kernel"):
        _core.conv2d_fused(x, w, np.empty_like(x), g.core(), None, np.ones(16, np.float32),
                           np.zeros(16, np.float32), True, None, False, None, None)
    F.conv2d_fused(x, w, padding=1, groups=16, pre_scale=np.ones(16, np.float32), pre_shift=np.zeros(16, np.float32))
    assert F.last_kernel == "reference"
    F.conv2d_fused(to_nhwc(x), w, padding=1, groups=16, layout="NHWC", pre_scale=np.ones(16, np.float32),
                   pre_shift=np.zeros(16, np.float32))
    assert F.last_kernel.startswith("conv2d_dw_f32_nhwc__")


def _sequential_sums(v, d):
    """Per channel: the sum of ``v`` and of ``v * d`` over each image's pixels in row-major order,
    one double at a time (a sequential sum, as each SIMD lane of the gradient epilogue adds its
    channel), then over the images in order: the order backward_input_fused promises."""
    N, C = v.shape[0], v.shape[-1]
    v64 = v.astype(np.float64).reshape(N, -1, C)
    p64 = v64 * d.reshape(N, -1, C)
    s1, s2 = np.zeros(C), np.zeros(C)
    for n in range(N):
        if v64.shape[1]:
            s1 += np.cumsum(v64[n], axis=0)[-1]
            s2 += np.cumsum(p64[n], axis=0)[-1]
    return s1, s2


def assert_same_pass(got, own, how):
    """(dw, dx, sum, sumxc) of a call that computes several passes at once, bitwise those of the
    passes on their own."""
    for u, v, what in zip(got, own, ("the weight gradient", "dx", "sum", "sumxc")):
        assert_bitwise(u, v, f"{what} {how} vs its own pass")


def _input_case(N, C, H, W, k, pad, dil, epi, seed):
    """A stride-1 depthwise NHWC problem for the fused input gradient: ``(rng, x, w, scale,
    shift, center, geometry, grad_out, residual)`` (the residual where ``epi`` names it; planes
    at least one tap wide)."""
    rng = np.random.default_rng(seed)
    H, W = max(H, (k - 1) * dil + 1 - 2 * pad), max(W, (k - 1) * dil + 1 - 2 * pad)
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2.0, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    center = rng.standard_normal(C)
    g = F._Geom(x.shape, w.shape, 1, pad, dil, C, "NHWC", np.float32)
    gy = rng.standard_normal((N, g.Ho, g.Wo, C)).astype(np.float32)
    res = rng.standard_normal(x.shape).astype(np.float32) if "res" in epi else None
    return rng, x, w, sc, sh, center, g, gy, res


def _check_input_rows(N, C, H, W, k, pad, dil, epi, seed):
    rng, x, w, sc, sh, center, g, gy, res = _input_case(N, C, H, W, k, pad, dil, epi, seed)
    mask = rng.standard_normal(x.shape).astype(np.float32) if "mask" in epi else None
    scale = "noscale" not in epi
    s, t = (sc, sh) if scale else (None, None)
    plain = np.empty_like(x)
    _core.conv_backward_input(gy, w, plain, g.core())
    plain_name = _core.conv_algorithm(g.core(), 1)
    assert plain_name.startswith("conv2d_dw_f32_nhwc__"), plain_name
    got = []
    for threads in (1, 2):
        dx = np.full(x.shape, np.nan, np.float32)
        with num_threads(threads):
            name, s1, s2 = _core.conv2d_fused_backward_input(gy, w, dx, g.core(), x, s, t, True, center, res, mask)
        assert name == plain_name, (name, plain_name)
        got.append((dx, s1, s2))
    for u, v in zip(*got):
        assert_bitwise(v, u, "fused input gradient at 2 threads vs 1")
    dx, s1, s2 = got[0]
    # dx: the plain kernel's bits, plus the residual, masked
    z = mask.astype(np.float64) if mask is not None else (
        x.astype(np.float64) * sc + sh if scale else x.astype(np.float64))
    keep = z > 0
    pre = plain + res if res is not None else plain
    assert_bitwise(dx, np.where(keep, pre, np.float32(0)), "the plain kernel's dx (+ residual), masked")
    # the sums: bitwise in the promised order, and against float64 from the float64 gradient
    want1, want2 = _sequential_sums(dx, x.astype(np.float64) - center)
    assert_bitwise(s1, want1, "grad_sum in image, row, pixel order")
    assert_bitwise(s2, want2, "grad_sumxc in image, row, pixel order")
    ga = to_nhwc(fused_backward_ref(to_nchw(gy), to_nchw(x), w, 1, pad, dil, C, None, None, False, None,
                                    False)[6])
    gz = (ga + (res if res is not None else 0)) * keep
    assert_close(dx, gz, np.float32, length=k * k + 1, what="masked input gradient")
    L = (k * k + 1) * N * H * W
    assert_close(s1, gz.sum(axis=(0, 1, 2)), np.float32, length=L, what="sum")
    assert_close(s2, (gz * (x - center)).sum(axis=(0, 1, 2)), np.float32, length=L, what="sumxc")
    if gy.shape == x.shape:
        # in place over grad_out (cnnkit.nn's depthwise layers): the same bits, through one band
        # an image, several, or the register rows (which read a copy of the image's gradient)
        for threads in (1, 2):
            gi = gy.copy()
            with num_threads(threads):
                _, s1i, s2i = _core.conv2d_fused_backward_input(gi, w, gi, g.core(), x, s, t, True, center, res,
                                                                mask)
            assert_bitwise(gi, dx, f"dx written over grad_out, {threads} threads")
            assert_bitwise(s1i, s1, "grad_sum in place")
            assert_bitwise(s2i, s2, "grad_sumxc in place")


# (N, C, H, W, k, pad, dilation): the stride-1 depthwise input gradient with the epilogue on each
# dx row (dw_nhwc.h, dw_backward_input_fused_nhwc): the band kernel (planes over 64 pixels, C not a
# multiple of 16, 5x5, dilation 2) and the register rows (3x3, C % 16 == 0, planes <= 64 pixels),
# batches on both sides of 16, channels on both sides of the vector widths; mobilenet_small's
# shapes at a smaller batch; images whose padded rows pass 1 MiB (several bands an image).
_INPUT_ROWS = [(2, 16, 8, 8, 3, 1, 1), (17, 16, 5, 7, 3, 1, 1), (3, 24, 9, 9, 3, 1, 1), (1, 40, 12, 11, 5, 2, 1),
               (2, 33, 10, 6, 3, 2, 2), (3, 7, 6, 13, 3, 0, 1), (2, 128, 16, 16, 3, 1, 1), (2, 32, 32, 32, 3, 1, 1),
               (1, 64, 1, 1, 3, 1, 1), (1, 64, 150, 62, 3, 1, 1), (2, 48, 75, 80, 5, 2, 1)]


@pytest.mark.parametrize("case", _INPUT_ROWS, ids=["x".join(map(str, c)) for c in _INPUT_ROWS])
@pytest.mark.parametrize("epi", ["scale", "noscale", "mask", "res_scale", "res_mask"])
def test_fused_dw_input_gradient_rows(case, epi, isa):
    """``_core.conv2d_fused_backward_input`` on stride-1 depthwise NHWC problems: the plain
    kernel's name and dx bits (plus the residual, masked by the prologue's ReLU or a stored mask),
    both sums bitwise in image, row, pixel order and close to float64; bitwise at 1 and 2
    threads; at every ISA level."""
    _check_input_rows(*case, epi=epi, seed=sum(case) + len(epi))


def test_input_gradient_in_place_only_where_the_kernel_reads_ahead():
    """grad_input = grad_out is a ValueError before anything is written, but for a depthwise
    convolution at stride 1 whose output is the input's size: a dense 3x3 and a dense 1x1
    (16 -> 16, the same size) are refused; a depthwise 3x3 at stride 2 by its size."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    center = np.zeros(16)
    for k in (3, 1):  # a dense 3x3 and a dense 1x1, 16 -> 16, the same size
        w = rng.standard_normal((16, 16, k, k)).astype(np.float32)
        g = F._Geom(x.shape, w.shape, 1, k // 2, 1, 1, "NHWC", np.float32)
        gy = rng.standard_normal(x.shape).astype(np.float32)
        keep = gy.copy()
        with pytest.raises(ValueError, match="in place over grad_out only"):
            _core.conv2d_fused_backward_input(gy, w, gy, g.core(), x, None, None, True, center)
        assert_bitwise(gy, keep, "nothing written")
    w = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    g2 = F._Geom(x.shape, w.shape, 2, 1, 1, 16, "NHWC", np.float32)
    gy = rng.standard_normal((2, g2.Ho, g2.Wo, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="grad_input"):  # (a different size: not the same array)
        _core.conv2d_fused_backward_input(gy, w, gy, g2.core(), x, None, None, True, center)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 18), C=st.integers(1, 40), H=st.integers(1, 12), W=st.integers(1, 12),
       k=st.sampled_from((1, 3, 3, 5)), pad=st.integers(0, 2), dil=st.sampled_from((1, 1, 2)),
       epi=st.sampled_from(("scale", "noscale", "mask", "res_scale", "res_mask")),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31 - 1))
def test_fused_dw_input_gradient_rows_hypothesis(N, C, H, W, k, pad, dil, epi, level, seed):
    with isa_level(level):
        _check_input_rows(N, C, H, W, k, min(pad, k // 2 * dil), dil, epi, seed)


def _check_weight_in_pass(N, C, H, W, k, pad, dil, epi, seed):
    _, x, w, sc, sh, center, g, gy, res = _input_case(N, C, H, W, k, pad, dil, epi, seed)
    scale, relu = "noscale" not in epi, "norelu" not in epi
    s, t = (sc, sh) if scale else (None, None)
    # the weight gradient's own pass, and the input gradient's without it
    dw_own = np.full(w.shape, np.nan, np.float32)
    _core.conv2d_fused_backward_weight(gy, x, dw_own, None, g.core(), s, t, relu)
    dx_own = np.full(x.shape, np.nan, np.float32)
    _, s1_own, s2_own = _core.conv2d_fused_backward_input(gy, w, dx_own, g.core(), x, s, t, True, center, res)
    for threads in (1, 2):
        dx = np.full(x.shape, np.nan, np.float32)
        dw = np.full(w.shape, np.nan, np.float32)
        with num_threads(threads):
            name, s1, s2 = _core.conv2d_fused_backward_input(gy, w, dx, g.core(), x, s, t, True, center, res,
                                                             grad_weight=(dw, x, s, t, relu))
        assert name.startswith("conv2d_dw_f32_nhwc__"), name
        assert_same_pass((dw, dx, s1, s2), (dw_own, dx_own, s1_own, s2_own), f"in the pass ({threads} threads)")
    a = _exact_prologue(x, s, t, relu)
    ref = fused_backward_ref(to_nchw(gy), to_nchw(a), w, 1, pad, dil, C, None, None, False, None, False)
    assert_close(dw, ref[1], np.float32, length=N * g.Ho * g.Wo, what="grad_w")


# (N, C, H, W, k, pad, dilation): the fused input gradient of stride-1 depthwise problems asked for
# the weight gradient too (grad_weight): both weight-gradient kernels of the entry (dw3's sums: 3x3,
# C % 16 == 0, planes <= 256 pixels; the band kernel's: 5x5, dilation 2, no padding, a channel tail
# past the vectors), batches on both sides of 8 (one band an image, or several).
_WEIGHT_IN_PASS = [(3, 16, 8, 8, 3, 1, 1), (2, 32, 16, 16, 3, 1, 1), (9, 16, 5, 7, 3, 1, 1),
                   (8, 24, 9, 9, 3, 1, 1), (8, 20, 17, 17, 3, 1, 1), (9, 16, 12, 11, 5, 2, 1),
                   (8, 33, 10, 6, 3, 2, 2), (8, 7, 6, 13, 3, 0, 1), (2, 24, 9, 9, 3, 1, 1),
                   (8, 16, 3, 3, 5, 2, 1), (8, 32, 32, 32, 3, 1, 1)]


@pytest.mark.parametrize("case", _WEIGHT_IN_PASS, ids=["x".join(map(str, c)) for c in _WEIGHT_IN_PASS])
@pytest.mark.parametrize("epi", ["relu", "noscale", "norelu", "res_relu"])
def test_fused_dw_weight_gradient_in_the_input_pass(case, epi, isa):
    """``_core.conv2d_fused_backward_input`` with ``grad_weight`` on stride-1 depthwise NHWC
    problems: the weight gradient bitwise its own pass's (``conv2d_fused_backward_weight``), dx
    and the sums bitwise the call's without it, at 1 and 2 threads and every ISA level; dw close
    to float64. (The call runs the weight gradient's own pass first: in one pass with the input
    gradient's rows it ran level in the step, BENCHMARKS.md.)"""
    _check_weight_in_pass(*case, epi=epi, seed=sum(case) + len(epi))


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 12), C=st.integers(1, 40), H=st.integers(1, 18), W=st.integers(1, 18),
       k=st.sampled_from((1, 3, 3, 5)), pad=st.integers(0, 2), dil=st.sampled_from((1, 1, 2)),
       epi=st.sampled_from(("relu", "noscale", "norelu", "res_relu")),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31 - 1))
def test_fused_dw_weight_gradient_in_the_input_pass_hypothesis(N, C, H, W, k, pad, dil, epi, level, seed):
    with isa_level(level):
        _check_weight_in_pass(N, C, H, W, k, min(pad, k // 2 * dil), dil, epi, seed)


def _check_one_pass(N, C, H, W, k, pad, dil, epi, seed, over_g, stride=1):
    """The fused input gradient of a depthwise problem (stride 1 with the output the input's size,
    or a stride above 1), its dy given as a norm's apply pass that is not kept (grad_out None) and
    its weight gradient asked for too: bitwise the three passes (the apply pass written by
    ``norm_backward_apply``, the weight gradient's own pass, the input gradient's), at 1 and 2
    threads; dx written over the apply pass's g where ``over_g`` (stride 1, as cnnkit.nn's
    depthwise layers do); dw close to float64."""
    _, x, w, sc, sh, center, g, _, res = _input_case(N, C, H, W, k, pad, dil, epi, seed)
    if stride > 1:
        g = F._Geom(x.shape, w.shape, stride, pad, dil, C, "NHWC", np.float32)
        over_g = False
    else:
        assert (g.Ho, g.Wo) == (g.H, g.W), "a problem of the output's size"
    rng = np.random.default_rng(seed + 1)
    scale, relu = "noscale" not in epi, "norelu" not in epi
    s, t = (sc, sh) if scale else (None, None)
    shape = (N, g.Ho, g.Wo, C)
    z = (rng.standard_normal(shape) * 2 + 0.3).astype(np.float32)  # the norm's input
    gn = np.where(z > 0, rng.standard_normal(shape), 0).astype(np.float32)  # its masked output gradient
    coefs = (z.astype(np.float64).mean(axis=(0, 1, 2)), rng.random(C) + 0.5, rng.standard_normal(C) * 0.1,
             rng.standard_normal(C) * 0.1)
    dy = np.empty_like(gn)
    _core.norm_backward_apply(gn, z, None, dy, None, N, C, g.Ho * g.Wo, True, False, *coefs)
    dw_own = np.full(w.shape, np.nan, np.float32)
    _core.conv2d_fused_backward_weight(dy, x, dw_own, None, g.core(), s, t, relu)
    dx_own = np.full(x.shape, np.nan, np.float32)
    _, s1_own, s2_own = _core.conv2d_fused_backward_input(dy, w, dx_own, g.core(), x, s, t, True, center, res)
    for threads in (1, 2):
        gin = gn.copy()
        dx = gin if over_g else np.full(x.shape, np.nan, np.float32)
        dw = np.full(w.shape, np.nan, np.float32)
        with num_threads(threads):
            name, s1, s2 = _core.conv2d_fused_backward_input(None, w, dx, g.core(), x, s, t, True, center, res,
                                                             dy_apply=(gin, z) + coefs,
                                                             grad_weight=(dw, x, s, t, relu))
        assert name.startswith("conv2d_dw_f32_nhwc__"), name
        assert_same_pass((dw, dx, s1, s2), (dw_own, dx_own, s1_own, s2_own), f"in one pass ({threads} threads)")
    a = _exact_prologue(x, s, t, relu)
    ref = fused_backward_ref(to_nchw(dy), to_nchw(a), w, stride, pad, dil, C, None, None, False, None, False)
    assert_close(dw, ref[1], np.float32, length=N * g.Ho * g.Wo, what="grad_w")


# (N, C, H, W, k, pad, dilation), stride 1, the output the input's size: the one pass over the
# images (dw_backward_onepass_nhwc) where both gradients run on the depthwise kernels: the register
# rows' weight sums (3x3, whole 16-channel vectors, planes up to 256 pixels; mobilenet_small's C128
# @16) and the band kernel's, one piece an image (from 8 images: C32 @32, a channel tail, 5x5,
# dilation 2); below 8 images off the register rows' shapes the three passes one after the other.
_ONE_PASS = [(8, 16, 8, 8, 3, 1, 1), (9, 32, 16, 16, 3, 1, 1), (2, 48, 7, 9, 3, 1, 1), (8, 32, 20, 20, 3, 1, 1),
             (9, 20, 17, 17, 3, 1, 1), (8, 24, 9, 9, 5, 2, 1), (8, 33, 10, 6, 3, 2, 2), (4, 24, 9, 9, 3, 1, 1),
             (8, 7, 5, 6, 3, 1, 1)]


@pytest.mark.parametrize("case", _ONE_PASS, ids=["x".join(map(str, c)) for c in _ONE_PASS])
@pytest.mark.parametrize("epi", ["relu", "noscale", "norelu", "res_relu"])
@pytest.mark.parametrize("over_g", [True, False], ids=["over_g", "own_dx"])
def test_fused_dw_backward_in_one_pass(case, epi, over_g, isa):
    """``_core.conv2d_fused_backward_input`` with ``dy_apply`` (not kept) and ``grad_weight`` on
    stride-1 depthwise NHWC problems: bitwise the three passes at every ISA level."""
    _check_one_pass(*case, epi=epi, seed=sum(case) + len(epi), over_g=over_g)


# (N, C, H, W, k, stride, pad, dilation) at a stride above 1: the one pass from 8 images (the
# plain kernel's rows of an image, then its epilogue; mobilenet_small's C64 @32 stride 2), the three
# passes below.
_ONE_PASS_STRIDED = [(8, 64, 12, 12, 3, 2, 1, 1), (9, 24, 10, 7, 3, 2, 1, 1), (8, 33, 11, 11, 5, 2, 2, 1),
                     (8, 16, 12, 12, 3, 3, 1, 1), (8, 7, 6, 6, 3, 2, 0, 1), (4, 16, 9, 9, 3, 2, 1, 1)]


@pytest.mark.parametrize("case", _ONE_PASS_STRIDED, ids=["x".join(map(str, c)) for c in _ONE_PASS_STRIDED])
@pytest.mark.parametrize("epi", ["relu", "noscale", "norelu", "res_relu"])
def test_fused_dw_backward_in_one_pass_strided(case, epi, isa):
    N, C, H, W, k, s, pad, dil = case
    _check_one_pass(N, C, H, W, k, pad, dil, epi, sum(case) + len(epi), False, stride=s)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 12), C=st.integers(1, 40), H=st.integers(1, 18), W=st.integers(1, 18),
       k=st.sampled_from((3, 3, 5)), dil=st.sampled_from((1, 1, 2)), stride=st.sampled_from((1, 1, 2, 3)),
       epi=st.sampled_from(("relu", "noscale", "norelu", "res_relu")), over_g=st.booleans(),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31 - 1))
def test_fused_dw_backward_in_one_pass_hypothesis(N, C, H, W, k, dil, stride, epi, over_g, level, seed):
    with isa_level(level):
        _check_one_pass(N, C, H, W, k, k // 2 * dil, dil, epi, seed, over_g, stride)


def test_fused_dw_backward_in_one_pass_compact_residual():
    """A residual given at the strided pixels only (residual_stride 2): the one pass declines it
    (its epilogue reads the residual whole) and the three passes run: their bits."""
    rng = np.random.default_rng(11)
    N, C, H = 8, 16, 9
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    g = F._Geom(x.shape, w.shape, 1, 1, 1, C, "NHWC", np.float32)
    z = (rng.standard_normal(x.shape) + 0.3).astype(np.float32)
    gn = np.where(z > 0, rng.standard_normal(x.shape), 0).astype(np.float32)
    co = (z.astype(np.float64).mean(axis=(0, 1, 2)), rng.random(C) + 0.5, rng.standard_normal(C) * 0.1,
          rng.standard_normal(C) * 0.1)
    center = rng.standard_normal(C)
    rc = rng.standard_normal((N, 5, 5, C)).astype(np.float32)
    dy = np.empty_like(gn)
    _core.norm_backward_apply(gn, z, None, dy, None, N, C, H * H, True, False, *co)
    dw_own = np.empty_like(w)
    _core.conv2d_fused_backward_weight(dy, x, dw_own, None, g.core(), None, None, True)
    dx_own = np.empty_like(x)
    _, s1_own, s2_own = _core.conv2d_fused_backward_input(dy, w, dx_own, g.core(), x, None, None, True, center, rc,
                                                          None, 2)
    dx, dw = np.empty_like(x), np.empty_like(w)
    _, s1, s2 = _core.conv2d_fused_backward_input(None, w, dx, g.core(), x, None, None, True, center, rc, None, 2,
                                                  dy_apply=(gn, z) + co, grad_weight=(dw, x, None, None, True))
    for u, v, what in [(dx, dx_own, "dx"), (dw, dw_own, "dw"), (s1, s1_own, "sum"), (s2, s2_own, "sumxc")]:
        assert_bitwise(u, v, what)


def test_fused_dw_backward_over_g_only_where_every_path_reads_g_first():
    """grad_input may be the apply pass's g only for a depthwise problem of the output's size
    (every path there reads an image of g whole before writing dx over it); never z, nor part of g."""
    rng = np.random.default_rng(5)
    N, C, H = 8, 16, 6
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    z = rng.standard_normal((N, H, H, C)).astype(np.float32)
    gn = rng.standard_normal((N, H, H, C)).astype(np.float32)
    c = np.zeros(C)
    co = (c, c + 1, c, c)
    dw = np.empty((C, 1, 3, 3), np.float32)
    g = F._Geom(x.shape, dw.shape, 1, 1, 1, C, "NHWC", np.float32)
    w = rng.standard_normal(dw.shape).astype(np.float32)
    with pytest.raises(ValueError, match="grad_input: must not overlap dy_apply's z"):
        _core.conv2d_fused_backward_input(None, w, z, g.core(), x, None, None, True, c, dy_apply=(gn, z) + co,
                                          grad_weight=(dw, x, None, None, True))
    big = np.zeros(gn.size + 16, np.float32)
    part = big[16:].reshape(gn.shape)
    with pytest.raises(ValueError, match="nor its g other than as g itself"):
        _core.conv2d_fused_backward_input(None, w, part, g.core(), x, None, None, True, c,
                                          dy_apply=(big[:gn.size].reshape(gn.shape), z) + co,
                                          grad_weight=(dw, x, None, None, True))
    # a 1x1 (the rows pass reads g a block of rows at a time): not over g
    w1 = rng.standard_normal((C, C, 1, 1)).astype(np.float32)
    dw1 = np.empty_like(w1)
    g1 = F._Geom(x.shape, w1.shape, 1, 0, 1, 1, "NHWC", np.float32)
    with pytest.raises(ValueError, match="over dy_apply's g only for a depthwise"):
        _core.conv2d_fused_backward_input(None, w1, gn, g1.core(), x, None, None, True, c, dy_apply=(gn, z) + co,
                                          grad_weight=(dw1, x, None, None, True))
