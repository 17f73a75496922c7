"""Float64 NumPy references for 2-D convolution (torch.nn.functional.conv2d semantics).

Written to be obviously right rather than fast; they never call cnnkit. Every function is pure:
inputs are converted to float64 copies, never modified, and new float64 arrays are returned.
Everything here is NCHW; ``to_nhwc`` / ``to_nchw`` convert activations (weights are
(C_out, C_in / groups, kH, kW) in every layout).

Forward (cross-correlation, as in torch). With ``xp`` the input zero-padded by ``pad_top`` /
``pad_bottom`` rows and ``pad_left`` / ``pad_right`` columns, G = groups, Cg = C_in / G input
channels and Og = C_out / G output channels per group, output channel o in group
g = o // Og::

    y[n, o, h, w] = b[o] + sum over c < Cg, i < kH, j < kW of
                    w[o, c, i, j] * xp[n, g*Cg + c, h*sH + i*dH, w*sW + j*dW]

    Ho = (H + pad_top + pad_bottom - dH*(kH - 1) - 1) // sH + 1      (Wo likewise)

The patch ``P[n, c, i, j, h, w] = xp[n, c, h*sH + i*dH, w*sW + j*dW]`` is cut out explicitly
(one strided slice per kernel offset (i, j)) and contracted with the weight by an einsum.

Backward, for a scalar loss L with dL/dy = ``grad_out`` (g below)::

    dL/db[o]          = sum over n, h, w of g[n, o, h, w]
    dL/dw[o, c, i, j] = sum over n, h, w of g[n, o, h, w] * P[n, g*Cg + c, i, j, h, w]
    dL/dP[n, g*Cg + c, i, j, h, w] = sum over o in group g of g[n, o, h, w] * w[o, c, i, j]
    dL/dx  = the adjoint of the patch extraction applied to dL/dP: every patch element is
             added back (scatter-add) at the padded position it was read from, then the
             padding is cut off.

Padding (``resolve_padding``), as torch: an int p -> p on all four sides, a pair (pH, pW),
``"valid"`` -> 0, ``"same"`` -> per axis total = d*(k - 1), first side total // 2, second side
total - total // 2 (one more at the bottom / right when the total is odd, i.e. for an even
effective kernel; torch pads the input asymmetrically in that case); "same" requires stride 1.
Internally padding is always ((top, bottom), (left, right)).

Depthwise separable convolution (``depthwise_separable_ref``)::

    mid = conv2d(x, dw_weight, dw_bias, stride, padding, dilation, groups=C_in)
    y   = conv2d(mid, pw_weight, pw_bias)              (1x1, stride 1, no padding)

with dw_weight (C_in*m, 1, kH, kW) and pw_weight (C_out, C_in*m, 1, 1); its backward is the
chain rule through ``conv2d_backward_ref`` twice.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

__all__ = [
    "to_nhwc", "to_nchw", "pair", "resolve_padding", "output_size",
    "conv2d_ref", "conv2d_backward_ref", "ConvGrads",
    "depthwise_separable_ref", "depthwise_separable_backward_ref", "DWSGrads",
]


# ---- layouts ------------------------------------------------------------------------------------

def to_nhwc(a) -> np.ndarray:
    """(N, C, H, W) -> a C-contiguous (N, H, W, C) copy (dtype kept)."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def to_nchw(a) -> np.ndarray:
    """(N, H, W, C) -> a C-contiguous (N, C, H, W) copy (dtype kept)."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def _f64(a):
    return np.array(a, dtype=np.float64, copy=True)


# ---- geometry -----------------------------------------------------------------------------------

def pair(v):
    """An int or a pair of ints -> a tuple of two Python ints."""
    if isinstance(v, numbers.Integral):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _pad4(padding):
    """int | (pH, pW) | ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if isinstance(padding, numbers.Integral):
        p = int(padding)
        return (p, p), (p, p)
    ph, pw = padding
    ph = (int(ph), int(ph)) if isinstance(ph, numbers.Integral) else (int(ph[0]), int(ph[1]))
    pw = (int(pw), int(pw)) if isinstance(pw, numbers.Integral) else (int(pw[0]), int(pw[1]))
    return ph, pw


def resolve_padding(padding, kernel, dilation=1, stride=1):
    """torch's padding rule -> ((top, bottom), (left, right)).

    ``padding``: int, (pH, pW), ((top, bottom), (left, right)), "valid" or "same";
    ``kernel`` = (kH, kW), ``dilation`` and ``stride`` ints or pairs."""
    kh, kw = pair(kernel)
    dh, dw = pair(dilation)
    sh, sw = pair(stride)
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            out = []
            for k, d in ((kh, dh), (kw, dw)):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ValueError(f"padding {padding!r}")
    return _pad4(padding)


def output_size(size, pad_lo, pad_hi, kernel, stride, dilation):
    """Output length along one axis; <= 0 when the kernel does not fit the padded input."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def _geometry(x_shape, w_shape, stride, padding, dilation, groups):
    n, ci, h, wd = x_shape
    co, cig, kh, kw = w_shape
    if groups < 1 or ci % groups or co % groups or cig != ci // groups:
        raise ValueError(f"x {x_shape}, weight {w_shape} and groups={groups} do not agree")
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = _pad4(padding)
    if min(sh, sw, dh, dw) < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError("stride and dilation must be >= 1 and padding >= 0")
    ho = output_size(h, pt, pb, kh, sh, dh)
    wo = output_size(wd, pl, pr, kw, sw, dw)
    if ho < 1 or wo < 1:
        raise ValueError("the kernel does not fit the padded input")
    return dict(n=n, ci=ci, h=h, w=wd, co=co, cig=cig, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw,
                pt=pt, pb=pb, pl=pl, pr=pr, ho=ho, wo=wo, g=groups)


def _window(G, i, j):
    """The (row, column) slices of the padded input that kernel offset (i, j) reads."""
    r0, c0 = i * G["dh"], j * G["dw"]
    return (slice(r0, r0 + G["sh"] * (G["ho"] - 1) + 1, G["sh"]),
            slice(c0, c0 + G["sw"] * (G["wo"] - 1) + 1, G["sw"]))


def _patches(xp, G):
    """P[n, c, i, j, h, w] = xp[n, c, h*sH + i*dH, w*sW + j*dW]."""
    P = np.empty((G["n"], G["ci"], G["kh"], G["kw"], G["ho"], G["wo"]))
    for i in range(G["kh"]):
        for j in range(G["kw"]):
            rows, cols = _window(G, i, j)
            P[:, :, i, j] = xp[:, :, rows, cols]
    return P


# ---- conv2d -------------------------------------------------------------------------------------

def conv2d_ref(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """torch.nn.functional.conv2d in float64 on NCHW arrays; padding as for resolve_padding
    (strings resolved here too). Returns (N, C_out, Ho, Wo)."""
    x, w = _f64(x), _f64(w)
    padding = resolve_padding(padding, w.shape[2:], dilation, stride)
    G = _geometry(x.shape, w.shape, stride, padding, dilation, groups)
    xp = np.pad(x, ((0, 0), (0, 0), (G["pt"], G["pb"]), (G["pl"], G["pr"])))
    P = _patches(xp, G).reshape(G["n"], groups, G["cig"], G["kh"], G["kw"], G["ho"], G["wo"])
    wg = w.reshape(groups, G["co"] // groups, G["cig"], G["kh"], G["kw"])
    y = np.einsum("ngcijhw,gocij->ngohw", P, wg).reshape(G["n"], G["co"], G["ho"], G["wo"])
    if b is not None:
        y += _f64(b).reshape(1, G["co"], 1, 1)
    return y


class ConvGrads(NamedTuple):
    grad_x: np.ndarray        # (N, C_in, H, W)
    grad_w: np.ndarray        # (C_out, C_in / groups, kH, kW)
    grad_b: np.ndarray        # (C_out,)


def conv2d_backward_ref(grad_out, x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                        groups=1) -> ConvGrads:
    """Gradients of sum(grad_out * conv2d_ref(x, w, b, ...)) w.r.t. x, w and b (NCHW, float64),
    from the formulas in the module docstring (no autograd)."""
    g, x, w = _f64(grad_out), _f64(x), _f64(w)
    padding = resolve_padding(padding, w.shape[2:], dilation, stride)
    G = _geometry(x.shape, w.shape, stride, padding, dilation, groups)
    if g.shape != (G["n"], G["co"], G["ho"], G["wo"]):
        raise ValueError(f"grad_out shape {g.shape}")
    og = G["co"] // groups
    xp = np.pad(x, ((0, 0), (0, 0), (G["pt"], G["pb"]), (G["pl"], G["pr"])))
    P = _patches(xp, G).reshape(G["n"], groups, G["cig"], G["kh"], G["kw"], G["ho"], G["wo"])
    gg = g.reshape(G["n"], groups, og, G["ho"], G["wo"])
    wg = w.reshape(groups, og, G["cig"], G["kh"], G["kw"])

    grad_b = g.sum(axis=(0, 2, 3))
    grad_w = np.einsum("ngohw,ngcijhw->gocij", gg, P).reshape(w.shape)

    dP = np.einsum("ngohw,gocij->ngcijhw", gg, wg).reshape(
        G["n"], G["ci"], G["kh"], G["kw"], G["ho"], G["wo"])
    dxp = np.zeros_like(xp)
    for i in range(G["kh"]):
        for j in range(G["kw"]):
            rows, cols = _window(G, i, j)
            dxp[:, :, rows, cols] += dP[:, :, i, j]   # slices of one offset never overlap
    grad_x = dxp[:, :, G["pt"]:G["pt"] + G["h"], G["pl"]:G["pl"] + G["w"]].copy()
    return ConvGrads(grad_x, grad_w, grad_b)


# ---- depthwise separable ------------------------------------------------------------------------

def depthwise_separable_ref(x, dw_weight, pw_weight, dw_bias=None, pw_bias=None, stride=(1, 1),
                            padding=(0, 0), dilation=(1, 1)):
    """conv2d(conv2d(x, dw_weight, dw_bias, stride, padding, dilation, groups=C_in),
    pw_weight, pw_bias) in float64, NCHW."""
    ci = np.shape(x)[1]
    mid = conv2d_ref(x, dw_weight, dw_bias, stride, padding, dilation, groups=ci)
    return conv2d_ref(mid, pw_weight, pw_bias)


class DWSGrads(NamedTuple):
    grad_x: np.ndarray
    grad_dw_weight: np.ndarray
    grad_pw_weight: np.ndarray
    grad_dw_bias: np.ndarray
    grad_pw_bias: np.ndarray


def depthwise_separable_backward_ref(grad_out, x, dw_weight, pw_weight, dw_bias=None,
                                     stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> DWSGrads:
    """Chain rule: the pointwise backward on the recomputed intermediate, then the depthwise
    backward with the intermediate's gradient."""
    ci = np.shape(x)[1]
    mid = conv2d_ref(x, dw_weight, dw_bias, stride, padding, dilation, groups=ci)
    g_mid, g_pw, g_pwb = conv2d_backward_ref(grad_out, mid, pw_weight)
    g_x, g_dw, g_dwb = conv2d_backward_ref(g_mid, x, dw_weight, stride, padding, dilation,
                                           groups=ci)
    return DWSGrads(g_x, g_dw, g_pw, g_dwb, g_pwb)
