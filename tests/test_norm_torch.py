"""cnnkit's batch norm and group norm against PyTorch itself (skipped when torch is not installed).

torch.nn.functional.batch_norm (training=True, with running statistics updated in place, and
training=False) and group_norm, with the fused ReLU and residual written out in torch, gradients
from autograd; the saved statistics from torch.ops.aten.native_batch_norm / native_group_norm.
Inputs are NCHW tensors or channels_last tensors (cnnkit's NHWC arrays hold the same memory
order), in float64 (conftest's float64 tolerance) and float32 (the float32 one). Ghost batch
norm is torch's batch_norm applied per chunk, with the running statistics averaged as the spec
says. Tolerances are tests/test_norm.py's: conftest.tol(dtype, reduction length) applied to
max(|ref|, sum of the absolute values of the terms).
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from reference import norm as R
# shared helpers only (no test functions: those would be collected twice)
from test_norm import (DTYPES, LAYOUTS, _with_layouts, assert_close_terms, from_layout,
                       gn_grad_terms, gn_y_terms, grad_terms, make_case, make_gn_case, to_layout,
                       y_terms)

torch = pytest.importorskip("torch")
F = torch.nn.functional

SHAPES = ((4, 3), (2, 16, 5, 7), (3, 17, 4, 4), (1, 8, 3, 5), (6, 1, 2, 2), (5, 33, 1, 1))
FLAGS = (
    dict(affine=True, residual=False, activation=None),
    dict(affine=False, residual=False, activation=None),
    dict(affine=True, residual=True, activation="relu"),
    dict(affine=True, residual=False, activation="relu"),
)


def _ids(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


def tt(a_layout, layout, requires_grad=False):
    """A torch tensor (logical NCHW) over cnnkit's array: channels_last for NHWC."""
    a = np.array(a_layout, copy=True)
    if a.ndim == 4 and layout == "NHWC":
        t = torch.from_numpy(a).permute(0, 3, 1, 2)          # channels_last strides
        assert t.is_contiguous(memory_format=torch.channels_last)
    else:
        t = torch.from_numpy(a)
    return t.requires_grad_(requires_grad)


def back_np(t, layout):
    """A torch tensor (logical NCHW) as an array in cnnkit's `layout`."""
    a = t.detach().numpy()
    if a.ndim == 4 and layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a)


def vec(a, requires_grad=False):
    return None if a is None else torch.from_numpy(a.copy()).requires_grad_(requires_grad)


def zero_near_kink(c, g, pre, mean, invstd):
    """Zero grad_out where the ReLU's input is within rounding of 0 (the two sides may round it
    to different signs)."""
    g = g.copy()
    if c.activation == "relu":
        terms = y_terms(c.x, c.weight, c.bias, c.residual, mean, invstd, c.layout, c.v)
        g[np.abs(pre) <= 64 * np.finfo(c.dtype).eps * terms] = 0
    return g


def torch_train(c, momentum):
    """torch forward + autograd; ghost BN as per-chunk batch_norm. Returns a dict of arrays."""
    x = tt(c.x, c.layout, True)
    w, b = vec(c.weight, True), vec(c.bias, True)
    r = None if c.residual is None else tt(c.residual, c.layout, True)
    rm, rv = vec(c.running_mean), vec(c.running_var)
    nb = x.shape[0]
    if c.v is None:
        pre = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=c.eps)
        with torch.no_grad():
            _, sm, si = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, momentum,
                                                         c.eps)
        sm, si = sm.double().numpy(), si.double().numpy()
    else:
        outs, sms, sis, means, uvars = [], [], [], [], []
        dims = [0] + list(range(2, x.dim()))
        for k in range(nb // c.v):
            xk = x[k * c.v:(k + 1) * c.v]
            outs.append(F.batch_norm(xk, None, None, w, b, training=True, eps=c.eps))
            with torch.no_grad():
                _, smk, sik = torch.ops.aten.native_batch_norm(xk, w, b, None, None, True, 0.0,
                                                              c.eps)
                sms.append(smk.double())
                sis.append(sik.double())
                means.append(xk.mean(dims))
                uvars.append(xk.var(dims, unbiased=True))
        pre = torch.cat(outs)
        sm, si = torch.stack(sms).numpy(), torch.stack(sis).numpy()
        if rm is not None:
            with torch.no_grad():
                rm.mul_(1 - momentum).add_(momentum * torch.stack(means).mean(0))
                rv.mul_(1 - momentum).add_(momentum * torch.stack(uvars).mean(0))
    if r is not None:
        pre = pre + r
    y = torch.relu(pre) if c.activation == "relu" else pre
    return dict(x=x, w=w, b=b, r=r, y=y, pre=back_np(pre, c.layout), sm=sm, si=si,
                rm=None if rm is None else rm.numpy(), rv=None if rv is None else rv.numpy())


def _params():
    for shape in SHAPES:
        for layout in LAYOUTS:
            if len(shape) == 2 and layout == "NHWC":
                continue
            if shape[0] * (1 if len(shape) == 2 else shape[2] * shape[3]) < 2:
                continue  # training needs more than one value per channel (torch raises too)
            for dtype in DTYPES:
                yield pytest.param(shape, layout, dtype,
                                   id=f"{_ids(shape)}-{layout}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("shape,layout,dtype", list(_params()))
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(
    k if isinstance(v, bool) else str(v) for k, v in f.items() if v))
def test_batch_norm_train_and_backward_match_torch(shape, layout, dtype, flags, rng):
    c = make_case(rng, shape, layout, dtype, running=True, momentum=0.3, eps=1e-4, **flags)
    t = torch_train(c, 0.3)
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    y, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, momentum=0.3, eps=c.eps,
                                        activation=c.activation, residual=c.residual,
                                        layout=c.layout)
    n = c.n
    terms = y_terms(c.x, c.weight, c.bias, c.residual, t["sm"], t["si"], c.layout)
    assert_close_terms(y, back_np(t["y"], layout), dtype, terms, length=n, what="y vs torch")
    xabs = np.abs(R.to_ncs(c.x, layout)).mean(axis=(0, 2))
    assert_close_terms(sm, t["sm"], dtype, xabs, length=n, what="save_mean vs torch")
    assert_close_terms(si, t["si"], dtype, 0, length=n, what="save_invstd vs torch")
    assert_close_terms(rm, t["rm"], dtype, 0.7 * np.abs(c.running_mean) + 0.3 * xabs,
                       length=n, what="running_mean vs torch")
    assert_close_terms(rv, t["rv"], dtype, np.abs(t["rv"]), length=n,
                       what="running_var vs torch")

    G = zero_near_kink(c, c.grad_out, t["pre"], t["sm"], t["si"])
    t["y"].backward(tt(G, layout))
    g_masked = G if c.activation is None else np.where(t["pre"] > 0, G, 0)
    tx, tw, tb = grad_terms(g_masked, c.x, c.weight, t["sm"], t["si"], layout)
    for y_for_mask in ((y, None) if c.activation else (None,)):
        gx, gw, gb, gr = cnnkit.batch_norm_backward(
            G, c.x, c.weight, sm, si, y=y_for_mask, bias=c.bias, residual=c.residual,
            activation=c.activation, layout=layout, needs=("input", "weight", "bias", "residual"))
        how = "mask from y" if y_for_mask is not None else "mask recomputed"
        assert_close_terms(gx, back_np(t["x"].grad, layout), dtype, tx, length=n,
                           what=f"grad_x vs torch ({how})")
        if c.weight is not None:
            assert_close_terms(gw, t["w"].grad.numpy(), dtype, tw, length=n,
                               what=f"grad_weight vs torch ({how})")
            assert_close_terms(gb, t["b"].grad.numpy(), dtype, tb, length=n,
                               what=f"grad_bias vs torch ({how})")
        else:
            assert gw is None and gb is None
        if c.residual is not None:
            assert_close_terms(gr, back_np(t["r"].grad, layout), dtype, 0,
                               what=f"grad_residual vs torch ({how})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,v", [((8, 6, 3, 3), 2), ((6, 16, 2, 5), 3), ((4, 17, 1, 1), 2)],
                         ids=_ids)
def test_ghost_batch_norm_matches_torch_per_chunk(shape, v, layout, dtype, rng):
    c = make_case(rng, shape, layout, dtype, residual=True, activation="relu", momentum=0.2,
                  v=v)
    t = torch_train(c, 0.2)
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    y, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, momentum=0.2,
                                        activation="relu", residual=c.residual, layout=layout,
                                        virtual_batch_size=v)
    n = c.n
    terms = y_terms(c.x, c.weight, c.bias, c.residual, t["sm"], t["si"], layout, v)
    assert_close_terms(y, back_np(t["y"], layout), dtype, terms, length=n, what="ghost y")
    assert_close_terms(si, t["si"], dtype, 0, length=n, what="ghost save_invstd")
    xabs = np.abs(R.to_ncs(c.x, layout)).mean(axis=(0, 2))
    assert_close_terms(rm, t["rm"], dtype, np.abs(c.running_mean) + xabs, length=n,
                       what="ghost running_mean")
    assert_close_terms(rv, t["rv"], dtype, np.abs(t["rv"]), length=n, what="ghost running_var")
    G = zero_near_kink(c, c.grad_out, t["pre"], t["sm"], t["si"])
    t["y"].backward(tt(G, layout))
    gx, gw, gb = cnnkit.batch_norm_backward(G, c.x, c.weight, sm, si, y=y, activation="relu",
                                            layout=layout, virtual_batch_size=v)
    tx, tw, tb = grad_terms(np.where(t["pre"] > 0, G, 0), c.x, c.weight, t["sm"], t["si"],
                            layout, v)
    assert_close_terms(gx, back_np(t["x"].grad, layout), dtype, tx, length=n, what="ghost grad_x")
    assert_close_terms(gw, t["w"].grad.numpy(), dtype, tw, length=n * shape[0] // v,
                       what="ghost grad_weight")
    assert_close_terms(gb, t["b"].grad.numpy(), dtype, tb, length=n * shape[0] // v,
                       what="ghost grad_bias")


@pytest.mark.parametrize("shape,layout,dtype", list(_params()))
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(
    k if isinstance(v, bool) else str(v) for k, v in f.items() if v))
def test_batch_norm_infer_matches_torch(shape, layout, dtype, flags, rng):
    c = make_case(rng, shape, layout, dtype, running=True, eps=1e-3, **flags)
    pre = F.batch_norm(tt(c.x, layout), vec(c.running_mean), vec(c.running_var),
                       vec(c.weight), vec(c.bias), training=False, eps=c.eps)
    if c.residual is not None:
        pre = pre + tt(c.residual, layout)
    want = back_np(torch.relu(pre) if c.activation else pre, layout)
    y = cnnkit.batch_norm_infer(c.x, c.weight, c.bias, c.running_mean, c.running_var, eps=c.eps,
                                activation=c.activation, residual=c.residual, layout=layout)
    invstd = 1 / np.sqrt(c.running_var.astype(np.float64) + c.eps)
    assert_close_terms(y, want, dtype, y_terms(c.x, c.weight, c.bias, c.residual,
                                               c.running_mean, invstd, layout),
                       what="infer y vs torch")


GN_SHAPES = (((2, 6, 3, 4), 3), ((1, 16, 5, 5), 4), ((3, 17, 2, 3), 1), ((2, 32, 1, 1), 32),
             ((4, 8), 2), ((2, 12, 7, 5), 6))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,groups,layout", _with_layouts(GN_SHAPES), ids=lambda v: str(v))
@pytest.mark.parametrize("affine,activation", [(True, None), (False, None), (True, "relu")])
def test_group_norm_matches_torch(shape, groups, layout, dtype, affine, activation, rng):
    c = make_gn_case(rng, shape, groups, layout, dtype, affine=affine, activation=activation,
                     eps=1e-4)
    x = tt(c.x, layout, True)
    w, b = vec(c.weight, True), vec(c.bias, True)
    pre = F.group_norm(x, groups, w, b, c.eps)
    y_t = torch.relu(pre) if activation else pre
    nb, ch = shape[:2]
    hw = 1 if len(shape) == 2 else shape[2] * shape[3]
    with torch.no_grad():
        _, tm, ts = torch.ops.aten.native_group_norm(x.contiguous().reshape(nb, ch, hw), w, b,
                                                     nb, ch, hw, groups, c.eps)
    tm, ts = tm.double().numpy(), ts.double().numpy()
    y, sm, si = cnnkit.group_norm(c.x, groups, c.weight, c.bias, c.eps, activation=activation,
                                  layout=layout, return_stats=True)
    n = c.n
    assert_close_terms(y, back_np(y_t, layout), dtype,
                       gn_y_terms(c.x, groups, c.weight, c.bias, tm, ts, layout), length=n,
                       what="group norm y vs torch")
    xabs = np.abs(R.to_ncs(c.x, layout)).reshape(nb, groups, -1).mean(axis=2)
    assert_close_terms(sm, tm, dtype, xabs, length=n, what="group norm mean vs torch")
    assert_close_terms(si, ts, dtype, 0, length=n, what="group norm invstd vs torch")

    G = c.grad_out.copy()
    pre_np = back_np(pre, layout)
    if activation:
        terms = gn_y_terms(c.x, groups, c.weight, c.bias, tm, ts, layout)
        G[np.abs(pre_np) <= 64 * np.finfo(dtype).eps * terms] = 0
    y_t.backward(tt(G, layout))
    g_masked = np.where(pre_np > 0, G, 0) if activation else G
    tx, tw, tb = gn_grad_terms(g_masked, c.x, groups, c.weight, tm, ts, layout)
    for y_for_mask in ((y, None) if activation else (None,)):
        gx, gw, gb = cnnkit.group_norm_backward(G, c.x, groups, c.weight, sm, si, y=y_for_mask,
                                                bias=c.bias, activation=activation,
                                                layout=layout)
        assert_close_terms(gx, back_np(x.grad, layout), dtype, tx, length=n,
                           what="group norm grad_x vs torch")
        if affine:
            total = nb * hw
            assert_close_terms(gw, w.grad.numpy(), dtype, tw, length=total,
                               what="group norm grad_weight vs torch")
            assert_close_terms(gb, b.grad.numpy(), dtype, tb, length=total,
                               what="group norm grad_bias vs torch")
        else:
            assert gw is None and gb is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("groups,depthwise", [(1, False), (2, False), (4, True)])
def test_fold_batch_norm_matches_torch_conv_bn(groups, depthwise, dtype, rng):
    ci = 4
    co = 4 if depthwise else 6
    conv = torch.nn.Conv2d(ci, co, 3, padding=1, groups=groups, bias=True).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    bn = torch.nn.BatchNorm2d(co, eps=1e-3).to(conv.weight.dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(size=co).astype(dtype)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 2, co).astype(dtype)))
        bn.weight.copy_(torch.from_numpy(rng.normal(size=co).astype(dtype)))
        bn.bias.copy_(torch.from_numpy(rng.normal(size=co).astype(dtype)))
        x = torch.from_numpy(rng.normal(size=(2, ci, 6, 5)).astype(dtype))
        want = bn(conv(x)).numpy()
        w2, b2 = cnnkit.fold_batch_norm(conv.weight.detach().numpy(), conv.bias.detach().numpy(),
                                        bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                                        bn.running_mean.numpy(), bn.running_var.numpy(), eps=1e-3)
        assert w2.dtype == dtype and b2.dtype == dtype
        got = F.conv2d(x, torch.from_numpy(w2), torch.from_numpy(b2), padding=1,
                       groups=groups).numpy()
    absconv = F.conv2d(x.abs().double(), conv.weight.detach().abs().double(), None, padding=1,
                       groups=groups).numpy()
    s = np.abs(bn.weight.detach().double().numpy()) / np.sqrt(
        bn.running_var.double().numpy() + 1e-3)
    terms = s.reshape(1, co, 1, 1) * (absconv + (np.abs(conv.bias.detach().double().numpy())
                                                 + np.abs(bn.running_mean.double().numpy()))
                                      .reshape(1, co, 1, 1)) \
        + np.abs(bn.bias.detach().double().numpy()).reshape(1, co, 1, 1)
    k = (ci // groups) * 9
    assert_close_terms(got, want, dtype, terms, length=k, what="folded conv vs torch conv+bn")


def test_channels_last_tensor_memory_is_cnnkit_nhwc(rng):
    """The channels_last torch tensor and cnnkit's NHWC array hold the same bytes, so a caller
    can pass t.permute(0, 2, 3, 1).numpy() straight through."""
    c = make_case(rng, (2, 5, 3, 4), "NCHW", np.float32)
    t = torch.from_numpy(c.x).to(memory_format=torch.channels_last)
    nhwc = t.permute(0, 2, 3, 1).numpy()
    assert nhwc.flags.c_contiguous
    np.testing.assert_array_equal(from_layout(nhwc, "NHWC"), c.x)
    y_t = F.batch_norm(t, None, None, training=True)
    y, _, _ = cnnkit.batch_norm_train(nhwc, None, None, None, None, layout="NHWC")
    np.testing.assert_allclose(y, to_layout(y_t.numpy(), "NHWC"), rtol=1e-4, atol=1e-5)
