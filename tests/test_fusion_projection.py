"""Batch norms left to a residual block's last norm, never written: a projection shortcut's
(``_Residual._shortcut_forward``: the shortcut ``Sequential(Conv2d, BatchNorm2d)`` runs its
convolution with the statistics epilogue and the block's last norm adds ``fma(a, z, b)`` per
channel, ``norm_apply(..., residual_affine=)``), and the norm before an identity bottleneck block
(``BottleneckBlock._forward_pre``: conv1 takes it as its prologue, the last norm adds
``max(fma(a, z, b), 0)``, and conv1's fused input gradient adds the shortcut's gradient and
masks the sum, ``Conv2d._prologue_backward_add``).

* the kernel: ``norm_apply`` with ``residual_affine`` against float64 (the single-rounding fma of
  the residual term), both layouts, with and without ReLU, every ISA level, bitwise at 1 and 2
  threads; bad input;
* the blocks (bottleneck and basic, both layouts, training and eval) equal to the blocks with the
  shortcut written, to the tolerance table (the shortcut's output in the fma form instead of the
  norm's apply form), gradients too; captures at the shortcut or its layers, and a channel whose
  ``|mean| / std`` is too large, keep the norm written;
* resnext_small with the norm before an identity block left to it, against the same model with
  that norm written (training and eval, both layouts), the compiled backward taken; captures at
  the norm keep it written; ``inject`` at the norm and ``until`` still work.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import _core, nn
from cnnkit.nn import layers as L
from conftest import assert_bitwise, assert_close, num_threads


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rrelu", [False, True])
@pytest.mark.parametrize("N,C,S", [(2, 3, 5), (3, 17, 9), (1, 32, 16)])
def test_norm_apply_residual_affine(nhwc, relu, rrelu, N, C, S, isa):
    rng = np.random.default_rng(N * C + S)
    shape = (N, S, C) if nhwc else (N, C, S)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    r = (rng.standard_normal(shape) * 2 - 0.5).astype(np.float32)
    mean, invstd = rng.standard_normal(C), rng.random(C) + 0.5
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    ra = np.concatenate([rng.random(C) + 0.5, rng.standard_normal(C)]).astype(np.float32)
    outs = {}
    for t in (1, 2):
        y = np.full(shape, np.nan, np.float32)
        with num_threads(t):
            _core.norm_apply(x, y, r, N, C, S, nhwc, False, mean, invstd, w, b, relu, ra, rrelu)
        outs[t] = y
    assert_bitwise(outs[1], outs[2], "1 and 2 threads")
    ch = (slice(None), None) if not nhwc else (None, slice(None))
    ax = (None,) + ch
    a64, b64 = ra[:C].astype(np.float64)[ax], ra[C:].astype(np.float64)[ax]
    ref = ((x - mean[ax]) * invstd[ax]) * w.astype(np.float64)[ax] + b.astype(np.float64)[ax]
    term = np.float32(a64 * r + b64)  # the residual term rounded once (fma)
    ref = ref + (np.maximum(term, 0) if rrelu else term)
    if relu:
        ref = np.maximum(ref, 0)
    assert_close(outs[1], ref, np.float32, length=4, what="norm apply with the residual's affine map")


def test_norm_apply_residual_affine_bad_input():
    x = np.ones((2, 3, 4), np.float32)
    y = np.empty_like(x)
    m, i = np.zeros(3), np.ones(3)
    ra = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="residual_affine"):
        _core.norm_apply(x, y, None, 2, 3, 4, False, False, m, i, None, None, False, ra)
    with pytest.raises(ValueError, match="residual_affine"):
        _core.norm_apply(x, y, x, 2, 3, 4, False, False, m, i, None, None, False, ra[:5])
    with pytest.raises(TypeError, match="residual_affine"):
        _core.norm_apply(x, y, x, 2, 3, 4, False, False, m, i, None, None, False, ra.astype(np.float64))
    with pytest.raises(ValueError, match="residual_relu"):
        _core.norm_apply(x, y, x, 2, 3, 4, False, False, m, i, None, None, False, None, True)


def _plain_shortcut(self, x, last_conv, last_norm):
    return (x if self.shortcut is None else self.shortcut(x)), None


def _block(kind, layout):
    rng = np.random.default_rng(4)
    if kind == "bottleneck":
        return nn.BottleneckBlock(16, 32, 8, 2, groups=2, layout=layout, rng=rng)
    return nn.ResidualBlock(16, 32, 2, layout=layout, rng=rng)


def _run(block, x, steps=2):
    out = []
    for _ in range(steps):
        y = block(x)
        g = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
        gx = block.backward(g)
        out = [y.copy(), gx.copy()] + [p.copy() for p in block.gradients()]
    return out


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("train", [True, False])
def test_block_leaves_the_projection_norm_to_the_last_norm(kind, layout, train, monkeypatch):
    x = np.random.default_rng(1).standard_normal((4, 16, 9, 9)).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    taken = []
    real = L.BatchNorm2d._fused_forward

    def spy(self, xx, stats, residual, defer, residual_affine=None, residual_relu=False):
        taken.append(residual_affine is not None)
        return real(self, xx, stats, residual, defer, residual_affine, residual_relu)

    monkeypatch.setattr(L.BatchNorm2d, "_fused_forward", spy)
    b = _block(kind, layout)
    if not train:
        b(x)  # running statistics off their start
        b.eval()
    got = _run(b, x)
    assert any(taken), "the last norm took the shortcut's affine map"
    sc_norm = b.shortcut.layers[1]
    assert sc_norm._y is None  # never written
    monkeypatch.setattr(L._Residual, "_shortcut_forward", _plain_shortcut)
    ref_block = _block(kind, layout)
    if not train:
        ref_block(x)
        ref_block.eval()
    want = _run(ref_block, x)
    for i, (a, c) in enumerate(zip(got, want)):
        assert_close(a, c, np.float32, length=64, what=f"output / gradients [{i}]")


def test_captures_and_large_means_keep_the_shortcut_norm_written(monkeypatch):
    x = np.random.default_rng(1).standard_normal((4, 9, 9, 16)).astype(np.float32)
    b = _block("bottleneck", "NHWC")
    cap = b.shortcut.layers[1]
    c = b.capture("downsample.1")
    b(x)
    assert cap._y is not None and c.output is not None
    b.release()
    b(x)
    assert cap._y is None
    # a channel whose mean is far from zero in units of its std: the norm declines the fma form
    b.shortcut.layers[0].params["weight"][0] = 0.0
    b.shortcut.layers[0].params["weight"][0, 0] = 1e-4
    xb = x + np.float32(100.0)
    b(xb)
    assert cap._y is not None


def _pre_model(layout, on, monkeypatch):
    from cnnkit import models
    if not on:
        monkeypatch.setattr(L._Residual, "_takes_prologue", lambda self, norm: False)
    return models.resnext_small(layout=layout, seed=5)


def _x(layout, N=4):
    x = np.random.default_rng(3).standard_normal((N, 3, 16, 16)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mode", ["plain", "inject", "until", "capture"])
def test_identity_block_takes_the_norm_as_its_prologue(layout, train, mode, monkeypatch):
    x = _x(layout)
    res = {}
    for on in (True, False):
        with monkeypatch.context() as mp:
            used = []
            real = L.Conv2d._prologue_backward_add

            def spy(self, g, a):
                out = real(self, g, a)
                used.append(out is not None)
                return out

            mp.setattr(L.Conv2d, "_prologue_backward_add", spy)
            m = _pre_model(layout, on, mp)
            if not train:
                m.forward(x)
                m.eval()
            cap = m.capture("1") if mode == "capture" else None
            outs = []
            for _ in range(2):
                y = m.forward(x)
                gy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
                kw = {}
                if mode == "inject":
                    kw["inject"] = {"1": np.random.default_rng(2).standard_normal(
                        m.layers[0]._y_last.shape).astype(np.float32)}
                if mode == "until":
                    kw["until"] = "1"
                gi = m.backward(gy, input_grad=mode != "until", **kw)
                outs = [y.copy()] + ([gi.copy()] if gi is not None else []) + [a.copy() for a in m.gradients()]
            written = m.layers[1]._y is not None
            res[on] = (outs, written, used, cap.output.copy() if cap is not None else None)
    (a, written_on, used_on, cap_on), (b, written_off, used_off, cap_off) = res[True], res[False]
    assert written_off and not any(used_off)
    if mode == "capture":
        assert written_on and not any(used_on)  # a capture at the norm keeps it written
        assert_bitwise(cap_on, cap_off, "captured norm output")
    else:
        assert not written_on
        if train and mode != "until":
            assert any(used_on), "the block's compiled backward with the prologue"
    for i, (p, q) in enumerate(zip(a, b)):
        assert_close(p, q, np.float32, length=256, what=f"output / gradients [{i}] ({mode})")
