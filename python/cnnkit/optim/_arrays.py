"""Checks on the arrays handed to the optimizers (done once per optimizer, not per step)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import FLOAT_DTYPES, check_array


def check_param(name: str, p: Any) -> np.ndarray:
    return check_array(name, p, dtypes=FLOAT_DTYPES, contiguous=True, writeable=True)


def check_list(name: str, xs: Any, n: int | None = None, allow_none: bool = False) -> list:
    """``list(xs)``: TypeError unless xs is a list or sequence of arrays (a single ndarray, a
    string or an iterator is not); ValueError unless it has ``n`` entries (when given)."""
    if isinstance(xs, np.ndarray):
        raise TypeError(f"{name}: expected a list (or sequence) of arrays, one per parameter, got a "
                        f"single ndarray of shape {xs.shape}; wrap it in a list")
    if not hasattr(xs, "__len__") or not hasattr(xs, "__getitem__") or isinstance(xs, (str, bytes, dict)):
        raise TypeError(f"{name}: expected a list (or sequence) of arrays, got {type(xs).__name__}")
    xs = list(xs)
    if n is not None and len(xs) != n:
        raise ValueError(f"{name}: expected {n} entries (one per entry of params), got {len(xs)}")
    return xs
