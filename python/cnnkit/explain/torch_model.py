"""``TorchModel``: a PyTorch module behind the protocol of :mod:`cnnkit.explain` (torch is
imported here only, when an adapter is made)."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .._validate import accepts_dlpack

__all__ = ["TorchModel"]


class _TorchCapture:
    def __init__(self, name: str) -> None:
        self.name = name
        self.output = None
        self.grad = None
        self.order = -1
        self.tensor = None


class TorchModel:
    """Wrap a ``torch.nn.Module`` (CPU, float32, NCHW) so every method of :mod:`cnnkit.explain`
    explains it: ``forward`` takes and returns NumPy arrays, ``backward`` runs autograd, captures
    are forward hooks plus tensor gradient hooks, and the guided/deconvnet ReLU rules are
    backward hooks on the module's ``torch.nn.ReLU`` modules (functional ``torch.relu`` calls are
    not seen, as in captum).

    Parameters
    ----------
    module : torch.nn.Module
        Returns logits (N, K) for an (N, C, H, W) batch.

    Examples
    --------
    >>> import torch                                              # doctest: +SKIP
    >>> from cnnkit import explain                                # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 2))              # doctest: +SKIP
    >>> maps = explain.grad_cam(explain.TorchModel(net), x, layer="1")  # doctest: +SKIP
    """

    layout = "NCHW"

    def __init__(self, module: Any) -> None:
        import torch
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self._torch = torch
        self.module = module
        self._x = None
        self._out = None
        self._captures: list = []
        self._hooks: list = []
        self._relu_hooks: list = []
        self._counter = 0

    # ---- modes ----
    @property
    def training(self) -> bool:
        """Whether the wrapped module is in training mode."""
        return bool(self.module.training)

    def train(self, mode: bool = True) -> "TorchModel":
        """Set the wrapped module's training mode (``module.train(mode)``).

        Parameters
        ----------
        mode : bool

        Returns
        -------
        TorchModel
            ``self``.
        """
        self.module.train(mode)
        return self

    def eval(self) -> "TorchModel":
        """Evaluation mode: ``train(False)``.

        Returns
        -------
        TorchModel
            ``self``.
        """
        return self.train(False)

    def named_modules(self) -> Iterator:
        """The wrapped module's ``named_modules()``: the layer names ``capture`` accepts.

        Returns
        -------
        iterator of (str, torch.nn.Module)
        """
        return self.module.named_modules()

    # ---- forward / backward ----
    @accepts_dlpack
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the module on ``x``, keeping the graph for :meth:`backward` when autograd is on.

        Parameters
        ----------
        x : float32 ndarray (N, C, H, W)

        Returns
        -------
        float32 ndarray
            The module's output (logits (N, K)), as NumPy.
        """
        torch = self._torch
        xt = torch.from_numpy(np.ascontiguousarray(x))
        need_graph = torch.is_grad_enabled()
        if need_graph:
            xt = xt.clone().requires_grad_(True)
        self._x = xt
        out = self.module(xt)
        self._out = out
        return out.detach().numpy()

    @accepts_dlpack
    def backward(self, grad_logits: np.ndarray, input_grad: bool = True, until: Any = None) -> Any:
        """The gradient of ``sum(grad_logits * logits)`` with respect to the input (None unless
        ``input_grad``); with ``until`` (a captured layer's name) autograd stops at that layer's
        output, whose capture receives the gradient.

        Parameters
        ----------
        grad_logits : float32 ndarray
            The gradient of the last :meth:`forward`'s output, of its shape.
        input_grad : bool
            Return the input gradient.
        until : str, optional
            A captured layer's name (used only when ``input_grad`` is False).

        Returns
        -------
        float32 ndarray or None
            The gradient with respect to the last forward's x (its shape), or None.

        Raises
        ------
        ValueError
            No forward since the last backward.
        """
        torch = self._torch
        if self._out is None:
            raise ValueError("backward: call forward first")
        g = torch.from_numpy(np.ascontiguousarray(grad_logits, dtype=np.float32))
        target = [c for c in self._captures if c.name == until and getattr(c, "tensor", None) is not None]
        if until is not None and target and not input_grad:
            c = target[-1]
            (gl,) = torch.autograd.grad(self._out, c.tensor, g)
            c.grad = gl.detach().numpy().copy()
            self._out = None
            return None
        (gx,) = torch.autograd.grad(self._out, self._x, g)
        self._out = None
        return gx.numpy() if input_grad else None

    # ---- captures ----
    def capture(self, name: str) -> _TorchCapture:
        """Record the output of the module ``name`` and the gradient reaching it on every
        following forward/backward (a forward hook plus a tensor hook); :meth:`release` stops it.

        Parameters
        ----------
        name : str
            A name from :meth:`named_modules`.

        Returns
        -------
        capture
            With ``output`` and ``grad`` (NumPy copies, None until set), as
            :class:`cnnkit.nn.Capture`.
        """
        mods = dict(self.module.named_modules())
        if name not in mods:
            raise ValueError(f"layer: no module {name!r}; the model's modules are {[n for n in mods if n]}")
        c = _TorchCapture(name)

        def hook(_m, _inp, out, c=c):
            self._counter += 1
            c.order = self._counter
            c.output = out.detach().numpy().copy()
            c.tensor = out if out.requires_grad else None
            if out.requires_grad:
                out.register_hook(lambda g, c=c: setattr(c, "grad", g.detach().numpy().copy()))

        self._hooks.append(mods[name].register_forward_hook(hook))
        self._captures.append(c)
        return c

    def release(self) -> None:
        """Remove every capture's hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for c in self._captures:
            c.tensor = None
        self._captures.clear()

    # ---- ReLU rules ----
    def set_relu_backward(self, mode: str = "standard") -> "TorchModel":
        """The rule the module's ``torch.nn.ReLU`` modules apply on the way back, as
        :meth:`cnnkit.nn.Module.set_relu_backward` (backward hooks; functional ReLUs are not seen).

        Parameters
        ----------
        mode : {"standard", "guided", "deconvnet"}

        Returns
        -------
        TorchModel
            ``self``.
        """
        from ..nn.module import RELU_BACKWARD_MODES
        if mode not in RELU_BACKWARD_MODES:
            raise ValueError(f"mode: expected one of {RELU_BACKWARD_MODES}, got {mode!r}")
        for h in self._relu_hooks:
            h.remove()
        self._relu_hooks.clear()
        if mode == "standard":
            return self
        torch = self._torch
        relu = torch.nn.functional.relu
        for m in self.module.modules():
            if isinstance(m, torch.nn.ReLU):
                if mode == "guided":   # grad_in = g * mask already; keep its positive part
                    def hook(_m, grad_in, grad_out):
                        return (relu(grad_in[0]),)
                else:                  # deconvnet: the positive part of the incoming gradient
                    def hook(_m, grad_in, grad_out):
                        return (relu(grad_out[0]),)
                self._relu_hooks.append(m.register_full_backward_hook(hook))
        return self

    def set_guided_backprop(self, enabled: bool = True) -> "TorchModel":
        """``set_relu_backward("guided")``, or ``"standard"`` when ``enabled`` is False.

        Parameters
        ----------
        enabled : bool

        Returns
        -------
        TorchModel
            ``self``.
        """
        return self.set_relu_backward("guided" if enabled else "standard")

    def __repr__(self) -> str:
        return f"TorchModel({type(self.module).__name__})"
