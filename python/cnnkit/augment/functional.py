"""Deterministic batched image operations on compiled kernels.

Images are uint8 ``(N, H, W, C)`` batches or single ``(H, W, C)`` images.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _core

__all__ = ["to_float_normalize", "denormalize"]

_MODES = ("channel", "image", "minmax")
_LAYOUTS = ("NCHW", "NHWC")


def _images_u8(images):
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images: expected a uint8 numpy.ndarray, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"images: expected dtype uint8 (use the float ops for float images), got "
                        f"{images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images: expected shape (N, H, W, C) or (H, W, C), got {images.shape}")
    single = images.ndim == 3
    x = np.ascontiguousarray(images[None] if single else images)
    if x.shape[-1] < 1:
        raise ValueError(f"images: expected at least one channel, got shape {images.shape}")
    return x, single


def _per_channel(name, value, C, default):
    if value is None:
        return np.full(C, default, dtype=np.float64)
    if np.isscalar(value):
        value = [value] * C
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected {C} numbers (one per channel), got {value!r}") from None
    if a.shape != (C,):
        raise ValueError(f"{name}: expected {C} values (one per channel), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite values, got {a.tolist()}")
    return a


def to_float_normalize(images, mean=None, std=None, *, mode="channel", layout_out="NCHW",
                       out=None):
    r"""uint8 images to normalized float32 network inputs in one pass.

    Fuses the conversion to float, the HWC -> CHW transpose (``layout_out="NCHW"``) and the
    normalization:

    * ``mode="channel"``: ``(x/255 - mean[c]) / std[c]`` (torchvision's ``ToTensor`` then
      ``Normalize``); mean 0 and std 1 by default.
    * ``mode="image"``: per-image standardization, ``(x - m) / max(s, 1/sqrt(n))`` with the
      image's mean m and standard deviation s over its n = H*W*C values (TensorFlow's
      ``per_image_standardization``).
    * ``mode="minmax"``: ``(x - min) / (max - min)`` per image (0 where max == min).

    Per-image statistics are exact (integer sums). The arithmetic is float32
    ``((x - c_hi) - c_lo) * a`` with the centre c as a float pair, so low-contrast images (a
    small spread around a bright mean) keep full float32 accuracy.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
    mean, std : sequences of C floats (mode "channel" only)
    mode : "channel", "image" or "minmax"
    layout_out : "NCHW" (default) or "NHWC"
    out : float32 ndarray of the output shape, optional

    Returns
    -------
    float32 ndarray, (N, C, H, W) / (C, H, W) for NCHW, else the input's layout.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment.functional import to_float_normalize
    >>> img = np.full((2, 2, 3), 255, np.uint8)
    >>> to_float_normalize(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))[:, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """
    x, single = _images_u8(images)
    N, H, W, C = x.shape
    P = H * W
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if layout_out not in _LAYOUTS:
        raise ValueError(f"layout_out: expected one of {_LAYOUTS}, got {layout_out!r}")
    if mode == "channel":
        m = _per_channel("mean", mean, C, 0.0)
        s = _per_channel("std", std, C, 1.0)
        if np.any(s == 0):
            raise ValueError(f"std: expected non-zero values, got {s.tolist()}")
        scale, center, per_image = 1.0 / (255.0 * s), 255.0 * m, False
    else:
        for name, v in (("mean", mean), ("std", std)):
            if v is not None:
                raise ValueError(f"{name}: not used by mode={mode!r}; expected None, got {v!r}")
        total, sq, lo, hi = _core.augment_image_stats_u8(x, N, P * C)
        n = P * C
        if mode == "image":
            mu = total / max(n, 1)
            # the variance from exact integers: (n*sum(x^2) - sum(x)^2) / n^2
            var = (n * sq - total * total) / float(max(n, 1)) ** 2
            adj = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1.0 / math.sqrt(max(n, 1)))
            a, c0 = 1.0 / adj, mu
        else:
            rng = hi.astype(np.float64) - lo.astype(np.float64)
            a = np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 0.0)
            c0 = lo.astype(np.float64)
        scale, center, per_image = np.repeat(a, C), np.repeat(c0, C), True
    shape = (N, C, H, W) if layout_out == "NCHW" else (N, H, W, C)
    if out is None:
        y = np.empty(shape, dtype=np.float32)
        result = y[0] if single else y
    else:
        want = shape[1:] if single else shape
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a float32 numpy.ndarray, got {type(out).__name__}")
        if out.dtype != np.float32:
            raise TypeError(f"out: expected dtype float32, got {out.dtype}")
        if out.shape != want or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out: expected a writeable C-contiguous array of shape {want}, got "
                             f"{out.shape}")
        y = out.reshape(shape)
        result = out
    # the centre as a float pair hi + lo: x - hi is exact, so low-contrast images keep accuracy
    hi = np.asarray(center, dtype=np.float32)
    lo = (np.asarray(center, dtype=np.float64) - hi).astype(np.float32)
    _core.augment_normalize_u8(x, y, N, P, C, layout_out == "NCHW",
                               np.ascontiguousarray(scale, dtype=np.float32),
                               np.ascontiguousarray(hi), np.ascontiguousarray(lo), per_image)
    return result


def denormalize(x, mean=None, std=None, *, layout="NCHW", to_uint8=True):
    r"""Undo ``to_float_normalize(..., mode="channel")``: ``(x*std[c] + mean[c]) * 255``.

    With ``to_uint8`` (default) the values are rounded (half to even), clipped to [0, 255] and
    returned as uint8 images in NHWC layout, so ``denormalize(to_float_normalize(img, m, s), m, s)``
    gives ``img`` back exactly; otherwise float32 in the input's layout.

    Parameters
    ----------
    x : float32/float64 ndarray, (N, C, H, W) / (C, H, W) for NCHW or (N, H, W, C) / (H, W, C)
    mean, std : sequences of C floats (defaults 0 and 1)
    layout : "NCHW" or "NHWC"
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise TypeError("x: expected a float32 or float64 numpy.ndarray")
    if x.ndim not in (3, 4):
        raise ValueError(f"x: expected a 3-D or 4-D array, got shape {x.shape}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
    caxis = x.ndim - 3 if layout == "NCHW" else x.ndim - 1
    C = x.shape[caxis]
    m = _per_channel("mean", mean, C, 0.0)
    s = _per_channel("std", std, C, 1.0)
    bshape = [1] * x.ndim
    bshape[caxis] = C
    v = (x.astype(np.float64) * s.reshape(bshape) + m.reshape(bshape)) * 255.0
    if not to_uint8:
        return v.astype(np.float32)
    if layout == "NCHW":
        v = np.moveaxis(v, caxis, -1)
    return np.ascontiguousarray(np.clip(np.rint(v), 0, 255).astype(np.uint8))
