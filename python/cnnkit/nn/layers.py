"""Layers on cnnkit's kernels (float32; NCHW by default, NHWC with ``layout="NHWC"``).

Initialization follows PyTorch's defaults (Kaiming-uniform weights with a=sqrt(5), uniform
biases in +-1/sqrt(fan_in); batch/group norm weight 1, bias 0), drawn from the ``rng`` given
(a ``numpy.random.Generator``; default a fresh one).
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from .. import _core, ops
from .._core import pool2d_backward as _pool_backward
from .._validate import check_bool, check_choice, check_int, check_layout, check_pair, check_real, check_rng, check_seed
from ..ops.conv import _backward_core as _conv_backward_core
from ..ops.conv import _geom as _conv_geom
from ..ops.conv import _padding as _conv_padding
from .._core import pool2d_forward as _pool_forward
from ..ops import fused as _fused
from ..ops.norm import _bn_apply_coefs, _bn_backward_chunk
from .module import Module, Sequential, fusion_enabled

__all__ = ["Conv2d", "DepthwiseSeparableConv2d", "BatchNorm2d", "GroupNorm", "ReLU", "MaxPool2d", "AvgPool2d",
           "GlobalAvgPool2d", "Flatten", "Linear", "Dropout", "SpatialDropout2d", "ResidualBlock",
           "BottleneckBlock"]

_LAYOUTS = ("NCHW", "NHWC")

#: a batch norm is applied in the next convolution's prologue only while every channel's
#: |mean| / std is at most this (beyond it scale * x + shift would cancel digits)
_DEFER_MAX_MEAN_OVER_STD = 16.0

# The batch norm that last wrote each output buffer (by id, as a weak reference; checked with
# ``bn._y is x``): a residual block finds the norm that produced its input, whose backward its first
# convolution's input gradient can then take over (Conv2d._backward_add). A plain dict of
# weakref.ref (C-level lookups: a WeakValueDictionary runs Python code on every access), pruned
# of dead norms when it grows past _NORM_OUTPUTS_PRUNE entries.
_NORM_OUTPUTS: dict[int, weakref.ref] = {}
_NORM_OUTPUTS_PRUNE = 4096


def _note_norm_output(y: np.ndarray, bn: Any) -> None:
    """Record ``bn`` as the writer of ``y`` (see ``_NORM_OUTPUTS``)."""
    if len(_NORM_OUTPUTS) >= _NORM_OUTPUTS_PRUNE and id(y) not in _NORM_OUTPUTS:
        for k in [k for k, r in _NORM_OUTPUTS.items() if r() is None]:
            del _NORM_OUTPUTS[k]
        if len(_NORM_OUTPUTS) >= _NORM_OUTPUTS_PRUNE:  # all alive: forget the oldest half
            for k in list(_NORM_OUTPUTS)[: _NORM_OUTPUTS_PRUNE // 2]:
                del _NORM_OUTPUTS[k]
    _NORM_OUTPUTS[id(y)] = weakref.ref(bn)  # (CPython hands out the object's one plain ref again)


def _producing_norm(x: np.ndarray) -> Any:
    """The training-mode BatchNorm2d with a fused standard ReLU whose last forward output is ``x``
    (that very array), or None."""
    ref = _NORM_OUTPUTS.get(id(x))
    bn = None if ref is None else ref()
    if (bn is None or bn._y is not x or not bn._trained or bn.activation != "relu" or bn.relu_mode != "standard"
            or x.dtype != np.float32 or bn._captures or bn._inject is not None or not _fusable(bn, BatchNorm2d)):
        return None  # (captures and injected gradients want the unmasked gradient at the output)
    return bn


def _layout(layout):
    return check_layout(layout, choices=_LAYOUTS)


def _rng(rng):
    rng = check_rng("rng", rng, allow_none=True)
    return np.random.default_rng() if rng is None else rng


def _kaiming_uniform(rng, shape, fan_in):
    # torch.nn.init.kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def _positive_int(name, v):
    return check_int(name, v, 1, "a positive int")


def _conv_geometry(kernel_size, stride, padding, dilation):
    """(kernel_size, stride, padding, dilation) as a layer keeps them, checked as
    :func:`cnnkit.conv2d` checks them (TypeError / ValueError naming the argument), at
    construction: kernel_size, stride and dilation as pairs of ints >= 1, padding as a pair of
    ints >= 0 or the string "same" (stride 1 only) or "valid", as ``torch.nn.Conv2d`` keeps them."""
    k = check_pair("kernel_size", kernel_size, 1)
    s = check_pair("stride", stride, 1)
    d = check_pair("dilation", dilation, 1)
    _conv_padding(padding, k, d, s)
    return k, s, padding if isinstance(padding, str) else check_pair("padding", padding, 0), d


def _conv_out_shape(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW"):
    """:func:`cnnkit.ops.conv2d_output_shape` with errors naming ``x`` and ``weight``, as forward's."""
    return _conv_geom(tuple(x_shape), tuple(weight_shape), stride, padding, dilation, groups, layout,
                      None).y_shape()


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


class _ReLUMode(Module):
    """``relu_mode`` ("standard", "guided" or "deconvnet"; see :meth:`Module.set_relu_backward`)
    and ``guided``, the flag form of ``relu_mode == "guided"``."""

    relu_mode = "standard"

    @property
    def guided(self) -> bool:
        """Whether the ReLU backward rule is guided backprop (``relu_mode == "guided"``);
        setting it to True/False selects "guided"/"standard"."""
        return self.relu_mode == "guided"

    @guided.setter
    def guided(self, enabled: bool) -> None:
        self.relu_mode = "guided" if enabled else "standard"

    def _relu_grad(self, grad):
        """(gradient to pass on, whether the forward ReLU mask still applies)."""
        if self.relu_mode == "standard" or getattr(self, "activation", "relu") != "relu":
            return grad, True
        grad = np.maximum(grad, 0, out=self._buf("guided", grad.shape, grad.dtype))
        return grad, self.relu_mode == "guided"


class Conv2d(Module):
    """``torch.nn.Conv2d`` on :func:`cnnkit.conv2d`: weight (C_out, C_in/groups, kH, kW), bias (C_out,).

    Parameters
    ----------
    in_channels, out_channels : int >= 1
        C_in and C_out, both divisible by ``groups``.
    kernel_size : int or (int, int), >= 1
    stride, dilation : int or (int, int), >= 1
    padding : int, (int, int), "same" or "valid"
        As in :func:`cnnkit.conv2d` ("same" needs stride 1).
    groups : int >= 1
    bias : bool
        Learn a bias (C_out,).
    layout : "NCHW" or "NHWC"
        The layout of the input and output.
        The weight is (C_out, C_in/groups, kH, kW) in both.
    rng : numpy.random.Generator, optional
        Draws the initial parameters (PyTorch's default initialization); default: a fresh,
        unseeded Generator.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> conv = nn.Conv2d(3, 8, 3, padding=1, rng=np.random.default_rng(0))
    >>> conv.weight.shape, conv.bias.shape
    ((8, 3, 3, 3), (8,))
    >>> y = conv(np.ones((2, 3, 16, 16), np.float32))
    >>> y.shape, y.dtype
    ((2, 8, 16, 16), dtype('float32'))
    >>> conv.backward(np.ones_like(y)).shape  # writes conv.grads, returns the input gradient
    (2, 3, 16, 16)
    """

    # the output gradient the norm after this layer handed over as read by nothing else
    # (BatchNorm2d._hand_to_producer): the input gradient may be written over it
    _grad_owned: Any = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 layout: str = "NCHW", rng: np.random.Generator | None = None):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.groups = _positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: {groups} must divide in_channels {in_channels} and out_channels {out_channels}")
        k, self.stride, self.padding, self.dilation = _conv_geometry(kernel_size, stride, padding, dilation)
        self.kernel_size = k
        self.layout = _layout(layout)
        rng = _rng(rng)
        fan_in = (in_channels // groups) * k[0] * k[1]
        self._param("weight", _kaiming_uniform(rng, (out_channels, in_channels // groups) + k, fan_in))
        self.has_bias = check_bool("bias", bias)
        if self.has_bias:
            self._param("bias", _kaiming_uniform(rng, (out_channels,), fan_in))
        self._pack()

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    layout=self.layout)

    def _geom_of(self, x_shape: tuple) -> Any:
        """The float32 geometry (``cnnkit.ops.conv``'s ``_Geom``) of this layer on an input of
        ``x_shape``, kept per shape and configuration (the forward and the fused paths ask for it
        several times a step)."""
        return self._kept_geom("geom", x_shape, self.stride, self.padding, self.dilation, self.groups)

    def _kept_geom(self, slot: str, x_shape: tuple, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
        """The float32 geometry of this layer's weight on ``x_shape`` with this configuration, kept
        in ``_ws[slot]`` while the arguments stay the same (a tuple comparison instead of
        ``_conv_geom``'s checks of its arguments on every call)."""
        key = (tuple(x_shape), self.params["weight"].shape, stride, padding, dilation, groups, self.layout)
        got = self._ws.get(slot)
        if got is None or got[0] != key:
            got = self._ws[slot] = (key, _conv_geom(*key, np.dtype(np.float32)))
        return got[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The convolution of ``x`` (kept for :meth:`backward`).

        Parameters
        ----------
        x : float32 ndarray
            (N, C_in, H, W), or (N, H, W, C_in) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            (N, C_out, Ho, Wo) (NHWC: (N, Ho, Wo, C_out)), Ho and Wo as in :func:`cnnkit.conv2d`;
            a buffer reused by the next forward with an input of the same shape.
        """
        return self._forward(x)

    def _forward(self, x: np.ndarray, pre: tuple | None = None, stats: bool = False) -> np.ndarray:
        """The forward pass, fused (:func:`cnnkit.ops.conv2d_fused`) when ``pre`` (a batch norm's
        ``(scale, shift, relu)`` prologue: then ``x`` is the norm's raw input) or ``stats`` (keep
        the output's batch statistics in ``_stats``) asks for it."""
        _check_input(self, x, self.in_channels, self.layout)
        g = self._geom_of(x.shape)
        shape = self._ws["out_shape"] = g.y_shape()  # (the backward checks its gradient against it)
        self._x, self._pre, self._a, self._stats, self._pre_bn = x, pre, None, None, None
        y = self._y_last = self._buf("y", shape)
        if pre is None and not stats:
            return ops.conv2d(x, self.params["weight"], self.params.get("bias"), out=y, **self._args())
        scale, shift, relu = pre if pre is not None else (None, None, False)
        w, b = self.params["weight"], self.params.get("bias")
        r = None
        if x.size and y.size and x.flags.c_contiguous:
            # the compiled kernel straight away: what conv2d_fused checks holds here (x checked
            # above; the layer's own weight, bias and output buffer; the norm's prologue), and the
            # binding re-checks sizes, dtypes and overlaps (it declines: the public path runs)
            r = _fused._compiled_forward(x, w, y, g, b, scale, shift, bool(relu), None, False, stats)
        if r is None:
            ws = self._ws.setdefault("fused", {})
            r = _fused.conv2d_fused(x, w, b, pre_scale=scale, pre_shift=shift, pre_relu=relu, stats=stats, out=y,
                                    workspace=ws, **self._args())
        if stats:
            y, mean, var = r
            self._stats = (mean, var)
        if pre is not None and _fused.last_kernel == "reference":
            self._a = self._ws["fused"]["a"]  # the prologue's output, materialised by the reference path
        return y

    def _fused_call(self, x: np.ndarray, pre: tuple | None, stats: bool) -> np.ndarray:
        """:meth:`_forward`, then the captures receive the output (as ``__call__``)."""
        y = self._forward(x, pre, stats)
        for c in self._captures:
            c.output = y.copy()
        return y

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Write the weight (and bias) gradients into ``grads`` (unless parameter gradients are off,
        :meth:`Module.set_param_grads`) and return the input gradient.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.

        Returns
        -------
        float32 ndarray or None
            The gradient with respect to the last forward's x (its shape; a reused buffer), or
            None with ``input_grad=False``.
        """
        grad = self._check_grad(grad, self._ws.get("out_shape") if getattr(self, "_x", None) is not None
                                else None)
        needs: tuple[str, ...] = ("input",) if input_grad else ()
        if self.param_grads:
            needs += ("weight", "bias") if self.has_bias else ("weight",)
        if not needs:
            return None
        apply = self._take_apply(grad)
        if apply is not None and "input" not in needs and self._weight_grad_bn(apply):
            self._deferred_grad = None
            return None
        pre = getattr(self, "_pre", None)
        if pre is None or "input" not in needs or needs == ("input",):
            self._grad_ready(grad)  # (else _fused_input_backward takes a deferred gradient or writes it)
        if needs == ("input",) and self.groups == 1:
            gi = self._channel_sparse_backward(grad)
            if gi is not None:
                return gi
        owned, self._grad_owned = self._grad_owned, None
        if (pre is not None and input_grad and owned is grad and needs[0] == "input"
                and (gi := self._in_place_backward(grad, pre, needs[1:])) is not None):
            return gi
        gi = self._buf("gx", self._x.shape) if input_grad else None
        pg = self.param_grads
        gw, gb = self.grads["weight"] if pg else None, self.grads.get("bias") if pg else None
        if pre is not None and gi is not None and (done := self._fused_input_backward(grad, gi, pre, weight=pg)):
            # gi (the gradient at the norm's pre-activation, already masked) and its batch-norm
            # sums were handed to the norm; the weight gradient by the same pass (done == 2) or
            # as below
            needs = tuple(k for k in needs if k != "input" and not (done == 2 and k == "weight"))
            if not needs or self._fused_weight_grad(grad, pre, needs):
                return gi
            _fused.conv2d_fused_backward(grad, self._x, self.params["weight"], pre_scale=pre[0], pre_shift=pre[1],
                                         pre_relu=pre[2], needs=needs, conv_input=self._a,
                                         workspace=self._ws.setdefault("fused", {}),
                                         out=(None, gw, gb, None, None, None, None), **self._args())
            return gi
        if pre is not None:  # x is a batch norm's input: gi is the gradient at that norm's output
            fneeds = tuple("conv_input" if k == "input" else k for k in needs)
            _fused.conv2d_fused_backward(grad, self._x, self.params["weight"], pre_scale=pre[0], pre_shift=pre[1],
                                         pre_relu=pre[2], needs=fneeds, conv_input=self._a,
                                         workspace=self._ws.setdefault("fused", {}),
                                         out=(None, gw, gb, None, None, None, gi), **self._args())
            return gi
        self._conv_backward(grad, gi, gw, gb)
        return gi

    def _in_place_backward(self, grad: np.ndarray, pre: tuple, wneeds: tuple) -> np.ndarray | None:
        """A depthwise convolution at stride 1 whose output gradient ``grad`` the norm after it
        handed over as read by nothing else (``_grad_owned``): the weight (and bias) gradients
        ``wneeds`` first, from ``grad``, then the input gradient written over ``grad`` itself
        (the compiled depthwise pass reads each row of it before the row over it is written), so
        no cold buffer's lines are fetched to be overwritten. Where the norm handed its apply pass
        over unwritten (:meth:`BatchNorm2d._apply_or_defer`; ``grad`` its gradient, the pass to be
        written over it), one compiled pass evaluates the apply pass, the weight gradient and the
        input gradient image by image instead (:meth:`_fused_input_backward` with the weight
        gradient). Returns ``grad`` (now the input gradient), or None where that does not apply
        (nothing written over ``grad``; the weight gradient may be, with the values the normal
        path writes again)."""
        x = self._x
        if (self.layout != "NHWC" or self.groups != self.in_channels or self.out_channels != self.in_channels
                or self.stride != (1, 1) or grad.shape != x.shape or grad.dtype != np.float32
                or not grad.flags.c_contiguous or not grad.flags.writeable or getattr(self, "_a", None) is not None):
            return None
        if (wneeds == ("weight",) and self._take_apply(grad) is not None
                and self._fused_input_backward(grad, grad, pre, weight=True, weight_only_with=True) == 2):
            # the norm's apply pass handed over unwritten: it, the weight gradient and the input
            # gradient (over grad, image by image) in one compiled pass (0: nothing written but
            # the apply pass, in place, as _grad_ready below would; never dx over grad without
            # the weight gradient)
            return grad
        self._grad_ready(grad)
        if wneeds and not self._fused_weight_grad(grad, pre, wneeds):
            return None
        if self._fused_input_backward(grad, grad, pre, weight=False) == 0:
            return None
        return grad

    def _fused_weight_grad(self, grad: np.ndarray, pre: tuple, needs: tuple) -> bool:
        """The weight (and bias) gradients through the compiled prologue ``pre`` that the forward
        did not materialise, as :func:`cnnkit.ops.conv2d_fused_backward` computes them: its
        compiled weight gradient called directly (``grad`` checked and written, the layer's own
        buffers; the binding re-checks sizes, dtypes and layouts). False (nothing written) where
        that does not apply or the registry runs a kernel without the fused form."""
        if needs not in (("weight",), ("weight", "bias")) or getattr(self, "_a", None) is not None:
            return False
        x = self._x
        g = self._geom_of(x.shape)
        try:
            _core.conv2d_fused_backward_weight(grad, x, self.grads["weight"],
                                               self.grads["bias"] if "bias" in needs else None, g.core(),
                                               pre[0], pre[1], bool(pre[2]))
        except (ValueError, TypeError):
            return False
        return True

    def _weight_grad_bn(self, apply: tuple) -> bool:
        """The weight (and bias) gradients where the gradient at the output is a batch norm's
        apply pass handed over unwritten (``apply``: the norm's masked output gradient, its input
        (this convolution's output), mean and the pass's A, B, D;
        :meth:`BatchNorm2d._apply_or_defer`): the stem kernel evaluates the pass as it reads it
        (the same values as the norm's pass writes). False (nothing written) where the registry
        runs another kernel."""
        if len(apply) != 6:  # (a masked or per-sample gradient: the stem kernel reads written rows only)
            return False
        g, z, mean, A, B, D = apply
        x = self._x
        geo = self._geom_of(x.shape)
        try:
            _core.conv2d_backward_weight_bn(g, z, mean, A, B, D, x, self.grads["weight"], self.grads.get("bias"),
                                            geo.core())
        except ValueError:
            return False
        return True

    def _conv_backward(self, grad: np.ndarray, gi: np.ndarray | None, gw: np.ndarray | None,
                       gb: np.ndarray | None) -> None:
        """:func:`cnnkit.ops.conv2d_backward` of the last forward into the layer's own buffers
        ``gi`` (the input gradient), ``gw``, ``gb`` (None: not wanted), ``grad`` checked at the
        output's shape: the compiled passes called directly (the binding re-checks sizes, dtypes
        and layouts; where it declines, the public function runs)."""
        x, w = self._x, self.params["weight"]
        if (grad.dtype == np.float32 and grad.flags.c_contiguous and x.flags.c_contiguous
                and not any(o is not None and (np.may_share_memory(o, grad) or np.may_share_memory(o, x))
                            for o in (gi, gw, gb))):  # (the public function refuses an overlap)
            g = self._geom_of(x.shape)
            try:
                _conv_backward_core(grad, x, w, gi, gw, gb, g.core())
                return
            except (ValueError, TypeError):
                pass
        needs = tuple(k for k, o in (("input", gi), ("weight", gw), ("bias", gb)) if o is not None)
        ops.conv2d_backward(grad, x, w, needs=needs, out=(gi, gw, gb), **self._args())

    def _param_grads_of(self, grad: np.ndarray, shape: tuple) -> np.ndarray:
        """The checked gradient at the output (with any injected one, given to the captures), after
        writing the weight and bias gradients from it (parameter gradients on)."""
        self._grad_ready(grad)
        grad = self._check_grad(self._grad_in(grad), shape)
        self._note_grad(grad)
        if self.param_grads:
            self._conv_backward(grad, None, self.grads["weight"], self.grads.get("bias") if self.has_bias else None)
        return grad

    def _backward_add(self, grad: np.ndarray, add: np.ndarray, in_bn: Any = None,
                      add_stride: int = 1) -> np.ndarray | None:
        """:meth:`_backward` (the input gradient) plus ``add`` (an array of the input's shape), in
        one pass, for a dense 1x1 convolution with stride 1 and no padding or prologue, float32:
        the input gradient is the adjoint's forward pass, a 1x1 convolution with the transposed
        weight, whose residual epilogue adds ``add`` (:func:`cnnkit.ops.conv2d_fused`); the weight
        and bias gradients as :meth:`backward` writes them. A residual block's first
        convolution so adds the shortcut's gradient without a pass of its own. None (nothing done,
        nothing consumed) where it does not apply.

        ``in_bn``: the training-mode batch norm (fused ReLU) whose written output was this
        convolution's input. Then one compiled pass (any geometry) writes the input gradient plus
        ``add`` already masked by that output's ReLU, with the two sums of the norm's backward,
        which the norm receives as its pending gradient (:meth:`BatchNorm2d._pending_backward`): its
        reduction pass and its mask are skipped.

        ``add_stride`` s > 1 (that compiled pass only; else None): ``add`` holds the values at the pixels whose
        row and column are multiples of s only (:meth:`_strided_input_backward`'s compact gradient
        of a stride-s 1x1 shortcut), zero elsewhere."""
        x = getattr(self, "_x", None)
        want = None if x is None else x.shape if add_stride == 1 else _strided_shape(x.shape, add_stride, self.layout)
        if (in_bn is not None and x is not None and _producing_norm(x) is in_bn
                and getattr(self, "_pre", None) is None
                and grad.dtype == np.float32 and add.dtype == np.float32 and add.shape == want
                and x.dtype == np.float32 and _fusable(self, Conv2d)
                and in_bn._x.shape == x.shape and in_bn.layout == self.layout):
            g = self._geom_of(x.shape)
            gi = self._buf("gx", x.shape)
            # a batch norm's apply pass handed over for grad (no injection or capture here, which
            # write it first): evaluated by the input gradient as it reads grad, which it writes;
            # the weight gradient in the same pass (_weight_in_pass) or after it reads the written grad
            apply = self._take_apply(grad) if self._inject is None and not self._captures else None
            gw = self._weight_in_pass(g, x, None)
            if gw is not None:  # (no injection or capture: the gradient is grad as it comes)
                if apply is None:
                    self._grad_ready(grad)
                    grad = np.ascontiguousarray(grad)
                self._check_grad(grad, g.y_shape())
            elif apply is None:
                grad = np.ascontiguousarray(self._param_grads_of(grad, g.y_shape()))
            else:
                self._check_grad(grad, g.y_shape())
            # (the apply pass read by both gradients here: its values are not kept, grad_out None)
            keep = None if apply is not None and gw is not None else grad
            _, sg, sgxc = _core.conv2d_fused_backward_input(keep, self.params["weight"], gi, g.core(), in_bn._x,
                                                            None, None, True, in_bn._mean,
                                                            np.ascontiguousarray(add), x, add_stride, apply, gw)
            if apply is not None:
                self._deferred_grad = None
                if gw is None:
                    self._param_grads_of(grad, g.y_shape())
            in_bn._pending_grad = (gi, sg, sgxc)
            return gi
        self._grad_ready(grad)
        if (x is None or add_stride != 1 or self.kernel_size != (1, 1) or self.groups != 1
                or getattr(self, "_pre", None) is not None or grad.dtype != np.float32 or add.dtype != np.float32
                or add.shape != x.shape or x.dtype != np.float32 or not _fusable(self, Conv2d)):
            return None
        shape = self._ws.get("out_shape")
        spatial = (1, 2) if self.layout == "NHWC" else (2, 3)
        if shape is None or any(shape[a] != x.shape[a] for a in spatial):  # stride or padding: not the plain adjoint
            return None
        grad = self._param_grads_of(grad, shape)
        w = self.params["weight"]
        wa = self._buf("weight_adjoint", (self.in_channels, self.out_channels, 1, 1))
        wa[:, :, 0, 0] = w[:, :, 0, 0].T
        gi = self._buf("gx", x.shape)
        _fused.conv2d_fused(np.ascontiguousarray(grad), wa, layout=self.layout, residual=add, out=gi)
        return gi

    def _strided_input_stride(self) -> int:
        """s when the last forward was a 1x1 convolution without padding at the stride s > 1 in
        both directions (a projection shortcut), float32, without a prologue, whose output has
        ``ceil(H/s) x ceil(W/s)`` pixels: :meth:`_strided_input_backward` applies; else 0."""
        x = getattr(self, "_x", None)
        if (x is None or x.dtype != np.float32 or self.groups != 1 or self.kernel_size != (1, 1)
                or getattr(self, "_pre", None) is not None or not _fusable(self, Conv2d)):
            return 0
        g = self._geom_of(x.shape)
        s = g.s[0]
        if (s < 2 or g.s[1] != s or g.pad != (0, 0) or g.Ho != -(-g.H // s)
                or g.Wo != -(-g.W // s)):
            return 0
        return s

    def _strided_input_backward(self, grad: np.ndarray, s: int) -> np.ndarray:
        """Where :meth:`_strided_input_stride` gave ``s``: the weight and bias gradients as
        :meth:`backward` writes them, and the input gradient at the pixels whose row and column
        are multiples of s only, ``(N, ceil(H/s), ceil(W/s), C)`` (NCHW likewise; the gradient is
        zero at every other pixel), which :meth:`_backward_add` adds where it belongs. It is the
        stride-1 adjoint over the output's pixels: at stride 2 a quarter of the whole gradient's
        writes, and none of its zeros read back."""
        x = self._x
        w = self.params["weight"]
        shape = _strided_shape(x.shape, s, self.layout)
        gc = self._kept_geom("geom_strided", shape, 1, 0, 1, 1)
        out = self._buf("gx_strided", shape)
        apply = self._take_apply(grad)
        if apply is not None and self._strided_in_pass(apply, x, w, gc, out):
            return out
        grad = np.ascontiguousarray(self._param_grads_of(grad, self._ws["out_shape"]))
        _core.conv_backward_input(grad, w, out, gc.core())
        return out

    def _strided_in_pass(self, apply: tuple, x: np.ndarray, w: np.ndarray, gc: Any, out: np.ndarray) -> bool:
        """:meth:`_strided_input_backward` as one compiled pass where the gradient at the output is
        a batch norm's apply pass handed over unwritten (``apply``, :meth:`BatchNorm2d._apply_or_defer`)
        and the weight gradient runs on the NHWC 1x1 kernels (:meth:`_weight_in_pass`'s conditions):
        the rows pass evaluates the apply pass a block of rows at a time, writes the compact input
        gradient into ``out`` (geometry ``gc``: the convolution at stride 1 on the strided pixels)
        and reduces the weight gradient from the same rows and x's strided rows, so the gradient at
        the output is never written. The same values as the separate passes (the weight
        gradient's pieces and order are its own pass's). False (nothing written) where that does
        not apply."""
        g = self._geom_of(x.shape)
        gw = self._weight_in_pass(g, x, None)
        if gw is None:
            return False
        try:
            _core.conv2d_fused_backward_input(None, w, out, gc.core(), None, None, None, False, None,
                                              dy_apply=apply, grad_weight=gw, weight_geom=g.core())
        except ValueError:
            return False
        self._deferred_grad = None
        return True

    def _weight_in_pass(self, g: Any, x: np.ndarray, pre: tuple | None, apply: bool = False) -> tuple | None:
        """The ``grad_weight`` argument of the compiled input gradient (``(dw, x, scale, shift,
        relu)``: the weight gradient written by the same call, from the same gradient and
        ``prologue(x)``, ``pre`` the prologue or None) where that call gives the weight gradient's
        own bits: a dense 1x1 NHWC convolution (geometry ``g``) without bias whose weight gradient
        the registry runs on a GEMM entry (not the few-channel stem kernel, which has no fused
        form), parameter gradients on, float32, and no capture or injection that reads the
        gradient at the output; else None. The NHWC 1x1 rows pass reduces the weight gradient's
        pieces a block of rows at a time while the block is in cache (no second pass over the
        gradient and the input). With ``apply`` (the gradient at the output given as a norm's apply
        pass, not written) also a depthwise NHWC convolution at a stride, or at stride 1 with its
        output the input's size, on the depthwise kernel, and a grouped one at a stride on the
        direct grouped kernels: the call evaluates the apply pass and both gradients image by image
        (the bits of the three passes)."""
        if (not self.param_grads or self.has_bias or self._inject is not None or self._captures
                or not g.nhwc or x.dtype != np.float32 or getattr(self, "_a", None) is not None):
            return None
        if apply and g.G == g.C == g.K and g.G > 1:
            if ((g.s == (1, 1) and (g.Ho, g.Wo) != (g.H, g.W))
                    or not _core.conv_algorithm(g.core(), 2).startswith("conv2d_dw_f32_nhwc")):
                return None
        elif apply and g.G > 1 and g.s != (1, 1):
            if not _core.conv_algorithm(g.core(), 2).startswith("conv2d_grouped_f32_nhwc"):
                return None
        elif (g.G != 1 or (g.kh, g.kw) != (1, 1)
                or not _core.conv_algorithm(g.core(), 2).startswith("conv2d_gemm")):
            return None
        if pre is None:
            return (self.grads["weight"], x, None, None, False)
        return (self.grads["weight"], x, pre[0], pre[1], bool(pre[2]))

    def _fused_input_backward(self, grad: np.ndarray, gi: np.ndarray, pre: tuple,
                              residual: np.ndarray | None = None, weight: bool = False,
                              weight_only_with: bool = False) -> int:
        """The input gradient through a compiled prologue whose norm (``_pre_bn``, training mode,
        standard ReLU rule) takes it next: one compiled pass writes into ``gi`` the gradient at
        the norm's pre-activation (masked by the prologue's ReLU) and the two sums of the norm's
        backward, which the norm receives with it (:meth:`BatchNorm2d._fused_backward`), so its
        own reduction pass is skipped (the adjoint's GEMM pass at stride 1, else the plain kernel
        over units of images with the epilogue per image). 0 (nothing written) where it does
        not apply: the forward materialised the prologue, the norm is in eval mode or another ReLU
        rule, or float64. With ``weight``, the same call also writes the weight gradient where
        :meth:`_weight_in_pass` allows: then 2, else 1 (the weight gradient is the caller's); with
        ``weight_only_with`` too, 0 where it does not allow it (the input gradient not written
        alone: the caller writes the weight gradient from ``grad`` first)."""
        bn = getattr(self, "_pre_bn", None)
        fn = getattr(_core, "conv2d_fused_backward_input", None)
        if (bn is None or fn is None or self._a is not None or not bn._trained or bn.relu_mode != "standard"
                or bn._pre_affine is None or grad.dtype != np.float32):
            self._grad_ready(grad)
            return 0
        g = self._geom_of(self._x.shape)
        apply = self._take_apply(grad)
        gw = self._weight_in_pass(g, self._x, pre, apply=apply is not None) if weight else None
        if weight_only_with and gw is None:
            self._grad_ready(grad)
            return 0
        try:
            # (with the weight gradient in the pass nothing else reads the apply pass: not kept)
            keep = None if apply and gw is not None else grad if apply else np.ascontiguousarray(grad)
            _, sg, sgxc = fn(keep, self.params["weight"], gi, g.core(),
                             self._x, pre[0], pre[1], pre[2], bn._mean, residual, dy_apply=apply, grad_weight=gw)
        except ValueError:
            self._grad_ready(grad)
            return 0
        self._deferred_grad = None  # (grad written by the pass, where it was deferred)
        bn._pending_grad = (gi, sg, sgxc)
        return 1 if gw is None else 2

    def _prologue_backward_add(self, grad: np.ndarray, add: np.ndarray) -> np.ndarray | None:
        """:meth:`backward` (input, weight and bias gradients) where the input is a batch norm's
        prologue, plus ``add`` (the gradient at the prologue's output from elsewhere: an identity
        shortcut's) in the same compiled pass: the input gradient plus ``add``, masked by the
        prologue's ReLU, with the norm's two sums handed to it (:meth:`_fused_input_backward`).
        None (nothing done, nothing consumed) where that pass does not apply."""
        pre = getattr(self, "_pre", None)
        x = getattr(self, "_x", None)
        if (pre is None or x is None or add.dtype != np.float32 or add.shape != x.shape or not self.param_grads
                or self._inject is not None or self._captures):
            return None
        grad = self._check_grad(grad, self._ws.get("out_shape"))
        gi = self._buf("gx", x.shape)
        done = self._fused_input_backward(grad, gi, pre, residual=np.ascontiguousarray(add), weight=True)
        if not done:
            return None
        if done == 2:  # (the weight gradient written by the same pass)
            return gi
        needs = ("weight", "bias") if self.has_bias else ("weight",)
        _fused.conv2d_fused_backward(grad, x, self.params["weight"], pre_scale=pre[0], pre_shift=pre[1],
                                     pre_relu=pre[2], needs=needs, conv_input=self._a,
                                     workspace=self._ws.setdefault("fused", {}),
                                     out=(None, self.grads["weight"], self.grads.get("bias"), None, None, None, None),
                                     **self._args())
        return gi

    def _take_apply(self, grad: np.ndarray) -> tuple | None:
        """The batch norm's apply pass handed over for ``grad`` (``_deferred_grad``: ``(g, z,
        mean, A, B, D)``, or ``(g, z, mean, A, B, D, mask_affine, pooled)``, which the compiled
        input gradient evaluates as it reads ``grad`` and writes into it), or None (``grad`` is
        written)."""
        d = self._deferred_grad
        return d[2] if d is not None and d[0] is grad else None

    def _channel_sparse_backward(self, grad: np.ndarray) -> np.ndarray | None:
        """The input gradient from only the output channels whose gradient is not zero, when at
        most a quarter of them have one (a gradient injected at one channel, as feature
        visualization does: the other channels' terms are exact zeros); else None. A probe of one
        position's channels rules out dense gradients without a pass over ``grad``."""
        C = self.out_channels
        if C < 8 or grad.ndim != 4:
            return None
        ax = 1 if self.layout == "NCHW" else 3
        H, W = (grad.shape[2], grad.shape[3]) if ax == 1 else (grad.shape[1], grad.shape[2])
        probe = grad[0, :, H // 2, W // 2] if ax == 1 else grad[0, H // 2, W // 2]
        if 4 * np.count_nonzero(probe) > C:
            return None
        nz = np.flatnonzero(np.any(grad != 0, axis=(0, 2, 3) if ax == 1 else (0, 1, 2)))
        if 4 * nz.size > C:
            return None
        gi = self._buf("gx", self._x.shape)
        if nz.size == 0:
            gi[...] = 0
            return gi
        g = np.ascontiguousarray(np.take(grad, nz, axis=ax))
        w = np.ascontiguousarray(self.params["weight"][nz])
        ops.conv2d_backward(g, self._x, w, needs=("input",), out=(gi, None, None), **self._args())
        return gi

    def extra_repr(self) -> str:
        """The constructor arguments ``repr(module)`` shows.

        Returns
        -------
        str
        """
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.has_bias}, layout={self.layout!r}")


class DepthwiseSeparableConv2d(Module):
    """Depthwise k x k conv (groups = C_in) then pointwise 1x1 conv through
    :func:`cnnkit.depthwise_separable_conv2d` (two convolutions over chunks of images, so the
    intermediate is re-read from cache; not a fused kernel). Parameters in
    torch order: depthwise weight, depthwise bias, pointwise weight, pointwise bias.

    Parameters
    ----------
    in_channels, out_channels : int >= 1
        C_in and C_out. ``dw_weight`` is (C_in, 1, kH, kW), ``pw_weight`` (C_out, C_in, 1, 1).
    kernel_size, stride : int or (int, int), >= 1
        Of the depthwise convolution.
    padding : int, (int, int), "same" or "valid"
        Of the depthwise convolution.
    bias : bool
        Learn ``dw_bias`` (C_in,) and ``pw_bias`` (C_out,).
    layout : "NCHW" or "NHWC"
        The layout of the input and output.
    rng : numpy.random.Generator, optional
        Draws the initial parameters (PyTorch's default initialization); default: a fresh,
        unseeded Generator.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 1, bias: bool = True, *,
                 layout: str = "NCHW", rng: np.random.Generator | None = None):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        k, self.stride, self.padding, _ = _conv_geometry(kernel_size, stride, padding, 1)
        self.kernel_size = k
        self.layout = _layout(layout)
        self.has_bias = check_bool("bias", bias)
        rng = _rng(rng)
        self._param("dw_weight", _kaiming_uniform(rng, (in_channels, 1) + k, k[0] * k[1]))
        if self.has_bias:
            self._param("dw_bias", _kaiming_uniform(rng, (in_channels,), k[0] * k[1]))
        self._param("pw_weight", _kaiming_uniform(rng, (out_channels, in_channels, 1, 1), in_channels))
        if self.has_bias:
            self._param("pw_bias", _kaiming_uniform(rng, (out_channels,), in_channels))
        self._pack()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The depthwise then pointwise convolution of ``x`` (kept for :meth:`backward`).

        Parameters
        ----------
        x : float32 ndarray
            (N, C_in, H, W), or (N, H, W, C_in) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            (N, C_out, Ho, Wo) (NHWC: (N, Ho, Wo, C_out)); a reused buffer.
        """
        _check_input(self, x, self.in_channels, self.layout)
        p = self.params
        self._x = x
        dws = _conv_out_shape(x.shape, p["dw_weight"].shape, self.stride, self.padding,
                                      groups=self.in_channels, layout=self.layout)
        shape = (dws[0], self.out_channels) + dws[2:] if self.layout == "NCHW" else dws[:3] + (self.out_channels,)
        y = self._buf("y", shape)
        return ops.depthwise_separable_conv2d(x, p["dw_weight"], p["pw_weight"], p.get("dw_bias"), p.get("pw_bias"),
                                              stride=self.stride, padding=self.padding, layout=self.layout, out=y,
                                              workspace=self._ws.setdefault("sep", {}))

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Write the gradients of all four parameters into ``grads`` (also with parameter gradients
        off) and return the input gradient.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.

        Returns
        -------
        float32 ndarray or None
            The gradient with respect to the last forward's x (its shape; a reused buffer), or
            None with ``input_grad=False``.
        """
        grad = self._check_grad(grad, self._ws["y"].shape if "y" in self._ws else None)
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
    ``num_batches_tracked``); eval mode uses them.

    Parameters
    ----------
    num_features : int >= 1
        C, the channel count.
    eps : float > 0
    momentum : float in [0, 1] or None
        The running statistics' update factor; None: a cumulative average (factor 1 / batches
        seen), as torch.
    affine : bool
        Learn ``weight`` (ones) and ``bias`` (zeros), (C,) each.
    activation : None or "relu"
        A ReLU fused after the normalization (and the residual).
    layout : "NCHW" or "NHWC"
        The layout of the input and output.
    """

    _mean: np.ndarray    # the last training forward's statistics, for backward
    _invstd: np.ndarray

    # the fused path's state (see _fused_forward / _fused_backward)
    _pre_affine: np.ndarray | None = None
    _pending_grad: tuple | None = None
    _residual_affine: np.ndarray | None = None  # the residual's affine map (_fused_forward), or None
    _residual_relu = False  # and its ReLU
    _producer: Any = None  # the Conv2d that handed this norm its input's statistics (_fused_step)
    _pool_sums: Any = None  # the backward's sums from a fused global average pool (its _fused_pool)
    residual_grad: np.ndarray | None = None  # the residual's gradient after backward

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 activation: str | None = None, layout: str = "NCHW"):
        super().__init__()
        self.num_features = _positive_int("num_features", num_features)
        self.momentum = None if momentum is None else check_real("momentum", momentum, lo=0.0, hi=1.0)
        self.eps = check_real("eps", eps, lo=0.0, lo_open=True)
        self.affine = check_bool("affine", affine)
        self.activation = check_choice("activation", activation, (None, "relu"))
        self.layout = _layout(layout)
        if self.affine:
            self._param("weight", np.ones(num_features))
            self._param("bias", np.zeros(num_features))
        self._buffer("running_mean", np.zeros(num_features, np.float32))
        self._buffer("running_var", np.ones(num_features, np.float32))
        self._buffer("num_batches_tracked", np.zeros((), np.int64))
        self._pack()

    def forward(self, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """Normalize ``x``: with the batch statistics in training mode (updating the running
        statistics and ``num_batches_tracked``), with the running statistics in eval mode.

        Parameters
        ----------
        x : float32 ndarray
            (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``.
        residual : float32 ndarray like x, optional
            Added before the activation; its gradient is left in ``residual_grad`` by
            :meth:`backward`.

        Returns
        -------
        float32 ndarray
            x's shape (a buffer reused by the next call with an input of the same shape).
        """
        _check_input(self, x, self.num_features, self.layout)
        p, b = self.params, self.buffers
        y = self._buf("y", x.shape)
        self._x, self._residual, self._pre_affine, self._pending_grad = x, residual, None, None
        self._residual_affine, self._residual_relu = None, False
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
        _note_norm_output(y, self)
        return y

    def _fused_forward(self, x: np.ndarray, stats: tuple | None, residual: np.ndarray | None,
                       defer: bool, residual_affine: np.ndarray | None = None,
                       residual_relu: bool = False) -> tuple[np.ndarray | None, tuple | None]:
        """:meth:`forward` with the batch statistics ``(mean, var)`` of x given by the producing
        convolution's epilogue (training mode; None in eval mode), and, with ``defer``, without
        materialising the output: returns ``(None, (scale, shift, relu))`` for the next
        convolution's prologue (``y = relu(scale * x + shift)``), or ``(y, None)``. Running
        statistics and ``num_batches_tracked`` move exactly as in :meth:`forward`. The prologue
        is declined (the output materialised) when a channel's ``|mean| * invstd`` exceeds
        ``_DEFER_MAX_MEAN_OVER_STD``: ``scale * x + shift`` would lose accuracy to cancellation
        there.

        ``residual_affine`` (float32 ``concat(a, b)``, with ``residual``): the residual term is
        ``fma(a, residual, b)`` per channel (then ``max(., 0)`` with ``residual_relu``), another
        norm's output never written (a projection shortcut's, :meth:`_Residual._shortcut_forward`;
        a block input's, :meth:`BottleneckBlock._forward_pre`), ``residual`` that norm's input."""
        if self.training and stats is None:
            if residual_affine is not None and residual is not None:  # (the blocks defer with statistics only)
                C = self.num_features
                r = _prologue_of(residual, residual_affine[:C], residual_affine[C:], self.layout)
                return self(x, np.maximum(r, 0) if residual_relu else r), None
            return self(x, residual), None
        _check_input(self, x, self.num_features, self.layout)
        p, b = self.params, self.buffers
        nhwc = self.layout == "NHWC"
        N, C, S = x.shape[0], self.num_features, x.shape[1] * x.shape[2] if nhwc else x.shape[2] * x.shape[3]
        w = p.get("weight")
        # the prologue's scale = invstd * w and shift = b - mean * scale (float32) when deferred,
        # None where a channel's |mean| * invstd exceeds the bound
        limit = _DEFER_MAX_MEAN_OVER_STD if defer and residual is None else -1.0
        if self.training:
            count = N * S
            if count <= 1:  # the error batch_norm_train gives
                return self(x, residual), None
            assert stats is not None
            mean, var = stats
            nbt = b["num_batches_tracked"]
            momentum = 1.0 / float(nbt + 1) if self.momentum is None else self.momentum
            # invstd (a bad variance raises before anything is written), the running statistics
            # and the prologue in one call
            invstd, pre = _core.norm_train_finish(mean, var, self.eps, b["running_mean"], b["running_var"],
                                                  momentum, count / (count - 1), w, p.get("bias"), limit)
            nbt += 1
        else:
            mean = b["running_mean"].astype(np.float64)
            invstd = _core.norm_invstd(b["running_var"], self.eps)
            pre = _core.norm_prologue_coefs(mean, invstd, w, p.get("bias"), limit) if limit >= 0 else None
        self._x, self._residual, self._trained = x, residual, self.training
        self._residual_affine = residual_affine if residual is not None else None
        self._residual_relu = residual_relu and self._residual_affine is not None
        self._mean, self._invstd, self._pre_affine, self._pending_grad = mean, invstd, None, None
        self._pool_sums = None
        if pre is not None:
            self._y = None  # the consumer sets it to the prologue's output when it materialises one
            # The backward's ReLU mask, fma(scale, x, shift) > 0: the compiled prologue's value
            # (one fma in float32), so nothing of the normalized tensor is kept or recomputed.
            self._pre_affine = pre
            return None, (pre[:C], pre[C:], self.activation == "relu")
        y = self._buf("y", x.shape)
        if x.size:
            _core.norm_apply(x, y, residual, N, C, S, nhwc, False, mean, invstd, w, p.get("bias"),
                             self.activation == "relu", self._residual_affine, self._residual_relu)
        self._y = y
        _note_norm_output(y, self)
        for c in self._captures:
            c.output = y.copy()
        return y, None

    def _fused_backward(self, grad: np.ndarray, gi: np.ndarray, pre_affine: np.ndarray | None) -> np.ndarray:
        """The training-mode backward of a norm whose output was the next convolution's compiled
        prologue (or was averaged by the next global average pool without being written): the
        ReLU mask is ``fma(scale, x, shift) > 0`` with the prologue's float32
        ``concat(scale, shift)`` (``pre_affine``; None without a ReLU), evaluated inside the two
        norm backward passes; or, when that convolution's compiled input gradient already masked
        ``grad`` and reduced its sums (``_pending_grad``), only the apply pass. A ``grad`` that is
        constant over H and W by construction (zero strides there: the pool's adjoint) is read as
        its ``(N, C)`` values."""
        x, p = self._x, self.params
        nhwc = self.layout == "NHWC"
        N, C = x.shape[0], self.num_features
        S = x.shape[1] * x.shape[2] if nhwc else x.shape[2] * x.shape[3]
        w = p.get("weight")
        pending, self._pending_grad = self._pending_grad, None
        if pending is not None and pending[0] is grad:
            # the consumer's compiled input gradient: grad is already masked, and the sums of g and
            # g*(x - mean) came from its epilogue: only the apply pass is left
            sg, sgxc = pending[1], pending[2]
            if gi.size:
                # (grad is that pass's own buffer, read by nothing else: written over in place)
                gi = self._apply_or_defer(grad, gi, N, C, S, nhwc, w, sg, sgxc, inplace=True)
            sgxhat = sgxc * self._invstd
        elif (pooled := _pooled_grad(grad, nhwc)) is not None:
            # the next layer is a global average pool fused with this norm: grad is its (N, C)
            # adjoint broadcast over H and W, read once per (n, c) inside the kernels; the apply
            # pass written, or handed to the convolution that wrote x (_apply_or_defer)
            sums, self._pool_sums = self._pool_sums, None
            if sums is not None:
                # the pool's pass gave, per (n, c), the count of positions the mask keeps and the
                # sum of x - mean over them: sum g = sum over n of g*count, sum g*(x - mean) = sum
                # over n of g*(that sum), in double in sample order (no pass over x)
                g64 = pooled.astype(np.float64)
                sg = np.einsum("nc,nc->c", g64, sums[0])
                sgxc = np.einsum("nc,nc->c", g64, sums[1])
            else:
                sg, sgxc = _core.norm_backward_reduce(pooled, x, None, N, C, S, nhwc, False, self._mean,
                                                      pre_affine, True)
            if gi.size:
                self._apply_or_defer(pooled, gi, N, C, S, nhwc, w, sg, sgxc, pre_affine, True)
            sgxhat = sgxc * self._invstd
        elif pre_affine is None:
            # no ReLU (a projection shortcut's norm): the reduction, then the apply pass written or
            # handed to the convolution that wrote x (_apply_or_defer)
            grad = np.ascontiguousarray(grad, dtype=np.float32)
            sg, sgxc = _core.norm_backward_reduce(grad, x, None, N, C, S, nhwc, False, self._mean, None, False)
            if gi.size:
                self._apply_or_defer(grad, gi, N, C, S, nhwc, w, sg, sgxc)
            sgxhat = sgxc * self._invstd
        else:
            grad = np.ascontiguousarray(grad, dtype=np.float32)
            sg, sgxhat = _bn_backward_chunk(grad, x, None, gi, None, N, C, S, nhwc, self._mean, self._invstd,
                                            w, N * S, mask_affine=pre_affine)
        if self.affine and self.param_grads:
            self.grads["weight"][...] = sgxhat
            self.grads["bias"][...] = sg
        self.residual_grad = None
        return gi

    def _pending_backward(self, grad: np.ndarray, gi: np.ndarray) -> np.ndarray:
        """The training-mode backward when the consumer of this norm's written output (a residual
        block's first convolution, :meth:`Conv2d._backward_add`) computed ``grad`` already masked by
        ``y > 0`` together with the sums of g and g*(x - mean) (``_pending_grad``): only the apply
        pass is left, and the residual's gradient is ``grad`` itself (the masked gradient)."""
        pending, self._pending_grad = self._pending_grad, None
        assert pending is not None
        _, sg, sgxc = pending
        x = self._x
        nhwc = self.layout == "NHWC"
        N, C = x.shape[0], self.num_features
        S = x.shape[1] * x.shape[2] if nhwc else x.shape[2] * x.shape[3]
        w = self.params.get("weight")
        if gi.size:
            # (grad is the consumer's own buffer: written over in place unless it is also the
            # residual's gradient)
            gi = self._apply_or_defer(grad, gi, N, C, S, nhwc, w, sg, sgxc, inplace=self._residual is None)
        if self.affine and self.param_grads:
            self.grads["weight"][...] = sgxc * self._invstd
            self.grads["bias"][...] = sg
        self.residual_grad = grad if self._residual is not None else None
        return gi

    def _apply_or_defer(self, grad: np.ndarray, gi: np.ndarray, N: int, C: int, S: int, nhwc: bool,
                        w: np.ndarray | None, sg: np.ndarray, sgxc: np.ndarray,
                        mask_affine: np.ndarray | None = None, pooled: bool = False,
                        inplace: bool = False) -> np.ndarray:
        """The apply pass of the training-mode backward into ``gi`` from the masked ``grad`` and
        the sums ``sg``, ``sgxc``; or, where the convolution that wrote this norm's input takes
        the pass into its weight gradient (:meth:`_apply_taker`), handed to it unwritten as its
        ``_deferred_grad``: ``gi`` is written by the first reader that needs it written
        (:meth:`Module._grad_ready`), or never (the weight gradient evaluated the pass itself).
        ``mask_affine`` and ``pooled`` as :func:`cnnkit._core.norm_backward_apply` takes them (a
        fused prologue's or pool's ReLU mask recomputed from x; ``grad`` the ``(N, C)`` adjoint of
        a global average pool): the pass handed over then carries them too. With ``inplace``
        (``grad`` a buffer of the caller's that nothing reads afterwards), a pass written now goes
        over ``grad`` itself: each value is read before it is written, and the written lines are
        those just read, so no line of a cold ``gi`` is fetched to be overwritten (mobilenet_small's
        three such passes 1.6-2.0x faster from memory); a depthwise taker gets it so (handed over
        to be written over ``grad``) or not at all. Returns the array that holds (or will hold) the
        result: ``gi``, or ``grad`` when written in place."""
        x, mean = self._x, self._mean
        A, B, D = _bn_apply_coefs(self._invstd, w, N * S, sg, sgxc)
        plain = mask_affine is None and not pooled
        taker = self._apply_taker()
        if taker is not None and taker.groups > 1:
            # a depthwise convolution's one-pass backward: the pass handed over to be written over
            # grad, never into gi (the convolution writes its input gradient over grad)
            if not (inplace and plain and grad.dtype == gi.dtype and grad.shape == gi.shape
                    and grad.flags.c_contiguous and grad.flags.writeable):
                taker = None
            else:
                def write_over() -> None:
                    _core.norm_backward_apply(grad, x, None, grad, None, N, C, S, nhwc, False, mean, A, B, D)

                taker._deferred_grad = (grad, write_over, (grad, x, mean, A, B, D))
                self._hand_to_producer(grad)
                return grad
        if (taker is None and inplace and plain and grad.dtype == gi.dtype and grad.shape == gi.shape
                and grad.flags.c_contiguous and grad.flags.writeable):
            _core.norm_backward_apply(grad, x, None, grad, None, N, C, S, nhwc, False, mean, A, B, D)
            self._hand_to_producer(grad)
            return grad

        def write() -> None:
            _core.norm_backward_apply(grad, x, None, gi, None, N, C, S, nhwc, False, mean, A, B, D, mask_affine,
                                      pooled)

        if taker is None:
            write()
            self._hand_to_producer(gi)
        elif plain:
            taker._deferred_grad = (gi, write, (grad, x, mean, A, B, D))
        else:
            taker._deferred_grad = (gi, write, (grad, x, mean, A, B, D, mask_affine, pooled))
        return gi

    def _hand_to_producer(self, gi: np.ndarray) -> None:
        """Tell the convolution that wrote this norm's input (``_producer``) that ``gi``, the
        input gradient just written, is read by nothing after that convolution's backward, which
        may then write its own input gradient over it (:meth:`Conv2d._in_place_backward`)."""
        c = self._producer
        if c is not None and getattr(c, "_y_last", None) is self._x:
            c._grad_owned = gi

    def _apply_taker(self) -> Conv2d | None:
        """The convolution that wrote this norm's input in the last forward (the fused path:
        ``_producer``), where it can evaluate the norm's apply pass itself (NHWC, float32, one
        group): a network's stem (at most 4 input channels, no prologue) in its weight gradient
        (the stem kernel, :meth:`Conv2d._weight_grad_bn`), a 1x1 at stride 1 without padding in
        its compiled input gradient (the rows pass: :meth:`Conv2d._fused_input_backward`,
        :meth:`Conv2d._backward_add`), a 1x1 at a stride without padding (a projection shortcut's)
        in its compact input gradient (the rows pass too: :meth:`Conv2d._strided_input_backward`),
        a depthwise or grouped layer at a stride, or a depthwise at stride 1 with its output its
        input's size, with a prologue and no bias, in its one-pass backward (the pass, then both
        gradients, image by image: :meth:`Conv2d._in_place_backward` at stride 1,
        :meth:`Conv2d._fused_input_backward`); else None. Any other reader writes the pass first."""
        c = self._producer
        x = self._x
        if (c is None or getattr(c, "_y_last", None) is not x or not _fusable(c, Conv2d) or c.layout != "NHWC"
                or x.dtype != np.float32 or not c.param_grads):
            return None
        if c.groups > 1:
            depthwise = c.groups == c.in_channels == c.out_channels
            if ((c.stride != (1, 1) or (depthwise and c._x.shape == x.shape))
                    and getattr(c, "_pre", None) is not None and getattr(c, "_a", None) is None
                    and not c.has_bias and c._inject is None and not c._captures):
                return c  # a depthwise or (at a stride) grouped layer with a prologue: its one-pass backward
            return None
        if c.in_channels <= 4 and getattr(c, "_pre", None) is None:
            return c  # the stem: its weight gradient
        if c.kernel_size == (1, 1) and c._x.shape[1:3] == x.shape[1:3]:  # (stride 1, no padding)
            return c  # a 1x1: its compiled input gradient (the rows pass)
        if c.kernel_size == (1, 1) and c._strided_input_stride():
            return c  # a projection shortcut's 1x1 at a stride: its compact input gradient (the rows pass)
        return None

    def _preactivation(self) -> np.ndarray:
        """The last forward's output before the fused ReLU, recomputed (its sign is the ReLU
        mask when the output was not materialised)."""
        x, p = self._x, self.params
        nhwc = self.layout == "NHWC"
        N, S = x.shape[0], x.shape[1] * x.shape[2] if nhwc else x.shape[2] * x.shape[3]
        pre = self._buf("pre", x.shape)
        _core.norm_apply(x, pre, self._residual, N, self.num_features, S, nhwc, False, self._mean, self._invstd,
                         p.get("weight"), p.get("bias"), False, self._residual_affine, self._residual_relu)
        return pre

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
        mask = None
        if self.activation == "relu" and masked:
            mask = self._y if self._y is not None else self._preactivation()
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

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """Write the weight and bias gradients (affine, parameter gradients on) and return the input
        gradient; the residual's gradient, if the forward had one, goes to ``residual_grad``. In
        eval mode the statistics are constants (an affine map per channel), as torch's autograd
        gives it.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).

        Raises
        ------
        ValueError
            The "deconvnet" ReLU rule after a training-mode forward.
        """
        grad = self._check_grad(grad, self._x.shape if getattr(self, "_x", None) is not None else None)
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
        pending = self._pending_grad
        if pending is not None and pending[0] is grad and self._y is not None:
            return self._pending_backward(grad, gi)
        gres = self._buf("gres", self._x.shape) if self._residual is not None else None
        y = self._y
        pre_affine = self._pre_affine
        if y is None and pre_affine is not None and self._residual is None:
            # fused into the next convolution's compiled prologue: the ReLU mask is recomputed from
            # x inside the backward kernels (see _fused_forward)
            return self._fused_backward(grad, gi, pre_affine if self.activation is not None else None)
        if y is None and self.activation is not None:  # fused: the output was never written
            y = self._preactivation()  # its sign is the ReLU mask; kept in a buffer, not allocated
        x = self._x
        mask = y if self.activation is not None else None
        if (grad.dtype == np.float32 and grad.flags.c_contiguous and x.flags.c_contiguous and x.size
                and (mask is None or mask.flags.c_contiguous) and self._mean.shape == (self.num_features,)):
            # batch_norm_backward's one chunk on the layer's own checked arrays (its checks hold)
            nhwc = self.layout == "NHWC"
            N, C = x.shape[0], self.num_features
            S = x.shape[1] * x.shape[2] if nhwc else x.shape[2] * x.shape[3]
            w = self.params.get("weight")
            sg, sgxhat = _bn_backward_chunk(grad, x, mask, gi, gres, N, C, S, nhwc, self._mean, self._invstd, w,
                                            N * S)
            if self.affine and self.param_grads:
                self.grads["weight"][...] = sgxhat + 0.0  # (+ 0.0: the bits of the sum batch_norm_backward
                self.grads["bias"][...] = sg + 0.0        # starts from zeros, -0.0 made 0.0)
            self.residual_grad = gres
            return gi
        res = ops.batch_norm_backward(grad, self._x, self.params.get("weight"), self._mean, self._invstd, y=y,
                                      bias=self.params.get("bias"), residual=self._residual,
                                      activation=self.activation, layout=self.layout, needs=tuple(needs), out=gi,
                                      out_residual=gres)
        if self.affine and self.param_grads:
            self.grads["weight"][...] = res[1]
            self.grads["bias"][...] = res[2]
        self.residual_grad = res[3] if self._residual is not None else None
        return res[0]

    def extra_repr(self) -> str:
        """The constructor arguments ``repr(module)`` shows.

        Returns
        -------
        str
        """
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, activation={self.activation!r}"


class GroupNorm(_ReLUMode, Module):
    """``torch.nn.GroupNorm`` (statistics per sample and group), optional fused ReLU.

    Parameters
    ----------
    num_groups : int >= 1
        Divides ``num_channels``.
    num_channels : int >= 1
    eps : float > 0
    affine : bool
        Learn ``weight`` (ones) and ``bias`` (zeros), (C,) each.
    activation : None or "relu"
        A ReLU fused after the normalization.
    layout : "NCHW" or "NHWC"
        The layout of the input and output.
    """

    _mean: np.ndarray    # the last forward's statistics, for backward
    _invstd: np.ndarray

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 activation: str | None = None, layout: str = "NCHW"):
        super().__init__()
        self.num_groups = _positive_int("num_groups", num_groups)
        self.num_channels = _positive_int("num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"num_groups: {num_groups} must divide num_channels {num_channels}")
        self.activation = check_choice("activation", activation, (None, "relu"))
        self.eps = check_real("eps", eps, lo=0.0, lo_open=True)
        self.affine = check_bool("affine", affine)
        self.layout = _layout(layout)
        if self.affine:
            self._param("weight", np.ones(num_channels))
            self._param("bias", np.zeros(num_channels))
        self._pack()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalize ``x`` per sample and group (the same in training and eval mode).

        Parameters
        ----------
        x : float32 ndarray
            (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            x's shape (a buffer reused by the next call with an input of the same shape).
        """
        _check_input(self, x, self.num_channels, self.layout)
        p = self.params
        self._x = x
        y, self._mean, self._invstd = ops.group_norm(x, self.num_groups, p.get("weight"), p.get("bias"), self.eps,
                                                     activation=self.activation, layout=self.layout,
                                                     return_stats=True, out=self._buf("y", x.shape))
        self._y = y
        return y

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """Write the weight and bias gradients (affine, parameter gradients on) and return the input
        gradient.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        grad = self._check_grad(grad, self._x.shape if getattr(self, "_x", None) is not None else None)
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
    gradients through positive activations.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> relu = nn.ReLU()
    >>> relu(np.array([[-1.0, 2.0]], np.float32)).tolist()
    [[0.0, 2.0]]
    >>> relu.backward(np.array([[5.0, -3.0]], np.float32)).tolist()
    [[0.0, -3.0]]
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``max(x, 0)`` element-wise.

        Parameters
        ----------
        x : float32 ndarray
            Any shape.

        Returns
        -------
        float32 ndarray
            x's shape (a buffer reused by the next call with an input of the same shape).
        """
        _check_input(self, x, None, "NCHW", ndim=x.ndim if isinstance(x, np.ndarray) else 4)
        y = np.maximum(x, 0, out=self._buf("y", x.shape, x.dtype))
        self._y = y
        return y

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """The gradient through the ReLU by the module's rule (:meth:`Module.set_relu_backward`):
        ``grad * (y > 0)``, guided ``max(grad, 0) * (y > 0)``, deconvnet ``max(grad, 0)``.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        grad = self._check_grad(grad, self._y.shape if getattr(self, "_y", None) is not None else None)
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


def _pair(name: str, v: Any, lo: int) -> tuple[int, int]:
    """An int or a pair of ints >= lo, as a pair (TypeError for a wrong type, ValueError below lo)."""
    return check_pair(name, v, lo)


class _Pool2d(Module):
    _mode = 0  # 0 max; 1 average counting the padding (torch's default), 2 average without it

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False, *, layout: str = "NCHW"):
        super().__init__()
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding: must be at most half the kernel size, got {padding} for {kernel_size}")
        self.ceil_mode = check_bool("ceil_mode", ceil_mode)
        self.layout = _layout(layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Pool each channel of ``x`` over sliding windows.

        Parameters
        ----------
        x : float32 ndarray
            (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            (N, C, Ho, Wo) (NHWC: (N, Ho, Wo, C)) with ``Ho = floor((H + 2*pH - kH) / sH) + 1``
            (ceil with ``ceil_mode``, torch's rule); a reused buffer.
        """
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

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """The input gradient: each output's gradient goes to its window's first maximum (max
        pooling) or is spread evenly over the window's divisor (average pooling).

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        grad = self._check_grad(grad, self._ws["y"].shape if "y" in self._ws else None)
        gi = self._buf("gx", self._x.shape)
        _pool_backward(np.ascontiguousarray(grad), gi, self._idx, self._geo, self._mode)
        return gi

    def extra_repr(self) -> str:
        """The constructor arguments ``repr(module)`` shows.

        Returns
        -------
        str
        """
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d`` (padding is -inf; the gradient goes to the first maximum;
    ``ceil_mode`` as torch's).

    Parameters
    ----------
    kernel_size : int or (int, int), >= 1
    stride : int or (int, int), >= 1, optional
        Default: ``kernel_size``.
    padding : int or (int, int), >= 0
        At most half the kernel size.
    ceil_mode : bool
        Round the output size up (torch's rule).
    layout : "NCHW" or "NHWC"
        The layout of the input and output.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> nn.MaxPool2d(2)(x).tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
    """
    _mode = 0


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d``: ``count_include_pad`` (default True) counts the padded zeros in the
    divisor; ``ceil_mode`` as torch's (a window running past the padding divides by its clipped size).

    Parameters
    ----------
    kernel_size, stride, padding, ceil_mode, layout
        As in :class:`MaxPool2d`.
    count_include_pad : bool
        Count the padded zeros in the divisor.
    """
    _mode = 1

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False, count_include_pad: bool = True, *,
                 layout: str = "NCHW"):
        super().__init__(kernel_size, stride, padding, ceil_mode, layout=layout)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)
        self._mode = 1 if self.count_include_pad else 2


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (N, C, H, W) or (N, H, W, C) -> (N, C) (compiled; summed in
    double).

    Parameters
    ----------
    layout : "NCHW" or "NHWC"
        The layout of the input.
    """

    # the batch norm whose output the last forward averaged without its being written (fusion)
    _pre_norm: BatchNorm2d | None = None

    def __init__(self, *, layout: str = "NCHW"):
        super().__init__()
        self.layout = _layout(layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The mean of each channel of ``x`` over H and W.

        Parameters
        ----------
        x : float32 ndarray
            (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray (N, C)
            A reused buffer.
        """
        _check_input(self, x, None, self.layout)
        self._shape, self._pre_norm = x.shape, None
        N, C, S = self._geometry()
        y = self._buf("y", (N, C))
        _core.global_avg_pool_forward(np.ascontiguousarray(x), y, N, C, S, self.layout == "NHWC")
        return y

    def _fused_pool(self, x: np.ndarray, norm: BatchNorm2d, relu: bool) -> np.ndarray:
        """The pool of ``norm``'s output, ``relu(scale * x + shift)`` with the float32
        ``concat(scale, shift)`` that ``norm`` deferred (``norm._pre_affine``; one fma per value,
        as a convolution's prologue), from its input ``x``, without writing that output; then the
        captures receive the result (as ``__call__``). :meth:`backward` then returns the adjoint
        as a broadcast view, which ``norm``'s backward reads per (n, c)."""
        _check_input(self, x, None, self.layout)
        affine = norm._pre_affine
        assert affine is not None  # set by the norm's deferral (BatchNorm2d._fused_forward)
        self._shape, self._pre_norm = x.shape, norm
        N, C, S = self._geometry()
        y = self._buf("y", (N, C))
        nhwc = self.layout == "NHWC"
        if norm._trained and nhwc:
            # the norm backward's two sums per (n, c) from the same pass (the pool's adjoint is
            # constant over the positions): its reduction pass over x is then skipped
            sums = self._buf("norm_sums", (2, N, C), np.float64)
            _core.norm_affine_pool(np.ascontiguousarray(x), y, N, C, S, nhwc, affine, relu, norm._mean, sums)
            norm._pool_sums = sums
        else:
            _core.norm_affine_pool(np.ascontiguousarray(x), y, N, C, S, nhwc, affine, relu)
        for c in self._captures:
            c.output = y.copy()
        return y

    def _geometry(self):
        N = self._shape[0]
        C = self._shape[1] if self.layout == "NCHW" else self._shape[3]
        S = self._shape[2] * self._shape[3] if self.layout == "NCHW" else self._shape[1] * self._shape[2]
        return N, C, S

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """The input gradient: ``grad[n, c] / (H*W)`` at every position.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, (N, C).
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer, or,
            after a forward fused with the batch norm before it, a read-only view broadcast over
            H and W that the norm reads per (n, c)).
        """
        grad = self._check_grad(grad, self._ws["y"].shape if "y" in self._ws else None)
        N, C, S = self._geometry()
        if self._pre_norm is not None:
            # grad[n, c] * float32(1/S): the values global_avg_pool_backward writes, not written out
            g = self._buf("gq", (N, C))
            np.multiply(grad, np.float32(1.0 / S), out=g)
            view = (N, 1, 1, C) if self.layout == "NHWC" else (N, C, 1, 1)
            return np.broadcast_to(g.reshape(view), self._shape)
        gi = self._buf("gx", self._shape)
        _core.global_avg_pool_backward(np.ascontiguousarray(grad, dtype=np.float32), gi, N, C, S,
                                       self.layout == "NHWC")
        return gi


class Flatten(Module):
    """(N, ...) -> (N, prod). NHWC input is flattened in NCHW order (as the PyTorch model would).

    Parameters
    ----------
    layout : "NCHW" or "NHWC"
        The layout of a 4-D input.
    """

    def __init__(self, *, layout: str = "NCHW"):
        super().__init__()
        self.layout = _layout(layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` as (N, prod(x.shape[1:])).

        Parameters
        ----------
        x : float32 ndarray
            (N, ...), at least 2-D.

        Returns
        -------
        float32 ndarray (N, prod(x.shape[1:]))
            ``x.reshape(N, -1)`` (a view where possible); a 4-D NHWC input is first transposed to
            NCHW order, into a reused buffer.
        """
        _check_input(self, x, None, self.layout, ndim=x.ndim if isinstance(x, np.ndarray) else 4)
        if x.ndim < 2:
            raise ValueError(f"x: expected at least 2 dimensions (N, ...), got shape {x.shape}")
        self._shape = x.shape
        if self.layout == "NHWC" and x.ndim == 4:
            y = self._buf("y", (x.shape[0], x.shape[3], x.shape[1], x.shape[2]))
            y[...] = x.transpose(0, 3, 1, 2)
            return y.reshape(x.shape[0], math.prod(x.shape[1:]))
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch reshapes too

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """``grad`` reshaped (and for NHWC transposed) back to x's shape.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        shape = getattr(self, "_shape", None)
        grad = self._check_grad(grad, None if shape is None else (shape[0], math.prod(shape[1:])))
        if self.layout == "NHWC" and len(self._shape) == 4:
            N, H, W, C = self._shape
            gi = self._buf("gx", self._shape)
            gi[...] = grad.reshape(N, C, H, W).transpose(0, 2, 3, 1)
            return gi
        return grad.reshape(self._shape)


class Linear(Module):
    """``torch.nn.Linear``: y = x W^T + b, weight (out_features, in_features).

    The three products (forward, input and weight gradients) run on cnnkit's own GEMM
    (``_core.sgemm``, cnnkit's threads; the bits do not depend on their number), not on
    ``numpy.matmul``: numpy's OpenBLAS threads keep spinning after a call, on the cores the next
    kernels need (resnext_small's step 1.02x faster).

    Parameters
    ----------
    in_features, out_features : int >= 1
    bias : bool
        Learn a bias (out_features,).
    rng : numpy.random.Generator, optional
        Draws the initial parameters (PyTorch's default initialization); default: a fresh,
        unseeded Generator.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> fc = nn.Linear(4, 2, rng=np.random.default_rng(0))
    >>> fc(np.ones((3, 4), np.float32)).shape
    (3, 2)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rng: np.random.Generator | None = None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        rng = _rng(rng)
        self._param("weight", _kaiming_uniform(rng, (out_features, in_features), in_features))
        self.has_bias = check_bool("bias", bias)
        if self.has_bias:
            self._param("bias", _kaiming_uniform(rng, (out_features,), in_features))
        self._pack()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x @ weight.T + bias`` (x kept for :meth:`backward`).

        Parameters
        ----------
        x : float32 ndarray (N, in_features)

        Returns
        -------
        float32 ndarray (N, out_features)
            A reused buffer.
        """
        _check_input(self, x, self.in_features, "NCHW", ndim=2)
        self._x = x = np.ascontiguousarray(x)
        y = self._buf("y", (x.shape[0], self.out_features))
        _core.sgemm(x, self.params["weight"], y, trans_b=True)
        if self.has_bias:
            y += self.params["bias"]
        return y

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Write ``grad.T @ x`` (and the bias gradient ``grad.sum(0)``) into ``grads`` (unless
        parameter gradients are off) and return ``grad @ weight``.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, (N, out_features).
        input_grad : bool
            Compute and return the gradient with respect to x.

        Returns
        -------
        float32 ndarray or None
            The gradient with respect to the last forward's x (its shape; a reused buffer), or
            None with ``input_grad=False``.
        """
        x = getattr(self, "_x", None)
        grad = np.ascontiguousarray(self._check_grad(grad, None if x is None else (x.shape[0], self.out_features)))
        if self.param_grads:
            _core.sgemm(grad, self._x, self.grads["weight"], trans_a=True)
            if self.has_bias:
                np.add.reduce(grad, axis=0, out=self.grads["bias"])  # (np.sum's reduction, without its Python wrapper)
        if not input_grad:
            return None
        gx = self._buf("gx", self._x.shape)
        _core.sgemm(grad, self.params["weight"], gx)
        return gx

    def extra_repr(self) -> str:
        """The constructor arguments ``repr(module)`` shows.

        Returns
        -------
        str
        """
        return f"{self.in_features}, {self.out_features}, bias={self.has_bias}"


class _DropoutBase(Module):
    def __init__(self, p: float = 0.5, *, seed: int | np.random.SeedSequence | np.random.Generator | None = None):
        super().__init__()
        self.p = check_real("p", p, lo=0.0, hi=1.0)
        self.rng = np.random.default_rng(check_seed("seed", seed))

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """``grad`` times the last forward's mask and scale (``grad`` itself in eval mode or with
        ``p == 0``).

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The last forward's x's shape.
        """
        grad = self._check_grad(grad, ... if getattr(self, "_scale", None) is None else self._ws["y"].shape)
        if self._scale is None:
            return grad
        return np.multiply(grad, self._scale, out=self._buf("gx", grad.shape))


class Dropout(_DropoutBase):
    """``torch.nn.Dropout``: each element zeroed with probability p, survivors scaled by 1/(1-p);
    identity in eval mode. Its own Generator (``seed``).

    Parameters
    ----------
    p : float in [0, 1]
        The probability of zeroing an element.
    seed : int >= 0, numpy.random.SeedSequence or numpy.random.Generator, optional
        Seeds the module's Generator (a Generator is used as it is; default: unseeded).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        """In training mode, ``x`` with each element zeroed with probability ``p`` and the others
        scaled by ``1/(1-p)``; in eval mode (or ``p == 0``) ``x`` itself.

        Parameters
        ----------
        x : float32 ndarray
            Any shape.

        Returns
        -------
        float32 ndarray
            x's shape.
        """
        _check_input(self, x, None, "NCHW", ndim=x.ndim if isinstance(x, np.ndarray) else 4)
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        scale = self._buf("scale", x.shape)
        np.multiply(keep, np.float32(1.0 / (1.0 - self.p)) if self.p < 1 else np.float32(0), out=scale)
        self._scale = scale
        return np.multiply(x, scale, out=self._buf("y", x.shape))


class SpatialDropout2d(_DropoutBase):
    """``torch.nn.Dropout2d``: whole channels zeroed (:func:`cnnkit.augment.spatial_dropout`).

    Parameters
    ----------
    p : float in [0, 1]
        The probability of zeroing a channel (of one image).
    layout : "NCHW" or "NHWC"
        The layout of the input and output.
    seed : int >= 0, numpy.random.SeedSequence or numpy.random.Generator, optional
        Seeds the module's Generator (a Generator is used as it is; default: unseeded).
    """

    def __init__(self, p: float = 0.5, *, layout: str = "NCHW",
                 seed: int | np.random.SeedSequence | np.random.Generator | None = None):
        super().__init__(p, seed=seed)
        self.layout = _layout(layout)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """In training mode, ``x`` with each (image, channel) plane zeroed with probability ``p`` and
        the others scaled by ``1/(1-p)``; in eval mode (or ``p == 0``) ``x`` itself.

        Parameters
        ----------
        x : float32 ndarray
            (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            x's shape.
        """
        from ..augment.functional import spatial_dropout
        _check_input(self, x, None, self.layout)
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        y, scale = spatial_dropout(x, self.p, self.rng, True, layout=self.layout, out=self._buf("y", x.shape))
        s = scale.astype(np.float32)
        self._scale = s[:, :, None, None] if self.layout == "NCHW" else s[:, None, None, :]
        return y


# The methods through which _fused_step drives a layer, bypassing its forward. A subclass (or an
# instance) that overrides any of them computes something else than the base layer (ghost batch
# norm's per-chunk statistics, a standardized weight, ...) that the fused kernels cannot
# represent: such a layer always runs on its own.
_FUSED_VIA = {"Conv2d": ("__call__", "forward", "_forward", "_fused_call", "backward", "_backward_add",
                         "_channel_sparse_backward", "_fused_input_backward", "_strided_input_stride",
                         "_strided_input_backward", "_weight_grad_bn", "_param_grads_of",
                         "_prologue_backward_add"),
              "BatchNorm2d": ("__call__", "forward", "_fused_forward", "backward", "_eval_backward",
                              "_preactivation", "_fused_backward", "_pending_backward", "_relu_grad",
                              "_apply_or_defer", "_apply_taker"),
              "GlobalAvgPool2d": ("__call__", "forward", "_fused_pool", "backward")}
_FUSED_VIA_SETS: dict[type, frozenset[str]] = {c: frozenset(_FUSED_VIA[c.__name__])
                                                for c in (Conv2d, BatchNorm2d, GlobalAvgPool2d)}


def _pooled_grad(grad: np.ndarray, nhwc: bool) -> np.ndarray | None:
    """``grad``'s ``(N, C)`` values (C-contiguous float32) when it is constant over the spatial
    axes by construction, i.e. has zero strides there (:meth:`GlobalAvgPool2d.backward` after a
    fused forward gives such a view); else None."""
    a, b = (1, 2) if nhwc else (2, 3)
    if grad.ndim != 4 or grad.dtype != np.float32 or grad.strides[a] != 0 or grad.strides[b] != 0:
        return None
    return np.ascontiguousarray(grad[:, 0, 0, :] if nhwc else grad[:, :, 0, 0])


def _fusable(m: Module | None, cls: type) -> bool:
    """Whether ``m`` is a ``cls`` (Conv2d or BatchNorm2d) that the fused path may drive: its
    methods are ``cls``'s own, and (batch norm) it normalizes with whole-batch statistics (no
    ``virtual_batch_size``, i.e. no ghost batches)."""
    if not isinstance(m, cls):
        return False
    names = _FUSED_VIA_SETS[cls]
    t = type(m)
    if t is not cls and any(getattr(t, k) is not getattr(cls, k) for k in names):
        return False
    d = m.__dict__
    if not d.keys().isdisjoint(names):  # monkeypatched on the instance
        return False
    # (getattr on an instance without it would go through Module.__getattr__ and raise: a few
    # microseconds a call, and the fused path asks on every layer of every step)
    # (subscripts and membership tests rather than dict.get: this runs several times per layer and step)
    in_class = _HAS_VBS[t] if t in _HAS_VBS else _HAS_VBS.setdefault(t, hasattr(t, "virtual_batch_size"))
    if (in_class or "virtual_batch_size" in d
            or ("params" in d and "virtual_batch_size" in d["params"])
            or ("buffers" in d and "virtual_batch_size" in d["buffers"])):
        return getattr(m, "virtual_batch_size", None) is None
    return True


_HAS_VBS: dict[type, bool] = {}  # whether a class defines virtual_batch_size (_fusable)


def _fused_step(m: Module, x: np.ndarray, pending: tuple | None, nxt: Module | None,
                residual: np.ndarray | None = None, residual_affine: np.ndarray | None = None,
                residual_relu: bool = False) -> tuple[np.ndarray, tuple | None]:
    """Run the layer ``m`` of a chain with fusion: ``(output, what m hands to the next layer)``.

    ``nxt`` is the layer that runs next on m's output (None: none, or not part of the chain).
    A Conv2d followed by a training-mode BatchNorm2d keeps its output's batch statistics
    (the epilogue) and hands ``("stats", mean, var)`` on; a BatchNorm2d followed by a Conv2d or
    a GlobalAvgPool2d and not captured hands ``("pre", norm, (scale, shift, relu))`` on and
    passes its input through (the convolution applies it as its prologue; the pool averages
    ``relu(scale * x + shift)`` without writing it); a BatchNorm2d given statistics uses them.
    Any other layer runs as ``m(x)``, and so does a Conv2d or BatchNorm2d that is not
    :func:`_fusable` (e.g. ghost batch norm): the statistics and prologue are only exchanged
    between two fusable layers."""
    if isinstance(m, Conv2d) and _fusable(m, Conv2d):  # (isinstance first: no call for other layers)
        pre_bn, pre = (pending[1], pending[2]) if pending is not None and pending[0] == "pre" else (None, None)
        stats = (isinstance(nxt, BatchNorm2d) and _fusable(nxt, BatchNorm2d) and nxt.training
                 and nxt.layout == m.layout and nxt.num_features == m.out_channels)
        if pre is None and not stats:
            return m(x), None
        y = m._fused_call(x, pre, stats)
        if stats:
            setattr(nxt, "_producer", m)  # (whose weight gradient may take the norm's apply pass: _apply_taker)
        if pre_bn is not None:
            pre_bn._y = m._a  # the prologue's output if materialised (its sign is the ReLU mask), else None
            setattr(m, "_pre_bn", pre_bn)  # the norm that takes m's input gradient (and may take its sums)
        return y, (("stats",) + tuple(m._stats or ())) if stats else None
    if isinstance(m, BatchNorm2d) and _fusable(m, BatchNorm2d):
        given = pending[1:] if pending is not None and pending[0] == "stats" else None
        # into a convolution, a pool or a block: exclusive kinds of nxt, asked in turn
        into = isinstance(nxt, Conv2d) and _fusable(nxt, Conv2d) and nxt.in_channels == m.num_features
        # (the pool: NHWC only; the NCHW forms of norm_affine_pool and of the pooled backward kernels
        # do not vectorise (measured 15-20x slower than the unfused passes at 256 channels of 16x16))
        into = into or (isinstance(nxt, GlobalAvgPool2d) and _fusable(nxt, GlobalAvgPool2d) and m.layout == "NHWC")
        into_block = (not into and isinstance(nxt, _Residual) and isinstance(m, BatchNorm2d)
                      and nxt._takes_prologue(m))
        defer = ((into or into_block) and residual is None and not m._captures and x.ndim == 4
                 and (into_block or getattr(nxt, "layout", None) == m.layout))  # (_takes_prologue: conv1's)
        if given is None and not defer and residual_affine is None:
            return (m(x) if residual is None else m(x, residual)), None
        out, pre = m._fused_forward(x, given, residual, defer, residual_affine, residual_relu)
        if pre is not None:
            return x, ("pre", m, pre)
        assert out is not None
        return out, None
    if pending is not None and pending[0] == "pre" and _fusable(m, GlobalAvgPool2d):
        norm, (_, _, relu) = pending[1], pending[2]
        return m._fused_pool(x, norm, relu), None
    if pending is not None and pending[0] == "pre" and isinstance(m, _Residual):
        y = m._forward_pre(x, pending[1], pending[2])  # (_takes_prologue said yes)
        for c in m._captures:
            c.output = y.copy()
        return y, None
    return (m(x) if residual is None else m(x, residual)), None


def _fused_chain(mods: tuple, last: Module, x: np.ndarray, residual: np.ndarray,
                 residual_affine: np.ndarray | None = None, residual_relu: bool = False,
                 pending: tuple | None = None) -> np.ndarray:
    """The main path ``mods`` then the last norm (given the shortcut's ``residual``, through
    ``residual_affine`` and ``residual_relu`` if given: :meth:`BatchNorm2d._fused_forward`),
    fused; ``pending``: what the layer before hands the first one (a norm's prologue)."""
    seq = list(mods) + [last]
    for m, nxt in zip(seq, seq[1:] + [None]):
        last_one = m is last
        x, pending = _fused_step(m, x, pending, nxt, residual if last_one else None,
                                 residual_affine if last_one else None, residual_relu and last_one)
    return x


def _prologue_of(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, layout: str) -> np.ndarray:
    """``scale * x + shift`` per channel (a new array; the declined path of a residual affine)."""
    shape = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
    return (x * scale.reshape(shape) + shift.reshape(shape)).astype(np.float32)


def _norm(kind, C, layout, activation=None, groups=8):
    check_choice("norm", kind, ("batch", "group", None))
    if kind == "batch":
        return BatchNorm2d(C, activation=activation, layout=layout)
    if kind == "group":
        return GroupNorm(math.gcd(groups, C), C, activation=activation, layout=layout)
    raise ValueError(f"norm: expected 'batch', 'group' or None, got {kind!r}")


def _strided_shape(x_shape: tuple, s: int, layout: str) -> tuple:
    """The shape of the pixels of ``x_shape`` whose row and column are multiples of ``s``."""
    if layout == "NHWC":
        return (x_shape[0], -(-x_shape[1] // s), -(-x_shape[2] // s), x_shape[3])
    return (x_shape[0], x_shape[1], -(-x_shape[2] // s), -(-x_shape[3] // s))


def _strided_to_whole(gc: np.ndarray, s: int, out: np.ndarray, layout: str) -> np.ndarray:
    """``out`` (the whole shape) holding ``gc`` at the pixels whose row and column are multiples
    of ``s`` (:func:`_strided_shape`) and zero elsewhere."""
    out.fill(0)
    if layout == "NHWC":
        out[:, ::s, ::s, :] = gc
    else:
        out[:, :, ::s, ::s] = gc
    return out


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
    batch norm with the ReLU; otherwise an add then a ReLU), and its adjoint. With batch norm and
    ``fuse`` (and :func:`cnnkit.nn.fusion`) on, the main path runs its Conv2d -> BatchNorm2d
    pairs fused (see :func:`cnnkit.nn.fusion`)."""

    _order: tuple[str, ...] = ()  # the main path's sub-modules, in torch's order (absent ones are None)
    fuse = True  # run Conv2d -> BatchNorm2d pairs fused (with cnnkit.nn.fusion on; batch norm only)

    def _fusing(self) -> bool:
        return self.norm == "batch" and self.fuse and fusion_enabled()

    def children(self) -> list[tuple[str, Module]]:
        """The sub-modules in torch's order and names (``downsample`` for the shortcut).

        Returns
        -------
        list of (str, Module)
        """
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

    def _takes_prologue(self, norm: BatchNorm2d) -> bool:
        """Whether the block runs on the input ``relu(scale * x + shift)`` of the batch norm
        ``norm`` without it being written (:meth:`BottleneckBlock._forward_pre`): a bottleneck
        block with an identity shortcut, fusing, whose conv1 is a fusable 1x1 at stride 1 without
        padding taking the norm's channels (its prologue, and the block's last norm adds the
        residual through the norm's affine map and ReLU)."""
        c: Any = getattr(self, "conv1", None)
        return (type(self) is BottleneckBlock and self._fusing() and self.shortcut is None and self.bn3 is not None
                and norm.activation == "relu" and norm.relu_mode == "standard" and _fusable(c, Conv2d)
                and c.kernel_size == (1, 1) and c.groups == 1 and c.in_channels == norm.num_features
                and c.layout == norm.layout and c.padding in (0, (0, 0), "valid", "same")
                and (c.stride == 1 if type(c.stride) is int else c.stride == (1, 1) if type(c.stride) is tuple
                     else _pair("stride", c.stride, 1) == (1, 1))
                and _fusable(self.bn3, BatchNorm2d)
                and _fusable(self.conv3, Conv2d))

    def _shortcut_forward(self, x, last_conv, last_norm):
        """The shortcut's output ``(r, None)``; or, fused, ``(z, affine)``: a projection shortcut
        (``Sequential(Conv2d, BatchNorm2d)`` without activation, nothing captured) whose norm is
        not written, its output ``fma(affine[:C], z, affine[C:])`` left to the block's last norm
        (``z`` the shortcut convolution's output, which also gives the norm its statistics), which
        adds it in its own pass (:meth:`BatchNorm2d._fused_forward` ``residual_affine``): a pass
        over the shortcut's output fewer. The norm declines as a prologue's norm does (a channel's
        ``|mean| / std`` too large), and then writes its output."""
        sc = self.shortcut
        if sc is None:
            return x, None
        if not (self._fusing() and type(sc) is Sequential and len(sc.layers) == 2 and sc.fuse
                and not sc._captures and not sc.layers[0]._captures and not sc.layers[1]._captures
                and _fusable(sc.layers[0], Conv2d) and _fusable(sc.layers[1], BatchNorm2d)
                and sc.layers[1].activation is None and _fusable(last_conv, Conv2d)
                and _fusable(last_norm, BatchNorm2d) and last_norm.training == sc.layers[1].training
                and last_norm.layout == sc.layers[1].layout and isinstance(x, np.ndarray) and x.ndim == 4):
            return sc(x), None
        conv, bn = sc.layers
        z, pending = _fused_step(conv, x, None, bn)
        given = pending[1:] if pending is not None and pending[0] == "stats" else None
        if bn.training and given is None:
            r = bn(z)
            sc._ran = (1, False, r.shape)
            return r, None
        out, pre = bn._fused_forward(z, given, None, True)
        sc._ran = (1, False, z.shape)
        if pre is None:
            return out, None
        return z, bn._pre_affine  # concat(scale, shift) (read only)

    def _unmerge(self, grad, last_norm):
        """(gradient into the last norm's input, gradient into the shortcut)."""
        if self.norm == "batch":
            return last_norm._backward(grad), last_norm.residual_grad
        gs = self.post._backward(grad)
        return (last_norm._backward(gs) if last_norm is not None else gs), gs

    def _input_grad(self, conv1, g, gr, compact=None):
        """The block's input gradient: ``conv1``'s (from ``g``, the gradient at its output) plus
        the shortcut's (from ``gr``). With fusion on, a 1x1 stride-1 ``conv1`` adds the shortcut's
        gradient in the epilogue of its own input gradient (:meth:`Conv2d._backward_add`), so the
        sum is written once; otherwise the two are added. A projection shortcut at a stride
        (1x1, no padding) then gives its input gradient at the strided pixels only
        (:meth:`_compact_shortcut_grad`), which that epilogue adds there (laid out whole only if
        the epilogue declines). ``compact``: that shortcut gradient, already computed by the caller
        (:meth:`_compact_shortcut_grad`'s result), or None."""
        in_bn = getattr(self, "_in_bn", None)
        if self._fusing() and self.shortcut is None and getattr(conv1, "_pre", None) is not None:
            gi = conv1._prologue_backward_add(g, gr)  # (the block ran on a norm's prologue: _forward_pre)
            if gi is not None:
                return gi
        if self._fusing() and self.shortcut is not None:
            if compact is None:
                compact = self._compact_shortcut_grad(gr, conv1, in_bn)
            if compact is not None:
                gc, s = compact
                gi = conv1._backward_add(g, gc, in_bn, s)
                if gi is not None:
                    return gi
                gsc = _strided_to_whole(gc, s, self._buf("gsc", conv1._x.shape), conv1.layout)
                return np.add(conv1._backward(g), gsc, out=self._buf("gx", gsc.shape))
        gsc = gr if self.shortcut is None else self.shortcut._backward(gr, input_grad=True)
        if self._fusing():
            gi = conv1._backward_add(g, gsc, in_bn)
            if gi is not None:
                return gi
        return np.add(conv1._backward(g), gsc, out=self._buf("gx", gsc.shape))

    def _compact_shortcut_grad(self, gr, conv1, in_bn):
        """The projection shortcut's backward (``Sequential(Conv2d 1x1 stride s, norm)``, the
        shortcut a block builds) with the convolution's input gradient at the strided pixels only
        (:meth:`Conv2d._strided_input_backward`): ``(compact gradient, s)``; None (nothing run)
        where that does not apply. The shortcut's and its layers' injected gradients and
        captures are honoured as its own backward honours them.

        Only where ``conv1``'s input gradient is the NHWC 1x1 pass that adds the compact gradient
        at its pixels itself (a bottleneck block's conv1, NHWC, whose input a training-mode batch
        norm ``in_bn`` wrote: :meth:`Conv2d._backward_add`'s compiled pass): every other path reads the
        shortcut's gradient whole, and laying the compact one out whole costs more than the
        strided kernel writing it so (NCHW resnext_small, 3.conv1: 2.2 -> 4.0 ms)."""
        sc = self.shortcut
        x1 = getattr(conv1, "_x", None)
        if (type(sc) is not Sequential or len(sc.layers) != 2 or not isinstance(conv1, Conv2d)
                or conv1.layout != "NHWC" or conv1.kernel_size != (1, 1) or conv1.groups != 1 or x1 is None
                or in_bn is None or _producing_norm(x1) is not in_bn):
            return None
        g1 = conv1._geom_of(x1.shape)  # (groups 1, NHWC: checked above)
        if g1.s != (1, 1) or g1.pad != (0, 0) or (g1.Ho, g1.Wo) != (g1.H, g1.W):
            return None
        conv, norm = sc.layers
        s = conv._strided_input_stride() if isinstance(conv, Conv2d) else 0
        if not s:
            return None
        g = sc._grad_in(gr)
        sc._note_grad(g)
        g = norm._backward(g, input_grad=True)
        return conv._strided_input_backward(g, s), s


class ResidualBlock(_Residual):
    """torchvision's BasicBlock: conv3x3(stride) - norm - ReLU - conv3x3 - norm, plus the shortcut
    (identity, or conv1x1(stride) - norm when the shape changes), then ReLU. ``groups`` makes both
    3x3 convs grouped; ``norm`` is "batch", "group" or None (convs get biases). The ReLUs are fused
    into the norms (batch norm also takes the residual) when there is a norm.

    Parameters
    ----------
    in_channels, out_channels : int >= 1
    stride : int
        Of the first 3x3 conv and the shortcut.
    groups : int
        Groups of both 3x3 convs.
    norm : "batch", "group" or None
    layout : "NCHW" or "NHWC"
    rng : numpy.random.Generator, optional
        Draws the initial parameters (default: a fresh, unseeded Generator).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn
    >>> block = nn.ResidualBlock(4, 8, stride=2, rng=np.random.default_rng(0))
    >>> block(np.ones((2, 4, 8, 8), np.float32)).shape
    (2, 8, 4, 4)
    """

    _order = ("conv1", "bn1", "conv2", "bn2")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, groups: int = 1,
                 norm: str | None = "batch", layout: str = "NCHW", rng: np.random.Generator | None = None):
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

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The block's output, ``relu(main(x) + shortcut(x))``.

        Parameters
        ----------
        x : float32 ndarray
            (N, in_channels, H, W), or (N, H, W, in_channels) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            (N, out_channels, Ho, Wo) (NHWC likewise), ``Ho = ceil(H / stride)``.
        """
        self._in_bn = _producing_norm(x) if self._fusing() else None
        r, ra = self._shortcut_forward(x, self.conv2, self.bn2)
        if self._fusing() and self.bn2 is not None:
            return _fused_chain((self.conv1, self.bn1, self.conv2), self.bn2, x, r, ra)
        h = self.bn1(self.conv1(x))
        return self._merge(self.conv2(h), r, self.bn2)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """Backpropagate through the main path and the shortcut, writing every sub-module's parameter
        gradients, and return the input gradient (the sum of both paths').

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        g, gr = self._unmerge(grad, self.bn2)
        g = self.conv2._backward(g)
        g = self.bn1._backward(g)
        return self._input_grad(self.conv1, g, gr)


class BottleneckBlock(_Residual):
    """ResNeXt's bottleneck: conv1x1 - norm - ReLU - grouped conv3x3(stride) - norm - ReLU -
    conv1x1 - norm, plus the shortcut, then ReLU (``width`` channels inside, ``groups`` groups).

    Parameters
    ----------
    in_channels, out_channels : int >= 1
    width : int >= 1
        Channels of the inner (grouped 3x3) convolution; divisible by ``groups``.
    stride : int
        Of the 3x3 conv and the shortcut.
    groups : int
    norm : "batch", "group" or None
    layout : "NCHW" or "NHWC"
    rng : numpy.random.Generator, optional
        Draws the initial parameters (default: a fresh, unseeded Generator).
    """

    _order = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")

    def __init__(self, in_channels: int, out_channels: int, width: int, stride: int = 1, *, groups: int = 8,
                 norm: str | None = "batch", layout: str = "NCHW", rng: np.random.Generator | None = None):
        super().__init__()
        rng = _rng(rng)
        _positive_int("width", width)
        norm = check_choice("norm", norm, ("batch", "group", None))
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

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The block's output, ``relu(main(x) + shortcut(x))``.

        Parameters
        ----------
        x : float32 ndarray
            (N, in_channels, H, W), or (N, H, W, in_channels) with ``layout="NHWC"``.

        Returns
        -------
        float32 ndarray
            (N, out_channels, Ho, Wo) (NHWC likewise), ``Ho = ceil(H / stride)``.
        """
        self._in_bn = _producing_norm(x) if self._fusing() else None
        r, ra = self._shortcut_forward(x, self.conv3, self.bn3)
        if self._fusing() and self.bn3 is not None:
            return _fused_chain((self.conv1, self.bn1, self.conv2, self.bn2, self.conv3), self.bn3, x, r, ra)
        h = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self._merge(self.conv3(h), r, self.bn3)

    def _forward_pre(self, z: np.ndarray, norm: BatchNorm2d, pre: tuple) -> np.ndarray:
        """:meth:`forward` on the input ``relu(scale * z + shift)`` (``pre``: the batch norm
        ``norm``'s prologue, :meth:`_takes_prologue`), which is never written: conv1 applies it as
        its prologue, and the last norm adds it as the residual through that affine map and ReLU
        (:meth:`BatchNorm2d._fused_forward` ``residual_affine``). In the backward, conv1's fused
        input gradient adds the shortcut's gradient and masks the sum with the prologue's ReLU
        (:meth:`Conv2d._prologue_backward_add`), the norm's pending gradient."""
        self._in_bn = None
        assert self.bn3 is not None  # (_takes_prologue)
        return _fused_chain((self.conv1, self.bn1, self.conv2, self.bn2, self.conv3), self.bn3, z, z,
                            norm._pre_affine, True, ("pre", norm, pre))  # (concat(scale, shift), read only)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """Backpropagate through the main path and the shortcut, writing every sub-module's parameter
        gradients, and return the input gradient (the sum of both paths').

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output, of its shape.
        input_grad : bool
            Compute and return the gradient with respect to x.
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x (its shape; a reused buffer).
        """
        g, gr = self._unmerge(grad, self.bn3)
        # A projection shortcut's compact gradient first (the same values): conv1's input gradient
        # then reads conv2's, written just before, while much of it is still in the caches
        # (resnext_small's step 1.01x at 2 threads, 1.02x at 1).
        compact = None
        if self._fusing() and self.shortcut is not None:
            compact = self._compact_shortcut_grad(gr, self.conv1, getattr(self, "_in_bn", None))
        g = self.conv3._backward(g)
        g = self.conv2._backward(self.bn2._backward(g))
        return self._input_grad(self.conv1, self.bn1._backward(g), gr, compact)
