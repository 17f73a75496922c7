"""Training loop, evaluation and checkpoints for :mod:`cnnkit.nn` models.

>>> from cnnkit import data, models, optim
>>> loader = data.DataLoader(data.load_digits().subset(slice(0, 64)), 32, seed=0)
>>> model = models.resnet_small(in_channels=1, num_classes=10, widths=(8, 16, 32), seed=0)
>>> history = fit(model, optim.Adam(model.parameters(), lr=3e-3), loader, epochs=1, progress=False)
>>> len(history["loss"]), len(history["epoch_loss"]), history["stopped"]
(2, 1, None)

``fit`` runs forward, loss, backward and one fused optimizer step per batch, with a tqdm
progress bar (``progress=False`` turns it off), and stops early, without crashing and without
applying the bad step, when the loss stops being finite (``history["stopped"]`` says where).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .nn import CrossEntropyLoss, Module
from .optim.optimizer import flatten_state_dict

__all__ = ["fit", "evaluate", "save_checkpoint", "load_checkpoint"]


Batches = Iterable[Tuple[np.ndarray, np.ndarray]]  # what a loader yields: (images, labels)


def _labels_of(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y if y.ndim == 1 else np.argmax(y, axis=1)


def evaluate(model: Module, loader: Batches, loss: Any = None) -> dict[str, Any]:
    """Mean loss and accuracy of ``model`` over ``loader`` in eval mode (the mode is restored).

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model; its ``forward`` gives (N, K) logits.
    loader : iterable of (x, y) batches (e.g. :class:`cnnkit.data.DataLoader`)
        Inputs and labels (class indices (N,) or soft rows (N, K)).
    loss : object with ``forward(logits, y) -> float``, optional
        Default :class:`cnnkit.nn.CrossEntropyLoss`.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float, "count": int}`` (means over the samples).

    Examples
    --------
    >>> from cnnkit import data, models, train
    >>> loader = data.DataLoader(data.load_digits().subset(slice(0, 40)), 20, shuffle=False)
    >>> model = models.resnet_small(in_channels=1, num_classes=10, widths=(8, 16, 32), seed=0)
    >>> result = train.evaluate(model, loader)
    >>> result["count"], 0.0 <= result["accuracy"] <= 1.0
    (40, True)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a cnnkit.nn.Module, got {type(model).__name__}")
    loss = CrossEntropyLoss() if loss is None else loss
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        for x, y in loader:
            logits = model.forward(x)
            n = len(x)
            total += loss.forward(logits, y) * n
            correct += int(np.sum(np.argmax(logits, axis=1) == _labels_of(y)))
            count += n
    finally:
        model.train(was_training)
    return {"loss": total / max(count, 1), "accuracy": correct / max(count, 1), "count": count}


def fit(model: Module, optimizer: Any, train_loader: Batches, *, epochs: int, loss: Any = None,
        scheduler: Optional[Any] = None, scheduler_interval: str = "epoch", val_loader: Optional[Batches] = None,
        callbacks: Sequence[Callable[[int, dict[str, Any]], Any]] = (), progress: bool = True) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` passes over ``train_loader``.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model, trained in place (left in training mode).
    optimizer : cnnkit.optim.Optimizer
        An optimizer over ``model.parameters()``; stepped once per batch.
    train_loader : iterable of (x, y) batches (e.g. :class:`cnnkit.data.DataLoader`)
        Re-iterated every epoch.
    epochs : int >= 0
        Passes over ``train_loader``.
    loss : object with ``forward``/``backward``, optional
        Default :class:`cnnkit.nn.CrossEntropyLoss`.
    scheduler : cnnkit.optim.lr_scheduler.LRScheduler, optional
        Stepped every epoch (``scheduler_interval="epoch"``) or every batch ("step").
    scheduler_interval : {"epoch", "step"}, default "epoch"
        When the scheduler steps.
    val_loader : iterable of (x, y) batches, optional
        Evaluated (:func:`evaluate`) after every epoch.
    callbacks : sequence of callables, default ()
        ``cb(epoch, history)`` called after every epoch; one returning True stops training.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    dict
        Per-step ``loss`` and ``lr``, per-epoch ``epoch_loss``, ``epoch_accuracy``, ``val_loss``,
        ``val_accuracy``, ``seconds`` (cumulative), and ``stopped`` (None, or why it stopped).

    Examples
    --------
    >>> from cnnkit import data, models, optim, train
    >>> loader = data.DataLoader(data.load_digits().subset(slice(0, 64)), 32, seed=0)
    >>> model = models.resnet_small(in_channels=1, num_classes=10, widths=(8, 16, 32), seed=0)
    >>> history = train.fit(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loader,
    ...                     epochs=2, progress=False)
    >>> len(history["loss"]), len(history["epoch_accuracy"]), history["stopped"]
    (4, 2, None)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a cnnkit.nn.Module, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval: expected 'epoch' or 'step', got {scheduler_interval!r}")
    loss = CrossEntropyLoss() if loss is None else loss
    hist: dict[str, Any] = {"loss": [], "lr": [], "epoch_loss": [], "epoch_accuracy": [], "val_loss": [], "val_accuracy": [],
            "seconds": [], "stopped": None}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        try:
            total = epochs * len(train_loader)  # type: ignore[arg-type]  # TypeError: no length
        except TypeError:
            total = None
        bar = tqdm(total=total, desc="train", unit="batch", leave=False)
    t0 = time.perf_counter()
    model.train()
    try:
        for epoch in range(epochs):
            tot, correct, count = 0.0, 0, 0
            for step, (x, y) in enumerate(train_loader):
                logits = model.forward(x)
                value = loss.forward(logits, y)
                if not math.isfinite(value):
                    hist["stopped"] = f"non-finite loss ({value}) at epoch {epoch}, batch {step}; the step was not applied"
                    break
                model.backward(loss.backward())
                optimizer.step(model.gradients())
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
                n = len(x)
                tot += value * n
                correct += int(np.sum(np.argmax(logits, axis=1) == _labels_of(y)))
                count += n
                hist["loss"].append(value)
                hist["lr"].append(float(optimizer.param_groups[0]["lr"]))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{value:.4f}")
            if hist["stopped"]:
                break
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            hist["epoch_loss"].append(tot / max(count, 1))
            hist["epoch_accuracy"].append(correct / max(count, 1))
            if val_loader is not None:
                ev = evaluate(model, val_loader, loss)
                hist["val_loss"].append(ev["loss"])
                hist["val_accuracy"].append(ev["accuracy"])
            hist["seconds"].append(time.perf_counter() - t0)
            if any(cb(epoch, hist) for cb in callbacks):
                hist["stopped"] = f"a callback stopped training after epoch {epoch}"
                break
    finally:
        if bar is not None:
            bar.close()
    return hist


def save_checkpoint(path: Union[str, os.PathLike], model: Module, optimizer: Optional[Any] = None, *,
                    scheduler: Optional[Any] = None, loader: Optional[Any] = None, epoch: int = 0,
                    **extra: Any) -> None:
    """Model state, optimizer state, the scheduler's and loader's state (when given), ``epoch`` and
    any JSON-able ``extra`` values in one ``.npz`` (no pickling); :func:`load_checkpoint` resumes
    from it bit for bit.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file to write.
    model : cnnkit.nn.Module
        Its ``state_dict()`` is saved.
    optimizer : cnnkit.optim.Optimizer, optional
        Its state (:func:`cnnkit.optim.flatten_state_dict` form).
    scheduler : cnnkit.optim.lr_scheduler.LRScheduler, optional
        Its ``state_dict()`` (JSON).
    loader : object with ``state_dict()``, optional
        E.g. :class:`cnnkit.data.DataLoader` (its random state).
    epoch : int, default 0
        Stored in the metadata.
    **extra
        JSON-able values stored beside the state.

    Returns
    -------
    None

    Examples
    --------
    >>> import os, tempfile
    >>> from cnnkit import models, optim, train
    >>> model = models.resnet_small(in_channels=1, num_classes=10, widths=(8, 16, 32), seed=0)
    >>> opt = optim.Adam(model.parameters())
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     train.save_checkpoint(os.path.join(tmp, "ckpt.npz"), model, opt, epoch=3, note="demo")
    ...     meta = train.load_checkpoint(os.path.join(tmp, "ckpt.npz"), model, opt)
    >>> meta["epoch"], meta["extra"]
    (3, {'note': 'demo'})
    """
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in flatten_state_dict(optimizer.state_dict()).items()})
    meta = {"epoch": int(epoch), "extra": extra}
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if loader is not None and hasattr(loader, "state_dict"):
        meta["loader"] = loader.state_dict()
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))
    np.savez(path, **arrays)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def load_checkpoint(path: Union[str, os.PathLike], model: Module, optimizer: Optional[Any] = None, *,
                    scheduler: Optional[Any] = None, loader: Optional[Any] = None) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its metadata (``epoch``, ``extra``).

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file :func:`save_checkpoint` wrote.
    model : cnnkit.nn.Module
        Loaded in place (same architecture as saved).
    optimizer : cnnkit.optim.Optimizer, optional
        Loaded in place when given.
    scheduler : cnnkit.optim.lr_scheduler.LRScheduler, optional
        Loaded when given and saved.
    loader : object with ``load_state_dict()``, optional
        Its random state restored when given and saved.

    Returns
    -------
    dict
        The metadata: ``epoch`` (int), ``extra`` (dict), and ``scheduler`` / ``loader`` states when
        they were saved.
    """
    with np.load(path, allow_pickle=False) as f:
        files = {k: f[k] for k in f.files}
    meta = json.loads(str(files.pop("meta")))
    model.load_state_dict({k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")})
    if optimizer is not None:
        optimizer.load_state_dict({k[len("optim/"):]: v for k, v in files.items() if k.startswith("optim/")})
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if loader is not None and "loader" in meta and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(meta["loader"])
    return meta


def __dir__():
    """The public names only (``__all__``), not the imported modules (np, math, ...)."""
    return sorted(__all__)
