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

import numpy as np

from .. import _core
from .._validate import check_int, check_real

__all__ = ["batch_norm_train", "batch_norm_infer", "batch_norm_backward", "group_norm",
           "group_norm_backward", "fold_batch_norm"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NEEDS = ("input", "weight", "bias", "residual")


# ---- argument checks ---------------------------------------------------------------------------

def _as_x(x, name="x"):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (N, C) or (N, C, *spatial), got {x.shape}")
    return np.ascontiguousarray(x)


def _geometry(x, layout):
    """(N, C, S, nhwc) of x in `layout`; a 2-D (N, C) input is channels-last by nature."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout: expected 'NCHW' or 'NHWC', got {layout!r}")
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
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of shape ({C},), got {type(a).__name__}")
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
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
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
    if activation not in (None, "relu"):
        raise ValueError(f"activation: expected None or 'relu', got {activation!r}")
    return activation == "relu"


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
    if isinstance(needs, str):
        needs = (needs,)
    needs = tuple(needs)
    bad = [n for n in needs if n not in _NEEDS]
    if bad:
        raise ValueError(f"needs: expected names from {_NEEDS}, got {bad}")
    return needs


def _stats_shape(name, a, shape):
    """Saved statistics: float64 always (a float32 mean near 1e6 would ruin the backward)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float64:
        raise TypeError(f"{name}: expected the float64 statistics saved by the forward, got dtype "
                        f"{a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


# ---- batch norm --------------------------------------------------------------------------------

def batch_norm_train(x, weight, bias, running_mean, running_var, *, momentum=0.1, eps=1e-5,
                     activation=None, residual=None, layout="NCHW", virtual_batch_size=None,
                     out=None):
    r"""Training-mode batch normalization, with fused ReLU and residual.

    ``y = act((x - mean) / sqrt(var + eps) * weight + bias [+ residual])`` with per-channel
    statistics over the batch and spatial positions (biased variance), as
    ``torch.nn.functional.batch_norm(training=True)``.

    Parameters
    ----------
    x : ndarray, (N, C) or (N, C, *spatial) (NCHW) or (N, *spatial, C) (NHWC), float32/float64
    weight, bias : ndarray (C,) or None (no affine: 1 and 0)
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

    Returns
    -------
    y : ndarray like x
    save_mean, save_invstd : float64 ndarrays, (C,) or (chunks, C) — for :func:`batch_norm_backward`.

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
    residual = _like_x("residual", residual, x)
    out = _like_x("out", out, x, out=True)
    chunks, v = _chunks(virtual_batch_size, N)
    count = v * S
    if count <= 1:
        raise ValueError(f"x: expected more than 1 value per channel when training, got input "
                         f"shape {x.shape}" + (f" in chunks of {v}" if chunks > 1 else ""))
    y = np.empty_like(x) if out is None else out
    unbias = count / (count - 1)
    if virtual_batch_size is None:
        mean, var = _core.norm_stats(x, N, C, S, nhwc, False)
        invstd = _core.norm_invstd(var, eps)
        _core.norm_apply(x, y, residual, N, C, S, nhwc, False, mean, invstd, weight, bias, relu)
        _core.norm_update_running(running_mean, running_var, mean, var, momentum, unbias)
        return y, mean, invstd
    means, invstds, vars_ = [], [], []
    for k in range(chunks):
        sl = slice(k * v, (k + 1) * v)
        xk = x[sl]
        mean, var = _core.norm_stats(xk, v, C, S, nhwc, False)
        invstd = _core.norm_invstd(var, eps)
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
    return y, mean, invstd


def batch_norm_infer(x, weight, bias, running_mean, running_var, *, eps=1e-5, activation=None,
                     residual=None, layout="NCHW", out=None):
    r"""Inference-mode batch normalization with the running statistics, one pass over x.

    ``y = act((x - running_mean) / sqrt(running_var + eps) * weight + bias [+ residual])``.
    Arguments as :func:`batch_norm_train`; running_mean and running_var are required.
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
    mean = running_mean.astype(np.float64)
    invstd = _core.norm_invstd(running_var, eps)  # ValueError for a negative or NaN variance
    y = np.empty_like(x) if out is None else out
    if x.size == 0:
        return y
    _core.norm_apply(x, y, residual, N, C, S, nhwc, False, mean, invstd, weight, bias, relu)
    return y


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, *, y=None, bias=None,
                        residual=None, activation=None, layout="NCHW",
                        needs=("input", "weight", "bias"), virtual_batch_size=None, out=None,
                        out_residual=None):
    r"""Gradients of :func:`batch_norm_train` (training mode: the statistics depend on x).

    With ``g = grad_out`` (masked by ``y > 0`` for a fused ReLU) and per-channel sums over the
    batch and spatial positions::

        grad_bias   = sum(g)
        grad_weight = sum(g * xhat)
        grad_input  = weight*invstd * (g - sum(g)/n - xhat * sum(g*xhat)/n)

    Parameters
    ----------
    grad_out, x : ndarrays like the forward's x
    weight : ndarray (C,) or None (no affine: grad_weight and grad_bias are None)
    save_mean, save_invstd : from :func:`batch_norm_train`
    y : the forward output, for the ReLU mask; if None with ``activation="relu"`` the mask is
        recomputed from x, the statistics, weight, ``bias`` and ``residual``.
    needs : names from ("input", "weight", "bias", "residual"); others come back as None.
        With "residual" a 4th value is returned: the residual's gradient (the masked grad_out).
    out : ndarray like x, optional — receives grad_input (a training loop reuses it every step;
        a fresh 100 MB output costs as much in page faults as the kernel itself).
    out_residual : ndarray like x, optional — receives the residual's gradient (with "residual"
        in needs; must not overlap ``out``).

    Returns
    -------
    (grad_input, grad_weight, grad_bias[, grad_residual])
    """
    x = _as_x(x)
    N, C, S, nhwc = _geometry(x, layout)
    dt = x.dtype
    grad_out = _like_x("grad_out", grad_out, x)
    if grad_out is None:
        raise TypeError("grad_out: expected an array like x, got None")
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
            mask = np.empty_like(x)
            for k in range(chunks):
                sl = slice(k * v, (k + 1) * v)
                _core.norm_apply(x[sl], mask[sl], None if residual is None else residual[sl], v,
                                 C, S, nhwc, False, save_mean[k], save_invstd[k], weight, bias,
                                 False)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    count = v * S
    grad_x = (np.empty_like(x) if out is None else out) if "input" in needs else None
    grad_res = (np.empty_like(x) if out_residual is None else out_residual) if "residual" in needs else None
    sum_g = np.zeros(C)
    sum_gxhat = np.zeros(C)
    for k in range(chunks):
        sl = slice(k * v, (k + 1) * v)
        mk = None if mask is None else mask[sl]
        m, inv = save_mean[k], save_invstd[k]
        sg, sgx = _core.norm_backward_reduce(grad_out[sl], x[sl], mk, v, C, S, nhwc, False, m)
        sum_g += sg
        sum_gxhat += sgx * inv
        if grad_x is not None:
            A = w * inv
            B = A * sg / count
            D = A * inv * inv * sgx / count
            _core.norm_backward_apply(grad_out[sl], x[sl], mk, grad_x[sl],
                                      None if grad_res is None else grad_res[sl], v, C, S, nhwc,
                                      False, m, A, B, D)
        elif grad_res is not None:
            np.copyto(grad_res[sl], grad_out[sl] if mk is None else np.where(mk > 0, grad_out[sl], 0))
    affine = weight is not None
    gw = sum_gxhat.astype(dt) if affine and "weight" in needs else None
    gb = sum_g.astype(dt) if affine and "bias" in needs else None
    result = (grad_x, gw, gb)
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


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None,
               layout="NCHW", return_stats=False, out=None):
    r"""Group normalization (``torch.nn.functional.group_norm``), the small-batch alternative.

    Statistics per sample and group of ``C // num_groups`` channels, over those channels and all
    spatial positions (biased variance); then the per-channel affine and optional ReLU.

    Returns ``y``, or ``(y, save_mean, save_invstd)`` (float64, (N, num_groups)) with
    ``return_stats=True``, for :func:`group_norm_backward`. ``out`` (like x) receives y.
    """
    x, N, C, S, nhwc, G, weight, bias, eps, relu = _group_args(x, num_groups, weight, bias, eps,
                                                              activation, layout)
    out = _like_x("out", out, x, out=True)
    if x.size == 0:
        raise ValueError(f"x: expected a non-empty array, got shape {x.shape}")
    mean, invstd = _group_stats(x, N, C, S, nhwc, G, eps)
    y = np.empty_like(x) if out is None else out
    _core.norm_apply(x, y, None, N, C, S, nhwc, True, _expand(mean, C, G), _expand(invstd, C, G),
                     weight, bias, relu)
    return (y, mean, invstd) if return_stats else y


def group_norm_backward(grad_out, x, num_groups, weight, save_mean, save_invstd, *, y=None,
                        bias=None, activation=None, layout="NCHW",
                        needs=("input", "weight", "bias"), out=None):
    r"""Gradients of :func:`group_norm`.

    With ``g = grad_out`` (masked by ``y > 0`` for a fused ReLU), ``gw = g * weight`` and sums
    over a sample's group (M values)::

        grad_input = invstd * (gw - sum(gw)/M - xhat * sum(gw*xhat)/M)
        grad_weight = sum over n, s of g*xhat;  grad_bias = sum over n, s of g

    Returns ``(grad_input, grad_weight, grad_bias)`` (None for what is not in ``needs``, and for
    the affine gradients when weight is None); ``out`` (like x) receives grad_input.
    """
    x, N, C, S, nhwc, G, weight, bias, _, relu = _group_args(x, num_groups, weight, bias, 1e-5,
                                                            activation, layout)
    grad_out = _like_x("grad_out", grad_out, x)
    if grad_out is None:
        raise TypeError("grad_out: expected an array like x, got None")
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
            mask = np.empty_like(x)
            _core.norm_apply(x, mask, None, N, C, S, nhwc, True, m_nc, i_nc, weight, bias, False)
    sg, sgx = _core.norm_backward_reduce(grad_out, x, mask, N, C, S, nhwc, True, m_nc)
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
        grad_x = np.empty_like(x) if out is None else out
        _core.norm_backward_apply(grad_out, x, mask, grad_x, None, N, C, S, nhwc, True, m_nc, A,
                                  B, D)
    affine = weight is not None
    gw = (sgx * i_nc.reshape(N, C)).sum(axis=0).astype(x.dtype) if affine and "weight" in needs else None
    gb = sg.sum(axis=0).astype(x.dtype) if affine and "bias" in needs else None
    return grad_x, gw, gb


# ---- folding -----------------------------------------------------------------------------------

def fold_batch_norm(conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                    eps=1e-5):
    r"""Fold an inference batch norm into the preceding convolution.

    ``w' = w * s`` per output channel and ``b' = (b - running_mean) * s + bn_bias`` with
    ``s = bn_weight / sqrt(running_var + eps)``; ``conv_bias=None`` means 0, ``bn_weight`` /
    ``bn_bias`` None mean 1 / 0. Works for grouped and depthwise weights
    ``(C_out, C_in/groups, kH, kW)``: the scale is per output channel. Computed in float64 and
    returned in conv_weight's dtype; the inputs are not modified.
    """
    if not isinstance(conv_weight, np.ndarray) or conv_weight.dtype not in _FLOATS:
        raise TypeError("conv_weight: expected a float32 or float64 numpy.ndarray")
    if conv_weight.ndim < 2:
        raise ValueError(f"conv_weight: expected shape (C_out, C_in/groups, ...), got {conv_weight.shape}")
    C = conv_weight.shape[0]
    dt = conv_weight.dtype

    def per_channel(name, a, default, required=False):
        if a is None:
            if required:
                raise TypeError(f"{name}: expected an array of shape ({C},), got None")
            return np.full(C, default, dtype=np.float64)
        if not isinstance(a, np.ndarray) or a.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected a float numpy.ndarray of shape ({C},)")
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
