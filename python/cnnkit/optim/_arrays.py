"""Checks on the arrays handed to the optimizers (done once per optimizer, not per step)."""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_param(name: str, p) -> np.ndarray:
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(p).__name__}")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {p.dtype}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray), "
                         f"got strides {p.strides}")
    if not p.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    return p


def check_list(name: str, xs, n: int | None = None, allow_none: bool = False) -> list:
    """``list(xs)``: TypeError unless xs is a list or sequence of arrays (a single ndarray, a
    string or an iterator is not); ValueError unless it has ``n`` entries (when given)."""
    if isinstance(xs, np.ndarray):
        raise TypeError(f"{name}: expected a list (or sequence) of arrays, one per parameter, got a "
                        f"single ndarray of shape {xs.shape}; wrap it in a list")
    if not hasattr(xs, "__len__") or not hasattr(xs, "__getitem__") or isinstance(xs, (str, bytes, dict)):
        raise TypeError(f"{name}: expected a list (or sequence) of arrays, got {type(xs).__name__}")
    xs = list(xs)
    if n is not None and len(xs) != n:
        raise ValueError(f"{name}: expected {n} entries (one per parameter), got {len(xs)}")
    return xs
