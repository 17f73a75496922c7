"""``depthwise-separable``: standard against depthwise-separable convolutions (MobileNet).

:func:`cnnkit.models.mobilenet_small` (3x3 stem, then blocks of a depthwise 3x3 convolution and a
pointwise 1x1 convolution, each followed by batch norm and ReLU) is compared with the same network
in which every depthwise-separable pair is one standard 3x3 convolution of the same input and
output channels and stride. A k x k convolution from N to M channels costs ``k^2 N M``
multiply-adds per output position; the separable pair costs ``k^2 N + N M``, a fraction
``1/M + 1/k^2`` of it (Howard et al. 2017). Both networks are trained on scikit-learn's 8x8
digits over several seeds; the experiment records parameters, FLOPs (2 x multiply-adds of one
image's forward pass), test accuracy and the measured training step time.

Claims tested
-------------
* The separable network needs several times fewer FLOPs and parameters (MobileNet: 8 to 9 times
  fewer in the 3x3 layers).
* The saving costs little accuracy (MobileNet: about 1 point on ImageNet): within 1 point here.
* It gives up some accuracy: the standard network is more accurate (the trade-off).
* The FLOP saving makes a training step faster (depthwise convolutions do little arithmetic per
  byte, so the time saved is smaller than the FLOPs saved).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .. import models, nn, optim
from ..optim.lr_scheduler import CosineAnnealingLR
from ._runner import Result, claim, digits_split, mean_spread, new_figure, progress_bar, seeds, train_epochs
from .group_conv import count_macs, step_seconds

__all__ = ["NAME", "TITLE", "CLAIMS", "run", "judge_claims"]

NAME = "depthwise-separable"
TITLE = "Standard vs depthwise-separable convolutions"
CLAIMS = [
    "Depthwise-separable convolutions need several times (at least 4x) fewer FLOPs than standard ones "
    "(MobileNet: 8-9x in the 3x3 layers)",
    "Depthwise-separable convolutions need several times (at least 4x) fewer parameters than standard ones",
    "The saving costs little accuracy: within 1 point of the standard network (MobileNet: about 1 point on ImageNet)",
    "The saving is paid for in accuracy: the standard network is more accurate",
    "The FLOP saving makes a training step faster",
]

WIDTHS = (32, 64, 128, 256)  # cnnkit.models.mobilenet_small's default


def build(kind: str, seed: int = 0) -> nn.Sequential:
    """The separable network (:func:`cnnkit.models.mobilenet_small`, batch norm, 1 input channel,
    10 classes) or its standard counterpart (each depthwise-pointwise pair replaced by one 3x3
    convolution with the same channels and stride, then batch norm with ReLU).

    Parameters
    ----------
    kind : {"standard", "separable"}
    seed : int
        The initialization.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, 10) for (N, 1, 8, 8) inputs.
    """
    if kind == "separable":
        return models.mobilenet_small(1, 10, widths=WIDTHS, norm="batch", seed=seed)
    if kind != "standard":
        raise ValueError(f"kind: expected 'standard' or 'separable', got {kind!r}")
    rng = np.random.default_rng(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, WIDTHS[0], 3, 1, 1, bias=False, rng=rng),
                               nn.BatchNorm2d(WIDTHS[0], activation="relu")]
    c = WIDTHS[0]
    for i, w in enumerate(WIDTHS[1:]):  # the strides of mobilenet_small: every other block halves
        layers += [nn.Conv2d(c, w, 3, 2 if i % 2 == 1 else 1, 1, bias=False, rng=rng),
                   nn.BatchNorm2d(w, activation="relu")]
        c = w
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, 10, rng=rng)]
    return nn.Sequential(*layers)


def _layer_ratio(n_in: int, n_out: int, k: int = 3) -> float:
    """Multiply-adds of a standard k x k conv over those of the separable pair: 1 / (1/M + 1/k^2)."""
    return (k * k * n_in * n_out) / (k * k * n_in + n_in * n_out)


def _make_sgd(params: list[np.ndarray]) -> optim.SGD:
    return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


KINDS = ("standard", "separable")


def judge_claims(measurements: dict[str, Any]) -> list:
    """Judge :data:`CLAIMS` from the measurements (the rule of :func:`cnnkit.experiments._runner.judge`).

    Parameters
    ----------
    measurements : dict
        At least ``flops`` and ``parameters`` ([standard, separable]), ``accuracy``
        ({"standard": [...], "separable": [...]}: test accuracy per seed) and
        ``timing["step_seconds"]`` (the same keys: step time per round).

    Returns
    -------
    list of Claim
        FLOP and parameter ratios against 4 (deterministic); the accuracy difference (paired by
        seed, in points) against -1 and against 0; log2 of the step-time ratio against 0.
    """
    flops, params = measurements["flops"], measurements["parameters"]
    acc, t = measurements["accuracy"], measurements["timing"]["step_seconds"]
    d_mean, d_spread = mean_spread([100 * (b - a) for a, b in zip(acc["standard"], acc["separable"])])
    s_mean, s_spread = mean_spread([math.log2(a / b) for a, b in zip(t["standard"], t["separable"])])
    return [
        claim(CLAIMS[0], "FLOPs per image of the standard network / of the separable one", flops[0] / flops[1], 4.0),
        claim(CLAIMS[1], "parameters of the standard network / of the separable one", params[0] / params[1], 4.0),
        claim(CLAIMS[2], "separable minus standard test accuracy, in points (mean over seeds, paired by seed)",
              d_mean, -1.0, d_spread),
        claim(CLAIMS[3], "standard minus separable test accuracy, in points (mean over seeds, paired by seed)",
              -d_mean, 0.0, d_spread),
        claim(CLAIMS[4], "log2 of the standard network's step time over the separable one's (mean over rounds)",
              s_mean, 0.0, s_spread),
    ]


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train the standard and the depthwise-separable network on the 8x8 digits and test the
    MobileNet claims.

    Parameters
    ----------
    seed : int, default 0
        First seed (``seed``, ``seed + 1``, ``seed + 2``; only ``seed`` with ``quick``); each seed
        draws the data split, the initialization and the batch order.
    quick : bool, default False
        A smoke run: one epoch on 64 training images, one seed, one timed step.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``kinds`` ("standard", "separable"), ``parameters``, ``flops`` (per
        image), ``parameter_ratio`` and ``flop_ratio`` (standard / separable),
        ``layer_flop_ratio_theory`` (``1 / (1/M + 1/9)`` per replaced layer), ``accuracy`` (per
        kind: one test accuracy per seed), ``accuracy_mean``, ``accuracy_spread``, and
        ``timing`` (``step_seconds`` per kind and round, ``time_ratio``); timings vary from run to
        run, the rest is fixed by the seed.

    Examples
    --------
    >>> from cnnkit.experiments import depthwise_separable as ds
    >>> ds.build("standard").num_parameters() > 4 * ds.build("separable").num_parameters()
    True
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick)
    epochs, train_size = (1, 64) if quick else (15, None)
    steps, rounds, warmup = (1, 1, 1) if quick else (10, 3, 2)
    batch = 64
    params = [int(build(k).num_parameters()) for k in KINDS]
    flops = [2 * count_macs(build(k), (1, 8, 8)) for k in KINDS]

    bar = progress_bar(len(KINDS) * (len(run_seeds) + 1), NAME, progress)
    acc: dict[str, list[float]] = {k: [] for k in KINDS}
    for s in run_seeds:
        tr, te = digits_split(s, train_limit=train_size)
        for k in KINDS:
            model = build(k, s)
            opt = _make_sgd(model.parameters())
            res = train_epochs(model, opt, tr, epochs=epochs, batch_size=batch, seed=s, test_set=te,
                               scheduler=CosineAnnealingLR(opt, epochs))
            acc[k].append(float(res["test_accuracy"]))
            bar.update(1)
    tr, _ = digits_split(run_seeds[0])
    x, y = tr.images[:batch], tr.labels[:batch]
    nets = {k: build(k, run_seeds[0]) for k in KINDS}
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(rounds):  # rounds interleaved, so a slow spell of the machine hits both alike
        for k in KINDS:
            times[k] += step_seconds(nets[k], _make_sgd, x, y, steps=steps, rounds=1, warmup=warmup if r == 0 else 0)
            if r == rounds - 1:
                bar.update(1)
    bar.close()

    acc_mean, acc_spread = zip(*(mean_spread(acc[k]) for k in KINDS))
    diffs = [100 * (a_sep - a_std) for a_std, a_sep in zip(acc["standard"], acc["separable"])]
    time_med = [float(np.median(times[k])) for k in KINDS]
    measurements = {"kinds": list(KINDS), "parameters": params, "flops": flops,
                    "parameter_ratio": params[0] / params[1], "flop_ratio": flops[0] / flops[1],
                    "layer_flop_ratio_theory": [_layer_ratio(c, w) for c, w in zip(WIDTHS[:-1], WIDTHS[1:])],
                    "accuracy": {k: acc[k] for k in KINDS}, "accuracy_mean": list(acc_mean),
                    "accuracy_spread": list(acc_spread), "accuracy_difference_points": diffs,
                    "timing": {"step_seconds": {k: times[k] for k in KINDS}, "step_seconds_median": time_med,
                               "time_ratio": time_med[0] / time_med[1]}}
    claims = judge_claims(measurements)
    fig = _figure(params, flops, acc_mean, acc_spread, time_med)
    settings = {"dataset": "digits 8x8 (75/25 split per seed)", "train_size": train_size or "all (1347)",
                "widths": list(WIDTHS), "epochs": epochs, "batch_size": batch,
                "optimizer": "SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine decay to 0 over the epochs",
                "networks": {"separable": "cnnkit.models.mobilenet_small(1, 10, widths=(32, 64, 128, 256))",
                             "standard": "the same with each depthwise-pointwise pair replaced by a 3x3 conv"},
                "seeds": run_seeds, "timing": {"batch_size": batch, "steps_per_round": steps, "rounds": rounds}}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _figure(params: list[int], flops: list[int], acc_mean: Any, acc_spread: Any, time_med: list[float]) -> Any:
    fig, (ax1, ax2, ax3) = new_figure(1, 3, title=TITLE, width=4.5)
    x = np.arange(len(KINDS))
    ax1.bar(x - 0.2, params, 0.4, label="parameters")
    ax1.bar(x + 0.2, flops, 0.4, label="FLOPs per image")
    ax1.set_yscale("log")
    ax1.set(title=f"Size (FLOPs {flops[0] / flops[1]:.1f}x, parameters {params[0] / params[1]:.1f}x fewer)",
            xlabel="convolution", ylabel="count (log scale)", xticks=x, xticklabels=KINDS)
    ax1.legend()
    ax2.bar(x, 100 * np.array(acc_mean), 0.5, yerr=100 * np.array(acc_spread), capsize=6,
            label="mean ± std (seeds)")
    lo = max(0.0, 100 * float(np.min(np.array(acc_mean) - np.array(acc_spread))) - 5)
    ax2.set_ylim(lo, 102)
    ax2.set(title="Accuracy", xlabel="convolution", ylabel="test accuracy (%)", xticks=x, xticklabels=KINDS)
    ax2.legend(loc="upper right", fontsize="x-small")
    ax3.bar(x, 1e3 * np.array(time_med), 0.5, label="step, batch 64 (median)")
    ax3.set(title=f"Measured step time ({time_med[0] / time_med[1]:.2f}x)", xlabel="convolution",
            ylabel="milliseconds per step", xticks=x, xticklabels=KINDS)
    ax3.legend(loc="upper right", fontsize="small")
    return fig
