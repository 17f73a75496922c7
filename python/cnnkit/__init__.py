"""cnnkit: fast convolutional-network building blocks on NumPy arrays.

A compiled core (C++ with AVX-512/AVX2 and OpenMP, optional CUDA) under a thin NumPy-native
layer. Semantics follow PyTorch wherever PyTorch has the same operation.

Every result is independent of the thread count: reductions use fixed-size blocks whose partial
results are combined in a fixed order.
"""
from __future__ import annotations

from . import _core
from ._runtime import build_info, get_num_threads, set_num_threads
from ._kernels import kernels
from . import augment, bench, data, experiments, explain, models, nn, ops, optim, train
from .ops import (batch_norm_backward, batch_norm_infer, batch_norm_train, conv2d, conv2d_backward,
                  depthwise_separable_conv2d, depthwise_separable_conv2d_backward, fold_batch_norm,
                  group_norm, group_norm_backward)

__version__ = _core.build_facts()["version"]

__all__ = ["build_info", "get_num_threads", "set_num_threads", "kernels", "augment", "bench", "data", "experiments", "explain", "models", "nn", "ops", "optim", "train",
           "batch_norm_train", "batch_norm_infer", "batch_norm_backward", "group_norm",
           "group_norm_backward", "fold_batch_norm", "conv2d", "conv2d_backward",
           "depthwise_separable_conv2d", "depthwise_separable_conv2d_backward", "__version__"]
