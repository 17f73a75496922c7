"""cnnkit.augment.search_policy, PolicyController, AutoAugment(policy=table) and the
policy-search experiment.

The controller is tested without training children: its REINFORCE gradient against the exact
gradient of a toy expected reward, and its convergence to the known optimum of a toy reward
(through ``search_policy(reward_fn=...)``). "random" is checked to be uniform with a chi-square
test (which a learned controller fails). Found policies round-trip through JSON and drive
``AutoAugment(policy=...)`` exactly as the sampler does; malformed tables raise ValueError naming
the entry; the published tables given as tables equal the named policies. The experiment gets a
quick smoke run and its verdict logic is checked on synthetic numbers.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cnnkit
from cnnkit import augment, data, experiments
from cnnkit.augment import _search
from cnnkit.augment._policy import AUTOAUGMENT_OPS, POLICIES, augmentation_space, check_policy
from cnnkit.augment.functional import OPS as CODES
from cnnkit.experiments import _runner

NO_MAG = {"AutoContrast", "Equalize", "Invert"}


def _toy_target(S: int) -> np.ndarray:
    rng = np.random.default_rng(42)
    return np.stack([rng.integers(0, 14, (S, 2)), rng.integers(0, 11, (S, 2)), rng.integers(0, 10, (S, 2))], axis=-1)


def _toy_reward(target: np.ndarray, noise: float = 0.0, seed: int = 0):
    """Fraction of the policy's decisions equal to the target's (magnitudes only where they exist)."""
    tgt = _search.PolicyController.policy_of(target)
    rng = np.random.default_rng(seed)

    def reward(policy):
        hits, total = 0, 0
        for sub, tsub in zip(policy, tgt):
            for (op, p, b), (top, tp, tb) in zip(sub, tsub):
                hits += (op == top) + (p == tp)
                total += 2
                if tb is not None:
                    hits += op == top and b == tb
                    total += 1
        return hits / total + noise * rng.standard_normal()
    return reward, tgt


# ---- the controller ------------------------------------------------------------------------
def test_space_matches_the_autoaugment_space():
    assert tuple(augmentation_space("autoaugment", 10, (8, 8))) == AUTOAUGMENT_OPS
    assert {op for op, (bins, _) in augmentation_space("autoaugment", 10, (8, 8)).items() if not bins} == NO_MAG
    assert _search.PROBABILITY_BINS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_grad_log_prob_matches_finite_differences():
    ctrl = augment.PolicyController(2, seed=0)
    rng = np.random.default_rng(1)
    for v in ctrl.logits.values():
        v[...] = rng.standard_normal(v.shape)
    _, choice = ctrl.sample()
    choice[0, 0, 0] = AUTOAUGMENT_OPS.index("Equalize")   # one slot whose magnitude does not count
    grads = ctrl.grad_log_prob(choice)
    eps = 1e-6
    for g, (key, v) in zip(grads, ctrl.logits.items()):
        num = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            old = v[idx]
            v[idx] = old + eps
            up = ctrl.log_prob(choice)
            v[idx] = old - eps
            down = ctrl.log_prob(choice)
            v[idx] = old
            num[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, num, atol=1e-7, err_msg=key)
    assert not grads[2][0, 0].any()   # Equalize's magnitude logits get no gradient
    # the entropy gradient too
    gh = ctrl.grad_entropy()
    v = ctrl.logits["probability"]
    old = v[1, 1, 3]
    v[1, 1, 3] = old + eps
    up = ctrl.entropy()
    v[1, 1, 3] = old - eps
    down = ctrl.entropy()
    v[1, 1, 3] = old
    assert gh[1][1, 1, 3] == pytest.approx((up - down) / (2 * eps), abs=1e-7)


def test_reinforce_gradient_estimate_is_the_gradient_of_the_expected_reward():
    # one slot's op decides the reward: E[R] = sum_k p_k r_k, dE/dz_k = p_k (r_k - E[R])
    ctrl = augment.PolicyController(1, seed=3)
    rng = np.random.default_rng(0)
    ctrl.logits["op"][0, 0] = rng.standard_normal(14)
    r = rng.random(14)
    p = ctrl.probabilities()["op"][0, 0]
    exact = p * (r - p @ r)
    n = 3000
    est = np.zeros((n, 14))
    for i in range(n):
        _, choice = ctrl.sample()
        est[i] = r[choice[0, 0, 0]] * ctrl.grad_log_prob(choice)[0][0, 0]
    mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(mean - exact) < 4 * se + 1e-12), (mean, exact, se)
    assert np.abs(exact).max() > 10 * se.max()   # the test can tell a wrong gradient from the right one


def test_reinforce_converges_to_the_known_optimum():
    target = _toy_target(2)
    reward, tgt = _toy_reward(target, noise=0.02)
    # the controller on its own: its most likely policy becomes the target
    ctrl = augment.PolicyController(2, lr=0.1, seed=0)
    assert ctrl.entropy() == pytest.approx(_search.uniform_entropy(2))
    for _ in range(400):
        pol, choice = ctrl.sample()
        ctrl.update(choice, reward(pol))
    assert ctrl.mode() == tgt
    # through search_policy: the rewards climb from chance to near the optimum, the entropy falls
    _, hist = augment.search_policy(None, None, method="reinforce", budget=400, num_sub_policies=2, top_k=1,
                                    reward_fn=reward, seed=0, controller={"lr": 0.1}, progress=False)
    rewards = np.array([h["reward"] for h in hist])
    assert rewards[-50:].mean() > 0.9 and rewards[:50].mean() < 0.3
    assert hist[-1]["entropy"] < 0.5 * _search.uniform_entropy(2)


def test_baseline_is_a_moving_average_and_random_does_not_learn():
    ctrl = augment.PolicyController(1, baseline_decay=0.5, learn=False, seed=0)
    out = []
    for r in (1.0, 0.0, 0.5):
        _, c = ctrl.sample()
        out.append(ctrl.update(c, r))
    assert [o["baseline"] for o in out] == [1.0, 0.5, 0.5]
    assert [o["advantage"] for o in out] == [0.0, -1.0, 0.0]
    assert all(not v.any() for v in ctrl.logits.values())


def _chi2(counts: np.ndarray) -> float:
    e = counts.sum() / len(counts)
    return float(((counts - e) ** 2 / e).sum())


def test_random_samples_the_op_space_uniformly():
    _, hist = augment.search_policy(None, None, method="random", budget=300, reward_fn=lambda p: 0.0, seed=0,
                                    progress=False)
    entries = [e for h in hist for sub in h["policy"] for e in sub]
    assert len(entries) == 3000
    ops = np.array([sum(op == o for o, _, _ in entries) for op in AUTOAUGMENT_OPS])
    probs = np.array([sum(p == q for _, p, _ in entries) for q in _search.PROBABILITY_BINS])
    mags = np.bincount([b for _, _, b in entries if b is not None], minlength=10)
    # chi-square critical values at p = 0.001: 13 df 34.53, 10 df 29.59, 9 df 27.88
    assert _chi2(ops) < 34.53 and _chi2(probs) < 29.59 and _chi2(mags) < 27.88
    assert sum(b is None for _, _, b in entries) == ops[-3:].sum()
    # the same test rejects a learned (non-uniform) controller
    reward, _ = _toy_reward(_toy_target(5))
    _, learned = augment.search_policy(None, None, budget=300, reward_fn=reward, seed=0, controller={"lr": 0.1},
                                       progress=False)
    ops_l = np.array([sum(e[0] == o for h in learned[-100:] for sub in h["policy"] for e in sub)
                      for o in AUTOAUGMENT_OPS])
    assert _chi2(ops_l) > 34.53


def test_search_is_reproducible_and_returns_top_k():
    reward, _ = _toy_reward(_toy_target(5), noise=0.05)
    a = augment.search_policy(None, None, budget=12, reward_fn=reward, seed=4, top_k=3, progress=False)
    reward, _ = _toy_reward(_toy_target(5), noise=0.05)
    b = augment.search_policy(None, None, budget=12, reward_fn=reward, seed=4, top_k=3, progress=False)
    assert a[0] == b[0] and json.dumps(a[1]) == json.dumps(b[1])
    policy, hist = a
    best = sorted(hist, key=lambda h: -h["reward"])[:3]
    assert policy == tuple(sub for h in best for sub in h["policy"])
    assert check_policy(policy) == policy and len(policy) == 15


def test_randaugment_grid_returns_the_best_pair():
    pol, hist = augment.search_policy(None, None, method="randaugment_grid", budget=9, seed=0, progress=False,
                                      reward_fn=lambda c: -abs(c["num_ops"] - 2) - abs(c["magnitude"] - 15) / 30)
    assert [tuple(h["policy"][k] for k in ("num_ops", "magnitude")) for h in hist] == _search.randaugment_grid(9)
    assert pol == {"num_ops": 2, "magnitude": 15, "num_magnitude_bins": 31}
    augment.RandAugment(**pol)


def test_search_trains_children_and_is_seeded():
    ds = data.load_digits(as_uint8=True)
    tr, va = ds.subset(slice(0, 60)), ds.subset(slice(60, 120))
    proxy = {"epochs": 1, "widths": (4,)}
    runs = [augment.search_policy(tr, va, method=m, budget=2, proxy=proxy, seed=1, top_k=1, progress=False)
            for m in ("random", "random", "randaugment_grid")]
    assert runs[0][0] == runs[1][0] and [h["reward"] for h in runs[0][1]] == [h["reward"] for h in runs[1][1]]
    assert all(0.0 <= h["reward"] <= 1.0 for _, hist in runs for h in hist)


def test_search_rejects_bad_arguments():
    ds = data.load_digits(as_uint8=True).subset(slice(0, 20))
    f = lambda p: 0.0  # noqa: E731
    with pytest.raises(ValueError, match="method"):
        augment.search_policy(None, None, method="ppo", reward_fn=f)
    with pytest.raises(ValueError, match="budget"):
        augment.search_policy(None, None, budget=0, reward_fn=f)
    with pytest.raises(TypeError, match="train"):
        augment.search_policy(None, ds)
    with pytest.raises(TypeError, match="train.images"):
        augment.search_policy(data.load_digits().subset(slice(0, 20)), ds)
    with pytest.raises(ValueError, match="proxy"):
        augment.search_policy(ds, ds, proxy={"epoch": 3})
    with pytest.raises(TypeError, match="reward_fn"):
        augment.search_policy(None, None, reward_fn=3)
    with pytest.raises(TypeError, match="controller"):
        augment.search_policy(None, None, reward_fn=f, controller=0.1)
    with pytest.raises(TypeError, match="reward_fn"):
        augment.search_policy(None, None, reward_fn=lambda p: "good", budget=1, progress=False)


# ---- policy tables, JSON and AutoAugment(policy=...) ------------------------------------------
def _images(n=16, h=12, w=10, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_found_policy_round_trips_through_json_and_drives_autoaugment():
    reward, _ = _toy_reward(_toy_target(5), noise=0.05)
    policy, _ = augment.search_policy(None, None, budget=10, reward_fn=reward, seed=0, progress=False)
    text = augment.policy_to_json(policy)
    back = augment.policy_from_json(text)
    assert back == policy
    x = _images()
    for form in (back, json.loads(text)):          # the table, or the JSON-decoded lists
        t = augment.AutoAugment(policy=form, seed=5)
        out = t(x)
        ref = augment.sample_autoaugment_params(np.random.default_rng(5), len(x), x.shape[1:3], policy)
        for k in ("ops", "magnitudes", "policy"):
            np.testing.assert_array_equal(t.last_params[k], ref[k])
        # every image's ops are its sub-policy's ops or Identity
        for i, sid in enumerate(ref["policy"]):
            for j, (op, _, _) in enumerate(policy[sid]):
                assert CODES[ref["ops"][i, j]] in (op, "Identity")
        np.testing.assert_array_equal(augment.functional.apply_ops(x, ref["ops"], ref["magnitudes"]), out)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_published_tables_given_as_tables_equal_the_named_policies(name):
    x = _images(32, seed=1)
    named = augment.AutoAugment(name, seed=9)
    table = augment.AutoAugment(policy=POLICIES[name], seed=9)
    decoded = augment.AutoAugment(policy=json.loads(augment.policy_to_json(name)), seed=9)
    a, b, c = named(x), table(x), decoded(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    for k in named.last_params:
        np.testing.assert_array_equal(named.last_params[k], table.last_params[k])
    assert augment.policy_from_json(augment.policy_to_json(name)) == POLICIES[name]
    assert check_policy(POLICIES[name]) == POLICIES[name]


GOOD = [("Rotate", 0.5, 3), ("Equalize", 1.0, None)]
BAD = [
    ([GOOD, [("Rotat", 0.5, 3), ("Equalize", 1.0, None)]], r"policy\[1\]\[0\]: unknown op 'Rotat'"),
    ([GOOD, [("Rotate", 0.5, 3), ("Equalize", 1.5, None)]], r"policy\[1\]\[1\]: expected a probability"),
    ([[("Rotate", -0.1, 3), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected a probability"),
    ([[("Rotate", "0.5", 3), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected a probability"),
    ([[("Rotate", True, 3), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected a probability"),
    ([GOOD, GOOD, [("Rotate", 0.5, 10), ("Equalize", 1.0, None)]], r"policy\[2\]\[0\]: expected a magnitude_bin"),
    ([[("Rotate", 0.5, -1), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected a magnitude_bin"),
    ([[("Rotate", 0.5, 2.0), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected a magnitude_bin"),
    ([[("Rotate", 0.5, None), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: Rotate needs a magnitude_bin"),
    ([[("Rotate", 0.5, 3), ("Equalize", 1.0, 4)]], r"policy\[0\]\[1\]: Equalize has no magnitude"),
    ([[("Rotate", 0.5), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected an \(op, probability"),
    ([[("Rotate", 0.5, 3, 1), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: expected an \(op, probability"),
    ([GOOD, [("Rotate", 0.5, 3)]], r"policy\[1\]: expected a sub-policy of 2"),
    ([GOOD + [("Rotate", 0.5, 3)]], r"policy\[0\]: expected a sub-policy of 2"),
    ([GOOD, "Rotate"], r"policy\[1\]: expected a sub-policy of 2"),
    ([], r"policy: expected at least one sub-policy"),
    ([[("Identity", 0.5, None), ("Equalize", 1.0, None)]], r"policy\[0\]\[0\]: unknown op 'Identity'"),
]


@pytest.mark.parametrize("table, message", BAD)
def test_bad_policies_raise_value_error_naming_the_entry(table, message):
    with pytest.raises(ValueError, match=message):
        check_policy(table)
    with pytest.raises(ValueError, match=message):
        augment.AutoAugment(policy=table)
    with pytest.raises(ValueError, match=message):
        augment.sample_autoaugment_params(np.random.default_rng(0), 2, (8, 8), table)
    if not any(isinstance(e, str) for sub in table for e in (sub if isinstance(sub, list) else [sub])):
        text = json.dumps([[list(e) for e in sub] for sub in table])
        with pytest.raises(ValueError, match=message):
            augment.policy_from_json(text)


def test_bad_policy_types_and_names():
    with pytest.raises(TypeError, match="policy"):
        augment.AutoAugment(policy=3)
    with pytest.raises(ValueError, match="policy"):
        augment.AutoAugment(policy="mnist")
    with pytest.raises(ValueError, match="text"):
        augment.policy_from_json("{not json")
    with pytest.raises(ValueError, match="text"):
        augment.policy_from_json('{"a": 1}')
    with pytest.raises(TypeError, match="text"):
        augment.policy_from_json(3)


def test_evaluate_policy_rejects_bad_policies_before_training():
    ds = data.load_digits(as_uint8=True).subset(slice(0, 20))
    with pytest.raises(ValueError, match=r"policy\[0\]\[0\]"):
        _search.evaluate_policy([[("Nope", 0.5, 1), ("Equalize", 1.0, None)]], ds, ds)
    with pytest.raises(TypeError, match="policy"):
        _search.evaluate_policy({"num_op": 2}, ds, ds)


# ---- the experiment ---------------------------------------------------------------------------
HOLDS, FAILS, NOISE = "reproduced", "not reproduced", "inconclusive"
DIFFS = {HOLDS: [0.05, 0.06, 0.04], FAILS: [-0.05, -0.06, -0.04], NOISE: [0.05, -0.06, 0.02]}


@pytest.mark.parametrize("case", [HOLDS, FAILS, NOISE])
def test_policy_search_verdicts(case):
    from cnnkit.experiments import policy_search as ps
    rng = np.random.default_rng(0)
    base = list(rng.uniform(0.8, 0.9, 3))
    d = DIFFS[case]
    acc = {"none": [b - x for b, x in zip(base, d)], "cifar10 (published)": [b - x for b, x in zip(base, d)],
           "random search": [b - x for b, x in zip(base, d)], "REINFORCE search": base,
           "RandAugment grid": [b - 0.01 + x for b, x in zip(base, d)], "uniform random policy": base}
    rand = [list(rng.uniform(0.5, 0.7, 8)) for _ in range(3)]
    reinf = [r[:4] + [v + x for v in r[4:]] for r, x in zip(rand, d)]
    claims, derived = ps.judge_claims({"test_accuracy": acc, "rewards": {"reinforce": reinf, "random": rand}})
    assert [c.verdict for c in claims] == [case] * 5
    assert derived["search_minus_random_points"] == pytest.approx([100 * x for x in d])
    assert derived["late_reward_gain_points"] == pytest.approx([100 * x for x in d])
    assert derived["grid_minus_search_points"] == pytest.approx([100 * x - 1 for x in d])
    assert claims[4].threshold == -1.0


def test_policy_search_registered_and_quick_run(tmp_path):
    from cnnkit.experiments import policy_search as ps
    assert "policy-search" in experiments.EXPERIMENTS and "policy-search" in experiments.available()
    assert experiments.load("policy-search") is ps
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(1)
    try:
        res = ps.run(seed=0, quick=True, progress=False)
    finally:
        cnnkit.set_num_threads(before)
    assert _runner.figure_problems(res.figure) == []
    doc = _runner.finish(res, tmp_path, seed=0, quick=True)
    assert {"policy-search.json", "policy-search.png", "summary.md"} <= set(os.listdir(tmp_path))
    assert json.loads((tmp_path / "policy-search.json").read_text()) == doc
    m = doc["measurements"]
    assert set(m["test_accuracy"]) == set(m["conditions"]) == set(ps.CONDITIONS)
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in m["test_accuracy"].values())
    assert [len(r[0]) for r in m["rewards"].values()] == [3, 3, 3]
    assert len(doc["claims"]) == 5 and all(c["verdict"] == "inconclusive" for c in doc["claims"])  # one seed
    found = m["policies"][0]["reinforce"]
    assert len(found) == 15 and augment.policy_from_json(json.dumps(found)) == check_policy(found)
    assert len(m["op_probabilities"][0]) == 14 and sum(m["op_probabilities"][0]) == pytest.approx(1.0)
