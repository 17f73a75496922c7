"""Shared fixtures and the one tolerance table (atol + rtol*|ref|, scaled with reduction length)."""
from __future__ import annotations

import contextlib
import os
import zlib

import numpy as np
import pytest

import cnnkit
from cnnkit import _core, _runtime

# Tolerances for comparing a kernel with its float64 reference, per dtype.
TOL = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-14),
}


def tol(dtype, length: int = 1, steps: int = 1) -> dict:
    """Tolerance for `dtype`, widened with sqrt of the reduction length and the number of steps."""
    t = TOL[np.dtype(dtype)]
    scale = np.sqrt(max(length, 1)) * steps
    return dict(rtol=t["rtol"] * scale, atol=t["atol"] * scale)


def assert_close(actual, ref, dtype, *, length=1, steps=1, what="value"):
    """Check every element against atol + rtol*|ref|; name the worst index on failure."""
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    t = tol(dtype, length, steps)
    bound = t["atol"] + t["rtol"] * np.abs(ref)
    err = np.abs(actual - ref)
    bad = ~(err <= bound)
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), ref.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.size} elements out of tolerance; "
                             f"worst at index {idx}: got {actual[idx]!r}, expected {ref[idx]!r} "
                             f"(bound {bound[idx]:.3g})")


def assert_sum_close(actual, ref, ref_abs, length, what="sum", dtype=np.float32):
    """A sum over ``length`` terms (a weight or bias gradient, a statistic) against float64, the
    table's tolerance applied to the sum of the terms' magnitudes ``ref_abs`` (for a weight
    gradient sum |dy| |a|) instead of to |ref|: floating-point summation error grows with the terms,
    not with their cancelled total. (assert_close's atol + rtol*|ref| assumes unit-sized terms; the
    prologue scales a by up to 2 and shifts it, and an element that cancelled to -0.0026 from terms
    near 10 missed its 1.3e-5 bound by 1e-7 in CI; a batch norm's input gradient sums to zero per
    channel by construction, from terms near 50 at a steep norm.)"""
    t = tol(dtype, length)
    err = np.abs(np.asarray(actual, np.float64) - ref)
    bound = t["atol"] + t["rtol"] * np.asarray(ref_abs, np.float64)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {np.size(ref)} elements out of tolerance; worst excess "
                           f"{float(np.max(err - bound)):.3g}")


def assert_stats(s1, s2, y, y_exact, dtype, *, length=1, what="statistics"):
    """A fused forward's statistics (NCHW ``y``, the output it returned; ``y_exact`` the float64
    reference): the sums of ``y`` about its first pixel's value per channel, in double, to 1e-12
    of the terms' magnitudes; then the mean and variance they give against ``y_exact``'s to the
    table's tolerance. (Compared with the exact output's sums directly, the differences inherit
    y's own rounding error, which scales with |y|, not with the shifted terms: at one output pixel
    the kernel's sum is exactly 0 and such a reference was -6.3e-6 with a bound of 5.7e-6.)"""
    o = np.asarray(y, np.float64)
    shift = o[0, :, 0, 0]
    d = o - shift[None, :, None, None]
    cnt = o.shape[0] * o.shape[2] * o.shape[3]
    scale = np.abs(d).sum(axis=(0, 2, 3)) + 1e-300
    assert np.all(np.abs(s1 - d.sum(axis=(0, 2, 3))) <= 1e-12 * scale), f"{what}: sum {s1} vs {d.sum(axis=(0, 2, 3))}"
    scale2 = (d * d).sum(axis=(0, 2, 3)) + 1e-300
    assert np.all(np.abs(s2 - (d * d).sum(axis=(0, 2, 3))) <= 1e-12 * scale2), f"{what}: sum of squares"
    mean = shift + s1 / cnt
    var = s2 / cnt - (s1 / cnt) ** 2
    assert_close(mean, y_exact.mean(axis=(0, 2, 3)), dtype, length=length, what=f"mean from the sums, {what}")
    assert_close(var, y_exact.var(axis=(0, 2, 3)), dtype, length=length, what=f"variance from the sums, {what}")


ISA_LEVELS = [lvl for lvl in ("scalar", "avx2", "avx512")
              if ["scalar", "avx2", "avx512"].index(lvl)
              <= ["scalar", "avx2", "avx512"].index(_core.isa_supported())]


@pytest.fixture(params=ISA_LEVELS)
def isa(request):
    """Run the test once per ISA level this CPU supports (restored afterwards)."""
    before = _core.isa_active()
    _runtime._set_isa(request.param)
    yield request.param
    _runtime._set_isa(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test at 1 and 2 threads (restored afterwards)."""
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(request.param)
    yield request.param
    cnnkit.set_num_threads(before)


@pytest.fixture
def rng(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@contextlib.contextmanager
def isa_level(name: str):
    """Run the body at ISA level `name` (restored afterwards); for tests that compare levels."""
    before = _core.isa_active()
    _runtime._set_isa(name)
    try:
        yield name
    finally:
        _runtime._set_isa(before)


@contextlib.contextmanager
def num_threads(n: int):
    """Run the body with `n` cnnkit threads (restored afterwards)."""
    before = cnnkit.get_num_threads()
    cnnkit.set_num_threads(n)
    try:
        yield n
    finally:
        cnnkit.set_num_threads(before)


def assert_bitwise(actual, expected, what="value"):
    """Same dtype, shape and bits (NaN payloads included); name the first differing index."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.tobytes() == expected.tobytes():
        return
    uint = np.dtype(f"u{actual.itemsize}")
    a = np.ascontiguousarray(actual).reshape(-1).view(uint)
    e = np.ascontiguousarray(expected).reshape(-1).view(uint)
    k = int(np.argmax(a != e))
    idx = np.unravel_index(k, actual.shape) if actual.ndim else ()
    raise AssertionError(f"{what}: {int((a != e).sum())} of {a.size} elements differ in their "
                         f"bits; first at index {idx}: got {actual[idx]!r}, "
                         f"expected {expected[idx]!r}")


def snapshot(*arrays):
    """Copies of the arrays (None stays None), for assert_unchanged."""
    return [None if a is None else a.copy() for a in arrays]


def assert_unchanged(arrays, snaps, what="input"):
    """The arrays still hold the snapshot's bits (inputs were not modified)."""
    for i, (a, s) in enumerate(zip(arrays, snaps)):
        if a is not None:
            assert_bitwise(a, s, f"{what}[{i}] modified")


def import_torchvision():
    """``(torch, torchvision)`` for the optional oracle tests, or a skip (the CUDA torchvision
    wheel imports next to CPU torch only without its op registration: see
    :func:`cnnkit.bench._common.import_torchvision`)."""
    torch = pytest.importorskip("torch")
    from cnnkit.bench._common import import_torchvision as _import
    torchvision = _import()
    if torchvision is None:
        pytest.skip("torchvision is not importable")
    return torch, torchvision


# ---- CI: a parity test never skips for a missing peer --------------------------------------------
# The oracles (torch, torchvision, captum, pytorch-grad-cam, OpenCV, Pillow, scikit-image) come with
# the test extra; a module that cannot import one skips, which hides a whole parity check. With
# CNNKIT_REQUIRE_PEERS=1 (.ci/run sets it) every skip fails the run unless its reason starts with
# one of these, which depend on the machine, not on what was installed:
ALLOWED_SKIPS = (
    "needs cnnkit built with CUDA and a GPU",  # test_optim_cuda.py: no GPU, or a build without CUDA
    "needs CuPy or PyTorch with CUDA",         # test_optim_cuda.py: a GPU, but CPU-only array peers
    "this CPU runs only the scalar kernels",   # test_optim.py: no second ISA level to compare
)
REQUIRE_PEERS = os.environ.get("CNNKIT_REQUIRE_PEERS", "") not in ("", "0")
_forbidden_skips = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def _check_skip(report):
    if REQUIRE_PEERS and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not reason.startswith(ALLOWED_SKIPS):
            _forbidden_skips.append((report, reason))


def pytest_collectreport(report):
    """Module-level skips (``pytest.importorskip`` at import time)."""
    _check_skip(report)


def pytest_runtest_logreport(report):
    """Skips inside a test or fixture."""
    _check_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _forbidden_skips:
        return
    terminalreporter.section("skipped for a missing peer (CNNKIT_REQUIRE_PEERS=1): failing the run",
                             sep="=", red=True, bold=True)
    for report, reason in _forbidden_skips:
        terminalreporter.line(f"{report.nodeid}: {reason}", red=True)
    terminalreporter.line('install every oracle with pip install ".[test]"; a skip that depends on the '
                          "machine belongs in ALLOWED_SKIPS (tests/conftest.py)")
    # counted in the closing line too: "... N skipped, M missing peer"
    terminalreporter.stats.setdefault("missing peer", []).extend(r for r, _ in _forbidden_skips)
