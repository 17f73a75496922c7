"""A NumPy-native layer stack on cnnkit's kernels.

Every module has ``forward(x)`` and ``backward(grad)``; a training step reads::

    logits = model.forward(x)
    value = loss_fn.forward(logits, labels)
    model.backward(loss_fn.backward())
    opt.step(model.gradients())

with ``opt = cnnkit.optim.Adam(model.parameters(), lr=...)``. Parameters (and gradients) are
views into one flat float32 arena, in PyTorch's order for the same architecture.

Naming: ``Module.backward(grad)`` is cnnkit's layer protocol (torch modules have no backward
method to mirror): ``grad`` is the gradient at the module's output, the same array a
:class:`Capture` records as ``grad``, and layers chain it positionally. The functional backward
passes (``cnnkit.conv2d_backward``, ``cnnkit.batch_norm_backward``, ...) mirror torch's
functional signatures and call the same array ``grad_output``.
"""
from .layers import (AvgPool2d, BatchNorm2d, BottleneckBlock, Conv2d, DepthwiseSeparableConv2d, Dropout, Flatten,
                     GlobalAvgPool2d, GroupNorm, Linear, MaxPool2d, ReLU, ResidualBlock, SpatialDropout2d)
from .loss import CrossEntropyLoss
from .module import Capture, Module, Sequential, fusion, fusion_enabled

__all__ = ["Module", "Sequential", "Capture", "Conv2d", "DepthwiseSeparableConv2d", "BatchNorm2d", "GroupNorm",
           "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "Linear", "Dropout", "SpatialDropout2d",
           "ResidualBlock", "BottleneckBlock", "CrossEntropyLoss", "fusion", "fusion_enabled"]
