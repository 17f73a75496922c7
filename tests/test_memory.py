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


# ---- the pool of released outputs (empty_pooled) ----------------------------------------------

@pytest.fixture
def empty_pool():
    _memory.release_pool()
    yield
    _memory.release_pool()


def test_a_released_output_block_is_taken_again_and_views_keep_it(empty_pool):
    a = _memory.empty_pooled((1024, 1024), np.float32)
    assert a.shape == (1024, 1024) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % (2 << 20) == 0
    where = a.ctypes.data
    view = a[100:]
    del a
    gc.collect()
    assert _memory.pooled_bytes() == 0  # the view still uses the block
    b = _memory.empty_pooled((1024, 1024), np.float32)
    assert b.ctypes.data != where and not np.shares_memory(b, view)
    del view
    gc.collect()
    assert _memory.pooled_bytes() == 4 << 20
    c = _memory.empty_pooled((4 << 20) // 8, np.float64)  # the same whole pages, another dtype
    assert c.ctypes.data == where and c.dtype == np.float64 and _memory.pooled_bytes() == 0
    c[...] = 1.5
    assert (c == 1.5).all() and not np.shares_memory(b, c)


def test_live_outputs_never_share_a_block_and_sizes_do_not_mix(empty_pool):
    outs = [_memory.empty_pooled((3 << 20) // 4, np.float32) for _ in range(3)]  # 3 MiB -> 4 MiB blocks
    for i, u in enumerate(outs):
        u[...] = i
    assert len({u.ctypes.data for u in outs}) == 3
    assert all((v == i).all() for i, v in enumerate(outs))
    del outs, u
    gc.collect()
    assert _memory.pooled_bytes() == 3 * (4 << 20)
    other = _memory.empty_pooled((6 << 20) // 4, np.float32)  # 6 MiB: no released block of that size
    assert _memory.pooled_bytes() == 3 * (4 << 20) and other.size == (6 << 20) // 4
    assert _memory.release_pool() == 3 * (4 << 20) and _memory.pooled_bytes() == 0


def test_the_pool_keeps_at_most_its_cap(empty_pool, monkeypatch):
    monkeypatch.setattr(_memory, "POOL_MAX_BYTES", 5 << 20)
    outs = [_memory.empty_pooled((1 << 20,), np.float32) for _ in range(3)]  # three 4 MiB blocks
    del outs
    gc.collect()
    assert _memory.pooled_bytes() == 4 << 20  # one kept, the others unmapped


def test_small_outputs_come_from_numpy_and_bad_shapes_are_refused(empty_pool):
    a = _memory.empty_pooled((HUGE_MIN_BYTES // 4 - 1,), np.float32)
    assert a.flags.owndata or a.base is not None
    del a
    assert _memory.pooled_bytes() == 0
    with pytest.raises(ValueError, match="shape: expected sizes >= 0"):
        _memory.empty_pooled((4, -1), np.float32)
    with pytest.raises(TypeError, match="shape: expected an int or a sequence of ints"):
        _memory.empty_pooled((4, "x"), np.float32)
    with pytest.raises(TypeError, match="dtype: expected a NumPy dtype"):
        _memory.empty_pooled((4, 4), "no such type")


def test_conv_outputs_come_from_the_pool_with_unchanged_values(empty_pool, rng):
    import cnnkit
    x = rng.standard_normal((4, 32, 32, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    want = cnnkit.conv2d(x, w, layout="NHWC", out=np.empty((4, 32, 32, 64), np.float32))
    y = cnnkit.conv2d(x, w, layout="NHWC")
    assert isinstance(y.base, _memory._Block) and np.array_equal(y, want)
    where = y.ctypes.data
    del y
    gc.collect()
    y2 = cnnkit.conv2d(x, w, layout="NHWC")
    assert y2.ctypes.data == where and np.array_equal(y2, want)
    gx, gw, _ = cnnkit.conv2d_backward(y2, x, w, layout="NHWC", needs=("input", "weight"))
    assert isinstance(gx.base, _memory._Block) and not np.shares_memory(gx, y2)


def test_norm_outputs_come_from_the_pool_unless_the_input_is_strided(empty_pool, rng):
    import cnnkit
    x = rng.standard_normal((8, 64, 32, 32)).astype(np.float32)  # 2 MiB
    y, mean, invstd = cnnkit.batch_norm_train(x)
    assert isinstance(y.base, _memory._Block)
    want = cnnkit.batch_norm_train(x, out=np.empty_like(x))[0]
    assert np.array_equal(y, want)
    gx, _, _ = cnnkit.batch_norm_backward(y, x, None, mean, invstd, needs=("input",))
    assert isinstance(gx.base, _memory._Block) and not np.shares_memory(gx, y)
    strided = np.asfortranarray(x)
    assert not isinstance(_memory.empty_like_pooled(strided).base, _memory._Block)
    assert _memory.empty_like_pooled(strided).flags.f_contiguous
