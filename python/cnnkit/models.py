"""Small CNNs built from :mod:`cnnkit.nn`, sized for 8x8 to 64x64 inputs with 1 or 3 channels.

Each builder takes ``norm`` ("batch", "group" or None: no normalization, convolutions get
biases), ``layout`` ("NCHW" or "NHWC" for the input and every layer) and ``seed`` (the
initialization, PyTorch's default scheme). The same architecture written in PyTorch has its
parameters in the same order, so weights copy one to one.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import nn

__all__ = ["resnet_small", "resnext_small", "mobilenet_small"]


def _stem(in_channels: int, width: int, norm: Optional[str], layout: str,
          rng: np.random.Generator) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm is None, layout=layout, rng=rng)
    if norm is None:
        return [conv, nn.ReLU()]
    if norm == "batch":
        return [conv, nn.BatchNorm2d(width, activation="relu", layout=layout)]
    if norm == "group":
        return [conv, nn.GroupNorm(min(8, width), width, activation="relu", layout=layout)]
    raise ValueError(f"norm: expected 'batch', 'group' or None, got {norm!r}")


def _check(in_channels: int, num_classes: int, widths: Sequence[int]) -> None:
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels: expected 1 or 3, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    if len(widths) < 1 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths: expected positive channel counts, got {widths!r}")


def resnet_small(in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1), norm: Optional[str] = "batch", layout: str = "NCHW",
                 seed: int = 0) -> nn.Sequential:
    """ResNet: 3x3 stem, stages of :class:`cnnkit.nn.ResidualBlock` (the first block of every
    stage after the first halves the resolution), global average pooling, a linear classifier.

    Parameters
    ----------
    in_channels : {1, 3}
    num_classes : int >= 2
    widths : sequence of int
        Channels of the stem and of each stage.
    blocks : sequence of int
        Residual blocks per stage.
    norm : "batch", "group" or None
        Batch norm (ReLU fused), group norm (gcd(8, C) groups) or none (convolutions get biases).
    layout : "NCHW" or "NHWC"
        The input's and every layer's layout.
    seed : int
        The initialization (PyTorch's default scheme), from ``numpy.random.default_rng(seed)``.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, num_classes) for a float32 batch (8x8 to 64x64 pixels).

    Examples
    --------
    >>> from cnnkit import models
    >>> models.resnet_small(1, 4, seed=0).num_parameters() > 0
    True
    """
    _check(in_channels, num_classes, widths)
    rng = np.random.default_rng(seed)
    layers = _stem(in_channels, widths[0], norm, layout, rng)
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(nn.ResidualBlock(c, w, 2 if (i > 0 and j == 0) else 1, norm=norm, layout=layout, rng=rng))
            c = w
    layers += [nn.GlobalAvgPool2d(layout=layout), nn.Linear(c, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def resnext_small(in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (32, 64, 128),
                  blocks: Sequence[int] = (1, 1, 1), groups: int = 8, norm: Optional[str] = "batch",
                  layout: str = "NCHW", seed: int = 0) -> nn.Sequential:
    """ResNeXt: 3x3 stem, stages of :class:`cnnkit.nn.BottleneckBlock` with grouped 3x3 convs
    (``groups`` groups, bottleneck width = half the stage width, rounded to the groups).

    Parameters
    ----------
    in_channels : {1, 3}
    num_classes : int >= 2
    widths : sequence of int
        Channels of the stem and of each stage.
    blocks : sequence of int
        Bottleneck blocks per stage.
    groups : int
        Groups of the 3x3 convolutions.
    norm : "batch", "group" or None
        Batch norm (ReLU fused), group norm (gcd(8, C) groups) or none (convolutions get biases).
    layout : "NCHW" or "NHWC"
        The input's and every layer's layout.
    seed : int
        The initialization (PyTorch's default scheme), from ``numpy.random.default_rng(seed)``.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, num_classes) for a float32 batch (8x8 to 64x64 pixels).

    Examples
    --------
    >>> from cnnkit import models
    >>> models.resnext_small(1, 4, seed=0).num_parameters() > 0
    True
    """
    _check(in_channels, num_classes, widths)
    rng = np.random.default_rng(seed)
    layers = _stem(in_channels, widths[0], norm, layout, rng)
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        inner = max(groups, (w // 2) // groups * groups)
        for j in range(n):
            layers.append(nn.BottleneckBlock(c, w, inner, 2 if (i > 0 and j == 0) else 1, groups=groups, norm=norm,
                                             layout=layout, rng=rng))
            c = w
    layers += [nn.GlobalAvgPool2d(layout=layout), nn.Linear(c, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def mobilenet_small(in_channels: int = 3, num_classes: int = 10, *, widths: Sequence[int] = (32, 64, 128, 256),
                    norm: Optional[str] = "batch", layout: str = "NCHW", seed: int = 0) -> nn.Sequential:
    """MobileNet (v1): 3x3 stem, then depthwise-separable blocks (depthwise 3x3 - norm - ReLU -
    pointwise 1x1 - norm - ReLU; without norm the pair is the fused
    :class:`cnnkit.nn.DepthwiseSeparableConv2d` then ReLU); the second and later blocks halve the
    resolution every other block.

    Parameters
    ----------
    in_channels : {1, 3}
    num_classes : int >= 2
    widths : sequence of int
        Channels of the stem and of each stage (one block per width after the first).
    norm : "batch", "group" or None
        Batch norm (ReLU fused), group norm (gcd(8, C) groups) or none (convolutions get biases).
    layout : "NCHW" or "NHWC"
        The input's and every layer's layout.
    seed : int
        The initialization (PyTorch's default scheme), from ``numpy.random.default_rng(seed)``.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, num_classes) for a float32 batch (8x8 to 64x64 pixels).

    Examples
    --------
    >>> from cnnkit import models
    >>> models.mobilenet_small(1, 4, seed=0).num_parameters() > 0
    True
    """
    _check(in_channels, num_classes, widths)
    rng = np.random.default_rng(seed)
    layers = _stem(in_channels, widths[0], norm, layout, rng)
    c = widths[0]
    for i, w in enumerate(widths[1:]):
        stride = 2 if i % 2 == 1 else 1
        if norm is None:
            layers += [nn.DepthwiseSeparableConv2d(c, w, 3, stride, 1, layout=layout, rng=rng), nn.ReLU()]
        else:
            def nrm(ch: int) -> nn.Module:
                return (nn.BatchNorm2d(ch, activation="relu", layout=layout) if norm == "batch"
                        else nn.GroupNorm(min(8, ch), ch, activation="relu", layout=layout))
            layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False, layout=layout, rng=rng), nrm(c),
                       nn.Conv2d(c, w, 1, bias=False, layout=layout, rng=rng), nrm(w)]
        c = w
    layers += [nn.GlobalAvgPool2d(layout=layout), nn.Linear(c, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def __dir__():
    """The public names only (``__all__``), not the imported modules (np, math, ...)."""
    return sorted(__all__)
