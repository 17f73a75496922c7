"""Transform classes: each wires a sampler (randomness from its own seeded numpy Generator) to a
deterministic batched function, and keeps the parameters it drew in ``last_params`` so a call can
be replayed exactly (``t(x, params=t.last_params)``).

``__call__(images, params=None, labels=None)`` samples only when ``params`` is None. It returns
the images, or ``(images, labels)`` when labels are given.
"""
from __future__ import annotations

import numpy as np

from . import _cutout, _mix

__all__ = ["Transform", "Compose", "MixUp", "CutMix", "SamplePairing", "Cutout", "RandomErasing"]


class Transform:
    """Base class: ``seed`` seeds the transform's own Generator (None: fresh OS entropy)."""

    def __init__(self, seed=None):
        self.seed(seed)
        self.last_params = None

    def seed(self, seed=None):
        """Reseed (an int, a numpy SeedSequence, or None)."""
        self.rng = np.random.default_rng(seed)

    def sample(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, images, params, labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images, params=None, labels=None):
        if params is None:
            params = self.sample(images)
        self.last_params = params
        out, new_labels = self.apply(images, params, labels)
        return out if labels is None else (out, new_labels)


class Compose(Transform):
    """Apply transforms in order. ``seed`` reseeds every child from one SeedSequence, so the whole
    pipeline is reproducible from one number; ``last_params`` is the list of the children's."""

    def __init__(self, transforms, seed=None):
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}]: expected a cnnkit.augment Transform, got {type(t).__name__}")
        super().__init__(seed)

    def seed(self, seed=None):
        super().seed(seed)
        if seed is not None:
            for t, s in zip(self.transforms, np.random.SeedSequence(seed).spawn(len(self.transforms))):
                t.seed(s)

    def __call__(self, images, params=None, labels=None):
        if params is not None and len(params) != len(self.transforms):
            raise ValueError(f"params: expected {len(self.transforms)} entries (one per transform), got {len(params)}")
        used = []
        for i, t in enumerate(self.transforms):
            res = t(images, None if params is None else params[i], labels)
            images, labels = (res if labels is not None else (res, None))
            used.append(t.last_params)
        self.last_params = used
        return images if labels is None else (images, labels)


class _Mixing(Transform):
    def __init__(self, alpha=1.0, *, mode="batch", p=1.0, num_classes=None, label_smoothing=0.0, seed=None):
        self.alpha = _mix._alpha(alpha)
        self.mode = _mix._mode(mode)
        self.p = _mix._prob(p)
        self.num_classes = num_classes
        eps = float(label_smoothing)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = eps
        super().__init__(seed)


class MixUp(_Mixing):
    """Mixup (Zhang et al. 2018) on float (N, C, H, W) batches; see :func:`cnnkit.augment.functional.mixup`.

    ``alpha``: Beta(alpha, alpha) for lam; ``mode``: "batch", "pair" or "elem"; ``p``: probability
    of mixing; labels: class indices (give ``num_classes``) or soft rows; ``label_smoothing`` off by
    default.
    """

    def sample(self, images):
        return _mix.sample_mixup_params(self.rng, len(images), self.alpha, mode=self.mode, p=self.p)

    def apply(self, images, params, labels):
        return _mix.mixup(images, labels, lam=params["lam"], perm=params["perm"], num_classes=self.num_classes,
                          label_smoothing=self.label_smoothing)


class CutMix(_Mixing):
    """CutMix (Yun et al. 2019) on float (N, C, H, W) batches; see :func:`cnnkit.augment.functional.cutmix`.
    Labels mix with the kept fraction of each image (lam corrected by the clipped box)."""

    def sample(self, images):
        return _mix.sample_cutmix_params(self.rng, np.shape(images), self.alpha, mode=self.mode, p=self.p)

    def apply(self, images, params, labels):
        return _mix.cutmix(images, labels, boxes=params["boxes"], perm=params["perm"], num_classes=self.num_classes,
                           label_smoothing=self.label_smoothing)


class SamplePairing(Transform):
    """SamplePairing (Inoue 2018): each image averaged with a random partner from the batch, or
    from ``pool`` (an array of images shaped like the batch's); labels are left as they are.
    ``p``: probability per image. Pair it with :class:`cnnkit.augment.SamplePairingSchedule` to
    switch it on and off by epoch (``enabled = schedule.enabled(epoch)``; skip the call when off).
    """

    def __init__(self, p=1.0, *, pool=None, seed=None):
        self.p = _mix._prob(p)
        self.pool = pool
        super().__init__(seed)

    def sample(self, images):
        pool_size = None if self.pool is None else len(self.pool)
        return _mix.sample_pairing_params(self.rng, len(images), pool_size=pool_size, p=self.p)

    def apply(self, images, params, labels):
        return _mix.sample_pairing(images, params["partners"], pool=self.pool, applied=params["applied"]), labels


def _hw(images, layout):
    x, nhwc, _ = _cutout._images(images, layout)
    return x.shape[0], ((x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3]))


class _Fill(Transform):
    def __init__(self, fill, layout, seed):
        if isinstance(fill, str) and fill not in ("mean", "random"):
            raise ValueError(f"fill: expected a number, per-channel values, 'mean' or 'random', got {fill!r}")
        self.fill = fill
        self.layout = layout
        super().__init__(seed)

    def _noise(self, images, params):
        if isinstance(self.fill, str) and self.fill == "random":
            params["noise"] = _cutout.random_fill_noise(self.rng, images, layout=self.layout)
        return params

    def apply(self, images, params, labels):
        return _cutout.cutout(images, params["boxes"], self.fill, layout=self.layout,
                              noise=params.get("noise")), labels


class Cutout(_Fill):
    """Cutout (DeVries & Taylor 2017): ``num_holes`` squares of side ``size`` per image, centred
    uniformly and clipped at the border, filled with ``fill`` (number, per-channel values,
    "mean" or "random"); ``p`` per image; ``same_on_batch`` puts the same holes in every image.
    uint8 NHWC or float NCHW (``layout`` to override)."""

    def __init__(self, size, num_holes=1, fill=0, *, p=1.0, same_on_batch=False, layout=None, seed=None):
        self.size, self.num_holes, self.p = size, num_holes, _mix._prob(p)
        self.same_on_batch = bool(same_on_batch)
        super().__init__(fill, layout, seed)

    def sample(self, images):
        N, hw = _hw(images, self.layout)
        prm = _cutout.sample_cutout_params(self.rng, N, hw, self.size, self.num_holes, p=self.p,
                                           same_on_batch=self.same_on_batch)
        return self._noise(images, prm)


class RandomErasing(_Fill):
    """Random erasing with torchvision's ``RandomErasing`` semantics (p, scale, ratio; value as
    ``fill``: number, per-channel values, "mean" or "random")."""

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, *, same_on_batch=False, layout=None,
                 seed=None):
        self.p, self.scale, self.ratio = _mix._prob(p), scale, ratio
        self.same_on_batch = bool(same_on_batch)
        super().__init__(value, layout, seed)

    def sample(self, images):
        N, hw = _hw(images, self.layout)
        prm = _cutout.sample_erasing_params(self.rng, N, hw, scale=self.scale, ratio=self.ratio, p=self.p,
                                            same_on_batch=self.same_on_batch)
        return self._noise(images, prm)
