"""Depthwise 3x3 stride-1 convolutions on small planes: the register-row kernels (dw3_* in
cpp/src/conv/dw_nhwc.h), taken inside the conv2d_dw_*_nhwc and conv2d_dw_*_nchw_blocked entries
for multiplier 1, channels a multiple of 16 and planes up to 256 pixels (the NCHW weight gradient:
up to 64).

Named shapes around the SIMD width (channels 15, 16, 17, 32, 33: the neighbours run the other
kernels), around the row chunks (widths 1 to 9, 14 = 7 + 7, 16 = 8 + 8; planes of 64, 256 and
289 pixels) and AVX-512's groups of up to three output rows (heights 1 to 10, 14, 16) and past 16 channel vectors (272, 528: the weight sums run in parts), padding 0, 1
and 2, batches 1 to 3, both layouts and dtypes, every ISA level: the forward pass and every
gradient against the float64 reference, bitwise equal at 1 and 2 threads;
then hypothesis over the same space.

The 3x3 stride-2 input gradient (dw33s2_bwdin_row, NHWC, multiplier 1, any channel count): named
shapes and hypothesis over channels around the vector widths (8/16/32 and their neighbours),
even and odd planes, padding 0 to 2 and batches up to 9, against the float64 reference and
bitwise at 1 and 2 threads.

The padded band kernels of larger planes (NHWC, strides 1 and 2, multiplier 1): named shapes and
hypothesis over channels with and without whole vectors and over several of the weight sums'
spans, widths with every chunk tail, padding 0 to 2, against the float64 reference and bitwise at 1
and 2 threads, every level.

Both NHWC gradients in one pass over the images (conv_backward: dw3_backward_both): where its
rule says, with the bits of the input and weight passes run separately, at 1 and 2 threads, every
level; outputs that overlap an input or each other are refused before anything is written.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit import _core
from cnnkit.ops.conv import _Geom
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
    ("C272 5x5 N2 (weight sums in parts of 16 vectors)", dw3(2, 272, 5, 5)),
    ("C528 3x4 N3 pad 2", dw3(3, 528, 3, 4, 2)),
    ("C32 10x7 N2 (AVX-512 row groups 3 + 3 + 2 + 2)", dw3(2, 32, 10, 7)),
    ("C16 4x8 N3 (row groups 2 + 2; chunks of 4 in groups of 3 elsewhere)", dw3(3, 16, 4, 8)),
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


# ---- the padded band kernels (planes above 256 pixels: dw33_fwd_row, dw33_wgrad_vectors) ---------
# At AVX2 the stride-1 rows add each input vector into its three outputs as it is loaded, and the
# weight sums run rows outermost over spans of channel vectors whose three padded rows fit in about
# 16 KiB (several spans: C64 at 33 wide, C203 at 18); the shapes take both strides, chunk tails of
# 1 to 7 pixels, channels past the last whole vector and one vector or none.

def dwb(n, c, h, w, stride=1, padding=1):
    return Geo(n, c, c, h, w, 3, 3, stride, padding, groups=c)


NAMED_BAND = [
    ("C32 32x32 N2 (mobilenet's C32 layer)", dwb(2, 32, 32, 32)),
    ("C64 17x33 N2 (weight sums in two spans)", dwb(2, 64, 17, 33)),
    ("C203 18x18 N1 (four spans and 3 channels past them)", dwb(1, 203, 18, 18)),
    ("C13 20x21 N2 (one vector and 5 channels)", dwb(2, 13, 20, 21)),
    ("C7 16x19 N3 pad 0 (no whole vector)", dwb(3, 7, 16, 19, 1, 0)),
    ("C16 17x19 N2 (a tail of 3 pixels)", dwb(2, 16, 17, 19)),
    ("C9 18x20 N1 (a tail of 4)", dwb(1, 9, 18, 20)),
    ("C16 13x22 N2 (a tail of 6)", dwb(2, 16, 13, 22)),
    ("C8 17x23 N1 (a tail of 7)", dwb(1, 8, 17, 23)),
    ("C24 19x30 N3 stride 2", dwb(3, 24, 19, 30, 2)),
    ("C64 32x32 N2 stride 2 (mobilenet's stride-2 layer)", dwb(2, 64, 32, 32, 2)),
    ("C40 23x17 N1 stride 2 pad 2", dwb(1, 40, 23, 17, 2, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geo", [g for _, g in NAMED_BAND], ids=[n for n, _ in NAMED_BAND])
def test_dw_band_named(isa, geo, dtype, rng):
    _check(geo, "NHWC", dtype, rng)


@SETTINGS
@given(n=st.integers(1, 3), c=st.sampled_from((1, 7, 8, 9, 16, 33, 72, 136)), h=st.integers(17, 34),
       w=st.integers(16, 40), stride=st.sampled_from((1, 2)), padding=st.integers(0, 2),
       dtype=st.sampled_from(DTYPES), level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31))
def test_dw_band_hypothesis(n, c, h, w, stride, padding, dtype, level, seed):
    with isa_level(level):
        _check(dwb(n, c, h, w, stride, padding), "NHWC", dtype, np.random.default_rng(seed))


# ---- both gradients in one pass (conv::backward; dw3_backward_both in dw_nhwc.h) ------------------

ONE_PASS = [
    ("C16 7x7 N8", dw3(8, 16, 7, 7)),
    ("C32 14x14 N4", dw3(4, 32, 14, 14)),
    ("C16 16x16 N2 (256 pixels)", dw3(2, 16, 16, 16)),
    ("C48 5x6 N3 pad 2", dw3(3, 48, 5, 6, 2)),
    ("C32 9x3 N9 pad 0", dw3(9, 32, 9, 3, 0)),
    ("C16 1x1 N16", dw3(16, 16, 1, 1)),
    ("C272 7x7 N4", dw3(4, 272, 7, 7)),
    ("C17 7x7 N8 (the separate passes)", dw3(8, 17, 7, 7)),
    ("C16 17x17 N2 (the separate passes)", dw3(2, 16, 17, 17)),
]


def _one_pass_expected(geo, threads):
    """The rule of dw3_both_shape: the weight gradient's register-row shapes (channels a multiple of
    16, planes up to 256 pixels), with as many of its blocks of images (at most 8) on every thread."""
    ho, wo = geo.y_shape("NCHW")[2:]
    if geo.ci % 16 or geo.h * geo.w > 256 or ho * wo > 256:
        return False
    per = -(-geo.n // min(geo.n, 8))
    return -(-geo.n // per) % threads == 0


def _check_one_pass(geo, dtype, rng):
    """conv_backward with grad_input and grad_weight (and grad_bias) runs the one-pass kernel where
    its rule says (it returns True), and gives the bits of the input pass and the weight pass run
    separately, at 1 and 2 threads, with every subset of (grad_weight, grad_bias); conv2d_backward
    (the one pass where it runs) matches the float64 reference."""
    c = make_case(rng, geo, "NHWC", dtype)
    g = _Geom(c.x.shape, c.weight.shape, 1, geo.padding, 1, geo.ci, "NHWC", dtype).core()
    want_gi = np.empty_like(c.x)
    want_gw, want_gb = np.empty_like(c.weight), np.empty(geo.co, dtype)
    with num_threads(1):
        _core.conv_backward_input(c.grad_out, c.weight, want_gi, g)
        _core.conv_backward_weight(c.grad_out, c.x, want_gw, want_gb, g)
    for threads in (1, 2):
        with num_threads(threads):
            check_backward(c)
            for keep_w, keep_b in ((True, True), (True, False), (False, True)):
                gi = np.full_like(c.x, np.nan)
                gw = np.full_like(c.weight, np.nan) if keep_w else None
                gb = np.full(geo.co, np.nan, dtype) if keep_b else None
                one = _core.conv_backward(c.grad_out, c.x, c.weight, gi, gw, gb, g)
                what = f"{c} at {threads} threads, grad_weight {keep_w}, grad_bias {keep_b}"
                assert one == _one_pass_expected(geo, threads), f"{what}: one pass {one}"
                assert_bitwise(gi, want_gi, f"grad_input: {what}")
                if keep_w:
                    assert_bitwise(gw, want_gw, f"grad_weight: {what}")
                if keep_b:
                    assert_bitwise(gb, want_gb, f"grad_bias: {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geo", [g for _, g in ONE_PASS], ids=[n for n, _ in ONE_PASS])
def test_both_gradients_in_one_pass_have_the_separate_passes_bits(isa, geo, dtype, rng):
    _check_one_pass(geo, dtype, rng)


@SETTINGS
@given(n=st.integers(1, 9), c=st.sampled_from((15, 16, 32, 256, 272)), h=st.integers(1, 16),
       w=st.integers(1, 16), padding=st.integers(0, 2), dtype=st.sampled_from(DTYPES),
       level=st.sampled_from(ISA_LEVELS), seed=st.integers(0, 2**31))
def test_both_gradients_in_one_pass_hypothesis(n, c, h, w, padding, dtype, level, seed):
    """The one pass over batches up to 9 (blocks that do and do not divide among 2 threads),
    channels on both sides of 16 vectors (the weight sums' parts; 15: the separate passes) and
    planes up to 16x16."""
    h, w = max(h, 3 - 2 * padding), max(w, 3 - 2 * padding)
    with isa_level(level):
        _check_one_pass(dw3(n, c, h, w, padding), dtype, np.random.default_rng(seed))


def test_both_gradients_refuse_overlapping_outputs(rng):
    c = make_case(rng, dw3(2, 16, 7, 7), "NHWC", np.float32)
    g = _Geom(c.x.shape, c.weight.shape, 1, 1, 1, 16, "NHWC", np.float32).core()
    gi, gw, gb = np.empty_like(c.x), np.empty_like(c.weight), np.empty(16, np.float32)
    before = [a.copy() for a in (c.grad_out, c.x, c.weight)]
    for args, msg in (((c.grad_out, c.x, c.weight, c.x, gw, gb), "grad_input: must not overlap x"),
                      ((c.grad_out, c.x, c.weight, c.grad_out, gw, gb), "grad_input: must not overlap grad_out"),
                      ((c.grad_out, c.x, c.weight, gi, c.weight, gb), "grad_weight: must not overlap weight"),
                      ((c.grad_out, c.x, c.weight, gi, gw, gw.reshape(-1)[:16]),
                       "grad_weight: must not overlap grad_bias")):
        with pytest.raises(ValueError, match=msg):
            _core.conv_backward(*args, g)
    for a, b in zip((c.grad_out, c.x, c.weight), before):
        assert_bitwise(a, b, "an input after a refused call")


def test_both_gradients_bad_arrays_name_the_argument(rng):
    c = make_case(rng, dw3(2, 16, 7, 7), "NHWC", np.float32)
    g = _Geom(c.x.shape, c.weight.shape, 1, 1, 1, 16, "NHWC", np.float32).core()
    gi, gw, gb = np.empty_like(c.x), np.empty_like(c.weight), np.empty(16, np.float32)
    cases = (
        ((c.grad_out, c.x, c.weight, gi, gw.astype(np.float64), gb), TypeError, "grad_weight"),
        ((c.grad_out, c.x.astype(np.float64), c.weight, gi, gw, gb), TypeError, "x"),
        ((c.grad_out, c.x, c.weight, gi[:1], gw, gb), ValueError, "grad_input"),
        ((c.grad_out, c.x, c.weight[:8], gi, gw, gb), ValueError, "weight"),
        ((c.grad_out, c.x, c.weight, gi, gw, np.empty(15, np.float32)), ValueError, "grad_bias"),
    )
    for args, err, name in cases:
        gi.fill(np.nan)
        with pytest.raises(err, match=f"^{name}:"):
            _core.conv_backward(*args, g)
        assert np.isnan(gi).all(), f"grad_input written before {name} was refused"
