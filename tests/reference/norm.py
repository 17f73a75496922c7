"""Float64 NumPy references for batch normalization and group normalization.

Written straight from the formulas so that they are easy to audit; they never call cnnkit.
Every function is pure: inputs are converted to float64 copies, never modified, and new
float64 arrays are returned.

Layouts. ``x`` is (N, C) (BatchNorm1d), or 4-D with ``layout="NCHW"`` -> (N, C, H, W) or
``layout="NHWC"`` -> (N, H, W, C). Internally everything works on the canonical view
(N, C, S) with S = H*W (S = 1 for 2-D input); ``to_ncs`` / ``from_ncs`` convert.

Batch norm, training (``bn_train_forward``), per channel c over the n = N*S values::

    mean   = sum(x) / n
    var    = sum((x - mean)^2) / n                  (biased; two-pass)
    invstd = 1 / sqrt(var + eps)
    xhat   = (x - mean) * invstd
    y      = act(xhat * w + b [+ residual])          (w = 1, b = 0 without affine)
    rm'    = (1 - momentum) * rm + momentum * mean
    rv'    = (1 - momentum) * rv + momentum * var * n / (n - 1)     (unbiased into rv)

Ghost (virtual) batch norm, ``virtual_batch_size=v``: the batch is cut into K = N // v
consecutive chunks along N; each chunk k is normalised with its own mean_k, var_k (n = v*S);
save_mean / save_invstd are (K, C). The running statistics are updated ONCE with
``mean(mean_k over k)`` and ``mean(var_k * n / (n - 1) over k)``.

Inference (``bn_infer_forward``)::

    y = act((x - rm) / sqrt(rv + eps) * w + b [+ residual])

Backward of training-mode BN (``bn_backward``). With g = dy * mask (mask = y > 0 for ReLU,
else 1) and the means taken over the n values of one channel (of one chunk)::

    y_pre = xhat * w + b + r,   xhat = (x - mean) * invstd
    dL/dxhat = g * w
    dL/dvar  = sum(g * w * (x - mean)) * (-1/2) * invstd^3
    dL/dmean = -sum(g * w) * invstd           (the dvar term's sum(x - mean) = 0)
    dL/dx    = g*w*invstd + dL/dvar * 2 (x - mean) / n + dL/dmean / n
             = w * invstd * (g - mean(g) - xhat * mean(g * xhat))
    dL/dw    = sum over N, S of g * xhat      (all chunks)
    dL/db    = sum over N, S of g
    dL/dr    = g

Group norm (``group_norm_forward`` / ``group_norm_backward``), torch semantics: for each sample
n and group of C/G consecutive channels, statistics over those channels and all spatial
positions (biased variance); per-channel affine. The backward is the formula above with the
means taken over one (sample, group) and ``w`` inside: with gw = g * w[c],
``dx = invstd * (gw - mean(gw) - xhat * mean(gw * xhat))``.

Folding (``fold_batch_norm``), per output channel o (axis 0 of the conv weight)::

    s_o = gamma_o / sqrt(rv_o + eps)
    w'  = w * s_o,     b' = (b - rm) * s + beta      (b = 0 without conv bias)
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = [
    "to_ncs", "from_ncs", "channels_of", "reduction_length",
    "BNTrain", "BNGrads", "GNForward", "GNGrads",
    "bn_batch_stats", "bn_train_forward", "bn_infer_forward", "bn_backward",
    "group_norm_forward", "group_norm_backward", "fold_batch_norm",
]


# ---- layouts ------------------------------------------------------------------------------------

def _f64(a):
    return np.array(a, dtype=np.float64, copy=True)


def to_ncs(a, layout: str = "NCHW") -> np.ndarray:
    """A float64 (N, C, S) copy of a (N, C) or 4-D array in ``layout``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        return a.reshape(a.shape[0], a.shape[1], 1).copy()
    if a.ndim != 4:
        raise ValueError(f"expected a 2-D or 4-D array, got shape {a.shape}")
    if layout == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"layout {layout!r}")
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1).copy()


def from_ncs(a, shape, layout: str = "NCHW") -> np.ndarray:
    """Back from (N, C, S) to an array of ``shape`` in ``layout`` (the inverse of to_ncs)."""
    a = np.asarray(a, dtype=np.float64)
    shape = tuple(shape)
    if len(shape) == 2:
        return a.reshape(shape).copy()
    if layout == "NHWC":
        n, h, w, c = shape
        return np.ascontiguousarray(a.reshape(n, c, h, w).transpose(0, 2, 3, 1))
    return a.reshape(shape).copy()


def channels_of(shape, layout: str = "NCHW") -> int:
    return shape[-1] if (len(shape) == 4 and layout == "NHWC") else shape[1]


def reduction_length(shape, layout: str = "NCHW", virtual_batch_size=None) -> int:
    """Values per channel (per chunk) that one batch-norm statistic reduces over."""
    n = shape[0] if virtual_batch_size is None else virtual_batch_size
    s = 1 if len(shape) == 2 else (shape[1] * shape[2] if layout == "NHWC" else shape[2] * shape[3])
    return n * s


def _per_channel(p, c: int, default: float) -> np.ndarray:
    if p is None:
        return np.full(c, default)
    p = _f64(p).reshape(-1)
    if p.shape != (c,):
        raise ValueError(f"per-channel array of shape {p.shape}, expected ({c},)")
    return p


def _act(a, activation):
    if activation is None:
        return a
    if activation == "relu":
        return np.maximum(a, 0.0)
    raise ValueError(f"activation {activation!r}")


# ---- batch norm ---------------------------------------------------------------------------------

class BNTrain(NamedTuple):
    y: np.ndarray              # x's shape and layout
    save_mean: np.ndarray      # (C,), or (N // v, C) with virtual_batch_size=v
    save_invstd: np.ndarray    # as save_mean
    running_mean: Optional[np.ndarray]   # updated copies (None when not given)
    running_var: Optional[np.ndarray]


class BNGrads(NamedTuple):
    grad_x: np.ndarray
    grad_weight: Optional[np.ndarray]    # None without affine
    grad_bias: Optional[np.ndarray]
    grad_residual: np.ndarray           # the masked grad_out, x's shape and layout


def _chunks(x3: np.ndarray, virtual_batch_size) -> np.ndarray:
    """(N, C, S) -> (K, v, C, S): K = N // v consecutive chunks along N (K = 1 without ghost BN)."""
    n = x3.shape[0]
    v = n if virtual_batch_size is None else int(virtual_batch_size)
    if v <= 0 or n % v:
        raise ValueError(f"N={n} is not divisible by virtual_batch_size={v}")
    return x3.reshape(n // v, v, *x3.shape[1:])


def bn_batch_stats(x, layout: str = "NCHW", virtual_batch_size=None):
    """(mean, biased var, n): per chunk and channel, arrays of shape (K, C); two-pass."""
    xc = _chunks(to_ncs(x, layout), virtual_batch_size)
    n = xc.shape[1] * xc.shape[3]
    mean = xc.sum(axis=(1, 3)) / n
    d = xc - mean[:, None, :, None]
    var = (d * d).sum(axis=(1, 3)) / n
    return mean, var, n


def bn_train_forward(x, weight, bias, running_mean, running_var, *, momentum=0.1, eps=1e-5,
                     activation=None, residual=None, layout="NCHW",
                     virtual_batch_size=None) -> BNTrain:
    """Training-mode batch norm; see the module docstring. Returns a BNTrain of float64 arrays."""
    shape = np.shape(x)
    x3 = to_ncs(x, layout)
    nb, c, s = x3.shape
    mean, var, n = bn_batch_stats(x, layout, virtual_batch_size)
    if n < 2:
        raise ValueError("need more than one value per channel")
    invstd = 1.0 / np.sqrt(var + eps)
    xc = _chunks(x3, virtual_batch_size)
    xhat = ((xc - mean[:, None, :, None]) * invstd[:, None, :, None]).reshape(nb, c, s)
    w = _per_channel(weight, c, 1.0)
    b = _per_channel(bias, c, 0.0)
    pre = xhat * w[None, :, None] + b[None, :, None]
    if residual is not None:
        pre = pre + to_ncs(residual, layout)
    y = from_ncs(_act(pre, activation), shape, layout)

    new_rm = new_rv = None
    batch_mean = mean.mean(axis=0)                       # average of the chunk means
    batch_var_unbiased = (var * (n / (n - 1))).mean(axis=0)
    if running_mean is not None:
        new_rm = (1.0 - momentum) * _f64(running_mean) + momentum * batch_mean
    if running_var is not None:
        new_rv = (1.0 - momentum) * _f64(running_var) + momentum * batch_var_unbiased
    if virtual_batch_size is None:
        mean, invstd = mean[0], invstd[0]
    return BNTrain(y, mean, invstd, new_rm, new_rv)


def bn_infer_forward(x, weight, bias, running_mean, running_var, *, eps=1e-5, activation=None,
                     residual=None, layout="NCHW") -> np.ndarray:
    """Inference-mode batch norm with the running statistics; float64, x's shape and layout."""
    shape = np.shape(x)
    x3 = to_ncs(x, layout)
    c = x3.shape[1]
    rm = _per_channel(running_mean, c, 0.0)
    rv = _per_channel(running_var, c, 1.0)
    w = _per_channel(weight, c, 1.0)
    b = _per_channel(bias, c, 0.0)
    pre = (x3 - rm[None, :, None]) / np.sqrt(rv + eps)[None, :, None] * w[None, :, None] \
        + b[None, :, None]
    if residual is not None:
        pre = pre + to_ncs(residual, layout)
    return from_ncs(_act(pre, activation), shape, layout)


def bn_backward(grad_out, x, weight, save_mean, save_invstd, *, y=None, bias=None,
                residual=None, activation=None, layout="NCHW",
                virtual_batch_size=None) -> BNGrads:
    """Gradients of bn_train_forward's y w.r.t. x, weight, bias and the residual.

    ``save_mean`` / ``save_invstd`` are (C,), or (N // v, C) with ghost BN. With
    ``activation="relu"`` the mask is ``y > 0`` from the given ``y``, or, when y is None, from
    the recomputed pre-activation xhat * w + b + residual.
    """
    shape = np.shape(x)
    x3 = to_ncs(x, layout)
    nb, c, s = x3.shape
    g = to_ncs(grad_out, layout)
    xc = _chunks(x3, virtual_batch_size)
    k, v = xc.shape[:2]
    mean = _f64(save_mean).reshape(k, 1, c, 1)
    invstd = _f64(save_invstd).reshape(k, 1, c, 1)
    xhat = ((xc - mean) * invstd).reshape(nb, c, s)
    w = _per_channel(weight, c, 1.0)
    if activation == "relu":
        if y is not None:
            mask = to_ncs(y, layout) > 0
        else:
            pre = xhat * w[None, :, None] + _per_channel(bias, c, 0.0)[None, :, None]
            if residual is not None:
                pre = pre + to_ncs(residual, layout)
            mask = pre > 0
        g = np.where(mask, g, 0.0)
    elif activation is not None:
        raise ValueError(f"activation {activation!r}")

    gc = g.reshape(k, v, c, s)
    xhc = xhat.reshape(k, v, c, s)
    mean_g = gc.mean(axis=(1, 3), keepdims=True)
    mean_gx = (gc * xhc).mean(axis=(1, 3), keepdims=True)
    dx = w[None, None, :, None] * invstd * (gc - mean_g - xhc * mean_gx)
    grad_x = from_ncs(dx.reshape(nb, c, s), shape, layout)
    grad_w = grad_b = None
    if weight is not None:
        grad_w = (g * xhat).sum(axis=(0, 2))
        grad_b = g.sum(axis=(0, 2))
    return BNGrads(grad_x, grad_w, grad_b, from_ncs(g, shape, layout))


# ---- group norm ---------------------------------------------------------------------------------

class GNForward(NamedTuple):
    y: np.ndarray
    save_mean: np.ndarray      # (N, G)
    save_invstd: np.ndarray    # (N, G)


class GNGrads(NamedTuple):
    grad_x: np.ndarray
    grad_weight: Optional[np.ndarray]
    grad_bias: Optional[np.ndarray]


def _groups(x3: np.ndarray, num_groups: int) -> np.ndarray:
    """(N, C, S) -> (N, G, C/G, S)."""
    n, c, s = x3.shape
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"C={c} is not divisible by num_groups={num_groups}")
    return x3.reshape(n, num_groups, c // num_groups, s)


def group_norm_forward(x, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None,
                       layout="NCHW") -> GNForward:
    """torch.nn.functional.group_norm (+ optional fused ReLU); float64."""
    shape = np.shape(x)
    x3 = to_ncs(x, layout)
    nb, c, s = x3.shape
    xg = _groups(x3, num_groups)
    mean = xg.mean(axis=(2, 3))
    d = xg - mean[:, :, None, None]
    var = (d * d).mean(axis=(2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (d * invstd[:, :, None, None]).reshape(nb, c, s)
    w = _per_channel(weight, c, 1.0)
    b = _per_channel(bias, c, 0.0)
    y = _act(xhat * w[None, :, None] + b[None, :, None], activation)
    return GNForward(from_ncs(y, shape, layout), mean, invstd)


def group_norm_backward(grad_out, x, num_groups, weight, save_mean, save_invstd, *, y=None,
                        bias=None, activation=None, layout="NCHW") -> GNGrads:
    """Gradients of group_norm_forward's y w.r.t. x, weight and bias (ReLU mask as bn_backward)."""
    shape = np.shape(x)
    x3 = to_ncs(x, layout)
    nb, c, s = x3.shape
    g = to_ncs(grad_out, layout)
    xg = _groups(x3, num_groups)
    mean = _f64(save_mean).reshape(nb, num_groups, 1, 1)
    invstd = _f64(save_invstd).reshape(nb, num_groups, 1, 1)
    xhat = ((xg - mean) * invstd).reshape(nb, c, s)
    w = _per_channel(weight, c, 1.0)
    if activation == "relu":
        if y is not None:
            mask = to_ncs(y, layout) > 0
        else:
            mask = (xhat * w[None, :, None] + _per_channel(bias, c, 0.0)[None, :, None]) > 0
        g = np.where(mask, g, 0.0)
    elif activation is not None:
        raise ValueError(f"activation {activation!r}")

    gw = _groups(g * w[None, :, None], num_groups)
    xh = _groups(xhat, num_groups)
    mean_gw = gw.mean(axis=(2, 3), keepdims=True)
    mean_gwx = (gw * xh).mean(axis=(2, 3), keepdims=True)
    dx = invstd * (gw - mean_gw - xh * mean_gwx)
    grad_x = from_ncs(dx.reshape(nb, c, s), shape, layout)
    grad_w = grad_b = None
    if weight is not None:
        grad_w = (g * xhat).sum(axis=(0, 2))
        grad_b = g.sum(axis=(0, 2))
    return GNGrads(grad_x, grad_w, grad_b)


# ---- folding ------------------------------------------------------------------------------------

def fold_batch_norm(conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                    eps=1e-5):
    """(w', b') in float64: inference BN folded into the preceding conv (axis 0 = out channel)."""
    w = _f64(conv_weight)
    co = w.shape[0]
    b = _per_channel(conv_bias, co, 0.0)
    gamma = _per_channel(bn_weight, co, 1.0)
    beta = _per_channel(bn_bias, co, 0.0)
    rm = _per_channel(running_mean, co, 0.0)
    rv = _per_channel(running_var, co, 1.0)
    scale = gamma / np.sqrt(rv + eps)
    w_new = w * scale.reshape((co,) + (1,) * (w.ndim - 1))
    b_new = (b - rm) * scale + beta
    return w_new, b_new
