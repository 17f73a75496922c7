"""STREAM-like memory bandwidth, measured with cnnkit's threads and ISA level."""
from __future__ import annotations

import os
import platform
from typing import Sequence

import numpy as np

from .. import _core
from .._runtime import build_info
from .._validate import accepts_dlpack

__all__ = ["memory_bandwidth", "machine_header", "peak_note"]

KINDS = ("copy", "copy_nt", "triad", "triad_nt", "read", "rw5", "rw7", "rw7_nt")


@accepts_dlpack
def memory_bandwidth(kinds: Sequence[str] = ("copy", "triad", "rw5", "rw7", "rw7_nt"), *, mib: int = 256,
                     reps: int = 7, arrays: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Median GB/s (bytes read + written per second) of STREAM-like kernels.

    ``copy``/``triad`` write new arrays; ``rw5`` (20 B/element, the SGD-momentum shape) and
    ``rw7`` (28 B/element, the Adam shape) update in place, like an optimizer step; ``_nt``
    variants use non-temporal stores; ``read`` only reads. Each array is ``mib`` MiB (far past
    the caches). ``arrays`` may pass four preallocated float32 arrays to reuse.

    Parameters
    ----------
    kinds : sequence of str, default ("copy", "triad", "rw5", "rw7", "rw7_nt")
        Kernels from ``KINDS`` to run.
    mib : int, default 256
        Size of each array in MiB (ignored when ``arrays`` is given).
    reps : int, default 7
        Timed repetitions per kernel (the median is reported).
    arrays : sequence of 4 float32 ndarrays, optional
        Equal-sized, C-contiguous, writeable arrays to reuse.

    Returns
    -------
    dict of str to float
        Kernel name -> GB/s.

    Examples
    --------
    >>> from cnnkit.bench import memory_bandwidth
    >>> bw = memory_bandwidth(("copy",), mib=1, reps=1)
    >>> list(bw), bw["copy"] > 0
    (['copy'], True)
    """
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kinds: expected names from {KINDS}, got {k!r}")
    if arrays is None:
        n = mib * (1 << 20) // 4
        rng = np.random.default_rng(0)
        arrays = [rng.random(n, dtype=np.float32) for _ in range(4)]
    out = {}
    for k in kinds:
        secs, nbytes = _core.stream_run(k, list(arrays), reps)
        out[k] = nbytes / float(np.median(secs)) / 1e9
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_note() -> str:
    """", load average L (1 min)" (with a warning when other processes hold the cores), or ""
    where the platform has no load average. Timings taken while the load exceeds the cores are
    contended: a parallel region waits for every thread of its pool to get a core."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return ""
    busy = load > (os.cpu_count() or 1)
    return f", load average {load:.1f} (1 min)" + (": other processes hold the cores, timings "
                                                   "are contended" if busy else "")


def machine_header(extra: dict | None = None) -> str:
    """One block of text: commit, CPU, threads, ISA and library versions.

    Parameters
    ----------
    extra : dict, optional
        More ``key: value`` lines to append (e.g. peer library versions).

    Returns
    -------
    str
        The lines, joined by newlines.

    Examples
    --------
    >>> from cnnkit.bench import machine_header
    >>> machine_header({"torch": "2.13.0"}).splitlines()[-1]
    'torch: 2.13.0'
    """
    info = build_info()
    lines = [f"cnnkit {info['version']} (commit {info['git_commit']}), {info['compiler']}, "
             f"ISA {info['isa']}, {info['num_threads']} threads",
             f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores{load_note()}; "
             f"numpy {np.__version__}"]
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def peak_note() -> str:
    """Where the machine limits printed beside the figures come from.

    Returns
    -------
    str
        A one-line note for benchmark tables.
    """
    return "limits measured in this run by cnnkit.bench.memory_bandwidth()"
