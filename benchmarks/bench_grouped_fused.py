"""Fused vs unfused grouped NHWC passes on resnext_small's grouped layers (N = 64, 3x3, pad 1, 8
groups), and the plain passes against their roofline floor and torch channels_last.

Interleaved rounds (every variant once per round, in turn), min and median over the rounds; run
at 2 threads by default (cnnkit and torch). Columns:

* fused fwd: ``_core.conv2d_fused`` (prologue + stats) against the unfused composition: one norm
  apply pass (``_core.norm_apply``) writing a, ``_core.conv_forward``, ``_core.norm_stats`` on y;
* fused wgrad: ``_core.conv2d_fused_backward_weight`` against norm apply + ``conv_backward_weight``;
* plain fwd / dgrad / wgrad: cnnkit's plain passes, the floor max(FLOPs / peak, bytes / bw)
  (peak and bw given on the command line: sgemm peak and STREAM rate of the machine), torch
  (channels_last; its backward with one output mask per pass).

    python benchmarks/bench_grouped_fused.py [--threads 2] [--reps 15] [--peak 200] [--bw 25]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cnnkit
from cnnkit import _core
from cnnkit.ops import fused as F

SHAPES = [("16->16 s1 @32", 16, 32, 1), ("32->32 s2 @32", 32, 32, 2), ("64->64 s2 @16", 64, 16, 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--peak", type=float, default=200.0, help="GFLOP/s for the floor")
    ap.add_argument("--bw", type=float, default=25.0, help="GB/s for the floor")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    cnnkit.set_num_threads(a.threads)
    torch = None
    if not a.no_torch:
        import torch
        torch.set_num_threads(a.threads)
    N, G = a.batch, 8
    rows = []
    for name, C, H, s in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, H, H, C)).astype(np.float32)
        w = (rng.standard_normal((C, C // G, 3, 3)) * 0.2).astype(np.float32)
        sc = rng.uniform(0.5, 2, C).astype(np.float32)
        sh = rng.standard_normal(C).astype(np.float32)
        g = F._Geom(x.shape, w.shape, s, 1, 1, G, "NHWC", np.float32)
        gc = g.core()
        Ho, Wo = g.Ho, g.Wo
        y = np.empty((N, Ho, Wo, C), np.float32)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = np.empty_like(x)
        dw = np.empty_like(w)
        abuf = np.empty_like(x)
        s1, s2 = np.zeros(C), np.zeros(C)
        zeros, ones = np.zeros(C), np.ones(C)

        def fused_fwd():
            _core.conv2d_fused(x, w, y, gc, None, sc, sh, True, None, False, s1, s2)

        def unfused_fwd():
            _core.norm_apply(x, abuf, None, N, C, H * H, True, False, zeros, ones, sc, sh, True)
            _core.conv_forward(abuf, w, None, y, gc)
            _core.norm_stats(y, N, C, Ho * Wo, True, False)

        def fused_wgrad():
            _core.conv2d_fused_backward_weight(dy, x, dw, None, gc, sc, sh, True)

        def unfused_wgrad():
            _core.norm_apply(x, abuf, None, N, C, H * H, True, False, zeros, ones, sc, sh, True)
            _core.conv_backward_weight(dy, abuf, dw, None, gc)

        fns = {"fused fwd": fused_fwd, "unfused fwd": unfused_fwd, "fused wgrad": fused_wgrad,
               "unfused wgrad": unfused_wgrad,
               "fwd": lambda: _core.conv_forward(x, w, None, y, gc),
               "dgrad": lambda: _core.conv_backward_input(dy, w, dx, gc),
               "wgrad": lambda: _core.conv_backward_weight(dy, x, dw, None, gc)}
        if torch is not None:
            tx = torch.from_numpy(x).permute(0, 3, 1, 2)  # a channels_last view of NHWC memory
            tw = torch.from_numpy(w).contiguous(memory_format=torch.channels_last)
            tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
            conv = torch.nn.functional.conv2d
            cb = torch.ops.aten.convolution_backward

            def tb(mask):
                return lambda: cb(tdy, tx, tw, None, [s, s], [1, 1], [1, 1], False, [0, 0], G, mask)

            fns.update({"torch fwd": lambda: conv(tx, tw, None, s, 1, 1, G),
                        "torch dgrad": tb([True, False, False]), "torch wgrad": tb([False, True, False])})
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(a.reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        flops = 2 * N * C * Ho * Wo * (C // G) * 9
        floor = {"fwd": max(flops / a.peak / 1e9, (x.nbytes + y.nbytes) / a.bw / 1e9),
                 "dgrad": max(flops / a.peak / 1e9, (x.nbytes + y.nbytes) / a.bw / 1e9),
                 "wgrad": max(flops / a.peak / 1e9, (x.nbytes + y.nbytes) / a.bw / 1e9)}
        rows.append((name, {k: (1e3 * min(v), 1e3 * float(np.median(v))) for k, v in times.items()}, floor, flops))
    print(f"threads {a.threads}, batch {N}, {a.reps} interleaved rounds; ms as min/median")
    for name, t, floor, flops in rows:
        print(f"\n{name}  ({flops / 1e6:.1f} MFLOP a pass)")
        print(f"  fused fwd   {t['fused fwd'][0]:.3f}/{t['fused fwd'][1]:.3f}  unfused {t['unfused fwd'][0]:.3f}/"
              f"{t['unfused fwd'][1]:.3f}  ratio {t['unfused fwd'][1] / t['fused fwd'][1]:.2f}x")
        print(f"  fused wgrad {t['fused wgrad'][0]:.3f}/{t['fused wgrad'][1]:.3f}  unfused {t['unfused wgrad'][0]:.3f}/"
              f"{t['unfused wgrad'][1]:.3f}  ratio {t['unfused wgrad'][1] / t['fused wgrad'][1]:.2f}x")
        for p in ("fwd", "dgrad", "wgrad"):
            tt = t.get("torch " + p)
            ts = f"torch {tt[0]:.3f}/{tt[1]:.3f} ({tt[1] / t[p][1]:.2f}x)" if tt else ""
            print(f"  {p:6s} {t[p][0]:.3f}/{t[p][1]:.3f}  {flops / t[p][0] / 1e6:.0f} GFLOP/s  floor "
                  f"{1e3 * floor[p]:.3f} ({1e3 * floor[p] / t[p][0]:.0%} of roof)  {ts}")


if __name__ == "__main__":
    main()
