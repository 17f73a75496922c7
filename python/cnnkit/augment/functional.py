"""Deterministic batched image operations on compiled kernels.

Images are uint8 ``(N, H, W, C)`` batches or single ``(H, W, C)`` images.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from .. import _core
from .._validate import (accepts_dlpack, as_reals, check_array, check_bool, check_out, check_choice, check_float_array,
                         check_layout, check_real, check_rng, check_u8_images, renamed_kwargs)
from ._cutout import cutout, random_fill_noise, sample_cutout_params, sample_erasing_params  # noqa: F401
from ._mix import (cutmix, mixup, sample_cutmix_params, sample_mixup_params, sample_pairing,  # noqa: F401
                   sample_pairing_params)

__all__ = ["to_float_normalize", "denormalize", "equalize", "autocontrast", "invert", "posterize",
           "solarize", "spatial_dropout", "spatial_dropout_backward"]

_MODES = ("channel", "image", "minmax")
_LAYOUTS = ("NCHW", "NHWC")


def _images_u8(images):
    check_u8_images("images", images, min_hw=0)
    single = images.ndim == 3
    return np.ascontiguousarray(images[None] if single else images), single


def _per_channel(name, value, C, default):
    if value is None:
        return np.full(C, default, dtype=np.float64)
    a = as_reals(name, value, f"a number or {C} numbers (one per channel)")
    if a.ndim == 0:
        a = np.full(C, float(a))
    if a.shape != (C,):
        raise ValueError(f"{name}: expected {C} values (one per channel), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite values, got {a.tolist()}")
    return a


@renamed_kwargs(layout_out="layout")
@accepts_dlpack
def to_float_normalize(images: np.ndarray, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None, *, mode: str = "channel", layout: str = "NCHW",
                       out: Optional[np.ndarray] = None) -> np.ndarray:
    r"""uint8 images to normalized float32 network inputs in one pass.

    Fuses the conversion to float, the HWC -> CHW transpose (``layout="NCHW"``) and the
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
        The images (always NHWC).
    mean, std : sequences of C floats, optional
        Per-channel mean and standard deviation on the [0, 1] scale (mode "channel" only;
        defaults 0 and 1).
    mode : {"channel", "image", "minmax"}, default "channel"
        The normalization (above).
    layout : {"NCHW", "NHWC"}, default "NCHW"
        The layout of the float output (the uint8 input is always NHWC). Formerly ``layout_out``
        (still accepted, with a DeprecationWarning, until the next release).
    out : float32 ndarray of the output shape, optional
        Written in place and returned when given.

    Returns
    -------
    ndarray
        float32, (N, C, H, W) / (C, H, W) for NCHW, else the input's (N, H, W, C) / (H, W, C).

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
    check_choice("mode", mode, _MODES)
    check_layout(layout)
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
    shape = (N, C, H, W) if layout == "NCHW" else (N, H, W, C)
    if out is None:
        y = np.empty(shape, dtype=np.float32)
        result = y[0] if single else y
    else:
        check_out("out", out, shape[1:] if single else shape, np.float32)
        y = out.reshape(shape)
        result = out
    # the centre as a float pair hi + lo: x - hi is exact, so low-contrast images keep accuracy
    hi = np.asarray(center, dtype=np.float32)
    lo = (np.asarray(center, dtype=np.float64) - hi).astype(np.float32)
    _core.augment_normalize_u8(x, y, N, P, C, layout == "NCHW",
                               np.ascontiguousarray(scale, dtype=np.float32),
                               np.ascontiguousarray(hi), np.ascontiguousarray(lo), per_image)
    return result


@accepts_dlpack
def denormalize(x: np.ndarray, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, *,
                layout: str = "NCHW", to_uint8: bool = True) -> np.ndarray:
    r"""Undo ``to_float_normalize(..., mode="channel")``: ``(x*std[c] + mean[c]) * 255``.

    With ``to_uint8`` (default) the values are rounded (half to even), clipped to [0, 255] and
    returned as uint8 images in NHWC layout, so ``denormalize(to_float_normalize(img, m, s), m, s)``
    gives ``img`` back exactly; otherwise float32 in the input's layout.

    Parameters
    ----------
    x : float32/float64 ndarray, (N, C, H, W) / (C, H, W) for NCHW or (N, H, W, C) / (H, W, C)
        Normalized images.
    mean, std : sequences of C floats, optional
        The statistics they were normalized with (defaults 0 and 1).
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of ``x``.
    to_uint8 : bool, default True
        Round and clip to uint8 NHWC images; False: float32 in ``x``'s layout.

    Returns
    -------
    ndarray
        uint8 (N, H, W, C) / (H, W, C), or float32 shaped as ``x`` when ``to_uint8`` is False.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment.functional import denormalize, to_float_normalize
    >>> img = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    >>> m, s = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    >>> np.array_equal(denormalize(to_float_normalize(img, m, s), m, s), img)
    True
    """
    check_float_array("x", x, (3, 4))
    check_layout(layout)
    to_uint8 = check_bool("to_uint8", to_uint8)
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


# ---- Pillow-exact point operations ------------------------------------------------------------
# Each is a per-(image, channel) 256-entry table built from the Pillow formula (vectorised over
# images and channels in NumPy; tables are tiny) and applied by one compiled pass over the pixels.

def _u8_out(out, x, single):
    if out is None:
        return np.empty_like(x), None
    want = x.shape[1:] if single else x.shape
    check_out("out", out, want, np.uint8)
    return out.reshape(x.shape), out


def _apply_lut(x, single, lut, out):
    """lut: (N, C, 256) or (C, 256) / (256,) broadcast over images and channels."""
    N, H, W, C = x.shape
    lut = np.ascontiguousarray(np.broadcast_to(np.asarray(lut, dtype=np.uint8), (N, C, 256)))
    y, given = _u8_out(out, x, single)
    _core.augment_lut_u8(x, y, N, H * W, C, lut)
    if given is not None:
        return given
    return y[0] if single else y


def _histograms(x):
    N, H, W, C = x.shape
    return _core.augment_histogram_u8(x, N, H * W, C)  # (N, C, 256) int64


def _per_image_ints(name, value, N, single, lo, hi):
    """An int in [lo, hi], or (batch only) one per image; returns an (N,) int64 array."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an int in [{lo}, {hi}], got {value!r}")
    if np.isscalar(value):
        if not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int in [{lo}, {hi}], got {value!r}")
        a = np.full(N, int(value), dtype=np.int64)
    else:
        if single:
            raise ValueError(f"{name}: expected one int for a single image, got {value!r}")
        a = np.asarray(value)
        if a.size == 0 and N == 0:  # an empty batch takes an empty list
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu" or a.shape != (N,):
            raise ValueError(f"{name}: expected an int or {N} ints (one per image), got {value!r}")
        a = a.astype(np.int64)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got {a.tolist()}")
    return a


@accepts_dlpack
def equalize(images: np.ndarray, mode: str = "pil", *, out: Optional[np.ndarray] = None) -> np.ndarray:
    r"""Histogram equalization per image and channel, bit-identical to Pillow or to OpenCV.

    ``mode="pil"`` (``PIL.ImageOps.equalize``): with ``h`` the channel's histogram and ``h_last``
    the count of its last non-empty bin, ``step = (sum(h) - h_last) // 255`` and ``lut[i] =
    (step//2 + sum(h[:i])) // step`` (clipped to 255); the identity when the channel has at most
    one value or step is 0.

    ``mode="cv"`` (OpenCV's ``equalizeHist``, applied to each channel): with ``i0`` the first
    non-empty bin, ``scale = 255 / (total - h[i0])`` in float32, ``lut[i0] = 0`` and ``lut[i] =
    round_half_even(float32(sum(h[i0+1..i])) * scale)`` above it; a single-valued channel is left
    as it is.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        The images.
    mode : {"pil", "cv"}, default "pil"
        Pillow's or OpenCV's formula.
    out : uint8 ndarray, optional
        Written in place (shaped as ``images``) and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    check_choice("mode", mode, ("pil", "cv"))
    x, single = _images_u8(images)
    h = _histograms(x)
    if mode == "cv":
        lut = _core.augment_equalize_cv_lut(np.ascontiguousarray(h), h.shape[0] * h.shape[1])
        return _apply_lut(x, single, lut.reshape(h.shape), out)
    nonzero = h > 0
    last = 255 - np.argmax(nonzero[..., ::-1], axis=-1)
    h_last = np.take_along_axis(h, last[..., None], axis=-1)[..., 0]
    step = (h.sum(axis=-1) - h_last) // 255
    before = np.cumsum(h, axis=-1) - h
    safe = np.where(step > 0, step, 1)[..., None]
    lut = (safe // 2 + before) // safe
    identity = (nonzero.sum(axis=-1) <= 1) | (step == 0)
    lut = np.where(identity[..., None], np.arange(256), np.minimum(lut, 255))
    return _apply_lut(x, single, lut, out)


@accepts_dlpack
def autocontrast(images: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    r"""Stretch each channel to the full range, bit-identical to ``PIL.ImageOps.autocontrast``
    (cutoff 0): with lo/hi the darkest/lightest values present, ``lut[i] = clip(int(i*scale +
    offset))`` with ``scale = 255/(hi - lo)``, ``offset = -lo*scale``; the identity if hi <= lo.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        The images.
    out : uint8 ndarray, optional
        Written in place (shaped as ``images``) and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images_u8(images)
    nonzero = _histograms(x) > 0
    lo = np.argmax(nonzero, axis=-1)
    hi = 255 - np.argmax(nonzero[..., ::-1], axis=-1)
    flat = hi <= lo
    scale = 255.0 / np.where(flat, 1, hi - lo)
    offset = -lo * scale
    v = np.trunc(np.arange(256) * scale[..., None] + offset[..., None])
    lut = np.where(flat[..., None], np.arange(256), np.clip(v, 0, 255))
    return _apply_lut(x, single, lut, out)


@accepts_dlpack
def invert(images: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``255 - x``, as ``PIL.ImageOps.invert``.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        The images.
    out : uint8 ndarray, optional
        Written in place (shaped as ``images``) and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images_u8(images)
    return _apply_lut(x, single, 255 - np.arange(256), out)


@accepts_dlpack
def posterize(images: np.ndarray, bits: Union[int, Sequence[int], np.ndarray], *,
              out: Optional[np.ndarray] = None) -> np.ndarray:
    """Keep the top ``bits`` bits of every value (``PIL.ImageOps.posterize``); bits in [1, 8],
    one int or (batch) one per image.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        The images.
    bits : int or sequence of int
        Bits kept, in [1, 8]; for a batch, one int or one per image.
    out : uint8 ndarray, optional
        Written in place (shaped as ``images``) and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images_u8(images)
    b = _per_image_ints("bits", bits, x.shape[0], single, 1, 8)
    mask = (~((1 << (8 - b)) - 1)) & 0xFF
    lut = np.arange(256)[None, :] & mask[:, None]
    return _apply_lut(x, single, lut[:, None, :], out)


@accepts_dlpack
def solarize(images: np.ndarray, threshold: Union[int, Sequence[int], np.ndarray] = 128, *,
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Invert the values at or above ``threshold`` (``PIL.ImageOps.solarize``); threshold in
    [0, 256], one int or (batch) one per image.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        The images.
    threshold : int or sequence of int, default 128
        In [0, 256]; for a batch, one int or one per image.
    out : uint8 ndarray, optional
        Written in place (shaped as ``images``) and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images_u8(images)
    t = _per_image_ints("threshold", threshold, x.shape[0], single, 0, 256)
    i = np.arange(256)[None, :]
    lut = np.where(i < t[:, None], i, 255 - i)
    return _apply_lut(x, single, lut[:, None, :], out)


# ---- spatial dropout ---------------------------------------------------------------------------

def _float4d(name, x):
    return check_float_array(name, x, 4, what="(N, C, H, W) or (N, H, W, C)")


def _scale_view(scale, layout, dtype):
    s = scale.astype(dtype, copy=False)
    return s[:, :, None, None] if layout == "NCHW" else s[:, None, None, :]


@accepts_dlpack
def spatial_dropout(x: np.ndarray, p: float, rng: np.random.Generator, training: bool = True, *,
                    layout: str = "NCHW", out: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Drop whole channels (``torch.nn.Dropout2d`` on 4-D input).

    Each (sample, channel) is zeroed with probability ``p``; the survivors are scaled by
    ``1/(1 - p)``. The randomness comes from ``rng`` (a ``numpy.random.Generator``) only:
    ``keep = rng.random((N, C)) >= p``.

    Returns ``(y, scale)`` where ``scale`` (float64, (N, C)) holds 0 or ``1/(1-p)`` per channel;
    pass it to :func:`spatial_dropout_backward`. With ``training=False`` (or p == 0) y is a copy
    of x and scale is all ones; with p == 1 everything is zero.

    Parameters
    ----------
    x : float32/float64 ndarray, (N, C, H, W) or (N, H, W, C)
        Feature maps.
    p : float
        Drop probability in [0, 1].
    rng : numpy.random.Generator
        The source of the mask.
    training : bool, default True
        False: the identity.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of ``x``.
    out : ndarray, optional
        Output buffer of ``x``'s dtype and shape.

    Returns
    -------
    y : ndarray
        ``x`` times its channel's scale, ``x``'s shape and dtype.
    scale : ndarray
        float64 (N, C): 0 for a dropped channel, ``1/(1-p)`` for a kept one.
    """
    x = _float4d("x", x)
    check_layout(layout)  # before drawing anything from rng
    p = check_real("p", p, lo=0.0, hi=1.0)
    check_rng("rng", rng)
    training = check_bool("training", training)
    N, C = (x.shape[0], x.shape[1]) if layout == "NCHW" else (x.shape[0], x.shape[-1])
    if out is not None:
        check_out("out", out, x.shape, x.dtype)
    if not training or p == 0.0:
        scale = np.ones((N, C))
    elif p == 1.0:
        scale = np.zeros((N, C))
    else:
        scale = np.where(rng.random((N, C)) >= p, 1.0 / (1.0 - p), 0.0)
    y = np.multiply(x, _scale_view(scale, layout, x.dtype), out=out)
    return y, scale


@renamed_kwargs(grad_out="grad_output")
@accepts_dlpack
def spatial_dropout_backward(grad_output: np.ndarray, scale: np.ndarray, *, layout: str = "NCHW",
                             out: Optional[np.ndarray] = None) -> np.ndarray:
    """The gradient of :func:`spatial_dropout`: ``grad_output`` times the same per-channel scale.

    Parameters
    ----------
    grad_output : float32/float64 ndarray, (N, C, H, W) or (N, H, W, C)
        Gradient with respect to the forward output.
    scale : ndarray
        The (N, C) scale :func:`spatial_dropout` returned.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of ``grad_output``.
    out : ndarray, optional
        Output buffer of ``grad_output``'s dtype and shape.

    Returns
    -------
    ndarray
        Gradient with respect to the forward input, ``grad_output``'s shape and dtype.
    """
    g = _float4d("grad_output", grad_output)
    check_layout(layout)
    N, C = (g.shape[0], g.shape[1]) if layout == "NCHW" else (g.shape[0], g.shape[-1])
    check_array("scale", scale, dtypes=(np.float16, np.float32, np.float64), what=f"({N}, {C}) from spatial_dropout")
    if scale.shape != (N, C):
        raise ValueError(f"scale: expected the ({N}, {C}) array returned by spatial_dropout")
    if out is not None:
        check_out("out", out, g.shape, g.dtype)
    return np.multiply(g, _scale_view(scale, layout, g.dtype), out=out)


from ._ops import (OPS, adjust_brightness, adjust_contrast, adjust_saturation, adjust_sharpness, affine,  # noqa: E402,F401
                   apply_ops, clahe, hflip, pad_crop, resized_crop, rotate, sample_flip_params, sample_pad_crop_params,
                   sample_resized_crop_params, shear_x, shear_y, translate_x, translate_y, vflip)

__all__ += ["OPS", "apply_ops", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_sharpness",
            "hflip", "vflip", "affine", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "resized_crop",
            "pad_crop", "clahe", "sample_resized_crop_params", "sample_pad_crop_params", "sample_flip_params",
            "cutout", "mixup", "cutmix", "sample_pairing", "sample_mixup_params", "sample_cutmix_params",
            "sample_pairing_params", "sample_cutout_params", "sample_erasing_params", "random_fill_noise"]


def __dir__():
    """The public names only (``__all__``), not the imported modules (np, math, ...)."""
    return sorted(__all__)
