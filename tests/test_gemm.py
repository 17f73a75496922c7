"""cnnkit's own float32 GEMM (cpp/src/conv/sgemm.cpp, ``_core.sgemm``) and the fused forward
convolution built on it (``_core.conv2d_fused``), against float64 NumPy references.

* sgemm: shapes drawn around every level's register block (M, N = 0..3 blocks + remainders, for
  the wide MR x NR and the narrow MR2 x VL kernels) and its KC block, both transposes, with and
  without accumulation, at every ISA level this CPU runs; 1 and 2 threads give the same bits, and
  so do every way of cutting M and N (the claim the conv path's determinism rests on).
* conv2d_fused: every combination of the prologue (scale/shift, ReLU), bias and the epilogue
  (statistics, or residual and ReLU) on drawn geometries, both layouts, dense and 16-channel
  groups, at every ISA level and at 1 and 2 threads (bitwise across threads).
The packed conv entries themselves (conv2d_gemm_f32_*_packed) are exercised pass by pass with the
rest of the registry in test_conv.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import _core
from cnnkit.ops.conv import _winograd
from conftest import ISA_LEVELS, assert_bitwise, assert_close, assert_stats, isa_level, num_threads
from reference import conv as R
from test_conv import absf, assert_close_terms

F32 = np.float32
SHAPE = {isa: _core.sgemm_shape(isa) for isa in ISA_LEVELS}


def _vl(isa):
    return SHAPE[isa]["nr"] // 2


def _around(block):
    """0..3 whole blocks plus a remainder in [-1, 2] (at least 1)."""
    return st.builds(lambda m, r: max(1, m * block + r), st.integers(0, 3), st.integers(-1, 2))


def _sgemm(a, b, c, isa, threads, **kw):
    out = c.copy()
    with num_threads(threads):
        _core.sgemm(a, b, out, isa=isa, **kw)
    return out


def _drawn_product(m, n, k, ta, tb, acc, seed, isa):
    """Random a, b (stored transposed where ta / tb) and c0, and the product at 1 and 2 threads,
    which must agree bitwise; returns (op(a), op(b), c0, the 1-thread product)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    c0 = rng.standard_normal((m, n)).astype(F32)
    one = _sgemm(a, b, c0, isa, 1, trans_a=ta, trans_b=tb, accumulate=acc)
    two = _sgemm(a, b, c0, isa, 2, trans_a=ta, trans_b=tb, accumulate=acc)
    assert_bitwise(two, one, f"sgemm {m}x{n}x{k} ta={ta} tb={tb} acc={acc} at 2 threads vs 1 ({isa})")
    return (a.T if ta else a), (b.T if tb else b), c0, one


def _assert_sgemm_reference(out, A, B, c0, acc, what):
    """out against the float64 product A @ B (+ c0 with acc), bounded by the terms' magnitudes."""
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    ref = A64 @ B64 + (c0.astype(np.float64) if acc else 0.0)
    terms = np.abs(A64) @ np.abs(B64) + (np.abs(c0.astype(np.float64)) if acc else 0.0)
    assert_close_terms(out, ref, F32, terms, length=A.shape[1] + 1, what=what)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_matches_the_reference_and_threads_agree(isa):
    sh = SHAPE[isa]

    @settings(max_examples=40, deadline=None)
    # (also around the AVX2 4 x 3-vector block, which C widths that 3-vector panels pad less take)
    # (and past 48 rows, where B is packed by the first block of rows, and past MC)
    @given(m=st.one_of(_around(sh["mr"]), _around(2 * sh["mr"]), _around(4), st.integers(49, 62),
                       st.sampled_from([sh["mc"] - 1, sh["mc"] + 5])),
           n=st.one_of(_around(sh["nr"]), _around(_vl(isa)), _around(3 * _vl(isa)), _around(_vl(isa) + 8)),
           k=st.sampled_from([1, 2, 7, 16, 17, sh["kc"] - 1, sh["kc"], sh["kc"] + 1, 2 * sh["kc"] + 3]),
           ta=st.booleans(), tb=st.booleans(), acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def run(m, n, k, ta, tb, acc, seed):
        A, B, c0, one = _drawn_product(m, n, k, ta, tb, acc, seed, isa)
        _assert_sgemm_reference(one, A, B, c0, acc, f"sgemm {m}x{n}x{k} ta={ta} tb={tb} acc={acc} ({isa})")

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_tall_products_match_the_tiles(isa):
    """512 rows or more, C written, A's rows in place and N <= 256 run the 1x1 convolutions'
    path (B packed once, sgemm_rows in units of rows); the product matches the float64
    reference, 1 and 2 threads agree bitwise, and so do the tiled loops that run pieces of
    fewer than 512 rows (the same chains per element)."""
    sh = SHAPE[isa]
    vl = _vl(isa)

    @settings(max_examples=16, deadline=None)
    @given(m=st.sampled_from([512, 513, 700, 1024, 1031, 2100]),
           # (20, 24: AVX-512's row pairs, 17 to 24 columns, which take this path too)
           n=st.one_of(_around(vl), _around(2 * vl), st.sampled_from([20, 24, 3 * vl, 3 * vl + 1, 4 * vl, 200, 256, 257])),
           k=st.sampled_from([1, 7, 17, sh["kc"], sh["kc"] + 1, 2 * sh["kc"] + 3]),
           ta=st.booleans(), tb=st.booleans(), acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def run(m, n, k, ta, tb, acc, seed):
        A, B, c0, one = _drawn_product(m, n, k, ta, tb, acc, seed, isa)
        what = f"sgemm {m}x{n}x{k} ta={ta} tb={tb} acc={acc} ({isa})"
        pieces = [_sgemm(np.ascontiguousarray(A[i:i + 500]), np.ascontiguousarray(B), c0[i:i + 500], isa, 1,
                         accumulate=acc) for i in range(0, m, 500)]
        assert_bitwise(one, np.concatenate(pieces), f"{what} vs pieces of 500 rows")
        _assert_sgemm_reference(one, A, B, c0, acc, what)

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_wide_products_give_the_bits_of_narrow_pieces(isa):
    """A wide C (256+ columns; AVX-512 runs the 6 x 4-vector block where 64-wide panels pad no more
    than 32-wide ones and M suits 6 rows) gives the bits of its column pieces under 256 wide (the
    8 x 2 block), at 1 and 2 threads (2 threads cut it into other tiles), and the float64
    reference's values."""
    sh = SHAPE[isa]

    @settings(max_examples=12, deadline=None)
    @given(m=st.sampled_from([6, 96, 97, 130, 256, 300, 1024]), n=st.sampled_from([256, 320, 333, 512, 1024]),
           k=st.sampled_from([1, 17, sh["kc"] + 1, 2 * sh["kc"] + 3]), acc=st.booleans(),
           seed=st.integers(0, 2**32 - 1))
    def run(m, n, k, acc, seed):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((m, k)).astype(F32)
        b = rng.standard_normal((k, n)).astype(F32)
        c0 = rng.standard_normal((m, n)).astype(F32)
        one = _sgemm(a, b, c0, isa, 1, accumulate=acc)
        what = f"sgemm {m}x{n}x{k} acc={acc} ({isa})"
        assert_bitwise(_sgemm(a, b, c0, isa, 2, accumulate=acc), one, f"{what} at 2 threads vs 1")
        for j in range(0, n, 200):
            piece = _sgemm(a, np.ascontiguousarray(b[:, j:j + 200]), np.ascontiguousarray(c0[:, j:j + 200]), isa, 1,
                           accumulate=acc)
            assert_bitwise(one[:, j:j + 200], piece, f"{what}: columns {j}:{j + 200}")
        _assert_sgemm_reference(one, a, b, c0, acc, what)

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_row_pairs_give_the_general_kernels_bits(isa, rng):
    """C 17 to 24 columns wide with A read in place (AVX-512: two rows' columns interleaved in
    three vectors, A packed as pairs a fixed stride apart, the loop in rounds of four steps)
    against the same product with A transposed (packed by the general kernels): the same bits,
    and the float64 reference's values, over reductions that end a round early (K mod 4 = 1..3),
    span several KC blocks, and row counts that leave a partial block (fewer than 512 rows: the
    tiled loops; 512 and more: the 1x1 convolutions' rows path), with and without accumulation."""
    kc = SHAPE[isa]["kc"]
    for m, n, k in ((5, 24, 3), (37, 17, 1), (300, 20, 5), (300, 24, 144), (41, 23, kc + 1), (1031, 24, 6),
                    (1031, 18, 2 * kc + 3), (700, 24, 147)):
        a = rng.standard_normal((m, k)).astype(F32)
        b = rng.standard_normal((k, n)).astype(F32)
        c0 = rng.standard_normal((m, n)).astype(F32)
        at = np.ascontiguousarray(a.T)
        for acc in (False, True):
            what = f"sgemm {m}x{n}x{k} acc={acc} ({isa})"
            one = _sgemm(a, b, c0, isa, 1, accumulate=acc)
            assert_bitwise(_sgemm(a, b, c0, isa, 2, accumulate=acc), one, f"{what} at 2 threads vs 1")
            assert_bitwise(_sgemm(at, b, c0, isa, 1, trans_a=True, accumulate=acc), one, f"{what} vs A transposed")
            _assert_sgemm_reference(one, a, b, c0, acc, what)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_bits_do_not_depend_on_tiling_layout_or_kernel(isa, rng):
    """Row blocks, column blocks, a transposed A (packed instead of read in place), a narrow C
    (the MR2 x VL kernel instead of MR x NR), a C three vectors wide (AVX2: the 4 x 3-vector
    kernel), a C whose last panel ends in the first half of a vector (AVX-512: that vector in 8
    lanes) and a B whose rows lie 4 KiB apart (packed where few rows of C read B in place) all
    give the bits of the whole product."""
    sh = SHAPE[isa]
    m, n, k = 3 * sh["mr"] + 5, 2 * sh["nr"] + 3, sh["kc"] + 9
    a = rng.standard_normal((m, k)).astype(F32)
    b = rng.standard_normal((k, n)).astype(F32)
    c = np.zeros((m, n), F32)
    whole = _sgemm(a, b, c, isa, 1)
    at = np.ascontiguousarray(a.T)
    assert_bitwise(_sgemm(at, b, c, isa, 1, trans_a=True), whole, "transposed A")
    bt = np.ascontiguousarray(b.T)
    assert_bitwise(_sgemm(a, bt, c, isa, 1, trans_b=True), whole, "transposed B")
    i0 = sh["mr"] + 1
    assert_bitwise(_sgemm(a[i0:], b, c[i0:], isa, 1), whole[i0:], "a row block")
    for j0, j1 in ((0, 1), (1, 1 + _vl(isa)), (3, n), (2, 2 + 3 * _vl(isa)), (0, _vl(isa) + 8),
                   (5, 5 + _vl(isa) + 3), (3, 3 + 3 * _vl(isa) + 8)):
        bb = np.ascontiguousarray(b[:, j0:j1])
        assert_bitwise(_sgemm(a, bb, c[:, j0:j1], isa, 1), whole[:, j0:j1], f"columns {j0}:{j1}")
    wide = np.zeros((k, 1024), F32)
    wide[:, :n] = b
    assert_bitwise(_sgemm(a, wide, np.zeros((m, 1024), F32), isa, 1)[:, :n], whole, "B rows 4 KiB apart")
    # Few rows of C read B in place (row blocks of 8 or 12 at AVX-512, as M pads less), B's rows
    # starting on a line or not: the bits of the packed path (B rows 4 KiB apart).
    for rows in (24, 36, 16, 5):
        ar = rng.standard_normal((rows, k)).astype(F32)
        buf = rng.standard_normal(k * n + 1).astype(F32)
        for off in (0, 1):
            bo = buf[off:off + k * n].reshape(k, n)
            wide = np.zeros((k, 1024), F32)
            wide[:, :n] = bo
            packed = _sgemm(ar, wide, np.zeros((rows, 1024), F32), isa, 1)[:, :n]
            assert_bitwise(_sgemm(ar, bo, np.zeros((rows, n), F32), isa, 1), packed,
                           f"{rows} rows, B in place (offset {off})")


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_sgemm_few_rows_over_many_panels(isa):
    """Few rows of C (M <= 48) with C wider than 256 columns, so that each thread's tile holds
    several whole panels and the few-row kernels read B in place (AVX2: the first block of rows
    lays each panel out for the others; the small tiles of the tests above take other paths): A in
    place or packed (transposed), B's rows starting on a line or not, a KC block or more, with and
    without accumulation. Against the float64 reference, bitwise at 1 and 2 threads and against
    the packed path (B's rows 4 KiB apart)."""
    sh = SHAPE[isa]

    @settings(max_examples=25, deadline=None)
    @example(m=24, n=3 * 256 + 40, k=144, ta=False, off=0, acc=False, seed=0)
    @example(m=2 * sh["mr"] + 1, n=257, k=sh["kc"] + 9, ta=True, off=1, acc=True, seed=1)
    @given(m=st.one_of(_around(sh["mr"]), _around(4), _around(8), st.integers(1, 48)).filter(lambda v: v <= 48),
           n=st.integers(257, 1000).filter(lambda v: v != 1024),
           k=st.sampled_from([1, 7, 16, 40, sh["kc"] - 1, sh["kc"] + 9]),
           ta=st.booleans(), off=st.integers(0, 1), acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def run(m, n, k, ta, off, acc, seed):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
        b = rng.standard_normal(k * n + 1).astype(F32)[off:off + k * n].reshape(k, n)
        c0 = rng.standard_normal((m, n)).astype(F32)
        what = f"{m}x{n}x{k} ta={ta} offset {off} acc={acc} ({isa})"
        one = _sgemm(a, b, c0, isa, 1, trans_a=ta, accumulate=acc)
        assert_bitwise(_sgemm(a, b, c0, isa, 2, trans_a=ta, accumulate=acc), one, f"2 threads vs 1, {what}")
        wide = np.zeros((k, 1024), F32)
        wide[:, :n] = b
        cw = np.zeros((m, 1024), F32)
        cw[:, :n] = c0
        assert_bitwise(_sgemm(a, wide, cw, isa, 1, trans_a=ta, accumulate=acc)[:, :n], one,
                       f"B in place vs packed, {what}")
        A = (a.T if ta else a).astype(np.float64)
        B = b.astype(np.float64)
        ref = A @ B + (c0.astype(np.float64) if acc else 0.0)
        terms = np.abs(A) @ np.abs(B) + (np.abs(c0.astype(np.float64)) if acc else 0.0)
        assert_close_terms(one, ref, F32, terms, length=k + 1, what=f"sgemm {what}")

    run()


def test_sgemm_rejects_bad_input():
    a = np.ones((3, 4), F32)
    with pytest.raises(ValueError, match="c"):
        _core.sgemm(a, np.ones((5, 2), F32), np.empty((3, 2), F32))
    with pytest.raises(TypeError, match="a"):
        _core.sgemm(a.astype(np.float64), np.ones((4, 2), F32), np.empty((3, 2), F32))
    with pytest.raises(ValueError):
        _core.sgemm(a, np.ones((4, 2), F32), np.empty((3, 2), F32), isa="nope")
    c = np.empty((4, 4), F32)
    with pytest.raises(ValueError, match="overlap"):
        _core.sgemm(c, c, c)


# ---- conv2d_fused ---------------------------------------------------------------------------


def _geom(n, c, k, h, w, kh, s, p, g, nhwc):
    ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kh) // s + 1
    return _core.ConvGeom(n, c, h, w, k, ho, wo, g, kh, kh, s, s, 1, 1, p, p, nhwc), ho, wo


def _fused_case(rng, n, c, k, h, w, kh, s, p, g, nhwc, bias, pro, pre_relu, stats, residual, post_relu):
    geom, ho, wo = _geom(n, c, k, h, w, kh, s, p, g, nhwc)
    x = rng.standard_normal((n, c, h, w)).astype(F32)
    wt = (rng.standard_normal((k, c // g, kh, kh)) / np.sqrt(c // g * kh * kh)).astype(F32)
    arrays = dict(
        x=R.to_nhwc(x) if nhwc else x, weight=wt,
        bias=rng.standard_normal(k).astype(F32) if bias else None,
        pre_scale=rng.uniform(0.5, 2.0, c).astype(F32) if pro else None,
        pre_shift=rng.standard_normal(c).astype(F32) if pro else None,
        residual=rng.standard_normal((n, ho, wo, k) if nhwc else (n, k, ho, wo)).astype(F32) if residual else None,
    )
    flags = dict(pre_relu=pre_relu, post_relu=post_relu, stats=stats)
    return geom, x, arrays, flags


def _run_fused(geom, arrays, flags, threads):
    k = geom.K
    out = np.full((geom.N, geom.Ho, geom.Wo, k) if geom.nhwc else (geom.N, k, geom.Ho, geom.Wo), np.nan, F32)
    s1 = np.full(k, np.nan) if flags["stats"] else None
    s2 = np.full(k, np.nan) if flags["stats"] else None
    with num_threads(threads):
        name = _core.conv2d_fused(arrays["x"], arrays["weight"], out, geom, arrays["bias"], arrays["pre_scale"],
                                  arrays["pre_shift"], flags["pre_relu"], arrays["residual"], flags["post_relu"],
                                  s1, s2)
    return name, out, s1, s2


def _reference(geom, x, arrays, flags, p, s):
    """(the convolution, the fused output, the sums of the output's terms' magnitudes) in float64."""
    a = x.astype(np.float64)
    if arrays["pre_scale"] is not None:
        a = a * arrays["pre_scale"].astype(np.float64)[None, :, None, None] \
            + arrays["pre_shift"].astype(np.float64)[None, :, None, None]
    if flags["pre_relu"]:
        a = np.maximum(a, 0)
    kw = dict(stride=(s, s), padding=(p, p), groups=geom.G)
    y = R.conv2d_ref(a, arrays["weight"], arrays["bias"], **kw)
    terms = R.conv2d_ref(np.abs(a), absf(arrays["weight"]), absf(arrays["bias"]), **kw)
    out = y.copy()
    if arrays["residual"] is not None:
        res = (R.to_nchw(arrays["residual"]) if geom.nhwc else arrays["residual"]).astype(np.float64)
        out += res
        terms = terms + np.abs(res)
    if flags["post_relu"]:
        out = np.maximum(out, 0)
    return y, out, terms


@st.composite
def fused_problems(draw):
    nhwc = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:  # grouped, on the GEMM path (no direct kernel for 6 or 5)
        g = draw(st.sampled_from((2, 3)))
        c, k = 6 * g, 5 * g
    else:
        g = 1
        c = draw(st.sampled_from((2, 3, 8, 16, 17, 33)))  # C = 1 with G = 1 is depthwise
        k = draw(st.sampled_from((1, 7, 8, 9, 16, 17, 31, 32, 33)))
    kh = draw(st.sampled_from((1, 3)))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, 1)) if kh == 3 else 0
    n = draw(st.integers(1, 2))
    h, w = draw(st.integers(kh, 9)), draw(st.integers(kh, 9))
    stats = draw(st.booleans())
    residual = (not stats) and draw(st.booleans())
    post_relu = (not stats) and draw(st.booleans())
    return dict(n=n, c=c, k=k, h=h, w=w, kh=kh, s=s, p=p, g=g, nhwc=nhwc, bias=draw(st.booleans()),
                pro=draw(st.booleans()), pre_relu=draw(st.booleans()), stats=stats, residual=residual,
                post_relu=post_relu)


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_conv2d_fused_matches_the_reference_and_threads_agree(isa):
    @settings(max_examples=30, deadline=None)
    @given(prob=fused_problems(), seed=st.integers(0, 2**32 - 1))
    def run(prob, seed):
        rng = np.random.default_rng(seed)
        geom, x, arrays, flags = _fused_case(rng, **prob)
        with isa_level(isa):
            plain = _core.conv_algorithm(geom, 0)
            stem = "stem" in plain
            if stem and (prob["pro"] or prob["pre_relu"] or prob["residual"] or prob["post_relu"]):
                # the stem kernel fuses the statistics only: anything else declines, out untouched
                with pytest.raises(ValueError, match="no fused kernel"):
                    _run_fused(geom, arrays, flags, 1)
                return
            name, out, s1, s2 = _run_fused(geom, arrays, flags, 1)
            name2, out2, t1, t2 = _run_fused(geom, arrays, flags, 2)
        # the plain forward's entry: packed, OpenBLAS, the NHWC packed pass between transposes, or
        # the stem kernel with its statistics epilogue; except NHWC 1x1 stride-1 problems that the
        # plain pass leaves to OpenBLAS, whose fused forms with only an output epilogue (bias,
        # residual, ReLU: no prologue, no statistics) run on the packed entry's in-place kernels
        want = plain
        if (prob["nhwc"] and prob["g"] == 1 and prob["kh"] == 1 and prob["s"] == 1
                and not (prob["pro"] or prob["pre_relu"] or prob["stats"])
                and plain.startswith("conv2d_gemm_f32_nhwc__")):
            want = f"conv2d_gemm_f32_nhwc_packed__{isa}"
        assert name == name2 == want and plain.endswith(f"__{isa}") and ("gemm" in plain or stem), (name, plain)
        assert_bitwise(out2, out, f"fused output at 2 threads vs 1 ({isa})")
        y, ref, terms = _reference(geom, x, arrays, flags, prob["p"], prob["s"])
        got = R.to_nchw(out) if prob["nhwc"] else out
        length = prob["c"] // prob["g"] * prob["kh"] ** 2 + 2
        assert_close_terms(got, ref, F32, terms, length=length, what=f"fused output {prob}")
        if not flags["stats"]:
            return
        assert_bitwise(t1, s1, "stats_sum at 2 threads vs 1")
        assert_bitwise(t2, s2, "stats_sumsq at 2 threads vs 1")
        # The sums are those of the returned output about its first value, in double, and they
        # give the mean and variance of the exact y.
        assert_stats(s1, s2, got, y, F32, length=length, what="fused stats")

    run()


def test_conv2d_fused_padding_is_zero_after_the_prologue(rng):
    """A shift of +5 would turn padded zeros into 5s if the prologue ran after padding."""
    geom, x, arrays, flags = _fused_case(rng, 1, 4, 4, 5, 5, 3, 1, 1, 1, False, False, True, False, False,
                                         False, False)
    arrays["pre_shift"][:] = 5.0
    _, out, _, _ = _run_fused(geom, arrays, flags, 1)
    y, _, _ = _reference(geom, x, arrays, flags, 1, 1)
    assert_close(out, y, F32, length=36, what="fused output with a large shift")


def test_conv2d_fused_rejects_unsupported_combinations(rng):
    geom, x, arrays, flags = _fused_case(rng, 1, 8, 8, 5, 5, 3, 1, 1, 1, False, True, False, False, True,
                                         True, False)
    with pytest.raises(ValueError, match="statistics"):
        _run_fused(geom, arrays, flags, 1)
    flags.update(stats=False)
    arrays["pre_scale"] = np.ones(8, F32)
    with pytest.raises(ValueError, match="pre_scale"):
        _run_fused(geom, arrays, flags, 1)
    # depthwise: the registry runs a direct kernel, there is no fused one
    dgeom, _, _, _ = _fused_case(rng, 1, 8, 8, 5, 5, 3, 1, 1, 8, False, False, False, False, False,
                                 False, False)
    out = np.empty((1, 8, 5, 5), F32)
    with pytest.raises(ValueError, match="no fused kernel"):
        _core.conv2d_fused(np.ones((1, 8, 5, 5), F32), np.ones((8, 1, 3, 3), F32), out, dgeom, None, None, None,
                           False, None, False, None, None)
    with pytest.raises(ValueError, match="overlap"):
        _core.conv2d_fused(out, np.ones((8, 1, 3, 3), F32), out, dgeom, None, None, None, False, None, False,
                           None, None)


# ---- the NHWC forward with patches read in place (sgemm_patches, no im2col matrix) -------------


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_conv_nhwc_patches_give_the_im2col_bits(isa):
    """Without a prologue the NHWC forward reads each pixel's patch straight from x (16+ channels
    a group); with an identity prologue (scale 1, shift 0: the same values) it builds the im2col
    matrix. Both must give the same bits (same KC blocks and chains) over rows around MR and the
    240-row units, channels around NR and VL, strides, padding (taps in the padding), dilation and
    16-channel groups; 1 and 2 threads agree; both match the float64 reference, and so does a real
    prologue (the im2col path)."""
    sh = SHAPE[isa]

    @settings(max_examples=25, deadline=None)
    @given(c=st.sampled_from((16, 17, 33, 64)), k=st.one_of(_around(sh["nr"]), _around(_vl(isa))),
           g=st.sampled_from((1, 1, 2)), n=st.integers(1, 2), h=st.integers(1, 13), w=st.integers(1, 13),
           kh=st.sampled_from((1, 2, 3)), kw=st.sampled_from((1, 3)), s=st.integers(1, 2), p=st.integers(0, 2),
           d=st.integers(1, 2), bias=st.booleans(), stats=st.booleans(), seed=st.integers(0, 2**32 - 1))
    @example(c=64, k=16, g=1, n=2, h=6, w=10, kh=2, kw=3, s=1, p=0, d=1, bias=False, stats=False, seed=735)
    # 64 output channels (AVX-512: one 6 x 4-vector block across them), runs over a kernel row
    @example(c=64, k=64, g=1, n=2, h=5, w=13, kh=3, kw=3, s=1, p=0, d=1, bias=True, stats=True, seed=11)
    @example(c=64, k=64, g=1, n=1, h=7, w=9, kh=3, kw=3, s=1, p=1, d=1, bias=False, stats=True, seed=12)
    def run(c, k, g, n, h, w, kh, kw, s, p, d, bias, stats, seed):
        c, k = c * g, k * g
        ho, wo = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1
        if ho < 1 or wo < 1:
            return
        rng = np.random.default_rng(seed)
        geom = _core.ConvGeom(n, c, h, w, k, ho, wo, g, kh, kw, s, s, d, d, p, p, True)
        x = rng.standard_normal((n, c, h, w)).astype(F32)
        arrays = dict(x=R.to_nhwc(x), weight=rng.standard_normal((k, c // g, kh, kw)).astype(F32),
                      bias=rng.standard_normal(k).astype(F32) if bias else None, pre_scale=None, pre_shift=None,
                      residual=None)
        flags = dict(pre_relu=False, post_relu=False, stats=stats)
        with isa_level(isa):
            name, out, s1, s2 = _run_fused(geom, arrays, flags, 1)
            _, out2, t1, t2 = _run_fused(geom, arrays, flags, 2)
            ident = dict(arrays, pre_scale=np.ones(c, F32), pre_shift=np.zeros(c, F32))
            name_i, out_i, _, _ = _run_fused(geom, ident, flags, 2)
            pro = dict(arrays, pre_scale=rng.uniform(0.5, 2.0, c).astype(F32),
                       pre_shift=rng.standard_normal(c).astype(F32))
            _, out_p, _, _ = _run_fused(geom, pro, dict(flags, pre_relu=True), 1)
            _, out_p2, _, _ = _run_fused(geom, pro, dict(flags, pre_relu=True), 2)
        what = f"c={c} k={k} g={g} n={n} {h}x{w} k{kh}x{kw} s{s} p{p} d{d} ({isa})"
        assert_bitwise(out2, out, f"2 threads vs 1, {what}")
        # (a 1x1 without a prologue or statistics, whose plain entry is OpenBLAS, runs on the in-place
        # rows kernels with its epilogue in the store, and the prologue form stays on OpenBLAS:
        # different entries, different chains; both still meet the reference below)
        if name_i == name:
            assert_bitwise(out_i, out, f"patches vs im2col, {what}")
        else:
            assert kh == kw == 1 and s == 1 and p == 0 and not stats and g == 1, (name, name_i, what)
        assert_bitwise(out_p2, out_p, f"prologue, 2 threads vs 1, {what}")
        if stats:
            assert_bitwise(t1, s1, f"stats_sum at 2 threads vs 1, {what}")
            assert_bitwise(t2, s2, f"stats_sumsq at 2 threads vs 1, {what}")
        # Bounded, as test_conv's checks, by the sums of the terms' magnitudes, not |ref| alone: an
        # output that cancels to near zero keeps the rounding of its partial sums (seed 735 below:
        # |ref| 0.0017 from terms summing to 260 in magnitude, a float32 error of 2.5e-5).
        length = c // g * kh * kw + 1
        kw_ = dict(stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
        ref = R.conv2d_ref(x, arrays["weight"], arrays["bias"], **kw_)
        terms = R.conv2d_ref(absf(x), absf(arrays["weight"]), absf(arrays["bias"]), **kw_)
        assert_close_terms(R.to_nchw(out), ref, F32, terms, length=length, what=what)
        a = np.maximum(x * pro["pre_scale"].astype(np.float64)[None, :, None, None]
                       + pro["pre_shift"].astype(np.float64)[None, :, None, None], 0)
        ref_p = R.conv2d_ref(a, arrays["weight"], arrays["bias"], **kw_)
        terms_p = R.conv2d_ref(a, absf(arrays["weight"]), absf(arrays["bias"]), **kw_)
        assert_close_terms(R.to_nchw(out_p), ref_p, F32, terms_p, length=length, what=f"prologue, {what}")

    run()


def _grads(x, w, dy, s, p, d, layout, threads):
    with num_threads(threads):
        gx, gw, _ = cnnkit.conv2d_backward(dy, x, w, s, p, d, 1, layout=layout, needs=("input", "weight"))
        y = cnnkit.conv2d(x, w, None, s, p, d, 1, layout=layout)
    return y, gx, gw


@pytest.mark.parametrize("isa", ISA_LEVELS)
def test_conv_patch_paths_every_pass(isa):
    """The dense passes that read patches in place: the NHWC forward, the stride-1 input gradient
    (the adjoint's forward; NCHW through transposes) and the NHWC weight gradient
    (conv2d_gemm_f32_nhwc_patches: the transposed patches packed per pixel through a pointer
    table, rows of a block inside one tap read in place, across a tap packed), over channels
    around MR (16, 17, 33: row blocks that straddle taps), kernels around NR and VL, pixel counts
    around the KC block and past one 1024-pixel piece, strides, padding, dilation, both layouts
    (NCHW planes of 256+ pixels: the NCHW form, same bits as NHWC): 1 and 2 threads give the
    same bits, and every pass matches the float64 reference."""
    sh = SHAPE[isa]

    def check(c, k, n, h, w, kh, kw, s, p, d, layout, seed):
        ho, wo = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1
        if ho < 1 or wo < 1:
            return
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, c, h, w)).astype(F32)
        wt = rng.standard_normal((k, c, kh, kw)).astype(F32)
        dy = rng.standard_normal((n, k, ho, wo)).astype(F32)
        xl, dyl = (R.to_nhwc(x), R.to_nhwc(dy)) if layout == "NHWC" else (x, dy)
        with isa_level(isa):
            one = _grads(xl, wt, dyl, s, p, d, layout, 1)
            two = _grads(xl, wt, dyl, s, p, d, layout, 2)
            algo = cnnkit.ops.conv2d_algorithm(xl.shape, wt.shape, s, p, d, 1, layout, pass_="weight")
            if layout == "NCHW" and c >= 16 and c * kh * kw >= 64 and ho * wo >= 256 and \
                    not _winograd((n, h, w, c), wt.shape, s, p, d, 1, "NHWC"):
                # the NCHW form of the patches forward (same reduction order and chains as NHWC,
                # where the NHWC forward is the patches GEMM: not a 3x3 at stride 1 that
                # test_conv_winograd.py's Winograd path takes)
                y_nhwc = cnnkit.conv2d(R.to_nhwc(x), wt, None, s, p, d, 1, layout="NHWC")
                assert_bitwise(one[0], R.to_nchw(y_nhwc), f"NCHW vs NHWC patches forward, c={c} k={k} {h}x{w}")
        what = f"c={c} k={k} n={n} {h}x{w} k{kh}x{kw} s{s} p{p} d{d} {layout} ({isa})"
        if layout == "NHWC" and c >= 16 and c * kh * kw >= 64 and (kh * kw > 1 or s > 1 or p > 0):
            assert algo == f"conv2d_gemm_f32_nhwc_patches__{isa}", (algo, what)
        for a, b, name in zip(two, one, ("y", "grad_x", "grad_w")):
            assert_bitwise(a, b, f"{name} at 2 threads vs 1, {what}")
        to = R.to_nchw if layout == "NHWC" else (lambda v: v)
        ref = R.conv2d_backward_ref(dy, x, wt, (s, s), (p, p), (d, d), 1)
        y_ref = R.conv2d_ref(x, wt, None, (s, s), (p, p), (d, d), 1)
        terms = R.conv2d_backward_ref(absf(dy), absf(x), absf(wt), (s, s), (p, p), (d, d), 1)
        y_terms = R.conv2d_ref(absf(x), absf(wt), None, (s, s), (p, p), (d, d), 1)
        assert_close_terms(to(one[0]), y_ref, F32, y_terms, length=c * kh * kw, what=f"y, {what}")
        assert_close_terms(to(one[1]), ref.grad_x, F32, terms.grad_x, length=k * kh * kw, what=f"grad_x, {what}")
        assert_close_terms(one[2], ref.grad_w, F32, terms.grad_w, length=n * ho * wo, what=f"grad_w, {what}")

    # past one 1024-pixel piece, several KC blocks per piece
    check(16, 2 * sh["nr"] + 3, 3, 28, 28, 3, 3, 1, 1, 1, "NHWC", 1)
    check(17, _vl(isa) + 1, 2, 30, 26, 3, 3, 1, 1, 1, "NCHW", 2)
    check(33, 2 * sh["nr"] - 1, 1, 17, 19, 3, 2, 1, (1), 2, "NCHW", 3)
    # four vectors of output channels (AVX-512: the forward's 6 x 4-vector block, NHWC only; the
    # weight gradient's from 32 input channels, its blocks of 6 rows straddling taps packed);
    # dilated 3x3 kernels, which the Winograd path (3x3 at stride 1, no dilation) leaves here
    check(64, 4 * _vl(isa), 2, 9, 14, 3, 3, 1, 2, 2, "NHWC", 4)
    check(64, 4 * _vl(isa), 1, 16, 17, 3, 3, 1, 2, 2, "NCHW", 5)
    check(33, 4 * _vl(isa), 2, 12, 11, 3, 3, 2, 1, 1, "NHWC", 6)
    check(40, 4 * _vl(isa), 1, 20, 19, 3, 2, 1, 2, 2, "NHWC", 7)
    check(48, 8 * _vl(isa), 1, 11, 12, 3, 3, 1, 2, 2, "NHWC", 8)

    @settings(max_examples=12, deadline=None)
    @given(c=st.sampled_from((16, 17, 33)), k=st.one_of(_around(sh["nr"]), _around(_vl(isa))),
           n=st.integers(1, 2), h=st.integers(2, 12), w=st.integers(2, 12), kh=st.sampled_from((1, 3)),
           kw=st.sampled_from((2, 3)), s=st.integers(1, 2), p=st.integers(0, 2), d=st.integers(1, 2),
           layout=st.sampled_from(("NHWC", "NCHW")), big=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def run(c, k, n, h, w, kh, kw, s, p, d, layout, big, seed):
        if big:  # NCHW output planes of 256 pixels or more: the NCHW form of the forward
            h, w = h + 12, w + 12
        check(c, k, n, h, w, kh, kw, s, p, d, layout, seed)

    run()


@pytest.mark.parametrize("isa", ISA_LEVELS)
@pytest.mark.parametrize("k", [16, 17, 20, 24, 25])
def test_conv2d_fused_1x1_nhwc_output_epilogues_around_24_channels(isa, k, rng):
    """NHWC 1x1 convolutions with 17 to 24 output channels run rows in pairs (AVX-512: three whole
    vectors for two rows of 24 columns). Each output epilogue (bias, residual, ReLU) gives the bits
    of the output with statistics (the same kernels, no output epilogue) with the same float32
    operations after it; 1 and 2 threads agree; the outputs and sums match the float64 reference."""
    for s, h, bias, res, relu in ((1, 9, True, False, False), (1, 9, False, True, True), (1, 9, True, True, True),
                                  (2, 9, True, True, True), (1, 7, False, False, True)):
        geom, x, arrays, flags = _fused_case(rng, 3, 16, k, h, h, 1, s, 0, 1, True, bias, False, False, False,
                                             res, relu)
        plain_arrays = dict(arrays, bias=None, residual=None)
        stats_flags = dict(flags, post_relu=False, stats=True)
        with isa_level(isa):
            _, out, _, _ = _run_fused(geom, arrays, flags, 1)
            _, out2, _, _ = _run_fused(geom, arrays, flags, 2)
            _, plain, s1, s2 = _run_fused(geom, plain_arrays, stats_flags, 1)
            _, plain2, t1, t2 = _run_fused(geom, plain_arrays, stats_flags, 2)
        assert_bitwise(out2, out, f"K={k} s={s}: 2 threads vs 1 ({isa})")
        assert_bitwise(plain2, plain, f"K={k} s={s}: with statistics, 2 threads vs 1 ({isa})")
        assert_bitwise(t1, s1, f"K={k} s={s}: stats_sum, 2 threads vs 1 ({isa})")
        assert_bitwise(t2, s2, f"K={k} s={s}: stats_sumsq, 2 threads vs 1 ({isa})")
        if isa != "scalar":  # (at the scalar level the statistics come from another pass: other chains)
            want = plain.copy()
            if bias:
                want = want + arrays["bias"]
            if res:
                want = want + arrays["residual"]
            if relu:
                want = np.where(want < 0, np.float32(0), want)
            assert_bitwise(out, want, f"K={k} s={s} bias={bias} res={res} relu={relu}: epilogue ({isa})")
        _, ref, terms = _reference(geom, x, arrays, flags, 0, s)
        assert_close_terms(R.to_nchw(out), ref, F32, terms, length=16 + 2, what=f"K={k} s={s} ({isa})")
        y, _, _ = _reference(geom, x, plain_arrays, stats_flags, 0, s)
        assert_stats(s1, s2, R.to_nchw(plain), y, F32, length=16 + 2, what=f"K={k} s={s} stats ({isa})")
