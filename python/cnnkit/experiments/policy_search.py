"""``policy-search``: an AutoAugment-style policy search on a proxy task, against random search,
RandAugment's grid, the published CIFAR-10 policy and no augmentation (Cubuk et al. 2019; 2020).

Per seed, scikit-learn's digits (16x16, uint8) are split into a test set (450 images, never seen
by the search) and a reduced training set of 500 images. The searches run on a proxy task cut
from that training set: 200 images to train each child (the default two-convolution CNN of
:func:`cnnkit.augment.search_policy`, 15 epochs) and 300 to score it. Every method trains the
same number of children (``budget``):

* REINFORCE: :func:`cnnkit.augment.search_policy` with ``method="reinforce"`` (a factorized
  controller trained by REINFORCE with a moving-average baseline; the policy is the best 5
  candidates of 5 sub-policies, 25 sub-policies, as AutoAugment);
* random search: the same sampler left uniform, the same top-5 selection;
* RandAugment grid: RandAugment's ``(N, M)`` on a grid, the best pair.

Each policy found, the published CIFAR-10 policy, one uniformly random policy of 25
sub-policies (no selection) and no augmentation then train a full model (the same CNN, 40
epochs on the 500 images) whose test accuracy is reported.

REINFORCE and random search share their child seeds and their sampling stream (common random
numbers, see :func:`cnnkit.augment.search_policy`), so their paired difference measures what the
controller learned. The default run trains 3 x 144 children and 3 x 6 full models: about 400 s
of CPU time at one thread (``--threads 1``; these networks are too small for two threads to
help, and on a busy machine two threads are several times slower).

Claims tested
-------------
* At equal budget, the REINFORCE search finds a better policy than random search (test accuracy).
* At equal budget, the controller's candidates earn more reward than uniform ones (second half of
  the budget): the controller learns.
* The searched policy improves test accuracy over no augmentation (AutoAugment's claim).
* A policy searched on the task beats the published CIFAR-10 policy transferred to it.
* RandAugment's two-number grid matches the learned policy (RandAugment's claim: within one point).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import augment, data
from ..augment import _search
from ..augment._policy import AUTOAUGMENT_OPS
from ._runner import Result, claim, mean_spread, new_figure, progress_bar, seeds

__all__ = ["NAME", "TITLE", "CLAIMS", "CONDITIONS", "run", "judge_claims", "splits"]

NAME = "policy-search"
TITLE = "Learned augmentation policies on a proxy task (digits 16x16, 500 training images)"
CLAIMS = [
    "At equal budget, the REINFORCE search finds a better policy than random search",
    "At equal budget, the controller's candidates earn more reward than uniform ones (it learns)",
    "The searched policy improves test accuracy over no augmentation",
    "A policy searched on the task beats the published CIFAR-10 policy",
    "RandAugment's (N, M) grid matches the searched policy (within 1 point)",
]
#: The policies that train a full model, in the figure's order.
CONDITIONS = ["none", "cifar10 (published)", "uniform random policy", "random search", "RandAugment grid",
              "REINFORCE search"]
SIZE = 16


def splits(seed: int, *, train_size: int = 500, proxy_train: int = 200) -> dict[str, data.ArrayDataset]:
    """The seed's data (uint8 NHWC 16x16 digits): ``test`` (25% of the digits, stratified),
    ``train`` (``train_size`` of the rest, stratified) and the proxy task cut from ``train``:
    ``proxy_train`` (``proxy_train`` images) and ``proxy_val`` (the others).

    Parameters
    ----------
    seed : int
        The splits' seed.
    train_size : int, default 500
    proxy_train : int, default 200

    Returns
    -------
    dict of str to cnnkit.data.ArrayDataset
        ``train``, ``test``, ``proxy_train``, ``proxy_val``.

    Examples
    --------
    >>> from cnnkit.experiments.policy_search import splits
    >>> d = splits(0, train_size=100, proxy_train=40)
    >>> len(d["train"]), len(d["proxy_train"]), len(d["proxy_val"]), d["train"].images.dtype
    (100, 40, 60, dtype('uint8'))
    """
    ds = data.load_digits(size=SIZE, as_uint8=True)
    rest, test = data.train_test_split(ds, 0.25, seed=seed)
    _, train = data.train_test_split(rest, train_size, seed=seed + 1000)
    pval, ptrain = data.train_test_split(train, proxy_train, seed=seed + 2000)
    return {"train": train, "test": test, "proxy_train": ptrain, "proxy_val": pval}


def _moving(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, float), 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - w, 0)
    return (c[n] - c[lo]) / (n - lo)


def _mean_probability(policy: Any) -> float:
    """The mean probability of a table's entries (how often an op is applied)."""
    return float(np.mean([p for sub in policy for _, p, _ in sub]))


def judge_claims(measurements: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """Judge :data:`CLAIMS` (the rule of :func:`cnnkit.experiments._runner.judge`, differences in
    points, paired over seeds, spread their standard deviation over seeds).

    Parameters
    ----------
    measurements : dict
        ``test_accuracy``: {condition: [per seed]} for ``"none"``, ``"cifar10 (published)"``,
        ``"random search"``, ``"RandAugment grid"`` and ``"REINFORCE search"``; ``rewards``:
        {"reinforce": [[per child] per seed], "random": [[...] per seed]}.

    Returns
    -------
    (list of Claim, dict)
        The five claims and the per-seed statistics: ``search_minus_random_points``,
        ``late_reward_gain_points`` (mean reward over the second half of the budget, REINFORCE
        minus random), ``search_minus_none_points``, ``search_minus_cifar10_points`` and
        ``grid_minus_search_points``.
    """
    acc = {k: np.asarray(v, dtype=float) for k, v in measurements["test_accuracy"].items()}
    rew = {k: [np.asarray(r, dtype=float) for r in v] for k, v in measurements["rewards"].items()}
    search = acc["REINFORCE search"]
    d = {"search_minus_random_points": 100 * (search - acc["random search"]),
         "late_reward_gain_points": 100 * np.array([a[len(a) // 2:].mean() - b[len(b) // 2:].mean()
                                                    for a, b in zip(rew["reinforce"], rew["random"])]),
         "search_minus_none_points": 100 * (search - acc["none"]),
         "search_minus_cifar10_points": 100 * (search - acc["cifar10 (published)"]),
         "grid_minus_search_points": 100 * (acc["RandAugment grid"] - search)}
    texts = ["test accuracy, REINFORCE-searched minus random-search policy, in points",
             "mean reward over the second half of the budget, REINFORCE minus random, in points",
             "test accuracy, searched policy minus no augmentation, in points",
             "test accuracy, searched policy minus the published CIFAR-10 policy, in points",
             "test accuracy, RandAugment grid minus searched policy, in points"]
    keys = list(d)
    thresholds = [0.0, 0.0, 0.0, 0.0, -1.0]
    claims = []
    for text, stat, key, thr in zip(CLAIMS, texts, keys, thresholds):
        m, s = mean_spread(d[key])
        claims.append(claim(text, stat + " (mean over seeds, paired)", m, thr, s))
    return claims, {k: v.tolist() for k, v in d.items()}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Search with each method, train a full model with every policy, plot, and judge the claims.

    Parameters
    ----------
    seed : int, default 0
        First seed (``seed``, ``seed + 1``, ``seed + 2``; only ``seed`` with ``quick``).
    quick : bool, default False
        A smoke run: budget 3, children of 4 epochs on 64 images, full models of 15 epochs on
        128 images, one seed.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``conditions``, ``test_accuracy`` ({condition: [per seed]}),
        ``rewards`` ({method: [[per child] per seed]}), ``baseline`` and ``entropy`` (the
        controller's, per child, per seed), ``candidate_mean_probability`` ({"reinforce",
        "random"}: per child, per seed), ``op_probabilities`` (the controller's final op
        distribution per seed, ``ops`` order), ``found_op_counts`` ({"reinforce", "random"}:
        per seed, ops in the returned policy), ``policies`` (per seed: each method's policy,
        JSON-able), and the claims' per-seed statistics.

    Examples
    --------
    >>> from cnnkit.experiments import policy_search
    >>> policy_search.NAME
    'policy-search'
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick)
    if quick:
        budget, train_size, proxy_train = 3, 128, 64
        proxy = _search.ProxyConfig(epochs=4, widths=(8, 16))
        full = _search.ProxyConfig(epochs=15, widths=(16, 32))
    else:
        budget, train_size, proxy_train = 48, 500, 200
        proxy = _search.ProxyConfig(epochs=15, widths=(16, 32))
        full = _search.ProxyConfig(epochs=40, widths=(16, 32))
    controller = {"lr": 0.2, "baseline_decay": 0.8}
    methods = ("reinforce", "random", "randaugment_grid")
    bar = progress_bar(len(run_seeds) * (3 * budget + len(CONDITIONS)), NAME, progress)
    acc: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    rewards: dict[str, list[list[float]]] = {m: [] for m in methods}
    baseline, entropy, op_probs, policies = [], [], [], []
    cand_p: dict[str, list[list[float]]] = {"reinforce": [], "random": []}
    found_counts: dict[str, list[list[int]]] = {"reinforce": [], "random": []}
    for s in run_seeds:
        d = splits(s, train_size=train_size, proxy_train=proxy_train)
        found: dict[str, Any] = {}
        for m in methods:
            pol, hist = augment.search_policy(d["proxy_train"], d["proxy_val"], method=m, budget=budget, proxy=proxy,
                                              seed=s, controller=controller, progress=False)
            bar.update(budget)
            found[m] = pol
            rewards[m].append([h["reward"] for h in hist])
            if m == "reinforce":
                baseline.append([h["baseline"] for h in hist])
                entropy.append([h["entropy"] for h in hist])
                op_probs.append(hist[-1]["op_probabilities"])
            if m in cand_p:
                cand_p[m].append([_mean_probability(h["policy"]) for h in hist])
                found_counts[m].append([sum(e[0] == op for sub in pol for e in sub) for op in AUTOAUGMENT_OPS])
        uniform, _ = augment.search_policy(None, None, method="random", budget=5, reward_fn=lambda p: 0.0,
                                           seed=s + 7919, progress=False)
        by_condition = {"none": None, "cifar10 (published)": "cifar10", "uniform random policy": uniform,
                        "random search": found["random"], "RandAugment grid": found["randaugment_grid"],
                        "REINFORCE search": found["reinforce"]}
        for c in CONDITIONS:
            acc[c].append(_search.evaluate_policy(by_condition[c], d["train"], d["test"], proxy=full, seed=s))
            bar.update(1)
        policies.append({"reinforce": found["reinforce"], "random": found["random"],
                         "randaugment_grid": found["randaugment_grid"], "uniform": uniform})
    bar.close()

    measurements: dict[str, Any] = {
        "conditions": CONDITIONS, "test_accuracy": acc, "rewards": rewards, "baseline": baseline,
        "entropy": entropy, "uniform_entropy": _search.uniform_entropy(5), "candidate_mean_probability": cand_p,
        "ops": list(AUTOAUGMENT_OPS), "op_probabilities": op_probs, "found_op_counts": found_counts,
        "policies": policies}
    claims, derived = judge_claims(measurements)
    measurements.update(derived)
    fig = _figure(measurements)
    settings = {"dataset": f"digits {SIZE}x{SIZE} uint8: {train_size} training images (the proxy: {proxy_train} "
                           f"to train children, {train_size - proxy_train} to score them), 450 test images",
                "budget": budget, "methods": list(methods), "num_sub_policies": 5, "top_k": 5,
                "controller": controller, "proxy": {k: v for k, v in vars(proxy).items() if k != "build"},
                "full_model": {k: v for k, v in vars(full).items() if k != "build"},
                "network": "conv3x3-BN-ReLU, maxpool, conv3x3-BN-ReLU, global average pool, linear",
                "optimizer": "SGD momentum 0.9, weight decay 5e-4, lr 0.1 cosine-annealed, batch 32",
                "seeds": run_seeds}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _figure(m: dict[str, Any]) -> Any:
    fig, axes = new_figure(2, 2, title=TITLE, width=6.0, height=4.2)
    ax1, ax2, ax3, ax4 = axes
    # (a) test accuracy per condition
    names = m["conditions"]
    for i, c in enumerate(names):
        a = 100 * np.asarray(m["test_accuracy"][c], dtype=float)
        sd = a.std(ddof=1) if len(a) > 1 else 0.0
        ax1.bar(i, a.mean(), yerr=sd, color="tab:red" if c == "REINFORCE search" else "tab:blue", alpha=0.7,
                capsize=3, label="mean ± sd over seeds" if i == 0 else None)
        ax1.plot(np.full(len(a), i), a, "k.", label="one seed" if i == 0 else None)
    lo = min(100 * min(v) for v in m["test_accuracy"].values())
    ax1.set_ylim(max(0.0, lo - 5), 100)
    ax1.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize="small")
    ax1.set(title="Full model trained with each policy", xlabel="policy", ylabel="test accuracy (%)")
    ax1.legend(loc="lower right", fontsize="small")
    # (b) reward curves
    for key, color, label in (("reinforce", "tab:red", "REINFORCE"), ("random", "tab:blue", "random search")):
        r = 100 * np.asarray(m["rewards"][key], dtype=float)
        x = np.arange(1, r.shape[1] + 1)
        ax2.plot(x, r.mean(axis=0), ".", color=color, alpha=0.4)
        ax2.plot(x, _moving(r.mean(axis=0), 8), color=color, label=f"{label} (moving average of 8)")
    b = 100 * np.asarray(m["baseline"], dtype=float)
    ax2.plot(np.arange(1, b.shape[1] + 1), b.mean(axis=0), "--", color="tab:red", lw=1,
             label="controller baseline")
    ax2.set(title="Reward of each child (mean over seeds)", xlabel="child", ylabel="proxy validation accuracy (%)")
    ax2.legend(loc="lower right", fontsize="small")
    # (c) ops favoured
    ops = m["ops"]
    p = np.asarray(m["op_probabilities"], dtype=float).mean(axis=0)
    cnt = np.asarray(m["found_op_counts"]["reinforce"], dtype=float).mean(axis=0)
    x = np.arange(len(ops))
    ax3.bar(x - 0.2, p, 0.4, color="tab:red", label="controller's final op probability")
    ax3.bar(x + 0.2, cnt / max(cnt.sum(), 1.0), 0.4, color="tab:orange", label="share in the searched policy")
    ax3.axhline(1 / len(ops), color="k", ls="--", lw=1, label="uniform (1/14)")
    ax3.set_xticks(x, ops, rotation=60, fontsize="small")
    ax3.set(title="Ops the search favoured (mean over seeds)", xlabel="op", ylabel="probability / share")
    ax3.legend(loc="upper right", fontsize="small")
    # (d) how strong the candidates are
    for key, color, label in (("reinforce", "tab:red", "REINFORCE"), ("random", "tab:blue", "random search")):
        q = np.asarray(m["candidate_mean_probability"][key], dtype=float)
        ax4.plot(np.arange(1, q.shape[1] + 1), _moving(q.mean(axis=0), 8), color=color,
                 label=f"{label} (moving average of 8)")
    ax4.set(title="Mean probability of the candidates' ops", xlabel="child", ylabel="mean op probability")
    ax4.legend(loc="lower left", fontsize="small")
    return fig
