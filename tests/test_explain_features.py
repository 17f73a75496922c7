"""Feature visualization (cnnkit.explain.features, objectives, _fv_param, _fv_transforms) and the
nn mechanism it runs on (Sequential.forward(until=), Sequential.backward(inject=)).

* parameterization: the FFT image and the colour mix against the float64 references of
  tests/reference/features.py; round trips (image -> parameters -> image, spectrum -> image ->
  spectrum for spectra that are images' spectra, colour mix and its inverse) to float64 rounding;
  every backward against central differences in float64;
* transforms: pad, jitter, scale, rotate (and their composition) against pixel-by-pixel float64
  bilinear references; neutral parameters give the input back; every backward against central
  differences in float64 (each transform is affine in the image, so the differences are exact up to
  rounding);
* objectives: value and gradient of every objective (both layouts, composed) against central
  differences in float64;
* nn: a forward stopped at a (nested) layer and a backward started there with gradients injected
  at several layers equals the full forward/backward with the same injections bit for bit, and
  matches central differences of the float64 reference forward of tests/test_nn.py; every model
  of cnnkit.models, both layouts;
* behaviour: a planted oriented-edge filter is recovered (normalized cross-correlation >= 0.9),
  a class-logit image of the trained shapes model is classified as that class (p >= 0.9),
  diversity lowers the batch's Gram cosines, seeds reproduce images bit for bit at 1 and 2 threads,
  the model's state is restored; bad input raises TypeError / ValueError naming the argument.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import data, models, nn, optim, train
from cnnkit.explain import feature_visualization, objectives
from cnnkit.explain import _fv_param as P
from cnnkit.explain import _fv_transforms as T
from cnnkit.explain.features import FeatureHistory, _receptive_side
from conftest import assert_bitwise, assert_close, num_threads
from reference import features as R

F32, F64 = np.float32, np.float64
H_FD = 1e-6


def central_diff(f, x, h=H_FD, coords=None):
    """d f / d x by central differences at the flat indices ``coords`` (all by default)."""
    x = np.array(x, F64)
    flat = x.reshape(-1)
    idx = range(flat.size) if coords is None else coords
    out = np.zeros(flat.size)
    for i in idx:
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        out[i] = (fp - fm) / (2 * h)
    return out.reshape(x.shape)


def assert_grad(actual, ref, what, rtol=1e-7):
    """Gradients compared relative to the largest |reference| (differences of sums cancel)."""
    ref = np.asarray(ref, F64)
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, f"{what}: the reference gradient is zero (a useless test)"
    err = float(np.max(np.abs(np.asarray(actual, F64) - ref))) / scale
    assert err <= rtol, f"{what}: max error {err:.3g} of the largest gradient (rtol {rtol})"


# ---- parameterization -----------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(6, 6), (5, 7), (4, 5), (7, 8)])
def test_fft_image_matches_reference_and_round_trips(h, w, rng):
    spec = rng.standard_normal((2, 2, 3, h, w // 2 + 1))
    scale = P.fft_scale(h, w)
    raw = P.fft_to_raw(spec, scale, w)
    assert_close(raw, R.fft_image(spec, w=w), F64, length=h * w, what="fft image")
    # image -> spectrum -> image is exact; spectrum -> image -> spectrum for an image's spectrum
    img = rng.standard_normal((2, 3, h, w))
    spec2 = P.raw_to_fft(img, scale)
    assert_close(P.fft_to_raw(spec2, scale, w), img, F64, length=h * w, what="image round trip")
    assert_close(P.raw_to_fft(P.fft_to_raw(spec2, scale, w), scale), spec2, F64, length=h * w,
                 what="spectrum round trip")


def test_fft_scale_is_lucids():
    h, w = 8, 6
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    expected = np.sqrt(w * h) / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / 8)
    assert_close(P.fft_scale(h, w), expected, F64, what="scale")


@pytest.mark.parametrize("h,w", [(4, 6), (5, 5)])
def test_fft_backward_matches_central_differences(h, w, rng):
    spec = rng.standard_normal((2, 1, 2, h, w // 2 + 1))
    g = rng.standard_normal((1, 2, h, w))
    scale = P.fft_scale(h, w)
    analytic = P.fft_to_raw_backward(g, scale)
    ref = central_diff(lambda s: float(np.sum(g * R.fft_image(s, w=w))), spec)
    assert_grad(analytic, ref, "fft backward")


def test_color_mix_round_trip_and_backward(rng):
    m = P.color_basis()
    assert np.isclose(np.max(np.linalg.norm(m, axis=0)), 1.0)
    assert_close(m * np.max(np.linalg.norm(P.COLOR_CORRELATION_SVD_SQRT, axis=0)), P.COLOR_CORRELATION_SVD_SQRT,
                 F64, what="basis")
    x = rng.standard_normal((2, 3, 4, 5))
    y = P.color_mix(x, m)
    assert_close(y, R.color_mix(x, m), F64, length=3, what="colour mix")
    assert_close(P.color_unmix(y, m), x, F64, length=9, what="colour round trip")
    g = rng.standard_normal(x.shape)
    ref = central_diff(lambda v: float(np.sum(g * R.color_mix(v, m))), x)
    assert_grad(P.color_mix_backward(g, m), ref, "colour backward")


def test_estimated_color_basis_is_a_covariance_square_root(rng):
    x = rng.random((3, 6, 6, 3)) @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
    m = P.estimate_color_basis(x)
    assert_close(m @ m.T, np.cov(x.reshape(-1, 3).T), F64, length=3, what="M M^T")
    assert_close(P.estimate_color_basis(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), m, F64, what="NCHW")


def test_sigmoid_round_trip_and_backward(rng):
    z = rng.standard_normal((2, 3, 4, 4)) * 3
    y = P.sigmoid(z.copy())
    assert_close(y, R.sigmoid(z), F64, what="sigmoid")
    assert_close(P.logit(y), z, F64, length=16, what="logit round trip")
    g = rng.standard_normal(z.shape)
    ref = central_diff(lambda v: float(np.sum(g * R.sigmoid(v))), z)
    assert_grad(P.sigmoid_backward(g, y), ref, "sigmoid backward")


@pytest.mark.parametrize("param", ["fft", "pixel"])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_image_param_chain_backward_and_inverse(param, decorrelate, rng):
    shape = (2, 3, 5, 6)
    ip = P.ImageParam(shape, param, decorrelate, np.random.default_rng(1), sd=0.5, dtype=F64)
    m = P.color_basis() if decorrelate else np.eye(3)

    def image_of(theta):
        raw = R.fft_image(theta, w=shape[3]) if param == "fft" else theta
        return R.sigmoid(R.color_mix(raw, m))

    img = ip.image()
    assert_close(img, image_of(ip.params), F64, length=30, what="image")
    g = rng.standard_normal(shape)
    analytic = ip.backward(g).copy()
    ref = central_diff(lambda th: float(np.sum(g * image_of(th))), ip.params)
    assert_grad(analytic, ref, f"{param} chain backward")
    target = rng.uniform(0.05, 0.95, shape)
    ip.set_image(target)
    assert_close(ip.image(), target, F64, length=30, what="set_image round trip")


def test_image_param_float32_round_trip(rng):
    ip = P.ImageParam((1, 3, 16, 16), "fft", True, rng)
    target = rng.uniform(0.1, 0.9, (1, 3, 16, 16))
    ip.set_image(target)
    assert ip.params.dtype == F32
    np.testing.assert_allclose(ip.image(), target, atol=2e-5)


# ---- transforms -----------------------------------------------------------------------------------

def _transform_cases():
    return [
        ("pad", T.Pad(2), lambda x, p: R.pad(x, 2, 0.5)),
        ("jitter", T.Jitter(3), lambda x, p: R.jitter(x, 3, p)),
        ("scale", T.RandomScale(T.STANDARD_SCALES), lambda x, p: R.scale(x, p)),
        ("rotate", T.RandomRotate(T.STANDARD_ANGLES), lambda x, p: R.rotate(x, p)),
        ("zoom out", T.RandomScale([0.7]), lambda x, p: R.scale(x, p)),
        ("rotate 37", T.RandomRotate([37.0, -123.0]), lambda x, p: R.rotate(x, p)),
    ]


@pytest.mark.parametrize("case", range(6), ids=[c[0] for c in _transform_cases()])
def test_transform_matches_reference_and_backward(case, rng):
    name, t, ref = _transform_cases()[case]
    x = rng.random((2, 2, 9, 8))
    params = t.sample(np.random.default_rng(case), 2, (9, 8))
    y = t.apply(x, params)
    assert y.shape[2:] == t.output_size((9, 8))
    assert_close(y, ref(x, params), F64, length=4, what=f"{name} forward")
    # the generic bilinear path (one read along the affine map) gives the same
    assert_close(T.warp(x, t.plan(params, (9, 8))), y, F64, length=4, what=f"{name} warp")
    g = rng.standard_normal(y.shape)
    analytic = t.backward(g, params, (9, 8))
    ref_g = central_diff(lambda v: float(np.sum(g * t.apply(v, params))), x)
    assert_grad(analytic, ref_g, f"{name} backward")
    warp_g = T.warp_backward(g, t.plan(params, (9, 8)))
    assert_grad(warp_g, ref_g, f"{name} warp backward")


def test_neutral_transform_parameters_give_the_input_back(rng):
    x = rng.random((2, 3, 7, 6)).astype(F32)
    for t, p in ((T.RandomScale([1.0]), np.array([1.0, 1.0])), (T.RandomRotate([0.0]), np.array([0.0, 0.0])),
                 (T.Jitter(0), np.zeros((2, 2), int)), (T.Pad(0), 2)):
        assert_bitwise(t.apply(x, p), x, what=repr(t))
        assert_bitwise(T.warp(x, t.plan(p, (7, 6))), x, what=f"{t!r} warp")


def test_compose_standard_backward_and_shifts(rng):
    size = (20, 20)
    tf = T.standard_transforms(size)
    assert [type(t).__name__ for t in tf.transforms] == ["Pad", "Jitter", "RandomScale", "RandomRotate", "Jitter"]
    assert (tf.transforms[0].pad, tf.transforms[1].d, tf.transforms[4].d) == (1, 1, 1)
    big = T.standard_transforms((224, 224))
    assert (big.transforms[0].pad, big.transforms[1].d, big.transforms[4].d) == (12, 8, 4)
    mid = T.standard_transforms((64, 64))
    assert (mid.transforms[0].pad, mid.transforms[1].d, mid.transforms[4].d) == (3, 2, 1)
    x = rng.random((2, 1) + size)
    params = tf.sample(np.random.default_rng(3), 2, size)
    y = tf.apply(x, params)
    assert y.shape == (2, 1) + tf.output_size(size)
    g = rng.standard_normal(y.shape)
    coords = np.random.default_rng(0).choice(x.size, 120, replace=False)
    ref_g = central_diff(lambda v: float(np.sum(g * tf.apply(v, params))), x, coords=coords)
    assert_grad(tf.backward(g, params, size).reshape(-1)[coords], ref_g.reshape(-1)[coords], "compose backward")
    # pads and crops move by whole pixels: composed with them, one read equals the steps in turn
    # (as long as no crop before the zoom cuts into the image, as in the standard list)
    shifts = T.Compose([T.Pad(3), T.Jitter(3), T.RandomScale([0.9, 1.1]), T.Jitter(1)])
    sp = shifts.sample(np.random.default_rng(5), 2, size)
    seq = x
    hw = size
    for t, p in zip(shifts.transforms, sp):
        seq = t.apply(seq, p)
        hw = t.output_size(hw)
    assert_close(shifts.apply(x, sp), seq, F64, length=4, what="composed vs in turn")


def test_transform_sampler_is_seeded():
    tf = T.standard_transforms((32, 32))
    a = tf.sample(np.random.default_rng(7), 4, (32, 32))
    b = tf.sample(np.random.default_rng(7), 4, (32, 32))
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
    scales = tf.transforms[2].sample(np.random.default_rng(0), 2000, (32, 32))
    assert set(np.round(scales, 6)) == set(np.round(T.STANDARD_SCALES, 6))
    assert T.STANDARD_ANGLES == tuple(range(-10, 11)) + (0,) * 5   # Lucid's: 0 weighted six times


# ---- objectives ----------------------------------------------------------------------------------

def _objective_cases():
    vec = np.linspace(-1, 1, 5)
    return [
        ("channel", objectives.channel("a", 2)),
        ("channel batch", objectives.channel("a", 4, batch=1)),
        ("neuron", objectives.neuron("a", 1)),
        ("neuron yx", objectives.neuron("a", 3, 1, 4)),
        ("layer", objectives.layer("a")),
        ("direction", objectives.direction("a", vec)),
        ("diversity", objectives.diversity("a", 3.0)),
        ("class_logit", objectives.class_logit(1)),
        ("total_variation", objectives.total_variation()),
        ("l1", objectives.l1()),
        ("l2", objectives.l2(0.3)),
        ("blur", objectives.blur()),
        ("tv on a layer", objectives.total_variation(layer="a")),
        ("composed", objectives.channel("a", 0) - 0.5 * objectives.neuron("b", 1) + 2 * objectives.diversity("b", 1.5)
         + 0.1 * objectives.l1(0.5) - objectives.blur() / 4 + 1e-2 * objectives.class_logit(0)),
    ]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", range(14), ids=[c[0] for c in _objective_cases()])
def test_objective_gradients_match_central_differences(case, layout, rng):
    name, obj = _objective_cases()[case]
    shapes = {"a": (3, 5, 4, 6), "b": (3, 4, 3, 3)}
    acts = {}
    for k, s in shapes.items():
        a = rng.standard_normal(s)
        acts[k] = np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a
    acts[None] = rng.standard_normal((3, 4))
    image = rng.uniform(0.05, 0.95, (3, 2, 5, 6))
    obj.check({k: v.shape for k, v in acts.items()}, layout)
    value, grads, gimg = obj.evaluate(acts, image, layout=layout)
    assert set(grads) <= set(obj.layers)

    def f_of(key):
        def f(v):
            a2 = dict(acts)
            if key == "image":
                return obj.evaluate(a2, v, layout=layout)[0]
            a2[key] = v
            return obj.evaluate(a2, image, layout=layout)[0]
        return f

    checked = 0
    for key in list(obj.layers) + (["image"] if obj.uses_image else []):
        x0 = image if key == "image" else acts[key]
        analytic = gimg if key == "image" else grads.get(key)
        ref = central_diff(f_of(key), x0)
        if analytic is None:
            assert np.allclose(ref, 0), f"{name}: no gradient for {key!r} but the value depends on it"
            continue
        assert analytic.shape == x0.shape
        assert_grad(analytic, ref, f"{name} d/d {key!r}", rtol=1e-6)
        checked += 1
    assert checked >= 1


def test_objective_values_and_signs(rng):
    a = rng.standard_normal((2, 3, 4, 4))
    v = objectives.channel("x", 1).evaluate({"x": a})[0]
    assert np.isclose(v, a[:, 1].mean())
    v = objectives.neuron("x", 2).evaluate({"x": a})[0]
    assert np.isclose(v, a[:, 2, 2, 2].mean())
    img = rng.random((1, 1, 5, 5))
    tv = objectives.total_variation().evaluate({}, img)[0]
    assert np.isclose(tv, -(np.abs(np.diff(img, axis=2)).sum() + np.abs(np.diff(img, axis=3)).sum()))
    assert objectives.l1().evaluate({}, img)[0] < 0 and objectives.l2().evaluate({}, img)[0] < 0
    # diversity: Gram matrices equal up to scale have cosine 1 pairwise: -(N - 1) for N = 3; 0 for one image
    same = np.repeat(a[:1], 3, axis=0)
    same[1] *= 2
    assert np.isclose(objectives.diversity("x", 1.0).evaluate({"x": same})[0], -2.0)
    assert objectives.diversity("x", 1.0).evaluate({"x": a[:1]})[0] == 0.0
    o = 2 * objectives.channel("x", 0) - objectives.channel("x", 1)
    assert np.isclose(o.evaluate({"x": a})[0], 2 * a[:, 0].mean() - a[:, 1].mean())
    assert repr(o) == "2 * channel('x', 0) - channel('x', 1)"


def test_objective_bad_input():
    with pytest.raises(TypeError, match="layer"):
        objectives.channel(3, 0)
    with pytest.raises(ValueError, match="k"):
        objectives.channel("1", -1)
    with pytest.raises(TypeError, match="k"):
        objectives.neuron("1", 1.5)
    with pytest.raises(ValueError, match="vector"):
        objectives.direction("1", np.zeros((2, 2)))
    with pytest.raises(TypeError, match="weight"):
        objectives.diversity("1", "big")
    with pytest.raises(TypeError):
        objectives.channel("1", 0) + 1
    with pytest.raises(ValueError, match="k: channel 7"):
        objectives.channel("a", 7).check({"a": (1, 4, 3, 3)}, "NCHW")
    with pytest.raises(ValueError, match="y: row"):
        objectives.neuron("a", 0, y=3).check({"a": (1, 4, 3, 3)}, "NCHW")
    with pytest.raises(ValueError, match="layer"):
        objectives.diversity("a", 1.0).check({"a": (1, 4)}, "NCHW")


# ---- nn: forward(until=) and backward(inject=) ---------------------------------------------------------

BUILDERS = {"resnet_small": models.resnet_small, "resnext_small": models.resnext_small,
            "mobilenet_small": models.mobilenet_small}
INJECT = {"resnet_small": ["1", "2.conv1", "3.bn1", "3.downsample.0"],
          "resnext_small": ["0", "2.conv2", "3.bn2", "3.downsample"],
          "mobilenet_small": ["1", "3", "4", "5"]}


def _recording_ref(model, x64, names):
    """The float64 reference forward of tests/test_nn.py, recording the outputs of ``names``
    (its blocks call ref_forward for their convs and shortcuts, and _norm_ref for their norms:
    a norm with a fused ReLU outputs relu(norm(x)))."""
    import test_nn
    mods = dict(model.named_modules())
    want = {id(mods[n]): n for n in names}
    rec = {}
    orig_fwd, orig_norm = test_nn.ref_forward, test_nn._norm_ref

    def fwd(m, x, Pm, r=None, residual=None):
        y = orig_fwd(m, x, Pm, r, residual)
        if id(m) in want:
            rec[want[id(m)]] = y
        return y

    def norm(m, h, Pm, residual=None):
        y = orig_norm(m, h, Pm, residual)
        if id(m) in want and residual is None:
            relu = isinstance(m, nn.ReLU) or getattr(m, "activation", None) == "relu"
            rec[want[id(m)]] = np.maximum(y, 0) if relu else y
        return y

    test_nn.ref_forward, test_nn._norm_ref = fwd, norm
    try:
        fwd(model, x64, test_nn.params64(model))
    finally:
        test_nn.ref_forward, test_nn._norm_ref = orig_fwd, orig_norm
    missing = set(names) - set(rec)
    assert not missing, f"the reference did not record {missing}"
    return rec


NORM_CASES = ([(a, lay, "batch") for a in BUILDERS for lay in ("NCHW", "NHWC")]
              + [("resnet_small", "NHWC", "group"), ("resnext_small", "NCHW", None), ("mobilenet_small", "NHWC", None)])


@pytest.mark.parametrize("arch,layout,norm", NORM_CASES)
def test_truncated_forward_backward_with_injection(arch, layout, norm, rng):
    model = BUILDERS[arch](3, 5, layout=layout, seed=2, norm=norm)
    for _, m in model.named_modules():   # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.uniform(-0.2, 0.2, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
    model.eval().set_param_grads(False)
    names = INJECT[arch]
    x = rng.random((2, 12, 12, 3) if layout == "NHWC" else (2, 3, 12, 12)).astype(F32)
    caps = {n: model.capture(n) for n in names}
    model.forward(x)
    outs_full = {n: caps[n].output.copy() for n in names}
    inj = {n: rng.standard_normal(outs_full[n].shape).astype(F32) for n in names}
    g_full = model.backward(np.zeros((2, 5), F32), input_grad=True, inject=inj).copy()
    deepest = max(names, key=lambda n: int(n.split(".")[0]))
    model.forward(x, until=deepest)
    for n in names:
        assert_bitwise(caps[n].output, outs_full[n], what=f"{n} output")
    g_tr = model.backward(None, input_grad=True, inject=inj)
    assert_bitwise(g_tr, g_full, what="input gradient, truncated vs full")
    model.release()
    # against the float64 reference: directional central differences of sum_n sum(g_n * output_n)
    x64 = x.astype(F64)

    def L(v):
        rec = _recording_ref(model, v, names)
        return sum(float(np.sum(inj[n].astype(F64) * rec[n])) for n in names)

    gx = np.asarray(g_tr, F64)
    for d in range(3):
        v = rng.standard_normal(x.shape)
        fd = (L(x64 + H_FD * v) - L(x64 - H_FD * v)) / (2 * H_FD)
        an = float(np.sum(gx * v))
        assert abs(fd - an) <= 1e-4 * float(np.sum(np.abs(gx * v))), f"direction {d}: {an} vs {fd}"


def test_injected_gradient_reaches_captures_and_until(rng):
    model = models.resnet_small(1, 3, seed=0).eval().set_param_grads(False)
    x = rng.random((2, 1, 10, 10)).astype(F32)
    c = model.capture("2")
    out = model.forward(x, until="3")
    assert out.shape == (2, 32, 5, 5)   # layer 3: the second stage's block
    g3 = rng.standard_normal(out.shape).astype(F32)
    g2 = rng.standard_normal(c.output.shape).astype(F32)
    assert model.backward(g3, until="2") is None
    without = c.grad.copy()
    model.backward(g3, until="2", inject={"2": g2})
    np.testing.assert_allclose(c.grad, without + g2, rtol=1e-6, atol=1e-6)
    model.release()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_truncated_forward_inside_a_nested_sequential(layout, rng):
    r = np.random.default_rng(0)
    inner = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, layout=layout, rng=r), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, layout=layout, rng=r), nn.ReLU())
    model = nn.Sequential(inner, nn.Conv2d(4, 3, 3, layout=layout, rng=r), nn.GlobalAvgPool2d(layout=layout),
                          nn.Linear(3, 2, rng=r)).eval().set_param_grads(False)
    x = rng.random((2, 2, 7, 7) if layout == "NCHW" else (2, 7, 7, 2)).astype(F32)
    names = ["0.0", "0.2"]
    caps = {n: model.capture(n) for n in names + ["0"]}
    model.forward(x)
    inj = {n: rng.standard_normal(caps[n].output.shape).astype(F32) for n in names}
    g_full = model.backward(np.zeros((2, 2), F32), input_grad=True, inject=inj).copy()
    caps["0"].output = None
    out = model.forward(x, until="0.2")
    assert caps["0"].output is None        # the inner Sequential stopped early: no output of its own
    assert_bitwise(out, caps["0.2"].output, what="the forward returns the named layer's output")
    assert out.shape == inj["0.2"].shape
    g_tr = model.backward(inj["0.2"], input_grad=True, inject={"0.0": inj["0.0"]})
    assert_bitwise(g_tr, g_full, what="input gradient")
    with pytest.raises(ValueError, match="inject"):     # layer 0's own output was not computed
        model.backward(None, input_grad=True, inject={"0": np.zeros(out.shape, F32)})
    with pytest.raises(ValueError, match="inject"):     # 0.3 did not run
        model.backward(None, input_grad=True, inject={"0.3": np.zeros(out.shape, F32)})
    model.release()
    img = feature_visualization(model, objectives.channel("0.2", 1) + objectives.neuron("0.0", 2), size=9, steps=3,
                                seed=0, progress=False)
    assert img.shape == (1, 9, 9, 2)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", [[], [3], [0, 5], [1, 2, 3, 4, 6]])
def test_conv_backward_with_a_channel_sparse_gradient(layout, channels, rng):
    """Without parameter gradients a conv's backward runs only the output channels with a nonzero
    gradient (at most a quarter of them): the input gradient is the dense one's."""
    conv = nn.Conv2d(5, 16, 3, stride=2, padding=1, layout=layout, rng=np.random.default_rng(1))
    x = rng.standard_normal((2, 5, 9, 8) if layout == "NCHW" else (2, 9, 8, 5)).astype(F32)
    y = conv.forward(x)
    g = np.zeros(y.shape, F32)
    for c in channels:
        g[(slice(None), c) if layout == "NCHW" else (Ellipsis, c)] = rng.standard_normal(
            (2,) + (y.shape[2:] if layout == "NCHW" else y.shape[1:3]))
    dense = conv.backward(g).copy()                      # parameter gradients on: the full kernel
    conv.set_param_grads(False)
    sparse = conv.backward(g)
    if len(channels) * 4 <= 16:
        assert_close(sparse, dense, F32, length=2 * 9 * 16, what="input gradient")
    else:
        assert_bitwise(sparse, dense, what="dense gradient, same kernel")
    assert (not channels) == (not np.any(sparse))


def test_until_and_inject_errors(rng):
    model = models.resnet_small(1, 3, seed=0).eval()
    x = rng.random((1, 1, 10, 10)).astype(F32)
    with pytest.raises(ValueError, match="until"):
        model.forward(x, until="9")
    with pytest.raises(ValueError, match="until"):
        model.forward(x, until="2.nope")
    with pytest.raises(TypeError, match="until"):
        model.forward(x, until=2)
    model.forward(x, until="2")
    with pytest.raises(ValueError, match="inject"):
        model.backward(None, input_grad=True, inject={"3": np.zeros((1, 32, 5, 5), F32)})   # did not run
    with pytest.raises(ValueError, match="inject"):
        model.backward(None, input_grad=True, inject={"zz": np.zeros(1, F32)})
    with pytest.raises(TypeError, match="inject"):
        model.backward(None, input_grad=True, inject={"1": np.zeros((1, 16, 10, 10))})
    with pytest.raises(ValueError, match="grad"):
        model.backward(None, input_grad=True)
    with pytest.raises(ValueError, match="grad"):
        model.backward(np.zeros((1, 3), F32), input_grad=True)
    with pytest.raises(ValueError, match="inject"):
        model.backward(None, input_grad=True, inject={"1": np.zeros((1, 16, 9, 9), F32)})
    with pytest.raises(ValueError, match="inject"):   # below until: never reached
        model.backward(np.zeros((1, 16, 10, 10), F32), until="2", inject={"1": np.zeros((1, 16, 10, 10), F32)})
    # a full forward afterwards restores the ordinary backward
    model.forward(x)
    assert model.backward(np.ones((1, 3), F32), input_grad=True).shape == x.shape


# ---- feature visualization -------------------------------------------------------------------------

def _edge_filter(k=7, angle=0.5):
    yy, xx = np.mgrid[:k, :k] - (k - 1) / 2
    f = np.tanh(2.0 * (xx * np.cos(angle) + yy * np.sin(angle)))
    f -= f.mean()
    return f / np.abs(f).sum()


def _best_ncc(img, f):
    k = f.shape[0]
    fz = (f - f.mean()) / np.linalg.norm(f - f.mean())
    win = np.lib.stride_tricks.sliding_window_view(img, (k, k)).reshape(-1, k * k)
    win = win - win.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(win, axis=1)
    ok = norm > 1e-8
    return float(np.max(win[ok] @ fz.reshape(-1) / norm[ok]))


def _orientation(img):
    """The dominant gradient orientation (radians, mod pi) from the structure tensor."""
    gy, gx = np.gradient(np.asarray(img, F64))
    return 0.5 * np.arctan2(2 * np.sum(gx * gy), np.sum(gx * gx) - np.sum(gy * gy))


@pytest.mark.parametrize("angle", [0.5, 2.0])
@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_planted_filter_is_recovered(param, angle):
    f = _edge_filter(angle=angle)
    conv = nn.Conv2d(1, 2, 7, rng=np.random.default_rng(0))
    conv.weight[0, 0] = f
    conv.bias[0] = 0
    model = nn.Sequential(conv, nn.ReLU())
    obj = objectives.channel("1", 0)
    img = feature_visualization(model, obj, size=32, steps=48, seed=0, param=param, progress=False)
    assert img.shape == (1, 32, 32, 1) and img.dtype == F32
    assert _best_ncc(img[0, :, :, 0], f) >= 0.9
    # and the image's edges run the filter's way (the NCC alone is high for smooth noise too)
    d = (_orientation(img[0, :, :, 0]) - _orientation(f) + np.pi / 2) % np.pi - np.pi / 2
    assert abs(d) < 0.3, f"orientation off by {d:.2f} rad"
    if param == "fft":   # the control: the starting image does not pass
        start = feature_visualization(model, obj, size=32, steps=1, seed=0, param=param, progress=False)
        assert _best_ncc(start[0, :, :, 0], f) < 0.9


@pytest.fixture(scope="module")
def shapes_model():
    """resnet_small (8, 16, 32) trained on 512 synthetic shapes for 4 epochs (~4 s; test accuracy 1.0
    on 128 held-out images)."""
    with num_threads(1):
        ds = data.make_shapes(640, size=32, seed=0)
        model = models.resnet_small(1, len(ds.classes), widths=(8, 16, 32), norm="batch", seed=0)
        loader = data.DataLoader(data.ArrayDataset(ds.images[:512], ds.labels[:512]), 32, shuffle=True,
                                 drop_last=True, seed=0)
        train.fit(model, optim.Adam(model.parameters(), lr=3e-3), loader, epochs=4, progress=False)
        model.eval()
        acc = float(np.mean(model.forward(np.ascontiguousarray(ds.images[512:])).argmax(1) == ds.labels[512:]))
    assert acc >= 0.9, f"the shapes model trained to accuracy {acc} only"
    return model, len(ds.classes)


def _probs(model, img):
    z = model.forward(np.ascontiguousarray(img.transpose(0, 3, 1, 2))).astype(F64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_class_logit_visualization_is_classified_as_that_class(shapes_model):
    model, K = shapes_model
    with num_threads(1):
        for k in range(K):
            img = feature_visualization(model, objectives.class_logit(k), size=32, steps=48, seed=k, progress=False)
            p = _probs(model.eval(), img)[0]
            assert p[k] >= 0.9, f"class {k}: probabilities {np.round(p, 3)}"


def _gram_cosines(model, img, layer):
    c = model.capture(layer)
    try:
        model.forward(np.ascontiguousarray(img.transpose(0, 3, 1, 2)))
        a = c.output.astype(F64)
    finally:
        model.release()
    n, ch = a.shape[:2]
    G = np.einsum("ncp,ndp->ncd", a.reshape(n, ch, -1), a.reshape(n, ch, -1)).reshape(n, -1)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    cos = G @ G.T
    return cos[~np.eye(n, dtype=bool)].mean()


def test_diversity_lowers_gram_cosines(shapes_model):
    model, _ = shapes_model
    base = objectives.channel("2", 3)
    with num_threads(1):
        plain = feature_visualization(model, base, size=32, batch=4, steps=48, seed=0, progress=False)
        diverse = feature_visualization(model, base + objectives.diversity("2", 50.0), size=32, batch=4,
                                        steps=48, seed=0, progress=False)
    model.eval()
    c_plain, c_div = _gram_cosines(model, plain, "2"), _gram_cosines(model, diverse, "2")
    assert c_div < c_plain - 0.2, (c_plain, c_div)   # about 0.998 -> 0.46 with these settings


def test_seed_reproduces_images_bit_for_bit_at_1_and_2_threads():
    model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), layout="NHWC", seed=0)
    obj = objectives.channel("2", 1) + objectives.diversity("2", 5.0) + 1e-3 * objectives.total_variation()
    runs = []
    for th in (1, 2, 1):
        with num_threads(th):
            runs.append(feature_visualization(model, obj, size=24, batch=2, steps=3, seed=11, progress=False))
    assert_bitwise(runs[1], runs[0], what="2 threads vs 1")
    assert_bitwise(runs[2], runs[0], what="repeat")
    with num_threads(1):
        other = feature_visualization(model, obj, size=24, batch=2, steps=3, seed=12, progress=False)
    assert not np.array_equal(other, runs[0])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_output_and_state_restored(layout):
    model = models.mobilenet_small(3, 4, widths=(8, 16, 16), layout=layout, seed=0)
    model.train()
    c = model.capture("1")
    grads_before = model.arena[1].copy()
    obj = objectives.neuron("3", 2) + objectives.channel("1", 0) + objectives.class_logit(1)
    img, hist = feature_visualization(model, obj, size=20, batch=2, steps=5, seed=0, progress=False,
                                      return_history=True, transforms="none", param="pixel", decorrelate=False)
    assert img.shape == (2, 20, 20, 3) and img.dtype == F32
    assert img.min() >= 0 and img.max() <= 1
    assert isinstance(hist, FeatureHistory) and hist.values.shape == (5,) and np.isfinite(hist.final_value)
    assert hist.seconds > 0
    assert all(m.training for m in model.modules()) and all(m.param_grads for m in model.modules())
    assert model.modules()[2]._captures == [c]
    assert_bitwise(model.arena[1], grads_before, what="gradient arena")
    assert model._ran is None   # where the last forward stopped: as before (no forward yet)
    # also after an error inside the run
    with pytest.raises(ValueError, match="k: channel 99"):
        feature_visualization(model, objectives.channel("1", 99), size=20, steps=2, progress=False)
    assert all(m.training for m in model.modules()) and model.modules()[2]._captures == [c]


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_layouts_give_the_same_images(arch):
    """The same weights in NCHW and NHWC: the same images (channels last) to float32 rounding."""
    obj = objectives.channel("3", 1) + objectives.neuron("2", 0) + 1e-3 * objectives.total_variation()
    imgs = [feature_visualization(BUILDERS[arch](3, 4, seed=3, layout=lay), obj, size=24, batch=2, steps=4, seed=0,
                                  progress=False) for lay in ("NCHW", "NHWC")]
    np.testing.assert_allclose(imgs[1], imgs[0], atol=1e-5)
    assert imgs[0].std() > 0.002   # not a constant image


def test_decorrelate_basis_and_generator_seed(rng):
    model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    basis = P.estimate_color_basis(rng.random((2, 8, 8, 3)))
    kw = dict(size=16, steps=3, progress=False)
    a = feature_visualization(model, objectives.channel("2", 1), decorrelate=basis, seed=np.random.default_rng(4), **kw)
    b = feature_visualization(model, objectives.channel("2", 1), decorrelate=basis, seed=4, **kw)
    c = feature_visualization(model, objectives.channel("2", 1), decorrelate=True, seed=4, **kw)
    assert_bitwise(a, b, what="Generator vs int seed")
    assert not np.array_equal(b, c)
    with pytest.raises(ValueError, match="decorrelate"):
        feature_visualization(model, objectives.channel("2", 1), decorrelate=np.zeros((3, 3)), **kw)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_step_gradient_matches_directional_differences(layout, rng):
    """One step's parameter gradient (FFT parameterization, colour mix, standard transforms, the
    model's truncated backward with injections, an image regularizer) against central
    differences of the objective along random directions (the model computes in float32)."""
    from cnnkit.explain import features as Fm
    from cnnkit.explain._model import explaining
    model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), layout=layout, seed=0)
    obj = (objectives.channel("2", 1) + 0.5 * objectives.neuron("1", 3) + 0.3 * objectives.diversity("2", 1.0)
           + 1e-3 * objectives.l2())
    with explaining(model):
        runner = Fm._Runner(model, obj, layout)
        ip = P.ImageParam((2, 3, 16, 16), "fft", True, np.random.default_rng(0), sd=0.3)
        tf = T.standard_transforms((16, 16))
        plan = tf.plan(tf.sample(np.random.default_rng(1), 2, (16, 16)), (16, 16))
        out_hw = tf.output_size((16, 16))
        xbuf = np.empty((2, 3) + out_hw if layout == "NCHW" else (2,) + out_hw + (3,), F32)
        theta = ip.params.copy()
        _, grad = Fm._step(runner, ip, plan, xbuf)
        grad = grad.astype(F64)

        def L(th):
            ip.params[...] = th
            return Fm._step(runner, ip, plan, xbuf)[0]

        for d in range(3):
            v = rng.standard_normal(theta.shape).astype(F32)
            h = 1e-2
            fd = (L(theta + h * v) - L(theta - h * v)) / (2 * h)
            an = float(np.sum(grad * v))
            scale = float(np.sum(np.abs(grad * v)))   # rounding grows with the terms, not their sum
            assert abs(fd - an) <= 1e-3 * scale, f"direction {d}: analytic {an}, differences {fd} (scale {scale})"


def test_progress_bar_and_image_only_objective(capsys):
    model = models.resnet_small(1, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    img = feature_visualization(model, objectives.channel("2", 0), size=16, steps=2, seed=0, progress=True)
    assert "feature visualization" in capsys.readouterr().err
    # a regularizer alone runs no model: l2 toward grey pulls the image to 0.5
    img, hist = feature_visualization(model, objectives.l2(), size=16, steps=30, seed=0, param="pixel", lr=0.1,
                                      progress=False, return_history=True, transforms="none")
    assert hist.values[-1] > hist.values[0]
    assert np.abs(img - 0.5).max() < 0.05


def test_objective_increases_and_history():
    model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    img, hist = feature_visualization(model, objectives.channel("2", 0), size=24, steps=40, seed=0, progress=False,
                                      return_history=True)
    assert hist.values[-5:].mean() > 2 * hist.values[:5].mean() > 0


def test_receptive_side():
    assert _receptive_side(models.resnet_small(1, 4)) == 25
    assert _receptive_side(models.resnet_small(1, 4), "1") == 3
    assert _receptive_side(models.resnet_small(1, 4), "2.conv1") == 5   # stem 3x3, then conv1's 3x3
    assert _receptive_side(nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))) == 5 + 1 + 4


def test_bad_input():
    model = models.resnet_small(1, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    ok = objectives.channel("2", 0)
    kw = dict(size=24, steps=2, progress=False)
    with pytest.raises(ValueError, match="layer: no layer 'nope'"):
        feature_visualization(model, objectives.channel("nope", 0), **kw)
    with pytest.raises(ValueError, match="k: channel 16 out of range"):
        feature_visualization(model, objectives.channel("2", 16), **kw)
    with pytest.raises(ValueError, match="k: channel 9"):
        feature_visualization(model, objectives.class_logit(9), **kw)
    with pytest.raises(ValueError, match="size"):
        feature_visualization(model, ok, size=6, steps=2, progress=False)   # receptive field 7
    with pytest.raises(ValueError, match="steps"):
        feature_visualization(model, ok, size=24, steps=0, progress=False)
    with pytest.raises(TypeError, match="steps"):
        feature_visualization(model, ok, size=24, steps=2.0, progress=False)
    with pytest.raises(ValueError, match="batch"):
        feature_visualization(model, ok, batch=0, **kw)
    with pytest.raises(ValueError, match="batch"):
        feature_visualization(model, objectives.channel("2", 0, batch=3), batch=2, **kw)
    with pytest.raises(ValueError, match="param"):
        feature_visualization(model, ok, param="cppn", **kw)
    with pytest.raises(ValueError, match="transforms"):
        feature_visualization(model, ok, transforms="lucid", **kw)
    with pytest.raises(TypeError, match="decorrelate"):
        feature_visualization(model, ok, decorrelate="yes", **kw)
    with pytest.raises(ValueError, match="lr"):
        feature_visualization(model, ok, lr=0.0, **kw)
    with pytest.raises(TypeError, match="objective"):
        feature_visualization(model, "channel 2", **kw)
    with pytest.raises(TypeError, match="model"):
        feature_visualization(lambda x: x, ok, **kw)
    with pytest.raises(TypeError, match="size"):
        feature_visualization(model, ok, size="big", steps=2, progress=False)
    with pytest.raises(ValueError, match="y: row"):
        feature_visualization(model, objectives.neuron("2", 0, y=40), **kw)
