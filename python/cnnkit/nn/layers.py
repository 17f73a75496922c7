"""Layers on cnnkit's kernels (float32; NCHW by default, NHWC with ``layout="NHWC"``).

Initialization follows PyTorch's defaults (Kaiming-uniform weights with a=sqrt(5), uniform
biases in +-1/sqrt(fan_in); batch/group norm weight 1, bias 0), drawn from the ``rng`` given
(a ``numpy.random.Generator``; default a fresh one).
"""
from __future__ import annotations

import math

import numpy as np

from .. import _core, ops
from .._core import pool2d_backward as _pool_backward
from .._validate import check_int
from ..ops.conv import _padding as _conv_padding
from ..ops.conv import _pair as _conv_pair
from .._core import pool2d_forward as _pool_forward
from .module import Module, Sequential

__all__ = ["Conv2d", "DepthwiseSeparableConv2d", "BatchNorm2d", "GroupNorm", "ReLU", "MaxPool2d", "AvgPool2d",
           "GlobalAvgPool2d", "Flatten", "Linear", "Dropout", "SpatialDropout2d", "ResidualBlock",
           "BottleneckBlock"]

_LAYOUTS = ("NCHW", "NHWC")


def _layout(layout):
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
    return layout


def _rng(rng):
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _kaiming_uniform(rng, shape, fan_in):
    # torch.nn.init.kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def _positive_int(name, v):
    return check_int(name, v, 1, "a positive int")


def _conv_geometry(kernel_size, stride, padding, dilation):
    """(kernel_size, stride, dilation) as pairs, checked as :func:`cnnkit.conv2d` checks them
    (ints or pairs of ints >= 1; TypeError / ValueError naming the argument), and ``padding``
    too (an int or pair >= 0, "same" (stride 1 only) or "valid"), at construction."""
    k = _conv_pair(kernel_size, "kernel_size", 1)
    s = _conv_pair(stride, "stride", 1)
    d = _conv_pair(dilation, "dilation", 1)
    _conv_padding(padding, k, d, s)
    return k, s, d


def _check_input(module, x, C, layout, ndim=4):
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x: expected a float32 numpy.ndarray, got "
                        f"{x.dtype if isinstance(x, np.ndarray) else type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"x: expected a {ndim}-D input, got shape {x.shape}")
    if C is not None:
        got = x.shape[1] if (ndim == 2 or layout == "NCHW") else x.shape[-1]
        if got != C:
            where = "axis 1" if (ndim == 2 or layout == "NCHW") else "the last axis"
            raise ValueError(f"x: {type(module).__name__} expects {C} channels on {where}, got shape {x.shape}")


class _ReLUMode:
    """``relu_mode`` ("standard", "guided" or "deconvnet"; see :meth:`Module.set_relu_backward`)
    and ``guided``, the flag form of ``relu_mode == "guided"``."""

    relu_mode = "standard"

    @property
    def guided(self):
        return self.relu_mode == "guided"

    @guided.setter
    def guided(self, enabled):
        self.relu_mode = "guided" if enabled else "standard"

    def _relu_grad(self, grad):
        """(gradient to pass on, whether the forward ReLU mask still applies)."""
        if self.relu_mode == "standard" or getattr(self, "activation", "relu") != "relu":
            return grad, True
        grad = np.maximum(grad, 0, out=self._buf("guided", grad.shape, grad.dtype))
        return grad, self.relu_mode == "guided"


class Conv2d(Module):
    """``torch.nn.Conv2d`` on :func:`cnnkit.conv2d`: weight (C_out, C_in/groups, kH, kW), bias (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, layout="NCHW", rng=None):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.groups = _positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: {groups} must divide in_channels {in_channels} and out_channels {out_channels}")
        k, _, _ = _conv_geometry(kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = k, stride, padding, dilation
        self.layout = _layout(layout)
        rng = _rng(rng)
        fan_in = (in_channels // groups) * k[0] * k[1]
        self._param("weight", _kaiming_uniform(rng, (out_channels, in_channels // groups) + k, fan_in))
        self.has_bias = bool(bias)
        if self.has_bias:
            self._param("bias", _kaiming_uniform(rng, (out_channels,), fan_in))
        self._pack()

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    layout=self.layout)

    def _out_shape(self, x_shape, weight_shape, **kw):
        """The output shape for this input shape, computed once per input shape."""
        key = tuple(x_shape)
        if self._ws.get("shape_of") != key:
            self._ws["shape_of"], self._ws["out_shape"] = key, ops.conv2d_output_shape(key, weight_shape, **kw)
        return self._ws["out_shape"]

    def forward(self, x):
        _check_input(self, x, self.in_channels, self.layout)
        shape = self._out_shape(x.shape, self.params["weight"].shape, stride=self.stride, padding=self.padding,
                                dilation=self.dilation, groups=self.groups, layout=self.layout)
        self._x = x
        y = self._buf("y", shape)
        return ops.conv2d(x, self.params["weight"], self.params.get("bias"), out=y, **self._args())

    def backward(self, grad, input_grad=True):
        needs = ("input",) if input_grad else ()
        if self.param_grads:
            needs += ("weight", "bias") if self.has_bias else ("weight",)
        if not needs:
            return None
        gi = self._buf("gx", self._x.shape) if input_grad else None
        pg = self.param_grads
        out = (gi, self.grads["weight"] if pg else None, self.grads.get("bias") if pg else None)
        ops.conv2d_backward(grad, self._x, self.params["weight"], needs=needs, out=out, **self._args())
        return gi

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.has_bias}, layout={self.layout!r}")


class DepthwiseSeparableConv2d(Module):
    """Depthwise k x k conv (groups = C_in) then pointwise 1x1 conv, fused in
    :func:`cnnkit.depthwise_separable_conv2d` (the intermediate stays in cache). Parameters in
    torch order: depthwise weight, depthwise bias, pointwise weight, pointwise bias."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True, *,
                 layout="NCHW", rng=None):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        k, _, _ = _conv_geometry(kernel_size, stride, padding, 1)
        self.kernel_size, self.stride, self.padding = k, stride, padding
        self.layout = _layout(layout)
        self.has_bias = bool(bias)
        rng = _rng(rng)
        self._param("dw_weight", _kaiming_uniform(rng, (in_channels, 1) + k, k[0] * k[1]))
        if self.has_bias:
            self._param("dw_bias", _kaiming_uniform(rng, (in_channels,), k[0] * k[1]))
        self._param("pw_weight", _kaiming_uniform(rng, (out_channels, in_channels, 1, 1), in_channels))
        if self.has_bias:
            self._param("pw_bias", _kaiming_uniform(rng, (out_channels,), in_channels))
        self._pack()

    def forward(self, x):
        _check_input(self, x, self.in_channels, self.layout)
        p = self.params
        self._x = x
        dws = ops.conv2d_output_shape(x.shape, p["dw_weight"].shape, self.stride, self.padding,
                                      groups=self.in_channels, layout=self.layout)
        shape = (dws[0], self.out_channels) + dws[2:] if self.layout == "NCHW" else dws[:3] + (self.out_channels,)
        y = self._buf("y", shape)
        return ops.depthwise_separable_conv2d(x, p["dw_weight"], p["pw_weight"], p.get("dw_bias"), p.get("pw_bias"),
                                              stride=self.stride, padding=self.padding, layout=self.layout, out=y,
                                              workspace=self._ws.setdefault("sep", {}))

    def backward(self, grad, input_grad=True):
        p, g = self.params, self.grads
        gi, gdw, gpw, gdwb, gpwb = ops.depthwise_separable_conv2d_backward(
            grad, self._x, p["dw_weight"], p["pw_weight"], p.get("dw_bias"), stride=self.stride,
            padding=self.padding, layout=self.layout, workspace=self._ws.setdefault("sep", {}))
        g["dw_weight"][...] = gdw
        g["pw_weight"][...] = gpw
        if self.has_bias:
            g["dw_bias"][...] = gdwb
            g["pw_bias"][...] = gpwb
        return gi if input_grad else None


class BatchNorm2d(_ReLUMode, Module):
    """``torch.nn.BatchNorm2d`` on cnnkit's fused kernels, with an optional fused ReLU
    (``activation="relu"``) and residual input (``forward(x, residual)``: added before the
    activation). Running statistics are buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``); eval mode uses them."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, activation=None, layout="NCHW"):
        super().__init__()
        self.num_features = _positive_int("num_features", num_features)
        if momentum is not None and not (isinstance(momentum, (int, float, np.floating)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum: expected a number in [0, 1] or None (cumulative average), got {momentum!r}")
        self.eps, self.affine = float(eps), bool(affine)
        self.momentum = None if momentum is None else float(momentum)
        if activation not in (None, "relu"):
            raise ValueError(f"activation: expected None or 'relu', got {activation!r}")
        self.activation = activation
        self.layout = _layout(layout)
        if self.affine:
            self._param("weight", np.ones(num_features))
            self._param("bias", np.zeros(num_features))
        self._buffer("running_mean", np.zeros(num_features, np.float32))
        self._buffer("running_var", np.ones(num_features, np.float32))
        self._buffer("num_batches_tracked", np.zeros((), np.int64))
        self._pack()

    def forward(self, x, residual=None):
        _check_input(self, x, self.num_features, self.layout)
        p, b = self.params, self.buffers
        y = self._buf("y", x.shape)
        self._x, self._residual = x, residual
        if self.training:
            b["num_batches_tracked"] += 1
            # momentum None: torch's cumulative moving average, factor 1 / batches seen
            momentum = 1.0 / float(b["num_batches_tracked"]) if self.momentum is None else self.momentum
            y, self._mean, self._invstd = ops.batch_norm_train(
                x, p.get("weight"), p.get("bias"), b["running_mean"], b["running_var"], momentum=momentum,
                eps=self.eps, activation=self.activation, residual=residual, layout=self.layout, out=y)
            self._trained = True
        else:
            y = ops.batch_norm_infer(x, p.get("weight"), p.get("bias"), b["running_mean"], b["running_var"],
                                     eps=self.eps, activation=self.activation, residual=residual, layout=self.layout,
                                     out=y)
            self._trained = False
        self._y = y
        return y

    def _eval_backward(self, grad, masked):
        """Gradients in eval mode (fixed running statistics: an affine map per channel), as torch
        gives them; used by interpretability methods on trained models. ``masked``: apply the
        fused ReLU's mask (False for deconvnet). The input gradient ``g * (weight * invstd)[c]``
        (g masked by ``y > 0`` for a fused ReLU; the masked g is also the residual's gradient) is
        one compiled pass: the norm backward kernel with B = D = 0."""
        C = self.num_features
        x = self._x
        nhwc = self.layout == "NHWC"
        N, S = x.shape[0], x.shape[2] * (x.shape[3] if not nhwc else x.shape[1])
        b = self.buffers
        invstd = (1.0 / np.sqrt(b["running_var"].astype(np.float64) + self.eps))
        w = self.params["weight"].astype(np.float64) if self.affine else np.ones(C)
        mask = self._y if (self.activation == "relu" and masked) else None
        grad = np.ascontiguousarray(grad, dtype=np.float32)
        gi = self._buf("gx", x.shape)
        gres = self._buf("gres", x.shape) if self._residual is not None else None
        zeros = np.zeros(C)
        _core.norm_backward_apply(grad, x, mask, gi, gres, N, C, S, nhwc, False, zeros, w * invstd, zeros, zeros)
        self.residual_grad = gres
        if self.affine and self.param_grads:
            shape = (1, C, 1, 1) if not nhwc else (1, 1, 1, C)
            axes = (0, 2, 3) if not nhwc else (0, 1, 2)
            g64 = grad.astype(np.float64)
            if mask is not None:
                g64 *= mask > 0
            xhat = (x - b["running_mean"].reshape(shape)) * invstd.reshape(shape)
            self.grads["weight"][...] = np.sum(g64 * xhat, axis=axes)
            self.grads["bias"][...] = np.sum(g64, axis=axes)
        return gi

    def backward(self, grad, input_grad=True):
        grad, masked = self._relu_grad(grad)
        if not self._trained:
            return self._eval_backward(grad, masked)
        if not masked:
            raise ValueError("relu_mode: 'deconvnet' needs batch norm in eval mode (call model.eval())")
        needs = ["input"]
        if self.affine and self.param_grads:
            needs += ["weight", "bias"]
        if self._residual is not None:
            needs.append("residual")
        gi = self._buf("gx", self._x.shape)
        gres = self._buf("gres", self._x.shape) if self._residual is not None else None
        res = ops.batch_norm_backward(grad, self._x, self.params.get("weight"), self._mean, self._invstd, y=self._y,
                                      bias=self.params.get("bias"), residual=self._residual,
                                      activation=self.activation, layout=self.layout, needs=tuple(needs), out=gi,
                                      out_residual=gres)
        if self.affine and self.param_grads:
            self.grads["weight"][...] = res[1]
            self.grads["bias"][...] = res[2]
        self.residual_grad = res[3] if self._residual is not None else None
        return res[0]

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, activation={self.activation!r}"


class GroupNorm(_ReLUMode, Module):
    """``torch.nn.GroupNorm`` (statistics per sample and group), optional fused ReLU."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, activation=None, layout="NCHW"):
        super().__init__()
        self.num_groups = _positive_int("num_groups", num_groups)
        self.num_channels = _positive_int("num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"num_groups: {num_groups} must divide num_channels {num_channels}")
        if activation not in (None, "relu"):
            raise ValueError(f"activation: expected None or 'relu', got {activation!r}")
        self.eps, self.affine, self.activation = float(eps), bool(affine), activation
        self.layout = _layout(layout)
        if self.affine:
            self._param("weight", np.ones(num_channels))
            self._param("bias", np.zeros(num_channels))
        self._pack()

    def forward(self, x):
        _check_input(self, x, self.num_channels, self.layout)
        p = self.params
        self._x = x
        y, self._mean, self._invstd = ops.group_norm(x, self.num_groups, p.get("weight"), p.get("bias"), self.eps,
                                                     activation=self.activation, layout=self.layout,
                                                     return_stats=True, out=self._buf("y", x.shape))
        self._y = y
        return y

    def backward(self, grad, input_grad=True):
        grad, masked = self._relu_grad(grad)
        needs = ("input", "weight", "bias") if self.affine and self.param_grads else ("input",)
        gi, gw, gb = ops.group_norm_backward(grad, self._x, self.num_groups, self.params.get("weight"), self._mean,
                                             self._invstd, y=self._y, bias=self.params.get("bias"),
                                             activation=self.activation if masked else None, layout=self.layout,
                                             needs=needs, out=self._buf("gx", self._x.shape))
        if self.affine and self.param_grads:
            self.grads["weight"][...] = gw
            self.grads["bias"][...] = gb
        return gi


class ReLU(_ReLUMode, Module):
    """max(x, 0); ``guided`` (see :meth:`Module.set_guided_backprop`) passes back only positive
    gradients through positive activations."""

    def forward(self, x):
        _check_input(self, x, None, "NCHW", ndim=x.ndim if isinstance(x, np.ndarray) else 4)
        y = np.maximum(x, 0, out=self._buf("y", x.shape, x.dtype))
        self._y = y
        return y

    def backward(self, grad, input_grad=True):
        gi = self._buf("gx", grad.shape, grad.dtype)
        if self.relu_mode == "deconvnet":
            return np.maximum(grad, 0, out=gi)
        mask = np.greater(self._y, 0, out=self._buf("mask", self._y.shape, np.bool_))
        if self.relu_mode == "guided":
            np.maximum(grad, 0, out=gi)
            return np.multiply(gi, mask, out=gi)
        return np.multiply(grad, mask, out=gi)


def _pool_out(size, k, s, p, ceil_mode):
    """torch's pooled size: floor (or ceil) of (size + 2p - k)/s + 1; with ceil_mode the last
    window must start inside the input or its left padding."""
    span = size + 2 * p - k
    if span < 0:
        return 0
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(x, k, s, p, layout, ceil_mode=False):
    N = x.shape[0]
    C, H, W = (x.shape[1], x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[3], x.shape[1], x.shape[2])
    OH = _pool_out(H, k[0], s[0], p[0], ceil_mode)
    OW = _pool_out(W, k[1], s[1], p[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"x: the {k[0]}x{k[1]} pooling window does not fit the {H}x{W} input (padding {p})")
    return N, C, H, W, OH, OW


def _pair(name, v, lo):
    """An int or a pair of ints >= lo, as a pair (TypeError for a wrong type, ValueError below lo)."""
    return _conv_pair(v, name, lo)


class _Pool2d(Module):
    _mode = 0  # 0 max; 1 average counting the padding (torch's default), 2 average without it

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, *, layout="NCHW"):
        super().__init__()
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding: must be at most half the kernel size, got {padding} for {kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self.layout = _layout(layout)

    def forward(self, x):
        _check_input(self, x, None, self.layout)
        N, C, H, W, OH, OW = _pool_geometry(x, self.kernel_size, self.stride, self.padding, self.layout,
                                            self.ceil_mode)
        shape = (N, C, OH, OW) if self.layout == "NCHW" else (N, OH, OW, C)
        y = self._buf("y", shape)
        self._x = x
        key = (N, C, H, W, OH, OW, *self.kernel_size, *self.stride, *self.padding, self.layout == "NHWC")
        if key != getattr(self, "_geo_key", None):  # a training loop sees the same shapes every step
            self._geo, self._geo_key = _core.PoolGeom(*key), key
        idx = self._buf("idx", shape, np.int32) if self._mode == 0 else None
        _pool_forward(np.ascontiguousarray(x), y, idx, self._geo, self._mode)
        self._idx = idx
        return y

    def backward(self, grad, input_grad=True):
        gi = self._buf("gx", self._x.shape)
        _pool_backward(np.ascontiguousarray(grad), gi, self._idx, self._geo, self._mode)
        return gi

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d`` (padding is -inf; the gradient goes to the first maximum;
    ``ceil_mode`` as torch's)."""
    _mode = 0


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d``: ``count_include_pad`` (default True) counts the padded zeros in the
    divisor; ``ceil_mode`` as torch's (a window running past the padding divides by its clipped size)."""
    _mode = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *,
                 layout="NCHW"):
        super().__init__(kernel_size, stride, padding, ceil_mode, layout=layout)
        self.count_include_pad = bool(count_include_pad)
        self._mode = 1 if self.count_include_pad else 2


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (N, C, H, W) or (N, H, W, C) -> (N, C) (compiled; summed in
    double)."""

    def __init__(self, *, layout="NCHW"):
        super().__init__()
        self.layout = _layout(layout)

    def forward(self, x):
        _check_input(self, x, None, self.layout)
        self._shape = x.shape
        N, C, S = self._geometry()
        y = self._buf("y", (N, C))
        _core.global_avg_pool_forward(np.ascontiguousarray(x), y, N, C, S, self.layout == "NHWC")
        return y

    def _geometry(self):
        N = self._shape[0]
        C = self._shape[1] if self.layout == "NCHW" else self._shape[3]
        S = self._shape[2] * self._shape[3] if self.layout == "NCHW" else self._shape[1] * self._shape[2]
        return N, C, S

    def backward(self, grad, input_grad=True):
        N, C, S = self._geometry()
        gi = self._buf("gx", self._shape)
        _core.global_avg_pool_backward(np.ascontiguousarray(grad, dtype=np.float32), gi, N, C, S,
                                       self.layout == "NHWC")
        return gi


class Flatten(Module):
    """(N, ...) -> (N, prod). NHWC input is flattened in NCHW order (as the PyTorch model would)."""

    def __init__(self, *, layout="NCHW"):
        super().__init__()
        self.layout = _layout(layout)

    def forward(self, x):
        _check_input(self, x, None, self.layout, ndim=x.ndim if isinstance(x, np.ndarray) else 4)
        if x.ndim < 2:
            raise ValueError(f"x: expected at least 2 dimensions (N, ...), got shape {x.shape}")
        self._shape = x.shape
        if self.layout == "NHWC" and x.ndim == 4:
            y = self._buf("y", (x.shape[0], x.shape[3], x.shape[1], x.shape[2]))
            y[...] = x.transpose(0, 3, 1, 2)
            return y.reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, input_grad=True):
        if self.layout == "NHWC" and len(self._shape) == 4:
            N, H, W, C = self._shape
            gi = self._buf("gx", self._shape)
            gi[...] = grad.reshape(N, C, H, W).transpose(0, 2, 3, 1)
            return gi
        return grad.reshape(self._shape)


class Linear(Module):
    """``torch.nn.Linear``: y = x W^T + b, weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, *, rng=None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        rng = _rng(rng)
        self._param("weight", _kaiming_uniform(rng, (out_features, in_features), in_features))
        self.has_bias = bool(bias)
        if self.has_bias:
            self._param("bias", _kaiming_uniform(rng, (out_features,), in_features))
        self._pack()

    def forward(self, x):
        _check_input(self, x, self.in_features, "NCHW", ndim=2)
        self._x = x
        y = np.matmul(x, self.params["weight"].T, out=self._buf("y", (x.shape[0], self.out_features)))
        if self.has_bias:
            y += self.params["bias"]
        return y

    def backward(self, grad, input_grad=True):
        if self.param_grads:
            np.matmul(grad.T, self._x, out=self.grads["weight"])
            if self.has_bias:
                np.sum(grad, axis=0, out=self.grads["bias"])
        if not input_grad:
            return None
        return np.matmul(grad, self.params["weight"], out=self._buf("gx", self._x.shape))

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.has_bias}"


class _DropoutBase(Module):
    def __init__(self, p=0.5, *, seed=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def backward(self, grad, input_grad=True):
        if self._scale is None:
            return grad
        return np.multiply(grad, self._scale, out=self._buf("gx", grad.shape))


class Dropout(_DropoutBase):
    """``torch.nn.Dropout``: each element zeroed with probability p, survivors scaled by 1/(1-p);
    identity in eval mode. Its own Generator (``seed``)."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        scale = self._buf("scale", x.shape)
        np.multiply(keep, np.float32(1.0 / (1.0 - self.p)) if self.p < 1 else np.float32(0), out=scale)
        self._scale = scale
        return np.multiply(x, scale, out=self._buf("y", x.shape))


class SpatialDropout2d(_DropoutBase):
    """``torch.nn.Dropout2d``: whole channels zeroed (:func:`cnnkit.augment.spatial_dropout`)."""

    def __init__(self, p=0.5, *, layout="NCHW", seed=None):
        super().__init__(p, seed=seed)
        self.layout = _layout(layout)

    def forward(self, x):
        from ..augment.functional import spatial_dropout
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        y, scale = spatial_dropout(x, self.p, self.rng, True, layout=self.layout, out=self._buf("y", x.shape))
        s = scale.astype(np.float32)
        self._scale = s[:, :, None, None] if self.layout == "NCHW" else s[:, None, None, :]
        return y


def _norm(kind, C, layout, activation=None, groups=8):
    if kind == "batch":
        return BatchNorm2d(C, activation=activation, layout=layout)
    if kind == "group":
        return GroupNorm(math.gcd(groups, C), C, activation=activation, layout=layout)
    raise ValueError(f"norm: expected 'batch', 'group' or None, got {kind!r}")


def _shortcut(in_channels, out_channels, stride, norm, layout, rng):
    """None (identity) or conv1x1(stride) [- norm] when the block changes the shape."""
    if stride == 1 and in_channels == out_channels:
        return None
    sc = [Conv2d(in_channels, out_channels, 1, stride, 0, bias=norm is None, layout=layout, rng=rng)]
    if norm:
        sc.append(_norm(norm, out_channels, layout))
    return Sequential(*sc)


class _Residual(Module):
    """The shared tail of the residual blocks: the last norm adds the shortcut ``r`` (fused into
    batch norm with the ReLU; otherwise an add then a ReLU), and its adjoint."""

    _order = ()  # the main path's sub-modules, in torch's order (absent ones are None)

    def children(self):
        names = {"shortcut": "downsample", "post": "relu"}
        return [(names.get(a, a), getattr(self, a)) for a in self._order + ("shortcut", "post")
                if getattr(self, a) is not None]

    def _merge(self, h, r, last_norm):
        if self.norm == "batch":
            return last_norm(h, r)
        if last_norm is not None:
            h = last_norm(h)
        s = self._buf("sum", h.shape)
        np.add(h, r, out=s)
        return self.post(s)

    def _unmerge(self, grad, last_norm):
        """(gradient into the last norm's input, gradient into the shortcut)."""
        if self.norm == "batch":
            return last_norm._backward(grad), last_norm.residual_grad
        gs = self.post._backward(grad)
        return (last_norm._backward(gs) if last_norm is not None else gs), gs

    def _add_shortcut_grad(self, gi, gr):
        gsc = gr if self.shortcut is None else self.shortcut._backward(gr, input_grad=True)
        return np.add(gi, gsc, out=self._buf("gx", gi.shape))


class ResidualBlock(_Residual):
    """torchvision's BasicBlock: conv3x3(stride) - norm - ReLU - conv3x3 - norm, plus the shortcut
    (identity, or conv1x1(stride) - norm when the shape changes), then ReLU. ``groups`` makes both
    3x3 convs grouped; ``norm`` is "batch", "group" or None (convs get biases). The ReLUs are fused
    into the norms (batch norm also takes the residual) when there is a norm."""

    _order = ("conv1", "bn1", "conv2", "bn2")

    def __init__(self, in_channels, out_channels, stride=1, *, groups=1, norm="batch", layout="NCHW", rng=None):
        super().__init__()
        rng = _rng(rng)
        bias = norm is None
        self.layout = layout
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=bias, layout=layout, rng=rng)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, groups=groups, bias=bias, layout=layout, rng=rng)
        self.norm = norm
        self.bn1 = _norm(norm, out_channels, layout, "relu") if norm else ReLU()
        self.bn2 = _norm(norm, out_channels, layout, None if norm == "group" else "relu") if norm else None
        self.post = ReLU() if norm != "batch" else None  # batch norm fuses residual + ReLU
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm, layout, rng)
        self._pack()

    def forward(self, x):
        r = x if self.shortcut is None else self.shortcut(x)
        h = self.bn1(self.conv1(x))
        return self._merge(self.conv2(h), r, self.bn2)

    def backward(self, grad, input_grad=True):
        g, gr = self._unmerge(grad, self.bn2)
        g = self.conv2._backward(g)
        g = self.bn1._backward(g)
        return self._add_shortcut_grad(self.conv1._backward(g), gr)


class BottleneckBlock(_Residual):
    """ResNeXt's bottleneck: conv1x1 - norm - ReLU - grouped conv3x3(stride) - norm - ReLU -
    conv1x1 - norm, plus the shortcut, then ReLU (``width`` channels inside, ``groups`` groups)."""

    _order = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")

    def __init__(self, in_channels, out_channels, width, stride=1, *, groups=8, norm="batch", layout="NCHW",
                 rng=None):
        super().__init__()
        rng = _rng(rng)
        bias = norm is None
        self.norm = norm
        self.conv1 = Conv2d(in_channels, width, 1, bias=bias, layout=layout, rng=rng)
        self.bn1 = _norm(norm, width, layout, "relu") if norm else ReLU()
        self.conv2 = Conv2d(width, width, 3, stride, 1, groups=groups, bias=bias, layout=layout, rng=rng)
        self.bn2 = _norm(norm, width, layout, "relu") if norm else ReLU()
        self.conv3 = Conv2d(width, out_channels, 1, bias=bias, layout=layout, rng=rng)
        self.bn3 = _norm(norm, out_channels, layout, "relu" if norm == "batch" else None) if norm else None
        self.post = ReLU() if norm != "batch" else None
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm, layout, rng)
        self._pack()

    def forward(self, x):
        r = x if self.shortcut is None else self.shortcut(x)
        h = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self._merge(self.conv3(h), r, self.bn3)

    def backward(self, grad, input_grad=True):
        g, gr = self._unmerge(grad, self.bn3)
        g = self.conv3._backward(g)
        g = self.conv2._backward(self.bn2._backward(g))
        return self._add_shortcut_grad(self.conv1._backward(self.bn1._backward(g)), gr)
