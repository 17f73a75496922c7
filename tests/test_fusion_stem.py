"""The stem kernel's statistics epilogue (``conv2d_fused(stats=True)`` on the
``conv2d_stem_f32_nhwc`` entry: a dense NHWC float32 convolution with at most 4 input channels
and 16-64 outputs).

* output bitwise the plain stem pass, statistics against the float64 reference of the suite's
  tolerance table, the same bits at 1 and 2 threads, every ISA level, batch sizes on both sides
  of the per-image units (N >= 16: one unit an image; smaller: bands of rows);
* the kernel that ran is the stem entry; a prologue, residual or ReLU on a stem problem still
  declines to the reference path (a network's first convolution reads the image).
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from cnnkit import _core
from cnnkit.ops import fused as F
from conftest import assert_bitwise, assert_close, num_threads


def _case(N, C, K, H, W, k, s, p, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, H, W, C)) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal((K, C, k, k)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, dict(stride=s, padding=p, layout="NHWC")


@pytest.mark.parametrize("N,C,K,H,W,k,s,p", [
    (2, 3, 32, 9, 10, 3, 1, 1), (1, 2, 16, 11, 9, 5, 2, 2), (3, 4, 64, 7, 8, 3, 1, 1),
    (17, 3, 48, 6, 5, 3, 1, 1), (5, 2, 16, 13, 1, 3, 2, 1)])
def test_stem_statistics_epilogue(N, C, K, H, W, k, s, p, isa):
    x, w, b, kw = _case(N, C, K, H, W, k, s, p, N * 100 + K)
    geom = cnnkit.ops.conv._geom(x.shape, w.shape, s, p, 1, 1, "NHWC", np.float32).core()
    plain_entry = _core.conv_registry()[_core.conv_registry_select(geom, "float32", "forward")][0]
    assert plain_entry.startswith("conv2d_stem_f32_nhwc")
    outs = {}
    for t in (1, 2):
        with num_threads(t):
            outs[t] = F.conv2d_fused(x, w, b, stats=True, **kw)
            assert F.last_kernel == plain_entry
    for a, c in zip(outs[1], outs[2]):
        assert_bitwise(a, c, "1 and 2 threads")
    y, mean, var = outs[1]
    assert_bitwise(y, cnnkit.conv2d(x, w, b, **kw), "output (the plain stem pass)")
    y64 = y.astype(np.float64)
    count = y.shape[0] * y.shape[1] * y.shape[2]
    assert_close(mean, y64.mean(axis=(0, 1, 2)), np.float32, length=count, what="mean")
    assert_close(var, y64.var(axis=(0, 1, 2)), np.float32, length=count, what="variance")


def test_stem_declines_prologue_residual_and_relu():
    x, w, b, kw = _case(2, 3, 32, 8, 8, 3, 1, 1, 0)
    C = x.shape[3]
    F.conv2d_fused(x, w, b, stats=True, **kw)
    assert F.last_kernel.startswith("conv2d_stem_f32_nhwc")
    y_ref = cnnkit.conv2d(x, w, b, **kw)
    for extra in (dict(pre_scale=np.ones(C, np.float32), pre_shift=np.zeros(C, np.float32)),
                  dict(residual=np.ones_like(y_ref)), dict(post_relu=True)):
        y = F.conv2d_fused(x, w, b, **kw, **extra)
        assert F.last_kernel == "reference"
        expect = y_ref + (1 if "residual" in extra else 0)
        assert_close(y, np.maximum(expect, 0) if "post_relu" in extra else expect, np.float32, length=27,
                     what=str(sorted(extra)))
