"""cnnkit.explain.metrics: deletion/insertion, the pointing games and the randomization test.

* deletion / insertion: curves and AUCs against a float64 plain-loop reference (pixel order by
  Python's sort on (-value, index), perturbed images built pixel by pixel, softmax, explicit
  trapezoids) on a fixed linear model in both layouts and on a small cnnkit network, with the
  zero, blur (a hand-written Gaussian blur with reflected edges), constant and array baselines,
  ties in the map, steps that do and do not divide H * W; invariants: endpoints are the
  probabilities of x and the baseline, the contribution map of a two-class linear model beats
  random maps in both directions, batch_size 1 equals the default, no forward ever sees more
  than batch_size images, an input-shaped attribution equals its as_maps reduction;
* pointing game: masks, boxes and a brute-force distance reference for the tolerance, the
  boundary (distance == tolerance hits), the first argmax, constant maps and empty masks miss;
* energy pointing game: hand values, a loop reference, boxes == their masks, non-positive maps;
* randomization test: a map that ignores the model correlates 1 and fails, empty layers fail,
  saliency maps decorrelate and pass, the default layer order, same seed same result; weights,
  gradients, running statistics and modes bit-identical afterwards, also when the method raises;
* bad input: TypeError / ValueError naming the argument, inputs unmodified.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from cnnkit import explain, nn
from cnnkit.explain import metrics as M

F32, F64 = np.float32, np.float64


# ---- models --------------------------------------------------------------------------------------

class LinearModel:
    """logits = flatten(x in NCHW order) @ w + b: a fixed linear map with only ``forward``. Records
    the batch size of every call."""

    def __init__(self, chw, K=3, seed=0, layout="NCHW", w=None):
        rng = np.random.default_rng(seed)
        d = int(np.prod(chw))
        self.w = (rng.standard_normal((d, K)) * 2 / math.sqrt(d)).astype(F32) if w is None else w.astype(F32)
        self.b = (rng.standard_normal(self.w.shape[1]) * 0.1).astype(F32)
        self.layout = layout
        self.batches = []

    def _nchw(self, x):
        return x if self.layout == "NCHW" else x.transpose(0, 3, 1, 2)

    def forward(self, x):
        self.batches.append(x.shape[0])
        return np.ascontiguousarray(self._nchw(x)).reshape(len(x), -1) @ self.w + self.b

    def logits64(self, img_chw):
        return img_chw.reshape(-1).astype(F64) @ self.w.astype(F64) + self.b.astype(F64)


def small_net(seed=0, layout="NCHW", bn=True):
    rng = np.random.default_rng(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1, layout=layout, rng=rng)]
    if bn:
        layers.append(nn.BatchNorm2d(6, layout=layout))
    layers += [nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, layout=layout, rng=rng), nn.ReLU(),
               nn.GlobalAvgPool2d(layout=layout), nn.Linear(6, 4, rng=rng)]
    model = nn.Sequential(*layers)
    if bn:  # non-trivial running statistics
        model.train()
        model.forward(np.random.default_rng(seed + 1).standard_normal((8, 3, 10, 10) if layout == "NCHW"
                                                                        else (8, 10, 10, 3)).astype(F32))
    return model


def images(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=F32)


# ---- float64 references -----------------------------------------------------------------------------

def ref_blur(img_chw, sigma):
    """Gaussian blur of each channel: a separable kernel exp(-t^2 / 2 sigma^2), |t| <= 4 sigma
    rounded, normalized; edges reflected (d c b a | a b c d)."""
    r = int(4 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    k = np.exp(-t ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    out = np.empty(img_chw.shape, F64)
    C, H, W = img_chw.shape
    for c in range(C):
        a = np.pad(img_chw[c].astype(F64), r, mode="symmetric")
        rows = np.zeros((H + 2 * r, W))
        for j in range(W):
            rows[:, j] = sum(k[q] * a[:, j + q] for q in range(2 * r + 1))
        for i in range(H):
            out[c, i] = sum(k[q] * rows[i + q] for q in range(2 * r + 1))
    return out


def ref_curve(prob, x_chw, base_chw, m, steps, mode):
    """(curve, auc) of one image: ``prob(img_chw)`` at each step, trapezoids by hand."""
    H, W = m.shape
    n = H * W
    order = sorted(range(n), key=lambda p: (-float(m.flat[p]), p))
    curve, frac = [], []
    for k in range(steps + 1):
        count = (k * n) // steps
        img = (x_chw if mode == "deletion" else base_chw).astype(F64).copy()
        src = base_chw if mode == "deletion" else x_chw
        for p in order[:count]:
            y, xx = divmod(p, W)
            img[:, y, xx] = src[:, y, xx]
        curve.append(prob(img))
        frac.append(count / n)
    auc = sum((frac[k + 1] - frac[k]) * (curve[k] + curve[k + 1]) / 2 for k in range(steps))
    return np.array(curve), auc


def softmax_prob(logits, t):
    z = np.asarray(logits, F64)
    e = np.exp(z - z.max())
    return e[t] / e.sum()


def to_chw(a, layout):
    return a if layout == "NCHW" else a.transpose(2, 0, 1)


# ---- deletion / insertion ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("layout, steps, baseline, target", [
    ("NCHW", None, "zero", None), ("NHWC", 7, "zero", 1), ("NCHW", 30, "blur", [0, 2, 1]),
    ("NHWC", 1, 0.25, None), ("NCHW", 30, "array", 2), ("NHWC", 11, "blur", None)])
def test_curves_match_reference(mode, layout, steps, baseline, target):
    C, H, W, N = 2, 5, 6, 3
    shape = (N, C, H, W) if layout == "NCHW" else (N, H, W, C)
    x = images(shape, 1)
    model = LinearModel((C, H, W), K=3, seed=2, layout=layout)
    m = np.round(np.random.default_rng(3).standard_normal((N, H, W)) * 2) / 2   # many ties
    base_arr = images(shape, 4) if baseline == "array" else None
    fn = M.deletion_auc if mode == "deletion" else M.insertion_auc
    auc, curves = fn(model, x, m, target, steps=steps, baseline=base_arr if baseline == "array" else baseline,
                     return_curves=True)
    S = min(H * W, 64) if steps is None else steps
    assert auc.dtype == F64 and auc.shape == (N,) and curves.dtype == F64 and curves.shape == (N, S + 1)
    logits = [model.logits64(to_chw(x[i], layout)) for i in range(N)]
    for i in range(N):
        t = int(np.argmax(logits[i])) if target is None else (target if isinstance(target, int) else target[i])
        xc = to_chw(x[i], layout).astype(F64)
        if baseline == "zero":
            bc = np.zeros_like(xc)
        elif baseline == "blur":
            bc = ref_blur(xc, 0.05 * max(H, W))
        elif baseline == "array":
            bc = to_chw(base_arr[i], layout).astype(F64)
        else:
            bc = np.full_like(xc, baseline)
        ref, ref_auc = ref_curve(lambda img: softmax_prob(model.logits64(img), t), xc, bc, m[i], S, mode)
        np.testing.assert_allclose(curves[i], ref, rtol=1e-5, atol=1e-6, err_msg=f"image {i}")
        np.testing.assert_allclose(auc[i], ref_auc, rtol=1e-5, atol=1e-6, err_msg=f"image {i}")


def test_curves_on_a_cnnkit_network():
    model = small_net(0)
    x = images((2, 3, 7, 7), 5)
    m = np.random.default_rng(6).random((2, 7, 7))
    before = model.state_dict()
    for mode, fn in (("deletion", M.deletion_auc), ("insertion", M.insertion_auc)):
        model.train()
        auc, curves = fn(model, x, m, target=[1, 3], steps=10, baseline="blur", return_curves=True)
        assert model.training  # the mode is restored
        model.eval()           # the reference runs the network as the metric does: in eval mode
        for i, t in enumerate([1, 3]):
            prob = lambda img: softmax_prob(model.forward(img[None].astype(F32))[0], t)
            xc = x[i].astype(F64)
            ref, ref_auc = ref_curve(prob, xc, ref_blur(xc, 0.05 * 7), m[i], 10, mode)
            np.testing.assert_allclose(curves[i], ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(auc[i], ref_auc, rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_endpoints_and_direction():
    # two classes with opposite weights: p(class 0) = sigmoid(2 w.x + b0 - b1) rises with the sum of the
    # per-pixel contributions x * w, so taking the largest contributions first is optimal at every step
    C, H, W, N = 2, 6, 6, 4
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal(C * H * W).astype(F32) * 0.3
    model = LinearModel((C, H, W), w=np.stack([w0, -w0], axis=1))
    x = images((N, C, H, W), 8)
    contrib = (x * w0.reshape(C, H, W)).sum(axis=1)
    dele, dc = M.deletion_auc(model, x, contrib, target=0, steps=36, return_curves=True)
    ins, ic = M.insertion_auc(model, x, contrib, target=0, steps=36, return_curves=True)
    logits = model.forward(x)
    p_x = np.array([softmax_prob(l, 0) for l in logits])
    p_0 = softmax_prob(model.forward(np.zeros((1, C, H, W), F32))[0], 0)
    np.testing.assert_allclose(dc[:, 0], p_x, rtol=1e-6)
    np.testing.assert_allclose(ic[:, -1], p_x, rtol=1e-6)
    np.testing.assert_allclose(dc[:, -1], p_0, rtol=1e-6)
    np.testing.assert_allclose(ic[:, 0], p_0, rtol=1e-6)
    for s in range(5):
        other = rng.standard_normal((N, H, W))
        assert np.all(dele <= M.deletion_auc(model, x, other, target=0, steps=36) + 1e-9)
        assert np.all(ins >= M.insertion_auc(model, x, other, target=0, steps=36) - 1e-9)
    # the reversed ranking is the worst: deletion then rises, insertion falls
    assert np.all(M.deletion_auc(model, x, -contrib, target=0, steps=36) > dele)
    assert np.all(M.insertion_auc(model, x, -contrib, target=0, steps=36) < ins)


@pytest.mark.parametrize("fn", [M.deletion_auc, M.insertion_auc])
def test_batched_equals_unbatched_and_bounded(fn):
    N, C, H, W = 3, 2, 4, 5
    x = images((N, C, H, W), 9)
    m = np.random.default_rng(10).random((N, H, W))
    model = LinearModel((C, H, W), seed=11)
    a, ca = fn(model, x, m, steps=13, return_curves=True)
    for bs in (1, 5, 39, 1000):
        model.batches.clear()
        b, cb = fn(model, x, m, steps=13, batch_size=bs, return_curves=True)
        np.testing.assert_allclose(cb, ca, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        perturbed = model.batches[1:]          # the first forward is x itself (targets)
        assert sum(perturbed) == N * 14 and max(perturbed) <= bs
    net = small_net(1)
    xn = images((2, 3, 6, 6), 12)
    mn = np.random.default_rng(13).random((2, 6, 6))
    np.testing.assert_allclose(fn(net, xn, mn, steps=9, batch_size=1), fn(net, xn, mn, steps=9), rtol=1e-5, atol=1e-7)


def test_attribution_maps_are_reduced():
    N, C, H, W = 2, 3, 4, 4
    x = images((N, C, H, W), 14)
    model = LinearModel((C, H, W), seed=15)
    attr = np.random.default_rng(16).standard_normal((N, C, H, W)).astype(F32)
    np.testing.assert_array_equal(M.deletion_auc(model, x, attr, steps=8),
                                  M.deletion_auc(model, x, np.abs(attr).max(axis=1), steps=8))
    nhwc = LinearModel((C, H, W), seed=15, layout="NHWC")
    xh, ah = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(attr.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(M.insertion_auc(nhwc, xh, ah, steps=8),
                                  M.insertion_auc(nhwc, xh, np.abs(attr).max(axis=1), steps=8))


def test_inputs_unmodified_and_real_maps():
    x = images((2, 1, 4, 4), 17)
    m = np.arange(32, dtype=np.int32).reshape(2, 4, 4)          # integer maps are fine
    base = images((2, 1, 4, 4), 18)
    x0, m0, b0 = x.copy(), m.copy(), base.copy()
    model = LinearModel((1, 4, 4), seed=19)
    M.deletion_auc(model, x, m, baseline=base)
    M.insertion_auc(model, x, m, baseline="blur")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(base, b0)


_X = images((2, 1, 4, 4), 20)
_MAPS = np.random.default_rng(21).random((2, 4, 4))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(maps=np.zeros((3, 4, 4))), ValueError, "maps"), (dict(maps=np.zeros((2, 4, 5))), ValueError, "maps"),
    (dict(maps=[[0.0]]), TypeError, "maps"), (dict(maps=np.zeros((2, 4, 4), bool)), TypeError, "maps"),
    (dict(maps=np.full((2, 4, 4), np.nan)), ValueError, "maps"),
    (dict(baseline="mean"), ValueError, "baseline"), (dict(baseline=[0.0]), TypeError, "baseline"),
    (dict(baseline=np.zeros((2, 1, 3, 4), F32)), ValueError, "baseline"), (dict(baseline=True), TypeError, "baseline"),
    (dict(baseline=np.zeros((2, 1, 4, 4), bool)), TypeError, "baseline"),
    (dict(steps=0), ValueError, "steps"), (dict(steps=17), ValueError, "steps"), (dict(steps=2.0), TypeError, "steps"),
    (dict(batch_size=0), ValueError, "batch_size"), (dict(batch_size=-1), ValueError, "batch_size"),
    (dict(batch_size=1.5), TypeError, "batch_size"), (dict(return_curves=1), TypeError, "return_curves"),
    (dict(target=5), ValueError, "target"), (dict(target=[0]), ValueError, "target"),
    (dict(x=_X.astype(F64)), TypeError, "x"), (dict(x=_X[0]), ValueError, "x"),
    (dict(model=object()), TypeError, "model")])
@pytest.mark.parametrize("fn", [M.deletion_auc, M.insertion_auc])
def test_auc_exception(fn, kwargs, exc, name):
    args = dict(model=LinearModel((1, 4, 4), K=3), x=_X, maps=_MAPS)
    args.update(kwargs)
    arrays = {k: (v, v.copy()) for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=name):
        fn(args.pop("model"), args.pop("x"), args.pop("maps"), **args)
    for k, (v, copy) in arrays.items():
        np.testing.assert_array_equal(v, copy, err_msg=k)


# ---- pointing games ----------------------------------------------------------------------------------

def box_masks(boxes, H, W):
    out = np.zeros((len(boxes), H, W), bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        out[i, y0:y1, x0:x1] = True
    return out


def ref_pointing(maps, masks, tol):
    hits = []
    for m, obj in zip(maps, masks):
        if m.max() == m.min():
            hits.append(False)
            continue
        py, px = divmod(int(np.argmax(m)), m.shape[1])
        d = min((math.hypot(y - py, x - px) for y in range(m.shape[0]) for x in range(m.shape[1]) if obj[y, x]),
                default=math.inf)
        hits.append(d <= tol)
    return np.array(hits)


def test_pointing_game_feature():
    maps = np.zeros((5, 8, 8))
    maps[0, 2, 3] = 1          # on the box
    maps[1, 6, 6] = 1          # 3 rows below the box: distance 3
    maps[2, 5, 5] = 1          # diagonal to the box corner (3, 4): distance hypot(2, 1)
    maps[3] = 7                # constant: no maximum, a miss although the box covers it
    maps[4, 0, 0] = maps[4, 7, 7] = 2   # tie: the first argmax (0, 0) decides
    boxes = np.array([[1, 1, 4, 5], [0, 0, 4, 8], [0, 0, 4, 5], [0, 0, 8, 8], [6, 6, 8, 8]])
    np.testing.assert_array_equal(M.pointing_game(maps, boxes), [True, False, False, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, boxes, tolerance=3), [True, True, True, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, boxes, tolerance=2.9), [True, False, True, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, boxes, tolerance=2.2), [True, False, False, False, False])
    masks = box_masks(boxes, 8, 8)
    for tol in (0, 2.2, 3):
        np.testing.assert_array_equal(M.pointing_game(maps, masks, tolerance=tol),
                                      M.pointing_game(maps, boxes, tolerance=tol))
    empty = np.zeros((5, 8, 8), bool)
    assert not M.pointing_game(maps, empty, tolerance=100).any()
    out = M.pointing_game(maps, boxes)
    assert out.dtype == bool and out.shape == (5,)


@pytest.mark.parametrize("tol", [0, 1, 1.5, 4.0])
def test_pointing_game_reference(tol):
    rng = np.random.default_rng(22)
    N, H, W = 40, 9, 11
    maps = rng.random((N, H, W)).astype(F32)
    y0, x0 = rng.integers(0, H - 1, N), rng.integers(0, W - 1, N)
    boxes = np.stack([y0, x0, y0 + rng.integers(1, H - y0 + 1), x0 + rng.integers(1, W - x0 + 1)], axis=1)
    masks = rng.random((N, H, W)) < 0.08
    maps0, masks0 = maps.copy(), masks.copy()
    np.testing.assert_array_equal(M.pointing_game(maps, masks, tolerance=tol), ref_pointing(maps, masks, tol))
    np.testing.assert_array_equal(M.pointing_game(maps, boxes, tolerance=tol),
                                  ref_pointing(maps, box_masks(boxes, H, W), tol))
    np.testing.assert_array_equal(maps, maps0)
    np.testing.assert_array_equal(masks, masks0)


def test_pointing_game_on_make_shapes():
    from cnnkit.data import make_shapes
    ds = make_shapes(20, 24, seed=0, distractors=2)
    oracle = ds.masks.astype(F64) + 0.1 * ds.images[:, 0]
    decoy = ds.distractor_masks[:, 0].astype(F64)
    assert M.pointing_game(oracle, ds.masks).all() and M.pointing_game(oracle, ds.boxes).all()
    assert not M.pointing_game(decoy, ds.masks, tolerance=1).any()    # distractors keep a pixel away
    np.testing.assert_array_equal(M.energy_pointing_game(ds.masks.astype(F64), ds.boxes), 1.0)


def test_energy_pointing_game():
    maps = np.array([[[1.0, 2.0], [3.0, -4.0]], [[-1.0, 0.0], [-2.0, -3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    boxes = np.array([[0, 0, 1, 2], [0, 0, 2, 2], [0, 1, 2, 2]])
    e = M.energy_pointing_game(maps, boxes)
    assert e.dtype == F64 and e.shape == (3,)
    np.testing.assert_allclose(e, [0.5, 0.0, 0.5], rtol=1e-15)
    rng = np.random.default_rng(23)
    maps = rng.standard_normal((10, 6, 7))
    masks = rng.random((10, 6, 7)) < 0.3
    ref = []
    for m, obj in zip(maps, masks):
        tot = sum(max(v, 0.0) for v in m.ravel())
        ref.append(sum(max(v, 0.0) for v, o in zip(m.ravel(), obj.ravel()) if o) / tot if tot > 0 else 0.0)
    np.testing.assert_allclose(M.energy_pointing_game(maps, masks), ref, rtol=1e-12)
    boxes = np.array([[1, 2, 4, 7]] * 10)
    np.testing.assert_allclose(M.energy_pointing_game(maps, boxes),
                               M.energy_pointing_game(maps, box_masks(boxes, 6, 7)), rtol=1e-12)


@pytest.mark.parametrize("maps, objs, kwargs, exc, name", [
    ([[[1.0]]], np.ones((1, 1, 1), bool), {}, TypeError, "maps"),
    (np.zeros((2, 3)), np.ones((2, 3), bool), {}, ValueError, "maps"),
    (np.zeros((2, 3, 3), complex), np.ones((2, 3, 3), bool), {}, TypeError, "maps"),
    (np.full((1, 3, 3), np.inf), np.ones((1, 3, 3), bool), {}, ValueError, "maps"),
    (np.zeros((2, 3, 3)), np.ones((2, 3, 4), bool), {}, ValueError, "masks_or_boxes"),
    (np.zeros((2, 3, 3)), np.ones((2, 4)), {}, TypeError, "masks_or_boxes"),
    (np.zeros((2, 3, 3)), np.ones((2, 5), int), {}, ValueError, "masks_or_boxes"),
    (np.zeros((2, 3, 3)), np.array([[0, 0, 4, 3], [0, 0, 1, 1]]), {}, ValueError, "masks_or_boxes"),
    (np.zeros((2, 3, 3)), np.array([[1, 0, 1, 3], [0, 0, 1, 1]]), {}, ValueError, "masks_or_boxes"),
    (np.zeros((2, 3, 3)), [[0, 0, 1, 1]] * 2, {}, TypeError, "masks_or_boxes"),
    (np.zeros((1, 3, 3)), np.ones((1, 3, 3), bool), dict(tolerance=-1), ValueError, "tolerance"),
    (np.zeros((1, 3, 3)), np.ones((1, 3, 3), bool), dict(tolerance="1"), TypeError, "tolerance")])
def test_pointing_exception(maps, objs, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        M.pointing_game(maps, objs, **kwargs)
    if "tolerance" not in kwargs:
        with pytest.raises(exc, match=name):
            M.energy_pointing_game(maps, objs)


# ---- randomization test ----------------------------------------------------------------------------

def snapshot(model):
    return (model.state_dict(), [g.copy() for g in model.gradients()], [m.training for m in model.modules()],
            model.arena[0].copy(), model.arena[1].copy())


def assert_restored(model, snap):
    state, grads, modes, p, g = snapshot(model)
    for k, v in snap[0].items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    for a, b in zip(grads, snap[1]):
        np.testing.assert_array_equal(a, b)
    assert modes == snap[2]
    np.testing.assert_array_equal(p, snap[3])
    np.testing.assert_array_equal(g, snap[4])


def test_randomization_default_layers_and_pass():
    model = small_net(2)
    model.arena[1][...] = np.random.default_rng(24).standard_normal(model.arena[1].size)  # gradients to keep
    snap = snapshot(model)
    x = images((4, 3, 10, 10), 25)
    r = M.randomization_test(model, explain.saliency, x)
    assert r.layers == ["6", "3", "1", "0"]            # parameterized modules, output side first
    assert r.spearman.shape == r.spearman_abs.shape == (4, 4) and r.spearman.dtype == F64
    assert np.all(np.abs(r.spearman) <= 1) and np.all(np.abs(r.spearman_abs) <= 1)
    assert np.mean(np.abs(r.spearman_abs[-1])) < 0.5 and r.passed
    assert_restored(model, snap)
    with explain.explaining(model):
        np.testing.assert_array_equal(r.targets, np.argmax(model.forward(x), axis=1))
    # same seed, same result; a method name works like the method
    r2 = M.randomization_test(model, "saliency", x)
    np.testing.assert_array_equal(r2.spearman_abs, r.spearman_abs)
    assert_restored(model, snap)


def test_randomization_no_op_and_empty():
    model = small_net(3)
    x = images((3, 3, 8, 8), 26)
    fixed = lambda model, x, target: x[:, 0] * 2 + 1            # ignores the model
    r = M.randomization_test(model, fixed, x)
    np.testing.assert_array_equal(r.spearman, 1.0)
    np.testing.assert_array_equal(r.spearman_abs, 1.0)
    assert not r.passed
    calls = []
    r = M.randomization_test(model, lambda m, x, t: calls.append(1) or x[:, 0], x, layers=[])
    assert r.layers == [] and r.spearman.shape == (0, 3) and not r.passed and len(calls) == 1
    # a constant map that stays the same is unchanged (1), not uninformative
    r = M.randomization_test(model, lambda m, x, t: np.zeros(x.shape, F32), x, layers=["0"])
    np.testing.assert_array_equal(r.spearman_abs, 1.0)


def test_randomization_changes_gradient_maps():
    model = small_net(4)
    x = images((3, 3, 10, 10), 27)
    for method in (explain.saliency, explain.guided_backprop):
        assert np.all(np.abs(method(model, x, 0)).reshape(len(x), -1).max(axis=1) > 0)  # not blank to start with
        r = M.randomization_test(model, method, x, target=0, layers=["6", "3", "0"], seed=5)
        assert r.layers == ["6", "3", "0"]
        np.testing.assert_array_equal(r.targets, 0)
        assert np.all(r.spearman_abs[-1] < 0.5) and r.passed, r.spearman_abs   # the maps changed
    # kwargs reach the method
    seen = {}

    def method(model, x, target, scale=1.0):
        seen["scale"] = scale
        return explain.saliency(model, x, target) * scale

    M.randomization_test(model, method, x, layers=["6"], scale=3.0)
    assert seen["scale"] == 3.0
    # a method keyword named like one of randomization_test's own is bound with functools.partial
    def seeded(model, x, target, seed=None):
        seen["seed"] = seed
        return explain.saliency(model, x, target)

    M.randomization_test(model, functools.partial(seeded, seed=7), x, layers=["6"], seed=1)
    assert seen["seed"] == 7


@pytest.mark.parametrize("fail_at", [0, 2])
def test_randomization_restores_on_exception(fail_at):
    model = small_net(5)
    snap = snapshot(model)
    calls = []

    def method(model, x, target):
        calls.append(1)
        if len(calls) > fail_at:
            raise RuntimeError("boom")
        return explain.saliency(model, x, target)

    with pytest.raises(RuntimeError, match="boom"):
        M.randomization_test(model, method, images((2, 3, 8, 8), 28))
    assert_restored(model, snap)


@pytest.mark.parametrize("model, method, kwargs, exc, name", [
    (LinearModel((3, 8, 8)), explain.saliency, {}, TypeError, "model"),
    (None, 3, {}, TypeError, "method"), (None, "no_such_method", {}, ValueError, "method"),
    (None, explain.saliency, dict(layers="0"), TypeError, "layers"),
    (None, explain.saliency, dict(layers=[0]), TypeError, "layers"),
    (None, explain.saliency, dict(layers=["9"]), ValueError, "layers"),
    (None, explain.saliency, dict(layers=["2"]), ValueError, "layers"),          # a ReLU: no parameters
    (None, explain.saliency, dict(layers=["0", "0"]), ValueError, "layers"),
    (None, explain.saliency, dict(seed=-1), ValueError, "seed"),
    (None, explain.saliency, dict(seed="a"), TypeError, "seed"),
    (None, explain.saliency, dict(target=9), ValueError, "target"),
    (None, lambda m, x, t: np.zeros((2, 8)), {}, ValueError, "method"),
    (None, lambda m, x, t: [0.0], {}, TypeError, "method")])
def test_randomization_exception(model, method, kwargs, exc, name):
    model = small_net(6) if model is None else model
    x = images((2, 3, 8, 8), 29)
    x0 = x.copy()
    snap = snapshot(model) if isinstance(model, nn.Module) else None
    with pytest.raises(exc, match=name):
        M.randomization_test(model, method, x, **kwargs)
    np.testing.assert_array_equal(x, x0)
    if snap is not None:
        assert_restored(model, snap)
