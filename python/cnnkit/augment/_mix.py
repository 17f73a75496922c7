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

import numbers

import numpy as np

from .. import _core
from .._validate import check_int, check_real

_MODES = ("batch", "pair", "elem")


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")


def _prob(p, name="p"):
    return check_real(name, p, lo=0.0, hi=1.0)


def _alpha(alpha):
    return check_real("alpha", alpha, lo=0.0, lo_open=True)


def _mode(mode):
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    return mode


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


def sample_mixup_params(rng, batch_size, alpha=1.0, *, mode="batch", p=1.0):
    """Draw Mixup parameters: ``{"lam": (N,) float64, "perm": (N,) int64, "applied": (N,) bool}``.

    With probability ``1 - p`` (per batch in "batch" mode, per image otherwise; per pair in
    "pair" mode) an image is left as it is: ``lam = 1``.
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
    try:
        shape = tuple(int(v) for v in batch_shape)
    except TypeError:
        raise TypeError(f"{name}: expected (N, C, H, W), got {batch_shape!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"{name}: expected (N, C, H, W) with positive sizes, got {batch_shape!r}")
    return shape


def sample_cutmix_params(rng, batch_shape, alpha=1.0, *, mode="batch", p=1.0):
    """Draw CutMix parameters for an (N, C, H, W) batch.

    Returns ``{"boxes": (N, 4) int64 (y0, x0, y1, x1), "lam": (N,) float64 (corrected to the kept
    fraction), "perm": (N,) int64, "applied": (N,) bool}``. Not applied: an empty box, ``lam = 1``.
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
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected a float32 or float64 (N, C, H, W) batch, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x: expected an (N, C, H, W) batch, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _perm(perm, N):
    perm = np.asarray(perm)
    if perm.shape != (N,) or perm.dtype.kind not in "iu":
        raise ValueError(f"perm: expected {N} integer partner indices, got shape {perm.shape} dtype {perm.dtype}")
    if N and (perm.min() < 0 or perm.max() >= N):
        raise ValueError(f"perm: partner indices must lie in [0, {N})")
    return np.ascontiguousarray(perm, dtype=np.int64)


def _lam(lam, N):
    lam = np.asarray(lam, dtype=np.float64)
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
    if labels is None:
        return None
    eps = float(label_smoothing)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing!r}")
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
    if not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous {x.dtype} array of shape {x.shape}")
    return out


def _mix_labels(rows, perm, lam):
    if rows is None:
        return None
    lam = lam.astype(rows.dtype)[:, None]
    return lam * rows + (1 - lam) * rows[perm]


def mixup(x, labels=None, *, lam, perm, num_classes=None, label_smoothing=0.0, out=None):
    """Mixup: ``x'[n] = lam[n] * x[n] + (1 - lam[n]) * x[perm[n]]`` (computed in double).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    labels : (N,) class indices (with ``num_classes``) or (N, K) float rows, optional
    lam, perm : from :func:`sample_mixup_params` (``lam`` may be a scalar)
    out : ndarray like x, optional (must not overlap x)

    Returns
    -------
    (x_mixed, labels_mixed or None); label rows sum to 1 when the inputs' do.
    """
    x = _float_batch(x)
    N = x.shape[0]
    perm, lam = _perm(perm, N), _lam(lam, N)
    rows = _label_rows(labels, N, num_classes, label_smoothing, x.dtype)
    out = _out_like(out, x)
    _core.augment_blend(x, out, perm, lam, N, x[0].size if N else 0)
    return out, _mix_labels(rows, perm, lam)


def cutmix(x, labels=None, *, boxes, perm, num_classes=None, label_smoothing=0.0, out=None):
    """CutMix: ``x'[n]`` is ``x[n]`` with box ``boxes[n] = (y0, x0, y1, x1)`` taken from
    ``x[perm[n]]``; labels mix with the kept fraction ``lam = 1 - box_area / (H * W)``.

    Returns (x_mixed, labels_mixed or None).
    """
    x = _float_batch(x)
    N, C, H, W = x.shape
    perm = _perm(perm, N)
    boxes = np.ascontiguousarray(np.asarray(boxes), dtype=np.int64)
    if boxes.shape != (N, 4):
        raise ValueError(f"boxes: expected ({N}, 4) rows (y0, x0, y1, x1), got shape {boxes.shape}")
    b = _check_boxes(boxes, H, W)
    rows = _label_rows(labels, N, num_classes, label_smoothing, x.dtype)
    out = _out_like(out, x)
    _core.augment_paste_boxes(x, out, perm, boxes, N, C, H, W)
    lam = 1.0 - ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / float(H * W)
    return out, _mix_labels(rows, perm, lam)


# ---- SamplePairing -------------------------------------------------------------------------------

def sample_pairing_params(rng, batch_size, *, pool_size=None, p=1.0, same_on_batch=False):
    """Draw SamplePairing partners: ``{"partners": (N,) int64, "applied": (N,) bool}``.

    Partners index a separate pool of ``pool_size`` images when given (uniformly), else another
    image of the same batch (uniformly among the other N - 1). Not applied (probability 1 - p,
    per image): the image is its own partner, so it comes back unchanged.

    ``same_on_batch``: one draw for the whole batch: one coin, and one pool image for every image
    or, within the batch, one cyclic shift k in [1, N-1] (image n pairs with (n + k) mod N).
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    p = _prob(p)
    if pool_size is not None:
        M = _batch_size(pool_size, "pool_size")
        if M < 1 and N > 0:
            raise ValueError(f"pool_size: expected at least one pool image, got {pool_size!r}")
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


def sample_pairing(x, partners, *, pool=None, applied=None, out=None):
    """SamplePairing (Inoue 2018): ``x'[n] = (x[n] + src[partners[n]]) / 2`` with ``src`` the batch
    itself or ``pool``; labels stay those of ``x`` (the caller keeps them). Images where
    ``applied`` is False are copied unchanged. Works on any float batch whose first axis is the
    image (NCHW or NHWC); ``pool`` has the same per-image shape and dtype.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64) or x.ndim < 2:
        raise TypeError(f"x: expected a float32 or float64 batch of images, got dtype {x.dtype} shape {x.shape}")
    x = np.ascontiguousarray(x)
    N = x.shape[0]
    S = int(np.prod(x.shape[1:]))
    lam = np.full(N, 0.5)
    if applied is not None:
        applied = np.asarray(applied, dtype=bool)
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
    """

    def __init__(self, warmup=100, on=8, off=2, fine_tune_from=None):
        for name, v in (("warmup", warmup), ("on", on), ("off", off)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
        if on == 0:
            raise ValueError("on: expected at least one epoch on")
        if fine_tune_from is not None and (not isinstance(fine_tune_from, numbers.Integral) or fine_tune_from < 0):
            raise ValueError(f"fine_tune_from: expected a non-negative int or None, got {fine_tune_from!r}")
        self.warmup, self.on, self.off, self.fine_tune_from = int(warmup), int(on), int(off), fine_tune_from

    def enabled(self, epoch):
        """Whether SamplePairing is on in (0-based) ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative int, got {epoch!r}")
        if epoch < self.warmup or (self.fine_tune_from is not None and epoch >= self.fine_tune_from):
            return False
        return (epoch - self.warmup) % (self.on + self.off) < self.on
