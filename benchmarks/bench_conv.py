"""2-D convolution benchmark: cnnkit vs PyTorch CPU and NumPy im2col (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.conv.main`, also available as ``cnnkit bench conv``.

    python benchmarks/bench_conv.py [--threads N] [--repeats N] [--family depthwise,grouped,dense]
                                    [--layout NCHW,NHWC] [--pass fwd,bwd] [--match TEXT]
                                    [--quick] [--markdown] [--no-torch] [--json PATH]
"""
from __future__ import annotations

import sys


def _impl():
    try:
        from cnnkit.bench import conv
    except ImportError:  # an installed cnnkit older than this checkout: use the checkout's files
        import importlib.util
        from pathlib import Path

        import cnnkit.bench
        here = Path(__file__).resolve().parents[1] / "python" / "cnnkit" / "bench"
        for name in ("_common", "conv"):  # conv imports cnnkit.bench._common
            full = f"cnnkit.bench.{name}"
            spec = importlib.util.spec_from_file_location(full, here / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            spec.loader.exec_module(mod)
            setattr(cnnkit.bench, name, mod)
        conv = sys.modules["cnnkit.bench.conv"]
    return conv


def main(argv=None) -> int:
    return _impl().main(argv)


if __name__ == "__main__":
    sys.exit(main())
