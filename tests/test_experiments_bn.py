"""The five batch-norm experiments: quick runs give the documented keys, complete figures, verdicts
from the judge, and the same numbers for the same seed (at 1 and 2 threads for one of them).

Each quick run is made once per module (a fixture) and once more for the reproducibility check.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnnkit
from cnnkit import experiments
from cnnkit.experiments import _runner as R

# name -> the measurement keys its run() documents (top level, and inside each per-network entry)
KEYS = {
    "bn-lr-stress": (["lr", "batch", "group", "none", "decades_gain_batch", "decades_gain_group"],
                     {"batch": ["decades", "decades_mean", "decades_spread", "best_accuracy", "diverged_at_lr",
                                "smoothed_accuracy"]}),
    "bn-init": (["scales", "batch", "none", "range_gain"],
                {"batch": ["test_accuracy", "train_accuracy", "diverged", "range", "range_mean", "range_spread"]}),
    "bn-small-batch": (["batch_sizes", "batch", "group", "ghost", "degradation_gain", "gn_minus_bn_at_2"],
                       {"ghost": ["test_accuracy", "mean", "spread", "degradation"]}),
    "bn-train-test": (["momenta", "steps", "momentum_0.01", "momentum_0.1", "momentum_0.5", "gap_gain"],
                      {"momentum_0.1": ["acc_batch", "acc_running", "disagreement", "mean_abs_gap",
                                        "mean_disagreement"]}),
    "bn-weight-decay": (["weight_decays", "steps", "wd_0", "wd_0.0005", "wd_0.005", "log10_eff_lr_ratio",
                         "log10_norm_growth"], {"wd_0": ["sq_norm", "effective_lr", "test_accuracy"]}),
}
NAMES = list(KEYS)


@pytest.fixture(scope="module")
def one_thread():
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(1)
    yield
    cnnkit.set_num_threads(before)


@pytest.fixture(scope="module")
def quick_runs(one_thread):
    return {name: experiments.load(name).run(seed=0, quick=True, progress=False) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_module_declares_name_title_claims(name):
    mod = experiments.load(name)
    assert mod.NAME == name and isinstance(mod.TITLE, str) and mod.TITLE
    assert isinstance(mod.CLAIMS, list) and all(isinstance(c, str) and c for c in mod.CLAIMS)


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_keys_claims_and_files(name, quick_runs, tmp_path):
    r = quick_runs[name]
    mod = experiments.load(name)
    assert r.name == name and r.title == mod.TITLE
    top, inner = KEYS[name]
    assert set(top) <= set(r.measurements), set(top) - set(r.measurements)
    for k, sub in inner.items():
        assert set(sub) <= set(r.measurements[k]), set(sub) - set(r.measurements[k])
    assert r.settings["seed"] == 0 and r.settings["quick"] is True and r.settings["seeds"] == [0]
    assert [c.text for c in r.claims] == mod.CLAIMS
    for c in r.claims:
        assert c.verdict == R.judge(c.value, c.threshold, c.spread)
        assert np.isfinite(c.value)
        # one seed: no noise estimate, so no verdict either way
        assert c.spread == R.UNKNOWN_SPREAD and c.verdict == "inconclusive"
    doc = R.finish(r, tmp_path)
    on_disk = json.loads((tmp_path / f"{name}.json").read_text())
    assert on_disk == doc and (tmp_path / f"{name}.png").stat().st_size > 1000
    assert [c["verdict"] for c in on_disk["claims"]] == [c.verdict for c in r.claims]
    assert all(c["spread"] is None for c in on_disk["claims"])
    assert f"## {name}:" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_figure_title_labels_legend(name, quick_runs):
    fig = quick_runs[name].figure
    assert fig._suptitle is not None and fig._suptitle.get_text() == experiments.load(name).TITLE
    assert R.figure_problems(fig) == []
    for ax in fig.axes:  # every panel with several labelled curves has a legend
        if sum(not line.get_label().startswith("_") for line in ax.get_lines()) > 1:
            assert ax.get_legend() is not None, ax.get_title()


def test_log_scales_where_the_claim_is_about_orders_of_magnitude(quick_runs):
    a0, a1 = quick_runs["bn-lr-stress"].figure.axes
    assert a0.get_yscale() == "log" and a1.get_xscale() == "log"
    assert quick_runs["bn-init"].figure.axes[0].get_xscale() == "log"
    assert quick_runs["bn-small-batch"].figure.axes[0].get_xscale() == "log"
    assert all(ax.get_yscale() == "log" for ax in quick_runs["bn-weight-decay"].figure.axes)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_measurements(name, quick_runs):
    # the cheapest experiment repeats at 2 threads: the numbers must not depend on the thread count
    threads = 2 if name == "bn-weight-decay" else 1
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(threads)
    try:
        again = experiments.load(name).run(seed=0, quick=True, progress=False)
    finally:
        cnnkit.set_num_threads(before)
    assert R.jsonable(again.measurements) == R.jsonable(quick_runs[name].measurements)
    assert [c.to_json() for c in again.claims] == [c.to_json() for c in quick_runs[name].claims]


def test_lr_schedule_and_decades():
    from cnnkit.experiments import bn_lr_stress as M
    lrs = M._lrs(101)
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(np.diff(np.log10(lrs)), 0.05, rtol=1e-9)
    # 41 of 101 steps (0.05 decades each) at or above max(best - 0.1, 0.5): 2.05 decades
    acc = np.concatenate([np.full(30, 0.2), np.full(41, 0.9), np.full(30, 0.3)])
    acc[50] = 0.95
    assert M._decades(acc, 101, 0.10, 0.5) == pytest.approx(41 * 0.05)
    assert M._decades(np.full(101, 0.3), 101, 0.10, 0.5) == 0.0   # never learnt: no trainable decades
    np.testing.assert_allclose(M._smooth(np.array([1.0, 0.0, 1.0, 1.0]), 2), [1.0, 0.5, 0.5, 1.0])


def test_ghost_batch_norm_matches_per_chunk_batch_norm():
    from cnnkit.experiments.bn_small_batch import _GhostBatchNorm2d
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 4, 4)).astype(np.float32) * 2 + 1
    g = _GhostBatchNorm2d(3, 16)
    y = g.forward(x).copy()
    ref = []
    for k in range(2):
        xk = x[16 * k:16 * (k + 1)].astype(np.float64)
        m = xk.mean(axis=(0, 2, 3), keepdims=True)
        v = xk.var(axis=(0, 2, 3), keepdims=True)
        ref.append(np.maximum((xk - m) / np.sqrt(v + 1e-5), 0))
    np.testing.assert_allclose(y, np.concatenate(ref), rtol=1e-5, atol=1e-5)
    gi = g.backward(rng.standard_normal(x.shape).astype(np.float32))
    assert gi.shape == x.shape and np.all(np.isfinite(gi))
    # a batch no larger than a chunk is plain batch norm
    small = x[:8]
    xs = small.astype(np.float64)
    want = np.maximum((xs - xs.mean(axis=(0, 2, 3), keepdims=True))
                      / np.sqrt(xs.var(axis=(0, 2, 3), keepdims=True) + 1e-5), 0)
    np.testing.assert_allclose(_GhostBatchNorm2d(3, 16).forward(small), want, rtol=1e-5, atol=1e-5)


def test_batch_stats_prediction_leaves_running_stats_alone():
    from cnnkit.experiments.bn_train_test import _predict
    model = R.small_cnn("batch", widths=(4, 8), seed=1)
    x = np.random.default_rng(1).random((70, 1, 8, 8), dtype=np.float32)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    p = _predict(model, x, True)
    assert p.shape == (70,) and model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
