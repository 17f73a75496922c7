"""Attribution benchmark: cnnkit.explain vs captum and pytorch-grad-cam on the same small CNN,
and feature visualization vs the same loop in torch autograd (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.explain.main`, also available as ``cnnkit bench explain``.

    python benchmarks/bench_explain.py [--methods grad_cam,saliency,...,features] [--threads N]
                                       [--repeats N] [--warmup N] [--batch-size N]
                                       [--rise-images N] [--quick] [--markdown] [--no-torch]
                                       [--no-check] [--no-memory] [--json PATH]
                                       [--fv-steps N] [--fv-channels N]

``--methods features`` runs only the feature-visualization part (Adam steps per second of
``cnnkit.explain.feature_visualization`` against the same loop in torch autograd).
"""
import sys

from cnnkit.bench.explain import main

if __name__ == "__main__":
    sys.exit(main())
