"""Float64 NumPy references for the augmentation functions (normalization and its inverse).

Written straight from the formulas so that they are easy to audit; they never call cnnkit.
Every function is pure: inputs are converted to float64 copies, never modified.

Images are uint8 (N, H, W, C) or a single (H, W, C). ``to_float_normalize``::

    mode="channel":  y = (x / 255 - mean[c]) / std[c]          (mean = 0, std = 1 by default)
    mode="image":    per image, over its n = H*W*C values (not divided by 255; TensorFlow's
                     per_image_standardization):
                         m = sum(x) / n,  s = sqrt(sum((x - m)^2) / n)   (biased, two-pass)
                         y = (x - m) / max(s, 1 / sqrt(n))
    mode="minmax":   per image, y = (x - min) / (max - min); all zeros when max == min

``layout_out="NCHW"`` gives (N, C, H, W) (or (C, H, W)); ``"NHWC"`` keeps the input layout.

``denormalize`` inverts channel mode: v = (x * std[c] + mean[c]) * 255 for x in ``layout``
("NCHW": (N, C, H, W) / (C, H, W), "NHWC": (N, H, W, C) / (H, W, C)). With ``to_uint8`` the
result is rint(v) (half to even) clipped to [0, 255] as uint8 in NHWC layout; otherwise v in the
layout of x.

``normalize_terms`` gives, per element, |x * scale| + |shift| for the affine form
y = x * scale + shift that the references are algebraically equal to; a float32 evaluation of
that form has an error proportional to these terms (not to |y|, which may cancel).
"""
from __future__ import annotations

import numpy as np

__all__ = ["normalize_affine", "to_float_normalize", "normalize_terms", "denormalize"]


def _batch(images):
    """A float64 (N, H, W, C) copy and whether the input was a single (H, W, C) image."""
    x = np.array(images, dtype=np.float64, copy=True)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) or (H, W, C), got shape {x.shape}")
    return x, False


def _per_channel(v, default, c):
    if v is None:
        return np.full(c, default, dtype=np.float64)
    v = np.array(v, dtype=np.float64).reshape(-1)
    if v.size != c:
        raise ValueError(f"expected {c} values, got {v.size}")
    return v


def normalize_affine(images, mean=None, std=None, mode="channel"):
    """Float64 (scale, shift), each (N, C), with y = x * scale[n, c] + shift[n, c] (x NHWC)."""
    x, _ = _batch(images)
    n_img, h, w, c = x.shape
    if mode == "channel":
        m = _per_channel(mean, 0.0, c)
        s = _per_channel(std, 1.0, c)
        scale = np.broadcast_to(1.0 / (255.0 * s), (n_img, c))
        shift = np.broadcast_to(-m / s, (n_img, c))
        return scale.copy(), shift.copy()
    if mode == "image":
        count = h * w * c
        flat = x.reshape(n_img, h * w * c)
        m = flat.sum(axis=1) / count if count else np.zeros(n_img)
        var = ((flat - m[:, None]) ** 2).sum(axis=1) / count if count else np.zeros(n_img)
        adj = np.maximum(np.sqrt(var), 1.0 / np.sqrt(max(count, 1)))
        scale = np.repeat((1.0 / adj)[:, None], c, axis=1)
        shift = np.repeat((-m / adj)[:, None], c, axis=1)
        return scale, shift
    if mode == "minmax":
        flat = x.reshape(n_img, h * w * c)
        lo = flat.min(axis=1) if flat.size else np.zeros(n_img)
        hi = flat.max(axis=1) if flat.size else np.zeros(n_img)
        rng = hi - lo
        inv = np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 0.0)
        scale = np.repeat(inv[:, None], c, axis=1)
        shift = np.repeat((-lo * inv)[:, None], c, axis=1)
        return scale, shift
    raise ValueError(f"unknown mode {mode!r}")


def _layout_out(y_nhwc, single, layout_out):
    if layout_out == "NCHW":
        y_nhwc = y_nhwc.transpose(0, 3, 1, 2)
    elif layout_out != "NHWC":
        raise ValueError(f"unknown layout_out {layout_out!r}")
    y = np.ascontiguousarray(y_nhwc)
    return y[0] if single else y


def to_float_normalize(images, mean=None, std=None, mode="channel", layout_out="NCHW"):
    """Float64 reference of cnnkit.augment.functional.to_float_normalize (see module docstring)."""
    x, single = _batch(images)
    n_img, h, w, c = x.shape
    if mode == "channel":
        m = _per_channel(mean, 0.0, c)
        s = _per_channel(std, 1.0, c)
        y = (x / 255.0 - m) / s
    elif mode == "image":
        count = h * w * c
        flat = x.reshape(n_img, h * w * c)
        mu = flat.mean(axis=1)
        sd = np.sqrt(((flat - mu[:, None]) ** 2).mean(axis=1))
        adj = np.maximum(sd, 1.0 / np.sqrt(count))
        y = ((flat - mu[:, None]) / adj[:, None]).reshape(x.shape)
    elif mode == "minmax":
        flat = x.reshape(n_img, h * w * c)
        lo = flat.min(axis=1)[:, None]
        hi = flat.max(axis=1)[:, None]
        rng = hi - lo
        y = np.where(rng > 0, (flat - lo) / np.where(rng > 0, rng, 1.0), 0.0).reshape(x.shape)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return _layout_out(y, single, layout_out)


def normalize_terms(images, mean=None, std=None, mode="channel", layout_out="NCHW"):
    """|x * scale| + |shift| per output element, in the output layout (see module docstring)."""
    x, single = _batch(images)
    scale, shift = normalize_affine(images, mean, std, mode)
    t = np.abs(x * scale[:, None, None, :]) + np.abs(shift[:, None, None, :])
    return _layout_out(t, single, layout_out)


def denormalize(x, mean=None, std=None, layout="NCHW", to_uint8=True):
    """Float64 reference of cnnkit.augment.functional.denormalize (see module docstring).

    With ``to_uint8=False`` the result is float64 (the caller compares it with the float32
    result within a tolerance); with ``to_uint8=True`` it is uint8 computed from the float64 v.
    """
    a = np.array(x, dtype=np.float64, copy=True)
    if a.ndim not in (3, 4):
        raise ValueError(f"expected 3-D or 4-D x, got shape {a.shape}")
    single = a.ndim == 3
    if single:
        a = a[None]
    if layout == "NCHW":
        a_nhwc = a.transpose(0, 2, 3, 1)
    elif layout == "NHWC":
        a_nhwc = a
    else:
        raise ValueError(f"unknown layout {layout!r}")
    c = a_nhwc.shape[-1]
    m = _per_channel(mean, 0.0, c)
    s = _per_channel(std, 1.0, c)
    v_nhwc = (a_nhwc * s + m) * 255.0
    if to_uint8:
        out = np.ascontiguousarray(np.clip(np.rint(v_nhwc), 0, 255).astype(np.uint8))
    else:
        out = np.ascontiguousarray(v_nhwc.transpose(0, 3, 1, 2) if layout == "NCHW" else v_nhwc)
    return out[0] if single else out
