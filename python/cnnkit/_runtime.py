"""Build facts, the thread count and the ISA level."""
from __future__ import annotations

import numbers

from . import _core

__all__ = ["build_info", "set_num_threads", "get_num_threads"]


def build_info() -> dict:
    """What was compiled and what runs now.

    Returns a dict with ``version``, ``git_commit`` (of the build), ``compiler``,
    ``isa_compiled`` (levels built),
    ``isa_supported`` (best level this CPU runs), ``isa`` (level in use; ``CNNKIT_ISA`` lowers it),
    ``openmp``, ``num_threads``, ``cuda_compiled`` and ``cuda_devices``.

    Returns
    -------
    dict
        The keys above (a fresh dict on every call).

    Examples
    --------
    >>> import cnnkit
    >>> info = cnnkit.build_info()
    >>> info["isa"] in info["isa_compiled"], info["num_threads"] == cnnkit.get_num_threads()
    (True, True)
    """
    info = dict(_core.build_facts())
    info["isa_compiled"] = list(info["isa_compiled"])
    info["isa_supported"] = _core.isa_supported()
    info["isa"] = _core.isa_active()
    info["num_threads"] = _core.get_num_threads()
    info["cuda_devices"] = int(_core.cuda_device_count()) if info["cuda_compiled"] else 0
    return info


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads every cnnkit kernel uses (n >= 1).

    Results do not depend on it (reductions run in fixed blocks combined in a fixed order).

    Parameters
    ----------
    n : int >= 1

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n < 1``.

    Examples
    --------
    >>> import cnnkit
    >>> before = cnnkit.get_num_threads()
    >>> cnnkit.set_num_threads(1)
    >>> cnnkit.get_num_threads()
    1
    >>> cnnkit.set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an int >= 1, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of OpenMP threads cnnkit kernels use.

    Returns
    -------
    int

    Examples
    --------
    >>> import cnnkit
    >>> cnnkit.get_num_threads() >= 1
    True
    """
    return int(_core.get_num_threads())


def _set_isa(name: str) -> None:
    """Lower (or restore) the ISA level the kernels dispatch to (for tests)."""
    _core.set_isa(name)
