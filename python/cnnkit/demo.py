"""``cnnkit demo``: train a small batch-normalised CNN on scikit-learn's bundled digits.

The digits (8x8, upscaled to 16x16) are split 75/25 per class; training batches go through a
seeded augmentation pipeline (pad-and-crop by 2 pixels, then normalization to float32 NCHW);
Adam with a cosine learning-rate schedule. The report folder
gets ``curves.png`` (loss and accuracy per epoch), ``summary.md`` and ``summary.json``. The same
seed gives the same numbers (every kernel is independent of the thread count).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from ._text import plain

MODELS = ("resnext", "resnet", "mobilenet")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnkit demo", description=plain(__doc__.splitlines()[0]))
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    p.add_argument("--model", choices=MODELS, default="resnext", help="architecture (default resnext)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer (default adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3; sgd 0.05)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=16, help="image side after upscaling (default 16)")
    p.add_argument("--out", default="cnnkit-report", help="report folder (default cnnkit-report/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="cnnkit threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build(model: str, size: int, seed: int) -> Any:
    """The demo's network.

    Parameters
    ----------
    model : {"resnext", "resnet", "mobilenet"}
        The architecture.
    size : int
        Image side (the builders work from 8 to 64 pixels).
    seed : int
        The initialization.

    Returns
    -------
    cnnkit.nn.Sequential
        1 input channel, 10 classes, batch norm.
    """
    from . import models
    kw: dict[str, Any] = dict(in_channels=1, num_classes=10, norm="batch", seed=seed)
    if model == "resnext":
        return models.resnext_small(widths=(32, 64, 128), groups=8, **kw)
    if model == "resnet":
        return models.resnet_small(widths=(16, 32, 64), **kw)
    return models.mobilenet_small(widths=(32, 64, 128, 128), **kw)


def _optimizer(name: str, params: list[np.ndarray], lr: Optional[float]) -> Any:
    from . import optim
    if name == "adam":
        return optim.Adam(params, lr=lr or 3e-3)
    if name == "adamw":
        return optim.AdamW(params, lr=lr or 3e-3, weight_decay=1e-4)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr or 1e-3)
    return optim.SGD(params, lr=lr or 0.05, momentum=0.9, nesterov=True)


def _plot(hist, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = np.arange(1, len(hist["epoch_loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, hist["epoch_loss"], "o-", label="train")
    if hist["val_loss"]:
        a.plot(ep, hist["val_loss"], "s-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.set_title("loss"), a.legend()
    b.plot(ep, hist["epoch_accuracy"], "o-", label="train")
    if hist["val_accuracy"]:
        b.plot(ep, hist["val_accuracy"], "s-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.set_title("accuracy"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: Optional[list[str]] = None) -> int:
    """``cnnkit demo``: train, evaluate and write the report (see the module docstring).

    Parameters
    ----------
    argv : list of str, optional
        Its command-line options (``--epochs``, ``--model``, ``--optimizer``, ``--out``, ...).

    Returns
    -------
    int
        The exit status.
    """
    ns = _parser().parse_args(argv)
    if ns.epochs < 1:
        print("cnnkit demo: --epochs must be at least 1", file=sys.stderr)
        return 2
    import cnnkit
    from . import augment, data, optim, train
    if ns.threads:
        cnnkit.set_num_threads(ns.threads)
    digits = data.load_digits(size=ns.size, as_uint8=True)
    train_set, test_set = data.train_test_split(digits, test_size=0.25, seed=ns.seed)
    norm = augment.Normalize(mean=(0.5,), std=(0.5,))
    pipeline = augment.Compose([augment.RandomCrop(padding=max(1, ns.size // 8)), norm], seed=ns.seed)
    train_loader = data.DataLoader(train_set, ns.batch_size, shuffle=True, drop_last=True, augment=pipeline,
                                   seed=ns.seed)
    test_loader = data.DataLoader(test_set, 512, shuffle=False, augment=norm)
    model = build(ns.model, ns.size, ns.seed)
    opt = _optimizer(ns.optimizer, model.parameters(), ns.lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ns.epochs)
    print(f"cnnkit demo: {ns.model} ({model.num_parameters():,} parameters) on digits {ns.size}x{ns.size}, "
          f"{len(train_set)} train / {len(test_set)} test, {ns.optimizer}, {ns.epochs} epochs, "
          f"{cnnkit.get_num_threads()} threads, seed {ns.seed}")
    t0 = time.perf_counter()
    hist = train.fit(model, opt, train_loader, epochs=ns.epochs, scheduler=sched, val_loader=test_loader,
                     progress=not ns.no_progress)
    seconds = time.perf_counter() - t0
    final = train.evaluate(model, test_loader)
    os.makedirs(ns.out, exist_ok=True)
    _plot(hist, os.path.join(ns.out, "curves.png"))
    summary = {
        "test_accuracy": final["accuracy"], "test_loss": final["loss"], "train_seconds": seconds,
        "epochs": len(hist["epoch_loss"]), "model": ns.model, "parameters": model.num_parameters(),
        "optimizer": ns.optimizer, "seed": ns.seed, "threads": cnnkit.get_num_threads(), "image_size": ns.size,
        "train_samples": len(train_set), "test_samples": len(test_set), "stopped": hist["stopped"],
        "epoch_loss": hist["epoch_loss"], "epoch_accuracy": hist["epoch_accuracy"],
        "test_accuracy_per_epoch": hist["val_accuracy"], "cnnkit_commit": cnnkit.build_info().get("git_commit"),
    }
    with open(os.path.join(ns.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    rows = "\n".join(f"| {i + 1} | {lo:.4f} | {ta:.4f} | {va:.4f} |" for i, (lo, ta, va) in
                     enumerate(zip(hist["epoch_loss"], hist["epoch_accuracy"], hist["val_accuracy"])))
    with open(os.path.join(ns.out, "summary.md"), "w") as f:
        f.write(f"# cnnkit demo\n\n{ns.model} ({model.num_parameters():,} parameters), {ns.optimizer}, "
                f"{ns.epochs} epochs, seed {ns.seed}, {cnnkit.get_num_threads()} threads.\n\n"
                f"**Test accuracy: {final['accuracy']:.4f}** ({len(test_set)} held-out digits), trained in "
                f"{seconds:.1f} s.\n\n![curves](curves.png)\n\n| epoch | train loss | train accuracy | test accuracy |\n"
                f"|---|---|---|---|\n{rows}\n")
    if hist["stopped"]:
        print(f"stopped early: {hist['stopped']}")
    print(f"test accuracy {final['accuracy']:.4f} after {seconds:.1f} s of training; report in {ns.out}/")
    return 0
