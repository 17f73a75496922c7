"""A residual block's shortcut gradient added in the epilogue of its first convolution's input
gradient (``Conv2d._backward_add``, cnnkit.nn's fusion): a bottleneck block's 1x1 ``conv1``
computes its input gradient as the adjoint's forward pass with the shortcut's gradient as the
residual, instead of a separate add.

* the block gradients with the epilogue against the same block with it declined (the add):
  equal to float32 rounding (the sum is rounded once instead of twice), identity and projection
  shortcuts, both layouts; nothing is added separately (spy on ``numpy.add``);
* where it does not apply (a 3x3 or strided convolution, fusion off) the separate add runs;
* ``inject=`` and captures at ``conv1`` still see the gradient at its output;
* ``dy_apply``: the gradient given as a batch norm's backward apply pass, which the pass writes
  into ``grad_out`` (the NHWC 1x1 rows pass a block of rows at a time, other paths whole first),
  bitwise the apply pass followed by the plain call, on every drawn case of the strided-residual
  hypothesis test (NHWC), with its bad input.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import _core, nn
from cnnkit.ops import fused as F
from conftest import ISA_LEVELS, assert_bitwise, assert_close, isa_level, num_threads
from reference.conv import conv2d_backward_ref
from test_fusion import _chan, _from, _to


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
    output a block read run no reduction pass of their own: the two written ones (before the
    projection block and before the last identity block, whose input is a block's output) take
    the pending gradient of the block's conv1 epilogue, the stem's norm (never written: the first
    identity block takes it as its prologue, BottleneckBlock._forward_pre) that of conv1's
    prologue pass."""
    from test_fusion import _assert_same_training, _data, _shape, _train
    xs, ls = _data(_shape(layout, 4, 3, 8), 3, 5)
    pend, pro = [], []
    real_pb = nn.BatchNorm2d._pending_backward
    real_fb = nn.BatchNorm2d._fused_backward
    monkeypatch.setattr(nn.BatchNorm2d, "_pending_backward",
                        lambda self, g, gi: pend.append(1) or real_pb(self, g, gi))

    def fused_backward(self, g, gi, pre_affine):
        if self._pending_grad is not None and self._pending_grad[0] is g:
            pro.append(self)
        return real_fb(self, g, gi, pre_affine)

    monkeypatch.setattr(nn.BatchNorm2d, "_fused_backward", fused_backward)
    model = _model(layout)
    h_p = _train(model, xs, ls, True)
    assert len(pend) == 2 * 3, f"{len(pend)} written norms took the pending gradient (2 blocks x 3 steps expected)"
    stem_norm = model.layers[1]
    assert sum(m is stem_norm for m in pro) == 3, "the stem's norm took conv1's pending gradient every step"
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


# ---- a strided projection's gradient kept compact ----------------------------------------------------
# A stride-s 1x1 shortcut's input gradient is zero but at the pixels whose row and column are
# multiples of s: with conv1 a 1x1 (NHWC) whose input a batch norm wrote, the shortcut computes it
# at those pixels only (Conv2d._strided_input_backward) and conv1's fused input gradient adds it
# there (residual_stride=s; conv_gemm.cpp add_strided_rows), instead of writing and reading it whole.

TABLE = cnnkit.kernels("conv")


@st.composite
def _strided_cases(draw):
    kind = draw(st.sampled_from(("rows", "rows", "1x1", "3x3", "grouped 3x3", "1x1 s2")))
    rows = kind == "rows"  # the NHWC 1x1 pass that adds the compact residual itself (32+ channels)
    chans = (32, 33, 40, 64) if rows else (4, 8, 15, 16, 17, 32, 40)
    return dict(isa=draw(st.sampled_from(ISA_LEVELS)),
                layout="NHWC" if rows else draw(st.sampled_from(("NHWC", "NCHW"))), kind=kind,
                N=draw(st.integers(1, 3)), C=draw(st.sampled_from(chans)),
                K=draw(st.sampled_from(chans if rows else (3, 8, 16, 24, 33))),
                H=draw(st.integers(1, 13)), W=draw(st.integers(1, 13)), s=draw(st.sampled_from((2, 3))),
                mode=draw(st.sampled_from(("stored", "fma", "none"))),
                force="packed" if rows else draw(st.sampled_from((None, "packed", "gemm"))),
                seed=draw(st.integers(0, 2**31 - 1)))


def _strided_check(c):
    lay, N, C, K, H, W, s = c["layout"], c["N"], c["C"], c["K"], c["H"], c["W"], c["s"]
    G = 2 if c["kind"] == "grouped 3x3" and C % 2 == 0 and K % 2 == 0 else 1
    k = 3 if "3x3" in c["kind"] else 1
    if c["kind"] == "rows":  # the adjoint (a 1x1 of K -> C) runs on the packed entry: the rows pass
        adj = F._Geom((N, H, W, K), (C, K, 1, 1), 1, 0, 1, 1, "NHWC", np.float32)
        assert _core.conv_algorithm(adj.core(), 0).startswith("conv2d_gemm_f32_nhwc_packed"), c
    cs = 2 if c["kind"] == "1x1 s2" else 1
    rng = np.random.default_rng(c["seed"])
    z = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C // G, k, k)).astype(np.float32)
    g = F._Geom(_to(lay, z).shape, w.shape, cs, k // 2, 1, G, lay, np.float32)
    gy = rng.standard_normal((N, K, g.Ho, g.Wo)).astype(np.float32)
    if lay == "NHWC":  # gy as a batch norm's backward apply pass, for the dy_apply check below
        zb = (rng.standard_normal(gy.shape) * 2 + 0.3).astype(np.float32)
        gb = np.where(zb > 0, gy, 0).astype(np.float32)
        ap = (_to(lay, gb), _to(lay, zb), zb.astype(np.float64).mean(axis=(0, 2, 3)), rng.random(K) + 0.5,
              rng.standard_normal(K) * 0.1, rng.standard_normal(K) * 0.1)
        dyn = np.empty_like(ap[0])
        _core.norm_backward_apply(ap[0], ap[1], None, dyn, None, N, K, g.Ho * g.Wo, True, False, *ap[2:])
        gy = _from(lay, dyn)
    Hr, Wr = -(-H // s), -(-W // s)
    rc = rng.standard_normal((N, C, Hr, Wr)).astype(np.float32)
    whole = np.zeros(z.shape, np.float32)
    whole[:, :, ::s, ::s] = rc
    center = rng.standard_normal(C)
    mode = c["mode"]
    m = np.where(rng.random(z.shape) < 0.4, 0, rng.random(z.shape)).astype(np.float32) if mode == "stored" else None
    sc = (rng.uniform(0.5, 2, C) * rng.choice((-1, 1), C)).astype(np.float32) if mode == "fma" else None
    sh = rng.standard_normal(C).astype(np.float32) if mode == "fma" else None
    relu = mode != "none"

    def call(res, stride, t):
        dx = np.full(_to(lay, z).shape, np.nan, np.float32)
        with num_threads(t):
            name, s1, s2 = _core.conv2d_fused_backward_input(_to(lay, gy), w, dx, g.core(), _to(lay, z), sc, sh, relu,
                                                             center, _to(lay, res), None if m is None else _to(lay, m),
                                                             stride)
        return name, _from(lay, dx), s1, s2
    compact = [call(rc, s, t) for t in (1, 2)]
    for u, v in zip(compact[0][1:], compact[1][1:]):
        assert_bitwise(u, v, "compact residual at 2 threads vs 1")
    name, dx, s1, s2 = compact[0]
    if lay == "NHWC":
        # dy given as the norm's apply pass (dy_apply): written into grad_out (by the rows pass a
        # block at a time, elsewhere whole first), the same bits as the pass then the call
        for t in (1, 2):
            out = np.full(ap[0].shape, np.nan, np.float32)
            dxa = np.full(_to(lay, z).shape, np.nan, np.float32)
            with num_threads(t):
                r = _core.conv2d_fused_backward_input(out, w, dxa, g.core(), _to(lay, z), sc, sh, relu, center,
                                                      _to(lay, rc), None if m is None else _to(lay, m), s,
                                                      dy_apply=ap)
            assert r[0] == name
            assert_bitwise(out, _to(lay, gy), f"dy written by dy_apply ({t} threads)")
            assert_bitwise(_from(lay, dxa), dx, f"input gradient with dy_apply ({t} threads)")
            assert_bitwise(r[1], s1, "sum with dy_apply")
            assert_bitwise(r[2], s2, "sumxc with dy_apply")
    wname, wdx, ws1, ws2 = call(whole, 1, 2)
    assert name == wname, (name, wname)
    # the same values as with the residual laid out whole (a skipped add of 0 may keep a -0)
    assert np.array_equal(dx, wdx), "input gradient: compact residual vs whole"
    assert_bitwise(s1, ws1, "sum: compact residual vs whole")
    assert_bitwise(s2, ws2, "sumxc: compact residual vs whole")
    ga = conv2d_backward_ref(gy.astype(np.float64), z.astype(np.float64), w.astype(np.float64), (cs, cs),
                             (k // 2, k // 2), (1, 1), G)[0]
    if mode == "stored":
        keep = m > 0
    elif mode == "fma":
        keep = z.astype(np.float64) * _chan(sc) + _chan(sh) > 0
    else:
        keep = np.ones(z.shape, bool)
    want = (ga + whole) * keep
    L = (K // G) * k * k + 1
    assert_close(dx, want, np.float32, length=L, what="masked gradient + strided residual")
    assert_close(s1, want.sum(axis=(0, 2, 3)), np.float32, length=L * N * H * W, what="sum")
    assert_close(s2, (want * (z - _chan(center))).sum(axis=(0, 2, 3)), np.float32, length=L * N * H * W,
                 what="sumxc")


@settings(max_examples=60, deadline=None)
@given(c=_strided_cases())
def test_fused_backward_input_strided_residual_hypothesis(c):
    """``conv2d_fused_backward_input(..., residual_stride=s)``: the residual given at the pixels of
    multiples of s only equals the whole residual with zeros between (dx to the value, the sums
    bit for bit, the same kernel), against float64 too, bitwise at 1 and 2 threads; the NHWC 1x1
    pass (adds it at its rows) and the paths that lay it out whole (NCHW, 3x3, grouped, strided
    conv), every mask kind, channels around the vector widths, at the drawn ISA level, with the
    adjoint's own packed GEMM (the rows pass for NHWC 1x1) or OpenBLAS forced, or as dispatched."""
    entry = f"conv2d_gemm_f32_{c['layout'].lower()}{'_packed' if c['force'] == 'packed' else ''}__{c['isa']}"
    with isa_level(c["isa"]), (TABLE.force(entry) if c["force"] else contextlib.nullcontext()):
        _strided_check(c)


@pytest.mark.parametrize("shape", [(64, 32, 32, 32, 32, 2), (4, 64, 64, 16, 16, 2), (2, 16, 8, 9, 7, 3)])
def test_fused_backward_input_strided_residual_shapes(shape):
    """resnext_small's 3.conv1 and 4.conv1 (NHWC, the rows pass), and odd planes at stride 3."""
    N, C, K, H, W, s = shape
    _strided_check(dict(layout="NHWC", kind="1x1", N=N, C=C, K=K, H=H, W=W, s=s, mode="stored", seed=N + C))


def test_fused_backward_input_strided_residual_bad_input():
    from cnnkit import _core
    from cnnkit.ops import fused as F
    x = np.ones((2, 6, 6, 8), np.float32)
    w = np.ones((8, 8, 1, 1), np.float32)
    g = F._Geom(x.shape, w.shape, 1, 0, 1, 1, "NHWC", np.float32)
    dx = np.empty_like(x)
    with pytest.raises(ValueError, match="residual_stride"):
        _core.conv2d_fused_backward_input(x, w, dx, g.core(), x, None, None, True, np.zeros(8), x, None, 0)
    with pytest.raises(ValueError, match="residual"):  # the whole shape given with a stride
        _core.conv2d_fused_backward_input(x, w, dx, g.core(), x, None, None, True, np.zeros(8), x, None, 2)
    k = np.zeros(8)
    out = np.zeros_like(x)
    with pytest.raises(TypeError, match="dy_apply"):
        _core.conv2d_fused_backward_input(out, w, dx, g.core(), x, None, None, True, k, dy_apply=(x, x))
    with pytest.raises(ValueError, match="dy_apply z"):
        _core.conv2d_fused_backward_input(out, w, dx, g.core(), x, None, None, True, k,
                                          dy_apply=(x, x[:1], k, k, k, k))
    with pytest.raises(ValueError, match="grad_out"):  # written: must not be the apply pass's own input
        _core.conv2d_fused_backward_input(x, w, dx, g.core(), np.ones_like(x), None, None, True, k,
                                          dy_apply=(x, np.ones_like(x), k, k, k, k))
    gc = F._Geom((2, 8, 6, 6), w.shape, 1, 0, 1, 1, "NCHW", np.float32)
    xc = np.ones((2, 8, 6, 6), np.float32)
    with pytest.raises(ValueError, match="NHWC"):
        _core.conv2d_fused_backward_input(np.zeros_like(xc), w, np.empty_like(xc), gc.core(), xc, None, None, True, k,
                                          dy_apply=(xc, np.ones_like(xc), k, k, k, k))
    assert not out.any()


def _strided_model(layout, seed=1):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False, layout=layout, rng=rng),
                         nn.BatchNorm2d(16, activation="relu", layout=layout),
                         nn.BottleneckBlock(16, 32, 8, 2, groups=2, layout=layout, rng=rng),
                         nn.BottleneckBlock(32, 48, 16, 3, groups=4, layout=layout, rng=rng),
                         nn.GlobalAvgPool2d(layout=layout), nn.Linear(48, 5, rng=rng))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_blocks_keep_the_strided_shortcut_gradient_compact(layout, monkeypatch):
    """Strided bottleneck blocks (stride 2 and 3, odd planes) after a written norm: NHWC passes the
    shortcut's gradient compact (residual_stride), NCHW does not; the input and parameter
    gradients, a capture at the shortcut's convolution and an injection there, against the same
    model with the compact path declined (the shortcut's own backward) to float32 rounding."""
    from cnnkit import _core
    from cnnkit.nn import layers as L
    x = _input(layout, 3, 3, 11)
    inj = np.random.default_rng(5).standard_normal(
        (3, 32, 6, 6) if layout == "NCHW" else (3, 6, 6, 32)).astype(np.float32)
    real_core = _core.conv2d_fused_backward_input
    out = {}
    for decline in (False, True):
        strides = []

        def spy(*a, **k):
            strides.append(a[11] if len(a) > 11 else k.get("residual_stride", 1))
            return real_core(*a, **k)
        monkeypatch.setattr(_core, "conv2d_fused_backward_input", spy)
        if decline:
            monkeypatch.setattr(L._Residual, "_compact_shortcut_grad", lambda self, *a: None)
        m = _strided_model(layout)
        with nn.fusion(True):
            cap = m.capture("2.downsample.0")
            y = m.forward(x)
            g = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
            gx = m.backward(g, input_grad=True, inject={"2.downsample.0": inj})
        out[decline] = (gx.copy(), cap.grad.copy(), [p.copy() for p in m.gradients()])
        monkeypatch.undo()
        assert sorted(s for s in strides if s != 1) == ([] if decline or layout == "NCHW" else [2, 3]), strides
    assert_close(out[False][0], out[True][0], np.float32, length=64, what="input gradient")
    assert_bitwise(out[False][1], out[True][1], "captured gradient at the shortcut's output (with the injection)")
    for a, r in zip(out[False][2], out[True][2]):
        assert_close(a, r, np.float32, length=64 * 3 * 11 * 11, what="parameter gradient")
