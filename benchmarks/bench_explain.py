"""Attribution benchmark: cnnkit.explain vs captum and pytorch-grad-cam on the same small CNN
(see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.explain.main`, also available as ``cnnkit bench explain``.

    python benchmarks/bench_explain.py [--methods grad_cam,saliency,...] [--threads N]
                                       [--repeats N] [--warmup N] [--batch-size N]
                                       [--rise-images N] [--quick] [--markdown] [--no-torch]
                                       [--no-check] [--no-memory] [--json PATH]
"""
import sys

from cnnkit.bench.explain import main

if __name__ == "__main__":
    sys.exit(main())
