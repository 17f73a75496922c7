"""``group-conv``: grouped convolutions at a fixed parameter budget (ResNeXt's "cardinality").

The same small ResNeXt-style network (3x3 stem, two bottleneck blocks 1x1 - grouped 3x3 - 1x1,
global average pooling, a linear classifier) is built with 1, 2, 4, 8 and 32 groups in the 3x3
convolutions. A grouped 3x3 convolution of width w with g groups has ``9 w^2 / g`` weights, so
each network gets the inner width (a multiple of g) that brings its parameter count closest to
the dense network's: more groups make the network wider, not deeper, at about the same number of
parameters and FLOPs. Each is trained on scikit-learn's 8x8 digits over several seeds; the
experiment records parameters, FLOPs (2 x multiply-adds of one forward pass of one image), test
accuracy, and the measured time of one training step (forward, loss, backward, SGD step).

Claims tested
-------------
* ResNeXt (Xie et al. 2017): at equal complexity, more groups (a wider grouped network) gives a
  higher accuracy than the dense network.
* ShuffleNet V2 (Ma et al. 2018, guideline G2): at equal FLOPs, many groups make a step slower
  (a grouped convolution does less arithmetic per byte moved); measured as seconds per FLOP.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from .. import nn, optim
from ..ops import conv2d_output_shape
from ..optim.lr_scheduler import CosineAnnealingLR
from ._runner import Result, claim, digits_split, mean_spread, new_figure, progress_bar, seeds, train_epochs

__all__ = ["NAME", "TITLE", "CLAIMS", "run", "judge_claims"]

NAME = "group-conv"
TITLE = "Grouped convolutions at a fixed parameter budget"
CLAIMS = [
    "At a fixed parameter budget, 32 groups (a wider network) reach a higher test accuracy than dense "
    "convolutions (ResNeXt)",
    "At about equal FLOPs, more groups make a training step slower per FLOP (ShuffleNet V2, guideline G2)",
]

GROUPS = (1, 2, 4, 8, 32)
STEM = 32        # channels of the stem
OUT = 64         # channels of each bottleneck block's output
BASE_WIDTH = 32  # inner width of the dense (groups=1) network; the others match its parameters


# ---- shared by the convolution experiments (depthwise_separable imports these) ---------------------

def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of one image through ``model``'s convolutions and linear
    layers (normalizations, activations and pooling are not counted).

    Parameters
    ----------
    model : cnnkit.nn.Module
        A model built from :mod:`cnnkit.nn` layers (NCHW).
    input_shape : sequence of int
        (C, H, W) of one image.

    Returns
    -------
    int
        The multiply-adds; FLOPs are twice this.
    """
    model.eval()
    model.forward(np.zeros((1,) + tuple(input_shape), np.float32))
    model.train()
    total = 0
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.params["weight"].shape
            out = conv2d_output_shape(m._x.shape, w, m.stride, m.padding, m.dilation, m.groups)
            total += int(np.prod(out[1:])) * w[1] * w[2] * w[3]
        elif isinstance(m, nn.DepthwiseSeparableConv2d):
            dw = m.params["dw_weight"].shape
            out = conv2d_output_shape(m._x.shape, dw, m.stride, m.padding, 1, m.in_channels)
            hw = out[2] * out[3]
            total += hw * m.in_channels * dw[2] * dw[3] + hw * m.in_channels * m.out_channels
        elif isinstance(m, nn.Linear):
            w = m.params["weight"].shape
            total += w[0] * w[1]
    return total


def step_seconds(model: nn.Module, make_optimizer: Callable[[list[np.ndarray]], Any], x: np.ndarray,
                 y: np.ndarray, *, steps: int, rounds: int, warmup: int = 2) -> list[float]:
    """Measured seconds of one training step (forward, cross-entropy, backward, optimizer step)
    on the batch ``(x, y)``: the median over ``steps`` steps, for each of ``rounds`` rounds.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model (its parameters change: time a throw-away copy).
    make_optimizer : callable
        ``make_optimizer(model.parameters())`` gives the optimizer.
    x, y : ndarray
        One batch of images (float32 NCHW) and labels.
    steps, rounds : int >= 1
        Steps per round, rounds.
    warmup : int
        Untimed steps first (buffers are allocated on the first one).

    Returns
    -------
    list of float
        One median per round.
    """
    loss = nn.CrossEntropyLoss()
    opt = make_optimizer(model.parameters())
    model.train()

    def step() -> None:
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step(model.gradients())

    for _ in range(warmup):
        step()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        medians.append(float(np.median(times)))
    return medians


# ---- the experiment ----------------------------------------------------------------------------------

def build(groups: int, width: int, seed: int = 0) -> nn.Sequential:
    """The experiment's network: 3x3 stem (32 channels), bottleneck blocks 32 -> 64 (stride 1)
    and 64 -> 64 (stride 2) with ``width`` inner channels and ``groups`` groups, global average
    pooling, a linear classifier over 10 classes; batch norm throughout.

    Parameters
    ----------
    groups : int
        Groups of the 3x3 convolutions (must divide ``width``).
    width : int
        Inner width of the bottlenecks.
    seed : int
        The initialization.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, 10) for (N, 1, 8, 8) inputs.
    """
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, STEM, 3, 1, 1, bias=False, rng=rng), nn.BatchNorm2d(STEM, activation="relu"),
        nn.BottleneckBlock(STEM, OUT, width, 1, groups=groups, rng=rng),
        nn.BottleneckBlock(OUT, OUT, width, 2, groups=groups, rng=rng),
        nn.GlobalAvgPool2d(), nn.Linear(OUT, 10, rng=rng))


def _analytic_params(groups: int, width: int) -> int:
    """Parameters of :func:`build` (weights and norm affines), without building it."""
    def block(cin: int, cout: int, shortcut: bool) -> int:
        p = cin * width + 2 * width + 9 * width * width // groups + 2 * width + width * cout + 2 * cout
        return p + (cin * cout + 2 * cout if shortcut else 0)
    return 9 * STEM + 2 * STEM + block(STEM, OUT, True) + block(OUT, OUT, True) + OUT * 10 + 10


def matched_width(groups: int, budget: int) -> int:
    """The inner width (a multiple of ``groups``) whose network has the parameter count closest
    to ``budget``.

    Parameters
    ----------
    groups : int
    budget : int
        The target parameter count.

    Returns
    -------
    int
    """
    best, best_gap = groups, math.inf
    for w in range(groups, 64 * BASE_WIDTH + 1, groups):
        gap = abs(_analytic_params(groups, w) - budget)
        if gap < best_gap:
            best, best_gap = w, gap
        elif _analytic_params(groups, w) > budget:
            break
    return best


def _make_sgd(params: list[np.ndarray]) -> optim.SGD:
    return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def judge_claims(measurements: dict[str, Any]) -> list:
    """Judge :data:`CLAIMS` from the measurements (the rule of :func:`cnnkit.experiments._runner.judge`).

    Parameters
    ----------
    measurements : dict
        At least ``flops`` (per group, in :data:`GROUPS` order), ``accuracy`` ({"1": [...],
        "32": [...]}: test accuracy per seed) and ``timing["step_seconds"]`` ({"1": [...],
        "32": [...]}: step time per round).

    Returns
    -------
    list of Claim
        The accuracy claim (32 groups minus 1 group, paired by seed; threshold 0, spread the
        standard deviation of the differences) and the speed claim (log2 of the ratio of the step
        times per FLOP, per round; threshold 0).
    """
    a1, a32 = measurements["accuracy"][str(GROUPS[0])], measurements["accuracy"][str(GROUPS[-1])]
    d_mean, d_spread = mean_spread([b - a for a, b in zip(a1, a32)])
    f1, f32 = measurements["flops"][0], measurements["flops"][-1]
    t = measurements["timing"]["step_seconds"]
    ratios = [math.log2((t32 / f32) / (t1 / f1)) for t1, t32 in zip(t[str(GROUPS[0])], t[str(GROUPS[-1])])]
    r_mean, r_spread = mean_spread(ratios)
    return [
        claim(CLAIMS[0], "test accuracy at 32 groups minus at 1 group (mean over seeds, paired by seed)",
              d_mean, 0.0, d_spread),
        claim(CLAIMS[1], "log2 of the step time per FLOP at 32 groups over that at 1 group (mean over timing rounds)",
              r_mean, 0.0, r_spread),
    ]


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train the grouped networks (groups 1, 2, 4, 8, 32 at the dense network's parameter count)
    on the 8x8 digits and test the ResNeXt and ShuffleNet V2 claims.

    Parameters
    ----------
    seed : int, default 0
        First seed (seeds ``seed``, ``seed + 1``, ``seed + 2``; only ``seed`` with ``quick``); each
        seed draws the data split, the initialization and the batch order.
    quick : bool, default False
        A smoke run: one epoch on 64 training images, one seed, one timed step.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``groups``, ``width``, ``parameters``, ``flops`` (per image),
        ``accuracy`` (per group: one test accuracy per seed), ``accuracy_mean``,
        ``accuracy_spread``, and ``timing`` (``step_seconds``: per group, the median step time of
        each round; ``seconds_per_gflop``); timings vary from run to run, the rest is fixed by
        the seed. ``figure``: parameters and FLOPs, accuracy, and step time against groups.

    Examples
    --------
    >>> from cnnkit.experiments import group_conv
    >>> group_conv.matched_width(32, group_conv._analytic_params(1, 32)) % 32
    0
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick)
    epochs, train_size = (1, 64) if quick else (15, None)
    steps, rounds, warmup = (1, 1, 1) if quick else (10, 3, 2)
    batch = 64
    budget = _analytic_params(1, BASE_WIDTH)
    widths = [matched_width(g, budget) for g in GROUPS]
    params, flops = [], []
    for g, w in zip(GROUPS, widths):
        m = build(g, w, 0)
        params.append(int(m.num_parameters()))
        flops.append(2 * count_macs(m, (1, 8, 8)))

    bar = progress_bar(len(GROUPS) * (len(run_seeds) + 1), f"{NAME}", progress)
    acc: dict[int, list] = {g: [] for g in GROUPS}
    for s in run_seeds:
        tr, te = digits_split(s, train_limit=train_size)
        for g, w in zip(GROUPS, widths):
            model = build(g, w, s)
            opt = _make_sgd(model.parameters())
            res = train_epochs(model, opt, tr, epochs=epochs, batch_size=batch, seed=s, test_set=te,
                               scheduler=CosineAnnealingLR(opt, epochs))
            acc[g].append(float(res["test_accuracy"]))
            bar.update(1)
    # timing: the same fixed batch for every network, rounds interleaved across networks so that
    # a slow spell of the (shared) machine hits all of them alike
    tr, _ = digits_split(run_seeds[0])
    x, y = tr.images[:batch], tr.labels[:batch]
    models = {g: build(g, w, run_seeds[0]) for g, w in zip(GROUPS, widths)}
    times: dict[int, list[float]] = {g: [] for g in GROUPS}
    for r in range(rounds):
        for g in GROUPS:
            times[g] += step_seconds(models[g], _make_sgd, x, y, steps=steps, rounds=1, warmup=warmup if r == 0 else 0)
            if r == rounds - 1:
                bar.update(1)
    bar.close()

    acc_mean, acc_spread = zip(*(mean_spread(acc[g]) for g in GROUPS))
    step_med = [float(np.median(times[g])) for g in GROUPS]
    sec_per_gflop = [t / (f * batch * 3 / 1e9) for t, f in zip(step_med, flops)]  # fwd + bwd ~ 3x forward

    measurements = {"groups": list(GROUPS), "width": widths, "parameters": params, "flops": flops,
                    "accuracy": {str(g): acc[g] for g in GROUPS}, "accuracy_mean": list(acc_mean),
                    "accuracy_spread": list(acc_spread),
                    "timing": {"step_seconds": {str(g): times[g] for g in GROUPS},
                               "step_seconds_median": step_med, "seconds_per_gflop": sec_per_gflop}}
    claims = judge_claims(measurements)
    fig = _figure(widths, params, flops, acc_mean, acc_spread, step_med)
    settings = {"dataset": "digits 8x8 (75/25 split per seed)", "train_size": train_size or "all (1347)",
                "groups": list(GROUPS), "epochs": epochs, "batch_size": batch,
                "optimizer": "SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine decay to 0 over the epochs", "parameter_budget": budget,
                "network": "3x3 stem 32 - bottleneck 32->64 - bottleneck 64->64 (stride 2) - GAP - linear",
                "seeds": run_seeds, "timing": {"batch_size": batch, "steps_per_round": steps, "rounds": rounds}}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _figure(widths: list[int], params: list[int], flops: list[int], acc_mean: Sequence[float],
            acc_spread: Sequence[float], step_med: list[float]) -> Any:
    fig, (ax1, ax2, ax3) = new_figure(1, 3, title=TITLE, width=4.5)
    x = np.arange(len(GROUPS))
    labels = [f"{g}\n(w={w})" for g, w in zip(GROUPS, widths)]
    ax1.bar(x - 0.2, np.array(params) / 1e3, 0.4, label="parameters (thousands)")
    ax1.bar(x + 0.2, np.array(flops) / 1e6, 0.4, label="FLOPs per image (millions)")
    ax1.set(title="Size at a fixed parameter budget", xlabel="groups (inner width)",
            ylabel="parameters (thousands), FLOPs (millions)",
            xticks=x, xticklabels=labels)
    ax1.legend()
    ax2.errorbar(x, 100 * np.array(acc_mean), yerr=100 * np.array(acc_spread), marker="o", capsize=4,
                 label="test accuracy (mean ± std over seeds)")
    ax2.set(title="Accuracy", xlabel="groups (inner width)", ylabel="test accuracy (%)", xticks=x, xticklabels=labels)
    ax2.legend()
    ax3.plot(x, 1e3 * np.array(step_med), marker="o", label="training step, batch 64")
    ax3.set(title="Measured step time", xlabel="groups (inner width)", ylabel="milliseconds per step",
            xticks=x, xticklabels=labels)
    ax3.legend()
    return fig
