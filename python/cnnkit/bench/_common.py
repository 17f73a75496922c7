"""Helpers shared by the benchmark families: interleaved timing rounds, STREAM probes, the torch
peer's header line and number formatting.

Every family times its implementations in *rounds*: one call of each implementation, then a short
STREAM probe of the kernel whose access pattern matches the operation. Odd rounds run the same
sequence in reverse (probe first). This VM's bandwidth drifts by 1.5x between minutes, so ratios
are computed within a round and reported as medians over rounds.
"""
from __future__ import annotations

import gc
import os
import platform
import time

import numpy as np

from .. import _core

__all__ = ["Emitter", "fmt", "import_torch", "med", "peer_header", "probe", "run_rounds", "stream_arrays",
           "timed"]


def probe(kind: str, arrays, reps: int) -> float:
    """GB/s (bytes read + written) of the STREAM kernel ``kind``: median of ``reps`` runs."""
    secs, nbytes = _core.stream_run(kind, arrays, reps)
    return nbytes / float(np.median(secs)) / 1e9


def timed(fn, inner: int = 1) -> float:
    """Seconds per call of ``fn()``, over ``inner`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def med(xs):
    """Median of the values that are not None, as a float; None if there are none."""
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x >= 10 ** digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def run_rounds(blocks, reps: int, warmup: int, inner=None) -> tuple:
    """Interleaved timing rounds.

    ``blocks`` is a list of ``(impls, probe_fn)``: ``impls`` maps a name to a callable, and
    ``probe_fn()`` returns the GB/s of a STREAM probe. In each round every block runs in turn:
    each implementation once, then the probe. Odd rounds run the blocks, and the implementations in
    each block, in reverse order, probe first. ``inner`` (optional, one int per block) times that
    many back-to-back calls and divides, for calls too short to time alone. The garbage collector
    is off while timing.

    Returns ``(times, probes)``: ``times[b][name]`` the seconds per call in each timed round,
    ``probes[b]`` the probe's GB/s in each timed round.
    """
    inner = list(inner) if inner is not None else [1] * len(blocks)
    times = [{name: [] for name in impls} for impls, _ in blocks]
    probes = [[] for _ in blocks]
    order = list(range(len(blocks)))
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + reps):
            fwd = r % 2 == 0
            for b in (order if fwd else order[::-1]):
                impls, probe_fn = blocks[b]
                names = list(impls) if fwd else list(impls)[::-1]
                if not fwd:
                    bw = probe_fn()
                row = {name: timed(impls[name], inner[b]) for name in names}
                if fwd:
                    bw = probe_fn()
                if r >= warmup:
                    for name, t in row.items():
                        times[b][name].append(t)
                    probes[b].append(bw)
    finally:
        gc.enable()
    return times, probes


def stream_arrays(mib: int = 256, seed: int = 0) -> list:
    """Four float32 arrays of ``mib`` MiB each for the STREAM probes (far past the caches)."""
    n = mib * (1 << 20) // 4
    rng = np.random.default_rng(seed)
    return [rng.random(n, dtype=np.float32) for _ in range(4)]


def import_torch(no_torch: bool, threads: int):
    """torch set to ``threads`` threads, or None when ``no_torch`` or not importable."""
    if no_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def peer_header(torch) -> dict:
    """The ``torch`` and ``python`` lines of a benchmark's header."""
    extra = {}
    if torch is not None:
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
        thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
        extra["torch"] = (f"{torch.__version__} ({torch.get_num_threads()} threads, CPU capability "
                          f"{cap}, THP_MEM_ALLOC_ENABLE={thp})")
    else:
        extra["torch"] = "not used (not importable or --no-torch)"
    extra["python"] = f"{platform.python_version()}, {platform.platform()}"
    return extra


def target_text(targets) -> str:
    """Targets as text: each (name, value, threshold, met) reads "name value >= threshold: met".

    A name starting with "%" shows percentages; one starting with "per-param" is an upper bound
    ("<="); met None means not measured."""
    parts = []
    for name, v, thr, met in targets:
        if met is None:
            parts.append(f"{name}: not measured")
            continue
        pct = name.startswith("%")
        shown = f"{100 * v:.0f}%" if pct else f"{v:.2f}"
        thr_s = f"{100 * thr:.0f}%" if pct else f"{thr:g}"
        op = "<=" if name.startswith("per-param") else ">="
        parts.append(f"{name} {shown} {op} {thr_s}: {'met' if met else 'MISSED'}")
    return "; ".join(parts)


def parse_list(text, allowed, what, *, require=False):
    """Comma-separated names, each one of `allowed` (ValueError naming `what` otherwise)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if x not in allowed:
            raise ValueError(f"{what}: unknown entry {x!r}; expected names from "
                             f"{','.join(str(a) for a in allowed)}")
    if require and not items:
        raise ValueError(f"{what}: expected at least one of {','.join(str(a) for a in allowed)}")
    return items


def write_json(path, doc):
    """Write a benchmark's raw numbers (the --json option) and say where they went."""
    import json

    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"raw numbers written to {path}")


def add_roof_args(p, quick_gemm: int) -> None:
    """The machine-limit options shared by the compute benchmarks (conv, train)."""
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="compute roof to use instead of the measured sgemm rate (e.g. an FMA "
                        "peak measured elsewhere)")
    p.add_argument("--gemm-size", type=int, default=None,
                   help=f"n of the n^3 sgemm peak probe (default 2048; {quick_gemm} with --quick)")
    p.add_argument("--stream-mib", type=int, default=None,
                   help="MiB per STREAM probe array (default 256; 64 with --quick)")
    p.add_argument("--probe-reps", type=int, default=3,
                   help="STREAM repetitions per probe (default 3)")
    p.add_argument("--markdown", action="store_true",
                   help="print the tables as markdown (header in a code block), for BENCHMARKS.md")
    p.add_argument("--json", metavar="PATH", help="write raw per-round numbers here")


def import_torchvision():
    """torchvision, or None. The PyPI torchvision wheel is built against CUDA torch; next to the
    CPU torch wheel its compiled ops do not load and its import fails while registering them.
    Its transforms are pure Python, so the registration is skipped for the import."""
    import sys
    try:
        import torch.library as library
    except ImportError:
        return None
    try:
        import torchvision
        return torchvision
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - the CUDA build's op registration
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        original = library.register_fake
        library.register_fake = lambda *a, **k: (lambda f: f)
        try:
            import torchvision
            return torchvision
        except Exception:  # noqa: BLE001
            return None
        finally:
            library.register_fake = original


class Emitter:
    """The report's header lines: printed as they come, or with ``markdown`` collected and
    printed as one fenced block by :meth:`flush` (before the first table)."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = bool(markdown)
        self.lines: list = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        if not self.markdown:
            print(line)

    def flush(self) -> None:
        if self.markdown and self.lines:
            print("```\n" + "\n".join(self.lines) + "\n```\n")
            self.lines.clear()
