"""Argument checks shared by every subpackage: each raises TypeError or ValueError naming the
argument, what was expected and what was given."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, TypeVar, overload

import numpy as np

__all__ = ["is_real", "check_real", "check_int", "check_bool", "check_pair", "check_choice",
           "check_shape", "check_subset", "check_interval", "check_reals", "as_reals",
           "check_layout", "check_seed", "check_rng", "check_array", "check_float_array",
           "check_u8_images", "check_out", "renamed_kwargs", "LAYOUTS", "FLOAT_DTYPES",
           "as_array", "as_arrays", "accepts_dlpack", "dlpack_methods", "DLPACK_NOTE"]


def is_real(value: Any) -> bool:
    if type(value) is float or type(value) is int:  # (no ABC isinstance hook in the common case)
        return True
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
    if type(value) is not int and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)):
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
    if type(value) is int:  # (the common case, without the ABC's Python-level isinstance hook)
        return True
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


# ---- arrays from other frameworks (DLPack) -------------------------------------------------------
#
# Every public function that takes arrays is decorated with ``accepts_dlpack``: an argument that is
# not an ndarray but implements ``__dlpack__`` (a torch tensor, a JAX array on the CPU, ...) is
# turned into an ndarray view of the same memory with ``np.from_dlpack`` before the function's own
# checks run, so results, in-place updates and ``out=`` buffers land in the caller's memory.

# DLPack device types whose memory the CPU addresses directly: kDLCPU, kDLCUDAHost, kDLROCMHost
_HOST_DEVICES = (1, 3, 11)
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm",
                 13: "CUDA managed", 14: "oneAPI"}
# numpy >= 2.1 can be told never to copy (an exporter that cannot share its memory then fails)
_NO_COPY: dict[str, Any] = {"copy": False} if np.lib.NumpyVersion(np.__version__) >= "2.1.0" else {}

DLPACK_NOTE = ("Array arguments ({names}) may also be any CPU object implementing ``__dlpack__`` (a "
               "torch tensor, a JAX array on the CPU): they are read, and written when the function "
               "writes, in their own memory without a copy.")


def _on_host(value: Any) -> bool:
    """Whether an object with ``__dlpack__`` lives in memory the CPU addresses (no
    ``__dlpack_device__``: assumed so)."""
    if not hasattr(type(value), "__dlpack_device__"):
        return True
    return int(value.__dlpack_device__()[0]) in _HOST_DEVICES


def _kind(value: Any) -> str:
    t = type(value)
    return f"{t.__module__.split('.')[0]}.{t.__qualname__}"


def as_array(name: str, value: Any, *, device_ok: bool = False) -> Any:
    """``value`` as a NumPy view of its own memory when it is an object with ``__dlpack__`` in
    CPU memory (a torch tensor, a JAX array on the CPU); anything else (an ndarray included) is
    returned as it is, for the caller's checks.

    A torch tensor that requires grad is read through ``.detach()`` (the same memory; cnnkit's
    NumPy functions record no autograd graph: ``cnnkit.torch.functional`` does).

    Parameters
    ----------
    name : str
        The argument's name, for messages.
    value : object
        The argument.
    device_ok : bool, default False
        Return objects in device memory (CUDA, ...) as they are, for functions that take device
        arrays; otherwise they are a TypeError.

    Returns
    -------
    ndarray or object
        A view sharing ``value``'s memory (read-only when the exporter says so), or ``value``.
    """
    if isinstance(value, np.ndarray) or not hasattr(type(value), "__dlpack__"):
        return value
    if not _on_host(value):
        if device_ok:
            return value
        device = int(value.__dlpack_device__()[0])
        where = _DEVICE_NAMES.get(device, f"DLPack device type {device}")
        raise TypeError(f"{name}: expected an array in CPU memory (a numpy.ndarray or a CPU object with "
                        f"__dlpack__), got a {_kind(value)} in {where} memory; move it to the CPU first")
    try:
        try:
            return np.from_dlpack(value, **_NO_COPY)
        except BufferError:
            detach = getattr(value, "detach", None)  # a torch tensor that requires grad refuses export
            if detach is None:
                raise
            return np.from_dlpack(detach(), **_NO_COPY)
    except (BufferError, TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected an array NumPy can read through __dlpack__ without a copy, got "
                        f"a {_kind(value)} it cannot read ({exc})") from None


def as_arrays(name: str, value: Any, *, device_ok: bool = False) -> Any:
    """:func:`as_array` on ``value``, or on each entry of a list or tuple (a list is returned
    then, with the entries named ``name[i]``) or each value of a dict (a new dict); a container
    without foreign arrays is returned as it is.

    Parameters
    ----------
    name : str
        The argument's name, for messages.
    value : object
        The argument: an array, an object with ``__dlpack__``, or a list, tuple or dict of them.
    device_ok : bool, default False
        Passed to :func:`as_array`.

    Returns
    -------
    object
        ``value`` with every foreign CPU array replaced by its NumPy view.
    """
    if isinstance(value, (list, tuple)):
        first = next((v for v in value if hasattr(type(v), "__dlpack__") and not isinstance(v, np.ndarray)), None)
        if first is None or (device_ok and not _on_host(first)):
            return value  # nothing foreign, or device arrays for a function that runs them as they are
        return [as_array(f"{name}[{i}]", v, device_ok=device_ok) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not any(hasattr(type(v), "__dlpack__") and not isinstance(v, np.ndarray) for v in value.values()):
            return value
        return {k: as_array(f"{name}[{k!r}]", v, device_ok=device_ok) for k, v in value.items()}
    return as_array(name, value, device_ok=device_ok)


def _array_params(fn: Callable[..., Any]) -> tuple:
    """Names of ``fn``'s parameters annotated as arrays (or lists of them): the annotation, as
    written or through a module-level alias (``Labels = Optional[np.ndarray]``), mentions
    ``ndarray``, or is cnnkit's ``Arrays`` alias."""
    import inspect

    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.annotation is p.empty:
            continue
        text = p.annotation if isinstance(p.annotation, str) else repr(p.annotation)
        if text.isidentifier() and "ndarray" not in text:  # an alias: what it stands for
            text += " " + repr(getattr(inspect.unwrap(fn), "__globals__", {}).get(text, ""))
        if "ndarray" in text or "Arrays" in text:
            names.append(p.name)
    return tuple(names)


def _with_note(doc: Optional[str], names: tuple) -> Optional[str]:
    """``doc`` with :data:`DLPACK_NOTE` as the last paragraph before its first NumPy section."""
    import textwrap

    if not doc or "__dlpack__" in doc:
        return doc
    lines = doc.splitlines()
    indent = min((len(s) - len(s.lstrip()) for s in lines[1:] if s.strip()), default=0)
    pad = " " * indent
    note = DLPACK_NOTE.format(names=", ".join(f"``{n}``" for n in names))
    para = textwrap.wrap(note, width=max(40, 96 - indent))
    for i in range(1, len(lines) - 1):
        under = lines[i + 1].strip()
        if lines[i].strip() and len(under) >= 3 and set(under) == {"-"}:
            at = i
            while at > 1 and not lines[at - 1].strip():
                at -= 1
            return "\n".join(lines[:at] + [""] + [pad + s for s in para] + [""] + lines[i:])
    return doc.rstrip() + "\n\n" + "\n".join(pad + s for s in para) + "\n" + pad


_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def accepts_dlpack(fn: _F, *, names: Optional[tuple] = None, device_ok: bool = False) -> _F: ...


@overload
def accepts_dlpack(fn: None = None, *, names: Optional[tuple] = None,
                   device_ok: bool = False) -> Callable[[_F], _F]: ...


def accepts_dlpack(fn: Optional[Callable[..., Any]] = None, *, names: Optional[tuple] = None,
                   device_ok: bool = False) -> Any:
    """Decorator: the array arguments of ``fn`` accept any CPU object with ``__dlpack__``.

    Each argument named in ``names`` (default: every parameter annotated as an ndarray or a list
    of them) goes through :func:`as_arrays` before ``fn`` runs; ndarrays pass untouched. The
    docstring gains :data:`DLPACK_NOTE`, and the wrapper keeps the names in ``__dlpack_args__``.

    Parameters
    ----------
    fn : callable or class, optional
        The function or method (``@accepts_dlpack``), or a class (its ``__init__``, with the note
        in the class docstring); None to give options (``@accepts_dlpack(device_ok=True)``).
    names : tuple of str, optional
        The array parameters, when the annotations do not say.
    device_ok : bool, default False
        Pass device arrays through (the function runs them on the device).

    Returns
    -------
    callable
        The wrapped function (the class itself, changed in place; a decorator, when ``fn`` is
        None).
    """
    if fn is None:
        return lambda f: accepts_dlpack(f, names=names, device_ok=device_ok)
    if isinstance(fn, type):  # a class: its constructor
        return dlpack_methods(fn, ("__init__",))
    if hasattr(fn, "__dlpack_args__"):
        return fn
    import functools
    import inspect

    arrays = tuple(names) if names is not None else _array_params(fn)
    if not arrays:
        return fn
    params = list(inspect.signature(fn).parameters.values())
    where = [(n, next((i for i, p in enumerate(params) if p.name == n
                       and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)) for n in arrays]

    ndarray, none = np.ndarray, type(None)

    def foreign(v: Any) -> bool:
        if type(v) is dict:
            v = list(v.values())
        if type(v) is list or type(v) is tuple:
            kinds = set(map(type, v))  # one C-level pass over a long list of parameters
            kinds.discard(ndarray)
            kinds.discard(none)
            return any(hasattr(k, "__dlpack__") and not issubclass(k, ndarray) for k in kinds)
        return hasattr(type(v), "__dlpack__") and not isinstance(v, ndarray)

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:  # runs on every call: ndarrays and None leave at once
        n = len(args)
        for name, i in where:
            if i is not None and i < n:
                v = args[i]
                t = type(v)
                if t is not ndarray and t is not none and foreign(v):
                    args = args[:i] + (as_arrays(name, v, device_ok=device_ok),) + args[i + 1:]
            elif kwargs:
                v = kwargs.get(name)
                t = type(v)
                if t is not ndarray and t is not none and foreign(v):
                    kwargs[name] = as_arrays(name, v, device_ok=device_ok)
        return fn(*args, **kwargs)

    inner.__dlpack_args__ = arrays  # type: ignore[attr-defined]
    inner.__doc__ = _with_note(fn.__doc__, arrays)
    return inner


def dlpack_methods(cls: type, names: tuple) -> type:
    """Wrap the methods ``names`` that ``cls`` itself defines with :func:`accepts_dlpack`; a base
    class calls this from ``__init_subclass__`` so that every subclass (a user's own included)
    takes foreign arrays in those methods: the parameters annotated as arrays, or else (a user's
    unannotated ``forward(self, x)``) the first one. A wrapped ``__init__`` puts
    :data:`DLPACK_NOTE` in the class docstring, where the constructor's parameters are documented.

    Parameters
    ----------
    cls : type
        The class.
    names : tuple of str
        Method names (``"forward"``, ``"backward"``, ``"__call__"``, ...).

    Returns
    -------
    type
        ``cls``, changed in place.
    """
    import inspect

    for name in names:
        fn = vars(cls).get(name)
        if callable(fn) and not isinstance(fn, type):
            arrays = _array_params(fn)
            if not arrays and name != "__init__":  # an unannotated override: its first argument
                params = [p.name for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                arrays = tuple(params[1:2])
            wrapped = accepts_dlpack(fn, names=arrays) if arrays else fn
            setattr(cls, name, wrapped)
            if name == "__init__" and hasattr(wrapped, "__dlpack_args__"):
                cls.__doc__ = _with_note(cls.__doc__, wrapped.__dlpack_args__)
    return cls
