"""The feature-visualization loop of :func:`cnnkit.explain.feature_visualization` written in
PyTorch autograd, the peer of ``cnnkit bench explain --methods features``.

One step, as cnnkit computes it (:mod:`cnnkit.explain.features`), on a real spectrum tensor
``spec`` (2, N, 3, H, W // 2 + 1) that Adam updates:

1. ``raw = irfft2((spec[0] + i spec[1]) * fft_scale(H, W)) / 4`` (torch.fft, numpy's
   normalization), ``y = M raw`` per pixel with cnnkit's colour basis ``M`` (Lucid's ImageNet one),
   ``image = sigmoid(y)``;
2. the standard transforms with cnnkit's own draws (``tf.sample(rng, N, (H, W))``) and maps
   (``tf.affine``: output pixel (row, col, 1) -> input pixel (row, col)), read by
   ``F.grid_sample`` (bilinear, ``align_corners=False``, so pixel centres normalize as
   ``(2 p + 1) / size - 1``) from ``image - 0.5`` with zero padding, then ``+ 0.5``: the fill 0.5
   that cnnkit's sampling plan gives the neighbours outside the image;
3. the model up to the layer and the mean of channel ``k`` there (over batch and positions):
   either a truncated ``nn.Sequential`` of the twin's first layers (the fair peer: it computes what
   cnnkit computes), or the whole twin with a forward hook that keeps the layer's output, as
   Lucent does (the layers above run in the forward for nothing);
4. ``value.backward()`` and ``torch.optim.Adam(lr, maximize=True).step()``.

The model's parameters do not require gradients (cnnkit computes none either). Seeded like
cnnkit (the initial spectrum ``rng.normal(0, 0.01)`` first, then every step's transform draws from
the same generator), the loop sees the same initial images and the same transforms as cnnkit's.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Optional, Tuple

import numpy as np

from cnnkit.explain._fv_param import color_basis, fft_scale

__all__ = ["TorchFeatureLoop", "frozen_copy"]


def frozen_copy(torch: Any, twin: Any) -> Any:
    """A deep copy of the torch twin in eval mode whose parameters do not require gradients."""
    net = copy.deepcopy(twin).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class TorchFeatureLoop:
    """The feature-visualization loop on a torch model (see the module docstring).

    Parameters
    ----------
    torch : module
        The ``torch`` module.
    net : torch.nn.Sequential
        The torch twin (e.g. :func:`frozen_copy`), indexed like cnnkit's model.
    layer : str
        A top-level layer name (``"3"``, ``"4"``): the twin's module of that index.
    k : int
        The channel whose mean is maximized.
    hw : (int, int)
        The image size.
    batch : int
        Images optimized together.
    transforms : cnnkit.explain.features.Compose
        cnnkit's transforms (``standard_transforms(hw)``): their draws and affine maps are used.
    full : bool
        Run the whole model and read the layer with a forward hook (Lucent's way) instead of a
        truncated ``nn.Sequential``.
    channels_last : bool
        Give the model its input in channels_last memory format.
    """

    def __init__(self, torch: Any, net: Any, layer: str, k: int, hw: Tuple[int, int], batch: int,
                 transforms: Any, *, full: bool = False, channels_last: bool = False,
                 lr: float = 0.05) -> None:
        self.torch, self.k, self.hw, self.batch = torch, int(k), (int(hw[0]), int(hw[1])), int(batch)
        self.tf, self.full, self.channels_last, self.lr = transforms, bool(full), bool(channels_last), lr
        idx = int(layer)
        self.layer_module = net[idx]
        self.net = net if full else torch.nn.Sequential(*list(net.children())[:idx + 1])
        H, W = self.hw
        self.scale = torch.from_numpy(fft_scale(H, W).astype(np.float32))
        self.basis = torch.from_numpy(color_basis().astype(np.float32))
        self.pshape = (2, self.batch, 3, H, W // 2 + 1)
        self.out_hw = transforms.output_size(self.hw)
        Ho, Wo = self.out_hw
        ii, jj = np.meshgrid(np.arange(Ho, dtype=np.float64), np.arange(Wo, dtype=np.float64),
                             indexing="ij")
        self._base = np.stack([ii.ravel(), jj.ravel(), np.ones(Ho * Wo)])       # (3, K)

    # ---- one step ------------------------------------------------------------------------------
    def grid(self, A: np.ndarray) -> Any:
        """The (N, Ho, Wo, 2) ``grid_sample`` grid (x = column, y = row, align_corners=False) of
        the output -> input pixel maps ``A`` (N, 2, 3)."""
        H, W = self.hw
        Ho, Wo = self.out_hw
        src = np.asarray(A, np.float64) @ self._base                                 # (N, 2, K)
        g = np.empty((src.shape[0], Ho * Wo, 2), np.float32)
        g[..., 0] = (2.0 * src[:, 1] + 1.0) / W - 1.0
        g[..., 1] = (2.0 * src[:, 0] + 1.0) / H - 1.0
        return self.torch.from_numpy(g.reshape(-1, Ho, Wo, 2))

    def image(self, spec: Any) -> Any:
        """The images (N, 3, H, W) in (0, 1) of the spectrum tensor ``spec``."""
        torch = self.torch
        H, W = self.hw
        z = torch.complex(spec[0], spec[1]) * self.scale
        raw = torch.fft.irfft2(z, s=(H, W)) / 4
        mixed = torch.einsum("ij,njhw->nihw", self.basis, raw)
        return torch.sigmoid(mixed)

    def objective(self, spec: Any, A: np.ndarray) -> Any:
        """The mean of channel ``k`` at the layer for the images of ``spec`` seen through the maps
        ``A``: a 0-d tensor attached to the autograd graph."""
        F = self.torch.nn.functional
        img = self.image(spec)
        x = F.grid_sample(img - 0.5, self.grid(A), mode="bilinear", padding_mode="zeros",
                          align_corners=False) + 0.5
        if self.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        if not self.full:
            act = self.net(x)
        else:
            store: dict = {}
            h = self.layer_module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
            try:
                self.net(x)
            finally:
                h.remove()
            act = store["a"]
        return act[:, self.k].mean()

    def value_and_grad(self, spec: np.ndarray, tparams: Any) -> Tuple[float, np.ndarray]:
        """The objective and its gradient with respect to the spectrum (float32, ``spec``'s
        shape) for the spectrum ``spec`` and the transforms' parameters ``tparams``."""
        s = self.torch.from_numpy(np.array(spec, np.float32)).requires_grad_(True)
        v = self.objective(s, self.tf.affine(tparams, self.hw))
        v.backward()
        return float(v.item()), s.grad.numpy().copy()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, steps: int, seed: int = 0, rng: Optional[np.random.Generator] = None
            ) -> Tuple[float, np.ndarray, np.ndarray]:
        """``steps`` Adam steps from cnnkit's initial spectrum for ``seed``: (seconds of the loop,
        the objective at every step float64 (steps,), the final images (N, H, W, 3) float32)."""
        torch = self.torch
        rng = np.random.default_rng(seed) if rng is None else rng
        spec = torch.from_numpy(np.ascontiguousarray(rng.normal(0.0, 0.01, size=self.pshape),
                                                     dtype=np.float32)).requires_grad_(True)
        opt = torch.optim.Adam([spec], lr=self.lr, maximize=True)
        values = np.empty(steps, np.float64)
        tf, n, hw = self.tf, self.batch, self.hw
        t0 = time.perf_counter()
        for step in range(steps):
            A = tf.affine(tf.sample(rng, n, hw), hw)
            opt.zero_grad(set_to_none=True)
            v = self.objective(spec, A)
            v.backward()
            opt.step()
            values[step] = v.item()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            img = self.image(spec).permute(0, 2, 3, 1).contiguous().numpy()
        return seconds, values, img
