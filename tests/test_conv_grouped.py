"""The direct grouped kernels (Cg == Kg in {2, 4, 8, 16, 32}, C a multiple of the vector length)
on the shapes where their chunking changes:

* the weight gradient with 16 or more channels per group, output planes under 100 pixels and 2^17
  weights or more runs by channel blocks (whole groups, whole vectors), with reductions of about
  256 pixels that span images, several blocks (512 bytes of a pixel) per work unit and, with few
  blocks, pieces of the batch summed in order; other shapes keep the per-image chunks. Shapes on
  both sides of the rule, N = 1, odd sizes, chunks that end inside an image, several pieces, a
  last unit with fewer blocks, strides, dilations and kernel widths that are not a multiple of 3
  (the register block takes 3 taps of a kernel row), both layouts (NCHW planes are read directly);
* the forward pass and the stride-1 input gradient split each output row into register blocks;
  rows whose length is not a multiple of the block run the rest in one or two smaller blocks
  (row lengths 1 to 17 here).

Every case is checked against the float64 NumPy reference (tests/reference/conv.py) with
conftest's tolerance for the reduction length, and the outputs at 1 and 2 threads must be bitwise
identical at every ISA level.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit.ops import fused as F
from conftest import assert_bitwise, num_threads
from test_conv import Geo, check_backward, check_forward, make_case

F32, F64 = np.float32, np.float64


def _grouped(geo: Geo, layout: str, dtype) -> bool:
    """Whether the registry runs a direct grouped kernel for every pass of geo."""
    args = (geo.x_shape(layout), geo.weight_shape, geo.stride, geo.padding, geo.dilation,
            geo.groups, layout)
    return all(cnnkit.ops.conv2d_algorithm(*args, pass_=p, dtype=dtype).startswith("conv2d_grouped_")
               for p in ("forward", "input", "weight"))


def _by_blocks(geo: Geo) -> bool:
    """conv_internal.h's grouped_weight_by_blocks()."""
    cg = geo.ci // geo.groups
    ho, wo = geo.y_shape("NCHW")[2:]
    return cg >= 16 and ho * wo < 100 and geo.co * cg * geo.kh * geo.kw >= 2**17


# (name, geometry): Geo(n, c_in, c_out, h, w, kh, kw, stride, padding, dilation, groups)
BLOCKS = [
    ("cg32 7x7 N3", Geo(3, 480, 480, 7, 7, 3, 3, 1, 1, groups=15)),
    ("cg16 k5 5x5 N5", Geo(5, 336, 336, 5, 5, 5, 5, 1, 2, groups=21)),
    ("cg16 N1 1x1 plane, 7 blocks a unit", Geo(1, 912, 912, 1, 1, 3, 3, 1, 1, groups=57)),
    ("cg16 3x5, 7 blocks a unit", Geo(2, 912, 912, 3, 5, 3, 3, 1, 1, groups=57)),
    ("cg32 k5 9x9 N4 (2 pieces, chunks end inside images)", Geo(4, 192, 192, 9, 9, 5, 5, 1, 2, groups=6)),
    ("cg32 k5 d2 s2", Geo(2, 192, 192, 9, 8, 5, 5, 2, 2, 2, groups=6)),
    ("cg32 k2x4 s(2,1)", Geo(3, 512, 512, 6, 9, 2, 4, (2, 1), (1, 2), groups=16)),
    ("cg32 no pad 9x11", Geo(2, 480, 480, 9, 11, 3, 3, 1, 0, groups=15)),
]
CHUNKS = [
    ("cg16 10x10", Geo(2, 32, 32, 10, 10, 3, 3, 1, 1, groups=2)),
    ("cg32 7x7 small weights", Geo(3, 64, 64, 7, 7, 3, 3, 1, 1, groups=2)),
    ("cg8 7x7", Geo(5, 64, 64, 7, 7, 3, 3, 1, 1, groups=8)),
    ("cg32 row 17", Geo(1, 64, 64, 6, 17, 3, 3, 1, 1, groups=2)),
    ("cg8 row 13", Geo(2, 32, 32, 8, 13, 3, 3, 1, 1, groups=4)),
    ("cg4 s2 row 14", Geo(1, 16, 16, 23, 28, 3, 3, 2, 1, groups=4)),
    # resnext_small's stride-2 grouped layers at their own sizes
    ("cg4 32@32 s2", Geo(2, 32, 32, 32, 32, 3, 3, 2, 1, groups=8)),
    ("cg8 64@16 s2", Geo(2, 64, 64, 16, 16, 3, 3, 2, 1, groups=8)),
]
CASES = BLOCKS + CHUNKS


def test_the_cases_fall_on_both_sides_of_the_rule():
    assert all(_by_blocks(g) for _, g in BLOCKS) and not any(_by_blocks(g) for _, g in CHUNKS)


@pytest.mark.parametrize("dtype", (F32, F64), ids=("float32", "float64"))
@pytest.mark.parametrize("layout", ("NCHW", "NHWC"))
@pytest.mark.parametrize("geo", [g for _, g in CASES], ids=[n for n, _ in CASES])
def test_grouped_kernels_match_the_reference(geo, layout, dtype, threads, rng):
    assert _grouped(geo, layout, dtype), f"{geo} {layout} does not run the grouped kernels"
    c = make_case(rng, geo, layout, dtype)
    check_forward(c)
    check_backward(c)


def _outputs(c):
    return [cnnkit.conv2d(c.x, c.weight, c.bias, **c.kw),
            *cnnkit.conv2d_backward(c.grad_out, c.x, c.weight, **c.kw)]


@pytest.mark.parametrize("layout", ("NCHW", "NHWC"))
@pytest.mark.parametrize("geo", [g for _, g in CASES], ids=[n for n, _ in CASES])
def test_grouped_same_bits_at_one_and_two_threads(isa, geo, layout, rng):
    for dtype in (F32, F64):
        c = make_case(rng, geo, layout, dtype)
        with num_threads(1):
            a = _outputs(c)
        with num_threads(2):
            b = _outputs(c)
        for name, u, v in zip(("y", "grad_input", "grad_weight", "grad_bias"), b, a):
            assert_bitwise(u, v, f"{name} at 2 threads vs 1 ({isa}, {geo} {layout} {dtype.__name__})")


@st.composite
def grouped_geometries(draw):
    n, size = draw(st.integers(1, 9)), 12
    if draw(st.booleans()):  # large weights: mostly the channel blocks of the weight gradient
        cg, groups = draw(st.sampled_from(((32, 15), (32, 16), (16, 57), (32, 6))))
        kh, kw = draw(st.integers(3, 5)), draw(st.integers(3, 5))
        n, size = min(n, 3), 9
    else:
        cg = draw(st.sampled_from((2, 4, 8, 16, 32)))
        groups = draw(st.sampled_from([g for g in (2, 3, 4, 8, 16) if (g * cg) % 16 == 0]))
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = max(draw(st.integers(1, size)), dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    w = max(draw(st.integers(1, size)), dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    return Geo(n, cg * groups, cg * groups, h, w, kh, kw, stride, padding,
               dilation, groups)


@settings(max_examples=20, deadline=None)
@given(geo=grouped_geometries(), layout=st.sampled_from(("NCHW", "NHWC")),
       dtype=st.sampled_from((F32, F64)), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_grouped_kernels(geo, layout, dtype, seed):
    assert _grouped(geo, layout, dtype), f"{geo} {layout} does not run the grouped kernels"
    rng = np.random.default_rng(seed)
    c = make_case(rng, geo, layout, dtype)
    outs = []
    for n in (1, 2):
        with num_threads(n):
            check_forward(c)
            check_backward(c)
            outs.append(_outputs(c))
    for u, v in zip(outs[1], outs[0]):
        assert_bitwise(u, v, f"2 threads vs 1 [{geo} {layout}]")


# ---- weights larger than L2: bands a chunk of channels at a time -----------------------------------
# grouped.h's forward (and the stride-1 input gradient, its adjoint's forward) computes an NHWC band
# of output rows a chunk of channel vectors at a time where all the groups' weights exceed 1 MiB
# (band within one image, at most 64 input rows). Groups are independent, so the same convolution on
# each half of the groups (weights under 1 MiB: row by row) must give the same bits, channel for
# channel: the statistics, the prologue, the residual and the ReLU of the fused forward too.

def _band(N, Ho):
    """grouped.h's row_band(): the rows of a band."""
    return max(1, min(Ho, -(-(N * Ho) // 16)))


BIG = [  # (cg, groups, k, stride, dilation, H, W, N): cg * cg * groups * k * k * 4 bytes > 1 MiB
    (32, 36, 3, 1, 1, 7, 7, 16),   # bands of 7 rows (an image)
    (32, 18, 5, 1, 1, 6, 5, 6),    # 5x5 taps, bands of 3
    (16, 128, 3, 2, 1, 8, 9, 8),   # stride 2, bands of 2
    (8, 512, 3, 1, 2, 6, 7, 6),    # dilation 2
    (4, 2048, 3, 1, 1, 5, 4, 1),   # bands of one row
    (2, 8192, 3, 1, 1, 3, 5, 2),
]


def _big_case(case, rng):
    cg, G, k, s, d, H, W, N = case
    C = cg * G
    assert C * cg * k * k * 4 > 2**20 >= (C // 2) * cg * k * k * 4, "the halves must fall under the rule"
    p = d * (k // 2)
    Ho, Wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n in (H, W))
    assert Ho % _band(N, Ho) == 0, "a band must lie within an image"
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((C, cg, k, k)).astype(np.float32)
    return dict(x=x, w=w, C=C, G=G, kw=dict(stride=s, padding=p, dilation=d, layout="NHWC"), Ho=Ho, Wo=Wo)


def _halves(fn, c, *arrays_by_channel):
    """fn on each half of the groups: the channel slices of the NHWC arrays, the weights (their
    first axis) and the per-channel vectors; a list of the two results."""
    h = c["C"] // 2
    outs = []
    for sl in (slice(0, h), slice(h, None)):
        outs.append(fn(*[np.ascontiguousarray(a[sl] if a is c["w"] or a.ndim == 1 else a[..., sl])
                         for a in arrays_by_channel], groups=c["G"] // 2))
    return outs


@pytest.mark.parametrize("case", BIG, ids=[f"cg{c[0]} G{c[1]} k{c[2]} s{c[3]} d{c[4]} N{c[7]}" for c in BIG])
def test_grouped_large_weights_by_bands_same_bits(isa, case, rng):
    c = _big_case(case, rng)
    x, w, C = c["x"], c["w"], c["C"]
    alg = cnnkit.ops.conv2d_algorithm(x.shape, w.shape, groups=c["G"], **c["kw"])
    assert alg.startswith("conv2d_grouped_f32_nhwc"), alg
    b = rng.standard_normal(C).astype(np.float32)

    def fwd(x_, w_, b_, groups):
        return cnnkit.conv2d(x_, w_, b_, groups=groups, **c["kw"])
    whole = {t: None for t in (1, 2)}
    for t in (1, 2):
        with num_threads(t):
            whole[t] = fwd(x, w, b, c["G"])
    assert_bitwise(whole[2], whole[1], "forward at 2 threads vs 1")
    parts = _halves(fwd, c, x, w, b)
    assert_bitwise(whole[1], np.concatenate(parts, axis=3), "forward: all groups (bands) vs halves (rows)")
    # the fused forward: prologue, statistics (their own call), residual and ReLU
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    res = rng.standard_normal(whole[1].shape).astype(np.float32)

    def fused_stats(x_, w_, sc_, sh_, groups):
        return F.conv2d_fused(x_, w_, groups=groups, pre_scale=sc_, pre_shift=sh_, pre_relu=True, stats=True,
                              **c["kw"])

    def fused_res(x_, w_, sc_, sh_, r_, groups):
        return F.conv2d_fused(x_, w_, groups=groups, pre_scale=sc_, pre_shift=sh_, residual=r_, post_relu=True,
                              **c["kw"])
    for t in (1, 2):
        with num_threads(t):
            y, mean, var = fused_stats(x, w, sc, sh, c["G"])
            yr = fused_res(x, w, sc, sh, res, c["G"])
        (y0, m0, v0), (y1, m1, v1) = _halves(fused_stats, c, x, w, sc, sh)
        assert_bitwise(y, np.concatenate([y0, y1], axis=3), f"fused forward with statistics ({t} threads)")
        assert_bitwise(mean, np.concatenate([m0, m1]), f"mean ({t} threads)")
        assert_bitwise(var, np.concatenate([v0, v1]), f"var ({t} threads)")
        assert_bitwise(yr, np.concatenate(_halves(fused_res, c, x, w, sc, sh, res), axis=3),
                       f"fused forward with residual and ReLU ({t} threads)")
    # the input gradient at stride 1 (the adjoint's forward)
    if c["kw"]["stride"] == 1:
        gy = rng.standard_normal(whole[1].shape).astype(np.float32)

        def dx(gy_, x_, w_, groups):
            return cnnkit.conv2d_backward(gy_, x_, w_, groups=groups, needs=("input",), **c["kw"])[0]
        for t in (1, 2):
            with num_threads(t):
                got = dx(gy, x, w, c["G"])
            assert_bitwise(got, np.concatenate(_halves(dx, c, gy, x, w), axis=3), f"input gradient ({t} threads)")


def test_grouped_large_weights_against_the_reference(rng):
    """One banded case against the float64 reference too (forward and backward)."""
    geo = Geo(16, 1152, 1152, 7, 7, 3, 3, 1, 1, groups=36)
    c = make_case(rng, geo, "NHWC", F32)
    check_forward(c)
    check_backward(c)


@pytest.mark.parametrize("case", [BIG[0], BIG[3]], ids=["cg32 G36 k3", "cg8 G512 k3 d2"])
def test_grouped_large_weights_by_bands_float64(isa, case, rng):
    """float64 (the rule counts bytes, so half the channels cross it): forward and stride-1 input
    gradient, all groups against each half of them, bit for bit, at 1 and 2 threads."""
    cg, G, k, s, d, H, W, N = case
    G //= 2  # float64: half the channels for the same bytes of weights
    c = _big_case((cg, G * 2, k, s, d, H, W, N), rng)  # (checks the rule on the float32 bytes)
    C = cg * G
    x = c["x"][..., :C].astype(np.float64)
    w = c["w"][:C].astype(np.float64)
    c = dict(c, x=x, w=w, C=C, G=G)
    assert C * cg * k * k * 8 > 2**20 >= (C // 2) * cg * k * k * 8
    alg = cnnkit.ops.conv2d_algorithm(x.shape, w.shape, groups=G, dtype=np.float64, **c["kw"])
    assert alg.startswith("conv2d_grouped_f64_nhwc"), alg
    gy = rng.standard_normal((N, c["Ho"], c["Wo"], C))

    def fwd(x_, w_, groups):
        return cnnkit.conv2d(x_, w_, None, groups=groups, **c["kw"])

    def dx(gy_, x_, w_, groups):
        return cnnkit.conv2d_backward(gy_, x_, w_, groups=groups, needs=("input",), **c["kw"])[0]
    for t in (1, 2):
        with num_threads(t):
            y = fwd(x, w, G)
            gi = dx(gy, x, w, G)
        assert_bitwise(y, np.concatenate(_halves(fwd, c, x, w), axis=3), f"float64 forward ({t} threads)")
        assert_bitwise(gi, np.concatenate(_halves(dx, c, gy, x, w), axis=3), f"float64 input gradient ({t} threads)")
