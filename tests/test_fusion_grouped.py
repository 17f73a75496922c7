"""The fused passes on the direct grouped kernels (Cg == Kg in {2, 4, 8, 16, 32}, C a multiple of
the vector length): ``_core.conv2d_fused`` (prologue ``max(fma(s, x, t), 0)`` applied as input rows
are read, padding 0 after it; bias; statistics of y as shifted double sums; residual; ReLU) and
``_core.conv2d_fused_backward_weight`` (the weight gradient of conv(prologue(x)), both the per-image
chunks and the channel blocks of small planes), where the registry runs the grouped entries.

Checked against the float64 NumPy reference of tests/test_fusion.py (from tests/reference/conv.py)
with conftest's tolerance for the reduction length, over hypothesis-drawn shapes at every ISA level
this CPU has (channels per group 2..32, groups 2..8 as the level's vector length allows, planes
1..18, stride 1 and 2, padding 0 and 1, 1x1 and 3x3 kernels, both layouts); the results at 1 and 2
threads must be bitwise identical, and the name returned (``cnnkit.ops.fused.last_kernel``) must be
the grouped entry the plain pass runs. Planted ties (a*x + t == 0 after two roundings, not after
one) check that the prologue is the single fma the backward's ReLU mask recomputes.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cnnkit import _core
from cnnkit.ops import fused as F
from conftest import ISA_LEVELS, assert_bitwise, assert_close, assert_sum_close, isa_level, num_threads
from reference.conv import to_nchw, to_nhwc
from test_fusion import fused_backward_ref, fused_ref
from test_fusion_dw import _exact_prologue, assert_same_pass

VL = {"scalar": 4, "avx2": 8, "avx512": 16}  # float32 lanes of each level's vectors


def _to(layout, a):
    return a if layout == "NCHW" else to_nhwc(a)


def _from(layout, a):
    return a if layout == "NCHW" else to_nchw(a)


def _run(c):
    """Checks one case (a dict: N, cg, G, H, W, k, stride, pad, layout, bias, affine, pre_relu, epi,
    seed) at the active ISA level: forward and weight gradient against float64, bitwise at 1 and 2
    threads, on the grouped entry."""
    N, cg, G, k, s, p, lay = c["N"], c["cg"], c["G"], c["k"], c["stride"], c["pad"], c["layout"]
    C = cg * G
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((N, C, c["H"], c["W"])).astype(np.float32)
    w = rng.standard_normal((C, cg, k, k)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32) if c["bias"] else None
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32) if c["affine"] else None
    sh = rng.standard_normal(C).astype(np.float32) if c["affine"] else None
    g = F._Geom(_to(lay, x).shape, w.shape, s, p, 1, G, lay, np.float32)
    plain = _core.conv_algorithm(g.core(), 0)
    assert plain.startswith("conv2d_grouped_f32_"), (plain, c)
    epi = c["epi"]
    res = rng.standard_normal((N, C, g.Ho, g.Wo)).astype(np.float32) if epi in ("res", "res_relu") else None
    post, stats = epi in ("relu", "res_relu"), epi == "stats"
    y_ref, a_ref, m_ref, v_ref = fused_ref(x, w, b, s, p, 1, G, sc, sh, c["pre_relu"], res, post)
    L = cg * k * k
    outs = []
    for t in (1, 2):
        with num_threads(t):
            out = F.conv2d_fused(_to(lay, x), w, b, stride=s, padding=p, groups=G, layout=lay, pre_scale=sc,
                                 pre_shift=sh, pre_relu=c["pre_relu"], residual=None if res is None else _to(lay, res),
                                 post_relu=post, stats=stats)
        assert F.last_kernel == plain, (F.last_kernel, plain)
        outs.append(out if stats else (out,))
    for u, v in zip(*outs):
        assert_bitwise(u, v, "forward at 2 threads vs 1")
    # y is a sum of L products of the prologue's output (scaled by up to 2 and shifted) with the
    # weights, plus the bias: bounded by the terms' magnitudes, as the other fused sums are
    # (assert_sum_close). An element that cancelled to -0.0237 from terms summing to 298 (scalar
    # level, NCHW, g2 with 32 channels a group, seed 0) was 2.6e-5 off against a |ref|-relative
    # bound of 2.5e-5: 9e-8 of its terms, float32 rounding.
    y_abs = fused_ref(np.abs(a_ref), np.abs(w), None if b is None else np.abs(b), s, p, 1, G, None, None, False,
                      None if res is None else np.abs(res), False)[0]
    assert_sum_close(_from(lay, outs[0][0]), y_ref, y_abs, L, what="y")
    if stats:
        scale = np.abs(y_ref).max() + 1
        n = N * g.Ho * g.Wo
        assert_close(outs[0][1] / scale, m_ref / scale, np.float32, length=L * n, what="mean")
        assert_close(outs[0][2] / scale**2, v_ref / scale**2, np.float32, length=L * n, what="var")
    # the weight gradient of conv(prologue(x))
    gy = rng.standard_normal((N, C, g.Ho, g.Wo)).astype(np.float32)
    wname = _core.conv_algorithm(g.core(), 2)
    got = []
    for t in (1, 2):
        dw, db = np.full(w.shape, np.nan, np.float32), np.full(C, np.nan, np.float32)
        with num_threads(t):
            name = _core.conv2d_fused_backward_weight(_to(lay, gy), _to(lay, x), dw, db, g.core(), sc, sh,
                                                      c["pre_relu"])
        assert name == wname and name.startswith("conv2d_grouped_f32_"), (name, wname)
        got.append((dw, db))
    for u, v in zip(*got):
        assert_bitwise(u, v, "weight gradient at 2 threads vs 1")
    ref = fused_backward_ref(gy, x, w, s, p, 1, G, sc, sh, c["pre_relu"], None, False)
    Lw = N * g.Ho * g.Wo
    # Sums of Lw products gy * a: bounded by the terms' magnitudes (sum |gy| |a|, and sum |gy| for
    # the bias) as y above. With the |ref| rule an element that cancelled to 0.00659 (scalar level,
    # NHWC, g2 with 16 channels a group, 1x1 at padding 1, 12x10, N = 3, seed 1, drawn in a full
    # run) was 3.1e-5 off against a bound of 2.5e-5: the same bits before and after the Winograd
    # change of that session (d6dd69b), float32 rounding of terms summing to hundreds.
    terms = fused_backward_ref(np.abs(gy), np.abs(a_ref), np.abs(w), s, p, 1, G, None, None, False, None, False)
    assert_sum_close(got[0][0], ref[1], terms[1], Lw, what="grad_w")
    assert_sum_close(got[0][1], ref[2], terms[2], Lw, what="grad_b")


@st.composite
def cases(draw):
    isa = draw(st.sampled_from(ISA_LEVELS))
    cg = draw(st.sampled_from((2, 4, 8, 16, 32)))
    G = draw(st.sampled_from([G for G in (2, 3, 4, 8) if (G * cg) % VL[isa] == 0 and (G <= 4 or cg <= 4)]))
    k, pad = draw(st.sampled_from((1, 3))), draw(st.integers(0, 1))
    layout = draw(st.sampled_from(("NHWC", "NHWC", "NCHW")))
    H = draw(st.integers(max(1, k - 2 * pad), 12))
    W = draw(st.integers(max(1, k - 2 * pad), 12 if layout == "NHWC" else 18))  # NCHW: rows of 16+ too
    return dict(isa=isa, N=draw(st.integers(1, 3)), cg=cg, G=G, H=H, W=W, k=k, stride=draw(st.integers(1, 2)),
                pad=pad, layout=layout, bias=draw(st.booleans()), affine=draw(st.booleans()),
                pre_relu=draw(st.booleans()), epi=draw(st.sampled_from(("none", "stats", "res", "relu", "res_relu"))),
                seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(c=cases())
@example(c=dict(isa="scalar", N=3, cg=32, G=2, H=6, W=14, k=3, stride=1, pad=0, layout="NCHW", bias=True, affine=True,
                pre_relu=False, epi="none", seed=0))  # (a cancelled output: y's bound by its terms)
def test_fused_grouped_hypothesis(c):
    with isa_level(c["isa"]):
        _run(c)


@st.composite
def input_cases(draw):
    isa = draw(st.sampled_from(ISA_LEVELS))
    cg = draw(st.sampled_from((2, 4, 8, 16, 32)))
    G = draw(st.sampled_from([G for G in (2, 3, 4, 8) if (G * cg) % VL[isa] == 0 and (G <= 4 or cg <= 4)]))
    return dict(isa=isa, N=draw(st.sampled_from((1, 2, 3, 17))), cg=cg, G=G, H=draw(st.integers(1, 12)),
                W=draw(st.integers(1, 12)), k=draw(st.sampled_from((3, 5))), stride=draw(st.sampled_from((2, 3))),
                affine=draw(st.booleans()), relu=draw(st.booleans()), residual=draw(st.booleans()),
                stored=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(c=input_cases())
def test_fused_input_gradient_grouped_rows(c):
    """``_core.conv2d_fused_backward_input`` on NHWC grouped problems at a stride above 1: the
    direct grouped kernel with the residual and the gradient epilogue on each dx row as it is
    finished, the sums per band of rows added in band order (grouped.h,
    grouped_backward_input_direct). The plain pass's name; dx equal to the plain kernel's dx plus
    the residual, masked (by the prologue's fma or a stored mask), bit for bit; the sums against
    float64; batches with a band per image (17) and with several bands an image (1 to 3); bitwise
    at 1 and 2 threads; at the drawn ISA level."""
    with isa_level(c["isa"]):
        _run_input(c)


def _nan_array(shape, offset):
    """A NaN-filled float32 array of ``shape`` whose data starts ``offset`` bytes (a multiple of 4)
    past a 64-byte boundary."""
    n = int(np.prod(shape))
    raw = np.full(n + 32, np.nan, np.float32)
    first = (-raw.ctypes.data % 64 + offset) // 4
    out = raw[first:first + n].reshape(shape)
    assert out.ctypes.data % 64 == offset
    return out


def _run_input(c):
    N, cg, G, k, s = c["N"], c["cg"], c["G"], c["k"], c["stride"]
    C = cg * G
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((N, c["H"], c["W"], C)).astype(np.float32)
    w = rng.standard_normal((C, cg, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32) if c["affine"] else None
    sh = rng.standard_normal(C).astype(np.float32) if c["affine"] else None
    center = rng.standard_normal(C)
    res = rng.standard_normal(x.shape).astype(np.float32) if c["residual"] else None
    relu = c["relu"]
    mask = np.maximum(rng.standard_normal(x.shape), 0).astype(np.float32) if c["stored"] and relu else None
    g = F._Geom(x.shape, w.shape, s, k // 2, 1, G, "NHWC", np.float32)
    plain_name = _core.conv_algorithm(g.core(), 1)
    assert plain_name.startswith("conv2d_grouped_f32_nhwc"), (plain_name, c)
    gy = rng.standard_normal((N, g.Ho, g.Wo, C)).astype(np.float32)
    plain = np.empty(x.shape, np.float32)
    _core.conv_backward_input(gy, w, plain, g.core())
    got = []
    # dx on a 64-byte line (its rows written by non-temporal stores where they start on lines too)
    # and 16 bytes past one (regular stores)
    for t, on_line in ((1, True), (2, True), (1, False), (2, False)):
        dx = _nan_array(x.shape, 0 if on_line else 16)
        with num_threads(t):
            name, s1, s2 = _core.conv2d_fused_backward_input(gy, w, dx, g.core(), x, sc, sh, relu, center, res, mask)
        assert name == plain_name, (name, plain_name)
        got.append((dx, s1, s2))
    for other, what in zip(got[1:], ("2 threads", "dx off a 64-byte line", "2 threads, off the line")):
        for u, v in zip(got[0], other):
            assert_bitwise(v, u, f"input gradient: {what} vs 1 thread on the line")
    dx, s1, s2 = got[0]
    z = x.astype(np.float64) * (sc if c["affine"] else 1.0) + (sh if c["affine"] else 0.0)
    keep = ((mask > 0) if mask is not None else (z > 0)) if relu else np.ones(x.shape, bool)
    summed = plain + res if res is not None else plain
    assert_bitwise(dx, np.where(keep, summed, np.float32(0)), "the plain kernel's dx (+ residual), masked")
    ga = to_nhwc(fused_backward_ref(to_nchw(gy), to_nchw(x), w, s, k // 2, 1, G, None, None, False, None, False)[6])
    gz = (ga + (res if res is not None else 0.0)) * keep
    L = cg * k * k * N * c["H"] * c["W"]
    assert_close(s1, gz.sum(axis=(0, 1, 2)), np.float32, length=L, what="sum")
    assert_close(s2, (gz * (x - center)).sum(axis=(0, 1, 2)), np.float32, length=L, what="sumxc")


# resnext_small's grouped layers (NHWC, 3x3, pad 1, 8 groups) at a small batch, a shape on the
# channel blocks of the weight gradient (16+ channels a group, planes under 100 pixels, 2^17
# weights) and NCHW rows of 16 or more (the entry that transposes rows in registers).
NAMED = [
    ("cg2 16@32 s1", dict(N=2, cg=2, G=8, H=32, W=32, k=3, stride=1, pad=1, layout="NHWC")),
    ("cg4 32@32 s2", dict(N=2, cg=4, G=8, H=32, W=32, k=3, stride=2, pad=1, layout="NHWC")),
    ("cg8 64@16 s2", dict(N=3, cg=8, G=8, H=16, W=16, k=3, stride=2, pad=1, layout="NHWC")),
    ("cg32 blocks 480@7", dict(N=2, cg=32, G=15, H=7, W=7, k=3, stride=1, pad=1, layout="NHWC")),
    ("cg32 blocks 480@7 NCHW", dict(N=2, cg=32, G=15, H=7, W=7, k=3, stride=1, pad=1, layout="NCHW")),
    ("cg16 NCHW row 17", dict(N=2, cg=16, G=2, H=5, W=17, k=3, stride=1, pad=1, layout="NCHW")),
]


@pytest.mark.parametrize("epi", ("stats", "res_relu"))
@pytest.mark.parametrize("case", [c for _, c in NAMED], ids=[n for n, _ in NAMED])
def test_fused_grouped_named(case, epi, isa):
    _run(dict(case, bias=epi == "res_relu", affine=True, pre_relu=True, epi=epi, seed=len(epi) + case["W"]))


def test_python_layer_runs_the_grouped_kernels(monkeypatch):
    """conv2d_fused and the weight gradient of conv2d_fused_backward take the compiled grouped
    passes: no prologue pass, no statistics pass, the normalized tensor never materialised."""
    def fail(*a, **k):
        raise AssertionError("an unfused pass ran")

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    w = rng.standard_normal((32, 4, 3, 3)).astype(np.float32)
    s, t = rng.uniform(0.5, 2, 32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    kw = dict(padding=1, groups=8, layout="NHWC", pre_scale=s, pre_shift=t, pre_relu=True)
    monkeypatch.setattr(F, "_prologue", fail)
    monkeypatch.setattr(_core, "norm_stats", fail)
    y, mean, var = F.conv2d_fused(x, w, stats=True, **kw)
    assert F.last_kernel.startswith("conv2d_grouped_f32_nhwc__")
    gr = F.conv2d_fused_backward(np.ones_like(y), x, w, needs=("weight", "bias"), **kw)
    monkeypatch.undo()
    y_ref, _, m_ref, _ = fused_ref(to_nchw(x), w, None, 1, 1, 1, 8, s, t, True, None, False)
    assert_close(to_nchw(y), y_ref, np.float32, length=36, what="y")
    assert_close(mean, m_ref, np.float32, length=36 * 128, what="mean")
    ref = fused_backward_ref(np.ones(y_ref.shape), to_nchw(x), w, 1, 1, 1, 8, s, t, True, None, False)
    assert_close(gr.weight, ref[1], np.float32, length=128, what="grad_w")


@pytest.mark.parametrize("relu", (False, True))
def test_prologue_is_one_fma(relu, isa):
    """1x1 grouped convolution whose weights pick one input channel: y is the prologue's output,
    bitwise. At pixel 0, t = -(s*x) rounded, so s*x + t is 0 with two roundings and the (nonzero)
    rounding error of s*x with one; the weight gradient of a one-hot dy returns the same values."""
    cg, G = 4, 4
    C = cg * G
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 5, C)).astype(np.float32)
    s = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    t = rng.standard_normal(C).astype(np.float32)
    t[:] = -(s * x[0, 0, 0])  # float32 products: every channel a tie at pixel 0
    err = s.astype(np.float64) * x[0, 0, 0].astype(np.float64) + t.astype(np.float64)  # exact
    assert np.count_nonzero(err) >= C // 2, "the planted ties do not separate fma from mul+add"
    want0 = np.maximum(err, 0) if relu else err
    w = np.zeros((C, cg, 1, 1), np.float32)
    w[np.arange(C), np.arange(C) % cg] = 1  # y[k] = a[k]
    y = F.conv2d_fused(x, w, groups=G, layout="NHWC", pre_scale=s, pre_shift=t, pre_relu=relu)
    assert F.last_kernel.startswith("conv2d_grouped_f32_nhwc__")
    assert_bitwise(y[0, 0, 0], want0.astype(np.float32), "y at the ties")
    a = s * x.astype(np.float64) + t  # exact products; one rounding of the sum then to float32
    assert_close(y, np.maximum(a, 0) if relu else a, np.float32, what="y")
    gy = np.zeros_like(y)
    gy[0, 0, 0] = 1
    dw = np.empty(w.shape, np.float32)
    g = F._Geom(x.shape, w.shape, 1, 0, 1, G, "NHWC", np.float32)
    _core.conv2d_fused_backward_weight(gy, x, dw, None, g.core(), s, t, relu)
    grp = np.arange(C)[:, None] // cg * cg + np.arange(cg)[None, :]  # dw[k, ci] = a[0, 0, 0, grp(k)*cg + ci]
    assert_bitwise(dw[:, :, 0, 0], want0.astype(np.float32)[grp], "grad_w at the ties")


def _check_grouped_one_pass(N, C, G, H, W, stride, epi, seed):
    """The fused input gradient of a strided grouped NHWC problem, its dy given as a norm's apply
    pass that is not kept (grad_out None) and its weight gradient asked for too: bitwise the three
    passes (``norm_backward_apply``, the fused input gradient, ``conv2d_fused_backward_weight``)
    at 1 and 2 threads, whether the one pass takes the shape (pieces and bands of whole images) or
    the call runs the three passes; dw close to float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((C, C // G, 3, 3)).astype(np.float32)
    scale, relu = "noscale" not in epi, "norelu" not in epi
    s = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32) if scale else None
    t = rng.standard_normal(C).astype(np.float32) if scale else None
    center = rng.standard_normal(C)
    res = rng.standard_normal(x.shape).astype(np.float32) if "res" in epi else None
    mask = np.where(rng.random(x.shape) < 0.4, 0, rng.random(x.shape)).astype(np.float32) if "mask" in epi else None
    g = F._Geom(x.shape, w.shape, stride, 1, 1, G, "NHWC", np.float32)
    shape = (N, g.Ho, g.Wo, C)
    z = (rng.standard_normal(shape) * 2 + 0.3).astype(np.float32)
    gn = np.where(z > 0, rng.standard_normal(shape), 0).astype(np.float32)
    coefs = (z.astype(np.float64).mean(axis=(0, 1, 2)), rng.random(C) + 0.5, rng.standard_normal(C) * 0.1,
             rng.standard_normal(C) * 0.1)
    dy = np.empty_like(gn)
    _core.norm_backward_apply(gn, z, None, dy, None, N, C, g.Ho * g.Wo, True, False, *coefs)
    dx_own = np.full(x.shape, np.nan, np.float32)
    own, s1_own, s2_own = _core.conv2d_fused_backward_input(dy, w, dx_own, g.core(), x, s, t, True, center, res,
                                                            mask)
    dw_own = np.full(w.shape, np.nan, np.float32)
    _core.conv2d_fused_backward_weight(dy, x, dw_own, None, g.core(), s, t, relu)
    for threads in (1, 2):
        dx = np.full(x.shape, np.nan, np.float32)
        dw = np.full(w.shape, np.nan, np.float32)
        with num_threads(threads):
            name, s1, s2 = _core.conv2d_fused_backward_input(None, w, dx, g.core(), x, s, t, True, center, res, mask,
                                                             dy_apply=(gn, z) + coefs, grad_weight=(dw, x, s, t, relu))
        assert name == own, (name, own)
        assert_same_pass((dw, dx, s1, s2), (dw_own, dx_own, s1_own, s2_own), f"in one pass ({threads} threads)")
    a = _exact_prologue(x, s, t, relu)
    ref = fused_backward_ref(to_nchw(dy), to_nchw(a), w, stride, 1, 1, G, None, None, False, None, False)
    assert_close(dw, ref[1], np.float32, length=N * g.Ho * g.Wo * 9 // G, what="grad_w")


# (N, C, groups, H, W, stride): strided grouped problems of the direct kernels whose weight
# gradient's 8 pieces are runs of whole images (N a multiple of 8, 512 output pixels or more) and
# whose input gradient's bands are images (from 16 images): the one pass (g8 32 -> 32 and 64 -> 64
# at stride 2 as resnext_small's, 2 to 32 channels a group, stride 3); and shapes the call runs as
# the three passes (8 images: bands of half an image; 12: pieces across images; 16 at 4x4 output:
# pieces cut into blocks of channels).
_GROUPED_ONE_PASS = [(16, 32, 8, 12, 12, 2), (16, 64, 8, 12, 12, 2), (24, 32, 16, 13, 11, 2), (16, 64, 2, 12, 12, 2),
                     (16, 96, 3, 12, 12, 2), (16, 48, 3, 12, 12, 2), (16, 32, 8, 18, 18, 3), (8, 32, 8, 12, 12, 2),
                     (12, 32, 4, 8, 8, 2), (16, 64, 8, 8, 8, 2)]


@pytest.mark.parametrize("case", _GROUPED_ONE_PASS, ids=["x".join(map(str, c)) for c in _GROUPED_ONE_PASS])
@pytest.mark.parametrize("epi", ["relu", "noscale", "norelu", "res_mask"])
def test_fused_grouped_backward_in_one_pass(case, epi, isa):
    """``_core.conv2d_fused_backward_input`` with ``dy_apply`` (not kept) and ``grad_weight`` on
    strided grouped NHWC problems of the direct grouped kernels: bitwise the three passes at every
    ISA level."""
    N, C, G, H, W, stride = case
    g = F._Geom((N, H, W, C), (C, C // G, 3, 3), stride, 1, 1, G, "NHWC", np.float32)
    assert _core.conv_algorithm(g.core(), 1).startswith("conv2d_grouped_f32_nhwc__"), case
    _check_grouped_one_pass(*case, epi=epi, seed=sum(case) + len(epi))


@settings(max_examples=30, deadline=None)
@given(N=st.sampled_from((8, 16, 16, 17, 24, 32)), cpg=st.sampled_from((2, 4, 8, 16, 32)), ncv=st.integers(1, 3),
       H=st.integers(3, 18), W=st.integers(3, 18), stride=st.sampled_from((2, 2, 3)),
       epi=st.sampled_from(("relu", "noscale", "norelu", "res_mask")), level=st.sampled_from(ISA_LEVELS),
       seed=st.integers(0, 2**31 - 1))
def test_fused_grouped_backward_in_one_pass_hypothesis(N, cpg, ncv, H, W, stride, epi, level, seed):
    G = max(2, 16 // cpg) * ncv  # (C = G * cpg: whole vectors at every level)
    with isa_level(level):
        _check_grouped_one_pass(N, G * cpg, G, H, W, stride, epi, seed)
