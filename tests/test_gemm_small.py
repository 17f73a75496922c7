"""The NHWC 1x1 convolution kernels that read their operands in place (cpp/src/conv/sgemm.cpp:
sgemm_rows, sgemm_tn; conv_gemm.cpp: forward_1x1_nhwc, backward_weight_1x1_nhwc), against float64
NumPy references.

* Every pass (forward, input gradient as the adjoint's forward, weight gradient), plain and fused
  (batch-norm prologue with statistics; the input gradient's mask-and-sums epilogue; the weight
  gradient through the prologue), over drawn channel counts around every level's register blocks
  and vector widths (1..3 vectors of 4, 8 or 16, +-1) and row counts that leave partial register
  blocks, at every ISA level, bitwise equal at 1 and 2 threads.
* The kernels keep sgemm()'s chains: the forward pass is bitwise ``_core.sgemm(x, w, trans_b=True)``
  and a weight gradient of one piece (under 512 pixels) is bitwise ``_core.sgemm(dy, x, trans_a=True)``.
* The registry runs these problems on the packed entry at every channel count (the stem kernel
  keeps its few-channel problems).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit import _core
from cnnkit.ops import conv as C
from conftest import (ISA_LEVELS, assert_bitwise, assert_close, assert_stats, assert_sum_close, isa_level,
                      num_threads)
from reference.conv import conv2d_backward_ref, conv2d_ref, to_nchw

F32 = np.float32


def _vl(isa):
    return _core.sgemm_shape(isa)["nr"] // 2


def _channels(isa, least):
    """1..3 vectors of the level, +-1, and a few network widths; at least `least` (one channel
    makes a depthwise problem; 4 or fewer input channels with 16-64 outputs go to the stem kernel)."""
    v = _vl(isa)
    return st.one_of(st.builds(lambda m, r: max(least, m * v + r), st.integers(1, 3), st.integers(-1, 1)),
                     st.sampled_from([least, 16, 24, 32, 64]))


def _wide():
    """Channel counts the registry runs on these kernels in every pass (32 or more on both sides):
    around 2, 3 and 4 vectors of 16 (every AVX-512 block width, whole and partial panels), and
    any up to 72."""
    return st.one_of(st.sampled_from([32, 33, 47, 48, 49, 63, 64, 65]), st.integers(32, 72))


def _geom(x, w):
    return C._geom(x.shape, w.shape, 1, 0, 1, 1, "NHWC", F32).core()


def _chan(a):
    return np.asarray(a, np.float64).reshape(1, -1, 1, 1)


def _passes(x, w, dy, sc, sh, relu, center):
    """Every pass, plain and fused, at the current ISA level and thread count (NHWC arrays)."""
    g = _geom(x, w)
    K, Cin = w.shape[:2]
    out = {}
    y = np.empty(dy.shape, F32)
    _core.conv_forward(x, w, None, y, g)
    out["y"] = y
    dx = np.empty_like(x)
    _core.conv_backward_input(dy, w, dx, g)
    out["dx"] = dx
    dw, db = np.empty_like(w), np.empty(K, F32)
    _core.conv_backward_weight(dy, x, dw, db, g)
    out["dw"], out["db"] = dw, db
    yf = np.empty(dy.shape, F32)
    s1, s2 = np.zeros(K), np.zeros(K)
    out["fwd_entry"] = _core.conv2d_fused(x, w, yf, g, None, sc, sh, relu, None, False, s1, s2)
    out["yf"], out["s1"], out["s2"] = yf, s1, s2
    dxf = np.empty_like(x)
    _, g1, g2 = _core.conv2d_fused_backward_input(dy, w, dxf, g, x, sc, sh, relu, center)
    out["dxf"], out["g1"], out["g2"] = dxf, g1, g2
    dwf = np.empty_like(w)
    _core.conv2d_fused_backward_weight(dy, x, dwf, None, g, sc, sh, relu)
    out["dwf"] = dwf
    return out


def _check(N, H, W, Cin, K, relu, seed, isa):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, Cin)).astype(F32)
    w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
    dy = rng.standard_normal((N, H, W, K)).astype(F32)
    sc = (rng.uniform(0.5, 2, Cin) * rng.choice((-1, 1), Cin)).astype(F32)
    sh = rng.standard_normal(Cin).astype(F32)
    center = rng.standard_normal(Cin)
    with isa_level(isa):
        runs = []
        for t in (1, 2):
            with num_threads(t):
                runs.append(_passes(x, w, dy, sc, sh, relu, center))
    one, two = runs
    for k in one:
        if k != "fwd_entry":
            assert_bitwise(two[k], one[k], f"{k} at 2 threads vs 1 ({isa}, {N}x{H}x{W}, {Cin}->{K})")
    assert "gemm_f32_nhwc_packed" in one["fwd_entry"], one["fwd_entry"]
    what = f"({isa}, {N}x{H}x{W}, {Cin}->{K}, relu={relu})"
    xc, dyc = to_nchw(x), to_nchw(dy)
    M = N * H * W
    assert_close(to_nchw(one["y"]), conv2d_ref(xc, w), F32, length=Cin, what="y " + what)
    ref = conv2d_backward_ref(dyc, xc, w)
    assert_close(to_nchw(one["dx"]), ref.grad_x, F32, length=K, what="dx " + what)
    ref_abs = conv2d_backward_ref(np.abs(dyc), np.abs(xc), w)
    assert_sum_close(one["dw"], ref.grad_w, ref_abs.grad_w, M, "dw " + what)
    assert_sum_close(one["db"], ref.grad_b, ref_abs.grad_b, M, "db " + what)
    # fused: a = prologue(x); y = conv(a) with the statistics of y
    a = xc.astype(np.float64) * _chan(sc) + _chan(sh)
    if relu:
        a = np.maximum(a, 0)
    yr = conv2d_ref(a, w)
    assert_close(to_nchw(one["yf"]), yr, F32, length=Cin, what="fused y " + what)
    # the statistics are sums of (y - s) and (y - s)^2 about s, the first pixel's value per channel
    assert_stats(one["s1"], one["s2"], to_nchw(one["yf"]), yr, F32, length=Cin, what=what)
    # fused input gradient: g = conv^T(dy) masked by prologue(x) > 0, with sum g and sum g (x - c)
    z = xc.astype(np.float64) * _chan(sc) + _chan(sh)
    gz = ref.grad_x * (z > 0) if relu else ref.grad_x
    assert_close(to_nchw(one["dxf"]), gz, F32, length=K, what="fused dx " + what)
    assert_sum_close(one["g1"], gz.sum(axis=(0, 2, 3)), np.abs(gz).sum(axis=(0, 2, 3)), K * M, "grad sum " + what)
    xcc = xc - _chan(center)
    assert_sum_close(one["g2"], (gz * xcc).sum(axis=(0, 2, 3)), np.abs(gz * xcc).sum(axis=(0, 2, 3)), K * M,
                      "grad sumxc " + what)
    assert_sum_close(one["dwf"], conv2d_backward_ref(dyc, a, w).grad_w,
                      conv2d_backward_ref(np.abs(dyc), np.abs(a), w).grad_w, M, "fused dw " + what)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_every_pass_matches_the_reference_and_threads_agree(isa):
    @settings(max_examples=12, deadline=None)
    @given(N=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 9), Cin=_wide(), K=_wide(),
           relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def run(N, H, W, Cin, K, relu, seed):
        _check(N, H, W, Cin, K, relu, seed, isa)

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_weight_gradient_every_channel_count(isa):
    """The weight pass takes these kernels at any channel count (both orientations of the
    partials, every register block and its remainders): plain and through the prologue, against
    float64, bitwise at 1 and 2 threads."""
    @settings(max_examples=15, deadline=None)
    @given(N=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 9), Cin=_channels(isa, 5),
           K=_channels(isa, 2), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def run(N, H, W, Cin, K, relu, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, H, W, Cin)).astype(F32)
        w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
        dy = rng.standard_normal((N, H, W, K)).astype(F32)
        sc = (rng.uniform(0.5, 2, Cin) * rng.choice((-1, 1), Cin)).astype(F32)
        sh = rng.standard_normal(Cin).astype(F32)
        g = _geom(x, w)
        got = []
        with isa_level(isa):
            for t in (1, 2):
                with num_threads(t):
                    dw, dwf = np.empty_like(w), np.empty_like(w)
                    _core.conv_backward_weight(dy, x, dw, None, g)
                    name = _core.conv2d_fused_backward_weight(dy, x, dwf, None, g, sc, sh, relu)
                    got.append((dw, dwf))
        assert "gemm_f32_nhwc_packed" in name, name
        for u, v in zip(*got):
            assert_bitwise(v, u, f"threads ({isa}, {Cin}->{K})")
        M = N * H * W
        xc, dyc = to_nchw(x), to_nchw(dy)
        assert_sum_close(got[0][0], conv2d_backward_ref(dyc, xc, w).grad_w,
                          conv2d_backward_ref(np.abs(dyc), np.abs(xc), w).grad_w, M, f"dw {Cin}->{K}")
        a = xc.astype(np.float64) * _chan(sc) + _chan(sh)
        a = np.maximum(a, 0) if relu else a
        assert_sum_close(got[0][1], conv2d_backward_ref(dyc, a, w).grad_w,
                          conv2d_backward_ref(np.abs(dyc), np.abs(a), w).grad_w, M, f"fused dw {Cin}->{K}")

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_several_units_and_pieces(isa):
    """Enough pixels for several row units (1024), row blocks and weight-gradient pieces."""
    _check(3, 23, 31, 33, 48, True, 7, isa)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_bits_are_those_of_sgemm(isa, rng):
    """Forward and one-piece weight gradient: bitwise _core.sgemm on the same operands (the same
    FMA chains, in the same KC blocks), with a reduction longer than KC."""
    kc = _core.sgemm_shape(isa)["kc"]
    for Cin, K, M in ((kc + 5, 3 * _vl(isa) - 1 + 32, 37), (33, 2 * _vl(isa) + 35, 300), (40, 70, 129)):
        x = rng.standard_normal((1, 1, M, Cin)).astype(F32)
        w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
        dy = rng.standard_normal((1, 1, M, K)).astype(F32)
        g = _geom(x, w)
        with isa_level(isa):
            y = np.empty(dy.shape, F32)
            _core.conv_forward(x, w, None, y, g)
            dw = np.empty_like(w)
            _core.conv_backward_weight(dy, x, dw, None, g)
        ref = np.empty((M, K), F32)
        _core.sgemm(x.reshape(M, Cin), w.reshape(K, Cin), ref, trans_b=True, isa=isa)
        assert_bitwise(y.reshape(M, K), ref, f"forward vs sgemm ({isa}, {Cin}->{K}, M={M})")
        refw = np.empty((K, Cin), F32)
        _core.sgemm(dy.reshape(M, K), x.reshape(M, Cin), refw, trans_a=True, isa=isa)
        assert_bitwise(dw.reshape(K, Cin), refw, f"weight gradient vs sgemm ({isa}, {Cin}->{K}, M={M})")


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_narrow_weight_gradient_bits_are_those_of_sgemm(isa, rng):
    """A one-piece weight gradient of one or two register panels (read in place; at AVX2 each KC
    block's chains split over calls of 64 rows, the registers kept between them): bitwise
    _core.sgemm on the same operands, the reduction within one KC block and across two."""
    kc = _core.sgemm_shape(isa)["kc"]
    for Cin, K, M in ((24, 20, 300), (16, 32, kc + 70), (32, 16, 130), (7, 13, 511), (32, 32, 64),
                      (12, 40, 65)):
        x = rng.standard_normal((1, 1, M, Cin)).astype(F32)
        dy = rng.standard_normal((1, 1, M, K)).astype(F32)
        w = np.empty((K, Cin, 1, 1), F32)
        dw = np.empty_like(w)
        with isa_level(isa):
            _core.conv_backward_weight(dy, x, dw, None, _geom(x, w))
        ref = np.empty((K, Cin), F32)
        _core.sgemm(dy.reshape(M, K), x.reshape(M, Cin), ref, trans_a=True, isa=isa)
        assert_bitwise(dw.reshape(K, Cin), ref, f"weight gradient vs sgemm ({isa}, {Cin}->{K}, M={M})")


@pytest.mark.parametrize("cin,k", [(2, 8), (8, 2), (16, 16), (24, 40), (32, 64), (64, 32), (5, 16), (3, 32),
                                   (16, 32), (32, 16), (32, 32), (128, 256)])
def test_registry_runs_the_packed_entry(cin, k):
    """NHWC 1x1 stride-1 float32 problems go to the packed entry in the weight pass at any channel
    count, and in the forward and input passes with 32 or more channels on both sides, 16 at the
    AVX2 level (OpenBLAS keeps narrower ones unless the reduction is 64 or more); the stem kernel
    keeps forward and weight passes of 4 or fewer input channels with 16, 32, 48 or 64 outputs;
    float64 keeps its entry."""
    names = [e[0] for e in _core.conv_registry()]
    bound = 16 if _core.isa_active() == "avx2" else 32
    x_shape, w_shape = (2, 8, 8, cin), (k, cin, 1, 1)
    g = C._geom(x_shape, w_shape, 1, 0, 1, 1, "NHWC", F32).core()
    stem = cin <= 4 and k % 16 == 0 and k <= 64
    for p in ("forward", "input", "weight"):
        name = names[_core.conv_registry_select(g, "float32", p)]
        red = k if p == "input" else cin
        rows = p == "weight" or min(cin, k) >= bound or red >= 64
        want = "stem_f32_nhwc" if stem and p != "input" else "gemm_f32_nhwc_packed" if rows else "gemm_f32_nhwc__"
        assert want in name, (p, name)
        assert "gemm_f64_nhwc" in names[_core.conv_registry_select(
            C._geom(x_shape, w_shape, 1, 0, 1, 1, "NHWC", np.float64).core(), "float64", p)]


# The strided 1x1 problems' draws (stride 2 or 3, no padding, 32+ channels) and their arrays.
_STRIDED = dict(N=st.integers(1, 3), H=st.integers(1, 12), W=st.integers(1, 12), s=st.sampled_from([2, 3]),
                Cin=_wide(), K=_wide(), seed=st.integers(0, 2**31 - 1))


def _strided_problem(N, H, W, s, Cin, K, seed):
    """(rng, x, w, geometry, prologue scale, prologue shift) of a drawn strided 1x1 problem."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, Cin)).astype(F32)
    w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
    sc = (rng.uniform(0.5, 2, Cin) * rng.choice((-1, 1), Cin)).astype(F32)
    sh = rng.standard_normal(Cin).astype(F32)
    return rng, x, w, C._geom(x.shape, w.shape, s, 0, 1, 1, "NHWC", F32), sc, sh


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_strided_forward(isa):
    """A 1x1 kernel at stride 2 or 3 without padding (the strided pixels gathered into blocks for
    the same kernels): plain and fused (prologue and statistics) against float64, bitwise at 1
    and 2 threads, on the packed entry."""
    @settings(max_examples=10, deadline=None)
    @given(relu=st.booleans(), **_STRIDED)
    def run(N, H, W, s, Cin, K, relu, seed):
        _, x, w, geo, sc, sh = _strided_problem(N, H, W, s, Cin, K, seed)
        g = geo.core()
        shape = (N, geo.Ho, geo.Wo, K)
        got = []
        with isa_level(isa):
            for t in (1, 2):
                with num_threads(t):
                    y, yf = np.empty(shape, F32), np.empty(shape, F32)
                    s1, s2 = np.zeros(K), np.zeros(K)
                    _core.conv_forward(x, w, None, y, g)
                    name = _core.conv2d_fused(x, w, yf, g, None, sc, sh, relu, None, False, s1, s2)
                    got.append((y, yf, s1, s2))
        assert "gemm_f32_nhwc_packed" in name, name
        for u, v in zip(*got):
            assert_bitwise(v, u, f"threads ({isa}, stride {s}, {Cin}->{K})")
        xc = to_nchw(x)
        assert_close(to_nchw(got[0][0]), conv2d_ref(xc, w, None, (s, s)), F32, length=Cin, what="y")
        a = xc.astype(np.float64) * _chan(sc) + _chan(sh)
        a = np.maximum(a, 0) if relu else a
        yr = conv2d_ref(a, w, None, (s, s))
        assert_close(to_nchw(got[0][1]), yr, F32, length=Cin, what="fused y")
        assert_stats(got[0][2], got[0][3], to_nchw(got[0][1]), yr, F32, length=Cin,
                     what=f"({isa}, stride {s}, {Cin}->{K})")

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_strided_input_gradient(isa):
    """A 1x1 kernel at stride 2 or 3 without padding: the input gradient written row by row (the
    product into the strided pixels, zeros between, sizes that leave pixels past the last output
    pixel), on the packed entry from 32 channels on both sides, against float64, bitwise at 1 and
    2 threads; the fused input gradient (its units path) over it."""
    @settings(max_examples=10, deadline=None)
    @given(**_STRIDED)
    def run(N, H, W, s, Cin, K, seed):
        rng, x, w, geo, _, _ = _strided_problem(N, H, W, s, Cin, K, seed)
        g = geo.core()
        dy = rng.standard_normal((N, geo.Ho, geo.Wo, K)).astype(F32)
        center = rng.standard_normal(Cin)
        got = []
        with isa_level(isa):
            for t in (1, 2):
                with num_threads(t):
                    dx = np.full(x.shape, np.nan, F32)      # every element must be written
                    _core.conv_backward_input(dy, w, dx, g)
                    dxf = np.full(x.shape, np.nan, F32)
                    _, g1, g2 = _core.conv2d_fused_backward_input(dy, w, dxf, g, x, None, None, True, center)
                    got.append((dx, dxf, g1, g2))
        if min(Cin, K) >= 32:
            assert "gemm_f32_nhwc_packed" in _core.conv_algorithm(g, 1)
        for u, v in zip(*got):
            assert_bitwise(v, u, f"threads ({isa}, stride {s}, {Cin}->{K})")
        ref = conv2d_backward_ref(to_nchw(dy), to_nchw(x), w, (s, s)).grad_x
        assert_close(to_nchw(got[0][0]), ref, F32, length=K, what=f"dx stride {s} {Cin}->{K}")
        assert_bitwise(got[0][1], np.where(x > 0, got[0][0], np.float32(0)), "fused dx: the plain dx, masked")

    run()


def _strided_weight_grads(x, dy, w, s, sc, sh, relu, threads):
    """(plain dW, fused dW with the prologue, the entry's name) of the 1x1 at stride s."""
    geo = C._geom(x.shape, w.shape, s, 0, 1, 1, "NHWC", F32)
    g = geo.core()
    with num_threads(threads):
        dw, dwf = np.full(w.shape, np.nan, F32), np.full(w.shape, np.nan, F32)
        _core.conv_backward_weight(dy, x, dw, None, g)
        _core.conv2d_fused_backward_weight(dy, x, dwf, None, g, sc, sh, relu)
    return dw, dwf, _core.conv_algorithm(g, 2)


def _check_strided_weight_gradient(isa, x, dy, w, s, sc, sh, relu):
    """Against float64; bitwise at 1 and 2 threads; and bitwise the stride-1 pass over the strided
    pixels laid out first (the same pieces, each reduced from blocks of gathered rows)."""
    K, Cin = w.shape[:2]
    with isa_level(isa):
        one = _strided_weight_grads(x, dy, w, s, sc, sh, relu, 1)
        two = _strided_weight_grads(x, dy, w, s, sc, sh, relu, 2)
        xs = np.ascontiguousarray(x[:, ::s, ::s, :])
        flat = _strided_weight_grads(xs, dy, w, 1, sc, sh, relu, 2)
    if min(Cin, K) >= (16 if isa == "avx2" else 32):
        assert "gemm_f32_nhwc_packed" in one[2], one[2]
    for u, v, what in zip(one[:2], two[:2], ("plain", "fused")):
        assert_bitwise(v, u, f"{what} dW, 2 threads against 1 ({isa}, stride {s}, {Cin}->{K})")
    if one[2] == flat[2]:
        for u, v, what in zip(one[:2], flat[:2], ("plain", "fused")):
            assert_bitwise(u, v, f"{what} dW against the stride-1 pass on the gathered pixels ({isa})")
    d64, x64 = dy.astype(np.float64), xs.astype(np.float64)
    M = d64.size // K
    assert_sum_close(one[0][:, :, 0, 0], np.einsum("nhwk,nhwc->kc", d64, x64),
                      np.einsum("nhwk,nhwc->kc", np.abs(d64), np.abs(x64)), M, "dW")
    a = x64 * sc.astype(np.float64) + sh.astype(np.float64)
    a = np.maximum(a, 0) if relu else a
    assert_sum_close(one[1][:, :, 0, 0], np.einsum("nhwk,nhwc->kc", d64, a),
                      np.einsum("nhwk,nhwc->kc", np.abs(d64), np.abs(a)), M, "fused dW")


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_strided_weight_gradient(isa):
    """A 1x1 kernel at stride 2 or 3 without padding: the weight gradient from blocks of the
    strided pixels gathered per piece (backward_weight_1x1_strided), plain and with the fused
    prologue, on the packed entry from 16 channels on both sides at AVX2 (32 elsewhere)."""
    @settings(max_examples=10, deadline=None)
    @given(relu=st.booleans(), **_STRIDED)
    def run(N, H, W, s, Cin, K, relu, seed):
        rng, x, w, geo, sc, sh = _strided_problem(N, H, W, s, Cin, K, seed)
        dy = rng.standard_normal((N, geo.Ho, geo.Wo, K)).astype(F32)
        _check_strided_weight_gradient(isa, x, dy, w, s, sc, sh, relu)

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
@pytest.mark.parametrize("N,H,s,Cin,K", [(64, 32, 2, 32, 64), (5, 127, 2, 16, 32), (2, 97, 3, 48, 24)])
def test_strided_weight_gradient_pieces_of_several_blocks(isa, N, H, s, Cin, K):
    """Pieces of 1024 output rows (resnext_small's 3.downsample.0), of 1280 (a block of 1024 and
    one of 256) and an odd split: the gathered blocks continue each piece's partial."""
    rng = np.random.default_rng(N * H + K)
    x = rng.standard_normal((N, H, H, Cin)).astype(F32)
    w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
    Ho = (H - 1) // s + 1
    dy = rng.standard_normal((N, Ho, Ho, K)).astype(F32)
    sc = rng.uniform(0.5, 2, Cin).astype(F32)
    sh = rng.standard_normal(Cin).astype(F32)
    _check_strided_weight_gradient(isa, x, dy, w, s, sc, sh, True)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_output_epilogue_in_the_store(isa):
    """Bias, residual and ReLU applied to each register block as it is stored (sgemm_rows'
    RowsEpilogue), at any channel count: the fused forms without a prologue or statistics of the
    16-channel problems that the plain pass leaves to OpenBLAS run here too. Against float64,
    bitwise at 1 and 2 threads, on the packed entry; and bitwise the plain output plus the
    epilogue in float32 (one rounding per addition, in the order bias, residual)."""
    @settings(max_examples=12, deadline=None)
    @given(N=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 9), Cin=_channels(isa, 5),
           K=_channels(isa, 5), bias=st.booleans(), res=st.booleans(), relu=st.booleans(),
           seed=st.integers(0, 2**31 - 1))
    def run(N, H, W, Cin, K, bias, res, relu, seed):
        if not (bias or res or relu):
            res = True
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, H, W, Cin)).astype(F32)
        w = rng.standard_normal((K, Cin, 1, 1)).astype(F32)
        b = rng.standard_normal(K).astype(F32) if bias else None
        r = rng.standard_normal((N, H, W, K)).astype(F32) if res else None
        g = _geom(x, w)
        got = []
        with isa_level(isa):
            for t in (1, 2):
                with num_threads(t):
                    y, yp = np.empty((N, H, W, K), F32), np.empty((N, H, W, K), F32)
                    name = _core.conv2d_fused(x, w, y, g, b, None, None, False, r, relu, None, None)
                    _core.conv2d_fused(x, w, yp, g, None, None, None, False, None, False, None, None)
                    got.append((y, yp))
        assert "gemm_f32_nhwc_packed" in name, name
        assert_bitwise(got[1][0], got[0][0], f"2 threads vs 1 ({isa}, {Cin}->{K})")
        y, yp = got[0]
        want = yp
        if bias:
            want = want + b
        if res:
            want = want + r
        if relu:
            want = np.maximum(want, F32(0))
        assert_bitwise(y, want, f"epilogue vs plain + epilogue ({isa}, {Cin}->{K})")
        ref = conv2d_ref(to_nchw(x), w, b)
        if res:
            ref = ref + to_nchw(r)
        if relu:
            ref = np.maximum(ref, 0)
        assert_close(to_nchw(y), ref, F32, length=Cin + 2, what=f"y ({isa}, {Cin}->{K})")

    run()
