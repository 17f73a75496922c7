"""Losses: softmax cross-entropy fused with log-softmax (one compiled pass, double per row)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._validate import accepts_dlpack, check_array, check_choice, check_real

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss:
    """``torch.nn.CrossEntropyLoss`` on (N, K) float32 logits.

    Targets are class indices (N,) (integers in [0, K), or ``ignore_index``) or soft rows (N, K)
    (probabilities). ``label_smoothing`` eps (off by default) mixes the target with the uniform
    distribution: ``t = (1 - eps) t + eps / K``, as torch does. ``weight`` (K,) rescales each
    class; ``ignore_index`` (default -100, torch's) marks labels that contribute nothing.
    ``reduction``: "mean" (over the batch; with class indices, over the targets' weights), "sum"
    or "none". ``forward`` returns the loss (a float, or (N,) float64 for "none") and computes
    the gradient with it; ``backward()`` returns that gradient, d loss / d logits (a reused
    float32 buffer). Unweighted losses run in one compiled pass; with ``weight`` or ignored
    labels the same formulas run in float64 NumPy.

    Parameters
    ----------
    weight : array_like (K,), optional
        Finite, non-negative class weights.
    ignore_index : int
        A class-index target with this value contributes nothing.
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> logits = np.zeros((2, 4), np.float32)
    >>> round(loss_fn(logits, np.array([1, 3])), 6)  # log(4)
    1.386294
    >>> loss_fn.backward()[0].tolist()  # (softmax - onehot) / N
    [0.125, -0.375, 0.125, 0.125]
    """

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        eps = check_real("label_smoothing", label_smoothing, lo=0.0, hi=1.0)
        check_choice("reduction", reduction, ("mean", "sum", "none"))
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
        if weight is not None:
            w = np.asarray(weight) if isinstance(weight, (np.ndarray, list, tuple)) else None
            if w is None or w.dtype.kind not in "iuf":
                raise TypeError(f"weight: expected (K,) real class weights, got {type(weight).__name__}"
                                f"{' ' + str(w.dtype) if w is not None else ''}")
            weight = w.astype(np.float64)
            if weight.ndim != 1 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError(f"weight: expected (K,) finite non-negative class weights, got {weight!r}")
        self.weight, self.ignore_index = weight, int(ignore_index)
        self.label_smoothing, self.reduction = eps, reduction
        self._grad: np.ndarray | None = None
        self._soft: np.ndarray | None = None

    @accepts_dlpack
    def forward(self, logits: np.ndarray, target: np.ndarray) -> float | np.ndarray:
        """The loss of ``logits`` against ``target``; its gradient is kept for :meth:`backward`.

        Parameters
        ----------
        logits : float32 ndarray (N, K)
        target : ndarray
            Class indices (N,) (integers in [0, K) or ``ignore_index``) or soft targets (N, K)
            (floats; rows of probabilities).

        Returns
        -------
        float or float64 ndarray (N,)
            The reduced loss, or the per-row losses with ``reduction="none"``.

        Raises
        ------
        TypeError
            Logits that are not a float32 (N, K) array; targets of another kind.
        ValueError
            Class indices out of range, or targets / weights of the wrong size.
        """
        check_array("logits", logits, dtypes=(np.float32,), ndim=2, what="(N, K)")
        N, K = logits.shape
        target = np.asarray(target)
        labels = soft = None
        if target.ndim == 1 and target.dtype.kind in "iu":
            if target.shape[0] != N:
                raise ValueError(f"target: expected {N} labels (one per logits row), got {target.shape[0]}")
            lo = int(np.minimum.reduce(target)) if N else 0
            hi = int(np.maximum.reduce(target)) if N else -1
            if 0 <= lo and hi < K and not lo <= self.ignore_index <= hi:
                all_kept = True  # every label a class index, none ignore_index (the common case)
            else:
                kept = target != self.ignore_index
                if N and kept.any() and (target[kept].min() < 0 or target[kept].max() >= K):
                    raise ValueError(f"target: class indices must lie in [0, {K}) (or be ignore_index="
                                     f"{self.ignore_index}), got {target[kept].min()}..{target[kept].max()}")
                all_kept = bool(kept.all())
            labels = np.ascontiguousarray(target, dtype=np.int64)
        elif target.ndim == 2 and target.dtype.kind == "f":
            if target.shape != (N, K):
                raise ValueError(f"target: expected soft targets of shape {(N, K)}, got {target.shape}")
            if self._soft is None or self._soft.shape != (N, K):
                self._soft = np.empty((N, K), np.float32)
            eps = self.label_smoothing
            np.multiply(target, 1.0 - eps, out=self._soft, casting="unsafe")
            self._soft += np.float32(eps / K)
            soft = self._soft
        else:
            raise TypeError(f"target: expected integer class indices (N,) or float soft targets (N, K), got "
                            f"dtype {target.dtype} shape {target.shape}")
        if self.weight is not None and self.weight.shape != (K,):
            raise ValueError(f"weight: expected {K} class weights (one per logit), got {self.weight.shape[0]}")
        if self._grad is None or self._grad.shape != (N, K):
            self._grad = np.empty((N, K), np.float32)
        if self.weight is not None or (labels is not None and not all_kept):
            return self._general(logits, labels, target if labels is None else None)
        scale = 1.0 / N if self.reduction == "mean" and N else 1.0
        per = _core.softmax_xent(np.ascontiguousarray(logits), labels, soft, N, K,
                                 self.label_smoothing if labels is not None else 0.0, self._grad, scale)
        if self.reduction == "none":
            return per
        total = float(np.add.reduce(per))  # (np.sum's reduction, without its Python wrapper)
        return total / N if self.reduction == "mean" and N else total

    def _general(self, logits, labels, soft):
        """Weighted and/or ignored targets, torch's formulas in float64: with per-row coefficients
        a (labels: (1 - eps) w[y] onehot(y) + (eps/K) w; soft: w t with t smoothed), the row loss is
        -sum_k a_k log p_k and its gradient p sum(a) - a; "mean" divides by the sum of w[y] over
        the kept labels (soft targets: by N)."""
        N, K = logits.shape
        z = logits.astype(np.float64)
        logp = z - z.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        w = np.ones(K) if self.weight is None else self.weight
        eps = self.label_smoothing
        if labels is not None:
            kept = labels != self.ignore_index
            safe = np.where(kept, labels, 0)
            a = np.zeros((N, K))
            a[np.arange(N), safe] = (1.0 - eps) * w[safe]
            a += (eps / K) * w[None, :]
            a[~kept] = 0.0
            divisor = float(np.sum(w[safe][kept])) if self.reduction == "mean" else 1.0
        else:
            t = np.asarray(soft, dtype=np.float64) * (1.0 - eps) + eps / K
            a = t * w[None, :]
            divisor = float(N) if self.reduction == "mean" else 1.0
        per = -(a * logp).sum(axis=1)
        grad = np.exp(logp) * a.sum(axis=1, keepdims=True) - a
        out = self._grad
        assert out is not None  # allocated by forward
        with np.errstate(invalid="ignore", divide="ignore"):
            out[...] = grad / divisor if divisor else np.nan
        if self.reduction == "none":
            return per
        total = float(per.sum())
        if self.reduction == "sum":
            return total
        return total / divisor if divisor else float("nan")

    __call__ = forward

    def backward(self) -> np.ndarray:
        """The gradient of the last :meth:`forward`'s loss with respect to its logits.

        Returns
        -------
        float32 ndarray (N, K)
            d loss / d logits (a buffer reused by the next forward of the same shape).

        Raises
        ------
        ValueError
            No forward yet.
        """
        if self._grad is None:
            raise ValueError("backward: call forward first")
        return self._grad
