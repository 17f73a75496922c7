"""``TorchModel``: a PyTorch module behind the protocol of :mod:`cnnkit.explain` (torch is
imported here only, when an adapter is made)."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

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
        return bool(self.module.training)

    def train(self, mode: bool = True) -> "TorchModel":
        self.module.train(mode)
        return self

    def eval(self) -> "TorchModel":
        return self.train(False)

    def named_modules(self) -> Iterator:
        return self.module.named_modules()

    # ---- forward / backward ----
    def forward(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        xt = torch.from_numpy(np.ascontiguousarray(x))
        need_graph = torch.is_grad_enabled()
        if need_graph:
            xt = xt.clone().requires_grad_(True)
        self._x = xt
        out = self.module(xt)
        self._out = out
        return out.detach().numpy()

    def backward(self, grad_logits: np.ndarray, input_grad: bool = True, until: Any = None) -> Any:
        """The gradient of ``sum(grad_logits * logits)`` with respect to the input (None unless
        ``input_grad``); with ``until`` (a captured layer's name) autograd stops at that layer's
        output, whose capture receives the gradient."""
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
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for c in self._captures:
            c.tensor = None
        self._captures.clear()

    # ---- ReLU rules ----
    def set_relu_backward(self, mode: str = "standard") -> "TorchModel":
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
        return self.set_relu_backward("guided" if enabled else "standard")

    def __repr__(self) -> str:
        return f"TorchModel({type(self.module).__name__})"
