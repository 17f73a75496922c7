"""Feature visualization: images optimized to excite a neuron, a channel, a layer or a class
(Olah, Mordvintsev and Schubert, "Feature Visualization", Distill 2017; the Lucid library).

:func:`feature_visualization` runs gradient ascent on an image parameterization
(:mod:`cnnkit.explain._fv_param`: a decorrelated Fourier spectrum by default) through random
transformations (:mod:`cnnkit.explain._fv_transforms`: pad, jitter, scale, rotate) with
:class:`cnnkit.optim.Adam`. Each step is

1. ``image = sigmoid(M irfft2(spectrum * scale))``, planar (N, C, H, W) in (0, 1);
2. ``x = transform(image)`` with freshly drawn per-image parameters (one bilinear read);
3. the model's forward up to the deepest layer the objective reads and no further
   (``model.forward(x, until=layer)``), the other layers' outputs from captures;
4. the objective's value and its gradients with respect to those outputs
   (:mod:`cnnkit.explain.objectives`), injected into the model's backward where the outputs arise
   (``model.backward(..., inject=...)``): the backward starts at the deepest layer, so a channel in
   the middle of a network costs the layers below it, twice, and nothing above;
5. the gradient back through the transform and the parameterization, then one Adam step
   (maximizing).
"""
from __future__ import annotations

import contextlib
import numbers
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .._validate import check_bool, check_int, check_real
from . import objectives as _objectives
from ._fv_param import ImageParam, estimate_color_basis
from ._fv_transforms import (Compose, Jitter, Pad, RandomRotate, RandomScale, Transform, standard_transforms,
                             warp, warp_backward)
from ._model import explaining, layout_of

__all__ = ["feature_visualization", "FeatureHistory", "estimate_color_basis",
           "standard_transforms", "Pad", "Jitter", "RandomScale", "RandomRotate", "Compose", "Transform"]

#: the input size used when the model does not say (``model.input_size``)
DEFAULT_SIZE = 64


class FeatureHistory(NamedTuple):
    """What :func:`feature_visualization` returns beside the images with ``return_history=True``:
    ``values`` float64 (steps,) the objective at every step (on that step's transformed images),
    ``final_value`` the objective on the returned images (untransformed, one more forward), and
    ``seconds`` the wall time of the optimization."""

    values: np.ndarray
    final_value: float
    seconds: float


# ---- the model's geometry -------------------------------------------------------------------------

def _receptive_side(model: Any, layer: Optional[str] = None) -> int:
    """The larger side in pixels of the input window one unit of ``layer`` sees (default: the
    widest window of any layer of the model), from
    :func:`cnnkit.explain.blocks.receptive_field`'s exact geometry; images smaller than it are
    refused.

    Parameters
    ----------
    model : cnnkit.nn.Sequential
    layer : str, optional

    Returns
    -------
    int

    Examples
    --------
    >>> from cnnkit import models
    >>> from cnnkit.explain.features import _receptive_side
    >>> _receptive_side(models.resnet_small(1, 4))
    25
    """
    from .blocks import _rf_table
    table = _rf_table(model)
    if layer is not None and table.get(layer) is not None:
        return int(max(table[layer].size))
    return int(max(max(rf.size) for rf in table.values() if rf is not None))


def _input_channels(model: Any) -> int:
    for _, m in model.named_modules():
        c = getattr(m, "in_channels", None)
        if isinstance(c, numbers.Integral):
            return int(c)
    raise ValueError("model: cannot tell its input channels (no module with in_channels)")


def _stop_point(model: Any, name: Optional[str]) -> Tuple[tuple, Optional[str], bool]:
    """(order key, the name ``forward(until=)`` takes, whether its return value is the layer's
    output) for a layer name (None: the model's output)."""
    from ..nn import Sequential
    if name is None:
        return (float("inf"),), None, True
    key: List[float] = []
    path: List[str] = []
    m = model
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not isinstance(m, Sequential):   # inside a block: the forward runs the whole block
            return tuple(key) + (float("inf"),), ".".join(path), False
        key.append(int(part))
        path.append(part)
        m = m.layers[int(part)]
    return tuple(key) + (float("inf"),), name, True


# ---- argument checks ------------------------------------------------------------------------------

def _check_size(size: Any, model: Any) -> Tuple[int, int]:
    if size is None:
        size = getattr(model, "input_size", None) or DEFAULT_SIZE
    if isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (check_int("size", v, 1, "an int or a pair (H, W) of ints >= 1") for v in size)
        return h, w
    v = check_int("size", size, 1, "an int or a pair (H, W) of ints >= 1")
    return v, v


def _check_transforms(transforms: Any, hw: Tuple[int, int]) -> Compose:
    if transforms is None or (isinstance(transforms, str) and transforms == "none"):
        return Compose([])
    if isinstance(transforms, str):
        if transforms != "standard":
            raise ValueError(f"transforms: expected 'standard', 'none', None or a list of transforms, "
                             f"got {transforms!r}")
        return standard_transforms(hw)
    if isinstance(transforms, Compose):
        return transforms
    if isinstance(transforms, Transform):
        return Compose([transforms])
    if isinstance(transforms, (list, tuple)):
        return Compose(transforms)
    raise TypeError(f"transforms: expected 'standard', 'none', None or a list of transforms, "
                    f"got {type(transforms).__name__}")


def _check_decorrelate(decorrelate: Any) -> Any:
    if isinstance(decorrelate, (bool, np.bool_)):
        return bool(decorrelate)
    if isinstance(decorrelate, (np.ndarray, list, tuple)):
        from ._fv_param import color_basis
        color_basis(decorrelate)
        return np.asarray(decorrelate, np.float64)
    raise TypeError(f"decorrelate: expected a bool or a (3, 3) colour basis, got {type(decorrelate).__name__}")


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(check_int("seed", seed, 0, "None, an int >= 0 or a numpy.random.Generator"))


def _to_layout(x: np.ndarray, layout: str, out: np.ndarray) -> np.ndarray:
    out[...] = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    return out


def _planar(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


# ---- the optimization -----------------------------------------------------------------------------

class _Runner:
    """One forward to the deepest layer the objective reads and one backward from there, with
    the objective's gradients injected at every layer it reads: ``until`` is where the forward
    stops; ``direct`` (when ``has_direct``) the layer whose output the forward returns (its
    gradient starts the backward), the other layers' outputs come from captures."""

    def __init__(self, model: Any, objective: Any, layout: str) -> None:
        self.model, self.objective, self.layout = model, objective, layout
        names = list(objective.layers)
        stops = {n: _stop_point(model, n) for n in names}
        self.until: Optional[str] = None
        self.direct: Optional[str] = None
        self.has_direct = False
        self.captures: Dict[str, Any] = {}
        if names:
            key, self.until, _ = max(stops.values(), key=lambda s: s[0])
            exact = [n for n in names if stops[n][0] == key and stops[n][2]]
            if exact:
                self.direct, self.has_direct = exact[0], True
            for n in names:
                if n is not None and not (self.has_direct and n == self.direct):
                    self.captures[n] = model.capture(n)
        self.pool: dict = {}

    def outputs(self, x: np.ndarray) -> Dict[Optional[str], np.ndarray]:
        """The outputs of the layers the objective reads, for the model input x."""
        out = self.model.forward(x, until=self.until)
        acts: Dict[Optional[str], np.ndarray] = {}
        if self.has_direct:
            acts[self.direct] = out
        for n, c in self.captures.items():
            acts[n] = c.output
        return acts

    def value_and_grad(self, x: Optional[np.ndarray],
                       image: Optional[np.ndarray]) -> Tuple[float, Optional[np.ndarray], Any]:
        """(objective value, d value / d x in x's layout or None, the context) for the model
        input x and the (planar) image the objective's regularizers read."""
        acts = self.outputs(x) if (self.objective.layers and x is not None) else {}
        ctx = _objectives.Context(acts, image, self.layout, self.pool)
        value = self.objective._eval(ctx)
        grads = ctx.grads
        if not grads:
            return value, None, ctx
        starts = self.has_direct and self.direct == self.until and self.direct in grads
        top = grads[self.direct] if starts else None
        inject = {n: g for n, g in grads.items() if not (starts and n == self.direct)}
        gx = self.model.backward(top, input_grad=True, inject=inject or None)
        return value, gx, ctx


def _step(runner: _Runner, param_obj: ImageParam, plan: Any, xbuf: np.ndarray) -> Tuple[float, np.ndarray]:
    """The objective's value for the current parameters seen through the transform ``plan``
    (None: no transform), and its gradient with respect to the parameters."""
    image = param_obj.image()
    xt = warp(image, plan) if plan is not None else image
    _to_layout(xt, runner.layout, xbuf)
    value, gx, ctx = runner.value_and_grad(xbuf, image)
    if gx is not None:
        gt = _planar(gx, runner.layout)
        g_img = warp_backward(gt, plan) if plan is not None else np.array(gt, np.float32)
    else:
        g_img = np.zeros(image.shape, np.float32)
    if ctx._image_grad is not None:
        g_img += ctx._image_grad
    return value, param_obj.backward(g_img)


def feature_visualization(model: Any, objective: Any, *, size: Union[None, int, Tuple[int, int]] = None,
                          batch: int = 1, steps: int = 512, lr: float = 0.05, param: str = "fft",
                          decorrelate: Any = True, transforms: Any = "standard", seed: Any = None,
                          progress: bool = True, return_history: bool = False) -> Any:
    """Images that maximize ``objective`` on ``model`` (Olah et al., 2017; Lucid's ``render_vis``).

    Parameters
    ----------
    model : cnnkit.nn.Sequential
        Any model of :mod:`cnnkit.models` (either layout) or another Sequential of cnnkit layers;
        it runs in eval mode without parameter gradients, and its modes, captures, ReLU rule,
        gradients and training buffers are restored afterwards, also on an exception.
    objective : cnnkit.explain.objectives.Objective
        What to maximize, e.g. ``objectives.channel("3", 5)``; see
        :mod:`cnnkit.explain.objectives` (values are maximized; regularizers are negated penalties
        and are added).
    size : int or (int, int), optional
        The image size (H, W); default ``model.input_size`` if the model has one, else 64. At least
        the receptive field of the deepest layer read.
    batch : int
        Images optimized together (a :func:`~cnnkit.explain.objectives.diversity` term makes them
        differ; ``batch=i`` terms give each its own objective).
    steps : int >= 1
        Adam steps.
    lr : float
        Adam's learning rate (Lucid's 0.05).
    param : {"fft", "pixel"}
        The image's Fourier spectrum scaled by 1/f (Lucid's ``fft_image``, decay 1, initial
        standard deviation 0.01), or its raw pixels; both then colour-mixed and squashed by a
        sigmoid (:mod:`cnnkit.explain._fv_param`).
    decorrelate : bool or array_like (3, 3)
        Colour decorrelation with Lucid's ImageNet basis (True), a basis of your own (e.g.
        :func:`estimate_color_basis` of a dataset), or none (False). Only for 3-channel models.
    transforms : "standard", "none", None, or a list of transforms
        ``"standard"``: Lucid's pad 12 (grey), jitter 8, scale 0.9-1.1, rotate -10..10 degrees,
        jitter 4, with the pixel amounts scaled by ``min(H, W) / 224`` (:func:`standard_transforms`);
        or :class:`Pad`, :class:`Jitter`, :class:`RandomScale`, :class:`RandomRotate` of your own.
    seed : None, int or numpy.random.Generator
        The initial parameters and every transform's draws; the same seed gives the same images,
        bit for bit, at any thread count.
    progress : bool
        A tqdm bar.
    return_history : bool
        Also return a :class:`FeatureHistory` (objective values per step, the final value,
        seconds).

    Returns
    -------
    images : numpy.ndarray
        float32 (batch, H, W, C) in [0, 1], channels last whatever the model's layout (C the
        model's input channels).
    history : FeatureHistory
        Only with ``return_history=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import models
    >>> from cnnkit.explain import feature_visualization, objectives
    >>> model = models.resnet_small(1, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> img = feature_visualization(model, objectives.channel("2", 3), size=24, steps=8, seed=0,
    ...                             progress=False)
    >>> img.shape, img.dtype, bool(img.min() >= 0 and img.max() <= 1)
    ((1, 24, 24, 1), dtype('float32'), True)
    """
    from ..nn import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"model: expected a cnnkit.nn.Sequential (e.g. from cnnkit.models), got {type(model).__name__}")
    if not isinstance(objective, _objectives.Objective):
        raise TypeError(f"objective: expected a cnnkit.explain.objectives.Objective (e.g. objectives.channel(...)), "
                        f"got {type(objective).__name__}")
    hw = _check_size(size, model)
    batch = check_int("batch", batch, 1, "an int >= 1")
    steps = check_int("steps", steps, 1, "an int >= 1")
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    if not isinstance(param, str):
        raise TypeError(f"param: expected 'fft' or 'pixel', got {type(param).__name__}")
    if param not in ("fft", "pixel"):
        raise ValueError(f"param: expected 'fft' or 'pixel', got {param!r}")
    decorrelate = _check_decorrelate(decorrelate)
    tf = _check_transforms(transforms, hw)
    rng = _rng(seed)
    progress = check_bool("progress", progress)
    return_history = check_bool("return_history", return_history)
    names = dict(model.named_modules())
    layer_names = [n for n in names if n]
    for n in objective.layers:
        if n is not None and n not in names:
            raise ValueError(f"layer: no layer {n!r} in the model (objective {objective!r}); "
                             f"layers are {layer_names}")
    if not objective.layers and not objective.uses_image:
        raise ValueError("objective: expected at least one term")
    read = [n for n in objective.layers]
    deepest = max(read, key=lambda n: _stop_point(model, n)[0]) if read else None
    rf = _receptive_side(model, deepest) if read else 1
    if min(hw) < rf:
        raise ValueError(f"size: expected at least the receptive field of "
                         f"{'the model' if deepest is None else f'layer {deepest!r}'} ({rf} pixels), "
                         f"got {hw[0]}x{hw[1]}")
    channels = _input_channels(model)
    layout = layout_of(model)
    in_hw = tf.output_size(hw)
    from ..optim import Adam

    # where each Sequential's last forward stopped (the truncated forwards here change it)
    ran = [(m, m.__dict__.get("_ran")) for m in model.modules() if isinstance(m, Sequential)]
    with explaining(model), _restoring(ran):
        runner = _Runner(model, objective, layout)
        shape = (batch, channels) + in_hw if layout == "NCHW" else (batch,) + in_hw + (channels,)
        xbuf = np.empty(shape, np.float32)
        # a probe forward on grey images: the layers' shapes, checked against the objective
        if read:
            xbuf[...] = 0.5
            shapes = _probe_shapes(runner, xbuf)
            objective.check(shapes, layout)
        param_obj = ImageParam((batch, channels) + hw, param, decorrelate, rng)
        opt = Adam([param_obj.params], lr=lr, maximize=True)
        values = np.empty(steps, np.float64)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="feature visualization", unit="step", leave=False)
        t0 = time.perf_counter()
        try:
            for step in range(steps):
                plan = tf.plan(tf.sample(rng, batch, hw), hw) if len(tf) else None
                value, grad = _step(runner, param_obj, plan, xbuf)
                values[step] = value
                opt.step([grad])
                if bar is not None:
                    bar.update(1)
                    if step % 16 == 0 or step == steps - 1:
                        bar.set_postfix(objective=f"{value:.4g}")
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        image = param_obj.image()
        result = np.ascontiguousarray(image.transpose(0, 2, 3, 1), dtype=np.float32)
        if not return_history:
            return result
        final = _final_value(runner, image, layout)
    return result, FeatureHistory(values, float(final), seconds)


@contextlib.contextmanager
def _restoring(ran: List[Tuple[Any, Any]]) -> Iterator[None]:
    try:
        yield
    finally:
        for m, r in ran:
            m._ran = r


def _probe_shapes(runner: _Runner, x: np.ndarray) -> Dict[Optional[str], tuple]:
    return {n: tuple(a.shape) for n, a in runner.outputs(x).items()}


def _final_value(runner: _Runner, image: np.ndarray, layout: str) -> float:
    """The objective on the untransformed images (forward only)."""
    x = np.ascontiguousarray(image if layout == "NCHW" else image.transpose(0, 2, 3, 1), dtype=np.float32)
    acts = runner.outputs(x) if runner.objective.layers else {}
    return float(runner.objective._eval(_objectives.Context(acts, image, layout)))
