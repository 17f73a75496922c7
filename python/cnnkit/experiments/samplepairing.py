"""``samplepairing``: SamplePairing's training schedule on a reduced training set (Inoue 2018).

SamplePairing averages each training image with another one drawn from the training set and
keeps the first image's label. The paper's schedule: train without it for a warm-up, then switch
it on, turning it off for a few epochs at regular intervals, and finish with it off (fine-tuning).
Here a small CNN (the ``regularization`` experiment's network, without regularizers) is trained
on 300 of scikit-learn's 8x8 digits with that schedule (:class:`cnnkit.augment.SamplePairing`
with the training set as the partner pool, switched by
:class:`cnnkit.augment.SamplePairingSchedule`), and, with the same seeds, batch order and
initialization, without it; the validation set is 450 held-out digits.

Claims tested
-------------
* SamplePairing lowers the training accuracy while it is on (the accuracy on the batches the
  network sees, as in the paper's training curves).
* After fine-tuning, the network trained with SamplePairing reaches a higher validation accuracy.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .. import augment, data, optim, train
from ._runner import Result, accuracy, claim, digits_split, mean_spread, new_figure, progress_bar, seeds
from .regularization import build as _build

__all__ = ["NAME", "TITLE", "CLAIMS", "run", "judge_claims"]

NAME = "samplepairing"
TITLE = "SamplePairing: warm-up, on with intermittent off epochs, fine-tuning (300 digits)"
CLAIMS = [
    "SamplePairing lowers the training accuracy while it is on",
    "SamplePairing improves the validation accuracy after fine-tuning",
]


class _Switch:
    """A loader augmentation that applies SamplePairing only while ``on`` is True."""

    def __init__(self, pairing: Optional[augment.SamplePairing]) -> None:
        self.pairing, self.on = pairing, False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.on and self.pairing is not None:
            return np.asarray(self.pairing(images))   # without labels it returns the images alone
        return images


def train_run(train_set: data.ArrayDataset, val_set: data.ArrayDataset, schedule: augment.SamplePairingSchedule,
              *, epochs: int, seed: int, pairing: bool, lr: float = 0.02, batch_size: int = 32) -> dict[str, list]:
    """Train the network for ``epochs`` epochs, with SamplePairing switched by ``schedule`` (or
    never, with ``pairing=False``), recording the accuracies after every epoch.

    Parameters
    ----------
    train_set, val_set : cnnkit.data.ArrayDataset
    schedule : cnnkit.augment.SamplePairingSchedule
    epochs : int
    seed : int
        Initialization, batch order and the pairing's partners.
    pairing : bool
        Use SamplePairing (as the schedule says) or never.
    lr : float, default 0.02
        SGD's learning rate (momentum 0.9, weight decay 5e-4, constant).
    batch_size : int, default 32

    Returns
    -------
    dict
        Per epoch: ``train_accuracy`` (on the batches seen, in training mode, as the paper's
        curves), ``clean_train_accuracy`` (the training images as they are, eval mode),
        ``val_accuracy``, and ``on`` (bools: SamplePairing was on).
    """
    model = _build("none (SGD)", seed)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sp = augment.SamplePairing(1.0, pool=train_set.images, seed=seed + 7) if pairing else None
    switch = _Switch(sp)
    loader = data.DataLoader(train_set, batch_size, seed=seed, augment=switch, drop_last=True)
    val = data.DataLoader(val_set, 512, shuffle=False)
    out: dict[str, list] = {"train_accuracy": [], "clean_train_accuracy": [], "val_accuracy": [], "on": []}
    for epoch in range(epochs):
        switch.on = pairing and schedule.enabled(epoch)
        hist = train.fit(model, opt, loader, epochs=1, val_loader=val, progress=False)
        out["train_accuracy"].append(float(hist["epoch_accuracy"][0]))
        out["val_accuracy"].append(float(hist["val_accuracy"][0]))
        out["clean_train_accuracy"].append(accuracy(model, train_set))
        out["on"].append(bool(schedule.enabled(epoch)))
    return out


def judge_claims(measurements: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """Judge :data:`CLAIMS` from the curves (the rule of :func:`cnnkit.experiments._runner.judge`,
    threshold 0, spread the standard deviation over seeds of the paired differences).

    Parameters
    ----------
    measurements : dict
        ``on`` (per epoch), ``final_epochs`` (int), and ``with`` / ``without``: dicts with
        ``train_accuracy`` and ``val_accuracy``, one per-epoch list per seed (seeds paired).

    Returns
    -------
    (list of Claim, dict)
        The two claims, and the per-seed statistics: ``train_drop_points_on`` (training accuracy
        without minus with, in points, averaged over the epochs SamplePairing is on),
        ``final_val_accuracy`` ({"with": [...], "without": [...]}: mean of the last
        ``final_epochs`` epochs) and ``val_gain_points``.
    """
    on, k = measurements["on"], int(measurements["final_epochs"])
    w, wo = measurements["with"], measurements["without"]
    idx = [e for e, o in enumerate(on) if o]
    drop = [100 * float(np.mean([b[e] - a[e] for e in idx])) if idx else float("nan")
            for a, b in zip(w["train_accuracy"], wo["train_accuracy"])]
    final = {"with": [float(np.mean(v[-k:])) for v in w["val_accuracy"]],
             "without": [float(np.mean(v[-k:])) for v in wo["val_accuracy"]]}
    gain = [100 * (a - b) for a, b in zip(final["with"], final["without"])]
    d_m, d_s = mean_spread(drop)
    g_m, g_s = mean_spread(gain)
    claims = [
        claim(CLAIMS[0], "training accuracy (batches seen) without minus with SamplePairing, in points, mean over "
              "the epochs it is on (mean over seeds, paired)", d_m, 0.0, d_s),
        claim(CLAIMS[1], f"validation accuracy with minus without SamplePairing, in points, mean of the last "
              f"{k} epoch(s) (mean over seeds, paired)", g_m, 0.0, g_s),
    ]
    return claims, {"train_drop_points_on": drop, "final_val_accuracy": final, "val_gain_points": gain}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train with and without SamplePairing over the seeds, plot the curves with the phases
    shaded, and judge the paper's two claims.

    Parameters
    ----------
    seed : int, default 0
        First seed (``seed``, ``seed + 1``, ``seed + 2``; only ``seed`` with ``quick``).
    quick : bool, default False
        A smoke run: 4 epochs (1 warm-up, 1 on / 1 off, fine-tuning from epoch 3) on 96 images, one seed.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``epochs`` (1-based), ``on`` (per epoch), and for ``with`` and
        ``without`` SamplePairing, per seed, the per-epoch ``train_accuracy``,
        ``clean_train_accuracy`` and ``val_accuracy``; ``final_val_accuracy`` (mean of the last
        ``final_epochs`` epochs, per seed) and ``train_drop_points_on`` (per seed).

    Examples
    --------
    >>> from cnnkit.experiments import samplepairing
    >>> samplepairing.NAME
    'samplepairing'
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick)
    if quick:
        epochs, sched = 4, augment.SamplePairingSchedule(warmup=1, on=1, off=1, fine_tune_from=3)
    else:
        epochs, sched = 80, augment.SamplePairingSchedule(warmup=10, on=8, off=2, fine_tune_from=60)
    train_size, final_epochs = (96, 1) if quick else (300, 5)
    bar = progress_bar(2 * len(run_seeds), NAME, progress)
    runs: dict[str, list[dict[str, list]]] = {"with": [], "without": []}
    for s in run_seeds:
        tr, va = digits_split(s, train_limit=train_size)
        for key in ("with", "without"):
            runs[key].append(train_run(tr, va, sched, epochs=epochs, seed=s, pairing=key == "with"))
            bar.update(1)
    bar.close()

    on = [sched.enabled(e) for e in range(epochs)]
    measurements = {"epochs": list(range(1, epochs + 1)), "on": on, "final_epochs": final_epochs,
                    **{key: {k: [r[k] for r in runs[key]] for k in ("train_accuracy", "clean_train_accuracy",
                                                                    "val_accuracy")} for key in ("with", "without")}}
    claims, derived = judge_claims(measurements)
    measurements.update(derived)
    fig = _figure(runs, on, sched, epochs)
    settings = {"dataset": f"digits 8x8: {train_size} training images, 450 validation images (per seed)",
                "train_size": train_size, "epochs": epochs, "batch_size": 32,
                "schedule": {"warmup": sched.warmup, "on": sched.on, "off": sched.off,
                             "fine_tune_from": sched.fine_tune_from},
                "pairing": "SamplePairing(p=1, pool=the training images): (x + partner) / 2, x's label",
                "optimizer": "SGD lr 0.02 momentum 0.9 weight decay 5e-4 (constant)",
                "network": "the regularization experiment's network, no regularizer",
                "final_epochs": final_epochs, "seeds": run_seeds}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _shade(ax: Any, on: list[bool], sched: augment.SamplePairingSchedule, epochs: int, label: bool) -> None:
    """Shade the epochs SamplePairing is on (orange), the warm-up and the fine-tuning (grey)."""
    first = True
    for e, o in enumerate(on):
        if o:
            ax.axvspan(e + 0.5, e + 1.5, color="tab:orange", alpha=0.15, lw=0,
                       label="SamplePairing on" if (label and first) else None)
            first = False
    ax.axvspan(0.5, sched.warmup + 0.5, color="grey", alpha=0.12, lw=0, label="warm-up (off)" if label else None)
    if sched.fine_tune_from is not None:
        ax.axvspan(sched.fine_tune_from + 0.5, epochs + 0.5, color="tab:blue", alpha=0.08, lw=0,
                   label="fine-tuning (off)" if label else None)


def _figure(runs: dict[str, list[dict[str, list]]], on: list[bool], sched: augment.SamplePairingSchedule,
            epochs: int) -> Any:
    fig, (ax1, ax2) = new_figure(1, 2, title=TITLE, width=6.0, height=4.2)
    ep = np.arange(1, epochs + 1)
    for ax, key, what in ((ax1, "train_accuracy", "Training accuracy (batches seen)"),
                          (ax2, "val_accuracy", "Validation accuracy")):
        _shade(ax, on, sched, epochs, label=True)
        for k, color in (("without", "tab:blue"), ("with", "tab:red")):
            a = 100 * np.array([r[key] for r in runs[k]])
            m, s = a.mean(axis=0), (a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1]))
            ax.plot(ep, m, color=color, label=f"{k} SamplePairing (mean over seeds)")
            ax.fill_between(ep, m - s, m + s, color=color, alpha=0.2, lw=0)
        ax.set(title=what, xlabel="epoch", ylabel="accuracy (%)", xlim=(0.5, epochs + 0.5))
        ax.legend(loc="lower right", fontsize="small")
    return fig
