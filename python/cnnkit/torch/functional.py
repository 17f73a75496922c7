"""Autograd functions on cnnkit's kernels, with ``torch.nn.functional``'s signatures.

:func:`conv2d`, :func:`batch_norm` and :func:`group_norm` take and return what
``torch.nn.functional.conv2d`` / ``batch_norm`` / ``group_norm`` do, and give the same gradients
through ``torch.autograd``; :func:`batch_norm_relu` (``relu(batch_norm(x))``) and
:func:`batch_norm_add_relu` (``relu(batch_norm(x) + residual)``) are fused forms of the same.
Running statistics are updated in place, as torch does (unbiased variance).

Zero copy
---------
cnnkit reads the tensors' own memory through NumPy views (``t.detach().numpy()``; for a
channels_last tensor, the NHWC view ``t.permute(0, 2, 3, 1)``, run with ``layout="NHWC"``) and
writes its results through ``out=`` into tensors allocated by torch in the input's memory
format. No activation is copied at the boundary. Small per-channel arrays are the exceptions:
the batch-norm weight and bias gradients and the group-norm ones (``(C,)``) are allocated by
cnnkit and wrapped with ``torch.from_numpy`` (no copy either), and a convolution weight that is
not contiguous (a channels_last weight) is copied to a contiguous one (``C_out*C_in/groups*kH*kW``
values) each call. An incoming gradient in another memory format than the output's (or not
dense, such as the expanded gradient of a ``sum()``) is made contiguous in the output's format
first, the copy torch's own kernels make too. One temporary the size of the input remains: the
eval-mode backward of :func:`batch_norm_relu` masks the incoming gradient into a new tensor
(with :func:`batch_norm_add_relu`, into the residual's gradient itself). The output takes the input's memory format (where
torch's convolution also makes it channels_last for a contiguous input when the weight alone is
channels_last, cnnkit's output stays contiguous).

When cnnkit runs (the fallback rule)
------------------------------------
cnnkit runs a call when every tensor argument is a plain CPU tensor (``torch.Tensor`` or
``torch.nn.Parameter``, not a subclass; strided) of one dtype, float32 or float64, CPU autocast
is off, no ``torch.func`` transform, ``torch.jit`` trace or ``torch.compile`` is running, the
activation tensors (input, residual) are contiguous or channels_last (4-D) and in the same
format, the per-channel tensors are 1-D of the right length (running statistics contiguous, as
they are updated in place), and the arguments are ones cnnkit accepts (for batch norm: momentum
in [0, 1], a finite eps > 0, more than one value per channel when training, no negative or NaN
running variance in eval mode; for group norm: a non-empty input). Anything else runs ``torch.nn.functional``'s own function with the same arguments, so
it gives torch's result or raises torch's error (a CUDA tensor, half or bfloat16 precision,
mixed dtypes or devices, a non-contiguous input, an unknown padding string). :func:`can_run`
answers for one call and :func:`fallback_reason` says why not.

Double backward is not supported (the functions are ``once_differentiable``); gradcheck in
float64 holds.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as TF
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _core, ops
from ..ops.conv import _backward_core as _conv_backward_core
from ..ops.conv import _conv_core_geom
from ..ops.norm import _bn_backward_chunk, _bn_infer_core, _bn_train_core
from ..ops.norm import _geometry as _norm_geometry

__all__ = ["conv2d", "batch_norm", "batch_norm_relu", "batch_norm_add_relu", "group_norm",
           "can_run", "fallback_reason"]

_FLOATS = (torch.float32, torch.float64)
_NP_DTYPES: dict[torch.dtype, np.dtype] = {torch.float32: np.dtype(np.float32),
                                           torch.float64: np.dtype(np.float64)}
_CL = torch.channels_last
IntPair = Union[int, tuple[int, ...]]


# ---- tensors <-> NumPy views ---------------------------------------------------------------------

def _channels_last_strides(t: Tensor) -> bool:
    """Whether torch suggests channels_last for this 4-D tensor (its stride-order rule, which
    settles tensors that are contiguous both ways, such as C == 1)."""
    size, stride = t.shape, t.stride()
    lo = 0
    for d in (1, 3, 2, 0):
        if size[d] == 0 or stride[d] < lo:
            return False
        if d == 0 and lo == stride[1]:
            return False
        lo = stride[d] * (size[d] if size[d] > 1 else 1)
    return True


def _layout(t: Tensor) -> str | None:
    """"NHWC" for a channels_last 4-D tensor, "NCHW" for a contiguous one, else None."""
    if t.dim() == 4 and t.is_contiguous(memory_format=_CL) and (
            not t.is_contiguous() or _channels_last_strides(t)):
        return "NHWC"
    return "NCHW" if t.is_contiguous() else None


def _np(t: Tensor, layout: str = "NCHW") -> np.ndarray:
    """The NumPy view of ``t``'s memory (NHWC: of its permuted, contiguous view)."""
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if layout == "NHWC" else t).numpy()


def _np_opt(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy()


def _empty(shape: Any, dtype: torch.dtype, layout: str) -> Tensor:
    if layout == "NHWC":
        return torch.empty(shape, dtype=dtype, memory_format=_CL)
    return torch.empty(shape, dtype=dtype)


def _dense(g: Tensor, layout: str) -> Tensor:
    """An incoming gradient, contiguous in ``layout`` (a copy only where it is not)."""
    return g.contiguous(memory_format=_CL if layout == "NHWC" else torch.contiguous_format)


# ---- the fallback rule ---------------------------------------------------------------------------

_PLAIN = (Tensor, torch.nn.Parameter)
_STRIDED = torch.strided


def _tensors_reason(tensors: tuple[Any, ...]) -> str | None:
    """Why these tensors (None entries skipped) cannot go to cnnkit, or None if they can."""
    dtype = None
    for t in tensors:  # the usual case first, in cheap attribute checks; the reason below
        if t is None:
            continue
        if (type(t) not in _PLAIN or not t.is_cpu or t.layout is not _STRIDED or t.is_nested
                or (dtype is not None and t.dtype is not dtype)):
            break
        dtype = t.dtype
    else:
        if (dtype in _FLOATS and not torch.is_autocast_enabled("cpu") and not _functorch_active()
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()):
            return None
    present = [t for t in tensors if t is not None]
    for t in present:
        if type(t) is not Tensor and type(t) is not torch.nn.Parameter:
            if not isinstance(t, Tensor):
                return f"an argument is a {type(t).__name__}, not a Tensor"
            return f"a tensor subclass ({type(t).__name__})"
    dtype = present[0].dtype
    for t in present:
        if t.device.type != "cpu":
            return f"a tensor is on {t.device}"
        if t.layout != torch.strided or t.is_nested:
            return f"a tensor has layout {t.layout}"
        if t.dtype != dtype:
            return f"mixed dtypes ({dtype} and {t.dtype})"
    if dtype not in _FLOATS:
        return f"dtype {dtype} (cnnkit takes float32 and float64)"
    if torch.is_autocast_enabled("cpu"):
        return "CPU autocast is enabled"
    if _functorch_active():
        return "a torch.func transform (vmap, grad, ...) is active"
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "torch.jit is tracing or torch.compile is compiling"
    return None


def _functorch_active() -> bool:
    """Whether a torch.func transform is running (its wrapped tensors have no memory of their
    own to hand to cnnkit)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _channel_reason(name: str, t: Tensor | None, C: int, contiguous: bool = False) -> str | None:
    if t is None:
        return None
    if t.dim() != 1 or t.shape[0] != C:
        return f"{name} has shape {tuple(t.shape)}, not ({C},)"
    if contiguous and not t.is_contiguous():
        return f"{name} is not contiguous (it is updated in place)"
    return None


class _ConvPlan(NamedTuple):
    layout: str
    unbatched: bool
    out_shape: tuple[int, int, int, int]  # NCHW order
    geom: Any  # the checked _core.ConvGeom: cached calls go straight to the compiled passes


# plans by (shapes, strides, arguments): a model calls each convolution with the same ones
_CONV_PLANS: dict[tuple, _ConvPlan | str] = {}


def _conv_plan(input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
               groups: Any) -> _ConvPlan | str:
    reason = _tensors_reason((input, weight, bias))
    if reason:
        return reason
    key: tuple | None = (input.shape, input.stride(), weight.shape,
                         None if bias is None else bias.shape, stride, padding, dilation, groups,
                         type(stride), type(padding), type(dilation), type(groups))
    try:
        plan = _CONV_PLANS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable argument (a list): no caching
        key, plan = None, None
    if plan is None:
        plan = _conv_geometry(input, weight, bias, stride, padding, dilation, groups)
        if key is not None:
            if len(_CONV_PLANS) >= 4096:
                _CONV_PLANS.clear()
            _CONV_PLANS[key] = plan
    return plan


def _conv_geometry(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
                   dilation: Any, groups: Any) -> _ConvPlan | str:
    if input.dim() not in (3, 4) or weight.dim() != 4 or (bias is not None and bias.dim() != 1):
        return "an argument has an unexpected number of dimensions"
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    layout = _layout(x)
    if layout is None:
        return "the input is neither contiguous nor channels_last"
    if x.numel() == 0:
        return "the input is empty"
    if bias is not None and bias.shape[0] != weight.shape[0]:
        return "bias does not match the weight's output channels"
    shape = x.shape if layout == "NCHW" else (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    try:
        y, geom = _conv_core_geom(tuple(shape), tuple(weight.shape), stride, padding, dilation,
                                  groups, layout)
    except (TypeError, ValueError) as exc:
        return f"cnnkit rejects the arguments ({exc})"
    out = (y[0], y[1], y[2], y[3]) if layout == "NCHW" else (y[0], y[3], y[1], y[2])
    return _ConvPlan(layout, unbatched, out, geom)


class _NormPlan(NamedTuple):
    layout: str


# batch-norm plans by (shapes, strides, arguments), as the convolution's
_BN_PLANS: dict[tuple, _NormPlan | str] = {}


def _bn_plan(input: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any,
             training: Any, momentum: Any, eps: Any, residual: Any = None) -> _NormPlan | str:
    reason = _tensors_reason((input, residual, running_mean, running_var, weight, bias))
    if reason:
        return reason
    # type(...) in the key: True == 1 and 0.1 == numpy.float64(0.1) hash alike, not check alike
    key: tuple | None = (input.shape, input.stride(), training, momentum, eps, type(training),
                         type(momentum), type(eps),
                         *((None, None) if t is None else (t.shape, t.stride())
                           for t in (residual, running_mean, running_var, weight, bias)))
    try:
        plan = _BN_PLANS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable argument: no caching
        key, plan = None, None
    if plan is None:
        plan = _bn_checks(input, running_mean, running_var, weight, bias, training, momentum, eps,
                          residual)
        if key is not None:
            if len(_BN_PLANS) >= 4096:
                _BN_PLANS.clear()
            _BN_PLANS[key] = plan
    return plan


def _bn_checks(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None, bias: Tensor | None, training: Any, momentum: Any, eps: Any,
               residual: Tensor | None) -> _NormPlan | str:
    if input.dim() < 2:
        return "the input has fewer than 2 dimensions"
    if input.numel() == 0:
        return "the input is empty"
    layout = _layout(input)
    if layout is None:
        return "the input is neither contiguous nor channels_last"
    if residual is not None and (residual.shape != input.shape or _layout(residual) != layout):
        return "the residual differs from the input in shape or memory format"
    C = input.shape[1]
    for name, t, contiguous in (("running_mean", running_mean, True), ("running_var", running_var, True),
                                ("weight", weight, False), ("bias", bias, False)):
        reason = _channel_reason(name, t, C, contiguous)
        if reason:
            return reason
    if (running_mean is None) != (running_var is None):
        return "only one of running_mean and running_var is given"
    if not isinstance(training, bool):
        return "training is not a bool"
    if not training and running_mean is None:
        return "eval mode without running statistics"
    if not _real(momentum) or not 0.0 <= float(momentum) <= 1.0:
        return f"momentum {momentum!r} (cnnkit takes a number in [0, 1])"
    if not _real(eps) or not 0.0 < float(eps) < math.inf:
        return f"eps {eps!r} (cnnkit takes a finite eps > 0)"
    if training and input.numel() // C <= 1:
        return "one value per channel when training"
    return _NormPlan(layout)


def _gn_plan(input: Any, num_groups: Any, weight: Any, bias: Any, eps: Any) -> _NormPlan | str:
    reason = _tensors_reason((input, weight, bias))
    if reason:
        return reason
    if input.dim() < 2 or input.numel() == 0:
        return "the input is empty or has fewer than 2 dimensions"
    layout = _layout(input)
    if layout is None:
        return "the input is neither contiguous nor channels_last"
    C = input.shape[1]
    if (not isinstance(num_groups, numbers.Integral) or isinstance(num_groups, bool)
            or num_groups < 1 or C % num_groups):
        return f"num_groups {num_groups!r} does not divide the {C} channels"
    for name, t in (("weight", weight), ("bias", bias)):
        reason = _channel_reason(name, t, C)
        if reason:
            return reason
    if not _real(eps) or not 0.0 < float(eps) < math.inf:
        return f"eps {eps!r} (cnnkit takes a finite eps > 0)"
    return _NormPlan(layout)


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---- conv2d --------------------------------------------------------------------------------------

def _cnp(t: Tensor) -> np.ndarray:
    """The NumPy view of ``t`` made contiguous (a copy only where it is not)."""
    t = t.detach()
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _conv_forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
                  dilation: Any, groups: int, plan: _ConvPlan) -> Tensor:
    # the plan holds conv2d's checks of these shapes and arguments (its cache key: the shapes,
    # the input's strides and the arguments), the tensors passed the fallback rule (one float
    # dtype, CPU, strided) and the views are C-contiguous: the compiled pass runs directly
    # (it checks each array's dtype and size against the geometry once more)
    lay = plan.layout
    y = _empty(plan.out_shape, input.dtype, lay)
    _core.conv_forward(_np(input, lay), _cnp(weight), None if bias is None else _cnp(bias),
                       _np(y, lay), plan.geom)
    return y


class _Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, stride: Any,
                padding: Any, dilation: Any, groups: int, plan: _ConvPlan) -> Tensor:
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # x for the weight and bias gradients (one pass computes both), the weight for x's
        ctx.save_for_backward(input if need_w or need_b else None, weight if need_x else None)
        ctx.args = (stride, padding, dilation, groups, plan, input.shape, weight.shape)
        return _conv_forward(input, weight, bias, stride, padding, dilation, groups, plan)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups, plan, x_shape, w_shape = ctx.args
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        lay = plan.layout
        g = _dense(grad_output, lay)
        gx = _empty(x_shape, g.dtype, lay) if need_x else None
        gw = torch.empty(w_shape, dtype=g.dtype) if need_w else None
        gb = torch.empty(w_shape[0], dtype=g.dtype) if need_b else None
        # the input pass reads the weight, the weight pass x (the forward saved only what is
        # read); the forward's plan checked the geometry (see _conv_forward)
        _conv_backward_core(_np(g, lay), None if input is None else _np(input, lay),
                            None if weight is None else _cnp(weight), None if gx is None else _np(gx, lay),
                            _np_opt(gw), _np_opt(gb), plan.geom)
        return gx, gw, gb, None, None, None, None, None


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
           padding: IntPair | str = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution, ``torch.nn.functional.conv2d`` on cnnkit's kernels.

    Parameters
    ----------
    input : Tensor
        ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, float32 or float64, contiguous or
        channels_last.
    weight : Tensor
        ``(C_out, C_in/groups, kH, kW)``, input's dtype.
    bias : Tensor, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int)
    padding : int, (int, int), "same" or "valid"
        "same" (stride 1 only) pads the extra row/column at the end, as torch does.
    groups : int
        Divides C_in and C_out.

    Returns
    -------
    Tensor
        ``(N, C_out, Ho, Wo)`` (``(C_out, Ho, Wo)`` unbatched), input's dtype and memory format;
        differentiable with respect to input, weight and bias. Calls cnnkit cannot run (see the
        module docstring) return ``torch.nn.functional.conv2d(...)``.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> y = F.conv2d(x, w, padding=1)
    >>> y.shape, bool(torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5))
    (torch.Size([2, 4, 8, 8]), True)
    """
    plan = _conv_plan(input, weight, bias, stride, padding, dilation, groups)
    if isinstance(plan, str):
        return TF.conv2d(input, weight, bias, stride, padding, dilation, groups)
    x = input.unsqueeze(0) if plan.unbatched else input
    if _needs_graph(x, weight, bias):
        y = _Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, groups, plan)
    else:
        y = _conv_forward(x, weight, bias, stride, padding, dilation, groups, plan)
    return y.squeeze(0) if plan.unbatched else y


# ---- batch norm ----------------------------------------------------------------------------------

def _bn_weight(weight: Tensor | None, bias: Tensor | None, C: int, dtype: torch.dtype) -> np.ndarray | None:
    """The weight cnnkit takes: None without affine; ones when only a bias is given (cnnkit's
    bias gradient comes with the weight's)."""
    if weight is not None:
        return _cnp(weight)
    if bias is not None:
        return np.ones(C, _NP_DTYPES[dtype])
    return None


def _bn_forward(ctx: Any, input: Tensor, residual: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                training: bool, momentum: float, eps: float, relu: bool, layout: str) -> Tensor:
    """The forward pass; with a ``ctx``, it also saves what the backward reads."""
    y = _empty(input.shape, input.dtype, layout)
    x, y_np = _np(input, layout), _np(y, layout)
    w = _bn_weight(weight, bias, input.shape[1], input.dtype)
    b = None if bias is None else _cnp(bias)
    res = None if residual is None else _np(residual, layout)
    # _bn_plan checked what ops.batch_norm_train/_infer check (one float dtype, per-channel
    # shapes, contiguous running statistics, momentum, eps, more than one value per channel),
    # so their compiled passes run directly
    N, C, S, nhwc = _norm_geometry(x, layout)
    if training:
        mean, invstd = _bn_train_core(x, y_np, res, N, C, S, nhwc, w, b, _np_opt(running_mean),
                                      _np_opt(running_var), float(momentum), float(eps), relu)
    else:
        _bn_infer_core(x, y_np, res, N, C, S, nhwc, w, b, _np_opt(running_mean),
                       _np_opt(running_var), float(eps), relu)
    if ctx is not None:
        need_w = ctx.needs_input_grad[2]  # (input, residual, weight, ...)
        if training:
            # the batch statistics (float64, (C,)) replace the running statistics
            ctx.stats = (mean, invstd)
            # x is read for every gradient (the sums over g and g*xhat)
            ctx.save_for_backward(input, weight, y if relu else None, None, None)
        else:
            ctx.stats = None
            need_b = ctx.needs_input_grad[3]
            ctx.save_for_backward(input if need_w or need_b else None, weight,
                                  y if relu else None, running_mean, running_var)
        ctx.args = (training, float(eps), relu, layout, bias is not None)
    return y


class _BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, residual: Tensor | None, weight: Tensor | None,
                bias: Tensor | None, running_mean: Tensor | None, running_var: Tensor | None,
                training: bool, momentum: float, eps: float, relu: bool, layout: str) -> Tensor:
        return _bn_forward(ctx, input, residual, running_mean, running_var, weight,
                           bias, training, momentum, eps, relu, layout)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, y, running_mean, running_var = ctx.saved_tensors
        training, eps, relu, layout, has_bias = ctx.args
        need_x, need_r, need_w, need_b = ctx.needs_input_grad[:4]
        need_w = need_w and weight is not None
        need_b = need_b and has_bias
        g = _dense(grad_output, layout)
        C = g.shape[1]
        gx = _empty(g.shape, g.dtype, layout) if need_x else None
        gr = _empty(g.shape, g.dtype, layout) if need_r else None
        gw_t: Tensor | None = None
        gb_t: Tensor | None = None
        w = None if weight is None else _cnp(weight)
        if training:
            # ops.batch_norm_backward's passes on the forward's checked arrays
            mean, invstd = ctx.stats
            x_np = _np(input, layout)
            N, C, S, nhwc = _norm_geometry(x_np, layout)
            sum_g, sum_gxhat = np.zeros(C), np.zeros(C)
            sg, sgxhat = _bn_backward_chunk(
                _np(g, layout), x_np, None if y is None else _np(y, layout),
                None if gx is None else _np(gx, layout), None if gr is None else _np(gr, layout),
                N, C, S, nhwc, mean, invstd, np.ones(C) if w is None else w.astype(np.float64), N * S)
            sum_g += sg
            sum_gxhat += sgxhat
            dt = _NP_DTYPES[g.dtype]
            if need_w:
                gw_t = torch.from_numpy(sum_gxhat.astype(dt))
            if need_b:
                gb_t = torch.from_numpy(sum_g.astype(dt))
        else:
            # eval mode: y = (x - rm) * w * invstd + b is affine in x, so grad_input is
            # g * w * invstd, a batch_norm_infer of the (ReLU-masked) gradient with mean 0; the
            # weight and bias gradients are the sums over g*xhat and g that batch_norm_backward
            # reduces, given the running statistics in place of the batch's
            dt = _NP_DTYPES[g.dtype]
            rv = running_var.detach().numpy()
            gm = g
            if relu and (gx is not None or gr is not None):
                gm = gr if gr is not None else _empty(g.shape, g.dtype, layout)
                torch.where(y > 0, g, torch.zeros((), dtype=g.dtype), out=gm)
            elif gr is not None:
                gr.copy_(g)
            if gx is not None:
                ops.batch_norm_infer(_np(gm, layout), np.ones(C, dt) if w is None else w, None,
                                     np.zeros(C, dt), rv, eps=eps, layout=layout,
                                     out=_np(gx, layout))
            if need_w or need_b:
                mean = running_mean.detach().numpy().astype(np.float64)
                invstd = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
                needs = [n for n, want in (("weight", need_w), ("bias", need_b)) if want]
                res = ops.batch_norm_backward(
                    _np(g, layout), _np(input, layout), np.ones(C, dt) if w is None else w, mean,
                    invstd, y=None if y is None else _np(y, layout),
                    activation="relu" if relu else None, layout=layout, needs=needs)
                if need_w:
                    gw_t = torch.from_numpy(res[1])
                if need_b:
                    gb_t = torch.from_numpy(res[2])
        return (gx, gr, gw_t, gb_t) + (None,) * 7


def _batch_norm(input: Tensor, residual: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                training: bool, momentum: Any, eps: float, relu: bool) -> Tensor:
    plan = _bn_plan(input, running_mean, running_var, weight, bias, training, momentum, eps, residual)
    if not isinstance(plan, str):
        try:
            if _needs_graph(input, residual, weight, bias):
                return _BatchNormFunction.apply(input, residual, weight, bias, running_mean,
                                                running_var, training, momentum, eps, relu,
                                                plan.layout)
            return _bn_forward(None, input, residual, running_mean, running_var, weight, bias,
                               training, momentum, eps, relu, plan.layout)
        except ValueError:
            # a negative or NaN running variance in eval mode: cnnkit refuses it (before
            # writing anything), torch returns NaN
            if training:
                raise
    y = TF.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization, ``torch.nn.functional.batch_norm`` on cnnkit's kernels.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel (axis 1), with the batch's
    statistics (biased variance) when ``training`` and the running ones otherwise. When
    training with running statistics, they are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (the unbiased variance for
    ``running_var``).

    Parameters
    ----------
    input : Tensor
        ``(N, C, *spatial)``, float32 or float64, contiguous (or channels_last when 4-D).
    running_mean, running_var : Tensor or None
        ``(C,)``, input's dtype; required when not training.
    weight, bias : Tensor, optional
        ``(C,)``, input's dtype (None: 1 and 0).
    training : bool
    momentum : float
    eps : float

    Returns
    -------
    Tensor
        input's shape, dtype and memory format; differentiable with respect to input, weight
        and bias.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> x = torch.randn(8, 3, 4, 4)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = F.batch_norm(x, rm, rv, training=True)
    >>> bool(torch.allclose(rm, 0.1 * x.mean((0, 2, 3)), atol=1e-6))
    True
    """
    return _batch_norm(input, None, running_mean, running_var, weight, bias, training, momentum,
                       eps, False)


def batch_norm_relu(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm(...))`` in one pass over the input.

    Parameters
    ----------
    input, running_mean, running_var, weight, bias, training, momentum, eps
        As in :func:`batch_norm`.

    Returns
    -------
    Tensor
        input's shape, dtype and memory format.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> y = F.batch_norm_relu(torch.randn(4, 2, 3, 3), None, None, training=True)
    >>> bool((y >= 0).all())
    True
    """
    return _batch_norm(input, None, running_mean, running_var, weight, bias, training, momentum,
                       eps, True)


def batch_norm_add_relu(input: Tensor, residual: Tensor, running_mean: Tensor | None,
                        running_var: Tensor | None, weight: Tensor | None = None,
                        bias: Tensor | None = None, training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm(...) + residual)`` in one pass (a residual block's tail).

    Parameters
    ----------
    input : Tensor
        As in :func:`batch_norm`.
    residual : Tensor
        input's shape and dtype; differentiable.
    running_mean, running_var, weight, bias, training, momentum, eps
        As in :func:`batch_norm`.

    Returns
    -------
    Tensor
        input's shape, dtype and memory format.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> x = torch.randn(4, 2, 3, 3)
    >>> y = F.batch_norm_add_relu(x, x, None, None, training=True)
    >>> bool((y >= 0).all())
    True
    """
    if not isinstance(residual, Tensor):
        raise TypeError(f"residual: expected a Tensor, got {type(residual).__name__}")
    return _batch_norm(input, residual, running_mean, running_var, weight, bias, training,
                       momentum, eps, True)


# ---- group norm ----------------------------------------------------------------------------------

def _gn_forward(ctx: Any, input: Tensor, num_groups: int, weight: Tensor | None,
                bias: Tensor | None, eps: float, layout: str) -> Tensor:
    y = _empty(input.shape, input.dtype, layout)
    w = _bn_weight(weight, bias, input.shape[1], input.dtype)
    _, mean, invstd = ops.group_norm(_np(input, layout), int(num_groups), w, _np_opt(bias),
                                     float(eps), layout=layout, return_stats=True,
                                     out=_np(y, layout))
    if ctx is not None:
        ctx.stats = (mean, invstd)
        ctx.save_for_backward(input, weight)
        ctx.args = (int(num_groups), layout, bias is not None)
    return y


class _GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                num_groups: int, eps: float, layout: str) -> Tensor:
        return _gn_forward(ctx, input, num_groups, weight, bias, eps, layout)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        num_groups, layout, has_bias = ctx.args
        mean, invstd = ctx.stats
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w = need_w and weight is not None
        need_b = need_b and has_bias
        g = _dense(grad_output, layout)
        w = None if weight is None else weight.detach().numpy()
        if w is None and need_b:
            w = np.ones(g.shape[1], _NP_DTYPES[g.dtype])
        gx = _empty(g.shape, g.dtype, layout) if need_x else None
        needs = [n for n, want in zip(("input", "weight", "bias"), (need_x, need_w, need_b)) if want]
        _, gw, gb = ops.group_norm_backward(_np(g, layout), _np(input, layout), num_groups, w, mean,
                                            invstd, layout=layout, needs=needs,
                                            out=None if gx is None else _np(gx, layout))
        return (gx, None if gw is None or not need_w else torch.from_numpy(gw),
                None if gb is None or not need_b else torch.from_numpy(gb), None, None, None)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Group normalization, ``torch.nn.functional.group_norm`` on cnnkit's kernels.

    Statistics per sample and group of ``C // num_groups`` channels (biased variance), then the
    per-channel ``weight`` and ``bias``.

    Parameters
    ----------
    input : Tensor
        ``(N, C, *spatial)``, float32 or float64, contiguous (or channels_last when 4-D).
    num_groups : int
        Divides C.
    weight, bias : Tensor, optional
        ``(C,)``, input's dtype.
    eps : float

    Returns
    -------
    Tensor
        input's shape, dtype and memory format; differentiable with respect to input, weight and
        bias.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> x = torch.randn(2, 4, 3, 3)
    >>> bool(torch.allclose(F.group_norm(x, 2), torch.nn.functional.group_norm(x, 2), atol=1e-5))
    True
    """
    plan = _gn_plan(input, num_groups, weight, bias, eps)
    if isinstance(plan, str):
        return TF.group_norm(input, num_groups, weight, bias, eps)
    if _needs_graph(input, weight, bias):
        return _GroupNormFunction.apply(input, weight, bias, num_groups, eps, plan.layout)
    return _gn_forward(None, input, num_groups, weight, bias, eps, plan.layout)


# ---- the predicate -------------------------------------------------------------------------------

_PLANS: dict[Callable[..., Tensor], Callable[..., Any]] = {}


def fallback_reason(fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> str | None:
    """Why ``fn(*args, **kwargs)`` would run torch's function instead of cnnkit's, or None.

    Parameters
    ----------
    fn : callable
        One of this module's functions: :func:`conv2d`, :func:`batch_norm`,
        :func:`batch_norm_relu`, :func:`batch_norm_add_relu`, :func:`group_norm`.
    *args, **kwargs
        The call's arguments, as ``fn`` takes them.

    Returns
    -------
    str or None
        A short reason (such as ``"a tensor is on cuda:0"``), or None when cnnkit runs the call.

    Raises
    ------
    ValueError
        ``fn`` is not one of this module's functions.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> F.fallback_reason(F.conv2d, torch.randn(1, 2, 5, 5).half(), torch.randn(3, 2, 3, 3).half())
    'dtype torch.float16 (cnnkit takes float32 and float64)'
    """
    plan_of = _PLANS.get(fn)
    if plan_of is None:
        raise ValueError(f"fn: expected one of {', '.join(f.__name__ for f in _PLANS)}, got {fn!r}")
    plan = plan_of(*args, **kwargs)
    return plan if isinstance(plan, str) else None


def can_run(fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> bool:
    """Whether ``fn(*args, **kwargs)`` runs on cnnkit (else it runs torch's own function).

    The rule is in the module docstring; :func:`fallback_reason` says why a call falls back.

    Parameters
    ----------
    fn : callable
        :func:`conv2d`, :func:`batch_norm`, :func:`batch_norm_relu`, :func:`batch_norm_add_relu`
        or :func:`group_norm`.
    *args, **kwargs
        The call's arguments.

    Returns
    -------
    bool

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch import functional as F
    >>> x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    >>> F.can_run(F.conv2d, x, w), F.can_run(F.conv2d, x.half(), w.half())
    (True, False)
    """
    return fallback_reason(fn, *args, **kwargs) is None


def _conv_args(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
               dilation: Any = 1, groups: Any = 1) -> _ConvPlan | str:
    return _conv_plan(input, weight, bias, stride, padding, dilation, groups)


def _bn_args(input: Any, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
             training: Any = False, momentum: Any = 0.1, eps: Any = 1e-5) -> _NormPlan | str:
    return _bn_plan(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _bn_add_args(input: Any, residual: Any, running_mean: Any, running_var: Any, weight: Any = None,
                 bias: Any = None, training: Any = False, momentum: Any = 0.1,
                 eps: Any = 1e-5) -> _NormPlan | str:
    if not isinstance(residual, Tensor):
        return "residual is not a Tensor"
    return _bn_plan(input, running_mean, running_var, weight, bias, training, momentum, eps, residual)


def _gn_args(input: Any, num_groups: Any, weight: Any = None, bias: Any = None,
             eps: Any = 1e-5) -> _NormPlan | str:
    return _gn_plan(input, num_groups, weight, bias, eps)


_PLANS.update({conv2d: _conv_args, batch_norm: _bn_args, batch_norm_relu: _bn_args,
               batch_norm_add_relu: _bn_add_args, group_norm: _gn_args})
