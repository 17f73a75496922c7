"""Cutout and random erasing: samplers (boxes from a numpy Generator) and the batched fill
(compiled kernel for constant and per-channel-mean fills, parallel over images).

Images: uint8 NHWC (N, H, W, C) batches (or one (H, W, C) image), or float batches in NCHW
(default for float) or NHWC (``layout="NHWC"``). Boxes are ``(N, K, 4)`` int64 rows
``(y0, x0, y1, x1)``, half-open, inside the image; an empty box (y0 == y1) fills nothing.

* Cutout (DeVries & Taylor 2017): ``K`` squares of side ``size`` centred uniformly on the image,
  clipped at the border (so a hole may lie partly outside the image).
* Random erasing (Zhong et al. 2020, torchvision ``RandomErasing`` semantics): with probability p,
  up to 10 tries of area ``H*W*U(scale)`` and aspect ``exp(U(log ratio))``,
  ``h = round(sqrt(area*aspect))``, ``w = round(sqrt(area/aspect))``; the first box that fits
  (h < H and w < W) is placed uniformly; none fits: the image is left as it is.
* Fill: a number, one value per channel, ``"mean"`` (each image's own per-channel mean), or
  ``"random"`` (per-pixel values from ``noise``, an array shaped like the images that the sampler
  draws: uniform 0..255 for uint8, standard normal for float, as torchvision does).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _core
from ._mix import _batch_size, _check_boxes, _check_rng, _prob


def _image_size(image_size):
    try:
        H, W = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise TypeError(f"image_size: expected (H, W), got {image_size!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"image_size: expected positive sizes, got {image_size!r}")
    return H, W


def sample_cutout_params(rng, batch_size, image_size, size, num_holes=1, *, p=1.0, same_on_batch=False):
    """Cutout holes: ``{"boxes": (N, K, 4) int64, "applied": (N,) bool}``; with ``same_on_batch``
    one draw (holes and coin) serves every image."""
    _check_rng(rng)
    N = _batch_size(batch_size)
    if same_on_batch:
        one = sample_cutout_params(rng, 1, image_size, size, num_holes, p=p)
        return {"boxes": np.repeat(one["boxes"], N, axis=0), "applied": np.repeat(one["applied"], N)}
    H, W = _image_size(image_size)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    K = _batch_size(num_holes, "num_holes")
    p = _prob(p)
    cy = rng.integers(0, H, size=(N, K))
    cx = rng.integers(0, W, size=(N, K))
    y0, x0 = cy - size // 2, cx - size // 2
    boxes = np.stack([np.clip(y0, 0, H), np.clip(x0, 0, W), np.clip(y0 + size, 0, H), np.clip(x0 + size, 0, W)],
                     axis=-1).astype(np.int64)
    applied = rng.random(N) < p
    boxes[~applied] = 0
    return {"boxes": boxes, "applied": applied}


def sample_erasing_params(rng, batch_size, image_size, *, scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5,
                          same_on_batch=False):
    """Random-erasing boxes (torchvision semantics): ``{"boxes": (N, 1, 4), "applied": (N,)}``;
    ``applied`` is False where the coin said no or no try fitted (or it fitted with a 0-sized box).
    With ``same_on_batch`` one draw serves every image."""
    _check_rng(rng)
    N = _batch_size(batch_size)
    if same_on_batch:
        one = sample_erasing_params(rng, 1, image_size, scale=scale, ratio=ratio, p=p)
        return {"boxes": np.repeat(one["boxes"], N, axis=0), "applied": np.repeat(one["applied"], N)}
    H, W = _image_size(image_size)
    p = _prob(p)
    s0, s1 = (float(v) for v in scale)
    r0, r1 = (float(v) for v in ratio)
    if not 0.0 < s0 <= s1 <= 1.0:
        raise ValueError(f"scale: expected 0 < lo <= hi <= 1, got {scale!r}")
    if not 0.0 < r0 <= r1:
        raise ValueError(f"ratio: expected 0 < lo <= hi, got {ratio!r}")
    # vectorised over images (same distribution as torchvision's per-image loop): the coin, ten
    # tries of area and aspect, the first try that fits, and a uniform position for it
    coin = rng.random(N) < p
    area = H * W * rng.uniform(s0, s1, size=(N, 10))
    aspect = np.exp(rng.uniform(math.log(r0), math.log(r1), size=(N, 10)))
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < H) & (w < W)
    first = np.argmax(fits, axis=1)
    rows = np.arange(N)
    found = coin & fits[rows, first]
    hh, ww = h[rows, first], w[rows, first]
    u = rng.random((N, 2))
    i = np.floor(u[:, 0] * (H - hh + 1)).astype(np.int64)
    j = np.floor(u[:, 1] * (W - ww + 1)).astype(np.int64)
    boxes = np.where(found[:, None], np.stack([i, j, i + hh, j + ww], axis=1), 0).astype(np.int64)[:, None, :]
    # torchvision accepts a 0-sized box: it erases nothing
    applied = found & (hh > 0) & (ww > 0)
    return {"boxes": boxes, "applied": applied}


def random_fill_noise(rng, images, *, layout=None):
    """Noise for ``fill="random"``: uniform integers 0..255 for uint8 images, standard normal for
    float images, shaped like ``images``."""
    _check_rng(rng)
    x, _, _ = _images(images, layout)
    if x.dtype == np.uint8:
        return rng.integers(0, 256, size=np.shape(images), dtype=np.uint8)
    return rng.standard_normal(np.shape(images)).astype(x.dtype)


def _images(images, layout):
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images: expected a numpy.ndarray, got {type(images).__name__}")
    if images.dtype not in (np.uint8, np.float32, np.float64):
        raise TypeError(f"images: expected uint8, float32 or float64, got dtype {images.dtype}")
    if layout is None:
        layout = "NHWC" if images.dtype == np.uint8 else "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout: expected 'NCHW' or 'NHWC', got {layout!r}")
    single = images.ndim == 3
    x = images[None] if single else images
    if x.ndim != 4:
        raise ValueError(f"images: expected a 4-D batch or one 3-D image, got shape {images.shape}")
    return x, layout == "NHWC", single


def cutout(images, boxes, fill=0, *, layout=None, noise=None, out=None):
    """Fill the boxes of each image; see the module docstring for layouts, boxes and fills.

    Returns a new array (or ``out``) shaped like ``images``; inputs are not modified.
    """
    x, nhwc, single = _images(images, layout)
    N = x.shape[0]
    H, W, C = (x.shape[1], x.shape[2], x.shape[3]) if nhwc else (x.shape[2], x.shape[3], x.shape[1])
    if C > 64:
        raise ValueError(f"images: at most 64 channels, got {C}")
    boxes = np.asarray(boxes)
    if boxes.ndim == 2:  # one image's holes (K, 4), or one hole per image (N, 4)
        boxes = boxes[None] if single else boxes[:, None, :]
    if boxes.ndim != 3 or boxes.shape[0] != N or boxes.shape[2] != 4 or boxes.dtype.kind not in "iu":
        raise ValueError(f"boxes: expected integer (N, K, 4) rows (y0, x0, y1, x1) with N = {N}, got shape "
                         f"{boxes.shape}")
    _check_boxes(boxes, H, W)
    if out is None:
        out = np.empty_like(images)
    elif (not isinstance(out, np.ndarray) or out.shape != images.shape or out.dtype != images.dtype
          or not out.flags.c_contiguous):
        raise ValueError(f"out: expected a C-contiguous {images.dtype} array of shape {images.shape}")
    o4 = out[None] if single else out
    xc = np.ascontiguousarray(x)
    K = boxes.shape[1]
    bc = np.ascontiguousarray(boxes, dtype=np.int64)
    if isinstance(fill, str) and fill == "random":
        if not isinstance(noise, np.ndarray) or noise.shape != images.shape or noise.dtype != images.dtype:
            raise ValueError(f"noise: fill='random' needs a {images.dtype} array shaped {images.shape} "
                             f"(random_fill_noise draws one)")
        nz = noise[None] if single else noise
        np.copyto(o4, xc)
        for n in range(N):
            for k in range(K):
                y0, x0, y1, x1 = bc[n, k]
                if nhwc:
                    o4[n, y0:y1, x0:x1, :] = nz[n, y0:y1, x0:x1, :]
                else:
                    o4[n, :, y0:y1, x0:x1] = nz[n, :, y0:y1, x0:x1]
        return out
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill: expected a number, per-channel values, 'mean' or 'random', got {fill!r}")
        mode, values = 1, np.zeros(C)
    else:
        values = np.asarray(fill, dtype=np.float64).reshape(-1)
        if values.size == 1:
            values = np.full(C, values[0])
        if values.size != C or not np.all(np.isfinite(values)):
            raise ValueError(f"fill: expected one value or {C} finite values, got {fill!r}")
        if x.dtype == np.uint8 and np.any((values < 0) | (values > 255)):
            raise ValueError(f"fill: uint8 images need values in [0, 255], got {fill!r}")
        mode = 0
    _core.augment_fill_boxes(xc, o4, N, H, W, C, nhwc, bc, K, mode, np.ascontiguousarray(values))
    return out
