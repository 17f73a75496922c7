"""Losses: softmax cross-entropy fused with log-softmax (one compiled pass, double per row)."""
from __future__ import annotations

import numpy as np

from .. import _core

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss:
    """``torch.nn.CrossEntropyLoss`` on (N, K) float32 logits.

    Targets are class indices (N,) (integers in [0, K)) or soft rows (N, K) (probabilities).
    ``label_smoothing`` eps (off by default) mixes the target with the uniform distribution:
    ``t = (1 - eps) t + eps / K``, as torch does. ``reduction``: "mean" (over the batch), "sum"
    or "none". ``forward`` returns the loss (a float, or (N,) float64 for "none") and computes
    the gradient with it; ``backward()`` returns that gradient, d loss / d logits (a reused
    float32 buffer).
    """

    def __init__(self, label_smoothing=0.0, reduction="mean"):
        eps = float(label_smoothing)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
        self.label_smoothing, self.reduction = eps, reduction
        self._grad = None
        self._soft = None

    def forward(self, logits, target):
        if not isinstance(logits, np.ndarray) or logits.dtype != np.float32 or logits.ndim != 2:
            raise TypeError(f"logits: expected a float32 (N, K) array, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)} {getattr(logits, 'shape', '')}")
        N, K = logits.shape
        target = np.asarray(target)
        labels = soft = None
        if target.ndim == 1 and target.dtype.kind in "iu":
            if target.shape[0] != N:
                raise ValueError(f"target: expected {N} labels (one per logits row), got {target.shape[0]}")
            if N and (target.min() < 0 or target.max() >= K):
                raise ValueError(f"target: class indices must lie in [0, {K}), got {target.min()}..{target.max()}")
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
        if self._grad is None or self._grad.shape != (N, K):
            self._grad = np.empty((N, K), np.float32)
        scale = 1.0 / N if self.reduction == "mean" and N else 1.0
        per = _core.softmax_xent(np.ascontiguousarray(logits), labels, soft, N, K,
                                 self.label_smoothing if labels is not None else 0.0, self._grad, scale)
        if self.reduction == "none":
            return per
        total = float(np.sum(per))
        return total / N if self.reduction == "mean" and N else total

    __call__ = forward

    def backward(self):
        if self._grad is None:
            raise ValueError("backward: call forward first")
        return self._grad
