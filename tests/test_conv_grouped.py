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
