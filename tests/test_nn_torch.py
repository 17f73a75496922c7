"""cnnkit.nn against torch.nn itself (skipped when torch is not installed).

The same architectures are built in both libraries (torch.nn.Conv2d / BatchNorm2d / GroupNorm /
ReLU / MaxPool2d / AvgPool2d / AdaptiveAvgPool2d / Flatten / Linear, and torchvision's
BasicBlock and the ResNeXt bottleneck written out below), the weights are copied one to one via
``zip(model.parameters(), torch_model.parameters())``, and in training mode the outputs, the
loss (CrossEntropyLoss with label smoothing, class indices and soft targets), every parameter
gradient and the input gradient must match to 1e-4 relative to the largest magnitude of each
tensor (both run in float32; see `assert_rel`). cnnkit runs in both layouts; torch always gets
the NCHW input (cnnkit's NHWC input transposed). Then 5 training steps with cnnkit.optim.Adam
against torch.optim.Adam (and SGD with momentum) must give the same weights and batch-norm
running statistics within conftest's float32 tolerance for 5 steps, and the models must agree in
eval mode afterwards.

Inputs are drawn away from ReLU kinks and max-pool ties (test_nn.smooth_input, by MARGIN) so that
float32 rounding (~1e-6 here) cannot flip a mask in one library and not the other.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnnkit import nn
from cnnkit.optim import SGD, Adam
from conftest import assert_close
from test_nn import F32, LAYOUTS, from_layout, randn, smooth_input, to_layout

torch = pytest.importorskip("torch")
T = torch.nn

RTOL = 1e-4
MARGIN = 1e-5
NOISE_FLOOR = 1e-3     # see test_training_steps_match_torch


@pytest.fixture(autouse=True)
def torch_one_thread():
    """torch at one thread: its OpenMP pool spin-waits after each op and, on a small machine,
    takes the cores from cnnkit's pool (every op then costs milliseconds in both libraries)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_rel(actual, expected, what, rtol=RTOL):
    """|actual - expected| <= rtol * max|expected| elementwise; names the worst index."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    assert scale > 0, f"{what}: the torch value is identically zero"
    err = np.abs(a - e)
    if np.all(err <= rtol * scale):
        return
    idx = np.unravel_index(np.argmax(err), e.shape)
    raise AssertionError(f"{what}: {int((err > rtol * scale).sum())} of {e.size} elements differ by more than "
                         f"{rtol} * {scale:.3g}; worst at {idx}: got {a[idx]!r}, torch {e[idx]!r}")


# ---- torch versions of the blocks ---------------------------------------------------------------

def torch_norm(kind, C):
    if kind == "batch":
        return T.BatchNorm2d(C)
    if kind == "group":
        return T.GroupNorm(math.gcd(8, C), C)
    return T.Identity()


def torch_shortcut(cin, cout, stride, norm):
    """torchvision's downsample: None, or conv1x1(stride) [+ norm] when the shape changes."""
    if stride == 1 and cin == cout:
        return None
    layers = [T.Conv2d(cin, cout, 1, stride, 0, bias=norm is None)]
    if norm:
        layers.append(torch_norm(norm, cout))
    return T.Sequential(*layers)


class TorchBasicBlock(T.Module):
    """torchvision.models.resnet.BasicBlock (with a choice of norm; convs get biases without one)."""

    def __init__(self, cin, cout, stride=1, groups=1, norm="batch"):
        super().__init__()
        bias = norm is None
        self.conv1 = T.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=bias)
        self.bn1 = torch_norm(norm, cout)
        self.relu = T.ReLU()
        self.conv2 = T.Conv2d(cout, cout, 3, 1, 1, groups=groups, bias=bias)
        self.bn2 = torch_norm(norm, cout)
        self.downsample = torch_shortcut(cin, cout, stride, norm)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchBottleneck(T.Module):
    """torchvision's Bottleneck as ResNeXt uses it: 1x1 -> grouped 3x3(stride) -> 1x1, + shortcut."""

    def __init__(self, cin, cout, width, stride=1, groups=8, norm="batch"):
        super().__init__()
        bias = norm is None
        self.conv1 = T.Conv2d(cin, width, 1, bias=bias)
        self.bn1 = torch_norm(norm, width)
        self.conv2 = T.Conv2d(width, width, 3, stride, 1, groups=groups, bias=bias)
        self.bn2 = torch_norm(norm, width)
        self.conv3 = T.Conv2d(width, cout, 1, bias=bias)
        self.bn3 = torch_norm(norm, cout)
        self.relu = T.ReLU()
        self.downsample = torch_shortcut(cin, cout, stride, norm)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# ---- model pairs --------------------------------------------------------------------------------

def build(name, layout, rng):
    """(cnnkit model, torch model, input shape (NCHW), same parameter/state names?)."""
    L = {"layout": layout}
    if name == "plain":
        ck = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng, **L), nn.BatchNorm2d(8, **L), nn.ReLU(),
            nn.MaxPool2d(2, **L), nn.Conv2d(8, 16, 3, stride=2, padding=1, rng=rng, **L), nn.ReLU(),
            nn.AvgPool2d(3, 1, 1, **L), nn.GlobalAvgPool2d(**L), nn.Flatten(**L), nn.Linear(16, 7, rng=rng))
        tm = T.Sequential(
            T.Conv2d(3, 8, 3, padding=1, bias=False), T.BatchNorm2d(8), T.ReLU(), T.MaxPool2d(2),
            T.Conv2d(8, 16, 3, stride=2, padding=1), T.ReLU(), T.AvgPool2d(3, 1, 1), T.AdaptiveAvgPool2d(1),
            T.Flatten(), T.Linear(16, 7))
        return ck, tm, (4, 3, 9, 9), True
    if name == "flatten":
        # the fused BN + ReLU of cnnkit is two torch modules: names differ, order does not
        ck = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False, rng=rng, **L), nn.BatchNorm2d(6, activation="relu", **L),
            nn.MaxPool2d(3, 2, 1, **L), nn.Flatten(**L), nn.Linear(6 * 4 * 4, 5, rng=rng))
        tm = T.Sequential(
            T.Conv2d(3, 6, 3, padding=1, bias=False), T.BatchNorm2d(6), T.ReLU(), T.MaxPool2d(3, 2, 1),
            T.Flatten(), T.Linear(6 * 4 * 4, 5))
        return ck, tm, (3, 3, 7, 7), False
    if name.startswith("resnet_"):
        norm = {"batch": "batch", "group": "group", "none": None}[name[7:]]
        ck = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=norm is None, rng=rng, **L), nn.ReLU(),
            nn.ResidualBlock(8, 8, norm=norm, rng=rng, **L),
            nn.ResidualBlock(8, 16, 2, norm=norm, rng=rng, **L),
            nn.ResidualBlock(16, 16, groups=4, norm=norm, rng=rng, **L),
            nn.GlobalAvgPool2d(**L), nn.Flatten(**L), nn.Linear(16, 5, rng=rng))
        tm = T.Sequential(
            T.Conv2d(3, 8, 3, padding=1, bias=norm is None), T.ReLU(),
            TorchBasicBlock(8, 8, norm=norm), TorchBasicBlock(8, 16, 2, norm=norm),
            TorchBasicBlock(16, 16, groups=4, norm=norm),
            T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(16, 5))
        return ck, tm, (3, 3, 8, 8), True
    if name.startswith("resnext_"):
        norm = {"batch": "batch", "group": "group", "none": None}[name[8:]]
        ck = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=norm is None, rng=rng, **L), nn.ReLU(),
            nn.BottleneckBlock(8, 16, 8, 2, groups=4, norm=norm, rng=rng, **L),
            nn.BottleneckBlock(16, 16, 8, 1, groups=2, norm=norm, rng=rng, **L),
            nn.GlobalAvgPool2d(**L), nn.Flatten(**L), nn.Linear(16, 5, rng=rng))
        tm = T.Sequential(
            T.Conv2d(3, 8, 3, padding=1, bias=norm is None), T.ReLU(),
            TorchBottleneck(8, 16, 8, 2, groups=4, norm=norm), TorchBottleneck(16, 16, 8, 1, groups=2, norm=norm),
            T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(16, 5))
        return ck, tm, (3, 3, 8, 8), True
    if name == "dws":
        ck = nn.Sequential(
            nn.DepthwiseSeparableConv2d(3, 8, 3, 1, 1, rng=rng, **L), nn.ReLU(),
            nn.DepthwiseSeparableConv2d(8, 16, 3, 2, 1, bias=False, rng=rng, **L),
            nn.BatchNorm2d(16, activation="relu", **L),
            nn.GlobalAvgPool2d(**L), nn.Linear(16, 4, rng=rng))
        tm = T.Sequential(
            T.Conv2d(3, 3, 3, 1, 1, groups=3), T.Conv2d(3, 8, 1), T.ReLU(),
            T.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), T.Conv2d(8, 16, 1, bias=False),
            T.BatchNorm2d(16), T.ReLU(), T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(16, 4))
        return ck, tm, (3, 3, 9, 9), False
    raise ValueError(name)


def copy_weights(ck, tm):
    """cnnkit's parameters into torch's, one to one (the arena is not touched)."""
    cps, tps = ck.parameters(), list(tm.parameters())
    assert len(cps) == len(tps), f"{len(cps)} cnnkit parameters, {len(tps)} torch parameters"
    with torch.no_grad():
        for i, (p, tp) in enumerate(zip(cps, tps)):
            assert p.shape == tuple(tp.shape), f"parameter {i}: {p.shape} != {tuple(tp.shape)}"
            tp.copy_(torch.from_numpy(p.copy()))


def make_pair(name, layout, seed):
    rng = np.random.default_rng(seed)
    ck, tm, shape, same_names = build(name, layout, rng)
    copy_weights(ck, tm)
    return ck, tm, shape, same_names, rng


def targets(kind, N, K, rng):
    if kind == "labels":
        return rng.integers(0, K, N)
    return rng.dirichlet(np.ones(K), size=N).astype(F32)


MODELS = ["plain", "flatten", "resnet_batch", "resnet_group", "resnet_none", "resnext_batch", "resnext_group",
          "resnext_none", "dws"]


# ---- one step: outputs, loss, gradients ---------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_match_torch(name, layout):
    ck, tm, shape, same_names, rng = make_pair(name, layout, 11)
    if same_names:
        assert [n for n, _ in ck.named_parameters()] == [n for n, _ in tm.named_parameters()]
        assert list(ck.state_dict()) == list(tm.state_dict())
    x = smooth_input(ck, lambda: to_layout(randn(rng, *shape), layout), margin=MARGIN)
    x_nchw = from_layout(x, layout)
    for kind, smoothing in (("labels", 0.1), ("soft", 0.0), ("soft", 0.2)):
        logits = ck.forward(x)
        xt = torch.tensor(x_nchw, requires_grad=True)
        lt = tm(xt)
        assert_rel(logits, lt.detach().numpy(), f"{kind}: logits")
        t = targets(kind, shape[0], logits.shape[1], rng)
        loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
        v = loss.forward(logits, t)
        tl = T.CrossEntropyLoss(label_smoothing=smoothing)(lt, torch.from_numpy(t))
        assert_rel(v, tl.item(), f"{kind}: loss")
        tm.zero_grad()
        tl.backward()
        gx = ck.backward(loss.backward(), input_grad=True)
        assert_rel(from_layout(gx, layout), xt.grad.numpy(), f"{kind}: input gradient")
        for (n, _), g, tp in zip(ck.named_parameters(), ck.gradients(), tm.parameters()):
            assert_rel(g, tp.grad.numpy(), f"{kind}: gradient of {n}")
    # batch-norm running statistics after the three training forwards (state dicts list the same
    # entries in the same order, whatever the names)
    cstate, tstate = ck.state_dict(), tm.state_dict()
    assert len(cstate) == len(tstate)
    for (k, v), tv in zip(cstate.items(), tstate.values()):
        assert v.shape == tuple(tv.shape), k
        if "running" in k:
            assert_rel(v, tv.numpy(), k)
        elif "num_batches" in k:
            assert int(v) == int(tv) == 3, k


@pytest.mark.parametrize("K", [7, 16, 17])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind,smoothing", [("labels", 0.0), ("labels", 0.3), ("soft", 0.0), ("soft", 0.3)])
def test_cross_entropy_matches_torch(K, reduction, kind, smoothing, rng):
    z = randn(rng, 5, K) * 4
    t = targets(kind, 5, K, rng)
    loss = nn.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
    v = loss.forward(z, t)
    zt = torch.tensor(z, requires_grad=True)
    tl = T.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)(zt, torch.from_numpy(t))
    assert_rel(v, tl.detach().numpy(), "loss")
    if reduction != "none":
        tl.backward()
        assert_rel(loss.backward(), zt.grad.numpy(), "gradient")


# ---- training steps -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,optim", [("plain", "adam"), ("resnet_batch", "adam"), ("resnext_batch", "adam"),
                                        ("resnet_group", "sgd"), ("plain", "sgd"), ("dws", "sgd")])
def test_training_steps_match_torch(name, optim, layout):
    """Adam divides each element's update by that element's own gradient scale (plus eps=1e-8),
    so an element whose gradient is at float32's noise floor (~1e-6 of the tensor's largest)
    moves by an amount the rounding decides, in either library. Elements whose gradient fell
    below NOISE_FLOOR of their tensor's largest at some step (and are not exactly 0 in both; a
    few percent of all) are held only to Adam's step bound (Kingma & Ba, section 2.1: |update| <=
    lr (1 - beta1) / sqrt(1 - beta2) per step, so the two differ by at most twice that times the
    steps); every other element, and every element under SGD (linear in the gradient), to
    conftest's float32 tolerance. The gradients themselves agree to RTOL at every step."""
    ck, tm, shape, _, rng = make_pair(name, layout, 5)
    lr = 1e-3 if optim == "adam" else 0.05
    if optim == "adam":
        opt = Adam(ck.parameters(), lr=lr)
        topt = torch.optim.Adam(tm.parameters(), lr=lr)
    else:
        opt = SGD(ck.parameters(), lr=lr, momentum=0.9)
        topt = torch.optim.SGD(tm.parameters(), lr=lr, momentum=0.9)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    tloss = T.CrossEntropyLoss(label_smoothing=0.1)
    steps = 5
    tiny = [np.zeros(p.shape, bool) for p in ck.parameters()]
    for step in range(steps):
        x = smooth_input(ck, lambda: to_layout(randn(rng, *shape), layout), margin=MARGIN)
        logits = ck.forward(x)
        labels = rng.integers(0, logits.shape[1], shape[0])
        v = loss.forward(logits, labels)
        ck.backward(loss.backward())
        topt.zero_grad()
        tl = tloss(tm(torch.from_numpy(from_layout(x, layout))), torch.from_numpy(labels))
        tl.backward()
        assert_rel(v, tl.item(), f"loss at step {step}", rtol=RTOL * (step + 1))
        for i, ((n, _), g, tp) in enumerate(zip(ck.named_parameters(), ck.gradients(), tm.parameters())):
            tg = tp.grad.numpy()
            assert_rel(g, tg, f"gradient of {n} at step {step}", rtol=RTOL * (step + 1))
            # (exact zeros in both, from dead ReLUs, are not noise: Adam leaves them alike)
            tiny[i] |= (np.abs(tg) < NOISE_FLOOR * np.abs(tg).max()) & ~((tg == 0) & (g == 0))
        opt.step(ck.gradients())
        topt.step()
    if optim == "sgd":
        tiny = [np.zeros_like(t) for t in tiny]
    frac = sum(t.sum() for t in tiny) / sum(t.size for t in tiny)
    assert frac < 0.05, f"{frac:.1%} of the gradients at the noise floor: the comparison says little"
    for (n, p), tp, small in zip(ck.named_parameters(), tm.parameters(), tiny):
        tp = tp.detach().numpy()
        assert_close(p[~small], tp[~small], F32, steps=steps, what=f"{n} after {steps} steps")
        bound = 2 * steps * lr * (1 - 0.9) / math.sqrt(1 - 0.999)
        assert np.all(np.abs(p[small] - tp[small]) <= bound), f"{n}: Adam's step bound"
    tvals = list(tm.state_dict().values())
    for (k, v), tv in zip(ck.state_dict().items(), tvals):
        if "running" in k:
            assert_close(v, tv.numpy(), F32, steps=steps, what=f"{k} after {steps} steps")
        elif "num_batches" in k:
            assert int(v) == int(tv) == steps, k
    # eval mode after training: the running statistics normalise in both
    ck.eval()
    tm.eval()
    x = to_layout(randn(rng, *shape), layout)
    with torch.no_grad():
        ty = tm(torch.from_numpy(from_layout(x, layout))).numpy()
    assert_rel(ck.forward(x), ty, "eval output after training")


def test_torch_state_dict_loads(rng):
    """torch's state dict (same keys) loads into the cnnkit model and gives torch's outputs."""
    for name in ("plain", "resnet_batch", "resnext_group"):
        ck, tm, shape, _ = build(name, "NHWC", np.random.default_rng(1))
        with torch.no_grad():
            for b in tm.buffers():
                if b.dtype.is_floating_point:
                    b.copy_(torch.rand(b.shape) + 0.5)
        ck.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
        ck.eval()
        tm.eval()
        x = randn(rng, *shape)
        with torch.no_grad():
            ty = tm(torch.from_numpy(x)).numpy()
        assert_rel(ck.forward(to_layout(x, "NHWC")), ty, f"{name}: eval output")


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "padding": 1, "dilation": 2},
                                    {"stride": (2, 1), "padding": (0, 1), "dilation": (3, 1)},
                                    {"padding": "same", "dilation": 2}, {"padding": "valid", "stride": 2}])
def test_conv2d_geometry_attributes_match_torch(kwargs):
    c, t = nn.Conv2d(4, 6, (3, 5), **kwargs), torch.nn.Conv2d(4, 6, (3, 5), **kwargs)
    for a in ("kernel_size", "stride", "padding", "dilation"):
        assert getattr(c, a) == getattr(t, a), a


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy_weight_and_ignore_index_match_torch(reduction, smoothing, weighted, ignore):
    rng = np.random.default_rng(7)
    N, K = 9, 5
    z = rng.standard_normal((N, K)).astype(np.float32) * 3
    y = rng.integers(0, K, N)
    if ignore:
        y[[1, 4]] = -100
    w = rng.uniform(0.2, 2.0, K) if weighted else None
    loss = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=smoothing)
    v = loss.forward(z, y)
    zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
    tl = T.CrossEntropyLoss(weight=None if w is None else torch.from_numpy(w), reduction=reduction,
                            label_smoothing=smoothing)(zt, torch.from_numpy(y))
    (tl.sum() if reduction == "none" else tl).backward()
    np.testing.assert_allclose(v, tl.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_weighted_soft_targets_match_torch(reduction):
    rng = np.random.default_rng(8)
    z = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.dirichlet(np.ones(4), 6).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 4)
    loss = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.05)
    v = loss.forward(z, t)
    zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
    tl = T.CrossEntropyLoss(weight=torch.from_numpy(w), reduction=reduction, label_smoothing=0.05)(
        zt, torch.from_numpy(t.astype(np.float64)))
    tl.backward()
    np.testing.assert_allclose(v, tl.item(), rtol=1e-6)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind,k,s,p,ceil,include", [
    ("max", 3, 2, 1, True, True), ("max", 2, 2, 0, True, True), ("max", 3, 3, 0, True, True),
    ("avg", 3, 2, 1, True, True), ("avg", 3, 2, 1, True, False), ("avg", 2, 2, 0, True, True),
    ("avg", 3, 2, 1, False, False), ("avg", 3, 3, 1, True, False), ("max", 3, 2, 1, False, True)])
def test_pool_ceil_mode_and_count_include_pad_match_torch(layout, kind, k, s, p, ceil, include):
    rng = np.random.default_rng(9)
    x = randn(rng, 2, 3, 8, 7)  # odd widths make ceil_mode add a window
    if kind == "max":
        m = nn.MaxPool2d(k, s, p, ceil_mode=ceil, layout=layout)
        t = T.MaxPool2d(k, s, p, ceil_mode=ceil)
    else:
        m = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include, layout=layout)
        t = T.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    yt = t(xt)
    y = m.forward(to_layout(x, layout))
    np.testing.assert_allclose(from_layout(y, layout), yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    g = rng.standard_normal(yt.shape)
    yt.backward(torch.from_numpy(g))
    gx = m.backward(to_layout(g.astype(np.float32), layout))
    np.testing.assert_allclose(from_layout(gx, layout), xt.grad.numpy(), rtol=1e-6, atol=1e-6)
