"""2-D convolution benchmark: cnnkit against PyTorch CPU and a NumPy im2col baseline.

Run it as ``cnnkit bench conv [options]`` or ``python benchmarks/bench_conv.py [options]``;
``--help`` lists the options.

What is measured
----------------
The ``conv`` shapes of the project's shared benchmark shapes (MobileNetV2 depthwise, ResNeXt
grouped, ResNet/MobileNetV2 dense and pointwise layers at 224x224 input), batch 32, float32,
padding kernel // 2, no bias, dilation 1, in both of cnnkit's layouts (NCHW, NHWC):

* forward: ``cnnkit.conv2d``;
* backward: ``cnnkit.conv2d_backward(needs=("input", "weight"))``, the input and weight
  gradients (what ``torch.autograd.grad(y, (x, w), dy)`` computes);
* fwd+bwd: their sum in the same round, the cost of one training step of the layer.

Every cnnkit call is timed twice: with its outputs reused through ``out=`` ("reuse": one y buffer,
one grad_x and one grad_weight buffer per layout, as a training loop keeps them) and with new
outputs per call ("fresh": cnnkit's come from its pool of released outputs,
``cnnkit._memory.empty_pooled``, so after the first round they take the blocks the previous
round's arrays released instead of faulting new pages in, as torch's caching allocator does for
CUDA memory; torch's CPU tensors come from its default allocator).

Peers, in the same process on the same values:

* ``torch.nn.functional.conv2d`` at the same thread count, in NCHW (contiguous) and in
  channels_last (x, w and dy converted; x and dy are views of the NHWC arrays cnnkit reads).
  Forward under ``no_grad``; backward is ``torch.autograd.grad(y, (x, w), dy, retain_graph=True)``
  on a graph built once, as in the machine baseline. Every ratio is against torch's *faster*
  layout for that shape and pass (by median). Torch allocates fresh outputs with its default
  allocator (``THP_MEM_ALLOC_ENABLE`` is printed).
* NumPy, Caffe-style: per sample, the zero-padded input is cut into a column matrix (im2col,
  (groups, C_in/groups*k*k, Ho*Wo)) and multiplied by the weight with one stacked ``np.matmul``
  (OpenBLAS, set to the same thread count) straight into the NCHW output; the backward recomputes
  the columns, multiplies for the weight gradient and the column gradient, and scatters the latter
  back (col2im). Buffers are preallocated. The copies are single-threaded. 1x1 stride-1 layers
  skip the copy (the input *is* the column matrix).

Minimum bytes, FLOPs and the roof
---------------------------------
* FLOPs: forward 2*N*C_out*Ho*Wo*(C_in/groups)*k^2; backward twice that.
* Minimum bytes (float32): forward x + y + w; backward x + dy + dx + w + dw.
* Memory roof: the STREAM kernel with the matching access pattern and non-temporal stores, probed
  in the same round with cnnkit's threads on 256 MiB arrays: ``copy_nt`` (read 1, write 1) for the
  forward, ``triad_nt`` (read 2, write 1) for the backward, as in the machine baseline.
* Compute roof: an *achievable GEMM peak*, not an FMA peak: the best rate of a 2048^3 OpenBLAS
  sgemm (``numpy.matmul``) at the same thread count, measured at the start and at the end of the
  run. The machine's FMA peak is typically about 15% higher; ``--peak-gflops`` substitutes a
  number measured elsewhere.
* floor = max(bytes / bandwidth, FLOPs / peak), per round; "% of roof" = floor / time, the median
  over rounds. Activations that fit in L3 (14x14 and 7x7 layers) can beat the DRAM floor (>100%).

Rounds
------
Per shape, each pass is a *block*: one call of each cnnkit variant (layout x reuse/fresh), each
torch layout and the NumPy baseline, then a STREAM probe of the block's roof kernel. One round
runs every block; odd rounds run in reverse order, probe first. This VM's bandwidth drifts by
1.5x between minutes, so every ratio is computed within a round and the tables show the median
over rounds; the millisecond columns are plain medians. A pass that moves less than 64 MiB (the
14x14 and 7x7 layers, every layer at a small batch) is timed as several back-to-back calls per
sample (at most 16): a single call right after the probe, or after another implementation, finds
the caches cold, and the order within a round then decides the time.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import inspect
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

import cnnkit
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    NOISY,
    add_roof_args,
    import_torch,
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

__all__ = ["main", "SHAPES", "FAMILIES", "ConvSpec", "NumpyIm2col", "gemm_peak",
           "reference_check", "targets"]

# The "conv" entry of the project's shared benchmark shapes (kept identical here, so the
# benchmark runs from an installed package).
SHAPES: dict[str, Any] = {
    "batch": 32,
    "columns": ["name", "in_channels", "out_channels", "height_width", "stride", "groups",
                "kernel"],
    "depthwise": [
        ["mbv2 dw C32 112 s1", 32, 32, 112, 1, 32, 3],
        ["mbv2 dw C144 56 s1", 144, 144, 56, 1, 144, 3],
        ["mbv2 dw C144 56 s2", 144, 144, 56, 2, 144, 3],
        ["mbv2 dw C192 28 s1", 192, 192, 28, 1, 192, 3],
        ["mbv2 dw C384 14 s1", 384, 384, 14, 1, 384, 3],
        ["mbv2 dw C960 7 s1", 960, 960, 7, 1, 960, 3],
        ["dw k5 C240 14 s1", 240, 240, 14, 1, 240, 5],
        ["dw k7 C96 28 s1", 96, 96, 28, 1, 96, 7],
    ],
    "grouped": [
        ["resnext g32 C128 56", 128, 128, 56, 1, 32, 3],
        ["resnext g32 C256 28", 256, 256, 28, 1, 32, 3],
        ["resnext g32 C512 14", 512, 512, 14, 1, 32, 3],
        ["resnext g32 C1024 7", 1024, 1024, 7, 1, 32, 3],
        ["resnext g32 C256 56 s2", 256, 256, 56, 2, 32, 3],
    ],
    "dense": [
        ["resnet 3x3 64 56", 64, 64, 56, 1, 1, 3],
        ["mbv2 1x1 144->24 56", 144, 24, 56, 1, 1, 1],
        ["resnet 1x1 256->64 56", 256, 64, 56, 1, 1, 1],
    ],
}
FAMILIES = ("depthwise", "grouped", "dense")
LAYOUTS = ("NCHW", "NHWC")
TORCH_LAYOUTS = ("NCHW", "CL")
PASSES = ("fwd", "bwd")
ROWS = ("fwd", "bwd", "fwd+bwd")
ROOF_KIND = {"fwd": "copy_nt", "bwd": "triad_nt"}
VARIANTS = ("reuse", "fresh")
NEEDS = ("input", "weight")
# --quick: these shapes (every code path: depthwise s1/s2, grouped, dense 3x3, 1x1) at batch 2.
QUICK_SHAPES = ("mbv2 dw C144 56 s2", "mbv2 dw C384 14 s1", "resnext g32 C512 14",
                "resnet 3x3 64 56", "mbv2 1x1 144->24 56")
QUICK_BATCH = 2
QUICK_MAX_INNER = 3
# A pass whose minimum bytes are under INNER_BYTES runs ceil(INNER_BYTES / bytes) calls back to
# back per timed sample (at most MAX_INNER): the first call after a STREAM probe or another
# implementation finds cold caches, and on cache-sized layers that alone decides the time.
INNER_BYTES = 64 << 20
MAX_INNER = 16

# Targets (issue: conv, on this machine at 2 threads), as speedups over torch's faster layout,
# judged for cnnkit's reused and fresh outputs in each of its layouts:
# * depthwise, every MobileNetV2 shape: fwd+bwd >= 1.5x, and each pass >= 1.0x;
# * grouped (ResNeXt): fwd+bwd >= 1.5x at C128/C256, >= 1.0x at C512/C1024;
# * dense and pointwise: >= 0.9x, for each pass and for fwd+bwd.
TARGET_DW_STEP, TARGET_DW_PASS = 1.5, 1.0
TARGET_GROUPED_NARROW, TARGET_GROUPED_WIDE = 1.5, 1.0   # C <= 256 / C >= 512
TARGET_DENSE = 0.9


class ConvSpec:
    """One benchmark layer: geometry, sizes, FLOPs and minimum bytes."""

    def __init__(self, family: str, row, batch: int):
        name, cin, cout, hw, stride, groups, k = row
        self.family, self.name = family, name
        self.n, self.cin, self.cout, self.h, self.w = batch, cin, cout, hw, hw
        self.stride, self.groups, self.k, self.dilation = stride, groups, k, 1
        self.pad = k // 2
        eff = self.dilation * (k - 1) + 1
        self.ho = (hw + 2 * self.pad - eff) // stride + 1
        self.wo = (hw + 2 * self.pad - eff) // stride + 1

    def x_shape(self, layout: str) -> tuple:
        """The input's shape in ``layout``.

        Parameters
        ----------
        layout : {"NCHW", "NHWC"}
            The memory layout.

        Returns
        -------
        tuple of int
            ``(N, C, H, W)`` or ``(N, H, W, C)``.
        """
        return ((self.n, self.cin, self.h, self.w) if layout == "NCHW"
                else (self.n, self.h, self.w, self.cin))

    def y_shape(self, layout: str) -> tuple:
        """The output's shape in ``layout``.

        Parameters
        ----------
        layout : {"NCHW", "NHWC"}
            The memory layout.

        Returns
        -------
        tuple of int
            ``(N, K, Ho, Wo)`` or ``(N, Ho, Wo, K)``.
        """
        return ((self.n, self.cout, self.ho, self.wo) if layout == "NCHW"
                else (self.n, self.ho, self.wo, self.cout))

    @property
    def w_shape(self) -> tuple:
        """The weight's shape.

        Returns
        -------
        tuple of int
            ``(K, C / groups, k, k)``.
        """
        return (self.cout, self.cin // self.groups, self.k, self.k)

    @property
    def x_elems(self) -> int:
        """The input's element count.

        Returns
        -------
        int
            ``N * C * H * W``.
        """
        return self.n * self.cin * self.h * self.w

    @property
    def y_elems(self) -> int:
        """The output's element count.

        Returns
        -------
        int
            ``N * K * Ho * Wo``.
        """
        return self.n * self.cout * self.ho * self.wo

    @property
    def w_elems(self) -> int:
        """The weight's element count.

        Returns
        -------
        int
            The product of :attr:`w_shape`.
        """
        return int(np.prod(self.w_shape))

    def flops(self, pas: str) -> float:
        """The pass's floating-point operations (a multiply and an add count two).

        Parameters
        ----------
        pas : str
            ``"fwd"``, or any other pass name for the backward (input and weight gradients).

        Returns
        -------
        float
            ``2 * N * K * Ho * Wo * (C / groups) * k**2`` forward, twice that backward.
        """
        f = 2.0 * self.n * self.cout * self.ho * self.wo * (self.cin // self.groups) * self.k ** 2
        return f if pas == "fwd" else 2 * f

    def nbytes(self, pas: str) -> float:
        """The least bytes the pass moves in float32 (each operand read or written once).

        Parameters
        ----------
        pas : str
            ``"fwd"`` (x, y, w), or any other pass name for the backward (x, dy, dx, w, dw).

        Returns
        -------
        float
            Four bytes per element of those operands.
        """
        if pas == "fwd":
            return 4.0 * (self.x_elems + self.y_elems + self.w_elems)
        return 4.0 * (2 * self.x_elems + self.y_elems + 2 * self.w_elems)

    def args(self):
        """(stride, padding, dilation, groups) as cnnkit and torch take them."""
        return self.stride, self.pad, self.dilation, self.groups


def all_specs(batch: int) -> list:
    """Every layer of the benchmark's shape table, family by family.

    Parameters
    ----------
    batch : int
        The batch size of each layer.

    Returns
    -------
    list of ConvSpec
        One spec per row of ``SHAPES``, in the order of ``FAMILIES``.
    """
    return [ConvSpec(fam, row, batch) for fam in FAMILIES for row in SHAPES[fam]]


# ---- OpenBLAS (numpy's) thread control and the GEMM peak -----------------------------------------
class _OpenBLAS:
    """numpy's OpenBLAS through ctypes: thread count and core name, where the symbols exist."""

    SET = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
           "scipy_openblas_set_num_threads", "openblas_set_num_threads")
    GET = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
           "scipy_openblas_get_num_threads", "openblas_get_num_threads")
    CORE = ("scipy_openblas_get_corename64_", "openblas_get_corename64_",
            "scipy_openblas_get_corename", "openblas_get_corename")

    def __init__(self):
        self.path, self._set, self._get, self._core = None, None, None, None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f
                                if "openblas" in line.lower() and ".so" in line})
        except OSError:
            paths = []
        for p in paths:
            try:
                lib = ctypes.CDLL(p)
            except OSError:
                continue
            self._set = next((getattr(lib, s) for s in self.SET if hasattr(lib, s)), None)
            self._get = next((getattr(lib, s) for s in self.GET if hasattr(lib, s)), None)
            self._core = next((getattr(lib, s) for s in self.CORE if hasattr(lib, s)), None)
            if self._set is not None or self._get is not None:
                self.path = p
                if self._get is not None:
                    self._get.restype = ctypes.c_int
                if self._core is not None:
                    self._core.restype = ctypes.c_char_p
                break

    def threads(self):
        return int(self._get()) if self._get is not None else None

    def set_threads(self, n: int) -> bool:
        if self._set is None:
            return False
        self._set(ctypes.c_int(int(n)))
        return True

    def describe(self) -> str:
        if self.path is None:
            return "OpenBLAS not found in this process (thread count not controlled)"
        core = self._core().decode() if self._core is not None else "?"
        return f"{self.path.rsplit('/', 1)[-1]} (core {core}, {self.threads()} threads)"


def gemm_peak(n: int = 2048, reps: int = 5) -> list:
    """GFLOP/s of ``reps`` float32 ``numpy.matmul`` calls of size n^3 (after one warm-up call),
    with OpenBLAS at whatever thread count it has. An achievable GEMM rate, not an FMA peak.

    Parameters
    ----------
    n : int
        The size of the square matrices.
    reps : int
        Timed calls.

    Returns
    -------
    list of float
        The rate of each timed call, in GFLOP/s.
    """
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        rates.append(2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return rates


# ---- NumPy baseline ------------------------------------------------------------------------------
class NumpyIm2col:
    """Caffe-style convolution in NumPy, NCHW float32: per sample, im2col into a preallocated
    (groups, C_in/groups*k*k, Ho*Wo) column buffer, then one stacked ``np.matmul`` with the
    (groups, C_out/groups, C_in/groups*k*k) weight straight into the output. Backward recomputes
    the columns, takes grad_weight = dy @ col^T (summed over samples) and the column gradient
    w^T @ dy, and scatters it back (col2im)."""

    def __init__(self, spec: ConvSpec, w: np.ndarray):
        s, p, d, g = spec.args()
        k, c, h, wd = spec.k, spec.cin, spec.h, spec.w
        self.spec, self.g = spec, g
        self.kk = (c // g) * k * k
        self.hw = spec.ho * spec.wo
        self.w3 = np.ascontiguousarray(w.reshape(g, spec.cout // g, self.kk))
        self.direct = k == 1 and s == 1 and p == 0   # the input is already the column matrix
        self.tmp_w = np.empty_like(self.w3)
        if self.direct:
            return
        self.xp = np.zeros((c, h + 2 * p, wd + 2 * p), np.float32)
        self.col = np.empty((g, self.kk, self.hw), np.float32)
        self.col5 = self.col.reshape(c, k, k, spec.ho, spec.wo)
        sc, sh, sw = self.xp.strides
        self.win = as_strided(self.xp, shape=(c, k, k, spec.ho, spec.wo),
                              strides=(sc, sh * d, sw * d, sh * s, sw * s), writeable=False)
        self.dxp = np.zeros_like(self.xp)
        # one strided view of dxp per kernel offset, for the scatter-add
        self.dst = [self.dxp[:, i * d: i * d + s * (spec.ho - 1) + 1: s,
                             j * d: j * d + s * (spec.wo - 1) + 1: s]
                    for i in range(k) for j in range(k)]

    def _im2col(self, xn):
        if self.direct:
            return xn.reshape(self.g, self.kk, self.hw)
        p, sp = self.spec.pad, self.spec
        self.xp[:, p:p + sp.h, p:p + sp.w] = xn
        np.copyto(self.col5, self.win)
        return self.col

    def forward(self, x, y):
        """The convolution of ``x`` written into ``y``, image by image (im2col, then one matmul).

        Parameters
        ----------
        x : numpy.ndarray
            The input, float32 (N, C_in, H, W), of this layer's geometry.
        y : numpy.ndarray
            The output, float32 (N, C_out, Ho, Wo), overwritten.

        Returns
        -------
        numpy.ndarray
            ``y``.
        """
        y4 = y.reshape(x.shape[0], self.g, -1, self.hw)
        for n in range(x.shape[0]):
            np.matmul(self.w3, self._im2col(x[n]), out=y4[n])
        return y

    def backward(self, dy, x, gx, gw):
        """The input and weight gradients of the convolution, written in place.

        Parameters
        ----------
        dy : numpy.ndarray
            The gradient at the output, float32 (N, C_out, Ho, Wo).
        x : numpy.ndarray
            The forward pass's input, float32 (N, C_in, H, W).
        gx : numpy.ndarray
            The input gradient, float32 (N, C_in, H, W), overwritten.
        gw : numpy.ndarray
            The weight gradient, float32 of the weight's shape, overwritten.

        Returns
        -------
        tuple of numpy.ndarray
            ``(gx, gw)``.
        """
        sp = self.spec
        dy4 = dy.reshape(x.shape[0], self.g, -1, self.hw)
        gw3 = gw.reshape(self.w3.shape)
        gw3[...] = 0
        wt = self.w3.transpose(0, 2, 1)
        for n in range(x.shape[0]):
            col = self._im2col(x[n])
            np.matmul(dy4[n], col.transpose(0, 2, 1), out=self.tmp_w)
            gw3 += self.tmp_w
            if self.direct:
                np.matmul(wt, dy4[n], out=gx[n].reshape(self.g, self.kk, self.hw))
                continue
            np.matmul(wt, dy4[n], out=self.col)      # the column gradient, in the column buffer
            self.dxp[...] = 0
            k = sp.k
            for t, dst in enumerate(self.dst):
                dst += self.col5[:, t // k, t % k]
            gx[n] = self.dxp[:, sp.pad:sp.pad + sp.h, sp.pad:sp.pad + sp.w]
        return gx, gw


# ---- float64 reference (for the check when torch is absent) -------------------------------------
def _ref64(spec: ConvSpec, x, w, dy):
    """(y, grad_x, grad_w) in float64, NCHW, by one strided slice of the padded input per kernel
    offset contracted with the weight (see tests/reference/conv.py for the derivation)."""
    s, p, d, g = spec.args()
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    n, c, h, wd = x.shape
    k, ho, wo = spec.k, spec.ho, spec.wo
    cg, og = c // g, spec.cout // g
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    w5 = w.reshape(g, og, cg, k, k)
    dy5 = dy.reshape(n, g, og, ho, wo)
    y = np.zeros((n, g, og, ho, wo))
    gw = np.zeros_like(w5)
    gxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(None), slice(i * d, i * d + s * (ho - 1) + 1, s),
                  slice(j * d, j * d + s * (wo - 1) + 1, s))
            patch = xp[sl].reshape(n, g, cg, ho, wo)
            y += np.einsum("ngchw,goc->ngohw", patch, w5[..., i, j])
            gw[..., i, j] = np.einsum("ngohw,ngchw->goc", dy5, patch)
            gxp[sl] += np.einsum("ngohw,goc->ngchw", dy5, w5[..., i, j]).reshape(n, c, ho, wo)
    return (y.reshape(n, spec.cout, ho, wo), gxp[:, :, p:p + h, p:p + wd],
            gw.reshape(w.shape))


def _torch_ref64(torch, spec, x, w, dy):
    s, p, d, g = spec.args()
    xg = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    wg = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    y = torch.nn.functional.conv2d(xg, wg, None, s, p, d, g)
    gx, gw = torch.autograd.grad(y, (xg, wg), torch.from_numpy(dy.astype(np.float64)))
    return y.detach().numpy(), gx.numpy(), gw.numpy()


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def reference_check(torch, specs, layouts=LAYOUTS, numpy_passes=PASSES) -> list:
    """Check every timed call against a float64 reference before timing.

    Every timed cnnkit call (both passes, reuse and fresh, each layout) and the NumPy baseline run
    on each benchmarked geometry at batch 2 and at most 10x10 pixels, against torch in float64 (or
    a NumPy float64 reference without torch), to 1e-4 of the reference's largest magnitude.

    Parameters
    ----------
    torch : module or None
        The torch module, or None for the NumPy float64 reference.
    specs : sequence of ConvSpec
        The benchmarked layers; each is checked at its geometry, batch 2, height clipped to 10.
    layouts : sequence of str, optional
        The cnnkit layouts checked ("NCHW", "NHWC").
    numpy_passes : sequence of str, optional
        The passes ("fwd", "bwd") whose NumPy baseline is checked; empty checks none.

    Returns
    -------
    list of str
        One message per mismatch (layer, call, largest difference and tolerance) or error raised;
        empty when all agree.
    """
    bad = []
    rng = np.random.default_rng(11)
    for big in specs:
        row = [big.name, big.cin, big.cout, min(big.h, 10), big.stride, big.groups, big.k]
        spec = ConvSpec(big.family, row, 2)
        s, p, d, g = spec.args()
        x = rng.standard_normal(spec.x_shape("NCHW")).astype(np.float32)
        w = rng.standard_normal(spec.w_shape).astype(np.float32)
        dy = rng.standard_normal(spec.y_shape("NCHW")).astype(np.float32)
        want = (_torch_ref64(torch, spec, x, w, dy) if torch is not None
                else _ref64(spec, x, w, dy))

        def cmp(what, got, ref, layout="NCHW", spec=spec):
            got = np.asarray(got, dtype=np.float64)
            if layout == "NHWC" and got.ndim == 4:
                got = got.transpose(0, 3, 1, 2)
            tol = 1e-4 * (1 + np.abs(ref).max())
            if got.shape != ref.shape:
                bad.append(f"{spec.name}: {what}: shape {got.shape}, expected {ref.shape}")
            elif not np.all(np.isfinite(got)) or np.abs(got - ref).max() > tol:
                bad.append(f"{spec.name}: {what}: max |diff| {np.abs(got - ref).max():.3g} > "
                           f"{tol:.3g}")

        for L in layouts:
            xl, dyl = (x, dy) if L == "NCHW" else (_nhwc(x), _nhwc(dy))
            try:
                cmp(f"conv2d {L}", cnnkit.conv2d(xl, w, None, s, p, d, g, layout=L), want[0], L)
                yo = np.full(spec.y_shape(L), np.nan, np.float32)
                cnnkit.conv2d(xl, w, None, s, p, d, g, layout=L, out=yo)
                cmp(f"conv2d(out=) {L}", yo, want[0], L)
                gx, gw, _ = cnnkit.conv2d_backward(dyl, xl, w, s, p, d, g, layout=L, needs=NEEDS)
                cmp(f"conv2d_backward {L} grad_input", gx, want[1], L)
                cmp(f"conv2d_backward {L} grad_weight", gw, want[2])
                gxo = np.full(xl.shape, np.nan, np.float32)
                gwo = np.full(w.shape, np.nan, np.float32)
                cnnkit.conv2d_backward(dyl, xl, w, s, p, d, g, layout=L, needs=NEEDS,
                                       out=(gxo, gwo, None))
                cmp(f"conv2d_backward(out=) {L} grad_input", gxo, want[1], L)
                cmp(f"conv2d_backward(out=) {L} grad_weight", gwo, want[2])
            except Exception as e:  # report, do not crash: the other rows are still informative
                bad.append(f"{spec.name}: cnnkit {L} raised {type(e).__name__}: {e}")
        base = NumpyIm2col(spec, w)
        if "fwd" in numpy_passes:
            cmp("numpy im2col forward", base.forward(x, np.empty(spec.y_shape("NCHW"),
                                                                 np.float32)), want[0])
        if "bwd" in numpy_passes:
            gx, gw = base.backward(dy, x, np.empty_like(x), np.empty_like(w))
            cmp("numpy im2col grad_input", gx, want[1])
            cmp("numpy im2col grad_weight", gw, want[2])
    return bad


# ---- implementations under test ----------------------------------------------------------------
def _data(spec: ConvSpec, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape("NCHW"), dtype=np.float32)
    dy = rng.standard_normal(spec.y_shape("NCHW"), dtype=np.float32)
    fan_in = spec.cin // spec.groups * spec.k ** 2
    w = (rng.standard_normal(spec.w_shape, dtype=np.float32) / np.float32(math.sqrt(fan_in)))
    return {"NCHW": (x, dy), "NHWC": (_nhwc(x), _nhwc(dy)), "w": w}


def _cnnkit_impls(spec, d, layouts, passes) -> dict:
    """{pass: {name: callable}} for cnnkit, "reuse" (out= buffers kept) and "fresh"."""
    s, p, dl, g = spec.args()
    w = d["w"]
    impls: dict[str, dict[str, Any]] = {ps: {} for ps in passes}
    for L in layouts:
        x, dy = d[L]
        if "fwd" in impls:
            y = np.empty(spec.y_shape(L), np.float32)
            impls["fwd"][f"cnnkit {L} reuse"] = (
                lambda x=x, L=L, y=y: cnnkit.conv2d(x, w, None, s, p, dl, g, layout=L, out=y))
            impls["fwd"][f"cnnkit {L} fresh"] = (
                lambda x=x, L=L: cnnkit.conv2d(x, w, None, s, p, dl, g, layout=L))
        if "bwd" in impls:
            bufs = (np.empty_like(x), np.empty_like(w), None)
            impls["bwd"][f"cnnkit {L} reuse"] = (
                lambda x=x, dy=dy, L=L, bufs=bufs:
                cnnkit.conv2d_backward(dy, x, w, s, p, dl, g, layout=L, needs=NEEDS, out=bufs))
            impls["bwd"][f"cnnkit {L} fresh"] = (
                lambda x=x, dy=dy, L=L:
                cnnkit.conv2d_backward(dy, x, w, s, p, dl, g, layout=L, needs=NEEDS))
    return impls


def _torch_impls(torch, spec, d, passes) -> dict:
    """{pass: {"torch NCHW"/"torch CL": callable}}; backward graphs are built here, once."""
    F = torch.nn.functional
    s, p, dl, g = spec.args()
    impls: dict[str, dict[str, Any]] = {ps: {} for ps in passes}
    for TL in TORCH_LAYOUTS:
        if TL == "NCHW":
            xt, dyt = (torch.from_numpy(a) for a in d["NCHW"])
            wt = torch.from_numpy(d["w"].copy())
        else:  # channels_last views of the NHWC arrays (no copy); weight converted
            xt, dyt = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in d["NHWC"])
            wt = torch.from_numpy(d["w"].copy()).contiguous(memory_format=torch.channels_last)
            assert xt.is_contiguous(memory_format=torch.channels_last)
        name = f"torch {TL}"
        if "fwd" in impls:
            def fwd(xt=xt, wt=wt):
                with torch.no_grad():
                    return F.conv2d(xt, wt, None, s, p, dl, g)
            impls["fwd"][name] = fwd
        if "bwd" in impls:
            xg = xt.detach().requires_grad_()
            wg = wt.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            y = F.conv2d(xg, wg, None, s, p, dl, g)
            impls["bwd"][name] = (lambda y=y, ins=(xg, wg), dyt=dyt:
                                  torch.autograd.grad(y, ins, dyt, retain_graph=True))
    return impls


def _numpy_impls(spec, d, passes) -> dict:
    base = NumpyIm2col(spec, d["w"])
    x, dy = d["NCHW"]
    impls = {}
    if "fwd" in passes:
        y = np.empty(spec.y_shape("NCHW"), np.float32)
        impls["fwd"] = {"numpy NCHW": lambda: base.forward(x, y)}
    if "bwd" in passes:
        gx, gw = np.empty_like(x), np.empty_like(d["w"])
        impls["bwd"] = {"numpy NCHW": lambda: base.backward(dy, x, gx, gw)}
    return impls


def _algorithm_fns() -> tuple:
    """(cnnkit.ops.conv.conv2d_algorithm, cnnkit.ops.conv._winograd), each None where this build
    lacks it."""
    try:
        mod = importlib.import_module("cnnkit.ops.conv")
    except ImportError:
        return None, None
    return getattr(mod, "conv2d_algorithm", None), getattr(mod, "_winograd", None)


def algorithm(spec: ConvSpec, layout: str, pas: str) -> str:
    """The algorithm cnnkit reports for this layer and pass.

    Parameters
    ----------
    spec : ConvSpec
        The layer.
    layout : str
        The cnnkit layout, "NCHW" or "NHWC".
    pas : str
        The pass, "fwd" or "bwd". Backward rows ask per gradient ("input", "weight") when
        ``cnnkit.ops.conv2d_algorithm`` takes a ``pass_`` argument.

    Returns
    -------
    str
        The kernel's name, the input and weight gradients' joined by "/" for a backward row, or
        "?" where this build cannot say; "+winograd" after a name whose pass runs by Winograd
        F(2x2, 3x3) (its GFLOP/s and % of roof then count the direct algorithm's FLOPs: an
        effective rate, which may pass the FMA peak).
    """
    fn, wino = _algorithm_fns()
    if fn is None:
        return "?"
    a = (spec.x_shape(layout), spec.w_shape, spec.stride, spec.pad, spec.dilation, spec.groups,
         layout)
    try:
        if "pass_" not in inspect.signature(fn).parameters:
            return str(fn(*a))
        names = [str(fn(*a, pass_=q)) + ("+winograd" if wino is not None and wino(*a, pass_=q) else "")
                 for q in (NEEDS if pas != "fwd" else ("forward",))]
        return "/".join(names)
    except Exception:
        return "?"


def calls_per_sample(spec: ConvSpec, pas: str, max_inner: int = MAX_INNER) -> int:
    """How many calls of a pass one timed sample runs back to back.

    Parameters
    ----------
    spec : ConvSpec
        The layer.
    pas : str
        The pass, "fwd" or "bwd".
    max_inner : int, optional
        The most calls a sample runs.

    Returns
    -------
    int
        ceil(INNER_BYTES / the pass's minimum bytes), between 1 and ``max_inner``: small passes
        repeat until a sample moves about INNER_BYTES, so the timer's resolution does not
        dominate.
    """
    return max(1, min(max_inner, math.ceil(INNER_BYTES / spec.nbytes(pas))))


def run_shape(torch: Any, spec: ConvSpec, layouts: Sequence[str], passes: Sequence[str],
              numpy_passes: Sequence[str], stream: Any, reps: int, warmup: int, probe_reps: int,
              inner: int | None = None, max_inner: int = MAX_INNER) -> dict:
    """Time one shape: interleaved rounds over its passes, every implementation then a STREAM probe.

    Parameters
    ----------
    torch : module or None
        The torch module for the peers, or None to time cnnkit (and NumPy) alone.
    spec : ConvSpec
        The layer.
    layouts : sequence of str
        The cnnkit layouts timed ("NCHW", "NHWC").
    passes : sequence of str
        The passes timed ("fwd", "bwd"), each a block of every round.
    numpy_passes : sequence of str
        The passes whose NumPy im2col baseline is timed too.
    stream : object
        The STREAM probe's arrays (:func:`cnnkit.bench._common.probe`).
    reps, warmup : int
        Timed rounds, and untimed rounds before them.
    probe_reps : int
        Runs of the STREAM kernel per probe.
    inner : int or None, optional
        Calls per timed sample; None: :func:`calls_per_sample` per pass.
    max_inner : int, optional
        The most calls per sample where ``inner`` is None.

    Returns
    -------
    dict
        The shape's name, family and batch, the calls per sample by pass, the seconds it took,
        the raw per-round times (``times_s[pass][implementation]``, seconds per call), the
        per-round probes (``probe_gbs[pass]``, GB/s) and the algorithm cnnkit reports per layout
        and pass.
    """
    calls = {ps: inner or calls_per_sample(spec, ps, max_inner) for ps in passes}
    d = _data(spec)
    impls = _cnnkit_impls(spec, d, layouts, passes)
    if torch is not None:
        for k, v in _torch_impls(torch, spec, d, passes).items():
            impls[k].update(v)
    for k, v in _numpy_impls(spec, d, [ps for ps in passes if ps in numpy_passes]).items():
        impls[k].update(v)
    blocks = [(impls[ps], lambda kind=ROOF_KIND[ps]: probe(kind, stream, probe_reps))
              for ps in passes]
    t0 = time.perf_counter()
    times, probes = run_rounds(blocks, reps, warmup, [calls[ps] for ps in passes])
    elapsed = time.perf_counter() - t0
    del impls, blocks, d
    gc.collect()
    return {"name": spec.name, "family": spec.family, "batch": spec.n, "inner": calls,
            "seconds": elapsed, "times_s": dict(zip(passes, times)),
            "probe_gbs": dict(zip(passes, probes)),
            "algorithm": {f"{L} {ps}": algorithm(spec, L, ps) for L in layouts for ps in passes}}


# ---- summaries ---------------------------------------------------------------------------------
def _series(res, spec, row, peak):
    """(per-round seconds by implementation, per-round floor seconds, bytes, FLOPs, bound) for
    one row; None if a needed pass was not run. A name missing from a pass is dropped."""
    parts = ("fwd", "bwd") if row == "fwd+bwd" else (row,)
    if any(ps not in res["times_s"] for ps in parts):
        return None
    names = set.intersection(*(set(res["times_s"][ps]) for ps in parts))
    t = {nm: sum(np.array(res["times_s"][ps][nm]) for ps in parts) for nm in names}
    floor = 0
    for ps in parts:
        mem = spec.nbytes(ps) / (np.array(res["probe_gbs"][ps]) * 1e9)
        floor = floor + np.maximum(mem, spec.flops(ps) / (peak * 1e9))
    nbytes = sum(spec.nbytes(ps) for ps in parts)
    flops = sum(spec.flops(ps) for ps in parts)
    mem_t = sum(spec.nbytes(ps) / (med(res["probe_gbs"][ps]) * 1e9) for ps in parts)
    bound = "memory" if mem_t >= flops / (peak * 1e9) else "compute"
    return t, floor, nbytes, flops, bound


def summarize(res: dict, spec: ConvSpec, layouts: Sequence[str], peak: float) -> list[dict]:
    """The summary rows of one shape: one dict per (row of :data:`ROWS`, cnnkit layout).

    Parameters
    ----------
    res : dict
        The shape's timings, as :func:`run_shape` returns them.
    spec : ConvSpec
        The layer.
    layouts : sequence of str
        The cnnkit layouts to summarise ("NCHW", "NHWC").
    peak : float
        The machine's measured FLOP/s peak in GFLOP/s (the compute roof).

    Returns
    -------
    list of dict
        Per row: the layer's identity, the algorithm, bytes and FLOPs, the bound and the floor
        (``floor_ms``), torch's and NumPy's median times, and per variant of :data:`VARIANTS` the
        median ms with its spread, GFLOP/s, GB/s, the fraction of the roof and the ratios to the
        best torch layout and to NumPy. Rows whose passes were not run are left out.
    """
    rows = []
    for row in ROWS:
        ser = _series(res, spec, row, peak)
        if ser is None:
            continue
        t, floor, nbytes, flops, bound = ser
        torch_t = {k[len("torch "):]: v for k, v in t.items() if k.startswith("torch ")}
        best = min(torch_t, key=lambda k: med(torch_t[k])) if torch_t else None
        np_t = t.get("numpy NCHW")
        for L in layouts:
            if row == "fwd+bwd":
                algo = None
            else:
                algo = res["algorithm"].get(f"{L} {row}", "?")
            r = {"name": spec.name, "family": spec.family, "cin": spec.cin, "row": row,
                 "layout": L, "algorithm": algo, "bytes": nbytes, "flops": flops,
                 "bound": bound, "floor_ms": 1e3 * med(floor),
                 "torch_ms": {k: 1e3 * med(v) for k, v in torch_t.items()},
                 "numpy_ms": 1e3 * med(np_t) if np_t is not None else None}
            if best is not None:
                r["torch_best"] = best
                r["torch_best_ms"] = 1e3 * med(torch_t[best])
            for var in VARIANTS:
                tc = t.get(f"cnnkit {L} {var}")
                if tc is None:
                    continue
                v = {"ms": 1e3 * med(tc), "ms_spread": spread(tc),
                     "gflops": flops / med(tc) / 1e9,
                     "gbs": nbytes / med(tc) / 1e9, "frac_roof": med(floor / tc)}
                if best is not None:
                    ratio = torch_t[best] / tc
                    v["vs_torch"] = med(ratio)
                    v["vs_torch_iqr"] = [float(q) for q in np.percentile(ratio, [25, 75])]
                    v["vs_torch_spread"] = spread(ratio)
                if np_t is not None:
                    v["vs_numpy"] = med(np_t / tc)
                r[var] = v
            rows.append(r)
    return rows


def target_threshold(r: dict):
    """The speedup over torch that row ``r`` must reach, or None when it carries no target."""
    fam, row = r["family"], r["row"]
    if fam == "depthwise":
        if not r["name"].startswith("mbv2"):
            return None
        return TARGET_DW_STEP if row == "fwd+bwd" else TARGET_DW_PASS
    if fam == "grouped":
        if row != "fwd+bwd":
            return None
        return TARGET_GROUPED_NARROW if r["cin"] <= 256 else TARGET_GROUPED_WIDE
    return TARGET_DENSE


def targets(r: dict) -> list:
    """[(description, value, threshold, met, spread)] for one summary row
    (:func:`cnnkit.bench._common.target`); met is None when not measured (no torch) or when the
    spread of the rounds exceeds the margin. Empty when the row has no target."""
    thr = target_threshold(r)
    if thr is None:
        return []
    out = []
    for var in VARIANTS:
        v = r.get(var, {})
        out.append(target(f"x torch ({var})", v.get("vs_torch"), thr,
                          rel_spread=v.get("vs_torch_spread")))
    return out


# ---- printing ----------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ms(v) -> str:
    """Median ms with the spread of the rounds (interquartile range over median)."""
    if not v:
        return "-"
    sp = v.get("ms_spread")
    return _f(v["ms"]) + ("" if sp is None else f" ±{100 * sp:.0f}%")


def _x(v, key) -> str:
    return "-" if v is None or v.get(key) is None else f"{v[key]:.2f}x"


def _table(head, body, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head, ["-" * w for w in widths]] + body)


def render(rows: list[dict], have_torch: bool, markdown: bool = False) -> str:
    """The summary table, each row with its targets' verdicts, then the peers' times per layout.

    Parameters
    ----------
    rows : list of dict
        Summary rows, as :func:`summarize` returns them.
    have_torch : bool
        Whether torch ran: the peers' table is added when it did (or when NumPy ran).
    markdown : bool, optional
        A Markdown table instead of aligned plain text.

    Returns
    -------
    str
        The printable report.
    """
    head = ["layer", "layout", "pass", "algorithm", "ms reuse", "ms fresh", "GFLOP/s",
            "eff GB/s", "floor ms (bound)", "% of roof", "torch best ms (layout)",
            "x torch reuse", "x torch fresh", "x numpy", "targets"]
    body = []
    for r in rows:
        ru, fr = r.get("reuse"), r.get("fresh")
        tb = f"{_f(r['torch_best_ms'])} ({r['torch_best']})" if "torch_best" in r else "-"
        tl = targets(r)
        body.append([
            r["name"], r["layout"], r["row"], r["algorithm"] or "",
            _ms(ru), _ms(fr),
            _f(ru["gflops"]) if ru else "-", _f(ru["gbs"]) if ru else "-",
            f"{_f(r['floor_ms'])} ({r['bound'][:3]})", _pct(ru["frac_roof"]) if ru else "-",
            tb, _x(ru, "vs_torch"), _x(fr, "vs_torch"), _x(ru, "vs_numpy"),
            target_text(tl) if tl else ""])
    out = [_table(head, body, markdown)]
    head2 = ["layer", "pass", "torch NCHW ms", "torch channels_last ms", "faster",
             "numpy im2col ms"]
    body2, seen = [], set()
    for r in rows:
        k = (r["name"], r["row"])
        if k in seen:
            continue
        seen.add(k)
        tm = r["torch_ms"]
        body2.append([r["name"], r["row"], _f(tm.get("NCHW")), _f(tm.get("CL")),
                      r.get("torch_best", "-"), _f(r["numpy_ms"])])
    if have_torch or any(r["numpy_ms"] is not None for r in rows):
        out += ["", ("Peers per layout (median ms; ratios above are against torch's faster "
                     "layout):"), "", _table(head2, body2, markdown)]
    return "\n".join(out)


# ---- entry point -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench conv",
        description="2-D convolution forward and backward (input + weight grads): cnnkit "
                    "(reused and fresh outputs) vs torch.nn.functional.conv2d in its faster "
                    "layout and a NumPy im2col+matmul baseline, interleaved with STREAM probes; "
                    "roofline floors from measured bandwidth and an sgemm peak.")
    p.add_argument("--family", default=",".join(FAMILIES),
                   help="comma-separated subset of depthwise,grouped,dense (default: all)")
    p.add_argument("--layout", default=",".join(LAYOUTS),
                   help="cnnkit layouts, comma-separated subset of NCHW,NHWC (torch always runs "
                        "both of its layouts)")
    p.add_argument("--pass", dest="passes", default=",".join(PASSES),
                   help="comma-separated subset of fwd,bwd (default both; fwd+bwd rows need "
                        "both)")
    p.add_argument("--match", default=None,
                   help="only layers whose name contains one of these comma-separated strings")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for cnnkit, torch and OpenBLAS (default: cnnkit's current count)")
    p.add_argument("--repeats", "--reps", dest="reps", type=int, default=None,
                   help="timed rounds per shape (default 9; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default 2; 1 with --quick)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch size (default {SHAPES['batch']}; {QUICK_BATCH} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {', '.join(QUICK_SHAPES)} at batch {QUICK_BATCH}, 3 rounds, "
                        f"at most {QUICK_MAX_INNER} calls per sample, 64 MiB STREAM arrays, "
                        "1024^3 GEMM peak")
    p.add_argument("--inner", type=int, default=None,
                   help=f"calls per timed sample (default: enough calls to move "
                        f"{INNER_BYTES >> 20} MiB of minimum bytes, at most {MAX_INNER}; "
                        f"{QUICK_MAX_INNER} with --quick)")
    p.add_argument("--numpy", choices=("both", "fwd", "none"), default="both",
                   help="which passes the NumPy im2col baseline runs (default both)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if importable")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of cnnkit and the NumPy baseline before timing")
    add_roof_args(p, quick_gemm=1024)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the convolution benchmark (``cnnkit bench conv``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench conv --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    try:
        fams = parse_list(args.family, FAMILIES, "--family", require=True)
        layouts = parse_list(args.layout, LAYOUTS, "--layout", require=True)
        passes = parse_list(args.passes, PASSES, "--pass", require=True)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    passes = [ps for ps in PASSES if ps in passes]
    q = args.quick
    batch = args.batch if args.batch is not None else (QUICK_BATCH if q else SHAPES["batch"])
    reps = args.reps if args.reps is not None else (3 if q else 9)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    gemm_n = args.gemm_size if args.gemm_size is not None else (1024 if q else 2048)
    mib = args.stream_mib if args.stream_mib is not None else (64 if q else 256)
    if (batch < 1 or reps < 1 or warmup < 0 or args.probe_reps < 1 or gemm_n < 1 or mib < 1
            or (args.inner is not None and args.inner < 1)):
        print("--batch, --repeats, --probe-reps, --gemm-size, --stream-mib, --inner must be "
              ">= 1, "
              "--warmup >= 0", file=sys.stderr)
        return 2
    specs = [sp for sp in all_specs(batch) if sp.family in fams]
    if q:
        specs = [sp for sp in specs if sp.name in QUICK_SHAPES]
    if args.match:
        pats = [m.strip() for m in args.match.split(",") if m.strip()]
        specs = [sp for sp in specs if any(m in sp.name for m in pats)]
    if not specs:
        print("no layer left to run (check --family, --match)", file=sys.stderr)
        return 2
    numpy_passes = {"both": PASSES, "fwd": ("fwd",), "none": ()}[args.numpy]
    if not (hasattr(cnnkit, "conv2d") and hasattr(cnnkit, "conv2d_backward")):
        print(f"this cnnkit ({cnnkit.__file__}) has no conv2d / conv2d_backward: nothing to "
              "benchmark", file=sys.stderr)
        return 1

    if args.threads is not None:
        cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()
    torch = import_torch(args.no_torch, threads)
    blas = _OpenBLAS()
    blas_threads0 = blas.threads()
    blas.set_threads(threads)
    try:
        return _run(args, torch, blas, threads, specs, layouts, passes, numpy_passes, batch,
                    reps, warmup, gemm_n, mib, argv)
    finally:
        if blas_threads0 is not None:
            blas.set_threads(blas_threads0)


def _run(args, torch, blas, threads, specs, layouts, passes, numpy_passes, batch, reps, warmup,
         gemm_n, mib, argv) -> int:
    extra = peer_header(torch)
    extra["numpy BLAS"] = blas.describe()
    header = machine_header(extra)
    md = args.markdown
    say = []   # header lines, printed in a code block with --markdown

    def emit(line=""):
        say.append(line)
        if not md:
            print(line)

    emit(header)
    if not args.no_check:
        bad = reference_check(torch, specs, layouts, numpy_passes)
        if bad:
            if md:
                print("```\n" + "\n".join(say) + "\n```")
            print("\nreference check FAILED (timings would be meaningless):")
            for b in bad:
                print("  " + b)
            return 1
        emit("reference check: every timed cnnkit call (conv2d and conv2d_backward, reuse and "
             f"fresh, {', '.join(layouts)}) and the NumPy baseline match "
             + ("torch (float64)" if torch is not None else "a NumPy float64 reference")
             + " on each layer's geometry at batch 2, at most 10x10 pixels")

    stream = stream_arrays(mib)
    kinds = ("copy", "copy_nt", "triad", "triad_nt")
    bw_start = memory_bandwidth(kinds, mib=mib, arrays=stream)
    gemm_start = gemm_peak(gemm_n)
    emit(f"STREAM at start (GB/s, {mib} MiB arrays, {threads} threads): "
         + ", ".join(f"{k} {bw_start[k]:.1f}" for k in kinds))
    emit(f"sgemm {gemm_n}^3 at start (numpy.matmul, OpenBLAS, {blas.threads() or '?'} threads): "
         f"best {max(gemm_start):.0f} GFLOP/s, median {np.median(gemm_start):.0f}")
    names = ", ".join(sp.name for sp in specs)
    emit(f"Layers (batch {batch}, float32, padding k//2, no bias): {names}; cnnkit layouts "
         f"{', '.join(layouts)}; passes {', '.join(passes)}; {reps} timed rounds after {warmup} "
         f"warm-up rounds; one STREAM probe of {args.probe_reps} reps per pass per round.")
    if args.quick:
        emit("--quick: a smoke run (small batch, small probe arrays); the numbers are not "
             "representative.")

    t_start = time.perf_counter()
    raw, rows = [], []
    for sp in specs:
        res = run_shape(torch, sp, layouts, passes, numpy_passes, stream, reps, warmup,
                        args.probe_reps, args.inner, QUICK_MAX_INNER if args.quick else MAX_INNER)
        raw.append(res)
        if max(res["inner"].values()) > 1:
            emit(f"  {sp.name}: " + ", ".join(f"{ps} {k}" for ps, k in res["inner"].items())
                 + " calls per timed sample")
    elapsed = time.perf_counter() - t_start
    bw_end = memory_bandwidth(kinds, mib=mib, arrays=stream)
    del stream
    gemm_end = gemm_peak(gemm_n)
    measured_peak = max(max(gemm_start), max(gemm_end))
    peak = args.peak_gflops if args.peak_gflops is not None else measured_peak
    for sp, res in zip(specs, raw):
        rows.extend(summarize(res, sp, layouts, peak))
    emit("STREAM at end (GB/s): " + ", ".join(f"{k} {bw_end[k]:.1f}" for k in kinds)
         + f"  [timing took {elapsed:.0f} s]")
    emit(f"sgemm {gemm_n}^3 at end: best {max(gemm_end):.0f} GFLOP/s, median "
         f"{np.median(gemm_end):.0f}")
    roofs = [b for res in raw for v in res["probe_gbs"].values() for b in v]
    if args.peak_gflops is not None:
        emit(f"Compute roof: {peak:.0f} GFLOP/s, given by --peak-gflops (the measured sgemm "
             f"peak was {measured_peak:.0f}).")
    else:
        emit(f"Compute roof: {peak:.0f} GFLOP/s, the best sgemm {gemm_n}^3 rate of the start "
             "and end probes: an achievable GEMM peak, not an FMA peak (typically about 15% "
             "below it), so a kernel can exceed 100% of roof on compute-bound rows.")
    emit(f"Memory roof: copy_nt (fwd) and triad_nt (bwd) probed every round "
         f"({min(roofs):.1f}-{max(roofs):.1f} GB/s in this run). Minimum bytes: fwd x+y+w, bwd "
         "x+dy+dx+w+dw; FLOPs: fwd 2*N*Cout*Ho*Wo*(Cin/g)*k^2, bwd 2x fwd. floor = max(bytes/BW, "
         "FLOPs/peak) per round; layers that fit in L3 can beat it. Passes marked +winograd "
         "(Winograd F(2x2, 3x3): 2.25x fewer multiplications) are counted at the direct "
         "algorithm's FLOPs, so their GFLOP/s are effective rates and can beat the compute floor.")
    emit("Columns: ms = median ±spread (interquartile range of the rounds over the median; a "
         f"target whose spread exceeds its margin reads '{NOISY}'); GFLOP/s, eff GB/s and % of "
         "roof are for reuse (out=); x torch = median over rounds of torch's faster layout / cnnkit; x numpy = NumPy im2col / cnnkit "
         "reuse" + ("" if "bwd" in numpy_passes or "bwd" not in passes
                    else " (forward only: the NumPy baseline's backward was not run, --numpy "
                         f"{args.numpy})") + ".")
    if torch is None:
        emit("torch not used: the torch columns show '-' and no target is judged.")
    if md:
        print("```\n" + "\n".join(say) + "\n```\n")
    print()
    print(render(rows, torch is not None, md))
    print()
    all_t = [(r, t) for r in rows for t in targets(r)]
    print(target_summary([t for _, t in all_t]))
    for r, t in all_t:
        if t[3] is False:
            print(f"  missed: {r['name']} {r['layout']} {r['row']}: {target_text([t])}")
    for r, t in all_t:
        if t[3] is None and t[1] is not None:
            print(f"  {NOISY}: {r['name']} {r['layout']} {r['row']}: {target_text([t])}")

    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "batch": batch, "reps": reps, "warmup": warmup,
               "probe_reps": args.probe_reps, "layouts": layouts, "passes": passes,
               "numpy_passes": list(numpy_passes), "stream_mib": mib,
               "stream_start_gbs": bw_start, "stream_end_gbs": bw_end,
               "gemm_size": gemm_n, "gemm_start_gflops": gemm_start,
               "gemm_end_gflops": gemm_end, "peak_gflops": peak,
               "peak_source": "--peak-gflops" if args.peak_gflops is not None else "sgemm",
               "shapes": SHAPES, "results": raw, "summary": rows,
               "targets": [{"name": r["name"], "layout": r["layout"], "row": r["row"],
                            "target": t[0], "value": t[1], "threshold": t[2], "met": t[3],
                            "spread": t[4]}
                           for r, t in all_t]}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
