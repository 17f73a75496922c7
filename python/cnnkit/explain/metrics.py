"""Metrics that score attribution maps.

* Faithfulness (Petsiuk et al., 2018, "RISE"): :func:`deletion_auc` (remove the most important
  pixels first; the class probability should fall fast: lower is better) and
  :func:`insertion_auc` (add them to a blank image; it should rise fast: higher is better).
  Forward passes only, evaluated in chunks of ``batch_size`` perturbed images.
* Localization against ground truth (boxes or masks, e.g. from :func:`cnnkit.data.make_shapes`):
  :func:`pointing_game` (Zhang et al., 2016) and :func:`energy_pointing_game` (Wang et al., 2020,
  Score-CAM).
* Sanity (Adebayo et al., 2018): :func:`randomization_test`, cascading parameter randomization
  from the output layer down; maps that survive it do not depend on what the model learned.

Maps are (N, H, W) arrays, one per image (an input-shaped attribution is reduced by the maximum
of ``|a|`` over channels where the function knows the layout: :func:`cnnkit.explain.plot.as_maps`).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_int, check_real
from . import _model
from ._model import Target
from .plot import as_maps

__all__ = ["deletion_auc", "insertion_auc", "perturbation_curves", "pointing_game", "energy_pointing_game",
           "randomization_test", "RandomizationResult", "BASELINES", "DEFAULT_MAX_STEPS", "BLUR_SIGMA",
           "PASS_THRESHOLD"]

#: the named baselines of :func:`deletion_auc` and :func:`insertion_auc`
BASELINES = ("zero", "blur")
#: ``steps=None`` means ``min(H * W, DEFAULT_MAX_STEPS)``
DEFAULT_MAX_STEPS = 64
#: the "blur" baseline's Gaussian standard deviation, as a fraction of max(H, W)
BLUR_SIGMA = 0.05
#: :func:`randomization_test` passes when the mean |rank correlation of |map||, after
#: randomizing every layer, is below this
PASS_THRESHOLD = 0.5


# ---- argument checks -------------------------------------------------------------------------------

def _check_map_array(maps: Any, name: str = "maps") -> np.ndarray:
    if not isinstance(maps, np.ndarray):
        raise TypeError(f"{name}: expected a real numpy.ndarray, got {type(maps).__name__}")
    if maps.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real (float or int) array, got dtype {maps.dtype}")
    return maps


def _check_maps(maps: Any, shape: Tuple[int, int, int], x_shape: Optional[tuple] = None,
                layout: str = "NCHW") -> np.ndarray:
    """float64 (N, H, W) from (N, H, W) maps or (with ``x_shape``) an attribution of x's shape."""
    m = _check_map_array(maps)
    if x_shape is not None and m.shape == tuple(x_shape) and m.ndim == 4:
        m = as_maps(m, layout)
    if m.shape != tuple(shape):
        also = f" or x's shape {tuple(x_shape)}" if x_shape is not None else ""
        raise ValueError(f"maps: expected shape (N, H, W) = {tuple(shape)}{also}, got {m.shape}")
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError("maps: expected finite values, got NaN or infinity")
    return m


def _check_objects(objects: Any, shape: Tuple[int, int, int]) -> np.ndarray:
    """bool (N, H, W) masks from masks or int (N, 4) boxes (y0, x0, y1, x1), half-open."""
    N, H, W = shape
    if not isinstance(objects, np.ndarray):
        raise TypeError(f"masks_or_boxes: expected a bool (N, H, W) or int (N, 4) numpy.ndarray, "
                        f"got {type(objects).__name__}")
    if objects.dtype == np.bool_:
        if objects.shape != (N, H, W):
            raise ValueError(f"masks_or_boxes: expected masks of the maps' shape {(N, H, W)}, got {objects.shape}")
        return objects
    if objects.dtype.kind not in "iu":
        raise TypeError(f"masks_or_boxes: expected bool masks or integer boxes, got dtype {objects.dtype}")
    if objects.shape != (N, 4):
        raise ValueError(f"masks_or_boxes: expected boxes of shape (N, 4) = {(N, 4)} (y0, x0, y1, x1), "
                         f"got {objects.shape}")
    b = objects.astype(np.int64)
    ok = (0 <= b[:, 0]) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= H) & (0 <= b[:, 1]) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= W)
    if not np.all(ok):
        i = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"masks_or_boxes: expected non-empty boxes (y0, x0, y1, x1) with 0 <= y0 < y1 <= {H} and "
                         f"0 <= x0 < x1 <= {W}, got {tuple(int(v) for v in b[i])} for image {i}")
    ys, xs = np.arange(H), np.arange(W)
    rows = (ys[None] >= b[:, 0, None]) & (ys[None] < b[:, 2, None])
    cols = (xs[None] >= b[:, 1, None]) & (xs[None] < b[:, 3, None])
    return rows[:, :, None] & cols[:, None, :]


def _baseline(baseline: Any, x: np.ndarray, layout: str) -> np.ndarray:
    """float32 images of x's shape (and layout) that replace deleted pixels."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.zeros_like(x)
        if baseline == "blur":
            from scipy.ndimage import gaussian_filter
            _, H, W = _model.spatial(x, layout)
            sigma = BLUR_SIGMA * max(H, W)
            xn = _model.to_nchw(x, layout).astype(np.float64)
            return _model.from_nchw(gaussian_filter(xn, sigma=(0, 0, sigma, sigma)).astype(np.float32), layout)
        raise ValueError(f"baseline: expected one of {BASELINES}, a number or an array of x's shape, got {baseline!r}")
    if isinstance(baseline, np.ndarray):
        if baseline.dtype.kind not in "fiu":
            raise TypeError(f"baseline: expected a float array, got dtype {baseline.dtype}")
        try:
            b = np.broadcast_to(baseline, x.shape)
        except ValueError:
            raise ValueError(f"baseline: expected an array broadcastable to x's shape {x.shape}, "
                             f"got shape {baseline.shape}") from None
        if not np.all(np.isfinite(b)):
            raise ValueError("baseline: expected finite values, got NaN or infinity")
        return np.ascontiguousarray(b, dtype=np.float32)
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, (bool, np.bool_)):
        return np.full(x.shape, check_real("baseline", baseline), np.float32)
    raise TypeError(f"baseline: expected one of {BASELINES}, a number or a float array, got "
                    f"{type(baseline).__name__} {baseline!r}")


def _softmax_prob(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[np.arange(z.shape[0]), targets] / e.sum(axis=1)


# ---- deletion / insertion ---------------------------------------------------------------------------

@accepts_dlpack
def perturbation_curves(model: Any, x: np.ndarray, maps: Any, target: Target = None, *, mode: str = "deletion",
                        steps: Optional[int] = None, baseline: Any = "zero",
                        batch_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The deletion or insertion curve of every image, and the fraction of pixels at each point.

    Pixels are ranked by the map, most important first: the stable argsort of ``-map`` over the
    row-major pixel index (ties keep index order). At step ``k = 0 .. steps`` the first
    ``floor(k * H * W / steps)`` pixels of that order (all channels) are switched: "deletion"
    starts from x and replaces them by the baseline's pixels; "insertion" starts from the
    baseline and puts back x's pixels. The curve records the softmax probability of the target
    class. :func:`deletion_auc` and :func:`insertion_auc` integrate it.

    Parameters
    ----------
    model, x, maps, target, steps, baseline, batch_size : as in :func:`deletion_auc`
    mode : {"deletion", "insertion"}

    Returns
    -------
    curves : float64 ndarray (N, steps + 1)
    fractions : float64 ndarray (steps + 1,)
        ``floor(k * H * W / steps) / (H * W)``: 0 to 1.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    x = _model.check_images(x, model)
    layout = _model.layout_of(model)
    C, H, W = _model.spatial(x, layout)
    N, n = x.shape[0], H * W
    m = _check_maps(maps, (N, H, W), x.shape, layout)
    if steps is None:
        steps = min(n, DEFAULT_MAX_STEPS)
    steps = check_int("steps", steps, 1, f"an int in [1, H * W = {n}] or None")
    if steps > n:
        raise ValueError(f"steps: expected an int in [1, H * W = {n}] or None, got {steps}")
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    base = _baseline(baseline, x, layout)

    order = np.argsort(-m.reshape(N, n), axis=1, kind="stable")
    rank = np.empty((N, n), np.int64)                  # rank[i, p]: where pixel p comes in image i's order
    np.put_along_axis(rank, order, np.arange(n, dtype=np.int64)[None], axis=1)
    counts = np.arange(steps + 1, dtype=np.int64) * n // steps
    start, other = (x, base) if mode == "deletion" else (base, x)
    sn, on = _model.to_nchw(start, layout), _model.to_nchw(other, layout)
    P = steps + 1
    curves = np.empty((N, P), np.float64)
    with _model.explaining(model):
        logits = _model.logits_of(model, x)
        targets = _model.resolve_targets(target, logits)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        buf = np.empty((min(bs, N * P),) + x.shape[1:], np.float32)
        for a, b in _model.chunks(N * P, bs):
            img, step = np.divmod(np.arange(a, b), P)
            xb = buf[:b - a]
            vb = _model.to_nchw(xb, layout)
            switched = (rank[img] < counts[step][:, None]).reshape(b - a, 1, H, W)
            j = 0
            while j < b - a:                            # the rows of one image are consecutive
                i, k = img[j], j
                while k < b - a and img[k] == i:
                    k += 1
                vb[j:k] = sn[i]
                np.copyto(vb[j:k], on[i], where=switched[j:k])
                j = k
            out = _model._as_logits(model.forward(xb), b - a)
            curves[img, step] = _softmax_prob(out, targets[img])
    return curves, counts / n


def _auc(model, x, maps, target, mode, steps, baseline, batch_size, return_curves):
    return_curves = check_bool("return_curves", return_curves)
    curves, fractions = perturbation_curves(model, x, maps, target, mode=mode, steps=steps, baseline=baseline,
                                            batch_size=batch_size)
    auc = np.trapezoid(curves, fractions, axis=1)
    return (auc, curves) if return_curves else auc


@accepts_dlpack
def deletion_auc(model: Any, x: np.ndarray, maps: np.ndarray, target: Target = None, *,
                 steps: Optional[int] = None, baseline: Any = "zero", batch_size: Optional[int] = None,
                 return_curves: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Deletion (Petsiuk et al., 2018): remove pixels from x, most important first, and integrate
    the target class's softmax probability. **Lower is better**: a faithful map names the pixels
    whose removal destroys the class fastest.

    At step ``k = 0 .. steps`` the top ``floor(k * H * W / steps)`` pixels of the map's ranking
    (stable argsort of ``-map``: ties go to the lower row-major index) are replaced, in every
    channel, by the baseline's; the curve ``p_k`` is the softmax probability of the target class
    (:func:`perturbation_curves`). The score is the trapezoid rule of ``p_k`` over the fraction of
    pixels removed, ``floor(k * H * W / steps) / (H * W)`` in [0, 1] (``numpy.trapezoid``).

    Parameters
    ----------
    model : anything with ``forward(x) -> logits`` (a :class:`cnnkit.nn.Module`,
        :class:`cnnkit.explain.TorchModel`, ...)
    x : float32 ndarray (N, C, H, W) or (N, H, W, C), in the model's layout
    maps : real ndarray (N, H, W), or an attribution of x's shape (reduced by max |a| over
        channels). Only the ranking of each map matters.
    target : None (the predicted class), int, or one int per image
    steps : int in [1, H * W], optional
        Points of the curve besides the start; default ``min(H * W, 64)`` (RISE used one row of
        pixels per step, 224 steps at 224x224; 64 keeps the cost ``N * 65`` forwards while the
        trapezoid error stays far below the differences between methods).
    baseline : "zero", "blur", a number, or a float array broadcastable to x
        What deleted pixels become: zeros; a Gaussian blur of the image (per channel, standard
        deviation ``0.05 * max(H, W)`` pixels, reflected at the edges: RISE's insertion
        baseline); a constant; or given images.
    batch_size : int >= 1, optional
        Perturbed images per forward (default: a few hundred MB worth); no more than this many
        are held at once.
    return_curves : bool
        Also return the curves.

    Returns
    -------
    auc : float64 ndarray (N,)
        In [0, 1].
    curves : float64 ndarray (N, steps + 1), only with ``return_curves=True``
        ``curves[:, 0]`` is the probability on x, ``curves[:, -1]`` on the baseline.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> maps = explain.saliency(model, x)
    >>> auc = explain.metrics.deletion_auc(model, x, maps, steps=16)
    >>> auc.shape, auc.dtype
    ((2,), dtype('float64'))
    """
    return _auc(model, x, maps, target, "deletion", steps, baseline, batch_size, return_curves)


@accepts_dlpack
def insertion_auc(model: Any, x: np.ndarray, maps: np.ndarray, target: Target = None, *,
                  steps: Optional[int] = None, baseline: Any = "zero", batch_size: Optional[int] = None,
                  return_curves: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Insertion (Petsiuk et al., 2018): start from the baseline and put back x's pixels, most
    important first; integrate the target class's softmax probability. **Higher is better**: a
    faithful map names the pixels that restore the class fastest. The paper inserts into a
    blurred image (``baseline="blur"``); the default here is "zero" like :func:`deletion_auc`.

    Step ``k`` holds the baseline with the top ``floor(k * H * W / steps)`` pixels of the ranking
    (stable argsort of ``-map``) taken from x, in every channel; the rest is as in
    :func:`deletion_auc`.

    Parameters
    ----------
    model, x, maps, target, steps, baseline, batch_size, return_curves : as in :func:`deletion_auc`

    Returns
    -------
    auc : float64 ndarray (N,)
    curves : float64 ndarray (N, steps + 1), only with ``return_curves=True``
        ``curves[:, 0]`` is the probability on the baseline, ``curves[:, -1]`` on x.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> maps = explain.grad_cam(model, x)
    >>> auc, curves = explain.metrics.insertion_auc(model, x, maps, steps=16, return_curves=True)
    >>> auc.shape, curves.shape
    ((2,), (2, 17))
    """
    return _auc(model, x, maps, target, "insertion", steps, baseline, batch_size, return_curves)


# ---- localization -------------------------------------------------------------------------------------

@accepts_dlpack
def pointing_game(maps: np.ndarray, masks_or_boxes: np.ndarray, *, tolerance: float = 0) -> np.ndarray:
    """The pointing game (Zhang et al., 2016, "Top-down neural attention by excitation
    backprop"): a hit when the map's maximum lies on the object, or within ``tolerance`` pixels.

    The maximum is the first argmax in row-major order. Its distance to the object is the
    Euclidean distance between pixel centres to the nearest object pixel (0 on the object); a
    hit is a distance <= ``tolerance``. The paper uses 15 pixels at 224x224. A constant map has
    no maximum location and counts as a miss, as does an empty mask.

    Parameters
    ----------
    maps : real ndarray (N, H, W)
    masks_or_boxes : bool ndarray (N, H, W) object masks, or int ndarray (N, 4) boxes
        (y0, x0, y1, x1), half-open (:func:`cnnkit.data.make_shapes` gives both).
    tolerance : float >= 0
        In pixels.

    Returns
    -------
    bool ndarray (N,)
        The hits; the pointing-game accuracy is ``hits.mean()``.

    Examples
    --------
    >>> import numpy as np
    >>> maps = np.zeros((1, 8, 8)); maps[0, 2, 3] = 1.0
    >>> pointing_game(maps, np.array([[0, 0, 2, 8]])), pointing_game(maps, np.array([[0, 0, 2, 8]]), tolerance=1)
    (array([False]), array([ True]))
    """
    m = _check_map_array(maps)
    if m.ndim != 3 or min(m.shape) < 1:
        raise ValueError(f"maps: expected a non-empty (N, H, W) array, got shape {m.shape}")
    m = _check_maps(m, m.shape)
    N, H, W = m.shape
    obj = _check_objects(masks_or_boxes, m.shape)
    tol = check_real("tolerance", tolerance, lo=0.0)
    flat = m.reshape(N, -1)
    peak = np.argmax(flat, axis=1)
    py, px = np.divmod(peak, W)
    constant = flat.max(axis=1) == flat.min(axis=1)
    hits = np.zeros(N, dtype=bool)
    for i in range(N):
        if constant[i]:
            continue
        if obj[i, py[i], px[i]]:
            hits[i] = True
        elif tol > 0:
            ys, xs = np.nonzero(obj[i])
            if ys.size:
                d2 = ((ys - py[i]) ** 2 + (xs - px[i]) ** 2).min()
                hits[i] = float(d2) <= tol * tol
    return hits


@accepts_dlpack
def energy_pointing_game(maps: np.ndarray, masks_or_boxes: np.ndarray) -> np.ndarray:
    """The energy-based pointing game (Wang et al., 2020, Score-CAM): the share of the map's
    positive mass on the object, ``sum(relu(map) * object) / sum(relu(map))``; 0 for a map with
    no positive value. Higher is better; a map spread evenly scores the object's area fraction.

    Parameters
    ----------
    maps : real ndarray (N, H, W)
    masks_or_boxes : bool ndarray (N, H, W) masks, or int ndarray (N, 4) boxes (y0, x0, y1, x1),
        half-open

    Returns
    -------
    float64 ndarray (N,)
        In [0, 1].
    """
    m = _check_map_array(maps)
    if m.ndim != 3 or min(m.shape) < 1:
        raise ValueError(f"maps: expected a non-empty (N, H, W) array, got shape {m.shape}")
    m = _check_maps(m, m.shape)
    obj = _check_objects(masks_or_boxes, m.shape)
    pos = np.maximum(m, 0.0).reshape(m.shape[0], -1)
    total = pos.sum(axis=1)
    inside = (pos * obj.reshape(m.shape[0], -1)).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


# ---- cascading randomization ----------------------------------------------------------------------------

@dataclasses.dataclass
class RandomizationResult:
    """What :func:`randomization_test` found.

    Attributes
    ----------
    layers : list of str
        The randomized layers, in randomization order (output side first).
    spearman : float64 ndarray (len(layers), N)
        Row l: per image, the Spearman rank correlation between the signed map on the original
        model and the map after randomizing ``layers[:l + 1]``.
    spearman_abs : float64 ndarray (len(layers), N)
        The same for ``|map|`` (Adebayo et al.'s main measure).
    passed : bool
        ``mean(|spearman_abs[-1]|) < PASS_THRESHOLD`` (0.5): the maps no longer resemble the
        original once every layer is random. False when no layer was randomized.
    targets : int64 ndarray (N,)
        The classes every map explains (fixed on the original model).
    """

    layers: List[str]
    spearman: np.ndarray
    spearman_abs: np.ndarray
    passed: bool
    targets: np.ndarray


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(a, axis=1)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the Pearson correlation of the average ranks (Spearman's rho). 1 for equal rows;
    0 when either row is constant and they differ (no ranking to compare)."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    rho = np.divide((ra * rb).sum(axis=1), den, out=np.zeros(a.shape[0]), where=den > 0)
    rho[np.all(a == b, axis=1)] = 1.0
    return np.clip(rho, -1.0, 1.0)


def _randomization_layers(model: Any, layers: Optional[Sequence[str]]) -> List[Tuple[str, Any]]:
    named = list(model.named_modules())
    if layers is None:
        return [(n, m) for n, m in reversed(named) if m._param_names]
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers: expected a list of module names or None, got {type(layers).__name__} {layers!r}")
    mods = dict(named)
    out: List[Tuple[str, Any]] = []
    for i, name in enumerate(layers):
        if not isinstance(name, str):
            raise TypeError(f"layers[{i}]: expected a module name (str), got {type(name).__name__} {name!r}")
        if name not in mods:
            raise ValueError(f"layers: no module {name!r}; the model's modules are {[n for n, _ in named if n]}")
        if not any(sub._param_names for sub in mods[name].modules()):
            raise ValueError(f"layers: module {name!r} has no parameters to randomize")
        if name in [n for n, _ in out]:
            raise ValueError(f"layers: {name!r} is named twice")
        out.append((name, mods[name]))
    return out


def _reinitialize(module: Any, rng: np.random.Generator) -> None:
    """Draw every parameter of ``module`` (and its sub-modules) afresh, in place."""
    for sub in module.modules():
        for pname in sub._param_names:
            p = sub.params[pname]
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
            else:
                w = sub.params.get(pname[:-4] + "weight") if pname.endswith("bias") else None
                fan_in = int(np.prod(w.shape[1:])) if w is not None and w.ndim >= 2 else 0
            bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 1.0
            p[...] = rng.uniform(-bound, bound, p.shape)


def _maps_of(method: Callable, model: Any, x: np.ndarray, targets: np.ndarray, layout: str, kw: dict) -> np.ndarray:
    out = method(model, x, targets, **kw)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"method: expected it to return a numpy.ndarray, got {type(out).__name__}")
    N, (_, H, W) = x.shape[0], _model.spatial(x, layout)
    if out.ndim == 4 and out.shape == x.shape:
        out = as_maps(out, layout)
    if out.shape != (N, H, W) or out.dtype.kind not in "fiu":
        raise ValueError(f"method: expected real maps of shape (N, H, W) = {(N, H, W)} or x's shape, "
                         f"got {out.dtype} {out.shape}")
    return out.reshape(N, H * W).astype(np.float64)


@accepts_dlpack
def randomization_test(model: Any, method: Union[Callable, str], x: np.ndarray, target: Target = None, *,
                       layers: Optional[Sequence[str]] = None, seed: Union[None, int, np.random.Generator] = 0,
                       **method_kwargs: Any) -> RandomizationResult:
    """Cascading model-parameter randomization (Adebayo et al., 2018, "Sanity checks for
    saliency maps"): randomize the layers one after another from the output down, and measure
    how much the maps still resemble those of the trained model. A method whose maps survive
    (high correlation) does not explain what the model learned.

    First the maps ``method(model, x, targets, **method_kwargs)`` on the model as it is, with
    ``targets`` fixed to ``target`` or, for None, to the original model's predictions (so every
    later map explains the same class). Then, cumulatively, each layer's parameters are drawn
    afresh from ``numpy.random.default_rng(seed)``, with cnnkit's (PyTorch's) default
    initialization: weights (2-D and up) and their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with ``fan_in = prod(weight.shape[1:])``; other 1-D parameters (norm scales and shifts,
    initialized to constants) U(-1, 1). After each layer the maps are computed again and
    compared with the originals per image by Spearman's rank correlation (average ranks), of the
    signed maps and of their absolute values; equal maps correlate 1, a constant map that
    differs 0.

    The parameters, the gradient arena and the buffers (batch-norm running statistics) are
    restored bit for bit afterwards, also when ``method`` raises.

    Parameters
    ----------
    model : cnnkit.nn.Module
    method : callable ``method(model, x, target, **kw) -> maps``, or a name from
        :data:`cnnkit.explain.METHODS`
        Maps of shape (N, H, W), or of x's shape (reduced by max |a| over channels).
    x : float32 ndarray (N, C, H, W) or (N, H, W, C), in the model's layout
    target : None (the predicted class), int, or one int per image
    layers : list of str, optional
        Module names (``model.named_modules()``) to randomize, in this order; a module's
        sub-modules are randomized with it. Default: every module that owns parameters, in the
        reverse of ``named_modules()`` order (the output layer first).
    seed : None, int or numpy.random.Generator
        Draws the new parameters (not the method's own randomness).
    **method_kwargs
        Passed to ``method``. A stochastic method (SmoothGrad, RISE) needs a fixed seed of its
        own, or its maps differ between calls even on the same model. A method keyword named like
        one of this function's (``target``, ``layers``, ``seed``) must be bound first:
        ``randomization_test(model, functools.partial(explain.rise, seed=1), x, seed=0)``.

    Returns
    -------
    RandomizationResult
        ``layers``, ``spearman`` and ``spearman_abs`` (float64, (len(layers), N)), ``passed``
        (``mean(|spearman_abs[-1]|) < 0.5``; a method whose maps do not change fails, and so does
        an empty ``layers``) and the ``targets``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> r = explain.metrics.randomization_test(model, explain.saliency, x)
    >>> r.spearman_abs.shape == (len(r.layers), 2)
    True
    """
    if not _model._is_cnnkit(model):
        raise TypeError(f"model: randomization_test needs a cnnkit.nn.Module (it rewrites the parameters), "
                        f"got {type(model).__name__}")
    if isinstance(method, str):
        from .plot import METHODS
        if method not in METHODS:
            raise ValueError(f"method: no attribution method {method!r}; the methods are {list(METHODS)}")
        method = METHODS[method]
    if not callable(method):
        raise TypeError(f"method: expected a callable method(model, x, target, **kw) or a method name, "
                        f"got {type(method).__name__}")
    x = _model.check_images(x, model)
    layout = _model.layout_of(model)
    chosen = _randomization_layers(model, layers)
    seed_ok = seed is None or isinstance(seed, (numbers.Integral, np.random.Generator))
    if isinstance(seed, (bool, np.bool_)) or not seed_ok:
        raise TypeError(f"seed: expected None, a non-negative int or a numpy.random.Generator, got "
                        f"{type(seed).__name__} {seed!r}")
    if isinstance(seed, numbers.Integral) and seed < 0:
        raise ValueError(f"seed: expected None, a non-negative int or a numpy.random.Generator, got {seed!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    # parameters and buffers by name (live views, wherever the arena is), and the gradients
    saved_state, grads = model.state_dict(), model.gradients()
    saved_grads = [g.copy() for g in grads]
    L, N = len(chosen), x.shape[0]
    rho = np.empty((L, N), np.float64)
    rho_abs = np.empty((L, N), np.float64)
    try:
        with _model.explaining(model):
            targets = _model.resolve_targets(target, _model.logits_of(model, x))
        original = _maps_of(method, model, x, targets, layout, method_kwargs)
        for li, (_, module) in enumerate(chosen):
            _reinitialize(module, rng)
            maps = _maps_of(method, model, x, targets, layout, method_kwargs)
            rho[li] = _rank_correlation(original, maps)
            rho_abs[li] = _rank_correlation(np.abs(original), np.abs(maps))
    finally:
        model.load_state_dict(saved_state)
        for g, saved in zip(grads, saved_grads):
            g[...] = saved
    passed = bool(L > 0 and np.mean(np.abs(rho_abs[-1])) < PASS_THRESHOLD)
    return RandomizationResult([n for n, _ in chosen], rho, rho_abs, passed, targets)
