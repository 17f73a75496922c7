"""A float64 NumPy copy of a bench model's training step, with ReLU masks that can be flipped.

``cnnkit bench train`` checks one training step of every configuration against a float64
reference before timing it. :class:`Ref64` is that reference without torch (the torch twin in
float64 is the reference where torch is importable; both agree to rounding in float64), and the
engine of the check's ReLU kink analysis (``cnnkit.bench.train._Kinks``) in either case: its
ReLUs record their inputs and the gradients reaching their outputs, and its backward can run
again with any ReLU's mask flipped at chosen elements.

It covers the layers the bench models are made of (``Sequential`` of ``Conv2d``, ``BatchNorm2d``
in training mode with or without ReLU, ``BottleneckBlock``, ``GlobalAvgPool2d``, ``Linear``),
in NCHW, with cross-entropy over the batch (mean) as the loss.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cnnkit import nn as _nn

__all__ = ["Ref64"]

_Back = Callable[[np.ndarray], np.ndarray]

#: Adam's first step from zero state (torch.optim.Adam's defaults, as cnnkit.optim.Adam)
ADAM_EPS = 1e-8


def _pairs(v: Any) -> tuple[int, int]:
    """A layer's stride, padding or dilation as two ints."""
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


class _Site:
    """One ReLU: its input, the module that ran it, the batch norms whose bias gradient its output
    gradient sums into, and (after the first backward) the gradient that reached its output."""

    def __init__(self, pre: np.ndarray, where: str, biases: tuple[str, ...]):
        self.pre = pre
        self.where = where
        self.biases = biases
        self.dy: np.ndarray | None = None


class Ref64:
    """The float64 training step of a cnnkit bench model (its parameters copied at construction).

    Parameters
    ----------
    model : cnnkit.nn.Sequential
        A model of the layers listed in the module docstring (either layout: the parameters are
        the same arrays in both).

    Attributes
    ----------
    names : list of str
        The parameter names, in ``model.named_parameters()`` order (the order of every gradient
        list here).
    sites : list of _Site
        The ReLUs of the last forward, in call order.
    flip : dict of int to boolean ndarray
        Where the next backward flips a site's mask (site index -> elements of its input's shape).
    """

    def __init__(self, model: Any):
        named = model.named_parameters()
        self.names = [n for n, _ in named]
        self.params = {n: np.array(p, dtype=np.float64) for n, p in named}
        self.model = model
        self.sites: list[_Site] = []
        self.flip: dict[int, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._where = ""

    # ---- layers: each returns (output, backward); backward adds its parameter gradients ----------
    def _conv(self, name: str, m: Any, x: np.ndarray) -> tuple[np.ndarray, _Back]:
        """torch.nn.functional.conv2d (stride, padding, dilation, groups) tap by tap: a batched
        GEMM over the groups per tap (an elementwise product for depthwise)."""
        w = self.params[f"{name}.weight"]
        b = self.params.get(f"{name}.bias")
        K, Cg, kh, kw = w.shape
        G = int(m.groups)
        (sh, sw), (ph, pw), (dh, dw) = _pairs(m.stride), _pairs(m.padding), _pairs(m.dilation)
        N, C, H, W = x.shape
        Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        Kg = K // G
        depthwise = Cg == 1 and Kg == 1

        def tap(a: np.ndarray, i: int, j: int) -> np.ndarray:
            """The input pixels that tap (i, j) reads, (N, C, Ho, Wo)."""
            return a[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]

        def rows(t: np.ndarray, ch: int) -> np.ndarray:
            """(N, G*ch, Ho, Wo) -> (G, N*Ho*Wo, ch)."""
            return t.reshape(N, G, ch, Ho, Wo).transpose(1, 0, 3, 4, 2).reshape(G, N * Ho * Wo, ch)

        def unrows(t: np.ndarray, ch: int) -> np.ndarray:
            return t.reshape(G, N, Ho, Wo, ch).transpose(1, 0, 4, 2, 3).reshape(N, G * ch, Ho, Wo)

        wg = w.reshape(G, Kg, Cg, kh, kw)
        y = np.zeros((N, K, Ho, Wo))
        for i in range(kh):
            for j in range(kw):
                t = tap(xp, i, j)
                if depthwise:
                    y += t * w[:, 0, i, j][None, :, None, None]
                else:
                    y += unrows(np.matmul(rows(t, Cg), wg[:, :, :, i, j].transpose(0, 2, 1)), Kg)
        if b is not None:
            y += b[None, :, None, None]

        def back(dy: np.ndarray) -> np.ndarray:
            dxp = np.zeros_like(xp)
            dwt = np.zeros_like(w)
            dyr = dy if depthwise else rows(dy, Kg)
            for i in range(kh):
                for j in range(kw):
                    t = tap(xp, i, j)
                    if depthwise:
                        dwt[:, 0, i, j] = np.einsum("nchw,nchw->c", t, dy)
                        tap(dxp, i, j)[...] += dy * w[:, 0, i, j][None, :, None, None]
                    else:
                        dwt.reshape(G, Kg, Cg, kh, kw)[:, :, :, i, j] = np.matmul(
                            dyr.transpose(0, 2, 1), rows(t, Cg))
                        tap(dxp, i, j)[...] += unrows(np.matmul(dyr, wg[:, :, :, i, j]), Cg)
            self._add(f"{name}.weight", dwt)
            if b is not None:
                self._add(f"{name}.bias", dy.sum(axis=(0, 2, 3)))
            return dxp[:, :, ph:ph + H, pw:pw + W]

        return y, back

    def _bn(self, name: str, m: Any, x: np.ndarray) -> tuple[np.ndarray, _Back]:
        """Training-mode batch norm without its activation (biased batch variance)."""
        C = x.shape[1]
        g = self.params.get(f"{name}.weight", np.ones(C))
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        xc = x - mean
        invstd = 1.0 / np.sqrt((xc * xc).mean(axis=(0, 2, 3), keepdims=True) + float(m.eps))
        xh = xc * invstd
        y = xh * g[None, :, None, None]
        if f"{name}.bias" in self.params:
            y = y + self.params[f"{name}.bias"][None, :, None, None]
        M = x.size // C

        def back(dy: np.ndarray) -> np.ndarray:
            s1 = dy.sum(axis=(0, 2, 3))
            s2 = (dy * xh).sum(axis=(0, 2, 3))
            if f"{name}.weight" in self.params:
                self._add(f"{name}.weight", s2)
            if f"{name}.bias" in self.params:
                self._add(f"{name}.bias", s1)
            k = (g[None, :, None, None] * invstd) / M
            return k * (M * dy - s1[None, :, None, None] - xh * s2[None, :, None, None])

        return y, back

    def _relu(self, x: np.ndarray, biases: tuple[str, ...]) -> tuple[np.ndarray, _Back]:
        """A ReLU site: its backward masks by ``x > 0``, flipped where :attr:`flip` says."""
        k = len(self.sites)
        site = _Site(x, self._where, biases)
        self.sites.append(site)

        def back(dy: np.ndarray) -> np.ndarray:
            if site.dy is None:
                site.dy = dy
            mask = x > 0
            f = self.flip.get(k)
            return dy * (mask if f is None else mask ^ f)

        return np.maximum(x, 0.0), back

    def _module(self, name: str, m: Any, x: np.ndarray) -> tuple[np.ndarray, _Back]:
        """The layer ``m`` (named ``name``) on ``x``: (output, its backward)."""
        kind = type(m)
        if kind is _nn.Conv2d:
            return self._conv(name, m, x)
        if kind is _nn.BatchNorm2d:
            y, bn_back = self._bn(name, m, x)
            if m.activation is None:
                return y, bn_back
            self._where = name
            y, relu_back = self._relu(y, (f"{name}.bias",))
            return y, lambda dy: bn_back(relu_back(dy))
        if kind is _nn.Sequential:
            return self._chain([(f"{name}.{i}" if name else str(i), s) for i, s in enumerate(m.layers)], x)
        if kind is _nn.BottleneckBlock:
            return self._bottleneck(name, m, x)
        if kind is _nn.GlobalAvgPool2d:
            hw = x.shape[2] * x.shape[3]
            return x.mean(axis=(2, 3)), lambda dy: np.broadcast_to(dy[:, :, None, None] / hw, x.shape).copy()
        if kind is _nn.Linear:
            w, b = self.params[f"{name}.weight"], self.params.get(f"{name}.bias")
            y = x @ w.T + (0.0 if b is None else b)

            def back(dy: np.ndarray) -> np.ndarray:
                self._add(f"{name}.weight", dy.T @ x)
                if b is not None:
                    self._add(f"{name}.bias", dy.sum(axis=0))
                return dy @ w

            return y, back
        raise TypeError(f"model: Ref64 covers Conv2d, BatchNorm2d, Sequential, BottleneckBlock, "
                        f"GlobalAvgPool2d and Linear; got {kind.__name__} at {name!r}")

    def _chain(self, mods: list, x: np.ndarray) -> tuple[np.ndarray, _Back]:
        """The (name, module) pairs one after the other."""
        backs = []
        for name, m in mods:
            x, b = self._module(name, m, x)
            backs.append(b)

        def back(dy: np.ndarray) -> np.ndarray:
            for b in reversed(backs):
                dy = b(dy)
            return dy

        return x, back

    def _bottleneck(self, name: str, m: Any, x: np.ndarray) -> tuple[np.ndarray, _Back]:
        """relu(bn3(conv3(...conv1(x))) + shortcut(x)), as cnnkit's BottleneckBlock (batch norm)."""
        if m.bn3 is None or m.bn3.activation != "relu":
            raise TypeError(f"model: Ref64 covers bottleneck blocks with batch norm; {name!r} has none")
        if m.shortcut is None:
            r, r_back = x, (lambda dy: dy)
            biases: tuple[str, ...] = (f"{name}.bn3.bias",)
        else:
            r, r_back = self._module(f"{name}.downsample", m.shortcut, x)
            biases = (f"{name}.bn3.bias", f"{name}.downsample.1.bias")
        h, h_back = self._chain([(f"{name}.{k}", getattr(m, k)) for k in ("conv1", "bn1", "conv2", "bn2",
                                                                           "conv3")], x)
        z, bn_back = self._bn(f"{name}.bn3", m.bn3, h)
        self._where = f"{name} (output)"
        y, relu_back = self._relu(z + r, biases)

        def back(dy: np.ndarray) -> np.ndarray:
            ds = relu_back(dy)
            return h_back(bn_back(ds)) + r_back(ds)

        return y, back

    def _add(self, name: str, g: np.ndarray) -> None:
        """Accumulate a parameter's gradient (a block's input feeds two paths)."""
        self._grads[name] = self._grads[name] + g if name in self._grads else g

    # ---- the step ---------------------------------------------------------------------------------
    def forward(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """Logits and the cross-entropy loss (mean over the batch) of the NCHW batch ``x``; keeps
        what :meth:`backward` needs and records the ReLU sites."""
        self.sites = []
        logits, self._back = self._module("", self.model, np.asarray(x, np.float64))
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        n = logits.shape[0]
        idx = np.asarray(labels, np.int64)
        loss = float(-np.log(p[np.arange(n), idx]).mean())
        d = p.copy()
        d[np.arange(n), idx] -= 1.0
        self._dlogits = d / n
        return logits, loss

    def backward(self) -> list[np.ndarray]:
        """The parameter gradients of the last forward's loss (``names`` order), with the masks
        flipped where :attr:`flip` says; the first backward after a forward records each site's
        output gradient."""
        self._grads = {}
        self._back(self._dlogits)
        return [self._grads.get(n, np.zeros_like(self.params[n])) for n in self.names]

    def after_adam(self, grads: list[np.ndarray], x: np.ndarray, labels: np.ndarray, lr: float) -> np.ndarray:
        """The logits (training mode) after Adam's first step with ``grads`` from these weights:
        each parameter moves by ``-lr * g / (|g| + eps)``. The weights are restored after."""
        saved = self.params
        self.params = {n: saved[n] - lr * g / (np.abs(g) + ADAM_EPS) for n, g in zip(self.names, grads)}
        kept = self.sites, self._back, self._dlogits
        try:
            return self.forward(x, labels)[0]
        finally:
            self.params = saved
            self.sites, self._back, self._dlogits = kept
