"""Fused convolution (cnnkit.ops.conv2d_fused and its backward) and the automatic Conv2d ->
BatchNorm2d fusion of cnnkit.nn.

* conv2d_fused / conv2d_fused_backward against a float64 NumPy reference written here from
  tests/reference/conv.py (prologue ``relu(s*x + t)``, conv, bias, residual, ReLU, statistics;
  the chain rule for the backward), over hypothesis geometries (stride, padding, dilation,
  groups, both layouts) and every option combination, float32 and float64; the conftest
  tolerance table scaled with the reduction length.
* dispatch: a fake ``_core.conv2d_fused`` (monkeypatched) is called for float32 with the
  documented arguments, its ValueError falls back to the reference path, float64 never calls
  it; the shifted sums it returns become the mean and variance.
* networks: fused vs unfused Sequential chains, residual and bottleneck blocks and the models
  of cnnkit.models give the same loss, gradients, input gradient and running statistics over a
  few training steps to the tolerance table of :func:`cnnkit.nn.fusion` (NETWORK_TOL below),
  also with the fake kernel (then nothing is materialised and the backward recomputes);
  fusion off is bitwise the layer-by-layer path; captures, ``until`` and ``inject`` work.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import _core, models, nn
from cnnkit.ops import fused as F
from cnnkit.optim import SGD
from conftest import ISA_LEVELS, assert_bitwise, assert_close, isa_level, num_threads
from test_conv import assert_close_terms
from reference.conv import conv2d_backward_ref, conv2d_ref, resolve_padding, to_nchw, to_nhwc

# The network tolerance of cnnkit.nn.fusion's docstring (float32 layers): after step k,
# |loss_f - loss_u| <= LOSS_RTOL*k*|loss_u|; per gradient tensor
# max|g_f - g_u| <= GRAD_RTOL*k*max|g_u| + GRAD_ATOL*G (G: the largest gradient magnitude of the
# model at that step); running statistics |r_f - r_u| <= STAT_TOL*k*(1 + |r_u|).
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL, STAT_TOL = 1e-5, 2e-5, 1e-6, 1e-5


# ---- the float64 reference --------------------------------------------------------------------

def _chan(a, nd=4):
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (nd - 2))


def fused_ref(x, w, b, stride, padding, dilation, groups, s, t, pre_relu, res, post_relu):
    """y (NCHW, float64) and the prologue's output a, plus the batch statistics of y."""
    x = np.asarray(x, np.float64)
    a = x * (1.0 if s is None else _chan(s)) + (0.0 if t is None else _chan(t))
    if pre_relu:
        a = np.maximum(a, 0)
    y = conv2d_ref(a, w, b, stride, padding, dilation, groups)
    if res is not None:
        y = y + np.asarray(res, np.float64)
    if post_relu:
        y = np.maximum(y, 0)
    return y, a, y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))


def fused_backward_ref(gy, x, w, stride, padding, dilation, groups, s, t, pre_relu, y, post_relu):
    """(grad_x, grad_w, grad_b, grad_s, grad_t, grad_res, grad_a), NCHW float64."""
    x = np.asarray(x, np.float64)
    g = np.asarray(gy, np.float64)
    if post_relu:
        g = g * (np.asarray(y) > 0)
    z = x * (1.0 if s is None else _chan(s)) + (0.0 if t is None else _chan(t))
    a = np.maximum(z, 0) if pre_relu else z
    ga, gw, gb = conv2d_backward_ref(g, a, w, stride, padding, dilation, groups)
    gz = ga * (z > 0) if pre_relu else ga
    gx = gz * (1.0 if s is None else _chan(s))
    return gx, gw, gb, (gz * x).sum(axis=(0, 2, 3)), gz.sum(axis=(0, 2, 3)), g, ga


# ---- hypothesis cases -------------------------------------------------------------------------

@st.composite
def cases(draw):
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    depthwise = draw(st.booleans()) and groups == 1
    cig = 1 if depthwise else draw(st.integers(1, 4))
    C = cig * groups if not depthwise else draw(st.integers(1, 5))
    if depthwise:
        groups, K = C, C * draw(st.integers(1, 2))
    else:
        K = groups * draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(N=draw(st.integers(1, 3)), C=C, K=K, H=draw(st.integers(3, 7)), W=draw(st.integers(3, 7)),
                kh=kh, kw=kw, groups=groups, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 2)),
                dilation=draw(st.integers(1, 2)), layout=draw(st.sampled_from(("NCHW", "NHWC"))),
                bias=draw(st.booleans()), scale=draw(st.booleans()), shift=draw(st.booleans()),
                pre_relu=draw(st.booleans()), epi=draw(st.sampled_from(("none", "stats", "res", "relu", "res_relu"))),
                dtype=draw(st.sampled_from((np.float32, np.float64))), seed=draw(st.integers(0, 2**31 - 1)))


def _fits(c):
    eh, ew = c["dilation"] * (c["kh"] - 1) + 1, c["dilation"] * (c["kw"] - 1) + 1
    return c["H"] + 2 * c["padding"] >= eh and c["W"] + 2 * c["padding"] >= ew


def _arrays(c):
    rng = np.random.default_rng(c["seed"])
    dt = c["dtype"]
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(dt)
    w = rng.standard_normal((c["K"], c["C"] // c["groups"], c["kh"], c["kw"])).astype(dt)
    b = rng.standard_normal(c["K"]).astype(dt) if c["bias"] else None
    s = rng.uniform(0.5, 2.0, c["C"]).astype(dt) * rng.choice((-1, 1), c["C"]) if c["scale"] else None
    t = rng.standard_normal(c["C"]).astype(dt) if c["shift"] else None
    return rng, x, w, b, (None if s is None else s.astype(dt)), t


def _geom_kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                layout=c["layout"])


def _to(layout, a):
    return a if layout == "NCHW" else to_nhwc(a)


def _from(layout, a):
    return a if layout == "NCHW" else to_nchw(a)


def _check_case(c):
    if not _fits(c):
        return
    rng, x, w, b, s, t = _arrays(c)
    dt, lay = c["dtype"], c["layout"]
    y_ref_shape = conv2d_ref(x[:1, :, :, :], w, None, c["stride"], c["padding"], c["dilation"], c["groups"]).shape
    res = None
    if c["epi"] in ("res", "res_relu"):
        res = rng.standard_normal((c["N"],) + y_ref_shape[1:]).astype(dt)
    post = c["epi"] in ("relu", "res_relu")
    stats = c["epi"] == "stats"
    y_ref, a_ref, m_ref, v_ref = fused_ref(x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"], s, t,
                                           c["pre_relu"], res, post)
    L = (c["C"] // c["groups"]) * c["kh"] * c["kw"]
    out = F.conv2d_fused(_to(lay, x), w, b, pre_scale=s, pre_shift=t, pre_relu=c["pre_relu"],
                         residual=None if res is None else _to(lay, res), post_relu=post, stats=stats,
                         **_geom_kw(c))
    y = out[0] if stats else out
    assert y.dtype == dt
    # Every output that is a sum is bounded by the magnitudes of its terms, not by |result| alone
    # (_reduction_terms): a float32 sum of O(1) terms that cancels keeps their rounding. With the
    # |ref| rule the row-blocks hypothesis test below failed at random in CI, on draws that gave
    # the same bits at 79d536b (before that session's changes): 35 -> 146 at 13x27, seed 3883,
    # grad_w 3.9e-5 off against a bound of 3.0e-5 from |ref| = 0.0068, on terms whose magnitudes
    # add to 878; 89 -> 131 at 13x29, stride 2, seed 22075, grad_x 1.3e-5 off against 1.25e-5.
    # test_fusion_wgrad.py's weight gradient took the same rule for the same reason.
    terms = _reduction_terms(x, w, b, c, s, t, res)
    assert_close_terms(_from(lay, y), y_ref, dt, terms["y"], length=L, what="y")
    if stats:
        assert out[1].dtype == np.float64 and out[2].dtype == np.float64
        scale = np.abs(y_ref).max() + 1
        assert_close(out[1] / scale, m_ref / scale, dt, length=L, what="mean")
        assert_close(out[2] / scale**2, v_ref / scale**2, dt, length=L, what="var")
    # backward
    gy = rng.standard_normal(y_ref.shape).astype(dt)
    needs = ("input", "weight", "bias", "pre_scale", "pre_shift", "residual", "conv_input")
    gr = F.conv2d_fused_backward(_to(lay, gy), _to(lay, x), w, pre_scale=s, pre_shift=t, pre_relu=c["pre_relu"],
                                 post_relu=post, y=y if post else None, needs=needs, **_geom_kw(c))
    ref = fused_backward_ref(gy, x, w, c["stride"], c["padding"], c["dilation"], c["groups"], s, t, c["pre_relu"],
                             y_ref, post)
    Lw = c["N"] * y_ref.shape[2] * y_ref.shape[3]
    Lx = (c["K"] // c["groups"]) * c["kh"] * c["kw"]
    Ls = Lx * c["N"] * c["H"] * c["W"]
    terms.update(_reduction_terms(x, w, b, c, s, t, res, gy, y_ref if post else None, ref[6]))
    for got, want, length, name in ((gr.input, ref[0], Lx, "grad_x"), (gr.weight, ref[1], Lw, "grad_w"),
                                    (gr.bias, ref[2], Lw, "grad_b"), (gr.pre_scale, ref[3], Ls, "grad_scale"),
                                    (gr.pre_shift, ref[4], Ls, "grad_shift"), (gr.residual, ref[5], 1, "grad_res"),
                                    (gr.conv_input, ref[6], Lx, "grad_a")):
        assert got is not None and got.dtype == dt, name
        if name in ("grad_x", "grad_res", "grad_a"):
            got = _from(lay, got)
        if name in terms:
            assert_close_terms(got, want, dt, terms[name], length=length, what=name)
        else:  # (the residual's gradient: no sum)
            assert_close(got, want, dt, length=length, what=name)


def _reduction_terms(x, w, b, c, s, t, res, gy=None, y_post=None, ga=None):
    """For each output of _check_case that is a sum, the sum of its terms' magnitudes (NCHW float64):
    y (the convolution of the prologue's output, plus bias and residual); with ``gy`` (the gradient
    at the output; ``y_post``: the output whose ReLU masks it, or None) and ``ga`` (the reference
    gradient at the prologue's output) the gradients: at the prologue's output and at x (sums over
    the output channels and taps), and of the weight, bias, scale and shift (sums over the pixels)."""
    geo = (c["stride"], c["padding"], c["dilation"], c["groups"])
    x = np.asarray(x, np.float64)
    z = x * (1.0 if s is None else _chan(s)) + (0.0 if t is None else _chan(t))
    a = np.maximum(z, 0) if c["pre_relu"] else z
    if gy is None:
        y = conv2d_ref(np.abs(a), np.abs(np.asarray(w, np.float64)), None if b is None else np.abs(b), *geo)
        return {"y": y + (0.0 if res is None else np.abs(res))}
    g = np.abs(np.asarray(gy, np.float64) * ((np.asarray(y_post) > 0) if y_post is not None else 1.0))
    mask = (z > 0) if c["pre_relu"] else 1.0
    ta, tw, tb = conv2d_backward_ref(g, np.abs(a), np.abs(np.asarray(w, np.float64)), *geo)
    gz = np.abs(ga) * mask
    return {"grad_a": ta, "grad_x": ta * mask * (1.0 if s is None else np.abs(_chan(s))), "grad_w": tw,
            "grad_b": tb, "grad_scale": (gz * np.abs(x)).sum(axis=(0, 2, 3)), "grad_shift": gz.sum(axis=(0, 2, 3))}


@settings(max_examples=60, deadline=None)
@given(cases())
def test_conv2d_fused_matches_reference(c):
    _check_case(c)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_fused_every_option(layout, dtype):
    base = dict(N=2, C=4, K=6, H=5, W=6, kh=3, kw=3, groups=2, stride=1, padding=1, dilation=1, layout=layout,
                dtype=dtype, seed=3)
    for bias in (False, True):
        for scale in (False, True):
            for shift in (False, True):
                for pre_relu in (False, True):
                    for epi in ("none", "stats", "res", "relu", "res_relu"):
                        _check_case(dict(base, bias=bias, scale=scale, shift=shift, pre_relu=pre_relu, epi=epi))


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_nhwc_1x1_forward_across_row_blocks(data):
    """The NHWC 1x1 forward pass (forward_1x1_nhwc: units of rows cut into blocks of about 192 KiB
    of x and y rows, 48 KiB for the fused input gradient) on shapes whose units hold several blocks
    and a remainder, at stride 1 and 2, plain, with statistics (continued across a unit's blocks)
    and with a prologue or a residual and ReLU: against the float64 reference at every ISA level,
    and bitwise the same at 1 and 2 threads."""
    C, K = data.draw(st.integers(32, 96)), data.draw(st.integers(32, 160))
    c = dict(N=data.draw(st.integers(1, 3)), C=C, K=K, H=data.draw(st.integers(9, 41)),
             W=data.draw(st.integers(9, 41)), kh=1, kw=1, groups=1, stride=data.draw(st.integers(1, 2)), padding=0,
             dilation=1, layout="NHWC", dtype=np.float32, seed=data.draw(st.integers(0, 2**16)),
             bias=data.draw(st.booleans()), scale=data.draw(st.booleans()), shift=False,
             pre_relu=data.draw(st.booleans()), epi=data.draw(st.sampled_from(("none", "stats", "res_relu"))))
    c["shift"] = c["scale"]
    for level in ISA_LEVELS:
        with isa_level(level):
            _check_case(c)
            _, x, w, b, s, t = _arrays(c)
            outs = []
            for n in (1, 2):
                with num_threads(n):
                    outs.append(F.conv2d_fused(_to("NHWC", x), w, b, pre_scale=s, pre_shift=t, pre_relu=c["pre_relu"],
                                               stats=True, **_geom_kw(c)))
            for a, r, name in zip(outs[0], outs[1], ("y", "mean", "var")):
                assert_bitwise(a, r, name)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [dict(N=20, C=128, K=100, H=4, W=4), dict(N=3, C=400, K=16, H=14, W=14)],
                         ids=["tiles", "blocks"])
def test_conv2d_fused_whole_batch_path(layout, shape):
    """Small planes with long reductions run whole-batch GEMMs (conv_gemm.cpp, batched_forward):
    several row and column tiles, and (C = 400 at 14x14) more than one block of images."""
    base = dict(kh=3, kw=3, groups=1, stride=1, padding=1, dilation=1, layout=layout, dtype=np.float32, seed=5,
                bias=True, scale=True, shift=True, pre_relu=True, **shape)
    for epi in ("stats", "res_relu"):
        _check_case(dict(base, epi=epi))


def test_reference_path_is_the_unfused_composition(monkeypatch):
    """Without the compiled kernel the fused op is bitwise the composition of existing ops."""
    monkeypatch.delattr(_core, "conv2d_fused", raising=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    s, t = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y, mean, var = F.conv2d_fused(x, w, padding=1, pre_scale=s, pre_shift=t, pre_relu=True, stats=True)
    assert F.last_kernel == "reference"
    a = np.empty_like(x)
    _core.norm_apply(x, a, None, 2, 4, 36, False, False, np.zeros(4), np.ones(4), s, t, True)
    assert_bitwise(y, cnnkit.conv2d(a, w, padding=1), "y")
    m2, v2 = _core.norm_stats(y, 2, 5, 36, False, False)
    assert_bitwise(mean, m2, "mean")
    assert_bitwise(var, v2, "var")


def test_bad_input():
    x = np.zeros((1, 2, 4, 4), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="stats"):
        F.conv2d_fused(x, w, stats=True, post_relu=True)
    with pytest.raises(ValueError, match="pre_scale"):
        F.conv2d_fused(x, w, pre_scale=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="pre_shift"):
        F.conv2d_fused(x, w, pre_shift=np.ones(2, np.float64))
    with pytest.raises(ValueError, match="residual"):
        F.conv2d_fused(x, w, residual=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="pre_relu"):
        F.conv2d_fused(x, w, pre_relu=1)
    with pytest.raises(ValueError, match="y:"):
        F.conv2d_fused_backward(np.zeros((1, 3, 2, 2), np.float32), x, w, post_relu=True)
    with pytest.raises(ValueError, match="needs"):
        F.conv2d_fused_backward(np.zeros((1, 3, 2, 2), np.float32), x, w, needs=("gamma",))


# ---- dispatch to the compiled kernel ----------------------------------------------------------

class FakeKernel:
    """Stands in for _core.conv2d_fused: float64 NumPy, the documented argument order; raises
    ValueError (unsupported) for dilation > 1 (as a real kernel may for some combination)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, weight, out, geom, bias, pre_scale, pre_shift, pre_relu, residual, post_relu,
                 stats_sum, stats_sumsq):
        assert isinstance(geom, _core.ConvGeom)
        assert x.dtype == weight.dtype == out.dtype == np.float32 and x.flags.c_contiguous
        self.calls.append(dict(pre_relu=pre_relu, post_relu=post_relu, stats=stats_sum is not None,
                               residual=residual is not None))
        if geom.dh != 1 or geom.dw != 1:
            raise ValueError("conv2d_fused: dilation is not supported")
        nhwc = bool(geom.nhwc)
        xn = to_nchw(x) if nhwc else x
        padding = (geom.pt, geom.pl)  # symmetric in these tests
        y, _, _, _ = fused_ref(xn, weight, bias, (geom.sh, geom.sw), padding, (1, 1), geom.G, pre_scale, pre_shift,
                               pre_relu, None if residual is None else (to_nchw(residual) if nhwc else residual),
                               post_relu)
        out[...] = to_nhwc(y) if nhwc else y
        if stats_sum is not None:  # the binding's scheme: sums about the channel's first value
            d = y - y[0, :, 0, 0][None, :, None, None]
            stats_sum[...] = d.sum(axis=(0, 2, 3))
            stats_sumsq[...] = (d * d).sum(axis=(0, 2, 3))
        return "conv2d_fused_fake__test"


@pytest.fixture
def fake(monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(_core, "conv2d_fused", k, raising=False)
    return k


def test_geom_fields_for_fake():
    g = F._Geom((1, 2, 5, 5), (3, 2, 3, 3), 2, 1, 1, 1, "NCHW", np.float32).core()
    for name in ("sh", "sw", "dh", "dw", "pt", "pl", "G", "nhwc"):
        assert hasattr(g, name), name


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dispatch_to_compiled_kernel(fake, layout):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    s, t = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    xl = _to(layout, x)
    y, mean, var = F.conv2d_fused(xl, w, padding=1, groups=2, layout=layout, pre_scale=s, pre_shift=t,
                                  pre_relu=True, stats=True)
    assert F.last_kernel == "conv2d_fused_fake__test" and len(fake.calls) == 1
    assert fake.calls[0] == dict(pre_relu=True, post_relu=False, stats=True, residual=False)
    y_ref, _, m_ref, v_ref = fused_ref(x, w, None, 1, 1, 1, 2, s, t, True, None, False)
    assert_close(_from(layout, y), y_ref, np.float32, length=18, what="y")
    assert_close(mean, m_ref, np.float32, length=18, what="mean")
    assert_close(var, v_ref, np.float32, length=18, what="var")
    # unsupported (the fake rejects dilation): the reference path runs, same numbers
    y2 = F.conv2d_fused(xl, w, padding=2, dilation=2, groups=2, layout=layout, pre_scale=s, pre_shift=t)
    assert F.last_kernel == "reference" and len(fake.calls) == 2
    y2_ref, _, _, _ = fused_ref(x, w, None, 1, 2, 2, 2, s, t, False, None, False)
    assert_close(_from(layout, y2), y2_ref, np.float32, length=18, what="fallback y")
    # float64 never calls the compiled kernel
    F.conv2d_fused(xl.astype(np.float64), w.astype(np.float64), padding=1, groups=2, layout=layout)
    assert F.last_kernel == "reference" and len(fake.calls) == 2


@pytest.mark.parametrize("nhwc", [False, True])
def test_stats_from_shifted_sums(nhwc):
    # an offset of 1e3 over a spread of 1: the sums about each channel's first value keep the variance
    rng = np.random.default_rng(2)
    N, S, C = 5, 10, 3
    y64 = 1e3 + rng.standard_normal((N, S, C))
    y = (y64 if nhwc else y64.transpose(0, 2, 1)).astype(np.float32)
    yc = (y if nhwc else y.transpose(0, 2, 1)).reshape(-1, C).astype(np.float64)
    d = yc - yc[0]
    mean, var = _core.norm_finish_sums(np.ascontiguousarray(y), d.sum(0), (d * d).sum(0), N, C, S, nhwc)
    assert_close(mean, yc.mean(0), np.float64, length=N * S)
    assert_close(var, yc.var(0), np.float64, length=N * S)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layer_backward_refuses_a_gradient_overlapping_its_buffer(layout):
    """The layers call the compiled backward passes directly (no public checks): a gradient that
    is the layer's own input-gradient buffer (from its previous backward) is still refused, as
    cnnkit.ops.conv2d_backward refuses it, never read while it is written."""
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(4, 4, 1, layout=layout, rng=rng)
    x = rng.standard_normal((2, 4, 3, 3) if layout == "NCHW" else (2, 3, 3, 4)).astype(np.float32)
    conv(x)
    g1 = conv.backward(rng.standard_normal(x.shape).astype(np.float32))
    with pytest.raises(ValueError, match="overlapping"):
        conv.backward(g1)


def test_norm_output_registry_stays_bounded(monkeypatch):
    """The registry of which batch norm wrote which buffer (weak references by buffer id) drops
    dead norms, then the oldest entries, past its bound; the norm that wrote a buffer last is
    still found, and a dropped or dead entry only means no fusion (None), never a wrong norm."""
    from cnnkit.nn import layers as L
    monkeypatch.setattr(L, "_NORM_OUTPUTS", {})
    monkeypatch.setattr(L, "_NORM_OUTPUTS_PRUNE", 8)
    rng = np.random.default_rng(4)
    keep = []
    for i in range(30):
        bn = nn.BatchNorm2d(3, activation="relu", layout="NHWC")
        y = bn(rng.standard_normal((2, 4, 4, 3)).astype(np.float32))
        assert L._producing_norm(y) is bn
        if i % 3 == 0:
            keep.append((bn, y))  # the others die, with their buffers
        assert len(L._NORM_OUTPUTS) <= 8
    bn, y = keep[-1]
    assert L._producing_norm(y) is bn
    for bn, y in keep[:-1]:
        assert L._producing_norm(y) in (bn, None)


def _f64(draw, n, lo=-1e3, hi=1e3):
    return np.array(draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)), np.float64)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_norm_finishing_steps_match_numpy_bitwise(data):
    """The three per-channel finishing steps (norm_finish_sums, norm_prologue_coefs,
    norm_backward_coefs) give the bits of the NumPy expressions they replace."""
    C = data.draw(st.integers(1, 40), label="C")
    N, S = data.draw(st.integers(1, 4), label="N"), data.draw(st.integers(1, 9), label="S")
    nhwc = data.draw(st.booleans(), label="nhwc")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y = rng.standard_normal((N, S, C) if nhwc else (N, C, S)).astype(np.float32) * 5
    s1 = _f64(data.draw, C)
    s2 = np.abs(_f64(data.draw, C)) * 50
    s2[: C // 3] = s1[: C // 3] ** 2 / (N * S)  # variance 0, or a rounding below it
    shift = (y[0, 0, :] if nhwc else y[0, :, 0]).astype(np.float64)
    count = N * S
    mean_ref = shift + s1 / count
    var_ref = np.maximum(0.0, (s2 - s1 * s1 / count) / count)
    mean, var = _core.norm_finish_sums(y, s1, s2, N, C, S, nhwc)
    assert_bitwise(mean, mean_ref)
    assert_bitwise(var, var_ref)
    invstd = 1.0 / np.sqrt(np.abs(_f64(data.draw, C, 0.0, 1e2)) + 1e-5)
    m = _f64(data.draw, C, -20.0, 20.0)
    affine = data.draw(st.booleans(), label="affine")
    w = rng.standard_normal(C).astype(np.float32) if affine else None
    b = rng.standard_normal(C).astype(np.float32) if affine else None
    limit = data.draw(st.sampled_from([1.0, 16.0, 1e9]), label="limit")
    got = _core.norm_prologue_coefs(m, invstd, w, b, limit)
    if float(np.max(np.abs(m) * invstd)) <= limit:
        scale = (invstd * (1.0 if w is None else w.astype(np.float64))).astype(np.float32)
        shift_ref = ((0.0 if b is None else b.astype(np.float64)) - m * scale).astype(np.float32)
        assert got is not None and got.dtype == np.float32
        assert_bitwise(got, np.concatenate([scale, shift_ref]))
    else:
        assert got is None
    w64 = np.ones(C) if w is None else w.astype(np.float64)
    A = w64 * invstd
    for wa in (w, w64):
        got3 = _core.norm_backward_coefs(invstd, wa, float(count), s1, s2)
        for a, r in zip(got3, (A, A * s1 / count, A * invstd * invstd * s2 / count)):
            assert_bitwise(a, r)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("limit", [-1.0, 0.5, 16.0])
def test_norm_train_finish_is_the_three_steps(affine, limit):
    """norm_train_finish gives the bits of norm_invstd, norm_update_running and (limit >= 0)
    norm_prologue_coefs called one after the other; a bad variance raises before the running
    statistics are touched."""
    rng = np.random.default_rng(5)
    C = 37
    mean, var = rng.standard_normal(C) * 3, np.abs(rng.standard_normal(C)) * 2
    w = rng.standard_normal(C).astype(np.float32) if affine else None
    b = rng.standard_normal(C).astype(np.float32) if affine else None
    rm0, rv0 = rng.standard_normal(C).astype(np.float32), np.abs(rng.standard_normal(C)).astype(np.float32)
    rm, rv, rm2, rv2 = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
    inv, pre = _core.norm_train_finish(mean, var, 1e-5, rm, rv, 0.1, 1.25, w, b, limit)
    inv_ref = _core.norm_invstd(var, 1e-5)
    _core.norm_update_running(rm2, rv2, mean, var, 0.1, 1.25)
    assert_bitwise(inv, inv_ref)
    assert_bitwise(rm, rm2)
    assert_bitwise(rv, rv2)
    ref = _core.norm_prologue_coefs(mean, inv_ref, w, b, limit) if limit >= 0 else None
    if ref is None:
        assert pre is None
    else:
        assert_bitwise(pre, ref)
    # a negative batch variance (no statistics pass gives one: a misuse) raises, named as the
    # argument it is, before the running statistics are touched
    bad = var.copy()
    bad[3] = -1.0
    with pytest.raises(ValueError, match=r"^var: expected values >= 0, got -1"):
        _core.norm_train_finish(mean, bad, 1e-5, rm, rv, 0.1, 1.25, w, b, limit)
    assert_bitwise(rm, rm2)
    assert_bitwise(rv, rv2)
    # a NaN one (a NaN or infinite input) propagates, as torch's batch norm: NaN invstd and running
    # statistics at that channel, the others as before, and no prologue (the output is written)
    nan_var = var.copy()
    nan_var[3] = np.nan
    inv, pre = _core.norm_train_finish(mean, nan_var, 1e-5, rm, rv, 0.1, 1.25, w, b, limit)
    ref_inv = _core.norm_invstd(nan_var, 1e-5, True)
    assert_bitwise(inv, ref_inv)
    assert np.isnan(inv[3]) and not np.isnan(np.delete(inv, 3)).any()
    assert np.isnan(rv[3]) and not np.isnan(np.delete(rv, 3)).any()
    assert pre is None
    with pytest.raises(ValueError, match=r"^running_var: expected finite values >= 0, got nan at index 3"):
        _core.norm_invstd(nan_var, 1e-5)  # (a running variance: eval mode refuses it)


def test_norm_finishing_steps_nan_and_bad_input():
    C = 4
    inv, m = np.ones(C), np.zeros(C)
    m[2] = np.nan  # a NaN mean declines the prologue, as numpy.max propagates it
    assert _core.norm_prologue_coefs(m, inv, None, None, 16.0) is None
    y = np.zeros((1, 1, 1, C), np.float32)
    s2 = np.array([np.nan, 0.0, -1.0, 1.0])
    _, var = _core.norm_finish_sums(y, np.zeros(C), s2, 1, C, 1, True)
    assert np.isnan(var[0]) and list(var[1:]) == [0.0, 0.0, 1.0]
    assert not np.signbit(var[2])
    with pytest.raises(ValueError, match="weight"):
        _core.norm_prologue_coefs(np.zeros(C), inv, np.ones(C + 1, np.float32), None, 16.0)
    with pytest.raises(TypeError, match="weight"):
        _core.norm_backward_coefs(inv, [1.0] * C, 2.0, inv, inv)
    with pytest.raises(ValueError, match="y"):
        _core.norm_finish_sums(np.zeros(C - 1, np.float32), inv, inv, 1, C, 1, True)


# ---- networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_nan_input_propagates_fused_and_unfused_as_in_torch(layout):
    """A NaN in the input of Conv2d -> BatchNorm2d(relu) -> Conv2d in training mode gives NaN
    where torch gives it, fused and unfused alike: the batch statistics, the output, the running
    statistics and the gradients. (Before, the fused path raised an error naming the batch
    variance "running_var", and the unfused one turned the NaN variance into 0 and the NaN outputs
    into zeros through the norm's ReLU: a silent wrong answer.)"""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    got = []
    for fuse in (True, False):
        m = nn.Sequential(nn.Conv2d(4, 8, 3, 1, 1, layout=layout, rng=np.random.default_rng(0)),
                          nn.BatchNorm2d(8, activation="relu", layout=layout),
                          nn.Conv2d(8, 8, 1, layout=layout, rng=np.random.default_rng(1)))
        with nn.fusion(fuse):
            y = m(_to(layout, x))
            gx = m.backward(np.ones_like(y), input_grad=True)
        bn = m.layers[1]
        got.append([_from(layout, y), bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy(),
                    _from(layout, gx), m.layers[0].grads["weight"].copy(), bn.grads["weight"].copy()])
    for a, b in zip(*got):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    y, rm, rv = got[0][:3]
    assert np.isnan(y).all() and np.isnan(rm).all() and np.isnan(rv).all()  # every channel saw the NaN
    try:
        import torch
    except ImportError:
        return
    t = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, 1, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Conv2d(8, 8, 1))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = t(xt)
    yt.backward(torch.ones_like(yt))
    ref = [yt.detach().numpy(), t[1].running_mean.numpy(), t[1].running_var.numpy(), xt.grad.numpy(),
           t[0].weight.grad.numpy(), t[1].weight.grad.numpy()]
    for a, r in zip(got[0], ref):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))


def _train(model, xs, labels, fuse, *, eval_after=False, lr=0.05):
    loss_fn = nn.CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=lr, momentum=0.9)
    hist = []
    with nn.fusion(fuse):
        for x, lab in zip(xs, labels):
            loss = loss_fn(model.forward(x), lab)
            gx = model.backward(loss_fn.backward(), input_grad=True)
            hist.append((loss, [g.copy() for g in model.gradients()], gx.copy(),
                         {k: v.copy() for k, v in model.state_dict().items() if "running" in k}))
            opt.step(model.gradients())
        if eval_after:
            model.eval()
            loss = loss_fn(model.forward(xs[0]), labels[0])
            gx = model.backward(loss_fn.backward(), input_grad=True)
            hist.append((loss, [g.copy() for g in model.gradients()], gx.copy(), {}))
    return hist


def _assert_same_training(h_f, h_u):
    for k, ((lf, gf, xf, sf), (lu, gu, xu, su)) in enumerate(zip(h_f, h_u), start=1):
        assert abs(lf - lu) <= LOSS_RTOL * k * abs(lu), f"step {k}: loss {lf} vs {lu}"
        G = max(float(np.abs(g).max()) for g in gu + [xu])
        for i, (a, b) in enumerate(zip(gf + [xf], gu + [xu])):
            err = float(np.abs(a - b).max())
            bound = GRAD_RTOL * k * float(np.abs(b).max()) + GRAD_ATOL * G
            assert err <= bound, f"step {k}, gradient {i} {b.shape}: error {err:.3g} > {bound:.3g}"
        for name in su:
            err = np.abs(sf[name] - su[name])
            assert np.all(err <= STAT_TOL * k * (1 + np.abs(su[name]))), f"step {k}: {name}"


def _data(shape, steps, classes, seed=5):
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal(shape).astype(np.float32) for _ in range(steps)],
            [rng.integers(0, classes, shape[0]) for _ in range(steps)])


def _chain(layout, rng):
    C = (3, 8, 8, 12)
    return nn.Sequential(
        nn.Conv2d(C[0], C[1], 3, padding=1, bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(C[1], activation="relu", layout=layout),
        nn.Conv2d(C[1], C[2], 3, 2, 1, groups=2, layout=layout, rng=rng),
        nn.BatchNorm2d(C[2], layout=layout),  # no ReLU
        nn.Conv2d(C[2], C[2], 3, 1, 1, groups=C[2], bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(C[2], activation="relu", momentum=None, layout=layout),
        nn.Conv2d(C[2], C[3], 1, layout=layout, rng=rng),
        nn.BatchNorm2d(C[3], activation="relu", layout=layout),
        nn.GlobalAvgPool2d(layout=layout), nn.Linear(C[3], 4, rng=rng))


def _shape(layout, n, c, h):
    return (n, c, h, h) if layout == "NCHW" else (n, h, h, c)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sequential_chain_fused_matches_unfused(layout):
    xs, ls = _data(_shape(layout, 4, 3, 8), 3, 4)
    h_f = _train(_chain(layout, np.random.default_rng(0)), xs, ls, True, eval_after=True)
    h_u = _train(_chain(layout, np.random.default_rng(0)), xs, ls, False, eval_after=True)
    _assert_same_training(h_f, h_u)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_residual_blocks_fused_match_unfused(block):
    def make():
        rng = np.random.default_rng(1)
        if block == "basic":
            blocks = [nn.ResidualBlock(8, 8, rng=rng), nn.ResidualBlock(8, 16, 2, groups=2, rng=rng)]
        else:
            blocks = [nn.BottleneckBlock(8, 8, 8, groups=4, rng=rng), nn.BottleneckBlock(8, 16, 8, 2, rng=rng)]
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(8, activation="relu"),
                             *blocks, nn.GlobalAvgPool2d(), nn.Linear(16, 3, rng=rng))
    xs, ls = _data((4, 3, 8, 8), 3, 3)
    _assert_same_training(_train(make(), xs, ls, True, eval_after=True), _train(make(), xs, ls, False, eval_after=True))


@pytest.mark.parametrize("name", ["resnext_small", "mobilenet_small", "resnet_small"])
def test_models_fused_match_unfused(name):
    build = getattr(models, name)
    kw = dict(widths=(8, 16, 32)) if name != "mobilenet_small" else dict(widths=(8, 16, 16, 32))
    if name == "resnext_small":
        kw["groups"] = 4
    xs, ls = _data((4, 3, 8, 8), 3, 5)
    h_f = _train(build(3, 5, seed=0, **kw), xs, ls, True)
    h_u = _train(build(3, 5, seed=0, **kw), xs, ls, False)
    _assert_same_training(h_f, h_u)


def test_models_with_compiled_kernel_match_unfused(fake):
    """With a compiled kernel the normalized tensors are not materialised: the backward
    recomputes the convolution inputs and the ReLU masks; the numbers stay the same."""
    kw = dict(widths=(8, 16, 16), groups=4)
    xs, ls = _data((4, 3, 8, 8), 2, 5)
    h_f = _train(models.resnext_small(3, 5, seed=0, **kw), xs, ls, True, eval_after=True)
    assert fake.calls and any(c["pre_relu"] for c in fake.calls) and any(c["stats"] for c in fake.calls)
    h_u = _train(models.resnext_small(3, 5, seed=0, **kw), xs, ls, False, eval_after=True)
    _assert_same_training(h_f, h_u)


def test_fusion_off_is_the_layer_by_layer_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("conv2d_fused called with fusion off")

    xs, ls = _data((4, 3, 8, 8), 2, 5)
    m1 = models.resnext_small(3, 5, seed=0, widths=(8, 16, 16), groups=4)
    m2 = models.resnext_small(3, 5, seed=0, widths=(8, 16, 16), groups=4)
    monkeypatch.setattr(F, "conv2d_fused", boom)
    monkeypatch.setattr(F, "_compiled_forward", boom)
    h1 = _train(m1, xs, ls, False)
    m2.set_fusion(False)
    assert not m2.fuse and not m2[2].fuse
    h2 = _train(m2, xs, ls, True)  # fusion on globally, off on the model
    # the layer-by-layer path by hand
    m3 = models.resnext_small(3, 5, seed=0, widths=(8, 16, 16), groups=4)
    x = xs[0]
    with nn.fusion(False):
        for layer in m3.layers:
            x = layer(x)
    loss_fn = nn.CrossEntropyLoss()
    assert loss_fn(x, ls[0]) == h1[0][0]
    for (l1, g1, x1, s1), (l2, g2, x2, s2) in zip(h1, h2):
        assert l1 == l2
        for a, b in zip(g1 + [x1], g2 + [x2]):
            assert_bitwise(a, b, "gradient")
        for k in s1:
            assert_bitwise(s1[k], s2[k], k)


def test_context_manager_restores():
    assert nn.fusion_enabled()
    with pytest.raises(RuntimeError):
        with nn.fusion(False):
            assert not nn.fusion_enabled()
            raise RuntimeError
    assert nn.fusion_enabled()
    with pytest.raises(TypeError, match="enabled"):
        with nn.fusion("no"):  # type: ignore[arg-type]
            pass


def test_captures_until_and_inject_with_fusion():
    """A captured batch norm is materialised (its output recorded); until= at a norm returns its
    output; inject= at a norm whose output is not materialised gives the unfused gradients."""
    xs, _ = _data((4, 3, 8, 8), 1, 4)
    x = xs[0]
    results = {}
    for fuse in (True, False):
        m = _chain("NCHW", np.random.default_rng(0))
        with nn.fusion(fuse):
            cap = m.capture("1")
            cap6 = m.capture("6")  # a convolution whose input norm (5) is not materialised
            out = m.forward(x)
            if fuse:
                assert m[6]._pre is not None and m[2]._pre is None
            m.backward(np.ones_like(out))
            g_cap = [g.copy() for g in m.gradients()]
            m.release()
            h = m.forward(x, until="3").copy()
            m.forward(x)
            inj = np.random.default_rng(3).standard_normal((4, 8, 8, 8)).astype(np.float32)
            gx = m.backward(None, input_grad=False, inject={"5": inj[:, :, :4, :4].copy()})
            g_inj = [g.copy() for g in m.gradients()]
            m.forward(x)
            m.backward(np.ones_like(out), until="5")
            grads_until = [g.copy() for g in m.gradients()]
        results[fuse] = (cap.output.copy(), cap.grad.copy(), g_cap, h, g_inj, grads_until, gx,
                         cap6.output.copy(), cap6.grad.copy())
    f, u = results[True], results[False]
    assert_bitwise(f[0], u[0], "captured output")  # materialised with the epilogue's statistics
    assert_close(f[1], u[1], np.float32, length=100, what="captured grad")
    assert_close(f[3], u[3], np.float32, length=100, what="until output")
    assert_close(f[7], u[7], np.float32, length=100, what="captured conv output")
    assert_close(f[8], u[8], np.float32, length=100, what="captured conv grad")
    for gf, gu in zip(f[2] + f[4] + f[5], u[2] + u[4] + u[5]):
        G = max(float(np.abs(g).max()) for g in u[2])
        assert np.abs(gf - gu).max() <= GRAD_RTOL * np.abs(gu).max() + GRAD_ATOL * G


def test_guided_backprop_eval_fused():
    xs, _ = _data((2, 3, 8, 8), 1, 4)
    grads = {}
    for fuse in (True, False):
        m = _chain("NCHW", np.random.default_rng(0))
        with nn.fusion(fuse):
            m.forward(xs[0])  # running statistics
            m.eval().set_guided_backprop(True).set_param_grads(False)
            out = m.forward(xs[0])
            grads[fuse] = m.backward(np.ones_like(out), input_grad=True).copy()
    assert_close(grads[True], grads[False], np.float32, length=1000, what="guided input gradient")


def test_large_mean_declines_the_prologue():
    """A channel whose |mean|/std is huge is normalized unfused (scale*x + shift would cancel)."""
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4, activation="relu"),
                      nn.Conv2d(4, 4, 3, padding=1, rng=rng))
    m[0].params["bias"][...] = 1e4
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = m.forward(x).copy()
    assert m[1]._y is not None and m[2]._pre is None
    with nn.fusion(False):
        assert_bitwise(y, m.forward(x), "output")


# ---- which batch norms fuse: every configuration agrees with the unfused path ----------------

def _ghost(c):
    from cnnkit.experiments.bn_small_batch import _GhostBatchNorm2d
    return _GhostBatchNorm2d(c, 2)  # batches of 4 below: two chunks, each with its own statistics


_BN_CONFIGS = {
    "relu": lambda c: nn.BatchNorm2d(c, activation="relu"),
    "no_activation": lambda c: nn.BatchNorm2d(c),
    "momentum_none": lambda c: nn.BatchNorm2d(c, momentum=None, activation="relu"),
    "affine_off": lambda c: nn.BatchNorm2d(c, affine=False, activation="relu"),
    "affine_off_no_activation": lambda c: nn.BatchNorm2d(c, affine=False),
    "eps_large": lambda c: nn.BatchNorm2d(c, eps=0.5, momentum=0.9, activation="relu"),
    "ghost": _ghost,
}


def _pairs(norm, rng):
    """conv -> norm -> conv -> norm: both the epilogue (statistics) and the prologue fusion."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng), norm(8),
                         nn.Conv2d(8, 6, 3, padding=1, rng=rng), norm(6),
                         nn.GlobalAvgPool2d(), nn.Linear(6, 4, rng=rng))


@pytest.fixture
def spy(monkeypatch):
    """The fused forwards the layers ask for: calls of conv2d_fused, and the layers' direct runs
    of its compiled kernel (``_compiled_forward``; a run that declines is not one), each once."""
    calls = []
    real, real_compiled = F.conv2d_fused, F._compiled_forward
    inside = [0]

    def record(*a, **k):
        calls.append({"stats": k.get("stats", False), "pre": k.get("pre_scale") is not None})
        inside[0] += 1
        try:
            return real(*a, **k)
        finally:
            inside[0] -= 1

    def record_compiled(x, w, y, g, b, sc, sh, pre_relu, res, post_relu, stats):
        r = real_compiled(x, w, y, g, b, sc, sh, pre_relu, res, post_relu, stats)
        if r is not None and not inside[0]:
            calls.append({"stats": stats, "pre": sc is not None})
        return r

    monkeypatch.setattr(F, "conv2d_fused", record)
    monkeypatch.setattr(F, "_compiled_forward", record_compiled)
    return calls


@pytest.mark.parametrize("config", list(_BN_CONFIGS))
def test_every_batch_norm_configuration_fused_matches_unfused(config, spy):
    """Training steps then an eval step: fused and unfused agree for every batch norm
    configuration; ghost batch norm (per-chunk statistics) is never fused, so it is bitwise the
    unfused path (it failed with a (C,) statistic where (chunks, C) was expected)."""
    xs, ls = _data((4, 3, 8, 8), 3, 4)
    h_f = _train(_pairs(_BN_CONFIGS[config], np.random.default_rng(0)), xs, ls, True, eval_after=True)
    fused_calls = list(spy)
    h_u = _train(_pairs(_BN_CONFIGS[config], np.random.default_rng(0)), xs, ls, False, eval_after=True)
    assert len(spy) == len(fused_calls)  # nothing fused with fusion off
    _assert_same_training(h_f, h_u)
    if config == "ghost":
        assert not fused_calls
        for (lf, gf, xf, sf), (lu, gu, xu, su) in zip(h_f, h_u):
            assert lf == lu
            for a, b in zip(gf + [xf] + [sf[k] for k in sorted(sf)], gu + [xu] + [su[k] for k in sorted(su)]):
                assert_bitwise(a, b, "ghost")
    else:
        assert any(c["stats"] for c in fused_calls) and any(c["pre"] for c in fused_calls)


def test_ghost_batch_norm_beside_plain_ones(spy):
    """A ghost norm declines both halves (no statistics from its conv, no prologue into the next
    conv) while a plain pair in the same chain still fuses."""
    def make():
        rng = np.random.default_rng(2)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng), _ghost(8),
                             nn.Conv2d(8, 6, 3, padding=1, rng=rng), nn.BatchNorm2d(6, activation="relu"),
                             nn.GlobalAvgPool2d(), nn.Linear(6, 4, rng=rng))
    xs, ls = _data((4, 3, 8, 8), 2, 4)
    h_f = _train(make(), xs, ls, True, eval_after=True)
    train_calls = spy[:2]  # the two training steps: only the plain pair, statistics, no prologue
    assert train_calls == [{"stats": True, "pre": False}] * 2
    _assert_same_training(h_f, _train(make(), xs, ls, False, eval_after=True))


def test_subclass_overriding_forward_is_not_fused(spy):
    """A norm subclass with its own forward/backward (here: a scaled output) runs on its own."""
    class Scaled(nn.BatchNorm2d):
        def forward(self, x, residual=None):
            return super().forward(x, residual) * np.float32(2)

        def backward(self, grad, input_grad=True):
            return super().backward(grad * np.float32(2), input_grad)

    xs, ls = _data((4, 3, 8, 8), 2, 4)
    h_f = _train(_pairs(Scaled, np.random.default_rng(0)), xs, ls, True, eval_after=True)
    assert not spy
    _assert_same_training(h_f, _train(_pairs(Scaled, np.random.default_rng(0)), xs, ls, False, eval_after=True))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_instance_wrapped_modules_in_residual_blocks(block):
    """A profiler wraps every module's forward/backward on the instance: those layers run on
    their own (a wrapped last norm still takes the shortcut's residual) and the block gives the
    unfused numbers (the wrapped last norm lost the residual before the fix: no residual gradient)."""
    from cnnkit import models
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    out = {}
    for fuse in (True, False):
        model = models.resnext_small(in_channels=3, num_classes=5, norm="batch", layout="NHWC", seed=0)
        for name, m in model.named_modules():
            if name and (block == "basic" or name.endswith("bn3")):
                def fwd(*a, _f=m.forward, **k):
                    return _f(*a, **k)

                def bwd(*a, _f=m.backward, **k):
                    return _f(*a, **k)
                m.forward, m.backward = fwd, bwd
        with nn.fusion(fuse):
            y = model.forward(x)
            gx = model.backward(np.ones_like(y), input_grad=True)
        out[fuse] = [y.copy(), gx.copy()] + [g.copy() for g in model.gradients()]
    for a, b in zip(out[True], out[False]):
        assert_close(a, b, np.float32, length=1000, what=f"wrapped {block}")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_guided_backprop_fused_matches_unfused(mode):
    xs, _ = _data((4, 3, 8, 8), 1, 4)
    grads = {}
    for fuse in (True, False):
        m = _pairs(_BN_CONFIGS["relu"], np.random.default_rng(0))
        with nn.fusion(fuse):
            m.forward(xs[0])
            if mode == "eval":
                m.eval()
            m.set_guided_backprop(True)
            out = m.forward(xs[0])
            gx = m.backward(np.ones_like(out), input_grad=True)
            grads[fuse] = [gx.copy()] + [g.copy() for g in m.gradients()]
    for a, b in zip(grads[True], grads[False]):
        assert_close(a, b, np.float32, length=1000, what=f"guided {mode} gradient")


def test_float64_input_same_error_fused_and_unfused():
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8))  # float64: layers take float32
    errors = {}
    for fuse in (True, False):
        m = _pairs(_BN_CONFIGS["relu"], np.random.default_rng(0))
        with nn.fusion(fuse), pytest.raises(TypeError, match="x: expected a float32") as e:
            m.forward(x)
        errors[fuse] = str(e.value)
    assert errors[True] == errors[False]


# ---- the backward fusions: the ReLU mask recomputed from x, the weight gradient with the prologue

def _fma_sign_mask(a, b, x, C, nhwc):
    """The exact sign of a*x + b (a float32 product is exact in float64; one rounding keeps the
    sign), i.e. of the float32 fma the compiled prologue computes."""
    shape = (1, 1, 1, C) if nhwc else (1, C, 1, 1)
    return (a.astype(np.float64).reshape(shape) * x.astype(np.float64) + b.astype(np.float64).reshape(shape)) > 0


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("C,S", [(1, 7), (15, 16), (16, 17), (17, 1), (33, 9)])
def test_norm_backward_mask_affine_is_the_fma_mask(nhwc, C, S, isa):
    """``mask_affine`` masks g by fma(a, x, b) > 0: bitwise the results of the stored mask with
    that sign, at 1 and 2 threads. Ties are planted where a*x + b rounded twice is exactly 0 but
    the fma is not: a kernel that multiplies and adds fails."""
    from conftest import num_threads
    rng = np.random.default_rng(C * 100 + S)
    N = 3
    shape = (N, S, 1, C) if nhwc else (N, C, S, 1)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    a = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    x0 = x[0, 0, 0, :] if nhwc else x[0, :, 0, 0]
    b[: (C + 1) // 2] = -(a * x0)[: (C + 1) // 2]  # float32 product: a*x0 + b is 0 only without fma
    mask = _fma_sign_mask(a, b, x, C, nhwc)
    ties = mask[0, 0, 0, : (C + 1) // 2] if nhwc else mask[0, : (C + 1) // 2, 0, 0]
    two_roundings = (a * x0 + b)[: (C + 1) // 2] > 0  # float32 multiply, then add
    assert np.any(ties != two_roundings) or C < 4, "the planted ties do not separate fma from mul+add"
    y = mask.astype(np.float32)  # a stored mask with the same sign
    mean = rng.standard_normal(C)
    A, B, D = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    ab = np.concatenate([a, b])
    outs = {}
    for t in (1, 2):
        with num_threads(t):
            r_aff = _core.norm_backward_reduce(g, x, None, N, C, S, nhwc, False, mean, ab)
            r_arr = _core.norm_backward_reduce(g, x, y, N, C, S, nhwc, False, mean)
            dx_aff, dx_arr, gr = np.empty_like(x), np.empty_like(x), np.empty_like(x)
            _core.norm_backward_apply(g, x, None, dx_aff, gr, N, C, S, nhwc, False, mean, A, B, D, ab)
            _core.norm_backward_apply(g, x, y, dx_arr, None, N, C, S, nhwc, False, mean, A, B, D)
        for u, v in zip(r_aff, r_arr):
            assert_bitwise(u, v, "sums")
        assert_bitwise(dx_aff, dx_arr, "grad_input")
        assert_bitwise(gr, np.where(mask, g, np.float32(0)), "masked g")
        outs[t] = (r_aff, dx_aff)
    assert_bitwise(outs[1][1], outs[2][1], "threads")
    gm = np.where(mask, g.astype(np.float64), 0)
    axes = (0, 1, 2) if nhwc else (0, 2, 3)
    m = mean.reshape((1, 1, 1, C) if nhwc else (1, C, 1, 1))
    assert_close(outs[1][0][0], gm.sum(axis=axes), np.float32, length=N * S, what="sum g")
    assert_close(outs[1][0][1], (gm * (x - m)).sum(axis=axes), np.float32, length=N * S, what="sum g(x-mean)")
    with pytest.raises(ValueError, match="mask_affine"):
        _core.norm_backward_reduce(g, x, y, N, C, S, nhwc, False, mean, ab)
    with pytest.raises(ValueError, match="mask_affine"):
        _core.norm_backward_reduce(g, x, None, N, C, S, nhwc, False, mean, ab[:-1])


# (N, C, K, H, W, k, stride, pad, groups): the NHWC/NCHW packed paths (1x1 reads x through the
# im2col path when a prologue applies), the whole-batch path of small planes, the NCHW entry on
# small planes (NHWC kernels between transposes), OpenBLAS for a grouped GEMM problem.
_WGRAD_CASES = [(2, 64, 24, 17, 17, 1, 1, 0, 1), (3, 70, 33, 16, 16, 3, 1, 1, 1), (2, 48, 40, 9, 9, 3, 2, 1, 1),
                (20, 128, 100, 4, 4, 3, 1, 1, 1), (5, 96, 64, 6, 6, 1, 1, 0, 1), (2, 6, 9, 7, 7, 3, 1, 1, 3)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", _WGRAD_CASES)
def test_fused_backward_weight_compiled(layout, case, isa):
    """``_core.conv2d_fused_backward_weight``: the weight and bias gradients of
    conv(prologue(x)) against float64, bitwise equal at 1 and 2 threads, with and without the
    ReLU and the affine map, at every ISA level."""
    from conftest import num_threads
    N, C, K, H, W, k, s, p, G = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    g = F._Geom(_to(layout, x).shape, w.shape, s, p, 1, G, layout, np.float32)
    Ho, Wo = g.Ho, g.Wo
    gy = rng.standard_normal((N, K, Ho, Wo)).astype(np.float32)
    for scale, relu in ((True, True), (True, False), (False, True)):
        got = {}
        for t in (1, 2):
            dw, db = np.empty(w.shape, np.float32), np.empty(K, np.float32)
            with num_threads(t):
                name = _core.conv2d_fused_backward_weight(_to(layout, gy), _to(layout, x), dw, db, g.core(),
                                                          sc if scale else None, sh if scale else None, relu)
            got[t] = (dw, db)
        assert "gemm" in name, name
        assert_bitwise(got[1][0], got[2][0], "grad_w threads")
        ref = fused_backward_ref(gy, x, w, s, p, 1, G, sc if scale else None, sh if scale else None, relu, None,
                                 False)
        assert_close(got[1][0], ref[1], np.float32, length=N * Ho * Wo, what=f"grad_w {scale} {relu}")
        assert_close(got[1][1], ref[2], np.float32, length=N * Ho * Wo, what="grad_b")


def test_fused_backward_weight_declines_direct_kernels():
    x = np.ones((2, 16, 6, 6), np.float32)
    w = np.ones((16, 1, 3, 3), np.float32)
    g = F._Geom(x.shape, w.shape, 1, 1, 1, 16, "NCHW", np.float32)
    dw = np.zeros(w.shape, np.float32)
    with pytest.raises(ValueError, match="no fused weight gradient"):
        _core.conv2d_fused_backward_weight(np.ones((2, 16, 6, 6), np.float32), x, dw, None, g.core(),
                                           np.ones(16, np.float32), np.zeros(16, np.float32), True)
    assert not dw.any()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dense_chain_never_materialises_the_normalized_tensor(layout, monkeypatch):
    """Conv -> BN+ReLU -> Conv chains on the compiled kernels: neither the forward nor the backward
    writes the normalized tensor (no prologue pass, no recomputed pre-activation), and training
    matches the unfused path."""
    calls = []

    def no_preactivation(self):
        raise AssertionError("the pre-activation was recomputed")

    def model():
        rng = np.random.default_rng(3)
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False, layout=layout, rng=rng),
            nn.BatchNorm2d(64, activation="relu", layout=layout),
            nn.Conv2d(64, 64, 3, padding=1, bias=False, layout=layout, rng=rng),
            nn.BatchNorm2d(64, activation="relu", layout=layout),
            nn.Conv2d(64, 80, 1, bias=False, layout=layout, rng=rng),
            nn.BatchNorm2d(80, layout=layout),
            nn.Conv2d(80, 16, 1, layout=layout, rng=rng),
            nn.GlobalAvgPool2d(layout=layout), nn.Linear(16, 4, rng=rng))

    xs, ls = _data(_shape(layout, 4, 3, 16), 3, 4)
    real, real_reduce = F._prologue, _core.norm_backward_reduce
    reduces = []
    monkeypatch.setattr(F, "_prologue", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_core, "norm_backward_reduce", lambda *a, **k: reduces.append(1) or real_reduce(*a, **k))
    monkeypatch.setattr(nn.BatchNorm2d, "_preactivation", no_preactivation)
    h_f = _train(model(), xs, ls, True)
    assert not calls, "the prologue's output was materialised"
    # every norm's backward sums came from the consumer's input-gradient epilogue
    assert not reduces, f"{len(reduces)} batch-norm reduction passes ran"
    monkeypatch.undo()
    h_u = _train(model(), xs, ls, False)
    _assert_same_training(h_f, h_u)


# (N, C, K, H, W, k, pad, groups) at stride 1: the adjoint's packed NHWC/NCHW passes, OpenBLAS (a
# short reduction, groups), the whole-batch path of small NHWC planes (1x1).
_DGRAD_CASES = [(2, 24, 64, 17, 17, 1, 0, 1), (3, 70, 33, 16, 16, 3, 1, 1), (2, 16, 20, 9, 9, 3, 1, 1),
                (20, 100, 128, 4, 4, 1, 0, 1), (2, 6, 9, 7, 7, 3, 1, 3), (1, 33, 65, 5, 16, 3, 2, 1),
                # 1x1 with 16-31 channels on a side: at AVX-512 the fused pass takes the rows pass
                # (the packed entry) where the plain forward keeps OpenBLAS
                (2, 16, 32, 9, 13, 1, 0, 1), (2, 32, 16, 9, 13, 1, 0, 1), (3, 31, 17, 7, 11, 1, 0, 1)]


def _fused_input_twice(layout, gy, w, g, x, sc, sh, relu, center):
    """``_core.conv2d_fused_backward_input`` at 1 and 2 threads: (name, [(dx, s1, s2)] * 2) with dx
    in NCHW; asserts the two runs bitwise equal."""
    from conftest import num_threads
    got = []
    for t in (1, 2):
        dx = np.full(_to(layout, x).shape, np.nan, np.float32)
        with num_threads(t):
            name, s1, s2 = _core.conv2d_fused_backward_input(_to(layout, gy), w, dx, g.core(), _to(layout, x), sc,
                                                             sh, relu, center)
        got.append((_from(layout, dx), s1, s2))
    for u, v in zip(*got):
        assert_bitwise(u, v, "threads")
    return name, got[0]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", _DGRAD_CASES)
def test_fused_backward_input_compiled(layout, case, isa):
    """``_core.conv2d_fused_backward_input``: the input gradient masked by the prologue's ReLU
    and the two batch-norm sums, against float64; bitwise equal at 1 and 2 threads, at every
    ISA level."""
    N, C, K, H, W, k, p, G = case
    rng = np.random.default_rng(sum(case) + 7)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    center = rng.standard_normal(C)
    g = F._Geom(_to(layout, x).shape, w.shape, 1, p, 1, G, layout, np.float32)
    gy = rng.standard_normal((N, K, g.Ho, g.Wo)).astype(np.float32)
    Lx = (K // G) * k * k
    for scale, relu in ((True, True), (True, False), (False, True)):
        name, (dx, s1, s2) = _fused_input_twice(layout, gy, w, g, x, sc if scale else None,
                                                sh if scale else None, relu, center)
        assert "gemm" in name, name
        if layout == "NHWC" and k == 1 and min(C, K) >= 16 and isa in ("avx2", "avx512"):
            assert name == f"conv2d_gemm_f32_nhwc_packed__{isa}", name
        ref = fused_backward_ref(gy, x, w, 1, p, 1, G, sc if scale else None, sh if scale else None, relu, None,
                                 False)
        ga = ref[6]
        z = x.astype(np.float64) * (_chan(sc) if scale else 1.0) + (_chan(sh) if scale else 0.0)
        gz = ga * (z > 0) if relu else ga
        assert_close(dx, gz, np.float32, length=Lx, what=f"masked grad {scale} {relu}")
        if relu:
            assert np.all(dx[z <= 0] == 0)
        L = Lx * N * H * W
        assert_close(s1, gz.sum(axis=(0, 2, 3)), np.float32, length=L, what="sum")
        assert_close(s2, (gz * (x - _chan(center))).sum(axis=(0, 2, 3)), np.float32, length=L, what="sumxc")


# (N, C, K, H, k, stride, groups): stride 2 (dense and depthwise), depthwise, grouped (2, 4 and 8
# channels a group), the whole-batch scatter of small planes: the units-of-images path, with
# several images a unit and a shorter last unit (N = 17 at 2 images a unit); channel counts that
# are not a multiple of 8 (each image's sums in rows padded to whole cache lines: GradParts).
# (Depthwise NHWC at stride 1 runs the same kernels a row at a time with the epilogue on each row,
# dw_nhwc.h: the same dx and sums; test_fusion_dw.py checks the sums' order bitwise.)
_UNIT_CASES = [(2, 64, 64, 8, 3, 2, 1), (2, 16, 16, 8, 3, 1, 16), (16, 128, 128, 2, 3, 1, 1),
               (17, 32, 32, 6, 3, 2, 32), (9, 16, 16, 7, 3, 1, 8), (17, 32, 32, 5, 3, 2, 8),
               (3, 64, 64, 6, 3, 1, 8), (20, 24, 24, 4, 3, 1, 24), (17, 12, 12, 6, 3, 2, 12),
               (5, 5, 10, 5, 3, 2, 5), (9, 20, 20, 4, 3, 2, 1)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", _UNIT_CASES)
def test_fused_backward_input_units(layout, case, isa):
    """Problems the adjoint GEMM pass does not take run the plain input gradient per unit of whole
    images with the gradient epilogue on each image (conv_dispatch.cpp, backward_input_units):
    the plain kernel's name and dx bits, the masked gradient and sums against float64, bitwise
    at 1 and 2 threads, at every ISA level."""
    N, C, K, H, k, s, G = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    center = rng.standard_normal(C)
    g = F._Geom(_to(layout, x).shape, w.shape, s, 1, 1, G, layout, np.float32)
    gy = rng.standard_normal((N, K, g.Ho, g.Wo)).astype(np.float32)
    plain = np.empty(_to(layout, x).shape, np.float32)
    _core.conv_backward_input(_to(layout, gy), w, plain, g.core())
    plain_name = _core.conv_algorithm(g.core(), 1)
    for scale, relu in ((True, True), (False, True), (True, False)):
        name, (dx, s1, s2) = _fused_input_twice(layout, gy, w, g, x, sc if scale else None,
                                                sh if scale else None, relu, center)
        assert name == plain_name, (name, plain_name)
        z = x.astype(np.float64) * (_chan(sc) if scale else 1.0) + (_chan(sh) if scale else 0.0)
        keep = (z > 0) if relu else np.ones(z.shape, bool)
        assert_bitwise(dx, np.where(keep, _from(layout, plain), np.float32(0)), "the plain kernel's dx, masked")
        ga = fused_backward_ref(gy, x, w, s, 1, 1, G, sc if scale else None, sh if scale else None, relu, None,
                                False)[6]
        gz = ga * keep
        Lx = (K // G) * k * k
        assert_close(dx, gz, np.float32, length=Lx, what=f"masked grad {scale} {relu}")
        L = Lx * N * H * H
        assert_close(s1, gz.sum(axis=(0, 2, 3)), np.float32, length=L, what="sum")
        assert_close(s2, (gz * (x - _chan(center))).sum(axis=(0, 2, 3)), np.float32, length=L, what="sumxc")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(4, 64, 64, 16, 1), (4, 64, 96, 8, 1), (4, 64, 64, 6, 3), (3, 72, 64, 20, 3),
                                   (4, 16, 32, 8, 1), (2, 6, 16, 9, 3)])
def test_fused_forward_runs_where_the_plain_pass_runs(layout, shape):
    """The fused forward takes the plain forward's registry entry (OpenBLAS on small NCHW planes,
    the NHWC packed pass between transposes for the transposed entry, packed otherwise), with
    every epilogue, and matches float64."""
    N, C, K, H, k = shape
    rng = np.random.default_rng(H * k)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((K, C, k, k)).astype(np.float32)
    s = rng.uniform(0.5, 2, C).astype(np.float32)
    t = rng.standard_normal(C).astype(np.float32)
    g = F._Geom(_to(layout, x).shape, w.shape, 1, k // 2, 1, 1, layout, np.float32)
    plain = _core.conv_algorithm(g.core(), 0)
    y_ref, _, m_ref, v_ref = fused_ref(x, w, None, 1, k // 2, 1, 1, s, t, True, None, False)
    L = C * k * k
    y, mean, var = F.conv2d_fused(_to(layout, x), w, padding=k // 2, layout=layout, pre_scale=s, pre_shift=t,
                                  pre_relu=True, stats=True)
    want = plain  # (no stem here: the stem's problems run fused on the packed entry)
    assert F.last_kernel == want, (F.last_kernel, plain)
    assert_close(_from(layout, y), y_ref, np.float32, length=L, what="y")
    assert_close(mean, m_ref, np.float32, length=L * N * H * H, what="mean")
    res = rng.standard_normal(y_ref.shape).astype(np.float32)
    y2 = F.conv2d_fused(_to(layout, x), w, padding=k // 2, layout=layout, pre_scale=s, pre_shift=t, pre_relu=True,
                        residual=_to(layout, res), post_relu=True)
    assert F.last_kernel == want
    assert_close(_from(layout, y2), np.maximum(y_ref + res, 0), np.float32, length=L, what="y residual relu")


def test_geometry_cache_keeps_the_checks():
    """The per-signature geometry cache of the conv functions: a cached signature does not let an
    argument of another type through (True == 1, np.int64(1) == 1), and a rejected one is not stored."""
    x = np.ones((1, 4, 5, 5), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    cnnkit.conv2d(x, w, groups=2, padding=1)
    with pytest.raises(TypeError, match="groups"):
        cnnkit.conv2d(x, w, groups=True, padding=1)
    with pytest.raises(TypeError, match="stride"):
        cnnkit.conv2d(x, w, stride=(True, 1), groups=2, padding=1)
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_fused(x, w, groups=3, padding=1)
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_fused(x, w, groups=3, padding=1)
    y = F.conv2d_fused(x, w, groups=2, padding=1, stats=True)[0]
    assert_close(y, conv2d_ref(x, w, None, 1, 1, 1, 2), np.float32, length=18)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 40), K=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 20),
       k=st.sampled_from((1, 3)), s=st.sampled_from((1, 2)), kind=st.sampled_from(("dense", "depthwise", "grouped")),
       layout=st.sampled_from(("NCHW", "NHWC")), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fused_backward_input_hypothesis(N, C, K, H, W, k, s, kind, layout, relu, seed):
    """The compiled input gradient with the mask-and-sums epilogue over drawn shapes around the
    SIMD width, dense, depthwise and grouped, at strides 1 and 2 (the adjoint GEMM pass or the
    units of images), against float64, bitwise at 1 and 2 threads."""
    from conftest import num_threads
    G = 1
    if kind == "depthwise":
        G = K = C
    elif kind == "grouped":
        G = 4
        C, K = 4 * max(1, C // 4), 4 * max(1, K // 4)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    sh = rng.standard_normal(C).astype(np.float32)
    center = rng.standard_normal(C)
    g = F._Geom(_to(layout, x).shape, w.shape, s, k // 2, 1, G, layout, np.float32)
    gy = rng.standard_normal((N, K, g.Ho, g.Wo)).astype(np.float32)
    got = []
    for t in (1, 2):
        dx = np.zeros(_to(layout, x).shape, np.float32)
        with num_threads(t):
            _, s1, s2 = _core.conv2d_fused_backward_input(_to(layout, gy), w, dx, g.core(), _to(layout, x),
                                                          sc, sh, relu, center)
        got.append((_from(layout, dx), s1, s2))
    for u, v in zip(*got):
        assert_bitwise(u, v, "threads")
    ga = fused_backward_ref(gy, x, w, s, k // 2, 1, G, sc, sh, relu, None, False)[6]
    z = x.astype(np.float64) * _chan(sc) + _chan(sh)
    gz = ga * (z > 0) if relu else ga
    dx, s1, s2 = got[0]
    L = (K // G) * k * k
    assert_close(dx, gz, np.float32, length=L, what="masked grad")
    # (sums over the pixels: bounded by their terms' magnitudes, as they may cancel)
    gxc = gz * (x - _chan(center))
    assert_close_terms(s1, gz.sum(axis=(0, 2, 3)), np.float32, np.abs(gz).sum(axis=(0, 2, 3)),
                       length=L * N * H * W, what="sum")
    assert_close_terms(s2, gxc.sum(axis=(0, 2, 3)), np.float32, np.abs(gxc).sum(axis=(0, 2, 3)),
                       length=L * N * H * W, what="sumxc")


@settings(max_examples=30, deadline=None)
@given(C=st.integers(64, 136), K=st.integers(8, 40), H=st.integers(1, 9), W=st.integers(1, 11),
       kind=st.sampled_from(("1x1", "depthwise", "depthwise s2")), mask=st.sampled_from(("none", "fma", "fma 1", "stored")),
       seed=st.integers(0, 2**31 - 1))
def test_fused_backward_input_wide_channels(C, K, H, W, kind, mask, seed):
    """The gradient epilogue at 64 channels and more (AVX2: the rows taken outermost, every
    channel of a row at once, the sums continued over groups of four rows; odd row counts and
    channels past the last 16 included): each mask kind (none, fma(scale, x, shift) > 0, x > 0,
    a stored mask) against float64, bitwise at 1 and 2 threads, at every ISA level."""
    from conftest import num_threads
    G, k, s = (1, 1, 1) if kind == "1x1" else (C, 3, 2 if kind.endswith("s2") else 1)
    K = C if G > 1 else K
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32) if mask == "fma" else None
    sh = rng.standard_normal(C).astype(np.float32) if mask == "fma" else None
    m = np.where(rng.random(x.shape) < 0.45, 0, rng.random(x.shape)).astype(np.float32) if mask == "stored" else None
    center = rng.standard_normal(C)
    g = F._Geom(_to("NHWC", x).shape, w.shape, s, k // 2, 1, G, "NHWC", np.float32)
    gy = rng.standard_normal((2, K, g.Ho, g.Wo)).astype(np.float32)
    relu = mask != "none"
    ga = fused_backward_ref(gy, x, w, s, k // 2, 1, G, None, None, False, None, False)[6]
    if mask == "fma":
        keep = x.astype(np.float64) * _chan(sc) + _chan(sh) > 0
    elif mask == "fma 1":
        keep = x > 0
    elif mask == "stored":
        keep = m > 0
    else:
        keep = np.ones(x.shape, bool)
    gz = ga * keep
    L = (K // G) * k * k
    gxc = gz * (x - _chan(center))
    for level in ISA_LEVELS:
        with isa_level(level):
            got = []
            for t in (1, 2):
                dx = np.full(_to("NHWC", x).shape, np.nan, np.float32)
                with num_threads(t):
                    _, s1, s2 = _core.conv2d_fused_backward_input(
                        _to("NHWC", gy), w, dx, g.core(), _to("NHWC", x), sc, sh, relu, center, None,
                        None if m is None else _to("NHWC", m))
                got.append((_from("NHWC", dx), s1, s2))
            for u, v in zip(*got):
                assert_bitwise(u, v, f"threads at {level}")
            dx, s1, s2 = got[0]
            assert_close(dx, gz, np.float32, length=L, what=f"masked grad at {level}")
            assert np.all(dx[~keep] == 0)
            assert_close_terms(s1, gz.sum(axis=(0, 2, 3)), np.float32, np.abs(gz).sum(axis=(0, 2, 3)),
                               length=L * 2 * H * W, what=f"sum at {level}")
            assert_close_terms(s2, gxc.sum(axis=(0, 2, 3)), np.float32, np.abs(gxc).sum(axis=(0, 2, 3)),
                               length=L * 2 * H * W, what=f"sumxc at {level}")
