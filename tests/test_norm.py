"""Tests for cnnkit's batch norm (training, inference, backward, ghost BN, folding) and group norm.

Layers (STYLE.md, Tests):

* named edge cases: N = 1 with H*W > 1, (N, C) input, C = 1, 15, 16, 17, 64 (around and on the
  8/16-lane float32 and 4/8-lane float64 vectors), spatial 1x1 with N > 1, odd sizes, both layouts,
  both dtypes, every flag; NHWC and NCHW give the same numbers;
* hypothesis properties over shapes, layouts, dtypes and flags (activation, residual, affine,
  running statistics or None, momentum, eps, virtual_batch_size) against the float64 references
  of tests/reference/norm.py: training forward (y, saved and running statistics), inference,
  backward (every gradient, the ReLU mask from y and recomputed, every `needs` subset), group
  norm forward and backward, folding;
* invariants: per-channel output mean 0 / variance 1 before the affine, training output equals
  inference with the batch statistics, folding equals conv followed by inference BN, momentum 0
  and 1; finite differences of the float64 forward against the backward;
* the large-mean stress of the issue (float32, per-channel mean 1e4..1e6, std 1e-2..1) within
  1e-3 of the float64 reference computed on the same float32 values;
* the same bits at 1 and 2 threads, every ISA level against the reference (reductions may round
  differently per level, so levels are not compared with each other bitwise);
* bad input: the documented exception naming the argument, with nothing modified; `out=` reuse.

Tolerances: conftest.tol(dtype, length=n) with n the reduction length. An output is a sum of
terms whose rounding errors are proportional to the terms, not to the (possibly cancelling)
result, so the bound is atol + rtol * max(|ref|, terms) where `terms` is the sum of the
absolute values of what enters that element (e.g. |w| * invstd * (|x| + |mean|) + |b| + |r| for
y); this is the textbook error bound of a floating-point sum.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from conftest import assert_bitwise, assert_close, assert_unchanged, num_threads, snapshot, tol
from reference import norm as R

SETTINGS = settings(max_examples=30, deadline=None)
DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")
ALL_NEEDS = ("input", "weight", "bias")


# ---- cases --------------------------------------------------------------------------------------

def to_layout(a_nchw, layout):
    """An (N, C, H, W) array in `layout` (C-contiguous); 2-D arrays are returned as they are."""
    a = np.asarray(a_nchw)
    if a.ndim == 4 and layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a)


def from_layout(a, layout):
    """Back to (N, C, H, W) (or (N, C))."""
    a = np.asarray(a)
    if a.ndim == 4 and layout == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(a)


def _per_channel_shape(ndim):
    return (1, -1) + (1,) * (ndim - 2)


@dataclass
class Case:
    x: np.ndarray
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    residual: Optional[np.ndarray]
    running_mean: Optional[np.ndarray]
    running_var: Optional[np.ndarray]
    grad_out: np.ndarray
    layout: str = "NCHW"
    activation: Optional[str] = None
    momentum: float = 0.1
    eps: float = 1e-5
    v: Optional[int] = None

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def n(self):
        """Values per channel (per chunk) in one statistic."""
        return R.reduction_length(self.x.shape, self.layout, self.v)

    @property
    def total(self):
        return R.reduction_length(self.x.shape, self.layout)


def make_case(rng, shape, layout="NCHW", dtype=np.float32, *, affine=True, residual=False,
              running=True, activation=None, momentum=0.1, eps=1e-5, v=None, loc=3.0,
              spread=(0.3, 3.0)):
    """Random inputs; `shape` is in NCHW order ((N, C) for 2-D), arrays are made in `layout`.
    Each channel gets its own mean in [-loc, loc] and std log-uniform in `spread`."""
    c = shape[1]
    pc = _per_channel_shape(len(shape))
    mean_c = rng.uniform(-loc, loc, c).reshape(pc)
    std_c = np.exp(rng.uniform(np.log(spread[0]), np.log(spread[1]), c)).reshape(pc)
    x = to_layout(mean_c + std_c * rng.standard_normal(shape), layout).astype(dtype)

    def arr(a):
        return np.ascontiguousarray(np.asarray(a, dtype=dtype))

    return Case(
        x=x,
        weight=arr(rng.normal(0.0, 1.5, c)) if affine else None,
        bias=arr(rng.normal(0.0, 1.0, c)) if affine else None,
        residual=arr(to_layout(rng.normal(0.0, 1.0, shape), layout)) if residual else None,
        running_mean=arr(rng.normal(0.0, 1.0, c)) if running else None,
        running_var=arr(rng.uniform(0.5, 2.0, c)) if running else None,
        grad_out=arr(to_layout(rng.normal(0.0, 1.0, shape), layout)),
        layout=layout, activation=activation, momentum=momentum, eps=eps, v=v)


def copy_or_none(a):
    return None if a is None else a.copy()


# ---- tolerances ---------------------------------------------------------------------------------

def assert_close_terms(actual, ref, dtype, terms, *, length=1, what="value"):
    """conftest's atol + rtol*|ref| rule with |ref| replaced by max(|ref|, terms)."""
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    t = tol(dtype, length)
    bound = t["atol"] + t["rtol"] * np.maximum(np.abs(ref), np.broadcast_to(terms, ref.shape))
    err = np.abs(actual - ref)
    bad = ~(err <= bound)
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), ref.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.size} elements out of tolerance; "
                             f"worst at index {idx}: got {actual[idx]!r}, expected {ref[idx]!r} "
                             f"(bound {bound[idx]:.3g})")


def _chunked(a3, v):
    """(N, C, S) -> (K, v, C, S)."""
    nb = a3.shape[0]
    v = nb if v is None else v
    return a3.reshape(nb // v, v, *a3.shape[1:])


def _stat4(s, k, c):
    return np.asarray(s, dtype=np.float64).reshape(k, 1, c, 1)


def _w3(w, c):
    return np.ones(c) if w is None else np.abs(np.asarray(w, dtype=np.float64))


def y_terms(x, weight, bias, residual, mean, invstd, layout, v=None):
    """|w| * invstd * (|x| + |mean|) + |b| + |r|: what enters one output of the normalisation."""
    x3 = R.to_ncs(x, layout)
    nb, c, s = x3.shape
    xc = _chunked(x3, v)
    k = xc.shape[0]
    w = _w3(weight, c).reshape(1, 1, c, 1)
    t = w * _stat4(invstd, k, c) * (np.abs(xc) + np.abs(_stat4(mean, k, c)))
    if bias is not None:
        t = t + np.abs(np.asarray(bias, np.float64)).reshape(1, 1, c, 1)
    t = t.reshape(nb, c, s)
    if residual is not None:
        t = t + np.abs(R.to_ncs(residual, layout))
    return R.from_ncs(t, x.shape, layout)


def grad_terms(g_masked, x, weight, mean, invstd, layout, v=None):
    """(terms of grad_x, of grad_weight, of grad_bias) for the training-mode BN backward
    dx = w*invstd*(g - mean(g) - xhat*mean(g*xhat))."""
    x3 = R.to_ncs(x, layout)
    nb, c, s = x3.shape
    xc = _chunked(x3, v)
    gc = _chunked(R.to_ncs(g_masked, layout), v)
    k = xc.shape[0]
    m, istd = _stat4(mean, k, c), _stat4(invstd, k, c)
    w = _w3(weight, c).reshape(1, 1, c, 1)
    xabs = (np.abs(xc) + np.abs(m)) * istd          # |x - mean| * invstd with the rounding of x
    ag = np.abs(gc)
    dx = w * istd * (ag + ag.mean(axis=(1, 3), keepdims=True)
                     + xabs * (ag * xabs).mean(axis=(1, 3), keepdims=True))
    gw = (ag * xabs).sum(axis=(0, 1, 3))
    gb = ag.sum(axis=(0, 1, 3))
    return R.from_ncs(dx.reshape(nb, c, s), x.shape, layout), gw, gb


def gn_y_terms(x, num_groups, weight, bias, mean, invstd, layout):
    x3 = R.to_ncs(x, layout)
    nb, c, s = x3.shape
    xg = x3.reshape(nb, num_groups, c // num_groups, s)
    m = np.asarray(mean, np.float64).reshape(nb, num_groups, 1, 1)
    istd = np.asarray(invstd, np.float64).reshape(nb, num_groups, 1, 1)
    t = (istd * (np.abs(xg) + np.abs(m))).reshape(nb, c, s) * _w3(weight, c).reshape(1, c, 1)
    if bias is not None:
        t = t + np.abs(np.asarray(bias, np.float64)).reshape(1, c, 1)
    return R.from_ncs(t, x.shape, layout)


def gn_grad_terms(g_masked, x, num_groups, weight, mean, invstd, layout):
    x3 = R.to_ncs(x, layout)
    nb, c, s = x3.shape
    gsz = c // num_groups
    w = _w3(weight, c).reshape(1, c, 1)
    ag = np.abs(R.to_ncs(g_masked, layout))
    m = np.asarray(mean, np.float64).reshape(nb, num_groups, 1, 1)
    istd = np.asarray(invstd, np.float64).reshape(nb, num_groups, 1, 1)
    xabs = (np.abs(x3.reshape(nb, num_groups, gsz, s)) + np.abs(m)) * istd
    agw = (ag * w).reshape(nb, num_groups, gsz, s)
    dx = istd * (agw + agw.mean(axis=(2, 3), keepdims=True)
                 + xabs * (agw * xabs).mean(axis=(2, 3), keepdims=True))
    xabs3 = xabs.reshape(nb, c, s)
    return (R.from_ncs(dx.reshape(nb, c, s), x.shape, layout),
            (ag * xabs3).sum(axis=(0, 2)), ag.sum(axis=(0, 2)))


# ---- checkers shared by edge cases, hypothesis and the ISA runs ---------------------------------

def check_train(c: Case, *, out=None):
    """batch_norm_train against R.bn_train_forward; returns (y, save_mean, save_invstd)."""
    inputs = (c.x, c.weight, c.bias, c.residual)
    snaps = snapshot(*inputs)
    rm, rv = copy_or_none(c.running_mean), copy_or_none(c.running_var)
    ref = R.bn_train_forward(c.x, c.weight, c.bias, rm, rv, momentum=c.momentum, eps=c.eps,
                             activation=c.activation, residual=c.residual, layout=c.layout,
                             virtual_batch_size=c.v)
    y, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, momentum=c.momentum,
                                        eps=c.eps, activation=c.activation, residual=c.residual,
                                        layout=c.layout, virtual_batch_size=c.v, out=out)
    assert_unchanged(inputs, snaps)
    if out is not None:
        assert y is out, "batch_norm_train did not return its out= array"
    assert y.dtype == c.dtype and y.shape == c.x.shape, (y.dtype, y.shape)
    ch = R.channels_of(c.x.shape, c.layout)
    stat_shape = (ch,) if c.v is None else (c.x.shape[0] // c.v, ch)
    for name, s in (("save_mean", sm), ("save_invstd", si)):
        assert s.dtype == np.float64, f"{name} dtype {s.dtype}"
        assert s.shape == stat_shape, f"{name} shape {s.shape} != {stat_shape}"

    x3 = _chunked(R.to_ncs(c.x, c.layout), c.v)
    mean_abs = np.abs(x3).mean(axis=(1, 3))
    assert_close_terms(sm, ref.save_mean, c.dtype, mean_abs.reshape(stat_shape), length=c.n,
                       what="save_mean")
    assert_close(si, ref.save_invstd, c.dtype, length=c.n, what="save_invstd")
    assert_close_terms(y, ref.y, c.dtype, y_terms(c.x, c.weight, c.bias, c.residual,
                                                  ref.save_mean, ref.save_invstd, c.layout, c.v),
                       length=c.n, what="y")
    if c.running_mean is not None:
        m = c.momentum
        assert rm.dtype == c.dtype and rv.dtype == c.dtype
        assert_close_terms(rm, ref.running_mean, c.dtype,
                           (1 - m) * np.abs(c.running_mean) + m * mean_abs.mean(axis=0),
                           length=c.n, what="running_mean")
        assert_close_terms(rv, ref.running_var, c.dtype,
                           (1 - m) * np.abs(c.running_var) + m * np.abs(ref.running_var),
                           length=c.n, what="running_var")
    return y, sm, si


def check_infer(c: Case, *, out=None):
    inputs = (c.x, c.weight, c.bias, c.residual, c.running_mean, c.running_var)
    snaps = snapshot(*inputs)
    ref = R.bn_infer_forward(c.x, c.weight, c.bias, c.running_mean, c.running_var, eps=c.eps,
                             activation=c.activation, residual=c.residual, layout=c.layout)
    y = cnnkit.batch_norm_infer(c.x, c.weight, c.bias, c.running_mean, c.running_var, eps=c.eps,
                                activation=c.activation, residual=c.residual, layout=c.layout,
                                out=out)
    assert_unchanged(inputs, snaps)
    if out is not None:
        assert y is out, "batch_norm_infer did not return its out= array"
    assert y.dtype == c.dtype and y.shape == c.x.shape, (y.dtype, y.shape)
    invstd = 1.0 / np.sqrt(c.running_var.astype(np.float64) + c.eps)
    assert_close_terms(y, ref, c.dtype, y_terms(c.x, c.weight, c.bias, c.residual,
                                                c.running_mean, invstd, c.layout),
                       what="infer y")
    return y


def safe_grad_out(c: Case, mean, invstd):
    """grad_out with zeros where the ReLU's pre-activation is within rounding of 0, so that a
    mask recomputed in working precision and the float64 one agree wherever it matters."""
    g = c.grad_out.copy()
    if c.activation == "relu":
        pre = R.bn_train_forward(c.x, c.weight, c.bias, None, None, eps=c.eps,
                                 residual=c.residual, layout=c.layout, virtual_batch_size=c.v).y
        terms = y_terms(c.x, c.weight, c.bias, c.residual, mean, invstd, c.layout, c.v)
        g[np.abs(pre) <= 64 * np.finfo(c.dtype).eps * terms] = 0
    return g


def check_backward(c: Case, *, mask_from="y", needs=ALL_NEEDS, stats=None, y=None):
    """batch_norm_backward against R.bn_backward with the float64 reference statistics (or
    `stats`); the ReLU mask comes from `y` (default: the reference output in x's dtype) or,
    with mask_from="recompute", is recomputed by both sides."""
    ref_f = R.bn_train_forward(c.x, c.weight, c.bias, None, None, eps=c.eps,
                               activation=c.activation, residual=c.residual, layout=c.layout,
                               virtual_batch_size=c.v)
    sm, si = (ref_f.save_mean, ref_f.save_invstd) if stats is None else stats
    g = safe_grad_out(c, sm, si)
    if c.activation == "relu" and mask_from == "y" and y is None:
        y = ref_f.y.astype(c.dtype)
    if mask_from == "recompute":
        y = None
    inputs = (g, c.x, c.weight, sm, si, y, c.bias, c.residual)
    snaps = snapshot(*inputs)
    ref = R.bn_backward(g, c.x, c.weight, sm, si, y=y, bias=c.bias, residual=c.residual,
                        activation=c.activation, layout=c.layout, virtual_batch_size=c.v)
    res = cnnkit.batch_norm_backward(g, c.x, c.weight, sm, si, y=y, bias=c.bias,
                                     residual=c.residual, activation=c.activation,
                                     layout=c.layout, needs=needs, virtual_batch_size=c.v)
    assert_unchanged(inputs, snaps)
    assert len(res) == (4 if "residual" in needs else 3), len(res)
    gx, gw, gb = res[:3]
    tx, tw, tb = grad_terms(ref.grad_residual, c.x, c.weight, sm, si, c.layout, c.v)
    if "input" in needs:
        assert gx.dtype == c.dtype and gx.shape == c.x.shape, (gx.dtype, gx.shape)
        assert_close_terms(gx, ref.grad_x, c.dtype, tx, length=c.n, what="grad_x")
    else:
        assert gx is None, "grad_x not in needs but returned"
    for name, got, want, terms in (("weight", gw, ref.grad_weight, tw),
                                   ("bias", gb, ref.grad_bias, tb)):
        if name in needs and c.weight is not None:
            assert got.dtype == c.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
            assert_close_terms(got, want, c.dtype, terms, length=c.total, what=f"grad_{name}")
        else:
            assert got is None, f"grad_{name} returned (needs={needs}, weight={c.weight is None})"
    if "residual" in needs:
        gr = res[3]
        assert gr.dtype == c.dtype and gr.shape == c.x.shape
        # exactly the masked grad_out (+0 and -0 both accepted where masked)
        assert np.array_equal(gr, ref.grad_residual.astype(c.dtype)), "grad_residual"
    return res


# ---- group norm checkers ------------------------------------------------------------------------

@dataclass
class GNCase:
    x: np.ndarray
    num_groups: int
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    grad_out: np.ndarray
    layout: str = "NCHW"
    activation: Optional[str] = None
    eps: float = 1e-5

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def n(self):
        c = R.channels_of(self.x.shape, self.layout)
        per_sample = R.reduction_length(self.x.shape, self.layout) // self.x.shape[0]
        return per_sample * c // self.num_groups


def make_gn_case(rng, shape, num_groups, layout="NCHW", dtype=np.float32, *, affine=True,
                 activation=None, eps=1e-5, loc=3.0):
    bc = make_case(rng, shape, layout, dtype, affine=affine, running=False, loc=loc)
    # also give every sample its own offset (group norm normalises per sample)
    shift = rng.uniform(-loc, loc, (shape[0],) + (1,) * (len(shape) - 1)).astype(dtype)
    return GNCase(bc.x + shift, num_groups, bc.weight, bc.bias, bc.grad_out, layout, activation,
                  eps)


def check_group_norm(c: GNCase, *, return_stats=True):
    snaps = snapshot(c.x, c.weight, c.bias)
    ref = R.group_norm_forward(c.x, c.num_groups, c.weight, c.bias, c.eps,
                               activation=c.activation, layout=c.layout)
    res = cnnkit.group_norm(c.x, c.num_groups, c.weight, c.bias, c.eps, activation=c.activation,
                            layout=c.layout, return_stats=return_stats)
    assert_unchanged((c.x, c.weight, c.bias), snaps)
    if return_stats:
        y, sm, si = res
        nb = c.x.shape[0]
        for name, s in (("save_mean", sm), ("save_invstd", si)):
            assert s.dtype == np.float64 and s.shape == (nb, c.num_groups), (name, s.dtype, s.shape)
        xg = R.to_ncs(c.x, c.layout).reshape(nb, c.num_groups, -1)
        assert_close_terms(sm, ref.save_mean, c.dtype, np.abs(xg).mean(axis=2), length=c.n,
                           what="gn save_mean")
        assert_close(si, ref.save_invstd, c.dtype, length=c.n, what="gn save_invstd")
    else:
        y = res
        assert isinstance(y, np.ndarray)
    assert y.dtype == c.dtype and y.shape == c.x.shape, (y.dtype, y.shape)
    assert_close_terms(y, ref.y, c.dtype,
                       gn_y_terms(c.x, c.num_groups, c.weight, c.bias, ref.save_mean,
                                  ref.save_invstd, c.layout), length=c.n, what="gn y")
    return res


def check_group_norm_backward(c: GNCase, *, mask_from="y", needs=ALL_NEEDS):
    ref_f = R.group_norm_forward(c.x, c.num_groups, c.weight, c.bias, c.eps,
                                 activation=c.activation, layout=c.layout)
    sm, si = ref_f.save_mean, ref_f.save_invstd
    g = c.grad_out.copy()
    y = None
    if c.activation == "relu":
        pre = R.group_norm_forward(c.x, c.num_groups, c.weight, c.bias, c.eps, layout=c.layout).y
        terms = gn_y_terms(c.x, c.num_groups, c.weight, c.bias, sm, si, c.layout)
        g[np.abs(pre) <= 64 * np.finfo(c.dtype).eps * terms] = 0
        if mask_from == "y":
            y = ref_f.y.astype(c.dtype)
    inputs = (g, c.x, c.weight, sm, si, y, c.bias)
    snaps = snapshot(*inputs)
    ref = R.group_norm_backward(g, c.x, c.num_groups, c.weight, sm, si, y=y, bias=c.bias,
                                activation=c.activation, layout=c.layout)
    res = cnnkit.group_norm_backward(g, c.x, c.num_groups, c.weight, sm, si, y=y, bias=c.bias,
                                     activation=c.activation, layout=c.layout, needs=needs)
    assert_unchanged(inputs, snaps)
    assert len(res) == 3
    gx, gw, gb = res
    g_masked = g
    if c.activation:  # the mask only scales the tolerance terms here
        g_masked = np.where((y if y is not None else ref_f.y) > 0, g, 0)
    tx, tw, tb = gn_grad_terms(g_masked, c.x, c.num_groups, c.weight, sm, si, c.layout)
    if "input" in needs:
        assert gx.dtype == c.dtype and gx.shape == c.x.shape
        assert_close_terms(gx, ref.grad_x, c.dtype, tx, length=c.n, what="gn grad_x")
    else:
        assert gx is None
    total = R.reduction_length(c.x.shape, c.layout)
    for name, got, want, terms in (("weight", gw, ref.grad_weight, tw),
                                   ("bias", gb, ref.grad_bias, tb)):
        if name in needs and c.weight is not None:
            assert got.dtype == c.dtype and got.shape == want.shape
            assert_close_terms(got, want, c.dtype, terms, length=total, what=f"gn grad_{name}")
        else:
            assert got is None, f"gn grad_{name} returned"
    return res


# ---- named edge cases ---------------------------------------------------------------------------

EDGE_SHAPES = (
    (1, 4, 3, 5),     # N = 1, H*W > 1
    (5, 7),           # (N, C)
    (2, 3),           # (N, C), N = 2: the smallest legal batch
    (3, 1, 4, 4),     # C = 1
    (2, 15, 3, 3),
    (2, 16, 3, 3),
    (2, 17, 3, 3),
    (2, 64, 2, 3),
    (6, 16, 1, 1),    # spatial 1x1, N > 1
    (3, 13, 7, 5),    # odd sizes
    (1, 2, 1, 2),     # two values per channel
    (4, 33, 5, 9),
)
FLAG_SETS = (
    dict(affine=True, residual=False, running=True, activation=None),
    dict(affine=False, residual=False, running=False, activation=None),
    dict(affine=True, residual=True, running=True, activation="relu"),
    dict(affine=False, residual=True, running=True, activation="relu"),
    dict(affine=True, residual=False, running=False, activation="relu"),
)


def _edge_params():
    for shape, layout in itertools.product(EDGE_SHAPES, LAYOUTS):
        if len(shape) == 2 and layout == "NHWC":
            continue
        yield pytest.param(shape, layout, id=f"{'x'.join(map(str, shape))}-{layout}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,layout", list(_edge_params()))
def test_edge_batch_norm(shape, layout, dtype, rng):
    for flags in FLAG_SETS:
        c = make_case(rng, shape, layout, dtype, **flags, momentum=0.3, eps=1e-4)
        check_train(c)
        if c.running_mean is not None:
            check_infer(c)
        mask_sources = ("y", "recompute") if c.activation else ("y",)
        for mask_from in mask_sources:
            check_backward(c, mask_from=mask_from, needs=ALL_NEEDS + ("residual",))


def _with_layouts(cases):
    """(case..., layout) for every layout, except that 2-D input (no layout) runs once."""
    return [(*case, layout) for case in cases for layout in LAYOUTS
            if not (len(case[0]) == 2 and layout == "NHWC")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,v,layout", _with_layouts(
    [((4, 16, 3, 3), 2), ((6, 17), 3), ((8, 5, 1, 1), 2), ((4, 3, 2, 2), 1), ((6, 4, 3, 1), 6)]))
def test_edge_ghost_batch_norm(shape, v, layout, dtype, rng):
    for flags in FLAG_SETS[:3]:
        c = make_case(rng, shape, layout, dtype, **flags, momentum=0.25, v=v)
        check_train(c)
        check_backward(c, needs=ALL_NEEDS + ("residual",))
        if c.activation:
            check_backward(c, mask_from="recompute")


def test_ghost_with_whole_batch_equals_plain_batch_norm(rng):
    """virtual_batch_size = N is plain batch norm (statistics shaped (1, C))."""
    c = make_case(rng, (4, 6, 3, 3), "NCHW", np.float64, residual=True, activation="relu")
    rm1, rv1 = c.running_mean.copy(), c.running_var.copy()
    rm2, rv2 = c.running_mean.copy(), c.running_var.copy()
    y1, sm1, si1 = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm1, rv1,
                                           residual=c.residual, activation="relu")
    y2, sm2, si2 = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm2, rv2, residual=c.residual,
                                           activation="relu", virtual_batch_size=4)
    assert sm2.shape == (1, 6) and si2.shape == (1, 6)
    t = tol(np.float64, 36)
    np.testing.assert_allclose(y2, y1, **t)
    np.testing.assert_allclose(sm2[0], sm1, **t)
    np.testing.assert_allclose(si2[0], si1, **t)
    np.testing.assert_allclose(rm2, rm1, **t)
    np.testing.assert_allclose(rv2, rv1, **t)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 16, 1, 1), (1, 17, 3, 7), (2, 64, 3, 2)])
def test_nhwc_and_nchw_give_the_same_numbers(shape, dtype, rng):
    """The same data in both layouts: every output agrees within the sum of both tolerances
    (reductions may run in a different order, so not bitwise)."""
    c = make_case(rng, shape, "NCHW", dtype, residual=True, activation="relu")
    groups = 1 if shape[1] % 2 else 2
    ref = R.bn_train_forward(c.x, c.weight, c.bias, None, None, residual=c.residual,
                             activation="relu")
    ref_g = R.group_norm_forward(c.x, groups, c.weight, c.bias)
    g_masked = np.where(ref.y > 0, c.grad_out, 0)
    tx, tw, tb = grad_terms(g_masked, c.x, c.weight, ref.save_mean, ref.save_invstd, "NCHW")
    invstd_run = 1 / np.sqrt(c.running_var.astype(np.float64) + 1e-5)
    terms = {
        "y": y_terms(c.x, c.weight, c.bias, c.residual, ref.save_mean, ref.save_invstd, "NCHW"),
        "infer y": y_terms(c.x, c.weight, c.bias, c.residual, c.running_mean, invstd_run,
                           "NCHW"),
        "grad_x": tx, "grad_weight": tw, "grad_bias": tb,
        "group_norm y": gn_y_terms(c.x, groups, c.weight, c.bias, ref_g.save_mean,
                                   ref_g.save_invstd, "NCHW"),
        "save_mean": np.abs(c.x.astype(np.float64)).mean(axis=(0, 2, 3)),
        "running_mean": (np.abs(c.running_mean)
                         + np.abs(c.x.astype(np.float64)).mean(axis=(0, 2, 3))),
    }
    results = {}
    for layout in LAYOUTS:
        rm, rv = c.running_mean.copy(), c.running_var.copy()
        x, r, g = (to_layout(a, layout) for a in (c.x, c.residual, c.grad_out))
        y, sm, si = cnnkit.batch_norm_train(x, c.weight, c.bias, rm, rv, residual=r,
                                            activation="relu", layout=layout)
        yi = cnnkit.batch_norm_infer(x, c.weight, c.bias, c.running_mean, c.running_var,
                                     residual=r, activation="relu", layout=layout)
        gx, gw, gb = cnnkit.batch_norm_backward(g, x, c.weight, sm, si, y=y, activation="relu",
                                                layout=layout)
        gn = cnnkit.group_norm(x, groups, c.weight, c.bias, layout=layout)
        results[layout] = {"y": from_layout(y, layout), "save_mean": sm, "save_invstd": si,
                           "running_mean": rm, "running_var": rv,
                           "infer y": from_layout(yi, layout), "grad_x": from_layout(gx, layout),
                           "grad_weight": gw, "grad_bias": gb,
                           "group_norm y": from_layout(gn, layout)}
    t = tol(dtype, c.total)
    for name, u in results["NCHW"].items():
        u = u.astype(np.float64)
        w = results["NHWC"][name].astype(np.float64)
        big = np.maximum(np.abs(u), terms.get(name, 0))
        err = np.abs(u - w)
        assert np.all(err <= 2 * (t["atol"] + t["rtol"] * big)), \
            f"{name}: NCHW and NHWC differ by up to {err.max():.3g}"


def test_two_d_input_ignores_layout(rng):
    c = make_case(rng, (9, 20), "NCHW", np.float32, residual=True, activation="relu")
    ys = []
    for layout in LAYOUTS:
        rm, rv = c.running_mean.copy(), c.running_var.copy()
        ys.append(cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, residual=c.residual,
                                          activation="relu", layout=layout)[0])
    assert_bitwise(ys[1], ys[0], "2-D input, NHWC vs NCHW")
    check_train(replace(c, layout="NHWC"))


# ---- group norm edge cases ----------------------------------------------------------------------

GN_EDGE = (
    ((2, 6, 3, 4), 3), ((1, 16, 5, 5), 4), ((3, 15, 2, 3), 5), ((2, 17, 3, 1), 17),
    ((2, 17, 3, 1), 1), ((4, 64, 2, 2), 8), ((3, 8), 2), ((2, 32, 1, 1), 32), ((1, 1, 4, 4), 1),
    ((2, 12, 7, 5), 6),
)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,groups,layout", _with_layouts(GN_EDGE), ids=lambda v: str(v))
def test_edge_group_norm(shape, groups, layout, dtype, rng):
    for affine, act in ((True, None), (False, None), (True, "relu")):
        c = make_gn_case(rng, shape, groups, layout, dtype, affine=affine, activation=act,
                         eps=1e-4)
        check_group_norm(c, return_stats=True)
        check_group_norm(c, return_stats=False)
        check_group_norm_backward(c)
        if act:
            check_group_norm_backward(c, mask_from="recompute")


def test_group_norm_default_eps_and_no_stats(rng):
    c = make_gn_case(rng, (2, 8, 3, 3), 4, "NCHW", np.float64)
    y = cnnkit.group_norm(c.x, 4, c.weight, c.bias)
    assert isinstance(y, np.ndarray)
    ref = R.group_norm_forward(c.x, 4, c.weight, c.bias, 1e-5)
    assert_close(y, ref.y, np.float64, length=c.n)


# ---- hypothesis ---------------------------------------------------------------------------------

CHANNELS = (1, 2, 3, 7, 8, 15, 16, 17, 33)


@st.composite
def bn_cases(draw, *, ghost=True, dtypes=DTYPES):
    two_d = draw(st.integers(0, 3)) == 0
    n = draw(st.integers(1, 6))
    c = draw(st.sampled_from(CHANNELS))
    if two_d:
        shape = (max(n, 2), c)
        s = 1
    else:
        h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        if n * h * w < 2:
            n = 2
        shape, s = (n, c, h, w), h * w
    v = None
    if ghost and draw(st.booleans()):
        divisors = [d for d in range(1, shape[0] + 1) if shape[0] % d == 0 and d * s >= 2]
        v = draw(st.sampled_from(divisors))
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    flags = dict(
        affine=draw(st.booleans()),
        residual=draw(st.booleans()),
        running=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu"])),
        momentum=draw(st.one_of(st.sampled_from([0.0, 1.0, 0.1]), st.floats(0.0, 1.0))),
        eps=draw(st.one_of(st.sampled_from([1e-5, 1e-3]), st.floats(1e-6, 0.5))),
        v=v,
    )
    return make_case(np.random.default_rng(seed), shape, layout, dtype, **flags)


@SETTINGS
@given(c=bn_cases())
def test_hypothesis_train_forward(c):
    check_train(c)


@SETTINGS
@given(c=bn_cases(ghost=False))
def test_hypothesis_infer(c):
    if c.running_mean is None:
        rng = np.random.default_rng(0)
        ch = c.weight.shape[0] if c.weight is not None else R.channels_of(c.x.shape, c.layout)
        c = replace(c, running_mean=rng.normal(size=ch).astype(c.dtype),
                    running_var=rng.uniform(0.5, 2, ch).astype(c.dtype))
    check_infer(c)


NEEDS = (ALL_NEEDS, ("input",), ("weight", "bias"), ("input", "weight", "bias", "residual"),
         ("input", "residual"), ("bias",), ("residual",))


@SETTINGS
@given(c=bn_cases(), mask_from=st.sampled_from(["y", "recompute"]),
       needs=st.sampled_from(NEEDS))
def test_hypothesis_backward(c, mask_from, needs):
    check_backward(c, mask_from=mask_from, needs=needs)


@st.composite
def gn_cases(draw):
    two_d = draw(st.integers(0, 4)) == 0
    n = draw(st.integers(1, 4))
    c = draw(st.sampled_from((1, 2, 3, 4, 6, 8, 12, 16, 17, 32)))
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    shape = (n, c) if two_d else (n, c, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return make_gn_case(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), shape, groups,
                        draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(DTYPES)),
                        affine=draw(st.booleans()),
                        activation=draw(st.sampled_from([None, "relu"])),
                        eps=draw(st.one_of(st.just(1e-5), st.floats(1e-6, 0.5))))


@SETTINGS
@given(c=gn_cases(), return_stats=st.booleans())
def test_hypothesis_group_norm(c, return_stats):
    check_group_norm(c, return_stats=return_stats)


@SETTINGS
@given(c=gn_cases(), mask_from=st.sampled_from(["y", "recompute"]),
       needs=st.sampled_from(NEEDS[:3] + (("bias",),)))
def test_hypothesis_group_norm_backward(c, mask_from, needs):
    check_group_norm_backward(c, mask_from=mask_from, needs=needs)


# ---- folding ------------------------------------------------------------------------------------

def conv2d(x, w, b=None, *, groups=1, padding=0):
    """float64 grouped conv2d (cross-correlation, stride 1) by an einsum over patches."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    nb, ci, h, wd = x.shape
    co, cig, kh, kw = w.shape
    assert ci == cig * groups and co % groups == 0
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    patches = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    ho, wo = patches.shape[2:4]
    patches = patches.reshape(nb, groups, cig, ho, wo, kh, kw)
    wg = w.reshape(groups, co // groups, cig, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", patches, wg).reshape(nb, co, ho, wo)
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(1, co, 1, 1)
    return y


@st.composite
def fold_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    cig = 1 if depthwise else draw(st.integers(1, 4))
    co = groups * draw(st.integers(1, 6)) if not depthwise else groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3]))
    if depthwise:  # depthwise: C_in = groups, (C_out, 1, k, k)
        ci = groups
    else:
        ci = cig * groups
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dict(
        x=rng.normal(size=(2, ci, 5, 4)).astype(dtype),
        conv_weight=rng.normal(size=(co, cig, k, k)).astype(dtype),
        conv_bias=rng.normal(size=co).astype(dtype) if draw(st.booleans()) else None,
        bn_weight=rng.normal(0, 1.5, co).astype(dtype) if draw(st.booleans()) else None,
        bn_bias=rng.normal(size=co).astype(dtype) if draw(st.booleans()) else None,
        running_mean=rng.normal(size=co).astype(dtype),
        running_var=rng.uniform(0.1, 3.0, co).astype(dtype),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        groups=groups, padding=k // 2, dtype=np.dtype(dtype))


FOLD_ARGS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "running_mean", "running_var")


def bn_scale(f):
    """|gamma| / sqrt(running_var + eps) per output channel, float64."""
    gamma = 1.0 if f["bn_weight"] is None else np.abs(f["bn_weight"].astype(np.float64))
    return gamma / np.sqrt(f["running_var"].astype(np.float64) + f["eps"])


def check_fold(f):
    args = [f[k] for k in FOLD_ARGS]
    snaps = snapshot(*args)
    w2, b2 = cnnkit.fold_batch_norm(*args, eps=f["eps"])
    assert_unchanged(args, snaps)
    rw, rb = R.fold_batch_norm(*args, eps=f["eps"])
    assert w2.dtype == f["dtype"] and w2.shape == f["conv_weight"].shape
    assert b2.dtype == f["dtype"] and b2.shape == (f["conv_weight"].shape[0],)
    assert_close(w2, rw, f["dtype"], what="folded weight")
    cb = 0.0 if f["conv_bias"] is None else np.abs(f["conv_bias"].astype(np.float64))
    bb = 0.0 if f["bn_bias"] is None else np.abs(f["bn_bias"].astype(np.float64))
    bterms = bn_scale(f) * (cb + np.abs(f["running_mean"].astype(np.float64))) + bb
    assert_close_terms(b2, rb, f["dtype"], bterms, what="folded bias")
    return w2, b2


@SETTINGS
@given(f=fold_cases())
def test_hypothesis_fold_batch_norm(f):
    check_fold(f)


@SETTINGS
@given(f=fold_cases())
def test_folding_equals_conv_then_inference_batch_norm(f):
    """conv(x, w') + b' == batch_norm_infer(conv(x, w) + b) (the conv in float64 here)."""
    dtype = f["dtype"]
    w2, b2 = check_fold(f)
    z = conv2d(f["x"], f["conv_weight"], f["conv_bias"], groups=f["groups"],
               padding=f["padding"])
    want = cnnkit.batch_norm_infer(z.astype(dtype), f["bn_weight"], f["bn_bias"],
                                   f["running_mean"], f["running_var"], eps=f["eps"])
    got = conv2d(f["x"], w2, b2, groups=f["groups"], padding=f["padding"])
    co, cig, kh, kw = f["conv_weight"].shape
    s = bn_scale(f)
    absconv = conv2d(np.abs(f["x"]), np.abs(f["conv_weight"]), None, groups=f["groups"],
                     padding=f["padding"])
    cb = np.zeros(co) if f["conv_bias"] is None else np.abs(f["conv_bias"])
    bb = np.zeros(co) if f["bn_bias"] is None else np.abs(f["bn_bias"])
    rm = np.abs(f["running_mean"])
    terms = (s.reshape(1, co, 1, 1) * (absconv + (cb + rm).reshape(1, co, 1, 1))
             + bb.reshape(1, co, 1, 1))
    assert_close_terms(got, want, dtype, terms, length=cig * kh * kw, what="folded conv")


def test_fold_defaults_and_depthwise(rng):
    """bn_weight/bn_bias None mean 1/0, conv_bias None means 0; depthwise (C, 1, k, k)."""
    w = rng.normal(size=(6, 1, 3, 3)).astype(np.float32)
    rm = rng.normal(size=6).astype(np.float32)
    rv = rng.uniform(0.5, 2, 6).astype(np.float32)
    w2, b2 = cnnkit.fold_batch_norm(w, None, None, None, rm, rv)
    s = 1.0 / np.sqrt(rv.astype(np.float64) + 1e-5)
    assert_close(w2, w * s[:, None, None, None], np.float32)
    assert_close(b2, -rm * s, np.float32)


# ---- invariants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("v", [None, 2])
def test_output_has_mean_zero_and_variance_one_per_channel(layout, dtype, v, rng):
    c = make_case(rng, (4, 19, 6, 5), layout, dtype, affine=False, running=False, v=v)
    y, sm, si = cnnkit.batch_norm_train(c.x, None, None, None, None, eps=c.eps, layout=layout,
                                        virtual_batch_size=v)
    yc = _chunked(R.to_ncs(y, layout), v)
    _, var, n = R.bn_batch_stats(c.x, layout, v)
    t = tol(dtype, n)
    assert np.all(np.abs(yc.mean(axis=(1, 3))) <= 10 * t["rtol"]), "per-channel mean not 0"
    expected_var = var / (var + c.eps)         # 1 up to eps
    np.testing.assert_allclose(yc.var(axis=(1, 3)), expected_var, rtol=10 * t["rtol"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_group_norm_output_has_mean_zero_and_variance_one_per_group(layout, dtype, rng):
    c = make_gn_case(rng, (3, 12, 5, 4), 4, layout, dtype, affine=False)
    y = cnnkit.group_norm(c.x, 4, layout=layout)
    yg = R.to_ncs(y, layout).reshape(3, 4, -1)
    xg = R.to_ncs(c.x, layout).reshape(3, 4, -1)
    t = tol(dtype, c.n)
    assert np.all(np.abs(yg.mean(axis=2)) <= 10 * t["rtol"])
    np.testing.assert_allclose(yg.var(axis=2), xg.var(axis=2) / (xg.var(axis=2) + 1e-5),
                               rtol=10 * t["rtol"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_output_equals_inference_with_batch_statistics(layout, dtype, rng):
    c = make_case(rng, (3, 10, 4, 7), layout, dtype, residual=True, activation="relu", eps=1e-3)
    y, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, None, None, eps=c.eps,
                                        residual=c.residual, activation="relu", layout=layout)
    var = 1.0 / si ** 2 - c.eps
    yi = cnnkit.batch_norm_infer(c.x, c.weight, c.bias, sm.astype(dtype), var.astype(dtype),
                                 eps=c.eps, residual=c.residual, activation="relu",
                                 layout=layout)
    terms = y_terms(c.x, c.weight, c.bias, c.residual, sm, si, layout)
    assert_close_terms(yi, y, dtype, 2 * terms, length=c.n, what="infer(batch stats) vs train")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_momentum_zero_keeps_and_one_replaces_running_stats(dtype, rng):
    c = make_case(rng, (5, 9, 3, 2), "NHWC", dtype)
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, momentum=0.0, layout="NHWC")
    assert_bitwise(rm, c.running_mean, "running_mean after momentum 0")
    assert_bitwise(rv, c.running_var, "running_var after momentum 0")
    cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, momentum=1.0, layout="NHWC")
    mean, var, n = R.bn_batch_stats(c.x, "NHWC")
    assert_close(rm, mean[0], dtype, length=n, what="running_mean after momentum 1")
    assert_close(rv, var[0] * n / (n - 1), dtype, length=n, what="running_var after momentum 1")


def test_running_stats_none_are_not_needed(rng):
    c = make_case(rng, (4, 5, 2, 2), "NCHW", np.float32, running=False)
    check_train(c)


def test_zero_weight_gives_bias(rng):
    c = make_case(rng, (3, 8, 2, 5), "NHWC", np.float32)
    w = np.zeros_like(c.weight)
    y, _, _ = cnnkit.batch_norm_train(c.x, w, c.bias, None, None, layout="NHWC")
    np.testing.assert_array_equal(y, np.broadcast_to(c.bias, y.shape))


# ---- finite differences (float64) ---------------------------------------------------------------

def _fd(f, arrays, h=1e-6):
    """Central differences of the scalar f() w.r.t. every element of every array (in place)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            fp = f()
            a[i] = old - h
            fm = f()
            a[i] = old
            g[i] = (fp - fm) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("shape,layout,v,act,resid", [
    ((3, 2, 2, 2), "NCHW", None, "relu", True),
    ((2, 3, 2, 3), "NHWC", None, None, False),
    ((4, 2, 1, 2), "NHWC", 2, "relu", True),
    ((5, 3), "NCHW", None, "relu", False),
    ((6, 2), "NCHW", 3, None, True),
])
def test_batch_norm_backward_matches_finite_differences(shape, layout, v, act, resid, rng):
    c = make_case(rng, shape, layout, np.float64, residual=resid, activation=act, running=False,
                  v=v, eps=1e-3)
    G = c.grad_out.copy()
    if act:  # no kink within reach of the differences
        pre = R.bn_train_forward(c.x, c.weight, c.bias, None, None, eps=c.eps,
                                 residual=c.residual, layout=layout, virtual_batch_size=v).y
        G[np.abs(pre) < 1e-2] = 0
    x, w, b = c.x.copy(), c.weight.copy(), c.bias.copy()
    r = c.residual.copy() if resid else None

    def loss():
        y = cnnkit.batch_norm_train(x, w, b, None, None, eps=c.eps, activation=act, residual=r,
                                    layout=layout, virtual_batch_size=v)[0]
        return float(np.sum(G * y))

    y, sm, si = cnnkit.batch_norm_train(x, w, b, None, None, eps=c.eps, activation=act,
                                        residual=r, layout=layout, virtual_batch_size=v)
    for mask_y in ((y, None) if act else (None,)):
        gx, gw, gb, gr = cnnkit.batch_norm_backward(
            G, x, w, sm, si, y=mask_y, bias=b, residual=r, activation=act, layout=layout,
            needs=("input", "weight", "bias", "residual"), virtual_batch_size=v)
        fds = _fd(loss, [x, w, b] + ([r] if resid else []))
        got = [gx, gw, gb] + ([gr] if resid else [])
        for name, a, e in zip(("x", "weight", "bias", "residual"), got, fds):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6 * np.abs(e).max(),
                                       err_msg=f"d loss / d {name} (mask from "
                                               f"{'y' if mask_y is not None else 'recompute'})")


@pytest.mark.parametrize("shape,groups,layout,act", [
    ((2, 4, 2, 2), 2, "NCHW", "relu"),
    ((1, 6, 3, 1), 3, "NHWC", None),
    ((3, 4), 2, "NCHW", None),
    ((2, 3, 2, 2), 1, "NHWC", "relu"),
])
def test_group_norm_backward_matches_finite_differences(shape, groups, layout, act, rng):
    c = make_gn_case(rng, shape, groups, layout, np.float64, activation=act, eps=1e-3)
    G = c.grad_out.copy()
    if act:
        pre = R.group_norm_forward(c.x, groups, c.weight, c.bias, c.eps, layout=layout).y
        G[np.abs(pre) < 1e-2] = 0
    x, w, b = c.x.copy(), c.weight.copy(), c.bias.copy()

    def loss():
        return float(np.sum(G * cnnkit.group_norm(x, groups, w, b, c.eps, activation=act,
                                                  layout=layout)))

    y, sm, si = cnnkit.group_norm(x, groups, w, b, c.eps, activation=act, layout=layout,
                                  return_stats=True)
    for mask_y in ((y, None) if act else (None,)):
        got = cnnkit.group_norm_backward(G, x, groups, w, sm, si, y=mask_y, bias=b,
                                         activation=act, layout=layout)
        fds = _fd(loss, [x, w, b])
        for name, a, e in zip(("x", "weight", "bias"), got, fds):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6 * np.abs(e).max(),
                                       err_msg=f"group norm d loss / d {name}")


# ---- large-mean stress (issue: float32, mean 1e4..1e6, std 1e-2..1) -----------------------------

def stress_case(rng, shape, layout):
    c = shape[1]
    pc = _per_channel_shape(len(shape))
    mean_c = (np.exp(rng.uniform(np.log(1e4), np.log(1e6), c))
              * rng.choice([-1.0, 1.0], c)).reshape(pc)
    std_c = np.exp(rng.uniform(np.log(1e-2), np.log(1.0), c)).reshape(pc)
    x = to_layout(mean_c + std_c * rng.standard_normal(shape), layout).astype(np.float32)
    w = (rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)).astype(np.float32)
    b = rng.normal(size=c).astype(np.float32)
    g = to_layout(rng.normal(size=shape), layout).astype(np.float32)
    return x, w, b, g


def assert_within_scale(got, ref, scale, what, rel=1e-3):
    got = np.asarray(got, np.float64)
    err = np.abs(got - ref)
    bound = rel * np.broadcast_to(scale, ref.shape)
    if not np.all(err <= bound):
        idx = np.unravel_index(np.argmax(err - bound), ref.shape)
        raise AssertionError(f"{what}: {int((err > bound).sum())} of {ref.size} elements off by "
                             f"more than {rel:g} relative; worst at {idx}: got {got[idx]!r}, "
                             f"expected {ref[idx]!r} (error {err[idx]:.3g}, scale "
                             f"{np.broadcast_to(scale, ref.shape)[idx]:.3g})")


def _channel_scale(a, layout):
    """Per-element max-abs of `a` over its channel (broadcast back to a's shape)."""
    a3 = R.to_ncs(a, layout)
    m = np.abs(a3).max(axis=(0, 2), keepdims=True)
    return R.from_ncs(np.broadcast_to(m, a3.shape), np.shape(a), layout)


STRESS = [((4, 8, 9, 11), "NCHW"), ((4, 8, 9, 11), "NHWC"), ((64, 24), "NCHW"),
          ((2, 17, 16, 16), "NHWC"), ((3, 16, 5, 7), "NCHW")]


@pytest.mark.parametrize("shape,layout", STRESS, ids=lambda v: str(v))
def test_large_mean_train_forward(shape, layout, rng):
    x, w, b, _ = stress_case(rng, shape, layout)
    ch = shape[1]
    rm, rv = np.zeros(ch, np.float32), np.ones(ch, np.float32)
    ref = R.bn_train_forward(x, w, b, np.zeros(ch), np.ones(ch), momentum=0.5, layout=layout)
    y, sm, si = cnnkit.batch_norm_train(x, w, b, rm, rv, momentum=0.5, layout=layout)
    wscale = R.from_ncs(np.broadcast_to(np.abs(w).reshape(1, ch, 1).astype(np.float64),
                                        R.to_ncs(x, layout).shape), x.shape, layout)
    assert_within_scale(y, ref.y, np.maximum(np.abs(ref.y), wscale), "y (affine)")
    y0, sm0, si0 = cnnkit.batch_norm_train(x, None, None, None, None, layout=layout)
    ref0 = R.bn_train_forward(x, None, None, None, None, layout=layout)
    assert_within_scale(y0, ref0.y, np.maximum(np.abs(ref0.y), 1.0), "normalised y")
    std = 1.0 / ref.save_invstd
    assert_within_scale(sm, ref.save_mean, std, "save_mean (relative to the channel's std)")
    assert_within_scale(si, ref.save_invstd, ref.save_invstd, "save_invstd")
    assert_within_scale(rv, ref.running_var, ref.running_var, "running_var")
    assert_within_scale(rm, ref.running_mean, np.abs(ref.running_mean), "running_mean")


@pytest.mark.parametrize("shape,layout", STRESS, ids=lambda v: str(v))
def test_large_mean_infer(shape, layout, rng):
    x, w, b, _ = stress_case(rng, shape, layout)
    mean, var, _ = R.bn_batch_stats(x, layout)
    rm, rv = mean[0].astype(np.float32), var[0].astype(np.float32)
    ref = R.bn_infer_forward(x, w, b, rm, rv, layout=layout)
    y = cnnkit.batch_norm_infer(x, w, b, rm, rv, layout=layout)
    ch = shape[1]
    wscale = R.from_ncs(np.broadcast_to(np.abs(w).reshape(1, ch, 1).astype(np.float64),
                                        R.to_ncs(x, layout).shape), x.shape, layout)
    assert_within_scale(y, ref, np.maximum(np.abs(ref), wscale), "infer y")


@pytest.mark.parametrize("shape,layout", STRESS, ids=lambda v: str(v))
def test_large_mean_backward(shape, layout, rng):
    x, w, b, g = stress_case(rng, shape, layout)
    y, sm, si = cnnkit.batch_norm_train(x, w, b, None, None, layout=layout)
    gx, gw, gb = cnnkit.batch_norm_backward(g, x, w, sm, si, layout=layout)
    ref_f = R.bn_train_forward(x, w, b, None, None, layout=layout)
    ref = R.bn_backward(g, x, w, ref_f.save_mean, ref_f.save_invstd, layout=layout)
    assert_within_scale(gx, ref.grad_x, _channel_scale(ref.grad_x, layout),
                        "grad_x (relative to its channel's max-abs)")
    xhat = R.to_ncs(ref_f.y, layout) - np.asarray(b, np.float64).reshape(1, -1, 1)
    xhat /= np.asarray(w, np.float64).reshape(1, -1, 1)
    g3 = R.to_ncs(g, layout)
    assert_within_scale(gw, ref.grad_weight, np.abs(g3 * xhat).sum(axis=(0, 2)), "grad_weight")
    assert_within_scale(gb, ref.grad_bias, np.abs(g3).sum(axis=(0, 2)), "grad_bias")
    # and with the fused ReLU (mask from y)
    y, sm, si = cnnkit.batch_norm_train(x, w, b, None, None, layout=layout, activation="relu")
    gx, _, _ = cnnkit.batch_norm_backward(g, x, w, sm, si, y=y, activation="relu",
                                          layout=layout)
    ref = R.bn_backward(g, x, w, ref_f.save_mean, ref_f.save_invstd, y=y, activation="relu",
                        layout=layout)
    assert_within_scale(gx, ref.grad_x, _channel_scale(ref.grad_x, layout), "grad_x (relu)")


@pytest.mark.parametrize("shape,layout", [((2, 8, 9, 11), "NCHW"), ((3, 16, 5, 7), "NHWC")],
                         ids=lambda v: str(v))
def test_large_mean_group_norm(shape, layout, rng):
    """Group norm with the same stress data (one mean per sample and group of 2 channels)."""
    x, w, b, g = stress_case(rng, shape, layout)
    groups = shape[1]  # one channel per group: the per-channel stress carries over unchanged
    y, sm, si = cnnkit.group_norm(x, groups, w, b, layout=layout, return_stats=True)
    ref = R.group_norm_forward(x, groups, w, b, layout=layout)
    ch = shape[1]
    wscale = R.from_ncs(np.broadcast_to(np.abs(w).reshape(1, ch, 1).astype(np.float64),
                                        R.to_ncs(x, layout).shape), x.shape, layout)
    assert_within_scale(y, ref.y, np.maximum(np.abs(ref.y), wscale), "group norm y")
    gx, _, _ = cnnkit.group_norm_backward(g, x, groups, w, sm, si, layout=layout)
    rb = R.group_norm_backward(g, x, groups, w, ref.save_mean, ref.save_invstd, layout=layout)
    a3 = R.to_ncs(rb.grad_x, layout)
    scale = R.from_ncs(np.broadcast_to(np.abs(a3).max(axis=2, keepdims=True), a3.shape),
                       x.shape, layout)
    assert_within_scale(gx, rb.grad_x, scale, "group norm grad_x")


# ---- threads and ISA levels ---------------------------------------------------------------------

def _all_outputs(c: Case, groups=4):
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    y, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, residual=c.residual,
                                        activation="relu", layout=c.layout)
    out = [y, sm, si, rm, rv]
    out.append(cnnkit.batch_norm_infer(c.x, c.weight, c.bias, c.running_mean, c.running_var,
                                       residual=c.residual, activation="relu", layout=c.layout))
    out += list(cnnkit.batch_norm_backward(c.grad_out, c.x, c.weight, sm, si, y=y,
                                           activation="relu", layout=c.layout,
                                           needs=ALL_NEEDS + ("residual",)))
    out += list(cnnkit.batch_norm_backward(c.grad_out, c.x, c.weight, sm, si, bias=c.bias,
                                           residual=c.residual, activation="relu",
                                           layout=c.layout))
    rm2, rv2 = c.running_mean.copy(), c.running_var.copy()
    yv, smv, siv = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm2, rv2, layout=c.layout,
                                           virtual_batch_size=2)
    out += [yv, smv, siv, rm2, rv2]
    out += list(cnnkit.batch_norm_backward(c.grad_out, c.x, c.weight, smv, siv, layout=c.layout,
                                           virtual_batch_size=2))
    yg, smg, sig = cnnkit.group_norm(c.x, groups, c.weight, c.bias, activation="relu",
                                     layout=c.layout, return_stats=True)
    out += [yg, smg, sig]
    out += list(cnnkit.group_norm_backward(c.grad_out, c.x, groups, c.weight, smg, sig, y=yg,
                                           activation="relu", layout=c.layout))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_bits_at_one_and_two_threads(isa, layout, dtype, rng):
    c = make_case(rng, (8, 16, 33, 35), layout, dtype, residual=True, activation="relu")
    with num_threads(1):
        one = _all_outputs(c)
    with num_threads(2):
        two = _all_outputs(c)
    for i, (a, b) in enumerate(zip(one, two)):
        assert_bitwise(b, a, f"output {i} at 2 threads vs 1 ({isa})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 5, 4, 7), (2, 37, 3, 3), (5, 16, 1, 9)])
def test_backward_reduce_writes_the_masked_gradient(isa, shape, layout, dtype, rng):
    """``norm_backward_reduce(..., grad_residual=r)``: r receives the masked gradient (exactly
    ``where(mask > 0, g, 0)``, or the affine mask's), the sums are those without r, bitwise at 1
    and 2 threads; pooled with r, or r overlapping an input, is a ValueError with r untouched."""
    from cnnkit import _core
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = np.where(rng.random(shape) < 0.4, 0, rng.random(shape)).astype(dtype)
    nhwc = layout == "NHWC"
    N, C, S = shape[0], shape[3] if nhwc else shape[1], shape[1] * shape[2] if nhwc else shape[2] * shape[3]
    mean = rng.standard_normal(C)
    aff = np.concatenate([rng.uniform(-2, 2, C), rng.standard_normal(C)]).astype(dtype)
    a_, b_ = (aff[:C], aff[C:])
    cshape = (1, C, 1, 1) if not nhwc else (1, 1, 1, C)
    for mask, ma, want in ((y, None, np.where(y > 0, g, 0)),
                           (None, aff, np.where(a_.reshape(cshape) * x + b_.reshape(cshape) > 0, g, 0)),
                           (None, None, g)):
        sums = _core.norm_backward_reduce(g, x, mask, N, C, S, nhwc, False, mean, ma)
        got = []
        for t in (1, 2):
            r = np.full(shape, np.nan, dtype)
            with num_threads(t):
                s1, s2 = _core.norm_backward_reduce(g, x, mask, N, C, S, nhwc, False, mean, ma, False, r)
            got.append((r, s1, s2))
        for u, v in zip(got[0], got[1]):
            assert_bitwise(u, v, "threads")
        r, s1, s2 = got[0]
        if ma is None:
            assert_bitwise(r, want.astype(dtype), "masked gradient")
        else:  # the compiled fma's single rounding decides ties at 0: compare away from them
            far = np.abs(a_.reshape(cshape) * x + b_.reshape(cshape)) > 1e-3
            assert_bitwise(r[far], want.astype(dtype)[far], "affine-masked gradient")
        assert_bitwise(s1, sums[0], "sum g")
        assert_bitwise(s2, sums[1], "sum g(x - mean)")
    r = np.full(shape, 7, dtype)
    with pytest.raises(ValueError, match="grad_residual"):
        _core.norm_backward_reduce(np.zeros(N * C, dtype), x, None, N, C, S, nhwc, False, mean, None, True, r)
    with pytest.raises(ValueError, match="grad_residual"):
        _core.norm_backward_reduce(g, x, y, N, C, S, nhwc, False, mean, None, False, g)
    assert np.all(r == 7)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 5, 4, 7), (2, 37, 3, 3), (5, 16, 1, 9), (2, 64, 8, 8)])
def test_backward_apply_in_place(isa, shape, layout, dtype, rng):
    """``norm_backward_apply`` with grad_input = grad_out (or x) itself: the bits written out of
    place, every mask form, with the residual's gradient, at 1 and 2 threads (cnnkit.nn writes the
    apply pass over the masked gradient of a consumer's compiled pass); a grad_input that overlaps
    grad_out, x, the mask or mask_affine without being it, or a grad_residual that overlaps any,
    is a ValueError before anything is written."""
    from cnnkit import _core
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = np.where(rng.random(shape) < 0.4, 0, rng.random(shape)).astype(dtype)
    nhwc = layout == "NHWC"
    N, C, S = shape[0], shape[3] if nhwc else shape[1], shape[1] * shape[2] if nhwc else shape[2] * shape[3]
    mean, A, B, D = (rng.standard_normal(C) for _ in range(4))
    aff = np.concatenate([rng.uniform(-2, 2, C), rng.standard_normal(C)]).astype(dtype)
    for mask, ma in ((None, None), (y, None), (None, aff)):
        for gres in (False, True):
            want = np.full(shape, np.nan, dtype)
            wr = np.full(shape, np.nan, dtype) if gres else None
            _core.norm_backward_apply(g, x, mask, want, wr, N, C, S, nhwc, False, mean, A, B, D, ma)
            for t in (1, 2):
                for over in ("grad_out", "x"):
                    gi, xi = g.copy(), x.copy()
                    r = np.full(shape, np.nan, dtype) if gres else None
                    with num_threads(t):
                        _core.norm_backward_apply(gi, xi, mask, gi if over == "grad_out" else xi, r, N, C, S, nhwc,
                                                  False, mean, A, B, D, ma)
                    assert_bitwise(gi if over == "grad_out" else xi, want, f"in place over {over}, {t} threads")
                    if gres:
                        assert_bitwise(r, wr, f"grad_residual, in place over {over}, {t} threads")
    flat = np.concatenate([g.reshape(-1), np.zeros(8, dtype)])
    gs = flat[:g.size].reshape(shape)
    shifted = flat[8:].reshape(shape)  # overlaps gs, not the same array
    keep = flat.copy()
    with pytest.raises(ValueError, match="grad_input"):
        _core.norm_backward_apply(gs, x, None, shifted, None, N, C, S, nhwc, False, mean, A, B, D)
    with pytest.raises(ValueError, match="grad_input"):
        _core.norm_backward_apply(g, x, y, y, None, N, C, S, nhwc, False, mean, A, B, D)
    with pytest.raises(ValueError, match="grad_residual"):
        _core.norm_backward_apply(gs, x, y, np.empty_like(x), gs, N, C, S, nhwc, False, mean, A, B, D)
    with pytest.raises(ValueError, match="grad_residual"):
        out = np.empty_like(x)
        _core.norm_backward_apply(g, x, y, out, out, N, C, S, nhwc, False, mean, A, B, D)
    assert_bitwise(flat, keep, "nothing written before the errors")


@pytest.mark.parametrize("C", [15, 16, 32, 64, 128])
def test_nhwc_passes_at_the_fixed_channel_counts_give_the_nchw_bits(isa, C, rng, threads):
    """The NHWC per-pixel loops run with C as a compile-time constant at 16, 32, 64 and 128
    channels (common/channel_count.h). The apply and backward-apply passes are elementwise, so
    given the same coefficients they must give the NCHW loops' bits at every such count (15: the
    run-time count), with every residual, mask and gradient-output form; the backward reduce's
    masked gradient too, and its sums stay within the tolerance of a float64 reference."""
    from cnnkit import _core
    N, H, W = 3, 5, 7
    S = H * W
    x, g, r, y = (rng.standard_normal((N, C, H, W)).astype(np.float32) for _ in range(4))
    y[rng.random(y.shape) < 0.4] = 0
    mean, invstd = rng.standard_normal(C), rng.random(C) + 0.5
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    A, B, D = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    aff = np.concatenate([rng.uniform(-2, 2, C), rng.standard_normal(C)]).astype(np.float32)
    t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731 (NCHW -> NHWC)
    for res, ra, relu in ((None, None, False), (r, None, True), (r, aff, True), (r, aff, False)):
        out = {}
        for nhwc in (False, True):
            o = np.full(x.shape if not nhwc else t(x).shape, np.nan, np.float32)
            cv = t if nhwc else (lambda a: a)
            _core.norm_apply(cv(x), o, None if res is None else cv(res), N, C, S, nhwc, False, mean, invstd, w,
                             b, relu, ra, ra is not None)
            out[nhwc] = o.transpose(0, 3, 1, 2) if nhwc else o
        assert_bitwise(out[True], out[False], f"norm_apply NHWC vs NCHW (C={C}, residual={res is not None})")
    for mask, ma in ((None, None), (y, None), (None, aff)):
        for gres in (False, True):
            got = {}
            for nhwc in (False, True):
                cv = t if nhwc else (lambda a: a)
                dx = np.full(cv(x).shape, np.nan, np.float32)
                gr = np.full(cv(x).shape, np.nan, np.float32) if gres else None
                _core.norm_backward_apply(cv(g), cv(x), None if mask is None else cv(mask), dx, gr, N, C, S, nhwc,
                                          False, mean, A, B, D, ma)
                back = (lambda a: a.transpose(0, 3, 1, 2)) if nhwc else (lambda a: a)
                got[nhwc] = (back(dx), None if gr is None else back(gr))
            assert_bitwise(got[True][0], got[False][0], f"norm_backward_apply dx (C={C}, mask={mask is not None})")
            if gres:
                assert_bitwise(got[True][1], got[False][1], f"norm_backward_apply grad_residual (C={C})")
        rr = np.full(t(x).shape, np.nan, np.float32)
        s1, s2 = _core.norm_backward_reduce(t(g), t(x), None if mask is None else t(mask), N, C, S, True, False,
                                            mean, ma, False, rr)
        got_g = rr.transpose(0, 3, 1, 2)
        if ma is None:
            want_g = g if mask is None else np.where(mask > 0, g, 0).astype(np.float32)
            assert_bitwise(got_g, want_g, f"masked gradient (C={C})")
        else:  # the compiled fma's single rounding decides ties at 0: compare away from them
            v = aff[:C].reshape(1, C, 1, 1) * x + aff[C:].reshape(1, C, 1, 1)
            far = np.abs(v) > 1e-3
            assert_bitwise(got_g[far], np.where(v > 0, g, 0).astype(np.float32)[far], f"affine mask (C={C})")
        # the sums in double, of the masked gradient as written: within a few roundings per term
        g64, xc = got_g.astype(np.float64), x.astype(np.float64) - mean.reshape(1, C, 1, 1)
        for got, terms in ((s1, g64), (s2, g64 * xc)):
            err = np.abs(got - terms.sum(axis=(0, 2, 3)))
            assert np.all(err <= 1e-12 * np.abs(terms).sum(axis=(0, 2, 3)) + 1e-300), f"sums (C={C})"


ISA_CASES = [((2, 17, 3, 5), "NCHW"), ((4, 33, 2, 2), "NHWC"), ((9, 40), "NCHW"),
             ((3, 16, 4, 4), "NHWC"), ((2, 8, 31, 1), "NCHW")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,layout", ISA_CASES, ids=lambda v: str(v))
def test_every_isa_level_matches_the_reference(isa, shape, layout, dtype, rng, threads):
    for flags in FLAG_SETS:
        c = make_case(rng, shape, layout, dtype, **flags, momentum=0.2)
        check_train(c)
        if c.running_mean is not None:
            check_infer(c)
        check_backward(c, needs=ALL_NEEDS + ("residual",))
        if c.activation:
            check_backward(c, mask_from="recompute")
        if shape[0] % 2 == 0:  # two or more chunks (v == N has its own tests)
            check_train(replace(c, v=shape[0] // 2))
            check_backward(replace(c, v=shape[0] // 2))
        gn = make_gn_case(rng, shape, 1 if shape[1] % 2 else 2, layout, dtype,
                          affine=c.weight is not None, activation=c.activation)
        check_group_norm(gn)
        check_group_norm_backward(gn)


# ---- out= ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_is_reused(layout, dtype, rng):
    out = np.full((4, 6, 5, 3) if layout == "NCHW" else (4, 5, 3, 6), np.nan, dtype)
    for _ in range(2):  # the same buffer twice, with different data
        c = make_case(rng, (4, 6, 5, 3), layout, dtype, residual=True, activation="relu")
        check_train(c, out=out)
        check_infer(c, out=out)


def test_out_train_writes_every_element(rng):
    c = make_case(rng, (3, 5, 4, 4), "NHWC", np.float32)
    out = np.full_like(c.x, np.nan)
    y, _, _ = cnnkit.batch_norm_train(c.x, c.weight, c.bias, None, None, layout="NHWC", out=out)
    assert y is out and np.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_and_group_norm_out_are_reused(layout, dtype, rng):
    """out= of batch_norm_backward / group_norm_backward receives grad_x, of group_norm y."""
    shape = (4, 6, 5, 3)
    out = np.full(to_layout(np.empty(shape), layout).shape, np.nan, dtype)
    for _ in range(2):
        c = make_case(rng, shape, layout, dtype, activation="relu")
        ref_f = R.bn_train_forward(c.x, c.weight, c.bias, None, None, activation="relu",
                                   layout=layout)
        y = ref_f.y.astype(dtype)
        gx, _, _ = cnnkit.batch_norm_backward(c.grad_out, c.x, c.weight, ref_f.save_mean,
                                              ref_f.save_invstd, y=y, activation="relu",
                                              layout=layout, out=out)
        assert gx is out
        ref = R.bn_backward(c.grad_out, c.x, c.weight, ref_f.save_mean, ref_f.save_invstd, y=y,
                            activation="relu", layout=layout)
        tx, _, _ = grad_terms(ref.grad_residual, c.x, c.weight, ref_f.save_mean,
                              ref_f.save_invstd, layout)
        assert_close_terms(out, ref.grad_x, dtype, tx, length=c.n, what="grad_x in out")
        gn = make_gn_case(rng, shape, 3, layout, dtype)
        yg = cnnkit.group_norm(gn.x, 3, gn.weight, gn.bias, layout=layout, out=out)
        assert yg is out
        check_group_norm(gn)  # and the fresh result equals what out holds
        ref_g = R.group_norm_forward(gn.x, 3, gn.weight, gn.bias, layout=layout)
        assert_close_terms(out, ref_g.y, dtype, gn_y_terms(gn.x, 3, gn.weight, gn.bias,
                                                           ref_g.save_mean, ref_g.save_invstd,
                                                           layout), length=gn.n, what="gn out")
        gxg, _, _ = cnnkit.group_norm_backward(gn.grad_out, gn.x, 3, gn.weight, ref_g.save_mean,
                                               ref_g.save_invstd, layout=layout, out=out)
        assert gxg is out
        rb = R.group_norm_backward(gn.grad_out, gn.x, 3, gn.weight, ref_g.save_mean,
                                   ref_g.save_invstd, layout=layout)
        tx, _, _ = gn_grad_terms(gn.grad_out, gn.x, 3, gn.weight, ref_g.save_mean,
                                 ref_g.save_invstd, layout)
        assert_close_terms(out, rb.grad_x, dtype, tx, length=gn.n, what="gn grad_x in out")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("v", [None, 2])
def test_train_and_infer_in_place(layout, dtype, v, rng):
    """out=x (documented: "may be x itself") gives the same numbers as a fresh output."""
    c = make_case(rng, (4, 7, 3, 5), layout, dtype, residual=True, activation="relu", v=v)
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    want, sm, si = cnnkit.batch_norm_train(c.x, c.weight, c.bias, rm, rv, residual=c.residual,
                                           activation="relu", layout=layout,
                                           virtual_batch_size=v)
    x = c.x.copy()
    rm2, rv2 = c.running_mean.copy(), c.running_var.copy()
    y, sm2, si2 = cnnkit.batch_norm_train(x, c.weight, c.bias, rm2, rv2, residual=c.residual,
                                          activation="relu", layout=layout,
                                          virtual_batch_size=v, out=x)
    assert y is x
    assert_bitwise(y, want, "in-place train y")
    assert_bitwise(sm2, sm, "in-place save_mean")
    assert_bitwise(rv2, rv, "in-place running_var")
    x = c.x.copy()
    want = cnnkit.batch_norm_infer(c.x, c.weight, c.bias, c.running_mean, c.running_var,
                                   layout=layout)
    y = cnnkit.batch_norm_infer(x, c.weight, c.bias, c.running_mean, c.running_var,
                                layout=layout, out=x)
    assert y is x
    assert_bitwise(y, want, "in-place infer y")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_three_d_input_equals_unit_width_four_d(layout, dtype, rng):
    """(N, C, L) in NCHW / (N, L, C) in NHWC (documented as (N, C, *spatial)) is (N, C, L, 1)."""
    c = make_case(rng, (3, 5, 7, 1), layout, dtype, residual=True, activation="relu")
    axis = 3 if layout == "NCHW" else 2
    sq = lambda a: np.ascontiguousarray(a.squeeze(axis))  # noqa: E731
    y4, sm4, si4 = check_train(c)
    rm, rv = c.running_mean.copy(), c.running_var.copy()
    y3, sm3, si3 = cnnkit.batch_norm_train(sq(c.x), c.weight, c.bias, rm, rv,
                                           residual=sq(c.residual), activation="relu",
                                           layout=layout)
    terms = sq(y_terms(c.x, c.weight, c.bias, c.residual, sm4, si4, layout))
    assert_close_terms(y3, sq(y4), dtype, terms, length=c.n, what="3-D y")
    assert_close(si3, si4, dtype, length=c.n, what="3-D save_invstd")
    check_backward(c)
    gx3 = cnnkit.batch_norm_backward(sq(c.grad_out), sq(c.x), c.weight, sm4, si4, y=y3,
                                     activation="relu", layout=layout)[0]
    ref = R.bn_backward(c.grad_out, c.x, c.weight, sm4, si4, y=y4, activation="relu",
                        layout=layout)
    tx = grad_terms(ref.grad_residual, c.x, c.weight, sm4, si4, layout)[0]
    assert_close_terms(gx3, sq(ref.grad_x), dtype, sq(tx), length=c.n, what="3-D grad_x")


def test_infer_on_an_empty_batch_returns_an_empty_output():
    x = np.zeros((0, 4, 3, 3), np.float32)
    y = cnnkit.batch_norm_infer(x, None, None, np.zeros(4, np.float32), np.ones(4, np.float32))
    assert y.shape == x.shape and y.dtype == x.dtype


# ---- bad input ----------------------------------------------------------------------------------

def _train_args(dtype=np.float32, shape=(4, 3, 2, 2)):
    rng = np.random.default_rng(7)
    c = make_case(rng, shape, "NCHW", dtype, residual=True)
    return dict(x=c.x, weight=c.weight, bias=c.bias, running_mean=c.running_mean,
                running_var=c.running_var, residual=c.residual, out=np.zeros_like(c.x))


F32, F64 = np.float32, np.float64
NONCONTIG = np.zeros(6, F32)[::2]
READONLY = np.ones(3, F32)
READONLY.flags.writeable = False

TRAIN_BAD = [
    ("N=1 2-D", dict(x=np.ones((1, 3), F32) * np.arange(3, dtype=F32), residual=None, out=None),
     ValueError, r"\bx\b"),
    ("N*H*W=1", dict(x=np.arange(3, dtype=F32).reshape(1, 3, 1, 1), residual=None, out=None),
     ValueError, r"\bx\b"),
    ("chunk of one value", dict(x=np.arange(12, dtype=F32).reshape(4, 3), residual=None,
                                out=None, virtual_batch_size=1),
     ValueError, r"\bx\b|virtual_batch_size"),
    ("v not a divisor", dict(virtual_batch_size=3), ValueError, "virtual_batch_size"),
    ("v = 0", dict(virtual_batch_size=0), ValueError, "virtual_batch_size"),
    ("v > N", dict(virtual_batch_size=8), ValueError, "virtual_batch_size"),
    ("eps 0", dict(eps=0.0), ValueError, "eps"),
    ("eps < 0", dict(eps=-1e-5), ValueError, "eps"),
    ("eps nan", dict(eps=float("nan")), ValueError, "eps"),
    ("momentum < 0", dict(momentum=-0.1), ValueError, "momentum"),
    ("momentum > 1", dict(momentum=1.5), ValueError, "momentum"),
    ("momentum nan", dict(momentum=float("nan")), ValueError, "momentum"),
    ("weight C", dict(weight=np.ones(4, F32)), ValueError, "weight"),
    ("bias C", dict(bias=np.ones(2, F32)), ValueError, "bias"),
    ("running_mean C", dict(running_mean=np.zeros(4, F32)), ValueError, "running_mean"),
    ("running_var C", dict(running_var=np.ones(2, F32)), ValueError, "running_var"),
    ("weight 2-D", dict(weight=np.ones((3, 1), F32)), ValueError, "weight"),
    ("NHWC C mismatch", dict(layout="NHWC", residual=None, out=None), ValueError,
     "weight|bias|running_mean|running_var"),
    ("residual shape", dict(residual=np.zeros((4, 3, 2, 3), F32)), ValueError, "residual"),
    ("out shape", dict(out=np.zeros((4, 3, 2, 3), F32)), ValueError, r"\bout\b"),
    ("x 1-D", dict(x=np.ones(4, F32), residual=None, out=None), ValueError, r"\bx\b"),
    ("x int", dict(x=np.ones((4, 3, 2, 2), np.int32)), TypeError, r"\bx\b"),
    ("x float16", dict(x=np.ones((4, 3, 2, 2), np.float16)), TypeError, r"\bx\b"),
    ("weight f64", dict(weight=np.ones(3, F64)), TypeError, "weight"),
    ("bias f64", dict(bias=np.zeros(3, F64)), TypeError, "bias"),
    ("running_mean f64", dict(running_mean=np.zeros(3, F64)), TypeError, "running_mean"),
    ("running_var f64", dict(running_var=np.ones(3, F64)), TypeError, "running_var"),
    ("residual f64", dict(residual=np.zeros((4, 3, 2, 2), F64)), TypeError, "residual"),
    ("out f64", dict(out=np.zeros((4, 3, 2, 2), F64)), TypeError, r"\bout\b"),
    ("running_mean non-contiguous", dict(running_mean=NONCONTIG), ValueError, "running_mean"),
    ("running_var read-only", dict(running_var=READONLY), ValueError, "running_var"),
    ("layout", dict(layout="NCWH"), ValueError, "layout"),
    ("layout CHW", dict(layout="CHW"), ValueError, "layout"),
    ("activation", dict(activation="gelu"), ValueError, "activation"),
]


def _call_snapshot(kwargs):
    return {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}


def _assert_call_unchanged(kwargs, snap):
    for k, s in snap.items():
        assert_bitwise(kwargs[k], s, f"{k} modified by a rejected call")


@pytest.mark.parametrize("name,changes,exc,match", TRAIN_BAD, ids=[t[0] for t in TRAIN_BAD])
def test_batch_norm_train_rejects_bad_input(name, changes, exc, match):
    kw = _train_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    x = kw.pop("x")
    args = [kw.pop(k) for k in ("weight", "bias", "running_mean", "running_var")]
    with pytest.raises(exc, match=match):
        cnnkit.batch_norm_train(x, *args, **kw)
    kw.update(x=x, weight=args[0], bias=args[1], running_mean=args[2], running_var=args[3])
    _assert_call_unchanged(kw, snap)


INFER_BAD = [t for t in TRAIN_BAD
             if t[0] in ("eps 0", "eps < 0", "eps nan", "weight C", "bias C", "running_mean C",
                         "running_var C", "residual shape", "out shape", "x 1-D", "x int",
                         "weight f64", "running_mean f64", "running_var f64", "residual f64",
                         "out f64", "layout", "activation", "NHWC C mismatch")]


@pytest.mark.parametrize("name,changes,exc,match", INFER_BAD, ids=[t[0] for t in INFER_BAD])
def test_batch_norm_infer_rejects_bad_input(name, changes, exc, match):
    kw = _train_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    x = kw.pop("x")
    args = [kw.pop(k) for k in ("weight", "bias", "running_mean", "running_var")]
    with pytest.raises(exc, match=match):
        cnnkit.batch_norm_infer(x, *args, **kw)
    kw.update(x=x, weight=args[0], bias=args[1], running_mean=args[2], running_var=args[3])
    _assert_call_unchanged(kw, snap)


def _backward_args():
    rng = np.random.default_rng(11)
    c = make_case(rng, (4, 3, 2, 2), "NCHW", np.float32, residual=True, activation="relu")
    ref = R.bn_train_forward(c.x, c.weight, c.bias, None, None, residual=c.residual,
                             activation="relu")
    return dict(grad_out=c.grad_out, x=c.x, weight=c.weight, save_mean=ref.save_mean,
                save_invstd=ref.save_invstd, y=ref.y.astype(np.float32), bias=c.bias,
                residual=c.residual, activation="relu")


BACKWARD_BAD = [
    ("grad_out shape", dict(grad_out=np.zeros((4, 3, 2, 3), F32)), ValueError, "grad_out"),
    ("grad_out f64", dict(grad_out=np.zeros((4, 3, 2, 2), F64)), TypeError, "grad_out"),
    ("weight C", dict(weight=np.ones(4, F32)), ValueError, "weight"),
    ("weight f64", dict(weight=np.ones(3, F64)), TypeError, "weight"),
    ("bias C", dict(bias=np.ones(2, F32)), ValueError, "bias"),
    ("save_mean C", dict(save_mean=np.zeros(4)), ValueError, "save_mean"),
    ("save_invstd C", dict(save_invstd=np.ones(2)), ValueError, "save_invstd"),
    ("save_mean f32", dict(save_mean=np.zeros(3, F32)), TypeError, "save_mean"),
    ("save_invstd f32", dict(save_invstd=np.ones(3, F32)), TypeError, "save_invstd"),
    ("save stats for ghost BN", dict(virtual_batch_size=2), ValueError, "save_mean|save_invstd"),
    ("v not a divisor", dict(virtual_batch_size=3), ValueError, "virtual_batch_size"),
    ("y shape", dict(y=np.zeros((4, 3, 2, 3), F32)), ValueError, r"\by\b"),
    ("y f64", dict(y=np.zeros((4, 3, 2, 2), F64)), TypeError, r"\by\b"),
    ("residual shape", dict(residual=np.zeros((4, 3, 1, 2), F32)), ValueError, "residual"),
    ("needs", dict(needs=("input", "gamma")), ValueError, "needs"),
    ("activation", dict(activation="tanh"), ValueError, "activation"),
    ("layout", dict(layout="HWNC"), ValueError, "layout"),
    ("x int", dict(x=np.ones((4, 3, 2, 2), np.int64)), TypeError, r"\bx\b"),
]


@pytest.mark.parametrize("name,changes,exc,match", BACKWARD_BAD, ids=[t[0] for t in BACKWARD_BAD])
def test_batch_norm_backward_rejects_bad_input(name, changes, exc, match):
    kw = _backward_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    pos = [kw.pop(k) for k in ("grad_out", "x", "weight", "save_mean", "save_invstd")]
    with pytest.raises(exc, match=match):
        cnnkit.batch_norm_backward(*pos, **kw)
    kw.update(zip(("grad_out", "x", "weight", "save_mean", "save_invstd"), pos))
    _assert_call_unchanged(kw, snap)


def _gn_args():
    rng = np.random.default_rng(5)
    c = make_gn_case(rng, (2, 6, 3, 2), 3, "NCHW", np.float32)
    return dict(x=c.x, num_groups=3, weight=c.weight, bias=c.bias)


GN_BAD = [
    ("C not divisible", dict(num_groups=4), ValueError, "num_groups"),
    ("num_groups 0", dict(num_groups=0), ValueError, "num_groups"),
    ("weight C", dict(weight=np.ones(5, F32)), ValueError, "weight"),
    ("bias C", dict(bias=np.ones(7, F32)), ValueError, "bias"),
    ("weight f64", dict(weight=np.ones(6, F64)), TypeError, "weight"),
    ("eps 0", dict(eps=0.0), ValueError, "eps"),
    ("eps < 0", dict(eps=-1.0), ValueError, "eps"),
    ("layout", dict(layout="NWHC"), ValueError, "layout"),
    ("activation", dict(activation="sigmoid"), ValueError, "activation"),
    ("x int", dict(x=np.ones((2, 6, 3, 2), np.int32)), TypeError, r"\bx\b"),
]


@pytest.mark.parametrize("name,changes,exc,match", GN_BAD, ids=[t[0] for t in GN_BAD])
def test_group_norm_rejects_bad_input(name, changes, exc, match):
    kw = _gn_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    x, groups = kw.pop("x"), kw.pop("num_groups")
    with pytest.raises(exc, match=match):
        cnnkit.group_norm(x, groups, **kw)
    kw["x"] = x
    _assert_call_unchanged(kw, snap)


def _gn_backward_args():
    rng = np.random.default_rng(6)
    c = make_gn_case(rng, (2, 6, 3, 2), 3, "NCHW", np.float32)
    ref = R.group_norm_forward(c.x, 3, c.weight, c.bias)
    return dict(grad_out=c.grad_out, x=c.x, num_groups=3, weight=c.weight,
                save_mean=ref.save_mean, save_invstd=ref.save_invstd)


GN_BACKWARD_BAD = [
    ("grad_out shape", dict(grad_out=np.zeros((2, 6, 3, 3), F32)), ValueError, "grad_out"),
    ("grad_out f64", dict(grad_out=np.zeros((2, 6, 3, 2), F64)), TypeError, "grad_out"),
    ("save_mean shape", dict(save_mean=np.zeros((2, 4))), ValueError, "save_mean"),
    ("save_invstd shape", dict(save_invstd=np.ones((3, 3))), ValueError, "save_invstd"),
    ("save_mean f32", dict(save_mean=np.zeros((2, 3), F32)), TypeError, "save_mean"),
    ("C not divisible", dict(num_groups=4), ValueError, "num_groups"),
    ("weight C", dict(weight=np.ones(5, F32)), ValueError, "weight"),
    ("needs", dict(needs=("input", "residual")), ValueError, "needs"),
    ("layout", dict(layout="nchw "), ValueError, "layout"),
]


@pytest.mark.parametrize("name,changes,exc,match", GN_BACKWARD_BAD,
                         ids=[t[0] for t in GN_BACKWARD_BAD])
def test_group_norm_backward_rejects_bad_input(name, changes, exc, match):
    kw = _gn_backward_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    names = ("grad_out", "x", "num_groups", "weight", "save_mean", "save_invstd")
    pos = [kw.pop(k) for k in names]
    with pytest.raises(exc, match=match):
        cnnkit.group_norm_backward(*pos, **kw)
    kw.update(zip(names, pos))
    _assert_call_unchanged(kw, snap)


def _fold_args():
    rng = np.random.default_rng(9)
    return dict(conv_weight=rng.normal(size=(4, 2, 3, 3)).astype(F32),
                conv_bias=rng.normal(size=4).astype(F32),
                bn_weight=rng.normal(size=4).astype(F32), bn_bias=rng.normal(size=4).astype(F32),
                running_mean=rng.normal(size=4).astype(F32),
                running_var=rng.uniform(0.5, 2, 4).astype(F32))


FOLD_BAD = [
    ("conv_bias C", dict(conv_bias=np.ones(3, F32)), ValueError, "conv_bias"),
    ("bn_weight C", dict(bn_weight=np.ones(5, F32)), ValueError, "bn_weight"),
    ("bn_bias C", dict(bn_bias=np.ones(2, F32)), ValueError, "bn_bias"),
    ("running_mean C", dict(running_mean=np.ones(2, F32)), ValueError, "running_mean"),
    ("running_var C", dict(running_var=np.ones(8, F32)), ValueError, "running_var"),
    ("conv_bias int", dict(conv_bias=np.ones(4, np.int32)), TypeError, "conv_bias"),
    ("running_var list", dict(running_var=[1.0] * 4), TypeError, "running_var"),
    ("running_var < 0", dict(running_var=-np.ones(4, F32)), ValueError, "running_var"),
    ("eps 0", dict(eps=0.0), ValueError, "eps"),
]


@pytest.mark.parametrize("name,changes,exc,match", FOLD_BAD, ids=[t[0] for t in FOLD_BAD])
def test_fold_batch_norm_rejects_bad_input(name, changes, exc, match):
    kw = _fold_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    with pytest.raises(exc, match=match):
        cnnkit.fold_batch_norm(**kw)
    _assert_call_unchanged(kw, snap)


# ---- NaN inputs propagate, as in torch ---------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("virtual_batch_size", [None, 2])
def test_batch_norm_train_nan_input_propagates(layout, virtual_batch_size):
    """A NaN in x makes its channel's batch statistics NaN, so that channel's output (through the
    fused ReLU too: NaN stays NaN, as torch.relu keeps it) and running statistics are NaN, and the
    other channels are untouched by it (torch.nn.functional.batch_norm's behaviour). Before, the
    variance's clamp at 0 and the ReLU turned the NaN into a zero variance and zero outputs."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 5, 3, 7)).astype(np.float32)
    x[1, 2, 1, 4] = np.nan
    clean = x.copy()
    clean[1, 2, 1, 4] = 0.0
    xs = to_layout(x, layout)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    y, mean, invstd = cnnkit.batch_norm_train(xs, None, None, rm, rv, activation="relu", layout=layout,
                                              virtual_batch_size=virtual_batch_size)
    y = from_layout(y, layout)
    nan_c = np.zeros(5, bool)
    nan_c[2] = True
    if virtual_batch_size is None:
        assert np.isnan(y[:, 2]).all() and not np.isnan(y[:, ~nan_c]).any()
        assert list(np.isnan(mean)) == list(nan_c) and list(np.isnan(invstd)) == list(nan_c)
    else:  # only the NaN's chunk (images 0-1) of channel 2
        assert np.isnan(y[:2, 2]).all() and not np.isnan(y[2:]).any() and not np.isnan(y[:, ~nan_c]).any()
    assert list(np.isnan(rm)) == list(nan_c) and list(np.isnan(rv)) == list(nan_c)
    # the other channels as without the NaN
    rm2, rv2 = np.zeros(5, np.float32), np.ones(5, np.float32)
    y2 = from_layout(cnnkit.batch_norm_train(to_layout(clean, layout), None, None, rm2, rv2, activation="relu",
                                             layout=layout, virtual_batch_size=virtual_batch_size)[0], layout)
    assert_bitwise(y[:, ~nan_c], y2[:, ~nan_c])
    assert_bitwise(rv[~nan_c], rv2[~nan_c])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_norm_relu_keeps_nan_and_group_norm_propagates(layout):
    """The norms' fused ReLU is max(v, 0) as torch.relu: a NaN input stays NaN where it is (eval
    mode, finite running statistics), and group norm's NaN stays in its (sample, group)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 8, 4, 5)).astype(np.float32)
    x[2, 5, 3, 1] = np.nan
    y = from_layout(cnnkit.batch_norm_infer(to_layout(x, layout), None, None, np.zeros(8, np.float32),
                                            np.ones(8, np.float32), activation="relu", layout=layout), layout)
    assert np.isnan(y[2, 5, 3, 1]) and np.isnan(y).sum() == 1
    assert (y[~np.isnan(y)] >= 0).all()
    g = from_layout(cnnkit.group_norm(to_layout(x, layout), 4, activation="relu", layout=layout), layout)
    assert np.isnan(g[2, 4:6]).all() and np.isnan(g).sum() == 2 * 4 * 5
