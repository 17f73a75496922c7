"""cnnkit as a PyTorch backend: stock torch against ``cnnkit.torch.convert`` on torchvision models.

Run it as ``cnnkit bench torch [options]`` or ``python benchmarks/bench_torch.py [options]``;
``--help`` lists the options.

What is measured
----------------
For torchvision's mobilenet_v2, resnext50_32x4d and resnet18 (random initialisation, 1000
classes), on one fixed batch of 16 x 3 x 64 x 64 float32 images, at 2 threads (torch, cnnkit and
numpy's OpenBLAS):

* training step: ``zero_grad(set_to_none=True)``, forward, ``torch.nn.CrossEntropyLoss``,
  backward, Adam (lr 1e-3). Stock torch (eager) steps with ``torch.optim.Adam(fused=True)``
  (``foreach=True`` where this torch has no fused CPU Adam); cnnkit is ``convert(model)`` with
  ``cnnkit.torch.optim.Adam``.
* inference: ``model.eval()`` under ``torch.no_grad()``; cnnkit is
  ``convert(model, inference=True)`` (batch norm folded into the convolutions).
* the optimizer alone: one Adam step over the model's parameters, cnnkit against torch's fused
  and foreach Adam (:func:`cnnkit.bench._torch_optim.bench_optimizer`).

Each side runs in both memory formats (contiguous NCHW and ``channels_last``) and the faster one,
by median, is its figure. torch's channels_last configuration converts model and input; cnnkit's
converts the input only: its kernels take OIHW weights in both layouts (cnnkit.torch copies a
channels_last weight to OIHW on every call), so its activations flow NHWC while the weights stay
contiguous. Every configuration starts from the same
weights (deep copies of one model). Before timing, each cnnkit configuration's logits (training
mode) and inference output are compared with stock torch's (max |diff| / max |ref| within 1e-3);
a failure stops the benchmark.

Rounds, limits, ratios
----------------------
Each round runs one call of every configuration of a model, then a STREAM triad probe (odd rounds
in reverse order, probe first; :func:`cnnkit.bench._common.run_rounds`). Figures are medians over
rounds; the speedup is the median over rounds of (torch's faster configuration / cnnkit's faster
configuration) and is judged with :func:`cnnkit.bench._common.judge` (a spread of the rounds
larger than the margin is "noisy, not judged"). The machine's limit printed beside each figure is
the best 2048^3 OpenBLAS sgemm rate measured at the start (compute: the convolutions' and linear
layers' FLOPs per second, forward 2*MACs, backward 2x forward) or STREAM's ``rw7`` bandwidth
(the optimizer: Adam reads p, g, m, v and writes p, m, v, 28 bytes per float32 parameter).

Where the time goes
-------------------
A separate profiling pass runs a few steps of cnnkit's faster configurations with timers around
every call into ``cnnkit._core`` (the compiled kernels), around the forward and backward of
cnnkit.torch's autograd functions, and around the cnnkit optimizer's ``step``. A step splits into
cnnkit kernels (time inside ``_core``), boundary (cnnkit.torch's Python around the kernels:
argument checks, NumPy views, output allocation, the optimizer's gathering of tensors) and torch
(everything else: autograd, the modules cnnkit does not replace such as ReLU6, pooling and the
linear layer, the loss, the residual adds of mobilenet_v2). Medians over the profiled steps.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

import numpy as np

import cnnkit
from cnnkit.bench import machine_header, memory_bandwidth
from cnnkit.bench._common import fmt as _f
from cnnkit.bench._common import (
    Emitter,
    import_torch,
    import_torchvision,
    judge,
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

__all__ = ["MODELS", "TARGETS", "build_model", "check", "main", "model_flops", "profile_split"]

MODELS = ("mobilenet_v2", "resnext50_32x4d", "resnet18")
JUDGED = ("mobilenet_v2", "resnext50_32x4d")      # the targets; resnet18 is shown
TARGETS = {"training": 1.3, "inference": 1.3, "optimizer": 1.1}
BATCH, QUICK_BATCH = 16, 2
IMAGE, QUICK_IMAGE = 64, 64
LR = 1e-3
CHECK_RTOL = 1e-3
PROBE_KIND = "triad"
FORMATS = ("NCHW", "CL")


# ---- models and configurations -------------------------------------------------------------------
def build_model(tv: Any, name: str, seed: int = 0) -> Any:
    """torchvision's ``name``, randomly initialised, 1000 classes, dropout off (so that the two
    sides' training steps compute the same thing).

    Parameters
    ----------
    tv : module
        torchvision (from :func:`cnnkit.bench._common.import_torchvision`).
    name : str
        One of :data:`MODELS`.
    seed : int
        torch's seed for the initialisation.

    Returns
    -------
    torch.nn.Module
        The model, in training mode.
    """
    import torch

    if name not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    torch.manual_seed(seed)
    m = getattr(tv.models, name)()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    return m


def model_flops(torch: Any, model: Any, x: Any) -> tuple:
    """FLOPs of the convolutions and linear layers of ``model`` on ``x``: forward 2*MACs; backward
    2x forward, except the first convolution (no input gradient).

    Parameters
    ----------
    torch : module
        The torch module.
    model : torch.nn.Module
        The model (run once on ``x`` with forward hooks).
    x : torch.Tensor
        The input batch.

    Returns
    -------
    tuple of float
        (forward FLOPs, training-step FLOPs).
    """
    flops: list = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            flops.append(2.0 * out.numel() * k)
        elif isinstance(m, torch.nn.Linear):
            flops.append(2.0 * out.numel() * m.in_features)

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    fwd = sum(flops)
    return fwd, fwd + 2 * fwd - (flops[0] if flops else 0.0)


def torch_adam_kwargs(torch: Any) -> tuple:
    """(kwargs, description) of torch's Adam: fused where this torch has a fused CPU Adam."""
    from cnnkit.bench.train import torch_adam_kwargs as kw
    return kw(torch)


class _Train:
    """One training configuration: model (in its memory format), loss, optimizer, batch."""

    def __init__(self, torch, model, cl, x, y, opt, weights_cl=True):
        self.torch = torch
        if cl:
            if weights_cl:
                model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.x, self.y = model.train(), x, y
        self.crit = torch.nn.CrossEntropyLoss()
        self.opt = opt(model.parameters())

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        self.crit(self.model(self.x), self.y).backward()
        self.opt.step()

    def phases(self, clock):
        self.opt.zero_grad(set_to_none=True)
        loss = self.crit(self.model(self.x), self.y)
        clock("forward")
        loss.backward()
        clock("backward")
        self.opt.step()
        clock("optimizer")


class _Infer:
    """One inference configuration: eval model under no_grad."""

    def __init__(self, torch, model, cl, x, weights_cl=True):
        self.torch = torch
        if cl:
            if weights_cl:
                model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.x = model.eval(), x

    def __call__(self):
        with self.torch.no_grad():
            return self.model(self.x)

    def phases(self, clock):
        self()
        clock("forward")


def build_configs(torch, tv, name: str, batch: int, image: int, adam_kw: dict) -> dict:
    """The timed configurations of one model, each on its own copy of the same starting weights.

    Parameters
    ----------
    torch, tv : module
        ``torch`` and torchvision (imported by the caller; see :mod:`cnnkit.bench._common`).
    name : str
        A torchvision model name (``"resnext50_32x4d"``, ``"mobilenet_v2"``, ...).
    batch, image : int
        Images per step and their side in pixels.
    adam_kw : dict
        Extra keyword arguments of torch's Adam (``{"fused": True}`` where available).

    Returns
    -------
    dict
        ``{"train": {config: callable}, "infer": {config: callable}, "x", "y", "base"}``:
        configurations "torch NCHW/CL" and "cnnkit NCHW/CL", the input batch, the labels and the
        model they were copied from.
    """
    import cnnkit.torch as ct

    base = build_model(tv, name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, image, image, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    train: dict = {}
    infer: dict = {}
    for fmt in FORMATS:
        cl = fmt == "CL"
        train[f"torch {fmt}"] = _Train(torch, copy.deepcopy(base), cl, x, y,
                                       lambda ps: torch.optim.Adam(ps, lr=LR, **adam_kw))
        train[f"cnnkit {fmt}"] = _Train(torch, ct.convert(base), cl, x, y,
                                        lambda ps: ct.optim.Adam(ps, lr=LR), weights_cl=False)
        infer[f"torch {fmt}"] = _Infer(torch, copy.deepcopy(base).eval(), cl, x)
        infer[f"cnnkit {fmt}"] = _Infer(torch, ct.convert(copy.deepcopy(base).eval(), inference=True),
                                        cl, x, weights_cl=False)
    return {"train": train, "infer": infer, "x": x, "y": y, "base": base}


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape or not bool(a.isfinite().all()):
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check(torch, cfg: dict) -> tuple:
    """Each cnnkit configuration's training-mode logits and inference output against stock
    torch NCHW's on the configuration's own (identical) weights, before any step is taken.

    Parameters
    ----------
    torch : module
    cfg : dict
        As :func:`build_configs` returns it.

    Returns
    -------
    tuple
        ``(failures, {config: (training logits error, inference error)})``: the failing
        configurations' descriptions (a list of str) and each error as max |diff| / max |ref|.
    """
    ref_t = cfg["train"]["torch NCHW"]
    ref_i = cfg["infer"]["torch NCHW"]
    with torch.no_grad():
        want_t = ref_t.model(ref_t.x)
        # the training-mode forward updates running statistics: restore them afterwards
        want_i = ref_i()
    bad, errs = [], {}
    for c in ("cnnkit NCHW", "cnnkit CL"):
        st = cfg["train"][c]
        saved = copy.deepcopy(st.model.state_dict())
        with torch.no_grad():
            et = _rel(st.model(st.x), want_t)
        st.model.load_state_dict(saved)
        ei = _rel(cfg["infer"][c](), want_i)
        errs[c] = (et, ei)
        if not et <= CHECK_RTOL:
            bad.append(f"{c}: training-mode logits differ from torch's (max |diff| / max |ref| = {et:.2g})")
        if not ei <= CHECK_RTOL:
            bad.append(f"{c}: inference output differs from torch's (max |diff| / max |ref| = {ei:.2g})")
    ref_t.model.load_state_dict(cfg["base"].state_dict())
    return bad, errs


# ---- where the time goes -------------------------------------------------------------------------
class _Split:
    """Timers around cnnkit._core calls and cnnkit.torch's autograd functions and optimizer."""

    def __init__(self):
        self.kernel = 0.0       # seconds inside _core
        self.kernel_in = 0.0    # of which inside a cnnkit.torch region
        self.region = 0.0       # seconds inside cnnkit.torch Python regions (inclusive)
        self.per_kernel: dict = {}
        self.depth = 0
        self._undo: list = []

    def _wrap_kernel(self, name, fn):
        split = self

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                split.kernel += dt
                if split.depth:
                    split.kernel_in += dt
                n, s = split.per_kernel.get(name, (0, 0.0))
                split.per_kernel[name] = (n + 1, s + dt)
        return timed

    def _wrap_region(self, fn):
        split = self

        def timed(*a, **k):
            split.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                split.depth -= 1
                if split.depth == 0:
                    split.region += time.perf_counter() - t0
        return timed

    def install(self, torch, optimizers) -> None:
        from cnnkit import _core
        from cnnkit.torch import functional as ctf

        for name in dir(_core):
            fn = getattr(_core, name)
            if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
                setattr(_core, name, self._wrap_kernel(name, fn))
                self._undo.append((_core, name, fn))
        for name in dir(ctf):
            cls = getattr(ctf, name)
            if (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)
                    and cls.__module__ == ctf.__name__):
                for meth in ("forward", "backward"):
                    orig = cls.__dict__.get(meth)
                    if isinstance(orig, staticmethod):
                        setattr(cls, meth, staticmethod(self._wrap_region(orig.__func__)))
                        self._undo.append((cls, meth, orig))
        for name in getattr(ctf, "__all__", ()):   # the no-grad path skips the autograd functions
            fn = getattr(ctf, name)
            if callable(fn) and name not in ("can_run", "fallback_reason"):
                setattr(ctf, name, self._wrap_region(fn))
                self._undo.append((ctf, name, fn))
        for opt in optimizers:
            opt.step = self._wrap_region(opt.step)
            self._undo.append((opt, "step", None))

    def remove(self) -> None:
        for obj, name, orig in reversed(self._undo):
            if orig is None:
                del obj.__dict__[name]
            else:
                setattr(obj, name, orig)
        self._undo.clear()

    def take(self) -> tuple:
        """(kernel s, kernel s inside regions, region s) since the last call; resets them."""
        out = (self.kernel, self.kernel_in, self.region)
        self.kernel = self.kernel_in = self.region = 0.0
        return out


def profile_split(torch, steps: dict, n: int) -> dict:
    """Where the time of each configuration of ``steps`` goes.

    ``n`` steps per configuration, round-robin, with the timers of :class:`_Split` installed.

    Parameters
    ----------
    torch : module
        The imported ``torch`` (an optional peer, passed in rather than imported here).
    steps : dict
        ``{configuration name: step object}``; each step has ``phases(clock)``, and a cnnkit
        configuration's an ``opt``.
    n : int
        Steps per configuration.

    Returns
    -------
    dict
        ``{config: {"step_ms", "phases_ms": {phase: ms}, and for cnnkit configurations
        "kernels_ms", "boundary_ms", "torch_ms", "per_kernel": {name: (calls, ms) per step}}}``,
        every figure the median over the ``n`` steps (per_kernel: the mean).
    """
    split = _Split()
    opts = [s.opt for c, s in steps.items() if c.startswith("cnnkit") and hasattr(s, "opt")]
    rec: dict = {c: {"step": [], "kernels": [], "boundary": [], "torch": [], "phases": {},
                     "per_kernel": {}} for c in steps}
    split.install(torch, opts)
    try:
        for _ in range(n):
            for c, st in steps.items():
                r = rec[c]
                marks: list = []
                split.per_kernel = r["per_kernel"]
                split.take()
                t0 = time.perf_counter()
                st.phases(lambda ph: marks.append((ph, time.perf_counter())))
                total = time.perf_counter() - t0
                kern, kern_in, region = split.take()
                r["step"].append(total)
                prev = t0
                for ph, t in marks:
                    r["phases"].setdefault(ph, []).append(t - prev)
                    prev = t
                if c.startswith("cnnkit"):
                    boundary = max(region - kern_in, 0.0)
                    r["kernels"].append(kern)
                    r["boundary"].append(boundary)
                    r["torch"].append(max(total - kern - boundary, 0.0))
    finally:
        split.remove()
    out: dict = {}
    for c, r in rec.items():
        o: dict = {"step_ms": 1e3 * med(r["step"]),
                   "phases_ms": {ph: 1e3 * med(v) for ph, v in r["phases"].items()}}
        if c.startswith("cnnkit"):
            for k in ("kernels", "boundary", "torch"):
                o[f"{k}_ms"] = 1e3 * med(r[k])
            o["per_kernel"] = {k: (calls / n, 1e3 * s / n) for k, (calls, s) in r["per_kernel"].items()}
        out[c] = o
    return out


# ---- summaries and tables ------------------------------------------------------------------------
def _best(times: dict, side: str):
    """The configuration of ``side`` ("torch"/"cnnkit") with the smallest median time."""
    cands = {c: float(np.median(v)) for c, v in times.items() if c.startswith(side) and v}
    return min(cands, key=lambda c: cands[c]) if cands else None


def summarize(times: dict, flops: float) -> dict:
    """Medians, each side's faster configuration, the speedup and GFLOP/s.

    Parameters
    ----------
    times : dict
        ``{configuration name: [seconds per round]}``, names starting with "torch" or "cnnkit".
    flops : float
        FLOPs of one step.

    Returns
    -------
    dict
        ``ms`` (median ms per configuration), ``best_torch`` and ``best_cnnkit`` (each side's
        faster configuration, or None), ``speedup`` (median over rounds of torch-best /
        cnnkit-best), ``speedup_spread``, ``ratios``, ``gflops_torch`` and ``gflops_cnnkit``.
    """
    bt, bc = _best(times, "torch"), _best(times, "cnnkit")
    ms = {c: 1e3 * med(v) for c, v in times.items() if v}
    out: dict = {"ms": ms, "best_torch": bt, "best_cnnkit": bc, "speedup": None,
                 "speedup_spread": None, "ratios": []}
    if bt and bc:
        ratios = [a / b for a, b in zip(times[bt], times[bc])]
        out.update(speedup=med(ratios), speedup_spread=spread(ratios), ratios=ratios)
    for side, c in (("torch", bt), ("cnnkit", bc)):
        out[f"gflops_{side}"] = flops / (ms[c] * 1e-3) / 1e9 if c else None
    return out


def _table(head, rows, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt_row = lambda r: "  ".join(str(x).rjust(n) if i else str(x).ljust(n)  # noqa: E731
                                  for i, (x, n) in enumerate(zip(r, w)))
    return "\n".join([fmt_row(head), fmt_row(["-" * n for n in w])] + [fmt_row(r) for r in rows])


def render_steps(kind: str, summaries: dict, peak: float, markdown: bool) -> tuple:
    """The training or inference table and its targets.

    Parameters
    ----------
    kind : str
        ``"training"`` or ``"inference"`` (a key of ``TARGETS``).
    summaries : dict
        ``{model: summary}`` as :func:`summarize` gives them.
    peak : float
        The compute roof in GFLOP/s that the "% roof" columns use.
    markdown : bool
        A markdown table instead of aligned text.

    Returns
    -------
    tuple
        ``(table text, targets)``, the targets one per judged model.
    """
    head = ["model", "torch NCHW ms", "torch CL ms", "cnnkit NCHW ms", "cnnkit CL ms",
            "torch best GFLOP/s (% roof)", "cnnkit best GFLOP/s (% roof)", "x torch (±spread)",
            f"target >= {TARGETS[kind]:g}"]
    rows, targets = [], []
    for name, s in summaries.items():
        ms = s["ms"]

        def cell(c):
            star = "*" if c in (s["best_torch"], s["best_cnnkit"]) else ""
            return _f(ms.get(c)) + star

        def rate(side):
            g = s[f"gflops_{side}"]
            return "-" if g is None else f"{_f(g)} ({100 * g / peak:.0f}%)"

        sp = s["speedup"]
        sp_txt = "-" if sp is None else f"{sp:.2f}x" + (f" ±{100 * s['speedup_spread']:.0f}%"
                                                      if s["speedup_spread"] is not None else "")
        if name in JUDGED:
            verdict = judge(sp, TARGETS[kind], s["speedup_spread"])
            targets.append(target(f"{kind} {name}", sp, TARGETS[kind], s["ratios"] or None))
        else:
            verdict = "shown, not a target"
        rows.append([name, cell("torch NCHW"), cell("torch CL"), cell("cnnkit NCHW"),
                     cell("cnnkit CL"), rate("torch"), rate("cnnkit"), sp_txt, verdict])
    return _table(head, rows, markdown), targets


def render_optim(res: dict, rw7: float, markdown: bool) -> tuple:
    """The optimizer-alone table (Adam over each model's parameters) and its targets.

    Parameters
    ----------
    res : dict
        ``{model: result}`` of the optimizer benchmark (``"ms"``, ``"speedup"``, ``"n_params"``,
        ``"n_tensors"`` and optionally ``"speedup_spread"``).
    rw7 : float
        The STREAM rw7 bandwidth in GB/s that the "% of STREAM rw7" column uses.
    markdown : bool
        A markdown table instead of aligned text.

    Returns
    -------
    tuple
        ``(table text, targets)``, the targets one per judged model.
    """
    head = ["model", "parameters", "cnnkit ms", "torch fused ms", "torch foreach ms",
            "cnnkit GB/s (% of STREAM rw7)", "x torch fused", f"target >= {TARGETS['optimizer']:g}"]
    rows, targets = [], []
    for name, r in res.items():
        ms = r["ms"]
        gbs = 28.0 * r["n_params"] / (ms["cnnkit"] * 1e-3) / 1e9
        sp = r["speedup"].get("torch_fused")
        sp_spread = r.get("speedup_spread")
        if name in JUDGED:
            verdict = judge(sp, TARGETS["optimizer"], sp_spread)
            targets.append(target(f"optimizer {name}", sp, TARGETS["optimizer"],
                                  rel_spread=sp_spread))
        else:
            verdict = "shown, not a target"
        rows.append([name, f"{r['n_params'] / 1e6:.1f} M in {r['n_tensors']} tensors",
                     _f(ms["cnnkit"]), _f(ms.get("torch_fused")), _f(ms.get("torch_foreach")),
                     f"{_f(gbs)} ({100 * gbs / rw7:.0f}%)", "-" if sp is None else f"{sp:.2f}x",
                     verdict])
    return _table(head, rows, markdown), targets


def render_split(name: str, kind: str, prof: dict, best_t: str, best_c: str, markdown: bool,
                 top: int = 6) -> str:
    """Where the time of cnnkit's faster configuration goes, beside torch's faster one.

    Parameters
    ----------
    name : str
        The model (the caller's heading; not shown in the table).
    kind : str
        ``"training"`` or ``"inference"`` (likewise).
    prof : dict
        ``{configuration: profile}`` of the profiling pass (``"step_ms"``, ``"phases_ms"``,
        ``"kernels_ms"``, ``"boundary_ms"``, ``"torch_ms"``, ``"per_kernel"``).
    best_t, best_c : str
        torch's and cnnkit's faster configurations.
    markdown : bool
        A markdown table instead of aligned text.
    top : int
        Kernels listed by time.

    Returns
    -------
    str
        The table: the step's phases, cnnkit's kernels, the boundary and torch's own time, the
        ``top`` kernels, and the profiled step's total.
    """
    pc, pt = prof[best_c], prof.get(best_t)
    step = pc["step_ms"]
    head = ["", f"{best_c} ms", "% of step", f"{best_t} ms"]
    rows = []
    for ph, v in pc["phases_ms"].items():
        rows.append([f"phase: {ph}", _f(v), f"{100 * v / step:.0f}%",
                     _f(pt["phases_ms"].get(ph)) if pt else "-"])
    for k, label in (("kernels_ms", "cnnkit kernels (inside cnnkit._core)"),
                     ("boundary_ms", "boundary (cnnkit.torch Python around the kernels)"),
                     ("torch_ms", "torch (autograd, unreplaced modules, loss, adds)")):
        rows.append([label, _f(pc[k]), f"{100 * pc[k] / step:.0f}%", "-"])
    kern = sorted(pc["per_kernel"].items(), key=lambda kv: -kv[1][1])[:top]
    for kname, (calls, ms) in kern:
        rows.append([f"  kernel {kname} ({calls:.0f} calls; mean over steps)", _f(ms),
                     f"{100 * ms / step:.0f}%", "-"])
    rows.append(["profiled step (timers on)", _f(step), "100%", _f(pt["step_ms"]) if pt else "-"])
    return _table(head, rows, markdown)


# ---- entry point ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkit bench torch",
        description="Stock PyTorch against cnnkit.torch.convert(model) with cnnkit.torch.optim.Adam "
                    "on torchvision's mobilenet_v2, resnext50_32x4d and resnet18: one training step "
                    "(forward, cross-entropy, backward, Adam) and one inference forward (eval, "
                    "no_grad, batch norm folded), each side in its faster memory format, same "
                    "weights; then Adam alone against torch's fused Adam, and where the time goes.")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)} (default all)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch, cnnkit and OpenBLAS "
                                                          "(default 2)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"images per call (default {BATCH}; {QUICK_BATCH} with --quick)")
    p.add_argument("--image", type=int, default=None,
                   help=f"image height and width (default {IMAGE}; {QUICK_IMAGE} with --quick)")
    p.add_argument("--repeats", "--reps", dest="reps", type=int, default=None,
                   help="timed rounds (default 7; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default 2; 0 with --quick)")
    p.add_argument("--optim-steps", type=int, default=None,
                   help="timed optimizer steps per variant (default 20; 2 with --quick)")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="steps per configuration in the where-the-time-goes pass (default 3; 1 "
                        "with --quick; 0 skips it)")
    p.add_argument("--stream-mib", type=int, default=None,
                   help="MiB per STREAM probe array (default 256; 16 with --quick)")
    p.add_argument("--gemm-size", type=int, default=None,
                   help="n of the n^3 sgemm roof probe (default 2048; 256 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: batch {QUICK_BATCH} at {QUICK_IMAGE}x{QUICK_IMAGE}, one round, "
                        "small probes; numbers not representative")
    p.add_argument("--no-check", action="store_true",
                   help="skip the comparison of every cnnkit configuration with torch")
    p.add_argument("--markdown", action="store_true",
                   help="print the tables as markdown (header in a code block), for BENCHMARKS.md")
    p.add_argument("--json", metavar="PATH", help="write raw per-round numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the PyTorch-backend benchmark (``cnnkit bench torch``) and print its tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench torch --help`` lists
        them.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when a cnnkit configuration disagrees with torch, 2 on
        bad arguments or without torch/torchvision.
    """
    args = _parser().parse_args(argv)
    try:
        names = parse_list(args.models, MODELS, "--models", require=True)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    q = args.quick
    batch = args.batch if args.batch is not None else (QUICK_BATCH if q else BATCH)
    image = args.image if args.image is not None else (QUICK_IMAGE if q else IMAGE)
    reps = args.reps if args.reps is not None else (1 if q else 7)
    warmup = args.warmup if args.warmup is not None else (0 if q else 2)
    osteps = args.optim_steps if args.optim_steps is not None else (2 if q else 20)
    psteps = args.profile_steps if args.profile_steps is not None else (1 if q else 3)
    mib = args.stream_mib if args.stream_mib is not None else (16 if q else 256)
    gemm_n = args.gemm_size if args.gemm_size is not None else (256 if q else 2048)
    if (min(batch, reps, osteps, mib, gemm_n, args.threads) < 1 or image < 32 or warmup < 0
            or psteps < 0):
        print("--batch, --repeats, --optim-steps, --stream-mib, --gemm-size, --threads must be >= 1; "
              "--image >= 32; --warmup, --profile-steps >= 0", file=sys.stderr)
        return 2
    torch = import_torch(False, args.threads)
    tv = import_torchvision() if torch is not None else None
    if torch is None or tv is None:
        print("cnnkit bench torch needs torch and torchvision", file=sys.stderr)
        return 2
    from cnnkit.bench.conv import _OpenBLAS

    cnnkit.set_num_threads(args.threads)
    threads = cnnkit.get_num_threads()
    blas = _OpenBLAS()
    blas0 = blas.threads()
    blas.set_threads(threads)
    try:
        return _run(args, torch, tv, blas, threads, names, batch, image, reps, warmup, osteps,
                    psteps, mib, gemm_n, argv)
    finally:
        if blas0 is not None:
            blas.set_threads(blas0)


def _run(args, torch, tv, blas, threads, names, batch, image, reps, warmup, osteps, psteps, mib,
         gemm_n, argv) -> int:
    from cnnkit.bench._torch_optim import bench_optimizer
    from cnnkit.bench.conv import gemm_peak
    from cnnkit.bench.train import CpuShare, _share_text

    md = args.markdown
    emit = Emitter(md)
    extra = peer_header(torch)
    extra["torchvision"] = tv.__version__
    extra["numpy BLAS"] = blas.describe()
    header = machine_header(extra)
    emit(header)
    adam_kw, adam_desc = torch_adam_kwargs(torch)
    emit(f"Training step: zero_grad, forward, cross-entropy, backward, Adam (lr {LR:g}) on one "
         f"fixed batch of {batch} x 3x{image}x{image} float32 images, 1000 classes; torch eager "
         f"with {adam_desc}; cnnkit = cnnkit.torch.convert(model) with cnnkit.torch.optim.Adam. "
         "Inference: eval, no_grad; cnnkit = convert(model, inference=True) (batch norm folded).")

    cfgs = {n: build_configs(torch, tv, n, batch, image, adam_kw) for n in names}
    flops = {n: model_flops(torch, cfgs[n]["base"], cfgs[n]["x"]) for n in names}
    if not args.no_check:
        failures = []
        for n in names:
            bad, errs = check(torch, cfgs[n])
            failures += [f"{n}: {b}" for b in bad]
            emit(f"check {n} (max |diff| / max |ref| against torch NCHW; training logits / "
                 "inference output): " + ", ".join(f"{c} {a:.1g} / {b:.1g}" for c, (a, b) in errs.items())
                 + (f": within {CHECK_RTOL:g}" if not bad else ""))
        if failures:
            emit.flush()
            print("\ncheck FAILED (timings would be meaningless):")
            for b in failures:
                print("  " + b)
            return 1

    stream: Any = stream_arrays(mib)
    bw = memory_bandwidth(("triad", "rw7"), mib=mib, arrays=stream)
    gemm = gemm_peak(gemm_n)
    peak = max(gemm)
    emit(f"Machine limits at start ({threads} threads): STREAM triad {bw['triad']:.1f} GB/s, rw7 "
         f"{bw['rw7']:.1f} GB/s ({mib} MiB arrays); sgemm {gemm_n}^3 (numpy.matmul, OpenBLAS) best "
         f"{peak:.0f} GFLOP/s, the compute roof beside the GFLOP/s figures.")
    emit(f"{reps} timed rounds after {warmup} warm-up rounds; a round runs every configuration of "
         f"one model once, then a STREAM {PROBE_KIND} probe (odd rounds reversed). * marks each "
         "side's faster configuration (by median); x torch = median over rounds of torch's faster "
         "/ cnnkit's faster time, ±spread = interquartile range over median of those ratios.")
    if args.quick:
        emit("--quick: a smoke run (tiny batch, one round); the numbers are not representative.")

    blocks: list = []
    for n in names:
        blocks.append((cfgs[n]["train"], lambda: probe(PROBE_KIND, stream, 1)))
        blocks.append((cfgs[n]["infer"], lambda: probe(PROBE_KIND, stream, 1)))
    share = CpuShare()
    t0 = time.perf_counter()
    times, probes = run_rounds(blocks, reps, warmup)
    elapsed = time.perf_counter() - t0
    share_text = _share_text(share.cores(), "the timed rounds")
    stream = None
    emit(f"STREAM {PROBE_KIND} probes during the rounds: "
         f"{min(min(p) for p in probes):.1f}-{max(max(p) for p in probes):.1f} GB/s "
         f"[timing took {elapsed:.0f} s]")
    if share_text:
        emit(share_text)

    optim: dict = {}
    for n in names:
        r = bench_optimizer(cfgs[n]["base"], steps=osteps, threads=threads, lr=LR,
                            warmup=1 if args.quick else 3)
        optim[n] = r
    emit.flush()

    results = []
    summaries: dict = {"training": {}, "inference": {}}
    for i, n in enumerate(names):
        summaries["training"][n] = summarize(times[2 * i], flops[n][1])
        summaries["inference"][n] = summarize(times[2 * i + 1], flops[n][0])
    all_targets = []
    for kind in ("training", "inference"):
        print()
        title = (f"{kind.capitalize()} ({'one step' if kind == 'training' else 'one forward'}, "
                 f"batch {batch} x 3x{image}x{image}; median ms; GFLOP/s of convolutions and "
                 f"linear layers, % of the sgemm roof {peak:.0f} GFLOP/s)")
        print(f"### {title}\n" if md else title)
        text, tg = render_steps(kind, summaries[kind], peak, md)
        print(text)
        all_targets += tg
    print()
    title = ("Optimizer alone (one Adam step over the model's parameters, median of "
             f"{osteps} steps; 28 bytes per parameter against STREAM rw7 {bw['rw7']:.1f} GB/s)")
    print(f"### {title}\n" if md else title)
    text, tg = render_optim(optim, bw["rw7"], md)
    print(text)
    all_targets += tg

    prof: dict = {}
    if psteps > 0:
        for n in names:
            for kind, key in (("training", "train"), ("inference", "infer")):
                s = summaries[kind][n]
                st = {c: cfgs[n][key][c] for c in (s["best_torch"], s["best_cnnkit"]) if c}
                p = profile_split(torch, st, psteps)
                prof[f"{n} {kind}"] = p
                print()
                title = (f"Where the time goes: {n} {kind} ({psteps} profiled steps per "
                         f"configuration, timers on; median ms per step)")
                print(f"### {title}\n" if md else title)
                print(render_split(n, kind, p, s["best_torch"], s["best_cnnkit"], md))
    print()
    print(target_text(all_targets))
    print(target_summary(all_targets))
    for kind in ("training", "inference"):
        for n, s in summaries[kind].items():
            results.append({"model": n, "kind": kind, "speedup": s["speedup"],
                            "speedup_spread": s["speedup_spread"], "ms": s["ms"],
                            "best_torch": s["best_torch"], "best_cnnkit": s["best_cnnkit"],
                            "times_s": times[2 * names.index(n) + (kind == "inference")]})
    if args.json:
        doc = {"header": header, "argv": list(argv) if argv is not None else sys.argv[1:],
               "threads": threads, "batch": batch, "image": image, "reps": reps, "warmup": warmup,
               "torch_adam": adam_desc, "stream_gbs": bw, "gemm_gflops": gemm, "flops": flops,
               "results": results, "optimizer": optim, "profile": prof,
               "targets": [{"name": t[0], "value": t[1], "threshold": t[2], "met": t[3],
                            "spread": t[4]} for t in all_targets]}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
