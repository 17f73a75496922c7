"""Optimizer-step benchmark: ``cnnkit.optim`` against NumPy and ``torch.optim`` on the same arrays.

Run it as ``cnnkit bench optim [options]`` or ``python benchmarks/bench_optim.py [options]``;
``--help`` lists the options.

What is measured
----------------
Two parameter lists (float32, each tensor allocated on its own as a real model's would be):

* ``large``: 50 tensors, 25,000,000 parameters: 10 bias-like vectors of a few hundred to a few
  thousand elements and 40 weights with log-uniform sizes up to a few million (seeded).
* ``small``: 3,000 tensors of 1,000 elements, to expose per-tensor overhead.

For each algorithm, one step of every implementation is timed per *round*: cnnkit, the NumPy
peer, torch.optim fused / foreach / for-loop, then a short STREAM probe of the in-place kernel
with the same bytes per element (``rw5`` for 20-byte algorithms, ``rw7`` for 28-byte ones).
Odd rounds run the same sequence in reverse. Both lists are interleaved in every round. This VM's
bandwidth drifts by up to 1.5x from one minute to the next, so every ratio (% of bandwidth,
speedups, small/large cost) is computed within a round and the table shows the median over
rounds; the millisecond columns are plain medians.

A sample is one step, or, for steps shorter than ``--min-sample-ms`` (10 ms), one untimed step
(the pool's threads awake, as they are after the backward pass of a training step) and then steps
back to back until they have lasted that long, divided by their number (at least
``calls/sample``, set per implementation before the rounds by
:func:`cnnkit.bench._common.calibrate_inner`). A 0.1 ms step timed alone on a shared 2-core
machine reads as the time a sleeping pool thread waited for a core (4-8 ms, the same for every
algorithm; tens of ms under heavy load), not as the step. Every row shows the spread of its
rounds (interquartile range over median), and a target whose spread is larger than the margin
between the figure and the threshold reads "noisy, not judged" instead of met or MISSED.

Minimum bytes per float32 parameter: read p, g and every state array, write p and every state
array: SGD (momentum or Nesterov), Adagrad and RMSprop 20 B; Adadelta, Adam and AdamW 28 B.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import numpy as np

import cnnkit
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    NOISY,
    calibrate_inner,
    import_torch,
    judge,
    peer_header,
    run_rounds,
    spread,
    target,
    target_summary,
    target_text,
    write_json,
)
from cnnkit.bench._common import med as _med
from cnnkit.bench._common import probe as _probe
from cnnkit.bench._common import stream_arrays as make_stream_arrays

__all__ = ["main", "SHAPES", "ALGOS", "make_large", "make_small"]

# The "optimizer" entry of the project's shared benchmark shapes (kept identical here, so the
# benchmark runs from an installed package).
SHAPES: dict[str, Any] = {
    "about": ("A model-like parameter list: 50 tensors, 25,000,000 float32 parameters in all "
              "(10 bias-like vectors of a few hundred to a few thousand elements and 40 weights "
              "with log-uniform sizes up to a few million). Also benchmark 3,000 tensors of "
              "1,000 elements to expose per-tensor overhead."),
    "total_params": 25_000_000,
    "tensors": 50,
    "small_tensors": {"count": 3000, "size": 1000},
}
N_BIAS = 10                    # of SHAPES["tensors"]
BIAS_RANGE = (256, 4096)       # "a few hundred to a few thousand"
WEIGHT_RANGE = (1e4, 4e6)      # log-uniform, then scaled so the total is exact
QUICK_TOTAL = 2_500_000
QUICK_SMALL_COUNT = 300
LR = 1e-6                      # small, so parameters stay finite over many steps

# key: (label, bytes per fp32 param, STREAM kernel, cnnkit/torch class, hyperparameters,
#       torch has a fused CPU kernel)
ALGOS: dict[str, tuple[Any, ...]] = {
    "sgd": ("SGD momentum", 20, "rw5", "SGD", dict(lr=LR, momentum=0.9), True),
    "nesterov": ("SGD nesterov", 20, "rw5", "SGD", dict(lr=LR, momentum=0.9, nesterov=True), True),
    "adagrad": ("Adagrad", 20, "rw5", "Adagrad", dict(lr=LR, eps=1e-10), True),
    "rmsprop": ("RMSprop", 20, "rw5", "RMSprop", dict(lr=LR, alpha=0.99, eps=1e-8), False),
    "adadelta": ("Adadelta", 28, "rw7", "Adadelta", dict(lr=LR, rho=0.9, eps=1e-6), False),
    "adam": ("Adam", 28, "rw7", "Adam", dict(lr=LR, betas=(0.9, 0.999), eps=1e-8), True),
    "adamw": ("AdamW", 28, "rw7", "AdamW",
              dict(lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), True),
}
TORCH_VARIANTS = (("fused", dict(fused=True)), ("foreach", dict(foreach=True)),
                  ("for-loop", dict(foreach=False)))

# Targets (see BENCHMARKS.md): large list vs the in-place bandwidth and torch; small list vs
# torch and vs the large list's per-parameter cost.
TARGET_BW = 0.90
TARGET_VS_FUSED = 1.1          # algorithms with a fused torch CPU kernel
TARGET_VS_FASTEST = 2.0        # RMSprop, Adadelta (no fused torch CPU kernel)
TARGET_SMALL_VS_TORCH = 3.0
TARGET_SMALL_PER_ELEM = 1.5

# A timed sample lasts at least this long: calls shorter than that are repeated back to back
# (cnnkit.bench._common.calibrate_inner), at most MAX_INNER times per sample.
MIN_SAMPLE_MS = 10.0
MAX_INNER = 200


# ---- parameter lists ---------------------------------------------------------------------------
def large_sizes(total: int = SHAPES["total_params"], seed: int = 0) -> list:
    """Sizes of the model-like list, in model order (seeded; sums exactly to ``total``).

    Parameters
    ----------
    total : int
        Total parameter count.
    seed : int

    Returns
    -------
    list of int
    """
    rng = np.random.default_rng(seed)
    n_w = SHAPES["tensors"] - N_BIAS
    b = np.rint(np.exp(rng.uniform(np.log(BIAS_RANGE[0]), np.log(BIAS_RANGE[1]), N_BIAS)))
    b = b.astype(np.int64)
    raw = np.exp(rng.uniform(np.log(WEIGHT_RANGE[0]), np.log(WEIGHT_RANGE[1]), n_w))
    w = np.floor(raw * (total - b.sum()) / raw.sum()).astype(np.int64)
    w[np.argmax(w)] += total - b.sum() - w.sum()
    sizes = [int(x) for x in w] + [int(x) for x in b]
    order = rng.permutation(len(sizes))
    sizes = [sizes[i] for i in order]
    assert sum(sizes) == total and min(sizes) > 0
    return sizes


def _alloc(sizes, rng) -> list:
    return [rng.standard_normal(n, dtype=np.float32) for n in sizes]


def make_large(total: int = SHAPES["total_params"], seed: int = 0):
    """(params, grads): separately allocated float32 arrays, standard normal.

    Parameters
    ----------
    total : int
        Total parameter count.
    seed : int

    Returns
    -------
    (list of numpy.ndarray, list of numpy.ndarray)
    """
    sizes = large_sizes(total, seed)
    rng = np.random.default_rng(seed + 1)
    return _alloc(sizes, rng), _alloc(sizes, rng)


def make_small(count: int = SHAPES["small_tensors"]["count"],
               size: int = SHAPES["small_tensors"]["size"], seed: int = 0):
    """(params, grads) of the small-tensor list: ``count`` float32 arrays of ``size`` each.

    Parameters
    ----------
    count, size : int
    seed : int

    Returns
    -------
    (list of numpy.ndarray, list of numpy.ndarray)
    """
    rng = np.random.default_rng(seed + 2)
    sizes = [size] * count
    return _alloc(sizes, rng), _alloc(sizes, rng)


def _grad_sums(grads) -> list:
    """A fingerprint of a gradient list (float64 sums), to check that no implementation wrote it."""
    return [float(np.sum(g, dtype=np.float64)) for g in grads]


# ---- the NumPy peer ----------------------------------------------------------------------------
class NumpyOpt:
    """torch.optim's formulas with in-place ufuncs (``out=``) and preallocated scratch, one
    tensor at a time: what a careful NumPy user writes. Single-threaded (NumPy ufuncs are)."""

    def __init__(self, algo: str, params: list, hyper: dict):
        self.algo, self.params, self.h, self.t = algo, params, dict(hyper), 0
        n_state = {"sgd": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adadelta": 2,
                   "adam": 2, "adamw": 2}[algo]
        self.state = [[np.zeros_like(p) for p in params] for _ in range(n_state)]
        big = max(p.size for p in params)
        scratch = [np.empty(big, np.float32) for _ in range(2)]
        self.x = [scratch[0][:p.size].reshape(p.shape) for p in params]
        self.y = [scratch[1][:p.size].reshape(p.shape) for p in params]

    def step(self, grads: list) -> None:
        """One update of every parameter in place.

        Parameters
        ----------
        grads : list of float32 ndarray
            The gradients, one per parameter, of its shape.
        """
        self.t += 1
        getattr(self, "_" + ("sgd" if self.algo == "nesterov" else self.algo))(grads)

    def _sgd(self, G):
        mom, lr, nesterov = self.h["momentum"], self.h["lr"], self.h.get("nesterov", False)
        for p, g, buf, x in zip(self.params, G, self.state[0], self.x):
            if self.t == 1:
                np.copyto(buf, g)
            else:  # dampening = 0
                np.multiply(buf, mom, out=buf)
                np.add(buf, g, out=buf)
            if nesterov:
                np.multiply(buf, mom, out=x)
                np.add(x, g, out=x)
                np.multiply(x, lr, out=x)
            else:
                np.multiply(buf, lr, out=x)
            np.subtract(p, x, out=p)

    def _adagrad(self, G):
        clr = self.h["lr"] / (1 + (self.t - 1) * self.h.get("lr_decay", 0.0))
        eps = self.h["eps"]
        for p, g, s, x in zip(self.params, G, self.state[0], self.x):
            np.multiply(g, g, out=x)
            np.add(s, x, out=s)
            np.sqrt(s, out=x)
            np.add(x, eps, out=x)
            np.divide(g, x, out=x)
            np.multiply(x, clr, out=x)
            np.subtract(p, x, out=p)

    def _rmsprop(self, G):
        a, eps, lr = self.h["alpha"], self.h["eps"], self.h["lr"]
        for p, g, v, x in zip(self.params, G, self.state[0], self.x):
            np.multiply(v, a, out=v)
            np.multiply(g, g, out=x)
            np.multiply(x, 1 - a, out=x)
            np.add(v, x, out=v)
            np.sqrt(v, out=x)
            np.add(x, eps, out=x)
            np.divide(g, x, out=x)
            np.multiply(x, lr, out=x)
            np.subtract(p, x, out=p)

    def _adadelta(self, G):
        rho, eps, lr = self.h["rho"], self.h["eps"], self.h["lr"]
        for p, g, v, u, x, y in zip(self.params, G, self.state[0], self.state[1], self.x, self.y):
            np.multiply(v, rho, out=v)
            np.multiply(g, g, out=x)
            np.multiply(x, 1 - rho, out=x)
            np.add(v, x, out=v)
            np.add(v, eps, out=x)
            np.sqrt(x, out=x)                   # std
            np.add(u, eps, out=y)
            np.sqrt(y, out=y)
            np.divide(y, x, out=y)
            np.multiply(y, g, out=y)            # delta
            np.multiply(u, rho, out=u)
            np.multiply(y, y, out=x)
            np.multiply(x, 1 - rho, out=x)
            np.add(u, x, out=u)
            np.multiply(y, lr, out=y)
            np.subtract(p, y, out=p)

    def _adam(self, G, decoupled=False):
        b1, b2 = self.h["betas"]
        lr, eps, wd = self.h["lr"], self.h["eps"], self.h.get("weight_decay", 0.0)
        step_size = lr / (1 - b1 ** self.t)
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        for p, g, m, v, x in zip(self.params, G, self.state[0], self.state[1], self.x):
            if decoupled and wd:
                np.multiply(p, 1 - lr * wd, out=p)
            np.multiply(m, b1, out=m)
            np.multiply(g, 1 - b1, out=x)
            np.add(m, x, out=m)
            np.multiply(v, b2, out=v)
            np.multiply(g, g, out=x)
            np.multiply(x, 1 - b2, out=x)
            np.add(v, x, out=v)
            np.sqrt(v, out=x)
            np.divide(x, bc2_sqrt, out=x)
            np.add(x, eps, out=x)
            np.divide(m, x, out=x)
            np.multiply(x, step_size, out=x)
            np.subtract(p, x, out=p)

    def _adamw(self, G):
        self._adam(G, decoupled=True)


# ---- implementations under test ----------------------------------------------------------------
def _cnnkit_step(algo, params, grads):
    _, _, _, cls, hyper, _ = ALGOS[algo]
    opt = getattr(cnnkit.optim, cls)(params, **hyper)
    return lambda: opt.step(grads)


def _numpy_step(algo, params, grads):
    opt = NumpyOpt(algo, params, ALGOS[algo][4])
    return lambda: opt.step(grads)


def _torch_steps(torch, algo, params_by_variant, grads):
    """{variant: step callable} for the torch variants this torch supports on CPU.

    Each variant gets its own copy of the gradients: torch's foreach SGD with Nesterov momentum
    adds the momentum buffers into ``p.grad`` in place, which would make the shared gradients of
    every other implementation grow step by step until they overflow."""
    _, _, _, cls, hyper, has_fused = ALGOS[algo]
    out = {}
    for variant, kw in TORCH_VARIANTS:
        if variant == "fused" and not has_fused:
            continue
        tg = [torch.from_numpy(g.copy()) for g in grads]
        tp = [torch.from_numpy(p) for p in params_by_variant[variant]]
        for p, g in zip(tp, tg):
            p.grad = g
        try:
            opt = getattr(torch.optim, cls)(tp, **hyper, **kw)
        except (TypeError, RuntimeError, ValueError):
            continue
        out[variant] = opt.step
    return out


def reference_check(torch, algos, steps: int = 3) -> list:
    """cnnkit and the NumPy peer against torch's for-loop step on a few odd sizes, lr = 1e-2.

    Parameters
    ----------
    torch : module or None
        The imported ``torch``; None compares cnnkit with the NumPy peer only.
    algos : iterable of str
        Keys of ``ALGOS``.
    steps : int
        Optimizer steps taken by each implementation.

    Returns
    -------
    list of str
        One message per tensor that differs beyond the tolerance (empty when all agree).
    """
    rng = np.random.default_rng(123)
    sizes = [1, 7, 33, 1000, 4099]
    base = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    bad = []
    for algo in algos:
        label, _, _, cls, hyper, _ = ALGOS[algo]
        hyper = dict(hyper, lr=1e-2)
        ck = [b.copy() for b in base]
        npy = [b.copy() for b in base]
        opt_c = getattr(cnnkit.optim, cls)(ck, **hyper)
        opt_n = NumpyOpt(algo, npy, hyper)
        ref = None
        if torch is not None:
            tp = [torch.from_numpy(b.copy()) for b in base]
            for p, g in zip(tp, grads):
                p.grad = torch.from_numpy(g)
            opt_t = getattr(torch.optim, cls)(tp, **hyper, foreach=False)
        for _ in range(steps):
            opt_c.step(grads)
            opt_n.step(grads)
            if torch is not None:
                opt_t.step()
        if torch is not None:
            ref = [p.numpy() for p in tp]
        else:
            ref = npy
        for name, got in (("cnnkit", ck), ("numpy", npy)):
            for i, (a, r) in enumerate(zip(got, ref)):
                d = a.astype(np.float64) - r
                moved = np.abs(r.astype(np.float64) - base[i]).max()
                tol = 1e-6 + 1e-5 * np.abs(r).max() + 1e-3 * moved
                if not np.all(np.isfinite(a)) or np.abs(d).max() > tol:
                    bad.append(f"{label}: {name} differs from torch at tensor {i} (size "
                               f"{sizes[i]}): max |diff| {np.abs(d).max():.3g} > {tol:.3g}")
    return bad


# ---- timing ------------------------------------------------------------------------------------
def run_algo(torch, algo, lists, data, stream_arrays, reps, warmup, probe_reps,
             min_sample_s=MIN_SAMPLE_MS / 1e3) -> dict:
    """Interleaved rounds over every list for one algorithm; raw times and per-round probes.

    Each implementation's calls per timed sample (``inner``) are set first so that a sample lasts
    about ``min_sample_s`` (0: one call per sample).

    Parameters
    ----------
    torch : module or None
        The imported ``torch``; None leaves its variants out.
    algo : str
        A key of ``ALGOS``.
    lists : iterable
        The parameter lists to time, keys of ``data``.
    data : dict
        ``{list: (params, grads)}``.
    stream_arrays : object
        The STREAM probe's arrays (``cnnkit.bench._common.stream_arrays``).
    reps, warmup : int
        Timed and untimed rounds.
    probe_reps : int
        STREAM repetitions per probe.
    min_sample_s : float
        The shortest timed sample in seconds.

    Returns
    -------
    dict
        ``"algo"``, ``"label"``, ``"bytes_per_param"``, ``"stream_kind"``, and per list the calls per
        sample (``"inner"``), the raw times in seconds per implementation (``"times_s"``) and the
        per-round probe bandwidths (``"probe_gbs"``).
    """
    label, nbytes, kind, *_ = ALGOS[algo]
    impls = {}
    for L in lists:
        params, grads = data[L]
        steps = {"cnnkit": _cnnkit_step(algo, params, grads),
                 "numpy": _numpy_step(algo, [p.copy() for p in params], grads)}
        if torch is not None:
            copies = {v: [p.copy() for p in params] for v, _ in TORCH_VARIANTS}
            for v, fn in _torch_steps(torch, algo, copies, grads).items():
                steps["torch " + v] = fn
        impls[L] = steps
    inner = {L: (calibrate_inner(impls[L], min_sample_s, MAX_INNER) if min_sample_s > 0
                 else dict.fromkeys(impls[L], 1)) for L in lists}
    blocks = [(impls[L], lambda: _probe(kind, stream_arrays, probe_reps)) for L in lists]
    t, p = run_rounds(blocks, reps, warmup, [inner[L] for L in lists], warm_each=True,
                      min_sample_s=min_sample_s)
    times = dict(zip(lists, t))
    probes = dict(zip(lists, p))
    del impls
    gc.collect()
    return {"algo": algo, "label": label, "bytes_per_param": nbytes, "stream_kind": kind,
            "inner": inner, "times_s": times, "probe_gbs": probes}


def summarize(res: dict, n_params: dict) -> dict:
    """Medians and per-round ratios of one algorithm's timings, per list of parameters.

    Parameters
    ----------
    res : dict
        One algorithm's result as :func:`run_algo` returns it: ``times_s[list][impl]`` (seconds
        per round), ``probe_gbs[list]`` (the STREAM probe of each round) and
        ``bytes_per_param``.
    n_params : dict
        The number of parameters in each list (``"large"``, ``"small"``).

    Returns
    -------
    dict
        Per list: cnnkit's median time and its spread, GB/s and the fraction of the probed
        bandwidth, ns per parameter, the NumPy and torch medians and ratios (torch's fastest
        variant as ``torch_best``), and ``series`` with the per-round values of every judged
        figure; on ``"small"`` also the per-parameter cost against ``"large"``.
    """
    out = {}
    nb = res["bytes_per_param"]
    for L, times in res["times_s"].items():
        tc = np.array(times["cnnkit"])
        probe = np.array(res["probe_gbs"][L])
        total_bytes = nb * n_params[L]
        frac = total_bytes / tc / 1e9 / probe
        # series: the per-round values of every judged figure (their spread decides whether the
        # figure can be judged against its target)
        s = {"cnnkit_ms": 1e3 * _med(tc), "cnnkit_spread": spread(tc),
             "gbs": total_bytes / _med(tc) / 1e9,
             "probe_gbs": _med(probe),
             "frac_bw": _med(frac),
             "ns_per_param": 1e9 * _med(tc) / n_params[L],
             "inner": res.get("inner", {}).get(L),
             "series": {"frac_bw": [float(x) for x in frac]}}
        s["numpy_ms"] = 1e3 * _med(times["numpy"])
        s["vs_numpy"] = _med(np.array(times["numpy"]) / tc)
        tv = {k[len("torch "):]: np.array(v) for k, v in times.items() if k.startswith("torch ")}
        s["torch_ms"] = {v: 1e3 * _med(t) for v, t in tv.items()}
        if tv:
            best = min(tv, key=lambda v: _med(tv[v]))
            s["torch_best"] = best
            s["torch_best_ms"] = 1e3 * _med(tv[best])
            s["vs_torch_best"] = _med(tv[best] / tc)
            s["vs_torch"] = {v: _med(t / tc) for v, t in tv.items()}
            s["vs_torch_iqr"] = {v: [float(q) for q in np.percentile(t / tc, [25, 75])]
                                 for v, t in tv.items()}
            s["series"]["vs_torch"] = {v: [float(x) for x in t / tc] for v, t in tv.items()}
        out[L] = s
    if "large" in out and "small" in out:
        tl = np.array(res["times_s"]["large"]["cnnkit"]) / n_params["large"]
        ts = np.array(res["times_s"]["small"]["cnnkit"]) / n_params["small"]
        out["small"]["small_over_large"] = _med(ts / tl)
        out["small"]["series"]["small_over_large"] = [float(x) for x in ts / tl]
        for v in out["small"].get("torch_ms", {}):
            k = "torch " + v
            r = (np.array(res["times_s"]["small"][k]) / n_params["small"]) / (
                np.array(res["times_s"]["large"][k]) / n_params["large"])
            out["small"].setdefault("torch_small_over_large", {})[v] = _med(r)
    return out


def targets(algo: str, L: str, s: dict) -> list:
    """The targets of one row of the table, judged.

    Parameters
    ----------
    algo : str
        The algorithm's name (a key of ``ALGOS``; its fused flag picks the torch peer).
    L : str
        The list: ``"large"`` (bandwidth and torch targets) or ``"small"`` (torch and the
        per-parameter cost against the large list).
    s : dict
        The list's summary from :func:`summarize`.

    Returns
    -------
    list of tuple
        ``(description, value, threshold, met, spread)`` per target, as
        :func:`cnnkit.bench._common.target` makes them; ``met`` is None when the figure was not
        measured or is too noisy to judge.
    """
    has_fused = ALGOS[algo][5]
    ser = s.get("series", {})
    vs = ser.get("vs_torch", {})
    t = []
    if L == "large":
        t.append(target("% of in-place BW", s["frac_bw"], TARGET_BW, ser.get("frac_bw")))
        if has_fused:
            t.append(target("x torch fused", s.get("vs_torch", {}).get("fused"), TARGET_VS_FUSED,
                            vs.get("fused")))
        else:
            t.append(target("x torch fastest", s.get("vs_torch_best"), TARGET_VS_FASTEST,
                            vs.get(s.get("torch_best"))))
    else:
        t.append(target("x torch fastest", s.get("vs_torch_best"), TARGET_SMALL_VS_TORCH,
                        vs.get(s.get("torch_best"))))
        t.append(target("per-param cost / large", s.get("small_over_large"),
                        TARGET_SMALL_PER_ELEM, ser.get("small_over_large")))
    return t


# ---- printing ----------------------------------------------------------------------------------
def render(summary: list, lists: list, n_params: dict, have_torch: bool) -> str:
    """The benchmark's Markdown tables.

    Parameters
    ----------
    summary : list of (str, dict)
        Per algorithm, its summary per parameter list (:func:`summarize`).
    lists : list of str
        The parameter lists measured ("large", "small").
    n_params : dict
        Parameters in each list, by list name.
    have_torch : bool
        Whether torch ran (its columns and the torch.optim variants' table).

    Returns
    -------
    str
        The tables, one line each, ready to print: the main table (time, bandwidth, fraction of
        the in-place bandwidth, the peers' times and ratios, the targets), then the torch.optim
        variants' table and the per-parameter cost of the small list against the large one
        where those were measured.
    """
    lines = []
    lines.append("| list | algorithm | cnnkit ms ±spread | calls/sample | GB/s | "
                 "% of in-place BW (kernel) | numpy ms | torch best ms (variant) | vs torch best | "
                 "vs numpy | targets |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for L in lists:
        for algo, s_all in summary:
            s = s_all[L]
            kind = ALGOS[algo][2]
            tb = (f"{_f(s['torch_best_ms'])} ({s['torch_best']})" if have_torch and "torch_best" in s
                  else "-")
            vt = f"{s['vs_torch_best']:.2f}x" if "vs_torch_best" in s else "-"
            sp = s.get("cnnkit_spread")
            lines.append(
                f"| {L} | {ALGOS[algo][0]} | {_f(s['cnnkit_ms'])}"
                f"{'' if sp is None else f' ±{100 * sp:.0f}%'} | "
                f"{(s.get('inner') or {}).get('cnnkit', '-')} | {_f(s['gbs'])} | "
                f"{100 * s['frac_bw']:.0f}% ({kind} {_f(s['probe_gbs'])} GB/s) | "
                f"{_f(s['numpy_ms'])} | {tb} | {vt} | {s['vs_numpy']:.1f}x | "
                f"{target_text(targets(algo, L, s))} |")
    if have_torch:
        lines.append("")
        lines.append("torch.optim variants (median ms per step; cnnkit's speedup over each: "
                     "median of per-round ratios [interquartile range]):")
        lines.append("")
        lines.append("| list | algorithm | fused ms | foreach ms | for-loop ms | vs fused | "
                     "vs foreach | vs for-loop |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for L in lists:
            for algo, s_all in summary:
                s = s_all[L]
                ms = [(_f(s["torch_ms"][v]) if v in s["torch_ms"] else "n/a")
                      for v, _ in TORCH_VARIANTS]
                vs = [(f"{s['vs_torch'][v]:.2f}x [{s['vs_torch_iqr'][v][0]:.2f}–"
                       f"{s['vs_torch_iqr'][v][1]:.2f}]" if v in s["vs_torch"] else "n/a")
                      for v, _ in TORCH_VARIANTS]
                lines.append(f"| {L} | {ALGOS[algo][0]} | " + " | ".join(ms + vs) + " |")
    if "large" in lists and "small" in lists:
        lines.append("")
        lines.append(f"Per-parameter cost, small list ({n_params['small']:,} params in many "
                     f"tensors) / large list ({n_params['large']:,}), median of per-round ratios:")
        lines.append("")
        lines.append("| algorithm | cnnkit ns/param large | cnnkit ns/param small | cnnkit small/large |"
                     " torch best small/large (variant) |")
        lines.append("|---|---|---|---|---|")
        for algo, s_all in summary:
            sl, ss = s_all["large"], s_all["small"]
            tr = "-"
            if "torch_small_over_large" in ss:
                v = ss["torch_best"]
                tr = f"{ss['torch_small_over_large'][v]:.2f} ({v})"
            lines.append(f"| {ALGOS[algo][0]} | {_f(sl['ns_per_param'])} | "
                         f"{_f(ss['ns_per_param'])} | {ss['small_over_large']:.2f} | {tr} |")
    return "\n".join(lines)


# ---- entry point -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench optim",
        description="Optimizer step: cnnkit.optim vs NumPy and torch.optim, interleaved with "
                    "STREAM probes of the matching in-place kernel.")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for cnnkit and torch (default: cnnkit's current count)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed rounds per algorithm (default 21; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--algos", default=",".join(ALGOS),
                   help=f"comma-separated subset of {','.join(ALGOS)}")
    p.add_argument("--lists", default="large,small", help="comma-separated subset of large,small")
    p.add_argument("--quick", action="store_true",
                   help=f"smaller lists ({QUICK_TOTAL:,} params, {QUICK_SMALL_COUNT} small "
                        "tensors) and 5 rounds: a smoke run")
    p.add_argument("--probe-reps", type=int, default=3,
                   help="STREAM repetitions per probe (default 3)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if importable")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of cnnkit and NumPy against torch before timing")
    p.add_argument("--min-sample-ms", type=float, default=MIN_SAMPLE_MS,
                   help=f"a timed sample lasts at least this long: shorter steps are repeated back "
                        f"to back, up to {MAX_INNER} per sample (default {MIN_SAMPLE_MS:g}; 0 = "
                        "one step per sample)")
    p.add_argument("--json", metavar="PATH", help="write raw per-round numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the optimizer benchmark (``cnnkit bench optim``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench optim --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    lists = [x.strip() for x in args.lists.split(",") if x.strip()]
    for a in algos:
        if a not in ALGOS:
            print(f"--algos: unknown algorithm {a!r}; expected names from {','.join(ALGOS)}",
                  file=sys.stderr)
            return 2
    for x in lists:
        if x not in ("large", "small"):
            print(f"--lists: unknown list {x!r}; expected large and/or small", file=sys.stderr)
            return 2
    reps = args.reps if args.reps is not None else (5 if args.quick else 21)
    if reps < 1 or args.warmup < 0 or args.probe_reps < 1 or not args.min_sample_ms >= 0:
        print("--reps and --probe-reps must be >= 1, --warmup and --min-sample-ms >= 0",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()

    torch = import_torch(args.no_torch, threads)
    extra = peer_header(torch)

    total = QUICK_TOTAL if args.quick else SHAPES["total_params"]
    n_small = QUICK_SMALL_COUNT if args.quick else SHAPES["small_tensors"]["count"]
    small_size = SHAPES["small_tensors"]["size"]

    header = machine_header(extra)
    print(header)
    bad = [] if args.no_check else reference_check(torch, algos)
    if bad:
        print("\nreference check FAILED (timings would be meaningless):")
        for b in bad:
            print("  " + b)
        return 1
    if not args.no_check:
        print(f"reference check: cnnkit and the NumPy peer match torch.optim (for-loop) over 3 "
              f"steps for {', '.join(algos)}" if torch is not None else
              "reference check: cnnkit matches the NumPy peer over 3 steps")

    stream_arrays = make_stream_arrays(256)
    kinds = ("copy", "triad", "rw5", "rw7", "rw7_nt")
    bw_start = memory_bandwidth(kinds, mib=256, arrays=stream_arrays)
    print("STREAM at start (GB/s, 256 MiB arrays, {} threads): ".format(threads)
          + ", ".join(f"{k} {bw_start[k]:.1f}" for k in kinds))

    data, n_params = {}, {}
    if "large" in lists:
        data["large"] = make_large(total)
        n_params["large"] = total
    if "small" in lists:
        data["small"] = make_small(n_small, small_size)
        n_params["small"] = n_small * small_size
    desc = []
    if "large" in lists:
        sz = [p.size for p in data["large"][0]]
        desc.append(f"large = {len(sz)} tensors, {sum(sz):,} params (largest {max(sz):,}, "
                    f"smallest {min(sz):,})")
    if "small" in lists:
        desc.append(f"small = {n_small:,} tensors of {small_size:,}")
    print("Lists: " + "; ".join(desc) + f". {reps} timed rounds after {args.warmup} warm-up "
          f"rounds; STREAM probe of {args.probe_reps} reps per list per round.")
    print(f"A timed sample lasts at least {args.min_sample_ms:g} ms: shorter steps run back to "
          "back after an untimed one (at least calls/sample of them). ±spread = interquartile "
          "range of the rounds over their median; a target whose spread exceeds its margin reads "
          f"\"{NOISY}\".")

    t_start = time.perf_counter()
    grad_sums = {L: _grad_sums(data[L][1]) for L in lists}
    raw, summary = [], []
    for algo in algos:
        res = run_algo(torch, algo, lists, data, stream_arrays, reps, args.warmup,
                       args.probe_reps, args.min_sample_ms / 1e3)
        raw.append(res)
        summary.append((algo, summarize(res, n_params)))
        bad_p = [L for L in lists if not all(np.isfinite(p).all() for p in data[L][0][:5])]
        if bad_p:
            print(f"warning: non-finite parameters after {ALGOS[algo][0]} in {bad_p}")
        bad_g = [L for L in lists if _grad_sums(data[L][1]) != grad_sums[L]]
        if bad_g:  # every implementation reads these gradients: none may write them
            print(f"warning: the shared gradients changed during {ALGOS[algo][0]} in {bad_g}")
    elapsed = time.perf_counter() - t_start
    bw_end = memory_bandwidth(kinds, mib=256, arrays=stream_arrays)
    print("STREAM at end (GB/s): " + ", ".join(f"{k} {bw_end[k]:.1f}" for k in kinds)
          + f"  [timing took {elapsed:.0f} s]")
    print()
    print(render(summary, lists, n_params, torch is not None))
    print()
    all_t = [(ALGOS[a][0], L, t) for a, s in summary for L in lists for t in targets(a, L, s[L])]
    print(target_summary([t for *_, t in all_t]))
    for name, L, t in all_t:
        if t[3] is False:
            print(f"  missed: {L} {name}: {target_text([t])}")
    for name, L, t in all_t:
        if t[3] is None and t[1] is not None:
            print(f"  {NOISY}: {L} {name}: {target_text([t])}")

    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "reps": reps, "warmup": args.warmup,
               "probe_reps": args.probe_reps, "stream_start_gbs": bw_start,
               "stream_end_gbs": bw_end, "shapes": SHAPES,
               "lists": {L: [int(p.size) for p in data[L][0]] if L == "large"
                         else {"count": n_small, "size": small_size} for L in lists},
               "results": [dict(r, summary=s) for r, (_, s) in zip(raw, summary)],
               "min_sample_ms": args.min_sample_ms,
               "targets": [{"algorithm": a, "list": L, "target": t[0], "value": t[1],
                            "threshold": t[2], "met": t[3], "spread": t[4],
                            "verdict": judge(t[1], t[2], t[4],
                                             upper=t[0].startswith("per-param"))}
                           for a, L, t in all_t]}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
