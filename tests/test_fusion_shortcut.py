"""A residual block's shortcut gradient added in the epilogue of its first convolution's input
gradient (``Conv2d._backward_add``, cnnkit.nn's fusion): a bottleneck block's 1x1 ``conv1``
computes its input gradient as the adjoint's forward pass with the shortcut's gradient as the
residual, instead of a separate add.

* the block gradients with the epilogue against the same block with it declined (the add):
  equal to float32 rounding (the sum is rounded once instead of twice), identity and projection
  shortcuts, both layouts; nothing is added separately (spy on ``numpy.add``);
* where it does not apply (a 3x3 or strided convolution, fusion off) the separate add runs;
* ``inject=`` and captures at ``conv1`` still see the gradient at its output.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import nn
from conftest import assert_bitwise, assert_close


def _input(layout, N, C, H, seed=0):
    x = np.random.default_rng(seed).standard_normal((N, C, H, H)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _run(block, x, fuse, decline=False):
    """One forward and backward; ``decline``: the epilogue declines (patched on the class, so
    that the forward's fusion is the same), and the plain add runs."""
    real = nn.Conv2d._backward_add
    if decline:
        nn.Conv2d._backward_add = lambda self, g, a: None  # type: ignore[method-assign]
    try:
        with nn.fusion(fuse):
            y = block(x)
            g = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
            gx = block.backward(g).copy()
    finally:
        nn.Conv2d._backward_add = real  # type: ignore[method-assign]
    return gx, [p.copy() for p in block.gradients()]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("cin,stride", [(32, 1), (16, 1), (16, 2)])  # identity, projection, strided projection
def test_bottleneck_adds_the_shortcut_in_the_epilogue(layout, cin, stride, monkeypatch):
    def make():
        return nn.BottleneckBlock(cin, 32, 8, stride, groups=2, layout=layout, rng=np.random.default_rng(1))
    x = _input(layout, 6, cin, 9)
    adds = []
    real_add = np.add

    def spy(*a, **k):
        adds.append(np.shape(a[0]))
        return real_add(*a, **k)
    ref = _run(make(), x, True, decline=True)
    b = make()
    called = []
    real = type(b.conv1)._backward_add

    def watch(self, g, a):
        out = real(self, g, a)
        called.append(out is not None)
        return out
    monkeypatch.setattr(type(b.conv1), "_backward_add", watch)
    monkeypatch.setattr(np, "add", spy)
    got = _run(b, x, True)
    monkeypatch.undo()
    assert called == [True]
    assert x.shape not in adds, "the shortcut's gradient was added in a separate pass"
    assert_close(got[0], ref[0], np.float32, length=32, what="input gradient")
    for a, r in zip(got[1], ref[1]):
        assert_bitwise(a, r, "parameter gradients (untouched by the epilogue)")


@pytest.mark.parametrize("case", ["3x3", "strided 1x1"])
def test_declines_where_it_does_not_apply(case):
    """A 3x3 convolution (the basic block's conv1) and a strided 1x1 (a projection shortcut)
    decline: nothing written, nothing consumed."""
    b = nn.ResidualBlock(8, 16, 2, rng=np.random.default_rng(1))
    x = _input("NCHW", 3, 8, 6)
    with nn.fusion(True):
        b(x)
    conv = b.conv1 if case == "3x3" else b.shortcut[0]
    assert conv.kernel_size == ((3, 3) if case == "3x3" else (1, 1))
    before = conv.grads["weight"].copy()
    out_shape = conv._ws["out_shape"]
    assert conv._backward_add(np.ones(out_shape, np.float32), np.zeros(x.shape, np.float32)) is None
    assert_bitwise(conv.grads["weight"], before, "the weight gradient (untouched)")


def test_fusion_off_adds_separately(monkeypatch):
    calls = []
    real = nn.Conv2d._backward_add
    monkeypatch.setattr(nn.Conv2d, "_backward_add", lambda self, g, a: calls.append(1) or real(self, g, a))
    x = _input("NHWC", 3, 8, 6)
    _run(nn.BottleneckBlock(8, 8, 4, groups=2, layout="NHWC", rng=np.random.default_rng(1)), x, False)
    assert not calls
    _run(nn.BottleneckBlock(8, 8, 4, groups=2, layout="NHWC", rng=np.random.default_rng(1)), x, True)
    assert calls == [1]


def test_inject_and_capture_at_conv1(monkeypatch):
    x = _input("NHWC", 4, 16, 6)
    inj = np.random.default_rng(3).standard_normal((4, 6, 6, 8)).astype(np.float32)
    out = {}
    for decline in (False, True):
        m = nn.Sequential(nn.BottleneckBlock(16, 16, 8, layout="NHWC", rng=np.random.default_rng(1)))
        if decline:
            monkeypatch.setattr(nn.Conv2d, "_backward_add", lambda self, g, a: None)
        with nn.fusion(True):
            cap = m.capture("0.conv1")
            y = m.forward(x)
            gx = m.backward(np.ones_like(y), input_grad=True, inject={"0.conv1": inj})
        out[decline] = (gx.copy(), cap.grad.copy(), [p.copy() for p in m.gradients()])
    assert_close(out[False][0], out[True][0], np.float32, length=32, what="input gradient")
    assert_bitwise(out[False][1], out[True][1], "captured gradient at conv1's output (with the injection)")
    for a, r in zip(out[False][2], out[True][2]):
        assert_bitwise(a, r, "parameter gradients")
