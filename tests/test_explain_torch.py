"""cnnkit.explain against captum and pytorch-grad-cam on torch twins (skipped when torch, captum
or pytorch-grad-cam is missing).

Two small networks are built in cnnkit and in torch with the weights copied one to one (as in
test_nn_torch): a plain conv / BN / ReLU / max-pool net and a ResNet (models.resnet_small) whose
residual blocks end in relu(bn(x) + shortcut). Every ReLU of a twin is its own ``torch.nn.ReLU``
instance (captum's GuidedBackprop / Deconvolution hook only those), and cnnkit's fused
``BatchNorm2d(activation="relu")`` is BN then ReLU in torch. Batch norm carries random affine
parameters and running statistics in both; everything runs in eval mode, float32.

* captum: Saliency, InputXGradient, IntegratedGradients (all five quadratures, with the
  convergence delta), NoiseTunnel(Saliency) (captum's ``torch.normal`` replaced by the noise
  cnnkit draws), GuidedBackprop, Deconvolution, LayerGradCam(relu_attributions=True),
  GuidedGradCam and Occlusion.
* pytorch-grad-cam: GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM and
  ScoreCAM at the layer's resolution (the map before its cv2 resize, from the CAM object's own
  capture, backward and ``get_cam_image``), and cnnkit's upsampled + normalized map against
  ``F.interpolate(bilinear, align_corners=False)`` of that map then min-max scaling. Eigen-CAM's
  SVD sign is arbitrary and flips under rounding, so it is held to pytorch-grad-cam's projection
  of cnnkit's own activations (sign included) and to that of torch's up to each image's sign.
* ``TorchModel``: every method of ``explain.METHODS`` gives on ``TorchModel(torch_twin)`` what
  it gives on the cnnkit model, and leaves no hook and the module's mode behind, also when it
  raises.

All comparisons hold to 1e-4 of the largest |expected| (test_nn_torch.assert_rel). cnnkit runs
in both layouts where the layout changes the code path (its NHWC output is transposed).
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from cnnkit import explain, models, nn
from test_nn import from_layout, to_layout

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
with warnings.catch_warnings():
    # pytorch-grad-cam imports torchvision; a torchvision whose compiled ops do not load next to
    # this torch (here 0.28 beside torch 2.13) needs cnnkit.bench's op-registration workaround
    # (the transforms, all that grad-cam imports from it, are Python)
    warnings.simplefilter("ignore")
    from cnnkit.bench._common import import_torchvision
    if import_torchvision() is None:
        pytest.skip("torchvision (needed by pytorch_grad_cam) is not importable", allow_module_level=True)
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from test_nn_torch import assert_rel, copy_weights  # noqa: E402  (after the torch skip)

T = torch.nn
F = torch.nn.functional

N, C, H, W, K = 4, 3, 16, 16, 5
LAYOUTS = ("NCHW", "NHWC")
NETS = ("plain", "resnet")
# (cnnkit name, torch name) of the layers the CAMs read: the last 4-D block (4x4, where the
# gradient is uniform over positions) and one inside the net (8x8, a fused BN + ReLU in cnnkit)
LAYERS = {"plain": (("7", "8"), ("5", "6")), "resnet": (("4", "5"), ("3.bn1", "4.relu1"))}
GUIDED_WARNING = "ignore:Setting backward hooks on ReLU activations:UserWarning"


@pytest.fixture(autouse=True)
def torch_one_thread():
    """torch at one thread (see test_nn_torch.torch_one_thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- twins --------------------------------------------------------------------------------------

class TorchBasicBlock(T.Module):
    """torchvision's BasicBlock with a distinct ReLU module after each norm (captum hooks modules)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = T.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = T.BatchNorm2d(cout)
        self.relu1 = T.ReLU()
        self.conv2 = T.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = T.BatchNorm2d(cout)
        self.downsample = (None if stride == 1 and cin == cout else
                           T.Sequential(T.Conv2d(cin, cout, 1, stride, bias=False), T.BatchNorm2d(cout)))
        self.relu2 = T.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


def build(name, layout, rng):
    L = {"layout": layout}
    if name == "plain":
        ck = nn.Sequential(
            nn.Conv2d(C, 8, 3, padding=1, bias=False, rng=rng, **L), nn.BatchNorm2d(8, activation="relu", **L),
            nn.MaxPool2d(2, **L),
            nn.Conv2d(8, 16, 3, padding=1, bias=False, rng=rng, **L), nn.BatchNorm2d(16, **L), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1, rng=rng, **L), nn.ReLU(),
            nn.GlobalAvgPool2d(**L), nn.Linear(16, K, rng=rng))
        tm = T.Sequential(
            T.Conv2d(C, 8, 3, padding=1, bias=False), T.BatchNorm2d(8), T.ReLU(), T.MaxPool2d(2),
            T.Conv2d(8, 16, 3, padding=1, bias=False), T.BatchNorm2d(16), T.ReLU(),
            T.Conv2d(16, 16, 3, stride=2, padding=1), T.ReLU(),
            T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(16, K))
        return ck, tm
    ck = models.resnet_small(C, K, widths=(8, 16, 16), blocks=(1, 1, 1), norm="batch", layout=layout,
                             seed=int(rng.integers(1 << 30)))
    tm = T.Sequential(
        T.Conv2d(C, 8, 3, 1, 1, bias=False), T.BatchNorm2d(8), T.ReLU(),
        TorchBasicBlock(8, 8), TorchBasicBlock(8, 16, 2), TorchBasicBlock(16, 16, 2),
        T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(16, K))
    return ck, tm


def make_pair(name, layout, seed=0):
    """(cnnkit model, torch twin), eval mode, random BN affine parameters and running statistics
    in both; the eval logits are checked to agree."""
    rng = np.random.default_rng(seed)
    ck, tm = build(name, layout, rng)
    bns = [m for m in ck.modules() if isinstance(m, nn.BatchNorm2d)]
    tbns = [m for m in tm.modules() if isinstance(m, T.BatchNorm2d)]
    assert len(bns) == len(tbns)
    for m in bns:
        c = m.num_features
        m.params["weight"][...] = rng.uniform(0.5, 1.5, c)
        m.params["bias"][...] = rng.normal(0.0, 0.3, c)
        m.buffers["running_mean"][...] = rng.normal(0.0, 0.5, c)
        m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, c)
    copy_weights(ck, tm)
    with torch.no_grad():
        for m, tmod in zip(bns, tbns):
            tmod.running_mean.copy_(torch.from_numpy(m.buffers["running_mean"].astype(np.float32)))
            tmod.running_var.copy_(torch.from_numpy(m.buffers["running_var"].astype(np.float32)))
    ck.eval()
    tm.eval()
    x = images(np.random.default_rng(seed + 100))
    with torch.no_grad():
        assert_rel(ck.forward(to_layout(x, layout)), tm(torch.from_numpy(x)).numpy(), f"{name}: eval logits")
    return ck, tm


def images(rng, n=N):
    return rng.standard_normal((n, C, H, W)).astype(np.float32)


def tin(x_nchw):
    """A fresh torch input that requires grad (captum warns when it has to set the flag)."""
    return torch.from_numpy(x_nchw.copy()).requires_grad_(True)


def tmodule(tm, name):
    return dict(tm.named_modules())[name]


def predicted(tm, x_nchw):
    with torch.no_grad():
        return tm(torch.from_numpy(x_nchw)).argmax(1).numpy()


def upsample_normalize(raw):
    """cnnkit's documented post-processing of a raw (N, h, w) map: F.interpolate(bilinear,
    align_corners=False) to (H, W), then each map min-max scaled (a constant map gives 0)."""
    up = F.interpolate(torch.from_numpy(np.asarray(raw, np.float64))[:, None], size=(H, W), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (up - lo) / np.where(span > 0, span, 1.0), 0.0)


# ---- gradients ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings(GUIDED_WARNING)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NETS)
def test_gradients_match_captum(name, layout):
    ck, tm = make_pair(name, layout, 1)
    rng = np.random.default_rng(2)
    x = images(rng)
    xl = to_layout(x, layout)
    t = rng.integers(0, K, N)
    ca = captum_attr

    raw = ca.Saliency(tm).attribute(tin(x), target=t.tolist(), abs=False).numpy()
    assert_rel(from_layout(explain.saliency(ck, xl, t, abs=False, reduce=None), layout), raw, "saliency, signed")
    assert_rel(explain.saliency(ck, xl, t), np.abs(raw).max(axis=1), "saliency, |g| max over channels")
    assert_rel(explain.saliency(ck, xl, t, reduce="mean"), np.abs(raw).mean(axis=1), "saliency, mean")
    # the predicted class
    p = predicted(tm, x)
    expected = ca.Saliency(tm).attribute(tin(x), target=p.tolist()).numpy()
    assert_rel(from_layout(explain.saliency(ck, xl, reduce=None), layout), expected, "saliency, predicted class")

    expected = ca.InputXGradient(tm).attribute(tin(x), target=t.tolist()).detach().numpy()
    assert_rel(from_layout(explain.gradient_x_input(ck, xl, t), layout), expected, "gradient x input")

    expected = ca.GuidedBackprop(tm).attribute(tin(x), target=t.tolist()).numpy()
    assert_rel(from_layout(explain.guided_backprop(ck, xl, t), layout), expected, "guided backprop")

    expected = ca.Deconvolution(tm).attribute(tin(x), target=t.tolist()).numpy()
    assert_rel(from_layout(explain.deconvnet(ck, xl, t), layout), expected, "deconvnet")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,baseline", [("plain", "zero"), ("resnet", "random")])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients_match_captum(method, name, baseline, layout):
    """The convergence delta is a difference of O(1) sums, each carrying float32 rounding
    (~1e-7 here) in either library; inputs of std 4 and 3 steps make the quadrature gap itself
    (the delta) ~1e-2, so 1e-4 of it is well above that rounding."""
    ck, tm = make_pair(name, layout, 3)
    rng = np.random.default_rng(4)
    x = 4 * images(rng)
    t = rng.integers(0, K, N)
    steps = 3
    if baseline == "zero":
        bt = bl = 0.0
    else:
        b = 0.3 * images(rng)
        bt, bl = torch.from_numpy(b), to_layout(b, layout)
    attr, delta = explain.integrated_gradients(ck, to_layout(x, layout), t, baseline=bl, steps=steps, method=method,
                                               return_delta=True)
    ig = captum_attr.IntegratedGradients(tm)
    expected, edelta = ig.attribute(tin(x), baselines=bt, target=t.tolist(), n_steps=steps, method=method,
                                    return_convergence_delta=True)
    assert_rel(from_layout(attr, layout), expected.detach().numpy(), f"IG {method}")
    assert delta.shape == (N,) and delta.dtype == np.float64
    assert np.abs(edelta.numpy()).max() > 1e-3, "the delta is at the rounding level: the comparison says little"
    assert_rel(delta, edelta.numpy(), f"IG {method}: convergence delta")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("abs_", [False, True])
@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_matches_captum_noise_tunnel(kind, abs_, layout, monkeypatch):
    """captum draws its noise with ``torch.normal(0, stdevs expanded)`` in repeat_interleave
    order (row i * n + j: image i, sample j); that call is replaced by cnnkit's documented draw
    (``rng.standard_normal((n,) + x.shape[1:])`` per image, in order, in cnnkit's layout, times
    noise * (max - min) of the image). Every image spans [-1, 1], so captum's one stdev is each
    image's."""
    name = "resnet" if kind == "vargrad" else "plain"
    ck, tm = make_pair(name, layout, 5)
    rng = np.random.default_rng(6)
    x = images(rng)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    x = ((x - lo) / (x.max(axis=(1, 2, 3), keepdims=True) - lo) * 2 - 1).astype(np.float32)
    assert np.all(x.min(axis=(1, 2, 3)) == -1) and np.all(x.max(axis=(1, 2, 3)) == 1)
    xl = to_layout(x, layout)
    t = rng.integers(0, K, N)
    n, noise, seed = 6, 0.15, 11
    stdev = 2.0 * noise
    calls = []

    def cnnkit_noise(mean, std, *args, **kwargs):
        assert mean == 0 and not args and not kwargs
        assert tuple(std.shape) == (N * n, C, H, W)
        assert torch.all(std == np.float32(stdev))
        draw = np.random.default_rng(seed)
        eps = np.concatenate([draw.standard_normal((n,) + xl.shape[1:]) * stdev for _ in range(N)])
        calls.append(1)
        return torch.from_numpy(from_layout(eps.astype(np.float32), layout))

    monkeypatch.setattr(torch, "normal", cnnkit_noise)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tm))
    expected = nt.attribute(tin(x), nt_type=kind, nt_samples=n, stdevs=stdev, target=t.tolist(), abs=abs_)
    assert calls == [1]
    got = explain.smoothgrad(ck, xl, t, n_samples=n, noise=noise, kind=kind, abs=abs_, seed=seed)
    assert_rel(from_layout(got, layout), expected.numpy(), f"{kind}, abs={abs_}")


# ---- CAMs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("name", NETS)
def test_grad_cam_matches_captum(name, layer, layout):
    ck, tm = make_pair(name, layout, 7)
    cl, tl = LAYERS[name][layer]
    rng = np.random.default_rng(8)
    x = images(rng)
    xl = to_layout(x, layout)
    for t, what in ((rng.integers(0, K, N), "given targets"), (None, "predicted class")):
        tt = (predicted(tm, x) if t is None else t).tolist()
        expected = captum_attr.LayerGradCam(tm, tmodule(tm, tl)).attribute(tin(x), target=tt, relu_attributions=True)
        expected = expected.detach().numpy()
        assert expected.shape[1] == 1
        raw = explain.grad_cam(ck, xl, t, layer=cl, upsample=False, normalize=False)
        assert_rel(raw, expected[:, 0], f"grad_cam at {cl}, {what}")
        assert_rel(explain.grad_cam(ck, xl, t, layer=cl), upsample_normalize(expected[:, 0]),
                   f"grad_cam at {cl}, upsampled and normalized, {what}")


@pytest.mark.filterwarnings(GUIDED_WARNING)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("interpolate", ["nearest", "bilinear"])
@pytest.mark.parametrize("name", NETS)
def test_guided_grad_cam_matches_captum(name, interpolate, layout):
    """Nearest at the inner layer for given targets, bilinear at the last block for the predicted
    class (whose Grad-CAM is rarely zero everywhere)."""
    ck, tm = make_pair(name, layout, 9)
    cl, tl = LAYERS[name][1 if interpolate == "nearest" else 0]
    rng = np.random.default_rng(10)
    x = images(rng)
    t = rng.integers(0, K, N) if interpolate == "nearest" else None
    tt = (predicted(tm, x) if t is None else t).tolist()
    expected = captum_attr.GuidedGradCam(tm, tmodule(tm, tl)).attribute(tin(x), target=tt,
                                                                         interpolate_mode=interpolate)
    got = explain.guided_grad_cam(ck, to_layout(x, layout), t, layer=cl, interpolate=interpolate)
    assert_rel(from_layout(got, layout), expected.detach().numpy(), f"guided grad-cam at {cl}, {interpolate}")


GRAD_CAM_CLASSES = {"grad_cam": "GradCAM", "grad_cam_pp": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM",
                    "layer_cam": "LayerCAM", "hires_cam": "HiResCAM", "eigen_cam": "EigenCAM",
                    "score_cam": "ScoreCAM"}


def grad_cam_raw(method, tm, layer, x, t):
    """pytorch-grad-cam's map at the layer's resolution after its ReLU: BaseCAM.forward and
    compute_cam_per_layer up to (not including) scale_cam_image's resize."""
    cam = getattr(pgc, GRAD_CAM_CLASSES[method])(model=tm, target_layers=[layer])
    cam.batch_size = 64   # Score-CAM: masked inputs per forward
    try:
        xt = torch.from_numpy(x.copy())
        outputs = cam.activations_and_grads(xt)
        targets = [ClassifierOutputTarget(int(c)) for c in t]
        if cam.uses_gradients:
            tm.zero_grad()
            loss = sum(target(o) for target, o in zip(targets, outputs))
            loss.backward(retain_graph=True)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
        raw = cam.get_cam_image(xt, layer, targets, acts, grads, eigen_smooth=False)
    finally:
        cam.activations_and_grads.release()
    return np.maximum(raw, 0), acts


def captured(ck, x, layer, layout):
    """cnnkit's activations at ``layer`` for x, NCHW."""
    c = ck.capture(layer)
    try:
        ck.forward(x)
        return from_layout(c.output, layout)
    finally:
        ck.release()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("method", list(GRAD_CAM_CLASSES))
def test_cams_match_pytorch_grad_cam(method, name, layer, layout):
    ck, tm = make_pair(name, layout, 12)
    cl, tl = LAYERS[name][layer]
    rng = np.random.default_rng(13)
    x = images(rng)
    xl = to_layout(x, layout)
    t = rng.integers(0, K, N)
    expected, acts = grad_cam_raw(method, tm, tmodule(tm, tl), x, t)
    assert expected.max() > 0, "every map is zero: the comparison says little"
    fn = getattr(explain, method)
    raw = fn(ck, xl, t, layer=cl, upsample=False, normalize=False)
    if method == "eigen_cam":
        expected = eigen_sign_matched(raw, ck, xl, cl, layout, acts)
    assert_rel(raw, expected, f"{method} at {cl}")
    assert_rel(fn(ck, xl, t, layer=cl), upsample_normalize(expected), f"{method} at {cl}, upsampled and normalized")


def eigen_sign_matched(raw, ck, xl, layer, layout, torch_acts):
    """pytorch-grad-cam's Eigen-CAM maps with each image's SVD sign as cnnkit's.

    A singular vector's sign is arbitrary; LAPACK's choice is not continuous in the matrix, and
    here it flips for some images between cnnkit's activations and torch's, which differ by
    float32 rounding (~1e-7). So: on cnnkit's own activations pytorch-grad-cam's projection
    (EigenCAM.get_cam_image is get_2d_projection) gives cnnkit's map, sign included; on torch's,
    the projection or its negative does, image by image."""
    same = np.maximum(get_2d_projection(captured(ck, xl, layer, layout)), 0)
    assert_rel(raw, same, f"eigen_cam at {layer}: pytorch-grad-cam's projection of cnnkit's activations")
    proj = get_2d_projection(torch_acts)
    out = np.empty_like(proj)
    for n in range(proj.shape[0]):
        pos, neg = np.maximum(proj[n], 0), np.maximum(-proj[n], 0)
        out[n] = pos if np.abs(raw[n] - pos).max() <= np.abs(raw[n] - neg).max() else neg
    return out


# ---- occlusion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("window,stride,baseline", [((4, 4), (4, 4), 0.0), ((5, 3), (3, 2), 0.5),
                                                    ((6, 6), (2, 3), -0.25)])
@pytest.mark.parametrize("name", NETS)
def test_occlusion_matches_captum(name, window, stride, baseline, layout):
    """captum's Occlusion over all channels (window (C, wh, ww), strides (C, sh, sw)): its result
    is cnnkit's (N, H, W) map repeated over the channels; windows past the edge are clipped."""
    ck, tm = make_pair(name, layout, 14)
    rng = np.random.default_rng(15)
    x = images(rng)
    t = rng.integers(0, K, N)
    with torch.no_grad():
        expected = captum_attr.Occlusion(tm).attribute(
            torch.from_numpy(x), sliding_window_shapes=(C,) + window, strides=(C,) + stride, baselines=baseline,
            target=t.tolist(), perturbations_per_eval=64).numpy()
    got = explain.occlusion(ck, to_layout(x, layout), t, window=window, stride=stride, baseline=baseline)
    assert got.shape == (N, H, W)
    assert_rel(np.broadcast_to(got[:, None], expected.shape), expected, f"occlusion {window} / {stride}")


# ---- the TorchModel adapter ---------------------------------------------------------------------

METHOD_KWARGS = {
    "smoothgrad": dict(n_samples=4, noise=0.1, seed=3, kind="smoothgrad_sq"),
    "integrated_gradients": dict(steps=3, return_delta=True),
    "occlusion": dict(window=5, stride=3, baseline=0.1),
    "rise": dict(n_masks=24, cell=4, seed=2),
}


def method_kwargs(method, name, torch_side, prefix=""):
    kw = dict(METHOD_KWARGS.get(method, {}))
    if "layer" in inspect.signature(explain.METHODS[method]).parameters:
        cl, tl = LAYERS[name][1]
        kw["layer"] = prefix + tl if torch_side else cl
    return kw


def assert_no_hooks(tm, what):
    for n, m in tm.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr), f"{what}: {attr} left on module {n!r}"


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("method", list(explain.METHODS))
def test_torch_model_matches_cnnkit_model(method, name):
    """Inputs of std 4: see test_integrated_gradients_match_captum on the delta's conditioning."""
    ck, tm = make_pair(name, "NCHW", 16)
    rng = np.random.default_rng(17)
    x = 4 * images(rng)
    t = rng.integers(0, K, N)
    fn = explain.METHODS[method]
    want = fn(ck, x, t, **method_kwargs(method, name, False))
    tm.train()
    got = fn(explain.TorchModel(tm), x, t, **method_kwargs(method, name, True))
    assert tm.training, f"{method}: the module's mode was not restored"
    assert_no_hooks(tm, method)
    if method == "integrated_gradients":
        (want, wdelta), (got, gdelta) = want, got
        assert np.abs(wdelta).max() > 1e-3, "the delta is at the rounding level: the comparison says little"
        assert_rel(gdelta, wdelta, f"{method}: delta")
    assert got.dtype == np.float32 and got.shape == want.shape
    assert_rel(got, want, f"{method} on TorchModel")


class FailingForward(T.Module):
    """The twin, with its ``fail_at``-th forward raising (mid-method, hooks in place)."""

    def __init__(self, net, fail_at):
        super().__init__()
        self.net = net
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("forward failed")
        return self.net(x)


@pytest.mark.parametrize("method", list(explain.METHODS))
def test_torch_model_leaves_no_hooks_when_raising(method):
    _, tm = make_pair("resnet", "NCHW", 18)
    x = images(np.random.default_rng(19), 2)
    fn = explain.METHODS[method]
    tm.train()
    with pytest.raises(ValueError, match="target"):
        fn(explain.TorchModel(tm), x, K, **method_kwargs(method, "resnet", True))
    assert_no_hooks(tm, f"{method}, bad target")
    assert tm.training
    raised = 0
    for fail_at in (1, 2, 3):
        wrapped = FailingForward(tm, fail_at)
        wrapped.train()
        try:
            fn(explain.TorchModel(wrapped), x, [1, 3], **method_kwargs(method, "resnet", True, "net."))
        except RuntimeError as e:
            assert "forward failed" in str(e)
            raised += 1
        assert_no_hooks(wrapped, f"{method}, forward {fail_at} raising")
        assert wrapped.training and tm.training, f"{method}: the mode was not restored"
    assert raised >= 1
