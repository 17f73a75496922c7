"""cnnkit's convolutions against PyTorch itself (skipped when torch is not installed).

torch.nn.functional.conv2d forward, gradients from autograd. NHWC arrays are handed to torch as
channels_last tensors (the same memory order). float64: cnnkit against torch in float64 with
conftest's float64 tolerance; float32: cnnkit against torch in float32, within the sum of both
tolerances (each is within one tolerance of the exact result). Tolerances as in test_conv.py:
conftest.tol(dtype, reduction length) applied to max(|ref|, terms). The float64 reference of
tests/reference/conv.py is checked against torch here too.
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from reference import conv as R
# shared helpers only (no test functions: those would be collected twice)
from test_conv import (DTYPES, LAYOUTS, DWGeo, Geo, absf, assert_close_terms, dw_grad_lengths,
                       dw_lengths, from_layout, make_case, make_dw_case, ref_backward, ref_forward)

torch = pytest.importorskip("torch")
F = torch.nn.functional

# torch warns that "same" with an even kernel pads a copy of the input; that is what we test
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def tt(a, layout, requires_grad=False):
    """A torch tensor (logical NCHW) over a cnnkit array: channels_last for NHWC."""
    a = np.array(a, copy=True)
    t = torch.from_numpy(a)
    if a.ndim == 4 and layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
        assert t.is_contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def tnp(t):
    """A logical-NCHW torch tensor (or None) -> a C-contiguous NCHW float64 array."""
    return None if t is None else np.ascontiguousarray(t.detach().numpy()).astype(np.float64)


def torch_conv(c):
    """(y, grad_x, grad_w, grad_b) from torch on the case's own dtype, all NCHW float64."""
    g = c.geo
    x = tt(c.x, c.layout, True)
    w = tt(c.weight, "NCHW", True)
    b = tt(c.bias, "NCHW", True)
    y = F.conv2d(x, w, b, g.stride, g.padding, g.dilation, g.groups)
    y.backward(tt(c.grad_out, c.layout))
    return tnp(y), tnp(x.grad), tnp(w.grad), tnp(b.grad)


def random_geo(rng):
    """A random geometry (dense, grouped or depthwise; every padding spelling)."""
    kind = rng.integers(3)
    if kind == 0:
        groups, cig, og = 1, int(rng.choice([1, 3, 8, 16, 17])), int(rng.choice([1, 5, 16, 17]))
    elif kind == 1:
        groups, cig, og = int(rng.integers(2, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    else:
        groups, cig, og = int(rng.choice([2, 8, 16, 17, 32])), 1, int(rng.integers(1, 3))
    kh = int(rng.choice([1, 2, 3, 4, 5, 7]))
    kw = kh if rng.random() < 0.6 else int(rng.choice([1, 2, 3, 5]))
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    dilation = int(rng.integers(1, 3))
    padding = [kh // 2, (int(rng.integers(0, 3)), int(rng.integers(0, 3))), "valid",
               "same"][rng.integers(4)]
    if padding == "same":
        stride = 1
    geo = Geo(int(rng.integers(1, 4)), groups * cig, groups * og, int(rng.integers(3, 12)),
              int(rng.integers(3, 12)), kh, kw, stride, padding, dilation, groups)
    (pt, pb), (pl, pr) = geo.pad4
    return Geo(geo.n, geo.ci, geo.co, max(geo.h, dilation * (kh - 1) + 1 - pt - pb),
               max(geo.w, dilation * (kw - 1) + 1 - pl - pr), kh, kw, stride, padding, dilation,
               groups)


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_matches_torch(seed):
    """The float64 reference against torch in float64 (validates tests/reference/conv.py)."""
    rng = np.random.default_rng(1000 + seed)
    geo = random_geo(rng)
    c = make_case(rng, geo, "NCHW", np.float64)
    ty, tgx, tgw, tgb = torch_conv(c)
    y, terms = ref_forward(c)
    ref, tg = ref_backward(c)
    f64 = np.float64
    assert_close_terms(y, ty, f64, terms, length=geo.len_y + 1, what=f"ref y [{geo}]")
    assert_close_terms(ref.grad_x, tgx, f64, tg.grad_x, length=geo.len_gx,
                       what=f"ref grad_x [{geo}]")
    assert_close_terms(ref.grad_w, tgw, f64, tg.grad_w, length=geo.len_gw,
                       what=f"ref grad_w [{geo}]")
    assert_close_terms(ref.grad_b, tgb, f64, tg.grad_b, length=geo.len_gw,
                       what=f"ref grad_b [{geo}]")


def _factor(dtype):
    """Both sides are in `dtype` for float32 (sum of two tolerances); torch float64 is exact
    to far within the float64 tolerance."""
    return 2.0 if np.dtype(dtype) == np.float32 else 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_matches_torch(seed, layout, dtype):
    rng = np.random.default_rng(seed)
    geo = random_geo(rng)
    c = make_case(rng, geo, layout, dtype, bias=bool(rng.random() < 0.7))
    if c.bias is None:
        c.bias = np.zeros(geo.co, dtype)   # torch's autograd then still gives grad_bias
        y = cnnkit.conv2d(c.x, c.weight, None, **c.kw)
    else:
        y = cnnkit.conv2d(c.x, c.weight, c.bias, **c.kw)
    gx, gw, gb = cnnkit.conv2d_backward(c.grad_out, c.x, c.weight, **c.kw)
    ty, tgx, tgw, tgb = torch_conv(c)
    _, terms = ref_forward(c)
    _, tg = ref_backward(c)
    k = _factor(dtype)
    assert_close_terms(from_layout(y, layout), ty, dtype, terms, length=geo.len_y + 1, factor=k,
                       what=f"y vs torch [{c}]")
    assert_close_terms(from_layout(gx, layout), tgx, dtype, tg.grad_x, length=geo.len_gx,
                       factor=k, what=f"grad_input vs torch [{c}]")
    assert_close_terms(gw, tgw, dtype, tg.grad_w, length=geo.len_gw, factor=k,
                       what=f"grad_weight vs torch [{c}]")
    assert_close_terms(gb, tgb, dtype, tg.grad_b, length=geo.len_gw, factor=k,
                       what=f"grad_bias vs torch [{c}]")


DW_GEOS = [DWGeo(2, 16, 1, 24, 9, 9, 3, 3, 1, 1), DWGeo(2, 17, 2, 8, 10, 9, 5, 5, 2, 2),
           DWGeo(1, 8, 1, 16, 8, 8, 4, 4, 1, "same"), DWGeo(2, 3, 3, 5, 9, 11, 7, 3, (1, 2),
                                                            (3, 1), (1, 2))]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", DW_GEOS, ids=str)
def test_depthwise_separable_matches_torch(geo, layout, dtype, rng):
    c = make_dw_case(rng, geo, layout, dtype)
    y = cnnkit.depthwise_separable_conv2d(c.x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias,
                                          **c.kw)
    grads = cnnkit.depthwise_separable_conv2d_backward(c.grad_out, c.x, c.dw_weight,
                                                       c.pw_weight, c.dw_bias, **c.kw)
    ts = [tt(c.x, layout, True)] + [tt(a, "NCHW", True) for a in
                                    (c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias)]
    mid = F.conv2d(ts[0], ts[1], ts[3], geo.stride, geo.padding, geo.dilation, geo.ci)
    ty = F.conv2d(mid, ts[2], ts[4])
    ty.backward(tt(c.grad_out, layout))
    want = [tnp(ts[i].grad) for i in (0, 1, 2, 3, 4)]
    x = from_layout(c.x, layout)
    g = from_layout(c.grad_out, layout)
    terms_y = R.depthwise_separable_ref(absf(x), absf(c.dw_weight), absf(c.pw_weight),
                                        absf(c.dw_bias), absf(c.pw_bias), **c.ref_kw)
    terms = R.depthwise_separable_backward_ref(absf(g), absf(x), absf(c.dw_weight),
                                               absf(c.pw_weight), absf(c.dw_bias), **c.ref_kw)
    length, steps = dw_lengths(geo)
    k = _factor(dtype)
    assert_close_terms(from_layout(y, layout), tnp(ty), dtype, terms_y, length=length,
                       steps=steps, factor=k, what=f"y vs torch [{c}]")
    names = ("grad_x", "grad_dw_weight", "grad_pw_weight", "grad_dw_bias", "grad_pw_bias")
    for i, name in enumerate(names):
        got = from_layout(grads[i], layout) if i == 0 else grads[i]
        assert_close_terms(got, want[i], dtype, terms[i], length=dw_grad_lengths(geo)[i],
                           steps=2, factor=k, what=f"{name} vs torch [{c}]")
