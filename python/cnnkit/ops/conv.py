"""2-D convolution on NumPy arrays: forward and backward, dense, grouped and depthwise.

Semantics, argument names and defaults are those of ``torch.nn.functional.conv2d``; the backward
returns what PyTorch's autograd gives for the same forward call. Arrays may be NCHW (default) or
NHWC (``layout="NHWC"``, channels-last); the weight is ``(C_out, C_in/groups, kH, kW)`` in both.

Algorithms (see :func:`conv2d_algorithm` and the registry ``cnnkit.kernels("conv")``): direct
kernels for depthwise convolutions (groups == C_in, C_out = m*C_in) and for grouped convolutions
whose groups have equal input and output channels, 2, 4, 8, 16 or 32 of them, with C_in a
multiple of the vector width (16 float32 / 8 float64 values at AVX-512, 8 / 4 at AVX2, 4 / 2 on
the baseline); a direct
float32 NHWC kernel for stems (groups 1, at most 4 input channels, 16 to 64 output channels in
multiples of 16, kH*kW <= 49) in the forward and weight-gradient passes; im2col + GEMM (OpenBLAS
from scipy-openblas32, single-threaded inside cnnkit's OpenMP loops, or cnnkit's own packed
sgemm for dense float32 problems) otherwise. Dense float32 3x3 convolutions at stride 1 without
dilation, with 32 or more channels on both sides and 2048 or more output pixels over the batch,
run their forward pass and input gradient by Winograd F(2x2, 3x3) (2.25x fewer multiplications;
results within the float32 tolerance of the direct sum, not its bits), and their weight gradient
too where C_in*C_out <= 128*128 (NCHW arrays in NHWC between layout transposes). The input
gradient at stride 1 runs as the forward pass of the adjoint convolution. Weight and bias
gradients are reduced in pieces fixed by the shape and combined in a fixed order: the same bits at
any thread count.
"""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from .. import _core
from .._memory import empty_aligned, empty_pooled
from .._validate import (accepts_dlpack, check_choice, check_float_array, check_int, check_layout, check_out,
                         check_pair, check_shape, check_subset, renamed_kwargs)

__all__ = ["conv2d", "conv2d_backward", "conv2d_output_shape", "conv2d_algorithm",
           "depthwise_separable_conv2d", "depthwise_separable_conv2d_backward"]

_LAYOUTS = ("NCHW", "NHWC")
_NEEDS = ("input", "weight", "bias")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_CORE_GEOMS: dict = {}  # ConvGeom objects (immutable) by their 17 values; a model reuses a few


def _load_blas() -> None:
    """Register scipy-openblas32's cblas_sgemm/dgemm with the compiled core (once, at import)."""
    if _core.conv_have_blas():
        return
    import importlib
    import os

    # cnnkit calls GEMM single-threaded from its own OpenMP loops. Loading the library with
    # OPENBLAS_NUM_THREADS=1 keeps it from starting a thread pool whose idle threads spin on the
    # cores cnnkit is using (read once, when the library initialises, which importing
    # scipy_openblas32 does).
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        scipy_openblas32 = importlib.import_module("scipy_openblas32")
        path = scipy_openblas32.get_lib_dir() + "/lib" + scipy_openblas32.get_library() + ".so"
        lib = ctypes.CDLL(path)
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    prefix = "scipy_"

    def addr(name: str) -> int:
        return int(ctypes.cast(getattr(lib, prefix + name), ctypes.c_void_p).value or 0)

    _core.conv_set_blas(addr("cblas_sgemm"), addr("cblas_dgemm"), addr("openblas_set_num_threads"))
    setattr(_load_blas, "lib", lib)  # keep the library loaded


_load_blas()


# ---- argument checks ---------------------------------------------------------------------------

def _float_array(a: Any, name: str, ndim: int | None = 4) -> np.ndarray:
    return check_float_array(name, a, ndim)


def _same_dtype(a: np.ndarray, name: str, dtype: Any) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x; no mixed dtypes), "
                        f"got {a.dtype}")


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    return check_pair(name, v, minimum)


def _layout(layout: Any) -> bool:
    return check_layout(layout) == "NHWC"


def _padding(padding: Any, k: tuple[int, int], d: tuple[int, int],
             s: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) as torch resolves it."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if s != (1, 1):
                raise ValueError(f"padding: 'same' is not supported for strided convolutions (stride={s})")
            res = []
            for ki, di in zip(k, d):
                total = di * (ki - 1)
                res.append((total // 2, total - total // 2))  # torch pads the extra one at the end
            return res[0], res[1]
        raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding", 0)
    return (ph, ph), (pw, pw)


def _layout_hint(x_name: str, x_shape: Sequence[int], c_in: int, nhwc: bool) -> str:
    """A hint for errors about input channels when x's other channel axis holds the weight's
    C_in (= weight.shape[1] * groups): the array is probably in the other layout."""
    other, axis = ("NCHW", "axis 1") if nhwc else ("NHWC", "its last axis")
    if int(x_shape[1 if nhwc else 3]) != c_in or int(x_shape[3 if nhwc else 1]) == c_in:
        return ""
    return (f"; {x_name} {tuple(x_shape)} has the weight's {c_in} input channels on {axis}: "
            f"pass layout=\"{other}\" for a {'channels-first' if nhwc else 'channels-last'} array")


class _Geom:
    """A checked convolution geometry (shapes in NCHW terms)."""

    __slots__ = ("N", "C", "H", "W", "K", "Ho", "Wo", "G", "kh", "kw", "s", "d", "pad", "nhwc", "dtype", "_core")

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, layout, dtype,
                 x_name="x", w_name="weight"):
        self.nhwc = _layout(layout)
        if len(x_shape) != 4:
            raise ValueError(f"{x_name}: expected a 4-D array, got shape {tuple(x_shape)}")
        if len(w_shape) != 4:
            raise ValueError(f"{w_name}: expected a 4-D array (C_out, C_in/groups, kH, kW), got shape {tuple(w_shape)}")
        if self.nhwc:
            N, H, W, C = (int(v) for v in x_shape)
        else:
            N, C, H, W = (int(v) for v in x_shape)
        G = check_int("groups", groups, 1, "a positive int")
        K, Cg, kh, kw = (int(v) for v in w_shape)
        if C < 1 or H < 1 or W < 1:
            raise ValueError(f"{x_name}: expected C, H and W >= 1, got shape {tuple(x_shape)} ({layout})")
        if K < 1 or kh < 1 or kw < 1:
            raise ValueError(f"{w_name}: expected C_out, kH and kW >= 1, got shape {tuple(w_shape)}")
        hint = _layout_hint(x_name, x_shape, Cg * G, self.nhwc)
        if C % G:
            raise ValueError(f"groups: {G} does not divide the {C} input channels{hint}")
        if K % G:
            raise ValueError(f"groups: {G} does not divide the {K} output channels (weight.shape[0])")
        if Cg != C // G:
            raise ValueError(f"{w_name}: expected shape[1] == C_in/groups = {C}/{G} = {C // G}, got shape "
                             f"{tuple(w_shape)}{hint}")
        s = _pair(stride, "stride", 1)
        d = _pair(dilation, "dilation", 1)
        (pt, pb), (pl, pr) = _padding(padding, (kh, kw), d, s)
        eh, ew = d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1
        if H + pt + pb < eh or W + pl + pr < ew:
            raise ValueError(f"{w_name}: the (dilated) kernel {eh}x{ew} is larger than the padded input "
                             f"{H + pt + pb}x{W + pl + pr}")
        Ho = (H + pt + pb - eh) // s[0] + 1
        Wo = (W + pl + pr - ew) // s[1] + 1
        for what, count in (("x", N * C * H * W), ("output", N * K * Ho * Wo)):
            if count > _INT64_MAX // 8:
                raise ValueError(f"{x_name}: the {what} would have {count} elements, more than 64-bit sizes allow")
        if max(H * W, Ho * Wo, C * kh * kw, K * kh * kw) > _INT32_MAX:
            raise ValueError(f"{x_name}: an image plane or a patch has more than 2^31 - 1 elements")
        self.N, self.C, self.H, self.W, self.K, self.Ho, self.Wo, self.G = N, C, H, W, K, Ho, Wo, G
        self.kh, self.kw, self.s, self.d, self.pad = kh, kw, s, d, (pt, pl)
        self.dtype = dtype
        self._core = None

    def core(self) -> _core.ConvGeom:
        """The geometry as the compiled passes take it (built once, shared by every pass)."""
        if self._core is None:
            key = (self.N, self.C, self.H, self.W, self.K, self.Ho, self.Wo, self.G, self.kh, self.kw,
                   self.s[0], self.s[1], self.d[0], self.d[1], self.pad[0], self.pad[1], self.nhwc)
            g = _CORE_GEOMS.get(key)
            if g is None:
                if len(_CORE_GEOMS) >= 1024:
                    _CORE_GEOMS.clear()
                g = _CORE_GEOMS[key] = _core.ConvGeom(*key)
            self._core = g
        return self._core

    def x_shape(self):
        return (self.N, self.H, self.W, self.C) if self.nhwc else (self.N, self.C, self.H, self.W)

    def y_shape(self):
        return (self.N, self.Ho, self.Wo, self.K) if self.nhwc else (self.N, self.K, self.Ho, self.Wo)

    def w_shape(self):
        return (self.K, self.C // self.G, self.kh, self.kw)


_GEOMS: dict = {}


def _plain(v: Any) -> bool:
    """An argument whose equality is its identity of meaning: an int or str, or a tuple of ints (a
    bool or a NumPy integer compares equal to an int but is checked differently)."""
    t = type(v)
    return t is int or t is str or (t is tuple and all(type(e) is int for e in v))


def _geom(x_shape: Any, w_shape: Any, stride: Any, padding: Any, dilation: Any, groups: Any, layout: Any,
          dtype: Any) -> _Geom:
    """``_Geom(...)`` for the arrays' shapes, cached per call signature when every argument is a
    plain int/str/tuple of ints (a training loop builds the same few geometries every step; the
    checks ran when the entry was made, and a failing signature is never stored)."""
    args = (stride, padding, dilation, groups, layout)
    if not all(_plain(v) for v in args):
        return _Geom(x_shape, w_shape, stride, padding, dilation, groups, layout, dtype)
    key = (tuple(x_shape), tuple(w_shape), args, dtype)
    g = _GEOMS.get(key)
    if g is None:
        g = _Geom(x_shape, w_shape, stride, padding, dilation, groups, layout, dtype)
        if len(_GEOMS) >= 1024:
            _GEOMS.clear()
        _GEOMS[key] = g
    return g


def _contig(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _check_out(out: Any, name: str, shape: Sequence[int], dtype: Any, inputs: Sequence[Any]) -> np.ndarray:
    return check_out(name, out, shape, dtype, inputs)


def _bias(bias: np.ndarray | None, K: int, dtype: Any, name: str = "bias") -> np.ndarray | None:
    if bias is None:
        return None
    _float_array(bias, name, ndim=None)
    _same_dtype(bias, name, dtype)
    if bias.shape != (K,):
        raise ValueError(f"{name}: expected shape ({K},), got {bias.shape}")
    return _contig(bias)


# ---- public API --------------------------------------------------------------------------------

def conv2d_output_shape(x_shape: Sequence[int], weight_shape: Sequence[int],
                        stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                        dilation: int | tuple[int, int] = 1, groups: int = 1, *,
                        layout: str = "NCHW") -> tuple:
    """Output shape of :func:`conv2d` for these shapes (raises what conv2d would raise).

    Parameters
    ----------
    x_shape : sequence of 4 ints
        The input's shape, ``(N, C_in, H, W)`` (NHWC: ``(N, H, W, C_in)``).
    weight_shape : sequence of 4 ints
        ``(C_out, C_in/groups, kH, kW)``.
    stride, padding, dilation, groups, layout
        As in :func:`conv2d`.

    Returns
    -------
    tuple of 4 ints
        ``(N, C_out, Ho, Wo)`` (NHWC: ``(N, Ho, Wo, C_out)``).

    Raises
    ------
    TypeError, ValueError
        For the arguments :func:`conv2d` would reject, naming the argument.

    Examples
    --------
    >>> import cnnkit
    >>> cnnkit.ops.conv2d_output_shape((2, 3, 32, 32), (8, 3, 3, 3), stride=2, padding=1)
    (2, 8, 16, 16)
    """
    x_shape, weight_shape = check_shape("x_shape", x_shape, 4), check_shape("weight_shape", weight_shape, 4)
    return _Geom(x_shape, weight_shape, stride, padding, dilation, groups, layout, None,
                 "x_shape", "weight_shape").y_shape()


def _conv_core_geom(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Any, padding: Any,
                    dilation: Any, groups: Any, layout: str) -> tuple:
    """``(output shape, _core.ConvGeom)`` after :func:`conv2d`'s checks of these shapes and
    arguments (raising what it raises), for callers that check their arrays themselves, cache
    this per call signature and call the compiled passes directly (cnnkit.torch.functional)."""
    x_shape, weight_shape = check_shape("x_shape", x_shape, 4), check_shape("weight_shape", weight_shape, 4)
    g = _Geom(x_shape, weight_shape, stride, padding, dilation, groups, layout, None, "x_shape", "weight_shape")
    return g.y_shape(), g.core()


_PASSES = ("forward", "input", "weight")


def _registry_problem(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Any = 1, padding: Any = 0,
                      dilation: Any = 1, groups: int = 1, layout: str = "NCHW", pass_: str = "forward",
                      dtype: Any = np.float32) -> tuple:
    """(geometry, dtype name, pass) for the conv kernel registry (cnnkit.kernels("conv"))."""
    _, geom = _conv_core_geom(x_shape, weight_shape, stride, padding, dilation, groups, layout)
    pass_ = check_choice("pass_", pass_, _PASSES)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return geom, dt.name, pass_


def _winograd(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Any = 1, padding: Any = 0,
              dilation: Any = 1, groups: int = 1, layout: str = "NCHW", pass_: str = "forward") -> bool:
    """Whether the kernel :func:`conv2d_algorithm` names runs this float32 pass by Winograd
    F(2x2, 3x3) (dense 3x3 stride-1 problems with 32+ channels on both sides and 2048+ output
    pixels over the batch: the forward pass,
    the input gradient that is its adjoint's forward, and the weight gradient where
    C_in*C_out <= 128*128; NHWC directly, NCHW between transposes); for tests and benchmarks."""
    geom, _, pass_ = _registry_problem(x_shape, weight_shape, stride, padding, dilation, groups, layout, pass_)
    return bool(_core.conv_winograd(geom, _PASSES.index(pass_)))


def conv2d_algorithm(x_shape: Sequence[int], weight_shape: Sequence[int], stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                     groups: int = 1, layout: str = "NCHW", pass_: str = "forward",
                     dtype: Any = np.float32) -> str:
    """Name of the kernel cnnkit runs for this geometry, pass and dtype at the active ISA level.

    The name is that of the entry of the conv kernel registry (``cnnkit.kernels("conv")``) that
    the dispatcher selects: ``conv2d_<algorithm>_<dtype>_<layout>[_<how>]__<isa>`` with algorithm
    ``dw`` (depthwise), ``grouped`` (direct grouped kernels), ``stem`` (few input channels) or
    ``gemm`` (im2col / col2im + OpenBLAS GEMM), ``how`` ``blocked`` or ``transposed`` (NCHW
    arrays transposed around an NHWC kernel). The input gradient at stride 1 runs the forward
    kernel of the adjoint convolution, so ``pass_="input"`` names a forward entry there.

    Parameters
    ----------
    x_shape, weight_shape : tuple of int
        Shapes of the input (in ``layout``) and of the weight ``(C_out, C_in/groups, kH, kW)``.
    stride, padding, dilation, groups
        As in :func:`conv2d`.
    layout : {"NCHW", "NHWC"}
        Layout of the input and output.
    pass_ : {"forward", "input", "weight"}
        The forward pass, the input gradient or the weight (and bias) gradient.
    dtype : numpy dtype
        float32 (default) or float64.

    Returns
    -------
    str
        The registry entry's name.

    Examples
    --------
    >>> from cnnkit.ops import conv2d_algorithm
    >>> conv2d_algorithm((2, 16, 8, 8), (8, 16, 1, 1)).rsplit("__", 1)[0]
    'conv2d_gemm_f32_nchw'
    >>> conv2d_algorithm((2, 9, 9, 32), (32, 1, 3, 3), 1, 1, 1, 32, "NHWC").rsplit("__", 1)[0]
    'conv2d_dw_f32_nhwc'
    """
    from .._kernels import kernels
    return kernels("conv").select(x_shape, weight_shape, stride, padding, dilation, groups,
                                  layout, pass_, dtype).name


@accepts_dlpack
def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1, groups: int = 1, *,
           layout: str = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    ``y[n, k, oh, ow] = bias[k] + sum_{c, i, j} weight[k, c, i, j] * xp[n, g(k)*C_in/groups + c,
    oh*sH + i*dH, ow*sW + j*dW]`` with ``xp`` the zero-padded input and ``g(k) = k // (C_out/groups)``.

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` when ``layout="NHWC"``.
    weight : ndarray, same dtype
        ``(C_out, C_in/groups, kH, kW)`` in both layouts.
    bias : ndarray ``(C_out,)`` or None
    stride, dilation : int or pair of ints, >= 1
    padding : int, pair of ints, "valid" or "same"
        "same" pads ``dilation*(k-1)`` in total, the odd one at the bottom/right (as torch); it
        requires stride 1.
    groups : int
        Divides C_in and C_out.
    layout : "NCHW" or "NHWC"
    out : ndarray, optional
        C-contiguous, of the output shape and dtype; written and returned (no allocation).

    Returns
    -------
    ndarray, x's dtype
        ``(N, C_out, Ho, Wo)`` (NHWC: ``(N, Ho, Wo, C_out)``) with
        ``Ho = (H + pad_top + pad_bottom - dH*(kH-1) - 1) // sH + 1`` (likewise Wo); ``out``
        itself when given.

    Raises
    ------
    TypeError
        A non-array, a dtype other than float32/float64, or mixed dtypes.
    ValueError
        Inconsistent shapes, ``groups`` not dividing the channels, a kernel larger than the
        padded input, a bad ``out``; the message names the argument.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> x = np.ones((1, 2, 4, 4), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
    >>> cnnkit.conv2d(x, w, padding=1).shape
    (1, 3, 4, 4)
    """
    _float_array(x, "x")
    _float_array(weight, "weight")
    _same_dtype(weight, "weight", x.dtype)
    g = _geom(x.shape, weight.shape, stride, padding, dilation, groups, layout, x.dtype)
    b = _bias(bias, g.K, x.dtype)
    if out is None:
        out = empty_pooled(g.y_shape(), x.dtype)
    else:
        _check_out(out, "out", g.y_shape(), x.dtype, (x, weight, bias))
    _core.conv_forward(_contig(x), _contig(weight), b, out, g.core())
    return out


def _needs(needs: Any) -> set:
    return set(check_subset("needs", needs, _NEEDS))


@renamed_kwargs(grad_out="grad_output")
@accepts_dlpack
def conv2d_backward(grad_output: np.ndarray, x: np.ndarray, weight: np.ndarray,
                    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                    dilation: int | tuple[int, int] = 1, groups: int = 1, *, layout: str = "NCHW",
                    needs: str | Sequence[str] = ("input", "weight", "bias"),
                    out: Sequence[np.ndarray | None] | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    Equal to what PyTorch's autograd gives for ``conv2d(x, weight, bias, stride, padding, dilation,
    groups)`` with upstream gradient ``grad_output``:

    * ``grad_input = conv_transpose(grad_output, weight)`` (the adjoint of the forward map),
    * ``grad_weight[k, c, i, j] = sum_{n, oh, ow} grad_output[n, k, oh, ow] * xp[n, ., oh*sH + i*dH, ow*sW + j*dW]``,
    * ``grad_bias[k] = sum_{n, oh, ow} grad_output[n, k, oh, ow]``.

    Where both grad_input and grad_weight (or grad_bias) are needed for a depthwise 3x3 stride-1
    NHWC convolution, they are computed in one pass over the images (each image's weight sums while
    its ``grad_output`` is still in cache), with the bits of asking for each alone.

    Parameters
    ----------
    grad_output : ndarray of the forward output's shape and x's dtype
    x, weight, stride, padding, dilation, groups, layout : as in :func:`conv2d`
    needs : subset of ("input", "weight", "bias")
        Which gradients to compute; the others are returned as None.
    out : tuple of three (ndarray or None), optional
        Buffers for (grad_input, grad_weight, grad_bias), used for the needed entries.

    Returns
    -------
    grad_input : ndarray or None
        x's shape and dtype.
    grad_weight : ndarray or None
        weight's shape, x's dtype.
    grad_bias : ndarray or None
        ``(C_out,)``, x's dtype. Each is None where not in ``needs``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> y = cnnkit.conv2d(x, w, padding=1)
    >>> gx, gw, gb = cnnkit.conv2d_backward(np.ones_like(y), x, w, padding=1)
    >>> gx.shape, gw.shape, gb.shape
    ((2, 3, 8, 8), (4, 3, 3, 3), (4,))
    >>> float(gb[0])  # sum of grad_output over N, Ho, Wo
    128.0
    """
    _float_array(grad_output, "grad_output")
    _float_array(x, "x")
    _float_array(weight, "weight")
    _same_dtype(weight, "weight", x.dtype)
    _same_dtype(grad_output, "grad_output", x.dtype)
    g = _geom(x.shape, weight.shape, stride, padding, dilation, groups, layout, x.dtype)
    if tuple(grad_output.shape) != g.y_shape():
        raise ValueError(f"grad_output: expected the output shape {g.y_shape()}, got {grad_output.shape}")
    want = _needs(needs)
    shapes = (g.x_shape(), g.w_shape(), (g.K,))
    names = ("out[0] (grad_input)", "out[1] (grad_weight)", "out[2] (grad_bias)")
    if out is None:
        out = (None, None, None)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out: expected a tuple of three arrays-or-None (grad_input, grad_weight, grad_bias)")
    res: list[np.ndarray | None] = []
    for key, o, shape, name in zip(_NEEDS, out, shapes, names):
        if key not in want:
            if o is not None:
                raise ValueError(f"{name}: given, but {key!r} is not in needs")
            res.append(None)
        elif o is None:
            res.append(empty_pooled(shape, x.dtype))
        else:
            res.append(_check_out(o, name, shape, x.dtype, (grad_output, x, weight)))
    gi, gw, gb = res
    for a, b_, na in ((gi, gw, "grad_input/grad_weight"), (gi, gb, "grad_input/grad_bias"), (gw, gb, "grad_weight/grad_bias")):
        if a is not None and b_ is not None and np.may_share_memory(a, b_):
            raise ValueError(f"out: {na} buffers overlap")
    _backward_core(_contig(grad_output), _contig(x), _contig(weight), gi, gw, gb, g.core())
    return gi, gw, gb


def _backward_core(dy: np.ndarray, x: np.ndarray | None, w: np.ndarray | None, gi: np.ndarray | None,
                   gw: np.ndarray | None, gb: np.ndarray | None, geom: Any) -> None:
    """The compiled passes that write the given gradients (None: not wanted) for ``geom`` (a
    ``_core.ConvGeom``): both in one call where the input gradient and another are wanted (one pass
    over the images where a kernel has one, the depthwise NHWC 3x3 stride 1), else the one pass
    needed. x is read only for grad_weight and grad_bias, w only for grad_input (either may be None
    where it is not read). The binding checks the sizes, dtypes and overlaps."""
    if gi is not None and (gw is not None or gb is not None):
        assert x is not None and w is not None
        _core.conv_backward(dy, x, w, gi, gw, gb, geom)
    elif gi is not None:
        assert w is not None
        _core.conv_backward_input(dy, w, gi, geom)
    elif gw is not None or gb is not None:
        assert x is not None
        _core.conv_backward_weight(dy, x, gw, gb, geom)


def _separable_checks(x, dw_weight, pw_weight, layout, dw_bias=None, pw_bias=None):
    _float_array(x, "x")
    _float_array(dw_weight, "dw_weight")
    _float_array(pw_weight, "pw_weight")
    _same_dtype(dw_weight, "dw_weight", x.dtype)
    _same_dtype(pw_weight, "pw_weight", x.dtype)
    C = x.shape[3] if _layout(layout) else x.shape[1]
    Cm = dw_weight.shape[0]
    if dw_weight.shape[1] != 1 or Cm % max(C, 1) or Cm < C:
        raise ValueError(f"dw_weight: expected shape (m*C_in, 1, kH, kW) with C_in = {C}, got {dw_weight.shape}")
    if pw_weight.shape[1:] != (Cm, 1, 1):
        raise ValueError(f"pw_weight: expected shape (C_out, {Cm}, 1, 1), got {pw_weight.shape}")
    _bias(dw_bias, Cm, x.dtype, "dw_bias")
    _bias(pw_bias, pw_weight.shape[0], x.dtype, "pw_bias")
    return C


# The depthwise-separable pair runs over chunks of images whose intermediate (depthwise output)
# stays about this size, so it is consumed from cache instead of making a round trip through memory.
_SEPARABLE_CHUNK_BYTES = 4 << 20


def _image_chunks(N: int, bytes_per_image: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] over the batch; one empty chunk for N == 0 (empty outputs, zero
    weight gradients, as conv2d gives)."""
    per = max(1, _SEPARABLE_CHUNK_BYTES // max(1, bytes_per_image))
    return [(i, min(N, i + per)) for i in range(0, N, per)] or [(0, 0)]


def _work(workspace, key, shape, dtype):
    """A scratch array from the caller's ``workspace`` dict (reused while the shape holds), or a new one."""
    if workspace is None:
        return empty_pooled(shape, dtype)
    if not isinstance(workspace, dict):
        raise TypeError(f"workspace: expected a dict (reused across calls) or None, got {type(workspace).__name__}")
    a = workspace.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != dtype:
        a = workspace[key] = empty_aligned(shape, dtype)  # (kept: large ones on huge pages)
    return a


@accepts_dlpack
def depthwise_separable_conv2d(x: np.ndarray, dw_weight: np.ndarray, pw_weight: np.ndarray,
                               dw_bias: np.ndarray | None = None, pw_bias: np.ndarray | None = None,
                               stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                               dilation: int | tuple[int, int] = 1, *, layout: str = "NCHW",
                               out: np.ndarray | None = None, workspace: dict | None = None) -> np.ndarray:
    """Depthwise convolution then pointwise (1x1) convolution.

    ``y = conv2d(conv2d(x, dw_weight, dw_bias, stride, padding, dilation, groups=C_in), pw_weight, pw_bias)``
    with ``dw_weight`` ``(m*C_in, 1, kH, kW)`` and ``pw_weight`` ``(C_out, m*C_in, 1, 1)``.

    Not a fused kernel: the two convolutions run one after the other (two :func:`conv2d` calls)
    on chunks of images whose depthwise output is about 4 MiB, so the pointwise GEMM reads the
    intermediate back from cache instead of from memory at full batch size. ``out`` (the output's shape and dtype, not overlapping the inputs)
    receives y; ``workspace`` (a dict kept by the caller) keeps the intermediate (one chunk of
    the depthwise output, key ``"t"``) between calls instead of allocating it on every call.

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` when ``layout="NHWC"``.
    dw_weight : ndarray, x's dtype
        ``(m*C_in, 1, kH, kW)``, the depthwise filters (``m`` per input channel).
    pw_weight : ndarray, x's dtype
        ``(C_out, m*C_in, 1, 1)``, the pointwise filters.
    dw_bias : ndarray ``(m*C_in,)`` or None
    pw_bias : ndarray ``(C_out,)`` or None
    stride, padding, dilation : as in :func:`conv2d`
        Of the depthwise convolution (the pointwise one has stride 1 and no padding).
    layout : "NCHW" or "NHWC"
    out : ndarray, optional
        C-contiguous, of the output's shape and dtype; written and returned.
    workspace : dict, optional
        Scratch arrays kept between calls (the caller keeps the dict; cnnkit fills it).

    Returns
    -------
    ndarray, x's dtype
        ``(N, C_out, Ho, Wo)`` (NHWC: ``(N, Ho, Wo, C_out)``), Ho and Wo as in :func:`conv2d`.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> x = np.ones((2, 4, 8, 8), np.float32)
    >>> dw, pw = np.ones((4, 1, 3, 3), np.float32), np.ones((6, 4, 1, 1), np.float32)
    >>> y = cnnkit.depthwise_separable_conv2d(x, dw, pw, padding=1)
    >>> y.shape, float(y[0, 0, 4, 4])  # 4 channels x 9 taps
    ((2, 6, 8, 8), 36.0)
    """
    C = _separable_checks(x, dw_weight, pw_weight, layout, dw_bias, pw_bias)
    g = _Geom(x.shape, dw_weight.shape, stride, padding, dilation, C, layout, x.dtype, w_name="dw_weight")
    y_shape = _Geom(g.y_shape(), pw_weight.shape, 1, 0, 1, 1, layout, x.dtype, w_name="pw_weight").y_shape()
    if out is None:
        y = empty_pooled(y_shape, x.dtype)
    else:
        y = _check_out(out, "out", y_shape, x.dtype, (x, dw_weight, pw_weight))
    x = _contig(x)
    chunks = _image_chunks(g.N, g.K * g.Ho * g.Wo * x.itemsize)
    t = _work(workspace, "t", (chunks[0][1] - chunks[0][0],) + g.y_shape()[1:], x.dtype)
    for a, b in chunks:
        tc = t[: b - a]
        conv2d(x[a:b], dw_weight, dw_bias, stride, padding, dilation, C, layout=layout, out=tc)
        conv2d(tc, pw_weight, pw_bias, layout=layout, out=y[a:b])
    return y


@renamed_kwargs(grad_out="grad_output")
@accepts_dlpack
def depthwise_separable_conv2d_backward(grad_output: np.ndarray, x: np.ndarray, dw_weight: np.ndarray,
                                        pw_weight: np.ndarray, dw_bias: np.ndarray | None = None,
                                        stride: int | tuple[int, int] = 1,
                                        padding: int | tuple[int, int] | str = 0,
                                        dilation: int | tuple[int, int] = 1, *, layout: str = "NCHW",
                                        workspace: dict | None = None
                                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`depthwise_separable_conv2d`.

    Returns ``(grad_x, grad_dw_weight, grad_pw_weight, grad_dw_bias, grad_pw_bias)``. The
    intermediate (depthwise output, with ``dw_bias``) is recomputed chunk by chunk as in the
    forward pass; weight and bias gradients are summed over the chunks in order (the chunks depend
    on the shape only, so results do not depend on the thread count). ``workspace``: as in the
    forward; then all five returned gradients are arrays of the workspace (reused, not copied),
    valid until the next backward call with the same workspace. Copy them to keep them.

    Parameters
    ----------
    grad_output : ndarray
        The gradient of the forward output: its shape, x's dtype.
    x, dw_weight, pw_weight, dw_bias, stride, padding, dilation, layout, workspace
        As in :func:`depthwise_separable_conv2d`.

    Returns
    -------
    grad_x : ndarray
        x's shape and dtype.
    grad_dw_weight, grad_pw_weight : ndarray
        The weights' shapes, x's dtype.
    grad_dw_bias, grad_pw_bias : ndarray
        ``(m*C_in,)`` and ``(C_out,)``, x's dtype (computed whether or not the forward had
        biases).

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    >>> dw = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    >>> pw = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    >>> gy = np.ones((2, 6, 8, 8), np.float32)
    >>> grads = cnnkit.depthwise_separable_conv2d_backward(gy, x, dw, pw, padding=1)
    >>> [g.shape for g in grads]
    [(2, 4, 8, 8), (4, 1, 3, 3), (6, 4, 1, 1), (4,), (6,)]
    """
    C = _separable_checks(x, dw_weight, pw_weight, layout, dw_bias)
    g = _Geom(x.shape, dw_weight.shape, stride, padding, dilation, C, layout, x.dtype, w_name="dw_weight")
    pg = _Geom(g.y_shape(), pw_weight.shape, 1, 0, 1, 1, layout, x.dtype, w_name="pw_weight")
    _float_array(grad_output, "grad_output")
    _same_dtype(grad_output, "grad_output", x.dtype)
    if tuple(grad_output.shape) != pg.y_shape():
        raise ValueError(f"grad_output: expected the output shape {pg.y_shape()}, got {grad_output.shape}")
    x, grad_output = _contig(x), _contig(grad_output)
    chunks = _image_chunks(g.N, g.K * g.Ho * g.Wo * x.itemsize)
    n0 = chunks[0][1] - chunks[0][0]
    t = _work(workspace, "t", (n0,) + g.y_shape()[1:], x.dtype)
    gt = _work(workspace, "gt", t.shape, x.dtype)
    gx = _work(workspace, "gx", x.shape, x.dtype)
    sums = [_work(workspace, f"sum{i}", shape, x.dtype) for i, shape in
            enumerate((dw_weight.shape, pw_weight.shape, (g.K,), (pg.K,)))]
    for a in sums:
        a[...] = 0
    parts = [_work(workspace, f"part{i}", a.shape, x.dtype) for i, a in enumerate(sums)]
    for a, b in chunks:
        tc, gtc = t[: b - a], gt[: b - a]
        conv2d(x[a:b], dw_weight, dw_bias, stride, padding, dilation, C, layout=layout, out=tc)
        conv2d_backward(grad_output[a:b], tc, pw_weight, layout=layout, out=(gtc, parts[1], parts[3]))
        conv2d_backward(gtc, x[a:b], dw_weight, stride, padding, dilation, C, layout=layout,
                        out=(gx[a:b], parts[0], parts[2]))
        for s_, p_ in zip(sums, parts):
            s_ += p_
    gdw, gpw, gdb, gpb = sums
    return gx, gdw, gpw, gdb, gpb
