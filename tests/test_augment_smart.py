"""Smart Augmentation (cnnkit.augment.SmartAugmentation) and its experiment.

* gradient: network A's gradient of ``alpha * L_B + beta * L_sim`` (through B's input gradient,
  and the similarity loss) and B's gradient of ``L_B``, against central differences of a float64
  NumPy reference of both tiny networks (tests/reference/nn.py), for the paper's weights and for
  each term alone; draws near a ReLU kink are rejected;
* merged samples: the input images' shape and the input's dtype, batched and single, the input
  untouched, and the same values as network A's forward;
* training: the same bits at 1 and 2 threads for a seed; a different seed differs; a checkpoint
  resumed in a fresh object gives the bits of an uninterrupted run (networks, optimizers,
  history); the similarity loss falls;
* bad input: TypeError / ValueError naming the argument, before anything changes;
* the experiment: a quick run writes its documented files and a complete figure; its verdict logic
  on synthetic numbers (holds, fails, inside the noise).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import cnnkit
from cnnkit import augment, data, experiments, nn, optim
from cnnkit.experiments import _runner
from conftest import assert_bitwise, assert_close, num_threads
from reference import nn as R

F32, F64 = np.float32, np.float64
H_FD = 1e-6
MARGIN = 1e-3


# ---- tiny networks and their float64 reference ------------------------------------------------------

def tiny_pair(rng, k=2, C=1, K=3, hidden=3):
    a = nn.Sequential(nn.Conv2d(k * C, hidden, 3, padding=1, rng=rng), nn.ReLU(),
                      nn.Conv2d(hidden, C, 3, padding=1, rng=rng))
    b = nn.Sequential(nn.Conv2d(C, hidden, 3, padding=1, rng=rng), nn.ReLU(), nn.GlobalAvgPool2d(),
                      nn.Linear(hidden, K, rng=rng))
    return a, b


def _relu(pre, margins):
    margins.append(float(np.min(np.abs(pre))))
    return np.maximum(pre, 0.0)


def ref_objective(pa, pb, x, y, groups, targets, gy, alpha, beta, margins=None):
    """(J_A, L_B) in float64: J_A = alpha * L_B + beta * mean((A(groups) - targets)^2), L_B the mean
    cross-entropy of B over [x; A(groups)] with labels [y; gy]. ``pa``/``pb``: float64 parameter
    lists in module order (conv w, b, conv w, b / conv w, b, linear w, b)."""
    margins = [] if margins is None else margins
    m, k, C, H, W = groups.shape
    g = groups.reshape(m, k * C, H, W).astype(F64)
    h = _relu(R.conv2d(g, pa[0], pa[1], padding=1), margins)
    z = R.conv2d(h, pa[2], pa[3], padding=1)
    xb = np.concatenate([x.astype(F64), z])
    hb = _relu(R.conv2d(xb, pb[0], pb[1], padding=1), margins)
    logits = R.linear(R.global_avg_pool2d(hb), pb[2], pb[3])
    lb = R.cross_entropy(logits, np.concatenate([y, gy]))
    sim = float(np.mean((z - targets.astype(F64)) ** 2))
    return alpha * lb + beta * sim, lb


def central_differences(f, params):
    """d f / d p for every element of every array in ``params`` (float64, modified and restored)."""
    out = []
    for p in params:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            keep = p[i]
            p[i] = keep + H_FD
            hi = f()
            p[i] = keep - H_FD
            lo = f()
            p[i] = keep
            g[i] = (hi - lo) / (2 * H_FD)
        out.append(g)
    return out


def assert_grad_close(actual, ref, *, length, what):
    ref = np.asarray(ref, F64)
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, f"{what}: the reference gradient is identically zero (a useless test)"
    assert_close(np.asarray(actual, F64) / scale, ref / scale, F32, length=length, what=what)


def _draw(rng, k=2, C=1, K=3, n=3, m=2, HW=5):
    x = rng.standard_normal((n, C, HW, HW)).astype(F32)
    y = rng.integers(0, K, n)
    groups = rng.standard_normal((m, k, C, HW, HW)).astype(F32)
    targets = rng.standard_normal((m, C, HW, HW)).astype(F32)
    gy = rng.integers(0, K, m)
    return x, y, groups, targets, gy


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (1.0, 0.0), (0.0, 1.0), (2.5, 0.4)])
def test_gradients_against_finite_differences(alpha, beta, rng):
    for _ in range(50):  # reject draws with a pre-activation near a ReLU kink
        a, b = tiny_pair(rng)
        x, y, groups, targets, gy = _draw(rng)
        pa = [p.astype(F64) for p in a.parameters()]
        pb = [p.astype(F64) for p in b.parameters()]
        margins: list = []
        ref_objective(pa, pb, x, y, groups, targets, gy, alpha, beta, margins)
        if min(margins) > MARGIN:
            break
    sa = augment.SmartAugmentation(b, a, num_classes=3, k=2, alpha=alpha, beta=beta, seed=0)
    out = sa.gradients(x, y, groups, targets, gy)
    j, lb = ref_objective(pa, pb, x, y, groups, targets, gy, alpha, beta)
    assert out["loss_b"] == pytest.approx(lb, rel=1e-5)
    assert out["loss_a"] == pytest.approx(j, rel=1e-5, abs=1e-7)
    ga = central_differences(lambda: ref_objective(pa, pb, x, y, groups, targets, gy, alpha, beta)[0], pa)
    for (name, _), got, ref in zip(a.named_parameters(), a.gradients(), ga):
        assert_grad_close(got, ref, length=200, what=f"A {name} (alpha={alpha}, beta={beta})")
    gb = central_differences(lambda: ref_objective(pa, pb, x, y, groups, targets, gy, alpha, beta)[1], pb)
    for (name, _), got, ref in zip(b.named_parameters(), b.gradients(), gb):
        assert_grad_close(got, ref, length=200, what=f"B {name}")


def test_only_the_classifier_term_reaches_a_through_b(rng):
    """alpha = 0: A's gradient is the similarity's alone; beta = 0 and identical targets: it is B's."""
    a, b = tiny_pair(rng)
    x, y, groups, targets, gy = _draw(rng)
    sa = augment.SmartAugmentation(b, a, num_classes=3, alpha=0.0, beta=1.0)
    sa.gradients(x, y, groups, targets, gy)
    g_sim = [g.copy() for g in a.gradients()]
    sa.alpha, sa.beta = 1.0, 0.0
    sa.gradients(x, y, groups, targets, gy)
    g_cls = [g.copy() for g in a.gradients()]
    sa.alpha, sa.beta = 0.3, 0.7
    sa.gradients(x, y, groups, targets, gy)
    for s, c, both in zip(g_sim, g_cls, a.gradients()):
        assert np.any(c != 0) and np.any(s != 0)
        np.testing.assert_allclose(both, 0.3 * c + 0.7 * s, rtol=1e-4, atol=1e-6)


# ---- merged samples -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("C,k", [(1, 2), (3, 3)])
def test_merge_keeps_shape_and_dtype(dtype, C, k, rng):
    sa = augment.SmartAugmentation(in_channels=C, num_classes=4, k=k, seed=1)
    groups = rng.random((5, k, C, 7, 6)).astype(dtype)
    before = groups.copy()
    z = sa.merge(groups)
    assert z.shape == (5, C, 7, 6) and z.dtype == dtype
    assert_bitwise(groups, before, "groups (input modified)")
    want = sa.generator.forward(np.ascontiguousarray(groups.reshape(5, k * C, 7, 6), dtype=F32))
    np.testing.assert_array_equal(z, want.astype(dtype))
    one = sa.merge(groups[2])
    assert one.shape == (C, 7, 6) and one.dtype == dtype
    np.testing.assert_array_equal(one, z[2])
    assert not np.shares_memory(z, sa.generator.forward(
        np.ascontiguousarray(groups.reshape(5, k * C, 7, 6), dtype=F32)))


def test_sample_draws_same_class_groups():
    ds = data.load_digits().subset(slice(0, 200))
    sa = augment.SmartAugmentation(num_classes=10, seed=0)
    inputs, merged, labels = sa.sample(ds, 7, classes=[3, 5], seed=4)
    assert inputs.shape == (7, 2, 1, 8, 8) and merged.shape == (7, 1, 8, 8) and merged.dtype == F32
    assert labels.tolist() == [3, 5, 3, 5, 3, 5, 3]
    lookup = {im.tobytes(): lab for im, lab in zip(ds.images, ds.labels)}
    for grp, lab in zip(inputs, labels):
        assert [lookup[im.tobytes()] for im in grp] == [lab, lab]
    again = sa.sample(ds, 7, classes=[3, 5], seed=4)
    np.testing.assert_array_equal(again[0], inputs)
    state = sa.rng.bit_generator.state
    sa.sample(ds, 3, seed=None)
    assert sa.rng.bit_generator.state == state  # inspection does not touch the training Generator


def test_group_draws_are_uniform_and_independent():
    """Each sample's k inputs and target: distinct images of its class, every ordered choice equally
    likely, and consecutive draws independent (NumPy's choice(replace=False) is not, for small
    samples in consecutive calls)."""
    sa = augment.SmartAugmentation(num_classes=3, k=2)
    pools = {0: np.array([3, 5, 8, 9]), 1: np.array([0, 1]), 2: np.array([7])}
    rng = np.random.default_rng(0)
    n = 2400
    gi, ti = sa._draw_groups(rng, pools, np.zeros(n, np.int64))
    triples = np.concatenate([gi, ti[:, None]], axis=1)
    assert np.all(np.isin(triples, pools[0]))
    assert np.all([len(set(row)) == 3 for row in triples.tolist()])
    _, counts = np.unique(triples, axis=0, return_counts=True)
    assert len(counts) == 24                               # 4 * 3 * 2 ordered choices
    expected, sd = n / 24, math.sqrt(n / 24 * (1 - 1 / 24))
    assert np.max(np.abs(counts - expected)) < 5 * sd
    same = np.mean(np.all(triples[1:] == triples[:-1], axis=1))
    assert same < 3 / 24                                   # independent draws repeat 1 time in 24
    gi, ti = sa._draw_groups(rng, pools, np.array([1, 2, 1, 2]))  # k or fewer images: with replacement
    assert np.all(np.isin(gi[[0, 2]], [0, 1])) and np.all(gi[[1, 3]] == 7) and np.all(ti[[1, 3]] == 7)


# ---- training: seeds, threads, checkpoints ------------------------------------------------------------

def _small():
    full = data.load_digits()
    tr, te = data.train_test_split(full, 0.25, seed=0)
    tr, _ = data.train_test_split(tr, len(tr) - 40, seed=0)
    return tr, te.subset(slice(0, 60))


def _make(seed=0):
    return augment.SmartAugmentation(num_classes=10, seed=seed)


def _fit(seed, threads, epochs=2):
    tr, _ = _small()
    with num_threads(threads):
        sa = _make(seed)
        sa.fit(tr, epochs=epochs, batch_size=16, progress=False)
    return sa


def test_training_reproducible_across_threads_and_depends_on_the_seed():
    one, two = _fit(0, 1), _fit(0, 2)
    s1, s2 = one.state_dict(), two.state_dict()
    assert set(s1) == set(s2)
    for key in s1:
        if key != "meta":
            assert_bitwise(s2[key], s1[key], key)
    h1, h2 = json.loads(str(s1["meta"]))["history"], json.loads(str(s2["meta"]))["history"]
    assert {k: v for k, v in h1.items() if k != "seconds"} == {k: v for k, v in h2.items() if k != "seconds"}
    other = _fit(1, 1)
    assert not np.array_equal(other.generator.parameters()[0], one.generator.parameters()[0])


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    tr, te = _small()
    full = _make(0)
    full.fit(tr, epochs=3, batch_size=16, val=te, progress=False)
    part = _make(0)
    path = tmp_path / "sa.npz"
    part.fit(tr, epochs=2, batch_size=16, val=te, progress=False, checkpoint=path)
    resumed = _make(0)
    resumed.load(path)
    assert resumed.epoch == 2
    resumed.fit(tr, epochs=1, batch_size=16, val=te, progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    for key in a:
        if key != "meta":
            assert_bitwise(b[key], a[key], key)
    ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    assert ma["rng"] == mb["rng"] and ma["epoch"] == mb["epoch"] == 3
    for key in ("loss_b", "similarity", "loss_a", "train_accuracy", "merged_accuracy", "val_accuracy"):
        assert ma["history"][key] == mb["history"][key], key
    assert len(ma["history"]["val_accuracy"]) == 3


def test_training_lowers_the_similarity_loss():
    tr, _ = _small()
    sa = _make(0)
    hist = sa.fit(tr, epochs=6, batch_size=16, progress=False)
    assert all(math.isfinite(v) for v in hist["loss_b"] + hist["similarity"])
    assert hist["similarity"][-1] < 0.6 * hist["similarity"][0]


def test_merged_count():
    """merged=0: B trains on real batches alone and A does not move; merged=M: M samples per batch."""
    tr, _ = _small()
    sa = _make(0)
    a0 = [p.copy() for p in sa.generator.parameters()]
    b0 = [p.copy() for p in sa.classifier.parameters()]
    hist = sa.fit(tr, epochs=1, batch_size=16, merged=0, progress=False)
    assert hist["similarity"] == [0.0] and hist["merged_accuracy"] == [0.0]
    for p, q in zip(sa.generator.parameters(), a0):
        assert_bitwise(p, q, "generator parameter")
    assert any(not np.array_equal(p, q) for p, q in zip(sa.classifier.parameters(), b0))
    hist = sa.fit(tr, epochs=1, batch_size=16, merged=3, progress=False)
    assert hist["similarity"][1] > 0
    assert any(not np.array_equal(p, q) for p, q in zip(sa.generator.parameters(), a0))


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_construction():
    b = augment.classifier_network(1, 3, seed=0)
    with pytest.raises(ValueError, match="^num_classes: "):
        augment.SmartAugmentation()
    with pytest.raises(TypeError, match="^classifier: "):
        augment.SmartAugmentation("net", num_classes=3)
    with pytest.raises(TypeError, match="^generator: "):
        augment.SmartAugmentation(b, generator=3)
    with pytest.raises(ValueError, match="^k: "):
        augment.SmartAugmentation(b, k=0)
    with pytest.raises(TypeError, match="^k: "):
        augment.SmartAugmentation(b, k=2.0)
    with pytest.raises(ValueError, match="^alpha: "):
        augment.SmartAugmentation(b, alpha=-0.1)
    with pytest.raises(TypeError, match="^beta: "):
        augment.SmartAugmentation(b, beta="0.7")
    with pytest.raises(ValueError, match="^beta: "):
        augment.SmartAugmentation(b, beta=float("nan"))
    with pytest.raises(TypeError, match="^optimizer_b: "):
        augment.SmartAugmentation(b, optimizer_b="sgd")
    other = augment.classifier_network(1, 3, seed=1)
    with pytest.raises(ValueError, match="^optimizer_b: "):
        augment.SmartAugmentation(b, optimizer_b=optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="^seed: "):
        augment.SmartAugmentation(b, seed=-1)


def test_bad_fit_inputs_raise_before_training(tmp_path):
    tr, te = _small()
    sa = _make(0)
    before = {k: v.copy() for k, v in sa.state_dict().items() if k != "meta"}
    rng_state = sa.rng.bit_generator.state
    with pytest.raises(TypeError, match="^dataset: "):
        sa.fit(tr.images, epochs=1)
    with pytest.raises(TypeError, match=r"^dataset\.images: "):
        sa.fit(data.ArrayDataset(tr.images.astype(F64), tr.labels), epochs=1)
    with pytest.raises(ValueError, match=r"^dataset\.images: "):
        sa.fit(data.ArrayDataset(np.repeat(tr.images, 3, axis=1), tr.labels), epochs=1)
    with pytest.raises(ValueError, match="^epochs: "):
        sa.fit(tr, epochs=-1)
    with pytest.raises(ValueError, match="^batch_size: "):
        sa.fit(tr, epochs=1, batch_size=0)
    with pytest.raises(TypeError, match=r"^val\.images: "):
        sa.fit(tr, epochs=1, val=data.ArrayDataset(te.images.astype(F64), te.labels))
    with pytest.raises(TypeError, match="^checkpoint: "):
        sa.fit(tr, epochs=1, checkpoint=3)
    big = data.ArrayDataset(tr.images, tr.labels + 5)
    with pytest.raises(ValueError, match=r"^dataset\.labels: "):
        sa.fit(big, epochs=1)
    assert sa.epoch == 0 and sa.rng.bit_generator.state == rng_state
    for k, v in sa.state_dict().items():
        if k != "meta":
            assert_bitwise(v, before[k], k)


def test_bad_merge_gradients_sample_and_load(tmp_path, rng):
    sa = _make(0)
    with pytest.raises(TypeError, match="^groups: "):
        sa.merge(np.zeros((2, 2, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="^groups: "):
        sa.merge(np.zeros((2, 3, 1, 8, 8), F32))    # k = 3 images, A takes 2
    with pytest.raises(ValueError, match="^groups: "):
        sa.merge(np.zeros((2, 2, 3, 8, 8), F32))    # 3 channels, A takes 1
    with pytest.raises(ValueError, match="^groups: "):
        sa.merge(np.zeros((2, 1, 8, 8, 1, 1), F32))
    x, y, groups, targets, gy = _draw(rng, K=10, HW=8)
    with pytest.raises(ValueError, match="^targets: "):
        sa.gradients(x, y, groups, targets[:1], gy)
    with pytest.raises(ValueError, match="^labels: "):
        sa.gradients(x, y[:2], groups, targets, gy)
    with pytest.raises(TypeError, match="^group_labels: "):
        sa.gradients(x, y, groups, targets, gy.astype(F32))
    with pytest.raises(ValueError, match="^groups: "):
        sa.gradients(x, y, groups[:, :, :, :6, :6], targets[:, :, :6, :6], gy)
    ds = data.load_digits().subset(slice(0, 50))
    with pytest.raises(ValueError, match="^n: "):
        sa.sample(ds, 0)
    with pytest.raises(ValueError, match="^classes: "):
        sa.sample(ds, 2, classes=[11])
    with pytest.raises(TypeError, match="^classes: "):
        sa.sample(ds, 2, classes="3")
    path = str(tmp_path / "k3.npz")
    augment.SmartAugmentation(num_classes=10, k=3).save(path)
    with pytest.raises(ValueError, match="^state: .*k=3"):
        sa.load(path)
    with pytest.raises(TypeError, match="^state: "):
        sa.load_state_dict({"generator/0.weight": np.zeros(3)})
    with pytest.raises(TypeError, match="^path: "):
        sa.save(3)


# ---- the experiment ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smart"))
    with num_threads(1):
        doc = experiments.run("smart-augmentation", out, seed=0, quick=True, progress=False)
    return out, doc


def test_experiment_quick_run_writes_its_files(quick_doc):
    from cnnkit.experiments import smart_augmentation as sx
    out, doc = quick_doc
    assert os.path.getsize(os.path.join(out, "smart-augmentation.png")) > 1000
    with open(os.path.join(out, "smart-augmentation.json"), encoding="utf-8") as f:
        assert json.load(f) == doc
    m = doc["measurements"]
    assert {"epochs", "test_accuracy", "test_accuracy_mean", "test_accuracy_spread", "gain_points",
            "smart_history"} <= set(m)
    for d in sx.DATASETS:
        for c in sx.CONDITIONS:
            assert len(m["test_accuracy"][d][c]) == 1 and 0.0 <= m["test_accuracy"][d][c][0] <= 1.0
        assert len(m["smart_history"][d]["similarity"][0]) == m["epochs"][d]
    assert [c["text"] for c in doc["claims"]] == sx.CLAIMS
    assert all(c["verdict"] == "inconclusive" for c in doc["claims"])  # one seed: no spread


def test_experiment_figure_is_complete():
    from cnnkit.experiments import smart_augmentation as sx
    m = {"test_accuracy": {d: {"none": [0.7, 0.72, 0.71], "standard": [0.74, 0.75, 0.73], "smart": [0.76, 0.77, 0.74]}
                           for d in sx.DATASETS},
         "smart_history": {d: {k: [[1.0, 0.5, 0.3]] * 3 for k in ("similarity", "loss_b")} for d in sx.DATASETS}}
    m.update(sx.judge_claims(m)[1])
    rng = np.random.default_rng(0)
    examples = {"digits": (rng.random((3, 2, 1, 8, 8)), rng.random((3, 1, 8, 8)), np.arange(3))}
    fig = sx._figure(m, examples)
    assert fig._suptitle.get_text()
    assert _runner.figure_problems(fig) == []
    assert all(ax.get_legend() is not None for ax in fig.axes if ax.lines or ax.patches)


HOLDS, FAILS, NOISE = "reproduced", "not reproduced", "inconclusive"
DIFFS = {HOLDS: [0.05, 0.06, 0.04], FAILS: [-0.05, -0.06, -0.04], NOISE: [0.05, -0.06, 0.02]}


@pytest.mark.parametrize("vs_none,vs_standard", [(HOLDS, FAILS), (FAILS, HOLDS), (NOISE, HOLDS), (HOLDS, NOISE)])
def test_experiment_verdicts(vs_none, vs_standard):
    from cnnkit.experiments import smart_augmentation as sx
    smart = [0.9, 0.88, 0.91]
    acc = {"smart": smart, "none": [s - d for s, d in zip(smart, DIFFS[vs_none])],
           "standard": [s - d for s, d in zip(smart, DIFFS[vs_standard])]}
    claims, derived = sx.judge_claims({"test_accuracy": {"digits": acc, "faces": acc}})
    assert [c.verdict for c in claims] == [vs_none, vs_none, vs_standard, vs_standard]
    assert derived["gain_points"]["digits"]["smart - none"] == pytest.approx([100 * d for d in DIFFS[vs_none]])
    assert derived["test_accuracy_mean"]["faces"]["smart"] == pytest.approx(np.mean(smart))
    one = {c: v[:1] for c, v in acc.items()}
    assert [c.verdict for c in sx.judge_claims({"test_accuracy": {"digits": one, "faces": one}})[0]] == [NOISE] * 4
