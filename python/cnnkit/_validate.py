"""Argument checks shared by every subpackage: each raises TypeError or ValueError naming the
argument, what was expected and what was given."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

__all__ = ["is_real", "check_real", "check_int", "check_bool"]


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_real(name: str, value: Any, *, lo: Optional[float] = None, hi: Optional[float] = None,
               lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> float:
    """``float(value)``; TypeError unless a real number; ValueError if NaN, infinite (unless
    ``finite=False``) or outside the interval ``lo``..``hi`` (open ends as flagged)."""
    if type(value) is float:  # fast path for the common case (no ABC checks, no message)
        v = value
        if (v == v and (not finite or v - v == 0.0)
                and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi))):
            return v
    lo_s = "-inf" if lo is None else repr(float(lo))
    hi_s = "inf" if hi is None else repr(float(hi))
    interval = (("(" if lo_open or lo is None else "[") + f"{lo_s}, {hi_s}"
                + (")" if hi_open or hi is None else "]"))
    what = f"{'a finite' if finite else 'a'} real number in {interval}"
    if not is_real(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = not math.isnan(v) and (math.isfinite(v) or not finite)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def check_int(name: str, value: Any, minimum: int, what: str) -> int:
    """``int(value)``; TypeError unless an integer (not bool), ValueError below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)
