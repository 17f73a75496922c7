"""Transform classes: each wires a sampler (randomness from its own seeded numpy Generator) to a
deterministic batched function, and keeps the parameters it drew in ``last_params`` so a call can
be replayed exactly (``t(x, params=t.last_params)``).

``__call__(images, params=None, labels=None)`` samples only when ``params`` is None. It returns
the images, or ``(images, labels)`` when labels are given.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _cutout, _mix, _ops, _policy
from . import functional as F

__all__ = ["Transform", "Compose", "MixUp", "CutMix", "SamplePairing", "Cutout", "RandomErasing", "AutoAugment",
           "RandAugment", "TrivialAugmentWide", "AugMix", "Normalize", "Equalize", "CLAHE", "SpatialDropout",
           "RandomHorizontalFlip", "RandomVerticalFlip", "RandomResizedCrop", "RandomCrop", "RandomAffine",
           "ColorJitter"]


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
    ``same_on_batch``: one coin and one pool image (or one cyclic shift of the batch) for all.
    """

    def __init__(self, p=1.0, *, pool=None, same_on_batch=False, seed=None):
        self.p = _mix._prob(p)
        self.pool = pool
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        pool_size = None if self.pool is None else len(self.pool)
        return _mix.sample_pairing_params(self.rng, len(images), pool_size=pool_size, p=self.p,
                                          same_on_batch=self.same_on_batch)

    def apply(self, images, params, labels):
        return _mix.sample_pairing(images, params["partners"], pool=self.pool, applied=params["applied"]), labels


def _hw(images, layout):
    x, nhwc, _ = _cutout._images(images, layout)
    if layout is None and x.dtype == np.uint8:  # NHWC assumed, not stated: check it as the uint8 transforms do
        _check_u8(images)
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
        _hw(images, self.layout)
        return _cutout.cutout(images, params["boxes"], self.fill, layout=self.layout,
                              noise=params.get("noise")), labels


class Cutout(_Fill):
    """Cutout (DeVries & Taylor 2017): ``num_holes`` squares of side ``size`` per image, centred
    uniformly and clipped at the border, filled with ``fill`` (number, per-channel values,
    "mean" or "random"); ``p`` per image; ``same_on_batch`` puts the same holes in every image.
    uint8 NHWC (C in {1, 3}, as every uint8 transform) or float NCHW (``layout`` to override;
    an explicit layout takes any number of channels)."""

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


# ---- image transforms on uint8 NHWC batches --------------------------------------------------------
# Each draws per-image parameters with a sampler, then makes batched calls into
# cnnkit.augment.functional (looked up at call time); a single (H, W, C) image is handled as a
# batch of one, so its last_params have a leading axis of 1. Each checks its input with _u8 in
# both sample and apply (a replay skips sample), before anything is drawn or run.

def _u8(images):
    """(batch view (N, H, W, C), single) for uint8 NHWC images or one (H, W, C) image, C in {1, 3}
    whatever ops are drawn: an NCHW batch is refused, not read as NHWC (see _ops._channels_last)."""
    return _ops._images(images, colour=True)


def _check_u8(images):
    """The checks of :func:`_u8` alone, for transforms that hand ``images`` on as they are."""
    _ops._check_images(images, colour=True)


def _back(out, single):
    return out[0] if single else out


def _interp(interpolation):
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation: expected 'nearest' or 'bilinear', got {interpolation!r}")
    return interpolation


def _ops_call(x, params, interpolation, fill):
    ops = np.ascontiguousarray(params["ops"])
    if ops.ndim == 2 and ops.shape[1] == 0:  # num_ops=0: nothing to do
        return x.copy()
    return F.apply_ops(x, ops, np.ascontiguousarray(params["magnitudes"], dtype=np.float64),
                       interpolation=interpolation, fill=fill)


def _applied(rng, N, p, same_on_batch):
    """Per-image coins (one coin for all with same_on_batch)."""
    if same_on_batch:
        return np.repeat(rng.random(1) < p, N)
    return rng.random(N) < p


def _on_subset(x, applied, fn):
    """``fn`` on the images where ``applied`` is set, in one batched call; the rest copied."""
    applied = np.asarray(applied, dtype=bool)
    if applied.shape != (x.shape[0],):
        raise ValueError(f"params: expected 'applied' of shape ({x.shape[0]},), got {applied.shape}")
    if applied.all():
        return fn(x)
    out = x.copy()
    idx = np.flatnonzero(applied)
    if idx.size:
        out[idx] = fn(np.ascontiguousarray(x[idx]))
    return out


class _PolicyTransform(Transform):
    def __init__(self, interpolation, fill, seed):
        self.interpolation = _interp(interpolation)
        self.fill = fill
        super().__init__(seed)

    def apply(self, images, params, labels):
        x, single = _u8(images)
        return _back(_ops_call(x, params, self.interpolation, self.fill), single), labels


class AutoAugment(_PolicyTransform):
    """AutoAugment (Cubuk et al. 2019) with torchvision's published policies ("imagenet",
    "cifar10", "svhn"): per image a sub-policy uniformly, each of its two ops applied with its
    probability; see :func:`cnnkit.augment.sample_autoaugment_params`. The ops run in one batched
    ``functional.apply_ops`` call. uint8 NHWC images (N, H, W, C) or one (H, W, C), C in {1, 3}.
    """

    def __init__(self, policy="imagenet", interpolation="nearest", fill=None, *, same_on_batch=False, seed=None):
        if policy not in _policy.POLICIES:
            raise ValueError(f"policy: expected one of {tuple(_policy.POLICIES)}, got {policy!r}")
        self.policy = policy
        self.same_on_batch = bool(same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_autoaugment_params(self.rng, x.shape[0], x.shape[1:3], self.policy,
                                                 same_on_batch=self.same_on_batch)


class RandAugment(_PolicyTransform):
    """RandAugment (Cubuk et al. 2020), torchvision semantics: ``num_ops`` ops uniformly from the
    14-op space at bin ``magnitude`` of ``num_magnitude_bins``; see
    :func:`cnnkit.augment.sample_randaugment_params`."""

    def __init__(self, num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="nearest", fill=None, *,
                 same_on_batch=False, seed=None):
        # validate once, here, with the sampler's own checks
        _policy.sample_randaugment_params(np.random.default_rng(0), 1, (1, 1), num_ops, magnitude, num_magnitude_bins)
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.same_on_batch = bool(same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_randaugment_params(self.rng, x.shape[0], x.shape[1:3], self.num_ops, self.magnitude,
                                                 self.num_magnitude_bins, same_on_batch=self.same_on_batch)


class TrivialAugmentWide(_PolicyTransform):
    """TrivialAugment (Mueller & Hutter 2021), torchvision's ``TrivialAugmentWide``: one op and one
    bin uniformly per image; see :func:`cnnkit.augment.sample_trivialaugment_params`."""

    def __init__(self, num_magnitude_bins=31, interpolation="nearest", fill=None, *, same_on_batch=False,
                 seed=None):
        self.num_magnitude_bins = _policy._check_bins(num_magnitude_bins)
        self.same_on_batch = bool(same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_trivialaugment_params(self.rng, x.shape[0], self.num_magnitude_bins,
                                                    same_on_batch=self.same_on_batch)


class AugMix(Transform):
    """AugMix (Hendrycks et al. 2020), torchvision semantics; see
    :func:`cnnkit.augment.sample_augmix_params` and :func:`cnnkit.augment.augmix`. The default
    interpolation is bilinear, as torchvision's ``AugMix``."""

    def __init__(self, severity=3, mixture_width=3, chain_depth=-1, alpha=1.0, all_ops=True,
                 interpolation="bilinear", fill=None, *, same_on_batch=False, seed=None):
        _policy.sample_augmix_params(np.random.default_rng(0), 1, (1, 1), severity, mixture_width, chain_depth,
                                     alpha, all_ops)
        self.severity, self.mixture_width, self.chain_depth = severity, mixture_width, chain_depth
        self.alpha, self.all_ops = float(alpha), bool(all_ops)
        self.interpolation = _interp(interpolation)
        self.fill = fill
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_augmix_params(self.rng, x.shape[0], x.shape[1:3], self.severity, self.mixture_width,
                                            self.chain_depth, self.alpha, self.all_ops,
                                            same_on_batch=self.same_on_batch)

    def apply(self, images, params, labels):
        _check_u8(images)
        return _policy.augmix(images, params, interpolation=self.interpolation, fill=self.fill), labels


class Normalize(Transform):
    """uint8 NHWC images to float32 NCHW network inputs, ``(x/255 - mean[c]) / std[c]``
    (torchvision's ``ToTensor`` + ``Normalize``; ImageNet statistics by default) via
    :func:`cnnkit.augment.functional.to_float_normalize`. No randomness; ``last_params`` is {}."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), *, seed=None):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"std: expected {len(self.mean)} values (as many as mean), got {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std: expected non-zero values, got {std!r}")
        super().__init__(seed)

    def sample(self, images):
        _check_u8(images)
        return {}

    def apply(self, images, params, labels):
        _check_u8(images)
        return F.to_float_normalize(images, self.mean, self.std), labels


class _Coin(Transform):
    """A deterministic op applied to each image with probability p (all images by default)."""

    def __init__(self, p, same_on_batch, seed):
        self.p = _mix._prob(p)
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        return {"applied": _applied(self.rng, x.shape[0], self.p, self.same_on_batch)}

    def apply(self, images, params, labels):
        x, single = _u8(images)
        return _back(_on_subset(x, params["applied"], self._op), single), labels


class Equalize(_Coin):
    """Histogram equalization (:func:`cnnkit.augment.functional.equalize`, ``mode`` "pil" or "cv")
    of each image with probability ``p`` (1: every image; torchvision's ``RandomEqualize`` is p=0.5)."""

    def __init__(self, mode="pil", *, p=1.0, same_on_batch=False, seed=None):
        if mode not in ("pil", "cv"):
            raise ValueError(f"mode: expected 'pil' or 'cv', got {mode!r}")
        self.mode = mode
        super().__init__(p, same_on_batch, seed)

    def _op(self, x):
        return F.equalize(x, self.mode)


class CLAHE(_Coin):
    """Contrast-limited adaptive histogram equalization (OpenCV's CLAHE on every channel, see
    :func:`cnnkit.augment.functional.clahe`) of each image with probability ``p`` (1 by default).
    ``tile_grid_size`` is (tiles across, tiles down), as OpenCV."""

    def __init__(self, clip_limit=4.0, tile_grid_size=(8, 8), *, p=1.0, same_on_batch=False, seed=None):
        if isinstance(clip_limit, bool) or not isinstance(clip_limit, numbers.Real) or not clip_limit >= 0:
            raise ValueError(f"clip_limit: expected a non-negative number, got {clip_limit!r}")
        try:
            tiles = tuple(int(t) for t in tile_grid_size)
        except (TypeError, ValueError):
            raise TypeError(f"tile_grid_size: expected (tiles across, tiles down), got {tile_grid_size!r}") from None
        if len(tiles) != 2 or min(tiles) < 1:
            raise ValueError(f"tile_grid_size: expected two positive ints, got {tile_grid_size!r}")
        self.clip_limit, self.tile_grid_size = float(clip_limit), tiles
        super().__init__(p, same_on_batch, seed)

    def _op(self, x):
        return F.clahe(x, self.clip_limit, self.tile_grid_size)


class RandomHorizontalFlip(_Coin):
    """Flip each image left-right with probability ``p`` (torchvision ``RandomHorizontalFlip``)."""

    def __init__(self, p=0.5, *, same_on_batch=False, seed=None):
        super().__init__(p, same_on_batch, seed)

    def sample(self, images):
        x, _ = _u8(images)
        N = x.shape[0]
        if self.same_on_batch:
            return {"applied": np.repeat(F.sample_flip_params(self.rng, 1, self.p)["applied"], N)}
        return F.sample_flip_params(self.rng, N, self.p)

    def _op(self, x):
        return F.hflip(x)


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flip each image upside down with probability ``p`` (torchvision ``RandomVerticalFlip``)."""

    def _op(self, x):
        return F.vflip(x)


class SpatialDropout(Transform):
    """Drop whole channels of float feature maps (``torch.nn.Dropout2d``): each (image, channel)
    zeroed with probability ``p``, survivors scaled by ``1/(1-p)``; see
    :func:`cnnkit.augment.functional.spatial_dropout`. Input: float32/float64 (N, C, H, W) or one
    (C, H, W) map (``layout="NHWC"`` for channels last). ``last_params = {"scale": (N, C)}``;
    :meth:`backward` scales a gradient with it. ``training=False``: the identity.
    """

    def __init__(self, p=0.5, *, training=True, layout="NCHW", seed=None):
        self.p = _mix._prob(p)
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout: expected 'NCHW' or 'NHWC', got {layout!r}")
        self.training, self.layout = bool(training), layout
        super().__init__(seed)

    def _batch(self, x, name="images"):
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected a float32 or float64 numpy.ndarray, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim not in (3, 4):
            raise ValueError(f"{name}: expected a 4-D batch or one 3-D map ({self.layout}), got shape {x.shape}")
        return (x[None], True) if x.ndim == 3 else (x, False)

    def sample(self, images):
        x, _ = self._batch(images)
        N, C = (x.shape[0], x.shape[1]) if self.layout == "NCHW" else (x.shape[0], x.shape[-1])
        # the same draw functional.spatial_dropout makes, on a 1x1 stand-in of the maps
        shape = (N, C, 1, 1) if self.layout == "NCHW" else (N, 1, 1, C)
        _, scale = F.spatial_dropout(np.zeros(shape, x.dtype), self.p, self.rng, self.training, layout=self.layout)
        return {"scale": scale}

    def apply(self, images, params, labels):
        x, single = self._batch(images)
        # y = x * scale per channel: the same multiply as the forward function's
        y = F.spatial_dropout_backward(x, np.asarray(params["scale"]), layout=self.layout)
        return _back(y, single), labels

    def backward(self, grad_out):
        """The gradient through the last call: ``grad_out`` times the same per-channel scale."""
        if self.last_params is None:
            raise ValueError("grad_out: no forward call to take the dropout mask from")
        g, single = self._batch(grad_out, "grad_out")
        return _back(F.spatial_dropout_backward(g, self.last_params["scale"], layout=self.layout), single)


class RandomResizedCrop(Transform):
    """torchvision ``RandomResizedCrop``: a box of ``scale`` of the area and aspect ``ratio``
    (log-uniform; 10 tries, then the centre crop), resized to ``size`` bilinearly (antialiased
    by default); see :func:`cnnkit.augment.functional.resized_crop`."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), antialias=True, *,
                 same_on_batch=False, seed=None):
        self.size = _ops._size2(size)
        self.scale = _policy._range("scale", scale, sym_ok=False, lo_bound=0.0)
        self.ratio = _policy._range("ratio", ratio, sym_ok=False, lo_bound=0.0)
        self.antialias = bool(antialias)
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        N, hw = x.shape[0], x.shape[1:3]
        if self.same_on_batch:
            one = F.sample_resized_crop_params(self.rng, 1, hw, self.scale, self.ratio)
            return {k: np.repeat(v, N, axis=0) for k, v in one.items()}
        return F.sample_resized_crop_params(self.rng, N, hw, self.scale, self.ratio)

    def apply(self, images, params, labels):
        x, single = _u8(images)
        return _back(F.resized_crop(x, params["boxes"], self.size, antialias=self.antialias), single), labels


class RandomCrop(Transform):
    """Pad by ``padding`` on every side and crop back to the input's size at a uniform offset
    (torchvision ``RandomCrop(size=input size, padding)``, the CIFAR recipe); ``padding_mode``
    "constant" (with ``fill``), "edge", "reflect" or "symmetric"; see :func:`cnnkit.augment.functional.pad_crop`."""

    def __init__(self, padding=4, fill=0, padding_mode="constant", *, same_on_batch=False, seed=None):
        self.padding, self.fill = _ops._padding(padding), fill
        self.padding_mode = _ops._padding_mode(padding_mode)
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        N = x.shape[0]
        if self.same_on_batch:
            return {"offsets": np.repeat(F.sample_pad_crop_params(self.rng, 1, self.padding)["offsets"], N, axis=0)}
        return F.sample_pad_crop_params(self.rng, N, self.padding)

    def apply(self, images, params, labels):
        x, single = _u8(images)
        out = F.pad_crop(x, params["offsets"], self.padding, fill=self.fill, padding_mode=self.padding_mode)
        return _back(out, single), labels


class RandomAffine(Transform):
    """torchvision ``RandomAffine``: per image ``angle ~ U(degrees)``, translation, scale and shear
    drawn as ``RandomAffine.get_params`` does (see :func:`cnnkit.augment.sample_affine_params`),
    applied by one :func:`cnnkit.augment.functional.affine` call. ``fill`` defaults to 0 as
    torchvision's (which matters for bilinear: the border is blended towards it)."""

    def __init__(self, degrees, translate=None, scale=None, shear=None, interpolation="nearest", fill=0,
                 center=None, *, same_on_batch=False, seed=None):
        _policy._affine_ranges(degrees, translate, scale, shear)
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.interpolation = _interp(interpolation)
        self.fill, self.center = fill, center
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_affine_params(self.rng, x.shape[0], x.shape[1:3], self.degrees, self.translate,
                                            self.scale, self.shear, same_on_batch=self.same_on_batch)

    def apply(self, images, params, labels):
        x, single = _u8(images)
        out = F.affine(x, params["angle"], params["translate"], params["scale"], params["shear"], center=self.center,
                       interpolation=self.interpolation, fill=self.fill)
        return _back(out, single), labels


class ColorJitter(Transform):
    """Random brightness, contrast and saturation (torchvision ``ColorJitter`` without hue): each
    factor uniform per image in ``[max(0, 1 - v), 1 + v]`` (or a given ``(min, max)``); see
    :func:`cnnkit.augment.sample_color_jitter_params`.

    Unlike torchvision, which shuffles the order of the adjustments on every call, the order is
    fixed: brightness, then contrast, then saturation (each a batched ``functional.adjust_*``
    call), so a replay needs only the factors.
    """

    def __init__(self, brightness=0, contrast=0, saturation=0, *, same_on_batch=False, seed=None):
        _policy._jitter_ranges(brightness, contrast, saturation)
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.same_on_batch = bool(same_on_batch)
        super().__init__(seed)

    def sample(self, images):
        x, _ = _u8(images)
        return _policy.sample_color_jitter_params(self.rng, x.shape[0], self.brightness, self.contrast,
                                                  self.saturation, same_on_batch=self.same_on_batch)

    def apply(self, images, params, labels):
        x, single = _u8(images)
        out = x
        for name, fn in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                         ("saturation", F.adjust_saturation)):
            if name in params:
                out = fn(out, np.asarray(params[name], dtype=np.float64))
        return _back(out.copy() if out is x else out, single), labels
