"""The model an attribution method explains, and the state it must leave as it found it.

The protocol (a :class:`cnnkit.nn.Module` has all of it; :class:`cnnkit.explain.TorchModel`
gives a PyTorch module all of it):

* ``forward(x) -> logits``: (N, K) for a batch x. Every method needs this, and perturbation
  methods (occlusion, RISE, Score-CAM, Eigen-CAM's forward, the metrics) need nothing else.
* ``backward(grad_logits, input_grad=True) -> grad_x``: after ``forward(x)``, the gradient of
  ``sum(grad_logits * logits)`` with respect to x (gradient methods).
* ``capture(name) -> c`` whose ``c.output`` and ``c.grad`` the next forward/backward fill with
  that layer's output and the gradient reaching it, ``release()`` to stop every capture, and
  ``named_modules()`` yielding ``(name, module)`` (layer methods: the CAMs).
* ``set_relu_backward(mode)`` with mode "standard", "guided" or "deconvnet" (guided backprop
  and deconvnet), or ``set_guided_backprop(enabled)`` for guided backprop alone.
* optional: ``training``, ``train(mode)``, ``eval()``; ``layout`` ("NCHW" or "NHWC");
  ``set_param_grads(enabled)`` to skip parameter gradients.

:func:`explaining` puts the model in eval mode for the duration of a method and restores every
piece of state it touched (modes, captures, ReLU rule, parameter gradients, the cnnkit modules'
training buffers, which attribution passes never touch: they run on a set of their own, kept for
the next call until :func:`release_buffers`) in a ``finally``, so an exception inside a method
leaks nothing.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from .._validate import check_int, check_real

__all__ = ["explaining", "check_images", "resolve_targets", "resolve_layer", "layout_of", "chunks",
           "default_batch_size", "check_target", "targets_for", "logits_of", "input_gradients", "layer_pass", "one_hot", "to_nchw",
           "from_nchw", "Target", "check_baseline", "release_buffers"]

Target = Union[None, int, Sequence[int], np.ndarray]

#: bytes a default batch of perturbed inputs (with the activations they create) may take
MEMORY_BUDGET = 256 << 20


def _is_cnnkit(model: Any) -> bool:
    from ..nn import Module
    return isinstance(model, Module)


def _need(model: Any, attrs: Sequence[str], what: str) -> None:
    missing = [a for a in attrs if not callable(getattr(model, a, None))]
    if missing:
        raise TypeError(f"model: {what} needs a model with {', '.join(m + '()' for m in missing)} "
                        f"(a cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with that protocol), "
                        f"got {type(model).__name__}")


def layout_of(model: Any) -> str:
    """The model's input layout: its ``layout`` attribute, else the first sub-module's that has
    one, else "NCHW"."""
    lay = getattr(model, "layout", None)
    if lay in ("NCHW", "NHWC"):
        return lay
    named = getattr(model, "named_modules", None)
    if callable(named) and _is_cnnkit(model):
        for _, m in named():
            lay = getattr(m, "layout", None) if m is not model else None
            if lay in ("NCHW", "NHWC"):
                return lay
    return "NCHW"


def check_images(x: Any, model: Any, name: str = "x") -> np.ndarray:
    """x as a float32 (N, C, H, W) / (N, H, W, C) batch in the model's layout (no copy when it
    already is one, read-only use only)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a float32 numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name}: expected a float32 numpy.ndarray, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D batch (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[0] < 1 or min(x.shape[1:]) < 1:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return np.ascontiguousarray(x)


def to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """A (N, C, H, W) view of a batch in ``layout``."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def from_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """A contiguous batch in ``layout`` from a (N, C, H, W) array."""
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def spatial(x: np.ndarray, layout: str) -> tuple:
    """(C, H, W) of a batch in ``layout``."""
    return (x.shape[1], x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[3], x.shape[1], x.shape[2])


def chunks(total: int, batch_size: int) -> Iterator[tuple]:
    """(start, stop) of consecutive chunks of at most ``batch_size``, sized evenly (the sizes
    differ by at most one, so a model's buffers are reallocated at most once per call)."""
    if total <= 0:
        return
    n = -(-total // batch_size)
    base, extra = divmod(total, n)
    start = 0
    for i in range(n):
        stop = start + base + (1 if i < extra else 0)
        yield start, stop
        start = stop


def check_batch_size(batch_size: Optional[int], per_input_bytes: int) -> int:
    """``batch_size`` checked (an int >= 1), or the default: as many inputs as fit in
    :data:`MEMORY_BUDGET` at ``per_input_bytes`` each (at least 1, at most 512)."""
    if batch_size is None:
        return int(max(1, min(512, MEMORY_BUDGET // max(1, per_input_bytes))))
    return check_int("batch_size", batch_size, 1, "a positive int or None")


def default_batch_size(model: Any, x: np.ndarray) -> int:
    """Inputs per forward/backward that fit :data:`MEMORY_BUDGET`: from the bytes one input of
    this shape cost a cnnkit model's buffers on an earlier call (measured when a method
    finishes, see :func:`explaining`), else estimated as 64 input-sized arrays."""
    per = 64 * x[0].nbytes
    cost = getattr(model, "__dict__", {}).get("_explain_cost", {}).get(tuple(x.shape[1:]))
    if cost:
        per = cost
    return check_batch_size(None, per)


def _measure_cost(model: Any) -> None:
    """Record the bytes per input of the buffers the last attribution pass used (cnnkit)."""
    batch, total = None, 0
    shape = None
    for m in model.modules():
        for k, a in m._ws.items():
            if isinstance(a, np.ndarray) and a.ndim >= 1 and isinstance(k, str):
                if batch is None:
                    batch = a.shape[0]
                if a.shape[0] == batch:
                    total += a.nbytes
        x = getattr(m, "_x", None)
        if shape is None and isinstance(x, np.ndarray) and x.ndim == 4:
            shape = tuple(x.shape[1:])
    if batch and total and shape:
        model.__dict__.setdefault("_explain_cost", {})[shape] = 2 * total // batch


def one_hot(targets: np.ndarray, K: int, dtype: Any = np.float32) -> np.ndarray:
    g = np.zeros((targets.size, K), dtype)
    g[np.arange(targets.size), targets] = 1
    return g


def _as_logits(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"model: forward must return logits of shape (N, K) = ({n}, K), got shape {y.shape}")
    return y


def logits_of(model: Any, x: np.ndarray) -> np.ndarray:
    """A copy of ``model.forward(x)`` as float32 (N, K)."""
    return np.array(_as_logits(model.forward(x), x.shape[0]), dtype=np.float32)


def check_target(target: Target, n: int) -> Target:
    """``target`` checked for its type and length before any model call: None, an int, or an
    int64 array of n classes (their range is checked against the logits, :func:`targets_for`)."""
    if target is None:
        return None
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target: expected None, an int or one int per image, got {target!r}")
    if isinstance(target, (int, np.integer)):
        if target < 0:
            raise ValueError(f"target: expected a class index >= 0, got {int(target)}")
        return int(target)
    try:
        arr = np.asarray(target)
    except Exception:  # pragma: no cover - exotic sequences
        raise TypeError(f"target: expected None, an int or one int per image, got {type(target).__name__}")
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"target: expected None, an int or a 1-D sequence of ints, got {arr.dtype} "
                        f"of shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"target: expected one class per image ({n}), got {arr.shape[0]}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"target: expected class indices >= 0, got {int(arr.min())}")
    return arr.astype(np.int64)


def targets_for(spec: Target, logits: np.ndarray, a: int = 0) -> np.ndarray:
    """int64 classes for the images a .. a + len(logits) from a checked ``spec``: the argmax of
    the logits for None; ValueError naming ``target`` outside [0, K)."""
    n, K = logits.shape
    if spec is None:
        return np.argmax(logits, axis=1).astype(np.int64)
    t = np.full(n, spec, np.int64) if isinstance(spec, int) else np.asarray(spec[a:a + n], np.int64)
    if t.size and t.max() >= K:
        raise ValueError(f"target: expected classes in [0, {K}), got {int(t.max())}")
    return t


def resolve_targets(target: Target, logits: np.ndarray) -> np.ndarray:
    """int64 (N,) class indices for the logits (N, K): the predicted class for None, one int for
    every image, or one per image; TypeError/ValueError naming ``target``."""
    return targets_for(check_target(target, logits.shape[0]), logits)


class _OrderProbe:
    """Stands in for a Capture: records when the layer's forward finished and its output shape."""

    counter = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.order = -1
        self.shape: tuple = ()
        self.grad = None

    @property
    def output(self):
        return None

    @output.setter
    def output(self, y):
        _OrderProbe.counter += 1
        self.order = _OrderProbe.counter
        self.shape = tuple(np.shape(y))


def layer_names(model: Any) -> list:
    return [n for n, _ in model.named_modules() if n]


def resolve_layer(model: Any, layer: Optional[str], x: np.ndarray) -> str:
    """``layer`` checked against ``model.named_modules()``, or the default: the module whose
    forward finished last with a 4-D output (a probe forward of one image)."""
    _need(model, ("named_modules", "capture", "release"), "a layer method")
    names = layer_names(model)
    if layer is not None:
        if not isinstance(layer, str):
            raise TypeError(f"layer: expected a dotted module name (str) or None, got {type(layer).__name__}")
        if layer not in names:
            raise ValueError(f"layer: no module {layer!r}; the model's modules are {names}")
        return layer
    cache = getattr(model, "__dict__", {}).setdefault("_explain_layer", {})
    key = (tuple(x.shape[1:]), len(names))
    if key in cache:
        return cache[key]
    cache[key] = name = _default_layer(model, names, x)
    return name


def _default_layer(model: Any, names: list, x: np.ndarray) -> str:
    if _is_cnnkit(model):
        probes = []
        mods = dict(model.named_modules())
        for n in names:
            p = _OrderProbe(n)
            mods[n]._captures.append(p)
            probes.append(p)
        try:
            model.forward(x[:1])
        finally:
            for n, p in zip(names, probes):
                mods[n]._captures.remove(p)
        shapes = {p.name: (p.order, p.shape) for p in probes}
    else:
        caps = {n: model.capture(n) for n in names}
        try:
            model.forward(x[:1])
            shapes = {n: (getattr(c, "order", i), np.shape(c.output) if c.output is not None else ())
                      for i, (n, c) in enumerate(caps.items())}
        finally:
            model.release()
    four = [(o, n) for n, (o, s) in shapes.items() if len(s) == 4 and o >= 0]
    if not four:
        raise ValueError("layer: the model has no module with a 4-D output; name one with layer=")
    return max(four)[1]


@contextlib.contextmanager
def explaining(model: Any, *, relu: str = "standard", param_grads: bool = False) -> Iterator[Any]:
    """Eval mode, the given ReLU backward rule and (cnnkit) no parameter gradients for the body;
    afterwards every module's mode, ReLU rule and parameter-gradient flag, the gradient arena,
    the model's captures and the cnnkit modules' buffers are as they were, also on an exception.

    Parameters
    ----------
    model : cnnkit.nn.Module, TorchModel or an object with ``forward``
    relu : {"standard", "guided", "deconvnet"}
        The ReLU backward rule for the body (see :meth:`cnnkit.nn.Module.set_relu_backward`).
    param_grads : bool
        Whether a cnnkit model's ``backward`` computes parameter gradients in the body.

    Yields
    ------
    model
        The model itself, set up as above.

    Raises
    ------
    TypeError
        A model without ``forward``, or without a way to set a non-standard ``relu`` rule.

    Examples
    --------
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> with explain.explaining(model) as m:
    ...     m.training
    False
    >>> model.training
    True
    """
    _need(model, ("forward",), "every method")
    if _is_cnnkit(model):
        mods = model.modules()
        saved = [(m, m.training, getattr(m, "relu_mode", None), m.param_grads, m._ws, list(m._captures))
                 for m in mods]
        grads = model.arena[1].copy()
        for m in mods:  # the explain-time buffers of the last call (fresh pages cost as much as a pass)
            m._ws = m.__dict__.get("_explain_ws") or {}
        try:
            model.eval()
            model.set_relu_backward(relu)
            model.set_param_grads(param_grads)
            yield model
        finally:
            try:
                _measure_cost(model)
            except Exception:  # pragma: no cover - a measurement never masks the real error
                pass
            for m, training, relu_mode, pg, ws, caps in saved:
                m.training = training
                if relu_mode is not None:
                    m.relu_mode = relu_mode
                m.param_grads = pg
                m.__dict__["_explain_ws"] = m._ws
                m._ws = ws
                m._captures[:] = caps
            model.arena[1][...] = grads
        return
    prev = getattr(model, "training", None)
    relu_set = None
    try:
        if callable(getattr(model, "eval", None)):
            model.eval()
        if relu != "standard":
            if callable(getattr(model, "set_relu_backward", None)):
                model.set_relu_backward(relu)
                relu_set = "mode"
            elif relu == "guided" and callable(getattr(model, "set_guided_backprop", None)):
                model.set_guided_backprop(True)
                relu_set = "guided"
            else:
                raise TypeError(f"model: {relu} needs set_relu_backward(mode)"
                                f"{' or set_guided_backprop(enabled)' if relu == 'guided' else ''}, "
                                f"got {type(model).__name__}")
        yield model
    finally:
        if relu_set == "mode":
            model.set_relu_backward("standard")
        elif relu_set == "guided":
            model.set_guided_backprop(False)
        if callable(getattr(model, "release", None)) and not _is_cnnkit(model):
            model.release()
        if prev is not None and callable(getattr(model, "train", None)):
            model.train(bool(prev))


def release_buffers(model: Any) -> None:
    """Free the buffers a cnnkit model keeps for attribution calls. :func:`explaining` gives
    every module of a cnnkit model its own set of buffers while a method runs (the training
    buffers stay untouched) and keeps that set for the next call, so repeated explanations do
    not pay for fresh pages; it holds at most a few hundred MB (the default ``batch_size``).

    Parameters
    ----------
    model : cnnkit.nn.Module

    Raises
    ------
    TypeError
        ``model`` is not a :class:`cnnkit.nn.Module`.
    """
    from ..nn import Module
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a cnnkit.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        m.__dict__.pop("_explain_ws", None)


def input_gradients(model: Any, x: np.ndarray, targets: Any, batch_size: int,
                    weights: Optional[np.ndarray] = None, out: Optional[np.ndarray] = None,
                    logits_out: Optional[np.ndarray] = None) -> np.ndarray:
    """d logit[target] / dx for every input of x (float32, x's shape), computed in chunks of
    ``batch_size``; ``targets`` is a checked spec (:func:`check_target`: None means each input's
    predicted class, resolved from the same forward pass) or an int64 array; ``weights`` (N,)
    scales each input's one-hot gradient; ``logits_out`` (N,) receives the target logits."""
    _need(model, ("forward", "backward"), "a gradient method")
    out = np.empty(x.shape, np.float32) if out is None else out
    for a, b in chunks(x.shape[0], batch_size):
        xb = x[a:b]
        logits = _as_logits(model.forward(xb), b - a)
        t = targets_for(targets, logits, a)
        if logits_out is not None:
            logits_out[a:b] = logits[np.arange(b - a), t]
        g = one_hot(t, logits.shape[1], np.float32)
        if weights is not None:
            g *= weights[a:b, None]
        gx = model.backward(g, input_grad=True)
        out[a:b] = np.asarray(gx).reshape(xb.shape)
    return out


def _accepts_until(model: Any) -> bool:
    """Whether ``model.backward`` takes ``until=`` (cnnkit.nn.Sequential, TorchModel)."""
    import inspect
    try:
        return "until" in inspect.signature(model.backward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def layer_pass(model: Any, x: np.ndarray, layer: str, targets: Any, need_grad: bool = True) -> tuple:
    """One forward (and, with ``need_grad``, one backward of the target logits) capturing
    ``layer``: (activations, gradients or None, logits, targets), copies, in the layer's own
    layout; ``targets`` is a checked spec (:func:`check_target`) or an int64 array."""
    c = model.capture(layer)
    try:
        logits = np.array(_as_logits(model.forward(x), x.shape[0]), dtype=np.float32)
        targets = targets_for(targets, logits)
        grads = None
        if need_grad:
            _need(model, ("backward",), "a gradient CAM")
            g = one_hot(targets, logits.shape[1])
            if _accepts_until(model):   # stop where the layer's gradient is known
                model.backward(g, input_grad=False, until=layer)
            else:
                model.backward(g, input_grad=not _is_cnnkit(model))
            if c.grad is None:
                raise ValueError(f"layer: no gradient reached {layer!r} (is it on the path to the logits?)")
            grads = np.asarray(c.grad, dtype=np.float32)
        if c.output is None:
            raise ValueError(f"layer: {layer!r} produced no output in the forward pass")
        acts = np.asarray(c.output, dtype=np.float32)
    finally:
        model.release()
    return acts, grads, logits, targets


def check_baseline(baseline: Any, x: np.ndarray) -> np.ndarray:
    """A number or a float array broadcast (read-only) to x's shape as float32; TypeError /
    ValueError naming ``baseline``."""
    if isinstance(baseline, np.ndarray):
        b = baseline
        if b.dtype.kind not in "fiu":
            raise TypeError(f"baseline: expected a number or a float array, got dtype {b.dtype}")
        try:
            b = np.broadcast_to(b.astype(np.float32), x.shape)
        except ValueError:
            raise ValueError(f"baseline: expected a number or an array broadcastable to {x.shape}, "
                             f"got shape {baseline.shape}") from None
        if not np.all(np.isfinite(b)):
            raise ValueError("baseline: expected finite values")
        return b
    v = check_real("baseline", baseline)
    return np.broadcast_to(np.float32(v), x.shape)
