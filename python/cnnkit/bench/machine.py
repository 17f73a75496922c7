"""STREAM-like memory bandwidth, measured with cnnkit's threads and ISA level."""
from __future__ import annotations

import os
import platform

import numpy as np

from .. import _core
from .._runtime import build_info

__all__ = ["memory_bandwidth", "machine_header", "peak_note"]

KINDS = ("copy", "copy_nt", "triad", "triad_nt", "read", "rw5", "rw7", "rw7_nt")


def memory_bandwidth(kinds=("copy", "triad", "rw5", "rw7", "rw7_nt"), *, mib: int = 256, reps: int = 7,
                     arrays=None) -> dict:
    """Median GB/s (bytes read + written per second) of STREAM-like kernels.

    ``copy``/``triad`` write new arrays; ``rw5`` (20 B/element, the SGD-momentum shape) and
    ``rw7`` (28 B/element, the Adam shape) update in place, like an optimizer step; ``_nt``
    variants use non-temporal stores; ``read`` only reads. Each array is ``mib`` MiB (far past
    the caches). ``arrays`` may pass four preallocated float32 arrays to reuse.
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


def machine_header(extra: dict | None = None) -> str:
    """One block of text: commit, CPU, threads, ISA and library versions."""
    info = build_info()
    lines = [f"cnnkit {info['version']} (commit {info['git_commit']}), {info['compiler']}, "
             f"ISA {info['isa']}, {info['num_threads']} threads",
             f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores; numpy {np.__version__}"]
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def peak_note() -> str:
    return "limits measured in this run by cnnkit.bench.memory_bandwidth()"
