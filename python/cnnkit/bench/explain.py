"""Attribution benchmark: :mod:`cnnkit.explain` against captum and pytorch-grad-cam on the same
small CNN, on the CPU.

Run it as ``cnnkit bench explain [options]`` or ``python benchmarks/bench_explain.py [options]``;
``--help`` lists the options.

What is measured
----------------
The model is :func:`cnnkit.models.resnet_small` ``(3, 10)`` (widths 16/32/64, one basic block per
stage, batch norm, eval mode). Its batch-norm running statistics, scales and shifts are randomized
(seeded) so that eval-mode batch norm is not the identity. Its torch twin (:func:`build_torch_twin`)
is the same architecture in ``torch.nn`` with a distinct ``torch.nn.ReLU`` module for every ReLU
(captum's guided backprop only sees ``nn.ReLU`` modules; cnnkit fuses the ReLUs into its batch
norms), and gets cnnkit's parameters copied one to one in parameter order and its buffers in buffer
order (:func:`copy_weights`), every shape asserted equal.

Two batches of uniform [0, 1) float32 images: 32 of 3x32x32 and 8 of 3x64x64. The explained class
of every image is its predicted class, computed once and passed explicitly to both sides. For each
method, seconds per image of one call on the whole batch, cnnkit vs the peer:

=====================  ======================================================================
grad_cam               ``explain.grad_cam`` (default ``upsample=True, normalize=True``) vs
                       pytorch-grad-cam ``GradCAM`` (the full ``cam(input_tensor, targets)``
                       call, its cv2 resize and min-max scaling included), last block "4"
grad_cam_pp            ``explain.grad_cam_pp`` vs ``GradCAMPlusPlus``, same layer
saliency               ``explain.saliency(abs=True, reduce=None)`` vs captum ``Saliency``
guided_backprop        ``explain.guided_backprop`` vs captum ``GuidedBackprop``
integrated_gradients   ``explain.integrated_gradients(steps=50)`` (Gauss-Legendre, baseline 0)
                       vs captum ``IntegratedGradients(n_steps=50, internal_batch_size=B)``
smoothgrad             ``explain.smoothgrad(n_samples=50, noise=0.15, abs=True)`` vs captum
                       ``NoiseTunnel(Saliency)`` (``nt_samples=50, nt_samples_batch_size=B/N``,
                       ``stdevs`` = 0.15 x the batch's mean image range: captum takes one sigma)
occlusion              ``explain.occlusion(window=8, stride=4)`` vs captum ``Occlusion``
                       (window (C, 8, 8), strides (C, 4, 4), ``perturbations_per_eval=B/N``);
                       a second peer row with captum's default ``perturbations_per_eval=1``
                       (not with ``--quick``)
rise                   ``explain.rise(n_masks=2000, cell=8, p=0.5)`` vs a straightforward torch
                       RISE (:func:`torch_rise`; captum has no RISE): the same grids, upsampled
                       with ``F.interpolate``, cropped, then mask-major chunks of B masked inputs
score_cam              ``explain.score_cam`` vs pytorch-grad-cam ``ScoreCAM`` with its
                       ``batch_size`` attribute set to B (it batches within one image, so at most
                       K = 64 masked inputs per forward); its tqdm progress bars are replaced by
                       a plain iterator
=====================  ======================================================================

B, the masked/noisy/interpolated inputs per forward, is cnnkit's own default for that batch
(:func:`cnnkit.explain._model.default_batch_size`: a 256 MiB budget over the buffer bytes per input
it measured on an earlier call, here one ``saliency`` call on the batch) rounded down to a multiple
of the batch size N (at least N), and is passed to both sides (``--batch-size`` sets it). RISE
explains only the first ``--rise-images`` images of each batch (default 2 and 1): its cost is 2000
forwards per image whatever N is, and the whole batch would take minutes per call.

Before timing, both sides run every timed call once and the results are compared (max |diff| /
max |peer|, tolerance 1e-3; SmoothGrad with zero noise on both sides, since the two draw
different noise; captum's occlusion is compared channel by channel). A cnnkit result outside the
tolerance stops the benchmark.

Feature visualization (``--methods features``)
----------------------------------------------
Adam steps per second of :func:`cnnkit.explain.feature_visualization` with
``objectives.channel(layer, k)``, the FFT parameterization with colour decorrelation and the
standard transforms, batch 4 at 64x64 (the model sees 67x67), lr 0.05, 30 steps per call, at the
last block "4" and the middle block "3", the 3 most active channels of each on the initial images
(``--fv-steps``, ``--fv-channels``). cnnkit's figure is ``FeatureHistory.seconds`` (the
optimization loop, not the setup). The peers are the same loop in torch autograd on the twin
(:mod:`cnnkit.bench._fv_torch`): the spectrum through ``torch.fft.irfft2`` scaled by cnnkit's
``fft_scale`` / 4, cnnkit's colour basis and a sigmoid, cnnkit's own transform draws and affine maps
read by ``F.grid_sample``, the channel mean, ``torch.optim.Adam(maximize=True)``; once on the twin
truncated to the layer (the fair peer) and once on the whole twin with a forward hook at the layer,
as Lucent runs it. Both start from cnnkit's initial spectrum for the seed and draw the same
transforms. Before timing, one step from the same spectrum (the images a few cnnkit steps reach)
and the same draws is compared: the gradient with respect to the spectrum (max |diff| / max
|torch|) and the objective, each within the tolerance. Target: cnnkit >= 2x the faster torch loop.
Interleaved rounds as for the methods (5 timed after 1 warm-up round; 1 and none with ``--quick``,
which runs 2 steps at layer "4", one channel). torch-lucent's version is printed if it imports; it
is not run.

Timing, roofs, memory
---------------------
cnnkit, torch and numpy's OpenBLAS run at ``--threads`` (default 2). Each method is timed in its
own interleaved rounds (:func:`cnnkit.bench._common.run_rounds`): every round runs one call of
each side for each batch, then a STREAM ``triad`` probe; odd rounds reverse the order. Short calls
are repeated back to back (``inner``) to last about 0.2 s. Tables show medians over rounds; x peer
is the median over rounds of (peer time / cnnkit time). The check pass runs every call once
first. The single-pass methods (grad_cam, grad_cam_pp, saliency, guided_backprop) then get one
warm-up round and 7 timed rounds; the others, whose calls run hundreds to thousands of model passes
and are seconds long, 5 timed rounds and no further warm-up. The default run takes about 4 minutes
on an idle 2-core machine (three times that when other processes take a core).

Model FLOPs count convolutions and the linear layer: forward 2*MACs; backward 1x forward (input
gradients only, as attribution needs). Per method the nominal count is the model passes it needs
(e.g. 50 x (forward + backward) per image for IG, 2000 forwards for RISE); GFLOP/s and the share
of the sgemm peak (the best 2048^3 OpenBLAS rate measured at start and end) stand beside it.

Peak memory is measured in a separate pass after the rounds, one call per side: the rise of the
process's peak resident set (``VmHWM`` in ``/proc/self/status``, reset by writing 5 to
``/proc/self/clear_refs``) over the resident set before the call, after ``gc.collect()`` and
glibc's ``malloc_trim(0)`` hand freed memory back to the system. That sees NumPy and torch alike,
but memory reused from pages already resident is not counted, so it is a lower bound: glibc does
not hand everything back (the process's resident set grows over the run; its size before and after
the memory pass is printed), and cnnkit's conv kernels keep grow-only per-thread scratch buffers
(``cpp/src/conv/scratch.h``) that stay resident after their first use. The buffers
:mod:`cnnkit.explain` keeps between calls (``release_buffers``) are released before each cnnkit
call of this pass, so its figure includes allocating them. For cnnkit the
``tracemalloc`` peak of the same call (every NumPy allocation, not the C++ scratch) is shown too.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import sys
from typing import Any
import time
import tracemalloc
import warnings

import numpy as np

import cnnkit
from cnnkit import explain as _explain
from cnnkit import models as _models
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    Emitter,
    add_roof_args,
    import_torch,
    import_torchvision,
    med,
    parse_list,
    peer_header,
    probe,
    run_rounds,
    spread,
    stream_arrays,
    target,
    target_summary,
    target_text,
    write_json,
)

__all__ = ["METHODS", "TARGETS", "build_models", "build_torch_twin", "copy_weights", "main",
           "torch_rise", "model_flops"]

METHODS = ("grad_cam", "grad_cam_pp", "saliency", "guided_backprop", "integrated_gradients",
           "smoothgrad", "occlusion", "rise", "score_cam")
TARGETS = {"grad_cam": 1.5, "grad_cam_pp": 1.5, "saliency": 1.5, "guided_backprop": 1.5,
           "integrated_gradients": 1.5, "smoothgrad": 1.5, "occlusion": 2.0, "rise": 2.0,
           "score_cam": 2.0}
PEERS = {"grad_cam": "pytorch-grad-cam GradCAM", "grad_cam_pp": "pytorch-grad-cam GradCAMPlusPlus",
         "saliency": "captum Saliency", "guided_backprop": "captum GuidedBackprop",
         "integrated_gradients": "captum IntegratedGradients",
         "smoothgrad": "captum NoiseTunnel(Saliency)", "occlusion": "captum Occlusion",
         "rise": "torch RISE (no captum RISE)", "score_cam": "pytorch-grad-cam ScoreCAM"}
SHAPES = ((32, 32), (8, 64))          # (batch, image side), 3 channels
QUICK_SHAPES = ((4, 32), (1, 64))
NUM_CLASSES = 10
LAYER = "4"                           # the last residual block (cnnkit's default CAM layer)
IG_STEPS, SG_SAMPLES, RISE_MASKS = 50, 50, 2000
QUICK_IG_STEPS, QUICK_SG_SAMPLES, QUICK_RISE_MASKS = 4, 4, 32
SG_NOISE = 0.15
OCC_WINDOW, OCC_STRIDE = 8, 4
RISE_CELL, RISE_P = 8, 0.5
RISE_IMAGES = (2, 1)                  # images RISE explains per batch (the first ones)
CHEAP = ("grad_cam", "grad_cam_pp", "saliency", "guided_backprop")   # one forward + backward
TOL = 1e-3
#: methods that average gradients over many inputs: checked on the 99.9th percentile (_compare)
KINKED = ("integrated_gradients", "smoothgrad")
PROBE_KIND = "triad"
INNER_SECONDS = 0.2
#: the feature-visualization benchmark (``--methods features``): a channel objective, FFT
#: parameterization with colour decorrelation, the standard transforms, batch 4 at 64x64, Adam
FEATURES = "features"
FV_LAYERS, QUICK_FV_LAYERS = ("4", "3"), ("4",)     # the last block and the middle one
FV_CHANNELS, QUICK_FV_CHANNELS = 3, 1               # channels per layer (the most active ones)
FV_STEPS, QUICK_FV_STEPS = 30, 2                    # Adam steps per timed call
FV_CHECK_STEPS, QUICK_FV_CHECK_STEPS = 8, 2         # cnnkit steps to the checked state
FV_BATCH, FV_SIDE, FV_LR = 4, 64, 0.05
FV_TARGET = 2.0                                     # cnnkit steps/s >= 2x the best peer's
FV_PEERS = ("torch autograd, truncated", "torch autograd, full + hook")


# ---- the model and its torch twin ----------------------------------------------------------------
def build_model(seed: int = 0, widths=(16, 32, 64), blocks=(1, 1, 1), layout: str = "NCHW"):
    """``resnet_small(3, 10)`` in eval mode with randomized batch-norm statistics and affine
    parameters (running mean N(0, 0.2), running var U(0.5, 2), scale U(0.5, 1.5), shift
    N(0, 0.2), seeded).

    Parameters
    ----------
    seed : int
        Seeds the weights and the batch-norm randomization.
    widths, blocks : sequence of int
        As :func:`cnnkit.models.resnet_small`.
    layout : "NCHW" or "NHWC"
        The model's layout (the same weights either way).

    Returns
    -------
    cnnkit.nn.Sequential
        The model, in eval mode.
    """
    m = _models.resnet_small(3, NUM_CLASSES, widths=widths, blocks=blocks, seed=seed, layout=layout)
    rng = np.random.default_rng(seed + 7)
    for _, mod in m.named_modules():
        if "running_mean" in mod.buffers:
            k = mod.buffers["running_mean"].size
            mod.buffers["running_mean"][...] = rng.normal(0.0, 0.2, k)
            mod.buffers["running_var"][...] = rng.uniform(0.5, 2.0, k)
            mod.params["weight"][...] = rng.uniform(0.5, 1.5, k)
            mod.params["bias"][...] = rng.normal(0.0, 0.2, k)
    return m.eval()


def build_torch_twin(torch, widths=(16, 32, 64), blocks=(1, 1, 1)):
    """``resnet_small`` (norm="batch") in torch.nn, module indices as cnnkit's (0 stem conv, 1 its
    batch norm + ReLU, 2.. the blocks, then pooling and the classifier), a distinct ``nn.ReLU`` for
    every ReLU cnnkit fuses into a batch norm, and parameters in cnnkit's order.

    Parameters
    ----------
    torch : module
        The imported torch.
    widths, blocks : sequence of int
        As :func:`build_model` (and :func:`cnnkit.models.resnet_small`).

    Returns
    -------
    torch.nn.Sequential
        The twin, with torch's default initialization (:func:`copy_weights` gives it cnnkit's).
    """
    tnn = torch.nn

    class BNReLU(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.bn = tnn.BatchNorm2d(c)
            self.relu = tnn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(x))

    class BasicBlock(tnn.Module):
        """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut (conv1x1(stride)-BN when the
        shape changes), then ReLU: cnnkit's ResidualBlock."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu1 = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                                 tnn.BatchNorm2d(cout))
            self.relu2 = tnn.ReLU()

        def forward(self, x):
            r = x if self.downsample is None else self.downsample(x)
            h = self.relu1(self.bn1(self.conv1(x)))
            return self.relu2(self.bn2(self.conv2(h)) + r)

    class GlobalAvgPool(tnn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    layers = [tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False), BNReLU(widths[0])]
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
            c = w
    layers += [GlobalAvgPool(), tnn.Linear(c, NUM_CLASSES)]
    return tnn.Sequential(*layers)


def copy_weights(torch, cnn, twin) -> tuple:
    """cnnkit's parameters into the twin in parameter order, its buffers (running statistics,
    batch counts) in buffer order.

    Parameters
    ----------
    torch : module
        The imported torch.
    cnn : cnnkit.nn.Module
        The source model.
    twin : torch.nn.Module
        The destination, with the same parameter and buffer arrays in the same order
        (:func:`build_torch_twin`).

    Returns
    -------
    tuple of int
        The numbers of parameter and buffer arrays copied.

    Raises
    ------
    ValueError
        On any count or shape mismatch (nothing is copied on a count mismatch).
    """
    cp, tp = cnn.parameters(), list(twin.parameters())
    cb = [b for m in cnn.modules() for b in m.buffers.values()]
    tb = list(twin.buffers())
    if len(cp) != len(tp) or len(cb) != len(tb):
        raise ValueError(f"cnnkit has {len(cp)} parameter and {len(cb)} buffer arrays, the torch "
                         f"twin {len(tp)} and {len(tb)}")
    with torch.no_grad():
        for what, src, dst in (("parameter", cp, tp), ("buffer", cb, tb)):
            for i, (a, t) in enumerate(zip(src, dst)):
                a = np.asarray(a)
                if tuple(a.shape) != tuple(t.shape):
                    raise ValueError(f"{what} {i}: cnnkit shape {a.shape}, torch shape "
                                     f"{tuple(t.shape)}")
                t.copy_(torch.from_numpy(np.array(a)).to(t.dtype))
    return len(cp), len(cb)


def build_models(torch, seed: int = 0, layout: str = "NCHW", torch_layout: str = "NCHW") -> tuple:
    """The benchmark's cnnkit model and its torch twin with the same weights.

    Parameters
    ----------
    torch : module or None
        The imported torch; None: no twin.
    seed : int
        As :func:`build_model`.
    layout : "NCHW" or "NHWC"
        The cnnkit model's layout.
    torch_layout : "NCHW" or "channels_last"
        The twin's memory format.

    Returns
    -------
    tuple
        ``(model, twin)``: the cnnkit model (:func:`build_model`) and the torch twin in eval mode
        with its weights (:func:`build_torch_twin`, :func:`copy_weights`), or None without torch.
    """
    m = build_model(seed, layout=layout)
    if torch is None:
        return m, None
    twin = build_torch_twin(torch)
    copy_weights(torch, m, twin)
    if torch_layout == "channels_last":
        twin = twin.to(memory_format=torch.channels_last)
    return m, twin.eval()


def model_flops(model, side: int) -> float:
    """Forward FLOPs of one image (convolutions and the linear layer, 2*MACs).

    Parameters
    ----------
    model : cnnkit.nn.Module
        The benchmark's model. The count runs on the same architecture built here in NCHW
        (:func:`build_model`), so the model's layout does not matter.
    side : int
        The image's height and width.

    Returns
    -------
    float
        FLOPs of one ``side`` x ``side`` image.
    """
    from cnnkit.bench.train import describe, layer_shapes
    nchw = build_model(0)              # the same architecture, counted in NCHW
    x = np.zeros((1, 3, side, side), np.float32)
    with _explain.explaining(nchw):
        desc = describe(nchw, layer_shapes(nchw, x), "NCHW")
    return float(sum(v[1] for v in desc.values()))


# ---- the torch RISE peer -------------------------------------------------------------------------
def torch_rise(torch, model, x, targets, *, n_masks, cell, p, seed, batch_size):
    """RISE in plain torch, as the usual PyTorch port of Petsiuk et al. writes it, batched as
    cnnkit batches it.

    Draws the grids (:func:`cnnkit.explain.perturbation.rise_grids`, so a seed gives cnnkit's
    masks), upsamples them with ``F.interpolate`` (bilinear, align_corners=False) and crops them at
    the shifts; then runs chunks of ``batch_size // N`` masks times every image, softmax,
    ``saliency += probs^T @ masks``; finally divides by ``n_masks * p``.

    Parameters
    ----------
    torch : module
        The imported ``torch`` package.
    model : torch.nn.Module
        The classifier (eval mode).
    x : torch.Tensor
        The images, (N, C, H, W).
    targets : array_like of int
        The class to explain for each image, (N,).
    n_masks : int
        Masks drawn.
    cell : int
        The grid cell's size in pixels.
    p : float
        Probability that a grid cell is kept.
    seed : int
        Seed of the masks' generator.
    batch_size : int
        Masked images per forward pass: ``max(1, batch_size // N)`` masks times the N images.

    Returns
    -------
    torch.Tensor
        The saliency maps, (N, H, W).
    """
    from cnnkit.explain.perturbation import rise_grids
    F = torch.nn.functional
    N, C, H, W = x.shape
    grid = (-(-H // cell), -(-W // cell))
    grids, shifts = rise_grids(n_masks, grid, p, (cell, cell), np.random.default_rng(seed))
    with torch.no_grad():
        g = torch.from_numpy(grids.astype(np.float32))[:, None]
        up = F.interpolate(g, size=((grid[0] + 1) * cell, (grid[1] + 1) * cell),
                           mode="bilinear", align_corners=False)[:, 0]
        masks = torch.empty((n_masks, H, W))
        for i in range(n_masks):
            dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
            masks[i] = up[i, dy:dy + H, dx:dx + W]
        sal = torch.zeros((N, H * W))
        k = max(1, batch_size // N)
        cols = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        for m0 in range(0, n_masks, k):
            mk = masks[m0:m0 + k]
            batch = (mk[:, None, None] * x[None]).reshape(-1, C, H, W)     # mask-major rows
            prob = torch.softmax(model(batch), dim=1).reshape(mk.shape[0], N, -1)
            pt = prob[:, torch.arange(N), cols]                             # (k, N)
            sal += pt.T @ mk.reshape(mk.shape[0], H * W)
        return (sal / (n_masks * p)).reshape(N, H, W)


# ---- one batch: the calls of both sides ----------------------------------------------------------
class _NoTqdm:
    @staticmethod
    def tqdm(it, *args, **kwargs):
        return it


class Case:
    """One batch (N images of side x side): the inputs, targets, chunk size and the calls."""

    def __init__(self, model, twin, torch, peers, batch, side, counts, rise_images, batch_size,
                 seed=0, quick=False):
        self.model, self.twin, self.torch, self.peers = model, twin, torch, peers
        self.quick = quick
        self.N, self.side = batch, side
        self.counts = counts
        self.layer_channels = model[int(LAYER)].conv2.out_channels     # K, Score-CAM's masks
        rng = np.random.default_rng(seed + side)
        self.x = rng.random((batch, 3, side, side), dtype=np.float32)        # NCHW: torch, checks
        self.nhwc = _explain._model.layout_of(model) == "NHWC"
        self.xc = np.ascontiguousarray(self.x.transpose(0, 2, 3, 1)) if self.nhwc else self.x
        self.targets = np.argmax(_explain._model.logits_of(model, self.xc), axis=1).astype(np.int64)
        self.default_bs = None
        if batch_size is None:
            # cnnkit's default once it has run a method on this input shape (it measures its
            # buffers per input then; before any call it guesses from the input's size)
            _explain.saliency(model, self.xc, self.targets)
            batch_size = self.default_bs = _explain._model.default_batch_size(model, self.xc)
        self.bs = max(batch, batch_size // batch * batch)
        self.rise_n = batch if not rise_images else min(batch, rise_images)
        self.sigma = SG_NOISE * float(np.mean(self.x.reshape(batch, -1).max(axis=1)
                                              - self.x.reshape(batch, -1).min(axis=1)))
        if torch is not None:
            self.xt = torch.from_numpy(self.x)
            if twin is not None and next(twin.parameters()).is_contiguous(memory_format=torch.channels_last) \
                    and next(twin.parameters()).dim() == 4:
                self.xt = self.xt.contiguous(memory_format=torch.channels_last)
            self.tt = torch.from_numpy(self.targets)

    @property
    def label(self) -> str:
        """The case's batch shape as the tables show it.

        Returns
        -------
        str
            ``"{N}x3x{side}x{side}"``.
        """
        return f"{self.N}x3x{self.side}x{self.side}"

    # cnnkit --------------------------------------------------------------------------------------
    def cnnkit_call(self, method, check=False):
        """cnnkit's call of ``method`` on this case.

        Parameters
        ----------
        method : str
            One of the benchmark's methods (``"saliency"``, ``"grad_cam"``, ``"rise"``, ...).
        check : bool
            For the correctness check rather than the timing: SmoothGrad without noise, and an
            NHWC case's 4-D result returned in NCHW (outside the timed call).

        Returns
        -------
        callable
            Takes no argument and returns the attribution as a NumPy array.
        """
        call = self._cnnkit_call(method, check)
        if not (check and self.nhwc):
            return call

        def nchw():                      # checks compare in NCHW (not part of the timed call)
            r = call()
            return r.transpose(0, 3, 1, 2) if np.ndim(r) == 4 else r
        return nchw

    def _cnnkit_call(self, method, check=False):
        e, m, x, t, bs, c = _explain, self.model, self.xc, self.targets, self.bs, self.counts
        if method in ("grad_cam", "grad_cam_pp"):
            return lambda: getattr(e, method)(m, x, t, layer=LAYER)
        if method == "saliency":
            return lambda: e.saliency(m, x, t, abs=True, reduce=None, batch_size=bs)
        if method == "guided_backprop":
            return lambda: e.guided_backprop(m, x, t, batch_size=bs)
        if method == "integrated_gradients":
            return lambda: e.integrated_gradients(m, x, t, steps=c["ig"], batch_size=bs)
        if method == "smoothgrad":
            noise = 0.0 if check else SG_NOISE
            return lambda: e.smoothgrad(m, x, t, n_samples=c["sg"], noise=noise, abs=True,
                                        batch_size=bs, seed=0)
        if method == "occlusion":
            return lambda: e.occlusion(m, x, t, window=OCC_WINDOW, stride=OCC_STRIDE,
                                       batch_size=bs)
        if method == "rise":
            xr, tr = x[:self.rise_n], t[:self.rise_n]
            return lambda: e.rise(m, xr, tr, n_masks=c["rise"], cell=RISE_CELL, p=RISE_P, seed=0,
                                  batch_size=bs)
        if method == "score_cam":
            return lambda: e.score_cam(m, x, t, layer=LAYER, batch_size=bs)
        raise ValueError(method)

    # peers ---------------------------------------------------------------------------------------
    def peer_calls(self, method, check=False) -> dict:
        """The peers' calls of ``method`` on this case.

        Parameters
        ----------
        method : str
            As :meth:`cnnkit_call`.
        check : bool
            As :meth:`cnnkit_call`: the settings of the correctness check.

        Returns
        -------
        dict
            Peer name -> callable taking no argument and returning a NumPy result; empty without
            torch, and without a peer's library for that peer.
        """
        torch, P, twin = self.torch, self.peers, self.twin
        if torch is None:
            return {}
        xt, tt, bs, N, c = self.xt, self.tt, self.bs, self.N, self.counts
        out = {}
        if method in ("grad_cam", "grad_cam_pp", "score_cam") and P.get("gradcam"):
            gc_mod = P["gradcam"]
            cls = {"grad_cam": gc_mod.GradCAM, "grad_cam_pp": gc_mod.GradCAMPlusPlus,
                   "score_cam": gc_mod.ScoreCAM}[method]
            tgt_cls = P["gradcam_target"]
            layer = twin[int(LAYER)]

            def cam_call():
                targets = [tgt_cls(int(k)) for k in self.targets]
                with cls(model=twin, target_layers=[layer]) as cam:
                    if method == "score_cam":
                        cam.batch_size = bs
                    return cam(input_tensor=xt, targets=targets)
            out[PEERS[method]] = cam_call
        elif method in ("saliency", "guided_backprop", "integrated_gradients", "smoothgrad",
                        "occlusion") and P.get("captum"):
            ca = P["captum"]
            if method == "saliency":
                sal = ca.Saliency(twin)
                out[PEERS[method]] = lambda: sal.attribute(xt, target=tt, abs=True).numpy()
            elif method == "guided_backprop":
                gb = ca.GuidedBackprop(twin)
                out[PEERS[method]] = lambda: gb.attribute(xt, target=tt).numpy()
            elif method == "integrated_gradients":
                ig = ca.IntegratedGradients(twin)
                out[PEERS[method]] = lambda: ig.attribute(
                    xt, target=tt, n_steps=c["ig"], method="gausslegendre",
                    internal_batch_size=bs).numpy()
            elif method == "smoothgrad":
                nt = ca.NoiseTunnel(ca.Saliency(twin))
                sd = 0.0 if check else self.sigma
                out[PEERS[method]] = lambda: nt.attribute(
                    xt, nt_type="smoothgrad", nt_samples=c["sg"],
                    nt_samples_batch_size=max(1, bs // N), stdevs=sd, target=tt).numpy()
            elif method == "occlusion":
                occ = ca.Occlusion(twin)
                C = xt.shape[1]

                def occ_call(ppe):
                    return lambda: occ.attribute(
                        xt, sliding_window_shapes=(C, OCC_WINDOW, OCC_WINDOW),
                        strides=(C, OCC_STRIDE, OCC_STRIDE), baselines=0.0, target=tt,
                        perturbations_per_eval=ppe).numpy()
                out[PEERS[method]] = occ_call(max(1, bs // N))
                if bs // N > 1 and not self.quick:
                    out[PEERS[method] + " ppe=1"] = occ_call(1)      # captum's default
        elif method == "rise":
            xr, tr = xt[:self.rise_n], self.targets[:self.rise_n]
            out[PEERS[method]] = lambda: torch_rise(
                torch, twin, xr, tr, n_masks=c["rise"], cell=RISE_CELL, p=RISE_P, seed=0,
                batch_size=bs).numpy()
        return out

    def images(self, method) -> int:
        """How many images one call of ``method`` explains.

        Parameters
        ----------
        method : str
            As :meth:`cnnkit_call`.

        Returns
        -------
        int
            The case's batch; RISE explains its first ``rise_n`` images only.
        """
        return self.rise_n if method == "rise" else self.N

    def flops_per_image(self, method, f) -> float:
        """Nominal model FLOPs per image of ``method``: the model passes it needs times ``f``.

        Parameters
        ----------
        method : str
            As :meth:`cnnkit_call`.
        f : float
            FLOPs of one forward pass per image (a backward pass counts as one more).

        Returns
        -------
        float
            ``passes * f``: 2 for the gradient methods, 2 per step for integrated gradients and
            SmoothGrad, one per occlusion window or RISE mask plus one, one per channel plus one
            for Score-CAM.
        """
        c = self.counts
        windows = (-(-(self.side - OCC_WINDOW) // OCC_STRIDE) + 1) ** 2
        passes = {"grad_cam": 2, "grad_cam_pp": 2, "saliency": 2, "guided_backprop": 2,
                  "integrated_gradients": 2 * c["ig"], "smoothgrad": 2 * c["sg"],
                  "occlusion": windows + 1, "rise": c["rise"] + 1,
                  "score_cam": self.layer_channels + 1}
        return passes[method] * f


def _compare(method, got, ref) -> tuple:
    """(error, note): max |got - ref| / max |ref| after bringing the peer's result to cnnkit's
    form (captum's occlusion: one channel, after checking the channels are equal)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    note = ""
    if method == "occlusion" and ref.ndim == 4:
        spread = float(np.abs(ref - ref[:, :1]).max())
        note = f"captum's channels differ by {spread:.1g}" if spread > 0 else ""
        ref = ref[:, 0]
    if got.shape != ref.shape:
        return float("inf"), f"shapes {got.shape} vs {ref.shape}"
    if not np.all(np.isfinite(got)):
        return float("inf"), "non-finite values"
    scale = float(np.abs(ref).max()) or 1.0
    rel = np.abs(got - ref) / scale
    worst = float(rel.max())
    if method in KINKED and worst > TOL:
        # A gradient through a ReLU (or a mask) at its kink is discontinuous: float32 rounding
        # that differs between two correct implementations (summation order, layouts) flips a
        # mask for an activation within ~1e-7 of zero, and the gradient at the pixels below it
        # jumps. Integrated over 50 inputs a few such flips are expected, so these methods are
        # judged on the 99.9th percentile of the error and the outliers are reported.
        bad = int((rel > TOL).sum())
        extra = f"{bad} of {rel.size} elements beyond {TOL:g} (max {worst:.2g}: ReLU masks flipped by rounding)"
        return float(np.quantile(rel, 0.999)), (note + "; " if note else "") + extra
    return worst, note


# ---- feature visualization: cnnkit's loop against the same loop in torch autograd ----------------
@contextlib.contextmanager
def _fv_context(model):
    """The state :func:`cnnkit.explain.feature_visualization` works in (explaining mode, and
    where each Sequential's last forward stopped restored afterwards)."""
    from cnnkit.explain import features as fvm
    from cnnkit.nn import Sequential
    ran = [(m, m.__dict__.get("_ran")) for m in model.modules() if isinstance(m, Sequential)]
    with _explain.explaining(model), fvm._restoring(ran):
        yield


def _fv_transforms():
    from cnnkit.explain.features import standard_transforms
    return standard_transforms((FV_SIDE, FV_SIDE))


def fv_channels(model, layer: str, count: int) -> list:
    """The channels of ``layer`` with the largest mean activation on the initial images of
    ``feature_visualization(..., seed=0)`` (a dead channel's gradient is zero and would check
    nothing).

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model whose layer is visualized.
    layer : str
        The layer's name in ``model``.
    count : int
        How many channels.

    Returns
    -------
    list of int
        The ``count`` channel indices, in increasing order.
    """
    from cnnkit.explain import objectives
    from cnnkit.explain.features import _Runner
    from cnnkit.explain._fv_param import ImageParam
    layout = _explain._model.layout_of(model)
    img = ImageParam((FV_BATCH, 3, FV_SIDE, FV_SIDE), "fft", True, np.random.default_rng(0)).image()
    x = np.ascontiguousarray(img.transpose(0, 2, 3, 1) if layout == "NHWC" else img)
    with _fv_context(model):
        a = _Runner(model, objectives.channel(layer, 0), layout).outputs(x)[layer]
    means = (a.mean(axis=(0, 1, 2)) if layout == "NHWC" else a.mean(axis=(0, 2, 3)))
    return sorted(int(k) for k in np.argsort(-means, kind="stable")[:count])


def fv_cnnkit_value_and_grad(model, layer: str, k: int, spec, tparams) -> tuple:
    """cnnkit's objective value and gradient with respect to the spectrum for one step of its
    feature-visualization loop (:func:`cnnkit.explain.features._step`).

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model whose layer is visualized.
    layer : str
        The layer's name in ``model``.
    k : int
        The channel of ``layer`` whose mean activation is the objective.
    spec : ndarray
        The images' spectrum, ``(2, N, 3, H, W // 2 + 1)``.
    tparams : object
        The standard transforms' parameters for this step.

    Returns
    -------
    tuple of (float, ndarray)
        The objective's value and its gradient with respect to ``spec``.
    """
    from cnnkit.explain import objectives
    from cnnkit.explain.features import _Runner, _step
    from cnnkit.explain._fv_param import ImageParam
    tf = _fv_transforms()
    hw = (FV_SIDE, FV_SIDE)
    layout = _explain._model.layout_of(model)
    in_hw = tf.output_size(hw)
    n = spec.shape[1]
    with _fv_context(model):
        runner = _Runner(model, objectives.channel(layer, k), layout)
        xbuf = np.empty((n, 3) + in_hw if layout == "NCHW" else (n,) + in_hw + (3,), np.float32)
        p = ImageParam((n, 3) + hw, "fft", True, np.random.default_rng(0))
        p.params[...] = spec
        value, grad = _step(runner, p, tf.plan(tparams, hw), xbuf)
    return float(value), np.array(grad)


def fv_check_state(model, layer: str, k: int, steps: int) -> tuple:
    """A mid-optimization state to check one step of feature visualization at.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model whose layer is visualized.
    layer : str
        The layer's name in ``model``.
    k : int
        The channel of ``layer`` whose mean activation is the objective.
    steps : int
        How many steps of cnnkit's loop lead to the state.

    Returns
    -------
    tuple
        ``(spectrum, tparams)``: the spectrum of the images that ``steps`` of cnnkit's loop reach
        from seed 1, and the standard transforms' parameters drawn from seed 2.
    """
    from cnnkit.explain import objectives
    from cnnkit.explain.features import feature_visualization
    from cnnkit.explain._fv_param import ImageParam
    img = feature_visualization(model, objectives.channel(layer, k), size=FV_SIDE, batch=FV_BATCH,
                                steps=steps, seed=1, progress=False)
    p = ImageParam((FV_BATCH, 3, FV_SIDE, FV_SIDE), "fft", True, np.random.default_rng(0))
    p.set_image(np.clip(img.transpose(0, 3, 1, 2).astype(np.float64), 1e-6, 1 - 1e-6))
    tparams = _fv_transforms().sample(np.random.default_rng(2), FV_BATCH, (FV_SIDE, FV_SIDE))
    return p.params.copy(), tparams


class FeatureCase:
    """One (layer, channel) of the feature-visualization benchmark: cnnkit's call and the torch
    loops (:class:`cnnkit.bench._fv_torch.TorchFeatureLoop`)."""

    def __init__(self, model, net, torch, layer, k, steps, channels_last):
        self.model, self.torch, self.layer, self.k, self.steps = model, torch, layer, k, steps
        self.loops = {}
        if torch is not None and net is not None:
            from cnnkit.bench._fv_torch import TorchFeatureLoop
            for name, full in zip(FV_PEERS, (False, True)):
                self.loops[name] = TorchFeatureLoop(
                    torch, net, layer, k, (FV_SIDE, FV_SIDE), FV_BATCH, _fv_transforms(), full=full,
                    channels_last=channels_last, lr=FV_LR)

    @property
    def label(self) -> str:
        """The case's name in the tables.

        Returns
        -------
        str
            ``"layer:channel"``.
        """
        return f"{self.layer}:{self.k}"

    def calls(self) -> dict:
        """{name: callable returning (seconds of the optimization loop, objective at the last
        step)}, cnnkit first."""
        from cnnkit.explain import objectives
        from cnnkit.explain.features import feature_visualization
        m, layer, k, steps = self.model, self.layer, self.k, self.steps

        def ck():
            _, h = feature_visualization(m, objectives.channel(layer, k), size=FV_SIDE,
                                         batch=FV_BATCH, steps=steps, lr=FV_LR, seed=0,
                                         progress=False, return_history=True)
            return h.seconds, float(h.values[-1])
        out = {"cnnkit": ck}
        for name, loop in self.loops.items():
            out[name] = (lambda lp: lambda: (lambda r: (r[0], float(r[1][-1])))(lp.run(steps, 0)))(loop)
        return out

    def check(self, check_steps) -> dict:
        """{peer: (gradient error, value error)}: max |cnnkit - torch| / max |torch| of the
        gradient with respect to the spectrum, and the objective's relative difference, for one
        step from the same spectrum and the same transform draws."""
        spec, tparams = fv_check_state(self.model, self.layer, self.k, check_steps)
        v, g = fv_cnnkit_value_and_grad(self.model, self.layer, self.k, spec, tparams)
        if not (np.all(np.isfinite(g)) and np.isfinite(v)):
            return {"cnnkit": (float("inf"), float("inf"))}
        out = {}
        for name, loop in self.loops.items():
            vt, gt = loop.value_and_grad(spec, tparams)
            err, _ = _compare(FEATURES, g, gt)
            out[name] = (err, abs(v - vt) / max(abs(vt), 1e-30))
        return out


def fv_flops_per_step(layer: str) -> float:
    """Nominal FLOPs of one step: forward to ``layer`` and the input-gradient backward from it
    (the same count), convolutions only, for the batch at the transformed input's size."""
    from cnnkit.bench.train import describe, layer_shapes
    side = _fv_transforms().output_size((FV_SIDE, FV_SIDE))[0]
    nchw = build_model(0)
    x = np.zeros((1, 3, side, side), np.float32)
    with _explain.explaining(nchw):
        desc = describe(nchw, layer_shapes(nchw, x), "NCHW")
    fwd = sum(v[1] for name, v in desc.items() if int(name.split(".")[0]) <= int(layer))
    return 2.0 * FV_BATCH * float(fwd)


def fv_rounds(cases, reps, warmup, probe_fn) -> list:
    """Interleaved timing rounds over the feature-visualization cases (odd rounds in reverse
    order, a STREAM probe after each case; the garbage collector off while they run).

    Parameters
    ----------
    cases : sequence of FeatureCase
        The cases; each one's ``calls()`` gives its timed callables by name.
    reps : int
        Rounds kept.
    warmup : int
        Rounds run first and not kept.
    probe_fn : callable
        Runs a STREAM probe and returns its bandwidth in GB/s.

    Returns
    -------
    list of dict
        Per case: ``{"seconds": {name: [...]}, "last": {name: value}, "probe_gbs": [...]}``,
        the kept rounds' seconds, the last objective value of each call and the probes.
    """
    res: list[dict[str, Any]] = [{"seconds": {n: [] for n in c.calls()}, "last": {},
                                  "probe_gbs": []} for c in cases]
    calls = [c.calls() for c in cases]
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + reps):
            fwd = r % 2 == 0
            for i in (range(len(cases)) if fwd else range(len(cases) - 1, -1, -1)):
                names = list(calls[i]) if fwd else list(calls[i])[::-1]
                for n in names:
                    s, last = calls[i][n]()
                    if r >= warmup:
                        res[i]["seconds"][n].append(s)
                        res[i]["last"][n] = last
                bw = probe_fn()
                if r >= warmup:
                    res[i]["probe_gbs"].append(bw)
    finally:
        gc.enable()
    return res


def fv_summarize(case, res, steps, flops, peak, checks) -> dict:
    """One feature-visualization case's figures: steps per second (median over rounds), GFLOP/s,
    the ratios to the peers and the speedup target.

    Parameters
    ----------
    case : FeatureCase
        The case (its layer and channel).
    res : dict
        The case's entry of :func:`fv_rounds`.
    steps : int
        Optimization steps per timed call.
    flops : float
        FLOPs of one step.
    peak : float or None
        The machine's sgemm peak in GFLOP/s (None: no percentage).
    checks : dict
        Per peer, its check of one step against cnnkit's (shown beside its row).

    Returns
    -------
    dict
        ``layer``, ``channel``, ``rows`` (per implementation: steps/s, spread, ms/step, GFLOP/s,
        the last objective value, and the fraction of the peak or the ratio to cnnkit),
        ``target``, ``peer`` (the fastest peer), ``speedup``, ``met`` and ``speedup_spread``.
    """
    secs = res["seconds"]
    ck = secs["cnnkit"]
    s = {"layer": case.layer, "channel": case.k, "rows": {}, "target": FV_TARGET,
         "speedup": None, "met": None, "peer": None, "speedup_spread": None}
    for name, ts in secs.items():
        rates = [steps / t for t in ts]
        row = {"steps_per_s": med(rates), "spread": (min(rates), max(rates)),
               "ms_per_step": 1e3 * med(ts) / steps, "last_value": res["last"].get(name)}
        row["gflops"] = flops * row["steps_per_s"] / 1e9
        if name == "cnnkit":
            row["pct_peak"] = row["gflops"] / peak if peak else None
        else:
            row["x_peer"] = med([a / b for a, b in zip(ts, ck)])
            row["check"] = checks.get(name)
        s["rows"][name] = row
    peers = [n for n in secs if n != "cnnkit"]
    if peers:
        best = max(peers, key=lambda n: s["rows"][n]["steps_per_s"])
        ratios = [a / b for a, b in zip(secs[best], ck)]
        t = target("speedup", med(ratios), FV_TARGET, ratios)
        s.update(peer=best, speedup=t[1], met=t[3], speedup_spread=t[4])
    return s


def fv_render(summaries, markdown) -> str:
    """The feature-visualization table: one row for cnnkit and one for each peer per layer.

    Parameters
    ----------
    summaries : list of dict
        One summary per layer and channel, as ``fv_summarize`` returns them.
    markdown : bool
        A Markdown table instead of aligned text.

    Returns
    -------
    str
        The table.
    """
    head = ["layer:channel", "side", "steps/s", "[min-max]", "ms/step", "GFLOP/s", "% sgemm peak",
            "x best peer", "target", "objective at last step", "check err (grad, value)"]
    body = []
    for s in summaries:
        c = s["rows"]["cnnkit"]
        tgt = ("-" if s["speedup"] is None
               else target_text([("speedup", s["speedup"], s["target"], s["met"],
                                  s["speedup_spread"])]).split(" ", 1)[1])
        body.append([f"{s['layer']}:{s['channel']}", "cnnkit", _f(c["steps_per_s"]),
                     f"{_f(c['spread'][0])}-{_f(c['spread'][1])}", _f(c["ms_per_step"]),
                     _f(c["gflops"]), "-" if c["pct_peak"] is None else f"{100 * c['pct_peak']:.1f}%",
                     "" if s["speedup"] is None else _f(s["speedup"]), tgt,
                     f"{c['last_value']:.5g}", ""])
        for name, row in s["rows"].items():
            if name == "cnnkit":
                continue
            ce = row.get("check")
            body.append(["", name, _f(row["steps_per_s"]),
                         f"{_f(row['spread'][0])}-{_f(row['spread'][1])}", _f(row["ms_per_step"]),
                         _f(row["gflops"]), "", f"({_f(row['x_peer'])})", "",
                         f"{row['last_value']:.5g}",
                         "-" if ce is None else f"{ce[0]:.1g}, {ce[1]:.1g}"])
    return _table(head, body, markdown)


def _lucent_version() -> str:
    import importlib
    try:
        lucent = importlib.import_module("lucent")
    except ModuleNotFoundError:
        return "not installed"
    except Exception as e:  # noqa: BLE001 - any import failure means: no lucent peer
        return f"not importable ({type(e).__name__}: {e})"
    import importlib.metadata as md
    try:
        v = md.version("torch-lucent")
    except md.PackageNotFoundError:
        v = getattr(lucent, "__version__", "?")
    return f"{v} (installed; not run as a peer: the torch loops above are the same computation)"


def _fv_tf_text(tf) -> str:
    parts = []
    for t in tf.transforms:
        if hasattr(t, "pad"):
            parts.append(f"pad {t.pad} (fill {t.fill:g})")
        elif hasattr(t, "d"):
            parts.append(f"jitter {t.d}")
        elif hasattr(t, "scales"):
            parts.append(f"scale {t.scales.min():g}-{t.scales.max():g}")
        elif hasattr(t, "angles"):
            parts.append(f"rotate {t.angles.min():g}..{t.angles.max():g} degrees")
        else:
            parts.append(repr(t))
    return ", ".join(parts)


def _fv_setup(args, emit, model, twin, torch) -> dict:
    """The feature cases (layers x their most active channels) and the header line."""
    q = args.quick
    layers = QUICK_FV_LAYERS if q else FV_LAYERS
    nch = args.fv_channels if args.fv_channels is not None else (QUICK_FV_CHANNELS if q
                                                                 else FV_CHANNELS)
    steps = args.fv_steps if args.fv_steps is not None else (QUICK_FV_STEPS if q else FV_STEPS)
    net = None
    if torch is not None and twin is not None:
        from cnnkit.bench._fv_torch import frozen_copy
        net = frozen_copy(torch, twin)
    cl = args.torch_layout == "channels_last"
    cases = [FeatureCase(model, net, torch, layer, k, steps, cl)
             for layer in layers for k in fv_channels(model, layer, nch)]
    flops = {layer: fv_flops_per_step(layer) for layer in layers}
    tf = _fv_transforms()
    in_side = tf.output_size((FV_SIDE, FV_SIDE))[0]
    emit(f"Feature visualization: objectives.channel(layer, k) maximized, FFT parameterization "
         f"with colour decorrelation, the standard transforms ({_fv_tf_text(tf)}), batch "
         f"{FV_BATCH} at "
         f"{FV_SIDE}x{FV_SIDE} (model input {in_side}x{in_side}), Adam lr {FV_LR:g}, {steps} steps "
         f"per timed call; layers " + ", ".join(layers) + f", the {nch} most active channels of "
         f"each on the initial images (" + ", ".join(c.label for c in cases) + "). FLOPs per step "
         "(forward to the layer + input-gradient backward, batch " + str(FV_BATCH) + "): "
         + ", ".join(f"layer {k} {v / 1e9:.3g} GFLOP" for k, v in flops.items()) + ".")
    if net is not None:
        emit("Feature-visualization peers: the same loop in torch autograd on the twin "
             "(cnnkit.bench._fv_torch: torch.fft.irfft2 of the spectrum x cnnkit's fft_scale / 4, "
             "cnnkit's colour basis, sigmoid; cnnkit's transform draws and maps read by "
             "F.grid_sample; torch.optim.Adam(maximize=True); parameters frozen), on the twin "
             f"truncated to the layer ({FV_PEERS[0]}) and on the whole twin with a forward hook "
             f"at the layer as Lucent does ({FV_PEERS[1]}).")
    return {"cases": cases, "steps": steps, "flops": flops, "layers": layers, "channels": nch,
            "check_steps": QUICK_FV_CHECK_STEPS if q else FV_CHECK_STEPS, "checks": {}}


def _fv_check(args, emit, fvc, failures) -> None:
    """Checks one step of every case against the torch loops (see :meth:`FeatureCase.check`)."""
    if args.no_check or not any(c.loops for c in fvc["cases"]):
        return
    worst_g = worst_v = 0.0
    bad = False
    for c in fvc["cases"]:
        errs = c.check(fvc["check_steps"])
        fvc["checks"][c.label] = errs
        for name, (eg, ev) in errs.items():
            worst_g, worst_v = max(worst_g, eg), max(worst_v, ev)
            if not (eg <= TOL and ev <= TOL):
                bad = True
                failures.append(f"{FEATURES} {c.label}: cnnkit differs from {name} (gradient "
                                f"max |diff| / max |ref| = {eg:.2g}, objective relative "
                                f"difference {ev:.2g})")
    emit(f"check (feature visualization): one step from the same spectrum (the images "
         f"{fvc['check_steps']} cnnkit steps reach from seed 1) and the same transform draws: the "
         f"gradient with respect to the spectrum (max |diff| / max |torch|) and the objective "
         f"(relative difference) <= {TOL:g}; worst {worst_g:.1g} and {worst_v:.1g}"
         + ("" if bad else ": all agree") + ".")


def _fv_report(fvc, fv_res, peak, md) -> dict:
    """Prints the feature-visualization table and its targets; returns the JSON part."""
    steps = fvc["steps"]
    summaries = [fv_summarize(c, r, steps, fvc["flops"][c.layer], peak,
                              fvc["checks"].get(c.label, {}))
                 for c, r in zip(fvc["cases"], fv_res)]
    print()
    print(f"### feature visualization: Adam steps per second, batch {FV_BATCH} at "
          f"{FV_SIDE}x{FV_SIDE}\n" if md else
          f"feature visualization, Adam steps per second (batch {FV_BATCH} at "
          f"{FV_SIDE}x{FV_SIDE}, {steps} steps per call):")
    print(fv_render(summaries, md))
    print()
    print(f"steps/s: {steps} steps / the seconds of the optimization loop (cnnkit: "
          "FeatureHistory.seconds of feature_visualization(..., return_history=True), its setup "
          "excluded; torch: the loop), median over rounds, [min-max] over rounds; x best peer: "
          "median over rounds of the faster peer's seconds / cnnkit's (each peer's own ratio in "
          "brackets); GFLOP/s: nominal FLOPs per step x steps/s; objective at last step: the "
          "channel mean on the last step's transformed images (all sides start from cnnkit's "
          "initial spectrum for seed 0 and draw the same transforms); check err: the one-step "
          "check before timing.")
    targets = [("speedup", s["speedup"], s["target"], s["met"], s["speedup_spread"])
               for s in summaries if s["speedup"] is not None]
    if targets:
        print(target_summary(targets)[:-1] + f" (cnnkit >= {FV_TARGET:g}x the faster torch loop).")
        for s in summaries:
            if s["speedup"] is not None:
                print(f"  features {s['layer']}:{s['channel']} vs {s['peer']}: "
                      + target_text([("speedup", s["speedup"], s["target"], s["met"],
                                      s["speedup_spread"])]))
    return {"steps": steps, "batch": FV_BATCH, "side": FV_SIDE, "reps": fvc.get("reps"),
            "warmup": fvc.get("warmup"), "flops_per_step": fvc["flops"],
            "cases": [{"layer": c.layer, "channel": c.k, "seconds": r["seconds"],
                       "last": r["last"], "probe_gbs": r["probe_gbs"],
                       "check": {k: list(v) for k, v in fvc["checks"].get(c.label, {}).items()}}
                      for c, r in zip(fvc["cases"], fv_res)],
            "summary": summaries}


# ---- memory --------------------------------------------------------------------------------------
class PeakRSS:
    """The rise of the peak resident set over one call (see the module docstring); None where
    /proc/self/clear_refs cannot be written."""

    def __init__(self):
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.ok = self._reset()

    @staticmethod
    def _status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
        return out

    @staticmethod
    def _reset():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def measure(self, fn, trace=False) -> tuple:
        """Run ``fn`` once and measure the memory it took.

        Parameters
        ----------
        fn : callable
            Called with no arguments.
        trace : bool, optional
            Also trace Python allocations with :mod:`tracemalloc` (slower).

        Returns
        -------
        tuple of (int or None, int or None)
            The peak RSS rise in bytes (None where ``/proc/self/clear_refs`` cannot be written)
            and the tracemalloc peak in bytes (None without ``trace``).
        """
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if trace:
            tracemalloc.start()
        try:
            before = self._status()["VmRSS"] if self.ok else None
            ok = self.ok and self._reset()
            fn()
            after = self._status()["VmHWM"] if ok else None
            traced = tracemalloc.get_traced_memory()[1] if trace else None
        finally:
            if trace:
                tracemalloc.stop()
        rss = max(0, after - before) if (ok and before is not None) else None
        return rss, traced


# ---- rendering -----------------------------------------------------------------------------------
def _table(head, body, markdown: bool) -> str:
    from cnnkit.bench.train import _table as table
    return table(head, body, markdown)


def _mb(b):
    return "-" if b is None else f"{b / 2 ** 20:.0f}"


def summarize(res, peak) -> dict:
    """Medians, ratios and the target of one (method, batch) result.

    Parameters
    ----------
    res : dict
        One timed result: ``method``, ``batch``, ``images``, ``flops_per_image`` and
        ``times_s`` (seconds per round for ``"cnnkit"`` and each peer, the rounds in order).
    peak : float or None
        The single-run sgemm peak in GFLOP/s that ``pct_peak`` divides by (None: not computed).

    Returns
    -------
    dict
        ``rows`` (per side: ms per image, its spread, GFLOP/s, and the peer's time over cnnkit's
        as ``x_peer``), the first peer as ``peer`` with its ``speedup`` and ``speedup_spread``,
        the method's ``target`` and whether it was ``met`` (None where there is no peer or the
        spread exceeds the margin).
    """
    times = res["times_s"]
    n = res["images"]
    ck = times["cnnkit"]
    s = {"method": res["method"], "batch": res["batch"], "images": n, "rows": {},
         "target": TARGETS[res["method"]], "speedup": None, "met": None, "peer": None}
    for name, ts in times.items():
        m = med(ts)
        row = {"ms_per_image": 1e3 * m / n, "spread": (1e3 * min(ts) / n, 1e3 * max(ts) / n)}
        if name != "cnnkit":
            row["x_peer"] = med([a / b for a, b in zip(ts, ck)])
        s["rows"][name] = row
    flops = res["flops_per_image"]
    c = s["rows"]["cnnkit"]
    c["gflops"] = flops / (c["ms_per_image"] * 1e-3) / 1e9
    c["pct_peak"] = c["gflops"] / peak if peak else None
    peers = [k for k in times if k != "cnnkit"]
    if peers:
        main_peer = peers[0]                       # the matched configuration judges the target
        s["peer"] = main_peer
        s["speedup"] = s["rows"][main_peer]["x_peer"]
        # judged only when the rounds' spread is smaller than the margin to the target
        ratios = [a / b for a, b in zip(times[main_peer], ck)]
        s["speedup_spread"] = spread(ratios)
        s["met"] = target("speedup", s["speedup"], s["target"], ratios)[3]
        for k in peers:
            s["rows"][k]["gflops"] = flops / (s["rows"][k]["ms_per_image"] * 1e-3) / 1e9
    return s


def render(summaries, results, markdown) -> str:
    """The attribution table: one row for cnnkit and one for each peer per (method, batch).

    Parameters
    ----------
    summaries : list of dict
        As ``summarize`` returns them, in the order of ``results``.
    results : list of dict
        The timed results they summarize (their batch label, peak memory and check errors).
    markdown : bool
        A Markdown table instead of aligned text.

    Returns
    -------
    str
        The table.
    """
    head = ["method", "batch", "side", "ms/image", "[min-max]", "GFLOP/s", "% sgemm peak",
            "x peer", "target", "peak MB RSS", "NumPy traced MB", "check err"]
    body = []
    for s, r in zip(summaries, results):
        c = s["rows"]["cnnkit"]
        mem = r.get("memory", {})
        cm = mem.get("cnnkit", (None, None))
        tgt = ("-" if s["speedup"] is None
               else target_text([("speedup", s["speedup"], s["target"], s["met"],
                                  s.get("speedup_spread"))]).split(" ", 1)[1])
        body.append([s["method"], r["label"], "cnnkit", _f(c["ms_per_image"]),
                     f"{_f(c['spread'][0])}-{_f(c['spread'][1])}", _f(c["gflops"]),
                     "-" if c["pct_peak"] is None else f"{100 * c['pct_peak']:.1f}%",
                     "" if s["speedup"] is None else _f(s["speedup"]), tgt, _mb(cm[0]),
                     _mb(cm[1]), ""])
        for k, row in s["rows"].items():
            if k == "cnnkit":
                continue
            pm = mem.get(k, (None, None))
            err = r.get("check", {}).get(k)
            body.append(["", "", k, _f(row["ms_per_image"]),
                         f"{_f(row['spread'][0])}-{_f(row['spread'][1])}", _f(row["gflops"]),
                         "", f"({_f(row['x_peer'])})", "", _mb(pm[0]), "",
                         "-" if err is None else f"{err:.1g}"])
    return _table(head, body, markdown)


# ---- entry point ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench explain",
        description="Attribution methods of cnnkit.explain against captum / pytorch-grad-cam on "
                    "the same small CNN (resnet_small with batch norm, eval mode) and its torch "
                    "twin with copied weights: seconds per image, ratio to the peer, peak "
                    "memory, interleaved with STREAM probes.")
    p.add_argument("--methods", default=",".join(METHODS + (FEATURES,)),
                   help=f"comma-separated subset of {','.join(METHODS + (FEATURES,))} (default "
                        f"all; {FEATURES}: the feature-visualization loop in steps per second)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for cnnkit, torch and OpenBLAS (default 2)")
    p.add_argument("--repeats", "--reps", dest="reps", type=int, default=None,
                   help="timed rounds per method (default 7 for the single-pass methods grad_cam, "
                        "grad_cam_pp, saliency, guided_backprop, 5 for the others; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds per method after the check pass (default 1 for the "
                        "single-pass methods, 0 for the others and with --quick)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="inputs per forward for the chunked methods, both sides (default: "
                        "cnnkit's default for the batch after one call, rounded down to a multiple "
                        "of the batch)")
    p.add_argument("--rise-images", type=int, default=None,
                   help="images RISE explains per batch, the first ones (default 2 of 32 and 1 "
                        "of 8; 0 = all)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: batches {QUICK_SHAPES[0][0]} and {QUICK_SHAPES[1][0]}, "
                        f"{QUICK_IG_STEPS} IG steps, {QUICK_SG_SAMPLES} SmoothGrad samples, "
                        f"{QUICK_RISE_MASKS} RISE masks, feature visualization at layer "
                        f"{QUICK_FV_LAYERS[0]}, {QUICK_FV_CHANNELS} channel, {QUICK_FV_STEPS} "
                        "steps, 1 round, 64 MiB STREAM arrays, 512^3 sgemm probe; numbers not "
                        "representative")
    p.add_argument("--fv-steps", type=int, default=None,
                   help=f"Adam steps per timed feature-visualization call (default {FV_STEPS}, "
                        f"{QUICK_FV_STEPS} with --quick)")
    p.add_argument("--fv-channels", type=int, default=None,
                   help=f"channels per layer for feature visualization, the most active on the "
                        f"initial images (default {FV_CHANNELS}, {QUICK_FV_CHANNELS} with --quick)")
    p.add_argument("--layout", choices=("NHWC", "NCHW"), default="NHWC",
                   help="the cnnkit model's layout (default NHWC, its faster one)")
    p.add_argument("--torch-layout", choices=("channels_last", "NCHW"), default="channels_last",
                   help="the torch twin's memory format (default channels_last, torch's faster one "
                        "on these shapes)")
    p.add_argument("--no-torch", action="store_true", help="skip torch and the peers")
    p.add_argument("--no-check", action="store_true",
                   help="skip the comparison with the peers before timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    add_roof_args(p, quick_gemm=512)
    return p


def _import_peers(torch) -> dict:
    """{"captum": captum.attr, "gradcam": pytorch_grad_cam, "gradcam_target", versions}."""
    import importlib.metadata as md
    peers: dict[str, Any] = {"versions": {}}
    if torch is None:
        return peers
    try:
        import captum
        import captum.attr
        peers["captum"] = captum.attr
        peers["versions"]["captum"] = captum.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means: no captum peer
        peers["versions"]["captum"] = f"not importable ({type(e).__name__}: {e})"
    try:
        import_torchvision()                 # pytorch-grad-cam imports torchvision's transforms
        import pytorch_grad_cam
        import pytorch_grad_cam.score_cam as score_cam_mod
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        peers["gradcam"] = pytorch_grad_cam
        peers["gradcam_target"] = ClassifierOutputTarget
        peers["score_cam_module"] = score_cam_mod
        try:
            v = md.version("grad-cam")
        except md.PackageNotFoundError:
            v = getattr(pytorch_grad_cam, "__version__", "?")
        peers["versions"]["pytorch-grad-cam"] = v
    except Exception as e:  # noqa: BLE001
        peers["versions"]["pytorch-grad-cam"] = f"not importable ({type(e).__name__}: {e})"
    return peers


def main(argv: list[str] | None = None) -> int:
    """Run the attribution-method benchmark (``cnnkit bench explain``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench explain --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    try:
        methods = parse_list(args.methods, METHODS + (FEATURES,), "--methods", require=True)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    q = args.quick
    gemm_n = args.gemm_size if args.gemm_size is not None else (512 if q else 2048)
    mib = args.stream_mib if args.stream_mib is not None else (64 if q else 256)
    if (args.threads < 1 or gemm_n < 1 or mib < 1 or args.probe_reps < 1
            or (args.reps is not None and args.reps < 1)
            or (args.warmup is not None and args.warmup < 0)
            or (args.batch_size is not None and args.batch_size < 1)
            or (args.rise_images is not None and args.rise_images < 0)
            or (args.fv_steps is not None and args.fv_steps < 1)
            or (args.fv_channels is not None and args.fv_channels < 1)):
        print("--threads, --repeats, --batch-size, --gemm-size, --stream-mib, --probe-reps, "
              "--fv-steps, --fv-channels must be >= 1; --warmup, --rise-images >= 0",
              file=sys.stderr)
        return 2
    from cnnkit.bench.conv import _OpenBLAS

    cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()
    torch = import_torch(args.no_torch, threads)
    blas = _OpenBLAS()
    blas_threads0 = blas.threads()
    blas.set_threads(threads)
    peers = _import_peers(torch)
    sc_mod = peers.get("score_cam_module")
    saved_tqdm = getattr(sc_mod, "tqdm", None) if sc_mod is not None else None
    if sc_mod is not None:
        sc_mod.tqdm = _NoTqdm
    try:
        with warnings.catch_warnings():
            # captum's notes on every call: the input's requires_grad was set for it, and
            # guided backprop's ReLU hooks are removed afterwards
            warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return _run(args, argv, torch, peers, blas, threads, methods, gemm_n, mib)
    finally:
        if sc_mod is not None:
            sc_mod.tqdm = saved_tqdm
        if blas_threads0 is not None:
            blas.set_threads(blas_threads0)


def _run(args, argv, torch, peers, blas, threads, methods, gemm_n, mib) -> int:
    from cnnkit.bench.conv import gemm_peak
    from cnnkit.bench.train import CpuShare, _share_text

    q, md = args.quick, args.markdown
    fv = FEATURES in methods
    methods = [m for m in methods if m != FEATURES]
    extra = peer_header(torch)
    for k, v in peers["versions"].items():
        extra[k] = v
    if fv:
        extra["torch-lucent"] = _lucent_version()
    extra["numpy BLAS"] = blas.describe()
    header = machine_header(extra)
    emit = Emitter(md)
    flush_header = emit.flush

    emit(header)
    counts = ({"ig": QUICK_IG_STEPS, "sg": QUICK_SG_SAMPLES, "rise": QUICK_RISE_MASKS} if q
              else {"ig": IG_STEPS, "sg": SG_SAMPLES, "rise": RISE_MASKS})
    shapes = QUICK_SHAPES if q else SHAPES
    model, twin = build_models(torch, layout=args.layout, torch_layout=args.torch_layout)
    if torch is not None:
        with torch.no_grad():
            xs = np.random.default_rng(3).random((4, 3, 32, 32), dtype=np.float32)
            xk = np.ascontiguousarray(xs.transpose(0, 2, 3, 1)) if args.layout == "NHWC" else xs
            err, _ = _compare("logits", _explain._model.logits_of(model, xk),
                              twin(torch.from_numpy(xs)).numpy())
        emit(f"model: cnnkit.models.resnet_small(3, {NUM_CLASSES}, layout={args.layout!r}), batch norm "
             f"with randomized running statistics, eval mode, {model.num_parameters():,} parameters; "
             f"torch twin ({args.torch_layout}) with copied weights and buffers, separate nn.ReLU "
             f"modules (logits agree to "
             f"{err:.1g} of their largest).")
        if not err < TOL:
            flush_header()
            print("\ncheck FAILED: the torch twin's logits differ from cnnkit's")
            return 1
    else:
        emit(f"model: cnnkit.models.resnet_small(3, {NUM_CLASSES}), batch norm with randomized "
             f"running statistics, eval mode, {model.num_parameters():,} parameters.")
    rise_default = RISE_IMAGES
    cases = []
    for i, (n, side) in enumerate(shapes if methods else ()):
        ri = args.rise_images if args.rise_images is not None else rise_default[i]
        cases.append(Case(model, twin, torch, peers, n, side, counts, ri, args.batch_size,
                          quick=q))
    flops = {c.side: model_flops(model, c.side) for c in cases}
    if cases:
        emit("FLOPs per image, forward (backward, input gradients only, the same): "
             + ", ".join(f"{c.side}x{c.side} {flops[c.side] / 1e9:.4g} GFLOP" for c in cases)
             + "; forward+backward " + ", ".join(f"{2 * flops[c.side] / 1e9:.4g}" for c in cases)
             + " GFLOP.")
        emit("Batches: " + "; ".join(f"{c.label}: {c.bs} inputs per forward (B) for the chunked "
                                     "methods" + (f" (cnnkit's default {c.default_bs})"
                                                  if c.default_bs is not None else " (--batch-size)")
                                     + f", RISE on the first {c.rise_n} "
                                     + ("images" if c.rise_n > 1 else "image") for c in cases)
             + f". Counts: IG {counts['ig']} steps, SmoothGrad {counts['sg']} samples (noise "
             f"{SG_NOISE:g} x image range), occlusion window {OCC_WINDOW} stride {OCC_STRIDE}, RISE "
             f"{counts['rise']} masks (cell {RISE_CELL}, p {RISE_P:g}). Target: the predicted class.")
    if torch is None:
        emit("torch not used: no peer, no check, no ratio and no target is judged.")
    elif "rise" in methods:
        emit("RISE peer: captum has no RISE; a straightforward torch implementation "
             "(cnnkit.bench.explain.torch_rise) with the same masks and the same batching.")
    fvc = _fv_setup(args, emit, model, twin, torch) if fv else None

    # the check pass (also the first call of every timed function)
    checks: dict[Any, Any] = {}
    check_time = {}
    failures = []
    for mth in methods:
        for c in cases:
            key = (mth, c.side)
            t0 = time.perf_counter()
            got = c.cnnkit_call(mth, check=True)()
            check_time[key] = {"cnnkit": time.perf_counter() - t0}
            if not np.all(np.isfinite(got)):
                failures.append(f"{mth} {c.label}: cnnkit returned non-finite values")
            checks[key] = {}
            if args.no_check and torch is not None:
                for name, fn in c.peer_calls(mth).items():
                    t0 = time.perf_counter()
                    fn()
                    check_time[key][name] = time.perf_counter() - t0
                continue
            for name, fn in c.peer_calls(mth, check=True).items():
                t0 = time.perf_counter()
                ref = fn()
                check_time[key][name] = time.perf_counter() - t0
                err, note = _compare(mth, got, ref)
                checks[key][name] = err
                if not err <= TOL:
                    failures.append(f"{mth} {c.label}: cnnkit differs from {name} (max |diff| / "
                                    f"max |ref| = {err:.2g}){'; ' + note if note else ''}")
                elif note:
                    emit(f"  note: {mth} {c.label}: {note}")
    if torch is not None and not args.no_check and methods:
        emit(f"check: every cnnkit result against its peer's, max |diff| / max |peer| <= {TOL:g} "
             f"(integrated gradients and SmoothGrad: the 99.9th percentile, outliers listed)"
             + (" (SmoothGrad with zero noise on both sides)" if "smoothgrad" in methods else "")
             + ("" if failures else ": all agree") + ".")
    if fvc is not None:
        _fv_check(args, emit, fvc, failures)
    if failures:
        flush_header()
        print("\ncheck FAILED (timings would be meaningless):")
        for b in failures:
            print("  " + b)
        return 1

    stream: Any = stream_arrays(mib)
    kinds = ("copy", "triad")
    bw_start = memory_bandwidth(kinds, mib=mib, arrays=stream)
    gemm_start = gemm_peak(gemm_n)
    emit(f"STREAM at start (GB/s, {mib} MiB arrays, {threads} threads): "
         + ", ".join(f"{k} {bw_start[k]:.1f}" for k in kinds))
    emit(f"sgemm {gemm_n}^3 at start (numpy.matmul, OpenBLAS, {blas.threads() or '?'} threads): "
         f"best {max(gemm_start):.0f} GFLOP/s, median {np.median(gemm_start):.0f}")
    if q:
        emit("--quick: a smoke run (small batches and counts, one round); the numbers are not "
             "representative.")

    results = []
    t_all = time.perf_counter()
    share = CpuShare()
    all_probes = []
    for mth in methods:
        cheap = mth in CHEAP
        reps = args.reps if args.reps is not None else (1 if q else (7 if cheap else 5))
        warm = args.warmup if args.warmup is not None else (1 if (cheap and not q) else 0)
        blocks, inner = [], []
        for c in cases:
            impls = {"cnnkit": c.cnnkit_call(mth)}
            impls.update(c.peer_calls(mth))
            slowest = max(check_time[(mth, c.side)].values())
            inner.append(1 if q else max(1, min(20, int(INNER_SECONDS / max(slowest, 1e-6)))))
            blocks.append((impls, lambda: probe(PROBE_KIND, stream, args.probe_reps)))
        times, probes = run_rounds(blocks, reps, warm, inner)
        all_probes += [p for ps in probes for p in ps]
        for c, ts, ps, inn in zip(cases, times, probes, inner):
            label = c.label if c.images(mth) == c.N else f"{c.label}[:{c.images(mth)}]"
            results.append({"method": mth, "batch": c.N, "side": c.side, "label": label,
                            "images": c.images(mth), "inputs_per_forward": c.bs, "reps": reps,
                            "warmup": warm, "inner": inn, "times_s": ts, "probe_gbs": ps,
                            "flops_per_image": c.flops_per_image(mth, flops[c.side]),
                            "check": checks.get((mth, c.side), {})})
    fv_res = None
    if fvc is not None:
        reps = args.reps if args.reps is not None else (1 if q else 5)
        warm = args.warmup if args.warmup is not None else (0 if q else 1)
        fv_res = fv_rounds(fvc["cases"], reps, warm,
                           lambda: probe(PROBE_KIND, stream, args.probe_reps))
        fvc.update(reps=reps, warmup=warm)
        all_probes += [p for r in fv_res for p in r["probe_gbs"]]
    timed_share = share.cores()
    elapsed = time.perf_counter() - t_all
    bw_end = memory_bandwidth(kinds, mib=mib, arrays=stream)
    stream = None
    gemm_end = gemm_peak(gemm_n)
    measured_peak = max(max(gemm_start), max(gemm_end))
    peak = args.peak_gflops if args.peak_gflops is not None else measured_peak
    emit("STREAM at end (GB/s): " + ", ".join(f"{k} {bw_end[k]:.1f}" for k in kinds)
         + (f"; {PROBE_KIND} probes during the rounds {min(all_probes):.1f}-"
            f"{max(all_probes):.1f}" if all_probes else "")
         + f"  [timing took {elapsed:.0f} s]")
    emit(f"sgemm {gemm_n}^3 at end: best {max(gemm_end):.0f} GFLOP/s, median "
         f"{np.median(gemm_end):.0f}. Compute roof used: {peak:.0f} GFLOP/s"
         + (" (--peak-gflops)" if args.peak_gflops is not None else " (best sgemm rate)") + ".")
    st = _share_text(timed_share, "the timed rounds")
    if st:
        emit(st)

    # peak memory, one call per side, after the rounds
    mem_note = None
    if not args.no_memory:
        rss = PeakRSS()
        rss_start = PeakRSS._status()["VmRSS"]
        if not rss.ok:
            mem_note = "peak RSS not measured: /proc/self/clear_refs is not writable here"
        release = getattr(_explain._model, "release_buffers", None)
        for r in results:
            c = next(c for c in cases if c.side == r["side"])
            if release is not None:
                release(model)      # the buffers cnnkit.explain keeps between calls count too
            r["memory"] = {"cnnkit": rss.measure(c.cnnkit_call(r["method"]), trace=True)}
            for name, fn in c.peer_calls(r["method"]).items():
                r["memory"][name] = rss.measure(fn)
        rss_end = PeakRSS._status()["VmRSS"]
        mem_note = mem_note or ("peak MB RSS: rise of the process's peak resident set over one "
                                "call (VmHWM reset via /proc/self/clear_refs, after gc and "
                                "malloc_trim; cnnkit.explain's kept buffers released first; a "
                                "lower bound: pages already resident, such as cnnkit's grow-only "
                                "conv scratch, are not counted; process "
                                f"resident set {rss_start / 2 ** 20:.0f} MB before the memory "
                                f"pass, {rss_end / 2 ** 20:.0f} MB after); NumPy traced MB: "
                                "tracemalloc "
                                "peak of cnnkit's call")
    if results:
        emit("ms/image: median over rounds of one call on the batch / its images; x peer = median "
             "over rounds of peer time / cnnkit time (in brackets on the peer's row); GFLOP/s: "
             "nominal model FLOPs (the passes the method needs) per second; check err: max "
             "|cnnkit - peer| / max |peer| before timing.")
    if mem_note and results:
        emit(mem_note + ".")
    flush_header()

    summaries = [summarize(r, peak) for r in results]
    if results:
        print()
        print("### seconds per image: cnnkit.explain vs peers\n" if md
              else "cnnkit.explain vs peers, per image:")
        print(render(summaries, results, md))
        print()
        measured = [s for s in summaries if s["met"] is not None]
        noisy = sum(1 for s in summaries if s["met"] is None and s["speedup"] is not None)
        print(f"Targets met: {sum(1 for s in measured if s['met'])} of {len(measured)} judged "
              + (f"({noisy} noisy, not judged: the rounds' spread exceeds the margin) "
                 if noisy else "")
              + f"(cnnkit >= 1.5x the peer for grad_cam, grad_cam_pp, saliency, guided_backprop, "
              f"integrated_gradients, smoothgrad; >= 2x for occlusion, rise, score_cam; matched "
              f"batching).")
        for s, r in zip(summaries, results):
            if s["speedup"] is not None:
                print(f"  {s['method']} {r['label']} vs {s['peer']}: "
                      + target_text([("speedup", s["speedup"], s["target"], s["met"],
                                      s.get("speedup_spread"))]))
    fv_doc = _fv_report(fvc, fv_res, peak, md) if fvc is not None else None
    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "methods": methods, "counts": counts,
               "shapes": [{"batch": c.N, "side": c.side, "inputs_per_forward": c.bs,
                           "cnnkit_default_batch_size": c.default_bs,
                           "rise_images": c.rise_n} for c in cases],
               "flops_forward_per_image": {str(k): v for k, v in flops.items()},
               "stream_mib": mib, "stream_start_gbs": bw_start, "stream_end_gbs": bw_end,
               "gemm_size": gemm_n, "gemm_start_gflops": gemm_start, "gemm_end_gflops": gemm_end,
               "peak_gflops": peak, "other_cores_timed_rounds": timed_share,
               "results": results, "summary": summaries, "memory_note": mem_note,
               "features": fv_doc}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
