"""``smart-augmentation``: Smart Augmentation on small training sets (Lemley, Bazrafkan and
Corcoran 2017).

Smart Augmentation trains a network A that merges k same-class images into a new sample while the
classifier B trains on real batches plus A's outputs (:class:`cnnkit.augment.SmartAugmentation`,
k = 2, the classifier's loss weighted 0.3 and the similarity loss 0.7). The paper reports that it
raises the accuracy of the target network "by demonstrably significant measures on all data sets
tested" (mostly gender classification from small face data sets) and sets it beside traditional
augmentation; the second pair of claims below tests that comparison.

Here the same classifier (:func:`cnnkit.augment.classifier_network`: two 3x3 convolutions with
batch norm, global average pooling, a linear layer; SGD lr 0.02, momentum 0.9, weight decay
5e-4, cosine annealing to 0) is trained with the same seeds, initialization and number of steps on

* 10% of scikit-learn's 8x8 digits (136 of the 1,346 training images of a stratified 75/25
  split, stratified too; 451 test images),
* 20 of scikit-image's faces (face / non-face, 25x25; 10 per class, drawn from one half of
  the 200 images; the other half, 100 images, is the test set),

three ways: no augmentation, standard augmentation (:class:`cnnkit.augment.RandomAffine`:
rotation up to 10 degrees, translation up to 10%, scale 0.9-1.1, bilinear; faces also a
horizontal flip) and Smart Augmentation (one merged sample per real image in each batch).

Claims tested (paired by seed; the difference must exceed 0 by more than its spread):

* Smart Augmentation improves the test accuracy over no augmentation, on each data set.
* Smart Augmentation improves the test accuracy more than standard augmentation, on each data set.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import augment, data, optim, train
from ..optim.lr_scheduler import CosineAnnealingLR
from ._runner import Result, accuracy, claim, mean_spread, new_figure, progress_bar, seeds

__all__ = ["NAME", "TITLE", "CLAIMS", "DATASETS", "CONDITIONS", "run", "judge_claims", "load_split"]

NAME = "smart-augmentation"
TITLE = "Smart Augmentation on small training sets (10% of the digits, 20 faces)"
DATASETS = ("digits", "faces")
CONDITIONS = ("none", "standard", "smart")
CLAIMS = [f"Smart Augmentation improves test accuracy over no augmentation ({d})" for d in DATASETS] + \
         [f"Smart Augmentation improves test accuracy more than standard augmentation ({d})" for d in DATASETS]

#: per data set: training images kept, batch size, epochs (default, quick)
_SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"train_size": 135, "test_size": 0.25, "batch_size": 32, "epochs": 80, "quick_epochs": 12},
    "faces": {"train_size": 20, "test_size": 0.5, "batch_size": 10, "epochs": 80, "quick_epochs": 12}}
_N_SEEDS = 5


def load_split(name: str, seed: int, train_size: int) -> tuple[Any, Any, np.ndarray]:
    """A stratified train/test split of a data set (test: 25% of the digits, 50% of the faces), the
    training set reduced to ``train_size`` images (stratified too), images quantized to 8 bits so
    that every condition sees the same pixels (the standard augmentation works on uint8 images).

    Parameters
    ----------
    name : {"digits", "faces"}
    seed : int >= 0
        Both splits' seed.
    train_size : int >= 2
        Training images kept (about: the per-class counts are rounded).

    Returns
    -------
    (cnnkit.data.ArrayDataset, cnnkit.data.ArrayDataset, uint8 ndarray)
        Train and test (float32 (N, 1, H, W) in [0, 1], int64 labels) and the training images
        as uint8 (N, H, W, 1).

    Examples
    --------
    >>> from cnnkit.experiments.smart_augmentation import load_split
    >>> tr, te, u8 = load_split("digits", 0, 135)
    >>> len(tr), len(te), u8.shape
    (136, 451, (136, 8, 8, 1))
    """
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
    full = data.load_digits() if name == "digits" else data.load_faces()
    tr, te = data.train_test_split(full, _SETTINGS[name]["test_size"], seed=seed)
    if train_size < len(tr):
        tr, _ = data.train_test_split(tr, len(tr) - train_size, seed=seed)

    def quantize(ds: Any) -> tuple[Any, np.ndarray]:
        u8 = np.clip(np.round(ds.images * 255.0), 0, 255).astype(np.uint8)
        return data.ArrayDataset(u8.astype(np.float32) / np.float32(255), ds.labels, classes=ds.classes), u8

    trq, u8 = quantize(tr)
    teq, _ = quantize(te)
    return trq, teq, np.ascontiguousarray(u8.transpose(0, 2, 3, 1))


def _standard_pipeline(name: str, seed: int) -> Any:
    ops: list = [augment.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation="bilinear")]
    if name == "faces":
        ops.insert(0, augment.RandomHorizontalFlip())
    return augment.Compose(ops + [augment.Normalize(mean=(0.0,), std=(1.0,))], seed=seed + 1000)


def _sgd(model: Any) -> Any:
    return optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)


def train_condition(name: str, condition: str, seed: int, *, epochs: int) -> dict[str, Any]:
    """Train the classifier on one data set under one condition and measure its test accuracy.

    Parameters
    ----------
    name : {"digits", "faces"}
    condition : {"none", "standard", "smart"}
    seed : int >= 0
        The split, the initialization, the batch order and the augmentation's randomness.
    epochs : int >= 1

    Returns
    -------
    dict
        ``test_accuracy`` (float); for "smart" also ``history`` (the per-epoch similarity loss,
        B's loss and accuracy on A's outputs) and ``model`` (the trained
        :class:`cnnkit.augment.SmartAugmentation`), and ``test`` (the test set).
    """
    st = _SETTINGS[name]
    tr, te, u8 = load_split(name, seed, st["train_size"])
    nc = int(tr.labels.max()) + 1
    b = augment.classifier_network(1, nc, seed=seed)
    out: dict[str, Any] = {"test": te, "train": tr}
    opt = _sgd(b)
    sched = CosineAnnealingLR(opt, T_max=epochs)
    if condition == "smart":
        sa = augment.SmartAugmentation(b, in_channels=1, seed=seed, optimizer_b=opt)
        for _ in range(epochs):  # one epoch per call (the same draws as one call), then the schedule's step
            sa.fit(tr, epochs=1, batch_size=st["batch_size"], progress=False)
            sched.step()
        out.update(model=sa, history={k: list(sa.history[k]) for k in ("similarity", "loss_b", "merged_accuracy",
                                                                          "train_accuracy")})
    else:
        pipe = _standard_pipeline(name, seed) if condition == "standard" else None
        ds = data.ArrayDataset(u8, tr.labels) if pipe is not None else tr
        loader = data.DataLoader(ds, st["batch_size"], seed=seed, augment=pipe)
        train.fit(b, opt, loader, epochs=epochs, scheduler=sched, progress=False)
    out["test_accuracy"] = accuracy(b, te)
    return out


def judge_claims(measurements: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """Judge :data:`CLAIMS` from the test accuracies (paired by seed; threshold 0 points, spread
    the standard deviation over seeds of the paired differences).

    Parameters
    ----------
    measurements : dict
        ``test_accuracy``: ``{dataset: {condition: [accuracy per seed]}}`` for every data set of
        :data:`DATASETS` and condition of :data:`CONDITIONS` (fractions in [0, 1], seeds paired).

    Returns
    -------
    (list of Claim, dict)
        The four claims, and ``gain_points``: ``{dataset: {"smart - none": [...],
        "smart - standard": [...]}}`` (per seed, in points), plus ``test_accuracy_mean`` and
        ``test_accuracy_spread`` (``{dataset: {condition: float}}``).

    Examples
    --------
    >>> from cnnkit.experiments.smart_augmentation import judge_claims
    >>> acc = {"none": [0.80, 0.82, 0.81], "standard": [0.85, 0.86, 0.84], "smart": [0.86, 0.88, 0.86]}
    >>> claims, _ = judge_claims({"test_accuracy": {"digits": acc, "faces": acc}})
    >>> [c.verdict for c in claims]
    ['reproduced', 'reproduced', 'reproduced', 'reproduced']
    """
    acc = measurements["test_accuracy"]
    gains: dict[str, dict[str, list]] = {}
    means: dict[str, dict[str, float]] = {}
    spreads: dict[str, dict[str, float]] = {}
    for d in DATASETS:
        a = {c: [float(v) for v in acc[d][c]] for c in CONDITIONS}
        gains[d] = {f"smart - {base}": [100 * (s - b) for s, b in zip(a["smart"], a[base])]
                    for base in ("none", "standard")}
        means[d] = {c: mean_spread(a[c])[0] for c in CONDITIONS}
        spreads[d] = {c: mean_spread(a[c])[1] for c in CONDITIONS}
    claims: list = []
    for base, what in (("none", "no augmentation"), ("standard", "standard augmentation")):
        for d in DATASETS:
            m, s = mean_spread(gains[d][f"smart - {base}"])
            claims.append(claim(CLAIMS[len(claims)], f"test accuracy with Smart Augmentation minus with {what}, "
                                f"in points ({d}; mean over seeds, paired)", m, 0.0, s))
    return claims, {"gain_points": gains, "test_accuracy_mean": means, "test_accuracy_spread": spreads}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train the classifier without augmentation, with standard augmentation and with Smart
    Augmentation on both reduced data sets over the seeds, draw merged samples, and judge the
    claims.

    Parameters
    ----------
    seed : int, default 0
        First seed (``seed`` .. ``seed + 4``; only ``seed`` with ``quick``).
    quick : bool, default False
        A smoke run: one seed, 12 epochs.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``test_accuracy`` (``{dataset: {condition: [per seed]}}``),
        ``test_accuracy_mean`` / ``_spread``, ``gain_points``, ``smart_history`` (``{dataset:
        {"similarity" | "loss_b" | "merged_accuracy" | "train_accuracy": [per-epoch list per
        seed]}}``) and ``epochs``.

    Examples
    --------
    >>> from cnnkit.experiments import smart_augmentation
    >>> smart_augmentation.NAME
    'smart-augmentation'
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick, n=_N_SEEDS)
    epochs = {d: _SETTINGS[d]["quick_epochs" if quick else "epochs"] for d in DATASETS}
    bar = progress_bar(len(DATASETS) * len(CONDITIONS) * len(run_seeds), NAME, progress)
    acc: dict[str, dict[str, list]] = {d: {c: [] for c in CONDITIONS} for d in DATASETS}
    hist: dict[str, dict[str, list]] = {d: {k: [] for k in ("similarity", "loss_b", "merged_accuracy",
                                                             "train_accuracy")} for d in DATASETS}
    examples: dict[str, Any] = {}
    for s in run_seeds:
        for d in DATASETS:
            for c in CONDITIONS:
                r = train_condition(d, c, s, epochs=epochs[d])
                acc[d][c].append(r["test_accuracy"])
                if c == "smart":
                    for k in hist[d]:
                        hist[d][k].append(r["history"][k])
                    if s == run_seeds[0]:
                        nc = int(r["test"].labels.max()) + 1
                        examples[d] = r["model"].sample(r["test"], min(nc, 6) if d == "digits" else 4,
                                                        classes=list(range(nc)), seed=s)
                bar.update(1)
    bar.close()
    measurements: dict[str, Any] = {"epochs": epochs, "test_accuracy": acc, "smart_history": hist}
    claims, derived = judge_claims(measurements)
    measurements.update(derived)
    fig = _figure(measurements, examples)
    settings = {
        "datasets": {d: {"train_size": _SETTINGS[d]["train_size"], "batch_size": _SETTINGS[d]["batch_size"],
                         "epochs": epochs[d]} for d in DATASETS},
        "digits": "scikit-learn 8x8 digits: 136 training images (10% of the 1,346 of a stratified 75/25 split), "
                  "451 test images",
        "faces": "scikit-image lfw_subset 25x25 face / non-face: 20 training images (10 per class, from one half "
                 "of a stratified 50/50 split), 100 test images (the other half)",
        "classifier": "cnnkit.augment.classifier_network (conv3x3 16 - BN-ReLU - maxpool - conv3x3 32 - BN-ReLU - "
                      "global average pool - linear)",
        "optimizer": "SGD lr 0.02 momentum 0.9 weight decay 5e-4, cosine annealing to 0 over the epochs; the same "
                     "number of steps per condition",
        "standard": "RandomAffine(10 degrees, translate 0.1, scale 0.9-1.1, bilinear); faces also a horizontal flip",
        "smart": "SmartAugmentation(k=2, alpha=0.3, beta=0.7), network A = cnnkit.augment.generator_network "
                 "(3 conv3x3, width 16, Adam lr 1e-3), one merged sample per real image in every batch",
        "seeds": run_seeds}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _montage(inputs: np.ndarray, merged: np.ndarray) -> np.ndarray:
    """Rows of ``k`` input images, a gap, and the merged image (grey values, NaN gaps)."""
    n, k, _, h, w = inputs.shape
    gap = max(1, w // 4)
    img = np.full((n * (h + 1) - 1, (k + 1) * (w + 1) + gap - 1), np.nan)
    for i in range(n):
        r = i * (h + 1)
        for j in range(k):
            img[r:r + h, j * (w + 1):j * (w + 1) + w] = inputs[i, j, 0]
        c = k * (w + 1) + gap
        img[r:r + h, c:c + w] = merged[i, 0]
    return img


def _figure(m: dict[str, Any], examples: dict[str, Any]) -> Any:
    fig, axes = new_figure(2, 2, title=TITLE, width=6.0, height=4.4)
    ax = axes[0]
    x = np.arange(len(DATASETS))
    colors = {"none": "tab:gray", "standard": "tab:blue", "smart": "tab:red"}
    for i, c in enumerate(CONDITIONS):
        mean = [100 * m["test_accuracy_mean"][d][c] for d in DATASETS]
        spread = [100 * m["test_accuracy_spread"][d][c] for d in DATASETS]
        spread = [0.0 if not np.isfinite(s) else s for s in spread]
        ax.bar(x + (i - 1) * 0.27, mean, 0.27, yerr=spread, capsize=3, color=colors[c],
               label=f"{c} (mean ± std over seeds)")
    lo = min(100 * min(m["test_accuracy_mean"][d][c] for c in CONDITIONS) for d in DATASETS)
    ax.set(title="Test accuracy of the classifier", xlabel="data set", ylabel="test accuracy (%)",
           xticks=x, xticklabels=list(DATASETS), ylim=(max(0.0, lo - 15), 112))
    ax.set_yticks([t for t in ax.get_yticks() if t <= 100])  # the headroom above 100% holds the legend
    ax.legend(loc="upper center", ncols=3, fontsize="x-small")
    ax = axes[1]
    for d, color in zip(DATASETS, ("tab:purple", "tab:green")):
        sim = np.array(m["smart_history"][d]["similarity"], dtype=np.float64)
        ep = np.arange(1, sim.shape[1] + 1)
        ax.plot(ep, sim.mean(axis=0), color=color, label=f"{d}: similarity loss (MSE to another image)")
        mer = np.array(m["smart_history"][d]["loss_b"], dtype=np.float64)
        ax.plot(ep, mer.mean(axis=0), color=color, ls="--", label=f"{d}: classifier loss (real + merged)")
    ax.set(title="Smart Augmentation training (mean over seeds)", xlabel="epoch", ylabel="loss", yscale="log")
    ax.legend(loc="upper right", fontsize="x-small")
    for ax, d in zip(axes[2:], DATASETS):
        if d in examples:
            inputs, merged, labels = examples[d]
            ax.imshow(_montage(inputs, merged), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            k = inputs.shape[1]
            ax.set_title(f"{d}: {k} inputs of one class | network A's merged image\n(classes {labels.tolist()}, "
                         f"first seed, test images)", fontsize="small")
        else:
            ax.set_visible(False)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
