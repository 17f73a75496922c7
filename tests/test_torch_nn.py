"""cnnkit.torch.nn modules against torch.nn's own (skipped when torch is not installed).

Each module runs next to the torch module with the same state, evaluated in float64: outputs,
gradients, running statistics and num_batches_tracked agree to 1e-5 of the largest magnitude of
the reference (float32; 1e-10 for float64) over several training and evaluation steps.
``from_torch`` shares the Parameter and buffer objects; state dicts load both ways (and
checkpoints through torch.save); the fallback cases (half precision, autocast, padding modes
other than zeros, non-contiguous inputs) equal torch's own forward.
"""
from __future__ import annotations

import copy
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from cnnkit.torch import functional as F  # noqa: E402
from cnnkit.torch import nn as cnn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = (torch.float32, torch.float64)
CL = torch.channels_last


def assert_rel(actual, expected, dtype, what):
    """max |actual - expected| <= RTOL[dtype] * max |expected|."""
    assert actual is not None and expected is not None, f"{what}: {actual!r} vs {expected!r}"
    assert tuple(actual.shape) == tuple(expected.shape), what
    a, e = actual.detach().double(), expected.detach().double()
    scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= RTOL[dtype] * max(scale, 1e-30), f"{what}: {err:.3g} of max |ref| = {scale:.3g}"


def make(shape, dtype, channels_last=False, seed=0, requires_grad=False):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = (t * 1.5 + 0.3).to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=CL)
    return t.requires_grad_(requires_grad)


@pytest.fixture
def ops_calls(monkeypatch):
    """Names of the cnnkit.ops functions whose work ran during the test (the modules ran
    cnnkit): the ops themselves, or the compiled passes and ops.norm's cores that
    cnnkit.torch.functional calls directly on its cached plans."""
    import cnnkit._core
    import cnnkit.ops
    import cnnkit.torch.functional as tf
    calls = []

    def spy_on(module, attr, name):
        def spy(*args, _real=getattr(module, attr), **kwargs):
            calls.append(name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, attr, spy)

    for name in ("batch_norm_infer", "batch_norm_backward", "group_norm", "group_norm_backward"):
        spy_on(cnnkit.ops, name, name)
    for attr, name in (("conv_forward", "conv2d"), ("conv_backward", "conv2d_backward"),
                       ("conv_backward_input", "conv2d_backward"), ("conv_backward_weight", "conv2d_backward")):
        spy_on(cnnkit._core, attr, name)
    for attr, name in (("_bn_train_core", "batch_norm_train"), ("_bn_infer_core", "batch_norm_infer"),
                       ("_bn_backward_chunk", "batch_norm_backward")):
        spy_on(tf, attr, name)
    return calls


def twin(x):
    """x's values in float64, a leaf of its own."""
    return x.detach().double().requires_grad_(x.requires_grad)


def randomize(module, seed):
    """Random parameters and running statistics (not the constructor's 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype.is_floating_point:
                v = torch.randn(t.shape, generator=g, dtype=torch.float64)
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)
    return module


def compare_grads(mod, ref_mod, dtype):
    ref_params = dict(ref_mod.named_parameters())
    for name, p in mod.named_parameters():
        if p.grad is not None or ref_params[name].grad is not None:
            assert_rel(p.grad, ref_params[name].grad, dtype, f"{name}.grad")


def compare_state(mod, ref_mod, dtype):
    ref_state = ref_mod.state_dict()
    state = mod.state_dict()
    assert list(state) == list(ref_state)
    for k, v in state.items():
        if v.dtype.is_floating_point:
            assert_rel(v, ref_state[k], dtype, k)
        else:
            assert torch.equal(v, ref_state[k]), k


# ---- Conv2d ----------------------------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    G = draw(st.sampled_from([1, 2]))
    s = draw(st.sampled_from([1, 2, (1, 2)]))
    paddings = ["same", "valid", 0, 1, (2, 1)] if s == 1 else [0, 1, (0, 2)]
    padding = draw(st.sampled_from(paddings))
    return dict(cin=G * draw(st.integers(1, 3)), cout=G * draw(st.integers(1, 3)), groups=G,
                k=draw(st.sampled_from([1, 3, (2, 3)])), stride=s, padding=padding,
                dilation=draw(st.sampled_from([1, 2])), bias=draw(st.booleans()),
                channels_last=draw(st.booleans()), cl_weight=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 1000)))


@settings(max_examples=20, deadline=None)
@given(conv_configs())
def test_conv2d_module_matches_torch(c):
    calls = []  # hypothesis runs the body many times: no function-scoped fixture
    dt = c["dtype"]
    kw = {k: c[k] for k in ("stride", "padding", "dilation", "groups", "bias")}
    tm = randomize(torch.nn.Conv2d(c["cin"], c["cout"], c["k"], **kw, dtype=dt), c["seed"])
    m = cnn.Conv2d(c["cin"], c["cout"], c["k"], **kw, dtype=dt)
    m.load_state_dict(tm.state_dict())
    if c["cl_weight"]:  # model.to(memory_format=channels_last) makes the weight channels_last too
        m = m.to(memory_format=CL)
    ref = copy.deepcopy(tm).double()
    x = make((2, c["cin"], 7, 6), dt, c["channels_last"], c["seed"], True)
    xr = twin(x)
    y, yr = m(x), ref(xr)
    assert_rel(y, yr, dt, "output")
    g = make(tuple(y.shape), dt, seed=c["seed"] + 1)
    y.backward(g)
    yr.backward(g.double())
    assert_rel(x.grad, xr.grad, dt, "input.grad")
    compare_grads(m, ref, dt)
    calls.append(F.can_run(F.conv2d, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups))
    assert calls == [True]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_modes_run_torch(mode):
    tm = randomize(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode), 0)
    m = cnn.Conv2d.from_torch(copy.deepcopy(tm))
    x = make((2, 3, 6, 5), torch.float32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = m(x), tm(x2)
    assert torch.equal(y, y2)
    y.sum().backward()
    y2.sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(m.weight.grad, tm.weight.grad)


# ---- BatchNorm2d -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("config", [dict(), dict(momentum=None), dict(affine=False),
                                    dict(track_running_stats=False), dict(momentum=0.5, eps=1e-3)],
                         ids=["default", "cumulative", "no-affine", "untracked", "momentum-eps"])
@pytest.mark.parametrize("cls", ["BatchNorm2d", "BatchNorm2dReLU", "BatchNorm2dAddReLU"])
def test_batch_norm_modules_match_torch(cls, config, channels_last, dtype, ops_calls):
    """Training steps, an eval step and training again, as torch's module: outputs, gradients,
    running statistics and num_batches_tracked."""
    C = 3
    tm = randomize(torch.nn.BatchNorm2d(C, dtype=dtype, **config), 7)
    m = getattr(cnn, cls)(C, dtype=dtype, **config)
    m.load_state_dict(tm.state_dict())
    ref = copy.deepcopy(tm).double()

    def ref_forward(x, r):
        y = ref(x)
        if cls == "BatchNorm2dAddReLU":
            y = y + r
        return torch.relu(y) if cls != "BatchNorm2d" else y

    for step, training in enumerate([True, True, False, True]):
        m.train(training)
        ref.train(training)
        x = make((4, C, 3, 2), dtype, channels_last, step, True)
        r = make((4, C, 3, 2), dtype, channels_last, step + 10, True)
        xr, rr = twin(x), twin(r)
        y = m(x, r) if cls == "BatchNorm2dAddReLU" else m(x)
        yr = ref_forward(xr, rr)
        assert_rel(y, yr, dtype, f"step {step}: output")
        assert y.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
        g = make(tuple(y.shape), dtype, seed=step + 20)
        y.backward(g)
        yr.backward(g.double())
        assert_rel(x.grad, xr.grad, dtype, f"step {step}: input.grad")
        if cls == "BatchNorm2dAddReLU":
            assert_rel(r.grad, rr.grad, dtype, f"step {step}: residual.grad")
        compare_grads(m, ref, dtype)
        compare_state(m, ref, dtype)
        m.zero_grad()
        ref.zero_grad()
    assert {"batch_norm_train", "batch_norm_backward"} <= set(ops_calls)
    if config.get("track_running_stats", True):
        assert "batch_norm_infer" in ops_calls


def test_batch_norm_forward_relu_methods():
    tm = randomize(torch.nn.BatchNorm2d(4), 1)
    m = cnn.BatchNorm2d.from_torch(copy.deepcopy(tm))
    x, r = make((3, 4, 2, 2), torch.float32), make((3, 4, 2, 2), torch.float32, seed=1)
    ref = copy.deepcopy(tm)
    assert_rel(m.forward_relu(x), torch.relu(ref(x)), torch.float32, "forward_relu")
    assert_rel(m.forward_add_relu(x, r), torch.relu(ref(x) + r), torch.float32, "forward_add_relu")
    assert int(m.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_batch_norm_checks_the_input_as_torch():
    m = cnn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="expected 4D input"):
        m(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 3, 1, 1))


# ---- GroupNorm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups,channels,affine", [(1, 3, True), (2, 6, True), (6, 6, False), (3, 6, True)])
def test_group_norm_module_matches_torch(groups, channels, affine, channels_last, dtype, ops_calls):
    tm = randomize(torch.nn.GroupNorm(groups, channels, affine=affine, dtype=dtype), 3)
    m = cnn.GroupNorm(groups, channels, affine=affine, dtype=dtype)
    m.load_state_dict(tm.state_dict())
    ref = copy.deepcopy(tm).double()
    x = make((2, channels, 3, 4), dtype, channels_last, 0, True)
    xr = twin(x)
    y, yr = m(x), ref(xr)
    assert_rel(y, yr, dtype, "output")
    g = make(tuple(y.shape), dtype, seed=1)
    y.backward(g)
    yr.backward(g.double())
    assert_rel(x.grad, xr.grad, dtype, "input.grad")
    compare_grads(m, ref, dtype)
    assert ops_calls == ["group_norm", "group_norm_backward"]


class _Block(torch.nn.Module):
    """torchvision's BasicBlock pattern: in-place ReLU after a batch norm, ``out += identity``."""

    def __init__(self, conv, bn, fused=None):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv(4, 4, 3, padding=1, bias=False), bn(4), \
            conv(4, 4, 3, padding=1, bias=False), bn(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.fused = fused

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.fused:
            return self.bn2.forward_add_relu(out, x)
        out = self.bn2(out)
        out += x
        return self.relu(out)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_block_with_in_place_ops(fused, channels_last, ops_calls):
    ref = randomize(_Block(torch.nn.Conv2d, torch.nn.BatchNorm2d), 0).double()
    m = _Block(cnn.Conv2d, cnn.BatchNorm2d, fused)
    m.load_state_dict(ref.state_dict())
    fmt = CL if channels_last else torch.contiguous_format
    m, ref = m.to(memory_format=fmt), ref.to(memory_format=fmt)
    for training in (True, False):
        m.train(training)
        ref.train(training)
        x = make((3, 4, 5, 5), torch.float32, channels_last, int(training), True)
        xr = twin(x)
        y, yr = m(x), ref(xr)
        assert_rel(y, yr, torch.float32, "output")
        y.square().sum().backward()
        yr.square().sum().backward()
        assert_rel(x.grad, xr.grad, torch.float32, "input.grad")
        compare_grads(m, ref, torch.float32)
        compare_state(m, ref, torch.float32)
        m.zero_grad()
        ref.zero_grad()
    assert {"conv2d", "conv2d_backward", "batch_norm_train", "batch_norm_infer",
            "batch_norm_backward"} <= set(ops_calls)


# ---- from_torch and state dicts --------------------------------------------------------------------

def _pairs():
    return [
        (cnn.Conv2d, lambda: torch.nn.Conv2d(3, 4, 3, padding=1)),
        (cnn.Conv2d, lambda: torch.nn.Conv2d(4, 4, 3, groups=2, bias=False)),
        (cnn.BatchNorm2d, lambda: torch.nn.BatchNorm2d(4)),
        (cnn.BatchNorm2d, lambda: torch.nn.BatchNorm2d(4, affine=False, track_running_stats=False)),
        (cnn.BatchNorm2dReLU, lambda: torch.nn.BatchNorm2d(4, momentum=None)),
        (cnn.BatchNorm2dAddReLU, lambda: torch.nn.BatchNorm2d(4)),
        (cnn.GroupNorm, lambda: torch.nn.GroupNorm(2, 4)),
    ]


@pytest.mark.parametrize("i", range(len(_pairs())))
def test_from_torch_shares_parameters_and_buffers(i):
    cls, build = _pairs()[i]
    tm = randomize(build(), i)
    tm.eval()
    calls = []
    tm.register_forward_hook(lambda mod, args, out: calls.append(mod))
    m = cls.from_torch(tm)
    assert type(m) is cls and isinstance(m, type(tm))
    assert not m.training
    for (n1, p1), (n2, p2) in zip(m.named_parameters(), tm.named_parameters()):
        assert n1 == n2 and p1 is p2
    for (n1, b1), (n2, b2) in zip(m.named_buffers(), tm.named_buffers()):
        assert n1 == n2 and b1 is b2
    assert list(m.state_dict()) == list(tm.state_dict())
    assert repr(m).split("(", 1)[1] == repr(tm).split("(", 1)[1]
    # a hook registered on the torch module runs for the new one; new ones stay separate
    m.register_forward_hook(lambda mod, args, out: None)
    assert len(m._forward_hooks) == 2 and len(tm._forward_hooks) == 1
    x = make((2, 3 if isinstance(tm, torch.nn.Conv2d) and tm.in_channels == 3 else 4, 5, 5), torch.float32)
    y = m(x, x) if cls is cnn.BatchNorm2dAddReLU else m(x)
    assert calls == [m]
    # an update of the torch module's parameters (an optimizer's step) changes the new module
    params = list(tm.parameters())
    if params:
        before = y.detach().clone()
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        y2 = m(x, x) if cls is cnn.BatchNorm2dAddReLU else m(x)
        assert not torch.equal(before, y2)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="module: expected a torch.nn.modules.conv.Conv2d"):
        cnn.Conv2d.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="module:"):
        cnn.BatchNorm2d.from_torch(torch.nn.GroupNorm(1, 2))
    with pytest.raises(TypeError, match="module:"):
        cnn.GroupNorm.from_torch(torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="not initialized"):
        cnn.Conv2d.from_torch(torch.nn.LazyConv2d(4, 3))


@pytest.mark.parametrize("i", range(len(_pairs())))
def test_state_dict_round_trip_both_ways(i):
    cls, build = _pairs()[i]
    tm = randomize(build(), 10 + i)
    m = randomize(cls.from_torch(build()), 20 + i)
    # torch -> cnnkit, through a checkpoint file
    buf = io.BytesIO()
    torch.save(tm.state_dict(), buf)
    buf.seek(0)
    m.load_state_dict(torch.load(buf), strict=True)
    for k, v in tm.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    # cnnkit -> torch
    m2 = randomize(cls.from_torch(build()), 30 + i)
    fresh = build()
    fresh.load_state_dict(m2.state_dict(), strict=True)
    for k, v in m2.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_modules_pickle_and_deepcopy():
    for cls, build in _pairs():
        m = randomize(cls.from_torch(build()), 1)
        for m2 in (copy.deepcopy(m), _reload(m)):
            assert type(m2) is cls
            for k, v in m.state_dict().items():
                assert torch.equal(m2.state_dict()[k], v)


def _reload(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# ---- fallback --------------------------------------------------------------------------------------

def test_half_precision_and_autocast_fall_back():
    conv = randomize(torch.nn.Conv2d(3, 4, 3, padding=1), 0)
    bn = randomize(torch.nn.BatchNorm2d(4), 1).eval()
    gn = randomize(torch.nn.GroupNorm(2, 4), 2)
    tmods = [conv, bn, gn]
    mods = [cnn.Conv2d.from_torch(copy.deepcopy(conv)), cnn.BatchNorm2d.from_torch(copy.deepcopy(bn)),
            cnn.GroupNorm.from_torch(copy.deepcopy(gn))]
    x = make((2, 3, 6, 6), torch.float32)
    # half precision: torch's own forward
    h, th = x.half(), x.half()
    for m, tm in zip(mods, tmods):
        m2, tm2 = copy.deepcopy(m).half(), copy.deepcopy(tm).half()
        h, th = m2(h), tm2(th)
        assert h.dtype == torch.float16 and torch.equal(h, th)
    # autocast: torch's own forward (bfloat16 convolution)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ty = mods[0](x), tmods[0](x)
    assert y.dtype == ty.dtype == torch.bfloat16 and torch.equal(y, ty)


def test_non_contiguous_input_falls_back():
    tm = randomize(torch.nn.Conv2d(3, 4, 3), 0)
    m = cnn.Conv2d.from_torch(copy.deepcopy(tm))
    x = make((2, 3, 9, 8), torch.float32)[:, :, ::2, 1:]
    assert not F.can_run(F.conv2d, x, m.weight, m.bias)
    assert torch.equal(m(x), tm(x))
    bn = cnn.BatchNorm2d(3).eval()
    tbn = torch.nn.BatchNorm2d(3).eval()
    assert torch.equal(bn(x), tbn(x))
