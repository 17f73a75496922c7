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

__all__ = ["Emitter", "NOISY", "calibrate_inner", "fmt", "import_torch", "judge", "med", "peer_header",
           "probe", "run_rounds", "spread", "stream_arrays", "target", "target_summary", "timed"]


def probe(kind: str, arrays, reps: int) -> float:
    """GB/s (bytes read + written) of the STREAM kernel ``kind``: median of ``reps`` runs."""
    secs, nbytes = _core.stream_run(kind, arrays, reps)
    return nbytes / float(np.median(secs)) / 1e9


def timed(fn, inner: int = 1, warm: bool = False, min_s: float = 0.0,
          max_calls: int = 1000) -> float:
    """Seconds per call of ``fn()``, over ``inner`` back-to-back calls (after one untimed call
    with ``warm``: the thread pool is awake and the caches hold what the call touches).

    With ``min_s`` > 0 the sample adapts to the call: a first call that lasts ``min_s`` or more
    (and ``inner`` 1) is the sample; a shorter one is the untimed warm-up instead, and the timed
    calls go on until there are ``inner`` of them and they have lasted ``min_s`` (at most
    ``max_calls`` calls), so a count set while the machine was busy still fills the sample."""
    if min_s > 0:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        if first >= min_s and inner <= 1:
            return first
    elif warm:
        fn()
    t0 = time.perf_counter()
    if min_s <= 0:
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    n = 0
    while True:
        fn()
        n += 1
        if n >= inner:
            elapsed = time.perf_counter() - t0
            if elapsed >= min_s or n >= max_calls:
                return elapsed / n


def calibrate_inner(impls: dict, min_sample_s: float, max_inner: int = 1000) -> dict:
    """Calls per timed sample for each implementation, so that one sample lasts about
    ``min_sample_s``.

    A call of a fraction of a millisecond cannot be timed alone on a shared machine: a parallel
    region waits for every thread of the pool, and a thread that lost its core waits a scheduler
    slice (milliseconds) for it, so single calls read as that slice instead of their own cost.
    Back-to-back calls keep the pool's threads running between calls, so a sample of several
    slices costs the calls plus at most a few waits. Each implementation is called back to back
    (untimed warm-up first), one timed call at a time, until at least ten calls and
    ``min_sample_s`` have passed (or ``20 * min_sample_s``: slow calls stop after one); the
    fastest call, the one no other process interrupted, sets
    ``inner = ceil(min_sample_s / fastest)``, between 1 and ``max_inner``.

    Parameters
    ----------
    impls : dict
        Name -> callable taking no arguments.
    min_sample_s : float
        Target duration of one timed sample, in seconds.
    max_inner : int
        Upper bound on the calls per sample.

    Returns
    -------
    dict
        Name -> calls per sample (int >= 1).
    """
    out = {}
    for name, fn in impls.items():
        fn()
        fastest, spent, calls = float("inf"), 0.0, 0
        # the first calls may wait for a sleeping pool thread to get a core: time a few
        while ((spent < min_sample_s or calls < 10) and spent < 20 * min_sample_s
               and calls < max_inner):
            t = timed(fn)
            fastest, spent, calls = min(fastest, t), spent + t, calls + 1
        out[name] = int(max(1, min(max_inner, np.ceil(min_sample_s / max(fastest, 1e-9)))))
    return out


def med(xs):
    """Median of the values that are not None, as a float; None if there are none."""
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def spread(xs):
    """The spread of repeated measurements: interquartile range over median (0.1 = 10%).

    None when fewer than two values are given or the median is not positive. Values that are
    None are left out."""
    xs = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if xs.size < 2:
        return None
    m = float(np.median(xs))
    if not m > 0:
        return None
    q25, q75 = np.percentile(xs, [25, 75])
    return float((q75 - q25) / m)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x >= 10 ** digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def run_rounds(blocks, reps: int, warmup: int, inner=None, warm_each: bool = False,
               min_sample_s: float = 0.0) -> tuple:
    """Interleaved timing rounds.

    ``blocks`` is a list of ``(impls, probe_fn)``: ``impls`` maps a name to a callable, and
    ``probe_fn()`` returns the GB/s of a STREAM probe. In each round every block runs in turn:
    each implementation once, then the probe. Odd rounds run the blocks, and the implementations in
    each block, in reverse order, probe first. ``inner`` (optional, one int per block) times that
    many back-to-back calls and divides, for calls too short to time alone; an entry may also be a
    dict name -> calls, one count per implementation (see :func:`calibrate_inner`). With
    ``warm_each``, a sample of more than one call starts after one untimed call (the pool's
    threads awake, as after the previous kernel of a training step); ``min_sample_s`` > 0 makes
    every sample of a call shorter than that start with an untimed call and go on until it has
    lasted that long (see :func:`timed`). The garbage collector is off while timing.

    Returns ``(times, probes)``: ``times[b][name]`` the seconds per call in each timed round,
    ``probes[b]`` the probe's GB/s in each timed round.
    """
    inner = list(inner) if inner is not None else [1] * len(blocks)
    times: list[dict[str, list[float]]] = [{name: [] for name in impls} for impls, _ in blocks]
    probes: list[list[float]] = [[] for _ in blocks]
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
                k = inner[b]
                n = {name: k[name] if isinstance(k, dict) else k for name in names}
                row = {name: timed(impls[name], n[name], warm_each and n[name] > 1, min_sample_s)
                       for name in names}
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


NOISY = "noisy, not judged"


def judge(value, threshold, spread=None, *, upper: bool = False) -> str:
    """The verdict on one figure against its target.

    Parameters
    ----------
    value : float or None
        The figure (a median over rounds); None when it was not measured.
    threshold : float
        The target: ``value >= threshold`` is met (``value <= threshold`` with ``upper``).
    spread : float or None
        The spread of the figure's repeats as a fraction of ``value`` (:func:`spread`: the
        interquartile range over the median); None when unknown (then the figure is judged).
    upper : bool
        Whether the threshold is an upper bound.

    Returns
    -------
    str
        ``"not measured"`` when ``value`` is None; ``"noisy, not judged"`` (:data:`NOISY`) when the
        spread, ``spread * |value|``, is larger than the margin ``|value - threshold|`` (the repeats
        do not say on which side of the target the figure lies); otherwise ``"met"`` or
        ``"MISSED"``.

    Examples
    --------
    >>> judge(2.5, 3.0, 0.05), judge(2.5, 3.0, 0.4), judge(3.5, 3.0, None), judge(None, 3.0)
    ('MISSED', 'noisy, not judged', 'met', 'not measured')
    >>> judge(1.2, 1.5, 0.1, upper=True)
    'met'
    """
    if value is None:
        return "not measured"
    value, threshold = float(value), float(threshold)
    if spread is not None and float(spread) * abs(value) > abs(value - threshold):
        return NOISY
    ok = value <= threshold if upper else value >= threshold
    return "met" if ok else "MISSED"


def target(name: str, value, threshold: float, series=None, *, rel_spread=None) -> tuple:
    """One target as ``(name, value, threshold, met, spread)`` for :func:`target_text`.

    ``series`` holds the figure's per-round values (its spread is measured from them), or
    ``rel_spread`` gives that spread directly; ``met`` is True or False, and None when the figure
    was not measured or is too noisy to judge (see :func:`judge`). A name starting with
    "per-param" is an upper bound, one starting with "%" shows percentages."""
    s = spread(series) if series is not None else rel_spread
    verdict = judge(value, threshold, s, upper=name.startswith("per-param"))
    return (name, value, threshold, {"met": True, "MISSED": False}.get(verdict), s)


def target_text(targets) -> str:
    """Targets as text: each reads "name value [spread] >= threshold: verdict".

    An entry is ``(name, value, threshold, met)``, or ``(name, value, threshold, met, spread)``
    as :func:`target` makes it (then the verdict is :func:`judge`'s and the spread is shown as
    "±N%", the interquartile range over the median). A name starting with "%" shows percentages;
    one starting with "per-param" is an upper bound ("<="); met None in a 4-tuple means not
    measured."""
    parts = []
    for t in targets:
        name, v, thr, met = t[:4]
        s = t[4] if len(t) > 4 else None
        if v is None or (len(t) == 4 and met is None):
            parts.append(f"{name}: not measured")
            continue
        upper = name.startswith("per-param")
        verdict = judge(v, thr, s, upper=upper) if len(t) > 4 else ("met" if met else "MISSED")
        pct = name.startswith("%")
        shown = f"{100 * v:.0f}%" if pct else f"{v:.2f}"
        if s is not None:
            shown += f" ±{100 * s:.0f}%"
        thr_s = f"{100 * thr:.0f}%" if pct else f"{thr:g}"
        op = "<=" if upper else ">="
        parts.append(f"{name} {shown} {op} {thr_s}: {verdict}")
    return "; ".join(parts)


def target_summary(targets) -> str:
    """The count line under a table: "Targets met: M of J judged (N noisy, not judged)".

    ``targets`` as for :func:`target_text`; a 5-tuple with a value and met None is noisy."""
    met = sum(1 for t in targets if t[3])
    judged = sum(1 for t in targets if t[3] is not None)
    noisy = sum(1 for t in targets if t[3] is None and len(t) > 4 and t[1] is not None)
    text = f"Targets met: {met} of {judged} judged"
    return text + (f" ({noisy} {NOISY}: the spread of the rounds exceeds the margin)." if noisy
                   else ".")


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
