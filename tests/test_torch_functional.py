"""cnnkit.torch.functional against torch.nn.functional (skipped when torch is not installed).

Each function runs on random shapes (hypothesis: batch, channels, groups, stride, padding,
dilation, memory format, dtype) next to torch's own function evaluated in float64 on the same
values: outputs, every gradient and the running statistics must agree to 1e-5 of the largest
magnitude of the reference (float32; 1e-10 for float64). Gradcheck in float64 for each function;
the fallback cases (half precision, autocast, non-contiguous inputs, unsupported arguments) give
torch's results and torch's errors; a spy on cnnkit.ops checks that the arrays cnnkit receives and
writes are the tensors' own memory.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.torch import functional as F  # noqa: E402

# torch warns that "same" with an even kernel pads a copy of the input (the reference does that)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = (torch.float32, torch.float64)
SETTINGS = settings(max_examples=25, deadline=None)


def assert_rel(actual, expected, dtype, what, terms=0.0):
    """max |actual - expected| <= RTOL[dtype] * scale, the scale of the values: max |expected|,
    or ``terms`` (the largest magnitude of the terms summed into the result) where that is more."""
    assert actual is not None and expected is not None, f"{what}: {actual!r} vs {expected!r}"
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    scale = max(float(e.abs().max()) if e.numel() else 0.0, terms)
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= RTOL[dtype] * max(scale, 1e-30), (
        f"{what}: max |diff| = {err:.3g}, {err / max(scale, 1e-30):.3g} of max |ref| = {scale:.3g}")


def make(shape, dtype, channels_last=False, seed=0, requires_grad=False, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def ref(t):
    """A float64 leaf copy of ``t`` (same memory format) for the reference computation."""
    if t is None:
        return None
    r = t.detach().to(torch.float64)
    return r.requires_grad_(t.requires_grad)


def grads(*ts):
    return [None if t is None or not t.requires_grad else t.grad for t in ts]


def same_format(a, b):
    """Whether a and b are contiguous in the same memory formats (torch's output is b)."""
    formats = [torch.contiguous_format] + ([torch.channels_last] if b.dim() == 4 else [])
    return all(a.is_contiguous(memory_format=f) == b.is_contiguous(memory_format=f) for f in formats)


# ---- conv2d ----------------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    G = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = G > 1 and draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 4))
    kg = draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if s == (1, 1) and draw(st.booleans()):
        p = draw(st.sampled_from(["same", "valid"]))
    else:
        p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    pmin = (0, 0) if isinstance(p, str) else p
    H = draw(st.integers(max(1, d[0] * (kh - 1) + 1 - 2 * pmin[0]), 7))
    W = draw(st.integers(max(1, d[1] * (kw - 1) + 1 - 2 * pmin[1]), 7))
    return dict(N=draw(st.integers(1, 3)), C=cg * G, K=kg * G, G=G, k=(kh, kw), H=H, W=W,
                stride=s, padding=p, dilation=d, bias=draw(st.booleans()),
                channels_last=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
                needs=draw(st.sampled_from([(1, 1, 1), (1, 0, 0), (0, 1, 1), (1, 1, 0), (0, 0, 1)])),
                seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(conv_cases())
def test_conv2d_matches_torch(case):
    c = case
    dt, cl = c["dtype"], c["channels_last"]
    x = make((c["N"], c["C"], c["H"], c["W"]), dt, cl, c["seed"], bool(c["needs"][0]))
    w = make((c["K"], c["C"] // c["G"]) + c["k"], dt, False, c["seed"] + 1, bool(c["needs"][1]))
    b = make((c["K"],), dt, False, c["seed"] + 2, bool(c["needs"][2])) if c["bias"] else None
    args = (c["stride"], c["padding"], c["dilation"], c["G"])
    assert F.can_run(F.conv2d, x, w, b, *args), F.fallback_reason(F.conv2d, x, w, b, *args)
    y = F.conv2d(x, w, b, *args)
    xr, wr, br = ref(x), ref(w), ref(b)
    yr = TF.conv2d(xr, wr, br, *args)
    assert_rel(y, yr, dt, "output")
    assert y.dtype == dt and same_format(y, yr)
    if y.requires_grad:
        gy = make(tuple(y.shape), dt, seed=c["seed"] + 3)
        y.backward(gy)
        yr.backward(gy.double())
        # Each gradient is a sum of products that may cancel (a bias gradient of 10 terms summed
        # in float32 to 3e-4 once failed a bound of 1e-5 of |3e-4|): bounded by the magnitude of
        # its terms, the same gradients of |x|, |w| and |gy|.
        xa, wa, ba = (None if t is None else t.detach().abs().requires_grad_(t.requires_grad) for t in (xr, wr, br))
        TF.conv2d(xa, wa, ba, *args).backward(gy.double().abs())
        for name, a, e, t in zip(("grad_input", "grad_weight", "grad_bias"), grads(x, w, b), grads(xr, wr, br),
                                 grads(xa, wa, ba)):
            if e is not None:
                assert_rel(a, e, dt, name, terms=float(t.abs().max()) if t.numel() else 0.0)
                assert a.dtype == dt


def test_conv2d_unbatched_and_odd_gradients():
    x = make((3, 6, 5), torch.float32, requires_grad=True)
    w = make((4, 3, 3, 3), torch.float32, seed=1, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    assert y.shape == (4, 6, 5)
    # an expanded (stride-0) incoming gradient, and one in the other memory format
    y.sum().backward()
    xr, wr = ref(x), ref(w)
    TF.conv2d(xr, wr, padding=1).sum().backward()
    assert_rel(x.grad, xr.grad, torch.float32, "grad_input")
    assert_rel(w.grad, wr.grad, torch.float32, "grad_weight")
    x4 = make((2, 3, 6, 5), torch.float32, channels_last=True, requires_grad=True)
    y4 = F.conv2d(x4, w, padding=1)
    gy = make(tuple(y4.shape), torch.float32, seed=5)  # contiguous, y4 is channels_last
    y4.backward(gy)
    x4r = ref(x4)
    TF.conv2d(x4r, w.detach().double(), padding=1).backward(gy.double())
    assert_rel(x4.grad, x4r.grad, torch.float32, "grad_input (gradient in the other format)")


def test_conv2d_gradcheck():
    x = make((1, 4, 3, 4), torch.float64, requires_grad=True)
    w = make((4, 2, 2, 2), torch.float64, seed=1, requires_grad=True)
    b = make((4,), torch.float64, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: F.conv2d(x, w, b, (2, 1), 1, (1, 2), 2), (x, w, b))
    xc = make((1, 3, 4, 4), torch.float64, channels_last=True, requires_grad=True)
    wc = make((2, 3, 2, 3), torch.float64, seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: F.conv2d(x, w, None, 1, "same"), (xc, wc))


# ---- batch norm ------------------------------------------------------------------------------------

@st.composite
def bn_cases(draw):
    variant = draw(st.sampled_from(["plain", "relu", "add_relu"]))
    cl = draw(st.booleans())
    ndim = 4 if cl or variant != "plain" else draw(st.sampled_from([2, 3, 4, 4]))
    N = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(ndim - 2))
    count = N * int(np.prod(spatial)) if spatial else N
    if count < 4:
        N += 4  # at least 4 values per channel: with 2 the normalized output ignores the input
    training = draw(st.booleans())
    return dict(variant=variant, shape=(N, draw(st.integers(1, 5))) + spatial, channels_last=cl,
                training=training, running=(not training) or draw(st.booleans()),
                affine=draw(st.sampled_from(["both", "none", "weight", "bias"])),
                momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])),
                eps=draw(st.sampled_from([1e-5, 1e-3])), dtype=draw(st.sampled_from(DTYPES)),
                needs=draw(st.sampled_from([(1, 1, 1, 1), (1, 0, 0, 0), (0, 1, 1, 0), (0, 0, 0, 1)])),
                seed=draw(st.integers(0, 2**16)))


def _bn_call(fn_variant, x, res, rm, rv, w, b, training, momentum, eps):
    if fn_variant == "plain":
        return F.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if fn_variant == "relu":
        return F.batch_norm_relu(x, rm, rv, w, b, training, momentum, eps)
    return F.batch_norm_add_relu(x, res, rm, rv, w, b, training, momentum, eps)


def _bn_ref(fn_variant, x, res, rm, rv, w, b, training, momentum, eps):
    y = TF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if fn_variant == "add_relu":
        y = y + res
    return torch.relu(y) if fn_variant != "plain" else y


@SETTINGS
@given(bn_cases())
def test_batch_norm_matches_torch(case):
    c = case
    dt, cl, C = c["dtype"], c["channels_last"], c["shape"][1]
    nx, nw, nb, nr = (bool(v) for v in c["needs"])
    x = make(c["shape"], dt, cl, c["seed"], nx, scale=2.0, shift=0.5)
    res = make(c["shape"], dt, cl, c["seed"] + 1, nr) if c["variant"] == "add_relu" else None
    w = make((C,), dt, seed=c["seed"] + 2, requires_grad=nw) if c["affine"] in ("both", "weight") else None
    b = make((C,), dt, seed=c["seed"] + 3, requires_grad=nb) if c["affine"] in ("both", "bias") else None
    rm = make((C,), dt, seed=c["seed"] + 4) if c["running"] else None
    rv = make((C,), dt, seed=c["seed"] + 5).abs() + 0.5 if c["running"] else None
    rm_r, rv_r = (None, None) if rm is None else (rm.double().clone(), rv.double().clone())
    ptrs = None if rm is None else (rm.data_ptr(), rv.data_ptr())
    args = (c["training"], c["momentum"], c["eps"])
    y = _bn_call(c["variant"], x, res, rm, rv, w, b, *args)
    xr, resr, wr, br = ref(x), ref(res), ref(w), ref(b)
    yr = _bn_ref(c["variant"], xr, resr, rm_r, rv_r, wr, br, *args)
    # y sums x's normalized term, the bias and the residual: a ReLU can cut a result far below them
    with torch.no_grad():
        terms = _bn_ref("plain", xr, None, None if rm_r is None else rm.double(),
                        None if rv_r is None else rv.double(), wr, None, c["training"], 0.0, c["eps"])
        terms = float(terms.abs().max()) + sum(float(t.abs().max()) for t in (br, resr) if t is not None)
    assert_rel(y, yr, dt, "output", terms)
    assert same_format(y, yr) and y.dtype == dt
    if rm is not None:  # updated in place when training, untouched otherwise
        assert (rm.data_ptr(), rv.data_ptr()) == ptrs
        assert_rel(rm, rm_r, dt, "running_mean")
        assert_rel(rv, rv_r, dt, "running_var")
    if y.requires_grad:
        gy = make(c["shape"], dt, seed=c["seed"] + 6)
        y.backward(gy)
        yr.backward(gy.double())
        for name, a, e in zip(("grad_input", "grad_residual", "grad_weight", "grad_bias"),
                              grads(x, res, w, b), grads(xr, resr, wr, br)):
            if e is not None:
                assert_rel(a, e, dt, name)
            else:
                assert a is None, name


@pytest.mark.parametrize("variant", ["plain", "relu", "add_relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_gradcheck(variant, training, channels_last):
    dt = torch.float64
    x = make((3, 4, 3, 2), dt, channels_last, 0, True, scale=2.0)
    res = make((3, 4, 3, 2), dt, channels_last, 1, True)
    w = make((4,), dt, seed=2, requires_grad=True)
    b = make((4,), dt, seed=3, requires_grad=True)
    rm, rv = make((4,), dt, seed=4), make((4,), dt, seed=5).abs() + 0.5

    def f(x, res, w, b):
        # fresh running statistics on every call: gradcheck evaluates f many times
        return _bn_call(variant, x, res, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

    assert torch.autograd.gradcheck(f, (x, res, w, b))


def test_batch_norm_bias_only_and_no_affine_gradients():
    x = make((4, 3, 2, 2), torch.float64, requires_grad=True)
    b = make((3,), torch.float64, seed=1, requires_grad=True)
    for training in (True, False):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x, b: F.batch_norm_relu(x, rm, rv, None, b, training), (x, b))
        assert torch.autograd.gradcheck(lambda x: F.batch_norm(x, rm, rv, None, None, training), (x,))


# ---- group norm ------------------------------------------------------------------------------------

@st.composite
def gn_cases(draw):
    G = draw(st.integers(1, 4))
    cl = draw(st.booleans())
    ndim = 4 if cl else draw(st.sampled_from([2, 3, 4, 4]))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(ndim - 2))
    cg = draw(st.integers(1, 3))
    if cg * int(np.prod(spatial)) < 4:
        cg += 4  # at least 4 values per group (see bn_cases)
    return dict(shape=(draw(st.integers(1, 3)), G * cg) + spatial, G=G, channels_last=cl,
                affine=draw(st.sampled_from(["both", "none", "weight", "bias"])),
                eps=draw(st.sampled_from([1e-5, 1e-2])), dtype=draw(st.sampled_from(DTYPES)),
                needs=draw(st.sampled_from([(1, 1, 1), (1, 0, 0), (0, 1, 1)])),
                seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(gn_cases())
def test_group_norm_matches_torch(case):
    c = case
    dt, C = c["dtype"], c["shape"][1]
    nx, nw, nb = (bool(v) for v in c["needs"])
    x = make(c["shape"], dt, c["channels_last"], c["seed"], nx, scale=3.0, shift=-1.0)
    w = make((C,), dt, seed=c["seed"] + 1, requires_grad=nw) if c["affine"] in ("both", "weight") else None
    b = make((C,), dt, seed=c["seed"] + 2, requires_grad=nb) if c["affine"] in ("both", "bias") else None
    assert F.can_run(F.group_norm, x, c["G"], w, b, c["eps"])
    y = F.group_norm(x, c["G"], w, b, c["eps"])
    xr, wr, br = ref(x), ref(w), ref(b)
    # torch's own backward fails with a bias but no weight ("tensor does not have a device"), and
    # crashes (segmentation fault, torch 2.13) for a channels_last input that needs no gradient:
    # a weight of ones is the same function, and the reference's input always takes a gradient
    w1 = wr if wr is not None or br is None else torch.ones(C, dtype=torch.float64)
    xr.requires_grad_(True)
    yr = TF.group_norm(xr, c["G"], w1, br, c["eps"])
    assert_rel(y, yr, dt, "output")
    assert same_format(y, yr)
    if y.requires_grad:
        gy = make(c["shape"], dt, seed=c["seed"] + 3)
        y.backward(gy)
        yr.backward(gy.double())
        for name, t, a, e in zip(("grad_input", "grad_weight", "grad_bias"), (x, w, b),
                                 grads(x, w, b), grads(xr, wr, br)):
            if t is not None and t.requires_grad:
                assert_rel(a, e, dt, name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_gradcheck(channels_last):
    x = make((2, 6, 3, 2), torch.float64, channels_last, 0, True, scale=2.0)
    w = make((6,), torch.float64, seed=1, requires_grad=True)
    b = make((6,), torch.float64, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: F.group_norm(x, 3, w, b), (x, w, b))


# ---- inference without a graph -------------------------------------------------------------------

def test_no_grad_and_inference_mode():
    x = make((2, 3, 5, 5), torch.float32, requires_grad=True)
    w = make((4, 3, 3, 3), torch.float32, seed=1, requires_grad=True)
    rm, rv = torch.zeros(4), torch.ones(4)
    expected = TF.batch_norm(TF.conv2d(x, w, padding=1), rm, rv).detach()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            y = F.batch_norm(F.conv2d(x, w, padding=1), rm, rv)
        assert y.grad_fn is None and not y.requires_grad
        assert_rel(y, expected, torch.float32, f"output under {ctx.__name__}")


# ---- fallback --------------------------------------------------------------------------------------

def _fallback_cases():
    x = make((2, 4, 6, 6), torch.float32, seed=0)
    w = make((4, 4, 3, 3), torch.float32, seed=1)
    rm, rv = torch.zeros(4), torch.ones(4)
    return [
        ("half", F.conv2d, TF.conv2d, (x.half(), w.half()), {"padding": 1}),
        ("bfloat16", F.group_norm, TF.group_norm, (x.bfloat16(), 2), {}),
        ("non-contiguous", F.conv2d, TF.conv2d, (x[:, :, ::2, 1:], w), {}),
        ("non-contiguous running_mean", F.batch_norm, TF.batch_norm,
         (x, torch.zeros(8)[::2], rv, None, None, True), {}),
        ("momentum outside [0, 1]", F.batch_norm, TF.batch_norm, (x, rm.clone(), rv.clone()),
         {"training": True, "momentum": 1.5}),
        ("half batch norm", F.batch_norm_relu, lambda *a, **k: torch.relu(TF.batch_norm(*a, **k)),
         (x.half(), rm.half(), rv.half(), None, None, False), {}),
    ]


@pytest.mark.parametrize("i", range(len(_fallback_cases())), ids=[c[0] for c in _fallback_cases()])
def test_fallback_runs_torch(i):
    name, fn, torch_fn, args, kwargs = _fallback_cases()[i]
    assert not F.can_run(fn, *args, **kwargs)
    assert F.fallback_reason(fn, *args, **kwargs)
    args2 = tuple(torch.empty_strided(a.shape, a.stride(), dtype=a.dtype).copy_(a)
                  if isinstance(a, torch.Tensor) else a for a in args)  # same strides
    y = fn(*args, **kwargs)
    expected = torch_fn(*args2, **kwargs)
    assert y.dtype == expected.dtype
    assert torch.equal(y, expected), name
    for a, a2 in zip(args, args2):  # running statistics updated as torch updates them
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, a2)


def test_batch_norm_negative_running_var_as_torch():
    x = make((2, 3, 4, 4), torch.float32, requires_grad=True)
    rm, rv = torch.zeros(3), torch.tensor([1.0, -1.0, float("nan")])
    y = F.batch_norm_relu(x, rm, rv, training=False)
    expected = torch.relu(TF.batch_norm(x, rm, rv, training=False))
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y[:, 0], expected[:, 0])


def test_autocast_falls_back():
    x = make((2, 3, 6, 6), torch.float32, requires_grad=True)
    w = make((4, 3, 3, 3), torch.float32, seed=1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not F.can_run(F.conv2d, x, w)
        assert "autocast" in F.fallback_reason(F.conv2d, x, w)
        y = F.conv2d(x, w, padding=1)
        expected = TF.conv2d(x, w, padding=1)
    assert y.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(y, expected)
    y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32


def test_tensor_subclass_and_unknown_function():
    class Sub(torch.Tensor):
        pass

    x = make((1, 2, 4, 4), torch.float32).as_subclass(Sub)
    w = make((3, 2, 3, 3), torch.float32, seed=1)
    assert "subclass" in F.fallback_reason(F.conv2d, x, w)
    assert torch.equal(F.conv2d(x, w), TF.conv2d(x, w))
    with pytest.raises(ValueError, match="fn:"):
        F.can_run(TF.conv2d, x, w)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_vmap_and_tracing_fall_back():
    x = make((3, 2, 2, 5, 5), torch.float64)
    w = make((4, 2, 3, 3), torch.float64, seed=1)
    y = torch.vmap(lambda xi: F.conv2d(xi, w, padding=1))(x)
    assert torch.allclose(y, torch.stack([TF.conv2d(xi, w, padding=1) for xi in x]), atol=1e-12)
    traced = torch.jit.trace(lambda xi: F.conv2d(xi, w, stride=2), (x[0],))
    assert torch.allclose(traced(x[1]), TF.conv2d(x[1], w, stride=2), atol=1e-12)


def _outcome(fn, *args, **kwargs):
    """("raises", exception type) or ("returns", device, shape, dtype) of a call."""
    try:
        y = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any error torch raises is the expected one
        return ("raises", type(exc))
    return ("returns", y.device, tuple(y.shape), y.dtype)


@pytest.mark.parametrize("case", ["conv dtype", "conv device", "conv channels", "conv same stride",
                                  "conv bad padding", "bn dtype", "bn device", "bn eval without stats",
                                  "bn one value", "gn groups", "gn device"])
def test_bad_input_behaves_as_torch(case):
    """Mismatched dtypes and devices and bad arguments: torch's own error (or, where torch
    accepts the call, such as a weight on the meta device, torch's result)."""
    x = make((2, 4, 5, 5), torch.float32)
    w = make((3, 4, 3, 3), torch.float32, seed=1)
    rm, rv = torch.zeros(4), torch.ones(4)
    fn, tfn, args, kwargs = {
        "conv dtype": (F.conv2d, TF.conv2d, (x, w.double()), {}),
        "conv device": (F.conv2d, TF.conv2d, (x.to("meta"), w), {}),
        "conv channels": (F.conv2d, TF.conv2d, (x, make((3, 5, 3, 3), torch.float32)), {}),
        "conv same stride": (F.conv2d, TF.conv2d, (x, w), {"padding": "same", "stride": 2}),
        "conv bad padding": (F.conv2d, TF.conv2d, (x, w), {"padding": "full"}),
        "bn dtype": (F.batch_norm, TF.batch_norm, (x, rm.double(), rv.double()), {}),
        "bn device": (F.batch_norm, TF.batch_norm, (x, rm.to("meta"), rv), {}),
        "bn eval without stats": (F.batch_norm, TF.batch_norm, (x, None, None), {"training": False}),
        "bn one value": (F.batch_norm, TF.batch_norm, (make((1, 4), torch.float32), None, None),
                         {"training": True}),
        "gn groups": (F.group_norm, TF.group_norm, (x, 3), {}),
        "gn device": (F.group_norm, TF.group_norm, (x, 2, torch.ones(4, device="meta")), {}),
    }[case]
    expected = _outcome(tfn, *args, **kwargs)
    assert not F.can_run(fn, *args, **kwargs)
    assert _outcome(fn, *args, **kwargs) == expected
    if case in ("conv dtype", "conv channels", "bn dtype", "bn one value", "gn groups"):
        assert expected[0] == "raises"


# ---- zero copy -------------------------------------------------------------------------------------

def _addr(a):
    return a.__array_interface__["data"][0]


def _spy(monkeypatch, name):
    calls = []
    real = getattr(cnnkit.ops, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(cnnkit.ops, name, spy)
    return calls


def _spy_core(monkeypatch, name):
    """Calls of the compiled pass cnnkit._core.<name> (what cnnkit.torch hands the kernels)."""
    calls = []
    real = getattr(cnnkit._core, name)

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(cnnkit._core, name, spy)
    return calls


@pytest.mark.parametrize("channels_last", [False, True])
def test_zero_copy_conv(monkeypatch, channels_last):
    fwd = _spy_core(monkeypatch, "conv_forward")
    bwd = _spy_core(monkeypatch, "conv_backward")  # (both gradients: one call)
    x = make((2, 3, 6, 6), torch.float32, channels_last, requires_grad=True)
    w = make((5, 3, 3, 3), torch.float32, seed=1, requires_grad=True)
    b = make((5,), torch.float32, seed=2, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1)
    (xa, wa, ba, out, geom), = fwd
    assert geom.nhwc == channels_last
    assert _addr(xa) == x.data_ptr() and _addr(wa) == w.data_ptr()
    assert _addr(ba) == b.data_ptr() and _addr(out) == y.data_ptr()
    gy = torch.randn_like(y)  # same memory format as y
    y.backward(gy)
    (dy, xa, wa, gi, gw, gb, _), = bwd
    assert _addr(dy) == gy.data_ptr() and _addr(xa) == x.data_ptr() and _addr(wa) == w.data_ptr()
    assert [_addr(o) for o in (gi, gw, gb)] == [x.grad.data_ptr(), w.grad.data_ptr(), b.grad.data_ptr()]


@pytest.mark.parametrize("channels_last", [False, True])
def test_zero_copy_batch_norm(monkeypatch, channels_last):
    fwd, running = _spy_core(monkeypatch, "norm_apply"), _spy_core(monkeypatch, "norm_update_running")
    red, bwd = _spy_core(monkeypatch, "norm_backward_reduce"), _spy_core(monkeypatch, "norm_backward_apply")
    x = make((4, 3, 5, 5), torch.float32, channels_last, requires_grad=True)
    res = make((4, 3, 5, 5), torch.float32, channels_last, seed=1, requires_grad=True)
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = F.batch_norm_add_relu(x, res, rm, rv, w, b, True)
    (xa, out, ra, *_, wa, ba, relu), = fwd
    assert relu and [_addr(a) for a in (xa, out, ra, wa, ba)] == [
        t.data_ptr() for t in (x, y, res, w, b)]
    (rma, rva, *_), = running
    assert (_addr(rma), _addr(rva)) == (rm.data_ptr(), rv.data_ptr())
    gy = torch.randn_like(y)
    y.backward(gy)
    # the reduction reads gy and y's mask and writes the masked gradient into res.grad; the apply
    # pass reads it there (no mask) and writes x.grad
    (ga, xa, mask, *rest), = red
    assert [_addr(a) for a in (ga, xa, mask, rest[-1])] == [t.data_ptr() for t in (gy, x, y, res.grad)]
    (ga, xa, mask, gi, gr, *_), = bwd
    assert mask is None and gr is None
    assert [_addr(a) for a in (ga, xa, gi)] == [t.data_ptr() for t in (res.grad, x, x.grad)]


def test_zero_copy_group_norm(monkeypatch):
    fwd, bwd = _spy(monkeypatch, "group_norm"), _spy(monkeypatch, "group_norm_backward")
    x = make((2, 4, 3, 3), torch.float64, True, requires_grad=True)
    y = F.group_norm(x, 2)
    (args, kwargs), = fwd
    assert _addr(args[0]) == x.data_ptr() and _addr(kwargs["out"]) == y.data_ptr()
    y.backward(torch.randn_like(y))
    (args, kwargs), = bwd
    assert _addr(args[1]) == x.data_ptr() and _addr(kwargs["out"]) == x.grad.data_ptr()


def test_cached_plans_follow_shapes_layouts_and_dtypes():
    """conv2d and batch_norm cache their checks per call signature (shapes, strides,
    arguments) and then call the compiled passes directly: calls that alternate between shapes,
    memory formats, dtypes and hyperparameters each give torch's float64 result (outputs, running
    statistics and gradients), and a signature cnnkit rejects still falls back."""
    cases = [((2, 3, 8, 8), False, torch.float64, 0.1), ((1, 3, 5, 7), False, torch.float64, 0.1),
             ((2, 3, 8, 8), True, torch.float64, 0.5), ((2, 3, 8, 8), False, torch.float32, 0.1),
             ((1, 3, 5, 7), True, torch.float32, 0.1), ((2, 3, 8, 8), False, torch.float64, 0.1)]
    for i, (shape, cl, dt, momentum) in enumerate(cases):
        x = make(shape, dt, cl, seed=i, requires_grad=True)
        w = make((4, 3, 3, 3), dt, seed=10 + i, requires_grad=True)
        bw, bb = make((4,), dt, seed=20 + i, requires_grad=True), make((4,), dt, seed=30 + i, requires_grad=True)
        rm, rv = torch.zeros(4, dtype=dt), torch.ones(4, dtype=dt)
        rrm, rrv = rm.double(), rv.double()
        xr, wr, bwr, bbr = ref(x), ref(w), ref(bw), ref(bb)
        y = F.batch_norm_relu(F.conv2d(x, w, None, 1, 1), rm, rv, bw, bb, True, momentum)
        yr = torch.relu(TF.batch_norm(TF.conv2d(xr, wr, None, 1, 1), rrm, rrv, bwr, bbr, True, momentum))
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        assert_rel(y, yr, dt, f"case {i}: output")
        assert_rel(rm, rrm, dt, f"case {i}: running_mean")
        assert_rel(rv, rrv, dt, f"case {i}: running_var")
        gy = make(y.shape, dt, seed=40 + i)
        y.backward(gy)
        yr.backward(gy.double())
        for name, a, b in (("x", x, xr), ("w", w, wr), ("bn weight", bw, bwr), ("bn bias", bb, bbr)):
            assert_rel(a.grad, b.grad, dt, f"case {i}: {name}.grad")
    # the same shapes with an argument cnnkit rejects: torch's result through the fallback
    x = make((2, 3, 8, 8), torch.float64)
    assert F.fallback_reason(F.batch_norm, x, torch.zeros(3, dtype=torch.float64),
                             torch.ones(3, dtype=torch.float64), training=True, momentum=2.0)
    assert F.fallback_reason(F.batch_norm, x, torch.zeros(3, dtype=torch.float64),
                             torch.ones(3, dtype=torch.float64), training=True) is None
