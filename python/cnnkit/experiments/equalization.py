"""``equalization``: contrast preprocessing for low-contrast images.

scikit-learn's digits (resized to 16x16, uint8) are made low-contrast, each image with its own
contrast and brightness: ``x' = round(b + c x + noise)`` with ``c ~ U(0.04, 0.25)``,
``b ~ U(0, 255 (1 - c))`` and Gaussian noise of 1.5 grey levels (one fixed draw per image, the
same for every method). A small CNN with batch norm (:func:`build`) is then trained and tested on these images
preprocessed by

* none: ``x / 255``;
* per-channel normalization: ``(x/255 - mean) / std`` with the training set's statistics
  (torchvision's ``Normalize``; a global affine map);
* per-image standardization (TensorFlow's ``per_image_standardization``);
* histogram equalization (:func:`cnnkit.augment.functional.equalize`, OpenCV's formula: Pillow's
  step ``(256 - h_last) // 255`` is 0, the identity, on most 256-pixel images);
* CLAHE (:func:`cnnkit.augment.functional.clahe`, clip limit 2, 4 x 4 tiles);

and, for reference, on the original images. The claim for each method: it improves the test
accuracy over no preprocessing (the paired difference over seeds must exceed its spread).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .. import data, nn, optim
from ..augment import functional as F
from ..optim.lr_scheduler import CosineAnnealingLR
from ._runner import Result, claim, mean_spread, progress_bar, seeds, train_epochs

__all__ = ["NAME", "TITLE", "CLAIMS", "METHODS", "low_contrast", "build", "run", "judge_claims"]

NAME = "equalization"
TITLE = "Contrast preprocessing on low-contrast digits (16x16)"
SIZE = 16

#: method name -> preprocessing of uint8 NHWC images given the training images (for statistics)
METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "none": lambda x, ref: F.to_float_normalize(x),
    "per-channel normalization": lambda x, ref: F.to_float_normalize(
        x, [float(ref.mean() / 255)], [float(max(ref.std() / 255, 1e-6))]),
    "per-image standardization": lambda x, ref: F.to_float_normalize(x, mode="image"),
    "equalize": lambda x, ref: F.to_float_normalize(F.equalize(x, "cv")),
    "CLAHE": lambda x, ref: F.to_float_normalize(F.clahe(x, 2.0, (4, 4))),
}
CLAIMS = [f"{m} improves test accuracy on low-contrast images over no preprocessing" for m in METHODS if m != "none"]


def low_contrast(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """A low-contrast version of uint8 images: per image ``round(b + c x + noise)`` clipped to
    0..255, with ``c ~ U(0.04, 0.25)``, ``b ~ U(0, 255 (1 - c))`` and N(0, 1.5^2) noise.

    Parameters
    ----------
    images : uint8 ndarray (N, H, W, C)
    seed : int, default 0
        Seeds the draws.

    Returns
    -------
    uint8 ndarray (N, H, W, C)

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.experiments.equalization import low_contrast
    >>> x = np.tile(np.arange(0, 256, 17, dtype=np.uint8), (2, 16, 1))[..., None]
    >>> y = low_contrast(x, 0)
    >>> y.dtype, y.shape, int(np.ptp(y[0])) < 80
    (dtype('uint8'), (2, 16, 16, 1), True)
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images: expected a uint8 (N, H, W, C) array, got {type(images).__name__}")
    rng = np.random.default_rng(seed)
    n = len(images)
    c = rng.uniform(0.04, 0.25, n)
    b = rng.uniform(0.0, 255.0 * (1.0 - c))
    noise = rng.normal(0.0, 1.5, images.shape)
    y = b[:, None, None, None] + c[:, None, None, None] * images.astype(np.float64) + noise
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _split(seed: int, train_size: Any) -> tuple[np.ndarray, ...]:
    """(train uint8, train labels, test uint8, test labels, train low, test low) for one seed."""
    ds = data.load_digits(size=SIZE, as_uint8=True)
    tr, te = data.train_test_split(ds, 0.25, seed=seed)
    if train_size is not None:
        tr = tr.subset(slice(0, train_size))
    return (tr.images, tr.labels, te.images, te.labels,
            low_contrast(tr.images, seed + 100), low_contrast(te.images, seed + 200))


def build(seed: int = 0) -> nn.Sequential:
    """The network: three blocks of 3x3 convolution (16, 32, 64 channels), batch norm with ReLU and
    2x2 max pooling, then a linear classifier on the flattened 2x2 maps.

    Parameters
    ----------
    seed : int
        The initialization.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, 10) for (N, 1, 16, 16) inputs.
    """
    rng = np.random.default_rng(seed)
    layers: list[nn.Module] = []
    c = 1
    for w in (16, 32, 64):
        layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False, rng=rng), nn.BatchNorm2d(w, activation="relu"),
                   nn.MaxPool2d(2)]
        c = w
    layers += [nn.Flatten(), nn.Linear(c * (SIZE // 8) ** 2, 10, rng=rng)]
    return nn.Sequential(*layers)


def _train_test(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, epochs: int,
                seed: int) -> float:
    model = build(seed)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    hist = train_epochs(model, opt, data.ArrayDataset(x_tr, y_tr), epochs=epochs, batch_size=64, seed=seed,
                        test_set=data.ArrayDataset(x_te, y_te), scheduler=CosineAnnealingLR(opt, epochs))
    return float(hist["test_accuracy"])


def judge_claims(measurements: dict[str, Any]) -> tuple[list, dict[str, list[float]]]:
    """Judge :data:`CLAIMS`: each method against "none", on the test accuracies paired by seed
    (the rule of :func:`cnnkit.experiments._runner.judge`, threshold 0, spread the standard
    deviation of the differences).

    Parameters
    ----------
    measurements : dict
        ``test_accuracy``: method -> test accuracy per seed, for every method of :data:`METHODS`.

    Returns
    -------
    (list of Claim, dict)
        The claims in :data:`CLAIMS` order, and per method the differences in points per seed.
    """
    acc = measurements["test_accuracy"]
    claims, improvement = [], {}
    for text, m in zip(CLAIMS, [m for m in METHODS if m != "none"]):
        d = [100 * (a - b) for a, b in zip(acc[m], acc["none"])]
        improvement[m] = d
        mu, sp = mean_spread(d)
        claims.append(claim(text, f"test accuracy with {m} minus with none, in points (mean over seeds, paired)",
                            mu, 0.0, sp))
    return claims, improvement


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Train on the low-contrast digits with each preprocessing of :data:`METHODS` (and on the
    original digits for reference) and judge whether each beats no preprocessing.

    Parameters
    ----------
    seed : int, default 0
        First seed (``seed``, ``seed + 1``, ``seed + 2``; only ``seed`` with ``quick``); a seed
        draws the split, the contrast of every image, the initialization and the batch order.
    quick : bool, default False
        A smoke run: one epoch on 128 training images, one seed.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``methods``, ``test_accuracy`` (per method and for "original contrast":
        one value per seed), ``test_accuracy_mean``, ``test_accuracy_spread``,
        ``improvement_points`` (per method: paired differences with "none", in points) and
        ``contrast`` (mean grey-level range of the test images: original, low, and after each
        method). ``figure``: example images under each preprocessing, and test accuracy.
    """
    t_start = time.perf_counter()
    run_seeds = seeds(seed, quick)
    epochs, train_size = (1, 128) if quick else (10, None)
    names = list(METHODS) + ["original contrast"]
    bar = progress_bar(len(names) * len(run_seeds), NAME, progress)
    acc: dict[str, list[float]] = {m: [] for m in names}
    examples: dict[str, np.ndarray] = {}
    contrast: dict[str, float] = {}
    for i, s in enumerate(run_seeds):
        x_tr, y_tr, x_te, y_te, lo_tr, lo_te = _split(s, train_size)
        for m in names:
            if m == "original contrast":
                a, b = F.to_float_normalize(x_tr), F.to_float_normalize(x_te)
            else:
                a, b = METHODS[m](lo_tr, lo_tr), METHODS[m](lo_te, lo_tr)
            acc[m].append(_train_test(a, y_tr, b, y_te, epochs=epochs, seed=s))
            if i == 0:
                examples[m] = b[:6, 0]
                contrast[m] = float(np.mean(b.max(axis=(1, 2, 3)) - b.min(axis=(1, 2, 3))))
            bar.update(1)
        if i == 0:
            examples["low contrast (raw)"] = lo_te[:6, :, :, 0] / 255.0
    bar.close()

    claims, improvement = judge_claims({"test_accuracy": acc})
    means, spreads = zip(*(mean_spread(acc[m]) for m in names))
    fig = _figure(names, means, spreads, examples)
    settings = {"dataset": f"digits resized to {SIZE}x{SIZE} uint8, 75/25 split per seed",
                "train_size": train_size or "all (1347)",
                "low_contrast": "per image round(b + c x + N(0, 1.5^2)), c ~ U(0.04, 0.25), b ~ U(0, 255 (1 - c))",
                "clahe": {"clip_limit": 2.0, "tile_grid_size": [4, 4]}, "equalize": "OpenCV's equalizeHist formula (Pillow's is the identity on most 256-pixel images)",
                "network": "3 x (conv3x3 - BN-ReLU - maxpool 2), channels 16, 32, 64 - linear", "epochs": epochs,
                "batch_size": 64, "optimizer": "SGD lr 0.05 momentum 0.9 weight decay 5e-4, cosine decay to 0", "seeds": run_seeds}
    measurements = {"methods": names, "test_accuracy": acc, "test_accuracy_mean": list(means),
                    "test_accuracy_spread": list(spreads), "improvement_points": improvement,
                    "contrast": {"note": "mean over the first seed's test images of (max - min) of the network "
                                         "input", **contrast}}
    return Result(name=NAME, title=TITLE, settings=settings, measurements=measurements, claims=claims,
                  figure=fig, seconds=time.perf_counter() - t_start)


def _figure(names: list[str], means: Any, spreads: Any, examples: dict[str, np.ndarray]) -> Any:
    from matplotlib.figure import Figure
    rows = ["original contrast", "low contrast (raw)"] + [m for m in METHODS if m != "none"]
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    fig.suptitle(TITLE)
    left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])  # type: ignore[misc]
    grid = left.subplots(len(rows), 6)
    for r, m in enumerate(rows):
        # one grey scale per row: [0, 1] for images in [0, 1], the row's range for standardized ones
        vmin, vmax = ((float(examples[m].min()), float(examples[m].max())) if "normalization" in m or
                      "standardization" in m else (0.0, 1.0))
        for c in range(6):
            ax = grid[r, c]
            ax.imshow(examples[m][c], cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(m, rotation=0, ha="right", va="center", fontsize="small")
    left.suptitle("Test images under each preprocessing (one grey scale per row)", fontsize="medium")
    ax = right.subplots()
    y = np.arange(len(names))
    colors = ["tab:gray" if m == "original contrast" else "tab:blue" for m in names]
    ax.barh(y, 100 * np.array(means), xerr=100 * np.array(spreads), capsize=4, color=colors,
            label="mean ± std (seeds)")
    lo = max(0.0, 100 * float(np.min(np.array(means) - np.array(spreads))) - 5)
    ax.set_xlim(lo, 100)
    ax.set(title="Test accuracy", xlabel="test accuracy (%)", ylabel="preprocessing", yticks=y, yticklabels=names)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize="x-small")
    return fig
