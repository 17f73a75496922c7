"""Transform classes: each wires a sampler (randomness from its own seeded numpy Generator) to a
deterministic batched function, and keeps the parameters it drew in ``last_params`` so a call can
be replayed exactly (``t(x, params=t.last_params)``).

``__call__(images, params=None, labels=None)`` samples only when ``params`` is None. It returns
the images, or ``(images, labels)`` when labels are given.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .._validate import (as_reals, check_bool, check_choice, check_float_array, check_int, check_layout, check_pair,
                         check_interval, check_real, check_reals, check_seed, dlpack_methods, renamed_kwargs)
from . import _cutout, _mix, _ops, _policy
from . import functional as F

__all__ = ["Transform", "Compose", "MixUp", "CutMix", "SamplePairing", "Cutout", "RandomErasing", "AutoAugment",
           "RandAugment", "TrivialAugmentWide", "AugMix", "Normalize", "Equalize", "CLAHE", "SpatialDropout",
           "RandomHorizontalFlip", "RandomVerticalFlip", "RandomResizedCrop", "RandomCrop", "RandomAffine",
           "ColorJitter"]

Params = Dict[str, Any]  # what a sampler draws: named arrays with a leading batch axis
Labels = Optional[np.ndarray]
Seed = Union[int, np.random.SeedSequence, None]
# methods whose array arguments accept any CPU object with ``__dlpack__`` (in every subclass)
_ARRAY_METHODS = ("__init__", "__call__", "sample", "apply", "backward")


class Transform:
    """Base class: ``seed`` seeds the transform's own Generator (None: fresh OS entropy).

    A subclass implements :meth:`sample` (draw parameters) and :meth:`apply` (use them);
    :meth:`__call__` wires the two and keeps the parameters in ``last_params``.

    The array arguments of every subclass's methods (a user's own included) take torch tensors
    and other CPU objects with ``__dlpack__`` as NumPy views of their memory.

    Transforms pickle with their generator's state, so every process that unpickles one (each
    worker of a torch DataLoader) continues the *same* stream: reseed them per worker, with
    ``DataLoader(..., worker_init_fn=cnnkit.torch.worker_init_fn)`` or :meth:`seed`.

    Parameters
    ----------
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's own ``numpy.random.Generator`` (``self.rng``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dlpack_methods(cls, _ARRAY_METHODS)

    def __init__(self, seed: Seed = None) -> None:
        self.seed(seed)
        self.last_params: Any = None

    def seed(self, seed: Seed = None) -> None:
        """Reseed (an int, a numpy SeedSequence, or None).

        Parameters
        ----------
        seed : int, numpy.random.SeedSequence or None, default None
            The new seed; None draws fresh OS entropy.
        """
        self.rng = np.random.default_rng(check_seed("seed", seed))

    def sample(self, images: np.ndarray) -> Params:  # pragma: no cover - abstract
        """Draw the parameters of one call (implemented by each transform).

        Parameters
        ----------
        images : ndarray
            The input about to be transformed.

        Returns
        -------
        dict of str to ndarray
            Per-image parameters, leading axis N.
        """
        raise NotImplementedError

    def apply(self, images: np.ndarray, params: Params,
              labels: Labels) -> tuple[np.ndarray, Labels]:  # pragma: no cover - abstract
        """Transform ``images`` with given parameters (implemented by each transform).

        Parameters
        ----------
        images : ndarray
            The input.
        params : dict
            From :meth:`sample` or ``last_params``.
        labels : ndarray or None
            Labels, mixed by the mixing transforms, else passed through.

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The transformed images and the labels.
        """
        raise NotImplementedError

    def __call__(self, images: np.ndarray, params: Any = None,
                 labels: Labels = None) -> Union[np.ndarray, Tuple[np.ndarray, Labels]]:
        """Sample parameters (unless given), keep them in ``last_params`` and apply them.

        Parameters
        ----------
        images : ndarray
            The input (its layout and dtype: see the transform).
        params : dict, optional
            Parameters to replay (e.g. an earlier ``last_params``); None draws new ones.
        labels : ndarray, optional
            Class indices (N,) or soft labels (N, K), mixed by the mixing transforms.

        Returns
        -------
        ndarray, or tuple of (ndarray, ndarray)
            The transformed images; ``(images, labels)`` when ``labels`` is given.
        """
        if params is None:
            if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[0] == 0:
                raise ValueError(f"images: expected a non-empty batch (nothing to draw parameters for), got shape "
                                 f"{images.shape}")
            params = self.sample(images)
        self.last_params = params
        out, new_labels = self.apply(images, params, labels)
        return out if labels is None else (out, new_labels)


dlpack_methods(Transform, _ARRAY_METHODS)


class Compose(Transform):
    """Apply transforms in order. ``seed`` reseeds every child from one SeedSequence, so the whole
    pipeline is reproducible from one number; ``last_params`` is the list of the children's.

    Parameters
    ----------
    transforms : iterable of Transform
        The transforms, applied in order.
    seed : int, numpy.random.SeedSequence or None, default None
        When given, every child is reseeded from it (children keep their own seeds otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import augment
    >>> pipe = augment.Compose([augment.RandomCrop(padding=2), augment.RandomHorizontalFlip(),
    ...                         augment.Normalize()], seed=0)
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    >>> y = pipe(x)
    >>> y.shape, y.dtype
    ((4, 3, 8, 8), dtype('float32'))
    >>> np.array_equal(pipe(x, params=pipe.last_params), y)  # an exact replay
    True
    """

    def __init__(self, transforms: Iterable[Transform], seed: Seed = None) -> None:
        if isinstance(transforms, (str, bytes, Transform)) or not hasattr(transforms, "__iter__"):
            raise TypeError(f"transforms: expected a list of cnnkit.augment Transforms, got "
                            f"{type(transforms).__name__}")
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}]: expected a cnnkit.augment Transform, got {type(t).__name__}")
        super().__init__(seed)

    def seed(self, seed: Seed = None) -> None:
        """Reseed the pipeline and, when ``seed`` is not None, every child from it.

        Parameters
        ----------
        seed : int, numpy.random.SeedSequence or None, default None
            The seed; children get ``SeedSequence(seed).spawn(len(transforms))``.
        """
        super().seed(seed)
        if seed is not None:
            root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
            for t, s in zip(self.transforms, root.spawn(len(self.transforms))):
                t.seed(s)

    def __call__(self, images: np.ndarray, params: Optional[Sequence[Any]] = None,
                 labels: Labels = None) -> Union[np.ndarray, Tuple[np.ndarray, Labels]]:
        """Run every transform in order (each samples unless ``params`` are given).

        Parameters
        ----------
        images : ndarray
            The input of the first transform.
        params : list, optional
            One entry per transform (an earlier ``last_params``) to replay; None samples.
        labels : ndarray, optional
            Labels, threaded through the transforms.

        Returns
        -------
        ndarray, or tuple of (ndarray, ndarray)
            The last transform's output; ``(images, labels)`` when ``labels`` is given.
        """
        if params is not None and len(params) != len(self.transforms):
            raise ValueError(f"params: expected {len(self.transforms)} entries (one per transform), got {len(params)}")
        used = []
        for i, t in enumerate(self.transforms):
            res: Any = t(images, None if params is None else params[i], labels)
            images, labels = (res if labels is not None else (res, None))
            used.append(t.last_params)
        self.last_params = used
        return images if labels is None else (images, labels)


class _Mixing(Transform):
    def __init__(self, alpha: float = 1.0, *, mode: str = "batch", p: float = 1.0, num_classes: Optional[int] = None,
                 label_smoothing: float = 0.0, seed: Seed = None) -> None:
        self.alpha = _mix._alpha(alpha)
        self.mode = _mix._mode(mode)
        self.p = _mix._prob(p)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1, "a positive int or None")
        self.num_classes = num_classes
        self.label_smoothing = check_real("label_smoothing", label_smoothing, lo=0.0, hi=1.0, hi_open=True)
        super().__init__(seed)


class MixUp(_Mixing):
    """Mixup (Zhang et al. 2018) on float (N, C, H, W) batches; see :func:`cnnkit.augment.functional.mixup`.

    ``alpha``: Beta(alpha, alpha) for lam; ``mode``: "batch", "pair" or "elem"; ``p``: probability
    of mixing; labels: class indices (give ``num_classes``) or soft rows; ``label_smoothing`` off by
    default.

    Parameters
    ----------
    alpha : float, default 1.0
        lam ~ Beta(alpha, alpha).
    mode : {"batch", "pair", "elem"}, default "batch"
        One lam for the batch, one per pair, or one per image.
    p : float, default 1.0
        Probability of mixing (per batch, pair or image, as ``mode``).
    num_classes : int, optional
        Number of classes, needed when labels are class indices.
    label_smoothing : float, default 0.0
        Label smoothing in [0, 1) applied to the mixed labels.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: float32/float64 (N, C, H, W) batch.

        Returns
        -------
        dict of str to ndarray
            ``lam`` (N,) float64 mixing weights, ``perm`` (N,) int64 partners, ``applied`` (N,) bool.
        """
        _float_images(images)
        return _mix.sample_mixup_params(self.rng, len(images), self.alpha, mode=self.mode, p=self.p)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            A float32/float64 (N, C, H, W) batch.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Class indices (N,) or soft labels (N, K), mixed as the images (float (N, K)); None: none.

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The mixed (N, C, H, W) batch (same dtype), and the labels.
        """
        return _mix.mixup(images, labels, lam=params["lam"], perm=params["perm"], num_classes=self.num_classes,
                          label_smoothing=self.label_smoothing)


class CutMix(_Mixing):
    """CutMix (Yun et al. 2019) on float (N, C, H, W) batches; see :func:`cnnkit.augment.functional.cutmix`.
    Labels mix with the kept fraction of each image (lam corrected by the clipped box).

    Parameters
    ----------
    alpha : float, default 1.0
        lam ~ Beta(alpha, alpha).
    mode : {"batch", "pair", "elem"}, default "batch"
        One lam for the batch, one per pair, or one per image.
    p : float, default 1.0
        Probability of mixing (per batch, pair or image, as ``mode``).
    num_classes : int, optional
        Number of classes, needed when labels are class indices.
    label_smoothing : float, default 0.0
        Label smoothing in [0, 1) applied to the mixed labels.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: float32/float64 (N, C, H, W) batch.

        Returns
        -------
        dict of str to ndarray
            ``boxes`` (N, 4) int64 pasted boxes, ``lam`` (N,) float64 kept fractions, ``perm`` (N,) int64 partners, ``applied`` (N,) bool.
        """

        _float_images(images)
        return _mix.sample_cutmix_params(self.rng, np.shape(images), self.alpha, mode=self.mode, p=self.p)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            A float32/float64 (N, C, H, W) batch.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Class indices (N,) or soft labels (N, K), mixed by the kept fraction (float (N, K)); None: none.

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The (N, C, H, W) batch with the partners' boxes pasted in, and the labels.
        """
        return _mix.cutmix(images, labels, boxes=params["boxes"], perm=params["perm"], num_classes=self.num_classes,
                           label_smoothing=self.label_smoothing)


class SamplePairing(Transform):
    """SamplePairing (Inoue 2018): each image averaged with a random partner from the batch, or
    from ``pool`` (an array of images shaped like the batch's); labels are left as they are.
    ``p``: probability per image. Pair it with :class:`cnnkit.augment.SamplePairingSchedule` to
    switch it on and off by epoch (``enabled = schedule.enabled(epoch)``; skip the call when off).
    ``same_on_batch``: one coin and one pool image (or one cyclic shift of the batch) for all.

    Parameters
    ----------
    p : float, default 1.0
        Probability of pairing each image.
    pool : ndarray, optional
        Partner images shaped like the batch's images; None pairs within the batch.
    same_on_batch : bool, default False
        One coin and one partner choice for the whole batch.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, p: float = 1.0, *, pool: Optional[np.ndarray] = None, same_on_batch: bool = False,
                 seed: Seed = None) -> None:
        self.p = _mix._prob(p)
        if pool is not None:
            check_float_array("pool", pool, (2, 3, 4, 5), what="(a batch of images)")
        self.pool = pool
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: a float (N, C, H, W) batch.

        Returns
        -------
        dict of str to ndarray
            ``partners`` (N,) int64 indices into the batch (or ``pool``), ``applied`` (N,) bool.
        """
        _float_images(images, (2, 3, 4, 5))
        pool_size = None if self.pool is None else len(self.pool)
        return _mix.sample_pairing_params(self.rng, len(images), pool_size=pool_size, p=self.p,
                                          same_on_batch=self.same_on_batch)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            A float (N, C, H, W) batch.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The batch with each applied image averaged with its partner, and the labels.
        """
        return _mix.sample_pairing(images, params["partners"], pool=self.pool, applied=params["applied"]), labels


def _hw(images, layout):
    x, nhwc, _ = _cutout._images(images, layout)
    if layout is None and x.dtype == np.uint8:  # NHWC assumed, not stated: check it as the uint8 transforms do
        _check_u8(images)
    return x.shape[0], ((x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3]))


def _float_images(images, ndim=4):
    """The float batch a mixing transform takes (named ``images``, as its ``__call__`` names it)."""
    return check_float_array("images", images, ndim, what="(N, C, H, W)" if ndim == 4 else "(a batch of images)")


def _check_fill(fill, name="fill", words=()):
    """None, a number, a sequence of numbers (one per channel, checked against C when called), or one of
    ``words`` (strings such as "mean")."""
    if fill is None or (isinstance(fill, str) and fill in words):
        return fill
    if isinstance(fill, str):
        raise ValueError(f"{name}: expected a number, per-channel values{''.join(', ' + repr(w) for w in words)}, "
                         f"got {fill!r}")
    a = as_reals(name, fill, "a number or per-channel values")
    if a.ndim > 1 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a finite number or per-channel values, got {fill!r}")
    return fill


class _Fill(Transform):
    def __init__(self, fill, layout, seed, fill_name="fill"):
        self.fill = _check_fill(fill, fill_name, ("mean", "random"))
        if fill is None:
            raise TypeError(f"{fill_name}: expected a number, per-channel values, 'mean' or 'random', got None")
        self.layout = None if layout is None else check_layout(layout)
        super().__init__(seed)

    def _noise(self, images, params):
        if isinstance(self.fill, str) and self.fill == "random":
            params["noise"] = _cutout.random_fill_noise(self.rng, images, layout=self.layout)
        return params

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            uint8 (N, H, W, C) or float (N, C, H, W) images (see ``layout``).
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            A copy of the images with the boxes filled, and the labels.
        """
        _hw(images, self.layout)
        return _cutout.cutout(images, params["boxes"], self.fill, layout=self.layout,
                              noise=params.get("noise")), labels


class Cutout(_Fill):
    """Cutout (DeVries & Taylor 2017): ``num_holes`` squares of side ``size`` per image, centred
    uniformly and clipped at the border, filled with ``fill`` (number, per-channel values,
    "mean" or "random"); ``p`` per image; ``same_on_batch`` puts the same holes in every image.
    uint8 NHWC (C in {1, 3}, as every uint8 transform) or float NCHW (``layout`` to override;
    an explicit layout takes any number of channels).

    Parameters
    ----------
    size : int
        Side of each square hole, in pixels.
    num_holes : int, default 1
        Holes per image.
    fill : float, sequence of float, "mean" or "random", default 0
        Fill value(s); "mean": each image's channel means; "random": uniform noise.
    p : float, default 1.0
        Probability of cutting each image.
    layout : {"NCHW", "NHWC"}, optional
        Layout of the images; None: uint8 is NHWC (C in {1, 3}), float is NCHW.
    same_on_batch : bool, default False
        The same boxes (and coin) for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, size: int, num_holes: int = 1, fill: Any = 0, *, p: float = 1.0, same_on_batch: bool = False,
                 layout: Optional[str] = None, seed: Seed = None) -> None:
        self.size = check_int("size", size, 1, "a positive int")
        self.num_holes = check_int("num_holes", num_holes, 1, "a positive int")
        self.p = _mix._prob(p)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(fill, layout, seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 (N, H, W, C) or float (N, C, H, W) (see ``layout``).

        Returns
        -------
        dict of str to ndarray
            ``boxes`` (N, K, 4) int64 boxes (y0, x0, y1, x1) per image, ``applied`` (N,) bool, and ``noise`` (shaped like the images) for ``fill="random"``.
        """
        N, hw = _hw(images, self.layout)
        prm = _cutout.sample_cutout_params(self.rng, N, hw, self.size, self.num_holes, p=self.p,
                                           same_on_batch=self.same_on_batch)
        return self._noise(images, prm)


class RandomErasing(_Fill):
    """Random erasing with torchvision's ``RandomErasing`` semantics (p, scale, ratio; value as
    ``fill``: number, per-channel values, "mean" or "random").

    Parameters
    ----------
    p : float, default 0.5
        Probability of erasing each image.
    scale : tuple of 2 floats, default (0.02, 0.33)
        Range of the erased fraction of the area.
    ratio : tuple of 2 floats, default (0.3, 3.3)
        Range of the box's aspect ratio (log-uniform).
    value : float, sequence of float, "mean" or "random", default 0
        Fill value(s), as ``Cutout``'s ``fill``.
    layout : {"NCHW", "NHWC"}, optional
        Layout of the images; None: uint8 is NHWC (C in {1, 3}), float is NCHW.
    same_on_batch : bool, default False
        The same boxes (and coin) for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, p: float = 0.5, scale: Tuple[float, float] = (0.02, 0.33),
                 ratio: Tuple[float, float] = (0.3, 3.3), value: Any = 0, *, same_on_batch: bool = False,
                 layout: Optional[str] = None, seed: Seed = None) -> None:
        self.p = _mix._prob(p)
        self.scale = check_interval("scale", scale, lo=0.0, lo_open=True, hi=1.0)
        self.ratio = check_interval("ratio", ratio, lo=0.0, lo_open=True)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(value, layout, seed, "value")

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 (N, H, W, C) or float (N, C, H, W) (see ``layout``).

        Returns
        -------
        dict of str to ndarray
            ``boxes`` (N, 1, 4) int64 boxes (y0, x0, y1, x1) per image, ``applied`` (N,) bool, and ``noise`` (shaped like the images) for ``fill="random"``.
        """
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
    return check_choice("interpolation", interpolation, ("nearest", "bilinear"))


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
        self.fill = _check_fill(fill)
        super().__init__(seed)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The augmented uint8 images, shaped as the input, and the labels.
        """
        x, single = _u8(images)
        return _back(_ops_call(x, params, self.interpolation, self.fill), single), labels


class AutoAugment(_PolicyTransform):
    """AutoAugment (Cubuk et al. 2019) with torchvision's published policies ("imagenet",
    "cifar10", "svhn"): per image a sub-policy uniformly, each of its two ops applied with its
    probability; see :func:`cnnkit.augment.sample_autoaugment_params`. The ops run in one batched
    ``functional.apply_ops`` call. uint8 NHWC images (N, H, W, C) or one (H, W, C), C in {1, 3}.

    Parameters
    ----------
    policy : {"imagenet", "cifar10", "svhn"} or sequence of sub-policies, default "imagenet"
        The published policy, or a policy table of the same form: sub-policies of two
        ``(op, probability, magnitude_bin)`` entries (:func:`cnnkit.augment._policy.check_policy`;
        lists accepted, so a table read back from JSON works), e.g. one found by
        :func:`cnnkit.augment.search_policy`. A malformed table raises ValueError naming the
        entry (``policy[3][1]: ...``). The attribute ``policy`` keeps the name, or the validated
        table as nested tuples.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling of the geometric ops.
    fill : float or sequence of float, optional
        Fill of the area the geometric ops uncover (None: 0).
    same_on_batch : bool, default False
        The same draw for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import augment
    >>> table = [[("Rotate", 0.8, 3), ("Equalize", 0.5, None)], [("Solarize", 0.3, 6), ("ShearX", 0.6, 2)]]
    >>> t = augment.AutoAugment(policy=augment.policy_from_json(augment.policy_to_json(table)), seed=0)
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    >>> t(x).shape, t.last_params["policy"].tolist()  # the sub-policy drawn for each image
    ((4, 8, 8, 1), [1, 1, 1, 0])
    """

    def __init__(self, policy: Union[str, Sequence[Any]] = "imagenet", interpolation: str = "nearest",
                 fill: Any = None, *, same_on_batch: bool = False, seed: Seed = None) -> None:
        self.policy: Any = (policy if isinstance(policy, str) and policy in _policy.POLICIES
                            else _policy._as_table(policy))
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``ops`` (N, K) int64 op codes, ``magnitudes`` (N, K) float64, ``policy`` (N,) int64 sub-policy indices.
        """
        x, _ = _u8(images)
        return _policy.sample_autoaugment_params(self.rng, x.shape[0], x.shape[1:3], self.policy,
                                                 same_on_batch=self.same_on_batch)


class RandAugment(_PolicyTransform):
    """RandAugment (Cubuk et al. 2020), torchvision semantics: ``num_ops`` ops uniformly from the
    14-op space at bin ``magnitude`` of ``num_magnitude_bins``; see
    :func:`cnnkit.augment.sample_randaugment_params`.

    Parameters
    ----------
    num_ops : int, default 2
        Ops applied in sequence to each image.
    magnitude : int, default 9
        The magnitude bin, in [0, num_magnitude_bins).
    num_magnitude_bins : int, default 31
        Number of magnitude bins.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling of the geometric ops.
    fill : float or sequence of float, optional
        Fill of the area the geometric ops uncover (None: 0).
    same_on_batch : bool, default False
        The same draw for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import augment
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    >>> t = augment.RandAugment(num_ops=2, magnitude=9, seed=0)
    >>> out = t(x)
    >>> out.shape, out.dtype
    ((4, 8, 8, 3), dtype('uint8'))
    >>> t.last_params["ops"].shape  # two op codes per image
    (4, 2)
    >>> np.array_equal(t(x, params=t.last_params), out)
    True
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: str = "nearest", fill: Any = None, *, same_on_batch: bool = False,
                 seed: Seed = None) -> None:
        # validate once, here, with the sampler's own checks
        _policy.sample_randaugment_params(np.random.default_rng(0), 1, (1, 1), num_ops, magnitude, num_magnitude_bins)
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``ops`` (N, K) int64 op codes, ``magnitudes`` (N, K) float64.
        """
        x, _ = _u8(images)
        return _policy.sample_randaugment_params(self.rng, x.shape[0], x.shape[1:3], self.num_ops, self.magnitude,
                                                 self.num_magnitude_bins, same_on_batch=self.same_on_batch)


class TrivialAugmentWide(_PolicyTransform):
    """TrivialAugment (Mueller & Hutter 2021), torchvision's ``TrivialAugmentWide``: one op and one
    bin uniformly per image; see :func:`cnnkit.augment.sample_trivialaugment_params`.

    Parameters
    ----------
    num_magnitude_bins : int, default 31
        Number of magnitude bins.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling of the geometric ops.
    fill : float or sequence of float, optional
        Fill of the area the geometric ops uncover (None: 0).
    same_on_batch : bool, default False
        The same draw for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, num_magnitude_bins: int = 31, interpolation: str = "nearest", fill: Any = None, *,
                 same_on_batch: bool = False, seed: Seed = None) -> None:
        self.num_magnitude_bins = _policy._check_bins(num_magnitude_bins)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(interpolation, fill, seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``ops`` (N, 1) int64 op codes, ``magnitudes`` (N, 1) float64.
        """
        x, _ = _u8(images)
        return _policy.sample_trivialaugment_params(self.rng, x.shape[0], self.num_magnitude_bins,
                                                    same_on_batch=self.same_on_batch)


class AugMix(Transform):
    """AugMix (Hendrycks et al. 2020), torchvision semantics; see
    :func:`cnnkit.augment.sample_augmix_params` and :func:`cnnkit.augment.augmix`. The default
    interpolation is bilinear, as torchvision's ``AugMix``.

    Parameters
    ----------
    severity : int, default 3
        Magnitude bin of the ops, in [1, 10].
    mixture_width : int, default 3
        Number of augmentation chains mixed.
    chain_depth : int, default -1
        Ops per chain; <= 0: uniform in 1..3 per chain.
    alpha : float, default 1.0
        Concentration of the Dirichlet chain weights and of the Beta mixing weight.
    all_ops : bool, default True
        Include Brightness, Color, Contrast and Sharpness (13 ops; False: 9), as torchvision.
    interpolation : {"nearest", "bilinear"}, default "bilinear"
        Resampling of the geometric ops.
    fill : float or sequence of float, optional
        Fill of the area the geometric ops uncover (None: 0).
    same_on_batch : bool, default False
        The same draw for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, severity: int = 3, mixture_width: int = 3, chain_depth: int = -1, alpha: float = 1.0,
                 all_ops: bool = True, interpolation: str = "bilinear", fill: Any = None, *,
                 same_on_batch: bool = False, seed: Seed = None) -> None:
        _policy.sample_augmix_params(np.random.default_rng(0), 1, (1, 1), severity, mixture_width, chain_depth,
                                     alpha, all_ops)
        self.severity, self.mixture_width, self.chain_depth = severity, mixture_width, chain_depth
        self.alpha, self.all_ops = _mix._alpha(alpha), check_bool("all_ops", all_ops)
        self.interpolation = _interp(interpolation)
        self.fill = _check_fill(fill)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``ops`` and ``magnitudes`` (N, width, depth) int64/float64, ``depth`` (N, width) int64 chain lengths, ``weights`` (N, width) and ``orig_weight`` (N,) float32.
        """
        x, _ = _u8(images)
        return _policy.sample_augmix_params(self.rng, x.shape[0], x.shape[1:3], self.severity, self.mixture_width,
                                            self.chain_depth, self.alpha, self.all_ops,
                                            same_on_batch=self.same_on_batch)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The augmented uint8 images, shaped as the input, and the labels.
        """
        _check_u8(images)
        return _policy.augmix(images, params, interpolation=self.interpolation, fill=self.fill), labels


class Normalize(Transform):
    """uint8 NHWC images to float32 NCHW network inputs, ``(x/255 - mean[c]) / std[c]``
    (torchvision's ``ToTensor`` + ``Normalize``; ImageNet statistics by default) via
    :func:`cnnkit.augment.functional.to_float_normalize`. No randomness; ``last_params`` is {}.

    Parameters
    ----------
    mean, std : sequence of float, default ImageNet's
        Per-channel mean and (non-zero) standard deviation, in units of the [0, 1] scale.
    seed : int, numpy.random.SeedSequence or None, default None
        Unused (no randomness); accepted as every transform's.
    """

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 *, seed: Seed = None) -> None:
        self.mean, self.std = check_reals("mean", mean), check_reals("std", std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"std: expected {len(self.mean)} values (as many as mean), got {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std: expected non-zero values, got {std!r}")
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            Empty: there is nothing to draw.
        """
        _check_u8(images)
        return {}

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            float32 (N, C, H, W) (or (C, H, W)) network inputs, and the labels.
        """
        _check_u8(images)
        return F.to_float_normalize(images, self.mean, self.std), labels


class _Coin(Transform):
    """A deterministic op applied to each image with probability p (all images by default)."""

    def __init__(self, p: float, same_on_batch: bool, seed: Seed) -> None:
        self.p = _mix._prob(p)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def _op(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - each subclass defines it
        raise NotImplementedError

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``applied`` (N,) bool: which images the op is applied to.
        """
        x, _ = _u8(images)
        return {"applied": _applied(self.rng, x.shape[0], self.p, self.same_on_batch)}

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The uint8 images, the op applied where ``applied``, and the labels.
        """
        x, single = _u8(images)
        return _back(_on_subset(x, params["applied"], self._op), single), labels


class Equalize(_Coin):
    """Histogram equalization (:func:`cnnkit.augment.functional.equalize`, ``mode`` "pil" or "cv")
    of each image with probability ``p`` (1: every image; torchvision's ``RandomEqualize`` is p=0.5).

    Parameters
    ----------
    mode : {"pil", "cv"}, default "pil"
        Pillow's ``ImageOps.equalize`` or OpenCV's ``equalizeHist`` (per channel).
    p : float, default 1.0
        Probability of applying it to each image.
    same_on_batch : bool, default False
        One coin for the whole batch.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, mode: str = "pil", *, p: float = 1.0, same_on_batch: bool = False, seed: Seed = None) -> None:
        self.mode = check_choice("mode", mode, ("pil", "cv"))
        super().__init__(p, same_on_batch, seed)

    def _op(self, x: np.ndarray) -> np.ndarray:
        return F.equalize(x, self.mode)


class CLAHE(_Coin):
    """Contrast-limited adaptive histogram equalization (OpenCV's CLAHE on every channel, see
    :func:`cnnkit.augment.functional.clahe`) of each image with probability ``p`` (1 by default).
    ``tile_grid_size`` is (tiles across, tiles down), as OpenCV.

    Parameters
    ----------
    clip_limit : float, default 4.0
        Contrast limit (>= 0), as OpenCV's ``clipLimit``.
    tile_grid_size : int or tuple of 2 ints, default (8, 8)
        (tiles across, tiles down).
    p : float, default 1.0
        Probability of applying it to each image.
    same_on_batch : bool, default False
        One coin for the whole batch.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, clip_limit: float = 4.0, tile_grid_size: Union[int, Tuple[int, int]] = (8, 8), *,
                 p: float = 1.0, same_on_batch: bool = False, seed: Seed = None) -> None:
        self.clip_limit = check_real("clip_limit", clip_limit, lo=0.0)
        self.tile_grid_size = check_pair("tile_grid_size", tile_grid_size, 1, scalar_ok=False)
        super().__init__(p, same_on_batch, seed)

    def _op(self, x: np.ndarray) -> np.ndarray:
        return F.clahe(x, self.clip_limit, self.tile_grid_size)


class RandomHorizontalFlip(_Coin):
    """Flip each image left-right with probability ``p`` (torchvision ``RandomHorizontalFlip``).

    Parameters
    ----------
    p : float, default 0.5
        Probability of applying it to each image.
    same_on_batch : bool, default False
        One coin for the whole batch.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, p: float = 0.5, *, same_on_batch: bool = False, seed: Seed = None) -> None:
        super().__init__(p, same_on_batch, seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``applied`` (N,) bool: which images are flipped.
        """
        x, _ = _u8(images)
        N = x.shape[0]
        if self.same_on_batch:
            return {"applied": np.repeat(F.sample_flip_params(self.rng, 1, self.p)["applied"], N)}
        return F.sample_flip_params(self.rng, N, self.p)

    def _op(self, x: np.ndarray) -> np.ndarray:
        return F.hflip(x)


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flip each image upside down with probability ``p`` (torchvision ``RandomVerticalFlip``).

    Parameters
    ----------
    p : float, default 0.5
        Probability of applying it to each image.
    same_on_batch : bool, default False
        One coin for the whole batch.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def _op(self, x: np.ndarray) -> np.ndarray:
        return F.vflip(x)


class SpatialDropout(Transform):
    """Drop whole channels of float feature maps (``torch.nn.Dropout2d``): each (image, channel)
    zeroed with probability ``p``, survivors scaled by ``1/(1-p)``; see
    :func:`cnnkit.augment.functional.spatial_dropout`. Input: float32/float64 (N, C, H, W) or one
    (C, H, W) map (``layout="NHWC"`` for channels last). ``last_params = {"scale": (N, C)}``;
    :meth:`backward` scales a gradient with it. ``training=False``: the identity.

    Parameters
    ----------
    p : float, default 0.5
        Probability of zeroing each channel of each image.
    training : bool, default True
        False: the identity (every scale 1).
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of the feature maps.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, p: float = 0.5, *, training: bool = True, layout: str = "NCHW", seed: Seed = None) -> None:
        self.p = _mix._prob(p)
        self.training, self.layout = check_bool("training", training), check_layout(layout)
        super().__init__(seed)

    def _batch(self, x: np.ndarray, name: str = "images") -> tuple[np.ndarray, bool]:
        check_float_array(name, x, (3, 4), what=f"(a 4-D batch or one 3-D map, {self.layout})")
        return (x[None], True) if x.ndim == 3 else (x, False)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: float32/float64 (N, C, H, W) or one (C, H, W) map (channels last with ``layout="NHWC"``).

        Returns
        -------
        dict of str to ndarray
            ``scale`` (N, C) float64: 0 for a dropped channel, ``1/(1-p)`` for a kept one.
        """
        x, _ = self._batch(images)
        N, C = (x.shape[0], x.shape[1]) if self.layout == "NCHW" else (x.shape[0], x.shape[-1])
        # the same draw functional.spatial_dropout makes, on a 1x1 stand-in of the maps
        shape = (N, C, 1, 1) if self.layout == "NCHW" else (N, 1, 1, C)
        _, scale = F.spatial_dropout(np.zeros(shape, x.dtype), self.p, self.rng, self.training, layout=self.layout)
        return {"scale": scale}

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Float feature maps (N, C, H, W) or (C, H, W) (see ``layout``).
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The maps times their channel's scale (same shape and dtype), and the labels.
        """
        x, single = self._batch(images)
        # y = x * scale per channel: the same multiply as the forward function's
        y = F.spatial_dropout_backward(x, np.asarray(params["scale"]), layout=self.layout)
        return _back(y, single), labels

    @renamed_kwargs(grad_out="grad_output")
    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """The gradient through the last call: ``grad_output`` times the same per-channel scale.

        Parameters
        ----------
        grad_output : ndarray
            Gradient of the loss with respect to the last call's output (its shape and layout).

        Returns
        -------
        ndarray
            Gradient with respect to the last call's input, same shape and dtype.

        Raises
        ------
        ValueError
            If the transform has not been called yet.
        """
        if self.last_params is None:
            raise ValueError("grad_output: expected a forward call first (to take the dropout mask from), got none")
        g, single = self._batch(grad_output, "grad_output")
        return _back(F.spatial_dropout_backward(g, self.last_params["scale"], layout=self.layout), single)


class RandomResizedCrop(Transform):
    """torchvision ``RandomResizedCrop``: a box of ``scale`` of the area and aspect ``ratio``
    (log-uniform; 10 tries, then the centre crop), resized to ``size`` bilinearly (antialiased
    by default); see :func:`cnnkit.augment.functional.resized_crop`.

    Parameters
    ----------
    size : int or tuple of 2 ints
        Output (height, width); an int for a square.
    scale : tuple of 2 floats, default (0.08, 1.0)
        Range of the crop's fraction of the image area.
    ratio : tuple of 2 floats, default (3/4, 4/3)
        Range of the crop's aspect ratio (log-uniform).
    antialias : bool, default True
        Antialias when downscaling (as torchvision's default).
    same_on_batch : bool, default False
        The same box for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), antialias: bool = True, *,
                 same_on_batch: bool = False, seed: Seed = None) -> None:
        self.size = _ops._size2(size)
        self.scale = _policy._range("scale", scale, sym_ok=False, lo_bound=0.0)
        self.ratio = _policy._range("ratio", ratio, sym_ok=False, lo_bound=0.0)
        self.antialias = check_bool("antialias", antialias)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``boxes`` (N, 4) int64 crop boxes (top, left, height, width).
        """
        x, _ = _u8(images)
        N, hw = x.shape[0], x.shape[1:3]
        if self.same_on_batch:
            one = F.sample_resized_crop_params(self.rng, 1, hw, self.scale, self.ratio)
            return {k: np.repeat(v, N, axis=0) for k, v in one.items()}
        return F.sample_resized_crop_params(self.rng, N, hw, self.scale, self.ratio)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            uint8 crops resized to ``size`` (N, h, w, C) (or (h, w, C)), and the labels.
        """
        x, single = _u8(images)
        return _back(F.resized_crop(x, params["boxes"], self.size, antialias=self.antialias), single), labels


class RandomCrop(Transform):
    """Pad by ``padding`` on every side and crop back to the input's size at a uniform offset
    (torchvision ``RandomCrop(size=input size, padding)``, the CIFAR recipe); ``padding_mode``
    "constant" (with ``fill``), "edge", "reflect" or "symmetric"; see :func:`cnnkit.augment.functional.pad_crop`.

    Parameters
    ----------
    padding : int, default 4
        Padding on every side (>= 0).
    fill : float or sequence of float, default 0
        Fill of the "constant" padding.
    padding_mode : {"constant", "edge", "reflect", "symmetric"}, default "constant"
        How the border is padded.
    same_on_batch : bool, default False
        The same offset for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, padding: int = 4, fill: Any = 0, padding_mode: str = "constant", *,
                 same_on_batch: bool = False, seed: Seed = None) -> None:
        self.padding, self.fill = _ops._padding(padding), _check_fill(fill)
        self.padding_mode = _ops._padding_mode(padding_mode)
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``offsets`` (N, 2) int64: the crop's (row, column) in the padded image.
        """
        x, _ = _u8(images)
        N = x.shape[0]
        if self.same_on_batch:
            return {"offsets": np.repeat(F.sample_pad_crop_params(self.rng, 1, self.padding)["offsets"], N, axis=0)}
        return F.sample_pad_crop_params(self.rng, N, self.padding)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The uint8 crops, shaped as the input, and the labels.
        """
        x, single = _u8(images)
        out = F.pad_crop(x, params["offsets"], self.padding, fill=self.fill, padding_mode=self.padding_mode)
        return _back(out, single), labels


class RandomAffine(Transform):
    """torchvision ``RandomAffine``: per image ``angle ~ U(degrees)``, translation, scale and shear
    drawn as ``RandomAffine.get_params`` does (see :func:`cnnkit.augment.sample_affine_params`),
    applied by one :func:`cnnkit.augment.functional.affine` call. ``fill`` defaults to 0 as
    torchvision's (which matters for bilinear: the border is blended towards it).

    Parameters
    ----------
    degrees : float or tuple of 2 floats
        Rotation range in degrees; a number d means (-d, d).
    translate : tuple of 2 floats, optional
        Largest translation as fractions of the width and height.
    scale : tuple of 2 floats, optional
        Scale range.
    shear : float or sequence of 2 or 4 floats, optional
        Shear range(s) in degrees, as torchvision's.
    interpolation : {"nearest", "bilinear"}, default "nearest"
        Resampling.
    fill : float or sequence of float, default 0
        Fill of the uncovered area.
    center : tuple of 2 floats, optional
        Centre of the transform (x, y); None: the image centre.
    same_on_batch : bool, default False
        The same draw for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, degrees: Any, translate: Optional[Tuple[float, float]] = None, scale: Optional[Tuple[float, float]] = None,
                 shear: Any = None, interpolation: str = "nearest", fill: Any = 0,
                 center: Optional[Tuple[float, float]] = None, *, same_on_batch: bool = False, seed: Seed = None) -> None:
        _policy._affine_ranges(degrees, translate, scale, shear)
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.interpolation = _interp(interpolation)
        self.fill = _check_fill(fill)
        if center is not None:
            c = check_reals("center", center)
            if len(c) != 2:
                raise ValueError(f"center: expected (x, y) pixels, got {center!r}")
        self.center = center
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``angle`` (N,) float64 degrees, ``translate`` (N, 2) int64 pixels, ``scale`` (N,) float64, ``shear`` (N, 2) float64 degrees.
        """
        x, _ = _u8(images)
        return _policy.sample_affine_params(self.rng, x.shape[0], x.shape[1:3], self.degrees, self.translate,
                                            self.scale, self.shear, same_on_batch=self.same_on_batch)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The transformed uint8 images, shaped as the input, and the labels.
        """
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

    Parameters
    ----------
    brightness, contrast, saturation : float or tuple of 2 floats, default 0
        Jitter strength v (factor in ``[max(0, 1 - v), 1 + v]``) or a ``(min, max)`` range; 0: off.
    same_on_batch : bool, default False
        The same factors for every image.
    seed : int, numpy.random.SeedSequence or None, default None
        Seed of the transform's Generator.
    """

    def __init__(self, brightness: Any = 0, contrast: Any = 0, saturation: Any = 0, *, same_on_batch: bool = False,
                 seed: Seed = None) -> None:
        _policy._jitter_ranges(brightness, contrast, saturation)
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.same_on_batch = check_bool("same_on_batch", same_on_batch)
        super().__init__(seed)

    def sample(self, images: np.ndarray) -> Params:
        """Draw the parameters of one call from the transform's Generator.

        Parameters
        ----------
        images : ndarray
            The input about to be transformed: uint8 images, a batch (N, H, W, C) or one (H, W, C) image, C in {1, 3}.

        Returns
        -------
        dict of str to ndarray
            ``brightness``, ``contrast``, ``saturation``: (N,) float64 factors (only those switched on).
        """
        x, _ = _u8(images)
        return _policy.sample_color_jitter_params(self.rng, x.shape[0], self.brightness, self.contrast,
                                                  self.saturation, same_on_batch=self.same_on_batch)

    def apply(self, images: np.ndarray, params: Params, labels: Labels) -> tuple[np.ndarray, Labels]:
        """Transform ``images`` with the given parameters (deterministic, no randomness).

        Parameters
        ----------
        images : ndarray
            Uint8 images, a batch (n, h, w, c) or one (h, w, c) image, c in {1, 3}.
        params : dict
            From :meth:`sample` (or ``last_params``, to replay a call).
        labels : ndarray or None
            Passed through unchanged (returned as given).

        Returns
        -------
        tuple of (ndarray, ndarray or None)
            The adjusted uint8 images, shaped as the input, and the labels.
        """
        x, single = _u8(images)
        out = x
        for name, fn in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                         ("saturation", F.adjust_saturation)):
            if name in params:
                out = fn(out, np.asarray(params[name], dtype=np.float64))
        return _back(out.copy() if out is x else out, single), labels
