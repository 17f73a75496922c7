"""cnnkit as a backend for PyTorch on the CPU.

``cnnkit.torch`` is the one part of cnnkit that imports torch: autograd functions
(:mod:`cnnkit.torch.functional`), drop-in modules (:mod:`cnnkit.torch.nn`), optimizers
(:mod:`cnnkit.torch.optim`) and :func:`convert`, which swaps the supported modules of any
``torch.nn.Module`` tree for cnnkit's. Tensors cross the boundary without a copy: cnnkit reads
and writes the tensors' own memory through NumPy views. :func:`worker_init_fn` gives cnnkit's
augmentation a distinct, reproducible random stream in each DataLoader worker
(:mod:`cnnkit.torch.data`).
"""
from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("cnnkit.torch needs PyTorch (pip install torch); the rest of cnnkit does not") from exc

from . import data, functional, nn, optim
from ._convert import convert
from .data import seed_transforms, worker_init_fn

__all__ = ["functional", "nn", "optim", "convert", "data", "worker_init_fn", "seed_transforms"]
