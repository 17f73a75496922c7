"""One training step's compiled calls, each replayed warm and cold (see BENCHMARKS.md, issue 17).

    python benchmarks/bench_replay.py [--model resnext|mobilenet] [--threads 2] [--reps 9] [--top 30]
    python benchmarks/bench_replay.py --model mobilenet --overlap 35:38,39,46,45 [--reps 30]

This is a diagnostic, not a race against a peer. It captures every ``cnnkit._core`` call of one
NHWC training step of ``cnnkit bench train``'s model (batch 64 of 3x32x32), with copies of its
arguments. It then times each call three ways (medians over ``--reps``):

- **in step:** with a timer around every compiled call of further steps, as they run;
- **cold:** replayed with its own arguments after a 64 MiB array is updated, which evicts the
  caches, so its operands come from memory as they do in the step;
- **warm:** replayed right after its arguments are copied in, so they sit in cache. This is what
  a plain replay measures.

Each row also gives the bytes of the call's array arguments and the rate they make at the cold
time, beside the machine's memory bandwidth measured here (``cnnkit.bench.memory_bandwidth``:
STREAM copy and triad on 256 MiB arrays, at the same thread count).
The step line gives the step's time, the sum of its compiled calls, and the time outside them (the
Python between the calls). The last line times that Python alone: further steps with every
compiled call replaced by the result it returned in the captured step, warm, and with a
``--evict-mib`` array updated before each replaced call (its own time excluded), as the kernels
evict the caches between the gaps of a real step.

``--overlap A:B`` (call numbers of the table's ``#`` column, comma-separated on each side) asks
instead whether two groups of calls gain from running side by side. It times them one group after
the other on ``--threads`` threads each, and concurrently, each group on one thread of its own.
The concurrent run uses two Python threads; the compiled calls release the GIL. Rounds alternate
the two ways, with the arguments copied in before each. It prints the medians and their ratio
(above 1: concurrent is faster).
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Callable

import numpy as np

import cnnkit
import cnnkit._core as core
from cnnkit.bench import memory_bandwidth
from cnnkit.bench import train as bench_train

_SKIP = {"isa_active", "isa_supported", "set_isa", "set_num_threads", "get_num_threads"}


def _copy(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, (list, tuple)):
        return type(v)(_copy(u) for u in v)
    return v


def _refill(dst: Any, src: Any) -> None:
    if isinstance(dst, np.ndarray):
        np.copyto(dst, src)
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src):
            _refill(d, s)


def _nbytes(v: Any) -> int:
    if isinstance(v, np.ndarray):
        return v.nbytes
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(u) for u in v)
    return 0


def _core_functions() -> dict[str, Callable[..., Any]]:
    return {n: getattr(core, n) for n in dir(core)
            if not n.startswith("_") and n not in _SKIP and callable(getattr(core, n))}


def main(argv: list[str] | None = None) -> int:
    """Run the replay and print its table; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnext", choices=["resnext", "mobilenet"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--top", type=int, default=30, help="rows shown, by in-step time (0: all)")
    ap.add_argument("--evict-mib", type=int, default=16,
                    help="MiB updated before each replaced call when timing the Python alone (0: none)")
    ap.add_argument("--overlap", metavar="A:B",
                    help="time call groups A and B (call numbers, comma-separated) one after the other on "
                         "--threads threads, and side by side on one thread each, instead of the table")
    args = ap.parse_args(argv)
    for name, low in (("threads", 1), ("reps", 1), ("top", 0), ("evict_mib", 0)):
        if getattr(args, name) < low:
            ap.error(f"--{name.replace('_', '-')}: expected an int >= {low}, got {getattr(args, name)}")
    groups = _overlap_groups(ap, args.overlap) if args.overlap is not None else None
    cnnkit.set_num_threads(args.threads)
    step = bench_train.build_configs(None, args.model, 64)["steps"]["cnnkit NHWC"]
    for _ in range(3):
        step()
    orig = _core_functions()
    calls: list[tuple[str, Any, dict]] = []
    results: list[Any] = []
    live: list[list[float]] = []
    totals: list[float] = []

    def capturing(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def g(*a: Any, **k: Any) -> Any:
            calls.append((name, _copy(a), {kk: _copy(v) for kk, v in k.items()}))
            r = f(*a, **k)
            results.append(r)
            return r
        return g

    def timing(f: Callable[..., Any], rec: list[float]) -> Callable[..., Any]:
        def g(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            r = f(*a, **k)
            rec.append(time.perf_counter() - t)
            return r
        return g

    if groups is not None:
        try:
            for n, f in orig.items():
                setattr(core, n, capturing(n, f))
            step()
        finally:
            for n, f in orig.items():
                setattr(core, n, f)
        for i in groups[0] + groups[1]:
            if i >= len(calls):
                ap.error(f"--overlap: expected call numbers below {len(calls)} (this step's calls), got {i}")
        _overlap(args.model, orig, calls, groups, args.threads, args.reps)
        return 0
    try:
        for n, f in orig.items():
            setattr(core, n, capturing(n, f))
        step()
        for _ in range(args.reps):
            rec: list[float] = []
            for n, f in orig.items():
                setattr(core, n, timing(f, rec))
            t = time.perf_counter()
            step()
            totals.append(time.perf_counter() - t)
            if len(rec) == len(calls):
                live.append(rec)
    finally:
        for n, f in orig.items():
            setattr(core, n, f)
    python_alone = _python_alone(step, orig, [c[0] for c in calls], results, args.reps, args.evict_mib)
    in_step = np.median(np.array(live), axis=0) if live else np.full(len(calls), np.nan)
    junk = np.zeros(16 << 20, np.float32)  # 64 MiB, more than the L3
    rows = []
    for i, (name, a, k) in enumerate(calls):
        a2, k2 = _copy(a), {kk: _copy(v) for kk, v in k.items()}
        warm: list[float] = []
        cold: list[float] = []
        for _ in range(args.reps):
            for lst, evict in ((warm, False), (cold, True)):
                _refill(a2, a)
                _refill(list(k2.values()), list(k.values()))
                if evict:
                    junk += 1.0
                t = time.perf_counter()
                orig[name](*a2, **k2)
                lst.append(time.perf_counter() - t)
        shapes = [tuple(v.shape) for v in a if isinstance(v, np.ndarray)][:3]
        nb = _nbytes(a) + _nbytes(list(k.values()))
        rows.append((in_step[i] * 1e3, float(np.median(cold)) * 1e3, float(np.median(warm)) * 1e3, nb, i, name,
                     shapes))
    bw = memory_bandwidth(("copy", "triad"), reps=5)
    print(f"{args.model}_small, cnnkit NHWC, batch 64, {args.threads} threads, {args.reps} reps; memory: STREAM "
          f"copy {bw['copy']:.1f}, triad {bw['triad']:.1f} GB/s (256 MiB arrays, bytes read + written)")
    print(f"{'#':>3} {'in step':>8} {'cold':>8} {'warm':>8} {'MB args':>8} {'GB/s cold':>9}  call")
    order = sorted(rows, key=lambda r: -r[0] if np.isfinite(r[0]) else 0)
    for s, c, w, nb, i, name, shapes in order[:args.top or None]:
        print(f"{i:3d} {s:8.3f} {c:8.3f} {w:8.3f} {nb / 1e6:8.1f} {nb / c / 1e6:9.1f}  {name} {shapes}")
    step_ms = float(np.median(totals)) * 1e3
    in_calls = float(np.nansum(in_step)) * 1e3
    print(f"step {step_ms:.2f} ms; its {len(calls)} compiled calls {in_calls:.2f} ms (replayed: cold "
          f"{sum(r[1] for r in rows):.2f}, warm {sum(r[2] for r in rows):.2f}); outside them {step_ms - in_calls:.2f} ms")
    if python_alone is None:
        print("Python alone: not measured (a step's compiled calls came in another order)")
    else:
        warm_ms, evicted_ms = python_alone
        print(f"Python alone (each compiled call replaced by its recorded result): warm {warm_ms:.3f} ms; with "
              f"{args.evict_mib} MiB updated before each replaced call (its time excluded) {evicted_ms:.3f} ms")
    return 0


def _python_alone(step: Callable[[], Any], orig: dict[str, Callable[..., Any]], names: list[str],
                  results: list[Any], reps: int, evict_mib: int) -> tuple[float, float] | None:
    """Median ms of ``step`` with every ``_core`` function returning, call by call, what the
    captured step's call returned (``names``, ``results``), warm and with ``evict_mib`` MiB
    updated before each replaced call (excluded); None if a step calls them in another order."""
    junk = np.zeros(max(evict_mib, 0) << 18, np.float32)
    pos = [0]
    evict = [False]
    excluded = [0.0]

    def replaced(name: str) -> Callable[..., Any]:
        def g(*a: Any, **k: Any) -> Any:
            if evict[0] and junk.size:
                t = time.perf_counter()
                np.add(junk, 1.0, out=junk)
                excluded[0] += time.perf_counter() - t
            i = pos[0]
            if i >= len(names) or names[i] != name:
                raise _OrderChanged
            pos[0] = i + 1
            return results[i]
        return g

    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for n in orig:
            setattr(core, n, replaced(n))
        for _ in range(max(reps, 5)):
            for ev in (False, True):
                pos[0], evict[0], excluded[0] = 0, ev, 0.0
                t = time.perf_counter()
                step()
                times[ev].append(time.perf_counter() - t - excluded[0])
                if pos[0] != len(names):
                    return None
    except _OrderChanged:
        return None
    finally:
        for n, f in orig.items():
            setattr(core, n, f)
    return float(np.median(times[False])) * 1e3, float(np.median(times[True])) * 1e3


def _overlap_groups(ap: argparse.ArgumentParser, text: str) -> tuple[list[int], list[int]]:
    """The two groups of call numbers of ``--overlap A:B``; errors through ``ap``."""
    parts = text.split(":")
    try:
        groups = tuple([int(v) for v in p.split(",")] for p in parts)
    except ValueError:
        groups = ()
    if len(groups) != 2 or any(not g or min(g) < 0 for g in groups):
        ap.error(f"--overlap: expected two comma-separated lists of call numbers >= 0 joined by ':', got {text!r}")
    return groups[0], groups[1]


def _overlap(model: str, orig: dict[str, Callable[..., Any]], calls: list[tuple[str, Any, dict]],
             groups: tuple[list[int], list[int]], threads: int, reps: int) -> None:
    """Print the medians of groups A and B run one after the other on ``threads`` threads each and
    side by side on one thread each (see the module's docstring)."""
    def prep(ids: list[int]) -> list[tuple[Callable[..., Any], Any, dict, Any, dict]]:
        out = []
        for i in ids:
            name, a, k = calls[i]
            out.append((orig[name], _copy(a), {kk: _copy(v) for kk, v in k.items()}, a, k))
        return out

    sides = [prep(g) for g in groups]

    def refill() -> None:
        for side in sides:
            for _, a, k, a0, k0 in side:
                _refill(a, a0)
                _refill(list(k.values()), list(k0.values()))

    def run(side: list[tuple[Callable[..., Any], Any, dict, Any, dict]], out: list[float]) -> None:
        t = time.perf_counter()
        for f, a, k, _, _ in side:
            f(*a, **k)
        out.append(time.perf_counter() - t)

    seq: list[float] = []
    par: list[float] = []
    alone: list[list[float]] = [[], []]
    try:
        for r in range(reps):
            for way in ((0, 1) if r % 2 == 0 else (1, 0)):
                refill()
                if way == 0:
                    cnnkit.set_num_threads(threads)
                    t = time.perf_counter()
                    run(sides[0], [])
                    run(sides[1], [])
                    seq.append(time.perf_counter() - t)
                else:
                    cnnkit.set_num_threads(1)
                    workers = [threading.Thread(target=run, args=(sides[j], alone[j])) for j in (0, 1)]
                    t = time.perf_counter()
                    for w in workers:
                        w.start()
                    for w in workers:
                        w.join()
                    par.append(time.perf_counter() - t)
    finally:
        cnnkit.set_num_threads(threads)
    ms = [float(np.median(v)) * 1e3 for v in (seq, par, alone[0], alone[1])]
    names = [", ".join(f"{i} {calls[i][0]}" for i in g) for g in groups]
    print(f"{model}_small, overlap of A = [{names[0]}] and B = [{names[1]}], {reps} rounds")
    print(f"one after the other on {threads} threads {ms[0]:.3f} ms; side by side on one thread each "
          f"{ms[1]:.3f} ms (A {ms[2]:.3f}, B {ms[3]:.3f}); sequential / side by side {ms[0] / ms[1]:.3f}")


class _OrderChanged(Exception):
    """A replaced call came out of the captured order."""


if __name__ == "__main__":
    raise SystemExit(main())
