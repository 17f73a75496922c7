"""2-D convolution benchmark: cnnkit vs PyTorch CPU and NumPy im2col (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.conv.main`, also available as ``cnnkit bench conv``.

    python benchmarks/bench_conv.py [--threads N] [--repeats N] [--family depthwise,grouped,dense]
                                    [--layout NCHW,NHWC] [--pass fwd,bwd] [--match TEXT]
                                    [--quick] [--markdown] [--no-torch] [--json PATH]
"""
import sys

from cnnkit.bench.conv import main

if __name__ == "__main__":
    sys.exit(main())
