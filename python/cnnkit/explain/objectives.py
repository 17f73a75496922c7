"""Objectives for :func:`cnnkit.explain.feature_visualization`: what an image is optimized for.

An objective is a scalar function of some layers' outputs (and of the image itself, for the
regularizers) that the optimization **maximizes**. Every objective here is written so that larger
is better, including the regularizers: :func:`total_variation`, :func:`l1`, :func:`l2`,
:func:`blur` and :func:`diversity` are *negated* penalties, so they are always **added**::

    obj = objectives.channel("3", 5) + 1e-3 * objectives.total_variation()

(Lucid's ``total_variation``, ``L1``, ``L2`` and ``diversity`` are the positive penalties that one
subtracts; the weights carry over, the sign does not.) Objectives compose with ``+``, ``-``,
unary ``-`` and multiplication or division by a number.

Layers are named by the dotted names of ``model.named_modules()`` (``"3"``, ``"3.conv1"``,
``"3.downsample.0"``); :func:`class_logit` reads the model's output. Activation objectives
average over the batch (or take one image with ``batch=i``) and over positions, as Lucid's do,
so their values do not grow with the image size; the regularizers sum over pixels, as Lucid's do.
Layers may be in either layout: a 4-D output is read as (N, C, H, W) or (N, H, W, C) following the
model's layout.

Every objective gives its value and its exact gradient with respect to the outputs it reads
(:meth:`Objective.evaluate`), so the model's backward can start at those layers (see
:meth:`cnnkit.nn.Sequential.backward`'s ``inject``).
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._validate import accepts_dlpack

__all__ = ["Objective", "channel", "neuron", "layer", "class_logit", "direction", "diversity", "total_variation",
           "l1", "l2", "blur"]

def _check_layer(name: Any, arg: str = "layer") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{arg}: expected a dotted layer name (str), got {type(name).__name__}")
    if not name:
        raise ValueError(f"{arg}: expected a layer name, got ''")
    return name


def _check_index(name: str, v: Any, allow_none: bool = False) -> Optional[int]:
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= 0{' or None' if allow_none else ''}, got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {v}")
    return int(v)


def _check_weight(name: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return v


def planar(a: np.ndarray, layout: str) -> np.ndarray:
    """A (N, C, H, W) view of a 4-D array in ``layout``; other ranks as they are.

    Parameters
    ----------
    a : numpy.ndarray
    layout : {"NCHW", "NHWC"}

    Returns
    -------
    numpy.ndarray
        A view of ``a``.
    """
    return a.transpose(0, 3, 1, 2) if (a.ndim == 4 and layout == "NHWC") else a


class Context:
    """What objectives read and write in one evaluation: ``acts`` (layer name, or None for the
    model's output, to its output array in the model's layout), ``image`` (the planar (N, C, H, W)
    images in [0, 1]); :meth:`grad` and :meth:`image_grad` give zeroed gradient arrays to add to."""

    def __init__(self, acts: Dict[Optional[str], np.ndarray], image: Optional[np.ndarray], layout: str,
                 pool: Optional[dict] = None) -> None:
        self.acts, self.image, self.layout = acts, image, layout
        self.grads: Dict[Optional[str], np.ndarray] = {}
        self._image_grad: Optional[np.ndarray] = None
        self._pool = {} if pool is None else pool

    def _zeros(self, key: Any, like: np.ndarray) -> np.ndarray:
        buf = self._pool.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._pool[key] = np.empty(like.shape, like.dtype)
        buf[...] = 0
        return buf

    def act(self, name: Optional[str]) -> np.ndarray:
        """The output of layer ``name`` (planar view for 4-D outputs)."""
        return planar(self.acts[name], self.layout)

    def grad(self, name: Optional[str]) -> np.ndarray:
        """The gradient array of layer ``name`` (planar view; zeros the first time)."""
        if name not in self.grads:
            self.grads[name] = self._zeros(("layer", name), self.acts[name])
        return planar(self.grads[name], self.layout)

    def image_grad(self) -> np.ndarray:
        """The gradient array of the image (zeros the first time)."""
        if self.image is None:
            raise ValueError("image: a regularizer on the image needs the image")
        if self._image_grad is None:
            self._image_grad = self._zeros("image", self.image)
        return self._image_grad

    def target(self, name: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(values, gradient) of a layer, or of the image for ``name`` None in a regularizer."""
        return self.act(name), self.grad(name)


class Objective:
    """A scalar to maximize: a weighted sum of terms (see the module docstring).

    ``objective.layers`` lists the layers it reads (None stands for the model's output);
    :meth:`evaluate` gives its value and gradients. Build objectives with the module's functions
    (:func:`channel`, :func:`neuron`, ...) and combine them with ``+``, ``-`` and ``*``.

    Parameters
    ----------
    terms : sequence of (float, term)
        Weighted terms; the objective is the sum of weight times term.
    """

    def __init__(self, terms: Sequence[Tuple[float, "_Term"]]) -> None:
        self.terms: List[Tuple[float, _Term]] = list(terms)

    # ---- what it needs ----
    @property
    def layers(self) -> Tuple[Optional[str], ...]:
        """The layers read, in first-use order (None: the model's output)."""
        out: list = []
        for _, t in self.terms:
            for n in t.layers:
                if n not in out:
                    out.append(n)
        return tuple(out)

    @property
    def uses_image(self) -> bool:
        """Whether a term reads the image itself (a regularizer without ``layer=``)."""
        return any(t.uses_image for _, t in self.terms)

    def check(self, shapes: Dict[Optional[str], tuple], layout: str) -> None:
        """Check that every term fits the layers' output shapes.

        Parameters
        ----------
        shapes : dict
            Layer name (None: the model's output) -> that layer's output shape in the model's
            layout, batch included.
        layout : {"NCHW", "NHWC"}
            The model's layout.

        Raises
        ------
        ValueError
            Naming the argument (``layer``, ``k``, ...) of the term that does not fit.
        """
        for _, t in self.terms:
            t.check({n: _planar_shape(s, layout) for n, s in shapes.items()})

    # ---- evaluation ----
    @accepts_dlpack
    def evaluate(self, acts: Dict[Optional[str], np.ndarray], image: Optional[np.ndarray] = None, *,
                 layout: str = "NCHW") -> Tuple[float, Dict[Optional[str], np.ndarray], Optional[np.ndarray]]:
        """The value and its gradients.

        Parameters
        ----------
        acts : dict
            Layer name (None: the model's output) -> that layer's output, for every name in
            :attr:`layers`, in the model's ``layout``.
        image : numpy.ndarray, optional
            The images (N, C, H, W) in [0, 1], needed when :attr:`uses_image`.
        layout : {"NCHW", "NHWC"}

        Returns
        -------
        value : float
        grads : dict
            Layer name -> d value / d output (the output's shape and dtype) for the layers with a
            gradient.
        image_grad : numpy.ndarray or None
            d value / d image, (N, C, H, W), or None.

        Examples
        --------
        >>> import numpy as np
        >>> from cnnkit.explain import objectives
        >>> a = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
        >>> value, grads, _ = objectives.channel("1", 1).evaluate({"1": a})
        >>> value, float(grads["1"][0, 1, 0, 0])
        (5.5, 0.25)
        """
        ctx = Context(acts, image, layout)
        value = self._eval(ctx)
        return value, ctx.grads, ctx._image_grad

    def _eval(self, ctx: Context) -> float:
        total = 0.0
        for coef, t in self.terms:
            total += coef * t.eval(ctx, coef)
        return total

    # ---- algebra ----
    def __add__(self, other: Any) -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __sub__(self, other: Any) -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + [(-c, t) for c, t in other.terms])

    def __mul__(self, k: Any) -> "Objective":
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Real):
            return NotImplemented
        k = _check_weight("k", k)
        return Objective([(k * c, t) for c, t in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, k: Any) -> "Objective":
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Real):
            return NotImplemented
        if k == 0:
            raise ZeroDivisionError("an objective divided by 0")
        return self * (1.0 / float(k))

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __pos__(self) -> "Objective":
        return self

    def __repr__(self) -> str:
        parts = []
        for i, (c, t) in enumerate(self.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            term = repr(t) if mag == 1 else f"{mag:g} * {t!r}"
            parts.append((("-" if sign == "-" else "") if i == 0 else f" {sign} ") + term)
        return "".join(parts) or "Objective([])"


def _planar_shape(s: tuple, layout: str) -> tuple:
    s = tuple(s)
    return (s[0], s[3], s[1], s[2]) if (len(s) == 4 and layout == "NHWC") else s


class _Term:
    """One term: ``layers`` read, ``uses_image``, ``check(shapes)`` and ``eval(ctx, coef)`` that
    returns the term's value and adds ``coef`` times its gradients into the context."""

    layers: Tuple[Optional[str], ...] = ()
    uses_image = False

    def check(self, shapes: Dict[Optional[str], tuple]) -> None:
        pass

    def eval(self, ctx: Context, coef: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _need4(name: Optional[str], shape: tuple, what: str) -> None:
    if len(shape) != 4:
        raise ValueError(f"layer: {what} needs a 4-D layer output, {name!r} gives shape {shape}")


def _check_batch(b: Optional[int], shape: tuple) -> None:
    if b is not None and b >= shape[0]:
        raise ValueError(f"batch: image {b} out of range for a batch of {shape[0]}")


def _check_channel(k: int, name: Optional[str], shape: tuple, arg: str = "k") -> None:
    if len(shape) < 2:
        raise ValueError(f"layer: {name!r} has no channel axis (output shape {shape})")
    if k >= shape[1]:
        where = "the model's output" if name is None else f"layer {name!r}"
        raise ValueError(f"{arg}: channel {k} out of range for {where} with {shape[1]} channels")


class _Channel(_Term):
    def __init__(self, name, k, batch, what="channel"):
        self.layers, self.k, self.batch, self.what = (name,), k, batch, what
        self.name = name

    def check(self, shapes):
        s = shapes[self.name]
        _check_channel(self.k, self.name, s)
        _check_batch(self.batch, s)

    def eval(self, ctx, coef):
        a, g = ctx.target(self.name)
        sel = (slice(None) if self.batch is None else self.batch, self.k)
        v = a[sel]
        g[sel] += coef / v.size
        return float(np.mean(v, dtype=np.float64))

    def __repr__(self):
        b = "" if self.batch is None else f", batch={self.batch}"
        if self.what == "class_logit":
            return f"class_logit({self.k}{b})"
        return f"channel({self.name!r}, {self.k}{b})"


class _Neuron(_Term):
    def __init__(self, name, k, y, x, batch):
        self.layers, self.name, self.k, self.y, self.x, self.batch = (name,), name, k, y, x, batch

    def _yx(self, shape):
        H, W = shape[2], shape[3]
        return (H // 2 if self.y is None else self.y), (W // 2 if self.x is None else self.x)

    def check(self, shapes):
        s = shapes[self.name]
        _need4(self.name, s, "neuron")
        _check_channel(self.k, self.name, s)
        _check_batch(self.batch, s)
        y, x = self._yx(s)
        if y >= s[2]:
            raise ValueError(f"y: row {y} out of range for layer {self.name!r} of height {s[2]}")
        if x >= s[3]:
            raise ValueError(f"x: column {x} out of range for layer {self.name!r} of width {s[3]}")

    def eval(self, ctx, coef):
        a, g = ctx.target(self.name)
        y, x = self._yx(a.shape)
        b = slice(None) if self.batch is None else self.batch
        v = a[b, self.k, y, x]
        n = np.size(v)
        g[b, self.k, y, x] += coef / n
        return float(np.mean(v, dtype=np.float64))

    def __repr__(self):
        return f"neuron({self.name!r}, {self.k}, y={self.y}, x={self.x})"


class _Layer(_Term):
    def __init__(self, name, batch):
        self.layers, self.name, self.batch = (name,), name, batch

    def check(self, shapes):
        _check_batch(self.batch, shapes[self.name])

    def eval(self, ctx, coef):
        a, g = ctx.target(self.name)
        b = slice(None) if self.batch is None else self.batch
        v = a[b]
        g[b] += (2.0 * coef / v.size) * v
        return float(np.mean(np.square(v, dtype=np.float64)))

    def __repr__(self):
        return f"layer({self.name!r})"


class _Direction(_Term):
    def __init__(self, name, vector, batch):
        self.layers, self.name, self.vector, self.batch = (name,), name, vector, batch

    def check(self, shapes):
        s = shapes[self.name]
        if len(s) < 2 or s[1] != self.vector.size:
            raise ValueError(f"vector: expected {s[1] if len(s) > 1 else '?'} entries (the channels of layer "
                             f"{self.name!r}), got {self.vector.size}")
        _check_batch(self.batch, s)

    def eval(self, ctx, coef):
        a, g = ctx.target(self.name)
        b = slice(None) if self.batch is None else slice(self.batch, self.batch + 1)
        v = a[b]
        shape = (1, -1) + (1,) * (v.ndim - 2)
        vec = self.vector.reshape(shape)
        positions = v.size // self.vector.size
        g[b] += (vec * (coef / positions)).astype(g.dtype)
        return float(np.sum(v * vec) / positions)

    def __repr__(self):
        return f"direction({self.name!r}, <{self.vector.size} values>)"


class _Diversity(_Term):
    """``-weight / N * sum_{i != j} <G_i, G_j> / (|G_i| |G_j|)``, G_i the (C, C) Gram matrix of
    image i's activations (positions x channels)."""

    def __init__(self, name, weight):
        self.layers, self.name, self.weight = (name,), name, weight

    def check(self, shapes):
        _need4(self.name, shapes[self.name], "diversity")

    def eval(self, ctx, coef):
        a, g = ctx.target(self.name)
        n, c = a.shape[:2]
        if n < 2:
            return 0.0
        A = a.reshape(n, c, -1).astype(np.float64)          # (N, C, P)
        G = A @ A.transpose(0, 2, 1)                          # (N, C, C)
        norms = np.sqrt(np.maximum(np.sum(G * G, axis=(1, 2)), 1e-20))
        Gh = G / norms[:, None, None]
        S = Gh.sum(axis=0)
        cos_sum = float(np.sum(Gh * S[None]) - np.sum(Gh * Gh))  # sum over ordered pairs i != j
        value = -self.weight * cos_sum / n
        # d value / d Gh_i = -2 w / N * sum_{j != i} Gh_j; through the normalization and G = A A^T
        P = (-2.0 * self.weight / n) * (S[None] - Gh)
        D = (P - np.sum(P * Gh, axis=(1, 2))[:, None, None] * Gh) / norms[:, None, None]
        dA = (D + D.transpose(0, 2, 1)) @ A
        g += (coef * dA).reshape(a.shape).astype(g.dtype)
        return value

    def __repr__(self):
        return f"diversity({self.name!r}, {self.weight:g})"


class _Regularizer(_Term):
    def __init__(self, name):
        self.name = name
        self.layers = () if name is None else (name,)
        self.uses_image = name is None

    def target(self, ctx):
        if self.name is None:
            return ctx.image, ctx.image_grad()
        return ctx.target(self.name)

    def _where(self):
        return "" if self.name is None else f"layer={self.name!r}"


class _TotalVariation(_Regularizer):
    def check(self, shapes):
        if self.name is not None:
            _need4(self.name, shapes[self.name], "total_variation")

    def eval(self, ctx, coef):
        a, g = self.target(ctx)
        dy = np.diff(a, axis=2)
        dx = np.diff(a, axis=3)
        sy, sx = np.sign(dy), np.sign(dx)
        # value -sum|dy| - sum|dx|; d/da of -|a[i+1] - a[i]| is -sign at i+1 and +sign at i
        g[:, :, 1:] -= coef * sy
        g[:, :, :-1] += coef * sy
        g[:, :, :, 1:] -= coef * sx
        g[:, :, :, :-1] += coef * sx
        return -float(np.sum(np.abs(dy), dtype=np.float64) + np.sum(np.abs(dx), dtype=np.float64))

    def __repr__(self):
        return f"total_variation({self._where()})"


class _L1(_Regularizer):
    def __init__(self, name, constant):
        super().__init__(name)
        self.constant = constant

    def eval(self, ctx, coef):
        a, g = self.target(ctx)
        d = a - a.dtype.type(self.constant)
        g -= coef * np.sign(d)
        return -float(np.sum(np.abs(d), dtype=np.float64))

    def __repr__(self):
        return f"l1({self.constant:g}{', ' if self.name else ''}{self._where()})"


class _L2(_Regularizer):
    def __init__(self, name, constant, epsilon):
        super().__init__(name)
        self.constant, self.epsilon = constant, epsilon

    def eval(self, ctx, coef):
        a, g = self.target(ctx)
        d = (a - a.dtype.type(self.constant)).astype(np.float64)
        r = np.sqrt(self.epsilon + np.sum(d * d))
        g -= (coef / r * d).astype(g.dtype)
        return -float(r)

    def __repr__(self):
        return f"l2({self.constant:g}{', ' if self.name else ''}{self._where()})"


def _box3(a: np.ndarray) -> np.ndarray:
    """Sum over the 3x3 neighbourhood (zero outside) of every pixel of (N, C, H, W)."""
    p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]
    return rows[:, :, :, :-2] + rows[:, :, :, 1:-1] + rows[:, :, :, 2:]


class _Blur(_Regularizer):
    """``-0.5 * sum (a - B a)^2`` with B the 3x3 mean over the neighbours inside the image
    (TensorFlow's SAME average pooling, as Lucid's ``blur_input_each_step``): the high-frequency
    energy. The gradient is exact, ``-(I - B)^T (I - B) a`` (Lucid stops the gradient through
    ``B a``, which gives ``-(a - B a)``)."""

    def check(self, shapes):
        if self.name is not None:
            _need4(self.name, shapes[self.name], "blur")

    def eval(self, ctx, coef):
        a, g = self.target(ctx)
        a64 = a.astype(np.float64)
        H, W = a.shape[2:]
        cnt = _box3(np.ones((1, 1, H, W)))
        r = a64 - _box3(a64) / cnt
        gr = r - _box3(r / cnt)                  # (I - B)^T r
        g -= (coef * gr).astype(g.dtype)
        return -0.5 * float(np.sum(r * r))

    def __repr__(self):
        return f"blur({self._where()})"


# ---- the public constructors --------------------------------------------------------------------

def channel(layer: str, k: int, *, batch: Optional[int] = None) -> Objective:
    """The mean activation of channel ``k`` of ``layer`` over positions (and over the batch).

    Parameters
    ----------
    layer : str
        A dotted module name (``model.named_modules()``).
    k : int
        The channel.
    batch : int, optional
        Only this image of the batch (the others are left to other terms), as Lucid's ``batch=``.

    Returns
    -------
    Objective

    Examples
    --------
    >>> from cnnkit.explain import objectives
    >>> objectives.channel("3", 5) - 0.5 * objectives.channel("3", 6)
    channel('3', 5) - 0.5 * channel('3', 6)
    """
    return Objective([(1.0, _Channel(_check_layer(layer), _check_index("k", k), _check_index("batch", batch, True)))])


def neuron(layer: str, k: int, y: Optional[int] = None, x: Optional[int] = None, *,
           batch: Optional[int] = None) -> Objective:
    """The activation of channel ``k`` of ``layer`` at one position (row ``y``, column ``x``;
    the centre ``(H // 2, W // 2)`` by default), averaged over the batch.

    Parameters
    ----------
    layer : str
    k : int
    y, x : int, optional
    batch : int, optional

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _Neuron(_check_layer(layer), _check_index("k", k), _check_index("y", y, True),
                                    _check_index("x", x, True), _check_index("batch", batch, True)))])


def layer(layer: str, *, batch: Optional[int] = None) -> Objective:
    """DeepDream: the mean squared activation of ``layer`` (over channels, positions, batch).

    Parameters
    ----------
    layer : str
    batch : int, optional

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _Layer(_check_layer(layer), _check_index("batch", batch, True)))])


def class_logit(k: int, *, batch: Optional[int] = None) -> Objective:
    """The model's output (the logit, before any softmax) for class ``k``, averaged over the batch.

    Parameters
    ----------
    k : int
    batch : int, optional

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _Channel(None, _check_index("k", k), _check_index("batch", batch, True),
                                     "class_logit"))])


def direction(layer: str, vector: Any, *, batch: Optional[int] = None) -> Objective:
    """The dot product of ``layer``'s activation vector (its channels at a position) with
    ``vector``, averaged over positions and the batch (Lucid's ``direction``, summed over the
    channels rather than averaged).

    Parameters
    ----------
    layer : str
    vector : array_like (C,)
        One value per channel of ``layer``.
    batch : int, optional

    Returns
    -------
    Objective
    """
    v = np.asarray(vector)
    if v.dtype.kind not in "fiu":
        raise TypeError(f"vector: expected a 1-D array of numbers, got dtype {v.dtype}")
    v = v.astype(np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"vector: expected a non-empty finite 1-D array, got shape {v.shape}")
    return Objective([(1.0, _Direction(_check_layer(layer), v, _check_index("batch", batch, True)))])


def diversity(layer: str, weight: float) -> Objective:
    """Negative pairwise cosine similarity of the images' Gram matrices at ``layer``:
    ``-weight / N * sum_{i != j} cos(G_i, G_j)`` with ``G_i = A_i^T A_i`` the (C, C) Gram matrix of
    image i's activations A_i (positions x channels), as Lucid's ``diversity`` (which is the
    positive sum, subtracted). Adding it makes the images of a batch differ in style; 0 for a
    batch of one.

    Parameters
    ----------
    layer : str
    weight : float
        Lucid's tutorials use about 1e2 beside a channel objective.

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _Diversity(_check_layer(layer), _check_weight("weight", weight)))])


def total_variation(*, layer: Optional[str] = None) -> Objective:
    """The negated total variation ``-sum |a[y+1, x] - a[y, x]| - sum |a[y, x+1] - a[y, x]|`` of
    the images (over channels and the batch, as TensorFlow's ``image.total_variation``), or of
    ``layer``'s output.

    Parameters
    ----------
    layer : str, optional
        A layer instead of the image.

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _TotalVariation(None if layer is None else _check_layer(layer)))])


def l1(constant: float = 0.5, *, layer: Optional[str] = None) -> Objective:
    """The negated L1 distance ``-sum |a - constant|`` of the images (default from mid-grey 0.5;
    Lucid's ``L1`` defaults to 0), or of ``layer``'s output.

    Parameters
    ----------
    constant : float
    layer : str, optional

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _L1(None if layer is None else _check_layer(layer), _check_weight("constant", constant)))])


def l2(constant: float = 0.5, epsilon: float = 1e-6, *, layer: Optional[str] = None) -> Objective:
    """The negated L2 distance ``-sqrt(epsilon + sum (a - constant)^2)`` of the images (Lucid's
    ``L2``, here from mid-grey by default), or of ``layer``'s output.

    Parameters
    ----------
    constant : float
    epsilon : float
    layer : str, optional

    Returns
    -------
    Objective
    """
    eps = _check_weight("epsilon", epsilon)
    if eps <= 0:
        raise ValueError(f"epsilon: expected a number > 0, got {epsilon}")
    return Objective([(1.0, _L2(None if layer is None else _check_layer(layer), _check_weight("constant", constant),
                                eps))])


def blur(*, layer: Optional[str] = None) -> Objective:
    """The negated high-frequency energy ``-0.5 * sum (a - B a)^2``, B the 3x3 mean filter (over
    the neighbours inside the image): pulls the images toward their blurred selves (Lucid's
    ``blur_input_each_step``, here with its exact gradient).

    Parameters
    ----------
    layer : str, optional

    Returns
    -------
    Objective
    """
    return Objective([(1.0, _Blur(None if layer is None else _check_layer(layer)))])

