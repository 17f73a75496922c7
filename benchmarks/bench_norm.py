"""Batch-norm and group-norm benchmark: cnnkit vs PyTorch CPU (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.norm.main`, also available as ``cnnkit bench norm``.

    python benchmarks/bench_norm.py [--threads N] [--reps N] [--shapes 0,1,2,3]
                                    [--layouts NCHW,NHWC] [--ops train,infer,bwd,gn]
                                    [--quick] [--no-torch] [--json PATH]
"""
import sys

from cnnkit.bench.norm import main

if __name__ == "__main__":
    sys.exit(main())
