"""The Building Blocks of interpretability (Olah et al., Distill 2018) on cnnkit models: neuron
groups, their attribution, semantic dictionaries and the dataset examples a channel likes.

* :func:`factorize_activations`: non-negative matrix factorization of a layer's activations
  (positions x channels, scikit-learn's NMF, as Lucid's ``ChannelReducer``) into a few neuron
  groups: per image a spatial map of each group, and the group's direction in channel space,
  ``A[n, :, y, x] ~= sum_g maps[n, g, y, x] * directions[g, :]``.
* :func:`group_attribution`: gradient x activation of the target logit at a layer, split over the
  neuron groups, ``sum_{y,x} maps[n, g, y, x] * (directions[g] . G[n, :, y, x])``, plus a residual
  term for the part of the activations the groups do not reconstruct, so that the group
  attributions and the residual add up exactly to the layer's total ``sum A * G``.
* :func:`semantic_dictionary`: per spatial position the k strongest channels, each with its
  feature visualization (:func:`cnnkit.explain.feature_visualization`).
* :func:`top_activating`: the k dataset examples that excite a channel most (maximum over
  positions), where, and their crops at the receptive field of that position
  (:func:`receptive_field`).

Activations come from the model's capture mechanism (see :mod:`cnnkit.explain._model`): layer
names are the dotted names of ``model.named_modules()``, the model runs in eval mode and its
state is restored afterwards. Models in NCHW and NHWC and :class:`cnnkit.explain.TorchModel`
are explained alike; maps are always returned as (N, groups, h, w).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_int, check_real
from . import _model
from ._model import Target

__all__ = ["factorize_activations", "group_attribution", "semantic_dictionary", "top_activating",
           "receptive_field", "Factorization", "GroupAttribution", "SemanticDictionary", "TopActivating",
           "ReceptiveField", "NMF_METHODS"]

#: factorization methods of :func:`factorize_activations`
NMF_METHODS = ("nmf",)


# ---- result types ------------------------------------------------------------------------------------

class Factorization(NamedTuple):
    """What :func:`factorize_activations` returns.

    Attributes
    ----------
    maps : float32 ndarray (N, n_groups, h, w)
        Per image the spatial map of each group (non-negative).
    directions : float32 ndarray (n_groups, C)
        Each group's direction in channel space (non-negative, unit L2 norm), groups ordered by
        their total weight in ``maps`` (largest first).
    reconstruction_error : float
        ``||A - maps . directions||_F / ||A||_F`` over the whole batch (0 for a zero layer).
    layer : str
        The factorized layer.
    n_iter : int
        Iterations the NMF solver ran (``max_iter`` means it stopped before ``tol``).
    """

    maps: np.ndarray
    directions: np.ndarray
    reconstruction_error: float
    layer: str
    n_iter: int

    def reconstruction(self) -> np.ndarray:
        """The activations the groups reconstruct, ``maps . directions``.

        Returns
        -------
        numpy.ndarray
            float32 (N, C, h, w), channels first whatever the model's layout.
        """
        return np.einsum("ngyx,gc->ncyx", self.maps, self.directions).astype(np.float32)


class GroupAttribution(NamedTuple):
    """What :func:`group_attribution` returns. For every image
    ``attributions.sum(1) + residual == total`` (exactly in float64; to float32 rounding here).

    Attributes
    ----------
    attributions : float32 ndarray (N, n_groups)
        Each group's gradient x activation of the target logit.
    spatial : float32 ndarray (N, n_groups, h, w)
        The same per position (``attributions == spatial.sum((2, 3))``).
    residual : float32 ndarray (N,)
        Gradient x activation of what the groups do not reconstruct.
    residual_spatial : float32 ndarray (N, h, w)
    total : float32 ndarray (N,)
        ``sum_{c,y,x} A * G``, the layer's whole gradient x activation.
    maps : float32 ndarray (N, n_groups, h, w)
        The groups' spatial maps for x (non-negative least squares on the fixed directions).
    targets : int64 ndarray (N,)
        The explained classes.
    """

    attributions: np.ndarray
    spatial: np.ndarray
    residual: np.ndarray
    residual_spatial: np.ndarray
    total: np.ndarray
    maps: np.ndarray
    targets: np.ndarray


class SemanticDictionary(NamedTuple):
    """What :func:`semantic_dictionary` returns.

    Attributes
    ----------
    channels : int64 ndarray (N, h, w, k)
        Per image and position the k strongest channels, strongest first.
    values : float32 ndarray (N, h, w, k)
        Their activations.
    distinct : int64 ndarray (M,)
        The distinct channels in ``channels``, ascending.
    images : float32 ndarray (M, H, W, C_in) or None
        ``images[i]`` is the feature visualization of channel ``distinct[i]`` (None when
        ``visualize=False``).
    layer : str
    """

    channels: np.ndarray
    values: np.ndarray
    distinct: np.ndarray
    images: Optional[np.ndarray]
    layer: str

    def image_of(self, channel: int) -> np.ndarray:
        """The feature visualization of one channel.

        Parameters
        ----------
        channel : int
            One of :attr:`distinct`.

        Returns
        -------
        numpy.ndarray
            float32 (H, W, C_in) in [0, 1].
        """
        if self.images is None:
            raise ValueError("channel: no visualizations (semantic_dictionary ran with visualize=False)")
        i = int(np.searchsorted(self.distinct, channel))
        if i >= self.distinct.size or self.distinct[i] != channel:
            raise ValueError(f"channel: expected one of {self.distinct.tolist()}, got {channel!r}")
        return self.images[i]


class ReceptiveField(NamedTuple):
    """The input window a layer position sees: position (i, j) of the layer reads input rows
    ``offset[0] + stride[0] * i`` .. ``+ size[0]`` (half-open) and the columns likewise. The
    window may reach past the image (into the padding).

    Attributes
    ----------
    size : (int, int)
    stride : (int, int)
    offset : (int, int)
    """

    size: Tuple[int, int]
    stride: Tuple[int, int]
    offset: Tuple[int, int]

    def box(self, i: int, j: int) -> Tuple[int, int, int, int]:
        """The input window of one layer position.

        Parameters
        ----------
        i, j : int
            Row and column in the layer's grid.

        Returns
        -------
        tuple of int
            (y0, x0, y1, x1), half-open input coordinates, unclipped.
        """
        y0 = self.offset[0] + self.stride[0] * int(i)
        x0 = self.offset[1] + self.stride[1] * int(j)
        return y0, x0, y0 + self.size[0], x0 + self.size[1]


class TopActivating(NamedTuple):
    """What :func:`top_activating` returns (strongest example first).

    Attributes
    ----------
    indices : int64 ndarray (k,)
        Dataset indices.
    values : float32 ndarray (k,)
        The channel's maximum over positions for each example.
    positions : int64 ndarray (k, 2)
        (row, column) of that maximum in the layer's grid (the first one in row-major order on ties).
    boxes : int64 ndarray (k, 4)
        The receptive field of that position, (y0, x0, y1, x1) half-open in input pixels, unclipped.
    crops : float32 ndarray (k, size_h, size_w, C_in)
        The input inside each box, channels last; zeros where the box leaves the image.
    receptive_field : ReceptiveField
    layer : str
    """

    indices: np.ndarray
    values: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    receptive_field: ReceptiveField
    layer: str


# ---- shared pieces -----------------------------------------------------------------------------------

def _acts(model: Any, x: np.ndarray, layer: Optional[str], batch_size: Optional[int] = None) -> tuple:
    """(layer name, float32 (N, C, h, w) activations of x at that layer), in chunks."""
    layout = _model.layout_of(model)
    with _model.explaining(model):
        name = _model.resolve_layer(model, layer, x)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        out = None
        for a, b in _model.chunks(x.shape[0], bs):
            A, _, _, _ = _model.layer_pass(model, x[a:b], name, None, need_grad=False)
            A = _layer_nchw(A, layout, name)
            if out is None:
                out = np.empty((x.shape[0],) + A.shape[1:], np.float32)
            out[a:b] = A
    return name, out


def _layer_nchw(a: np.ndarray, layout: str, name: str) -> np.ndarray:
    if a.ndim != 4:
        raise ValueError(f"layer: {name!r} has a {a.ndim}-D output (shape {a.shape}); expected a 4-D "
                         f"(N, C, h, w) one")
    return _model.to_nchw(a, layout)


def _check_nonneg(A: np.ndarray, name: str) -> None:
    m = float(A.min()) if A.size else 0.0
    if m < 0:
        raise ValueError(f"layer: NMF needs non-negative activations, {name!r} has a minimum of {m:.3g} "
                         f"(pick a layer after a ReLU)")


def _nmf_kwargs(max_iter: Any, tol: Any) -> dict:
    return {"max_iter": check_int("max_iter", max_iter, 1, "a positive int"),
            "tol": check_real("tol", tol, lo=0.0)}


def _positions(A: np.ndarray) -> np.ndarray:
    """(N*h*w, C) float64 rows, one per position, from (N, C, h, w)."""
    return np.ascontiguousarray(A.transpose(0, 2, 3, 1), dtype=np.float64).reshape(-1, A.shape[1])


def _project(X: np.ndarray, H: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Non-negative coefficients W minimizing ||X - W H||_F for fixed H (NMF's transform); a zero
    direction (or a zero X) gets zero coefficients."""
    from sklearn.decomposition import non_negative_factorization
    from sklearn.exceptions import ConvergenceWarning
    W = np.zeros((X.shape[0], H.shape[0]), np.float64)
    live = np.nonzero(np.any(H > 0, axis=1))[0]
    if live.size == 0 or not np.any(X > 0):
        return W
    Hl = np.ascontiguousarray(H[live])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Wl, _, _ = non_negative_factorization(X, H=Hl, n_components=Hl.shape[0], update_H=False, solver="cd",
                                              max_iter=max_iter, tol=tol)
    W[:, live] = Wl
    return W


# ---- factorize_activations ---------------------------------------------------------------------------

@accepts_dlpack
def factorize_activations(model: Any, x: np.ndarray, layer: Optional[str], n_groups: int, *,
                          method: str = "nmf", max_iter: int = 500, tol: float = 1e-4, seed: int = 0,
                          batch_size: Optional[int] = None) -> Factorization:
    """Neuron groups: the non-negative factorization of a layer's activations over the batch.

    The activations ``A`` (N, C, h, w) of ``layer`` for x are laid out as one row per position
    (N*h*w, C) and factorized by scikit-learn's NMF (coordinate descent, ``init="nndsvda"``,
    deterministic) as ``W H`` with ``n_groups`` components, as Lucid's ``ChannelReducer`` does.
    Each row of H (a group's direction) is scaled to unit norm (W absorbs the scale) and the
    groups are ordered by ``W.sum(0)``, largest first.

    Parameters
    ----------
    model : cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with the layer protocol
    x : float32 ndarray (N, C_in, H, W) or (N, H, W, C_in), in the model's layout
    layer : str or None
        A dotted name from ``model.named_modules()`` whose output is 4-D and non-negative (after
        a ReLU); None: the last module with a 4-D output.
    n_groups : int in [1, C]
    method : "nmf"
    max_iter : int >= 1
        NMF iterations at most.
    tol : float >= 0
        NMF's stopping tolerance.
    seed : int
        ``random_state`` of the solver (the result does not depend on it with this init).
    batch_size : int, optional
        Images per forward pass (default: what fits ``cnnkit.explain._model.MEMORY_BUDGET``).

    Returns
    -------
    Factorization
        ``maps`` float32 (N, n_groups, h, w), ``directions`` float32 (n_groups, C) with unit
        rows, ``reconstruction_error`` (relative Frobenius, float), ``layer``, ``n_iter``. When
        the activations have non-negative rank <= n_groups the error falls below 1e-3 (tested on
        a planted factorization).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import models
    >>> from cnnkit.explain import factorize_activations
    >>> model = models.resnet_small(1, 4, widths=(8, 8), seed=0)
    >>> x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    >>> f = factorize_activations(model, x, "2", 3)
    >>> f.maps.shape, f.directions.shape, bool(f.reconstruction_error < 1)
    ((2, 3, 16, 16), (3, 8), True)
    """
    x = _model.check_images(x, model)
    n_groups = check_int("n_groups", n_groups, 1, "an int in [1, the layer's channels]")
    if not isinstance(method, str):
        raise TypeError(f"method: expected one of {NMF_METHODS}, got {type(method).__name__}")
    if method not in NMF_METHODS:
        raise ValueError(f"method: expected one of {NMF_METHODS}, got {method!r}")
    kw = _nmf_kwargs(max_iter, tol)
    seed = check_int("seed", seed, 0, "an int >= 0")
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    name, A = _acts(model, x, layer, batch_size)
    N, C, h, w = A.shape
    if n_groups > C:
        raise ValueError(f"n_groups: expected an int in [1, {C}] (the channels of {name!r}), got {n_groups}")
    _check_nonneg(A, name)
    X = _positions(A)
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    nmf = NMF(n_components=n_groups, init="nndsvda", solver="cd", random_state=seed, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = nmf.fit_transform(X)
    H = np.array(nmf.components_, dtype=np.float64)
    norms = np.linalg.norm(H, axis=1)
    norms[norms == 0] = 1.0
    H /= norms[:, None]
    W = W * norms[None, :]
    order = np.argsort(-W.sum(axis=0), kind="stable")
    W, H = W[:, order], H[order]
    ref = np.linalg.norm(X)
    err = float(np.linalg.norm(X - W @ H) / ref) if ref > 0 else 0.0
    maps = W.reshape(N, h, w, n_groups).transpose(0, 3, 1, 2).astype(np.float32)
    return Factorization(np.ascontiguousarray(maps), H.astype(np.float32), err, name, int(nmf.n_iter_))


# ---- group_attribution -------------------------------------------------------------------------------

def _directions(groups: Any) -> np.ndarray:
    if isinstance(groups, Factorization):
        d = groups.directions
    elif isinstance(groups, np.ndarray):
        d = groups
    else:
        raise TypeError(f"groups: expected a Factorization or a (n_groups, C) float array of directions, "
                        f"got {type(groups).__name__}")
    if d.dtype.kind != "f":
        raise TypeError(f"groups: expected float directions, got dtype {d.dtype}")
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
        raise ValueError(f"groups: expected a (n_groups, C) array of directions, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or d.min() < 0:
        raise ValueError("groups: expected finite, non-negative directions")
    return np.asarray(d, np.float64)


@accepts_dlpack
def group_attribution(model: Any, x: np.ndarray, layer: Optional[str], groups: Union[Factorization, np.ndarray],
                      target: Target = None, *, max_iter: int = 500, tol: float = 1e-4,
                      batch_size: Optional[int] = None) -> GroupAttribution:
    """How much each neuron group contributes to the target logit: gradient x activation at
    ``layer``, split over the groups' directions, with an exact residual.

    With activations ``A`` and gradients ``G = d logit_t / dA`` at the layer (N, C, h, w), the
    groups' maps ``M`` for x are the non-negative least-squares coefficients of each position's
    activation vector on the fixed directions ``D`` (NMF's transform), and

    * ``spatial[n, g, y, x] = M[n, g, y, x] * (D[g] . G[n, :, y, x])``,
    * ``residual_spatial[n, y, x] = (A - M D)[n, :, y, x] . G[n, :, y, x]``,

    so ``sum_g spatial + residual_spatial == A . G`` at every position, and
    ``attributions.sum(1) + residual == total == sum A * G`` per image.

    Parameters
    ----------
    model : cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with the layer protocol
    x : float32 ndarray (N, C_in, H, W) or (N, H, W, C_in), in the model's layout
    layer : str or None
        As in :func:`factorize_activations` (the directions must have its C channels).
    groups : Factorization or float ndarray (n_groups, C)
        Non-negative group directions (a :class:`Factorization`'s ``directions``, possibly fitted
        on other images).
    target : None (the predicted class), int, or one int per image
    max_iter, tol : the projection's NMF solver settings
    batch_size : int, optional
        Images per forward/backward pass.

    Returns
    -------
    GroupAttribution
        ``attributions`` float32 (N, n_groups), ``spatial`` float32 (N, n_groups, h, w),
        ``residual`` float32 (N,), ``residual_spatial`` float32 (N, h, w), ``total`` float32
        (N,), ``maps`` float32 (N, n_groups, h, w), ``targets`` int64 (N,).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import models
    >>> from cnnkit.explain import factorize_activations, group_attribution
    >>> model = models.resnet_small(1, 4, widths=(8, 8), seed=0)
    >>> x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    >>> ga = group_attribution(model, x, "2", factorize_activations(model, x, "2", 3))
    >>> ga.attributions.shape
    (2, 3)
    >>> bool(np.allclose(ga.attributions.sum(1) + ga.residual, ga.total, rtol=1e-5, atol=1e-5))
    True
    """
    x = _model.check_images(x, model)
    D = _directions(groups)
    spec = _model.check_target(target, x.shape[0])
    kw = _nmf_kwargs(max_iter, tol)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    layout = _model.layout_of(model)
    N = x.shape[0]
    with _model.explaining(model):
        name = _model.resolve_layer(model, layer, x)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        As, Gs, ts = [], [], []
        for a, b in _model.chunks(N, bs):
            A, G, _, t = _model.layer_pass(model, x[a:b], name, spec if spec is None or isinstance(spec, int)
                                           else spec[a:b], need_grad=True)
            As.append(_layer_nchw(A, layout, name))
            Gs.append(_layer_nchw(G, layout, name))
            ts.append(t)
    A = np.concatenate(As).astype(np.float64)
    G = np.concatenate(Gs).astype(np.float64)
    _, C, h, w = A.shape
    if D.shape[1] != C:
        raise ValueError(f"groups: expected directions over the {C} channels of {name!r}, got shape {D.shape}")
    _check_nonneg(A, name)
    X = _positions(A)                       # (P, C)
    Gp = _positions(G)
    W = _project(X, D, **kw)                # (P, g)
    spatial = W * (Gp @ D.T)                # (P, g)
    resid = np.einsum("pc,pc->p", X - W @ D, Gp)
    total = np.einsum("pc,pc->p", X, Gp).reshape(N, -1).sum(1)
    g = D.shape[0]
    spatial_m = spatial.reshape(N, h, w, g).transpose(0, 3, 1, 2)
    resid_m = resid.reshape(N, h, w)
    return GroupAttribution(
        attributions=spatial_m.sum(axis=(2, 3)).astype(np.float32),
        spatial=np.ascontiguousarray(spatial_m, dtype=np.float32),
        residual=resid_m.sum(axis=(1, 2)).astype(np.float32),
        residual_spatial=resid_m.astype(np.float32),
        total=total.astype(np.float32),
        maps=np.ascontiguousarray(W.reshape(N, h, w, g).transpose(0, 3, 1, 2), dtype=np.float32),
        targets=np.concatenate(ts).astype(np.int64))


# ---- semantic_dictionary -----------------------------------------------------------------------------

@accepts_dlpack
def semantic_dictionary(model: Any, x: np.ndarray, layer: Optional[str], k: int, *, visualize: bool = True,
                        size: Optional[int] = None, steps: int = 256, seed: Optional[int] = 0,
                        cache: Optional[Dict[Any, np.ndarray]] = None, progress: bool = False,
                        batch_size: Optional[int] = None) -> SemanticDictionary:
    """Per spatial position the k strongest channels of ``layer``, with each one's feature
    visualization (the Building Blocks' semantic dictionary).

    Ties are broken by the lower channel index. Each distinct channel is visualized once
    (``feature_visualization(model, objectives.channel(layer, c), size=size, steps=steps,
    seed=seed, progress=progress)``); pass a dict as ``cache`` to keep them across calls (keyed
    by layer, channel, size, steps and seed; the model's weights are not part of the key).

    Parameters
    ----------
    model : cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with the layer protocol
    x : float32 ndarray (N, C_in, H, W) or (N, H, W, C_in), in the model's layout
    layer : str or None
        A dotted name from ``model.named_modules()`` with a 4-D output (None: the last one).
    k : int in [1, C]
    visualize : bool
        False: channels and values only (``images`` is None).
    size : int, optional
        Side of the visualizations (default: the model's input size, as feature_visualization).
    steps : int >= 1
        Optimization steps per visualization.
    seed : int or None
    cache : dict, optional
        Visualizations by (layer, channel, size, steps, seed), read and filled.
    progress : bool
        Progress bars of the visualizations.
    batch_size : int, optional
        Images per forward pass.

    Returns
    -------
    SemanticDictionary
        ``channels`` int64 (N, h, w, k), ``values`` float32 (N, h, w, k), ``distinct`` int64
        (M,), ``images`` float32 (M, H, W, C_in) in [0, 1] or None, ``layer``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import models
    >>> from cnnkit.explain import semantic_dictionary
    >>> model = models.resnet_small(1, 4, widths=(8, 8), seed=0)
    >>> x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    >>> sd = semantic_dictionary(model, x, "2", 2, visualize=False)
    >>> sd.channels.shape, bool(np.all(sd.values[..., 0] >= sd.values[..., 1]))
    ((2, 16, 16, 2), True)
    """
    x = _model.check_images(x, model)
    k = check_int("k", k, 1, "an int in [1, the layer's channels]")
    visualize = check_bool("visualize", visualize)
    steps = check_int("steps", steps, 1, "a positive int")
    if size is not None:
        size = check_int("size", size, 1, "a positive int or None")
    if seed is not None:
        seed = check_int("seed", seed, 0, "an int >= 0 or None")
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache: expected a dict or None, got {type(cache).__name__}")
    progress = check_bool("progress", progress)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    name, A = _acts(model, x, layer, batch_size)
    C = A.shape[1]
    if k > C:
        raise ValueError(f"k: expected an int in [1, {C}] (the channels of {name!r}), got {k}")
    P = np.ascontiguousarray(A.transpose(0, 2, 3, 1))                  # (N, h, w, C)
    order = np.argsort(-P, axis=-1, kind="stable")[..., :k]            # stable: lower channel first on ties
    values = np.take_along_axis(P, order, axis=-1)
    distinct = np.unique(order).astype(np.int64)
    images = None
    if visualize:
        from . import objectives
        from .features import feature_visualization
        cache = {} if cache is None else cache
        imgs = []
        for c in distinct.tolist():
            key = (name, c, size, steps, seed)
            if key not in cache:
                cache[key] = np.asarray(feature_visualization(model, objectives.channel(name, c), size=size,
                                                              steps=steps, seed=seed, progress=progress))[0]
            imgs.append(cache[key])
        images = np.stack(imgs).astype(np.float32)
    return SemanticDictionary(order.astype(np.int64), values.astype(np.float32), distinct, images, name)


# ---- receptive fields --------------------------------------------------------------------------------

class _RF(NamedTuple):
    """Per axis (jump, start, size): position i reads [start + jump*i, start + jump*i + size)."""
    jump: Tuple[int, ...]
    start: Tuple[int, ...]
    size: Tuple[int, ...]


def _compose(rf: _RF, k: Tuple[int, ...], s: Tuple[int, ...], p: Tuple[int, ...],
             d: Tuple[int, ...] = (1, 1)) -> _RF:
    """``rf`` followed by a window of kernel k, stride s, left/top padding p, dilation d."""
    return _RF(tuple(j * si for j, si in zip(rf.jump, s)),
               tuple(st - pi * j for st, pi, j in zip(rf.start, p, rf.jump)),
               tuple(sz + di * (ki - 1) * j for sz, di, ki, j in zip(rf.size, d, k, rf.jump)))


def _union(a: _RF, b: _RF) -> _RF:
    """The window covering both (two branches meeting at the same resolution)."""
    if a.jump != b.jump:  # pragma: no cover - both branches of a cnnkit block have the same stride
        raise ValueError("layer: the branches of a block have different strides")
    start = tuple(min(x, y) for x, y in zip(a.start, b.start))
    end = tuple(max(x0 + x1, y0 + y1) for x0, x1, y0, y1 in zip(a.start, a.size, b.start, b.size))
    return _RF(a.jump, start, tuple(e - s for e, s in zip(end, start)))


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _walk(m: Any, rf: Optional[_RF], prefix: str, table: dict) -> Optional[_RF]:
    """The receptive field of module m's output given its input's (``rf``; None once the spatial
    axes are gone), recording every named sub-module's in ``table``."""
    from .. import nn
    from ..nn import layers as L
    from ..ops.conv import _padding

    def sub(name):
        return f"{prefix}.{name}" if prefix else str(name)

    if rf is None:
        out = None
        for n, c in m.children():
            _walk(c, None, sub(n), table)
    elif isinstance(m, nn.Sequential):
        out = rf
        for n, c in m.children():
            out = _walk(c, out, sub(n), table)
    elif isinstance(m, L.Conv2d):
        (pt, _), (pl, _) = _padding(m.padding, m.kernel_size, _pair(m.dilation), _pair(m.stride))
        out = _compose(rf, m.kernel_size, _pair(m.stride), (pt, pl), _pair(m.dilation))
    elif isinstance(m, L.DepthwiseSeparableConv2d):
        (pt, _), (pl, _) = _padding(m.padding, m.kernel_size, (1, 1), _pair(m.stride))
        out = _compose(rf, m.kernel_size, _pair(m.stride), (pt, pl))
    elif isinstance(m, L._Pool2d):
        out = _compose(rf, m.kernel_size, m.stride, m.padding)
    elif isinstance(m, (L.BatchNorm2d, L.GroupNorm, L.ReLU, L._DropoutBase)):
        out = rf
    elif isinstance(m, (L.GlobalAvgPool2d, L.Flatten, L.Linear)):
        out = None
    elif isinstance(m, L._Residual):
        names = {id(c): n for n, c in m.children()}
        sc = rf if m.shortcut is None else _walk(m.shortcut, rf, sub(names[id(m.shortcut)]), table)
        main: Optional[_RF] = rf
        order: Tuple[str, ...] = m._order
        mods = [getattr(m, a) for a in order if getattr(m, a) is not None]
        for c in mods:
            main = _walk(c, main, sub(names[id(c)]), table)
        assert main is not None and sc is not None     # convolutions keep the spatial axes
        out = _union(main, sc)
        last = mods[-1]
        if m.norm == "batch" and isinstance(last, L.BatchNorm2d):   # the residual is added inside it
            table[sub(names[id(last)])] = out
        if m.post is not None:
            table[sub(names[id(m.post)])] = out
    else:
        raise ValueError(f"layer: no receptive-field rule for {type(m).__name__} ({prefix or 'the model'})")
    if prefix:
        table[prefix] = out
    return out


def _rf_table(model: Any) -> dict:
    """The receptive field of every named module of a cnnkit model (None after the spatial axes
    are gone), keyed by dotted name."""
    table: dict = {}
    _walk(model, _RF((1, 1), (0, 0), (1, 1)), "", table)
    return table


def receptive_field(model: Any, layer: str, input_shape: Optional[Tuple[int, ...]] = None) -> ReceptiveField:
    """The input window each position of ``layer`` sees.

    For a :class:`cnnkit.nn.Module` it follows the layers' geometry exactly (kernel, stride,
    padding, dilation of every convolution and pooling, the union of both branches of a residual
    block). For a :class:`cnnkit.explain.TorchModel` it is measured: the bounding box of the
    support of the input gradient of one channel's neuron at two neighbouring positions near the
    centre, over a few random inputs of ``input_shape`` (a window larger than the input is
    clipped to it).

    Parameters
    ----------
    model : cnnkit.nn.Module or cnnkit.explain.TorchModel
    layer : str
        A dotted name from ``model.named_modules()`` with a 4-D output.
    input_shape : tuple of int, optional
        (C, H, W) of an input (TorchModel only).

    Returns
    -------
    ReceptiveField
        ``size``, ``stride`` and ``offset`` per axis (pairs of int); ``box(i, j)`` gives a
        position's window.

    Examples
    --------
    >>> from cnnkit import models
    >>> from cnnkit.explain.blocks import receptive_field
    >>> rf = receptive_field(models.resnet_small(1, 4, widths=(8, 16)), "3")
    >>> rf.size, rf.stride, rf.box(0, 0)
    ((13, 13), (2, 2), (-6, -6, 7, 7))
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a dotted module name (str), got {type(layer).__name__}")
    if _model._is_cnnkit(model):
        names = [n for n, _ in model.named_modules() if n]
        if layer not in names:
            raise ValueError(f"layer: no module {layer!r}; the model's modules are {names}")
        rf = _rf_table(model).get(layer)
        if rf is None:
            raise ValueError(f"layer: {layer!r} has no spatial output (it comes after the global pooling)")
        return ReceptiveField(rf.size, rf.jump, rf.start)
    from .torch_model import TorchModel
    if not isinstance(model, TorchModel):
        raise TypeError(f"model: receptive fields need a cnnkit.nn.Module or a cnnkit.explain.TorchModel, "
                        f"got {type(model).__name__}")
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"input_shape: expected (C, H, W) for a TorchModel, got {input_shape!r}")
    return _measured_rf(model, layer, tuple(int(v) for v in input_shape))


def _measured_rf(model: Any, layer: str, shape: tuple) -> ReceptiveField:
    torch = model._torch
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise ValueError(f"layer: no module {layer!r}; the model's modules are {names}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    with _model.explaining(model):
        c = model.capture(layer)
        try:
            with torch.enable_grad():
                model.forward(x)
                t = c.tensor
                if t is None or t.ndim != 4:
                    raise ValueError(f"layer: {layer!r} has no 4-D output on the gradient path")
                h, w = t.shape[2], t.shape[3]
                i, j = (h - 1) // 2, (w - 1) // 2
                boxes = []
                for (pi, pj) in ((i, j), (min(i + 1, h - 1), min(j + 1, w - 1))):
                    (g,) = torch.autograd.grad(t[:, :, pi, pj].sum(), model._x, retain_graph=True)
                    sup = np.abs(g.detach().numpy()).sum(axis=(0, 1)) > 0
                    rows, cols = np.nonzero(sup.any(1))[0], np.nonzero(sup.any(0))[0]
                    if rows.size == 0:
                        raise ValueError(f"layer: no input gradient reaches {layer!r}")
                    boxes.append((rows[0], cols[0], rows[-1] + 1, cols[-1] + 1, pi, pj))
        finally:
            model.release()
    (y0, x0, y1, x1, pi, pj), (y0b, x0b, _, _, pib, pjb) = boxes
    sy = (y0b - y0) // (pib - pi) if pib != pi else 1
    sx = (x0b - x0) // (pjb - pj) if pjb != pj else 1
    return ReceptiveField((int(y1 - y0), int(x1 - x0)), (int(max(sy, 1)), int(max(sx, 1))),
                          (int(y0 - max(sy, 1) * pi), int(x0 - max(sx, 1) * pj)))


# ---- top_activating ----------------------------------------------------------------------------------

def _dataset_images(dataset: Any, model: Any) -> np.ndarray:
    imgs = dataset if isinstance(dataset, np.ndarray) else getattr(dataset, "images", None)
    if not isinstance(imgs, np.ndarray):
        raise TypeError(f"dataset: expected a float32 image array or a cnnkit.data.ArrayDataset, "
                        f"got {type(dataset).__name__}")
    return _model.check_images(imgs, model, "dataset")


def top_activating(model: Any, dataset: Any, layer: str, channel: int, k: int, *,
                   batch_size: Optional[int] = None) -> TopActivating:
    """The k dataset examples that excite ``channel`` of ``layer`` most, and their crops at the
    receptive field of the position where it fires.

    Each example scores the channel's maximum over positions; examples are ranked by it (ties:
    the lower index first). The dataset goes through the model in chunks of ``batch_size``, and
    only each example's maximum and its position are kept, so memory does not grow with the
    dataset beyond two numbers per example.

    Parameters
    ----------
    model : cnnkit.nn.Module or cnnkit.explain.TorchModel
    dataset : float32 ndarray (N, C_in, H, W) / (N, H, W, C_in) in the model's layout, or a
        cnnkit.data.ArrayDataset holding such images
    layer : str
        A dotted name from ``model.named_modules()`` with a 4-D output.
    channel : int in [0, C)
    k : int in [1, N]
    batch_size : int, optional
        Examples per forward pass (default: what fits ``cnnkit.explain._model.MEMORY_BUDGET``).

    Returns
    -------
    TopActivating
        ``indices`` int64 (k,), ``values`` float32 (k,), ``positions`` int64 (k, 2),
        ``boxes`` int64 (k, 4) (y0, x0, y1, x1) half-open and unclipped, ``crops`` float32
        (k, size_h, size_w, C_in) channels last (zeros outside the image), ``receptive_field``,
        ``layer``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import models
    >>> from cnnkit.explain import top_activating
    >>> model = models.resnet_small(1, 4, widths=(8, 8), seed=0)
    >>> images = np.random.default_rng(0).random((10, 1, 16, 16), dtype=np.float32)
    >>> top = top_activating(model, images, "1", channel=3, k=2)
    >>> top.indices.shape, top.crops.shape
    ((2,), (2, 3, 3, 1))
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a dotted module name (str), got {type(layer).__name__}")
    channel = check_int("channel", channel, 0, "a channel index >= 0")
    k = check_int("k", k, 1, "an int >= 1")
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    images = _dataset_images(dataset, model)
    N = images.shape[0]
    if k > N:
        raise ValueError(f"k: expected at most the dataset's {N} examples, got {k}")
    layout = _model.layout_of(model)
    C_in, H, W = _model.spatial(images, layout)
    best = np.empty(N, np.float32)
    where = np.empty((N, 2), np.int64)
    with _model.explaining(model):
        name = _model.resolve_layer(model, layer, images)
        bs = _model.default_batch_size(model, images) if batch_size is None else batch_size
        for a, b in _model.chunks(N, bs):
            A, _, _, _ = _model.layer_pass(model, images[a:b], name, None, need_grad=False)
            A = _layer_nchw(A, layout, name)
            if channel >= A.shape[1]:
                raise ValueError(f"channel: expected a channel index in [0, {A.shape[1]}) of {name!r}, "
                                 f"got {channel}")
            m = A[:, channel].reshape(b - a, -1)
            arg = np.argmax(m, axis=1)
            best[a:b] = m[np.arange(b - a), arg]
            where[a:b, 0], where[a:b, 1] = np.divmod(arg, A.shape[3])
    rf = receptive_field(model, name, (C_in, H, W))
    idx = np.argsort(-best, kind="stable")[:k].astype(np.int64)
    boxes = np.array([rf.box(*where[i]) for i in idx], np.int64).reshape(k, 4)
    crops = np.zeros((k, rf.size[0], rf.size[1], C_in), np.float32)
    for r, i in enumerate(idx):
        y0, x0, y1, x1 = boxes[r]
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        img = images[i] if layout == "NHWC" else images[i].transpose(1, 2, 0)
        crops[r, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = img[cy0:cy1, cx0:cx1]
    return TopActivating(idx, best[idx].copy(), where[idx].copy(), boxes, crops, rf, name)
