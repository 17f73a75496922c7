"""The stem kernel's statistics epilogue (``conv2d_fused(stats=True)`` on the
``conv2d_stem_f32_nhwc`` entry: a dense NHWC float32 convolution with at most 4 input channels
and 16-64 outputs).

* output bitwise the plain stem pass, statistics against the float64 reference of the suite's
  tolerance table, the same bits at 1 and 2 threads, every ISA level, batch sizes on both sides
  of the per-image units (N >= 16: one unit an image; smaller: bands of rows);
* the kernel that ran is the stem entry; a prologue, residual or ReLU on a stem problem still
  declines to the reference path (a network's first convolution reads the image);
* the weight gradient that reads a batch norm's backward apply pass (``conv2d_backward_weight_bn``)
  bitwise the apply pass followed by the plain weight gradient, at 1 and 2 threads and every ISA
  level, its convolution against float64; in resnext_small and mobilenet_small the stem's norm
  hands the pass over only where nothing else reads the gradient (captures, injections,
  ``until``, an input gradient), with the same gradients as with the hand-over off.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import _core
from cnnkit.ops import fused as F
from conftest import assert_bitwise, assert_close, assert_sum_close, num_threads


def _case(N, C, K, H, W, k, s, p, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, H, W, C)) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal((K, C, k, k)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, dict(stride=s, padding=p, layout="NHWC")


@pytest.mark.parametrize("N,C,K,H,W,k,s,p", [
    (2, 3, 32, 9, 10, 3, 1, 1), (1, 2, 16, 11, 9, 5, 2, 2), (3, 4, 64, 7, 8, 3, 1, 1),
    (17, 3, 48, 6, 5, 3, 1, 1), (5, 2, 16, 13, 1, 3, 2, 1)])
def test_stem_statistics_epilogue(N, C, K, H, W, k, s, p, isa):
    x, w, b, kw = _case(N, C, K, H, W, k, s, p, N * 100 + K)
    geom = cnnkit.ops.conv._geom(x.shape, w.shape, s, p, 1, 1, "NHWC", np.float32).core()
    plain_entry = _core.conv_registry()[_core.conv_registry_select(geom, "float32", "forward")][0]
    assert plain_entry.startswith("conv2d_stem_f32_nhwc")
    outs = {}
    for t in (1, 2):
        with num_threads(t):
            outs[t] = F.conv2d_fused(x, w, b, stats=True, **kw)
            assert F.last_kernel == plain_entry
    for a, c in zip(outs[1], outs[2]):
        assert_bitwise(a, c, "1 and 2 threads")
    y, mean, var = outs[1]
    assert_bitwise(y, cnnkit.conv2d(x, w, b, **kw), "output (the plain stem pass)")
    y64 = y.astype(np.float64)
    count = y.shape[0] * y.shape[1] * y.shape[2]
    assert_close(mean, y64.mean(axis=(0, 1, 2)), np.float32, length=count, what="mean")
    assert_close(var, y64.var(axis=(0, 1, 2)), np.float32, length=count, what="variance")


def test_stem_declines_prologue_residual_and_relu():
    x, w, b, kw = _case(2, 3, 32, 8, 8, 3, 1, 1, 0)
    C = x.shape[3]
    F.conv2d_fused(x, w, b, stats=True, **kw)
    assert F.last_kernel.startswith("conv2d_stem_f32_nhwc")
    y_ref = cnnkit.conv2d(x, w, b, **kw)
    for extra in (dict(pre_scale=np.ones(C, np.float32), pre_shift=np.zeros(C, np.float32)),
                  dict(residual=np.ones_like(y_ref)), dict(post_relu=True)):
        y = F.conv2d_fused(x, w, b, **kw, **extra)
        assert F.last_kernel == "reference"
        expect = y_ref + (1 if "residual" in extra else 0)
        assert_close(y, np.maximum(expect, 0) if "post_relu" in extra else expect, np.float32, length=27,
                     what=str(sorted(extra)))


# ---- the weight gradient reading a batch norm's backward apply pass -----------------------------
# (``_core.conv2d_backward_weight_bn``: the stem kernel evaluates the norm's pass dy = A*g - B -
# (z - mean)*D a chunk of rows at a time instead of reading a written dy)

def _bn_case(N, C, K, H, W, k, s, p, seed):
    """A stem problem with a batch norm (ReLU) on its output z: the masked gradient g at the
    norm's output, the norm's mean and its apply pass's float64 coefficients."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, H, W, C)) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal((K, C, k, k)).astype(np.float32)
    geom = cnnkit.ops.conv._geom(x.shape, w.shape, s, p, 1, 1, "NHWC", np.float32)
    z = cnnkit.conv2d(x, w, stride=s, padding=p, layout="NHWC")
    z64 = z.astype(np.float64)
    mean = z64.mean(axis=(0, 1, 2))
    invstd = 1.0 / np.sqrt(z64.var(axis=(0, 1, 2)) + 1e-5)
    gamma = rng.random(K) + 0.5
    g = (rng.standard_normal(z.shape) * (rng.random(z.shape) > 0.4)).astype(np.float32)  # masked
    count = z.size // K
    sg = g.astype(np.float64).sum(axis=(0, 1, 2))
    sgx = (g.astype(np.float64) * (z64 - mean)).sum(axis=(0, 1, 2))
    A = gamma * invstd
    return x, w, geom, z, g, mean, A, A * sg / count, A * invstd * invstd * sgx / count


def _apply_then_plain(x, w, geom, z, g, mean, A, B, D, bias):
    """The unfused passes: the norm's apply pass writes dy, the plain weight gradient reads it."""
    N, Ho, Wo, K = z.shape
    dy = np.empty_like(z)
    _core.norm_backward_apply(g, z, None, dy, None, N, K, Ho * Wo, True, False, mean, A, B, D)
    dw = np.empty_like(w)
    db = np.empty(K, np.float32) if bias else None
    _core.conv_backward_weight(dy, x, dw, db, geom.core())
    return dy, dw, db


def _check_bn_weight_grad(N, C, K, H, W, k, s, p, seed, bias=True):
    x, w, geom, z, g, mean, A, B, D = _bn_case(N, C, K, H, W, k, s, p, seed)
    entry = _core.conv_registry()[_core.conv_registry_select(geom.core(), "float32", "weight")][0]
    assert entry.startswith("conv2d_stem_f32_nhwc")
    outs = {}
    for t in (1, 2):
        with num_threads(t):
            dw = np.full_like(w, np.nan)
            db = np.full(K, np.nan, np.float32) if bias else None
            name = _core.conv2d_backward_weight_bn(g, z, mean, A, B, D, x, dw, db, geom.core())
            assert name == entry
            outs[t] = (dw, db)
            dy, dw_ref, db_ref = _apply_then_plain(x, w, geom, z, g, mean, A, B, D, bias)
            assert_bitwise(dw, dw_ref, f"weight gradient vs the apply pass then the plain one ({t} threads)")
            if bias:
                assert_bitwise(db, db_ref, f"bias gradient vs the apply pass then the plain one ({t} threads)")
    assert_bitwise(outs[1][0], outs[2][0], "weight gradient at 1 and 2 threads")
    # the convolution's part against float64 (on the apply pass's float32 dy)
    d64, x64 = dy.astype(np.float64), x.astype(np.float64)
    Ho, Wo = z.shape[1], z.shape[2]
    xp = np.pad(x64, ((0, 0), (p, p), (p, p), (0, 0)))
    ref = np.empty(w.shape)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s, :]
            ref[:, :, i, j] = np.einsum("nhwk,nhwc->kc", d64, patch)
    assert_close(outs[1][0], ref, np.float32, length=N * Ho * Wo, what="weight gradient vs float64")
    if bias:
        # dy is a batch norm's input gradient, whose sum over the pixels is zero per channel by
        # construction: the bias gradient is a fully cancelled float32 sum, so its error is bounded
        # by the terms' magnitudes (up to A * |g|), not by |ref| ~ 0 (N=2, C=3, K=48, 11x2, seed
        # 947: terms up to 51, the float32 sum -1.9e-5 against -7.5e-6; the |ref| bound was 6.6e-6)
        assert_sum_close(outs[1][1], d64.sum(axis=(0, 1, 2)), np.abs(d64).sum(axis=(0, 1, 2)), N * Ho * Wo,
                         "bias gradient")


@pytest.mark.parametrize("N,C,K,H,W,k,s,p", [
    (8, 3, 64, 32, 32, 3, 1, 1),    # pieces of 16 rows in chunks of 8 (the chunk loop and its prefetch)
    (4, 3, 32, 32, 32, 3, 2, 1),    # stride 2, two chunks a piece
    (3, 4, 16, 12, 13, 5, 1, 2),    # the row kernels (5x5)
    (2, 2, 48, 9, 11, 1, 1, 0),     # 1x1
    (20, 3, 16, 4, 5, 3, 1, 1),     # more pieces than chunks
])
def test_weight_grad_bn_apply_matches_unfused(N, C, K, H, W, k, s, p, isa):
    _check_bn_weight_grad(N, C, K, H, W, k, s, p, N * 31 + K)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 6), C=st.integers(2, 4), K=st.sampled_from([16, 32, 48, 64]), H=st.integers(1, 14),
       W=st.integers(1, 14), k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2), bias=st.booleans(),
       seed=st.integers(0, 2**16))
@example(N=2, C=3, K=48, H=11, W=2, k=1, s=1, bias=True, seed=947)  # a fully cancelled bias gradient
def test_weight_grad_bn_apply_hypothesis(N, C, K, H, W, k, s, bias, seed):
    p = k // 2
    if (H + 2 * p - k) // s + 1 < 1 or (W + 2 * p - k) // s + 1 < 1:
        return
    _check_bn_weight_grad(N, C, K, H, W, k, s, p, seed, bias)


def test_weight_grad_bn_apply_declines_other_kernels_and_bad_input():
    x, w, geom, z, g, mean, A, B, D = _bn_case(2, 8, 16, 6, 6, 3, 1, 1, 0)  # 8 input channels: not a stem
    with pytest.raises(ValueError, match="only the stem kernel"):
        _core.conv2d_backward_weight_bn(g, z, mean, A, B, D, x, np.empty_like(w), None, geom.core())
    x, w, geom, z, g, mean, A, B, D = _bn_case(2, 3, 16, 6, 6, 3, 1, 1, 0)
    dw = np.zeros_like(w)
    with pytest.raises(ValueError, match="z"):
        _core.conv2d_backward_weight_bn(g, z[:1], mean, A, B, D, x, dw, None, geom.core())
    with pytest.raises(ValueError, match="mean"):
        _core.conv2d_backward_weight_bn(g, z, mean[:3], A, B, D, x, dw, None, geom.core())
    with pytest.raises(ValueError, match="grad_weight"):
        _core.conv2d_backward_weight_bn(g, z, mean, A, B, D, x, z, None, geom.core())
    assert not dw.any()


# ---- in the network: the stem's batch norm hands its apply pass to the stem's weight gradient ----

def _stem_net(kind):
    from cnnkit import models
    return getattr(models, kind)(layout="NHWC", seed=3)


def _grads(model, x, gy, monkeypatch, fused, **kw):
    """Two steps' gradients (and what backward returns), with the deferral on or off."""
    from cnnkit.nn import layers as L
    if not fused:
        monkeypatch.setattr(L.BatchNorm2d, "_apply_taker", lambda self: None)
    calls = []
    real = _core.conv2d_backward_weight_bn

    def spy(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(_core, "conv2d_backward_weight_bn", spy)
    out = None
    for _ in range(2):
        model.forward(x)
        out = model.backward(gy, **kw)
    monkeypatch.undo()
    return [a.copy() for a in model.gradients()], out, len(calls)


@pytest.mark.parametrize("kind", ["resnext_small", "mobilenet_small"])
@pytest.mark.parametrize("mode", ["plain", "capture", "inject", "input_grad", "until"])
def test_stem_takes_the_norm_apply_pass(kind, mode, monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 16, 16, 3)).astype(np.float32)
    res = {}
    for fused in (True, False):
        m = _stem_net(kind)
        y = m.forward(x)
        gy = rng.standard_normal(y.shape).astype(np.float32) if fused else res[True][3]
        kw, cap = {}, None
        if mode == "capture":
            cap = m.capture("0")
        elif mode == "inject":
            kw["inject"] = {"0": np.random.default_rng(1).standard_normal(m.layers[0]._y_last.shape).astype(np.float32)}
        elif mode == "input_grad":
            kw["input_grad"] = True
        elif mode == "until":
            cap = m.capture("0")
            kw["until"] = "0"
        grads, out, calls = _grads(m, x, gy, monkeypatch, fused, **kw)
        res[fused] = (grads, out, cap.grad.copy() if cap is not None else None, gy, calls)
    (ga, oa, ca, _, calls), (gb, ob, cb, _, _) = res[True], res[False]
    # the stem's weight gradient evaluated the pass only where nothing else reads the gradient
    assert calls == (2 if mode == "plain" else 0)
    for a, b in zip(ga, gb):
        assert_bitwise(a, b, f"parameter gradients, deferral on and off ({mode})")
    if oa is not None or ob is not None:
        assert_bitwise(oa, ob, "input gradient")
    if ca is not None:
        assert_bitwise(ca, cb, "captured gradient at the stem's output")
