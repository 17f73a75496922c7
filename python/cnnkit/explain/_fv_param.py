"""Image parameterizations for feature visualization: what the optimizer changes, and how it
becomes an image in [0, 1] (Olah et al., "Feature Visualization", Distill 2017; Lucid's
``lucid.optvis.param``).

An image batch is built in three stages, each with its forward, its exact backward (the adjoint of
its derivative) and its inverse, all on planar (N, C, H, W) arrays of any float dtype (float64 in
the tests):

1. spatial: ``"pixel"`` is the identity on the raw values; ``"fft"`` maps a spectrum
   ``S = a + ib``, stored as float (2, N, C, H, W//2 + 1), to
   ``raw = irfft2(S * scale) / 4`` with ``scale[f] = sqrt(H W) / max(|f|, 1 / max(H, W))^decay``
   (``|f|`` the frequency in cycles per pixel; decay 1 by default): every frequency starts with
   equal energy after the 1/f scaling, so the optimizer's steps are whitened (Lucid's
   ``fft_image``, whose normalization this copies so that its learning rates carry over);
2. colour (3 channels only): ``y = M raw`` per pixel, with ``M`` the square root of a colour
   covariance normalized by its largest column norm (Lucid's ImageNet basis by default, or one
   estimated from a dataset with :func:`estimate_color_basis`): decorrelated parameters;
3. ``image = sigmoid(y)``, in (0, 1).

The backward of ``raw = irfft2(S)`` (numpy's 1/(HW) normalization) with respect to the real
parameters ``a``, ``b`` is ``rfft2(g) * m / (H W)`` split into its real and imaginary parts, with
``m = 2`` for the columns that stand for two conjugate frequencies and ``m = 1`` for column 0 and,
for even W, column W/2 (irfft takes only their real part: the imaginary parts there get no
gradient, so the forward is exactly invertible from the image but not from arbitrary spectra).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "color_basis", "estimate_color_basis", "rfft2d_freqs", "fft_scale",
           "fft_to_raw", "fft_to_raw_backward", "raw_to_fft", "color_mix", "color_mix_backward",
           "color_unmix", "sigmoid", "sigmoid_backward", "logit", "ImageParam"]

#: Lucid's square root of the ImageNet RGB covariance (U sqrt(S) of its SVD), before normalization
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])


def color_basis(matrix: Optional[Any] = None) -> np.ndarray:
    """The colour basis ``M`` (float64 (3, 3)): ``matrix`` (default Lucid's ImageNet one)
    divided by its largest column norm.

    Parameters
    ----------
    matrix : array_like (3, 3), optional
        A square root of a colour covariance (``M M^T = cov``), e.g. from
        :func:`estimate_color_basis`.

    Returns
    -------
    numpy.ndarray
        float64 (3, 3).
    """
    m = COLOR_CORRELATION_SVD_SQRT if matrix is None else np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"decorrelate: expected a finite (3, 3) colour basis, got shape {m.shape}")
    norm = np.max(np.linalg.norm(m, axis=0))
    if not norm > 0 or abs(np.linalg.det(m / norm)) < 1e-12:
        raise ValueError("decorrelate: the colour basis must be invertible")
    return m / norm


def estimate_color_basis(images: Any) -> np.ndarray:
    """The square root ``U sqrt(S)`` of the RGB covariance of a dataset (``cov = U S U^T``), as
    Lucid computed its ImageNet basis; pass it as ``decorrelate=`` to
    :func:`cnnkit.explain.feature_visualization`.

    Parameters
    ----------
    images : numpy.ndarray
        (N, H, W, 3) or (N, 3, H, W) images (the channel axis is the one of length 3; channels
        last when both are).

    Returns
    -------
    numpy.ndarray
        float64 (3, 3).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.explain._fv_param import estimate_color_basis
    >>> x = np.random.default_rng(0).random((4, 8, 8, 3))
    >>> m = estimate_color_basis(x)
    >>> bool(np.allclose(m @ m.T, np.cov(x.reshape(-1, 3).T)))
    True
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise ValueError(f"images: expected (N, H, W, 3) or (N, 3, H, W) images, got shape {x.shape}")
    flat = x.reshape(-1, 3) if x.shape[3] == 3 else x.transpose(0, 2, 3, 1).reshape(-1, 3)
    cov = np.cov(flat.T)
    u, s, _ = np.linalg.svd(cov)
    return u * np.sqrt(s)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """|f| in cycles per pixel of every bin of an (h, w) real FFT: float64 (h, w // 2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fft_scale(h: int, w: int, decay_power: float = 1.0) -> np.ndarray:
    """``sqrt(h w) / max(|f|, 1 / max(h, w))^decay_power``: float64 (h, w // 2 + 1)."""
    return np.sqrt(h * w) / np.maximum(rfft2d_freqs(h, w), 1.0 / max(h, w)) ** decay_power


def _column_weights(w: int, dtype: Any) -> np.ndarray:
    m = np.full(w // 2 + 1, 2.0, dtype)
    m[0] = 1.0
    if w % 2 == 0:
        m[-1] = 1.0
    return m


def fft_to_raw(spec: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """``irfft2((a + ib) * scale, s=(H, w)) / 4`` for ``spec = (a, b)`` of shape
    (2, N, C, H, w // 2 + 1): (N, C, H, w) in spec's dtype."""
    h = spec.shape[3]
    z = (spec[0] + 1j * spec[1]) * scale
    out = np.fft.irfft2(z, s=(h, w), axes=(-2, -1))
    out *= 0.25
    return out.astype(spec.dtype, copy=False)


def fft_to_raw_backward(grad: np.ndarray, scale: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The gradient with respect to ``spec`` (2, N, C, H, W // 2 + 1) of ``sum(grad * raw)`` for
    ``raw = fft_to_raw(spec, scale, W)``; ``grad`` (N, C, H, W)."""
    h, w = grad.shape[-2:]
    G = np.fft.rfft2(grad, axes=(-2, -1))
    G *= (scale * _column_weights(w, scale.dtype)) * (0.25 / (h * w))
    if out is None:
        out = np.empty((2,) + G.shape, dtype=grad.dtype)
    out[0] = G.real
    out[1] = G.imag
    return out


def raw_to_fft(raw: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The inverse of :func:`fft_to_raw`: the spectrum (2, N, C, H, W // 2 + 1) whose image is
    ``raw`` (N, C, H, W)."""
    z = np.fft.rfft2(raw * 4.0, axes=(-2, -1)) / scale
    return np.stack([z.real, z.imag]).astype(raw.dtype, copy=False)


def color_mix(x: np.ndarray, m: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``y[:, i] = sum_j m[i, j] x[:, j]`` on planar (N, 3, H, W) arrays (written as three
    broadcast sums, not a BLAS call, so the result does not depend on a thread count)."""
    out = np.empty_like(x) if out is None else out
    for i in range(3):
        np.multiply(x[:, 0], m[i, 0], out=out[:, i])
        out[:, i] += m[i, 1] * x[:, 1]
        out[:, i] += m[i, 2] * x[:, 2]
    return out


def color_mix_backward(grad: np.ndarray, m: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The adjoint of :func:`color_mix`: ``M^T`` per pixel."""
    return color_mix(grad, np.ascontiguousarray(m.T), out)


def color_unmix(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The inverse of :func:`color_mix`: ``M^-1`` per pixel."""
    return color_mix(y, np.linalg.inv(m))


def sigmoid(z: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``1 / (1 + exp(-z))`` (as ``0.5 + 0.5 tanh(z / 2)``: no overflow for large |z|)."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def sigmoid_backward(grad: np.ndarray, y: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``grad * y * (1 - y)`` for ``y = sigmoid(z)``."""
    out = np.subtract(1.0, y, out=out)
    out *= y
    out *= grad
    return out


def logit(y: np.ndarray) -> np.ndarray:
    """The inverse of :func:`sigmoid`: ``log(y / (1 - y))``."""
    return np.log(y) - np.log1p(-y)


class ImageParam:
    """A batch of images as a parameter array: ``params`` (float32, updated in place by the
    optimizer), :meth:`image` the planar (N, C, H, W) float32 images in (0, 1), :meth:`backward`
    the gradient with respect to ``params`` of ``sum(grad * image)`` for the last image.

    Parameters
    ----------
    shape : tuple
        (N, C, H, W).
    param : {"fft", "pixel"}
    decorrelate : bool or array_like (3, 3)
        Mix the colours with Lucid's ImageNet basis (True), a given one, or not (False); ignored
        unless C is 3.
    rng : numpy.random.Generator
        Draws the initial parameters, normal with standard deviation ``sd``.
    sd : float
    decay_power : float
    """

    def __init__(self, shape: tuple, param: str, decorrelate: Any, rng: np.random.Generator, *,
                 sd: float = 0.01, decay_power: float = 1.0, dtype: Any = np.float32) -> None:
        n, c, h, w = shape
        self.shape, self.param, self.dtype = tuple(shape), param, np.dtype(dtype)
        if decorrelate is False or decorrelate is None or c != 3:
            self.colors = None
        else:
            self.colors = color_basis(None if decorrelate is True else decorrelate)
        self.scale: Optional[np.ndarray] = None
        if param == "fft":
            self.scale = fft_scale(h, w, decay_power).astype(self.dtype)
            pshape = (2, n, c, h, w // 2 + 1)
        elif param == "pixel":
            pshape = tuple(shape)
        else:
            raise ValueError(f"param: expected 'fft' or 'pixel', got {param!r}")
        self.params = np.ascontiguousarray(rng.normal(0.0, sd, size=pshape), dtype=self.dtype)
        self._image = np.empty(shape, self.dtype)
        self._mixed = np.empty(shape, self.dtype) if self.colors is not None else None
        self._g = np.empty(shape, self.dtype)
        self._g2 = np.empty(shape, self.dtype) if self.colors is not None else None
        self._gp = np.empty(pshape, self.dtype)

    def image(self) -> np.ndarray:
        """The images (N, C, H, W) in (0, 1) for the current parameters (a buffer reused by the
        next call)."""
        raw = fft_to_raw(self.params, self.scale, self.shape[3]) if self.scale is not None else self.params
        if self.colors is not None:
            raw = color_mix(raw, self.colors, out=self._mixed)
        return sigmoid(raw, out=self._image)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """The gradient with respect to ``params`` of ``sum(grad * image())`` (a reused buffer)."""
        g = sigmoid_backward(grad, self._image, out=self._g)
        if self.colors is not None:
            g = color_mix_backward(g, self.colors, out=self._g2)
        if self.scale is not None:
            return fft_to_raw_backward(g, self.scale, out=self._gp)
        self._gp[...] = g
        return self._gp

    def set_image(self, image: np.ndarray) -> None:
        """Set the parameters so that :meth:`image` gives ``image`` (N, C, H, W), values in (0, 1)."""
        raw = logit(np.asarray(image, np.float64))
        if self.colors is not None:
            raw = color_unmix(raw, self.colors)
        if self.scale is not None:
            raw = raw_to_fft(raw, self.scale.astype(np.float64))
        self.params[...] = raw
