"""Datasets held as NumPy arrays: :class:`ArrayDataset`, the bundled loaders (:func:`load_digits`,
:func:`load_faces`), the synthetic :func:`make_shapes` with ground-truth boxes and masks, and a
stratified :func:`train_test_split`.

Network inputs are float32 NCHW images in [0, 1] with int64 class labels. ``as_uint8=True``
gives uint8 NHWC images instead, the input format of :mod:`cnnkit.augment` (end such a pipeline
with :class:`cnnkit.augment.Normalize` to get float32 NCHW batches back).
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_int, check_real, check_seed, is_real

__all__ = ["ArrayDataset", "load_digits", "load_faces", "make_shapes", "train_test_split", "SHAPES"]

SHAPES = ("square", "circle", "triangle", "cross")
"""The shape classes :func:`make_shapes` can draw."""

_EXTRA_PREFIX = "extra_"

# What the ``seed`` arguments accept.
Seed = Union[int, np.random.SeedSequence, np.random.Generator, None]


def _rng(seed: Seed, name: str = "seed") -> np.random.Generator:
    """A numpy Generator from None, a non-negative int, a SeedSequence or a Generator (used as is)."""
    return np.random.default_rng(check_seed(name, seed))


# ---- ArrayDataset ----------------------------------------------------------------------------------

def _check_images(images):
    x = np.asarray(images)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"images: expected a numeric array (uint8 or float images), got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"images: expected an array with a leading sample axis, e.g. (N, C, H, W), "
                         f"got shape {x.shape}")
    return x


def _check_labels(labels, n):
    y = np.asarray(labels)
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            raise ValueError(f"labels: expected integer class indices of shape ({n},), got shape {y.shape}")
        if y.size and y.min() < 0:
            raise ValueError(f"labels: expected class indices >= 0, got minimum {int(y.min())}")
        y = y.astype(np.int64, copy=False)
    elif y.dtype.kind == "f":
        if y.ndim != 2:
            raise TypeError(f"labels: expected float labels as soft-label rows of shape ({n}, num_classes), got "
                            f"shape {y.shape}; convert class indices with labels.astype(np.int64)")
    else:
        raise TypeError(f"labels: expected integer class indices or float soft-label rows, got dtype {y.dtype}")
    if len(y) != n:
        raise ValueError(f"labels: expected {n} labels (one per image), got {len(y)}")
    return y


@accepts_dlpack
class ArrayDataset:
    """A labelled dataset held in two arrays (plus optional per-sample extras).

    Parameters
    ----------
    images : ndarray, (N, ...)
        Any numeric array with the sample axis first: float32 (N, C, H, W) network inputs, or
        uint8 (N, H, W, C) for :mod:`cnnkit.augment`. Kept as given (a reference, not a copy).
    labels : ndarray, (N,) integers >= 0, or (N, K) float soft-label rows
        Integer labels are stored as int64 (a copy only when the dtype differs).
    classes : sequence of str, optional
        Class names; ``classes[k]`` names label ``k``. Must cover every label.
    extras : dict of str -> ndarray, optional
        Per-sample arrays with N rows (e.g. ``boxes``, ``masks``), readable as attributes
        (``ds.boxes``) and carried along by :meth:`subset`, :func:`train_test_split` and
        :meth:`save_npz`.

    Attributes
    ----------
    images, labels, classes : as given (``classes`` a tuple of str, or None)
    num_classes : int

    Notes
    -----
    ``ds[i]`` is NumPy indexing of both arrays: an int gives one ``(image, label)`` pair; a slice,
    an index array or a boolean mask gives an ``(images, labels)`` batch (a slice is a view, an
    index array a copy).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.data import ArrayDataset
    >>> ds = ArrayDataset(np.zeros((10, 1, 8, 8), np.float32), np.arange(10) % 2, classes=("even", "odd"))
    >>> x, y = ds[[0, 3, 5]]
    >>> x.shape, y.tolist(), len(ds)
    ((3, 1, 8, 8), [0, 1, 1], 10)
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, classes: Optional[Sequence[str]] = None,
                 extras: Optional[Mapping[str, np.ndarray]] = None) -> None:
        x = _check_images(images)
        y = _check_labels(labels, len(x))
        if classes is not None:
            names = None if isinstance(classes, str) or not hasattr(classes, "__iter__") else tuple(classes)
            if names is None or not all(isinstance(c, (str, np.str_)) for c in names):
                raise TypeError(f"classes: expected a sequence of class names (str), got {classes!r}")
            classes = tuple(str(c) for c in names)
            if y.ndim == 1 and y.size and int(y.max()) >= len(classes):
                raise ValueError(f"classes: expected at least max(labels) + 1 = {int(y.max()) + 1} names, "
                                 f"got {len(classes)}")
            if y.ndim == 2 and y.shape[1] != len(classes):
                raise ValueError(f"classes: expected {y.shape[1]} names (one per soft-label column), "
                                 f"got {len(classes)}")
        self.images = x
        self.labels = y
        self.classes = classes
        self._extras = {}
        for name, value in ({} if extras is None else dict(extras)).items():
            if not isinstance(name, str) or not name.isidentifier() or hasattr(self, name):
                raise ValueError(f"extras: expected identifier names not already attributes of ArrayDataset, "
                                 f"got {name!r}")
            a = np.asarray(value)
            if a.ndim < 1 or len(a) != len(x):
                raise ValueError(f"extras: expected {len(x)} rows in {name!r} (one per image), got shape {a.shape}")
            self._extras[name] = a

    def __getattr__(self, name: str) -> np.ndarray:
        extras = self.__dict__.get("_extras")
        if extras is not None and name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def extras(self) -> dict[str, np.ndarray]:
        """The per-sample extra arrays (a new dict; the arrays are shared)."""
        return dict(self._extras)

    @property
    def num_classes(self) -> int:
        """``len(classes)`` when named, else the soft-label width or ``max(labels) + 1``."""
        if self.classes is not None:
            return len(self.classes)
        if self.labels.ndim == 2:
            return self.labels.shape[1]
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> Tuple[Any, Any]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v.shape}" for k, v in self._extras.items())
        return (f"ArrayDataset(images={self.images.shape} {self.images.dtype}, labels={self.labels.shape} "
                f"{self.labels.dtype}, classes={self.classes!r}{extra})")

    def subset(self, indices: Any) -> ArrayDataset:
        """The samples at ``indices`` (ints, a boolean mask or a slice) as a new ArrayDataset,
        with the same classes and the extras' matching rows.

        Parameters
        ----------
        indices : int array, bool mask or slice
            NumPy index of the samples to keep (a slice gives views, an index array copies).

        Returns
        -------
        ArrayDataset
            The selected samples, their labels and extras, the same classes.
        """
        return ArrayDataset(self.images[indices], self.labels[indices], classes=self.classes,
                            extras={k: v[indices] for k, v in self._extras.items()})

    def save_npz(self, path: Union[str, os.PathLike], *, compressed: bool = False) -> None:
        """Write ``images``, ``labels``, ``classes`` (when named) and each extra as
        ``extra_<name>`` to an ``.npz`` file (:func:`numpy.savez`; ``compressed=True`` for
        :func:`numpy.savez_compressed`). No pickling: :meth:`from_npz` reads it back.

        Parameters
        ----------
        path : str or os.PathLike
            The file (NumPy appends ``.npz`` when it lacks the suffix).
        compressed : bool, default False
            Compress the arrays.
        """
        arrays = {"images": self.images, "labels": self.labels}
        if self.classes is not None:
            arrays["classes"] = np.asarray(self.classes, dtype=str)
        for k, v in self._extras.items():
            arrays[_EXTRA_PREFIX + k] = v
        (np.savez_compressed if check_bool("compressed", compressed) else np.savez)(path, **arrays)

    @classmethod
    def from_npz(cls, path: Union[str, os.PathLike], images_key: str = "images",
                 labels_key: str = "labels") -> ArrayDataset:
        """Load from an ``.npz`` file (``allow_pickle=False``): images and labels from the named
        keys, class names from ``classes`` if present, extras from ``extra_<name>`` keys; other
        keys are ignored.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file.
        images_key, labels_key : str, default "images" and "labels"
            The keys holding the images and the labels.

        Returns
        -------
        ArrayDataset
            The arrays as stored (the labels checked as in the constructor).

        Raises
        ------
        ValueError
            If a named key is not in the file.

        Examples
        --------
        >>> import os, tempfile
        >>> from cnnkit.data import make_shapes
        >>> ds = make_shapes(8, size=16, seed=0)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ds.save_npz(os.path.join(tmp, "shapes.npz"))
        ...     back = ArrayDataset.from_npz(os.path.join(tmp, "shapes.npz"))
        >>> back.images.shape, back.classes == ds.classes, sorted(back.extras)
        ((8, 1, 16, 16), True, ['boxes', 'masks'])

        A file written by another tool names its own keys:

        >>> mnist = ArrayDataset.from_npz("mnist.npz", images_key="x_train", labels_key="y_train")  # doctest: +SKIP
        """
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            for arg, key in (("images_key", images_key), ("labels_key", labels_key)):
                if key not in keys:
                    raise ValueError(f"{arg}: {key!r} is not in {os.fspath(path)!r}, which holds {keys}")
            classes = f["classes"].tolist() if "classes" in keys else None
            extras = {k[len(_EXTRA_PREFIX):]: f[k] for k in keys
                      if k.startswith(_EXTRA_PREFIX) and k not in (images_key, labels_key)}
            return cls(f[images_key], f[labels_key], classes=classes, extras=extras)


# ---- splitting ---------------------------------------------------------------------------------------

def _round_half_up(v):
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def train_test_split(dataset: ArrayDataset, test_size: Union[float, int] = 0.25, *, stratify: bool = True,
                     seed: Seed = 0) -> Tuple[ArrayDataset, ArrayDataset]:
    """Split a dataset into train and test subsets, per class in the same proportion.

    With ``stratify=True`` each class's samples are shuffled and ``round(f * n_c)`` of them go
    to the test set, clipped to ``[1, n_c - 1]`` so that every class with at least two samples
    appears on both sides (a class with one sample goes to train). The total is therefore
    ``f * N`` only up to rounding per class. With ``stratify=False``, ``round(f * N)`` samples
    (clipped to ``[1, N - 1]``) are drawn uniformly. Soft labels are stratified by their argmax.

    Parameters
    ----------
    dataset : ArrayDataset, N >= 2 samples
        The dataset to split.
    test_size : float in (0, 1) or int in [1, N - 1], default 0.25
        The test fraction f, or a count (f = test_size / N).
    stratify : bool, default True
        Split each class separately (above).
    seed : int, SeedSequence, Generator or None
        Same seed, same split.

    Returns
    -------
    (train, test) : ArrayDataset, ArrayDataset
        Disjoint, together every sample once, each in the dataset's original order, with the
        dataset's classes and extras.

    Examples
    --------
    >>> from cnnkit.data import load_digits, train_test_split
    >>> train, test = train_test_split(load_digits(), test_size=0.2, seed=0)
    >>> len(train) + len(test)
    1797
    """
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(f"dataset: expected a cnnkit.data.ArrayDataset, got {type(dataset).__name__}")
    N = len(dataset)
    if N < 2:
        raise ValueError(f"dataset: expected at least 2 samples to split, got {N}")
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, (bool, np.bool_)):
        frac = check_int("test_size", test_size, 1, f"a fraction in (0, 1) or a count in [1, {N - 1}]") / N
        if test_size > N - 1:
            raise ValueError(f"test_size: expected a fraction in (0, 1) or a count in [1, {N - 1}], got {test_size}")
    elif is_real(test_size):
        frac = check_real("test_size", test_size, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    else:
        raise TypeError(f"test_size: expected a fraction in (0, 1) or a count in [1, {N - 1}], got "
                        f"{type(test_size).__name__} {test_size!r}")
    stratify = check_bool("stratify", stratify)
    rng = _rng(seed)
    if stratify:
        y = dataset.labels if dataset.labels.ndim == 1 else np.argmax(dataset.labels, axis=1)
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    else:
        groups = [np.arange(N)]
    test = np.zeros(N, dtype=bool)
    for idx in groups:
        n_c = len(idx)
        if n_c < 2:
            continue
        k = int(np.clip(_round_half_up(frac * n_c), 1, n_c - 1))
        test[rng.permutation(idx)[:k]] = True
    return dataset.subset(np.flatnonzero(~test)), dataset.subset(np.flatnonzero(test))


# ---- bundled datasets --------------------------------------------------------------------------------

def _resize_u8(x, size):
    """uint8 (N, H, W, C) to (N, size, size, C): bilinear over the full image (align_corners=False,
    antialiased when shrinking), cnnkit.augment.functional.resized_crop."""
    N, H, W, _ = x.shape
    if (H, W) == (size, size):
        return x
    from ..augment.functional import resized_crop
    return resized_crop(x, np.tile(np.array([0, 0, H, W], dtype=np.int64), (N, 1)), size, antialias=True)


def _u8_to_float(x):
    """uint8 (N, H, W, C) to float32 (N, C, H, W) x / 255, C-contiguous."""
    out = np.empty((x.shape[0], x.shape[3], x.shape[1], x.shape[2]), dtype=np.float32)
    np.divide(x.transpose(0, 3, 1, 2), np.float32(255), out=out)
    return out


def _finish(raw, scale, labels, classes, native, size, as_uint8):
    """Images from ``raw`` (N, H, W) float64 with values in [0, scale]."""
    if size == native and not as_uint8:
        images = (raw / scale).astype(np.float32)[:, None]
    else:
        u8 = np.rint(raw * (255.0 / scale)).astype(np.uint8)[..., None]
        u8 = _resize_u8(u8, size)
        images = u8 if as_uint8 else _u8_to_float(u8)
    return ArrayDataset(np.ascontiguousarray(images), labels, classes=classes)


def load_digits(*, size: int = 8, as_uint8: bool = False) -> ArrayDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, ten classes "0".."9").

    The stored pixel values are integers 0..16. At ``size=8`` the float images are exactly
    ``value / 16``. Other sizes are resized from the uint8 image ``round(value * 255 / 16)`` with
    bilinear interpolation over the whole image (align_corners=False, antialiased when
    shrinking; :func:`cnnkit.augment.functional.resized_crop`), for integer factors too, so
    strokes stay smooth rather than blocky; the float result is then ``uint8 / 255``.

    Parameters
    ----------
    size : int >= 1
        Output height and width.
    as_uint8 : bool
        Return uint8 NHWC images in 0..255 (the input format of :mod:`cnnkit.augment`).

    Returns
    -------
    ArrayDataset
        ``images``: float32 (1797, 1, size, size) in [0, 1], or uint8 (1797, size, size, 1);
        ``labels``: int64 (1797,), the digit; ``classes``: ("0", ..., "9").

    Examples
    --------
    >>> from cnnkit.data import load_digits
    >>> ds = load_digits(size=16)
    >>> ds.images.shape, ds.images.dtype, ds.labels.dtype
    ((1797, 1, 16, 16), dtype('float32'), dtype('int64'))
    """
    size = check_int("size", size, 1, "a positive int")
    as_uint8 = check_bool("as_uint8", as_uint8)
    from sklearn.datasets import load_digits as _sk_load_digits
    bunch = _sk_load_digits()
    classes = tuple(str(t) for t in bunch.target_names)
    return _finish(bunch.images, 16.0, bunch.target.astype(np.int64), classes, 8, size, as_uint8)


def load_faces(*, size: int = 25, as_uint8: bool = False) -> ArrayDataset:
    """scikit-image's bundled subset of Labeled Faces in the Wild: 100 face and 100 non-face
    25x25 grayscale crops (``skimage.data.lfw_subset``), labels 1 (face) and 0 (non-face).

    The stored values are floats in [0, 1]; at ``size=25`` the float images are those values in
    float32. Other sizes, and ``as_uint8``, go through ``round(value * 255)`` as uint8 and are
    resized bilinearly as in :func:`load_digits`.

    Parameters
    ----------
    size : int >= 1, default 25
        Output height and width.
    as_uint8 : bool, default False
        Return uint8 NHWC images in 0..255.

    Returns
    -------
    ArrayDataset
        ``images``: float32 (200, 1, size, size) in [0, 1], or uint8 (200, size, size, 1);
        ``labels``: int64 (200,), the first 100 are 1; ``classes``: ("non-face", "face").

    Raises
    ------
    ImportError
        When scikit-image is not installed (``pip install scikit-image``).

    Examples
    --------
    >>> from cnnkit.data import load_faces
    >>> ds = load_faces()
    >>> ds.images.shape, int(ds.labels.sum())
    ((200, 1, 25, 25), 100)
    """
    size = check_int("size", size, 1, "a positive int")
    as_uint8 = check_bool("as_uint8", as_uint8)
    try:
        from skimage.data import lfw_subset
    except ImportError as e:
        raise ImportError("load_faces needs scikit-image, which is not installed: pip install scikit-image") from e
    raw = np.asarray(lfw_subset(), dtype=np.float64)
    labels = np.zeros(len(raw), dtype=np.int64)
    labels[:100] = 1
    return _finish(raw, 1.0, labels, ("non-face", "face"), raw.shape[1], size, as_uint8)


# ---- synthetic shapes ---------------------------------------------------------------------------------

_MIN_SIDE = 4  # the smallest shape side at which every class is distinguishable from the others
_CHUNK = 512   # images drawn per vectorized block (bounds the temporaries)


def _shape_masks(kind, size, y0, x0, s):
    """Boolean (m, size, size) masks of shape ``kind`` filling the s x s boxes at (y0, x0).

    Pixel centres in box coordinates: (i + 0.5, j + 0.5) for row i, column j in [0, s). Square:
    the whole box. Circle: centre distance <= s/2. Triangle (apex up): |j + 0.5 - s/2| <= (i + 1)/2.
    Cross: two bars of width t = max(1, round(s/3)) through the middle. Each touches all four
    sides of its box, so the mask's bounding box is the box.
    """
    r = np.arange(size)
    i = r[None, :, None] - y0[:, None, None]
    j = r[None, None, :] - x0[:, None, None]
    S = s[:, None, None]
    inside = (i >= 0) & (i < S) & (j >= 0) & (j < S)
    if kind == "square":
        return inside
    cy, cx = i + 0.5 - S / 2, j + 0.5 - S / 2
    if kind == "circle":
        return inside & (cy * cy + cx * cx <= (S / 2) ** 2)
    if kind == "triangle":
        return inside & (np.abs(cx) <= (i + 1) / 2)
    t = np.maximum(1, _round_half_up(S / 3))
    c0 = (S - t) // 2
    return inside & (((i >= c0) & (i < c0 + t)) | ((j >= c0) & (j < c0 + t)))


def _free_corners(occupied, side):
    """bool (size - side + 1, size - side + 1): top-left corners where a side x side box covers
    no True pixel of ``occupied`` (a 2-D summed-area table over the grid)."""
    size = occupied.shape[0]
    table = np.zeros((size + 1, size + 1), dtype=np.int64)
    np.cumsum(np.cumsum(occupied, axis=0), axis=1, out=table[1:, 1:])
    m = size - side + 1
    count = (table[side:side + m, side:side + m] - table[:m, side:side + m]
             - table[side:side + m, :m] + table[:m, :m])
    return count == 0


_PLACE_ATTEMPTS = 8  # fresh random placements of one image's distractors before giving up


def _place_distractors(rng, size, box, sides):
    """Top-left corners and sides of ``len(sides)`` boxes placed one after the other, each
    uniformly among the corners where it keeps at least one pixel away from the labelled ``box``
    and the boxes placed before it, shrunk one pixel at a time (down to ``_MIN_SIDE``) while no
    corner is free. None when an attempt fails ``_PLACE_ATTEMPTS`` times."""
    for _ in range(_PLACE_ATTEMPTS):
        occupied = np.zeros((size, size), dtype=bool)
        boxes = [box]
        placed = []
        for s in sides:
            y0, x0, y1, x1 = boxes[-1]
            occupied[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True  # the box and a 1-pixel margin
            for side in range(int(s), _MIN_SIDE - 1, -1):
                free = np.flatnonzero(_free_corners(occupied, side))
                if free.size:
                    break
            else:
                break
            y, x = divmod(int(free[rng.integers(free.size)]), size - side + 1)
            placed.append((y, x, side))
            boxes.append((y, x, y + side, x + side))
        else:
            return placed
    return None


def make_shapes(n: int, size: int = 32, seed: Seed = 0, *, classes: Sequence[str] = SHAPES, channels: int = 1,
                noise: float = 0.05, min_scale: float = 0.25, max_scale: float = 0.5, distractors: int = 0,
                distractor_scale: float = 1.0) -> ArrayDataset:
    """Synthetic images of one filled shape each, with its bounding box and pixel mask: for
    checking that an explanation (a saliency map, a CAM) points at the object.

    Labels are balanced (``arange(n) % len(classes)``, permuted), so counts differ by at most
    one and every class appears once ``n >= len(classes)``. Each shape fills an s x s box with
    ``s = round(scale * size)`` (at least 4 pixels), ``scale`` uniform in [min_scale,
    max_scale], placed uniformly so it lies inside the image. Per image and channel a
    background level is drawn from U(0, 0.3) and a shape level from U(0.6, 1.0); Gaussian noise
    of standard deviation ``noise`` is added and the result clipped to [0, 1]. Every shape
    touches the four sides of its box, so the box is exactly the bounding box of the mask.
    Same seed, same data.

    ``distractors=k`` adds k shapes of other classes to every image (each class drawn uniformly
    from ``classes`` without the image's label, independently), so that an explanation can be
    checked to point at the labelled object rather than at any shape: each has its own side
    (the same scale rule times ``distractor_scale``) and its own shape level per channel
    (U(0.6, 1.0)) over the image's background, and is placed uniformly among the positions where its box keeps at least one
    background pixel away from the labelled box and the distractor boxes placed before it. A
    distractor that fits nowhere at its drawn side is shrunk a pixel at a time (down to 4
    pixels); after several such random attempts per image a ValueError names ``distractors``
    (too many for the image size). Distractors are drawn after everything else, so the
    labelled shapes, levels and noise are those of ``distractors=0`` with the same seed, and
    ``distractors=0`` gives exactly the data it gave before the option existed.

    Parameters
    ----------
    n : int >= 1
        Number of images.
    size : int >= 8, default 32
        Image height and width.
    seed : int, SeedSequence, Generator or None, default 0
        Same seed, same data.
    classes : sequence of names from ``SHAPES`` ("square", "circle", "triangle", "cross")
        The classes to draw, in label order.
    channels : int >= 1, default 1
        Image channels (levels drawn per channel).
    noise : float >= 0, default 0.05
        Standard deviation of the Gaussian pixel noise.
    min_scale, max_scale : floats, 0 < min_scale <= max_scale <= 1, default 0.25 and 0.5
        Range of the shape's side as a fraction of ``size``.
    distractors : int >= 0
        Shapes of other classes per image (needs at least two classes when > 0).
    distractor_scale : float in (0, 1]
        Distractor sides relative to the labelled rule. Below 1 (``cnnkit explain`` uses 0.5) the
        labelled shape is the larger one, so the label follows from the image; at 1 an image's
        shapes are alike and its label is ambiguous to a classifier.

    Returns
    -------
    ArrayDataset
        ``images``: float32 (n, channels, size, size) in [0, 1]; ``labels``: int64 (n,);
        ``classes``: the names; ``boxes``: int64 (n, 4), (y0, x0, y1, x1) half-open, so
        ``masks[k, y0:y1, x0:x1]`` holds the shape; ``masks``: bool (n, size, size). Boxes
        and masks are the labelled object's. With ``distractors=k > 0`` also
        ``distractor_labels``: int64 (n, k), never the image's label; ``distractor_boxes``:
        int64 (n, k, 4) in the same convention; ``distractor_masks``: bool (n, k, size, size),
        disjoint from ``masks`` and from each other (these extras are absent when k = 0).

    Examples
    --------
    >>> from cnnkit.data import make_shapes
    >>> ds = make_shapes(100, size=32, seed=0)
    >>> ds.images.shape, ds.boxes.shape, ds.masks.dtype
    ((100, 1, 32, 32), (100, 4), dtype('bool'))
    >>> y0, x0, y1, x1 = ds.boxes[0]
    >>> bool(ds.masks[0].sum() == ds.masks[0, y0:y1, x0:x1].sum())
    True
    >>> ds = make_shapes(10, size=32, seed=0, distractors=2)
    >>> ds.distractor_masks.shape, bool((ds.distractor_labels != ds.labels[:, None]).all())
    ((10, 2, 32, 32), True)
    """
    n = check_int("n", n, 1, "a positive int")
    size = check_int("size", size, 8, "an int >= 8")
    channels = check_int("channels", channels, 1, "a positive int")
    noise = check_real("noise", noise, lo=0.0)
    min_scale = check_real("min_scale", min_scale, lo=0.0, hi=1.0, lo_open=True)
    max_scale = check_real("max_scale", max_scale, lo=0.0, hi=1.0, lo_open=True)
    if max_scale < min_scale:
        raise ValueError(f"max_scale: expected a value >= min_scale = {min_scale!r}, got {max_scale!r}")
    if isinstance(classes, str):
        raise TypeError(f"classes: expected a sequence of shape names, got the str {classes!r}")
    classes = tuple(classes)
    if not classes or any(c not in SHAPES for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected distinct names from {SHAPES}, got {classes!r}")
    distractors = check_int("distractors", distractors, 0, "a non-negative int")
    distractor_scale = check_real("distractor_scale", distractor_scale, lo=0.0, hi=1.0, lo_open=True)
    if distractors and len(classes) < 2:
        raise ValueError(f"distractors: shapes of other classes need at least two classes, got "
                         f"distractors={distractors} with classes={classes!r}")
    rng = _rng(seed)

    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(classes))
    s = np.clip(_round_half_up(rng.uniform(min_scale, max_scale, n) * size), _MIN_SIDE, size)
    y0 = rng.integers(0, size - s + 1)
    x0 = rng.integers(0, size - s + 1)
    bg = rng.uniform(0.0, 0.3, (n, channels)).astype(np.float32)
    fg = rng.uniform(0.6, 1.0, (n, channels)).astype(np.float32)

    images = np.empty((n, channels, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        for k, kind in enumerate(classes):
            sel = np.flatnonzero(labels[a:b] == k) + a
            if sel.size:
                masks[sel] = _shape_masks(kind, size, y0[sel], x0[sel], s[sel])
        m = masks[a:b, None].astype(np.float32)
        x = bg[a:b, :, None, None] + (fg[a:b] - bg[a:b])[:, :, None, None] * m
        if noise > 0:
            z = rng.standard_normal(x.shape, dtype=np.float32)
            z *= np.float32(noise)
            x += z
        if distractors:
            images[a:b] = x  # clipped once the distractors are in
        else:
            np.clip(x, 0.0, 1.0, out=images[a:b])
    boxes = np.stack([y0, x0, y0 + s, x0 + s], axis=1).astype(np.int64)
    extras = {"boxes": boxes, "masks": masks}
    if distractors:
        extras.update(_add_distractors(rng, images, labels, boxes, bg, classes, distractors,
                                       min_scale * distractor_scale, max_scale * distractor_scale))
        np.clip(images, 0.0, 1.0, out=images)
    return ArrayDataset(images, labels, classes=classes, extras=extras)


def _add_distractors(rng, images, labels, boxes, bg, classes, k, min_scale, max_scale):
    """Draw, place and paint ``k`` distractors per image into the unclipped ``images`` (in
    place); their extras (labels, boxes, masks)."""
    n, channels, size, _ = images.shape
    offset = rng.integers(0, len(classes) - 1, (n, k))
    dlabels = (offset + (offset >= labels[:, None])).astype(np.int64)   # uniform over the other classes
    sides = np.clip(_round_half_up(rng.uniform(min_scale, max_scale, (n, k)) * size), _MIN_SIDE, size)
    fg = rng.uniform(0.6, 1.0, (n, k, channels)).astype(np.float32)
    dboxes = np.empty((n, k, 4), dtype=np.int64)
    for i in range(n):
        placed = _place_distractors(rng, size, tuple(boxes[i]), sides[i])
        if placed is None:
            raise ValueError(f"distractors: could not place {k} distractor(s) beside the labelled shape in a "
                             f"{size}x{size} image (image {i}, box {tuple(int(v) for v in boxes[i])}); use fewer "
                             f"distractors, a larger size or a smaller max_scale")
        for j, (y, x, side) in enumerate(placed):
            dboxes[i, j] = (y, x, y + side, x + side)
    dmasks = np.zeros((n, k, size, size), dtype=bool)
    flat_masks, flat_boxes, flat_labels = dmasks.reshape(n * k, size, size), dboxes.reshape(n * k, 4), dlabels.ravel()
    for a in range(0, n * k, _CHUNK):
        b = min(a + _CHUNK, n * k)
        for c, kind in enumerate(classes):
            sel = np.flatnonzero(flat_labels[a:b] == c) + a
            if sel.size:
                y, x = flat_boxes[sel, 0], flat_boxes[sel, 1]
                flat_masks[sel] = _shape_masks(kind, size, y, x, flat_boxes[sel, 2] - y)
    level = fg - bg[:, None, :]                     # (n, k, channels): shape level over the background
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        images[a:b] += np.einsum("ijc,ijhw->ichw", level[a:b], dmasks[a:b].astype(np.float32))
    return {"distractor_labels": dlabels, "distractor_boxes": dboxes, "distractor_masks": dmasks}
