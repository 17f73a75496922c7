"""Mixup and CutMix on float image batches: samplers (randomness from a numpy Generator) and the
deterministic batched functions (compiled kernels, parallel over images).

Conventions (timm / torchvision v2):

* ``lam ~ Beta(alpha, alpha)``; image ``n`` is mixed with its partner ``perm[n]``:
  Mixup ``x'[n] = lam[n] * x[n] + (1 - lam[n]) * x[perm[n]]``; CutMix pastes a box of
  ``x[perm[n]]`` into ``x[n]``, box side ``sqrt(1 - lam)`` times the image's, centre uniform, clipped
  at the border, and ``lam`` is then corrected to the kept fraction ``1 - box_area / (H * W)``.
* Labels (class indices with ``num_classes``, or soft ``(N, K)`` rows) mix with the same ``lam``:
  ``y'[n] = lam[n] * y[n] + (1 - lam[n]) * y[perm[n]]``, so every row still sums to 1.
* Modes: ``"batch"`` one ``lam`` (and for CutMix one box) for the whole batch, partner by a random
  permutation; ``"elem"`` a ``lam`` per image; ``"pair"`` images are paired at random (an odd one
  out keeps itself) and both members of a pair share ``lam``.
* Label smoothing (``label_smoothing=eps``) turns one-hot rows into ``(1 - eps) * y + eps / K``;
  it is off by default and only applied when asked.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from .._validate import (accepts_dlpack, as_reals, check_bool, check_choice, check_float_array, check_int, check_out,
                         check_real, check_rng, check_shape)

_MODES = ("batch", "pair", "elem")


def _check_rng(rng):
    check_rng("rng", rng)


def _prob(p, name="p"):
    return check_real(name, p, lo=0.0, hi=1.0)


def _alpha(alpha):
    return check_real("alpha", alpha, lo=0.0, lo_open=True)


def _mode(mode):
    return check_choice("mode", mode, _MODES)


def _batch_size(n, name="batch_size"):
    return check_int(name, n, 1, "a positive int")


def _partners(rng, N, mode):
    """A random permutation; in "pair" mode an involution pairing images at random."""
    order = rng.permutation(N)
    if mode != "pair":
        return order.astype(np.int64)
    perm = np.arange(N, dtype=np.int64)
    for k in range(0, N - 1, 2):
        a, b = order[k], order[k + 1]
        perm[a], perm[b] = b, a
    return perm


def _lambdas(rng, N, alpha, mode, perm):
    if mode == "batch":
        return np.full(N, rng.beta(alpha, alpha))
    lam = rng.beta(alpha, alpha, size=N)
    if mode == "pair":  # partners share lam: the pair's first member draws it
        idx = np.arange(N)
        lam = np.where(idx <= perm, lam, lam[perm])
    return lam


def sample_mixup_params(rng: np.random.Generator, batch_size: int, alpha: float = 1.0, *, mode: str = "batch",
                        p: float = 1.0) -> dict[str, np.ndarray]:
    """Draw Mixup parameters: ``{"lam": (N,) float64, "perm": (N,) int64, "applied": (N,) bool}``.

    With probability ``1 - p`` (per batch in "batch" mode, per image otherwise; per pair in
    "pair" mode) an image is left as it is: ``lam = 1``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    alpha : float, default 1.0
        lam ~ Beta(alpha, alpha).
    mode : {"batch", "pair", "elem"}, default "batch"
        One lam for the batch, one per random pair, or one per image.
    p : float, default 1.0
        Probability of mixing (per batch in "batch" mode, per image otherwise; per pair in "pair").

    Returns
    -------
    dict of str to ndarray
        ``lam`` (N,) float64, ``perm`` (N,) int64 partner indices, ``applied`` (N,) bool.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    alpha, mode, p = _alpha(alpha), _mode(mode), _prob(p)
    perm = _partners(rng, N, mode)
    lam = _lambdas(rng, N, alpha, mode, perm)
    if mode == "batch":
        applied = np.full(N, rng.random() < p)
    else:
        applied = rng.random(N) < p
        if mode == "pair":
            idx = np.arange(N)
            applied = np.where(idx <= perm, applied, applied[perm])
    applied &= perm != np.arange(N)  # an image left without a partner stays as it is
    lam = np.where(applied, lam, 1.0)
    return {"lam": lam, "perm": perm, "applied": applied}


def _boxes_for(rng, lam, H, W, count):
    """CutMix boxes (y0, x0, y1, x1) for cut ratio sqrt(1 - lam), centre uniform, clipped."""
    cut = np.sqrt(1.0 - lam)
    h = (H * cut).astype(np.int64)
    w = (W * cut).astype(np.int64)
    cy = rng.integers(0, H, size=count)
    cx = rng.integers(0, W, size=count)
    y0 = np.clip(cy - h // 2, 0, H)
    y1 = np.clip(cy + h // 2, 0, H)
    x0 = np.clip(cx - w // 2, 0, W)
    x1 = np.clip(cx + w // 2, 0, W)
    return np.stack([y0, x0, y1, x1], axis=-1).astype(np.int64)


def _shape4(batch_shape, name="batch_shape"):
    shape = check_shape(name, batch_shape, 4, "(N, C, H, W)")
    if min(shape) < 1:
        raise ValueError(f"{name}: expected (N, C, H, W) with positive sizes, got {batch_shape!r}")
    return shape


def sample_cutmix_params(rng: np.random.Generator, batch_shape: Sequence[int], alpha: float = 1.0, *,
                         mode: str = "batch", p: float = 1.0) -> dict[str, np.ndarray]:
    """Draw CutMix parameters for an (N, C, H, W) batch.

    Returns ``{"boxes": (N, 4) int64 (y0, x0, y1, x1), "lam": (N,) float64 (corrected to the kept
    fraction), "perm": (N,) int64, "applied": (N,) bool}``. Not applied: an empty box, ``lam = 1``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_shape : tuple of 4 ints
        (N, C, H, W) of the batch.
    alpha : float, default 1.0
        lam ~ Beta(alpha, alpha).
    mode : {"batch", "pair", "elem"}, default "batch"
        One lam for the batch, one per random pair, or one per image.
    p : float, default 1.0
        Probability of mixing (per batch in "batch" mode, per image otherwise; per pair in "pair").

    Returns
    -------
    dict of str to ndarray
        ``boxes`` (N, 4) int64, ``lam`` (N,) float64, ``perm`` (N,) int64, ``applied`` (N,) bool.
    """
    _check_rng(rng)
    N, _, H, W = _shape4(batch_shape)
    alpha, mode, p = _alpha(alpha), _mode(mode), _prob(p)
    perm = _partners(rng, N, mode)
    lam0 = _lambdas(rng, N, alpha, mode, perm)
    if mode == "batch":
        boxes = np.repeat(_boxes_for(rng, lam0[:1], H, W, 1), N, axis=0)
        applied = np.full(N, rng.random() < p)
    else:
        boxes = _boxes_for(rng, lam0, H, W, N)
        applied = rng.random(N) < p
        if mode == "pair":  # both members of a pair cut the same box
            idx = np.arange(N)
            first = idx <= perm
            boxes = np.where(first[:, None], boxes, boxes[perm])
            applied = np.where(first, applied, applied[perm])
    applied &= perm != np.arange(N)  # an image left without a partner stays as it is
    boxes[~applied] = 0
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lam = 1.0 - area / float(H * W)
    return {"boxes": boxes, "lam": lam, "perm": perm, "applied": applied}


# ---- the batched functions ---------------------------------------------------------------------

def _float_batch(x):
    return np.ascontiguousarray(check_float_array("x", x, 4, what="(N, C, H, W)"))


def _perm(perm, N):
    perm = np.asarray(perm)
    if perm.shape != (N,) or perm.dtype.kind not in "iu":
        raise ValueError(f"perm: expected {N} integer partner indices, got shape {perm.shape} dtype {perm.dtype}")
    if N and (perm.min() < 0 or perm.max() >= N):
        raise ValueError(f"perm: partner indices must lie in [0, {N})")
    return np.ascontiguousarray(perm, dtype=np.int64)


def _lam(lam, N):
    lam = as_reals("lam", lam, f"a number or {N} numbers in [0, 1]")
    if lam.ndim == 0:
        lam = np.full(N, float(lam))
    if lam.shape != (N,):
        raise ValueError(f"lam: expected a scalar or {N} values, got shape {lam.shape}")
    if not np.all((lam >= 0.0) & (lam <= 1.0)):
        raise ValueError("lam: expected values in [0, 1]")
    return np.ascontiguousarray(lam)


def _label_rows(labels, N, num_classes, label_smoothing, dtype):
    """Labels as (N, K) float rows: class indices become one-hot rows of `dtype` (needs
    num_classes); soft rows keep their dtype."""
    eps = check_real("label_smoothing", label_smoothing, lo=0.0, hi=1.0, hi_open=True)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1, "a positive int or None")
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape[:1] != (N,):
        raise ValueError(f"labels: expected {N} rows (one per image), got shape {labels.shape}")
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels: 1-D labels must be integer class indices, got dtype {labels.dtype}")
        if num_classes is None:
            raise ValueError("num_classes: required with integer class labels")
        K = int(num_classes)
        if N and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"labels: class indices must lie in [0, {K})")
        rows = np.zeros((N, K), dtype)
        rows[np.arange(N), labels] = 1
    elif labels.ndim == 2:
        if labels.dtype.kind != "f":
            raise TypeError(f"labels: soft labels must be float rows, got dtype {labels.dtype}")
        if num_classes is not None and labels.shape[1] != int(num_classes):
            raise ValueError(f"labels: expected {num_classes} columns, got {labels.shape[1]}")
        rows = labels.astype(labels.dtype, copy=True)  # soft rows keep their own float dtype
    else:
        raise ValueError(f"labels: expected class indices (N,) or soft rows (N, K), got shape {labels.shape}")
    if eps:
        rows = rows * (1.0 - eps) + eps / rows.shape[1]
    return rows


def _check_boxes(boxes, H, W):
    """Box rows (..., 4) = (y0, x0, y1, x1) inside an H x W image; returns them as (M, 4)."""
    b = boxes.reshape(-1, 4)
    if b.size and (np.any(b[:, 0] < 0) | np.any(b[:, 1] < 0) | np.any(b[:, 2] > H) | np.any(b[:, 3] > W)
                   | np.any(b[:, 0] > b[:, 2]) | np.any(b[:, 1] > b[:, 3])):
        raise ValueError(f"boxes: each (y0, x0, y1, x1) must satisfy 0 <= y0 <= y1 <= {H} and 0 <= x0 <= x1 <= {W}")
    return b


def _out_like(out, x):
    """A new array like x, or `out` checked to be one."""
    if out is None:
        return np.empty_like(x)
    return check_out("out", out, x.shape, x.dtype, (x,))


def _mix_labels(rows, perm, lam):
    if rows is None:
        return None
    lam = lam.astype(rows.dtype)[:, None]
    return lam * rows + (1 - lam) * rows[perm]


@accepts_dlpack
def mixup(x: np.ndarray, labels: Optional[np.ndarray] = None, *, lam: Any, perm: Any,
          num_classes: Optional[int] = None, label_smoothing: float = 0.0,
          out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Mixup: ``x'[n] = lam[n] * x[n] + (1 - lam[n]) * x[perm[n]]`` (computed in double).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
        The batch.
    labels : ndarray, optional
        (N,) class indices (give ``num_classes``) or (N, K) float rows.
    lam, perm : array_like
        From :func:`sample_mixup_params`: (N,) weights (``lam`` may be a scalar) and (N,) partners.
    num_classes : int, optional
        Number of classes, needed for index labels.
    label_smoothing : float, default 0.0
        Smoothing in [0, 1) applied to the label rows before mixing.
    out : ndarray, optional
        Output like ``x`` (must not overlap it).

    Returns
    -------
    x_mixed : ndarray
        (N, C, H, W), ``x``'s dtype.
    labels_mixed : ndarray or None
        (N, K) rows in ``x``'s dtype (summing to 1 when the inputs' do); None without labels.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment.functional import mixup, sample_mixup_params
    >>> x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    >>> prm = sample_mixup_params(np.random.default_rng(1), 4, alpha=0.4)
    >>> xm, ym = mixup(x, np.array([0, 1, 2, 1]), lam=prm["lam"], perm=prm["perm"], num_classes=3)
    >>> xm.shape, ym.shape
    ((4, 3, 8, 8), (4, 3))
    >>> np.allclose(ym.sum(axis=1), 1)
    True
    """
    x = _float_batch(x)
    N = x.shape[0]
    perm, lam = _perm(perm, N), _lam(lam, N)
    rows = _label_rows(labels, N, num_classes, label_smoothing, x.dtype)
    out = _out_like(out, x)
    _core.augment_blend(x, out, perm, lam, N, x[0].size if N else 0)
    return out, _mix_labels(rows, perm, lam)


@accepts_dlpack
def cutmix(x: np.ndarray, labels: Optional[np.ndarray] = None, *, boxes: Any, perm: Any,
           num_classes: Optional[int] = None, label_smoothing: float = 0.0,
           out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """CutMix: ``x'[n]`` is ``x[n]`` with box ``boxes[n] = (y0, x0, y1, x1)`` taken from
    ``x[perm[n]]``; labels mix with the kept fraction ``lam = 1 - box_area / (H * W)``.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
        The batch.
    labels : ndarray, optional
        (N,) class indices (give ``num_classes``) or (N, K) float rows.
    boxes : array_like of int, (N, 4)
        (y0, x0, y1, x1) per image, half-open (from :func:`sample_cutmix_params`).
    perm : array_like of int, (N,)
        Partner of each image.
    num_classes : int, optional
        Number of classes, needed for index labels.
    label_smoothing : float, default 0.0
        Smoothing in [0, 1) applied to the label rows before mixing.
    out : ndarray, optional
        Output like ``x`` (must not overlap it).

    Returns
    -------
    x_mixed : ndarray
        (N, C, H, W), ``x``'s dtype.
    labels_mixed : ndarray or None
        (N, K) rows in ``x``'s dtype; None without labels.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment.functional import cutmix
    >>> x = np.stack([np.zeros((1, 4, 4)), np.ones((1, 4, 4))]).astype(np.float32)
    >>> xm, ym = cutmix(x, np.array([0, 1]), boxes=np.array([[0, 0, 2, 2], [0, 0, 0, 0]]),
    ...                 perm=np.array([1, 0]), num_classes=2)
    >>> xm[0, 0]
    array([[1., 1., 0., 0.],
           [1., 1., 0., 0.],
           [0., 0., 0., 0.],
           [0., 0., 0., 0.]], dtype=float32)
    >>> ym[0]  # a quarter of image 0 comes from image 1
    array([0.75, 0.25], dtype=float32)
    """
    x = _float_batch(x)
    N, C, H, W = x.shape
    perm = _perm(perm, N)
    given = boxes
    boxes = np.asarray(boxes) if isinstance(boxes, (np.ndarray, list, tuple)) else None
    if boxes is None or boxes.dtype.kind not in "iu":
        raise TypeError(f"boxes: expected ({N}, 4) integer rows (y0, x0, y1, x1), got "
                        f"{'dtype ' + str(boxes.dtype) if boxes is not None else type(given).__name__}")
    boxes = np.ascontiguousarray(boxes, dtype=np.int64)
    if boxes.shape != (N, 4):
        raise ValueError(f"boxes: expected ({N}, 4) rows (y0, x0, y1, x1), got shape {boxes.shape}")
    b = _check_boxes(boxes, H, W)
    rows = _label_rows(labels, N, num_classes, label_smoothing, x.dtype)
    out = _out_like(out, x)
    _core.augment_paste_boxes(x, out, perm, boxes, N, C, H, W)
    lam = 1.0 - ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / float(H * W)
    return out, _mix_labels(rows, perm, lam)


# ---- SamplePairing -------------------------------------------------------------------------------

def sample_pairing_params(rng: np.random.Generator, batch_size: int, *, pool_size: Optional[int] = None,
                          p: float = 1.0, same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """Draw SamplePairing partners: ``{"partners": (N,) int64, "applied": (N,) bool}``.

    Partners index a separate pool of ``pool_size`` images when given (uniformly), else another
    image of the same batch (uniformly among the other N - 1). Not applied (probability 1 - p,
    per image): the image is its own partner, so it comes back unchanged.

    ``same_on_batch``: one draw for the whole batch: one coin, and one pool image for every image
    or, within the batch, one cyclic shift k in [1, N-1] (image n pairs with (n + k) mod N).

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    pool_size : int, optional
        Size of the partner pool; None pairs within the batch.
    p : float, default 1.0
        Probability of pairing each image.
    same_on_batch : bool, default False
        One draw for the whole batch (above).

    Returns
    -------
    dict of str to ndarray
        ``partners`` (N,) int64, ``applied`` (N,) bool.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    p = _prob(p)
    if pool_size is not None:
        M = _batch_size(pool_size, "pool_size")
        if M < 1 and N > 0:
            raise ValueError(f"pool_size: expected at least one pool image, got {pool_size!r}")
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        if pool_size is not None:
            partners = np.full(N, rng.integers(0, M) if N else 0)
        else:
            shift = rng.integers(1, N) if N > 1 else 0
            partners = (np.arange(N) + shift) % max(N, 1)
        applied = np.full(N, rng.random() < p)
    else:
        if pool_size is not None:
            partners = rng.integers(0, M, size=N)
        else:
            partners = rng.integers(0, max(N - 1, 1), size=N)
            partners = np.where(partners >= np.arange(N), partners + 1, partners) if N > 1 else np.zeros(N, np.int64)
        applied = rng.random(N) < p
    if pool_size is None:
        partners = np.where(applied, partners, np.arange(N))
    return {"partners": partners.astype(np.int64), "applied": applied}


@accepts_dlpack
def sample_pairing(x: np.ndarray, partners: Any, *, pool: Optional[np.ndarray] = None, applied: Any = None,
                   out: Optional[np.ndarray] = None) -> np.ndarray:
    """SamplePairing (Inoue 2018): ``x'[n] = (x[n] + src[partners[n]]) / 2`` with ``src`` the batch
    itself or ``pool``; labels stay those of ``x`` (the caller keeps them). Images where
    ``applied`` is False are copied unchanged. Works on any float batch whose first axis is the
    image (NCHW or NHWC); ``pool`` has the same per-image shape and dtype.

    Parameters
    ----------
    x : ndarray
        float32/float64 batch, images along the first axis.
    partners : array_like of int, (N,)
        Partner indices into the batch or ``pool``.
    pool : ndarray, optional
        Partner images, same per-image shape and dtype as ``x``.
    applied : array_like of bool, (N,), optional
        Which images are paired (None: all).
    out : ndarray, optional
        Output like ``x``.

    Returns
    -------
    ndarray
        The paired batch, ``x``'s shape and dtype.
    """
    check_float_array("x", x, (2, 3, 4, 5), what="(a batch of images)")
    x = np.ascontiguousarray(x)
    N = x.shape[0]
    S = int(np.prod(x.shape[1:]))
    lam = np.full(N, 0.5)
    if applied is not None:
        applied = np.asarray(applied)
        if applied.dtype != bool:
            raise TypeError(f"applied: expected {N} bools, got dtype {applied.dtype}")
        if applied.shape != (N,):
            raise ValueError(f"applied: expected {N} flags, got shape {applied.shape}")
        lam[~applied] = 1.0
    out = _out_like(out, x)
    partners = np.asarray(partners)
    if pool is None:
        _core.augment_blend(x, out, _perm(partners, N), lam, N, S)
        return out
    if not isinstance(pool, np.ndarray) or pool.dtype != x.dtype or pool.shape[1:] != x.shape[1:]:
        raise ValueError(f"pool: expected a {x.dtype} array of images shaped like x's {x.shape[1:]}")
    pool = np.ascontiguousarray(pool)
    M = pool.shape[0]
    if partners.shape != (N,) or partners.dtype.kind not in "iu":
        raise ValueError(f"partners: expected {N} integer pool indices, got shape {partners.shape}")
    if N and (partners.min() < 0 or partners.max() >= M):
        raise ValueError(f"partners: pool indices must lie in [0, {M})")
    _core.augment_blend(x, out, np.ascontiguousarray(partners, dtype=np.int64), lam, N, S, pool, M)
    return out


class SamplePairingSchedule:
    """When to use SamplePairing, following the paper's training procedure: off for the first
    ``warmup`` epochs, then on for ``on`` epochs and off for ``off`` epochs in turn, and off again
    from ``fine_tune_from`` on (the final fine-tuning phase). Defaults: 100 warm-up epochs, 8 on /
    2 off (the paper's setting for its CIFAR/SVHN runs); ``fine_tune_from`` is the caller's choice.

    Parameters
    ----------
    warmup : int, default 100
        Epochs off at the start.
    on, off : int, default 8 and 2
        Length of the on and off phases that alternate after the warm-up.
    fine_tune_from : int, optional
        Epoch from which it stays off.

    Examples
    --------
    >>> from cnnkit.augment import SamplePairingSchedule
    >>> s = SamplePairingSchedule(warmup=2, on=1, off=1)
    >>> [s.enabled(epoch) for epoch in range(6)]
    [False, False, True, False, True, False]
    """

    def __init__(self, warmup: int = 100, on: int = 8, off: int = 2, fine_tune_from: Optional[int] = None) -> None:
        check_int("warmup", warmup, 0, "an int >= 0")
        check_int("on", on, 1, "an int >= 1 (epochs on)")
        check_int("off", off, 0, "an int >= 0")
        if fine_tune_from is not None:
            check_int("fine_tune_from", fine_tune_from, 0, "an int >= 0 or None")
        self.warmup, self.on, self.off, self.fine_tune_from = int(warmup), int(on), int(off), fine_tune_from

    def enabled(self, epoch: int) -> bool:
        """Whether SamplePairing is on in (0-based) ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch, from 0.

        Returns
        -------
        bool
            True when SamplePairing should run in that epoch.
        """
        check_int("epoch", epoch, 0, "an int >= 0")
        if epoch < self.warmup or (self.fine_tune_from is not None and epoch >= self.fine_tune_from):
            return False
        return (epoch - self.warmup) % (self.on + self.off) < self.on
