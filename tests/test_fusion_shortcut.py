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
        nn.Conv2d._backward_add = lambda self, g, a, *rest: None  # type: ignore[method-assign]
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

    def watch(self, g, a, *rest):
        out = real(self, g, a, *rest)
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
    monkeypatch.setattr(nn.Conv2d, "_backward_add", lambda self, g, a, *rest: calls.append(1) or real(self, g, a, *rest))
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
            monkeypatch.setattr(nn.Conv2d, "_backward_add", lambda self, g, a, *rest: None)
        with nn.fusion(True):
            cap = m.capture("0.conv1")
            y = m.forward(x)
            gx = m.backward(np.ones_like(y), input_grad=True, inject={"0.conv1": inj})
        out[decline] = (gx.copy(), cap.grad.copy(), [p.copy() for p in m.gradients()])
    assert_close(out[False][0], out[True][0], np.float32, length=32, what="input gradient")
    assert_bitwise(out[False][1], out[True][1], "captured gradient at conv1's output (with the injection)")
    for a, r in zip(out[False][2], out[True][2]):
        assert_bitwise(a, r, "parameter gradients")


# ---- the written norm's mask and sums in the same epilogue -----------------------------------------
# A block whose input is the written output of a batch norm with a ReLU (the stem's, or the previous
# block's last): conv1's input gradient plus the shortcut's is written already masked by that
# output, with the norm's two backward sums (_core.conv2d_fused_backward_input with residual= and
# mask=), so the norm runs only its apply pass (BatchNorm2d._pending_backward).

def _model(layout, seed=1):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False, layout=layout, rng=rng),
                         nn.BatchNorm2d(16, activation="relu", layout=layout),
                         nn.BottleneckBlock(16, 16, 8, groups=2, layout=layout, rng=rng),
                         nn.BottleneckBlock(16, 32, 8, 2, groups=2, layout=layout, rng=rng),
                         nn.BottleneckBlock(32, 32, 8, groups=2, layout=layout, rng=rng),
                         nn.GlobalAvgPool2d(layout=layout), nn.Linear(32, 5, rng=rng))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_written_norm_backward_from_the_epilogue(layout, monkeypatch):
    """Fused training steps with the pending-gradient path against the same model with it declined
    (and against fusion off): the same losses and parameters to float32 rounding; the norms whose
    output a block read run no reduction pass of their own."""
    from test_fusion import _assert_same_training, _data, _shape, _train
    xs, ls = _data(_shape(layout, 4, 3, 8), 3, 5)
    pend = []
    real_pb = nn.BatchNorm2d._pending_backward
    monkeypatch.setattr(nn.BatchNorm2d, "_pending_backward",
                        lambda self, g, gi: pend.append(1) or real_pb(self, g, gi))
    h_p = _train(_model(layout), xs, ls, True)
    assert len(pend) == 3 * 3, f"{len(pend)} norms took the pending gradient (3 blocks x 3 steps expected)"
    monkeypatch.undo()
    real = nn.Conv2d._backward_add
    monkeypatch.setattr(nn.Conv2d, "_backward_add", lambda self, g, a, *rest: real(self, g, a))
    h_d = _train(_model(layout), xs, ls, True)
    monkeypatch.undo()
    _assert_same_training(h_p, h_d)
    _assert_same_training(h_p, _train(_model(layout), xs, ls, False))


_RES_CASES = [(3, 32, 32, 9, 1, 1, 1, 1), (2, 16, 32, 8, 1, 1, 2, 1), (5, 24, 16, 6, 3, 1, 1, 4),
              (3, 32, 32, 7, 3, 1, 1, 32), (2, 64, 32, 5, 3, 1, 2, 1), (2, 16, 16, 3, 1, 1, 1, 1)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", _RES_CASES)
def test_fused_backward_input_residual_and_stored_mask(layout, case):
    """``conv2d_fused_backward_input(..., residual=r, mask=m)``: (input gradient + r) * [m > 0] and
    its two sums about ``center`` against float64 (the adjoint GEMM pass, the units of images for
    3x3 / strided / grouped, the NCHW transposed entry), bitwise at 1 and 2 threads."""
    from cnnkit import _core
    from cnnkit.ops import fused as F
    from conftest import num_threads
    from reference.conv import conv2d_backward_ref
    from test_fusion import _chan, _from, _to
    N, C, K, H, k, p, s, G = case
    rng = np.random.default_rng(sum(case))
    z = rng.standard_normal((N, C, H, H)).astype(np.float32)
    m = np.where(rng.random(z.shape) < 0.45, 0, rng.random(z.shape)).astype(np.float32)
    r = rng.standard_normal(z.shape).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    center = rng.standard_normal(C)
    g = F._Geom(_to(layout, z).shape, w.shape, s, p if k > 1 else 0, 1, G, layout, np.float32)
    gy = rng.standard_normal((N, K, g.Ho, g.Wo)).astype(np.float32)
    got = []
    for t in (1, 2):
        dx = np.full(_to(layout, z).shape, np.nan, np.float32)
        with num_threads(t):
            _, s1, s2 = _core.conv2d_fused_backward_input(_to(layout, gy), w, dx, g.core(), _to(layout, z), None,
                                                          None, True, center, _to(layout, r), _to(layout, m))
        got.append((_from(layout, dx), s1, s2))
    for u, v in zip(*got):
        assert_bitwise(u, v, "threads")
    pp = p if k > 1 else 0
    ga = conv2d_backward_ref(gy.astype(np.float64), z.astype(np.float64), w.astype(np.float64), (s, s), (pp, pp),
                             (1, 1), G)[0]
    want = (ga + r) * (m > 0)
    dx, s1, s2 = got[0]
    L = (K // G) * k * k + 1
    assert_close(dx, want, np.float32, length=L, what="masked gradient + residual")
    assert np.all(dx[m <= 0] == 0)
    assert_close(s1, want.sum(axis=(0, 2, 3)), np.float32, length=L * N * H * H, what="sum")
    assert_close(s2, (want * (z - _chan(center))).sum(axis=(0, 2, 3)), np.float32, length=L * N * H * H,
                 what="sumxc")
    with pytest.raises(ValueError, match="mask"):
        _core.conv2d_fused_backward_input(_to(layout, gy), w, dx, g.core(), _to(layout, z), None, None, False,
                                          center, None, _to(layout, m))
