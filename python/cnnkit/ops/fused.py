"""Convolution with a fused batch-norm prologue and fused epilogues, and its backward.

``conv2d_fused`` computes, per output channel ``k``::

    a = pre_scale[c] * x + pre_shift[c]            (prologue; None means 1 and 0)
    a = max(a, 0)                                   (prologue ReLU, pre_relu=True)
    y = conv2d(a, weight, bias, ...) [+ residual]   (zero padding applies to a)
    y = max(y, 0)                                   (post_relu=True)
    mean[k], var[k] = batch statistics of y over N, Ho, Wo (stats=True; biased variance)

so a Conv -> BatchNorm -> ReLU -> Conv chain can write the raw convolution output and its
statistics, and let the next convolution apply the normalization (scale ``w * invstd``, shift
``b - mean * w * invstd``) and the ReLU while it reads its input: the normalized tensor is never
materialised.

Two implementations:

* the compiled kernel ``cnnkit._core.conv2d_fused`` (float32, where the extension has it and the
  combination is supported: it raises ValueError otherwise and the reference path runs), which
  runs where the plain convolution runs (a GEMM entry, the depthwise NHWC kernels, the direct
  grouped kernels; the stem kernel for the statistics alone; not the depthwise NCHW kernels),
  applies the prologue as it packs or reads x, and reduces the statistics in the epilogue as
  shifted double sums per fixed unit of the output (``mean = K + s1/n``, ``var = (s2 - s1^2/n)/n``, the norm kernels' scheme);
* the reference path (always for float64), composed of existing kernels: the prologue is one
  pass of the norm apply kernel (``x * pre_scale + pre_shift``, ReLU) into a scratch array, then
  :func:`cnnkit.conv2d`, the residual add and ReLU in NumPy, and the statistics from the norm
  statistics kernel (the same numbers :func:`cnnkit.batch_norm_train` computes on y).

Numerics: the prologue is ``scale * x + shift`` in x's dtype. With ``shift = beta - mean*scale``
its rounding error is about ``eps_dtype * (|mean| * scale + |beta|)``, small against the
normalized values' unit spread while ``|mean| / std`` stays moderate (a convolution's output
in a network: below 10). :mod:`cnnkit.nn` falls back to the unfused path when a channel's
``|mean| / std`` exceeds 16.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from .. import _core
from .._memory import empty_pooled
from .._validate import accepts_dlpack, check_bool, check_float_array, check_out, check_subset
from .conv import _contig, _float_array, _geom, _Geom, _same_dtype, _work, conv2d, conv2d_backward

__all__ = ["conv2d_fused", "conv2d_fused_backward", "FusedConvGrads"]

_NEEDS = ("input", "weight", "bias", "pre_scale", "pre_shift", "residual", "conv_input")

#: the implementation the last conv2d_fused call ran: "reference" or the compiled kernel's name
last_kernel: str = ""


class FusedConvGrads(NamedTuple):
    """Gradients of :func:`conv2d_fused` (each None unless asked for in ``needs``).

    Attributes
    ----------
    input : ndarray or None
        With respect to x, through the prologue (ReLU mask and scale): x's shape and dtype.
    weight, bias : ndarray or None
        Of the convolution: the weight's shape, ``(C_out,)``; x's dtype.
    pre_scale, pre_shift : ndarray or None
        ``(C_in,)``, x's dtype.
    residual : ndarray or None
        The gradient masked by the output ReLU: the output's shape, x's dtype.
    conv_input : ndarray or None
        With respect to the prologue's output ``a`` (the convolution's actual input, before the
        prologue's chain rule): x's shape and dtype.
    """

    input: np.ndarray | None
    weight: np.ndarray | None
    bias: np.ndarray | None
    pre_scale: np.ndarray | None
    pre_shift: np.ndarray | None
    residual: np.ndarray | None
    conv_input: np.ndarray | None


def _channels(name: str, a: Any, C: int, dtype: Any, what: str = "the input channels") -> np.ndarray | None:
    if a is None:
        return None
    check_float_array(name, a, what=f"of shape ({C},)")
    _same_dtype(a, name, dtype)
    if a.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},) ({what}), got {a.shape}")
    return _contig(a)


def _like(name: str, a: Any, shape: tuple, dtype: Any) -> np.ndarray | None:
    if a is None:
        return None
    check_float_array(name, a)
    _same_dtype(a, name, dtype)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    return _contig(a)


def _nhw(g: _Geom) -> tuple[int, int, int, int]:
    """(N, C_in, H*W, C_out) of the geometry."""
    return g.N, g.C, g.H * g.W, g.K


def _prologue(x: np.ndarray, g: _Geom, scale: np.ndarray | None, shift: np.ndarray | None,
              relu: bool, out: np.ndarray) -> np.ndarray:
    """``out = [relu](x * scale + shift)`` per input channel: one pass of the norm apply kernel
    with mean 0 and invstd 1 (its ``(x - mean) * invstd * w + b``)."""
    if x.size:
        N, C, S, _ = _nhw(g)
        _core.norm_apply(x, out, None, N, C, S, g.nhwc, False, np.zeros(C), np.ones(C), scale, shift,
                         relu)
    return out


def _compiled_forward(x: np.ndarray, w: np.ndarray, y: np.ndarray, g: _Geom, b: np.ndarray | None,
                      sc: np.ndarray | None, sh: np.ndarray | None, pre_relu: bool, res: np.ndarray | None,
                      post_relu: bool, stats: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The compiled ``conv2d_fused`` on arguments checked as :func:`conv2d_fused` checks them
    (float32 only): ``y``, or ``(y, mean, var)`` with ``stats`` (the epilogue's sums about each
    channel's first output value, finished by ``norm_finish_sums``); None where ``_core`` has no
    such kernel or the kernel declines the combination (or, called without the checks, the
    arguments: the binding re-checks them). :data:`last_kernel` names the entry that ran.

    The statistics follow the norm kernels' scheme: the kernel fills the sums of (y - shift) and
    (y - shift)^2 (float64 ``(C_out,)`` each) with shift_k = y[0, k, 0, 0], the first value of
    channel k's reduction (cpp/include/cnnkit/conv.h); with stats there is no residual or ReLU, so
    the shift is read back from the output."""
    global last_kernel
    fn = getattr(_core, "conv2d_fused", None)
    if fn is None or x.dtype != np.float32:
        return None
    s1, s2 = (np.zeros(g.K), np.zeros(g.K)) if stats else (None, None)
    try:
        kernel = fn(x, w, y, g.core(), b, sc, sh, pre_relu, res, post_relu, s1, s2)
    except (ValueError, TypeError):  # a combination the compiled kernel does not support
        return None
    last_kernel = str(kernel)
    if s1 is not None and s2 is not None:
        mean, var = _core.norm_finish_sums(y, s1, s2, g.N, g.K, g.Ho * g.Wo, g.nhwc)
        return y, mean, var
    return y


@accepts_dlpack
def conv2d_fused(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, layout: str = "NCHW",
                 pre_scale: np.ndarray | None = None, pre_shift: np.ndarray | None = None,
                 pre_relu: bool = False, residual: np.ndarray | None = None, post_relu: bool = False,
                 stats: bool = False, out: np.ndarray | None = None, workspace: dict | None = None
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""2-D convolution with a per-channel affine + ReLU prologue and bias / residual / ReLU /
    statistics epilogues.

    ``y = post_act(conv2d(pre_act(pre_scale * x + pre_shift), weight, bias) [+ residual])``, the
    prologue per input channel (zero padding applies to its output, as if the normalized tensor
    had been padded), and with ``stats=True`` the per-output-channel mean and biased variance of
    ``y`` over N, Ho, Wo (the batch statistics a following batch norm needs).

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` with ``layout="NHWC"``.
    weight : ndarray, x's dtype
        ``(C_out, C_in/groups, kH, kW)``.
    bias : ndarray ``(C_out,)``, x's dtype, optional
    stride, padding, dilation, groups, layout
        As in :func:`cnnkit.conv2d`.
    pre_scale, pre_shift : ndarray ``(C_in,)``, x's dtype, optional
        The prologue's affine map (None: 1 and 0).
    pre_relu : bool
        ReLU after the prologue's affine map.
    residual : ndarray of the output's shape, x's dtype, optional
        Added after the bias, before ``post_relu``.
    post_relu : bool
        ReLU on the output.
    stats : bool
        Also return the batch statistics of y (needs ``residual=None`` and ``post_relu=False``:
        the statistics of the raw convolution output, for the batch norm that follows).
    out : ndarray, optional
        C-contiguous, of the output's shape and dtype, not overlapping the inputs; written and
        returned.
    workspace : dict, optional
        Scratch arrays kept by the caller between calls. The reference path leaves the
        prologue's output there under ``"a"`` (valid until the next call with the same
        workspace), which :func:`conv2d_fused_backward` can take as ``conv_input``.

    Returns
    -------
    y : ndarray
        ``(N, C_out, Ho, Wo)`` (NHWC: ``(N, Ho, Wo, C_out)``), x's dtype (``out`` when given).
    mean, var : ndarray, float64 ``(C_out,)``
        Only with ``stats=True``: ``(y, mean, var)``, var biased (divided by N*Ho*Wo).

    Raises
    ------
    TypeError
        A non-array, a dtype other than float32/float64, mixed dtypes, a non-bool flag.
    ValueError
        Inconsistent shapes, ``stats`` with a residual or ``post_relu``, a bad ``out``; the
        message names the argument.

    Notes
    -----
    float32 runs the compiled kernel when ``cnnkit._core`` has ``conv2d_fused`` and supports the
    combination, else the reference path; float64 always runs the reference path
    (:data:`last_kernel` says which ran). The two agree to float32 rounding (see the
    tolerance table of :mod:`cnnkit.nn`'s fusion).

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 6, 6))
    >>> w = rng.standard_normal((4, 3, 3, 3))
    >>> s, t = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 1.0])
    >>> y, mean, var = cnnkit.ops.conv2d_fused(x, w, padding=1, pre_scale=s, pre_shift=t,
    ...                                        pre_relu=True, stats=True)
    >>> a = np.maximum(x * s[:, None, None] + t[:, None, None], 0)
    >>> bool(np.allclose(y, cnnkit.conv2d(a, w, padding=1)))
    True
    >>> bool(np.allclose(mean, y.mean(axis=(0, 2, 3)))), bool(np.allclose(var, y.var(axis=(0, 2, 3))))
    (True, True)
    """
    global last_kernel
    _float_array(x, "x")
    _float_array(weight, "weight")
    _same_dtype(weight, "weight", x.dtype)
    g = _geom(x.shape, weight.shape, stride, padding, dilation, groups, layout, x.dtype)
    dt = x.dtype
    b = _channels("bias", bias, g.K, dt, "the output channels")
    sc = _channels("pre_scale", pre_scale, g.C, dt)
    sh = _channels("pre_shift", pre_shift, g.C, dt)
    pre_relu = check_bool("pre_relu", pre_relu)
    post_relu = check_bool("post_relu", post_relu)
    stats = check_bool("stats", stats)
    res = _like("residual", residual, g.y_shape(), dt)
    if stats and (res is not None or post_relu):
        raise ValueError("stats: the statistics are those of the raw convolution output; expected "
                         "residual=None and post_relu=False with stats=True")
    count = g.N * g.Ho * g.Wo
    if stats and count < 1:
        raise ValueError(f"x: expected at least one output position per channel for stats, got shape {x.shape}")
    if out is None:
        y = empty_pooled(g.y_shape(), dt)
    else:
        y = check_out("out", out, g.y_shape(), dt, (x, weight, bias, pre_scale, pre_shift, residual))
    if workspace is not None and not isinstance(workspace, dict):
        raise TypeError(f"workspace: expected a dict (reused across calls) or None, got {type(workspace).__name__}")
    x, w = _contig(x), _contig(weight)
    done = _compiled_forward(x, w, y, g, b, sc, sh, pre_relu, res, post_relu, stats)
    if done is not None:
        return done
    last_kernel = "reference"
    a = x
    if sc is not None or sh is not None or pre_relu:
        a = _prologue(x, g, sc, sh, pre_relu, _work(workspace, "a", x.shape, dt))
    conv2d(a, w, b, stride, padding, dilation, groups, layout=layout, out=y)
    if res is not None:
        np.add(y, res, out=y)
    if post_relu:
        np.maximum(y, 0, out=y)
    if stats:
        mean, var = _core.norm_stats(y, g.N, g.K, g.Ho * g.Wo, g.nhwc, False)
        return y, mean, var
    return y


@accepts_dlpack
def conv2d_fused_backward(grad_output: np.ndarray, x: np.ndarray, weight: np.ndarray, *,
                          stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                          dilation: int | tuple[int, int] = 1, groups: int = 1, layout: str = "NCHW",
                          pre_scale: np.ndarray | None = None, pre_shift: np.ndarray | None = None,
                          pre_relu: bool = False, post_relu: bool = False, y: np.ndarray | None = None,
                          needs: str | Sequence[str] = ("input", "weight", "bias"),
                          conv_input: np.ndarray | None = None, workspace: dict | None = None,
                          out: Sequence[np.ndarray | None] | None = None) -> FusedConvGrads:
    r"""Gradients of :func:`conv2d_fused` (without ``stats``: statistics have no gradient here;
    a following batch norm's backward carries theirs).

    With ``g = grad_output * (y > 0)`` (``post_relu``; else ``grad_output``), ``a`` the
    prologue's output and ``z = pre_scale * x + pre_shift`` (per input channel)::

        grad_residual   = g
        grad_weight, grad_bias, grad_a = conv2d_backward(g, a, weight)    (the plain convolution's)
        grad_z          = grad_a * (a > 0)        (pre_relu; else grad_a)
        grad_input      = grad_z * pre_scale
        grad_pre_scale  = sum over N, H, W of grad_z * x
        grad_pre_shift  = sum over N, H, W of grad_z

    composed from :func:`cnnkit.conv2d_backward` and the norm backward kernels (sums in float64,
    in blocks fixed by the shape: the same bits at any thread count). ``a`` is not needed whole:
    in float32, where the registry runs the weight gradient on a GEMM entry, the depthwise NHWC
    kernels or the direct grouped kernels, the compiled kernel applies the prologue while it lays
    x out or reads it, and the ReLU mask ``z > 0`` is evaluated inside
    the norm kernels as ``fma(pre_scale, x, pre_shift) > 0``, the compiled prologue's own value;
    elsewhere ``a`` is recomputed from x (unless given as ``conv_input``).

    Parameters
    ----------
    grad_output : ndarray
        The gradient of the forward output: its shape, x's dtype.
    x, weight, stride, padding, dilation, groups, layout, pre_scale, pre_shift, pre_relu, post_relu
        As given to :func:`conv2d_fused`.
    y : ndarray, optional
        The forward output; required with ``post_relu=True`` (its ReLU mask).
    needs : names from ("input", "weight", "bias", "pre_scale", "pre_shift", "residual", "conv_input")
        The gradients to compute; the others come back as None.
    conv_input : ndarray like x, optional
        The prologue's output ``a`` of the forward call (what it left in ``workspace["a"]``),
        instead of recomputing it.
    workspace : dict, optional
        Scratch arrays kept by the caller between calls.
    out : sequence of 7 (ndarray or None), optional
        Buffers in :class:`FusedConvGrads` order for the needed ``input``, ``weight``, ``bias``
        and ``conv_input`` gradients (C-contiguous, their shapes and x's dtype; the other
        entries must be None). A training loop reuses them instead of allocating every step.

    Returns
    -------
    FusedConvGrads
        ``(input, weight, bias, pre_scale, pre_shift, residual, conv_input)``, arrays of x's
        dtype (``out``'s where given, fresh otherwise; None where not in ``needs``); see
        :class:`FusedConvGrads`.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_fused`; ``y`` missing with ``post_relu=True``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    >>> s, t = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 1.0])
    >>> y = cnnkit.ops.conv2d_fused(x, w, padding=1, pre_scale=s, pre_shift=t, pre_relu=True)
    >>> gr = cnnkit.ops.conv2d_fused_backward(np.ones_like(y), x, w, padding=1, pre_scale=s,
    ...                                       pre_shift=t, pre_relu=True,
    ...                                       needs=("input", "pre_shift"))
    >>> gr.input.shape, gr.pre_shift.shape, gr.weight is None
    ((2, 3, 5, 5), (3,), True)
    """
    _float_array(grad_output, "grad_output")
    _float_array(x, "x")
    _float_array(weight, "weight")
    _same_dtype(weight, "weight", x.dtype)
    _same_dtype(grad_output, "grad_output", x.dtype)
    g = _geom(x.shape, weight.shape, stride, padding, dilation, groups, layout, x.dtype)
    dt = x.dtype
    if tuple(grad_output.shape) != g.y_shape():
        raise ValueError(f"grad_output: expected the output shape {g.y_shape()}, got {grad_output.shape}")
    sc = _channels("pre_scale", pre_scale, g.C, dt)
    sh = _channels("pre_shift", pre_shift, g.C, dt)
    pre_relu = check_bool("pre_relu", pre_relu)
    post_relu = check_bool("post_relu", post_relu)
    y_ = _like("y", y, g.y_shape(), dt)
    if post_relu and y_ is None:
        raise ValueError("y: expected the forward output (its ReLU mask) with post_relu=True, got None")
    want = set(check_subset("needs", needs, _NEEDS))
    a = _like("conv_input", conv_input, g.x_shape(), dt)
    if workspace is not None and not isinstance(workspace, dict):
        raise TypeError(f"workspace: expected a dict (reused across calls) or None, got {type(workspace).__name__}")
    shapes = {"input": g.x_shape(), "weight": g.w_shape(), "bias": (g.K,), "conv_input": g.x_shape()}
    bufs: dict[str, np.ndarray | None] = {}
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != len(_NEEDS):
            raise TypeError(f"out: expected a sequence of {len(_NEEDS)} arrays-or-None in FusedConvGrads order, "
                            f"got {type(out).__name__}")
        for key, o in zip(FusedConvGrads._fields, out):
            if o is None:
                continue
            if key not in shapes:
                raise ValueError(f"out: expected None for {key!r} (a small array, always fresh), got an array")
            if key not in want:
                raise ValueError(f"out: a buffer for {key!r}, but {key!r} is not in needs")
            bufs[key] = check_out(f"out ({key})", o, shapes[key], dt, (grad_output, x, weight, y, conv_input))
    x, grad_output = _contig(x), _contig(grad_output)
    gy = grad_output
    if y_ is not None and post_relu:
        gy = np.where(y_ > 0, grad_output, np.zeros((), dt))
    pro = sc is not None or sh is not None or pre_relu
    through = want & {"input", "pre_scale", "pre_shift"}
    compiled = dt == np.float32 and hasattr(_core, "conv2d_fused_backward_weight")
    gw = gb = None
    if pro and a is None and "weight" in want and compiled:
        # The compiled weight gradient, which recomputes a while it lays x out or reads it (a is
        # never stored); ValueError where the registry runs a kernel without that form (the
        # depthwise NCHW and stem kernels): then a is made below.
        gw = bufs.get("weight")
        gw = np.empty(g.w_shape(), dt) if gw is None else gw
        gb = (bufs.get("bias") if bufs.get("bias") is not None else np.empty(g.K, dt)) if "bias" in want else None
        try:
            _core.conv2d_fused_backward_weight(gy, x, gw, gb, g.core(), sc, sh, pre_relu)
        except ValueError:
            gw = gb = None
    conv_needs = tuple(k for k in ("weight", "bias") if k in want and gw is None)
    if through or "conv_input" in want:
        conv_needs = ("input",) + conv_needs
    if a is None:
        a = x if not pro or "weight" not in conv_needs else _prologue(
            x, g, sc, sh, pre_relu, _work(workspace, "a", x.shape, dt))
    ga = None
    if conv_needs:
        ga_out = bufs.get("conv_input")
        if ga_out is None and "input" in conv_needs and "conv_input" not in want:  # an intermediate
            ga_out = _work(workspace, "grad_a", g.x_shape(), dt)
        ga, gw_, gb_ = conv2d_backward(gy, a, weight, stride, padding, dilation, groups, layout=layout,
                                       needs=conv_needs,
                                       out=(ga_out if "input" in conv_needs else None,
                                            bufs.get("weight") if "weight" in conv_needs else None,
                                            bufs.get("bias") if "bias" in conv_needs else None))
        gw = gw_ if "weight" in conv_needs else gw
        gb = gb_ if "bias" in conv_needs else gb
    gx = gs = gt = None
    if through:
        assert ga is not None
        N, C, S, _ = _nhw(g)
        mask = mask_affine = None
        if pre_relu:  # a > 0 exactly where z > 0
            if a is not x or not pro:
                mask = a
            elif compiled:  # z recomputed in the kernels as the compiled prologue computes it (one fma)
                mask_affine = np.concatenate([np.ones(C, dt) if sc is None else sc,
                                              np.zeros(C, dt) if sh is None else sh])
            else:
                mask = _prologue(x, g, sc, sh, True, _work(workspace, "a", x.shape, dt))
        zeros = np.zeros(C)
        if want & {"pre_scale", "pre_shift"}:
            s_g, s_gx = _core.norm_backward_reduce(ga, x, mask, N, C, S, g.nhwc, False, zeros, mask_affine)
            gs = s_gx.astype(dt) if "pre_scale" in want else None
            gt = s_g.astype(dt) if "pre_shift" in want else None
        if "input" in want:
            gx = bufs.get("input")
            if gx is None:
                gx = empty_pooled(x.shape, dt)
            A = np.ones(C) if sc is None else sc.astype(np.float64)
            _core.norm_backward_apply(ga, x, mask, gx, None, N, C, S, g.nhwc, False, zeros, A, zeros, zeros,
                                      mask_affine)
    gres = (gy.copy() if gy is grad_output else gy) if "residual" in want else None
    return FusedConvGrads(gx, gw, gb, gs, gt, gres, ga if "conv_input" in want else None)
