"""Workspace arrays: 64-byte aligned, and the large ones on transparent huge pages where Linux
offers them.

A layer's buffers (outputs, gradients, saved activations) are allocated once and reused every
step, and the kernels stream through them. On 4 KiB pages a 4 MiB stream crosses 1024 page
boundaries, each one a TLB entry to walk and a point where hardware prefetch streams generally
restart; on 2 MiB pages it crosses two. NumPy asks for huge pages only for allocations of 4 MiB and more, and
its allocations do not start on a 2 MiB boundary, so most of a step's buffers got none (resnext_small
at batch 64: 64 MiB of about 190 on huge pages). Every buffer of :data:`HUGE_MIN_BYTES` or more now
gets its own private anonymous mapping, starting on a 2 MiB boundary and advised
``MADV_HUGEPAGE``: the training step 1.02-1.055x (resnext_small), 1.01-1.04x (mobilenet_small),
alternating with the old buffers in one process (BENCHMARKS.md, twenty-first session). The
kernels' own large scratch (``cpp/src/conv/scratch.h``) takes the same advice.
"""
from __future__ import annotations

import mmap
import sys
from typing import Any

import numpy as np

__all__ = ["HUGE_MIN_BYTES", "empty_aligned"]

#: arrays of at least this many bytes go on 2 MiB-aligned mappings advised for huge pages (Linux);
#: smaller ones would waste most of a 2 MiB page
HUGE_MIN_BYTES = 1 << 20
_HUGE_PAGE = 2 << 20
_ALIGN = 64
_CAN_ADVISE = (sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")
               and hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"))


def _huge(nbytes: int) -> np.ndarray | None:
    """``nbytes`` zeroed bytes starting on a 2 MiB boundary of a private anonymous mapping advised
    for huge pages (the array keeps the mapping alive), or None where that is refused."""
    size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE + _HUGE_PAGE   # whole pages, plus room to align
    try:
        mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    raw = np.frombuffer(mm, np.uint8)
    off = -raw.ctypes.data % _HUGE_PAGE
    try:
        mm.madvise(mmap.MADV_HUGEPAGE, off, size - off)
    except OSError:
        pass  # (a kernel without transparent huge pages: still a fresh, aligned mapping)
    return raw[off:off + nbytes]


def empty_aligned(shape: Any, dtype: Any = np.float32, zero: bool = False) -> np.ndarray:
    """A C-contiguous array whose data starts on a 64-byte boundary (NumPy's allocator gives 16
    bytes: every AVX-512 load of the kernels would then span two cache lines); from
    :data:`HUGE_MIN_BYTES` on, on a 2 MiB boundary of its own mapping advised for transparent huge
    pages (Linux).

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    zero : bool
        Zero the contents (a fresh mapping is zeroed already).

    Returns
    -------
    ndarray
        Writable, C-contiguous; the contents unspecified unless ``zero``.

    Examples
    --------
    >>> from cnnkit._memory import empty_aligned
    >>> a = empty_aligned((3, 5), "float32", zero=True)
    >>> a.ctypes.data % 64, a.shape, float(a.sum())
    (0, (3, 5), 0.0)
    """
    dt = np.dtype(dtype)
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"shape: expected sizes >= 0, got {tuple(shape)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if _CAN_ADVISE and nbytes >= HUGE_MIN_BYTES:
        raw = _huge(nbytes)
        if raw is not None:
            return raw.view(dt).reshape(shape)
    raw = np.zeros(nbytes + _ALIGN, np.uint8) if zero else np.empty(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off:off + nbytes].view(dt).reshape(shape)
