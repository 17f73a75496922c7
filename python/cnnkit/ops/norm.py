"""Batch normalization and group normalization on NumPy arrays.

Layouts: ``x`` is ``(N, C)`` or ``(N, C, *spatial)`` with ``layout="NCHW"`` (channels first, the
default) or ``(N, *spatial, C)`` with ``layout="NHWC"`` (channels last). float32 or float64;
every array of one call shares x's dtype, except the saved statistics, which are float64.

Numerics: statistics are accumulated in double from shifted values (one pass, no cancellation
when the mean dwarfs the spread) over fixed blocks combined in a fixed order, so results do not
depend on the thread count; the mean is subtracted as a hi/lo pair, so float32 inputs with a mean
of 1e6 and a spread of 1e-2 still normalise to full float32 accuracy. The saved mean is float64
for the same reason: the backward pass needs it exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import _core
from .._memory import empty_like_pooled
from .._validate import (accepts_dlpack, check_array, check_bool, check_choice, check_float_array, check_int,
                         check_layout, check_real, check_subset, renamed_kwargs)

__all__ = ["batch_norm_train", "batch_norm_infer", "batch_norm_backward", "group_norm",
           "group_norm_backward", "fold_batch_norm"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NEEDS = ("input", "weight", "bias", "residual")


# ---- argument checks ---------------------------------------------------------------------------

def _as_x(x, name="x"):
    check_float_array(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (N, C) or (N, C, *spatial), got {x.shape}")
    return np.ascontiguousarray(x)


def _geometry(x, layout):
    """(N, C, S, nhwc) of x in `layout`; a 2-D (N, C) input is channels-last by nature."""
    check_layout(layout)
    N = x.shape[0]
    if x.ndim == 2:
        return N, x.shape[1], 1, True
    if layout == "NCHW":
        return N, x.shape[1], math.prod(x.shape[2:]), False
    return N, x.shape[-1], math.prod(x.shape[1:-1]), True


def _channel_array(name, a, C, dtype, *, writeable=False, required=False):
    if a is None:
        if required:
            raise TypeError(f"{name}: expected an array of shape ({C},), got None")
        return None
    check_array(name, a, what=f"of shape ({C},)")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},) (C of x), got {a.shape}")
    if writeable:
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array (it is updated in place)")
        if not a.flags.writeable:
            raise ValueError(f"{name}: expected a writeable array (it is updated in place)")
        return a
    return np.ascontiguousarray(a)


def _like_x(name, a, x, *, out=False):
    if a is None:
        return None
    check_array(name, a, what="like x")
    if a.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {a.dtype}")
    if a.shape != x.shape:
        raise ValueError(f"{name}: expected shape {x.shape} (the shape of x), got {a.shape}")
    if out:
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name}: expected a writeable C-contiguous array")
        return a
    return np.ascontiguousarray(a)


def _activation(activation):
    return check_choice("activation", activation, (None, "relu")) == "relu"


def _eps(eps):
    return check_real("eps", eps, lo=0.0, lo_open=True)


def _chunks(virtual_batch_size, N):
    if virtual_batch_size is None:
        return 1, N
    v = check_int("virtual_batch_size", virtual_batch_size, 1, "a positive int")
    if N % v:
        raise ValueError(f"virtual_batch_size: expected a divisor of the batch size {N}, got {v}")
    return N // v, v


def _needs(needs):
    return check_subset("needs", needs, _NEEDS)


def _stats_shape(name, a, shape):
    """Saved statistics: float64 always (a float32 mean near 1e6 would ruin the backward)."""
    check_array(name, a, what=f"of shape {shape}")
    if a.dtype != np.float64:
        raise TypeError(f"{name}: expected the float64 statistics saved by the forward, got dtype "
                        f"{a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


# ---- batch norm --------------------------------------------------------------------------------
# The _bn_*_core functions are the compiled passes on arrays already checked (by the public
# functions below, or by a caller that caches its checks per call signature: cnnkit.torch).

def _bn_train_core(x, y, residual, N, C, S, nhwc, weight, bias, running_mean, running_var,
                   momentum, eps, relu):
    """batch_norm_train without ghost batches: writes y, updates the running statistics,
    returns the float64 (mean, invstd)."""
    mean, var = _core.norm_stats(x, N, C, S, nhwc, False)
    invstd = _core.norm_invstd(var, eps, True)  # (a NaN variance, from a NaN input, propagates as in torch)
    _core.norm_apply(x, y, residual, N, C, S, nhwc, False, mean, invstd, weight, bias, relu)
    count = N * S
    _core.norm_update_running(running_mean, running_var, mean, var, momentum, count / (count - 1))
    return mean, invstd


def _bn_infer_core(x, y, residual, N, C, S, nhwc, weight, bias, running_mean, running_var, eps, relu):
    """batch_norm_infer: ValueError (before writing y) for a negative or NaN running variance."""
    mean = running_mean.astype(np.float64)
    invstd = _core.norm_invstd(running_var, eps)
    if x.size:
        _core.norm_apply(x, y, residual, N, C, S, nhwc, False, mean, invstd, weight, bias, relu)


def _bn_apply_coefs(invstd, w, count, sg, sgx):
    """``(A, B, D)`` of the apply pass, ``grad_x = A*g - B - (x - mean)*D`` (float64, per channel):
    A = w*invstd, B = A*sg/count, D = A*invstd^2*sgx/count, from the sums ``sg`` = sum g and
    ``sgx`` = sum g*(x - mean) (``w`` None: 1; one compiled call, NumPy's rounding order)."""
    return _core.norm_backward_coefs(invstd, w, float(count), sg, sgx)


def _bn_backward_apply(g, x, mask, grad_x, grad_res, v, C, S, nhwc, mean, invstd, w, count, sg, sgx,
                       mask_affine=None, pooled=False):
    """The apply pass of batch_norm_backward given the sums ``sg`` = sum g and ``sgx`` =
    sum g*(x - mean) (float64, per channel), on the coefficients of :func:`_bn_apply_coefs` (g
    masked, and ``pooled``, as in :func:`_bn_backward_chunk`)."""
    A, B, D = _bn_apply_coefs(invstd, w, count, sg, sgx)
    _core.norm_backward_apply(g, x, mask, grad_x, grad_res, v, C, S, nhwc, False, mean, A, B, D, mask_affine, pooled)


def _bn_backward_chunk(g, x, mask, grad_x, grad_res, v, C, S, nhwc, mean, invstd, w, count, mask_affine=None,
                       pooled=False):
    """batch_norm_backward over one chunk of v samples: writes grad_x and grad_res (where not
    None) and returns (sum g, sum g*xhat) per channel (float64); w is the weight (any float
    dtype, widened exactly; None: 1). ``mask_affine`` (x's dtype, ``concat(a, b)``, mask None):
    g is masked by ``fma(a[c], x, b[c]) > 0``, the ReLU of a convolution's fused prologue
    recomputed from x (:mod:`cnnkit.nn`'s fusion), instead of by a stored output. ``pooled``: g is
    ``(v, C)``, the gradient at every spatial position of that sample and channel (a global
    average pool's adjoint, never broadcast in memory). With ``mask`` and ``grad_res`` both given,
    the reduction pass writes the masked gradient into ``grad_res`` and the apply pass reads it in
    place of ``g`` and the mask (one pass over the mask fewer; the same values)."""
    if mask is not None and grad_res is not None and grad_x is not None:
        sg, sgx = _core.norm_backward_reduce(g, x, mask, v, C, S, nhwc, False, mean, None, False, grad_res)
        _bn_backward_apply(grad_res, x, None, grad_x, None, v, C, S, nhwc, mean, invstd, w, count, sg, sgx)
        return sg, sgx * invstd
    sg, sgx = _core.norm_backward_reduce(g, x, mask, v, C, S, nhwc, False, mean, mask_affine, pooled)
    if grad_x is not None:
        _bn_backward_apply(g, x, mask, grad_x, grad_res, v, C, S, nhwc, mean, invstd, w, count, sg, sgx,
                           mask_affine, pooled)
    elif grad_res is not None:
        assert mask_affine is None and not pooled
        np.copyto(grad_res, g if mask is None else np.where(mask > 0, g, 0))
    return sg, sgx * invstd


@accepts_dlpack
def batch_norm_train(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                     running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None, *,
                     momentum: float = 0.1, eps: float = 1e-5, activation: str | None = None,
                     residual: np.ndarray | None = None, layout: str = "NCHW",
                     virtual_batch_size: int | None = None, out: np.ndarray | None = None,
                     return_stats: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Training-mode batch normalization, with fused ReLU and residual.

    ``y = act((x - mean) / sqrt(var + eps) * weight + bias [+ residual])`` with per-channel
    statistics over the batch and spatial positions (biased variance), as
    ``torch.nn.functional.batch_norm(training=True)``. As there, a NaN or infinite value in x
    makes its channel's statistics, output (the ReLU keeps a NaN) and running statistics NaN.

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C)`` or ``(N, C, *spatial)`` (NCHW) or ``(N, *spatial, C)`` (NHWC).
    weight, bias : ndarray (C,) of x's dtype, or None (no affine: 1 and 0)
    running_mean, running_var : ndarray (C,) or None
        Updated in place when given: ``rm = (1 - momentum)*rm + momentum*mean`` and the same for
        ``rv`` with the unbiased variance (torch's conventions; pass ``momentum=1/k`` for a
        cumulative average).
    momentum : float in [0, 1]
    eps : float > 0
    activation : None or "relu"
    residual : ndarray like x, optional — added before the activation.
    layout : "NCHW" or "NHWC"
    virtual_batch_size : int, optional
        Ghost batch norm: the batch is split into ``N // virtual_batch_size`` consecutive chunks,
        each normalised with its own statistics. The running statistics are updated once with the
        average of the chunk means and of the chunk unbiased variances.
    out : ndarray like x, optional — receives y (may be x itself).
    return_stats : bool
        True (the default): return ``(y, save_mean, save_invstd)``; False: ``y`` alone. The same
        keyword and the same triple as :func:`group_norm` (whose default is False, as torch's).

    Returns
    -------
    y : ndarray
        x's shape and dtype (``out`` when given).
    save_mean, save_invstd : ndarray, float64
        ``(C,)``, or ``(N // virtual_batch_size, C)`` for ghost batches: the batch mean and
        ``1 / sqrt(var + eps)``, for :func:`batch_norm_backward`. Only with
        ``return_stats=True``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y, m, s = cnnkit.batch_norm_train(x, None, None, rm, rv)
    >>> bool(abs(y.mean()) < 1e-5)
    True
    """
    x = _as_x(x)
    N, C, S, nhwc = _geometry(x, layout)
    dt = x.dtype
    weight = _channel_array("weight", weight, C, dt)
    bias = _channel_array("bias", bias, C, dt)
    running_mean = _channel_array("running_mean", running_mean, C, dt, writeable=True)
    running_var = _channel_array("running_var", running_var, C, dt, writeable=True)
    momentum = check_real("momentum", momentum, lo=0.0, hi=1.0)
    eps = _eps(eps)
    relu = _activation(activation)
    return_stats = check_bool("return_stats", return_stats)
    residual = _like_x("residual", residual, x)
    out = _like_x("out", out, x, out=True)
    chunks, v = _chunks(virtual_batch_size, N)
    count = v * S
    if count <= 1:
        raise ValueError(f"x: expected more than 1 value per channel when training, got input "
                         f"shape {x.shape}" + (f" in chunks of {v}" if chunks > 1 else ""))
    y = empty_like_pooled(x) if out is None else out
    unbias = count / (count - 1)
    if virtual_batch_size is None:
        mean, invstd = _bn_train_core(x, y, residual, N, C, S, nhwc, weight, bias, running_mean,
                                      running_var, momentum, eps, relu)
        return (y, mean, invstd) if return_stats else y
    means, invstds, vars_ = [], [], []
    for k in range(chunks):
        sl = slice(k * v, (k + 1) * v)
        xk = x[sl]
        mean, var = _core.norm_stats(xk, v, C, S, nhwc, False)
        invstd = _core.norm_invstd(var, eps, True)
        _core.norm_apply(xk, y[sl], None if residual is None else residual[sl], v, C, S, nhwc,
                         False, mean, invstd, weight, bias, relu)
        means.append(mean)
        invstds.append(invstd)
        vars_.append(var)
    # ghost batches: statistics are (chunks, C); the running statistics move once, with the
    # average of the chunk means and of the chunk unbiased variances
    mean, invstd = np.stack(means), np.stack(invstds)
    _core.norm_update_running(running_mean, running_var, mean.mean(axis=0),
                              np.stack(vars_).mean(axis=0), momentum, unbias)
    return (y, mean, invstd) if return_stats else y


@accepts_dlpack
def batch_norm_infer(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                     running_mean: np.ndarray | None = None, running_var: np.ndarray | None = None, *,
                     eps: float = 1e-5, activation: str | None = None, residual: np.ndarray | None = None,
                     layout: str = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
    r"""Inference-mode batch normalization with the running statistics, one pass over x.

    ``y = act((x - running_mean) / sqrt(running_var + eps) * weight + bias [+ residual])``.

    Parameters
    ----------
    x, weight, bias, eps, activation, residual, layout, out
        As in :func:`batch_norm_train`.
    running_mean, running_var : ndarray (C,), x's dtype
        Required (None raises TypeError); read, not updated. A negative or NaN variance raises
        ValueError.

    Returns
    -------
    ndarray
        x's shape and dtype (``out`` when given).

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> x = np.full((2, 3, 4, 4), 3.0, np.float32)
    >>> rm, rv = np.full(3, 1.0, np.float32), np.full(3, 4.0, np.float32)
    >>> y = cnnkit.batch_norm_infer(x, None, None, rm, rv, eps=1e-12)
    >>> float(y[0, 0, 0, 0])  # (3 - 1) / sqrt(4)
    1.0
    """
    x = _as_x(x)
    N, C, S, nhwc = _geometry(x, layout)
    dt = x.dtype
    weight = _channel_array("weight", weight, C, dt)
    bias = _channel_array("bias", bias, C, dt)
    running_mean = _channel_array("running_mean", running_mean, C, dt, required=True)
    running_var = _channel_array("running_var", running_var, C, dt, required=True)
    eps = _eps(eps)
    relu = _activation(activation)
    residual = _like_x("residual", residual, x)
    out = _like_x("out", out, x, out=True)
    y = empty_like_pooled(x) if out is None else out
    _bn_infer_core(x, y, residual, N, C, S, nhwc, weight, bias, running_mean, running_var, eps, relu)
    return y


@renamed_kwargs(grad_out="grad_output")
@accepts_dlpack
def batch_norm_backward(grad_output: np.ndarray, x: np.ndarray, weight: np.ndarray | None,
                        save_mean: np.ndarray, save_invstd: np.ndarray, *, y: np.ndarray | None = None,
                        bias: np.ndarray | None = None, residual: np.ndarray | None = None,
                        activation: str | None = None, layout: str = "NCHW",
                        needs: str | Sequence[str] = ("input", "weight", "bias"),
                        virtual_batch_size: int | None = None, out: np.ndarray | None = None,
                        out_residual: np.ndarray | None = None) -> tuple[np.ndarray | None, ...]:
    r"""Gradients of :func:`batch_norm_train` (training mode: the statistics depend on x).

    With ``g = grad_output`` (masked by ``y > 0`` for a fused ReLU) and per-channel sums over the
    batch and spatial positions::

        grad_bias   = sum(g)
        grad_weight = sum(g * xhat)
        grad_input  = weight*invstd * (g - sum(g)/n - xhat * sum(g*xhat)/n)

    Parameters
    ----------
    grad_output, x : ndarray
        The gradient of the forward output, and the forward's input: x's shape and dtype.
    weight : ndarray (C,) or None (no affine: grad_weight and grad_bias are None)
    save_mean, save_invstd : ndarray, float64
        As returned by :func:`batch_norm_train`.
    y : ndarray like x, optional
        The forward output, for the ReLU mask; if None with ``activation="relu"`` the mask is
        recomputed from x, the statistics, weight, ``bias`` and ``residual``.
    bias, residual, activation, layout, virtual_batch_size
        As given to :func:`batch_norm_train`.
    needs : names from ("input", "weight", "bias", "residual")
        Others come back as None.
        With "residual" a 4th value is returned: the residual's gradient (the masked grad_output).
    out : ndarray like x, optional — receives grad_input (a training loop reuses it every step;
        a fresh 100 MB output costs as much in page faults as the kernel itself).
    out_residual : ndarray like x, optional — receives the residual's gradient (with "residual"
        in needs; must not overlap ``out``).

    Returns
    -------
    grad_input : ndarray or None
        x's shape and dtype.
    grad_weight, grad_bias : ndarray (C,) or None
        x's dtype.
    grad_residual : ndarray
        x's shape and dtype; returned (as a 4th value) only with "residual" in ``needs``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    >>> w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    >>> y, mean, invstd = cnnkit.batch_norm_train(x, w, b)
    >>> gx, gw, gb = cnnkit.batch_norm_backward(np.ones_like(x), x, w, mean, invstd)
    >>> bool(np.abs(gx).max() < 1e-5), gb.tolist()  # a constant gradient is normalized away
    (True, [100.0, 100.0, 100.0])
    """
    x = _as_x(x)
    N, C, S, nhwc = _geometry(x, layout)
    dt = x.dtype
    grad_output = _like_x("grad_output", grad_output, x)
    if grad_output is None:
        raise TypeError("grad_output: expected an array like x, got None")
    weight = _channel_array("weight", weight, C, dt)
    bias = _channel_array("bias", bias, C, dt)
    residual = _like_x("residual", residual, x)
    relu = _activation(activation)
    y = _like_x("y", y, x)
    needs = _needs(needs)
    out = _like_x("out", out, x, out=True)
    out_residual = _like_x("out_residual", out_residual, x, out=True)
    if out_residual is not None:
        if "residual" not in needs:
            raise ValueError("out_residual: given, but 'residual' is not in needs")
        if out is not None and np.may_share_memory(out, out_residual):
            raise ValueError("out_residual: must not overlap out")
    chunks, v = _chunks(virtual_batch_size, N)
    shape = (chunks, C) if virtual_batch_size is not None else (C,)
    save_mean = _stats_shape("save_mean", save_mean, shape).reshape(chunks, C)
    save_invstd = _stats_shape("save_invstd", save_invstd, shape).reshape(chunks, C)
    mask = None
    if relu:
        if y is not None:
            mask = y
        else:  # recompute the pre-activation: its sign is the mask
            mask = empty_like_pooled(x)
            for k in range(chunks):
                sl = slice(k * v, (k + 1) * v)
                _core.norm_apply(x[sl], mask[sl], None if residual is None else residual[sl], v,
                                 C, S, nhwc, False, save_mean[k], save_invstd[k], weight, bias,
                                 False)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    count = v * S
    grad_x = (empty_like_pooled(x) if out is None else out) if "input" in needs else None
    grad_res = (empty_like_pooled(x) if out_residual is None else out_residual) if "residual" in needs else None
    sum_g = np.zeros(C)
    sum_gxhat = np.zeros(C)
    for k in range(chunks):
        sl = slice(k * v, (k + 1) * v)
        mk = None if mask is None else mask[sl]
        sg, sgxhat = _bn_backward_chunk(grad_output[sl], x[sl], mk,
                                        None if grad_x is None else grad_x[sl],
                                        None if grad_res is None else grad_res[sl], v, C, S, nhwc,
                                        save_mean[k], save_invstd[k], w, count)
        sum_g += sg
        sum_gxhat += sgxhat
    affine = weight is not None
    gw = sum_gxhat.astype(dt) if affine and "weight" in needs else None
    gb = sum_g.astype(dt) if affine and "bias" in needs else None
    result: tuple[np.ndarray | None, ...] = (grad_x, gw, gb)
    if "residual" in needs:
        result += (grad_res,)
    return result


# ---- group norm --------------------------------------------------------------------------------

def _group_stats(x, N, C, S, nhwc, G, eps):
    """Per (sample, group) mean and invstd, float64 (N, G), from per-(sample, channel) shifted
    statistics combined exactly (parallel-variance formula) in channel order."""
    m_nc, v_nc = _core.norm_stats(x, N, C, S, nhwc, True)
    m_nc = m_nc.reshape(N, G, C // G)
    v_nc = v_nc.reshape(N, G, C // G)
    mean = m_nc.mean(axis=2)
    var = (v_nc + (m_nc - mean[:, :, None]) ** 2).mean(axis=2)
    return mean, 1.0 / np.sqrt(var + eps)


def _expand(a, C, G):
    return np.repeat(a, C // G, axis=1).ravel()


def _group_args(x, num_groups, weight, bias, eps, activation, layout):
    x = _as_x(x)
    N, C, S, nhwc = _geometry(x, layout)
    G = check_int("num_groups", num_groups, 1, "a positive int")
    if C % G:
        raise ValueError(f"num_groups: expected a divisor of the channel count {C}, got {G}")
    weight = _channel_array("weight", weight, C, x.dtype)
    bias = _channel_array("bias", bias, C, x.dtype)
    return x, N, C, S, nhwc, G, weight, bias, _eps(eps), _activation(activation)


@accepts_dlpack
def group_norm(x: np.ndarray, num_groups: int, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None, eps: float = 1e-5, *, activation: str | None = None,
               layout: str = "NCHW", return_stats: bool = False, out: np.ndarray | None = None
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Group normalization (``torch.nn.functional.group_norm``), the small-batch alternative.

    Statistics per sample and group of ``C // num_groups`` channels, over those channels and all
    spatial positions (biased variance); then the per-channel affine and optional ReLU.

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C)`` or ``(N, C, *spatial)`` (NCHW) or ``(N, *spatial, C)`` (NHWC), not empty.
    num_groups : int
        Divides C.
    weight, bias : ndarray (C,) of x's dtype, or None (no affine: 1 and 0)
    eps : float > 0
    activation : None or "relu"
    layout : "NCHW" or "NHWC"
    return_stats : bool
        Also return the statistics, for :func:`group_norm_backward` (the same keyword and triple
        as :func:`batch_norm_train`, whose default is True).
    out : ndarray like x, optional
        Receives y.

    Returns
    -------
    y : ndarray
        x's shape and dtype.
    save_mean, save_invstd : ndarray, float64 (N, num_groups)
        Only with ``return_stats=True``: ``(y, save_mean, save_invstd)``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    >>> y = cnnkit.group_norm(x, 2)
    >>> bool(abs(y[0, :2].mean()) < 1e-5), bool(abs(y[0, :2].std() - 1) < 1e-3)
    (True, True)
    """
    x, N, C, S, nhwc, G, weight, bias, eps, relu = _group_args(x, num_groups, weight, bias, eps,
                                                              activation, layout)
    return_stats = check_bool("return_stats", return_stats)
    out = _like_x("out", out, x, out=True)
    if x.size == 0:
        raise ValueError(f"x: expected a non-empty array, got shape {x.shape}")
    mean, invstd = _group_stats(x, N, C, S, nhwc, G, eps)
    y = empty_like_pooled(x) if out is None else out
    _core.norm_apply(x, y, None, N, C, S, nhwc, True, _expand(mean, C, G), _expand(invstd, C, G),
                     weight, bias, relu)
    return (y, mean, invstd) if return_stats else y


@renamed_kwargs(grad_out="grad_output")
@accepts_dlpack
def group_norm_backward(grad_output: np.ndarray, x: np.ndarray, num_groups: int, weight: np.ndarray | None,
                        save_mean: np.ndarray, save_invstd: np.ndarray, *, y: np.ndarray | None = None,
                        bias: np.ndarray | None = None, activation: str | None = None,
                        layout: str = "NCHW", needs: str | Sequence[str] = ("input", "weight", "bias"),
                        out: np.ndarray | None = None
                        ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`group_norm`.

    With ``g = grad_output`` (masked by ``y > 0`` for a fused ReLU), ``gw = g * weight`` and sums
    over a sample's group (M values)::

        grad_input = invstd * (gw - sum(gw)/M - xhat * sum(gw*xhat)/M)
        grad_weight = sum over n, s of g*xhat;  grad_bias = sum over n, s of g

    Parameters
    ----------
    grad_output : ndarray
        The gradient of the forward output: x's shape and dtype.
    x, num_groups, weight, bias, activation, layout
        As given to :func:`group_norm`.
    save_mean, save_invstd : ndarray, float64 (N, num_groups)
        From ``group_norm(..., return_stats=True)``.
    y : ndarray like x, optional
        The forward output, for the ReLU mask (recomputed when None).
    needs : names from ("input", "weight", "bias")
    out : ndarray like x, optional
        Receives grad_input.

    Returns
    -------
    grad_input : ndarray or None
        x's shape and dtype.
    grad_weight, grad_bias : ndarray (C,) or None
        x's dtype; None when not in ``needs`` or when weight is None.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    >>> w = np.ones(4, np.float32)
    >>> y, mean, invstd = cnnkit.group_norm(x, 2, w, None, return_stats=True)
    >>> gx, gw, gb = cnnkit.group_norm_backward(np.ones_like(x), x, 2, w, mean, invstd)
    >>> gx.shape, gw.shape, bool(np.abs(gx).max() < 1e-5)
    ((2, 4, 3, 3), (4,), True)
    """
    x, N, C, S, nhwc, G, weight, bias, _, relu = _group_args(x, num_groups, weight, bias, 1e-5,
                                                            activation, layout)
    grad_output = _like_x("grad_output", grad_output, x)
    if grad_output is None:
        raise TypeError("grad_output: expected an array like x, got None")
    y = _like_x("y", y, x)
    needs = _needs(needs)
    out = _like_x("out", out, x, out=True)
    if "residual" in needs:
        raise ValueError("needs: group_norm has no residual input")
    mean = _stats_shape("save_mean", save_mean, (N, G))
    invstd = _stats_shape("save_invstd", save_invstd, (N, G))
    m_nc, i_nc = _expand(mean, C, G), _expand(invstd, C, G)
    mask = None
    if relu:
        if y is not None:
            mask = y
        else:
            mask = empty_like_pooled(x)
            _core.norm_apply(x, mask, None, N, C, S, nhwc, True, m_nc, i_nc, weight, bias, False)
    sg, sgx = _core.norm_backward_reduce(grad_output, x, mask, N, C, S, nhwc, True, m_nc)
    sg, sgx = sg.reshape(N, C), sgx.reshape(N, C)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    grad_x = None
    if "input" in needs:
        M = (C // G) * S
        s_gw = (sg * w).reshape(N, G, C // G).sum(axis=2)
        s_gwx = (sgx * w).reshape(N, G, C // G).sum(axis=2)
        A = (i_nc.reshape(N, C) * w).ravel()
        B = _expand(invstd * s_gw / M, C, G)
        D = _expand(invstd ** 3 * s_gwx / M, C, G)
        grad_x = empty_like_pooled(x) if out is None else out
        _core.norm_backward_apply(grad_output, x, mask, grad_x, None, N, C, S, nhwc, True, m_nc, A,
                                  B, D)
    affine = weight is not None
    gw = (sgx * i_nc.reshape(N, C)).sum(axis=0).astype(x.dtype) if affine and "weight" in needs else None
    gb = sg.sum(axis=0).astype(x.dtype) if affine and "bias" in needs else None
    return grad_x, gw, gb


# ---- folding -----------------------------------------------------------------------------------

@accepts_dlpack
def fold_batch_norm(conv_weight: np.ndarray, conv_bias: np.ndarray | None, bn_weight: np.ndarray | None,
                    bn_bias: np.ndarray | None, running_mean: np.ndarray, running_var: np.ndarray,
                    eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    r"""Fold an inference batch norm into the preceding convolution.

    ``w' = w * s`` per output channel and ``b' = (b - running_mean) * s + bn_bias`` with
    ``s = bn_weight / sqrt(running_var + eps)``; ``conv_bias=None`` means 0, ``bn_weight`` /
    ``bn_bias`` None mean 1 / 0. Works for grouped and depthwise weights
    ``(C_out, C_in/groups, kH, kW)``: the scale is per output channel. Computed in float64 and
    returned in conv_weight's dtype; the inputs are not modified.

    Parameters
    ----------
    conv_weight : ndarray, float32 or float64
        ``(C_out, C_in/groups, kH, kW)`` (any shape with C_out first).
    conv_bias : ndarray (C_out,) or None
    bn_weight, bn_bias : ndarray (C_out,) or None
    running_mean, running_var : ndarray (C_out,)
        The batch norm's running statistics (float arrays; variances >= 0).
    eps : float > 0

    Returns
    -------
    weight : ndarray
        conv_weight's shape and dtype.
    bias : ndarray (C_out,)
        conv_weight's dtype.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> w = np.ones((2, 1, 1, 1), np.float32)
    >>> rm, rv = np.array([1.0, 2.0], np.float32), np.array([4.0, 1.0], np.float32)
    >>> fw, fb = cnnkit.fold_batch_norm(w, None, None, None, rm, rv, eps=1e-12)
    >>> fw.ravel().tolist(), fb.tolist()
    ([0.5, 1.0], [-0.5, -2.0])
    """
    check_float_array("conv_weight", conv_weight)
    if conv_weight.ndim < 2:
        raise ValueError(f"conv_weight: expected shape (C_out, C_in/groups, ...), got {conv_weight.shape}")
    C = conv_weight.shape[0]
    dt = conv_weight.dtype

    def per_channel(name, a, default, required=False):
        if a is None:
            if required:
                raise TypeError(f"{name}: expected an array of shape ({C},), got None")
            return np.full(C, default, dtype=np.float64)
        check_float_array(name, a, what=f"of shape ({C},)")
        if a.shape != (C,):
            raise ValueError(f"{name}: expected shape ({C},) (C_out of conv_weight), got {a.shape}")
        return a.astype(np.float64)

    b = per_channel("conv_bias", conv_bias, 0.0)
    g = per_channel("bn_weight", bn_weight, 1.0)
    beta = per_channel("bn_bias", bn_bias, 0.0)
    rm = per_channel("running_mean", running_mean, 0.0, required=True)
    rv = per_channel("running_var", running_var, 1.0, required=True)
    eps = _eps(eps)
    if np.any(rv < 0):
        raise ValueError("running_var: expected values >= 0")
    s = g / np.sqrt(rv + eps)
    w = conv_weight.astype(np.float64) * s.reshape((C,) + (1,) * (conv_weight.ndim - 1))
    return w.astype(dt), ((b - rm) * s + beta).astype(dt)
