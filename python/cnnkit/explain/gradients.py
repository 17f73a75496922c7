"""Gradient attributions: saliency, gradient x input, SmoothGrad, integrated gradients, guided
backprop and deconvnet.

Each runs the model in eval mode (restored afterwards, see :func:`cnnkit.explain.explaining`),
differentiates the target logit (not a probability: captum's convention) with respect to the
input, and returns float32 arrays. Perturbed or interpolated inputs are evaluated in chunks of
``batch_size``, so no more than that many are ever held at once.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_int, check_real
from . import _model
from ._model import Target

__all__ = ["saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop", "deconvnet",
           "ig_nodes", "SMOOTHGRAD_KINDS", "IG_METHODS"]

SMOOTHGRAD_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def _prepare(model: Any, x: Any, batch_size: Optional[int]) -> np.ndarray:
    x = _model.check_images(x, model)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    return x


def _batch(model, x, batch_size):
    return _model.default_batch_size(model, x) if batch_size is None else batch_size


def _targets_and_batch(model, x, target, batch_size):
    """(logits of x, int64 targets, batch size): one forward of x, for the methods that build
    perturbed inputs and need every target first."""
    logits = _model.logits_of(model, x)
    targets = _model.targets_for(_model.check_target(target, x.shape[0]), logits)
    return logits, targets, _batch(model, x, batch_size)


def _add_rows(total: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """total[rows[j]] += values[j], where equal rows are consecutive (a chunk of image-major
    samples): one summed add per image."""
    start = 0
    n = rows.size
    while start < n:
        stop = start + 1
        while stop < n and rows[stop] == rows[start]:
            stop += 1
        total[rows[start]] += values[start:stop].sum(axis=0) if stop - start > 1 else values[start]
        start = stop


def _reduce(g: np.ndarray, layout: str, abs_: bool, reduce: Optional[str]) -> np.ndarray:
    if abs_:
        np.abs(g, out=g)
    if reduce is None:
        return g
    axis = 1 if layout == "NCHW" else 3
    return (np.max(g, axis=axis) if reduce == "max" else np.mean(g, axis=axis)).astype(np.float32)


@accepts_dlpack
def saliency(model: Any, x: np.ndarray, target: Target = None, *, abs: bool = True,
             reduce: Optional[str] = "max", batch_size: Optional[int] = None) -> np.ndarray:
    """Vanilla gradient saliency (Simonyan et al., 2014): ``|d logit_t / d x|``, reduced over
    channels by the maximum.

    Parameters
    ----------
    model : cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with ``forward`` and
        ``backward(grad_logits, input_grad=True)`` (see :mod:`cnnkit.explain`)
    x : float32 ndarray (N, C, H, W) or (N, H, W, C), in the model's layout
    target : None (the predicted class), int, or one int per image
    abs : bool
        Take the absolute value of the gradient (``False`` keeps its sign, as captum's
        ``Saliency(abs=False)``).
    reduce : "max", "mean" or None
        Over the channel axis; None keeps the gradient's shape (x's), as captum returns it.
    batch_size : int, optional
        Images per forward/backward (default: a few hundred MB worth).

    Returns
    -------
    float32 ndarray
        (N, H, W), or x's shape with ``reduce=None``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.saliency(model, x, target=1).shape
    (2, 16, 16)
    """
    x = _prepare(model, x, batch_size)
    abs_ = check_bool("abs", abs)
    if reduce not in ("max", "mean", None):
        raise ValueError(f"reduce: expected 'max', 'mean' or None, got {reduce!r}")
    layout = _model.layout_of(model)
    spec = _model.check_target(target, x.shape[0])
    with _model.explaining(model):
        g = _model.input_gradients(model, x, spec, _batch(model, x, batch_size))
    return _reduce(g, layout, abs_, reduce)


@accepts_dlpack
def gradient_x_input(model: Any, x: np.ndarray, target: Target = None, *,
                     batch_size: Optional[int] = None) -> np.ndarray:
    """Gradient times input (Shrikumar et al.): ``x * d logit_t / d x``, x's shape (captum's
    ``InputXGradient``).

    Parameters
    ----------
    model, x, target, batch_size : as in :func:`saliency`

    Returns
    -------
    float32 ndarray
        x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.gradient_x_input(model, x, target=[1, 2]).shape
    (2, 3, 16, 16)
    """
    x = _prepare(model, x, batch_size)
    spec = _model.check_target(target, x.shape[0])
    with _model.explaining(model):
        g = _model.input_gradients(model, x, spec, _batch(model, x, batch_size))
    return np.multiply(g, x, out=g)


@accepts_dlpack
def smoothgrad(model: Any, x: np.ndarray, target: Target = None, *, n_samples: int = 50, noise: float = 0.15,
               kind: str = "smoothgrad", abs: bool = False, batch_size: Optional[int] = None,
               seed: Union[None, int, np.random.Generator] = None) -> np.ndarray:
    """SmoothGrad (Smilkov et al., 2017): the gradient averaged over noisy copies of the input.

    For image i, ``n_samples`` copies ``x_i + eps`` with ``eps ~ N(0, sigma_i^2)`` per element and
    ``sigma_i = noise * (max(x_i) - min(x_i))`` (the paper's noise level relative to the
    image's range). The noise is drawn as ``rng.standard_normal((N, n_samples) + x.shape[1:])``
    in float64, scaled by sigma_i and cast to float32, so a seed fixes it. Per sample ``a`` is
    the gradient (``|gradient|`` with ``abs=True``); ``kind`` combines them as captum's
    ``NoiseTunnel``: "smoothgrad" mean(a), "smoothgrad_sq" mean(a^2), "vargrad" mean(a^2) -
    mean(a)^2 (sums in float64).

    Parameters
    ----------
    model, x, target, batch_size : as in :func:`saliency`
    n_samples : int >= 1
    noise : float >= 0
        Noise standard deviation as a fraction of each image's value range.
    kind : {"smoothgrad", "smoothgrad_sq", "vargrad"}
    abs : bool
        Average absolute gradients (captum's ``NoiseTunnel(Saliency)`` default).
    seed : None, int or numpy.random.Generator

    Returns
    -------
    float32 ndarray
        x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> a = explain.smoothgrad(model, x, n_samples=4, seed=0)
    >>> b = explain.smoothgrad(model, x, n_samples=4, seed=0)
    >>> a.shape, bool(np.array_equal(a, b))  # a seed fixes the noise
    ((2, 3, 16, 16), True)
    """
    x = _prepare(model, x, batch_size)
    n_samples = check_int("n_samples", n_samples, 1, "a positive int")
    noise = check_real("noise", noise, lo=0.0)
    if kind not in SMOOTHGRAD_KINDS:
        raise ValueError(f"kind: expected one of {SMOOTHGRAD_KINDS}, got {kind!r}")
    abs_ = check_bool("abs", abs)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    N = x.shape[0]
    span = (x.reshape(N, -1).max(axis=1).astype(np.float64) - x.reshape(N, -1).min(axis=1)) * noise
    s1 = np.zeros(x.shape, np.float64)
    s2 = np.zeros(x.shape, np.float64) if kind != "smoothgrad" else None
    with _model.explaining(model):
        _, targets, bs = _targets_and_batch(model, x, target, batch_size)
        # noise in the documented order (image-major, then sample), drawn per image so that at
        # most one image's samples are ever held beyond the evaluation chunk
        total = N * n_samples
        idx_img = np.repeat(np.arange(N), n_samples)
        eps_img = np.empty((0,) + x.shape[1:])   # drawn per image below (cur = -1: at once)
        cur = -1
        buf = np.empty((min(bs, total),) + x.shape[1:], np.float32)
        gbuf = np.empty_like(buf)
        for a, b in _model.chunks(total, bs):
            xb = buf[:b - a]
            for j in range(a, b):
                i = idx_img[j]
                if i != cur:
                    eps_img = rng.standard_normal((n_samples,) + x.shape[1:])
                    eps_img *= span[i]
                    cur = i
                np.add(x[i], eps_img[j - i * n_samples].astype(np.float32), out=xb[j - a])
            g = _model.input_gradients(model, xb, targets[idx_img[a:b]], b - a, out=gbuf[:b - a])
            if abs_:
                np.abs(g, out=g)
            g64 = g.astype(np.float64)
            _add_rows(s1, idx_img[a:b], g64)
            if s2 is not None:
                _add_rows(s2, idx_img[a:b], np.square(g64, out=g64))
    m1 = s1 / n_samples
    if s2 is None:  # kind == "smoothgrad"
        return m1.astype(np.float32)
    m2 = s2 / n_samples
    if kind == "smoothgrad_sq":
        return m2.astype(np.float32)
    return (m2 - m1 * m1).astype(np.float32)


def ig_nodes(steps: int, method: str = "gausslegendre") -> tuple:
    """Quadrature (alphas, weights) on [0, 1] for integrated gradients, as captum builds them:
    Gauss-Legendre nodes and weights mapped from [-1, 1], or the left/right/middle/trapezoid
    Riemann sums (weights 1/steps; the trapezoid halves the end weights, with nodes spanning [0, 1],
    so its weights sum to 1 - 1/steps, as captum's do). float64 arrays.

    Parameters
    ----------
    steps : int (>= 1 for Gauss-Legendre, >= 2 for the Riemann rules)
    method : one of :data:`IG_METHODS`

    Returns
    -------
    alphas, weights : ndarray, float64 (steps,)
        The nodes in [0, 1] and their weights.

    Examples
    --------
    >>> from cnnkit.explain.gradients import ig_nodes
    >>> alphas, weights = ig_nodes(4, "riemann_middle")
    >>> alphas.tolist(), weights.tolist()
    ([0.125, 0.375, 0.625, 0.875], [0.25, 0.25, 0.25, 0.25])
    """
    if method not in IG_METHODS:
        raise ValueError(f"method: expected one of {IG_METHODS}, got {method!r}")
    lo = 1 if method == "gausslegendre" else 2
    n = check_int("steps", steps, lo, f"an int >= {lo} for {method}")
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * w
    w = np.full(n, 1.0 / n)
    if method == "riemann_trapezoid":
        w[0] /= 2
        w[-1] /= 2
        return np.linspace(0.0, 1.0, n), w
    if method == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / n, n), w
    if method == "riemann_right":
        return np.linspace(1.0 / n, 1.0, n), w
    return np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n), w


@accepts_dlpack
def integrated_gradients(model: Any, x: np.ndarray, target: Target = None, *, baseline: Any = 0.0,
                         steps: int = 50, method: str = "gausslegendre", batch_size: Optional[int] = None,
                         return_delta: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Integrated gradients (Sundararajan et al., 2017) with captum's semantics.

    ``IG(x) = (x - x') * sum_k w_k * dF(x' + a_k (x - x')) / dx`` with the quadrature
    (a_k, w_k) of :func:`ig_nodes` on [0, 1], F the target logit and x' the baseline. The
    interpolated inputs are built in float32 as ``x' + a_k * (x - x')`` and evaluated in chunks of
    ``batch_size`` (over images x steps), so memory stays bounded whatever ``steps`` is.

    Parameters
    ----------
    model, x, target, batch_size : as in :func:`saliency`
    baseline : float or float array broadcastable to x
    steps : int
    method : {"gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"}
    return_delta : bool
        Also return the completeness gap per image, ``sum(IG) - (F(x) - F(x'))`` (captum's
        convergence delta; float64 (N,)).

    Returns
    -------
    attributions : float32 ndarray
        x's shape.
    delta : float64 ndarray (N,)
        Only with ``return_delta=True``: ``(attributions, delta)``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> attr, delta = explain.integrated_gradients(model, x, target=0, steps=8, return_delta=True)
    >>> attr.shape, bool(np.abs(delta).max() < 1e-3)  # completeness: sum(IG) = F(x) - F(0)
    ((2, 3, 16, 16), True)
    """
    x = _prepare(model, x, batch_size)
    alphas, weights = ig_nodes(steps, method)
    base = _model.check_baseline(baseline, x)
    rd = check_bool("return_delta", return_delta)
    N = x.shape[0]
    S = alphas.size
    diff = (x - base).astype(np.float32)
    total = np.zeros(x.shape, np.float64)
    with _model.explaining(model):
        logits, targets, bs = _targets_and_batch(model, x, target, batch_size)
        buf = np.empty((min(bs, N * S),) + x.shape[1:], np.float32)
        gbuf = np.empty_like(buf)
        img = np.repeat(np.arange(N), S)
        step = np.tile(np.arange(S), N)
        a32 = alphas.astype(np.float32)
        for a, b in _model.chunks(N * S, bs):
            xb = buf[:b - a]
            ii, kk = img[a:b], step[a:b]
            np.multiply(a32[kk].reshape((-1,) + (1,) * (x.ndim - 1)), diff[ii], out=xb)
            xb += base[ii]
            g = _model.input_gradients(model, xb, targets[ii], b - a, out=gbuf[:b - a])
            g64 = g.astype(np.float64)
            g64 *= weights[kk].reshape((-1,) + (1,) * (x.ndim - 1))
            _add_rows(total, ii, g64)
        attr = (total * diff).astype(np.float32)
        if not rd:
            return attr
        fx = logits[np.arange(N), targets].astype(np.float64)
        fb = _model.logits_of(model, np.ascontiguousarray(base))[np.arange(N), targets].astype(np.float64)
    delta = attr.reshape(N, -1).sum(axis=1, dtype=np.float64) - (fx - fb)
    return attr, delta


def _relu_rule(model: Any, x: np.ndarray, target: Target, batch_size: Optional[int], rule: str) -> np.ndarray:
    x = _prepare(model, x, batch_size)
    spec = _model.check_target(target, x.shape[0])
    with _model.explaining(model, relu=rule):   # the forward pass, hence the predicted class, is unchanged
        return _model.input_gradients(model, x, spec, _batch(model, x, batch_size))


@accepts_dlpack
def guided_backprop(model: Any, x: np.ndarray, target: Target = None, *,
                    batch_size: Optional[int] = None) -> np.ndarray:
    """Guided backpropagation (Springenberg et al., 2015): the input gradient with every ReLU
    passing back ``max(g, 0) * (y > 0)``, as captum's ``GuidedBackprop``.

    Parameters
    ----------
    model : cnnkit.nn.Module (ReLUs fused into norms included), TorchModel (its ``nn.ReLU``
        modules), or an object with ``set_relu_backward(mode)`` or ``set_guided_backprop``
    x, target, batch_size : as in :func:`saliency`

    Returns
    -------
    float32 ndarray
        x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.guided_backprop(model, x).shape
    (2, 3, 16, 16)
    """
    return _relu_rule(model, x, target, batch_size, "guided")


@accepts_dlpack
def deconvnet(model: Any, x: np.ndarray, target: Target = None, *, batch_size: Optional[int] = None) -> np.ndarray:
    """Deconvnet (Zeiler and Fergus, 2014): the input gradient with every ReLU passing back
    ``max(g, 0)`` regardless of its forward activation, as captum's ``Deconvolution``.

    Parameters
    ----------
    model : as in :func:`guided_backprop`, with ``set_relu_backward(mode)``
    x, target, batch_size : as in :func:`saliency`

    Returns
    -------
    float32 ndarray
        x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.deconvnet(model, x, target=3).shape
    (2, 3, 16, 16)
    """
    return _relu_rule(model, x, target, batch_size, "deconvnet")
