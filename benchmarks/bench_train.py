"""Training-step benchmark: cnnkit's resnext_small and mobilenet_small vs the identical PyTorch
model (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.train.main`, also available as ``cnnkit bench train``.

    python benchmarks/bench_train.py [--models resnext,mobilenet] [--threads N] [--batch N]
                                     [--repeats N] [--warmup N] [--profile-steps N] [--top N]
                                     [--breakdown fused,modules] [--quick] [--markdown]
                                     [--no-torch] [--no-check] [--json PATH]

The per-layer breakdowns after the timed rounds (--breakdown, both by default): "fused" times the
compiled kernels, cnnkit.ops calls and NumPy glue of the step as it runs (fusion on), with each
part's roofline floor; "modules" times every module (cnnkit's layers then run unfused) beside the
same modules of the torch twin.
"""
import sys

from cnnkit.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
