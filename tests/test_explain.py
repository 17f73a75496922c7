"""cnnkit.explain against float64 references (tests/reference/explain.py) and the axioms.

* the math: IG quadrature, every CAM weighting, torch's resizing, occlusion's windows and
  averaging, RISE's masks and sum, Score-CAM, SmoothGrad's documented noise, on random data;
* axioms: IG completeness on a smooth model, the saliency of a linear model is its weights, a
  planted patch puts every method's maximum on it, constant maps give zeros, batched equals one
  image at a time, 1 and 2 threads give the same bits, NCHW equals NHWC;
* state: eval mode for the body, then modes, captures, ReLU rules, parameter gradients and
  buffers restored, also when the method raises;
* bad input: TypeError/ValueError naming the argument, inputs unmodified.
The torch parity tests (captum, pytorch-grad-cam) are in test_explain_torch.py.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import assert_bitwise, assert_close, num_threads, snapshot, assert_unchanged
from reference import explain as ref

from cnnkit import explain, models, nn
from cnnkit.explain import _model
from cnnkit.explain._resize import resize_maps
from cnnkit.explain.cam import cam_map
from cnnkit.explain.gradients import IG_METHODS, ig_nodes
from cnnkit.explain.perturbation import rise_grids, rise_masks

F32 = np.float32
CAMS = ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam"]


def small_resnet(layout="NCHW", seed=0, classes=4):
    m = models.resnet_small(3, classes, widths=(8, 16), blocks=(1, 1), layout=layout, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for _, mod in m.named_modules():   # non-trivial eval-mode statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.buffers["running_mean"][...] = rng.normal(0, 0.1, mod.num_features)
            mod.buffers["running_var"][...] = rng.uniform(0.5, 1.5, mod.num_features)
    return m


def images(rng, n=3, c=3, h=12, w=12):
    return rng.random((n, c, h, w), dtype=F32)


# ---- the math ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", IG_METHODS)
@pytest.mark.parametrize("steps", [2, 3, 16, 50])
def test_ig_nodes_match_reference(method, steps):
    a, w = ig_nodes(steps, method)
    ra, rw = ref.ig_nodes(steps, method)
    assert_close(a, ra, np.float64, what="alphas")
    assert_close(w, rw, np.float64, what="weights")
    # captum's trapezoid halves the end weights of 1/steps (alphas span [0, 1]): they sum to 1 - 1/steps
    assert abs(w.sum() - (1 - 1 / steps if method == "riemann_trapezoid" else 1)) < 1e-12


@pytest.mark.parametrize("method", CAMS)
@pytest.mark.parametrize("shape", [(2, 5, 4, 4), (1, 17, 3, 5), (3, 1, 7, 7)])
def test_cam_weightings_match_reference(method, shape, rng):
    A = np.maximum(rng.standard_normal(shape), 0).astype(F32)  # post-ReLU activations
    G = (rng.standard_normal(shape) * 1e-2).astype(F32)
    G[rng.random(shape) < 0.2] = 0                              # exact zeros (Grad-CAM++'s where)
    got = cam_map(A, G, method)
    want = ref.cam(A, G, method)
    if method == "eigen_cam":  # the SVD's sign is numpy's; the reference takes either
        want = want if np.allclose(np.maximum(want, 0), got, atol=1e-5) else -want
        want = np.maximum(want, 0)
    assert_close(got, want, np.float32, length=shape[1] * shape[2] * shape[3], what=method)


@pytest.mark.parametrize("mode,ac", [("bilinear", False), ("bilinear", True), ("nearest", False)])
@pytest.mark.parametrize("src,dst", [((4, 4), (16, 16)), ((3, 5), (12, 13)), ((1, 2), (5, 7)), ((7, 7), (7, 7))])
def test_resize_matches_torch_formula(mode, ac, src, dst, rng):
    m = rng.standard_normal((2,) + src)
    got = resize_maps(m, dst, mode=mode, align_corners=ac)
    want = np.stack([ref.resize(mi, *dst, mode=mode, align_corners=ac) for mi in m])
    assert_close(got, want, np.float64, length=4, what=f"{mode} ac={ac}")


def test_occlusion_matches_reference_windows_clipped(rng):
    C, H, W = 2, 11, 9
    model = ref.LinearModel(rng.standard_normal((3, C * H * W)), rng.standard_normal(3))
    x = rng.random((2, C, H, W), dtype=F32)
    base = rng.random((2, C, H, W), dtype=F32)
    for window, stride in [((4, 3), (3, 2)), ((11, 9), (1, 1)), ((5, 5), (5, 5)), ((1, 1), (1, 1))]:
        got = explain.occlusion(model, x, 1, window=window, stride=stride, baseline=base)
        for n in range(2):
            def f(img, n=n):
                return model.forward(img[None].astype(F32))[0, 1].astype(np.float64)
            want = ref.occlusion(f, x[n], 1, window, stride, base[n])
            assert_close(got[n], want, np.float32, length=C * H * W, what=f"occlusion {window} {stride} image {n}")


def test_rise_masks_and_sum_match_reference(rng):
    model = small_resnet()
    x = images(rng, 2, h=10, w=13)
    cell, p, M = (4, 3), 0.4, 12
    got = explain.rise(model, x, [0, 2], n_masks=M, cell=cell, p=p, seed=5, batch_size=7)
    grids, shifts = rise_grids(M, (3, 5), p, cell, np.random.default_rng(5))
    masks = rise_masks(grids, shifts, (10, 13), cell)
    for i in range(M):
        assert_close(masks[i], ref.rise_mask(grids[i], shifts[i], (10, 13), cell), np.float32, what=f"mask {i}")
    with explain.explaining(model):
        for n, t in enumerate([0, 2]):
            def prob(img, t=t):
                z = model.forward(img[None].astype(F32))[0].astype(np.float64)
                e = np.exp(z - z.max())
                return e[t] / e.sum()
            want = ref.rise(prob, x[n].astype(np.float64), masks.astype(np.float64), p)
            assert_close(got[n], want, np.float32, length=M, what=f"rise image {n}")


def test_score_cam_matches_reference(rng):
    model = small_resnet()
    x = images(rng, 2)
    got = explain.score_cam(model, x, [1, 3], layer="3", upsample=False, normalize=False, batch_size=5)
    c = model.capture("3")
    with explain.explaining(model):
        model.forward(x)
        A = c.output.astype(np.float64)
        model.release()
        for n, t in enumerate([1, 3]):
            scores = []
            for k in range(A.shape[1]):
                up = ref.resize(A[n, k], 12, 12, align_corners=True)
                mk = (up - up.min()) / (up.max() - up.min() + 1e-8)
                scores.append(model.forward((x[n] * mk.astype(F32))[None])[0, t])
            s = np.exp(np.array(scores, np.float64) - max(scores))
            w = s / s.sum()
            want = np.maximum(np.tensordot(w, A[n], axes=(0, 0)), 0)
            assert_close(got[n], want, np.float32, length=A.shape[1], what=f"score_cam image {n}")


def test_smoothgrad_follows_documented_noise(rng):
    model = small_resnet()
    x = images(rng, 2)
    for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        got = explain.smoothgrad(model, x, 1, n_samples=4, noise=0.2, kind=kind, seed=3, batch_size=3)
        r = np.random.default_rng(3)
        with explain.explaining(model):
            s1 = np.zeros(x.shape)
            s2 = np.zeros(x.shape)
            for n in range(2):
                eps = r.standard_normal((4,) + x.shape[1:]) * (0.2 * (float(x[n].max()) - float(x[n].min())))
                for j in range(4):
                    model.forward((x[n] + eps[j].astype(F32))[None])
                    g = np.zeros((1, 4), F32)
                    g[0, 1] = 1
                    gx = model.backward(g, input_grad=True)[0].astype(np.float64)
                    s1[n] += gx / 4
                    s2[n] += gx * gx / 4
        want = {"smoothgrad": s1, "smoothgrad_sq": s2, "vargrad": s2 - s1 * s1}[kind]
        assert_close(got, want, np.float32, length=4, what=kind)


# ---- axioms --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", IG_METHODS)
def test_integrated_gradients_complete_on_smooth_model(method, rng):
    D = 3 * 6 * 6
    model = ref.SoftplusNet(rng.standard_normal((20, D)) * 0.3, rng.standard_normal(20), rng.standard_normal((5, 20)))
    x = rng.random((3, 3, 6, 6), dtype=F32)
    steps = 256
    attr, delta = explain.integrated_gradients(model, x, [0, 2, 4], steps=steps, method=method, return_delta=True,
                                               baseline=0.1)
    fx = model.logits64(x.astype(np.float64))[np.arange(3), [0, 2, 4]]
    fb = model.logits64(np.full(x.shape, np.float32(0.1)).astype(np.float64))[np.arange(3), [0, 2, 4]]
    gap = np.abs(fx - fb)
    if method in ("gausslegendre", "riemann_middle"):   # the others err by O(1/steps), not relative to the gap
        assert np.all(np.abs(delta) < 1e-3 * gap), (delta, gap)
    assert_close(attr.reshape(3, -1).sum(1) - (fx - fb), delta, np.float32, length=D, what="delta")


def test_saliency_of_linear_model_is_its_weights(rng):
    C, H, W = 2, 5, 4
    Wm = rng.standard_normal((3, C * H * W))
    model = ref.LinearModel(Wm, rng.standard_normal(3))
    x = rng.random((2, C, H, W), dtype=F32)
    g = explain.saliency(model, x, [2, 0], abs=False, reduce=None)
    assert_close(g[0], Wm[2].reshape(C, H, W), np.float32, what="weights of class 2")
    assert_close(g[1], Wm[0].reshape(C, H, W), np.float32, what="weights of class 0")
    s = explain.saliency(model, x, 2)
    assert_close(s[0], np.abs(Wm[2].reshape(C, H, W)).max(axis=0), np.float32, what="max |w|")
    gi = explain.gradient_x_input(model, x, 1)
    assert_close(gi, x * Wm[1].reshape(C, H, W), np.float32, what="gradient x input")
    # IG of a linear model with a zero baseline is gradient x input exactly
    ig = explain.integrated_gradients(model, x, 1, steps=7)
    assert_close(ig, gi, np.float32, length=7, what="IG of a linear model")


def planted_model(layout="NCHW"):
    """Class 1 fires on a bright 3x3 window: conv (all ones, bias -5) - ReLU - GAP - Linear."""
    conv = nn.Conv2d(1, 2, 3, padding=1, layout=layout)
    conv.params["weight"][...] = 0
    conv.params["weight"][0] = 1.0
    conv.params["bias"][...] = [-5.0, 0.0]
    lin = nn.Linear(2, 2)
    lin.params["weight"][...] = [[-1.0, 0.0], [10.0, 0.0]]
    lin.params["bias"][...] = [0.5, 0.0]
    return nn.Sequential(conv, nn.ReLU(), nn.GlobalAvgPool2d(layout=layout), lin)


def test_planted_evidence_every_method_points_at_the_patch(rng):
    N, S = 4, 24
    x = (rng.random((N, 1, S, S)) * 0.1).astype(F32)
    boxes = []
    for n in range(N):
        y0, x0 = rng.integers(2, S - 8, 2)
        x[n, 0, y0:y0 + 6, x0:x0 + 6] = 1.0
        boxes.append((y0, x0, y0 + 6, x0 + 6))
    model = planted_model()
    assert np.all(np.argmax(model.forward(x), axis=1) == 1)
    kws = {"smoothgrad": dict(n_samples=8, noise=0.05, seed=0), "rise": dict(n_masks=1000, cell=3, seed=0),
           "occlusion": dict(window=4, stride=2), "integrated_gradients": dict(steps=16)}
    for name, fn in explain.METHODS.items():
        if name == "deconvnet":   # ignores the forward ReLU masks: no location here (no pooling switches)
            continue
        kw = dict(kws.get(name, {}))
        if name in CAMS + ["score_cam", "guided_grad_cam"]:
            kw["layer"] = "1"
        maps = explain.as_maps(fn(model, x, 1, **kw))
        r = 3 if name == "rise" else 1   # RISE's maps are smooth at the scale of its cells
        for n, (y0, x0, y1, x1) in enumerate(boxes):
            iy, ix = np.unravel_index(np.argmax(maps[n]), maps[n].shape)
            assert y0 - r <= iy < y1 + r and x0 - r <= ix < x1 + r, \
                f"{name}: image {n} maximum at {(iy, ix)}, patch {(y0, x0, y1, x1)}"


@pytest.mark.parametrize("method", CAMS + ["score_cam"])
def test_constant_maps_normalize_to_zeros(method, rng):
    model = planted_model()
    x = (rng.random((2, 1, 10, 10)) * 0.1).astype(F32)     # no patch: the ReLU layer is all zero
    maps = explain.METHODS[method](model, x, 1, layer="1")
    assert maps.shape == (2, 10, 10)
    assert np.all(np.isfinite(maps)) and np.all(maps == 0)


BATCHABLE = {
    "saliency": {}, "gradient_x_input": {}, "guided_backprop": {}, "deconvnet": {},
    "integrated_gradients": dict(steps=6), "smoothgrad": dict(n_samples=3, seed=1),
    "occlusion": dict(window=4, stride=3), "rise": dict(n_masks=20, cell=4, seed=2), "score_cam": {},
}


@pytest.mark.parametrize("name", sorted(BATCHABLE))
def test_chunked_equals_unchunked_and_per_image(name, rng):
    model = small_resnet()
    x = images(rng, 3)
    fn = explain.METHODS[name]
    kw = BATCHABLE[name]
    full = fn(model, x, [0, 1, 2], **kw)
    one = fn(model, x, [0, 1, 2], batch_size=1, **kw)
    assert_close(one, full, np.float32, length=64, what=f"{name} batch_size=1")
    if name not in ("smoothgrad", "rise"):      # their draws depend on the batch, by design
        for n in range(3):
            alone = fn(model, x[n:n + 1], n, **kw)
            assert_close(alone[0], full[n], np.float32, length=64, what=f"{name} image {n} alone")


@pytest.mark.parametrize("name", sorted(explain.METHODS))
def test_thread_count_invariant(name, rng):
    model = small_resnet()
    x = images(rng, 2)
    kw = {**BATCHABLE.get(name, {})}
    with num_threads(1):
        a = explain.METHODS[name](model, x, **kw)
    with num_threads(2):
        b = explain.METHODS[name](model, x, **kw)
    assert_bitwise(b, a, f"{name} at 2 threads")


@pytest.mark.parametrize("name", ["saliency", "grad_cam", "occlusion", "integrated_gradients", "guided_backprop",
                                  "eigen_cam", "score_cam"])
def test_nhwc_model_equals_nchw_model(name, rng):
    a, b = small_resnet("NCHW"), small_resnet("NHWC")
    b.load_state_dict(a.state_dict())
    x = images(rng, 2)
    kw = {**BATCHABLE.get(name, {})}
    ra = explain.METHODS[name](a, x, **kw)
    rb = explain.METHODS[name](b, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), **kw)
    if rb.ndim == 4:
        rb = rb.transpose(0, 3, 1, 2)
    assert_close(rb, ra, np.float32, length=256, what=f"{name} NHWC vs NCHW")


def test_default_layer_is_last_4d_block():
    model = small_resnet()
    x = np.zeros((1, 3, 12, 12), F32)
    assert _model.resolve_layer(model, None, x) == "3"


# ---- state ---------------------------------------------------------------------------------------

def _state(model):
    return ([m.training for m in model.modules()], [getattr(m, "relu_mode", None) for m in model.modules()],
            [m.param_grads for m in model.modules()], [list(m._captures) for m in model.modules()],
            model.arena[1].copy(), model.arena[0].copy(), model.state_dict())


def _assert_same_state(model, before):
    after = _state(model)
    assert after[0] == before[0], "training modes changed"
    assert after[1] == before[1], "ReLU rules changed"
    assert after[2] == before[2], "param_grads changed"
    assert after[3] == before[3], "captures changed"
    assert_bitwise(after[4], before[4], "gradient arena")
    assert_bitwise(after[5], before[5], "parameters")
    for k in before[6]:
        assert_bitwise(after[6][k], before[6][k], f"state {k}")


@pytest.mark.parametrize("name", sorted(explain.METHODS))
def test_state_restored_after_method_and_after_error(name, rng):
    model = small_resnet()
    x = images(rng, 2)
    model.train()
    model[1].train(False)                 # a mixed mode must come back as it was
    cap = model.capture("2")
    model.forward(x)
    model.backward(np.ones((2, 4), F32))  # gradients a training loop is about to use
    before = _state(model)
    kw = {**BATCHABLE.get(name, {})}
    out = explain.METHODS[name](model, x, **kw)
    assert np.all(np.isfinite(out))
    _assert_same_state(model, before)
    with pytest.raises(ValueError, match="target"):
        explain.METHODS[name](model, x, 99, **kw)
    _assert_same_state(model, before)
    assert cap in model[2]._captures


def test_methods_run_in_eval_mode(rng):
    model = small_resnet()
    model.train()
    x = images(rng, 2)
    a = explain.saliency(model, x, 0)
    model.eval()
    b = explain.saliency(model, x, 0)
    assert_bitwise(a, b, "saliency in train vs eval mode")
    assert model.training is False


# ---- the ReLU rules (nn) -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["relu", "batch", "group"])
def test_deconvnet_rule(kind, rng):
    C = 4
    x = rng.standard_normal((2, C, 3, 3)).astype(F32)
    g = rng.standard_normal((2, C, 3, 3)).astype(F32)
    if kind == "relu":
        m = nn.ReLU()
        m.forward(x)
        m.set_relu_backward("deconvnet")
        assert_bitwise(m.backward(g), np.maximum(g, 0), "deconvnet ReLU")
        return
    fused = (nn.BatchNorm2d(C, activation="relu") if kind == "batch" else nn.GroupNorm(2, C, activation="relu"))
    plain = (nn.BatchNorm2d(C) if kind == "batch" else nn.GroupNorm(2, C))
    w, b = rng.uniform(0.5, 2, C), rng.normal(0, 1, C)
    for m in (fused, plain):
        m.params["weight"][...] = w
        m.params["bias"][...] = b
        m.eval()
    fused.forward(x)
    plain.forward(x)
    fused.set_relu_backward("deconvnet")
    assert_close(fused.backward(g), plain.backward(np.maximum(g, 0)), np.float32, length=18, what=f"deconvnet {kind}")


def test_set_relu_backward_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        small_resnet().set_relu_backward("guided_deconv")


def test_param_grads_off_leaves_arena_and_gives_same_input_gradient(rng):
    model = small_resnet()
    model.eval()
    x = images(rng, 2)
    g = rng.standard_normal((2, 4)).astype(F32)
    model.forward(x)
    a = model.backward(g, input_grad=True).copy()
    model.zero_grad()
    model.set_param_grads(False)
    model.forward(x)
    b = model.backward(g, input_grad=True).copy()
    assert_bitwise(b, a, "input gradient without parameter gradients")
    assert not np.any(model.arena[1]), "parameter gradients written with param_grads off"


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(explain.METHODS))
def test_bad_input_names_the_argument(name, rng):
    model = small_resnet()
    x = images(rng, 2)
    snaps = snapshot(x)
    fn = explain.METHODS[name]
    with pytest.raises(ValueError, match="target"):
        fn(model, x, 4)
    with pytest.raises(ValueError, match="target"):
        fn(model, x, [0, -1])
    with pytest.raises(ValueError, match="target"):
        fn(model, x, [0, 1, 2])
    with pytest.raises(TypeError, match="target"):
        fn(model, x, 1.5)
    with pytest.raises(TypeError, match="x"):
        fn(model, x.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        fn(model, x.tolist())
    with pytest.raises(ValueError, match="x"):
        fn(model, x[0])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        fn(model, bad)
    if "batch_size" in fn.__code__.co_varnames:
        with pytest.raises(ValueError, match="batch_size"):
            fn(model, x, batch_size=0)
        with pytest.raises(TypeError, match="batch_size"):
            fn(model, x, batch_size=2.0)
    if "layer" in fn.__code__.co_varnames:
        with pytest.raises(ValueError, match="layer.*'3.conv1'"):
            fn(model, x, layer="nope")
        with pytest.raises(ValueError, match="layer"):
            fn(model, x, layer="5")                           # (N, K) output: not 4-D
    assert_unchanged([x], snaps, "x")


def test_bad_method_arguments(rng):
    model = small_resnet()
    x = images(rng, 1)
    with pytest.raises(ValueError, match="window"):
        explain.occlusion(model, x, window=(13, 2))
    with pytest.raises(ValueError, match="stride"):
        explain.occlusion(model, x, window=4, stride=5)
    with pytest.raises(TypeError, match="window"):
        explain.occlusion(model, x, window="4")
    with pytest.raises(ValueError, match="baseline"):
        explain.occlusion(model, x, baseline=np.zeros((2, 2), F32))
    with pytest.raises(ValueError, match="steps"):
        explain.integrated_gradients(model, x, steps=1, method="riemann_left")
    with pytest.raises(ValueError, match="method"):
        explain.integrated_gradients(model, x, method="simpson")
    with pytest.raises(ValueError, match="kind"):
        explain.smoothgrad(model, x, kind="sg")
    with pytest.raises(ValueError, match="noise"):
        explain.smoothgrad(model, x, noise=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        explain.smoothgrad(model, x, n_samples=0)
    with pytest.raises(ValueError, match="p"):
        explain.rise(model, x, p=0.0)
    with pytest.raises(ValueError, match="n_masks"):
        explain.rise(model, x, n_masks=0)
    with pytest.raises(ValueError, match="reduce"):
        explain.saliency(model, x, reduce="min")
    with pytest.raises(TypeError, match="upsample"):
        explain.grad_cam(model, x, upsample=1)
    with pytest.raises(ValueError, match="interpolate"):
        explain.guided_grad_cam(model, x, interpolate="cubic")
    with pytest.raises(TypeError, match="model"):
        explain.saliency(object(), x)


def test_forward_only_model_rejected_by_gradient_methods_and_accepted_by_perturbation(rng):
    class ForwardOnly:
        def __init__(self, lin):
            self.lin = lin

        def forward(self, x):
            return self.lin.forward(x)

    lin = ref.LinearModel(rng.standard_normal((2, 3 * 12 * 12)), np.zeros(2))
    m = ForwardOnly(lin)
    x = images(rng, 2)
    with pytest.raises(TypeError, match="backward"):
        explain.saliency(m, x)
    with pytest.raises(TypeError, match="capture"):
        explain.grad_cam(m, x)
    a = explain.occlusion(m, x, window=4, stride=4)
    b = explain.occlusion(lin, x, window=4, stride=4)
    assert_bitwise(a, b, "forward-only occlusion")


def test_training_buffers_untouched_and_explain_buffers_released(rng):
    model = small_resnet()
    x = images(rng, 2)
    model.forward(x)
    before = {id(m): (m._ws, {k: id(v) for k, v in m._ws.items()}) for m in model.modules()}
    explain.integrated_gradients(model, x, steps=4)
    for m in model.modules():
        ws, ids = before[id(m)]
        assert m._ws is ws and {k: id(v) for k, v in m._ws.items()} == ids, "training buffers replaced"
    assert any(m.__dict__.get("_explain_ws") for m in model.modules())
    explain.release_buffers(model)
    assert not any("_explain_ws" in m.__dict__ for m in model.modules())
    with pytest.raises(TypeError, match="model"):
        explain.release_buffers(object())


# ---- pictures ------------------------------------------------------------------------------------

def test_overlay_and_plot(rng):
    from matplotlib.figure import Figure
    x = images(rng, 2)
    maps = rng.random((2, 12, 12)).astype(F32)
    ov = explain.overlay(x, maps, alpha=0.5)
    assert ov.shape == (2, 12, 12, 3) and ov.dtype == np.uint8
    rgb = importlib.import_module("cnnkit.explain.plot")._images_rgb(x)   # the module, not explain.plot
    assert_bitwise(explain.overlay(x, maps, alpha=0.0), np.round(rgb * 255).astype(np.uint8), "alpha 0 is the image")
    u8 = (rng.random((2, 12, 12, 1)) * 255).astype(np.uint8)               # uint8 NHWC, one channel
    assert explain.overlay(u8, maps).shape == (2, 12, 12, 3)
    assert explain.overlay(x, np.zeros((2, 12, 12), F32)).dtype == np.uint8   # a constant map: no NaN
    fig = explain.plot(x, {"grad_cam": maps, "saliency": rng.random(x.shape).astype(F32)}, labels=["a", "b"])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["image", "grad cam", "saliency"]


def test_pictures_bad_input(rng):
    x = images(rng, 2)
    maps = rng.random((2, 12, 12)).astype(F32)
    with pytest.raises(ValueError, match="alpha"):
        explain.overlay(x, maps, alpha=1.5)
    with pytest.raises(ValueError, match="maps"):
        explain.overlay(x, maps[:, :6])
    with pytest.raises(ValueError, match="cmap"):
        explain.overlay(x, maps, cmap="no-such-map")
    with pytest.raises(ValueError, match="images"):
        explain.overlay(x[:, :2], maps)
    with pytest.raises(TypeError, match="attributions"):
        explain.plot(x, [maps])
    with pytest.raises(TypeError, match="enabled"):
        small_resnet().set_param_grads("no")
