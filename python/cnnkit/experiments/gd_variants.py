"""``gd-variants``: batch, mini-batch and stochastic gradient descent on the digits.

The same small MLP (8x8 digits flattened, 64 -> 32 -> ReLU -> 10, :mod:`cnnkit.nn` layers)
is trained with :class:`cnnkit.optim.SGD` at one learning rate with three batch sizes: the whole
training set (batch gradient descent), 32 (mini-batch) and 1 (stochastic). Each variant trains
for a fixed wall-time budget, and at least for a fixed number of epochs and updates whatever the
machine, so that part of the run is identical on every machine. The full training loss is
evaluated at geometrically spaced update counts with the training clock paused.

Claims and statistics:

1. Per update, stochastic gradient descent is noisier: the relative variance of the update
   direction, ``E ||g_B - g||^2 / ||g||^2`` for a random batch ``B`` against the full-batch
   gradient ``g``, at the same parameters (the mini-batch run's after its fixed epochs); the
   statistic is ``log10`` of batch 1's over batch 32's (threshold ``log10 2``: at least twice as
   noisy). Also reported: the same at each variant's own parameters, and the fraction of the first
   100 updates that raise the full training loss.
2. Per unit of time, mini-batch wins: the full training loss when the training clock first
   passes the time budget;
   the statistic is ``log10(min(batch, stochastic) / mini-batch)`` (threshold 0).

Wall time makes claim 2 machine-dependent: the time-budgeted numbers (``timed`` measurements) vary
between runs and machines; everything under ``fixed`` (losses at the fixed epochs, gradient noise,
loss-increase fractions) is the same for the same seed. Repeated over 3 seeds by default.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import numpy as np

from .._validate import check_bool, check_int
from ._runner import Result, claim, digits_split, mean_spread, new_figure, progress_bar, seeds

__all__ = ["NAME", "TITLE", "CLAIMS", "VARIANTS", "run"]

NAME = "gd-variants"
TITLE = "Batch, mini-batch and stochastic gradient descent on the digits (MLP, SGD)"
CLAIMS = [
    "Per update, stochastic gradient descent is noisier than mini-batch gradient descent.",
    "Per unit of wall time, mini-batch gradient descent reduces the loss fastest.",
]

#: The variants: name -> batch size (None: the whole training set).
VARIANTS: dict[str, Any] = {"batch": None, "mini-batch": 32, "stochastic": 1}
#: The learning rate every variant uses.
LR = 0.1
#: Hidden units of the MLP.
HIDDEN = 32
#: Updates at the start of training whose effect on the full loss is recorded.
FIRST_UPDATES = 100
#: Random batches drawn to estimate the gradient noise.
NOISE_BATCHES = 64


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run NumPy's BLAS on one thread (small matrices; a contended multi-threaded OpenBLAS is
    tens of times slower, which would swamp the timings)."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - scikit-learn (needed for the digits) brings it
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _mlp(seed: int) -> Any:
    from .. import nn
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN, rng=rng), nn.ReLU(), nn.Linear(HIDDEN, 10, rng=rng))


def _loss(model: Any, loss_fn: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(loss_fn.forward(model.forward(x), y))


def _grad(model: Any, loss_fn: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The flat gradient of the mean loss over (x, y) (a copy)."""
    loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())
    return model.arena[1].astype(np.float64)


def _gradient_noise(model: Any, loss_fn: Any, x: np.ndarray, y: np.ndarray, batch: int,
                    rng: np.random.Generator) -> float:
    """``mean ||g_B - g||^2 / ||g||^2`` over :data:`NOISE_BATCHES` random batches of ``batch``."""
    if batch >= len(x):
        return 0.0
    full = _grad(model, loss_fn, x, y)
    dev = []
    for _ in range(NOISE_BATCHES):
        idx = rng.choice(len(x), batch, replace=False)
        dev.append(float(np.sum((_grad(model, loss_fn, x[idx], y[idx]) - full) ** 2)))
    return float(np.mean(dev) / np.sum(full ** 2))


def _train(variant: str, x: np.ndarray, y: np.ndarray, seed: int, *, budget: float, min_epochs: int) -> dict:
    """Train one variant for ``budget`` seconds of training time (and at least ``min_epochs``
    epochs and :data:`FIRST_UPDATES` updates); evaluate the full training loss at geometrically
    spaced update counts, at the fixed epochs and after each of the first updates, with the clock
    paused."""
    from .. import nn, optim
    n = len(x)
    batch = VARIANTS[variant] or n
    per_epoch = -(-n // batch)
    model, loss_fn = _mlp(seed), nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng([seed, batch])
    min_updates = max(FIRST_UPDATES, min_epochs * per_epoch)
    curve_updates, curve_time, curve_loss = [0], [0.0], [_loss(model, loss_fn, x, y)]
    first = [curve_loss[0]]
    fixed_epoch_loss: list[float] = []
    next_check, clock, updates, noise = 1.0, 0.0, 0, float("nan")
    at_budget, snapshot = float("nan"), None
    done = False
    while not done:
        order = rng.permutation(n)
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            t0 = time.perf_counter()
            loss_fn.forward(model.forward(x[idx]), y[idx])
            model.backward(loss_fn.backward())
            opt.step(model.gradients())
            clock += time.perf_counter() - t0
            updates += 1
            over = clock >= budget and updates >= min_updates
            epoch_end = b == per_epoch - 1
            fixed_end = epoch_end and updates <= min_epochs * per_epoch
            crossed = clock >= budget and not np.isfinite(at_budget)
            if updates <= FIRST_UPDATES or updates >= next_check or fixed_end or over or crossed:
                value = _loss(model, loss_fn, x, y)
                if crossed:
                    at_budget = value
                if updates <= FIRST_UPDATES:
                    first.append(value)
                if fixed_end:
                    fixed_epoch_loss.append(value)
                if updates >= next_check or over or fixed_end or crossed:
                    curve_updates.append(updates)
                    curve_time.append(clock)
                    curve_loss.append(value)
                while next_check <= updates:
                    next_check *= 1.15
            if updates == min_epochs * per_epoch:  # the fixed part ends: its gradient noise
                noise = _gradient_noise(model, loss_fn, x, y, batch, np.random.default_rng([seed, batch, 1]))
                snapshot = model.arena[0].copy()
            if over or not np.isfinite(curve_loss[-1]):
                done = True
                break
    first_arr = np.array(first)
    return {
        "batch_size": batch, "updates_per_epoch": per_epoch,
        "fixed": {"epoch_loss": fixed_epoch_loss, "gradient_noise": noise,
                  "first_updates_loss": first_arr.tolist(),
                  "fraction_updates_raising_loss": float(np.mean(np.diff(first_arr) > 0))},
        "timed": {"updates": curve_updates, "epochs": (np.array(curve_updates) / per_epoch).tolist(),
                  "seconds": curve_time, "loss": curve_loss, "loss_at_budget": at_budget,
                  "total_updates": updates, "train_seconds": clock},
        "model": model, "snapshot": snapshot,
    }


def _noise_at(snapshot: np.ndarray, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """Relative gradient variance of batches of 1 and 32 at the same parameters ``snapshot``."""
    from .. import nn
    model = _mlp(seed)
    model.arena[0][...] = snapshot
    loss_fn = nn.CrossEntropyLoss()
    return {str(b): _gradient_noise(model, loss_fn, x, y, b, np.random.default_rng([seed, b, 2])) for b in (1, 32)}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Run the ``gd-variants`` experiment: train the three variants, measure, judge, plot.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed: the data split, the initialization and the batch order.
    quick : bool, default False
        One seed, a 0.4 s budget and 2 fixed epochs per variant (a few seconds in all) instead of
        3 seeds, 3 s and 5 fixed epochs.
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``fixed`` (per variant and seed: the training loss at the fixed
        epochs, the relative gradient variance, the fraction of the first updates that raised
        the loss; machine-independent) and ``timed`` (per variant and seed: the loss curve
        against updates, epochs and training seconds, the loss at the budget and the test
        accuracy; machine-dependent), plus the claim statistics per seed. ``figure``: loss
        against epochs and against wall time.

    Examples
    --------
    >>> from cnnkit.experiments import gd_variants
    >>> r = gd_variants.run(quick=True, progress=False)  # doctest: +SKIP
    >>> [c.verdict for c in r.claims]  # doctest: +SKIP
    ['reproduced', 'reproduced']
    """
    seed = check_int("seed", seed, 0, "an int >= 0")
    quick = check_bool("quick", quick)
    progress = check_bool("progress", progress)
    t_start = time.perf_counter()
    budget, min_epochs = (0.4, 2) if quick else (3.0, 5)
    run_seeds = seeds(seed, quick)
    bar = progress_bar(len(run_seeds) * len(VARIANTS), NAME, progress)
    fixed: dict[str, list] = {v: [] for v in VARIANTS}
    timed: dict[str, list] = {v: [] for v in VARIANTS}
    noise_stat, time_stat, common_noise = [], [], []
    with _one_blas_thread():
        for s in run_seeds:
            train, test = digits_split(s)
            x, y = train.images, train.labels
            xt, yt = test.images, test.labels
            res = {}
            for v in VARIANTS:
                res[v] = _train(v, x, y, s, budget=budget, min_epochs=min_epochs)
                logits = res[v]["model"].forward(xt)
                res[v]["timed"]["test_accuracy"] = float(np.mean(np.argmax(logits, axis=1) == yt))
                fixed[v].append(res[v]["fixed"])
                timed[v].append(res[v]["timed"])
                bar.update()
            common = _noise_at(res["mini-batch"]["snapshot"], x, y, s)
            common_noise.append(common)
            noise_stat.append(float(np.log10(common["1"] / common["32"])))
            at = {v: res[v]["timed"]["loss_at_budget"] for v in VARIANTS}
            time_stat.append(float(np.log10(min(at["batch"], at["stochastic"]) / at["mini-batch"])))
    bar.close()
    noise_mean, noise_spread = mean_spread(noise_stat)
    time_mean, time_spread = mean_spread(time_stat)
    claims = [
        claim(CLAIMS[0], f"log10(relative gradient variance E||g_B - g||^2/||g||^2 at batch 1 / at batch 32), "
              f"at the same parameters (the mini-batch run after {min_epochs} epochs; threshold log10 2: twice "
              "as noisy)",
              noise_mean, float(np.log10(2.0)), noise_spread if len(run_seeds) > 1 else None),
        claim(CLAIMS[1], f"log10(min(batch, stochastic) / mini-batch) of the full training loss after {budget} s "
              "of training time each (machine-dependent)", time_mean, 0.0,
              time_spread if len(run_seeds) > 1 else None),
    ]

    fig, axes = new_figure(1, 2, title=TITLE, width=5.5, height=4.2)
    colors = {"batch": "#1f77b4", "mini-batch": "#2ca02c", "stochastic": "#d62728"}
    for v in VARIANTS:
        for i, tm in enumerate(timed[v]):
            label = f"{v} (batch {VARIANTS[v] or 'all'})" if i == 0 else None
            ep = np.maximum(np.array(tm["epochs"]), 1e-4)
            axes[0].plot(ep[1:], tm["loss"][1:], color=colors[v], alpha=1.0 if i == 0 else 0.35, label=label)
            axes[1].plot(np.array(tm["seconds"][1:]), tm["loss"][1:], color=colors[v],
                         alpha=1.0 if i == 0 else 0.35, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="epochs", ylabel="full training loss (cross-entropy)",
                title="loss against epochs")
    axes[1].axvline(budget, color="k", ls=":", lw=1, label=f"budget {budget} s")
    axes[1].set(xscale="log", yscale="log", xlabel="training wall time (s)",
                ylabel="full training loss (cross-entropy)", title="loss against wall time")
    for ax in axes:
        ax.legend(fontsize=8)

    measurements = {
        "fixed": {v: fixed[v] for v in VARIANTS},
        "timed": {v: timed[v] for v in VARIANTS},
        "gradient_noise_same_parameters": common_noise,
        "noise_statistic_per_seed": noise_stat,
        "time_statistic_per_seed": time_stat,
        "note": "Everything under 'timed' and 'time_statistic_per_seed' depends on wall time (machine-dependent, "
                "differs between runs); 'fixed' and 'noise_statistic_per_seed' are the same for the same seed.",
    }
    settings = {"seed": seed, "quick": quick, "seeds": run_seeds, "lr": LR, "hidden": HIDDEN,
                "batch_sizes": {v: (b if b is not None else "all") for v, b in VARIANTS.items()},
                "budget_seconds": budget, "fixed_epochs": min_epochs, "first_updates": FIRST_UPDATES,
                "noise_batches": NOISE_BATCHES, "model": f"MLP 64-{HIDDEN}-10 (ReLU), cross-entropy",
                "blas_threads": 1}
    return Result(NAME, TITLE, settings, measurements, claims, fig, time.perf_counter() - t_start)

