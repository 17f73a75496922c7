"""PyTorch-backend benchmark: stock torch against cnnkit.torch.convert(model) with the cnnkit
Adam on torchvision's mobilenet_v2, resnext50_32x4d and resnet18 (see BENCHMARKS.md).

A thin wrapper around :func:`cnnkit.bench.torch.main`, also available as ``cnnkit bench torch``.

    python benchmarks/bench_torch.py [--models mobilenet_v2,resnext50_32x4d,resnet18]
                                     [--threads N] [--batch N] [--image N] [--repeats N]
                                     [--warmup N] [--optim-steps N] [--profile-steps N]
                                     [--quick] [--markdown] [--no-check] [--json PATH]
"""
import sys

from cnnkit.bench.torch import main

if __name__ == "__main__":
    sys.exit(main())
