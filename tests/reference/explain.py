"""float64 references for cnnkit.explain, written as loops over the definitions (they never call
cnnkit.explain).

* quadrature nodes for integrated gradients from scipy's Legendre roots and the Riemann rules;
* the CAM weightings of Grad-CAM, Grad-CAM++ (eq. 19 as pytorch-grad-cam), XGrad-CAM, LayerCAM,
  HiResCAM, Eigen-CAM (principal component by eigen-decomposition of the covariance);
* torch's bilinear (align_corners False/True) and nearest resizing, pixel by pixel;
* occlusion (captum's windows and averaging) and RISE given its masks, on any float64 function;
* small models with the explain protocol in float64: a linear model and a smooth (softplus)
  two-layer network, with exact gradients.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import roots_legendre


def ig_nodes(steps, method):
    if method == "gausslegendre":
        x, w = roots_legendre(steps)
        return (x + 1) / 2, w / 2
    n = steps
    if method == "riemann_left":
        a = [k / n for k in range(n)]
    elif method == "riemann_right":
        a = [(k + 1) / n for k in range(n)]
    elif method == "riemann_middle":
        a = [(k + 0.5) / n for k in range(n)]
    else:
        a = [k / (n - 1) for k in range(n)]
    w = [1 / n] * n
    if method == "riemann_trapezoid":
        w[0] = w[-1] = 1 / (2 * n)
    return np.array(a), np.array(w)


def cam(A, G, method):
    """(N, h, w) map after the ReLU, by loops."""
    A = np.asarray(A, np.float64)
    G = None if G is None else np.asarray(G, np.float64)
    N, K, h, w = A.shape
    out = np.zeros((N, h, w))
    for n in range(N):
        if method == "eigen_cam":
            M = A[n].reshape(K, -1).T
            M = M - M.mean(axis=0)
            vals, vecs = np.linalg.eigh(M.T @ M)
            v = vecs[:, -1]
            out[n] = (M @ v).reshape(h, w)   # before the ReLU: the caller fixes the sign
            continue
        m = np.zeros((h, w))
        for k in range(K):
            a, g = A[n, k], G[n, k]
            if method == "grad_cam":
                m += g.mean() * a
            elif method == "grad_cam_pp":
                s = a.sum()
                wk = 0.0
                for i in range(h):
                    for j in range(w):
                        if g[i, j] != 0:
                            alpha = g[i, j] ** 2 / (2 * g[i, j] ** 2 + s * g[i, j] ** 3 + 1e-6)
                            wk += max(g[i, j], 0) * alpha
                m += wk * a
            elif method == "xgrad_cam":
                m += (g * a / (a.sum() + 1e-7)).sum() * a
            elif method == "layer_cam":
                m += np.maximum(g, 0) * a
            elif method == "hires_cam":
                m += g * a
        out[n] = np.maximum(m, 0)
    return out


def _src(d, in_size, out_size, align_corners):
    if align_corners:
        return d * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return max((d + 0.5) * in_size / out_size - 0.5, 0.0)


def resize(m, H, W, mode="bilinear", align_corners=False):
    """torch.nn.functional.interpolate of one (h, w) map, pixel by pixel."""
    h, w = m.shape
    out = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            if mode == "nearest":
                sy = min(int(math.floor(y * np.float32(h / H))), h - 1)
                sx = min(int(math.floor(x * np.float32(w / W))), w - 1)
                out[y, x] = m[sy, sx]
                continue
            fy, fx = _src(y, h, H, align_corners), _src(x, w, W, align_corners)
            y0, x0 = min(int(fy), h - 1), min(int(fx), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = fy - y0, fx - x0
            out[y, x] = ((1 - ly) * ((1 - lx) * m[y0, x0] + lx * m[y0, x1])
                         + ly * ((1 - lx) * m[y1, x0] + lx * m[y1, x1]))
    return out


def occlusion(f, x, t, window, stride, baseline):
    """captum Occlusion on one NCHW image x (C, H, W) with score f(image) -> float."""
    C, H, W = x.shape
    f0 = f(x)
    total = np.zeros((H, W))
    count = np.zeros((H, W))
    ny = math.ceil((H - window[0]) / stride[0]) + 1
    nx = math.ceil((W - window[1]) / stride[1]) + 1
    for iy in range(ny):
        for ix in range(nx):
            y0, x0 = iy * stride[0], ix * stride[1]
            y1, x1 = min(y0 + window[0], H), min(x0 + window[1], W)
            occ = x.copy()
            occ[:, y0:y1, x0:x1] = baseline[:, y0:y1, x0:x1]
            total[y0:y1, x0:x1] += f0 - f(occ)
            count[y0:y1, x0:x1] += 1
    return total / count


def rise(prob, x, masks, p):
    """RISE saliency of one image given its masks (M, H, W): sum_i prob(x * M_i) M_i / (M p)."""
    s = np.zeros(masks.shape[1:])
    for m in masks:
        s += prob(x * m[None]) * m
    return s / (masks.shape[0] * p)


def rise_mask(grid, shift, size, cell):
    """One RISE mask: the grid upsampled bilinearly (align_corners=False) and cropped."""
    gh1, gw1 = grid.shape
    big = resize(grid, gh1 * cell[0], gw1 * cell[1])
    return big[shift[0]:shift[0] + size[0], shift[1]:shift[1] + size[1]]


class LinearModel:
    """logits = W x_flat + b in float64 (the explain protocol: forward/backward)."""

    layout = "NCHW"

    def __init__(self, W, b):
        self.W, self.b = np.asarray(W, np.float64), np.asarray(b, np.float64)
        self.training = False

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        self._shape = x.shape
        return (x.reshape(x.shape[0], -1).astype(np.float64) @ self.W.T + self.b).astype(np.float32)

    def backward(self, g, input_grad=True):
        return (np.asarray(g, np.float64) @ self.W).reshape(self._shape).astype(np.float32)


class SoftplusNet:
    """logits = V softplus(U x_flat + c): smooth, so integrated gradients converge."""

    layout = "NCHW"

    def __init__(self, U, c, V):
        self.U, self.c, self.V = (np.asarray(a, np.float64) for a in (U, c, V))

    def logits64(self, x):
        z = x.reshape(x.shape[0], -1).astype(np.float64) @ self.U.T + self.c
        return np.logaddexp(0, z) @ self.V.T

    def forward(self, x):
        self._x = x
        return self.logits64(x).astype(np.float32)

    def backward(self, g, input_grad=True):
        x = self._x
        z = x.reshape(x.shape[0], -1).astype(np.float64) @ self.U.T + self.c
        s = 1 / (1 + np.exp(-z))
        gz = (np.asarray(g, np.float64) @ self.V) * s
        return (gz @ self.U).reshape(x.shape).astype(np.float32)
