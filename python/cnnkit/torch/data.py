"""cnnkit augmentation inside ``torch.utils.data.DataLoader`` worker processes.

Each cnnkit transform draws from its own ``numpy.random.Generator``. A DataLoader pickles the
dataset, with its transforms and their generator states, into every worker, so without help all
workers replay the *same* random stream (each batch's augmentation repeats in the other workers),
and a transform made with ``seed=None`` is not reproducible from run to run either.

:func:`worker_init_fn` fixes both: passed as ``DataLoader(..., worker_init_fn=...)``, it reseeds
every cnnkit transform reachable from the worker's dataset from the seed that torch gives that
worker (``torch.utils.data.get_worker_info().seed``: the loader's base seed, drawn from torch's
generator when the iterator starts, plus the worker id). Workers then draw distinct streams, the
same ones again after the same ``torch.manual_seed`` (or the loader's ``generator=``), and new
ones each epoch. :func:`seed_transforms` does the reseeding for any object (a collate function
that augments whole batches, for instance).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._validate import check_int
from ..augment import Transform

__all__ = ["worker_init_fn", "seed_transforms"]

# containers and objects searched for transforms; anything else is a leaf
_LEAVES = (str, bytes, int, float, complex, bool, type(None), np.ndarray, np.generic, type,
           np.random.Generator, np.random.SeedSequence)
_MAX_DEPTH = 8


def _transforms(obj: Any) -> list[Transform]:
    """The cnnkit transforms reachable from ``obj`` in a fixed order (attributes in definition
    order, sequences in order, dict values in insertion order), each once; the search stops at a
    transform (a Compose reseeds its own children) and at ``_MAX_DEPTH`` levels."""
    found: list[Transform] = []
    seen: set[int] = set()

    def walk(o: Any, depth: int) -> None:
        if depth > _MAX_DEPTH or isinstance(o, _LEAVES) or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, Transform):
            found.append(o)
            return
        if isinstance(o, (list, tuple)):
            children: Any = o
        elif isinstance(o, dict):
            children = o.values()
        elif isinstance(o, functools.partial):
            children = (o.func, *o.args, *o.keywords.values())
        else:
            try:
                children = vars(o).values()
            except TypeError:  # no __dict__: a builtin, a tensor's storage, ...
                return
        for c in list(children):
            walk(c, depth + 1)

    walk(obj, 0)
    return found


def seed_transforms(obj: Any, seed: int) -> int:
    """Reseed every cnnkit transform reachable from ``obj`` from one seed.

    The transforms are found through attributes, lists, tuples, dict values and
    ``functools.partial`` arguments, in a fixed order; the i-th gets the i-th child of
    ``numpy.random.SeedSequence(seed)`` (a :class:`~cnnkit.augment.Compose` passes its child on
    to its own transforms), so the same ``obj`` and ``seed`` give the same streams.

    Parameters
    ----------
    obj : object
        A dataset, a collate function, a transform, or any object holding transforms.
    seed : int
        A seed >= 0 (in a DataLoader worker: ``torch.utils.data.get_worker_info().seed``).

    Returns
    -------
    int
        How many transforms were reseeded.

    Examples
    --------
    >>> from cnnkit import augment
    >>> from cnnkit.torch import seed_transforms
    >>> pipeline = {"train": augment.Compose([augment.RandomCrop(padding=2), augment.Normalize()])}
    >>> seed_transforms(pipeline, 123)
    1
    """
    seed = check_int("seed", seed, 0, "an int >= 0")
    found = _transforms(obj)
    for t, child in zip(found, np.random.SeedSequence(seed).spawn(len(found))):
        t.seed(child)
    return len(found)


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(..., worker_init_fn=cnnkit.torch.worker_init_fn)``: each worker reseeds the
    cnnkit transforms reachable from its copy of the dataset from its own torch seed.

    Workers thereby draw distinct augmentation streams that are reproducible from the torch seed
    (``torch.manual_seed`` or the loader's ``generator=``) and change from epoch to epoch. Call
    it from a worker_init_fn of your own to combine it with other per-worker setup, and use
    :func:`seed_transforms` for transforms the dataset does not hold (a collate function's).

    Parameters
    ----------
    worker_id : int
        The worker's index, as the DataLoader passes it (the seed already includes it).

    Returns
    -------
    None
        The transforms are reseeded in place.

    Raises
    ------
    RuntimeError
        When called outside a DataLoader worker process.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from cnnkit import augment
    >>> import cnnkit.torch
    >>> class Images(torch.utils.data.Dataset):
    ...     def __init__(self, images, transform):
    ...         self.images, self.transform = images, transform
    ...     def __len__(self):
    ...         return len(self.images)
    ...     def __getitem__(self, i):
    ...         return self.transform(self.images[i])
    >>> images = np.zeros((8, 8, 8, 3), np.uint8)
    >>> data = Images(images, augment.Compose([augment.RandomCrop(padding=2), augment.Normalize()]))
    >>> loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2,
    ...                                      worker_init_fn=cnnkit.torch.worker_init_fn)
    """
    import torch.utils.data

    check_int("worker_id", worker_id, 0, "an int >= 0")
    info = torch.utils.data.get_worker_info()
    if info is None:
        raise RuntimeError("worker_init_fn: expected to run in a torch DataLoader worker process "
                           "(get_worker_info() is None); use seed_transforms(obj, seed) elsewhere")
    seed_transforms(info.dataset, info.seed)
