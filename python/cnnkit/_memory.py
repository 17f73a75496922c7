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

The new outputs the functional API returns (:func:`empty_pooled`: the convolutions, the fused
convolution and the norm functions without ``out=``, and their large temporaries) come from a
pool of such mappings. An array's block goes back
to the pool when the last array over it is released, and the next output of the same size (in
whole 2 MiB pages) takes it instead of a fresh mapping, whose pages the kernel would fault in and
zero again on first touch (at most :data:`POOL_MAX_BYTES` are kept; a caching allocator, as
PyTorch's for CUDA memory). Glibc serves allocations up to 32 MiB from its heap again, but maps
larger ones anew every time: the input gradient of the 1x1 256 -> 64 convolution at 56x56 over 32
images (103 MB) took 62.5 ms with a new array against 45.3 ms into a kept one, and 144 -> 24
24.7 against 16.9 ms (Intel, 2 threads).
"""
from __future__ import annotations

import math
import mmap
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["HUGE_MIN_BYTES", "POOL_MAX_BYTES", "empty_aligned", "empty_like_pooled", "empty_pooled", "pooled_bytes",
           "release_pool"]

#: arrays of at least this many bytes go on 2 MiB-aligned mappings advised for huge pages (Linux);
#: smaller ones would waste most of a 2 MiB page
HUGE_MIN_BYTES = 1 << 20
_HUGE_PAGE = 2 << 20
#: the most bytes of released blocks :func:`empty_pooled` keeps for reuse (beyond it a released
#: block is unmapped)
POOL_MAX_BYTES = 1 << 30
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
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape: expected sizes >= 0, got {dims}")
    # (math.prod on Python ints: np.prod took 3.8 of the 7.6 us a small output cost)
    nbytes = math.prod(dims) * dt.itemsize
    if _CAN_ADVISE and nbytes >= HUGE_MIN_BYTES:
        raw = _huge(nbytes)
        if raw is not None:
            return raw.view(dt).reshape(shape)
    raw = np.zeros(nbytes + _ALIGN, np.uint8) if zero else np.empty(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off:off + nbytes].view(dt).reshape(shape)


# Released blocks by size (whole 2 MiB pages) as (block, its address), and their bytes; changed
# under _lock.
_pool: dict[int, list[tuple[np.ndarray, int]]] = {}
_held = [0]
_lock = threading.Lock()


class _Block:
    """The owner of a pooled block while arrays use it: NumPy keeps it as their base (through
    ``__array_interface__``), and when the last of them is released the block returns to the
    pool."""

    __slots__ = ("raw", "addr", "__array_interface__")

    def __init__(self, raw: np.ndarray, addr: int, shape: tuple, dtype: np.dtype) -> None:
        self.raw, self.addr = raw, addr
        self.__array_interface__ = {"data": (addr, False), "shape": shape, "typestr": dtype.str, "version": 3}

    def __del__(self) -> None:
        raw, size = self.raw, self.raw.nbytes
        lock = _lock
        # (non-blocking: a collection inside empty_pooled's locked section may release a block
        # on the same thread; that block is then unmapped instead of kept. At interpreter exit
        # the module's globals may be gone already: then nothing is kept.)
        if lock is None or not lock.acquire(blocking=False):
            return
        try:
            if _held[0] + size <= POOL_MAX_BYTES:
                _pool.setdefault(size, []).append((raw, self.addr))
                _held[0] += size
        except (TypeError, AttributeError):  # (the module torn down at exit)
            pass
        finally:
            lock.release()


def empty_pooled(shape: Any, dtype: Any = np.float32) -> np.ndarray:
    """A new array for an output: from :data:`HUGE_MIN_BYTES` on, a block of the pool of released
    outputs (or a new one, as :func:`empty_aligned` maps it) that returns to the pool when the
    array and every view of it are released; smaller ones from NumPy.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : numpy dtype

    Returns
    -------
    ndarray
        Writable, C-contiguous, 64-byte aligned (2 MiB from :data:`HUGE_MIN_BYTES` on); the
        contents unspecified (a reused block holds what its last array held).

    Examples
    --------
    >>> from cnnkit._memory import empty_pooled
    >>> a = empty_pooled((1024, 1024), "float32"); where = a.ctypes.data
    >>> del a
    >>> b = empty_pooled((512, 2048), "float32")  # the same 4 MiB: the released block again
    >>> b.ctypes.data == where, b.shape, b.flags.writeable
    (True, (512, 2048), True)
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected a NumPy dtype, got {dtype!r}") from None
    try:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape: expected an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape: expected sizes >= 0, got {shape}")
    # (Python ints, as math.prod: np.prod cost 6 us of the ~14 this function took on every call,
    # the block's address from ctypes 2 us more: kept with the block instead. Against a
    # 0.34 ms depthwise forward, the new output's Python work had cost 30 us more than out=.)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < HUGE_MIN_BYTES:
        return empty_aligned(shape, dt)
    size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE
    got = None
    with _lock:
        free = _pool.get(size)
        if free:
            got = free.pop()
            _held[0] -= size
    if got is None:
        raw = (_huge(size) if _CAN_ADVISE else None)
        if raw is None:
            raw = empty_aligned((size,), np.uint8)
        got = (raw, raw.ctypes.data)
    return np.asarray(_Block(got[0], got[1], shape, dt))


def empty_like_pooled(x: np.ndarray) -> np.ndarray:
    """:func:`empty_pooled` of ``x``'s shape and dtype for a C-contiguous ``x``; otherwise
    ``np.empty_like(x)`` (its memory layout)."""
    return empty_pooled(x.shape, x.dtype) if x.flags.c_contiguous else np.empty_like(x)


def pooled_bytes() -> int:
    """Bytes of released blocks the pool of :func:`empty_pooled` holds now."""
    return _held[0]


def release_pool() -> int:
    """Unmap every released block the pool holds (arrays in use keep theirs); the bytes freed."""
    with _lock:
        freed = _held[0]
        _pool.clear()
        _held[0] = 0
    return freed
