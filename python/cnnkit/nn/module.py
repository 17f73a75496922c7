"""The module base: parameters in one flat arena, reused buffers, capture hooks, state dicts.

Every module has ``forward(x)`` and ``backward(grad)``. ``backward`` *writes* (does not
accumulate) the gradients of the module's parameters and returns the gradient with respect to
its input. Parameters and gradients of a model are views into two flat float32 arrays (the
arenas), in module order with each module's weight before its bias, as PyTorch orders the same
architecture, so ``parameters()`` lines up one to one with ``torch_model.parameters()``.

Outputs and gradient buffers are allocated once per input shape and reused on every call (up to
three shapes per buffer are kept, so a training batch, a last partial batch and an evaluation
batch alternate without allocating): an output stays valid until the module's next forward with
an input of the same shape (copy it to keep it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from .._memory import empty_aligned
from .._validate import check_array, dlpack_methods

_F32 = np.dtype(np.float32)

__all__ = ["Module", "Sequential", "Capture", "RELU_BACKWARD_MODES", "fusion", "fusion_enabled"]

RELU_BACKWARD_MODES = ("standard", "guided", "deconvnet")

#: methods whose array arguments accept any CPU object with ``__dlpack__`` (in every subclass)
_ARRAY_METHODS = ("__call__", "forward", "backward")

#: buffers of other shapes a module keeps per buffer name besides the current one
SPARE_SHAPES = 2

_FUSION = [True]  # the process-wide switch of fusion(); a list so the context manager can set it
_FUSED_STEP: list = [None]  # layers._fused_step, imported on first use (layers imports this module)


def fusion_enabled() -> bool:
    """Whether Conv2d -> BatchNorm2d fusion is on process-wide (see :func:`fusion`).

    Returns
    -------
    bool
    """
    return _FUSION[0]


def fusion(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Turn the automatic Conv2d -> BatchNorm2d(+ReLU, +residual) fusion of :mod:`cnnkit.nn` on
    or off inside a ``with`` block (process-wide; the previous setting comes back on exit).

    With fusion on (the default), :class:`Sequential` and the residual blocks run a Conv2d
    followed by a BatchNorm2d as one :func:`cnnkit.ops.conv2d_fused` call whose epilogue gives
    the batch statistics, and a BatchNorm2d followed by a Conv2d as a prologue of that
    convolution (the normalized tensor is not materialised). Off, every layer runs on its own:
    the exact unfused path, for debugging. ``container.fuse = False`` (or
    :meth:`Module.set_fusion`) turns it off for one model or container only.

    What fuses (both in :class:`Sequential` chains and inside :class:`~cnnkit.nn.ResidualBlock` /
    :class:`~cnnkit.nn.BottleneckBlock` with batch norm): Conv2d -> BatchNorm2d in training mode
    (statistics from the convolution's epilogue; the norm then applies with its ReLU and
    residual as before), and BatchNorm2d(+ReLU) -> Conv2d in both modes (training: the batch
    statistics; eval: the running ones) as the convolution's prologue, and BatchNorm2d(+ReLU)
    -> GlobalAvgPool2d (a :class:`Sequential` chain, NHWC, both modes): the pool averages the
    normalized values without their being written, and its backward hands the norm its
    ``(N, C)`` adjoint as a view broadcast over H and W, which the norm's kernels read per
    sample and channel. In a residual block whose first convolution is a dense 1x1 with stride
    1 (the bottleneck's), that convolution's input gradient adds the shortcut's gradient in its
    epilogue instead of a separate pass; where the block's input is the written output of a
    training-mode BatchNorm2d with a ReLU (the stem's, the previous block's last), that epilogue
    (any geometry) also masks the sum by the output's ReLU and reduces the norm's two backward
    sums, and the norm runs only its apply pass (its residual's gradient is the masked gradient
    itself). A training-mode BatchNorm2d(+ReLU) before a :class:`~cnnkit.nn.BottleneckBlock`
    with an identity shortcut and a 1x1 stride-1 first convolution (a :class:`Sequential`
    chain) is not written either: that convolution takes it as its prologue, the block's last
    norm adds ``relu(fma(scale, x, shift))`` as its residual, and the convolution's input
    gradient adds the shortcut's gradient and masks the sum by the prologue's ReLU. A projection
    shortcut's BatchNorm2d (``Sequential(Conv2d, BatchNorm2d)``, no activation) is not written
    either: the block's last norm adds ``fma(scale, z, shift)`` of the shortcut convolution's
    output ``z``. NHWC, the apply pass of a norm's backward is evaluated where its gradient is read
    rather than written first: by a network's stem (at most 4 input channels) in its weight
    gradient, and by a dense 1x1 stride-1 convolution in its input gradient's GEMM, a block of
    rows at a time. Not fused: a norm whose output is captured
    (:meth:`Module.capture`) or where ``forward(until=)`` stops, a norm followed by anything
    but a Conv2d or a GlobalAvgPool2d, a channel with ``|mean| / std > 16`` (accuracy), across
    container boundaries, and a Conv2d or BatchNorm2d whose subclass (or instance) overrides
    its forward or backward or that has a ``virtual_batch_size`` (ghost batch norm: per-chunk
    statistics, which the epilogue's whole-batch ones cannot represent); such a layer runs on
    its own, and so do its neighbours' halves of the fusion. Running statistics and
    ``num_batches_tracked`` move exactly as unfused. The compiled forward (float32) runs where
    the plain convolution runs: the GEMM entries, the depthwise NHWC kernels and the direct
    grouped kernels apply the prologue as they read x and reduce the statistics per fixed unit
    of output rows (the stem kernel reduces the statistics but takes no prologue; the depthwise
    NCHW kernels neither: there the prologue is materialised and the statistics are a separate
    pass). The backward mirrors the fusions
    (float32): the weight gradient of a convolution with a prologue applies it while it lays x
    out or reads it (GEMM, depthwise NHWC and grouped kernels; the normalized tensor is not
    recomputed into memory); its input gradient (training mode, the standard ReLU rule) is
    written already masked by the prologue's ReLU, ``fma(scale, x, shift) > 0``, with the two
    sums of the norm's backward reduced in its epilogue, so the norm runs only its apply pass:
    at stride 1 on a GEMM entry in the adjoint's forward pass, elsewhere (depthwise, grouped,
    strided) as the plain input-gradient kernel over units of whole images followed by the
    epilogue on each image while it is in cache. A dense 1x1 NHWC convolution without bias
    (parameter gradients on, no capture or injection at it) writes its weight gradient in the same
    pass as that input gradient, each block of rows reduced while it is in cache, with the bits of
    its own pass. Each norm still receives the gradient
    at its output (masked by its ReLU already where the input-gradient epilogue ran; a captured
    norm is never fused, so captures, ``inject=`` and ``until=`` see the unfused gradients).

    Tolerance (fused vs unfused; the layers are float32, after ``k`` training steps):

    ==========================  ===========================================================
    loss                        ``|l_f - l_u| <= 1e-5 * k * |l_u|``
    each gradient tensor g      ``max|g_f - g_u| <= 2e-5 * k * max|g_u| + 1e-6 * G``
                                (G: the largest gradient magnitude of the model)
    input gradient              as a gradient tensor
    running mean / var          ``|r_f - r_u| <= 1e-5 * k * (1 + |r_u|)``
    ==========================  ===========================================================

    The fused operation itself (:func:`cnnkit.ops.conv2d_fused` and its backward) meets the
    suite's elementwise table against a float64 reference, ``atol + rtol * |ref|`` scaled by the
    square root of the reduction length: float32 rtol 2e-5, atol 1e-6; float64 rtol 1e-12,
    atol 1e-14. Without the compiled kernel (and always in float64) it runs the same kernels as
    the unfused path, and a Conv2d -> BatchNorm2d pair (statistics) is then bitwise unfused; the
    prologue ``scale * x + shift`` differs from the norm's ``(x - mean) * invstd * w + b`` by
    rounding only.

    Parameters
    ----------
    enabled : bool
        Checked at the call (a TypeError before any ``with``).

    Returns
    -------
    context manager
        Sets the switch on entry and restores the previous setting on exit; yields None.

    Examples
    --------
    >>> from cnnkit import nn
    >>> with nn.fusion(False):
    ...     nn.fusion_enabled()
    False
    >>> nn.fusion_enabled()
    True
    """
    from .._validate import check_bool
    return _fusion(check_bool("enabled", enabled))


@contextlib.contextmanager
def _fusion(enabled: bool) -> Iterator[None]:
    before = _FUSION[0]
    _FUSION[0] = enabled
    try:
        yield
    finally:
        _FUSION[0] = before


class Capture:
    """What :meth:`Module.capture` records on the next forward/backward: ``output`` (the layer's
    output) and ``grad`` (the gradient flowing into that output). Copies, not views.

    Parameters
    ----------
    name : str
        The captured layer's dotted name (``name``); ``output`` and ``grad`` start as None.
    """

    def __init__(self, name: str):
        if not isinstance(name, str):
            raise TypeError(f"name: expected a layer name (str), got {type(name).__name__} {name!r}")
        self.name = name
        self.output = None
        self.grad = None

    def __repr__(self):
        shape = None if self.output is None else self.output.shape
        return f"Capture({self.name!r}, output shape {shape}, grad {'set' if self.grad is not None else 'None'})"


class Module:
    """Base class. Subclasses register parameters with :meth:`_param` and buffers (running
    statistics) with :meth:`_buffer` in ``__init__``, list sub-modules in :meth:`children`, and
    implement ``forward`` and ``backward``.

    ``forward``, ``backward`` and ``__call__`` of every subclass (a user's own included) take
    torch tensors and other CPU objects with ``__dlpack__`` as NumPy views of their memory."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dlpack_methods(cls, _ARRAY_METHODS)

    def __init__(self):
        self._param_names: list[str] = []
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._ws: dict = {}
        self._captures: list[Capture] = []
        self._arena: Any = None  # (parameters, gradients) once packed
        self.param_grads = True  # False: backward computes only input gradients (interpretability)
        self._inject_used = False
        self._inject = None  # a gradient added to this module's output gradient (Sequential.backward(inject=))
        # (gradient, write): the gradient at this module's output handed over unwritten by the
        # layer above (a batch norm whose apply pass this module's weight gradient may evaluate
        # itself: BatchNorm2d._defer_apply); write() writes it, see _grad_ready
        self._deferred_grad: tuple | None = None

    # ---- registration ----
    def _param(self, name, value):
        a = np.ascontiguousarray(value, dtype=np.float32).copy()
        self._param_names.append(name)
        self.params[name] = a
        self.grads[name] = np.zeros_like(a)
        return a

    def _buffer(self, name, value):
        self.buffers[name] = np.array(value)
        return self.buffers[name]

    def children(self) -> list[tuple[str, Module]]:
        """Direct sub-modules, in order.

        Returns
        -------
        list of (str, Module)
            (name, module) pairs; empty for a leaf layer.
        """
        return []

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every sub-module, depth first, with dotted names (``"2.conv1"``); the
        module itself comes first, named ``prefix``.

        Parameters
        ----------
        prefix : str
            The name given to this module (and prepended to the others').

        Yields
        ------
        (str, Module)
        """
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else str(name))

    def modules(self) -> list[Module]:
        """This module and every sub-module, in :meth:`named_modules` order.

        Returns
        -------
        list of Module
        """
        return [m for _, m in self.named_modules()]

    def _pack(self):
        """Move every parameter and gradient of this module tree into two flat float32 arenas."""
        entries = [(m, n) for m in self.modules() for n in m._param_names]
        total = sum(m.params[n].size for m, n in entries)
        flat_p = np.empty(total, dtype=np.float32)
        flat_g = np.zeros(total, dtype=np.float32)
        at = 0
        for m, n in entries:
            a = m.params[n]
            view_p = flat_p[at:at + a.size].reshape(a.shape)
            view_p[...] = a
            m.params[n] = view_p
            m.grads[n] = flat_g[at:at + a.size].reshape(a.shape)
            at += a.size
        self._arena = (flat_p, flat_g)

    @property
    def arena(self) -> tuple[np.ndarray, np.ndarray]:
        """(parameters, gradients) as the two flat float32 arrays every parameter views."""
        if self._arena is None:
            self._pack()
        return self._arena

    def __getattr__(self, name):  # module.weight etc.: the live parameter (a view into the arena)
        d = self.__dict__
        if "params" in d and name in d["params"]:
            return d["params"][name]
        if "buffers" in d and name in d["buffers"]:
            return d["buffers"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- parameters ----
    def named_parameters(self) -> list[tuple[str, np.ndarray]]:
        """Parameters by dotted name (``"0.weight"``), in PyTorch's order.

        Returns
        -------
        list of (str, float32 ndarray)
            Views into the arena (updated in place by optimizers).
        """
        out = []
        for prefix, m in self.named_modules():
            for n in m._param_names:
                out.append((f"{prefix}.{n}" if prefix else n, m.params[n]))
        return out

    def parameters(self) -> list[np.ndarray]:
        """Parameter arrays in PyTorch's order (views into the arena; updated in place).

        Returns
        -------
        list of float32 ndarray
        """
        return [p for _, p in self.named_parameters()]

    def gradients(self) -> list[np.ndarray]:
        """Gradient arrays, one per parameter, in the same order (written by ``backward``).

        Returns
        -------
        list of float32 ndarray
            Views into the gradient arena, of the parameters' shapes.
        """
        return [m.grads[n] for m in self.modules() for n in m._param_names]

    def zero_grad(self) -> None:
        """Set every parameter gradient to 0."""
        for g in self.gradients():
            g[...] = 0

    def num_parameters(self) -> int:
        """The number of parameter elements.

        Returns
        -------
        int
        """
        return int(sum(p.size for p in self.parameters()))

    # ---- modes ----
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or eval mode on this module and its sub-modules (batch
        norm and dropout behave differently).

        Parameters
        ----------
        mode : bool

        Returns
        -------
        Module
            ``self``.
        """
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        """Eval mode: ``train(False)``.

        Returns
        -------
        Module
            ``self``.
        """
        return self.train(False)

    # ---- state ----
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by dotted name (PyTorch's keys for the same architecture), copied.

        Returns
        -------
        dict of str to ndarray
            float32 parameters; buffers in their own dtypes (``num_batches_tracked`` int64).
        """
        d = {}
        for prefix, m in self.named_modules():
            for n in m._param_names:
                d[f"{prefix}.{n}" if prefix else n] = m.params[n].copy()
            for n, b in m.buffers.items():
                d[f"{prefix}.{n}" if prefix else n] = b.copy()
        return d

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Module:
        """Copy values in (shapes must match); ``strict``: the key sets must be equal.

        Parameters
        ----------
        state : dict of str to array_like
            As :meth:`state_dict` gives it (a PyTorch model's, converted to NumPy, fits).
        strict : bool
            Require exactly the model's keys; otherwise unknown keys are ignored and missing ones
            left as they are.

        Returns
        -------
        Module
            ``self``.

        Raises
        ------
        ValueError
            Different keys (strict) or a shape mismatch; nothing is copied then.
        """
        own = {}
        for prefix, m in self.named_modules():
            for n in m._param_names:
                own[f"{prefix}.{n}" if prefix else n] = m.params[n]
            for n in m.buffers:
                own[f"{prefix}.{n}" if prefix else n] = m.buffers[n]
        keys = set(state.keys())
        if strict and keys != set(own):
            missing, extra = sorted(set(own) - keys), sorted(keys - set(own))
            raise ValueError(f"state: keys differ from the model's (missing {missing[:5]}, unexpected {extra[:5]})")
        for k, v in state.items():
            if k not in own:
                continue
            v = np.asarray(v)
            if v.shape != own[k].shape:
                raise ValueError(f"state[{k!r}]: expected shape {own[k].shape}, got {v.shape}")
        for k, v in state.items():
            if k in own:
                own[k][...] = np.asarray(v)
        return self

    def save(self, path: Any) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file.

        Parameters
        ----------
        path : str, os.PathLike or file
            As ``numpy.savez`` takes it.
        """
        np.savez(path, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub types the keywords as allow_pickle

    def load(self, path: Any, strict: bool = True) -> Module:
        """Load a file written by :meth:`save` (:meth:`load_state_dict` of its arrays).

        Parameters
        ----------
        path : str, os.PathLike or file
        strict : bool
            As in :meth:`load_state_dict`.

        Returns
        -------
        Module
            ``self``.
        """
        with np.load(path) as f:
            return self.load_state_dict({k: f[k] for k in f.files}, strict=strict)

    # ---- buffers reused across calls ----
    def _buf(self, key, shape, dtype=np.float32, zero=False):
        """The buffer ``key`` of this shape and dtype: the current one, else one of up to
        :data:`SPARE_SHAPES` kept from other shapes (a training batch, a last partial batch and an
        evaluation batch alternate without allocating), else a new one (zeroed if ``zero``)."""
        a = self._ws.get(key)
        shape = tuple(shape)
        if a is not None and a.shape == shape and a.dtype == dtype:
            return a
        spare = self._ws.setdefault(("spare", key), [])
        for i, b in enumerate(spare):
            if b.shape == shape and b.dtype == dtype:
                del spare[i]
                break
        else:
            b = empty_aligned(shape, dtype, zero)
        if a is not None:
            spare.insert(0, a)
            del spare[SPARE_SHAPES:]
        self._ws[key] = b
        return b

    # ---- calls with capture hooks ----
    def __call__(self, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        """``forward(x, *args, **kwargs)``, then this module's captures receive a copy of the output.

        Parameters
        ----------
        x : float32 ndarray
            The input, as :meth:`forward` takes it.
        *args, **kwargs
            More arguments of :meth:`forward` (``residual`` of a batch norm).

        Returns
        -------
        float32 ndarray
            The output of :meth:`forward`.
        """
        y = self.forward(x, *args, **kwargs)
        for c in self._captures:
            c.output = y.copy()
        return y

    def _note_grad(self, grad):
        """Give this module's captures the gradient reaching its output."""
        if self._captures:
            self._grad_ready(grad)
        for c in self._captures:
            c.grad = grad.copy()

    def _grad_ready(self, grad):
        """``grad``, written now if the layer above handed it over unwritten
        (``_deferred_grad``): every reader of the gradient at this module's output but the
        one that evaluates it itself calls this first."""
        d = self._deferred_grad
        if d is not None and d[0] is grad:
            self._deferred_grad = None
            d[1]()
        return grad

    def _grad_in(self, grad):
        """The gradient reaching this module's output: ``grad`` from the layers above plus the
        gradient injected here (:meth:`Sequential.backward` ``inject=``), if any."""
        inj = self._inject
        if inj is None:
            return grad
        self._grad_ready(grad)
        self._inject_used = True
        if inj.shape != grad.shape:
            raise ValueError(f"inject: expected a gradient of the layer's output shape {grad.shape}, "
                             f"got shape {inj.shape}")
        return np.add(grad, inj, out=self._buf("grad_in", grad.shape, grad.dtype))

    def _backward(self, grad, **kwargs):
        if self._inject is not None or self._captures:  # (else both are no-ops: no calls)
            grad = self._grad_in(grad)
            self._note_grad(grad)
        return self.backward(grad, **kwargs)

    def _check_grad(self, grad, shape):
        """``grad``, the gradient at this module's output, checked before any work (errors name
        ``grad``, the name :meth:`backward` takes): a float32 array (float64 is converted) of the
        last forward output's ``shape`` (``...``: any shape; None: no forward yet)."""
        if shape is None:
            raise ValueError(f"grad: expected a forward call of {type(self).__name__} first, got none")
        if type(grad) is np.ndarray and grad.dtype == _F32 and (shape is ... or grad.shape == tuple(shape)):
            return grad  # (the common case, as the checks below would pass it)
        check_array("grad", grad, dtypes=(np.float32, np.float64), what="(the gradient at the output)")
        if shape is not ... and grad.shape != tuple(shape):
            raise ValueError(f"grad: expected shape {tuple(shape)} (the last output of {type(self).__name__}), "
                             f"got {grad.shape}")
        return grad if grad.dtype == np.float32 else grad.astype(np.float32)

    def capture(self, layer_name: str) -> Capture:
        """Record ``layer_name``'s output and the gradient flowing into it on every following
        forward/backward (a :class:`Capture`); :meth:`release` stops it.

        Parameters
        ----------
        layer_name : str
            A name from :meth:`named_modules` (``""`` is the model itself).

        Returns
        -------
        Capture

        Raises
        ------
        ValueError
            No layer of that name.
        """
        names = dict(self.named_modules())
        if layer_name not in names:
            raise ValueError(f"layer_name: no layer {layer_name!r}; layers are {list(names)[1:]}")
        c = Capture(layer_name)
        names[layer_name]._captures.append(c)
        return c

    def release(self) -> None:
        """Stop every capture in this model."""
        for m in self.modules():
            m._captures.clear()

    def set_guided_backprop(self, enabled: bool = True) -> Module:
        """Guided backprop: every ReLU (also fused ones) passes back only positive gradients
        through positive activations (``set_relu_backward("guided")``; ``False`` restores the
        standard rule).

        Parameters
        ----------
        enabled : bool

        Returns
        -------
        Module
            ``self``.
        """
        return self.set_relu_backward("guided" if enabled else "standard")

    def set_relu_backward(self, mode: str = "standard") -> Module:
        """The rule every ReLU (also those fused into a norm) applies on the way back, for a
        gradient ``g`` reaching an output ``y = max(x, 0)``:

        * ``"standard"``: ``g * (y > 0)`` (the true gradient),
        * ``"guided"``: ``max(g, 0) * (y > 0)`` (guided backprop, Springenberg et al.),
        * ``"deconvnet"``: ``max(g, 0)`` (Zeiler and Fergus' deconvnet: the forward mask is
          ignored). Fused norm + ReLU modules support it in eval mode (batch norm) and always
          (group norm).

        Parameters
        ----------
        mode : {"standard", "guided", "deconvnet"}

        Returns
        -------
        Module
            ``self``.
        """
        if mode not in RELU_BACKWARD_MODES:
            raise ValueError(f"mode: expected one of {RELU_BACKWARD_MODES}, got {mode!r}")
        for m in self.modules():
            if hasattr(m, "relu_mode"):
                setattr(m, "relu_mode", mode)  # the ReLU-bearing layers' attribute
        return self

    def set_fusion(self, enabled: bool = True) -> Module:
        """Turn the Conv2d -> BatchNorm2d fusion of every container in this model (``fuse``
        attributes of :class:`Sequential` and the residual blocks) on or off; the process-wide
        switch :func:`fusion` must be on too for fusion to happen.

        Parameters
        ----------
        enabled : bool

        Returns
        -------
        Module
            ``self``.
        """
        from .._validate import check_bool
        enabled = check_bool("enabled", enabled)
        for m in self.modules():
            if hasattr(m, "fuse"):
                setattr(m, "fuse", enabled)
        return self

    def set_param_grads(self, enabled: bool = True) -> Module:
        """Whether ``backward`` computes parameter gradients (default True). With ``False``
        every layer computes only the gradient with respect to its input and leaves the gradient
        arena untouched: attribution methods need nothing else, and skip the weight-gradient work.

        Parameters
        ----------
        enabled : bool

        Returns
        -------
        Module
            ``self``.
        """
        from .._validate import check_bool
        enabled = check_bool("enabled", enabled)
        for m in self.modules():
            m.param_grads = enabled
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The module's output for ``x`` (implemented by each layer; the input is kept for
        :meth:`backward` where needed).

        Parameters
        ----------
        x : float32 ndarray
            The input batch, (N, ...).

        Returns
        -------
        float32 ndarray
            The output batch, valid until the next forward with an input of the same shape.
        """
        raise NotImplementedError

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:  # pragma: no cover
        """Backpropagate ``grad``, the gradient of the last forward's output: *write* the
        parameter gradients (:meth:`gradients`, unless :meth:`set_param_grads` turned them off)
        and return the gradient with respect to the last forward's input (implemented by each
        layer; abstract here).

        Parameters
        ----------
        grad : float32 ndarray
            Of the last output's shape.
        input_grad : bool
            False: the input gradient is not needed (layers that can skip it return None).

        Returns
        -------
        float32 ndarray or None
            The input gradient (a reused buffer), or None when not asked for.
        """
        raise NotImplementedError

    def __repr__(self):
        inner = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in self.children())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        """The constructor arguments ``repr(module)`` shows (empty here).

        Returns
        -------
        str
        """
        return ""


dlpack_methods(Module, _ARRAY_METHODS)


class Sequential(Module):
    """Modules applied in order. ``backward(grad, input_grad=False)`` returns the gradient with
    respect to the input only when asked (the first layer then skips that work otherwise).

    Parameters
    ----------
    *modules : Module
        The layers, in order (or one list or tuple of them); their parameters move into this
        model's arena. ``model[i]`` and ``len(model)`` index them.
    fuse : bool
        Run Conv2d -> BatchNorm2d(+ReLU) -> Conv2d chains fused (the attribute ``fuse``; see
        :func:`cnnkit.nn.fusion` and :meth:`forward`).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import nn, optim
    >>> rng = np.random.default_rng(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(),
    ...                       nn.GlobalAvgPool2d(), nn.Linear(4, 3, rng=rng))
    >>> x = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    >>> labels = rng.integers(0, 3, 8)
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> opt = optim.SGD(model.parameters(), lr=0.1)
    >>> before = loss_fn(model(x), labels)
    >>> for _ in range(5):
    ...     loss = loss_fn(model.forward(x), labels)
    ...     model.backward(loss_fn.backward())
    ...     opt.step(model.gradients())
    >>> bool(loss_fn(model(x), labels) < before)
    True
    """

    def __init__(self, *modules: Any, fuse: bool = True):  # Module, ... or one list/tuple of them
        super().__init__()
        from .._validate import check_bool
        self.fuse = check_bool("fuse", fuse)
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a cnnkit.nn.Module, got {type(m).__name__}")
        self.layers = list(modules)
        self._ran: tuple | None = None  # (last layer run, stopped inside it, output shape) of the last forward
        self._pack()

    def children(self) -> list[tuple[str, Module]]:
        """The layers named by their index: ``[("0", layer0), ("1", layer1), ...]``.

        Returns
        -------
        list of (str, Module)
        """
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def _locate(self, name, arg):
        """(top-level index, rest of the dotted name) of the layer ``name`` (ValueError naming
        ``arg`` for a name that is not a layer of this Sequential)."""
        if not isinstance(name, str):
            raise TypeError(f"{arg}: expected a dotted layer name (str), got {type(name).__name__}")
        head, _, rest = name.partition(".")
        if not name or not head.isdigit() or int(head) >= len(self.layers) or (
                rest and rest not in dict(self.layers[int(head)].named_modules())):
            raise ValueError(f"{arg}: no layer {name!r} in this Sequential; layers are "
                             f"{[k for k, _ in self.named_modules()][1:]}")
        return int(head), rest

    def _ran_through(self, name):
        """Whether the last forward computed the output of the layer ``name`` (a checked name)."""
        head, _, rest = name.partition(".")
        last, partial, _ = self._ran or (len(self.layers) - 1, False, None)
        i = int(head)
        if i != last or not partial:
            return i <= last
        return bool(rest) and self.layers[i]._ran_through(rest)

    def forward(self, x: np.ndarray, until: str | None = None) -> np.ndarray:
        """Run the layers in order and return the last one's output.

        Parameters
        ----------
        x : float32 ndarray
            The input batch, as the first layer takes it.
        until : str, optional
            A dotted layer name (as :meth:`named_modules` gives it). The pass stops after the
            layer that contains it (inside a nested Sequential, the pass stops inside it too); the
            named layer's output and those of the layers before it are computed (captures receive
            them), the layers above it are not run.

        Returns
        -------
        float32 ndarray
            The output of the last layer run (the model's output; with ``until``, the named
            layer's, or that of the block that contains it when it lies inside one, e.g.
            ``"2.conv1"``); :meth:`backward` then starts there.

        Raises
        ------
        TypeError, ValueError
            From a layer, with the layer's index and type prepended; ``until`` not a layer name.

        Notes
        -----
        Fusion (``fuse`` and :func:`cnnkit.nn.fusion` both on): a Conv2d followed by a
        BatchNorm2d in training mode gets the batch statistics from the convolution's epilogue,
        and a BatchNorm2d followed by a Conv2d is applied in that convolution's prologue, its
        output never materialised, unless its output is requested: a :meth:`capture` on it, or
        ``until`` naming it (the pass ends there). The batch norm still sees the gradient at its
        output in :meth:`backward` (captures, ``inject``, ``until`` work on it).
        """
        n = len(self.layers)
        stop, inner = n - 1, ""
        if until is not None:
            stop, inner = self._locate(until, "until")
        partial = bool(inner) and isinstance(self.layers[stop], Sequential)
        step: Any = None
        if self.fuse and _FUSION[0]:
            step = _FUSED_STEP[0]
            if step is None:
                from .layers import _fused_step as step
                _FUSED_STEP[0] = step
        pending = None  # what a fused layer hands to the next one
        for i in range(stop + 1):
            m = self.layers[i]
            try:
                if i == stop and partial:   # stops inside m: m's own output is not computed
                    x = m.forward(x, until=inner)
                elif step is not None:
                    x, pending = step(m, x, pending, self.layers[i + 1] if i < stop else None)
                else:
                    x = m(x)
            except (ValueError, TypeError) as e:  # name the layer (nested containers add their own)
                raise type(e)(f"layer {i} ({type(m).__name__}): {e}") from e
        self._ran = (stop, partial, x.shape)
        return x

    def backward(self, grad: np.ndarray | None, input_grad: bool = False, until: str | None = None, *,
                 inject: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        """Backpropagate ``grad`` (the gradient of the output of the last layer the forward ran:
        the model's output, or where ``forward(until=)`` stopped) through the layers in reverse
        order, writing parameter gradients; returns the input gradient if ``input_grad``.

        Parameters
        ----------
        grad : float32 ndarray or None
            The gradient of that output, of its shape; None (zero) only with ``inject``.
        input_grad : bool
            Compute and return the gradient with respect to the forward's input.
        until : str, optional
            A dotted layer name (as :meth:`named_modules` gives it). The pass stops as soon as
            the gradient reaching that layer's output is known (its captures receive it): layers
            before it are not run, so a layer's gradient costs only the layers above it (Grad-CAM
            at the last block costs the pooling and the classifier). Returns None then; parameter
            gradients of the layers below are left as they were.
        inject : dict of str to float32 ndarray, optional
            ``{layer name: gradient}``, float32 arrays of those layers' output shapes (nested
            names too, several at once), each added to the gradient reaching that layer's output
            where it arises (inside a residual block: where that sub-layer's output gradient is
            formed), as if the loss had a term ``sum(gradient * output)`` for it. ``grad`` may
            then be None (zero). With ``forward(x, until=name)`` this backpropagates a function
            of inner layers' outputs without running the layers above them. Every injected layer
            must have run in the last forward and lie on the backward's path (not below
            ``until``).

        Returns
        -------
        float32 ndarray or None
            The input gradient (the forward input's shape) with ``input_grad=True`` and no
            ``until``; otherwise None.
        """
        n = len(self.layers)
        last, partial, out_shape = self._ran or (n - 1, False, None)
        stop, inner = 0, ""
        if until is not None:
            stop, inner = self._locate(str(until), "until")
            if not self._ran_through(str(until)):
                raise ValueError(f"until: layer {until!r} did not run in the last forward")
            input_grad = False
        targets = []
        if inject is not None:
            if not isinstance(inject, dict):
                raise TypeError(f"inject: expected a dict {{layer name: gradient}}, got {type(inject).__name__}")
            mods = dict(self.named_modules())
            for name, g in inject.items():
                self._locate(name, "inject")
                if not self._ran_through(name):
                    raise ValueError(f"inject: layer {name!r} did not run in the last forward")
                if not isinstance(g, np.ndarray) or g.dtype != np.float32:
                    raise TypeError(f"inject[{name!r}]: expected a float32 numpy.ndarray, got "
                                    f"{g.dtype if isinstance(g, np.ndarray) else type(g).__name__}")
                targets.append((name, mods[name], g))
        if grad is None:
            if not targets or out_shape is None:
                raise ValueError("grad: expected the gradient of the output (None only with inject=, after a forward)")
            grad = self._buf("zero_grad", out_shape)
            grad[...] = 0
        elif out_shape is not None and (last != n - 1 or partial) and np.shape(grad) != out_shape:
            raise ValueError(f"grad: expected the shape {out_shape} of the output where the forward stopped, "
                             f"got {np.shape(grad)}")
        for _, m, g in targets:
            m._inject, m._inject_used = g, False
        try:
            out = self._backward_layers(grad, input_grad, last, partial, stop, inner, until)
            unused = [name for name, m, _ in targets if not m._inject_used]
        finally:
            for _, m, _ in targets:
                m._inject = None
        if unused:
            raise ValueError(f"inject: no gradient reached {unused} (below until= or off the path to the output)")
        return out

    def _backward_layers(self, grad, input_grad, last, partial, stop, inner, until):
        for i in range(last, stop - 1, -1):
            layer = self.layers[i]
            inside = partial and i == last   # the forward stopped inside this nested Sequential
            if i == stop and until is not None:
                if not inner:                      # the named layer itself: its gradient is known
                    grad = layer._grad_in(grad)
                    layer._note_grad(grad)
                    return None
                if isinstance(layer, Sequential):
                    if not inside:
                        grad = layer._grad_in(grad)
                        layer._note_grad(grad)
                    return layer.backward(grad, until=inner)
                layer._backward(grad, input_grad=False)   # a block: its sub-layers run inside it
                return None
            if inside:
                grad = layer.backward(grad, input_grad=(i > 0 or input_grad))
            else:
                grad = layer._backward(grad, input_grad=(i > 0 or input_grad))
        return grad if input_grad else None
