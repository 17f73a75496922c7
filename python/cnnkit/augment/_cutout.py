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
from typing import Any, Optional, Tuple

import numpy as np

from .. import _core
from .._validate import (accepts_dlpack, as_reals, check_array, check_bool, check_int, check_interval, check_layout,
                         check_shape)
from ._mix import _batch_size, _check_boxes, _check_rng, _prob


def _image_size(image_size):
    H, W = check_shape("image_size", image_size, 2, "(H, W)")
    if H < 1 or W < 1:
        raise ValueError(f"image_size: expected positive sizes, got {image_size!r}")
    return H, W


def sample_cutout_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int], size: int,
                         num_holes: int = 1, *, p: float = 1.0, same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """Cutout holes: ``{"boxes": (N, K, 4) int64, "applied": (N,) bool}``; with ``same_on_batch``
    one draw (holes and coin) serves every image.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images.
    size : int
        Side of each square hole.
    num_holes : int, default 1
        K, holes per image.
    p : float, default 1.0
        Probability of cutting each image (an image not cut gets empty boxes).
    same_on_batch : bool, default False
        One draw for every image.

    Returns
    -------
    dict of str to ndarray
        ``boxes`` (N, K, 4) int64 (y0, x0, y1, x1), ``applied`` (N,) bool.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        one = sample_cutout_params(rng, 1, image_size, size, num_holes, p=p)
        return {"boxes": np.repeat(one["boxes"], N, axis=0), "applied": np.repeat(one["applied"], N)}
    H, W = _image_size(image_size)
    check_int("size", size, 1, "a positive int")
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


def sample_erasing_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int], *,
                          scale: Tuple[float, float] = (0.02, 0.33), ratio: Tuple[float, float] = (0.3, 3.3),
                          p: float = 0.5, same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """Random-erasing boxes (torchvision semantics): ``{"boxes": (N, 1, 4), "applied": (N,)}``;
    ``applied`` is False where the coin said no or no try fitted (or it fitted with a 0-sized box).
    With ``same_on_batch`` one draw serves every image.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images.
    scale : tuple of 2 floats, default (0.02, 0.33)
        Range of the erased fraction of the area, in (0, 1].
    ratio : tuple of 2 floats, default (0.3, 3.3)
        Range of the aspect ratio (log-uniform).
    p : float, default 0.5
        Probability of erasing each image.
    same_on_batch : bool, default False
        One draw for every image.

    Returns
    -------
    dict of str to ndarray
        ``boxes`` (N, 1, 4) int64 (y0, x0, y1, x1), ``applied`` (N,) bool.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        one = sample_erasing_params(rng, 1, image_size, scale=scale, ratio=ratio, p=p)
        return {"boxes": np.repeat(one["boxes"], N, axis=0), "applied": np.repeat(one["applied"], N)}
    H, W = _image_size(image_size)
    p = _prob(p)
    s0, s1 = check_interval("scale", scale, lo=0.0, lo_open=True, hi=1.0)
    r0, r1 = check_interval("ratio", ratio, lo=0.0, lo_open=True)
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


@accepts_dlpack
def random_fill_noise(rng: np.random.Generator, images: np.ndarray, *, layout: Optional[str] = None) -> np.ndarray:
    """Noise for ``fill="random"``: uniform integers 0..255 for uint8 images, standard normal for
    float images, shaped like ``images``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    images : ndarray
        uint8 NHWC or float images (batch or single), only their shape and dtype are used.
    layout : {"NCHW", "NHWC"}, optional
        Layout of ``images`` (None: uint8 NHWC, float NCHW); checked, as :func:`cutout` does.

    Returns
    -------
    ndarray
        Shaped like ``images``: uint8 for uint8 images, else ``images``' float dtype.
    """
    _check_rng(rng)
    x, _, _ = _images(images, layout)
    if x.dtype == np.uint8:
        return rng.integers(0, 256, size=np.shape(images), dtype=np.uint8)
    return rng.standard_normal(np.shape(images)).astype(x.dtype)


def _images(images, layout):
    check_array("images", images, dtypes=(np.uint8, np.float32, np.float64), ndim=(3, 4),
                what="(a 4-D batch or one 3-D image)")
    if layout is None:
        layout = "NHWC" if images.dtype == np.uint8 else "NCHW"
    check_layout(layout)
    single = images.ndim == 3
    x = images[None] if single else images
    return x, layout == "NHWC", single


@accepts_dlpack
def cutout(images: np.ndarray, boxes: Any, fill: Any = 0, *, layout: Optional[str] = None,
           noise: Optional[np.ndarray] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Fill the boxes of each image; see the module docstring for layouts, boxes and fills.

    Returns a new array (or ``out``) shaped like ``images``; inputs are not modified.

    Parameters
    ----------
    images : ndarray
        uint8 NHWC (N, H, W, C) / (H, W, C) (C in {1, 3} unless ``layout`` is given), or float32 /
        float64 NCHW (default for float) or NHWC.
    boxes : array_like of int
        (N, K, 4) rows (y0, x0, y1, x1), half-open; (N, 4) is one box per image, (K, 4) one
        image's boxes.
    fill : float, sequence of float, "mean" or "random", default 0
        The fill (a value, one per channel, each image's channel means, or ``noise``).
    layout : {"NCHW", "NHWC"}, optional
        Layout of ``images``.
    noise : ndarray, optional
        For ``fill="random"``: values shaped like ``images`` (:func:`random_fill_noise`).
    out : ndarray, optional
        Output shaped and typed like ``images``.

    Returns
    -------
    ndarray
        The filled images, ``images``' shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment.functional import cutout
    >>> x = np.ones((1, 1, 4, 4), np.float32)
    >>> cutout(x, np.array([[[1, 1, 3, 3]]]))[0, 0]
    array([[1., 1., 1., 1.],
           [1., 0., 0., 1.],
           [1., 0., 0., 1.],
           [1., 1., 1., 1.]], dtype=float32)
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
        values = as_reals("fill", fill, "a number, per-channel values, 'mean' or 'random'").reshape(-1)
        if values.size == 1:
            values = np.full(C, values[0])
        if values.size != C or not np.all(np.isfinite(values)):
            raise ValueError(f"fill: expected one value or {C} finite values (one per channel of images), got {fill!r}")
        if x.dtype == np.uint8 and np.any((values < 0) | (values > 255)):
            raise ValueError(f"fill: uint8 images need values in [0, 255], got {fill!r}")
        mode = 0
    _core.augment_fill_boxes(xc, o4, N, H, W, C, nhwc, bc, K, mode, np.ascontiguousarray(values))
    return out
