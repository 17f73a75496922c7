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

import numpy as np

__all__ = ["Module", "Sequential", "Capture", "RELU_BACKWARD_MODES"]

RELU_BACKWARD_MODES = ("standard", "guided", "deconvnet")

#: buffers of other shapes a module keeps per buffer name besides the current one
SPARE_SHAPES = 2


class Capture:
    """What :meth:`Module.capture` records on the next forward/backward: ``output`` (the layer's
    output) and ``grad`` (the gradient flowing into that output). Copies, not views."""

    def __init__(self, name):
        self.name = name
        self.output = None
        self.grad = None

    def __repr__(self):
        shape = None if self.output is None else self.output.shape
        return f"Capture({self.name!r}, output shape {shape}, grad {'set' if self.grad is not None else 'None'})"


class Module:
    """Base class. Subclasses register parameters with :meth:`_param` and buffers (running
    statistics) with :meth:`_buffer` in ``__init__``, list sub-modules in :meth:`children`, and
    implement ``forward`` and ``backward``."""

    def __init__(self):
        self._param_names: list[str] = []
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._ws: dict = {}
        self._captures: list[Capture] = []
        self._arena = None
        self.param_grads = True  # False: backward computes only input gradients (interpretability)

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

    def children(self):
        """Direct sub-modules, in order (name, module)."""
        return []

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else str(name))

    def modules(self):
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
    def arena(self):
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
    def named_parameters(self):
        out = []
        for prefix, m in self.named_modules():
            for n in m._param_names:
                out.append((f"{prefix}.{n}" if prefix else n, m.params[n]))
        return out

    def parameters(self):
        """Parameter arrays in PyTorch's order (views into the arena; updated in place)."""
        return [p for _, p in self.named_parameters()]

    def gradients(self):
        """Gradient arrays, one per parameter, in the same order (written by ``backward``)."""
        return [m.grads[n] for m in self.modules() for n in m._param_names]

    def zero_grad(self):
        for g in self.gradients():
            g[...] = 0

    def num_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    # ---- modes ----
    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ---- state ----
    def state_dict(self):
        """Parameters and buffers by dotted name (PyTorch's keys for the same architecture), copied."""
        d = {}
        for prefix, m in self.named_modules():
            for n in m._param_names:
                d[f"{prefix}.{n}" if prefix else n] = m.params[n].copy()
            for n, b in m.buffers.items():
                d[f"{prefix}.{n}" if prefix else n] = b.copy()
        return d

    def load_state_dict(self, state, strict=True):
        """Copy values in (shapes must match); ``strict``: the key sets must be equal."""
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

    def save(self, path):
        """Write :meth:`state_dict` to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path, strict=True):
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
            b = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        if a is not None:
            spare.insert(0, a)
            del spare[SPARE_SHAPES:]
        self._ws[key] = b
        return b

    # ---- calls with capture hooks ----
    def __call__(self, x, *args, **kwargs):
        y = self.forward(x, *args, **kwargs)
        for c in self._captures:
            c.output = y.copy()
        return y

    def _note_grad(self, grad):
        """Give this module's captures the gradient reaching its output."""
        for c in self._captures:
            c.grad = grad.copy()

    def _backward(self, grad, **kwargs):
        self._note_grad(grad)
        return self.backward(grad, **kwargs)

    def capture(self, layer_name):
        """Record ``layer_name``'s output and the gradient flowing into it on every following
        forward/backward (a :class:`Capture`); :meth:`release` stops it."""
        names = dict(self.named_modules())
        if layer_name not in names:
            raise ValueError(f"layer_name: no layer {layer_name!r}; layers are {list(names)[1:]}")
        c = Capture(layer_name)
        names[layer_name]._captures.append(c)
        return c

    def release(self):
        """Stop every capture in this model."""
        for m in self.modules():
            m._captures.clear()

    def set_guided_backprop(self, enabled=True):
        """Guided backprop: every ReLU (also fused ones) passes back only positive gradients
        through positive activations (``set_relu_backward("guided")``; ``False`` restores the
        standard rule)."""
        return self.set_relu_backward("guided" if enabled else "standard")

    def set_relu_backward(self, mode="standard"):
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
                m.relu_mode = mode
        return self

    def set_param_grads(self, enabled=True):
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

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        inner = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in self.children())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self):
        return ""


class Sequential(Module):
    """Modules applied in order. ``backward(grad, input_grad=False)`` returns the gradient with
    respect to the input only when asked (the first layer then skips that work otherwise)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a cnnkit.nn.Module, got {type(m).__name__}")
        self.layers = list(modules)
        self._pack()

    def children(self):
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        for i, m in enumerate(self.layers):
            try:
                x = m(x)
            except (ValueError, TypeError) as e:  # name the layer (nested containers add their own)
                raise type(e)(f"layer {i} ({type(m).__name__}): {e}") from e
        return x

    def backward(self, grad, input_grad=False, until=None):
        """Backpropagate ``grad`` (the gradient of the last layer's output) through the layers in
        reverse order, writing parameter gradients; returns the input gradient if ``input_grad``.

        ``until``: a dotted layer name (as :meth:`named_modules` gives it). The pass stops as soon
        as the gradient reaching that layer's output is known (its captures receive it): layers
        before it are not run, so a layer's gradient costs only the layers above it (Grad-CAM at
        the last block costs the pooling and the classifier). Returns None then; parameter
        gradients of the layers below are left as they were.
        """
        n = len(self.layers)
        stop, inner = 0, None
        if until is not None:
            head, _, rest = str(until).partition(".")
            if not head.isdigit() or int(head) >= n:
                raise ValueError(f"until: no layer {until!r} in this Sequential; layers are "
                                 f"{[k for k, _ in self.named_modules()][1:]}")
            stop, inner = int(head), rest
            input_grad = False
        for i in range(n - 1, stop - 1, -1):
            layer = self.layers[i]
            if i == stop and until is not None:
                if not inner:                      # the named layer itself: its gradient is known
                    layer._note_grad(grad)
                    return None
                if isinstance(layer, Sequential):
                    layer._note_grad(grad)
                    return layer.backward(grad, until=inner)
                layer._backward(grad, input_grad=False)   # a block: its sub-layers run inside it
                return None
            grad = layer._backward(grad, input_grad=(i > 0 or input_grad))
        return grad if input_grad else None
