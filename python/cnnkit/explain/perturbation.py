"""Perturbation attributions: occlusion and RISE. Forward passes only, so any object with
``forward(x) -> logits`` can be explained; perturbed inputs are built and evaluated in chunks
of ``batch_size``."""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from .._validate import accepts_dlpack, check_int, check_real
from . import _model
from ._model import Target
from ._resize import interp_matrix

__all__ = ["occlusion", "rise", "occlusion_windows", "rise_grids", "rise_masks"]


def _pair(name: str, v: Any, lo: int) -> tuple:
    t = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
    if isinstance(t, (str, bytes)) or not hasattr(t, "__len__") or len(t) != 2:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return (check_int(f"{name}[0]", t[0], lo, f"an int >= {lo}"), check_int(f"{name}[1]", t[1], lo, f"an int >= {lo}"))


def occlusion_windows(H: int, W: int, window: tuple, stride: tuple) -> np.ndarray:
    """int64 (P, 4) windows (y0, x0, y1, x1), half-open, in captum's order (x fastest): start
    ``k * stride`` for ``k < ceil((size - window) / stride) + 1``; the last may run past the
    edge and is clipped, as captum's padded mask is.

    Parameters
    ----------
    H, W : int
        The image size.
    window, stride : (int, int)
        The occluding window and its step.

    Returns
    -------
    numpy.ndarray
        int64 (P, 4).
    """
    ny = -(-(H - window[0]) // stride[0]) + 1
    nx = -(-(W - window[1]) // stride[1]) + 1
    ys = np.arange(ny) * stride[0]
    xs = np.arange(nx) * stride[1]
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = yy.ravel(), xx.ravel()
    return np.stack([y0, x0, np.minimum(y0 + window[0], H), np.minimum(x0 + window[1], W)], axis=1)


@accepts_dlpack
def occlusion(model: Any, x: np.ndarray, target: Target = None, *, window: Any = (8, 8), stride: Any = (4, 4),
              baseline: Any = 0.0, batch_size: Optional[int] = None) -> np.ndarray:
    """Occlusion (Zeiler and Fergus, 2014) with captum's ``Occlusion`` semantics: a window over
    all channels slides with ``stride``; each position replaces the window by ``baseline`` and
    measures the drop ``logit_t(x) - logit_t(x_occluded)``; every pixel gets the mean drop over
    the windows that cover it. Positions are captum's (:func:`occlusion_windows`).

    Parameters
    ----------
    model : anything with ``forward(x) -> logits``
    x : float32 ndarray (N, C, H, W) or (N, H, W, C), in the model's layout
    target : None (the predicted class), int, or one int per image
    window : int or (int, int)
        At most the image's size.
    stride : int or (int, int)
        At most the window (captum's rule; every pixel is then covered).
    baseline : float or float array broadcastable to x
    batch_size : int, optional
        Occluded inputs per forward (default: a few hundred MB worth).

    Returns
    -------
    float32 ndarray (N, H, W)
        captum's result is this map repeated over the channel axis.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.occlusion(model, x, window=4, stride=4).shape  # 16 windows per image
    (2, 16, 16)
    """
    x = _model.check_images(x, model)
    layout = _model.layout_of(model)
    C, H, W = _model.spatial(x, layout)
    window = _pair("window", window, 1)
    stride = _pair("stride", stride, 1)
    if window[0] > H or window[1] > W:
        raise ValueError(f"window: expected at most the image size {(H, W)}, got {window}")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"stride: expected at most the window {window} (captum's rule), got {stride}")
    base = _model.check_baseline(baseline, x)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    wins = occlusion_windows(H, W, window, stride)
    P = wins.shape[0]
    N = x.shape[0]
    with _model.explaining(model):
        logits = _model.logits_of(model, x)
        targets = _model.targets_for(_model.check_target(target, x.shape[0]), logits)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        f0 = logits[np.arange(N), targets].astype(np.float64)
        total = np.zeros((N, H, W), np.float64)
        buf = np.empty((min(bs, N * P),) + x.shape[1:], np.float32)
        xn, bn = _model.to_nchw(x, layout), _model.to_nchw(base, layout)
        for a, b in _model.chunks(N * P, bs):
            img, pos = np.divmod(np.arange(a, b), P)
            xb = buf[:b - a]
            vb = _model.to_nchw(xb, layout)
            vb[...] = xn[img]
            for j in range(b - a):
                y0, x0, y1, x1 = wins[pos[j]]
                vb[j, :, y0:y1, x0:x1] = bn[img[j], :, y0:y1, x0:x1]
            out = _model._as_logits(model.forward(xb), b - a)
            drop = f0[img] - out[np.arange(b - a), targets[img]]
            for j in range(b - a):
                y0, x0, y1, x1 = wins[pos[j]]
                total[img[j], y0:y1, x0:x1] += drop[j]
    count = np.zeros((H, W), np.float64)
    for y0, x0, y1, x1 in wins:
        count[y0:y1, x0:x1] += 1
    return (total / count).astype(np.float32)


def rise_grids(n_masks: int, grid: tuple, p: float, cell: tuple, rng: np.random.Generator) -> tuple:
    """The random part of RISE: binary grids (n_masks, gh + 1, gw + 1), 1 with probability p,
    and shifts (n_masks, 2) uniform in [0, cell), drawn in that order from ``rng``.

    Parameters
    ----------
    n_masks : int
    grid : (int, int)
        (gh, gw) cells per side.
    p : float
        Probability that a cell is kept.
    cell : (int, int)
        Cell size in pixels.
    rng : numpy.random.Generator

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        float64 grids (n_masks, gh + 1, gw + 1) and int64 shifts (n_masks, 2).
    """
    grids = (rng.random((n_masks, grid[0] + 1, grid[1] + 1)) < p).astype(np.float64)
    shifts = np.stack([rng.integers(0, cell[0], n_masks), rng.integers(0, cell[1], n_masks)], axis=1)
    return grids, shifts


def rise_masks(grids: np.ndarray, shifts: np.ndarray, size: tuple, cell: tuple) -> np.ndarray:
    """Soft masks (M, H, W) float32: each grid upsampled bilinearly (``align_corners=False``) to
    ((gh + 1) * cell_h, (gw + 1) * cell_w) and cropped to (H, W) at its shift (Petsiuk et al.).

    Parameters
    ----------
    grids, shifts : numpy.ndarray
        As :func:`rise_grids` returns them.
    size : (int, int)
        (H, W).
    cell : (int, int)
        Cell size in pixels.

    Returns
    -------
    numpy.ndarray
        float32 (M, H, W).
    """
    H, W = size
    gh1, gw1 = grids.shape[1:]
    Ry = interp_matrix(gh1 * cell[0], gh1, "bilinear", False)
    Rx = interp_matrix(gw1 * cell[1], gw1, "bilinear", False)
    out = np.empty((grids.shape[0], H, W), np.float32)
    for i in range(grids.shape[0]):
        dy, dx = shifts[i]
        out[i] = Ry[dy:dy + H] @ grids[i] @ Rx[dx:dx + W].T
    return out


@accepts_dlpack
def rise(model: Any, x: np.ndarray, target: Target = None, *, n_masks: int = 2000, cell: Any = 8, p: float = 0.5,
         seed: Union[None, int, np.random.Generator] = None, batch_size: Optional[int] = None) -> np.ndarray:
    """RISE (Petsiuk et al., 2018): the saliency of pixel u is ``sum_i P_t(x * M_i) M_i(u) /
    (n_masks * p)``, the expected class probability over random soft masks that keep u.

    Masks: a binary grid of ``ceil(H / cell) x ceil(W / cell)`` cells plus one, each cell kept
    with probability ``p``, upsampled bilinearly to (grid + 1) * cell pixels and cropped at a
    random shift in [0, cell) (:func:`rise_grids`, :func:`rise_masks`). The same masks serve every
    image; ``P_t`` is the softmax probability of the target class.

    Parameters
    ----------
    model : anything with ``forward(x) -> logits``
    x, target : as in :func:`occlusion`
    n_masks : int >= 1
    cell : int or (int, int)
        Cell size in pixels (the paper: 7x7 cells on 224x224 images, cell 32).
    p : float in (0, 1]
    seed : None, int or numpy.random.Generator
    batch_size : int, optional
        Masked inputs per forward.

    Returns
    -------
    float32 ndarray (N, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> maps = explain.rise(model, x, n_masks=64, cell=4, seed=0)
    >>> maps.shape, bool((maps >= 0).all())
    ((2, 16, 16), True)
    """
    x = _model.check_images(x, model)
    layout = _model.layout_of(model)
    C, H, W = _model.spatial(x, layout)
    n_masks = check_int("n_masks", n_masks, 1, "a positive int")
    cell = _pair("cell", cell, 1)
    p = check_real("p", p, lo=0.0, hi=1.0, lo_open=True)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    grid = (-(-H // cell[0]), -(-W // cell[1]))
    grids, shifts = rise_grids(n_masks, grid, p, cell, rng)
    N = x.shape[0]
    total = np.zeros((N, H, W), np.float64)
    with _model.explaining(model):
        logits = _model.logits_of(model, x)
        targets = _model.targets_for(_model.check_target(target, x.shape[0]), logits)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        buf = np.empty((min(bs, N * n_masks),) + x.shape[1:], np.float32)
        xn = _model.to_nchw(x, layout)
        for a, b in _model.chunks(N * n_masks, bs):
            mi, img = np.divmod(np.arange(a, b), N)          # mask-major: each mask once per chunk
            m0, m1 = mi[0], mi[-1] + 1
            masks = rise_masks(grids[m0:m1], shifts[m0:m1], (H, W), cell)
            xb = buf[:b - a]
            np.multiply(xn[img], masks[mi - m0][:, None], out=_model.to_nchw(xb, layout))
            out = np.asarray(_model._as_logits(model.forward(xb), b - a), np.float64)
            out -= out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            prob = out[np.arange(b - a), targets[img]] / out.sum(axis=1)
            weights = np.zeros((m1 - m0, N), np.float64)
            weights[mi - m0, img] = prob
            total += np.tensordot(weights, masks, axes=(0, 0))
    return (total / (n_masks * p)).astype(np.float32)
