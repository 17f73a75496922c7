"""cnnkit.explain.blocks: neuron groups (NMF), their attribution, semantic dictionaries,
top-activating examples and receptive fields, against NumPy brute force."""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import models, nn
from cnnkit.data import ArrayDataset
from cnnkit.explain import (Factorization, factorize_activations, group_attribution, semantic_dictionary,
                            top_activating)
from cnnkit.explain.blocks import ReceptiveField, receptive_field

LAYOUTS = ["NCHW", "NHWC"]


def _images(n, size=16, channels=1, layout="NCHW", seed=0):
    x = np.random.default_rng(seed).random((n, channels, size, size), dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _nchw(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _capture(model, x, layer, target=None):
    """float64 (N, C, h, w) activations and gradients of the target logit at ``layer`` (the
    model's own capture, independent of blocks)."""
    was = model.training
    model.eval()
    c = model.capture(layer)
    try:
        logits = model.forward(x)
        t = np.argmax(logits, 1) if target is None else np.broadcast_to(np.asarray(target), (len(x),))
        g = np.zeros_like(logits)
        g[np.arange(len(x)), t] = 1
        model.backward(g, input_grad=True)
        A, G = c.output, c.grad
    finally:
        model.release()
        model.train(was)
    lay = model.layers[0].layout
    return _nchw(A, lay).astype(np.float64), _nchw(G, lay).astype(np.float64)


# ---- factorize_activations -------------------------------------------------------------------------

def _planted(layout, r=3, C=12, seed=0):
    """A 1x1 conv with non-negative weights (C, r) then a ReLU on non-negative r-channel inputs:
    the activations W @ x have non-negative rank r; each position mostly shows one component."""
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(r, C, 1, bias=False, layout=layout, rng=rng)
    Wc = rng.random((C, r)) * (rng.random((C, r)) < 0.6) + 0.05 * np.eye(C, r)
    conv.params["weight"][...] = Wc[:, :, None, None]
    model = nn.Sequential(conv, nn.ReLU(), nn.GlobalAvgPool2d(layout=layout), nn.Linear(C, 2, rng=rng))
    comp = rng.integers(0, r, (6, 8, 8))
    x = np.eye(r)[comp] * rng.uniform(0.5, 1.5, (6, 8, 8, 1)) + 0.05 * rng.random((6, 8, 8, r))
    x = x.astype(np.float32)                                     # (N, h, w, r)
    xin = np.ascontiguousarray(x if layout == "NHWC" else x.transpose(0, 3, 1, 2))
    A_ref = np.einsum("nyxr,cr->ncyx", x.astype(np.float64), Wc.astype(np.float32).astype(np.float64))
    return model, xin, A_ref, Wc


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nmf_reconstructs_planted_groups(layout):
    model, x, A_ref, Wc = _planted(layout)
    f = factorize_activations(model, x, "1", 3, max_iter=2000, tol=1e-8)
    assert isinstance(f, Factorization) and f.layer == "1"
    assert f.maps.shape == (6, 3, 8, 8) and f.maps.dtype == np.float32
    assert f.directions.shape == (3, 12) and f.directions.dtype == np.float32
    assert f.maps.min() >= 0 and f.directions.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(f.directions, axis=1), 1, rtol=1e-6)
    # the stated tolerance: relative Frobenius error below 1e-3 at the non-negative rank
    rec = np.einsum("ngyx,gc->ncyx", f.maps.astype(np.float64), f.directions.astype(np.float64))
    err = np.linalg.norm(rec - A_ref) / np.linalg.norm(A_ref)
    assert err < 1e-3, err
    assert abs(f.reconstruction_error - err) < 1e-5
    np.testing.assert_allclose(f.reconstruction(), rec, rtol=1e-5, atol=1e-6)
    # the groups are the planted components' directions (up to order)
    ref = Wc / np.linalg.norm(Wc, axis=0)
    cos = f.directions.astype(np.float64) @ ref
    assert np.all(cos.max(axis=1) > 0.999), cos
    # ordered by total weight, largest first
    assert np.all(np.diff(f.maps.sum(axis=(0, 2, 3))) <= 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nmf_on_resnet_reports_its_error(layout):
    model = models.resnet_small(1, 4, widths=(8, 16), layout=layout, seed=1)
    x = _images(5, layout=layout, seed=2)
    A, _ = _capture(model, x, "2")
    errs = []
    for g in (1, 4, 8):
        f = factorize_activations(model, x, "2", g)
        rec = np.einsum("ngyx,gc->ncyx", f.maps.astype(np.float64), f.directions.astype(np.float64))
        err = np.linalg.norm(rec - A) / np.linalg.norm(A)
        assert abs(f.reconstruction_error - err) < 1e-5, (g, f.reconstruction_error, err)
        errs.append(err)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs
    again = factorize_activations(model, x, "2", 4)
    f = factorize_activations(model, x, "2", 4)
    np.testing.assert_array_equal(again.maps, f.maps)           # deterministic
    np.testing.assert_array_equal(again.directions, f.directions)
    assert model.training                                         # the mode is restored


# ---- group_attribution -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer", ["2", "3.bn1"])
def test_group_attributions_sum_to_the_layer_total(layout, layer):
    model = models.resnet_small(1, 4, widths=(8, 16), layout=layout, seed=3)
    x = _images(6, layout=layout, seed=4)
    target = np.array([0, 1, 2, 3, 1, 0])
    f = factorize_activations(model, x[:4], layer, 3)             # fitted on other images than some
    ga = group_attribution(model, x, layer, f, target, batch_size=4)
    A, G = _capture(model, x, layer, target)
    total = (A * G).sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(ga.targets, target)
    np.testing.assert_allclose(ga.total, total, rtol=1e-5, atol=1e-6)
    parts = np.concatenate([ga.attributions, ga.residual[:, None]], axis=1).astype(np.float64)
    scale = np.abs(parts).sum(1) + np.abs(total)
    assert np.all(np.abs(parts.sum(1) - total) <= 1e-6 * scale + 1e-7), (parts.sum(1), total)
    np.testing.assert_allclose(ga.spatial.sum(axis=(2, 3)), ga.attributions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ga.residual_spatial.sum(axis=(1, 2)), ga.residual, rtol=1e-5, atol=1e-6)
    # per position too: groups + residual = A . G
    per_pos = (A * G).sum(axis=1)
    np.testing.assert_allclose(ga.spatial.sum(1) + ga.residual_spatial, per_pos, rtol=1e-5, atol=1e-6)
    # the maps are the non-negative least-squares coefficients: no better non-negative fit nearby
    assert ga.maps.min() >= 0 and ga.maps.shape == (6, 3) + A.shape[2:]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_group_attribution_with_one_group_per_channel_is_per_channel_gradient_x_activation(layout):
    model = models.resnet_small(1, 4, widths=(8, 16), layout=layout, seed=5)
    x = _images(3, layout=layout, seed=6)
    ga = group_attribution(model, x, "2", np.eye(8), 2, max_iter=2000, tol=1e-10)
    A, G = _capture(model, x, "2", 2)
    np.testing.assert_allclose(ga.maps, A, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ga.attributions, (A * G).sum(axis=(2, 3)), rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(ga.residual) <= 1e-4 * np.abs(ga.total) + 1e-5)


def test_group_attribution_default_target_is_the_prediction():
    model = models.resnet_small(1, 4, widths=(8, 16), seed=7)
    x = _images(4, seed=8)
    ga = group_attribution(model, x, "2", np.abs(np.random.default_rng(0).random((2, 8))))
    np.testing.assert_array_equal(ga.targets, np.argmax(model.eval().forward(x), 1))


def test_zero_directions_and_zero_activations():
    model = models.resnet_small(1, 4, widths=(8, 16), seed=7)
    x = _images(2, seed=9)
    D = np.random.default_rng(0).random((3, 8))
    D[1] = 0
    ga = group_attribution(model, x, "2", D)
    assert np.all(ga.attributions[:, 1] == 0) and np.all(ga.maps[:, 1] == 0)
    np.testing.assert_allclose(ga.attributions.sum(1) + ga.residual, ga.total, rtol=1e-5, atol=1e-7)
    zeros = np.zeros_like(x)                 # batch norm at initialization: an all-zero layer
    f = factorize_activations(model, zeros, "2", 2)
    assert f.reconstruction_error == 0 and np.all(np.isfinite(f.maps)) and np.all(np.isfinite(f.directions))
    ga = group_attribution(model, zeros, "2", f)
    assert np.all(ga.attributions == 0) and np.all(ga.total == 0)


# ---- semantic_dictionary ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_semantic_dictionary_top_channels_per_position(layout):
    model = models.resnet_small(1, 4, widths=(8, 16), layout=layout, seed=9)
    x = _images(3, layout=layout, seed=10)
    sd = semantic_dictionary(model, x, "3", 3, visualize=False)
    A, _ = _capture(model, x, "3")
    P = A.transpose(0, 2, 3, 1)
    assert sd.channels.shape == P.shape[:3] + (3,) and sd.channels.dtype == np.int64
    for n, i, j in [(0, 0, 0), (1, 3, 5), (2, 7, 7), (2, 4, 1)]:
        ref = sorted(range(P.shape[3]), key=lambda c: (-P[n, i, j, c], c))[:3]
        assert sd.channels[n, i, j].tolist() == ref, (n, i, j)
        np.testing.assert_allclose(sd.values[n, i, j], P[n, i, j, ref], rtol=1e-6)
    np.testing.assert_array_equal(sd.distinct, np.unique(sd.channels))
    assert sd.images is None


def test_semantic_dictionary_visualizes_each_distinct_channel_once(monkeypatch):
    from cnnkit.explain import features, objectives
    model = models.resnet_small(1, 4, widths=(8, 16), seed=9)
    x = _images(2, 12, seed=10)
    calls = []
    real = features.feature_visualization

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "feature_visualization", counting)
    cache = {}
    sd = semantic_dictionary(model, x, "2", 2, size=12, steps=2, seed=0, cache=cache)
    M = sd.distinct.size
    assert len(calls) == M == len(cache) and sd.images.shape == (M, 12, 12, 1)
    assert sd.images.dtype == np.float32 and sd.images.min() >= 0 and sd.images.max() <= 1
    c = int(sd.distinct[-1])
    ref = real(model, objectives.channel("2", c), size=12, steps=2, seed=0, progress=False)[0]
    np.testing.assert_array_equal(sd.image_of(c), ref)
    again = semantic_dictionary(model, x, "2", 2, size=12, steps=2, seed=0, cache=cache)
    assert len(calls) == M                                          # served from the cache
    np.testing.assert_array_equal(again.images, sd.images)


# ---- receptive fields ------------------------------------------------------------------------------

def test_receptive_field_known_geometry():
    # stem 3x3 p1: size 3, offset -1; block "2" (two 3x3 p1, identity shortcut): 7, -3;
    # block "3": conv1 3x3 s2 p1 -> jump 2, offset -4, size 9; conv2 3x3 p1 at jump 2 -> offset -6,
    # size 13; its 1x1 s2 shortcut (offset -3, size 7) lies inside.
    model = models.resnet_small(1, 4, widths=(8, 16), seed=0)
    assert receptive_field(model, "0") == ReceptiveField((3, 3), (1, 1), (-1, -1))
    assert receptive_field(model, "2") == ReceptiveField((7, 7), (1, 1), (-3, -3))
    assert receptive_field(model, "3.conv1") == ReceptiveField((9, 9), (2, 2), (-4, -4))
    assert receptive_field(model, "3.downsample.0") == ReceptiveField((7, 7), (2, 2), (-3, -3))
    assert receptive_field(model, "3") == ReceptiveField((13, 13), (2, 2), (-6, -6))
    assert receptive_field(model, "3").box(2, 3) == (-2, 0, 11, 13)
    # dilation, asymmetric kernels and pooling
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Conv2d(1, 2, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(2, 1), rng=rng),
                      nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, rng=rng))
    # conv: size (5, 5), jump (2, 1), offset (-1, -2); pool 2: size (7, 6), jump (4, 2);
    # conv 3x3 p0: size (7 + 2*4, 6 + 2*2) = (15, 10), jump (4, 2), offset (-1, -2)
    assert receptive_field(m, "0") == ReceptiveField((5, 5), (2, 1), (-1, -2))
    assert receptive_field(m, "1") == ReceptiveField((7, 6), (4, 2), (-1, -2))
    assert receptive_field(m, "2") == ReceptiveField((15, 10), (4, 2), (-1, -2))


def _perturbation_boxes(model, x, layer, positions):
    """Brute force: per (i, j), the bounding box of the input pixels whose change (by +-3)
    changes any channel of ``layer`` at (i, j), clipped to the image (NCHW x of one image)."""
    H, W = x.shape[2:]
    A0, _ = _capture(model, x, layer)
    hit = {p: np.zeros((H, W), bool) for p in positions}
    for delta in (3.0, -3.0):
        batch = np.repeat(x, H * W, axis=0)
        batch[np.arange(H * W), :, np.arange(H * W) // W, np.arange(H * W) % W] += delta
        c = model.capture(layer)
        try:
            model.forward(batch)
            A = c.output
        finally:
            model.release()
        for (i, j) in positions:
            hit[i, j] |= (np.abs(A[:, :, i, j] - A0[0, :, i, j]).max(axis=1) > 1e-6).reshape(H, W)
    out = {}
    for p, h in hit.items():
        rows, cols = np.nonzero(h.any(1))[0], np.nonzero(h.any(0))[0]
        out[p] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return out


@pytest.mark.parametrize("build,norm,layers", [
    (models.resnet_small, "batch", ["2.bn1", "2", "3"]),
    (models.resnet_small, None, ["2.relu", "3.conv2"]),
    (models.resnext_small, "batch", ["2.bn2", "3"]),
    (models.resnext_small, None, ["2.bn1", "3"]),
    (models.mobilenet_small, "batch", ["3", "9", "13"]),
    (models.mobilenet_small, None, ["2", "7"]),
])
def test_receptive_field_matches_perturbation_support(build, norm, layers):
    model = build(1, 4, widths=(8, 16, 16) if build is not models.mobilenet_small else (8, 8, 16, 16),
                  norm=norm, seed=11).eval()
    if norm == "batch":   # non-trivial running statistics
        rng = np.random.default_rng(0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.buffers["running_mean"][...] = rng.normal(0, 0.1, m.buffers["running_mean"].shape)
    x = _images(1, 16, seed=12)
    names = dict(model.named_modules())
    for layer in layers:
        assert layer in names, layer
        rf = receptive_field(model, layer)
        A, _ = _capture(model, x, layer)
        h, w = A.shape[2:]
        positions = sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1), (h - 1, 0)})
        got = _perturbation_boxes(model, x, layer, positions)
        for i, j in positions:
            y0, x0, y1, x1 = rf.box(i, j)
            assert got[i, j] == (max(y0, 0), max(x0, 0), min(y1, 16), min(x1, 16)), (layer, i, j, rf)


# ---- top_activating --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_top_activating_matches_brute_force(layout):
    model = models.resnet_small(1, 4, widths=(8, 16), layout=layout, seed=13)
    data = _images(37, 16, layout=layout, seed=14)
    data[5] = data[9]                                                # a tie: the lower index first
    top = top_activating(model, ArrayDataset(data, np.zeros(37, np.int64)), "3", 5, 7, batch_size=6)
    A, _ = _capture(model, data, "3")
    m = A[:, 5].reshape(37, -1)
    best = m.max(1)
    order = sorted(range(37), key=lambda n: (-best[n], n))[:7]
    np.testing.assert_array_equal(top.indices, order)
    np.testing.assert_allclose(top.values, best[order], rtol=1e-6)
    np.testing.assert_array_equal(top.positions, np.stack(np.divmod(np.argmax(m[order], 1), A.shape[3]), 1))
    rf = receptive_field(model, "3")
    assert top.receptive_field == rf and top.crops.shape == (7, 13, 13, 1)
    padded = np.pad(_nchw(data, layout).transpose(0, 2, 3, 1), ((0, 0), (20, 20), (20, 20), (0, 0)))
    for r, n in enumerate(order):
        y0, x0, y1, x1 = rf.box(*top.positions[r])
        assert tuple(top.boxes[r]) == (y0, x0, y1, x1)
        np.testing.assert_array_equal(top.crops[r], padded[n, y0 + 20:y1 + 20, x0 + 20:x1 + 20])


def test_top_activating_whole_image_field_and_plain_arrays():
    model = models.resnet_small(1, 4, widths=(8, 16, 16), seed=15)
    data = _images(9, 8, seed=16)
    top = top_activating(model, data, "4", 0, 9)
    assert sorted(top.indices.tolist()) == list(range(9))
    assert np.all(np.diff(top.values) <= 0)


# ---- TorchModel --------------------------------------------------------------------------------------

def test_torch_model_blocks():
    torch = pytest.importorskip("torch")
    from cnnkit.explain import TorchModel
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    tm = TorchModel(net)
    x = _images(5, 12, seed=17)
    f = factorize_activations(tm, x, "3", 3)
    assert f.maps.shape == (5, 3, 6, 6)
    ga = group_attribution(tm, x, "3", f, 1)
    np.testing.assert_allclose(ga.attributions.sum(1) + ga.residual, ga.total, rtol=1e-5, atol=1e-5)
    assert receptive_field(tm, "3", (1, 12, 12)) == ReceptiveField((5, 5), (2, 2), (-2, -2))  # 3x3 p1, then 3x3 s2 p1
    top = top_activating(tm, x, "3", 2, 2)
    assert top.crops.shape == (2, 5, 5, 1)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    model = models.resnet_small(1, 4, widths=(8, 16), seed=0)
    x = _images(2)
    f = factorize_activations(model, x, "2", 2)
    cases = [
        (ValueError, "layer", lambda: factorize_activations(model, x, "9.conv", 2)),
        (TypeError, "layer", lambda: factorize_activations(model, x, 2, 2)),
        (ValueError, "layer", lambda: factorize_activations(model, x, "2.conv1", 2)),   # negative values
        (ValueError, "layer", lambda: factorize_activations(model, x, "5", 2)),          # not 4-D
        (ValueError, "n_groups", lambda: factorize_activations(model, x, "2", 0)),
        (ValueError, "n_groups", lambda: factorize_activations(model, x, "2", 9)),
        (TypeError, "n_groups", lambda: factorize_activations(model, x, "2", 2.0)),
        (ValueError, "method", lambda: factorize_activations(model, x, "2", 2, method="pca")),
        (TypeError, "x", lambda: factorize_activations(model, x.tolist(), "2", 2)),
        (TypeError, "x", lambda: factorize_activations(model, x.astype(np.float64), "2", 2)),
        (TypeError, "groups", lambda: group_attribution(model, x, "2", [[1.0] * 8])),
        (ValueError, "groups", lambda: group_attribution(model, x, "2", np.ones((2, 5)))),
        (ValueError, "groups", lambda: group_attribution(model, x, "2", -np.ones((2, 8)))),
        (ValueError, "groups", lambda: group_attribution(model, x, "3", f)),
        (ValueError, "target", lambda: group_attribution(model, x, "2", f, 7)),
        (TypeError, "target", lambda: group_attribution(model, x, "2", f, 1.5)),
        (ValueError, "k", lambda: semantic_dictionary(model, x, "2", 0, visualize=False)),
        (ValueError, "k", lambda: semantic_dictionary(model, x, "2", 9, visualize=False)),
        (TypeError, "steps", lambda: semantic_dictionary(model, x, "2", 1, steps=1.5)),
        (ValueError, "steps", lambda: semantic_dictionary(model, x, "2", 1, steps=0)),
        (ValueError, "channel", lambda: top_activating(model, x, "2", 8, 1)),
        (ValueError, "channel", lambda: top_activating(model, x, "2", -1, 1)),
        (TypeError, "channel", lambda: top_activating(model, x, "2", "3", 1)),
        (ValueError, "k", lambda: top_activating(model, x, "2", 0, 0)),
        (ValueError, "k", lambda: top_activating(model, x, "2", 0, 3)),
        (ValueError, "layer", lambda: top_activating(model, x, "nope", 0, 1)),
        (TypeError, "layer", lambda: top_activating(model, x, None, 0, 1)),
        (TypeError, "dataset", lambda: top_activating(model, [x], "2", 0, 1)),
        (ValueError, "layer", lambda: receptive_field(model, "4")),
        (TypeError, "model", lambda: receptive_field(object(), "4")),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()
    assert model.training
