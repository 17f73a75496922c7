"""The compiled calls release the GIL while their kernel runs.

A second Python thread counts in a loop (yielding the GIL after every step) while the main thread
makes the same compiled call again and again for about 50 ms. The switch interval is set far above
that, so the main thread never hands the GIL over on its own: if the call held the GIL, the main
thread would hold it for the whole window and the counter could not move at all (exactly zero
steps, on any machine). A call that releases it lets the counter run on the other core. The calls go to ``cnnkit._core`` directly, so no NumPy
operation in the Python layer (some release the GIL themselves) can make the test pass, and run at
one OpenMP thread. A few tries absorb a busy machine where the counter thread might not be
scheduled during a short call; a call that holds the GIL cannot pass any of them.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import cnnkit
from cnnkit import _core
from cnnkit.ops.conv import _Geom

TRIES = 5
SWITCH_INTERVAL = 5.0  # seconds; far above any call below, even on a loaded machine


class _Counter(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = False

    def run(self):
        while not self.stop:
            self.count += 1
            time.sleep(0)  # yields the GIL, so the main thread never waits a switch interval for it


def _steps_during(fn, seconds: float = 0.05) -> int:
    """How many steps the counter thread makes while the main thread runs fn() for `seconds`."""
    counter = _Counter()
    old = sys.getswitchinterval()
    counter.start()
    try:
        while counter.count < 10:  # the counter is running
            time.sleep(0.001)
        sys.setswitchinterval(SWITCH_INTERVAL)
        c0, t0 = counter.count, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
        c1 = counter.count
    finally:
        sys.setswitchinterval(old)
        counter.stop = True
        counter.join()
    return c1 - c0


def _assert_releases_gil(fn, what: str) -> None:
    threads = cnnkit.get_num_threads()
    cnnkit.set_num_threads(1)
    try:
        fn()  # warm up (scratch buffers, first-touch pages)
        steps = []
        for _ in range(TRIES):
            t0 = time.perf_counter()
            steps.append(_steps_during(fn))
            assert time.perf_counter() - t0 < SWITCH_INTERVAL / 2, f"{what}: too slow for this test"
            if steps[-1] > 0:
                return
    finally:
        cnnkit.set_num_threads(threads)
    pytest.fail(f"{what}: another Python thread made no progress during the call in {TRIES} tries "
                f"(the call holds the GIL)")


def test_conv_forward_releases_gil(rng):
    x = rng.standard_normal((4, 32, 40, 40)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    g = _Geom(x.shape, w.shape, 1, 1, 1, 1, "NCHW", x.dtype)
    out = np.empty(g.y_shape(), np.float32)
    _assert_releases_gil(lambda: _core.conv_forward(x, w, None, out, g.core()), "conv_forward")


def test_norm_calls_release_gil(rng):
    N, C, S = 16, 64, 1024
    x = rng.standard_normal((N, C, S)).astype(np.float32)
    y = np.empty_like(x)
    mean, var = _core.norm_stats(x, N, C, S, False, False)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    _assert_releases_gil(lambda: _core.norm_stats(x, N, C, S, False, False), "norm_stats")
    _assert_releases_gil(lambda: _core.norm_apply(x, y, None, N, C, S, False, False, mean, invstd, None, None,
                                                  False), "norm_apply")
    # the per-channel helpers, at a size where they take long enough to be seen
    n = 1 << 21
    rm, rv = np.zeros(n, np.float32), np.ones(n, np.float32)
    m, v = rng.standard_normal(n), rng.random(n)
    _assert_releases_gil(lambda: _core.norm_update_running(rm, rv, m, v, 0.1, 1.0), "norm_update_running")
    _assert_releases_gil(lambda: _core.norm_invstd(rv, 1e-5), "norm_invstd")
