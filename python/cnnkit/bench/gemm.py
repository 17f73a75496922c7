"""``cnnkit bench gemm``: cnnkit's own float32 GEMM (``_core.sgemm``) against OpenBLAS and torch.

The shapes are the GEMMs the 1x1 convolutions of ``shared/bench_shapes.json`` run (batch 32):
per unit of work as the conv path cuts them (NHWC: 1024 output pixels x C_out x C_in; NCHW: one
image, C_out x H*W x C_in) and whole layers (N*H*W x C_out x C_in), plus a square 1024^3.

Method: at one thread every implementation is called in rounds (one call of each per round, the
order reversed on odd rounds), after warm-up; the table gives medians. Each round also times the
*single-core sgemm peak* probe (cnnkit's and OpenBLAS's 1-thread 1024^3 GEMMs, the better of the
two), so "% peak" is the median over rounds of the shape's rate over the probe's rate in the same
round, with its spread (interquartile range over median): on a host whose speed moves by 1.5x over
minutes, a peak probed once at the start made the same kernel read 90% or 150%. (Since the probe's
12 MiB push the shape's operands out of the caches, every implementation is called twice untimed
before its timed call, so the figures stay those of warm operands: the 24-row shape's B of 1.8
MB ran its first call after the probe at 40-65% of its warm rate, its second at 50-90%.) The
operands lie as the layers' buffers do (``cnnkit._memory.empty_aligned``: from 1 MiB on, on 2 MiB
pages; a B of 1.8 MB read a row per step on 4 KiB pages cost the 24-row shape 10% in TLB misses).
The 1x1 shapes (all but the square) are judged against the target of 85% of that peak.

Each 1-thread round also times the shape's *memory twin* (``_core.stream_rows``): the same rows of
A read and of C written, with no arithmetic, so FLOPs over its time is the rate this core's memory
path allows the shape (a whole layer's 58-103 MB of A stream from L3 or memory; a unit's operands
stay in L2). The shape's *roof* in a round is the lower of the probe and that memory rate, and "%
roof" the own rate over it, judged against the same 85%. Where the memory rate is the lower (the
144->24 layer: 48 FLOPs per 4-byte element of A read), no kernel reaches the peak, and "% roof"
says how close the own one comes to what the core's memory path allows; "% peak" stays the
issue's target and is judged all the same. (Such a layer also runs 3-8% slower for about 30 ms
after the compute-only probe, or after an idle stretch, than after memory-bound work; the own
GEMM follows the probe directly in every other round, so its whole-layer rows read low by up to
that much: BENCHMARKS.md, forty-sixth session.) At more threads each
implementation runs its own block of calls instead: cnnkit, OpenBLAS and torch keep three
different thread pools whose idle threads spin for a while after a call, and interleaved calls
then starve each other (all three fell below 2 GFLOP/s on the small shapes); there the limit is the
peak probed at the start, times the thread count, and nothing is judged. The ratio is to the best
peer (OpenBLAS called through cnnkit's own scipy-openblas32 at the same thread count, or torch.mm)
measured in the same rounds.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from typing import Callable

import numpy as np

from .. import _core, build_info, get_num_threads, set_num_threads
from .._memory import empty_aligned
from ._common import import_torch, med, spread, target, target_summary, target_text

__all__ = ["SHAPES", "main"]

# The issue's target for the 1x1 shapes: the own GEMM at >= 85% of the single-core sgemm peak.
PEAK_TARGET = 0.85

# (name, M, N, K): C (M x N) = A (M x K) . B (K x N)
SHAPES = [
    ("mbv2 1x1 144->24 NHWC unit", 1024, 24, 144),
    ("mbv2 1x1 144->24 NCHW image", 24, 56 * 56, 144),
    ("resnet 1x1 256->64 NHWC unit", 1024, 64, 256),
    ("resnet 1x1 256->64 NCHW image", 64, 56 * 56, 256),
    ("mbv2 1x1 144->24 layer", 32 * 56 * 56, 24, 144),
    ("resnet 1x1 256->64 layer", 32 * 56 * 56, 64, 256),
    ("square 1024", 1024, 1024, 1024),
]


def _openblas():
    """(sgemm(a, b, c), set_threads(n)) of the scipy-openblas32 cnnkit registered, or None."""
    from ..ops import conv as _conv

    lib = getattr(_conv._load_blas, "lib", None)
    if lib is None:
        return None
    fn = lib.scipy_cblas_sgemm
    fn.restype = None
    p = ctypes.c_void_p

    def sgemm(a, b, c):
        m, k = a.shape
        n = b.shape[1]
        fn(101, 111, 111, m, n, k, ctypes.c_float(1.0), p(a.ctypes.data), k, p(b.ctypes.data), n,
           ctypes.c_float(0.0), p(c.ctypes.data), n)

    return sgemm, lib.scipy_openblas_set_num_threads


def _operand(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Random float32 values in an array laid out as the layers' buffers are (``empty_aligned``:
    from 1 MiB on, 2 MiB-aligned on huge pages, as the activations the conv path's GEMMs read)."""
    out = empty_aligned(shape, np.float32)
    out[...] = rng.standard_normal(shape, dtype=np.float32)
    return out


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnkit bench gemm", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per shape (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--quick", action="store_true", help="the per-unit shapes only, 5 rounds")
    p.add_argument("--no-torch", action="store_true", help="leave torch.mm out")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the GEMM benchmark (``cnnkit bench gemm``) and print its table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``); ``cnnkit bench gemm --help`` lists them.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on bad arguments.
    """
    args = _parser().parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        print(f"--threads: expected positive integers, got {args.threads!r}", file=sys.stderr)
        return 2
    reps = 5 if args.quick else max(1, args.repeats)
    shapes = SHAPES[:4] if args.quick else SHAPES
    blas = _openblas()
    torch = None if args.no_torch else import_torch(False, max(threads))
    before = get_num_threads()
    rng = np.random.default_rng(0)
    info = build_info()
    print(f"cnnkit {info.get('git_commit', '?')} isa {info['isa']}  sgemm block {_core.sgemm_shape(info['isa'])}")
    try:
        # The machine limit: the best 1-thread 1024^3 rate of the own kernel and OpenBLAS (probed
        # here for the multi-thread rows, and again in every round of the 1-thread ones).
        set_num_threads(1)
        pa = _operand(rng, (1024, 1024))
        pc = empty_aligned((1024, 1024), np.float32)

        def probe() -> float:
            """The single-core peak now: the better 1024^3 rate of the own GEMM and OpenBLAS."""
            best = 2 * 1024**3 / _time(lambda: _core.sgemm(pa, pa, pc)) / 1e9
            if blas:
                best = max(best, 2 * 1024**3 / _time(lambda: blas[0](pa, pa, pc)) / 1e9)
            return best

        if blas:
            blas[1](1)
        peaks = [probe() for _ in range(3)]
        peak1 = max(peaks)
        print(f"single-core sgemm peak (best of own/OpenBLAS 1024^3): {peak1:.0f} GFLOP/s at the start "
              f"(3 probes: {', '.join(f'{p:.0f}' for p in peaks)}); 1-thread rows: % of the probe in the same "
              "round, median ±spread")
        print(f"{'shape':32s} {'M x N x K':>20s} {'thr':>3s} {'own GF/s':>9s} {'% peak':>12s} "
              f"{'mem GF/s':>9s} {'% roof':>12s} {'OpenBLAS':>9s} {'torch.mm':>9s} {'own/best peer':>13s}")
        targets = []
        for name, m, n, k in shapes:
            a = _operand(rng, (m, k))
            b = _operand(rng, (k, n))
            c = empty_aligned((m, n), np.float32)
            flop = 2.0 * m * n * k
            for t in threads:
                set_num_threads(t)
                impls = {"own": lambda: _core.sgemm(a, b, c)}
                if blas:
                    impls["openblas"] = lambda: blas[0](a, b, c)
                if torch is not None:
                    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
                    torch.set_num_threads(t)
                    impls["torch"] = lambda: torch.mm(ta, tb, out=tc)
                if blas:
                    blas[1](t)
                times: dict[str, list[float]] = {key: [] for key in impls}
                shares: list[float] = []  # per round: own rate / the peak probed in that round
                roofs: list[float] = []  # per round: own rate / min(that peak, the memory twin's rate)
                mems: list[float] = []  # per round: the memory twin's rate, GFLOP/s
                if t == 1:
                    calls: dict[str, Callable[[], object]] = dict(impls)
                    calls["memory"] = lambda: _core.stream_rows(a, c, 1)
                    times["memory"] = []  # (not an implementation: left out of the rates below)
                    for r in range(args.warmup + reps):
                        order = list(calls) if r % 2 == 0 else list(reversed(calls))
                        now = probe() if r % 2 == 0 else 0.0
                        for key in order:
                            calls[key]()  # untimed, twice: the operands back in cache after the probe
                            calls[key]()
                            dt = _time(calls[key])
                            if r >= args.warmup:
                                times[key].append(dt)
                        if r % 2:
                            now = probe()
                        if r >= args.warmup:
                            own = flop / times["own"][-1] / 1e9
                            mems.append(flop / times["memory"][-1] / 1e9)
                            shares.append(own / now)
                            roofs.append(own / min(now, mems[-1]))
                else:  # one block per implementation: see the module docstring
                    for key in impls:
                        for r in range(args.warmup + reps):
                            dt = _time(impls[key])
                            if r >= args.warmup:
                                times[key].append(dt)
                if blas:
                    blas[1](1)
                gf = {key: flop / med(times[key]) / 1e9 for key in impls}
                peers = [v for key, v in gf.items() if key != "own"]
                ratio = f"{gf['own'] / max(peers):.2f}" if peers else "-"
                if shares:
                    pct = f"{100 * med(shares):.0f}% ±{100 * (spread(shares) or 0):.0f}%"
                    mem = f"{med(mems):.0f}"
                    pct_roof = f"{100 * med(roofs):.0f}% ±{100 * (spread(roofs) or 0):.0f}%"
                    if name != "square 1024":
                        targets.append(target(f"% peak {name}", med(shares), PEAK_TARGET, shares))
                        targets.append(target(f"% roof {name}", med(roofs), PEAK_TARGET, roofs))
                else:
                    pct, mem, pct_roof = f"{100 * gf['own'] / (peak1 * t):.0f}% start", "-", "-"
                print(f"{name:32s} {f'{m}x{n}x{k}':>20s} {t:3d} {gf['own']:9.1f} {pct:>12s} {mem:>9s} "
                      f"{pct_roof:>12s} {gf.get('openblas', float('nan')):9.1f} {gf.get('torch', float('nan')):9.1f} "
                      f"{ratio:>13s}")
                sys.stdout.flush()
        if targets:
            print()
            for tg in targets:
                print(target_text([tg]))
            print(target_summary(targets))
    finally:
        set_num_threads(before)
        if blas:
            blas[1](1)  # cnnkit calls OpenBLAS single-threaded inside its own loops
    return 0
