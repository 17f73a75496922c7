"""Gradient clipping and non-finite checks over lists of arrays, fused and deterministic."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from .. import _core
from .._validate import accepts_dlpack, check_bool, check_real
from ._arrays import check_list

__all__ = ["clip_grad_norm_", "global_norm", "found_inf"]

# One array, or a list of arrays in which None entries (parameters without a gradient) are skipped.
Grads = Union[np.ndarray, Sequence[Optional[np.ndarray]]]


def _present(grads: Grads) -> list[np.ndarray]:
    if isinstance(grads, np.ndarray):
        return [grads]
    return [g for g in check_list("grads", grads) if g is not None]


def _norm_type(norm_type: Union[float, str]) -> float:
    if isinstance(norm_type, str) and norm_type == "inf":
        return math.inf
    v = check_real("norm_type", norm_type, finite=False)
    if not (v > 0):
        raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type!r}")
    return v


@accepts_dlpack
def global_norm(grads: Grads, norm_type: Union[float, str] = 2.0) -> float:
    """The ``norm_type``-norm of all elements of all arrays (None entries skipped).

    Summed in double over fixed blocks combined in order: the same bits at any thread count.

    Parameters
    ----------
    grads : ndarray, or list of ndarray or None
        float32 or float64 arrays of any shapes; None entries are skipped.
    norm_type : float or "inf", default 2.0
        The order p > 0 of the norm ``(sum |g|^p)^(1/p)``; ``inf`` (or ``"inf"``) is the max.

    Returns
    -------
    float
        The norm over every element of every array (0.0 for none).

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> cnnkit.optim.global_norm([np.array([3.0, 0.0]), None, np.array([4.0])])
    5.0
    """
    return float(_core.global_norm(_present(grads), _norm_type(norm_type)))


@accepts_dlpack
def clip_grad_norm_(grads: Grads, max_norm: float, norm_type: Union[float, str] = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``.

    Same semantics as ``torch.nn.utils.clip_grad_norm_``: ``coef = max_norm / (norm + 1e-6)``,
    clamped to 1, multiplies every gradient. Returns the norm before clipping.

    Parameters
    ----------
    grads : ndarray, or list of ndarray or None
        float32 or float64 gradients, scaled in place; None entries are skipped.
    max_norm : float
        The largest norm kept (>= 0).
    norm_type : float or "inf", default 2.0
        The order of the norm (see :func:`global_norm`).
    error_if_nonfinite : bool, default False
        Raise RuntimeError (before touching any gradient) if the norm is NaN or inf.

    Returns
    -------
    float
        The global norm before clipping.

    Raises
    ------
    RuntimeError
        If ``error_if_nonfinite`` and the norm is NaN or inf.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> g = [np.array([3.0, 4.0])]
    >>> cnnkit.optim.clip_grad_norm_(g, max_norm=1.0)
    5.0
    >>> np.round(g[0], 4)
    array([0.6, 0.8])
    """
    g = _present(grads)
    max_norm = check_real("max_norm", max_norm, lo=0.0, finite=False)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    total = float(_core.global_norm(g, _norm_type(norm_type)))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so "
                           "it cannot be clipped. Set error_if_nonfinite=False to scale anyway.")
    coef = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    _core.scale_(g, coef)
    return total


@accepts_dlpack
def found_inf(grads: Grads) -> bool:
    """True when any element of any array is inf or NaN (pass it to ``step(found_inf=...)``).

    Parameters
    ----------
    grads : ndarray, or list of ndarray or None
        float32 or float64 arrays; None entries are skipped.

    Returns
    -------
    bool
        Whether any element is inf or NaN.
    """
    return not _core.all_finite(_present(grads))
