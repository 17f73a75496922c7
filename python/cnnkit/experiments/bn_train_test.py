"""bn-train-test: batch norm with batch statistics (training) vs running statistics (test).

:func:`cnnkit.experiments._runner.small_cnn` with batch norm (two 3x3 convolutions, 16 and 32
channels) trained on scikit-learn's 8x8 digits with SGD (momentum 0.9, learning rate 0.05,
batch 32), with the running-statistics factor (``BatchNorm2d(momentum=...)``, PyTorch's
convention: the weight of the newest batch) 0.01, 0.1 or 0.5. Four times per epoch the test set
is classified twice: in eval mode (running statistics) and in training mode on batches of 64
(batch statistics; the running statistics are saved and restored around it, so the measurement
does not disturb training).

Statistics (beyond the spread over seeds): the first claim holds if, at the default factor 0.1,
the fraction of test images whose predicted class differs between the two modes, averaged over
the checkpoints, exceeds 1%; the second if the mean absolute accuracy gap between the modes is
larger at factor 0.01 (a slow running average that lags the changing weights) than at 0.1.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import _runner as R

NAME = "bn-train-test"
TITLE = "Batch norm at training vs test time: batch statistics vs running statistics"
CLAIMS = ["Batch norm behaves differently at training and test time (batch vs running statistics)",
          "The train/test gap depends on the running-average momentum: a slower average (0.01) lags more "
          "than the default (0.1)"]

_MOMENTA = (0.01, 0.1, 0.5)


def _predict(model: Any, x: np.ndarray, batch_stats: bool, batch: int = 64) -> np.ndarray:
    """Predicted classes; ``batch_stats``: training-mode forward, buffers restored afterwards."""
    from ..nn import BatchNorm2d
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    saved = [{k: v.copy() for k, v in m.buffers.items()} for m in bns]
    was = model.training
    model.train(batch_stats)
    try:
        return np.concatenate([np.argmax(model.forward(x[i:i + batch]), axis=1) for i in range(0, len(x), batch)])
    finally:
        for m, b in zip(bns, saved):
            for k, v in b.items():
                m.buffers[k][...] = v
        model.train(was)


def _one_run(momentum: float, seed: int, st: dict[str, Any], train_set: Any, test_set: Any) -> dict[str, Any]:
    from .. import data, optim
    from ..nn import CrossEntropyLoss
    model = R.small_cnn("batch", widths=st["widths"], seed=seed, bn_momentum=momentum)
    opt = optim.SGD(model.parameters(), lr=st["lr"], momentum=0.9)
    loss_fn = CrossEntropyLoss()
    loader = data.DataLoader(train_set, st["batch_size"], shuffle=True, drop_last=True, seed=seed)
    every = max(1, len(loader) // st["checkpoints_per_epoch"])
    x_test, y_test = test_set.images, test_set.labels
    steps, acc_batch, acc_running, disagree = [], [], [], []
    step = 0
    for _ in range(st["epochs"]):
        for x, y in loader:
            model.train()
            logits = model.forward(x)
            loss_fn.forward(logits, y)
            model.backward(loss_fn.backward())
            opt.step(model.gradients())
            step += 1
            if step % every == 0:
                pb = _predict(model, x_test, True)
                pr = _predict(model, x_test, False)
                steps.append(step)
                acc_batch.append(float(np.mean(pb == y_test)))
                acc_running.append(float(np.mean(pr == y_test)))
                disagree.append(float(np.mean(pb != pr)))
    gap = np.abs(np.subtract(acc_batch, acc_running))
    return {"steps": steps, "acc_batch": acc_batch, "acc_running": acc_running, "disagreement": disagree,
            "mean_abs_gap": float(gap.mean()), "mean_disagreement": float(np.mean(disagree))}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> R.Result:
    """Track both modes' test accuracy over training for each momentum.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed (split, initialization, batch order); default settings use three.
    quick : bool, default False
        2 epochs and one seed instead of 8 epochs and three seeds.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``momenta``, ``steps`` (the checkpoints); per momentum (key
        ``"momentum_0.1"`` etc.): ``acc_batch`` and ``acc_running`` (seeds x checkpoints),
        ``disagreement`` (seeds x checkpoints), ``mean_abs_gap`` and ``mean_disagreement`` (per
        seed); ``gap_gain`` (per seed: mean absolute gap at 0.01 minus at 0.1). Two claims.
    """
    t0 = time.perf_counter()
    ss = R.seeds(seed, quick)
    st: dict[str, Any] = {"momenta": list(_MOMENTA), "epochs": 2 if quick else 8, "batch_size": 32, "lr": 0.05,
                          "sgd_momentum": 0.9, "checkpoints_per_epoch": 4, "eval_batch": 64, "widths": [16, 32],
                          "optimizer": "SGD", "seeds": ss, "seed": seed, "quick": quick,
                          "dataset": "digits 8x8, stratified 75/25 split per seed", "disagreement_threshold": 0.01}
    bar = R.progress_bar(len(ss) * len(_MOMENTA), NAME, progress)
    runs: dict[float, list[dict[str, Any]]] = {m: [] for m in _MOMENTA}
    try:
        for s in ss:
            train_set, test_set = R.digits_split(s)
            for m in _MOMENTA:
                runs[m].append(_one_run(m, s, st, train_set, test_set))
                bar.update(1)
    finally:
        bar.close()
    meas: dict[str, Any] = {"momenta": list(_MOMENTA), "steps": runs[_MOMENTA[0]][0]["steps"]}
    for m, rs in runs.items():
        meas[f"momentum_{m:g}"] = {k: [r[k] for r in rs] for k in ("acc_batch", "acc_running", "disagreement",
                                                                    "mean_abs_gap", "mean_disagreement")}
    n = len(ss)
    d, ds = R.mean_spread(meas["momentum_0.1"]["mean_disagreement"])
    gain = [a - b for a, b in zip(meas["momentum_0.01"]["mean_abs_gap"], meas["momentum_0.1"]["mean_abs_gap"])]
    meas["gap_gain"] = gain
    g, gs = R.mean_spread(gain)
    claims = [
        R.claim(CLAIMS[0], f"fraction of test images classified differently with batch and with running statistics "
                           f"(momentum 0.1, mean over checkpoints and {n} seeds)", d, st["disagreement_threshold"],
                ds if n > 1 else R.UNKNOWN_SPREAD),
        R.claim(CLAIMS[1], f"mean |accuracy(batch stats) - accuracy(running stats)| over checkpoints, momentum 0.01 "
                           f"minus momentum 0.1 (mean over {n} seeds)", g, 0.0, gs if n > 1 else R.UNKNOWN_SPREAD)]
    return R.Result(NAME, TITLE, st, meas, claims, _figure(meas), time.perf_counter() - t0)


def _figure(meas: dict[str, Any]) -> Any:
    fig, (a0, a1) = R.new_figure(1, 2, title=TITLE)
    steps = meas["steps"]
    for i, m in enumerate(_MOMENTA):
        d = meas[f"momentum_{m:g}"]
        a0.plot(steps, np.mean(d["acc_batch"], axis=0), "-", color=f"C{i}", label=f"batch stats, momentum {m:g}")
        a0.plot(steps, np.mean(d["acc_running"], axis=0), "--", color=f"C{i}",
                label=f"running stats, momentum {m:g}")
        a1.plot(steps, np.mean(d["disagreement"], axis=0), color=f"C{i}", label=f"momentum {m:g}")
    a0.set(ylim=(0, 1), xlabel="training step", ylabel="test accuracy",
           title="Solid: batch statistics; dashed: running statistics")
    a0.legend(fontsize="small")
    a1.set(xlabel="training step", ylabel="fraction of test predictions that differ",
           title="Disagreement between the two modes")
    a1.legend()
    return fig
