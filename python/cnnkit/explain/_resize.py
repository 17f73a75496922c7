"""Resizing and scaling of attribution maps with torch's interpolation semantics.

``resize_maps`` is ``torch.nn.functional.interpolate`` on (N, h, w) maps: "bilinear" with
``align_corners=False`` (F.interpolate's default), "bilinear" with ``align_corners=True``
(``nn.UpsamplingBilinear2d``, which Score-CAM uses) or "nearest" (captum's default for
GuidedGradCam). Bilinear resizing is separable: ``out = Ry @ map @ Rx^T`` with the interpolation
matrices ``Ry`` (H, h) and ``Rx`` (W, w) holding torch's two weights per row, so a batch of maps is
two matrix products in float64.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["interp_matrix", "resize_maps", "minmax_normalize"]


@lru_cache(maxsize=64)
def interp_matrix(out_size: int, in_size: int, mode: str = "bilinear", align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) float64 matrix R with ``resized = R @ signal`` along one axis.

    bilinear: the source coordinate of output pixel d is ``(d + 0.5) * in/out - 0.5`` clamped at
    0 (``align_corners=False``) or ``d * (in - 1)/(out - 1)`` (True); it mixes pixels floor(s)
    and floor(s) + 1 (the last pixel alone at the end) with weights 1 - f and f. nearest:
    ``min(floor(d * in/out), in - 1)`` with the scale in float32, as torch computes it.
    """
    R = np.zeros((out_size, in_size), np.float64)
    d = np.arange(out_size)
    if mode == "nearest":
        scale = np.float32(in_size / out_size)
        src = np.minimum(np.floor(d.astype(np.float32) * scale).astype(np.int64), in_size - 1)
        R[d, src] = 1.0
        return R
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = d * scale
    else:
        src = np.maximum((d + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    f = src - i0
    np.add.at(R, (d, i0), 1.0 - f)
    np.add.at(R, (d, i1), f)
    return R


def resize_maps(maps: np.ndarray, size: tuple, mode: str = "bilinear", align_corners: bool = False) -> np.ndarray:
    """(N, h, w) (or (N, K, h, w)) maps resized to ``size`` = (H, W), float64."""
    H, W = size
    h, w = maps.shape[-2:]
    if (h, w) == (H, W):
        return np.asarray(maps, np.float64)
    Ry = interp_matrix(H, h, mode, align_corners)
    Rx = interp_matrix(W, w, mode, align_corners)
    m = np.asarray(maps, np.float64)
    return np.matmul(np.matmul(Ry, m), Rx.T)


def minmax_normalize(maps: np.ndarray) -> np.ndarray:
    """Each map (over its last two axes) scaled to [0, 1] by its min and max; a constant map
    becomes zeros (never NaN). float64 in, float64 out."""
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    lo = flat.min(axis=-1)[..., None, None]
    hi = flat.max(axis=-1)[..., None, None]
    span = hi - lo
    out = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out
