"""Tests for cnnkit's 2-D convolution: conv2d, conv2d_backward and the depthwise separable pair.

Layers (STYLE.md, Tests):

* named edge cases, both layouts and both dtypes: groups = 1, C and in between; channels equal
  to, a multiple of and not a multiple of the SIMD width (16 float32 / 8 float64 lanes:
  C in 1, 3, 15, 16, 17, 32, 33); H or W smaller than the kernel (with padding); 1x1 kernels;
  stride larger than the kernel; dilation > 1; H != W and kH != kW; batch 1; depthwise with a
  channel multiplier; depthwise 3x3, 5x5 and 7x7 at stride 1 and 2 (the specialised kernels);
  ResNeXt-like groups of 4, 8, 16 and 32 channels; "same" with even kernels (torch pads one more
  at the bottom / right) and "valid";
* hypothesis over the whole geometry (N, C_in, C_out, groups, H, W, kH, kW, stride, padding,
  dilation, bias, layout, dtype, needs) against the float64 reference of tests/reference/conv.py:
  forward and every gradient; the same for the depthwise separable pair;
* invariants: identity kernels give the input back, a grouped conv is the per-group convs side
  by side, the depthwise separable conv is two conv2d calls, equivalent spellings of the
  geometry give the same bits; central finite differences of the float64 forward against the
  backward; NHWC and NCHW give the same numbers;
* the same bits at 1 and 2 threads (forward and every gradient) at every ISA level;
* the kernel registry (cnnkit.kernels("conv")): every entry this CPU runs, forced at its own ISA
  level, at 1 and 2 threads, against the reference on named geometries that cover every pass it
  implements and on hypothesis geometries generated from its name; the dispatcher's choice is
  the first supporting entry at the active level;
* bad input: the documented exception naming the argument, with nothing modified (out= too);
  out= returned and reusable; int64-sized geometry fails cleanly.

Tolerances: conftest.tol(dtype, length=n) with n the reduction length (C_in/groups*kH*kW for y,
C_out/groups*kH*kW for grad_input, N*Ho*Wo for grad_weight and grad_bias), applied as in
tests/test_norm.py to max(|ref|, terms): an output is a sum whose rounding errors are
proportional to its terms, not to the (possibly cancelling) result, so `terms` is the same
reference evaluated on absolute values (e.g. conv2d_ref(|x|, |w|) + |b| for y).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cnnkit
from conftest import (assert_bitwise, assert_close, assert_unchanged, isa_level, num_threads,
                      snapshot, tol)
from reference import conv as R

SETTINGS = settings(max_examples=100, deadline=None)
DTYPES = (np.float32, np.float64)
LAYOUTS = ("NCHW", "NHWC")
ALL_NEEDS = ("input", "weight", "bias")
SIMD_CHANNELS = (1, 3, 15, 16, 17, 32, 33)    # around the 16 float32 / 8 float64 lanes
F32, F64 = np.float32, np.float64


def dtype_id(d):
    return np.dtype(d).name


# ---- geometry and cases -------------------------------------------------------------------------

@dataclass(frozen=True)
class Geo:
    """One convolution geometry in NCHW terms (C_out = co, weight (co, ci/groups, kh, kw))."""
    n: int
    ci: int
    co: int
    h: int
    w: int
    kh: int
    kw: int
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1

    @property
    def pad4(self):
        return R.resolve_padding(self.padding, (self.kh, self.kw), self.dilation, self.stride)

    @property
    def out_hw(self):
        (pt, pb), (pl, pr) = self.pad4
        (sh, sw), (dh, dw) = R.pair(self.stride), R.pair(self.dilation)
        return (R.output_size(self.h, pt, pb, self.kh, sh, dh),
                R.output_size(self.w, pl, pr, self.kw, sw, dw))

    @property
    def weight_shape(self):
        return (self.co, self.ci // self.groups, self.kh, self.kw)

    def x_shape(self, layout):
        return (self.n, self.ci, self.h, self.w) if layout == "NCHW" else \
            (self.n, self.h, self.w, self.ci)

    def y_shape(self, layout):
        ho, wo = self.out_hw
        return (self.n, self.co, ho, wo) if layout == "NCHW" else (self.n, ho, wo, self.co)

    @property
    def len_y(self):
        """Terms in one output: C_in/groups * kH * kW."""
        return self.ci // self.groups * self.kh * self.kw

    @property
    def len_gx(self):
        """Terms in one input gradient (at most): C_out/groups * kH * kW."""
        return self.co // self.groups * self.kh * self.kw

    @property
    def len_gw(self):
        """Terms in one weight / bias gradient: N * Ho * Wo."""
        ho, wo = self.out_hw
        return self.n * ho * wo

    def __str__(self):
        return (f"N{self.n} C{self.ci}->{self.co} {self.h}x{self.w} k{self.kh}x{self.kw} "
                f"s{self.stride} p{self.padding!r} d{self.dilation} g{self.groups}")


def to_layout(a_nchw, layout):
    a = np.asarray(a_nchw)
    return R.to_nhwc(a) if layout == "NHWC" else np.ascontiguousarray(a)


def from_layout(a, layout):
    a = np.asarray(a)
    return R.to_nchw(a) if layout == "NHWC" else np.ascontiguousarray(a)


@dataclass
class Case:
    geo: Geo
    layout: str
    x: np.ndarray                 # in `layout`
    weight: np.ndarray
    bias: Optional[np.ndarray]
    grad_out: np.ndarray          # in `layout`

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def kw(self):
        g = self.geo
        return dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups,
                    layout=self.layout)

    @property
    def ref_kw(self):
        g = self.geo
        return dict(stride=g.stride, padding=g.pad4, dilation=g.dilation, groups=g.groups)

    def __str__(self):
        return f"{self.geo} {self.layout} {self.dtype.name}"


def make_case(rng, geo: Geo, layout="NCHW", dtype=F32, *, bias=True):
    def arr(shape):
        return rng.standard_normal(shape).astype(dtype)
    return Case(geo, layout,
                x=to_layout(arr((geo.n, geo.ci, geo.h, geo.w)), layout),
                weight=arr(geo.weight_shape),
                bias=arr(geo.co) if bias else None,
                grad_out=to_layout(arr(geo.y_shape("NCHW")), layout))


def absf(a):
    return None if a is None else np.abs(np.asarray(a, np.float64))


# ---- tolerances ---------------------------------------------------------------------------------

def assert_close_terms(actual, ref, dtype, terms, *, length=1, steps=1, factor=1.0,
                       what="value"):
    """conftest's atol + rtol*|ref| rule with |ref| replaced by max(|ref|, terms)."""
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    t = tol(dtype, length, steps)
    bound = factor * (t["atol"] + t["rtol"] * np.maximum(np.abs(ref),
                                                          np.broadcast_to(terms, ref.shape)))
    err = np.abs(actual - ref)
    bad = ~(err <= bound)
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), ref.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.size} elements out of tolerance "
                             f"(max abs error {np.nanmax(err):.3g}); worst at index {idx}: got "
                             f"{actual[idx]!r}, expected {ref[idx]!r} (bound {bound[idx]:.3g})")


# ---- checkers -----------------------------------------------------------------------------------

def ref_forward(c: Case):
    """(reference y, terms) in NCHW float64."""
    x = from_layout(c.x, c.layout)
    y = R.conv2d_ref(x, c.weight, c.bias, **c.ref_kw)
    terms = R.conv2d_ref(absf(x), absf(c.weight), absf(c.bias), **c.ref_kw)
    return y, terms


def ref_backward(c: Case):
    """(reference grads, terms) in NCHW float64."""
    x = from_layout(c.x, c.layout)
    g = from_layout(c.grad_out, c.layout)
    ref = R.conv2d_backward_ref(g, x, c.weight, **c.ref_kw)
    terms = R.conv2d_backward_ref(absf(g), absf(x), absf(c.weight), **c.ref_kw)
    return ref, terms


def check_forward(c: Case, *, out=None):
    inputs = (c.x, c.weight, c.bias)
    snaps = snapshot(*inputs)
    y = cnnkit.conv2d(c.x, c.weight, c.bias, out=out, **c.kw)
    assert_unchanged(inputs, snaps)
    if out is not None:
        assert y is out, "conv2d did not return its out= array"
    assert isinstance(y, np.ndarray) and y.flags.c_contiguous, f"{c}: y not C-contiguous"
    assert y.dtype == c.dtype and y.shape == c.geo.y_shape(c.layout), \
        f"{c}: y {y.dtype} {y.shape}, expected {c.geo.y_shape(c.layout)}"
    ref, terms = ref_forward(c)
    assert_close_terms(from_layout(y, c.layout), ref, c.dtype, terms,
                       length=c.geo.len_y + (c.bias is not None), what=f"y [{c}]")
    return y


def check_backward(c: Case, *, needs=ALL_NEEDS, out=None):
    inputs = (c.grad_out, c.x, c.weight)
    snaps = snapshot(*inputs)
    res = cnnkit.conv2d_backward(c.grad_out, c.x, c.weight, needs=needs, out=out, **c.kw)
    assert_unchanged(inputs, snaps)
    assert len(res) == 3, f"conv2d_backward returned {len(res)} values"
    ref, terms = ref_backward(c)
    geo = c.geo
    specs = (
        ("input", c.x.shape, lambda a: from_layout(a, c.layout), ref.grad_x, terms.grad_x,
         geo.len_gx),
        ("weight", c.weight.shape, np.asarray, ref.grad_w, terms.grad_w, geo.len_gw),
        ("bias", (geo.co,), np.asarray, ref.grad_b, terms.grad_b, geo.len_gw),
    )
    for i, (name, shape, conv, want, t, length) in enumerate(specs):
        got = res[i]
        if name not in needs:
            assert got is None, f"{c}: grad_{name} returned although needs={needs}"
            continue
        if out is not None and out[i] is not None:
            assert got is out[i], f"{c}: grad_{name} is not its out= array"
        assert isinstance(got, np.ndarray) and got.flags.c_contiguous, \
            f"{c}: grad_{name} not a C-contiguous array"
        assert got.dtype == c.dtype and got.shape == shape, \
            f"{c}: grad_{name} {got.dtype} {got.shape}, expected {shape}"
        assert_close_terms(conv(got), want, c.dtype, t, length=length,
                           what=f"grad_{name} [{c}]")
    return res


def check_all(c: Case, needs=ALL_NEEDS):
    check_forward(c)
    check_backward(c, needs=needs)


# ---- depthwise separable ------------------------------------------------------------------------

@dataclass(frozen=True)
class DWGeo:
    """Depthwise (C_in*m, 1, k, k) then pointwise (C_out, C_in*m, 1, 1)."""
    n: int
    ci: int
    m: int
    co: int
    h: int
    w: int
    kh: int
    kw: int
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1

    @property
    def dw_geo(self):
        return Geo(self.n, self.ci, self.ci * self.m, self.h, self.w, self.kh, self.kw,
                   self.stride, self.padding, self.dilation, groups=self.ci)

    @property
    def pw_geo(self):
        ho, wo = self.dw_geo.out_hw
        return Geo(self.n, self.ci * self.m, self.co, ho, wo, 1, 1)

    def __str__(self):
        return (f"dwsep N{self.n} C{self.ci}x{self.m}->{self.co} {self.h}x{self.w} "
                f"k{self.kh}x{self.kw} s{self.stride} p{self.padding!r} d{self.dilation}")


@dataclass
class DWCase:
    geo: DWGeo
    layout: str
    x: np.ndarray
    dw_weight: np.ndarray
    pw_weight: np.ndarray
    dw_bias: Optional[np.ndarray]
    pw_bias: Optional[np.ndarray]
    grad_out: np.ndarray

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def kw(self):
        g = self.geo
        return dict(stride=g.stride, padding=g.padding, dilation=g.dilation, layout=self.layout)

    @property
    def ref_kw(self):
        g = self.geo
        return dict(stride=g.stride, padding=g.dw_geo.pad4, dilation=g.dilation)

    def __str__(self):
        return f"{self.geo} {self.layout} {self.dtype.name}"


def make_dw_case(rng, geo: DWGeo, layout="NCHW", dtype=F32, *, dw_bias=True, pw_bias=True):
    def arr(shape):
        return rng.standard_normal(shape).astype(dtype)
    cm = geo.ci * geo.m
    return DWCase(geo, layout,
                  x=to_layout(arr((geo.n, geo.ci, geo.h, geo.w)), layout),
                  dw_weight=arr((cm, 1, geo.kh, geo.kw)),
                  pw_weight=arr((geo.co, cm, 1, 1)),
                  dw_bias=arr(cm) if dw_bias else None,
                  pw_bias=arr(geo.co) if pw_bias else None,
                  grad_out=to_layout(arr(geo.pw_geo.y_shape("NCHW")), layout))


def dw_lengths(geo: DWGeo):
    """(length, steps) for y of the two-stage composition: the depthwise sum (kH*kW + bias)
    rounded, then the pointwise sum (C_in*m + bias)."""
    return geo.kh * geo.kw + 1 + geo.ci * geo.m + 1, 2


def dw_grad_lengths(geo: DWGeo):
    """Reduction length of each of the five gradients through both stages (steps = 2):
    grad_mid sums C_out terms; grad_x then m*kH*kW of those, the depthwise weight / bias
    gradients N*Ho*Wo of them; the pointwise weight gradient sums N*Ho*Wo products with the
    intermediate (itself a kH*kW + 1 sum), the pointwise bias gradient N*Ho*Wo values."""
    nhw = geo.pw_geo.len_gw
    co = geo.co
    return (co + geo.m * geo.kh * geo.kw, co + nhw, geo.kh * geo.kw + 1 + nhw, co + nhw, nhw)


def check_dw_forward(c: DWCase):
    inputs = (c.x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias)
    snaps = snapshot(*inputs)
    y = cnnkit.depthwise_separable_conv2d(c.x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias,
                                          **c.kw)
    assert_unchanged(inputs, snaps)
    shape = c.geo.pw_geo.y_shape(c.layout)
    assert isinstance(y, np.ndarray) and y.flags.c_contiguous
    assert y.dtype == c.dtype and y.shape == shape, f"{c}: y {y.dtype} {y.shape} != {shape}"
    x = from_layout(c.x, c.layout)
    ref = R.depthwise_separable_ref(x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias,
                                    **c.ref_kw)
    terms = R.depthwise_separable_ref(absf(x), absf(c.dw_weight), absf(c.pw_weight),
                                      absf(c.dw_bias), absf(c.pw_bias), **c.ref_kw)
    length, steps = dw_lengths(c.geo)
    assert_close_terms(from_layout(y, c.layout), ref, c.dtype, terms, length=length,
                       steps=steps, what=f"y [{c}]")
    return y


def check_dw_backward(c: DWCase):
    inputs = (c.grad_out, c.x, c.dw_weight, c.pw_weight, c.dw_bias)
    snaps = snapshot(*inputs)
    res = cnnkit.depthwise_separable_conv2d_backward(c.grad_out, c.x, c.dw_weight, c.pw_weight,
                                                     c.dw_bias, **c.kw)
    assert_unchanged(inputs, snaps)
    assert len(res) == 5, f"depthwise_separable_conv2d_backward returned {len(res)} values"
    x = from_layout(c.x, c.layout)
    g = from_layout(c.grad_out, c.layout)
    ref = R.depthwise_separable_backward_ref(g, x, c.dw_weight, c.pw_weight, c.dw_bias,
                                             **c.ref_kw)
    terms = R.depthwise_separable_backward_ref(absf(g), absf(x), absf(c.dw_weight),
                                               absf(c.pw_weight), absf(c.dw_bias), **c.ref_kw)
    lengths = dw_grad_lengths(c.geo)
    cm = c.geo.ci * c.geo.m
    names = ("grad_x", "grad_dw_weight", "grad_pw_weight", "grad_dw_bias", "grad_pw_bias")
    shapes = (c.x.shape, c.dw_weight.shape, c.pw_weight.shape, (cm,), (c.geo.co,))
    for i, (name, shape) in enumerate(zip(names, shapes)):
        got = res[i]
        assert isinstance(got, np.ndarray), f"{c}: {name} is {type(got).__name__}"
        assert got.dtype == c.dtype and got.shape == shape, \
            f"{c}: {name} {got.dtype} {got.shape}, expected {shape}"
        if name == "grad_x":
            got = from_layout(got, c.layout)
        assert_close_terms(got, ref[i], c.dtype, terms[i], length=lengths[i], steps=2,
                           what=f"{name} [{c}]")
    return res


# ---- named edge cases ---------------------------------------------------------------------------

EDGE = [
    # groups = 1, C and in between
    ("g1", Geo(2, 12, 12, 6, 7, 3, 3, 1, 1)),
    ("g3", Geo(2, 12, 12, 6, 7, 3, 3, 1, 1, groups=3)),
    ("g4 C12->8", Geo(2, 12, 8, 6, 7, 3, 3, 1, 1, groups=4)),
    ("g6 C12->18", Geo(2, 12, 18, 5, 5, 3, 3, 1, 1, groups=6)),
    ("g=C", Geo(2, 12, 12, 6, 7, 3, 3, 1, 1, groups=12)),
    # channels around the SIMD width (both sides of the contraction)
    *[(f"dense C{c}", Geo(2, c, c, 5, 4, 3, 3, 1, 1)) for c in SIMD_CHANNELS],
    *[(f"dense C{c}->{co}", Geo(2, c, co, 4, 5, 3, 3, 1, 1))
      for c, co in ((1, 16), (16, 1), (3, 17), (17, 8), (33, 15), (8, 32))],
    *[(f"depthwise C{c}", Geo(2, c, c, 6, 5, 3, 3, 1, 1, groups=c)) for c in SIMD_CHANNELS],
    *[(f"1x1 C{c}->{co}", Geo(2, c, co, 4, 5, 1, 1))
      for c, co in ((1, 3), (15, 16), (16, 17), (17, 33), (32, 16), (33, 1))],
    # H or W smaller than the kernel, with padding
    ("H<k", Geo(2, 3, 4, 2, 6, 5, 5, 1, 2)),
    ("W<k", Geo(1, 4, 5, 7, 1, 3, 3, 1, 1)),
    ("1x1 input, 3x3 kernel", Geo(3, 5, 6, 1, 1, 3, 3, 1, 1)),
    ("2x2 input, 7x7 depthwise", Geo(2, 16, 16, 2, 2, 7, 7, 1, 3, groups=16)),
    ("3x2 input, 5x5 grouped s2", Geo(2, 8, 8, 3, 2, 5, 5, 2, 2, groups=2)),
    # 1x1 kernels
    ("1x1 s1", Geo(2, 16, 24, 5, 6, 1, 1)),
    ("1x1 s2", Geo(2, 17, 9, 7, 6, 1, 1, 2)),
    ("1x1 pad 1", Geo(1, 3, 4, 3, 3, 1, 1, 1, 1)),
    ("1x1 grouped", Geo(2, 16, 32, 4, 4, 1, 1, 1, 0, groups=4)),
    ("1x1 on 1x1", Geo(4, 33, 17, 1, 1, 1, 1)),
    # stride larger than the kernel
    ("k2 s3", Geo(2, 4, 6, 10, 11, 2, 2, 3)),
    ("k1 s4", Geo(2, 5, 3, 9, 9, 1, 1, 4)),
    ("k3 s(4,5) p1", Geo(1, 3, 5, 12, 13, 3, 3, (4, 5), 1)),
    ("depthwise k3 s4", Geo(2, 16, 16, 9, 9, 3, 3, 4, 1, groups=16)),
    # dilation > 1
    ("d2", Geo(2, 4, 5, 9, 10, 3, 3, 1, 2, 2)),
    ("d(1,3)", Geo(2, 4, 5, 8, 11, 3, 3, 1, (1, 3), (1, 3))),
    ("d2 s2 grouped", Geo(2, 8, 8, 11, 9, 3, 3, 2, 2, 2, groups=2)),
    ("d3 depthwise", Geo(1, 16, 16, 12, 12, 3, 3, 1, 3, 3, groups=16)),
    ("d2 depthwise k5 s2", Geo(1, 17, 17, 13, 12, 5, 5, 2, 4, 2, groups=17)),
    # H != W, kH != kW, pairs
    ("k(2,5) s(1,2) p(0,2)", Geo(2, 3, 7, 5, 13, 2, 5, (1, 2), (0, 2))),
    ("k(5,1) p(2,0)", Geo(1, 6, 4, 11, 3, 5, 1, 1, (2, 0))),
    ("k(1,3) depthwise", Geo(2, 16, 16, 3, 9, 1, 3, 1, (0, 1), groups=16)),
    # batch 1
    ("N1 dense", Geo(1, 16, 16, 8, 8, 3, 3, 1, 1)),
    ("N1 depthwise s2", Geo(1, 32, 32, 9, 9, 3, 3, 2, 1, groups=32)),
    # depthwise with a channel multiplier (C_out = m * C_in, groups = C_in)
    ("dw m2", Geo(2, 8, 16, 7, 7, 3, 3, 1, 1, groups=8)),
    ("dw m3 C17", Geo(2, 17, 51, 6, 5, 3, 3, 1, 1, groups=17)),
    ("dw m4 C3 k5 s2", Geo(1, 3, 12, 9, 8, 5, 5, 2, 2, groups=3)),
    ("dw m2 C16 k7", Geo(1, 16, 32, 8, 9, 7, 7, 1, 3, groups=16)),
    # depthwise 3x3 / 5x5 / 7x7 at stride 1 and 2 (the specialised kernels)
    *[(f"dw k{k} s{s} C{c}", Geo(2, c, c, 11 + s, 13, k, k, s, k // 2, groups=c))
      for k in (3, 5, 7) for s in (1, 2) for c in (16, 17, 32)],
    *[(f"dw k{k} s{s} C{c} no pad", Geo(1, c, c, 9, 10, k, k, s, 0, groups=c))
      for k in (3, 5, 7) for s in (1, 2) for c in (8,)],
    # ResNeXt-like grouped: 4, 8, 16, 32 channels per group
    *[(f"resnext {cg}/group", Geo(2, 4 * cg, 4 * cg, 6, 6, 3, 3, 1, 1, groups=4))
      for cg in (4, 8, 16, 32)],
    ("resnext g32 4/group", Geo(1, 128, 128, 5, 5, 3, 3, 1, 1, groups=32)),
    ("resnext 8/group s2", Geo(2, 64, 64, 7, 7, 3, 3, 2, 1, groups=8)),
    ("resnext 4/group ->8/group", Geo(2, 32, 64, 5, 6, 3, 3, 1, 1, groups=8)),
    # "same" (even kernels: one more row / column at the bottom / right) and "valid"
    ("same k2", Geo(2, 3, 4, 6, 7, 2, 2, 1, "same")),
    ("same k4x2", Geo(2, 3, 4, 6, 7, 4, 2, 1, "same")),
    ("same k(2,3) d(1,2)", Geo(2, 3, 4, 5, 6, 2, 3, 1, "same", (1, 2))),
    ("same k4 d2 (symmetric)", Geo(1, 4, 4, 8, 8, 4, 4, 1, "same", 2)),
    ("same k6 d3", Geo(1, 2, 3, 9, 10, 6, 6, 1, "same", 3)),
    ("same k3", Geo(2, 5, 6, 5, 5, 3, 3, 1, "same")),
    ("same depthwise k4", Geo(2, 16, 16, 6, 7, 4, 4, 1, "same", groups=16)),
    ("same grouped k2 on 1x1", Geo(2, 4, 4, 1, 1, 2, 2, 1, "same", groups=2)),
    ("valid", Geo(2, 3, 4, 6, 7, 3, 3, 1, "valid")),
    ("valid s2", Geo(2, 3, 4, 7, 8, 3, 2, 2, "valid")),
    # stems: at most 4 input channels, 16-64 output channels (the direct NHWC float32 kernel)
    ("stem C3 K32 k3", Geo(2, 3, 32, 9, 10, 3, 3, 1, 1)),
    ("stem C1 K16 k5 s2", Geo(2, 1, 16, 11, 9, 5, 5, 2, 2)),
    ("stem C4 K64 k7 s2 d2", Geo(1, 4, 64, 15, 14, 7, 7, 2, 3, 2)),
    ("stem C2 K48 k(3,1) no pad", Geo(2, 2, 48, 6, 7, 3, 1, 1, 0)),
    ("stem C3 K32 wide rows", Geo(1, 3, 32, 5, 41, 3, 3, 1, 1)),
    ("stem C3 K16 k9", Geo(1, 3, 16, 12, 13, 9, 9, 1, 4)),
    ("stem C3 K32 s2 even", Geo(2, 3, 32, 16, 16, 3, 3, 2, 1)),
    # 3x3 RGB at dilation 1 and column stride 1 or 2: the unrolled interior kernels (blocks of 6
    # pixels and their remainders; the nine-tap weight gradient in slices of K, on x padded with zeros)
    *[(f"stem C3 K{k} 3x3 s{s} p{p} W{w}", Geo(2, 3, k, 7, w, 3, 3, s, p))
      for k in (16, 32, 64) for s in (1, 2, (2, 1), (1, 2)) for p in (0, 1, 2) for w in (8, 15)],
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [g for _, g in EDGE], ids=[n for n, _ in EDGE])
def test_edge_conv2d(geo, layout, dtype, rng):
    check_all(make_case(rng, geo, layout, dtype, bias=True))
    check_forward(make_case(rng, geo, layout, dtype, bias=False))


NEEDS = (ALL_NEEDS, ("input",), ("weight",), ("bias",), ("weight", "bias"), ("input", "bias"),
         ("input", "weight"), ())


@pytest.mark.parametrize("needs", NEEDS, ids=lambda n: "+".join(n) or "none")
@pytest.mark.parametrize("geo", [Geo(2, 6, 4, 5, 6, 3, 3, 2, 1, groups=2),
                                 Geo(2, 16, 16, 7, 7, 3, 3, 1, 1, groups=16)],
                         ids=["grouped", "depthwise"])
def test_backward_needs(geo, needs, rng):
    for layout, dtype in itertools.product(LAYOUTS, DTYPES):
        check_backward(make_case(rng, geo, layout, dtype), needs=needs)


DW_EDGE = [
    ("C16 k3 s1", DWGeo(2, 16, 1, 24, 8, 8, 3, 3, 1, 1)),
    ("C17 m2 k3 s2", DWGeo(2, 17, 2, 5, 7, 9, 3, 3, 2, 1)),
    ("C3 k5 same", DWGeo(1, 3, 1, 16, 6, 6, 5, 5, 1, "same")),
    ("C32 k7 s2", DWGeo(2, 32, 1, 32, 9, 9, 7, 7, 2, 3)),
    ("C8 m3 d2", DWGeo(2, 8, 3, 8, 9, 9, 3, 3, 1, 2, 2)),
    ("C1 k3", DWGeo(3, 1, 1, 1, 5, 4, 3, 3, 1, 1)),
    ("C15 k(3,5) s(2,1)", DWGeo(1, 15, 1, 33, 7, 8, 3, 5, (2, 1), (1, 2))),
    ("C33 k4 same", DWGeo(2, 33, 1, 16, 5, 6, 4, 4, 1, "same")),
    ("C4 k3 valid, 3x3 input", DWGeo(2, 4, 2, 3, 3, 3, 3, 3, 1, "valid")),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [g for _, g in DW_EDGE], ids=[n for n, _ in DW_EDGE])
def test_edge_depthwise_separable(geo, layout, dtype, rng):
    for dw_bias, pw_bias in ((True, True), (False, False), (True, False), (False, True)):
        c = make_dw_case(rng, geo, layout, dtype, dw_bias=dw_bias, pw_bias=pw_bias)
        check_dw_forward(c)
        check_dw_backward(c)


# ---- hypothesis ---------------------------------------------------------------------------------

def _small_pair(draw, lo, hi):
    """An int or an (a, b) pair with entries in [lo, hi]."""
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    return draw(st.integers(lo, hi)), draw(st.integers(lo, hi))


@st.composite
def geometries(draw):
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups = 1
        cig = draw(st.sampled_from((1, 2, 3, 5, 8, 15, 16, 17)))
        og = draw(st.sampled_from((1, 2, 3, 7, 8, 16, 17)))
    elif kind == "grouped":
        groups = draw(st.integers(2, 5))
        cig, og = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    else:
        groups = draw(st.sampled_from((1, 2, 3, 8, 15, 16, 17)))
        cig, og = 1, draw(st.integers(1, 3))
    kh = draw(st.integers(1, 5))
    kw = kh if draw(st.booleans()) else draw(st.integers(1, 5))
    stride = _small_pair(draw, 1, 3)
    dilation = _small_pair(draw, 1, 3)
    mode = draw(st.sampled_from(["int", "pair", "valid", "same"]))
    padding = {"int": lambda: draw(st.integers(0, 3)),
               "pair": lambda: (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
               "valid": lambda: "valid", "same": lambda: "same"}[mode]()
    if padding == "same":
        stride = 1
    geo = Geo(draw(st.integers(1, 3)), groups * cig, groups * og, draw(st.integers(1, 10)),
              draw(st.integers(1, 10)), kh, kw, stride, padding, dilation, groups)
    # grow H and W until the kernel fits the padded input
    (pt, pb), (pl, pr) = geo.pad4
    (dh, dw) = R.pair(dilation)
    return replace(geo, h=max(geo.h, dh * (kh - 1) + 1 - pt - pb),
                   w=max(geo.w, dw * (kw - 1) + 1 - pl - pr))


@SETTINGS
@given(geo=geometries(), layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(DTYPES),
       bias=st.booleans(), needs=st.sampled_from(NEEDS[:-1]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_conv2d(geo, layout, dtype, bias, needs, seed):
    c = make_case(np.random.default_rng(seed), geo, layout, dtype, bias=bias)
    check_forward(c)
    check_backward(c, needs=needs)


@st.composite
def dw_geometries(draw):
    g = draw(geometries())
    ci = draw(st.sampled_from((1, 2, 3, 8, 16, 17)))
    return DWGeo(g.n, ci, draw(st.integers(1, 3)), draw(st.sampled_from((1, 3, 8, 16, 17))),
                 g.h, g.w, g.kh, g.kw, g.stride, g.padding, g.dilation)


@settings(max_examples=40, deadline=None)
@given(geo=dw_geometries(), layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(DTYPES),
       dw_bias=st.booleans(), pw_bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_depthwise_separable(geo, layout, dtype, dw_bias, pw_bias, seed):
    c = make_dw_case(np.random.default_rng(seed), geo, layout, dtype, dw_bias=dw_bias,
                     pw_bias=pw_bias)
    check_dw_forward(c)
    check_dw_backward(c)


# ---- invariants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c,k,groups", [(5, 1, 1), (16, 3, 1), (17, 3, 17), (8, 5, 8),
                                        (32, 7, 32), (12, 3, 4)])
def test_identity_kernel_gives_the_input_back(c, k, groups, layout, dtype, rng):
    """A centred delta kernel (identity across channels within each group), padding k//2."""
    x = to_layout(rng.standard_normal((2, c, 6, 7)), layout).astype(dtype)
    w = np.zeros((c, c // groups, k, k), dtype)
    for o in range(c):
        w[o, o % (c // groups), k // 2, k // 2] = 1
    y = cnnkit.conv2d(x, w, None, 1, k // 2, groups=groups, layout=layout)
    assert_close(y, x, dtype, length=c // groups * k * k, what="identity conv")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grouped_conv_is_the_per_group_convs_side_by_side(layout, dtype, rng):
    geo = Geo(2, 12, 8, 7, 6, 3, 3, (2, 1), 1, (1, 2), groups=4)
    c = make_case(rng, geo, layout, dtype)
    y = from_layout(cnnkit.conv2d(c.x, c.weight, c.bias, **c.kw), c.layout)
    x = from_layout(c.x, layout)
    parts = []
    for g in range(4):
        xg = to_layout(x[:, 3 * g:3 * g + 3], layout)
        yg = cnnkit.conv2d(xg, np.ascontiguousarray(c.weight[2 * g:2 * g + 2]),
                           np.ascontiguousarray(c.bias[2 * g:2 * g + 2]), geo.stride,
                           geo.padding, geo.dilation, layout=layout)
        parts.append(from_layout(yg, layout))
    _, terms = ref_forward(c)
    assert_close_terms(np.concatenate(parts, axis=1), y, dtype, terms, length=geo.len_y,
                       factor=2, what="per-group convs vs grouped conv")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_separable_is_two_conv2d_calls(layout, dtype, rng):
    geo = DWGeo(2, 8, 2, 12, 9, 8, 3, 3, 2, 1)
    c = make_dw_case(rng, geo, layout, dtype)
    y = cnnkit.depthwise_separable_conv2d(c.x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias,
                                          **c.kw)
    mid = cnnkit.conv2d(c.x, c.dw_weight, c.dw_bias, geo.stride, geo.padding, geo.dilation,
                        groups=geo.ci, layout=layout)
    y2 = cnnkit.conv2d(mid, c.pw_weight, c.pw_bias, layout=layout)
    x = from_layout(c.x, layout)
    terms = R.depthwise_separable_ref(absf(x), absf(c.dw_weight), absf(c.pw_weight),
                                      absf(c.dw_bias), absf(c.pw_bias), **c.ref_kw)
    length, steps = dw_lengths(geo)
    assert_close_terms(from_layout(y, layout), from_layout(y2, layout), dtype, terms,
                       length=length, steps=steps, factor=2, what="fused vs two conv2d calls")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_separable_in_chunks_matches_reference(layout, dtype, rng, monkeypatch):
    """The pair runs over chunks of images (the fused path); force one image per chunk."""
    import cnnkit.ops.conv as conv_mod

    monkeypatch.setattr(conv_mod, "_SEPARABLE_CHUNK_BYTES", 1)
    geo = DWGeo(3, 8, 2, 12, 9, 8, 3, 3, 2, 1)
    c = make_dw_case(rng, geo, layout, dtype)
    check_dw_forward(c)
    check_dw_backward(c)


def test_equivalent_spellings_give_the_same_bits(rng):
    """int vs pair, "valid" vs 0, "same" vs k//2 for an odd kernel, default arguments."""
    x = rng.standard_normal((2, 6, 9, 8)).astype(F32)
    w = rng.standard_normal((6, 3, 3, 3)).astype(F32)
    base = cnnkit.conv2d(x, w, None, 1, 1, 1, 2)
    for kw in (dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2),
               dict(padding="same", groups=2), dict(padding=1, groups=2, layout="NCHW")):
        assert_bitwise(cnnkit.conv2d(x, w, **kw), base, f"conv2d with {kw}")
    assert_bitwise(cnnkit.conv2d(x, w, None, 2, "valid", 2, 2),
                   cnnkit.conv2d(x, w, None, 2, 0, 2, 2), "valid vs 0")
    assert_bitwise(cnnkit.conv2d(x, w, groups=2), cnnkit.conv2d(x, w, None, 1, 0, 1, 2),
                   "defaults")


def test_public_names():
    for name in ("conv2d", "conv2d_backward", "depthwise_separable_conv2d",
                 "depthwise_separable_conv2d_backward"):
        assert getattr(cnnkit, name) is getattr(cnnkit.ops, name), name
        assert name in cnnkit.__all__ and name in cnnkit.ops.__all__, name


# ---- NHWC and NCHW ------------------------------------------------------------------------------

LAYOUT_GEOS = [
    Geo(2, 17, 16, 6, 5, 3, 3, 1, 1),
    Geo(2, 16, 32, 9, 9, 3, 3, 2, 1, groups=16),
    Geo(1, 33, 33, 7, 8, 5, 5, 1, 2, groups=33),
    Geo(2, 32, 32, 5, 5, 3, 3, 1, 1, groups=4),
    Geo(3, 15, 7, 4, 6, 1, 1),
    Geo(2, 6, 4, 7, 8, 4, 2, 1, "same", (2, 1), groups=2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("geo", LAYOUT_GEOS, ids=str)
def test_nhwc_and_nchw_give_the_same_numbers(geo, dtype, rng):
    """The same data in both layouts agree within the sum of both tolerances (the reduction
    order may differ between layouts, so not bitwise)."""
    c = make_case(rng, geo, "NCHW", dtype)
    n = replace(c, layout="NHWC", x=to_layout(c.x, "NHWC"), grad_out=to_layout(c.grad_out,
                                                                                "NHWC"))
    _, ty = ref_forward(c)
    _, tg = ref_backward(c)
    y1 = cnnkit.conv2d(c.x, c.weight, c.bias, **c.kw)
    y2 = from_layout(cnnkit.conv2d(n.x, n.weight, n.bias, **n.kw), "NHWC")
    assert_close_terms(y2, y1, dtype, ty, length=geo.len_y + 1, factor=2, what="y NHWC vs NCHW")
    g1 = cnnkit.conv2d_backward(c.grad_out, c.x, c.weight, **c.kw)
    g2 = cnnkit.conv2d_backward(n.grad_out, n.x, n.weight, **n.kw)
    assert_close_terms(from_layout(g2[0], "NHWC"), g1[0], dtype, tg.grad_x, length=geo.len_gx,
                       factor=2, what="grad_input NHWC vs NCHW")
    assert_close_terms(g2[1], g1[1], dtype, tg.grad_w, length=geo.len_gw, factor=2,
                       what="grad_weight NHWC vs NCHW")
    assert_close_terms(g2[2], g1[2], dtype, tg.grad_b, length=geo.len_gw, factor=2,
                       what="grad_bias NHWC vs NCHW")


# ---- finite differences (float64) ---------------------------------------------------------------

def _fd_check(loss, arrays, grads, rng, names, h=1e-4, picks=6):
    """Central differences of the scalar loss() at `picks` random elements of each array."""
    for name, a, g in zip(names, arrays, grads):
        scale = np.abs(g).max()
        for k in rng.choice(a.size, size=min(picks, a.size), replace=False):
            i = np.unravel_index(k, a.shape)
            old = a[i]
            a[i] = old + h
            fp = loss()
            a[i] = old - h
            fm = loss()
            a[i] = old
            fd = (fp - fm) / (2 * h)
            assert abs(fd - g[i]) <= 1e-6 * abs(fd) + 1e-7 * scale, \
                f"d loss / d {name}{i}: backward {g[i]!r}, finite differences {fd!r}"


FD_CASES = [
    (Geo(2, 4, 6, 6, 7, 3, 3, 1, 1), "NCHW"),
    (Geo(2, 6, 4, 7, 6, 3, 2, (2, 1), (1, 0), (1, 2), groups=2), "NHWC"),
    (Geo(1, 8, 16, 6, 6, 5, 5, 2, 2, groups=8), "NCHW"),
    (Geo(2, 3, 5, 5, 6, 4, 4, 1, "same"), "NHWC"),
    (Geo(1, 16, 16, 5, 5, 3, 3, 1, 1, 2, groups=16), "NHWC"),
]


@pytest.mark.parametrize("geo,layout", FD_CASES, ids=lambda v: str(v))
def test_backward_matches_finite_differences(geo, layout, rng):
    c = make_case(rng, geo, layout, F64)
    x, w, b = c.x.copy(), c.weight.copy(), c.bias.copy()

    def loss():
        return float(np.sum(c.grad_out * cnnkit.conv2d(x, w, b, **c.kw)))

    grads = cnnkit.conv2d_backward(c.grad_out, x, w, **c.kw)
    _fd_check(loss, (x, w, b), grads, rng, ("x", "weight", "bias"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_separable_backward_matches_finite_differences(layout, rng):
    c = make_dw_case(rng, DWGeo(2, 4, 2, 5, 6, 7, 3, 3, (1, 2), 1, 1), layout, F64)
    arrays = [a.copy() for a in (c.x, c.dw_weight, c.pw_weight, c.dw_bias, c.pw_bias)]

    def loss():
        return float(np.sum(c.grad_out * cnnkit.depthwise_separable_conv2d(*arrays, **c.kw)))

    grads = cnnkit.depthwise_separable_conv2d_backward(c.grad_out, *arrays[:4], **c.kw)
    _fd_check(loss, arrays, grads, rng, ("x", "dw_weight", "pw_weight", "dw_bias", "pw_bias"))


# ---- threads and ISA levels ---------------------------------------------------------------------

THREAD_GEOS = [
    ("dense", Geo(4, 32, 32, 20, 20, 3, 3, 1, 1)),
    ("stem C3 K32", Geo(4, 3, 32, 20, 21, 3, 3, 1, 1)),
    ("stem C3 K16 s2", Geo(4, 3, 16, 20, 21, 3, 3, 2, 1)),
    ("dense C17->33 s2 d2", Geo(4, 17, 33, 20, 19, 3, 3, 2, 2, 2)),
    ("1x1", Geo(4, 32, 48, 20, 20, 1, 1)),
    ("grouped g8", Geo(4, 32, 32, 20, 20, 3, 3, 1, 1, groups=8)),
    ("grouped g8 s2", Geo(4, 32, 32, 20, 20, 3, 3, 2, 1, groups=8)),
    ("depthwise k3 s1", Geo(4, 32, 32, 20, 20, 3, 3, 1, 1, groups=32)),
    ("depthwise k3 12x12 (NCHW blocked)", Geo(4, 32, 32, 12, 12, 3, 3, 1, 1, groups=32)),
    ("depthwise k5 s2", Geo(4, 32, 32, 20, 20, 5, 5, 2, 2, groups=32)),
    ("depthwise m2 k7", Geo(4, 16, 32, 20, 20, 7, 7, 1, 3, groups=16)),
    ("same k4", Geo(4, 16, 16, 20, 20, 4, 4, 1, "same", groups=2)),
]


def _conv_outputs(c: Case):
    return [cnnkit.conv2d(c.x, c.weight, c.bias, **c.kw),
            *cnnkit.conv2d_backward(c.grad_out, c.x, c.weight, **c.kw)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [g for _, g in THREAD_GEOS], ids=[n for n, _ in THREAD_GEOS])
def test_same_bits_at_one_and_two_threads(isa, geo, layout, dtype, rng):
    c = make_case(rng, geo, layout, dtype)
    with num_threads(1):
        one = _conv_outputs(c)
    with num_threads(2):
        two = _conv_outputs(c)
    for name, a, b in zip(("y", "grad_input", "grad_weight", "grad_bias"), one, two):
        assert_bitwise(b, a, f"{name} at 2 threads vs 1 ({isa}, {c})")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_separable_same_bits_at_one_and_two_threads(isa, layout, dtype, rng):
    c = make_dw_case(rng, DWGeo(4, 32, 1, 48, 20, 20, 3, 3, 1, 1), layout, dtype)
    outs = []
    for n in (1, 2):
        with num_threads(n):
            outs.append([cnnkit.depthwise_separable_conv2d(c.x, c.dw_weight, c.pw_weight,
                                                           c.dw_bias, c.pw_bias, **c.kw),
                         *cnnkit.depthwise_separable_conv2d_backward(
                             c.grad_out, c.x, c.dw_weight, c.pw_weight, c.dw_bias, **c.kw)])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_bitwise(b, a, f"depthwise separable output {i} at 2 threads vs 1 ({isa})")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_isa_level_depthwise_separable(isa, layout, dtype, rng):
    for geo in (DWGeo(2, 17, 1, 16, 7, 8, 3, 3, 1, 1), DWGeo(1, 16, 2, 33, 9, 9, 5, 5, 2, 2)):
        c = make_dw_case(rng, geo, layout, dtype)
        check_dw_forward(c)
        check_dw_backward(c)


# ---- out= ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [Geo(2, 6, 8, 7, 6, 3, 3, 1, 1, groups=2),
                                 Geo(2, 16, 16, 9, 8, 5, 5, 2, 2, groups=16)],
                         ids=["grouped", "depthwise"])
def test_conv2d_out_is_returned_and_reused(geo, layout, dtype, rng):
    out = np.full(geo.y_shape(layout), np.nan, dtype)
    a, b = make_case(rng, geo, layout, dtype), make_case(rng, geo, layout, dtype)
    y1 = check_forward(a, out=out).copy()
    y2 = check_forward(a, out=out)
    assert_bitwise(y2, y1, "conv2d into the same out twice")
    assert_bitwise(y1, cnnkit.conv2d(a.x, a.weight, a.bias, **a.kw), "out= vs a fresh output")
    check_forward(b, out=out)          # different data: every element rewritten


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_backward_out_is_returned_and_reused(layout, dtype, rng):
    geo = Geo(2, 6, 8, 7, 6, 3, 3, (2, 1), 1, groups=2)
    a, b = make_case(rng, geo, layout, dtype), make_case(rng, geo, layout, dtype)
    bufs = (np.full(a.x.shape, np.nan, dtype), np.full(a.weight.shape, np.nan, dtype),
            np.full((geo.co,), np.nan, dtype))
    first = [r.copy() for r in check_backward(a, out=bufs)]
    second = check_backward(a, out=bufs)     # must overwrite, not accumulate into, out
    for name, x1, x2 in zip(("grad_input", "grad_weight", "grad_bias"), first, second):
        assert_bitwise(x2, x1, f"{name} into the same out twice")
    check_backward(b, out=bufs)
    # some entries None: those are allocated, the others written in place
    check_backward(a, out=(None, bufs[1], None))
    check_backward(a, needs=("weight",), out=(None, bufs[1], None))


# ---- sizes --------------------------------------------------------------------------------------

def test_huge_kernel_relative_to_input_is_rejected():
    x = np.ones((1, 1, 1, 8), F32)
    with pytest.raises(ValueError):
        cnnkit.conv2d(x, np.ones((1, 1, 1, 2**20), F32))
    with pytest.raises(ValueError):
        cnnkit.conv2d_backward(np.ones((1, 1, 1, 1), F32), x, np.ones((1, 1, 1, 2**20), F32))


@pytest.mark.parametrize("dilation", [2**31, 2**62, (1, 2**62)])
def test_huge_dilation_is_rejected_without_overflow(dilation):
    """dilation*(k-1)+1 does not fit int64 for 2**62 with k = 3: no wrap-around to a small
    effective kernel, a ValueError."""
    x = np.ones((1, 2, 5, 5), F32)
    w = np.ones((2, 2, 3, 3), F32)
    with pytest.raises(ValueError, match=r"dilation|weight|kernel|input|\bx\b"):
        cnnkit.conv2d(x, w, dilation=dilation)


def test_huge_stride_gives_one_output(rng):
    c = make_case(rng, Geo(2, 3, 4, 5, 6, 3, 3, 2**62, 1), "NCHW", F64)
    assert c.geo.out_hw == (1, 1)
    check_all(c)


@pytest.mark.parametrize("padding", [2**62, (0, 2**62), 2**40])
def test_impossible_output_size_fails_cleanly(padding):
    """An output that no int64 shape can hold: an exception, not a crash or a wrapped size."""
    with pytest.raises((ValueError, OverflowError, MemoryError)):
        cnnkit.conv2d(np.ones((1, 1, 2, 2), F32), np.ones((1, 1, 1, 1), F32), padding=padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch_gives_empty_outputs_and_zero_weight_gradients(layout, dtype, rng):
    """N = 0: conv2d and the depthwise separable pair return empty outputs of the right shape and
    all-zero weight and bias gradients (an empty sum), with and without out= / workspace."""
    x = to_layout(np.zeros((0, 4, 7, 6), dtype), layout)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    y = cnnkit.conv2d(x, w, padding=1, layout=layout)
    assert y.shape == to_layout(np.zeros((0, 6, 7, 6)), layout).shape and y.dtype == dtype
    gi, gw, gb = cnnkit.conv2d_backward(y, x, w, padding=1, layout=layout)
    assert gi.shape == x.shape and not gw.any() and not gb.any()
    dw = rng.standard_normal((8, 1, 3, 3)).astype(dtype)          # channel multiplier 2
    pw = rng.standard_normal((5, 8, 1, 1)).astype(dtype)
    db, pb = rng.standard_normal(8).astype(dtype), rng.standard_normal(5).astype(dtype)
    shape = to_layout(np.zeros((0, 5, 4, 3)), layout).shape       # stride 2, padding 1
    kw = dict(stride=2, padding=1, layout=layout)
    for extra in ({}, {"workspace": {}}):
        y = cnnkit.depthwise_separable_conv2d(x, dw, pw, db, pb, **kw, **extra)
        assert y.shape == shape and y.dtype == dtype
        out = np.empty(shape, dtype)
        assert cnnkit.depthwise_separable_conv2d(x, dw, pw, db, pb, **kw, out=out, **extra) is out
        grads = cnnkit.depthwise_separable_conv2d_backward(y, x, dw, pw, db, **kw, **extra)
        for g, ref in zip(grads, (x, dw, pw, db, pb)):
            assert g.shape == ref.shape and g.dtype == dtype and not g.any()
    with pytest.raises(ValueError, match="grad_out"):
        cnnkit.depthwise_separable_conv2d_backward(np.zeros((1,) + shape[1:], dtype), x, dw, pw, **kw)


def test_channels_last_array_with_the_default_layout_suggests_nhwc():
    x = np.zeros((2, 16, 16, 8), F32)                              # NHWC, 8 channels
    with pytest.raises(ValueError, match=r'^weight: .*8 input channels on its last axis: pass layout="NHWC"'):
        cnnkit.conv2d(x, np.ones((4, 8, 3, 3), F32))
    with pytest.raises(ValueError, match=r'layout="NHWC"'):   # grouped: C_in = weight.shape[1] * groups
        cnnkit.conv2d(x, np.ones((8, 2, 3, 3), F32), groups=4)
    with pytest.raises(ValueError, match=r'^groups: .*layout="NHWC"'):   # H = 16 is not divisible by 3
        cnnkit.conv2d(np.zeros((2, 16, 16, 9), F32), np.ones((9, 1, 3, 3), F32), groups=9)
    with pytest.raises(ValueError, match=r'layout="NCHW"'):   # the reverse mistake
        cnnkit.conv2d(np.zeros((2, 8, 16, 16), F32), np.ones((4, 8, 3, 3), F32), layout="NHWC")
    with pytest.raises(ValueError, match="weight") as info:    # a plain mismatch: no layout hint
        cnnkit.conv2d(np.zeros((2, 5, 16, 16), F32), np.ones((4, 8, 3, 3), F32))
    assert "layout" not in str(info.value)
    assert cnnkit.conv2d(x, np.ones((4, 8, 3, 3), F32), layout="NHWC").shape == (2, 14, 14, 4)


# ---- bad input ----------------------------------------------------------------------------------

NONCONTIG = np.zeros((2, 6, 4, 8), F32)[..., ::2]     # (2, 6, 4, 4), not C-contiguous


def _fwd_args():
    """x (2, 4, 6, 6), weight (6, 2, 3, 3), groups=2 -> y (2, 6, 4, 4)."""
    rng = np.random.default_rng(3)
    return dict(x=rng.standard_normal((2, 4, 6, 6)).astype(F32),
                weight=rng.standard_normal((6, 2, 3, 3)).astype(F32),
                bias=rng.standard_normal(6).astype(F32), groups=2,
                out=np.arange(2 * 6 * 4 * 4, dtype=F32).reshape(2, 6, 4, 4))


def _i(shape, dtype=np.int32):
    return np.ones(shape, dtype)


GEOMETRY_BAD = [
    ("groups not dividing C_in", dict(groups=3, weight=np.ones((6, 1, 3, 3), F32)), ValueError,
     "groups"),
    ("groups not dividing C_out", dict(weight=np.ones((5, 2, 3, 3), F32), bias=None, out=None),
     ValueError, "groups"),
    ("groups 0", dict(groups=0), ValueError, "groups"),
    ("groups -2", dict(groups=-2), ValueError, "groups"),
    ("groups float", dict(groups=2.0), (TypeError, ValueError), "groups"),
    ("weight C_in/groups", dict(weight=np.ones((6, 4, 3, 3), F32)), ValueError, "weight"),
    ("weight C_in/groups with groups 1", dict(groups=1), ValueError, "weight"),
    ("weight 3-D", dict(weight=np.ones((6, 2, 3), F32)), ValueError, "weight"),
    ("weight 5-D", dict(weight=np.ones((6, 2, 3, 3, 1), F32)), ValueError, "weight"),
    ("x 3-D", dict(x=np.ones((4, 6, 6), F32), out=None), ValueError, r"\bx\b"),
    ("x 5-D", dict(x=np.ones((2, 4, 6, 6, 1), F32), out=None), ValueError, r"\bx\b"),
    ("kernel larger than padded input", dict(weight=np.ones((6, 2, 7, 7), F32), out=None),
     ValueError, r"weight|kernel|\bx\b|input|padding"),
    ("kernel larger than padded input (one axis)", dict(weight=np.ones((6, 2, 1, 9), F32),
                                                         padding=1, out=None),
     ValueError, r"weight|kernel|\bx\b|input|padding"),
    ("dilated kernel larger than input", dict(dilation=3, out=None), ValueError,
     r"dilation|weight|kernel|\bx\b|input"),
    ("stride 0", dict(stride=0), ValueError, "stride"),
    ("stride -1", dict(stride=-1), ValueError, "stride"),
    ("stride (1, 0)", dict(stride=(1, 0)), ValueError, "stride"),
    ("stride 3 entries", dict(stride=(1, 1, 1)), (TypeError, ValueError), "stride"),
    ("stride float", dict(stride=1.5), (TypeError, ValueError), "stride"),
    ("dilation 0", dict(dilation=0), ValueError, "dilation"),
    ("dilation (0, 1)", dict(dilation=(0, 1)), ValueError, "dilation"),
    ("dilation -2", dict(dilation=-2), ValueError, "dilation"),
    ("padding -1", dict(padding=-1), ValueError, "padding"),
    ("padding (0, -1)", dict(padding=(0, -1)), ValueError, "padding"),
    ("padding 'full'", dict(padding="full"), ValueError, "padding"),
    ("padding float", dict(padding=0.5), (TypeError, ValueError), "padding"),
    ("padding same with stride 2", dict(padding="same", stride=2, out=None), ValueError,
     "padding|stride"),
    ("padding same with stride (1, 2)", dict(padding="same", stride=(1, 2), out=None),
     ValueError, "padding|stride"),
    ("x int32", dict(x=_i((2, 4, 6, 6))), TypeError, r"\bx\b"),
    ("x float16", dict(x=np.ones((2, 4, 6, 6), np.float16)), TypeError, r"\bx\b"),
    ("weight int64", dict(weight=_i((6, 2, 3, 3), np.int64)), TypeError, "weight"),
    ("weight f64 with x f32", dict(weight=np.ones((6, 2, 3, 3), F64)), TypeError, "weight"),
    ("x f64 with weight f32", dict(x=np.ones((2, 4, 6, 6), F64), out=None), TypeError,
     r"weight|\bx\b"),
    ("layout", dict(layout="NWHC"), ValueError, "layout"),
    ("layout CHW", dict(layout="CHW"), ValueError, "layout"),
    ("NHWC reading of an NCHW x", dict(layout="NHWC", out=None), ValueError, "weight|groups"),
]

FORWARD_BAD = GEOMETRY_BAD + [
    ("bias f64", dict(bias=np.ones(6, F64)), TypeError, "bias"),
    ("bias int", dict(bias=_i(6)), TypeError, "bias"),
    ("bias shape", dict(bias=np.ones(5, F32)), ValueError, "bias"),
    ("bias 2-D", dict(bias=np.ones((6, 1), F32)), ValueError, "bias"),
    ("out shape", dict(out=np.zeros((2, 6, 4, 5), F32)), ValueError, r"\bout\b"),
    ("out NHWC shape", dict(out=np.zeros((2, 4, 4, 6), F32)), ValueError, r"\bout\b"),
    ("out dtype", dict(out=np.zeros((2, 6, 4, 4), F64)), TypeError, r"\bout\b"),
    ("out non-contiguous", dict(out=NONCONTIG), ValueError, r"\bout\b"),
]


def _call_snapshot(kwargs):
    snap = {}
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            snap[k] = v.copy()
        elif isinstance(v, tuple) and any(isinstance(a, np.ndarray) for a in v):
            snap[k] = tuple(None if a is None else a.copy() for a in v)
    return snap


def _assert_call_unchanged(kwargs, snap):
    for k, s in snap.items():
        if isinstance(s, tuple):
            for i, (a, b) in enumerate(zip(kwargs[k], s)):
                if b is not None:
                    assert_bitwise(a, b, f"{k}[{i}] modified by a rejected call")
        else:
            assert_bitwise(kwargs[k], s, f"{k} modified by a rejected call")


@pytest.mark.parametrize("name,changes,exc,match", FORWARD_BAD, ids=[t[0] for t in FORWARD_BAD])
def test_conv2d_rejects_bad_input(name, changes, exc, match):
    kw = _fwd_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    args = dict(kw)
    with pytest.raises(exc, match=match):
        cnnkit.conv2d(args.pop("x"), args.pop("weight"), **args)
    _assert_call_unchanged(kw, snap)         # out= included: untouched by a rejected call


def _bwd_args():
    kw = _fwd_args()
    del kw["bias"], kw["out"]
    kw["grad_out"] = np.random.default_rng(4).standard_normal((2, 6, 4, 4)).astype(F32)
    return kw


def _grad_bufs():
    """Valid out= buffers for (grad_input, grad_weight, grad_bias) of _bwd_args, with content."""
    return (np.arange(2 * 4 * 36, dtype=F32).reshape(2, 4, 6, 6),
            np.arange(6 * 2 * 9, dtype=F32).reshape(6, 2, 3, 3), np.arange(6, dtype=F32))


def _bad_out(i, a):
    bufs = list(_grad_bufs())
    bufs[i] = a
    return tuple(bufs)


BACKWARD_BAD = [(n, {k: v for k, v in c.items() if k not in ("out", "bias")}, e, m)
                for n, c, e, m in GEOMETRY_BAD] + [
    ("grad_out shape", dict(grad_out=np.ones((2, 6, 4, 5), F32)), ValueError, "grad_out"),
    ("grad_out NHWC shape", dict(grad_out=np.ones((2, 4, 4, 6), F32)), ValueError, "grad_out"),
    ("grad_out 3-D", dict(grad_out=np.ones((6, 4, 4), F32)), ValueError, "grad_out"),
    ("grad_out f64", dict(grad_out=np.ones((2, 6, 4, 4), F64)), TypeError, "grad_out"),
    ("grad_out int", dict(grad_out=_i((2, 6, 4, 4))), TypeError, "grad_out"),
    ("needs unknown", dict(needs=("input", "gamma")), ValueError, "needs"),
    ("needs residual", dict(needs=("input", "residual")), ValueError, "needs"),
    ("out two entries", dict(out=_grad_bufs()[:2]), (TypeError, ValueError), r"\bout\b"),
    ("out grad_input shape", dict(out=_bad_out(0, np.zeros((2, 4, 6, 5), F32))), ValueError,
     r"\bout\b"),
    ("out grad_input NHWC shape", dict(out=_bad_out(0, np.zeros((2, 6, 6, 4), F32))),
     ValueError, r"\bout\b"),
    ("out grad_weight shape", dict(out=_bad_out(1, np.zeros((6, 4, 3, 3), F32))), ValueError,
     r"\bout\b"),
    ("out grad_bias shape", dict(out=_bad_out(2, np.zeros(5, F32))), ValueError, r"\bout\b"),
    ("out grad_input dtype", dict(out=_bad_out(0, np.zeros((2, 4, 6, 6), F64))), TypeError,
     r"\bout\b"),
    ("out grad_weight non-contiguous",
     dict(out=_bad_out(1, np.zeros((6, 2, 3, 6), F32)[..., ::2])), ValueError, r"\bout\b"),
    ("out grad_bias dtype", dict(out=_bad_out(2, np.zeros(6, F64))), TypeError, r"\bout\b"),
]


@pytest.mark.parametrize("name,changes,exc,match", BACKWARD_BAD,
                         ids=[t[0] for t in BACKWARD_BAD])
def test_conv2d_backward_rejects_bad_input(name, changes, exc, match):
    kw = _bwd_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    args = dict(kw)
    with pytest.raises(exc, match=match):
        cnnkit.conv2d_backward(args.pop("grad_out"), args.pop("x"), args.pop("weight"), **args)
    _assert_call_unchanged(kw, snap)         # the valid out= buffers too


def _dw_args():
    rng = np.random.default_rng(5)
    return dict(x=rng.standard_normal((2, 4, 6, 6)).astype(F32),
                dw_weight=rng.standard_normal((8, 1, 3, 3)).astype(F32),
                pw_weight=rng.standard_normal((5, 8, 1, 1)).astype(F32),
                dw_bias=rng.standard_normal(8).astype(F32),
                pw_bias=rng.standard_normal(5).astype(F32))


DW_BAD = [
    ("dw_weight not depthwise", dict(dw_weight=np.ones((8, 2, 3, 3), F32)), ValueError,
     "dw_weight"),
    ("dw_weight channels not a multiple of C_in", dict(dw_weight=np.ones((6, 1, 3, 3), F32),
                                                       dw_bias=None, pw_weight=np.ones(
                                                           (5, 6, 1, 1), F32)),
     ValueError, "dw_weight|groups"),
    ("dw_weight 3-D", dict(dw_weight=np.ones((8, 3, 3), F32)), ValueError, "dw_weight"),
    ("pw_weight channels", dict(pw_weight=np.ones((5, 7, 1, 1), F32)), ValueError, "pw_weight"),
    ("pw_weight not 1x1", dict(pw_weight=np.ones((5, 8, 3, 3), F32)), ValueError, "pw_weight"),
    ("pw_weight 2-D", dict(pw_weight=np.ones((5, 8), F32)), ValueError, "pw_weight"),
    ("dw_bias shape", dict(dw_bias=np.ones(4, F32)), ValueError, "dw_bias"),
    ("pw_bias shape", dict(pw_bias=np.ones(8, F32)), ValueError, "pw_bias"),
    ("dw_weight f64", dict(dw_weight=np.ones((8, 1, 3, 3), F64)), TypeError, "dw_weight"),
    ("pw_weight f64", dict(pw_weight=np.ones((5, 8, 1, 1), F64)), TypeError, "pw_weight"),
    ("dw_bias f64", dict(dw_bias=np.ones(8, F64)), TypeError, "dw_bias"),
    ("pw_bias int", dict(pw_bias=_i(5)), TypeError, "pw_bias"),
    ("x int", dict(x=_i((2, 4, 6, 6))), TypeError, r"\bx\b"),
    ("x 3-D", dict(x=np.ones((4, 6, 6), F32)), ValueError, r"\bx\b"),
    ("kernel larger than padded input", dict(dw_weight=np.ones((8, 1, 7, 7), F32)), ValueError,
     r"dw_weight|kernel|\bx\b|input|padding"),
    ("stride 0", dict(stride=0), ValueError, "stride"),
    ("dilation 0", dict(dilation=(1, 0)), ValueError, "dilation"),
    ("padding -1", dict(padding=-1), ValueError, "padding"),
    ("padding same with stride 2", dict(padding="same", stride=2), ValueError,
     "padding|stride"),
    ("layout", dict(layout="HWCN"), ValueError, "layout"),
]
DW_BACKWARD_BAD = [t for t in DW_BAD if "pw_bias" not in t[1]] + [
    ("grad_out shape", dict(grad_out=np.ones((2, 5, 4, 5), F32)), ValueError, "grad_out"),
    ("grad_out channels", dict(grad_out=np.ones((2, 8, 4, 4), F32)), ValueError, "grad_out"),
    ("grad_out f64", dict(grad_out=np.ones((2, 5, 4, 4), F64)), TypeError, "grad_out"),
]


@pytest.mark.parametrize("name,changes,exc,match", DW_BAD, ids=[t[0] for t in DW_BAD])
def test_depthwise_separable_rejects_bad_input(name, changes, exc, match):
    kw = _dw_args()
    kw.update(changes)
    snap = _call_snapshot(kw)
    args = dict(kw)
    pos = [args.pop(k) for k in ("x", "dw_weight", "pw_weight")]
    with pytest.raises(exc, match=match):
        cnnkit.depthwise_separable_conv2d(*pos, **args)
    _assert_call_unchanged(kw, snap)


@pytest.mark.parametrize("name,changes,exc,match", DW_BACKWARD_BAD,
                         ids=[t[0] for t in DW_BACKWARD_BAD])
def test_depthwise_separable_backward_rejects_bad_input(name, changes, exc, match):
    kw = _dw_args()
    del kw["pw_bias"]
    kw["grad_out"] = np.random.default_rng(6).standard_normal((2, 5, 4, 4)).astype(F32)
    kw.update(changes)
    snap = _call_snapshot(kw)
    args = dict(kw)
    pos = [args.pop(k) for k in ("grad_out", "x", "dw_weight", "pw_weight")]
    with pytest.raises(exc, match=match):
        cnnkit.depthwise_separable_conv2d_backward(*pos, **args)
    _assert_call_unchanged(kw, snap)


def test_conv2d_output_shape():
    assert cnnkit.ops.conv2d_output_shape((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, groups=2) == (2, 6, 5, 4)
    assert cnnkit.ops.conv2d_output_shape((2, 9, 8, 4), (6, 4, 1, 1), layout="NHWC") == (2, 9, 8, 6)
    with pytest.raises(ValueError, match="groups"):
        cnnkit.ops.conv2d_output_shape((2, 6, 8, 8), (8, 3, 3, 3), groups=4)


# ---- the kernel registry ------------------------------------------------------------------------
# Every entry of cnnkit.kernels("conv") that this CPU runs, forced, against the float64 reference
# at 1 and 2 threads, on geometries generated from the entry (its algorithm, dtype, layout and
# "how" are in its name); every pass the entry implements is exercised by the named examples.

TABLE = cnnkit.kernels("conv")
_LEVELS = ("scalar", "avx2", "avx512")
RUNNABLE = [e for e in TABLE
            if _LEVELS.index(e.isa) <= _LEVELS.index(cnnkit.build_info()["isa_supported"])]
PASSES = ("forward", "input", "weight")


def parse_name(name):
    """(algorithm, dtype, layout, how) of ``conv2d_<algorithm>_<dtype>_<layout>[_<how>]__<isa>``."""
    what, isa = name.split("__")
    parts = what.split("_")
    assert parts[0] == "conv2d" and isa in _LEVELS, name
    alg, dt, layout = parts[1], parts[2], parts[3]
    how = "_".join(parts[4:])
    return alg, {"f32": F32, "f64": F64}[dt], layout.upper(), how


def geo_args(geo: Geo, layout: str):
    return (geo.x_shape(layout), geo.weight_shape, geo.stride, geo.padding, geo.dilation,
            geo.groups, layout)


def supported_passes(entry, geo: Geo):
    alg, dtype, layout, _ = parse_name(entry.name)
    return [p for p in entry.passes
            if entry.supports(*geo_args(geo, layout), pass_=p, dtype=dtype)]


def examples(entry):
    """Named geometries for the entry: together they give every pass the entry implements
    (checked by test_every_registry_pass_has_an_example); stride 1 (the input gradient as the
    adjoint's forward pass) and stride 2."""
    alg, dtype, layout, how = parse_name(entry.name)
    if alg == "dw":
        if how == "blocked":
            return [Geo(2, 16, 16, 7, 6, 3, 3, 1, 1, groups=16),
                    Geo(1, 32, 32, 9, 8, 5, 5, 2, 2, groups=32),
                    Geo(2, 16, 16, 6, 7, 4, 2, 1, 0, groups=16)]
        if how == "transposed":
            return [Geo(2, 17, 17, 7, 6, 3, 3, 1, 1, groups=17),
                    Geo(1, 3, 3, 9, 8, 5, 5, 2, 2, groups=3),
                    Geo(2, 15, 15, 6, 7, 2, 3, 1, (1, 0), 2, groups=15)]
        return [Geo(2, 17, 17, 7, 6, 3, 3, 1, 1, groups=17),
                Geo(1, 8, 16, 9, 8, 5, 5, 2, 2, groups=8),
                Geo(2, 3, 9, 11, 12, 7, 7, (2, 1), 3, groups=3),
                Geo(1, 20, 20, 12, 11, 3, 3, 2, 1, groups=20),
                Geo(1, 32, 32, 12, 13, 3, 3, 1, 2, 2, groups=32)]
    if alg == "grouped":
        if how == "transposed":
            return [Geo(2, 32, 32, 6, 7, 3, 3, 1, 1, groups=8),
                    Geo(1, 64, 64, 9, 8, 3, 3, 2, 1, groups=4),
                    Geo(2, 16, 16, 5, 6, 1, 1, groups=8)]
        return [Geo(1, 32, 32, 4, 19, 3, 3, 1, 1, groups=8),
                Geo(1, 64, 64, 5, 34, 3, 3, 2, 1, groups=2),
                Geo(2, 32, 32, 3, 17, 3, 3, 1, 1, groups=16),
                Geo(1, 16, 16, 7, 20, 5, 5, 1, 2, groups=4)]
    if alg == "stem":
        return [Geo(2, 3, 32, 9, 10, 3, 3, 1, 1), Geo(1, 4, 64, 11, 9, 7, 7, 2, 3),
                Geo(2, 2, 16, 6, 7, 3, 1, 1, 0)]
    if how == "packed" and layout == "NCHW":  # output planes of 256 pixels or more
        return [Geo(2, 12, 8, 16, 17, 3, 3, 1, 1), Geo(1, 17, 9, 32, 33, 1, 1, 2),
                Geo(1, 16, 24, 16, 16, 1, 1), Geo(1, 33, 40, 33, 32, 3, 3, 2, 1),
                Geo(1, 20, 70, 18, 20, 3, 3, 1, 1, 2)]
    if how == "transposed":  # dense, NCHW output planes under 256 pixels (whole-batch GEMMs)
        # (kh*kw > 1, or 1x1 with C >= 1024 or 2^18 weights); C*kh*kw >= 1024 or 2^18 weights run
        # whole-batch GEMMs in the NHWC entry
        return [Geo(2, 12, 8, 6, 7, 3, 3, 1, 1), Geo(3, 1024, 40, 2, 2, 1, 1), Geo(2, 16, 24, 5, 6, 3, 1),
                Geo(1, 33, 40, 9, 8, 3, 3, 2, 1), Geo(2, 20, 70, 11, 13, 3, 3, 1, 1, 2),
                Geo(5, 64, 36, 2, 3, 3, 3, 1, 1), Geo(20, 128, 100, 4, 4, 3, 3, 1, 1),
                Geo(2, 120, 70, 9, 8, 3, 3, 2, 1), Geo(3, 400, 16, 14, 14, 3, 3, 1, 1)]
    if how == "patches":  # NHWC weight gradient, 16+ channels, not a plain 1x1, not small planes
        return [Geo(2, 16, 24, 5, 6, 3, 3, 1, 1), Geo(1, 33, 40, 9, 8, 3, 3, 2, 1),
                Geo(2, 20, 70, 11, 13, 3, 3, 1, 1, 2), Geo(3, 64, 9, 7, 6, 1, 1, 2),
                Geo(2, 17, 33, 16, 17, 3, 2, 1, (1, 0))]
    if how == "packed":  # dense (G == 1); sizes across the register blocks; planes under 256
        # pixels with C*kh*kw >= 1024 or 2^18 weights run as whole-batch GEMMs (row and column
        # tiles, blocks of images, 1x1 in place, stride 2), the rest as one GEMM per row chunk
        return [Geo(2, 12, 8, 6, 7, 3, 3, 1, 1), Geo(3, 17, 9, 7, 6, 1, 1, 2), Geo(2, 16, 24, 5, 6, 1, 1),
                Geo(1, 33, 40, 9, 8, 3, 3, 2, 1), Geo(2, 20, 70, 11, 13, 3, 3, 1, 1, 2),
                Geo(5, 64, 36, 2, 3, 3, 3, 1, 1), Geo(2, 80, 300, 4, 4, 3, 3, 1, 1),
                Geo(20, 128, 100, 4, 4, 3, 3, 1, 1), Geo(3, 400, 16, 14, 14, 3, 3, 1, 1),
                Geo(3, 1024, 40, 2, 2, 1, 1), Geo(2, 120, 70, 9, 8, 3, 3, 2, 1), Geo(2, 64, 4096, 3, 2, 1, 1),
                Geo(1, 12, 40, 16, 17, 3, 3, 1, 1), Geo(1, 16, 24, 16, 16, 1, 1)]
    return [Geo(2, 12, 8, 6, 7, 3, 3, 1, 1), Geo(2, 17, 9, 7, 6, 1, 1, 2),
            Geo(1, 6, 4, 8, 9, 3, 2, (2, 1), (1, 0), 2, groups=2), Geo(2, 16, 24, 5, 6, 1, 1)]


@st.composite
def entry_geometries(draw, entry):
    """A geometry of the entry's kind (mostly supported; the caller filters)."""
    alg, dtype, layout, how = parse_name(entry.name)
    kh = draw(st.integers(1, 5))
    kw = kh if draw(st.booleans()) else draw(st.integers(1, 5))
    stride = _small_pair(draw, 1, 2)
    dilation = _small_pair(draw, 1, 2)
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    n = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if alg == "dw":
        if how == "blocked":
            c, m = draw(st.sampled_from((16, 32))), 1
        elif how == "transposed":
            c, m = draw(st.sampled_from((1, 3, 15, 17))), 1
        else:
            c, m = draw(st.sampled_from((1, 3, 8, 16, 17))), draw(st.integers(1, 3))
        ci, co, groups = c, c * m, c
    elif alg == "grouped":
        cg, groups = draw(st.sampled_from(((2, 8), (2, 16), (4, 4), (4, 8), (8, 2), (8, 4),
                                           (16, 2), (16, 3), (32, 2))))
        ci = co = cg * groups
        if how != "transposed" and layout == "NCHW":
            w, stride, padding = draw(st.integers(17, 22)), (R.pair(stride)[0], 1), \
                (padding[0], R.pair(dilation)[1] * (kw - 1) // 2 + 1)
    elif alg == "stem":
        ci, co, groups = draw(st.integers(2, 4)), draw(st.sampled_from((16, 32, 48, 64))), 1
    elif how == "packed":  # dense, reductions (C*kh*kw) of 64 or more (1024 or more: whole batch)
        groups = 1
        ci, co = draw(st.sampled_from((8, 16, 33, 64, 70, 128))), draw(st.sampled_from((7, 16, 33, 64, 70)))
        if layout == "NCHW":  # output planes of 256 pixels or more
            n, stride, dilation = 1, 1, 1
            h, w = draw(st.integers(16, 20)), draw(st.integers(16, 20))
    elif how == "patches":  # dense NHWC, 16+ channels, reductions of 64 or more
        groups = 1
        ci, co = draw(st.sampled_from((16, 17, 33, 64))), draw(st.sampled_from((7, 16, 33, 64, 70)))
        kh = max(kh, 2)
    elif alg == "gemm" and how == "transposed":  # dense, reductions of 64 or more, small planes
        groups = 1
        ci, co = draw(st.sampled_from((8, 16, 33, 64, 70, 128))), draw(st.sampled_from((7, 16, 33, 64, 70)))
        n = draw(st.integers(1, 5))
    else:
        groups = draw(st.integers(1, 3))
        ci, co = groups * draw(st.integers(1, 9)), groups * draw(st.integers(1, 9))
    geo = Geo(n, ci, co, h, w, kh, kw, stride, padding, dilation, groups)
    (pt, pb), (pl, pr) = geo.pad4
    (dh, dw) = R.pair(dilation)
    return replace(geo, h=max(geo.h, dh * (kh - 1) + 1 - pt - pb),
                   w=max(geo.w, dw * (kw - 1) + 1 - pl - pr))


def check_entry(entry, geo: Geo, rng):
    """Force the entry (at its ISA level) and check every pass it supports here against the
    reference; the selection must name it for those passes."""
    alg, dtype, layout, _ = parse_name(entry.name)
    passes = supported_passes(entry, geo)
    c = make_case(rng, geo, layout, dtype, bias=bool(rng.integers(2)))
    with isa_level(entry.isa), TABLE.force(entry):
        for p in passes:
            got = TABLE.select(*geo_args(geo, layout), pass_=p, dtype=dtype)
            assert got is entry, f"{entry.name} forced, {p} of [{geo} {layout}] selects {got.name}"
        if "forward" in passes:
            check_forward(c)
        needs = tuple(n for n, p in (("input", "input"), ("weight", "weight"), ("bias", "weight"))
                      if p in passes)
        if needs:
            check_backward(c, needs=needs)
    return passes


@pytest.mark.parametrize("entry", RUNNABLE, ids=lambda e: e.name)
def test_every_registry_pass_has_an_example(entry):
    covered = {p for geo in examples(entry) for p in supported_passes(entry, geo)}
    assert covered == set(entry.passes), \
        f"{entry.name}: the examples give {sorted(covered)}, the entry implements {entry.passes}"


@pytest.mark.parametrize("entry", RUNNABLE, ids=lambda e: e.name)
def test_registry_entry_matches_the_reference(entry, threads, rng):
    for geo in examples(entry):
        check_entry(entry, geo, rng)


@pytest.mark.parametrize("entry", RUNNABLE, ids=lambda e: e.name)
def test_hypothesis_registry_entry(entry):
    @settings(max_examples=6, deadline=None)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from((1, 2)))
    def run(data, seed, threads):
        geo = data.draw(entry_geometries(entry))
        assume(supported_passes(entry, geo))
        with num_threads(threads):
            check_entry(entry, geo, np.random.default_rng(seed))
    run()


def test_registry_names_follow_the_grammar():
    assert "conv" in cnnkit.kernels()
    names = TABLE.names()
    assert len(names) == len(set(names))
    for e in TABLE:
        alg, dtype, layout, how = parse_name(e.name)
        assert e.name.endswith("__" + e.isa)
        assert alg in ("dw", "grouped", "stem", "gemm") and layout in LAYOUTS
        assert how in ("", "blocked", "transposed", "packed", "patches")
        assert e.passes and set(e.passes) <= set(PASSES)
    # every variant exists at every ISA level
    strip = {n.split("__")[0] for n in names}
    assert len(names) == 3 * len(strip)


def _gemm_reduction(args, pass_):
    """The reduction length of a dense problem's GEMM: C*kh*kw, or K*kh*kw for the input gradient
    at stride 1 (the adjoint's forward pass)."""
    (_, w_shape, stride, *_rest) = args
    k, c, kh, kw = w_shape
    return (k if pass_ == "input" and stride == 1 else c) * kh * kw


def _gemm_plane(args, pass_):
    """The pixels per image of the GEMM's output plane: Ho*Wo, or H*W for the input gradient at
    stride 1 (the adjoint's forward pass writes the input plane)."""
    (x_shape, w_shape, stride, padding, dilation, groups, layout) = args
    h, w = (x_shape[2], x_shape[3]) if layout == "NCHW" else (x_shape[1], x_shape[2])
    if pass_ == "input" and stride == 1:
        return h * w
    kh, kw = w_shape[2], w_shape[3]
    return ((h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1) * \
        ((w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1)


def _first_supported(args, pass_, dtype):
    isa = cnnkit.build_info()["isa"]
    return next(e for e in TABLE if e.isa == isa and e.supports(*args, pass_=pass_, dtype=dtype))


# The choices the dispatcher made before the registry (one geometry per rule of the decision tree
# in conv_dispatch.cpp's header), for float32 and float64 where the rule applies to both.
CHOICES = [
    (((2, 9, 9, 32), (32, 1, 3, 3), 1, 1, 1, 32, "NHWC"), "forward", "dw_{dt}_nhwc"),
    (((2, 32, 9, 9), (32, 1, 3, 3), 1, 1, 1, 32, "NCHW"), "forward", "dw_{dt}_nchw_blocked"),
    (((2, 17, 9, 9), (17, 1, 3, 3), 1, 1, 1, 17, "NCHW"), "forward", "dw_{dt}_nchw_transposed"),
    (((2, 17, 12, 12), (17, 1, 3, 3), 1, 1, 1, 17, "NCHW"), "forward", "dw_{dt}_nchw"),
    (((2, 8, 9, 9), (16, 1, 3, 3), 1, 1, 1, 8, "NCHW"), "forward", "dw_{dt}_nchw"),
    (((2, 9, 9, 32), (32, 1, 3, 3), 1, 1, 1, 32, "NHWC"), "input", "dw_{dt}_nhwc"),
    (((2, 20, 20, 64), (64, 4, 3, 3), 1, 1, 1, 16, "NHWC"), "forward", "grouped_{dt}_nhwc"),
    (((2, 64, 20, 20), (64, 4, 3, 3), 1, 1, 1, 16, "NCHW"), "forward", "grouped_{dt}_nchw"),
    (((2, 64, 8, 8), (64, 4, 3, 3), 1, 1, 1, 16, "NCHW"), "forward", "grouped_{dt}_nchw_transposed"),
    (((2, 64, 40, 40), (64, 4, 3, 3), 2, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw"),
    (((2, 64, 40, 40), (64, 4, 3, 3), 2, 1, 1, 16, "NCHW"), "input", "grouped_{dt}_nchw"),
    (((2, 64, 20, 20), (64, 4, 3, 3), 2, 1, 1, 16, "NCHW"), "input", "grouped_{dt}_nchw_transposed"),
    (((2, 512, 7, 7), (512, 32, 3, 3), 1, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw"),
    (((2, 512, 10, 10), (512, 32, 3, 3), 1, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw"),
    (((2, 512, 17, 15), (512, 32, 3, 3), 1, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw"),
    (((2, 512, 18, 15), (512, 32, 3, 3), 1, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw_transposed"),
    (((2, 64, 8, 8), (64, 4, 3, 3), 1, 1, 1, 16, "NCHW"), "weight", "grouped_{dt}_nchw_transposed"),
    (((2, 16, 8, 8), (8, 16, 1, 1), 1, 0, 1, 1, "NCHW"), "forward", "gemm_{dt}_nchw"),
    (((2, 64, 8, 8), (32, 64, 3, 3), 1, 1, 1, 1, "NCHW"), "forward", "gemm_{dt}_nchw"),
    (((2, 8, 8, 64), (32, 64, 1, 1), 1, 0, 1, 1, "NHWC"), "weight", "gemm_{dt}_nhwc"),
    (((2, 64, 8, 8), (32, 64, 3, 3), 1, 1, 1, 1, "NCHW"), "input", "gemm_{dt}_nchw"),
    (((2, 64, 8, 8), (32, 64, 3, 3), 1, 1, 1, 1, "NCHW"), "weight", "gemm_{dt}_nchw"),
    (((2, 512, 2, 2), (2048, 512, 1, 1), 1, 0, 1, 1, "NCHW"), "forward", "gemm_{dt}_nchw"),
    (((2, 512, 2, 2), (2048, 512, 1, 1), 1, 0, 1, 1, "NCHW"), "input", "gemm_{dt}_nchw"),
    (((2, 128, 8, 8), (256, 128, 1, 1), 1, 0, 1, 1, "NCHW"), "forward", "gemm_{dt}_nchw"),
    (((2, 3, 32, 32), (32, 3, 3, 3), 1, 1, 1, 1, "NCHW"), "forward", "gemm_{dt}_nchw"),
    (((2, 16, 8, 8), (8, 16, 3, 3), 2, 1, 1, 1, "NCHW"), "input", "gemm_{dt}_nchw"),
    (((2, 32, 32, 3), (32, 3, 3, 3), 1, 1, 1, 1, "NHWC"), "forward", "stem_f32_nhwc"),
    (((2, 32, 32, 3), (32, 3, 3, 3), 1, 1, 1, 1, "NHWC"), "weight", "stem_f32_nhwc"),
    (((2, 32, 32, 3), (32, 3, 3, 3), 1, 1, 1, 1, "NHWC"), "input", "gemm_f32_nhwc"),
    (((2, 32, 32, 32), (3, 32, 3, 3), 1, 1, 1, 1, "NHWC"), "input", "stem_f32_nhwc"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("args,pass_,want", CHOICES, ids=lambda v: str(v))
def test_selection_is_the_first_supporting_entry(isa, args, pass_, want, dtype):
    if dtype == F64:  # the stem kernel is float32 only
        want = want.replace("stem_f32", "gemm_{dt}").replace("f32", "{dt}")
    elif want.startswith("gemm_") and _gemm_reduction(args, pass_) >= 64:
        # float32 dense GEMMs with a long reduction run on cnnkit's own sgemm (NCHW: on output
        # planes of 256 pixels or more, one GEMM per image; smaller planes through transposes
        # around the NHWC entry's whole-batch GEMMs)
        # (and only for kh*kw > 1, or 1x1 with a reduction of 1024 or more or 2^18 weights)
        k, c, kh, kw = args[1]

        def small(ci, co):
            return ci * kh * kw >= 1024 or co * ci * kh * kw >= 2**18

        if args[-1] == "NHWC" or _gemm_plane(args, pass_) >= 256:
            want += "_packed"
        elif kh * kw > 1 or small(c, k) or (pass_ == "input" and args[2] == 1 and small(k, c)):
            want += "_transposed"
    dt = {F32: "f32", F64: "f64"}[dtype]
    got = cnnkit.ops.conv2d_algorithm(*args, pass_=pass_, dtype=dtype)
    assert got == _first_supported(args, pass_, dtype).name
    assert got == f"conv2d_{want.format(dt=dt)}__{isa}"


def test_conv2d_algorithm_rejects_bad_arguments():
    algo = cnnkit.ops.conv2d_algorithm
    with pytest.raises(ValueError, match="pass_"):
        algo((2, 16, 8, 8), (8, 16, 3, 3), pass_="backward")
    with pytest.raises(TypeError, match="dtype"):
        algo((2, 16, 8, 8), (8, 16, 3, 3), dtype=np.int32)
    with pytest.raises(KeyError, match="no kernel"):
        TABLE["conv2d_nope__scalar"]
    with pytest.raises(ValueError, match="family"):
        cnnkit.kernels("nope")


def test_force_is_restored_and_other_problems_dispatch_as_usual():
    entry = TABLE["conv2d_stem_f32_nhwc__scalar"]
    args = ((2, 16, 8, 8), (8, 16, 3, 3))
    before = TABLE.select(*args)
    with TABLE.force(entry):
        assert TABLE.forced() is entry
        assert TABLE.select(*args) is before       # not a stem: the usual choice
        with pytest.raises(RuntimeError):
            with TABLE.force("conv2d_gemm_f32_nchw__scalar"):
                raise RuntimeError
        assert TABLE.forced() is entry
    assert TABLE.forced() is None
