"""Optimizer-step benchmark: cnnkit.optim vs NumPy and torch.optim (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.optim.main`, also available as ``cnnkit bench optim``.

    python benchmarks/bench_optim.py [--threads N] [--reps N] [--algos a,b] [--lists large,small]
                                     [--quick] [--json PATH]
"""
from __future__ import annotations

import sys


def _impl():
    try:
        from cnnkit.bench import optim
    except ImportError:  # an installed cnnkit older than this checkout: use the checkout's file
        import importlib.util
        from pathlib import Path
        path = Path(__file__).resolve().parents[1] / "python" / "cnnkit" / "bench" / "optim.py"
        spec = importlib.util.spec_from_file_location("cnnkit_bench_optim", path)
        optim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(optim)
    return optim


def main(argv=None) -> int:
    return _impl().main(argv)


if __name__ == "__main__":
    sys.exit(main())
