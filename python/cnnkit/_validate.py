"""Argument checks shared by every subpackage: each raises TypeError or ValueError naming the
argument, what was expected and what was given."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["is_real", "check_real", "check_int", "check_bool", "check_pair", "check_choice",
           "check_shape", "check_subset", "check_interval", "check_reals", "as_reals",
           "check_layout", "check_seed", "check_rng", "check_array", "check_float_array",
           "check_u8_images", "check_out", "renamed_kwargs", "LAYOUTS", "FLOAT_DTYPES"]


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
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = not math.isnan(v) and (math.isfinite(v) or not finite)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def check_int(name: str, value: Any, minimum: int, what: str) -> int:
    """``int(value)``; TypeError unless an integer (not bool), ValueError below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


# ---- shared checks for the subpackages (conv, norm, nn, augment, optim) ----------------------

LAYOUTS = ("NCHW", "NHWC")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _got(value: Any) -> str:
    """How a wrong value is shown in a message: its type, and a short repr."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}"
    r = repr(value)
    return f"{type(value).__name__} {r if len(r) <= 80 else r[:77] + '...'}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_pair(name: str, value: Any, minimum: int, *, scalar_ok: bool = True) -> tuple:
    """``(a, b)`` from an int or a pair of ints (tuple or list); TypeError for anything else (a
    bool, a float, a string; an int too when not ``scalar_ok``), ValueError for a pair of the
    wrong length or values below ``minimum``."""
    what = f"an int >= {minimum} or a pair of them" if scalar_ok else f"a pair of ints >= {minimum}"
    if not scalar_ok and not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected {what}, got {_got(value)}")
        vals = tuple(value)
    else:
        vals = (value, value)
    for v in vals:
        if not _is_int(v):
            raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    if min(vals) < minimum:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(vals[0]), int(vals[1])


def check_interval(name: str, value: Any, *, lo: Optional[float] = None, hi: Optional[float] = None,
                   lo_open: bool = False) -> tuple:
    """``(a, b)`` from a pair of finite real numbers with ``a <= b``, both in ``lo``..``hi``
    (``lo`` excluded when ``lo_open``)."""
    bounds = (f" in {'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
    what = f"a pair (min, max) of finite numbers with min <= max{bounds}"
    if not isinstance(value, (tuple, list, np.ndarray)) or len(value) != 2 or not all(is_real(v) for v in value):
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    a, b = float(value[0]), float(value[1])
    ok = math.isfinite(a) and math.isfinite(b) and a <= b
    if ok and lo is not None:
        ok = a > lo if lo_open else a >= lo
    if ok and hi is not None:
        ok = b <= hi
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return a, b


def as_reals(name: str, value: Any, what: str = "a number or an array of numbers") -> np.ndarray:
    """``value`` (a real number, or a nested sequence or array of them) as a float64 array;
    TypeError for strings, bools, complex numbers and other objects."""
    if isinstance(value, np.ndarray):
        a = value
    elif isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    else:
        try:
            a = np.asarray(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected {what}, got {_got(value)}") from None
    if a.dtype.kind not in "iuf":
        got = _got(value) if a.dtype.kind in "OUS" else f"dtype {a.dtype}"
        raise TypeError(f"{name}: expected {what}, got {got}")
    return a.astype(np.float64)


def check_reals(name: str, value: Any) -> tuple:
    """A non-empty sequence (tuple, list or 1-D array) of finite real numbers, as a tuple of floats."""
    what = "a non-empty sequence of finite numbers"
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
        value = value.tolist()
    if not isinstance(value, (tuple, list)) or not all(is_real(v) for v in value):
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    vals = tuple(float(v) for v in value)
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return vals


def check_shape(name: str, value: Any, ndim: int, what: str = "") -> tuple:
    """A shape: a tuple or list of ``ndim`` non-negative ints (TypeError for another type)."""
    desc = f"a shape of {ndim} non-negative ints" + (f" {what}" if what else "")
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise TypeError(f"{name}: expected {desc}, got {_got(value)}")
    if len(value) != ndim or min(value, default=0) < 0:
        raise ValueError(f"{name}: expected {desc}, got {tuple(value)}")
    return tuple(int(v) for v in value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``: TypeError when its type is none of the choices'
    types (for example a number where names are expected), ValueError otherwise."""
    types_ = tuple({type(c) for c in choices})
    if not isinstance(value, types_):
        raise TypeError(f"{name}: expected one of {choices}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_subset(name: str, value: Any, choices: tuple) -> tuple:
    """A name from ``choices`` or a sequence of them, as a tuple (TypeError for anything that is
    not a string or a list/tuple/set of strings, ValueError for an unknown name)."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (tuple, list, set, frozenset)) or not all(isinstance(v, str) for v in items):
        raise TypeError(f"{name}: expected a subset of {choices}, got {_got(value)}")
    bad = [v for v in items if v not in choices]
    if bad:
        raise ValueError(f"{name}: expected a subset of {choices}, got unknown {bad[0]!r}")
    return tuple(items)


def check_layout(value: Any, name: str = "layout", choices: tuple = LAYOUTS) -> str:
    """A layout name, one of ``choices`` (default "NCHW", "NHWC")."""
    return check_choice(name, value, choices)


def check_seed(name: str, value: Any) -> Any:
    """A seed for ``numpy.random.default_rng``: None, an int >= 0, a ``numpy.random.SeedSequence``
    or a ``numpy.random.Generator`` (returned as it is)."""
    if value is None or isinstance(value, (np.random.SeedSequence, np.random.Generator)):
        return value
    what = "None, an int >= 0, a numpy.random.SeedSequence or Generator"
    if not _is_int(value):
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    if value < 0:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def check_rng(name: str, value: Any, *, allow_none: bool = False) -> Any:
    """A ``numpy.random.Generator`` (or None when ``allow_none``: returned as it is)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, np.random.Generator):
        what = "a numpy.random.Generator" + (" or None" if allow_none else "")
        raise TypeError(f"{name}: expected {what}, got {_got(value)}")
    return value


def _dtype_names(dtypes: Any) -> str:
    names = [str(np.dtype(d)) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_array(name: str, a: Any, *, dtypes: Any = None, ndim: Any = None, contiguous: bool = False,
                writeable: bool = False, what: str = "") -> np.ndarray:
    """``a`` if it is a numpy.ndarray with a native dtype in ``dtypes`` (TypeError otherwise),
    ``ndim`` dimensions (an int or a tuple of allowed counts), C-contiguous and writeable when
    asked (ValueError otherwise). ``what`` describes the expected shape, for messages."""
    def kind() -> str:  # the message is built only when needed: this check runs on every call
        return (("a " + _dtype_names(dtypes) + " numpy.ndarray") if dtypes else "a numpy.ndarray") + \
            (f" {what}" if what else "")

    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected {kind()}, got {_got(a)}")
    if dtypes is not None and (a.dtype not in dtypes or not a.dtype.isnative):
        raise TypeError(f"{name}: expected {kind()}, got dtype {a.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            dims = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name}: expected a {dims} array{' ' + what if what else ''}, got shape {a.shape}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (np.ascontiguousarray), got strides {a.strides}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    return a


def check_float_array(name: str, a: Any, ndim: Any = None, what: str = "") -> np.ndarray:
    """A float32 or float64 array (``check_array`` with those dtypes)."""
    return check_array(name, a, dtypes=FLOAT_DTYPES, ndim=ndim, what=what)


def check_out(name: str, out: Any, shape: Any, dtype: Any, inputs: Any = ()) -> np.ndarray:
    """An ``out=`` buffer: an ndarray of exactly this shape and dtype, C-contiguous, writeable and
    sharing no memory with ``inputs``."""
    dtype = np.dtype(dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a {dtype} numpy.ndarray of shape {tuple(shape)}, got {_got(out)}")
    if out.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {out.strides}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    for a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{name}: expected an array not overlapping the inputs, got one that does")
    return out


def check_u8_images(name: str, images: Any, *, colour: bool = False, min_hw: int = 1) -> np.ndarray:
    """uint8 NHWC images ``(N, H, W, C)`` or one ``(H, W, C)`` image with H, W >= ``min_hw`` and
    C >= 1 (N may be 0). ``colour``: C must be 1 or 3, so an NCHW batch (or a CHW image), which
    read as NHWC would come back scrambled without an error, is refused with a hint."""
    check_array(name, images, dtypes=(np.uint8,), ndim=(3, 4), what="(N, H, W, C) or (H, W, C)")
    if min(images.shape[-3:-1]) < min_hw or images.shape[-1] < 1:
        raise ValueError(f"{name}: expected H and W >= {min_hw} and C >= 1, got shape {images.shape}")
    C = images.shape[-1]
    if colour and C not in (1, 3):
        shape = tuple(images.shape)
        if len(shape) == 3:
            what, hint, first = ("HWC (H, W, C) with C in {1, 3} (a single uint8 image is HWC)",
                                 "transpose a CHW image with image.transpose(1, 2, 0)", shape[0])
        else:
            what, hint, first = ("NHWC (N, H, W, C) with C in {1, 3} (uint8 images are NHWC)",
                                 "transpose an NCHW batch with images.transpose(0, 2, 3, 1)", shape[1])
        raise ValueError(f"{name}: expected {what}, got shape {shape}"
                         + (f"; {hint}" if first in (1, 3) else ""))
    return images


def renamed_kwargs(**renames: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: keep old keyword spellings working for one release. ``renamed_kwargs(grad_out=
    "grad_output")`` maps a call's ``grad_out=`` to ``grad_output=`` with a DeprecationWarning
    naming both; giving both is a TypeError. Positional calls are untouched."""
    import functools
    import warnings

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= (deprecated) and {new}=")
                    warnings.warn(f"{fn.__name__}(): the keyword {old}= is deprecated (removed in the "
                                  f"next release); use {new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        inner.__renamed_kwargs__ = dict(renames)  # type: ignore[attr-defined]
        return inner
    return wrap
