"""Float64 NumPy forward references for the layers of cnnkit.nn (torch.nn semantics).

Written to be obviously right rather than fast; they never call cnnkit. Every function is pure:
inputs are converted to float64 copies, never modified, and new float64 arrays are returned.
4-D functions take ``layout="NCHW"`` or ``"NHWC"``: the input is converted to NCHW, the formula
below is applied, and the result is converted back to the input's layout. Only forward passes are
here; the tests differentiate them by central differences.

Formulas (x is (N, C, H, W), per output element):

* conv2d: ``tests/reference/conv.py``'s ``conv2d_ref`` (torch's cross-correlation).
* depthwise separable: conv2d(groups=C_in) then a 1x1 conv2d (``depthwise_separable_ref``).
* batch norm, training (torch.nn.BatchNorm2d.train()), per channel c over the n = N*H*W values::

      mean = sum(x) / n,  var = sum((x - mean)^2) / n          (biased, two-pass)
      pre  = (x - mean) / sqrt(var + eps) * w + b [+ residual]
      y    = relu(pre) with activation="relu", else pre
      running_mean' = (1 - momentum) running_mean + momentum mean
      running_var'  = (1 - momentum) running_var  + momentum var * n / (n - 1)   (unbiased)

* batch norm, eval: ``pre = (x - running_mean) / sqrt(running_var + eps) * w + b [+ residual]``.
* group norm (torch.nn.GroupNorm): per sample and group of C/G consecutive channels, biased
  statistics over those channels and all positions; per-channel affine; optional ReLU.
* relu: ``max(x, 0)``.
* max_pool2d (torch.nn.MaxPool2d, ceil_mode=False, dilation 1): the input is padded with -inf
  (padding never wins); ``y = max over the kH x kW window at (h*sH - pH, w*sW - pW)``;
  ``Ho = (H + 2 pH - kH) // sH + 1``. ``max_pool2d_argmax`` gives the flat index (h*W + w) of the
  first maximum in row-major window order, which receives the gradient.
* avg_pool2d (count_include_pad=True): zero padding, ``y = sum over the window / (kH * kW)``.
* global_avg_pool2d: mean over H, W -> (N, C).
* flatten: (N, ...) -> (N, prod); NHWC input is flattened in NCHW order (as the torch model).
* linear: ``y = x @ W^T + b`` with W (out, in).
* cross_entropy (torch.nn.CrossEntropyLoss): ``t`` = one-hot(labels) or the soft rows, then
  ``t <- (1 - eps) t + eps / K`` (label smoothing, as torch applies it to both target kinds);
  ``loss_n = -sum_k t[n, k] log softmax(z)[n, k]``; reduction "mean" divides by N, "sum" sums,
  "none" returns loss_n. Its gradient (``cross_entropy_grad``) is ``(softmax(z) - t) / N`` for
  "mean" (without the 1/N for "sum"); ``softmax(z) * sum_k t[n, k] - t`` when soft rows do not
  sum to 1.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import conv as _conv
from .conv import _f64, pair
from .norm import _act

__all__ = [
    "to_nchw", "to_nhwc", "pair",
    "conv2d", "depthwise_separable", "batch_norm_train", "batch_norm_eval", "BNTrain",
    "group_norm", "GNForward", "relu", "max_pool2d", "max_pool2d_argmax", "max_pool2d_gap",
    "avg_pool2d", "global_avg_pool2d", "flatten", "linear", "softmax", "log_softmax",
    "cross_entropy", "cross_entropy_grad", "smoothed_targets",
]


# ---- helpers ------------------------------------------------------------------------------------

def to_nchw(a, layout="NCHW"):
    """A float64 NCHW copy of a 4-D array given in `layout`."""
    a = _f64(a)
    if layout == "NHWC":
        a = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    elif layout != "NCHW":
        raise ValueError(f"layout {layout!r}")
    return a


def to_nhwc(a):
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) copy."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def _back(a, layout):
    """NCHW result -> `layout`."""
    return to_nhwc(a) if layout == "NHWC" else np.ascontiguousarray(a)


def _per_channel(p, c, default):
    return np.full(c, float(default)) if p is None else _f64(p).reshape(c)


# ---- convolutions -------------------------------------------------------------------------------

def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW"):
    """torch.nn.functional.conv2d (tests/reference/conv.py's conv2d_ref) in `layout`."""
    y = _conv.conv2d_ref(to_nchw(x, layout), w, b, pair(stride),
                         padding if isinstance(padding, str) else pair(padding), pair(dilation), groups)
    return _back(y, layout)


def depthwise_separable(x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=1, padding=1, *,
                        layout="NCHW"):
    """conv2d(conv2d(x, dw_weight, dw_bias, stride, padding, groups=C_in), pw_weight, pw_bias)."""
    y = _conv.depthwise_separable_ref(to_nchw(x, layout), dw_weight, pw_weight, dw_bias, pw_bias,
                                      pair(stride), pair(padding))
    return _back(y, layout)


# ---- normalization ------------------------------------------------------------------------------

class BNTrain(NamedTuple):
    y: np.ndarray                # output, in the input's layout
    pre: np.ndarray              # before the activation (for kink checks), same layout
    mean: np.ndarray             # (C,) batch mean
    var: np.ndarray              # (C,) biased batch variance
    running_mean: np.ndarray | None      # updated copies (None when not given)
    running_var: np.ndarray | None


def batch_norm_train(x, weight=None, bias=None, running_mean=None, running_var=None, *, momentum=0.1,
                     eps=1e-5, activation=None, residual=None, layout="NCHW") -> BNTrain:
    """torch.nn.BatchNorm2d in training mode (+ residual before the optional ReLU)."""
    x = to_nchw(x, layout)
    N, C, H, W = x.shape
    n = N * H * W
    mean = x.mean(axis=(0, 2, 3))
    d = x - mean[None, :, None, None]
    var = (d * d).mean(axis=(0, 2, 3))
    xhat = d / np.sqrt(var + eps)[None, :, None, None]
    pre = xhat * _per_channel(weight, C, 1.0)[None, :, None, None] + _per_channel(bias, C, 0.0)[None, :, None, None]
    if residual is not None:
        pre = pre + to_nchw(residual, layout)
    rm = rv = None
    if running_mean is not None:
        rm = (1.0 - momentum) * _f64(running_mean) + momentum * mean
    if running_var is not None:
        unbiased = var * n / (n - 1) if n > 1 else np.full(C, np.nan)
        rv = (1.0 - momentum) * _f64(running_var) + momentum * unbiased
    return BNTrain(_back(_act(pre, activation), layout), _back(pre, layout), mean, var, rm, rv)


def batch_norm_eval(x, weight, bias, running_mean, running_var, *, eps=1e-5, activation=None,
                    residual=None, layout="NCHW", return_pre=False):
    """torch.nn.BatchNorm2d in eval mode: the running statistics normalise."""
    x = to_nchw(x, layout)
    C = x.shape[1]
    rm, rv = _f64(running_mean).reshape(C), _f64(running_var).reshape(C)
    pre = ((x - rm[None, :, None, None]) / np.sqrt(rv + eps)[None, :, None, None]
           * _per_channel(weight, C, 1.0)[None, :, None, None] + _per_channel(bias, C, 0.0)[None, :, None, None])
    if residual is not None:
        pre = pre + to_nchw(residual, layout)
    y = _back(_act(pre, activation), layout)
    return (y, _back(pre, layout)) if return_pre else y


class GNForward(NamedTuple):
    y: np.ndarray
    pre: np.ndarray       # before the activation


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None, layout="NCHW") -> GNForward:
    """torch.nn.GroupNorm (+ optional ReLU)."""
    x = to_nchw(x, layout)
    N, C, H, W = x.shape
    xg = x.reshape(N, num_groups, C // num_groups * H * W)
    mean = xg.mean(axis=2, keepdims=True)
    d = xg - mean
    var = (d * d).mean(axis=2, keepdims=True)
    xhat = (d / np.sqrt(var + eps)).reshape(N, C, H, W)
    pre = xhat * _per_channel(weight, C, 1.0)[None, :, None, None] + _per_channel(bias, C, 0.0)[None, :, None, None]
    return GNForward(_back(_act(pre, activation), layout), _back(pre, layout))


def relu(x):
    return np.maximum(_f64(x), 0.0)


# ---- pooling ------------------------------------------------------------------------------------

def _pool_windows(x, kernel_size, stride, padding, fill):
    """(N, C, Ho, Wo, kH*kW) windows of the NCHW input padded with `fill`, row-major in the window."""
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    ph, pw = pair(padding)
    N, C, H, W = x.shape
    ho, wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError("the pooling window does not fit the padded input")
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), fill)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    win = np.empty((N, C, ho, wo, kh * kw))
    for i in range(kh):
        for j in range(kw):
            win[..., i * kw + j] = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return win, (kh, kw, sh, sw, ph, pw, ho, wo)


def max_pool2d(x, kernel_size, stride=None, padding=0, *, layout="NCHW"):
    """torch.nn.MaxPool2d: -inf padding, max over each window."""
    win, _ = _pool_windows(to_nchw(x, layout), kernel_size, stride, padding, -np.inf)
    return _back(win.max(axis=-1), layout)


def max_pool2d_argmax(x, kernel_size, stride=None, padding=0, *, layout="NCHW"):
    """Flat input index (h*W + w) of the first maximum of each window, in NCHW order (N, C, Ho, Wo)."""
    x = to_nchw(x, layout)
    W = x.shape[3]
    win, (_, kw, sh, sw, ph, pw, ho, wo) = _pool_windows(x, kernel_size, stride, padding, -np.inf)
    k = win.argmax(axis=-1)                       # first maximum (numpy's argmax rule)
    i, j = k // kw, k % kw
    h = np.arange(ho)[:, None] * sh - ph + i
    w = np.arange(wo)[None, :] * sw - pw + j
    return h * W + w


def max_pool2d_gap(x, kernel_size, stride=None, padding=0, *, layout="NCHW"):
    """The smallest gap between the largest and second largest value of any window (padding
    ignored; windows whose maximum is exactly 0 with ties are skipped: those come from a ReLU and
    pass no gradient). Finite differences through a max pool are exact when this gap is larger
    than the perturbation."""
    win, _ = _pool_windows(to_nchw(x, layout), kernel_size, stride, padding, -np.inf)
    s = np.sort(win, axis=-1)
    top, second = s[..., -1], s[..., -2]
    gap = top - second
    gap = np.where((top == 0.0) & (second == 0.0), np.inf, gap)
    return float(np.min(gap)) if gap.size else math.inf


def avg_pool2d(x, kernel_size, stride=None, padding=0, *, layout="NCHW"):
    """torch.nn.AvgPool2d (count_include_pad=True): zeros padded, divisor kH*kW."""
    win, (kh, kw, *_rest) = _pool_windows(to_nchw(x, layout), kernel_size, stride, padding, 0.0)
    return _back(win.sum(axis=-1) / (kh * kw), layout)


def global_avg_pool2d(x, *, layout="NCHW"):
    """Mean over the spatial axes -> (N, C) (AdaptiveAvgPool2d(1) + Flatten)."""
    return to_nchw(x, layout).mean(axis=(2, 3))


def flatten(x, *, layout="NCHW"):
    """(N, ...) -> (N, prod); 4-D NHWC input is flattened in NCHW order."""
    x = _f64(x)
    if x.ndim == 4:
        x = to_nchw(x, layout)
    return x.reshape(x.shape[0], -1)


def linear(x, weight, bias=None):
    """torch.nn.Linear: x @ weight^T + bias."""
    y = _f64(x) @ _f64(weight).T
    if bias is not None:
        y = y + _f64(bias)
    return y


# ---- loss ---------------------------------------------------------------------------------------

def log_softmax(z):
    z = _f64(z)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def smoothed_targets(target, K, label_smoothing=0.0):
    """(N, K) target rows: one-hot for integer labels, the given rows for soft targets, then
    mixed with the uniform distribution: (1 - eps) t + eps / K."""
    target = np.asarray(target)
    if target.ndim == 1:
        t = np.zeros((target.shape[0], K))
        t[np.arange(target.shape[0]), target.astype(np.int64)] = 1.0
    else:
        t = _f64(target)
    return (1.0 - label_smoothing) * t + label_smoothing / K


def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean"):
    """torch.nn.CrossEntropyLoss(label_smoothing=..., reduction=...) for class indices or soft rows."""
    z = _f64(logits)
    N, K = z.shape
    per = -(smoothed_targets(target, K, label_smoothing) * log_softmax(z)).sum(axis=1)
    if reduction == "none":
        return per
    if reduction == "sum":
        return float(per.sum())
    return float(per.sum() / N)


def cross_entropy_grad(logits, target, label_smoothing=0.0, reduction="mean"):
    """d cross_entropy / d logits (reduction "mean" or "sum"): (softmax(z) - t) [/ N]."""
    z = _f64(logits)
    N, K = z.shape
    t = smoothed_targets(target, K, label_smoothing)
    g = softmax(z) * t.sum(axis=1, keepdims=True) - t      # rows of t need not sum to 1
    return g / N if reduction == "mean" else g
