"""Gradient clipping and non-finite checks over lists of arrays, fused and deterministic."""
from __future__ import annotations

import math

import numpy as np

from .. import _core
from .._validate import check_real

__all__ = ["clip_grad_norm_", "global_norm", "found_inf"]


def _present(grads):
    if isinstance(grads, np.ndarray):
        return [grads]
    return [g for g in grads if g is not None]


def _norm_type(norm_type) -> float:
    if isinstance(norm_type, str) and norm_type == "inf":
        return math.inf
    v = check_real("norm_type", norm_type, finite=False)
    if not (v > 0):
        raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type!r}")
    return v


def global_norm(grads, norm_type=2.0) -> float:
    """The ``norm_type``-norm of all elements of all arrays (None entries skipped).

    Summed in double over fixed blocks combined in order: the same bits at any thread count."""
    return float(_core.global_norm(_present(grads), _norm_type(norm_type)))


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False) -> float:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``.

    Same semantics as ``torch.nn.utils.clip_grad_norm_``: ``coef = max_norm / (norm + 1e-6)``,
    clamped to 1, multiplies every gradient. Returns the norm before clipping.

    Parameters
    ----------
    grads : list of ndarray (None entries are skipped), or one ndarray
    max_norm : float
    norm_type : float or "inf"
    error_if_nonfinite : bool
        Raise RuntimeError (before touching any gradient) if the norm is NaN or inf.
    """
    g = _present(grads)
    max_norm = check_real("max_norm", max_norm, lo=0.0, finite=False)
    total = float(_core.global_norm(g, _norm_type(norm_type)))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so "
                           "it cannot be clipped. Set error_if_nonfinite=False to scale anyway.")
    coef = min(max_norm / (total + 1e-6), 1.0) if not math.isnan(total) else math.nan
    _core.scale_(g, coef)
    return total


def found_inf(grads) -> bool:
    """True when any element of any array is inf or NaN (pass it to ``step(found_inf=...)``)."""
    return not _core.all_finite(_present(grads))
