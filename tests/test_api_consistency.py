"""One spelling per concept across the public API, with the old keyword spellings kept for one
release behind a DeprecationWarning; norm weight/bias optional (None = no affine), as in torch;
batch_norm_train and group_norm return their statistics the same way.

Conventions checked here:

* the incoming gradient of a functional backward is ``grad_output`` (torch's name);
  ``cnnkit.nn`` layers' ``backward(grad)`` is the module protocol (see ``cnnkit.nn``'s docstring)
  and keeps its name;
* the layout argument is ``layout`` everywhere ("NCHW" or "NHWC").
"""
from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import cnnkit
from cnnkit import augment as A
from cnnkit import ops
from cnnkit.augment import functional as AF

F32 = np.float32


def _arr(rng, *shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- renamed keywords -----------------------------------------------------------------------------

def _cases(rng):
    x = _arr(rng, 2, 3, 5, 6)
    w = _arr(rng, 4, 3, 3, 3)
    g = _arr(rng, 2, 4, 5, 6)
    dw, pw = _arr(rng, 3, 1, 3, 3), _arr(rng, 4, 3, 1, 1)
    bw, bb = _arr(rng, 3), _arr(rng, 3)
    _, bm, bs = ops.batch_norm_train(x, bw, bb)
    gx = _arr(rng, 2, 4, 5, 6)
    _, gm, gs = ops.group_norm(gx, 2, return_stats=True)
    images = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    return [
        (ops.conv2d_backward, (x, w), dict(padding=1), "grad_out", "grad_output", g),
        (ops.depthwise_separable_conv2d_backward, (x, dw, pw), dict(padding=1), "grad_out", "grad_output", g),
        (ops.batch_norm_backward, (x, bw, bm, bs), dict(bias=bb), "grad_out", "grad_output", _arr(rng, 2, 3, 5, 6)),
        (ops.group_norm_backward, (gx, 2, None, gm, gs), {}, "grad_out", "grad_output", _arr(rng, 2, 4, 5, 6)),
        (AF.spatial_dropout_backward, (), dict(scale=np.full((2, 4), 2.0)), "grad_out", "grad_output", g),
        (AF.to_float_normalize, (images,), dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)), "layout_out", "layout",
         "NHWC"),
    ]


def _call_new(fn, args, kw, new, value):
    """The call with the new keyword; grad_output is the first positional argument."""
    if new == "grad_output":
        return fn(value, *args, **kw) if args else fn(value, **kw)
    return fn(*args, **{new: value}, **kw)


def _equal(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("case", range(6))
def test_old_keyword_warns_and_gives_the_same_result(case, rng):
    fn, args, kw, old, new, value = _cases(rng)[case]
    expected = _call_new(fn, args, kw, new, value)
    with pytest.warns(DeprecationWarning, match=f"{old}=.*deprecated.*use {new}="):
        got = fn(*args, **{old: value}, **kw) if new != "grad_output" else fn(**{old: value}, **dict(
            zip(list(inspect.signature(fn).parameters)[1:], args)), **kw)
    assert _equal(got, expected)


@pytest.mark.parametrize("case", range(6))
def test_old_and_new_keyword_together_is_a_type_error(case, rng):
    fn, args, kw, old, new, value = _cases(rng)[case]
    names = list(inspect.signature(fn).parameters)
    pos = dict(zip(names[1:], args)) if new == "grad_output" else dict(zip(names, args))
    with pytest.raises(TypeError, match=f"{old}=.*{new}="):
        fn(**pos, **{old: value, new: value}, **kw)


def test_spatial_dropout_transform_backward_old_keyword(rng):
    t = A.SpatialDropout(0.5, seed=3)
    x = _arr(rng, 2, 4, 5, 6)
    t(x)
    g = _arr(rng, 2, 4, 5, 6)
    expected = t.backward(g)
    with pytest.warns(DeprecationWarning, match="grad_out=.*grad_output="):
        got = t.backward(grad_out=g)
    assert np.array_equal(got, expected)


_PACKAGES = ["cnnkit", "cnnkit.ops", "cnnkit.nn", "cnnkit.optim", "cnnkit.optim.functional", "cnnkit.augment",
             "cnnkit.augment.functional", "cnnkit.explain", "cnnkit.data", "cnnkit.models", "cnnkit.train"]
_OTHER_GRADIENT_NAMES = {"grad_out", "dy", "grad_y", "gy", "dout", "g", "upstream", "grad_outputs"}
_OTHER_LAYOUT_NAMES = {"layout_out", "layout_in", "data_format", "channels_last", "nhwc", "format"}


def _public_signatures():
    for pkg in _PACKAGES:
        mod = importlib.import_module(pkg)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            targets = [(f"{pkg}.{name}", obj)]
            if inspect.isclass(obj):
                targets += [(f"{pkg}.{name}.{m}", getattr(obj, m)) for m in ("forward", "backward", "__call__", "step")
                            if m in vars(obj)]
            for qual, fn in targets:
                try:
                    yield qual, inspect.signature(fn)
                except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
                    continue


def test_one_name_for_the_incoming_gradient_and_for_the_layout():
    bad = []
    for qual, sig in _public_signatures():
        for p in sig.parameters:
            if p in _OTHER_GRADIENT_NAMES or p in _OTHER_LAYOUT_NAMES:
                bad.append(f"{qual}({p})")
    assert not bad, f"use grad_output / layout: {bad}"


def test_every_functional_backward_takes_grad_output_first():
    for fn in (ops.conv2d_backward, ops.depthwise_separable_conv2d_backward, ops.batch_norm_backward,
               ops.group_norm_backward, AF.spatial_dropout_backward, cnnkit.conv2d_backward):
        assert next(iter(inspect.signature(fn).parameters)) == "grad_output", fn.__name__


# ---- norm: weight/bias optional -------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_without_affine_equals_ones_and_zeros(layout, dtype, rng):
    x = _arr(rng, 4, 3, 5, 6, dtype=dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    rm0, rv0 = _arr(rng, 3, dtype=dtype), np.abs(_arr(rng, 3, dtype=dtype)) + 0.5
    rm1, rv1, rm2, rv2 = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
    y1, m1, s1 = ops.batch_norm_train(x, None, None, rm1, rv1, layout=layout)
    y2, m2, s2 = ops.batch_norm_train(x, ones, zeros, rm2, rv2, layout=layout)
    y0, m0, s0 = ops.batch_norm_train(x, layout=layout)  # weight, bias and running statistics all default None
    for a, b in ((y1, y2), (m1, m2), (s1, s2), (rm1, rm2), (rv1, rv2), (y0, y1), (m0, m1), (s0, s1)):
        np.testing.assert_array_equal(a, b)
    yi1 = ops.batch_norm_infer(x, None, None, rm0, rv0, layout=layout)
    yi2 = ops.batch_norm_infer(x, ones, zeros, rm0, rv0, layout=layout)
    yi3 = ops.batch_norm_infer(x, running_mean=rm0, running_var=rv0, layout=layout)
    np.testing.assert_array_equal(yi1, yi2)
    np.testing.assert_array_equal(yi1, yi3)
    g = _arr(rng, *x.shape, dtype=dtype)
    gi1, gw1, gb1 = ops.batch_norm_backward(g, x, None, m1, s1, layout=layout)
    gi2, gw2, gb2 = ops.batch_norm_backward(g, x, ones, m2, s2, bias=zeros, layout=layout)
    np.testing.assert_array_equal(gi1, gi2)
    assert gw1 is None and gb1 is None  # no affine: no affine gradients
    assert gw2.shape == gb2.shape == (3,)


def test_batch_norm_infer_still_requires_the_running_statistics(rng):
    x = _arr(rng, 2, 3, 4, 4)
    with pytest.raises(TypeError, match="^running_mean: "):
        ops.batch_norm_infer(x)
    with pytest.raises(TypeError, match="^running_var: "):
        ops.batch_norm_infer(x, running_mean=np.zeros(3, F32))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_group_norm_without_affine_equals_ones_and_zeros(layout, rng):
    x = _arr(rng, 2, 6, 5, 4)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    ones, zeros = np.ones(6, F32), np.zeros(6, F32)
    y1, m1, s1 = ops.group_norm(x, 3, None, None, layout=layout, return_stats=True)
    y2, m2, s2 = ops.group_norm(x, 3, ones, zeros, layout=layout, return_stats=True)
    for a, b in ((y1, y2), (m1, m2), (s1, s2)):
        np.testing.assert_array_equal(a, b)
    g = _arr(rng, *x.shape)
    gi1, gw1, gb1 = ops.group_norm_backward(g, x, 3, None, m1, s1, layout=layout)
    gi2, gw2, gb2 = ops.group_norm_backward(g, x, 3, ones, m2, s2, bias=zeros, layout=layout)
    np.testing.assert_array_equal(gi1, gi2)
    assert gw1 is None and gb1 is None and gw2.shape == gb2.shape == (6,)


# ---- statistics returned the same way -------------------------------------------------------------

def test_batch_norm_train_and_group_norm_return_statistics_the_same_way(rng):
    x = _arr(rng, 4, 6, 5, 4)
    bn = ops.batch_norm_train(x, return_stats=True)
    gn = ops.group_norm(x, 3, return_stats=True)
    for res, shape in ((bn, (6,)), (gn, (4, 3))):
        assert isinstance(res, tuple) and len(res) == 3
        y, mean, invstd = res
        assert y.shape == x.shape and y.dtype == x.dtype
        assert mean.dtype == invstd.dtype == np.float64 and mean.shape == invstd.shape == shape
    y_only = ops.batch_norm_train(x, return_stats=False)
    assert isinstance(y_only, np.ndarray)
    np.testing.assert_array_equal(y_only, bn[0])
    assert isinstance(ops.group_norm(x, 3), np.ndarray)  # torch's default: y alone
    assert ops.batch_norm_train(x)[0].shape == x.shape  # the default keeps the triple (compatibility)
    for fn, args in ((ops.batch_norm_train, ()), (ops.group_norm, (3,))):
        with pytest.raises(TypeError, match="^return_stats: "):
            fn(x, *args, return_stats="yes")
