"""bn-lr-stress: the learning-rate stress test (batch norm, group norm, neither).

One training run per network and seed in which the learning rate of SGD (momentum 0.9) rises
exponentially from 1e-4 to 10 (five decades) over the run, on scikit-learn's 8x8 digits with
:func:`cnnkit.experiments._runner.small_cnn` (two 3x3 convolutions, 16 and 32 channels). The
training accuracy of each batch (measured before its step, as :func:`cnnkit.train.fit` does) is
smoothed with a trailing moving average over 4% of the run and plotted against the learning rate.

Statistic: the decades of learning rate (the count of steps times the decades per step) where
the smoothed accuracy is within 10 points of its best and above 50% (the floor keeps a network
that never learns, whose accuracy hovers near chance, from counting as trainable). A run whose loss stops being finite is
stopped there; its later steps count as untrainable. Claims: batch norm and group norm each give
more such decades than no normalization (the paired difference over seeds, threshold 0).
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np

from . import _runner as R

NAME = "bn-lr-stress"
TITLE = "Learning-rate stress test: accuracy as the learning rate rises from 1e-4 to 10"
CLAIMS = ["Batch norm keeps the network trainable over a wider range of learning rates than no normalization",
          "Group norm keeps the network trainable over a wider range of learning rates than no normalization"]

_LR_LO, _LR_HI = 1e-4, 10.0
_NORMS: tuple[Optional[str], ...] = ("batch", "group", None)
_LABEL = {"batch": "batch norm", "group": "group norm", None: "neither"}
_KEY = {"batch": "batch", "group": "group", None: "none"}


def _settings(quick: bool) -> dict[str, Any]:
    return {"steps": 200 if quick else 2000, "batch_size": 32, "lr_start": _LR_LO, "lr_end": _LR_HI,
            "momentum": 0.9, "widths": [16, 32], "smooth_fraction": 0.04, "within": 0.10,
            "floor": 0.5}


def _lrs(steps: int) -> np.ndarray:
    """The exponential schedule: ``lr_t = 1e-4 * (1e5) ** (t / (steps - 1))``, t = 0 .. steps-1."""
    return _LR_LO * (_LR_HI / _LR_LO) ** (np.arange(steps) / (steps - 1))


def _smooth(acc: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first values average what exists so far)."""
    c = np.cumsum(np.concatenate([[0.0], acc]))
    i = np.arange(1, len(acc) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def _decades(smoothed: np.ndarray, steps: int, within: float, floor: float) -> float:
    """Decades of learning rate where ``smoothed`` is within ``within`` of its maximum and at
    least ``floor``."""
    best = np.nanmax(smoothed)
    ok = np.nan_to_num(smoothed, nan=-1.0) >= max(best - within, floor)
    return float(np.sum(ok) * math.log10(_LR_HI / _LR_LO) / (steps - 1))


def _one_run(norm: Optional[str], seed: int, st: dict[str, Any], train_set: Any, bar: Any) -> dict[str, Any]:
    """Train once under the rising schedule; per-step batch accuracy (NaN-free) and loss."""
    from .. import data, optim
    from ..nn import CrossEntropyLoss
    steps = st["steps"]
    lrs = _lrs(steps)
    model = R.small_cnn(norm, widths=st["widths"], seed=seed)
    opt = optim.SGD(model.parameters(), lr=float(lrs[0]), momentum=st["momentum"])
    loss_fn = CrossEntropyLoss()
    loader = data.DataLoader(train_set, st["batch_size"], shuffle=True, drop_last=True, seed=seed)
    acc = np.full(steps, 0.0)
    loss = np.full(steps, np.nan)
    diverged_at: Optional[float] = None
    t = 0
    model.train()
    while t < steps and diverged_at is None:
        for x, y in loader:
            if t >= steps:
                break
            opt.param_groups[0]["lr"] = float(lrs[t])
            logits = model.forward(x)
            value = loss_fn.forward(logits, y)
            if not math.isfinite(value):
                diverged_at = float(lrs[t])
                break
            acc[t] = float(np.mean(np.argmax(logits, axis=1) == y))
            loss[t] = value
            model.backward(loss_fn.backward())
            opt.step(model.gradients())
            t += 1
            bar.update(1)
    if t < steps:
        bar.update(steps - t)
    # after a divergence the network is not trainable: the remaining steps keep accuracy 0
    smoothed = _smooth(acc, max(1, int(round(st["smooth_fraction"] * steps))))
    if diverged_at is not None:
        smoothed[t:] = 0.0
    return {"accuracy": acc, "smoothed": smoothed, "loss": loss, "diverged_at_lr": diverged_at,
            "decades": _decades(smoothed, steps, st["within"], st["floor"]), "best": float(np.max(smoothed))}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> R.Result:
    """Run the learning-rate stress test.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed (model initialization and batch order); default settings use three.
    quick : bool, default False
        200 steps and one seed instead of 2000 steps and three seeds.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``lr`` (per step), and per network ("batch", "group", "none"):
        ``decades`` (one per seed), ``decades_mean``, ``decades_spread``, ``best_accuracy``
        (per seed), ``diverged_at_lr`` (per seed, None if it never diverged), ``smoothed_accuracy``
        (the mean over seeds, per step); ``decades_gain_batch``/``decades_gain_group`` (paired
        differences to "none", per seed). Two claims.
    """
    t0 = time.perf_counter()
    ss = R.seeds(seed, quick)
    st = _settings(quick)
    st.update(seeds=ss, seed=seed, quick=quick, optimizer="SGD", dataset="digits 8x8 (train split, 75%)")
    bar = R.progress_bar(len(ss) * len(_NORMS) * st["steps"], NAME, progress)
    runs: dict[str, list[dict[str, Any]]] = {_KEY[n]: [] for n in _NORMS}
    try:
        for s in ss:
            train_set, _ = R.digits_split(s)
            for norm in _NORMS:
                runs[_KEY[norm]].append(_one_run(norm, s, st, train_set, bar))
    finally:
        bar.close()
    lrs = _lrs(st["steps"])
    meas: dict[str, Any] = {"lr": lrs}
    for k, rs in runs.items():
        d = [r["decades"] for r in rs]
        m, sp = R.mean_spread(d)
        meas[k] = {"decades": d, "decades_mean": m, "decades_spread": sp,
                   "best_accuracy": [r["best"] for r in rs], "diverged_at_lr": [r["diverged_at_lr"] for r in rs],
                   "smoothed_accuracy": np.mean([r["smoothed"] for r in rs], axis=0)}
    claims = []
    for k, text in (("batch", CLAIMS[0]), ("group", CLAIMS[1])):
        gain = [a - b for a, b in zip(meas[k]["decades"], meas["none"]["decades"])]
        meas[f"decades_gain_{k}"] = gain
        m, sp = R.mean_spread(gain)
        claims.append(R.claim(text, f"decades of learning rate within 10 points of the best accuracy (and > 50%), "
                                    f"{_LABEL[k]} minus neither (mean over {len(ss)} seeds)",
                              m, 0.0, sp if len(ss) > 1 else R.UNKNOWN_SPREAD))
    fig = _figure(lrs, meas, st)
    return R.Result(NAME, TITLE, st, meas, claims, fig, time.perf_counter() - t0)


def _figure(lrs: np.ndarray, meas: dict[str, Any], st: dict[str, Any]) -> Any:
    fig, (a0, a1) = R.new_figure(1, 2, title=TITLE)
    a0.plot(np.arange(len(lrs)), lrs, color="k")
    a0.set(yscale="log", xlabel="training step", ylabel="learning rate", title="The schedule: 1e-4 to 10")
    for norm in _NORMS:
        k = _KEY[norm]
        sm = np.asarray(meas[k]["smoothed_accuracy"])
        a1.plot(lrs, sm, label=f"{_LABEL[norm]}: {meas[k]['decades_mean']:.2f} decades")
        best = float(np.max(sm))
        a1.fill_between(lrs, 0, 1, where=sm >= max(best - st["within"], st["floor"]), alpha=0.08, step="mid")
    a1.set(xscale="log", ylim=(0, 1), xlabel="learning rate (log scale)",
           ylabel="training accuracy (moving average)",
           title="Shaded: within 10 points of the best (and > 50%)")
    a1.legend(loc="lower left")
    return fig
