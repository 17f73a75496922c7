"""Training-step benchmark: cnnkit's small CNNs against the identical PyTorch model on the CPU.

Run it as ``cnnkit bench train [options]`` or ``python benchmarks/bench_train.py [options]``;
``--help`` lists the options.

What is measured
----------------
One training step of :func:`cnnkit.models.resnext_small` and :func:`cnnkit.models.mobilenet_small`
(their default widths, ``norm="batch"``, 10 classes) on a fixed batch of 32x32x3 float32 images
(batch 64 by default): forward, softmax cross-entropy, backward, and one Adam step (lr 1e-3), in
four configurations:

* ``cnnkit NCHW`` and ``cnnkit NHWC``: the model built with that ``layout``, the input given in
  that layout; ``model.forward``, ``CrossEntropyLoss``, ``model.backward``,
  ``cnnkit.optim.Adam.step(model.gradients())`` (one fused call over all parameters).
* ``torch NCHW`` and ``torch CL``: a ``torch.nn`` twin of the same architecture (written out below,
  module for module, with the same module names), eager mode, in contiguous NCHW or
  ``channels_last`` (model and input converted); ``zero_grad(set_to_none=True)``, forward,
  ``torch.nn.CrossEntropyLoss``, ``backward``, ``torch.optim.Adam(fused=True)`` (``foreach=True``
  where this torch has no fused CPU Adam; the header says which).

All four start from the same weights: the cnnkit NCHW model's parameters are copied one to one into
the NHWC model and into the torch twin (``zip(parameters(), parameters())``, every shape asserted
equal). Before timing, one step of every configuration is checked against the torch twin in float64
(without torch, against ``cnnkit.bench._ref64.Ref64``, the same step in float64 NumPy; the two agree
to 1e-14): logits, loss and the logits after the Adam step elementwise within rtol 1e-3 (plus 1e-3
times the largest reference value), every parameter gradient within rtol 1e-3 of itself plus 1e-3
times the model's largest gradient (some gradients are zero in exact arithmetic, e.g. a batch norm
scale in front of a depthwise conv, and are rounding noise in every float32 implementation).
Gradients outside that are compared again after the ReLU kink flips they contain: a ReLU input
within float32 rounding of zero that the configuration put on the other side stops or lets through
one element's gradient, about 1e-3 of the largest at batch 64 (``_Kinks``, on ``Ref64``; the check
line names each flip). A cnnkit configuration outside that too stops the benchmark; a torch one is
printed as a note.

cnnkit, torch and numpy's OpenBLAS run at the same thread count (``--threads``, default 2). cnnkit's
step makes no numpy.matmul call: ``Linear`` runs on cnnkit's own GEMM (``_core.sgemm``).

Rounds, roofs and FLOPs
-----------------------
Each round runs one step of every configuration of every model, then a STREAM ``triad`` probe with
cnnkit's threads (odd rounds in reverse order, probe first; see
:func:`cnnkit.bench._common.run_rounds`). Tables show medians over the timed rounds; the speedup is
the median over rounds of (torch's faster configuration / cnnkit's faster configuration), both
chosen by median time. The compute roof is the best 2048^3 OpenBLAS sgemm rate measured at the
start and end of the run (an achievable GEMM peak, about 15% under the FMA peak).

FLOPs count convolutions and the linear layer only: forward 2*MACs; backward 2x forward (input
and weight gradients), except the first convolution, which computes no input gradient (1x).

The same rounds count the minor page faults each step takes (``getrusage``, every thread; a line
under each model's table). cnnkit's steps reuse their buffers and take none; torch allocates its
tensors every step, and its time moves with how many of those find memory already mapped. On the
development machine, its channels_last resnext_small step took about 16,600 faults and 76 ms in a
loop of that step alone, and about 1,800 and 52 ms right after its NCHW step; in these rounds,
where the other configurations' freed memory is reused, it took none (mobilenet_small's about
4,600).

Where the time goes
-------------------
After the timed rounds, profiling passes break a step down (``--breakdown fused,modules``, both
by default, the fused one first).

*The step as it runs (fused)*: :class:`KernelProfiler` leaves the model alone (timers on a
Conv2d or BatchNorm2d would turn its fusion off) and times what the layers call instead: every
compiled function of ``cnnkit._core``, the public functions of the ``cnnkit.ops`` submodules and
NumPy's elementwise glue, replaced where cnnkit's modules hold them for the duration of one step
and put back after it, also when it raises. Each call is attributed to the innermost module of
the model on the Python stack (the layer a fused chain is running, or the block whose glue makes
the call) and classified by the compiled function's name (:func:`kernel_kind`) and the fusion
flags of the ``cnnkit.ops`` call around it. Self times give the compiled kernels, the Python
inside ``cnnkit.ops`` and the NumPy glue per layer; the loss and the optimizer are whole phases;
the rest of the profiled step is untimed Python (the layers' and containers' own code, array
methods and operators), and the timers' own cost is measured and shown apart. A plain step of the
same configuration runs before every profiled one, so the table says how close the timed parts
come to the step without timers. The parts shown are those of the profiled step of median time,
so they add up to it (medians of each part over the steps need not: another process stalls a
different kernel in every step). Every part gets its roofline floor, ``max(FLOPs / sgemm peak,
bytes / best STREAM rate)``, with bytes = each array argument once (the traffic the call cannot
avoid; an activation small enough for the caches can beat the STREAM rate) and FLOPs for
convolutions (their layer's forward FLOPs per GEMM), ``_core.sgemm`` (``Linear``) and
``numpy.matmul``; Adam's floor is 28 bytes per parameter. The table also checks that fusion ran:
``cnnkit.ops.conv2d_fused`` calls per step against the Conv2d layers, and which implementation
each call ran (``cnnkit.ops.fused.last_kernel``).

*Per module, unfused, torch side by side*: a separate profiling pass runs a few more steps of
each configuration,
round-robin, with timers around every module (for cnnkit: the instance's ``forward``/``backward``
wrapped; for torch: forward pre/post hooks and full backward pre/post hooks, with the stem
convolution's backward ending at its weight's gradient accumulation, since its input needs no
gradient). Inclusive times give each module's *self* time: a block's self time is its glue (the
residual add, the shortcut's gradient sum, the Python around its children). Every figure is the
median over the profiled steps, so a step stalled by another process on the machine does not
skew the table. The table lists the layers of cnnkit's faster configuration beside the same
layers of torch's faster configuration, sorted by cnnkit's time. The timers cost a few
microseconds per call and torch's backward hooks add autograd nodes, so the profiled step is
slightly slower than the timed one (both are shown).
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
import time
import types
import warnings
from typing import Any

import numpy as np

try:
    import resource as _resource
except ImportError:  # (not POSIX: no page-fault counts)
    _resource = None  # type: ignore[assignment]

import cnnkit
from cnnkit import models as _models
from cnnkit import nn as _cnn
from cnnkit._validate import check_choice, check_int
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._ref64 import Ref64
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    Emitter,
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
    target_text,
    write_json,
)

__all__ = ["CONFIGS", "MODELS", "KernelProfiler", "build_torch_twin", "check_step", "copy_weights",
           "fused_summary", "kernel_kind", "main", "profile_configs", "profile_fused", "step_flops"]

MODELS = {"resnext": "resnext_small", "mobilenet": "mobilenet_small"}
CONFIGS = ("cnnkit NCHW", "cnnkit NHWC", "torch NCHW", "torch CL")
CNNKIT_CONFIGS = CONFIGS[:2]
TORCH_CONFIGS = CONFIGS[2:]
IMAGE = (3, 32, 32)            # C, H, W
NUM_CLASSES = 10
LR = 1e-3
BATCH = 64
QUICK_BATCH = 8
TARGET = 2.0                   # issue: at least 2x PyTorch's faster configuration
BREAKDOWNS = ("fused", "modules")
RTOL = 1e-3
PROBE_KIND = "triad"
#: the check's kink analysis (_Kinks): a ReLU input within KINK_DELTA times its site's rms of
#: zero may be on either side in float32; at most KINK_MAX float64 backwards try candidates
KINK_DELTA = 2.0 ** -16
KINK_MAX = 32


# ---- the torch twins -----------------------------------------------------------------------------
def _torch_classes(torch):
    """torch.nn modules that mirror cnnkit.nn's blocks, with cnnkit's module names."""
    tnn = torch.nn

    class BNReLU(tnn.BatchNorm2d):
        """cnnkit ``BatchNorm2d(activation="relu")``: batch norm, then ReLU."""

        def forward(self, x):
            return torch.relu(super().forward(x))

    class Bottleneck(tnn.Module):
        """cnnkit ``BottleneckBlock`` (norm="batch"): conv1x1-BN-ReLU, grouped conv3x3(stride)-BN-
        ReLU, conv1x1-BN, plus the shortcut (conv1x1(stride)-BN when the shape changes), ReLU."""

        def __init__(self, cin, cout, width, stride, groups):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = BNReLU(width)
            self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = BNReLU(width)
            self.conv3 = tnn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            # shortcut first, as cnnkit does (its autograd nodes then run after the main branch's)
            r = x if self.downsample is None else self.downsample(x)
            h = self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
            return torch.relu(self.bn3(h) + r)

    class GlobalAvgPool(tnn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    return BNReLU, Bottleneck, GlobalAvgPool


def _torch_resnext_small(torch, in_channels=3, num_classes=10, widths=(32, 64, 128),
                         blocks=(1, 1, 1), groups=8):
    """cnnkit.models.resnext_small (norm="batch") in torch.nn, layer for layer."""
    BNReLU, Bottleneck, GAP = _torch_classes(torch)
    tnn = torch.nn
    layers = [tnn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), BNReLU(widths[0])]
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        inner = max(groups, (w // 2) // groups * groups)
        for j in range(n):
            layers.append(Bottleneck(c, w, inner, 2 if (i > 0 and j == 0) else 1, groups))
            c = w
    layers += [GAP(), tnn.Linear(c, num_classes)]
    return tnn.Sequential(*layers)


def _torch_mobilenet_small(torch, in_channels=3, num_classes=10, widths=(32, 64, 128, 256)):
    """cnnkit.models.mobilenet_small (norm="batch") in torch.nn, layer for layer."""
    BNReLU, _, GAP = _torch_classes(torch)
    tnn = torch.nn
    layers = [tnn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), BNReLU(widths[0])]
    c = widths[0]
    for i, w in enumerate(widths[1:]):
        stride = 2 if i % 2 == 1 else 1
        layers += [tnn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), BNReLU(c),
                   tnn.Conv2d(c, w, 1, bias=False), BNReLU(w)]
        c = w
    layers += [GAP(), tnn.Linear(c, num_classes)]
    return tnn.Sequential(*layers)


def build_torch_twin(torch: Any, model: str) -> Any:
    """The torch.nn twin of ``cnnkit.models.<MODELS[model]>()`` (default arguments).

    Parameters
    ----------
    torch : module
        The imported ``torch`` package.
    model : str
        ``"resnext"`` or ``"mobilenet"`` (the keys of :data:`MODELS`).

    Returns
    -------
    torch.nn.Sequential
        The same layers as the cnnkit model, in the same order, with torch's default
        initialisation (:func:`copy_weights` makes the weights equal).

    Raises
    ------
    ValueError
        ``model`` is not one of the two.
    """
    if model == "resnext":
        return _torch_resnext_small(torch)
    if model == "mobilenet":
        return _torch_mobilenet_small(torch)
    raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {model!r}")


def copy_weights(torch: Any, cnn: Any, twin: Any) -> int:
    """Copy cnnkit's parameters into the torch twin one to one.

    Parameters
    ----------
    torch : module
        The imported ``torch`` package.
    cnn : cnnkit.nn.Module
        The source model; its :meth:`~cnnkit.nn.Module.parameters` in order.
    twin : torch.nn.Module
        The destination, with the same parameters in the same order
        (:func:`build_torch_twin`); written in place under ``torch.no_grad()``.

    Returns
    -------
    int
        The number of parameter arrays copied.

    Raises
    ------
    ValueError
        The two parameter lists differ in length or in a shape (all checked before anything is
        copied: nothing is written then).
    """
    cp, tp = cnn.parameters(), list(twin.parameters())
    if len(cp) != len(tp):
        raise ValueError(f"cnnkit has {len(cp)} parameter arrays, the torch twin {len(tp)}")
    names = [n for n, _ in cnn.named_parameters()]
    tnames = [n for n, _ in twin.named_parameters()]
    for i, (a, t) in enumerate(zip(cp, tp)):  # (every shape checked before anything is written)
        if tuple(a.shape) != tuple(t.shape):
            raise ValueError(f"parameter {i} ({names[i]} / {tnames[i]}): cnnkit shape "
                             f"{a.shape}, torch shape {tuple(t.shape)}")
    with torch.no_grad():
        for a, t in zip(cp, tp):
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return len(cp)


# ---- configurations ------------------------------------------------------------------------------
class _CnnkitStep:
    """One cnnkit training configuration: model, loss, Adam, the batch in its layout."""

    def __init__(self, model, layout, x_nchw, labels):
        self.model, self.layout = model, layout
        self.x = np.ascontiguousarray(x_nchw if layout == "NCHW" else x_nchw.transpose(0, 2, 3, 1))
        self.labels = labels
        self.loss = _cnn.CrossEntropyLoss()
        self.opt = cnnkit.optim.Adam(model.parameters(), lr=LR)
        self.grads = model.gradients()

    def __call__(self):
        logits = self.model.forward(self.x)
        self.loss.forward(logits, self.labels)
        self.model.backward(self.loss.backward())
        self.opt.step(self.grads)

    def phases(self, clock):
        """One step, with ``clock(name)`` called at the end of each phase."""
        logits = self.model.forward(self.x)
        clock("forward")
        self.loss.forward(logits, self.labels)
        g = self.loss.backward()
        clock("loss")
        self.model.backward(g)
        clock("backward")
        self.opt.step(self.grads)
        clock("optimizer")


class _TorchStep:
    """One torch training configuration: twin model (NCHW or channels_last), loss, Adam."""

    def __init__(self, torch, twin, channels_last, x_nchw, labels, adam_kw):
        self.torch = torch
        self.model = twin
        x = torch.from_numpy(np.ascontiguousarray(x_nchw))
        if channels_last:
            self.model = twin.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        self.y = torch.from_numpy(labels.astype(np.int64))
        self.crit = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, **adam_kw)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.crit(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()

    def phases(self, clock):
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(self.x)
        clock("forward")
        loss = self.crit(logits, self.y)
        clock("loss")
        loss.backward()
        clock("backward")
        self.opt.step()
        clock("optimizer")


def torch_adam_kwargs(torch) -> tuple:
    """(kwargs, description) for torch's Adam: fused=True if this torch has a fused CPU Adam,
    else foreach=True."""
    try:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.ones(4)
        torch.optim.Adam([p], lr=LR, fused=True).step()
        return {"fused": True}, "torch.optim.Adam(fused=True)"
    except (RuntimeError, TypeError, ValueError) as e:
        return {"foreach": True}, (f"torch.optim.Adam(foreach=True) (fused=True is not supported "
                                   f"on CPU here: {e})")


def build_configs(torch: Any, model: str, batch: int, seed: int = 0) -> dict:
    """The four configurations of ``model`` on one fixed batch, all from the same weights.

    Parameters
    ----------
    torch : module or None
        The imported ``torch`` package; None: the two cnnkit configurations only.
    model : str
        ``"resnext"`` or ``"mobilenet"`` (the keys of :data:`MODELS`).
    batch : int
        Images in the batch (>= 1), each ``IMAGE`` (3x32x32) float32, with class labels.
    seed : int, optional
        Seed of the weights (the batch uses ``seed + 100``).

    Returns
    -------
    dict
        ``"steps"``: config name -> callable running one training step (``"cnnkit NCHW"``,
        ``"cnnkit NHWC"``, and with torch ``"torch NCHW"``, ``"torch CL"``); ``"cnnkit"``: layout
        -> model; ``"x"``, ``"labels"``: the batch; ``"adam"``: torch's Adam description (None
        without torch); ``"params"``, ``"param_arrays"``: the parameter count and arrays.

    Raises
    ------
    ValueError
        ``model`` is not one of the two, or ``batch`` is below 1.
    TypeError
        ``batch`` is not an integer.
    """
    check_choice("model", model, tuple(MODELS))
    check_int("batch", batch, 1, "a positive int")
    builder = getattr(_models, MODELS[model])
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((batch,) + IMAGE, dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int64)
    m_nchw = builder(num_classes=NUM_CLASSES, layout="NCHW", seed=seed)
    m_nhwc = builder(num_classes=NUM_CLASSES, layout="NHWC", seed=seed)
    pa, pb = m_nchw.arena[0], m_nhwc.arena[0]
    if pa.shape != pb.shape:
        raise ValueError(f"the NCHW and NHWC cnnkit models differ in size: {pa.size} vs {pb.size}")
    pb[...] = pa
    steps: dict[str, Any] = {"cnnkit NCHW": _CnnkitStep(m_nchw, "NCHW", x, labels),
             "cnnkit NHWC": _CnnkitStep(m_nhwc, "NHWC", x, labels)}
    out = {"steps": steps, "cnnkit": {"NCHW": m_nchw, "NHWC": m_nhwc}, "x": x, "labels": labels,
           "adam": None, "params": m_nchw.num_parameters(), "param_arrays": len(m_nchw.parameters())}
    if torch is not None:
        kw, desc = torch_adam_kwargs(torch)
        twin = build_torch_twin(torch, model)
        copy_weights(torch, m_nchw, twin)
        twin_cl = copy.deepcopy(twin)
        steps["torch NCHW"] = _TorchStep(torch, twin, False, x, labels, kw)
        steps["torch CL"] = _TorchStep(torch, twin_cl, True, x, labels, kw)
        out["adam"] = desc
    return out


class CpuShare:
    """CPU time used by *other* processes (and stolen by the hypervisor) while it was open:
    /proc/stat's busy time minus this process's own, per second of wall time, in cores."""

    def __init__(self):
        self._start = self._read()
        self._t0 = time.perf_counter()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])     # utime + stime, all threads
        except (OSError, ValueError, IndexError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        return sum(v[:8]) - idle - steal, steal, own

    def cores(self):
        """(other processes' cores, stolen cores) since creation; None where unreadable."""
        end = self._read()
        if end is None or self._start is None:
            return None
        import os
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return None
        busy = end[0] - self._start[0]
        own = end[2] - self._start[2]
        return max(busy - own, 0) / hz / wall, (end[1] - self._start[1]) / hz / wall


def _minor_faults() -> int | None:
    """The process's minor page faults so far (``getrusage``, every thread), or None where the
    ``resource`` module is missing (not POSIX)."""
    if _resource is None:
        return None
    return int(_resource.getrusage(_resource.RUSAGE_SELF).ru_minflt)


class _FaultCounter:
    """A step callable that also records the minor page faults each call takes (``faults``, one
    entry per call; empty where :func:`_minor_faults` is None)."""

    def __init__(self, fn):
        self.fn = fn
        self.faults: list[int] = []

    def __call__(self):
        f0 = _minor_faults()
        out = self.fn()
        f1 = _minor_faults()
        if f0 is not None and f1 is not None:
            self.faults.append(f1 - f0)
        return out


def _faults_text(faults: dict) -> str | None:
    """The line under a model's table: the median minor page faults per step of each
    configuration (``faults`` maps a configuration to its per-round counts)."""
    parts = [f"{c} {int(np.median(v)):,}" for c, v in faults.items() if v]
    if not parts:
        return None
    return ("Minor page faults per step (median over the timed rounds): " + ", ".join(parts)
            + ". A fresh page costs about 1.5 us to fault in, so a step that allocates its "
            "tensors anew (torch) moves with the process's allocator state.")


def _share_text(c, what):
    """A line on the other processes' CPU use ``c`` (from :meth:`CpuShare.cores`)."""
    if c is None:
        return None
    other, steal = c
    text = (f"other processes used {other:.2f} cores (hypervisor steal {steal:.2f}) during "
            f"{what}")
    if other + steal > 0.15:
        text = ("WARNING: " + text + ": they compete with this run's threads, so times are "
                "inflated and noisy (a thread descheduled inside a parallel region stalls it "
                "for a scheduler tick)")
    return text


# ---- the check before timing ---------------------------------------------------------------------
def _observe(step, cfg, torch):
    """One training step of ``step`` (mutates its model), returning what the check compares:
    logits, loss, parameter gradients (NCHW/OIHW arrays), logits after the Adam step."""
    if cfg.startswith("cnnkit"):
        m = step.model
        logits = m.forward(step.x).copy()
        loss = step.loss.forward(logits, step.labels)
        m.backward(step.loss.backward())
        grads = [g.copy() for g in step.grads]
        step.opt.step(step.grads)
        after = m.forward(step.x).copy()
        return logits, float(loss), grads, after
    step.opt.zero_grad(set_to_none=True)
    out = step.model(step.x)
    loss = step.crit(out, step.y)
    loss.backward()
    grads = [p.grad.detach().contiguous().numpy().copy() for p in step.model.parameters()]
    step.opt.step()
    with torch.no_grad():
        after = step.model(step.x).numpy().copy()
    return out.detach().numpy().copy(), float(loss.detach()), grads, after


def _err(got, ref, scale=None):
    """max |got - ref| / scale (scale: max |ref| unless given); inf on a shape mismatch or a
    non-finite value."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return float("inf")
    if scale is None:
        scale = float(np.abs(ref).max()) if ref.size else 1.0
    return float(np.abs(got - ref).max() / (scale or 1.0)) if ref.size else 0.0


def _allclose(got, ref, scale, rtol=RTOL):
    """Every element within rtol*|ref| + rtol*scale."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return bool(got.shape == ref.shape and np.all(np.isfinite(got))
                and np.all(np.abs(got - ref) <= rtol * (np.abs(ref) + scale)))


def reference_step(torch: Any, cfgs: dict, adam_kw: dict) -> Any:
    """A float64 copy of the torch twin (NCHW) at the starting weights, as a training step.

    Parameters
    ----------
    torch : module
        The imported ``torch`` package.
    cfgs : dict
        From :func:`build_configs` with torch (its ``"torch NCHW"`` step, batch and labels).
    adam_kw : dict
        torch.optim.Adam's keyword arguments (:func:`torch_adam_kwargs`); dropped if torch
        refuses them for float64.

    Returns
    -------
    callable
        One float64 training step of the twin on the batch (its ``model`` attribute the twin).
    """
    twin = copy.deepcopy(cfgs["steps"]["torch NCHW"].model).double()
    try:
        return _TorchStep(torch, twin, False, cfgs["x"].astype(np.float64), cfgs["labels"],
                          adam_kw)
    except RuntimeError:
        return _TorchStep(torch, twin, False, cfgs["x"].astype(np.float64), cfgs["labels"], {})


class _Kinks:
    """ReLU kinks of the float64 reference step (:class:`cnnkit.bench._ref64.Ref64`), and which
    of them a configuration's float32 step put on the other side.

    A ReLU's gradient jumps where its input crosses zero. An input within float32 rounding of zero
    (``|pre| <= KINK_DELTA`` times its site's rms) may land on either side in a float32 step, and
    the gradient that reaches it then goes through or stops: a *kink flip*, one element's whole
    gradient added to or taken from the batch norm's bias gradient of its channel, and spread by
    that norm over the channel's input gradient. At batch 64 one flip moves a gradient by about
    1e-3 of the model's largest (resnext_small: 0.0017), beyond the check's rtol, in any float32
    implementation (torch channels_last's steps show it too).

    :meth:`explain` tells such a step from a wrong one. From the sites nearest the loss down, a
    kink is a candidate where the configuration's gradient error holds its flip's signature whole:
    the error of that norm's bias gradient in the kink's channel within half of ``+-dy`` (the
    gradient reaching the kink, added where the reference's mask is 0, taken where it is 1). Each
    candidate's exact effect on every gradient (a float64 backward with that one mask flipped) is
    subtracted from the error only where the error contains it whole (coefficient 1 +- 0.25); at
    most KINK_MAX backwards. The configuration passes if what is left is within the check's
    tolerance."""

    def __init__(self, ref64: Any, cfgs: dict):
        self.ref = ref64
        self.x = cfgs["x"]
        self.labels = cfgs["labels"]
        self.g0: list | None = None
        self.logits: np.ndarray | None = None
        self.loss = 0.0
        #: the kinks, from the sites nearest the loss down: (site, index, float64 input, the flip's
        #: change of its norm's bias gradient, that gradient's index in the parameter list)
        self.kinks: list[tuple] = []
        self.cache: dict[tuple, list] = {}

    def _base(self) -> list:
        """The reference gradients (the first call runs the float64 step and finds the kinks)."""
        if self.g0 is None:
            self.ref.flip = {}
            self.logits, self.loss = self.ref.forward(self.x, self.labels)
            self.g0 = self.ref.backward()
            for k in range(len(self.ref.sites) - 1, -1, -1):
                site = self.ref.sites[k]
                if site.dy is None:
                    continue
                pre, dy = site.pre, site.dy
                rms = float(np.sqrt(np.mean(np.square(pre)))) if pre.size else 0.0
                bias = self.ref.names.index(site.biases[0])
                for idx in np.argwhere((np.abs(pre) <= KINK_DELTA * rms) & (dy != 0)):
                    i = tuple(int(v) for v in idx)
                    e = float(dy[i] if pre[i] <= 0 else -dy[i])  # flipped: dy let through, or stopped
                    self.kinks.append((k, i, float(pre[i]), e, bias))
        return self.g0

    def _effect(self, site: int, idx: tuple) -> list:
        """What flipping the mask of ``site`` at ``idx`` does to every gradient (cached)."""
        key = (site, idx)
        if key not in self.cache:
            g0 = self._base()
            f = np.zeros(self.ref.sites[site].pre.shape, bool)
            f[idx] = True
            self.ref.flip = {site: f}
            try:
                g = self.ref.backward()
            finally:
                self.ref.flip = {}
            self.cache[key] = [a - b for a, b in zip(g, g0)]
        return self.cache[key]

    def explain(self, got: list, gscale: float) -> tuple[list, list]:
        """(the kinks whose flips ``got`` holds: (site, index, float64 input), the reference
        gradients plus their effects), ``got`` a configuration's gradients (``Ref64.names``
        order)."""
        g0 = self._base()
        r = [np.asarray(a, np.float64) - b for a, b in zip(got, g0)]
        chosen: list = []
        tried = 0
        for k, i, pre, e, bias in self.kinks:
            if abs(e) < 0.05 * RTOL * gscale or abs(r[bias][i[1]] - e) > 0.5 * abs(e):
                continue
            if tried == KINK_MAX:
                break
            tried += 1
            v = self._effect(k, i)
            vv = sum(float(np.vdot(a, a)) for a in v)
            c = sum(float(np.vdot(a, b)) for a, b in zip(r, v)) / vv if vv else 0.0
            if 0.75 <= c <= 1.25:
                r = [a - b for a, b in zip(r, v)]
                chosen.append((k, i, pre))
        # the reference plus the chosen effects: what got is, less the error they leave
        return chosen, [np.asarray(a, np.float64) - b for a, b in zip(got, r)]

    def after_adam(self, grads: list) -> np.ndarray:
        """The float64 logits after Adam's first step with ``grads`` from the starting weights."""
        self._base()
        return self.ref.after_adam(grads, self.x, self.labels, LR)

    def describe(self, flips: list) -> str:
        """Where the flipped kinks are: module, (n, c, h, w), the float64 input there."""
        return "; ".join(f"{self.ref.sites[k].where} at {i}, {p:.1e} in float64" for k, i, p in flips)


def _grad_worst(w: dict) -> str:
    """A check entry's gradient error as printed: with kink flips, the error after them too."""
    if not w.get("kink flips"):
        return f"{w['gradients']:.1g}"
    k = w["kink flips"]
    return f"{w['gradients']:.1g} ({w['gradients after the flips']:.1g} after {k} kink flip{'s' * (k > 1)})"


def check_step(torch, cfgs: dict, adam_kw=None) -> tuple:
    """One training step of every configuration against a float64 reference: the torch twin in
    float64, or without torch :class:`cnnkit.bench._ref64.Ref64` (NumPy; the two agree to 1e-14).
    Each model takes that step; the timed steps start from there.

    Logits, loss and the logits after the Adam step must agree elementwise within
    rtol*(|ref| + max|ref|) (rtol 1e-3); the gradients within rtol*(|ref| + the largest gradient
    of the model), since some are zero in exact arithmetic (a batch-norm scale in front of a
    depthwise conv: the next batch norm cancels any per-channel scale) and are rounding noise in
    float32 in every implementation, torch's included.

    Gradients outside that are compared again against the reference plus the effects of the ReLU
    kink flips they hold (:class:`_Kinks`): a configuration whose rounding put a ReLU input within
    float32 rounding of zero on the other side passes with those flips named (and the logits after
    its Adam step compared against Adam's step from the same gradients in float64); one whose
    error is anything else fails.

    Parameters
    ----------
    torch : module or None
        PyTorch, or None (the NumPy reference then, and no torch configurations).
    cfgs : dict
        What :func:`build_configs` returns; every configuration's model takes the step.
    adam_kw : dict, optional
        torch.optim.Adam's keyword arguments for the torch configurations (:func:`torch_adam_kwargs`).

    Returns
    -------
    tuple
        (cnnkit failures, torch failures, {config: {what: worst error}}, reference name); an
        error is max |diff| / max |ref| (logits) or / the largest gradient (gradients). A
        configuration explained by kink flips has "kink flips" (the count), "gradients after the
        flips" (its error against the adjusted reference) and "kinks" (where) in its entry."""
    steps = cfgs["steps"]
    kinks = _Kinks(Ref64(cfgs["cnnkit"]["NCHW"]), cfgs)      # the starting weights, copied now
    if torch is not None and "torch NCHW" in steps:
        ref_name = "torch NCHW float64"
        ref = _observe(reference_step(torch, cfgs, adam_kw or {}), "torch", torch)
    else:
        ref_name = "float64 NumPy reference"
        g = kinks._base()
        ref = (kinks.logits, kinks.loss, g, kinks.after_adam(g))
    names = list(steps)
    pnames = [n for n, _ in cfgs["cnnkit"]["NCHW"].named_parameters()]
    gscale = max(float(np.abs(g).max()) for g in ref[2])
    bad: dict[str, list[Any]] = {"cnnkit": [], "torch": []}
    worst = {}
    for c in names:
        got = _observe(steps[c], c, torch)
        side = bad["cnnkit" if c.startswith("cnnkit") else "torch"]
        w: dict[str, Any] = {}
        fails = []
        for what, i in (("logits", 0), ("loss", 1), ("logits after the Adam step", 3)):
            a, b = np.asarray(got[i]), np.asarray(ref[i])
            w[what] = _err(a, b)
            if not _allclose(a, b, float(np.abs(b).max())):
                fails.append((what, f"{c}: {what} differ from {ref_name} (max |diff| / max |ref| = "
                                    f"{w[what]:.2g})"))
        w["gradients"] = max(_err(a, b, gscale) for a, b in zip(got[2], ref[2]))
        for i, (a, b) in enumerate(zip(got[2], ref[2])):
            if not _allclose(a, b, gscale):
                fails.append(("gradients", f"{c}: gradient of {pnames[i]} differs from {ref_name} "
                                           f"(max |diff| / largest gradient = {_err(a, b, gscale):.2g})"))
        whats = {f[0] for f in fails}
        if "gradients" in whats and not whats & {"logits", "loss"}:
            flips, adj = kinks.explain(got[2], gscale)
            ok = bool(flips) and all(_allclose(a, b, gscale) for a, b in zip(got[2], adj))
            if ok and "logits after the Adam step" in whats:
                after = kinks.after_adam(adj)
                ok = _allclose(got[3], after, float(np.abs(after).max()))
            if ok:
                w["kink flips"] = len(flips)
                w["gradients after the flips"] = max(_err(a, b, gscale) for a, b in zip(got[2], adj))
                w["kinks"] = kinks.describe(flips)
                fails = []
        side += [f[1] for f in fails]
        worst[c] = w
    return bad["cnnkit"], bad["torch"], worst, ref_name


# ---- layer shapes and FLOPs ----------------------------------------------------------------------
def _leaves(model):
    return [(n, m) for n, m in model.named_modules() if n and not m.children()]


def layer_shapes(model, x) -> dict:
    """The input and output shapes of every leaf module, from one forward pass.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The network; its leaves' ``forward`` is wrapped for the pass and restored after it.
    x : ndarray
        A batch the model takes.

    Returns
    -------
    dict
        ``{name: (input shape, output shape)}`` for every leaf module, by its qualified name.
    """
    shapes, saved = {}, []
    for name, m in _leaves(model):
        def fwd(*a, _f=m.forward, _n=name, **k):
            y = _f(*a, **k)
            shapes[_n] = (tuple(a[0].shape), tuple(y.shape))
            return y
        m.forward = fwd
        saved.append(m)
    try:
        model.forward(x)
    finally:
        for m in saved:
            del m.forward
    return shapes


def _spatial(shape, layout):
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def describe(model, shapes, layout) -> dict:
    """Describe every leaf module of a model for the per-layer breakdown.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model whose leaf modules are described.
    shapes : dict
        ``{name: (input shape, output shape)}`` of the leaves, as :func:`layer_shapes` returns.
    layout : str
        ``"NCHW"`` or ``"NHWC"``: how the shapes' spatial axes are read.

    Returns
    -------
    dict
        ``{name: (short description, forward FLOPs, backward FLOPs, kind)}``; the backward
        counts twice the forward (input and weight gradients), the first parametrised layer's
        once (no input gradient).
    """
    out = {}
    leaves = _leaves(model)
    first_param = next((n for n, m in leaves if m._param_names), None)
    for name, m in leaves:
        xs, ys = shapes.get(name, (None, None))
        kind = type(m).__name__
        fwd = 0.0
        if isinstance(m, _cnn.Conv2d) and xs is not None:
            kh, kw = m.kernel_size
            ho, wo = _spatial(ys, layout)
            h, _ = _spatial(xs, layout)
            fwd = 2.0 * ys[0] * m.out_channels * ho * wo * (m.in_channels // m.groups) * kh * kw
            g = (" dw" if m.groups == m.in_channels and m.groups > 1
                 else (f" g{m.groups}" if m.groups > 1 else ""))
            s = f" s{m.stride}" if m.stride != 1 else ""
            text = f"conv {kh}x{kw}{g} {m.in_channels}->{m.out_channels}{s} @{h}"
            kind = f"conv {kh}x{kw}{g}{s}"
        elif isinstance(m, _cnn.Linear) and xs is not None:
            fwd = 2.0 * xs[0] * m.in_features * m.out_features
            text = f"linear {m.in_features}->{m.out_features}"
            kind = "linear"
        elif isinstance(m, _cnn.BatchNorm2d) and xs is not None:
            h, _ = _spatial(xs, layout)
            act = "+relu" if m.activation == "relu" else ""
            res = "+add" if name.endswith("bn3") else ""
            text = f"bn{res}{act} {m.num_features} @{h}"
            kind = "batch norm (+relu, +add)"
        elif isinstance(m, _cnn.GlobalAvgPool2d) and xs is not None:
            h, _ = _spatial(xs, layout)
            text = kind = "global avg pool"
            text = f"global avg pool @{h}"
        else:
            text = kind
        bwd = fwd if name == first_param else 2.0 * fwd   # the first layer: no input gradient
        out[name] = (text, fwd, bwd, kind)
    return out


def step_flops(desc: dict) -> tuple:
    """The FLOPs of one training step from a :func:`describe` table.

    Parameters
    ----------
    desc : dict
        ``{name: (description, forward FLOPs, backward FLOPs, kind)}``.

    Returns
    -------
    tuple of float
        ``(forward FLOPs, backward FLOPs)`` summed over the layers.
    """
    f = sum(v[1] for v in desc.values())
    b = sum(v[2] for v in desc.values())
    return f, b


# ---- profiling passes ----------------------------------------------------------------------------
class _Tally:
    """Nested inclusive timers: self time = inclusive - children's inclusive."""

    def __init__(self):
        self.incl = {}      # (name, pass) -> seconds
        self.child = {}     # (name, pass) -> seconds spent in timed children
        self.stack = []

    def push(self, key):
        self.stack.append((key, time.perf_counter()))

    def pop(self):
        key, t0 = self.stack.pop()
        dt = time.perf_counter() - t0
        self.incl[key] = self.incl.get(key, 0.0) + dt
        if self.stack:
            pk = self.stack[-1][0]
            self.child[pk] = self.child.get(pk, 0.0) + dt

    def self_times(self):
        return {k: v - self.child.get(k, 0.0) for k, v in self.incl.items()}


def _phase_clock(acc):
    t = [time.perf_counter()]

    def clock(name):
        now = time.perf_counter()
        acc[name] = acc.get(name, 0.0) + now - t[0]
        t[0] = now
    return clock


def instrument_cnnkit(model, tally: _Tally):
    """Time every module of a cnnkit model: its ``forward`` and ``backward`` wrapped (as instance
    attributes) in ``tally``'s timers.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model; every named submodule (not the model itself) is wrapped.
    tally : _Tally
        The self-time accumulator the wrappers push and pop ``(name, "fwd" | "bwd")`` on.

    Returns
    -------
    callable
        ``remove()``: deletes the wrappers, so the modules' class methods apply again.
    """
    def timed(f, key):
        def call(*a, **k):
            tally.push(key)
            try:
                return f(*a, **k)
            finally:
                tally.pop()
        return call

    wrapped = []
    for name, m in model.named_modules():
        if not name:
            continue
        m.forward, m.backward = timed(m.forward, (name, "fwd")), timed(m.backward, (name, "bwd"))
        wrapped.append(m)

    def remove():
        for m in wrapped:
            del m.forward, m.backward
    return remove


def instrument_torch(model, tally: _Tally):
    """Time every module of a torch model with hooks: forward pre/post hooks, full backward
    pre/post hooks.

    A module whose inputs need no gradient (the stem conv) gets its full backward hook as soon as
    its output gradient arrives, so its backward ends when the gradient of its last parameter is
    accumulated (a post-accumulate-grad hook on each of its parameters).

    Parameters
    ----------
    model : torch.nn.Module
        The model; every named submodule (not the model itself) is hooked.
    tally : _Tally
        The self-time accumulator the hooks push and pop ``(name, "fwd" | "bwd")`` on.

    Returns
    -------
    callable
        ``remove()``: removes every hook.
    """
    handles = []
    open_bwd = {}

    def on_fwd_pre(name):
        return lambda mod, inp: tally.push((name, "fwd"))

    def on_fwd_post(name):
        return lambda mod, inp, out: tally.pop()

    def on_bwd_pre(name):
        def hook(mod, grad_output):
            tally.push((name, "bwd"))
        return hook

    def on_bwd_post(name):
        def hook(mod, grad_input, grad_output):
            n_params = len(list(mod.parameters(recurse=False)))
            if all(g is None for g in grad_input) and n_params:
                open_bwd[name] = n_params
            else:
                tally.pop()
        return hook

    def on_acc(name):
        def hook(p):
            if name in open_bwd:
                open_bwd[name] -= 1
                if open_bwd[name] <= 0:
                    del open_bwd[name]
                    tally.pop()
        return hook

    for name, m in model.named_modules():
        if not name:
            continue
        handles += [m.register_forward_pre_hook(on_fwd_pre(name)),
                    m.register_forward_hook(on_fwd_post(name)),
                    m.register_full_backward_pre_hook(on_bwd_pre(name)),
                    m.register_full_backward_hook(on_bwd_post(name))]
        for p in m.parameters(recurse=False):
            handles.append(p.register_post_accumulate_grad_hook(on_acc(name)))

    def remove():
        for h in handles:
            h.remove()
    return remove


def profile_configs(torch, steps: dict, nsteps: int) -> dict:
    """Per-module self times and per-phase times of every configuration in ``steps``, over
    ``nsteps`` profiled steps run round-robin (one step of each configuration in turn, after one
    untimed step each), with timers on every module for this pass only.

    Parameters
    ----------
    torch : module or None
        The imported torch (for the torch configurations' hooks), or None without torch.
    steps : dict
        ``{config: step}``, the steps ``build_configs`` made (each with its ``model``).
    nsteps : int
        Profiled steps per configuration.

    Returns
    -------
    dict
        ``{config: {"steps", "step_ms", "phases_ms", "layers": {name: {"fwd", "bwd"}}}}``: the
        median over the profiled steps (ms per step) of each figure.
    """
    tallies, removers = {}, []
    for c, st in steps.items():
        tallies[c] = _Tally()
        removers.append(instrument_cnnkit(st.model, tallies[c]) if c.startswith("cnnkit")
                        else instrument_torch(st.model, tallies[c]))
    per_step: dict[str, list[Any]] = {c: [] for c in steps}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for c, st in steps.items():
                st()
            for _ in range(nsteps):
                for c, st in steps.items():
                    tally = tallies[c]
                    tally.incl.clear()
                    tally.child.clear()
                    tally.stack.clear()
                    phases: dict[str, Any] = {}
                    clock = _phase_clock(phases)
                    t0 = time.perf_counter()
                    st.phases(clock)
                    total = time.perf_counter() - t0
                    per_step[c].append((tally.self_times(), phases, total))
    finally:
        for r in removers:
            r()
    out = {}
    for c, rec in per_step.items():
        keys = {k for selft, _, _ in rec for k in selft}
        layers: dict[str, Any] = {}
        for name, pas in keys:
            layers.setdefault(name, {"fwd": 0.0, "bwd": 0.0})[pas] = 1e3 * med(
                [selft.get((name, pas), 0.0) for selft, _, _ in rec])
        pnames = {k for _, ph, _ in rec for k in ph}
        out[c] = {"steps": nsteps, "step_ms": 1e3 * med([t for _, _, t in rec]),
                  "step_ms_all": [1e3 * t for _, _, t in rec],
                  "phases_ms": {k: 1e3 * med([ph.get(k, 0.0) for _, ph, _ in rec])
                                for k in ("forward", "loss", "backward", "optimizer")
                                if k in pnames},
                  "layers": layers}
    return out


# ---- the fused step's breakdown: timers on the kernels, the layers left alone --------------------
#: Kind of a compiled ``cnnkit._core`` function, by its name: the first pattern that matches.
#: Every callable of the module is timed (a kernel added later too); one that matches none is
#: "other compiled (name)".
KERNEL_KINDS = (
    (r"^conv.*fused.*(backward_input|dgrad)", "conv input grad, fused"),
    (r"^conv.*fused.*(backward_weight|wgrad)", "conv weight grad, fused"),
    (r"^conv.*(fused.*backward|backward.*fused)", "conv bwd, fused"),
    (r"^conv.*fused", "conv fwd, fused"),
    (r"^conv.*(backward_input|dgrad)", "conv input grad"),
    (r"^conv.*(backward_weight|wgrad)", "conv weight grad"),
    (r"^conv.*(forward|fwd)", "conv fwd"),
    (r"^conv_backward$", "conv input + weight grad"),
    (r"^norm_stats", "bn statistics"),
    (r"^norm_apply", "bn apply"),
    (r"^norm_affine_pool", "bn apply + global avg pool"),
    (r"^norm_backward_reduce", "bn bwd reduce"),
    (r"^norm_backward_apply", "bn bwd apply"),
    (r"^norm_", "bn small (per-channel finishing: statistics, running statistics, coefficients)"),
    (r"pool", "pooling"),
    (r"softmax|xent", "loss kernel"),
    (r"gemm", "sgemm"),
)
#: NumPy functions timed as glue, besides every ufunc of the ``numpy`` namespace (``np.add``,
#: ``np.maximum``, ``np.matmul``, ...). Array methods and operators (``a.astype``, ``a * b``) cannot
#: be wrapped: their time stays in the untimed Python remainder.
NUMPY_GLUE = ("where", "copyto", "ascontiguousarray", "empty", "empty_like", "zeros",
              "zeros_like", "ones", "full", "sum", "mean", "max", "min", "any", "all", "take",
              "concatenate", "stack", "einsum", "dot", "tensordot")
_NUMPY_ALLOC = ("empty", "empty_like", "zeros", "zeros_like")    # no bytes moved by the call
#: Adam's compulsory traffic per float32 parameter: read p, g, m, v; write p, m, v
ADAM_BYTES_PER_PARAM = 7 * 4
_PHASES = ("forward", "loss", "backward", "optimizer")
_PASS = {"forward": "fwd", "backward": "bwd", "loss": "loss", "optimizer": "optimizer"}


def kernel_kind(name: str) -> str:
    """The kind of work a compiled ``cnnkit._core`` function does, from its name.

    Parameters
    ----------
    name : str
        The attribute name in ``cnnkit._core`` (``"conv2d_fused"``, ``"norm_apply"``, ...).

    Returns
    -------
    str
        The first :data:`KERNEL_KINDS` match, else ``"other compiled (<name>)"``.

    Examples
    --------
    >>> from cnnkit.bench.train import kernel_kind
    >>> kernel_kind("conv_backward_weight"), kernel_kind("conv2d_fused_backward")
    ('conv weight grad', 'conv bwd, fused')
    >>> kernel_kind("conv_backward")
    'conv input + weight grad'
    >>> kernel_kind("conv2d_fused_backward_weight"), kernel_kind("conv2d_fused")
    ('conv weight grad, fused', 'conv fwd, fused')
    >>> kernel_kind("norm_backward_reduce"), kernel_kind("stream_run")
    ('bn bwd reduce', 'other compiled (stream_run)')
    """
    for pattern, kind in KERNEL_KINDS:
        if re.search(pattern, name):
            return kind
    return f"other compiled ({name})"


def _op_tag(name: str, kw: dict) -> str:
    """``name(flags)`` of a ``cnnkit.ops`` call: the fusion flags it was given (keywords)."""
    flags = []
    if (kw.get("pre_scale") is not None or kw.get("pre_shift") is not None
            or kw.get("pre_relu")):
        flags.append("prologue")
    if kw.get("stats"):
        flags.append("stats")
    if kw.get("residual") is not None:
        flags.append("residual")
    if kw.get("post_relu") or kw.get("activation") == "relu":
        flags.append("relu")
    return f"{name}({'+'.join(flags)})" if flags else name


def _needs_count(needs: Any) -> int:
    """How many convolution GEMMs a backward's ``needs`` asks for (input/conv_input, weight)."""
    if needs is None:
        return 2
    needs = (needs,) if isinstance(needs, str) else tuple(needs)
    return int(any(n in needs for n in ("input", "conv_input"))) + int("weight" in needs)


class _TimedUfunc:
    """A ufunc's timed call; its attributes (``reduce``, ``at``, ``nin``, ...) are the ufunc's."""
    __slots__ = ("_ufunc", "_timed")

    def __init__(self, ufunc, timed):
        self._ufunc, self._timed = ufunc, timed

    def __call__(self, *a, **k):
        return self._timed(*a, **k)

    def __getattr__(self, name):
        return getattr(self._ufunc, name)


class _Call:
    """One open timed call: its kind, layer, the innermost op's tag and needs, children's time."""
    __slots__ = ("role", "name", "kind", "layer", "tag", "needs", "child")

    def __init__(self, role, name, kind, layer, tag, needs):
        self.role, self.name, self.kind, self.layer = role, name, kind, layer
        self.tag, self.needs, self.child = tag, needs, 0.0


class KernelProfiler:
    """Timers on the kernels a cnnkit training step calls, attributed to the running layer,
    without touching the model: fusion decisions see the layers exactly as in the timed step.

    While :meth:`run` executes a step, every callable of ``cnnkit._core`` (classes excepted) and
    every function in the ``__all__`` of the ``cnnkit.ops`` submodules are replaced, wherever a
    ``cnnkit`` module holds them, by a timer, and cnnkit's modules see, instead of ``numpy``, a
    copy of its namespace whose ufuncs and :data:`NUMPY_GLUE` functions are timed (numpy's own
    modules keep the real ones); the originals are put back when the step ends, also when it
    raises. A call is attributed to the innermost module of ``model`` on the Python stack (the
    ``self`` of a method frame: the Conv2d or BatchNorm2d a fused chain is running, or the block
    whose glue makes the call), or to the step's phase outside the model (loss, optimizer), and to
    the forward or backward pass by the phase running. Nested timed calls give self times: a
    ``cnnkit.ops`` function's own time is its Python (checks, allocation, the work it does with
    array methods); a kernel's is the compiled code.

    Parameters
    ----------
    model : cnnkit.nn.Module
        The model whose step is profiled (its modules name the layers).
    desc : dict
        :func:`describe`'s ``{layer: (text, forward FLOPs, backward FLOPs, kind)}`` of the model;
        a convolution kernel's FLOPs are its layer's forward FLOPs per GEMM it computes.

    Notes
    -----
    Bytes moved per call: every array argument once (a NumPy call: its inputs and its result,
    so an in-place update counts read and write), the traffic a kernel cannot avoid; FLOPs:
    convolutions (layer forward FLOPs, times the number of gradients a fused backward computes)
    and ``numpy.matmul``. A timer costs about a microsecond plus a walk up the Python stack when
    the call is not inside another timed call; that instrumentation is timed separately.
    """

    def __init__(self, model: Any, desc: dict):
        self.model, self.desc = model, desc
        self.names = {id(m): (n or "(model)") for n, m in model.named_modules()}
        self.conv_layers = sum(1 for m in model.modules() if isinstance(m, _cnn.Conv2d))
        self.active = False
        self.phase = "forward"
        self._self_code: dict[Any, bool] = {}
        self._plan: list[tuple[Any, str, Any, Any]] = []
        self._build_plan()
        self._reset()

    # -- the replacements --------------------------------------------------------------------------
    def _wrap(self, f, role: str, name: str):
        prof = self

        def timed(*a, **k):
            if not prof.active:
                return f(*a, **k)
            return prof._call(f, role, name, a, k)
        timed.__name__ = getattr(f, "__name__", name)
        timed.__doc__ = getattr(f, "__doc__", None)
        timed.__wrapped__ = f  # type: ignore[attr-defined]
        return _TimedUfunc(f, timed) if isinstance(f, np.ufunc) else timed

    def _build_plan(self):
        from cnnkit import _core
        wraps: dict[int, tuple[Any, Any]] = {}     # id(original) -> (original, wrapper)

        def add(v, role, name):
            if id(v) not in wraps:
                wraps[id(v)] = (v, self._wrap(v, role, name))

        for n in dir(_core):
            v = getattr(_core, n)
            if not n.startswith("_") and callable(v) and not isinstance(v, type):
                add(v, "kernel", n)
        for mname, mod in list(sys.modules.items()):
            if mname.startswith("cnnkit.ops.") and mod is not None:
                for n in getattr(mod, "__all__", ()):
                    v = getattr(mod, n, None)
                    if callable(v) and not isinstance(v, type):
                        add(v, "op", n)
        fused = sys.modules.get("cnnkit.ops.fused")
        if fused is not None:  # the layers' direct runs of conv2d_fused's compiled kernel (Conv2d._forward)
            add(fused._compiled_forward, "op", "conv2d_fused")
        # NumPy: cnnkit's modules see a copy of the numpy namespace with timed glue functions
        # (numpy's own modules keep the real one: its internals use np.maximum.reduce & co.)
        proxy = types.ModuleType(np.__name__, np.__doc__)
        proxy.__dict__.update(vars(np))
        for n in dir(np):
            v = getattr(np, n, None)
            if isinstance(v, np.ufunc) or (n in NUMPY_GLUE and callable(v)):
                add(v, "numpy", getattr(v, "__name__", n) if isinstance(v, np.ufunc) else n)
                proxy.__dict__[n] = wraps[id(v)][1]
        wraps[id(np)] = (np, proxy)
        spaces = [mod for mname, mod in list(sys.modules.items()) if mod is not None
                  and (mname == "cnnkit" or mname.startswith("cnnkit.")) and mname != __name__]
        for mod in spaces:
            for attr, v in list(vars(mod).items()):
                w = wraps.get(id(v))
                if w is not None and w[0] is v:
                    self._plan.append((mod, attr, v, w[1]))

    def installed(self) -> bool:
        """Whether the timers are in place (only while :meth:`run` executes a step)."""
        return any(getattr(mod, attr) is w for mod, attr, _, w in self._plan)

    def originals(self) -> list[tuple[Any, str, Any]]:
        """``(module, attribute, original object)`` of every replacement the timers make."""
        return [(mod, attr, v) for mod, attr, v, _ in self._plan]

    # -- one timed call ----------------------------------------------------------------------------
    def _reset(self):
        self.stack: list[_Call] = []
        self.rec: dict[tuple, list] = {}          # (layer, pass, kind, shape, role) -> [s, calls, flops, bytes]
        self.overhead = {p: 0.0 for p in _PHASES}
        self.calls: dict[str, int] = {}
        self.fused_kernels: dict[str, int] = {}
        self.reference_layers: set[str] = set()

    def _resolve(self):
        """The innermost module of the model on the Python stack (by its methods' ``self``)."""
        f = sys._getframe(2)
        names, codes = self.names, self._self_code
        while f is not None:
            code = f.f_code
            has_self = codes.get(code)
            if has_self is None:
                has_self = codes[code] = code.co_argcount > 0 and code.co_varnames[0] == "self"
            if has_self:
                n = names.get(id(f.f_locals.get("self")))
                if n is not None:
                    return n
            f = f.f_back
        return None

    def _call(self, f, role, name, a, k):
        now = time.perf_counter
        t_in = now()
        stack = self.stack
        top = stack[-1] if stack else None
        layer = top.layer if top is not None else self._resolve()
        if layer is None:
            layer = f"[{self.phase}]"
        tag, needs = (top.tag, top.needs) if top is not None else (None, None)
        direct = role == "op" and getattr(f, "__name__", "") == "_compiled_forward"
        kw = k
        if direct:  # (x, w, y, geom, bias, pre_scale, pre_shift, pre_relu, residual, post_relu, stats)
            kw = dict(zip(("pre_scale", "pre_shift", "pre_relu", "residual", "post_relu", "stats"), a[5:11]))
        if role == "op":
            tag, needs = _op_tag(name, kw), kw.get("needs")
            kind = "Python in cnnkit.ops " + tag
        elif role == "kernel":
            kind = kernel_kind(name)
            with_weight = name == "conv2d_fused_backward_input" and (
                k.get("grad_weight") is not None or (len(a) > 13 and a[13] is not None))
            if with_weight:  # the weight gradient written by the same pass (Conv2d._weight_in_pass)
                kind = "conv input + weight grad, fused"
            if self.phase == "backward" and kind == "conv fwd, fused":
                # a forward pass that computes an input gradient: the adjoint (1x1) convolution
                # whose residual epilogue adds a shortcut's gradient (Conv2d._backward_add)
                kind = "conv input grad, fused (adjoint + shortcut)"
            kind += f" · {tag}" if tag else ""
        else:
            kind = f"NumPy {name}"
        call = _Call(role, name, kind, layer, tag, needs)
        phase = self.phase
        stack.append(call)
        t0 = now()
        r = None
        raised = True
        try:
            r = f(*a, **k)
            raised = False
            return r
        finally:
            t1 = now()
            stack.pop()
            if raised:   # e.g. a compiled kernel declining a combination: the fallback runs next
                kind += " (raised)"
            shape = next((x.shape for x in a if isinstance(x, np.ndarray)), ())
            key = (layer, _PASS[phase], kind, shape, "python" if role == "op" else role)
            rec = self.rec.get(key)
            if rec is None:
                rec = self.rec[key] = [0.0, 0, 0.0, 0]
            rec[0] += (t1 - t0) - call.child
            rec[1] += 1
            if role == "kernel":
                self.calls["_core." + name] = self.calls.get("_core." + name, 0) + 1
                rec[3] += 0 if raised else _arg_bytes(a, k, r, distinct=True)
                if kind.startswith("conv") and layer in self.desc and not raised:
                    mult = (_needs_count(needs) if kind.startswith("conv bwd, fused")
                            else 1 + (len(a) > 4 and a[4] is not None) if name == "conv_backward"  # (grad_weight)
                            else 2 if kind.startswith("conv input + weight grad") else 1)
                    rec[2] += mult * self.desc[layer][1]
                elif name == "sgemm" and not raised and len(a) >= 3:   # Linear's GEMMs: 2 M N K
                    ta = a[3] if len(a) > 3 else k.get("trans_a", False)
                    rec[2] += 2.0 * np.size(a[2]) * np.shape(a[0])[0 if ta else 1]
            elif role == "numpy":
                if name not in _NUMPY_ALLOC and not (
                        "out" not in k and any(r is x for x in a)):   # no copy made
                    rec[3] += _arg_bytes(a, k, r, distinct=False)
                if name == "matmul" and isinstance(r, np.ndarray) and a and np.ndim(a[0]):
                    rec[2] += 2.0 * r.size * np.shape(a[0])[-1]
            elif not (direct and (r is None or (top is not None and top.role == "op" and top.name == name))):
                # (a direct run counts as the call unless it declined, the public call following, or
                # runs inside conv2d_fused itself; conv2d_fused in the backward: an input gradient,
                # counted apart from the layers' forward calls)
                key = "ops." + name + (" in the backward" if phase == "backward" and name == "conv2d_fused" else "")
                self.calls[key] = self.calls.get(key, 0) + 1
                if name == "conv2d_fused" and phase != "backward":  # which implementation ran (ops.fused.last_kernel)
                    lk = str(getattr(sys.modules.get("cnnkit.ops.fused"), "last_kernel", "?"))
                    self.fused_kernels[lk] = self.fused_kernels.get(lk, 0) + 1
                    if lk == "reference":
                        self.reference_layers.add(layer)
            t2 = now()
            if stack:
                stack[-1].child += t2 - t_in
            self.overhead[phase] += (t0 - t_in) + (t2 - t1)

    # -- one profiled step -------------------------------------------------------------------------
    def run(self, step: Any) -> dict:
        """Run ``step.phases(clock)`` once with the timers in place, and remove them.

        Parameters
        ----------
        step : object
            A configuration of this benchmark (``_CnnkitStep``): its ``phases(clock)`` runs one
            training step and calls ``clock(phase)`` at the end of each phase.

        Returns
        -------
        dict
            ``"total_s"`` (the step), ``"phases_s"`` ({phase: s}), ``"rec"``
            ({(layer, pass, kind, shape, role): [self s, calls, FLOPs, bytes]}),
            ``"overhead_s"`` ({phase: s} spent in the timers), ``"calls"`` ({``_core`` or
            ``cnnkit.ops`` function: calls}), ``"fused_kernels"`` ({what ``conv2d_fused`` ran:
            calls}), ``"reference_layers"`` (the layers whose ``conv2d_fused`` call ran the
            reference path).
        """
        self._reset()
        phases: dict[str, float] = {}
        order = list(_PHASES)
        t = [0.0]

        def clock(name):
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - t[0]
            t[0] = now
            i = order.index(name) if name in order else -1
            self.phase = order[i + 1] if 0 <= i < len(order) - 1 else "optimizer"

        done: list[tuple[Any, str, Any]] = []
        try:
            for mod, attr, v, w in self._plan:
                setattr(mod, attr, w)
                done.append((mod, attr, v))
            self.phase = "forward"
            self.active = True
            t[0] = t0 = time.perf_counter()
            step.phases(clock)
            total = (t[0] if phases else time.perf_counter()) - t0   # the phases' sum
        finally:
            self.active = False
            for mod, attr, v in reversed(done):
                setattr(mod, attr, v)
            self.stack.clear()
        return {"total_s": total, "phases_s": phases, "rec": self.rec,
                "overhead_s": dict(self.overhead), "calls": dict(self.calls),
                "fused_kernels": dict(self.fused_kernels),
                "reference_layers": sorted(self.reference_layers)}


def _arg_bytes(a, k, r, distinct: bool) -> int:
    """Bytes of the array arguments and result of one call (``distinct``: each array once)."""
    seen: set[int] = set()
    n = 0
    for x in (*a, *k.values()):
        if isinstance(x, np.ndarray) and (not distinct or id(x) not in seen):
            seen.add(id(x))
            n += x.nbytes
    for x in (r if isinstance(r, tuple) else (r,)):
        if isinstance(x, np.ndarray) and (not distinct or id(x) not in seen):
            seen.add(id(x))
            n += x.nbytes
    return n


def profile_fused(steps: dict, nsteps: int, desc: dict) -> dict:
    """Kernel-level breakdown of the cnnkit configurations in ``steps`` as they run (fused),
    over ``nsteps`` profiled steps per configuration, round-robin, each after a plain step of the
    same configuration timed without the timers.

    Parameters
    ----------
    steps : dict
        ``{config: step}``, cnnkit configurations (see :func:`build_configs`).
    nsteps : int >= 1
        Profiled steps per configuration (after one untimed step with the timers on).
    desc : dict
        :func:`describe` of the model (layer names, what each layer is, forward FLOPs).

    Returns
    -------
    dict
        ``{config: {"steps", "median_step" (its index), "step_ms" (the profiled step of median
        time), "plain_step_ms" (the median plain step), "step_ms_all", "plain_step_ms_all",
        "phases_ms", "instrumentation_ms" ({phase: ms}), "records" (a list of {"layer", "pass",
        "kind", "shape", "role", "ms", "calls", "flops", "bytes"}: the self times of the median
        step, which add up to it),
        "calls" ({"_core.<name>" or "ops.<name>": calls per step}), "fused_kernels" ({what
        conv2d_fused ran: calls per step}), "reference_layers" (those whose conv2d_fused ran the
        reference path), "conv_layers", "params", "fusion_enabled"}}``.
    """
    profs = {c: KernelProfiler(st.model, desc) for c, st in steps.items()}
    runs: dict[str, list[Any]] = {c: [] for c in steps}
    for c, st in steps.items():
        profs[c].run(st)                        # warm-up, timers on (their caches filled)
    for _ in range(nsteps):
        for c, st in steps.items():
            t0 = time.perf_counter()
            st()
            plain = time.perf_counter() - t0
            runs[c].append((plain, profs[c].run(st)))
    out = {}
    for c, rr in runs.items():
        # the parts of one step, the profiled step of median time, so that they add up to it
        # (per-part medians over steps do not, when other processes stall a different kernel in
        # every step)
        totals = [r["total_s"] for _, r in rr]
        mid = sorted(range(len(rr)), key=totals.__getitem__)[(len(rr) - 1) // 2]
        run = rr[mid][1]
        records = []
        for (layer, pas, kind, shape, role), v in run["rec"].items():
            records.append({"layer": layer, "pass": pas, "kind": kind, "shape": list(shape),
                            "role": role, "ms": 1e3 * v[0], "calls": v[1], "flops": v[2],
                            "bytes": v[3]})
        records.sort(key=lambda d: -d["ms"])
        out[c] = {"steps": nsteps, "median_step": mid,
                  "step_ms": 1e3 * run["total_s"],
                  "plain_step_ms": 1e3 * med([p for p, _ in rr]),
                  "step_ms_all": [1e3 * t for t in totals],
                  "plain_step_ms_all": [1e3 * p for p, _ in rr],
                  "phases_ms": {k: 1e3 * run["phases_s"].get(k, 0.0) for k in _PHASES},
                  "instrumentation_ms": {k: 1e3 * run["overhead_s"][k] for k in _PHASES},
                  "records": records, "calls": run["calls"],
                  "fused_kernels": run["fused_kernels"],
                  "reference_layers": run["reference_layers"],
                  "conv_layers": profs[c].conv_layers,
                  "params": int(steps[c].model.num_parameters()),
                  "fusion_enabled": bool(_cnn.fusion_enabled())}
    return out


def fused_summary(prof: dict, peak_gflops: float, bw_gbs: float) -> dict:
    """Per-layer and per-kind rows of one configuration's :func:`profile_fused` result, with the
    roofline floor of every part (``max(FLOPs / peak, bytes / bandwidth)``).

    Parameters
    ----------
    prof : dict
        One configuration's entry of :func:`profile_fused`.
    peak_gflops : float
        The compute roof, GFLOP/s (the best sgemm rate).
    bw_gbs : float
        The memory roof, GB/s (the best STREAM rate).

    Returns
    -------
    dict
        ``"layers"``: rows {"layer", "fwd_ms", "bwd_ms", "ms", "kernel_ms", "numpy_ms",
        "python_ms", "flops", "bytes", "floor_ms"} of the forward and backward passes, by time;
        ``"kinds"``: rows {"kind", "calls", "ms", "flops", "bytes", "floor_ms", "bound"} of those
        passes, by time; ``"phases"``: {"loss", "optimizer"} rows with their floors;
        ``"untimed_ms"`` ({"forward", "backward"}: Python the timers do not see);
        ``"instrumentation_ms"``, ``"timed_ms"`` (kernels, NumPy, ops Python, loss and
        optimizer phases), ``"coverage"`` (timed / profiled step), ``"floor_ms"`` (the sum of
        every part's floor), ``"compute_floor_ms"`` (the FLOPs alone), and the fusion check
        ``"fused_calls"`` (in the forward), ``"fused_backward_calls"``, ``"fused_compiled"``,
        ``"conv_layers"``.
    """
    peak, bw = peak_gflops * 1e9, bw_gbs * 1e9

    def floor_ms(flops, nbytes):
        return 1e3 * max(flops / peak if peak else 0.0, nbytes / bw if bw else 0.0)

    layers: dict[str, dict] = {}
    kinds: dict[str, dict] = {}
    passes = {"fwd": 0.0, "bwd": 0.0}
    for r in prof["records"]:
        if r["pass"] not in passes:
            continue
        passes[r["pass"]] += r["ms"]
        fl = floor_ms(r["flops"], r["bytes"])
        d = layers.setdefault(r["layer"], {"layer": r["layer"], "fwd_ms": 0.0, "bwd_ms": 0.0,
                                           "ms": 0.0, "kernel_ms": 0.0, "numpy_ms": 0.0,
                                           "python_ms": 0.0, "flops": 0.0, "bytes": 0,
                                           "floor_ms": 0.0})
        d[r["pass"] + "_ms"] += r["ms"]
        d["ms"] += r["ms"]
        d[r["role"] + "_ms"] += r["ms"]
        d["flops"] += r["flops"]
        d["bytes"] += r["bytes"]
        d["floor_ms"] += fl
        k = kinds.setdefault(r["kind"], {"kind": r["kind"], "role": r["role"], "calls": 0,
                                         "ms": 0.0, "flops": 0.0, "bytes": 0, "floor_ms": 0.0})
        k["calls"] += r["calls"]
        k["ms"] += r["ms"]
        k["flops"] += r["flops"]
        k["bytes"] += r["bytes"]
        k["floor_ms"] += fl
    for k in kinds.values():
        fc = k["flops"] / peak if peak else 0.0
        fm = k["bytes"] / bw if bw else 0.0
        k["bound"] = "compute" if fc > fm else ("memory" if fm > 0 else "-")
    ph, inst = prof["phases_ms"], prof["instrumentation_ms"]
    loss_kernels = sum(r["ms"] for r in prof["records"] if r["pass"] == "loss")
    loss_floor = sum(floor_ms(r["flops"], r["bytes"]) for r in prof["records"]
                     if r["pass"] == "loss")
    adam_floor = floor_ms(0.0, ADAM_BYTES_PER_PARAM * prof["params"])
    # the loss and the optimizer: whole phases, less the timers' own cost in them
    phases = {"loss": {"ms": ph["loss"] - inst["loss"], "timed_kernels_ms": loss_kernels,
                       "floor_ms": loss_floor},
              "optimizer": {"ms": ph["optimizer"] - inst["optimizer"], "floor_ms": adam_floor,
                            "bytes": ADAM_BYTES_PER_PARAM * prof["params"]}}
    untimed = {"forward": ph["forward"] - passes["fwd"] - inst["forward"],
               "backward": ph["backward"] - passes["bwd"] - inst["backward"]}
    timed = passes["fwd"] + passes["bwd"] + phases["loss"]["ms"] + phases["optimizer"]["ms"]
    floor = (sum(d["floor_ms"] for d in layers.values()) + loss_floor + adam_floor)
    flops = sum(d["flops"] for d in layers.values())
    fused_calls = prof["calls"].get("ops.conv2d_fused", 0)
    fused_backward_calls = prof["calls"].get("ops.conv2d_fused in the backward", 0)
    fk = prof["fused_kernels"]
    return {"layers": sorted(layers.values(), key=lambda d: -d["ms"]),
            "kinds": sorted(kinds.values(), key=lambda d: -d["ms"]),
            "phases": phases, "untimed_ms": untimed,
            "instrumentation_ms": sum(inst.values()), "timed_ms": timed,
            "coverage": timed / prof["step_ms"] if prof["step_ms"] else None,
            "floor_ms": floor, "compute_floor_ms": 1e3 * flops / peak if peak else None,
            "kernel_ms": sum(d["kernel_ms"] for d in layers.values()),
            "numpy_ms": sum(d["numpy_ms"] for d in layers.values()),
            "python_ms": sum(d["python_ms"] for d in layers.values()),
            "fused_calls": fused_calls, "fused_backward_calls": fused_backward_calls,
            "fused_compiled": sum(v for k, v in fk.items() if k != "reference"),
            "fused_reference": fk.get("reference", 0),
            "conv_layers": prof["conv_layers"], "peak_gflops": peak_gflops, "bw_gbs": bw_gbs}


# ---- summaries and rendering ---------------------------------------------------------------------
def summarize(model, res, flops, peak) -> dict:
    """Per-configuration medians, the speedup over rounds and the target of one model.

    Parameters
    ----------
    model : str
        The model's name (a key of ``MODELS``).
    res : dict
        The timed rounds: ``{"times_s": {config: [seconds per step, ...]}, "batch": int}``.
    flops : float
        FLOPs of one step.
    peak : float or None
        The sgemm peak in GFLOP/s (for "% of sgemm peak"), or None.

    Returns
    -------
    dict
        ``rows`` (per configuration: ms, images/s, GFLOP/s, share of the peak, min-max spread and,
        with torch, the ratio to torch's faster configuration), ``best_cnnkit``, ``best_torch``,
        ``speedup`` (median over rounds of the two best's ratio) with its spread,
        ``speedup_of_medians``, ``target`` and ``met`` (None where not judged).
    """
    times = res["times_s"]
    batch = res["batch"]
    rows = {}
    for c, ts in times.items():
        m = med(ts)
        rows[c] = {"ms": 1e3 * m, "images_s": batch / m, "gflops": flops / m / 1e9,
                   "pct_peak": flops / m / 1e9 / peak if peak else None,
                   "spread": (1e3 * min(ts), 1e3 * max(ts))}
    ck = [c for c in CNNKIT_CONFIGS if c in times]
    tk = [c for c in TORCH_CONFIGS if c in times]
    best_c = min(ck, key=lambda c: rows[c]["ms"])
    best_t = min(tk, key=lambda c: rows[c]["ms"]) if tk else None
    s = {"model": model, "builder": MODELS[model], "rows": rows, "best_cnnkit": best_c,
         "best_torch": best_t, "speedup": None, "speedup_of_medians": None, "target": TARGET,
         "met": None}
    if best_t is not None:
        ratios = [a / b for a, b in zip(times[best_t], times[best_c])]
        s["speedup"] = med(ratios)
        s["speedup_spread"] = spread(ratios)
        s["speedup_of_medians"] = rows[best_t]["ms"] / rows[best_c]["ms"]
        # judged only when the rounds' spread is smaller than the margin to the target
        s["met"] = target("speedup", s["speedup"], TARGET, ratios)[3]
        for c, row in rows.items():
            row["x_torch_best"] = med([a / b for a, b in zip(times[best_t], times[c])])
    return s


def _table(head, body, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head, ["-" * w for w in widths]] + body)


def render_steps(s, markdown) -> str:
    """The per-configuration step table of one model's summary.

    Parameters
    ----------
    s : dict
        A model's summary: ``rows`` (per configuration: ms, spread, images/s, GFLOP/s, share of
        the sgemm peak, ratio to torch's best), ``best_cnnkit`` and ``best_torch``.
    markdown : bool
        A Markdown table, else aligned plain text.

    Returns
    -------
    str
        One row per configuration that ran, the faster cnnkit and torch ones starred.
    """
    head = ["config", "ms/step", "[min-max]", "images/s", "GFLOP/s", "% of sgemm peak",
            "x torch-best"]
    body = []
    for c in CONFIGS:
        r = s["rows"].get(c)
        if r is None:
            continue
        pct = "-" if r["pct_peak"] is None else f"{100 * r['pct_peak']:.1f}%"
        star = " *" if c in (s["best_cnnkit"], s["best_torch"]) else ""
        body.append([c + star, _f(r["ms"]), f"{_f(r['spread'][0])}-{_f(r['spread'][1])}",
                     _f(r["images_s"]), _f(r["gflops"]), pct,
                     _f(r.get("x_torch_best"))])
    return _table(head, body, markdown)


def breakdown_rows(desc, prof_c, prof_t, top):
    """The per-layer time breakdown of a profiled step, cnnkit's beside torch's.

    Parameters
    ----------
    desc : dict
        Layer name -> (description, forward FLOPs, backward FLOPs, kind).
    prof_c, prof_t : dict
        cnnkit's and torch's profiles (``step_ms``; ``layers``: name -> fwd and bwd ms); prof_t
        may be None.
    top : int
        Not used here: :func:`render_breakdown` shows the first ``top`` rows and sums the rest
        into one row.

    Returns
    -------
    list of dict
        A row per layer (name, what, kind, FLOPs, cnnkit fwd, bwd and total ms, share of the
        step, torch fwd, bwd and total ms, cnnkit GFLOP/s), sorted by cnnkit's total, largest
        first.
    """
    rows = []
    step_ms = prof_c["step_ms"]
    names = set(prof_c["layers"]) | (set(prof_t["layers"]) if prof_t else set())
    for n in names:
        c = prof_c["layers"].get(n, {"fwd": 0.0, "bwd": 0.0})
        t = prof_t["layers"].get(n) if prof_t else None
        if n in desc:
            what, ff, fb, kind = desc[n]
        else:
            what, ff, fb = "block glue (residual add, grad sum, Python)", 0.0, 0.0
            kind = "block glue"
        ctot = c["fwd"] + c["bwd"]
        rows.append({"name": n, "what": what, "kind": kind, "flops": ff + fb, "c_fwd": c["fwd"], "c_bwd": c["bwd"], "c_tot": ctot,
                     "pct": ctot / step_ms if step_ms else None,
                     "t_fwd": t["fwd"] if t else None, "t_bwd": t["bwd"] if t else None,
                     "t_tot": (t["fwd"] + t["bwd"]) if t else None,
                     "gflops": (ff + fb) / (ctot * 1e-3) / 1e9 if ctot > 0 and ff else None})
    rows.sort(key=lambda r: -r["c_tot"])
    return rows


def render_breakdown(rows, prof_c, prof_t, cfg_c, cfg_t, top, markdown) -> str:
    """The per-layer breakdown table of a profiled step, cnnkit's beside torch's.

    Parameters
    ----------
    rows : list of dict
        :func:`breakdown_rows`' rows, largest cnnkit total first.
    prof_c, prof_t : dict
        cnnkit's and torch's profiles (``step_ms``, ``phases_ms``); prof_t may be None.
    cfg_c, cfg_t : str
        The profiled configurations' names, for the column heads (cfg_t may be None).
    top : int
        Layers shown one a row; the rest are summed into one row.
    markdown : bool
        A Markdown table, else aligned plain text.

    Returns
    -------
    str
        The top layers, the rest's sum, the loss and optimizer phases, the time the layer timers
        do not see, and the whole profiled step.
    """
    def v(x):
        return "-" if x is None else _f(x)

    head = ["layer", "what", f"{cfg_c} fwd ms", "bwd ms", "total ms", "% of step",
            f"{cfg_t or 'torch'} fwd ms", "bwd ms", "total ms", "x torch", "cnnkit GFLOP/s"]
    body = []
    for r in rows[:top]:
        xt = (r["t_tot"] / r["c_tot"]) if (r["t_tot"] is not None and r["c_tot"] > 0) else None
        body.append([r["name"], r["what"], v(r["c_fwd"]), v(r["c_bwd"]), v(r["c_tot"]),
                     "-" if r["pct"] is None else f"{100 * r['pct']:.1f}%",
                     v(r["t_fwd"]), v(r["t_bwd"]), v(r["t_tot"]), v(xt), v(r["gflops"])])
    rest = rows[top:]
    if rest:
        ct = sum(r["c_tot"] for r in rest)
        tt = sum(r["t_tot"] or 0.0 for r in rest) if prof_t else None
        body.append([f"({len(rest)} more)", "", v(sum(r["c_fwd"] for r in rest)),
                     v(sum(r["c_bwd"] for r in rest)), v(ct),
                     f"{100 * ct / prof_c['step_ms']:.1f}%",
                     v(sum(r["t_fwd"] or 0.0 for r in rest) if prof_t else None),
                     v(sum(r["t_bwd"] or 0.0 for r in rest) if prof_t else None), v(tt),
                     v(tt / ct if (tt is not None and ct > 0) else None), "-"])
    # the phases: loss, optimizer, and what the module timers do not see
    pc, pt = prof_c["phases_ms"], (prof_t["phases_ms"] if prof_t else {})
    for ph, what in (("loss", "softmax cross-entropy fwd+bwd"), ("optimizer", "Adam step")):
        xt = pt.get(ph) / pc[ph] if (ph in pt and pc.get(ph)) else None
        body.append([f"[{ph}]", what, "", "", v(pc.get(ph)),
                     f"{100 * pc.get(ph, 0) / prof_c['step_ms']:.1f}%", "", "", v(pt.get(ph)),
                     v(xt), "-"])
    lay_c = sum(r["c_tot"] for r in rows)
    lay_t = sum(r["t_tot"] or 0.0 for r in rows) if prof_t else None
    other_c = pc.get("forward", 0) + pc.get("backward", 0) - lay_c
    other_t = (pt.get("forward", 0) + pt.get("backward", 0) - lay_t) if prof_t else None
    body.append(["[untimed]", "model loop, zero_grad, autograd engine", "", "", v(other_c),
                 f"{100 * other_c / prof_c['step_ms']:.1f}%", "", "", v(other_t), "-", "-"])
    body.append(["[step]", "profiled step (timers on)", v(pc.get("forward")),
                 v(pc.get("backward")), v(prof_c["step_ms"]), "100%",
                 v(pt.get("forward")), v(pt.get("backward")),
                 v(prof_t["step_ms"] if prof_t else None),
                 v(prof_t["step_ms"] / prof_c["step_ms"] if prof_t else None), "-"])
    return _table(head, body, markdown)


def render_kinds(rows, prof_c, prof_t, cfg_c, cfg_t, markdown) -> str:
    """The breakdown summed by kind of layer (1x1 convs, grouped 3x3, depthwise, batch norm,
    ...), sorted by cnnkit's time.

    Parameters
    ----------
    rows : list of dict
        :func:`breakdown_rows`' rows (each with its ``kind``).
    prof_c, prof_t : dict
        cnnkit's and torch's profiles (``step_ms``, ``phases_ms``); prof_t may be None.
    cfg_c, cfg_t : str
        The profiled configurations' names, for the column heads (cfg_t may be None).
    markdown : bool
        A Markdown table, else aligned plain text.

    Returns
    -------
    str
        A row per kind (layers, ms, share of the step, torch's ms and ratio, cnnkit GFLOP/s),
        then the loss and optimizer phases.
    """
    kinds: dict[str, Any] = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"n": 0, "c": 0.0, "t": 0.0, "flops": 0.0})
        k["n"] += 1
        k["c"] += r["c_tot"]
        k["t"] += r["t_tot"] or 0.0
        k["flops"] += r["flops"]
    step = prof_c["step_ms"]
    head = ["kind", "layers", f"{cfg_c} ms", "% of step", f"{cfg_t or 'torch'} ms", "x torch",
            "cnnkit GFLOP/s"]
    body = []
    for name, k in sorted(kinds.items(), key=lambda kv: -kv[1]["c"]):
        body.append([name, str(k["n"]), _f(k["c"]), f"{100 * k['c'] / step:.1f}%",
                     _f(k["t"]) if prof_t else "-",
                     _f(k["t"] / k["c"]) if (prof_t and k["c"] > 0) else "-",
                     _f(k["flops"] / (k["c"] * 1e-3) / 1e9) if k["flops"] and k["c"] > 0
                     else "-"])
    pc, pt = prof_c["phases_ms"], (prof_t["phases_ms"] if prof_t else {})
    for ph in ("loss", "optimizer"):
        body.append([f"[{ph}]", "", _f(pc.get(ph)), f"{100 * pc.get(ph, 0) / step:.1f}%",
                     _f(pt.get(ph)) if ph in pt else "-",
                     _f(pt[ph] / pc[ph]) if (ph in pt and pc.get(ph)) else "-", "-"])
    return _table(head, body, markdown)


def _what(layer: str, desc: dict) -> str:
    if layer in desc:
        return desc[layer][0]
    if layer == "(model)":
        return "the model's own code (outside its layers)"
    if layer.startswith("["):
        return "outside the model"
    return "block glue (residual add, shortcut gradient sum)"


def render_fused_layers(fs: dict, prof: dict, desc: dict, cfg: str, top: int,
                        markdown: bool) -> str:
    """The fused step's per-layer table: self times of the compiled kernels, the NumPy glue and
    the Python inside ``cnnkit.ops`` each layer runs, its roofline floor, then the phases and the
    untimed remainder, summing to the profiled step.

    Parameters
    ----------
    fs : dict
        :func:`fused_summary` of the profile (``layers``, ``phases``, ``untimed_ms``,
        ``instrumentation_ms`` and the step's kernel, NumPy, Python and floor times).
    prof : dict
        The profile itself (``step_ms``, ``plain_step_ms``, ``phases_ms``).
    desc : dict
        Layer name -> its :func:`describe` entry, whose first item fills the "what" column.
    cfg : str
        The profiled configuration's name, for the column heads.
    top : int
        Layers shown one a row; the rest are summed into one row.
    markdown : bool
        A Markdown table, else aligned plain text.

    Returns
    -------
    str
        The top layers, the rest's sum, the loss and optimizer phases, the untimed Python, the
        timers' own cost, the profiled step and the same step without timers.
    """
    def v(x):
        return "-" if x is None else _f(x)

    step = prof["step_ms"]

    def pct(x):
        return f"{100 * x / step:.1f}%" if step else "-"

    head = ["layer", "what", f"{cfg} fwd ms", "bwd ms", "total ms", "% of step", "kernels ms",
            "NumPy ms", "ops Python ms", "GFLOP/s", "floor ms", "x floor"]
    body = []
    rows = fs["layers"]
    for r in rows[:top]:
        body.append([r["layer"], _what(r["layer"], desc), v(r["fwd_ms"]), v(r["bwd_ms"]),
                     v(r["ms"]), pct(r["ms"]), v(r["kernel_ms"]), v(r["numpy_ms"]),
                     v(r["python_ms"]),
                     v(r["flops"] / (r["ms"] * 1e-3) / 1e9) if r["flops"] and r["ms"] > 0
                     else "-", v(r["floor_ms"]),
                     v(r["ms"] / r["floor_ms"]) if r["floor_ms"] > 0 else "-"])
    rest = rows[top:]
    if rest:
        ms = sum(r["ms"] for r in rest)
        fl = sum(r["floor_ms"] for r in rest)
        body.append([f"({len(rest)} more)", "", v(sum(r["fwd_ms"] for r in rest)),
                     v(sum(r["bwd_ms"] for r in rest)), v(ms), pct(ms),
                     v(sum(r["kernel_ms"] for r in rest)), v(sum(r["numpy_ms"] for r in rest)),
                     v(sum(r["python_ms"] for r in rest)), "-", v(fl),
                     v(ms / fl) if fl > 0 else "-"])
    ph = fs["phases"]
    body.append(["[loss]", "softmax cross-entropy fwd+bwd (whole phase)", "", "",
                 v(ph["loss"]["ms"]), pct(ph["loss"]["ms"]), v(ph["loss"]["timed_kernels_ms"]),
                 "", "", "-", v(ph["loss"]["floor_ms"]),
                 v(ph["loss"]["ms"] / ph["loss"]["floor_ms"]) if ph["loss"]["floor_ms"] else "-"])
    body.append(["[optimizer]", "Adam, one fused call (whole phase; floor: 28 B/parameter)", "",
                 "", v(ph["optimizer"]["ms"]), pct(ph["optimizer"]["ms"]), "", "", "", "-",
                 v(ph["optimizer"]["floor_ms"]),
                 v(ph["optimizer"]["ms"] / ph["optimizer"]["floor_ms"])
                 if ph["optimizer"]["floor_ms"] else "-"])
    un = fs["untimed_ms"]
    body.append(["[Python]", "untimed: layer and container code, array methods",
                 v(un["forward"]), v(un["backward"]), v(un["forward"] + un["backward"]),
                 pct(un["forward"] + un["backward"]), "", "", "", "-", "0", "-"])
    inst = fs["instrumentation_ms"]
    body.append(["[timers]", "the instrumentation itself (timers, stack walks)", "", "", v(inst),
                 pct(inst), "", "", "", "-", "0", "-"])
    pc = prof["phases_ms"]
    body.append(["[step]", "profiled step (timers on)", v(pc["forward"]), v(pc["backward"]),
                 v(step), "100%", v(fs["kernel_ms"]), v(fs["numpy_ms"]), v(fs["python_ms"]),
                 "-", v(fs["floor_ms"]), v(step / fs["floor_ms"]) if fs["floor_ms"] else "-"])
    plain = prof["plain_step_ms"]
    body.append(["[plain step]", "the same step without timers, same pass", "", "", v(plain),
                 "-", "", "", "", "-", v(fs["floor_ms"]),
                 v(plain / fs["floor_ms"]) if fs["floor_ms"] else "-"])
    return _table(head, body, markdown)


def render_fused_kinds(fs: dict, prof: dict, top: int, markdown: bool) -> str:
    """The fused step's time by kind of call (kernel, NumPy function, Python in an op), each
    with its FLOPs, bytes, rates and roofline floor; the forward and backward passes; the
    ``top`` kinds by time, then one row for the rest.

    Parameters
    ----------
    fs : dict
        :func:`fused_summary` of the profile (``kinds``, largest time first, and the step's totals).
    prof : dict
        The profile itself (``step_ms``).
    top : int
        Kinds shown one a row; the rest are summed into one row.
    markdown : bool
        A Markdown table, else aligned plain text.

    Returns
    -------
    str
        The table.
    """
    def v(x):
        return "-" if x is None else _f(x)

    step = prof["step_ms"]
    head = ["kind", "calls/step", "ms", "% of step", "GFLOP", "MB moved", "GFLOP/s", "GB/s",
            "floor ms", "bound", "x floor"]
    body = []
    kinds = list(fs["kinds"][:top])
    rest = fs["kinds"][top:]
    if rest:
        kinds.append({"kind": f"({len(rest)} more)", "calls": sum(k["calls"] for k in rest),
                      "ms": sum(k["ms"] for k in rest), "flops": sum(k["flops"] for k in rest),
                      "bytes": sum(k["bytes"] for k in rest),
                      "floor_ms": sum(k["floor_ms"] for k in rest), "bound": "-"})
    for k in kinds:
        s = k["ms"] * 1e-3
        body.append([k["kind"], str(k["calls"]), v(k["ms"]),
                     f"{100 * k['ms'] / step:.1f}%" if step else "-",
                     v(k["flops"] / 1e9) if k["flops"] else "-",
                     v(k["bytes"] / 1e6) if k["bytes"] else "-",
                     v(k["flops"] / s / 1e9) if (k["flops"] and s > 0) else "-",
                     v(k["bytes"] / s / 1e9) if (k["bytes"] and s > 0) else "-",
                     v(k["floor_ms"]) if k["floor_ms"] else "-", k["bound"],
                     v(k["ms"] / k["floor_ms"]) if k["floor_ms"] else "-"])
    return _table(head, body, markdown)


def fused_notes(fs: dict, prof: dict) -> list[str]:
    """The lines under the fused tables: the fusion check, the coverage, the roofline gap.

    Parameters
    ----------
    fs : dict
        :func:`fused_summary` of the profile (the fused call counts, the layers, the step's
        kernel, NumPy, Python and floor times).
    prof : dict
        The profile itself (``step_ms``, ``plain_step_ms``, ``fusion_enabled``,
        ``fused_kernels`` and, where some layers took it, ``reference_layers``).

    Returns
    -------
    list of str
        One line each, in the order they are printed.
    """
    step, plain = prof["step_ms"], prof["plain_step_ms"]
    fk = ", ".join(f"{k} {n}" for k, n in sorted(prof["fused_kernels"].items())) or "none"
    lines = [f"Fusion while profiling: cnnkit.nn.fusion "
             f"{'on' if prof['fusion_enabled'] else 'OFF'}; cnnkit.ops.conv2d_fused called "
             f"{fs['fused_calls']} times per step in the forward for {fs['conv_layers']} Conv2d layers "
             + (f"(and {fs['fused_backward_calls']} times in the backward: input gradients with a "
                f"shortcut's gradient added in the epilogue) " if fs.get("fused_backward_calls") else "")
             + f"(implementation per call, cnnkit.ops.fused.last_kernel: {fk}"
             + (f"; the reference path in {', '.join(prof['reference_layers'])}"
                if prof.get("reference_layers") else "")
             + "); compiled calls "
             "per step: " + ", ".join(f"{k[6:]} {n}" for k, n in sorted(prof["calls"].items())
                                      if k.startswith("_core.")) + "."]
    un = fs["untimed_ms"]["forward"] + fs["untimed_ms"]["backward"]
    ph = fs["phases"]
    lines.append(
        f"Coverage: the timed parts take {_f(fs['timed_ms'])} ms = "
        f"{100 * (fs['coverage'] or 0):.0f}% of the profiled step ({_f(step)} ms): compiled "
        f"kernels {_f(fs['kernel_ms'])}, NumPy glue {_f(fs['numpy_ms'])}, Python inside "
        f"cnnkit.ops {_f(fs['python_ms'])}, loss {_f(ph['loss']['ms'])} and optimizer "
        f"{_f(ph['optimizer']['ms'])} (whole phases); untimed Python overhead {_f(un)} ms, the "
        f"timers themselves {_f(fs['instrumentation_ms'])} ms. The plain step in the same pass: "
        f"{_f(plain)} ms (timed parts / plain step = "
        f"{100 * fs['timed_ms'] / plain:.0f}%)." if plain else "")
    floor = fs["floor_ms"]
    kernel_floor = sum(r["floor_ms"] for r in fs["layers"])
    kernel_gap = sum(r["ms"] for r in fs["layers"]) - kernel_floor
    lines.append(
        f"Roofline (sgemm peak {fs['peak_gflops']:.0f} GFLOP/s, best STREAM {fs['bw_gbs']:.1f} "
        f"GB/s): every timed call at its own floor (max(FLOPs / peak, bytes / bandwidth), the "
        f"data movement as it is now), the loss and Adam at theirs: {_f(floor)} ms "
        f"(the FLOPs alone {_f(fs['compute_floor_ms'])} ms). The plain step is {_f(plain)} ms = "
        f"{plain / floor:.1f}x that floor; left between them: layers above their floors "
        f"{_f(kernel_gap)} ms, loss and optimizer above theirs "
        f"{_f(ph['loss']['ms'] - ph['loss']['floor_ms'] + ph['optimizer']['ms'] - ph['optimizer']['floor_ms'])} ms, "
        f"untimed Python {_f(un)} ms." if floor and plain else "")
    return [ln for ln in lines if ln]


# ---- entry point ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench train",
        description="One training step (forward, cross-entropy, backward, Adam) of cnnkit's "
                    "resnext_small and mobilenet_small against the identical PyTorch model "
                    "(same weights, same threads, eager, NCHW and channels_last, fused Adam), "
                    "interleaved with STREAM probes; then a per-layer breakdown of where the "
                    "time goes.")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated subset of resnext,mobilenet (default both)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for cnnkit, torch and OpenBLAS (default 2)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"images per step (default {BATCH}; {QUICK_BATCH} with --quick)")
    p.add_argument("--repeats", "--reps", dest="reps", type=int, default=None,
                   help="timed rounds (default 9; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default 2; 1 with --quick)")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="steps per configuration in the per-layer profiling pass (default 5; 1 "
                        "with --quick; 0 skips the breakdown)")
    p.add_argument("--top", type=int, default=15,
                   help="layers shown in the breakdown table (default 15)")
    p.add_argument("--breakdown", default="fused,modules",
                   help="the breakdowns of the profiling pass, comma-separated: fused (timers on "
                        "the kernels, the step as it runs, fused; cnnkit only), modules (timers "
                        "on every module, which runs cnnkit's layers unfused, torch side by "
                        "side); default both")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: batch {QUICK_BATCH}, 1 round after 1 warm-up, 1 profiling "
                        "step, 64 MiB STREAM arrays, 512^3 sgemm probe; numbers not "
                        "representative")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if importable")
    p.add_argument("--no-check", action="store_true",
                   help="skip the one-step comparison of every configuration before timing")
    add_roof_args(p, quick_gemm=512)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the training-step benchmark (``cnnkit bench train``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench train --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    try:
        names = parse_list(args.models, tuple(MODELS), "--models", require=True)
        args.breakdown = parse_list(args.breakdown, BREAKDOWNS, "--breakdown")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    q = args.quick
    batch = args.batch if args.batch is not None else (QUICK_BATCH if q else BATCH)
    reps = args.reps if args.reps is not None else (1 if q else 9)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    psteps = args.profile_steps if args.profile_steps is not None else (1 if q else 5)
    gemm_n = args.gemm_size if args.gemm_size is not None else (512 if q else 2048)
    mib = args.stream_mib if args.stream_mib is not None else (64 if q else 256)
    if (batch < 1 or reps < 1 or warmup < 0 or psteps < 0 or args.threads < 1 or gemm_n < 1
            or mib < 1 or args.probe_reps < 1 or args.top < 1):
        print("--batch, --repeats, --threads, --gemm-size, --stream-mib, --probe-reps, --top must "
              "be >= 1; --warmup, --profile-steps >= 0", file=sys.stderr)
        return 2
    from cnnkit.bench.conv import _OpenBLAS

    cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()
    torch = import_torch(args.no_torch, threads)
    blas = _OpenBLAS()
    blas_threads0 = blas.threads()
    blas.set_threads(threads)
    try:
        return _run(args, torch, blas, threads, names, batch, reps, warmup, psteps, gemm_n, mib,
                    argv)
    finally:
        if blas_threads0 is not None:
            blas.set_threads(blas_threads0)


def _fused_breakdown(res, s, desc, n, steps, psteps, peak, bw, top, md) -> None:
    """Profile the cnnkit configurations of model ``n`` as they run (fused), print the tables of
    the faster one, and store everything in ``res`` (the model's JSON result)."""
    ck = {c: st for c, st in steps.items() if c in CNNKIT_CONFIGS}
    share = CpuShare()
    prof = profile_fused(ck, psteps, desc)
    res["other_cores_fused_profile"] = share.cores()
    pshare = _share_text(res["other_cores_fused_profile"], "this profiling pass")
    summ = {c: fused_summary(p, peak, bw) for c, p in prof.items()}
    res["fused_profile"] = prof
    res["fused_breakdown"] = summ
    cc = s["best_cnnkit"]
    p, fs = prof[cc], summ[cc]
    on = "fusion on" if p["fusion_enabled"] else "fusion OFF (cnnkit.nn.fusion(False))"
    print()
    title = (f"Where the time goes in the step as it runs ({on}), {MODELS[n]}, {cc} (kernel-level "
             f"profiling pass: {psteps} steps per cnnkit configuration, round-robin, each after "
             "a plain step; timers on the compiled kernels, the cnnkit.ops functions and NumPy's "
             "glue functions, attributed to the layer running; the layers themselves untouched, "
             "so fusion applies; self times in ms of the profiled step of median time, so the "
             "parts add up to it; floor = max(FLOPs / sgemm peak, "
             "bytes / STREAM), x floor = time / floor)")
    print(f"### {title}\n" if md else title)
    print(render_fused_layers(fs, p, desc, cc, top, md))
    print()
    head = f"By kind of call ({MODELS[n]}, {cc}, forward and backward, same profiling pass):"
    print(head + "\n" if md else head)
    print(render_fused_kinds(fs, p, top, md))
    print()
    for line in fused_notes(fs, p) + ([pshare[0].upper() + pshare[1:] + "."] if pshare else []):
        print(line + "\n" if md else line)


def _run(args, torch, blas, threads, names, batch, reps, warmup, psteps, gemm_n, mib,
         argv) -> int:
    from cnnkit.bench.conv import gemm_peak

    md = args.markdown
    extra = peer_header(torch)
    extra["numpy BLAS"] = blas.describe()
    header = machine_header(extra)
    emit = Emitter(md)
    flush_header = emit.flush

    emit(header)
    cfgs = {}
    for n in names:
        cfgs[n] = build_configs(torch, n, batch)
    adam = next((c["adam"] for c in cfgs.values() if c["adam"]), None)
    adam_kw = torch_adam_kwargs(torch)[0] if torch is not None else None
    emit(f"Step: forward, cross-entropy, backward, Adam (lr {LR:g}) on one fixed batch of {batch} "
         f"x {IMAGE[0]}x{IMAGE[1]}x{IMAGE[2]} float32 images, {NUM_CLASSES} classes; torch "
         f"eager, {adam or 'not run'}, zero_grad(set_to_none=True); cnnkit.optim.Adam, one "
         "fused call per step.")

    desc = {}
    for n in names:
        m = cfgs[n]["cnnkit"]["NCHW"]
        desc[n] = describe(m, layer_shapes(m, cfgs[n]["steps"]["cnnkit NCHW"].x), "NCHW")
    if not args.no_check:
        failures = []
        for n in names:
            bad, bad_torch, worst, ref = check_step(torch, cfgs[n], adam_kw)
            failures += [f"{n}: {b}" for b in bad]
            emit(f"check {MODELS[n]} (one step against {ref}; worst logits / gradients / "
                 "logits after Adam): "
                 + ", ".join(f"{c} {w['logits']:.1g} / {_grad_worst(w)} / "
                             f"{w['logits after the Adam step']:.1g}" for c, w in worst.items())
                 + (": every cnnkit configuration within rtol " f"{RTOL:g}" if not bad else ""))
            for c, w in worst.items():
                if w.get("kink flips"):
                    emit(f"  {c}: gradients within rtol {RTOL:g} of the reference with the ReLU mask "
                         f"flipped at {w['kinks']} (inputs within {KINK_DELTA:.1e} x their rms of "
                         "zero: float32 rounding may put them on either side)")
            for b in bad_torch:
                emit(f"  note, the torch peer itself: {b} (float32 rounding of torch, not judged)")
        if failures:
            flush_header()
            print("\ncheck FAILED (timings would be meaningless):")
            for b in failures:
                print("  " + b)
            return 1

    stream: Any = stream_arrays(mib)
    kinds = ("copy", "triad", "rw7")
    bw_start = memory_bandwidth(kinds, mib=mib, arrays=stream)
    gemm_start = gemm_peak(gemm_n)
    emit(f"STREAM at start (GB/s, {mib} MiB arrays, {threads} threads): "
         + ", ".join(f"{k} {bw_start[k]:.1f}" for k in kinds))
    emit(f"sgemm {gemm_n}^3 at start (numpy.matmul, OpenBLAS, {blas.threads() or '?'} threads): "
         f"best {max(gemm_start):.0f} GFLOP/s, median {np.median(gemm_start):.0f}")
    emit(f"{reps} timed rounds after {warmup} warm-up rounds; each round runs one step of every "
         f"configuration of {', '.join(MODELS[n] for n in names)}, then a STREAM {PROBE_KIND} "
         "probe (odd rounds reversed).")
    if args.quick:
        emit("--quick: a smoke run (small batch, one round); the numbers are not representative.")

    # (each step behind a counter of the page faults it takes: two getrusage calls a step)
    counters = [{c: _FaultCounter(f) for c, f in cfgs[n]["steps"].items()} for n in names]
    blocks: Any = [(counters[i], lambda: probe(PROBE_KIND, stream, args.probe_reps))
                   for i in range(len(names))]
    t0 = time.perf_counter()
    share = CpuShare()
    times, probes = run_rounds(blocks, reps, warmup)
    timed_share = share.cores()
    share_text = _share_text(timed_share, "the timed rounds")
    elapsed = time.perf_counter() - t0
    bw_end = memory_bandwidth(kinds, mib=mib, arrays=stream)
    stream = blocks = None   # free the probe arrays before the profiling pass
    gemm_end = gemm_peak(gemm_n)
    measured_peak = max(max(gemm_start), max(gemm_end))
    peak = args.peak_gflops if args.peak_gflops is not None else measured_peak
    emit("STREAM at end (GB/s): " + ", ".join(f"{k} {bw_end[k]:.1f}" for k in kinds)
         + f"; {PROBE_KIND} probes during the rounds "
         f"{min(min(p) for p in probes):.1f}-{max(max(p) for p in probes):.1f}"
         f"  [timing took {elapsed:.0f} s]")
    emit(f"sgemm {gemm_n}^3 at end: best {max(gemm_end):.0f} GFLOP/s, median "
         f"{np.median(gemm_end):.0f}. Compute roof used: {peak:.0f} GFLOP/s"
         + (" (--peak-gflops)" if args.peak_gflops is not None else " (best sgemm rate)") + ".")
    if share_text:
        emit(share_text)
    emit("FLOPs: convolutions and the linear layer, forward 2*MACs, backward 2x forward (the "
         "first conv 1x: no input gradient). x torch-best = median over rounds of torch's faster "
         "configuration's time / this configuration's time; * marks each side's faster one.")
    if torch is None:
        emit("torch not used: no ratio and no target is judged.")
    flush_header()

    results, summaries = [], []
    for i, n in enumerate(names):
        ff, fb = step_flops(desc[n])
        res = {"model": n, "builder": MODELS[n], "batch": batch, "params": cfgs[n]["params"],
               "flops_fwd": ff, "flops_bwd": fb, "times_s": times[i], "probe_gbs": probes[i],
               # the timed rounds' counts (the warm-up rounds' first)
               "minor_faults": {c: k.faults[-reps:] for c, k in counters[i].items()}}
        s = summarize(n, res, ff + fb, peak)
        results.append(res)
        summaries.append(s)
        print()
        title = (f"{MODELS[n]}: {cfgs[n]['params']:,} parameters, batch {batch}, "
                 f"{(ff + fb) / 1e9:.3g} GFLOP per step (forward {ff / 1e9:.3g})")
        print(f"### {title}\n" if md else title)
        print(render_steps(s, md))
        if s["speedup"] is not None:
            print()
            print(f"cnnkit best ({s['best_cnnkit']}) vs torch best ({s['best_torch']}): "
                  f"{s['speedup']:.2f}x faster (median over rounds; ratio of medians "
                  f"{s['speedup_of_medians']:.2f}x). "
                  + target_text([("speedup", s["speedup"], TARGET, s["met"],
                                  s.get("speedup_spread"))]))
        ftext = _faults_text(res["minor_faults"])
        if ftext:
            print()
            print(ftext)

    # the per-layer breakdowns, separate from the timed rounds
    bw_best = max(max(bw_start.values()), max(bw_end.values()))
    if psteps > 0:
        for i, n in enumerate(names):
            s = summaries[i]
            st = cfgs[n]["steps"]
            if "fused" in args.breakdown:
                _fused_breakdown(results[i], s, desc[n], n, st, psteps, peak, bw_best, args.top,
                                 md)
            if "modules" not in args.breakdown:
                continue
            share = CpuShare()
            prof = profile_configs(torch, st, psteps)
            results[i]["other_cores_profile"] = share.cores()
            pshare = _share_text(results[i]["other_cores_profile"], "this profiling pass")
            results[i]["profile"] = prof
            cc, tc = s["best_cnnkit"], s["best_torch"]
            rows = breakdown_rows(desc[n], prof[cc], prof.get(tc), args.top)
            results[i]["breakdown"] = rows
            print()
            title = (f"Where the time goes, {MODELS[n]} (profiling pass: {psteps} steps per "
                     f"configuration, round-robin, timers on every module; self times, median ms "
                     f"per step, sorted by {cc}; x torch = {tc or 'torch'} / {cc}; the timers wrap "
                     f"each layer, so cnnkit's layers run unfused here (cnnkit.nn.fusion applies only "
                     f"to layers that are not wrapped): this is the unfused path's breakdown)")
            print(f"### {title}\n" if md else title)
            print(render_breakdown(rows, prof[cc], prof.get(tc), cc, tc, args.top, md))
            print()
            print(f"By kind of layer ({MODELS[n]}, same profiling pass):\n" if md
                  else f"By kind of layer ({MODELS[n]}, same profiling pass):")
            print(render_kinds(rows, prof[cc], prof.get(tc), cc, tc, md))
            pc = prof[cc]["phases_ms"]
            print()
            print(f"{cc} phases (ms per profiled step): "
                  + ", ".join(f"{k} {_f(v)}" for k, v in pc.items())
                  + f"; timed median {_f(s['rows'][cc]['ms'])}. Other configurations, profiled "
                  "step ms: " + ", ".join(f"{c} {_f(p['step_ms'])}" for c, p in prof.items()
                                          if c != cc) + "."
                  + (f" {pshare[0].upper() + pshare[1:]}." if pshare else ""))

    print()
    measured = [s for s in summaries if s["met"] is not None]
    noisy = [s for s in summaries if s["met"] is None and s["speedup"] is not None]
    print(f"Targets met: {sum(1 for s in measured if s['met'])} of {len(measured)} judged "
          + (f"({len(noisy)} noisy, not judged: the rounds' spread exceeds the margin) "
             if noisy else "")
          + f"(cnnkit's faster configuration >= {TARGET:g}x torch's faster configuration).")
    for s in measured:
        if not s["met"]:
            print(f"  missed: {s['builder']}: {s['speedup']:.2f}x")
    for s in noisy:
        print(f"  noisy, not judged: {s['builder']}: "
              + target_text([("speedup", s["speedup"], TARGET, None, s["speedup_spread"])]))

    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "batch": batch, "reps": reps, "warmup": warmup,
               "profile_steps": psteps, "torch_adam": adam, "lr": LR,
               "stream_mib": mib, "stream_start_gbs": bw_start, "stream_end_gbs": bw_end,
               "probe_kind": PROBE_KIND, "gemm_size": gemm_n, "gemm_start_gflops": gemm_start,
               "gemm_end_gflops": gemm_end, "peak_gflops": peak, "stream_best_gbs": bw_best,
               "breakdowns": args.breakdown,
               "layers": {n: {k: list(v) for k, v in desc[n].items()} for n in names},
               "other_cores_timed_rounds": timed_share,
               "results": results, "summary": summaries}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
