"""``regularization``: which regularizers help a small CNN trained on a small training set.

A CNN (two 3x3 convolution blocks with batch norm, a 128-unit hidden layer, a linear classifier)
is trained on 200 of scikit-learn's 8x8 digits, long enough to fit them perfectly, and tested on
450 held-out digits; over several seeds (each drawing the split, the initialization, the batch
order and the regularizers' randomness) with:

* no regularization (SGD with momentum; and Adam, the baseline of AdamW),
* L2 weight decay (SGD's ``weight_decay``: added to the gradient),
* decoupled weight decay (:class:`cnnkit.optim.AdamW`, against plain Adam),
* dropout (:class:`cnnkit.nn.Dropout` before the classifier),
* spatial dropout (:class:`cnnkit.nn.SpatialDropout2d` after each convolution block),
* Cutout (:class:`cnnkit.augment.Cutout`, one 4x4 hole), Mixup (:class:`cnnkit.augment.MixUp`),
  CutMix (:class:`cnnkit.augment.CutMix`),
* label smoothing (:class:`cnnkit.nn.CrossEntropyLoss` ``label_smoothing=0.1``).

Each regularizer's claim, that it improves the test accuracy over no regularization, is judged on
the accuracy difference paired by seed: it must exceed 0 by more than its standard deviation over
the seeds.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .. import augment, data, nn, optim, train
from ..optim.lr_scheduler import CosineAnnealingLR
from ._runner import Result, accuracy, claim, digits_split, mean_spread, new_figure, progress_bar, seeds

__all__ = ["NAME", "TITLE", "CLAIMS", "VARIANTS", "run", "judge_claims"]

NAME = "regularization"
TITLE = "Regularizers on a small training set (200 digits)"

#: variant -> (baseline it is compared with, description)
VARIANTS: dict[str, tuple[Optional[str], str]] = {
    "none (SGD)": (None, "SGD, momentum 0.9, no regularization"),
    "none (Adam)": (None, "Adam, no regularization"),
    "L2 weight decay": ("none (SGD)", "SGD weight_decay=5e-3 (L2 penalty in the gradient)"),
    "decoupled weight decay": ("none (Adam)", "AdamW weight_decay=0.05 (decoupled)"),
    "dropout": ("none (SGD)", "Dropout p=0.5 before the classifier"),
    "spatial dropout": ("none (SGD)", "SpatialDropout2d p=0.1 after each convolution block"),
    "Cutout": ("none (SGD)", "Cutout, one 4x4 hole per image"),
    "Mixup": ("none (SGD)", "MixUp alpha=0.4"),
    "CutMix": ("none (SGD)", "CutMix alpha=1.0"),
    "label smoothing": ("none (SGD)", "cross-entropy with label_smoothing=0.1"),
}
CLAIMS = [f"{v} improves test accuracy over no regularization ({base})"
          for v, (base, _) in VARIANTS.items() if base is not None]


def build(variant: str, seed: int) -> nn.Sequential:
    """The network, with the dropout layers the variant needs.

    conv3x3 1->32 - BN-ReLU - [spatial dropout] - maxpool 2 - conv3x3 32->64 - BN-ReLU -
    [spatial dropout] - maxpool 2 - flatten - linear 256->128 - ReLU - [dropout] - linear 128->10.

    Parameters
    ----------
    variant : str
        A key of :data:`VARIANTS`.
    seed : int
        The initialization and the dropout masks.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, 10) for (N, 1, 8, 8) inputs.
    """
    rng = np.random.default_rng(seed)
    sd = variant == "spatial dropout"
    layers: list[nn.Module] = [nn.Conv2d(1, 32, 3, 1, 1, bias=False, rng=rng), nn.BatchNorm2d(32, activation="relu")]
    if sd:
        layers.append(nn.SpatialDropout2d(0.1, seed=seed + 1000))
    layers += [nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1, bias=False, rng=rng), nn.BatchNorm2d(64, activation="relu")]
    if sd:
        layers.append(nn.SpatialDropout2d(0.1, seed=seed + 2000))
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 128, rng=rng), nn.ReLU()]
    if variant == "dropout":
        layers.append(nn.Dropout(0.5, seed=seed + 3000))
    layers.append(nn.Linear(128, 10, rng=rng))
    return nn.Sequential(*layers)


def _setup(variant: str, model: nn.Module, seed: int) -> tuple[Any, Any, Any]:
    """(optimizer, batch augmentation or None, loss) of a variant."""
    p = model.parameters()
    if variant == "none (Adam)":
        opt: Any = optim.Adam(p, lr=2e-3)
    elif variant == "decoupled weight decay":
        opt = optim.AdamW(p, lr=2e-3, weight_decay=0.05)
    else:
        opt = optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3 if variant == "L2 weight decay" else 0.0)
    aug = {"Cutout": lambda: augment.Cutout(4, seed=seed),
           "Mixup": lambda: augment.MixUp(0.4, num_classes=10, seed=seed),
           "CutMix": lambda: augment.CutMix(1.0, num_classes=10, seed=seed)}.get(variant)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1 if variant == "label smoothing" else 0.0)
    return opt, (aug() if aug else None), loss


def train_variant(variant: str, train_set: data.ArrayDataset, test_set: data.ArrayDataset, *, epochs: int,
                  seed: int, batch_size: int = 32) -> dict[str, float]:
    """Train one variant (cosine learning-rate decay to 0 over ``epochs``) and measure it.

    Parameters
    ----------
    variant : str
        A key of :data:`VARIANTS`.
    train_set, test_set : cnnkit.data.ArrayDataset
    epochs : int
    seed : int
        Initialization, batch order and the regularizer's randomness.
    batch_size : int, default 32

    Returns
    -------
    dict
        ``test_accuracy`` and ``train_accuracy`` (clean training images, eval mode) as floats.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    model = build(variant, seed)
    opt, aug, loss = _setup(variant, model, seed)
    loader = data.DataLoader(train_set, batch_size, seed=seed, augment=aug, drop_last=True)
    train.fit(model, opt, loader, epochs=epochs, loss=loss, scheduler=CosineAnnealingLR(opt, max(epochs, 1)),
              progress=False)
    return {"test_accuracy": accuracy(model, test_set), "train_accuracy": accuracy(model, train_set)}


def judge_claims(measurements: dict[str, Any]) -> tuple[list, dict[str, list[float]]]:
    """Judge :data:`CLAIMS`: each regularizer against its baseline, on the test accuracies paired by
    seed (the rule of :func:`cnnkit.experiments._runner.judge`, threshold 0, spread the standard
    deviation of the differences).

    Parameters
    ----------
    measurements : dict
        ``test_accuracy``: variant -> test accuracy per seed, for every variant of :data:`VARIANTS`.

    Returns
    -------
    (list of Claim, dict)
        The claims in :data:`CLAIMS` order, and per regularizer the differences in points per seed.
    """
    acc = measurements["test_accuracy"]
    claims, improvement = [], {}
    regs = [(v, base) for v, (base, _) in VARIANTS.items() if base is not None]
    for text, (v, base) in zip(CLAIMS, regs):
        d = [100 * (a - b) for a, b in zip(acc[v], acc[base])]
        improvement[v] = d
        m, sp = mean_spread(d)
        claims.append(claim(text, f"test accuracy of {v} minus {base}, in points (mean over seeds, paired)",
                            m, 0.0, sp))
    return claims, improvement


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train every variant of :data:`VARIANTS` on 200 digits over the seeds and judge, for each
    regularizer, whether it beats its unregularized baseline by more than the spread.

    Parameters
    ----------
    seed : int, default 0
        First seed (four consecutive seeds; only ``seed`` with ``quick``).
    quick : bool, default False
        A smoke run: one epoch on 96 training images, one seed.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``variants`` (names), ``test_accuracy`` and ``train_accuracy`` (per
        variant: one value per seed), ``test_accuracy_mean``, ``test_accuracy_spread``,
        ``improvement_points`` (per regularizer: the paired differences with its baseline, in
        points, per seed). ``figure``: test accuracy per variant, and each regularizer's
        improvement with its spread.

    Examples
    --------
    >>> from cnnkit.experiments import regularization
    >>> len(regularization.CLAIMS)
    8
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick, n=4)
    epochs, train_size = (1, 96) if quick else (60, 200)
    names = list(VARIANTS)
    bar = progress_bar(len(names) * len(run_seeds), NAME, progress)
    test_acc: dict[str, list[float]] = {v: [] for v in names}
    train_acc: dict[str, list[float]] = {v: [] for v in names}
    for s in run_seeds:
        tr, te = digits_split(s, train_limit=train_size)
        for v in names:
            res = train_variant(v, tr, te, epochs=epochs, seed=s)
            test_acc[v].append(res["test_accuracy"])
            train_acc[v].append(res["train_accuracy"])
            bar.update(1)
    bar.close()

    claims, improvement = judge_claims({"test_accuracy": test_acc})
    means, spreads = zip(*(mean_spread(test_acc[v]) for v in names))
    fig = _figure(names, means, spreads, improvement)
    settings = {"dataset": f"digits 8x8: {train_size} training images (per seed), 450 test images", "train_size": train_size,
                "epochs": epochs, "batch_size": 32, "schedule": "cosine to 0 over the epochs",
                "variants": {v: d for v, (_, d) in VARIANTS.items()},
                "baselines": {v: b for v, (b, _) in VARIANTS.items() if b is not None},
                "optimizers": "SGD lr 0.05 momentum 0.9; Adam/AdamW lr 2e-3", "seeds": run_seeds}
    measurements = {"variants": names, "test_accuracy": test_acc, "train_accuracy": train_acc,
                    "test_accuracy_mean": list(means), "test_accuracy_spread": list(spreads),
                    "improvement_points": improvement}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _figure(names: list[str], means: Any, spreads: Any, improvement: dict[str, list[float]]) -> Any:
    fig, (ax1, ax2) = new_figure(1, 2, title=TITLE, width=6.5, height=4.5)
    y = np.arange(len(names))
    ax1.barh(y, 100 * np.array(means), xerr=100 * np.array(spreads), capsize=4, color="tab:blue",
             label="mean ± std (seeds)")
    lo = max(0.0, 100 * float(np.min(np.array(means) - np.array(spreads))) - 5)
    ax1.set_xlim(lo, 100)
    ax1.set(title="Test accuracy", xlabel="test accuracy (%)", ylabel="variant", yticks=y, yticklabels=names)
    ax1.invert_yaxis()
    ax1.legend(loc="lower right", fontsize="x-small")
    regs = list(improvement)
    y2 = np.arange(len(regs))
    m = [float(np.mean(improvement[v])) for v in regs]
    s = [mean_spread(improvement[v])[1] for v in regs]
    colors = ["tab:green" if mi > si else ("tab:red" if mi < -si else "tab:gray") for mi, si in zip(m, s)]
    ax2.barh(y2, m, xerr=s, capsize=4, color=colors, label="mean ± std of paired differences\n(green: beats the spread)")
    ax2.axvline(0.0, color="black", lw=0.8)
    ax2.set(title="Improvement over the unregularized baseline", xlabel="test accuracy difference (points)",
            ylabel="regularizer", yticks=y2, yticklabels=regs)
    ax2.invert_yaxis()
    ax2.legend(loc="lower left", fontsize="x-small")
    return fig
