"""A batch norm (+ReLU) fused with the global average pool after it (cnnkit.nn's fusion).

* ``_core.norm_affine_pool``: the mean over H and W of ``act(fma(a, x, b))`` without writing it,
  against a float64 reference and bitwise against ``global_avg_pool_forward`` of the written
  ``act(fma(a, x, b))`` (whose values the kernel sums in the same order), both layouts, channel
  counts around the SIMD width, every ISA level, 1 and 2 threads bitwise.
* ``pooled=True`` of the norm backward kernels (the gradient given per (n, c), the same at every
  position): bitwise the results on the gradient broadcast in memory, with every mask mode.
* networks (NHWC; NCHW is not fused): a Conv -> BN(+ReLU) -> GlobalAvgPool2d -> Linear chain and
  mobilenet_small train the same fused and unfused (cnnkit.nn.fusion's tolerance table, tests/test_fusion.py), with spies
  that assert the norm's output, the pool's passes and the broadcast gradient were never
  written; captures, ``until=`` and ``inject=`` at the norm still see unfused values.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit import _core, _runtime, models, nn
from conftest import ISA_LEVELS, assert_bitwise, assert_close, num_threads
from test_conv import assert_close_terms
from test_fusion import _assert_same_training, _data, _train


def _affine_ref(x, a, b, relu, nhwc):
    """act(a*x + b) per channel in float64 from float32 values (a*x exact in float64)."""
    shape = (1, 1, 1, -1) if nhwc else (1, -1, 1, 1)
    v = a.astype(np.float64).reshape(shape) * x.astype(np.float64) + b.astype(np.float64).reshape(shape)
    return np.maximum(v, 0) if relu else v


def _fma32(x, a, b, nhwc):
    """float32 fma(a, x, b): a*x + b in float64 (the product exact) rounded once to float32
    (double rounding could differ from one rounding only at exact float64 ties, which these
    random values avoid: the float64 sum is inexact with probability ~2^-29 per value)."""
    shape = (1, 1, 1, -1) if nhwc else (1, -1, 1, 1)
    return (a.astype(np.float64).reshape(shape) * x.astype(np.float64)
            + b.astype(np.float64).reshape(shape)).astype(np.float32)


def _sums_at_threads(x, N, C, S, nhwc, ab, relu, mean, what=""):
    """``norm_affine_pool`` with ``mean`` and ``sums`` at 1 and 2 threads: asserts its pooled
    values are bitwise those without the sums and its sums bitwise the same at both; returns
    {threads: sums}."""
    plain = np.empty((N, C), np.float32)
    _core.norm_affine_pool(x, plain, N, C, S, nhwc, ab, relu)
    got = {}
    for t in (1, 2):
        with num_threads(t):
            out = np.full((N, C), np.nan, np.float32)
            sums = np.full((2, N, C), np.nan)
            _core.norm_affine_pool(x, out, N, C, S, nhwc, ab, relu, mean, sums)
        assert_bitwise(out, plain, f"{what} pooled values with the sums, {t} threads")
        got[t] = sums
    assert_bitwise(got[1], got[2], f"{what} sums at 1 and 2 threads")
    return got


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("N,C,H,W", [(1, 1, 1, 1), (2, 15, 3, 5), (3, 16, 4, 4), (2, 17, 7, 1), (4, 33, 5, 6),
                                     (64, 8, 16, 16)])
def test_affine_pool_matches_pool_of_the_written_values(nhwc, relu, N, C, H, W, isa):
    rng = np.random.default_rng(N * 1000 + C * 10 + H)
    shape = (N, H, W, C) if nhwc else (N, C, H, W)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    a = (rng.uniform(0.2, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    S = H * W
    outs = {}
    for t in (1, 2):
        with num_threads(t):
            out = np.full((N, C), np.nan, np.float32)
            _core.norm_affine_pool(x, out, N, C, S, nhwc, np.concatenate([a, b]), relu)
            outs[t] = out
    assert_bitwise(outs[1], outs[2], "threads")
    z = _fma32(x, a, b, nhwc)
    if relu:
        z = np.maximum(z, 0)
    pooled = np.empty((N, C), np.float32)
    _core.global_avg_pool_forward(z, pooled, N, C, S, nhwc)
    if nhwc:  # the pool's own per-channel order: the same bits
        assert_bitwise(outs[1], pooled, "pool of the written values")
    else:  # a vectorised reduction of the row in both: its order is the compiler's, equal to rounding
        assert_close(outs[1], pooled, np.float32, length=S, what="pool of the written values")
    ref = _affine_ref(x, a, b, relu, nhwc).mean(axis=(1, 2) if nhwc else (2, 3))
    assert_close(outs[1], ref, np.float32, length=S, what="float64 reference")


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("N,C,H,W", [(1, 1, 1, 1), (2, 15, 3, 5), (3, 16, 4, 4), (2, 17, 7, 1), (4, 33, 5, 6),
                                     (64, 8, 16, 16)])
def test_affine_pool_sums_for_the_pooled_backward(nhwc, relu, N, C, H, W, isa):
    """With ``mean`` and ``sums``: the same pooled values (bitwise), and per (n, c) the count of
    the positions the ReLU keeps (fma(a, x, b) > 0; all without) and the float64 sum of x - mean
    over them, against a float64 reference, the same bits at 1 and 2 threads; with them, the
    norm backward's two sums for a pooled gradient match norm_backward_reduce's."""
    rng = np.random.default_rng(N * 1000 + C * 10 + H + 7)
    shape = (N, H, W, C) if nhwc else (N, C, H, W)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    a = (rng.uniform(0.2, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    ab = np.concatenate([a, b])
    mean = rng.standard_normal(C) + 1
    S = H * W
    got = _sums_at_threads(x, N, C, S, nhwc, ab, relu, mean)
    # float64 reference, positions last
    xs = x.reshape(N, S, C).transpose(0, 2, 1) if nhwc else x.reshape(N, C, S)
    keep = _fma32(x, a, b, nhwc) > 0 if relu else np.ones(shape, bool)
    ks = keep.reshape(N, S, C).transpose(0, 2, 1) if nhwc else keep.reshape(N, C, S)
    d = np.where(ks, xs.astype(np.float64) - mean[None, :, None], 0.0)
    assert_bitwise(got[1][0], ks.sum(axis=2).astype(np.float64), "counts")
    assert_close_terms(got[1][1], d.sum(axis=2), np.float64, np.abs(d).sum(axis=2), length=S, what="sum of x - mean")
    # the backward's sums for a gradient given per (n, c): g*count and g*sum, against the reduction
    gp = rng.standard_normal((N, C)).astype(np.float32)
    sg, sgx = _core.norm_backward_reduce(gp, x, None, N, C, S, nhwc, False, mean, ab if relu else None, True)
    g64 = gp.astype(np.float64)
    assert_close_terms(np.einsum("nc,nc->c", g64, got[1][0]), sg, np.float64, np.abs(g64 * got[1][0]).sum(0),
                       length=N * S, what="sum g")
    terms = np.einsum("nc,ncs->c", np.abs(g64), np.abs(d))
    assert_close_terms(np.einsum("nc,nc->c", g64, got[1][1]), sgx, np.float64, terms, length=N * S,
                       what="sum g*(x - mean)")


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 41), H=st.integers(1, 6), W=st.integers(1, 7), relu=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_affine_pool_sums_hypothesis(N, C, H, W, relu, seed):
    """NHWC with ``mean`` and ``sums`` over drawn shapes (channels on both sides of the vector
    widths, position counts with and without a last group shorter than four): the pooled values
    bitwise those without the sums, the counts exact, the sums of x - mean against float64, at
    every ISA level, bitwise at 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, H, W, C)) * 3 + 1).astype(np.float32)
    a = (rng.uniform(0.2, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    ab = np.concatenate([a, b])
    mean = rng.standard_normal(C) + 1
    S = H * W
    xs = x.reshape(N, S, C).astype(np.float64)
    keep = (_fma32(x, a, b, True) > 0 if relu else np.ones(x.shape, bool)).reshape(N, S, C)
    d = np.where(keep, xs - mean, 0.0)
    before = _core.isa_active()
    try:
        for level in ISA_LEVELS:
            _runtime._set_isa(level)
            got = _sums_at_threads(x, N, C, S, True, ab, relu, mean, level)
            assert_bitwise(got[1][0], keep.sum(axis=1).astype(np.float64), f"{level}: counts")
            assert_close_terms(got[1][1], d.sum(axis=1), np.float64, np.abs(d).sum(axis=1), length=S,
                               what=f"{level}: sum of x - mean")
    finally:
        _runtime._set_isa(before)


@pytest.mark.parametrize("relu", [False, True])
def test_affine_pool_sums_with_nan_and_inf(relu, isa):
    """A NaN or infinite x, kept or masked by the ReLU, makes its (n, c)'s sum of x - mean NaN or
    infinite as the float64 reference's m * (x - mean) does (0 * inf is NaN), and leaves the counts
    exact; the pooled values NaN or infinite where the reference's are (NHWC, channel vectors and
    a remainder, a last group of positions shorter than four)."""
    rng = np.random.default_rng(5)
    N, H, W, C = 3, 3, 3, 19
    x = (rng.standard_normal((N, H, W, C)) * 3).astype(np.float32)
    flat = x.reshape(-1)
    flat[::37], flat[5::41], flat[11::43] = np.nan, np.inf, -np.inf
    a = (rng.uniform(0.2, 2, C) * rng.choice((-1, 1), C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    mean = rng.standard_normal(C)
    out = np.empty((N, C), np.float32)
    sums = np.empty((2, N, C))
    _core.norm_affine_pool(x, out, N, C, H * W, True, np.concatenate([a, b]), relu, mean, sums)
    xs = x.reshape(N, H * W, C).astype(np.float64)
    with np.errstate(invalid="ignore"):
        t = _fma32(x, a, b, True).reshape(N, H * W, C)
        m = (t > 0) if relu else np.ones(t.shape, bool)
        ref_q = (m * (xs - mean)).sum(axis=1)
        ref_pool = (np.maximum(t, 0) if relu else t).astype(np.float64).mean(axis=1)
    assert_bitwise(sums[0], m.sum(axis=1).astype(np.float64), "counts")
    for got, ref, what in ((sums[1], ref_q, "sum of x - mean"), (out, ref_pool, "pooled values")):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: NaN positions")
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref), err_msg=f"{what}: +inf positions")
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref), err_msg=f"{what}: -inf positions")
    assert np.isnan(sums[1]).any() and np.isfinite(sums[1]).any()


def test_affine_pool_sums_bad_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ab = rng.standard_normal(10).astype(np.float32)
    out = np.empty((2, 5), np.float32)
    mean, sums = np.zeros(5), np.zeros((2, 2, 5))
    with pytest.raises(ValueError, match="both or neither"):
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, mean, None)
    with pytest.raises(ValueError, match="both or neither"):
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, None, sums)
    with pytest.raises(ValueError, match="mean"):
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, mean[:-1], sums)
    with pytest.raises(ValueError, match="sums"):
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, mean, sums[:, :1])
    with pytest.raises(TypeError):
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, mean.astype(np.float32), sums)
    both = np.zeros(2 * 2 * 5)
    with pytest.raises(ValueError, match="overlap"):  # sums over the mean
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, both[:5], both.reshape(2, 2, 5))
    with pytest.raises(ValueError, match="overlap"):  # sums over x
        _core.norm_affine_pool(x, out, 2, 5, 12, True, ab, True, mean, x.reshape(-1)[:40].view(np.float64).reshape(2, 2, 5))
    assert not sums.any()  # nothing written before the errors


def test_affine_pool_float64_and_bad_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 4))
    ab = rng.standard_normal(10)
    out = np.empty((2, 5))
    _core.norm_affine_pool(x, out, 2, 5, 12, False, ab, True)
    ref = _affine_ref(x, ab[:5], ab[5:], True, False).mean(axis=(2, 3))
    assert_close(out, ref, np.float64, length=12, what="float64")
    with pytest.raises(ValueError, match="affine"):
        _core.norm_affine_pool(x, out, 2, 5, 12, False, ab[:-1], True)
    with pytest.raises(ValueError, match="out"):
        _core.norm_affine_pool(x, np.empty((2, 4)), 2, 5, 12, False, ab, True)
    with pytest.raises(ValueError, match="out"):
        _core.norm_affine_pool(x, x.reshape(-1)[:10], 2, 5, 12, False, ab, True)
    with pytest.raises(TypeError):
        _core.norm_affine_pool(x.astype(np.float32), out, 2, 5, 12, False, ab, True)


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("mode", ["none", "mask", "affine"])
@pytest.mark.parametrize("N,C,S", [(1, 1, 1), (3, 15, 7), (2, 16, 65), (5, 17, 9), (4, 40, 300)])
def test_pooled_gradient_is_the_broadcast_gradient(nhwc, mode, N, C, S, isa):
    """``pooled=True`` reads g[n, c] at every position: the kernels' results on g broadcast in
    memory (bitwise, but for the NCHW sums: equal to rounding), for every mask mode, with the
    residual's gradient, the same bits at 1 and 2 threads."""
    rng = np.random.default_rng(N * 100 + C + S)
    shape = (N, S, C) if nhwc else (N, C, S)
    x = rng.standard_normal(shape).astype(np.float32)
    gp = rng.standard_normal((N, C)).astype(np.float32)
    full = np.ascontiguousarray(np.broadcast_to(gp[:, None, :] if nhwc else gp[:, :, None], shape))
    y = np.maximum(x + np.float32(0.3), 0) if mode == "mask" else None
    ab = np.concatenate([rng.uniform(0.5, 2, C), rng.standard_normal(C)]).astype(np.float32) \
        if mode == "affine" else None
    mean = rng.standard_normal(C)
    A, B, D = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    for t in (1, 2):
        with num_threads(t):
            r_p = _core.norm_backward_reduce(gp, x, y, N, C, S, nhwc, False, mean, ab, True)
            r_f = _core.norm_backward_reduce(full, x, y, N, C, S, nhwc, False, mean, ab)
            dx_p, dx_f, gr_p, gr_f = (np.empty_like(x) for _ in range(4))
            _core.norm_backward_apply(gp, x, y, dx_p, gr_p, N, C, S, nhwc, False, mean, A, B, D, ab, True)
            _core.norm_backward_apply(full, x, y, dx_f, gr_f, N, C, S, nhwc, False, mean, A, B, D, ab)
        for u, v in zip(r_p, r_f):
            if nhwc:  # the same partial sums in the same order
                assert_bitwise(u, v, f"sums, {t} threads")
            else:  # a vectorised reduction of each row, its order the compiler's: equal to rounding
                assert_close(u, v, np.float32, length=S, what=f"sums, {t} threads")
        if t == 2:
            for u, v in zip(r_p, r_p1):
                assert_bitwise(u, v, "sums at 1 and 2 threads")
        r_p1 = r_p
        assert_bitwise(dx_p, dx_f, f"grad_input, {t} threads")
        assert_bitwise(gr_p, gr_f, f"masked g, {t} threads")
    with pytest.raises(ValueError, match="grad_out"):  # pooled wants N*C values, not more or fewer
        _core.norm_backward_reduce(gp[:, :-1] if C > 1 else gp[:-1], x, y, N, C, S, nhwc, False, mean, ab, True)


# ---- networks ---------------------------------------------------------------------------------

def _head(layout, rng, relu=True):
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, bias=False, layout=layout, rng=rng),
        nn.BatchNorm2d(12, activation="relu" if relu else None, layout=layout),
        nn.GlobalAvgPool2d(layout=layout), nn.Linear(12, 4, rng=rng))


@pytest.fixture
def spies(monkeypatch):
    """Counts of the passes that fusion removes: the norm's apply, the pool and its adjoint."""
    calls = {"norm_apply": 0, "global_avg_pool_forward": 0, "global_avg_pool_backward": 0, "norm_affine_pool": 0}
    for name in calls:
        real = getattr(_core, name)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(_core, name, spy)
    return calls


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("relu", [True, False])
def test_norm_pool_chain_fused_matches_unfused(layout, relu, spies):
    shape = (4, 3, 8, 8) if layout == "NCHW" else (4, 8, 8, 3)
    xs, ls = _data(shape, 3, 4)
    h_f = _train(_head(layout, np.random.default_rng(0), relu), xs, ls, True, eval_after=True)
    if layout == "NHWC":
        # 3 training steps and an eval step: the pool's passes never ran, the norm's output was
        # written once with a ReLU, by the eval-mode backward (its pre-activation: the ReLU mask
        # of torch's eval-mode gradient, see BatchNorm2d._eval_backward)
        assert spies["norm_affine_pool"] == 4
        assert spies["global_avg_pool_forward"] == spies["global_avg_pool_backward"] == 0
        assert spies["norm_apply"] == (1 if relu else 0)
    else:  # NCHW: not fused (its kernels' forms do not vectorise)
        assert spies["norm_affine_pool"] == 0 and spies["global_avg_pool_forward"] == 4
    h_u = _train(_head(layout, np.random.default_rng(0), relu), xs, ls, False, eval_after=True)
    assert spies["global_avg_pool_forward"] >= 4 and spies["global_avg_pool_backward"] >= 4
    _assert_same_training(h_f, h_u)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_mobilenet_fuses_its_last_norm_into_the_pool(layout, spies):
    kw = dict(widths=(8, 16, 16, 32))
    shape = (4, 3, 8, 8) if layout == "NCHW" else (4, 8, 8, 3)
    xs, ls = _data(shape, 2, 5)
    h_f = _train(models.mobilenet_small(3, 5, seed=0, layout=layout, **kw), xs, ls, True)
    fused = layout == "NHWC"
    assert spies["norm_affine_pool"] == (2 if fused else 0)
    assert spies["global_avg_pool_backward"] == (0 if fused else 2)
    h_u = _train(models.mobilenet_small(3, 5, seed=0, layout=layout, **kw), xs, ls, False)
    _assert_same_training(h_f, h_u)


@pytest.mark.parametrize("width", [32, 24])
def test_pooled_norm_backward_has_no_pass_of_its_own(width, monkeypatch):
    """mobilenet_small, NHWC, fused: the last norm's backward takes its two sums from the pool's
    forward pass (no reduction pass over its input) and hands its apply pass, with the per-sample
    gradient and the ReLU mask, to the 1x1 convolution that wrote its input (never written): no
    pooled norm_backward_reduce or norm_backward_apply call while training; the unfused model
    trains the same (the tolerance table)."""
    pooled = {"norm_backward_reduce": 0, "norm_backward_apply": 0}
    for name, at in (("norm_backward_reduce", 10), ("norm_backward_apply", 15)):
        real = getattr(_core, name)

        def spy(*a, _real=real, _name=name, _at=at, **k):
            pooled[_name] += bool(a[_at] if len(a) > _at else k.get("pooled", False))
            return _real(*a, **k)
        monkeypatch.setattr(_core, name, spy)
    kw = dict(widths=(8, 16, 16, width))
    xs, ls = _data((4, 8, 8, 3), 2, 5)
    h_f = _train(models.mobilenet_small(3, 5, seed=0, layout="NHWC", **kw), xs, ls, True)
    assert pooled == {"norm_backward_reduce": 0, "norm_backward_apply": 0}, pooled
    h_u = _train(models.mobilenet_small(3, 5, seed=0, layout="NHWC", **kw), xs, ls, False)
    _assert_same_training(h_f, h_u)


@pytest.mark.parametrize("model", ["mobilenet", "resnext"])
def test_apply_pass_in_place_gives_the_same_gradients(model, monkeypatch):
    """Fused NHWC training: a norm whose apply pass no convolution evaluates writes it in place,
    over the masked gradient its consumer's compiled pass wrote (mobilenet_small's norms after its
    depthwise layers, resnext_small's after its grouped layers), where that gradient is not also a
    residual's; a depthwise layer at stride 1 then writes its input gradient over that, after its
    weight gradient (or a depthwise or strided grouped layer takes the pass unwritten, in one pass
    with both gradients). The gradients are bitwise those written into buffers of the layers' own,
    over two steps."""
    inplace, dw_inplace, onepass = [], [], []
    real = _core.norm_backward_apply
    real_in = _core.conv2d_fused_backward_input

    def spy(*a, **k):
        inplace.append(a[3] is a[0])
        return real(*a, **k)

    def spy_in(*a, **k):
        # over its grad_out, or (the one pass from the norm's apply pass) over the pass's g
        ap = k.get("dy_apply")
        onepass.append(a[0] is None and ap is not None and a[1].shape[2] == 3)  # (a depthwise or grouped 3x3)
        dw_inplace.append(a[2] is a[0] or (onepass[-1] and a[2] is ap[0]))
        return real_in(*a, **k)
    monkeypatch.setattr(_core, "norm_backward_apply", spy)
    monkeypatch.setattr(_core, "conv2d_fused_backward_input", spy_in)
    if model == "mobilenet":
        make = lambda: models.mobilenet_small(3, 5, seed=0, layout="NHWC", widths=(8, 16, 16, 32))  # noqa: E731
    else:
        make = lambda: models.resnext_small(3, 5, seed=0, layout="NHWC", widths=(16, 32, 32))  # noqa: E731
    xs, ls = _data((4, 8, 8, 3), 2, 5)
    h_in = _train(make(), xs, ls, True)
    # three norms each step, those after depthwise and strided grouped layers handed over to them
    # (one pass: the apply pass and both gradients; at stride 1 dx over the norm's grad;
    # resnext_small's first grouped layer is depthwise at these widths)
    assert sum(inplace) + sum(onepass) >= 2 * 3, (inplace, onepass)
    if model == "mobilenet":  # its two depthwise layers at stride 1 write dx over their grad
        assert sum(dw_inplace) >= 2 * 2, dw_inplace
    real_defer = nn.BatchNorm2d._apply_or_defer

    def out_of_place(self, *a, **k):
        k["inplace"] = False
        return real_defer(self, *a, **k)
    monkeypatch.setattr(nn.BatchNorm2d, "_apply_or_defer", out_of_place)
    monkeypatch.setattr(nn.Conv2d, "_in_place_backward", lambda self, *a: None)
    inplace.clear()
    dw_inplace.clear()
    onepass.clear()
    h_out = _train(make(), xs, ls, True)
    assert not any(inplace) and not any(dw_inplace)
    for (la, ga, xa, _), (lb, gb, xb, _) in zip(h_in, h_out):
        assert la == lb
        for u, v in zip(ga, gb):
            assert_bitwise(u, v, "parameter gradient")
        assert_bitwise(xa, xb, "input gradient")


def test_pool_gradient_is_a_broadcast_view_only_when_fused():
    m = _head("NHWC", np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 3)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal((2, 12)).astype(np.float32)
    with nn.fusion(True):
        m.forward(x)
    pool = m[2]
    gi = pool.backward(g)
    assert gi.shape == (2, 5, 5, 12) and gi.strides[1] == gi.strides[2] == 0 and not gi.flags.writeable
    assert_bitwise(np.ascontiguousarray(gi), np.broadcast_to((g * np.float32(1 / 25))[:, None, None, :], gi.shape),
                   "adjoint")
    with nn.fusion(False):
        m.forward(x)
    gi_u = pool.backward(g)
    assert gi_u.flags.c_contiguous and gi_u.flags.writeable
    assert_bitwise(gi_u, np.ascontiguousarray(gi), "unfused adjoint")


def test_captures_until_and_inject_at_the_norm():
    """A captured norm is materialised (the pool runs on it); until= at the norm returns its
    output; inject= at the norm (whose output the pool averaged unwritten) gives the unfused
    gradients."""
    x = np.random.default_rng(1).standard_normal((4, 6, 6, 3)).astype(np.float32)
    inj = np.random.default_rng(3).standard_normal((4, 6, 6, 12)).astype(np.float32)
    out = {}
    for fuse in (True, False):
        m = _head("NHWC", np.random.default_rng(0))
        with nn.fusion(fuse):
            cap = m.capture("1")
            y = m.forward(x)
            assert m[2]._pre_norm is None  # captured: not fused
            m.backward(np.ones_like(y))
            m.release()
            until = m.forward(x, until="1").copy()
            y = m.forward(x)
            assert (m[2]._pre_norm is not None) == fuse
            m.backward(np.ones_like(y), inject={"1": inj})
            g_inj = [g.copy() for g in m.gradients()]
        out[fuse] = (cap.output.copy(), cap.grad.copy(), until, g_inj)
    f, u = out[True], out[False]
    assert_close(f[0], u[0], np.float32, length=100, what="captured output")
    assert_close(f[1], u[1], np.float32, length=100, what="captured grad")
    assert_close(f[2], u[2], np.float32, length=100, what="until output")
    G = max(float(np.abs(g).max()) for g in u[3])
    for gf, gu in zip(f[3], u[3]):
        assert np.abs(gf - gu).max() <= 2e-5 * np.abs(gu).max() + 1e-6 * G


def _one_pass_same_training(monkeypatch, make, xs, ls, takes, expected):
    """Trains ``make()`` two steps fused with the one-pass backward (the compiled input gradient
    called with grad_out None and the norm's apply pass, for weights where ``takes(weight)``, counted
    against ``expected``) and again with the norms keeping those layers' passes (their
    ``_apply_taker`` declining those of more than one group): the losses and gradients bitwise
    equal."""
    one = []
    real_in = _core.conv2d_fused_backward_input

    def spy_in(*a, **k):
        one.append(a[0] is None and k.get("dy_apply") is not None and takes(a[1]))
        return real_in(*a, **k)
    monkeypatch.setattr(_core, "conv2d_fused_backward_input", spy_in)
    h_one = _train(make(), xs, ls, True)
    assert sum(one) == expected, one
    real_taker = nn.BatchNorm2d._apply_taker

    def declined(self):
        c = real_taker(self)
        return None if c is not None and c.groups > 1 and takes(c.params["weight"]) else c
    monkeypatch.setattr(nn.BatchNorm2d, "_apply_taker", declined)
    one.clear()
    h_sep = _train(make(), xs, ls, True)
    assert not any(one)
    for (la, ga, xa, _), (lb, gb, xb, _) in zip(h_one, h_sep):
        assert la == lb
        for u, v in zip(ga, gb):
            assert_bitwise(u, v, "parameter gradient")
        assert_bitwise(xa, xb, "input gradient")


@pytest.mark.parametrize("size,batch", [(8, 8), (12, 9), (8, 4)])
def test_depthwise_one_pass_gives_the_same_gradients(size, batch, monkeypatch):
    """mobilenet_small, NHWC, fused: the norm after each depthwise layer hands its apply pass over
    unwritten, and the layer's compiled backward evaluates it, the weight gradient and the input
    gradient image by image (at stride 1 the register rows' weight sums at 8x8 and 16 channels,
    the band kernel's at 8 channels and at 12x12; at stride 2 the band kernel's; below 8 images the
    band kernel's shapes fall back to the separate passes inside the call). The losses and
    gradients of two steps are bitwise those with the pass written by the norm and the gradients
    in their own passes; the three depthwise layers (two at stride 1) take it each step."""
    make = lambda: models.mobilenet_small(3, 5, seed=0, layout="NHWC", widths=(8, 16, 16, 32))  # noqa: E731
    xs, ls = _data((batch, size, size, 3), 2, 5)
    _one_pass_same_training(monkeypatch, make, xs, ls, lambda w: w.shape[1] == 1, 2 * 3)


def test_grouped_one_pass_gives_the_same_gradients(monkeypatch):
    """resnext_small, NHWC, fused, 16 images of 16x16: the norm after each strided grouped layer
    (g8 at 16x16 and 8x8, stride 2) hands its apply pass over unwritten, and the layer's compiled
    backward evaluates it and both gradients image by image (the one at 8x8 cuts its weight pieces
    into blocks of channels: the call runs the three passes). The same losses and gradients as
    with the pass written by the norm, bitwise."""
    make = lambda: models.resnext_small(3, 5, seed=0, layout="NHWC", widths=(16, 32, 32))  # noqa: E731
    xs, ls = _data((16, 16, 16, 3), 2, 5)
    _one_pass_same_training(monkeypatch, make, xs, ls, lambda w: w.shape[2] == 3 and w.shape[1] > 1, 2 * 2)
