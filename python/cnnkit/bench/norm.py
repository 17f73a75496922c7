"""Batch-norm and group-norm benchmark: cnnkit against PyTorch CPU on the same arrays.

Run it as ``cnnkit bench norm [options]`` or ``python benchmarks/bench_norm.py [options]``;
``--help`` lists the options.

What is measured
----------------
The ``batch_norm`` shapes of the project's shared benchmark shapes (ResNet/MobileNet activations,
float32), each in both of cnnkit's layouts, NCHW and NHWC:

* BN training forward (``batch_norm_train``, running statistics updated), inference forward
  (``batch_norm_infer``) and backward (``batch_norm_backward`` for x, weight and bias), each with
  and without a fused ReLU; and their sum, *train fwd+bwd*, the cost of one training step.
* Group norm (``group_norm``, 32 groups or C if C < 32) forward and backward.

Every cnnkit function is timed twice: with a fresh output per call, and with ``out=`` reused (one
buffer for y and one for grad_x per layout, as a training loop would keep). A function whose
signature has no ``out`` is timed fresh only.

The peer is ``torch.nn.functional`` at the same thread count, in NCHW (contiguous) and in
channels_last; every ratio is against torch's faster layout for that operation (by median).
Torch forwards run under ``no_grad``: ``F.batch_norm(training=True)`` with running statistics,
``F.batch_norm(training=False)``, ``F.group_norm``; ReLU is ``F.relu`` on the result. The torch
backward is ``torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True)`` on a graph built
once (for ReLU, the graph of ``F.relu(F.batch_norm(...))``), as in the machine baseline. Torch
outputs are fresh tensors (torch's default allocator; ``THP_MEM_ALLOC_ENABLE`` is printed).

Minimum bytes per element (float32), the roof they are measured against, and why
----------------------------------------------------------------------------------
* train forward: read x twice (statistics, then normalise: x is far past the caches) and write y,
  12 B; roof ``triad`` (read 2, write 1).
* inference forward: read x, write y, 8 B; roof ``copy`` (read 1, write 1).
* backward: read x and grad_out, write grad_x, 12 B; roof ``triad``.
* train fwd+bwd: 24 B; roof ``triad``.
* group norm forward: read x, write y, 8 B (one group of one sample fits in cache, so one read
  suffices); roof ``copy``. Backward as BN backward, 12 B, ``triad``.
* With a fused ReLU the backward also reads the forward output y for the mask: that traffic is
  not counted (the minimum bytes are those of BN alone, as in the machine baseline).

The roofs are the STREAM kernels with regular stores, measured by ``cnnkit._core.stream_run``
with cnnkit's threads on 256 MiB arrays. The non-temporal variants (``copy_nt``, ``triad_nt``) run
about 30% faster on this machine; they are printed at the start and end for reference.

Rounds
------
Per shape, every operation is a *block*: one call of each cnnkit variant (layout x fresh/out=)
and each torch layout, then a short STREAM probe of the block's roof kernel. One round runs every
block; odd rounds run them in reverse, probe first. This VM's bandwidth drifts by 1.5x between
minutes, so every ratio (% of roof, speedup over torch) is computed within a round and the tables
show the median over rounds; the millisecond columns are plain medians. The smallest shape is
timed as a loop of many calls per round (it is cache-resident and overhead-bound).
"""
from __future__ import annotations

import argparse
import gc
import inspect
import sys
import time
from typing import Any

import numpy as np

import cnnkit
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    NOISY,
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

__all__ = ["main", "SHAPES", "OPS", "ROWS", "reference_check"]

# The "batch_norm" entry of the project's shared benchmark shapes (kept identical here, so the
# benchmark runs from an installed package).
SHAPES: dict[str, Any] = {"columns": ["N", "C", "H", "W"],
          "shapes": [[32, 64, 112, 112], [32, 256, 56, 56], [32, 1024, 14, 14], [8, 32, 7, 7]]}
LARGE = (0, 1, 2)              # the shapes with DRAM-sized tensors: all targets apply
QUICK_MAX_BYTES = 64 << 20     # --quick: shapes whose x is at most this (the last two)
GN_GROUPS = 32                 # or C when C < 32
LAYOUTS = ("NCHW", "NHWC")
TORCH_LAYOUTS = ("NCHW", "CL")
MIN_CALL_ELEMS = 2_000_000     # shapes smaller than this loop several calls per timed sample
MAX_INNER = 256

# Timed blocks: key -> (label, min bytes per element, roof STREAM kernel, cnnkit function).
OPS = {
    "train": ("train fwd", 12, "triad", "batch_norm_train"),
    "train_relu": ("train fwd+ReLU", 12, "triad", "batch_norm_train"),
    "infer": ("infer fwd", 8, "copy", "batch_norm_infer"),
    "infer_relu": ("infer fwd+ReLU", 8, "copy", "batch_norm_infer"),
    "bwd": ("bwd", 12, "triad", "batch_norm_backward"),
    "bwd_relu": ("bwd (BN+ReLU)", 12, "triad", "batch_norm_backward"),
    "gn_fwd": ("GN fwd", 8, "copy", "group_norm"),
    "gn_bwd": ("GN bwd", 12, "triad", "group_norm_backward"),
}
# Derived rows: key -> (label, summed blocks).
SUMS = {
    "step": ("train fwd+bwd", ("train", "bwd")),
    "step_relu": ("train fwd+bwd +ReLU", ("train_relu", "bwd_relu")),
    "gn_step": ("GN fwd+bwd", ("gn_fwd", "gn_bwd")),
}
# --ops groups -> blocks
GROUPS = {"train": ("train", "train_relu"), "infer": ("infer", "infer_relu"),
          "bwd": ("bwd", "bwd_relu"), "gn": ("gn_fwd", "gn_bwd")}
# Table order.
ROWS = ("train", "train_relu", "bwd", "bwd_relu", "step", "step_relu", "infer", "infer_relu",
        "gn_fwd", "gn_bwd", "gn_step")

# Targets (issue 4, on this machine at 2 threads). Speedups over torch's faster layout are judged
# for fresh outputs and for out=; the roofline fraction for out= (a fresh 100 MB output costs
# about as much as the whole kernel in page faults, which is the allocator's cost, not the
# kernel's). fwd+bwd targets apply to the three large shapes; inference speedup to every shape,
# its roofline fraction to the large shapes (the smallest is cache-resident, so a DRAM roof does
# not bound it).
TARGET_STEP_VS_TORCH = 3.0
TARGET_STEP_ROOF = 0.50
TARGET_INFER_VS_TORCH = 1.5
TARGET_INFER_ROOF = 0.70

MOMENTUM, EPS = 0.1, 1e-5


def has_out(key: str) -> bool:
    """Whether the cnnkit function behind block ``key`` takes ``out=``."""
    return "out" in inspect.signature(getattr(cnnkit, OPS[key][3])).parameters


def gn_groups(c: int) -> int:
    """The group count the benchmark gives group norm on ``c`` channels.

    Parameters
    ----------
    c : int
        Channels.

    Returns
    -------
    int
        ``GN_GROUPS``, or ``c`` (one channel a group) where there are fewer channels than that.
    """
    return GN_GROUPS if c >= GN_GROUPS else c


def shape_name(shape) -> str:
    """The table's name of a shape.

    Parameters
    ----------
    shape : sequence of int
        The dimensions.

    Returns
    -------
    str
        The dimensions joined by ``x`` (``(4, 6, 5, 7)`` -> ``"4x6x5x7"``).
    """
    return "x".join(str(s) for s in shape)


# ---- float64 references (for the check when torch is absent) -----------------------------------
def _ref_bn_train(x, w, b, relu):
    """x (N, C, H, W) float64 -> y, batch mean, biased var."""
    m = x.mean(axis=(0, 2, 3))
    v = ((x - m[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    xh = (x - m[None, :, None, None]) / np.sqrt(v + EPS)[None, :, None, None]
    y = xh * w[None, :, None, None] + b[None, :, None, None]
    return (np.maximum(y, 0) if relu else y), m, v


def _ref_norm_bwd(dy, x, w, b, relu, groups=None):
    """Gradients (x, weight, bias) of y = act(xhat * w + b) for x (N, C, H, W); statistics per
    channel over (N, H, W), or per (sample, group) when ``groups`` is given."""
    n = x.shape[0]
    xs = x if groups is None else x.reshape(n, groups, -1)
    red = (0, 2, 3) if groups is None else (2,)
    wc, bc = w[None, :, None, None], b[None, :, None, None]
    m = xs.mean(axis=red, keepdims=True)
    inv = 1.0 / np.sqrt(((xs - m) ** 2).mean(axis=red, keepdims=True) + EPS)
    xh = ((xs - m) * inv).reshape(x.shape)
    g = dy * (xh * wc + bc > 0) if relu else dy
    gw, gb = (g * xh).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))
    gxh, xh = (g * wc).reshape(xs.shape), xh.reshape(xs.shape)
    gx = inv * (gxh - gxh.mean(axis=red, keepdims=True)
                - xh * (gxh * xh).mean(axis=red, keepdims=True))
    return gx.reshape(x.shape), gw, gb


def _ref_gn(x, groups, w, b):
    n, c, h, wd = x.shape
    xs = x.reshape(n, groups, -1)
    m = xs.mean(axis=2, keepdims=True)
    v = ((xs - m) ** 2).mean(axis=2, keepdims=True)
    xh = ((xs - m) / np.sqrt(v + EPS)).reshape(x.shape)
    return xh * w[None, :, None, None] + b[None, :, None, None]


def _references(torch, x, w, b, dy, groups):
    """Float64 results of every checked quantity, keyed by name; NCHW arrays."""
    out = {}
    if torch is not None:
        F = torch.nn.functional
        t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in
             (("x", x), ("w", w), ("b", b), ("dy", dy))}
        for relu in (False, True):
            s = "_relu" if relu else ""
            xg, wg, bg = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
            rm = torch.zeros(x.shape[1], dtype=torch.float64)
            rv = torch.ones(x.shape[1], dtype=torch.float64)
            y = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=MOMENTUM, eps=EPS)
            if relu:
                y = F.relu(y)
            gx, gw, gb = torch.autograd.grad(y, (xg, wg, bg), t["dy"])
            out["train" + s] = y.detach().numpy()
            out["rm" + s], out["rv" + s] = rm.numpy(), rv.numpy()
            out["bwd" + s] = (gx.numpy(), gw.numpy(), gb.numpy())
            yi = F.batch_norm(t["x"], rm, rv, t["w"], t["b"], training=False, eps=EPS)
            out["infer" + s] = (F.relu(yi) if relu else yi).numpy()
        xg, wg, bg = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
        y = F.group_norm(xg, groups, wg, bg, eps=EPS)
        gx, gw, gb = torch.autograd.grad(y, (xg, wg, bg), t["dy"])
        out["gn_fwd"] = y.detach().numpy()
        out["gn_bwd"] = (gx.numpy(), gw.numpy(), gb.numpy())
        return out
    x, w, b, dy = (a.astype(np.float64) for a in (x, w, b, dy))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    for relu in (False, True):
        s = "_relu" if relu else ""
        y, m, v = _ref_bn_train(x, w, b, relu)
        out["train" + s] = y
        out["rm" + s] = MOMENTUM * m
        out["rv" + s] = (1 - MOMENTUM) + MOMENTUM * v * n / (n - 1)
        out["bwd" + s] = _ref_norm_bwd(dy, x, w, b, relu)
        rm, rv = out["rm" + s], out["rv" + s]
        yi = ((x - rm[None, :, None, None]) / np.sqrt(rv + EPS)[None, :, None, None]
              * w[None, :, None, None] + b[None, :, None, None])
        out["infer" + s] = np.maximum(yi, 0) if relu else yi
    out["gn_fwd"] = _ref_gn(x, groups, w, b)
    out["gn_bwd"] = _ref_norm_bwd(dy, x, w, b, False, groups)
    return out


def reference_check(torch, layouts=LAYOUTS, shape=(4, 6, 5, 7)) -> list:
    """Every timed cnnkit call on one small shape against torch in float64, or against a NumPy
    float64 reference without torch.

    Parameters
    ----------
    torch : module or None
        The torch module, or None to check against the NumPy references.
    layouts : sequence of str, default LAYOUTS
        The cnnkit layouts to check ("NCHW", "NHWC").
    shape : tuple of int, default (4, 6, 5, 7)
        The NCHW shape (N, C, H, W) of the input.

    Returns
    -------
    list of str
        One message per call that disagrees beyond ``1e-4 * (1 + max |reference|)`` or has the
        wrong shape; empty when all agree.
    """
    rng = np.random.default_rng(7)
    n, c, h, wd = shape
    groups = 3
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal(c)[None, :, None, None]
         ).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    ref = _references(torch, x, w, b, dy, groups)
    bad = []

    def cmp(name, got, want, layout):
        got = np.asarray(got, dtype=np.float64)
        if layout == "NHWC" and got.ndim == 4:
            got = got.transpose(0, 3, 1, 2)
        tol = 1e-4 * (1 + np.abs(want).max())
        if got.shape != want.shape:
            bad.append(f"{name} ({layout}): shape {got.shape}, expected {want.shape}")
        elif not np.all(np.isfinite(got)) or np.abs(got - want).max() > tol:
            bad.append(f"{name} ({layout}): max |diff| {np.abs(got - want).max():.3g} > {tol:.3g}")

    for layout in layouts:
        xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        dyl = dy if layout == "NCHW" else np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        for relu in (False, True):
            s, act = ("_relu", "relu") if relu else ("", None)
            rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
            y, sm, si = cnnkit.batch_norm_train(xl, w, b, rm, rv, momentum=MOMENTUM, eps=EPS,
                                                activation=act, layout=layout)
            cmp("batch_norm_train" + s, y, ref["train" + s], layout)
            yo = np.empty_like(xl)
            cnnkit.batch_norm_train(xl, w, b, rm.copy(), rv.copy(), momentum=MOMENTUM, eps=EPS,
                                    activation=act, layout=layout, out=yo)
            cmp("batch_norm_train(out=)" + s, yo, ref["train" + s], layout)
            cmp("running_mean" + s, rm, ref["rm" + s], layout)
            cmp("running_var" + s, rv, ref["rv" + s], layout)
            g = cnnkit.batch_norm_backward(dyl, xl, w, sm, si, y=y if relu else None, bias=b,
                                           activation=act, layout=layout)
            for k, nm in enumerate(("grad_x", "grad_weight", "grad_bias")):
                cmp(f"batch_norm_backward{s} {nm}", g[k], ref["bwd" + s][k], layout)
            if has_out("bwd"):
                go = np.empty_like(xl)
                cnnkit.batch_norm_backward(dyl, xl, w, sm, si, y=y if relu else None, bias=b,
                                           activation=act, layout=layout, out=go)
                cmp(f"batch_norm_backward(out=){s} grad_x", go, ref["bwd" + s][0], layout)
            yi = cnnkit.batch_norm_infer(xl, w, b, rm, rv, eps=EPS, activation=act, layout=layout)
            cmp("batch_norm_infer" + s, yi, ref["infer" + s], layout)
            cnnkit.batch_norm_infer(xl, w, b, rm, rv, eps=EPS, activation=act, layout=layout,
                                    out=yo)
            cmp("batch_norm_infer(out=)" + s, yo, ref["infer" + s], layout)
        y, gm, gs = cnnkit.group_norm(xl, groups, w, b, EPS, layout=layout, return_stats=True)
        cmp("group_norm", y, ref["gn_fwd"], layout)
        g = cnnkit.group_norm_backward(dyl, xl, groups, w, gm, gs, bias=b, layout=layout)
        for k, nm in enumerate(("grad_x", "grad_weight", "grad_bias")):
            cmp(f"group_norm_backward {nm}", g[k], ref["gn_bwd"][k], layout)
        go = np.empty_like(xl)
        if has_out("gn_fwd"):
            cnnkit.group_norm(xl, groups, w, b, EPS, layout=layout, out=go)
            cmp("group_norm(out=)", go, ref["gn_fwd"], layout)
        if has_out("gn_bwd"):
            cnnkit.group_norm_backward(dyl, xl, groups, w, gm, gs, bias=b, layout=layout, out=go)
            cmp("group_norm_backward(out=) grad_x", go, ref["gn_bwd"][0], layout)
    return bad


# ---- implementations under test ----------------------------------------------------------------
def _data(shape, layouts, seed=0) -> dict:
    """x and dy in NCHW and NHWC (same values), per-channel parameters and statistics."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x += rng.standard_normal(c, dtype=np.float32)[None, :, None, None]
    dy = rng.standard_normal(shape, dtype=np.float32)
    d = {"NCHW": (x, dy)}
    d["NHWC"] = (np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                 np.ascontiguousarray(dy.transpose(0, 2, 3, 1)))
    d["w"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    d["b"] = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    return d


def _fresh_and_out(block, L, f, buf, with_out):
    block[f"cnnkit {L} fresh"] = f
    if with_out:
        block[f"cnnkit {L} out="] = lambda: f(out=buf)


def _cnnkit_impls(d, layouts, blocks) -> dict:
    """{block: {name: callable}} for cnnkit, with the state each call needs prepared once."""
    w, b = d["w"], d["b"]
    c = w.shape[0]
    impls: dict[str, dict[str, Any]] = {k: {} for k in blocks}
    for L in layouts:
        x, dy = d[L]
        groups = gn_groups(c)
        out = np.empty_like(x)           # one reused output per layout (a training loop's buffer)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        # running statistics of this data (for inference) and saved statistics for backward
        _, sm, si = cnnkit.batch_norm_train(x, w, b, rm, rv, momentum=1.0, layout=L)
        if "bwd_relu" in impls:  # the fused backward reads the forward output for its mask
            yr, smr, sir = cnnkit.batch_norm_train(x, w, b, None, None, activation="relu",
                                                   layout=L)
        for relu in (False, True):
            s, act = ("_relu", "relu") if relu else ("", None)
            if "train" + s in impls:
                impls["train" + s][f"cnnkit {L} fresh"] = (
                    lambda x=x, act=act, L=L, rm=rm.copy(), rv=rv.copy():
                    cnnkit.batch_norm_train(x, w, b, rm, rv, momentum=MOMENTUM, activation=act,
                                            layout=L))
                impls["train" + s][f"cnnkit {L} out="] = (
                    lambda x=x, act=act, L=L, rm=rm.copy(), rv=rv.copy(), out=out:
                    cnnkit.batch_norm_train(x, w, b, rm, rv, momentum=MOMENTUM, activation=act,
                                            layout=L, out=out))
            if "infer" + s in impls:
                impls["infer" + s][f"cnnkit {L} fresh"] = (
                    lambda x=x, act=act, L=L:
                    cnnkit.batch_norm_infer(x, w, b, rm, rv, activation=act, layout=L))
                impls["infer" + s][f"cnnkit {L} out="] = (
                    lambda x=x, act=act, L=L, out=out:
                    cnnkit.batch_norm_infer(x, w, b, rm, rv, activation=act, layout=L, out=out))
        gx = np.empty_like(x)            # one reused grad_x per layout
        if "bwd" in impls:
            f = (lambda x=x, dy=dy, L=L, sm=sm, si=si, **kw:
                 cnnkit.batch_norm_backward(dy, x, w, sm, si, bias=b, layout=L, **kw))
            _fresh_and_out(impls["bwd"], L, f, gx, has_out("bwd"))
        if "bwd_relu" in impls:
            f = (lambda x=x, dy=dy, L=L, y=yr, sm=smr, si=sir, **kw:
                 cnnkit.batch_norm_backward(dy, x, w, sm, si, y=y, bias=b, activation="relu",
                                            layout=L, **kw))
            _fresh_and_out(impls["bwd_relu"], L, f, gx, has_out("bwd_relu"))
        if "gn_fwd" in impls:
            f = (lambda x=x, L=L, g=groups, **kw:
                 cnnkit.group_norm(x, g, w, b, EPS, layout=L, return_stats=True, **kw))
            _fresh_and_out(impls["gn_fwd"], L, f, out, has_out("gn_fwd"))
        if "gn_bwd" in impls:
            _, gm, gs = cnnkit.group_norm(x, groups, w, b, EPS, layout=L, return_stats=True)
            f = (lambda x=x, dy=dy, L=L, g=groups, gm=gm, gs=gs, **kw:
                 cnnkit.group_norm_backward(dy, x, g, w, gm, gs, bias=b, layout=L, **kw))
            _fresh_and_out(impls["gn_bwd"], L, f, gx, has_out("gn_bwd"))
    return impls


def _torch_impls(torch, d, blocks) -> dict:
    """{block: {"torch NCHW"/"torch CL": callable}}; backward graphs are built here, once."""
    F = torch.nn.functional
    c = d["w"].shape[0]
    groups = gn_groups(c)
    impls: dict[str, dict[str, Any]] = {k: {} for k in blocks}
    for TL in TORCH_LAYOUTS:
        if TL == "NCHW":
            xt, dyt = (torch.from_numpy(a) for a in d["NCHW"])
        else:  # channels_last views of the NHWC arrays (no copy)
            xt, dyt = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in d["NHWC"])
            assert xt.is_contiguous(memory_format=torch.channels_last)
        wt, bt = torch.from_numpy(d["w"].copy()), torch.from_numpy(d["b"].copy())
        rm, rv = torch.zeros(c), torch.ones(c)
        name = f"torch {TL}"

        def train(relu, xt=xt, wt=wt, bt=bt, rm=rm, rv=rv):
            with torch.no_grad():
                y = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=MOMENTUM, eps=EPS)
                return F.relu(y) if relu else y

        def infer(relu, xt=xt, wt=wt, bt=bt, rm=rm, rv=rv):
            with torch.no_grad():
                y = F.batch_norm(xt, rm, rv, wt, bt, training=False, eps=EPS)
                return F.relu(y) if relu else y

        train(False)  # running statistics of this data for inference
        for relu in (False, True):
            s = "_relu" if relu else ""
            if "train" + s in impls:
                impls["train" + s][name] = lambda relu=relu, f=train: f(relu)
            if "infer" + s in impls:
                impls["infer" + s][name] = lambda relu=relu, f=infer: f(relu)
            if "bwd" + s in impls:
                xg = xt.detach().requires_grad_()
                wg, bg = wt.clone().requires_grad_(), bt.clone().requires_grad_()
                y = F.batch_norm(xg, torch.zeros(c), torch.ones(c), wg, bg, training=True,
                                 momentum=MOMENTUM, eps=EPS)
                if relu:
                    y = F.relu(y)
                impls["bwd" + s][name] = (
                    lambda y=y, ins=(xg, wg, bg), dyt=dyt:
                    torch.autograd.grad(y, ins, dyt, retain_graph=True))
        if "gn_fwd" in impls:
            def gn(xt=xt, wt=wt, bt=bt):
                with torch.no_grad():
                    return F.group_norm(xt, groups, wt, bt, eps=EPS)
            impls["gn_fwd"][name] = gn
        if "gn_bwd" in impls:
            xg = xt.detach().requires_grad_()
            wg, bg = wt.clone().requires_grad_(), bt.clone().requires_grad_()
            y = F.group_norm(xg, groups, wg, bg, eps=EPS)
            impls["gn_bwd"][name] = (lambda y=y, ins=(xg, wg, bg), dyt=dyt:
                                     torch.autograd.grad(y, ins, dyt, retain_graph=True))
    return impls


def run_shape(torch, idx, layouts, blocks, stream, reps, warmup, probe_reps) -> dict:
    """Interleaved rounds over every block of one shape; raw per-round times and probes.

    Parameters
    ----------
    torch : module or None
        The imported torch (its implementations join each block), or None for cnnkit alone.
    idx : int
        The shape's index in ``SHAPES["shapes"]``.
    layouts : sequence of str
        The cnnkit layouts timed ("NCHW", "NHWC").
    blocks : sequence of str
        The ``OPS`` keys timed, each a block of implementations run round-robin.
    stream : object
        The STREAM probe's arrays (:func:`cnnkit.bench._common.probe`'s ``arrays``).
    reps, warmup, probe_reps : int
        Timed rounds, untimed rounds first, and repetitions of each bandwidth probe.

    Returns
    -------
    dict
        ``shape``, ``index``, ``numel``, ``inner`` (calls per timed sample), ``seconds`` (wall
        time of the rounds), ``times_s`` ({block: {implementation: per-round seconds}}) and
        ``probe_gbs`` ({block: per-round probe GB/s}).
    """
    shape = tuple(SHAPES["shapes"][idx])
    numel = int(np.prod(shape))
    inner = max(1, min(MAX_INNER, MIN_CALL_ELEMS // numel))
    d = _data(shape, layouts)
    impls = _cnnkit_impls(d, layouts, blocks)
    if torch is not None:
        for k, v in _torch_impls(torch, d, blocks).items():
            impls[k].update(v)
    spec = [(impls[k], lambda kind=OPS[k][2]: probe(kind, stream, probe_reps)) for k in blocks]
    t0 = time.perf_counter()
    times, probes = run_rounds(spec, reps, warmup, [inner] * len(spec))
    elapsed = time.perf_counter() - t0
    del impls, spec, d
    gc.collect()
    return {"shape": list(shape), "index": idx, "numel": numel, "inner": inner,
            "seconds": elapsed, "times_s": dict(zip(blocks, times)),
            "probe_gbs": dict(zip(blocks, probes))}


# ---- summaries ---------------------------------------------------------------------------------
def _series(res, key):
    """(per-round seconds by implementation name, per-round probe GB/s, bytes/elem, roof kind,
    has out=) for a block or a summed row; None if a needed block was not run."""
    if key in OPS:
        if key not in res["times_s"]:
            return None
        t = {k: np.array(v) for k, v in res["times_s"][key].items()}
        _, nb, kind, _ = OPS[key]
        with_out = any(n.endswith(" out=") for n in t)
        return t, np.array(res["probe_gbs"][key]), nb, kind, with_out
    parts = SUMS[key][1]
    if any(p not in res["times_s"] for p in parts):
        return None
    t = {}
    first, second = res["times_s"][parts[0]], res["times_s"][parts[1]]
    for name in first:
        # out=: both with out= (backward fresh if it had no out=)
        other = name if name in second else name[:-len(" out=")] + " fresh"
        t[name] = np.array(first[name]) + np.array(second[other])
    # The roof of a sum is the sum of the parts' roof times: per element and round,
    # sum(bytes_i / probe_i); the equivalent bandwidth is the total bytes over that.
    nb = sum(OPS[p][1] for p in parts)
    roof_t = sum(OPS[p][1] / np.array(res["probe_gbs"][p]) for p in parts)
    kinds = sorted({OPS[p][2] for p in parts})
    with_out = any(n.endswith(" out=") for n in first)
    return t, nb / roof_t, nb, "+".join(kinds), with_out


def summarize(res: dict, layouts) -> list:
    """One dict per (row, cnnkit layout) of one shape.

    Parameters
    ----------
    res : dict
        :func:`run_shape`'s result.
    layouts : sequence of str
        The cnnkit layouts it timed.

    Returns
    -------
    list of dict
        Per row of ``ROWS`` that ran and layout: its label, bytes per element, the roof (kind and
        median probe GB/s), torch's times and best implementation, and per variant ("fresh", and
        "out=" where timed) the median ms, GB/s, fraction of the roof and ratio to torch's best,
        with their spreads.
    """
    rows = []
    numel = res["numel"]
    for key in ROWS:
        ser = _series(res, key)
        if ser is None:
            continue
        t, probe_gbs, nb, kind, with_out = ser
        nbytes = nb * numel
        torch_t = {k[len("torch "):]: v for k, v in t.items() if k.startswith("torch ")}
        best = min(torch_t, key=lambda k: med(torch_t[k])) if torch_t else None
        for L in layouts:
            r = {"shape": res["shape"], "index": res["index"], "row": key,
                 "label": OPS[key][0] if key in OPS else SUMS[key][0], "layout": L,
                 "bytes_per_elem": nb, "roof_kind": kind, "roof_gbs": med(probe_gbs),
                 "torch_ms": {k: 1e3 * med(v) for k, v in torch_t.items()}}
            if best is not None:
                r["torch_best"] = best
                r["torch_best_ms"] = 1e3 * med(torch_t[best])
            for var in ("fresh", "out=") if with_out else ("fresh",):
                tc = t[f"cnnkit {L} {var}"]
                frac = nbytes / tc / 1e9 / probe_gbs
                v = {"ms": 1e3 * med(tc), "ms_spread": spread(tc), "gbs": nbytes / med(tc) / 1e9,
                     "frac_roof": med(frac), "frac_roof_spread": spread(frac)}
                if best is not None:
                    ratio = torch_t[best] / tc
                    v["vs_torch"] = med(ratio)
                    v["vs_torch_iqr"] = [float(q) for q in np.percentile(ratio, [25, 75])]
                    v["vs_torch_spread"] = spread(ratio)
                r[var] = v
            rows.append(r)
    return rows


def targets(r: dict) -> list:
    """[(description, value, threshold, met, spread)] for one summary row
    (:func:`cnnkit.bench._common.target`); met is None when not measured or when the spread of
    the rounds exceeds the margin. Empty when the row has no target."""
    key, large = r["row"], r["index"] in LARGE
    out: list[Any] = []
    vr: float | None
    if key in ("step", "step_relu") and large:
        vt, vr = TARGET_STEP_VS_TORCH, TARGET_STEP_ROOF
    elif key in ("infer", "infer_relu"):
        vt, vr = TARGET_INFER_VS_TORCH, (TARGET_INFER_ROOF if large else None)
    else:
        return out
    for var in ("out=", "fresh"):
        v = r.get(var, {})
        out.append(target(f"x torch ({var})", v.get("vs_torch"), vt,
                          rel_spread=v.get("vs_torch_spread")))
    if vr is not None:
        v = r["out="]
        out.append(target("% roof (out=)", v["frac_roof"], vr,
                          rel_spread=v.get("frac_roof_spread")))
    return out


# ---- printing ----------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ratio(v) -> str:
    return "-" if v is None or "vs_torch" not in v else f"{v['vs_torch']:.2f}x"


def _ms(v) -> str:
    """Median ms with the spread of the rounds (interquartile range over median)."""
    if not v:
        return "-"
    sp = v.get("ms_spread")
    return _f(v["ms"]) + ("" if sp is None else f" ±{100 * sp:.0f}%")


def render(rows: list, have_torch: bool) -> str:
    """The results as a markdown table for BENCHMARKS.md.

    Parameters
    ----------
    rows : list of dict
        One result row per (shape, layout, op): its cnnkit timings (fresh and ``out=``), roof,
        torch's best and its targets.
    have_torch : bool
        Whether torch ran: then a second table gives torch's time per layout.

    Returns
    -------
    str
        The tables, one line per row.
    """
    lines = ["| shape | layout | op | cnnkit ms fresh ±spread | cnnkit ms out= ±spread | GB/s fresh | GB/s out= | "
             "% of roof fresh | % of roof out= (kernel GB/s) | torch best ms (layout) | "
             "vs torch fresh | vs torch out= | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fr, ou = r["fresh"], r.get("out=")
        tb = f"{_f(r['torch_best_ms'])} ({r['torch_best']})" if "torch_best" in r else "-"
        tl = targets(r)
        lines.append(
            f"| {shape_name(r['shape'])} | {r['layout']} | {r['label']} | {_ms(fr)} | "
            f"{_ms(ou)} | {_f(fr['gbs'])} | {_f(ou['gbs']) if ou else '-'} | "
            f"{_pct(fr['frac_roof'])} | {_pct(ou['frac_roof']) if ou else '-'} "
            f"({r['roof_kind']} {_f(r['roof_gbs'])}) | {tb} | {_ratio(fr)} | "
            f"{_ratio(ou) if ou else '-'} | {target_text(tl) if tl else ''} |")
    if have_torch:
        lines += ["", "torch per layout (median ms; the faster one is the peer above):", "",
                  "| shape | op | torch NCHW ms | torch channels_last ms | faster |",
                  "|---|---|---|---|---|"]
        seen = set()
        for r in rows:
            k = (tuple(r["shape"]), r["row"])
            if k in seen or "torch_best" not in r:
                continue
            seen.add(k)
            tm = r["torch_ms"]
            lines.append(f"| {shape_name(r['shape'])} | {r['label']} | {_f(tm.get('NCHW'))} | "
                         f"{_f(tm.get('CL'))} | {r['torch_best']} |")
    return "\n".join(lines)


# ---- entry point -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench norm",
        description="Batch norm (train/infer forward, backward, fused ReLU) and group norm: "
                    "cnnkit vs torch.nn.functional in its faster layout, interleaved with "
                    "STREAM probes of the matching memory roof.")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for cnnkit and torch (default: cnnkit's current count)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed rounds per shape (default 9; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--shapes", default=None,
                   help="comma-separated indices into " + "; ".join(
                       f"{i}: {shape_name(s)}" for i, s in enumerate(SHAPES["shapes"]))
                   + " (default: all)")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="cnnkit layouts, comma-separated subset of NCHW,NHWC (torch always runs "
                        "both of its layouts)")
    p.add_argument("--ops", default=",".join(GROUPS),
                   help=f"comma-separated subset of {','.join(GROUPS)}")
    p.add_argument("--quick", action="store_true",
                   help="only the shapes whose x is at most 64 MiB, 3 rounds: a smoke run")
    p.add_argument("--probe-reps", type=int, default=3,
                   help="STREAM repetitions per probe (default 3)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if importable")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of cnnkit against torch (float64) before timing")
    p.add_argument("--json", metavar="PATH", help="write raw per-round numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the normalization benchmark (``cnnkit bench norm``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench norm --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    n_shapes = len(SHAPES["shapes"])
    try:
        layouts = parse_list(args.layouts, LAYOUTS, "--layouts")
        op_groups = parse_list(args.ops, tuple(GROUPS), "--ops")
        if args.shapes is not None:
            idx = [int(s) for s in parse_list(args.shapes, [str(i) for i in range(n_shapes)],
                                               "--shapes")]
        elif args.quick:
            idx = [i for i, s in enumerate(SHAPES["shapes"])
                   if 4 * int(np.prod(s)) <= QUICK_MAX_BYTES]
        else:
            idx = list(range(n_shapes))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if not layouts or not op_groups or not idx:
        print("--layouts, --ops and --shapes must each name at least one entry", file=sys.stderr)
        return 2
    reps = args.reps if args.reps is not None else (3 if args.quick else 9)
    if reps < 1 or args.warmup < 0 or args.probe_reps < 1:
        print("--reps and --probe-reps must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    blocks = [k for g in GROUPS if g in op_groups for k in GROUPS[g]]
    if args.threads is not None:
        cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()
    torch = import_torch(args.no_torch, threads)

    header = machine_header(peer_header(torch))
    print(header)
    if not args.no_check:
        bad = reference_check(torch, layouts)
        if bad:
            print("\nreference check FAILED (timings would be meaningless):")
            for b in bad:
                print("  " + b)
            return 1
        print("reference check: every timed cnnkit call (train/infer with and without out= and "
              f"ReLU, backward, group norm; {', '.join(layouts)}) matches "
              + ("torch (float64) on 4x6x5x7" if torch is not None
                 else "a NumPy float64 reference on 4x6x5x7"))

    stream = stream_arrays(256)
    kinds = ("copy", "copy_nt", "triad", "triad_nt")
    bw_start = memory_bandwidth(kinds, mib=256, arrays=stream)
    print(f"STREAM at start (GB/s, 256 MiB arrays, {threads} threads): "
          + ", ".join(f"{k} {bw_start[k]:.1f}" for k in kinds))
    print(f"Shapes (N, C, H, W): {', '.join(shape_name(SHAPES['shapes'][i]) for i in idx)}; "
          f"cnnkit layouts {', '.join(layouts)}; {reps} timed rounds after {args.warmup} warm-up "
          f"rounds; one STREAM probe of {args.probe_reps} reps per operation per round.")
    print("Minimum bytes per element: train fwd 12 (x read twice, y written), infer fwd 8, bwd 12 "
          "(x, grad_out read; grad_x written), fwd+bwd 24, GN fwd 8, GN bwd 12; the ReLU mask "
          "read of y in a fused backward is extra traffic, not counted. Roof: triad for 12 and "
          "24 B, copy for 8 B (regular stores), probed in the same round.")

    t_start = time.perf_counter()
    raw, rows = [], []
    for i in idx:
        res = run_shape(torch, i, layouts, blocks, stream, reps, args.warmup, args.probe_reps)
        if res["inner"] > 1:
            print(f"  {shape_name(res['shape'])}: {res['inner']} calls per timed sample")
        raw.append(res)
        rows.extend(summarize(res, layouts))
    elapsed = time.perf_counter() - t_start
    bw_end = memory_bandwidth(kinds, mib=256, arrays=stream)
    del stream
    print("STREAM at end (GB/s): " + ", ".join(f"{k} {bw_end[k]:.1f}" for k in kinds)
          + f"  [timing took {elapsed:.0f} s]")
    print()
    print(render(rows, torch is not None))
    print()
    all_t = [(r, t) for r in rows for t in targets(r)]
    print(target_summary([t for _, t in all_t]))
    for r, t in all_t:
        if t[3] is False:
            print(f"  missed: {shape_name(r['shape'])} {r['layout']} {r['label']}: "
                  f"{target_text([t])}")
    for r, t in all_t:
        if t[3] is None and t[1] is not None:
            print(f"  {NOISY}: {shape_name(r['shape'])} {r['layout']} {r['label']}: "
                  f"{target_text([t])}")

    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "reps": reps, "warmup": args.warmup,
               "probe_reps": args.probe_reps, "layouts": layouts, "blocks": blocks,
               "ops": {k: {"label": v[0], "bytes_per_elem": v[1], "roof": v[2],
                           "cnnkit": v[3], "out": has_out(k)} for k, v in OPS.items()},
               "stream_start_gbs": bw_start, "stream_end_gbs": bw_end, "shapes": SHAPES,
               "results": raw, "summary": rows,
               "targets": [{"shape": r["shape"], "layout": r["layout"], "row": r["label"],
                            "target": t[0], "value": t[1], "threshold": t[2], "met": t[3],
                            "spread": t[4]}
                           for r, t in all_t]}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
