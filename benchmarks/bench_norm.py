"""Batch-norm and group-norm benchmark: cnnkit vs PyTorch CPU (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.norm.main`, also available as ``cnnkit bench norm``.

    python benchmarks/bench_norm.py [--threads N] [--reps N] [--shapes 0,1,2,3]
                                    [--layouts NCHW,NHWC] [--ops train,infer,bwd,gn]
                                    [--quick] [--no-torch] [--json PATH]
"""
from __future__ import annotations

import sys


def _impl():
    try:
        from cnnkit.bench import norm
    except ImportError:  # an installed cnnkit older than this checkout: use the checkout's files
        import importlib.util
        from pathlib import Path

        import cnnkit.bench
        here = Path(__file__).resolve().parents[1] / "python" / "cnnkit" / "bench"
        for name in ("_common", "norm"):  # norm imports cnnkit.bench._common
            full = f"cnnkit.bench.{name}"
            spec = importlib.util.spec_from_file_location(full, here / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            spec.loader.exec_module(mod)
            setattr(cnnkit.bench, name, mod)
        norm = sys.modules["cnnkit.bench.norm"]
    return norm


def main(argv=None) -> int:
    return _impl().main(argv)


if __name__ == "__main__":
    sys.exit(main())
