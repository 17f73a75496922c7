"""Mini-batch iteration over a dataset, with an optional per-batch augmentation pipeline."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

from .._validate import check_bool, check_int
from .datasets import ArrayDataset, Seed, _rng

__all__ = ["DataLoader"]


def _generators(obj: Any) -> list[np.random.Generator]:
    """The numpy Generators of an augmentation pipeline (a transform's ``rng``, recursively
    through ``transforms`` lists), in a fixed order."""
    out: list[np.random.Generator] = []
    if obj is None:
        return out
    g = getattr(obj, "rng", None)
    if isinstance(g, np.random.Generator):
        out.append(g)
    for t in getattr(obj, "transforms", None) or []:
        out.extend(_generators(t))
    return out


def _takes_labels(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has a parameter named ``labels`` (every cnnkit.augment Transform does)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    p = params.get("labels")
    return p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class DataLoader:
    """Mini-batches ``(images, labels)`` from a dataset, reshuffled every epoch.

    ``batch_size=1`` gives stochastic gradient descent, ``batch_size=len(dataset)`` full-batch
    gradient descent, anything between mini-batch SGD.

    Parameters
    ----------
    dataset : ArrayDataset, or any object with ``__len__`` and ``__getitem__``
        Other datasets are indexed with an int64 index array and must return ``(images, labels)``.
    batch_size : int >= 1
        Larger than the dataset gives one (short) batch, or none with ``drop_last``.
    shuffle : bool
        Draw a new permutation at the start of every epoch; False keeps the dataset's order.
    drop_last : bool
        Drop the final batch when it is shorter than ``batch_size``.
    augment : callable, optional
        Applied to each batch's images, after gathering. When it has a parameter named
        ``labels`` (every :mod:`cnnkit.augment` transform and ``Compose`` has), it is called as
        ``augment(images, labels=labels)`` and must return ``(images, labels)``, so label-mixing
        transforms (MixUp, CutMix) can change the labels; otherwise as ``augment(images)``
        returning the images. Its randomness is its own: seed the pipeline itself
        (``Compose(..., seed=0)``).
    seed : int, SeedSequence, Generator or None
        Seeds the loader's own Generator: the same seed gives the same sequence of epochs, and
        each epoch's order differs from the last. None: fresh OS entropy.

    Yields
    ------
    images : ndarray, (B, ...)
        The dataset's images, as stored or as ``augment`` returns them; B = ``batch_size``
        except possibly for the last batch.
    labels : ndarray, (B,) int64 or (B, K) float

    Notes
    -----
    Every batch is a freshly allocated C-contiguous array (a gather, or a copy of a slice when
    not shuffling): no buffer is reused between batches, so a caller may keep, or modify in
    place, a batch without affecting the dataset or later batches. This costs one allocation
    per batch, which a buffer pool could save, at the price of batches that change under the
    caller's feet.

    uint8 NHWC datasets (``load_digits(as_uint8=True)``) are what :mod:`cnnkit.augment`'s image
    transforms take; end the pipeline with :class:`cnnkit.augment.Normalize` (one mean and std
    per channel) to get float32 NCHW network inputs.

    Examples
    --------
    >>> from cnnkit import augment as A
    >>> from cnnkit.data import DataLoader, load_digits
    >>> ds = load_digits(size=16, as_uint8=True)
    >>> pipe = A.Compose([A.RandomCrop(padding=2), A.Normalize(mean=(0.5,), std=(0.5,))], seed=0)
    >>> loader = DataLoader(ds, batch_size=64, augment=pipe, seed=0)
    >>> len(loader)
    29
    >>> x, y = next(iter(loader))
    >>> x.shape, x.dtype, y.dtype
    ((64, 1, 16, 16), dtype('float32'), dtype('int64'))
    """

    def __init__(self, dataset: Any, batch_size: int = 32, *, shuffle: bool = True, drop_last: bool = False,
                 augment: Optional[Callable[..., Any]] = None, seed: Seed = None) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset: expected an ArrayDataset or an object with __len__ and __getitem__, "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = check_int("batch_size", batch_size, 1, "a positive int")
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment: expected None or a callable (e.g. a cnnkit.augment.Compose), "
                            f"got {type(augment).__name__}")
        self.augment: Any = augment
        self._augment_labels = augment is not None and _takes_labels(augment)
        self.rng = _rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """The random state of the loader and of its augmentation pipeline (JSON-able), so a
        checkpointed run resumes with the same batches and the same augmentations.

        Returns
        -------
        dict
            ``"rng"``: the loader's bit-generator state; ``"augment"``: a list with the state of
            each Generator of the pipeline, in a fixed order.
        """
        return {"rng": self.rng.bit_generator.state,
                "augment": [g.bit_generator.state for g in _generators(self.augment)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the random state saved by :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            From :meth:`state_dict` of a loader with an augmentation pipeline of the same shape.

        Raises
        ------
        ValueError
            If the number of augmentation Generators differs (nothing is changed then).
        """
        gens = _generators(self.augment)
        if len(state.get("augment", [])) != len(gens):
            raise ValueError(f"state: expected {len(gens)} augmentation generator states, got "
                             f"{len(state.get('augment', []))}")
        self.rng.bit_generator.state = state["rng"]
        for g, st in zip(gens, state["augment"]):
            g.bit_generator.state = st

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __repr__(self) -> str:
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, augment={self.augment!r})")

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        # the epoch's order is drawn now, not at the first next(), so epochs follow iter() calls
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else None
        return self._batches(n, order)

    def _batches(self, n, order):
        bs = self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        for a in range(0, stop, bs):
            b = min(a + bs, n)
            x, y = self._gather(a, b, order)
            if self.augment is not None:
                x, y = self._apply_augment(x, y)
            yield x, y

    def _gather(self, a, b, order):
        ds = self.dataset
        if isinstance(ds, ArrayDataset):
            if order is None:
                return ds.images[a:b].copy(), ds.labels[a:b].copy()
            idx = order[a:b]
            return np.take(ds.images, idx, axis=0), np.take(ds.labels, idx, axis=0)
        idx = np.arange(a, b, dtype=np.int64) if order is None else order[a:b]
        res = ds[idx]
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"dataset: expected dataset[indices] to return (images, labels), got "
                            f"{type(res).__name__}")
        x, y = res
        return np.array(x, order="C"), np.array(y, order="C")

    def _apply_augment(self, x, y):
        if self._augment_labels:
            res = self.augment(x, labels=y)
            if not (isinstance(res, tuple) and len(res) == 2):
                raise TypeError(f"augment: called with labels=, expected it to return (images, labels), got "
                                f"{type(res).__name__}")
            x, y = res
        else:
            x = self.augment(x)
            if isinstance(x, tuple):
                raise TypeError("augment: returned a tuple but has no 'labels' parameter; give it one to "
                                "return (images, labels), or return the images only")
        if len(x) != len(y):
            raise ValueError(f"augment: returned {len(x)} images for {len(y)} labels")
        return x, y
