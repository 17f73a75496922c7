"""Optimizer step alone: ``cnnkit.torch.optim.Adam`` against ``torch.optim.Adam`` (fused, foreach).

Used by ``cnnkit bench torch``. Each variant updates its own copy of the model's parameters with
the same fixed random gradients; the variants take turns step by step (the order rotating), so
the drift of this VM's bandwidth hits all of them alike. Times are medians over steps; a speedup
is the median over steps of the ratio within the step's round (house rule: ratios within a round).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

import cnnkit
from cnnkit.bench._common import spread

__all__ = ["bench_optimizer"]


def bench_optimizer(model: Any, steps: int = 20, threads: int = 2, lr: float = 1e-3,
                    warmup: int = 3, seed: int = 0) -> dict:
    """Median time of one Adam step over ``model``'s parameters: cnnkit vs torch fused / foreach.

    Parameters
    ----------
    model : torch.nn.Module
        Its parameters (CPU) are cloned once per variant; the model itself is not modified.
    steps : int, default 20
        Timed steps per variant (after ``warmup`` untimed ones).
    threads : int, default 2
        Threads for torch and cnnkit (both settings are restored afterwards).
    lr : float, default 1e-3
        Adam's learning rate.
    warmup : int, default 3
        Untimed steps per variant (the state is created on the first).
    seed : int, default 0
        Seed of the gradients.

    Returns
    -------
    dict
        ``n_params``, ``n_tensors``, ``threads``, ``steps``; ``ms`` (variant -> median ms:
        ``cnnkit``, ``torch_fused``, ``torch_foreach``); ``speedup`` (torch variant -> median over
        rounds of its time / cnnkit's; the target is ``speedup['torch_fused'] >= 1.1``);
        ``speedup_spread`` (interquartile range / median of the fused ratios); ``max_abs_diff``
        of the parameters of cnnkit and torch fused after all steps.
    """
    import torch

    from cnnkit.torch.optim import Adam

    prev, prev_ck = torch.get_num_threads(), cnnkit.get_num_threads()
    torch.set_num_threads(threads)
    cnnkit.set_num_threads(threads)
    try:
        src = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        gen = torch.Generator().manual_seed(seed)
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in src]
        variants: dict = {}
        for name, make in (("cnnkit", lambda ps: Adam(ps, lr=lr)),
                           ("torch_fused", lambda ps: torch.optim.Adam(ps, lr=lr, fused=True)),
                           ("torch_foreach", lambda ps: torch.optim.Adam(ps, lr=lr, foreach=True))):
            ps = [torch.nn.Parameter(p.clone()) for p in src]
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            variants[name] = (ps, make(ps))
        names = list(variants)
        times: dict = {n: [] for n in names}
        for i in range(warmup + steps):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                opt = variants[n][1]
                t0 = time.perf_counter()
                opt.step()
                dt = time.perf_counter() - t0
                if i >= warmup:
                    times[n].append(dt)
        ms = {n: 1e3 * float(np.median(times[n])) for n in names}
        ratios = {n: [t / c for t, c in zip(times[n], times["cnnkit"])] for n in names if n != "cnnkit"}
        diff = max((float((a - b).detach().abs().max()) for a, b in
                    zip(variants["cnnkit"][0], variants["torch_fused"][0]) if a.numel()), default=0.0)
        return dict(n_params=sum(p.numel() for p in src), n_tensors=len(src), threads=threads,
                    steps=steps, ms=ms, speedup={n: float(np.median(r)) for n, r in ratios.items()},
                    speedup_spread=spread(ratios["torch_fused"]), max_abs_diff=diff)
    finally:
        torch.set_num_threads(prev)
        cnnkit.set_num_threads(prev_ck)
