"""The data-driven experiments: group-conv, depthwise-separable, regularization, samplepairing and
equalization.

Each quick run writes its files with the documented keys, its figure has a title and labelled
axes (the matplotlib objects are inspected, not the pixels), and a second quick run with the same
seed, at one thread instead of two, gives the same measurements (timings excepted: they are
measured). The verdict logic of every experiment is checked on synthetic measurements where the
answer is known: a claim that holds, one that fails, one inside the noise. The FLOP counter is
checked against a hand count.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cnnkit
from cnnkit import experiments, nn
from cnnkit.experiments import _runner

NAMES = ["group-conv", "depthwise-separable", "regularization", "samplepairing", "equalization"]

MEASUREMENT_KEYS = {
    "group-conv": {"groups", "width", "parameters", "flops", "accuracy", "accuracy_mean", "accuracy_spread",
                   "timing"},
    "depthwise-separable": {"kinds", "parameters", "flops", "parameter_ratio", "flop_ratio",
                            "layer_flop_ratio_theory", "accuracy", "accuracy_mean", "accuracy_spread",
                            "accuracy_difference_points", "timing"},
    "regularization": {"variants", "test_accuracy", "train_accuracy", "test_accuracy_mean", "test_accuracy_spread",
                       "improvement_points"},
    "samplepairing": {"epochs", "on", "final_epochs", "with", "without", "train_drop_points_on",
                      "final_val_accuracy", "val_gain_points"},
    "equalization": {"methods", "test_accuracy", "test_accuracy_mean", "test_accuracy_spread", "improvement_points",
                     "contrast"},
}
DOC_KEYS = {"name", "title", "settings", "measurements", "claims", "seconds", "seed", "quick", "threads", "version",
            "figure"}
CLAIM_KEYS = {"text", "statistic", "value", "threshold", "spread", "verdict"}


def _untimed(measurements: dict) -> dict:
    return {k: v for k, v in measurements.items() if k != "timing"}


def _at_threads(n, fn, *args, **kwargs):
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(n)
    try:
        return fn(*args, **kwargs)
    finally:
        cnnkit.set_num_threads(before)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("experiments"))
    return out, {name: _at_threads(1, experiments.run, name, out, seed=0, quick=True, progress=False)
                 for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_documented_files(quick_runs, name):
    out, docs = quick_runs
    module = experiments.load(name)
    doc = docs[name]
    assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000
    with open(os.path.join(out, f"{name}.json"), encoding="utf-8") as f:
        assert json.load(f) == doc
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        assert f"## {name}: " in f.read()
    assert DOC_KEYS <= set(doc)
    assert doc["name"] == name and doc["quick"] is True and doc["seed"] == 0
    assert MEASUREMENT_KEYS[name] <= set(doc["measurements"])
    assert len(doc["claims"]) == len(module.CLAIMS)
    for c, text in zip(doc["claims"], module.CLAIMS):
        assert set(c) == CLAIM_KEYS
        assert c["text"] == text
        assert c["verdict"] in _runner.VERDICTS


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_figure_and_reproducible_across_threads(quick_runs, name):
    _, docs = quick_runs
    result = _at_threads(2, experiments.load(name).run, seed=0, quick=True, progress=False)
    assert result.figure._suptitle is not None and result.figure._suptitle.get_text()
    assert _runner.figure_problems(result.figure) == []
    assert all(ax.get_legend() is not None for ax in result.figure.axes if ax.lines or ax.patches)
    assert _untimed(_runner.jsonable(result.measurements)) == _untimed(docs[name]["measurements"])
    for c in result.claims:
        assert c.verdict == _runner.judge(c.value, c.threshold, c.spread)
    assert [c.verdict for c in result.claims if "step" not in c.statistic] == \
        [c["verdict"] for c in docs[name]["claims"] if "step" not in c["statistic"]]


def test_quick_run_depends_on_the_seed(quick_runs):
    from cnnkit.experiments import samplepairing
    other = _at_threads(1, samplepairing.run, seed=1, quick=True, progress=False).measurements
    assert _runner.jsonable(other["with"]) != quick_runs[1]["samplepairing"]["measurements"]["with"]


# ---- the verdict logic on synthetic numbers -----------------------------------------------------------

HOLDS, FAILS, NOISE = "reproduced", "not reproduced", "inconclusive"
# paired differences per seed (positive: the claim's direction) for each case
DIFFS = {HOLDS: [0.05, 0.06, 0.04], FAILS: [-0.05, -0.06, -0.04], NOISE: [0.05, -0.06, 0.02]}


def _pair(base, diffs):
    return list(base), [b + d for b, d in zip(base, diffs)]


BASE = [0.80, 0.85, 0.83]


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_group_conv_verdicts(case):
    from cnnkit.experiments import group_conv as gc
    a1, a32 = _pair(BASE, DIFFS[case])
    f1, f32 = 1e6, 2e6
    # per round: seconds per FLOP ratio 2**d
    t1 = [0.01, 0.011, 0.012]
    t32 = [t * (f32 / f1) * 2.0 ** d for t, d in zip(t1, DIFFS[case])]
    m = {"flops": [f1, 0, 0, 0, f32], "accuracy": {"1": a1, "32": a32}, "timing": {"step_seconds": {"1": t1, "32": t32}}}
    assert [c.verdict for c in gc.judge_claims(m)] == [case, case]


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_depthwise_separable_verdicts(case):
    from cnnkit.experiments import depthwise_separable as ds
    std = list(BASE)
    # "within 1 point": separable - standard, in points, against -1: -1 + 20 d points
    sep = [a - 0.01 + d / 100 * 20 for a, d in zip(std, DIFFS[case])]
    t_sep = [0.01, 0.02, 0.015]
    t_std = [t * 2.0 ** d for t, d in zip(t_sep, DIFFS[case])]
    ratio = {HOLDS: 8.0, FAILS: 2.0, NOISE: 4.0}[case]
    m = {"flops": [ratio * 100, 100], "parameters": [ratio * 10, 10], "accuracy": {"standard": std, "separable": sep},
         "timing": {"step_seconds": {"standard": t_std, "separable": t_sep}}}
    v = [c.verdict for c in ds.judge_claims(m)]
    assert v[:2] == [case, case]  # deterministic ratios: 8 and 2 against 4; exactly 4 decides neither way
    assert v[2] == case and v[4] == case


def test_depthwise_separable_trade_off_claim():
    from cnnkit.experiments import depthwise_separable as ds
    std = list(BASE)
    m = {"flops": [8, 1], "parameters": [8, 1], "timing": {"step_seconds": {"standard": [2, 2], "separable": [1, 1]}}}
    cheaper = ds.judge_claims({**m, "accuracy": {"standard": std, "separable": [a - 0.005 for a in std]}})
    assert cheaper[2].verdict == HOLDS and cheaper[3].verdict == HOLDS  # costs 0.5 points: a trade, a small one
    costly = ds.judge_claims({**m, "accuracy": {"standard": std, "separable": [a - 0.05 for a in std]}})
    assert costly[2].verdict == FAILS and costly[3].verdict == HOLDS
    free = ds.judge_claims({**m, "accuracy": {"standard": std, "separable": [a + 0.02 for a in std]}})
    assert free[2].verdict == HOLDS and free[3].verdict == FAILS


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_regularization_verdicts(case):
    from cnnkit.experiments import regularization as reg
    acc = {}
    for v, (base, _) in reg.VARIANTS.items():
        if base is None:
            acc[v] = list(BASE)
    for v, (base, _) in reg.VARIANTS.items():
        if base is not None:
            acc[v] = _pair(acc[base], DIFFS[case])[1]
    claims, improvement = reg.judge_claims({"test_accuracy": acc})
    assert [c.verdict for c in claims] == [case] * len(reg.CLAIMS)
    assert improvement["dropout"] == pytest.approx([100 * d for d in DIFFS[case]])


def test_regularization_compares_adamw_with_adam():
    from cnnkit.experiments import regularization as reg
    acc = {v: list(BASE) for v in reg.VARIANTS}
    acc["none (Adam)"] = [a - 0.1 for a in BASE]  # AdamW equals SGD's baseline but beats Adam's
    claims, _ = reg.judge_claims({"test_accuracy": acc})
    verdicts = dict(zip([v for v, (b, _) in reg.VARIANTS.items() if b is not None], [c.verdict for c in claims]))
    assert verdicts["decoupled weight decay"] == HOLDS
    assert verdicts["dropout"] == NOISE  # identical: zero difference, zero spread


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_samplepairing_verdicts(case):
    from cnnkit.experiments import samplepairing as sp
    on = [False, False, True, True, False, True, False, False]
    rng = np.random.default_rng(0)
    without_train = [list(rng.uniform(0.5, 0.9, len(on))) for _ in range(3)]
    without_val = [list(rng.uniform(0.5, 0.9, len(on))) for _ in range(3)]
    # with: training accuracy lower by d while on; validation higher by d at the end
    with_train = [[t - (d if o else 0.0) for t, o in zip(ts, on)] for ts, d in zip(without_train, DIFFS[case])]
    with_val = [v[:-2] + [x + d for x in v[-2:]] for v, d in zip(without_val, DIFFS[case])]
    m = {"on": on, "final_epochs": 2, "with": {"train_accuracy": with_train, "val_accuracy": with_val},
         "without": {"train_accuracy": without_train, "val_accuracy": without_val}}
    claims, derived = sp.judge_claims(m)
    assert [c.verdict for c in claims] == [case, case]
    assert derived["train_drop_points_on"] == pytest.approx([100 * d for d in DIFFS[case]])
    assert derived["val_gain_points"] == pytest.approx([100 * d for d in DIFFS[case]])


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_equalization_verdicts(case):
    from cnnkit.experiments import equalization as eq
    acc = {m: _pair(BASE, DIFFS[case])[1] for m in eq.METHODS}
    acc["none"] = list(BASE)
    claims, improvement = eq.judge_claims({"test_accuracy": acc})
    assert [c.verdict for c in claims] == [case] * len(eq.CLAIMS)
    assert set(improvement) == set(eq.METHODS) - {"none"}


# ---- pieces ---------------------------------------------------------------------------------------------

def test_count_macs_matches_a_hand_count():
    from cnnkit.experiments.group_conv import count_macs
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, rng=rng), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, 2, 1, groups=2, rng=rng), nn.ReLU(),
                          nn.DepthwiseSeparableConv2d(8, 6, 3, 1, 1, rng=rng),
                          nn.GlobalAvgPool2d(), nn.Linear(6, 10, rng=rng))
    expected = (8 * 8 * 4 * 1 * 9          # dense 3x3, 8x8 output
                + 4 * 4 * 8 * 2 * 9        # grouped: 4x4 output, 8 channels, 4/2 inputs each
                + 4 * 4 * 8 * 9 + 4 * 4 * 8 * 6  # depthwise then pointwise at 4x4
                + 6 * 10)
    assert count_macs(model, (1, 8, 8)) == expected


def test_group_conv_networks_share_one_parameter_budget():
    from cnnkit.experiments import group_conv as gc
    budget = gc._analytic_params(1, gc.BASE_WIDTH)
    for g in gc.GROUPS:
        w = gc.matched_width(g, budget)
        assert w % g == 0
        model = gc.build(g, w, 0)
        assert model.num_parameters() == gc._analytic_params(g, w)
        assert abs(model.num_parameters() - budget) <= 0.1 * budget
    assert gc.matched_width(32, budget) > 2 * gc.BASE_WIDTH  # wider, not deeper


def test_low_contrast_lowers_contrast_and_is_seeded():
    from cnnkit.experiments.equalization import low_contrast
    x = np.random.default_rng(1).integers(0, 256, (20, 16, 16, 1)).astype(np.uint8)
    x[:, 0, 0] = 0
    x[:, 0, 1] = 255
    y = low_contrast(x, 3)
    assert y.dtype == np.uint8 and y.shape == x.shape
    ptp = y.reshape(20, -1).max(1).astype(int) - y.reshape(20, -1).min(1)
    assert np.all(ptp <= 0.25 * 255 + 12)
    assert np.array_equal(y, low_contrast(x, 3)) and not np.array_equal(y, low_contrast(x, 4))
    with pytest.raises(TypeError, match="images"):
        low_contrast(x.astype(np.float32))
