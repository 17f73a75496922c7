"""Colour, geometric and crop operations on uint8 images, with torchvision's semantics.

Images are uint8 NHWC batches ``(N, H, W, C)`` or one ``(H, W, C)`` image. Every per-image
parameter is a scalar or one value per image (pairs: one pair or an ``(N, 2)`` array).

* Colour ops (``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``,
  ``adjust_sharpness``) follow ``torchvision.transforms.functional`` on uint8 tensors bit for bit:
  ``(r*x + (1 - r)*degenerate).clamp(0, 255)`` in float32, truncated to uint8, where the
  degenerate image is black, the grey mean (``0.2989 R + 0.587 G + 0.114 B``, truncated), the
  grey image, or the 3x3 smoothing (border kept).
* Geometry (``affine``, ``rotate``, ``shear_x``/``shear_y``, ``translate_x``/``translate_y``)
  uses torchvision's inverse affine matrix about the image centre and ``grid_sample``'s pixel
  convention (align_corners=False), in double precision: nearest (ties to even) or bilinear;
  outside the image ``fill`` (None: torchvision's zero padding; a number or C numbers: its mask
  blend for bilinear). torchvision computes the grid in float32, so a nearest pick can differ
  where the source coordinate sits within float32 rounding of a pixel boundary, and bilinear by 1.
* ``apply_ops`` runs a short op program per image in one compiled call (the policies use it).
* ``resized_crop`` (antialiased bilinear, PIL/torch rule), ``pad_crop`` (torchvision
  ``RandomCrop(padding=...)``), ``hflip``/``vflip`` and ``clahe`` (OpenCV's CLAHE, bit for bit).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import numpy as np

from .. import _core
from .._validate import (accepts_dlpack, as_reals, check_bool, check_choice, check_int, check_out, check_pair,
                         check_real, check_u8_images)
from ._cutout import _image_size
from ._mix import _batch_size, _check_rng, _prob

__all__ = ["OPS", "apply_ops", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_sharpness",
           "hflip", "vflip", "affine", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
           "resized_crop", "pad_crop", "clahe", "sample_resized_crop_params", "sample_pad_crop_params",
           "sample_flip_params"]

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert", "HFlip", "VFlip")
_INDEX = {name: i for i, name in enumerate(OPS)}
# kernel codes (cnnkit::augment::ImageOp)
_K_IDENTITY, _K_AFFINE, _K_BRIGHTNESS, _K_COLOR, _K_CONTRAST, _K_SHARPNESS = 0, 1, 2, 3, 4, 5
_K_POSTERIZE, _K_SOLARIZE, _K_AUTOCONTRAST, _K_EQUALIZE, _K_INVERT, _K_HFLIP, _K_VFLIP = 6, 7, 8, 9, 10, 11, 12
_KERNEL = {"Identity": _K_IDENTITY, "ShearX": _K_AFFINE, "ShearY": _K_AFFINE, "TranslateX": _K_AFFINE,
           "TranslateY": _K_AFFINE, "Rotate": _K_AFFINE, "Brightness": _K_BRIGHTNESS, "Color": _K_COLOR,
           "Contrast": _K_CONTRAST, "Sharpness": _K_SHARPNESS, "Posterize": _K_POSTERIZE, "Solarize": _K_SOLARIZE,
           "AutoContrast": _K_AUTOCONTRAST, "Equalize": _K_EQUALIZE, "Invert": _K_INVERT, "HFlip": _K_HFLIP,
           "VFlip": _K_VFLIP}
_INTERP = ("nearest", "bilinear")
_PAD_MODES = ("constant", "edge", "reflect", "symmetric")


# ---- argument checks ---------------------------------------------------------------------------

def _channels_last(images, C):
    """ValueError unless C (the last axis of uint8 ``images``) is 1 or 3: uint8 images are NHWC,
    and anything else is most likely an NCHW batch (or a CHW image), which read as NHWC would
    come back scrambled without an error. Every uint8 transform and every colour op checks here."""
    check_u8_images("images", images, colour=True)


def _check_images(images, colour=False):
    """The checks of :func:`_images`, without making the batch view."""
    check_u8_images("images", images, colour=colour)


def _images(images, colour=False):
    """(batch (N, H, W, C), single) for uint8 NHWC ``images`` or one (H, W, C) image; ``colour``:
    C must be 1 or 3 (:func:`_channels_last`)."""
    _check_images(images, colour)
    single = images.ndim == 3
    return np.ascontiguousarray(images[None] if single else images), single


def _out(out, shape, single, images):
    want = shape[1:] if single else shape
    if out is None:
        return np.empty(shape, dtype=np.uint8), None
    check_out("out", out, want, np.uint8, (images,))
    return out.reshape(shape), out


def _result(y, given, single):
    if given is not None:
        return given
    return y[0] if single else y


def _per_image(name, value, N, single, *, pair=False, integer=False):
    """A number (or pair) for every image: returns (N,) or (N, 2) float64."""
    shape = (N, 2) if pair else (N,)
    a = as_reals(name, value, f"{'a pair of numbers' if pair else 'a number'} or one per image")
    scalar_shape = (2,) if pair else ()
    if a.shape == scalar_shape:
        a = np.broadcast_to(a, shape)
    elif single or a.shape != shape:
        raise ValueError(f"{name}: expected shape {scalar_shape or 'scalar'} or {shape} (one per image), got "
                         f"{a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite values, got {value!r}")
    if integer and np.any(a != np.trunc(a)):
        raise ValueError(f"{name}: expected integers, got {value!r}")
    return np.ascontiguousarray(a)


def _fill_values(fill, C):
    if fill is None:
        return None
    a = as_reals("fill", fill, f"None, a number or {C} numbers")
    if a.ndim == 0:
        a = np.full(C, float(a))
    if a.shape != (C,):
        raise ValueError(f"fill: expected a number or {C} values (one per channel of images), got {fill!r}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"fill: expected finite values, got {fill!r}")
    return np.ascontiguousarray(a)


def _interp(interpolation):
    return check_choice("interpolation", interpolation, _INTERP) == "bilinear"


# ---- the op program ----------------------------------------------------------------------------

def _inverse_affine(center, angle, translate, scale, shear):
    """torchvision's ``_get_inverse_affine_matrix`` (inverted=True), in centred coordinates."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _op_params(name, magnitude, H, W):
    """Kernel code and 6 parameters of one policy op (torchvision ``autoaugment._apply_op``)."""
    m = float(magnitude)
    p = [0.0] * 6
    corner = (-W * 0.5, -H * 0.5)  # torchvision's center=[0, 0] in centred coordinates
    if name == "ShearX":
        p = _inverse_affine(corner, 0.0, (0.0, 0.0), 1.0, (math.degrees(math.atan(m)), 0.0))
    elif name == "ShearY":
        p = _inverse_affine(corner, 0.0, (0.0, 0.0), 1.0, (0.0, math.degrees(math.atan(m))))
    elif name == "TranslateX":
        p = _inverse_affine((0.0, 0.0), 0.0, (float(int(m)), 0.0), 1.0, (0.0, 0.0))
    elif name == "TranslateY":
        p = _inverse_affine((0.0, 0.0), 0.0, (0.0, float(int(m))), 1.0, (0.0, 0.0))
    elif name == "Rotate":
        p = _inverse_affine((0.0, 0.0), -m, (0.0, 0.0), 1.0, (0.0, 0.0))
    elif name in ("Brightness", "Color", "Contrast", "Sharpness"):
        if not 1.0 + m >= 0.0:
            raise ValueError(f"magnitudes: {name} needs 1 + magnitude >= 0, got magnitude {m}")
        p[0] = 1.0 + m
    elif name == "Posterize":
        bits = int(m)
        if not 0 <= bits <= 8:
            raise ValueError(f"magnitudes: Posterize keeps 0 to 8 bits, got {m}")
        p[0] = float(bits)
    elif name == "Solarize":
        p[0] = m
    return _KERNEL[name], p


def _op_names(ops, shape_name="ops"):
    a = np.asarray(ops)
    if a.dtype.kind in "US":
        bad = [o for o in np.unique(a) if str(o) not in _INDEX]
        if bad:
            raise ValueError(f"{shape_name}: unknown op {bad[0]!r}; expected one of {OPS}")
        return np.vectorize(_INDEX.__getitem__, otypes=[np.int64])(a) if a.size else a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{shape_name}: expected op names or int codes into OPS, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= len(OPS)):
        raise ValueError(f"{shape_name}: op codes must lie in [0, {len(OPS)}), got {a.min()}..{a.max()}")
    return a.astype(np.int64)


def _run(x, single, codes, params, bilinear, fill, out):
    N, H, W, C = x.shape
    y, given = _out(out, x.shape, single, x)
    K = codes.shape[1]
    _core.augment_apply_ops(x, y, N, H, W, C, K, np.ascontiguousarray(codes, dtype=np.int32),
                            np.ascontiguousarray(params, dtype=np.float64), bilinear, fill)
    return _result(y, given, single)


@accepts_dlpack
def apply_ops(images: np.ndarray, ops: Any, magnitudes: Any, *, interpolation: str = "nearest", fill: Any = None,
              out: Optional[np.ndarray] = None) -> np.ndarray:
    """Run ``ops[n, 0]``, then ``ops[n, 1]``, ... on image n, all images in one compiled call.

    ``ops``: (N, K) op names or codes into :data:`OPS` (one row for a single image);
    ``magnitudes``: (N, K) floats in torchvision's ``autoaugment._apply_op`` convention (shear
    factor, translation in pixels (truncated to int), rotation in degrees, factor - 1 for the
    colour ops, bits for Posterize, the threshold for Solarize; ignored by the others). The result
    equals calling the single-op functions one after another. AutoContrast, Equalize, Posterize,
    Solarize and Invert are Pillow's (as :func:`equalize` etc.).

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    ops : array_like of int or str, (N, K)
        Op codes or names (:data:`OPS`); one row for a single image.
    magnitudes : array_like of float, (N, K)
        Each op's magnitude (above).
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    bilinear = _interp(interpolation)
    x, single = _images(images)
    N, H, W, C = x.shape
    codes = _op_names(ops)
    if single and codes.ndim == 1:
        codes = codes[None]
    if codes.ndim != 2 or codes.shape[0] != N:
        raise ValueError(f"ops: expected shape ({N}, K), got {np.shape(ops)}")
    mags = as_reals("magnitudes", magnitudes, "an (N, K) array of numbers")
    if single and mags.ndim == 1:
        mags = mags[None]
    if mags.shape != codes.shape:
        raise ValueError(f"magnitudes: expected shape {codes.shape} (as ops), got {np.shape(magnitudes)}")
    if not np.all(np.isfinite(mags)):
        raise ValueError("magnitudes: expected finite values")
    colour = np.isin(codes, [_INDEX[n] for n in ("Brightness", "Color", "Contrast", "Sharpness")])
    if colour.any():
        _channels_last(images, C)
    fillv = _fill_values(fill, C)
    # parameters per distinct (op, magnitude): policies draw from a few bins
    kcodes = np.zeros(codes.shape, dtype=np.int32)
    params = np.zeros(codes.shape + (6,), dtype=np.float64)
    if codes.size:
        keys = np.stack([codes.ravel().astype(np.float64), mags.ravel()], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        table_c = np.empty(len(uniq), dtype=np.int32)
        table_p = np.empty((len(uniq), 6))
        for i, (code, m) in enumerate(uniq):
            table_c[i], table_p[i] = _op_params(OPS[int(code)], m, H, W)
        inv = inv.ravel()
        kcodes = table_c[inv].reshape(codes.shape)
        params = table_p[inv].reshape(codes.shape + (6,))
    return _run(x, single, kcodes, params, bilinear, fillv, out)


def _single_op(images, name, magnitude, *, arg="magnitude", colour=False, interpolation="nearest", fill=None,
               out=None):
    """One op, one magnitude per image (``arg``: the caller's name for it, for messages)."""
    bilinear = _interp(interpolation)
    x, single = _images(images, colour=colour)
    N = x.shape[0]
    m = _per_image(arg, magnitude, N, single)
    y = apply_ops(x, np.full((N, 1), _INDEX[name]), m[:, None], interpolation="bilinear" if bilinear else "nearest",
                  fill=fill, out=_out_for_batch(out, single))
    return out if out is not None else (y[0] if single else y)


def _out_for_batch(out, single):
    if out is None or not single:
        return out
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        raise TypeError("out: expected a uint8 numpy.ndarray")
    return out[None]


def _factor(name, factor, images):
    x, single = _images(images, colour=True)
    f = _per_image(name, factor, x.shape[0], single)
    if np.any(f < 0):
        raise ValueError(f"{name}: expected non-negative factors, got {factor!r}")
    return x, single, f


def _colour(images, op, name, factor, out):
    x, single, f = _factor(name, factor, images)
    y = apply_ops(x, np.full((x.shape[0], 1), _INDEX[op]), (f - 1.0)[:, None], out=_out_for_batch(out, single))
    return y[0] if single and out is None else (out if out is not None else y)


@accepts_dlpack
def adjust_brightness(images: np.ndarray, factor: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``torchvision.transforms.functional.adjust_brightness``: ``factor * x`` clamped and truncated
    (float32). factor >= 0, one or one per image.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Blend factor >= 0 (1: unchanged); for a batch, one or one per image.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _colour(images, "Brightness", "factor", factor, out)


@accepts_dlpack
def adjust_contrast(images: np.ndarray, factor: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``adjust_contrast``: blend with the image's mean grey level (float32, truncated).

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Blend factor >= 0 (1: unchanged); for a batch, one or one per image.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _colour(images, "Contrast", "factor", factor, out)


@accepts_dlpack
def adjust_saturation(images: np.ndarray, factor: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``adjust_saturation`` (the policies' Color): blend with the grey image; 1 channel: unchanged.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Blend factor >= 0 (1: unchanged); for a batch, one or one per image.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _colour(images, "Color", "factor", factor, out)


@accepts_dlpack
def adjust_sharpness(images: np.ndarray, factor: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``adjust_sharpness``: blend with the 3x3 smoothed image (border pixels kept).

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Blend factor >= 0 (1: unchanged); for a batch, one or one per image.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _colour(images, "Sharpness", "factor", factor, out)


@accepts_dlpack
def hflip(images: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mirror left-right.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images(images)
    return _run(x, single, np.full((x.shape[0], 1), _K_HFLIP), np.zeros((x.shape[0], 1, 6)), False, None, out)


@accepts_dlpack
def vflip(images: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Mirror top-bottom.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images(images)
    return _run(x, single, np.full((x.shape[0], 1), _K_VFLIP), np.zeros((x.shape[0], 1, 6)), False, None, out)


@accepts_dlpack
def affine(images: np.ndarray, angle: Any = 0.0, translate: Any = (0, 0), scale: Any = 1.0, shear: Any = (0.0, 0.0),
           *, center: Any = None, interpolation: str = "nearest", fill: Any = None,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """``torchvision.transforms.functional.affine`` (tensor path): rotate by ``angle`` degrees
    clockwise about ``center`` ((x, y) pixels; default the image centre), scale, shear (degrees,
    x then y) and translate (pixels). Each a value (pair) or one per image.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    angle : float or sequence of float, default 0.0
        Clockwise rotation in degrees.
    translate : pair, or (N, 2) array, default (0, 0)
        (x, y) translation in pixels.
    scale : float or sequence of float, default 1.0
        Scale factor (> 0).
    shear : float, pair, or (N, 2) array, default (0.0, 0.0)
        Shear in degrees (x, y); a number shears x only.
    center : pair or (N, 2) array, optional
        Centre (x, y) in pixels; None: the image centre.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    bilinear = _interp(interpolation)
    x, single = _images(images)
    N, H, W, C = x.shape
    ang = _per_image("angle", angle, N, single)
    tr = _per_image("translate", translate, N, single, pair=True)
    sc = _per_image("scale", scale, N, single)
    if np.any(sc <= 0):
        raise ValueError(f"scale: expected positive values, got {scale!r}")
    sh = _per_image("shear", (shear, 0.0) if np.ndim(shear) == 0 else shear, N, single, pair=True)
    if center is None:
        cf = np.zeros((N, 2))
    else:
        cf = _per_image("center", center, N, single, pair=True) - np.array([W * 0.5, H * 0.5])
    params = np.array([_inverse_affine(cf[n], ang[n], tr[n], sc[n], sh[n]) for n in range(N)]).reshape(N, 1, 6)
    return _run(x, single, np.full((N, 1), _K_AFFINE), params, bilinear, _fill_values(fill, C), out)


@accepts_dlpack
def rotate(images: np.ndarray, angle: Any, *, interpolation: str = "nearest", fill: Any = None, center: Any = None,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """``torchvision.transforms.functional.rotate`` (expand=False): ``angle`` degrees counter-clockwise.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    angle : float or sequence of float
        Counter-clockwise rotation in degrees; for a batch, one or one per image.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    center : pair or (N, 2) array, optional
        Centre (x, y) in pixels; None: the image centre.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images(images)
    a = _per_image("angle", angle, x.shape[0], single)
    return affine(images, -a if not single else -float(a[0]), center=center, interpolation=interpolation, fill=fill,
                  out=out)


@accepts_dlpack
def shear_x(images: np.ndarray, factor: Any, *, interpolation: str = "nearest", fill: Any = None,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """AutoAugment's ShearX: shear ``degrees(atan(factor))`` about the top-left corner.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Shear factor; for a batch, one or one per image.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _single_op(images, "ShearX", factor, arg="factor", interpolation=interpolation, fill=fill, out=out)


@accepts_dlpack
def shear_y(images: np.ndarray, factor: Any, *, interpolation: str = "nearest", fill: Any = None,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """AutoAugment's ShearY.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    factor : float or sequence of float
        Shear factor; for a batch, one or one per image.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _single_op(images, "ShearY", factor, arg="factor", interpolation=interpolation, fill=fill, out=out)


@accepts_dlpack
def translate_x(images: np.ndarray, pixels: Any, *, interpolation: str = "nearest", fill: Any = None,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """AutoAugment's TranslateX: shift right by ``int(pixels)``.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    pixels : float or sequence of float
        Shift in pixels (truncated to int); for a batch, one or one per image.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _single_op(images, "TranslateX", pixels, arg="pixels", interpolation=interpolation, fill=fill, out=out)


@accepts_dlpack
def translate_y(images: np.ndarray, pixels: Any, *, interpolation: str = "nearest", fill: Any = None,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """AutoAugment's TranslateY: shift down by ``int(pixels)``.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    pixels : float or sequence of float
        Shift in pixels (truncated to int); for a batch, one or one per image.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, optional
        Fill of the uncovered area (None: 0).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    return _single_op(images, "TranslateY", pixels, arg="pixels", interpolation=interpolation, fill=fill, out=out)


# ---- crops ---------------------------------------------------------------------------------------

def _int_rows(name, value, N, width, single):
    """(N, width) int64 rows (one row for a single image), or TypeError/ValueError naming ``name``."""
    a = np.asarray(value)
    if single and a.shape == (width,):
        a = a[None]
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.shape != (N, width):
        raise ValueError(f"{name}: expected shape ({N}, {width}), got {np.shape(value)}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _padding(padding):
    return check_int("padding", padding, 0, "an int >= 0")


def _padding_mode(padding_mode):
    return check_choice("padding_mode", padding_mode, _PAD_MODES)


def _size2(size):
    return check_pair("size", size, 1)


@accepts_dlpack
def resized_crop(images: np.ndarray, boxes: Any, size: Union[int, Tuple[int, int]], *, antialias: bool = True,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
    """Crop ``boxes`` ((N, 4) ints: top, left, height, width, inside the image) and resize each to
    ``size`` ((height, width) or an int): bilinear, align_corners=False, antialiased when
    shrinking as PIL and ``torch.nn.functional.interpolate(..., antialias=True)``; float32
    accumulation, rounded half to even.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    boxes : array_like of int, (N, 4)
        (top, left, height, width) per image, inside the image; one row for a single image.
    size : int or tuple of 2 ints
        Output (height, width).
    antialias : bool, default True
        Antialias when shrinking.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, (N, height, width, C) or (height, width, C).
    """
    x, single = _images(images)
    N, H, W, C = x.shape
    oh, ow = _size2(size)
    b = _int_rows("boxes", boxes, N, 4, single)
    if N and (np.any(b[:, :2] < 0) or np.any(b[:, 2:] < 1) or np.any(b[:, 0] + b[:, 2] > H)
              or np.any(b[:, 1] + b[:, 3] > W)):
        raise ValueError(f"boxes: expected (top, left, height, width) boxes inside the {H}x{W} image, got {b.tolist()}")
    y, given = _out(out, (N, oh, ow, C), single, x)
    _core.augment_resize(x, y, N, H, W, C, b, oh, ow, check_bool("antialias", antialias))
    return _result(y, given, single)


def _index_map(size, padding, mode, offsets):
    """Source index of every output position (or -1 for the fill) after padding and cropping."""
    base = np.arange(size)
    if mode == "constant":
        src = np.arange(size)[None, :] + offsets[:, None] - padding
        return np.where((src >= 0) & (src < size), src, -1)
    padded = np.pad(base, padding, mode=mode)
    return padded[np.arange(size)[None, :] + offsets[:, None]]


@accepts_dlpack
def pad_crop(images: np.ndarray, offsets: Any, padding: int, *, fill: Any = 0, padding_mode: str = "constant",
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Pad every side by ``padding`` and crop back to the input size at ``offsets`` ((N, 2) ints:
    top, left, in [0, 2*padding]); torchvision ``RandomCrop(size, padding)``. ``padding_mode``:
    "constant" (``fill``: a number or C values), "edge", "reflect" or "symmetric" (NumPy's modes,
    which are torchvision's; unlike torch, reflect padding may exceed the image, as NumPy allows).

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    offsets : array_like of int, (N, 2)
        (top, left) of each crop in the padded image, in [0, 2*padding].
    padding : int
        Padding on every side (>= 0).
    fill : float or sequence of float, default 0
        Fill of "constant" padding, in [0, 255].
    padding_mode : {"constant", "edge", "reflect", "symmetric"}, default "constant"
        How the border is padded.
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images(images)
    N, H, W, C = x.shape
    padding = _padding(padding)
    _padding_mode(padding_mode)
    o = _int_rows("offsets", offsets, N, 2, single)
    if o.size and (o.min() < 0 or o.max() > 2 * padding):
        raise ValueError(f"offsets: expected values in [0, {2 * padding}], got {o.tolist()}")
    fv = _fill_values(fill, C)
    if fv is None or np.any((fv < 0) | (fv > 255)):
        raise ValueError(f"fill: expected values in [0, 255], got {fill!r}")
    fill_u8 = np.ascontiguousarray(np.rint(fv).astype(np.uint8))
    rows = np.ascontiguousarray(_index_map(H, padding, padding_mode, o[:, 0].astype(np.int64)), dtype=np.int64)
    cols = np.ascontiguousarray(_index_map(W, padding, padding_mode, o[:, 1].astype(np.int64)), dtype=np.int64)
    y, given = _out(out, x.shape, single, x)
    _core.augment_remap(x, y, N, H, W, C, H, W, rows, cols, fill_u8)
    return _result(y, given, single)


@accepts_dlpack
def clahe(images: np.ndarray, clip_limit: float = 4.0, tile_grid_size: Union[int, Tuple[int, int]] = (8, 8), *,
          out: Optional[np.ndarray] = None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization, bit-identical to OpenCV's
    ``cv2.createCLAHE(clipLimit, tileGridSize).apply`` on every channel separately.

    ``clip_limit`` follows OpenCV: a multiple of the mean bin count, so each tile histogram is
    clipped at ``max(int(clip_limit * tile_area / 256), 1)`` (0 or less: no clipping) and the
    excess spread evenly. ``tile_grid_size`` is OpenCV's (tiles across, tiles down). Like OpenCV,
    an image whose sides are not multiples of the grid is padded (reflect-101, bottom and right)
    for the histograms. (albumentations' CLAHE equalizes the L channel of LAB instead.)

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or (H, W, C)
        NHWC images, C in {1, 3}.
    clip_limit : float, default 4.0
        OpenCV's ``clipLimit`` (>= 0).
    tile_grid_size : int or tuple of 2 ints, default (8, 8)
        (tiles across, tiles down).
    out : uint8 ndarray, optional
        Output buffer (the result's shape), written and returned when given.

    Returns
    -------
    ndarray
        uint8, shaped as ``images``.
    """
    x, single = _images(images)
    N, H, W, C = x.shape
    clip_limit = check_real("clip_limit", clip_limit, lo=0.0)
    tx, ty = check_pair("tile_grid_size", tile_grid_size, 1, scalar_ok=False)
    if tx * ty > 1 << 18:  # every tile has a 256-entry table per thread
        raise ValueError(f"tile_grid_size: expected at most {1 << 18} tiles in all, got {tx} x {ty}")
    y, given = _out(out, x.shape, single, x)
    _core.augment_clahe(x, y, N, H, W, C, tx, ty, float(clip_limit))
    return _result(y, given, single)


# ---- samplers ----------------------------------------------------------------------------------

def _range(name, value, lo_ok=0.0):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected (min, max), got {value!r}") from None
    if not (lo_ok <= a <= b) or not math.isfinite(b):
        raise ValueError(f"{name}: expected {lo_ok} <= min <= max, got {value!r}")
    return a, b


def sample_resized_crop_params(rng: np.random.Generator, batch_size: int, image_size: Union[int, Tuple[int, int]],
                               scale: Tuple[float, float] = (0.08, 1.0),
                               ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), *,
                               same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """torchvision ``RandomResizedCrop.get_params`` per image: up to 10 tries of area
    ``H*W*U(scale)`` and aspect ``exp(U(log ratio))`` (w = round(sqrt(area*aspect)), h =
    round(sqrt(area/aspect))); the first that fits is placed uniformly; none: the central crop
    clamped to the ratio range. Returns ``{"boxes": (N, 4) int64 (top, left, height, width)}``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : int or tuple of 2 ints
        (H, W) of the images.
    scale : tuple of 2 floats, default (0.08, 1.0)
        Range of the crop's fraction of the area.
    ratio : tuple of 2 floats, default (3/4, 4/3)
        Range of the aspect ratio (log-uniform).
    same_on_batch : bool, default False
        One box for every image.

    Returns
    -------
    dict of str to ndarray
        ``{"boxes": (N, 4) int64}``.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    H, W = _image_size(image_size)
    s0, s1 = _range("scale", scale)
    r0, r1 = _range("ratio", ratio, lo_ok=1e-12)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        one = sample_resized_crop_params(rng, 1, (H, W), (s0, s1), (r0, r1))
        return {"boxes": np.repeat(one["boxes"], N, axis=0)}
    area = H * W * rng.uniform(s0, s1, size=(N, 10))
    aspect = np.exp(rng.uniform(math.log(r0), math.log(r1), size=(N, 10)))
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(N), first]
    hh, ww = h[np.arange(N), first], w[np.arange(N), first]
    # the fallback: the central crop with the aspect clamped to the ratio range
    in_ratio = W / H
    if in_ratio < r0:
        fw, fh = W, int(round(W / r0))
    elif in_ratio > r1:
        fh, fw = H, int(round(H * r1))
    else:
        fw, fh = W, H
    hh = np.where(found, hh, fh)
    ww = np.where(found, ww, fw)
    u = rng.random((N, 2))
    top = np.where(found, np.floor(u[:, 0] * (H - hh + 1)), (H - fh) // 2).astype(np.int64)
    left = np.where(found, np.floor(u[:, 1] * (W - ww + 1)), (W - fw) // 2).astype(np.int64)
    return {"boxes": np.stack([top, left, hh, ww], axis=1).astype(np.int64)}


def sample_pad_crop_params(rng: np.random.Generator, batch_size: int, padding: int, *,
                           same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """``{"offsets": (N, 2) int64}``, top and left uniform in [0, 2*padding].

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    padding : int
        Padding on every side (>= 0).
    same_on_batch : bool, default False
        One offset for every image.

    Returns
    -------
    dict of str to ndarray
        ``{"offsets": (N, 2) int64}``.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    padding = _padding(padding)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    o = rng.integers(0, 2 * padding + 1, size=(1 if same_on_batch else N, 2))
    return {"offsets": np.repeat(o, N, axis=0) if same_on_batch else o.astype(np.int64)}


def sample_flip_params(rng: np.random.Generator, batch_size: int, p: float = 0.5, *,
                       same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """``{"applied": (N,) bool}``, each True with probability p.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    p : float, default 0.5
        Probability of flipping each image.
    same_on_batch : bool, default False
        One coin for every image.

    Returns
    -------
    dict of str to ndarray
        ``{"applied": (N,) bool}``.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    p = _prob(p)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    a = rng.random(1 if same_on_batch else N) < p
    return {"applied": np.repeat(a, N) if same_on_batch else a}
