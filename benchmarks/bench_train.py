"""Training-step benchmark: cnnkit's resnext_small and mobilenet_small vs the identical PyTorch
model (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.train.main`, also available as ``cnnkit bench train``.

    python benchmarks/bench_train.py [--models resnext,mobilenet] [--threads N] [--batch N]
                                     [--repeats N] [--warmup N] [--profile-steps N] [--top N]
                                     [--quick] [--markdown] [--no-torch] [--no-check]
                                     [--json PATH]
"""
import sys

from cnnkit.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
