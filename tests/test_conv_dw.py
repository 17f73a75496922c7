"""Depthwise 3x3 stride-1 convolutions on small planes: the register-row kernels (dw3_* in
cpp/src/conv/dw_nhwc.h), taken inside the conv2d_dw_*_nhwc and conv2d_dw_*_nchw_blocked entries
for multiplier 1, channels a multiple of 16 and planes up to 64 pixels (NCHW forward and NHWC
weight gradient: up to 256).

Named shapes around the SIMD width (channels 15, 16, 17, 32, 33: the neighbours run the other
kernels) and around the row chunks (widths 1 to 9, 14 = 7 + 7, 16 = 8 + 8; planes of 64, 256 and
289 pixels), padding 0, 1 and 2, batches 1 to 3, both layouts and dtypes, every ISA level: the
forward pass and every gradient against the float64 reference, bitwise equal at 1 and 2 threads;
then hypothesis over the same space.

The 3x3 stride-2 input gradient (dw33s2_bwdin_row, NHWC, multiplier 1, any channel count): named
shapes and hypothesis over channels around the vector widths (8/16/32 and their neighbours),
even and odd planes, padding 0 to 2 and batches up to 9, against the float64 reference and
bitwise at 1 and 2 threads.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_bitwise, isa_level, num_threads
from conftest import ISA_LEVELS
from test_conv import DTYPES, LAYOUTS, Geo, _conv_outputs, check_backward, check_forward, dtype_id, make_case

SETTINGS = settings(max_examples=25, deadline=None)


def dw3(n, c, h, w, padding=1):
    return Geo(n, c, c, h, w, 3, 3, 1, padding, groups=c)


NAMED = [
    ("C16 7x7 N3", dw3(3, 16, 7, 7)),
    ("C32 14x14 N2", dw3(2, 32, 14, 14)),
    ("C48 8x8 N1", dw3(1, 48, 8, 8)),
    ("C16 16x16 N1 (256 pixels)", dw3(1, 16, 16, 16)),
    ("C16 17x17 N1 (past the limit)", dw3(1, 16, 17, 17)),
    ("C32 1x1 N2", dw3(2, 32, 1, 1)),
    ("C16 2x9 N3", dw3(3, 16, 2, 9)),
    ("C16 9x3 N2 pad 0", dw3(2, 16, 9, 3, 0)),
    ("C32 5x6 N2 pad 2", dw3(2, 32, 5, 6, 2)),
    ("C16 1x5 N1 pad 2", dw3(1, 16, 1, 5, 2)),
    ("C15 7x7 N2", dw3(2, 15, 7, 7)),
    ("C17 7x7 N2", dw3(2, 17, 7, 7)),
    ("C33 9x9 N1", dw3(1, 33, 9, 9)),
]


def _check(geo, layout, dtype, rng):
    c = make_case(rng, geo, layout, dtype)
    with num_threads(1):
        check_forward(c)
        check_backward(c)
        one = _conv_outputs(c)
    with num_threads(2):
        two = _conv_outputs(c)
    for name, a, b in zip(("y", "grad_input", "grad_weight", "grad_bias"), one, two):
        assert_bitwise(b, a, f"{name} at 2 threads vs 1 ({c})")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [g for _, g in NAMED], ids=[n for n, _ in NAMED])
def test_dw3_named(isa, geo, layout, dtype, rng):
    _check(geo, layout, dtype, rng)


@SETTINGS
@given(n=st.integers(1, 3), c=st.sampled_from((15, 16, 17, 32, 33)), h=st.integers(1, 9),
       w=st.integers(1, 9), padding=st.integers(0, 2), layout=st.sampled_from(LAYOUTS),
       dtype=st.sampled_from(DTYPES), level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31))
def test_dw3_hypothesis(n, c, h, w, padding, layout, dtype, level, seed):
    h, w = max(h, 3 - 2 * padding), max(w, 3 - 2 * padding)
    with isa_level(level):
        _check(dw3(n, c, h, w, padding), layout, dtype, np.random.default_rng(seed))


def dw3s2(n, c, h, w, padding=1):
    return Geo(n, c, c, h, w, 3, 3, 2, padding, groups=c)


NAMED_S2 = [
    ("C16 8x8 N2", dw3s2(2, 16, 8, 8)),
    ("C17 9x7 N2", dw3s2(2, 17, 9, 7)),
    ("C8 5x6 N3 pad 0", dw3s2(3, 8, 5, 6, 0)),
    ("C33 7x10 N1 pad 2", dw3s2(1, 33, 7, 10, 2)),
    ("C32 1x1 N2", dw3s2(2, 32, 1, 1)),
    ("C64 16x16 N2 (mobilenet's stride-2 layer, small)", dw3s2(2, 64, 16, 16)),
    ("C15 14x3 N9", dw3s2(9, 15, 14, 3)),
    ("C1 4x4 N2 pad 0", dw3s2(2, 1, 4, 4, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geo", [g for _, g in NAMED_S2], ids=[n for n, _ in NAMED_S2])
def test_dw3s2_named(isa, geo, dtype, rng):
    _check(geo, "NHWC", dtype, rng)


@SETTINGS
@given(n=st.sampled_from((1, 2, 3, 9)), c=st.sampled_from((1, 7, 8, 9, 15, 16, 17, 31, 32, 33)),
       h=st.integers(1, 12), w=st.integers(1, 12), padding=st.integers(0, 2), dtype=st.sampled_from(DTYPES),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31))
def test_dw3s2_hypothesis(n, c, h, w, padding, dtype, level, seed):
    h, w = max(h, 3 - 2 * padding), max(w, 3 - 2 * padding)
    with isa_level(level):
        _check(dw3s2(n, c, h, w, padding), "NHWC", dtype, np.random.default_rng(seed))
