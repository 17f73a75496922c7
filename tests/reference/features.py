"""float64 references for feature visualization (cnnkit.explain.features): the Fourier image
parameterization as an explicit sum, the colour mix, and bilinear resampling along the
transforms' coordinate maps, pixel by pixel. Written from the definitions; no cnnkit code."""
from __future__ import annotations

import math

import numpy as np


def fft_image(spec, decay_power=1.0, w=None):
    """raw[n, c, y, x] = (1/(HW)) Re sum_{ky, kx} m_kx S[ky, kx] scale[ky, kx] e^{2 pi i (ky y/H + kx x/W)} / 4
    over the one-sided spectrum S = spec[0] + i spec[1] (kx = 0 .. W//2), with m_kx = 2 for the
    bins standing for a conjugate pair and 1 for kx = 0 and kx = W/2; scale =
    sqrt(HW) / max(|f|, 1/max(H, W))^decay, |f| = sqrt(fy^2 + fx^2) in cycles per pixel."""
    spec = np.asarray(spec, np.float64)
    _, n, c, h, wf = spec.shape
    w = 2 * (wf - 1) if w is None else w
    out = np.zeros((n, c, h, w))
    for ky in range(h):
        fy = (ky if ky <= (h - 1) // 2 else ky - h) / h   # numpy's fftfreq order
        for kx in range(wf):
            f = math.hypot(fy, kx / w)
            scale = math.sqrt(h * w) / max(f, 1.0 / max(h, w)) ** decay_power
            m = 1.0 if (kx == 0 or 2 * kx == w) else 2.0
            z = (spec[0, :, :, ky, kx] + 1j * spec[1, :, :, ky, kx]) * scale * m
            ys = np.arange(h)[:, None]
            xs = np.arange(w)[None, :]
            phase = np.exp(2j * np.pi * (ky * ys / h + kx * xs / w))
            out += np.real(z[:, :, None, None] * phase[None, None])
    return out / (h * w) / 4.0


def color_mix(x, m):
    """y[:, i] = sum_j m[i, j] x[:, j] for planar (N, 3, H, W)."""
    x = np.asarray(x, np.float64)
    y = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            y[:, i] += m[i][j] * x[:, j]
    return y


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def bilinear(x, src, out_hw, fill):
    """Planar x (N, C, H, W) read at src(n, i, j) -> (row, col) for every output pixel, with the
    four neighbours weighted bilinearly and ``fill`` for a neighbour outside the image."""
    x = np.asarray(x, np.float64)
    n, c, H, W = x.shape
    Ho, Wo = out_hw
    out = np.zeros((n, c, Ho, Wo))
    for b in range(n):
        for i in range(Ho):
            for j in range(Wo):
                sy, sx = src(b, i, j)
                y0, x0 = math.floor(sy + 1e-12), math.floor(sx + 1e-12)
                fy, fx = sy - y0, sx - x0
                if abs(fy) < 1e-9:
                    fy = 0.0
                if abs(fx) < 1e-9:
                    fx = 0.0
                for yy, xx, wgt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                    (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                    v = x[b, :, yy, xx] if (0 <= yy < H and 0 <= xx < W) else fill
                    out[b, :, i, j] += wgt * v
    return out


def pad(x, p, value):
    n, c, H, W = np.shape(x)
    return bilinear(x, lambda b, i, j: (i - p, j - p), (H + 2 * p, W + 2 * p), value)


def jitter(x, d, offsets):
    n, c, H, W = np.shape(x)
    return bilinear(x, lambda b, i, j: (i + offsets[b][0], j + offsets[b][1]), (H - d, W - d), 0.5)


def scale(x, s, fill=0.5):
    """Zoom by s[b] about the centre: output pixel p shows the input at c + (p - c) / s."""
    n, c, H, W = np.shape(x)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    return bilinear(x, lambda b, i, j: (cy + (i - cy) / s[b], cx + (j - cx) / s[b]), (H, W), fill)


def rotate(x, degrees, fill=0.5):
    """Rotation by degrees[b] about the centre: output pixel p shows the input at
    c + [[cos, -sin], [sin, cos]] (p - c) in (row, column) coordinates."""
    n, c, H, W = np.shape(x)
    cy, cx = (H - 1) / 2, (W - 1) / 2

    def src(b, i, j):
        t = math.radians(degrees[b])
        dy, dx = i - cy, j - cx
        return cy + math.cos(t) * dy - math.sin(t) * dx, cx + math.sin(t) * dy + math.cos(t) * dx

    return bilinear(x, src, (H, W), fill)
