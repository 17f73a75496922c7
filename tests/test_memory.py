"""cnnkit._memory.empty_aligned: the layers' workspace arrays (64-byte aligned; from HUGE_MIN_BYTES
on, 2 MiB-aligned mappings advised for transparent huge pages on Linux)."""
from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

from cnnkit import _memory, nn
from cnnkit._memory import HUGE_MIN_BYTES, empty_aligned


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping holding ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split(":", 1)[1].split()
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("shape, dtype", [((7,), np.float32), ((3, 5, 2), np.float64), ((0, 4), np.float32),
                                          ((HUGE_MIN_BYTES // 4 - 1,), np.float32)])
def test_small_arrays_are_64_byte_aligned_and_zeroed_on_request(shape, dtype):
    a = empty_aligned(shape, dtype, zero=True)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert (a.size == 0 or a.ctypes.data % 64 == 0) and not a.any()
    a[...] = 3
    assert (a == 3).all()


@pytest.mark.parametrize("nbytes", [HUGE_MIN_BYTES, 3 * HUGE_MIN_BYTES + 4, 8 << 20])
def test_large_arrays_start_on_2_mib_advised_for_huge_pages(nbytes):
    a = empty_aligned((nbytes // 4,), np.float32, zero=True)
    assert a.flags.c_contiguous and a.flags.writeable and not a.any()
    if not _memory._CAN_ADVISE:
        assert a.ctypes.data % 64 == 0
        return
    assert a.ctypes.data % (2 << 20) == 0
    if os.path.isdir("/sys/kernel/mm/transparent_hugepage"):   # (a kernel with THP takes the advice)
        assert "hg" in _vm_flags(a.ctypes.data)    # MADV_HUGEPAGE on the array's mapping
    v = a[1:].reshape(-1)[: 1000]
    del a
    gc.collect()
    v[:] = np.arange(1000)                           # the view keeps the mapping alive
    assert v.sum() == 999 * 1000 / 2


def test_layer_buffers_come_from_empty_aligned():
    # A layer's output of 4 MiB is a reused buffer on a 2 MiB boundary (Linux), 64 bytes elsewhere.
    conv = nn.Conv2d(8, 16, 3, padding=1, layout="NHWC", rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((16, 64, 64, 8)).astype(np.float32)
    y = conv(x)
    assert y.nbytes == 16 * 64 * 64 * 16 * 4 and conv(x) is y
    assert y.ctypes.data % ((2 << 20) if _memory._CAN_ADVISE else 64) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise")
def test_a_refused_advice_still_gives_an_aligned_zeroed_array(monkeypatch):
    import mmap
    import types

    class Refusing(mmap.mmap):
        def madvise(self, *a):
            raise OSError(22, "Invalid argument")
    fake = types.SimpleNamespace(mmap=Refusing, MAP_PRIVATE=mmap.MAP_PRIVATE, MAP_ANONYMOUS=mmap.MAP_ANONYMOUS,
                                 MADV_HUGEPAGE=getattr(mmap, "MADV_HUGEPAGE", 14))
    monkeypatch.setattr(_memory, "mmap", fake)
    monkeypatch.setattr(_memory, "_CAN_ADVISE", True)
    a = empty_aligned((HUGE_MIN_BYTES // 4,), np.float32)
    assert a.ctypes.data % (2 << 20) == 0 and not a.any()


def test_negative_sizes_are_refused_before_anything_is_mapped():
    # (-1024, -1024) has a positive product: it must not reach the huge-page mapping either.
    for shape in [(-1,), (-1024, -1024), (4, -2)]:
        with pytest.raises(ValueError, match="shape"):
            empty_aligned(shape, np.float32)
