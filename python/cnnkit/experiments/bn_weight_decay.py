"""bn-weight-decay: weight decay sets the effective learning rate of scale-invariant weights.

A convolution followed by batch norm computes the same function for ``w`` and ``c * w`` (c > 0):
its weights are scale invariant, the gradient is orthogonal to ``w`` and scales as ``1 / ||w||``,
so a step of size ``lr`` changes the direction of ``w`` like a step ``lr / ||w||^2`` would at unit
norm: the effective learning rate. Without weight decay ``||w||`` only grows (each step adds an
orthogonal component) and the effective learning rate decays; weight decay shrinks ``||w||`` and
holds it up.

:func:`cnnkit.experiments._runner.small_cnn` with batch norm (two 3x3 convolutions, 16 and 32
channels, both scale invariant) trained on scikit-learn's 8x8 digits with SGD (momentum 0.9,
learning rate 0.1, batch 32) and weight decay 0, 5e-4 or 5e-3 (L2, added to the gradient).
``||w||^2`` is the summed squared norm of the two convolution weights, recorded eight times per
epoch; the effective learning rate is ``lr / ||w||^2``.

Statistics (beyond the spread over seeds): the first claim holds if the final effective learning
rate with weight decay 5e-3 is larger than without, as ``log10`` of the ratio > 0; the second if
``||w||^2`` grows without weight decay (``log10(final / initial)`` > 0).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from . import _runner as R

NAME = "bn-weight-decay"
TITLE = "Weight decay under batch norm: weight norm and effective learning rate"
CLAIMS = ["Weight decay controls the effective learning rate (lr / ||w||^2) of scale-invariant weights: "
          "decay 5e-3 keeps it higher than no decay",
          "Without weight decay, the norm of scale-invariant weights grows during training"]

_DECAYS = (0.0, 5e-4, 5e-3)


def _sq_norm(convs: list[Any]) -> float:
    return float(sum(np.sum(c.params["weight"].astype(np.float64) ** 2) for c in convs))


def _one_run(wd: float, seed: int, st: dict[str, Any], train_set: Any, test_set: Any) -> dict[str, Any]:
    from .. import data, optim
    from ..nn import Conv2d, CrossEntropyLoss
    model = R.small_cnn("batch", widths=st["widths"], seed=seed)
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    opt = optim.SGD(model.parameters(), lr=st["lr"], momentum=st["sgd_momentum"], weight_decay=wd)
    loss_fn = CrossEntropyLoss()
    loader = data.DataLoader(train_set, st["batch_size"], shuffle=True, drop_last=True, seed=seed)
    every = max(1, len(loader) // st["records_per_epoch"])
    steps, norms = [0], [_sq_norm(convs)]
    step = 0
    model.train()
    for _ in range(st["epochs"]):
        for x, y in loader:
            logits = model.forward(x)
            loss_fn.forward(logits, y)
            model.backward(loss_fn.backward())
            opt.step(model.gradients())
            step += 1
            if step % every == 0:
                steps.append(step)
                norms.append(_sq_norm(convs))
    eff = [st["lr"] / n for n in norms]
    return {"steps": steps, "sq_norm": norms, "effective_lr": eff, "test_accuracy": R.accuracy(model, test_set)}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> R.Result:
    """Track the weight norm and the effective learning rate for each weight decay.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed (split, initialization, batch order); default settings use three.
    quick : bool, default False
        2 epochs and one seed instead of 12 epochs and three seeds.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``weight_decays``, ``steps`` (the records); per decay (key
        ``"wd_0"``, ``"wd_0.0005"``, ``"wd_0.005"``): ``sq_norm`` and ``effective_lr`` (seeds x
        records), ``test_accuracy`` (per seed); ``log10_eff_lr_ratio`` (per seed: final effective
        learning rate at 5e-3 over at 0), ``log10_norm_growth`` (per seed, at 0). Two claims.
    """
    t0 = time.perf_counter()
    ss = R.seeds(seed, quick)
    st: dict[str, Any] = {"weight_decays": list(_DECAYS), "epochs": 2 if quick else 12, "batch_size": 32,
                          "lr": 0.1, "sgd_momentum": 0.9, "records_per_epoch": 8, "widths": [16, 32],
                          "optimizer": "SGD (L2 weight decay added to the gradient)", "seeds": ss, "seed": seed,
                          "quick": quick, "dataset": "digits 8x8, stratified 75/25 split per seed"}
    bar = R.progress_bar(len(ss) * len(_DECAYS), NAME, progress)
    runs: dict[float, list[dict[str, Any]]] = {wd: [] for wd in _DECAYS}
    try:
        for s in ss:
            train_set, test_set = R.digits_split(s)
            for wd in _DECAYS:
                runs[wd].append(_one_run(wd, s, st, train_set, test_set))
                bar.update(1)
    finally:
        bar.close()
    meas: dict[str, Any] = {"weight_decays": list(_DECAYS), "steps": runs[0.0][0]["steps"]}
    for wd, rs in runs.items():
        meas[f"wd_{wd:g}"] = {k: [r[k] for r in rs] for k in ("sq_norm", "effective_lr", "test_accuracy")}
    ratio = [math.log10(a[-1] / b[-1]) for a, b in zip(meas["wd_0.005"]["effective_lr"], meas["wd_0"]["effective_lr"])]
    growth = [math.log10(n[-1] / n[0]) for n in meas["wd_0"]["sq_norm"]]
    meas["log10_eff_lr_ratio"], meas["log10_norm_growth"] = ratio, growth
    n = len(ss)
    r, rs_ = R.mean_spread(ratio)
    g, gs = R.mean_spread(growth)
    claims = [
        R.claim(CLAIMS[0], f"log10(final effective lr with decay 5e-3 / without) (mean over {n} seeds)", r, 0.0,
                rs_ if n > 1 else R.UNKNOWN_SPREAD),
        R.claim(CLAIMS[1], f"log10(final ||w||^2 / initial ||w||^2) without weight decay (mean over {n} seeds)",
                g, 0.0, gs if n > 1 else R.UNKNOWN_SPREAD)]
    return R.Result(NAME, TITLE, st, meas, claims, _figure(meas), time.perf_counter() - t0)


def _figure(meas: dict[str, Any]) -> Any:
    fig, (a0, a1) = R.new_figure(1, 2, title=TITLE)
    steps = meas["steps"]
    for i, wd in enumerate(_DECAYS):
        d = meas[f"wd_{wd:g}"]
        acc = float(np.mean(d["test_accuracy"]))
        a0.plot(steps, np.mean(d["sq_norm"], axis=0), color=f"C{i}", label=f"weight decay {wd:g}")
        a1.plot(steps, np.mean(d["effective_lr"], axis=0), color=f"C{i}",
                label=f"weight decay {wd:g} (test accuracy {acc:.3f})")
    a0.set(yscale="log", xlabel="training step", ylabel="||w||^2 of the convolutions (log scale)",
           title="Weight norm")
    a0.legend()
    a1.set(yscale="log", xlabel="training step", ylabel="effective learning rate lr / ||w||^2 (log scale)",
           title="Effective learning rate")
    a1.legend()
    return fig
