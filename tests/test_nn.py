"""Tests for the layer stack cnnkit.nn (modules, Sequential, blocks, the loss) against float64 NumPy.

Layers (STYLE.md, Tests):

* forward of every module against the float64 references of tests/reference/nn.py on random
  data: named sizes 7, 15, 16, 17 (around and on the SIMD widths), both layouts where the module
  has one, strides and paddings for the pools; hypothesis properties over the geometry;
* backward against central differences of the float64 reference forward at the same point:
  the float32 analytic gradients (input, every parameter, the residual) of each module and of
  small networks (Sequential of Conv2d/BN/ReLU/pools/Linear, ResidualBlock with norm "batch",
  "group" and None, BottleneckBlock, DepthwiseSeparableConv2d), for L = sum(w * y) with random
  w. Data are drawn away from ReLU kinks and max-pool ties: the reference records the smallest
  |pre-activation| at every ReLU (fused or not) and the smallest gap between a window's two
  largest values, and a draw is rejected while either is below MARGIN;
* invariants: parameters are views into ``arena[0]`` (gradients into ``arena[1]``) in PyTorch's
  order; an optimizer step through the arena; running statistics as torch updates them
  (momentum 0.1, unbiased variance) and eval mode using them; state_dict / save / load round
  trips; capture / release / guided backprop; outputs reused per shape (documented in
  cnnkit.nn.module: an output stays valid until the module's next forward) and no new arena
  after the first step; the same bits at 1 and 2 threads;
* bad input: TypeError / ValueError naming the argument, and for Sequential the layer index.

Tolerances: conftest.tol(float32, length=n) with n the longest reduction feeding an element.
Gradients are compared after dividing both sides by the largest |reference| of the tensor (a
gradient element is a sum of terms whose rounding errors scale with the largest terms, not with
the possibly cancelling result); the finite-difference error (~1e-9 relative) is far below that.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit import nn
from cnnkit.optim import SGD, Adam
from conftest import assert_bitwise, assert_close, num_threads
from reference import nn as R

SETTINGS = settings(max_examples=6, deadline=None)
LAYOUTS = ("NCHW", "NHWC")
F32, F64 = np.float32, np.float64
MARGIN = 2e-4        # smallest |pre-activation| at a ReLU and max-pool gap accepted for differences
H_FD = 1e-6          # central-difference step (float64)


# ---- helpers ------------------------------------------------------------------------------------

def to_layout(a_nchw, layout, dtype=F32):
    """An (N, C, H, W) array in `layout` (C-contiguous, `dtype`); other ranks unchanged."""
    a = np.asarray(a_nchw)
    if a.ndim == 4 and layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a, dtype=dtype)


def from_layout(a, layout):
    a = np.asarray(a)
    if a.ndim == 4 and layout == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(a)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def assert_grad_close(actual, ref, *, length, what):
    """assert_close on both arrays divided by max|ref| (see the module docstring)."""
    ref = np.asarray(ref, F64)
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    assert scale > 0, f"{what}: the reference gradient is identically zero (a useless test)"
    assert_close(np.asarray(actual, F64) / scale, ref / scale, F32, length=length, what=what)


# ---- the float64 reference of a whole module tree -----------------------------------------------

def params64(model):
    """{(id(module), name): float64 copy} for every parameter of the tree."""
    return {(id(m), n): np.array(a, F64) for _, m in model.named_modules() for n, a in m.params.items()}


class Margins:
    """Smallest |pre-activation| at any ReLU and smallest max-pool gap seen by ref_forward."""

    def __init__(self):
        self.relu = math.inf
        self.pool = math.inf

    def ok(self, margin=MARGIN):
        return self.relu > margin and self.pool > margin


def _relu(pre, rec):
    if rec is not None:
        rec.relu = min(rec.relu, float(np.min(np.abs(pre))))
    return np.maximum(pre, 0.0)


def _norm_ref(m, h, P, residual=None):
    """The norm module `m` WITHOUT its activation (blocks apply the ReLUs themselves);
    identity when `m` is None or a ReLU (norm=None blocks)."""
    g = lambda n: P.get((id(m), n))
    if isinstance(m, nn.BatchNorm2d):
        if m.training:
            y = R.batch_norm_train(h, g("weight"), g("bias"), eps=m.eps, residual=residual, layout=m.layout).y
        else:
            y = R.batch_norm_eval(h, g("weight"), g("bias"), m.buffers["running_mean"], m.buffers["running_var"],
                                  eps=m.eps, residual=residual, layout=m.layout)
        return y
    if isinstance(m, nn.GroupNorm):
        y = R.group_norm(h, m.num_groups, g("weight"), g("bias"), m.eps, layout=m.layout).y
    else:
        assert m is None or isinstance(m, nn.ReLU), type(m)
        y = h
    return y if residual is None else y + residual


def ref_forward(m, x, P, rec=None, residual=None):
    """float64 forward of the cnnkit module tree `m` with parameters P (see params64), written from
    torch's definitions of the same layers and blocks (not from cnnkit's fused arrangement)."""
    g = lambda n: P.get((id(m), n))
    if isinstance(m, nn.Sequential):
        for layer in m.layers:
            x = ref_forward(layer, x, P, rec)
        return x
    if isinstance(m, nn.Conv2d):
        return R.conv2d(x, g("weight"), g("bias"), m.stride, m.padding, m.dilation, m.groups, layout=m.layout)
    if isinstance(m, nn.DepthwiseSeparableConv2d):
        return R.depthwise_separable(x, g("dw_weight"), g("pw_weight"), g("dw_bias"), g("pw_bias"), m.stride,
                                     m.padding, layout=m.layout)
    if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        pre = _norm_ref(m, x, P, residual)
        return _relu(pre, rec) if m.activation == "relu" else pre
    if isinstance(m, nn.ReLU):
        return _relu(x, rec)
    if isinstance(m, nn.MaxPool2d):
        if rec is not None:
            rec.pool = min(rec.pool, R.max_pool2d_gap(x, m.kernel_size, m.stride, m.padding, layout=m.layout))
        return R.max_pool2d(x, m.kernel_size, m.stride, m.padding, layout=m.layout)
    if isinstance(m, nn.AvgPool2d):
        return R.avg_pool2d(x, m.kernel_size, m.stride, m.padding, layout=m.layout)
    if isinstance(m, nn.GlobalAvgPool2d):
        return R.global_avg_pool2d(x, layout=m.layout)
    if isinstance(m, nn.Flatten):
        return R.flatten(x, layout=m.layout)
    if isinstance(m, nn.Linear):
        return R.linear(x, g("weight"), g("bias"))
    if isinstance(m, nn.ResidualBlock):
        # torchvision BasicBlock: relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))
        r = x if m.shortcut is None else ref_forward(m.shortcut, x, P, rec)
        h = _relu(_norm_ref(m.bn1, ref_forward(m.conv1, x, P), P), rec)
        h = _norm_ref(m.bn2, ref_forward(m.conv2, h, P), P)
        return _relu(h + r, rec)
    if isinstance(m, nn.BottleneckBlock):
        # ResNeXt bottleneck: relu(n3(conv3(relu(n2(conv2(relu(n1(conv1(x)))))))) + shortcut(x))
        r = x if m.shortcut is None else ref_forward(m.shortcut, x, P, rec)
        h = _relu(_norm_ref(m.bn1, ref_forward(m.conv1, x, P), P), rec)
        h = _relu(_norm_ref(m.bn2, ref_forward(m.conv2, h, P), P), rec)
        h = _norm_ref(m.bn3, ref_forward(m.conv3, h, P), P)
        return _relu(h + r, rec)
    raise TypeError(f"no reference for {type(m).__name__}")


def margins(model, x, residual=None):
    rec = Margins()
    ref_forward(model, np.asarray(x, F64), params64(model), rec, residual=residual)
    return rec


def smooth_input(model, make, tries=60, margin=MARGIN):
    """Draw inputs with `make()` until the reference sees no ReLU kink / max-pool tie within
    `margin`."""
    for _ in range(tries):
        x = make()
        if margins(model, x).ok(margin):
            return x
    raise AssertionError("could not draw an input away from ReLU kinks and max-pool ties")


def _coords(size, n, rng):
    return np.arange(size) if n is None or size <= n else rng.choice(size, n, replace=False)


def grad_check(model, x, rng, *, length, coords=None, residual=None, what=""):
    """The module's float32 gradients of L = sum(w * y) (input, every parameter, the residual of a
    BatchNorm2d) against central differences of the float64 reference forward at the same point;
    `coords` elements per tensor (None: all)."""
    y = model.forward(x) if residual is None else model.forward(x, residual)
    w = rng.standard_normal(y.shape)
    gx = model.backward(w.astype(F32), input_grad=True)
    gx = None if gx is None else gx.copy()
    names = [n for n, _ in model.named_parameters()]
    analytic = dict(zip(names, [g.copy() for g in model.gradients()]))
    gres = None if residual is None else model.residual_grad.copy()

    P = params64(model)
    x64 = np.array(x, F64)
    r64 = None if residual is None else np.array(residual, F64)
    rec = Margins()
    assert_close(y, ref_forward(model, x64, P, rec, residual=r64), F32, length=length, what=f"{what} forward")
    assert rec.ok(), f"{what}: data too close to a ReLU kink or max-pool tie ({rec.relu:.3g}, {rec.pool:.3g})"

    def loss(xv, Pv, rv):
        return float(np.sum(w * ref_forward(model, xv, Pv, residual=rv)))

    def fd(arr, idx, evaluate):
        flat = arr.reshape(-1)
        out = np.empty(len(idx))
        for k, i in enumerate(idx):
            v = flat[i]
            flat[i] = v + H_FD
            up = evaluate()
            flat[i] = v - H_FD
            down = evaluate()
            flat[i] = v
            out[k] = (up - down) / (2 * H_FD)
        return out

    targets = []
    if gx is not None:
        targets.append(("input", x64, gx, lambda: loss(x64, P, r64)))
    if residual is not None:
        targets.append(("residual", r64, gres, lambda: loss(x64, P, r64)))
    modules = dict(model.named_modules())
    for name in names:
        prefix, _, pname = name.rpartition(".")
        key = (id(modules[prefix]), pname)
        targets.append((name, P[key], analytic[name], lambda: loss(x64, P, r64)))
    for name, arr, got, evaluate in targets:
        idx = _coords(arr.size, coords, rng)
        ref = fd(arr, idx, evaluate)
        assert_grad_close(np.asarray(got).reshape(-1)[idx], ref, length=length, what=f"{what} d/d{name}")


# ---- models used by several tests ---------------------------------------------------------------

def small_cnn(layout, rng, C=3, classes=7):
    """Conv-BN-ReLU-MaxPool-Conv-ReLU-AvgPool-GlobalAvgPool-Linear (parameters: 8)."""
    return nn.Sequential(
        nn.Conv2d(C, 8, 3, padding=1, bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(8, layout=layout),
        nn.ReLU(),
        nn.MaxPool2d(2, layout=layout),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, layout=layout, rng=rng),
        nn.ReLU(),
        nn.AvgPool2d(3, 1, 1, layout=layout),
        nn.GlobalAvgPool2d(layout=layout),
        nn.Linear(16, classes, rng=rng),
    )


def flatten_cnn(layout, rng, C=3, H=8, classes=5):
    """Conv-BN(relu)-MaxPool(3, 2, 1)-Flatten-Linear: Flatten's NHWC -> NCHW order matters."""
    Ho = (H + 2 - 3) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(C, 6, 3, padding=1, bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(6, activation="relu", layout=layout),
        nn.MaxPool2d(3, 2, 1, layout=layout),
        nn.Flatten(layout=layout),
        nn.Linear(6 * Ho * Ho, classes, rng=rng),
    )


def resnet_tiny(layout, rng, norm="batch", classes=5):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=norm is None, layout=layout, rng=rng),
        nn.ReLU(),
        nn.ResidualBlock(8, 8, norm=norm, layout=layout, rng=rng),
        nn.ResidualBlock(8, 16, 2, norm=norm, layout=layout, rng=rng),
        nn.GlobalAvgPool2d(layout=layout),
        nn.Linear(16, classes, rng=rng),
    )


def train_step(model, loss_fn, opt, x, labels):
    logits = model.forward(x)
    value = loss_fn.forward(logits, labels)
    model.backward(loss_fn.backward())
    opt.step(model.gradients())
    return value


# ---- forward against the references -------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("C,Co,HW,k,stride,padding,groups,bias", [
    (3, 16, 7, 3, 1, 1, 1, True),
    (16, 17, 15, 3, 2, 1, 1, False),
    (17, 7, 16, 1, 1, 0, 1, True),
    (16, 16, 17, 3, 1, 1, 4, True),
    (15, 15, 17, 5, 2, 2, 15, False),     # depthwise
])
def test_conv2d_forward(layout, C, Co, HW, k, stride, padding, groups, bias, rng):
    m = nn.Conv2d(C, Co, k, stride, padding, groups=groups, bias=bias, layout=layout, rng=rng)
    x = randn(rng, 2, C, HW, HW)
    y = m.forward(to_layout(x, layout))
    ref = R.conv2d(to_layout(x, layout, F64), m.params["weight"], m.params.get("bias"), stride, padding,
                   groups=groups, layout=layout)
    assert y.dtype == F32
    assert_close(y, ref, F32, length=C // groups * k * k, what="conv2d")


@SETTINGS
@given(C=st.sampled_from([1, 7, 16]), Co=st.sampled_from([1, 15, 17]), H=st.integers(3, 17),
       W=st.integers(3, 17), k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1),
       bias=st.booleans(), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_conv2d_forward_property(C, Co, H, W, k, stride, padding, bias, layout, seed):
    rng = np.random.default_rng(seed)
    m = nn.Conv2d(C, Co, k, stride, padding, bias=bias, layout=layout, rng=rng)
    x = to_layout(randn(rng, 2, C, H, W), layout)
    ref = R.conv2d(x, m.params["weight"], m.params.get("bias"), stride, padding, layout=layout)
    assert_close(m.forward(x), ref, F32, length=C * k * k, what="conv2d")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("C,Co,HW,k,stride,bias", [(7, 16, 15, 3, 1, True), (16, 17, 16, 3, 2, False),
                                                   (17, 15, 7, 5, 1, True)])
def test_depthwise_separable_forward(layout, C, Co, HW, k, stride, bias, rng):
    m = nn.DepthwiseSeparableConv2d(C, Co, k, stride, k // 2, bias=bias, layout=layout, rng=rng)
    x = to_layout(randn(rng, 2, C, HW, HW), layout)
    p = m.params
    ref = R.depthwise_separable(x, p["dw_weight"], p["pw_weight"], p.get("dw_bias"), p.get("pw_bias"), stride,
                                k // 2, layout=layout)
    assert_close(m.forward(x), ref, F32, length=C * k * k, what="depthwise separable")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("C,HW", [(7, 15), (16, 7), (17, 16)])
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", False), ("relu", True), (None, True)])
def test_batch_norm_forward(layout, C, HW, activation, residual, rng):
    m = nn.BatchNorm2d(C, activation=activation, layout=layout)
    m.params["weight"][...] = rng.uniform(0.5, 2.0, C)
    m.params["bias"][...] = rng.standard_normal(C)
    x = to_layout(randn(rng, 3, C, HW, HW) * 2 + 1, layout)
    r = to_layout(randn(rng, 3, C, HW, HW), layout) if residual else None
    y = m.forward(x, r).copy()
    n = 3 * HW * HW
    ref = R.batch_norm_train(x, m.params["weight"], m.params["bias"], np.zeros(C), np.ones(C), activation=activation,
                             residual=r, layout=layout)
    assert_close(y, ref.y, F32, length=n, what="train y")
    assert_close(m.buffers["running_mean"], ref.running_mean, F32, length=n, what="running_mean")
    assert_close(m.buffers["running_var"], ref.running_var, F32, length=n, what="running_var")
    assert int(m.buffers["num_batches_tracked"]) == 1
    # eval: the running statistics normalise, and nothing is updated
    m.buffers["running_mean"][...] = rng.standard_normal(C)
    m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, C)
    before = {k: v.copy() for k, v in m.buffers.items()}
    m.eval()
    ye = m.forward(x, r)
    refe = R.batch_norm_eval(x, m.params["weight"], m.params["bias"], m.buffers["running_mean"],
                             m.buffers["running_var"], activation=activation, residual=r, layout=layout)
    assert_close(ye, refe, F32, what="eval y")
    for k, v in before.items():
        assert_bitwise(m.buffers[k], v, f"eval changed {k}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("G,C,HW,activation", [(1, 7, 15, None), (4, 16, 7, "relu"), (17, 17, 16, None),
                                               (5, 15, 17, "relu")])
def test_group_norm_forward(layout, G, C, HW, activation, rng):
    m = nn.GroupNorm(G, C, activation=activation, layout=layout)
    m.params["weight"][...] = rng.uniform(0.5, 2.0, C)
    m.params["bias"][...] = rng.standard_normal(C)
    x = to_layout(randn(rng, 2, C, HW, HW) * 3 - 1, layout)
    ref = R.group_norm(x, G, m.params["weight"], m.params["bias"], activation=activation, layout=layout)
    assert_close(m.forward(x), ref.y, F32, length=C // G * HW * HW, what="group norm")


@pytest.mark.parametrize("shape", [(7,), (2, 15, 16, 17), (3, 16)])
def test_relu_forward(shape, rng):
    x = randn(rng, *shape)
    y = nn.ReLU().forward(x)
    assert y.dtype == F32
    assert_close(y, R.relu(x), F32, what="relu")


POOL_GEOMETRIES = [  # kernel, stride, padding
    (2, None, 0), (2, 2, 1), (3, 2, 1), (3, 1, 1), (3, 3, 0), ((3, 2), (2, 1), (1, 0)), ((1, 3), 1, (0, 1)),
    (4, 3, 2), (5, 2, 2),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("HW", [(7, 7), (15, 16), (17, 7)])
@pytest.mark.parametrize("k,s,p", POOL_GEOMETRIES)
def test_pool_forward(layout, HW, k, s, p, rng):
    x = to_layout(randn(rng, 2, 7, *HW), layout)
    mp = nn.MaxPool2d(k, s, p, layout=layout)
    assert_close(mp.forward(x), R.max_pool2d(x, k, s, p, layout=layout), F32, what="max pool")
    kh, kw = R.pair(k)
    ap = nn.AvgPool2d(k, s, p, layout=layout)
    assert_close(ap.forward(x), R.avg_pool2d(x, k, s, p, layout=layout), F32, length=kh * kw, what="avg pool")


@SETTINGS
@given(k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pfrac=st.tuples(st.floats(0, 1), st.floats(0, 1)), H=st.integers(4, 17), W=st.integers(4, 17),
       C=st.sampled_from([1, 7, 16, 17]), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_pool_forward_backward_property(k, s, pfrac, H, W, C, layout, seed):
    rng = np.random.default_rng(seed)
    p = tuple(int(f * (kk // 2)) for f, kk in zip(pfrac, k))       # padding <= kernel / 2, as torch
    x = to_layout(randn(rng, 2, C, H, W), layout)
    mp, ap = nn.MaxPool2d(k, s, p, layout=layout), nn.AvgPool2d(k, s, p, layout=layout)
    y = mp.forward(x)
    assert_close(y, R.max_pool2d(x, k, s, p, layout=layout), F32, what="max pool")
    assert_close(ap.forward(x), R.avg_pool2d(x, k, s, p, layout=layout), F32, length=k[0] * k[1], what="avg pool")
    # max-pool backward: each output gradient lands on its window's first maximum (scatter-add)
    g = randn(rng, *y.shape)
    gi = from_layout(mp.backward(g), layout)
    arg = R.max_pool2d_argmax(x, k, s, p, layout=layout)
    gn = from_layout(g, layout).astype(F64)
    expected = np.zeros((2, C, H * W))
    for n in range(2):
        for c in range(C):
            np.add.at(expected[n, c], arg[n, c].reshape(-1), gn[n, c].reshape(-1))
    assert_close(gi, expected.reshape(2, C, H, W), F32, length=k[0] * k[1], what="max pool backward")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_padding_never_wins_and_first_max(layout):
    # all inputs negative: the (-inf) padding must never be the maximum
    x = -np.arange(1, 1 + 2 * 3 * 5 * 5, dtype=F32).reshape(2, 3, 5, 5)
    xl = to_layout(x, layout)
    m = nn.MaxPool2d(3, 2, 1, layout=layout)
    y = m.forward(xl)
    assert_close(y, R.max_pool2d(xl, 3, 2, 1, layout=layout), F32, what="negative input")
    assert np.all(y < 0)
    # ties: the gradient goes to the first maximum (row-major in the window), as torch
    t = np.zeros((1, 2, 4, 4), F32)
    t[0, 1, :2, :2] = 5.0
    tl = to_layout(t, layout)
    m2 = nn.MaxPool2d(2, layout=layout)
    m2.forward(tl)
    g = to_layout(np.arange(1, 9, dtype=F32).reshape(1, 2, 2, 2), layout)
    gi = from_layout(m2.backward(g), layout)
    arg = R.max_pool2d_argmax(t, 2)
    expected = np.zeros((1, 2, 16))
    gn = from_layout(g, layout)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                expected[0, c, arg[0, c, i, j]] += gn[0, c, i, j]
    assert_close(gi, expected.reshape(1, 2, 4, 4), F32, what="tie gradient")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("C,HW", [(7, (15, 16)), (16, (7, 17)), (17, (1, 1))])
def test_global_avg_pool_and_flatten_forward(layout, C, HW, rng):
    x = to_layout(randn(rng, 3, C, *HW), layout)
    assert_close(nn.GlobalAvgPool2d(layout=layout).forward(x), R.global_avg_pool2d(x, layout=layout), F32,
                 length=HW[0] * HW[1], what="global avg pool")
    y = nn.Flatten(layout=layout).forward(x)
    assert_bitwise(y, R.flatten(x, layout=layout).astype(F32), "flatten (NCHW order)")
    z = randn(rng, 3, C)
    assert_bitwise(nn.Flatten(layout=layout).forward(z), z, "flatten of 2-D input")


@pytest.mark.parametrize("N,I,O,bias", [(1, 7, 15, True), (5, 16, 17, False), (17, 15, 16, True)])
def test_linear_forward(N, I, O, bias, rng):
    m = nn.Linear(I, O, bias=bias, rng=rng)
    x = randn(rng, N, I)
    assert_close(m.forward(x), R.linear(x, m.params["weight"], m.params.get("bias")), F32, length=I, what="linear")


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 40), I=st.integers(1, 70), O=st.integers(1, 40), bias=st.booleans(),
       strided=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_linear_on_cnnkit_gemm(N, I, O, bias, strided, seed):
    """Linear runs on cnnkit's own GEMM (no numpy.matmul, whose OpenBLAS threads spin on the cores
    cnnkit's threads use): forward, input and parameter gradients against float64, sizes on both
    sides of the register block, views with strides as x and grad, the same bits at 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    m = nn.Linear(I, O, bias=bias, rng=rng)
    x = randn(rng, N, 2 * I)[:, ::2] if strided else randn(rng, N, I)
    g = randn(rng, N, 2 * O)[:, 1::2] if strided else randn(rng, N, O)
    w64, x64, g64 = m.params["weight"].astype(F64), x.astype(F64), g.astype(F64)
    out = {}
    for n in (1, 2):
        with num_threads(n):
            y = m.forward(x).copy()
            gx = m.backward(g).copy()
            out[n] = (y, gx, {k: v.copy() for k, v in m.grads.items()})
    y, gx, grads = out[1]
    ref = x64 @ w64.T + (m.params["bias"].astype(F64) if bias else 0)
    assert_close(y, ref, F32, length=I, what="linear forward")
    assert_close(gx, g64 @ w64, F32, length=O, what="linear input gradient")
    assert_close(grads["weight"], g64.T @ x64, F32, length=N, what="linear weight gradient")
    if bias:
        assert_close(grads["bias"], g64.sum(0), F32, length=N, what="linear bias gradient")
    for a, b, what in zip(out[1][:2], out[2][:2], ("forward", "input gradient")):
        assert_bitwise(b, a, f"linear {what}, 2 threads against 1")
    for k in grads:
        assert_bitwise(out[2][2][k], grads[k], f"linear {k} gradient, 2 threads against 1")


def test_init_follows_torch_bounds(rng):
    """Kaiming-uniform(a=sqrt(5)) weights and biases lie in +-1/sqrt(fan_in); norms start at 1, 0."""
    c = nn.Conv2d(6, 8, 3, groups=2, rng=rng)
    bound = 1 / math.sqrt(3 * 9)
    assert np.all(np.abs(c.params["weight"]) <= bound) and np.abs(c.params["weight"]).max() > 0.5 * bound
    assert np.all(np.abs(c.params["bias"]) <= bound)
    lin = nn.Linear(10, 4, rng=rng)
    assert np.all(np.abs(lin.params["weight"]) <= 1 / math.sqrt(10))
    bn = nn.BatchNorm2d(5)
    assert np.all(bn.params["weight"] == 1) and np.all(bn.params["bias"] == 0)
    assert np.all(bn.buffers["running_var"] == 1) and np.all(bn.buffers["running_mean"] == 0)


# ---- the loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [7, 15, 16, 17])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(K, smoothing, soft, reduction, rng):
    N = 6
    z = randn(rng, N, K) * 3
    if soft:
        t = rng.dirichlet(np.ones(K), size=N).astype(F32)
    else:
        t = rng.integers(0, K, N)
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
    v = loss.forward(z, t)
    ref = R.cross_entropy(z, t, smoothing, reduction)
    if reduction == "none":
        assert_close(v, ref, F32, length=K, what="per-sample loss")
        return
    assert isinstance(v, float)
    assert_close(v, ref, F32, length=K * N, what="loss")
    g = loss.backward()
    assert g.dtype == F32 and g.shape == (N, K)
    assert_grad_close(g, R.cross_entropy_grad(z, t, smoothing, reduction), length=K, what="dloss/dlogits")
    # the closed form against central differences of the reference
    z64 = z.astype(F64)
    fd = np.empty((N, K))
    for i in range(N):
        for j in range(K):
            zp, zm = z64.copy(), z64.copy()
            zp[i, j] += H_FD
            zm[i, j] -= H_FD
            fd[i, j] = (R.cross_entropy(zp, t, smoothing, reduction) - R.cross_entropy(zm, t, smoothing, reduction)) \
                / (2 * H_FD)
    assert_grad_close(g, fd, length=K, what="dloss/dlogits vs differences")


def test_cross_entropy_large_logits(rng):
    z = randn(rng, 4, 9) * 50 + 1000          # overflows a naive exp
    lab = rng.integers(0, 9, 4)
    loss = nn.CrossEntropyLoss(label_smoothing=0.05)
    v = loss.forward(z, lab)
    assert math.isfinite(v)
    assert_close(v, R.cross_entropy(z, lab, 0.05), F32, length=9 * 4, what="large logits")
    assert_grad_close(loss.backward(), R.cross_entropy_grad(z, lab, 0.05), length=9, what="large logits grad")


def test_cross_entropy_unnormalised_soft_targets(rng):
    loss = nn.CrossEntropyLoss(label_smoothing=0.05)
    t = rng.uniform(0, 1, (4, 9)).astype(F32)
    z = randn(rng, 4, 9)
    v = loss.forward(z, t)
    assert_close(v, R.cross_entropy(z, t, 0.05), F32, length=9 * 4, what="unnormalised soft loss")
    assert_grad_close(loss.backward(), R.cross_entropy_grad(z, t, 0.05), length=9, what="unnormalised soft grad")


# ---- backward against finite differences of the reference ---------------------------------------

def _pushed(a, rng, away=0.05):
    """`a` moved at least `away` from 0 (for ReLU kinks)."""
    return (a + np.sign(a) * away).astype(F32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("C,Co,HW,k,stride,padding,groups,bias", [
    (3, 7, 7, 3, 1, 1, 1, True), (4, 4, 7, 3, 2, 1, 4, False), (2, 5, 6, 2, 2, 0, 1, True),
])
def test_conv2d_grad(layout, C, Co, HW, k, stride, padding, groups, bias, rng):
    m = nn.Conv2d(C, Co, k, stride, padding, groups=groups, bias=bias, layout=layout, rng=rng)
    grad_check(m, to_layout(randn(rng, 2, C, HW, HW), layout), rng, length=2 * HW * HW, what="conv2d")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias,stride", [(True, 1), (False, 2)])
def test_depthwise_separable_grad(layout, bias, stride, rng):
    m = nn.DepthwiseSeparableConv2d(3, 5, 3, stride, 1, bias=bias, layout=layout, rng=rng)
    grad_check(m, to_layout(randn(rng, 2, 3, 7, 7), layout), rng, length=2 * 7 * 7 * 3, what="dws")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", False), ("relu", True), (None, True)])
def test_batch_norm_grad(layout, activation, residual, rng):
    C = 3
    m = nn.BatchNorm2d(C, activation=activation, layout=layout)
    m.params["weight"][...] = rng.uniform(0.5, 2.0, C)
    m.params["bias"][...] = rng.standard_normal(C)

    def make():
        return to_layout(randn(rng, 2, C, 5, 3) * 2 + 1, layout)
    r = to_layout(randn(rng, 2, C, 5, 3), layout) if residual else None
    for _ in range(60):
        x = make()
        if margins(m, x, None if r is None else r.astype(F64)).ok():
            break
    grad_check(m, x, rng, length=30, residual=r, what="batch norm")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("G,C,activation", [(1, 3, None), (2, 4, "relu"), (4, 4, None)])
def test_group_norm_grad(layout, G, C, activation, rng):
    m = nn.GroupNorm(G, C, activation=activation, layout=layout)
    m.params["weight"][...] = rng.uniform(0.5, 2.0, C)
    m.params["bias"][...] = rng.standard_normal(C)
    x = smooth_input(m, lambda: to_layout(randn(rng, 2, C, 4, 5) * 2 - 1, layout))
    grad_check(m, x, rng, length=C // G * 20, what="group norm")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_norms_without_affine(layout, rng):
    bn = nn.BatchNorm2d(3, affine=False, layout=layout)
    gn = nn.GroupNorm(2, 4, affine=False, activation="relu", layout=layout)
    assert bn.parameters() == [] and gn.parameters() == []
    grad_check(bn, to_layout(randn(rng, 2, 3, 4, 3) + 1, layout), rng, length=24, what="bn affine=False")
    x = smooth_input(gn, lambda: to_layout(randn(rng, 2, 4, 3, 3), layout))
    grad_check(gn, x, rng, length=18, what="gn affine=False")


def test_relu_grad(rng):
    x = _pushed(randn(rng, 3, 4, 5, 2), rng)
    grad_check(nn.ReLU(), x, rng, length=1, what="relu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (2, 1), (1, 0))])
def test_pool_grad(layout, k, s, p, rng):
    shape = (2, 3, 7, 6)
    # distinct values at least 0.01 apart: no ties within 0.01
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 + rng.uniform(0, 1e-3, shape)).astype(F32)
    x -= x.mean()
    grad_check(nn.MaxPool2d(k, s, p, layout=layout), to_layout(x, layout), rng, length=9, what="max pool")
    grad_check(nn.AvgPool2d(k, s, p, layout=layout), to_layout(randn(rng, *shape), layout), rng, length=9,
               what="avg pool")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_global_pool_flatten_linear_grad(layout, rng):
    grad_check(nn.GlobalAvgPool2d(layout=layout), to_layout(randn(rng, 2, 3, 5, 7), layout), rng, length=35,
               what="global avg pool")
    grad_check(nn.Flatten(layout=layout), to_layout(randn(rng, 2, 3, 5, 7), layout), rng, length=1,
               what="flatten")
    grad_check(nn.Linear(7, 5, rng=rng), randn(rng, 4, 7), rng, length=7, what="linear")
    grad_check(nn.Linear(7, 5, bias=False, rng=rng), randn(rng, 4, 7), rng, length=7, what="linear no bias")


NETS = {
    "small_cnn": lambda layout, rng: (small_cnn(layout, rng), (2, 3, 8, 8)),
    "flatten_cnn": lambda layout, rng: (flatten_cnn(layout, rng, H=7), (2, 3, 7, 7)),
    "resnet_batch": lambda layout, rng: (resnet_tiny(layout, rng, "batch"), (2, 3, 6, 6)),
    "resnet_group": lambda layout, rng: (resnet_tiny(layout, rng, "group"), (2, 3, 6, 6)),
    "resnet_none": lambda layout, rng: (resnet_tiny(layout, rng, None), (2, 3, 6, 6)),
    "bottleneck_batch": lambda layout, rng: (nn.Sequential(
        nn.BottleneckBlock(8, 16, 8, 2, groups=4, layout=layout, rng=rng),
        nn.BottleneckBlock(16, 16, 8, 1, groups=2, layout=layout, rng=rng),
        nn.GlobalAvgPool2d(layout=layout), nn.Linear(16, 3, rng=rng)), (2, 8, 5, 5)),
    "resnet_grouped": lambda layout, rng: (nn.Sequential(
        nn.ResidualBlock(4, 8, 2, groups=2, layout=layout, rng=rng),
        nn.ResidualBlock(8, 8, groups=4, norm="group", layout=layout, rng=rng)), (2, 4, 6, 6)),
    "bottleneck_group": lambda layout, rng: (nn.BottleneckBlock(8, 16, 8, 2, groups=4, norm="group", layout=layout,
                                                                rng=rng), (2, 8, 5, 5)),
    "bottleneck_none": lambda layout, rng: (nn.BottleneckBlock(8, 8, 4, 1, groups=2, norm=None, layout=layout,
                                                               rng=rng), (2, 8, 5, 5)),
    "dws_net": lambda layout, rng: (nn.Sequential(
        # (a bias right before a batch norm has a zero gradient: ReLU between them)
        nn.DepthwiseSeparableConv2d(3, 8, 3, 1, 1, layout=layout, rng=rng),
        nn.ReLU(),
        nn.DepthwiseSeparableConv2d(8, 8, 3, 2, 1, bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(8, activation="relu", layout=layout),
        nn.GlobalAvgPool2d(layout=layout), nn.Linear(8, 4, rng=rng)), (2, 3, 7, 7)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("net", list(NETS))
def test_network_grad(net, layout, rng):
    model, shape = NETS[net](layout, rng)
    x = smooth_input(model, lambda: to_layout(randn(rng, *shape), layout))
    grad_check(model, x, rng, coords=12, length=2 * 8 * 8 * 16, what=net)


# ---- parameters and the arena -------------------------------------------------------------------

def test_parameters_are_arena_views_in_torch_order(rng):
    model = resnet_tiny("NCHW", rng, "batch")
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["0.weight", "2.conv1.weight"]       # convs have no bias with norm="batch"
    expected_block = ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias"]
    assert [n[2:] for n in names if n.startswith("2.")] == expected_block
    assert [n[2:] for n in names if n.startswith("3.")] == expected_block + [
        "downsample.0.weight", "downsample.1.weight", "downsample.1.bias"]
    assert names[-2:] == ["5.weight", "5.bias"]
    flat_p, flat_g = model.arena
    assert flat_p.dtype == F32 and flat_g.dtype == F32 and flat_p.ndim == 1
    assert flat_p.size == model.num_parameters() == sum(p.size for p in model.parameters())
    at = 0
    for (name, p), g in zip(model.named_parameters(), model.gradients()):
        assert p.base is flat_p or np.shares_memory(p, flat_p), name
        assert np.shares_memory(g, flat_g) and not np.shares_memory(g, flat_p), name
        # consecutive, in order
        assert p.__array_interface__["data"][0] == flat_p.__array_interface__["data"][0] + 4 * at, name
        assert g.__array_interface__["data"][0] == flat_g.__array_interface__["data"][0] + 4 * at, name
        at += p.size
    assert at == flat_p.size
    # every module in the tree sees the same arena views
    for _, m in model.named_modules():
        for n, a in m.params.items():
            assert np.shares_memory(a, flat_p), n


def test_optimizer_step_changes_the_arena(rng):
    model = small_cnn("NHWC", rng)
    flat_p, flat_g = model.arena
    before = flat_p.copy()
    opt = Adam(model.parameters(), lr=1e-2)
    x = to_layout(randn(rng, 2, 3, 8, 8), "NHWC")
    train_step(model, nn.CrossEntropyLoss(), opt, x, rng.integers(0, 7, 2))
    # Adam moves exactly the parameters whose gradient is not zero (dead ReLUs leave some at 0)
    assert np.count_nonzero(flat_g) > flat_g.size // 2
    np.testing.assert_array_equal(flat_p != before, flat_g != 0)
    # the modules see the new values
    np.testing.assert_array_equal(model[0].params["weight"].reshape(-1), flat_p[:model[0].params["weight"].size])


def test_backward_writes_gradients_not_accumulates(rng):
    model = small_cnn("NCHW", rng)
    x = randn(rng, 2, 3, 8, 8)
    y = model.forward(x)
    g = randn(rng, *y.shape)
    model.backward(g)
    first = model.arena[1].copy()
    model.forward(x)
    model.backward(g)
    assert_bitwise(model.arena[1], first, "second backward (must overwrite, not add)")


def test_conv2d_weight_attribute_is_the_parameter(rng):
    # Conv2d.__init__ keeps `self.weight = self._param(...)` and then packs the parameters into an
    # arena, so the attribute is a stale copy: writing it does not change the layer, and it does
    # not follow training. See the report.
    c = nn.Conv2d(2, 3, 3, rng=rng)
    assert np.shares_memory(c.weight, c.params["weight"]), \
        "Conv2d.weight is not the parameter (a stale copy left behind by _pack)"


@pytest.mark.parametrize("kwargs, stride, padding, dilation", [
    ({}, (1, 1), (0, 0), (1, 1)),
    ({"stride": 2, "padding": 1, "dilation": 2}, (2, 2), (1, 1), (2, 2)),
    ({"stride": (2, 1), "padding": (1, 0), "dilation": (1, 3)}, (2, 1), (1, 0), (1, 3)),
    ({"padding": "same"}, (1, 1), "same", (1, 1)),
    ({"padding": "valid", "stride": 3}, (3, 3), "valid", (1, 1)),
])
def test_conv2d_geometry_attributes_are_pairs(kwargs, stride, padding, dilation):
    # As torch.nn.Conv2d keeps them: stride, padding (unless a string) and dilation as pairs, so
    # that `conv.stride == (2, 2)` holds for Conv2d(..., stride=2) as it does in torch (the layer
    # kept an int as given, while kernel_size was already a pair).
    c = nn.Conv2d(4, 6, 3, **kwargs)
    assert (c.kernel_size, c.stride, c.padding, c.dilation) == ((3, 3), stride, padding, dilation)
    assert all(type(v) is int for t in (c.stride, c.dilation) for v in t)


@pytest.mark.parametrize("kwargs, stride, padding", [
    ({}, (1, 1), (1, 1)),
    ({"stride": 2, "padding": 0}, (2, 2), (0, 0)),
    ({"stride": (1, 2), "padding": (1, 0)}, (1, 2), (1, 0)),
    ({"padding": "same"}, (1, 1), "same"),
])
def test_separable_conv_geometry_attributes_are_pairs(kwargs, stride, padding):
    d = nn.DepthwiseSeparableConv2d(4, 6, 3, **kwargs)
    assert (d.kernel_size, d.stride, d.padding) == ((3, 3), stride, padding)


# ---- train / eval and running statistics --------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_running_stats_follow_torch(layout, rng):
    C = 5
    m = nn.BatchNorm2d(C, momentum=0.1, layout=layout)
    rm, rv = np.zeros(C), np.ones(C)
    for step in range(3):
        x = to_layout(randn(rng, 4, C, 3, 5) * (step + 1) + step, layout)
        m.forward(x)
        ref = R.batch_norm_train(x, None, None, rm, rv, momentum=0.1, layout=layout)
        rm, rv = ref.running_mean, ref.running_var
        assert_close(m.buffers["running_mean"], rm, F32, length=60, steps=step + 1, what=f"running_mean {step}")
        assert_close(m.buffers["running_var"], rv, F32, length=60, steps=step + 1, what=f"running_var {step}")
        assert int(m.buffers["num_batches_tracked"]) == step + 1
    # the variance folded in is the unbiased one: n/(n-1) of the biased batch variance
    m2 = nn.BatchNorm2d(1, momentum=1.0, layout=layout)
    x = to_layout(np.array([1, 2, 3, 4], F32).reshape(1, 1, 2, 2), layout)
    m2.forward(x)
    assert_close(m2.buffers["running_var"], [np.var([1, 2, 3, 4], ddof=1)], F32, what="unbiased")


def test_eval_uses_running_stats_for_the_whole_model(rng):
    model = small_cnn("NCHW", rng)
    x = randn(rng, 4, 3, 8, 8)
    for _ in range(2):
        model.forward(randn(rng, 4, 3, 8, 8) + 1)
    bn = model[1]
    assert not np.allclose(bn.buffers["running_mean"], 0)
    model.eval()
    assert all(not m.training for m in model.modules())
    y = model.forward(x).copy()
    ref = ref_forward(model, x.astype(F64), params64(model))
    assert_close(y, ref, F32, length=8 * 8 * 9, what="eval forward")
    # eval output of one sample does not depend on the rest of the batch
    y0 = model.forward(np.ascontiguousarray(x[:1])).copy()
    assert_close(y0, y[:1], F32, length=8 * 8 * 9, what="batch independence")
    model.train()
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_eval_backward_through_batch_norm(rng, layout, activation):
    # eval mode is a fixed affine map per channel (then the ReLU): gradients in float64 by hand
    m = nn.BatchNorm2d(3, activation=activation, layout=layout)
    m.params["weight"][...] = rng.uniform(0.5, 2.0, 3)
    m.params["bias"][...] = rng.uniform(-1, 1, 3)
    m.buffers["running_mean"][...] = rng.uniform(-1, 1, 3)
    m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 3)
    m.eval()
    shape = (2, 3, 4, 5) if layout == "NCHW" else (2, 4, 5, 3)
    x = randn(rng, *shape)
    y = m.forward(x).copy()
    g = randn(rng, *shape)
    gx = m.backward(g).copy()
    cs = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    inv = 1.0 / np.sqrt(m.buffers["running_var"].astype(F64) + m.eps)
    xhat = (x - m.buffers["running_mean"].reshape(cs)) * inv.reshape(cs)
    pre = xhat * m.params["weight"].astype(F64).reshape(cs) + m.params["bias"].reshape(cs)
    gg = g * (pre > 0) if activation == "relu" else g.astype(F64)
    assert_close(y, np.maximum(pre, 0) if activation else pre, F32, what="eval forward")
    assert_close(gx, gg * (m.params["weight"].astype(F64) * inv).reshape(cs), F32, what="eval grad_input")
    assert_close(m.grads["weight"], np.sum(gg * xhat, axis=axes), F32, length=40, what="eval grad_weight")
    assert_close(m.grads["bias"], np.sum(gg, axis=axes), F32, length=40, what="eval grad_bias")


# ---- state dicts --------------------------------------------------------------------------------

def _trained(layout, rng, seed):
    model = resnet_tiny(layout, np.random.default_rng(seed), "batch")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    for _ in range(2):
        train_step(model, loss, opt, to_layout(randn(rng, 3, 3, 6, 6), layout), rng.integers(0, 5, 3))
    return model


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_round_trips(layout, rng, tmp_path):
    a = _trained(layout, rng, 1)
    b = resnet_tiny(layout, np.random.default_rng(2), "batch")
    state = a.state_dict()
    assert {"2.bn1.running_mean", "2.bn1.running_var", "2.bn1.num_batches_tracked", "3.downsample.1.weight"} \
        <= set(state)
    pnames = [n for n, _ in a.named_parameters()]
    assert [k for k in state if k in pnames] == pnames            # parameters in parameters() order
    arena_b = b.arena
    b.load_state_dict(state)
    assert b.arena[0] is arena_b[0], "load_state_dict must copy into the arena, not replace it"
    x = to_layout(randn(rng, 2, 3, 6, 6), layout)
    for mode in ("eval", "train"):
        getattr(a, mode)()
        getattr(b, mode)()
        assert_bitwise(b.forward(x).copy(), a.forward(x).copy(), f"{mode} output after load_state_dict")
    # state_dict returns copies
    state["0.weight"][...] = 0
    assert not np.all(a.state_dict()["0.weight"] == 0)
    # save / load
    c = resnet_tiny(layout, np.random.default_rng(3), "batch")
    path = tmp_path / "model.npz"
    a.save(path)
    c.load(path)
    for k, v in a.state_dict().items():
        assert_bitwise(c.state_dict()[k], v, k)
    a.eval()
    c.eval()
    assert_bitwise(c.forward(x).copy(), a.forward(x).copy(), "output after save/load")


def test_load_state_dict_errors(rng):
    model = resnet_tiny("NCHW", rng, "batch")
    good = model.state_dict()
    before = model.state_dict()
    missing = dict(good)
    del missing["2.conv1.weight"]
    with pytest.raises(ValueError, match="2.conv1.weight"):
        model.load_state_dict(missing)
    extra = dict(good, **{"9.weight": np.zeros(3, F32)})
    with pytest.raises(ValueError, match="9.weight"):
        model.load_state_dict(extra)
    bad = dict(good)
    bad["5.weight"] = np.zeros((3, 3), F32)
    with pytest.raises(ValueError, match="5.weight"):
        model.load_state_dict(bad)
    bad_ns = dict(good)
    bad_ns["2.bn1.weight"] = np.zeros(9, F32)
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict(bad_ns, strict=False)
    for k, v in model.state_dict().items():          # nothing was written by the failed loads
        assert_bitwise(v, before[k], k)
    # non-strict: the missing key is kept, the extra one ignored
    missing["5.bias"] = np.full(5, 7, F32)
    model.load_state_dict(missing, strict=False)
    assert np.all(model[5].params["bias"] == 7)
    assert_bitwise(model[2].conv1.params["weight"], before["2.conv1.weight"], "kept")


# ---- capture, release, guided backprop ----------------------------------------------------------

def test_capture_records_output_and_gradient(rng):
    model = small_cnn("NHWC", rng)
    c_bn = model.capture("1")
    c_relu = model.capture("2")
    c_last = model.capture("8")
    x = to_layout(randn(rng, 2, 3, 8, 8), "NHWC")
    y = model.forward(x)
    g = randn(rng, *y.shape)
    model.backward(g)
    for c in (c_bn, c_relu, c_last):
        assert c.output is not None and c.grad is not None and c.grad.shape == c.output.shape, c
    assert_bitwise(c_relu.output, np.maximum(c_bn.output, 0), "relu output = relu(bn output)")
    assert_bitwise(c_last.output, y, "last output")
    assert not np.shares_memory(c_last.output, y), "a capture must be a copy"
    assert_bitwise(c_last.grad, g, "gradient into the last layer's output")
    # the gradient into bn's output is the relu-masked gradient into relu's output
    assert np.any(c_relu.grad != 0)
    assert_bitwise(c_bn.grad, (c_relu.grad * (c_relu.output > 0)).astype(F32), "gradient through relu")
    # a new forward updates the captures; after release() nothing changes any more
    saved = c_last.output.copy()
    model.forward(to_layout(randn(rng, 2, 3, 8, 8), "NHWC"))
    assert not np.array_equal(c_last.output, saved)
    model.release()
    latest = c_last.output.copy()
    model.forward(x)
    assert_bitwise(c_last.output, latest, "after release")
    with pytest.raises(ValueError, match="layer_name"):
        model.capture("nope")


def test_capture_gradient_matches_a_split_model(rng):
    head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU())
    tail = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3, rng=rng))
    model = nn.Sequential(head, tail)
    c = model.capture("0")
    x = randn(rng, 2, 3, 6, 6)
    y = model.forward(x)
    g = randn(rng, *y.shape)
    model.backward(g)
    a = c.output.copy()
    tail2 = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    tail2.load_state_dict(tail.state_dict())
    tail2.forward(a)
    assert_bitwise(c.grad, tail2.backward(g, input_grad=True), "captured gradient")


def test_capture_inside_blocks(rng):
    model = resnet_tiny("NCHW", rng, "batch")
    c_bn = model.capture("3.bn1")
    c_ds = model.capture("3.downsample.0")
    y = model.forward(randn(rng, 2, 3, 6, 6))
    model.backward(randn(rng, *y.shape))
    for c in (c_bn, c_ds):
        assert c.output is not None and c.grad is not None and c.grad.shape == c.output.shape, c


def test_capture_on_the_shortcut_records_its_gradient(rng):
    model = resnet_tiny("NCHW", rng, "batch")
    c = model.capture("3.downsample")
    y = model.forward(randn(rng, 2, 3, 6, 6))
    model.backward(randn(rng, *y.shape))
    assert c.output is not None
    assert c.grad is not None, "no gradient recorded for the shortcut"


def test_guided_backprop_relu(rng):
    m = nn.ReLU()
    x = _pushed(randn(rng, 3, 4, 5, 6), rng)
    g = randn(rng, *x.shape)
    y = m.forward(x)
    assert_bitwise(m.backward(g).copy(), (g * (y > 0)).astype(F32), "plain")
    m.set_guided_backprop(True)
    assert_bitwise(m.backward(g).copy(), (np.maximum(g, 0) * (y > 0)).astype(F32), "guided")
    m.set_guided_backprop(False)
    assert_bitwise(m.backward(g).copy(), (g * (y > 0)).astype(F32), "plain again")


@pytest.mark.parametrize("kind", ["batch", "group"])
def test_guided_backprop_fused_relu(kind, rng):
    C = 4
    m = nn.BatchNorm2d(C, activation="relu") if kind == "batch" else nn.GroupNorm(2, C, activation="relu")
    x = randn(rng, 2, C, 3, 3)
    g = randn(rng, 2, C, 3, 3)
    m.forward(x)
    plain_pos = m.backward(np.maximum(g, 0)).copy()
    plain_pos_w = m.grads["weight"].copy()
    m.set_guided_backprop(True)
    assert_bitwise(m.backward(g).copy(), plain_pos, f"guided {kind}")
    assert_bitwise(m.grads["weight"], plain_pos_w, f"guided {kind} weight grad")
    # a whole model: every ReLU (fused or not) is guided
    model = resnet_tiny("NCHW", rng, kind)
    model.set_guided_backprop(True)
    assert all(m.guided for m in model.modules() if hasattr(m, "guided"))


# ---- buffers reused -----------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["small_cnn", "resnet_batch", "dws_net"])
def test_outputs_reused_and_no_new_arena(net, rng):
    """Documented (cnnkit.nn.module): outputs are allocated once per input shape and reused, an
    output stays valid until the module's next forward. A training step after the first keeps
    the arena and every parameter object."""
    model, shape = NETS[net]("NCHW", rng)
    x1, x2 = randn(rng, *shape), randn(rng, *shape)
    y1 = model.forward(x1)
    y1_copy = y1.copy()
    y2 = model.forward(x2)
    assert y2 is y1, "second forward with the same shape must return the same array"
    assert not np.array_equal(y2, y1_copy)
    # another shape: a new buffer
    y3 = model.forward(randn(rng, shape[0] + 1, *shape[1:]))
    assert y3 is not y1 and y3.shape[0] == shape[0] + 1
    loss = nn.CrossEntropyLoss()
    opt = Adam(model.parameters(), lr=1e-3)
    labels = rng.integers(0, y1.shape[1], shape[0])
    train_step(model, loss, opt, x1, labels)
    arena = model.arena
    params = model.parameters()
    grads = model.gradients()
    g_buf = loss.backward()
    train_step(model, loss, opt, x2, labels)
    assert model.arena is arena and model.arena[0] is arena[0] and model.arena[1] is arena[1]
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert all(a is b for a, b in zip(model.gradients(), grads))
    assert loss.backward() is g_buf


# ---- threads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("net", ["small_cnn", "resnet_batch", "resnet_group", "bottleneck_batch", "dws_net"])
def test_training_step_thread_invariant(net, layout):
    results = []
    for n in (1, 2):
        rng = np.random.default_rng(7)
        model, shape = NETS[net](layout, rng)
        x = to_layout(randn(rng, *shape), layout)
        with num_threads(n):
            y = model.forward(x)
            labels = rng.integers(0, y.shape[1], shape[0])
            loss = nn.CrossEntropyLoss(label_smoothing=0.1)
            v = loss.forward(y, labels)
            gx = model.backward(loss.backward(), input_grad=True).copy()
            grads = model.arena[1].copy()
            Adam(model.parameters(), lr=1e-3).step(model.gradients())
            bufs = {k: v for k, v in model.state_dict().items() if "running" in k}
        results.append((y.copy(), v, gx, grads, model.arena[0].copy(), bufs))
    (y1, v1, gx1, g1, p1, b1), (y2, v2, gx2, g2, p2, b2) = results
    assert_bitwise(y2, y1, "output")
    assert v1 == v2
    assert_bitwise(gx2, gx1, "input gradient")
    assert_bitwise(g2, g1, "parameter gradients")
    assert_bitwise(p2, p1, "parameters after Adam")
    for k in b1:
        assert_bitwise(b2[k], b1[k], k)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_inputs_name_the_layer(rng):
    model = small_cnn("NCHW", rng)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*channels"):
        model.forward(randn(rng, 2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*4-D"):
        model.forward(randn(rng, 3, 8, 8))
    with pytest.raises(TypeError, match=r"layer 0 \(Conv2d\).*float32"):
        model.forward(np.zeros((2, 3, 8, 8), F64))
    nhwc = small_cnn("NHWC", rng)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*last axis"):
        nhwc.forward(randn(rng, 2, 3, 8, 8))           # an NCHW array given to an NHWC model
    # a later layer: Linear with the wrong number of features
    m = nn.Sequential(nn.Conv2d(3, 4, 3, rng=rng), nn.Flatten(), nn.Linear(10, 2, rng=rng))
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\).*10"):
        m.forward(randn(rng, 1, 3, 5, 5))
    # nested: the outer index
    res = resnet_tiny("NCHW", rng)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\)"):
        res.forward(randn(rng, 2, 5, 6, 6))
    block = nn.Sequential(nn.ResidualBlock(4, 4, rng=rng))
    with pytest.raises(ValueError, match=r"layer 0 \(ResidualBlock\)"):
        block.forward(randn(rng, 2, 3, 6, 6))
    # pooling window larger than the input
    with pytest.raises(ValueError, match=r"layer 0 \(MaxPool2d\).*window"):
        nn.Sequential(nn.MaxPool2d(5)).forward(randn(rng, 1, 2, 3, 3))
    with pytest.raises(TypeError, match="x"):
        nn.MaxPool2d(2).forward(np.zeros((1, 2, 4, 4), F64))
    with pytest.raises(TypeError, match="x"):
        nn.Linear(3, 2, rng=rng).forward(np.zeros((1, 3), F64))
    with pytest.raises(ValueError, match="x"):
        nn.BatchNorm2d(3).forward(randn(rng, 2, 4, 3, 3))


def test_nested_error_names_the_outer_layer(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.ResidualBlock(5, 8, 2, rng=rng))
    with pytest.raises(ValueError, match=r"layer 2 \(ResidualBlock\)"):
        model.forward(randn(rng, 1, 3, 6, 6))


def test_float64_input_to_a_leading_relu_names_layer_0(rng):
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, rng=rng))
    with pytest.raises(TypeError, match=r"layer 0 \(ReLU\)"):
        model.forward(np.zeros((1, 3, 5, 5), F64))


def test_bad_loss_inputs(rng):
    loss = nn.CrossEntropyLoss()
    z = randn(rng, 4, 5)
    with pytest.raises(ValueError, match="target.*\\[0, 5\\)"):
        loss.forward(z, np.array([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="target"):
        loss.forward(z, np.array([0, -1, 2, 2]))
    with pytest.raises(ValueError, match="target.*4 labels"):
        loss.forward(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="target.*soft"):
        loss.forward(z, np.full((4, 4), 0.25, F32))
    with pytest.raises(ValueError, match="target.*soft"):
        loss.forward(z, np.full((3, 5), 0.2, F32))
    with pytest.raises(TypeError, match="target"):
        loss.forward(z, np.zeros((4, 5), np.int64))
    with pytest.raises(TypeError, match="logits"):
        loss.forward(z.astype(F64), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="^logits: "):  # a wrong shape is a wrong value
        loss.forward(z[0], np.array([0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="forward"):
        nn.CrossEntropyLoss().backward()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="layout"):
        nn.Conv2d(3, 4, 3, layout="CHWN")
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="num_groups"):
        nn.GroupNorm(3, 8)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="activation"):
        nn.BatchNorm2d(3, activation="gelu")
    with pytest.raises(TypeError, match=r"modules\[1\]"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 3, rng=0)
    with pytest.raises(ValueError, match="norm"):
        nn.ResidualBlock(4, 4, norm="layer")


CONV_GEOMETRY_BAD = [
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(3, 0)), ValueError, "kernel_size"),
    (dict(kernel_size=-1), ValueError, "kernel_size"),
    (dict(kernel_size=2.5), TypeError, "kernel_size"),
    (dict(kernel_size="3"), TypeError, "kernel_size"),
    (dict(kernel_size=True), TypeError, "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
    (dict(kernel_size=None), TypeError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, 0)), ValueError, "stride"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=(0, -2)), ValueError, "padding"),
    (dict(padding=0.5), TypeError, "padding"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "padding"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(dilation=(2, 0)), ValueError, "dilation"),
    (dict(dilation=1.0), TypeError, "dilation"),
    (dict(in_channels=3.0), TypeError, "in_channels"),
    (dict(out_channels=0), ValueError, "out_channels"),
]


@pytest.mark.parametrize("cls,kwargs,exc,match",
                         [(c, *case) for c in ("Conv2d", "DepthwiseSeparableConv2d") for case in CONV_GEOMETRY_BAD
                          if c == "Conv2d" or "dilation" not in case[0]],     # no dilation argument
                         ids=lambda v: str(v) if isinstance(v, (str, dict)) else "")
def test_conv_geometry_is_checked_at_construction(cls, kwargs, exc, match):
    """kernel_size / stride / padding / dilation are checked by the constructor (as conv2d checks
    them), not left to fail (or build a (4, 3, 0, 0) weight) until forward."""
    args = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)
    args.update(kwargs)
    with pytest.raises(exc, match=rf"^{match}\b"):
        getattr(nn, cls)(**args)


def test_conv_geometry_accepts_what_conv2d_accepts(rng):
    x = randn(rng, 2, 3, 9, 8)
    for kw in (dict(kernel_size=np.int64(3)), dict(kernel_size=[3, 1], stride=(2, 1), padding=(1, 0)),
               dict(kernel_size=4, padding="same"), dict(kernel_size=3, padding="valid", dilation=(2, 1))):
        y = nn.Conv2d(3, 4, **kw, rng=rng).forward(x)
        assert y.shape[:2] == (2, 4)
    assert nn.Conv2d(3, 4, np.int64(3), rng=rng).kernel_size == (3, 3)
    assert nn.DepthwiseSeparableConv2d(3, 4, [5, 3], 2, (2, 1), rng=rng).forward(x).shape == (2, 4, 5, 4)


def test_pool_and_size_arguments_of_a_wrong_type_are_type_errors():
    with pytest.raises(TypeError, match="^kernel_size"):
        nn.MaxPool2d(2.5)
    with pytest.raises(TypeError, match="^stride"):
        nn.AvgPool2d(2, stride="2")
    with pytest.raises(ValueError, match="^kernel_size"):
        nn.MaxPool2d(0)
    with pytest.raises(TypeError, match="^in_features"):
        nn.Linear(2.0, 3)
    with pytest.raises(ValueError, match="^num_features"):
        nn.BatchNorm2d(0)


def test_bad_input_leaves_model_untouched(rng):
    model = small_cnn("NCHW", rng)
    state = model.state_dict()
    with pytest.raises(ValueError):
        model.forward(randn(rng, 2, 4, 8, 8))
    for k, v in model.state_dict().items():
        assert_bitwise(v, state[k], k)
    x = randn(rng, 2, 3, 8, 8)
    snap = x.copy()
    model.forward(x)
    assert_bitwise(x, snap, "input modified by forward")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_weight_and_ignore_index(rng, reduction, smoothing):
    z = randn(rng, 8, 5) * 3
    y = rng.integers(0, 5, 8)
    plain = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    ones = nn.CrossEntropyLoss(weight=np.ones(5), reduction=reduction, label_smoothing=smoothing)
    v0, v1 = plain.forward(z, y), ones.forward(z, y)  # the compiled and the float64 NumPy paths
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(ones.backward(), plain.backward(), rtol=1e-5, atol=1e-7)
    # ignored rows contribute nothing: the same as dropping them
    yi = y.copy()
    yi[[2, 5]] = -100
    keep = yi != -100
    ign = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    sub = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    vi, vs = ign.forward(z, yi), sub.forward(np.ascontiguousarray(z[keep]), y[keep])
    if reduction == "none":
        np.testing.assert_allclose(vi[keep], vs, rtol=1e-6)
        assert np.all(vi[~keep] == 0)
    else:
        np.testing.assert_allclose(vi, vs, rtol=1e-6)
    np.testing.assert_allclose(ign.backward()[keep], sub.backward(), rtol=1e-5, atol=1e-7)
    assert np.all(ign.backward()[~keep] == 0)
    # class weights: a class weighted 0 contributes nothing to the loss
    w = np.ones(5)
    w[y[0]] = 0.0
    wl = nn.CrossEntropyLoss(weight=w, reduction="sum")
    only = y != y[0]
    np.testing.assert_allclose(wl.forward(z, y), nn.CrossEntropyLoss(reduction="sum").forward(
        np.ascontiguousarray(z[only]), y[only]), rtol=1e-6)


def test_cross_entropy_bad_weight(rng):
    with pytest.raises(ValueError, match="weight"):
        nn.CrossEntropyLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="weight"):
        nn.CrossEntropyLoss(weight=np.ones(3)).forward(randn(rng, 2, 4), np.array([0, 1]))
    with pytest.raises(TypeError, match="ignore_index"):
        nn.CrossEntropyLoss(ignore_index=1.5)


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("include", [False, True])
def test_avg_pool_ceil_mode_and_count_include_pad_brute_force(rng, ceil, include):
    x = randn(rng, 2, 3, 7, 8).astype(F64)
    k, s, p = 3, 2, 1
    m = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include)
    y = m.forward(x.astype(F32))

    def out(n):  # torch's rule, written out
        o = (-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1
        return o - 1 if ceil and (o - 1) * s >= n + p else o
    OH, OW = out(7), out(8)
    assert y.shape == (2, 3, OH, OW)
    ref = np.zeros((2, 3, OH, OW))
    for i in range(OH):
        for j in range(OW):
            h0, w0 = i * s - p, j * s - p
            ha, hb, wa, wb = max(h0, 0), min(h0 + k, 7), max(w0, 0), min(w0 + k, 8)
            total = x[:, :, ha:hb, wa:wb].sum(axis=(2, 3))
            div = (min(h0 + k, 7 + p) - h0) * (min(w0 + k, 8 + p) - w0) if include else (hb - ha) * (wb - wa)
            ref[:, :, i, j] = total / div
    assert_close(y, ref, F32, length=9, what="avg pool")


@pytest.mark.parametrize("name", ["3", "3.conv2", "2.bn1", "0", "4.downsample.1"])
def test_backward_until_gives_the_captured_gradient(name, rng):
    """Sequential.backward(until=name) stops once the gradient at that layer is known and gives
    its captures exactly what a full backward gives them."""
    from cnnkit import models
    model = models.resnet_small(3, 5, widths=(8, 16, 16), blocks=(1, 1, 1), seed=3)
    model.eval()
    x = randn(rng, 2, 3, 12, 12)
    g = randn(rng, 2, 5)
    c = model.capture(name)
    model.forward(x)
    model.backward(g, input_grad=True)
    full = c.grad.copy()
    c.grad = None
    model.forward(x)
    assert model.backward(g, until=name) is None
    assert_bitwise(c.grad, full, f"gradient at {name}")
    model.release()


def test_backward_until_rejects_unknown_layer(rng):
    from cnnkit import models
    model = models.resnet_small(3, 5, widths=(8, 16), blocks=(1, 1), seed=0)
    model.forward(randn(rng, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="until"):
        model.backward(randn(rng, 1, 5), until="9")
